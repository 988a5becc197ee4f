//! The callback drivers' own poll for plain TCP (issue #15): edge cases of an edge-triggered
//! event loop that the general callback tests (tests/callback.rs, which run on it too) do not
//! aim at — an end of stream signalled together with data, writes that would block and resume
//! on the socket's next event, handles waking an idle connection from another thread, and
//! every socket released on every way a connection ends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use volley::callback::{Callbacks, Conn, ConnHandle};
use volley::{CloseCode, CloseFrame, Config, Endpoint, Error, Message, Result, Server};

/// What the server's callbacks saw.
#[derive(Debug)]
enum Seen {
    Opened(ConnHandle),
    Closed(u64, String),
}

/// Echoes; a message `slow` blocks the driver for 100 ms first (so that what the peer sends
/// meanwhile arrives as one batch of readiness).
struct Probe(mpsc::UnboundedSender<Seen>);

impl Callbacks for Probe {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let _ = self.0.send(Seen::Opened(conn.handle()));
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        if message.payload().as_ref() == b"slow" {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = conn.send(message);
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: Result<Option<CloseFrame>>) {
        let outcome = match result {
            Ok(frame) => format!("ok {frame:?}"),
            Err(Error::AbnormalClose) => "abnormal".to_owned(),
            Err(e) => format!("error {e}"),
        };
        let _ = self.0.send(Seen::Closed(conn.id(), outcome));
    }
}

struct Running {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
}

impl Running {
    async fn opened(&mut self) -> ConnHandle {
        match within(self.seen.recv()).await {
            Some(Seen::Opened(handle)) => handle,
            other => panic!("expected an open, got {other:?}"),
        }
    }

    async fn any_closed(&mut self) -> (u64, String) {
        match within(self.seen.recv()).await {
            Some(Seen::Closed(id, outcome)) => (id, outcome),
            other => panic!("expected a close, got {other:?}"),
        }
    }

    async fn closed(&mut self, id: u64) -> String {
        match within(self.seen.recv()).await {
            Some(Seen::Closed(closed, outcome)) if closed == id => outcome,
            other => panic!("expected the close of {id}, got {other:?}"),
        }
    }

    /// Shuts the server down (graceful, 2 s drain) and waits until `run_until` returned.
    async fn shutdown(&mut self) {
        let _ = self.stop.take().expect("running").send(());
        within(self.done.take().expect("running"))
            .await
            .expect("server thread");
    }
}

/// A server on its own current-thread runtime (one driver), on its own thread.
fn start(config: Config) -> Running {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let server = Server::bind("127.0.0.1:0")
                .await
                .expect("bind")
                .config(config)
                .drain_timeout(Duration::from_secs(2))
                .route("/", Endpoint::callbacks(Probe(seen_tx)));
            addr_tx.send(server.local_addr().expect("addr")).expect("addr");
            let _ = server
                .run_until(async {
                    let _ = stopped.await;
                })
                .await;
        });
        let _ = done_tx.send(());
    });
    let addr = addr_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("server started");
    Running {
        addr,
        seen,
        stop: Some(stop),
        done: Some(done),
    }
}

fn config() -> Config {
    Config::default().ping_interval(None)
}

/// The descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
}

/// Waits (bounded) until the process has `want` descriptors open or fewer; returns the count.
async fn fds_back_to(want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = open_fds();
        if now <= want || tokio::time::Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Regression: the end of the stream arrived in the same readiness as the last bytes before
/// it. The read of those bytes came back short, which (edge-triggered) means "wait for the next
/// edge" — but the end's edge had come already, with them: the connection hung until the
/// peer's keep-alive. The `slow` message holds the driver while the next frame and the FIN
/// arrive, so that they are seen together.
#[tokio::test]
async fn data_and_the_end_of_stream_seen_together_are_both_handled() {
    let mut server = start(config());
    let mut raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    raw.write(&client_frame(OP_TEXT, b"slow")).await;
    // While the driver sleeps in `on_message`:
    tokio::time::sleep(Duration::from_millis(20)).await;
    raw.write(&client_frame(OP_TEXT, b"last")).await;
    within(raw.stream.shutdown()).await.expect("shutdown");
    assert_eq!(raw.read_frame().await.payload, b"slow");
    assert_eq!(raw.read_frame().await.payload, b"last");
    assert_eq!(server.closed(id).await, "abnormal");
    raw.expect_eof_within(Duration::from_secs(2)).await;
}

/// A peer that stops reading fills the socket: writes would block, the driver keeps what is
/// left and writes it on the socket's next event (its send buffer draining), in order.
#[tokio::test]
async fn writes_that_would_block_resume_when_the_peer_reads_again() {
    let mut server = start(config().write_limit(1 << 20));
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let stream = within(socket.connect(server.addr)).await.expect("connect");
    let mut raw = Raw::new(stream);
    raw.write(upgrade_request(server.addr).as_bytes()).await;
    assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101 "));
    let id = server.opened().await.id();
    // 4 MiB of echoes, sent before the client reads any of it: far more than the two sockets'
    // buffers hold (the client's receive buffer is 16 KiB).
    let count = 64;
    let payload = |i: usize| vec![i as u8; 64 * 1024];
    let mut sent = Vec::new();
    for i in 0..count {
        sent.extend(client_frame(OP_BINARY, &payload(i)));
    }
    let (rd, mut wr) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.expect("write");
        wr
    });
    // Let the server run into a full socket before reading anything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut reader = Raw {
        stream: within(async {
            let wr = writer.await.expect("writer");
            rd.reunite(wr).expect("reunite")
        })
        .await,
        buf: raw.buf,
    };
    for i in 0..count {
        let frame = reader.read_frame().await;
        assert_eq!(frame.payload, payload(i), "echo {i}");
    }
    drop(reader);
    assert_eq!(server.closed(id).await, "abnormal");
}

/// A handle's send from another thread wakes a connection that has had no I/O since it
/// opened (it waits in the driver's poll, not in tokio's), promptly.
#[tokio::test]
async fn a_send_from_another_thread_reaches_an_idle_connection() {
    let mut server = start(config());
    let mut raw = raw_client(server.addr).await;
    let handle = server.opened().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sender = handle.clone();
    std::thread::spawn(move || sender.send("from a thread").expect("send"))
        .join()
        .expect("thread");
    let frame = within_for(Duration::from_secs(2), raw.read_frame()).await;
    assert_eq!(frame.payload, b"from a thread");
    // And the connection still reads and echoes afterwards.
    raw.write(&client_frame(OP_TEXT, b"after")).await;
    assert_eq!(raw.read_frame().await.payload, b"after");
    handle.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
    assert_eq!(raw.read_close().await.close_code(), Some(1000));
}

/// Every way a connection ends releases its socket: a completed close handshake, the peer's
/// EOF, a reset in the middle of a frame, a protocol violation, a handle's close, and the
/// server's shutdown for the ones left.
#[tokio::test]
async fn every_way_a_connection_ends_releases_its_socket() {
    let mut server = start(config());
    // The listener and the runtime are open already.
    let before = open_fds();

    // 1. Close handshake started by the client.
    let mut raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    raw.write(&client_frame(OP_CLOSE, &close_payload(1000, ""))).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1000));
    raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(server.closed(id).await.starts_with("ok"));
    drop(raw);

    // 2. EOF.
    let raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    drop(raw);
    assert_eq!(server.closed(id).await, "abnormal");

    // 3. Reset in the middle of a frame.
    let mut raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    raw.write(&client_frame(OP_BINARY, &[7; 1000])[..300]).await;
    raw.stream.set_zero_linger().expect("linger");
    drop(raw);
    let outcome = server.closed(id).await;
    assert!(outcome == "abnormal" || outcome.starts_with("error"), "{outcome}");

    // 4. Protocol violation (an unmasked frame): failed with 1002.
    let mut raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    raw.write(&frame(true, OP_TEXT, None, b"unmasked")).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1002));
    assert!(server.closed(id).await.starts_with("error"));
    raw.expect_eof_within(Duration::from_secs(2)).await;
    drop(raw);

    // 5. A handle's close, answered.
    let mut raw = raw_client(server.addr).await;
    let handle = server.opened().await;
    handle.close(None);
    assert_eq!(raw.read_close().await.opcode, OP_CLOSE);
    raw.write(&client_frame(OP_CLOSE, &[])).await;
    raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(server.closed(handle.id()).await.starts_with("ok"));
    drop(raw);

    let after = fds_back_to(before).await;
    assert!(after <= before, "{before} descriptors before, {after} after");

    // 6. Shutdown: connections still open are closed with 1001, answered or not.
    let mut answering = raw_client(server.addr).await;
    let first = server.opened().await.id();
    let silent = raw_client(server.addr).await;
    let second = server.opened().await.id();
    let stopping = tokio::spawn(async move {
        server.shutdown().await;
        server
    });
    assert_eq!(answering.read_close().await.close_code(), Some(1001));
    answering
        .write(&client_frame(OP_CLOSE, &close_payload(1001, "")))
        .await;
    answering.expect_eof_within(Duration::from_secs(2)).await;
    let mut server = within(stopping).await.expect("shutdown");
    let mut outcomes = [server.any_closed().await, server.any_closed().await];
    outcomes.sort();
    assert_eq!([outcomes[0].0, outcomes[1].0], [first, second], "{outcomes:?}");
    assert!(outcomes[0].1.starts_with("ok"), "{outcomes:?}");
    assert!(outcomes[1].1.starts_with("error"), "{outcomes:?}");
    drop((answering, silent));
    let after = fds_back_to(before).await;
    // The server's own descriptors (listener, runtime) are gone too now.
    assert!(after < before, "{before} descriptors before, {after} after shutdown");
}
