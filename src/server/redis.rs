//! A small async Redis client: RESP2 over tokio TCP, only what the server
//! needs (AUTH, SELECT, GET, SET … PX, DEL, EVALSHA/SCRIPT LOAD/EVAL,
//! PUBLISH, SUBSCRIBE, PING). Hand-written to keep the dependency set lean.
//!
//! * [`RedisUrl`]: `redis://[[user]:password@]host:port[/db]`; its `Debug`
//!   and `Display` never show the password.
//! * [`Reply`], [`encode`] and [`parse`]: the wire format.
//! * [`Redis`]: a handle to a few pooled connections. Every command has a
//!   short timeout, so Redis trouble never stalls a request for long.
//!   Redis is either *up* or *down*: a failed command marks it down (logged
//!   once, as a warning) and later commands fail at once, without touching
//!   the network, until the monitor task ([`Redis::monitor`]) reaches it
//!   again (logged once, as info). Callers fall back to local behaviour
//!   while it is down.
//! * [`Subscription`]: one dedicated connection in subscribe mode.
//!
//! Redis is not trusted with this process' memory: every connection caps
//! what one reply may take ([`MAX_VALUE_BYTES`] for commands, a few KiB of
//! flat `*3` messages on a subscription), checks each declared size
//! against that cap before buffering the bytes, and scans a reply once
//! however many reads it takes (`Framer`). A reply over the cap fails and
//! the connection is dropped, never resumed half-read.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

/// The bound of an ordinary command (connecting included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// Connections kept open to Redis.
const POOL_SIZE: usize = 8;
/// The largest bulk string [`parse`] accepts (Redis' own limit is 512 MiB).
const MAX_BULK: usize = 256 << 20;
/// The most elements of one array reply, and how deep arrays may nest.
const MAX_ARRAY: usize = 1 << 20;
const MAX_DEPTH: usize = 8;
/// The largest value this server stores in Redis (a sealed `.cwasm` is a
/// few MiB): a command reply beyond it fails the command and drops the
/// connection, so a hostile Redis cannot make a node buffer more.
pub const MAX_VALUE_BYTES: usize = 64 << 20;
/// What a command connection accepts in one reply.
const COMMAND_LIMITS: ReplyLimits = ReplyLimits {
    bytes: MAX_VALUE_BYTES + 64,
    array_len: 1 << 16,
    depth: MAX_DEPTH,
};
/// What the subscription connection accepts: only flat `*3` messages and
/// confirmations, and small ones (the payloads are script names).
const SUBSCRIPTION_LIMITS: ReplyLimits = ReplyLimits {
    bytes: 8 << 10,
    array_len: 3,
    depth: 1,
};
/// The longest status, error or length line (without its CRLF).
const MAX_LINE: usize = 16 << 10;
/// Bytes asked of the socket per read when no larger bulk is pending.
const READ_CHUNK: usize = 64 << 10;
/// Once a message has begun on the subscription, the rest must arrive
/// within this; else the connection is dropped (not resumed half-read).
pub const MESSAGE_DEADLINE: Duration = Duration::from_secs(1);
/// How often the monitor pings a Redis that is up.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The monitor's retry delays while Redis is down: doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Where Redis is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: u32,
}

impl RedisUrl {
    /// `redis://[[user]:password@]host[:port][/db]` (port 6379 and db 0 by
    /// default). The error says what is wrong, never repeating the password.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let rest = url.strip_prefix("redis://").ok_or_else(|| {
            "not a redis:// URL; the form is redis://[:PASSWORD@]HOST:PORT[/DB] (TLS `rediss://` is not supported)"
                .to_owned()
        })?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(info) => match info.split_once(':') {
                Some((user, password)) => (
                    Some(user.to_owned()).filter(|u| !u.is_empty()),
                    Some(password.to_owned()),
                ),
                None => (Some(info.to_owned()).filter(|u| !u.is_empty()), None),
            },
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or("an IPv6 host needs its closing `]`, as in redis://[::1]:6379")?;
            (host, after.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err("no host; the form is redis://[:PASSWORD@]HOST:PORT[/DB]".to_owned());
        }
        let port = match port {
            None => 6379,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{port}` is not a port number"))?,
        };
        let db = match path {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| format!("`/{db}` is not a database number; use /0 to /15"))?,
        };
        Ok(RedisUrl {
            host: host.to_owned(),
            port,
            username,
            password,
            db,
        })
    }

    /// The URL with the password shown as `***`.
    pub fn redacted(&self) -> String {
        let user = self.username.as_deref().unwrap_or("");
        let login = match (&self.username, &self.password) {
            (_, Some(_)) => format!("{user}:***@"),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("redis://{login}{host}:{}/{}", self.port, self.db)
    }

    fn address(&self) -> (String, u16) {
        (self.host.clone(), self.port)
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR …`: the command failed; the connection is fine.
    Error(String),
    Integer(i64),
    /// `$-1` is `None`.
    Bulk(Option<Vec<u8>>),
    /// `*-1` is `None`.
    Array(Option<Vec<Reply>>),
}

/// Why a command did not give a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// Redis is marked down: nothing was sent.
    Unavailable,
    /// Every pooled connection stayed busy until the time limit: nothing was sent.
    Busy,
    /// No reply within the command's time limit.
    Timeout,
    /// The connection failed (refused, reset, closed).
    Io(String),
    /// The bytes on the wire are not RESP2, or not the reply expected.
    Protocol(String),
    /// Redis answered with an error reply.
    Server(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Unavailable => f.write_str("Redis is marked unreachable"),
            RedisError::Busy => f.write_str("every Redis connection is busy"),
            RedisError::Timeout => f.write_str("no answer within the command's time limit"),
            RedisError::Io(e) => write!(f, "connection failed: {e}"),
            RedisError::Protocol(e) => write!(f, "protocol error: {e}"),
            RedisError::Server(e) => write!(f, "Redis answered: {e}"),
        }
    }
}

impl std::error::Error for RedisError {}

impl RedisError {
    /// Whether the connection (or Redis) is in doubt, rather than the command.
    fn is_connection_problem(&self) -> bool {
        !matches!(self, RedisError::Server(_) | RedisError::Unavailable | RedisError::Busy)
    }
}

/// A command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + args.iter().map(|a| a.len() + 16).sum::<usize>());
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The first reply in `buf` and the bytes it took, or `None` when `buf`
/// does not hold a whole reply yet.
pub fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, RedisError> {
    parse_at(buf, 0, 0)
}

/// A reply's type byte, its header line, and the offset just past the line.
type Header<'a> = (u8, &'a [u8], usize);

/// The header of the reply starting at `at`; `None` while the line is
/// incomplete. Shared by the parser and the framer, so both accept exactly
/// the same replies.
fn header_at(buf: &[u8], at: usize) -> Result<Option<Header<'_>>, RedisError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    if !b"+-:$*".contains(&kind) {
        return Err(RedisError::Protocol(format!(
            "unknown reply type byte 0x{kind:02x} (RESP3 is not spoken here)"
        )));
    }
    Ok(line_at(buf, at + 1)?.map(|(line, next)| (kind, line, next)))
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, RedisError> {
    let Some((kind, line, next)) = header_at(buf, at)? else {
        return Ok(None);
    };
    let text = |line: &[u8]| {
        String::from_utf8(line.to_vec()).map_err(|_| RedisError::Protocol("a status line is not UTF-8".to_owned()))
    };
    match kind {
        b'+' => Ok(Some((Reply::Status(text(line)?), next))),
        b'-' => Ok(Some((Reply::Error(text(line)?), next))),
        b':' => Ok(Some((Reply::Integer(number(line)?), next))),
        b'$' => {
            let Some(len) = length(line, MAX_BULK)? else {
                return Ok(Some((Reply::Bulk(None), next)));
            };
            let end = next + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return Err(RedisError::Protocol("a bulk string does not end with CRLF".to_owned()));
            }
            Ok(Some((Reply::Bulk(Some(buf[next..end].to_vec())), end + 2)))
        }
        b'*' => {
            let Some(count) = length(line, MAX_ARRAY)? else {
                return Ok(Some((Reply::Array(None), next)));
            };
            if depth >= MAX_DEPTH {
                return Err(RedisError::Protocol(format!("arrays nested deeper than {MAX_DEPTH}")));
            }
            // Grown as elements arrive: `count` is the peer's claim.
            let mut items = Vec::new();
            let mut at = next;
            for _ in 0..count {
                let Some((item, after)) = parse_at(buf, at, depth + 1)? else {
                    return Ok(None);
                };
                items.push(item);
                at = after;
            }
            Ok(Some((Reply::Array(Some(items)), at)))
        }
        _ => unreachable!("the type byte was checked above"),
    }
}

/// The line starting at `at` (without its CRLF) and where the next begins.
fn line_at(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RedisError> {
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    let window = &rest[..rest.len().min(MAX_LINE + 2)];
    match window.iter().position(|&b| b == b'\n') {
        None if window.len() > MAX_LINE + 1 => Err(RedisError::Protocol(format!(
            "a reply line is longer than {MAX_LINE} bytes"
        ))),
        None => Ok(None),
        Some(0) => Err(RedisError::Protocol("a line ends with LF without CR".to_owned())),
        Some(lf) if rest[lf - 1] != b'\r' => Err(RedisError::Protocol("a line ends with LF without CR".to_owned())),
        Some(lf) => Ok(Some((&rest[..lf - 1], at + lf + 1))),
    }
}

fn number(line: &[u8]) -> Result<i64, RedisError> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| RedisError::Protocol(format!("`{}` is not an integer", String::from_utf8_lossy(line))))
}

/// A length prefix: `None` for -1 (null), an error beyond `max` or below -1.
fn length(line: &[u8], max: usize) -> Result<Option<usize>, RedisError> {
    match number(line)? {
        -1 => Ok(None),
        n => usize::try_from(n)
            .ok()
            .filter(|n| *n <= max)
            .map(Some)
            .ok_or_else(|| RedisError::Protocol(format!("length {n} is out of range"))),
    }
}

/// How large a reply one connection accepts.
#[derive(Debug, Clone, Copy)]
struct ReplyLimits {
    /// Bytes of one reply (and of the connection's buffer).
    bytes: usize,
    /// Elements of one array.
    array_len: usize,
    /// Arrays open at once (1: no nesting).
    depth: usize,
}

/// Finds where the first reply in a connection's buffer ends, checking
/// every declared size against the limits before any byte of it is
/// buffered. It remembers how far it got, so each byte is looked at once
/// however many reads a reply takes (a re-parse per read would cost
/// quadratic time on a long reply), and nothing is copied until the reply
/// is whole.
#[derive(Debug, Default)]
struct Framer {
    /// Bytes of the buffer made of whole items and array headers.
    scanned: usize,
    /// Elements still due in each open array, outermost first.
    open: Vec<usize>,
    /// The buffer length the next step needs (the end of a pending bulk).
    wanted: usize,
}

impl Framer {
    /// The length of the first whole reply in `buf`, `None` while more
    /// bytes are needed, or an error for malformed or oversized replies.
    fn frame(&mut self, buf: &[u8], limits: ReplyLimits) -> Result<Option<usize>, RedisError> {
        loop {
            let at = self.scanned;
            self.wanted = at + 1;
            let Some((kind, line, next)) = header_at(buf, at)? else {
                return Ok(None);
            };
            let end = match kind {
                b'$' => match length(line, usize::MAX)? {
                    None => next,
                    Some(len) => {
                        let end = next.saturating_add(len).saturating_add(2);
                        if end > limits.bytes {
                            return Err(too_large(limits));
                        }
                        if buf.len() < end {
                            self.wanted = end;
                            return Ok(None);
                        }
                        end
                    }
                },
                b'*' => match length(line, usize::MAX)? {
                    Some(count) if count > limits.array_len => {
                        return Err(RedisError::Protocol(format!(
                            "an array of {count} elements; this connection accepts at most {}",
                            limits.array_len
                        )));
                    }
                    Some(count) if count > 0 => {
                        if self.open.len() >= limits.depth {
                            return Err(RedisError::Protocol(format!(
                                "arrays nested deeper than {}",
                                limits.depth
                            )));
                        }
                        self.open.push(count);
                        self.scanned = next;
                        continue;
                    }
                    _ => next,
                },
                b':' => {
                    number(line)?;
                    next
                }
                _ => next,
            };
            self.scanned = end;
            // One item is whole: it may complete the arrays around it.
            loop {
                match self.open.last_mut() {
                    None => {
                        *self = Framer::default();
                        return Ok(Some(end));
                    }
                    Some(left) if *left > 1 => {
                        *left -= 1;
                        break;
                    }
                    Some(_) => {
                        self.open.pop();
                    }
                }
            }
        }
    }
}

fn too_large(limits: ReplyLimits) -> RedisError {
    RedisError::Protocol(format!(
        "a reply is larger than the {} bytes this connection accepts",
        limits.bytes
    ))
}

/// One connection, logged in and on the right database.
struct Connection {
    stream: TcpStream,
    /// Bytes read but not parsed yet; never more than `limits.bytes`.
    buf: Vec<u8>,
    framer: Framer,
    limits: ReplyLimits,
}

impl Connection {
    async fn open(url: &RedisUrl, limits: ReplyLimits) -> Result<Connection, RedisError> {
        let stream = TcpStream::connect(url.address())
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            stream,
            buf: Vec::with_capacity(4096.min(limits.bytes)),
            framer: Framer::default(),
            limits,
        };
        if let Some(password) = &url.password {
            let mut auth: Vec<&[u8]> = Vec::with_capacity(3);
            auth.push(b"AUTH");
            if let Some(user) = &url.username {
                auth.push(user.as_bytes());
            }
            auth.push(password.as_bytes());
            conn.expect_ok(&auth, "AUTH").await?;
        }
        if url.db != 0 {
            conn.expect_ok(&[b"SELECT", url.db.to_string().as_bytes()], "SELECT")
                .await?;
        }
        Ok(conn)
    }

    /// A command that must answer `+OK` while the connection is set up.
    async fn expect_ok(&mut self, args: &[&[u8]], what: &str) -> Result<(), RedisError> {
        match self.call(args).await? {
            Reply::Status(s) if s == "OK" => Ok(()),
            // The server's message, never our arguments (they hold the password).
            Reply::Error(e) => Err(RedisError::Server(format!("{what} failed: {e}"))),
            other => Err(RedisError::Protocol(format!("{what} answered {other:?}"))),
        }
    }

    async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.stream
            .write_all(&encode(args))
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        self.read_reply().await
    }

    /// The next reply. After an error (or when this future is dropped
    /// half-way) the connection's state is unknown: drop the connection.
    async fn read_reply(&mut self) -> Result<Reply, RedisError> {
        loop {
            if let Some(used) = self.framer.frame(&self.buf, self.limits)? {
                return self.take_reply(used);
            }
            if self.buf.len() >= self.limits.bytes {
                return Err(too_large(self.limits));
            }
            self.fill().await?;
        }
    }

    /// Read more bytes, never past the size limit.
    async fn fill(&mut self) -> Result<(), RedisError> {
        let room = self.limits.bytes - self.buf.len();
        // A pending bulk's whole size at once (it was checked against the
        // limit), else a chunk.
        let pending = self.framer.wanted.saturating_sub(self.buf.len());
        let need = pending.max(READ_CHUNK).min(room);
        if self.buf.capacity() - self.buf.len() < need {
            // Doubling (so copies stay amortized), never past the limit.
            let target = (self.buf.capacity() * 2)
                .max(self.buf.len() + need)
                .min(self.limits.bytes);
            self.buf.reserve_exact(target - self.buf.len());
        }
        let read = (&mut self.stream)
            .take(u64::try_from(room).unwrap_or(u64::MAX))
            .read_buf(&mut self.buf)
            .await
            .map_err(|e| RedisError::Io(e.to_string()))?;
        if read == 0 {
            return Err(RedisError::Io("Redis closed the connection".to_owned()));
        }
        Ok(())
    }

    /// The framed reply of `used` bytes at the front of the buffer. A bulk
    /// string (a module) takes the buffer itself rather than a copy.
    fn take_reply(&mut self, used: usize) -> Result<Reply, RedisError> {
        if self.buf.first() == Some(&b'$')
            && let Some((line, next)) = line_at(&self.buf, 1)?
            && line != b"-1"
        {
            let rest = self.buf.split_off(used);
            let mut value = std::mem::replace(&mut self.buf, rest);
            value.truncate(used - 2);
            value.drain(..next);
            return Ok(Reply::Bulk(Some(value)));
        }
        let (reply, parsed) = parse(&self.buf[..used])?
            .ok_or_else(|| RedisError::Protocol("a framed reply does not parse".to_owned()))?;
        debug_assert_eq!(parsed, used);
        self.buf.drain(..used);
        Ok(reply)
    }

    /// Bytes buffered, for the tests' memory bounds.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.buf.len().max(self.buf.capacity())
    }
}

/// Whether Redis answered lately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Not contacted yet.
    Unknown,
    Up,
    Down,
}

impl Status {
    fn from_u8(n: u8) -> Status {
        match n {
            1 => Status::Up,
            2 => Status::Down,
            _ => Status::Unknown,
        }
    }
}

/// A pooled client; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    url: RedisUrl,
    idle: Mutex<Vec<Connection>>,
    slots: Semaphore,
    status: AtomicU8,
    /// Commands that failed for a connection reason, since start (a
    /// counter the metrics own).
    errors: Arc<AtomicU64>,
    /// Wakes the monitor when a command finds Redis gone.
    lost: Notify,
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.inner.url)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// A client for `url` counting failed commands in `errors`; nothing
    /// connects until [`Redis::probe`] or [`Redis::monitor`] runs.
    pub fn new(url: RedisUrl, errors: Arc<AtomicU64>) -> Redis {
        Redis {
            inner: Arc::new(Inner {
                url,
                idle: Mutex::new(Vec::new()),
                slots: Semaphore::new(POOL_SIZE),
                status: AtomicU8::new(0),
                errors,
                lost: Notify::new(),
            }),
        }
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.inner.status.load(Ordering::Acquire))
    }

    pub fn is_up(&self) -> bool {
        self.status() == Status::Up
    }

    /// Commands that failed because of the connection or a timeout.
    #[cfg(test)]
    pub fn errors(&self) -> u64 {
        self.inner.errors.load(Ordering::Relaxed)
    }

    /// One command with [`COMMAND_TIMEOUT`].
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.call_within(COMMAND_TIMEOUT, args).await
    }

    /// One command, given up after `limit` (for large values written in
    /// the background). Fails at once while Redis is down; an error reply
    /// is `Err(Server)`, and leaves Redis up.
    pub async fn call_within(&self, limit: Duration, args: &[&[u8]]) -> Result<Reply, RedisError> {
        if !self.is_up() {
            return Err(RedisError::Unavailable);
        }
        self.checked(limit, args).await
    }

    /// [`Redis::call_within`] without the up check (the monitor's way back).
    async fn checked(&self, limit: Duration, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let deadline = tokio::time::Instant::now() + limit;
        // Waiting for a free connection is this node's congestion, not a
        // sign that Redis is gone: it fails the command but not Redis.
        let Ok(Ok(_slot)) = tokio::time::timeout_at(deadline, self.inner.slots.acquire()).await else {
            return Err(RedisError::Busy);
        };
        let result = match tokio::time::timeout_at(deadline, self.round_trip(args)).await {
            Ok(result) => result,
            Err(_) => Err(RedisError::Timeout),
        };
        match result {
            Ok(Reply::Error(e)) => Err(RedisError::Server(e)),
            Ok(reply) => Ok(reply),
            Err(e) => {
                if e.is_connection_problem() {
                    self.inner.errors.fetch_add(1, Ordering::Relaxed);
                    self.mark_down(&e);
                }
                Err(e)
            }
        }
    }

    /// Send on a pooled connection (opening one if none is idle; the
    /// caller holds a pool slot). A connection goes back to the pool only
    /// after a whole reply, so one abandoned mid-way (error, timeout,
    /// cancelled request) is dropped.
    async fn round_trip(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        let idle = self.idle().pop();
        let mut conn = match idle {
            Some(conn) => conn,
            None => Connection::open(&self.inner.url, COMMAND_LIMITS).await?,
        };
        let reply = conn.call(args).await?;
        self.idle().push(conn);
        Ok(reply)
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.inner.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn mark_down(&self, why: &RedisError) {
        self.idle().clear();
        let before = Status::from_u8(self.inner.status.swap(2, Ordering::AcqRel));
        if before != Status::Down {
            tracing::warn!(
                redis = %self.inner.url,
                error = %why,
                "Redis is unreachable: serving from the local caches and the database, \
                 rate limits per node, until it is back"
            );
            self.inner.lost.notify_one();
        }
    }

    fn mark_up(&self) {
        let before = Status::from_u8(self.inner.status.swap(1, Ordering::AcqRel));
        match before {
            Status::Down => tracing::info!(redis = %self.inner.url, "Redis is reachable again"),
            Status::Unknown => tracing::info!(redis = %self.inner.url, "connected to Redis"),
            Status::Up => {}
        }
    }

    /// Ping once (also while down) and set the status from the answer.
    pub async fn probe(&self) -> bool {
        match self.checked(COMMAND_TIMEOUT, &[b"PING"]).await {
            Ok(Reply::Status(pong)) if pong == "PONG" => {
                self.mark_up();
                true
            }
            Ok(other) => {
                self.mark_down(&RedisError::Protocol(format!("PING answered {other:?}")));
                false
            }
            // A server error (say, NOAUTH) is Redis refusing us: down too.
            Err(RedisError::Server(e)) => {
                self.mark_down(&RedisError::Server(e));
                false
            }
            Err(_) => false,
        }
    }

    /// Runs for the life of the server: pings Redis every second while it
    /// is up, and with growing delays (up to a second) while it is down,
    /// so a lost Redis is noticed without traffic and a returning one is
    /// used again within about a second.
    pub async fn monitor(self) {
        let mut retry = RETRY_FIRST;
        loop {
            if self.probe().await {
                retry = RETRY_FIRST;
                // Until the heartbeat, or at once when a command loses Redis.
                let _ = tokio::time::timeout(HEARTBEAT, self.inner.lost.notified()).await;
            } else {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(RETRY_MAX);
            }
        }
    }

    /// A dedicated connection subscribed to `channel` (whatever the status).
    pub async fn subscribe(&self, channel: &str) -> Result<Subscription, RedisError> {
        let connecting = async {
            let mut conn = Connection::open(&self.inner.url, SUBSCRIPTION_LIMITS).await?;
            let reply = conn.call(&[b"SUBSCRIBE", channel.as_bytes()]).await?;
            match reply {
                Reply::Array(Some(items)) if is_confirmation(&items) => Ok(conn),
                Reply::Error(e) => Err(RedisError::Server(e)),
                other => Err(RedisError::Protocol(format!("SUBSCRIBE answered {other:?}"))),
            }
        };
        let conn = tokio::time::timeout(COMMAND_TIMEOUT, connecting)
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(Subscription { conn })
    }
}

/// A connection in subscribe mode.
pub struct Subscription {
    conn: Connection,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The payload of the next message, or `None` when none began within
    /// `idle` (the connection is then intact: call again). A message that
    /// has begun must be whole within [`MESSAGE_DEADLINE`]. An error means
    /// the connection is unusable: drop it and subscribe again.
    pub async fn next_message(&mut self, idle: Duration) -> Result<Option<Vec<u8>>, RedisError> {
        loop {
            if self.conn.buf.is_empty() {
                // Cancel-safe: `read_buf` keeps nothing when it is cut short.
                match tokio::time::timeout(idle, self.conn.fill()).await {
                    Err(_) => return Ok(None),
                    Ok(read) => read?,
                }
            }
            let reply = tokio::time::timeout(MESSAGE_DEADLINE, self.conn.read_reply())
                .await
                .map_err(|_| RedisError::Timeout)??;
            match reply {
                Reply::Array(Some(items)) => match <[Reply; 3]>::try_from(items) {
                    Ok(
                        [
                            Reply::Bulk(Some(kind)),
                            Reply::Bulk(Some(_)),
                            Reply::Bulk(Some(payload)),
                        ],
                    ) if kind == b"message" => {
                        return Ok(Some(payload));
                    }
                    Ok(items) if is_confirmation(&items) => {}
                    Ok(other) => {
                        return Err(RedisError::Protocol(format!(
                            "not a message on a subscription: {other:?}"
                        )));
                    }
                    Err(items) => {
                        return Err(RedisError::Protocol(format!(
                            "a subscription message of {} parts (expected 3)",
                            items.len()
                        )));
                    }
                },
                Reply::Error(e) => return Err(RedisError::Server(e)),
                other => {
                    return Err(RedisError::Protocol(format!(
                        "not a message on a subscription: {other:?}"
                    )));
                }
            }
        }
    }

    /// Bytes the connection holds, for the tests' memory bounds.
    #[cfg(test)]
    fn buffered(&self) -> usize {
        self.conn.buffered()
    }
}

/// `subscribe <channel> <count>`, as Redis confirms a SUBSCRIBE.
fn is_confirmation(items: &[Reply]) -> bool {
    matches!(
        items,
        [Reply::Bulk(Some(kind)), Reply::Bulk(Some(_)), Reply::Integer(_)] if kind == b"subscribe"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "redis://127.0.0.1:6379";

    fn bulk(text: &str) -> Reply {
        Reply::Bulk(Some(text.as_bytes().to_vec()))
    }

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://:s3cret@cache.internal:6380/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.internal", 6380, 2));
        assert_eq!((u.username.as_deref(), u.password.as_deref()), (None, Some("s3cret")));
        assert_eq!(u.redacted(), "redis://:***@cache.internal:6380/2");
        assert!(!format!("{u:?} {u}").contains("s3cret"));
        let u = RedisUrl::parse("redis://app:pw@10.0.0.1").unwrap();
        assert_eq!((u.username.as_deref(), u.port, u.db), (Some("app"), 6379, 0));
        assert_eq!(u.redacted(), "redis://app:***@10.0.0.1:6379/0");
        let u = RedisUrl::parse("redis://[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.redacted(), "redis://[::1]:7000/0");
        let err = |url: &str| RedisUrl::parse(url).unwrap_err();
        assert!(err("http://x").contains("not a redis:// URL"));
        assert!(err("rediss://x").contains("not a redis:// URL"));
        assert!(err("redis://:pw@").contains("no host"));
        assert!(err("redis://h:port").contains("`port` is not a port number"));
        assert!(err("redis://h:0").contains("not a port number"));
        assert!(err("redis://h/x").contains("not a database number"));
        assert!(err("redis://[::1").contains("closing `]`"));
        assert!(!err("redis://:hunter2@h:99999").contains("hunter2"));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"SET", b"k", b"a\r\nb"]),
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n".to_vec()
        );
        assert_eq!(encode(&[b"PING"]), b"*1\r\n$4\r\nPING\r\n".to_vec());
    }

    #[test]
    fn replies_parse_including_odd_ones() {
        let whole = |raw: &[u8]| {
            let (reply, used) = parse(raw).unwrap().expect("a whole reply");
            assert_eq!(used, raw.len(), "{raw:?}");
            reply
        };
        assert_eq!(whole(b"+OK\r\n"), Reply::Status("OK".to_owned()));
        assert_eq!(whole(b"-ERR no\r\n"), Reply::Error("ERR no".to_owned()));
        assert_eq!(whole(b":-42\r\n"), Reply::Integer(-42));
        assert_eq!(whole(b"$0\r\n\r\n"), bulk(""));
        assert_eq!(whole(b"$-1\r\n"), Reply::Bulk(None));
        assert_eq!(whole(b"*-1\r\n"), Reply::Array(None));
        assert_eq!(whole(b"*0\r\n"), Reply::Array(Some(vec![])));
        // Binary payloads may hold CR, LF and NUL.
        assert_eq!(whole(b"$5\r\n\r\n\0\n\r\r\n"), bulk("\r\n\0\n\r"));
        assert_eq!(
            whole(b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n$-1\r\n+x\r\n"),
            Reply::Array(Some(vec![
                Reply::Integer(1),
                Reply::Array(Some(vec![bulk("a"), Reply::Bulk(None)])),
                Reply::Status("x".to_owned()),
            ]))
        );
        // Two replies back to back: only the first is taken.
        assert_eq!(parse(b"+A\r\n+B\r\n").unwrap(), Some((Reply::Status("A".into()), 4)));
        // Every strict prefix of a reply is "not yet", never an error.
        let full = b"*2\r\n$3\r\nabc\r\n:7\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "prefix of {cut} bytes");
        }
        // Malformed input is an error, not a panic or a wait.
        for bad in [
            &b"?x\r\n"[..],
            b":12a\r\n",
            b"$3\r\nabcd\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"+OK\n",
            b"\n",
            b"$99999999999\r\n",
            b"%1\r\n",
            b"+\xff\xfe\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
        // A huge claimed count with few elements just waits for more bytes.
        assert_eq!(parse(b"*1000000\r\n:1\r\n").unwrap(), None);
    }

    fn client() -> Redis {
        Redis::new(RedisUrl::parse(LOCAL).unwrap(), Arc::default())
    }

    /// A key unique to this test run.
    fn key(name: &str) -> String {
        format!("avap-test:{}:{name}:{}", std::process::id(), rand_suffix())
    }

    fn rand_suffix() -> u64 {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        u64::from_le_bytes(bytes)
    }

    #[tokio::test]
    async fn talks_to_the_real_redis() {
        let redis = client();
        assert_eq!(redis.status(), Status::Unknown);
        assert_eq!(
            redis.call(&[b"PING"]).await,
            Err(RedisError::Unavailable),
            "not probed yet"
        );
        assert!(redis.probe().await);
        assert!(redis.is_up());
        let k = key("kv");
        let value: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let set = redis.call(&[b"SET", k.as_bytes(), &value, b"PX", b"60000"]).await;
        assert_eq!(set, Ok(Reply::Status("OK".to_owned())));
        assert_eq!(redis.call(&[b"GET", k.as_bytes()]).await, Ok(Reply::Bulk(Some(value))));
        let ttl = redis.call(&[b"PTTL", k.as_bytes()]).await.unwrap();
        assert!(matches!(ttl, Reply::Integer(ms) if ms > 0 && ms <= 60_000), "{ttl:?}");
        assert_eq!(redis.call(&[b"DEL", k.as_bytes()]).await, Ok(Reply::Integer(1)));
        assert_eq!(redis.call(&[b"GET", k.as_bytes()]).await, Ok(Reply::Bulk(None)));
        // An error reply is the command's failure, not Redis'.
        let wrong = redis.call(&[b"NOSUCHCOMMAND"]).await;
        assert!(
            matches!(&wrong, Err(RedisError::Server(e)) if e.starts_with("ERR")),
            "{wrong:?}"
        );
        assert!(redis.is_up());
        let script = redis
            .call(&[b"EVAL", b"return {tonumber(ARGV[1]) + 1, 'x'}", b"0", b"41"])
            .await;
        assert_eq!(script, Ok(Reply::Array(Some(vec![Reply::Integer(42), bulk("x")]))));
        // More callers than pooled connections still all get answers.
        let calls = (0..3 * POOL_SIZE).map(|i| {
            let redis = redis.clone();
            async move { redis.call(&[b"ECHO", i.to_string().as_bytes()]).await }
        });
        for (i, reply) in futures_join(calls).await.into_iter().enumerate() {
            assert_eq!(reply, Ok(bulk(&i.to_string())));
        }
        assert_eq!(redis.errors(), 0);
    }

    async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for handle in handles {
            out.push(handle.await.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn a_full_pool_fails_the_command_not_redis() {
        let redis = client();
        assert!(redis.probe().await);
        let taken = redis
            .inner
            .slots
            .acquire_many(u32::try_from(POOL_SIZE).unwrap())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let busy = redis.call_within(Duration::from_millis(30), &[b"PING"]).await;
        assert_eq!(busy, Err(RedisError::Busy));
        assert!(started.elapsed() < Duration::from_millis(200));
        assert!(redis.is_up(), "congestion here is not Redis being gone");
        assert_eq!(redis.errors(), 0);
        drop(taken);
        assert_eq!(redis.call(&[b"PING"]).await, Ok(Reply::Status("PONG".to_owned())));
    }

    #[tokio::test]
    async fn publish_reaches_subscribers() {
        let redis = client();
        assert!(redis.probe().await);
        let channel = key("channel");
        let mut sub = redis.subscribe(&channel).await.unwrap();
        let sent = redis.call(&[b"PUBLISH", channel.as_bytes(), b"hello"]).await;
        assert_eq!(sent, Ok(Reply::Integer(1)), "one subscriber");
        let got = sub.next_message(Duration::from_secs(1)).await;
        assert_eq!(got.unwrap().expect("a message within a second"), b"hello");
        let quiet = sub.next_message(Duration::from_millis(20)).await;
        assert_eq!(quiet, Ok(None), "nothing more was published");
    }

    /// A fake, hostile Redis on a local port: every connection gets
    /// `answer(first command)`'s bytes, then `stream`'s bytes repeated
    /// until the client hangs up.
    async fn hostile_redis(answer: fn(&[u8]) -> Vec<u8>, stream: Vec<u8>) -> RedisUrl {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let stream = stream.clone();
                tokio::spawn(async move {
                    let mut command = vec![0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut command).await else { return };
                        if n == 0 {
                            return;
                        }
                        if socket.write_all(&answer(&command[..n])).await.is_err() {
                            return;
                        }
                        // Only a PING gets a chance to send another command.
                        if !command[..n].windows(4).any(|w| w == b"PING") {
                            break;
                        }
                    }
                    if stream.is_empty() {
                        // Hold the connection open, silent.
                        std::future::pending::<()>().await;
                    }
                    while socket.write_all(&stream).await.is_ok() {}
                });
            }
        });
        RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap()
    }

    fn subscribe_confirmation(_: &[u8]) -> Vec<u8> {
        b"*3\r\n$9\r\nsubscribe\r\n$1\r\nc\r\n:1\r\n".to_vec()
    }

    /// Resident memory of this process, from /proc.
    fn rss_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/self/status");
        kib << 10
    }

    #[tokio::test]
    async fn a_hostile_subscription_is_dropped_not_buffered() {
        let mib_bulk = {
            let mut bulk = format!("${}\r\n", 1 << 20).into_bytes();
            bulk.resize(bulk.len() + (1 << 20), b'x');
            bulk.extend_from_slice(b"\r\n");
            bulk
        };
        let rss_before = rss_bytes();
        // A valid confirmation, then a huge array of 1 MiB bulks, forever.
        let huge_array = |_: &[u8]| {
            let mut out = subscribe_confirmation(b"");
            out.extend_from_slice(b"*1048576\r\n");
            out
        };
        let redis = Redis::new(hostile_redis(huge_array, mib_bulk.clone()).await, Arc::default());
        let mut sub = redis.subscribe("c").await.unwrap();
        let started = std::time::Instant::now();
        let got = sub.next_message(Duration::from_secs(10)).await;
        assert!(
            matches!(&got, Err(RedisError::Protocol(e)) if e.contains("1048576 elements")),
            "{got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(sub.buffered() <= SUBSCRIPTION_LIMITS.bytes, "{}", sub.buffered());
        drop(sub);

        // A message-shaped reply whose payload is 1 MiB: refused from its header.
        let big_message = |_: &[u8]| {
            let mut out = subscribe_confirmation(b"");
            out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n");
            out
        };
        let redis = Redis::new(hostile_redis(big_message, mib_bulk).await, Arc::default());
        let mut sub = redis.subscribe("c").await.unwrap();
        let started = std::time::Instant::now();
        let got = sub.next_message(Duration::from_secs(10)).await;
        assert!(
            matches!(&got, Err(RedisError::Protocol(e)) if e.contains("larger than")),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(500));
        assert!(sub.buffered() <= SUBSCRIPTION_LIMITS.bytes, "{}", sub.buffered());
        drop(sub);

        // A message begun and never finished: dropped after the deadline,
        // not resumed by the next call.
        let stalled = |_: &[u8]| {
            let mut out = subscribe_confirmation(b"");
            out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$5\r\nab");
            out
        };
        let redis = Redis::new(hostile_redis(stalled, Vec::new()).await, Arc::default());
        let mut sub = redis.subscribe("c").await.unwrap();
        let started = std::time::Instant::now();
        let got = sub.next_message(Duration::from_secs(10)).await;
        assert_eq!(got, Err(RedisError::Timeout));
        let took = started.elapsed();
        assert!(took >= MESSAGE_DEADLINE && took < MESSAGE_DEADLINE * 2, "{took:?}");

        // Anything but messages and confirmations ends the subscription.
        let pong = |_: &[u8]| {
            let mut out = subscribe_confirmation(b"");
            out.extend_from_slice(b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nname\r\n+PONG\r\n");
            out
        };
        let redis = Redis::new(hostile_redis(pong, Vec::new()).await, Arc::default());
        let mut sub = redis.subscribe("c").await.unwrap();
        assert_eq!(
            sub.next_message(Duration::from_secs(1)).await,
            Ok(Some(b"name".to_vec()))
        );
        let got = sub.next_message(Duration::from_secs(1)).await;
        assert!(matches!(&got, Err(RedisError::Protocol(_))), "{got:?}");

        let grown = rss_bytes().saturating_sub(rss_before);
        assert!(grown < 64 << 20, "memory grew by {grown} bytes");
    }

    #[tokio::test]
    async fn a_hostile_command_reply_fails_at_the_size_limit() {
        let pong_then = |command: &[u8]| -> Vec<u8> {
            if command.windows(4).any(|w| w == b"PING") {
                b"+PONG\r\n".to_vec()
            } else {
                // A bulk announcing 1 GiB.
                format!("${}\r\n", 1u64 << 30).into_bytes()
            }
        };
        let rss_before = rss_bytes();
        let url = hostile_redis(pong_then, vec![b'x'; 1 << 20]).await;
        let redis = Redis::new(url.clone(), Arc::default());
        assert!(redis.probe().await);
        let started = std::time::Instant::now();
        let got = redis.call_within(Duration::from_secs(10), &[b"GET", b"k"]).await;
        assert!(
            matches!(&got, Err(RedisError::Protocol(e)) if e.contains("larger than")),
            "{got:?}"
        );
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "{:?}",
            started.elapsed()
        );
        assert!(!redis.is_up(), "a Redis answering that is not used");

        // Just under the limit per item, but a long array of them: the
        // reply as a whole stops at the limit, read once, not re-parsed.
        let many_bulks = |command: &[u8]| -> Vec<u8> {
            if command.windows(4).any(|w| w == b"PING") {
                b"+PONG\r\n".to_vec()
            } else {
                b"*65536\r\n".to_vec()
            }
        };
        let mut kib_bulk = b"$1024\r\n".to_vec();
        kib_bulk.resize(kib_bulk.len() + 1024, b'y');
        kib_bulk.extend_from_slice(b"\r\n");
        let url = hostile_redis(many_bulks, kib_bulk).await;
        // The command limits scaled down to keep the test light.
        let limits = ReplyLimits {
            bytes: 4 << 20,
            ..COMMAND_LIMITS
        };
        let mut conn = Connection::open(&url, limits).await.unwrap();
        let started = std::time::Instant::now();
        let got = conn.call(&[b"GET", b"k"]).await;
        assert!(
            matches!(&got, Err(RedisError::Protocol(e)) if e.contains("larger than")),
            "{got:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        assert!(conn.buffered() <= limits.bytes, "{}", conn.buffered());
        drop(conn);

        let grown = rss_bytes().saturating_sub(rss_before);
        assert!(grown < 64 << 20, "memory grew by {grown} bytes");
    }

    #[test]
    fn the_framer_finds_replies_across_reads_and_checks_sizes_first() {
        let full = b"*2\r\n$3\r\nabc\r\n*1\r\n:7\r\n+next\r\n";
        let mut framer = Framer::default();
        for cut in 0..21 {
            assert_eq!(framer.frame(&full[..cut], COMMAND_LIMITS).unwrap(), None, "{cut}");
        }
        assert_eq!(framer.frame(&full[..21], COMMAND_LIMITS).unwrap(), Some(21));
        assert_eq!(Framer::default().frame(full, COMMAND_LIMITS).unwrap(), Some(21));
        assert_eq!(framer.frame(b"$-1\r\n", COMMAND_LIMITS).unwrap(), Some(5));
        assert_eq!(framer.frame(b"*0\r\n", COMMAND_LIMITS).unwrap(), Some(4));
        let tiny = ReplyLimits {
            bytes: 32,
            array_len: 3,
            depth: 1,
        };
        for bad in [&b"$40\r\n"[..], b"*4\r\n", b"*1\r\n*1\r\n", b"$x\r\n", b":1a\r\n"] {
            assert!(Framer::default().frame(bad, tiny).is_err(), "{bad:?}");
        }
        let long_line = [b"+".as_slice(), &vec![b'a'; MAX_LINE + 2]].concat();
        assert!(Framer::default().frame(&long_line, COMMAND_LIMITS).is_err());
    }

    #[tokio::test]
    async fn a_closed_port_is_down_at_once() {
        // Bind then drop a listener: the port is closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = Redis::new(
            RedisUrl::parse(&format!("redis://127.0.0.1:{port}")).unwrap(),
            Arc::default(),
        );
        assert!(!redis.probe().await);
        assert_eq!(redis.status(), Status::Down);
        assert_eq!(redis.errors(), 1);
        let started = std::time::Instant::now();
        assert_eq!(redis.call(&[b"PING"]).await, Err(RedisError::Unavailable));
        assert!(started.elapsed() < Duration::from_millis(5), "no network while down");
        assert!(redis.subscribe("x").await.is_err());
    }

    #[tokio::test]
    async fn wrong_passwords_and_databases_are_refused() {
        let open = |url: &str| Redis::new(RedisUrl::parse(url).unwrap(), Arc::default());
        let redis = open("redis://:not-the-password@127.0.0.1:6379");
        assert!(!redis.probe().await, "this Redis has no password: AUTH fails");
        let redis = open("redis://127.0.0.1:6379/1");
        assert!(redis.probe().await, "database 1 exists");
        let redis = open("redis://127.0.0.1:6379/4000");
        assert!(!redis.probe().await, "database 4000 does not");
    }
}
