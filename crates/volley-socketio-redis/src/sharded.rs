//! The sharded protocol of `@socket.io/redis-adapter` 8.x (`createShardedAdapter`, Redis 7
//! sharded pub/sub), which is Node's `ClusterAdapter` message set over `SPUBLISH`/`SSUBSCRIBE`.
//!
//! Channels, with `prefix` = `socket.io` by default: `<prefix>#<nsp>#` for every message,
//! `<prefix>#<nsp>#<room>#` for a broadcast (without acknowledgement) to exactly one public
//! room in the default `dynamic` subscription mode (a server subscribes to the channel of each
//! public room it has members in), and `<prefix>#<nsp>#<uid>#` for the answers to server `uid`.
//! Messages are `{type, data, uid, nsp}`: JSON, or msgpack when they carry binary data. The
//! server count is `PUBSUB SHARDNUMSUB <prefix>#<nsp>#`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use volley_redis::{Message, PublishKind, Publisher, Redis, Subscription, SubscriptionId};
use volley_socketio::adapter::{BoxFuture, InMemoryAdapter};
use volley_socketio::packet::Packet;
use volley_socketio::{
    AckResponse, Adapter, AdapterError, AdapterFactory, BroadcastOptions, NamespaceRef, RoomChange,
    SocketInfo,
};

use crate::cluster::{self, Cluster, MAY_CONTAIN_BINARY, kind};
use crate::msgpack;
use crate::wire::{Requests, cluster_packet_to_node, decode_raw, lock, opts_to_node};

/// Which rooms get their own channel (Node's `subscriptionMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SubscriptionMode {
    /// Two channels per namespace, no room channels.
    Static,
    /// Plus one channel per public room (not a socket's own room): the default.
    #[default]
    Dynamic,
    /// Plus one channel per room, socket rooms included.
    DynamicPrivate,
}

/// Options of the sharded adapter (Node's `ShardedRedisAdapterOptions`).
#[derive(Clone, Debug)]
pub struct ShardedRedisAdapterConfig {
    /// The channel prefix (`"socket.io"`).
    pub channel_prefix: String,
    /// Which rooms get their own channel.
    pub subscription_mode: SubscriptionMode,
    /// How long to wait for the other servers' answers (5 s).
    pub requests_timeout: Duration,
}

impl Default for ShardedRedisAdapterConfig {
    fn default() -> Self {
        ShardedRedisAdapterConfig {
            channel_prefix: "socket.io".into(),
            subscription_mode: SubscriptionMode::Dynamic,
            requests_timeout: volley_socketio::adapter::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

struct Inner {
    local: InMemoryAdapter,
    ns: NamespaceRef,
    redis: Redis,
    publisher: Publisher,
    uid: String,
    config: ShardedRedisAdapterConfig,
    channel: String,
    response_channel: String,
    requests: Arc<Requests>,
    subscriptions: Mutex<Vec<SubscriptionId>>,
    room_subscriptions: Mutex<HashMap<String, SubscriptionId>>,
    handler: Mutex<Option<volley_redis::Handler>>,
}

/// A namespace's adapter speaking the sharded protocol of Node's `@socket.io/redis-adapter`
/// 8.x (`createShardedAdapter`, Redis >= 7): Volley servers and Node servers using it with the
/// same prefix and subscription mode on the same Redis form one cluster.
///
/// Build it through [`ShardedRedisAdapter::factory`]. Malformed or foreign messages are logged
/// (debug) and dropped; Redis going away degrades to local delivery (see [`volley_redis`]).
pub struct ShardedRedisAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ShardedRedisAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedRedisAdapter")
            .field("nsp", &self.inner.ns.name())
            .field("uid", &self.inner.uid)
            .finish()
    }
}

impl ShardedRedisAdapter {
    /// The adapter factory for every namespace of a server, sharing `redis`.
    pub fn factory(redis: Redis, config: ShardedRedisAdapterConfig) -> AdapterFactory {
        let publisher = redis.publisher();
        Arc::new(move |ns| {
            Arc::new(ShardedRedisAdapter::new(
                ns,
                redis.clone(),
                publisher.clone(),
                config.clone(),
            )) as Arc<dyn Adapter>
        })
    }

    fn new(
        ns: NamespaceRef,
        redis: Redis,
        publisher: Publisher,
        config: ShardedRedisAdapterConfig,
    ) -> Self {
        let name = ns.name().to_owned();
        let uid = cluster::random_id();
        let channel = format!("{}#{name}#", config.channel_prefix);
        let response_channel = format!("{channel}{uid}#");
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let rooms_weak = weak.clone();
            let listener = Arc::new(move |changes: &[RoomChange]| {
                if let Some(inner) = rooms_weak.upgrade() {
                    inner.on_room_changes(changes);
                }
            });
            Inner {
                local: InMemoryAdapter::with_room_listener(ns.clone(), listener),
                ns,
                redis: redis.clone(),
                publisher,
                uid,
                config,
                channel,
                response_channel,
                requests: Arc::default(),
                subscriptions: Mutex::new(Vec::new()),
                room_subscriptions: Mutex::new(HashMap::new()),
                handler: Mutex::new(None),
            }
        });
        let weak = Arc::downgrade(&inner);
        let handler: volley_redis::Handler = Arc::new(move |m: Message| {
            if let Some(inner) = Weak::upgrade(&weak) {
                inner.on_raw(m);
            }
        });
        *lock(&inner.handler) = Some(handler.clone());
        let ids = [inner.channel.clone(), inner.response_channel.clone()]
            .into_iter()
            .map(|c| redis.subscribe(Subscription::Shard(c), handler.clone()))
            .collect();
        *lock(&inner.subscriptions) = ids;
        ShardedRedisAdapter { inner }
    }

    /// This server's id in the cluster.
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }
}

/// `{type, data, uid, nsp}`: JSON, or msgpack when it carries binary data (as Node's sharded
/// adapter writes it).
fn encode_message(kind: u64, data: Value, uid: &str, nsp: &str, attachments: &[Bytes]) -> Vec<u8> {
    let msg = json!({"type": kind, "data": data, "uid": uid, "nsp": nsp});
    if !attachments.is_empty() && MAY_CONTAIN_BINARY.contains(&kind) {
        msgpack::encode(&msg, attachments)
    } else {
        serde_json::to_vec(&msg).unwrap_or_default()
    }
}

impl Inner {
    fn uses_room_channel(&self, room: &str, private: bool) -> bool {
        !room.is_empty()
            && match self.config.subscription_mode {
                SubscriptionMode::Static => false,
                SubscriptionMode::Dynamic => !private,
                SubscriptionMode::DynamicPrivate => true,
            }
    }

    fn on_room_changes(&self, changes: &[RoomChange]) {
        let Some(handler) = lock(&self.handler).clone() else {
            return;
        };
        let mut subs = lock(&self.room_subscriptions);
        for c in changes {
            if !self.uses_room_channel(&c.room, c.private) {
                continue;
            }
            if c.created {
                if !subs.contains_key(&c.room) {
                    let channel = format!("{}{}#", self.channel, c.room);
                    let id = self
                        .redis
                        .subscribe(Subscription::Shard(channel), handler.clone());
                    subs.insert(c.room.clone(), id);
                }
            } else if let Some(id) = subs.remove(&c.room) {
                self.redis.unsubscribe(id);
            }
        }
    }

    /// `{type, data, uid, nsp}`, JSON unless it carries binary data.
    fn encode(&self, kind: u64, data: Value, attachments: &[bytes::Bytes]) -> Vec<u8> {
        encode_message(kind, data, &self.uid, self.ns.name(), attachments)
    }

    fn publish_to(
        &self,
        channel: String,
        kind: u64,
        data: Value,
        attachments: &[bytes::Bytes],
    ) -> Result<(), AdapterError> {
        let bytes = self.encode(kind, data, attachments);
        self.publisher
            .send(PublishKind::SPublish, channel, bytes)
            .map_err(|e| AdapterError::Unavailable(e.to_string()))
    }

    fn on_raw(self: &Arc<Self>, m: Message) {
        let decoded = match decode_raw(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                crate::wire::dropped(
                    &m.channel,
                    format_args!("socket.io sharded redis: dropping a malformed message: {e}"),
                );
                return;
            }
        };
        let Some(msg) = decoded.value.as_object() else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io sharded redis: dropping a message that is not an object"),
            );
            return;
        };
        cluster::on_message(self, msg, &decoded.attachments, None);
    }
}

impl Cluster for Inner {
    fn local(&self) -> &InMemoryAdapter {
        &self.local
    }

    fn ns(&self) -> &NamespaceRef {
        &self.ns
    }

    fn uid(&self) -> &str {
        &self.uid
    }

    fn requests(&self) -> &Arc<Requests> {
        &self.requests
    }

    fn requests_timeout(&self) -> Duration {
        self.config.requests_timeout
    }

    fn what(&self) -> &'static str {
        "socket.io sharded redis"
    }

    fn publish(&self, kind: u64, data: Value, attachments: &[Bytes]) -> Result<(), AdapterError> {
        self.publish_to(self.channel.clone(), kind, data, attachments)
    }

    fn respond(&self, requester: &str, kind: u64, data: Value, attachments: &[Bytes]) {
        let channel = format!("{}{requester}#", self.channel);
        if let Err(e) = self.publish_to(channel, kind, data, attachments) {
            tracing::debug!("socket.io sharded redis: cannot answer: {e}");
        }
    }

    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>> {
        let (redis, channel) = (self.redis.clone(), self.channel.clone());
        Box::pin(async move {
            redis
                .shard_numsub(&channel)
                .await
                .map_err(|e| AdapterError::Unavailable(e.to_string()))
        })
    }

    fn deliver_remote(&self, packet: &Packet, opts: &BroadcastOptions, _offset: Option<&str>) {
        self.local.broadcast_local(packet, opts);
    }
}

impl Adapter for ShardedRedisAdapter {
    fn init(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .redis
                .ready(inner.config.requests_timeout)
                .await
                .map_err(|e| AdapterError::Unavailable(e.to_string()))
        })
    }

    fn close(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        let mut ids = std::mem::take(&mut *lock(&self.inner.subscriptions));
        ids.extend(
            lock(&self.inner.room_subscriptions)
                .drain()
                .map(|(_, id)| id),
        );
        *lock(&self.inner.handler) = None;
        for id in ids {
            self.inner.redis.unsubscribe(id);
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>> {
        Cluster::server_count(&*self.inner)
    }

    fn add_all(&self, id: &str, rooms: &[String]) {
        self.inner.local.add_all(id, rooms);
    }

    fn persist_session(&self, session: volley_socketio::recovery::SessionToPersist) {
        // Recovery with this adapter is per server (the client must come back to the same
        // one, as with sticky sessions); Node's Redis adapters do not recover at all.
        self.inner.local.persist_session(session);
    }

    fn restore_session(
        &self,
        pid: &str,
        offset: &str,
    ) -> BoxFuture<'static, Result<Option<volley_socketio::recovery::Session>, AdapterError>> {
        self.inner.local.restore_session(pid, offset)
    }

    fn finish_restore(
        &self,
        sid: &str,
        send: &mut dyn FnMut(volley_socketio::recovery::MissedPacket),
    ) {
        self.inner.local.finish_restore(sid, send);
    }

    fn del(&self, id: &str, room: &str) {
        self.inner.local.del(id, room);
    }

    fn del_all(&self, id: &str) {
        self.inner.local.del_all(id);
    }

    fn socket_rooms(&self, id: &str) -> Vec<String> {
        self.inner.local.socket_rooms(id)
    }

    fn rooms(&self) -> Vec<String> {
        self.inner.local.rooms()
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<String> {
        self.inner.local.sockets(opts)
    }

    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) -> Result<(), AdapterError> {
        let inner = &self.inner;
        let mut result = Ok(());
        if !opts.flags.local {
            let data =
                json!({"packet": cluster_packet_to_node(packet), "opts": opts_to_node(opts, true)});
            // A broadcast to exactly one room goes to that room's channel when it has one (a
            // socket id is a private room: 20 characters, as Node guesses).
            let channel = match (opts.rooms.len(), opts.rooms.iter().next()) {
                (1, Some(room)) if inner.uses_room_channel(room, room.len() == 20) => {
                    format!("{}{room}#", inner.channel)
                }
                _ => inner.channel.clone(),
            };
            result = inner.publish_to(channel, kind::BROADCAST, data, &packet.attachments);
        }
        inner.local.broadcast_local(packet, opts);
        result
    }

    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>> {
        cluster::broadcast_with_ack(&self.inner, packet, opts, default_timeout)
    }

    fn fetch_sockets(
        &self,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>> {
        cluster::fetch_sockets(&self.inner, opts)
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::SOCKETS_JOIN, opts, rooms, false)
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::SOCKETS_LEAVE, opts, rooms, false)
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::DISCONNECT_SOCKETS, opts, &[], close)
    }

    fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), AdapterError> {
        cluster::server_side_emit(&self.inner, event, args)
    }

    fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
    ) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
        cluster::server_side_emit_with_ack(&self.inner, event, args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{cluster_packet_from_node, decode_raw, opts_from_node};

    /// Node's recorded sharded broadcasts, decoded and re-encoded as this adapter publishes
    /// them: the same bytes (JSON, and msgpack with binary data).
    #[test]
    fn sharded_broadcasts_reencode_byte_for_byte() {
        let dir =
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sharded");
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        let mut checked = 0;
        for e in index.as_array().unwrap() {
            let what = e["what"].as_str().unwrap();
            if !what.starts_with("emit-") || what == "emit-with-ack" {
                continue;
            }
            let bytes = std::fs::read(dir.join(e["file"].as_str().unwrap())).unwrap();
            let d = decode_raw(&bytes).unwrap();
            let nsp = d.value["nsp"].as_str().unwrap();
            let packet =
                cluster_packet_from_node(&d.value["data"]["packet"], &d.attachments, nsp).unwrap();
            let opts = opts_from_node(d.value["data"].get("opts")).unwrap();
            let data = json!({"packet": cluster_packet_to_node(&packet), "opts": opts_to_node(&opts, true)});
            let again = encode_message(
                3,
                data,
                d.value["uid"].as_str().unwrap(),
                nsp,
                &packet.attachments,
            );
            assert_eq!(again, bytes, "{what}: {}", String::from_utf8_lossy(&again));
            checked += 1;
        }
        assert!(checked >= 6, "{checked} broadcasts checked");
    }
}
