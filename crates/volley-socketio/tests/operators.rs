//! Server API behaviour with purpose-built servers: operators (`to`, `except`, `broadcast`),
//! broadcast acknowledgements, room cleanup, dynamic namespaces, bulk operations, catch-all
//! and disconnect handlers, per-socket data.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{WsClient, connect_sid, split_json, start};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use volley_socketio::{AckError, ConnectError, DisconnectReason, EmitError, Payload, SocketIo};

/// Polls `cond` every 10 ms for at most 5 s.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

fn ack(ack: Option<volley_socketio::AckSender>, v: Value) {
    if let Some(ack) = ack {
        ack.send(v).unwrap();
    }
}

/// `join` (room) + ack, on every socket of `/`.
fn with_join(io: &SocketIo) {
    io.of("/").on_connection(|socket| {
        socket.on("join", |socket, payload: Payload, a| {
            socket.join(payload.first().and_then(Value::as_str).unwrap());
            ack(a, json!("joined"));
        });
        socket.on("echo", |_socket, payload: Payload, a| {
            if let Some(a) = a {
                a.send(payload).unwrap();
            }
        });
    });
}

async fn client(addr: std::net::SocketAddr, rooms: &[&str]) -> (WsClient, String) {
    let (mut c, sid) = WsClient::connect_ns(addr, "0").await;
    for (i, room) in rooms.iter().enumerate() {
        c.send(&format!(r#"2{i}["join","{room}"]"#)).await;
        assert_eq!(c.recv_text().await, format!(r#"3{i}["joined"]"#));
    }
    (c, sid)
}

/// The client's next frame is the answer to a fresh echo request: nothing else was queued.
async fn assert_nothing_queued(c: &mut WsClient) {
    c.send(r#"299["echo","probe"]"#).await;
    assert_eq!(c.recv_text().await, r#"399["probe"]"#);
}

#[tokio::test]
async fn to_except_and_socket_broadcast_target_the_right_sockets() {
    let io = SocketIo::new();
    with_join(&io);
    io.of("/").on_connection(|socket| {
        socket.on("shout", |socket, payload: Payload, a| {
            socket
                .namespace()
                .to("r")
                .except("muted")
                .emit("shout", payload)
                .unwrap();
            ack(a, Value::Null);
        });
        socket.on("others", |socket, payload: Payload, a| {
            socket.broadcast().emit("others", payload).unwrap();
            ack(a, Value::Null);
        });
        socket.on("room-others", |socket, payload: Payload, a| {
            socket.to("r").emit("room-others", payload).unwrap();
            ack(a, Value::Null);
        });
    });
    let addr = start(io.clone()).await;
    let (mut a, _) = client(addr, &["r"]).await;
    let (mut b, _) = client(addr, &["r", "muted"]).await;
    let (mut c, _) = client(addr, &["r"]).await;
    let (mut d, _) = client(addr, &[]).await;

    a.send(r#"21["shout","x"]"#).await;
    assert_eq!(a.recv_text().await, r#"2["shout","x"]"#);
    assert_eq!(a.recv_text().await, "31[null]");
    assert_eq!(c.recv_text().await, r#"2["shout","x"]"#);
    assert_nothing_queued(&mut b).await;
    assert_nothing_queued(&mut d).await;

    // socket.broadcast(): everyone but the sender.
    a.send(r#"22["others",1]"#).await;
    assert_eq!(a.recv_text().await, "32[null]");
    for other in [&mut b, &mut c, &mut d] {
        assert_eq!(other.recv_text().await, r#"2["others",1]"#);
    }
    assert_nothing_queued(&mut a).await;

    // socket.to(room): the room minus the sender.
    a.send(r#"23["room-others",2]"#).await;
    assert_eq!(a.recv_text().await, "33[null]");
    assert_eq!(b.recv_text().await, r#"2["room-others",2]"#);
    assert_eq!(c.recv_text().await, r#"2["room-others",2]"#);
    assert_nothing_queued(&mut a).await;
    assert_nothing_queued(&mut d).await;

    // Server-side: a union of rooms reaches each socket once; except by socket id.
    let (mut e, e_id) = client(addr, &["r", "muted"]).await;
    io.to(["r", "muted"])
        .except(e_id.as_str())
        .emit("union", ())
        .unwrap();
    for member in [&mut a, &mut b, &mut c] {
        assert_eq!(member.recv_text().await, r#"2["union"]"#);
        assert_nothing_queued(member).await;
    }
    assert_nothing_queued(&mut d).await;
    assert_nothing_queued(&mut e).await;
    // Reserved names are refused.
    assert!(matches!(
        io.emit("disconnect", ()),
        Err(EmitError::Reserved(_))
    ));
}

#[tokio::test]
async fn broadcast_with_ack_collects_every_answer_or_times_out() {
    let io = SocketIo::new();
    with_join(&io);
    io.of("/").on_connection(|socket| {
        socket.on("collect", |socket, payload: Payload, a| {
            let timeout = Duration::from_millis(payload.first().unwrap().as_u64().unwrap());
            let fut = socket
                .namespace()
                .to("r")
                .timeout(timeout)
                .emit_with_ack("q", "question")
                .unwrap();
            tokio::spawn(async move {
                let mut out: Vec<Value> = fut
                    .await
                    .expect("the in-memory adapter never fails")
                    .into_iter()
                    .map(|r| match r.result {
                        Ok(p) => json!([r.socket_id, p.args]),
                        Err(AckError::Timeout) => json!([r.socket_id, "timeout"]),
                        Err(e) => json!([r.socket_id, e.to_string()]),
                    })
                    .collect();
                out.sort_by_key(|v| v[0].as_str().unwrap().to_owned());
                ack(a, Value::Array(out));
            });
        });
    });
    let addr = start(io.clone()).await;
    let (mut a, a_id) = client(addr, &["r"]).await;
    let (mut b, b_id) = client(addr, &["r"]).await;
    let (mut silent, silent_id) = client(addr, &["r"]).await;
    let (mut outsider, _) = client(addr, &[]).await;

    a.send(r#"21["collect",500]"#).await;
    let start = tokio::time::Instant::now();
    // Every member gets the same packet (one ack id, encoded once).
    let q = a.recv_text().await;
    let (prefix, json) = split_json(&q);
    assert_eq!(json, json!(["q", "question"]));
    let id = &prefix[1..];
    assert_eq!(b.recv_text().await, q);
    assert_eq!(silent.recv_text().await, q);
    a.send(&format!(r#"3{id}["from-a"]"#)).await;
    b.send(&format!(r#"3{id}["from-b",2]"#)).await;
    let answer = a.recv_text().await;
    assert!(start.elapsed() >= Duration::from_millis(450));
    let (prefix, got) = split_json(&answer);
    assert_eq!(prefix, "31");
    let mut expected = vec![
        json!([a_id, ["from-a"]]),
        json!([b_id, ["from-b", 2]]),
        json!([silent_id, "timeout"]),
    ];
    expected.sort_by_key(|v| v[0].as_str().unwrap().to_owned());
    // One ack argument: the list.
    assert_eq!(got, json!([expected]));
    assert_nothing_queued(&mut outsider).await;

    // When everyone answers, the result comes without waiting for the timeout.
    silent.close().await;
    wait_until("the silent socket to leave", || {
        io.of("/").sockets().len() == 3
    })
    .await;
    a.send(r#"22["collect",5000]"#).await;
    let start = tokio::time::Instant::now();
    let q = a.recv_text().await;
    let id = split_json(&q).0[1..].to_owned();
    assert_eq!(b.recv_text().await, q);
    a.send(&format!(r#"3{id}[1]"#)).await;
    b.send(&format!(r#"3{id}[2]"#)).await;
    let (_, got) = split_json(&a.recv_text().await);
    assert_eq!(got[0].as_array().unwrap().len(), 2);
    assert!(start.elapsed() < Duration::from_secs(3));
    // No pending ack is left behind on any socket.
    for s in io.of("/").sockets() {
        assert_eq!(s.pending_acks(), 0);
    }
}

#[tokio::test]
async fn rooms_are_left_on_disconnect() {
    let io = SocketIo::new();
    with_join(&io);
    let addr = start(io.clone()).await;
    let ns = io.of("/");
    let (a, a_id) = client(addr, &["x", "y"]).await;
    let (mut b, b_id) = client(addr, &["y"]).await;
    let (c, _) = client(addr, &["z"]).await;
    let rooms = ns.adapter().rooms();
    for room in ["x", "y", "z", a_id.as_str(), b_id.as_str()] {
        assert!(
            rooms.contains(&room.to_owned()),
            "{room} missing in {rooms:?}"
        );
    }
    assert_eq!(ns.get_socket(&a_id).unwrap().rooms(), {
        let mut v = vec![a_id.clone(), "x".to_owned(), "y".to_owned()];
        v.sort();
        v
    });
    // A pending server->client ack is resolved as Disconnected when the socket goes.
    let a_socket = ns.get_socket(&a_id).unwrap();
    let pending = a_socket
        .emit_with_ack::<Payload>("never-answered", ())
        .timeout(Duration::from_secs(30));
    // Three ways out: transport closed, namespace DISCONNECT from the client, server kick.
    a.close().await;
    b.send("1").await;
    ns.to("z").disconnect_sockets(false).unwrap();
    let started = tokio::time::Instant::now();
    assert!(matches!(pending.await, Err(AckError::Disconnected)));
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until("every room to be gone", || ns.adapter().rooms().is_empty()).await;
    assert!(ns.sockets().is_empty());
    assert!(io.of("/").fetch_sockets().await.unwrap().is_empty());
    assert!(!a_socket.connected());
    assert!(a_socket.rooms().is_empty());
    drop(c);
    // b's connection itself survived its namespace disconnect: it can join again.
    b.send("0").await;
    connect_sid(&b.recv_text().await);
    assert_eq!(ns.sockets().len(), 1);
}

#[tokio::test]
async fn bulk_operations_fetch_join_leave_disconnect() {
    let io = SocketIo::new();
    with_join(&io);
    let addr = start(io.clone()).await;
    let ns = io.of("/");
    let (mut a, a_id) = client(addr, &["r"]).await;
    let (mut b, _) = client(addr, &[]).await;
    let fetched = ns.fetch_sockets().await.unwrap();
    assert_eq!(fetched.len(), 2);
    assert!(fetched.iter().all(|s| s.local().is_some()));
    let in_r = ns.in_("r").fetch_sockets().await.unwrap();
    assert_eq!(in_r.len(), 1);
    assert_eq!(in_r[0].id(), a_id);
    let mut rooms = in_r[0].rooms().to_vec();
    rooms.sort();
    let mut want = vec![a_id.clone(), "r".to_owned()];
    want.sort();
    assert_eq!(rooms, want);
    assert_eq!(
        in_r[0].handshake()["url"]
            .as_str()
            .map(|u| u.starts_with("/socket.io/")),
        Some(true)
    );
    // The fields (and their order) of Node's `socket.handshake`, as other servers see it.
    let keys: Vec<&str> = in_r[0]
        .handshake()
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
    assert_eq!(in_r[0].handshake()["address"], "127.0.0.1");
    assert!(in_r[0].handshake()["issued"].as_u64().unwrap() > 1_700_000_000_000);

    ns.sockets_join("all").unwrap();
    ns.to("all").emit("hello-all", json!(1)).unwrap();
    assert_eq!(a.recv_text().await, r#"2["hello-all",1]"#);
    assert_eq!(b.recv_text().await, r#"2["hello-all",1]"#);
    ns.in_("r").sockets_leave("all").unwrap();
    assert_eq!(ns.to("all").fetch_sockets().await.unwrap().len(), 1);
    ns.to("all").emit("hello-all", json!(2)).unwrap();
    assert_eq!(b.recv_text().await, r#"2["hello-all",2]"#);
    assert_nothing_queued(&mut a).await;

    // disconnect_sockets(false): DISCONNECT packets, connections stay.
    ns.disconnect_sockets(false).unwrap();
    assert_eq!(a.recv_text().await, "1");
    assert_eq!(b.recv_text().await, "1");
    assert!(ns.sockets().is_empty());
    // disconnect_sockets(true): connections closed.
    a.send("0").await;
    connect_sid(&a.recv_text().await);
    ns.disconnect_sockets(true).unwrap();
    assert_eq!(a.recv_text().await, "1");
    a.expect_closed().await;
}

#[tokio::test]
async fn dynamic_namespaces_are_created_by_the_matcher() {
    let io = SocketIo::new();
    let template =
        io.of_dynamic(|name, auth| name.starts_with("/dyn-") && auth.get("deny").is_none());
    template.use_middleware(|socket, auth: Value| async move {
        if auth.get("kick") == Some(&json!(true)) {
            return Err(ConnectError::new("kicked"));
        }
        socket.insert_data(String::from("from middleware"));
        Ok(())
    });
    template.on_connection(|socket| {
        let data: String = socket.data().unwrap();
        socket.emit("hello", json!([socket.nsp(), data])).unwrap();
    });
    let addr = start(io.clone()).await;
    let mut c = WsClient::connect(addr).await;
    c.send("0/dyn-1,").await;
    let reply = c.recv_text().await;
    assert!(reply.starts_with("0/dyn-1,"), "{reply}");
    assert_eq!(
        c.recv_text().await,
        r#"2/dyn-1,["hello",["/dyn-1","from middleware"]]"#
    );
    c.send(r#"0/dyn-2,{"kick":true}"#).await;
    assert_eq!(c.recv_text().await, r#"4/dyn-2,{"message":"kicked"}"#);
    c.send(r#"0/dyn-3,{"deny":1}"#).await;
    assert_eq!(
        c.recv_text().await,
        r#"4/dyn-3,{"message":"Invalid namespace"}"#
    );
    c.send("0/other,").await;
    assert_eq!(
        c.recv_text().await,
        r#"4/other,{"message":"Invalid namespace"}"#
    );
    let names = io.namespaces();
    assert!(names.contains(&"/dyn-1".to_owned()), "{names:?}");
    assert!(!names.contains(&"/other".to_owned()), "{names:?}");
    assert_eq!(io.of("/dyn-1").sockets().len(), 1);
}

#[tokio::test]
async fn catch_all_disconnect_reasons_data_and_handshake() {
    let io = SocketIo::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let seen_any = Arc::new(Mutex::new(Vec::<String>::new()));
    let any_log = seen_any.clone();
    io.of("/").on_connection(move |socket| {
        let tx = tx.clone();
        let any_log = any_log.clone();
        socket.insert_data(42u32);
        assert_eq!(socket.handshake().query("user").as_deref(), Some("al ice"));
        assert!(socket.handshake().headers.contains_key("host"));
        assert!(socket.handshake().address.unwrap().ip().is_loopback());
        socket.on_any(move |_socket, event, payload, _ack| {
            any_log
                .lock()
                .unwrap()
                .push(format!("{event}:{}", Value::Array(payload.args)));
        });
        socket.on("known", |socket, _payload: Payload, a| {
            ack(a, json!(socket.data::<u32>()));
        });
        socket.on_disconnect(move |socket, reason| {
            assert!(!socket.connected());
            assert!(socket.rooms().is_empty());
            tx.send(reason.as_str().to_owned()).unwrap();
        });
    });
    let addr = start(io.clone()).await;
    let mut c = {
        let mut c = WsClient::connect_with_query(addr, "user=al%20ice").await;
        c.send("0").await;
        connect_sid(&c.recv_text().await);
        c
    };
    c.send(r#"2["unknown",1,"two"]"#).await;
    c.send(r#"21["known"]"#).await;
    assert_eq!(c.recv_text().await, "31[42]");
    assert_eq!(
        *seen_any.lock().unwrap(),
        vec![r#"unknown:[1,"two"]"#.to_owned(), "known:[]".to_owned()]
    );
    c.send("1").await;
    let reason = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, DisconnectReason::ClientNamespaceDisconnect.as_str());
    // Transport close.
    c.send("0").await;
    connect_sid(&c.recv_text().await);
    c.close().await;
    let reason = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, "transport close");
    // Parse error.
    let mut c = WsClient::connect_with_query(addr, "user=al%20ice").await;
    c.send("0").await;
    connect_sid(&c.recv_text().await);
    c.send("2garbage").await;
    let reason = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reason, "parse error");
}

#[tokio::test]
async fn middleware_rooms_disconnecting_panics_and_shutdown() {
    let io = SocketIo::builder()
        .cleanup_empty_child_namespaces(true)
        .build();
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let ns = io.of("/");
    ns.use_middleware(|socket, _auth: Value| async move {
        // Rooms joined in a middleware stay when it accepts, go when a later one refuses.
        socket.join("from-middleware");
        Ok(())
    });
    ns.use_middleware(|_socket, auth: Value| async move {
        if auth.get("refuse").is_some() {
            Err(ConnectError::new("refused").with_data(json!([1, 2])))
        } else {
            Ok(())
        }
    });
    ns.on_connection(move |socket| {
        let tx1 = tx.clone();
        let tx2 = tx.clone();
        socket.on_disconnecting(move |socket, _reason| {
            let mut rooms = socket.rooms();
            rooms.retain(|r| r != socket.id());
            tx1.send(format!("disconnecting {rooms:?}")).unwrap();
        });
        socket.on_disconnect(move |_socket, reason| {
            tx2.send(format!("disconnect {reason}")).unwrap();
        });
        socket.on("panic", |_socket, _payload: Payload, _ack| {
            panic!("handler bug")
        });
        socket.on("echo", |_socket, payload: Payload, a| {
            if let Some(a) = a {
                a.send(payload).unwrap();
            }
        });
    });
    let template = io.of_dynamic(|name, _| name.starts_with("/tmp-"));
    template.on_connection(|_socket| {});
    let addr = start(io.clone()).await;

    let mut refused = WsClient::connect(addr).await;
    refused.send(r#"0{"refuse":1}"#).await;
    assert_eq!(
        refused.recv_text().await,
        r#"4{"message":"refused","data":[1,2]}"#
    );
    assert!(
        ns.adapter().rooms().is_empty(),
        "{:?}",
        ns.adapter().rooms()
    );

    let (mut c, _) = WsClient::connect_ns(addr, "0").await;
    assert!(ns.adapter().rooms().contains(&"from-middleware".to_owned()));
    // A panicking handler is contained: the connection keeps working.
    c.send(r#"2["panic"]"#).await;
    c.send(r#"21["echo","still here"]"#).await;
    assert_eq!(c.recv_text().await, r#"31["still here"]"#);

    // A dynamic namespace goes away with its last socket (cleanup on).
    c.send("0/tmp-1,").await;
    connect_sid(&c.recv_text().await);
    assert!(io.namespaces().contains(&"/tmp-1".to_owned()));
    c.send("1/tmp-1,").await;
    wait_until("/tmp-1 to be removed", || {
        !io.namespaces().contains(&"/tmp-1".to_owned())
    })
    .await;

    // Shutdown: every socket leaves with "server shutting down", after "disconnecting" saw
    // its rooms.
    io.close();
    for expected in [
        r#"disconnecting ["from-middleware"]"#,
        "disconnect server shutting down",
    ] {
        let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, expected);
    }
    c.expect_closed().await;
    assert!(ns.adapter().rooms().is_empty());
}

#[tokio::test]
async fn volatile_broadcasts_reach_open_sessions_and_skip_closed_ones() {
    let io = SocketIo::new();
    with_join(&io);
    let addr = start(io.clone()).await;
    let (mut a, _) = client(addr, &["v"]).await;
    let (b, b_id) = client(addr, &["v"]).await;
    let b_socket = io.of("/").get_socket(&b_id).unwrap();
    b_socket.conn().close();
    // b's session is closed (its socket may not have left yet): no error, a still gets it.
    io.to("v").volatile().emit("tick", json!(1)).unwrap();
    b_socket.emit_volatile("tick", json!(2)).unwrap();
    assert!(b_socket.emit("tick", json!(3)).is_err());
    assert_eq!(a.recv_text().await, r#"2["tick",1]"#);
    drop(b);
}

#[tokio::test]
async fn connect_floods_waiting_for_middleware_are_bounded() {
    let io = SocketIo::new();
    io.of("/slow")
        .use_middleware(|_socket, _auth: Value| async move {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            Ok(())
        });
    let addr = start(io.clone()).await;
    let mut c = WsClient::connect(addr).await;
    for _ in 0..20 {
        c.send("0/slow,").await;
    }
    let mut refused = 0;
    let mut accepted = 0;
    while refused + accepted < 20 {
        let text = c.recv_text().await;
        if text == r#"4/slow,{"message":"Too many pending connections"}"# {
            refused += 1;
        } else {
            connect_sid(&text);
            accepted += 1;
        }
    }
    assert_eq!((accepted, refused), (16, 4));
    // Each accepted CONNECT replaced the previous socket of the namespace: one is left.
    assert_eq!(io.of("/slow").sockets().len(), 1);
    // The budget is free again (after leaving: a CONNECT for a joined namespace would close
    // the connection, as in Node).
    c.send("1/slow,").await;
    c.send("0/slow,").await;
    connect_sid(&c.recv_text().await);
}
