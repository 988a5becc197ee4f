//! `volley serve` mounts Socket.IO at `/socket.io/` beside its WebSocket endpoints: the official
//! `socket.io-client` (Node) joins rooms and exchanges acknowledged messages in the chat
//! namespace (one client upgrading from long-polling, one websocket-only), while the echo
//! endpoint keeps answering on the same port.

mod common;

use std::time::Duration;

use common::Serve;
use tokio::process::Command;
use tokio::time::timeout;
use volley::Message;

#[tokio::test]
async fn volley_serve_speaks_socketio_to_the_official_client() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    assert!(
        repo.join("e2e/node_modules/socket.io-client").exists(),
        "peers missing: run scripts/install-peers"
    );
    let serve = Serve::start().await;
    assert!(
        serve.listening.contains("/socket.io/"),
        "{}",
        serve.listening
    );
    let output = timeout(
        Duration::from_secs(60),
        Command::new("node")
            .arg(repo.join("e2e/node/sio_chat.js"))
            .arg(format!("http://{}", serve.addr))
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("socket.io-client finished in time")
    .expect("spawn node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success()
            && stdout.contains("PASS b receives it")
            && !stdout.contains("FAIL"),
        "socket.io-client against volley serve failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );

    // The WebSocket echo still answers on the same port.
    let mut ws = volley::connect(&serve.url()).await.expect("connect");
    ws.send("still here").await.expect("send");
    let echoed = timeout(Duration::from_secs(10), ws.recv())
        .await
        .expect("echo in time");
    assert!(matches!(echoed, Some(Ok(Message::Text(t))) if t == "still here"));
}

#[tokio::test]
async fn engineio_errors_come_from_the_mounted_service() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let serve = Serve::start().await;
    let mut s = tokio::net::TcpStream::connect(serve.addr)
        .await
        .expect("connect");
    s.write_all(
        b"GET /socket.io/?EIO=3&transport=polling HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .expect("write");
    let mut response = Vec::new();
    timeout(Duration::from_secs(10), s.read_to_end(&mut response))
        .await
        .expect("answer in time")
        .expect("read");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains(r#"{"code":5,"message":"Unsupported protocol version"}"#),
        "{response}"
    );
}
