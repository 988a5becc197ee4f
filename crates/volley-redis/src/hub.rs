//! A Redis backend for Volley's topics [`Hub`] (feature `hub`): what one server publishes to a
//! topic reaches that topic's subscribers on every server pointed at the same Redis.
//!
//! ```no_run
//! use volley::hub::HubConfig;
//! use volley_redis::hub::{RedisHubBackend, RedisHubConfig};
//! use volley_redis::{Redis, RedisConfig};
//!
//! # async fn run() -> Result<(), volley_redis::RedisError> {
//! let redis = Redis::connect(RedisConfig::new("redis://127.0.0.1:6379"))?;
//! let backend = RedisHubBackend::new(redis, RedisHubConfig::default());
//! let hub = backend.hub(HubConfig::default())?;
//! // Join members and publish as with any hub: `hub.publish("news", "hello")` now reaches the
//! // subscribers of "news" on every server.
//! # drop(hub); Ok(()) }
//! ```
//!
//! # How it works
//!
//! The hub delivers every publication to its own subscribers first, then hands it to the
//! backend, which publishes it on Redis (through the connection's ordered, non-blocking
//! [`Publisher`]). A server subscribes to a topic's channel only while it has subscribers for
//! that topic (the hub tells the backend when a topic appears and disappears), plus one
//! channel for [`Hub::broadcast`]. What arrives from Redis is delivered with
//! [`Hub::deliver`] on the connection's supervisor task, in the order Redis delivered it: the
//! publications of one server arrive everywhere in the order it made them (those of different
//! servers may interleave differently on different servers). A server's subscription to a new
//! topic takes effect one round trip to Redis after its first subscriber joined; what other
//! servers publish to the topic before that does not reach it.
//!
//! # Wire format
//!
//! With the default prefix `volley-hub` (see [`RedisHubConfig::prefix`]):
//!
//! | what                      | channel                      |
//! |---------------------------|------------------------------|
//! | a publication to topic `T` | `volley-hub#topic#T` (`T` byte for byte) |
//! | a [`Hub::broadcast`]       | `volley-hub#all#`            |
//!
//! Every message on those channels is:
//!
//! | bytes  | content                                                                  |
//! |--------|--------------------------------------------------------------------------|
//! | 0      | `t` (0x74): a text message, or `b` (0x62): a binary message              |
//! | 1..9   | the publishing server's node id, a random `u64`, big-endian             |
//! | 9..    | the WebSocket message's payload, byte for byte (UTF-8 for `t`)          |
//!
//! A server ignores what carries its own node id (its hub delivered it locally already), so a
//! publication reaches each subscriber exactly once. Any other first byte is reserved for
//! later versions of the format. Messages that do not follow it (too short, an unknown kind,
//! invalid UTF-8 in a text message, longer than [`RedisHubConfig::max_message_size`]) are
//! dropped, counted in [`RedisHubStats::malformed`] and logged (at most one warning every 10
//! seconds). Anything able to `PUBLISH` can therefore feed a hub: e.g.
//! `redis-cli publish 'volley-hub#topic#news' $'t\x00\x00\x00\x00\x00\x00\x00\x01hello'`.
//!
//! # When Redis is away
//!
//! Local delivery goes on: the hub never waits for the backend. The connection's supervisor
//! logs the outage, reconnects with backoff and resubscribes to every channel this server
//! needs (see the [crate documentation](crate)); meanwhile what is published here is not seen
//! by the other servers (counted in [`Redis::dropped`]) and what they publish is not seen here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use volley::PreparedMessage;
use volley::hub::{Backend, Hub, HubConfig, Scope, WeakHub};

use crate::{
    Handler, Message, PublishKind, Publisher, Redis, RedisError, Subscription, SubscriptionId, lock,
};

/// First byte of a text message.
const TEXT: u8 = b't';
/// First byte of a binary message.
const BINARY: u8 = b'b';
/// Kind byte and node id.
const HEADER_LEN: usize = 9;
/// Shortest interval between two warnings about malformed messages or lost publications.
const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Settings of a [`RedisHubBackend`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHubConfig {
    /// The first part of every channel name (`"volley-hub"`): servers share their topics when
    /// they use the same Redis and the same prefix.
    pub prefix: String,
    /// The longest message payload accepted from Redis, in bytes (16 MiB); longer ones are
    /// dropped as malformed.
    pub max_message_size: usize,
}

impl Default for RedisHubConfig {
    fn default() -> Self {
        RedisHubConfig {
            prefix: "volley-hub".into(),
            max_message_size: 16 << 20,
        }
    }
}

impl RedisHubConfig {
    /// Sets [`RedisHubConfig::prefix`].
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets [`RedisHubConfig::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }
}

/// Counters of a [`RedisHubBackend`], as returned by [`RedisHubBackend::stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisHubStats {
    /// Publications handed to the publisher (to be sent to Redis).
    pub published: u64,
    /// Publications the publisher did not take (its queue was full): lost for the other
    /// servers. Those it took and could not send while Redis was away are counted in
    /// [`Redis::dropped`].
    pub publish_failed: u64,
    /// Messages received on the hub's channels.
    pub received: u64,
    /// Received messages delivered to the hub (they came from another server).
    pub delivered: u64,
    /// Received messages published by this server itself, ignored.
    pub own: u64,
    /// Received messages that do not follow the wire format, dropped.
    pub malformed: u64,
}

/// A [`Backend`] that links the hubs of several servers through Redis pub/sub. Cheap to clone.
///
/// It runs on a supervised [`Redis`] connection (which may be shared with other users, such as
/// the Socket.IO adapters of `volley-socketio-redis`). See the [module documentation](self) for
/// the wire format and the behaviour when Redis is away.
#[derive(Clone)]
pub struct RedisHubBackend {
    shared: Arc<Shared>,
}

struct Shared {
    redis: Redis,
    publisher: Publisher,
    node: u64,
    config: RedisHubConfig,
    /// The hub this backend serves, once [`RedisHubBackend::hub`] made it.
    hub: OnceLock<WeakHub>,
    /// Topic → (how many times the hub said subscribe minus unsubscribe, our handler).
    topics: Mutex<HashMap<Arc<str>, (usize, SubscriptionId)>>,
    /// The handler of the broadcast channel.
    all: Mutex<Option<SubscriptionId>>,
    published: AtomicU64,
    publish_failed: AtomicU64,
    received: AtomicU64,
    delivered: AtomicU64,
    own: AtomicU64,
    malformed: AtomicU64,
    malformed_log: RateLimit,
    publish_log: RateLimit,
}

impl std::fmt::Debug for RedisHubBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHubBackend")
            .field("node", &format_args!("{:016x}", self.shared.node))
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl RedisHubBackend {
    /// A backend on `redis` with `config`; then make its hub with [`hub`](Self::hub). Must be
    /// called within a Tokio runtime (it starts a [`Publisher`]).
    pub fn new(redis: Redis, config: RedisHubConfig) -> RedisHubBackend {
        let publisher = redis.publisher();
        RedisHubBackend {
            shared: Arc::new(Shared {
                redis,
                publisher,
                node: node_id(),
                config,
                hub: OnceLock::new(),
                topics: Mutex::default(),
                all: Mutex::default(),
                published: AtomicU64::new(0),
                publish_failed: AtomicU64::new(0),
                received: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                own: AtomicU64::new(0),
                malformed: AtomicU64::new(0),
                malformed_log: RateLimit::default(),
                publish_log: RateLimit::default(),
            }),
        }
    }

    /// The hub this backend serves, with `config`: its topics span every server on the same
    /// Redis with the same prefix. A backend serves one hub: a second call fails with
    /// [`RedisError::Config`].
    ///
    /// The backend does not keep the hub alive (it holds a [`WeakHub`]); the hub keeps the
    /// backend. Wait for [`Redis::ready`] before serving if the first messages of the other
    /// servers matter.
    pub fn hub(&self, config: HubConfig) -> Result<Hub, RedisError> {
        let hub = Hub::with_backend(config, Arc::new(self.clone()));
        if self.shared.hub.set(hub.downgrade()).is_err() {
            return Err(RedisError::Config(
                "this RedisHubBackend already serves a hub".into(),
            ));
        }
        let channel = self.shared.all_channel();
        let id = self
            .shared
            .redis
            .subscribe(Subscription::Channel(channel), handler(&self.shared, None));
        *lock(&self.shared.all) = Some(id);
        Ok(hub)
    }

    /// This server's node id (bytes 1..9 of what it publishes).
    pub fn node_id(&self) -> u64 {
        self.shared.node
    }

    /// The configuration.
    pub fn config(&self) -> &RedisHubConfig {
        &self.shared.config
    }

    /// The Redis connection.
    pub fn redis(&self) -> &Redis {
        &self.shared.redis
    }

    /// The channel that carries the publications to `topic`.
    pub fn topic_channel(&self, topic: &str) -> String {
        self.shared.topic_channel(topic)
    }

    /// The channel that carries [`Hub::broadcast`]s.
    pub fn broadcast_channel(&self) -> String {
        self.shared.all_channel()
    }

    /// The backend's counters.
    pub fn stats(&self) -> RedisHubStats {
        let s = &self.shared;
        RedisHubStats {
            published: s.published.load(Ordering::Relaxed),
            publish_failed: s.publish_failed.load(Ordering::Relaxed),
            received: s.received.load(Ordering::Relaxed),
            delivered: s.delivered.load(Ordering::Relaxed),
            own: s.own.load(Ordering::Relaxed),
            malformed: s.malformed.load(Ordering::Relaxed),
        }
    }
}

impl Backend for RedisHubBackend {
    fn publish(&self, scope: Scope<'_>, message: &PreparedMessage) {
        let s = &self.shared;
        let channel = match scope {
            Scope::Topic(topic) => s.topic_channel(topic),
            Scope::All => s.all_channel(),
            _ => {
                tracing::debug!("redis hub: a publication to {scope:?} is not shared");
                return;
            }
        };
        let payload = encode(s.node, message);
        match s.publisher.send(PublishKind::Publish, channel, payload) {
            Ok(()) => {
                s.published.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                s.publish_failed.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = s.publish_log.allow() {
                    tracing::warn!(
                        "redis hub: a publication is not sent to the other servers ({e}; \
                         {skipped} more since the last warning); local delivery continues"
                    );
                }
            }
        }
    }

    fn subscribe(&self, topic: &str) {
        let s = &self.shared;
        let mut topics = lock(&s.topics);
        if let Some((count, _)) = topics.get_mut(topic) {
            // The hub removed and recreated the topic, and the calls crossed: count them.
            *count += 1;
            return;
        }
        let topic: Arc<str> = Arc::from(topic);
        let id = s.redis.subscribe(
            Subscription::Channel(s.topic_channel(&topic)),
            handler(s, Some(topic.clone())),
        );
        topics.insert(topic, (1, id));
    }

    fn unsubscribe(&self, topic: &str) {
        let s = &self.shared;
        let mut topics = lock(&s.topics);
        let Some((count, id)) = topics.get_mut(topic) else {
            return;
        };
        *count -= 1;
        if *count == 0 {
            let id = *id;
            topics.remove(topic);
            s.redis.unsubscribe(id);
        }
    }
}

impl Shared {
    fn topic_channel(&self, topic: &str) -> String {
        format!("{}#topic#{topic}", self.config.prefix)
    }

    fn all_channel(&self) -> String {
        format!("{}#all#", self.config.prefix)
    }

    /// A message arrived on the channel of `topic` (`None`: the broadcast channel).
    fn receive(&self, topic: Option<&str>, message: &Message) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let (node, prepared) = match decode(&message.payload, self.config.max_message_size) {
            Ok(decoded) => decoded,
            Err(why) => {
                self.malformed.fetch_add(1, Ordering::Relaxed);
                if let Some(skipped) = self.malformed_log.allow() {
                    tracing::warn!(
                        channel = message.channel,
                        "redis hub: dropped a malformed message ({why}; {skipped} more since \
                         the last warning)"
                    );
                }
                return;
            }
        };
        if node == self.node {
            self.own.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let Some(hub) = self.hub.get().and_then(WeakHub::upgrade) else {
            return;
        };
        let scope = match topic {
            Some(topic) => Scope::Topic(topic),
            None => Scope::All,
        };
        hub.deliver(scope, &prepared);
        self.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        let topics = std::mem::take(&mut *lock(&self.topics));
        for (_, (_, id)) in topics {
            self.redis.unsubscribe(id);
        }
        if let Some(id) = lock(&self.all).take() {
            self.redis.unsubscribe(id);
        }
    }
}

/// The handler of a channel: it holds the backend weakly (the connection's registry must not
/// keep it alive).
fn handler(shared: &Arc<Shared>, topic: Option<Arc<str>>) -> Handler {
    let weak: Weak<Shared> = Arc::downgrade(shared);
    Arc::new(move |message: Message| {
        if let Some(shared) = weak.upgrade() {
            shared.receive(topic.as_deref(), &message);
        }
    })
}

/// `message` in the wire format, from node `node`.
fn encode(node: u64, message: &PreparedMessage) -> Vec<u8> {
    let payload = message.payload();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.push(if message.is_text() { TEXT } else { BINARY });
    out.extend_from_slice(&node.to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Why a received message was dropped.
#[derive(Debug, PartialEq, Eq)]
enum Malformed {
    Short(usize),
    Kind(u8),
    TooLarge(usize),
    Utf8,
}

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Malformed::Short(n) => write!(f, "{n} bytes, shorter than the 9-byte header"),
            Malformed::Kind(k) => write!(f, "unknown kind byte {k:#04x}"),
            Malformed::TooLarge(n) => write!(f, "a payload of {n} bytes, over the limit"),
            Malformed::Utf8 => f.write_str("a text message that is not UTF-8"),
        }
    }
}

/// The node id and the message of a received `payload`.
fn decode(payload: &Bytes, max: usize) -> Result<(u64, PreparedMessage), Malformed> {
    if payload.len() < HEADER_LEN {
        return Err(Malformed::Short(payload.len()));
    }
    let kind = payload[0];
    let mut node = [0u8; 8];
    node.copy_from_slice(&payload[1..HEADER_LEN]);
    let node = u64::from_be_bytes(node);
    let body = &payload[HEADER_LEN..];
    if body.len() > max {
        return Err(Malformed::TooLarge(body.len()));
    }
    let message = match kind {
        TEXT => PreparedMessage::text(std::str::from_utf8(body).map_err(|_| Malformed::Utf8)?),
        BINARY => PreparedMessage::binary(body),
        other => return Err(Malformed::Kind(other)),
    };
    Ok((node, message))
}

/// A random node id (the standard library's randomly keyed hasher over the time and the
/// process id: no dependency for 64 random bits).
fn node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// Lets one log line through per [`LOG_INTERVAL`], counting those it holds back.
#[derive(Default)]
struct RateLimit {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl RateLimit {
    /// `Some(lines held back since the last one)` if a line may be logged now.
    fn allow(&self) -> Option<u64> {
        let mut last = lock(&self.last);
        let now = Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < LOG_INTERVAL) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.skipped.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_carry_the_node() {
        for message in [
            PreparedMessage::text("héllo"),
            PreparedMessage::binary([0u8, 0xff, 1]),
            PreparedMessage::text(""),
        ] {
            let wire = Bytes::from(encode(0x0102_0304_0506_0708, &message));
            assert_eq!(wire[1..9], [1, 2, 3, 4, 5, 6, 7, 8]);
            let (node, decoded) = decode(&wire, 1024).unwrap();
            assert_eq!(node, 0x0102_0304_0506_0708);
            assert_eq!(decoded, message);
        }
        let wire = encode(7, &PreparedMessage::text("hi"));
        assert_eq!(wire, b"t\0\0\0\0\0\0\0\x07hi");
    }

    #[test]
    fn malformed_messages_are_refused() {
        let cases: [(&[u8], Malformed); 5] = [
            (b"", Malformed::Short(0)),
            (b"t1234567", Malformed::Short(8)),
            (b"x12345678hi", Malformed::Kind(b'x')),
            (b"t12345678\xff", Malformed::Utf8),
            (b"b12345678too long", Malformed::TooLarge(8)),
        ];
        for (wire, why) in cases {
            let err = decode(&Bytes::from_static(wire), 4).unwrap_err();
            assert_eq!(err, why);
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn the_rate_limit_lets_one_line_through_per_interval() {
        let limit = RateLimit::default();
        assert_eq!(limit.allow(), Some(0));
        assert_eq!(limit.allow(), None);
        assert_eq!(limit.allow(), None);
        *lock(&limit.last) = Some(Instant::now() - LOG_INTERVAL);
        assert_eq!(limit.allow(), Some(2));
    }

    #[test]
    fn node_ids_differ() {
        assert_ne!(node_id(), node_id());
    }
}
