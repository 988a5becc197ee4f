//! Split halves used from separate tasks: neither half blocks the other, and control frames are
//! answered while the application only receives (or only sends).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use volley::{Config, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_receiver_tasks_run_concurrently() {
    const N: usize = 2000;
    let addr = echo_server().await;
    let ws = client(addr, Config::default()).await;
    let (mut tx, mut rx) = ws.split();
    let receiver = tokio::spawn(async move {
        for i in 0..N {
            match within(rx.recv()).await {
                Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("msg {i}")),
                other => panic!("message {i}: {other:?}"),
            }
        }
        rx
    });
    let sender = tokio::spawn(async move {
        for i in 0..N {
            within(tx.send(format!("msg {i}"))).await.unwrap();
        }
        tx
    });
    let mut tx = within(sender).await.unwrap();
    let mut rx = within(receiver).await.unwrap();
    within(tx.close(None)).await.unwrap();
    assert!(matches!(
        within(rx.recv()).await,
        Some(Ok(Message::Close(None)))
    ));
    assert!(within(rx.recv()).await.is_none());
}

#[tokio::test]
async fn receiver_blocked_in_recv_does_not_block_the_sender() {
    // The server only counts; nothing arrives for the client until the end.
    let addr = start_server(Config::default(), |mut ws, _| async move {
        let mut count = 0usize;
        while let Some(Ok(m)) = ws.recv().await {
            match m {
                Message::Text(t) if t == "end" => {
                    let _ = ws.send(format!("count={count}")).await;
                }
                m if m.is_data() => count += 1,
                _ => {}
            }
        }
    })
    .await;
    let ws = client(addr, Config::default()).await;
    let (mut tx, mut rx) = ws.split();
    let receiver = tokio::spawn(async move { within(rx.recv()).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    for i in 0..2000 {
        within_for(
            Duration::from_secs(5),
            tx.send(Message::binary(vec![i as u8; 100])),
        )
        .await
        .unwrap();
    }
    assert!(
        !receiver.is_finished(),
        "nothing was sent to the client yet"
    );
    within(tx.send("end")).await.unwrap();
    let got = within(receiver).await.unwrap();
    assert!(
        matches!(&got, Some(Ok(Message::Text(t))) if t == "count=2000"),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_blocked_on_a_full_transport_does_not_block_the_receiver() {
    // The raw server never reads, so the client's sender eventually blocks in a write; the
    // server's messages must still be received meanwhile.
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        // Let the client's sender fill the buffers first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        for i in 0..100 {
            raw.write(&server_frame(OP_TEXT, format!("server {i}").as_bytes()))
                .await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        raw
    });
    let ws = client(addr, Config::default()).await;
    let (mut tx, mut rx) = ws.split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sent2 = sent.clone();
    let sender = tokio::spawn(async move {
        let chunk = Bytes::from(vec![7u8; 1 << 20]);
        for _ in 0..256 {
            if tx.send(Message::Binary(chunk.clone())).await.is_err() {
                break;
            }
            sent2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    for i in 0..100 {
        match within(rx.recv()).await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), format!("server {i}")),
            other => panic!("message {i}: {other:?}"),
        }
    }
    let sent_mib = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        !sender.is_finished() && sent_mib < 256,
        "the sender should be blocked on the full transport (sent {sent_mib} MiB)"
    );
    sender.abort();
    drop(within(server).await.unwrap());
}

#[tokio::test]
async fn server_answers_pings_while_the_handler_only_receives() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut raw = raw_client(addr).await;
    for i in 0..20 {
        let payload = format!("ping {i}");
        raw.write(&client_frame(OP_PING, payload.as_bytes())).await;
        let pong = raw.read_frame().await;
        assert!(!pong.masked);
        assert_eq!(
            (pong.opcode, pong.payload.as_slice()),
            (OP_PONG, payload.as_bytes())
        );
    }
    // Empty ping, and a ping in the middle of a fragmented message.
    raw.write(&client_frame(OP_PING, b"")).await;
    let pong = raw.read_frame().await;
    assert_eq!((pong.opcode, pong.payload.len()), (OP_PONG, 0));
    let mut bytes = frame(false, OP_TEXT, Some([1, 1, 1, 1]), b"frag");
    bytes.extend(client_frame(OP_PING, b"inside"));
    raw.write(&bytes).await;
    let pong = raw.read_frame().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"inside"[..])
    );
    raw.write(&frame(true, OP_CONT, Some([2, 2, 2, 2]), b"ment"))
        .await;

    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    for i in 0..20 {
        assert!(
            matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Ping(p))) if p == format!("ping {i}").as_bytes())
        );
    }
    assert!(matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Ping(p))) if p.is_empty()));
    assert!(
        matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Ping(p))) if p == "inside")
    );
    assert!(
        matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Text(t))) if t == "fragment")
    );
}

#[tokio::test]
async fn client_receiver_answers_pings_while_the_sender_is_idle() {
    let (listener, addr) = raw_listener().await;
    let server = tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        for i in 0..20 {
            let payload = format!("ping {i}");
            raw.write(&server_frame(OP_PING, payload.as_bytes())).await;
            let pong = raw.read_frame().await;
            assert!(pong.masked);
            assert_eq!(
                (pong.opcode, pong.payload.as_slice()),
                (OP_PONG, payload.as_bytes())
            );
        }
        raw.write(&server_frame(OP_TEXT, b"done")).await;
        raw
    });
    let ws = client(addr, Config::default()).await;
    let (_tx, mut rx) = ws.split();
    let mut pings = 0;
    loop {
        match within(rx.recv()).await {
            Some(Ok(Message::Ping(_))) => pings += 1,
            Some(Ok(Message::Text(t))) if t == "done" => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(pings, 20);
    drop(within(server).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pongs_interleave_cleanly_with_a_busy_sender() {
    // The server handler splits: one task streams 2,000 messages, the other only receives. Pongs
    // produced by the receiver must go out whole between the sender's frames.
    const N: usize = 2000;
    let addr = start_server(Config::default(), |ws, _| async move {
        let (mut tx, mut rx) = ws.split();
        let sender = tokio::spawn(async move {
            for i in 0..N {
                let mut payload = format!("{i:06}").into_bytes();
                payload.resize(1000, b'.');
                if tx.send(Message::binary(payload)).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(_)) = rx.recv().await {}
        sender.abort();
    })
    .await;
    let mut raw = raw_client(addr).await;
    let mut next_data = 0;
    let mut pongs = 0;
    let mut ping = 0;
    while next_data < N {
        if ping < 100 && next_data % 20 == 0 {
            raw.write(&client_frame(OP_PING, format!("{ping}").as_bytes()))
                .await;
            ping += 1;
        }
        let f = raw.read_frame().await;
        match f.opcode {
            OP_BINARY => {
                assert_eq!(&f.payload[..6], format!("{next_data:06}").as_bytes());
                assert_eq!(f.payload.len(), 1000);
                next_data += 1;
            }
            OP_PONG => {
                assert_eq!(f.payload, format!("{pongs}").as_bytes());
                pongs += 1;
            }
            other => panic!("unexpected opcode {other}"),
        }
    }
    while pongs < ping {
        let f = raw.read_frame().await;
        assert_eq!(
            (f.opcode, f.payload),
            (OP_PONG, format!("{pongs}").into_bytes())
        );
        pongs += 1;
    }
    assert_eq!(pongs, ping);
    assert!(ping > 50);
}

/// How long this build takes to inflate `message` (compressed) in one read: the time a receiver
/// holding the sender's lock would block it.
fn inflate_time(config: &Config, message: &[u8]) -> Duration {
    use volley::proto::{Connection, DeflateParams, Role};
    let params = DeflateParams::default();
    let mut client = Connection::with_deflate(Role::Client, config.protocol.clone(), Some(params));
    let mut server = Connection::with_deflate(Role::Server, config.protocol.clone(), Some(params));
    client.send(Message::binary(message.to_vec())).unwrap();
    let mut wire = Vec::new();
    while let Some(bytes) = client.poll_transmit() {
        wire.extend_from_slice(&bytes);
    }
    let start = std::time::Instant::now();
    server.handle_read(&wire).unwrap();
    let took = start.elapsed();
    assert!(matches!(server.poll_event(), Some(Message::Binary(b)) if b.len() == message.len()));
    took
}

/// Regression: the task path's receiver decoded and inflated while holding the lock its senders
/// need, so a large compressed message stalled every send on other threads for as long as it
/// took to inflate. Now the receiver owns the protocol's receiving half.
#[test]
fn a_16_mib_inflate_on_one_thread_does_not_block_a_sender_on_another() {
    const BIG: usize = 16 << 20;
    const MESSAGES: usize = 4;
    let config = Config::default()
        .deflate(Some(volley::DeflateConfig::default()))
        .max_message_size(32 << 20)
        .ping_interval(None);
    let big = vec![0u8; BIG];
    let inflate = inflate_time(&config, &big);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (worst_send, received) = runtime.block_on(async {
        let (result_tx, result_rx) = tokio::sync::oneshot::channel();
        let result_tx = std::sync::Mutex::new(Some(result_tx));
        let addr = start_server(config.clone(), move |ws, _| {
            let result_tx = result_tx.lock().unwrap().take();
            async move {
                let (mut tx, mut rx) = ws.split();
                let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
                // The sender runs on a thread of its own (its own runtime), so that it is never
                // stalled by the receiver's worker being busy, only by a lock.
                let sender = std::thread::spawn({
                    let stop = stop.clone();
                    move || {
                        let rt = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                            .unwrap();
                        rt.block_on(async move {
                            let mut worst = Duration::ZERO;
                            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                                let start = std::time::Instant::now();
                                if tx.send("tick").await.is_err() {
                                    break;
                                }
                                worst = worst.max(start.elapsed());
                                tokio::time::sleep(Duration::from_micros(200)).await;
                            }
                            worst
                        })
                    }
                });
                let mut received = 0;
                while let Some(Ok(message)) = rx.recv().await {
                    if let Message::Binary(b) = message {
                        assert_eq!(b.len(), BIG);
                        received += 1;
                        if received == MESSAGES {
                            break;
                        }
                    }
                }
                stop.store(true, std::sync::atomic::Ordering::Release);
                let worst = sender.join().unwrap();
                if let Some(result_tx) = result_tx {
                    let _ = result_tx.send((worst, received));
                }
            }
        })
        .await;
        let ws = client(addr, config.clone()).await;
        let (mut tx, mut rx) = ws.split();
        // Drain the ticks.
        let reader = tokio::spawn(async move { while let Some(Ok(_)) = rx.recv().await {} });
        for _ in 0..MESSAGES {
            within(tx.send(Message::binary(big.clone()))).await.unwrap();
        }
        let result = within_for(Duration::from_secs(60), result_rx)
            .await
            .unwrap();
        drop(tx);
        reader.abort();
        result
    });
    eprintln!("inflating 16 MiB takes {inflate:?}; the worst send meanwhile took {worst_send:?}");
    assert_eq!(received, MESSAGES);
    assert!(
        worst_send < inflate / 2,
        "a send waited {worst_send:?} while inflating took {inflate:?}"
    );
}
