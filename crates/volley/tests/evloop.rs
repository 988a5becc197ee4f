//! The callback drivers' own poll for plain TCP (issue #15): edge cases of an edge-triggered
//! event loop that the general callback tests (tests/callback.rs, which run on it too) do not
//! aim at — an end of stream signalled together with data, writes that would block and resume
//! on the socket's next event, handles waking an idle connection from another thread, and
//! every socket released on every way a connection ends.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
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
        if message.payload() == &b"slow"[..] {
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
            addr_tx
                .send(server.local_addr().expect("addr"))
                .expect("addr");
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

/// The sockets on local port `port` that a descriptor still holds (connected ones and the
/// listener): the server's (tests run in parallel in this process, so its descriptor count
/// says nothing). Sockets the server closed first linger in TIME_WAIT without a descriptor
/// (inode 0).
fn held_sockets(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let local = format!(":{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.len() > 9 && fields[1].ends_with(&local) && fields[9] != "0"
        })
        .count()
}

/// Waits (bounded) until at most `want` sockets on `port` are held; returns how many are.
async fn held_sockets_down_to(port: u16, want: usize) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = held_sockets(port);
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

/// A peer that stops reading fills the socket: writes would block and the driver stops reading
/// (backpressure), so only the socket's next event (its send buffer draining) can resume it; it
/// then writes the rest, in order, and reads again.
#[tokio::test]
async fn writes_that_would_block_resume_when_the_peer_reads_again() {
    let mut server = start(config().write_limit(256 * 1024));
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(16 * 1024).expect("rcvbuf");
    let stream = within(socket.connect(server.addr)).await.expect("connect");
    let mut raw = Raw::new(stream);
    raw.write(upgrade_request(server.addr).as_bytes()).await;
    assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101 "));
    assert!(raw.buf.is_empty());
    let id = server.opened().await.id();
    // 16 MiB of echoes, far more than the sockets' buffers hold (the kernel's default maximum
    // send buffer is 4 MiB, the client's receive buffer 16 KiB): the server runs into a full
    // socket, then into its write limit, and stops reading.
    let count = 256;
    let len = 64 * 1024;
    let mut sent = Vec::new();
    for i in 0..count {
        sent.extend(client_frame(OP_BINARY, &vec![i as u8; len]));
    }
    let (mut rd, mut wr) = raw.stream.into_split();
    let writer = tokio::spawn(async move {
        tokio::time::timeout(Duration::from_secs(30), wr.write_all(&sent))
            .await
            .expect("the client's writes timed out")
            .expect("write");
        wr
    });
    // Nothing is read until the server is stuck.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!writer.is_finished(), "the server took everything in");
    let mut echo = vec![0u8; 10 + len];
    for i in 0..count {
        // Promptly: without the socket's writable event the driver would only come back to the
        // connection at its next timer (its buffers' release, a second after its last read).
        within_for(Duration::from_millis(600), rd.read_exact(&mut echo))
            .await
            .expect("echo");
        assert_eq!(echo[..2], [0x82, 127], "echo {i}");
        assert_eq!(echo[2..10], (len as u64).to_be_bytes(), "echo {i}");
        assert!(echo[10..].iter().all(|&b| b == i as u8), "echo {i}");
    }
    let wr = within(writer).await.expect("writer");
    drop((rd, wr));
    assert_eq!(server.closed(id).await, "abnormal");
}

/// A handle's send from another thread wakes a connection that has had no I/O since it
/// opened (it waits in the driver's poll, not in tokio's), promptly.
#[tokio::test]
async fn a_send_from_another_thread_reaches_an_idle_connection() {
    let mut server = start(config());
    let mut raw = raw_client(server.addr).await;
    let handle = server.opened().await;
    // Past the release of the connection's buffers (1 s after its last read): from then on it
    // has no deadline in the driver's timer queue, only its socket in the poll and the handle.
    tokio::time::sleep(Duration::from_millis(1300)).await;
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

/// A connection that used up its turn's budget (16 writes of what handles queued, here) runs
/// again without a socket event: it wakes itself. Many sends queued by a handle while the
/// driver is held (the `slow` message) go out a write limit's worth per write, 16 writes per
/// turn; nothing on the socket would bring the connection back (its writes never block: the
/// client reads everything), so a lost self-wake would leave the rest in the outbox.
#[tokio::test]
async fn a_connection_past_its_turn_budget_runs_again_without_a_socket_event() {
    let mut server = start(config().write_limit(1024));
    let mut raw = raw_client(server.addr).await;
    let handle = server.opened().await;
    raw.write(&client_frame(OP_TEXT, b"slow")).await;
    // While the driver sleeps in `on_message`: 200 sends of 1 KiB (within the default send
    // queue of 256 messages), a hundred writes' worth.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let count = 200;
    let sender = handle.clone();
    std::thread::spawn(move || {
        for i in 0..count {
            sender.send(vec![i as u8; 1024]).expect("send");
        }
    })
    .join()
    .expect("thread");
    for i in 0..count {
        let frame = within_for(Duration::from_secs(2), raw.read_frame()).await;
        assert_eq!(frame.payload, vec![i as u8; 1024], "message {i}");
    }
    // The echo was sent after them (`on_message` returned once they were queued).
    assert_eq!(raw.read_frame().await.payload, b"slow");
    handle.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
    assert_eq!(raw.read_close().await.close_code(), Some(1000));
}

/// Every way a connection ends releases its socket: a completed close handshake, the peer's
/// EOF, a reset in the middle of a frame, a protocol violation, a handle's close, and the
/// server's shutdown for the ones left.
#[tokio::test]
async fn every_way_a_connection_ends_releases_its_socket() {
    let mut server = start(config());
    let port = server.addr.port();
    assert_eq!(held_sockets(port), 1, "the listener");

    // 1. Close handshake started by the client.
    let mut raw = raw_client(server.addr).await;
    let id = server.opened().await.id();
    raw.write(&client_frame(OP_CLOSE, &close_payload(1000, "")))
        .await;
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
    assert!(
        outcome == "abnormal" || outcome.starts_with("error"),
        "{outcome}"
    );

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

    // Only the listener is left.
    assert_eq!(held_sockets_down_to(port, 1).await, 1);

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
    assert_eq!(
        [outcomes[0].0, outcomes[1].0],
        [first, second],
        "{outcomes:?}"
    );
    assert!(outcomes[0].1.starts_with("ok"), "{outcomes:?}");
    assert!(outcomes[1].1.starts_with("error"), "{outcomes:?}");
    drop((answering, silent));
    // The listener is gone too.
    assert_eq!(held_sockets_down_to(port, 0).await, 0);
}
