//! The accept loop of `avap serve`: every TCP connection is admitted under
//! two caps, served by hyper's HTTP/1.1 connection (keep-alive on), and
//! closed when it stops making progress.
//!
//! Why each bound exists — a connection costs a file descriptor and a task
//! whether or not a request ever completes, and the rate limit ([`protect`])
//! only sees requests that do:
//!
//! * **Header read** (`header_read_timeout_ms`): a client must send a whole
//!   request head within this time of connecting, or of the first byte of a
//!   later request on a kept-alive connection. One deadline for the whole
//!   head, not per read, so a slowloris client trickling a byte a second is
//!   cut off like a silent one.
//! * **Idle** (`idle_timeout_ms`): a kept-alive connection with no byte of
//!   a new request this long after its last response is closed. Longer
//!   than the header bound on purpose: load balancers keep idle upstream
//!   connections for 60 s or more, and a server that closes them first
//!   races their next request.
//! * **Total cap** (`max_connections`, clamped below `RLIMIT_NOFILE` at
//!   start): idle or slow connections cannot take every descriptor, which
//!   would stop the health check, database connections and log files.
//! * **Per-IP cap** (`max_connections_per_ip`): one address cannot take
//!   the whole total cap by itself.
//!
//! A connection over a cap is closed at once, before a byte is read or
//! written (no 503: writing a response before reading the request races
//! the client's request, and a flood is cheapest to refuse with a close);
//! it is counted in `avap_connections_refused_total{reason}`. A timeout
//! closes the connection without a response and counts in
//! `avap_connections_timed_out_total{timeout}`.
//!
//! Requests being handled have no connection deadline: `request_timeout_ms`
//! bounds them ([`protect`]).
//!
//! hyper's own `header_read_timeout` is one timer from the end of the
//! previous response (or the connect) to the end of the next head, so it
//! would also close kept-alive connections after the header bound. The
//! phases are tracked here instead (the socket's reads, the service's
//! requests and their response bodies), and hyper gets no timer: its
//! header timer costs every request a boxed sleep on the timer wheel.
//!
//! The deadlines cost a request no timer work either. A phase change only
//! writes the new deadline; the connection's one timer is re-armed when it
//! fires, never later than the deadline it must enforce (see
//! [`Connection::serve`]). Under load a busy connection's timer fires once
//! per `min(header_read_timeout, idle_timeout)`, not several times per
//! request.
//!
//! [`protect`]: super::protect

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::body::{Bytes, Frame, Incoming, SizeHint};
use hyper::service::Service as _;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::metrics::ConnectionCounters;

/// Descriptors kept for everything but client connections (databases,
/// Redis, outbound calls, log files), at most half the limit.
const RESERVED_FDS: u64 = 256;

/// The bounds on client connections (config keys `header_read_timeout_ms`,
/// `idle_timeout_ms`, `max_connections`, `max_connections_per_ip`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From connecting, or from a later request's first byte, to its whole head.
    pub header_read_timeout: Duration,
    /// From a response to the first byte of the next request.
    pub idle_timeout: Duration,
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one IP address.
    pub max_connections_per_ip: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            max_connections: 4096,
            max_connections_per_ip: 256,
        }
    }
}

impl ConnectionLimits {
    /// These limits with `max_connections` lowered, when needed, so that
    /// the connections and [`RESERVED_FDS`] fit under the soft limit on
    /// open files (`nofile`); the warning says how to raise it.
    fn fit_fd_limit(mut self) -> ConnectionLimits {
        let Ok(soft) = open_files_limit() else {
            return self;
        };
        let room = soft.saturating_sub(RESERVED_FDS.min(soft / 2)).max(1);
        if u64::try_from(self.max_connections).unwrap_or(u64::MAX) > room {
            let clamped = usize::try_from(room).unwrap_or(usize::MAX);
            tracing::warn!(
                max_connections = self.max_connections,
                open_files_limit = soft,
                using = clamped,
                "max_connections does not fit under the open-files limit (with room for databases, Redis, \
                 outbound calls and logs); using {clamped}. Raise the limit (`ulimit -n`, systemd \
                 LimitNOFILE=) or lower max_connections"
            );
            self.max_connections = clamped;
        }
        self
    }
}

/// The soft `RLIMIT_NOFILE`; `Err` when it is unlimited.
fn open_files_limit() -> Result<u64, ()> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
}

/// Serve `router` on `listener` until `shutdown` resolves, then stop
/// accepting, let every connection finish its request in flight (hyper's
/// graceful shutdown: idle ones close at once), and return when all are
/// closed. The caller bounds that wait.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    counters: Arc<ConnectionCounters>,
    shutdown: impl Future<Output = ()>,
) {
    let limits = limits.fit_fd_limit();
    let admission = Arc::new(Admission::new(&limits, counters));
    // No timer for hyper: the phases below bound the head (module docs).
    let http = hyper::server::conn::http1::Builder::new();
    // Every connection task holds a receiver: `stop.send` starts their
    // graceful shutdown, `stop.closed()` resolves once the last one ended.
    let (stop, stopped) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Some(slot) = admission.admit(peer.ip()) else {
            // Closed before a byte is read or written.
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            peer,
            slot,
            limits: limits.clone(),
            http: http.clone(),
            router: router.clone(),
            stop: stopped.clone(),
        };
        tokio::spawn(connection.serve());
    }
    drop(listener);
    let _ = stop.send(true);
    drop(stopped);
    stop.closed().await;
}

/// An accept error: a connection that failed before we got it is skipped;
/// anything else (out of descriptors) is logged and waited out briefly, so
/// the loop does not spin while nothing can be accepted.
async fn accept_failed(e: &io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("cannot accept a connection: {e}; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The open connections, counted in total and per IP.
struct Admission {
    max_total: usize,
    max_per_ip: usize,
    open: Mutex<Open>,
    counters: Arc<ConnectionCounters>,
    /// Refusals are logged at most every [`Admission::WARN_EVERY`] (a flood would flood the log).
    next_warning_ms: AtomicU64,
    refused_since_warning: AtomicU64,
    started: Instant,
}

#[derive(Default)]
struct Open {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// A connection counted in [`Admission`]; uncounted when dropped.
struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

/// Why a connection was refused: the config key of the cap it hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MaxConnections,
    MaxConnectionsPerIp,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

impl Admission {
    const WARN_EVERY: Duration = Duration::from_secs(10);

    fn new(limits: &ConnectionLimits, counters: Arc<ConnectionCounters>) -> Admission {
        Admission {
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
            open: Mutex::default(),
            counters,
            next_warning_ms: AtomicU64::new(0),
            refused_since_warning: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Count a connection from `ip`, or refuse it (counted and logged).
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        // `::ffff:a.b.c.d` on a dual-stack listener is the IPv4 client a.b.c.d.
        let ip = ip.to_canonical();
        let refusal = {
            let mut open = lock(&self.open);
            let from_ip = open.per_ip.get(&ip).copied().unwrap_or(0);
            if open.total >= self.max_total {
                Some(Refusal::MaxConnections)
            } else if from_ip >= self.max_per_ip {
                Some(Refusal::MaxConnectionsPerIp)
            } else {
                open.total += 1;
                open.per_ip.insert(ip, from_ip + 1);
                None
            }
        };
        match refusal {
            None => {
                self.counters.opened();
                Some(Slot {
                    admission: self.clone(),
                    ip,
                })
            }
            Some(reason) => {
                self.counters.refused(reason);
                self.warn_refused(reason, ip);
                None
            }
        }
    }

    fn release(&self, ip: IpAddr) {
        {
            let mut open = lock(&self.open);
            open.total = open.total.saturating_sub(1);
            if let Some(n) = open.per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    open.per_ip.remove(&ip);
                }
            }
        }
        self.counters.closed();
    }

    fn warn_refused(&self, reason: Refusal, ip: IpAddr) {
        let refused = self.refused_since_warning.fetch_add(1, Ordering::Relaxed) + 1;
        let now_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let next = self.next_warning_ms.load(Ordering::Relaxed);
        let every = u64::try_from(Self::WARN_EVERY.as_millis()).unwrap_or(u64::MAX);
        if now_ms >= next
            && self
                .next_warning_ms
                .compare_exchange(next, now_ms + every, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.refused_since_warning.fetch_sub(refused, Ordering::Relaxed);
            let limit = match reason {
                Refusal::MaxConnections => self.max_total,
                Refusal::MaxConnectionsPerIp => self.max_per_ip,
            };
            tracing::warn!(
                reason = reason.as_str(),
                limit,
                peer = %ip,
                refused,
                "connections refused: {} ({limit}) reached; closed at once (avap_connections_refused_total)",
                reason.as_str()
            );
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(self.ip);
    }
}

/// One accepted connection and what serving it needs.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    limits: ConnectionLimits,
    http: hyper::server::conn::http1::Builder,
    router: Router,
    stop: watch::Receiver<bool>,
}

impl Connection {
    /// Serve requests until the client closes, a deadline passes or the
    /// server stops.
    async fn serve(self) {
        let Connection {
            stream,
            peer,
            slot,
            limits,
            http,
            router,
            mut stop,
        } = self;
        let phase = Arc::new(PhaseWatch::new(&limits));
        let app = TowerToHyperService::new(router);
        let requests = phase.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            // What `into_make_service_with_connect_info::<SocketAddr>()`
            // adds: the rate limit keys anonymous requests by it.
            request.extensions_mut().insert(ConnectInfo(peer));
            let guard = requests.request_started();
            let response = app.call(request);
            async move {
                let response = response.await?;
                Ok::<_, Infallible>(response.map(|body| Guarded { body, _guard: guard }))
            }
        });
        let io = TokioIo::new(Watched {
            io: stream,
            phase: phase.clone(),
        });
        let conn = http.serve_connection(io, service);
        tokio::pin!(conn);
        // The one timer: armed at `next_check` and re-armed when it fires.
        // It never fires after the deadline it must enforce: every deadline
        // is set `recheck` or more after the moment it is set, and the
        // timer is never armed more than `recheck` ahead.
        // (At least 1 ms: settings are 100 ms or more, but a zero here
        // would spin while a request runs.)
        let recheck = limits
            .header_read_timeout
            .min(limits.idle_timeout)
            .max(Duration::from_millis(1));
        let next_check = |now: Instant| match phase.deadline() {
            Some((at, _)) => at.min(now + recheck),
            None => now + recheck,
        };
        let timer = tokio::time::sleep_until(next_check(Instant::now()).into());
        tokio::pin!(timer);
        let mut stopping = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, "connection ended: {e}");
                    }
                    break;
                }
                () = timer.as_mut() => {
                    let now = Instant::now();
                    if let Some((at, timeout)) = phase.deadline()
                        && at <= now
                    {
                        slot.admission.counters.timed_out(timeout);
                        tracing::debug!(%peer, timeout = timeout.as_str(), "connection closed: timed out");
                        break;
                    }
                    timer.as_mut().reset(next_check(now).into());
                }
                changed = stop.changed(), if !stopping => {
                    let _ = changed;
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
        // Dropping `conn` closes the socket; dropping `slot` uncounts it.
        drop(slot);
    }
}

/// Which deadline closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    HeaderRead,
    Idle,
}

impl Timeout {
    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::HeaderRead => "header_read",
            Timeout::Idle => "idle",
        }
    }
}

/// Where a connection is between requests, and its deadline there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: since connecting, or since the first byte
    /// of a request on a kept-alive connection.
    Head { deadline: Instant },
    /// Requests whose response body is not finished (no deadline here).
    Busy { requests: usize },
    /// Kept alive after a response, nothing of a new request received.
    Idle { deadline: Instant },
}

/// A connection's phase, moved on by its socket reads ([`Watched`]), its
/// requests and their response bodies ([`Guarded`]); the connection task
/// reads it when its timer fires (no wake-up per change).
struct PhaseWatch {
    phase: Mutex<Phase>,
    header_read: Duration,
    idle: Duration,
}

impl PhaseWatch {
    fn new(limits: &ConnectionLimits) -> PhaseWatch {
        PhaseWatch {
            phase: Mutex::new(Phase::Head {
                deadline: Instant::now() + limits.header_read_timeout,
            }),
            header_read: limits.header_read_timeout,
            idle: limits.idle_timeout,
        }
    }

    fn deadline(&self) -> Option<(Instant, Timeout)> {
        match *lock(&self.phase) {
            Phase::Head { deadline } => Some((deadline, Timeout::HeaderRead)),
            Phase::Idle { deadline } => Some((deadline, Timeout::Idle)),
            Phase::Busy { .. } => None,
        }
    }

    /// Bytes arrived: the first byte of a request after an idle spell
    /// starts its header deadline.
    fn bytes_read(&self) {
        let mut phase = lock(&self.phase);
        if matches!(*phase, Phase::Idle { .. }) {
            let next = Phase::Head {
                deadline: Instant::now() + self.header_read,
            };
            *phase = next;
        }
    }

    /// A request head was read (hyper called the service).
    fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut phase = lock(&self.phase);
        let requests = match *phase {
            Phase::Busy { requests } => requests + 1,
            Phase::Head { .. } | Phase::Idle { .. } => 1,
        };
        *phase = Phase::Busy { requests };
        RequestGuard(self.clone())
    }

    /// A response body was finished or dropped (or the request was
    /// cancelled before its response).
    fn request_done(&self) {
        let mut phase = lock(&self.phase);
        if let Phase::Busy { requests } = *phase {
            let next = if requests > 1 {
                Phase::Busy { requests: requests - 1 }
            } else {
                Phase::Idle {
                    deadline: Instant::now() + self.idle,
                }
            };
            *phase = next;
        }
    }
}

/// Marks its request done when dropped: it travels from the service call
/// into the response body, which hyper drops once it is written.
struct RequestGuard(Arc<PhaseWatch>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that carries its request's [`RequestGuard`].
struct Guarded {
    body: Body,
    _guard: RequestGuard,
}

impl hyper::body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, telling [`PhaseWatch`] when bytes arrive.
struct Watched {
    io: TcpStream,
    phase: Arc<PhaseWatch>,
}

impl AsyncRead for Watched {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.phase.bytes_read();
        }
        poll
    }
}

impl AsyncWrite for Watched {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_connections_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            max_connections,
            max_connections_per_ip,
            ..ConnectionLimits::default()
        }
    }

    #[test]
    fn caps_count_in_total_and_per_ip_and_free_on_drop() {
        let counters = Arc::new(ConnectionCounters::default());
        let admission = Arc::new(Admission::new(&limits(3, 2), counters.clone()));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = admission.admit(a).expect("first from a");
        let a2 = admission.admit(a).expect("second from a");
        assert!(admission.admit(a).is_none(), "a is at its per-IP cap");
        // The same client over a dual-stack listener.
        assert!(admission.admit("::ffff:10.0.0.1".parse().unwrap()).is_none());
        let b1 = admission.admit(b).expect("b has its own cap");
        assert!(admission.admit(b).is_none(), "the total cap");
        drop(a1);
        let b2 = admission.admit(b).expect("room again");
        assert_eq!(counters.open(), 3);
        drop((a2, b1, b2));
        assert_eq!(counters.open(), 0);
        assert!(lock(&admission.open).per_ip.is_empty(), "no entry left behind");
        assert_eq!(counters.refused_count(Refusal::MaxConnections), 1);
        assert_eq!(counters.refused_count(Refusal::MaxConnectionsPerIp), 2);
    }

    #[test]
    fn phases_move_with_bytes_requests_and_bodies() {
        let watch = Arc::new(PhaseWatch::new(&ConnectionLimits {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_mins(1),
            ..ConnectionLimits::default()
        }));
        let (at, timeout) = watch.deadline().expect("a fresh connection must send its head");
        assert_eq!(timeout, Timeout::HeaderRead);
        assert!(at <= Instant::now() + Duration::from_secs(10));
        watch.bytes_read();
        assert_eq!(
            watch.deadline(),
            Some((at, Timeout::HeaderRead)),
            "bytes do not extend the head"
        );
        let guard = watch.request_started();
        assert_eq!(watch.deadline(), None, "no deadline while a request runs");
        watch.bytes_read();
        assert_eq!(watch.deadline(), None, "body bytes change nothing");
        drop(guard);
        let (idle_until, timeout) = watch.deadline().expect("kept alive");
        assert_eq!(timeout, Timeout::Idle);
        assert!(idle_until > Instant::now() + Duration::from_secs(50));
        watch.bytes_read();
        let (head_until, timeout) = watch.deadline().expect("a new head");
        assert_eq!(timeout, Timeout::HeaderRead);
        assert!(head_until < idle_until, "the header bound starts at the first byte");
    }

    #[test]
    fn max_connections_fits_under_the_open_files_limit() {
        let soft = open_files_limit().expect("a limit on this machine");
        let fitted = limits(usize::MAX, 1).fit_fd_limit();
        let room = usize::try_from(soft - RESERVED_FDS.min(soft / 2)).unwrap();
        assert_eq!(fitted.max_connections, room);
        assert_eq!(limits(1, 1).fit_fd_limit().max_connections, 1, "small enough already");
    }
}
