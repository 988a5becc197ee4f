//! What a server accepts in an opening handshake: origins, subprotocols, authentication, and
//! headers added to the 101.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use volley_proto::handshake::{UpgradeRequest, error_response};

type AuthFuture = Pin<Box<dyn Future<Output = Result<Request<()>, Reject>> + Send>>;
type AuthFn = dyn Fn(Request<()>) -> AuthFuture + Send + Sync;

/// The subprotocol a server selected, found in the request's extensions
/// (`request.extensions().get::<Subprotocol>()`) that the handler receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subprotocol(pub String);

/// An HTTP answer refusing an upgrade: status, short body, optional headers.
#[derive(Debug, Clone)]
pub struct Reject {
    status: StatusCode,
    body: String,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl Reject {
    /// Refuses with `status` (e.g. 401, 403, 429) and a short plain-text `body`.
    pub fn new(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a response header (e.g. `WWW-Authenticate`, `Retry-After`).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The headers added with [`header`](Self::header).
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The complete HTTP response.
    pub fn response(&self) -> Vec<u8> {
        let mut extra = String::new();
        for (name, value) in &self.headers {
            if let Ok(v) = value.to_str() {
                extra.push_str(name.as_str());
                extra.push_str(": ");
                extra.push_str(v);
                extra.push_str("\r\n");
            }
        }
        let mut body = self.body.clone();
        if !body.ends_with('\n') {
            body.push('\n');
        }
        error_response(self.status, &extra, &body)
    }
}

/// A server's handshake policy.
///
/// ```
/// use volley::{Policy, Reject};
/// use http::StatusCode;
///
/// #[derive(Clone)]
/// struct User(String);
///
/// let policy = Policy::default()
///     .origins(["https://app.example.com"])
///     .protocols(["chat.v2", "chat.v1"])
///     .auth(|mut request| async move {
///         let token = request.headers().get("authorization").cloned();
///         match token {
///             Some(t) if t == "Bearer s3cret" => {
///                 request.extensions_mut().insert(User("alice".into()));
///                 Ok(request)
///             }
///             _ => Err(Reject::new(StatusCode::UNAUTHORIZED, "missing or bad token")),
///         }
///     });
/// ```
#[derive(Clone, Default)]
pub struct Policy {
    origins: Option<Arc<[String]>>,
    protocols: Arc<[String]>,
    headers: HeaderMap,
    auth: Option<Arc<AuthFn>>,
    stopping: Option<Arc<AtomicBool>>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("origins", &self.origins)
            .field("protocols", &self.protocols)
            .field("headers", &self.headers)
            .field("auth", &self.auth.is_some())
            .finish_non_exhaustive()
    }
}

impl Policy {
    /// Accepts browsers only from these origins (exact, case-insensitive match of the `Origin`
    /// header, e.g. `https://app.example.com`); others get 403. This is the defence against
    /// cross-site WebSocket hijacking. Requests without an `Origin` header (non-browser clients)
    /// are allowed; add an [`auth`](Self::auth) hook to authenticate those.
    pub fn origins<I, T>(mut self, allowed: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.origins = Some(allowed.into_iter().map(Into::into).collect());
        self
    }

    /// The subprotocols this server speaks, in its order of preference. The first of them that
    /// the client offered is selected and answered in `Sec-WebSocket-Protocol`; the handler finds
    /// it as a [`Subprotocol`] in the request's extensions. If the client offered none of them,
    /// no subprotocol is selected (the client decides whether to go on).
    pub fn protocols<I, T>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.protocols = supported.into_iter().map(Into::into).collect();
        self
    }

    /// Adds a header to every 101 response.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// An async hook that sees each request (method, path, query, headers, cookies) after the
    /// origin check and either rejects it with a status and body, or accepts it, returning the
    /// request, into whose extensions it may put per-connection state for the handler.
    pub fn auth<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn(Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Request<()>, Reject>> + Send + 'static,
    {
        self.auth = Some(Arc::new(move |request| Box::pin(hook(request))));
        self
    }

    /// Whether the policy has an Origin allow-list.
    pub(crate) fn has_origins(&self) -> bool {
        self.origins.is_some()
    }

    /// Whether the policy has an auth hook (the only part of [`decide`](Self::decide) that
    /// may wait).
    pub(crate) fn has_auth(&self) -> bool {
        self.auth.is_some()
    }

    /// Makes handshakes answer 503 once `flag` is set (used by graceful shutdown).
    pub(crate) fn stopping(mut self, flag: Arc<AtomicBool>) -> Self {
        self.stopping = Some(flag);
        self
    }

    fn check_stopping(&self) -> Result<(), Reject> {
        if self
            .stopping
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Acquire))
        {
            return Err(Reject::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server shutting down",
            ));
        }
        Ok(())
    }

    /// Applies the policy to a parsed request: what it decided (the auth hook's request if it
    /// ran, the selected subprotocol, the extra 101 headers), or the rejection. Without an auth
    /// hook the request stays in `upgrade`, not built.
    pub(crate) async fn decide(&self, upgrade: &mut UpgradeRequest) -> Result<Decision, Reject> {
        self.check_stopping()?;
        if let Some(allowed) = &self.origins
            && let Some(origin) = upgrade.request().headers().get(http::header::ORIGIN)
        {
            let ok = origin.to_str().is_ok_and(|o| {
                allowed
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')))
            });
            if !ok {
                return Err(Reject::new(StatusCode::FORBIDDEN, "origin not allowed"));
            }
        }
        let mut authed = None;
        if let Some(auth) = &self.auth {
            authed = Some(auth(upgrade.take_request()).await?);
            self.check_stopping()?;
        }
        let protocol = self
            .protocols
            .iter()
            .find(|p| upgrade.protocols().iter().any(|o| o == *p))
            .cloned();
        Ok(Decision {
            authed,
            protocol,
            extra: self.headers.clone(),
        })
    }

    /// [`decide`](Self::decide), with the request to hand to the handler built: the auth hook's,
    /// else taken out of `upgrade`, with a [`Subprotocol`] extension if one was selected.
    #[cfg(feature = "hyper")]
    pub(crate) async fn decide_request(
        &self,
        upgrade: &mut UpgradeRequest,
    ) -> Result<(Request<()>, Option<String>, HeaderMap), Reject> {
        let decision = self.decide(upgrade).await?;
        let protocol = decision.protocol.clone();
        let (request, extra) = decision.into_request(upgrade);
        Ok((request, protocol, extra))
    }
}

/// What a [`Policy`] decided for an accepted request.
#[derive(Debug)]
pub(crate) struct Decision {
    /// The request the auth hook returned (with what it put in the extensions), if it ran.
    pub(crate) authed: Option<Request<()>>,
    /// The subprotocol selected, if any.
    pub(crate) protocol: Option<String>,
    /// Headers to add to the 101.
    pub(crate) extra: HeaderMap,
}

impl Decision {
    /// The request for a handler (the auth hook's, else built from `upgrade`) with a
    /// [`Subprotocol`] extension if one was selected, and the extra 101 headers.
    pub(crate) fn into_request(self, upgrade: &mut UpgradeRequest) -> (Request<()>, HeaderMap) {
        let mut request = self.authed.unwrap_or_else(|| upgrade.take_request());
        if let Some(p) = self.protocol {
            request.extensions_mut().insert(Subprotocol(p));
        }
        (request, self.extra)
    }

    /// The connection's first extensions: what the auth hook put in the request's, and the
    /// [`Subprotocol`] if one was selected. The request itself, if the auth hook returned one,
    /// is returned without them (to show to `on_open`).
    pub(crate) fn take_extensions(&mut self) -> (http::Extensions, Option<Request<()>>) {
        let mut authed = self.authed.take();
        let mut extensions = authed
            .as_mut()
            .map(|r| std::mem::take(r.extensions_mut()))
            .unwrap_or_default();
        if let Some(p) = &self.protocol {
            extensions.insert(Subprotocol(p.clone()));
        }
        (extensions, authed)
    }
}

/// Polls `future` once: its output if it completed without waiting.
pub(crate) fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut std::task::Context::from_waker(std::task::Waker::noop()))
    {
        std::task::Poll::Ready(output) => Some(output),
        std::task::Poll::Pending => None,
    }
}
