//! The reusable chat namespace (`volley_socketio::chat`) through raw packets.

mod common;

use common::{WsClient, connect_sid, split_json, start};
use serde_json::json;
use volley_socketio::SocketIo;

async fn chat_client(addr: std::net::SocketAddr) -> (WsClient, String) {
    let mut c = WsClient::connect(addr).await;
    c.send("0/chat,").await;
    let sid = connect_sid(&c.recv_text().await);
    (c, sid)
}

#[tokio::test]
async fn chat_rooms_and_messages_with_acks() {
    let io = SocketIo::new();
    volley_socketio::chat::chat_namespace(&io);
    let addr = start(io.clone()).await;
    let (mut alice, alice_id) = chat_client(addr).await;
    let (mut bob, bob_id) = chat_client(addr).await;
    let (mut carol, _) = chat_client(addr).await;

    alice.send(r#"2/chat,1["join","lobby"]"#).await;
    assert_eq!(
        split_json(&alice.recv_text().await).1,
        json!(["joined", {"id": alice_id, "room": "lobby"}])
    );
    assert_eq!(alice.recv_text().await, r#"3/chat,1[{"ok":true}]"#);
    bob.send(r#"2/chat,1["join","lobby"]"#).await;
    assert_eq!(
        split_json(&bob.recv_text().await).1,
        json!(["joined", {"id": bob_id, "room": "lobby"}])
    );
    assert_eq!(bob.recv_text().await, r#"3/chat,1[{"ok":true}]"#);
    assert_eq!(
        split_json(&alice.recv_text().await).1,
        json!(["joined", {"id": bob_id, "room": "lobby"}])
    );

    bob.send(r#"2/chat,2["message",{"room":"lobby","text":"hi all"}]"#)
        .await;
    let expected = json!(["message", {"from": bob_id, "room": "lobby", "text": "hi all"}]);
    assert_eq!(split_json(&bob.recv_text().await).1, expected);
    assert_eq!(bob.recv_text().await, r#"3/chat,2[{"ok":true}]"#);
    assert_eq!(split_json(&alice.recv_text().await).1, expected);

    // Carol is not in the room: refused, and she receives nothing else.
    carol
        .send(r#"2/chat,3["message",{"room":"lobby","text":"let me in"}]"#)
        .await;
    assert_eq!(
        carol.recv_text().await,
        r#"3/chat,3[{"ok":false,"error":"not in that room"}]"#
    );
    carol.send(r#"2/chat,4["join",""]"#).await;
    assert!(carol.recv_text().await.contains(r#""ok":false"#));
    carol.send(r#"2/chat,5["rooms"]"#).await;
    assert_eq!(carol.recv_text().await, r#"3/chat,5[[]]"#);

    alice.send(r#"2/chat,6["leave","lobby"]"#).await;
    assert_eq!(alice.recv_text().await, r#"3/chat,6[{"ok":true}]"#);
    assert_eq!(
        split_json(&bob.recv_text().await).1,
        json!(["left", {"id": alice_id, "room": "lobby"}])
    );
    bob.send(r#"2/chat,7["rooms"]"#).await;
    assert_eq!(bob.recv_text().await, r#"3/chat,7[["lobby"]]"#);
}
