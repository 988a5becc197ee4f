//! A client's connection to one namespace.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::oneshot;
use volley_engineio::packet::Data;
use volley_engineio::{SessionSender, SharedData};

use crate::adapter::{BoxFuture, BroadcastOptions};
use crate::args::{DataError, FromPayload, to_payload};
use crate::client::ClientShared;
use crate::operators::BroadcastOperator;
use crate::packet::{Packet, PacketType};
use crate::util::{IntoRooms, lock, read, write};
use crate::{Namespace, Payload};

/// Event names a server may not emit (they mean something to the client library itself).
pub(crate) const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Why a socket left its namespace (Node's reason strings via [`DisconnectReason::as_str`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The server disconnected the socket (`socket.disconnect()`).
    ServerNamespaceDisconnect,
    /// The client disconnected the socket (`socket.disconnect()` on the client).
    ClientNamespaceDisconnect,
    /// The server is shutting down.
    ServerShuttingDown,
    /// The client stopped answering pings.
    PingTimeout,
    /// The connection was closed (lost, or closed by the server's `close-transport`).
    TransportClose,
    /// The connection failed.
    TransportError,
    /// The client sent an invalid packet.
    ParseError,
    /// The client closed the Engine.IO session.
    ForcedClose,
    /// The server closed the Engine.IO session.
    ForcedServerClose,
}

impl DisconnectReason {
    /// Node's name for the reason, e.g. `"client namespace disconnect"`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::ServerNamespaceDisconnect => "server namespace disconnect",
            DisconnectReason::ClientNamespaceDisconnect => "client namespace disconnect",
            DisconnectReason::ServerShuttingDown => "server shutting down",
            DisconnectReason::PingTimeout => "ping timeout",
            DisconnectReason::TransportClose => "transport close",
            DisconnectReason::TransportError => "transport error",
            DisconnectReason::ParseError => "parse error",
            DisconnectReason::ForcedClose => "forced close",
            DisconnectReason::ForcedServerClose => "forced server close",
        }
    }
}

impl std::fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an emit failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum EmitError {
    /// The event name is reserved (`connect`, `disconnect`, …).
    Reserved(String),
    /// The socket is no longer connected.
    Disconnected,
    /// The Engine.IO session refused the packet (closed, or its queue overflowed).
    Send(volley_engineio::SendError),
    /// The adapter could not forward the packet to the other servers (local delivery happened).
    Adapter(crate::AdapterError),
    /// The data could not be serialized (a map with keys that are not strings, numbers or
    /// bools, or a `Serialize` implementation that failed).
    Data(DataError),
}

impl std::fmt::Display for EmitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitError::Reserved(name) => write!(f, "\"{name}\" is a reserved event name"),
            EmitError::Disconnected => f.write_str("the socket is disconnected"),
            EmitError::Send(e) => write!(f, "send failed: {e}"),
            EmitError::Adapter(e) => write!(f, "{e}"),
            EmitError::Data(e) => write!(f, "cannot serialize the data: {e}"),
        }
    }
}

impl std::error::Error for EmitError {}

/// Why no acknowledgement arrived.
#[derive(Debug)]
#[non_exhaustive]
pub enum AckError {
    /// None arrived in time.
    Timeout,
    /// The socket disconnected before acknowledging.
    Disconnected,
    /// The packet could not be sent.
    Send(EmitError),
    /// The acknowledgement's arguments did not fit the requested type.
    Data(DataError),
}

impl std::fmt::Display for AckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AckError::Timeout => f.write_str("operation has timed out"),
            AckError::Disconnected => f.write_str("the socket disconnected before acknowledging"),
            AckError::Send(e) => write!(f, "{e}"),
            AckError::Data(e) => write!(f, "unexpected acknowledgement data: {e}"),
        }
    }
}

impl std::error::Error for AckError {}

/// The headers of a handshake request, kept compact (one buffer) and made a
/// [`HeaderMap`](http::HeaderMap) on first use: dereference it (`handshake.headers.get("host")`).
/// A connected client that never looks at them costs a few bytes per header instead of a map.
/// Values that were marked sensitive are not any more.
pub struct HandshakeHeaders {
    /// `name:value\n` for every header, in order.
    raw: Box<[u8]>,
    map: std::sync::OnceLock<Box<http::HeaderMap>>,
}

impl HandshakeHeaders {
    /// Keeps `headers` compactly.
    pub fn new(headers: &http::HeaderMap) -> Self {
        let size = headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + 2)
            .sum();
        let mut raw = Vec::with_capacity(size);
        for (name, value) in headers {
            raw.extend_from_slice(name.as_str().as_bytes());
            raw.push(b':');
            raw.extend_from_slice(value.as_bytes());
            raw.push(b'\n');
        }
        HandshakeHeaders {
            raw: raw.into_boxed_slice(),
            map: std::sync::OnceLock::new(),
        }
    }

    fn parse(&self) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        // Header values hold no line feed, names no colon: the split is exact.
        for line in self.raw.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            if let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(&line[..colon]),
                http::HeaderValue::from_bytes(&line[colon + 1..]),
            ) {
                map.append(name, value);
            }
        }
        map
    }
}

impl std::ops::Deref for HandshakeHeaders {
    type Target = http::HeaderMap;

    fn deref(&self) -> &http::HeaderMap {
        self.map.get_or_init(|| Box::new(self.parse()))
    }
}

impl std::fmt::Debug for HandshakeHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

/// The request that opened the connection, and the auth payload of the namespace CONNECT.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// The CONNECT packet's auth payload (`{}` when the client sent none).
    pub auth: Value,
    /// The headers of the Engine.IO handshake request (shared by the client's sockets of
    /// every namespace; a [`HeaderMap`](http::HeaderMap) through [`HandshakeHeaders`]).
    pub headers: Arc<HandshakeHeaders>,
    /// Its URI (path and query), shared likewise.
    pub uri: Arc<http::Uri>,
    /// The client's address, when known.
    pub address: Option<SocketAddr>,
    /// When the namespace connection was made.
    pub issued: SystemTime,
}

impl Handshake {
    /// The handshake as Node's socket.io describes it (`socket.handshake`, what
    /// `fetchSockets()` shows other servers): `headers` (lower-case names; repeated headers
    /// joined with `", "`), `time`, `address`, `xdomain`, `secure`, `issued` (ms since the
    /// epoch), `url`, `query`, `auth`.
    pub fn to_json(&self) -> Value {
        let mut headers = serde_json::Map::new();
        for name in self.headers.keys() {
            let values: Vec<&str> = self
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
        }
        let mut query = serde_json::Map::new();
        if let Some(q) = self.uri.query() {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                query.insert(percent_decode(k), Value::String(percent_decode(v)));
            }
        }
        let issued = self
            .issued
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        let url = self
            .uri
            .path_and_query()
            .map(|pq| pq.as_str().to_owned())
            .unwrap_or_else(|| "/".to_owned());
        serde_json::json!({
            "headers": headers,
            "time": crate::util::http_date(self.issued),
            "address": self.address.map(|a| a.ip().to_string()).unwrap_or_default(),
            "xdomain": self.headers.contains_key(http::header::ORIGIN),
            "secure": false,
            "issued": issued,
            "url": url,
            "query": query,
            "auth": self.auth,
        })
    }

    /// The (percent-decoded) value of query parameter `name` of the handshake request.
    pub fn query(&self, name: &str) -> Option<String> {
        let query = self.uri.query()?;
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if percent_decode(k) == name {
                return Some(percent_decode(v));
            }
        }
        None
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A packet encoded once for many recipients.
///
/// Each wire format ([`Parser`](crate::Parser)) is encoded at most once, when a recipient first
/// needs it, into Engine.IO messages that every recipient shares
/// ([`SharedData`](volley_engineio::SharedData): over a WebSocket of the callback drivers
/// even the frame is built once); with the default parser the text and its binary attachments,
/// with the msgpack parser one binary message.
#[derive(Debug)]
pub struct EncodedPacket {
    packet: Packet,
    json: std::sync::OnceLock<Vec<SharedData>>,
    msgpack: std::sync::OnceLock<Vec<SharedData>>,
}

impl EncodedPacket {
    /// Wraps `packet` (encoded on first use).
    pub fn new(packet: &Packet) -> Self {
        EncodedPacket {
            packet: packet.clone(),
            json: std::sync::OnceLock::new(),
            msgpack: std::sync::OnceLock::new(),
        }
    }

    /// The Engine.IO messages of the packet in `parser`'s format, shared.
    pub(crate) fn shared(&self, parser: crate::Parser) -> &[SharedData] {
        let cell = match parser {
            crate::Parser::Default => &self.json,
            crate::Parser::MsgPack => &self.msgpack,
        };
        cell.get_or_init(|| {
            frames_of(&self.packet, parser)
                .map(SharedData::new)
                .collect()
        })
    }
}

/// The Engine.IO messages of `packet` in `parser`'s format (for one recipient): the packet,
/// then its attachments (an iterator: no list is allocated for the usual single message).
pub(crate) fn frames_of(
    packet: &Packet,
    parser: crate::Parser,
) -> impl Iterator<Item = Data> + use<> {
    let (first, attachments) = match parser {
        crate::Parser::Default => {
            let (text, attachments) = packet.encode();
            (Data::Text(text), attachments)
        }
        crate::Parser::MsgPack => (
            Data::Binary(Bytes::from(crate::packet::encode_msgpack(packet))),
            Vec::new(),
        ),
    };
    std::iter::once(first).chain(attachments.into_iter().map(Data::Binary))
}

/// An event handler, sync or async: parses the payload for the user's handler; returns the
/// future of an async handler.
type EventHandler = Arc<
    dyn Fn(Socket, &str, Payload, Option<AckSender>) -> Option<BoxFuture<'static, ()>>
        + Send
        + Sync,
>;
/// Pending acknowledgements by packet id.
type PendingAckMap = HashMap<u64, oneshot::Sender<Payload>>;
type PacketMiddleware = Arc<dyn Fn(&Socket, &mut Event) -> Result<(), BoxError> + Send + Sync>;
type ErrorHandler = Arc<dyn Fn(Socket, EventError) + Send + Sync>;

/// A boxed error, as a packet middleware returns it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many events of one socket may wait behind a running async handler; more are dropped
/// (reported to [`Socket::on_error`] as [`EventError::Overflow`]).
pub const MAX_QUEUED_EVENTS: usize = 1024;

/// An incoming event, as a packet middleware ([`Socket::use_middleware`]) sees it: it may change
/// the name, the arguments or take the acknowledgement.
#[derive(Debug)]
#[non_exhaustive]
pub struct Event {
    /// The event name.
    pub name: String,
    /// Its arguments.
    pub payload: Payload,
    /// The acknowledgement the client asked for, if any.
    pub ack: Option<AckSender>,
}

/// What went wrong with an incoming event, as [`Socket::on_error`] reports it (Node's `error`
/// event on the server-side socket).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum EventError {
    /// A packet middleware ([`Socket::use_middleware`]) rejected the event: no handler ran and
    /// no acknowledgement was sent.
    Rejected {
        /// The event name.
        event: String,
        /// The middleware's error.
        error: Arc<dyn std::error::Error + Send + Sync>,
    },
    /// The event's arguments did not fit the handler's type: the handler did not run and no
    /// acknowledgement was sent.
    Data {
        /// The event name.
        event: String,
        /// What did not fit.
        error: DataError,
    },
    /// The event arrived while [`MAX_QUEUED_EVENTS`] events of this socket were already waiting
    /// behind a running async handler, and was dropped.
    Overflow {
        /// The event name.
        event: String,
    },
}

impl EventError {
    /// The name of the event concerned.
    pub fn event(&self) -> &str {
        match self {
            EventError::Rejected { event, .. }
            | EventError::Data { event, .. }
            | EventError::Overflow { event } => event,
        }
    }
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EventError::Rejected { event, error } => write!(f, "event {event:?} rejected: {error}"),
            EventError::Data { event, error } => write!(f, "event {event:?}: {error}"),
            EventError::Overflow { event } => {
                write!(f, "event {event:?} dropped: too many events queued")
            }
        }
    }
}

impl std::error::Error for EventError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EventError::Rejected { error, .. } => Some(error.as_ref()),
            EventError::Data { error, .. } => Some(error),
            EventError::Overflow { .. } => None,
        }
    }
}

/// The events of a socket waiting for a running async handler to finish.
#[derive(Default)]
struct EventQueue {
    /// An async handler (and the events queued behind it) is being run by a task.
    running: bool,
    events: VecDeque<(String, Payload, Option<AckSender>)>,
}
type AnyHandler = Arc<dyn Fn(Socket, String, Payload, Option<AckSender>) + Send + Sync>;
type DisconnectHandler = Arc<dyn Fn(Socket, DisconnectReason) + Send + Sync>;

/// What a socket's listeners are, behind one lock. Event handlers are a list (sockets have a
/// few: a scan of it is cheaper than hashing the name, and it takes less memory than a map).
#[derive(Default)]
struct Listeners {
    /// Event names are usually literals: kept without a copy.
    events: Vec<(Cow<'static, str>, EventHandler)>,
    on_disconnect: Vec<DisconnectHandler>,
    /// The kinds few sockets have, allocated with the first of them (an idle socket stays
    /// small).
    rare: Option<Box<RareListeners>>,
}

#[derive(Default)]
struct RareListeners {
    any: Vec<AnyHandler>,
    on_disconnecting: Vec<DisconnectHandler>,
    middlewares: Vec<PacketMiddleware>,
    on_error: Vec<ErrorHandler>,
}

impl Listeners {
    fn rare_mut(&mut self) -> &mut RareListeners {
        self.rare.get_or_insert_with(Box::default)
    }
}

impl Listeners {
    fn handler(&self, name: &str) -> Option<EventHandler> {
        self.events
            .iter()
            .find(|(n, _)| **n == *name)
            .map(|(_, h)| h.clone())
    }
}

pub(crate) struct SocketInner {
    id: String,
    ns: Namespace,
    client: Arc<ClientShared>,
    handshake: Handshake,
    listeners: RwLock<Listeners>,
    queue: Mutex<EventQueue>,
    /// Pending acknowledgements (a map allocated with the first).
    acks: Mutex<Option<Box<PendingAckMap>>>,
    connected: AtomicBool,
    /// Set once the socket has left (or was refused): it never comes back.
    closed: AtomicBool,
    data: Mutex<http::Extensions>,
    /// Node's `socket.data`: JSON other servers can see (fetch_sockets, recovery).
    json_data: Mutex<Value>,
    /// The private session id (connection state recovery on).
    pid: Option<String>,
    /// Whether this socket was restored from a previous session.
    recovered: bool,
    /// What to do before the CONNECT reply of a recovered socket: rejoin these rooms, send
    /// these missed packets.
    restore: Mutex<Option<Box<crate::recovery::Session>>>,
}

/// A client's connection to one namespace. Cheap to clone (a handle).
#[derive(Clone)]
pub struct Socket(pub(crate) Arc<SocketInner>);

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Socket")
            .field("id", &self.0.id)
            .field("nsp", &self.0.ns.name())
            .field("connected", &self.connected())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(
        ns: Namespace,
        client: Arc<ClientShared>,
        auth: Value,
        restored: Option<crate::recovery::Session>,
    ) -> Socket {
        let req = client.request();
        let recovery = ns.recovery().is_some();
        let (id, pid, data) = match &restored {
            Some(r) => (
                r.session.sid.clone(),
                Some(r.session.pid.clone()),
                r.session.data.clone(),
            ),
            None => (
                crate::util::random_id(),
                recovery.then(crate::util::random_id),
                Value::Null,
            ),
        };
        Socket(Arc::new(SocketInner {
            id,
            ns,
            handshake: Handshake {
                auth,
                headers: req.headers.clone(),
                uri: req.uri.clone(),
                address: req.remote_addr,
                issued: SystemTime::now(),
            },
            client,
            listeners: RwLock::new(Listeners::default()),
            queue: Mutex::new(EventQueue::default()),
            acks: Mutex::new(None),
            connected: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            data: Mutex::new(http::Extensions::new()),
            json_data: Mutex::new(data),
            pid,
            recovered: restored.is_some(),
            restore: Mutex::new(restored.map(Box::new)),
        }))
    }

    /// Whether this socket was restored by connection state recovery: same id, rooms and
    /// data as before the client's connection dropped, and the missed packets were sent (see
    /// [`recovery`](crate::recovery)).
    pub fn recovered(&self) -> bool {
        self.0.recovered
    }

    /// The private session id sent in the CONNECT reply (connection state recovery on).
    pub(crate) fn pid(&self) -> Option<&str> {
        self.0.pid.as_deref()
    }

    /// What connection state recovery keeps of this socket.
    pub(crate) fn session(&self, pid: &str) -> crate::recovery::SessionToPersist {
        crate::recovery::SessionToPersist {
            sid: self.0.id.clone(),
            pid: pid.to_owned(),
            rooms: self.rooms(),
            data: self.data_json(),
        }
    }

    /// The restored session's rooms and missed packets, once (for the CONNECT of a recovered
    /// socket).
    pub(crate) fn take_restore(&self) -> Option<crate::recovery::Session> {
        lock(&self.0.restore).take().map(|b| *b)
    }

    /// The socket id (fresh for every namespace connection; also a room holding only this socket).
    pub fn id(&self) -> &str {
        &self.0.id
    }

    /// The namespace name, e.g. `"/"`.
    pub fn nsp(&self) -> &str {
        self.0.ns.name()
    }

    /// The namespace.
    pub fn namespace(&self) -> &Namespace {
        &self.0.ns
    }

    /// The handshake: auth payload, headers, URI and address.
    pub fn handshake(&self) -> &Handshake {
        &self.0.handshake
    }

    /// Whether the socket is still connected to its namespace.
    pub fn connected(&self) -> bool {
        self.0.connected.load(Ordering::Acquire)
    }

    /// Whether the socket has left (handlers registered from now on are dropped: they would
    /// never run).
    fn is_closed(&self) -> bool {
        self.0.closed.load(Ordering::Acquire)
    }

    /// The Engine.IO session under this socket (shared by the client's sockets of every namespace).
    pub fn conn(&self) -> &SessionSender {
        self.0.client.sender()
    }

    /// The per-socket typed data (an [`http::Extensions`] map). Do not hold the guard across an
    /// `.await`.
    pub fn extensions(&self) -> MutexGuard<'_, http::Extensions> {
        lock(&self.0.data)
    }

    /// Stores `value` in the per-socket data, returning the previous value of that type.
    pub fn insert_data<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        self.extensions().insert(value)
    }

    /// A clone of the per-socket value of type `T`.
    pub fn data<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.extensions().get::<T>().cloned()
    }

    /// The socket's shared JSON data (Node's `socket.data`; `null` until set): unlike the typed
    /// [`extensions`](Self::extensions), it is what other servers see through
    /// [`fetch_sockets`](crate::BroadcastOperator::fetch_sockets) and what connection state
    /// recovery restores.
    pub fn data_json(&self) -> Value {
        lock(&self.0.json_data).clone()
    }

    /// Replaces the socket's shared JSON data (see [`data_json`](Self::data_json)).
    pub fn set_data_json(&self, data: Value) {
        *lock(&self.0.json_data) = data;
    }

    /// Handles event `event` with a synchronous handler: `handler(socket, data, ack)`, where
    /// `data` is any [`FromPayload`] type: a `Deserialize` type (a tuple takes the event's
    /// arguments, any other type the first one; binary attachments fill bytes fields: see
    /// [`FromPayload`]), the raw [`Payload`], or [`TryData<T>`](crate::TryData) to see parse
    /// failures. When the arguments do not fit `T`, the handler does not run and the socket's
    /// [`on_error`](Self::on_error) hook gets [`EventError::Data`]. `ack` is `Some` when the
    /// client asked for an acknowledgement.
    ///
    /// The handler runs on the client's task: it must not block. Replaces an earlier handler of
    /// the same event. See [`on_async`](Self::on_async) for the order in which events are
    /// handled.
    ///
    /// ```
    /// # fn f(socket: volley_socketio::Socket) {
    /// #[derive(serde::Deserialize)]
    /// struct Move { x: i32, y: i32 }
    /// socket.on("move", |socket, m: Move, ack| {
    ///     let _ = socket.broadcast().emit("moved", (socket.id(), m.x, m.y));
    ///     if let Some(ack) = ack {
    ///         let _ = ack.send("ok");
    ///     }
    /// });
    /// # }
    /// ```
    pub fn on<T, F>(&self, event: impl Into<Cow<'static, str>>, handler: F)
    where
        T: FromPayload + 'static,
        F: Fn(Socket, T, Option<AckSender>) + Send + Sync + 'static,
    {
        let erased: EventHandler = Arc::new(move |socket, name, payload, ack| {
            match T::from_payload(payload) {
                Ok(data) => handler(socket, data, ack),
                Err(error) => socket.report(EventError::Data {
                    event: name.to_owned(),
                    error,
                }),
            }
            None
        });
        self.set_handler(event.into(), erased);
    }

    /// Handles event `event` with an async handler: an async closure
    /// `async |socket, data: T, ack| { … }` (one whose future borrows nothing from the closure),
    /// or a closure returning an `async move` block. `data` and `ack` are as for
    /// [`on`](Self::on).
    ///
    /// **Order.** The events of one socket are handled one at a time, in the order they
    /// arrived, whatever mix of sync and async handlers they have: the handler of an event
    /// (and the catch-all handlers and packet middlewares before it) starts only after the
    /// previous event's handler has finished, its future included. Different sockets (and the
    /// same client's sockets of different namespaces) are independent. A handler that must not
    /// hold up the socket's next events spawns its work (`tokio::spawn`). Up to
    /// [`MAX_QUEUED_EVENTS`] events wait behind a running async handler; more are dropped
    /// ([`EventError::Overflow`]). Events still waiting when the socket disconnects are
    /// dropped (as Node ignores packets received after the disconnection); a running future is
    /// left to finish. Acknowledgements from the client are not events: they never wait, so a
    /// handler may await [`emit_with_ack`](Self::emit_with_ack). A handler that panics is
    /// logged, and the next events are handled.
    ///
    /// ```
    /// # fn f(socket: volley_socketio::Socket) {
    /// // An async closure (Rust 1.85+)…
    /// socket.on_async("slow-echo", async |socket, text: String, ack| {
    ///     tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    ///     if let Some(ack) = ack {
    ///         let _ = ack.send(&text);
    ///     }
    ///     let _ = socket.emit("echoed", text);
    /// });
    /// // …or a closure returning an `async move` block (needed when it moves captured clones
    /// // into the future).
    /// let greeting = String::from("hello");
    /// socket.on_async("greet", move |socket, name: String, _ack| {
    ///     let greeting = greeting.clone();
    ///     async move {
    ///         let _ = socket.emit("greeting", format!("{greeting}, {name}"));
    ///     }
    /// });
    /// # }
    /// ```
    pub fn on_async<T, F, Fut>(&self, event: impl Into<Cow<'static, str>>, handler: F)
    where
        T: FromPayload + 'static,
        F: Fn(Socket, T, Option<AckSender>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let erased: EventHandler = Arc::new(
            move |socket, name, payload, ack| match T::from_payload(payload) {
                Ok(data) => Some(Box::pin(handler(socket, data, ack)) as BoxFuture<'static, ()>),
                Err(error) => {
                    socket.report(EventError::Data {
                        event: name.to_owned(),
                        error,
                    });
                    None
                }
            },
        );
        self.set_handler(event.into(), erased);
    }

    fn set_handler(&self, event: Cow<'static, str>, handler: EventHandler) {
        if !self.is_closed() {
            let mut listeners = write(&self.0.listeners);
            match listeners.events.iter_mut().find(|(n, _)| **n == *event) {
                Some(slot) => slot.1 = handler,
                None => listeners.events.push((event, handler)),
            }
        }
    }

    /// Adds a packet middleware (Node's `socket.use`): it runs for every incoming event, in the
    /// order added, after the catch-all handlers and before the event's handler; it may
    /// inspect or change the [`Event`]. The first `Err` rejects the event, as in Node: the
    /// event's handler does not run, no acknowledgement is sent, the client is not told, and
    /// the socket's [`on_error`](Self::on_error) hook gets [`EventError::Rejected`] (Node's
    /// `socket.on("error")`); the socket stays connected.
    ///
    /// ```
    /// # fn f(socket: volley_socketio::Socket) {
    /// socket.use_middleware(|socket, event| {
    ///     if event.name.starts_with("admin:") && socket.data::<String>().as_deref() != Some("admin") {
    ///         return Err("unauthorized event".into());
    ///     }
    ///     Ok(())
    /// });
    /// socket.on_error(|socket, err| {
    ///     if let volley_socketio::EventError::Rejected { .. } = err {
    ///         socket.disconnect(false);
    ///     }
    /// });
    /// # }
    /// ```
    pub fn use_middleware<F>(&self, middleware: F)
    where
        F: Fn(&Socket, &mut Event) -> Result<(), BoxError> + Send + Sync + 'static,
    {
        if !self.is_closed() {
            (write(&self.0.listeners).rare_mut())
                .middlewares
                .push(Arc::new(middleware));
        }
    }

    /// Called with what went wrong with an incoming event: a packet middleware's rejection,
    /// arguments that do not fit the handler's type, an event dropped because too many were
    /// queued (see [`EventError`]). Without such a hook these are logged at debug level.
    pub fn on_error<F>(&self, handler: F)
    where
        F: Fn(Socket, EventError) + Send + Sync + 'static,
    {
        if !self.is_closed() {
            (write(&self.0.listeners).rare_mut())
                .on_error
                .push(Arc::new(handler));
        }
    }

    fn report(&self, error: EventError) {
        let handlers: Vec<ErrorHandler> = (read(&self.0.listeners).rare.as_ref())
            .map(|rare| rare.on_error.clone())
            .unwrap_or_default();
        if handlers.is_empty() {
            tracing::debug!(sid = self.id(), "socket.io: {error}");
            return;
        }
        for handler in handlers {
            let error = error.clone();
            guarded("error handler", || handler(self.clone(), error));
        }
    }

    /// Removes the handler of `event`.
    pub fn off(&self, event: &str) {
        write(&self.0.listeners)
            .events
            .retain(|(n, _)| **n != *event);
    }

    /// A catch-all handler: called with the event name for every event, before the event's own
    /// handler. The `ack` handle is shared with that handler (the first answer wins).
    pub fn on_any<F>(&self, handler: F)
    where
        F: Fn(Socket, String, Payload, Option<AckSender>) + Send + Sync + 'static,
    {
        if !self.is_closed() {
            (write(&self.0.listeners).rare_mut())
                .any
                .push(Arc::new(handler));
        }
    }

    /// Called once when the socket leaves the namespace (after it has left its rooms).
    pub fn on_disconnect<F>(&self, handler: F)
    where
        F: Fn(Socket, DisconnectReason) + Send + Sync + 'static,
    {
        if !self.is_closed() {
            write(&self.0.listeners)
                .on_disconnect
                .push(Arc::new(handler));
        }
    }

    /// Called once when the socket is about to leave the namespace, while it is still in its
    /// rooms (Node's `disconnecting` event).
    pub fn on_disconnecting<F>(&self, handler: F)
    where
        F: Fn(Socket, DisconnectReason) + Send + Sync + 'static,
    {
        if !self.is_closed() {
            (write(&self.0.listeners).rare_mut())
                .on_disconnecting
                .push(Arc::new(handler));
        }
    }

    /// Sends event `event` to this client with `data`: any `Serialize` value (a tuple is the
    /// argument list, `()` no argument, anything else one argument; bytes fields become binary
    /// attachments: see [`FromPayload`] for the mapping), e.g. `socket.emit("score", &score)`,
    /// `socket.emit("move", (x, y))`. A [`Payload`] is sent as it is.
    pub fn emit(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        if self.0.ns.recovery().is_none() && self.0.client.parser() == crate::Parser::Default {
            // The usual case, encoded straight to its text: no packet is built.
            if RESERVED_EVENTS.contains(&event) {
                return Err(EmitError::Reserved(event.to_owned()));
            }
            let payload = to_payload(&data).map_err(EmitError::Data)?;
            if payload.attachments.is_empty() {
                if !self.connected() {
                    return Err(EmitError::Disconnected);
                }
                let text = event_text(self.nsp(), event, &payload.args);
                return (self.0.client.sender().send(Data::Text(text))).map_err(EmitError::Send);
            }
            let packet = packet_of(self.nsp(), event, payload, None);
            return self.send_packet(&packet, false);
        }
        let packet = event_packet(self.nsp(), event, &data, None)?;
        if self.0.ns.recovery().is_some() {
            // As Node: through the adapter (to the socket's own room), so that the packet gets
            // an offset and is kept for a recovery.
            if !self.connected() {
                return Err(EmitError::Disconnected);
            }
            let opts = BroadcastOptions {
                rooms: std::iter::once(self.0.id.clone()).collect(),
                ..BroadcastOptions::default()
            };
            return self
                .0
                .ns
                .adapter()
                .broadcast(&packet, &opts)
                .map_err(EmitError::Adapter);
        }
        self.send_packet(&packet, false)
    }

    /// Like [`emit`](Self::emit), but the packet may be lost (see
    /// [`BroadcastFlags::volatile`](crate::BroadcastFlags::volatile)): it is dropped, and no
    /// error is reported, when the socket is disconnected, its session closed, or its transport
    /// not writable (something still waits to be written to it, as Node's
    /// `transport.writable`).
    pub fn emit_volatile(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        let packet = event_packet(self.nsp(), event, &data, None)?;
        self.send_packet(&packet, true)
    }

    /// Sends event `event` with `data` (as [`emit`](Self::emit)) asking for an
    /// acknowledgement. The packet is sent now; awaiting the returned [`AckRequest`] waits for
    /// the answer, at most the server's ack timeout unless [`AckRequest::timeout`] says
    /// otherwise, and makes an `R` of its arguments (any [`FromPayload`] type; [`Payload`] for
    /// the raw arguments):
    ///
    /// ```
    /// # async fn f(socket: volley_socketio::Socket) -> Result<(), volley_socketio::AckError> {
    /// let (accepted, reason): (bool, Option<String>) = socket.emit_with_ack("offer", 42).await?;
    /// # Ok(()) }
    /// ```
    pub fn emit_with_ack<R: FromPayload>(
        &self,
        event: &str,
        data: impl Serialize,
    ) -> AckRequest<R> {
        let id = self.0.ns.next_ack_id();
        let timeout = self.0.ns.default_ack_timeout();
        let packet = match event_packet(self.nsp(), event, &data, Some(id)) {
            Ok(p) => p,
            Err(e) => return AckRequest::failed(self.clone(), id, timeout, e),
        };
        let rx = self.register_ack(id);
        match self.send_packet(&packet, false) {
            Ok(()) => AckRequest {
                guard: AckGuard {
                    socket: self.clone(),
                    id,
                },
                rx: Ok(rx),
                timeout,
                _data: PhantomData,
            },
            Err(e) => AckRequest::failed(self.clone(), id, timeout, e),
        }
    }

    /// Joins `rooms`. Also works in a connect middleware (the rooms are dropped again if the
    /// connection is refused); does nothing once the socket is disconnected.
    pub fn join(&self, rooms: impl IntoRooms) {
        if self.is_closed() {
            return;
        }
        self.0.ns.adapter().add_all(&self.0.id, &rooms.into_rooms());
        if self.is_closed() {
            // Lost a race with the socket's departure (from another task): undo.
            self.0.ns.adapter().del_all(&self.0.id);
        }
    }

    /// Leaves `rooms`.
    pub fn leave(&self, rooms: impl IntoRooms) {
        for room in rooms.into_rooms() {
            self.0.ns.adapter().del(&self.0.id, &room);
        }
    }

    /// The rooms this socket is in (including its own id).
    pub fn rooms(&self) -> Vec<String> {
        self.0.ns.adapter().socket_rooms(&self.0.id)
    }

    /// A broadcast to every other socket of the namespace.
    pub fn broadcast(&self) -> BroadcastOperator {
        self.operator().except(self.0.id.clone())
    }

    /// A broadcast to the sockets in `rooms`, except this one.
    pub fn to(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.broadcast().to(rooms)
    }

    /// A broadcast to every other socket of the namespace not in `rooms`.
    pub fn except(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.broadcast().except(rooms)
    }

    fn operator(&self) -> BroadcastOperator {
        BroadcastOperator::new(self.0.ns.clone(), BroadcastOptions::default())
    }

    /// Disconnects this socket from its namespace (the client sees "io server disconnect").
    /// With `close_underlying`, every socket of the client is disconnected and the Engine.IO
    /// session is closed too.
    pub fn disconnect(&self, close_underlying: bool) {
        if close_underlying {
            self.0.client.disconnect_all();
            return;
        }
        if !self.connected() {
            return;
        }
        let packet = Packet {
            kind: PacketType::Disconnect,
            nsp: self.nsp().to_owned(),
            id: None,
            data: None,
            attachments: Vec::new(),
        };
        let _ = self.send_packet(&packet, false);
        self.on_close(DisconnectReason::ServerNamespaceDisconnect);
    }

    /// Sends an already encoded packet to this client (for [`Adapter`](crate::Adapter)
    /// implementations). With `volatile`, a closed session is not an error.
    pub fn send_encoded(&self, packet: &EncodedPacket, volatile: bool) -> Result<(), EmitError> {
        if !self.connected() {
            return Err(EmitError::Disconnected);
        }
        let sender = self.0.client.sender();
        if volatile && !self.0.client.writable() {
            return Ok(());
        }
        match sender.send_shared(packet.shared(self.0.client.parser())) {
            Err(_) if volatile => Ok(()),
            other => other.map_err(EmitError::Send),
        }
    }

    /// Registers a pending acknowledgement `id` (for [`Adapter`](crate::Adapter)
    /// implementations): the receiver gets the client's ACK with that id. The entry goes away
    /// when the ACK arrives, on [`remove_ack`](Self::remove_ack) or on disconnect.
    pub fn register_ack(&self, id: u64) -> oneshot::Receiver<Payload> {
        let (tx, rx) = oneshot::channel();
        if self.connected() {
            (lock(&self.0.acks).get_or_insert_with(Box::default)).insert(id, tx);
        }
        rx
    }

    /// Forgets the pending acknowledgement `id`.
    pub fn remove_ack(&self, id: u64) {
        if let Some(acks) = lock(&self.0.acks).as_mut() {
            acks.remove(&id);
        }
    }

    /// How many acknowledgements this server is waiting for from this socket.
    pub fn pending_acks(&self) -> usize {
        lock(&self.0.acks).as_ref().map_or(0, |acks| acks.len())
    }

    /// Sends a packet to this client alone (encoded for it, not shared).
    fn send_packet(&self, packet: &Packet, volatile: bool) -> Result<(), EmitError> {
        if !self.connected() {
            // A volatile packet is dropped silently (as to a closed session).
            return if volatile {
                Ok(())
            } else {
                Err(EmitError::Disconnected)
            };
        }
        let client = &self.0.client;
        if volatile && !client.writable() {
            return Ok(());
        }
        match client.sender().send_all(frames_of(packet, client.parser())) {
            Err(_) if volatile => Ok(()),
            other => other.map_err(EmitError::Send),
        }
    }

    pub(crate) fn set_connected(&self) {
        self.0.connected.store(true, Ordering::Release);
    }

    /// The connection was refused or abandoned before it was made: forget the rooms a
    /// middleware may have joined.
    pub(crate) fn abandon(&self) {
        self.0.closed.store(true, Ordering::Release);
        self.0.ns.adapter().del_all(&self.0.id);
    }

    /// An EVENT/BINARY_EVENT from the client: handled now, or queued behind a running async
    /// handler (see [`on_async`](Self::on_async)).
    pub(crate) fn dispatch_event(&self, packet: Packet) {
        let Some(Value::Array(mut items)) = packet.data else {
            return;
        };
        if items.is_empty() {
            return;
        }
        let name = match items.remove(0) {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            _ => return,
        };
        let payload = Payload::with_attachments(items, packet.attachments);
        let ack = packet.id.map(|id| AckSender {
            socket: self.clone(),
            id,
            sent: Arc::new(AtomicBool::new(false)),
        });
        {
            let mut queue = lock(&self.0.queue);
            if queue.running {
                if queue.events.len() >= MAX_QUEUED_EVENTS {
                    drop(queue);
                    self.report(EventError::Overflow { event: name });
                } else {
                    queue.events.push_back((name, payload, ack));
                }
                return;
            }
        }
        // Only the client's task dispatches, and only it sets `running`: nothing can be
        // queued between the check above and this.
        if let Some(future) = self.handle_event(name, payload, ack) {
            lock(&self.0.queue).running = true;
            let socket = self.clone();
            tokio::spawn(async move { socket.run_queue(future).await });
        }
    }

    /// Runs an async handler's future, then the events queued behind it, until none is left.
    async fn run_queue(self, mut future: BoxFuture<'static, ()>) {
        loop {
            if (CatchUnwind(future).await).is_err() {
                tracing::error!(
                    sid = self.id(),
                    "socket.io: an async event handler panicked"
                );
            }
            loop {
                let next = {
                    let mut queue = lock(&self.0.queue);
                    match queue.events.pop_front() {
                        Some(next) => next,
                        None => {
                            queue.running = false;
                            return;
                        }
                    }
                };
                let (name, payload, ack) = next;
                if let Some(next_future) = self.handle_event(name, payload, ack) {
                    future = next_future;
                    break;
                }
            }
        }
    }

    /// Catch-all handlers, packet middlewares, then the event's handler (whose future is
    /// returned when it is async).
    fn handle_event(
        &self,
        name: String,
        payload: Payload,
        ack: Option<AckSender>,
    ) -> Option<BoxFuture<'static, ()>> {
        if !self.connected() {
            return None;
        }
        let (any, middlewares, handler) = {
            let listeners = read(&self.0.listeners);
            match listeners.rare.as_deref() {
                None => (Vec::new(), Vec::new(), Some(listeners.handler(&name))),
                Some(rare) => (
                    rare.any.clone(),
                    rare.middlewares.clone(),
                    rare.middlewares
                        .is_empty()
                        .then(|| listeners.handler(&name)),
                ),
            }
        };
        for handler in any {
            guarded("catch-all handler", || {
                handler(self.clone(), name.clone(), payload.clone(), ack.clone())
            });
        }
        if let Some(handler) = handler {
            // No packet middleware: the handler found above.
            let handler = handler?;
            let mut future = None;
            guarded("event handler", || {
                future = handler(self.clone(), &name, payload, ack);
            });
            return future;
        }
        let mut event = Event { name, payload, ack };
        for middleware in middlewares {
            let verdict = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                middleware(self, &mut event)
            }))
            .unwrap_or_else(|_| Err("the packet middleware panicked".into()));
            if let Err(error) = verdict {
                self.report(EventError::Rejected {
                    event: event.name,
                    error: Arc::from(error),
                });
                return None;
            }
        }
        let Event { name, payload, ack } = event;
        let handler = read(&self.0.listeners).handler(&name)?;
        let mut future = None;
        guarded("event handler", || {
            future = handler(self.clone(), &name, payload, ack);
        });
        future
    }

    /// An ACK/BINARY_ACK from the client.
    pub(crate) fn dispatch_ack(&self, packet: Packet) {
        let Some(id) = packet.id else { return };
        let args = match packet.data {
            Some(Value::Array(items)) => items,
            _ => Vec::new(),
        };
        let tx = lock(&self.0.acks)
            .as_mut()
            .and_then(|acks| acks.remove(&id));
        if let Some(tx) = tx {
            let _ = tx.send(Payload::with_attachments(args, packet.attachments));
        }
    }

    /// Leaves the namespace: rooms, registries, pending acks, then the disconnect handlers.
    pub(crate) fn on_close(&self, reason: DisconnectReason) {
        if !self.0.connected.load(Ordering::Acquire) || self.0.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let disconnecting: Vec<DisconnectHandler> = (write(&self.0.listeners).rare.as_mut())
            .map(|rare| std::mem::take(&mut rare.on_disconnecting))
            .unwrap_or_default();
        for handler in disconnecting {
            guarded("disconnecting handler", || handler(self.clone(), reason));
        }
        if let Some(pid) = &self.0.pid {
            if crate::recovery::recoverable(reason) {
                self.0.ns.adapter().persist_session(self.session(pid));
            } else {
                self.0.ns.adapter().discard_session(pid);
            }
        }
        self.0.connected.store(false, Ordering::Release);
        self.0.ns.adapter().del_all(&self.0.id);
        self.0.ns.remove_socket(&self.0.id);
        self.0.client.remove_socket(self);
        *lock(&self.0.acks) = None;
        let handlers: Vec<DisconnectHandler> =
            std::mem::take(&mut write(&self.0.listeners).on_disconnect);
        for handler in handlers {
            guarded("disconnect handler", || handler(self.clone(), reason));
        }
        // Events waiting behind an async handler are dropped (as Node ignores packets received
        // after the disconnection).
        lock(&self.0.queue).events.clear();
        // The handlers usually hold clones of this socket: drop them to break the cycles.
        *write(&self.0.listeners) = Listeners::default();
    }
}

/// Runs a user handler; a panic is logged instead of taking the client's task down (which
/// would leave its sockets registered).
pub(crate) fn guarded(what: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).is_err() {
        tracing::error!("socket.io: a {what} panicked");
    }
}

/// Builds an EVENT packet (BINARY_EVENT when there are attachments).
pub(crate) fn event_packet<T: Serialize + ?Sized>(
    nsp: &str,
    event: &str,
    data: &T,
    id: Option<u64>,
) -> Result<Packet, EmitError> {
    if RESERVED_EVENTS.contains(&event) {
        return Err(EmitError::Reserved(event.to_owned()));
    }
    let payload = to_payload(data).map_err(EmitError::Data)?;
    Ok(packet_of(nsp, event, payload, id))
}

/// The EVENT packet of `event` with `payload` in namespace `nsp`.
fn packet_of(nsp: &str, event: &str, payload: Payload, id: Option<u64>) -> Packet {
    let mut args = Vec::with_capacity(payload.args.len() + 1);
    args.push(Value::String(event.to_owned()));
    args.extend(payload.args);
    Packet {
        kind: if payload.attachments.is_empty() {
            PacketType::Event
        } else {
            PacketType::BinaryEvent
        },
        nsp: nsp.to_owned(),
        id,
        data: Some(Value::Array(args)),
        attachments: payload.attachments,
    }
}

/// The text of an EVENT packet without ack id or attachments, as [`Packet::encode`] writes it:
/// `2`, the namespace and a comma unless it is `/`, then `[event, ...args]` as compact JSON.
fn event_text(nsp: &str, event: &str, args: &[Value]) -> String {
    let hint = 24
        + nsp.len()
        + event.len()
        + (args.iter())
            .map(crate::packet::json_len_hint)
            .sum::<usize>();
    let mut out = Vec::with_capacity(hint);
    out.push(b'2');
    if !nsp.is_empty() && nsp != "/" {
        out.extend_from_slice(nsp.as_bytes());
        out.push(b',');
    }
    out.push(b'[');
    // Writing JSON to a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, event);
    for arg in args {
        out.push(b',');
        let _ = serde_json::to_writer(&mut out, arg);
    }
    out.push(b']');
    // serde_json writes UTF-8, and the namespace is a str.
    String::from_utf8(out).expect("JSON is UTF-8")
}

/// Polls a future, turning a panic into an `Err`.
struct CatchUnwind(BoxFuture<'static, ()>);

impl Future for CatchUnwind {
    type Output = Result<(), ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let future = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) => Poll::Ready(Ok(())),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Answers one event's acknowledgement request. Clones share one answer: the first
/// [`send`](Self::send) wins, later ones do nothing.
#[derive(Clone)]
pub struct AckSender {
    socket: Socket,
    id: u64,
    sent: Arc<AtomicBool>,
}

impl std::fmt::Debug for AckSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckSender")
            .field("socket", &self.socket.id())
            .field("id", &self.id)
            .finish()
    }
}

impl AckSender {
    /// The ack id the client chose.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Acknowledges with `data`, any `Serialize` value mapped as for
    /// [`Socket::emit`] (a tuple is the argument list; bytes become attachments: a BINARY_ACK).
    /// Only the first answer is sent; later calls return `Ok(())` without sending.
    pub fn send(&self, data: impl Serialize) -> Result<(), EmitError> {
        let payload = to_payload(&data).map_err(EmitError::Data)?;
        if self.sent.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let packet = Packet {
            kind: if payload.attachments.is_empty() {
                PacketType::Ack
            } else {
                PacketType::BinaryAck
            },
            nsp: self.socket.nsp().to_owned(),
            id: Some(self.id),
            data: Some(Value::Array(payload.args)),
            attachments: payload.attachments,
        };
        self.socket.send_packet(&packet, false)
    }
}

/// Removes a pending ack entry when the request is dropped unanswered.
struct AckGuard {
    socket: Socket,
    id: u64,
}

impl Drop for AckGuard {
    fn drop(&mut self) {
        self.socket.remove_ack(self.id);
    }
}

/// An emitted event waiting for its acknowledgement, answered with an `R` (any
/// [`FromPayload`] type). Await it (it implements [`IntoFuture`]).
///
/// The packet is already sent when this value exists; awaiting only waits for the answer.
/// Cancel safety: dropping the future forgets the pending acknowledgement; an answer arriving
/// later is ignored (so the answer is lost, not the packet).
#[must_use = "the acknowledgement is only received when awaited"]
pub struct AckRequest<R = Payload> {
    guard: AckGuard,
    rx: Result<oneshot::Receiver<Payload>, EmitError>,
    timeout: Duration,
    _data: PhantomData<fn() -> R>,
}

impl<R> std::fmt::Debug for AckRequest<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckRequest")
            .field("id", &self.guard.id)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<R> AckRequest<R> {
    fn failed(socket: Socket, id: u64, timeout: Duration, e: EmitError) -> Self {
        AckRequest {
            guard: AckGuard { socket, id },
            rx: Err(e),
            timeout,
            _data: PhantomData,
        }
    }

    /// Waits at most `timeout` for the answer.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The ack id of the emitted packet.
    pub fn id(&self) -> u64 {
        self.guard.id
    }
}

impl<R: FromPayload + Send + 'static> IntoFuture for AckRequest<R> {
    type Output = Result<R, AckError>;
    type IntoFuture = std::pin::Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let AckRequest {
                guard, rx, timeout, ..
            } = self;
            let rx = rx.map_err(AckError::Send)?;
            let result = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(payload)) => R::from_payload(payload).map_err(AckError::Data),
                Ok(Err(_)) => Err(AckError::Disconnected),
                Err(_) => Err(AckError::Timeout),
            };
            drop(guard);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_text_is_what_the_packet_encoder_writes() {
        let cases: Vec<(&str, &str, Vec<Value>)> = vec![
            ("/", "message", vec![]),
            ("/", "message-back", vec![Value::from("x".repeat(20))]),
            (
                "/chat",
                "say",
                vec![Value::from(1), Value::Null, Value::from(2.5)],
            ),
            (
                "/a-b",
                "quote \" and \\ and é 😀",
                vec![serde_json::json!({"k": ["\n", {"z": true}], "é": "\u{1}"})],
            ),
            ("", "empty nsp", vec![Value::from(false)]),
        ];
        for (nsp, event, args) in cases {
            let payload = Payload::new(args.clone());
            let packet = packet_of(nsp, event, payload, None);
            let (encoded, attachments) = packet.encode();
            assert!(attachments.is_empty());
            assert_eq!(event_text(nsp, event, &args), encoded, "{nsp} {event}");
        }
    }
}
