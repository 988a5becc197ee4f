//! Topics hub: broadcast and rooms for WebSocket connections, every message encoded once.
//!
//! A [`Hub`] fans messages out to the connections that [`join`](Hub::join)ed it. Each joined
//! connection is a [`Member`] that [`subscribe`](Member::subscribe)s to topics by name (a topic
//! exists while it has subscribers). [`Hub::publish`] encodes the message once into a
//! [`PreparedMessage`] and puts that same [`Bytes`](bytes::Bytes) into the queue of every
//! subscriber: no per-subscriber copy or re-encoding.
//!
//! Every member has its own bounded queue and its own writer task that drains the queue into the
//! connection's [`WsSender`]. What happens when a queue is full is the hub's [`Overflow`] policy:
//! wait for room, drop the newest or the oldest message (counted), or close the slow consumer.
//! With any policy but [`Overflow::Wait`], a subscriber that stops reading never slows the
//! publisher or the other subscribers, and the memory it can hold is capped by
//! [`HubConfig::max_queue_messages`] and [`HubConfig::max_queue_bytes`].
//!
//! ```no_run
//! use volley::hub::Hub;
//!
//! # async fn run() -> std::io::Result<()> {
//! let hub = Hub::default();
//! let server = volley::Server::bind("127.0.0.1:9001").await?;
//! server
//!     .serve(move |ws, _request| {
//!         let hub = hub.clone();
//!         async move {
//!             let (tx, mut rx) = ws.split();
//!             let member = hub.join(tx);
//!             member.subscribe("news");
//!             while let Some(Ok(message)) = rx.recv().await {
//!                 if let volley::Message::Text(text) = message {
//!                     // To every other subscriber of "news".
//!                     member.publish("news", text).await;
//!                 }
//!             }
//!             // Dropping `member` leaves the hub.
//!         }
//!     })
//!     .await
//! # }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;
use tokio::time::Instant;
use volley_proto::{CloseCode, CloseFrame, PreparedMessage, SendError};

use crate::stream::{WebSocket, WsReceiver, WsSender};

/// The reason sent with the close frame of a consumer closed for slowness.
const SLOW_REASON: &str = "slow consumer: send queue full";

/// Most messages a writer takes from its queue for one write (one vectored write, if the
/// transport supports it).
const BATCH_MESSAGES: usize = 64;

/// Most encoded bytes a writer takes from its queue for one write (at least one message).
const BATCH_BYTES: usize = 64 * 1024;

/// What a publisher does when a subscriber's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// The publisher waits until the subscriber's writer makes room. Nothing is dropped, but one
    /// subscriber that stops reading stalls every publisher to its topics (until its connection
    /// fails or the member is dropped): pair it with keep-alive timeouts, or bound `publish`
    /// with a timeout.
    Wait,
    /// The new message is not queued for that subscriber; counted in `dropped`.
    DropNewest,
    /// The oldest queued messages are discarded to make room; counted in `dropped`. Suits feeds
    /// where the latest value matters most (prices, positions, dashboards).
    DropOldest,
    /// The slow subscriber is closed: it leaves the hub at once, its queued messages are
    /// discarded (counted in `dropped`), and its connection gets a close frame with
    /// [`HubConfig::slow_close_code`] (default 1013, try again later) after the bytes already
    /// being written. Counted in `closed_slow`.
    Close,
}

/// Configuration of a [`Hub`]: the overflow policy and the bounds of every member's queue.
///
/// Start from [`HubConfig::default`] and change what you need with the by-value setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubConfig {
    /// What to do when a member's queue is full. Default [`Overflow::Close`]: no message is ever
    /// lost silently, memory stays bounded, and the client learns that it fell behind (1013
    /// invites it to reconnect later and resynchronise).
    pub overflow: Overflow,
    /// Most messages waiting in one member's queue. Default 256. At least 1.
    pub max_queue_messages: usize,
    /// Most encoded frame bytes waiting in one member's queue. Default 1 MiB. A single message
    /// larger than this is still accepted by an empty queue, so a member holds at most
    /// `max(max_queue_bytes, largest message)`, plus what its writer took from the queue for the
    /// write in progress (at most 64 messages and 64 KiB, or one larger message).
    pub max_queue_bytes: usize,
    /// The close code a consumer closed for slowness gets ([`Overflow::Close`]). Default 1013
    /// (try again later); 1008 (policy violation) is the other usual choice. A code that may not
    /// be sent ([`CloseCode::is_sendable`]) is replaced by 1013.
    pub slow_close_code: CloseCode,
    /// How long a member's writer keeps trying to deliver its close frame (after
    /// [`Member::close`], or to a consumer closed for slowness) before it gives up and releases
    /// the connection's sender half. Default 10 s.
    pub close_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            overflow: Overflow::Close,
            max_queue_messages: 256,
            max_queue_bytes: 1 << 20,
            slow_close_code: CloseCode::TRY_AGAIN_LATER,
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl HubConfig {
    /// Sets [`HubConfig::overflow`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets [`HubConfig::max_queue_messages`]; 0 is treated as 1.
    pub fn max_queue_messages(mut self, messages: usize) -> Self {
        self.max_queue_messages = messages.max(1);
        self
    }

    /// Sets [`HubConfig::max_queue_bytes`].
    pub fn max_queue_bytes(mut self, bytes: usize) -> Self {
        self.max_queue_bytes = bytes;
        self
    }

    /// Sets [`HubConfig::slow_close_code`].
    pub fn slow_close_code(mut self, code: CloseCode) -> Self {
        self.slow_close_code = code;
        self
    }

    /// Sets [`HubConfig::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
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
    /// Subscribers whose queue took the message (their writers send it next).
    pub delivered: usize,
    /// Messages lost to overflow by this publish: the new message for each full queue under
    /// [`Overflow::DropNewest`], the older messages discarded under [`Overflow::DropOldest`], and
    /// under [`Overflow::Close`] the new message plus the queue of each subscriber closed.
    pub dropped: usize,
    /// Subscribers closed for slowness by this publish ([`Overflow::Close`]).
    pub closed: usize,
}

/// Counters of a [`Hub`], as returned by [`Hub::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Members currently in the hub.
    pub members: usize,
    /// Topics that currently have subscribers.
    pub topics: usize,
    /// Messages published (each `publish`, `broadcast` or `Member::send` counts once).
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
    /// Messages waiting in the queue now.
    pub queued: usize,
    /// Encoded bytes waiting in the queue now.
    pub queued_bytes: usize,
    /// The most encoded bytes that ever waited in the queue at once.
    pub peak_queued_bytes: usize,
    /// Messages the queue took.
    pub delivered: u64,
    /// Messages lost to overflow: not taken, discarded from the queue, or discarded when the
    /// member was closed for slowness.
    pub dropped: u64,
    /// Messages the writer finished writing to the connection.
    pub sent: u64,
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

/// A hub of topics that WebSocket connections subscribe to; cheap to clone (an `Arc` inside).
///
/// See the [module documentation](self) for the model. All methods are safe to call from any
/// task; [`join`](Self::join) must run inside a Tokio runtime because it spawns the member's
/// writer task.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    config: HubConfig,
    next_id: AtomicU64,
    registry: Mutex<Registry>,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    closed_slow: AtomicU64,
}

#[derive(Default)]
struct Registry {
    members: HashMap<MemberId, Entry>,
    /// Subscribers per topic, in join order (ids grow).
    topics: HashMap<Arc<str>, BTreeMap<MemberId, Arc<Slot>>>,
}

struct Entry {
    slot: Arc<Slot>,
    topics: HashSet<Arc<str>>,
}

impl Registry {
    /// Removes a member from the hub and from all its topics; removes topics left empty.
    fn remove(&mut self, id: MemberId) {
        let Some(entry) = self.members.remove(&id) else {
            return;
        };
        for topic in entry.topics {
            self.unsubscribe_from(&topic, id);
        }
    }

    fn unsubscribe_from(&mut self, topic: &str, id: MemberId) {
        if let Some(subscribers) = self.topics.get_mut(topic) {
            subscribers.remove(&id);
            if subscribers.is_empty() {
                self.topics.remove(topic);
            }
        }
    }
}

/// A member's queue and signals, shared by the hub, the [`Member`] handle and the writer task.
struct Slot {
    id: MemberId,
    queue: Mutex<Queue>,
    /// Wakes the writer: the queue became non-empty, or it must stop.
    wake: Notify,
    /// Wakes publishers waiting for room ([`Overflow::Wait`]), or to see that the member left.
    space: Notify,
    /// Set when the writer task ended.
    finished: AtomicBool,
    finished_notify: Notify,
    sent: AtomicU64,
}

enum Item {
    Message(PreparedMessage),
    Close(Option<CloseFrame>),
}

enum Stop {
    /// The `Member` was dropped: stop now (unless closing, then after the close frame).
    Dropped,
    /// Closed for slowness: abandon the queue, send this close frame.
    Slow(CloseFrame),
}

struct Queue {
    items: VecDeque<Item>,
    bytes: usize,
    peak_bytes: usize,
    /// Accepts messages: in the hub and not closing.
    open: bool,
    stop: Option<Stop>,
    /// Set by `Member::close`: the writer drains up to the close frame until then.
    closing: Option<Instant>,
    delivered: u64,
    dropped: u64,
}

/// The result of offering a message to one queue.
enum Offer {
    Delivered { evicted: usize },
    Dropped,
    Full,
    Slow { discarded: usize },
    Gone,
}

impl Queue {
    fn fits(&self, size: usize, config: &HubConfig) -> bool {
        self.items.is_empty()
            || (self.items.len() < config.max_queue_messages
                && self.bytes.saturating_add(size) <= config.max_queue_bytes)
    }

    /// Returns whether the writer must be woken (the queue was empty).
    fn push(&mut self, message: &PreparedMessage) -> bool {
        let was_empty = self.items.is_empty();
        self.bytes += message.frame().len();
        self.peak_bytes = self.peak_bytes.max(self.bytes);
        self.items.push_back(Item::Message(message.clone()));
        self.delivered += 1;
        was_empty
    }

    fn pop(&mut self) -> Option<Item> {
        let item = self.items.pop_front()?;
        if let Item::Message(m) = &item {
            self.bytes -= m.frame().len();
        }
        Some(item)
    }

    /// Empties the queue, returning how many messages it held.
    fn discard(&mut self) -> usize {
        let n = self
            .items
            .iter()
            .filter(|i| matches!(i, Item::Message(_)))
            .count();
        self.items.clear();
        self.bytes = 0;
        n
    }

    fn offer(&mut self, message: &PreparedMessage, config: &HubConfig, slot: &Slot) -> Offer {
        if !self.open {
            return Offer::Gone;
        }
        let size = message.frame().len();
        if self.fits(size, config) {
            if self.push(message) {
                slot.wake.notify_one();
            }
            return Offer::Delivered { evicted: 0 };
        }
        match config.overflow {
            Overflow::Wait => Offer::Full,
            Overflow::DropNewest => {
                self.dropped += 1;
                Offer::Dropped
            }
            Overflow::DropOldest => {
                let mut evicted = 0;
                while !self.fits(size, config) {
                    if self.pop().is_none() {
                        break;
                    }
                    evicted += 1;
                }
                self.dropped += evicted as u64;
                if self.push(message) {
                    slot.wake.notify_one();
                }
                Offer::Delivered { evicted }
            }
            Overflow::Close => {
                let discarded = self.discard() + 1;
                self.dropped += discarded as u64;
                self.open = false;
                let code = if config.slow_close_code.is_sendable() {
                    config.slow_close_code
                } else {
                    CloseCode::TRY_AGAIN_LATER
                };
                self.stop = Some(Stop::Slow(CloseFrame::new(code, SLOW_REASON)));
                slot.wake.notify_one();
                slot.space.notify_waiters();
                Offer::Slow { discarded }
            }
        }
    }
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue's invariants hold between statements; recover from a poisoned lock.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the messages that follow in the queue into `batch` (which holds the first), up to
    /// [`BATCH_MESSAGES`] and [`BATCH_BYTES`]; stops before a close item.
    fn take_batch(&self, batch: &mut Vec<PreparedMessage>) {
        let mut bytes: usize = batch.iter().map(|m| m.frame().len()).sum();
        let mut q = self.lock();
        while batch.len() < BATCH_MESSAGES {
            match q.items.front() {
                Some(Item::Message(m)) if bytes + m.frame().len() <= BATCH_BYTES => {
                    bytes += m.frame().len();
                }
                _ => break,
            }
            if let Some(Item::Message(m)) = q.pop() {
                batch.push(m);
            }
        }
        drop(q);
        self.space.notify_waiters();
    }

    /// The writer's next step: an item to send, or a stop.
    async fn next(&self) -> Next {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut q = self.lock();
                if matches!(q.stop, Some(Stop::Slow(_))) {
                    if let Some(Stop::Slow(frame)) = q.stop.take() {
                        return Next::Slow(frame);
                    }
                }
                let dropped = matches!(q.stop, Some(Stop::Dropped));
                if dropped && q.closing.is_none() {
                    return Next::Stop;
                }
                if let Some(item) = q.pop() {
                    drop(q);
                    self.space.notify_waiters();
                    return Next::Item(item);
                }
                if dropped {
                    return Next::Stop;
                }
            }
            notified.await;
        }
    }

    /// Resolves when the writer must abandon the message it is sending: the member was closed
    /// for slowness, dropped (when not closing), or its close deadline passed.
    async fn interrupted(&self) {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let deadline = {
                let q = self.lock();
                match (&q.stop, q.closing) {
                    (Some(Stop::Slow(_)), _) | (Some(Stop::Dropped), None) => return,
                    (_, deadline) => deadline,
                }
            };
            match deadline {
                Some(deadline) => tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep_until(deadline) => return,
                },
                None => notified.await,
            }
        }
    }

    fn finish(&self) {
        {
            let mut q = self.lock();
            q.open = false;
            q.discard();
        }
        self.finished.store(true, Ordering::Release);
        self.finished_notify.notify_waiters();
        self.space.notify_waiters();
    }

    fn stats(&self) -> MemberStats {
        let q = self.lock();
        MemberStats {
            queued: q.items.len(),
            queued_bytes: q.bytes,
            peak_queued_bytes: q.peak_bytes,
            delivered: q.delivered,
            dropped: q.dropped,
            sent: self.sent.load(Ordering::Relaxed),
        }
    }
}

enum Next {
    Item(Item),
    Slow(CloseFrame),
    Stop,
}

/// Where a fan-out goes.
enum Target<'a> {
    Topic(&'a str),
    All,
    One(MemberId),
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

impl Hub {
    /// An empty hub with `config`.
    pub fn new(config: HubConfig) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                next_id: AtomicU64::new(1),
                registry: Mutex::new(Registry::default()),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                closed_slow: AtomicU64::new(0),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a connection to the hub: spawns the writer task that owns `sender` and drains the
    /// member's queue into it, and returns the member's handle (subscribed to nothing yet).
    ///
    /// The member leaves the hub when the [`Member`] is dropped or [`close`](Member::close)d,
    /// when it is closed for slowness, or when a write to its connection fails (the peer closed
    /// or went away). Keep reading from the connection's [`WsReceiver`] meanwhile: that is what
    /// answers pings and completes the close handshake.
    ///
    /// Must be called inside a Tokio runtime (it spawns a task).
    pub fn join<S>(&self, sender: WsSender<S>) -> Member
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let id = MemberId(self.inner.next_id.fetch_add(1, Ordering::Relaxed));
        let slot = Arc::new(Slot {
            id,
            queue: Mutex::new(Queue {
                items: VecDeque::new(),
                bytes: 0,
                peak_bytes: 0,
                open: true,
                stop: None,
                closing: None,
                delivered: 0,
                dropped: 0,
            }),
            wake: Notify::new(),
            space: Notify::new(),
            finished: AtomicBool::new(false),
            finished_notify: Notify::new(),
            sent: AtomicU64::new(0),
        });
        self.registry().members.insert(
            id,
            Entry {
                slot: slot.clone(),
                topics: HashSet::new(),
            },
        );
        tokio::spawn(run_writer(sender, slot.clone(), self.clone()));
        Member {
            hub: self.clone(),
            slot,
        }
    }

    /// Splits `socket` and [`join`](Self::join)s its sending half; returns the member and the
    /// receiving half, which the caller keeps reading.
    ///
    /// Must be called inside a Tokio runtime (it spawns a task).
    pub fn join_socket<S>(&self, socket: WebSocket<S>) -> (Member, WsReceiver<S>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (tx, rx) = socket.split();
        (self.join(tx), rx)
    }

    /// Publishes a message to every subscriber of `topic`, encoding it once (pass a
    /// [`PreparedMessage`] to reuse one encoding across several publishes).
    ///
    /// Returns at once under every overflow policy but [`Overflow::Wait`], under which it waits
    /// until every subscriber's queue took the message (subscribers with room get it first).
    /// "Delivered" means queued: each member's writer sends it in order.
    ///
    /// Cancel-safe except under [`Overflow::Wait`]: there, if the future is dropped while
    /// waiting, the subscribers that had room got the message and the others did not.
    pub async fn publish(&self, topic: &str, message: impl Into<PreparedMessage>) -> Published {
        self.fan_out(Target::Topic(topic), None, &message.into())
            .await
    }

    /// Publishes a message to every member of the hub, subscribed or not. Otherwise the same as
    /// [`publish`](Self::publish), including its cancel safety.
    pub async fn broadcast(&self, message: impl Into<PreparedMessage>) -> Published {
        self.fan_out(Target::All, None, &message.into()).await
    }

    /// How many members subscribe to `topic` (0 if it does not exist).
    pub fn subscribers(&self, topic: &str) -> usize {
        self.registry().topics.get(topic).map_or(0, BTreeMap::len)
    }

    /// The topics that have subscribers, with their subscriber counts, sorted by name.
    pub fn topics(&self) -> Vec<TopicInfo> {
        let mut topics: Vec<TopicInfo> = self
            .registry()
            .topics
            .iter()
            .map(|(name, subscribers)| TopicInfo {
                name: name.to_string(),
                subscribers: subscribers.len(),
            })
            .collect();
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        topics
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        let (members, topics) = {
            let r = self.registry();
            (r.members.len(), r.topics.len())
        };
        HubStats {
            members,
            topics,
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            closed_slow: self.inner.closed_slow.load(Ordering::Relaxed),
        }
    }

    /// The counters of the member `id`, if it is still in the hub.
    pub fn member_stats(&self, id: MemberId) -> Option<MemberStats> {
        let slot = self.registry().members.get(&id)?.slot.clone();
        Some(slot.stats())
    }

    /// Offers `message` to the targets' queues: first everyone with room (or per the drop
    /// policies), then, under `Wait`, waits for each full queue in turn.
    async fn fan_out(
        &self,
        target: Target<'_>,
        exclude: Option<MemberId>,
        message: &PreparedMessage,
    ) -> Published {
        let config = &self.inner.config;
        let mut result = Published::default();
        let mut full = Vec::new();
        {
            let mut registry = self.registry();
            let mut slow = Vec::new();
            let mut offer = |slot: &Arc<Slot>| {
                if Some(slot.id) == exclude {
                    return;
                }
                match slot.lock().offer(message, config, slot) {
                    Offer::Delivered { evicted } => {
                        result.delivered += 1;
                        result.dropped += evicted;
                    }
                    Offer::Dropped => result.dropped += 1,
                    Offer::Full => full.push(slot.clone()),
                    Offer::Slow { discarded } => {
                        result.dropped += discarded;
                        result.closed += 1;
                        slow.push(slot.id);
                    }
                    Offer::Gone => {}
                }
            };
            match target {
                Target::Topic(topic) => {
                    if let Some(subscribers) = registry.topics.get(topic) {
                        subscribers.values().for_each(&mut offer);
                    }
                }
                Target::All => registry.members.values().for_each(|e| offer(&e.slot)),
                Target::One(id) => {
                    if let Some(entry) = registry.members.get(&id) {
                        offer(&entry.slot);
                    }
                }
            }
            for id in slow {
                registry.remove(id);
            }
        }
        let inner = &self.inner;
        inner.published.fetch_add(1, Ordering::Relaxed);
        inner
            .closed_slow
            .fetch_add(result.closed as u64, Ordering::Relaxed);
        inner
            .dropped
            .fetch_add(result.dropped as u64, Ordering::Relaxed);
        inner
            .delivered
            .fetch_add(result.delivered as u64, Ordering::Relaxed);
        for slot in full {
            loop {
                let notified = slot.space.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                match slot.lock().offer(message, config, &slot) {
                    Offer::Delivered { .. } => {
                        result.delivered += 1;
                        inner.delivered.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Offer::Full => {}
                    _ => break,
                }
                notified.await;
            }
        }
        result
    }
}

/// A connection's membership in a [`Hub`]: subscribe it to topics, publish from it, send to it.
///
/// Dropping the handle makes the member leave the hub and stops its writer (messages still
/// queued are discarded, unless [`close`](Self::close) was called: then the writer finishes
/// the queue and the close frame first, within [`HubConfig::close_timeout`]).
pub struct Member {
    hub: Hub,
    slot: Arc<Slot>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("id", &self.slot.id)
            .field("stats", &self.slot.stats())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// This member's id.
    pub fn id(&self) -> MemberId {
        self.slot.id
    }

    /// The hub this member belongs to.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Subscribes to `topic`, creating it if needed. Returns `false` if already subscribed, or
    /// if the member has left the hub.
    pub fn subscribe(&self, topic: &str) -> bool {
        let mut registry = self.hub.registry();
        let key: Arc<str> = match registry.topics.get_key_value(topic) {
            Some((key, _)) => key.clone(),
            None => Arc::from(topic),
        };
        let Some(entry) = registry.members.get_mut(&self.slot.id) else {
            return false;
        };
        if !entry.topics.insert(key.clone()) {
            return false;
        }
        registry
            .topics
            .entry(key)
            .or_default()
            .insert(self.slot.id, self.slot.clone());
        true
    }

    /// Unsubscribes from `topic` (removing the topic if it is left empty). Returns `false` if
    /// the member was not subscribed.
    pub fn unsubscribe(&self, topic: &str) -> bool {
        let mut registry = self.hub.registry();
        let Some(entry) = registry.members.get_mut(&self.slot.id) else {
            return false;
        };
        if !entry.topics.remove(topic) {
            return false;
        }
        registry.unsubscribe_from(topic, self.slot.id);
        true
    }

    /// The topics this member subscribes to, sorted.
    pub fn topics(&self) -> Vec<String> {
        let registry = self.hub.registry();
        let mut topics: Vec<String> = registry
            .members
            .get(&self.slot.id)
            .map(|e| e.topics.iter().map(|t| t.to_string()).collect())
            .unwrap_or_default();
        topics.sort();
        topics
    }

    /// Publishes to every subscriber of `topic` except this member (whether or not it is
    /// subscribed). Same contract as [`Hub::publish`], including its cancel safety.
    pub async fn publish(&self, topic: &str, message: impl Into<PreparedMessage>) -> Published {
        self.hub
            .fan_out(Target::Topic(topic), Some(self.slot.id), &message.into())
            .await
    }

    /// Queues a message for this member alone, in order with what is published to it, under
    /// the hub's overflow policy. Cancel-safe like [`Hub::publish`].
    pub async fn send(&self, message: impl Into<PreparedMessage>) -> Published {
        self.hub
            .fan_out(Target::One(self.slot.id), None, &message.into())
            .await
    }

    /// Leaves the hub and closes the connection: the writer sends what is already queued, then
    /// the close frame, within [`HubConfig::close_timeout`]. Keep reading the receiving half until
    /// it returns `None` to complete the close handshake. Later calls do nothing.
    ///
    /// Fails if the close frame is invalid (a code that may not be sent, a reason over 123
    /// bytes); then nothing changes.
    pub fn close(&self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        if let Some(f) = &frame {
            if !f.code.is_sendable() {
                return Err(SendError::InvalidCloseCode(f.code.0));
            }
            if f.reason.len() > 123 {
                return Err(SendError::ControlFrameTooLong(2 + f.reason.len()));
            }
        }
        self.hub.registry().remove(self.slot.id);
        {
            let mut q = self.slot.lock();
            if !q.open || q.stop.is_some() || q.closing.is_some() {
                return Ok(());
            }
            q.open = false;
            q.closing = Some(Instant::now() + self.hub.inner.config.close_timeout);
            q.items.push_back(Item::Close(frame));
        }
        self.slot.wake.notify_one();
        self.slot.space.notify_waiters();
        Ok(())
    }

    /// Whether the member no longer takes messages: it left the hub, is closing, or was closed.
    pub fn is_closed(&self) -> bool {
        !self.slot.lock().open
    }

    /// Waits until the member's writer task has ended (after leaving the hub for any reason),
    /// that is, until the hub has released the connection's sender half.
    ///
    /// Cancel-safe.
    pub async fn closed(&self) {
        loop {
            let notified = self.slot.finished_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.slot.finished.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    /// This member's counters and queue level.
    pub fn stats(&self) -> MemberStats {
        self.slot.stats()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.hub.registry().remove(self.slot.id);
        {
            let mut q = self.slot.lock();
            q.open = false;
            if q.stop.is_none() {
                q.stop = Some(Stop::Dropped);
            }
            if q.closing.is_none() {
                q.discard();
            }
        }
        self.slot.wake.notify_one();
        self.slot.space.notify_waiters();
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

/// The writer task of one member: drains its queue into the connection, writing the messages
/// that wait together in batches.
async fn run_writer<S>(mut tx: WsSender<S>, slot: Arc<Slot>, hub: Hub)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let close_timeout = hub.inner.config.close_timeout;
    let mut batch = Vec::new();
    loop {
        match slot.next().await {
            Next::Item(Item::Message(message)) => {
                batch.clear();
                batch.push(message);
                slot.take_batch(&mut batch);
                let sent = tokio::select! {
                    biased;
                    sent = write_batch(&mut tx, &batch) => Some(sent),
                    () = slot.interrupted() => None,
                };
                match sent {
                    Some(Ok(())) => {
                        slot.sent.fetch_add(batch.len() as u64, Ordering::Relaxed);
                    }
                    Some(Err(e)) => {
                        tracing::debug!(member = %slot.id, "hub member's connection failed: {e}");
                        break;
                    }
                    // Cancelled: `send_prepared` is cancel-safe, and the next step (a close
                    // frame, or releasing the sender) takes it from there.
                    None => {}
                }
            }
            Next::Item(Item::Close(frame)) => {
                let deadline = slot
                    .lock()
                    .closing
                    .unwrap_or_else(|| Instant::now() + close_timeout);
                let _ = tokio::time::timeout_at(deadline, tx.close(frame)).await;
                break;
            }
            Next::Slow(frame) => {
                tracing::debug!(member = %slot.id, "closing a slow hub member");
                let _ = tokio::time::timeout(close_timeout, tx.close(Some(frame))).await;
                break;
            }
            Next::Stop => break,
        }
    }
    hub.registry().remove(slot.id);
    drop(tx);
    slot.finish();
}
