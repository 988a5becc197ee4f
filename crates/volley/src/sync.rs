//! A blocking WebSocket client for scripts, tools and tests.
//!
//! ```no_run
//! # fn run() -> volley::Result<()> {
//! use std::time::Duration;
//!
//! let mut ws = volley::sync::connect("ws://127.0.0.1:9001/")?;
//! ws.send("hello")?;
//! match ws.recv_timeout(Duration::from_secs(5)) {
//!     Some(Ok(reply)) => println!("{reply:?}"),
//!     Some(Err(e)) => eprintln!("{e}"),
//!     None => eprintln!("closed"),
//! }
//! ws.close(None)?;
//! # Ok(()) }
//! ```
//!
//! Each [`SyncWebSocket`] owns a thread running a current-thread tokio runtime with the async
//! [`WebSocket`]; the methods hand it one operation at a time and block until it is done. So it
//! works from any thread, including from inside another runtime (where blocking a worker is
//! still a bad idea: prefer the async API there), and never panics for want of a runtime.
//!
//! Keep-alive pings and the replies to the server's pings happen while a `recv` is pending, as
//! with the async API: a script that stops calling `recv` for longer than the server's ping
//! timeout may be disconnected.

use std::sync::mpsc;
use std::time::Duration;

use volley_proto::handshake::UpgradeResponse;
use volley_proto::{CloseFrame, Message, State};

use crate::error::{Error, Result, Timeout};
use crate::handshake::ClientBuilder;
use crate::maybe_tls::MaybeTlsStream;
use crate::task::WebSocket;

/// One operation for the connection's thread, with where to answer.
enum Op {
    Send(Message, mpsc::SyncSender<Result<()>>),
    Recv(Option<Duration>, mpsc::SyncSender<Option<Result<Message>>>),
    Close(Option<CloseFrame>, mpsc::SyncSender<Result<()>>),
    State(mpsc::SyncSender<State>),
}

/// A blocking WebSocket client connection; see the [module docs](self).
///
/// Dropping it drops the connection without a close handshake (like dropping a
/// [`WebSocket`]); call [`close`](Self::close) first to close cleanly.
#[derive(Debug)]
pub struct SyncWebSocket {
    ops: mpsc::Sender<Op>,
}

/// Connects to a `ws://` (or, with the `tls` feature, `wss://`) URL with the default
/// configuration and blocks until the opening handshake is done.
pub fn connect(url: &str) -> Result<SyncWebSocket> {
    connect_with(ClientBuilder::new(url)).map(|(ws, _)| ws)
}

/// Connects with the options of `builder` (configuration, subprotocols, headers, TLS) and
/// returns the connection with the server's handshake response.
pub fn connect_with(builder: ClientBuilder) -> Result<(SyncWebSocket, UpgradeResponse)> {
    let (ops, rx) = mpsc::channel();
    let (ready_tx, ready) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("volley-sync".into())
        .spawn(move || run(builder, rx, ready_tx))?;
    match ready.recv() {
        Ok(Ok(response)) => Ok((SyncWebSocket { ops }, response)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(gone()),
    }
}

/// The connection's thread: connects, then serves operations until the handle is dropped.
fn run(
    builder: ClientBuilder,
    ops: mpsc::Receiver<Op>,
    ready: mpsc::SyncSender<Result<UpgradeResponse>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let mut ws: WebSocket<MaybeTlsStream> = match runtime.block_on(builder.connect()) {
        Ok((ws, response)) => {
            if ready.send(Ok(response)).is_err() {
                return;
            }
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    // Answers go to callers that may have given up; a failed answer is no error here.
    while let Ok(op) = ops.recv() {
        match op {
            Op::Send(message, reply) => {
                let _ = reply.send(runtime.block_on(ws.send(message)));
            }
            Op::Recv(timeout, reply) => {
                // `recv` is cancel-safe: a timeout loses no message.
                let received = runtime.block_on(async {
                    match timeout {
                        None => ws.recv().await,
                        Some(t) => tokio::time::timeout(t, ws.recv())
                            .await
                            .unwrap_or(Some(Err(Error::Timeout(Timeout::Recv)))),
                    }
                });
                let _ = reply.send(received);
            }
            Op::Close(frame, reply) => {
                let _ = reply.send(runtime.block_on(ws.close(frame)));
            }
            Op::State(reply) => {
                let _ = reply.send(ws.state());
            }
        }
    }
    drop(ws);
}

/// The error for a connection whose thread is gone (it panicked, which it should never do).
fn gone() -> Error {
    Error::Io(std::io::Error::other(
        "the volley::sync connection thread stopped",
    ))
}

impl SyncWebSocket {
    /// Runs one operation on the connection's thread and waits for its answer.
    fn call<T>(&self, op: impl FnOnce(mpsc::SyncSender<T>) -> Op) -> Option<T> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.ops.send(op(tx)).ok()?;
        rx.recv().ok()
    }

    /// Sends a message and blocks until it is written to the transport.
    pub fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        let message = message.into();
        self.call(|reply| Op::Send(message, reply))
            .unwrap_or_else(|| Err(gone()))
    }

    /// Blocks until the next message; `None` once the connection is closed and nothing is left.
    /// The server's close frame is returned as [`Message::Close`], as by
    /// [`WebSocket::recv`].
    pub fn recv(&mut self) -> Option<Result<Message>> {
        self.call(|reply| Op::Recv(None, reply))
            .unwrap_or_else(|| Some(Err(gone())))
    }

    /// Like [`recv`](Self::recv), giving up after `timeout` with
    /// `Some(Err(Error::Timeout(Timeout::Recv)))`. The connection stays usable and no message is lost:
    /// a message still arriving is returned by the next call.
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<Result<Message>> {
        self.call(|reply| Op::Recv(Some(timeout), reply))
            .unwrap_or_else(|| Some(Err(gone())))
    }

    /// Closes the connection: sends a close frame (`None`: no status code) and blocks until the
    /// close handshake completes (up to the configuration's `close_timeout`), discarding messages
    /// that arrive meanwhile.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        self.call(|reply| Op::Close(frame, reply))
            .unwrap_or_else(|| Err(gone()))
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.call(Op::State).unwrap_or(State::Closed)
    }
}
