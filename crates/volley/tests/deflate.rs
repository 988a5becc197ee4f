//! permessage-deflate over real sockets: negotiation through `accept_with_config` and
//! `ClientBuilder`, compressed messages both ways with and without context takeover, a client
//! failing the connection on an invalid answer, and the inflated-size limit in both roles.

mod common;

use common::*;
use flate2::{Compress, Compression};
use volley::proto::frame::FrameHeader;
use volley::{
    ClientBuilder, CloseCode, Config, DeflateConfig, DeflateParams, Error, HandshakeError, Message,
    ProtocolError,
};

const MIB: usize = 1024 * 1024;

fn deflate_config(deflate: Option<DeflateConfig>) -> Config {
    Config::default()
        .max_message_size(16 * MIB)
        .deflate(deflate)
}

/// Repetitive text: compresses well, but not to nothing.
fn compressible(len: usize) -> String {
    let words = [
        "volley", "deflate", "window", "context", "takeover", "frame",
    ];
    let mut s = String::with_capacity(len + 16);
    let mut i = 0usize;
    while s.len() < len {
        s.push_str(words[(i * 7 + i / 5) % words.len()]);
        s.push(if i.is_multiple_of(11) { '\n' } else { ' ' });
        i += 1;
    }
    s.truncate(len);
    s
}

/// Raw DEFLATE of `data` with a sync flush and the tail stripped, as a peer sends a message.
fn deflate_message(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = sync_compress(c, data);
    out.truncate(out.len() - 4);
    out
}

/// Reads frames from a raw peer until a close frame, returning its code and whether any frame
/// had RSV1 set.
async fn read_until_close(raw: &mut Raw) -> (Option<u16>, Vec<u8>) {
    let mut rsvs = Vec::new();
    loop {
        // Peek the RSV bits before the shared helper decodes the frame.
        while FrameHeader::parse(&raw.buf).ok().flatten().is_none() {
            let mut chunk = [0u8; 4096];
            let n = within(tokio::io::AsyncReadExt::read(&mut raw.stream, &mut chunk))
                .await
                .expect("read");
            assert!(n > 0, "EOF before a close frame");
            raw.buf.extend_from_slice(&chunk[..n]);
        }
        rsvs.push((raw.buf[0] >> 4) & 7);
        let f = raw.read_frame().await;
        if f.opcode == OP_CLOSE {
            return (f.close_code(), rsvs);
        }
    }
}

#[tokio::test]
async fn compressed_round_trips_with_and_without_context_takeover() {
    for (server_nct, client_nct) in [(false, false), (true, false), (false, true), (true, true)] {
        let server_cfg = DeflateConfig::default()
            .server_no_context_takeover(server_nct)
            .client_no_context_takeover(client_nct);
        // An echo server that reports the offer it saw and the parameters it agreed to.
        let (tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
        let addr = start_server(deflate_config(Some(server_cfg)), move |mut ws, request| {
            let tx = tx.clone();
            async move {
                let offer = request.headers()["sec-websocket-extensions"].clone();
                let _ = tx.send((offer, ws.deflate()));
                while let Some(Ok(message)) = ws.recv().await {
                    if message.is_data() && ws.send(message).await.is_err() {
                        break;
                    }
                }
            }
        })
        .await;
        let (mut ws, response) = within(
            ClientBuilder::new(format!("ws://{addr}/"))
                .config(deflate_config(Some(DeflateConfig::default())))
                .connect(),
        )
        .await
        .expect("connect");
        let expected = DeflateParams::default()
            .server_no_context_takeover(server_nct)
            .client_no_context_takeover(client_nct);
        assert_eq!(response.deflate, Some(expected));
        assert_eq!(ws.deflate(), Some(expected));
        let head = response.response.headers()["sec-websocket-extensions"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(head, expected.header_value());
        let (offer, server_params) = within(seen.recv()).await.unwrap();
        assert_eq!(offer, "permessage-deflate; client_max_window_bits");
        assert_eq!(server_params, Some(expected));

        let text = compressible(200_000);
        for _ in 0..3 {
            within(ws.send(text.as_str())).await.unwrap();
            assert_eq!(within(next_msg(&mut ws)).await, Message::text(text.clone()));
            within(ws.send(text.clone().into_bytes())).await.unwrap();
            assert_eq!(
                within(next_msg(&mut ws)).await,
                Message::binary(text.clone().into_bytes())
            );
            within(ws.send("small")).await.unwrap();
            assert_eq!(within(next_msg(&mut ws)).await, Message::text("small"));
        }
        within(ws.close(None)).await.unwrap();
    }
}

#[tokio::test]
async fn compression_needs_both_sides() {
    for (server, client) in [
        (Some(DeflateConfig::default()), None),
        (None, Some(DeflateConfig::default())),
    ] {
        let addr = echo_server_with(deflate_config(server)).await;
        let (mut ws, response) = within(
            ClientBuilder::new(format!("ws://{addr}/"))
                .config(deflate_config(client))
                .connect(),
        )
        .await
        .expect("connect");
        assert_eq!(response.deflate, None);
        assert_eq!(ws.deflate(), None);
        assert!(
            !response
                .response
                .headers()
                .contains_key("sec-websocket-extensions")
        );
        within(ws.send(compressible(10_000))).await.unwrap();
        assert_eq!(
            within(next_msg(&mut ws)).await,
            Message::text(compressible(10_000))
        );
    }
}

#[tokio::test]
async fn server_answers_the_first_acceptable_offer_in_the_101() {
    let addr = echo_server_with(deflate_config(Some(DeflateConfig::default()))).await;
    for (offer, answer) in [
        (
            "permessage-deflate; bogus, permessage-deflate; server_max_window_bits=10",
            Some("permessage-deflate; server_max_window_bits=10"),
        ),
        (
            "permessage-deflate; server_max_window_bits=16, permessage-deflate; server_max_window_bits=7",
            None,
        ),
        ("x-webkit-deflate-frame", None),
    ] {
        let mut raw = raw_tcp(addr).await;
        let request = upgrade_request(addr).replace(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: {offer}\r\n\r\n"),
        );
        raw.write(request.as_bytes()).await;
        let head = raw.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        let got = head.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        assert_eq!(got.as_deref(), answer, "offer {offer:?}");
    }
}

#[tokio::test]
async fn client_fails_the_connection_with_1010_on_an_invalid_answer() {
    for answer in [
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_max_window_bits",
        "permessage-deflate; unknown_parameter",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate, permessage-deflate",
        "x-unknown-extension",
    ] {
        let (listener, addr) = raw_listener().await;
        let client = tokio::spawn(async move {
            ClientBuilder::new(format!("ws://{addr}/"))
                .config(deflate_config(Some(DeflateConfig::default())))
                .connect()
                .await
        });
        let (mut raw, head) = raw_accept_request(&listener).await;
        assert!(
            head.contains(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
            ),
            "{head}"
        );
        let response = switching_protocols(&head).replace(
            "\r\n\r\n",
            &format!("\r\nSec-WebSocket-Extensions: {answer}\r\n\r\n"),
        );
        raw.write(response.as_bytes()).await;
        let result = within(client).await.unwrap();
        match result {
            Err(Error::Handshake(
                HandshakeError::InvalidDeflateResponse(_) | HandshakeError::UnexpectedExtension(_),
            )) => {}
            other => panic!("{answer:?}: expected a handshake error, got {other:?}"),
        }
        let close = raw.read_frame().await;
        assert!(close.masked);
        assert_eq!(close.opcode, OP_CLOSE);
        assert_eq!(close.close_code(), Some(1010), "{answer:?}");
        raw.expect_eof_within(WAIT).await;
    }
}

#[tokio::test]
async fn exactly_the_limit_passes_and_one_byte_more_fails_with_1009_in_both_roles() {
    let limit = 500_000;
    let config = || {
        Config::default()
            .max_message_size(limit)
            .deflate(Some(DeflateConfig::default()))
    };
    // The server sends "give:N" replies of N bytes; everything else is echoed.
    let addr = start_server(config(), |mut ws, _| async move {
        while let Some(Ok(message)) = ws.recv().await {
            let reply = match &message {
                Message::Text(t) if t.starts_with("give:") => {
                    Message::text(compressible(t[5..].parse().unwrap()))
                }
                m if m.is_data() => message,
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    })
    .await;

    // Client to server: exactly the limit is echoed, one more byte fails the connection.
    let (mut ws, _) = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .config(config())
            .connect(),
    )
    .await
    .unwrap();
    within(ws.send(compressible(limit))).await.unwrap();
    assert_eq!(
        within(next_msg(&mut ws)).await,
        Message::text(compressible(limit))
    );
    within(ws.send(compressible(limit + 1))).await.unwrap();
    match within(next_msg(&mut ws)).await {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::MESSAGE_TOO_BIG),
        other => panic!("expected the server's 1009, got {other:?}"),
    }

    // Server to client: the same from the other side.
    let (mut ws, _) = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .config(config())
            .connect(),
    )
    .await
    .unwrap();
    within(ws.send(format!("give:{limit}"))).await.unwrap();
    assert_eq!(
        within(next_msg(&mut ws)).await,
        Message::text(compressible(limit))
    );
    within(ws.send(format!("give:{}", limit + 1)))
        .await
        .unwrap();
    let err = loop {
        match within(ws.recv()).await {
            Some(Err(e)) => break e,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => panic!("expected an error, got {other:?}"),
        }
    };
    match err {
        Error::Protocol(ProtocolError::MessageTooLarge { size, max }) => {
            assert_eq!((size, max), ((limit + 1) as u64, limit));
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

#[tokio::test]
async fn peer_compressed_fragments_with_context_takeover_arrive_whole() {
    // A raw client compresses with its own zlib, keeps its window across messages and splits each
    // message into frames; the Volley server inflates and echoes.
    let addr = echo_server_with(deflate_config(Some(DeflateConfig::default()))).await;
    let mut raw = raw_tcp(addr).await;
    let request = upgrade_request(addr).replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    raw.write(request.as_bytes()).await;
    let head = raw.read_http_head().await;
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );
    let mut z = Compress::new(Compression::new(6), false);
    let body = compressible(100_000);
    for _ in 0..3 {
        let payload = deflate_message(&mut z, body.as_bytes());
        let parts: Vec<&[u8]> = payload.chunks(1000).collect();
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 { OP_TEXT } else { OP_CONT };
            let mut f = frame(i + 1 == parts.len(), opcode, Some([1, 2, 3, 4]), part);
            if i == 0 {
                f[0] |= 0x40; // RSV1
            }
            raw.write(&f).await;
        }
        // The echo comes back compressed by the server, in one frame with RSV1.
        while FrameHeader::parse(&raw.buf).ok().flatten().is_none() {
            let mut chunk = [0u8; 4096];
            let n = within(tokio::io::AsyncReadExt::read(&mut raw.stream, &mut chunk))
                .await
                .unwrap();
            raw.buf.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(raw.buf[0] & 0x70, 0x40, "the echo is compressed");
        let echo = raw.read_frame().await;
        assert!(echo.payload.len() < body.len() / 4);
    }
    // RSV1 on a continuation frame fails the connection with 1002.
    let mut f = frame(false, OP_TEXT, Some([1, 2, 3, 4]), b"x");
    f.extend(frame(true, OP_CONT, Some([1, 2, 3, 4]), b"y"));
    let at = f.len() - 7;
    f[at] |= 0x40;
    raw.write(&f).await;
    let (code, _) = read_until_close(&mut raw).await;
    assert_eq!(code, Some(1002));
}
