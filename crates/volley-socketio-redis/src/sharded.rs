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

use serde_json::{Map, Value, json};
use volley_redis::{Message, PublishKind, Publisher, Redis, Subscription, SubscriptionId};
use volley_socketio::adapter::{BoxFuture, InMemoryAdapter, ack_timeout};
use volley_socketio::packet::Packet;
use volley_socketio::{
    AckError, AckResponse, Adapter, AdapterError, AdapterFactory, BroadcastOptions, NamespaceRef,
    Payload, RoomChange, ServerAck, SocketInfo,
};

use crate::msgpack::{self, Decoded};
use crate::wire::{
    self, Requests, collect_until, deadline, decode_raw, lock, opts_from_node, opts_to_node,
    packet_from_node, packet_to_node, socket_from_node, socket_to_node,
};

/// Node's `MessageType` of `socket.io-adapter`'s `ClusterAdapter`.
mod kind {
    pub(super) const BROADCAST: u64 = 3;
    pub(super) const SOCKETS_JOIN: u64 = 4;
    pub(super) const SOCKETS_LEAVE: u64 = 5;
    pub(super) const DISCONNECT_SOCKETS: u64 = 6;
    pub(super) const FETCH_SOCKETS: u64 = 7;
    pub(super) const FETCH_SOCKETS_RESPONSE: u64 = 8;
    pub(super) const SERVER_SIDE_EMIT: u64 = 9;
    pub(super) const SERVER_SIDE_EMIT_RESPONSE: u64 = 10;
    pub(super) const BROADCAST_CLIENT_COUNT: u64 = 11;
    pub(super) const BROADCAST_ACK: u64 = 12;
}

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

fn random_uid() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        let uid = random_uid();
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

/// Message types whose data may hold binary data (then sent as msgpack).
const MAY_CONTAIN_BINARY: [u64; 5] = [
    kind::BROADCAST,
    kind::BROADCAST_ACK,
    kind::FETCH_SOCKETS_RESPONSE,
    kind::SERVER_SIDE_EMIT,
    kind::SERVER_SIDE_EMIT_RESPONSE,
];

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
        let msg = json!({"type": kind, "data": data, "uid": self.uid, "nsp": self.ns.name()});
        if !attachments.is_empty() && MAY_CONTAIN_BINARY.contains(&kind) {
            msgpack::encode(&msg, attachments)
        } else {
            serde_json::to_vec(&msg).unwrap_or_default()
        }
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

    fn publish(
        &self,
        kind: u64,
        data: Value,
        attachments: &[bytes::Bytes],
    ) -> Result<(), AdapterError> {
        self.publish_to(self.channel.clone(), kind, data, attachments)
    }

    fn respond(&self, requester: &str, kind: u64, data: Value, attachments: &[bytes::Bytes]) {
        let channel = format!("{}{requester}#", self.channel);
        if let Err(e) = self.publish_to(channel, kind, data, attachments) {
            tracing::debug!("socket.io sharded redis: cannot answer: {e}");
        }
    }

    async fn server_count(&self) -> Result<usize, AdapterError> {
        self.redis
            .shard_numsub(&self.channel)
            .await
            .map_err(|e| AdapterError::Unavailable(e.to_string()))
    }

    fn on_raw(self: &Arc<Self>, m: Message) {
        let decoded = match decode_raw(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(
                    channel = m.channel,
                    "socket.io sharded redis: dropping a malformed message: {e}"
                );
                return;
            }
        };
        let Some(msg) = decoded.value.as_object() else {
            tracing::debug!(
                channel = m.channel,
                "socket.io sharded redis: dropping a message that is not an object"
            );
            return;
        };
        let uid = msg.get("uid").and_then(Value::as_str).unwrap_or_default();
        if uid == self.uid {
            return;
        }
        if msg.get("nsp").and_then(Value::as_str) != Some(self.ns.name()) {
            tracing::debug!(
                channel = m.channel,
                "socket.io sharded redis: ignoring a message of another namespace"
            );
            return;
        }
        let (Some(kind), Some(data)) = (
            msg.get("type").and_then(Value::as_u64),
            msg.get("data").and_then(Value::as_object),
        ) else {
            tracing::debug!(
                channel = m.channel,
                "socket.io sharded redis: dropping a message without type or data"
            );
            return;
        };
        let request_id = data.get("requestId").and_then(Value::as_str);
        match kind {
            kind::BROADCAST => {
                let Some(packet) = data
                    .get("packet")
                    .and_then(|p| packet_from_node(p, &decoded.attachments, self.ns.name()))
                else {
                    tracing::debug!(
                        "socket.io sharded redis: dropping a broadcast with a malformed packet"
                    );
                    return;
                };
                let Some(opts) = opts_from_node(data.get("opts")) else {
                    tracing::debug!(
                        "socket.io sharded redis: dropping a broadcast with malformed options"
                    );
                    return;
                };
                match request_id {
                    None => self.local.broadcast_local(&packet, &opts),
                    Some(id) => self.on_broadcast_with_ack(uid, id, packet, &opts),
                }
            }
            kind::SOCKETS_JOIN | kind::SOCKETS_LEAVE => {
                let (Some(opts), Some(rooms)) = (
                    opts_from_node(data.get("opts")),
                    room_list(data.get("rooms")),
                ) else {
                    tracing::debug!("socket.io sharded redis: dropping a malformed join/leave");
                    return;
                };
                if kind == kind::SOCKETS_JOIN {
                    self.local.add_sockets_local(&opts, &rooms);
                } else {
                    self.local.del_sockets_local(&opts, &rooms);
                }
            }
            kind::DISCONNECT_SOCKETS => {
                let Some(opts) = opts_from_node(data.get("opts")) else {
                    tracing::debug!("socket.io sharded redis: dropping a malformed disconnect");
                    return;
                };
                let close = data.get("close").and_then(Value::as_bool).unwrap_or(false);
                self.local.disconnect_sockets_local(&opts, close);
            }
            kind::FETCH_SOCKETS => {
                let (Some(id), Some(opts)) = (request_id, opts_from_node(data.get("opts"))) else {
                    tracing::debug!("socket.io sharded redis: dropping a malformed fetch");
                    return;
                };
                let sockets: Vec<Value> = self
                    .local
                    .fetch_local(&opts)
                    .iter()
                    .map(socket_to_node)
                    .collect();
                self.respond(
                    uid,
                    kind::FETCH_SOCKETS_RESPONSE,
                    json!({"requestId": id, "sockets": sockets}),
                    &[],
                );
            }
            kind::SERVER_SIDE_EMIT => {
                let Some(Value::Array(packet)) = data.get("packet") else {
                    tracing::debug!(
                        "socket.io sharded redis: dropping a server-side emit without packet"
                    );
                    return;
                };
                let mut args = packet.clone();
                if args.is_empty() {
                    return;
                }
                let event = match args.remove(0) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let Some(ns) = self.ns.upgrade() else { return };
                let ack = request_id.map(|id| {
                    let inner = Arc::downgrade(self);
                    let (id, requester) = (id.to_owned(), uid.to_owned());
                    ServerAck::new(move |value| {
                        if let Some(inner) = inner.upgrade() {
                            inner.respond(
                                &requester,
                                kind::SERVER_SIDE_EMIT_RESPONSE,
                                json!({"requestId": id, "packet": value}),
                                &[],
                            );
                        }
                    })
                });
                ns.dispatch_server_side_emit(&event, args, ack);
            }
            kind::FETCH_SOCKETS_RESPONSE
            | kind::SERVER_SIDE_EMIT_RESPONSE
            | kind::BROADCAST_CLIENT_COUNT
            | kind::BROADCAST_ACK => {
                if let Some(id) = request_id {
                    let mut answer = Map::new();
                    answer.insert("type".into(), json!(kind));
                    answer.insert("data".into(), Value::Object(data.clone()));
                    self.requests.answer(
                        id,
                        Decoded {
                            value: Value::Object(answer),
                            attachments: decoded.attachments.clone(),
                        },
                    );
                }
            }
            // Heartbeats and ADAPTER_CLOSE are for the heartbeat-based adapters.
            other => tracing::debug!("socket.io sharded redis: ignoring message type {other}"),
        }
    }

    fn on_broadcast_with_ack(
        self: &Arc<Self>,
        requester: &str,
        request_id: &str,
        mut packet: Packet,
        opts: &BroadcastOptions,
    ) {
        let Some(ns) = self.ns.upgrade() else { return };
        packet.id = Some(ns.next_ack_id());
        let pending = self.local.start_broadcast_with_ack(&packet, opts);
        self.respond(
            requester,
            kind::BROADCAST_CLIENT_COUNT,
            json!({"requestId": request_id, "clientCount": pending.len()}),
            &[],
        );
        if pending.is_empty() {
            return;
        }
        let until = deadline(ack_timeout(opts, self.config.requests_timeout));
        let inner = Arc::downgrade(self);
        let (id, requester) = (request_id.to_owned(), requester.to_owned());
        tokio::spawn(pending.for_each(until, move |r| {
            let (Some(inner), Ok(payload)) = (inner.upgrade(), r.result) else {
                return;
            };
            inner.respond(
                &requester,
                kind::BROADCAST_ACK,
                json!({"requestId": id, "packet": wire::first_ack_arg(&payload)}),
                &payload.attachments,
            );
        }));
    }
}

fn room_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|r| r.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    }
}

fn data_of(answer: &Decoded) -> &Value {
    answer.value.get("data").unwrap_or(&Value::Null)
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
        let inner = self.inner.clone();
        Box::pin(async move { inner.server_count().await })
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
            let data = json!({"packet": packet_to_node(packet), "opts": opts_to_node(opts, true)});
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
        let inner = self.inner.clone();
        let until = deadline(ack_timeout(opts, default_timeout));
        if opts.flags.local {
            let pending = inner.local.start_broadcast_with_ack(packet, opts);
            return Box::pin(async move { Ok(pending.collect(until).await) });
        }
        let request_id = random_uid();
        let (guard, mut rx) = inner.requests.register(&request_id);
        let mut node_packet = packet_to_node(packet);
        if let Some(obj) = node_packet.as_object_mut() {
            obj.remove("id");
        }
        let published = inner.publish(
            kind::BROADCAST,
            json!({"packet": node_packet, "requestId": request_id, "opts": opts_to_node(opts, true)}),
            &packet.attachments,
        );
        let pending = inner.local.start_broadcast_with_ack(packet, opts);
        Box::pin(async move {
            let _guard = guard;
            published?;
            let servers = inner.server_count().await?;
            let remote_servers = servers.saturating_sub(1);
            let local = tokio::spawn(pending.collect(until));
            let (mut counted, mut expected) = (0usize, 0usize);
            let mut remote: Vec<AckResponse> = Vec::new();
            let done = remote_servers == 0
                || collect_until(&mut rx, until, |answer| {
                    let data = data_of(&answer);
                    match answer.value.get("type").and_then(Value::as_u64) {
                        Some(kind::BROADCAST_CLIENT_COUNT) => {
                            counted += 1;
                            expected += data.get("clientCount").and_then(Value::as_u64).unwrap_or(0)
                                as usize;
                        }
                        Some(kind::BROADCAST_ACK) => {
                            let arg = data.get("packet").cloned().unwrap_or(Value::Null);
                            remote.push(AckResponse {
                                socket_id: None,
                                result: Ok(Payload::with_attachments(
                                    vec![arg],
                                    answer.attachments.clone(),
                                )),
                            });
                        }
                        _ => {}
                    }
                    counted >= remote_servers && remote.len() >= expected
                })
                .await;
            let mut out = local
                .await
                .map_err(|e| AdapterError::Unavailable(format!("ack collection failed: {e}")))?;
            if !done && counted < remote_servers {
                return Err(AdapterError::Timeout {
                    received: counted + 1,
                    expected: servers,
                });
            }
            for _ in remote.len()..expected {
                remote.push(AckResponse {
                    socket_id: None,
                    result: Err(AckError::Timeout),
                });
            }
            out.extend(remote);
            Ok(out)
        })
    }

    fn fetch_sockets(
        &self,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>> {
        let inner = self.inner.clone();
        let local = inner.local.fetch_local(opts);
        if opts.flags.local {
            return Box::pin(std::future::ready(Ok(local)));
        }
        let opts = opts.clone();
        Box::pin(async move {
            let others = inner.server_count().await?.saturating_sub(1);
            if others == 0 {
                return Ok(local);
            }
            let request_id = random_uid();
            let (_guard, mut rx) = inner.requests.register(&request_id);
            inner.publish(
                kind::FETCH_SOCKETS,
                json!({"opts": opts_to_node(&opts, true), "requestId": request_id}),
                &[],
            )?;
            let mut sockets = local;
            let mut answers = 0usize;
            let done = collect_until(&mut rx, deadline(inner.config.requests_timeout), |a| {
                if let Some(Value::Array(list)) = data_of(&a).get("sockets") {
                    answers += 1;
                    sockets.extend(list.iter().filter_map(socket_from_node));
                }
                answers >= others
            })
            .await;
            if !done {
                return Err(AdapterError::Timeout {
                    received: answers,
                    expected: others,
                });
            }
            Ok(sockets)
        })
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.inner.local.add_sockets_local(opts, rooms);
        if opts.flags.local {
            return Ok(());
        }
        self.inner.publish(
            kind::SOCKETS_JOIN,
            json!({"opts": opts_to_node(opts, true), "rooms": rooms}),
            &[],
        )
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.inner.local.del_sockets_local(opts, rooms);
        if opts.flags.local {
            return Ok(());
        }
        self.inner.publish(
            kind::SOCKETS_LEAVE,
            json!({"opts": opts_to_node(opts, true), "rooms": rooms}),
            &[],
        )
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError> {
        let result = if opts.flags.local {
            Ok(())
        } else {
            self.inner.publish(
                kind::DISCONNECT_SOCKETS,
                json!({"opts": opts_to_node(opts, true), "close": close}),
                &[],
            )
        };
        self.inner.local.disconnect_sockets_local(opts, close);
        result
    }

    fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), AdapterError> {
        let mut packet = vec![json!(event)];
        packet.extend_from_slice(args);
        self.inner
            .publish(kind::SERVER_SIDE_EMIT, json!({ "packet": packet }), &[])
    }

    fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
    ) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
        let inner = self.inner.clone();
        let mut packet = vec![json!(event)];
        packet.extend_from_slice(args);
        Box::pin(async move {
            let others = inner.server_count().await?.saturating_sub(1);
            if others == 0 {
                return Ok(Vec::new());
            }
            let request_id = random_uid();
            let (_guard, mut rx) = inner.requests.register(&request_id);
            inner.publish(
                kind::SERVER_SIDE_EMIT,
                json!({"requestId": request_id, "packet": packet}),
                &[],
            )?;
            let mut answers = Vec::new();
            let done = collect_until(&mut rx, deadline(inner.config.requests_timeout), |a| {
                if a.value.get("type").and_then(Value::as_u64)
                    == Some(kind::SERVER_SIDE_EMIT_RESPONSE)
                {
                    answers.push(data_of(&a).get("packet").cloned().unwrap_or(Value::Null));
                }
                answers.len() >= others
            })
            .await;
            if !done {
                return Err(AdapterError::Timeout {
                    received: answers.len(),
                    expected: others,
                });
            }
            Ok(answers)
        })
    }
}
