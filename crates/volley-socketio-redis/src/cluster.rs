//! Node's `ClusterAdapter` (socket.io-adapter): the message set and request logic shared by the
//! sharded Redis adapter and the Redis streams adapter, over a transport each provides.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use volley_socketio::adapter::{BoxFuture, InMemoryAdapter, ack_timeout};
use volley_socketio::packet::Packet;
use volley_socketio::{
    AckError, AckResponse, AdapterError, BroadcastOptions, NamespaceRef, Payload, ServerAck,
    SocketInfo,
};

use crate::msgpack::Decoded;
use crate::wire::{
    self, Requests, cluster_packet_from_node, cluster_packet_to_node, collect_until, deadline,
    opts_from_node, opts_to_node, socket_from_node, socket_to_node,
};

/// Node's `MessageType` of `socket.io-adapter`'s `ClusterAdapter`.
pub(crate) mod kind {
    pub(crate) const BROADCAST: u64 = 3;
    pub(crate) const SOCKETS_JOIN: u64 = 4;
    pub(crate) const SOCKETS_LEAVE: u64 = 5;
    pub(crate) const DISCONNECT_SOCKETS: u64 = 6;
    pub(crate) const FETCH_SOCKETS: u64 = 7;
    pub(crate) const FETCH_SOCKETS_RESPONSE: u64 = 8;
    pub(crate) const SERVER_SIDE_EMIT: u64 = 9;
    pub(crate) const SERVER_SIDE_EMIT_RESPONSE: u64 = 10;
    pub(crate) const BROADCAST_CLIENT_COUNT: u64 = 11;
    pub(crate) const BROADCAST_ACK: u64 = 12;
}

/// Message types whose data may hold binary data.
pub(crate) const MAY_CONTAIN_BINARY: [u64; 5] = [
    kind::BROADCAST,
    kind::BROADCAST_ACK,
    kind::FETCH_SOCKETS_RESPONSE,
    kind::SERVER_SIDE_EMIT,
    kind::SERVER_SIDE_EMIT_RESPONSE,
];

/// A random server or request id: 16 hex digits (Node's `randomBytes(8).toString("hex")`).
pub(crate) fn random_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What a `ClusterAdapter` transport provides.
pub(crate) trait Cluster: Send + Sync + 'static {
    /// The local rooms and sockets.
    fn local(&self) -> &InMemoryAdapter;
    /// The namespace.
    fn ns(&self) -> &NamespaceRef;
    /// This server's id.
    fn uid(&self) -> &str;
    /// The pending requests of this server.
    fn requests(&self) -> &Arc<Requests>;
    /// How long to wait for the other servers.
    fn requests_timeout(&self) -> Duration;
    /// A short name for log lines.
    fn what(&self) -> &'static str;
    /// Sends `{type, data, uid, nsp}` to every server.
    fn publish(&self, kind: u64, data: Value, attachments: &[Bytes]) -> Result<(), AdapterError>;
    /// Sends an answer to server `requester`.
    fn respond(&self, requester: &str, kind: u64, data: Value, attachments: &[Bytes]);
    /// How many servers the cluster has.
    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>>;
    /// Delivers a broadcast of another server to the local sockets (`offset`: its stream id).
    fn deliver_remote(&self, packet: &Packet, opts: &BroadcastOptions, offset: Option<&str>);
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

fn data_of(answer: &Decoded) -> &Value {
    answer.value.get("data").unwrap_or(&Value::Null)
}

/// Handles one decoded message `{type, data, uid, nsp}` (`offset`: its stream id, if any).
pub(crate) fn on_message<C: Cluster>(
    c: &Arc<C>,
    msg: &Map<String, Value>,
    attachments: &[Bytes],
    offset: Option<&str>,
) {
    let what = c.what();
    let uid = msg.get("uid").and_then(Value::as_str).unwrap_or_default();
    if uid == c.uid() {
        return;
    }
    if msg.get("nsp").and_then(Value::as_str) != Some(c.ns().name()) {
        crate::wire::dropped(
            "",
            format_args!("{what}: ignoring a message of another namespace"),
        );
        return;
    }
    // The type is a number on pub/sub and a string in a stream entry.
    let kind = match msg.get("type") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    let (Some(kind), Some(data)) = (kind, msg.get("data").and_then(Value::as_object)) else {
        crate::wire::dropped(
            "",
            format_args!("{what}: dropping a message without type or data"),
        );
        return;
    };
    let request_id = data.get("requestId").and_then(Value::as_str);
    match kind {
        kind::BROADCAST => {
            let Some(packet) = data
                .get("packet")
                .and_then(|p| cluster_packet_from_node(p, attachments, c.ns().name()))
            else {
                crate::wire::dropped(
                    "",
                    format_args!("{what}: dropping a broadcast with a malformed packet"),
                );
                return;
            };
            let Some(opts) = opts_from_node(data.get("opts")) else {
                crate::wire::dropped(
                    "",
                    format_args!("{what}: dropping a broadcast with malformed options"),
                );
                return;
            };
            match request_id {
                None => c.deliver_remote(&packet, &opts, offset),
                Some(id) => on_broadcast_with_ack(c, uid, id, packet, &opts),
            }
        }
        kind::SOCKETS_JOIN | kind::SOCKETS_LEAVE => {
            let (Some(opts), Some(rooms)) = (
                opts_from_node(data.get("opts")),
                room_list(data.get("rooms")),
            ) else {
                crate::wire::dropped("", format_args!("{what}: dropping a malformed join/leave"));
                return;
            };
            if kind == kind::SOCKETS_JOIN {
                c.local().add_sockets_local(&opts, &rooms);
            } else {
                c.local().del_sockets_local(&opts, &rooms);
            }
        }
        kind::DISCONNECT_SOCKETS => {
            let Some(opts) = opts_from_node(data.get("opts")) else {
                crate::wire::dropped("", format_args!("{what}: dropping a malformed disconnect"));
                return;
            };
            let close = data.get("close").and_then(Value::as_bool).unwrap_or(false);
            c.local().disconnect_sockets_local(&opts, close);
        }
        kind::FETCH_SOCKETS => {
            let (Some(id), Some(opts)) = (request_id, opts_from_node(data.get("opts"))) else {
                crate::wire::dropped("", format_args!("{what}: dropping a malformed fetch"));
                return;
            };
            let sockets: Vec<Value> = c
                .local()
                .fetch_local(&opts)
                .iter()
                .map(socket_to_node)
                .collect();
            c.respond(
                uid,
                kind::FETCH_SOCKETS_RESPONSE,
                json!({"requestId": id, "sockets": sockets}),
                &[],
            );
        }
        kind::SERVER_SIDE_EMIT => {
            let Some(Value::Array(packet)) = data.get("packet") else {
                crate::wire::dropped(
                    "",
                    format_args!("{what}: dropping a server-side emit without packet"),
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
            let Some(ns) = c.ns().upgrade() else { return };
            let ack = request_id.map(|id| {
                let weak = Arc::downgrade(c);
                let (id, requester) = (id.to_owned(), uid.to_owned());
                ServerAck::new(move |value| {
                    if let Some(c) = weak.upgrade() {
                        c.respond(
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
                c.requests().answer(
                    id,
                    Decoded {
                        value: Value::Object(answer),
                        attachments: attachments.to_vec(),
                    },
                );
            }
        }
        // Heartbeats and ADAPTER_CLOSE are for the heartbeat-based adapters.
        other => crate::wire::dropped("", format_args!("{what}: ignoring message type {other}")),
    }
}

fn on_broadcast_with_ack<C: Cluster>(
    c: &Arc<C>,
    requester: &str,
    request_id: &str,
    mut packet: Packet,
    opts: &BroadcastOptions,
) {
    let Some(ns) = c.ns().upgrade() else { return };
    packet.id = Some(ns.next_ack_id());
    let pending = c.local().start_broadcast_with_ack(&packet, opts);
    c.respond(
        requester,
        kind::BROADCAST_CLIENT_COUNT,
        json!({"requestId": request_id, "clientCount": pending.len()}),
        &[],
    );
    if pending.is_empty() {
        return;
    }
    let until = deadline(ack_timeout(opts, c.requests_timeout()));
    let weak = Arc::downgrade(c);
    let (id, requester) = (request_id.to_owned(), requester.to_owned());
    tokio::spawn(pending.for_each(until, move |r| {
        let (Some(c), Ok(payload)) = (weak.upgrade(), r.result) else {
            return;
        };
        c.respond(
            &requester,
            kind::BROADCAST_ACK,
            json!({"requestId": id, "packet": wire::first_ack_arg(&payload)}),
            &payload.attachments,
        );
    }));
}

/// `broadcast_with_ack` of a `ClusterAdapter`.
pub(crate) fn broadcast_with_ack<C: Cluster>(
    c: &Arc<C>,
    packet: &Packet,
    opts: &BroadcastOptions,
    default_timeout: Duration,
) -> BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>> {
    let until = deadline(ack_timeout(opts, default_timeout));
    if opts.flags.local {
        let pending = c.local().start_broadcast_with_ack(packet, opts);
        return Box::pin(async move { Ok(pending.collect(until).await) });
    }
    let request_id = random_id();
    let (guard, mut rx) = c.requests().register(&request_id);
    let mut node_packet = cluster_packet_to_node(packet);
    if let Some(obj) = node_packet.as_object_mut() {
        obj.remove("id");
    }
    let published = c.publish(
        kind::BROADCAST,
        json!({"packet": node_packet, "requestId": request_id, "opts": opts_to_node(opts, true)}),
        &packet.attachments,
    );
    let pending = c.local().start_broadcast_with_ack(packet, opts);
    let count = c.server_count();
    Box::pin(async move {
        let _guard = guard;
        published?;
        let servers = count.await?;
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
                        expected +=
                            data.get("clientCount").and_then(Value::as_u64).unwrap_or(0) as usize;
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

/// `fetchSockets` of a `ClusterAdapter`.
pub(crate) fn fetch_sockets<C: Cluster>(
    c: &Arc<C>,
    opts: &BroadcastOptions,
) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>> {
    let local = c.local().fetch_local(opts);
    if opts.flags.local {
        return Box::pin(std::future::ready(Ok(local)));
    }
    let c = c.clone();
    let opts = opts.clone();
    Box::pin(async move {
        let others = c.server_count().await?.saturating_sub(1);
        if others == 0 {
            return Ok(local);
        }
        let request_id = random_id();
        let (_guard, mut rx) = c.requests().register(&request_id);
        c.publish(
            kind::FETCH_SOCKETS,
            json!({"opts": opts_to_node(&opts, true), "requestId": request_id}),
            &[],
        )?;
        let mut sockets = local;
        let mut answers = 0usize;
        let done = collect_until(&mut rx, deadline(c.requests_timeout()), |a| {
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

/// `socketsJoin` / `socketsLeave` / `disconnectSockets` of a `ClusterAdapter`: local at once,
/// then published.
pub(crate) fn bulk<C: Cluster>(
    c: &Arc<C>,
    kind: u64,
    opts: &BroadcastOptions,
    rooms: &[String],
    close: bool,
) -> Result<(), AdapterError> {
    let publish = |data: Value| {
        if opts.flags.local {
            Ok(())
        } else {
            c.publish(kind, data, &[])
        }
    };
    match kind {
        kind::SOCKETS_JOIN => {
            c.local().add_sockets_local(opts, rooms);
            publish(json!({"opts": opts_to_node(opts, true), "rooms": rooms}))
        }
        kind::SOCKETS_LEAVE => {
            c.local().del_sockets_local(opts, rooms);
            publish(json!({"opts": opts_to_node(opts, true), "rooms": rooms}))
        }
        _ => {
            // Published first: the local disconnections may take long (handlers).
            let result = publish(json!({"opts": opts_to_node(opts, true), "close": close}));
            c.local().disconnect_sockets_local(opts, close);
            result
        }
    }
}

/// `serverSideEmit` without acknowledgement.
pub(crate) fn server_side_emit<C: Cluster>(
    c: &Arc<C>,
    event: &str,
    args: &[Value],
) -> Result<(), AdapterError> {
    let mut packet = vec![json!(event)];
    packet.extend_from_slice(args);
    c.publish(kind::SERVER_SIDE_EMIT, json!({ "packet": packet }), &[])
}

/// `serverSideEmit` with acknowledgements from every other server.
pub(crate) fn server_side_emit_with_ack<C: Cluster>(
    c: &Arc<C>,
    event: &str,
    args: &[Value],
) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
    let c = c.clone();
    let mut packet = vec![json!(event)];
    packet.extend_from_slice(args);
    Box::pin(async move {
        let others = c.server_count().await?.saturating_sub(1);
        if others == 0 {
            return Ok(Vec::new());
        }
        let request_id = random_id();
        let (_guard, mut rx) = c.requests().register(&request_id);
        c.publish(
            kind::SERVER_SIDE_EMIT,
            json!({"requestId": request_id, "packet": packet}),
            &[],
        )?;
        let mut answers = Vec::new();
        let done = collect_until(&mut rx, deadline(c.requests_timeout()), |a| {
            if a.value.get("type").and_then(Value::as_u64) == Some(kind::SERVER_SIDE_EMIT_RESPONSE)
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
