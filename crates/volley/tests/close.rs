//! The close handshake in both directions, close timeouts, and abnormal closes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use volley::{CloseCode, CloseFrame, Config, Error, Message, SendError, State};

#[tokio::test]
async fn client_close_reaches_the_server_handler_with_code_and_reason() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut ws = client(addr, Config::default()).await;
    within(ws.send("before close")).await.unwrap();
    let closed = within(ws.close(Some(CloseFrame::new(CloseCode(4000), "bye")))).await;
    assert!(closed.is_ok(), "client close() failed: {closed:?}");
    assert_eq!(ws.state(), State::Closed);

    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(
        matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Text(t))) if t == "before close")
    );
    match within(seen.recv()).await {
        Some(Seen::Msg(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode(4000));
            assert_eq!(frame.reason, "bye");
        }
        other => panic!("expected Close(4000, bye), got {other:?}"),
    }
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));

    // After the handshake: recv is None, sending is refused.
    assert!(within(ws.recv()).await.is_none());
    assert!(matches!(
        within(ws.send("late")).await,
        Err(Error::Send(SendError::Closed))
    ));
}

#[tokio::test]
async fn client_close_without_a_frame_arrives_as_close_none() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut ws = client(addr, Config::default()).await;
    within(ws.close(None)).await.expect("close");
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Msg(Message::Close(None)))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn server_initiated_close() {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let done_tx = std::sync::Arc::new(std::sync::Mutex::new(Some(done_tx)));
    let addr = start_server(Config::default(), move |mut ws, _| {
        let done_tx = done_tx.clone();
        async move {
            ws.send("last words").await.unwrap();
            let result = ws
                .close(Some(CloseFrame::new(CloseCode(4001), "server says bye")))
                .await;
            let state = ws.state();
            if let Some(tx) = done_tx.lock().unwrap().take() {
                let _ = tx.send((result.map_err(|e| e.to_string()), state));
            }
        }
    })
    .await;
    let mut ws = client(addr, Config::default()).await;
    assert_eq!(next_msg(&mut ws).await, Message::text("last words"));
    match next_msg(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode(4001));
            assert_eq!(frame.reason, "server says bye");
        }
        other => panic!("expected close 4001, got {other:?}"),
    }
    assert!(within(ws.recv()).await.is_none());
    assert_eq!(ws.state(), State::Closed);
    let (result, state) = within(done_rx).await.unwrap();
    assert_eq!(result, Ok(()));
    assert_eq!(state, State::Closed);
}

#[tokio::test]
async fn server_echoes_a_raw_close_and_closes_tcp() {
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    raw.write(&client_frame(OP_CLOSE, &close_payload(4002, "raw bye")))
        .await;
    let reply = raw.read_frame().await;
    assert!(!reply.masked);
    assert_eq!(reply.close_code(), Some(4002));
    assert_eq!(reply.close_reason(), "raw bye");
    let rest = raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(rest.is_empty(), "nothing may follow the close: {rest:?}");
}

/// A raw server peer that completes the handshake, reads the client's close frame (sent through
/// the returned receiver) and then stays silent, keeping the connection open until the returned
/// sender is dropped (or 10 s pass).
fn silent_peer(
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Receiver<RawFrame>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (close_tx, close_rx) = tokio::sync::oneshot::channel();
    let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        let _ = close_tx.send(raw.read_close().await);
        let _ = tokio::time::timeout(WAIT, hold_rx).await;
        drop(raw);
    });
    (close_rx, hold_tx)
}

#[tokio::test]
async fn close_times_out_when_the_peer_never_answers() {
    let (listener, addr) = raw_listener().await;
    let (peer, _hold) = silent_peer(listener);
    let mut ws = client(
        addr,
        Config::default().close_timeout(Duration::from_millis(200)),
    )
    .await;
    let start = Instant::now();
    let result = within(ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))).await;
    let elapsed = start.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(_))),
        "expected a timeout, got {result:?}"
    );
    assert!(
        elapsed > Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "close took {elapsed:?}"
    );
    let close = within(peer).await.unwrap();
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(ws.state(), State::CloseSent);
}

#[tokio::test]
async fn close_timeout_is_a_deadline_even_if_the_peer_keeps_talking() {
    // The peer answers everything except the close: it keeps sending messages every 50 ms. The
    // close must still give up after about close_timeout, not wait for a quiet 200 ms.
    let (listener, addr) = raw_listener().await;
    let peer = tokio::spawn(async move {
        let raw = raw_server_accept(&listener).await;
        for i in 0..60 {
            let msg = format!("chatter {i}");
            if raw
                .stream
                .try_write(&server_frame(OP_TEXT, msg.as_bytes()))
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut ws = client(
        addr,
        Config::default().close_timeout(Duration::from_millis(200)),
    )
    .await;
    let start = Instant::now();
    let result = within(ws.close(None)).await;
    let elapsed = start.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(_))),
        "expected a timeout, got {result:?}"
    );
    assert!(
        elapsed > Duration::from_millis(150) && elapsed < Duration::from_secs(2),
        "close took {elapsed:?}"
    );
    peer.abort();
}

#[tokio::test]
async fn split_close_wakes_a_receiver_blocked_in_recv() {
    // The receiving half is already waiting in recv() when the sending half closes; the peer never
    // answers. The receiver must give up after close_timeout instead of waiting forever.
    let (listener, addr) = raw_listener().await;
    let (peer, _hold) = silent_peer(listener);
    let ws = client(
        addr,
        Config::default().close_timeout(Duration::from_millis(200)),
    )
    .await;
    let (mut tx, mut rx) = ws.split();
    let receiver = tokio::spawn(async move {
        let result = rx.recv().await;
        (result, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!receiver.is_finished());
    let start = Instant::now();
    within(tx.close(None)).await.expect("close frame written");
    assert_eq!(tx.state(), State::CloseSent);
    let (result, at) = within_for(Duration::from_secs(3), receiver).await.unwrap();
    let elapsed = at - start;
    assert!(
        matches!(result, Some(Err(Error::Timeout(_)))),
        "expected a timeout, got {result:?}"
    );
    assert!(
        elapsed < Duration::from_secs(2),
        "receiver gave up after {elapsed:?}"
    );
    assert_eq!(within(peer).await.unwrap().close_code(), None);
}

#[tokio::test]
async fn split_close_completes_through_the_receiver() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let ws = client(addr, Config::default()).await;
    let (mut tx, mut rx) = ws.split();
    let receiver = tokio::spawn(async move {
        let mut got = Vec::new();
        while let Some(item) = rx.recv().await {
            got.push(item.map_err(|e| e.to_string()));
        }
        got
    });
    within(tx.close(Some(CloseFrame::new(CloseCode(4003), "split"))))
        .await
        .unwrap();
    let got = within(receiver).await.unwrap();
    assert_eq!(
        got,
        vec![Ok(Message::Close(Some(CloseFrame::new(
            CloseCode(4003),
            "split"
        ))))]
    );
    assert_eq!(tx.state(), State::Closed);
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Msg(Message::Close(Some(f)))) if f.code.0 == 4003
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn peer_disconnecting_without_close_is_abnormal_on_the_client() {
    let (listener, addr) = raw_listener().await;
    let peer = tokio::spawn(async move {
        let mut raw = raw_server_accept(&listener).await;
        raw.write(&server_frame(OP_TEXT, b"one")).await;
        drop(raw);
    });
    let mut ws = client(addr, Config::default()).await;
    within(peer).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("one"));
    assert!(matches!(
        within(ws.recv()).await,
        Some(Err(Error::AbnormalClose))
    ));
    assert!(within(ws.recv()).await.is_none());
}

#[tokio::test]
async fn peer_disconnecting_without_close_is_abnormal_on_the_server() {
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut raw = raw_client(addr).await;
    raw.write(&client_frame(OP_BINARY, b"data")).await;
    drop(raw);
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(
        matches!(within(seen.recv()).await, Some(Seen::Msg(Message::Binary(b))) if b == "data")
    );
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Err(Error::AbnormalClose))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn close_code_that_may_not_be_sent_is_refused() {
    let addr = echo_server().await;
    let mut ws = client(addr, Config::default()).await;
    for code in [1005, 1006, 1015, 999, 5000] {
        let result = within(ws.close(Some(CloseFrame::new(CloseCode(code), "")))).await;
        assert!(
            matches!(result, Err(Error::Send(SendError::InvalidCloseCode(c))) if c == code),
            "code {code}: {result:?}"
        );
    }
    // Still open and usable.
    within(ws.send("still here")).await.unwrap();
    assert_eq!(next_msg(&mut ws).await, Message::text("still here"));
    within(ws.close(None)).await.unwrap();
}

#[tokio::test]
async fn invalid_close_code_from_peer_fails_with_1002() {
    let addr = echo_server().await;
    let mut raw = raw_client(addr).await;
    raw.write(&client_frame(OP_CLOSE, &close_payload(1005, "")))
        .await;
    let reply = raw.read_close().await;
    assert_eq!(reply.close_code(), Some(1002));
    raw.expect_eof_within(Duration::from_secs(2)).await;
}

#[tokio::test]
async fn messages_after_the_peer_close_are_ignored() {
    // Data after a close frame (in the same write) must not surface.
    let (addr, mut seen) = recording_server(Config::default()).await;
    let mut raw = raw_client(addr).await;
    let mut bytes = client_frame(OP_CLOSE, &close_payload(1000, ""));
    bytes.extend(client_frame(OP_TEXT, b"after close"));
    raw.write(&bytes).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1000));
    assert!(matches!(within(seen.recv()).await, Some(Seen::Open(_))));
    assert!(matches!(
        within(seen.recv()).await,
        Some(Seen::Msg(Message::Close(Some(_))))
    ));
    assert!(matches!(within(seen.recv()).await, Some(Seen::End)));
}

#[tokio::test]
async fn messages_before_a_close_in_the_same_read_are_answered_before_the_close_reply() {
    // An echo server must be able to answer messages that arrived together with the close frame:
    // the close reply goes out after the echoes, not before (which would make them unsendable).
    let addr = echo_server().await;
    for round in 0..20 {
        let mut raw = raw_client(addr).await;
        let mut bytes = client_frame(OP_TEXT, b"hello");
        bytes.extend(client_frame(OP_BINARY, b"world"));
        bytes.extend(client_frame(OP_CLOSE, &close_payload(1000, "")));
        raw.write(&bytes).await;
        let a = raw.read_frame().await;
        let b = raw.read_frame().await;
        let c = raw.read_frame().await;
        assert_eq!(
            (a.opcode, a.payload.as_slice()),
            (OP_TEXT, &b"hello"[..]),
            "round {round}"
        );
        assert_eq!(
            (b.opcode, b.payload.as_slice()),
            (OP_BINARY, &b"world"[..]),
            "round {round}"
        );
        assert_eq!(c.close_code(), Some(1000), "round {round}");
        raw.expect_eof_within(Duration::from_secs(2)).await;
    }
}
