//! The Socket.IO examples through raw packets: the chat (`examples/socketio_chat.rs`: rooms,
//! presence, the `disconnecting` hook, a rate-limiting packet middleware) and the dashboard
//! (`examples/socketio_dashboard.rs`: volatile typed broadcasts with a binary field).

mod common;
#[path = "../examples/socketio_chat.rs"]
#[allow(dead_code)]
mod socketio_chat;
#[path = "../examples/socketio_dashboard.rs"]
#[allow(dead_code)]
mod socketio_dashboard;

use std::time::Duration;

use common::{WsClient, connect_sid, split_json, start};
use serde_json::json;
use volley_socketio::SocketIo;

async fn chat_client(addr: std::net::SocketAddr, name: &str) -> (WsClient, String) {
    let mut c = WsClient::connect(addr).await;
    c.send(&format!(r#"0/chat,{{"name":"{name}"}}"#)).await;
    let sid = connect_sid(&c.recv_text().await);
    (c, sid)
}

/// The next packet's JSON data.
async fn next_json(c: &mut WsClient) -> serde_json::Value {
    split_json(&c.recv_text().await).1
}

#[tokio::test]
async fn chat_rooms_presence_and_messages() {
    let io = SocketIo::new();
    socketio_chat::chat_namespace(&io);
    let addr = start(io.clone()).await;

    // No name: refused.
    let mut nameless = WsClient::connect(addr).await;
    nameless.send("0/chat,").await;
    assert_eq!(
        nameless.recv_text().await,
        r#"4/chat,{"message":"a name is needed"}"#
    );

    let (mut alice, _) = chat_client(addr, "alice").await;
    let (mut bob, _) = chat_client(addr, "bob").await;
    let (mut carol, _) = chat_client(addr, "carol").await;

    alice.send(r#"2/chat,1["join","lobby"]"#).await;
    assert_eq!(
        alice.recv_text().await,
        r#"3/chat,1[{"ok":true,"members":["alice"]}]"#
    );
    bob.send(r#"2/chat,1["join","lobby"]"#).await;
    assert_eq!(
        bob.recv_text().await,
        r#"3/chat,1[{"ok":true,"members":["alice","bob"]}]"#
    );
    assert_eq!(
        next_json(&mut alice).await,
        json!(["presence", {"room": "lobby", "name": "bob", "online": true}])
    );

    // A message reaches the room, sender included, and nobody else.
    alice
        .send(r#"2/chat,2["message",{"room":"lobby","text":"hi"}]"#)
        .await;
    for c in [&mut alice, &mut bob] {
        assert_eq!(
            next_json(c).await,
            json!(["message", {"room": "lobby", "from": "alice", "text": "hi"}])
        );
    }
    assert_eq!(alice.recv_text().await, r#"3/chat,2[{"ok":true}]"#);
    carol
        .send(r#"2/chat,1["message",{"room":"lobby","text":"let me in"}]"#)
        .await;
    assert_eq!(
        carol.recv_text().await,
        r#"3/chat,1[{"ok":false,"error":"not in that room"}]"#
    );
    // Typing: the others only.
    bob.send(r#"2/chat,["typing","lobby"]"#).await;
    assert_eq!(
        next_json(&mut alice).await,
        json!(["typing", {"room": "lobby", "name": "bob", "online": true}])
    );

    // Bob's connection drops: the disconnecting hook still sees his rooms.
    bob.close().await;
    assert_eq!(
        next_json(&mut alice).await,
        json!(["presence", {"room": "lobby", "name": "bob", "online": false}])
    );
    // Nothing else was sent to carol (she is in no room).
    assert!(carol.next_within(Duration::from_millis(100)).await.is_err());
}

#[tokio::test]
async fn chat_rate_limit_rejects_events_and_says_so_once() {
    let io = SocketIo::new();
    socketio_chat::chat_namespace(&io);
    let addr = start(io.clone()).await;
    let (mut alice, _) = chat_client(addr, "alice").await;
    for i in 0..25 {
        alice.send(&format!(r#"2/chat,{i}["leave","x"]"#)).await;
    }
    // 20 answered, then one warning; the 4 others are dropped without a word.
    for i in 0..20 {
        assert_eq!(
            alice.recv_text().await,
            format!(r#"3/chat,{i}[{{"ok":true}}]"#)
        );
    }
    assert_eq!(
        alice.recv_text().await,
        r#"2/chat,["chat-error","slow down"]"#
    );
    assert!(alice.next_within(Duration::from_millis(100)).await.is_err());
}

#[tokio::test]
async fn dashboard_pushes_typed_snapshots_with_a_binary_field() {
    let io = SocketIo::new();
    let (ns, latest) = socketio_dashboard::dashboard_namespace(&io);
    let addr = start(io.clone()).await;
    let mut c = WsClient::connect(addr).await;
    c.send("0/dashboard,").await;
    connect_sid(&c.recv_text().await);
    let publisher = tokio::spawn(socketio_dashboard::publish(
        ns,
        latest,
        Duration::from_millis(20),
    ));
    let mut last_seq = 0;
    for _ in 0..3 {
        let text = c.recv_text().await;
        let (head, data) = split_json(&text);
        assert_eq!(head, "51-/dashboard,", "one attachment: {text}");
        assert_eq!(data[0], "metrics");
        let seq = data[1]["seq"].as_u64().unwrap();
        assert!(seq > last_seq);
        last_seq = seq;
        assert_eq!(data[1]["clients"], 1);
        assert_eq!(data[1]["load"], json!({"_placeholder": true, "num": 0}));
        let load = c.recv_binary().await;
        assert_eq!(load.len() as u64, seq.min(60));
        assert_eq!(u64::from(*load.last().unwrap()), seq * 37 % 256);
    }
    // `latest` answers with the last snapshot, typed and binary too.
    c.send(r#"2/dashboard,7["latest"]"#).await;
    loop {
        let text = c.recv_text().await;
        if text.starts_with("61-/dashboard,7") {
            let (_, data) = split_json(&text);
            assert!(data[0]["seq"].as_u64().unwrap() >= last_seq);
            c.recv_binary().await;
            break;
        }
        // A metrics push in between (and its attachment).
        c.recv_binary().await;
    }
    publisher.abort();
}
