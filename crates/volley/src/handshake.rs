//! Opening handshakes over a transport: [`accept`] for servers, [`connect`] for clients.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Uri, header};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_proto::handshake::{ClientHandshake, HandshakeError, UpgradeRequest, UpgradeResponse};
use volley_proto::{CloseCode, CloseFrame, Connection, DeflateParams, Role};

use crate::config::Config;
use crate::error::{Error, Result, Timeout};
use crate::maybe_tls::MaybeTlsStream;
use crate::policy::{Decision, Policy};
use crate::task::WebSocket;

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
        if !buf.is_empty()
            && let Some(done) = parse(buf)?
        {
            return Ok(done);
        }
        // Straight into the buffer: no chunk on the stack in this future.
        buf.reserve(1024);
        let n = stream.read_buf(buf).await?;
        if n == 0 {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed during the opening handshake",
            )));
        }
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
/// With [`Config::deflate`] set, the first acceptable permessage-deflate offer is accepted and
/// its parameters answered in the 101 ([`WebSocket::deflate`] tells them).
///
/// Not cancel-safe (see [`accept`]).
pub async fn accept_with_config<S>(stream: S, config: Config) -> Result<(WebSocket<S>, Request<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_with_policy(stream, config, &Policy::default()).await
}

/// Accepts a WebSocket connection with `config`, applying `policy` (Origin allow-list,
/// authentication hook, subprotocol selection, extra headers) before answering 101. A request
/// the policy refuses is answered with its status and body and returned as [`Error::Rejected`].
/// The returned request carries what the auth hook put in its extensions, and the selected
/// [`Subprotocol`](crate::Subprotocol).
///
/// Not cancel-safe (see [`accept`]).
pub async fn accept_with_policy<S>(
    stream: S,
    config: Config,
    policy: &Policy,
) -> Result<(WebSocket<S>, Request<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_shared(stream, Arc::new(config), policy).await
}

/// [`accept_with_policy`] with a configuration shared by many connections (a server's).
pub(crate) async fn accept_shared<S>(
    stream: S,
    config: Arc<Config>,
    policy: &Policy,
) -> Result<(WebSocket<S>, Request<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    accept_buffered(stream, Vec::new(), config, policy).await
}

/// [`accept_shared`] on a transport from which `buf` was already read (the start of the request).
pub(crate) async fn accept_buffered<S>(
    stream: S,
    buf: Vec<u8>,
    config: Arc<Config>,
    policy: &Policy,
) -> Result<(WebSocket<S>, Request<()>)>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut accepted = accept_parts(stream, buf, &config, policy).await?;
    let request = accepted.request();
    let ws = WebSocket::from_raw_shared(
        accepted.stream,
        Role::Server,
        config,
        accepted.deflate,
        &accepted.leftover,
    );
    Ok((ws, request))
}

/// A completed server handshake, before a [`WebSocket`] is built on it or its connection is
/// handed to callbacks.
pub(crate) struct Accepted<S> {
    pub(crate) stream: S,
    /// The client's request, validated (built only when asked for).
    pub(crate) upgrade: UpgradeRequest,
    /// What the policy decided.
    pub(crate) decision: Decision,
    /// The permessage-deflate parameters agreed on, if any.
    pub(crate) deflate: Option<DeflateParams>,
    /// Bytes read past the request (the first frames).
    pub(crate) leftover: Vec<u8>,
}

impl<S> Accepted<S> {
    /// The request for a task handler (see [`Decision::into_request`]); called once.
    pub(crate) fn request(&mut self) -> Request<()> {
        let decision = Decision {
            authed: self.decision.authed.take(),
            protocol: self.decision.protocol.take(),
            extra: HeaderMap::new(),
        };
        decision.into_request(&mut self.upgrade).0
    }
}

/// The server's opening handshake on a transport from which `buf` was already read, within
/// the open timeout; a refused or malformed request is answered with its HTTP error.
pub(crate) async fn accept_parts<S>(
    mut stream: S,
    mut buf: Vec<u8>,
    config: &Config,
    policy: &Policy,
) -> Result<Accepted<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let limits = config.headers;
    let handshake = async {
        let parsed = read_head(&mut stream, &mut buf, |b| UpgradeRequest::parse(b, &limits)).await;
        match parsed {
            Ok((mut upgrade, len)) => {
                let mut decision = match policy.decide(&mut upgrade).await {
                    Ok(decided) => decided,
                    Err(reject) => {
                        let _ = stream.write_all(&reject.response()).await;
                        let _ = stream.shutdown().await;
                        return Err(Error::Rejected(reject.status()));
                    }
                };
                let deflate = negotiate_deflate(&upgrade, config, &mut decision.extra);
                let response = upgrade.accept(decision.protocol.as_deref(), &decision.extra);
                stream.write_all(&response).await?;
                stream.flush().await?;
                buf.drain(..len);
                Ok((upgrade, decision, deflate, buf))
            }
            Err(Error::Handshake(e)) => {
                let _ = stream.write_all(&e.response()).await;
                let _ = stream.shutdown().await;
                Err(Error::Handshake(e))
            }
            Err(e) => Err(e),
        }
    };
    let (upgrade, decision, deflate, leftover) =
        tokio::time::timeout(config.open_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout(Timeout::Open))??;
    Ok(Accepted {
        stream,
        upgrade,
        decision,
        deflate,
        leftover,
    })
}

/// Negotiates permessage-deflate for `upgrade` as `config` allows; the agreed parameters, also
/// added to the 101's `extra` headers.
pub(crate) fn negotiate_deflate(
    upgrade: &UpgradeRequest,
    config: &Config,
    extra: &mut HeaderMap,
) -> Option<DeflateParams> {
    let params = upgrade.negotiate_deflate(config.protocol.deflate.as_ref()?)?;
    // Always ASCII; should it ever fail, decline rather than disagree.
    let value = HeaderValue::try_from(params.header_value()).ok()?;
    extra.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
    Some(params)
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
        let (stream, uri) = self.dial().await?;
        self.handshake(stream, &uri).await
    }

    /// The URL, parsed and checked: a `ws://` or `wss://` URL with a host. Says whether it is
    /// `wss://`.
    pub(crate) fn uri(&self) -> Result<(Uri, bool)> {
        let uri: Uri = self
            .url
            .parse()
            .map_err(|e| HandshakeError::InvalidUrl(format!("{}: {e}", self.url)))?;
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            _ => {
                return Err(HandshakeError::InvalidUrl(format!(
                    "{}: the scheme must be ws:// or wss://",
                    self.url
                ))
                .into());
            }
        };
        if uri.host().is_none() {
            return Err(HandshakeError::InvalidUrl(format!("{}: missing host", self.url)).into());
        }
        Ok((uri, secure))
    }

    /// Opens the transport to the URL's host and port (TCP, and TLS for `wss://`) within
    /// `open_timeout`, without the opening handshake.
    pub(crate) async fn dial(&self) -> Result<(MaybeTlsStream, Uri)> {
        let (uri, secure) = self.uri()?;
        if secure && !cfg!(feature = "tls") {
            return Err(HandshakeError::InvalidUrl(format!(
                "{}: wss:// needs volley's `tls` feature",
                self.url
            ))
            .into());
        }
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
            .map_err(|_| Error::Timeout(Timeout::Connect))??;
        Ok((stream, uri))
    }

    /// The configuration connections get.
    pub(crate) fn configuration(&self) -> &Config {
        &self.config
    }

    /// Performs the client handshake over an already connected transport (for custom transports
    /// such as Unix sockets or TLS streams) within `open_timeout`.
    ///
    /// With [`Config::deflate`] set, permessage-deflate is offered. A response that selects an
    /// extension not offered, or answers the offer with parameters it did not allow, fails the
    /// connection: a close frame with 1010 (mandatory extension) is sent and the error returned.
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
        let mut client = ClientHandshake::new(uri, &self.protocols, &self.headers)?;
        if let Some(deflate) = &self.config.protocol.deflate {
            client = client.offer_deflate(deflate);
        }
        let limits = self.config.headers;
        let handshake = async {
            stream.write_all(client.request()).await?;
            stream.flush().await?;
            let mut buf = Vec::new();
            let parsed =
                read_head(&mut stream, &mut buf, |b| client.parse_response(b, &limits)).await;
            let (response, len) = match parsed {
                Err(Error::Handshake(e)) if is_extension_error(&e) => {
                    // The server considers the connection open: fail it properly (RFC 6455 §4.1,
                    // RFC 7692 §5), telling the server why.
                    let _ = stream.write_all(&extension_failure_close(&e)).await;
                    let _ = stream.shutdown().await;
                    return Err(Error::Handshake(e));
                }
                other => other?,
            };
            buf.drain(..len);
            Ok::<_, Error>((response, buf))
        };
        let (response, leftover) = tokio::time::timeout(self.config.open_timeout, handshake)
            .await
            .map_err(|_| Error::Timeout(Timeout::Open))??;
        let ws = WebSocket::from_raw_with_deflate(
            stream,
            Role::Client,
            self.config,
            response.deflate,
            &leftover,
        );
        Ok((ws, response))
    }
}

/// Whether a client handshake failed on the server's `Sec-WebSocket-Extensions` answer.
fn is_extension_error(e: &HandshakeError) -> bool {
    matches!(
        e,
        HandshakeError::UnexpectedExtension(_) | HandshakeError::InvalidDeflateResponse(_)
    )
}

/// The masked close frame (1010, with the reason cut to fit) a client sends when the server's
/// extension answer is unacceptable.
fn extension_failure_close(e: &HandshakeError) -> Vec<u8> {
    let mut reason = e.to_string();
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    reason.truncate(cut);
    let mut conn = Connection::new(Role::Client, volley_proto::ProtocolConfig::default());
    let _ = conn.close(Some(CloseFrame::new(
        CloseCode::MANDATORY_EXTENSION,
        reason,
    )));
    let mut out = Vec::new();
    while let Some(bytes) = conn.poll_transmit() {
        out.extend_from_slice(&bytes);
    }
    out
}
