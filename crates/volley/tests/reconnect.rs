//! The reconnecting client against servers that drop it, close it, or are gone, with
//! millisecond backoff so that every test is short.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{start_server, within};
use volley::reconnect::{Backoff, Event, Reconnect};
use volley::{ClientBuilder, CloseCode, CloseFrame, Config, Error, Message};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn fast_backoff() -> Backoff {
    Backoff::default()
        .base(ms(20))
        .factor(2.0)
        .cap(ms(80))
        .stable(Duration::from_secs(60))
}

/// A port on which nothing listens.
fn dead_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

#[tokio::test]
async fn reconnects_after_drops_and_closes_and_delivers_after_resubscribing() {
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let addr = start_server(Config::default(), move |mut ws, _request| {
        let n = counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match n {
                // The first connection is dropped without a close frame.
                0 => drop(ws),
                // The second is closed as for a restart.
                1 => {
                    let frame = CloseFrame::new(CloseCode::from(1012), "restarting");
                    let _ = ws.close(Some(frame)).await;
                }
                // Then an echo server.
                _ => {
                    while let Some(Ok(msg)) = ws.recv().await {
                        if msg.is_data() && ws.send(msg).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    })
    .await;

    let mut client = Reconnect::new(ClientBuilder::new(format!("ws://{addr}/")))
        .backoff(fast_backoff())
        .seed(42)
        .start();
    let mut connected = 0;
    let mut disconnects = Vec::new();
    let reply = within(async {
        while let Some(event) = client.next().await {
            match event {
                Event::Connected { .. } => {
                    connected += 1;
                    // Resubscribe on every connection; the first two may already be gone.
                    let sent = client.send("subscribe").await;
                    if connected == 3 {
                        sent.expect("send on the third connection");
                        assert!(client.is_connected());
                    }
                }
                Event::Message(Message::Text(t)) => return t,
                Event::Message(_) => {}
                Event::Disconnected {
                    close,
                    error,
                    retry_in,
                } => disconnects.push((close, error, retry_in)),
                other => panic!("unexpected event {other:?}"),
            }
        }
        panic!("the client stopped");
    })
    .await;
    assert_eq!(reply, "subscribe", "delivered after reconnecting");
    assert_eq!(connected, 3);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(disconnects.len(), 2);

    let (close, error, retry_in) = &disconnects[0];
    assert!(close.is_none());
    // EOF without a close frame, or a reset if our "subscribe" reached the socket unread.
    assert!(
        matches!(error, Some(Error::AbnormalClose | Error::Io(_))),
        "{error:?}"
    );
    let retry_in = retry_in.expect("retrying");
    assert!(
        retry_in < ms(20),
        "first reconnect: random below base, got {retry_in:?}"
    );

    let (close, error, retry_in) = &disconnects[1];
    let close = close.as_ref().expect("the server's close frame");
    assert_eq!(u16::from(close.code), 1012);
    assert!(error.is_none(), "a clean close: {error:?}");
    assert!(
        retry_in.expect("retrying") < ms(40),
        "second reconnect below base*2"
    );

    // Messages keep flowing on the new connection, from another task too.
    let sender = client.sender();
    within(sender.send(Message::binary(vec![7u8; 3])))
        .await
        .expect("send");
    match within(client.next()).await {
        Some(Event::Message(m)) => assert_eq!(m, Message::binary(vec![7u8; 3])),
        other => panic!("expected the echo, got {other:?}"),
    }

    // Stopping closes cleanly and ends the events.
    within(client.close(None)).await;
    match within(client.next()).await {
        Some(Event::Disconnected {
            retry_in, close, ..
        }) => {
            assert_eq!(retry_in, None);
            assert_eq!(
                close.map(|c| u16::from(c.code)),
                Some(1000),
                "the echo of our 1000"
            );
        }
        other => panic!("expected the final Disconnected, got {other:?}"),
    }
    assert!(within(client.next()).await.is_none());
    assert!(!client.is_connected());
    assert!(client.send("late").await.is_err());
}

#[tokio::test]
async fn keeps_retrying_within_the_cap_while_the_server_is_gone() {
    let addr = dead_addr();
    let backoff = fast_backoff();
    let mut client = Reconnect::new(ClientBuilder::new(format!("ws://{addr}/")))
        .backoff(backoff)
        .start();
    let start = Instant::now();
    let mut delays = Vec::new();
    within(async {
        while delays.len() < 12 {
            match client.next().await {
                Some(Event::ConnectFailed { error, retry_in }) => {
                    assert!(matches!(error, Error::Io(_)), "{error:?}");
                    delays.push(retry_in.expect("still retrying"));
                }
                other => panic!("expected ConnectFailed, got {other:?}"),
            }
        }
    })
    .await;
    // Ceilings 20, 40, 80, 80, ...: every delay below its ceiling, and never above the cap.
    for (n, delay) in delays.iter().enumerate() {
        assert!(*delay < backoff.ceiling(n as u32), "attempt {n}: {delay:?}");
        assert!(*delay <= backoff.cap);
    }
    // Twelve attempts with delays capped at 80 ms take well under a few seconds.
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );

    // Sending while disconnected fails at once instead of queueing.
    let err = within(client.send("nobody"))
        .await
        .expect_err("not connected");
    match err {
        Error::Io(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotConnected),
        other => panic!("{other:?}"),
    }
    within(client.close(None)).await;
    let mut last = None;
    while let Some(event) = within(client.next()).await {
        last = Some(event);
    }
    assert!(
        matches!(last, Some(Event::Disconnected { retry_in: None, .. })),
        "{last:?}"
    );
}

#[tokio::test]
async fn max_retries_gives_up() {
    let addr = dead_addr();
    let mut client = Reconnect::new(ClientBuilder::new(format!("ws://{addr}/")))
        .backoff(fast_backoff())
        .max_retries(Some(2))
        .start();
    let mut retries = Vec::new();
    while let Some(event) = within(client.next()).await {
        match event {
            Event::ConnectFailed { retry_in, .. } => retries.push(retry_in),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(retries.len(), 3, "the first attempt and two retries");
    assert!(retries[..2].iter().all(Option::is_some));
    assert_eq!(retries[2], None, "gave up");
}

#[tokio::test]
async fn rejected_handshakes_are_connect_failures() {
    let policy = volley::Policy::default().auth(|_request| async move {
        Err(volley::Reject::new(http::StatusCode::UNAUTHORIZED, "no"))
    });
    let server = volley::Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .policy(policy);
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve(|_ws, _request| async {}));
    let mut client = Reconnect::new(ClientBuilder::new(format!("ws://{addr}/")))
        .backoff(fast_backoff())
        .start();
    match within(client.next()).await {
        Some(Event::ConnectFailed { error, retry_in }) => {
            assert!(
                matches!(
                    error,
                    Error::Handshake(volley::HandshakeError::UnexpectedStatus(401))
                ),
                "{error:?}"
            );
            assert!(retry_in.is_some());
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection_with_1001() {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let addr = start_server(Config::default(), move |mut ws, _request| {
        let seen_tx = seen_tx.clone();
        async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if let Message::Close(frame) = msg {
                    let _ = seen_tx.send(frame.map(|f| u16::from(f.code)));
                }
            }
        }
    })
    .await;
    let mut client = Reconnect::new(ClientBuilder::new(format!("ws://{addr}/")))
        .backoff(fast_backoff())
        .start();
    assert!(matches!(
        within(client.next()).await,
        Some(Event::Connected { .. })
    ));
    drop(client);
    assert_eq!(within(seen.recv()).await, Some(Some(1001)));
}

/// `Reconnect::connector`: each attempt dials through the connector (here a Unix socket); its
/// errors are `ConnectFailed` events and are retried; the handshake uses the URL's path.
#[cfg(unix)]
#[tokio::test]
async fn a_connector_dials_each_attempt_over_a_unix_socket() {
    let dir = std::env::temp_dir().join(format!("volley-connector-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("ws.sock");
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path).expect("bind");
    // The server: answers with the request's path, then drops the first connection.
    tokio::spawn(async move {
        let mut n = 0;
        while let Ok((stream, _)) = listener.accept().await {
            n += 1;
            tokio::spawn(async move {
                let Ok((mut ws, request)) =
                    volley::accept_with_config(stream, Config::default()).await
                else {
                    return;
                };
                let _ = ws.send(format!("{} {n}", request.uri().path())).await;
                if n > 1 {
                    while let Some(Ok(_)) = ws.recv().await {}
                }
            });
        }
    });

    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let target = path.clone();
    let mut client = Reconnect::new(ClientBuilder::new("ws://localhost/feed"))
        .connector(move || {
            let attempt = counter.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            async move {
                if attempt == 0 {
                    return Err(std::io::Error::other("the first attempt fails"));
                }
                tokio::net::UnixStream::connect(target).await
            }
        })
        .backoff(fast_backoff())
        .seed(7)
        .start();
    let mut seen = Vec::new();
    within(async {
        while seen.len() < 2 {
            match client.next().await.expect("the client runs") {
                Event::ConnectFailed { error, retry_in } => {
                    assert!(
                        error.to_string().contains("the first attempt fails"),
                        "{error}"
                    );
                    assert!(retry_in.is_some());
                    assert!(seen.is_empty(), "only the first attempt fails");
                }
                Event::Message(Message::Text(t)) => seen.push(t.as_str().to_owned()),
                _ => {}
            }
        }
    })
    .await;
    // Two connections, both dialled by the connector; the handshake carried the URL's path.
    assert_eq!(seen, ["/feed 1", "/feed 2"]);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    within(client.close(None)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A connector that never completes is cut off at the open timeout and retried.
#[tokio::test(start_paused = true)]
async fn a_connector_that_hangs_times_out_and_is_retried() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let counter = attempts.clone();
    let config = Config::default().open_timeout(ms(500));
    let mut client = Reconnect::new(ClientBuilder::new("ws://sim/").config(config))
        .connector(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<std::io::Result<tokio::net::TcpStream>>()
        })
        .backoff(fast_backoff())
        .seed(1)
        .start();
    let started = tokio::time::Instant::now();
    for _ in 0..2 {
        match within(client.next()).await.expect("the client runs") {
            Event::ConnectFailed { error, retry_in } => {
                assert!(
                    matches!(error, Error::Timeout(volley::Timeout::Connect)),
                    "{error:?}"
                );
                assert!(retry_in.is_some());
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    let waited = started.elapsed();
    assert!(
        waited >= ms(1000) && waited < ms(1200),
        "two timeouts: {waited:?}"
    );
    assert_eq!(attempts.load(Ordering::SeqCst), 2);
    client.close(None).await;
}
