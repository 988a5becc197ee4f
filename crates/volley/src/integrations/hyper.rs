//! Accepting WebSocket upgrades from hyper 1 requests (feature `hyper`).
//!
//! hyper has already read and parsed the request head, so the handshake happens in two steps:
//!
//! 1. [`accept`] validates the request (RFC 6455 §4.2.1, with
//!    [`UpgradeRequest::from_request`]), applies the [`Policy`] (Origin allow-list, auth hook,
//!    subprotocol selection, extra headers), negotiates permessage-deflate when
//!    [`Config::deflate`] is set, and returns the `101 Switching Protocols` response together with
//!    an [`Accepted`] upgrade. Return the response from your service.
//! 2. Once hyper has written the 101 it hands the connection over: [`Accepted::upgrade`] (run it
//!    in a spawned task, never before the response is returned) yields the [`WebSocket`].
//!
//! [`upgrade`] does both, spawning the handler. A request that is not a valid upgrade gets the
//! HTTP answer of its [`Rejection`] (400, 405, 426, or the policy's 401/403); nothing panics.
//!
//! ```no_run
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use hyper::body::Incoming;
//!
//! # type Body = String;
//! async fn service(request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
//!     if request.uri().path() != "/ws" {
//!         return Ok(Response::new("not a WebSocket route".into()));
//!     }
//!     let policy = volley::Policy::default().protocols(["chat"]);
//!     let response = volley::hyper::upgrade(
//!         request,
//!         volley::Config::default(),
//!         &policy,
//!         |mut ws, _request| async move {
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if msg.is_data() && ws.send(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         },
//!     )
//!     .await;
//!     Ok(response)
//! }
//! ```
//!
//! Serve the connection with upgrades enabled (`hyper::server::conn::http1::Builder::
//! serve_connection(..).with_upgrades()`, which `axum::serve` does); otherwise valid upgrade
//! requests are answered 500. Only HTTP/1.1 upgrades are supported (not RFC 8441 WebSockets over
//! HTTP/2). Upgraded connections leave hyper's control: a graceful shutdown of the HTTP server does
//! not close them; keep their [`CloseHandle`](crate::CloseHandle)s to do that.

use std::future::Future;

use ::hyper::upgrade::{OnUpgrade, Upgraded};
use ::hyper_util::rt::TokioIo;
#[cfg(feature = "axum")]
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use volley_proto::handshake::{HandshakeError, UpgradeRequest};
use volley_proto::{DeflateParams, Role};

use crate::callback::Drivers;
use crate::config::Config;
use crate::error::{Error, Result, Timeout};
use crate::policy::{Policy, Reject};
use crate::task::WebSocket;

/// The transport of a WebSocket upgraded from hyper.
pub type UpgradedIo = TokioIo<Upgraded>;

/// A WebSocket upgraded from a hyper (or axum) request.
pub type HyperWebSocket = WebSocket<UpgradedIo>;

/// Why a request could not be upgraded; [`into_response`](Self::into_response) is its HTTP answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// Not a valid WebSocket opening handshake (400, 405 for a method other than GET, 426 for a
    /// version other than 13, as [`HandshakeError::status`] says).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The [`Policy`] refused the request (origin 403, the auth hook's status, 503 at shutdown).
    #[error("refused by the handshake policy: HTTP {}", .0.status())]
    Policy(Reject),
    /// The request was a valid upgrade but hyper cannot hand the connection over: the connection
    /// was served without upgrades (`with_upgrades()`), or the policy's auth hook could not run
    /// synchronously where it had to. Answered 500: a server-side problem.
    #[error("this connection cannot be upgraded: {0}")]
    NotUpgradable(&'static str),
}

impl Rejection {
    /// The HTTP status this rejection is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Handshake(e) => e.status(),
            Self::Policy(reject) => reject.status(),
            Self::NotUpgradable(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The HTTP answer: the status, the headers it calls for (`Allow: GET` for 405,
    /// `Sec-WebSocket-Version: 13` for 426, the policy's own headers such as
    /// `WWW-Authenticate`) and a short plain-text body.
    pub fn into_response<B: From<String>>(self) -> Response<B> {
        let status = self.status();
        let mut headers = HeaderMap::new();
        let body = match &self {
            Self::Handshake(e) => {
                match status {
                    StatusCode::METHOD_NOT_ALLOWED => {
                        headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
                    }
                    StatusCode::UPGRADE_REQUIRED => {
                        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                        headers.insert(
                            header::SEC_WEBSOCKET_VERSION,
                            HeaderValue::from_static("13"),
                        );
                    }
                    _ => {}
                }
                e.to_string()
            }
            Self::Policy(reject) => {
                for (name, value) in reject.headers() {
                    headers.append(name.clone(), value.clone());
                }
                reject.body().to_owned()
            }
            Self::NotUpgradable(why) => format!("cannot upgrade: {why}"),
        };
        let mut body = body;
        if !body.ends_with('\n') {
            body.push('\n');
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        let mut response = Response::new(B::from(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        response
    }
}

impl From<Reject> for Rejection {
    fn from(reject: Reject) -> Self {
        Self::Policy(reject)
    }
}

/// An upgrade that was accepted and answered 101: hyper hands the connection over once the
/// response is written.
#[derive(Debug)]
pub struct Accepted {
    on_upgrade: OnUpgrade,
    config: Config,
    deflate: Option<DeflateParams>,
    protocol: Option<String>,
    request: Request<()>,
}

impl Accepted {
    /// The request head (method, URI, headers) with the extensions the policy's auth hook added
    /// and, if one was selected, the [`Subprotocol`](crate::Subprotocol).
    pub fn request(&self) -> &Request<()> {
        &self.request
    }

    /// The selected subprotocol, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    /// The negotiated permessage-deflate parameters, if compression was agreed.
    pub fn deflate(&self) -> Option<DeflateParams> {
        self.deflate
    }

    /// Waits (up to the configuration's `open_timeout`) for hyper to write the 101 and hand the
    /// connection over, and returns the WebSocket with the request head.
    ///
    /// Call it from a spawned task: it can only complete after the service has returned the 101
    /// response to hyper. Not cancel-safe: dropping it abandons the connection.
    pub async fn upgrade(self) -> Result<(HyperWebSocket, Request<()>)> {
        let config = self.config.clone();
        let (io, request, deflate) = self.upgrade_parts().await?;
        let ws = WebSocket::from_raw_with_deflate(io, Role::Server, config, deflate, &[]);
        Ok((ws, request))
    }

    /// Hands the connection, once hyper has written the 101, to `drivers`: its
    /// [`Callbacks`](crate::callback::Callbacks) serve it (with the drivers' configuration;
    /// negotiate with the same one). Spawns the task that waits for the upgrade; a failure
    /// after the 101 is logged at debug level. Must be called inside a Tokio runtime.
    pub fn adopt(self, drivers: &Drivers) {
        let drivers = drivers.clone();
        tokio::spawn(async move {
            match self.upgrade_parts().await {
                Ok((io, request, deflate)) => drivers.adopt_transport(io, request, deflate, &[]),
                Err(e) => tracing::debug!("WebSocket upgrade failed after the 101: {e}"),
            }
        });
    }

    /// Waits for hyper to hand the connection over: the transport, the request head and the
    /// permessage-deflate parameters.
    pub(crate) async fn upgrade_parts(
        self,
    ) -> Result<(UpgradedIo, Request<()>, Option<DeflateParams>)> {
        let upgraded = tokio::time::timeout(self.config.open_timeout, self.on_upgrade)
            .await
            .map_err(|_| Error::Timeout(Timeout::Upgrade))?
            .map_err(|e| Error::Io(std::io::Error::other(e)))?;
        Ok((TokioIo::new(upgraded), self.request, self.deflate))
    }
}

/// Validates a request head and takes hyper's upgrade handle out of its extensions.
pub(crate) fn validate(
    method: &http::Method,
    uri: &http::Uri,
    version: http::Version,
    headers: &HeaderMap,
    extensions: &mut http::Extensions,
) -> Result<(UpgradeRequest, Option<OnUpgrade>), Rejection> {
    let on_upgrade = extensions.remove::<OnUpgrade>();
    let mut head = Request::new(());
    *head.method_mut() = method.clone();
    *head.uri_mut() = uri.clone();
    *head.version_mut() = version;
    *head.headers_mut() = headers.clone();
    *head.extensions_mut() = extensions.clone();
    let upgrade = UpgradeRequest::from_request(head)?;
    Ok((upgrade, on_upgrade))
}

/// [`validate`] for request parts (axum's extractors).
#[cfg(feature = "axum")]
pub(crate) fn validate_parts(
    parts: &mut Parts,
) -> Result<(UpgradeRequest, Option<OnUpgrade>), Rejection> {
    validate(
        &parts.method,
        &parts.uri,
        parts.version,
        &parts.headers,
        &mut parts.extensions,
    )
}

/// Applies `policy` and builds the 101 response and the [`Accepted`] upgrade.
pub(crate) async fn decide<R: Default>(
    mut upgrade: UpgradeRequest,
    on_upgrade: Option<OnUpgrade>,
    config: Config,
    policy: &Policy,
) -> Result<(Response<R>, Accepted), Rejection> {
    let (request, protocol, extra) = policy.decide_request(&mut upgrade).await?;
    finish(upgrade, on_upgrade, config, request, protocol, extra)
}

/// The part of the handshake after the policy decided: the 101 and the pending upgrade.
pub(crate) fn finish<R: Default>(
    upgrade: UpgradeRequest,
    on_upgrade: Option<OnUpgrade>,
    config: Config,
    request: Request<()>,
    protocol: Option<String>,
    extra: HeaderMap,
) -> Result<(Response<R>, Accepted), Rejection> {
    let on_upgrade = on_upgrade.ok_or(Rejection::NotUpgradable(
        "hyper offers no upgrade for it (serve the connection `with_upgrades()`, over HTTP/1.1)",
    ))?;
    let mut headers = HeaderMap::new();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    let accept =
        HeaderValue::try_from(upgrade.accept_key()).map_err(|_| HandshakeError::InvalidKey)?;
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(p) = &protocol {
        let value = HeaderValue::try_from(p.as_str())
            .map_err(|_| HandshakeError::InvalidSubprotocolHeader)?;
        headers.insert(header::SEC_WEBSOCKET_PROTOCOL, value);
    }
    for (name, value) in &extra {
        headers.append(name.clone(), value.clone());
    }
    let deflate = config
        .protocol
        .deflate
        .as_ref()
        .and_then(|d| upgrade.negotiate_deflate(d))
        .and_then(|params| {
            // Always ASCII; should it ever fail, decline rather than disagree.
            let value = HeaderValue::try_from(params.header_value()).ok()?;
            headers.insert(header::SEC_WEBSOCKET_EXTENSIONS, value);
            Some(params)
        });
    let mut response = Response::new(R::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = headers;
    let accepted = Accepted {
        on_upgrade,
        config,
        deflate,
        protocol,
        request,
    };
    Ok((response, accepted))
}

/// Accepts a WebSocket upgrade from a hyper request: validates it, applies `policy`, negotiates
/// permessage-deflate if `config` enables it, and returns the 101 response to send and the
/// [`Accepted`] upgrade to complete with [`Accepted::upgrade`] once the response is on its way.
///
/// Takes hyper's upgrade handle out of the request's extensions. A refused request returns the
/// [`Rejection`]; send [`Rejection::into_response`].
///
/// Not cancel-safe in a meaningful way: dropping it before it completes refuses nothing and
/// accepts nothing; the request can no longer be upgraded.
pub async fn accept<B, R: Default>(
    request: &mut Request<B>,
    config: Config,
    policy: &Policy,
) -> Result<(Response<R>, Accepted), Rejection> {
    let mut extensions = std::mem::take(request.extensions_mut());
    let validated = validate(
        request.method(),
        request.uri(),
        request.version(),
        request.headers(),
        &mut extensions,
    );
    *request.extensions_mut() = extensions;
    let (upgrade, on_upgrade) = validated?;
    decide(upgrade, on_upgrade, config, policy).await
}

/// Accepts a WebSocket upgrade from a hyper request and runs `handler` with the connection and
/// the request head in a spawned task; returns the response to send: the 101, or the rejection's
/// HTTP error.
///
/// A connection that fails after the 101 (hyper errors, `open_timeout`) is logged at debug level
/// and the handler is not run. Not cancel-safe in a meaningful way (see [`accept`]).
pub async fn upgrade<B, R, F, Fut>(
    mut request: Request<B>,
    config: Config,
    policy: &Policy,
    handler: F,
) -> Response<R>
where
    R: Default + From<String>,
    F: FnOnce(HyperWebSocket, Request<()>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    match accept(&mut request, config, policy).await {
        Ok((response, accepted)) => {
            spawn_upgrade(accepted, handler);
            response
        }
        Err(rejection) => {
            tracing::debug!("WebSocket upgrade refused: {rejection}");
            rejection.into_response()
        }
    }
}

/// Spawns the task that completes `accepted` and runs `handler`.
pub(crate) fn spawn_upgrade<F, Fut>(accepted: Accepted, handler: F)
where
    F: FnOnce(HyperWebSocket, Request<()>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        match accepted.upgrade().await {
            Ok((ws, request)) => handler(ws, request).await,
            Err(e) => tracing::debug!("WebSocket upgrade failed after the 101: {e}"),
        }
    });
}
