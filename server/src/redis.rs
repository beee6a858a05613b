//! The server's Redis client: the `redis` crate (RESP over TCP, or TLS for
//! `rediss://`) with this server's policy on top.
//!
//! * [`RedisUrl`]: `redis[s]://[[user]:password@]host:port[/db]`, checked
//!   with errors that say what is wrong; its `Debug` and `Display` never
//!   show the password.
//! * [`Redis`]: two multiplexed connections, one for short commands (rate
//!   limits, invalidations, pings) and one for the large values of the
//!   module cache, so a multi-MiB write never queues a rate-limit check
//!   behind it. Every command has a time limit, so Redis trouble never
//!   stalls a request for long. Redis is either *up* or *down*: a command
//!   that fails for a connection reason marks it down (logged once, as a
//!   warning) and later commands fail at once, without touching the
//!   network, until the monitor task ([`Redis::monitor`]) reaches it again
//!   (logged once, as info). Callers fall back to local behaviour while it
//!   is down.
//! * [`Subscription`]: one dedicated pub/sub connection.
//!
//! What the crate does not allow: a per-reply size cap while reading. A
//! reply is checked against [`MAX_VALUE_BYTES`] once it has arrived (the
//! module cache refuses larger values, and never writes them), and a
//! subscription message against [`MAX_MESSAGE_BYTES`]; Redis is trusted
//! not to send gigabytes unasked, as it is by every Redis client.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::{MultiplexedConnection, PubSub};
use ::redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind};
use futures_core::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

/// What a command returns: the crate's reply type.
pub use ::redis::Value as Reply;

/// The bound of an ordinary command (connecting included).
pub const COMMAND_TIMEOUT: Duration = Duration::from_millis(200);
/// The largest value this server stores in Redis (a sealed `.cwasm` is a
/// few MiB).
pub const MAX_VALUE_BYTES: usize = 64 << 20;
/// The largest pub/sub payload accepted (they are script names).
pub const MAX_MESSAGE_BYTES: usize = 8 << 10;
/// How often the monitor pings a Redis that is up.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// The monitor's retry delays while Redis is down: doubling up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// Where Redis is and how to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl {
    /// The URL as given, handed to the crate (never printed).
    raw: String,
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    has_password: bool,
    db: u32,
}

const URL_FORM: &str = "redis[s]://[[USER]:PASSWORD@]HOST[:PORT][/DB]";

impl RedisUrl {
    /// `redis[s]://[[user]:password@]host[:port][/db]` (port 6379 and db 0
    /// by default; `rediss://` is TLS). The error says what is wrong,
    /// never repeating the password.
    pub fn parse(url: &str) -> Result<RedisUrl, String> {
        let (tls, rest) = if let Some(rest) = url.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = url.strip_prefix("redis://") {
            (false, rest)
        } else {
            return Err(format!("not a redis:// or rediss:// (TLS) URL; the form is {URL_FORM}"));
        };
        let rest = rest.split_once('#').map_or(rest, |(before, _)| before);
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => (Some(userinfo), hostport),
            None => (None, authority),
        };
        let (username, has_password) = match userinfo {
            None => (None, false),
            Some(info) => match info.split_once(':') {
                Some((user, _)) => (Some(user.to_owned()).filter(|u| !u.is_empty()), true),
                None => (Some(info.to_owned()).filter(|u| !u.is_empty()), false),
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
            return Err(format!("no host; the form is {URL_FORM}"));
        }
        let port = match port {
            None => 6379,
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("`{port}` is not a port number"))?,
        };
        let db = match path.split_once('?').map_or(path, |(db, _)| db) {
            "" => 0,
            db => db
                .parse::<u32>()
                .map_err(|_| format!("`/{db}` is not a database number; use /0 to /15"))?,
        };
        let parsed = RedisUrl {
            raw: url.to_owned(),
            tls,
            host: host.to_owned(),
            port,
            username,
            has_password,
            db,
        };
        // What the crate makes of it must be what was checked here.
        ::redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("the Redis client cannot use it: {}", e.category()))?;
        Ok(parsed)
    }

    /// The URL with the password shown as `***`.
    pub fn redacted(&self) -> String {
        let user = self.username.as_deref().unwrap_or("");
        let login = match (&self.username, self.has_password) {
            (_, true) => format!("{user}:***@"),
            (Some(user), false) => format!("{user}@"),
            (None, false) => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://{login}{host}:{}/{}", self.port, self.db)
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

/// Why a command did not give a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisError {
    /// Redis is marked down: nothing was sent.
    Unavailable,
    /// No reply within the command's time limit.
    Timeout,
    /// The connection failed (refused, reset, closed, TLS, login).
    Io(String),
    /// The reply is not the one expected, or too large.
    Protocol(String),
    /// Redis answered with an error reply.
    Server(String),
}

impl fmt::Display for RedisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RedisError::Unavailable => f.write_str("Redis is marked unreachable"),
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
        !matches!(self, RedisError::Server(_) | RedisError::Unavailable)
    }
}

impl From<::redis::RedisError> for RedisError {
    fn from(e: ::redis::RedisError) -> RedisError {
        match e.kind() {
            // An error reply: the command failed, the connection is fine.
            ErrorKind::Server(_) | ErrorKind::Extension => RedisError::Server(match e.detail() {
                Some(detail) => format!("{} {detail}", e.code().unwrap_or("ERR")),
                None => e.code().unwrap_or("ERR").to_owned(),
            }),
            ErrorKind::Parse | ErrorKind::UnexpectedReturnType => RedisError::Protocol(e.to_string()),
            _ => RedisError::Io(e.to_string()),
        }
    }
}

/// Which connection a command takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Short commands: rate limits, invalidations, pings.
    Command = 0,
    /// The module cache's large values.
    Bulk = 1,
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

/// A client; cheap to clone.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    url: RedisUrl,
    client: Client,
    /// The open connection of each [`Lane`], if any.
    lanes: [Mutex<Option<MultiplexedConnection>>; 2],
    status: AtomicU8,
    /// Commands that failed for a connection reason, since start (a
    /// counter the metrics own).
    errors: Counter,
    /// Wakes the monitor when a command finds Redis gone.
    lost: Notify,
    /// Commands in flight and their durations, by lane (for the metrics).
    commands: CommandWatch,
}

/// Redis commands in flight and how long they took, by lane (`command`,
/// `bulk`). There is no pool to wait for: each lane is one multiplexed
/// connection, so "in use" is the commands in flight on it.
#[derive(Debug, Clone)]
pub struct CommandWatch {
    pub in_flight: Family<LaneLabel, Gauge>,
    pub seconds: Family<LaneLabel, Histogram, fn() -> Histogram>,
}

impl Default for CommandWatch {
    fn default() -> CommandWatch {
        fn histogram() -> Histogram {
            // 100 µs to the command timeout and past it (a bulk lane's limit).
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 1.0,
            ])
        }
        CommandWatch {
            in_flight: Family::default(),
            seconds: Family::new_with_constructor(histogram),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LaneLabel {
    lane: &'static str,
}

impl Lane {
    fn label(self) -> LaneLabel {
        LaneLabel {
            lane: match self {
                Lane::Command => "command",
                Lane::Bulk => "bulk",
            },
        }
    }
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
    /// A client for `url` counting failed commands in `errors`; `ca_pem`
    /// replaces the system's trust store for `rediss://` (a private CA).
    /// Nothing connects until [`Redis::probe`] or [`Redis::monitor`] runs.
    pub fn new(url: RedisUrl, ca_pem: Option<Vec<u8>>, errors: Counter) -> Result<Redis, String> {
        let client = match ca_pem {
            Some(root_cert) if url.tls => Client::build_with_tls(
                url.raw.as_str(),
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            ),
            _ => Client::open(url.raw.as_str()),
        }
        .map_err(|e| format!("cannot use {url}: {}", RedisError::from(e)))?;
        Ok(Redis {
            inner: Arc::new(Inner {
                url,
                client,
                lanes: [Mutex::new(None), Mutex::new(None)],
                status: AtomicU8::new(0),
                errors,
                lost: Notify::new(),
                commands: CommandWatch::default(),
            }),
        })
    }

    pub fn status(&self) -> Status {
        Status::from_u8(self.inner.status.load(Ordering::Acquire))
    }

    pub fn is_up(&self) -> bool {
        self.status() == Status::Up
    }

    /// Commands in flight and their durations, for the metrics to register.
    pub fn commands(&self) -> &CommandWatch {
        &self.inner.commands
    }

    /// Commands that failed because of the connection or a timeout.
    #[cfg(test)]
    pub fn errors(&self) -> u64 {
        self.inner.errors.get()
    }

    /// One short command with [`COMMAND_TIMEOUT`]. Fails at once while
    /// Redis is down; an error reply is `Err(Server)`, and leaves Redis up.
    pub async fn call(&self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        if !self.is_up() {
            return Err(RedisError::Unavailable);
        }
        self.checked(Lane::Command, COMMAND_TIMEOUT, &command(args)).await
    }

    /// A command that moves a large value (the module cache), on its own
    /// connection, given up after `limit`.
    pub async fn call_bulk(&self, limit: Duration, args: &[&[u8]]) -> Result<Reply, RedisError> {
        if !self.is_up() {
            return Err(RedisError::Unavailable);
        }
        self.checked(Lane::Bulk, limit, &command(args)).await
    }

    /// A Lua script by its SHA-1, sent whole when Redis does not know it
    /// (after a restart), with [`COMMAND_TIMEOUT`] for both.
    pub async fn script(&self, script: &::redis::Script, keys: &[&str], args: &[&[u8]]) -> Result<Reply, RedisError> {
        if !self.is_up() {
            return Err(RedisError::Unavailable);
        }
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(*key);
        }
        for arg in args {
            invocation.arg(*arg);
        }
        let deadline = tokio::time::Instant::now() + COMMAND_TIMEOUT;
        let attempt = async {
            let mut conn = self.connection(Lane::Command).await?;
            Ok(invocation.invoke_async::<Reply>(&mut conn).await?)
        };
        self.settle(Lane::Command, deadline, attempt).await
    }

    /// [`Redis::call`] without the up check (the monitor's way back).
    async fn checked(&self, lane: Lane, limit: Duration, cmd: &Cmd) -> Result<Reply, RedisError> {
        let deadline = tokio::time::Instant::now() + limit;
        let attempt = async {
            let mut conn = self.connection(lane).await?;
            let reply: Reply = cmd.query_async(&mut conn).await?;
            Ok(reply)
        };
        self.settle(lane, deadline, attempt).await
    }

    /// Run `attempt` until `deadline`, and mark Redis down when it failed
    /// for a connection reason (a timeout included).
    async fn settle(
        &self,
        lane: Lane,
        deadline: tokio::time::Instant,
        attempt: impl Future<Output = Result<Reply, RedisError>>,
    ) -> Result<Reply, RedisError> {
        struct InFlight(Gauge);
        impl Drop for InFlight {
            fn drop(&mut self) {
                self.0.dec();
            }
        }
        let label = lane.label();
        let in_flight = self.inner.commands.in_flight.get_or_create(&label).clone();
        in_flight.inc();
        let in_flight = InFlight(in_flight);
        let started = std::time::Instant::now();
        let result = tokio::time::timeout_at(deadline, attempt).await;
        drop(in_flight);
        self.inner
            .commands
            .seconds
            .get_or_create(&label)
            .observe(started.elapsed().as_secs_f64());
        let result = result.unwrap_or(Err(RedisError::Timeout)).and_then(|reply| {
            if reply_bytes(&reply) > MAX_VALUE_BYTES + 64 {
                return Err(RedisError::Protocol(format!(
                    "a reply over the {MAX_VALUE_BYTES} bytes this server stores"
                )));
            }
            Ok(reply)
        });
        if let Err(e) = &result
            && e.is_connection_problem()
        {
            self.inner.errors.inc();
            self.drop_connection(lane);
            self.mark_down(e);
        }
        result
    }

    /// The lane's connection, opened if there is none.
    async fn connection(&self, lane: Lane) -> Result<MultiplexedConnection, RedisError> {
        if let Some(conn) = self.lane(lane).as_ref() {
            return Ok(conn.clone());
        }
        // Two callers may open one each; the later one is kept, the other
        // closes once its command is done.
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(COMMAND_TIMEOUT))
            .set_response_timeout(None);
        let conn = self
            .inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *self.lane(lane) = Some(conn.clone());
        Ok(conn)
    }

    fn lane(&self, lane: Lane) -> std::sync::MutexGuard<'_, Option<MultiplexedConnection>> {
        self.inner.lanes[lane as usize]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn drop_connection(&self, lane: Lane) {
        self.lane(lane).take();
    }

    fn mark_down(&self, why: &RedisError) {
        for lane in [Lane::Command, Lane::Bulk] {
            self.drop_connection(lane);
        }
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
        match self
            .checked(Lane::Command, COMMAND_TIMEOUT, &::redis::cmd("PING"))
            .await
        {
            Ok(Reply::SimpleString(pong)) if pong == "PONG" => {
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
            let mut pubsub = self.inner.client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            Ok::<_, ::redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(COMMAND_TIMEOUT, connecting)
            .await
            .map_err(|_| RedisError::Timeout)??;
        Ok(Subscription { pubsub })
    }
}

/// A command from its words.
fn command(args: &[&[u8]]) -> Cmd {
    let mut cmd = Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    cmd
}

/// About how many bytes a reply holds (its strings), without recursion
/// beyond what the crate already built.
fn reply_bytes(reply: &Reply) -> usize {
    let mut total = 0usize;
    let mut pending = vec![reply];
    while let Some(reply) = pending.pop() {
        match reply {
            Reply::BulkString(bytes) => total = total.saturating_add(bytes.len()),
            Reply::SimpleString(text) => total = total.saturating_add(text.len()),
            Reply::Array(items) | Reply::Set(items) => pending.extend(items),
            _ => total = total.saturating_add(8),
        }
    }
    total
}

/// A connection in subscribe mode.
pub struct Subscription {
    pubsub: PubSub,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription").finish_non_exhaustive()
    }
}

impl Subscription {
    /// The payload of the next message, or `None` when none came within
    /// `idle` (the connection is then intact: call again). An error means
    /// the connection is unusable: drop it and subscribe again.
    pub async fn next_message(&mut self, idle: Duration) -> Result<Option<Vec<u8>>, RedisError> {
        let mut messages = self.pubsub.on_message();
        // Cancel-safe: the messages wait in the crate's channel.
        let next = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx));
        match tokio::time::timeout(idle, next).await {
            Err(_) => Ok(None),
            Ok(None) => Err(RedisError::Io("the subscription's connection closed".to_owned())),
            Ok(Some(message)) => {
                let payload = message.get_payload_bytes();
                if payload.len() > MAX_MESSAGE_BYTES {
                    return Err(RedisError::Protocol(format!(
                        "a subscription message of {} bytes (at most {MAX_MESSAGE_BYTES})",
                        payload.len()
                    )));
                }
                Ok(Some(payload.to_vec()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "redis://127.0.0.1:6379";

    fn bulk(text: &str) -> Reply {
        Reply::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn urls() {
        let u = RedisUrl::parse("redis://:s3cret@cache.internal:6380/2").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.db), ("cache.internal", 6380, 2));
        assert_eq!((u.username.as_deref(), u.has_password), (None, true));
        assert_eq!(u.redacted(), "redis://:***@cache.internal:6380/2");
        assert!(!format!("{u:?} {u}").contains("s3cret"));
        let u = RedisUrl::parse("redis://app:pw@10.0.0.1").unwrap();
        assert_eq!((u.username.as_deref(), u.port, u.db), (Some("app"), 6379, 0));
        assert_eq!(u.redacted(), "redis://app:***@10.0.0.1:6379/0");
        let u = RedisUrl::parse("redis://[::1]:7000").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 7000));
        assert_eq!(u.redacted(), "redis://[::1]:7000/0");
        let u = RedisUrl::parse("rediss://:pw@cache.example:6380/1").unwrap();
        assert!(u.tls);
        assert_eq!(u.redacted(), "rediss://:***@cache.example:6380/1");
        let err = |url: &str| RedisUrl::parse(url).unwrap_err();
        assert!(err("http://x").contains("not a redis:// or rediss://"));
        assert!(err("redis://:pw@").contains("no host"));
        assert!(err("redis://h:port").contains("`port` is not a port number"));
        assert!(err("redis://h:0").contains("not a port number"));
        assert!(err("redis://h/x").contains("not a database number"));
        assert!(err("redis://[::1").contains("closing `]`"));
        assert!(!err("redis://:hunter2@h:99999").contains("hunter2"));
    }

    fn client() -> Redis {
        open(LOCAL)
    }

    fn open(url: &str) -> Redis {
        Redis::new(RedisUrl::parse(url).unwrap(), None, Counter::default()).unwrap()
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
        let set = redis
            .call_bulk(COMMAND_TIMEOUT, &[b"SET", k.as_bytes(), &value, b"PX", b"60000"])
            .await;
        assert_eq!(set, Ok(Reply::Okay));
        assert_eq!(
            redis.call_bulk(COMMAND_TIMEOUT, &[b"GET", k.as_bytes()]).await,
            Ok(Reply::BulkString(value))
        );
        let ttl = redis.call(&[b"PTTL", k.as_bytes()]).await.unwrap();
        assert!(matches!(ttl, Reply::Int(ms) if ms > 0 && ms <= 60_000), "{ttl:?}");
        assert_eq!(redis.call(&[b"DEL", k.as_bytes()]).await, Ok(Reply::Int(1)));
        assert_eq!(redis.call(&[b"GET", k.as_bytes()]).await, Ok(Reply::Nil));
        // An error reply is the command's failure, not Redis'.
        let wrong = redis.call(&[b"NOSUCHCOMMAND"]).await;
        assert!(
            matches!(&wrong, Err(RedisError::Server(e)) if e.starts_with("ERR")),
            "{wrong:?}"
        );
        assert!(redis.is_up());
        let script = ::redis::Script::new("return {tonumber(ARGV[1]) + 1, KEYS[1]}");
        let ran = redis.script(&script, &["x"], &[b"41"]).await;
        assert_eq!(ran, Ok(Reply::Array(vec![Reply::Int(42), bulk("x")])));
        // Every command was timed on its lane, and none is in flight now.
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("c", "in flight", redis.commands().in_flight.clone());
        registry.register("s", "seconds", redis.commands().seconds.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("s_count{lane=\"bulk\"} 2\n"), "{text}");
        assert!(text.contains("s_count{lane=\"command\"} 6\n"), "{text}");
        assert!(text.contains("c{lane=\"command\"} 0\n"), "{text}");
        // Many callers at once share the multiplexed connection.
        let calls = (0..64).map(|i| {
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
    async fn a_large_write_does_not_hold_up_short_commands() {
        let redis = client();
        assert!(redis.probe().await);
        let k = key("large");
        let value = vec![7u8; 32 << 20];
        let writer = {
            let (redis, k) = (redis.clone(), k.clone());
            tokio::spawn(async move {
                redis
                    .call_bulk(
                        Duration::from_secs(10),
                        &[b"SET", k.as_bytes(), &value, b"PX", b"60000"],
                    )
                    .await
            })
        };
        // While the 32 MiB value is on its way, pings keep their 200 ms.
        for _ in 0..5 {
            assert_eq!(redis.call(&[b"PING"]).await, Ok(Reply::SimpleString("PONG".to_owned())));
        }
        assert_eq!(writer.await.unwrap(), Ok(Reply::Okay));
        redis.call(&[b"DEL", k.as_bytes()]).await.unwrap();
        assert_eq!(redis.errors(), 0);
    }

    #[tokio::test]
    async fn publish_reaches_subscribers() {
        let redis = client();
        assert!(redis.probe().await);
        let channel = key("channel");
        let mut sub = redis.subscribe(&channel).await.unwrap();
        let sent = redis.call(&[b"PUBLISH", channel.as_bytes(), b"hello"]).await;
        assert_eq!(sent, Ok(Reply::Int(1)), "one subscriber");
        let got = sub.next_message(Duration::from_secs(1)).await;
        assert_eq!(got.unwrap().expect("a message within a second"), b"hello");
        let quiet = sub.next_message(Duration::from_millis(20)).await;
        assert_eq!(quiet, Ok(None), "nothing more was published");
        // A payload over the cap is refused, not passed on.
        let big = vec![b'x'; MAX_MESSAGE_BYTES + 1];
        redis.call(&[b"PUBLISH", channel.as_bytes(), &big]).await.unwrap();
        let refused = sub.next_message(Duration::from_secs(1)).await;
        assert!(matches!(refused, Err(RedisError::Protocol(_))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_closed_port_is_down_at_once() {
        // Bind then drop a listener: the port is closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let redis = open(&format!("redis://127.0.0.1:{port}"));
        assert!(!redis.probe().await);
        assert_eq!(redis.status(), Status::Down);
        assert_eq!(redis.errors(), 1);
        let started = std::time::Instant::now();
        assert_eq!(redis.call(&[b"PING"]).await, Err(RedisError::Unavailable));
        assert!(started.elapsed() < Duration::from_millis(5), "no network while down");
        assert!(redis.subscribe("x").await.is_err());
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let redis = open(&format!("redis://127.0.0.1:{port}"));
        let started = std::time::Instant::now();
        assert!(!redis.probe().await);
        assert!(started.elapsed() < COMMAND_TIMEOUT * 2, "{:?}", started.elapsed());
        assert_eq!(redis.status(), Status::Down);
    }

    #[tokio::test]
    async fn wrong_passwords_and_databases_are_refused() {
        let redis = open("redis://:not-the-password@127.0.0.1:6379");
        assert!(!redis.probe().await, "this Redis has no password: AUTH fails");
        let redis = open("redis://127.0.0.1:6379/1");
        assert!(redis.probe().await, "database 1 exists");
        let redis = open("redis://127.0.0.1:6379/4000");
        assert!(!redis.probe().await, "database 4000 does not");
    }
}
