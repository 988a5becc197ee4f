//! Protocol-level tests: raw HTTP requests over a `TcpStream` and raw WebSockets against an
//! [`Engine`] served by hyper on loopback.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    KeepAlive, UPGRADE_HEADERS, WAIT, next_close, next_frame, next_text, request, serve, wait_for,
};
use volley::Message;
use volley_engineio::{CloseReason, Cors, Data, EngineConfig, TransportKind, Transports};

fn short_heartbeat() -> EngineConfig {
    EngineConfig::default()
        .ping_interval(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(100))
}

async fn recv(session: &mut volley_engineio::Session) -> Option<Data> {
    tokio::time::timeout(WAIT, session.recv())
        .await
        .expect("no message within the wait")
}

#[tokio::test]
async fn polling_handshake_sends_the_open_packet() {
    let mut server = serve(EngineConfig::default()).await;
    let reply = server.get("EIO=4&transport=polling&t=abc").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; charset=UTF-8")
    );
    let text = reply.text();
    assert!(text.starts_with('0'), "{text}");
    let open: serde_json::Value = serde_json::from_str(&text[1..]).unwrap();
    let sid = open["sid"].as_str().unwrap();
    assert_eq!(sid.len(), 20);
    assert_eq!(open["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open["pingInterval"], 25_000);
    assert_eq!(open["pingTimeout"], 20_000);
    assert_eq!(open["maxPayload"], 1_000_000);
    let session = server.session().await;
    assert_eq!(session.id(), sid);
    assert_eq!(session.transport(), TransportKind::Polling);
    assert_eq!(session.request().query("t").as_deref(), Some("abc"));
    let peer = session.request().remote_addr.expect("remote address");
    assert!(peer.ip().is_loopback());
    assert_eq!(server.engine.session_count(), 1);

    // No upgrades offered when they are not allowed.
    let server = serve(EngineConfig::default().allow_upgrades(false)).await;
    let (_, open) = server.handshake().await;
    assert_eq!(open["upgrades"], serde_json::json!([]));
    let server = serve(EngineConfig::default().transports(Transports::POLLING)).await;
    let (_, open) = server.handshake().await;
    assert_eq!(open["upgrades"], serde_json::json!([]));
}

#[tokio::test]
async fn websocket_handshake_sends_the_open_packet() {
    let mut server = serve(short_heartbeat().max_payload(5000)).await;
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    let text = next_text(&mut ws).await;
    let open: serde_json::Value = serde_json::from_str(text.strip_prefix('0').unwrap()).unwrap();
    assert_eq!(open["upgrades"], serde_json::json!([]));
    assert_eq!(open["pingInterval"], 100);
    assert_eq!(open["pingTimeout"], 100);
    assert_eq!(open["maxPayload"], 5000);
    let mut session = server.session().await;
    assert_eq!(session.id(), open["sid"].as_str().unwrap());
    assert_eq!(session.transport(), TransportKind::WebSocket);

    // Messages both ways: text as "4…" frames, binary as raw binary frames.
    ws.send(Message::text("4hello")).await.unwrap();
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("hello".into())));
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    session
        .sender()
        .send_all([Data::from("hi"), Data::Binary(Bytes::from_static(&[9, 8]))])
        .unwrap();
    assert_eq!(next_text(&mut ws).await, "4hi");
    match next_frame(&mut ws).await {
        Some(Message::Binary(b)) => assert_eq!(&b[..], &[9, 8]),
        other => panic!("expected binary, got {other:?}"),
    }

    // A frame above max_payload closes the connection and the session.
    ws.send(Message::text(format!("4{}", "x".repeat(6000))))
        .await
        .unwrap();
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn polling_round_trip_with_binary() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");

    let reply = server.post(&q, b"4hello\x1ebAQID\x1e4\xe2\x82\xac").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("hello".into())));
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    assert_eq!(recv(&mut session).await, Some(Data::Text("€".into())));

    let sender = session.sender();
    sender
        .send_all([Data::from("hi"), Data::Binary(Bytes::from_static(&[4, 5]))])
        .unwrap();
    sender.send(Data::from("again")).unwrap();
    let reply = server.get(&q).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.text(), "4hi\x1ebBAU=\x1e4again");
    // Methods other than GET and POST: 500 without a body, like Node.
    let reply = request(server.addr, "PUT", &format!("/socket.io/?{q}"), &[], b"").await;
    assert_eq!(reply.status, 500);
    assert!(reply.body.is_empty());

    // A GET with nothing queued waits until something is sent.
    let pending = {
        let addr = server.addr;
        let target = format!("/socket.io/?{q}");
        tokio::spawn(async move { request(addr, "GET", &target, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!pending.is_finished());
    sender.send(Data::from("late")).unwrap();
    let reply = pending.await.unwrap();
    assert_eq!(reply.text(), "4late");

    // An invalid packet closes the session as a parse error (Node still answers "ok"); the
    // packets before it are handled, as engine.io-parser decodes a payload up to its first
    // invalid packet.
    let reply = server.post(&q, b"4ok\x1e9bad\x1e4not this").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("ok".into())));
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::ParseError));
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn error_responses_match_node() {
    let server =
        serve(EngineConfig::default().allow_request(|req| req.headers.get("x-deny").is_none()))
            .await;
    // 0 Transport unknown: missing, unknown.
    server
        .get("EIO=4")
        .await
        .assert_error(400, 0, "Transport unknown");
    server
        .get("EIO=4&transport=flashsocket")
        .await
        .assert_error(400, 0, "Transport unknown");
    // 1 Session ID unknown, on GET, POST and WebSocket.
    server
        .get("EIO=4&transport=polling&sid=nope")
        .await
        .assert_error(400, 1, "Session ID unknown");
    server
        .post("EIO=4&transport=polling&sid=nope", b"4x")
        .await
        .assert_error(400, 1, "Session ID unknown");
    request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=websocket&sid=nope",
        UPGRADE_HEADERS,
        b"",
    )
    .await
    .assert_upgrade_error("Session ID unknown");
    // 2 Bad handshake method.
    server
        .post("EIO=4&transport=polling", b"4x")
        .await
        .assert_error(400, 2, "Bad handshake method");
    // 3 Bad request: a WebSocket handshake without the upgrade, a polling request for a
    // WebSocket session.
    server
        .get("EIO=4&transport=websocket")
        .await
        .assert_error(400, 3, "Bad request");
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    let open = next_text(&mut ws).await;
    let open: serde_json::Value = serde_json::from_str(&open[1..]).unwrap();
    let ws_sid = open["sid"].as_str().unwrap();
    server
        .get(&format!("EIO=4&transport=polling&sid={ws_sid}"))
        .await
        .assert_error(400, 3, "Bad request");
    // 4 Forbidden from allow_request.
    request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[("X-Deny", "1")],
        b"",
    )
    .await
    .assert_error(403, 4, "Forbidden");
    // 5 Unsupported protocol version: EIO=3, missing.
    server.get("EIO=3&transport=polling").await.assert_error(
        400,
        5,
        "Unsupported protocol version",
    );
    server
        .get("transport=polling")
        .await
        .assert_error(400, 5, "Unsupported protocol version");
    request(
        server.addr,
        "GET",
        "/socket.io/?EIO=3&transport=websocket",
        UPGRADE_HEADERS,
        b"",
    )
    .await
    .assert_upgrade_error("Unsupported protocol version");
    // Upgrade requests get the upgrade form of every error (always 400).
    let mut deny = UPGRADE_HEADERS.to_vec();
    deny.push(("X-Deny", "1"));
    request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=websocket",
        &deny,
        b"",
    )
    .await
    .assert_upgrade_error("Forbidden");
    request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=nope",
        UPGRADE_HEADERS,
        b"",
    )
    .await
    .assert_upgrade_error("Transport unknown");
    // Disabled transports are unknown.
    let server = serve(EngineConfig::default().transports(Transports::WEBSOCKET)).await;
    server
        .get("EIO=4&transport=polling")
        .await
        .assert_error(400, 0, "Transport unknown");
}

#[tokio::test]
async fn oversized_post_is_413_and_leaves_the_session() {
    let mut server = serve(EngineConfig::default().max_payload(100)).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    let body = format!("4{}", "x".repeat(100));
    let reply = server.post(&q, body.as_bytes()).await;
    assert_eq!(reply.status, 413);
    // Without a Content-Length (chunked), the body is counted as it comes.
    let reply = request(
        server.addr,
        "POST",
        &format!("/socket.io/?{q}"),
        &[("Transfer-Encoding", "chunked")],
        format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len()).as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413);
    // As in Node, the session goes on.
    assert_eq!(server.post(&q, b"4small").await.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("small".into())));
    assert!(!session.sender().is_closed());
    // Exactly max_payload is fine.
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let body = format!("4{}", "x".repeat(99));
    let reply = server
        .post(
            &format!("EIO=4&transport=polling&sid={sid}"),
            body.as_bytes(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(recv(&mut session).await, Some(Data::Text("x".repeat(99))));
}

#[tokio::test]
async fn concurrent_get_is_400_and_closes_the_session() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let first = {
        let (addr, target) = (server.addr, target.clone());
        tokio::spawn(async move { request(addr, "GET", &target, &[], b"").await })
    };
    // Give the first GET time to arrive (generous: the machine may be busy).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = request(server.addr, "GET", &target, &[], b"").await;
    assert_eq!(second.status, 400);
    // The first GET learns that the session closed.
    let first = first.await.unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "1");
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn upgrade_from_polling_to_websocket() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    let pending = {
        let addr = server.addr;
        let target = format!("/socket.io/?{q}");
        tokio::spawn(async move { request(addr, "GET", &target, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut ws = server
        .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    // A second WebSocket for the same session is closed at once while the first one upgrades
    // (see second_websocket_for_a_session_is_accepted_and_closed).
    let mut second = server
        .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    assert_eq!(next_close(&mut second).await, None);
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    // The pending GET is ended with a noop so that the client can pause polling.
    let reply = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(reply.text(), "6");
    // So is a GET that arrives during the upgrade (after Node's 100 ms upgrade check).
    let started = tokio::time::Instant::now();
    assert_eq!(server.get(&q).await.text(), "6");
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert_eq!(session.transport(), TransportKind::Polling);
    // Sent while upgrading: it waits for the new transport, in order.
    session.sender().send(Data::from("during")).unwrap();
    ws.send(Message::text("5")).await.unwrap();
    wait_for(|| session.transport() == TransportKind::WebSocket).await;

    // Data now flows over the WebSocket.
    session.sender().send(Data::from("over ws")).unwrap();
    assert_eq!(next_text(&mut ws).await, "4during");
    assert_eq!(next_text(&mut ws).await, "4over ws");
    ws.send(Message::text("4from ws")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("from ws".into())));
    // Polling requests for the session are refused.
    server.get(&q).await.assert_error(400, 3, "Bad request");
    server
        .post(&q, b"4x")
        .await
        .assert_error(400, 3, "Bad request");
    assert!(!session.sender().is_closed());
}

#[tokio::test]
async fn upgrade_timeout_keeps_the_session_on_polling() {
    let mut server =
        serve(EngineConfig::default().upgrade_timeout(Duration::from_millis(200))).await;
    let (sid, _) = server.handshake().await;
    let session = server.session().await;
    let mut ws = server
        .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    // Silence: the server gives up on the upgrade and closes the WebSocket.
    assert_eq!(next_frame(&mut ws).await, None);
    assert_eq!(session.transport(), TransportKind::Polling);
    assert!(!session.sender().is_closed());
    // A later upgrade works.
    let mut ws = server
        .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    ws.send(Message::text("5")).await.unwrap();
    wait_for(|| session.transport() == TransportKind::WebSocket).await;
}

#[tokio::test]
async fn heartbeat_over_websocket_and_ping_timeout() {
    let mut server = serve(short_heartbeat()).await;
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await; // open
    let mut session = server.session().await;
    let started = tokio::time::Instant::now();
    // Pings come every interval; answering keeps the session open.
    for _ in 0..3 {
        assert_eq!(next_text(&mut ws).await, "2");
        ws.send(Message::text("3")).await.unwrap();
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(!session.sender().is_closed());
    // A client that stops answering is closed after interval + timeout.
    assert_eq!(next_text(&mut ws).await, "2");
    let unanswered = tokio::time::Instant::now();
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::PingTimeout));
    let waited = unanswered.elapsed();
    assert!(
        waited >= Duration::from_millis(90) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Over WebSocket the session ends with the WebSocket's close, no close packet.
    assert_eq!(next_close(&mut ws).await, None);
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn heartbeat_over_polling_and_ping_timeout() {
    let mut server = serve(short_heartbeat()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    // The GET waits for the ping.
    let reply = server.get(&q).await;
    assert_eq!(reply.text(), "2");
    assert_eq!(server.post(&q, b"3").await.text(), "ok");
    let reply = server.get(&q).await;
    assert_eq!(reply.text(), "2");
    // No pong: ping timeout.
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::PingTimeout));
    server.wait_no_sessions().await;
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
}

#[tokio::test]
async fn close_packet_from_client() {
    let mut server = serve(EngineConfig::default()).await;
    // Over polling.
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let reply = server
        .post(&format!("EIO=4&transport=polling&sid={sid}"), b"4bye\x1e1")
        .await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("bye".into())));
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::ClientClose));
    assert_eq!(CloseReason::ClientClose.as_str(), "forced close");
    server.wait_no_sessions().await;
    // Over WebSocket Node's engine does not act on a close packet (clients close the
    // WebSocket); closing the WebSocket is a transport close.
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await;
    let mut session = server.session().await;
    ws.send(Message::text("1")).await.unwrap();
    ws.send(Message::text("4after")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("after".into())));
    assert!(!session.sender().is_closed());
    ws.close(None).await.unwrap();
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportClose));
    server.wait_no_sessions().await;
    // One whose TCP connection drops: transport close too.
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await;
    let mut session = server.session().await;
    drop(ws);
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportClose));
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn bad_packets_on_websocket_are_parse_errors() {
    let mut server = serve(EngineConfig::default()).await;
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await;
    let mut session = server.session().await;
    ws.send(Message::text("4fine")).await.unwrap();
    ws.send(Message::text("9oops")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("fine".into())));
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::ParseError));
    assert_eq!(next_close(&mut ws).await, None);
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn failed_probe_abandons_the_upgrade_only() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let mut ws = server
        .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
        .await;
    ws.send(Message::text("4not a probe")).await.unwrap();
    assert_eq!(next_frame(&mut ws).await, None);
    // The session goes on over polling.
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.post(&q, b"4still here").await.text(), "ok");
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Text("still here".into()))
    );
    assert_eq!(session.transport(), TransportKind::Polling);
    // Upgrades can be switched off.
    let server = serve(EngineConfig::default().allow_upgrades(false)).await;
    let (sid, _) = server.handshake().await;
    request(
        server.addr,
        "GET",
        &format!("/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        UPGRADE_HEADERS,
        b"",
    )
    .await
    .assert_upgrade_error("Bad request");
}

#[tokio::test]
async fn server_close_reaches_the_client() {
    let mut server = serve(EngineConfig::default()).await;
    // WebSocket: queued messages, then the WebSocket closes (a close frame without a status
    // code, as Node's `ws` sends) and no close packet "1", as in Node engine.io.
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await;
    let mut session = server.session().await;
    let sender = session.sender();
    sender.send(Data::from("last")).unwrap();
    sender.close();
    assert_eq!(next_text(&mut ws).await, "4last");
    assert_eq!(next_close(&mut ws).await, None);
    // The close handshake completes and the connection ends.
    assert!(
        tokio::time::timeout(WAIT, ws.recv())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::ServerClose));
    assert!(sender.is_closed());
    assert_eq!(
        sender.send(Data::from("x")),
        Err(volley_engineio::SendError::Closed)
    );
    server.wait_no_sessions().await;

    // Polling, as Node's polling transport closes: the next GET gets the queue, the one after
    // it a noop and the close packet; then the sid is gone.
    let (sid, _) = server.handshake().await;
    let session = server.session().await;
    session.sender().send(Data::from("last")).unwrap();
    server.engine.close_all();
    tokio::time::timeout(WAIT, session.sender().closed())
        .await
        .unwrap();
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.get(&q).await.text(), "4last");
    assert_eq!(server.get(&q).await.text(), "6\x1e1");
    server.wait_no_sessions().await;
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
}

#[tokio::test]
async fn session_table_empties_after_many_sessions() {
    let config = EngineConfig::default().ping_timeout(Duration::from_millis(300));
    let mut server = serve(config).await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        server.handshake().await;
        sessions.push(server.session().await);
    }
    assert_eq!(server.engine.session_count(), 20);
    for (i, session) in sessions.iter().enumerate() {
        let q = format!("EIO=4&transport=polling&sid={}", session.id());
        if i % 2 == 0 {
            server.post(&q, b"1").await;
        }
    }
    wait_for(|| server.engine.session_count() == 10).await;
    server.engine.close_all();
    // Nobody polls: the close packets are undeliverable and the sessions leave after
    // ping_timeout.
    for session in &sessions {
        assert!(session.sender().is_closed());
    }
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn outgoing_queue_is_bounded() {
    let mut server = serve(EngineConfig::default().max_buffered_packets(10)).await;
    server.handshake().await;
    let mut session = server.session().await;
    let sender = session.sender();
    for i in 0..10 {
        sender.send(Data::Text(i.to_string())).unwrap();
    }
    assert_eq!(
        sender.send(Data::from("one too many")),
        Err(volley_engineio::SendError::Full)
    );
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
    server.wait_no_sessions().await;
}

#[tokio::test]
async fn cors_headers_and_preflight() {
    let server = serve(EngineConfig::default().cors(Some(
        Cors::origins(["https://good.example"]).credentials(true),
    )))
    .await;
    let reply = request(
        server.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[
            ("Origin", "https://good.example"),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        b"",
    )
    .await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    assert_eq!(
        reply.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET,POST")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("content-type")
    );
    let reply = request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "https://good.example")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://good.example")
    );
    // Errors carry the headers too; other origins get none.
    let reply = request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=nope",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    reply.assert_error(400, 0, "Transport unknown");
    assert_eq!(reply.header("access-control-allow-origin"), None);

    // Any origin without credentials: "*".
    let server = serve(EngineConfig::default().cors(Some(Cors::any()))).await;
    let reply = request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "https://x.example")],
        b"",
    )
    .await;
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
    // Without CORS configured: no headers, and OPTIONS is just a bad handshake method.
    let server = serve(EngineConfig::default()).await;
    let reply = request(
        server.addr,
        "OPTIONS",
        "/socket.io/?EIO=4&transport=polling",
        &[("Origin", "https://x.example")],
        b"",
    )
    .await;
    reply.assert_error(400, 2, "Bad handshake method");
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn engine_is_a_tower_and_hyper_service() {
    fn tower<S: tower_service::Service<http::Request<String>> + Clone + Send + Sync + 'static>() {}
    fn hyper_service<S: hyper::service::Service<http::Request<hyper::body::Incoming>>>() {}
    tower::<volley_engineio::Engine>();
    hyper_service::<volley_engineio::Engine>();
}

// Issue 16, "wire behaviour to match Node exactly": each test below asserts the answer of Node's
// engine.io 6.6 (socket.io 4.8.4), observed side by side with e2e/node/sio_raw_parity.js.

/// Point 1. Node's polling transport takes the client's close packet as its own close: a GET
/// pending at that moment is answered with a noop `6` (not the close packet), and the session is
/// gone at once: later polling requests get 400 "Session ID unknown".
#[tokio::test]
async fn client_close_packet_answers_the_pending_get_with_a_noop() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    let pending = {
        let addr = server.addr;
        let target = format!("/socket.io/?{q}");
        tokio::spawn(async move { request(addr, "GET", &target, &[], b"").await })
    };
    // Give the GET time to arrive (generous: the machine may be busy).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!pending.is_finished());
    assert_eq!(server.post(&q, b"1").await.text(), "ok");
    let reply = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "6");
    // No waiting for the session table: the sid is unknown right away.
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
    server
        .post(&q, b"40")
        .await
        .assert_error(400, 1, "Session ID unknown");
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::ClientClose));
}

/// Point 2. A client sends the upgrade packet `5` and then a polling GET on its keep-alive
/// connection: Node reads the upgrade packet first and refuses the GET like any polling request
/// for a WebSocket session, 400 `{"code":3,"message":"Bad request"}`. The GET reaches the server
/// right behind the upgrade packet, so the server must not answer it before it has read what the
/// WebSocket already delivered (it used to answer `200 6` in about one try out of six).
// Two workers: the server handles the WebSocket and the GET in parallel, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_get_right_after_the_upgrade_packet_is_refused() {
    let mut server = serve(EngineConfig::default()).await;
    for _ in 0..40 {
        let mut http = KeepAlive::connect(server.addr).await;
        let reply = http
            .request("GET", "/socket.io/?EIO=4&transport=polling", b"")
            .await;
        let open: serde_json::Value = serde_json::from_str(&reply.text()[1..]).unwrap();
        let sid = open["sid"].as_str().unwrap().to_owned();
        let session = server.session().await;
        let mut ws = server
            .ws(&format!("EIO=4&transport=websocket&sid={sid}"))
            .await;
        ws.send(Message::text("2probe")).await.unwrap();
        assert_eq!(next_text(&mut ws).await, "3probe");
        ws.send(Message::text("5")).await.unwrap();
        let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
        http.request("GET", &target, b"")
            .await
            .assert_error(400, 3, "Bad request");
        assert_eq!(session.transport(), TransportKind::WebSocket);
        assert!(!session.sender().is_closed());
    }
}

/// Point 3. A second WebSocket for a session that has upgraded (or is upgrading): Node completes
/// the WebSocket handshake and closes that WebSocket at once (a close frame without a status
/// code), leaving the session and its WebSocket alone.
#[tokio::test]
async fn second_websocket_for_a_session_is_accepted_and_closed() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let ws_query = format!("EIO=4&transport=websocket&sid={sid}");
    let mut ws = server.ws(&ws_query).await;
    ws.send(Message::text("2probe")).await.unwrap();
    assert_eq!(next_text(&mut ws).await, "3probe");
    // While the first one upgrades.
    let mut second = server.ws(&ws_query).await;
    assert_eq!(next_close(&mut second).await, None);
    assert!(
        tokio::time::timeout(WAIT, second.recv())
            .await
            .unwrap()
            .is_none()
    );
    ws.send(Message::text("5")).await.unwrap();
    wait_for(|| session.transport() == TransportKind::WebSocket).await;
    // After the upgrade.
    let mut third = server.ws(&ws_query).await;
    assert_eq!(next_close(&mut third).await, None);
    // The session goes on over the first WebSocket, both ways.
    session.sender().send(Data::from("still")).unwrap();
    assert_eq!(next_text(&mut ws).await, "4still");
    ws.send(Message::text("4here")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("here".into())));
    assert!(!session.sender().is_closed());
}

// Further differences from Node found by the audit of issue 16 (each answer checked against
// Node's server with e2e/node/sio_raw_parity.js).

/// Requests with a sid are checked as Node checks them: the session's transport (except for
/// upgrades), then the protocol version (400 "Bad request" for anything but `EIO=4`).
#[tokio::test]
async fn requests_for_a_session_must_be_protocol_v4() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    for query in [
        format!("transport=polling&sid={sid}"),
        format!("EIO=3&transport=polling&sid={sid}"),
    ] {
        server.get(&query).await.assert_error(400, 3, "Bad request");
        server
            .post(&query, b"4x")
            .await
            .assert_error(400, 3, "Bad request");
    }
    request(
        server.addr,
        "GET",
        &format!("/socket.io/?EIO=3&transport=websocket&sid={sid}"),
        UPGRADE_HEADERS,
        b"",
    )
    .await
    .assert_upgrade_error("Bad request");
    // The session is untouched.
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.post(&q, b"4fine").await.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("fine".into())));
}

/// A WebSocket upgrade request that names the polling transport, with or without a sid: Node
/// completes the WebSocket handshake and closes the WebSocket at once (no session is made, an
/// existing one is left alone).
#[tokio::test]
async fn websocket_requests_for_the_polling_transport_are_accepted_and_closed() {
    let mut server = serve(EngineConfig::default()).await;
    let mut ws = server.ws("EIO=4&transport=polling").await;
    assert_eq!(next_close(&mut ws).await, None);
    assert_eq!(server.engine.session_count(), 0);
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let mut ws = server
        .ws(&format!("EIO=4&transport=polling&sid={sid}"))
        .await;
    assert_eq!(next_close(&mut ws).await, None);
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.post(&q, b"4fine").await.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("fine".into())));
    assert_eq!(session.transport(), TransportKind::Polling);
}

/// Engine.IO packets a v4 client does not send: a ping closes the session as a transport error
/// (Node: "invalid heartbeat direction"), on either transport; an open packet is ignored.
#[tokio::test]
async fn client_pings_close_and_open_packets_are_ignored() {
    let mut server = serve(EngineConfig::default()).await;
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await;
    let mut session = server.session().await;
    ws.send(Message::text("0{}")).await.unwrap();
    ws.send(Message::text("4still open")).await.unwrap();
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Text("still open".into()))
    );
    ws.send(Message::text("2")).await.unwrap();
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
    assert_eq!(next_close(&mut ws).await, None);

    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.post(&q, b"0\x1e4a\x1e2probe").await.text(), "ok");
    assert_eq!(recv(&mut session).await, Some(Data::Text("a".into())));
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
}

/// Long-polling bodies are read as Node reads them: a binary content type is refused (bare 400,
/// the session closed), invalid UTF-8 becomes U+FFFD, base64 as lenient as Node's decoder.
#[tokio::test]
async fn polling_bodies_are_read_as_node_reads_them() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(
        server.post(&q, b"4caf\xc3\xa9 \xff\x1ebAQ*ID").await.text(),
        "ok"
    );
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Text("café \u{fffd}".into()))
    );
    assert_eq!(
        recv(&mut session).await,
        Some(Data::Binary(Bytes::from_static(&[1, 2, 3])))
    );
    let reply = request(
        server.addr,
        "POST",
        &format!("/socket.io/?{q}"),
        &[("Content-Type", "application/octet-stream")],
        b"4x",
    )
    .await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.is_empty());
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::TransportError));
}

/// A server close over long-polling: a GET that waits with nothing queued gets the close packet
/// alone; otherwise the queue goes first and a later GET gets a noop and the close packet (as
/// Node's polling transport closes). Over WebSocket no noop is ever written.
#[tokio::test]
async fn server_close_over_polling_follows_node() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let session = server.session().await;
    let q = format!("EIO=4&transport=polling&sid={sid}");
    let pending = {
        let addr = server.addr;
        let target = format!("/socket.io/?{q}");
        tokio::spawn(async move { request(addr, "GET", &target, &[], b"").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    session.sender().close();
    let reply = tokio::time::timeout(WAIT, pending).await.unwrap().unwrap();
    assert_eq!(reply.text(), "1");
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
    // Nothing queued, no GET waiting: the next GET gets the noop and the close packet.
    let (sid, _) = server.handshake().await;
    let session = server.session().await;
    session.sender().close();
    let q = format!("EIO=4&transport=polling&sid={sid}");
    assert_eq!(server.get(&q).await.text(), "6\x1e1");
    server
        .get(&q)
        .await
        .assert_error(400, 1, "Session ID unknown");
}

/// A packet that arrives while the server waits for a pong extends the ping timeout once, to
/// ping_timeout after that packet, as Node's engine does (`hasRefreshedPingTimeout`).
#[tokio::test]
async fn a_packet_while_a_pong_is_awaited_extends_the_ping_timeout_once() {
    let mut server = serve(
        EngineConfig::default()
            .ping_interval(Duration::from_millis(100))
            .ping_timeout(Duration::from_millis(1000)),
    )
    .await;
    let mut ws = server.ws("EIO=4&transport=websocket").await;
    next_text(&mut ws).await; // open
    let mut session = server.session().await;
    assert_eq!(next_text(&mut ws).await, "2");
    let pinged = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    ws.send(Message::text("4busy")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("busy".into())));
    // Without the extension the session would close at 1000 ms.
    tokio::time::sleep_until(pinged + Duration::from_millis(1250)).await;
    assert!(!session.sender().is_closed());
    // A second packet does not extend it again: closed at about 1500 ms.
    ws.send(Message::text("4again")).await.unwrap();
    assert_eq!(recv(&mut session).await, Some(Data::Text("again".into())));
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(session.close_reason(), Some(CloseReason::PingTimeout));
    let waited = pinged.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_millis(2150),
        "{waited:?}"
    );
}

/// Node adds `X-XSS-Protection: 0` to its polling answers (handshake, GET, POST) when the user
/// agent is Internet Explorer, and only then.
#[tokio::test]
async fn polling_answers_to_internet_explorer_disable_its_xss_filter() {
    let server = serve(EngineConfig::default()).await;
    let ie = [(
        "User-Agent",
        "Mozilla/5.0 (Windows NT 10.0; Trident/7.0; rv:11.0)",
    )];
    let reply = request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        &ie,
        b"",
    )
    .await;
    assert_eq!(reply.header("x-xss-protection"), Some("0"));
    let open: serde_json::Value = serde_json::from_str(&reply.text()[1..]).unwrap();
    let target = format!(
        "/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().unwrap()
    );
    let reply = request(server.addr, "POST", &target, &ie, b"4x").await;
    assert_eq!(reply.text(), "ok");
    assert_eq!(reply.header("x-xss-protection"), Some("0"));
    let msie = [("User-Agent", "Mozilla/4.0 (compatible;MSIE 7.0)")];
    let reply = request(
        server.addr,
        "GET",
        "/socket.io/?EIO=4&transport=nope",
        &msie,
        b"",
    )
    .await;
    assert_eq!(reply.header("x-xss-protection"), None);
    // Other user agents: no such header.
    let reply = server.get("EIO=4&transport=polling").await;
    assert_eq!(reply.header("x-xss-protection"), None);
}

/// A long-polling session closed by the server, its close packet not fetched yet: POSTs are
/// still answered "ok" and their packets ignored, as by Node (the session is closing, not gone).
#[tokio::test]
async fn posts_to_a_session_the_server_is_closing_are_ignored() {
    let mut server = serve(EngineConfig::default()).await;
    let (sid, _) = server.handshake().await;
    let mut session = server.session().await;
    session.sender().send(Data::from("last")).unwrap();
    session.sender().close();
    let q = format!("EIO=4&transport=polling&sid={sid}");
    let reply = server.post(&q, b"4ignored").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "ok");
    assert_eq!(recv(&mut session).await, None);
    assert_eq!(server.get(&q).await.text(), "4last");
    assert_eq!(server.get(&q).await.text(), "6\x1e1");
    server
        .post(&q, b"4x")
        .await
        .assert_error(400, 1, "Session ID unknown");
}
