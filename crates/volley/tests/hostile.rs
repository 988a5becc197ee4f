//! Hostile or broken raw input against a `volley::Server`: frames and handshakes written by hand.

mod common;

use std::time::{Duration, Instant};

use common::*;
use volley::{Config, HeaderLimits, Message};

/// Sends `bytes` after a good handshake and expects a close frame with `code`, then TCP close.
async fn expect_failure(bytes: &[u8], code: u16) {
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    raw.write(bytes).await;
    let close = raw.read_frame().await;
    assert_eq!(
        close.opcode, OP_CLOSE,
        "expected a close frame, got {close:?}"
    );
    assert!(!close.masked);
    assert_eq!(
        close.close_code(),
        Some(code),
        "reason: {:?}",
        close.close_reason()
    );
    let rest = raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
}

#[tokio::test]
async fn unmasked_frame_fails_with_1002_and_tcp_close() {
    expect_failure(&server_frame(OP_TEXT, b"not masked"), 1002).await;
}

#[tokio::test]
async fn reserved_opcodes_fail_with_1002() {
    for op in [0x3, 0x7, 0xB, 0xF] {
        expect_failure(&client_frame(op, b"x"), 1002).await;
    }
}

#[tokio::test]
async fn reserved_bits_fail_with_1002() {
    let mut f = client_frame(OP_TEXT, b"x");
    f[0] |= 0x40; // RSV1 without permessage-deflate
    expect_failure(&f, 1002).await;
}

#[tokio::test]
async fn invalid_utf8_text_fails_with_1007() {
    expect_failure(&client_frame(OP_TEXT, b"ok \xff\xfe"), 1007).await;
    // Split across fragments: a truncated sequence at the end of the message.
    let mut f = frame(false, OP_TEXT, Some([1, 2, 3, 4]), b"abc");
    f.extend(frame(true, OP_CONT, Some([5, 6, 7, 8]), b"\xe2\x82"));
    expect_failure(&f, 1007).await;
}

#[tokio::test]
async fn protocol_violations_in_fragmentation_and_control_frames_fail_with_1002() {
    // Continuation without a message.
    expect_failure(&client_frame(OP_CONT, b"x"), 1002).await;
    // New data frame while a fragmented message is open.
    let mut f = frame(false, OP_TEXT, Some([1, 2, 3, 4]), b"a");
    f.extend(client_frame(OP_TEXT, b"b"));
    expect_failure(&f, 1002).await;
    // Fragmented ping.
    expect_failure(&frame(false, OP_PING, Some([1, 2, 3, 4]), b"p"), 1002).await;
    // Ping with 126 bytes of payload.
    expect_failure(&client_frame(OP_PING, &[0u8; 126]), 1002).await;
    // One-byte close payload.
    expect_failure(&client_frame(OP_CLOSE, &[3]), 1002).await;
}

#[tokio::test]
async fn oversized_frame_header_fails_with_1009_before_the_payload() {
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    // A binary frame declaring 2^40 bytes; no payload follows.
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 40).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    let start = Instant::now();
    raw.write(&header).await;
    let close = raw.read_frame().await;
    assert_eq!(close.close_code(), Some(1009));
    assert!(start.elapsed() < Duration::from_secs(2));
    raw.expect_eof_within(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn length_with_top_bit_set_fails_with_1002() {
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 63).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    expect_failure(&header, 1002).await;
}

#[tokio::test]
async fn messages_before_a_violation_are_still_delivered() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut raw = raw_client(addr).await;
    let mut bytes = client_frame(OP_TEXT, b"good");
    bytes.extend(server_frame(OP_TEXT, b"bad"));
    raw.write(&bytes).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1002));
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Text(t))) if t == "good"));
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Err(volley::Error::Protocol(
            volley::ProtocolError::UnmaskedFrame
        )))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
    raw.expect_eof_within(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn frame_written_one_byte_at_a_time_still_echoes() {
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    let text = "byte by byte: ünïcödé ✓";
    let mut bytes = client_frame(OP_TEXT, text.as_bytes());
    // And a fragmented binary message with a ping in the middle, also byte by byte.
    bytes.extend(frame(false, OP_BINARY, Some([9, 8, 7, 6]), &[1, 2, 3]));
    bytes.extend(client_frame(OP_PING, b"mid"));
    bytes.extend(frame(true, OP_CONT, Some([5, 4, 3, 2]), &[4, 5]));
    for b in &bytes {
        raw.write(std::slice::from_ref(b)).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The text echo (sent by the handler) and the pong (sent while reading) may come in either
    // order; the binary echo comes last, since its final frame follows the ping.
    let mut first_two = [raw.read_frame().await, raw.read_frame().await];
    first_two.sort_by_key(|f| f.opcode);
    let [echo_text, pong] = first_two;
    assert_eq!((pong.opcode, &pong.payload[..]), (OP_PONG, &b"mid"[..]));
    assert_eq!(
        (
            echo_text.fin,
            echo_text.opcode,
            echo_text.payload.as_slice()
        ),
        (true, OP_TEXT, text.as_bytes())
    );
    let echo_bin = raw.read_frame().await;
    assert_eq!(
        (echo_bin.opcode, echo_bin.payload.as_slice()),
        (OP_BINARY, &[1u8, 2, 3, 4, 5][..])
    );
}

#[tokio::test]
async fn frames_pipelined_with_the_handshake_are_processed() {
    let addr = echo_server().await;
    let mut raw = raw_tcp(addr).await;
    let mut bytes = upgrade_request(addr).into_bytes();
    bytes.extend(client_frame(OP_TEXT, b"first"));
    bytes.extend(client_frame(OP_BINARY, b"second"));
    raw.write(&bytes).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head:?}");
    let a = raw.read_frame().await;
    let b = raw.read_frame().await;
    assert_eq!((a.opcode, a.payload.as_slice()), (OP_TEXT, &b"first"[..]));
    assert_eq!(
        (b.opcode, b.payload.as_slice()),
        (OP_BINARY, &b"second"[..])
    );
    raw.write(&client_frame(OP_CLOSE, &close_payload(1000, "done")))
        .await;
    let c = raw.read_frame().await;
    assert_eq!(c.close_code(), Some(1000));
    assert_eq!(c.close_reason(), "done");
    raw.expect_eof_within(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn close_pipelined_with_the_handshake_still_delivers_the_messages_before_it() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut raw = raw_tcp(addr).await;
    let mut bytes = upgrade_request(addr).into_bytes();
    bytes.extend(client_frame(OP_TEXT, b"first"));
    bytes.extend(client_frame(OP_CLOSE, &close_payload(1000, "done")));
    raw.write(&bytes).await;
    assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101 "));
    assert_eq!(raw.read_frame().await.close_code(), Some(1000));
    raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Text(t))) if t == "first"));
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Msg(Message::Close(Some(_))))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

/// Sends `request` raw and returns the server's whole reply (the server must close the
/// connection after it).
async fn http_reply(request: &[u8], config: Config) -> String {
    let addr = echo_server_with(config).await;
    let mut raw = raw_tcp(addr).await;
    raw.write(request).await;
    raw.read_all_string().await
}

fn status_line(reply: &str) -> &str {
    reply.lines().next().unwrap_or_default()
}

fn has_header(reply: &str, name: &str, value: &str) -> bool {
    let head = reply.split("\r\n\r\n").next().unwrap_or_default();
    head.lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case(name) && v.trim().eq_ignore_ascii_case(value)
        })
    })
}

#[tokio::test]
async fn garbage_instead_of_a_handshake_gets_400() {
    let reply = http_reply(
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n",
        Config::default(),
    )
    .await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "{reply:?}");
}

#[tokio::test]
async fn plain_http_get_without_upgrade_gets_400() {
    let reply = http_reply(
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Config::default(),
    )
    .await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "{reply:?}");
    assert!(reply.contains("Upgrade: websocket"), "{reply:?}");
}

#[tokio::test]
async fn post_gets_405_with_allow_get() {
    let request = "POST / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let reply = http_reply(request.as_bytes(), Config::default()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 405"), "{reply:?}");
    assert!(has_header(&reply, "Allow", "GET"), "{reply:?}");
}

#[tokio::test]
async fn version_8_gets_426_with_version_13() {
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n";
    let reply = http_reply(request.as_bytes(), Config::default()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 426"), "{reply:?}");
    assert!(
        has_header(&reply, "Sec-WebSocket-Version", "13"),
        "{reply:?}"
    );
}

#[tokio::test]
async fn bad_key_gets_400() {
    let request = "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: c2hvcnQ=\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let reply = http_reply(request.as_bytes(), Config::default()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "{reply:?}");
}

#[tokio::test]
async fn http_1_0_gets_400() {
    let request = "GET / HTTP/1.0\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                   Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
    let reply = http_reply(request.as_bytes(), Config::default()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 400"), "{reply:?}");
}

#[tokio::test]
async fn ten_kib_header_block_gets_431() {
    let mut request = String::from(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    request.push_str(&format!("X-Padding: {}\r\n", "a".repeat(10 * 1024)));
    request.push_str("\r\n");
    let reply = http_reply(request.as_bytes(), Config::default()).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 431"), "{reply:?}");
}

#[tokio::test]
async fn ten_kib_header_block_that_never_ends_gets_431() {
    // No blank line at all: the limit must apply to an incomplete head too.
    let addr = echo_server().await;
    let mut raw = raw_tcp(addr).await;
    let mut request = String::from("GET / HTTP/1.1\r\nHost: localhost\r\n");
    for i in 0..400 {
        request.push_str(&format!("X-Header-{i}: {}\r\n", "b".repeat(16)));
    }
    assert!(request.len() > 10 * 1024);
    raw.write(request.as_bytes()).await;
    let reply = raw.read_all_string().await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 431"), "{reply:?}");
}

#[tokio::test]
async fn too_many_headers_gets_431() {
    let config = Config::default().headers(HeaderLimits::default().max_headers(16));
    let mut request = String::from(
        "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n",
    );
    for i in 0..20 {
        request.push_str(&format!("X-{i}: v\r\n"));
    }
    request.push_str("\r\n");
    let reply = http_reply(request.as_bytes(), config).await;
    assert!(status_line(&reply).starts_with("HTTP/1.1 431"), "{reply:?}");
}

#[tokio::test]
async fn half_a_request_is_dropped_after_open_timeout() {
    let config = Config::default().open_timeout(Duration::from_millis(200));
    let addr = echo_server_with(config).await;
    let mut raw = raw_tcp(addr).await;
    let request = upgrade_request(addr);
    let start = Instant::now();
    raw.write(&request.as_bytes()[..request.len() / 2]).await;
    let reply = raw.expect_eof_within(Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    assert!(reply.is_empty(), "no response expected: {reply:?}");
    assert!(
        elapsed > Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "dropped after {elapsed:?}"
    );
}

#[tokio::test]
async fn silent_connection_is_dropped_after_open_timeout() {
    let config = Config::default().open_timeout(Duration::from_millis(200));
    let addr = echo_server_with(config).await;
    let mut raw = raw_tcp(addr).await;
    let start = Instant::now();
    raw.expect_eof_within(Duration::from_secs(3)).await;
    let elapsed = start.elapsed();
    assert!(
        elapsed > Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "dropped after {elapsed:?}"
    );
}

#[tokio::test]
async fn bad_handshakes_do_not_stop_the_server() {
    let addr = echo_server().await;
    for _ in 0..5 {
        let mut raw = raw_tcp(addr).await;
        raw.write(b"nonsense\r\n\r\n").await;
        let reply = raw.read_all_string().await;
        assert!(reply.starts_with("HTTP/1.1 400"), "{reply:?}");
    }
    let mut ws = client(addr, Config::default()).await;
    within(ws.send("still serving")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("still serving"));
}

#[tokio::test]
async fn messages_before_a_violation_are_answered_before_the_failure_close() {
    // The echo server stops at the first error; the message before the violation still gets its
    // echo, then the 1002 close, then TCP close.
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    let mut bytes = client_frame(OP_TEXT, b"good");
    bytes.extend(server_frame(OP_TEXT, b"unmasked"));
    raw.write(&bytes).await;
    let echo = raw.read_frame().await;
    assert_eq!(
        (echo.opcode, echo.payload.as_slice()),
        (OP_TEXT, &b"good"[..])
    );
    let close = raw.read_frame().await;
    assert_eq!(close.close_code(), Some(1002));
    let rest = raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(rest.is_empty(), "{rest:?}");
}

/// Slowloris: a thousand clients trickling a request byte by byte do not delay a real handshake,
/// and are all dropped once the open timeout passes.
#[tokio::test]
async fn a_thousand_trickling_clients_do_not_delay_new_handshakes() {
    let config = Config::default().open_timeout(Duration::from_millis(1500));
    let addr = echo_server_with(config).await;
    let mut tricklers = Vec::new();
    for _ in 0..1000 {
        let mut raw = raw_tcp(addr).await;
        raw.write(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        tricklers.push(raw);
    }
    // Keep trickling one byte each while a real client connects and echoes.
    let trickle = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for _ in 0..3 {
            for raw in tricklers.iter_mut() {
                let _ = raw.stream.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tricklers
    });
    let start = std::time::Instant::now();
    let mut ws = client(addr, Config::default()).await;
    ws.send("through the crowd").await.expect("send");
    assert_eq!(next_msg(&mut ws).await, Message::text("through the crowd"));
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "handshake + echo took {took:?}"
    );
    // Every trickler is dropped by the open timeout.
    let mut tricklers = within(trickle).await.expect("join");
    for raw in tricklers.iter_mut().take(50) {
        raw.expect_eof_within(Duration::from_secs(5)).await;
    }
}
