//! A client that reconnects: exponential backoff with full jitter, and events that tell the
//! application when it is connected (to resubscribe), what arrived, and when it was cut off.
//!
//! ```no_run
//! # async fn run() {
//! use std::time::Duration;
//! use volley::ClientBuilder;
//! use volley::reconnect::{Backoff, Event, Reconnect};
//!
//! let mut client = Reconnect::new(ClientBuilder::new("ws://127.0.0.1:9001/feed"))
//!     .backoff(Backoff::default().base(Duration::from_millis(500)).cap(Duration::from_secs(20)))
//!     .start();
//! while let Some(event) = client.next().await {
//!     match event {
//!         // A new connection: (re)subscribe.
//!         Event::Connected { .. } => {
//!             let _ = client.send(r#"{"subscribe": "prices"}"#).await;
//!         }
//!         Event::Message(msg) => println!("{msg:?}"),
//!         Event::Disconnected { retry_in, .. } | Event::ConnectFailed { retry_in, .. } => {
//!             println!("disconnected; retrying in {retry_in:?}");
//!         }
//!         _ => {}
//!     }
//! }
//! # }
//! ```
//!
//! # Backoff
//!
//! RFC 6455 §7.2.3 asks clients that reconnect after an abnormal closure to wait a random time
//! before the first attempt and to back off after that, so that a server that restarts is not
//! hit by all its clients at once. [`Backoff`] does "full jitter": before the `n`th consecutive
//! reconnect (counting from 0) the client waits a uniformly random time in
//! `[0, min(cap, base × factorⁿ))`. A connection that stayed up for at least
//! [`stable`](Backoff::stable) resets `n` to 0, so the next reconnect again waits a random time
//! below `base`. The first connection is attempted at once.
//!
//! Every failure is retried, including HTTP refusals (a 401 stays a 401; limit the attempts with
//! [`Reconnect::max_retries`] or [`close`](ReconnectingClient::close) on such an event), and a
//! close frame from the server (1001 at a restart is the classic case).
//!
//! # Flow control
//!
//! Events wait in a bounded queue ([`Reconnect::event_capacity`]): while the application does
//! not call [`next`](ReconnectingClient::next), the connection is not read and TCP pushes back
//! on the server. Sends never wait for events to be consumed.
//!
//! # Transports
//!
//! By default each connection is a TCP connection (with TLS for `wss://`) to the URL's host and
//! port. [`Reconnect::connector`] dials something else instead: a Unix socket, a proxy tunnel,
//! a simulated network (the deterministic network simulation in `tests/netsim.rs` runs the
//! client over [turmoil](https://docs.rs/turmoil)'s simulated TCP).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use volley_proto::handshake::UpgradeResponse;
use volley_proto::{CloseCode, CloseFrame, Message};

use crate::error::{Error, Result, Timeout};
use crate::handshake::ClientBuilder;
use crate::task::{WebSocket, WsReceiver, WsSender};

/// A connection's transport, whatever dialled it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// The transport of the reconnecting client's connections.
type Transport = Box<dyn Io>;

/// A connection attempt of a [`Reconnect::connector`].
type Dialing = Pin<Box<dyn Future<Output = std::io::Result<Transport>> + Send>>;

/// What [`Reconnect::connector`] installs: a function that starts a connection attempt.
#[derive(Clone)]
struct Connector(Arc<dyn Fn() -> Dialing + Send + Sync>);

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector(..)")
    }
}

/// Reconnection delays: exponential growth from `base` by `factor`, capped at `cap`, with full
/// jitter; reset after a connection that lasted `stable`.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Backoff {
    /// The ceiling of the first delay. Default 1 s.
    pub base: Duration,
    /// How much the ceiling grows per consecutive failure (at least 1). Default 2.
    pub factor: f64,
    /// The largest ceiling. Default 30 s.
    pub cap: Duration,
    /// A connection that stayed up at least this long resets the backoff. Default 30 s.
    pub stable: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(30),
            stable: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// Sets [`Backoff::base`].
    pub fn base(mut self, base: Duration) -> Self {
        self.base = base;
        self
    }

    /// Sets [`Backoff::factor`]; values below 1 (or NaN) mean 1: no growth.
    pub fn factor(mut self, factor: f64) -> Self {
        self.factor = if factor >= 1.0 { factor } else { 1.0 };
        self
    }

    /// Sets [`Backoff::cap`].
    pub fn cap(mut self, cap: Duration) -> Self {
        self.cap = cap;
        self
    }

    /// Sets [`Backoff::stable`].
    pub fn stable(mut self, stable: Duration) -> Self {
        self.stable = stable;
        self
    }

    /// The ceiling of the delay before reconnect number `attempt` (0 for the first after a
    /// stable connection): `min(cap, base × factor^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = if self.factor >= 1.0 { self.factor } else { 1.0 };
        let exponent = i32::try_from(attempt).unwrap_or(i32::MAX);
        let secs = self.base.as_secs_f64() * factor.powi(exponent);
        let cap = self.cap.as_secs_f64();
        let secs = if secs.is_finite() { secs.min(cap) } else { cap };
        Duration::try_from_secs_f64(secs)
            .unwrap_or(self.cap)
            .min(self.cap)
    }

    /// The delay before reconnect number `attempt`, given `unit`, a uniformly random number in
    /// `[0, 1)` (values outside are clamped): `unit × ceiling(attempt)`. A pure function, so
    /// that any random source (or a fixed sequence in tests) can drive it.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        self.ceiling(attempt).mul_f64(unit)
    }
}

/// Where the backoff stands: the number of the next reconnect attempt.
#[derive(Debug, Default)]
struct Schedule {
    attempt: u32,
}

impl Schedule {
    /// A connection ended after `uptime`: a stable one resets the backoff.
    fn disconnected_after(&mut self, uptime: Duration, backoff: &Backoff) {
        if uptime >= backoff.stable {
            self.attempt = 0;
        }
    }

    /// The delay before the next attempt, drawn with `unit`; counts the attempt.
    fn next_delay(&mut self, backoff: &Backoff, unit: f64) -> Duration {
        let delay = backoff.delay(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }
}

/// What a [`ReconnectingClient`] reports.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// A connection is open (the first one or a new one): subscribe or resubscribe now.
    Connected {
        /// The server's handshake response (subprotocol, extensions, headers).
        response: UpgradeResponse,
    },
    /// A message arrived: text, binary, or a ping or pong (pings are answered automatically).
    /// The server's close frame is reported in [`Event::Disconnected`] instead.
    Message(Message),
    /// The connection ended.
    Disconnected {
        /// The server's close frame, if it sent one with a status code.
        close: Option<CloseFrame>,
        /// Why the connection failed, if it did not close cleanly.
        error: Option<Error>,
        /// When the next connection attempt starts; `None` when the client stopped.
        retry_in: Option<Duration>,
    },
    /// A connection attempt failed (connect, TLS, or the opening handshake, e.g. HTTP 401).
    ConnectFailed {
        /// Why.
        error: Error,
        /// When the next attempt starts; `None` when the client gave up
        /// ([`Reconnect::max_retries`]) or stopped.
        retry_in: Option<Duration>,
    },
}

/// Options of a reconnecting client; [`start`](Self::start) it.
#[derive(Debug, Clone)]
pub struct Reconnect {
    client: ClientBuilder,
    connector: Option<Connector>,
    backoff: Backoff,
    seed: Option<u64>,
    max_retries: Option<u32>,
    event_capacity: usize,
}

impl Reconnect {
    /// A reconnecting client that connects with `client` (URL, configuration, subprotocols,
    /// headers, TLS) each time.
    pub fn new(client: ClientBuilder) -> Self {
        Self {
            client,
            connector: None,
            backoff: Backoff::default(),
            seed: None,
            max_retries: None,
            event_capacity: 32,
        }
    }

    /// Dials each connection with `connect` instead of TCP (and TLS for `wss://`) to the URL's
    /// host and port: a Unix socket, a proxy tunnel, a TLS configuration of your own, a
    /// simulated network. `connect` is called once per attempt and its future yields the
    /// transport; the opening handshake then runs over it with the URL's path, query and host
    /// (`Host` header), the client's subprotocols, headers and configuration. The URL's scheme
    /// must still be `ws://` or `wss://`, but the TLS of a `wss://` URL is then the connector's
    /// job (and so are socket options such as `TCP_NODELAY`, which the built-in dialling sets):
    /// the client speaks WebSocket directly over what it returns.
    ///
    /// An error from the future is reported as [`Event::ConnectFailed`] (and retried like any
    /// failed attempt); so is a future that takes longer than the configuration's
    /// [`open_timeout`](crate::Config::open_timeout), as [`Timeout::Connect`].
    ///
    /// Its future must be cancel-safe in this sense: it is dropped before it completes when the
    /// client is [closed](ReconnectingClient::close) or dropped, or when the open timeout
    /// expires, and dropping it must abandon the attempt (as dropping tokio's
    /// `TcpStream::connect` does).
    ///
    /// ```no_run
    /// # async fn run() {
    /// use volley::ClientBuilder;
    /// use volley::reconnect::Reconnect;
    ///
    /// // Over a Unix socket; the URL gives the request's path and `Host` header.
    /// let client = Reconnect::new(ClientBuilder::new("ws://localhost/feed"))
    ///     .connector(|| tokio::net::UnixStream::connect("/run/feed.sock"))
    ///     .start();
    /// # drop(client);
    /// # }
    /// ```
    pub fn connector<F, Fut, S>(mut self, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::io::Result<S>> + Send + 'static,
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.connector = Some(Connector(Arc::new(move || {
            let dialing = connect();
            Box::pin(async move { Ok(Box::new(dialing.await?) as Transport) })
        })));
        self
    }

    /// Sets the backoff (default [`Backoff::default`]: 1 s base, factor 2, 30 s cap, 30 s stable).
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Seeds the jitter's random generator, for reproducible delays (default: seeded by the OS).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Gives up after this many consecutive failed connection attempts (`None`, the default:
    /// never). The last [`Event::ConnectFailed`] then has `retry_in: None` and
    /// [`next`](ReconnectingClient::next) returns `None` after it.
    pub fn max_retries(mut self, retries: Option<u32>) -> Self {
        self.max_retries = retries;
        self
    }

    /// How many events may wait for [`next`](ReconnectingClient::next) before the client stops
    /// reading from the server (default 32, at least 1).
    pub fn event_capacity(mut self, capacity: usize) -> Self {
        self.event_capacity = capacity.max(1);
        self
    }

    /// Starts connecting in a background task and returns the client.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (it spawns a task, like [`tokio::spawn`]).
    pub fn start(self) -> ReconnectingClient {
        let (events_tx, events) = mpsc::channel(self.event_capacity);
        let (commands_tx, commands) = mpsc::channel(16);
        let connected = Arc::new(AtomicBool::new(false));
        let rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let task = Task {
            client: self.client,
            connector: self.connector,
            backoff: self.backoff,
            max_retries: self.max_retries,
            rng,
            commands,
            events: events_tx,
            connected: connected.clone(),
        };
        tokio::spawn(task.run());
        ReconnectingClient {
            events,
            sender: Sender {
                commands: commands_tx,
                connected,
            },
        }
    }
}

/// A request from the application to the connection task.
enum Command {
    Send(Message, oneshot::Sender<Result<()>>),
    Close(Option<CloseFrame>, oneshot::Sender<()>),
}

/// A WebSocket client that reconnects; see the [module docs](self).
///
/// Dropping it closes the current connection (1001) and stops reconnecting.
#[derive(Debug)]
pub struct ReconnectingClient {
    events: mpsc::Receiver<Event>,
    sender: Sender,
}

impl ReconnectingClient {
    /// The next event; `None` once the client stopped ([`close`](Self::close), or
    /// [`Reconnect::max_retries`] reached) and every event was taken.
    ///
    /// Cancel-safe: if the future is dropped before it completes, no event is lost.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Sends a message on the current connection and waits until it is written. Fails with an
    /// I/O error of kind `NotConnected` while disconnected (messages are not queued across
    /// reconnections: resend what matters on [`Event::Connected`]).
    ///
    /// Not cancel-safe: if the future is dropped after the message was handed to the
    /// connection's task (at its first poll, unless 16 sends are already waiting), the message
    /// may still be sent: once and whole, never torn or twice. A future never polled sends
    /// nothing.
    pub async fn send(&self, message: impl Into<Message>) -> Result<()> {
        self.sender.send(message).await
    }

    /// A cloneable handle that sends from other tasks.
    pub fn sender(&self) -> Sender {
        self.sender.clone()
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.sender.is_connected()
    }

    /// Stops: closes the current connection with `frame` (default 1000) and waits for the close
    /// handshake (up to the configuration's `close_timeout`), or abandons the current attempt or
    /// wait; no reconnection follows. The events before it and a final [`Event::Disconnected`]
    /// with `retry_in: None` remain for [`next`](Self::next), which then returns `None`.
    ///
    /// Cancel-safe in this sense: once polled (the request is queued at the first poll, unless
    /// 16 requests are already waiting), the client stops, with `frame`, even if the future is
    /// dropped before the close handshake completes. A future never polled does nothing.
    pub async fn close(&self, frame: Option<CloseFrame>) {
        self.sender.close(frame).await;
    }
}

/// Sends on a [`ReconnectingClient`]'s current connection from any task.
#[derive(Debug, Clone)]
pub struct Sender {
    commands: mpsc::Sender<Command>,
    connected: Arc<AtomicBool>,
}

impl Sender {
    /// Like [`ReconnectingClient::send`]. Not cancel-safe in the same way.
    pub async fn send(&self, message: impl Into<Message>) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        if self
            .commands
            .send(Command::Send(message.into(), tx))
            .await
            .is_err()
        {
            return Err(stopped());
        }
        rx.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// Like [`ReconnectingClient::close`], and cancel-safe in the same way.
    pub async fn close(&self, frame: Option<CloseFrame>) {
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(frame, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether a connection is open right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

fn not_connected() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "not connected (reconnecting)",
    ))
}

fn stopped() -> Error {
    Error::Io(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "the reconnecting client stopped",
    ))
}

/// Why the task stops: the application asked (with whom to tell when done), or went away.
enum Stop {
    Asked(Option<CloseFrame>, oneshot::Sender<()>),
    Dropped,
}

/// How a connection ended.
struct Ended {
    close: Option<CloseFrame>,
    error: Option<Error>,
    stop: Option<Stop>,
}

/// The background task that owns the connections.
struct Task {
    client: ClientBuilder,
    connector: Option<Connector>,
    backoff: Backoff,
    max_retries: Option<u32>,
    rng: StdRng,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    connected: Arc<AtomicBool>,
}

impl Task {
    async fn run(mut self) {
        let mut schedule = Schedule::default();
        let mut failures = 0u32;
        loop {
            let attempt = match self
                .idle(open(self.client.clone(), self.connector.clone()))
                .await
            {
                Ok(attempt) => attempt,
                Err(stop) => return self.stopped(stop, None, None).await,
            };
            let retry_in = match attempt {
                Err(error) => {
                    failures = failures.saturating_add(1);
                    if self.max_retries.is_some_and(|max| failures > max) {
                        let _ = self
                            .events
                            .send(Event::ConnectFailed {
                                error,
                                retry_in: None,
                            })
                            .await;
                        return;
                    }
                    let delay = schedule.next_delay(&self.backoff, self.rng.random());
                    let event = Event::ConnectFailed {
                        error,
                        retry_in: Some(delay),
                    };
                    if self.events.send(event).await.is_err() {
                        return;
                    }
                    delay
                }
                Ok((ws, response)) => {
                    failures = 0;
                    let since = Instant::now();
                    self.connected.store(true, Ordering::Release);
                    if self
                        .events
                        .send(Event::Connected { response })
                        .await
                        .is_err()
                    {
                        self.connected.store(false, Ordering::Release);
                        let mut ws = ws;
                        let _ = ws
                            .close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "")))
                            .await;
                        return;
                    }
                    let ended = self.serve(ws).await;
                    self.connected.store(false, Ordering::Release);
                    if let Some(stop) = ended.stop {
                        return self.stopped(stop, ended.close, ended.error).await;
                    }
                    schedule.disconnected_after(since.elapsed(), &self.backoff);
                    let delay = schedule.next_delay(&self.backoff, self.rng.random());
                    let event = Event::Disconnected {
                        close: ended.close,
                        error: ended.error,
                        retry_in: Some(delay),
                    };
                    if self.events.send(event).await.is_err() {
                        return;
                    }
                    delay
                }
            };
            if let Err(stop) = self.idle(tokio::time::sleep(retry_in)).await {
                return self.stopped(stop, None, None).await;
            }
        }
    }

    /// Reports the end after a stop the application asked for.
    async fn stopped(self, stop: Stop, close: Option<CloseFrame>, error: Option<Error>) {
        if let Stop::Asked(_, done) = stop {
            let _ = done.send(());
            let _ = self
                .events
                .send(Event::Disconnected {
                    close,
                    error,
                    retry_in: None,
                })
                .await;
        }
    }

    /// Runs `future` while disconnected: sends fail at once; a close request or the
    /// application going away interrupts it.
    async fn idle<F: std::future::Future>(&mut self, future: F) -> Result<F::Output, Stop> {
        tokio::pin!(future);
        loop {
            tokio::select! {
                out = &mut future => return Ok(out),
                command = self.commands.recv() => match command {
                    Some(Command::Send(_, reply)) => {
                        let _ = reply.send(Err(not_connected()));
                    }
                    Some(Command::Close(frame, done)) => return Err(Stop::Asked(frame, done)),
                    None => return Err(Stop::Dropped),
                },
                () = self.events.closed() => return Err(Stop::Dropped),
            }
        }
    }

    /// Runs a connection until it ends: reads into events while writing what the application
    /// sends, each without waiting for the other.
    async fn serve(&mut self, ws: WebSocket<Transport>) -> Ended {
        let (mut tx, mut rx) = ws.split();
        let mut ended = Ended {
            close: None,
            error: None,
            stop: None,
        };
        let events = &self.events;
        let stop = tokio::select! {
            () = read_into(&mut rx, events, &mut ended.close, &mut ended.error) => None,
            stop = write_from(&mut tx, &mut self.commands) => Some(stop),
            () = events.closed() => Some(Stop::Dropped),
        };
        if let Some(stop) = stop {
            // Close, then finish the handshake here (the reader may have been waiting for the
            // application to take an event).
            let frame = match &stop {
                Stop::Asked(frame, _) => frame
                    .clone()
                    .unwrap_or_else(|| CloseFrame::new(CloseCode::NORMAL, "")),
                Stop::Dropped => CloseFrame::new(CloseCode::GOING_AWAY, ""),
            };
            let _ = tx.close(Some(frame)).await;
            while let Some(item) = rx.recv().await {
                match item {
                    Ok(Message::Close(frame)) => ended.close = frame,
                    Ok(_) => {}
                    Err(e) => {
                        ended.error.get_or_insert(e);
                    }
                }
            }
            ended.stop = Some(stop);
        }
        ended
    }
}

/// Opens a connection: dials it (with `connector`, or TCP and TLS to the URL) and performs the
/// opening handshake, each within the configuration's `open_timeout`.
async fn open(
    client: ClientBuilder,
    connector: Option<Connector>,
) -> Result<(WebSocket<Transport>, UpgradeResponse)> {
    let (stream, uri) = match connector {
        None => {
            let (stream, uri) = client.dial().await?;
            (Box::new(stream) as Transport, uri)
        }
        Some(connector) => {
            let (uri, _) = client.uri()?;
            let timeout = client.configuration().open_timeout;
            let stream = tokio::time::timeout(timeout, (connector.0)())
                .await
                .map_err(|_| Error::Timeout(Timeout::Connect))??;
            (stream, uri)
        }
    };
    client.handshake(stream, &uri).await
}

/// Reads messages into events until the connection ends, noting its close frame and error.
async fn read_into(
    rx: &mut WsReceiver<Transport>,
    events: &mpsc::Sender<Event>,
    close: &mut Option<CloseFrame>,
    error: &mut Option<Error>,
) {
    while let Some(item) = rx.recv().await {
        match item {
            Ok(Message::Close(frame)) => *close = frame,
            Ok(message) => {
                if events.send(Event::Message(message)).await.is_err() {
                    // The application is gone; `serve` notices and closes.
                    std::future::pending::<()>().await;
                }
            }
            Err(e) => {
                error.get_or_insert(e);
            }
        }
    }
}

/// Writes what the application sends until it asks to stop (or goes away).
async fn write_from(tx: &mut WsSender<Transport>, commands: &mut mpsc::Receiver<Command>) -> Stop {
    loop {
        match commands.recv().await {
            Some(Command::Send(message, reply)) => {
                let _ = reply.send(tx.send(message).await);
            }
            Some(Command::Close(frame, done)) => return Stop::Asked(frame, done),
            None => return Stop::Dropped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn ceiling_grows_by_factor_and_stops_at_the_cap() {
        let b = Backoff::default();
        let secs: Vec<u64> = (0..8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.ceiling(u32::MAX), b.cap, "no overflow, ever");
        let b = Backoff::default().base(ms(100)).factor(3.0).cap(ms(1000));
        assert_eq!(b.ceiling(0), ms(100));
        assert_eq!(b.ceiling(1), ms(300));
        assert_eq!(b.ceiling(2), ms(900));
        assert_eq!(b.ceiling(3), ms(1000));
        // A base above the cap is capped; a factor below 1 means no growth.
        assert_eq!(
            Backoff::default().base(ms(500)).cap(ms(200)).ceiling(0),
            ms(200)
        );
        let flat = Backoff::default().factor(0.5);
        assert_eq!(flat.ceiling(10), flat.base);
        assert_eq!(Backoff::default().factor(f64::NAN).factor, 1.0);
    }

    #[test]
    fn delay_is_full_jitter_below_the_ceiling() {
        let b = Backoff::default().base(ms(100)).cap(ms(1000));
        assert_eq!(b.delay(0, 0.0), Duration::ZERO);
        assert_eq!(b.delay(0, 0.5), ms(50));
        assert_eq!(b.delay(2, 0.25), ms(100));
        assert_eq!(b.delay(9, 0.5), ms(500), "half the cap");
        // Out-of-range inputs are clamped rather than panicking.
        assert_eq!(b.delay(0, -1.0), Duration::ZERO);
        assert_eq!(b.delay(0, 7.0), ms(100));
        assert_eq!(b.delay(0, f64::NAN), Duration::ZERO);
    }

    #[test]
    fn jitter_is_roughly_uniform_over_the_whole_range() {
        let b = Backoff::default();
        let mut rng = StdRng::seed_from_u64(7);
        let n = 20_000;
        let ceiling = b.ceiling(3).as_secs_f64();
        let mut buckets = [0u32; 10];
        let mut sum = 0.0;
        for _ in 0..n {
            let d = b.delay(3, rng.random()).as_secs_f64();
            assert!((0.0..ceiling).contains(&d), "{d} outside [0, {ceiling})");
            sum += d;
            buckets[((d / ceiling) * 10.0) as usize] += 1;
        }
        let mean = sum / f64::from(n);
        assert!((mean - ceiling / 2.0).abs() < ceiling * 0.02, "mean {mean}");
        for (i, count) in buckets.iter().enumerate() {
            // Each tenth holds ~2000 draws.
            assert!((1700..2300).contains(count), "bucket {i}: {count}");
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let b = Backoff::default();
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5).map(|n| b.delay(n, rng.random())).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[test]
    fn schedule_grows_then_resets_after_a_stable_connection() {
        let b = Backoff::default()
            .base(ms(100))
            .cap(ms(1000))
            .stable(ms(5000));
        let mut s = Schedule::default();
        // Full draws (unit just below 1) show the ceilings.
        let unit = 0.999_999;
        let near = |d: Duration, c: u64| assert!(d <= ms(c) && d > ms(c) - ms(1), "{d:?} vs {c}");
        near(s.next_delay(&b, unit), 100);
        near(s.next_delay(&b, unit), 200);
        near(s.next_delay(&b, unit), 400);
        // A short-lived connection does not reset the growth.
        s.disconnected_after(ms(10), &b);
        near(s.next_delay(&b, unit), 800);
        near(s.next_delay(&b, unit), 1000);
        // A stable one does: the next reconnect waits a random time below `base` again.
        s.disconnected_after(ms(5000), &b);
        near(s.next_delay(&b, unit), 100);
        near(s.next_delay(&b, unit), 200);
    }
}
