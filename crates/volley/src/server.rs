//! A TCP server: accepts connections (over TLS if configured), routes each by the path of its
//! first request ([`router`](crate::router)) and shuts down gracefully.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use volley_proto::handshake::{UpgradeRequest, error_response};
use volley_proto::{CloseCode, CloseFrame, Role};

use crate::callback::{Io, OpenRequest};
use crate::config::Config;
use crate::handshake::{Accepted, accept_parts, negotiate_deflate};
use crate::maybe_tls::MaybeTlsStream;
use crate::policy::{Policy, now_or_never};
use crate::router::{Endpoint, PeerAddr, Router, Routes, Target, TaskFn, not_found_body};
use crate::task::{CloseHandle, WebSocket};

/// A WebSocket (and HTTP) server: binds a TCP listener and serves its [routes](crate::router).
///
/// ```no_run
/// use volley::Endpoint;
///
/// # async fn run() -> std::io::Result<()> {
/// volley::Server::bind("127.0.0.1:9001")
///     .await?
///     .route(
///         "/echo",
///         Endpoint::task(|mut ws, _request| async move {
///             while let Some(Ok(msg)) = ws.recv().await {
///                 if msg.is_data() && ws.send(msg).await.is_err() {
///                     break;
///                 }
///             }
///         }),
///     )
///     .run()
///     .await
/// # }
/// ```
///
/// [`serve`](Self::serve) is the short form for one task handler on every path.
pub struct Server {
    listener: TcpListener,
    /// The listener had TCP_NODELAY before it listened (see [`bind_with_backlog`]): accepted
    /// sockets have it already.
    ///
    /// [`bind_with_backlog`]: Self::bind_with_backlog
    nodelay_inherited: bool,
    stats: ServerStats,
    config: Config,
    shutdown_frame: CloseFrame,
    drain_timeout: Duration,
    policy: Policy,
    routes: Routes,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Binds to `addr` with the default [`Config`] and a listen backlog of
    /// [`DEFAULT_BACKLOG`](Self::DEFAULT_BACKLOG) (see [`bind_with_backlog`](Self::bind_with_backlog)).
    ///
    /// Not cancel-safe in a meaningful way: dropping it leaves nothing bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        Self::bind_with_backlog(addr, Self::DEFAULT_BACKLOG).await
    }

    /// The listen backlog [`bind`](Self::bind) asks for: room for a storm of clients
    /// reconnecting at once (after a restart) instead of the 128 or 1,024 connections a listener
    /// usually queues; the kernel caps it at `net.core.somaxconn` (4,096 on recent Linux).
    pub const DEFAULT_BACKLOG: u32 = 65_535;

    /// Binds to `addr` (the first of its addresses that binds) with `backlog` connections
    /// waiting to be accepted at most, and `SO_REUSEADDR` (a restarted server binds at once).
    /// Accepted connections get `TCP_NODELAY` (on Linux from the listener, which has it before
    /// it listens).
    ///
    /// Not cancel-safe in a meaningful way: dropping it leaves nothing bound.
    pub async fn bind_with_backlog(
        addr: impl ToSocketAddrs,
        backlog: u32,
    ) -> std::io::Result<Self> {
        let mut last = None;
        for addr in tokio::net::lookup_host(addr).await? {
            let socket = match addr {
                SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
            };
            socket.set_reuseaddr(true)?;
            // Set before `listen`: every accepted socket inherits it (on Linux), which spares a
            // system call per connection.
            let nodelay = cfg!(target_os = "linux") && socket.set_nodelay(true).is_ok();
            match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
                Ok(listener) => {
                    let mut server = Self::from_listener(listener);
                    server.nodelay_inherited = nodelay;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind to")
        }))
    }

    /// Wraps an already bound listener. Each accepted connection gets `TCP_NODELAY` (one system
    /// call: connections may have been queued before the server could set it on the listener).
    pub fn from_listener(listener: TcpListener) -> Self {
        Self {
            listener,
            nodelay_inherited: false,
            stats: ServerStats::default(),
            config: Config::default(),
            shutdown_frame: CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down"),
            drain_timeout: Duration::from_secs(10),
            policy: Policy::default(),
            routes: Routes::default(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serves requests whose path matches `pattern` with `endpoint`: `"/chat"` matches that path
    /// exactly, `"/socket.io/*"` everything under `/socket.io/`, `"/*"` every path (see
    /// [`router`](crate::router)). Paths no route matches get 404.
    ///
    /// # Panics
    /// If `pattern` does not start with `/` or has a `*` anywhere but at its end after a `/`.
    pub fn route(mut self, pattern: &str, endpoint: Endpoint) -> Self {
        self.routes.add(pattern, endpoint);
        self
    }

    /// Serves `wss://` (and `https://` for service routes): every connection does a TLS
    /// handshake (within `open_timeout`) first. Build the configuration with
    /// [`tls::server_config`](crate::tls::server_config).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Sets the handshake policy of WebSocket routes: Origin allow-list, authentication hook,
    /// subprotocols, headers.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the configuration every WebSocket connection gets (callback routes made with
    /// [`Endpoint::drivers`] keep their own).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// A handle on the server's counters (connections accepted, handshakes refused by reason),
    /// to read while it runs.
    pub fn stats(&self) -> ServerStats {
        self.stats.clone()
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Sets the close frame open connections get at shutdown. Default: 1001 (going away),
    /// "server shutting down"; 1012 (service restart) suits rolling restarts.
    pub fn shutdown_close(mut self, code: CloseCode, reason: &str) -> Self {
        self.shutdown_frame = CloseFrame::new(code, reason);
        self
    }

    /// Sets how long shutdown waits for connections to finish their close handshake (and for
    /// messages queued before it to drain) before aborting them. Default 10 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Runs `handler` in a task for every WebSocket connection, whatever its path: short for
    /// `.route("/*", Endpoint::task(handler)).run()`.
    ///
    /// Cancel-safe like [`run`](Self::run).
    pub async fn serve<F, Fut>(self, handler: F) -> std::io::Result<()>
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.route("/*", Endpoint::task(handler)).run().await
    }

    /// [`serve`](Self::serve) until `shutdown` completes, then shuts down gracefully (see
    /// [`run_until`](Self::run_until)).
    pub async fn serve_with_shutdown<F, Fut>(
        self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()>
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.route("/*", Endpoint::task(handler))
            .run_until(shutdown)
            .await
    }

    /// Accepts connections forever and serves them by their routes. A failed handshake is
    /// answered with its HTTP error and logged at debug level.
    ///
    /// Never returns an error for a single connection's failure; out of file descriptors, it
    /// backs off and retries. Fails at once (`InvalidInput`) if no route was added.
    /// Cancel-safe: dropping it stops accepting; connections already running continue.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(std::future::pending()).await
    }

    /// Like [`run`](Self::run), until `shutdown` completes; then shuts down gracefully: stops
    /// accepting, answers handshakes still in flight with 503, closes every open WebSocket with
    /// the shutdown close frame (queued behind the messages already queued, so none is lost
    /// while the peer keeps reading), lets HTTP connections finish their request in progress,
    /// waits up to the drain timeout for all of them, then aborts what is left.
    ///
    /// Cancel-safe in the sense that dropping it stops accepting; it does not close connections.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
        if self.routes.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the server has no routes: add one with Server::route",
            ));
        }
        let stopping = Arc::new(AtomicBool::new(false));
        let config = Arc::new(self.config.clone());
        let router = self.routes.build(&config);
        // Everything a connection task needs from the server, behind one pointer: each task
        // holds only that and its connection (idle connections should cost little).
        let ctx = Arc::new(Ctx {
            stats: self.stats.clone(),
            config,
            router,
            policy: self.policy.clone().stopping(stopping.clone()),
            open: Mutex::default(),
            next_id: AtomicU64::new(0),
            stopping,
            stop: Notify::new(),
            shutdown_frame: self.shutdown_frame.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut batch = Vec::with_capacity(ACCEPT_BATCH);
        let mut pending = Pending::new(ctx.config.open_timeout);
        tokio::pin!(shutdown);
        loop {
            if pending.has_work() && !tokio::task::coop::has_budget_remaining() {
                // This turn's reads are spent: let the runtime run its other tasks (the drivers)
                // and poll for I/O, then go on with the handshakes left.
                tokio::task::yield_now().await;
            }
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                accepted = accept_batch(&self.listener, &mut batch) => {
                    if let Err(e) = accepted {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                () = pending.woken() => {}
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
            ctx.stats
                .0
                .accepted
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            for (stream, peer) in batch.drain(..) {
                if !self.nodelay_inherited {
                    let _ = stream.set_nodelay(true);
                }
                #[cfg(feature = "tls")]
                if ctx.tls.is_some() {
                    tasks.spawn(ctx.clone().connection(stream, peer, Vec::new()));
                    continue;
                }
                pending.add(stream, peer);
            }
            pending.run(&ctx, &mut tasks);
            // The handshakes of the previous batch that are done: reaped without waiting.
            while tasks.try_join_next().is_some() {}
        }

        // Handshakes the accept loop was waiting for go on in tasks (which answer 503).
        ctx.stopping.store(true, Ordering::Release);
        pending.hand_over(&ctx, &mut tasks);
        // Graceful shutdown: handshakes still in flight are answered 503.
        ctx.stopping.store(true, Ordering::Release);
        ctx.stop.notify_waiters();
        drop(self.listener);
        let handles: Vec<CloseHandle> = lock(&ctx.open).values().cloned().collect();
        let drivers: Vec<_> = ctx.router.drivers().cloned().collect();
        tracing::info!(
            connections = handles.len() + drivers.iter().map(|d| d.connections()).sum::<usize>(),
            "shutting down"
        );
        let frame = self.shutdown_frame.clone();
        for drivers in &drivers {
            drivers.shutdown(frame.clone());
        }
        for handle in handles {
            let frame = frame.clone();
            tasks.spawn(async move { handle.close(Some(frame)).await });
        }
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
            for drivers in &drivers {
                drivers.closed().await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::info!(left = tasks.len(), "drain timeout: aborting connections");
            for drivers in &drivers {
                drivers.abort();
            }
            tasks.shutdown().await;
            for drivers in &drivers {
                drivers.closed().await;
            }
        }
        Ok(())
    }
}

/// Counters of a [`Server`], shared with it: read them while it runs
/// ([`Server::stats`]). Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ServerStats(Arc<StatsInner>);

#[derive(Debug, Default)]
struct StatsInner {
    accepted: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

/// Why the server refused a connection or a WebSocket handshake, as [`ServerStats`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Refusal {
    /// No route for the path (404).
    NoRoute,
    /// A malformed or over-long request line (400, 414).
    BadRequest,
    /// Not a valid WebSocket opening handshake (400, 405, 426, 431).
    Handshake,
    /// The policy refused the Origin (403).
    Origin,
    /// The policy's authentication hook refused it (its status: 401, 403, …).
    Auth,
    /// The server was shutting down (503).
    ShuttingDown,
    /// Nothing usable arrived within the open timeout.
    Timeout,
    /// The TLS handshake failed.
    Tls,
}

impl Refusal {
    /// Every reason, in a fixed order.
    pub const ALL: [Refusal; 8] = [
        Self::NoRoute,
        Self::BadRequest,
        Self::Handshake,
        Self::Origin,
        Self::Auth,
        Self::ShuttingDown,
        Self::Timeout,
        Self::Tls,
    ];

    /// A short name: `no_route`, `bad_request`, `handshake`, `origin`, `auth`,
    /// `shutting_down`, `timeout`, `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadRequest => "bad_request",
            Self::Handshake => "handshake",
            Self::Origin => "origin",
            Self::Auth => "auth",
            Self::ShuttingDown => "shutting_down",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
        }
    }

    /// The reason of a refusal the policy answered with `status`.
    fn of_policy(status: StatusCode, policy: &Policy) -> Self {
        match status {
            StatusCode::SERVICE_UNAVAILABLE => Self::ShuttingDown,
            StatusCode::FORBIDDEN if policy.has_origins() => Self::Origin,
            _ => Self::Auth,
        }
    }
}

impl ServerStats {
    /// TCP connections accepted.
    pub fn accepted(&self) -> u64 {
        self.0.accepted.load(Ordering::Relaxed)
    }

    /// Connections or handshakes refused for `reason`.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.0.refused[reason as usize].load(Ordering::Relaxed)
    }

    fn refuse(&self, reason: Refusal) {
        self.0.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// What every connection task of a server shares.
struct Ctx {
    stats: ServerStats,
    config: Arc<Config>,
    router: Router,
    policy: Policy,
    /// Close handles of the open task connections, for graceful shutdown.
    open: Mutex<HashMap<u64, CloseHandle>>,
    next_id: AtomicU64,
    stopping: Arc<AtomicBool>,
    /// Notified when shutdown begins (HTTP connections then stop keep-alive).
    stop: Notify,
    shutdown_frame: CloseFrame,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// A connection after its first request was read and routed (one per connection, briefly: the
/// size of the WebSocket variant does not matter).
#[allow(clippy::large_enum_variant)]
enum Opened {
    WebSocket(Target, Accepted<MaybeTlsStream>),
    /// An HTTP connection for hyper: the bytes read so far and the transport.
    #[cfg(feature = "hyper")]
    Http(Vec<u8>, MaybeTlsStream),
}

impl Ctx {
    /// Completes once shutdown has begun (at once if it has).
    #[cfg(feature = "hyper")]
    async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            notified.await;
        }
    }

    /// Serves a connection from which `head` was read already (see [`Pending`]).
    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, head: Vec<u8>) {
        // Boxed: the handshake's state (read buffer, TLS) is freed once it is done instead of
        // sizing the task for the connection's whole life.
        let Some(opened) = Box::pin(self.open(stream, peer, head)).await else {
            return;
        };
        match opened {
            Opened::WebSocket(target, accepted) => self.websocket(target, accepted, peer).await,
            #[cfg(feature = "hyper")]
            Opened::Http(head, stream) => Box::pin(self.http(head, stream, peer)).await,
        }
    }

    /// The opening handshake of a plain TCP connection to a callbacks route, done by the accept
    /// loop itself once `head` (the bytes read so far) holds the whole request and the policy
    /// has no auth hook: the 101 written at once from `response` (a buffer reused across calls),
    /// the connection handed to its driver. No task, no allocation beyond the connection's own
    /// state and a copy of the request head (built into a request only if `on_open` asks).
    ///
    /// The stream comes back with [`Inline::Incomplete`] while the request is not complete, and
    /// with [`Inline::Elsewhere`] for anything the connection's task does (another kind of
    /// route, a request to refuse, a request for the route's HTTP service).
    fn handshake_inline(
        &self,
        stream: TcpStream,
        head: &[u8],
        response: &mut Vec<u8>,
    ) -> Result<(), (TcpStream, Inline)> {
        let Some(path) = request_path(head) else {
            let line_done = head.contains(&b'\n') || head.len() >= self.config.headers.max_bytes;
            return Err((
                stream,
                if line_done {
                    Inline::Elsewhere
                } else {
                    Inline::Incomplete
                },
            ));
        };
        let Some(Target::Callbacks(drivers)) = self.router.find(path).map(|r| &r.target) else {
            return Err((stream, Inline::Elsewhere));
        };
        if self.policy.has_auth() {
            return Err((stream, Inline::Elsewhere));
        }
        let config = drivers.config();
        let (mut upgrade, used) = match UpgradeRequest::parse(head, &config.headers) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Err((stream, Inline::Incomplete)),
            // Malformed or not an upgrade (a request for the route's HTTP service): the task
            // answers the error or hands it to the service.
            Err(_) => return Err((stream, Inline::Elsewhere)),
        };
        // Refused (the Origin allow-list, shutdown): the task answers it.
        let Some(Ok(mut decision)) = now_or_never(self.policy.decide(&mut upgrade)) else {
            return Err((stream, Inline::Elsewhere));
        };
        let deflate = negotiate_deflate(&upgrade, config, &mut decision.extra);
        response.clear();
        upgrade.write_accept(decision.protocol.as_deref(), &decision.extra, response);
        let leftover = &head[used..];
        // Straight to the socket: a write through tokio would spend the accept loop's
        // cooperative budget, which its reads need, and a fresh socket's send buffer is empty.
        let written = std::io::Write::write(&mut &*socket2::SockRef::from(&stream), response);
        match written {
            Ok(written) if written == response.len() => {
                let io = MaybeTlsStream::Plain(stream);
                adopt(drivers, io, upgrade, &mut decision, deflate, leftover);
            }
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => {
                tracing::debug!("writing the 101 failed: {e}");
            }
            progress => {
                // The socket's send buffer is full (hardly ever, on a fresh connection): a task
                // writes the rest.
                let written = progress.unwrap_or(0);
                let (rest, leftover) = (response[written..].to_vec(), leftover.to_vec());
                let drivers = drivers.clone();
                tokio::spawn(async move {
                    let mut stream = MaybeTlsStream::Plain(stream);
                    if stream.write_all(&rest).await.is_ok() {
                        adopt(&drivers, stream, upgrade, &mut decision, deflate, &leftover);
                    }
                });
            }
        }
        Ok(())
    }

    /// TLS (if configured), the first request line and its route, and for a WebSocket route
    /// the opening handshake, going on from `head` (what was read already); `None` (answered
    /// and logged) if any of it fails.
    async fn open(&self, stream: TcpStream, peer: SocketAddr, head: Vec<u8>) -> Option<Opened> {
        let mut stream = self.tls(stream, peer).await?;
        let max = self.config.headers.max_bytes;
        let read = tokio::time::timeout(
            self.config.open_timeout,
            read_request_line(&mut stream, max, head),
        );
        let head = match read.await {
            Ok(Some(head)) => head,
            _ => {
                tracing::debug!(%peer, "no request line within the open timeout");
                self.stats.refuse(Refusal::Timeout);
                return None;
            }
        };
        let answer = match request_path(&head) {
            Some(path) => match self.router.find(path) {
                Some(routed) => Ok(routed.clone()),
                None => Err((StatusCode::NOT_FOUND, not_found_body(path))),
            },
            None if head.len() >= max => Err((
                StatusCode::URI_TOO_LONG,
                format!("request line longer than {max} bytes\n"),
            )),
            None => Err((StatusCode::BAD_REQUEST, "malformed request line\n".into())),
        };
        let routed = match answer {
            Ok(routed) => routed,
            Err((status, body)) => {
                tracing::debug!(%peer, "answered {status}: {}", body.trim_end());
                self.stats.refuse(match status {
                    StatusCode::NOT_FOUND => Refusal::NoRoute,
                    _ => Refusal::BadRequest,
                });
                let _ = stream.write_all(&error_response(status, "", &body)).await;
                let _ = stream.shutdown().await;
                return None;
            }
        };
        #[cfg(feature = "hyper")]
        let mut head = head;
        #[cfg(feature = "hyper")]
        if routed.http.is_some() && !matches!(routed.target, Target::Service(_)) {
            // Upgrades go to the WebSocket endpoint, other requests to the route's service:
            // the headers tell.
            let read = tokio::time::timeout(
                self.config.open_timeout,
                read_head(&mut stream, &mut head, max),
            );
            let Ok(Some(end)) = read.await else {
                tracing::debug!(%peer, "no complete request head within the open timeout");
                self.stats.refuse(Refusal::Timeout);
                return None;
            };
            if !is_upgrade(&head[..end]) {
                return Some(Opened::Http(head, stream));
            }
        }
        let target = routed.target;
        match target {
            #[cfg(feature = "hyper")]
            Target::Service(_) => Some(Opened::Http(head, stream)),
            target => {
                let config = match &target {
                    Target::Callbacks(drivers) => drivers.config(),
                    _ => &*self.config,
                };
                match accept_parts(stream, head, config, &self.policy).await {
                    Ok(accepted) => Some(Opened::WebSocket(target, accepted)),
                    Err(e) => {
                        tracing::debug!(%peer, "handshake failed: {e}");
                        let reason = match e {
                            crate::Error::Rejected(status) => {
                                Refusal::of_policy(status, &self.policy)
                            }
                            crate::Error::Timeout(_) => Refusal::Timeout,
                            _ => Refusal::Handshake,
                        };
                        self.stats.refuse(reason);
                        None
                    }
                }
            }
        }
    }

    async fn tls(&self, stream: TcpStream, peer: SocketAddr) -> Option<MaybeTlsStream> {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = &self.tls {
            let handshake = acceptor.accept(stream);
            return match tokio::time::timeout(self.config.open_timeout, handshake).await {
                Ok(Ok(tls)) => Some(MaybeTlsStream::ServerTls(Box::new(tls))),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, "TLS handshake failed: {e}");
                    self.stats.refuse(Refusal::Tls);
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    self.stats.refuse(Refusal::Tls);
                    None
                }
            };
        }
        let _ = peer;
        Some(MaybeTlsStream::Plain(stream))
    }

    /// Serves a WebSocket connection whose handshake completed.
    async fn websocket(
        &self,
        target: Target,
        accepted: Accepted<MaybeTlsStream>,
        peer: SocketAddr,
    ) {
        let mut accepted = accepted;
        match target {
            Target::Task(handler) => {
                let mut request = accepted.request();
                request.extensions_mut().insert(PeerAddr(peer));
                let ws = WebSocket::from_raw_shared(
                    accepted.stream,
                    Role::Server,
                    self.config.clone(),
                    accepted.deflate,
                    &accepted.leftover,
                );
                self.run_task(&*handler, ws, request).await;
            }
            // The callback connection reads its peer from the socket: no extension (an idle
            // connection keeps its extensions).
            Target::Callbacks(drivers) => {
                let Accepted {
                    stream,
                    upgrade,
                    mut decision,
                    deflate,
                    leftover,
                } = accepted;
                adopt(&drivers, stream, upgrade, &mut decision, deflate, &leftover);
            }
            #[cfg(feature = "hyper")]
            Target::Service(_) => {}
        }
    }

    /// Runs a task handler, its connection registered for graceful shutdown.
    async fn run_task(
        &self,
        handler: &TaskFn,
        ws: WebSocket<MaybeTlsStream>,
        request: Request<()>,
    ) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = ws.close_handle();
        lock(&self.open).insert(id, handle.clone());
        // Registered after shutdown took its snapshot: close it here.
        if self.stopping.load(Ordering::Acquire) {
            let frame = self.shutdown_frame.clone();
            tokio::spawn(async move { handle.close(Some(frame)).await });
        }
        handler(ws, request).await;
        lock(&self.open).remove(&id);
    }
}

#[cfg(feature = "hyper")]
impl Ctx {
    /// Serves an HTTP connection with hyper: every request routed by its path.
    async fn http(self: Arc<Self>, head: Vec<u8>, stream: MaybeTlsStream, peer: SocketAddr) {
        use crate::integrations::service::serve_connection;
        let stop = self.clone();
        let stop = async move { stop.stopped().await };
        let ctx = self.clone();
        let answer = move |mut request: Request<::hyper::body::Incoming>| {
            let ctx = ctx.clone();
            async move {
                request.extensions_mut().insert(PeerAddr(peer));
                // What Engine.IO and other services that know no volley type look for.
                request.extensions_mut().insert(peer);
                ctx.answer(request).await
            }
        };
        let head_timeout = self.config.open_timeout;
        serve_connection(head, stream, answer, stop, head_timeout).await;
    }

    /// Answers one request of an HTTP connection.
    async fn answer(
        self: Arc<Self>,
        mut request: Request<::hyper::body::Incoming>,
    ) -> http::Response<crate::integrations::service::HttpBody> {
        use crate::integrations::service::text_response;
        let path = request.uri().path();
        let Some(routed) = self.router.find(path) else {
            self.stats.refuse(Refusal::NoRoute);
            return text_response(StatusCode::NOT_FOUND, not_found_body(path));
        };
        if let Some(http) = &routed.http {
            let upgrade = request.headers().get_all(http::header::UPGRADE).iter();
            if !upgrade.into_iter().any(|v| names_websocket(v.as_bytes())) {
                return http.call(request).await;
            }
        }
        let target = routed.target.clone();
        if let Target::Service(service) = &target {
            return service.call(request).await;
        }
        // A WebSocket route reached on an HTTP connection: upgrade through hyper.
        let config = match &target {
            Target::Callbacks(drivers) => drivers.config().clone(),
            _ => (*self.config).clone(),
        };
        let (response, accepted) =
            match crate::hyper::accept(&mut request, config, &self.policy).await {
                Ok(accepted) => accepted,
                Err(rejection) => {
                    self.stats.refuse(match &rejection {
                        crate::hyper::Rejection::Policy(reject) => {
                            Refusal::of_policy(reject.status(), &self.policy)
                        }
                        _ => Refusal::Handshake,
                    });
                    return crate::integrations::service::boxed(rejection.into_response());
                }
            };
        match target {
            Target::Callbacks(drivers) => accepted.adopt(&drivers),
            Target::Task(handler) => {
                tokio::spawn(async move {
                    match accepted.upgrade_parts().await {
                        // The request keeps its extensions: the PeerAddr put there above.
                        Ok((io, request, deflate)) => {
                            let ws = WebSocket::from_raw_shared(
                                MaybeTlsStream::upgraded(io),
                                Role::Server,
                                self.config.clone(),
                                deflate,
                                &[],
                            );
                            self.run_task(&*handler, ws, request).await;
                        }
                        Err(e) => tracing::debug!("WebSocket upgrade failed after the 101: {e}"),
                    }
                });
            }
            Target::Service(_) => {}
        }
        response
    }
}

/// Why [`Ctx::handshake_inline`] gave the stream back.
enum Inline {
    /// The request is not complete yet: read on.
    Incomplete,
    /// The connection's task takes it from here.
    Elsewhere,
}

/// Handshakes the accept loop runs itself while their request arrives (plain TCP only): each
/// accepted connection waits here, woken by its socket, until its request is complete, and is
/// then handed to its callbacks' driver ([`Ctx::handshake_inline`]) or, for anything else, to a
/// task of its own ([`Ctx::connection`]) with what was read. Like a driver's connections, they
/// cost no task and no timer each: one waker, and a place in a deadline queue
/// (`open_timeout`).
struct Pending {
    slots: Vec<Option<Waiting>>,
    free: Vec<usize>,
    woken: Arc<Woken>,
    /// Slots to advance: woken by their socket (taken from `woken`), or new. What a turn's
    /// cooperative budget did not cover waits here for the next turn.
    turn: VecDeque<usize>,
    /// (deadline, slot, generation), in deadline order: every handshake gets the same timeout.
    deadlines: VecDeque<(Instant, usize, u64)>,
    timeout: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    generation: u64,
    /// Every read lands here first; a request that takes more than one read is copied out.
    scratch: Box<[u8]>,
    /// Every 101 is written from here.
    response: Vec<u8>,
}

/// A connection whose request is awaited.
struct Waiting {
    stream: TcpStream,
    peer: SocketAddr,
    /// What was read of a request that did not come in one read.
    head: Vec<u8>,
    generation: u64,
    waker: Waker,
}

/// Slots woken since the accept loop last looked, and the accept loop's waker.
#[derive(Default)]
struct Woken(Mutex<(Vec<usize>, Option<Waker>)>);

/// The waker of one pending handshake: queues its slot and wakes the accept loop.
struct SlotWaker {
    slot: usize,
    woken: Arc<Woken>,
}

impl std::task::Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let mut woken = lock(&self.woken.0);
        woken.0.push(self.slot);
        let task = woken.1.take();
        drop(woken);
        if let Some(task) = task {
            task.wake();
        }
    }
}

/// Bytes read from a socket at once while its request is awaited.
const SCRATCH: usize = 4096;

/// Whether `slot` of `slots` still holds the handshake of `generation` (not done, not timed
/// out).
fn waits(slots: &[Option<Waiting>], slot: usize, generation: u64) -> bool {
    slots[slot]
        .as_ref()
        .is_some_and(|w| w.generation == generation)
}

/// Deadline entries the accept loop keeps room for after a burst of handshakes (and the most
/// entries of finished handshakes it lets pile up behind a slow one).
const DEADLINES_KEPT: usize = 256;

impl Pending {
    fn new(timeout: Duration) -> Self {
        Self {
            slots: Vec::new(),
            free: Vec::new(),
            woken: Arc::default(),
            turn: VecDeque::new(),
            deadlines: VecDeque::new(),
            timeout,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            generation: 0,
            scratch: vec![0; SCRATCH].into_boxed_slice(),
            response: Vec::with_capacity(256),
        }
    }

    /// Whether handshakes are queued to advance.
    fn has_work(&self) -> bool {
        !self.turn.is_empty()
    }

    /// Completes when a pending handshake's socket woke it, handshakes are left from the last
    /// turn, or the earliest deadline passed. Cancel-safe: what woke it stays queued for
    /// [`run`](Self::run).
    async fn woken(&mut self) {
        std::future::poll_fn(|cx| {
            if !self.turn.is_empty() {
                return Poll::Ready(());
            }
            {
                let mut woken = lock(&self.woken.0);
                if !woken.0.is_empty() {
                    return Poll::Ready(());
                }
                if !woken.1.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    woken.1 = Some(cx.waker().clone());
                }
            }
            if let Some(&(at, _, _)) = self.deadlines.front() {
                if self.timer.deadline() != at {
                    self.timer.as_mut().reset(at);
                }
                if self.timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Takes a newly accepted connection; [`run`](Self::run) reads what it sent.
    fn add(&mut self, stream: TcpStream, peer: SocketAddr) {
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        self.generation += 1;
        let waker = Waker::from(Arc::new(SlotWaker {
            slot,
            woken: self.woken.clone(),
        }));
        self.slots[slot] = Some(Waiting {
            stream,
            peer,
            head: Vec::new(),
            generation: self.generation,
            waker,
        });
        let deadline = Instant::now() + self.timeout;
        self.deadlines.push_back((deadline, slot, self.generation));
        // Read in this turn (tokio takes an accepted socket for readable), budget permitting.
        self.turn.push_back(slot);
    }

    /// Advances the handshakes queued (new, or woken by their socket) as far as this turn's
    /// cooperative budget goes, and drops those past their deadline.
    fn run(&mut self, ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) {
        self.turn.extend(lock(&self.woken.0).0.drain(..));
        // A read without budget would return at once and wake its handshake again later: stop
        // here and keep the rest for the next turn (the accept loop yields first).
        while tokio::task::coop::has_budget_remaining() {
            let Some(slot) = self.turn.pop_front() else {
                break;
            };
            self.advance(ctx, slot, tasks);
        }
        self.expire(Instant::now(), |waiting| {
            tracing::debug!(peer = %waiting.peer, "no complete request within the open timeout");
            ctx.stats.refuse(Refusal::Timeout);
        });
    }

    /// Drops the handshakes past their deadline at `now` (handing each to `timed_out`), and
    /// the deadline entries of handshakes done since.
    fn expire(&mut self, now: Instant, mut timed_out: impl FnMut(Waiting)) {
        while let Some(&(at, slot, generation)) = self.deadlines.front() {
            let waits = waits(&self.slots, slot, generation);
            if waits && at > now {
                break;
            }
            // Past its deadline, or done (its handshake completed since): an entry of a done
            // handshake leaves as soon as it is at the front rather than at its deadline, so
            // that the queue holds about as many entries as handshakes in flight. Kept until
            // the deadline, a storm of 15,000 left 15,000 entries behind and the queue's
            // capacity in memory: 35 B per connection that stayed open.
            self.deadlines.pop_front();
            if waits {
                timed_out(self.release(slot));
            }
        }
        // A slow handshake at the front holds the entries of those done behind it: drop them
        // once they are most of the queue (amortized O(1) per handshake).
        let live = self.slots.len() - self.free.len();
        if self.deadlines.len() > 2 * live + DEADLINES_KEPT {
            let slots = &self.slots;
            self.deadlines
                .retain(|&(_, slot, generation)| waits(slots, slot, generation));
        }
        if self.deadlines.capacity() > DEADLINES_KEPT && self.deadlines.len() < DEADLINES_KEPT / 2 {
            self.deadlines.shrink_to(DEADLINES_KEPT);
        }
    }

    /// Frees `slot`, returning what waited there.
    fn release(&mut self, slot: usize) -> Waiting {
        self.free.push(slot);
        self.slots[slot]
            .take()
            .expect("a released slot holds a connection")
    }

    /// Reads what the connection in `slot` sent, until its request is complete (then handled
    /// at once or handed to a task) or the socket has nothing more for now.
    fn advance(&mut self, ctx: &Arc<Ctx>, slot: usize, tasks: &mut JoinSet<()>) {
        let Some(waiting) = self.slots[slot].as_mut() else {
            // Woken after it was handled.
            return;
        };
        let waker = waiting.waker.clone();
        let mut cx = Context::from_waker(&waker);
        loop {
            let Some(waiting) = self.slots[slot].as_mut() else {
                return;
            };
            let mut buf = ReadBuf::new(&mut self.scratch);
            // A read shorter than the buffer tells tokio the socket is drained: no read that
            // would block is needed before the next wake-up.
            let read = Pin::new(&mut waiting.stream).poll_read(&mut cx, &mut buf);
            let n = buf.filled().len();
            match read {
                Poll::Pending => return,
                Poll::Ready(Ok(())) if n > 0 => {}
                // Closed or failed before its request: as a task would, count it as a request
                // that never came.
                Poll::Ready(_) => {
                    let waiting = self.release(slot);
                    tracing::debug!(peer = %waiting.peer, "closed before its request");
                    ctx.stats.refuse(Refusal::Timeout);
                    return;
                }
            }
            let Some(mut waiting) = self.slots[slot].take() else {
                return;
            };
            let head: &[u8] = if waiting.head.is_empty() {
                &self.scratch[..n]
            } else {
                waiting.head.extend_from_slice(&self.scratch[..n]);
                &waiting.head
            };
            match ctx.handshake_inline(waiting.stream, head, &mut self.response) {
                Ok(()) => {
                    self.free.push(slot);
                    return;
                }
                Err((stream, Inline::Elsewhere)) => {
                    let head = if waiting.head.is_empty() {
                        self.scratch[..n].to_vec()
                    } else {
                        waiting.head
                    };
                    self.free.push(slot);
                    tasks.spawn(ctx.clone().connection(stream, waiting.peer, head));
                    return;
                }
                Err((stream, Inline::Incomplete)) => {
                    if waiting.head.is_empty() {
                        waiting.head.extend_from_slice(&self.scratch[..n]);
                    }
                    // Same slot, same deadline: read on.
                    waiting.stream = stream;
                    self.slots[slot] = Some(waiting);
                }
            }
        }
    }

    /// Hands every handshake still waiting to a task of its own (at shutdown).
    fn hand_over(&mut self, ctx: &Arc<Ctx>, tasks: &mut JoinSet<()>) {
        for waiting in self.slots.drain(..).flatten() {
            tasks.spawn(
                ctx.clone()
                    .connection(waiting.stream, waiting.peer, waiting.head),
            );
        }
        self.free.clear();
        self.deadlines.clear();
    }
}

/// Hands a connection whose handshake completed to its drivers: the request as parsed (built
/// only if `on_open` asks) or as the auth hook returned it, and the policy's extensions.
fn adopt(
    drivers: &crate::callback::Drivers,
    stream: MaybeTlsStream,
    upgrade: UpgradeRequest,
    decision: &mut crate::policy::Decision,
    deflate: Option<volley_proto::DeflateParams>,
    leftover: &[u8],
) {
    let io = match Io::stream(stream) {
        Ok(io) => io,
        Err(e) => {
            // Not served: the socket is closed (tokio could not let it go).
            tracing::debug!("handing a connection to its driver failed: {e}");
            return;
        }
    };
    let (extensions, authed) = decision.take_extensions();
    let request = match authed {
        Some(request) => OpenRequest::Built(request),
        None => OpenRequest::Parsed(upgrade),
    };
    drivers.adopt_open(io, request, extensions, deflate, leftover);
}

/// Most connections taken from the listen queue per turn of the accept loop: the rest of the
/// turn's cooperative budget (128 operations in tokio) goes to reading the requests of the
/// connections accepted before.
const ACCEPT_BATCH: usize = 32;

/// Accepts connections into `batch` until the listen queue is empty (`accept` would block) or
/// the batch is full; waits only while it has none. A connection that failed before it was
/// accepted (reset, aborted) is skipped; another error ends the batch, and is returned if the
/// batch is empty (it will recur on the next call otherwise).
///
/// Cancel-safe: accepted connections are in `batch` as soon as they are accepted.
async fn accept_batch(
    listener: &TcpListener,
    batch: &mut Vec<(TcpStream, SocketAddr)>,
) -> std::io::Result<()> {
    std::future::poll_fn(|cx| {
        while batch.len() < ACCEPT_BATCH {
            match listener.poll_accept(cx) {
                std::task::Poll::Ready(Ok(accepted)) => batch.push(accepted),
                std::task::Poll::Ready(Err(e)) if is_per_connection(&e) => {}
                std::task::Poll::Ready(Err(e)) if batch.is_empty() => {
                    return std::task::Poll::Ready(Err(e));
                }
                std::task::Poll::Ready(Err(_)) => break,
                std::task::Poll::Pending if batch.is_empty() => return std::task::Poll::Pending,
                std::task::Poll::Pending => break,
            }
        }
        std::task::Poll::Ready(Ok(()))
    })
    .await
}

/// The read buffer of a request head: most opening handshakes fit in one read of this size.
const HEAD_CAPACITY: usize = 2048;

/// Reads from `stream` after `head` (what was read already) until the first request line is
/// complete (a `\n`), `max` bytes were read, or the peer stops; returns what was read (`None`
/// if the peer sent nothing usable).
async fn read_request_line(
    stream: &mut MaybeTlsStream,
    max: usize,
    mut head: Vec<u8>,
) -> Option<Vec<u8>> {
    // Read straight into the buffer (no chunk on the stack: this future lives in a task).
    head.reserve(HEAD_CAPACITY);
    while !head.contains(&b'\n') && head.len() < max {
        head.reserve(HEAD_CAPACITY / 2);
        match stream.read_buf(&mut head).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    Some(head)
}

/// Reads from `stream` into `head` until the request head is complete (a blank line) or
/// `max` bytes were read; where the head ends, once it is complete.
#[cfg(feature = "hyper")]
async fn read_head(stream: &mut MaybeTlsStream, head: &mut Vec<u8>, max: usize) -> Option<usize> {
    let mut searched = 0;
    loop {
        if let Some(end) = head_end(head, searched) {
            return Some(end);
        }
        if head.len() >= max {
            return None;
        }
        // A blank line ends at most 2 bytes after the last line feed seen: search on from it.
        searched = head.len().saturating_sub(2);
        head.reserve(HEAD_CAPACITY / 2);
        match stream.read_buf(head).await {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Where the request head in `buf` ends (after its blank line: `\n\n` or `\n\r\n`), once it
/// does; the search starts at `from` (bytes before it were searched already).
#[cfg(feature = "hyper")]
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(n) = buf.get(at..)?.iter().position(|&b| b == b'\n') {
        let lf = at + n;
        match buf.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if buf.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        at = lf + 1;
    }
    None
}

/// Whether the complete request head `head` asks for a WebSocket upgrade (an `Upgrade`
/// header naming `websocket`).
#[cfg(feature = "hyper")]
fn is_upgrade(head: &[u8]) -> bool {
    let end = head_end(head, 0).unwrap_or(head.len());
    (head[..end].split(|&b| b == b'\n').skip(1))
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            let (name, value) = line.split_at(colon);
            name.eq_ignore_ascii_case(b"upgrade").then_some(&value[1..])
        })
        .any(names_websocket)
}

/// Whether an `Upgrade` header value names `websocket` among its tokens.
#[cfg(feature = "hyper")]
fn names_websocket(value: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"websocket"))
}

/// The path of the HTTP request whose head starts `buf`, once its request line is complete
/// and well formed (`METHOD target HTTP/x`).
pub(crate) fn request_path(buf: &[u8]) -> Option<&str> {
    let line_end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..line_end]).ok()?;
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    path.starts_with('/').then_some(path)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::request_path;

    /// What a server from `bind_with_backlog` relies on instead of setting TCP_NODELAY on
    /// every accepted socket.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_from_the_listener() {
        for nodelay in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            socket2::SockRef::from(&listener)
                .set_tcp_nodelay(nodelay)
                .expect("TCP_NODELAY");
            let addr = listener.local_addr().expect("addr");
            let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (accepted, _) = listener.accept().await.expect("accept");
            assert_eq!(accepted.nodelay().expect("TCP_NODELAY"), nodelay);
        }
    }

    #[cfg(feature = "hyper")]
    #[test]
    fn upgrades_are_told_apart_by_their_upgrade_header() {
        use super::is_upgrade;
        assert!(is_upgrade(
            b"GET / HTTP/1.1\r\nHost: a\r\nUPGRADE:  WebSocket \r\n\r\n"
        ));
        assert!(is_upgrade(b"GET / HTTP/1.1\nupgrade: h2c, websocket\n\n"));
        assert!(!is_upgrade(b"GET / HTTP/1.1\r\nAccept: text/html\r\n\r\n"));
        assert!(!is_upgrade(
            b"GET / HTTP/1.1\r\nX-Upgrade: websocket\r\n\r\n"
        ));
        assert!(!is_upgrade(
            b"GET / HTTP/1.1\r\nUpgrade: websockets\r\n\r\n"
        ));
        // Past the head: a body is not headers.
        assert!(!is_upgrade(
            b"POST / HTTP/1.1\r\n\r\nUpgrade: websocket\r\n"
        ));
    }

    #[tokio::test]
    async fn a_bound_server_hands_its_connections_nodelay_and_a_wrapped_listener_does_not() {
        let server = super::Server::bind("127.0.0.1:0").await.expect("bind");
        assert_eq!(server.nodelay_inherited, cfg!(target_os = "linux"));
        let addr = server.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = server.listener.accept().await.expect("accept");
        if server.nodelay_inherited {
            assert!(accepted.nodelay().expect("TCP_NODELAY"));
        }
        // A listener bound elsewhere may have queued connections already: each gets it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        assert!(!super::Server::from_listener(listener).nodelay_inherited);
    }

    #[cfg(feature = "hyper")]
    #[test]
    fn a_head_ends_at_its_first_blank_line() {
        use super::head_end;
        let crlf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody";
        assert_eq!(head_end(crlf, 0), Some(crlf.len() - 4));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\r\n", 0), Some(25));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\n", 0), Some(24));
        for partial in [
            &b"GET / HTTP/1.1\r\nHost: a\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: a\r\n\r",
            b"GET / HTTP/1.1\r\nHost: a\r",
            b"",
        ] {
            assert_eq!(head_end(partial, 0), None, "{partial:?}");
        }
        // Resuming the search near the end of what was searched finds a head completed later.
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        let from = head.len() - 2;
        head.extend_from_slice(b"\r\n");
        assert_eq!(head_end(&head, from), Some(head.len()));
    }

    /// The accept loop's deadline queue holds about as many entries as handshakes in flight:
    /// done ones leave from the front at once, and those behind a slow handshake once they
    /// are most of the queue (a storm of 15,000 had left 15,000 entries, 35 B per connection).
    #[tokio::test]
    async fn finished_handshakes_leave_the_deadline_queue_before_their_deadline() {
        use std::time::Duration;
        use tokio::time::Instant;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut pending = super::Pending::new(Duration::from_secs(60));
        let mut clients = Vec::new();
        for _ in 0..1000 {
            clients.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
            let (accepted, peer) = listener.accept().await.expect("accept");
            pending.add(accepted, peer);
        }
        pending.turn.clear();
        let now = Instant::now();
        let mut timed_out = 0;
        // The first stays (a slow client); the others finish, in order.
        for slot in 1..1000 {
            pending.release(slot);
            pending.expire(now, |_| timed_out += 1);
        }
        assert_eq!(timed_out, 0, "nothing was past its deadline");
        assert!(
            pending.deadlines.len() <= super::DEADLINES_KEPT + 3,
            "{} entries for one handshake in flight",
            pending.deadlines.len()
        );
        // Once the slow one finishes too, the queue empties and gives its room back.
        pending.release(0);
        pending.expire(now, |_| timed_out += 1);
        assert!(pending.deadlines.is_empty());
        assert!(pending.deadlines.capacity() <= super::DEADLINES_KEPT);
        // And one past its deadline still times out.
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (accepted, peer) = listener.accept().await.expect("accept");
        pending.add(accepted, peer);
        pending.expire(Instant::now() + Duration::from_secs(61), |_| timed_out += 1);
        assert_eq!(timed_out, 1);
        drop((client, clients));
    }

    #[test]
    fn request_path_needs_a_complete_well_formed_request_line() {
        assert_eq!(
            request_path(b"GET /socket.io/?EIO=4 HTTP/1.1\r\nHost"),
            Some("/socket.io/")
        );
        assert_eq!(request_path(b"POST /a HTTP/1.1\r\n"), Some("/a"));
        assert_eq!(request_path(b"GET /a HTTP/1.1\n"), Some("/a"));
        assert_eq!(request_path(b"GET /socket.io/?EIO=4 HTT"), None);
        assert_eq!(request_path(b"\xff\xfe /x HTTP/1.1\r\n"), None);
        assert_eq!(request_path(b"GET * HTTP/1.1\r\n"), None);
        assert_eq!(request_path(b"garbage\r\n"), None);
        assert_eq!(request_path(b"GET /a b HTTP/1.1\r\n"), None);
    }
}
