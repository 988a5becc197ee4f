//! The adapter: room membership and delivery of broadcasts, on one server or across a cluster.
//!
//! Every [`Namespace`] owns one [`Adapter`]. The default, [`InMemoryAdapter`], keeps rooms in
//! this process and needs nothing. The trait is shaped like Node's `socket.io-adapter` so that an
//! adapter spanning several servers (the Redis adapter of the `volley-socketio-redis` crate, …)
//! can implement it:
//!
//! - room membership of the local sockets is synchronous local state;
//! - fire-and-forget operations ([`broadcast`](Adapter::broadcast),
//!   [`add_sockets`](Adapter::add_sockets), …) act on the local sockets at once and hand the
//!   message for the other servers to the adapter, which sends them in call order; they are
//!   fallible (a packet the adapter cannot forward is an error) but never wait;
//! - operations that need answers from other servers ([`fetch_sockets`](Adapter::fetch_sockets),
//!   [`broadcast_with_ack`](Adapter::broadcast_with_ack),
//!   [`server_side_emit_with_ack`](Adapter::server_side_emit_with_ack),
//!   [`server_count`](Adapter::server_count)) are asynchronous and fallible, bounded by the
//!   adapter's request timeout (5 s by default, as Node's).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::namespace::NsInner;
use crate::packet::{Packet, PacketType};
use crate::recovery::{MissedPacket, RecoveryConfig, Session, SessionStore, SessionToPersist};
use crate::socket::{AckError, EncodedPacket, Socket};
use crate::util::lock;
use crate::{Namespace, Payload};

/// A boxed, sendable future (the return type of the asynchronous adapter methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// How long a multi-server adapter waits for the answers of the other servers by default
/// (Node's `requestsTimeout`).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an adapter operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdapterError {
    /// Not every server answered within the request timeout.
    Timeout {
        /// Answers received.
        received: usize,
        /// Answers expected.
        expected: usize,
    },
    /// The cluster transport (e.g. Redis) is unreachable: only this server was acted on.
    Unavailable(String),
    /// The message could not be encoded for the other servers.
    Encode(String),
    /// The adapter has been closed.
    Closed,
}

impl std::fmt::Display for AdapterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdapterError::Timeout { received, expected } => write!(
                f,
                "timeout reached: only {received} responses received out of {expected}"
            ),
            AdapterError::Unavailable(why) => write!(f, "cluster unavailable: {why}"),
            AdapterError::Encode(why) => write!(f, "cannot encode for the cluster: {why}"),
            AdapterError::Closed => f.write_str("the adapter is closed"),
        }
    }
}

impl std::error::Error for AdapterError {}

/// Which sockets a broadcast or a bulk operation targets. Serializable, so that an adapter can
/// forward it to other servers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastOptions {
    /// Only sockets in at least one of these rooms (every socket when empty).
    pub rooms: BTreeSet<String>,
    /// Minus the sockets in any of these rooms (a socket's id is a room holding only itself).
    pub except: BTreeSet<String>,
    /// Modifiers.
    pub flags: BroadcastFlags,
}

/// Broadcast modifiers.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastFlags {
    /// Only the sockets of this server (meaningful for adapters spanning several servers).
    pub local: bool,
    /// A packet that may be lost: as Node, it is dropped for a client whose transport is not
    /// writable right now ([`SessionSender::writable`](volley_engineio::SessionSender::writable):
    /// something still waits to be written to it), closed sessions are skipped and a failed
    /// send is ignored.
    pub volatile: bool,
    /// How long to wait for acknowledgements, in milliseconds (`None`: the server's default).
    pub timeout_ms: Option<u64>,
}

/// One socket's answer to a broadcast with acknowledgement.
#[derive(Debug)]
pub struct AckResponse {
    /// The socket's id, when it is known: answers relayed from other servers carry none
    /// (Node's cluster protocol does not say which socket answered).
    pub socket_id: Option<String>,
    /// What it acknowledged with, or why there is no answer.
    pub result: Result<Payload, AckError>,
}

impl AckResponse {
    /// The answer as a `T` (any [`FromPayload`](crate::FromPayload) type), or why there is
    /// none ([`AckError::Data`] when the arguments do not fit `T`).
    pub fn into_data<T: crate::FromPayload>(self) -> Result<T, AckError> {
        T::from_payload(self.result?).map_err(AckError::Data)
    }
}

/// What a multi-server adapter knows of a socket, local or on another server (Node's
/// `RemoteSocket` fields): wrapped by [`RemoteSocket`](crate::RemoteSocket) for the user.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketInfo {
    /// The socket id.
    pub id: String,
    /// The handshake as Node serializes it: `headers`, `time`, `address`, `xdomain`, `secure`,
    /// `issued`, `url`, `query`, `auth`.
    pub handshake: Value,
    /// The rooms the socket is in (including its own id).
    pub rooms: Vec<String>,
    /// The socket's shared data ([`Socket::data_json`]; Node's `socket.data`).
    pub data: Value,
}

impl SocketInfo {
    /// The information on local socket `socket`.
    pub fn of(socket: &Socket) -> SocketInfo {
        SocketInfo {
            id: socket.id().to_owned(),
            handshake: socket.handshake().to_json(),
            rooms: socket.rooms(),
            data: socket.data_json(),
        }
    }
}

/// Answers a server-side emit (see [`Namespace::on_server_side_emit`]): the first call of
/// [`send`](Self::send) wins.
pub struct ServerAck(Box<dyn FnOnce(Value) + Send>);

impl ServerAck {
    /// An answer handle that calls `f` with the answer (for adapters).
    pub fn new(f: impl FnOnce(Value) + Send + 'static) -> Self {
        ServerAck(Box::new(f))
    }

    /// Answers with `value`.
    pub fn send(self, value: Value) {
        (self.0)(value)
    }
}

impl std::fmt::Debug for ServerAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerAck")
    }
}

/// Makes the adapter of a namespace when the namespace is created.
pub type AdapterFactory = Arc<dyn Fn(NamespaceRef) -> Arc<dyn Adapter> + Send + Sync>;

/// A weak handle on the namespace an adapter serves (it does not keep the namespace alive).
///
/// While the adapter factory runs, the namespace is being built: [`upgrade`](Self::upgrade)
/// returns `None` until the factory has returned, but [`name`](Self::name) is known.
#[derive(Clone)]
pub struct NamespaceRef {
    pub(crate) ns: Weak<NsInner>,
    pub(crate) name: Arc<str>,
    pub(crate) recovery: Option<RecoveryConfig>,
}

impl NamespaceRef {
    /// A handle on no namespace named `name` (for adapter unit tests).
    pub fn detached(name: &str) -> Self {
        NamespaceRef {
            ns: Weak::new(),
            name: name.into(),
            recovery: None,
        }
    }

    /// A detached handle with connection state recovery on (for adapter unit tests).
    pub fn detached_with_recovery(name: &str, recovery: RecoveryConfig) -> Self {
        NamespaceRef {
            ns: Weak::new(),
            name: name.into(),
            recovery: Some(recovery),
        }
    }

    /// The server's connection state recovery settings (`None`: off).
    pub fn recovery(&self) -> Option<&RecoveryConfig> {
        self.recovery.as_ref()
    }

    /// The namespace, unless it has been dropped.
    pub fn upgrade(&self) -> Option<Namespace> {
        self.ns.upgrade().map(Namespace)
    }

    /// The connected local socket with this id.
    pub fn socket(&self, id: &str) -> Option<Socket> {
        self.upgrade()?.get_socket(id)
    }

    /// The namespace's name, e.g. `"/chat"`.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for NamespaceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NamespaceRef({:?})", self.name)
    }
}

fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

/// Room membership and broadcast delivery for one namespace.
///
/// The object-safe trait every namespace's adapter implements (`Arc<dyn Adapter>`). The
/// synchronous methods act on this server's sockets at once (and, for a multi-server adapter,
/// queue the message for the other servers in call order). The asynchronous ones return boxed
/// `'static` futures: their packets are sent or queued before they return, so dropping the
/// future (cancellation) only gives up the answers — they are cancel-safe in that sense.
pub trait Adapter: Send + Sync + 'static {
    /// Starts the adapter (subscriptions, …), called once when the namespace is created and
    /// awaited by [`SocketIo::init_adapters`](crate::SocketIo::init_adapters). The in-memory
    /// adapter needs nothing.
    fn init(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        ready(Ok(()))
    }

    /// Stops the adapter (unsubscribes); called by [`SocketIo::close`](crate::SocketIo::close).
    fn close(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        ready(Ok(()))
    }

    /// How many servers the cluster has (1 for a single-server adapter).
    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>> {
        ready(Ok(1))
    }

    /// Adds socket `id` to `rooms`.
    fn add_all(&self, id: &str, rooms: &[String]);
    /// Removes socket `id` from `room`.
    fn del(&self, id: &str, room: &str);
    /// Removes socket `id` from every room (on disconnect).
    fn del_all(&self, id: &str);
    /// The rooms socket `id` is in.
    fn socket_rooms(&self, id: &str) -> Vec<String>;
    /// Every room that has at least one local member (including the per-socket rooms).
    fn rooms(&self) -> Vec<String>;
    /// The local sockets `opts` targets.
    fn sockets(&self, opts: &BroadcastOptions) -> Vec<String>;

    /// Sends `packet` to every socket `opts` targets (on every server unless
    /// `opts.flags.local`), encoding it once. Local sockets get it before this returns.
    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) -> Result<(), AdapterError>;

    /// Sends `packet` (whose `id` is set) to every socket `opts` targets and collects their
    /// acknowledgements, waiting at most `opts.flags.timeout_ms` (or `default_timeout`): one
    /// [`AckResponse`] per targeted socket, on every server (a socket that did not answer in
    /// time counts as an [`AckError::Timeout`]).
    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>>;

    /// The sockets `opts` targets, on every server unless `opts.flags.local`.
    fn fetch_sockets(
        &self,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>>;

    /// Makes the sockets `opts` targets join `rooms`.
    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError>;
    /// Makes the sockets `opts` targets leave `rooms`.
    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError>;
    /// Disconnects the sockets `opts` targets (closing their connections when `close`).
    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError>;

    /// Sends event `event` to the other servers' namespaces of the same name (their
    /// [`Namespace::on_server_side_emit`] handlers). Nothing to do on a single server.
    fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), AdapterError> {
        let _ = (event, args);
        Ok(())
    }

    /// Like [`server_side_emit`](Self::server_side_emit), asking every other server for one
    /// answer: resolves with all of them, or [`AdapterError::Timeout`] when not every server
    /// answered within the request timeout. Resolves with no answers on a single server.
    fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
    ) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
        let _ = (event, args);
        ready(Ok(Vec::new()))
    }

    /// Keeps the session of a socket that left for a recoverable reason (connection state
    /// recovery; see [`recovery`](crate::recovery)). Nothing by default.
    fn persist_session(&self, session: SessionToPersist) {
        let _ = session;
    }

    /// A socket with a private session id connected (connection state recovery on). An adapter
    /// that keeps sessions outside the process may store the session now and keep it fresh,
    /// so that it survives this server's crash (Node persists sessions on disconnect only).
    /// Nothing by default.
    fn open_session(&self, session: SessionToPersist) {
        let _ = session;
    }

    /// A socket with private session id `pid` left for a reason that ends its session (a
    /// namespace disconnect): forget what [`open_session`](Self::open_session) stored. Nothing
    /// by default.
    fn discard_session(&self, pid: &str) {
        let _ = pid;
    }

    /// The session `pid` and the packets it missed after `offset`, if it can be recovered.
    /// `None` by default.
    fn restore_session(
        &self,
        pid: &str,
        offset: &str,
    ) -> BoxFuture<'static, Result<Option<Session>, AdapterError>> {
        let _ = (pid, offset);
        ready(Ok(None))
    }

    /// Called once the socket of a restored session is registered, before its CONNECT reply,
    /// after its missed packets were sent: `send` gets the packets broadcast to it since
    /// [`restore_session`](Self::restore_session) that were held back (so that none is lost
    /// or sent twice between the two). Nothing by default.
    fn finish_restore(&self, sid: &str, send: &mut dyn FnMut(MissedPacket)) {
        let _ = (sid, send);
    }
}

/// A room that got its first local member or lost its last one (see
/// [`InMemoryAdapter::with_room_listener`]; Node's `create-room` / `delete-room` events).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomChange {
    /// The room.
    pub room: String,
    /// Created (true) or deleted (false).
    pub created: bool,
    /// Whether the room is a socket's own room (its id), not a public one.
    pub private: bool,
}

/// Called with the room changes of an [`InMemoryAdapter`], after its lock is released.
pub type RoomListener = Arc<dyn Fn(&[RoomChange]) + Send + Sync>;

/// The rooms of one namespace on this server. Ids and room names are shared `Arc<str>`s, and a
/// socket's own room (named by its id, joined by every socket at connect) is a flag of the
/// socket's entry rather than a set of its own: an idle socket costs one map entry.
#[derive(Default)]
struct Rooms {
    /// room -> members, for every room but the sockets' own rooms (see [`Joined::own`]).
    rooms: HashMap<Arc<str>, HashSet<Arc<str>>>,
    /// socket id -> the rooms it is in.
    sids: HashMap<Arc<str>, Joined>,
    /// Room changes not yet reported (only kept with a listener).
    changes: Vec<RoomChange>,
    track: bool,
}

/// The rooms one socket is in.
#[derive(Default)]
struct Joined {
    /// In its own room (the room named by its id).
    own: bool,
    /// The other rooms; a list, as a socket is in few rooms.
    rooms: Vec<Arc<str>>,
}

impl Rooms {
    /// Whether `room` has a member.
    fn has(&self, room: &str) -> bool {
        self.rooms.contains_key(room) || self.sids.get(room).is_some_and(|j| j.own)
    }

    /// Calls `f` with each member of `room`.
    fn members<'a>(&'a self, room: &str, mut f: impl FnMut(&'a Arc<str>)) {
        if let Some(members) = self.rooms.get(room) {
            members.iter().for_each(&mut f);
        }
        if let Some((id, _)) = self.sids.get_key_value(room).filter(|(_, j)| j.own) {
            f(id);
        }
    }

    fn report(&mut self, room: &str, created: bool) {
        if self.track {
            let private = self.sids.contains_key(room)
                || (!created && self.changes.iter().any(|c| c.room == room && c.private));
            self.changes.push(RoomChange {
                room: room.to_owned(),
                created,
                private,
            });
        }
    }

    fn add(&mut self, id: &str, rooms: &[String]) {
        let id: Arc<str> = match self.sids.get_key_value(id) {
            Some((id, _)) => id.clone(),
            None => Arc::from(id),
        };
        for room in rooms {
            let joined = self.sids.entry(id.clone()).or_default();
            if **room == *id {
                if joined.own {
                    continue;
                }
                joined.own = true;
                if !self.rooms.contains_key(room.as_str()) {
                    self.report(room, true);
                }
                continue;
            }
            if joined.rooms.iter().any(|r| **r == **room) {
                continue;
            }
            let name: Arc<str> = match self.rooms.get_key_value(room.as_str()) {
                Some((name, _)) => name.clone(),
                None => Arc::from(room.as_str()),
            };
            joined.rooms.push(name.clone());
            let created = !self.has(room);
            self.rooms.entry(name).or_default().insert(id.clone());
            if created {
                self.report(room, true);
            }
        }
    }

    fn del(&mut self, id: &str, room: &str) {
        let Some(joined) = self.sids.get_mut(id) else {
            return;
        };
        if id == room {
            if !joined.own {
                return;
            }
            joined.own = false;
        } else {
            let Some(i) = joined.rooms.iter().position(|r| **r == *room) else {
                return;
            };
            joined.rooms.swap_remove(i);
            if let Some(members) = self.rooms.get_mut(room) {
                members.remove(id);
                if members.is_empty() {
                    self.rooms.remove(room);
                }
            }
        }
        let gone = !self.has(room);
        if gone {
            self.report(room, false);
        }
        if self
            .sids
            .get(id)
            .is_some_and(|j| !j.own && j.rooms.is_empty())
        {
            self.sids.remove(id);
        }
    }

    fn del_all(&mut self, id: &str) {
        let Some(joined) = self.sids.get_mut(id) else {
            return;
        };
        let rooms = std::mem::take(&mut joined.rooms);
        for room in rooms {
            if let Some(members) = self.rooms.get_mut(&room) {
                members.remove(id);
                if members.is_empty() {
                    self.rooms.remove(&room);
                    if !self.has(&room) {
                        self.report(&room, false);
                    }
                }
            }
        }
        if self.sids.get(id).is_some_and(|j| j.own) {
            self.del(id, id);
        }
        self.sids.remove(id);
    }

    /// The ids of the sockets `opts` targets.
    fn matching(&self, opts: &BroadcastOptions) -> Vec<Arc<str>> {
        let mut out = Vec::new();
        self.matching_each(opts, |id| out.push(id.clone()));
        out
    }

    /// Calls `f` with the id of each socket `opts` targets, once each.
    fn matching_each<'a>(&'a self, opts: &BroadcastOptions, mut f: impl FnMut(&'a Arc<str>)) {
        let mut excluded: HashSet<&str> = HashSet::new();
        for room in &opts.except {
            self.members(room, |id| {
                excluded.insert(id);
            });
        }
        if opts.rooms.is_empty() {
            for id in self.sids.keys() {
                if !excluded.contains(&**id) {
                    f(id);
                }
            }
        } else if opts.rooms.len() == 1 {
            // One room: its members are distinct.
            let room = opts.rooms.first().expect("one room");
            self.members(room, |id| {
                if !excluded.contains(&**id) {
                    f(id);
                }
            });
        } else {
            let mut seen: HashSet<&str> = HashSet::new();
            for room in &opts.rooms {
                self.members(room, |id| {
                    if !excluded.contains(&**id) && seen.insert(id) {
                        f(id);
                    }
                });
            }
        }
    }
}

/// The default adapter: rooms in memory, this process only.
pub struct InMemoryAdapter {
    ns: NamespaceRef,
    state: Mutex<Rooms>,
    listener: Option<RoomListener>,
    /// Sessions and packets for connection state recovery (when it is on).
    store: Option<Mutex<SessionStore>>,
}

impl std::fmt::Debug for InMemoryAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("InMemoryAdapter")
            .field("ns", &self.ns)
            .field("rooms", &state.rooms.len())
            .field("sockets", &state.sids.len())
            .finish()
    }
}

impl InMemoryAdapter {
    /// An in-memory adapter for the namespace `ns`.
    pub fn new(ns: NamespaceRef) -> Self {
        InMemoryAdapter {
            store: ns
                .recovery()
                .cloned()
                .map(|c| Mutex::new(SessionStore::new(c))),
            ns,
            state: Mutex::new(Rooms::default()),
            listener: None,
        }
    }

    /// An in-memory adapter that keeps no recovery state even when connection state recovery
    /// is on (for adapters that keep sessions and packets elsewhere, e.g. in Redis streams).
    pub fn without_recovery(ns: NamespaceRef) -> Self {
        InMemoryAdapter {
            store: None,
            ns,
            state: Mutex::new(Rooms::default()),
            listener: None,
        }
    }

    /// An in-memory adapter that reports each room's creation and deletion to `listener`
    /// (for adapters that subscribe per room, like the sharded Redis adapter).
    pub fn with_room_listener(ns: NamespaceRef, listener: RoomListener) -> Self {
        InMemoryAdapter {
            store: ns
                .recovery()
                .cloned()
                .map(|c| Mutex::new(SessionStore::new(c))),
            ns,
            state: Mutex::new(Rooms {
                track: true,
                ..Rooms::default()
            }),
            listener: Some(listener),
        }
    }

    /// Runs `f` on the rooms, then reports the room changes it made.
    fn update<T>(&self, f: impl FnOnce(&mut Rooms) -> T) -> T {
        let (out, changes) = {
            let mut state = lock(&self.state);
            let out = f(&mut state);
            (out, std::mem::take(&mut state.changes))
        };
        if let (Some(listener), false) = (&self.listener, changes.is_empty()) {
            listener(&changes);
        }
        out
    }

    /// The factory to pass to [`SocketIoBuilder::adapter`](crate::SocketIoBuilder::adapter).
    pub fn factory() -> AdapterFactory {
        Arc::new(|ns| Arc::new(InMemoryAdapter::new(ns)) as Arc<dyn Adapter>)
    }

    /// The namespace this adapter serves.
    pub fn namespace(&self) -> &NamespaceRef {
        &self.ns
    }

    fn targets(&self, opts: &BroadcastOptions) -> Vec<Socket> {
        let Some(ns) = self.ns.upgrade() else {
            return Vec::new();
        };
        // Lock order: the rooms, then the namespace's socket table (never the other way).
        let state = lock(&self.state);
        let table = ns.socket_table();
        let mut out = Vec::new();
        state.matching_each(opts, |id| {
            if let Some(socket) = table.get(&**id) {
                out.push(socket.clone());
            }
        });
        out
    }

    /// Sends `packet` to the local sockets `opts` targets, encoding it once. With connection
    /// state recovery on, an EVENT without acknowledgement that is not volatile gets an offset
    /// appended and is kept for the sessions that may miss it.
    pub fn broadcast_local(&self, packet: &Packet, opts: &BroadcastOptions) {
        let Some(store) = &self.store else {
            self.deliver(packet, opts);
            return;
        };
        // Recovery on: the store stays locked while the packet is kept and delivered, so that a
        // session being restored meanwhile gets it exactly once (missed, held, or live).
        let mut store = lock(store);
        let recoverable = matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent)
            && packet.id.is_none()
            && !opts.flags.volatile;
        let (packet, missed) = match (recoverable, &packet.data) {
            (true, Some(Value::Array(data))) => {
                let offset = crate::recovery::new_offset();
                let mut data = data.clone();
                data.push(Value::String(offset.clone()));
                let missed = MissedPacket {
                    data: data.clone(),
                    attachments: packet.attachments.clone(),
                };
                store.store(offset, missed.clone(), opts);
                let with_offset = Packet {
                    data: Some(Value::Array(data)),
                    ..packet.clone()
                };
                (std::borrow::Cow::Owned(with_offset), Some(missed))
            }
            _ => (std::borrow::Cow::Borrowed(packet), None),
        };
        let encoded = EncodedPacket::new(&packet);
        let ids = lock(&self.state).matching(opts);
        // Those not held for a session being restored get it now.
        let now: Vec<&str> = (ids.iter().map(|id| &**id))
            .filter(|id| !store.hold(id, missed.as_ref()))
            .collect();
        let sockets = (self.ns.upgrade()).map_or_else(Vec::new, |ns| ns.get_sockets(now));
        for socket in sockets {
            let _ = socket.send_encoded(&encoded, opts.flags.volatile);
        }
    }

    fn deliver(&self, packet: &Packet, opts: &BroadcastOptions) {
        let encoded = EncodedPacket::new(packet);
        for socket in self.targets(opts) {
            // A failed send closes that client's session; the others still get the packet.
            let _ = socket.send_encoded(&encoded, opts.flags.volatile);
        }
    }

    /// Sends `packet` (whose `id` is set) to the local sockets `opts` targets, each registered
    /// to receive the acknowledgement with that id; await the answers on the returned
    /// [`PendingAcks`].
    pub fn start_broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
    ) -> PendingAcks {
        let encoded = EncodedPacket::new(packet);
        let id = packet.id.unwrap_or(0);
        let mut pending = Vec::new();
        for socket in self.targets(opts) {
            let rx = socket.register_ack(id);
            let sent = socket.send_encoded(&encoded, opts.flags.volatile);
            pending.push((socket, rx, sent));
        }
        PendingAcks { id, pending }
    }

    /// What [`fetch_sockets`](Adapter::fetch_sockets) answers for this server.
    pub fn fetch_local(&self, opts: &BroadcastOptions) -> Vec<SocketInfo> {
        self.targets(opts).iter().map(SocketInfo::of).collect()
    }

    /// Makes the local sockets `opts` targets join `rooms`.
    pub fn add_sockets_local(&self, opts: &BroadcastOptions, rooms: &[String]) {
        // One critical section: a socket leaving meanwhile cannot be re-added.
        self.update(|state| {
            for id in state.matching(opts) {
                state.add(&id, rooms);
            }
        });
    }

    /// Makes the local sockets `opts` targets leave `rooms`.
    pub fn del_sockets_local(&self, opts: &BroadcastOptions, rooms: &[String]) {
        self.update(|state| {
            for id in state.matching(opts) {
                for room in rooms {
                    state.del(&id, room);
                }
            }
        });
    }

    /// Disconnects the local sockets `opts` targets.
    pub fn disconnect_sockets_local(&self, opts: &BroadcastOptions, close: bool) {
        for socket in self.targets(opts) {
            socket.disconnect(close);
        }
    }

    /// Whether `room` has a local member.
    pub fn has_room(&self, room: &str) -> bool {
        lock(&self.state).has(room)
    }
}

/// Local sockets that were sent a packet asking for an acknowledgement (see
/// [`InMemoryAdapter::start_broadcast_with_ack`]).
#[must_use = "the acknowledgements are only collected when awaited"]
pub struct PendingAcks {
    id: u64,
    pending: Vec<(
        Socket,
        tokio::sync::oneshot::Receiver<Payload>,
        Result<(), crate::EmitError>,
    )>,
}

impl std::fmt::Debug for PendingAcks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingAcks")
            .field("id", &self.id)
            .field("sockets", &self.pending.len())
            .finish()
    }
}

impl PendingAcks {
    /// How many sockets were sent the packet (the client count Node reports).
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no socket was targeted.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Waits for each answer until `deadline` (one shared deadline) and calls `f` with each
    /// socket's outcome, in the sockets' order. Not cancel-safe: answers still pending when the
    /// future is dropped are forgotten.
    pub async fn for_each(self, deadline: tokio::time::Instant, mut f: impl FnMut(AckResponse)) {
        let id = self.id;
        for (socket, rx, sent) in self.pending {
            let result = match sent {
                Err(e) => {
                    socket.remove_ack(id);
                    Err(AckError::Send(e))
                }
                Ok(()) => match tokio::time::timeout_at(deadline, rx).await {
                    Ok(Ok(payload)) => Ok(payload),
                    Ok(Err(_)) => Err(AckError::Disconnected),
                    Err(_) => {
                        socket.remove_ack(id);
                        Err(AckError::Timeout)
                    }
                },
            };
            f(AckResponse {
                socket_id: Some(socket.id().to_owned()),
                result,
            });
        }
    }

    /// Waits for every answer until `deadline` and returns them. Not cancel-safe (see
    /// [`for_each`](Self::for_each)).
    pub async fn collect(self, deadline: tokio::time::Instant) -> Vec<AckResponse> {
        let mut out = Vec::with_capacity(self.pending.len());
        self.for_each(deadline, |r| out.push(r)).await;
        out
    }
}

/// The timeout of a broadcast with acknowledgement: its own, or `default`.
pub fn ack_timeout(opts: &BroadcastOptions, default: Duration) -> Duration {
    opts.flags
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(default)
}

impl Adapter for InMemoryAdapter {
    fn add_all(&self, id: &str, rooms: &[String]) {
        self.update(|state| state.add(id, rooms));
    }

    fn del(&self, id: &str, room: &str) {
        self.update(|state| state.del(id, room));
    }

    fn del_all(&self, id: &str) {
        if let Some(store) = &self.store {
            // A restored socket that never connected.
            lock(store).stop_holding(id);
        }
        self.update(|state| state.del_all(id));
    }

    fn socket_rooms(&self, id: &str) -> Vec<String> {
        let state = lock(&self.state);
        let Some(joined) = state.sids.get(id) else {
            return Vec::new();
        };
        let mut rooms: Vec<String> = joined.rooms.iter().map(|r| r.to_string()).collect();
        if joined.own {
            rooms.push(id.to_owned());
        }
        rooms.sort();
        rooms
    }

    fn rooms(&self) -> Vec<String> {
        let state = lock(&self.state);
        let own = (state.sids.iter()).filter_map(|(id, j)| j.own.then_some(id));
        let mut rooms: Vec<String> = (state.rooms.keys().chain(own))
            .map(|r| r.to_string())
            .collect();
        rooms.sort();
        rooms.dedup();
        rooms
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<String> {
        let ids = lock(&self.state).matching(opts);
        ids.iter().map(|id| id.to_string()).collect()
    }

    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) -> Result<(), AdapterError> {
        self.broadcast_local(packet, opts);
        Ok(())
    }

    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>> {
        let deadline = tokio::time::Instant::now() + ack_timeout(opts, default_timeout);
        let pending = self.start_broadcast_with_ack(packet, opts);
        Box::pin(async move { Ok(pending.collect(deadline).await) })
    }

    fn fetch_sockets(
        &self,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>> {
        ready(Ok(self.fetch_local(opts)))
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.add_sockets_local(opts, rooms);
        Ok(())
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.del_sockets_local(opts, rooms);
        Ok(())
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError> {
        self.disconnect_sockets_local(opts, close);
        Ok(())
    }

    fn persist_session(&self, session: SessionToPersist) {
        if let Some(store) = &self.store {
            lock(store).persist(session);
        }
    }

    fn restore_session(
        &self,
        pid: &str,
        offset: &str,
    ) -> BoxFuture<'static, Result<Option<Session>, AdapterError>> {
        let session = self.store.as_ref().and_then(|store| {
            // One critical section with the broadcasts: the socket is back in its rooms and
            // holds what comes from now on until `finish_restore`.
            let mut store = lock(store);
            let session = store.restore(pid, offset)?;
            store.start_holding(&session.session.sid);
            self.add_all(&session.session.sid, &session.session.rooms);
            Some(session)
        });
        ready(Ok(session))
    }

    fn finish_restore(&self, sid: &str, send: &mut dyn FnMut(MissedPacket)) {
        if let Some(store) = &self.store {
            let mut store = lock(store);
            for packet in store.stop_holding(sid) {
                send(packet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(rooms: &[&str], except: &[&str]) -> BroadcastOptions {
        BroadcastOptions {
            rooms: rooms.iter().map(|s| (*s).to_owned()).collect(),
            except: except.iter().map(|s| (*s).to_owned()).collect(),
            flags: BroadcastFlags::default(),
        }
    }

    fn sorted(mut v: Vec<String>) -> Vec<String> {
        v.sort();
        v
    }

    fn rooms(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn union_except_and_cleanup() {
        let a = InMemoryAdapter::new(NamespaceRef::detached("/"));
        a.add_all("s1", &rooms(&["s1", "r1", "r2"]));
        a.add_all("s2", &rooms(&["s2", "r2"]));
        a.add_all("s3", &rooms(&["s3", "r3", "muted"]));
        assert_eq!(sorted(a.sockets(&opts(&[], &[]))), ["s1", "s2", "s3"]);
        // A socket in two targeted rooms is listed once.
        assert_eq!(sorted(a.sockets(&opts(&["r1", "r2"], &[]))), ["s1", "s2"]);
        assert_eq!(sorted(a.sockets(&opts(&["r2"], &["s1"]))), ["s2"]);
        assert_eq!(sorted(a.sockets(&opts(&[], &["muted", "r1"]))), ["s2"]);
        assert!(a.sockets(&opts(&["nobody"], &[])).is_empty());

        a.add_sockets(&opts(&["r2"], &[]), &rooms(&["all"]))
            .unwrap();
        assert_eq!(sorted(a.sockets(&opts(&["all"], &[]))), ["s1", "s2"]);
        a.del_sockets(&opts(&["all"], &["s2"]), &rooms(&["all"]))
            .unwrap();
        assert_eq!(a.sockets(&opts(&["all"], &[])), ["s2"]);

        a.del("s1", "r2");
        assert_eq!(a.socket_rooms("s1"), ["r1", "s1"]);
        for id in ["s1", "s2", "s3"] {
            a.del_all(id);
        }
        assert!(a.rooms().is_empty());
        assert!(a.sockets(&opts(&[], &[])).is_empty());
        let state = lock(&a.state);
        assert!(state.rooms.is_empty() && state.sids.is_empty());
    }

    #[test]
    fn own_rooms_are_rooms_like_the_others() {
        let a = InMemoryAdapter::new(NamespaceRef::detached("/"));
        a.add_all("s1", &rooms(&["s1", "r"]));
        a.add_all("s2", &rooms(&["s2"]));
        // s1 joins the room named by s2's id: that room has both.
        a.add_all("s1", &rooms(&["s2", "r", "s1"]));
        assert_eq!(sorted(a.sockets(&opts(&["s2"], &[]))), ["s1", "s2"]);
        assert_eq!(a.sockets(&opts(&["s1"], &[])), ["s1"]);
        assert_eq!(a.rooms(), ["r", "s1", "s2"]);
        assert_eq!(a.socket_rooms("s1"), ["r", "s1", "s2"]);
        // Excepting a room excepts its members, the own room's socket included.
        assert!(a.sockets(&opts(&[], &["s2"])).is_empty());
        assert_eq!(a.sockets(&opts(&[], &["s1"])), ["s2"]);

        // A socket may leave its own room and stays in the others.
        a.del("s2", "s2");
        assert!(a.has_room("s2"), "s1 is still in it");
        assert_eq!(a.sockets(&opts(&["s2"], &[])), ["s1"]);
        assert_eq!(a.socket_rooms("s2"), Vec::<String>::new());
        assert_eq!(sorted(a.sockets(&opts(&[], &[]))), ["s1"]);
        a.del("s1", "s2");
        assert!(!a.has_room("s2"));
        assert!(a.has_room("s1") && a.has_room("r"));
        a.del("s1", "nothing");
        a.del("nobody", "r");
        a.del_all("s1");
        assert!(a.rooms().is_empty());
        let state = lock(&a.state);
        assert!(state.rooms.is_empty() && state.sids.is_empty());
    }

    #[test]
    fn room_changes_are_reported() {
        let seen: Arc<Mutex<Vec<RoomChange>>> = Arc::default();
        let sink = seen.clone();
        let a = InMemoryAdapter::with_room_listener(
            NamespaceRef::detached("/"),
            Arc::new(move |c: &[RoomChange]| sink.lock().unwrap().extend_from_slice(c)),
        );
        a.add_all("s1", &rooms(&["s1", "r"]));
        a.add_all("s2", &rooms(&["s2", "r"]));
        a.del("s1", "r");
        a.del_all("s2");
        let mut got: Vec<(String, bool, bool)> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| (c.room.clone(), c.created, c.private))
            .collect();
        let want = [
            ("s1", true, true),
            ("r", true, false),
            ("s2", true, true),
            ("r", false, false),
            ("s2", false, true),
        ];
        let mut want: Vec<(String, bool, bool)> = want
            .iter()
            .map(|(r, c, p)| ((*r).to_owned(), *c, *p))
            .collect();
        // The rooms a socket leaves at once come in no particular order.
        got[3..].sort();
        want[3..].sort();
        assert_eq!(got, want);
    }

    #[test]
    fn options_serialize() {
        let mut o = opts(&["a"], &["b"]);
        o.flags.timeout_ms = Some(500);
        o.flags.volatile = true;
        let json = serde_json::to_string(&o).unwrap();
        let back: BroadcastOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
    }
}
