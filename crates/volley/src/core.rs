//! The per-connection core: what every live connection needs besides the frame codec, written
//! once for both drivers ([`task`](crate::task) and [`callback`](crate::callback)).
//!
//! Sans-IO like the protocol core below it: no sockets, no tasks, no clock. Time is an argument
//! ([`Micros`] on a monotonic clock the driver reads), so every rule here is tested with a fake
//! clock in this module's tests. The drivers only move bytes and call these.
//!
//! - [`Timers`]: keep-alive pings and the pong deadline, the idle timeout, the close deadline
//!   and the release of idle buffers; one deadline at a time ([`Timers::deadline`]) and what to
//!   do when it passes ([`Timers::handle_timeout`]).
//! - [`Outbox`]: a bounded queue of messages waiting for a connection, with the [`Overflow`]
//!   policy applied when it is full. Handles of callback connections and hub members queue into
//!   one; `buffered_amount` counts it exactly.
//! - [`must_drain`]: the write-limit rule (backpressure).
//! - [`Shutdown`]: the server's shutdown state, which both drivers consult when a connection opens.

use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use volley_proto::{CloseCode, CloseFrame};

use crate::config::{Config, Overflow, QueueLimits};

/// Microseconds on the process's monotonic clock ([`now`]).
pub(crate) type Micros = u64;

/// A time that never comes.
pub(crate) const NEVER: Micros = u64::MAX;

/// How long after its last read a connection keeps its buffers; then empty ones are freed, so an
/// idle connection costs little memory.
pub(crate) const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// The instant every [`Micros`] counts from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The current time in [`Micros`] (tokio's clock, so paused-time tests see it move).
pub(crate) fn now() -> Micros {
    micros(Instant::now())
}

/// `at` in [`Micros`] (saturating below [`NEVER`]).
pub(crate) fn micros(at: Instant) -> Micros {
    let since = at.saturating_duration_since(epoch()).as_micros();
    u64::try_from(since).unwrap_or(NEVER - 1).min(NEVER - 1)
}

/// The instant of `at` (for arming a runtime timer).
pub(crate) fn instant(at: Micros) -> Instant {
    epoch() + Duration::from_micros(at)
}

/// `now + d`, rounded up (a timer never fires early), or [`NEVER`] for no duration.
pub(crate) fn after(now: Micros, d: Option<Duration>) -> Micros {
    match d {
        Some(d) => {
            let us = d.as_nanos().div_ceil(1000).min(u128::from(NEVER / 2)) as u64;
            now.saturating_add(us).min(NEVER - 1)
        }
        None => NEVER,
    }
}

/// The payload of a keep-alive ping: its send time (8 bytes, big-endian). One ping waits for its
/// pong at a time, so the time tells them apart, and a pong carries back when its ping left.
fn ping_payload(sent: Micros) -> Bytes {
    Bytes::copy_from_slice(&sent.to_be_bytes())
}

/// What a timer that fell due asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TimerAction {
    /// Send this keep-alive ping.
    Ping(Bytes),
    /// Start the close handshake with this frame: the idle timeout passed (1000), or the peer
    /// did not answer a ping in time (1011, and [`Timers::abandoned`] is set).
    Close(CloseFrame),
}

/// What [`Timers::handle_timeout`] found due.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Expired {
    /// Free the connection's empty buffers.
    pub(crate) release: bool,
    pub(crate) action: Option<TimerAction>,
}

/// The timers of one connection. A connection is either open (keep-alive and idle timers
/// apply) or closing (only the close deadline and buffer release do).
///
/// Small on purpose (24 bytes): every idle connection holds one. Two facts keep it so: buffers
/// are released a fixed time after the last read, so that deadline needs no field of its own;
/// and once the connection is closing, keep-alive no longer applies, so the ping's time holds
/// the close deadline.
#[derive(Debug, Clone)]
pub(crate) struct Timers {
    last_read: Micros,
    /// Open: when the next keep-alive ping is due ([`Ping::Scheduled`]), or when the one awaiting
    /// its pong was sent ([`Ping::Waiting`]). Closing: when the close handshake must be over.
    at: Micros,
    ping: Ping,
    /// The connection may hold buffers to release [`RELEASE_AFTER`] the last read.
    holds_buffers: bool,
    /// The close deadline is set (`at` holds it).
    closing: bool,
    /// Something was read since the buffers were last released (or since the connection
    /// opened): reads are coming one after another.
    warm: bool,
}

/// Where the keep-alive ping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    /// The next ping goes out at [`Timers::at`].
    Scheduled,
    /// The ping sent at [`Timers::at`] awaits its pong; the next goes out an interval after it
    /// was sent, once the pong is in.
    Waiting,
    /// The peer did not answer in time: close without waiting for its reply.
    Abandoned,
}

impl Timers {
    /// The timers of a connection that opened at `now`.
    pub(crate) fn new(now: Micros, config: &Config) -> Self {
        Self {
            last_read: now,
            at: after(now, config.ping_interval),
            ping: Ping::Scheduled,
            // The handshake may have left buffers behind: release them if nothing follows.
            holds_buffers: true,
            closing: false,
            warm: false,
        }
    }

    /// Whether the connection read since its buffers were last released (or since it opened):
    /// a read now is likely followed by more, so a read buffer is worth keeping.
    pub(crate) fn warm(&self) -> bool {
        self.warm
    }

    /// When buffers are released, if the connection may hold any.
    fn release_at(&self) -> Micros {
        match self.holds_buffers {
            true => after(self.last_read, Some(RELEASE_AFTER)),
            false => NEVER,
        }
    }

    /// When the close handshake must be over ([`NEVER`] while open).
    fn close_at(&self) -> Micros {
        if self.closing { self.at } else { NEVER }
    }

    /// Bytes arrived at `now`.
    pub(crate) fn on_read(&mut self, now: Micros) {
        self.last_read = now;
        self.holds_buffers = true;
        self.warm = true;
    }

    /// A pong arrived at `now`: if it answers our keep-alive ping, schedules the next one and
    /// returns the round trip.
    pub(crate) fn on_pong(
        &mut self,
        payload: &[u8],
        now: Micros,
        config: &Config,
    ) -> Option<Duration> {
        if self.closing || self.ping != Ping::Waiting || payload != self.at.to_be_bytes() {
            return None;
        }
        let sent = self.at;
        self.ping = Ping::Scheduled;
        self.at = after(sent, config.ping_interval);
        Some(Duration::from_micros(now.saturating_sub(sent)))
    }

    /// The connection is no longer open (a close frame was queued or received, or it failed):
    /// starts the close deadline, once.
    pub(crate) fn on_closing(&mut self, now: Micros, config: &Config) {
        if !self.closing {
            self.closing = true;
            self.at = after(now, Some(config.close_timeout));
        }
    }

    /// Whether the close handshake took longer than the close timeout.
    pub(crate) fn close_overdue(&self, now: Micros) -> bool {
        self.close_at() <= now
    }

    /// Whether the peer stopped answering pings: the driver closes the transport after our close
    /// frame is out (or the close deadline passed) without waiting for the peer's reply, and
    /// reports [`Error::KeepaliveTimeout`](crate::Error::KeepaliveTimeout).
    pub(crate) fn abandoned(&self) -> bool {
        self.ping == Ping::Abandoned
    }

    /// When the driver must call [`handle_timeout`](Self::handle_timeout) if no I/O happens
    /// first ([`NEVER`]: only I/O matters).
    pub(crate) fn deadline(&self, open: bool, config: &Config) -> Micros {
        if !open || self.closing {
            // Closing: keep-alive and idle timers no longer apply (`handle_timeout` ignores
            // them, so a due one would fire again and again).
            return self.close_at().min(self.release_at());
        }
        let ping = match self.ping {
            Ping::Scheduled => self.at,
            Ping::Waiting => after(self.at, config.ping_timeout),
            Ping::Abandoned => NEVER,
        };
        let idle = after(self.last_read, config.idle_timeout);
        [self.release_at(), ping, idle]
            .into_iter()
            .min()
            .unwrap_or(NEVER)
    }

    /// Acts on whatever is due at `now`. A timer that is not due changes nothing, so a driver
    /// woken early may call it freely.
    pub(crate) fn handle_timeout(&mut self, now: Micros, open: bool, config: &Config) -> Expired {
        let mut expired = Expired::default();
        if self.release_at() <= now {
            self.holds_buffers = false;
            self.warm = false;
            expired.release = true;
        }
        if !open || self.closing {
            return expired;
        }
        let pong_overdue = self.ping == Ping::Waiting && after(self.at, config.ping_timeout) <= now;
        if pong_overdue {
            self.ping = Ping::Abandoned;
            let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "keepalive ping timeout");
            expired.action = Some(TimerAction::Close(frame));
        } else if after(self.last_read, config.idle_timeout) <= now {
            self.last_read = now;
            let frame = CloseFrame::new(CloseCode::NORMAL, "idle timeout");
            expired.action = Some(TimerAction::Close(frame));
        } else if self.ping == Ping::Scheduled && self.at <= now {
            self.ping = Ping::Waiting;
            self.at = now;
            expired.action = Some(TimerAction::Ping(ping_payload(now)));
        }
        expired
    }
}

/// Whether a connection with `pending` bytes waiting to be written is past the write limit:
/// the driver then writes before it reads again (backpressure through TCP) and moves nothing
/// more from an [`Outbox`] into the protocol's queue.
pub(crate) fn must_drain(pending: usize, config: &Config) -> bool {
    pending > config.write_limit
}

/// A message waiting in an [`Outbox`]: it knows its size on the wire.
pub(crate) trait Queued {
    /// Bytes it takes on the wire (frame header included).
    fn wire_len(&self) -> usize;
}

/// What happened to a message offered to a bounded queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued; `evicted` older messages were discarded to make room ([`Overflow::DropOldest`]).
    Queued {
        /// Older messages discarded for it.
        evicted: usize,
    },
    /// Not queued: the queue was full ([`Overflow::DropNewest`]).
    Dropped,
    /// Not queued: the queue was full and the consumer is being closed for slowness
    /// ([`Overflow::Close`]); `discarded` messages that waited were discarded with it.
    Closed {
        /// Messages that waited in the queue and were discarded.
        discarded: usize,
    },
    /// Not queued: the connection is closing or gone.
    Gone,
}

impl Offer {
    /// Whether the message was queued.
    pub fn is_queued(self) -> bool {
        matches!(self, Self::Queued { .. })
    }

    /// Messages this offer lost: the offered one if it was not queued (unless the consumer was
    /// already gone), plus those discarded for it.
    pub fn lost(self) -> usize {
        match self {
            Self::Queued { evicted } => evicted,
            Self::Dropped => 1,
            Self::Closed { discarded } => discarded + 1,
            Self::Gone => 0,
        }
    }
}

/// A bounded queue of messages for one connection.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    items: VecDeque<T>,
    /// Wire bytes of `items`.
    bytes: usize,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            bytes: 0,
        }
    }
}

impl<T: Queued> Outbox<T> {
    /// Wire bytes waiting.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether `size` more bytes fit, with `outside` bytes already queued for the connection
    /// beyond this queue (its protocol's transmit queue). A message larger than the byte limit
    /// still fits when nothing at all waits, so any message can be sent.
    fn fits(&self, size: usize, outside: usize, limits: &QueueLimits) -> bool {
        let total = outside.saturating_add(self.bytes);
        self.items.len() < limits.max_messages
            && (total == 0 || total.saturating_add(size) <= limits.max_bytes)
    }

    /// `None` if a message of `size` bytes fits, else the policy that applies to it.
    fn verdict(&self, size: usize, outside: usize, limits: &QueueLimits) -> Option<Overflow> {
        (!self.fits(size, outside, limits)).then_some(limits.overflow)
    }

    /// [`verdict`](Self::verdict) for an empty queue (one that need not exist yet).
    pub(crate) fn verdict_empty(
        size: usize,
        outside: usize,
        limits: &QueueLimits,
    ) -> Option<Overflow> {
        Self::default().verdict(size, outside, limits)
    }

    /// Queues `item` within `limits`, applying their overflow policy if it does not fit. Under
    /// [`Overflow::Close`] the queue is emptied: the caller must close the connection with
    /// [`QueueLimits::slow_close_code`].
    pub(crate) fn offer(&mut self, item: T, outside: usize, limits: &QueueLimits) -> Offer {
        let size = item.wire_len();
        match self.verdict(size, outside, limits) {
            None => {
                self.push(item);
                Offer::Queued { evicted: 0 }
            }
            Some(Overflow::DropNewest) => Offer::Dropped,
            Some(Overflow::DropOldest) => {
                let mut evicted = 0;
                while !self.fits(size, outside, limits) && self.pop().is_some() {
                    evicted += 1;
                }
                // Bytes outside this queue cannot be discarded: the newest message is kept
                // even if they alone exceed the limit.
                self.push(item);
                Offer::Queued { evicted }
            }
            Some(Overflow::Close) => Offer::Closed {
                discarded: self.clear(),
            },
        }
    }

    /// Queues `item` whatever the limits (a message the connection's own code sends while the
    /// queue is already in use, counted against the next offer).
    pub(crate) fn push(&mut self, item: T) {
        self.bytes += item.wire_len();
        self.items.push_back(item);
    }

    /// The oldest message.
    pub(crate) fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.bytes -= item.wire_len();
        Some(item)
    }

    /// Empties the queue, returning how many messages it held; frees its memory.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.items.len();
        self.items = VecDeque::new();
        self.bytes = 0;
        n
    }
}

impl Queued for volley_proto::PreparedMessage {
    fn wire_len(&self) -> usize {
        self.frame().len()
    }
}

impl Queued for volley_proto::Message {
    fn wire_len(&self) -> usize {
        let payload = match self {
            Self::Text(text) => text.len(),
            Self::Binary(data) | Self::Ping(data) | Self::Pong(data) => data.len(),
            Self::Close(frame) => frame.as_ref().map_or(0, |f| 2 + f.reason.len()),
        };
        // A server frame's header (a client's adds its 4-byte mask: close enough for a limit).
        let header = match payload {
            0..=125 => 2,
            126..=65535 => 4,
            _ => 10,
        };
        header + payload
    }
}

/// The server's shutdown state: once begun, every connection that opens is closed with its frame
/// (both drivers check it when a connection opens, so one accepted just as shutdown began is not
/// missed).
#[derive(Debug, Default)]
pub(crate) struct Shutdown {
    frame: OnceLock<CloseFrame>,
}

impl Shutdown {
    /// Begins the shutdown with `frame` (the first call wins).
    pub(crate) fn begin(&self, frame: CloseFrame) {
        let _ = self.frame.set(frame);
    }

    /// The close frame of a shutdown that began.
    pub(crate) fn frame(&self) -> Option<&CloseFrame> {
        self.frame.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Micros = 1000;
    const S: Micros = 1000 * MS;

    fn config() -> Config {
        Config::default()
            .ping_interval(Some(Duration::from_secs(20)))
            .ping_timeout(Some(Duration::from_secs(10)))
            .idle_timeout(None)
            .close_timeout(Duration::from_secs(5))
    }

    #[test]
    fn times_round_up_and_saturate() {
        assert_eq!(after(10, None), NEVER);
        assert_eq!(after(10, Some(Duration::from_nanos(1))), 11);
        assert_eq!(after(10, Some(Duration::from_millis(5))), 10 + 5 * MS);
        assert!(after(NEVER - 5, Some(Duration::MAX)) < NEVER);
        let at = instant(1234 * MS);
        assert_eq!(micros(at), 1234 * MS);
    }

    #[test]
    fn buffers_are_released_a_second_after_the_last_read() {
        let config = config();
        let mut t = Timers::new(0, &config);
        assert_eq!(t.deadline(true, &config), S);
        assert!(!t.warm(), "nothing read yet");
        t.on_read(500 * MS);
        assert!(t.warm());
        assert_eq!(t.deadline(true, &config), 1500 * MS);
        assert_eq!(
            t.handle_timeout(1499 * MS, true, &config),
            Expired::default()
        );
        let due = t.handle_timeout(1500 * MS, true, &config);
        assert!(due.release && due.action.is_none());
        assert!(!t.warm(), "idle again");
        // Released once; the next deadline is the keep-alive ping.
        assert_eq!(t.deadline(true, &config), 20 * S);
    }

    #[test]
    fn keepalive_pings_on_schedule_and_records_the_round_trip() {
        let config = config();
        let mut t = Timers::new(0, &config);
        t.handle_timeout(S, true, &config);
        assert_eq!(t.deadline(true, &config), 20 * S);
        let Some(TimerAction::Ping(payload)) = t.handle_timeout(20 * S, true, &config).action
        else {
            panic!("no ping at the interval");
        };
        // The pong deadline (10 s).
        assert_eq!(t.deadline(true, &config), 30 * S);
        assert_eq!(t.on_pong(b"not ours", 20 * S + 3 * MS, &config), None);
        let rtt = t.on_pong(&payload, 20 * S + 7 * MS, &config);
        assert_eq!(rtt, Some(Duration::from_millis(7)));
        assert_eq!(
            t.on_pong(&payload, 20 * S + 8 * MS, &config),
            None,
            "answered once"
        );
        // The next ping, an interval after this one was sent.
        assert_eq!(t.deadline(true, &config), 40 * S);
        let Some(TimerAction::Ping(next)) = t.handle_timeout(40 * S, true, &config).action else {
            panic!("no second ping");
        };
        assert_ne!(payload, next, "each ping has its own payload");
    }

    #[test]
    fn an_unanswered_ping_fails_the_connection_with_1011_and_abandons_it() {
        let config = config();
        let mut t = Timers::new(0, &config);
        t.handle_timeout(S, true, &config);
        assert!(matches!(
            t.handle_timeout(20 * S, true, &config).action,
            Some(TimerAction::Ping(_))
        ));
        // Reads keep coming (the peer sends but never answers pings): the deadline stands.
        t.on_read(25 * S);
        assert_eq!(t.handle_timeout(29 * S, true, &config).action, None);
        let Some(TimerAction::Close(frame)) = t.handle_timeout(30 * S, true, &config).action else {
            panic!("no close at the pong deadline");
        };
        assert_eq!(frame.code, CloseCode::INTERNAL_ERROR);
        assert!(t.abandoned());
        // Closing: the close deadline now governs.
        t.on_closing(30 * S, &config);
        assert_eq!(t.deadline(false, &config), 35 * S);
        assert!(!t.close_overdue(35 * S - 1));
        assert!(t.close_overdue(35 * S));
    }

    #[test]
    fn no_second_ping_while_one_waits_and_a_late_pong_brings_the_next_at_once() {
        let config = config()
            .ping_interval(Some(Duration::from_secs(5)))
            .ping_timeout(Some(Duration::from_secs(12)));
        let mut t = Timers::new(0, &config);
        t.handle_timeout(S, true, &config);
        let Some(TimerAction::Ping(payload)) = t.handle_timeout(5 * S, true, &config).action else {
            panic!("no ping");
        };
        assert_eq!(t.handle_timeout(10 * S, true, &config).action, None);
        assert_eq!(t.deadline(true, &config), 17 * S, "the pong deadline");
        // Answered after the interval: the next ping is due at once.
        assert!(t.on_pong(&payload, 11 * S, &config).is_some());
        assert_eq!(t.deadline(true, &config), 10 * S);
        assert!(matches!(
            t.handle_timeout(11 * S, true, &config).action,
            Some(TimerAction::Ping(_))
        ));
        // Unanswered: 1011 at its deadline.
        assert!(matches!(
            t.handle_timeout(23 * S, true, &config).action,
            Some(TimerAction::Close(_))
        ));
    }

    #[test]
    fn timers_stay_small() {
        assert!(std::mem::size_of::<Timers>() <= 24);
    }

    #[test]
    fn idle_timeout_closes_with_1000_after_silence_only() {
        let config = config()
            .ping_interval(None)
            .idle_timeout(Some(Duration::from_secs(30)));
        let mut t = Timers::new(0, &config);
        t.handle_timeout(S, true, &config);
        assert_eq!(t.deadline(true, &config), 30 * S);
        t.on_read(20 * S);
        t.handle_timeout(21 * S, true, &config);
        assert_eq!(t.handle_timeout(30 * S, true, &config).action, None);
        let Some(TimerAction::Close(frame)) = t.handle_timeout(50 * S, true, &config).action else {
            panic!("no idle close");
        };
        assert_eq!(frame.code, CloseCode::NORMAL);
        assert!(!t.abandoned());
    }

    #[test]
    fn a_closing_connection_ignores_keepalive_and_idle_timers() {
        let config = config().idle_timeout(Some(Duration::from_secs(1)));
        let mut t = Timers::new(0, &config);
        t.on_closing(0, &config);
        // Before: a due keep-alive timer during the close handshake made a driver spin.
        assert_eq!(t.deadline(false, &config), S);
        let due = t.handle_timeout(2 * S, false, &config);
        assert!(due.release && due.action.is_none());
        assert_eq!(t.deadline(false, &config), 5 * S);
        // The close deadline starts once.
        t.on_closing(4 * S, &config);
        assert_eq!(t.deadline(false, &config), 5 * S);
    }

    #[test]
    fn no_timers_without_keepalive_idle_or_buffers() {
        let config = config().ping_interval(None);
        let mut t = Timers::new(0, &config);
        t.handle_timeout(S, true, &config);
        assert_eq!(t.deadline(true, &config), NEVER);
    }

    struct Msg(usize);

    impl Queued for Msg {
        fn wire_len(&self) -> usize {
            self.0
        }
    }

    fn limits(overflow: Overflow) -> QueueLimits {
        QueueLimits::default()
            .overflow(overflow)
            .max_bytes(100)
            .max_messages(4)
    }

    #[test]
    fn outbox_takes_what_fits_and_counts_bytes() {
        let mut q = Outbox::default();
        let l = limits(Overflow::DropNewest);
        assert_eq!(q.offer(Msg(40), 0, &l), Offer::Queued { evicted: 0 });
        assert_eq!(q.offer(Msg(40), 0, &l), Offer::Queued { evicted: 0 });
        assert_eq!(q.bytes(), 80);
        assert_eq!(q.offer(Msg(40), 0, &l), Offer::Dropped);
        // Bytes already in the protocol's queue count too.
        assert_eq!(q.pop().map(|m| m.0), Some(40));
        assert_eq!(q.offer(Msg(40), 30, &l), Offer::Dropped);
        assert_eq!(q.offer(Msg(40), 20, &l), Offer::Queued { evicted: 0 });
        assert_eq!((q.len(), q.bytes()), (2, 80));
    }

    #[test]
    fn outbox_message_limit_applies() {
        let mut q = Outbox::default();
        let l = limits(Overflow::DropNewest).max_bytes(1 << 20);
        for _ in 0..4 {
            assert!(q.offer(Msg(1), 0, &l).is_queued());
        }
        assert_eq!(q.offer(Msg(1), 0, &l), Offer::Dropped);
    }

    #[test]
    fn a_message_larger_than_the_limit_fits_an_empty_connection_only() {
        let mut q = Outbox::default();
        let l = limits(Overflow::DropNewest);
        assert_eq!(q.offer(Msg(500), 0, &l), Offer::Queued { evicted: 0 });
        assert_eq!(q.offer(Msg(1), 0, &l), Offer::Dropped);
        let mut q = Outbox::default();
        assert_eq!(q.offer(Msg(500), 1, &l), Offer::Dropped);
    }

    #[test]
    fn drop_oldest_evicts_until_the_new_message_fits() {
        let mut q = Outbox::default();
        let l = limits(Overflow::DropOldest);
        for size in [30, 30, 30] {
            q.offer(Msg(size), 0, &l);
        }
        assert_eq!(q.offer(Msg(50), 0, &l), Offer::Queued { evicted: 2 });
        assert_eq!((q.len(), q.bytes()), (2, 80));
        // What the protocol holds cannot be evicted: the newest is kept regardless.
        assert_eq!(q.offer(Msg(50), 100, &l), Offer::Queued { evicted: 2 });
        assert_eq!((q.len(), q.bytes()), (1, 50));
    }

    #[test]
    fn close_policy_discards_the_queue() {
        let mut q = Outbox::default();
        let l = limits(Overflow::Close);
        q.offer(Msg(60), 0, &l);
        assert_eq!(q.offer(Msg(60), 0, &l), Offer::Closed { discarded: 1 });
        assert!(q.is_empty());
        assert_eq!(q.bytes(), 0);
        assert_eq!(Offer::Closed { discarded: 1 }.lost(), 2);
    }

    #[test]
    fn wire_length_of_messages_includes_the_header() {
        use volley_proto::Message;
        assert_eq!(Message::text("hi").wire_len(), 4);
        assert_eq!(Message::binary(vec![0; 200]).wire_len(), 204);
        assert_eq!(Message::binary(vec![0; 70_000]).wire_len(), 70_010);
        let prepared = volley_proto::PreparedMessage::text("hello");
        assert_eq!(prepared.wire_len(), 7);
    }

    #[test]
    fn write_limit_rule() {
        let config = Config::default().write_limit(10);
        assert!(!must_drain(10, &config));
        assert!(must_drain(11, &config));
    }

    #[test]
    fn shutdown_keeps_the_first_frame() {
        let s = Shutdown::default();
        assert!(s.frame().is_none());
        s.begin(CloseFrame::new(CloseCode::GOING_AWAY, "a"));
        s.begin(CloseFrame::new(CloseCode::NORMAL, "b"));
        assert_eq!(s.frame().map(|f| f.code), Some(CloseCode::GOING_AWAY));
    }
}
