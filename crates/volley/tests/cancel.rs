//! Cancel safety: `recv` and `send` futures dropped midway (as `tokio::select!` does) lose nothing
//! and tear nothing.

mod common;

use std::time::Duration;

use common::*;
use volley::{Config, Message};

/// Message `i` of the stream: its number followed by a pattern, with sizes that vary from a few
/// bytes to ~200 KB so that many messages span several reads.
fn numbered(i: usize) -> Vec<u8> {
    let len = 8 + (i * 7919) % 200_000;
    let mut v = (i as u64).to_be_bytes().to_vec();
    v.extend((0..len - 8).map(|k| (k + i) as u8));
    v
}

fn check_numbered(payload: &[u8]) -> usize {
    let i = u64::from_be_bytes(payload[..8].try_into().unwrap()) as usize;
    assert!(payload == numbered(i).as_slice(), "message {i} corrupted");
    i
}

#[tokio::test]
async fn recv_raced_against_a_short_sleep_loses_nothing() {
    const N: usize = 500;
    // The server streams N numbered messages at a steady rate, with a ping every 25 messages.
    let addr = start_server(Config::default(), |mut ws, _| async move {
        for i in 0..N {
            if i % 25 == 0 && ws.send(Message::Ping(format!("{i}").into())).await.is_err() {
                return;
            }
            if ws.send(Message::binary(numbered(i))).await.is_err() {
                return;
            }
            if i % 5 == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
    let mut ws = client(addr, Config::default()).await;
    let mut next = 0;
    let mut pings = 0;
    let mut cancelled = 0u64;
    within_for(Duration::from_secs(60), async {
        while next < N {
            tokio::select! {
                item = ws.recv() => match item {
                    Some(Ok(Message::Binary(b))) => {
                        assert_eq!(check_numbered(&b), next, "out of order or duplicated");
                        next += 1;
                    }
                    Some(Ok(Message::Ping(_))) => pings += 1,
                    other => panic!("after {next} messages: {other:?}"),
                },
                () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
    })
    .await;
    assert_eq!(next, N);
    assert_eq!(pings, N / 25);
    assert!(cancelled > 0, "the race never cancelled a recv");
    within(ws.close(None))
        .await
        .expect("clean close after the race");
}

#[tokio::test]
async fn recv_raced_against_a_short_sleep_with_a_raw_byte_dribbler() {
    // A raw server writes 300 small messages a few bytes at a time, so that recv is cancelled in
    // the middle of frames (and of frame headers) over and over.
    const N: usize = 300;
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        let mut bytes = Vec::new();
        for i in 0..N {
            bytes.extend(server_frame(
                OP_TEXT,
                format!("message number {i}").as_bytes(),
            ));
        }
        for (k, chunk) in bytes.chunks(5).enumerate() {
            raw.write(chunk).await;
            tokio::task::yield_now().await;
            if k % 3 == 0 {
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        }
        raw
    });
    let mut ws = client(addr, Config::default()).await;
    let mut next = 0;
    let mut cancelled = 0u64;
    within_for(Duration::from_secs(60), async {
        while next < N {
            tokio::select! {
                item = ws.recv() => match item {
                    Some(Ok(Message::Text(t))) => {
                        assert_eq!(t.as_str(), format!("message number {next}"));
                        next += 1;
                    }
                    other => panic!("after {next} messages: {other:?}"),
                },
                () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
    })
    .await;
    assert_eq!(next, N);
    assert!(cancelled > 0, "the race never cancelled a recv");
    drop(within(server).await.unwrap());
}

#[tokio::test]
async fn send_raced_against_a_short_sleep_never_tears_or_duplicates() {
    // A slow server (it sleeps after every message) makes sends wait for the transport, so many
    // are dropped mid-write. Every message must arrive whole, at most once, in order; every send
    // that completed must arrive; and what a dropped send queued is written by later calls.
    const N: usize = 150;
    let (addr, mut seen) = {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let addr = start_server(Config::default(), move |mut ws, _| {
            let tx = tx.clone();
            async move {
                while let Some(item) = ws.recv().await {
                    let done = !matches!(item, Ok(Message::Binary(_)));
                    let _ = tx.send(item.map_err(|e| e.to_string()));
                    if done {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                while let Some(Ok(_)) = ws.recv().await {}
            }
        })
        .await;
        (addr, rx)
    };
    let mut ws = client(addr, Config::default()).await;
    let mut completed = Vec::new();
    let mut cancelled = 0;
    within_for(Duration::from_secs(60), async {
        for i in 0..N {
            tokio::select! {
                r = ws.send(Message::binary(numbered(i))) => {
                    r.expect("send");
                    completed.push(i);
                }
                () = tokio::time::sleep(Duration::from_millis(1)) => cancelled += 1,
            }
        }
    })
    .await;
    within(ws.flush())
        .await
        .expect("flush what dropped sends queued");
    within(ws.send("end")).await.unwrap();

    let mut received = Vec::new();
    loop {
        match within_for(Duration::from_secs(60), seen.recv()).await {
            Some(Ok(Message::Binary(b))) => received.push(check_numbered(&b)),
            Some(Ok(Message::Text(t))) if t == "end" => break,
            other => panic!("after {} messages: {other:?}", received.len()),
        }
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "out of order or duplicated: {received:?}"
    );
    for i in &completed {
        assert!(received.contains(i), "completed send {i} never arrived");
    }
    assert!(cancelled > 0, "no send was ever cancelled");
    within(ws.close(None)).await.unwrap();
}
