//! Sessions: [`Session`] (the receiving end, owned by one task), [`SessionSender`] (the
//! cloneable sending handle) and their shared state.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, mpsc};
use volley::callback::ConnHandle;

use crate::packet::{Data, Packet, SharedData};

/// Why a session closed (Node engine.io's close reasons).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The transport's connection closed (WebSocket closed or dropped).
    TransportClose,
    /// The transport failed: overlapping polling requests, a payload over `max_payload`, a
    /// WebSocket error, an outgoing queue over its bound.
    TransportError,
    /// The client did not answer a ping within `ping_timeout`.
    PingTimeout,
    /// The client sent a close packet.
    ClientClose,
    /// The server closed the session ([`SessionSender::close`], [`Engine::close_all`](crate::Engine::close_all)).
    ServerClose,
    /// The client sent a packet that could not be decoded.
    ParseError,
}

impl CloseReason {
    /// Node engine.io's name for the reason: `"transport close"`, `"transport error"`,
    /// `"ping timeout"`, `"forced close"`, `"forced server close"`, `"parse error"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::TransportClose => "transport close",
            Self::TransportError => "transport error",
            Self::PingTimeout => "ping timeout",
            Self::ClientClose => "forced close",
            Self::ServerClose => "forced server close",
            Self::ParseError => "parse error",
        }
    }
}

impl CloseReason {
    /// A non-zero code for the reason (0 stands for "open").
    fn code(self) -> u8 {
        match self {
            Self::TransportClose => 1,
            Self::TransportError => 2,
            Self::PingTimeout => 3,
            Self::ClientClose => 4,
            Self::ServerClose => 5,
            Self::ParseError => 6,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => Self::TransportClose,
            2 => Self::TransportError,
            3 => Self::PingTimeout,
            4 => Self::ClientClose,
            5 => Self::ServerClose,
            6 => Self::ParseError,
            _ => return None,
        })
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session's transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TransportKind {
    /// HTTP long-polling.
    Polling,
    /// WebSocket.
    WebSocket,
}

impl TransportKind {
    /// The transport's name in the query string: `polling` or `websocket`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Polling => "polling",
            Self::WebSocket => "websocket",
        }
    }
}

/// The handshake request of a session.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RequestInfo {
    /// The request URI (path and query).
    pub uri: http::Uri,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The peer's address, when the server put a [`SocketAddr`] into the request's extensions
    /// (as axum's `ConnectInfo` layer or a custom hyper service can).
    pub remote_addr: Option<SocketAddr>,
}

impl RequestInfo {
    /// Builds the information from parts.
    pub fn new(uri: http::Uri, headers: http::HeaderMap, remote_addr: Option<SocketAddr>) -> Self {
        Self {
            uri,
            headers,
            remote_addr,
        }
    }

    /// The first value of query parameter `name`, percent-decoded (`+` as space).
    pub fn query(&self, name: &str) -> Option<String> {
        query_param(self.uri.query().unwrap_or(""), name)
    }
}

/// The first value of `name` in a query string, percent-decoded.
pub(crate) fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            // Two hex digits: at most 255.
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(if b == b'+' { b' ' } else { b });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Why [`SessionSender::send_all`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// The session is closed.
    Closed,
    /// The outgoing queue was over its bound; the session is now closed (transport error).
    Full,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("the Engine.IO session is closed"),
            Self::Full => f.write_str(
                "the Engine.IO session's outgoing queue is full; the session was closed",
            ),
        }
    }
}

impl std::error::Error for SendError {}

/// The application of an engine built with [`Engine::with_handler`](crate::Engine::with_handler):
/// told of every new session, which it answers with that session's [`SessionEvents`].
///
/// Sessions of such an engine need no task of the application's: their messages are handed
/// to the [`SessionEvents`] as they arrive, and those on the WebSocket transport run on
/// volley's callback drivers (no task per session at all; the heartbeat runs in the drivers'
/// timer queue).
pub trait Handler: Send + Sync + 'static {
    /// A session opened (its open packet is queued). Returns what handles its messages.
    fn on_open(&self, sender: SessionSender, request: RequestInfo) -> Box<dyn SessionEvents>;
}

/// The events of one session of an engine built with
/// [`Engine::with_handler`](crate::Engine::with_handler).
///
/// The methods run where the message arrived: on a callback driver (WebSocket), or in the task
/// of a long-polling POST or of an upgraded WebSocket. They must not block; they are never
/// called concurrently for one session, and in the order the messages arrived.
pub trait SessionEvents: Send + 'static {
    /// A message from the client.
    fn on_message(&mut self, data: Data);

    /// The session closed, called once, after the last [`on_message`](Self::on_message).
    fn on_close(&mut self, reason: CloseReason);
}

/// Where a handler session's [`SessionEvents`] are: idle in the slot, or taken out by the
/// transport delivering a message (which then also delivers what arrived meanwhile).
#[derive(Default)]
pub(crate) struct EventsSlot {
    events: Option<Box<dyn SessionEvents>>,
    /// A delivery is under way: messages wait in `backlog`, a close in `closed`.
    busy: bool,
    backlog: VecDeque<Data>,
    closed: Option<CloseReason>,
}

impl fmt::Debug for EventsSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventsSlot")
            .field("busy", &self.busy)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

/// A message for a callback WebSocket: its own, or a frame shared by many sessions.
#[derive(Debug)]
pub(crate) enum WsOut {
    Message(volley::Message),
    Prepared(volley::PreparedMessage),
}

impl WsOut {
    fn send(self, handle: &ConnHandle) -> volley::Result<()> {
        match self {
            WsOut::Message(m) => handle.send(m),
            WsOut::Prepared(p) => handle.send_prepared(&p),
        }
    }
}

/// A handler session's WebSocket on volley's callback drivers, and what its writes wait for.
#[derive(Debug)]
pub(crate) struct ConnTransport {
    pub(crate) handle: ConnHandle,
}

/// The mutable state of a session.
#[derive(Debug)]
pub(crate) struct Inner {
    /// Packets waiting for the transport (a polling GET or the WebSocket writer).
    pub(crate) queue: VecDeque<Packet>,
    /// Where a write must end: counts of packets from the front of `queue`, ascending (see
    /// [`SessionSender::send_all_and_flush`]).
    pub(crate) write_ends: VecDeque<usize>,
    /// Set once closed.
    pub(crate) reason: Option<CloseReason>,
    pub(crate) transport: TransportKind,
    /// A WebSocket is probing/upgrading this polling session.
    pub(crate) upgrading: bool,
    /// The upgrading WebSocket was probed: polling GETs are ended with a noop.
    pub(crate) probed: bool,
    /// A polling GET is in flight.
    pub(crate) get_active: bool,
    /// A polling POST is in flight.
    pub(crate) post_active: bool,
    /// The close packet still has to reach the client before the session leaves the table.
    pub(crate) close_undelivered: bool,
    /// The sending end of the incoming messages; dropped on close.
    pub(crate) incoming: Option<mpsc::Sender<Data>>,
    /// When the first packet other than a pong arrived since the last ping (Node extends the
    /// ping timeout once from then).
    pub(crate) packet_since_ping: Option<tokio::time::Instant>,
    /// On a callback WebSocket: messages held back for a moment after a write that must end
    /// ([`SessionSender::send_all_and_flush`]), so that the peer reads that write on its own.
    pub(crate) held: Option<VecDeque<WsOut>>,
}

impl Inner {
    /// Takes the packets of the next write: up to the first write end, or the whole queue; true
    /// if the write ends at a write end.
    pub(crate) fn take_write(&mut self) -> (Vec<Packet>, bool) {
        let end = self.write_ends.pop_front();
        let n = end.map_or(self.queue.len(), |end| end.min(self.queue.len()));
        for end in &mut self.write_ends {
            *end -= n.min(*end);
        }
        while self.write_ends.front() == Some(&0) {
            self.write_ends.pop_front();
        }
        (self.queue.drain(..n).collect(), end.is_some())
    }

    /// Empties the queue.
    fn clear_queue(&mut self) {
        self.queue.clear();
        self.write_ends.clear();
    }

    /// Whether a polling request for this session must be answered as for an unknown sid: it is
    /// closed and no close packet waits for it (Node forgets such a session at once).
    pub(crate) fn is_gone(&self) -> bool {
        self.reason.is_some() && !self.close_undelivered
    }
}

/// The state shared by a session, its senders, its transports and the engine.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) id: String,
    max_buffered: usize,
    inner: Mutex<Inner>,
    /// A handler session's events (`None` for a session with a [`Session`] receiver).
    events: Option<Mutex<EventsSlot>>,
    /// A handler session's WebSocket on the callback drivers.
    pub(crate) conn: Option<ConnTransport>,
    /// Wakes whoever drains the queue (the pending GET or the WebSocket writer).
    pub(crate) out_notify: Notify,
    /// A pong arrived for the last ping.
    pub(crate) pong_notify: Notify,
    /// A ping is waiting for its pong.
    awaiting_pong: AtomicBool,
    /// The close packet was delivered to the client.
    pub(crate) delivered: Notify,
    /// Why the session closed (`CloseReason::code`, 0 while open), readable without the lock.
    closed_code: AtomicU8,
    /// Wakes whoever waits for the close.
    closed_notify: Notify,
}

impl Shared {
    pub(crate) fn new(
        id: String,
        transport: TransportKind,
        max_buffered: usize,
        incoming: mpsc::Sender<Data>,
    ) -> Arc<Self> {
        Self::build(id, transport, max_buffered, Some(incoming), false, None)
    }

    /// A session whose messages go to [`SessionEvents`] (set with [`set_events`](Self::set_events)),
    /// on `conn` (a callback WebSocket) or on the transport named.
    pub(crate) fn with_events(
        id: String,
        transport: TransportKind,
        max_buffered: usize,
        conn: Option<ConnHandle>,
    ) -> Arc<Self> {
        Self::build(id, transport, max_buffered, None, true, conn)
    }

    fn build(
        id: String,
        transport: TransportKind,
        max_buffered: usize,
        incoming: Option<mpsc::Sender<Data>>,
        events: bool,
        conn: Option<ConnHandle>,
    ) -> Arc<Self> {
        Arc::new(Self {
            id,
            max_buffered,
            events: events.then(Mutex::default),
            conn: conn.map(|handle| ConnTransport { handle }),
            inner: Mutex::new(Inner {
                queue: VecDeque::new(),
                write_ends: VecDeque::new(),
                reason: None,
                transport,
                upgrading: false,
                probed: false,
                get_active: false,
                post_active: false,
                close_undelivered: false,
                incoming,
                packet_since_ping: None,
                held: None,
            }),
            out_notify: Notify::new(),
            pong_notify: Notify::new(),
            awaiting_pong: AtomicBool::new(false),
            delivered: Notify::new(),
            closed_code: AtomicU8::new(0),
            closed_notify: Notify::new(),
        })
    }

    /// Locks the state (a poisoned lock is still usable: the state stays consistent).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes the queue's consumer, whether it is waiting now or about to.
    pub(crate) fn wake(&self) {
        self.out_notify.notify_waiters();
        self.out_notify.notify_one();
    }

    pub(crate) fn reason(&self) -> Option<CloseReason> {
        CloseReason::from_code(self.closed_code.load(Ordering::Acquire))
    }

    /// Queues a control packet (heartbeat, noop) regardless of the bound; false if closed.
    pub(crate) fn push_control(&self, packet: Packet) -> bool {
        {
            let mut inner = self.lock();
            if inner.reason.is_some() {
                return false;
            }
            inner.queue.push_back(packet);
        }
        self.wake();
        true
    }

    /// Queues messages atomically within the bound. With `flush`, the write that takes them ends
    /// after them when the transport can write now (a WebSocket, or a GET waiting).
    pub(crate) fn push_messages(
        self: &Arc<Self>,
        data: impl IntoIterator<Item = Data>,
        flush: bool,
    ) -> Result<(), SendError> {
        if self.conn.is_some() {
            let messages = data.into_iter().map(|d| WsOut::Message(message_of(&d)));
            return self.push_conn(messages, flush);
        }
        let over = {
            let mut inner = self.lock();
            if inner.reason.is_some() {
                return Err(SendError::Closed);
            }
            let before = inner.queue.len();
            let mut over = false;
            for d in data {
                if inner.queue.len() >= self.max_buffered {
                    over = true;
                    break;
                }
                inner.queue.push_back(Packet::Message(d));
            }
            if over {
                inner.queue.truncate(before);
            } else if flush && (inner.transport == TransportKind::WebSocket || inner.get_active) {
                let end = inner.queue.len();
                inner.write_ends.push_back(end);
            }
            over
        };
        if over {
            self.close(CloseReason::TransportError);
            return Err(SendError::Full);
        }
        self.wake();
        Ok(())
    }

    /// Queues shared messages: on a callback WebSocket their frame is encoded once for every
    /// session; elsewhere as [`push_messages`](Self::push_messages).
    pub(crate) fn push_shared(self: &Arc<Self>, data: &[SharedData]) -> Result<(), SendError> {
        if self.conn.is_some() {
            let frames = data.iter().map(|d| WsOut::Prepared(d.ws_frame().clone()));
            return self.push_conn(frames, false);
        }
        self.push_messages(data.iter().map(|d| d.data().clone()), false)
    }

    /// Sends messages on the callback WebSocket, all of them or none (under the state's lock,
    /// so that no other sender's come between them), or holds them while a write that must end
    /// is given time to be read alone.
    fn push_conn(
        self: &Arc<Self>,
        messages: impl Iterator<Item = WsOut>,
        flush: bool,
    ) -> Result<(), SendError> {
        let Some(conn) = &self.conn else {
            return Err(SendError::Closed);
        };
        let full = {
            let mut inner = self.lock();
            if inner.reason.is_some() {
                return Err(SendError::Closed);
            }
            let mut full = false;
            if let Some(held) = inner.held.as_mut() {
                for m in messages {
                    if held.len() >= self.max_buffered {
                        full = true;
                        break;
                    }
                    held.push_back(m);
                }
            } else {
                for m in messages {
                    match m.send(&conn.handle) {
                        Ok(()) => {}
                        Err(volley::Error::QueueFull { .. }) => {
                            full = true;
                            break;
                        }
                        Err(_) => return Err(SendError::Closed),
                    }
                }
                if flush && !full {
                    // What follows waits a moment (see WRITE_END_PAUSE in the engine).
                    inner.held = Some(VecDeque::new());
                    let shared = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(crate::engine::WRITE_END_PAUSE).await;
                        shared.release_held();
                    });
                }
            }
            full
        };
        if full {
            self.close(CloseReason::TransportError);
            return Err(SendError::Full);
        }
        Ok(())
    }

    /// Sends the messages held since a write that had to end (see `push_conn`).
    pub(crate) fn release_held(&self) {
        let Some(conn) = &self.conn else { return };
        let mut inner = self.lock();
        let Some(held) = inner.held.take() else {
            return;
        };
        if inner.reason.is_some() {
            return;
        }
        for m in held {
            if m.send(&conn.handle).is_err() {
                break;
            }
        }
    }

    /// Whether a message queued now would go out with the transport's next write rather than
    /// wait: the session is open, not holding messages back, and its WebSocket (on the
    /// callback drivers) has nothing waiting to be written. Long-polling sessions and
    /// WebSockets run by a task: when the queue is empty.
    pub(crate) fn writable(&self) -> bool {
        let inner = self.lock();
        if inner.reason.is_some() {
            return false;
        }
        match &self.conn {
            Some(conn) => inner.held.is_none() && conn.handle.buffered_amount() == 0,
            None => inner.queue.is_empty(),
        }
    }

    /// Closes the session (once): queues the close packet for the client (the WebSocket writer
    /// skips it and closes the WebSocket instead), drops the incoming channel and tells everyone
    /// waiting.
    pub(crate) fn close(&self, reason: CloseReason) {
        let held = {
            let mut inner = self.lock();
            if inner.reason.is_some() {
                return;
            }
            inner.reason = Some(reason);
            inner.incoming = None;
            // A server close still delivers what a callback WebSocket held back.
            let held = inner
                .held
                .take()
                .filter(|_| reason == CloseReason::ServerClose);
            match reason {
                // The client is gone or closed itself: nothing more to tell it.
                CloseReason::TransportClose | CloseReason::ClientClose => inner.clear_queue(),
                _ => {
                    if reason != CloseReason::ServerClose {
                        // Errors drop what was pending; a server close flushes it first.
                        inner.clear_queue();
                    } else if inner.transport == TransportKind::Polling
                        && !(inner.get_active && inner.queue.is_empty())
                    {
                        // As Node's polling transport: unless a GET waits with nothing queued
                        // (it gets the close packet alone), what is queued goes in one answer
                        // and the close packet follows a noop in a later one.
                        if !inner.queue.is_empty() {
                            let end = inner.queue.len();
                            inner.write_ends.push_back(end);
                        }
                        inner.queue.push_back(Packet::Noop);
                    }
                    inner.queue.push_back(Packet::Close);
                    inner.close_undelivered = reason == CloseReason::ServerClose;
                }
            }
            held
        };
        self.closed_code.store(reason.code(), Ordering::Release);
        self.closed_notify.notify_waiters();
        self.wake();
        if let Some(conn) = &self.conn {
            for m in held.into_iter().flatten() {
                if m.send(&conn.handle).is_err() {
                    break;
                }
            }
            if !matches!(
                reason,
                CloseReason::TransportClose | CloseReason::ClientClose
            ) {
                // As Node's engine: over WebSocket no close packet, a close frame without a
                // status code (behind what is queued).
                conn.handle.close(None);
            }
        }
        self.events_closed(reason);
    }

    /// Hands the application's events their close, now or when the delivery under way ends.
    fn events_closed(&self, reason: CloseReason) {
        let Some(slot) = &self.events else { return };
        let events = {
            let mut slot = lock(slot);
            slot.backlog.clear();
            if slot.busy {
                slot.closed = Some(reason);
                None
            } else {
                slot.events.take()
            }
        };
        if let Some(mut events) = events {
            events.on_close(reason);
        }
    }

    /// Gives a handler session its events.
    pub(crate) fn set_events(&self, events: Box<dyn SessionEvents>) {
        let Some(slot) = &self.events else { return };
        let closed = {
            let mut guard = lock(slot);
            match self.reason() {
                Some(reason) => Some((reason, events)),
                None => {
                    guard.events = Some(events);
                    None
                }
            }
        };
        if let Some((reason, mut events)) = closed {
            events.on_close(reason);
        }
    }

    /// Hands a message to a handler session's events (with what arrives meanwhile, in order);
    /// false if the session is closed.
    pub(crate) fn deliver_now(&self, data: Data) -> bool {
        let Some(slot) = &self.events else {
            return false;
        };
        let mut events = {
            let mut guard = lock(slot);
            if self.reason().is_some() {
                return false;
            }
            if guard.busy {
                guard.backlog.push_back(data);
                return true;
            }
            let Some(events) = guard.events.take() else {
                return false;
            };
            guard.busy = true;
            events
        };
        let mut next = Some(data);
        loop {
            if let Some(data) = next.take() {
                let call = std::panic::AssertUnwindSafe(|| events.on_message(data));
                if std::panic::catch_unwind(call).is_err() {
                    tracing::error!(sid = %self.id, "an Engine.IO message handler panicked");
                }
            }
            let mut guard = lock(slot);
            if let Some(reason) = guard.closed.take() {
                guard.busy = false;
                drop(guard);
                events.on_close(reason);
                return false;
            }
            match guard.backlog.pop_front() {
                Some(data) => next = Some(data),
                None => {
                    guard.busy = false;
                    guard.events = Some(events);
                    return self.reason().is_none();
                }
            }
        }
    }

    /// Marks a ping as sent: the next pong answers it.
    pub(crate) fn expect_pong(&self) {
        self.lock().packet_since_ping = None;
        self.awaiting_pong.store(true, Ordering::Release);
    }

    /// Notes a packet from the client other than a pong: while a pong is awaited, the first one
    /// extends the ping timeout (once, from its arrival), as in Node's engine.
    pub(crate) fn note_packet(&self) {
        if self.awaiting_pong.load(Ordering::Acquire) {
            let mut inner = self.lock();
            if inner.packet_since_ping.is_none() {
                inner.packet_since_ping = Some(tokio::time::Instant::now());
            }
        }
    }

    /// Resolves once the session is closed.
    pub(crate) async fn closed(&self) {
        loop {
            let notified = self.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.reason().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// The incoming channel's sender, if the session is open.
    pub(crate) fn incoming(&self) -> Option<mpsc::Sender<Data>> {
        self.lock().incoming.clone()
    }

    /// Hands a received message to the session; false if the session closed meanwhile.
    /// Waits while the application's buffer is full (backpressure).
    pub(crate) async fn deliver(&self, data: Data) -> bool {
        if self.events.is_some() {
            return self.deliver_now(data);
        }
        let Some(tx) = self.incoming() else {
            return false;
        };
        tokio::select! {
            sent = tx.send(data) => sent.is_ok(),
            () = self.closed() => false,
        }
    }

    /// Handles a packet received from the client on either transport (not the upgrade
    /// packets; over WebSocket not the close packet, which Node ignores there). Returns false
    /// when the session closed.
    pub(crate) async fn on_packet(&self, packet: Packet) -> bool {
        if !matches!(packet, Packet::Pong(_)) {
            self.note_packet();
        }
        match packet {
            Packet::Message(data) => return self.deliver(data).await,
            Packet::Pong(_) => {
                // Only the pong of the outstanding ping counts: extra pongs buy no time.
                if self.awaiting_pong.swap(false, Ordering::AcqRel) {
                    self.pong_notify.notify_one();
                }
            }
            Packet::Close => self.close(CloseReason::ClientClose),
            // In protocol v4 only the server pings: Node closes on "invalid heartbeat direction".
            Packet::Ping(_) => self.close(CloseReason::TransportError),
            // Node ignores these (and an open packet) from a client.
            Packet::Open(_) | Packet::Upgrade | Packet::Noop => {}
        }
        self.reason().is_none()
    }
}

/// One Engine.IO connection, as the application sees it: receive messages with
/// [`recv`](Self::recv), send with a [`SessionSender`].
#[derive(Debug)]
pub struct Session {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Data>,
    request: RequestInfo,
}

impl Session {
    pub(crate) fn new(shared: Arc<Shared>, rx: mpsc::Receiver<Data>, request: RequestInfo) -> Self {
        Self {
            shared,
            rx,
            request,
        }
    }

    /// The session id (`sid`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// The handshake request.
    pub fn request(&self) -> &RequestInfo {
        &self.request
    }

    /// A cloneable handle for sending to this session.
    pub fn sender(&self) -> SessionSender {
        SessionSender {
            shared: self.shared.clone(),
        }
    }

    /// The next message from the client (text or binary); `None` once the session is closed
    /// and the messages received before that were handed out (then
    /// [`close_reason`](Self::close_reason) says why).
    ///
    /// Cancel-safe: dropping the future loses no message.
    pub async fn recv(&mut self) -> Option<Data> {
        tokio::select! {
            biased;
            data = self.rx.recv() => data,
            () = self.shared.closed() => self.rx.try_recv().ok(),
        }
    }

    /// Why the session closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    /// The current transport.
    pub fn transport(&self) -> TransportKind {
        self.shared.lock().transport
    }
}

/// The sending handle of a session: cheap to clone, usable from any task.
#[derive(Clone, Debug)]
pub struct SessionSender {
    shared: Arc<Shared>,
}

impl SessionSender {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The session id (`sid`).
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Queues messages atomically: no other sender's packets come between them (Socket.IO sends
    /// a text packet followed by its binary attachments). Never blocks.
    ///
    /// Errs with [`SendError::Closed`] if the session is closed, and with [`SendError::Full`]
    /// if they would take the outgoing queue over its bound
    /// ([`EngineConfig::max_buffered_packets`](crate::EngineConfig::max_buffered_packets)):
    /// then nothing is queued and the session is closed as a transport error.
    pub fn send_all(&self, data: impl IntoIterator<Item = Data>) -> Result<(), SendError> {
        self.shared.push_messages(data, false)
    }

    /// Like [`send_all`](Self::send_all), and the transport's write that carries these messages
    /// ends after them: what is queued later goes out in a later write. Over WebSocket that is a
    /// separate write to the connection, and the writer waits 1 ms before its next write so that
    /// the peer reads this one on its own; over long-polling it matters only when a GET is
    /// waiting now, which then answers these messages (and what was queued before) while later
    /// ones wait for the next GET. Writes are otherwise batched.
    ///
    /// Node's engine writes a packet at once when its transport is idle and queues what comes
    /// while that write is under way. Socket.IO sends its CONNECT reply this way, so that a client
    /// that handles one message per socket read sees it before what the connection handler
    /// sends.
    pub fn send_all_and_flush(
        &self,
        data: impl IntoIterator<Item = Data>,
    ) -> Result<(), SendError> {
        self.shared.push_messages(data, true)
    }

    /// Queues one message; see [`send_all`](Self::send_all).
    pub fn send(&self, data: Data) -> Result<(), SendError> {
        self.shared.push_messages([data], false)
    }

    /// Queues messages encoded once for many sessions (a broadcast), atomically, like
    /// [`send_all`](Self::send_all): on a WebSocket served by the callback drivers every
    /// session shares the messages' frames (built at most once); other transports copy the
    /// data.
    pub fn send_shared(&self, data: &[SharedData]) -> Result<(), SendError> {
        self.shared.push_shared(data)
    }

    /// Whether the transport can take a message now without queueing it behind others: the
    /// session is open and nothing waits to be written (on a WebSocket of the callback
    /// drivers, nothing in its write queue; elsewhere, an empty outgoing queue). What a
    /// `volatile` emit checks before sending.
    pub fn writable(&self) -> bool {
        self.shared.writable()
    }

    /// Closes the session from the server side: what is queued is still delivered, then the
    /// session ends like Node's engine.io ends it: over long-polling with the close packet (a
    /// pending GET gets it, or the next one), over WebSocket by closing the WebSocket (no close
    /// packet is written; clients take it as a transport close and may reconnect).
    pub fn close(&self) {
        self.shared.close(CloseReason::ServerClose);
    }

    /// Whether the session is closed.
    pub fn is_closed(&self) -> bool {
        self.shared.reason().is_some()
    }

    /// Why the session closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.shared.reason()
    }

    /// The current transport.
    pub fn transport(&self) -> TransportKind {
        self.shared.lock().transport
    }

    /// Resolves when the session has closed. Cancel-safe.
    pub async fn closed(&self) {
        self.shared.closed().await;
    }
}

/// The WebSocket message of an Engine.IO message packet: `4` and the text, or the bytes.
pub(crate) fn message_of(data: &Data) -> volley::Message {
    match data {
        Data::Text(text) => {
            let mut s = String::with_capacity(text.len() + 1);
            s.push('4');
            s.push_str(text);
            volley::Message::text(s)
        }
        Data::Binary(bytes) => volley::Message::binary(bytes.clone()),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_params() {
        let q = "EIO=4&transport=polling&t=N8h&sid=ab%2Bc%3D&x=a+b&flag";
        assert_eq!(query_param(q, "EIO").as_deref(), Some("4"));
        assert_eq!(query_param(q, "transport").as_deref(), Some("polling"));
        assert_eq!(query_param(q, "sid").as_deref(), Some("ab+c="));
        assert_eq!(query_param(q, "x").as_deref(), Some("a b"));
        assert_eq!(query_param(q, "flag").as_deref(), Some(""));
        assert_eq!(query_param(q, "nope"), None);
        assert_eq!(query_param("a=%", "a").as_deref(), Some("%"));
        assert_eq!(query_param("a=%4", "a").as_deref(), Some("%4"));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("", "a"), None);
    }

    #[tokio::test]
    async fn bounded_queue_closes_the_session() {
        let (tx, rx) = mpsc::channel(4);
        let shared = Shared::new("s".into(), TransportKind::Polling, 3, tx);
        let mut session = Session::new(
            shared.clone(),
            rx,
            RequestInfo::new(http::Uri::from_static("/"), http::HeaderMap::new(), None),
        );
        let sender = session.sender();
        sender.send_all([Data::from("a"), Data::from("b")]).unwrap();
        assert_eq!(
            sender.send_all([Data::from("c"), Data::from("d")]),
            Err(SendError::Full)
        );
        assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
        assert_eq!(sender.send(Data::from("e")), Err(SendError::Closed));
        assert_eq!(session.recv().await, None);
        // Only the close packet is left for the client.
        assert_eq!(
            shared.lock().queue.iter().collect::<Vec<_>>(),
            [&Packet::Close]
        );
    }
}
