//! Opening handshakes: what the server handler sees, and the client against scripted raw servers.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{HeaderName, HeaderValue};
use volley::{ClientBuilder, Config, Error, HandshakeError, Message, ProtocolError};

#[tokio::test]
async fn handler_sees_the_request_path_query_and_headers() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/chat/room?user=ann&x=1"))
            .header(
                HeaderName::from_static("x-token"),
                HeaderValue::from_static("secret"),
            )
            .protocol("chat.v1")
            .connect(),
    )
    .await
    .expect("connect");
    assert_eq!(response.response.status(), 101);
    // The server selects no subprotocol.
    assert_eq!(response.protocol, None);
    match within(seen.recv()).await {
        Some(Seen::Open(request)) => {
            assert_eq!(request.method(), "GET");
            assert_eq!(request.uri().path(), "/chat/room");
            assert_eq!(request.uri().query(), Some("user=ann&x=1"));
            assert_eq!(request.headers()["x-token"], "secret");
            assert_eq!(request.headers()["sec-websocket-protocol"], "chat.v1");
            assert_eq!(request.headers()["host"], addr.to_string().as_str());
        }
        other => panic!("expected the request, got {other:?}"),
    }
    within(ws.close(None)).await.unwrap();
}

#[tokio::test]
async fn client_sends_a_valid_request() {
    let (listener, addr) = raw_listener().await;
    let client_task = tokio::spawn(async move {
        ClientBuilder::new(format!("ws://{addr}/path?q=1"))
            .config(Config::default().open_timeout(Duration::from_secs(5)))
            .connect()
            .await
    });
    let (mut raw, head) = raw_accept_request(&listener).await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /path?q=1 HTTP/1.1\r\n"), "{head:?}");
    assert!(lower.contains(&format!("host: {addr}\r\n")), "{head:?}");
    assert!(lower.contains("upgrade: websocket\r\n"), "{head:?}");
    assert!(lower.contains("connection: upgrade\r\n"), "{head:?}");
    assert!(lower.contains("sec-websocket-version: 13\r\n"), "{head:?}");
    // 16 random bytes in base64: 24 characters ending in "==".
    let key = request_key(&head);
    assert_eq!(key.len(), 24);
    assert!(key.ends_with("=="));
    raw.write(switching_protocols(&head).as_bytes()).await;
    let (mut ws, _) = within(client_task).await.unwrap().expect("handshake");
    within(ws.send("hi")).await.unwrap();
    let f = raw.read_frame().await;
    assert!(f.masked, "client frames must be masked");
    assert_eq!((f.opcode, f.payload.as_slice()), (OP_TEXT, &b"hi"[..]));
}

/// Runs the client against a raw server that answers the request with `respond(head)`, and
/// returns the client's result.
async fn client_against(
    respond: impl FnOnce(&str) -> Vec<u8> + Send + 'static,
) -> volley::Result<volley::WebSocket<volley::MaybeTlsStream>> {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, head) = raw_accept_request(&listener).await;
        raw.write(&respond(&head)).await;
        // Keep the connection open a moment so the client reads the response, not an EOF.
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
    let result = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .config(Config::default().open_timeout(Duration::from_secs(5)))
            .connect(),
    )
    .await
    .map(|(ws, _)| ws);
    server.abort();
    result
}

#[tokio::test]
async fn wrong_accept_is_a_handshake_error() {
    let result = client_against(|_| {
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {ACCEPT}\r\n\r\n"
        )
        .into_bytes()
    })
    .await;
    assert!(
        matches!(result, Err(Error::Handshake(HandshakeError::InvalidAccept))),
        "{result:?}"
    );
}

#[tokio::test]
async fn missing_accept_is_a_handshake_error() {
    let result = client_against(|_| {
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            .to_vec()
    })
    .await;
    assert!(
        matches!(result, Err(Error::Handshake(HandshakeError::InvalidAccept))),
        "{result:?}"
    );
}

#[tokio::test]
async fn not_found_is_unexpected_status_404() {
    let result = client_against(|_| {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found"
            .to_vec()
    })
    .await;
    assert!(
        matches!(
            result,
            Err(Error::Handshake(HandshakeError::UnexpectedStatus(404)))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn unoffered_subprotocol_is_refused() {
    let result = client_against(|head| {
        let ok = switching_protocols(head);
        ok.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: evil\r\n\r\n")
            .into_bytes()
    })
    .await;
    assert!(
        matches!(
            result,
            Err(Error::Handshake(HandshakeError::UnexpectedSubprotocol(ref p))) if p == "evil"
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn unoffered_extension_is_refused() {
    let result = client_against(|head| {
        let ok = switching_protocols(head);
        ok.replace(
            "\r\n\r\n",
            "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
        )
        .into_bytes()
    })
    .await;
    assert!(
        matches!(
            result,
            Err(Error::Handshake(HandshakeError::UnexpectedExtension(_)))
        ),
        "{result:?}"
    );
}

#[tokio::test]
async fn response_split_into_tiny_writes_is_accepted() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, head) = raw_accept_request(&listener).await;
        let mut bytes = switching_protocols(&head).into_bytes();
        bytes.extend(server_frame(OP_TEXT, b"welcome"));
        for chunk in bytes.chunks(7) {
            raw.write(chunk).await;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        raw
    });
    let mut ws = client(addr, Config::default()).await;
    assert_eq!(next_msg(&mut ws).await, Message::text("welcome"));
    drop(within(server).await.unwrap());
}

#[tokio::test]
async fn frames_in_the_same_write_as_the_101_are_delivered() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (mut raw, head) = raw_accept_request(&listener).await;
        let mut bytes = switching_protocols(&head).into_bytes();
        bytes.extend(server_frame(OP_TEXT, b"early"));
        bytes.extend(server_frame(OP_PING, b"early ping"));
        raw.write(&bytes).await;
        let pong = raw.read_frame().await;
        (raw, pong)
    });
    let mut ws = client(addr, Config::default()).await;
    assert_eq!(next_msg(&mut ws).await, Message::text("early"));
    assert!(matches!(next_msg(&mut ws).await, Message::Ping(p) if p == "early ping"));
    let (_raw, pong) = within(server).await.unwrap();
    assert!(pong.masked);
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"early ping"[..])
    );
}

#[tokio::test]
async fn masked_server_frame_fails_the_client_with_1002() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        raw.write(&server_frame(OP_TEXT, b"fine")).await;
        raw.write(&frame(true, OP_TEXT, Some([1, 2, 3, 4]), b"masked!"))
            .await;
        let close = raw.read_close().await;
        // Like a real server: echo the close and close the TCP connection first.
        raw.write(&server_frame(OP_CLOSE, &close.payload)).await;
        close
    });
    let mut ws = client(addr, Config::default()).await;
    assert_eq!(next_msg(&mut ws).await, Message::text("fine"));
    let result = within(ws.recv()).await;
    assert!(
        matches!(
            result,
            Some(Err(Error::Protocol(ProtocolError::MaskedFrame)))
        ),
        "{result:?}"
    );
    let close = within(server).await.unwrap();
    assert!(close.masked);
    assert_eq!(close.close_code(), Some(1002));
    // Finishing: the next recv sees the server's TCP close and ends the stream.
    let start = Instant::now();
    assert!(within(ws.recv()).await.is_none());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (raw, _head) = raw_accept_request(&listener).await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(raw);
    });
    let start = Instant::now();
    let result = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .config(Config::default().open_timeout(Duration::from_millis(200)))
            .connect(),
    )
    .await;
    let elapsed = start.elapsed();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
    server.abort();
}

#[tokio::test]
async fn server_closing_during_the_handshake_is_an_io_error() {
    let result = client_against(|_| b"HTTP/1.1 101 Switching".to_vec()).await;
    // The raw server closes after 300 ms with half a status line sent.
    assert!(matches!(result, Err(Error::Io(_))), "{result:?}");
}

#[tokio::test]
async fn connection_refused_is_an_io_error() {
    // Bind and drop to find a port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let result = within(volley::connect(&format!("ws://127.0.0.1:{port}/"))).await;
    assert!(
        matches!(&result, Err(Error::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused),
        "{result:?}"
    );
}

#[tokio::test]
async fn non_ws_urls_are_refused() {
    // (wss:// is supported with the `tls` feature: see tests/tls.rs.)
    for url in ["http://127.0.0.1:1/", "ftp://127.0.0.1:1/", "not a url"] {
        let result = within(volley::connect(url)).await;
        assert!(
            matches!(result, Err(Error::Handshake(HandshakeError::InvalidUrl(_)))),
            "{url}: {result:?}"
        );
    }
}
