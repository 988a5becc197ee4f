//! Redis connection management for Volley's cluster backends: the Socket.IO Redis adapters of
//! `volley-socketio-redis`, and the Redis backend of the raw-WebSocket topics hub
//! ([`hub`], feature `hub`).
//!
//! One [`Redis`] handle owns one RESP3 connection (redis-rs' multiplexed connection) used for
//! everything: subscriptions ([`Subscription::Channel`], [`Subscription::Pattern`],
//! [`Subscription::Shard`] for Redis 7's sharded pub/sub), ordered publishing ([`Publisher`])
//! and commands ([`Redis::query`]). A supervisor task keeps it up:
//!
//! - when the connection cannot be made or drops, it logs one clear line
//!   (`redis: connection lost … cross-server delivery paused`), retries with exponential backoff
//!   (100 ms doubling up to 5 s by default), then resubscribes to every registered subscription
//!   and logs `redis: connected` again;
//! - a connection that goes silent without an error (a network partition, a Redis host gone
//!   without a reset, a NAT or firewall that forgot the flow) counts as dropped: every
//!   [`health_check`](RedisConfig::health_check) (5 s) the supervisor sends a `PING`, and a
//!   connection that does not answer within the response timeout is made again — without it, a
//!   subscriber's connection could stay half-open, and "ready", for as long as TCP takes to
//!   notice (forever for one that only reads);
//! - meanwhile [`Publisher::send`] drops what it cannot publish (counted, logged once per
//!   outage) and [`Redis::query`] fails fast with [`RedisError::Unavailable`]: callers keep
//!   serving their local clients.
//!
//! Received messages are handed to each subscription's handler on the supervisor task, in the
//! order Redis delivered them; handlers must be quick and must not block.
//!
//! Why redis-rs (the `redis` crate, maintained by Redis) rather than fred: both are well kept and
//! speak RESP3; fred brings its own reconnection policies, resubscription and cluster/sentinel
//! routing behind many features and more dependencies, while redis-rs gives a plain multiplexed
//! connection whose pushes (including `SSUBSCRIBE`'s) arrive on a channel. The supervision
//! Volley needs is small and wants to be explicit (one clear log line per outage, fail fast
//! while down, resubscribe before reporting ready, ordered pipelined publishing), so it is
//! written here on top of redis-rs. The one wart, redis-rs not recognising a raw `SUNSUBSCRIBE`
//! (issue 2533), is worked around and pinned (see `change_subscription`).

#[cfg(feature = "hub")]
pub mod hub;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};

/// Connection settings.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`.
    pub url: String,
    /// The first reconnect delay (100 ms); doubled after each failure.
    pub min_backoff: Duration,
    /// The longest reconnect delay (5 s).
    pub max_backoff: Duration,
    /// How long connecting may take (2 s).
    pub connect_timeout: Duration,
    /// How long a command may wait for its reply (5 s).
    pub response_timeout: Duration,
    /// The most messages a [`Publisher`] holds while Redis is slow (100,000); more are dropped.
    pub publish_queue: usize,
    /// Dials the connection instead of redis-rs' own TCP (and TLS for `rediss://`) dialling:
    /// a Unix socket, a tunnel, a simulated network (`None`, the default: the URL's host and
    /// port). The URL still gives the database, the credentials and the protocol.
    pub connector: Option<Connector>,
    /// How often the supervisor checks that the connection still answers (a `PING` that must
    /// be answered within [`response_timeout`](Self::response_timeout)); a connection that
    /// does not is dropped and made again. Default 5 s; `None` never checks. On a connection
    /// that blocks (`XREAD BLOCK`) the answer waits for the blocking command: its response
    /// timeout must exceed the blocking time (the streams adapter's reader is configured so).
    pub health_check: Option<Duration>,
}

/// A connection to the Redis transport, opened by a [`Connector`].
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

type Dialing = Pin<Box<dyn Future<Output = std::io::Result<Box<dyn Io>>> + Send>>;

/// Opens the transport of each connection to Redis ([`RedisConfig::connector`]).
#[derive(Clone)]
pub struct Connector(Arc<dyn Fn() -> Dialing + Send + Sync>);

impl Connector {
    /// A connector that calls `connect` for each connection attempt; its future yields the
    /// transport, over which the connection speaks RESP3 (`HELLO 3`, then the commands). The
    /// attempt, this future included, is bounded by [`RedisConfig::connect_timeout`]: the
    /// future is dropped if it takes longer, so dropping it must abandon the attempt.
    pub fn new<F, Fut, S>(connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connector(Arc::new(move || {
            let dialing = connect();
            Box::pin(async move { Ok(Box::new(dialing.await?) as Box<dyn Io>) })
        }))
    }
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector(..)")
    }
}

impl RedisConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            publish_queue: 100_000,
            connector: None,
            health_check: Some(Duration::from_secs(5)),
        }
    }
}

/// Why a Redis operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisError {
    /// The URL is invalid.
    Config(String),
    /// Not connected right now (the supervisor is reconnecting).
    Unavailable(String),
    /// Redis answered with an error, or the answer had an unexpected shape.
    Command(String),
    /// The publish queue is full (Redis is too slow or gone): the message was dropped.
    QueueFull,
    /// The handle was closed.
    Closed,
}

impl std::fmt::Display for RedisError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RedisError::Config(e) => write!(f, "invalid Redis configuration: {e}"),
            RedisError::Unavailable(e) => write!(f, "Redis unavailable: {e}"),
            RedisError::Command(e) => write!(f, "Redis command failed: {e}"),
            RedisError::QueueFull => f.write_str("Redis publish queue full"),
            RedisError::Closed => f.write_str("Redis handle closed"),
        }
    }
}

impl std::error::Error for RedisError {}

fn command_error(e: redis::RedisError) -> RedisError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() || e.is_unrecoverable_error()
    {
        RedisError::Unavailable(e.to_string())
    } else {
        RedisError::Command(e.to_string())
    }
}

/// What to subscribe to.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subscription {
    /// `SUBSCRIBE channel`.
    Channel(String),
    /// `PSUBSCRIBE pattern`.
    Pattern(String),
    /// `SSUBSCRIBE channel` (Redis 7 sharded pub/sub).
    Shard(String),
}

impl Subscription {
    fn command(&self, subscribe: bool) -> redis::Cmd {
        let (name, arg) = match (self, subscribe) {
            (Subscription::Channel(c), true) => ("SUBSCRIBE", c),
            (Subscription::Channel(c), false) => ("UNSUBSCRIBE", c),
            (Subscription::Pattern(p), true) => ("PSUBSCRIBE", p),
            (Subscription::Pattern(p), false) => ("PUNSUBSCRIBE", p),
            (Subscription::Shard(c), true) => ("SSUBSCRIBE", c),
            (Subscription::Shard(c), false) => ("SUNSUBSCRIBE", c),
        };
        let mut cmd = redis::cmd(name);
        cmd.arg(arg);
        cmd
    }
}

/// A message received on a subscription.
#[derive(Clone, Debug)]
pub struct Message {
    /// The subscription it arrived on (the pattern for a pattern subscription).
    pub subscription: Subscription,
    /// The channel it was published on.
    pub channel: String,
    /// The payload, byte for byte.
    pub payload: Bytes,
}

/// A subscription's message handler (runs on the supervisor task: be quick, do not block).
pub type Handler = Arc<dyn Fn(Message) + Send + Sync>;

/// Identifies one registered handler (see [`Redis::unsubscribe`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

/// The connection's state, as [`Redis::state`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnState {
    /// Whether the connection is up and every registered subscription is confirmed.
    pub ready: bool,
    /// How many times a connection was made (1 after the first, 2 after one reconnect, …).
    pub connections: u64,
}

enum Control {
    Subscribe(Subscription),
    Unsubscribe(Subscription),
}

struct Inner {
    config: RedisConfig,
    handlers: Mutex<HashMap<Subscription, Vec<(u64, Handler)>>>,
    next_id: AtomicU64,
    control: mpsc::UnboundedSender<Control>,
    conn: Mutex<Option<MultiplexedConnection>>,
    state: watch::Sender<ConnState>,
    /// Subscription changes sent to the supervisor and not yet applied.
    pending: AtomicUsize,
    dropped: AtomicU64,
}

/// A handle on one supervised Redis connection. Cheap to clone. The supervisor stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &redact(&self.inner.config.url))
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Redis {
    /// Starts the supervisor for `config` (in the background: see [`ready`](Self::ready)).
    /// Must be called within a Tokio runtime. Fails only for an invalid URL.
    pub fn connect(config: RedisConfig) -> Result<Redis, RedisError> {
        let mut url = config.url.clone();
        // RESP3: pub/sub pushes and commands share the connection.
        if !url.contains("protocol=") {
            url.push_str(if url.contains('?') {
                "&protocol=resp3"
            } else {
                "?protocol=resp3"
            });
        }
        let client = redis::Client::open(url).map_err(|e| RedisError::Config(e.to_string()))?;
        let (control, control_rx) = mpsc::unbounded_channel();
        let (state, _) = watch::channel(ConnState {
            ready: false,
            connections: 0,
        });
        let inner = Arc::new(Inner {
            config,
            handlers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            control,
            conn: Mutex::new(None),
            state,
            pending: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), client, control_rx));
        Ok(Redis { inner })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// Registers `handler` for `subscription` (subscribing on Redis if it is the first handler
    /// of that subscription; resubscribed after every reconnect).
    pub fn subscribe(&self, subscription: Subscription, handler: Handler) -> SubscriptionId {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut handlers = lock(&self.inner.handlers);
            let list = handlers.entry(subscription.clone()).or_default();
            list.push((id, handler));
            list.len() == 1
        };
        if first {
            self.inner.pending.fetch_add(1, Ordering::AcqRel);
            self.inner.state.send_modify(|s| s.ready = false);
            let _ = self.inner.control.send(Control::Subscribe(subscription));
        }
        SubscriptionId(id)
    }

    /// Removes a handler (unsubscribing on Redis when it was the last one of its subscription).
    pub fn unsubscribe(&self, id: SubscriptionId) {
        let emptied = {
            let mut handlers = lock(&self.inner.handlers);
            let mut emptied = None;
            for (sub, list) in handlers.iter_mut() {
                if let Some(pos) = list.iter().position(|(i, _)| *i == id.0) {
                    list.remove(pos);
                    if list.is_empty() {
                        emptied = Some(sub.clone());
                    }
                    break;
                }
            }
            if let Some(sub) = &emptied {
                handlers.remove(sub);
            }
            emptied
        };
        if let Some(sub) = emptied {
            let _ = self.inner.control.send(Control::Unsubscribe(sub));
        }
    }

    /// The connection state; [`watch::Receiver::changed`] tells when it changes.
    pub fn state(&self) -> watch::Receiver<ConnState> {
        self.inner.state.subscribe()
    }

    /// Whether the connection is up with every subscription confirmed.
    pub fn is_ready(&self) -> bool {
        self.inner.state.borrow().ready
    }

    /// Waits until the connection is up and every subscription registered so far is confirmed
    /// by Redis, at most `timeout`. Cancel-safe.
    pub async fn ready(&self, timeout: Duration) -> Result<(), RedisError> {
        let mut rx = self.inner.state.subscribe();
        let wait = rx.wait_for(|s| s.ready);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RedisError::Closed),
            Err(_) => Err(RedisError::Unavailable(format!(
                "not connected to {} within {timeout:?}",
                redact(&self.inner.config.url)
            ))),
        }
    }

    fn connection(&self) -> Result<MultiplexedConnection, RedisError> {
        lock(&self.inner.conn)
            .clone()
            .ok_or_else(|| RedisError::Unavailable("not connected".into()))
    }

    /// Runs one command and converts its reply. Fails fast with
    /// [`RedisError::Unavailable`] while disconnected. Cancel-safe (a command already sent
    /// still runs on Redis).
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        cmd.query_async(&mut conn).await.map_err(command_error)
    }

    /// Runs a pipeline of commands (in order, one round trip). Cancel-safe as [`query`](Self::query).
    pub async fn query_pipeline<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let mut conn = self.connection()?;
        pipe.query_async(&mut conn).await.map_err(command_error)
    }

    /// `PUBLISH channel payload` now (not queued); the number of receivers. Cancel-safe as
    /// [`query`](Self::query).
    pub async fn publish(&self, channel: &str, payload: &[u8]) -> Result<usize, RedisError> {
        self.query(redis::cmd("PUBLISH").arg(channel).arg(payload))
            .await
    }

    /// `SPUBLISH channel payload` now (not queued); the number of receivers. Cancel-safe as
    /// [`query`](Self::query).
    pub async fn spublish(&self, channel: &str, payload: &[u8]) -> Result<usize, RedisError> {
        self.query(redis::cmd("SPUBLISH").arg(channel).arg(payload))
            .await
    }

    /// How many clients subscribe to `channel` (`PUBSUB NUMSUB`). Cancel-safe.
    pub async fn numsub(&self, channel: &str) -> Result<usize, RedisError> {
        let (_, n): (String, usize) = self
            .query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channel))
            .await?;
        Ok(n)
    }

    /// How many clients subscribe to shard channel `channel` (`PUBSUB SHARDNUMSUB`).
    /// Cancel-safe.
    pub async fn shard_numsub(&self, channel: &str) -> Result<usize, RedisError> {
        let (_, n): (String, usize) = self
            .query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channel))
            .await?;
        Ok(n)
    }

    /// `XADD stream MAXLEN ~ max_len * field value …` for each of `entries`, pipelined in one
    /// round trip; the ids Redis gave them, in order. Cancel-safe as [`query`](Self::query).
    pub async fn xadd_many(
        &self,
        entries: &[NewEntry],
        max_len: usize,
    ) -> Result<Vec<String>, RedisError> {
        let mut pipe = redis::pipe();
        for (stream, fields) in entries {
            let cmd = pipe
                .cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(max_len)
                .arg("*");
            for (k, v) in fields {
                cmd.arg(*k).arg(v.as_slice());
            }
        }
        self.query_pipeline(&pipe).await
    }

    /// `XREAD [BLOCK ms] COUNT count STREAMS stream after`: the entries after id `after`
    /// (`$`: only new ones), waiting at most `block` for one (use a connection of its own for
    /// blocking reads: the wait holds the connection). Cancel-safe as [`query`](Self::query).
    pub async fn xread(
        &self,
        stream: &str,
        after: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let mut cmd = redis::cmd("XREAD");
        if let Some(block) = block {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(stream)
            .arg(after);
        let reply: redis::Value = self.query(&cmd).await?;
        Ok(parse_xread(reply))
    }

    /// `XRANGE stream start end [COUNT count]`. Cancel-safe as [`query`](Self::query).
    pub async fn xrange(
        &self,
        stream: &str,
        start: &str,
        end: &str,
        count: Option<usize>,
    ) -> Result<Vec<StreamEntry>, RedisError> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(stream).arg(start).arg(end);
        if let Some(count) = count {
            cmd.arg("COUNT").arg(count);
        }
        let reply: redis::Value = self.query(&cmd).await?;
        Ok(parse_entries(reply))
    }

    /// `SET key value PX ms`. Cancel-safe as [`query`](Self::query).
    pub async fn set_px(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), RedisError> {
        self.query(
            redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64),
        )
        .await
    }

    /// `SET key value PX ms` for each of `items`, pipelined in one round trip. Cancel-safe as
    /// [`query`](Self::query).
    pub async fn set_px_many(
        &self,
        items: &[(String, Vec<u8>)],
        ttl: Duration,
    ) -> Result<(), RedisError> {
        let mut pipe = redis::pipe();
        for (key, value) in items {
            pipe.cmd("SET")
                .arg(key)
                .arg(value.as_slice())
                .arg("PX")
                .arg(ttl.as_millis().max(1) as u64)
                .ignore();
        }
        self.query_pipeline(&pipe).await
    }

    /// `DEL key`. Cancel-safe as [`query`](Self::query).
    pub async fn del(&self, key: &str) -> Result<(), RedisError> {
        self.query::<i64>(redis::cmd("DEL").arg(key))
            .await
            .map(|_| ())
    }

    /// `GET key` then `DEL key` in one transaction (`MULTI`/`EXEC`; works before Redis 6.2's
    /// `GETDEL`). Cancel-safe as [`query`](Self::query).
    pub async fn get_del(&self, key: &str) -> Result<Option<Vec<u8>>, RedisError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("GET")
            .arg(key)
            .cmd("DEL")
            .arg(key)
            .ignore();
        let (value,): (Option<Vec<u8>>,) = self.query_pipeline(&pipe).await?;
        Ok(value)
    }

    /// An ordered, non-blocking publisher on this connection (see [`Publisher`]).
    pub fn publisher(&self) -> Publisher {
        let (tx, rx) = mpsc::channel(self.inner.config.publish_queue.max(1));
        tokio::spawn(run_publisher(self.clone(), rx));
        Publisher { tx }
    }

    /// How many queued publications were dropped because Redis was unavailable.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }
}

/// An entry to add to a stream: the stream's name and the entry's fields.
pub type NewEntry = (String, Vec<(&'static str, Vec<u8>)>);

/// One entry of a Redis stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEntry {
    /// Its id, `<ms>-<seq>`.
    pub id: String,
    /// Its fields, in order.
    pub fields: Vec<(String, Bytes)>,
}

impl StreamEntry {
    /// The value of field `name`.
    pub fn field(&self, name: &str) -> Option<&Bytes> {
        self.fields.iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }
}

fn bytes_of(v: redis::Value) -> Option<Vec<u8>> {
    match v {
        redis::Value::BulkString(b) => Some(b),
        redis::Value::SimpleString(s) => Some(s.into_bytes()),
        redis::Value::VerbatimString { text, .. } => Some(text.into_bytes()),
        redis::Value::Int(i) => Some(i.to_string().into_bytes()),
        _ => None,
    }
}

/// `[[id, [field, value, …]], …]` (malformed entries are skipped).
fn parse_entries(v: redis::Value) -> Vec<StreamEntry> {
    let redis::Value::Array(items) = v else {
        return Vec::new();
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let redis::Value::Array(pair) = item else {
            continue;
        };
        let mut pair = pair.into_iter();
        let (Some(id), Some(fields)) = (pair.next(), pair.next()) else {
            continue;
        };
        let Some(id) = bytes_of(id).and_then(|b| String::from_utf8(b).ok()) else {
            continue;
        };
        let flat: Vec<redis::Value> = match fields {
            redis::Value::Array(f) => f,
            redis::Value::Map(m) => m.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            if let (Some(k), Some(v)) = (bytes_of(k), bytes_of(v)) {
                fields.push((String::from_utf8_lossy(&k).into_owned(), Bytes::from(v)));
            }
        }
        out.push(StreamEntry { id, fields });
    }
    out
}

/// XREAD's reply: `[[stream, entries]]` (RESP2) or `{stream: entries}` (RESP3); nil on
/// timeout. One stream is read at a time.
fn parse_xread(v: redis::Value) -> Vec<StreamEntry> {
    match v {
        redis::Value::Map(m) => m
            .into_iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        redis::Value::Array(streams) => streams
            .into_iter()
            .flat_map(|s| match s {
                redis::Value::Array(pair) => pair
                    .into_iter()
                    .nth(1)
                    .map(parse_entries)
                    .unwrap_or_default(),
                _ => Vec::new(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Which publish command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishKind {
    /// `PUBLISH`.
    Publish,
    /// `SPUBLISH` (sharded pub/sub).
    SPublish,
}

struct Publication {
    kind: PublishKind,
    channel: String,
    payload: Vec<u8>,
}

/// Publishes messages in the order they were sent, without making the caller wait: a
/// background task pipelines whatever is queued (one round trip per batch). While Redis is
/// unavailable the messages are dropped (counted in [`Redis::dropped`], logged once per
/// outage): cross-server delivery pauses, nothing blocks. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    tx: mpsc::Sender<Publication>,
}

impl Publisher {
    /// Queues `payload` for `channel`. Fails only when the queue is full
    /// ([`RedisError::QueueFull`]) or the connection's handle is gone.
    pub fn send(
        &self,
        kind: PublishKind,
        channel: String,
        payload: Vec<u8>,
    ) -> Result<(), RedisError> {
        self.tx
            .try_send(Publication {
                kind,
                channel,
                payload,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => RedisError::QueueFull,
                mpsc::error::TrySendError::Closed(_) => RedisError::Closed,
            })
    }
}

/// Most publications pipelined in one round trip.
const BATCH: usize = 256;

async fn run_publisher(redis: Redis, mut rx: mpsc::Receiver<Publication>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut failing = false;
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut pipe = redis::pipe();
        for p in &batch {
            let name = match p.kind {
                PublishKind::Publish => "PUBLISH",
                PublishKind::SPublish => "SPUBLISH",
            };
            pipe.cmd(name).arg(&p.channel).arg(&p.payload).ignore();
        }
        match redis.query_pipeline::<()>(&pipe).await {
            Ok(()) => {
                if failing {
                    failing = false;
                    tracing::info!("redis: publishing again");
                }
            }
            Err(e) => {
                redis
                    .inner
                    .dropped
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                if !failing {
                    failing = true;
                    tracing::warn!(
                        "redis: cannot publish ({e}): cross-server messages are dropped until \
                         the connection is back; local delivery continues"
                    );
                }
            }
        }
        batch.clear();
    }
}

fn route(inner: &Inner, push: PushInfo) {
    let (subscription, channel, payload) = match push.kind {
        PushKind::Message | PushKind::SMessage => {
            let mut it = push.data.into_iter();
            let (Some(ch), Some(payload)) = (it.next(), it.next()) else {
                return;
            };
            let Ok(ch) = redis::from_redis_value::<String>(ch) else {
                return;
            };
            let sub = if push.kind == PushKind::SMessage {
                Subscription::Shard(ch.clone())
            } else {
                Subscription::Channel(ch.clone())
            };
            (sub, ch, payload)
        }
        PushKind::PMessage => {
            let mut it = push.data.into_iter();
            let (Some(pattern), Some(ch), Some(payload)) = (it.next(), it.next(), it.next()) else {
                return;
            };
            let (Ok(pattern), Ok(ch)) = (
                redis::from_redis_value::<String>(pattern),
                redis::from_redis_value::<String>(ch),
            ) else {
                return;
            };
            (Subscription::Pattern(pattern), ch, payload)
        }
        _ => return,
    };
    let payload: Vec<u8> = match redis::from_redis_value(payload) {
        Ok(p) => p,
        Err(_) => return,
    };
    let handlers: Vec<Handler> = lock(&inner.handlers)
        .get(&subscription)
        .map(|l| l.iter().map(|(_, h)| h.clone()).collect())
        .unwrap_or_default();
    if handlers.is_empty() {
        return;
    }
    let msg = Message {
        subscription,
        channel,
        payload: Bytes::from(payload),
    };
    for h in handlers {
        // A panicking handler must not take the supervisor (and every subscription) down.
        let m = msg.clone();
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(m))).is_err() {
            tracing::error!(channel = msg.channel, "redis: a message handler panicked");
        }
    }
}

/// Sends one (un)subscription and waits for its confirmation.
///
/// redis-rs (1.8) does not recognise a raw `SUNSUBSCRIBE` as a subscription request and drops
/// its confirmation (<https://github.com/redis-rs/redis-rs/issues/2533>): awaited alone, it
/// would time out. It is therefore sent with a `PING` and only the `PONG` is awaited (both
/// replies arrive in order, so the `PONG` also means the unsubscription is done). The redis
/// dependency is pinned to the version whose behaviour this relies on, and the tests of this
/// crate unsubscribe a shard channel and check that the connection stays healthy.
async fn change_subscription(
    conn: &mut MultiplexedConnection,
    sub: &Subscription,
    on: bool,
) -> redis::RedisResult<()> {
    if let (Subscription::Shard(_), false) = (sub, on) {
        let mut pipe = redis::pipe();
        pipe.add_command(sub.command(false)).cmd("PING");
        conn.send_packed_commands(&pipe, 0, 1).await?;
        return Ok(());
    }
    sub.command(on).exec_async(conn).await
}

async fn connect_once(
    client: &redis::Client,
    config: &RedisConfig,
) -> Result<(MultiplexedConnection, mpsc::UnboundedReceiver<PushInfo>), String> {
    let (push_tx, push_rx) = mpsc::unbounded_channel();
    let cfg = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout))
        .set_push_sender(push_tx);
    let conn = match &config.connector {
        None => client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
            .map_err(|e| e.to_string())?,
        Some(connector) => {
            let info = client.get_connection_info().redis_settings().clone();
            let dial = async {
                let stream = (connector.0)().await.map_err(|e| e.to_string())?;
                let (conn, driver) = MultiplexedConnection::new_with_config(&info, stream, cfg)
                    .await
                    .map_err(|e| e.to_string())?;
                // What redis-rs spawns itself when it dials: the task that drives the socket
                // (it ends when the last handle on the connection is dropped).
                tokio::spawn(driver);
                Ok::<_, String>(conn)
            };
            tokio::time::timeout(config.connect_timeout, dial)
                .await
                .map_err(|_| format!("not connected within {:?}", config.connect_timeout))??
        }
    };
    Ok((conn, push_rx))
}

async fn supervise(
    weak: std::sync::Weak<Inner>,
    client: redis::Client,
    mut control: mpsc::UnboundedReceiver<Control>,
) {
    let mut backoff = None::<Duration>;
    let mut connections = 0u64;
    let mut was_connected = false;
    loop {
        if let Some(delay) = backoff {
            tokio::time::sleep(delay).await;
        }
        let Some(inner) = weak.upgrade() else { return };
        let config = inner.config.clone();
        let url = redact(&config.url);
        drop(inner);
        let attempt = connect_once(&client, &config).await;
        let Some(inner) = weak.upgrade() else { return };
        let (mut conn, mut pushes) = match attempt {
            Ok(c) => c,
            Err(e) => {
                let next = backoff
                    .map(|d| (d * 2).min(config.max_backoff))
                    .unwrap_or(config.min_backoff);
                if was_connected || backoff.is_none() {
                    tracing::warn!(
                        "redis: cannot connect to {url} ({e}); cross-server delivery paused, \
                         local delivery continues; retrying with backoff (next in {next:?})"
                    );
                    was_connected = false;
                } else {
                    tracing::debug!("redis: reconnect to {url} failed ({e}); next in {next:?}");
                }
                backoff = Some(next);
                continue;
            }
        };
        // Drain the queued control messages: the registered handlers are the truth.
        while control.try_recv().is_ok() {}
        let subs: Vec<Subscription> = lock(&inner.handlers).keys().cloned().collect();
        inner.pending.store(0, Ordering::Release);
        let mut ok = true;
        for sub in &subs {
            if let Err(e) = change_subscription(&mut conn, sub, true).await {
                tracing::warn!("redis: subscribing to {sub:?} failed: {e}");
                ok = false;
                break;
            }
        }
        if !ok {
            backoff = Some(config.min_backoff);
            continue;
        }
        connections += 1;
        *lock(&inner.conn) = Some(conn.clone());
        inner.state.send_replace(ConnState {
            ready: inner.pending.load(Ordering::Acquire) == 0,
            connections,
        });
        tracing::info!(
            "redis: connected to {url} ({} subscriptions{})",
            subs.len(),
            if connections > 1 {
                ", resubscribed"
            } else {
                ""
            }
        );
        was_connected = true;
        drop(inner);
        // A link that went silent (a partition, a peer gone without a reset, a NAT that forgot
        // the flow) raises no error by itself: only a health check notices it.
        let mut health = config.health_check.map(|every| {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval
        });
        // Serve until the connection drops.
        loop {
            tokio::select! {
                () = tick(&mut health) => {
                    let ping = redis::cmd("PING");
                    let ping = ping.query_async::<redis::Value>(&mut conn);
                    match tokio::time::timeout(config.response_timeout, ping).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!("redis: health check failed ({e})");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!(
                                "redis: no answer to the health check within {:?}",
                                config.response_timeout
                            );
                            break;
                        }
                    }
                }
                push = pushes.recv() => match push {
                    Some(p) if p.kind == PushKind::Disconnection => break,
                    Some(p) => match weak.upgrade() {
                        Some(inner) => route(&inner, p),
                        None => return,
                    },
                    None => break,
                },
                ctl = control.recv() => {
                    let Some(ctl) = ctl else { return };
                    let Some(inner) = weak.upgrade() else { return };
                    let (sub, on) = match ctl {
                        Control::Subscribe(s) => (s, true),
                        Control::Unsubscribe(s) => (s, false),
                    };
                    // A handler may have come or gone meanwhile: act on the current registry.
                    let wanted = lock(&inner.handlers).contains_key(&sub);
                    let result = if wanted == on {
                        change_subscription(&mut conn, &sub, on).await
                    } else {
                        Ok(())
                    };
                    if on {
                        let left = inner.pending.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
                        if left == 0 && result.is_ok() {
                            inner.state.send_modify(|s| s.ready = true);
                        }
                    }
                    if let Err(e) = result {
                        tracing::warn!("redis: (un)subscribing {sub:?} failed: {e}");
                        break;
                    }
                }
            }
        }
        let Some(inner) = weak.upgrade() else { return };
        *lock(&inner.conn) = None;
        inner.state.send_modify(|s| s.ready = false);
        tracing::warn!(
            "redis: connection to {url} lost; cross-server delivery paused, local delivery \
             continues; reconnecting with backoff"
        );
        backoff = Some(config.min_backoff);
    }
}

/// The next tick of the health check, or never without one.
async fn tick(health: &mut Option<tokio::time::Interval>) {
    match health {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_unavailable_not_a_hang() {
        // Port 1 on loopback: connection refused at once.
        let mut config = RedisConfig::new("redis://127.0.0.1:1");
        config.connect_timeout = Duration::from_millis(200);
        let redis = Redis::connect(config).unwrap();
        assert!(matches!(
            redis.ready(Duration::from_millis(300)).await,
            Err(RedisError::Unavailable(_))
        ));
        assert!(matches!(
            redis.numsub("x").await,
            Err(RedisError::Unavailable(_))
        ));
        let publisher = redis.publisher();
        publisher
            .send(PublishKind::Publish, "x".into(), b"y".to_vec())
            .unwrap();
        for _ in 0..50 {
            if redis.dropped() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(redis.dropped(), 1);
        assert!(Redis::connect(RedisConfig::new("nonsense://")).is_err());
    }
}
