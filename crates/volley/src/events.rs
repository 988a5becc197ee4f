//! Connections driven by callbacks instead of a task each: the lightest way to hold many
//! mostly idle WebSocket connections.
//!
//! [`Server::events`](crate::Server::events) routes a request path to a [`Handler`]. Those
//! connections get no task of their own: a few driver tasks (one per runtime worker) run every
//! connection's reads, writes and timers and call the handler for each message. An idle
//! connection then costs its protocol state, its socket's registration with the runtime and a
//! few words in the driver — under 1 KiB, against ~2.5 KiB for a connection served by a task
//! (docs/PERFORMANCE.md).
//!
//! ```no_run
//! use volley::events::{Conn, Handler};
//! use volley::Message;
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
//!         // Queued: the driver writes it when the callback returns.
//!         let _ = conn.send(message);
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let server = volley::Server::bind("127.0.0.1:9001").await?.events("/", Echo);
//! // Paths without an events handler get the task-per-connection handler.
//! server.serve(|_ws, _request| async {}).await
//! # }
//! ```
//!
//! What the driver does for every connection, as [`WebSocket::recv`](crate::WebSocket::recv)
//! does for a task: pings are answered and the close handshake completed; keep-alive pings,
//! the pong deadline, the idle timeout and the close timeout of the [`Config`] apply; empty
//! buffers are freed one second after the last read. Sending queues the message, and everything
//! queued for a connection in one step goes out in one system call. While more than
//! [`Config::write_limit`] bytes wait to be written the connection is not read, so a peer that
//! sends without reading is slowed down by TCP instead of growing the queue.
//!
//! Callbacks run on the driver's task, one at a time per driver: they must not block or wait.
//! A callback that panics fails only its own connection (close code 1011).
//!
//! [`Handler::on_open`] sees the handshake request ([`Conn::request`]: path, query, headers);
//! what the request's extensions held (the [`Subprotocol`](crate::Subprotocol), state put there
//! by the [`Policy`](crate::Policy) auth hook) stays with the connection as its
//! [`extensions`](Conn::extensions), where callbacks keep per-connection data too. To send to a
//! connection from elsewhere (another connection's callback, another task or thread), keep its
//! [`ConnHandle`] ([`Conn::handle`]). A chat room:
//!
//! ```no_run
//! use std::sync::Mutex;
//! use volley::events::{Conn, ConnHandle, Handler};
//! use volley::{CloseFrame, Message, PreparedMessage};
//!
//! #[derive(Default)]
//! struct Room(Mutex<Vec<ConnHandle>>);
//!
//! impl Handler for Room {
//!     fn on_open(&self, conn: &mut Conn<'_>) {
//!         self.0.lock().unwrap().push(conn.handle());
//!     }
//!
//!     fn on_message(&self, _conn: &mut Conn<'_>, message: Message) {
//!         let Message::Text(text) = message else { return };
//!         // Encoded once; every member's queue shares the frame.
//!         let prepared = PreparedMessage::text(text);
//!         for member in self.0.lock().unwrap().iter() {
//!             let _ = member.send_prepared(&prepared);
//!         }
//!     }
//!
//!     fn on_close(&self, conn: &mut Conn<'_>, _result: volley::Result<Option<CloseFrame>>) {
//!         let id = conn.id();
//!         self.0.lock().unwrap().retain(|member| member.id() != id);
//!     }
//! }
//! ```

use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use http::{Extensions, Request};
use tokio::io::AsyncWrite;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::{Instant, Sleep};
use volley_proto::{
    CloseCode, CloseFrame, Connection, DeflateParams, Message, PreparedMessage, Role, SendError,
    State,
};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::maybe_tls::MaybeTlsStream;
use crate::stream::{READ_TARGET, RELEASE_AFTER, poll_fill, poll_write_all};

/// Reads one connection may take in one turn before the others get theirs.
const READ_BUDGET: usize = 16;

/// Callbacks for the connections of an events route ([`Server::events`](crate::Server::events)).
///
/// Every method runs on a driver task shared by many connections: return quickly, never block.
pub trait Handler: Send + Sync + 'static {
    /// A connection completed its opening handshake. Messages sent here go out first.
    fn on_open(&self, conn: &mut Conn<'_>) {
        let _ = conn;
    }

    /// A text or binary message arrived (pings, pongs and close frames are handled by the
    /// driver).
    fn on_message(&self, conn: &mut Conn<'_>, message: Message);

    /// The connection is over, called once per opened connection: `Ok` with the peer's close
    /// frame (`None` when it carried no status code) after a completed close handshake; `Err`
    /// when it failed: protocol violation, transport error, 1006, keep-alive or close timeout,
    /// or a server shutdown whose drain deadline passed. `conn` still has its
    /// [`id`](Conn::id) and [`extensions`](Conn::extensions); sending on it fails.
    fn on_close(&self, conn: &mut Conn<'_>, result: Result<Option<CloseFrame>>) {
        let _ = (conn, result);
    }
}

/// A shared handler: keep an `Arc` of the handler's state in the application and give the
/// server a clone.
impl<H: Handler> Handler for Arc<H> {
    fn on_open(&self, conn: &mut Conn<'_>) {
        (**self).on_open(conn);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        (**self).on_message(conn, message);
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: Result<Option<CloseFrame>>) {
        (**self).on_close(conn, result);
    }
}

/// A connection, lent to a [`Handler`] callback.
pub struct Conn<'a> {
    st: &'a mut ConnState,
    config: &'a Config,
    me: &'a Arc<Driven>,
    /// The handshake request, during [`Handler::on_open`] only.
    request: Option<&'a Request<()>>,
}

impl std::fmt::Debug for Conn<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.st.id)
            .field("state", &self.st.proto.state())
            .finish_non_exhaustive()
    }
}

impl Conn<'_> {
    /// This connection's identifier, unique within the process (as passed to
    /// [`Handler::on_close`]).
    pub fn id(&self) -> u64 {
        self.st.id
    }

    /// Queues a message; the driver writes it when the callback returns. Fails once the
    /// connection is closing. Never waits: check [`buffered_amount`](Self::buffered_amount)
    /// before sending much more than you receive.
    pub fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        self.st.proto.send(message.into())?;
        Ok(())
    }

    /// Queues a message encoded once for many connections; its frame bytes are shared, not
    /// copied. Like [`send`](Self::send).
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        self.st.proto.send_prepared(message)?;
        Ok(())
    }

    /// Starts the close handshake with `frame` (once; later calls do nothing). Messages queued
    /// before it still go out; [`Handler::on_close`] follows the peer's reply or the close
    /// timeout.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        if self.st.proto.state() == State::Open {
            self.st.proto.close(frame)?;
        }
        Ok(())
    }

    /// Bytes queued and not yet written.
    pub fn buffered_amount(&self) -> usize {
        self.st.buffered()
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.st.proto.state()
    }

    /// The permessage-deflate parameters in force, if compression was negotiated.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.st.proto.deflate().copied()
    }

    /// The peer's address, if the transport still knows it.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.st.io.as_ref()?.tcp().peer_addr().ok()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        self.config
    }

    /// The opening handshake's request (method, path and query, headers) during
    /// [`Handler::on_open`]; `None` in the other callbacks (it is not kept, so that idle
    /// connections stay small). Its extensions were moved to [`extensions`](Self::extensions).
    pub fn request(&self) -> Option<&Request<()>> {
        self.request
    }

    /// This connection's extensions: at first what the handshake request's extensions held
    /// (the [`Subprotocol`](crate::Subprotocol) selected, state put there by the
    /// [`Policy`](crate::Policy) auth hook), then whatever the callbacks store. Kept until
    /// [`Handler::on_close`] returns.
    pub fn extensions(&self) -> &Extensions {
        &self.st.extensions
    }

    /// This connection's extensions, to store per-connection data in (see
    /// [`extensions`](Self::extensions)).
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.st.extensions
    }

    /// A handle to send to this connection from outside its callbacks: from another
    /// connection's callback, another task or another thread.
    pub fn handle(&self) -> ConnHandle {
        ConnHandle {
            conn: Arc::downgrade(self.me),
            id: self.st.id,
        }
    }
}

/// A connection of an events route, reachable outside its callbacks (from
/// [`Conn::handle`]): cheap to clone, `Send` and `Sync`, and it does not keep the connection
/// alive. Use it from anywhere: another connection's callback (to broadcast), another task or
/// thread, even the connection's own callbacks.
///
/// What it sends goes to the connection's driver, which queues it behind what the connection
/// already queued at its next turn (right after the current callback, when called from one) and
/// writes it. Sending never takes a connection's lock, so callbacks of connections on different
/// drivers can send to each other without waiting for each other.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    conn: Weak<Driven>,
    id: u64,
}

impl ConnHandle {
    /// The connection's identifier (as [`Conn::id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Hands a message to the connection's driver. Fails if the connection is closing or gone
    /// (as of its driver's last turn); a message accepted here is dropped if the connection
    /// starts closing before the driver queues it. Never waits: check
    /// [`buffered_amount`](Self::buffered_amount) before sending much to a connection that
    /// may be slow to read.
    pub fn send(&self, message: impl Into<Message>) -> Result<()> {
        self.post(Posted::Message(message.into()))
    }

    /// Hands a message encoded once for many connections to the driver (its frame bytes are
    /// shared, not copied): the way to broadcast. Like [`send`](Self::send).
    pub fn send_prepared(&self, message: &PreparedMessage) -> Result<()> {
        self.post(Posted::Prepared(message.clone()))
    }

    /// Starts the close handshake (as [`Conn::close`]) at the driver's next turn, behind what
    /// was sent before; from now on the connection counts as closing (`send` fails). Fails if
    /// the connection is already closing or gone.
    pub fn close(&self, frame: Option<CloseFrame>) -> Result<()> {
        self.post(Posted::Close(frame))?;
        if let Some(conn) = self.conn.upgrade() {
            conn.open.store(false, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Bytes queued for the connection and not yet written, as of its driver's last turn (0
    /// once it is gone).
    pub fn buffered_amount(&self) -> usize {
        self.conn
            .upgrade()
            .map_or(0, |conn| conn.buffered.load(Ordering::Relaxed) as usize)
    }

    /// Whether the connection is open (as of its driver's last turn): not closing, not gone.
    pub fn is_open(&self) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|conn| conn.open.load(Ordering::Relaxed))
    }

    fn post(&self, posted: Posted) -> Result<()> {
        let conn = self.conn.upgrade().ok_or(SendError::Closed)?;
        if !conn.open.load(Ordering::Relaxed) {
            return Err(SendError::Closed.into());
        }
        let driver = conn.driver.clone();
        driver.post(conn, posted);
        Ok(())
    }
}

/// What a [`ConnHandle`] asked of a connection, waiting for its driver's next turn.
enum Posted {
    Message(Message),
    Prepared(PreparedMessage),
    Close(Option<CloseFrame>),
}

/// An events route of a running server: its path and its drivers.
pub(crate) struct Route {
    path: String,
    drivers: Vec<Arc<Driver>>,
    next: AtomicUsize,
}

impl Route {
    /// Starts one driver per runtime worker for `handler` on the current runtime.
    pub(crate) fn start(
        path: &str,
        handler: Arc<dyn Handler>,
        config: Arc<Config>,
    ) -> (Self, Vec<JoinHandle<()>>) {
        let workers = tokio::runtime::Handle::current()
            .metrics()
            .num_workers()
            .max(1);
        let drivers: Vec<Arc<Driver>> = (0..workers)
            .map(|_| {
                Arc::new(Driver {
                    handler: handler.clone(),
                    config: config.clone(),
                    ready: Mutex::new(Ready::default()),
                    posted: Mutex::new(Vec::new()),
                    notify: Notify::new(),
                    shutdown: Mutex::new(None),
                    stopping: AtomicBool::new(false),
                    clock: Clock {
                        epoch: Instant::now(),
                    },
                })
            })
            .collect();
        let tasks = drivers
            .iter()
            .map(|d| tokio::spawn(d.clone().run()))
            .collect();
        let route = Self {
            path: path.to_owned(),
            drivers,
            next: AtomicUsize::new(0),
        };
        (route, tasks)
    }

    /// Whether a request for `path` belongs to this route.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.path == path
    }

    /// Hands a connection whose handshake is complete to a driver.
    pub(crate) fn adopt(
        &self,
        stream: MaybeTlsStream,
        mut request: Request<()>,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.drivers.len();
        let driver = &self.drivers[i];
        let config = &driver.config;
        let mut proto = Connection::with_deflate(Role::Server, config.protocol.clone(), deflate);
        let error = proto.handle_read(leftover).err().map(Error::Protocol);
        let mut state = ConnState::new(stream, proto, driver.clock.now(), config);
        state.extensions = std::mem::take(request.extensions_mut());
        if error.is_some() {
            state.end().error = error;
        }
        let conn = Arc::new(Driven {
            driver: driver.clone(),
            queued: AtomicBool::new(true),
            open: AtomicBool::new(true),
            buffered: AtomicU32::new(0),
            state: Mutex::new(state),
        });
        driver.push(conn, Some(request));
    }

    /// Starts the graceful shutdown: every connection gets `frame` (behind what is queued), and
    /// each driver ends once its connections are gone.
    pub(crate) fn stop(&self, frame: &CloseFrame) {
        for driver in &self.drivers {
            *lock(&driver.shutdown) = Some(frame.clone());
            driver.stopping.store(true, Ordering::Release);
            driver.notify.notify_one();
        }
    }
}

/// Marks a connection its driver has not registered yet.
const NEW: u32 = u32::MAX;

/// One driver: a task that runs the connections it was given.
struct Driver {
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
    /// Connections woken since the driver last looked.
    ready: Mutex<Ready>,
    /// What [`ConnHandle`]s asked of its connections since the driver last looked.
    posted: Mutex<Vec<(Arc<Driven>, Posted)>>,
    /// Wakes the driver's task when `ready` gets a connection or shutdown begins.
    notify: Notify,
    /// The close frame of a graceful shutdown.
    shutdown: Mutex<Option<CloseFrame>>,
    stopping: AtomicBool,
    clock: Clock,
}

impl Driver {
    /// Keeps what a handle asked of `conn` for the driver's next turn.
    fn post(&self, conn: Arc<Driven>, posted: Posted) {
        let mut queue = lock(&self.posted);
        let first = queue.is_empty();
        queue.push((conn, posted));
        drop(queue);
        if first {
            self.notify.notify_one();
        }
    }

    /// Queues a woken connection, or a new one with its handshake request, for the driver's
    /// next turn.
    fn push(&self, conn: Arc<Driven>, request: Option<Request<()>>) {
        let mut ready = lock(&self.ready);
        if ready.exited {
            // The driver finished its shutdown: dropping the connection closes it.
            return;
        }
        let first = ready.queue.is_empty() && ready.opening.is_empty();
        match request {
            Some(request) => ready.opening.push((conn, request)),
            None => ready.queue.push_back(conn),
        }
        drop(ready);
        // Only the first connection of a turn needs to wake the driver: it takes the whole
        // queue when it runs.
        if first {
            self.notify.notify_one();
        }
    }
}

#[derive(Default)]
struct Ready {
    queue: VecDeque<Arc<Driven>>,
    /// New connections with their handshake request (kept here, not in the connection, until
    /// [`Handler::on_open`] has seen it).
    opening: Vec<(Arc<Driven>, Request<()>)>,
    /// The driver ended (shutdown complete): new connections are closed at once.
    exited: bool,
}

/// A connection as its driver and its waker see it.
struct Driven {
    driver: Arc<Driver>,
    /// In the driver's ready queue already.
    queued: AtomicBool,
    /// Open (not closing, not gone) as of the driver's last turn, for [`ConnHandle`]s.
    open: AtomicBool,
    /// Bytes waiting to be written as of the driver's last turn (saturated), for
    /// [`ConnHandle`]s.
    buffered: AtomicU32,
    state: Mutex<ConnState>,
}

impl Driven {
    /// Does what a [`ConnHandle`] asked, if the connection is still open.
    fn apply(&self, what: Posted) {
        let mut st = lock(&self.state);
        if st.io.is_none() || st.proto.state() != State::Open {
            return;
        }
        // Errors: a message that cannot be sent now is dropped, as documented.
        let _ = match what {
            Posted::Message(message) => st.proto.send(message),
            Posted::Prepared(message) => st.proto.send_prepared(&message),
            Posted::Close(frame) => st.proto.close(frame),
        };
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

/// A connection's state, behind its lock (taken only by its driver). Times are milliseconds
/// since the driver started ([`Clock`]), [`NEVER`] for none: an idle connection should be small.
struct ConnState {
    /// `None` once the connection is finished: dropping the transport also drops the wakers
    /// the runtime holds for it, which point back here.
    io: Option<MaybeTlsStream>,
    /// Also the write queue: written straight from with vectored writes.
    proto: Connection,
    id: u64,
    /// The peer's protocol violation and close frame, once there is one (rare: boxed).
    end: Option<Box<End>>,
    /// Per-connection data (see [`Conn::extensions`]).
    extensions: Extensions,
    /// Index in the driver's registry ([`NEW`] before the driver has seen it).
    slot: u32,
    read_target: u32,
    last_read: u64,
    /// When to free empty buffers, if the connection holds any.
    release_at: u64,
    next_ping: u64,
    /// When the keep-alive ping awaiting its pong was sent.
    ping_sent: u64,
    /// The deadline the driver's timer queue holds for this connection.
    armed: u64,
}

/// How a connection ends: what only a closing connection needs (boxed: rare).
struct End {
    /// The peer's protocol violation (or transport error).
    error: Option<Error>,
    /// The peer's close frame, once received.
    peer_close: Option<Option<CloseFrame>>,
    /// The peer stopped answering pings: close without waiting for its reply.
    abandon: bool,
    /// When the close handshake must be over (set once a close frame is queued or received).
    close_at: u64,
}

impl Default for End {
    fn default() -> Self {
        Self {
            error: None,
            peer_close: None,
            abandon: false,
            close_at: NEVER,
        }
    }
}

/// A time that never comes.
const NEVER: u64 = u64::MAX;

/// A driver's clock: milliseconds since it started.
#[derive(Clone, Copy)]
struct Clock {
    epoch: Instant,
}

impl Clock {
    fn now(&self) -> u64 {
        self.ms(Instant::now())
    }

    fn ms(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_millis()).unwrap_or(NEVER - 1)
    }

    fn instant(&self, ms: u64) -> Instant {
        self.epoch + Duration::from_millis(ms)
    }
}

/// `now + d` in milliseconds (rounded up, so that a timer never fires early), or [`NEVER`].
fn after(now: u64, d: Option<Duration>) -> u64 {
    match d {
        Some(d) => now.saturating_add(d.as_millis().min(u128::from(NEVER / 2)) as u64 + 1),
        None => NEVER,
    }
}

/// The payload of the keep-alive ping sent at `sent` (driver milliseconds: one ping waits for
/// its pong at a time, so the time tells them apart).
fn ping_payload(sent: u64) -> Bytes {
    Bytes::from(format!("volley-keepalive-{sent}"))
}

impl ConnState {
    fn new(stream: MaybeTlsStream, proto: Connection, now: u64, config: &Config) -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            io: Some(stream),
            proto,
            id: IDS.fetch_add(1, Ordering::Relaxed),
            end: None,
            extensions: Extensions::new(),
            slot: NEW,
            read_target: READ_TARGET as u32,
            last_read: now,
            release_at: after(now, Some(RELEASE_AFTER)),
            next_ping: after(now, config.ping_interval),
            ping_sent: NEVER,
            armed: NEVER,
        }
    }

    fn end(&mut self) -> &mut End {
        self.end.get_or_insert_with(Box::default)
    }

    /// When the close handshake must be over ([`NEVER`] while open).
    fn close_at(&self) -> u64 {
        self.end.as_ref().map_or(NEVER, |end| end.close_at)
    }

    /// Bytes queued and not yet written.
    fn buffered(&self) -> usize {
        self.proto.pending_transmit()
    }

    /// When the driver must look at this connection again without I/O ([`NEVER`]: only on I/O).
    fn deadline(&self, config: &Config) -> u64 {
        if self.proto.state() != State::Open {
            // Closing: keep-alive and idle timers no longer apply (`on_timer` ignores them, so
            // a due one would fire again and again); the close deadline bounds what is left.
            return self.close_at().min(self.release_at);
        }
        let pong = match self.ping_sent {
            NEVER => NEVER,
            sent => after(sent, config.ping_timeout),
        };
        let idle = after(self.last_read, config.idle_timeout);
        [self.close_at(), self.release_at, self.next_ping, pong, idle]
            .into_iter()
            .min()
            .unwrap_or(NEVER)
    }

    /// Acts on whichever timer is due.
    fn on_timer(&mut self, now: u64, config: &Config) {
        if self.release_at <= now {
            self.release_at = NEVER;
            self.proto.release_idle_buffers();
        }
        if self.proto.state() != State::Open {
            return;
        }
        if self.ping_sent != NEVER && after(self.ping_sent, config.ping_timeout) <= now {
            let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "keepalive ping timeout");
            let _ = self.proto.close(Some(frame));
            self.end().abandon = true;
        } else if after(self.last_read, config.idle_timeout) <= now {
            let _ = self
                .proto
                .close(Some(CloseFrame::new(CloseCode::NORMAL, "idle timeout")));
        } else if self.next_ping <= now {
            self.next_ping = after(now, config.ping_interval);
            if self.ping_sent == NEVER {
                let _ = self.proto.send(Message::Ping(ping_payload(now)));
                self.ping_sent = now;
            }
        }
    }

    /// Runs the connection until it waits for I/O (`None`) or is over (`Some(result)`).
    fn drive(
        &mut self,
        me: &Arc<Driven>,
        cx: &mut Context<'_>,
        now: u64,
        handler: &dyn Handler,
        config: &Config,
    ) -> Option<Result<Option<CloseFrame>>> {
        let mut reads = 0;
        loop {
            while let Some(event) = self.proto.poll_event() {
                match event {
                    Message::Text(_) | Message::Binary(_) => {
                        let panicked = {
                            let mut conn = Conn {
                                st: self,
                                config,
                                me,
                                request: None,
                            };
                            let call = || handler.on_message(&mut conn, event);
                            std::panic::catch_unwind(AssertUnwindSafe(call)).is_err()
                        };
                        if panicked {
                            self.fail_handler();
                        }
                    }
                    Message::Ping(_) => {}
                    Message::Pong(payload) => {
                        if self.ping_sent != NEVER && payload == ping_payload(self.ping_sent) {
                            self.ping_sent = NEVER;
                        }
                    }
                    Message::Close(frame) => self.end().peer_close = Some(frame),
                }
            }
            let state = self.proto.state();
            if state != State::Open && self.close_at() == NEVER {
                self.end().close_at = after(now, Some(config.close_timeout));
            }
            if self.close_at() <= now {
                return Some(Err(Error::Timeout("close handshake")));
            }
            let io = self.io.as_mut()?;
            let flushed = self.proto.pending_transmit() == 0
                || match poll_write_all(Pin::new(&mut *io), &mut self.proto, cx) {
                    Poll::Ready(Ok(())) => true,
                    Poll::Ready(Err(e)) => return Some(Err(e.into())),
                    Poll::Pending => false,
                };
            if self.end.as_ref().is_some_and(|end| end.abandon) {
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
            if !flushed && self.proto.pending_transmit() > config.write_limit {
                // Backpressure: read again once the queue drains.
                return None;
            }
            if reads == READ_BUDGET {
                cx.waker().wake_by_ref();
                return None;
            }
            let mut error = None;
            let mut target = self.read_target as usize;
            let read = poll_fill(&mut self.proto, Pin::new(io), &mut error, &mut target, cx);
            self.read_target = target as u32;
            if let Some(e) = error {
                self.end().error = Some(e);
            }
            match read {
                Poll::Pending => return None,
                Poll::Ready(Ok(0)) => return Some(Err(Error::AbnormalClose)),
                Poll::Ready(Ok(_)) => {
                    reads += 1;
                    self.last_read = now;
                    self.release_at = after(now, Some(RELEASE_AFTER));
                }
                Poll::Ready(Err(e)) => return Some(Err(e.into())),
            }
        }
    }

    /// A callback panicked: fail the connection with 1011.
    fn fail_handler(&mut self) {
        tracing::error!(
            id = self.id,
            "events handler panicked: closing the connection"
        );
        if self.proto.state() == State::Open {
            let frame = CloseFrame::new(CloseCode::INTERNAL_ERROR, "handler failed");
            let _ = self.proto.close(Some(frame));
        }
    }
}

/// The connections a driver runs. Dropping it (the driver's task ends or is aborted) closes
/// every connection left.
struct Registry {
    conns: Vec<Arc<Driven>>,
    handler: Arc<dyn Handler>,
    config: Arc<Config>,
}

impl Registry {
    /// Removes the connection at `slot` (its lock must not be held).
    fn remove(&mut self, slot: usize) {
        self.conns.swap_remove(slot);
        if let Some(moved) = self.conns.get(slot) {
            lock(&moved.state).slot = slot as u32;
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        for conn in self.conns.drain(..) {
            let mut st = lock(&conn.state);
            if st.io.take().is_some() {
                conn.open.store(false, Ordering::Relaxed);
                let mut closed = Conn {
                    st: &mut st,
                    config: &self.config,
                    me: &conn,
                    request: None,
                };
                let call = || {
                    let result = Err(Error::Timeout("shutdown drain"));
                    self.handler.on_close(&mut closed, result);
                };
                let _ = std::panic::catch_unwind(AssertUnwindSafe(call));
                st.extensions.clear();
            }
        }
    }
}

/// Why the driver runs a connection.
#[derive(Clone, Copy)]
enum Why<'r> {
    /// New, with its handshake request (for [`Handler::on_open`]).
    Opened(&'r Request<()>),
    /// Woken by I/O or a handle.
    Woken,
    /// Its timer (the deadline it was armed for) fell due.
    Timer(u64),
}

/// An entry of a driver's timer queue: look at `conn` at `at` (earliest first).
struct TimerEntry {
    at: u64,
    conn: Weak<Driven>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for TimerEntry {}

impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come first.
        other.at.cmp(&self.at)
    }
}

impl Driver {
    async fn run(self: Arc<Self>) {
        let mut registry = Registry {
            conns: Vec::new(),
            handler: self.handler.clone(),
            config: self.config.clone(),
        };
        let mut timers = BinaryHeap::<TimerEntry>::new();
        let mut batch = VecDeque::new();
        let mut posted = Vec::new();
        let mut opening = Vec::new();
        let mut sleep: Option<Pin<Box<Sleep>>> = None;
        let mut shutdown: Option<CloseFrame> = None;
        loop {
            {
                let mut ready = lock(&self.ready);
                std::mem::swap(&mut ready.queue, &mut batch);
                std::mem::swap(&mut ready.opening, &mut opening);
            }
            std::mem::swap(&mut *lock(&self.posted), &mut posted);
            for (conn, what) in posted.drain(..) {
                conn.apply(what);
                if !conn.queued.swap(true, Ordering::AcqRel) {
                    batch.push_back(conn);
                }
            }
            let now = self.clock.now();
            let busy = !batch.is_empty() || !opening.is_empty();
            if shutdown.is_none() && self.stopping.load(Ordering::Acquire) {
                let frame = lock(&self.shutdown).clone().unwrap_or_else(|| {
                    CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down")
                });
                for conn in &registry.conns {
                    let _ = lock(&conn.state).proto.close(Some(frame.clone()));
                    if !conn.queued.swap(true, Ordering::AcqRel) {
                        batch.push_back(conn.clone());
                    }
                }
                shutdown = Some(frame);
            }
            for (conn, request) in opening.drain(..) {
                conn.queued.store(false, Ordering::Release);
                let why = Why::Opened(&request);
                self.run_conn(&conn, &mut registry, &mut timers, now, why, &shutdown);
            }
            while let Some(conn) = batch.pop_front() {
                conn.queued.store(false, Ordering::Release);
                self.run_conn(
                    &conn,
                    &mut registry,
                    &mut timers,
                    now,
                    Why::Woken,
                    &shutdown,
                );
            }
            while timers.peek().is_some_and(|t| t.at <= now) {
                let Some(entry) = timers.pop() else { break };
                if let Some(conn) = entry.conn.upgrade() {
                    let why = Why::Timer(entry.at);
                    self.run_conn(&conn, &mut registry, &mut timers, now, why, &shutdown);
                }
            }
            if shutdown.is_some() && registry.conns.is_empty() {
                let mut ready = lock(&self.ready);
                if ready.queue.is_empty() && ready.opening.is_empty() {
                    ready.exited = true;
                    return;
                }
                continue;
            }
            if busy && {
                let ready = lock(&self.ready);
                !ready.queue.is_empty() || !ready.opening.is_empty()
            } {
                // Connections that used up their read budget woke themselves: let the runtime
                // poll for I/O and run its other tasks (accepting, other drivers) first. With
                // nothing left, the driver waits below instead: yielding after every turn made
                // the runtime poll epoll once per turn, with few events each time.
                tokio::task::yield_now().await;
                continue;
            }
            match timers.peek().map(|t| self.clock.instant(t.at)) {
                Some(at) => {
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    tokio::select! {
                        () = self.notify.notified() => {}
                        () = timer.as_mut() => {}
                    }
                }
                None => self.notify.notified().await,
            }
        }
    }

    /// Runs one connection: registers it if new (calling `on_open` with its request), acts on
    /// its timer if that is `why` and still its deadline, drives its I/O and callbacks, and
    /// re-arms its timer or finishes it.
    fn run_conn(
        &self,
        conn: &Arc<Driven>,
        registry: &mut Registry,
        timers: &mut BinaryHeap<TimerEntry>,
        now: u64,
        why: Why<'_>,
        shutdown: &Option<CloseFrame>,
    ) {
        let config = &*self.config;
        let mut guard = lock(&conn.state);
        let st = &mut *guard;
        if st.io.is_none() {
            return;
        }
        if st.slot == NEW {
            st.slot = registry.conns.len() as u32;
            registry.conns.push(conn.clone());
            let panicked = {
                let mut conn = Conn {
                    st: &mut *st,
                    config,
                    me: conn,
                    request: match why {
                        Why::Opened(request) => Some(request),
                        _ => None,
                    },
                };
                let call = || self.handler.on_open(&mut conn);
                std::panic::catch_unwind(AssertUnwindSafe(call)).is_err()
            };
            if panicked {
                st.fail_handler();
            }
            if let Some(frame) = shutdown {
                let _ = st.proto.close(Some(frame.clone()));
            }
        }
        if let Why::Timer(at) = why {
            if st.armed != at {
                // A deadline that was replaced by an earlier one.
                return;
            }
            st.armed = NEVER;
            st.on_timer(now, config);
        }
        let waker = Waker::from(conn.clone());
        let mut cx = Context::from_waker(&waker);
        let result = st.drive(conn, &mut cx, now, &*self.handler, config);
        if result.is_some() || st.proto.state() != State::Open {
            // Only ever from open to not open (a handle's `close` may have cleared it already).
            conn.open.store(false, Ordering::Relaxed);
        }
        let buffered = u32::try_from(st.buffered()).unwrap_or(u32::MAX);
        conn.buffered.store(buffered, Ordering::Relaxed);
        match result {
            None => {
                // Never at or before `now`: a timer that is due but not acted on must not make
                // the driver's timer loop spin.
                let at = st.deadline(config).max(now + 1);
                if at < st.armed {
                    st.armed = at;
                    let conn = Arc::downgrade(conn);
                    timers.push(TimerEntry { at, conn });
                }
            }
            Some(result) => {
                st.io = None;
                st.proto.release_idle_buffers();
                let slot = st.slot as usize;
                let mut closed = Conn {
                    st: &mut *st,
                    config,
                    me: conn,
                    request: None,
                };
                let call = || self.handler.on_close(&mut closed, result);
                let _ = std::panic::catch_unwind(AssertUnwindSafe(call));
                st.extensions.clear();
                drop(guard);
                registry.remove(slot);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_queue_pops_the_earliest_deadline_first() {
        let mut heap = BinaryHeap::new();
        for at in [3000, 1000, 2000] {
            heap.push(TimerEntry {
                at,
                conn: Weak::new(),
            });
        }
        let order: Vec<_> = std::iter::from_fn(|| heap.pop().map(|t| t.at)).collect();
        assert_eq!(order, [1000, 2000, 3000]);
    }

    #[test]
    fn times_round_up_and_saturate() {
        assert_eq!(after(10, None), NEVER);
        assert_eq!(after(10, Some(Duration::from_micros(1))), 11);
        assert_eq!(after(10, Some(Duration::from_millis(5))), 16);
        assert!(after(NEVER - 5, Some(Duration::MAX)) >= NEVER - 5);
        let clock = Clock {
            epoch: Instant::now(),
        };
        assert_eq!(clock.ms(clock.instant(1234)), 1234);
    }

    #[test]
    fn keepalive_payloads_differ_by_sequence() {
        assert_ne!(ping_payload(1), ping_payload(2));
        assert!(ping_payload(NEVER - 1).len() <= 125);
    }
}
