//! Opening handshakes over a transport: [`accept`] for servers, [`connect`] for clients.

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_proto::Role;
use volley_proto::handshake::{ClientHandshake, HandshakeError, UpgradeRequest, UpgradeResponse};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::maybe_tls::MaybeTlsStream;
use crate::stream::WebSocket;

/// Reads from `stream` into `buf` until `parse` yields a value, returning it and its length.
async fn read_head<S, T>(
    stream: &mut S,
    buf: &mut Vec<u8>,
    mut parse: impl FnMut(&[u8]) -> Result<Option<(T, usize)>, HandshakeError>,
) -> Result<(T, usize)>
where
    S: AsyncRead + Unpin,
{
    loop {
        if !buf.is_empty() {
            if let Some(done) = parse(buf)? {
                return Ok(done);
            }
        }
        let mut chunk = [0u8; 2048];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during the opening handshake",
            )));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Accepts a WebSocket connection on `stream` with the default [`Config`].
///
/// Reads the client's opening handshake, answers 101 (or the matching HTTP error, which is also
/// returned as [`Error::Handshake`]) and returns the connection. Not cancel-safe: dropping it
/// midway leaves the transport in an unknown state; drop the transport too.
pub async fn accept<S>(stream: S) -> Result<WebSocket<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with_config(stream, Config::default())
        .await
        .map(|(ws, _)| ws)
}

/// Accepts a WebSocket connection with `config`, also returning the client's request (path,
/// query, headers) for routing and authentication. Enforces `config.open_timeout`.
///
/// Not cancel-safe (see [`accept`]).
pub async fn accept_with_config<S>(
    mut stream: S,
    config: Config,
) -> Result<(WebSocket<S>, Request<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = config.headers;
    let handshake = async {
        let mut buf = Vec::new();
        let parsed = read_head(&mut stream, &mut buf, |b| UpgradeRequest::parse(b, &limits)).await;
        match parsed {
            Ok((upgrade, len)) => {
                stream
                    .write_all(&upgrade.accept(None, &HeaderMap::new()))
                    .await?;
                stream.flush().await?;
                buf.drain(..len);
                Ok((upgrade, buf))
            }
            Err(Error::Handshake(e)) => {
                let _ = stream.write_all(&e.response()).await;
                let _ = stream.shutdown().await;
                Err(Error::Handshake(e))
            }
            Err(e) => Err(e),
        }
    };
    let (upgrade, leftover) = tokio::time::timeout(config.open_timeout, handshake)
        .await
        .map_err(|_| Error::Timeout("opening handshake"))??;
    let request = upgrade.request().clone();
    let ws = WebSocket::from_raw(stream, Role::Server, config, &leftover);
    Ok((ws, request))
}

/// Connects to a `ws://` URL with the default configuration.
///
/// Not cancel-safe: dropping it midway abandons the connection attempt.
pub async fn connect(url: &str) -> Result<WebSocket<MaybeTlsStream>> {
    ClientBuilder::new(url).connect().await.map(|(ws, _)| ws)
}

/// Options for a client connection: configuration, subprotocols, extra request headers.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    config: Config,
    protocols: Vec<String>,
    headers: HeaderMap,
    #[cfg(feature = "tls")]
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl ClientBuilder {
    /// A client for `url` (`ws://host[:port]/path?query`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            config: Config::default(),
            protocols: Vec::new(),
            headers: HeaderMap::new(),
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Sets the TLS configuration for `wss://` URLs (default: trust the Mozilla roots). Build one
    /// with [`tls::client_config`](crate::tls::client_config).
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: std::sync::Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(config);
        self
    }

    /// Sets the configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Offers a subprotocol (call once per protocol, in order of preference).
    pub fn protocol(mut self, protocol: impl Into<String>) -> Self {
        self.protocols.push(protocol.into());
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Connects over TCP and performs the opening handshake within `open_timeout`.
    ///
    /// Not cancel-safe: dropping it midway abandons the connection attempt.
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, UpgradeResponse)> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| HandshakeError::InvalidUrl(format!("{}: {e}", self.url)))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") if cfg!(feature = "tls") => true,
            Some("wss") => {
                return Err(HandshakeError::InvalidUrl(format!(
                    "{}: wss:// needs volley's `tls` feature",
                    self.url
                ))
                .into());
            }
            _ => {
                return Err(HandshakeError::InvalidUrl(format!(
                    "{}: the scheme must be ws:// or wss://",
                    self.url
                ))
                .into());
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| HandshakeError::InvalidUrl(format!("{}: missing host", self.url)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let connecting = async {
            let stream = TcpStream::connect((host.as_str(), port)).await?;
            stream.set_nodelay(true)?;
            if !secure {
                return Ok::<_, Error>(MaybeTlsStream::Plain(stream));
            }
            #[cfg(feature = "tls")]
            {
                let config = match &self.tls {
                    Some(config) => config.clone(),
                    None => crate::tls::client_config(&crate::tls::Roots::WebPki)?,
                };
                let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|_| {
                    HandshakeError::InvalidUrl(format!("{host}: not a valid TLS server name"))
                })?;
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, stream)
                    .await?;
                Ok(MaybeTlsStream::ClientTls(Box::new(tls)))
            }
            #[cfg(not(feature = "tls"))]
            Err(HandshakeError::InvalidUrl("wss:// needs volley's `tls` feature".into()).into())
        };
        let stream = tokio::time::timeout(self.config.open_timeout, connecting)
            .await
            .map_err(|_| Error::Timeout("connect"))??;
        self.handshake(stream, &uri).await
    }

    /// Performs the client handshake over an already connected transport (for custom transports
    /// such as Unix sockets or TLS streams) within `open_timeout`.
    ///
    /// Not cancel-safe: dropping it midway leaves the transport in an unknown state.
    pub async fn handshake<S>(
        self,
        mut stream: S,
        uri: &Uri,
    ) -> Result<(WebSocket<S>, UpgradeResponse)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let client = ClientHandshake::new(uri, &self.protocols, &self.headers)?;
        let limits = self.config.headers;
        let handshake = async {
            stream.write_all(client.request()).await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let (response, len) =
                read_head(&mut stream, &mut buf, |b| client.parse_response(b, &limits)).await?;
            buf.drain(..len);
            Ok::<_, Error>((response, buf))
        };
        let (response, leftover) = tokio::time::timeout(self.config.open_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout("opening handshake"))??;
        let ws = WebSocket::from_raw(stream, Role::Client, self.config, &leftover);
        Ok((ws, response))
    }
}
