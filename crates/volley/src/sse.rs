//! Server-sent events (feature `hyper`): an HTTP response body that is a [`hub`](crate::hub)
//! subscriber, so that a browser's `EventSource` receives the same topics as WebSocket
//! clients, with the same bounded queue and overflow policy.
//!
//! [`EventStreams`] makes the streams of one endpoint and holds what they share: how a hub
//! message becomes an event (the `encode` function, called once per message however many
//! streams receive it), the keep-alive interval, and a count of open streams.
//! [`EventStreams::join`] adds a stream to a hub and returns its [`Member`] (subscribe it to
//! topics, or [`resume`](Member::resume_with) them from a `Last-Event-ID`) and its
//! [`EventBody`]; answer the request with [`EventBody::into_response`].
//!
//! ```no_run
//! use volley::hub::Hub;
//! use volley::sse::{EncodedEvent, EventStreams, SseConfig, encode_event};
//!
//! let hub = Hub::default();
//! // Every hub message becomes one event whose data is the message's payload.
//! let streams = EventStreams::new(SseConfig::default(), |message| {
//!     let mut event = bytes::BytesMut::new();
//!     encode_event(&mut event, None, None, &message.payload());
//!     Some(EncodedEvent::new(None, event.freeze()))
//! });
//! let endpoint = volley::Endpoint::service(move |_request| {
//!     let (member, body) = streams.join(&hub);
//!     member.subscribe("news");
//!     async move { body.into_response() }
//! });
//! # let _ = endpoint;
//! ```
//!
//! A stream's queue is bounded by the hub's [`QueueLimits`]: a reader that falls behind gets
//! the hub's [`Overflow`] policy like any subscriber — under [`Overflow::Close`] its waiting
//! events are discarded and the response ends (an `EventSource` then reconnects with its
//! `Last-Event-ID`); under the drop policies, events are dropped (counted by the hub). The
//! stream leaves the hub when the body is dropped: hyper drops it when the client goes away,
//! which it notices when a write fails — the keep-alive comments make sure one is attempted
//! every interval.
//!
//! [`Overflow`]: crate::Overflow
//! [`Overflow::Close`]: crate::Overflow::Close

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use ::hyper::body::{Body, Frame, SizeHint};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use volley_proto::{CloseFrame, PreparedMessage};

use crate::config::QueueLimits;
use crate::core::{Offer, Outbox, Queued};
use crate::hub::{Hub, Member, Subscriber};

/// Most bytes of events one body frame gathers (at least one event).
const FRAME_BYTES: usize = 64 * 1024;

/// Slots of the shared encoding cache: concurrent publications to different topics rarely
/// share one.
const CACHE_SLOTS: usize = 8;

/// Configuration of [`EventStreams`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SseConfig {
    /// How often a stream with nothing else to send sends a comment line (`:` and a newline),
    /// so that proxies keep the response open and a client that went away is noticed. Default
    /// 15 s; `None` sends none.
    pub keep_alive: Option<Duration>,
    /// The reconnection delay streams ask clients for (`retry:` at the start of each stream).
    /// Default `None`: the client's own (3 s in browsers).
    pub retry: Option<Duration>,
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            keep_alive: Some(Duration::from_secs(15)),
            retry: None,
        }
    }
}

impl SseConfig {
    /// Sets [`SseConfig::keep_alive`].
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval.filter(|i| !i.is_zero());
        self
    }

    /// Sets [`SseConfig::retry`].
    pub fn retry(mut self, delay: Option<Duration>) -> Self {
        self.retry = delay;
        self
    }
}

/// Appends one event to `out` in the `text/event-stream` format: `event:` if `event` is given,
/// `id:` if `id` is given, then `data` as `data:` lines (split at its line breaks, which the
/// client joins back with `\n`), then the blank line that ends the event. Line breaks in
/// `event` and `id` are dropped, and so is an `id` holding a NUL (clients ignore those).
pub fn encode_event(out: &mut BytesMut, event: Option<&str>, id: Option<&str>, data: &[u8]) {
    fn field(out: &mut BytesMut, name: &[u8], value: &str) {
        out.put_slice(name);
        for part in value.split(['\r', '\n']) {
            out.put_slice(part.as_bytes());
        }
        out.put_u8(b'\n');
    }
    if let Some(event) = event {
        field(out, b"event: ", event);
    }
    if let Some(id) = id.filter(|id| !id.contains('\0')) {
        field(out, b"id: ", id);
    }
    out.reserve(data.len() + 8);
    let mut rest = data;
    loop {
        out.put_slice(b"data: ");
        match rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(i) => {
                out.put_slice(&rest[..i]);
                out.put_u8(b'\n');
                let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[i + skip..];
            }
            None => {
                out.put_slice(rest);
                out.put_u8(b'\n');
                break;
            }
        }
    }
    out.put_u8(b'\n');
}

/// An event ready to send, as the `encode` function of [`EventStreams`] makes it: its bytes in
/// the `text/event-stream` format (see [`encode_event`]) and the number it is ordered by, if
/// any (its id, such as a [`Hub::publish_numbered`] offset; see [`EventBody::sort_by_id`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEvent {
    id: Option<u64>,
    bytes: Bytes,
}

impl EncodedEvent {
    /// An event of `bytes`, ordered by `id`.
    pub fn new(id: Option<u64>, bytes: Bytes) -> Self {
        Self { id, bytes }
    }

    /// The number it is ordered by.
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Its bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

type EncodeFn = dyn Fn(&PreparedMessage) -> Option<EncodedEvent> + Send + Sync;

/// A message and its event, in the encoding cache.
type Cached = (PreparedMessage, Option<EncodedEvent>);

/// The server-sent event streams of one endpoint: what they share. Cheap to clone.
#[derive(Clone)]
pub struct EventStreams {
    shared: Arc<Shared>,
}

struct Shared {
    config: SseConfig,
    encode: Box<EncodeFn>,
    /// The last message each slot encoded, kept (so its allocation cannot be reused by another
    /// message while it is here) with its encoding.
    cache: [Mutex<Option<Cached>>; CACHE_SLOTS],
    sent_bytes: AtomicU64,
    open: AtomicUsize,
    opened: AtomicUsize,
    /// Every stream (dropped ones pruned as new ones come), for [`EventStreams::close_all`].
    all: Mutex<Vec<std::sync::Weak<Queue>>>,
    /// [`EventStreams::close_all`] was called: streams opened from now on end at once.
    closed: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for EventStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStreams")
            .field("config", &self.shared.config)
            .field("open", &self.open())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl EventStreams {
    /// Streams that turn each hub message into an event with `encode` (see [`encode_event`]),
    /// or skip it (`None`). `encode` runs on the publisher's thread, once per message for all
    /// the streams that receive it (the same [`PreparedMessage`] offered to many), and should
    /// be quick.
    pub fn new(
        config: SseConfig,
        encode: impl Fn(&PreparedMessage) -> Option<EncodedEvent> + Send + Sync + 'static,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                encode: Box::new(encode),
                cache: std::array::from_fn(|_| Mutex::new(None)),
                open: AtomicUsize::new(0),
                opened: AtomicUsize::new(0),
                sent_bytes: AtomicU64::new(0),
                all: Mutex::new(Vec::new()),
                closed: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SseConfig {
        &self.shared.config
    }

    /// Streams open now (bodies not dropped yet).
    pub fn open(&self) -> usize {
        self.shared.open.load(Ordering::Relaxed)
    }

    /// Streams opened since the start.
    pub fn opened(&self) -> usize {
        self.shared.opened.load(Ordering::Relaxed)
    }

    /// Bytes of events and comments handed to the streams' connections so far.
    pub fn sent_bytes(&self) -> u64 {
        self.shared.sent_bytes.load(Ordering::Relaxed)
    }

    /// Ends every stream after what is queued for it, and every stream opened from now on at
    /// once: for a server's shutdown (a response that never ends would hold its connection
    /// until the drain timeout).
    pub fn close_all(&self) {
        self.shared.closed.store(true, Ordering::Release);
        let all: Vec<_> = (lock(&self.shared.all).iter())
            .filter_map(|q| q.upgrade())
            .collect();
        for queue in all {
            let mut state = lock(&queue.state);
            state.closing = true;
            Queue::wake(state);
        }
    }

    /// A new stream, joined to `hub` and subscribed to nothing yet: subscribe the [`Member`]
    /// to topics (or resume them), then answer with the body. The body keeps a clone of the
    /// member: the stream leaves the hub when the body is dropped (and the caller's clones).
    pub fn join(&self, hub: &Hub) -> (Member, EventBody) {
        let queue = Arc::new(Queue {
            streams: self.shared.clone(),
            state: Mutex::new(State::default()),
        });
        let mut first = BytesMut::new();
        if let Some(retry) = self.shared.config.retry {
            first.put_slice(format!("retry: {}\n\n", retry.as_millis()).as_bytes());
        } else {
            // Something to send at once: the client learns that the stream is open.
            first.put_slice(b":\n\n");
        }
        {
            let mut state = lock(&queue.state);
            state.queue.push(Chunk {
                id: None,
                bytes: first.freeze(),
            });
            let mut all = lock(&self.shared.all);
            if all.len() >= 64 && all.len() >= 2 * self.open() {
                all.retain(|q| q.strong_count() > 0);
            }
            all.push(Arc::downgrade(&queue));
            // Registered first, then checked: `close_all` cannot miss it.
            state.closing = self.shared.closed.load(Ordering::Acquire);
        }
        let member = hub.join(StreamHandle(queue.clone()));
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        self.shared.opened.fetch_add(1, Ordering::Relaxed);
        let keep_alive = self.shared.config.keep_alive.map(|every| KeepAlive {
            every,
            sleep: Box::pin(tokio::time::sleep(every)),
            sent: false,
        });
        let body = EventBody {
            queue,
            member: Some(member.clone()),
            keep_alive,
        };
        (member, body)
    }
}

impl Shared {
    /// The event of `message`, encoded once for every stream.
    fn encode(&self, message: &PreparedMessage) -> Option<EncodedEvent> {
        let key = message.frame().as_ptr() as usize;
        let slot = &self.cache[(key >> 4) % CACHE_SLOTS];
        let mut cached = lock(slot);
        if let Some((m, encoded)) = cached.as_ref()
            && m.frame().as_ptr() == message.frame().as_ptr()
            && m.frame().len() == message.frame().len()
        {
            return encoded.clone();
        }
        let encoded = (self.encode)(message);
        *cached = Some((message.clone(), encoded.clone()));
        encoded
    }
}

/// An encoded event waiting in a stream's queue.
struct Chunk {
    id: Option<u64>,
    bytes: Bytes,
}

impl Queued for Chunk {
    fn wire_len(&self) -> usize {
        self.bytes.len()
    }
}

struct Queue {
    streams: Arc<Shared>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    queue: Outbox<Chunk>,
    waker: Option<Waker>,
    /// End the response once the queue is sent (closed by the hub or the application).
    closing: bool,
    /// The body was dropped: the client is gone.
    gone: bool,
}

impl Queue {
    fn wake(mut state: MutexGuard<'_, State>) {
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The hub's side of a stream.
struct StreamHandle(Arc<Queue>);

impl Subscriber for StreamHandle {
    fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
        if !self.is_open() {
            return Offer::Gone;
        }
        let Some(event) = self.0.streams.encode(message) else {
            // Not for event streams: as if sent.
            return Offer::Queued { evicted: 0 };
        };
        let mut state = lock(&self.0.state);
        if state.closing || state.gone {
            return Offer::Gone;
        }
        let chunk = Chunk {
            id: event.id,
            bytes: event.bytes,
        };
        let offer = state.queue.offer(chunk, 0, limits);
        if let Offer::Closed { .. } = offer {
            // Slow: what waits is discarded (the queue did it); the response ends.
            state.closing = true;
        }
        Queue::wake(state);
        offer
    }

    fn close(&self, _frame: Option<CloseFrame>) {
        let mut state = lock(&self.0.state);
        state.closing = true;
        Queue::wake(state);
    }

    fn buffered_amount(&self) -> usize {
        lock(&self.0.state).queue.bytes()
    }

    fn is_open(&self) -> bool {
        let state = lock(&self.0.state);
        !state.closing && !state.gone
    }
}

struct KeepAlive {
    every: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Something was sent since the last tick.
    sent: bool,
}

/// The body of a `text/event-stream` response: the events queued for one stream, as they
/// come, and keep-alive comments. Ends when the stream is closed (by
/// [`Member::close`], or for slowness) once what was queued before is sent; never fails.
/// Dropping it takes the stream out of the hub.
pub struct EventBody {
    queue: Arc<Queue>,
    /// Keeps the stream in the hub while the response is being sent.
    member: Option<Member>,
    keep_alive: Option<KeepAlive>,
}

impl std::fmt::Debug for EventBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBody")
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl EventBody {
    /// Sorts the events queued and not sent yet by id (those without one first, each group in
    /// its order). Call it after resuming several topics for a new stream: each topic's replay
    /// comes whole, one topic after the other, and a client that reconnects with the last id
    /// it saw (`Last-Event-ID`) must have seen every smaller one.
    pub fn sort_by_id(&self) {
        let mut state = lock(&self.queue.state);
        let mut chunks: Vec<Chunk> = std::iter::from_fn(|| state.queue.pop()).collect();
        chunks.sort_by_key(|chunk| chunk.id);
        for chunk in chunks {
            state.queue.push(chunk);
        }
    }

    /// The `200 OK` response with this body and the headers of an event stream:
    /// `Content-Type: text/event-stream`, `Cache-Control: no-store`, and
    /// `X-Accel-Buffering: no` (proxies such as nginx then pass events on at once).
    pub fn into_response(self) -> Response<Self> {
        let mut response = Response::new(self);
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream; charset=utf-8"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(
            http::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        );
        response
    }
}

impl Drop for EventBody {
    fn drop(&mut self) {
        lock(&self.queue.state).gone = true;
        self.queue.streams.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Body for EventBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        {
            let mut state = lock(&this.queue.state);
            if let Some(Chunk { bytes: first, .. }) = state.queue.pop() {
                let data = match state.queue.pop() {
                    None => first,
                    Some(Chunk { bytes: second, .. }) => {
                        // Several events waiting: one frame (one write) for as many as fit.
                        let mut frame = BytesMut::with_capacity(first.len() + second.len());
                        frame.put_slice(&first);
                        frame.put_slice(&second);
                        while frame.len() < FRAME_BYTES {
                            let Some(Chunk { bytes: next, .. }) = state.queue.pop() else {
                                break;
                            };
                            frame.put_slice(&next);
                        }
                        frame.freeze()
                    }
                };
                if let Some(keep_alive) = &mut this.keep_alive {
                    keep_alive.sent = true;
                }
                let sent = &this.queue.streams.sent_bytes;
                sent.fetch_add(data.len() as u64, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(data))));
            }
            if state.closing {
                drop(state);
                // Out of the hub now, not when hyper gets round to dropping the body.
                this.member = None;
                return Poll::Ready(None);
            }
            state.waker = Some(cx.waker().clone());
        }
        let Some(keep_alive) = &mut this.keep_alive else {
            return Poll::Pending;
        };
        // Bounded: each turn either returns or re-arms the timer one interval later.
        for _ in 0..2 {
            if keep_alive.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let next = tokio::time::Instant::now() + keep_alive.every;
            keep_alive.sleep.as_mut().reset(next);
            if !std::mem::take(&mut keep_alive.sent) {
                let sent = &this.queue.streams.sent_bytes;
                sent.fetch_add(3, Ordering::Relaxed);
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b":\n\n")))));
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        false
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    fn event(event: Option<&str>, id: Option<&str>, data: &str) -> String {
        let mut out = BytesMut::new();
        encode_event(&mut out, event, id, data.as_bytes());
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn events_are_encoded_line_by_line() {
        assert_eq!(event(None, None, "x"), "data: x\n\n");
        assert_eq!(
            event(Some("gap"), Some("7"), "{\"a\":\n1}"),
            "event: gap\nid: 7\ndata: {\"a\":\ndata: 1}\n\n"
        );
        assert_eq!(
            event(None, None, "a\r\nb\rc\n"),
            "data: a\ndata: b\ndata: c\ndata: \n\n"
        );
        assert_eq!(
            event(Some("a\nb"), Some("1\r2"), ""),
            "event: ab\nid: 12\ndata: \n\n"
        );
        assert_eq!(event(None, Some("a\0b"), "x"), "data: x\n\n");
    }

    fn payload_streams(keep_alive: Option<Duration>) -> EventStreams {
        EventStreams::new(SseConfig::default().keep_alive(keep_alive), |m| {
            let mut out = BytesMut::new();
            encode_event(&mut out, None, None, &m.payload());
            let id = std::str::from_utf8(&m.payload()).ok()?.parse().ok();
            Some(EncodedEvent::new(id, out.freeze()))
        })
    }

    async fn next(body: &mut EventBody) -> Option<String> {
        let frame = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await?;
        let data = frame.ok()?.into_data().ok()?;
        Some(String::from_utf8(data.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_stream_receives_its_topics_and_leaves_the_hub_when_dropped() {
        let hub = Hub::default();
        let streams = payload_streams(None);
        let (member, mut body) = streams.join(&hub);
        member.subscribe("t");
        drop(member);
        assert_eq!(next(&mut body).await.as_deref(), Some(":\n\n"));
        hub.publish("t", "one");
        hub.publish("other", "no");
        hub.publish("t", "two");
        assert_eq!(
            next(&mut body).await.as_deref(),
            Some("data: one\n\ndata: two\n\n")
        );
        assert_eq!(streams.open(), 1);
        assert_eq!(hub.subscribers("t"), 1);
        drop(body);
        assert_eq!(streams.open(), 0);
        assert_eq!(hub.subscribers("t"), 0);
        assert_eq!(hub.stats().members, 0);
    }

    #[tokio::test]
    async fn queued_events_can_be_sorted_by_id() {
        let hub = Hub::default();
        let streams = payload_streams(None);
        let (member, mut body) = streams.join(&hub);
        member.subscribe("t");
        for m in ["3", "1", "x", "2"] {
            hub.publish("t", m);
        }
        body.sort_by_id();
        assert_eq!(
            next(&mut body).await.as_deref(),
            Some(":\n\ndata: x\n\ndata: 1\n\ndata: 2\n\ndata: 3\n\n")
        );
        assert_eq!(streams.sent_bytes(), 3 + 4 * 9);
    }

    #[tokio::test]
    async fn close_all_ends_every_stream_and_the_next_ones() {
        let hub = Hub::default();
        let streams = payload_streams(None);
        let mut bodies: Vec<_> = (0..100).map(|_| streams.join(&hub).1).collect();
        bodies.truncate(3);
        hub.broadcast("last");
        streams.close_all();
        for body in &mut bodies {
            assert_eq!(next(body).await.as_deref(), Some(":\n\ndata: last\n\n"));
            assert_eq!(next(body).await, None);
        }
        let (_, mut late) = streams.join(&hub);
        assert_eq!(next(&mut late).await.as_deref(), Some(":\n\n"));
        assert_eq!(next(&mut late).await, None);
        assert!(lock(&streams.shared.all).len() <= 100);
    }

    #[tokio::test]
    async fn a_slow_stream_is_ended_under_the_close_policy() {
        let limits = QueueLimits::default().max_messages(2);
        let hub = Hub::new(crate::hub::HubConfig::default().queue(limits));
        let streams = payload_streams(None);
        let (member, mut body) = streams.join(&hub);
        member.subscribe("t");
        for _ in 0..3 {
            hub.publish("t", "m");
        }
        assert!(member.is_closed());
        assert_eq!(hub.stats().closed_slow, 1);
        assert_eq!(next(&mut body).await, None, "ended, what waited discarded");
    }

    #[tokio::test]
    async fn a_message_offered_to_many_streams_is_encoded_once() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let streams = EventStreams::new(SseConfig::default(), move |m| {
            counted.fetch_add(1, Ordering::SeqCst);
            Some(EncodedEvent::new(None, m.payload()))
        });
        let hub = Hub::default();
        let bodies: Vec<_> = (0..10)
            .map(|_| {
                let (member, body) = streams.join(&hub);
                member.subscribe("t");
                body
            })
            .collect();
        assert_eq!(hub.publish("t", "x").delivered, 10);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        drop(bodies);
    }

    #[tokio::test]
    async fn idle_streams_send_keep_alive_comments() {
        let hub = Hub::default();
        let streams = payload_streams(Some(Duration::from_millis(50)));
        let (member, mut body) = streams.join(&hub);
        member.subscribe("t");
        assert_eq!(next(&mut body).await.as_deref(), Some(":\n\n"));
        let start = tokio::time::Instant::now();
        assert_eq!(next(&mut body).await.as_deref(), Some(":\n\n"));
        assert!(start.elapsed() >= Duration::from_millis(50));
        // Closed by the application: ends after what is queued.
        hub.publish("t", "last");
        member.close(None);
        assert_eq!(next(&mut body).await.as_deref(), Some("data: last\n\n"));
        assert_eq!(next(&mut body).await, None);
    }
}
