//! The topics chat of `volley serve` at `/chat`, driven by volley clients against the binary.

use std::net::SocketAddr;

use serde_json::{Value, json};
use tokio::time::timeout;
use volley::{CloseCode, MaybeTlsStream, Message, WebSocket};

mod common;

use common::{Serve, WAIT};

type Client = WebSocket<MaybeTlsStream>;

async fn connect(addr: SocketAddr, path: &str) -> Client {
    timeout(WAIT, volley::connect(&format!("ws://{addr}{path}")))
        .await
        .expect("connect timed out")
        .expect("connect")
}

async fn recv(ws: &mut Client) -> Message {
    match timeout(WAIT, ws.recv()).await.expect("recv timed out") {
        Some(Ok(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// The next message as JSON; the `offset` of a publication or of a `joined` answer (checked to
/// be a number) is taken out, so that they compare equal to what the test expects.
async fn recv_json(ws: &mut Client) -> Value {
    let mut value = recv_raw_json(ws).await;
    if let Some(object) = value.as_object_mut()
        && (object.contains_key("from") || object.contains_key("joined"))
        && let Some(offset) = object.remove("offset")
    {
        assert!(offset.is_u64(), "offset {offset}");
    }
    value
}

async fn recv_raw_json(ws: &mut Client) -> Value {
    match recv(ws).await {
        Message::Text(text) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected text, got {other:?}"),
    }
}

async fn send_json(ws: &mut Client, value: Value) {
    timeout(WAIT, ws.send(value.to_string()))
        .await
        .expect("send timed out")
        .expect("send");
}

/// Connects to the chat and returns the client with its id.
async fn chat_client(addr: SocketAddr) -> (Client, u64) {
    let mut ws = connect(addr, "/chat").await;
    let hello = recv_json(&mut ws).await;
    let id = hello["id"].as_u64().expect("{\"id\": n} first");
    (ws, id)
}

#[tokio::test]
async fn two_clients_join_a_topic_and_one_publishes() {
    let server = Serve::start().await;
    assert!(server.listening.contains("/chat"), "{}", server.listening);
    let (mut alice, alice_id) = chat_client(server.addr).await;
    let (mut bob, _) = chat_client(server.addr).await;
    let (mut carol, _) = chat_client(server.addr).await;

    send_json(&mut alice, json!({"join": "rust"})).await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"joined": "rust", "subscribers": 1})
    );
    send_json(&mut bob, json!({"join": "rust"})).await;
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"joined": "rust", "subscribers": 2})
    );
    send_json(&mut carol, json!({"join": "go"})).await;
    assert_eq!(
        recv_json(&mut carol).await,
        json!({"joined": "go", "subscribers": 1})
    );

    let data = json!({"text": "hello", "n": [1, 2.5, null], "nested": {"ok": true}});
    send_json(&mut alice, json!({"topic": "rust", "data": data})).await;
    let expected = json!({"topic": "rust", "from": alice_id, "data": data});
    assert_eq!(recv_json(&mut bob).await, expected);
    // The sender gets its own message too (it joined the topic).
    assert_eq!(recv_json(&mut alice).await, expected);

    // Carol, on another topic, got nothing: her next message is the answer to her next command.
    send_json(&mut carol, json!({"leave": "go"})).await;
    assert_eq!(recv_json(&mut carol).await, json!({"left": "go"}));

    // After leaving, bob no longer gets the topic.
    send_json(&mut bob, json!({"leave": "rust"})).await;
    assert_eq!(recv_json(&mut bob).await, json!({"left": "rust"}));
    send_json(&mut alice, json!({"topic": "rust", "data": "only me"})).await;
    assert_eq!(
        recv_json(&mut alice).await,
        json!({"topic": "rust", "from": alice_id, "data": "only me"})
    );
    send_json(&mut bob, json!({"join": "rust"})).await;
    assert_eq!(
        recv_json(&mut bob).await,
        json!({"joined": "rust", "subscribers": 2})
    );
}

#[tokio::test]
async fn bad_commands_get_errors_and_binary_gets_1003() {
    let server = Serve::start().await;
    let (mut ws, _) = chat_client(server.addr).await;
    for bad in [
        "not json",
        "{\"join\": 5}",
        "{\"join\": \"a\", \"leave\": \"b\"}",
        "{\"shout\": \"hi\"}",
        "{}",
        "{\"join\": \"\"}",
    ] {
        timeout(WAIT, ws.send(bad)).await.unwrap().unwrap();
        let reply = recv_json(&mut ws).await;
        assert!(reply["error"].is_string(), "{bad} -> {reply}");
    }
    let long = "x".repeat(129);
    send_json(&mut ws, json!({"join": long})).await;
    assert!(recv_json(&mut ws).await["error"].is_string());
    for i in 0..64 {
        send_json(&mut ws, json!({"join": format!("topic {i}")})).await;
        assert_eq!(recv_json(&mut ws).await["subscribers"], 1);
    }
    send_json(&mut ws, json!({"join": "one too many"})).await;
    assert!(recv_json(&mut ws).await["error"].is_string());
    send_json(&mut ws, json!({"join": "topic 0"})).await;
    assert_eq!(recv_json(&mut ws).await["joined"], "topic 0");
    send_json(&mut ws, json!({"leave": "topic 0"})).await;
    assert_eq!(recv_json(&mut ws).await["left"], "topic 0");

    // Still usable after errors.
    send_json(&mut ws, json!({"join": "t"})).await;
    assert_eq!(recv_json(&mut ws).await["joined"], "t");

    timeout(WAIT, ws.send(Message::binary(vec![1, 2, 3])))
        .await
        .unwrap()
        .unwrap();
    match recv(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::UNSUPPORTED_DATA),
        other => panic!("expected close 1003, got {other:?}"),
    }
    assert!(timeout(WAIT, ws.recv()).await.unwrap().is_none());
}

#[tokio::test]
async fn echo_still_answers_everywhere_else() {
    let server = Serve::start().await;
    for path in ["/", "/other"] {
        let mut ws = connect(server.addr, path).await;
        timeout(WAIT, ws.send("{\"join\": \"t\"}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(recv(&mut ws).await, Message::text("{\"join\": \"t\"}"));
        timeout(WAIT, ws.close(None)).await.unwrap().unwrap();
    }
}
