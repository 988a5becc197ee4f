//! A TCP server: accepts connections (over TLS if configured), routes each by the path of its
//! first request ([`router`](crate::router)) and shuts down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use volley_proto::handshake::error_response;
use volley_proto::{CloseCode, CloseFrame, Role};

use crate::callback::Io;
use crate::config::Config;
use crate::handshake::{Accepted, accept_parts};
use crate::maybe_tls::MaybeTlsStream;
use crate::policy::Policy;
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
            match socket.bind(addr).and_then(|()| socket.listen(backlog)) {
                Ok(listener) => return Ok(Self::from_listener(listener)),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address to bind to")
        }))
    }

    /// Wraps an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        Self {
            listener,
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
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) if is_per_connection(&e) => continue,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            ctx.stats.0.accepted.fetch_add(1, Ordering::Relaxed);
            tasks.spawn(ctx.clone().connection(stream, peer));
        }

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

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let _ = stream.set_nodelay(true);
        // Boxed: the handshake's state (read buffer, TLS) is freed once it is done instead of
        // sizing the task for the connection's whole life.
        let Some(opened) = Box::pin(self.open(stream, peer)).await else {
            return;
        };
        match opened {
            Opened::WebSocket(target, accepted) => self.websocket(target, accepted, peer).await,
            #[cfg(feature = "hyper")]
            Opened::Http(head, stream) => Box::pin(self.http(head, stream, peer)).await,
        }
    }

    /// TLS (if configured), the first request line and its route, and for a WebSocket route
    /// the opening handshake; `None` (answered and logged) if any of it fails.
    async fn open(&self, stream: TcpStream, peer: SocketAddr) -> Option<Opened> {
        let mut stream = self.tls(stream, peer).await?;
        let max = self.config.headers.max_bytes;
        let read = tokio::time::timeout(
            self.config.open_timeout,
            read_request_line(&mut stream, max),
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
            if !matches!(read.await, Ok(true)) {
                tracing::debug!(%peer, "no complete request head within the open timeout");
                self.stats.refuse(Refusal::Timeout);
                return None;
            }
            if !is_upgrade(&head) {
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
        let Accepted {
            stream,
            mut request,
            deflate,
            leftover,
        } = accepted;
        match target {
            Target::Task(handler) => {
                request.extensions_mut().insert(PeerAddr(peer));
                let ws = WebSocket::from_raw_shared(
                    stream,
                    Role::Server,
                    self.config.clone(),
                    deflate,
                    &leftover,
                );
                self.run_task(&*handler, ws, request).await;
            }
            // The callback connection reads its peer from the socket: no extension (an idle
            // connection keeps its extensions).
            Target::Callbacks(drivers) => {
                drivers.adopt(Io::Stream(stream), request, deflate, &leftover);
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

/// Reads from `stream` until the first request line is complete (a `\n`), `max` bytes were
/// read, or the peer stops; returns what was read (`None` if the peer sent nothing usable).
async fn read_request_line(stream: &mut MaybeTlsStream, max: usize) -> Option<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 2048];
    while !head.contains(&b'\n') && head.len() < max {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    Some(head)
}

/// Reads from `stream` into `head` until the request head is complete (a blank line) or
/// `max` bytes were read; whether it is complete.
#[cfg(feature = "hyper")]
async fn read_head(stream: &mut MaybeTlsStream, head: &mut Vec<u8>, max: usize) -> bool {
    let mut chunk = [0u8; 2048];
    loop {
        if head_end(head).is_some() {
            return true;
        }
        if head.len() >= max {
            return false;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Where the request head in `buf` ends (after its blank line), once it does.
#[cfg(feature = "hyper")]
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether the complete request head `head` asks for a WebSocket upgrade (an `Upgrade`
/// header naming `websocket`).
#[cfg(feature = "hyper")]
fn is_upgrade(head: &[u8]) -> bool {
    let end = head_end(head).unwrap_or(head.len());
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
