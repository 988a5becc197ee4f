//! The engine mounted in axum with `Router::nest_service("/socket.io", …)`.

mod common;

use common::{WsClient, connect_sid};
use volley_socketio::{Payload, SocketIo};

#[tokio::test]
async fn socket_io_nested_in_an_axum_router() {
    let io = SocketIo::new();
    io.of("/").on_connection(|socket| {
        socket.on("echo", |_socket, payload: Payload, ack| {
            if let Some(ack) = ack {
                ack.send(payload).unwrap();
            }
        });
    });
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .nest_service("/socket.io", io.engine().clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // WebSocket.
    let mut c = WsClient::connect(addr).await;
    c.send("0").await;
    connect_sid(&c.recv_text().await);
    c.send(r#"21["echo","through axum"]"#).await;
    assert_eq!(c.recv_text().await, r#"31["through axum"]"#);
    // Polling.
    let p = common::PollClient::connect(addr).await;
    assert_eq!(p.send(&["0"]).await, 200);
    connect_sid(&p.recv().await[0]);
    // The rest of the app is untouched.
    let (status, _, body) = common::http(addr, "GET", "/", None).await;
    assert_eq!((status, body.as_slice()), (200, b"home".as_slice()));
}

#[tokio::test]
async fn cors_preflight_when_configured() {
    let io = SocketIo::builder()
        .cors(Some(volley_socketio::engineio::Cors::any()))
        .build();
    let addr = common::start(io).await;
    let raw = format!(
        "OPTIONS /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {addr}\r\nOrigin: http://example.test\r\nAccess-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(raw.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(common::WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 204"), "{head}");
    assert!(head.contains("access-control-allow-origin"), "{head}");
    // Other paths are not Socket.IO's.
    let (status, _, _) = common::http(addr, "GET", "/elsewhere", None).await;
    assert_eq!(status, 404);
}
