//! Connections served by callbacks on a few shared drivers instead of a task each: the
//! lightest way to hold many mostly idle WebSocket connections (uWebSockets' model).
//!
//! A [`Callbacks`] value (`on_open`, `on_message`, `on_close`) serves every connection of a
//! route: [`Endpoint::callbacks`](crate::Endpoint::callbacks) on a [`Server`](crate::Server), or
//! [`Drivers`] behind a hyper or axum upgrade. Those connections get no task of their own: one
//! driver per runtime worker runs every connection's reads, writes and timers and calls the
//! callbacks. An idle connection costs its protocol state and a few words in the driver: under
//! 500 B (docs/PERFORMANCE.md).
//!
//! On Unix a plain TCP connection does not even register with tokio: it runs on a driver
//! *thread* (one per runtime worker, named `volley-driver`) that blocks in its own `mio` poll,
//! with the connections' timers as its timeout, and runs the connections whose sockets it
//! reports in place: one `epoll_wait` per wake-up and no task to wake. The thread enters the
//! runtime, so callbacks can spawn tasks and use tokio's timers and channels; it ends a second
//! after its last connection and with the runtime. TLS connections and transports upgraded by
//! hyper or axum stay on tokio's I/O, on driver *tasks*. Setting the environment variable
//! `VOLLEY_CALLBACK_IO=tokio` (read once per process) puts plain TCP back on tokio and driver
//! tasks too, for comparison: a connection then costs tokio's registration as well (~0.9 KiB
//! in all).
//!
//! ```no_run
//! use volley::callback::{Callbacks, Conn};
//! use volley::{Endpoint, Message};
//!
//! struct Echo;
//!
//! impl Callbacks for Echo {
//!     fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
//!         // Queued: the driver writes it when the callback returns.
//!         let _ = conn.send(message);
//!     }
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! volley::Server::bind("127.0.0.1:9001")
//!     .await?
//!     .route("/", Endpoint::callbacks(Echo))
//!     .run()
//!     .await
//! # }
//! ```
//!
//! What the driver does for every connection, as [`WebSocket::recv`](crate::WebSocket::recv)
//! does for a task (both run the same per-connection core): pings are answered and the close
//! handshake completed; keep-alive pings, the pong deadline, the idle timeout and the close
//! timeout of the [`Config`] apply; empty buffers are freed one second after the
//! last read. Everything queued for a connection in one turn goes out in one system call.
//! While more than [`Config::write_limit`](crate::Config::write_limit) bytes wait to be written
//! the connection is not read, so a peer that sends without reading is slowed down by TCP.
//!
//! Callbacks run on the driver's thread or task, one at a time per driver: they must not block
//! or wait.
//! A callback that panics fails only its own connection (close code 1011).
//!
//! Nothing a callback or a [`ConnHandle`] sends waits for room, so what may queue for one
//! connection is bounded by [`Config::send_queue`](crate::Config::send_queue) (1 MiB by
//! default) and its [`Overflow`](crate::Overflow) policy: a reader that falls that far behind is
//! closed with 1013 (or its messages are dropped, newest or oldest, if so configured). Topics
//! with encode-once fan-out: join a [`Hub`](crate::hub::Hub) with the connection's handle.
//!
//! [`Callbacks::on_open`] sees the handshake request ([`Conn::request`]: path, query, headers);
//! what the request's extensions held (the [`Subprotocol`](crate::Subprotocol), state put there
//! by the [`Policy`](crate::Policy) auth hook) stays with the connection as its
//! [`extensions`](Conn::extensions); the application keeps its own value for each connection
//! with [`Conn::set_data`] (the cheapest way: one allocation). To send to a
//! connection from elsewhere (another connection's callback, another task or thread), keep its
//! [`ConnHandle`] ([`Conn::handle`]). A chat room on a hub:
//!
//! ```no_run
//! use volley::callback::{Callbacks, Conn};
//! use volley::hub::{Hub, Member};
//! use volley::{CloseFrame, Message};
//!
//! struct Room(Hub);
//!
//! impl Callbacks for Room {
//!     fn on_open(&self, conn: &mut Conn<'_>) {
//!         let member = self.0.join(conn.handle());
//!         member.subscribe("lobby");
//!         // Dropped with the connection: the member leaves the hub.
//!         conn.set_data(member);
//!     }
//!
//!     fn on_message(&self, _conn: &mut Conn<'_>, message: Message) {
//!         if let Message::Text(text) = message {
//!             // Encoded once; every subscriber's queue shares the frame.
//!             self.0.publish("lobby", text);
//!         }
//!     }
//! }
//! ```
//!
//! # Names
//! [`Callbacks`] (not "handler": a task route's closure is a handler too), [`Conn`] (short,
//! because every callback takes one; [`volley::proto::Connection`](crate::proto::Connection)
//! is the protocol state machine it wraps), [`ConnHandle`] (what outlives the callback), and
//! [`Drivers`] (the driver tasks of one `Callbacks` value). The module was called `events`,
//! which said little and collided with Socket.IO events and server-sent events.

mod conn;
mod driver;
#[cfg(unix)]
mod evloop;

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Extensions, Request};
use tokio::io::{AsyncRead, AsyncWrite};
use volley_proto::handshake::UpgradeRequest;
use volley_proto::{CloseFrame, DeflateParams, Message, PreparedMessage, State};

use crate::config::{Config, QueueLimits};
use crate::core::Offer;
use crate::error::{Error, Result};

use conn::{ConnState, Driven, Outgoing};
pub(crate) use driver::Io;
use driver::Pool;

/// The handshake request of a new connection, kept until [`Callbacks::on_open`] has seen it:
/// built already, or parsed and built only if `on_open` asks for it ([`Conn::request`]). It
/// lives only in a driver's queue of new connections: its size does not matter, an allocation
/// per connection would.
#[allow(clippy::large_enum_variant)]
pub(crate) enum OpenRequest {
    Built(Request<()>),
    Parsed(UpgradeRequest),
}

impl OpenRequest {
    fn get(&self) -> &Request<()> {
        match self {
            OpenRequest::Built(request) => request,
            OpenRequest::Parsed(upgrade) => upgrade.request(),
        }
    }
}

/// The callbacks of the connections of one route.
///
/// Every method runs on a driver (a thread or a task) shared by many connections: return
/// quickly, never block.
pub trait Callbacks: Send + Sync + 'static {
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

    /// The connection's application timer ([`Conn::set_timer`]) fell due: it is cleared
    /// before this runs (set it again for another turn). Runs in the driver's timer queue, like
    /// the connection's keep-alive: an application heartbeat costs no task or runtime timer.
    fn on_timer(&self, conn: &mut Conn<'_>) {
        let _ = conn;
    }
}

/// Shared callbacks: keep an `Arc` of the state in the application and give the route a clone.
impl<C: Callbacks> Callbacks for Arc<C> {
    fn on_open(&self, conn: &mut Conn<'_>) {
        (**self).on_open(conn);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        (**self).on_message(conn, message);
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: Result<Option<CloseFrame>>) {
        (**self).on_close(conn, result);
    }

    fn on_timer(&self, conn: &mut Conn<'_>) {
        (**self).on_timer(conn);
    }
}

/// A connection, lent to a [`Callbacks`] method.
pub struct Conn<'a> {
    st: &'a mut ConnState,
    config: &'a Config,
    me: &'a Arc<Driven>,
    /// The handshake request, during [`Callbacks::on_open`] only.
    request: Option<&'a OpenRequest>,
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
    /// This connection's identifier, unique within the process.
    pub fn id(&self) -> u64 {
        self.st.id
    }

    /// Queues a message; the driver writes it when the callback returns. Never waits: past
    /// [`Config::send_queue`] the connection's overflow policy applies and a message that was
    /// not queued is an [`Error::QueueFull`]. Fails with [`Error::Send`] once the connection
    /// is closing.
    pub fn send(&mut self, message: impl Into<Message>) -> Result<()> {
        self.me
            .send_now(self.st, Outgoing::Message(message.into()), self.config)
    }

    /// Queues a message encoded once for many connections; its frame bytes are shared, not
    /// copied. Like [`send`](Self::send).
    pub fn send_prepared(&mut self, message: &PreparedMessage) -> Result<()> {
        self.me
            .send_now(self.st, Outgoing::Prepared(message.clone()), self.config)
    }

    /// Starts the close handshake with `frame` (once; later calls do nothing), behind the
    /// messages queued before it. [`Callbacks::on_close`] follows the peer's reply or the close
    /// timeout.
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<()> {
        self.me.close_now(self.st, frame)
    }

    /// Bytes queued for this connection and not yet written, exactly: frames in the protocol's
    /// transmit queue plus messages waiting in its send queue.
    pub fn buffered_amount(&self) -> usize {
        self.st.proto.pending_transmit() + self.me.outbox_bytes()
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.st.proto.state()
    }

    /// The permessage-deflate parameters in force, if compression was negotiated.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.st.proto.deflate().copied()
    }

    /// The peer's address: the TCP peer, or for a connection upgraded elsewhere the address the
    /// request carried ([`PeerAddr`](crate::PeerAddr) from a [`Server`](crate::Server), axum's
    /// `ConnectInfo` with feature `axum`).
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.st.peer_addr()
    }

    /// Round-trip time of the last keep-alive ping that was answered, if any.
    pub fn latency(&self) -> Option<Duration> {
        self.me.latency()
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        self.config
    }

    /// Sets the connection's application timer: [`Callbacks::on_timer`] runs once `at` has
    /// passed (at the driver's next turn after it), replacing the time set before; `None`
    /// clears it. One timer per connection, kept in the driver's timer queue with the
    /// connection's own deadlines (no task, no runtime timer of its own). Cleared when the
    /// connection starts closing.
    pub fn set_timer(&mut self, at: Option<tokio::time::Instant>) {
        self.st.app_timer = at.map_or(crate::core::NEVER, crate::core::micros);
    }

    /// When the application timer is due, if it is set.
    pub fn timer(&self) -> Option<tokio::time::Instant> {
        (self.st.app_timer != crate::core::NEVER).then(|| crate::core::instant(self.st.app_timer))
    }

    /// The opening handshake's request (method, path and query, headers) during
    /// [`Callbacks::on_open`]; `None` in the other callbacks (it is not kept, so that idle
    /// connections stay small). Its extensions were moved to [`extensions`](Self::extensions).
    pub fn request(&self) -> Option<&Request<()>> {
        self.request.map(OpenRequest::get)
    }

    /// The application's value of type `T` for this connection, if [`set_data`](Self::set_data)
    /// stored one (of that type).
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.st.data.as_deref()?.downcast_ref()
    }

    /// The application's value of type `T` for this connection, mutable.
    pub fn data_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.st.data.as_deref_mut()?.downcast_mut()
    }

    /// Keeps `data` with this connection until [`Callbacks::on_close`] has returned (replacing
    /// what was there): the cheapest place for per-connection state — one allocation, where
    /// [`extensions_mut`](Self::extensions_mut) allocates a map. One value per connection: keep
    /// a struct for more.
    pub fn set_data<T: Any + Send + Sync>(&mut self, data: T) {
        self.st.data = Some(Box::new(data));
    }

    /// Takes the application's value of type `T` back (it is left in place if it is of
    /// another type).
    pub fn take_data<T: Any + Send + Sync>(&mut self) -> Option<T> {
        if !self.st.data.as_deref()?.is::<T>() {
            return None;
        }
        self.st.data.take()?.downcast().ok().map(|data| *data)
    }

    /// This connection's extensions: at first what the handshake request's extensions held
    /// (the [`Subprotocol`](crate::Subprotocol) selected, state put there by the
    /// [`Policy`](crate::Policy) auth hook), then whatever the callbacks store (a map of values
    /// by type: for a single value, [`set_data`](Self::set_data) is cheaper). Dropped after
    /// [`Callbacks::on_close`] returns.
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

/// A connection served by callbacks, reachable outside its callbacks (from [`Conn::handle`]):
/// cheap to clone, `Send` and `Sync`, and it does not keep the connection alive. Use it from
/// anywhere: another connection's callback (to broadcast), another task or thread, even the
/// connection's own callbacks.
///
/// What it sends waits in the connection's send queue (bounded by
/// [`Config::send_queue`](crate::Config::send_queue)) until the connection's driver hands it
/// to the protocol, behind what was queued before. Sending never waits and never takes a lock
/// that a callback holds, so callbacks of connections on different drivers can send to each
/// other freely. It is a [`Subscriber`](crate::hub::Subscriber) of a [`Hub`](crate::hub::Hub).
///
/// Nothing here is async, so there is no future to cancel: a task that is cancelled (aborted,
/// or its future dropped at an `.await`) after [`send`](Self::send) returned `Ok` has queued
/// the message, which is written whole whatever becomes of that task; a task cancelled before
/// the call sent nothing.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    conn: std::sync::Weak<Driven>,
    id: u64,
}

impl ConnHandle {
    /// The connection's identifier (as [`Conn::id`]).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Queues a message for the connection. Never waits: past
    /// [`Config::send_queue`](crate::Config::send_queue) the overflow policy applies, and a
    /// message that was not queued is an [`Error::QueueFull`]. Fails with [`Error::Send`] if the
    /// connection is closing or gone.
    pub fn send(&self, message: impl Into<Message>) -> Result<()> {
        self.send_item(Outgoing::Message(message.into()))
    }

    /// Queues a message encoded once for many connections (its frame bytes are shared, not
    /// copied): the way to broadcast. Like [`send`](Self::send).
    pub fn send_prepared(&self, message: &PreparedMessage) -> Result<()> {
        self.send_item(Outgoing::Prepared(message.clone()))
    }

    /// Queues `message` within `limits` instead of the connection's own
    /// [`send_queue`](crate::Config::send_queue), and says what happened (a hub's fan-out).
    pub fn offer(&self, message: &PreparedMessage, limits: &QueueLimits) -> Offer {
        match self.conn.upgrade() {
            Some(conn) => conn.offer(Outgoing::Prepared(message.clone()), limits),
            None => Offer::Gone,
        }
    }

    /// Starts the close handshake (as [`Conn::close`]) behind what was queued before; from now
    /// on the connection counts as closing (`send` fails). Does nothing if it is already
    /// closing or gone.
    pub fn close(&self, frame: Option<CloseFrame>) {
        if let Some(conn) = self.conn.upgrade() {
            conn.request_close(frame);
        }
    }

    /// Bytes queued for the connection and not yet written (as [`Conn::buffered_amount`]; 0
    /// once it is gone).
    pub fn buffered_amount(&self) -> usize {
        self.conn.upgrade().map_or(0, |conn| conn.buffered_amount())
    }

    /// Whether the connection is open: not closing, not gone.
    pub fn is_open(&self) -> bool {
        self.conn
            .upgrade()
            .is_some_and(|conn| conn.open.load(Ordering::Acquire))
    }

    /// Round-trip time of the connection's last answered keep-alive ping, if any.
    pub fn latency(&self) -> Option<Duration> {
        self.conn.upgrade().and_then(|conn| conn.latency())
    }

    fn send_item(&self, item: Outgoing) -> Result<()> {
        let conn = self
            .conn
            .upgrade()
            .ok_or(Error::Send(volley_proto::SendError::Closed))?;
        let limits = &conn.driver.config.send_queue;
        offer_result(conn.offer(item, limits), limits)
    }
}

/// The error a send returns for what its offer did.
fn offer_result(offer: Offer, limits: &QueueLimits) -> Result<()> {
    match offer {
        Offer::Queued { .. } => Ok(()),
        Offer::Gone => Err(Error::Send(volley_proto::SendError::Closed)),
        Offer::Dropped | Offer::Closed { .. } => Err(Error::QueueFull {
            limit: limits.max_bytes,
            overflow: limits.overflow,
        }),
    }
}

/// What the connections of one set of [`Drivers`] received and sent, as
/// [`Drivers::traffic`] returns it. Messages are text and binary messages (not control
/// frames); bytes are what was read from and written to the transports (frames, headers
/// included; TLS records not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TrafficStats {
    /// Text and binary messages received.
    pub messages_received: u64,
    /// Bytes read from the connections.
    pub bytes_received: u64,
    /// Text and binary messages handed to the connections' protocol for sending.
    pub messages_sent: u64,
    /// Bytes written to the connections.
    pub bytes_sent: u64,
}

impl TrafficStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &TrafficStats) {
        self.messages_received += other.messages_received;
        self.bytes_received += other.bytes_received;
        self.messages_sent += other.messages_sent;
        self.bytes_sent += other.bytes_sent;
    }
}

/// The drivers that run the connections of one [`Callbacks`] value: one thread per runtime
/// worker for plain TCP and one task per runtime worker for other transports, each started
/// with the first connection that needs it, on that connection's runtime. Cheap to clone.
///
/// A [`Server`](crate::Server) route makes its own ([`Endpoint::callbacks`](crate::Endpoint::callbacks));
/// make one yourself to serve connections upgraded by hyper or axum
/// ([`volley::hyper::Accepted::adopt`](crate::hyper::Accepted::adopt),
/// `volley::axum::WebSocketUpgrade::on_upgrade_callbacks`), or to share one set of callbacks
/// between a server route and an axum route ([`Endpoint::drivers`](crate::Endpoint::drivers)).
///
/// A driver that dies (a bug outside any callback: callbacks' panics are caught) closes its
/// connections and gets no new ones: a fresh driver takes its place.
#[derive(Clone)]
pub struct Drivers {
    pool: Arc<Pool>,
}

impl std::fmt::Debug for Drivers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drivers")
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl Drivers {
    /// Drivers for `callbacks`, every connection with `config`. Nothing starts until the first
    /// connection arrives.
    pub fn new(callbacks: impl Callbacks, config: Config) -> Self {
        Self::shared(Arc::new(callbacks), Arc::new(config))
    }

    pub(crate) fn shared(callbacks: Arc<dyn Callbacks>, config: Arc<Config>) -> Self {
        Self {
            pool: Arc::new(Pool::new(callbacks, config)),
        }
    }

    /// The configuration every connection gets.
    pub fn config(&self) -> &Config {
        &self.pool.config
    }

    /// Connections handed to these drivers and not finished yet.
    pub fn connections(&self) -> usize {
        self.pool.connections()
    }

    /// What the connections of these drivers received and sent so far: counters that only
    /// grow, kept per driver (no contention), summed here.
    pub fn traffic(&self) -> TrafficStats {
        self.pool.traffic()
    }

    /// Starts a graceful shutdown: every open connection, and every one that arrives from now
    /// on, gets `frame` (behind the messages already queued for it).
    pub fn shutdown(&self, frame: CloseFrame) {
        self.pool.shutdown(frame);
    }

    /// Waits until no connection is left (after [`shutdown`](Self::shutdown), once every close
    /// handshake completed or timed out). Cancel-safe.
    pub async fn closed(&self) {
        self.pool.closed().await;
    }

    /// Ends every connection now (after a drain deadline): each gets
    /// [`Callbacks::on_close`] with an error, and the drivers stop.
    pub(crate) fn abort(&self) {
        self.pool.abort();
    }

    /// Serves a connection whose opening handshake is complete: `leftover` holds bytes read past
    /// the request (the first frames). The request's extensions become the connection's.
    pub(crate) fn adopt(
        &self,
        io: Io,
        mut request: Request<()>,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) {
        let extensions = std::mem::take(request.extensions_mut());
        let request = OpenRequest::Built(request);
        self.pool.adopt(io, request, extensions, deflate, leftover);
    }

    /// [`adopt`](Self::adopt) with the request kept as it is (a parsed one is built only if
    /// `on_open` asks for it) and the connection's first `extensions` given apart.
    pub(crate) fn adopt_open(
        &self,
        io: Io,
        request: OpenRequest,
        extensions: Extensions,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) {
        self.pool.adopt(io, request, extensions, deflate, leftover);
    }

    /// Serves any transport on which the opening handshake already happened, as
    /// [`WebSocket::from_raw_with_deflate`](crate::WebSocket::from_raw_with_deflate) does for
    /// a task. Must be called inside a Tokio runtime.
    pub fn adopt_transport<T>(
        &self,
        transport: T,
        request: Request<()>,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.adopt(Io::boxed(transport), request, deflate, leftover);
    }

    #[cfg(test)]
    pub(crate) fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
    use volley_proto::{Connection, Role};

    use super::*;

    struct Echo {
        closed: Arc<AtomicUsize>,
    }

    impl Callbacks for Echo {
        fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
            let _ = conn.send(message);
        }

        fn on_close(&self, _conn: &mut Conn<'_>, _result: Result<Option<CloseFrame>>) {
            self.closed.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Drivers of an echo without keep-alive pings, and the count of the connections it saw
    /// close.
    fn echo_drivers() -> (Drivers, Arc<AtomicUsize>) {
        let closed = Arc::new(AtomicUsize::new(0));
        let echo = Echo {
            closed: closed.clone(),
        };
        (
            Drivers::new(echo, Config::default().ping_interval(None)),
            closed,
        )
    }

    /// Hands one end of an in-memory pipe to `drivers` as an upgraded connection; returns the
    /// client's end.
    fn connect(drivers: &Drivers) -> DuplexStream {
        let (client, server) = tokio::io::duplex(64 * 1024);
        drivers.adopt_transport(server, Request::new(()), None, &[]);
        client
    }

    /// Sends `text` from a client and waits (bounded) for its echo.
    async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, text: &str) -> Option<String> {
        let mut client = Connection::new(Role::Client, volley_proto::ProtocolConfig::default());
        client.send(Message::text(text.to_owned())).ok()?;
        while let Some(bytes) = client.poll_transmit() {
            io.write_all(&bytes).await.ok()?;
        }
        let read = async {
            let mut buf = [0u8; 1024];
            loop {
                if let Some(Message::Text(t)) = client.poll_event() {
                    return Some(t.to_string());
                }
                let n = io.read(&mut buf).await.ok()?;
                if n == 0 {
                    return None;
                }
                client.handle_read(&buf[..n]).ok()?;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    }

    /// Regression: a driver whose task died outside a callback kept receiving new connections
    /// that nobody served.
    #[tokio::test]
    async fn a_dead_driver_closes_its_connections_and_gets_no_new_ones() {
        let (drivers, closed) = echo_drivers();
        let mut first = connect(&drivers);
        assert_eq!(echo(&mut first, "before").await.as_deref(), Some("before"));
        assert_eq!(drivers.connections(), 1);

        // The one driver of this current-thread runtime dies (as a bug would kill it).
        drivers.pool().abort_driver(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert_eq!(drivers.connections(), 0, "its connection was closed");
        assert_eq!(echo(&mut first, "after").await, None);

        // New connections go to a live driver.
        let mut open = Vec::new();
        for i in 0..3 {
            let mut next = connect(&drivers);
            let text = format!("served {i}");
            assert_eq!(echo(&mut next, &text).await.as_deref(), Some(&*text));
            open.push(next);
        }
        assert_eq!(drivers.connections(), 3);
    }

    /// Hands the server's end of a loopback TCP connection to `drivers` as plain TCP (a driver
    /// thread's); returns the client's end. Inside a runtime.
    #[cfg(unix)]
    async fn connect_tcp(drivers: &Drivers) -> tokio::net::TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let io = Io::stream(crate::maybe_tls::MaybeTlsStream::Plain(accepted.unwrap().0));
        drivers.adopt(io.unwrap(), Request::new(()), None, &[]);
        client.unwrap()
    }

    /// The state of driver thread `i`: (ended, ended for want of connections).
    #[cfg(unix)]
    fn thread_state(drivers: &Drivers, i: usize) -> (Arc<driver::Driver>, bool, bool) {
        let driver = drivers.pool().thread_driver(i);
        let (exited, retired) = driver.state();
        (driver, exited, retired)
    }

    /// A driver thread whose connections are gone ends after its linger (closing its poll's
    /// descriptors), and the next plain TCP connection is served by a fresh one.
    #[cfg(unix)]
    #[tokio::test]
    async fn a_driver_thread_without_connections_retires_and_a_fresh_one_serves_the_next() {
        let (drivers, closed) = echo_drivers();
        let mut first = connect_tcp(&drivers).await;
        assert_eq!(echo(&mut first, "one").await.as_deref(), Some("one"));
        let (before, exited, _) = thread_state(&drivers, 0);
        assert!(!exited);
        drop(first);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (_, exited, retired) = thread_state(&drivers, 0);
            if exited {
                assert!(retired, "it ended for want of connections, not otherwise");
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "never retired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(closed.load(Ordering::SeqCst), 1);
        assert_eq!(drivers.connections(), 0);

        let mut next = connect_tcp(&drivers).await;
        assert_eq!(echo(&mut next, "two").await.as_deref(), Some("two"));
        let (after, exited, _) = thread_state(&drivers, 0);
        assert!(!Arc::ptr_eq(&before, &after), "a fresh driver");
        assert!(!exited);
        assert_eq!(drivers.connections(), 1);
    }

    /// A driver thread's tie to the runtime: when the runtime shuts down (dropping every
    /// task), the thread closes its connections and ends, as a driver task would.
    #[cfg(unix)]
    #[test]
    fn a_runtime_shutting_down_closes_the_connections_of_its_driver_threads() {
        use std::io::Read;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (drivers, closed) = echo_drivers();
        let client = runtime.block_on(async {
            let mut client = connect_tcp(&drivers).await;
            assert_eq!(echo(&mut client, "up").await.as_deref(), Some("up"));
            client
        });
        let client = client.into_std().unwrap();
        drop(runtime);
        client.set_nonblocking(false).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 64];
        let end = (&client).read(&mut buf);
        assert!(
            matches!(end, Ok(0))
                || end
                    .as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "the server's end was closed: {end:?}"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while closed.load(Ordering::SeqCst) == 0 {
            assert!(std::time::Instant::now() < deadline, "on_close never ran");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(drivers.connections(), 0);
    }
}
