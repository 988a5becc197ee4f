//! Steady-state echo allocates nothing: a counting global allocator counts the allocations made
//! on the server's thread while it receives and echoes thousands of messages (text and binary,
//! 20 B to 16 KiB, one message in flight and pipelined), after a warm-up.
//!
//! The client is a plain blocking socket on another thread that writes pre-built masked frames;
//! `allocation_counter` counts only the server thread's allocations. The same holds for an echo
//! served by callbacks on a driver task (`volley::callback`).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use tokio::sync::Notify;
use volley::WebSocket;
use volley::callback::{Callbacks, Conn};

const WARMUP: usize = 2_000;
const MEASURED: usize = 10_000;

/// Echoes `count` data messages; returns how many it echoed.
async fn echo<S>(ws: &mut WebSocket<S>, count: usize, copy: bool) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut seen = 0;
    while seen < count {
        match ws.recv().await {
            Some(Ok(message)) if message.is_data() => {
                let message = if copy {
                    // What an application that copies payloads would do: must be counted.
                    volley::Message::binary(message.payload().to_vec())
                } else {
                    message
                };
                if ws.send(message).await.is_err() {
                    break;
                }
                seen += 1;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    seen
}

/// Runs an echo server on its own thread; returns its port and a receiver of the number of
/// allocations its thread made while echoing messages WARMUP..WARMUP+MEASURED.
fn echo_server(copy: bool) -> (u16, mpsc::Receiver<u64>) {
    server_thread(move |rt, listener, tx| {
        let mut ws = rt.block_on(async move {
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut ws = volley::accept(stream).await.expect("handshake");
            assert_eq!(echo(&mut ws, WARMUP, copy).await, WARMUP, "warm-up echoes");
            ws
        });
        // Counts the allocations of this thread only: the runtime and the server run here.
        let info = allocation_counter::measure(|| {
            assert_eq!(
                rt.block_on(echo(&mut ws, MEASURED, copy)),
                MEASURED,
                "measured echoes"
            );
        });
        let _ = tx.send(info.count_total);
        // The client closes; finish the connection outside the measurement.
        rt.block_on(async { while ws.recv().await.is_some() {} });
    })
}

/// Binds a loopback listener and runs `serve` on a thread of its own with a current-thread
/// runtime, so that the thread's allocation count is the server's alone. Returns the port and
/// the receiver of the count `serve` sends.
fn server_thread<F>(serve: F) -> (u16, mpsc::Receiver<u64>)
where
    F: FnOnce(&tokio::runtime::Runtime, tokio::net::TcpListener, mpsc::Sender<u64>)
        + Send
        + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener).expect("listener")
        };
        serve(&rt, listener, tx);
    });
    (port, rx)
}

fn handshake(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame and the unmasked frame the server echoes for it.
fn frames(opcode: u8, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut header = vec![0x80 | opcode];
    let len = payload.len();
    let mut sized = Vec::new();
    if len < 126 {
        sized.push(len as u8);
    } else {
        sized.push(126);
        sized.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let mut echoed = header.clone();
    echoed.extend_from_slice(&sized);
    echoed.extend_from_slice(payload);
    sized[0] |= 0x80;
    header.extend_from_slice(&sized);
    header.extend_from_slice(&key);
    header.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    (header, echoed)
}

/// Echoes WARMUP + MEASURED messages of `size` bytes, `in_flight` at a time, and returns the
/// allocations the server made for the measured ones (`copy`: the handler copies each payload).
fn run(opcode: u8, size: usize, in_flight: usize, copy: bool) -> u64 {
    run_with(echo_server, opcode, size, in_flight, copy)
}

/// [`run`] against the server that `server` starts.
fn run_with(
    server: fn(bool) -> (u16, mpsc::Receiver<u64>),
    opcode: u8,
    size: usize,
    in_flight: usize,
    copy: bool,
) -> u64 {
    let (port, counted) = server(copy);
    let mut s = handshake(port);
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let (frame, echoed) = frames(opcode, &payload);
    let total = WARMUP + MEASURED;
    let batch = frame.repeat(in_flight);
    let mut reply = vec![0u8; echoed.len() * in_flight];
    let mut done = 0;
    while done < total {
        let n = in_flight.min(total - done);
        s.write_all(&batch[..frame.len() * n]).expect("send");
        let got = &mut reply[..echoed.len() * n];
        s.read_exact(got).expect("echo");
        for echo in got.chunks(echoed.len()) {
            assert_eq!(echo, &echoed[..], "echoed frame differs");
        }
        done += n;
    }
    counted
        .recv_timeout(Duration::from_secs(10))
        .expect("server reports its allocation count")
}

#[test]
fn echoing_small_text_messages_allocates_nothing() {
    assert_eq!(
        run(0x1, 20, 1, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_pipelined_binary_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 20, 16, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_1_kib_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 1024, 4, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_16_kib_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 16 * 1024, 2, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn the_count_sees_an_echo_that_copies_payloads() {
    // The same harness with one allocation per message in the handler: proves the counter is
    // installed and counts the server thread.
    let counted = run(0x2, 20, 1, true);
    assert!(counted >= MEASURED as u64, "counted {counted}");
}

/// What the events echo handler shares with its server thread.
struct EventsEcho {
    copy: bool,
    seen: AtomicUsize,
    warmed_up: Notify,
    measured: Notify,
    closed: Notify,
}

/// The handler: a newtype, since `Server::events` takes the handler by value.
struct Shared(Arc<EventsEcho>);

impl Callbacks for Shared {
    fn on_message(&self, conn: &mut Conn<'_>, message: volley::Message) {
        let message = if self.0.copy {
            volley::Message::binary(message.payload().to_vec())
        } else {
            message
        };
        let _ = conn.send(message);
        match self.0.seen.fetch_add(1, Ordering::Relaxed) + 1 {
            WARMUP => self.0.warmed_up.notify_one(),
            n if n == WARMUP + MEASURED => self.0.measured.notify_one(),
            _ => {}
        }
    }

    fn on_close(&self, _conn: &mut Conn<'_>, _result: volley::Result<Option<volley::CloseFrame>>) {
        self.0.closed.notify_one();
    }
}

/// Like [`echo_server`], with the echo at "/" served by callbacks on a current-thread
/// runtime: the accept loop, the driver and the callbacks all run on the measured thread.
fn events_echo_server(copy: bool) -> (u16, mpsc::Receiver<u64>) {
    server_thread(move |rt, listener, tx| {
        let echo = Arc::new(EventsEcho {
            copy,
            seen: AtomicUsize::new(0),
            warmed_up: Notify::new(),
            measured: Notify::new(),
            closed: Notify::new(),
        });
        rt.block_on(async {
            let server = volley::Server::from_listener(listener)
                .route("/", volley::Endpoint::callbacks(Shared(echo.clone())));
            tokio::spawn(server.run());
            echo.warmed_up.notified().await;
        });
        let info = allocation_counter::measure(|| {
            rt.block_on(async {
                // Each `block_on` starts tokio's list of deferred wakers empty, and the first
                // `yield_now` in it allocates it (the driver yields between busy turns). A
                // server runs one `block_on` for its whole life: that one-off is made here,
                // uncounted, so that the count is the echoes' alone.
                uncounted(tokio::task::yield_now()).await;
                echo.measured.notified().await;
            });
        });
        let _ = tx.send(info.count_total);
        // Keep serving (the last echoes may still be queued) until the client goes away.
        rt.block_on(async {
            let _ = tokio::time::timeout(Duration::from_secs(10), echo.closed.notified()).await;
        });
    })
}

/// Awaits `f` with the allocations of its own polls left out of the count.
async fn uncounted<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    std::future::poll_fn(|cx| {
        let mut polled = std::task::Poll::Pending;
        allocation_counter::opt_out(|| polled = f.as_mut().poll(cx));
        polled
    })
    .await
}

#[test]
fn events_echo_of_small_text_messages_allocates_nothing() {
    assert_eq!(
        run_with(events_echo_server, 0x1, 20, 1, false),
        0,
        "allocations for {MEASURED} echoes through Server::events"
    );
}

#[test]
fn events_echo_of_16_kib_binary_messages_allocates_nothing() {
    assert_eq!(
        run_with(events_echo_server, 0x2, 16 * 1024, 2, false),
        0,
        "allocations for {MEASURED} echoes through Server::events"
    );
}

#[test]
fn the_count_sees_an_events_handler_that_copies_payloads() {
    let counted = run_with(events_echo_server, 0x2, 20, 1, true);
    assert!(counted >= MEASURED as u64, "counted {counted}");
}
