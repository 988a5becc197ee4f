//! A TCP server that runs a handler per WebSocket connection.

use std::future::Future;
use std::net::SocketAddr;

use http::Request;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::task::JoinSet;
use volley_proto::{CloseCode, CloseFrame, Role};

use crate::config::Config;
use crate::events::{Handler, Route};
use crate::handshake::{Accepted, accept_parts};
use crate::maybe_tls::MaybeTlsStream;
use crate::policy::Policy;
use crate::stream::{CloseHandle, WebSocket};

/// A WebSocket server: binds a TCP listener and serves each connection in its own task.
///
/// ```no_run
/// # async fn run() -> std::io::Result<()> {
/// let server = volley::Server::bind("127.0.0.1:9001").await?;
/// server
///     .serve(|mut ws, _request| async move {
///         while let Some(Ok(msg)) = ws.recv().await {
///             if msg.is_data() && ws.send(msg).await.is_err() {
///                 break;
///             }
///         }
///     })
///     .await
/// # }
/// ```
pub struct Server {
    listener: TcpListener,
    config: Config,
    shutdown_frame: CloseFrame,
    drain_timeout: Duration,
    policy: Policy,
    /// Paths served by callbacks on driver tasks instead of a task per connection.
    events: Vec<(String, Arc<dyn Handler>)>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    #[cfg(feature = "hyper")]
    mounts: Vec<crate::integrations::mount::Mount>,
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
    /// Binds to `addr` with the default [`Config`].
    ///
    /// Not cancel-safe in a meaningful way: dropping it leaves nothing bound.
    pub async fn bind(addr: impl ToSocketAddrs) -> std::io::Result<Self> {
        Ok(Self::from_listener(TcpListener::bind(addr).await?))
    }

    /// Wraps an already bound listener.
    pub fn from_listener(listener: TcpListener) -> Self {
        Self {
            listener,
            config: Config::default(),
            shutdown_frame: CloseFrame::new(CloseCode::GOING_AWAY, "server shutting down"),
            drain_timeout: Duration::from_secs(10),
            policy: Policy::default(),
            events: Vec::new(),
            #[cfg(feature = "tls")]
            tls: None,
            #[cfg(feature = "hyper")]
            mounts: Vec::new(),
        }
    }

    /// Serves connections whose first request path starts with `prefix` (e.g. `"/socket.io/"`)
    /// with an HTTP service instead of the WebSocket handler: hyper serves every request on such
    /// a connection (HTTP/1.1 keep-alive, and upgrades, so the service may accept WebSockets
    /// itself). Other paths get the WebSocket handshake as before. Mounts are tried in the order
    /// added. Feature `hyper`.
    ///
    /// At shutdown, mounted connections get the drain timeout like WebSocket ones, then are
    /// aborted; the service should close its own sessions (Socket.IO's `close`) on the same signal.
    #[cfg(feature = "hyper")]
    pub fn mount<F, Fut, B>(mut self, prefix: &str, service: F) -> Self
    where
        F: Fn(Request<::hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<B>> + Send + 'static,
        B: ::hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.mounts
            .push(crate::integrations::mount::Mount::new(prefix, service));
        self
    }

    /// Serves WebSocket connections whose request path is exactly `path` (e.g. `"/"`) with the
    /// callbacks of `handler` instead of a task per connection: a few driver tasks (one per
    /// runtime worker) run them all. An idle connection costs far less memory this way; see
    /// [`events`](crate::events). Other paths get the handler given to [`serve`](Self::serve).
    /// Routes are tried in the order added; graceful shutdown closes their connections too.
    pub fn events(mut self, path: &str, handler: impl Handler) -> Self {
        self.events.push((path.to_owned(), Arc::new(handler)));
        self
    }

    /// Serves `wss://`: every connection does a TLS handshake (within `open_timeout`) first.
    /// Build the configuration with [`tls::server_config`](crate::tls::server_config).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
        self
    }

    /// Sets the handshake policy: Origin allow-list, authentication hook, subprotocols, headers.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Sets the configuration every connection gets.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts connections forever, running `handler` for each completed handshake with the
    /// connection and the client's request. Failed handshakes are answered with their HTTP error
    /// and logged at debug level.
    ///
    /// Never returns an error for a single connection's failure; out of file descriptors, it
    /// backs off and retries. Cancel-safe: dropping it stops accepting; connections already
    /// running continue in their tasks.
    pub async fn serve<F, Fut>(self, handler: F) -> std::io::Result<()>
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.serve_with_shutdown(handler, std::future::pending())
            .await
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

    /// Like [`serve`](Self::serve), until `shutdown` completes; then shuts down gracefully:
    /// stops accepting, closes every open connection with the shutdown close frame (queued behind
    /// the messages already queued, so none is lost while the peer keeps reading), waits up to the
    /// drain timeout for their handlers to finish, then aborts what is left.
    ///
    /// Cancel-safe in the sense that dropping it stops accepting; it does not close connections.
    pub async fn serve_with_shutdown<F, Fut>(
        self,
        handler: F,
        shutdown: impl Future<Output = ()>,
    ) -> std::io::Result<()>
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let stopping = Arc::new(AtomicBool::new(false));
        let config = Arc::new(self.config.clone());
        let mut drivers = Vec::new();
        let events = (self.events.iter())
            .map(|(path, handler)| {
                let (route, tasks) = Route::start(path, handler.clone(), config.clone());
                drivers.extend(tasks);
                route
            })
            .collect();
        // Everything a connection task needs from the server, behind one pointer: each task
        // holds only that, its handler and its connection (idle connections should cost little).
        let ctx = Arc::new(ConnContext {
            config,
            events,
            policy: self.policy.clone().stopping(stopping.clone()),
            open: Mutex::default(),
            stopping,
            shutdown_frame: self.shutdown_frame.clone(),
            #[cfg(feature = "tls")]
            tls: self.tls.clone(),
            #[cfg(feature = "hyper")]
            mounts: self.mounts.clone(),
        });
        let mut tasks = JoinSet::new();
        let mut next_id = 0u64;
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
            let _ = stream.set_nodelay(true);
            let handler = handler.clone();
            let id = next_id;
            next_id += 1;
            let ctx = ctx.clone();
            tasks.spawn(async move {
                // Boxed: the handshake's state (read buffer, TLS) is freed once it is done
                // instead of sizing the task for the connection's whole life.
                let Some(accepted) = Box::pin(ctx.handshake(stream, peer)).await else {
                    return;
                };
                let path = accepted.request.uri().path();
                if let Some(route) = ctx.events.iter().find(|r| r.matches(path)) {
                    route.adopt(
                        accepted.stream,
                        accepted.request,
                        accepted.deflate,
                        &accepted.leftover,
                    );
                    return;
                }
                let ws = WebSocket::from_raw_shared(
                    accepted.stream,
                    Role::Server,
                    ctx.config.clone(),
                    accepted.deflate,
                    &accepted.leftover,
                );
                let request = accepted.request;
                let handle = ws.close_handle();
                lock(&ctx.open).insert(id, handle.clone());
                // Registered after shutdown took its snapshot: close it here.
                if ctx.stopping.load(Ordering::Acquire) {
                    let frame = ctx.shutdown_frame.clone();
                    tokio::spawn(async move { handle.close(frame).await });
                }
                handler(ws, request).await;
                lock(&ctx.open).remove(&id);
            });
        }

        // Graceful shutdown: handshakes still in flight are answered 503.
        ctx.stopping.store(true, Ordering::Release);
        drop(self.listener);
        let handles: Vec<CloseHandle> = lock(&ctx.open).values().cloned().collect();
        tracing::info!(connections = handles.len(), "shutting down");
        let frame = self.shutdown_frame.clone();
        for route in &ctx.events {
            route.stop(&frame);
        }
        for handle in handles {
            let frame = frame.clone();
            tasks.spawn(async move { handle.close(frame).await });
        }
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
            for driver in &mut drivers {
                let _ = driver.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::info!(left = tasks.len(), "drain timeout: aborting connections");
            for driver in &drivers {
                // Its connections are closed when its task is dropped.
                driver.abort();
            }
            tasks.shutdown().await;
            for driver in drivers {
                let _ = driver.await;
            }
        }
        Ok(())
    }
}

/// What every connection task of a server shares.
struct ConnContext {
    config: Arc<Config>,
    /// The events routes and their drivers.
    events: Vec<Route>,
    policy: Policy,
    /// Close handles of the open connections, for graceful shutdown.
    open: Mutex<HashMap<u64, CloseHandle>>,
    stopping: Arc<AtomicBool>,
    shutdown_frame: CloseFrame,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
    #[cfg(feature = "hyper")]
    mounts: Vec<crate::integrations::mount::Mount>,
}

impl ConnContext {
    /// TLS (if configured) and the opening handshake; `None` (logged) if either fails.
    async fn handshake(
        &self,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
    ) -> Option<Accepted<MaybeTlsStream>> {
        #[cfg(feature = "tls")]
        let stream = match &self.tls {
            Some(acceptor) => {
                match tokio::time::timeout(self.config.open_timeout, acceptor.accept(stream)).await
                {
                    Ok(Ok(tls)) => MaybeTlsStream::ServerTls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                        return None;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return None;
                    }
                }
            }
            None => MaybeTlsStream::Plain(stream),
        };
        #[cfg(not(feature = "tls"))]
        let stream = MaybeTlsStream::Plain(stream);
        #[allow(unused_mut)]
        let mut head = Vec::new();
        #[cfg(feature = "hyper")]
        if !self.mounts.is_empty() {
            // Route on the request line: a mounted path goes to its HTTP service.
            let max = self.config.headers.max_bytes;
            let read_line = async {
                use tokio::io::AsyncReadExt;
                let mut stream = stream;
                while crate::integrations::mount::request_path(&head).is_none()
                    && !head.windows(2).any(|w| w == b"\r\n")
                    && head.len() < max
                {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                Some(stream)
            };
            let stream = match tokio::time::timeout(self.config.open_timeout, read_line).await {
                Ok(Some(stream)) => stream,
                _ => return None,
            };
            let path = crate::integrations::mount::request_path(&head).unwrap_or("");
            if let Some(mount) = self.mounts.iter().find(|m| m.matches(path)) {
                mount.serve(head, stream).await;
                return None;
            }
            return self.websocket(stream, head, peer).await;
        }
        self.websocket(stream, head, peer).await
    }

    /// The WebSocket handshake on a transport from which `head` was already read.
    async fn websocket(
        &self,
        stream: MaybeTlsStream,
        head: Vec<u8>,
        peer: SocketAddr,
    ) -> Option<Accepted<MaybeTlsStream>> {
        match accept_parts(stream, head, &self.config, &self.policy).await {
            Ok(accepted) => Some(accepted),
            Err(e) => {
                tracing::debug!(%peer, "handshake failed: {e}");
                None
            }
        }
    }
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
