//! The engine mounted in axum with `Router::nest_service("/socket.io", engine)`.

mod common;

use std::time::Duration;

use common::{WAIT, next_close, next_text, request};
use volley::Message;
use volley_engineio::{CloseReason, Data, Engine, EngineConfig, TransportKind};

#[tokio::test]
async fn nest_service_serves_polling_and_websocket() {
    let (tx, mut sessions) = tokio::sync::mpsc::unbounded_channel();
    let engine = Engine::new(EngineConfig::default(), move |session| {
        let _ = tx.send(session);
    });
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "home" }))
        .nest_service("/socket.io", engine.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Polling: handshake, POST, GET.
    let reply = request(addr, "GET", "/socket.io/?EIO=4&transport=polling", &[], b"").await;
    assert_eq!(reply.status, 200);
    let open: serde_json::Value = serde_json::from_str(&reply.text()[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap().to_owned();
    let mut session = tokio::time::timeout(WAIT, sessions.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(session.id(), sid);
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let reply = request(addr, "POST", &target, &[], b"4via axum").await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(
        tokio::time::timeout(WAIT, session.recv()).await.unwrap(),
        Some(Data::Text("via axum".into()))
    );
    session.sender().send(Data::from("back")).unwrap();
    assert_eq!(
        request(addr, "GET", &target, &[], b"").await.text(),
        "4back"
    );

    // Upgrade to WebSocket through axum.
    let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let mut ws = tokio::time::timeout(WAIT, volley::connect(&url))
        .await
        .unwrap()
        .unwrap();
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while session.transport() != TransportKind::WebSocket {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    session.sender().send(Data::from("ws")).unwrap();
    assert_eq!(next_text(&mut ws).await, "4ws");
    // The rest of the app is untouched.
    assert_eq!(request(addr, "GET", "/", &[], b"").await.text(), "home");
    engine.close_all();
    // As in Node, a WebSocket session is closed without the close packet `1`.
    assert_eq!(next_close(&mut ws).await, None);
    assert_eq!(
        tokio::time::timeout(WAIT, session.recv()).await.unwrap(),
        None
    );
    assert_eq!(session.close_reason(), Some(CloseReason::ServerClose));
}
