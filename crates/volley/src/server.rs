//! A TCP server that runs a handler per WebSocket connection.

use std::future::Future;
use std::net::SocketAddr;

use http::Request;
use tokio::net::{TcpListener, ToSocketAddrs};

use crate::config::Config;
use crate::handshake::accept_with_config;
use crate::maybe_tls::MaybeTlsStream;
use crate::stream::WebSocket;

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
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Serves `wss://`: every connection does a TLS handshake (within `open_timeout`) first.
    /// Build the configuration with [`tls::server_config`](crate::tls::server_config).
    #[cfg(feature = "tls")]
    pub fn tls(mut self, config: std::sync::Arc<rustls::ServerConfig>) -> Self {
        self.tls = Some(tokio_rustls::TlsAcceptor::from(config));
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
    /// Returns only if accepting fails with an error that is not per-connection. Cancel-safe:
    /// dropping it stops accepting; connections already running continue in their tasks.
    pub async fn serve<F, Fut>(self, handler: F) -> std::io::Result<()>
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        loop {
            let (stream, peer) = match self.listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) if is_per_connection(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let config = self.config.clone();
            let handler = handler.clone();
            #[cfg(feature = "tls")]
            let tls = self.tls.clone();
            tokio::spawn(async move {
                #[cfg(feature = "tls")]
                let stream = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(config.open_timeout, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => MaybeTlsStream::ServerTls(Box::new(tls)),
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, "TLS handshake failed: {e}");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        }
                    }
                    None => MaybeTlsStream::Plain(stream),
                };
                #[cfg(not(feature = "tls"))]
                let stream = MaybeTlsStream::Plain(stream);
                match accept_with_config(stream, config).await {
                    Ok((ws, request)) => handler(ws, request).await,
                    Err(e) => tracing::debug!(%peer, "handshake failed: {e}"),
                }
            });
        }
    }
}

fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted | WouldBlock
    )
}
