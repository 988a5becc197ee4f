//! [`WebSocket`] and its split halves: a task's driver over the sans-IO protocol, split in two.
//!
//! Both halves share the protocol state behind a short synchronous lock that is never held across
//! an `.await`, and the transport's write side behind an async lock. Reading never waits for the
//! write lock: control replies (pongs, close echoes) produced while reading are flushed by the
//! reader only when the writer is idle, and otherwise by the sender before it releases the writer
//! (or, if the sender's future is dropped midway, by the reader, which that wakes).
//!
//! Cancellation (tests/cancel_fuzz.rs drops every operation after every number of polls): a
//! dropped operation never tears or duplicates a frame; bytes it left queued (in the writer's
//! queue or the transport's own buffer, as TLS keeps records) are written by the next operation
//! on either half, at once by a `recv` already waiting.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tokio::time::Sleep;
use volley_proto::{
    CloseFrame, Connection, DeflateParams, Message, PreparedMessage, RecvHalf, Role, SendHalf,
    State,
};

use crate::config::Config;
use crate::core::{self, Micros, NEVER, TimerAction, Timers, must_drain};
use crate::error::{Error, Result, Timeout};
use crate::io::{READ_TARGET, poll_fill, poll_write_all};

struct Writer<S> {
    io: WriteHalf<S>,
    queue: VecDeque<Bytes>,
}

struct Shared<S> {
    /// The protocol's sending half: what senders lock (briefly: to encode and queue). The
    /// receiver owns the receiving half and decodes (and inflates) without this lock; it takes
    /// it only to hand over replies (pongs, close echoes).
    send: Mutex<SendHalf>,
    writer: tokio::sync::Mutex<Writer<S>>,
    /// Shared by every connection of a server.
    config: Arc<Config>,
    /// When our close frame was queued ([`NEVER`] until then): the close deadline runs from it.
    close_queued: AtomicU64,
    /// Wakes a receiver blocked in a read so that it goes round its loop again: when our close
    /// frame is queued (to start the close deadline), and when a writer was dropped midway
    /// (to write what it left: bytes of its own, replies the receiver queued behind it).
    rouse: Notify,
    /// Round trip of the last answered keep-alive ping, in microseconds (`u32::MAX`: none).
    rtt: AtomicU32,
    /// The writer's queue may hold bytes (a write was started and not seen through).
    unflushed: AtomicBool,
}

impl<S> Shared<S> {
    fn proto(&self) -> MutexGuard<'_, SendHalf> {
        // A panic while holding this lock cannot leave the state machine half-updated in a way
        // that matters more than losing the connection, so recover the guard.
        self.send.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records that our close frame is queued (if `state` says so): starts the close deadline
    /// and wakes the receiver so that its read honours it.
    fn closing_if(&self, state: State) {
        if state == State::CloseSent {
            let _ = self.close_queued.compare_exchange(
                NEVER,
                core::now(),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.rouse.notify_one();
        }
    }

    /// Frees the connection's empty buffers (an idle connection keeps none). A writer busy
    /// elsewhere keeps its queue until the next release.
    fn release_idle_buffers(&self) {
        self.proto().release_idle_buffers();
        if let Ok(mut w) = self.writer.try_lock()
            && w.queue.is_empty()
            && w.queue.capacity() > 0
        {
            w.queue = VecDeque::new();
        }
    }
}

impl<S: AsyncRead + AsyncWrite> Shared<S> {
    /// Writes everything queued, then releases the writer with no bytes left behind (the final
    /// check happens under the protocol lock, so a reader that queued a reply and failed to get
    /// the writer is always covered).
    async fn flush_and_release(&self, mut w: tokio::sync::MutexGuard<'_, Writer<S>>) -> Result<()> {
        // If this future is dropped midway, the receiver may be waiting in a read with replies
        // queued behind this writer (or our close frame in it): wake it to write them.
        let mut rouse = RouseOnDrop(Some(&self.rouse));
        // A write cancelled midway may have left bytes in the transport's own buffer (TLS keeps
        // the records it could not write) even if the queue is empty: flush the transport then.
        let mut flushed = !self.unflushed.load(Ordering::Acquire);
        loop {
            {
                let mut proto = self.proto();
                while let Some(bytes) = proto.poll_transmit() {
                    w.queue.push_back(bytes);
                }
            }
            if w.queue.is_empty() && flushed {
                let proto = self.proto();
                if proto.pending_transmit() == 0 {
                    self.unflushed.store(false, Ordering::Release);
                    rouse.0 = None;
                    drop(w);
                    drop(proto);
                    return Ok(());
                }
                continue;
            }
            // Set until the queue is drained and the transport flushed: a write cancelled midway
            // leaves bytes in the writer's queue (or the transport's) that `try_flush` must not
            // skip.
            self.unflushed.store(true, Ordering::Release);
            write_queue(&mut w).await?;
            flushed = true;
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
            Err(_) if must_drain(self.proto().pending_transmit(), &self.config) => {
                let w = self.writer.lock().await;
                self.flush_and_release(w).await
            }
            Err(_) => Ok(()),
        }
    }
}

/// Wakes the receiver when dropped while armed (see [`Shared::flush_and_release`]).
struct RouseOnDrop<'a>(Option<&'a Notify>);

impl Drop for RouseOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(rouse) = self.0 {
            rouse.notify_one();
        }
    }
}

/// Type-erased access to a connection for [`CloseHandle`].
trait Closer: Send + Sync {
    /// Queues our close frame (if none was sent) and wakes the receiver to start its deadline.
    fn start_close(&self, frame: Option<CloseFrame>);
    /// Writes what is queued.
    fn flush(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
}

impl<S: AsyncRead + AsyncWrite + Send> Closer for Shared<S> {
    fn start_close(&self, frame: Option<CloseFrame>) {
        let state = {
            let mut proto = self.proto();
            let _ = proto.close(frame);
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
    /// Starts the close handshake with `frame` (`None`: a close frame without a status code)
    /// and waits until the close frame is written (which waits for messages queued before it).
    ///
    /// Cancel-safe: if dropped after its first poll, the close frame stays queued and goes out
    /// at once through a `recv` waiting on the connection, else with its next write.
    pub async fn close(&self, frame: Option<CloseFrame>) {
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

/// The sending half of a [`WebSocket`].
pub struct WsSender<S> {
    shared: Arc<Shared<S>>,
}

/// The receiving half of a [`WebSocket`].
pub struct WsReceiver<S> {
    shared: Arc<Shared<S>>,
    io: ReadHalf<S>,
    /// The protocol's receiving half, owned: frames are decoded and inflated without a lock.
    recv: RecvHalf,
    error: Option<Error>,
    /// An item already polled, returned once the bytes polling queued are flushed.
    ready: Option<Result<Message>>,
    done: bool,
    /// [`finish`](Self::finish) started and did not end (its future was dropped): the next
    /// `recv` resumes it before it returns `None`.
    finishing: bool,
    /// Keep-alive, idle, close and buffer-release timers: the shared per-connection core,
    /// driven while a `recv` is pending.
    timers: Timers,
    /// The one runtime timer behind `timers`; created when first needed and moved only when a
    /// deadline comes earlier than it (a timer that fires early just re-arms), so that receiving
    /// a message touches no timer.
    timer: Option<Pin<Box<Sleep>>>,
    /// Free space to have in the read buffer before a read (see [`READ_TARGET`]).
    read_target: usize,
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
        let timers = Timers::new(core::now(), &config);
        let mut proto = Connection::with_deflate(role, config.protocol.clone(), deflate);
        let error = proto.handle_read(leftover).err().map(Error::Protocol);
        let (recv, send) = proto.split();
        let shared = Arc::new(Shared {
            send: Mutex::new(send),
            writer: tokio::sync::Mutex::new(Writer {
                io: write,
                queue: VecDeque::new(),
            }),
            close_queued: AtomicU64::new(NEVER),
            rouse: Notify::new(),
            rtt: AtomicU32::new(u32::MAX),
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
                recv,
                error,
                ready: None,
                done: false,
                finishing: false,
                timers,
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
    /// by the next `send`, `flush` or `recv` (at once by a `recv` already waiting on the other
    /// half). Messages are never interleaved, torn or sent twice.
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
    /// completing (a future never polled sends nothing, and the connection stays open); call
    /// [`recv`](Self::recv) until `None` to finish it: that completes the handshake and closes
    /// the transport, as this would have.
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
        let rtt = self.shared.rtt.load(Ordering::Relaxed);
        (rtt != u32::MAX).then(|| Duration::from_micros(u64::from(rtt)))
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
            // Hand the replies decoding produced (pongs, a close echo, a failure's close frame)
            // to the sending half, then flush them and bytes a cancelled `send` left queued
            // before taking an event: if this future is dropped while writing, no event is
            // lost. If the transport is broken, the messages already received are still handed
            // out first.
            self.hand_over_replies();
            if !self.done
                && let Err(e) = self.shared.try_flush().await
            {
                self.done = true;
                self.error.get_or_insert(e);
            }
            if let Some(item) = self.ready.take() {
                return Some(item);
            }
            let event = self.recv.poll_event();
            let (pending, state) = {
                let mut send = self.shared.proto();
                // Polling can make a close frame due (see below): hand it over at once.
                while let Some(reply) = self.recv.poll_reply() {
                    send.handle_reply(reply);
                }
                (send.pending_transmit(), send.state())
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
            if self.done && !self.finishing {
                return None;
            }
            if self.finishing
                || self.timers.abandoned()
                || matches!(state, State::Closed | State::Failed)
            {
                self.done = true;
                self.finishing = true;
                let result = Box::pin(self.finish()).await;
                self.finishing = false;
                return result.err().map(Err);
            }
            let open = state == State::Open;
            if !open {
                // The deadline runs from when our close frame was queued, however much the
                // peer sends meanwhile.
                let queued = self.shared.close_queued.load(Ordering::Acquire);
                let since = if queued == NEVER { core::now() } else { queued };
                self.timers.on_closing(since, &self.shared.config);
            }
            let at = self.timers.deadline(open, &self.shared.config);
            let (recv, io, error) = (&mut self.recv, &mut self.io, &mut self.error);
            let (target, warm) = (&mut self.read_target, self.timers.warm());
            let read = std::future::poll_fn(|cx| {
                poll_fill(&mut *recv, Pin::new(&mut *io), error, target, warm, cx)
            });
            let timer = (at != NEVER).then(|| {
                let at = core::instant(at);
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.is_elapsed() || timer.deadline() > at {
                    timer.as_mut().reset(at);
                }
                timer.as_mut()
            });
            let sleep = async move {
                match timer {
                    Some(timer) => timer.await,
                    None => std::future::pending().await,
                }
            };
            // A close sent by the other half while this read waits must start the deadline, and
            // bytes a dropped writer left behind must go out.
            let n = tokio::select! {
                n = read => n,
                () = self.shared.rouse.notified() => continue,
                () = sleep => {
                    if let Some(err) = self.on_timer(open) {
                        if !matches!(err, Error::Timeout(_)) {
                            // Get the 1011 close frame out before reporting, if the transport
                            // takes it within the close timeout.
                            let flush = self.shared.try_flush();
                            let close_timeout = self.shared.config.close_timeout;
                            let _ = Box::pin(tokio::time::timeout(close_timeout, flush)).await;
                        }
                        return Some(Err(err));
                    }
                    continue;
                }
            };
            match n {
                Ok(0) => {
                    self.done = true;
                    return Some(Err(Error::AbnormalClose));
                }
                Ok(_) => self.timers.on_read(core::now()),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
            }
        }
    }

    /// Hands what decoding queued for the sending half to it (a short lock, taken only when
    /// there is something).
    fn hand_over_replies(&mut self) {
        if let Some(first) = self.recv.poll_reply() {
            let mut send = self.shared.proto();
            send.handle_reply(first);
            while let Some(reply) = self.recv.poll_reply() {
                send.handle_reply(reply);
            }
        }
    }

    /// Records the pong answering our keep-alive ping, if it is that one.
    fn on_pong(&mut self, payload: &Bytes) {
        let config = &self.shared.config;
        if let Some(rtt) = self.timers.on_pong(payload, core::now(), config) {
            let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX - 1);
            self.shared.rtt.store(us, Ordering::Relaxed);
        }
    }

    /// Acts on whichever timer is due. Returns the error to report: the close handshake timed
    /// out, or the peer failed to answer a keep-alive ping in time.
    fn on_timer(&mut self, open: bool) -> Option<Error> {
        let now: Micros = core::now();
        if self.timers.close_overdue(now) {
            self.done = true;
            return Some(Error::Timeout(Timeout::Close));
        }
        let expired = self.timers.handle_timeout(now, open, &self.shared.config);
        if expired.release {
            self.recv.release_idle_buffers();
            self.shared.release_idle_buffers();
        }
        let state = {
            let mut proto = self.shared.proto();
            // Errors: the connection is no longer open (the timer then does nothing).
            let _ = match expired.action? {
                TimerAction::Ping(payload) => proto.send(Message::Ping(payload)),
                TimerAction::Close(frame) => proto.close(Some(frame)),
            };
            proto.state()
        };
        self.shared.closing_if(state);
        // The peer is unresponsive: the next `recv` writes our close frame and closes the
        // transport without waiting for the peer's reply.
        self.timers.abandoned().then_some(Error::KeepaliveTimeout)
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
        if role == Role::Client && !self.timers.abandoned() {
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
