//! Keep-alive pings, dead-peer detection, idle timeout, and bounded buffering (`write_limit`).

mod common;

use std::time::{Duration, Instant};

use common::*;
use volley::{Config, Error, Message};

fn fast_keepalive() -> Config {
    Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_millis(150)))
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_1011() {
    let (addr, mut seen) = recording_server(fast_keepalive()).await;
    let mut raw = raw_client(addr).await;
    let start = Instant::now();
    // The server pings on schedule...
    let ping = raw.read_frame().await;
    assert_eq!(ping.opcode, OP_PING);
    assert!(!ping.payload.is_empty());
    // ...we never answer, so it fails the connection with 1011 and closes TCP.
    let close = raw.read_close().await;
    assert_eq!(close.close_code(), Some(1011));
    raw.expect_eof_within(Duration::from_secs(2)).await;
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(2), "took {elapsed:?}");
    // The handler learns why.
    let mut saw_timeout = false;
    while let Some(item) = within(seen.recv()).await {
        match item {
            Seen::Err(Error::KeepaliveTimeout) => saw_timeout = true,
            Seen::End => break,
            _ => {}
        }
    }
    assert!(
        saw_timeout,
        "the handler did not see Error::KeepaliveTimeout"
    );
}

#[tokio::test]
async fn a_live_peer_stays_connected_and_latency_is_measured() {
    let addr = echo_server_with(fast_keepalive()).await;
    let mut ws = client(addr, fast_keepalive()).await;
    // Across many ping intervals, echo keeps working: both ends answer each other's pings.
    let deadline = Instant::now() + Duration::from_millis(800);
    let mut n = 0;
    while Instant::now() < deadline {
        ws.send(format!("m{n}")).await.expect("send");
        let echoed = loop {
            match next_msg(&mut ws).await {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => break other,
            }
        };
        assert_eq!(echoed, Message::text(format!("m{n}")));
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Our own pings were answered by the server: latency is known and small.
    let latency = ws.latency().expect("a keep-alive round trip was measured");
    assert!(latency < Duration::from_millis(150), "{latency:?}");
    ws.close(None).await.expect("clean close");
}

#[tokio::test]
async fn keepalive_can_be_disabled() {
    let config = Config::default().ping_interval(None);
    let (addr, _seen) = recording_server(config).await;
    let mut raw = raw_client(addr).await;
    // No ping within several default-sized test intervals.
    let got = tokio::time::timeout(Duration::from_millis(400), raw.read_frame()).await;
    assert!(got.is_err(), "unexpected frame {got:?}");
}

#[tokio::test]
async fn idle_connections_are_closed_normally() {
    let config = Config::default()
        .ping_interval(None)
        .idle_timeout(Some(Duration::from_millis(200)));
    let (addr, _seen) = recording_server(config).await;
    let mut raw = raw_client(addr).await;
    let start = Instant::now();
    let close = raw.read_close().await;
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(close.close_reason(), "idle timeout");
    assert!(start.elapsed() >= Duration::from_millis(180));
}

#[tokio::test]
async fn traffic_defers_the_idle_timeout() {
    let config = Config::default()
        .ping_interval(None)
        .idle_timeout(Some(Duration::from_millis(300)));
    let addr = echo_server_with(config).await;
    let mut ws = client(addr, Config::default().ping_interval(None)).await;
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(format!("{i}")).await.expect("send");
        assert_eq!(next_msg(&mut ws).await, Message::text(format!("{i}")));
    }
}

#[tokio::test]
async fn feed_batches_until_flush_or_the_write_limit() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut ws = client(addr, Config::default().write_limit(1 << 20)).await;
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    for i in 0..10 {
        ws.feed(format!("batched {i}")).await.expect("feed");
    }
    // Below the write limit nothing has been written yet.
    let early = tokio::time::timeout(Duration::from_millis(200), seen.recv()).await;
    assert!(early.is_err(), "received before flush: {early:?}");
    ws.flush().await.expect("flush");
    for i in 0..10 {
        match within(seen.recv()).await {
            Some(Seen::Msg(m)) => assert_eq!(m, Message::text(format!("batched {i}"))),
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    // With a small write limit, feed writes through once the limit is crossed.
    let mut ws = client(addr, Config::default().write_limit(100)).await;
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    ws.feed(vec![1u8; 500]).await.expect("feed");
    match within(seen.recv()).await {
        Some(Seen::Msg(m)) => assert_eq!(m, Message::binary(vec![1u8; 500])),
        other => panic!("expected the fed message, got {other:?}"),
    }
}

/// A peer that floods pings and never reads must not make the server buffer pongs without bound:
/// once the replies pass the write limit, the server stops reading, and TCP pushes back on the
/// flooder.
#[tokio::test]
async fn a_ping_flood_from_a_peer_that_never_reads_is_pushed_back() {
    let (addr, _seen) = recording_server(Config::default().ping_interval(None)).await;
    let mut raw = raw_client(addr).await;
    let ping = client_frame(OP_PING, &[7u8; 125]);
    let flood: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * 400_000)
        .collect();
    // ~52 MB of pings would need ~52 MB of pongs buffered somewhere if nothing pushed back.
    use tokio::io::AsyncWriteExt;
    let result = tokio::time::timeout(Duration::from_secs(3), raw.stream.write_all(&flood)).await;
    assert!(
        result.is_err(),
        "the whole flood was accepted: the server buffered pongs without bound"
    );
}
