//! The conformance example's behaviour through raw Engine.IO/Socket.IO packets, over WebSocket
//! (`volley::connect`) and HTTP long-polling.

mod common;
#[path = "../examples/conformance.rs"]
mod conformance;

use std::net::SocketAddr;
use std::time::Duration;

use common::{PollClient, WsClient, connect_sid, split_json};
use serde_json::json;

/// The conformance server with a slow heartbeat (tests that hold several clients do not read
/// all of them all the time) and connectTimeout 1000 ms.
async fn server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = conformance::Options {
        ping_interval: Duration::from_secs(10),
        ping_timeout: Duration::from_secs(10),
        ..Default::default()
    };
    tokio::spawn(conformance::serve(listener, opts));
    addr
}

/// Connects to `/` over WebSocket and consumes the `auth` event.
async fn joined(addr: SocketAddr) -> (WsClient, String) {
    let (mut c, sid) = WsClient::connect_ns(addr, "0").await;
    assert_eq!(c.recv_text().await, r#"2["auth",{}]"#);
    (c, sid)
}

#[tokio::test]
async fn connect_replies_with_a_fresh_sid_and_emits_auth() {
    let addr = server().await;
    let mut c = WsClient::connect(addr).await;
    assert_eq!(c.open["pingInterval"], 10_000);
    assert_eq!(c.open["maxPayload"], 1_000_000);
    c.send(r#"0{"token":"abc"}"#).await;
    let reply = c.recv_text().await;
    let sid = connect_sid(&reply);
    assert_eq!(sid.len(), 20);
    assert_eq!(c.recv_text().await, r#"2["auth",{"token":"abc"}]"#);
    // The same client in /custom: another socket id, the same behaviour.
    c.send(r#"0/custom,"#).await;
    let reply = c.recv_text().await;
    assert!(reply.starts_with("0/custom,"), "{reply}");
    let sid2 = connect_sid(&reply);
    assert_ne!(sid, sid2);
    assert_eq!(c.recv_text().await, r#"2/custom,["auth",{}]"#);
    c.send(r#"2/custom,["message",1]"#).await;
    assert_eq!(c.recv_text().await, r#"2/custom,["message-back",1]"#);
}

#[tokio::test]
async fn unknown_namespace_gets_connect_error() {
    let addr = server().await;
    let mut c = WsClient::connect(addr).await;
    c.send("0/nope,").await;
    assert_eq!(
        c.recv_text().await,
        r#"4/nope,{"message":"Invalid namespace"}"#
    );
    // The connection stays usable for other namespaces.
    c.send("0").await;
    connect_sid(&c.recv_text().await);
}

#[tokio::test]
async fn middleware_rejection_sends_message_and_data() {
    let addr = server().await;
    let mut c = WsClient::connect(addr).await;
    c.send(r#"0/custom,{"reject":true}"#).await;
    assert_eq!(
        c.recv_text().await,
        r#"4/custom,{"message":"not authorized","data":{"code":401}}"#
    );
}

#[tokio::test]
async fn events_and_acks_from_the_client() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    c.send(r#"2["message","a",{"b":[1,2]},null]"#).await;
    assert_eq!(
        c.recv_text().await,
        r#"2["message-back","a",{"b":[1,2]},null]"#
    );
    c.send(r#"27["message-with-ack","x",3]"#).await;
    assert_eq!(c.recv_text().await, r#"37["x",3]"#);
    // An ack request for an event without arguments is answered with no arguments.
    c.send(r#"28["message-with-ack"]"#).await;
    assert_eq!(c.recv_text().await, r#"38[]"#);
}

#[tokio::test]
async fn server_acks_are_answered_and_time_out() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    c.send(r#"2["server-ack",{"q":1}]"#).await;
    let ask = c.recv_text().await;
    let (prefix, json) = split_json(&ask);
    assert_eq!(json, json!(["ask", {"q": 1}]));
    let id: u64 = prefix[1..].parse().expect("ask carries an ack id");
    c.send(&format!(r#"3{id}["answer",2]"#)).await;
    assert_eq!(c.recv_text().await, r#"2["ask-result","answer",2]"#);

    // Unanswered: ask-timeout after the 1000 ms timeout, not before.
    c.send(r#"2["server-ack","again"]"#).await;
    let ask = c.recv_text().await;
    assert!(ask.contains(r#"["ask","again"]"#), "{ask}");
    let start = tokio::time::Instant::now();
    assert_eq!(c.recv_text().await, r#"2["ask-timeout"]"#);
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    // A late answer is ignored.
    let (prefix, _) = split_json(&ask);
    c.send(&format!(r#"3{}["late"]"#, &prefix[1..])).await;
    c.send(r#"21["message-with-ack"]"#).await;
    assert_eq!(c.recv_text().await, "31[]");
}

#[tokio::test]
async fn binary_event_with_attachments_round_trips() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    c.send(r#"52-["message",{"_placeholder":true,"num":0},"mid",{"_placeholder":true,"num":1}]"#)
        .await;
    c.send_binary(&[1, 2, 3]).await;
    c.send_binary(&[]).await;
    assert_eq!(
        c.recv_text().await,
        r#"52-["message-back",{"_placeholder":true,"num":0},"mid",{"_placeholder":true,"num":1}]"#
    );
    assert_eq!(&c.recv_binary().await[..], &[1, 2, 3]);
    assert_eq!(&c.recv_binary().await[..], &[] as &[u8]);
    // Binary ack.
    c.send(r#"51-4["message-with-ack",{"_placeholder":true,"num":0}]"#)
        .await;
    c.send_binary(b"xyz").await;
    assert_eq!(
        c.recv_text().await,
        r#"61-4[{"_placeholder":true,"num":0}]"#
    );
    assert_eq!(&c.recv_binary().await[..], b"xyz");
}

#[tokio::test]
async fn room_broadcast_reaches_exactly_the_members() {
    let addr = server().await;
    let (mut a, _) = joined(addr).await;
    let (mut b, _) = joined(addr).await;
    let (mut outsider, _) = joined(addr).await;
    a.send(r#"21["join","r"]"#).await;
    assert_eq!(a.recv_text().await, "31[]");
    b.send(r#"21["join","r"]"#).await;
    assert_eq!(b.recv_text().await, "31[]");

    a.send(r#"22["to-room","r","hi",7]"#).await;
    // The broadcast is queued before the ack: the sender, a member, gets it first.
    assert_eq!(a.recv_text().await, r#"2["room-message","hi",7]"#);
    assert_eq!(a.recv_text().await, "32[]");
    assert_eq!(b.recv_text().await, r#"2["room-message","hi",7]"#);
    // The outsider got nothing: its next frame is the answer to its own request.
    outsider.send(r#"29["message-with-ack","probe"]"#).await;
    assert_eq!(outsider.recv_text().await, r#"39["probe"]"#);

    // After leaving, b no longer gets the room's messages; a sender outside the room does not
    // get its own broadcast.
    b.send(r#"23["leave","r"]"#).await;
    assert_eq!(b.recv_text().await, "33[]");
    outsider.send(r#"24["to-room","r","again"]"#).await;
    assert_eq!(outsider.recv_text().await, "34[]");
    assert_eq!(a.recv_text().await, r#"2["room-message","again"]"#);
    b.send(r#"25["message-with-ack","probe"]"#).await;
    assert_eq!(b.recv_text().await, r#"35["probe"]"#);
}

#[tokio::test]
async fn disconnect_both_ways() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    c.send(r#"0/custom,"#).await;
    connect_sid(&c.recv_text().await);
    assert_eq!(c.recv_text().await, r#"2/custom,["auth",{}]"#);
    // Server-side namespace disconnect: a DISCONNECT packet; the other namespace lives on.
    c.send(r#"2["disconnect-me"]"#).await;
    assert_eq!(c.recv_text().await, "1");
    c.send(r#"2/custom,["message",2]"#).await;
    assert_eq!(c.recv_text().await, r#"2/custom,["message-back",2]"#);
    // Client-side namespace disconnect, then reconnecting the namespace gives a new socket.
    c.send("1/custom,").await;
    c.send("0/custom,").await;
    connect_sid(&c.recv_text().await);
    assert_eq!(c.recv_text().await, r#"2/custom,["auth",{}]"#);
    // A packet for a namespace no longer joined ("/") closes the connection, as in Node.
    c.send(r#"2["message",1]"#).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn close_transport_closes_the_session() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    c.send(r#"2["close-transport"]"#).await;
    c.expect_closed().await;
}

#[tokio::test]
async fn connect_timeout_closes_a_session_without_namespace() {
    let addr = server().await;
    let mut c = WsClient::connect(addr).await;
    let start = tokio::time::Instant::now();
    c.expect_closed().await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // A client that joins in time is kept.
    let (mut c, _) = joined(addr).await;
    assert!(c.next_within(Duration::from_millis(1500)).await.is_err());
}

#[tokio::test]
async fn invalid_packets_close_the_connection() {
    let addr = server().await;
    for bad in [
        "9",                      // unknown packet type
        r#"2["message""#,         // broken JSON
        r#"2{"not":"an array"}"#, // EVENT payload must be an array
        r#"5999-["message"]"#,    // more attachments than allowed
        r#"2abc["message"]"#,     // garbage id
    ] {
        let (mut c, _) = joined(addr).await;
        c.send(bad).await;
        c.expect_closed().await;
    }
    // A binary frame with no binary packet announced.
    let (mut c, _) = joined(addr).await;
    c.send_binary(b"stray").await;
    c.expect_closed().await;
    // A text packet while attachments are expected.
    let (mut c, _) = joined(addr).await;
    c.send(r#"51-["message",{"_placeholder":true,"num":0}]"#)
        .await;
    c.send(r#"2["message",1]"#).await;
    c.expect_closed().await;
    // The server is still fine.
    let (mut c, _) = joined(addr).await;
    c.send(r#"21["message-with-ack",1]"#).await;
    assert_eq!(c.recv_text().await, "31[1]");
}

#[tokio::test]
async fn polling_transport_connect_event_ack() {
    let addr = server().await;
    let c = PollClient::connect(addr).await;
    assert_eq!(c.send(&[r#"0{"user":"p"}"#]).await, 200);
    let mut got = c.recv().await;
    if got.len() < 2 {
        got.extend(c.recv().await);
    }
    connect_sid(&got[0]);
    assert_eq!(got[1], r#"2["auth",{"user":"p"}]"#);
    // Two packets in one POST.
    assert_eq!(
        c.send(&[r#"2["message","m"]"#, r#"25["message-with-ack",true]"#])
            .await,
        200
    );
    let mut got = c.recv().await;
    if got.len() < 2 {
        got.extend(c.recv().await);
    }
    assert_eq!(
        got,
        vec![r#"2["message-back","m"]"#.to_owned(), "35[true]".to_owned()]
    );
    // Binary over polling: base64 attachments.
    let body = format!(
        "4{}\x1eb{}",
        r#"51-["message",{"_placeholder":true,"num":0}]"#, "AQID"
    );
    assert_eq!(c.send_raw(&body).await, 200);
    let (status, packets) = c.poll().await;
    assert_eq!(status, 200);
    assert_eq!(
        packets,
        vec![
            r#"451-["message-back",{"_placeholder":true,"num":0}]"#.to_owned(),
            "bAQID".to_owned()
        ]
    );
}

#[tokio::test]
async fn ws_frames_are_in_order_for_many_events() {
    let addr = server().await;
    let (mut c, _) = joined(addr).await;
    for i in 0..200 {
        c.send(&format!(r#"2["message",{i}]"#)).await;
    }
    for i in 0..200 {
        assert_eq!(c.recv_text().await, format!(r#"2["message-back",{i}]"#));
    }
    assert!(matches!(
        c.next_within(Duration::from_millis(100)).await,
        Err(())
    ));
}

#[tokio::test]
async fn polling_and_websocket_clients_share_rooms() {
    let addr = server().await;
    let p = PollClient::connect(addr).await;
    assert_eq!(p.send(&["0"]).await, 200);
    let mut got = p.recv().await;
    if got.len() < 2 {
        got.extend(p.recv().await);
    }
    assert_eq!(got[1], r#"2["auth",{}]"#);
    assert_eq!(p.send(&[r#"21["join","mixed"]"#]).await, 200);
    assert_eq!(p.recv().await, vec!["31[]".to_owned()]);
    let (mut ws, _) = joined(addr).await;
    ws.send(r#"21["to-room","mixed",{"n":1}]"#).await;
    assert_eq!(ws.recv_text().await, "31[]");
    assert_eq!(
        p.recv().await,
        vec![r#"2["room-message",{"n":1}]"#.to_owned()]
    );
}

/// `SocketIo::serve` runs on `volley::Server`'s router: the handshake carries the peer address
/// (it was empty when Socket.IO was mounted on a server before).
#[tokio::test]
async fn the_handshake_knows_the_peer_address() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let io = volley_socketio::SocketIo::builder().build();
    io.of("/").on_connection(|socket| {
        let address = socket.handshake().address.map(|a| a.to_string());
        let _ = socket.emit("address", json!(address));
    });
    let serving = io.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    let mut c = WsClient::connect(addr).await;
    c.send("0").await;
    connect_sid(&c.recv_text().await);
    let event = c.recv_text().await;
    assert!(event.starts_with(r#"2["address","127.0.0.1:"#), "{event}");
}
