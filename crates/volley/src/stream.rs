//! [`WebSocket`] and its split halves: one driver over the sans-IO [`Connection`].
//!
//! Both halves share the protocol state behind a short synchronous lock that is never held across
//! an `.await`, and the transport's write side behind an async lock. Reading never waits for the
//! write lock: control replies (pongs, close echoes) produced while reading are flushed by the
//! reader only when the writer is idle, and otherwise by the sender before it releases the writer.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Instant;
use volley_proto::{CloseFrame, Connection, Message, Role, State};

use crate::config::Config;
use crate::error::{Error, Result};

/// Initial capacity of the read buffer.
const READ_CHUNK: usize = 16 * 1024;

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

struct Writer<S> {
    io: WriteHalf<S>,
    queue: VecDeque<Bytes>,
}

struct Shared<S> {
    proto: Mutex<Connection>,
    writer: tokio::sync::Mutex<Writer<S>>,
    config: Config,
    /// When the close handshake must be complete: set when our close frame is queued.
    close_deadline: OnceLock<Instant>,
    /// Wakes a receiver blocked in a read when our close frame is queued.
    closing: Notify,
}

impl<S> Shared<S> {
    fn proto(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding this lock cannot leave the state machine half-updated in a way
        // that matters more than losing the connection, so recover the guard.
        self.proto.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that our close frame is queued (if `state` says so): starts the close deadline
    /// and wakes the receiver so that its read honours it.
    fn closing_if(&self, state: State) {
        if state == State::CloseSent {
            self.close_deadline
                .get_or_init(|| Instant::now() + self.config.close_timeout);
            self.closing.notify_one();
        }
    }

    /// The close deadline (from now, if no close frame was queued through a sender).
    fn close_deadline(&self) -> Instant {
        *self
            .close_deadline
            .get_or_init(|| Instant::now() + self.config.close_timeout)
    }
}

impl<S: AsyncRead + AsyncWrite> Shared<S> {
    /// Writes everything queued, then releases the writer with no bytes left behind (the final
    /// check happens under the protocol lock, so a reader that queued a reply and failed to get
    /// the writer is always covered).
    async fn flush_and_release(&self, mut w: tokio::sync::MutexGuard<'_, Writer<S>>) -> Result<()> {
        loop {
            {
                let mut proto = self.proto();
                while let Some(bytes) = proto.poll_transmit() {
                    w.queue.push_back(bytes);
                }
            }
            if w.queue.is_empty() {
                let proto = self.proto();
                if proto.pending_transmit() == 0 {
                    drop(w);
                    drop(proto);
                    return Ok(());
                }
                continue;
            }
            write_queue(&mut w).await?;
        }
    }

    /// Flushes queued bytes if no one else is writing; whoever is will flush them.
    async fn try_flush(&self) -> Result<()> {
        match self.writer.try_lock() {
            Ok(w) => self.flush_and_release(w).await,
            Err(_) => Ok(()),
        }
    }
}

async fn write_queue<S: AsyncWrite>(w: &mut Writer<S>) -> Result<()> {
    while !w.queue.is_empty() {
        let n = if w.io.is_write_vectored() && w.queue.len() > 1 {
            let slices: Vec<IoSlice<'_>> = w
                .queue
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            w.io.write_vectored(&slices).await?
        } else {
            let front = &w.queue[0];
            w.io.write(front).await?
        };
        if n == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = w.queue.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                w.queue.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
    w.io.flush().await?;
    Ok(())
}

/// The sending half of a [`WebSocket`].
pub struct WsSender<S> {
    shared: Arc<Shared<S>>,
}

/// The receiving half of a [`WebSocket`].
pub struct WsReceiver<S> {
    shared: Arc<Shared<S>>,
    io: ReadHalf<S>,
    buf: BytesMut,
    error: Option<Error>,
    /// An item already polled, returned once the bytes polling queued are flushed.
    ready: Option<Result<Message>>,
    done: bool,
}

/// A WebSocket connection over any `AsyncRead + AsyncWrite` transport.
///
/// [`recv`](Self::recv) yields messages (text and binary kept distinct, pings, pongs, and the
/// peer's close frame); [`send`](Self::send) writes one. Pings are answered and the close
/// handshake completed automatically. [`split`](Self::split) gives halves that work from
/// separate tasks without blocking each other.
pub struct WebSocket<S> {
    tx: WsSender<S>,
    rx: WsReceiver<S>,
}

impl<S> std::fmt::Debug for WebSocket<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocket")
            .field("state", &self.tx.shared.proto().state())
            .finish_non_exhaustive()
    }
}

impl<S: AsyncRead + AsyncWrite> WebSocket<S> {
    /// Wraps a transport on which the opening handshake already happened.
    ///
    /// `leftover` holds bytes read past the handshake (the first frames), if any.
    pub fn from_raw(stream: S, role: Role, config: Config, leftover: &[u8]) -> Self {
        let (read, write) = tokio::io::split(stream);
        let mut proto = Connection::new(role, config.protocol.clone());
        let error = proto.handle_read(leftover).err().map(Error::Protocol);
        let shared = Arc::new(Shared {
            proto: Mutex::new(proto),
            writer: tokio::sync::Mutex::new(Writer {
                io: write,
                queue: VecDeque::new(),
            }),
            config,
            close_deadline: OnceLock::new(),
            closing: Notify::new(),
        });
        Self {
            tx: WsSender {
                shared: shared.clone(),
            },
            rx: WsReceiver {
                shared,
                io: read,
                buf: BytesMut::with_capacity(READ_CHUNK),
                error,
                ready: None,
                done: false,
            },
        }
    }

    /// Receives the next message; `None` once the connection is closed and nothing is left.
    ///
    /// The peer's close frame is returned as [`Message::Close`] (the reply is sent automatically);
    /// the next call then finishes the close handshake and returns `None`. A protocol violation by
    /// the peer returns [`Error::Protocol`] after the messages received before it.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no message is lost.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        self.rx.recv().await
    }

    /// Sends a message and waits until it is written to the transport.
    ///
    /// Cancel-safe in this sense: if the future is dropped while waiting for the transport,
    /// either nothing was queued or the whole message was, and its remaining bytes are written
    /// by the next `send`, `flush` or `recv`. Messages are never interleaved or torn.
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        self.tx.send(message.into()).await
    }

    /// Writes any queued bytes. Cancel-safe like [`send`](Self::send).
    pub async fn flush(&mut self) -> Result<()> {
        self.tx.flush().await
    }

    /// Closes the connection: sends a close frame and waits (up to `close_timeout`) for the close
    /// handshake to complete, discarding messages that arrive meanwhile.
    ///
    /// Not cancel-safe: if dropped midway the close frame may be sent without the handshake
    /// completing; call [`recv`](Self::recv) until `None` to finish it.
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        self.tx.close(frame).await?;
        loop {
            match self.rx.recv().await {
                None => return Ok(()),
                Some(Err(Error::Protocol(_))) | Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.tx.state()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.tx.shared.config
    }

    /// Splits into a sender and a receiver usable from separate tasks.
    pub fn split(self) -> (WsSender<S>, WsReceiver<S>) {
        (self.tx, self.rx)
    }
}

impl<S: AsyncRead + AsyncWrite> WsSender<S> {
    /// Sends a message and waits until it is written. Cancel-safe like [`WebSocket::send`].
    pub async fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        let w = self.shared.writer.lock().await;
        let state = {
            let mut proto = self.shared.proto();
            proto.send(message.into())?;
            proto.state()
        };
        self.shared.closing_if(state);
        self.shared.flush_and_release(w).await
    }

    /// Writes any queued bytes. Cancel-safe like [`WebSocket::send`].
    pub async fn flush(&mut self) -> Result<()> {
        let w = self.shared.writer.lock().await;
        self.shared.flush_and_release(w).await
    }

    /// Sends a close frame (once; later calls do nothing). The receiving half sees the peer's reply
    /// and then `None`. Cancel-safe like [`WebSocket::send`].
    pub async fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        let w = self.shared.writer.lock().await;
        let state = {
            let mut proto = self.shared.proto();
            proto.close(frame)?;
            proto.state()
        };
        self.shared.closing_if(state);
        self.shared.flush_and_release(w).await
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.shared.proto().state()
    }
}

impl<S: AsyncRead + AsyncWrite> WsReceiver<S> {
    /// Receives the next message; see [`WebSocket::recv`]. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Result<Message>> {
        loop {
            // Flush replies (pongs, close frames) and bytes a cancelled `send` left queued before
            // taking an event: if this future is dropped while writing, no event is lost. If the
            // transport is broken, the messages already received are still handed out first.
            if !self.done {
                if let Err(e) = self.shared.try_flush().await {
                    self.done = true;
                    self.error.get_or_insert(e);
                }
            }
            if let Some(item) = self.ready.take() {
                return Some(item);
            }
            let (event, pending, state) = {
                let mut proto = self.shared.proto();
                let event = proto.poll_event();
                (event, proto.pending_transmit(), proto.state())
            };
            if let Some(item) = event.map(Ok).or_else(|| self.error.take().map(Err)) {
                if pending > 0 && !self.done {
                    // Polling can make a close frame due: the reply to the peer's close, or ours
                    // for a protocol failure, which both wait until the messages before them were
                    // polled. Write it before handing the item out; the item waits in `ready` so
                    // that a cancelled flush loses nothing.
                    self.ready = Some(item);
                    continue;
                }
                return Some(item);
            }
            if self.done {
                return None;
            }
            if matches!(state, State::Closed | State::Failed) {
                self.done = true;
                return self.finish().await.err().map(Err);
            }
            let read = self.io.read_buf(&mut self.buf);
            let n = if state == State::CloseSent {
                // The deadline runs from when our close frame was queued, however much the peer
                // sends meanwhile.
                let deadline = self.shared.close_deadline();
                match tokio::time::timeout_at(deadline, read).await {
                    Ok(n) => n,
                    Err(_) => {
                        self.done = true;
                        return Some(Err(Error::Timeout("close handshake")));
                    }
                }
            } else {
                // A close sent by the other half while this read waits must start the deadline.
                tokio::select! {
                    n = read => n,
                    () = self.shared.closing.notified() => continue,
                }
            };
            match n {
                Ok(0) => {
                    self.done = true;
                    return Some(Err(Error::AbnormalClose));
                }
                Ok(_) => {
                    let result = self.shared.proto().handle_read(&self.buf);
                    self.buf.clear();
                    if let Err(e) = result {
                        self.error = Some(Error::Protocol(e));
                    }
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// After the close handshake (or a failure): make sure our close frame is out, then close the
    /// transport. The server closes first (RFC 6455 §7.1.1); a client waits for that, briefly.
    async fn finish(&mut self) -> Result<()> {
        let w = self.shared.writer.lock().await;
        let role = self.shared.proto().role();
        self.shared.flush_and_release(w).await?;
        match role {
            Role::Server => {
                let mut w = self.shared.writer.lock().await;
                let _ = w.io.shutdown().await;
            }
            Role::Client => {
                let wait = async {
                    let mut scratch = [0u8; 256];
                    while matches!(self.io.read(&mut scratch).await, Ok(n) if n > 0) {}
                };
                let _ = tokio::time::timeout(self.shared.config.close_timeout, wait).await;
                let mut w = self.shared.writer.lock().await;
                let _ = w.io.shutdown().await;
            }
        }
        Ok(())
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.shared.proto().state()
    }
}
