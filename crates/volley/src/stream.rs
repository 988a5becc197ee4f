//! [`WebSocket`] and its split halves: one driver over the sans-IO [`Connection`].
//!
//! Both halves share the protocol state behind a short synchronous lock that is never held across
//! an `.await`, and the transport's write side behind an async lock. Reading never waits for the
//! write lock: control replies (pongs, close echoes) produced while reading are flushed by the
//! reader only when the writer is idle, and otherwise by the sender before it releases the writer.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};
use volley_proto::{
    CloseCode, CloseFrame, Connection, DeflateParams, Message, PreparedMessage, Role, State,
};

use crate::config::Config;
use crate::error::{Error, Result};

/// Free space a connection's read buffer has before a read, at first. It grows to the size of
/// the frames that needed more than one read (up to [`MAX_READ_TARGET`]), so that a stream of
/// large messages is read with one system call per message.
pub(crate) const READ_TARGET: usize = 4 * 1024;

/// The most free space reserved ahead of frames of unknown size.
const MAX_READ_TARGET: usize = 64 * 1024;

/// Size of the per-thread buffer that idle connections (which keep no read buffer) read into.
const SCRATCH_LEN: usize = 16 * 1024;

/// How long after its last read a connection keeps its buffers; then empty ones are freed, so
/// an idle connection costs little memory.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(1);

thread_local! {
    /// Where a connection without a read buffer reads: only the bytes it needs are kept.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// Slices tried first: writes with fewer pieces than this never set up [`MAX_IOV`] of them.
const FEW_IOV: usize = 4;

struct Writer<S> {
    io: WriteHalf<S>,
    queue: VecDeque<Bytes>,
}

struct Shared<S> {
    proto: Mutex<Connection>,
    writer: tokio::sync::Mutex<Writer<S>>,
    /// Shared by every connection of a server.
    config: Arc<Config>,
    /// When the close handshake must be complete: set when our close frame is queued.
    close_deadline: OnceLock<Instant>,
    /// Wakes a receiver blocked in a read when our close frame is queued.
    closing: Notify,
    /// Round trip of the last answered keep-alive ping.
    latency: Mutex<Option<Duration>>,
    /// The writer's queue may hold bytes (a write was started and not seen through).
    unflushed: AtomicBool,
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

    /// Frees the connection's empty buffers (an idle connection keeps none). A writer busy
    /// elsewhere keeps its queue until the next release.
    fn release_idle_buffers(&self) {
        self.proto().release_idle_buffers();
        if let Ok(mut w) = self.writer.try_lock() {
            if w.queue.is_empty() && w.queue.capacity() > 0 {
                w.queue = VecDeque::new();
            }
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
                    self.unflushed.store(false, Ordering::Release);
                    drop(w);
                    drop(proto);
                    return Ok(());
                }
                continue;
            }
            // Set until the queue is drained: a write cancelled midway leaves bytes in the
            // writer's queue that `try_flush` must not skip.
            self.unflushed.store(true, Ordering::Release);
            write_queue(&mut w).await?;
        }
    }

    /// Flushes queued bytes if no one else is writing; whoever is will flush them. Past the
    /// write limit it waits for the writer instead, so replies queued while a sender is stuck
    /// cannot pile up.
    async fn try_flush(&self) -> Result<()> {
        // The common case on the receive path: nothing to write, checked without the writer.
        if !self.unflushed.load(Ordering::Acquire) && self.proto().pending_transmit() == 0 {
            return Ok(());
        }
        match self.writer.try_lock() {
            Ok(w) => self.flush_and_release(w).await,
            Err(_) if self.proto().pending_transmit() > self.config.write_limit => {
                let w = self.writer.lock().await;
                self.flush_and_release(w).await
            }
            Err(_) => Ok(()),
        }
    }
}

/// Type-erased access to a connection for [`CloseHandle`].
trait Closer: Send + Sync {
    /// Queues our close frame (if none was sent) and wakes the receiver to start its deadline.
    fn start_close(&self, frame: CloseFrame);
    /// Writes what is queued.
    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl<S: AsyncRead + AsyncWrite + Send> Closer for Shared<S> {
    fn start_close(&self, frame: CloseFrame) {
        let state = {
            let mut proto = self.proto();
            let _ = proto.close(Some(frame));
            proto.state()
        };
        self.closing_if(state);
    }

    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let w = self.writer.lock().await;
            let _ = self.flush_and_release(w).await;
        })
    }
}

/// Closes a connection from outside the tasks that use it: it queues a close frame behind the
/// messages already queued (so none is lost) and writes it. The connection's receiver then sees
/// the peer's reply and ends as after any close. Holds no strong reference: a handle to a
/// connection that is gone does nothing.
#[derive(Clone)]
pub struct CloseHandle {
    inner: std::sync::Weak<dyn Closer>,
}

impl std::fmt::Debug for CloseHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloseHandle")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

impl CloseHandle {
    /// Starts the close handshake with `frame` and waits until the close frame is written
    /// (which waits for messages queued before it).
    ///
    /// Cancel-safe: if dropped early, the close frame stays queued and goes out with the
    /// connection's next write.
    pub async fn close(&self, frame: CloseFrame) {
        let Some(conn) = self.inner.upgrade() else {
            return;
        };
        conn.start_close(frame);
        conn.flush().await;
    }

    /// Whether the connection still exists.
    pub fn is_alive(&self) -> bool {
        self.inner.strong_count() > 0
    }
}

async fn write_queue<S: AsyncWrite>(w: &mut Writer<S>) -> Result<()> {
    let Writer { io, queue } = w;
    std::future::poll_fn(|cx| poll_write_all(Pin::new(&mut *io), queue, cx)).await?;
    Ok(())
}

/// Bytes waiting to be written, shown as slices and dropped as they are written: a writer's
/// queue, or a protocol connection's own (written straight from it).
pub(crate) trait Outgoing {
    /// Fills `dst` with the waiting bytes in order; returns how many slices it filled.
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize;
    /// Drops the first `n` waiting bytes.
    fn advance(&mut self, n: usize);
}

impl Outgoing for VecDeque<Bytes> {
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, bytes) in dst.iter_mut().zip(self.iter()) {
            *slot = IoSlice::new(bytes);
            count += 1;
        }
        count
    }

    fn advance(&mut self, mut left: usize) {
        while left > 0 {
            let Some(front) = self.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
}

impl Outgoing for Connection {
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.transmit_slices(dst)
    }

    fn advance(&mut self, n: usize) {
        self.advance_transmit(n);
    }
}

/// Writes everything `out` holds to `io` (vectored when the transport supports it, at most
/// [`MAX_IOV`] buffers per system call), then flushes the transport. Pending as soon as the
/// transport is; what was written stays written.
pub(crate) fn poll_write_all<W: AsyncWrite>(
    mut io: Pin<&mut W>,
    out: &mut impl Outgoing,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        // The slice arrays live only for this synchronous step. Most writes have a piece or
        // two (a small message, or a header and its payload): filling a short array first
        // spares them setting up the long one (a measurable cost at one write per message).
        let mut few = [IoSlice::new(&[]); FEW_IOV];
        let count = out.slices(&mut few);
        let n = if count == 0 {
            break;
        } else if count < FEW_IOV {
            ready!(poll_write_slices(io.as_mut(), &few[..count], cx))?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let count = out.slices(&mut slices);
            ready!(poll_write_slices(io.as_mut(), &slices[..count], cx))?
        };
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        out.advance(n);
    }
    io.poll_flush(cx)
}

/// One write of `slices` (not empty): vectored when the transport supports it.
fn poll_write_slices<W: AsyncWrite>(
    io: Pin<&mut W>,
    slices: &[IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if slices.len() > 1 && io.is_write_vectored() {
        io.poll_write_vectored(cx, slices)
    } else {
        io.poll_write(cx, &slices[0])
    }
}

/// Reads once from `io` into the connection and processes what arrived (a protocol error lands
/// in `error`). A connection with a read buffer reads straight into it, with room for the rest
/// of the frame being received; one without (idle) reads into this thread's scratch buffer and
/// keeps only the bytes it needs. `target` is the free space to have before a read (see
/// [`READ_TARGET`]); it follows the size of the frames that needed more than one read.
pub(crate) fn poll_fill<R: AsyncRead>(
    proto: &mut Connection,
    mut io: Pin<&mut R>,
    error: &mut Option<Error>,
    target: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let n = if proto.read_buffer_released() {
        ready!(SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(io.as_mut().poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            if !filled.is_empty() {
                // Keep room for the reads that usually follow the first.
                proto.read_buffer().reserve(filled.len().max(*target));
                if let Err(e) = proto.handle_read(filled) {
                    *error = Some(Error::Protocol(e));
                }
            }
            Poll::Ready(Ok::<_, std::io::Error>(filled.len()))
        }))?
    } else {
        // Room for the rest of the frame being received, else for a frame of the usual size.
        let want = proto.read_hint().max(*target);
        let buf = proto.read_buffer();
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let n = ready!(tokio_util::io::poll_read_buf(io, cx, buf))?;
        if n > 0 {
            if let Err(e) = proto.handle_buffered() {
                *error = Some(Error::Protocol(e));
            }
        }
        n
    };
    // A frame that did not arrive in one read: make room for frames of its size from now on.
    let hint = proto.read_hint();
    if hint > 0 {
        let frame = proto.read_buffer().len() + hint;
        *target = (*target).max(frame).min(MAX_READ_TARGET);
    }
    Poll::Ready(Ok(n))
}

/// The sending half of a [`WebSocket`].
pub struct WsSender<S> {
    shared: Arc<Shared<S>>,
}

/// The receiving half of a [`WebSocket`].
pub struct WsReceiver<S> {
    shared: Arc<Shared<S>>,
    io: ReadHalf<S>,
    error: Option<Error>,
    /// An item already polled, returned once the bytes polling queued are flushed.
    ready: Option<Result<Message>>,
    done: bool,
    /// The peer stopped answering: close the transport without waiting for its close reply.
    abandon: bool,
    keepalive: Keepalive,
    /// The one timer behind keep-alive, the idle timeout and buffer release; created when first
    /// needed and moved only when a deadline comes earlier than it (a timer that fires early
    /// just re-arms), so that receiving a message touches no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Free space to have in the read buffer before a read (see [`READ_TARGET`]).
    read_target: usize,
}

/// Keep-alive and idle timers, driven by a pending `recv`.
struct Keepalive {
    next_ping: Option<Instant>,
    /// The payload and send time of the ping awaiting its pong.
    outstanding: Option<(Bytes, Instant)>,
    seq: u32,
    last_read: Instant,
    /// When to free the connection's empty buffers, if it holds any.
    release_at: Option<Instant>,
}

impl Keepalive {
    fn new(config: &Config) -> Self {
        let now = Instant::now();
        Self {
            next_ping: config.ping_interval.map(|i| now + i),
            outstanding: None,
            seq: 0,
            last_read: now,
            // The handshake may have left buffers behind: release them if nothing follows.
            release_at: Some(now + RELEASE_AFTER),
        }
    }

    /// When the receiver must wake up for a timer, if ever.
    fn deadline(&self, config: &Config) -> Option<Instant> {
        let pong = self
            .outstanding
            .as_ref()
            .and_then(|(_, sent)| config.ping_timeout.map(|t| *sent + t));
        let idle = config.idle_timeout.map(|t| self.last_read + t);
        [self.next_ping, pong, idle, self.release_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// What a timer asks the receiver to do.
enum Timer {
    Ping(Bytes),
    PongOverdue,
    Idle,
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
        Self::from_raw_with_deflate(stream, role, config, None, leftover)
    }

    /// Like [`from_raw`](Self::from_raw), with the permessage-deflate parameters the handshake
    /// agreed on (`None`: no compression). [`accept_with_config`](crate::accept_with_config) and
    /// [`ClientBuilder`](crate::ClientBuilder) call it; use it after a handshake made elsewhere.
    pub fn from_raw_with_deflate(
        stream: S,
        role: Role,
        config: Config,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) -> Self {
        Self::from_raw_shared(stream, role, Arc::new(config), deflate, leftover)
    }

    /// [`from_raw_with_deflate`](Self::from_raw_with_deflate) with a configuration shared by
    /// many connections.
    pub(crate) fn from_raw_shared(
        stream: S,
        role: Role,
        config: Arc<Config>,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) -> Self {
        let (read, write) = tokio::io::split(stream);
        let keepalive = Keepalive::new(&config);
        let mut proto = Connection::with_deflate(role, config.protocol.clone(), deflate);
        let error = proto.handle_read(leftover).err().map(Error::Protocol);
        let shared = Arc::new(Shared {
            proto: Mutex::new(proto),
            writer: tokio::sync::Mutex::new(Writer {
                io: write,
                queue: VecDeque::new(),
            }),
            close_deadline: OnceLock::new(),
            closing: Notify::new(),
            latency: Mutex::new(None),
            unflushed: AtomicBool::new(false),
            config,
        });
        Self {
            tx: WsSender {
                shared: shared.clone(),
            },
            rx: WsReceiver {
                shared,
                io: read,
                error,
                ready: None,
                done: false,
                abandon: false,
                keepalive,
                timer: None,
                read_target: READ_TARGET,
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

    /// Sends a message encoded once for many connections (see [`PreparedMessage`]) and waits
    /// until it is written; its frame bytes are shared, not copied. Cancel-safe like
    /// [`send`](Self::send).
    pub async fn send_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        self.tx.send_prepared(message).await
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

    /// Round-trip time of the last keep-alive ping that was answered, if any.
    pub fn latency(&self) -> Option<Duration> {
        self.tx.latency()
    }

    /// Queues a message without waiting for the transport unless more than
    /// [`Config::write_limit`] bytes are queued; see [`WsSender::feed`]. Cancel-safe like
    /// [`send`](Self::send).
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<()> {
        self.tx.feed(message.into()).await
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.tx.shared.config
    }

    /// The permessage-deflate parameters in force, if compression was negotiated.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.tx.shared.proto().deflate().copied()
    }

    /// Splits into a sender and a receiver usable from separate tasks.
    pub fn split(self) -> (WsSender<S>, WsReceiver<S>) {
        (self.tx, self.rx)
    }

    /// A handle that closes this connection from elsewhere (graceful shutdown, admin kicks).
    pub fn close_handle(&self) -> CloseHandle
    where
        S: Send + 'static,
    {
        self.tx.close_handle()
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

    /// Sends a prepared message and waits until it is written; see
    /// [`WebSocket::send_prepared`]. Cancel-safe like [`WebSocket::send`].
    pub async fn send_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        let w = self.shared.writer.lock().await;
        self.shared.proto().send_prepared(message)?;
        self.shared.flush_and_release(w).await
    }

    /// Writes any queued bytes. Cancel-safe like [`WebSocket::send`].
    pub async fn flush(&mut self) -> Result<()> {
        let w = self.shared.writer.lock().await;
        self.shared.flush_and_release(w).await
    }

    /// Queues a message for sending and returns without waiting for the transport while at
    /// most [`Config::write_limit`] bytes are queued; past that it writes everything queued
    /// first. Use it to batch many small messages into few writes, then [`flush`](Self::flush).
    /// Queued bytes also go out with the next `send`, `flush` or `recv`.
    ///
    /// Cancel-safe like [`WebSocket::send`].
    pub async fn feed(&mut self, message: impl Into<Message>) -> Result<()> {
        let w = self.shared.writer.lock().await;
        let (state, pending) = {
            let mut proto = self.shared.proto();
            proto.send(message.into())?;
            (proto.state(), proto.pending_transmit())
        };
        self.shared.closing_if(state);
        if pending > self.shared.config.write_limit {
            self.shared.flush_and_release(w).await
        } else {
            Ok(())
        }
    }

    /// Queues a prepared message like [`feed`](Self::feed) queues a message: it waits for the
    /// transport only past [`Config::write_limit`]. Cancel-safe like [`WebSocket::send`].
    pub async fn feed_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        let w = self.shared.writer.lock().await;
        let pending = {
            let mut proto = self.shared.proto();
            proto.send_prepared(message)?;
            proto.pending_transmit()
        };
        if pending > self.shared.config.write_limit {
            self.shared.flush_and_release(w).await
        } else {
            Ok(())
        }
    }

    /// A handle that closes this connection from elsewhere (graceful shutdown, admin kicks).
    pub fn close_handle(&self) -> CloseHandle
    where
        S: Send + 'static,
    {
        let shared: Arc<dyn Closer> = self.shared.clone();
        CloseHandle {
            inner: Arc::downgrade(&shared),
        }
    }

    /// Round-trip time of the last keep-alive ping that was answered, if any.
    pub fn latency(&self) -> Option<Duration> {
        *self
            .shared
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
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
            if let Some(Message::Pong(payload)) = &event {
                self.on_pong(payload);
            }
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
            if self.abandon || matches!(state, State::Closed | State::Failed) {
                self.done = true;
                return Box::pin(self.finish()).await.err().map(Err);
            }
            let (shared, io, error) = (&self.shared, &mut self.io, &mut self.error);
            let target = &mut self.read_target;
            let read = std::future::poll_fn(|cx| {
                poll_fill(&mut shared.proto(), Pin::new(&mut *io), error, target, cx)
            });
            let n = if state == State::CloseSent {
                // The deadline runs from when our close frame was queued, however much the peer
                // sends meanwhile.
                let deadline = self.shared.close_deadline();
                // Boxed, like the other rare paths below, so that the future of every `recv`
                // (and so every idle connection) stays small.
                match Box::pin(tokio::time::timeout_at(deadline, read)).await {
                    Ok(n) => n,
                    Err(_) => {
                        self.done = true;
                        return Some(Err(Error::Timeout("close handshake")));
                    }
                }
            } else {
                let timer = match self.keepalive.deadline(&self.shared.config) {
                    Some(at) => {
                        let timer = self
                            .timer
                            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                        if timer.is_elapsed() || timer.deadline() > at {
                            timer.as_mut().reset(at);
                        }
                        Some(timer.as_mut())
                    }
                    None => None,
                };
                let sleep = async move {
                    match timer {
                        Some(timer) => timer.await,
                        None => std::future::pending().await,
                    }
                };
                // A close sent by the other half while this read waits must start the deadline.
                tokio::select! {
                    n = read => n,
                    () = self.shared.closing.notified() => continue,
                    () = sleep => {
                        if let Some(err) = self.on_timer() {
                            // Get the 1011 close frame out before reporting, if the transport
                            // takes it within the close timeout.
                            let flush = self.shared.try_flush();
                            let _ = Box::pin(tokio::time::timeout(self.shared.config.close_timeout, flush)).await;
                            return Some(Err(err));
                        }
                        continue;
                    }
                }
            };
            match n {
                Ok(0) => {
                    self.done = true;
                    return Some(Err(Error::AbnormalClose));
                }
                Ok(_) => {
                    let now = Instant::now();
                    self.keepalive.last_read = now;
                    self.keepalive.release_at = Some(now + RELEASE_AFTER);
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// Records the pong answering our keep-alive ping, if it is that one.
    fn on_pong(&mut self, payload: &Bytes) {
        if let Some((expected, sent)) = &self.keepalive.outstanding {
            if expected == payload {
                let rtt = sent.elapsed();
                *self
                    .shared
                    .latency
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = Some(rtt);
                self.keepalive.outstanding = None;
            }
        }
    }

    /// Acts on whichever keep-alive or idle timer is due. Returns the error to report when the
    /// peer failed to answer a ping in time.
    fn on_timer(&mut self) -> Option<Error> {
        let now = Instant::now();
        if self.keepalive.release_at.is_some_and(|at| at <= now) {
            self.keepalive.release_at = None;
            self.shared.release_idle_buffers();
        }
        let config = &self.shared.config;
        let ka = &mut self.keepalive;
        let timer = if ka
            .outstanding
            .as_ref()
            .is_some_and(|(_, sent)| config.ping_timeout.is_some_and(|t| *sent + t <= now))
        {
            Timer::PongOverdue
        } else if config.idle_timeout.is_some_and(|t| ka.last_read + t <= now) {
            Timer::Idle
        } else if ka.next_ping.is_some_and(|at| at <= now) {
            ka.next_ping = config.ping_interval.map(|i| now + i);
            ka.seq = ka.seq.wrapping_add(1);
            let payload = Bytes::copy_from_slice(format!("volley-keepalive-{}", ka.seq).as_bytes());
            // A ping still unanswered keeps its deadline; a new one is only sent once it is.
            if ka.outstanding.is_some() {
                return None;
            }
            ka.outstanding = Some((payload.clone(), now));
            Timer::Ping(payload)
        } else {
            return None;
        };
        let mut proto = self.shared.proto();
        match timer {
            Timer::Ping(payload) => {
                let _ = proto.send(Message::Ping(payload));
                None
            }
            Timer::Idle => {
                self.keepalive.last_read = now;
                let _ = proto.close(Some(CloseFrame::new(CloseCode::NORMAL, "idle timeout")));
                drop(proto);
                self.shared.closing_if(State::CloseSent);
                None
            }
            Timer::PongOverdue => {
                let _ = proto.close(Some(CloseFrame::new(
                    CloseCode::INTERNAL_ERROR,
                    "keepalive ping timeout",
                )));
                drop(proto);
                self.shared.closing_if(State::CloseSent);
                // The peer is unresponsive: don't wait for its close reply. The next `recv`
                // writes our close frame and closes the transport.
                self.keepalive.outstanding = None;
                self.keepalive.next_ping = None;
                self.abandon = true;
                Some(Error::KeepaliveTimeout)
            }
        }
    }

    /// After the close handshake (or a failure): make sure our close frame is out, then close the
    /// transport. The server closes first (RFC 6455 §7.1.1); a client waits for that, briefly.
    async fn finish(&mut self) -> Result<()> {
        let shared = self.shared.clone();
        let timeout = shared.config.close_timeout;
        let role = shared.proto().role();
        // Everything here is bounded by the close timeout: a peer that stopped reading must not
        // hold the connection open (dropping it closes the transport regardless).
        let flushed = tokio::time::timeout(timeout, async {
            let w = shared.writer.lock().await;
            shared.flush_and_release(w).await
        })
        .await;
        match flushed {
            Ok(result) => result?,
            Err(_) => return Ok(()),
        }
        if role == Role::Client && !self.abandon {
            // The server closes the TCP connection first (RFC 6455 §7.1.1): wait for it.
            let wait = async {
                let mut scratch = [0u8; 256];
                while matches!(self.io.read(&mut scratch).await, Ok(n) if n > 0) {}
            };
            let _ = tokio::time::timeout(timeout, wait).await;
        }
        let _ = tokio::time::timeout(timeout, async {
            let mut w = shared.writer.lock().await;
            let _ = w.io.shutdown().await;
        })
        .await;
        Ok(())
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.shared.proto().state()
    }
}
