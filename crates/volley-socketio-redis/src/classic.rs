//! The classic protocol of `@socket.io/redis-adapter` 8.x (`createAdapter`).
//!
//! Channels, with `key` = `socket.io` by default and `nsp` the namespace name:
//!
//! - `<key>#<nsp>#` and `<key>#<nsp>#<room>#` (a broadcast to exactly one room): broadcasts,
//!   msgpack `[uid, packet, {rooms, except, flags}]`; every server `PSUBSCRIBE`s `<key>#<nsp>#*`
//!   and drops room broadcasts for rooms it has no member of;
//! - `<key>-request#<nsp>#`: requests, JSON (`BROADCAST`, which may carry binary data, is
//!   msgpack), `{uid, requestId, type, …}`;
//! - `<key>-response#<nsp>#` (and `<key>-response#<nsp>#<uid>#`, which this adapter listens on
//!   but does not use to answer, as Node by default): answers, JSON (`BROADCAST_ACK` msgpack).
//!
//! The server count is `PUBSUB NUMSUB <key>-request#<nsp>#`.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde_json::{Value, json};
use volley_redis::{Message, PublishKind, Publisher, Redis, Subscription, SubscriptionId};
use volley_socketio::adapter::{BoxFuture, InMemoryAdapter, ack_timeout};
use volley_socketio::packet::Packet;
use volley_socketio::{
    AckError, AckResponse, Adapter, AdapterError, AdapterFactory, BroadcastOptions, NamespaceRef,
    Payload, ServerAck, SocketInfo,
};

use crate::msgpack::{self, Decoded};
use crate::wire::{
    self, RequestGuard, Requests, collect_until, deadline, decode_raw, lock, opts_from_node,
    opts_to_node, packet_from_node, packet_to_node, socket_from_node, socket_to_node,
};

/// Node's request types (`RequestType` of `@socket.io/redis-adapter`).
mod request {
    pub(super) const SOCKETS: u64 = 0;
    pub(super) const ALL_ROOMS: u64 = 1;
    pub(super) const REMOTE_JOIN: u64 = 2;
    pub(super) const REMOTE_LEAVE: u64 = 3;
    pub(super) const REMOTE_DISCONNECT: u64 = 4;
    pub(super) const REMOTE_FETCH: u64 = 5;
    pub(super) const SERVER_SIDE_EMIT: u64 = 6;
    pub(super) const BROADCAST: u64 = 7;
    pub(super) const BROADCAST_CLIENT_COUNT: u64 = 8;
    pub(super) const BROADCAST_ACK: u64 = 9;
}

/// Options of the classic adapter (Node's `RedisAdapterOptions`).
#[derive(Clone, Debug)]
pub struct RedisAdapterConfig {
    /// The channel prefix (`"socket.io"`).
    pub key: String,
    /// How long to wait for the other servers' answers (5 s).
    pub requests_timeout: Duration,
}

impl Default for RedisAdapterConfig {
    fn default() -> Self {
        RedisAdapterConfig {
            key: "socket.io".into(),
            requests_timeout: volley_socketio::adapter::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

struct Channels {
    broadcast: String,
    request: String,
    response: String,
    specific_response: String,
}

struct Inner {
    local: InMemoryAdapter,
    ns: NamespaceRef,
    redis: Redis,
    publisher: Publisher,
    uid: String,
    config: RedisAdapterConfig,
    channels: Channels,
    requests: Arc<Requests>,
    subscriptions: Mutex<Vec<SubscriptionId>>,
}

/// A namespace's adapter speaking the classic protocol of Node's `@socket.io/redis-adapter`
/// 8.x: Volley servers and Node servers using `createAdapter(pub, sub)` with the same key on
/// the same Redis form one cluster.
///
/// Build it through [`RedisAdapter::factory`] and pass that to
/// [`SocketIoBuilder::adapter`](volley_socketio::SocketIoBuilder::adapter). Malformed or foreign
/// messages on its channels are logged (debug) and dropped. When Redis is unreachable, local
/// delivery goes on, cross-server messages are dropped (see [`volley_redis`]), and requests
/// that need the other servers fail with [`AdapterError::Unavailable`].
pub struct RedisAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisAdapter")
            .field("nsp", &self.inner.ns.name())
            .field("uid", &self.inner.uid)
            .finish()
    }
}

impl RedisAdapter {
    /// The adapter factory for every namespace of a server, sharing `redis` (one connection
    /// per server, as Node shares its pub/sub clients).
    pub fn factory(redis: Redis, config: RedisAdapterConfig) -> AdapterFactory {
        let publisher = redis.publisher();
        Arc::new(move |ns| {
            Arc::new(RedisAdapter::new(
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
        config: RedisAdapterConfig,
    ) -> Self {
        let name = ns.name().to_owned();
        let uid = wire::uid(6);
        let key = &config.key;
        let channels = Channels {
            broadcast: format!("{key}#{name}#"),
            request: format!("{key}-request#{name}#"),
            response: format!("{key}-response#{name}#"),
            specific_response: format!("{key}-response#{name}#{uid}#"),
        };
        let inner = Arc::new(Inner {
            local: InMemoryAdapter::new(ns.clone()),
            ns,
            redis: redis.clone(),
            publisher,
            uid,
            config,
            channels,
            requests: Arc::default(),
            subscriptions: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let handler = move |m: Message| {
            if let Some(inner) = Weak::upgrade(&weak) {
                inner.on_message(m);
            }
        };
        let handler: volley_redis::Handler = Arc::new(handler);
        let subs = [
            Subscription::Pattern(format!("{}*", inner.channels.broadcast)),
            Subscription::Channel(inner.channels.request.clone()),
            Subscription::Channel(inner.channels.response.clone()),
            Subscription::Channel(inner.channels.specific_response.clone()),
        ];
        let ids = subs
            .into_iter()
            .map(|s| redis.subscribe(s, handler.clone()))
            .collect();
        *lock(&inner.subscriptions) = ids;
        RedisAdapter { inner }
    }

    /// This server's id in the cluster (Node's `adapter.uid`).
    pub fn uid(&self) -> &str {
        &self.inner.uid
    }
}

impl Inner {
    fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), AdapterError> {
        self.publisher
            .send(PublishKind::Publish, channel, payload)
            .map_err(|e| AdapterError::Unavailable(e.to_string()))
    }

    fn publish_json(&self, channel: String, v: &Value) -> Result<(), AdapterError> {
        let bytes = serde_json::to_vec(v).map_err(|e| AdapterError::Encode(e.to_string()))?;
        self.publish(channel, bytes)
    }

    async fn server_count(&self) -> Result<usize, AdapterError> {
        self.redis
            .numsub(&self.channels.request)
            .await
            .map_err(|e| AdapterError::Unavailable(e.to_string()))
    }

    fn on_message(self: &Arc<Self>, m: Message) {
        if m.channel.starts_with(&self.channels.broadcast) {
            self.on_broadcast(&m);
        } else if m.channel.starts_with(&self.channels.response) {
            self.on_response(&m);
        } else if m.channel == self.channels.request {
            self.on_request(&m);
        }
    }

    fn on_broadcast(&self, m: &Message) {
        let Some(room) = m.channel[self.channels.broadcast.len()..]
            .strip_suffix('#')
            .or((m.channel.len() == self.channels.broadcast.len()).then_some(""))
        else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io redis: ignoring a foreign channel"),
            );
            return;
        };
        if !room.is_empty() && !self.local.has_room(room) {
            return;
        }
        let decoded = match msgpack::decode(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                crate::wire::dropped(
                    &m.channel,
                    format_args!("socket.io redis: dropping a malformed broadcast: {e}"),
                );
                return;
            }
        };
        let Value::Array(items) = &decoded.value else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io redis: dropping a broadcast that is not an array"),
            );
            return;
        };
        let (Some(uid), Some(packet), opts) = (items.first(), items.get(1), items.get(2)) else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io redis: dropping a short broadcast"),
            );
            return;
        };
        if uid.as_str() == Some(self.uid.as_str()) {
            return;
        }
        let Some(packet) = packet_from_node(packet, &decoded.attachments, self.ns.name()) else {
            crate::wire::dropped(
                &m.channel,
                format_args!(
                    "socket.io redis: dropping a broadcast for another namespace or malformed"
                ),
            );
            return;
        };
        let Some(opts) = opts_from_node(opts) else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io redis: dropping a broadcast with malformed options"),
            );
            return;
        };
        self.local.broadcast_local(&packet, &opts);
    }

    fn respond(&self, v: &Value) {
        if let Err(e) = self.publish_json(self.channels.response.clone(), v) {
            tracing::debug!("socket.io redis: cannot answer a request: {e}");
        }
    }

    fn on_request(self: &Arc<Self>, m: &Message) {
        let decoded = match decode_raw(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                crate::wire::dropped(
                    "",
                    format_args!("socket.io redis: dropping a malformed request: {e}"),
                );
                return;
            }
        };
        let Some(req) = decoded.value.as_object() else {
            crate::wire::dropped(
                "",
                format_args!("socket.io redis: dropping a request that is not an object"),
            );
            return;
        };
        let request_id = req.get("requestId").and_then(Value::as_str);
        let from_self = req.get("uid").and_then(Value::as_str) == Some(self.uid.as_str());
        let Some(kind) = req.get("type").and_then(Value::as_u64) else {
            crate::wire::dropped(
                "",
                format_args!("socket.io redis: dropping a request without a type"),
            );
            return;
        };
        match kind {
            request::SOCKETS | request::ALL_ROOMS | request::REMOTE_FETCH => {
                let Some(id) = request_id else { return };
                if from_self || self.requests.contains(id) {
                    return;
                }
                let answer = match kind {
                    request::SOCKETS => {
                        let Some(opts) = opts_from_node(Some(&json!({"rooms": req.get("rooms")})))
                        else {
                            return;
                        };
                        json!({"requestId": id, "sockets": self.local.sockets(&opts)})
                    }
                    request::ALL_ROOMS => json!({"requestId": id, "rooms": self.local.rooms()}),
                    _ => {
                        let Some(opts) = opts_from_node(req.get("opts")) else {
                            crate::wire::dropped(
                                "",
                                format_args!(
                                    "socket.io redis: dropping a fetch with malformed options"
                                ),
                            );
                            return;
                        };
                        let sockets: Vec<Value> = self
                            .local
                            .fetch_local(&opts)
                            .iter()
                            .map(socket_to_node)
                            .collect();
                        json!({"requestId": id, "sockets": sockets})
                    }
                };
                self.respond(&answer);
            }
            request::REMOTE_JOIN | request::REMOTE_LEAVE | request::REMOTE_DISCONNECT => {
                if from_self {
                    return;
                }
                self.on_remote_bulk(kind, req, request_id);
            }
            request::SERVER_SIDE_EMIT => {
                if from_self {
                    return;
                }
                let Some(Value::Array(data)) = req.get("data") else {
                    crate::wire::dropped(
                        "",
                        format_args!("socket.io redis: dropping a server-side emit without data"),
                    );
                    return;
                };
                let mut data = data.clone();
                if data.is_empty() {
                    return;
                }
                let event = match data.remove(0) {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let Some(ns) = self.ns.upgrade() else { return };
                let ack = request_id.map(|id| {
                    let inner = Arc::downgrade(self);
                    let id = id.to_owned();
                    ServerAck::new(move |value| {
                        if let Some(inner) = inner.upgrade() {
                            inner.respond(&json!({
                                "type": request::SERVER_SIDE_EMIT,
                                "requestId": id,
                                "data": value,
                            }));
                        }
                    })
                });
                ns.dispatch_server_side_emit(&event, data, ack);
            }
            request::BROADCAST => {
                let Some(id) = request_id else { return };
                if from_self || self.requests.contains(id) {
                    return;
                }
                self.on_remote_broadcast_with_ack(id, req, &decoded);
            }
            other => {
                crate::wire::dropped(
                    "",
                    format_args!("socket.io redis: ignoring a request of unknown type {other}"),
                );
            }
        }
    }

    fn on_remote_bulk(
        &self,
        kind: u64,
        req: &serde_json::Map<String, Value>,
        request_id: Option<&str>,
    ) {
        if req.get("opts").is_some() {
            let Some(opts) = opts_from_node(req.get("opts")) else {
                crate::wire::dropped(
                    "",
                    format_args!("socket.io redis: dropping a bulk request with malformed options"),
                );
                return;
            };
            match kind {
                request::REMOTE_DISCONNECT => {
                    let close = req.get("close").and_then(Value::as_bool).unwrap_or(false);
                    self.local.disconnect_sockets_local(&opts, close);
                }
                _ => {
                    let Some(rooms) = room_list(req.get("rooms")) else {
                        crate::wire::dropped(
                            "",
                            format_args!("socket.io redis: dropping a join/leave without rooms"),
                        );
                        return;
                    };
                    if kind == request::REMOTE_JOIN {
                        self.local.add_sockets_local(&opts, &rooms);
                    } else {
                        self.local.del_sockets_local(&opts, &rooms);
                    }
                }
            }
            return;
        }
        // The older single-socket form: {sid, room | close, requestId}.
        let Some(sid) = req.get("sid").and_then(Value::as_str) else {
            return;
        };
        let Some(socket) = self.ns.socket(sid) else {
            return;
        };
        match kind {
            request::REMOTE_DISCONNECT => {
                socket.disconnect(req.get("close").and_then(Value::as_bool).unwrap_or(false));
            }
            _ => {
                let Some(room) = req.get("room").and_then(Value::as_str) else {
                    return;
                };
                if kind == request::REMOTE_JOIN {
                    socket.join(room);
                } else {
                    socket.leave(room);
                }
            }
        }
        if let Some(id) = request_id {
            self.respond(&json!({ "requestId": id }));
        }
    }

    fn on_remote_broadcast_with_ack(
        self: &Arc<Self>,
        request_id: &str,
        req: &serde_json::Map<String, Value>,
        decoded: &Decoded,
    ) {
        let Some(ns) = self.ns.upgrade() else { return };
        let Some(mut packet) = req
            .get("packet")
            .and_then(|p| packet_from_node(p, &decoded.attachments, self.ns.name()))
        else {
            crate::wire::dropped(
                "",
                format_args!(
                    "socket.io redis: dropping a broadcast-with-ack with a malformed packet"
                ),
            );
            return;
        };
        let Some(opts) = opts_from_node(req.get("opts")) else {
            crate::wire::dropped(
                "",
                format_args!(
                    "socket.io redis: dropping a broadcast-with-ack with malformed options"
                ),
            );
            return;
        };
        // As Node: this server's own ack id for the packet.
        packet.id = Some(ns.next_ack_id());
        let pending = self.local.start_broadcast_with_ack(&packet, &opts);
        self.respond(&json!({
            "type": request::BROADCAST_CLIENT_COUNT,
            "requestId": request_id,
            "clientCount": pending.len(),
        }));
        if pending.is_empty() {
            return;
        }
        let until = deadline(ack_timeout(&opts, self.config.requests_timeout));
        let inner = Arc::downgrade(self);
        let id = request_id.to_owned();
        tokio::spawn(pending.for_each(until, move |r| {
            let (Some(inner), Ok(payload)) = (inner.upgrade(), r.result) else {
                return;
            };
            let msg = json!({
                "type": request::BROADCAST_ACK,
                "requestId": id,
                "packet": wire::first_ack_arg(&payload),
            });
            let bytes = msgpack::encode(&msg, &payload.attachments);
            if let Err(e) = inner.publish(inner.channels.response.clone(), bytes) {
                tracing::debug!("socket.io redis: cannot relay an acknowledgement: {e}");
            }
        }));
    }

    fn on_response(&self, m: &Message) {
        let decoded = match decode_raw(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                crate::wire::dropped(
                    "",
                    format_args!("socket.io redis: dropping a malformed response: {e}"),
                );
                return;
            }
        };
        let Some(id) = decoded
            .value
            .get("requestId")
            .and_then(Value::as_str)
            .map(str::to_owned)
        else {
            return;
        };
        // Answers to other servers' requests are not ours.
        self.requests.answer(&id, decoded);
    }

    fn register(&self) -> (String, RequestGuard, tokio::sync::mpsc::Receiver<Decoded>) {
        let id = wire::uid(6);
        let (guard, rx) = self.requests.register(&id);
        (id, guard, rx)
    }
}

fn room_list(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => items
            .iter()
            .map(|r| match r {
                Value::String(s) => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

impl Adapter for RedisAdapter {
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
        let ids = std::mem::take(&mut *lock(&self.inner.subscriptions));
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
            let msg = json!([inner.uid, packet_to_node(packet), opts_to_node(opts, true)]);
            let bytes = msgpack::encode(&msg, &packet.attachments);
            let mut channel = inner.channels.broadcast.clone();
            if opts.rooms.len() == 1
                && let Some(room) = opts.rooms.iter().next()
            {
                channel.push_str(room);
                channel.push('#');
            }
            result = inner.publish(channel, bytes);
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
        let (id, guard, mut rx) = inner.register();
        let mut node_packet = packet_to_node(packet);
        if let Some(obj) = node_packet.as_object_mut() {
            obj.remove("id");
        }
        let request = json!({
            "uid": inner.uid,
            "requestId": id,
            "type": request::BROADCAST,
            "packet": node_packet,
            "opts": opts_to_node(opts, true),
        });
        let published = inner.publish(
            inner.channels.request.clone(),
            msgpack::encode(&request, &packet.attachments),
        );
        let pending = inner.local.start_broadcast_with_ack(packet, opts);
        Box::pin(async move {
            let _guard = guard;
            published?;
            let servers = inner.server_count().await?;
            let remote_servers = servers.saturating_sub(1);
            let local = tokio::spawn(pending.collect(until));
            let mut counted = 0usize;
            let mut expected = 0usize;
            let mut remote: Vec<AckResponse> = Vec::new();
            let complete = |counted: usize, expected: usize, got: usize| {
                counted >= remote_servers && got >= expected
            };
            let done = complete(0, 0, 0)
                || collect_until(&mut rx, until, |answer| {
                    match answer.value.get("type").and_then(Value::as_u64) {
                        Some(request::BROADCAST_CLIENT_COUNT) => {
                            counted += 1;
                            expected += answer
                                .value
                                .get("clientCount")
                                .and_then(Value::as_u64)
                                .unwrap_or(0) as usize;
                        }
                        Some(request::BROADCAST_ACK) => {
                            let arg = answer.value.get("packet").cloned().unwrap_or(Value::Null);
                            remote.push(AckResponse {
                                socket_id: None,
                                result: Ok(Payload::with_attachments(
                                    vec![arg],
                                    answer.attachments,
                                )),
                            });
                        }
                        _ => {}
                    }
                    complete(counted, expected, remote.len())
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
            let servers = inner.server_count().await?;
            if servers <= 1 {
                return Ok(local);
            }
            let (id, _guard, mut rx) = inner.register();
            inner.publish_json(
                inner.channels.request.clone(),
                &json!({
                    "uid": inner.uid,
                    "requestId": id,
                    "type": request::REMOTE_FETCH,
                    "opts": opts_to_node(&opts, false),
                }),
            )?;
            let mut sockets = local;
            let mut answers = 1usize;
            let done = collect_until(&mut rx, deadline(inner.config.requests_timeout), |a| {
                if let Some(Value::Array(list)) = a.value.get("sockets") {
                    answers += 1;
                    sockets.extend(list.iter().filter_map(socket_from_node));
                }
                answers >= servers
            })
            .await;
            if !done {
                return Err(AdapterError::Timeout {
                    received: answers,
                    expected: servers,
                });
            }
            Ok(sockets)
        })
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.inner.local.add_sockets_local(opts, rooms);
        self.bulk(request::REMOTE_JOIN, opts, json!({ "rooms": rooms }))
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        self.inner.local.del_sockets_local(opts, rooms);
        self.bulk(request::REMOTE_LEAVE, opts, json!({ "rooms": rooms }))
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError> {
        // Publish first: the local disconnections may take long (handlers).
        let result = self.bulk(request::REMOTE_DISCONNECT, opts, json!({ "close": close }));
        self.inner.local.disconnect_sockets_local(opts, close);
        result
    }

    fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), AdapterError> {
        let mut data = vec![json!(event)];
        data.extend_from_slice(args);
        self.inner.publish_json(
            self.inner.channels.request.clone(),
            &json!({"uid": self.inner.uid, "type": request::SERVER_SIDE_EMIT, "data": data}),
        )
    }

    fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
    ) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
        let inner = self.inner.clone();
        let mut data = vec![json!(event)];
        data.extend_from_slice(args);
        Box::pin(async move {
            let others = inner.server_count().await?.saturating_sub(1);
            if others == 0 {
                return Ok(Vec::new());
            }
            let (id, _guard, mut rx) = inner.register();
            inner.publish_json(
                inner.channels.request.clone(),
                &json!({
                    "uid": inner.uid,
                    "requestId": id,
                    "type": request::SERVER_SIDE_EMIT,
                    "data": data,
                }),
            )?;
            let mut answers = Vec::new();
            let done = collect_until(&mut rx, deadline(inner.config.requests_timeout), |a| {
                if a.value.get("type").and_then(Value::as_u64) == Some(request::SERVER_SIDE_EMIT) {
                    answers.push(a.value.get("data").cloned().unwrap_or(Value::Null));
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

impl RedisAdapter {
    fn bulk(&self, kind: u64, opts: &BroadcastOptions, extra: Value) -> Result<(), AdapterError> {
        if opts.flags.local {
            return Ok(());
        }
        let mut req = json!({
            "uid": self.inner.uid,
            "type": kind,
            "opts": opts_to_node(opts, false),
        });
        if let (Some(obj), Value::Object(extra)) = (req.as_object_mut(), extra) {
            obj.extend(extra);
        }
        self.inner
            .publish_json(self.inner.channels.request.clone(), &req)
    }
}
