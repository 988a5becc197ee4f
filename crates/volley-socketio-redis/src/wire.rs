//! What the Node cluster adapters put on the wire: packets, broadcast options, socket
//! descriptions, and the decoding of a raw message (JSON when it starts with `{`, msgpack
//! otherwise, as Node's adapters decide).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use volley_socketio::packet::{Packet, PacketType};
use volley_socketio::{BroadcastFlags, BroadcastOptions, Payload, SocketInfo};

use crate::msgpack::{self, Decoded};

/// Malformed or foreign messages dropped since the last warning.
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// When the last warning about dropped messages was logged.
static LAST_WARNING: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// Logs a malformed or foreign message that is dropped (`place`: its channel or stream entry):
/// a warning at most every 10 s (with the count since the last one, so a flood cannot flood the
/// log), a debug line for each.
pub(crate) fn dropped(place: &str, what: std::fmt::Arguments<'_>) {
    let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let now = std::time::Instant::now();
    let warn = {
        let mut last = lock(&LAST_WARNING);
        let due = last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10));
        if due {
            *last = Some(now);
        }
        due
    };
    if warn {
        DROPPED.store(0, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!("{what} (on {place:?}; {n} dropped since the last such warning)");
    } else {
        tracing::debug!("{what} (on {place:?})");
    }
}

/// Decodes a raw message: JSON when it starts with `{` (binary data cannot appear in JSON),
/// msgpack otherwise.
pub(crate) fn decode_raw(raw: &[u8]) -> Result<Decoded, String> {
    if raw.first() == Some(&b'{') {
        serde_json::from_slice(raw)
            .map(|value| Decoded {
                value,
                attachments: Vec::new(),
            })
            .map_err(|e| format!("invalid JSON: {e}"))
    } else {
        msgpack::decode(raw).map_err(|e| e.to_string())
    }
}

/// A packet as Node's classic Redis adapter carries it: `{type, data, nsp[, id]}`; an event is
/// type 2 even with binary data (Node's encoder picks BINARY_EVENT itself).
pub(crate) fn packet_to_node(packet: &Packet) -> Value {
    node_packet(packet, true)
}

/// A packet as Node's `ClusterAdapter` carries it: `{type, data[, id]}` (the message says the
/// namespace).
pub(crate) fn cluster_packet_to_node(packet: &Packet) -> Value {
    node_packet(packet, false)
}

fn node_packet(packet: &Packet, with_nsp: bool) -> Value {
    let kind = match packet.kind {
        PacketType::BinaryEvent => PacketType::Event,
        PacketType::BinaryAck => PacketType::Ack,
        k => k,
    } as u8;
    let mut obj = Map::new();
    obj.insert("type".into(), json!(kind));
    if let Some(data) = &packet.data {
        obj.insert("data".into(), data.clone());
    }
    if with_nsp {
        obj.insert("nsp".into(), json!(packet.nsp));
    }
    if let Some(id) = packet.id {
        obj.insert("id".into(), json!(id));
    }
    Value::Object(obj)
}

/// A packet received from another server (classic protocol), for namespace `nsp` (`None`:
/// malformed, or another namespace; a packet without `nsp` is for `/`, as Node reads it).
pub(crate) fn packet_from_node(v: &Value, attachments: &[Bytes], nsp: &str) -> Option<Packet> {
    packet_from(v, attachments, nsp, "/")
}

/// A packet of a `ClusterAdapter` message of namespace `nsp` (the message's `nsp` was checked;
/// the packet usually has none).
pub(crate) fn cluster_packet_from_node(
    v: &Value,
    attachments: &[Bytes],
    nsp: &str,
) -> Option<Packet> {
    packet_from(v, attachments, nsp, nsp)
}

fn packet_from(v: &Value, attachments: &[Bytes], nsp: &str, default_nsp: &str) -> Option<Packet> {
    let obj = v.as_object()?;
    let packet_nsp = match obj.get("nsp") {
        None | Some(Value::Null) => default_nsp,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return None,
    };
    if packet_nsp != nsp {
        return None;
    }
    let digit = u8::try_from(obj.get("type")?.as_u64()?).ok()?;
    let mut kind = PacketType::from_digit(digit)?;
    let data = obj.get("data").cloned();
    if !attachments.is_empty() {
        kind = match kind {
            PacketType::Event | PacketType::BinaryEvent => PacketType::BinaryEvent,
            PacketType::Ack | PacketType::BinaryAck => PacketType::BinaryAck,
            _ => return None,
        };
    }
    if matches!(kind, PacketType::Event | PacketType::BinaryEvent)
        && !matches!(&data, Some(Value::Array(items)) if !items.is_empty())
    {
        return None;
    }
    Some(Packet {
        kind,
        nsp: nsp.to_owned(),
        id: obj.get("id").and_then(Value::as_u64),
        data,
        attachments: attachments.to_vec(),
    })
}

fn rooms_json(rooms: &BTreeSet<String>) -> Value {
    Value::Array(rooms.iter().map(|r| json!(r)).collect())
}

/// `{rooms, except, flags}` as Node sends it with a broadcast (flags only when set).
pub(crate) fn opts_to_node(opts: &BroadcastOptions, with_flags: bool) -> Value {
    let mut obj = Map::new();
    obj.insert("rooms".into(), rooms_json(&opts.rooms));
    obj.insert("except".into(), rooms_json(&opts.except));
    if with_flags {
        let mut flags = Map::new();
        if opts.flags.volatile {
            flags.insert("volatile".into(), json!(true));
        }
        if let Some(t) = opts.flags.timeout_ms {
            flags.insert("timeout".into(), json!(t));
        }
        obj.insert("flags".into(), Value::Object(flags));
    }
    Value::Object(obj)
}

fn rooms_from(v: Option<&Value>) -> Option<BTreeSet<String>> {
    match v {
        None | Some(Value::Null) => Some(BTreeSet::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|r| match r {
                Value::String(s) => Some(s.clone()),
                // Node rooms may be numbers (socket.join(1)).
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            })
            .collect(),
        _ => None,
    }
}

/// Broadcast options from Node's `{rooms, except, flags}` (`None`: malformed).
pub(crate) fn opts_from_node(v: Option<&Value>) -> Option<BroadcastOptions> {
    let empty = Map::new();
    let obj = match v {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(o)) => o,
        Some(_) => return None,
    };
    let flags = obj.get("flags").and_then(Value::as_object);
    Some(BroadcastOptions {
        rooms: rooms_from(obj.get("rooms"))?,
        except: rooms_from(obj.get("except"))?,
        flags: BroadcastFlags {
            local: false,
            volatile: flags
                .and_then(|f| f.get("volatile"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            timeout_ms: flags.and_then(|f| f.get("timeout")).and_then(Value::as_u64),
        },
    })
}

/// `{id, handshake, rooms, data}` as Node answers fetchSockets.
pub(crate) fn socket_to_node(info: &SocketInfo) -> Value {
    json!({
        "id": info.id,
        "handshake": info.handshake,
        "rooms": info.rooms,
        "data": info.data,
    })
}

pub(crate) fn socket_from_node(v: &Value) -> Option<SocketInfo> {
    let obj = v.as_object()?;
    Some(SocketInfo {
        id: obj.get("id")?.as_str()?.to_owned(),
        handshake: obj.get("handshake").cloned().unwrap_or(Value::Null),
        rooms: rooms_from(obj.get("rooms"))?.into_iter().collect(),
        data: obj.get("data").cloned().unwrap_or(Value::Null),
    })
}

/// The first argument of an acknowledgement (all that Node relays between servers), with the
/// attachments it references.
pub(crate) fn first_ack_arg(payload: &Payload) -> Value {
    payload.args.first().cloned().unwrap_or(Value::Null)
}

/// A random id of `n` URL-safe characters (Node's `uid2`).
pub(crate) fn uid(n: usize) -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..n)
        .map(|_| CHARS[rand::random_range(0..CHARS.len())] as char)
        .collect()
}

/// The answers that arrive for the requests this server made, routed by request id.
#[derive(Default)]
pub(crate) struct Requests {
    pending: Mutex<HashMap<String, mpsc::Sender<Decoded>>>,
}

/// Most answers buffered for one request (more are dropped: a flood cannot grow memory).
const ANSWERS: usize = 4096;

impl Requests {
    /// Registers request `id`; answers arrive on the receiver until the guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, id: &str) -> (RequestGuard, mpsc::Receiver<Decoded>) {
        let (tx, rx) = mpsc::channel(ANSWERS);
        lock(&self.pending).insert(id.to_owned(), tx);
        (
            RequestGuard {
                requests: self.clone(),
                id: id.to_owned(),
            },
            rx,
        )
    }

    pub(crate) fn contains(&self, id: &str) -> bool {
        lock(&self.pending).contains_key(id)
    }

    /// Hands an answer to its request; false when no such request is pending.
    pub(crate) fn answer(&self, id: &str, answer: Decoded) -> bool {
        match lock(&self.pending).get(id) {
            Some(tx) => {
                let _ = tx.try_send(answer);
                true
            }
            None => false,
        }
    }
}

/// Forgets a request when dropped.
pub(crate) struct RequestGuard {
    requests: Arc<Requests>,
    id: String,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        lock(&self.requests.pending).remove(&self.id);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Receives answers until `done` says so or `deadline` passes (then `false`).
pub(crate) async fn collect_until(
    rx: &mut mpsc::Receiver<Decoded>,
    deadline: tokio::time::Instant,
    mut on_answer: impl FnMut(Decoded) -> bool,
) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(answer)) => {
                if on_answer(answer) {
                    return true;
                }
            }
            Ok(None) | Err(_) => return false,
        }
    }
}

/// The deadline `timeout` from now.
pub(crate) fn deadline(timeout: Duration) -> tokio::time::Instant {
    tokio::time::Instant::now() + timeout
}

#[cfg(test)]
mod fixtures {
    //! Messages recorded from Node's adapters (`e2e/node/redis_fixtures.js`): decoded, and the
    //! broadcasts re-encoded byte for byte.
    use super::*;
    use std::path::PathBuf;

    fn load(mode: &str) -> Vec<(String, String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(mode);
        let index: Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        index
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let file = e["file"].as_str().unwrap();
                (
                    e["what"].as_str().unwrap().to_owned(),
                    e["channel"].as_str().unwrap().to_owned(),
                    std::fs::read(dir.join(file)).unwrap(),
                )
            })
            .collect()
    }

    fn find<'a>(
        all: &'a [(String, String, Vec<u8>)],
        what: &str,
    ) -> Vec<&'a (String, String, Vec<u8>)> {
        all.iter().filter(|(w, _, _)| w == what).collect()
    }

    #[test]
    fn every_classic_message_decodes() {
        let all = load("classic");
        assert!(all.len() >= 20);
        for (what, channel, bytes) in &all {
            let d = decode_raw(bytes).unwrap_or_else(|e| panic!("{what} on {channel}: {e}"));
            assert!(d.value.is_array() || d.value.is_object(), "{what}");
        }
    }

    /// Decodes a recorded broadcast, checks it, and re-encodes it as this crate would publish
    /// it: the bytes must be Node's.
    fn broadcast_roundtrip(bytes: &[u8]) -> (Packet, BroadcastOptions) {
        let d = msgpack::decode(bytes).unwrap();
        let items = d.value.as_array().unwrap();
        let packet = packet_from_node(&items[1], &d.attachments, "/").unwrap();
        let opts = opts_from_node(items.get(2)).unwrap();
        let again = json!([items[0], packet_to_node(&packet), opts_to_node(&opts, true)]);
        assert_eq!(
            msgpack::encode(&again, &packet.attachments),
            bytes,
            "re-encoded broadcast differs from Node's"
        );
        (packet, opts)
    }

    #[test]
    fn classic_broadcasts_reencode_byte_for_byte() {
        let all = load("classic");
        let (p, o) = broadcast_roundtrip(&find(&all, "emit-all-json")[0].2);
        assert_eq!(
            p.data.unwrap(),
            json!(["hello", "world", 1, -2, 1.5, true, false, null, {"a": [1, "x"]}])
        );
        assert!(o.rooms.is_empty() && o.except.is_empty());
        let room = find(&all, "emit-room")[0];
        assert_eq!(room.1, "socket.io#/#room1#");
        let (_, o) = broadcast_roundtrip(&room.2);
        assert_eq!(o.rooms.iter().collect::<Vec<_>>(), ["room1"]);
        let (_, o) = broadcast_roundtrip(&find(&all, "emit-rooms-except")[0].2);
        assert_eq!(o.rooms.len(), 2);
        assert_eq!(o.except.iter().collect::<Vec<_>>(), ["room3"]);
        let (p, _) = broadcast_roundtrip(&find(&all, "emit-binary")[0].2);
        assert_eq!(p.kind, PacketType::BinaryEvent);
        assert_eq!(
            p.attachments,
            [Bytes::from_static(&[1, 2, 3]), Bytes::from_static(&[4, 5])]
        );
        assert_eq!(
            p.data.unwrap(),
            json!(["bin", Payload::placeholder(0), {"nested": Payload::placeholder(1)}])
        );
        let (_, o) = broadcast_roundtrip(&find(&all, "emit-volatile")[0].2);
        assert!(o.flags.volatile);
        let chat = find(&all, "emit-chat-nsp")[0];
        let d = msgpack::decode(&chat.2).unwrap();
        assert!(
            packet_from_node(&d.value[1], &[], "/").is_none(),
            "another namespace"
        );
        assert!(packet_from_node(&d.value[1], &[], "/chat").is_some());
        let (p, _) = broadcast_roundtrip(&find(&all, "emit-long-string")[0].2);
        assert_eq!(p.data.unwrap()[2].as_str().unwrap().len(), 70_000);
    }

    #[test]
    fn classic_requests_and_responses() {
        let all = load("classic");
        let ack = find(&all, "emit-with-ack");
        // The BROADCAST request (msgpack), the client count (JSON), the ack (msgpack).
        let req = msgpack::decode(&ack[0].2).unwrap().value;
        assert_eq!(req["type"], 7);
        assert_eq!(req["packet"]["data"], json!(["ask", 42]));
        assert_eq!(
            opts_from_node(req.get("opts")).unwrap().flags.timeout_ms,
            Some(1000)
        );
        let again = json!({
            "uid": req["uid"], "requestId": req["requestId"], "type": 7,
            "packet": req["packet"], "opts": req["opts"],
        });
        assert_eq!(
            msgpack::encode(&again, &[]),
            ack[0].2,
            "BROADCAST request bytes"
        );
        let count = decode_raw(&ack[1].2).unwrap().value;
        assert_eq!(
            count,
            json!({"type": 8, "requestId": req["requestId"], "clientCount": 1})
        );
        let answer = decode_raw(&ack[2].2).unwrap().value;
        assert_eq!(answer["type"], 9);
        assert_eq!(answer["packet"], json!({"answer": 42}));

        let fetch = find(&all, "fetch-sockets");
        let req = decode_raw(&fetch[0].2).unwrap().value;
        assert_eq!(req["type"], 5);
        let res = decode_raw(&fetch[1].2).unwrap().value;
        let s = socket_from_node(&res["sockets"][0]).unwrap();
        assert_eq!(s.data, json!({"name": "c1", "n": 1}));
        assert!(s.rooms.contains(&"room1".to_owned()));
        assert_eq!(s.handshake["auth"], json!({"name": "c1"}));
        // Node's handshake has exactly these fields; ours (Handshake::to_json) too.
        let keys: Vec<&str> = s
            .handshake
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys,
            [
                "headers", "time", "address", "xdomain", "secure", "issued", "url", "query", "auth"
            ]
        );

        let join = decode_raw(&find(&all, "sockets-join")[0].2).unwrap().value;
        assert_eq!(join["type"], 2);
        assert_eq!(join["rooms"], json!(["room4"]));
        let sse = decode_raw(&find(&all, "server-side-emit")[0].2)
            .unwrap()
            .value;
        assert_eq!(sse["data"], json!(["hello", "there", 7]));
        assert!(sse.get("requestId").is_none());
        let sse_ack = find(&all, "server-side-emit-ack");
        assert!(
            decode_raw(&sse_ack[0].2)
                .unwrap()
                .value
                .get("requestId")
                .is_some()
        );
        assert_eq!(
            decode_raw(&sse_ack[1].2).unwrap().value["data"],
            json!({"pong": 3})
        );
        let disconnect = decode_raw(&find(&all, "disconnect-sockets")[0].2)
            .unwrap()
            .value;
        assert_eq!(disconnect["close"], true);
    }

    #[test]
    fn emitter_messages() {
        let all = load("classic");
        let d = msgpack::decode(&find(&all, "emitter-all")[0].2).unwrap();
        assert_eq!(d.value[0], "emitter");
        let p = packet_from_node(&d.value[1], &d.attachments, "/").unwrap();
        assert_eq!(p.data.unwrap(), json!(["from-emitter", 1, "two"]));
        let room = find(&all, "emitter-room")[0];
        assert_eq!(room.1, "socket.io#/#room1#");
        let d = msgpack::decode(&room.2).unwrap();
        let o = opts_from_node(d.value.get(2)).unwrap();
        assert_eq!(o.except.iter().collect::<Vec<_>>(), ["room9"]);
        let d = msgpack::decode(&find(&all, "emitter-binary")[0].2).unwrap();
        assert_eq!(d.attachments, [Bytes::from_static(&[9, 8, 7])]);
        let join = decode_raw(&find(&all, "emitter-join")[0].2).unwrap().value;
        assert!(
            join.get("uid").is_none(),
            "the emitter's requests carry no uid"
        );
        assert_eq!(join["rooms"], json!(["room5"]));
    }

    #[test]
    fn every_sharded_message_decodes() {
        for (what, channel, bytes) in &load("sharded") {
            let d = decode_raw(bytes).unwrap_or_else(|e| panic!("{what} on {channel}: {e}"));
            assert!(d.value.get("type").is_some(), "{what}");
        }
    }

    #[test]
    fn foreign_and_malformed_input_is_rejected_quietly() {
        assert!(decode_raw(b"{not json").is_err());
        assert!(decode_raw(&[0xc1]).is_err());
        assert!(packet_from_node(&json!({"type": 9, "data": [], "nsp": "/"}), &[], "/").is_none());
        assert!(packet_from_node(&json!({"type": 2, "data": [], "nsp": "/"}), &[], "/").is_none());
        assert!(packet_from_node(&json!({"type": 2, "data": "x"}), &[], "/").is_none());
        assert!(packet_from_node(&json!([1]), &[], "/").is_none());
        assert!(opts_from_node(Some(&json!({"rooms": [{}]}))).is_none());
        assert!(opts_from_node(Some(&json!("x"))).is_none());
        assert!(socket_from_node(&json!({"id": 1})).is_none());
    }
}
