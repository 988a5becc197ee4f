//! Topics: broadcast and rooms for connections, each message encoded once, every subscriber's
//! queue bounded.
//!
//! A [`Hub`] fans messages out to its members. A member is any [`Subscriber`]: a callback
//! connection's [`ConnHandle`] (it queues into the connection's own send queue: no task, no
//! copy), or a task's [`WsSender`] ([`Hub::join_sender`]: a small writer task drains a queue
//! into it). [`Hub::join`] returns the [`Member`] handle, which
//! [`subscribe`](Member::subscribe)s to topics by name (a topic exists while it has
//! subscribers); dropping it leaves the hub. [`Hub::publish`] encodes the message once into a
//! [`PreparedMessage`] and offers that same [`Bytes`](bytes::Bytes) to every subscriber: no
//! per-subscriber copy or re-encoding.
//!
//! Publishing never waits. Each subscriber's queue is bounded by the hub's [`QueueLimits`]
//! (256 messages, 1 MiB by default); what happens to a message that does not fit is their
//! [`Overflow`] policy: close the slow consumer with 1013 (the default), or drop the newest or
//! the oldest message (counted). A subscriber that stops reading never slows the publisher or
//! the other subscribers, and the memory it can hold is capped. Publishes to different topics
//! take no common lock, and publishes to the same topic share theirs.
//!
//! ```no_run
//! use volley::callback::{Callbacks, Conn};
//! use volley::hub::{Hub, Member};
//! use volley::{Endpoint, Message};
//!
//! struct News(Hub);
//!
//! impl Callbacks for News {
//!     fn on_open(&self, conn: &mut Conn<'_>) {
//!         let member = self.0.join(conn.handle());
//!         member.subscribe("news");
//!         // Kept until the connection ends; dropping it leaves the hub.
//!         conn.set_data(member);
//!     }
//!
//!     fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
//!         if let (Some(member), Message::Text(text)) = (conn.data::<Member>(), message) {
//!             // To every other subscriber of "news", encoded once.
//!             member.publish("news", text);
//!         }
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::default();
//! volley::Server::bind("127.0.0.1:9001")
//!     .await?
//!     .route("/news", Endpoint::callbacks(News(hub)))
//!     .run()
//!     .await
//! # }
//! ```
//!
//! Several servers can share their topics through a [`Backend`] (a message bus such as Redis):
//! the hub hands it what is published here and delivers what it receives from the others
//! ([`Hub::deliver`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use volley_proto::{CloseFrame, PreparedMessage};

use crate::callback::ConnHandle;
use crate::config::{Overflow, QueueLimits};
use crate::core::{self, Micros, Offer, Outbox};
use crate::task::{WebSocket, WsReceiver, WsSender};

/// Most messages a writer takes from its queue for one write (one vectored write, if the
/// transport supports it).
const BATCH_MESSAGES: usize = 64;

/// Most encoded bytes a writer takes from its queue for one write (at least one message).
const BATCH_BYTES: usize = 64 * 1024;

/// What a hub delivers to: a connection that takes prepared messages without waiting, within
/// limits. Implemented by [`ConnHandle`] and by the hub's own writer for a task's
/// [`WsSender`]; implement it to fan out to anything else (a server-sent-events stream, a
/// test probe).
pub trait Subscriber: Send + Sync + 'static {
    /// Queues `message` for sending, never waiting: if it does not fit `limits`, applies their
    /// overflow policy (for [`Overflow::Close`]: discard what waits and close the consumer with
    /// [`QueueLimits::slow_close_code`]). Says what happened.
    fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer;

    /// Closes the connection with `frame` after what is queued (an invalid frame, such as a
    /// code that may not be sent, is replaced by a plain close).
    fn close(&self, frame: Option<CloseFrame>);

    /// Bytes queued and not yet written.
    fn buffered_amount(&self) -> usize;

    /// Whether it still takes messages (not closing, not gone). A hub drops subscribers that
    /// are not.
    fn is_open(&self) -> bool;
}

impl Subscriber for ConnHandle {
    fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
        ConnHandle::offer(self, message, limits)
    }

    fn close(&self, frame: Option<CloseFrame>) {
        ConnHandle::close(self, frame.filter(valid_close));
    }

    fn buffered_amount(&self) -> usize {
        ConnHandle::buffered_amount(self)
    }

    fn is_open(&self) -> bool {
        ConnHandle::is_open(self)
    }
}

/// Whether a close frame may be sent as it is.
fn valid_close(frame: &CloseFrame) -> bool {
    frame.code.is_sendable() && frame.reason.len() <= 123
}

/// Where a publication goes: one topic, or every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope<'a> {
    /// The subscribers of a topic.
    Topic(&'a str),
    /// Every member of the hub.
    All,
}

/// A link between the hubs of several servers (a message bus such as Redis): what one server
/// publishes reaches the subscribers of all. The hub calls it; it calls [`Hub::deliver`] with
/// what arrives from the other servers. Its methods must not block: queue and return.
pub trait Backend: Send + Sync + 'static {
    /// `message` was published here to `scope` (and delivered locally already): send it to
    /// the other servers.
    fn publish(&self, scope: Scope<'_>, message: &PreparedMessage);

    /// This server has subscribers for `topic` now: receive what others publish to it.
    fn subscribe(&self, topic: &str);

    /// This server has no subscriber left for `topic`.
    fn unsubscribe(&self, topic: &str);
}

/// Configuration of a [`Hub`]: the bounds of every member's queue and what to do when one is
/// full.
///
/// Start from [`HubConfig::default`] and change what you need with the by-value setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// Every member's queue: 256 messages, 1 MiB, [`Overflow::Close`] with 1013 — no message
    /// is ever lost silently, memory stays bounded, and the client learns that it fell behind
    /// (1013 invites it to reconnect later and resynchronise). For a callback connection the
    /// queue is the connection's own: what else it has queued counts too.
    pub queue: QueueLimits,
    /// How long a task member's writer keeps trying to deliver its close frame (after
    /// [`Member::close`], or to a consumer closed for slowness) before it gives up and releases
    /// the connection's sender half. Default 10 s.
    pub close_timeout: Duration,
    /// What each topic remembers for subscribers that come back ([`Member::resume`]). Default
    /// `None`: nothing is kept.
    pub history: Option<History>,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            close_timeout: Duration::from_secs(10),
            history: None,
        }
    }
}

/// How much of its recent traffic each topic keeps, so that a subscriber that reconnects gets
/// what it missed ([`Member::resume`]); the bounds hold per topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct History {
    /// Most messages kept per topic. Default 1,000.
    pub max_messages: usize,
    /// How long a message is kept. Default 2 minutes (Socket.IO's recovery window).
    pub max_age: Duration,
    /// Most topics kept for their history alone, without subscribers; past it the one idle
    /// longest is forgotten (its subscribers that come back are told of a gap). Default 10,000.
    pub max_idle_topics: usize,
}

impl Default for History {
    fn default() -> Self {
        Self {
            max_messages: 1000,
            max_age: Duration::from_secs(120),
            max_idle_topics: 10_000,
        }
    }
}

impl History {
    /// Sets [`History::max_messages`] (at least 1).
    pub fn max_messages(mut self, messages: usize) -> Self {
        self.max_messages = messages.max(1);
        self
    }

    /// Sets [`History::max_age`].
    pub fn max_age(mut self, age: Duration) -> Self {
        self.max_age = age;
        self
    }

    /// Sets [`History::max_idle_topics`].
    pub fn max_idle_topics(mut self, topics: usize) -> Self {
        self.max_idle_topics = topics;
        self
    }
}

/// What [`Member::resume`] could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// Every message published after the offset was queued again, in order (`replayed` of
    /// them), and the member receives what follows.
    Complete {
        /// Messages queued again.
        replayed: usize,
    },
    /// Some messages published after the offset are no longer kept (or the offset is not one
    /// of this hub's): the member receives what follows only, and should fetch the state anew.
    Gap,
}

impl HubConfig {
    /// Sets [`HubConfig::queue`].
    pub fn queue(mut self, limits: QueueLimits) -> Self {
        self.queue = limits;
        self
    }

    /// Sets the overflow policy of [`HubConfig::queue`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.queue = self.queue.overflow(overflow);
        self
    }

    /// Sets [`HubConfig::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Sets [`HubConfig::history`].
    pub fn history(mut self, history: Option<History>) -> Self {
        self.history = history;
        self
    }
}

/// Identifies a member of a [`Hub`]; unique within the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MemberId(u64);

impl MemberId {
    /// The id as a number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl std::fmt::Display for MemberId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Published {
    /// Subscribers whose queue took the message.
    pub delivered: usize,
    /// Messages lost to overflow by this publish: the new message for each full queue under
    /// [`Overflow::DropNewest`], the older messages discarded under [`Overflow::DropOldest`], and
    /// under [`Overflow::Close`] the new message plus the queue of each subscriber closed.
    pub dropped: usize,
    /// Subscribers closed for slowness by this publish ([`Overflow::Close`]).
    pub closed: usize,
}

impl Published {
    fn count(&mut self, offer: Offer) {
        self.dropped += offer.lost();
        match offer {
            Offer::Queued { .. } => self.delivered += 1,
            Offer::Closed { .. } => self.closed += 1,
            Offer::Dropped | Offer::Gone => {}
        }
    }
}

/// Counters of a [`Hub`], as returned by [`Hub::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Members currently in the hub.
    pub members: usize,
    /// Topics that currently have subscribers.
    pub topics: usize,
    /// Messages published (each `publish`, `broadcast`, `deliver` or `Member::send` counts
    /// once).
    pub published: u64,
    /// Messages queued for a subscriber, summed over subscribers.
    pub delivered: u64,
    /// Messages lost to overflow, summed over subscribers (see [`Published::dropped`]).
    pub dropped: u64,
    /// Members closed for slowness ([`Overflow::Close`]).
    pub closed_slow: u64,
}

/// Counters and queue level of one member, as returned by [`Member::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberStats {
    /// Bytes queued for the member's connection and not yet written.
    pub queued_bytes: usize,
    /// Messages its queue took.
    pub delivered: u64,
    /// Messages lost to overflow: not taken, discarded from the queue, or discarded when the
    /// member was closed for slowness.
    pub dropped: u64,
}

/// A topic and how many members subscribe to it, as returned by [`Hub::topics`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// How many members subscribe to it (at least 1: empty topics are removed).
    pub subscribers: usize,
}

/// A [`Hub`] that is not kept alive by this handle ([`Hub::downgrade`]).
#[derive(Clone, Default)]
pub struct WeakHub(std::sync::Weak<Inner>);

impl WeakHub {
    /// The hub, if it still exists.
    pub fn upgrade(&self) -> Option<Hub> {
        self.0.upgrade().map(|inner| Hub { inner })
    }
}

impl std::fmt::Debug for WeakHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WeakHub")
    }
}

/// A hub of topics that connections subscribe to; cheap to clone (an `Arc` inside).
///
/// See the [module documentation](self) for the model. Every method is synchronous and safe
/// to call from anywhere: a callback, a task, a thread. [`join_sender`](Self::join_sender)
/// must run inside a Tokio runtime because it spawns the member's writer task.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    next_id: AtomicU64,
    /// The offset of the next numbered publication ([`Hub::publish_numbered`]): hub-wide, it
    /// starts at the wall clock's microseconds, so that offsets keep growing across restarts
    /// and one from an earlier process is never mistaken for one of this.
    next_offset: AtomicU64,
    /// The first offset of this hub.
    first_offset: u64,
    /// The highest offset forgotten with a whole topic (aged out, or dropped for
    /// [`History::max_idle_topics`]): a subscriber that saw less may have missed something.
    forgotten: AtomicU64,
    /// Topics kept without subscribers for their history, each with the time it was listed
    /// (or moved back: published to since), oldest first; a topic is listed once at most
    /// ([`Topic::idle_listed`]).
    idle: Mutex<VecDeque<(Arc<Topic>, Micros)>>,
    members: RwLock<HashMap<MemberId, Arc<Entry>>>,
    topics: RwLock<HashMap<Arc<str>, Arc<Topic>>>,
    backend: Option<Arc<dyn Backend>>,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    closed_slow: AtomicU64,
}

/// A topic's subscribers, in join order (ids grow). Each topic has its own lock.
struct Topic {
    name: Arc<str>,
    subscribers: RwLock<BTreeMap<MemberId, Arc<Entry>>>,
    /// Taken out of the hub's topics (it became empty): subscribing must find it anew.
    removed: AtomicBool,
    /// In the hub's list of idle topics (read and written under that list's lock).
    idle_listed: AtomicBool,
    /// Its history, with [`HubConfig::history`]. Numbered publications to the topic take this
    /// lock first and hold it while they fan out, so offsets reach subscribers in order and a
    /// resuming member's replay and live messages neither overlap nor leave a hole.
    log: Option<Mutex<Log>>,
}

/// A topic's recent messages.
struct Log {
    entries: VecDeque<Logged>,
    /// The highest offset that was published to the topic and is no longer kept.
    evicted: u64,
}

struct Logged {
    offset: u64,
    at: Micros,
    message: PreparedMessage,
}

impl Log {
    /// Drops what is past the bounds at `now`.
    fn trim(&mut self, history: &History, now: Micros) {
        let oldest = now.saturating_sub(history.max_age.as_micros() as u64);
        while let Some(front) = self.entries.front() {
            if self.entries.len() <= history.max_messages && front.at >= oldest {
                break;
            }
            self.evicted = self.evicted.max(front.offset);
            self.entries.pop_front();
        }
    }
}

/// What [`Member::resume_with`] queues before a replay.
type Announce<'a> = Option<&'a mut dyn FnMut(Resume) -> Option<PreparedMessage>>;

/// A member as the hub sees it; the subscriber last, inline (one allocation per member).
struct Entry<S: ?Sized = dyn Subscriber> {
    id: MemberId,
    /// [`Member`] handles alive: the member leaves the hub when the last is dropped.
    handles: AtomicUsize,
    /// The topics it subscribes to (the hub's own topic records: no copy of their names).
    topics: Mutex<Vec<Arc<Topic>>>,
    delivered: AtomicU64,
    dropped: AtomicU64,
    subscriber: S,
}

impl Entry {
    fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
        let offer = self.subscriber.offer(message, limits);
        if offer.is_queued() {
            self.delivered.fetch_add(1, Ordering::Relaxed);
        }
        let lost = offer.lost() as u64;
        if lost > 0 {
            self.dropped.fetch_add(lost, Ordering::Relaxed);
        }
        offer
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new(HubConfig::default())
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Hub {
    /// An empty hub with `config`.
    pub fn new(config: HubConfig) -> Self {
        Self::build(config, None)
    }

    /// An empty hub linked to the hubs of other servers through `backend`.
    pub fn with_backend(config: HubConfig, backend: Arc<dyn Backend>) -> Self {
        Self::build(config, Some(backend))
    }

    fn build(config: HubConfig, backend: Option<Arc<dyn Backend>>) -> Self {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        let first_offset = since_epoch.map_or(1, |d| d.as_micros() as u64).max(1);
        Self {
            inner: Arc::new(Inner {
                config,
                next_id: AtomicU64::new(1),
                next_offset: AtomicU64::new(first_offset),
                first_offset,
                forgotten: AtomicU64::new(0),
                idle: Mutex::default(),
                members: RwLock::default(),
                topics: RwLock::default(),
                backend,
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                closed_slow: AtomicU64::new(0),
            }),
        }
    }

    /// A handle that does not keep the hub alive: what a [`Backend`] keeps to
    /// [`deliver`](Self::deliver) into the hub that owns it, without a reference cycle.
    pub fn downgrade(&self) -> WeakHub {
        WeakHub(Arc::downgrade(&self.inner))
    }

    /// The hub's configuration.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Adds `subscriber` (a callback connection's [`ConnHandle`], or anything else that
    /// implements [`Subscriber`]) as a member subscribed to nothing yet.
    pub fn join(&self, subscriber: impl Subscriber) -> Member {
        let id = MemberId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let entry: Arc<Entry> = Arc::new(Entry {
            id,
            handles: AtomicUsize::new(1),
            topics: Mutex::default(),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            subscriber,
        });
        write(&self.inner.members).insert(id, entry.clone());
        Member {
            hub: self.clone(),
            entry,
        }
    }

    /// Adds a task connection's sending half as a member: a writer task drains the member's
    /// queue into it, writing the messages that wait together. When the member leaves (its
    /// handle is dropped, or it is closed) the writer ends and drops the sender; if the
    /// connection fails, the member leaves the hub.
    pub fn join_sender<S>(&self, sender: WsSender<S>) -> Member
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let writer = Arc::new(Writer::default());
        let close_timeout = self.inner.config.close_timeout;
        tokio::spawn(run_writer(sender, writer.clone(), close_timeout));
        self.join(WriterHandle(writer))
    }

    /// Splits `socket`, joins its sending half ([`join_sender`](Self::join_sender)) and returns
    /// the member with the receiving half, which the caller keeps reading (to get the client's
    /// messages, answer pings and complete the close handshake).
    pub fn join_socket<S>(&self, socket: WebSocket<S>) -> (Member, WsReceiver<S>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = socket.split();
        (self.join_sender(tx), rx)
    }

    /// Sends `message` to every subscriber of `topic` (on every server, with a [`Backend`]),
    /// encoded once. Never waits: full queues get the overflow policy.
    pub fn publish(&self, topic: &str, message: impl Into<PreparedMessage>) -> Published {
        let message = message.into();
        let published = self.fan_out(Scope::Topic(topic), &message, None);
        if let Some(backend) = &self.inner.backend {
            backend.publish(Scope::Topic(topic), &message);
        }
        published
    }

    /// Sends `message` to every member (on every server, with a [`Backend`]), encoded once.
    pub fn broadcast(&self, message: impl Into<PreparedMessage>) -> Published {
        let message = message.into();
        let published = self.fan_out(Scope::All, &message, None);
        if let Some(backend) = &self.inner.backend {
            backend.publish(Scope::All, &message);
        }
        published
    }

    /// Delivers `message` to this server's members in `scope` only: what a [`Backend`] calls
    /// with messages published on other servers.
    pub fn deliver(&self, scope: Scope<'_>, message: &PreparedMessage) -> Published {
        self.fan_out(scope, message, None)
    }

    /// How many members subscribe to `topic` here.
    pub fn subscribers(&self, topic: &str) -> usize {
        let topic = read(&self.inner.topics).get(topic).cloned();
        topic.map_or(0, |t| read(&t.subscribers).len())
    }

    /// The topics that have subscribers here, with their subscriber counts, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let topics: Vec<_> = (read(&self.inner.topics).iter())
            .map(|(name, topic)| (name.clone(), topic.clone()))
            .collect();
        let mut infos: Vec<TopicInfo> = (topics.into_iter())
            .map(|(name, topic)| TopicInfo {
                name: name.to_string(),
                subscribers: read(&topic.subscribers).len(),
            })
            .filter(|info| info.subscribers > 0)
            .collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        let inner = &self.inner;
        HubStats {
            members: read(&inner.members).len(),
            topics: read(&inner.topics).len(),
            published: inner.published.load(Ordering::Relaxed),
            delivered: inner.delivered.load(Ordering::Relaxed),
            dropped: inner.dropped.load(Ordering::Relaxed),
            closed_slow: inner.closed_slow.load(Ordering::Relaxed),
        }
    }

    /// The counters of member `id`, while it is in the hub.
    pub fn member_stats(&self, id: MemberId) -> Option<MemberStats> {
        read(&self.inner.members).get(&id).map(|e| stats_of(e))
    }

    /// Offers `message` to the members in `scope` (but `except`), then drops those that are
    /// gone or were closed for slowness.
    fn fan_out(
        &self,
        scope: Scope<'_>,
        message: &PreparedMessage,
        except: Option<MemberId>,
    ) -> Published {
        let limits = &self.inner.config.queue;
        let mut published = Published::default();
        let mut leaving = Vec::new();
        let mut offer_to = |entry: &Arc<Entry>| {
            if Some(entry.id) == except {
                return;
            }
            let offer = entry.offer(message, limits);
            published.count(offer);
            if matches!(offer, Offer::Closed { .. } | Offer::Gone) {
                leaving.push(entry.id);
            }
        };
        match scope {
            Scope::Topic(name) => {
                // The hub's map only to find the topic; then the topic's own lock, shared with
                // concurrent publishes to it.
                let topic = read(&self.inner.topics).get(name).cloned();
                if let Some(topic) = topic {
                    read(&topic.subscribers).values().for_each(&mut offer_to);
                }
            }
            Scope::All => read(&self.inner.members).values().for_each(&mut offer_to),
        }
        self.settle(published, leaving)
    }

    /// Offers `message` to `topic`'s subscribers (but `except`); returns what happened and the
    /// members to drop (see [`settle`](Self::settle), called once the caller's locks are free).
    fn fan_out_to(
        &self,
        topic: &Topic,
        message: &PreparedMessage,
        except: Option<MemberId>,
    ) -> (Published, Vec<MemberId>) {
        let limits = &self.inner.config.queue;
        let mut published = Published::default();
        let mut leaving = Vec::new();
        for entry in read(&topic.subscribers).values() {
            if Some(entry.id) == except {
                continue;
            }
            let offer = entry.offer(message, limits);
            published.count(offer);
            if matches!(offer, Offer::Closed { .. } | Offer::Gone) {
                leaving.push(entry.id);
            }
        }
        (published, leaving)
    }

    /// Counts a fan-out and drops the members it found gone or closed for slowness.
    fn settle(&self, published: Published, leaving: Vec<MemberId>) -> Published {
        self.count(&published);
        for id in leaving {
            self.remove(id);
        }
        published
    }

    fn count(&self, published: &Published) {
        let inner = &self.inner;
        inner.published.fetch_add(1, Ordering::Relaxed);
        (inner.delivered).fetch_add(published.delivered as u64, Ordering::Relaxed);
        (inner.dropped).fetch_add(published.dropped as u64, Ordering::Relaxed);
        (inner.closed_slow).fetch_add(published.closed as u64, Ordering::Relaxed);
    }

    /// Takes member `id` out of the hub and of its topics.
    fn remove(&self, id: MemberId) {
        let Some(entry) = write(&self.inner.members).remove(&id) else {
            return;
        };
        let topics = std::mem::take(&mut *lock(&entry.topics));
        for topic in topics {
            self.leave_topic(&topic, id);
        }
    }

    /// The topic `name`, created if needed (with an empty history, if the hub keeps one).
    fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(topic) = read(&self.inner.topics).get(name) {
            return topic.clone();
        }
        let mut topics = write(&self.inner.topics);
        let mut created = false;
        let topic = topics.entry(Arc::from(name)).or_insert_with_key(|name| {
            created = true;
            let log = self.inner.config.history.map(|_| {
                Mutex::new(Log {
                    entries: VecDeque::new(),
                    // Whatever the topic had before it was forgotten counts as missed.
                    evicted: self.inner.forgotten.load(Ordering::Acquire),
                })
            });
            Arc::new(Topic {
                name: name.clone(),
                subscribers: RwLock::default(),
                removed: AtomicBool::new(false),
                idle_listed: AtomicBool::new(false),
                log,
            })
        });
        let topic = topic.clone();
        drop(topics);
        if created && let Some(backend) = &self.inner.backend {
            backend.subscribe(name);
        }
        topic
    }

    /// Adds `entry` to `name`'s subscribers, creating the topic if needed; with `after`, first
    /// queues what the topic kept after that offset. Returns the topic and what the replay did.
    fn join_topic(
        &self,
        name: &str,
        entry: &Arc<Entry>,
        after: Option<u64>,
        announce: Announce<'_>,
    ) -> (Arc<Topic>, Resume, u64) {
        loop {
            let topic = self.topic(name);
            let (resume, mark) = {
                // The log first: no numbered publication to the topic can come between the
                // replay and the subscription.
                let mut log = topic.log.as_ref().map(lock);
                let mut subscribers = write(&topic.subscribers);
                if topic.removed.load(Ordering::Acquire) {
                    // Emptied and taken out meanwhile: find or create it again.
                    continue;
                }
                subscribers.insert(entry.id, entry.clone());
                drop(subscribers);
                // Under the log's lock no numbered publication to the topic is under way: those
                // numbered up to here came before the subscription, later ones reach it.
                let mark = (self.inner.next_offset.load(Ordering::Acquire)).saturating_sub(1);
                let resume = match (after, log.as_deref_mut()) {
                    (None, _) => Resume::Complete { replayed: 0 },
                    (Some(after), Some(log)) => self.replay(log, entry, after, announce),
                    (Some(_), None) => {
                        self.announce(entry, announce, Resume::Gap);
                        Resume::Gap
                    }
                };
                (resume, mark)
            };
            return (topic, resume, mark);
        }
    }

    /// Queues for `entry` what `log` kept after offset `after`, if it kept all of it.
    fn replay(
        &self,
        log: &mut Log,
        entry: &Arc<Entry>,
        after: u64,
        announce: Announce<'_>,
    ) -> Resume {
        if let Some(history) = &self.inner.config.history {
            log.trim(history, core::now());
        }
        let next = self.inner.next_offset.load(Ordering::Acquire);
        if after < log.evicted || after < self.inner.first_offset.saturating_sub(1) || after >= next
        {
            self.announce(entry, announce, Resume::Gap);
            return Resume::Gap;
        }
        let limits = &self.inner.config.queue;
        let (count, bytes) = (log.entries.iter().filter(|l| l.offset > after))
            .fold((0, 0usize), |(n, b), l| {
                (n + 1, b + l.message.frame().len())
            });
        // All of it must fit the member's queue at once (with the announcement): a replay that
        // overflowed would close a member under `Overflow::Close` as soon as it came back, and
        // again at every return. It is told of a gap instead.
        let queued = entry.subscriber.buffered_amount();
        let fits = count < limits.max_messages
            && (queued.saturating_add(bytes) <= limits.max_bytes || (count == 1 && queued == 0));
        if !fits {
            self.announce(entry, announce, Resume::Gap);
            return Resume::Gap;
        }
        self.announce(entry, announce, Resume::Complete { replayed: count });
        let mut replayed = 0;
        for logged in log.entries.iter().filter(|l| l.offset > after) {
            if !entry.offer(&logged.message, limits).is_queued() {
                // It cannot take them all: as good as a gap.
                return Resume::Gap;
            }
            replayed += 1;
        }
        Resume::Complete { replayed }
    }

    /// Queues for `entry` the message `announce` makes of what a resume is about to do (before
    /// anything it replays).
    fn announce(&self, entry: &Arc<Entry>, announce: Announce<'_>, resume: Resume) {
        let Some(message) = announce.and_then(|announce| announce(resume)) else {
            return;
        };
        let offer = entry.offer(&message, &self.inner.config.queue);
        let mut published = Published::default();
        published.count(offer);
        self.count(&published);
    }

    /// Removes member `id` from `topic`'s subscribers; removes the topic if it is left empty
    /// (one with a history stays while the history is young, see [`Self::forget_idle`]).
    fn leave_topic(&self, topic: &Arc<Topic>, id: MemberId) {
        let empty = {
            let mut subscribers = write(&topic.subscribers);
            subscribers.remove(&id);
            subscribers.is_empty()
        };
        if !empty {
            return;
        }
        let has_history = (topic.log.as_ref()).is_some_and(|log| !lock(log).entries.is_empty());
        if has_history {
            self.list_idle(topic);
            self.forget_idle();
            return;
        }
        self.remove_topic(topic);
    }

    /// Takes `topic` out of the hub if it (still) has no subscriber.
    fn remove_topic(&self, topic: &Arc<Topic>) {
        let mut topics = write(&self.inner.topics);
        let subscribers = write(&topic.subscribers);
        let current = (topics.get(&topic.name)).is_some_and(|t| Arc::ptr_eq(t, topic));
        if subscribers.is_empty() && current {
            topic.removed.store(true, Ordering::Release);
            topics.remove(&topic.name);
            drop(subscribers);
            drop(topics);
            if let Some(log) = &topic.log {
                let log = lock(log);
                let newest = log.entries.back().map_or(log.evicted, |l| l.offset);
                self.inner.forgotten.fetch_max(newest, Ordering::AcqRel);
            }
            if let Some(backend) = &self.inner.backend {
                backend.unsubscribe(&topic.name);
            }
        }
    }

    /// Lists `topic` among the idle topics (kept for their history alone), unless it is
    /// listed already.
    fn list_idle(&self, topic: &Arc<Topic>) {
        let mut idle = lock(&self.inner.idle);
        if !topic.idle_listed.swap(true, Ordering::Relaxed) {
            idle.push_back((topic.clone(), core::now()));
        }
    }

    /// Forgets the topics kept for their history alone whose history aged out, and the oldest
    /// ones past [`History::max_idle_topics`].
    ///
    /// The list is in the order topics became idle, but one published to since (such as
    /// `volley serve`'s `$metrics`, which nobody may listen to) stays young: it is moved to the
    /// back when it reaches the front, so that it does not keep the aged ones behind it from
    /// being forgotten.
    fn forget_idle(&self) {
        let Some(history) = self.inner.config.history else {
            return;
        };
        let now = core::now();
        // Each listed topic is moved back at most once per call.
        let mut moves = lock(&self.inner.idle).len();
        loop {
            let topic = {
                let mut idle = lock(&self.inner.idle);
                let Some((front, listed_at)) = idle.front() else {
                    return;
                };
                let subscribed = !read(&front.subscribers).is_empty();
                let newest = front.log.as_ref().and_then(|log| {
                    let mut log = lock(log);
                    log.trim(&history, now);
                    log.entries.back().map(|l| l.at)
                });
                let aged = newest.is_none();
                if !(subscribed || aged || idle.len() > history.max_idle_topics) {
                    match newest {
                        Some(at) if at > *listed_at && moves > 0 => {
                            moves -= 1;
                            if let Some((topic, _)) = idle.pop_front() {
                                idle.push_back((topic, at));
                            }
                            continue;
                        }
                        _ => return,
                    }
                }
                let Some((topic, _)) = idle.pop_front() else {
                    return;
                };
                topic.idle_listed.store(false, Ordering::Relaxed);
                if subscribed {
                    // Subscribed again: no longer idle (listed anew when it empties).
                    continue;
                }
                topic
            };
            self.remove_topic(&topic);
        }
    }

    /// Publishes to `topic` with the offset of this publication: `encode(offset)` builds the
    /// message (the offset travels in it, e.g. as a JSON field or an event id), encoded once.
    /// Offsets grow across the hub's topics and its restarts. With a [`History`], the topic
    /// keeps the message for [`Member::resume`]. Returns the offset and what the publish did.
    pub fn publish_numbered(
        &self,
        topic: &str,
        encode: impl FnOnce(u64) -> PreparedMessage,
    ) -> (u64, Published) {
        let next = || self.inner.next_offset.fetch_add(1, Ordering::AcqRel);
        let (offset, message, published) = match &self.inner.config.history {
            Some(history) => {
                let topic = self.topic(topic);
                let mut log = topic.log.as_ref().map(lock);
                let offset = next();
                let message = encode(offset);
                if let Some(log) = log.as_deref_mut() {
                    let at = core::now();
                    log.entries.push_back(Logged {
                        offset,
                        at,
                        message: message.clone(),
                    });
                    log.trim(history, at);
                }
                let (published, leaving) = self.fan_out_to(&topic, &message, None);
                drop(log);
                let published = self.settle(published, leaving);
                if read(&topic.subscribers).is_empty() {
                    // Published to a topic nobody listens to: kept for its history alone.
                    self.list_idle(&topic);
                }
                self.forget_idle();
                (offset, message, published)
            }
            None => {
                let offset = next();
                let message = encode(offset);
                let published = self.fan_out(Scope::Topic(topic), &message, None);
                (offset, message, published)
            }
        };
        if let Some(backend) = &self.inner.backend {
            backend.publish(Scope::Topic(topic), &message);
        }
        (offset, published)
    }
}

fn stats_of(entry: &Entry) -> MemberStats {
    MemberStats {
        queued_bytes: entry.subscriber.buffered_amount(),
        delivered: entry.delivered.load(Ordering::Relaxed),
        dropped: entry.dropped.load(Ordering::Relaxed),
    }
}

/// A connection's membership in a [`Hub`]. Cheap to clone (clones share the membership; keep
/// one with the connection, e.g. [`Conn::set_data`](crate::callback::Conn::set_data)); when the
/// last clone is dropped the member leaves the hub (the connection itself stays open; a task
/// member's writer releases the sender half).
pub struct Member {
    hub: Hub,
    entry: Arc<Entry>,
}

impl Clone for Member {
    fn clone(&self) -> Self {
        self.entry.handles.fetch_add(1, Ordering::Relaxed);
        Self {
            hub: self.hub.clone(),
            entry: self.entry.clone(),
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        if self.entry.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.hub.remove(self.entry.id);
        }
    }
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.entry.id)
            .field("topics", &self.topics())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.entry.id
    }

    /// The hub this member belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Subscribes to `topic`; returns `false` if already subscribed (or no longer in the hub).
    pub fn subscribe(&self, topic: &str) -> bool {
        if !self.in_hub() {
            return false;
        }
        let mut topics = lock(&self.entry.topics);
        if topics.iter().any(|t| &*t.name == topic) {
            return false;
        }
        // Under the member's lock, so that a concurrent unsubscribe sees the topic.
        topics.push(self.hub.join_topic(topic, &self.entry, None, None).0);
        true
    }

    /// [`subscribe`](Self::subscribe), returning the topic's *mark*: the newest offset the hub
    /// had handed out ([`Hub::publish_numbered`]) when the subscription took effect. Numbered
    /// publications to the topic up to the mark came before it, every later one reaches this
    /// member; a client that keeps the mark can [`resume`](Self::resume) after it even if the
    /// topic stays silent until it comes back. Exact when the hub keeps a [`History`]. `None` if
    /// already subscribed (or no longer in the hub).
    pub fn subscribe_marked(&self, topic: &str) -> Option<u64> {
        if !self.in_hub() {
            return None;
        }
        let mut topics = lock(&self.entry.topics);
        if topics.iter().any(|t| &*t.name == topic) {
            return None;
        }
        let (joined, _, mark) = self.hub.join_topic(topic, &self.entry, None, None);
        topics.push(joined);
        Some(mark)
    }

    /// Subscribes to `topic` as one that has received everything up to offset `after` (from
    /// [`Hub::publish_numbered`]): what the topic published since is queued first, in order,
    /// then what follows, with nothing lost or repeated in between — or, if the hub's
    /// [`History`] no longer holds all of it, or if it would not fit the member's queue
    /// ([`HubConfig::queue`]) at once, [`Resume::Gap`] (the member then receives what follows
    /// only). Already subscribed: nothing is replayed.
    pub fn resume(&self, topic: &str, after: u64) -> Resume {
        self.resume_inner(topic, after, None)
    }

    /// [`resume`](Self::resume), with a message queued for this member first: `announce` is
    /// told what the resume is about to do (how many messages it replays, or a gap) and may
    /// return a message, which is queued before the replayed ones and before anything published
    /// to the topic afterwards — a "resumed" answer or a "gap" event that the client must see
    /// first. Called once, unless the member is not in the hub; already subscribed, it is told
    /// `Complete { replayed: 0 }`. Do not call the hub's publishing methods from it (it runs
    /// under the topic's lock).
    ///
    /// The count `announce` is told may exceed what is queued in the end if the member's queue
    /// cannot take them all (the result is then [`Resume::Gap`], and under
    /// [`Overflow::Close`] the member is being closed).
    pub fn resume_with(
        &self,
        topic: &str,
        after: u64,
        mut announce: impl FnMut(Resume) -> Option<PreparedMessage>,
    ) -> Resume {
        self.resume_inner(topic, after, Some(&mut announce))
    }

    fn resume_inner(&self, topic: &str, after: u64, announce: Announce<'_>) -> Resume {
        if !self.in_hub() {
            return Resume::Gap;
        }
        let mut topics = lock(&self.entry.topics);
        if topics.iter().any(|t| &*t.name == topic) {
            let resume = Resume::Complete { replayed: 0 };
            self.hub.announce(&self.entry, announce, resume);
            return resume;
        }
        let (joined, resume, _) = self
            .hub
            .join_topic(topic, &self.entry, Some(after), announce);
        topics.push(joined);
        resume
    }

    /// Unsubscribes from `topic`; returns `false` if not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        let left = {
            let mut topics = lock(&self.entry.topics);
            let Some(i) = topics.iter().position(|t| &*t.name == topic) else {
                return false;
            };
            topics.swap_remove(i)
        };
        self.hub.leave_topic(&left, self.entry.id);
        true
    }

    /// The topics this member subscribes to.
    pub fn topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = (lock(&self.entry.topics).iter())
            .map(|t| t.name.to_string())
            .collect();
        topics.sort();
        topics
    }

    /// Sends `message` to every other subscriber of `topic` (not to this member), encoded once.
    pub fn publish(&self, topic: &str, message: impl Into<PreparedMessage>) -> Published {
        let message = message.into();
        let published = (self.hub).fan_out(Scope::Topic(topic), &message, Some(self.entry.id));
        if let Some(backend) = &self.hub.inner.backend {
            backend.publish(Scope::Topic(topic), &message);
        }
        published
    }

    /// Queues `message` for this member alone, within the hub's limits.
    pub fn send(&self, message: impl Into<PreparedMessage>) -> Offer {
        let offer = (self.entry).offer(&message.into(), &self.hub.inner.config.queue);
        let mut published = Published::default();
        published.count(offer);
        self.hub.count(&published);
        if matches!(offer, Offer::Closed { .. } | Offer::Gone) {
            self.hub.remove(self.entry.id);
        }
        offer
    }

    /// Leaves the hub and closes the connection with `frame` behind the messages already
    /// queued for it (none is lost). An invalid frame (a code that may not be sent, a reason
    /// over 123 bytes) is replaced by a plain close.
    pub fn close(&self, frame: Option<CloseFrame>) {
        self.hub.remove(self.entry.id);
        self.entry.subscriber.close(frame.filter(valid_close));
    }

    /// Whether the member no longer takes messages: it left the hub, or its connection is
    /// closing or gone.
    pub fn is_closed(&self) -> bool {
        !self.in_hub() || !self.entry.subscriber.is_open()
    }

    fn in_hub(&self) -> bool {
        read(&self.hub.inner.members).contains_key(&self.entry.id)
    }

    /// This member's counters and queue level.
    pub fn stats(&self) -> MemberStats {
        stats_of(&self.entry)
    }
}

/// The queue of a task member, drained by its writer task.
#[derive(Default)]
struct Writer {
    queue: Mutex<WriterQueue>,
    /// Wakes the writer: the queue became non-empty, or it must stop.
    wake: Notify,
}

#[derive(Default)]
struct WriterQueue {
    outbox: Outbox<PreparedMessage>,
    /// Set once the writer must stop taking messages.
    stop: Option<Stop>,
    /// The writer ended (its connection failed, or it stopped).
    ended: bool,
}

enum Stop {
    /// Close after the queued messages.
    Close(Option<CloseFrame>),
    /// Closed for slowness: the queue was discarded; send this close frame.
    Slow(CloseFrame),
    /// The member left the hub: release the sender now.
    Left,
}

impl Writer {
    fn lock(&self) -> MutexGuard<'_, WriterQueue> {
        lock(&self.queue)
    }

    fn stop(&self, stop: Stop) {
        let mut q = self.lock();
        if q.stop.is_none() && !q.ended {
            q.stop = Some(stop);
            drop(q);
            self.wake.notify_one();
        }
    }

    /// The writer's next step: messages to send (moved into `batch`, up to [`BATCH_MESSAGES`]
    /// and [`BATCH_BYTES`]), or a stop once the queue before it is sent.
    async fn next(&self, batch: &mut Vec<PreparedMessage>) -> Option<Stop> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if (matches!(q.stop, Some(Stop::Slow(_) | Stop::Left)) || q.outbox.is_empty())
                    && let Some(stop) = q.stop.take()
                {
                    return Some(stop);
                }
                let mut bytes = 0;
                while batch.len() < BATCH_MESSAGES {
                    let Some(message) = q.outbox.pop() else {
                        break;
                    };
                    bytes += message.frame().len();
                    batch.push(message);
                    if bytes >= BATCH_BYTES {
                        break;
                    }
                }
                if !batch.is_empty() {
                    return None;
                }
            }
            notified.await;
        }
    }

    /// Resolves when the writer must abandon the batch it is sending: the member was closed for
    /// slowness or left.
    async fn interrupted(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if matches!(self.lock().stop, Some(Stop::Slow(_) | Stop::Left)) {
                return;
            }
            notified.await;
        }
    }
}

/// The hub's hold on a task member's writer: dropping it (the member left the hub) stops the
/// writer.
struct WriterHandle(Arc<Writer>);

impl Drop for WriterHandle {
    fn drop(&mut self) {
        self.0.stop(Stop::Left);
    }
}

impl Subscriber for WriterHandle {
    fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
        let mut q = self.0.lock();
        if q.stop.is_some() || q.ended {
            return Offer::Gone;
        }
        let was_empty = q.outbox.is_empty();
        let offer = q.outbox.offer(message.clone(), 0, limits);
        match offer {
            Offer::Closed { .. } => q.stop = Some(Stop::Slow(limits.slow_close_frame())),
            Offer::Queued { .. } if was_empty => {}
            _ => return offer,
        }
        drop(q);
        self.0.wake.notify_one();
        offer
    }

    fn close(&self, frame: Option<CloseFrame>) {
        self.0.stop(Stop::Close(frame));
    }

    fn buffered_amount(&self) -> usize {
        self.0.lock().outbox.bytes()
    }

    fn is_open(&self) -> bool {
        let q = self.0.lock();
        q.stop.is_none() && !q.ended
    }
}

/// Queues every message of `batch` and writes them together.
async fn write_batch<S>(tx: &mut WsSender<S>, batch: &[PreparedMessage]) -> crate::Result<()>
where
    S: AsyncRead + AsyncWrite,
{
    if let Some((last, rest)) = batch.split_last() {
        for message in rest {
            tx.feed_prepared(message).await?;
        }
        tx.send_prepared(last).await?;
    }
    Ok(())
}

/// The writer task of a task member: drains its queue into the connection in batches.
async fn run_writer<S>(mut tx: WsSender<S>, writer: Arc<Writer>, close_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let mut batch = Vec::new();
    loop {
        batch.clear();
        match writer.next(&mut batch).await {
            None => {
                let sent = tokio::select! {
                    biased;
                    sent = write_batch(&mut tx, &batch) => Some(sent),
                    () = writer.interrupted() => None,
                };
                if let Some(Err(e)) = sent {
                    tracing::debug!("hub member's connection failed: {e}");
                    break;
                }
                // Interrupted: `send_prepared` is cancel-safe, and the next step (a close
                // frame, or releasing the sender) takes it from there.
            }
            Some(Stop::Close(frame)) => {
                let _ = tokio::time::timeout(close_timeout, tx.close(frame)).await;
                break;
            }
            Some(Stop::Slow(frame)) => {
                tracing::debug!("closing a slow hub member");
                let _ = tokio::time::timeout(close_timeout, tx.close(Some(frame))).await;
                break;
            }
            Some(Stop::Left) => break,
        }
    }
    let mut q = writer.lock();
    q.ended = true;
    q.outbox.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A subscriber that records what it was offered, with a fixed queue of its own.
    #[derive(Default)]
    struct Probe {
        queue: Mutex<Outbox<PreparedMessage>>,
        closed: AtomicBool,
    }

    impl Subscriber for Arc<Probe> {
        fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
            if self.closed.load(Ordering::Acquire) {
                return Offer::Gone;
            }
            let offer = lock(&self.queue).offer(message.clone(), 0, limits);
            if let Offer::Closed { .. } = offer {
                self.closed.store(true, Ordering::Release);
            }
            offer
        }

        fn close(&self, _frame: Option<CloseFrame>) {
            self.closed.store(true, Ordering::Release);
        }

        fn buffered_amount(&self) -> usize {
            lock(&self.queue).bytes()
        }

        fn is_open(&self) -> bool {
            !self.closed.load(Ordering::Acquire)
        }
    }

    fn received(probe: &Probe) -> Vec<String> {
        let mut q = lock(&probe.queue);
        std::iter::from_fn(|| q.pop())
            .map(|m| String::from_utf8_lossy(&m.payload()).into_owned())
            .collect()
    }

    #[test]
    fn topics_reach_exactly_their_subscribers_and_vanish_when_empty() {
        let hub = Hub::default();
        let (a, b) = (Arc::new(Probe::default()), Arc::new(Probe::default()));
        let ma = hub.join(a.clone());
        let mb = hub.join(b.clone());
        assert!(ma.subscribe("x"));
        assert!(!ma.subscribe("x"));
        mb.subscribe("y");
        assert_eq!(hub.publish("x", "one").delivered, 1);
        assert_eq!(hub.publish("z", "none").delivered, 0);
        assert_eq!(ma.publish("x", "self excluded").delivered, 0);
        assert_eq!(hub.broadcast("all").delivered, 2);
        assert_eq!(received(&a), ["one", "all"]);
        assert_eq!(received(&b), ["all"]);
        assert_eq!(hub.topics().len(), 2);
        assert!(ma.unsubscribe("x"));
        assert!(!ma.unsubscribe("x"));
        drop(mb);
        assert!(hub.topics().is_empty());
        assert_eq!(hub.stats().members, 1);
    }

    #[test]
    fn a_slow_subscriber_is_closed_and_leaves_the_hub() {
        let hub = Hub::new(
            HubConfig::default().queue(
                QueueLimits::default()
                    .max_messages(2)
                    .overflow(Overflow::Close),
            ),
        );
        let slow = Arc::new(Probe::default());
        let member = hub.join(slow.clone());
        member.subscribe("t");
        for _ in 0..2 {
            assert_eq!(hub.publish("t", "m").delivered, 1);
        }
        let published = hub.publish("t", "m");
        assert_eq!((published.closed, published.dropped), (1, 3));
        assert!(member.is_closed());
        assert_eq!(hub.subscribers("t"), 0);
        assert_eq!(hub.stats().closed_slow, 1);
    }

    #[derive(Default)]
    struct Bus(Mutex<Vec<String>>);

    impl Backend for Arc<Bus> {
        fn publish(&self, scope: Scope<'_>, message: &PreparedMessage) {
            let payload = String::from_utf8_lossy(&message.payload()).into_owned();
            lock(&self.0).push(format!("publish {scope:?} {payload}"));
        }

        fn subscribe(&self, topic: &str) {
            lock(&self.0).push(format!("subscribe {topic}"));
        }

        fn unsubscribe(&self, topic: &str) {
            lock(&self.0).push(format!("unsubscribe {topic}"));
        }
    }

    #[test]
    fn a_backend_sees_topics_come_and_go_and_what_is_published() {
        let bus = Arc::new(Bus::default());
        let hub = Hub::with_backend(HubConfig::default(), Arc::new(bus.clone()));
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        member.subscribe("t");
        let other = hub.join(Arc::new(Probe::default()));
        other.subscribe("t");
        hub.publish("t", "local");
        // What the backend brings from other servers is delivered here only.
        hub.deliver(Scope::Topic("t"), &PreparedMessage::text("remote"));
        drop(other);
        drop(member);
        assert_eq!(
            *lock(&bus.0),
            ["subscribe t", "publish Topic(\"t\") local", "unsubscribe t"]
        );
        assert_eq!(received(&probe), ["local", "remote"]);
    }

    /// A numbered message: its offset as text.
    fn numbered(offset: u64) -> PreparedMessage {
        PreparedMessage::text(offset.to_string())
    }

    fn offsets(probe: &Probe) -> Vec<u64> {
        received(probe).iter().map(|t| t.parse().unwrap()).collect()
    }

    fn with_history(history: History) -> Hub {
        let roomy = QueueLimits::default()
            .max_messages(1 << 20)
            .max_bytes(1 << 30);
        Hub::new(HubConfig::default().queue(roomy).history(Some(history)))
    }

    #[test]
    fn a_resuming_member_gets_what_it_missed_then_what_follows_in_order() {
        let hub = with_history(History::default());
        let first = Arc::new(Probe::default());
        let member = hub.join(first.clone());
        member.subscribe("t");
        let (a, _) = hub.publish_numbered("t", numbered);
        let (b, _) = hub.publish_numbered("t", numbered);
        assert!(b > a, "offsets grow");
        assert_eq!(offsets(&first), [a, b]);
        // It goes away after seeing `a`; three more are published meanwhile.
        drop(member);
        let missed: Vec<u64> = (0..3)
            .map(|_| hub.publish_numbered("t", numbered).0)
            .collect();
        let back = Arc::new(Probe::default());
        let member = hub.join(back.clone());
        assert_eq!(member.resume("t", a), Resume::Complete { replayed: 4 });
        let (c, _) = hub.publish_numbered("t", numbered);
        let mut expected = vec![b];
        expected.extend(&missed);
        expected.push(c);
        assert_eq!(offsets(&back), expected);
        // Already subscribed: nothing again.
        assert_eq!(member.resume("t", a), Resume::Complete { replayed: 0 });
        assert!(received(&back).is_empty());
    }

    #[test]
    fn resuming_past_what_is_kept_is_a_gap() {
        let hub = with_history(History::default().max_messages(2));
        let keep = hub.join(Arc::new(Probe::default()));
        keep.subscribe("t");
        let first = hub.publish_numbered("t", numbered).0;
        for _ in 0..3 {
            hub.publish_numbered("t", numbered);
        }
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        assert_eq!(member.resume("t", first), Resume::Gap);
        // Subscribed all the same: what follows arrives.
        let (next, _) = hub.publish_numbered("t", numbered);
        assert_eq!(offsets(&probe), [next]);
        // Offsets of another process (before this hub's first) or never given: a gap.
        let other = hub.join(Arc::new(Probe::default()));
        assert_eq!(other.resume("t", 5), Resume::Gap);
        let other = hub.join(Arc::new(Probe::default()));
        assert_eq!(other.resume("t", next + 10), Resume::Gap);
        // The last two are kept.
        let other = hub.join(Arc::new(Probe::default()));
        assert_eq!(
            other.resume("t", next - 2),
            Resume::Complete { replayed: 2 }
        );
    }

    #[test]
    fn a_topic_keeps_its_history_without_subscribers_until_it_ages_out() {
        let hub = with_history(History::default().max_age(Duration::from_millis(50)));
        let member = hub.join(Arc::new(Probe::default()));
        member.subscribe("t");
        let seen = hub.publish_numbered("t", numbered).0;
        drop(member);
        // Nobody listens, yet what is published is kept.
        let missed = hub.publish_numbered("t", numbered).0;
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        assert_eq!(member.resume("t", seen), Resume::Complete { replayed: 1 });
        assert_eq!(offsets(&probe), [missed]);
        drop(member);
        std::thread::sleep(Duration::from_millis(80));
        // Aged out: forgotten with the topic at the next chance; one that missed something
        // learns it, one that saw everything does not.
        hub.publish_numbered("other", numbered);
        assert!(read(&hub.inner.topics).get("t").is_none());
        let member = hub.join(Arc::new(Probe::default()));
        assert_eq!(member.resume("t", seen), Resume::Gap);
        let member = hub.join(Arc::new(Probe::default()));
        assert_eq!(member.resume("t", missed), Resume::Complete { replayed: 0 });
    }

    #[test]
    fn a_topic_kept_young_by_publications_does_not_hold_back_aged_ones() {
        // Regression: `volley serve` publishes `$metrics` every second whether anyone listens
        // or not; listed idle first and never aging, it kept every topic behind it (a /chat
        // topic per client under churn) until there were `max_idle_topics` of them.
        let hub = with_history(History::default().max_age(Duration::from_millis(50)));
        let names = |hub: &Hub| {
            let mut names: Vec<String> = read(&hub.inner.topics)
                .keys()
                .map(|k| k.to_string())
                .collect();
            names.sort();
            names
        };
        hub.publish_numbered("busy", numbered);
        for i in 0..5 {
            let member = hub.join(Arc::new(Probe::default()));
            member.subscribe(&format!("t{i}"));
            hub.publish_numbered(&format!("t{i}"), numbered);
            drop(member);
        }
        assert_eq!(names(&hub).len(), 6);
        std::thread::sleep(Duration::from_millis(80));
        hub.publish_numbered("busy", numbered);
        assert_eq!(names(&hub), ["busy"]);
        // It ages out too once nothing is published to it.
        std::thread::sleep(Duration::from_millis(80));
        hub.publish_numbered("other", numbered);
        assert_eq!(names(&hub), ["other"]);
    }

    #[test]
    fn idle_topics_are_bounded() {
        let hub = with_history(History::default().max_idle_topics(3));
        let offsets: Vec<u64> = (0..10)
            .map(|i| hub.publish_numbered(&format!("t{i}"), numbered).0)
            .collect();
        assert!(hub.topics().len() <= 4, "{:?}", hub.topics());
        let member = hub.join(Arc::new(Probe::default()));
        // Forgotten: a gap. Kept: complete.
        assert_eq!(member.resume("t0", offsets[0] - 1), Resume::Gap);
        assert_eq!(
            member.resume("t9", offsets[9] - 1),
            Resume::Complete { replayed: 1 }
        );
    }

    #[test]
    fn a_resume_announces_itself_before_what_it_replays() {
        let hub = with_history(History::default().max_messages(3));
        let keep = hub.join(Arc::new(Probe::default()));
        keep.subscribe("t");
        let first = hub.publish_numbered("t", numbered).0;
        let second = hub.publish_numbered("t", numbered).0;
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        let announce = |resume: Resume| Some(PreparedMessage::text(format!("{resume:?}")));
        assert_eq!(
            member.resume_with("t", first, announce),
            Resume::Complete { replayed: 1 }
        );
        assert_eq!(
            received(&probe),
            ["Complete { replayed: 1 }".to_owned(), second.to_string()]
        );
        // Already subscribed: announced, nothing replayed.
        member.resume_with("t", first, announce);
        assert_eq!(received(&probe), ["Complete { replayed: 0 }"]);
        // Too old: the gap is announced, then what follows.
        for _ in 0..4 {
            hub.publish_numbered("t", numbered);
        }
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        assert_eq!(member.resume_with("t", first, announce), Resume::Gap);
        let (next, _) = hub.publish_numbered("t", numbered);
        assert_eq!(received(&probe), ["Gap".to_owned(), next.to_string()]);
        // No message: nothing queued.
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        member.resume_with("t", next, |_| None);
        assert!(received(&probe).is_empty());
    }

    #[test]
    fn a_replay_larger_than_the_queue_is_a_gap_not_a_close() {
        let queue = QueueLimits::default().max_messages(4);
        let hub = Hub::new(
            HubConfig::default()
                .queue(queue)
                .history(Some(History::default())),
        );
        let start = hub.publish_numbered("t", numbered).0;
        for _ in 0..4 {
            hub.publish_numbered("t", numbered);
        }
        let probe = Arc::new(Probe::default());
        let member = hub.join(probe.clone());
        assert_eq!(
            member.resume("t", start),
            Resume::Gap,
            "4 missed, queue of 4"
        );
        assert!(!member.is_closed());
        let (next, _) = hub.publish_numbered("t", numbered);
        assert_eq!(offsets(&probe), [next]);
        let member = hub.join(Arc::new(Probe::default()));
        assert_eq!(
            member.resume("t", next - 3),
            Resume::Complete { replayed: 3 }
        );
    }

    #[test]
    fn without_history_resuming_is_a_gap() {
        let hub = Hub::default();
        let member = hub.join(Arc::new(Probe::default()));
        let (offset, published) = hub.publish_numbered("t", numbered);
        assert_eq!(published.delivered, 0);
        assert_eq!(member.resume("t", offset), Resume::Gap);
        assert_eq!(hub.publish_numbered("t", numbered).1.delivered, 1);
    }

    #[test]
    fn resuming_while_publishing_never_repeats_or_skips() {
        let hub = with_history(History::default().max_messages(100_000));
        let keep = hub.join(Arc::new(Probe::default()));
        keep.subscribe("t");
        let start = hub.publish_numbered("t", numbered).0;
        std::thread::scope(|s| {
            let publisher = hub.clone();
            s.spawn(move || {
                for _ in 0..3000 {
                    publisher.publish_numbered("t", numbered);
                }
            });
            for _ in 0..20 {
                let probe = Arc::new(Probe::default());
                let member = hub.join(probe.clone());
                assert!(matches!(member.resume("t", start), Resume::Complete { .. }));
                // Until something arrived (the publisher may not have started yet).
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while lock(&probe.queue).bytes() == 0 {
                    assert!(std::time::Instant::now() < deadline, "nothing arrived");
                    std::thread::yield_now();
                }
                drop(member);
                let got = offsets(&probe);
                // Consecutive publications to one topic have consecutive offsets here (one
                // publisher): no hole, no repeat.
                for pair in got.windows(2) {
                    assert_eq!(pair[1], pair[0] + 1, "{pair:?}");
                }
                assert_eq!(got.first().copied(), Some(start + 1));
            }
        });
    }

    #[test]
    fn a_weak_hub_does_not_keep_the_hub_alive() {
        let hub = Hub::default();
        let weak = hub.downgrade();
        assert!(weak.upgrade().is_some());
        drop(hub);
        assert!(weak.upgrade().is_none());
        assert!(WeakHub::default().upgrade().is_none());
    }

    #[test]
    fn concurrent_subscribe_and_leave_never_lose_a_subscriber() {
        let hub = Hub::default();
        std::thread::scope(|s| {
            for i in 0..4 {
                let hub = hub.clone();
                s.spawn(move || {
                    for _ in 0..500 {
                        let m = hub.join(Arc::new(Probe::default()));
                        m.subscribe("hot");
                        m.subscribe(&format!("own{i}"));
                        assert!(hub.subscribers("hot") >= 1);
                        drop(m);
                    }
                });
            }
        });
        assert!(hub.topics().is_empty(), "{:?}", hub.topics());
        let keep = hub.join(Arc::new(Probe::default()));
        keep.subscribe("hot");
        assert_eq!(hub.publish("hot", "x").delivered, 1);
    }
}
