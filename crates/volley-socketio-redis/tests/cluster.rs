//! Mixed cluster: two Volley servers and one Node socket.io server (`@socket.io/redis-adapter`
//! 8.3) on one private redis-server, official `socket.io-client`s on each. Every operator, started
//! from a Volley server and from the Node server, must reach exactly the right sockets on all
//! three servers (binary payloads too); `@socket.io/redis-emitter` must reach Volley's sockets.
//!
//! "Exactly": after the expected recipients have an event, the origin broadcasts a fence to
//! everyone; messages from one origin arrive in order, so once every client has the fence, a
//! wrong extra delivery would already be there.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};
use volley_socketio::{AckError, Payload, SocketIo};
use volley_socketio_redis::{
    RedisAdapter, RedisAdapterConfig, RedisStreamsAdapter, RedisStreamsAdapterConfig,
    ShardedRedisAdapter, ShardedRedisAdapterConfig,
};

const CLIENTS: [&str; 5] = ["n1", "n2", "v1a", "v1b", "v2a"];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Classic,
    Sharded,
    Streams,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Origin {
    Volley,
    Node,
}

struct Cluster {
    _redis: RedisServer,
    redis_url: String,
    mode: Mode,
    v1: SocketIo,
    _v2: SocketIo,
    v1_notes: Arc<Mutex<Vec<Value>>>,
    v2_notes: Arc<Mutex<Vec<Value>>>,
    node: NodeProc,
    clients: Clients,
    sids: Vec<(String, String)>,
    fences: u32,
}

/// `{"$bin": base64}` -> attachments with placeholders.
fn payload_from_wire(args: &Value) -> Payload {
    fn walk(v: &Value, att: &mut Vec<Bytes>) -> Value {
        match v {
            Value::Object(o) if o.len() == 1 && o.get("$bin").is_some_and(Value::is_string) => {
                let b = base64::engine::general_purpose::STANDARD
                    .decode(o["$bin"].as_str().unwrap())
                    .unwrap();
                att.push(Bytes::from(b));
                Payload::placeholder(att.len() - 1)
            }
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, x)| (k.clone(), walk(x, att))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, att)).collect()),
            other => other.clone(),
        }
    }
    let mut att = Vec::new();
    let args = args
        .as_array()
        .unwrap()
        .iter()
        .map(|a| walk(a, &mut att))
        .collect();
    Payload::with_attachments(args, att)
}

impl Cluster {
    async fn start(redis: RedisServer, mode: Mode) -> Cluster {
        let url = redis.url();
        let factory = |url: &str| match mode {
            Mode::Classic => {
                RedisAdapter::factory(redis_handle(url), RedisAdapterConfig::default())
            }
            Mode::Sharded => ShardedRedisAdapter::factory(
                redis_handle(url),
                ShardedRedisAdapterConfig::default(),
            ),
            Mode::Streams => RedisStreamsAdapter::factory(
                redis_handle(url),
                RedisStreamsAdapterConfig::default(),
            )
            .unwrap(),
        };
        let (v1, v1_addr, v1_notes) = volley_server(factory(&url), "volley1").await;
        let (v2, v2_addr, v2_notes) = volley_server(factory(&url), "volley2").await;
        let node_mode = match mode {
            Mode::Classic => "classic",
            Mode::Sharded => "sharded",
            Mode::Streams => "streams",
        };
        let (node, node_addr) = node_server(&url, node_mode).await;
        let mut clients = Clients::start();
        let mut sids = Vec::new();
        for (name, addr, rooms) in [
            ("v1a", v1_addr, &["r1"][..]),
            ("v1b", v1_addr, &["r2"][..]),
            ("v2a", v2_addr, &["r1", "r3"][..]),
            ("n1", node_addr, &["r1"][..]),
            ("n2", node_addr, &["r2", "r3"][..]),
        ] {
            let sid = clients.connect(name, addr, rooms).await;
            sids.push((name.to_owned(), sid));
        }
        Cluster {
            mode,
            redis_url: redis.url(),
            _redis: redis,
            v1,
            _v2: v2,
            v1_notes,
            v2_notes,
            node,
            clients,
            sids,
            fences: 0,
        }
    }

    /// Waits (at most 10 s) until `room`'s members on all servers are `names` and, with the
    /// sharded adapter, every server with a member has subscribed to the room's channel.
    async fn wait_members(&self, room: &str, names: &[&str]) {
        let servers: std::collections::BTreeSet<char> = names
            .iter()
            .map(|n| n.chars().nth(1).unwrap_or('?'))
            .collect();
        let raw = redis_handle(&self.redis_url);
        raw.ready(Duration::from_secs(5)).await.unwrap();
        let started = std::time::Instant::now();
        loop {
            let mut got: Vec<String> = self
                .v1
                .of("/")
                .in_(room)
                .fetch_sockets()
                .await
                .map(|s| s.iter().map(|s| self.name_of(s.id())).collect())
                .unwrap_or_default();
            got.sort();
            let subscribed = match self.mode {
                Mode::Sharded => raw
                    .shard_numsub(&format!("socket.io#/#{room}#"))
                    .await
                    .unwrap_or(0),
                _ => servers.len(),
            };
            if got == names && subscribed == servers.len() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "members of {room}: {got:?} (want {names:?}), {subscribed} subscribed servers"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn name_of(&self, sid: &str) -> String {
        self.sids
            .iter()
            .find(|(_, s)| s == sid)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| format!("unknown {sid}"))
    }

    fn node_cmd(op: &str, rooms: &[&str], except: &[&str]) -> Value {
        json!({"op": op, "rooms": rooms, "except": except})
    }

    async fn emit(
        &mut self,
        origin: Origin,
        rooms: &[&str],
        except: &[&str],
        event: &str,
        args: Value,
    ) {
        match origin {
            Origin::Volley => self
                .v1
                .of("/")
                .to(rooms.to_vec())
                .except(except.to_vec())
                .emit(event, payload_from_wire(&args))
                .unwrap(),
            Origin::Node => {
                let mut cmd = Self::node_cmd("emit", rooms, except);
                cmd["event"] = json!(event);
                cmd["args"] = args;
                self.node.call(cmd).await.unwrap();
            }
        }
    }

    /// Broadcasts a fence from `origin` and waits for every connected client to have it.
    async fn fence(&mut self, origin: Origin, connected: &[&str]) {
        self.fences += 1;
        let event = format!("fence-{}", self.fences);
        self.emit(origin, &[], &[], &event, json!([])).await;
        self.clients.wait_event(&event, connected).await;
    }

    /// Waits for `expected` to receive `event`, fences, then checks nobody else got it and
    /// nobody got it twice.
    async fn check(&mut self, origin: Origin, event: &str, expected: &[&str]) {
        self.clients.wait_event(event, expected).await;
        self.fence(origin, &CLIENTS).await;
        assert_eq!(
            self.clients.recipients(event),
            expected,
            "recipients of {event} from {origin:?}"
        );
    }
}

async fn operators_from(c: &mut Cluster, o: Origin) {
    let tag = format!("{o:?}");
    // Broadcast to all, to one room (its own channel), to several rooms, with except.
    c.emit(o, &[], &[], &format!("all-{tag}"), json!(["x", 1]))
        .await;
    c.check(o, &format!("all-{tag}"), &CLIENTS).await;
    c.emit(o, &["r1"], &[], &format!("r1-{tag}"), json!([]))
        .await;
    c.check(o, &format!("r1-{tag}"), &["n1", "v1a", "v2a"])
        .await;
    c.emit(o, &["r1", "r3"], &[], &format!("r13-{tag}"), json!([]))
        .await;
    c.check(o, &format!("r13-{tag}"), &["n1", "n2", "v1a", "v2a"])
        .await;
    c.emit(o, &["r1"], &["r3"], &format!("r1x3-{tag}"), json!([]))
        .await;
    c.check(o, &format!("r1x3-{tag}"), &["n1", "v1a"]).await;
    c.emit(o, &[], &["r2"], &format!("allx2-{tag}"), json!([]))
        .await;
    c.check(o, &format!("allx2-{tag}"), &["n1", "v1a", "v2a"])
        .await;

    // Binary payloads, nested.
    let bin = json!([{"$bin": "AAEC/w=="}, {"nested": {"$bin": "aGk="}}, "text"]);
    c.emit(o, &[], &[], &format!("bin-{tag}"), bin.clone())
        .await;
    c.check(o, &format!("bin-{tag}"), &CLIENTS).await;
    for (name, args) in c.clients.received(&format!("bin-{tag}")) {
        assert_eq!(args, bin, "binary payload at {name}");
    }

    // socketsJoin / socketsLeave.
    let room = format!("j-{tag}");
    match o {
        Origin::Volley => c.v1.of("/").in_("r2").sockets_join(room.as_str()).unwrap(),
        Origin::Node => {
            let mut cmd = Cluster::node_cmd("socketsJoin", &["r2"], &[]);
            cmd["join"] = json!(room);
            c.node.call(cmd).await.unwrap();
        }
    }
    // Node applies its own request when it comes back from Redis, and with the sharded adapter
    // a server that gets its first member of a room subscribes to the room's channel
    // (asynchronously, in Node and in Volley): wait until both are visible.
    c.wait_members(&room, &["n2", "v1b"]).await;
    c.emit(o, &[&room], &[], &format!("joined-{tag}"), json!([]))
        .await;
    c.check(o, &format!("joined-{tag}"), &["n2", "v1b"]).await;
    match o {
        Origin::Volley => c.v1.of("/").in_("r3").sockets_leave(room.as_str()).unwrap(),
        Origin::Node => {
            let mut cmd = Cluster::node_cmd("socketsLeave", &["r3"], &[]);
            cmd["leave"] = json!(room);
            c.node.call(cmd).await.unwrap();
        }
    }
    c.wait_members(&room, &["v1b"]).await;
    c.emit(o, &[&room], &[], &format!("left-{tag}"), json!([]))
        .await;
    c.check(o, &format!("left-{tag}"), &["v1b"]).await;

    // fetchSockets with data, rooms and handshake, from every server.
    let fetched: Vec<(String, Vec<String>, Value, Value)> = match o {
        Origin::Volley => {
            c.v1.of("/")
                .in_("r1")
                .fetch_sockets()
                .await
                .unwrap()
                .into_iter()
                .map(|s| {
                    let mut rooms = s.rooms().to_vec();
                    rooms.sort();
                    (
                        s.id().to_owned(),
                        rooms,
                        s.data().clone(),
                        s.handshake().clone(),
                    )
                })
                .collect()
        }
        Origin::Node => c
            .node
            .call(Cluster::node_cmd("fetchSockets", &["r1"], &[]))
            .await
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let rooms = s["rooms"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r.as_str().unwrap().to_owned())
                    .collect();
                (
                    s["id"].as_str().unwrap().to_owned(),
                    rooms,
                    s["data"].clone(),
                    s["handshake"].clone(),
                )
            })
            .collect(),
    };
    let mut names: Vec<String> = fetched.iter().map(|(id, ..)| c.name_of(id)).collect();
    names.sort();
    assert_eq!(names, ["n1", "v1a", "v2a"], "fetchSockets from {o:?}");
    for (id, rooms, data, handshake) in &fetched {
        let name = c.name_of(id);
        assert_eq!(data, &json!({"name": name}), "data of {name}");
        assert!(
            rooms.contains(&"r1".to_owned()) && rooms.contains(id),
            "rooms of {name}: {rooms:?}"
        );
        assert_eq!(
            handshake["auth"],
            json!({"name": name}),
            "handshake of {name}"
        );
        assert!(
            handshake["url"]
                .as_str()
                .unwrap()
                .starts_with("/socket.io/"),
            "{handshake}"
        );
        assert_eq!(handshake["address"], "127.0.0.1");
    }
    if o == Origin::Volley {
        // A remote socket can be acted on through the adapter.
        let remote = c.v1.of("/").in_("r3").fetch_sockets().await.unwrap();
        let n2 = remote
            .iter()
            .find(|s| c.name_of(s.id()) == "n2")
            .expect("n2 fetched");
        assert!(n2.local().is_none());
        n2.emit("direct", "hi").unwrap();
        c.check(o, "direct", &["n2"]).await;
    }

    // serverSideEmit, without and with acknowledgements.
    match o {
        Origin::Volley => {
            c.v1.server_side_emit("note", vec![json!("from-v1"), json!(1)])
                .unwrap();
            c.node
                .wait_line(Duration::from_secs(10), "note at node", |v| {
                    v.get("sse") == Some(&json!(["from-v1", 1]))
                })
                .await;
            let notes = c.v2_notes.clone();
            wait_until("note at volley2", Duration::from_secs(10), || {
                !notes.lock().unwrap().is_empty()
            })
            .await;
            assert_eq!(*c.v2_notes.lock().unwrap(), [json!(["from-v1", 1])]);
            assert!(c.v1_notes.lock().unwrap().is_empty(), "not to itself");
            let mut answers =
                c.v1.server_side_emit_with_ack("ping", vec![json!(5)])
                    .await
                    .unwrap();
            answers.sort_by_key(|a| a["from"].as_str().unwrap_or_default().to_owned());
            assert_eq!(
                answers,
                [
                    json!({"from": "node", "arg": 5}),
                    json!({"from": "volley2", "arg": 5})
                ]
            );
        }
        Origin::Node => {
            c.node
                .call(json!({"op": "serverSideEmit", "event": "note", "args": ["from-node"]}))
                .await
                .unwrap();
            let (n1, n2) = (c.v1_notes.clone(), c.v2_notes.clone());
            wait_until(
                "node's note at both Volley servers",
                Duration::from_secs(10),
                || n1.lock().unwrap().len() == 1 && n2.lock().unwrap().len() == 2,
            )
            .await;
            assert_eq!(c.v1_notes.lock().unwrap()[0], json!(["from-node"]));
            let answers = c
                .node
                .call(json!({"op": "serverSideEmitWithAck", "event": "ping", "args": [6]}))
                .await
                .unwrap();
            let mut answers = answers.as_array().unwrap().clone();
            answers.sort_by_key(|a| a["from"].as_str().unwrap_or_default().to_owned());
            assert_eq!(
                answers,
                [
                    json!({"from": "volley1", "arg": 6}),
                    json!({"from": "volley2", "arg": 6})
                ]
            );
        }
    }

    // Broadcast with acknowledgements from every server's clients.
    let mut acks: Vec<Value> = match o {
        Origin::Volley => {
            c.v1.of("/")
                .to("r1")
                .timeout(Duration::from_secs(5))
                .emit_with_ack("question", json!(7))
                .unwrap()
                .await
                .unwrap()
                .into_iter()
                .map(|r| {
                    r.result
                        .map(|p| p.args[0].clone())
                        .unwrap_or_else(|e| json!(e.to_string()))
                })
                .collect()
        }
        Origin::Node => {
            let mut cmd = Cluster::node_cmd("emitWithAck", &["r1"], &[]);
            cmd["event"] = json!("question");
            cmd["args"] = json!([7]);
            cmd["timeout"] = json!(5000);
            c.node.call(cmd).await.unwrap().as_array().unwrap().clone()
        }
    };
    acks.sort_by_key(|a| a["from"].as_str().unwrap_or_default().to_owned());
    assert_eq!(
        acks,
        [
            json!({"from": "n1"}),
            json!({"from": "v1a"}),
            json!({"from": "v2a"})
        ],
        "acks from {o:?}"
    );

    // Server count.
    let count = match o {
        Origin::Volley => c.v1.server_count().await.unwrap(),
        Origin::Node => c
            .node
            .call(json!({"op": "serverCount"}))
            .await
            .unwrap()
            .as_u64()
            .unwrap() as usize,
    };
    assert_eq!(count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_cluster_classic_adapter() {
    let _serial = SERIAL.lock().await;
    mixed_cluster(Mode::Classic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_cluster_sharded_adapter() {
    let _serial = SERIAL.lock().await;
    mixed_cluster(Mode::Sharded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_cluster_streams_adapter() {
    let _serial = SERIAL.lock().await;
    mixed_cluster(Mode::Streams).await;
}

async fn mixed_cluster(mode: Mode) {
    let mut c = Cluster::start(RedisServer::start(), mode).await;
    operators_from(&mut c, Origin::Volley).await;
    operators_from(&mut c, Origin::Node).await;
    if mode == Mode::Classic {
        emitter(&mut c).await;
    }
    garbage(&mut c, mode).await;
    disconnects(&mut c).await;
}

async fn emitter(c: &mut Cluster) {
    // The emitter (a process with no socket.io server) reaches Volley's sockets too.
    let mut cmd = Cluster::node_cmd("emitterEmit", &["r2"], &[]);
    cmd["event"] = json!("emitted");
    cmd["args"] = json!([{"$bin": "CQgH"}, 2]);
    c.node.call(cmd).await.unwrap();
    c.check(Origin::Node, "emitted", &["n2", "v1b"]).await;
    for (_, args) in c.clients.received("emitted") {
        assert_eq!(args, json!([{"$bin": "CQgH"}, 2]));
    }
    let mut cmd = Cluster::node_cmd("emitterSocketsJoin", &["r1"], &[]);
    cmd["join"] = json!("by-emitter");
    c.node.call(cmd).await.unwrap();
    c.wait_members("by-emitter", &["n1", "v1a", "v2a"]).await;
    c.emit(
        Origin::Volley,
        &["by-emitter"],
        &[],
        "emitter-room",
        json!([]),
    )
    .await;
    c.check(Origin::Volley, "emitter-room", &["n1", "v1a", "v2a"])
        .await;
}

async fn garbage(c: &mut Cluster, mode: Mode) {
    // Malformed and foreign messages on the cluster channels are logged and dropped; the
    // cluster goes on. (On "/garbage", which only the Volley servers have: Node's adapter does
    // not survive a truncated msgpack broadcast.)
    let raw = redis_handle(&c.redis_url);
    raw.ready(Duration::from_secs(5)).await.unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let classic = [
        ("socket.io#/garbage#", "wQ=="),         // 0xc1: invalid msgpack
        ("socket.io#/garbage#", "kwE="),         // a truncated array
        ("socket.io#/garbage#", "3f////8="),     // an array of 4 G items, no bytes
        ("socket.io#/garbage#", "k6V4eHh4eAGA"), // the packet is a number
        (
            "socket.io#/garbage#",
            "k6V4eHh4eIOkdHlwZQKkZGF0YZGhYaNuc3CkL2NoYXSA",
        ), // another namespace
        ("socket.io#/garbage#r#", "wQ=="),       // a room nobody is in
        ("socket.io#/garbage#nope", "wQ=="),     // not a channel of the protocol
        ("socket.io-request#/garbage#", "e25vdCBqc29u"), // "{not json"
        ("socket.io-request#/garbage#", "eyJ0eXBlIjo0Mn0="), // an unknown request type
        (
            "socket.io-request#/garbage#",
            "eyJ0eXBlIjo2LCJkYXRhIjo1fQ==",
        ), // server-side emit, data not an array
        (
            "socket.io-request#/garbage#",
            "eyJ0eXBlIjo3LCJyZXF1ZXN0SWQiOiJ4In0=",
        ), // broadcast-with-ack without packet
        ("socket.io-response#/garbage#", "eyJyZXF1ZXN0SWQiOjF9"),
    ];
    let sharded = [
        ("socket.io#/garbage#", "wQ=="),
        ("socket.io#/garbage#", "3f////8="),
        ("socket.io#/garbage#", "e25vdCBqc29u"), // "{not json"
        // {"type":3,"data":{"packet":5},"uid":"x","nsp":"/garbage"}
        (
            "socket.io#/garbage#",
            "eyJ0eXBlIjozLCJkYXRhIjp7InBhY2tldCI6NX0sInVpZCI6IngiLCJuc3AiOiIvZ2FyYmFnZSJ9",
        ),
        // {"type":9,"data":{"packet":"x"},"uid":"x","nsp":"/garbage"}
        (
            "socket.io#/garbage#",
            "eyJ0eXBlIjo5LCJkYXRhIjp7InBhY2tldCI6IngifSwidWlkIjoieCIsIm5zcCI6Ii9nYXJiYWdlIn0=",
        ),
        // {"type":99,"data":{},"uid":"x","nsp":"/garbage"}
        (
            "socket.io#/garbage#",
            "eyJ0eXBlIjo5OSwiZGF0YSI6e30sInVpZCI6IngiLCJuc3AiOiIvZ2FyYmFnZSJ9",
        ),
        ("socket.io#/garbage#", "W10="), // []
    ];
    match mode {
        Mode::Classic => {
            for (channel, base64) in classic {
                raw.publish(channel, &b64.decode(base64).unwrap())
                    .await
                    .unwrap();
            }
        }
        Mode::Sharded => {
            for (channel, base64) in sharded {
                raw.spublish(channel, &b64.decode(base64).unwrap())
                    .await
                    .unwrap();
            }
        }
        Mode::Streams => {
            for (channel, base64) in sharded {
                raw.publish(channel, &b64.decode(base64).unwrap())
                    .await
                    .unwrap();
            }
            // Malformed entries of the stream.
            let entry = |fields: &[(&'static str, &str)]| {
                (
                    "socket.io".to_owned(),
                    fields
                        .iter()
                        .map(|(k, v)| (*k, v.as_bytes().to_vec()))
                        .collect::<Vec<_>>(),
                )
            };
            raw.xadd_many(
                &[
                    entry(&[
                        ("uid", "x"),
                        ("nsp", "/garbage"),
                        ("type", "3"),
                        ("data", "{not json"),
                    ]),
                    entry(&[("nsp", "/garbage"), ("type", "3"), ("data", "{}")]),
                    entry(&[
                        ("uid", "x"),
                        ("nsp", "/garbage"),
                        ("type", "3"),
                        ("data", "!!notbase64"),
                    ]),
                    entry(&[
                        ("uid", "x"),
                        ("nsp", "/garbage"),
                        ("type", "3"),
                        ("data", "wQ=="),
                    ]),
                    entry(&[
                        ("uid", "x"),
                        ("nsp", "/garbage"),
                        ("type", "abc"),
                        ("data", "{}"),
                    ]),
                    entry(&[
                        ("uid", "x"),
                        ("nsp", "/garbage"),
                        ("type", "4"),
                        ("data", "{\"opts\":5}"),
                    ]),
                    entry(&[("junk", "1")]),
                ],
                10_000,
            )
            .await
            .unwrap();
        }
    }
    let answers =
        c.v1.of("/garbage")
            .server_side_emit_with_ack("ping", vec![])
            .await
            .unwrap();
    assert_eq!(answers, [json!({"from": "volley2"})]);
    c.emit(Origin::Node, &[], &[], "after-garbage", json!([]))
        .await;
    c.check(Origin::Node, "after-garbage", &CLIENTS).await;
}

async fn disconnects(c: &mut Cluster) {
    // disconnectSockets from both sides.
    c.v1.of("/").in_("r3").disconnect_sockets(false).unwrap();
    for name in ["n2", "v2a"] {
        wait_until(
            &format!("{name} disconnected"),
            Duration::from_secs(10),
            || c.clients.disconnects(name) == ["io server disconnect"],
        )
        .await;
    }
    c.node
        .call(Cluster::node_cmd("disconnectSockets", &["r2"], &[]))
        .await
        .unwrap();
    wait_until("v1b disconnected", Duration::from_secs(10), || {
        c.clients.disconnects("v1b") == ["io server disconnect"]
    })
    .await;
    c.emit(Origin::Volley, &[], &[], "survivors", json!([]))
        .await;
    c.clients.wait_event("survivors", &["n1", "v1a"]).await;
    c.fence(Origin::Volley, &["n1", "v1a"]).await;
    assert_eq!(c.clients.recipients("survivors"), ["n1", "v1a"]);
    assert!(c.clients.disconnects("n1").is_empty() && c.clients.disconnects("v1a").is_empty());
    let _ = AckError::Timeout;
}
