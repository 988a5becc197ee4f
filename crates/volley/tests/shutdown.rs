//! Graceful shutdown: stop accepting, close open connections with 1001 behind what is queued,
//! drain up to a deadline, then abort.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::sync::oneshot;
use volley::{CloseCode, Config, Message, Server};

/// Starts a server whose handler first sends `count` messages, then reads until the end.
async fn server_that_sends(
    count: usize,
    drain: Duration,
) -> (
    std::net::SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    tokio::sync::mpsc::UnboundedReceiver<()>,
) {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .config(Config::default())
        .drain_timeout(drain);
    let addr = server.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (sent_tx, sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let serving = tokio::spawn(server.serve_with_shutdown(
        move |mut ws, _| {
            let sent_tx = sent_tx.clone();
            async move {
                for i in 0..count {
                    if ws
                        .send(format!("{i:05} {}", "x".repeat(10_000)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = sent_tx.send(());
                while let Some(Ok(_)) = ws.recv().await {}
            }
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    (addr, stop_tx, serving, sent_rx)
}

#[tokio::test]
async fn open_connections_get_1001_after_everything_queued_before_it() {
    let (addr, stop, serving, mut sent) = server_that_sends(100, Duration::from_secs(5)).await;
    let mut ws = client(addr, Config::default().ping_interval(None)).await;
    // Wait until the handler queued all its messages, then shut down before reading any.
    within(sent.recv()).await.expect("handler sent");
    stop.send(()).expect("stop");
    for i in 0..100 {
        match next_msg(&mut ws).await {
            Message::Text(t) => assert!(
                t.starts_with(&format!("{i:05} ")),
                "message {i}: {}",
                &t[..10]
            ),
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    match next_msg(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(within(ws.recv()).await.is_none());
    within(serving).await.expect("join").expect("serve result");
}

#[tokio::test]
async fn new_connections_are_refused_after_shutdown() {
    let (addr, stop, serving, _sent) = server_that_sends(0, Duration::from_secs(5)).await;
    stop.send(()).expect("stop");
    within(serving).await.expect("join").expect("serve result");
    let refused = volley::connect(&format!("ws://{addr}/")).await;
    assert!(refused.is_err(), "connected after shutdown");
}

#[tokio::test]
async fn connections_that_do_not_close_are_aborted_at_the_drain_deadline() {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .drain_timeout(Duration::from_millis(300));
    let addr = server.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(
        |ws, _| async move {
            // Never reads, never ends on its own.
            let _keep = ws;
            std::future::pending::<()>().await;
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut raw = raw_client(addr).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let start = Instant::now();
    stop_tx.send(()).expect("stop");
    // The close frame still goes out (the handle writes it), then the task is aborted.
    assert_eq!(raw.read_close().await.close_code(), Some(1001));
    within(serving).await.expect("join").expect("serve result");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(3),
        "{took:?}"
    );
    raw.expect_eof_within(Duration::from_secs(2)).await;
}
