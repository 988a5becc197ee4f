//! The blocking client `volley::sync` against an in-process volley server running on another
//! thread's runtime. These tests are plain `#[test]`s: no runtime on the test thread.

use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use volley::{ClientBuilder, CloseCode, CloseFrame, Error, Message, Server, State};

/// Starts a server on its own thread and runtime: it echoes data messages, answers "slow" after
/// 300 ms, and closes with 4000 on "bye". Returns its address.
fn start_server() -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let server = Server::bind("127.0.0.1:0").await.expect("bind");
            tx.send(server.local_addr().expect("addr"))
                .expect("send addr");
            let _ = server
                .serve(|mut ws, _request| async move {
                    while let Some(Ok(msg)) = ws.recv().await {
                        match msg {
                            Message::Text(t) if t == "bye" => {
                                let _ = ws
                                    .close(Some(CloseFrame::new(CloseCode::from(4000), "bye")))
                                    .await;
                                return;
                            }
                            Message::Text(t) if t == "slow" => {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                let _ = ws.send("slow reply").await;
                            }
                            // A failed send ends the connection: the next `recv` says so.
                            msg if msg.is_data() => {
                                let _ = ws.send(msg).await;
                            }
                            _ => {}
                        }
                    }
                })
                .await;
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("server started")
}

#[test]
fn blocking_round_trip_and_clean_close() {
    let addr = start_server();
    let mut ws = volley::sync::connect(&format!("ws://{addr}/")).expect("connect");
    assert_eq!(ws.state(), State::Open);
    ws.send("hello").expect("send");
    assert_eq!(
        ws.recv_timeout(Duration::from_secs(10))
            .expect("open")
            .expect("ok"),
        Message::text("hello")
    );
    ws.send(Message::binary(vec![0u8, 1, 2])).expect("send");
    assert_eq!(
        ws.recv().expect("open").expect("ok"),
        Message::binary(vec![0u8, 1, 2])
    );
    ws.close(None).expect("close handshake");
    assert_eq!(ws.state(), State::Closed);
    assert!(ws.recv().is_none(), "nothing after the close");
    assert!(ws.send("late").is_err(), "cannot send after close");
}

#[test]
fn recv_timeout_times_out_without_losing_the_message() {
    let addr = start_server();
    let mut ws = volley::sync::connect(&format!("ws://{addr}/")).expect("connect");
    ws.send("slow").expect("send");
    let start = Instant::now();
    match ws.recv_timeout(Duration::from_millis(50)) {
        Some(Err(Error::Timeout(what))) => assert_eq!(what, volley::Timeout::Recv),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_millis(250));
    assert_eq!(
        ws.recv_timeout(Duration::from_secs(10))
            .expect("open")
            .expect("ok"),
        Message::text("slow reply"),
        "the reply that arrived after the timeout is still delivered"
    );
}

#[test]
fn server_close_frame_then_none() {
    let addr = start_server();
    let (mut ws, response) =
        volley::sync::connect_with(ClientBuilder::new(format!("ws://{addr}/"))).expect("connect");
    assert_eq!(response.protocol, None);
    ws.send("bye").expect("send");
    match ws.recv_timeout(Duration::from_secs(10)) {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4000),
        other => panic!("expected the server's close frame, got {other:?}"),
    }
    assert!(ws.recv_timeout(Duration::from_secs(10)).is_none());
}

#[test]
fn connect_errors_are_returned_not_panics() {
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    assert!(matches!(
        volley::sync::connect(&format!("ws://{addr}/")),
        Err(Error::Io(_))
    ));
    assert!(matches!(
        volley::sync::connect("http://example.com/"),
        Err(Error::Handshake(_))
    ));
}

#[test]
fn usable_from_inside_an_async_runtime_without_panicking() {
    let addr = start_server();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let mut ws = volley::sync::connect(&format!("ws://{addr}/")).expect("connect");
        ws.send("inside").expect("send");
        assert_eq!(
            ws.recv_timeout(Duration::from_secs(10))
                .expect("open")
                .expect("ok"),
            Message::text("inside")
        );
        drop(ws);
    });
}
