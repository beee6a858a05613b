//! Client connections are bounded (`server/src/listen.rs`), on real
//! sockets against the real binary: the header-read timeout (a stalled
//! head, a slowloris trickle), the idle keep-alive timeout, the total cap
//! and the per-IP cap.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

mod support;

use support::{Reply, Server, fresh_dir, serve_command};

/// `avap serve` with connection settings given as `AVAP_*` variables.
fn server(name: &str, vars: &[(&str, &str)]) -> Server {
    let data_dir = fresh_dir(name).join("data");
    let mut cmd = serve_command(&data_dir);
    cmd.envs(vars.iter().copied());
    Server::spawn(cmd, data_dir)
}

fn connect(s: &Server) -> TcpStream {
    let stream = TcpStream::connect(&s.addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
}

/// Read until the server closes the connection: what it sent, and how long
/// the close took from `since`. A reset counts as a close.
fn read_until_closed(stream: &mut TcpStream, since: Instant) -> (Vec<u8>, Duration) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => break,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
    (got, since.elapsed())
}

const HEALTH: &[u8] = b"GET /api/v1/health HTTP/1.1\r\nHost: test\r\n\r\n";

/// One keep-alive request on `stream` and its reply (`Content-Length` bodies only).
fn keep_alive_request(stream: &mut TcpStream, request: &[u8]) -> Reply {
    stream.write_all(request).expect("write the request");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read the reply");
        assert!(
            n > 0,
            "closed before a whole reply: {:?}",
            String::from_utf8_lossy(&raw)
        );
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .expect("a Content-Length");
            if body.len() >= length {
                return Reply::parse(&raw);
            }
        }
    }
}

/// The value of a counter or gauge sample (`name` or `name{labels}`).
fn metric(s: &Server, sample: &str) -> u64 {
    let text = s.get("/api/v1/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in\n{text}"))
}

#[test]
fn a_stalled_request_head_is_closed_after_the_header_timeout() {
    let s = server(
        "header-stall",
        &[
            ("AVAP_HEADER_READ_TIMEOUT_MS", "300"),
            ("AVAP_IDLE_TIMEOUT_MS", "30000"),
        ],
    );
    let mut stream = connect(&s);
    let since = Instant::now();
    stream
        .write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: te")
        .expect("half a head");
    let (got, took) = read_until_closed(&mut stream, since);
    assert!(got.is_empty(), "closed without a response: {got:?}");
    assert!(
        took >= Duration::from_millis(250),
        "closed after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(5), "closed after {took:?}");
    // A connection that sends nothing at all is bounded the same way.
    let mut silent = connect(&s);
    let (got, took) = read_until_closed(&mut silent, Instant::now());
    assert!(
        got.is_empty() && took < Duration::from_secs(5),
        "{got:?} after {took:?}"
    );
    assert_eq!(
        metric(&s, "avap_connections_timed_out_total{timeout=\"header_read\"}"),
        2
    );
}

#[test]
fn a_slowloris_head_is_cut_off_by_the_whole_head_deadline() {
    // One byte every 100 ms is well within any per-read timeout of 600 ms;
    // the whole head (about 40 bytes, 4 s) is not.
    let s = server(
        "slowloris",
        &[
            ("AVAP_HEADER_READ_TIMEOUT_MS", "600"),
            ("AVAP_IDLE_TIMEOUT_MS", "30000"),
        ],
    );
    let mut stream = connect(&s);
    let mut reader = stream.try_clone().expect("clone");
    let since = Instant::now();
    let closed = std::thread::spawn(move || read_until_closed(&mut reader, since));
    let mut sent = 0;
    for byte in HEALTH {
        if stream.write_all(&[*byte]).is_err() || closed.is_finished() {
            break;
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (got, took) = closed.join().expect("reader");
    assert!(got.is_empty(), "no response to a head that never finished: {got:?}");
    assert!(sent < HEALTH.len(), "the whole head went through ({sent} bytes)");
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

#[test]
fn an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() {
    let s = server(
        "idle",
        &[("AVAP_HEADER_READ_TIMEOUT_MS", "300"), ("AVAP_IDLE_TIMEOUT_MS", "1500")],
    );
    let mut stream = connect(&s);
    assert_eq!(keep_alive_request(&mut stream, HEALTH).status, 200);
    // Idle for longer than the header timeout: the connection is still
    // there, because the header bound starts at a request's first byte.
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(keep_alive_request(&mut stream, HEALTH).status, 200);
    let since = Instant::now();
    let (got, took) = read_until_closed(&mut stream, since);
    assert!(got.is_empty(), "{got:?}");
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(6),
        "closed after {took:?}"
    );
    assert_eq!(metric(&s, "avap_connections_timed_out_total{timeout=\"idle\"}"), 1);
}

#[test]
fn connections_over_the_total_cap_are_refused_until_some_close() {
    let s = server(
        "total-cap",
        &[
            ("AVAP_MAX_CONNECTIONS", "3"),
            ("AVAP_HEADER_READ_TIMEOUT_MS", "2000"),
            ("AVAP_IDLE_TIMEOUT_MS", "2000"),
        ],
    );
    // Three connections that send nothing hold the whole cap.
    let started = Instant::now();
    let mut held: Vec<TcpStream> = (0..3).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..2 {
        let mut extra = connect(&s);
        let since = Instant::now();
        let _ = extra.write_all(HEALTH);
        let (got, took) = read_until_closed(&mut extra, since);
        assert!(
            got.is_empty(),
            "refused without a response: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            took < Duration::from_secs(1),
            "refused at once, not timed out ({took:?})"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(1800),
        "the test ran too slowly to mean anything"
    );
    // The held ones end at their header deadline; then health answers again.
    for stream in &mut held {
        let (got, _) = read_until_closed(stream, Instant::now());
        assert!(got.is_empty());
    }
    assert_eq!(s.get("/api/v1/health").status, 200);
    assert_eq!(
        metric(&s, "avap_connections_refused_total{reason=\"max_connections\"}"),
        2
    );
    assert_eq!(
        metric(&s, "avap_connections_timed_out_total{timeout=\"header_read\"}"),
        3
    );
}

#[test]
fn one_address_cannot_take_more_than_its_per_ip_cap() {
    let s = server(
        "per-ip-cap",
        &[
            ("AVAP_MAX_CONNECTIONS_PER_IP", "2"),
            ("AVAP_HEADER_READ_TIMEOUT_MS", "5000"),
        ],
    );
    let _held: Vec<TcpStream> = (0..2).map(|_| connect(&s)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(&s);
    let _ = third.write_all(HEALTH);
    let (got, took) = read_until_closed(&mut third, Instant::now());
    assert!(
        got.is_empty() && took < Duration::from_secs(1),
        "{got:?} after {took:?}"
    );
    // Another address (all of 127.0.0.0/8 is this host) is still served.
    let mut other = from_address(&s, "127.0.0.2");
    let r = keep_alive_request(&mut other, HEALTH);
    assert_eq!(r.status, 200, "{}", r.body);
    let refused = keep_alive_request(&mut other, b"GET /api/v1/metrics HTTP/1.1\r\nHost: test\r\n\r\n").body;
    assert!(
        refused.contains("avap_connections_refused_total{reason=\"max_connections_per_ip\"} 1\n"),
        "{refused}"
    );
    assert!(refused.contains("avap_connections_open 3\n"), "{refused}");
}

/// A connection to the server from local address `ip`.
fn from_address(s: &Server, ip: &str) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("runtime");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{ip}:0").parse().expect("address"))
            .expect("bind the client side");
        socket.connect(s.addr.parse().expect("server address")).await
    });
    let stream = stream.expect("connect").into_std().expect("a std stream");
    stream.set_nonblocking(false).expect("blocking");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    stream
}
