//! Echo over a real TCP server: message types, sizes, limits, fragmentation, throughput in order.

mod common;

use bytes::Bytes;
use common::*;
use volley::{CloseCode, Config, Message};

#[tokio::test]
async fn text_and_binary_echo_and_keep_their_type() {
    let addr = echo_server().await;
    let mut ws = client(addr, Config::default()).await;

    let cases = [
        Message::text("hello"),
        Message::binary(b"hello".to_vec()),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::text("héllo wörld ✓ 🦀 日本語 \u{0}\u{10FFFF}"),
        Message::binary(vec![0xff, 0xfe, 0x00, 0x80]),
    ];
    for m in &cases {
        within(ws.send(m.clone())).await.expect("send");
        let got = next_msg(&mut ws).await;
        assert_eq!(&got, m);
    }
    // Same bytes, different types: they must not be confused.
    within(ws.send(Message::binary(b"abc".to_vec())))
        .await
        .unwrap();
    within(ws.send(Message::text("abc"))).await.unwrap();
    assert!(matches!(next_msg(&mut ws).await, Message::Binary(b) if b == "abc"));
    assert!(matches!(next_msg(&mut ws).await, Message::Text(t) if t == "abc"));

    within(ws.close(None)).await.expect("close");
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[tokio::test]
async fn exactly_max_message_size_is_accepted() {
    let addr = echo_server().await;
    let mut ws = client(addr, Config::default()).await;
    let data = pattern(1_048_576);
    within(ws.send(Message::binary(data.clone())))
        .await
        .expect("send 1 MiB");
    match next_msg(&mut ws).await {
        Message::Binary(b) => assert!(b == data, "1 MiB echo differs (len {})", b.len()),
        other => panic!("expected binary, got {other:?}"),
    }
    // Text of exactly the limit too.
    let text = "é".repeat(524_288);
    assert_eq!(text.len(), 1_048_576);
    within(ws.send(Message::text(text.clone()))).await.unwrap();
    match next_msg(&mut ws).await {
        Message::Text(t) => assert!(t == text.as_str()),
        other => panic!("expected text, got {other:?}"),
    }
    within(ws.close(None)).await.expect("close");
}

#[tokio::test]
async fn one_byte_over_max_message_size_fails_with_1009() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut ws = client(addr, Config::default()).await;
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));

    // The server may fail the connection (and stop reading) before the whole message is
    // written, so the send itself may or may not succeed.
    let _ = within(ws.send(Message::binary(pattern(1_048_577)))).await;
    match next_msg(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected close 1009, got {other:?}"),
    }
    match within(seen.recv()).await {
        Some(Seen::Err(volley::Error::Protocol(e))) => {
            assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG)
        }
        other => panic!("server should see a 1009 protocol error, got {other:?}"),
    }
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn configured_max_message_size_is_enforced_across_fragments() {
    // The server takes at most 1000 bytes; the client fragments into 300-byte frames, so no single
    // frame is too large but the message is.
    let (addr, mut seen) = recording_server(Config::default().max_message_size(1000)).await;
    let mut ws = client(addr, Config::default().fragment_size(Some(300))).await;
    within(ws.send(Message::binary(pattern(1000))))
        .await
        .unwrap();
    within(ws.send(Message::binary(pattern(1001))))
        .await
        .unwrap();
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(
        matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Binary(b))) if b.len() == 1000)
    );
    match next_msg(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code.0, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn fragmented_outgoing_message_arrives_as_one_message() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut ws = client(addr, Config::default().fragment_size(Some(1000))).await;
    let data = pattern(10_000);
    within(ws.send(Message::binary(data.clone())))
        .await
        .unwrap();
    let text = "ü".repeat(5_000); // 10 KB; fragment boundaries split characters
    within(ws.send(Message::text(text.clone()))).await.unwrap();
    within(ws.close(None)).await.expect("close");

    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    match within(seen.recv()).await {
        Some(Seen::Msg(Message::Binary(b))) => assert!(b == data),
        other => panic!("expected one binary message, got {other:?}"),
    }
    match within(seen.recv()).await {
        Some(Seen::Msg(Message::Text(t))) => assert!(t == text.as_str()),
        other => panic!("expected one text message, got {other:?}"),
    }
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Msg(Message::Close(None)))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn fragment_size_really_fragments_on_the_wire() {
    let (listener, addr) = raw_listener().await;
    let client_task = tokio::spawn(async move {
        let mut ws = client(addr, Config::default().fragment_size(Some(1000))).await;
        within(ws.send(Message::binary(pattern(10_000))))
            .await
            .unwrap();
        within(ws.send(Message::text("short"))).await.unwrap();
        ws
    });
    let mut raw = raw_server_accept(&listener).await;
    let mut frames = Vec::new();
    loop {
        let f = raw.read_frame().await;
        assert!(f.masked, "client frames must be masked");
        let fin = f.fin;
        frames.push(f);
        if fin {
            break;
        }
    }
    assert_eq!(frames.len(), 10);
    assert_eq!(frames[0].opcode, OP_BINARY);
    assert!(frames[1..].iter().all(|f| f.opcode == OP_CONT));
    assert!(frames.iter().all(|f| f.payload.len() == 1000));
    let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload.clone()).collect();
    assert_eq!(joined, pattern(10_000));
    // A message under the fragment size is one frame.
    let f = raw.read_frame().await;
    assert_eq!(
        (f.fin, f.opcode, &f.payload[..]),
        (true, OP_TEXT, &b"short"[..])
    );
    drop(within(client_task).await.unwrap());
}

#[tokio::test]
async fn fragmented_incoming_message_is_reassembled_by_the_client() {
    // The client receives a message that a raw server sends in three frames with a ping between.
    let (listener, addr) = raw_listener().await;
    let client_task = tokio::spawn(async move {
        let mut ws = client(addr, Config::default()).await;
        let a = next_msg(&mut ws).await;
        let b = next_msg(&mut ws).await;
        (a, b)
    });
    let mut raw = raw_server_accept(&listener).await;
    let mut bytes = frame(false, OP_TEXT, None, "hé".as_bytes());
    bytes.extend(frame(false, OP_CONT, None, &"llo".as_bytes()[..1]));
    bytes.extend(server_frame(OP_PING, b"p"));
    bytes.extend(frame(true, OP_CONT, None, &"llo".as_bytes()[1..]));
    raw.write(&bytes).await;
    let (a, b) = within(client_task).await.unwrap();
    assert_eq!(a, Message::Ping(Bytes::from_static(b"p")));
    assert_eq!(b, Message::text("héllo"));
    let pong = raw.read_frame().await;
    assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &b"p"[..]));
}

#[tokio::test]
async fn many_messages_in_a_row_arrive_in_order() {
    let addr = echo_server().await;
    let mut ws = client(addr, Config::default()).await;
    const N: usize = 1000;
    for i in 0..N {
        within(ws.send(format!("message {i}"))).await.unwrap();
    }
    for i in 0..N {
        match next_msg(&mut ws).await {
            Message::Text(t) => assert_eq!(t.as_str(), format!("message {i}")),
            other => panic!("expected text {i}, got {other:?}"),
        }
    }
    // And ping-pong style, alternating.
    for i in 0..N {
        let m = Message::binary(i.to_be_bytes().to_vec());
        within(ws.send(m.clone())).await.unwrap();
        assert_eq!(next_msg(&mut ws).await, m);
    }
    within(ws.close(None)).await.expect("close");
}

#[tokio::test]
async fn many_clients_at_once() {
    let addr = echo_server().await;
    let mut tasks = Vec::new();
    for c in 0..20 {
        tasks.push(tokio::spawn(async move {
            let mut ws = client(addr, Config::default()).await;
            for i in 0..50 {
                let m = format!("client {c} message {i}");
                within(ws.send(m.as_str())).await.unwrap();
                assert_eq!(next_msg(&mut ws).await, Message::text(m));
            }
            within(ws.close(None)).await.expect("close");
        }));
    }
    for t in tasks {
        within(t).await.unwrap();
    }
}
