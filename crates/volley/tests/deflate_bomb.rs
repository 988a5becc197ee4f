//! A decompression bomb (1 MiB of DEFLATE inflating to 1 GiB of zeros) thrown at a Volley server
//! and at a Volley client over TCP: both fail the connection with 1009, and the process's peak
//! resident memory (VmHWM) grows by little more than the message size limit.
//!
//! One test in its own binary, so that the peak memory measured is this test's alone.

mod common;

use common::*;
use flate2::{Compress, Compression};
use volley::{
    ClientBuilder, Config, DeflateConfig, Error, Message, ProtocolError, Role, accept_with_config,
};

const MIB: usize = 1024 * 1024;
/// The max message size both ends use.
const LIMIT: usize = 4 * MIB;

/// 1 GiB of zeros as one compressed message payload (tail stripped): ~1.04 MiB.
fn bomb() -> Vec<u8> {
    let zeros = vec![0u8; MIB];
    let mut c = Compress::new(Compression::new(9), false);
    let first = sync_compress(&mut c, &zeros);
    let second = sync_compress(&mut c, &zeros);
    assert_eq!(second, sync_compress(&mut c, &zeros));
    let mut out = first;
    for _ in 1..1024 {
        out.extend_from_slice(&second);
    }
    out.truncate(out.len() - 4);
    out
}

/// A data frame with RSV1 set, masked when it goes to a server.
fn compressed_frame(to: Role, payload: &[u8]) -> Vec<u8> {
    let mask = (to == Role::Server).then_some([9, 8, 7, 6]);
    let mut f = frame(true, OP_BINARY, mask, payload);
    f[0] |= 0x40;
    f
}

/// Peak resident set size of this process, in bytes.
fn vm_hwm() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib * 1024
}

fn config() -> Config {
    Config::default()
        .max_message_size(LIMIT)
        .deflate(Some(DeflateConfig::default()))
}

fn expect_too_large(err: Error) {
    match err {
        Error::Protocol(ProtocolError::MessageTooLarge { size, max }) => {
            assert_eq!(max, LIMIT);
            // Stopped within one 16 KiB inflate step of the limit.
            assert!(
                size > LIMIT as u64 && size <= (LIMIT + 16 * 1024) as u64,
                "{size}"
            );
        }
        other => panic!("expected MessageTooLarge, got {other:?}"),
    }
}

/// The server role: a raw client negotiates permessage-deflate and sends the bomb.
async fn server_role(bomb: &[u8]) {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (mut ws, _) = accept_with_config(stream, config()).await.unwrap();
        assert!(ws.deflate().is_some());
        loop {
            match ws.recv().await {
                Some(Err(e)) => return e,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
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
    // The server fails the connection long before the whole bomb is written: ignore write errors.
    let frame = compressed_frame(Role::Server, bomb);
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &frame).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1009));
    expect_too_large(within(server).await.unwrap());
}

/// The client role: a raw server accepts permessage-deflate and sends the bomb.
async fn client_role(bomb: &[u8]) {
    let (listener, addr) = raw_listener().await;
    let client = tokio::spawn(async move {
        let (mut ws, _) = ClientBuilder::new(format!("ws://{addr}/"))
            .config(config())
            .connect()
            .await
            .unwrap();
        assert!(ws.deflate().is_some());
        loop {
            match ws.recv().await {
                Some(Err(e)) => return e,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    });
    let (mut raw, head) = raw_accept_request(&listener).await;
    let response = switching_protocols(&head).replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    raw.write(response.as_bytes()).await;
    let frame = compressed_frame(Role::Client, bomb);
    let _ = tokio::io::AsyncWriteExt::write_all(&mut raw.stream, &frame).await;
    let close = raw.read_close().await;
    assert!(close.masked);
    assert_eq!(close.close_code(), Some(1009));
    expect_too_large(within(client).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_bomb_fails_with_1009_in_both_roles_and_peak_memory_stays_near_the_limit() {
    let bomb = bomb();
    assert!(bomb.len() < 1100 * 1024, "bomb of {} bytes", bomb.len());
    let before = vm_hwm();
    server_role(&bomb).await;
    client_role(&bomb).await;
    let grown = vm_hwm().saturating_sub(before);
    eprintln!(
        "peak RSS grew by {:.1} MiB (limit {} MiB, bomb 1024 MiB inflated)",
        grown as f64 / MIB as f64,
        LIMIT / MIB
    );
    // The message buffer (up to the limit, doubled while growing) and the zlib windows: a few
    // times the limit at most, against 1 GiB had the bomb been inflated.
    assert!(
        grown < 4 * LIMIT + 8 * MIB,
        "peak RSS grew by {grown} bytes"
    );
}
