//! One connection served by callbacks: its state behind its lock, the send queue its handles
//! fill without that lock, and the step its driver runs it by ([`ConnState::drive`]). The
//! timers and queue rules are the shared per-connection core's ([`crate::core`]).

use std::any::Any;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake};
use std::time::Duration;

use http::Extensions;
use tokio::io::AsyncWrite;
use volley_proto::{CloseCode, CloseFrame, Connection, Message, PreparedMessage, SendError, State};

use super::driver::{Driver, Io};
use super::{Callbacks, Conn, offer_result};
use crate::config::{Config, Overflow, QueueLimits};
use crate::core::{self, Micros, NEVER, Offer, Queued, TimerAction, Timers, must_drain};
use crate::error::{Error, Result, Timeout};
use crate::io::{READ_TARGET, poll_fill, poll_write_all};

/// Reads one connection may take in one turn before the others get theirs.
const READ_BUDGET: usize = 16;

/// Marks a connection its driver has not registered yet.
pub(super) const NEW: u32 = u32::MAX;

/// A message waiting in a connection's send queue.
pub(super) enum Outgoing {
    Message(Message),
    Prepared(PreparedMessage),
}

impl Queued for Outgoing {
    fn wire_len(&self) -> usize {
        match self {
            Self::Message(m) => m.wire_len(),
            Self::Prepared(p) => p.wire_len(),
        }
    }
}

impl Outgoing {
    fn send(self, proto: &mut Connection) -> std::result::Result<(), SendError> {
        match self {
            Self::Message(m) => proto.send(m),
            Self::Prepared(p) => proto.send_prepared(&p),
        }
    }
}

/// What handles queued for a connection, waiting for its driver (allocated with the first
/// message a handle queues: a connection only ever written by its own callbacks has none).
#[derive(Default)]
struct Outbox {
    queue: core::Outbox<Outgoing>,
    /// A close a handle asked for (rare: boxed), applied once the queue before it is handed over.
    close: Option<Box<Option<CloseFrame>>>,
}

/// A connection as its driver, its handles and its waker see it.
pub(super) struct Driven {
    pub(super) driver: Arc<Driver>,
    /// In the driver's ready queue already.
    pub(super) queued: AtomicBool,
    /// Open: not closing, not gone (cleared by the driver, or by a handle's close).
    pub(super) open: AtomicBool,
    /// The send queue holds something (set and cleared under its lock): the driver and the
    /// callbacks' sends look at the queue only then.
    waiting: AtomicBool,
    /// Bytes in the protocol's transmit queue (saturated), stored whenever the driver changes
    /// it, which only the driver does: with the send queue's bytes, an exact `buffered_amount`.
    in_proto: AtomicU32,
    /// Round trip of the last answered keep-alive ping, in microseconds (`u32::MAX`: none).
    rtt: AtomicU32,
    outbox: Mutex<Option<Box<Outbox>>>,
    pub(super) state: Mutex<ConnState>,
}

impl Driven {
    pub(super) fn new(driver: Arc<Driver>, state: ConnState) -> Self {
        Self {
            driver,
            queued: AtomicBool::new(true),
            open: AtomicBool::new(true),
            waiting: AtomicBool::new(false),
            in_proto: AtomicU32::new(0),
            rtt: AtomicU32::new(u32::MAX),
            outbox: Mutex::new(None),
            state: Mutex::new(state),
        }
    }

    /// Bytes waiting in the send queue.
    pub(super) fn outbox_bytes(&self) -> usize {
        lock(&self.outbox).as_ref().map_or(0, |o| o.queue.bytes())
    }

    pub(super) fn buffered_amount(&self) -> usize {
        self.in_proto.load(Ordering::Acquire) as usize + self.outbox_bytes()
    }

    pub(super) fn latency(&self) -> Option<Duration> {
        let rtt = self.rtt.load(Ordering::Relaxed);
        (rtt != u32::MAX).then(|| Duration::from_micros(u64::from(rtt)))
    }

    /// Records how many bytes the protocol holds for writing.
    fn sync_proto(&self, proto: &Connection) {
        let pending = u32::try_from(proto.pending_transmit()).unwrap_or(u32::MAX);
        self.in_proto.store(pending, Ordering::Release);
    }

    /// A handle's send: queued for the driver within `limits`, never waiting.
    pub(super) fn offer(self: &Arc<Self>, item: Outgoing, limits: &QueueLimits) -> Offer {
        if !self.open.load(Ordering::Acquire) {
            return Offer::Gone;
        }
        let mut outbox = lock(&self.outbox);
        let outbox = outbox.get_or_insert_with(Box::default);
        if outbox.close.is_some() {
            return Offer::Gone;
        }
        let was_empty = outbox.queue.is_empty();
        let outside = self.in_proto.load(Ordering::Acquire) as usize;
        let offer = outbox.queue.offer(item, outside, limits);
        if !outbox.queue.is_empty() || outbox.close.is_some() {
            self.waiting.store(true, Ordering::Release);
        }
        match offer {
            Offer::Queued { .. } if !was_empty => return offer,
            Offer::Queued { .. } => {}
            Offer::Closed { .. } => {
                outbox.close = Some(Box::new(Some(limits.slow_close_frame())));
                self.waiting.store(true, Ordering::Release);
                self.open.store(false, Ordering::Release);
            }
            Offer::Dropped | Offer::Gone => return offer,
        }
        self.clone().wake();
        offer
    }

    /// A handle's close: applied by the driver behind what was queued before.
    pub(super) fn request_close(self: &Arc<Self>, frame: Option<CloseFrame>) {
        let mut outbox = lock(&self.outbox);
        let outbox = outbox.get_or_insert_with(Box::default);
        if outbox.close.is_some() || !self.open.swap(false, Ordering::AcqRel) {
            return;
        }
        outbox.close = Some(Box::new(frame));
        self.waiting.store(true, Ordering::Release);
        self.clone().wake();
    }

    /// A callback's send, with the connection's state at hand: straight into the protocol
    /// when nothing waits before it, else behind what waits; the connection's send queue
    /// limits apply either way.
    pub(super) fn send_now(
        self: &Arc<Self>,
        st: &mut ConnState,
        item: Outgoing,
        config: &Config,
    ) -> Result<()> {
        if st.io.is_none() || st.proto.state() != State::Open {
            return Err(Error::Send(SendError::Closed));
        }
        let limits = &config.send_queue;
        let pending = st.proto.pending_transmit();
        let mut guard = self
            .waiting
            .load(Ordering::Acquire)
            .then(|| lock(&self.outbox));
        let waiting = (guard.as_mut().and_then(|g| g.as_deref_mut()))
            .filter(|outbox| !outbox.queue.is_empty() || outbox.close.is_some());
        let offer = match waiting {
            // Behind what waits.
            Some(outbox) => outbox.queue.offer(item, pending, limits),
            // Nothing of ours waits: straight into the protocol, if it fits.
            None => match core::Outbox::<Outgoing>::verdict_empty(item.wire_len(), pending, limits)
            {
                // Nothing could be evicted to make room: the newest goes out.
                None | Some(Overflow::DropOldest) => {
                    drop(guard);
                    item.send(&mut st.proto)?;
                    self.driver.traffic.sent_message();
                    self.sync_proto(&st.proto);
                    return Ok(());
                }
                Some(Overflow::DropNewest) => Offer::Dropped,
                Some(Overflow::Close) => Offer::Closed { discarded: 0 },
            },
        };
        drop(guard);
        if let Offer::Closed { .. } = offer {
            self.open.store(false, Ordering::Release);
            let _ = st.proto.close(Some(limits.slow_close_frame()));
        }
        offer_result(offer, limits)
    }

    /// A callback's close.
    pub(super) fn close_now(&self, st: &mut ConnState, frame: Option<CloseFrame>) -> Result<()> {
        if st.proto.state() == State::Open {
            st.proto.close(frame)?;
            self.open.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Hands what handles queued to the protocol, as much as the write limit allows, then the
    /// close a handle asked for once nothing waits before it. Returns whether anything moved.
    fn take_outbox(&self, proto: &mut Connection, config: &Config) -> bool {
        if !self.waiting.load(Ordering::Acquire) {
            return false;
        }
        let mut outbox = lock(&self.outbox);
        let Some(outbox) = outbox.as_deref_mut() else {
            self.waiting.store(false, Ordering::Release);
            return false;
        };
        let mut moved = false;
        while !must_drain(proto.pending_transmit(), config) {
            let Some(item) = outbox.queue.pop() else {
                break;
            };
            moved = true;
            // Errors: the connection started closing since; the message is dropped with it.
            if item.send(proto).is_ok() {
                self.driver.traffic.sent_message();
            }
        }
        if outbox.queue.is_empty() {
            if let Some(frame) = outbox.close.take() {
                moved = true;
                let _ = proto.close(*frame);
            }
            self.waiting.store(false, Ordering::Release);
        }
        moved
    }

    /// Frees the send queue if it is empty.
    fn release_outbox(&self) {
        let mut outbox = lock(&self.outbox);
        if outbox
            .as_ref()
            .is_some_and(|o| o.queue.is_empty() && o.close.is_none())
        {
            *outbox = None;
        }
    }

    /// Discards what waits (the connection is over).
    pub(super) fn clear_outbox(&self) {
        *lock(&self.outbox) = None;
        self.waiting.store(false, Ordering::Release);
    }
}

impl Wake for Driven {
    fn wake(self: Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let driver = self.driver.clone();
            driver.push(self, None);
        }
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.load(Ordering::Acquire) {
            self.clone().wake();
        }
    }
}

/// A connection's state, behind its lock (taken only by its driver). Small on purpose: idle
/// connections are what this model is for.
pub(super) struct ConnState {
    /// `None` once the connection is finished: dropping the transport also drops the wakers
    /// the runtime holds for it, which point back here.
    pub(super) io: Option<Io>,
    /// Also the write queue: written straight from with vectored writes.
    pub(super) proto: Connection,
    pub(super) id: u64,
    pub(super) timers: Timers,
    /// The peer's protocol violation and close frame, once there is one (rare: boxed).
    end: Option<Box<End>>,
    /// What the handshake request's extensions held, and what callbacks add (see
    /// [`Conn::extensions`]).
    pub(super) extensions: Extensions,
    /// The application's value for this connection (see [`Conn::data`]).
    pub(super) data: Option<Box<dyn Any + Send + Sync>>,
    /// Index in the driver's registry ([`NEW`] before the driver has seen it).
    pub(super) slot: u32,
    read_target: u32,
    /// The deadline the driver's timer queue holds for this connection.
    pub(super) armed: Micros,
    /// The application's timer ([`Conn::set_timer`]), [`NEVER`] when unset.
    pub(super) app_timer: Micros,
}

/// How a connection ends: what only a closing connection needs.
#[derive(Default)]
struct End {
    /// The peer's protocol violation (or transport error).
    error: Option<Error>,
    /// The peer's close frame, once received.
    peer_close: Option<Option<CloseFrame>>,
}

impl ConnState {
    pub(super) fn new(io: Io, proto: Connection, now: Micros, config: &Config) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            io: Some(io),
            proto,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            end: None,
            extensions: Extensions::new(),
            data: None,
            timers: Timers::new(now, config),
            slot: NEW,
            read_target: READ_TARGET as u32,
            armed: NEVER,
            app_timer: NEVER,
        }
    }

    /// Drops what the application kept with the connection (after `on_close`).
    pub(super) fn drop_data(&mut self) {
        self.extensions = Extensions::new();
        self.data = None;
    }

    /// Records a protocol violation found before the driver first ran the connection.
    pub(super) fn fail_with(&mut self, error: Error) {
        self.end.get_or_insert_with(Box::default).error = Some(error);
    }

    /// The TCP peer, else the address the upgraded request carried: a [`PeerAddr`]
    /// (crate::PeerAddr) from a `volley::Server`, or axum's `ConnectInfo`.
    pub(super) fn peer_addr(&self) -> Option<SocketAddr> {
        let from_socket = self.io.as_ref().and_then(Io::peer_addr);
        let from_request = || {
            let peer = self.extensions.get::<crate::PeerAddr>().map(|p| p.0);
            #[cfg(feature = "axum")]
            let peer = peer.or_else(|| {
                (self.extensions)
                    .get::<::axum::extract::ConnectInfo<SocketAddr>>()
                    .map(|info| info.0)
            });
            peer
        };
        from_socket.or_else(from_request)
    }

    fn is_open(&self) -> bool {
        self.proto.state() == State::Open
    }

    /// When the driver must look at this connection again without I/O ([`NEVER`]: only on I/O).
    pub(super) fn deadline(&self, config: &Config) -> Micros {
        let own = self.timers.deadline(self.is_open(), config);
        if self.is_open() {
            own.min(self.app_timer)
        } else {
            own
        }
    }

    /// Whether the application's timer is due (and the connection open): then it is cleared.
    pub(super) fn take_app_timer(&mut self, now: Micros) -> bool {
        if self.app_timer > now || !self.is_open() {
            return false;
        }
        self.app_timer = NEVER;
        true
    }

    /// Acts on whichever timer is due.
    pub(super) fn on_timer(&mut self, me: &Driven, now: Micros, config: &Config) {
        let expired = self.timers.handle_timeout(now, self.is_open(), config);
        if expired.release {
            self.proto.release_idle_buffers();
            me.release_outbox();
        }
        // Errors: the connection is no longer open (the timer then does nothing).
        let _ = match expired.action {
            Some(TimerAction::Ping(payload)) => self.proto.send(Message::Ping(payload)),
            Some(TimerAction::Close(frame)) => self.proto.close(Some(frame)),
            None => Ok(()),
        };
    }

    /// Runs the connection until it waits for I/O (`None`) or is over (`Some(result)`).
    pub(super) fn drive(
        &mut self,
        me: &Arc<Driven>,
        cx: &mut Context<'_>,
        now: Micros,
        callbacks: &dyn Callbacks,
        config: &Config,
    ) -> Option<Result<Option<CloseFrame>>> {
        let mut reads = 0;
        loop {
            while let Some(event) = self.proto.poll_event() {
                match event {
                    Message::Text(_) | Message::Binary(_) => {
                        me.driver.traffic.received_message();
                        let mut conn = Conn {
                            st: self,
                            config,
                            me,
                            request: None,
                        };
                        let call = || callbacks.on_message(&mut conn, event);
                        if std::panic::catch_unwind(AssertUnwindSafe(call)).is_err() {
                            self.fail_callback();
                        }
                    }
                    Message::Ping(_) => {}
                    Message::Pong(payload) => {
                        if let Some(rtt) = self.timers.on_pong(&payload, now, config) {
                            let us = u32::try_from(rtt.as_micros()).unwrap_or(u32::MAX - 1);
                            me.rtt.store(us, Ordering::Relaxed);
                        }
                    }
                    Message::Close(frame) => {
                        self.end.get_or_insert_with(Box::default).peer_close = Some(frame)
                    }
                }
            }
            me.take_outbox(&mut self.proto, config);
            let state = self.proto.state();
            if state != State::Open {
                me.open.store(false, Ordering::Release);
                self.timers.on_closing(now, config);
            }
            if self.timers.close_overdue(now) {
                return Some(Err(Error::Timeout(Timeout::Close)));
            }
            let io = self.io.as_mut()?;
            let pending = self.proto.pending_transmit();
            let flushed = pending == 0
                || match poll_write_all(Pin::new(&mut *io), &mut self.proto, cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => return Some(Err(e.into())),
                    Poll::Pending => false,
                };
            let written = pending.saturating_sub(self.proto.pending_transmit());
            me.driver.traffic.sent_bytes(written);
            me.sync_proto(&self.proto);
            if self.timers.abandoned() {
                return Some(Err(Error::KeepaliveTimeout));
            }
            if matches!(state, State::Closed | State::Failed) {
                if !flushed {
                    // The close timeout bounds how long the last frames may take.
                    return None;
                }
                // The close handshake is over: the server closes the TCP connection first
                // (RFC 6455 §7.1.1). Best effort: dropping the transport closes it anyway.
                let _ = Pin::new(io).poll_shutdown(cx);
                let end = self.end.take().map(|end| *end).unwrap_or_default();
                return Some(match state {
                    State::Failed => Err(end.error.unwrap_or(Error::AbnormalClose)),
                    _ => Ok(end.peer_close.flatten()),
                });
            }
            if reads < READ_BUDGET && flushed && me.take_outbox(&mut self.proto, config) {
                // Handles queued more than one write's worth: write the next part (within the
                // turn's budget, so that a flood of handle sends cannot starve the others).
                reads += 1;
                continue;
            }
            if !flushed && must_drain(self.proto.pending_transmit(), config) {
                // Backpressure: read again once the queue drains.
                return None;
            }
            if reads == READ_BUDGET {
                // Its own wake, not the context's: a connection in a driver thread's poll runs
                // with a waker that does nothing (see `Driver::run_conn`).
                Wake::wake_by_ref(me);
                return None;
            }
            let mut error = None;
            let mut target = self.read_target as usize;
            let warm = self.timers.warm();
            let read = poll_fill(
                &mut self.proto,
                Pin::new(io),
                &mut error,
                &mut target,
                warm,
                cx,
            );
            self.read_target = target as u32;
            if let Some(e) = error {
                self.end.get_or_insert_with(Box::default).error = Some(e);
            }
            match read {
                Poll::Pending => return None,
                Poll::Ready(Ok(0)) => return Some(Err(Error::AbnormalClose)),
                Poll::Ready(Ok(n)) => {
                    reads += 1;
                    me.driver.traffic.received_bytes(n);
                    self.timers.on_read(now);
                }
                Poll::Ready(Err(e)) => return Some(Err(e.into())),
            }
        }
    }

    /// A callback panicked: fail the connection with 1011.
    pub(super) fn fail_callback(&mut self) {
        tracing::error!(id = self.id, "callback panicked: closing the connection");
        if self.proto.state() == State::Open {
            let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "handler failed");
            let _ = self.proto.close(Some(frame));
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
#[cfg(test)]
mod tests {
    /// Idle memory is a measured goal (docs/PERFORMANCE.md, ≤ 512 B per connection): the
    /// connection's allocation must not grow unnoticed. 376 since the protocol's connection
    /// packs its frame state and fragment size (224 B): the `Arc` (392 B) fits glibc's 400-byte
    /// chunk (it took the 416-byte one at 392).
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn an_idle_connection_stays_small() {
        let size = std::mem::size_of::<super::Driven>();
        assert!(size <= 376, "Driven is {size} bytes");
        assert_eq!(std::mem::size_of::<super::Io>(), 16);
    }
}
