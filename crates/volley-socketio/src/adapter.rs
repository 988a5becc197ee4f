//! The adapter: room membership and delivery of broadcasts.
//!
//! Every [`Namespace`] owns one [`Adapter`]. The default, [`InMemoryAdapter`],
//! keeps rooms in this process. The trait is shaped like Node's `socket.io-adapter` so that an
//! adapter spanning several servers (Redis, …) can implement it: room membership of the local
//! sockets is synchronous local state, broadcasts take serializable [`BroadcastOptions`] and the
//! operations that would need answers from other servers (`fetch_sockets`, acknowledgements of
//! broadcasts) are asynchronous.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::namespace::NsInner;
use crate::packet::Packet;
use crate::socket::{AckError, EncodedPacket, Socket};
use crate::util::lock;
use crate::{Namespace, Payload};

/// A boxed, sendable future (the return type of the asynchronous adapter methods).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

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
    /// A packet that may be lost: closed sessions are skipped and a failed send is ignored.
    /// (Node drops volatile packets for clients whose transport is not writable right now;
    /// Engine.IO does not expose that state yet, so an open session queues the packet.)
    pub volatile: bool,
    /// How long to wait for acknowledgements, in milliseconds (`None`: the server's default).
    pub timeout_ms: Option<u64>,
}

/// One socket's answer to a broadcast with acknowledgement.
#[derive(Debug)]
pub struct AckResponse {
    /// The socket's id.
    pub socket_id: String,
    /// What it acknowledged with, or why there is no answer.
    pub result: Result<Payload, AckError>,
}

/// Makes the adapter of a namespace when the namespace is created.
pub type AdapterFactory = Arc<dyn Fn(NamespaceRef) -> Arc<dyn Adapter> + Send + Sync>;

/// A weak handle on the namespace an adapter serves (it does not keep the namespace alive).
#[derive(Clone)]
pub struct NamespaceRef(pub(crate) Weak<NsInner>);

impl NamespaceRef {
    /// The namespace, unless it has been dropped.
    pub fn upgrade(&self) -> Option<Namespace> {
        self.0.upgrade().map(Namespace)
    }

    /// The connected local socket with this id.
    pub fn socket(&self, id: &str) -> Option<Socket> {
        self.upgrade()?.get_socket(id)
    }
}

impl std::fmt::Debug for NamespaceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.upgrade() {
            Some(ns) => write!(f, "NamespaceRef({:?})", ns.name()),
            None => f.write_str("NamespaceRef(<dropped>)"),
        }
    }
}

/// Room membership and broadcast delivery for one namespace.
///
/// The synchronous methods act on this server's sockets. The asynchronous ones return boxed
/// futures so that the trait stays object-safe (`Arc<dyn Adapter>`); their packets are sent
/// before they return, so dropping the future (cancellation) only gives up the answers.
pub trait Adapter: Send + Sync + 'static {
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
    /// Sends `packet` to every socket `opts` targets, encoding it once.
    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions);
    /// Sends `packet` (whose `id` is set) to every socket `opts` targets and collects their
    /// acknowledgements, waiting at most `opts.flags.timeout_ms` (or `default_timeout`).
    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Vec<AckResponse>>;
    /// The ids of the sockets `opts` targets (on every server, for a multi-server adapter).
    fn fetch_sockets(&self, opts: &BroadcastOptions) -> BoxFuture<'static, Vec<String>>;
    /// Makes the sockets `opts` targets join `rooms`.
    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]);
    /// Makes the sockets `opts` targets leave `rooms`.
    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]);
    /// Disconnects the sockets `opts` targets (closing their connections when `close`).
    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool);
}

#[derive(Default)]
struct Rooms {
    /// room -> members
    rooms: HashMap<String, HashSet<String>>,
    /// socket id -> rooms
    sids: HashMap<String, HashSet<String>>,
}

impl Rooms {
    fn add(&mut self, id: &str, rooms: &[String]) {
        for room in rooms {
            self.sids
                .entry(id.to_owned())
                .or_default()
                .insert(room.clone());
            self.rooms
                .entry(room.clone())
                .or_default()
                .insert(id.to_owned());
        }
    }

    fn del(&mut self, id: &str, room: &str) {
        if let Some(rooms) = self.sids.get_mut(id) {
            rooms.remove(room);
        }
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
    }

    /// The ids of the sockets `opts` targets.
    fn matching(&self, opts: &BroadcastOptions) -> Vec<String> {
        let state = self;
        let mut excluded: HashSet<&str> = HashSet::new();
        for room in &opts.except {
            if let Some(members) = state.rooms.get(room) {
                excluded.extend(members.iter().map(String::as_str));
            }
        }
        let mut out: Vec<String> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        if opts.rooms.is_empty() {
            for id in state.sids.keys() {
                if !excluded.contains(id.as_str()) {
                    out.push(id.clone());
                }
            }
        } else {
            for room in &opts.rooms {
                if let Some(members) = state.rooms.get(room) {
                    for id in members {
                        if !excluded.contains(id.as_str()) && seen.insert(id) {
                            out.push(id.clone());
                        }
                    }
                }
            }
        }
        out
    }
}

/// The default adapter: rooms in memory, this process only.
pub struct InMemoryAdapter {
    ns: NamespaceRef,
    state: Mutex<Rooms>,
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
            ns,
            state: Mutex::new(Rooms::default()),
        }
    }

    /// The factory to pass to [`SocketIoBuilder::adapter`](crate::SocketIoBuilder::adapter).
    pub fn factory() -> AdapterFactory {
        Arc::new(|ns| Arc::new(InMemoryAdapter::new(ns)) as Arc<dyn Adapter>)
    }

    fn targets(&self, opts: &BroadcastOptions) -> Vec<Socket> {
        self.sockets(opts)
            .iter()
            .filter_map(|id| self.ns.socket(id))
            .collect()
    }
}

impl Adapter for InMemoryAdapter {
    fn add_all(&self, id: &str, rooms: &[String]) {
        lock(&self.state).add(id, rooms);
    }

    fn del(&self, id: &str, room: &str) {
        lock(&self.state).del(id, room);
    }

    fn del_all(&self, id: &str) {
        let mut state = lock(&self.state);
        let Some(rooms) = state.sids.remove(id) else {
            return;
        };
        for room in rooms {
            if let Some(members) = state.rooms.get_mut(&room) {
                members.remove(id);
                if members.is_empty() {
                    state.rooms.remove(&room);
                }
            }
        }
    }

    fn socket_rooms(&self, id: &str) -> Vec<String> {
        let state = lock(&self.state);
        let mut rooms: Vec<String> = state
            .sids
            .get(id)
            .map(|r| r.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    fn rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = lock(&self.state).rooms.keys().cloned().collect();
        rooms.sort();
        rooms
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<String> {
        lock(&self.state).matching(opts)
    }

    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) {
        let encoded = EncodedPacket::new(packet);
        for socket in self.targets(opts) {
            // A failed send closes that client's session; the others still get the packet.
            let _ = socket.send_encoded(&encoded, opts.flags.volatile);
        }
    }

    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Vec<AckResponse>> {
        let timeout = opts
            .flags
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default_timeout);
        let deadline = tokio::time::Instant::now() + timeout;
        let encoded = EncodedPacket::new(packet);
        let id = packet.id.unwrap_or(0);
        let mut pending = Vec::new();
        for socket in self.targets(opts) {
            let rx = socket.register_ack(id);
            let sent = socket.send_encoded(&encoded, opts.flags.volatile);
            pending.push((socket, rx, sent));
        }
        Box::pin(async move {
            let mut out = Vec::with_capacity(pending.len());
            // One shared deadline: waiting for the answers one after the other takes at most
            // `timeout` in total.
            for (socket, rx, sent) in pending {
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
                out.push(AckResponse {
                    socket_id: socket.id().to_owned(),
                    result,
                });
            }
            out
        })
    }

    fn fetch_sockets(&self, opts: &BroadcastOptions) -> BoxFuture<'static, Vec<String>> {
        let ids = self.sockets(opts);
        Box::pin(async move { ids })
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) {
        // One critical section: a socket leaving meanwhile cannot be re-added.
        let mut state = lock(&self.state);
        for id in state.matching(opts) {
            state.add(&id, rooms);
        }
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) {
        let mut state = lock(&self.state);
        for id in state.matching(opts) {
            for room in rooms {
                state.del(&id, room);
            }
        }
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) {
        for socket in self.targets(opts) {
            socket.disconnect(close);
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
        let a = InMemoryAdapter::new(NamespaceRef(Weak::new()));
        a.add_all("s1", &rooms(&["s1", "r1", "r2"]));
        a.add_all("s2", &rooms(&["s2", "r2"]));
        a.add_all("s3", &rooms(&["s3", "r3", "muted"]));
        assert_eq!(sorted(a.sockets(&opts(&[], &[]))), ["s1", "s2", "s3"]);
        // A socket in two targeted rooms is listed once.
        assert_eq!(sorted(a.sockets(&opts(&["r1", "r2"], &[]))), ["s1", "s2"]);
        assert_eq!(sorted(a.sockets(&opts(&["r2"], &["s1"]))), ["s2"]);
        assert_eq!(sorted(a.sockets(&opts(&[], &["muted", "r1"]))), ["s2"]);
        assert!(a.sockets(&opts(&["nobody"], &[])).is_empty());

        a.add_sockets(&opts(&["r2"], &[]), &rooms(&["all"]));
        assert_eq!(sorted(a.sockets(&opts(&["all"], &[]))), ["s1", "s2"]);
        a.del_sockets(&opts(&["all"], &["s2"]), &rooms(&["all"]));
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
    fn options_serialize() {
        let mut o = opts(&["a"], &["b"]);
        o.flags.timeout_ms = Some(500);
        o.flags.volatile = true;
        let json = serde_json::to_string(&o).unwrap();
        let back: BroadcastOptions = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
    }
}
