//! `volley::events`: connections run by callbacks on driver tasks behave like task-based
//! `WebSocket`s — echo at every frame-length boundary, routing, the close handshake, protocol
//! errors, keep-alive and timeouts, backpressure, graceful shutdown, handler panics, a
//! multi-thread runtime, compression, and many connections.
//!
//! Every handler here is a [`Probe`]: closures for `on_open` / `on_message`, and a channel that
//! reports every callback ([`Ev`]) to the test, which waits on it with bounded timeouts.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use volley::callback::{Callbacks, Conn};
use volley::proto::frame::FrameHeader;
use volley::{
    CloseCode, CloseFrame, Config, DeflateConfig, Error, Message, ProtocolError, Server, State,
};

// ---------------------------------------------------------------------------------------------
// The probe handler and the server around it
// ---------------------------------------------------------------------------------------------

/// One callback, as the handler saw it.
#[derive(Debug)]
enum Ev {
    Open(u64),
    Msg(u64, Message),
    Close(u64, volley::Result<Option<CloseFrame>>),
    /// Anything else a test's closure wants to report.
    Note(u64, String),
}

type Tx = mpsc::UnboundedSender<Ev>;
type OnOpen = Box<dyn Fn(&mut Conn<'_>) + Send + Sync>;
type OnMessage = Box<dyn Fn(&mut Conn<'_>, Message) + Send + Sync>;
type OnClose = Box<dyn Fn(&mut Conn<'_>) -> String + Send + Sync>;

/// A handler made of closures that reports every callback through a channel.
struct Probe {
    tx: Tx,
    open: OnOpen,
    message: OnMessage,
    /// Reported as an `Ev::Note` just before `Ev::Close`, if set.
    close: Option<OnClose>,
    /// Report `Ev::Msg` (off for bulk tests: the channel would keep every payload).
    record_messages: bool,
    panic_on_close: bool,
    /// Dropped with the handler: the test holds a `Weak` to see that the drivers let go of it.
    _alive: Arc<()>,
}

/// The test's side of a [`Probe`].
struct Events {
    rx: mpsc::UnboundedReceiver<Ev>,
    alive: Weak<()>,
}

impl Probe {
    /// A probe whose `on_message` is `message`; returns it with the receiving side.
    fn new(
        tx: &Tx,
        rx: mpsc::UnboundedReceiver<Ev>,
        message: impl Fn(&mut Conn<'_>, Message) + Send + Sync + 'static,
    ) -> (Self, Events) {
        let alive = Arc::new(());
        let events = Events {
            rx,
            alive: Arc::downgrade(&alive),
        };
        let probe = Self {
            tx: tx.clone(),
            open: Box::new(|_| {}),
            message: Box::new(message),
            close: None,
            record_messages: true,
            panic_on_close: false,
            _alive: alive,
        };
        (probe, events)
    }

    /// An echoing probe.
    fn echo() -> (Self, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        Self::new(&tx, rx, echo)
    }

    fn on_open(mut self, f: impl Fn(&mut Conn<'_>) + Send + Sync + 'static) -> Self {
        self.open = Box::new(f);
        self
    }

    fn on_close(mut self, f: impl Fn(&mut Conn<'_>) -> String + Send + Sync + 'static) -> Self {
        self.close = Some(Box::new(f));
        self
    }

    fn quiet(mut self) -> Self {
        self.record_messages = false;
        self
    }
}

/// Echoes data messages (a send on a closing connection fails: ignored, as a real echo would).
fn echo(conn: &mut Conn<'_>, message: Message) {
    let _ = conn.send(message);
}

impl Callbacks for Probe {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let _ = self.tx.send(Ev::Open(conn.id()));
        (self.open)(conn);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        if self.record_messages {
            let _ = self.tx.send(Ev::Msg(conn.id(), message.clone()));
        }
        (self.message)(conn, message);
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: volley::Result<Option<CloseFrame>>) {
        if let Some(note) = &self.close {
            let _ = self.tx.send(Ev::Note(conn.id(), note(conn)));
        }
        let _ = self.tx.send(Ev::Close(conn.id(), result));
        assert!(!self.panic_on_close, "on_close panics on purpose");
    }
}

impl Events {
    /// The next callback, waiting at most [`WAIT`].
    #[track_caller]
    fn next(&mut self) -> impl std::future::Future<Output = Ev> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            match within(self.rx.recv()).await {
                Some(ev) => ev,
                None => panic!("the handler is gone (waiting at {caller})"),
            }
        }
    }

    /// Waits for the next `on_open` and returns its id (nothing else may come first).
    async fn opened(&mut self) -> u64 {
        match self.next().await {
            Ev::Open(id) => id,
            other => panic!("expected on_open, got {other:?}"),
        }
    }

    /// Waits (skipping other callbacks) for `on_close(id, ..)` and returns its result.
    async fn closed(&mut self, id: u64) -> volley::Result<Option<CloseFrame>> {
        loop {
            match self.next().await {
                Ev::Close(got, result) if got == id => return result,
                Ev::Close(got, result) => {
                    panic!("on_close({got}, {result:?}) while waiting for {id}")
                }
                _ => {}
            }
        }
    }

    /// Asserts that no callback arrives within `quiet`.
    async fn assert_quiet(&mut self, quiet: Duration) {
        if let Ok(ev) = tokio::time::timeout(quiet, self.rx.recv()).await {
            panic!("unexpected callback {ev:?}");
        }
    }

    /// Waits (bounded) until the handler was dropped: every driver let go of it.
    async fn wait_handler_dropped(&self) {
        within(async {
            while self.alive.strong_count() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}

/// A running server: `/` is the events route, every other path gets a task that first sends
/// "task handler" and then echoes.
///
/// It runs on a runtime of its own, on its own thread: a driver that never yields (a bug) then
/// makes the test fail on its timeouts instead of freezing the test's runtime. Dropping it starts
/// the graceful shutdown, so the thread ends with the test.
struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<std::io::Result<()>>>,
}

impl Running {
    /// Starts the graceful shutdown and waits (at most `limit`) for `serve_with_shutdown` to
    /// return; returns how long that took.
    async fn shut_down(&mut self, limit: Duration) -> Duration {
        let start = Instant::now();
        self.stop
            .take()
            .expect("not stopped yet")
            .send(())
            .expect("stop");
        let done = self.done.take().expect("not stopped yet");
        within_for(limit, done)
            .await
            .expect("the server thread reports")
            .expect("serve result");
        start.elapsed()
    }
}

/// Starts a server with `config`, `probe` on "/" and drain timeout `drain` on a new thread
/// running a current-thread runtime (`workers == 0`) or a multi-thread one with `workers`.
fn start_on(workers: usize, config: Config, probe: impl Callbacks, drain: Duration) -> Running {
    start_with_policy(workers, config, probe, drain, volley::Policy::default())
}

/// [`start_on`] with a handshake policy.
fn start_with_policy(
    workers: usize,
    config: Config,
    probe: impl Callbacks,
    drain: Duration,
    policy: volley::Policy,
) -> Running {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let (done_tx, done) = oneshot::channel();
    std::thread::spawn(move || {
        let runtime = match workers {
            0 => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
            n => tokio::runtime::Builder::new_multi_thread()
                .worker_threads(n)
                .enable_all()
                .build(),
        }
        .expect("runtime");
        runtime.block_on(async move {
            let server = Server::bind("127.0.0.1:0")
                .await
                .expect("bind 127.0.0.1:0")
                .config(config)
                .drain_timeout(drain)
                .policy(policy)
                .route("/", volley::Endpoint::callbacks(probe));
            addr_tx
                .send(server.local_addr().expect("local_addr"))
                .expect("addr");
            let served = server
                .serve_with_shutdown(
                    |mut ws, _request| async move {
                        if ws.send("task handler").await.is_err() {
                            return;
                        }
                        while let Some(Ok(m)) = ws.recv().await {
                            if m.is_data() && ws.send(m).await.is_err() {
                                break;
                            }
                        }
                    },
                    async move {
                        let _ = stopped.await;
                    },
                )
                .await;
            let _ = done_tx.send(served);
        });
    });
    let addr = addr_rx
        .recv_timeout(WAIT)
        .expect("the server thread started");
    Running {
        addr,
        stop: Some(stop),
        done: Some(done),
    }
}

async fn start_with(config: Config, probe: Probe, drain: Duration) -> Running {
    start_on(0, config, probe, drain)
}

async fn start(config: Config, probe: Probe) -> Running {
    start_with(config, probe, Duration::from_secs(5)).await
}

/// Connects a volley client to `path` on `addr`.
async fn client_at(
    addr: SocketAddr,
    path: &str,
    config: Config,
) -> volley::WebSocket<volley::MaybeTlsStream> {
    within(
        volley::ClientBuilder::new(format!("ws://{addr}{path}"))
            .config(config)
            .connect(),
    )
    .await
    .expect("client connect")
    .0
}

/// Receives the next data or close message, skipping pings and pongs.
async fn next_data<S>(ws: &mut volley::WebSocket<S>) -> Message
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    loop {
        match next_msg(ws).await {
            Message::Ping(_) | Message::Pong(_) => {}
            other => return other,
        }
    }
}

/// A payload of `len` bytes that differs from its neighbours (ASCII, so valid text too).
fn payload(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + ((i + seed) % 26) as u8).collect()
}

fn no_keepalive() -> Config {
    Config::default().ping_interval(None)
}

// ---------------------------------------------------------------------------------------------
// 1. Echo
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn echoes_text_and_binary_at_every_length_boundary_up_to_1_mib() {
    let (probe, mut events) = Probe::echo();
    let server = start(Config::default(), probe).await;
    let mut ws = client(server.addr, Config::default()).await;
    let id = events.opened().await;
    let sizes = [0, 1, 125, 126, 127, 65_535, 65_536, 65_537, 1 << 20];
    for (seed, &len) in sizes.iter().enumerate() {
        let data = payload(len, seed);
        let text = Message::text(String::from_utf8(data.clone()).expect("ascii"));
        let binary = Message::binary(data);
        for message in [text, binary] {
            ws.send(message.clone()).await.expect("send");
            assert_eq!(next_data(&mut ws).await, message, "echo of {len} bytes");
            match events.next().await {
                Ev::Msg(got, seen) => {
                    assert_eq!(got, id);
                    assert_eq!(seen, message, "the handler saw {len} bytes");
                }
                other => panic!("expected on_message, got {other:?}"),
            }
        }
    }
    // Multi-byte UTF-8 stays intact.
    let accents = Message::text("héllo wörld ✓ 🦀");
    ws.send(accents.clone()).await.expect("send");
    assert_eq!(next_data(&mut ws).await, accents);
    ws.close(None).await.expect("close");
    assert!(matches!(events.closed(id).await, Ok(None)));
}

#[tokio::test]
async fn fragmented_input_is_reassembled_with_a_ping_in_between() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    let key = Some([1, 2, 3, 4]);
    let mut bytes = frame(false, OP_TEXT, key, "Hel".as_bytes());
    bytes.extend(frame(false, OP_CONT, key, "lo ".as_bytes()));
    bytes.extend(frame(true, OP_PING, key, b"in-between"));
    // A multi-byte character split across two fragments.
    let check = "✓".as_bytes();
    bytes.extend(frame(
        false,
        OP_CONT,
        key,
        &[b"w\xc3\xb6rld ", &check[..1]].concat(),
    ));
    bytes.extend(frame(true, OP_CONT, key, &check[1..]));
    // A fragmented binary message whose first fragment is empty.
    bytes.extend(frame(false, OP_BINARY, key, b""));
    bytes.extend(frame(true, OP_CONT, key, &[0, 1, 2, 255]));
    raw.write(&bytes).await;
    let pong = raw.read_frame().await;
    assert_eq!(
        (pong.opcode, &pong.payload[..]),
        (OP_PONG, &b"in-between"[..])
    );
    let text = raw.read_frame().await;
    assert_eq!(
        (text.fin, text.opcode, text.masked),
        (true, OP_TEXT, false),
        "one unmasked final frame"
    );
    assert_eq!(
        String::from_utf8(text.payload).expect("utf-8"),
        "Hello wörld ✓"
    );
    let binary = raw.read_frame().await;
    assert_eq!((binary.fin, binary.opcode), (true, OP_BINARY));
    assert_eq!(binary.payload, [0, 1, 2, 255]);
    // The handler saw two whole messages, nothing for the ping.
    assert!(
        matches!(events.next().await, Ev::Msg(i, Message::Text(t)) if i == id && t == "Hello wörld ✓")
    );
    assert!(
        matches!(events.next().await, Ev::Msg(i, Message::Binary(b)) if i == id && b[..] == [0, 1, 2, 255])
    );
    events.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_greeting_from_on_open_arrives_before_echoes_even_of_data_sent_with_the_handshake() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, echo);
    let probe = probe.on_open(|conn| {
        assert_eq!(conn.state(), State::Open);
        assert!(conn.peer_addr().is_some(), "peer address known at open");
        assert_eq!(conn.buffered_amount(), 0);
        assert_eq!(conn.config().close_timeout, Duration::from_millis(1234));
        assert!(conn.deflate().is_none());
        conn.send(format!("welcome {}", conn.id()))
            .expect("greeting");
        assert!(conn.buffered_amount() > 0, "the greeting is queued");
    });
    let server = start(
        no_keepalive().close_timeout(Duration::from_millis(1234)),
        probe,
    )
    .await;

    // A raw client whose first message travels in the same write as its handshake: the server
    // reads it as leftover of the handshake, and still greets first.
    let mut raw = raw_tcp(server.addr).await;
    let mut request = upgrade_request(server.addr).into_bytes();
    request.extend(client_frame(OP_TEXT, b"early"));
    raw.write(&request).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let id = events.opened().await;
    let greeting = raw.read_frame().await;
    assert_eq!(greeting.opcode, OP_TEXT);
    assert_eq!(greeting.payload, format!("welcome {id}").as_bytes());
    let echoed = raw.read_frame().await;
    assert_eq!(
        (echoed.opcode, &echoed.payload[..]),
        (OP_TEXT, &b"early"[..])
    );

    // And a volley client sees the greeting first too.
    let mut ws = client(server.addr, no_keepalive()).await;
    ws.send("after").await.expect("send");
    let id2 = loop {
        match events.next().await {
            Ev::Open(i) => break i,
            Ev::Msg(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_ne!(id, id2, "ids are unique");
    assert_eq!(
        next_data(&mut ws).await,
        Message::text(format!("welcome {id2}"))
    );
    assert_eq!(next_data(&mut ws).await, Message::text("after"));
}

#[tokio::test]
async fn send_prepared_shares_one_encoding_with_plain_and_compressing_clients() {
    let (tx, rx) = mpsc::unbounded_channel();
    let news = volley::PreparedMessage::text("news ".repeat(100));
    let (probe, mut events) = Probe::new(&tx, rx, move |conn, message| {
        if message == Message::text("news?") {
            conn.send_prepared(&news).expect("send_prepared");
        } else {
            let _ = conn.send(message);
        }
    });
    let deflate = no_keepalive().deflate(Some(DeflateConfig::default()));
    let server = start(deflate.clone(), probe.quiet()).await;
    let mut plain = client(server.addr, no_keepalive()).await;
    let mut compressing = client(server.addr, deflate).await;
    assert!(plain.deflate().is_none());
    assert!(compressing.deflate().is_some());
    for ws in [&mut plain, &mut compressing] {
        events.opened().await;
        for _ in 0..3 {
            ws.send("news?").await.expect("send");
            assert_eq!(next_data(ws).await, Message::text("news ".repeat(100)));
        }
        // Ordinary sends still work around it.
        ws.send("plain").await.expect("send");
        assert_eq!(next_data(ws).await, Message::text("plain"));
    }
}

#[tokio::test]
async fn a_protocol_error_in_bytes_sent_with_the_handshake_fails_the_connection() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    let mut raw = raw_tcp(server.addr).await;
    let mut request = upgrade_request(server.addr).into_bytes();
    request.extend(server_frame(OP_TEXT, b"unmasked, with the handshake"));
    raw.write(&request).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(raw.read_close().await.close_code(), Some(1002));
    raw.expect_eof_within(Duration::from_secs(2)).await;
    loop {
        match events.next().await {
            Ev::Close(_, result) => {
                assert!(
                    matches!(result, Err(Error::Protocol(ProtocolError::UnmaskedFrame))),
                    "{result:?}"
                );
                break;
            }
            Ev::Msg(..) => panic!("the bad frame reached on_message"),
            Ev::Open(_) | Ev::Note(..) => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Routing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_events_path_goes_to_the_handler_and_other_paths_to_the_task_handler() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;

    let mut task = client_at(server.addr, "/other", no_keepalive()).await;
    assert_eq!(next_data(&mut task).await, Message::text("task handler"));
    task.send("to the task").await.expect("send");
    assert_eq!(next_data(&mut task).await, Message::text("to the task"));
    // The events handler saw nothing of it.
    events.assert_quiet(Duration::from_millis(100)).await;

    // "/" with a query string is still the path "/".
    for path in ["/", "/?room=1"] {
        let mut ws = client_at(server.addr, path, no_keepalive()).await;
        let id = events.opened().await;
        ws.send("to the events").await.expect("send");
        // The first thing back is the echo, not the task handler's greeting.
        assert_eq!(next_data(&mut ws).await, Message::text("to the events"));
        assert!(matches!(events.next().await, Ev::Msg(i, _) if i == id));
        ws.close(None).await.expect("close");
        assert!(events.closed(id).await.is_ok());
    }
    // The task connection is unaffected.
    task.send("still here").await.expect("send");
    assert_eq!(next_data(&mut task).await, Message::text("still here"));
}

#[tokio::test]
async fn the_handshake_policy_applies_to_the_events_route() {
    let (probe, mut events) = Probe::echo();
    let policy = volley::Policy::default().origins(["https://good.example"]);
    let server = start_with_policy(0, no_keepalive(), probe, Duration::from_secs(5), policy);
    for (origin, allowed) in [
        ("https://evil.example", false),
        ("https://good.example", true),
    ] {
        let mut raw = raw_tcp(server.addr).await;
        let request = upgrade_request(server.addr)
            .replace("\r\n\r\n", &format!("\r\nOrigin: {origin}\r\n\r\n"));
        raw.write(request.as_bytes()).await;
        let head = raw.read_http_head().await;
        if allowed {
            assert!(head.starts_with("HTTP/1.1 101 "), "{origin}: {head}");
            let id = events.opened().await;
            raw.write(&client_frame(OP_TEXT, b"let in")).await;
            assert_eq!(raw.read_frame().await.payload, b"let in");
            assert!(matches!(events.next().await, Ev::Msg(i, _) if i == id));
        } else {
            assert!(head.starts_with("HTTP/1.1 403 "), "{origin}: {head}");
            raw.expect_eof_within(Duration::from_secs(2)).await;
            events.assert_quiet(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Close
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_client_close_is_echoed_reported_and_the_server_closes_tcp_first() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    raw.write(&client_frame(OP_CLOSE, &close_payload(1000, "done here")))
        .await;
    let echo = raw.read_frame().await;
    assert_eq!(echo.opcode, OP_CLOSE);
    assert_eq!(echo.close_code(), Some(1000));
    assert_eq!(echo.close_reason(), "done here");
    // We never close our side: the server must close TCP by itself, promptly.
    let rest = raw.expect_eof_within(Duration::from_secs(2)).await;
    assert!(rest.is_empty(), "bytes after the close frame: {rest:?}");
    match events.closed(id).await {
        Ok(Some(frame)) => assert_eq!(frame, CloseFrame::new(CloseCode::NORMAL, "done here")),
        other => panic!("expected Ok(Some(1000 \"done here\")), got {other:?}"),
    }
}

#[tokio::test]
async fn a_volley_client_close_completes_promptly_and_on_close_gets_its_frame() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    // A long close timeout: a prompt return proves the server closed TCP (the client waits for it).
    let mut ws = client(
        server.addr,
        no_keepalive().close_timeout(Duration::from_secs(5)),
    )
    .await;
    let id = events.opened().await;
    ws.send("before").await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("before"));
    let start = Instant::now();
    ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye now")))
        .await
        .expect("clean close");
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "close took {:?}",
        start.elapsed()
    );
    assert_eq!(ws.state(), State::Closed);
    match events.closed(id).await {
        Ok(Some(frame)) => assert_eq!(frame, CloseFrame::new(CloseCode::NORMAL, "bye now")),
        other => panic!("expected Ok(Some(1000 \"bye now\")), got {other:?}"),
    }
}

#[tokio::test]
async fn a_handler_close_sends_its_frame_behind_queued_messages() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, |conn, message| {
        if message == Message::text("close me") {
            conn.send("last words").expect("send before close");
            conn.close(Some(CloseFrame::new(CloseCode(4000), "bye")))
                .expect("close");
            assert_eq!(conn.state(), State::CloseSent);
            // Once closing, sending fails and a second close does nothing.
            assert!(conn.send("too late").is_err(), "send after close");
            conn.close(Some(CloseFrame::new(CloseCode(4001), "again")))
                .expect("second close is a no-op");
        } else {
            let _ = conn.send(message);
        }
    });
    let server = start(no_keepalive(), probe).await;
    let mut ws = client(server.addr, no_keepalive()).await;
    let id = events.opened().await;
    ws.send("close me").await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("last words"));
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame, CloseFrame::new(CloseCode(4000), "bye"));
        }
        other => panic!("expected close 4000 \"bye\", got {other:?}"),
    }
    // The client's reply completes the handshake; the server closes TCP.
    assert!(within(ws.recv()).await.is_none(), "nothing after the close");
    match events.closed(id).await {
        Ok(Some(frame)) => assert_eq!(frame.code, CloseCode(4000), "the client echoed 4000"),
        other => panic!("expected Ok(Some(4000)), got {other:?}"),
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_the_server_close_times_out() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, |conn, _| {
        conn.close(Some(CloseFrame::new(CloseCode(4000), "bye")))
            .expect("close");
    });
    let close_timeout = Duration::from_millis(300);
    let server = start(no_keepalive().close_timeout(close_timeout), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    raw.write(&client_frame(OP_TEXT, b"please close")).await;
    let close = raw.read_close().await;
    let start = Instant::now();
    assert_eq!(close.close_code(), Some(4000));
    // We never answer.
    raw.expect_eof_within(Duration::from_secs(3)).await;
    let result = events.closed(id).await;
    let took = start.elapsed();
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    assert!(
        took >= close_timeout - Duration::from_millis(50) && took < Duration::from_secs(2),
        "on_close after {took:?} for a close timeout of {close_timeout:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Protocol errors and EOF
// ---------------------------------------------------------------------------------------------

/// Sends `bytes` from a raw client to an echo server with `config`; expects a close frame with
/// `code`, then TCP EOF, then `on_close(Err(Protocol(e)))` with `e.close_code() == code`.
async fn violation(config: Config, bytes: &[u8], code: u16) -> ProtocolError {
    let (probe, mut events) = Probe::echo();
    let server = start(config, probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    raw.write(bytes).await;
    let close = raw.read_close().await;
    assert_eq!(close.close_code(), Some(code), "close frame {close:?}");
    raw.expect_eof_within(Duration::from_secs(2)).await;
    loop {
        match events.next().await {
            Ev::Close(got, Err(Error::Protocol(e))) if got == id => {
                assert_eq!(e.close_code(), CloseCode(code), "{e}");
                return e;
            }
            Ev::Close(got, other) => {
                panic!("on_close({got}, {other:?}): expected a protocol error")
            }
            Ev::Msg(..) => panic!("the bad input reached on_message"),
            Ev::Open(_) | Ev::Note(..) => {}
        }
    }
}

#[tokio::test]
async fn an_unmasked_frame_fails_with_1002() {
    let e = violation(no_keepalive(), &server_frame(OP_TEXT, b"unmasked"), 1002).await;
    assert!(matches!(e, ProtocolError::UnmaskedFrame), "{e:?}");
}

#[tokio::test]
async fn a_reserved_opcode_fails_with_1002() {
    let e = violation(no_keepalive(), &client_frame(0x3, b""), 1002).await;
    assert!(matches!(e, ProtocolError::ReservedOpcode(3)), "{e:?}");
}

#[tokio::test]
async fn invalid_utf8_text_fails_with_1007() {
    // Valid then invalid: the message must not be delivered in part.
    let e = violation(no_keepalive(), &client_frame(OP_TEXT, b"ok \xff\xfe"), 1007).await;
    assert!(matches!(e, ProtocolError::InvalidUtf8), "{e:?}");
}

#[tokio::test]
async fn a_message_over_max_message_size_fails_with_1009() {
    let config = no_keepalive().max_message_size(1024);
    violation(config.clone(), &client_frame(OP_BINARY, &[7; 1025]), 1009).await;
    // Also when no single fragment is too big.
    let key = Some([9, 9, 9, 9]);
    let mut bytes = frame(false, OP_BINARY, key, &[1; 600]);
    bytes.extend(frame(true, OP_CONT, key, &[2; 600]));
    violation(config, &bytes, 1009).await;
}

#[tokio::test]
async fn malformed_close_frames_fail_with_1002_or_1007() {
    // A one-byte close payload, a code that must not be sent, a reason that is not UTF-8.
    let e = violation(no_keepalive(), &client_frame(OP_CLOSE, &[3]), 1002).await;
    assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    violation(
        no_keepalive(),
        &client_frame(OP_CLOSE, &close_payload(1005, "")),
        1002,
    )
    .await;
    let mut bad_reason = close_payload(1000, "");
    bad_reason.extend_from_slice(b"\xff");
    violation(no_keepalive(), &client_frame(OP_CLOSE, &bad_reason), 1007).await;
}

#[tokio::test]
async fn a_frame_interrupted_by_a_pause_longer_than_the_buffer_release_is_intact() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    let data = payload(40_000, 3);
    let bytes = client_frame(OP_BINARY, &data);
    raw.write(&bytes[..10_000]).await;
    // Idle buffers are released after 1 s: a partial frame must survive it.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    raw.write(&bytes[10_000..]).await;
    let echo = raw.read_frame().await;
    assert_eq!((echo.opcode, echo.payload.len()), (OP_BINARY, data.len()));
    assert_eq!(echo.payload, data);
    assert!(matches!(events.next().await, Ev::Msg(i, m) if i == id && m.payload() == &data[..]));
}

#[tokio::test]
async fn tcp_eof_without_a_close_frame_is_an_abnormal_close() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    raw.write(&client_frame(OP_TEXT, b"hi")).await;
    assert_eq!(raw.read_frame().await.payload, b"hi");
    within(raw.stream.shutdown()).await.expect("shutdown");
    let result = events.closed(id).await;
    assert!(matches!(result, Err(Error::AbnormalClose)), "{result:?}");
    raw.expect_eof_within(Duration::from_secs(2)).await;

    // Same when the peer drops the connection in the middle of a frame.
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    let bytes = client_frame(OP_BINARY, &[5; 1000]);
    raw.write(&bytes[..500]).await;
    drop(raw);
    let result = events.closed(id).await;
    assert!(matches!(result, Err(Error::AbnormalClose)), "{result:?}");
}

#[tokio::test]
async fn a_reset_connection_reports_an_error() {
    let (probe, mut events) = Probe::echo();
    let server = start(no_keepalive(), probe.quiet()).await;
    let raw = raw_client(server.addr).await;
    let id = events.opened().await;
    // SO_LINGER 0: dropping the socket sends RST instead of FIN.
    raw.stream.set_zero_linger().expect("linger");
    drop(raw);
    let result = events.closed(id).await;
    assert!(
        matches!(result, Err(Error::Io(_) | Error::AbnormalClose)),
        "{result:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Keep-alive and idle timeout
// ---------------------------------------------------------------------------------------------

fn fast_keepalive() -> Config {
    Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_millis(150)))
}

#[tokio::test]
async fn answered_pings_keep_the_connection_and_unanswered_ones_close_it_with_1011() {
    let (probe, mut events) = Probe::echo();
    let server = start(fast_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    // Answer every ping for 700 ms (several ping timeouts): the connection stays.
    let start = Instant::now();
    let mut payloads = HashSet::new();
    while start.elapsed() < Duration::from_millis(700) {
        let f = raw.read_frame().await;
        assert_eq!(f.opcode, OP_PING, "only pings expected, got {f:?}");
        assert!(payloads.insert(f.payload.clone()), "ping payloads differ");
        raw.write(&client_frame(OP_PONG, &f.payload)).await;
    }
    assert!(
        payloads.len() >= 4,
        "{} pings in 700 ms at 100 ms",
        payloads.len()
    );
    raw.write(&client_frame(OP_TEXT, b"still alive")).await;
    let echoed = loop {
        let f = raw.read_frame().await;
        if f.opcode == OP_PING {
            raw.write(&client_frame(OP_PONG, &f.payload)).await;
        } else {
            break f;
        }
    };
    assert_eq!(
        (echoed.opcode, &echoed.payload[..]),
        (OP_TEXT, &b"still alive"[..])
    );

    // Now stop answering: 1011 after the ping timeout, TCP closed, KeepaliveTimeout reported.
    let stopped = Instant::now();
    let close = raw.read_close().await;
    assert_eq!(close.close_code(), Some(1011));
    assert_eq!(close.close_reason(), "keepalive ping timeout");
    raw.expect_eof_within(Duration::from_secs(2)).await;
    let took = stopped.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "closed {took:?} after the last pong"
    );
    assert!(
        took >= Duration::from_millis(100),
        "closed too early: {took:?}"
    );
    let result = events.closed(id).await;
    assert!(matches!(result, Err(Error::KeepaliveTimeout)), "{result:?}");
}

#[tokio::test]
async fn a_pong_with_a_stale_payload_does_not_count() {
    let (probe, mut events) = Probe::echo();
    let server = start(fast_keepalive(), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    let ping = raw.read_frame().await;
    assert_eq!(ping.opcode, OP_PING);
    // An unsolicited pong with another payload is not an answer.
    raw.write(&client_frame(OP_PONG, b"something else")).await;
    assert_eq!(raw.read_close().await.close_code(), Some(1011));
    let result = events.closed(id).await;
    assert!(matches!(result, Err(Error::KeepaliveTimeout)), "{result:?}");
}

#[tokio::test]
async fn idle_timeout_closes_with_1000_and_traffic_defers_it() {
    let (probe, mut events) = Probe::echo();
    let idle = Duration::from_millis(300);
    let server = start(no_keepalive().idle_timeout(Some(idle)), probe).await;
    let mut raw = raw_client(server.addr).await;
    let id = events.opened().await;
    // A message every 100 ms for 900 ms (three idle timeouts): no close.
    for i in 0..9u8 {
        raw.write(&client_frame(OP_BINARY, &[i])).await;
        let f = raw.read_frame().await;
        assert_eq!(
            (f.opcode, &f.payload[..]),
            (OP_BINARY, &[i][..]),
            "echo {i}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Then silence.
    let quiet = Instant::now();
    let close = raw.read_frame().await;
    assert_eq!(close.opcode, OP_CLOSE);
    assert_eq!(close.close_code(), Some(1000));
    assert_eq!(close.close_reason(), "idle timeout");
    let took = quiet.elapsed();
    assert!(
        took >= idle - Duration::from_millis(120) && took < idle + Duration::from_secs(1),
        "idle close {took:?} after the last message (idle timeout {idle:?})"
    );
    raw.write(&client_frame(OP_CLOSE, &close.payload)).await;
    raw.expect_eof_within(Duration::from_secs(2)).await;
    match events.closed(id).await {
        Ok(Some(frame)) => assert_eq!(frame, CloseFrame::new(CloseCode::NORMAL, "idle timeout")),
        other => panic!("expected Ok(Some(1000)), got {other:?}"),
    }
}

#[tokio::test]
async fn a_closing_connection_still_times_out_when_a_keepalive_ping_falls_due() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, |conn, message| {
        if message == Message::text("close me") {
            conn.close(Some(CloseFrame::new(CloseCode(4000), "bye")))
                .expect("close");
        } else {
            let _ = conn.send(message);
        }
    });
    // Pings every 100 ms (answered by both clients), a close timeout of 1 s: the next ping falls
    // due while the server waits for the silent peer's close reply.
    let close_timeout = Duration::from_secs(1);
    let config = Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_secs(5)))
        .close_timeout(close_timeout);
    let server = start(config, probe.quiet()).await;
    let mut silent = raw_client(server.addr).await;
    let silent_id = events.opened().await;
    let mut other = client(server.addr, no_keepalive()).await;
    let _ = events.opened().await;
    silent.write(&client_frame(OP_TEXT, b"close me")).await;
    let close = silent.read_close().await;
    assert_eq!(close.close_code(), Some(4000));
    let closing = Instant::now();
    // The other connection on the same driver keeps working meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.send("still served?").await.expect("send");
    let echoed = within_for(Duration::from_secs(2), next_data(&mut other)).await;
    assert_eq!(echoed, Message::text("still served?"));
    // The silent peer is dropped at the close timeout.
    let result = events.closed(silent_id).await;
    assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
    let took = closing.elapsed();
    assert!(took < close_timeout + Duration::from_secs(1), "{took:?}");
}

// ---------------------------------------------------------------------------------------------
// 6. Backpressure
// ---------------------------------------------------------------------------------------------

/// Reads frames off a read half (for a peer whose writing runs in another task).
struct FrameReader {
    rd: OwnedReadHalf,
    buf: Vec<u8>,
}

impl FrameReader {
    async fn frame(&mut self) -> RawFrame {
        loop {
            if let Some((h, len)) = FrameHeader::parse(&self.buf).expect("valid frame header") {
                let total = len + h.payload_len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[len..total].to_vec();
                    self.buf.drain(..total);
                    assert!(h.mask.is_none(), "server frames are not masked");
                    return RawFrame {
                        fin: h.fin,
                        opcode: h.opcode.bits(),
                        masked: false,
                        payload,
                    };
                }
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.rd.read(&mut chunk).await.expect("read");
            assert!(n > 0, "EOF while waiting for a frame");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The `i`-th message of a bulk sender: its index, then filler derived from it.
fn numbered(i: usize, len: usize) -> Vec<u8> {
    let mut p = (i as u64).to_be_bytes().to_vec();
    p.extend((8..len).map(|j| (i + j) as u8));
    p
}

/// Opens a raw client with small socket buffers (so that the kernel cannot absorb the whole
/// test) and does the handshake; returns its halves.
async fn small_buffer_client(addr: SocketAddr) -> (FrameReader, tokio::net::tcp::OwnedWriteHalf) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(64 * 1024).expect("rcvbuf");
    socket.set_send_buffer_size(64 * 1024).expect("sndbuf");
    let stream = within(socket.connect(addr)).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    let mut raw = Raw::new(stream);
    raw.write(upgrade_request(addr).as_bytes()).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    let Raw { stream, buf } = raw;
    let (rd, wr) = stream.into_split();
    (FrameReader { rd, buf }, wr)
}

/// Waits (bounded) until `count` stops changing for `still`; returns its value.
async fn wait_until_stalled(count: &AtomicUsize, still: Duration) -> usize {
    within_for(Duration::from_secs(30), async {
        let mut last = count.load(Ordering::SeqCst);
        let mut since = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = count.load(Ordering::SeqCst);
            if now != last {
                (last, since) = (now, Instant::now());
            } else if since.elapsed() >= still {
                return now;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_peer_that_does_not_read_is_not_read_either_and_loses_nothing() {
    const COUNT: usize = 2048;
    const SIZE: usize = 16 * 1024;
    let write_limit = 64 * 1024;
    let received = Arc::new(AtomicUsize::new(0));
    let max_buffered = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = {
        let (received, max_buffered) = (received.clone(), max_buffered.clone());
        Probe::new(&tx, rx, move |conn, message| {
            conn.send(message).expect("echo");
            received.fetch_add(1, Ordering::SeqCst);
            max_buffered.fetch_max(conn.buffered_amount(), Ordering::SeqCst);
        })
    };
    let server = start(no_keepalive().write_limit(write_limit), probe.quiet()).await;
    let (mut reader, mut writer) = small_buffer_client(server.addr).await;
    let id = events.opened().await;
    // 32 MiB, far more than the socket buffers on both sides hold.
    let sending = tokio::spawn(async move {
        for i in 0..COUNT {
            let bytes = client_frame(OP_BINARY, &numbered(i, SIZE));
            writer.write_all(&bytes).await.expect("write");
        }
        writer
    });
    let stalled_at = wait_until_stalled(&received, Duration::from_millis(300)).await;
    assert!(
        stalled_at < COUNT / 2,
        "the server kept reading from a peer that does not read: {stalled_at} of {COUNT} \
         messages received"
    );
    assert!(
        !sending.is_finished(),
        "the sender finished while nobody read"
    );
    // Now read everything: every echo, intact, in order.
    within_for(Duration::from_secs(60), async {
        for i in 0..COUNT {
            let f = reader.frame().await;
            assert_eq!((f.fin, f.opcode), (true, OP_BINARY), "frame {i}");
            assert_eq!(f.payload.len(), SIZE, "length of echo {i}");
            assert_eq!(f.payload, numbered(i, SIZE), "echo {i}");
        }
    })
    .await;
    let mut writer = within(sending).await.expect("sender");
    assert_eq!(received.load(Ordering::SeqCst), COUNT);
    let max = max_buffered.load(Ordering::SeqCst);
    eprintln!("reading stopped after {stalled_at} of {COUNT} messages; at most {max} bytes queued");
    // One read's worth of messages may be echoed past the limit before reading stops (reads
    // are at most 64 KiB), plus the frame being written.
    let bound = write_limit + 64 * 1024 + SIZE + 64;
    assert!(
        max > write_limit,
        "the queue never reached the write limit ({max}): backpressure untested"
    );
    assert!(
        max <= bound,
        "buffered {max} bytes with a write limit of {write_limit}"
    );
    writer
        .write_all(&client_frame(OP_CLOSE, &close_payload(1000, "")))
        .await
        .expect("close");
    assert_eq!(reader.frame().await.opcode, OP_CLOSE);
    assert!(matches!(events.closed(id).await, Ok(Some(_))));
}

#[tokio::test]
async fn a_flooding_connection_does_not_starve_another_on_the_same_driver() {
    let (probe, mut events) = Probe::echo();
    // current_thread server runtime: one driver for both connections.
    let server = start(no_keepalive(), probe.quiet()).await;
    let (mut reader, mut writer) = small_buffer_client(server.addr).await;
    events.opened().await;
    let flood_for = Duration::from_millis(1500);
    let flooding = tokio::spawn(async move {
        let bytes = client_frame(OP_BINARY, &[0x5a; 16 * 1024]).repeat(4);
        let start = Instant::now();
        let mut sent = 0usize;
        while start.elapsed() < flood_for {
            writer.write_all(&bytes).await.expect("flood");
            sent += 4;
        }
        (writer, sent)
    });
    // Read (and drop) the flood's echoes so that it is never slowed down by backpressure.
    let draining = tokio::spawn(async move {
        let mut echoed = 0usize;
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            match within(reader.rd.read(&mut chunk)).await {
                Ok(0) | Err(_) => return echoed,
                Ok(n) => echoed += n,
            }
        }
    });
    let mut ws = client(server.addr, no_keepalive()).await;
    events.opened().await;
    let mut worst = Duration::ZERO;
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < flood_for - Duration::from_millis(300) {
        let sent = Instant::now();
        ws.send(format!("ping {rounds}")).await.expect("send");
        assert_eq!(
            next_data(&mut ws).await,
            Message::text(format!("ping {rounds}"))
        );
        worst = worst.max(sent.elapsed());
        rounds += 1;
    }
    let (mut writer, sent) = within(flooding).await.expect("flood task");
    eprintln!("flood: {sent} messages; other connection: {rounds} echoes, slowest {worst:?}");
    assert!(sent > 100, "the flood sent only {sent} messages");
    assert!(rounds >= 5, "{rounds} round trips during the flood");
    assert!(
        worst < Duration::from_millis(500),
        "an echo took {worst:?} while another connection flooded the driver"
    );
    writer.shutdown().await.expect("shutdown");
    let echoed = within(draining).await.expect("drain task");
    assert!(echoed > 0);
}

// ---------------------------------------------------------------------------------------------
// 7. Graceful shutdown
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_closes_with_1001_behind_the_echoes_already_queued() {
    const SIZE: usize = 10_000;
    let echoed = Arc::new(AtomicUsize::new(0));
    let last_buffered = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = {
        let (echoed, last_buffered) = (echoed.clone(), last_buffered.clone());
        Probe::new(&tx, rx, move |conn, message| {
            // After the shutdown's close frame, sending fails: those are not echoed.
            if conn.send(message).is_ok() {
                echoed.fetch_add(1, Ordering::SeqCst);
            }
            last_buffered.store(conn.buffered_amount(), Ordering::SeqCst);
        })
    };
    let drain = Duration::from_secs(5);
    let config = no_keepalive().write_limit(32 * 1024);
    let mut server = start_with(config, probe.quiet(), drain).await;
    let (mut reader, mut writer) = small_buffer_client(server.addr).await;
    let id = events.opened().await;
    let sending = tokio::spawn(async move {
        for i in 0..1000 {
            let bytes = client_frame(OP_BINARY, &numbered(i, SIZE));
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        writer
    });
    // The server stops reading once its queue is full: echoes are waiting in it.
    let before = wait_until_stalled(&echoed, Duration::from_millis(300)).await;
    assert!(
        before > 0 && before < 1000,
        "{before} echoed before the shutdown"
    );
    assert!(
        last_buffered.load(Ordering::SeqCst) > 0,
        "nothing queued at shutdown"
    );
    let stopping = tokio::spawn(async move {
        let took = server.shut_down(drain + Duration::from_secs(2)).await;
        (server, took)
    });
    let mut i = 0;
    let close = within_for(Duration::from_secs(30), async {
        loop {
            let f = reader.frame().await;
            if f.opcode == OP_CLOSE {
                return f;
            }
            assert_eq!(f.payload, numbered(i, SIZE), "echo {i}");
            i += 1;
        }
    })
    .await;
    assert_eq!(close.close_code(), Some(1001));
    assert_eq!(close.close_reason(), "server shutting down");
    assert!(
        i >= before,
        "only {i} echoes arrived before the close; {before} were queued"
    );
    assert_eq!(
        i,
        echoed.load(Ordering::SeqCst),
        "every echo went out before the close"
    );
    // Answer the close: the connection ends cleanly and the server returns well before the
    // drain deadline.
    let mut writer = within(sending).await.expect("sender");
    writer
        .write_all(&client_frame(OP_CLOSE, &close.payload))
        .await
        .expect("answer close");
    let (_server, took) = within_for(drain + Duration::from_secs(3), stopping)
        .await
        .expect("shutdown task");
    assert!(
        took < drain,
        "shutdown took {took:?} although every client answered"
    );
    match events.closed(id).await {
        Ok(Some(frame)) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
        other => panic!("expected Ok(Some(1001)), got {other:?}"),
    }
    events.wait_handler_dropped().await;
}

#[tokio::test]
async fn shutdown_drops_a_peer_that_never_answers_at_the_drain_deadline() {
    drain_deadline_drops_a_silent_peer(0).await;
}

#[tokio::test]
async fn shutdown_drops_a_silent_peer_at_the_drain_deadline_on_two_workers() {
    drain_deadline_drops_a_silent_peer(2).await;
}

/// A silent raw peer and a polite client; shutdown on a server runtime with `workers` (0: a
/// current-thread one).
async fn drain_deadline_drops_a_silent_peer(workers: usize) {
    let (probe, mut events) = Probe::echo();
    let drain = Duration::from_millis(400);
    // The close timeout is longer than the drain: the drain deadline is what ends it.
    let config = no_keepalive().close_timeout(Duration::from_secs(10));
    let mut server = start_on(workers, config, probe, drain);
    let mut silent = raw_client(server.addr).await;
    let silent_id = events.opened().await;
    let mut polite = client(server.addr, no_keepalive()).await;
    let polite_id = events.opened().await;
    // The polite client keeps reading (its recv answers the close).
    let polite = tokio::spawn(async move {
        let close = next_data(&mut polite).await;
        let end = within(polite.recv()).await;
        (close, end.is_none())
    });
    let took = server.shut_down(drain + Duration::from_secs(3)).await;
    assert!(
        took >= drain - Duration::from_millis(50) && took < drain + Duration::from_secs(2),
        "serve_with_shutdown returned after {took:?} with a drain timeout of {drain:?}"
    );
    // The polite client got 1001 and completed the handshake.
    let (close, ended) = within(polite).await.expect("polite client");
    assert_eq!(
        close,
        Message::Close(Some(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "server shutting down"
        )))
    );
    assert!(ended, "the connection ended after the close");
    // The silent one got 1001 too, then its TCP connection was dropped.
    let close = silent.read_close().await;
    assert_eq!(close.close_code(), Some(1001));
    silent.expect_eof_within(Duration::from_secs(2)).await;
    let mut results = std::collections::HashMap::new();
    while results.len() < 2 {
        if let Ev::Close(id, result) = events.next().await {
            assert!(results.insert(id, result).is_none(), "on_close({id}) twice");
        }
    }
    assert!(
        matches!(results[&polite_id], Ok(Some(_))),
        "{:?}",
        results[&polite_id]
    );
    assert!(results[&silent_id].is_err(), "{:?}", results[&silent_id]);
    // The drivers ended and let go of the handler.
    events.wait_handler_dropped().await;
}

#[tokio::test]
async fn shutdown_with_keepalive_returns_by_the_drain_deadline() {
    let (probe, mut events) = Probe::echo();
    let drain = Duration::from_millis(400);
    let config = Config::default()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_timeout(Some(Duration::from_secs(5)))
        .close_timeout(Duration::from_secs(10));
    let mut server = start_with(config, probe, drain).await;
    let mut silent = raw_client(server.addr).await;
    let id = events.opened().await;
    let took = server.shut_down(drain + Duration::from_secs(3)).await;
    assert!(took < drain + Duration::from_secs(2), "{took:?}");
    assert_eq!(silent.read_close().await.close_code(), Some(1001));
    assert!(events.closed(id).await.is_err());
}

#[tokio::test]
async fn shutdown_with_no_connections_ends_the_drivers_at_once() {
    let (probe, events) = Probe::echo();
    let mut server = start_with(no_keepalive(), probe, Duration::from_secs(5)).await;
    let took = server.shut_down(Duration::from_secs(2)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    events.wait_handler_dropped().await;
    let refused =
        tokio::time::timeout(WAIT, volley::connect(&format!("ws://{}/", server.addr))).await;
    assert!(matches!(refused, Ok(Err(_))), "connected after shutdown");
}

// ---------------------------------------------------------------------------------------------
// 8. Panicking handlers
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_panic_in_on_message_fails_only_its_connection() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, |conn, message| {
        assert_ne!(
            message,
            Message::text("panic"),
            "on_message panics on purpose"
        );
        let _ = conn.send(message);
    });
    // current_thread runtime: one worker, one driver, so both connections share it.
    let server = start(no_keepalive(), probe).await;
    let mut doomed = client(server.addr, no_keepalive()).await;
    let doomed_id = events.opened().await;
    let mut other = client(server.addr, no_keepalive()).await;
    let other_id = events.opened().await;
    other.send("before").await.expect("send");
    assert_eq!(next_data(&mut other).await, Message::text("before"));
    doomed.send("panic").await.expect("send");
    match next_data(&mut doomed).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::INTERNAL_ERROR),
        other => panic!("expected 1011, got {other:?}"),
    }
    assert!(within(doomed.recv()).await.is_none());
    let result = loop {
        match events.next().await {
            Ev::Close(id, result) => {
                assert_eq!(id, doomed_id, "only the panicking connection ends");
                break result;
            }
            Ev::Msg(..) | Ev::Open(_) | Ev::Note(..) => {}
        }
    };
    // The close handshake completed (the client answered the 1011).
    assert!(
        matches!(&result, Ok(Some(f)) if f.code == CloseCode::INTERNAL_ERROR),
        "{result:?}"
    );
    for i in 0..10 {
        other.send(format!("after {i}")).await.expect("send");
        assert_eq!(
            next_data(&mut other).await,
            Message::text(format!("after {i}"))
        );
    }
    other.close(None).await.expect("close");
    assert!(events.closed(other_id).await.is_ok());
}

#[tokio::test]
async fn panics_in_on_open_and_on_close_do_not_stop_the_driver() {
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, echo);
    let opens = AtomicUsize::new(0);
    let mut probe = probe.on_open(move |_| {
        let n = opens.fetch_add(1, Ordering::SeqCst);
        assert!(
            n % 2 == 1 || n >= 4,
            "on_open panics on purpose for connections 0 and 2"
        );
    });
    probe.panic_on_close = true;
    let server = start(no_keepalive(), probe).await;
    let mut served = 0;
    for n in 0..4 {
        let mut ws = client(server.addr, no_keepalive()).await;
        let id = events.opened().await;
        if n % 2 == 0 {
            match next_data(&mut ws).await {
                Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode::INTERNAL_ERROR),
                other => panic!("expected 1011 after a panicking on_open, got {other:?}"),
            }
            assert!(within(ws.recv()).await.is_none());
        } else {
            ws.send("hello").await.expect("send");
            assert_eq!(next_data(&mut ws).await, Message::text("hello"));
            ws.close(None).await.expect("close");
            served += 1;
        }
        // on_close is called (and panics) once per connection.
        let _ = events.closed(id).await;
    }
    assert_eq!(served, 2);
    // Still serving after four panicking on_close calls.
    let mut ws = client(server.addr, no_keepalive()).await;
    let _ = events.opened().await;
    ws.send("again").await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("again"));
}

// ---------------------------------------------------------------------------------------------
// 9. Multi-thread runtime
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_echo_on_a_two_worker_runtime() {
    let (probe, mut events) = Probe::echo();
    // The server on a runtime of two workers: two drivers.
    let server = start_on(2, no_keepalive(), probe.quiet(), Duration::from_secs(5));
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..50usize {
        let addr = server.addr;
        clients.spawn(async move {
            let mut ws = client(addr, no_keepalive()).await;
            // Pipelined: 50 sent before any is read, then the rest one by one.
            let message = |i: usize| {
                let data = payload((c * 131 + i * 37) % 3000, c + i);
                if i.is_multiple_of(2) {
                    Message::text(String::from_utf8(data).expect("ascii"))
                } else {
                    Message::binary(data)
                }
            };
            for i in 0..50 {
                ws.send(message(i)).await.expect("send");
            }
            for i in 0..100 {
                if i + 50 < 100 {
                    ws.send(message(i + 50)).await.expect("send");
                }
                assert_eq!(
                    next_data(&mut ws).await,
                    message(i),
                    "client {c} message {i}"
                );
            }
            ws.close(None).await.expect("close");
        });
    }
    within_for(Duration::from_secs(60), async {
        while let Some(joined) = clients.join_next().await {
            joined.expect("client task");
        }
    })
    .await;
    let (mut opened, mut closed) = (HashSet::new(), HashSet::new());
    while closed.len() < 50 {
        match events.next().await {
            Ev::Open(id) => assert!(opened.insert(id), "on_open({id}) twice"),
            Ev::Close(id, result) => {
                assert!(result.is_ok(), "on_close({id}, {result:?})");
                assert!(closed.insert(id), "on_close({id}) twice");
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(opened, closed);
}

// ---------------------------------------------------------------------------------------------
// 10. permessage-deflate
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn compressed_messages_round_trip_on_an_events_route() {
    let (tx, rx) = mpsc::unbounded_channel();
    let notes = tx.clone();
    let (probe, mut events) = Probe::new(&tx, rx, echo);
    let probe = probe.on_open(move |conn| {
        let note = format!("deflate {:?}", conn.deflate().is_some());
        let _ = notes.send(Ev::Note(conn.id(), note));
    });
    let config = no_keepalive().deflate(Some(DeflateConfig::default()));
    let server = start(config.clone(), probe.quiet()).await;
    let mut ws = client(server.addr, config).await;
    assert!(
        ws.deflate().is_some(),
        "the client negotiated permessage-deflate"
    );
    let id = events.opened().await;
    assert!(
        matches!(events.next().await, Ev::Note(i, n) if i == id && n == "deflate true"),
        "the handler sees the negotiated parameters"
    );
    let big = "volley events compress well. ".repeat(10_000);
    for i in 0..20 {
        let message = match i % 3 {
            0 => Message::text(big.clone()),
            1 => Message::binary(payload(i * 1000, i)),
            _ => Message::text(format!("short {i}")),
        };
        ws.send(message.clone()).await.expect("send");
        assert_eq!(next_data(&mut ws).await, message, "message {i}");
    }
    ws.close(None).await.expect("close");
    assert!(events.closed(id).await.is_ok());
}

#[tokio::test]
async fn the_server_compresses_its_echo_on_the_wire() {
    let (probe, mut events) = Probe::echo();
    let config = no_keepalive().deflate(Some(DeflateConfig::default()));
    let server = start(config, probe.quiet()).await;
    let mut raw = raw_tcp(server.addr).await;
    let request = upgrade_request(server.addr).replace(
        "\r\n\r\n",
        "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
    );
    raw.write(request.as_bytes()).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("permessage-deflate"),
        "{head}"
    );
    let id = events.opened().await;
    let text = "aaaa bbbb cccc dddd ".repeat(500);
    let mut c = flate2::Compress::new(flate2::Compression::default(), false);
    let mut deflated = sync_compress(&mut c, text.as_bytes());
    assert!(deflated.ends_with(&[0, 0, 0xff, 0xff]));
    deflated.truncate(deflated.len() - 4);
    let mut bytes = client_frame(OP_TEXT, &deflated);
    bytes[0] |= 0x40; // RSV1: compressed.
    raw.write(&bytes).await;
    // Read the echo's header by hand: RSV1 set, and much smaller than the text.
    let frame = within(async {
        loop {
            if let Some((h, len)) = FrameHeader::parse(&raw.buf).expect("header")
                && raw.buf.len() >= len + h.payload_len as usize
            {
                return h;
            }
            let mut chunk = [0u8; 8192];
            let n = raw.stream.read(&mut chunk).await.expect("read");
            assert!(n > 0, "EOF");
            raw.buf.extend_from_slice(&chunk[..n]);
        }
    })
    .await;
    assert_eq!(frame.rsv, 0b100, "the echo is compressed");
    assert!(frame.payload_len < text.len() as u64 / 4, "{frame:?}");
    raw.write(&client_frame(OP_CLOSE, &close_payload(1000, "")))
        .await;
    assert!(matches!(events.closed(id).await, Ok(Some(_))));
}

// ---------------------------------------------------------------------------------------------
// 11. Many connections
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_thousand_idle_connections_each_get_exactly_one_on_close() {
    const N: usize = 1000;
    let (probe, mut events) = Probe::echo();
    let server = start(Config::default(), probe).await;
    let mut clients = Vec::with_capacity(N);
    within_for(Duration::from_secs(60), async {
        for _ in 0..N {
            clients.push(client(server.addr, no_keepalive()).await);
        }
    })
    .await;
    let mut opened = HashSet::new();
    while opened.len() < N {
        match events.next().await {
            Ev::Open(id) => assert!(opened.insert(id), "on_open({id}) twice"),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Let them sit idle long enough for their buffers to be released (1 s), then one more echo
    // on a sample proves they still work.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for ws in clients.iter_mut().step_by(100) {
        ws.send("still there").await.expect("send");
        assert_eq!(next_data(ws).await, Message::text("still there"));
    }
    // Close them all, concurrently.
    let mut closing = tokio::task::JoinSet::new();
    for mut ws in clients {
        closing.spawn(async move { ws.close(None).await });
    }
    within_for(Duration::from_secs(60), async {
        while let Some(joined) = closing.join_next().await {
            joined.expect("close task").expect("clean close");
        }
    })
    .await;
    let mut closed = HashSet::new();
    while closed.len() < N {
        match events.next().await {
            Ev::Close(id, result) => {
                assert!(matches!(result, Ok(None)), "on_close({id}, {result:?})");
                assert!(opened.contains(&id), "on_close({id}) for an unknown id");
                assert!(closed.insert(id), "on_close({id}) twice");
            }
            Ev::Msg(..) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    events.assert_quiet(Duration::from_millis(300)).await;
    // The driver still serves new connections.
    let mut ws = client(server.addr, no_keepalive()).await;
    ws.send("after").await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("after"));
}

// ---------------------------------------------------------------------------------------------
// TLS (feature `tls`): the driver's writes, flushes and shutdown through rustls
// ---------------------------------------------------------------------------------------------

#[cfg(feature = "tls")]
mod tls {
    use super::*;
    use volley::tls::{Roots, client_config, server_config};

    #[tokio::test]
    async fn wss_echo_and_close_on_an_events_route() {
        let pki = common::Pki::new("events");
        let tls = server_config(pki.path("cert.pem"), pki.path("key.pem")).expect("server config");
        let (probe, mut events) = Probe::echo();
        let server = Server::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .config(no_keepalive())
            .tls(tls)
            .route("/", volley::Endpoint::callbacks(probe.quiet()));
        let port = server.local_addr().expect("addr").port();
        tokio::spawn(server.run());
        let roots = client_config(&Roots::Custom(vec![pki.path("ca.pem")])).expect("roots");
        let (mut ws, _) = within(
            volley::ClientBuilder::new(format!("wss://localhost:{port}/"))
                .config(no_keepalive())
                .tls_config(roots)
                .connect(),
        )
        .await
        .expect("wss connect");
        let id = events.opened().await;
        // Pipelined, from 0 B to 1 MiB: many TLS records per write.
        let messages: Vec<Message> = [0, 125, 126, 65_536, 1 << 20, 3, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &len)| Message::binary(payload(len, i)))
            .collect();
        for m in &messages {
            ws.send(m.clone()).await.expect("send");
        }
        for m in &messages {
            assert_eq!(&next_data(&mut ws).await, m);
        }
        let start = Instant::now();
        ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "tls bye")))
            .await
            .expect("clean close");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        match events.closed(id).await {
            Ok(Some(frame)) => assert_eq!(frame, CloseFrame::new(CloseCode::NORMAL, "tls bye")),
            other => panic!("expected Ok(Some(1000)), got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 13. The handshake request, per-connection extensions, handles
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
struct User(String);

#[derive(Clone, Debug)]
struct Count(u32);

#[tokio::test]
async fn on_open_sees_the_request_and_its_extensions_stay_with_the_connection() {
    let (tx, rx) = mpsc::unbounded_channel();
    let note_tx = tx.clone();
    let (probe, mut events) = Probe::new(&tx, rx, |conn, _message| {
        let user = conn.extensions().get::<User>().cloned();
        let count = conn.extensions_mut().get_mut::<Count>().map(|c| {
            c.0 += 1;
            c.0
        });
        let reply = format!("{user:?} #{count:?} request={}", conn.request().is_some());
        conn.send(reply).expect("send");
    });
    let probe = probe
        .quiet()
        .on_open(move |conn| {
            let request = conn.request().expect("on_open sees the request");
            let note = format!(
                "{} {:?} trace={:?} in-request={}",
                request.uri().path(),
                request.uri().query(),
                request.headers().get("x-trace"),
                request.extensions().get::<User>().is_some(),
            );
            let _ = note_tx.send(Ev::Note(conn.id(), note));
            let ext = format!(
                "{:?} {:?}",
                conn.extensions().get::<User>(),
                conn.extensions().get::<volley::Subprotocol>()
            );
            let _ = note_tx.send(Ev::Note(conn.id(), ext));
            conn.extensions_mut().insert(Count(0));
        })
        .on_close(|conn| {
            let user = conn.extensions().get::<User>().map(|u| u.0.clone());
            let count = conn.extensions().get::<Count>().map(|c| c.0);
            format!("closed {user:?} after {count:?}")
        });
    let policy = volley::Policy::default()
        .protocols(["chat.v1"])
        .auth(|mut request| async move {
            let user = request.headers().get("x-user").cloned();
            match user.and_then(|u| u.to_str().ok().map(str::to_owned)) {
                Some(u) => {
                    request.extensions_mut().insert(User(u));
                    Ok(request)
                }
                None => Err(volley::Reject::new(
                    http::StatusCode::UNAUTHORIZED,
                    "who are you?",
                )),
            }
        });
    // Shared with the application: `impl Callbacks for Arc<H>` forwards every callback.
    let server = start_with_policy(
        0,
        no_keepalive(),
        Arc::new(probe),
        Duration::from_secs(5),
        policy,
    );
    let (mut ws, response) = within(
        volley::ClientBuilder::new(format!("ws://{}/?room=7", server.addr))
            .protocol("chat.v1")
            .header(
                http::HeaderName::from_static("x-user"),
                http::HeaderValue::from_static("alice"),
            )
            .header(
                http::HeaderName::from_static("x-trace"),
                http::HeaderValue::from_static("t1"),
            )
            .connect(),
    )
    .await
    .expect("connect");
    assert_eq!(response.protocol.as_deref(), Some("chat.v1"));
    let id = events.opened().await;
    let mut notes = Vec::new();
    for _ in 0..2 {
        match events.next().await {
            Ev::Note(got, note) if got == id => notes.push(note),
            other => panic!("expected a note, got {other:?}"),
        }
    }
    assert_eq!(
        notes,
        [
            r#"/ Some("room=7") trace=Some("t1") in-request=false"#.to_owned(),
            r#"Some(User("alice")) Some(Subprotocol("chat.v1"))"#.to_owned(),
        ]
    );
    for n in 1..=2 {
        ws.send("hi").await.expect("send");
        assert_eq!(
            next_data(&mut ws).await,
            Message::text(format!(r#"Some(User("alice")) #Some({n}) request=false"#))
        );
    }
    ws.close(None).await.expect("close");
    match events.next().await {
        Ev::Note(got, note) if got == id => {
            assert_eq!(note, r#"closed Some("alice") after Some(2)"#)
        }
        other => panic!("expected the close note, got {other:?}"),
    }
    assert!(events.closed(id).await.is_ok());

    // Without the header the auth hook refuses: the events route never sees the connection.
    let refused = volley::ClientBuilder::new(format!("ws://{}/", server.addr))
        .connect()
        .await;
    assert!(
        matches!(
            refused,
            Err(Error::Handshake(volley::HandshakeError::UnexpectedStatus(
                401
            )))
        ),
        "{refused:?}"
    );
    events.assert_quiet(Duration::from_millis(100)).await;
}

#[tokio::test]
async fn a_handle_sends_from_other_tasks_and_threads_closes_and_fails_once_the_connection_is_gone()
{
    let (handles_tx, mut handles) = mpsc::unbounded_channel::<volley::callback::ConnHandle>();
    let (probe, mut events) = Probe::echo();
    let probe = probe.on_open(move |conn| {
        let _ = handles_tx.send(conn.handle());
    });
    let server = start(no_keepalive(), probe).await;
    let mut ws = client_at(server.addr, "/", no_keepalive()).await;
    let id = events.opened().await;
    let handle = within(handles.recv()).await.expect("a handle");
    assert_eq!(handle.id(), id);
    assert!(handle.is_open());

    // From this task, then from a plain thread: queued and written by the driver.
    handle.send("pushed").expect("send from a task");
    assert_eq!(next_data(&mut ws).await, Message::text("pushed"));
    let from_thread = handle.clone();
    std::thread::spawn(move || from_thread.send(Message::binary(vec![7u8; 70_000])))
        .join()
        .expect("thread")
        .expect("send from a thread");
    assert_eq!(next_data(&mut ws).await, Message::binary(vec![7u8; 70_000]));
    let prepared = volley::PreparedMessage::text("prepared");
    handle.send_prepared(&prepared).expect("send_prepared");
    assert_eq!(next_data(&mut ws).await, Message::text("prepared"));
    // The connection's own messages and the handle's interleave in order of queueing.
    ws.send("echo me").await.expect("send");
    assert_eq!(next_data(&mut ws).await, Message::text("echo me"));

    // The handle starts the close handshake; the client answers it.
    handle.close(Some(CloseFrame::new(
        CloseCode::NORMAL,
        "bye from a handle",
    )));
    assert!(!handle.is_open(), "closing");
    match next_data(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                frame,
                CloseFrame::new(CloseCode::NORMAL, "bye from a handle")
            )
        }
        other => panic!("expected the handle's close frame, got {other:?}"),
    }
    assert!(
        matches!(
            handle.send("closing"),
            Err(Error::Send(volley::SendError::Closed))
        ),
        "a closing connection refuses messages"
    );
    assert!(events.closed(id).await.is_ok());
    // Gone: every call fails or reports it, none panics or blocks.
    assert!(matches!(
        handle.send("late"),
        Err(Error::Send(volley::SendError::Closed))
    ));
    handle.close(None);
    assert!(!handle.is_open());
    assert_eq!(handle.buffered_amount(), 0);
}

#[tokio::test]
async fn callbacks_broadcast_through_handles_on_one_and_on_two_workers() {
    for workers in [0, 2] {
        broadcast_room(workers).await;
    }
}

/// Three members in a room; every message a member sends goes, through the members' handles
/// (its own included), to all of them. On two workers the members' drivers differ and send to
/// each other at the same time, which must not make them wait for each other.
async fn broadcast_room(workers: usize) {
    let room: Arc<std::sync::Mutex<Vec<volley::callback::ConnHandle>>> = Arc::default();
    let (tx, rx) = mpsc::unbounded_channel();
    let (probe, mut events) = Probe::new(&tx, rx, {
        let room = room.clone();
        move |_conn, message| {
            let members = room.lock().expect("room").clone();
            for member in &members {
                member.send(message.clone()).expect("send to a member");
            }
        }
    });
    let joined = room.clone();
    let probe = probe
        .quiet()
        .on_open(move |conn| joined.lock().expect("room").push(conn.handle()));
    let server = start_on(workers, no_keepalive(), probe, Duration::from_secs(5));
    let mut members = Vec::new();
    for _ in 0..3 {
        members.push(client_at(server.addr, "/", no_keepalive()).await);
        events.opened().await;
    }
    // Everyone talks at once, 50 messages each.
    const EACH: usize = 50;
    for (i, ws) in members.iter_mut().enumerate() {
        for n in 0..EACH {
            ws.feed(Message::text(format!("{i}:{n}")))
                .await
                .expect("feed");
        }
        ws.flush().await.expect("flush");
    }
    for ws in &mut members {
        let mut seen = vec![0; 3];
        for _ in 0..3 * EACH {
            let Message::Text(text) = next_data(ws).await else {
                panic!("expected text");
            };
            let (from, n) = text.split_once(':').expect("i:n");
            let from: usize = from.parse().expect("sender");
            // Each sender's messages arrive in order.
            assert_eq!(
                n.parse::<usize>().expect("n"),
                seen[from],
                "workers {workers}"
            );
            seen[from] += 1;
        }
        assert_eq!(seen, [EACH; 3]);
    }
}
