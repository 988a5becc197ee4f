//! The server: [`Engine`] routes Engine.IO requests (long-polling GET/POST, CORS preflight,
//! WebSocket upgrades) to sessions.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use volley::Message;
use volley::hyper::HyperWebSocket;

use crate::config::{AllowOrigin, Cors, EngineConfig};
use crate::packet::{Data, Packet, SEPARATOR, decode_text, encode_payload};
use crate::session::{
    CloseReason, Handler, RequestInfo, Session, SessionSender, Shared, TransportKind, query_param,
};

/// The response body of [`Engine::handle`]: the whole body in one buffer.
pub type EngineBody = Full<Bytes>;

/// A boxed error, as hyper bodies use.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a closing WebSocket may take to send its close frame.
const WS_CLOSE_WAIT: Duration = Duration::from_secs(2);

/// How long the WebSocket writer pauses after a write that ends at a write end
/// ([`SessionSender::send_all_and_flush`](crate::SessionSender::send_all_and_flush)) before it
/// writes again: long enough for the peer to read that write on its own. Node's engine writes
/// what was queued meanwhile once the first write completed, a few microseconds later, and a
/// Node client on `ws` that handles one message per read still gets both in one read about once
/// in fifteen tries; with a pause of 1 ms it did not in hundreds.
pub(crate) const WRITE_END_PAUSE: Duration = Duration::from_millis(1);

/// How long a polling GET that arrives during an upgrade waits before its noop: Node's engine
/// ends such GETs from a timer that runs every 100 ms while the upgrade is probed.
const UPGRADE_CHECK: Duration = Duration::from_millis(100);

/// Node engine.io's error codes.
#[derive(Clone, Copy, Debug)]
enum EngineError {
    UnknownTransport = 0,
    UnknownSid = 1,
    BadHandshakeMethod = 2,
    BadRequest = 3,
    Forbidden = 4,
    UnsupportedProtocolVersion = 5,
}

impl EngineError {
    fn message(self) -> &'static str {
        match self {
            Self::UnknownTransport => "Transport unknown",
            Self::UnknownSid => "Session ID unknown",
            Self::BadHandshakeMethod => "Bad handshake method",
            Self::BadRequest => "Bad request",
            Self::Forbidden => "Forbidden",
            Self::UnsupportedProtocolVersion => "Unsupported protocol version",
        }
    }

    /// The error answer. To a plain request: JSON `{"code":N,"message":…}`, 403 for Forbidden,
    /// 400 otherwise. To a WebSocket upgrade request, as Node's `abortUpgrade`: always 400, the
    /// message as a `text/html` body and `Connection: close`.
    fn response(self, upgrade: bool) -> Response<EngineBody> {
        if upgrade {
            let mut response =
                Response::new(Full::new(Bytes::from_static(self.message().as_bytes())));
            *response.status_mut() = StatusCode::BAD_REQUEST;
            let headers = response.headers_mut();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        let status = match self {
            Self::Forbidden => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        let body = format!(
            r#"{{"code":{},"message":"{}"}}"#,
            self as u8,
            self.message()
        );
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }
}

/// An empty answer with `status`.
fn bare(status: StatusCode) -> Response<EngineBody> {
    let mut response = Response::new(Full::default());
    *response.status_mut() = status;
    response
}

/// A long-polling GET answer carrying `packets`.
fn payload_response(packets: &[Packet]) -> Response<EngineBody> {
    let mut text = String::new();
    encode_payload(packets, &mut text);
    let mut response = Response::new(Full::new(Bytes::from(text)));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=UTF-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

struct EngineInner {
    config: EngineConfig,
    app: App,
    sessions: Mutex<HashMap<String, Arc<Shared>>>,
    /// The callback drivers of a handler engine's WebSocket sessions (started with the first).
    drivers: std::sync::OnceLock<volley::callback::Drivers>,
}

/// How the application gets its sessions.
enum App {
    /// A [`Session`] each (a task of the application's reads it).
    Sessions(Box<dyn Fn(Session) + Send + Sync>),
    /// Events handed to a [`Handler`]'s per-session [`SessionEvents`](crate::SessionEvents).
    Handler(Box<dyn Handler>),
}

impl EngineInner {
    fn sessions(&self) -> MutexGuard<'_, HashMap<String, Arc<Shared>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An Engine.IO v4 server. Cheap to clone (an `Arc` inside).
///
/// Serve it with [`handle`](Self::handle) from a hyper service, or mount it as a
/// `tower_service::Service` (e.g. `axum::Router::new().nest_service("/socket.io", engine)`).
/// Serve connections with upgrades enabled for the WebSocket transport.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("config", &self.inner.config)
            .field("sessions", &self.session_count())
            .finish_non_exhaustive()
    }
}

/// Clears a session's GET or POST in-flight flag when the request handler ends or is dropped.
struct FlagGuard {
    shared: Arc<Shared>,
    get: bool,
}

impl FlagGuard {
    /// Marks a polling GET (`get`) or POST in flight on `shared`. A second one of the same kind
    /// while one is in flight is a protocol error: the session closes (as Node's engine.io
    /// does) and `None` is returned: answer the request with a bare 400.
    fn begin(shared: &Arc<Shared>, get: bool) -> Option<Self> {
        let mut inner = shared.lock();
        let active = if get {
            &mut inner.get_active
        } else {
            &mut inner.post_active
        };
        if *active {
            drop(inner);
            let method = if get { "GET" } else { "POST" };
            tracing::debug!(sid = %shared.id, "overlapping polling {method}");
            shared.close(CloseReason::TransportError);
            return None;
        }
        *active = true;
        Some(Self {
            shared: shared.clone(),
            get,
        })
    }
}

impl Drop for FlagGuard {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        if self.get {
            inner.get_active = false;
        } else {
            inner.post_active = false;
        }
    }
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("websocket"))
}

/// Whether the request comes from Internet Explorer (Node's test: `;MSIE` or `Trident/` in the
/// user agent).
fn is_old_internet_explorer(headers: &HeaderMap) -> bool {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| ua.contains(";MSIE") || ua.contains("Trident/"))
}

/// Node's extra header on successful polling answers to Internet Explorer (against its XSS
/// filter).
fn polling_headers(mut response: Response<EngineBody>, old_ie: bool) -> Response<EngineBody> {
    if old_ie && response.status() == StatusCode::OK {
        response.headers_mut().insert(
            HeaderName::from_static("x-xss-protection"),
            HeaderValue::from_static("0"),
        );
    }
    response
}

/// The open packet's JSON.
fn open_json(sid: &str, upgrades: &str, config: &EngineConfig) -> String {
    format!(
        r#"{{"sid":"{}","upgrades":{},"pingInterval":{},"pingTimeout":{},"maxPayload":{}}}"#,
        sid,
        upgrades,
        config.ping_interval.as_millis(),
        config.ping_timeout.as_millis(),
        config.max_payload
    )
}

fn new_sid() -> String {
    use base64::Engine as _;
    let bytes: [u8; 15] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl Engine {
    /// Creates an engine. `on_session` is called synchronously for every new session, after the
    /// open packet is queued; it should spawn a task that owns the [`Session`].
    pub fn new(
        config: EngineConfig,
        on_session: impl Fn(Session) + Send + Sync + 'static,
    ) -> Engine {
        Self::build(config, App::Sessions(Box::new(on_session)))
    }

    /// Creates an engine whose sessions are handed to `handler`: each new session's messages go
    /// to the [`SessionEvents`](crate::SessionEvents) that [`Handler::on_open`] returns, as
    /// they arrive. The application needs no task per session, and neither does the engine for
    /// sessions opened on the WebSocket transport: those run on volley's callback drivers
    /// ([`volley::callback`]), their heartbeat in the drivers' timer queue. Long-polling
    /// sessions, and WebSockets that upgrade one, are served as by [`new`](Self::new).
    ///
    /// Over such a WebSocket the outgoing queue is bounded in bytes by volley's
    /// [`Config::send_queue`](volley::Config::send_queue) (1 MiB) rather than in packets by
    /// [`EngineConfig::max_buffered_packets`]; past it the session closes as a transport
    /// error, as when the packet bound is passed.
    pub fn with_handler(config: EngineConfig, handler: impl Handler) -> Engine {
        Self::build(config, App::Handler(Box::new(handler)))
    }

    fn build(config: EngineConfig, app: App) -> Engine {
        Engine {
            inner: Arc::new(EngineInner {
                config,
                app,
                sessions: Mutex::new(HashMap::new()),
                drivers: std::sync::OnceLock::new(),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// How many sessions are open (or delivering their close packet).
    pub fn session_count(&self) -> usize {
        self.inner.sessions().len()
    }

    /// How many open sessions use `transport` now (a session that upgraded counts as
    /// WebSocket). Looks at every session: for metrics, not for a hot path.
    pub fn session_count_by_transport(&self, transport: TransportKind) -> usize {
        let sessions: Vec<Arc<Shared>> = self.inner.sessions().values().cloned().collect();
        (sessions.iter())
            .filter(|shared| shared.lock().transport == transport)
            .count()
    }

    /// Closes every session (server shutdown) with [`CloseReason::ServerClose`]: a long-polling
    /// session gets the close packet, a WebSocket session has its WebSocket closed (as Node does,
    /// without a close packet).
    pub fn close_all(&self) {
        let all: Vec<Arc<Shared>> = self.inner.sessions().values().cloned().collect();
        for shared in all {
            shared.close(CloseReason::ServerClose);
        }
    }

    /// Handles one HTTP request addressed to the Engine.IO path (the mount point is the
    /// caller's choice, conventionally `/socket.io/`): a long-polling GET or POST, a CORS
    /// preflight, or a WebSocket upgrade (answered 101; the connection then continues in a
    /// spawned task, so serve connections `with_upgrades()`). Reads `EIO`, `transport` and
    /// `sid` from the query. The peer's address in the request's extensions (a
    /// [`volley::PeerAddr`], as a `volley::Server` route puts there, or a bare [`SocketAddr`])
    /// becomes [`RequestInfo::remote_addr`].
    ///
    /// Cancel-safe: dropping the future (the client went away) loses no queued packet — a
    /// pending GET takes packets only when it answers.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<EngineBody>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let origin = request.headers().get(header::ORIGIN).cloned();
        let cors = self.inner.config.cors.as_ref();
        let mut response = match cors {
            Some(cors) if request.method() == Method::OPTIONS => preflight(cors, request.headers()),
            _ => self.route(request).await,
        };
        if let Some(cors) = cors {
            add_cors_headers(cors, origin.as_ref(), response.headers_mut());
        }
        response
    }

    async fn route<B>(&self, mut request: Request<B>) -> Response<EngineBody>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        let config = &self.inner.config;
        let query = request.uri().query().unwrap_or("").to_owned();
        let upgrade = is_websocket_upgrade(request.headers());
        let fail = |error: EngineError| error.response(upgrade);
        let transport = match query_param(&query, "transport").as_deref() {
            Some("polling") if config.transports.polling => TransportKind::Polling,
            Some("websocket") if config.transports.websocket => TransportKind::WebSocket,
            _ => return fail(EngineError::UnknownTransport),
        };
        if let Some(sid) = query_param(&query, "sid") {
            let Some(shared) = self.inner.sessions().get(&sid).cloned() else {
                return fail(EngineError::UnknownSid);
            };
            // Node forgets a session as it closes; only a server close waits for its close
            // packet to be fetched.
            if shared.lock().is_gone() {
                return fail(EngineError::UnknownSid);
            }
            // Node's checks, in its order: the session's transport (not for upgrades), then the
            // protocol version.
            if !upgrade && shared.lock().transport != transport {
                return fail(EngineError::BadRequest);
            }
            if query_param(&query, "EIO").as_deref() != Some("4") {
                return fail(EngineError::BadRequest);
            }
            if upgrade {
                if transport != TransportKind::WebSocket {
                    // Node hands every upgrade to its WebSocket server, then closes a WebSocket
                    // whose transport does not take upgrades.
                    return self.accept_and_close(request).await;
                }
                return self.upgrade_session(request, shared).await;
            }
            let old_ie = is_old_internet_explorer(request.headers());
            let response = match *request.method() {
                Method::GET => self.poll(shared).await,
                Method::POST => self.post(shared, request).await,
                // Node answers other methods 500, without a body.
                _ => return bare(StatusCode::INTERNAL_SERVER_ERROR),
            };
            return polling_headers(response, old_ie);
        }
        if request.method() != Method::GET {
            return fail(EngineError::BadHandshakeMethod);
        }
        if transport == TransportKind::WebSocket && !upgrade {
            return fail(EngineError::BadRequest);
        }
        let info = RequestInfo::new(
            detach_uri(request.uri()),
            detach_headers(request.headers()),
            (request.extensions().get::<volley::PeerAddr>().map(|p| p.0))
                .or_else(|| request.extensions().get::<SocketAddr>().copied()),
        );
        if let Some(allow) = &config.allow_request
            && !allow(&info)
        {
            return fail(EngineError::Forbidden);
        }
        if upgrade && transport == TransportKind::Polling {
            return self.accept_and_close(request).await;
        }
        if query_param(&query, "EIO").as_deref() != Some("4") {
            return fail(EngineError::UnsupportedProtocolVersion);
        }
        match transport {
            TransportKind::Polling => {
                let old_ie = is_old_internet_explorer(&info.headers);
                let shared = self.open_session(info, TransportKind::Polling);
                polling_headers(self.poll(shared).await, old_ie)
            }
            TransportKind::WebSocket => {
                let (response, accepted) = match volley::hyper::accept::<_, EngineBody>(
                    &mut request,
                    self.ws_config(),
                    &volley::Policy::default(),
                )
                .await
                {
                    Ok(accepted) => accepted,
                    Err(rejection) => return rejection.into_response(),
                };
                if let App::Handler(_) = &self.inner.app {
                    // The session opens on a callback driver (`on_open`), which sees the
                    // request's head and extensions.
                    accepted.adopt(self.drivers());
                    return response;
                }
                let engine = self.clone();
                let write_timeout = self.write_timeout();
                tokio::spawn(async move {
                    match accepted.upgrade().await {
                        Ok((ws, _)) => {
                            let shared = engine.open_session(info, TransportKind::WebSocket);
                            ws_loop(shared, ws, write_timeout).await;
                        }
                        Err(e) => tracing::debug!("Engine.IO WebSocket failed after the 101: {e}"),
                    }
                });
                response
            }
        }
    }

    /// The callback drivers of the WebSocket sessions of a handler engine.
    fn drivers(&self) -> &volley::callback::Drivers {
        self.inner.drivers.get_or_init(|| {
            let callbacks = WsCallbacks {
                engine: Arc::downgrade(&self.inner),
            };
            volley::callback::Drivers::new(callbacks, self.ws_config())
        })
    }

    /// How long writing to a WebSocket may stall before the session is failed.
    fn write_timeout(&self) -> Duration {
        self.inner.config.ping_interval + self.inner.config.ping_timeout
    }

    fn ws_config(&self) -> volley::Config {
        // The close handshake gets WS_CLOSE_WAIT, as on the task path (not volley's default
        // 10 s): after a heartbeat timeout the peer is likely gone, and its socket would be held
        // that long for nothing.
        volley::Config::default()
            .max_message_size(self.inner.config.max_payload)
            .ping_interval(None)
            .ping_timeout(None)
            .close_timeout(WS_CLOSE_WAIT)
    }

    /// Registers a new session under a fresh id, made by `make`.
    fn register(&self, make: impl FnOnce(String) -> Arc<Shared>) -> Arc<Shared> {
        let mut sessions = self.inner.sessions();
        let mut id = new_sid();
        // 120 random bits: a collision is practically impossible, but never reuse an id.
        while sessions.contains_key(&id) {
            id = new_sid();
        }
        let shared = make(id.clone());
        sessions.insert(id, shared.clone());
        shared
    }

    /// Creates a session: queues the open packet, registers it, starts its heartbeat and hands
    /// it to the application.
    fn open_session(&self, info: RequestInfo, transport: TransportKind) -> Arc<Shared> {
        let config = &self.inner.config;
        let max = config.max_buffered_packets;
        let (shared, rx) = match &self.inner.app {
            App::Sessions(_) => {
                let (tx, rx) = mpsc::channel(config.incoming_buffer.max(1));
                let shared = self.register(|id| Shared::new(id, transport, max, tx));
                (shared, Some(rx))
            }
            App::Handler(_) => {
                let shared = self.register(|id| Shared::with_events(id, transport, max, None));
                (shared, None)
            }
        };
        let upgrades = if transport == TransportKind::Polling
            && config.allow_upgrades
            && config.transports.websocket
        {
            r#"["websocket"]"#
        } else {
            "[]"
        };
        shared.push_control(Packet::Open(open_json(&shared.id, upgrades, config)));
        tokio::spawn(heartbeat(
            Arc::downgrade(&self.inner),
            shared.clone(),
            config.ping_interval,
            config.ping_timeout,
        ));
        match (&self.inner.app, rx) {
            (App::Sessions(on_session), Some(rx)) => {
                on_session(Session::new(shared.clone(), rx, info));
            }
            (App::Handler(handler), _) => {
                let sender = SessionSender::new(shared.clone());
                shared.set_events(handler.on_open(sender, info));
            }
            (App::Sessions(_), None) => {}
        }
        shared
    }

    /// A long-polling GET: answers the queued packets, waiting for some if there are none.
    async fn poll(&self, shared: Arc<Shared>) -> Response<EngineBody> {
        let Some(_guard) = FlagGuard::begin(&shared, true) else {
            return bare(StatusCode::BAD_REQUEST);
        };
        let config = &self.inner.config;
        // A heartbeat comes within ping_interval; this only bounds the wait if none does.
        let deadline = Instant::now() + config.ping_interval + config.ping_timeout;
        // When a GET that arrived during an upgrade gets its noop.
        let mut upgrade_check: Option<Instant> = None;
        loop {
            let notified = shared.out_notify.notified();
            {
                let mut inner = shared.lock();
                if inner.transport != TransportKind::Polling {
                    // The session moved to WebSocket while this GET waited: answered as Node
                    // answers a polling request for a WebSocket session. (A client sends its
                    // upgrade packet only after its last GET ended.)
                    return EngineError::BadRequest.response(false);
                }
                if !inner.queue.is_empty() {
                    let (packets, _) = inner.take_write();
                    if inner.close_undelivered && packets.contains(&Packet::Close) {
                        inner.close_undelivered = false;
                        shared.delivered.notify_one();
                    }
                    return payload_response(&packets);
                }
                if let Some(reason) = inner.reason {
                    // Node's polling transport takes the client's close packet as its own
                    // close, which ends a waiting GET with a noop.
                    let last = match reason {
                        CloseReason::ClientClose => Packet::Noop,
                        _ => Packet::Close,
                    };
                    return payload_response(&[last]);
                }
                if inner.probed {
                    // A GET during the upgrade ends with a noop at Node's next upgrade check;
                    // meanwhile the WebSocket may deliver the upgrade packet that the client sent
                    // before this GET (then the GET is refused above, as by Node).
                    match upgrade_check {
                        Some(at) if Instant::now() >= at => {
                            return payload_response(&[Packet::Noop]);
                        }
                        Some(_) => {}
                        None => upgrade_check = Some(Instant::now() + UPGRADE_CHECK),
                    }
                } else {
                    upgrade_check = None;
                }
            }
            let until = upgrade_check.map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                () = notified => {}
                () = sleep_until(until) => {
                    if until == deadline {
                        return payload_response(&[Packet::Noop]);
                    }
                }
            }
        }
    }

    /// A long-polling POST: decodes the payload and handles its packets.
    async fn post<B>(&self, shared: Arc<Shared>, request: Request<B>) -> Response<EngineBody>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        // A session the server closed whose close packet waits for a GET still takes POSTs, as
        // in Node: answered "ok", their packets ignored (the session no longer takes any).
        let Some(_guard) = FlagGuard::begin(&shared, false) else {
            return bare(StatusCode::BAD_REQUEST);
        };
        // A binary body is not protocol v4: Node closes the session and answers a bare 400.
        if request
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/octet-stream")
        {
            shared.close(CloseReason::TransportError);
            return bare(StatusCode::BAD_REQUEST);
        }
        let config = &self.inner.config;
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Too large: 413, and the session goes on (as in Node).
        if declared.is_some_and(|len| len > config.max_payload as u64) {
            return bare(StatusCode::PAYLOAD_TOO_LARGE);
        }
        let read = read_limited(request.into_body(), config.max_payload);
        let body = match timeout(config.ping_interval + config.ping_timeout, read).await {
            Ok(Ok(body)) => body,
            Ok(Err(ReadError::TooLarge)) => {
                return bare(StatusCode::PAYLOAD_TOO_LARGE);
            }
            Ok(Err(ReadError::Body)) | Err(_) => {
                shared.close(CloseReason::TransportError);
                return EngineError::BadRequest.response(false);
            }
        };
        // As Node: the body read as UTF-8 (invalid sequences replaced), its packets handled in
        // order until an invalid one, which closes the session (the answer is still "ok").
        let text = String::from_utf8_lossy(&body);
        for record in text.split(SEPARATOR) {
            match decode_text(record) {
                Ok(packet) => {
                    if !shared.on_packet(packet).await {
                        break;
                    }
                }
                Err(e) => {
                    tracing::debug!(sid = %shared.id, "bad polling payload: {e}");
                    shared.close(CloseReason::ParseError);
                    break;
                }
            }
        }
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    /// Completes a WebSocket handshake and closes the WebSocket at once, as Node does with the
    /// WebSockets it does not use.
    async fn accept_and_close<B>(&self, mut request: Request<B>) -> Response<EngineBody> {
        match volley::hyper::accept::<_, EngineBody>(
            &mut request,
            self.ws_config(),
            &volley::Policy::default(),
        )
        .await
        {
            Ok((response, accepted)) => {
                tokio::spawn(close_after_upgrade(accepted));
                response
            }
            Err(rejection) => rejection.into_response(),
        }
    }

    /// A WebSocket for an existing polling session: the upgrade.
    async fn upgrade_session<B>(
        &self,
        mut request: Request<B>,
        shared: Arc<Shared>,
    ) -> Response<EngineBody> {
        let probe_it = {
            let mut inner = shared.lock();
            if !self.inner.config.allow_upgrades || inner.reason.is_some() {
                return EngineError::BadRequest.response(true);
            }
            // Another WebSocket is upgrading this session, or it already has one: as Node, the
            // new WebSocket is accepted and closed at once, and the session is left alone.
            let probe_it = !inner.upgrading && inner.transport == TransportKind::Polling;
            if probe_it {
                inner.upgrading = true;
            }
            probe_it
        };
        let (response, accepted) = match volley::hyper::accept::<_, EngineBody>(
            &mut request,
            self.ws_config(),
            &volley::Policy::default(),
        )
        .await
        {
            Ok(accepted) => accepted,
            Err(rejection) => {
                if probe_it {
                    shared.lock().upgrading = false;
                }
                return rejection.into_response();
            }
        };
        if !probe_it {
            tokio::spawn(close_after_upgrade(accepted));
            return response;
        }
        let upgrade_timeout = self.inner.config.upgrade_timeout;
        let write_timeout = self.write_timeout();
        tokio::spawn(async move {
            let ws = match accepted.upgrade().await {
                Ok((ws, _)) => probe(&shared, ws, upgrade_timeout).await,
                Err(e) => {
                    tracing::debug!("Engine.IO upgrade failed after the 101: {e}");
                    None
                }
            };
            match ws {
                Some(ws) => ws_loop(shared, ws, write_timeout).await,
                None => {
                    let mut inner = shared.lock();
                    inner.upgrading = false;
                    inner.probed = false;
                }
            }
        });
        response
    }
}

/// Closes an accepted WebSocket at once (see [`close_ws`]).
async fn close_after_upgrade(accepted: volley::hyper::Accepted) {
    match accepted.upgrade().await {
        Ok((ws, _)) => close_ws(ws).await,
        Err(e) => tracing::debug!("Engine.IO WebSocket failed after the 101: {e}"),
    }
}

/// Closes a WebSocket as Node's `ws` does for `close()` (a close frame without a status code)
/// and waits, for a bounded time, for the peer's close.
async fn close_ws(mut ws: HyperWebSocket) {
    let _ = timeout(WS_CLOSE_WAIT, ws.close(None)).await;
    let _ = timeout(WS_CLOSE_WAIT, async { while ws.recv().await.is_some() {} }).await;
}

/// The preflight answer (204).
fn preflight(cors: &Cors, request_headers: &HeaderMap) -> Response<EngineBody> {
    let mut response = bare(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::try_from(cors.methods.join(",")) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, v);
    }
    if cors.headers.is_empty() {
        if let Some(v) = request_headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            headers.append(
                header::VARY,
                HeaderValue::from_static("Access-Control-Request-Headers"),
            );
        }
    } else if let Ok(v) = HeaderValue::try_from(cors.headers.join(",")) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, v);
    }
    if let Some(age) = cors.max_age {
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from(age.as_secs()),
        );
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    response
}

/// The CORS headers of every answer.
fn add_cors_headers(cors: &Cors, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
    let allow = match (&cors.origins, origin) {
        (AllowOrigin::Any, _) if !cors.credentials => Some(HeaderValue::from_static("*")),
        (AllowOrigin::Any, Some(origin)) => Some(origin.clone()),
        (AllowOrigin::List(list), Some(origin)) => origin
            .to_str()
            .ok()
            .filter(|o| list.iter().any(|allowed| allowed.eq_ignore_ascii_case(o)))
            .map(|_| origin.clone()),
        _ => None,
    };
    let reflected = allow.as_ref().is_some_and(|v| v != "*");
    if let Some(allow) = allow {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if cors.credentials {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
    }
    if reflected || matches!(cors.origins, AllowOrigin::List(_)) {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

enum ReadError {
    TooLarge,
    Body,
}

/// Reads a request body of at most `limit` bytes.
async fn read_limited<B>(body: B, limit: usize) -> Result<Vec<u8>, ReadError>
where
    B: hyper::body::Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Body)?;
        if let Ok(mut data) = frame.into_data() {
            if out.len().saturating_add(data.remaining()) > limit {
                return Err(ReadError::TooLarge);
            }
            while data.has_remaining() {
                let chunk = data.chunk();
                out.extend_from_slice(chunk);
                let n = chunk.len();
                data.advance(n);
            }
        }
    }
    Ok(out)
}

/// The server-side heartbeat of a session, and its removal from the table once closed.
async fn heartbeat(
    engine: Weak<EngineInner>,
    shared: Arc<Shared>,
    interval: Duration,
    ping_timeout: Duration,
) {
    loop {
        tokio::select! {
            () = sleep(interval) => {}
            () = shared.closed() => break,
        }
        shared.expect_pong();
        if !shared.push_control(Packet::Ping(String::new())) {
            break;
        }
        // Any other packet while the pong is awaited extends the wait once, to ping_timeout
        // after that packet (Node's engine refreshes its ping-timeout timer then).
        let mut until = Instant::now() + ping_timeout;
        let mut extended = false;
        let answered = loop {
            tokio::select! {
                () = shared.pong_notify.notified() => break true,
                () = sleep_until(until) => {
                    let packet_at = shared.lock().packet_since_ping;
                    match packet_at {
                        Some(at) if !extended && at + ping_timeout > until => {
                            extended = true;
                            until = at + ping_timeout;
                        }
                        _ => {
                            shared.close(CloseReason::PingTimeout);
                            break false;
                        }
                    }
                }
                () = shared.closed() => break false,
            }
        };
        if !answered {
            break;
        }
    }
    // A server close stays reachable until its close packet went out (or the client is gone).
    if shared.lock().close_undelivered {
        let _ = timeout(ping_timeout, shared.delivered.notified()).await;
    }
    if let Some(engine) = engine.upgrade() {
        let mut sessions = engine.sessions();
        if sessions
            .get(&shared.id)
            .is_some_and(|s| Arc::ptr_eq(s, &shared))
        {
            sessions.remove(&shared.id);
        }
    }
}

/// The upgrade handshake on a new WebSocket: `2probe` → `3probe` (and a noop to the pending
/// GET), then `5`. Returns the WebSocket once the session has moved to it.
async fn probe(
    shared: &Arc<Shared>,
    mut ws: HyperWebSocket,
    upgrade_timeout: Duration,
) -> Option<HyperWebSocket> {
    let handshake = async {
        loop {
            let message = tokio::select! {
                m = ws.recv() => m,
                () = shared.closed() => return false,
            };
            match message {
                Some(Ok(Message::Text(text))) => match decode_text(text.as_str()) {
                    Ok(Packet::Ping(data)) if data == "probe" => {
                        if ws.send(Message::text("3probe")).await.is_err() {
                            return false;
                        }
                        // Ends the pending GET (or the next one) with a noop so that the
                        // client can pause polling.
                        let pending = {
                            let mut inner = shared.lock();
                            inner.probed = true;
                            inner.get_active
                        };
                        if pending {
                            shared.push_control(Packet::Noop);
                        }
                    }
                    Ok(Packet::Upgrade) => return true,
                    Ok(Packet::Noop) => {}
                    _ => return false,
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                _ => return false,
            }
        }
    };
    let upgraded = timeout(upgrade_timeout, handshake).await.unwrap_or(false);
    let moved = upgraded && {
        let mut inner = shared.lock();
        inner.probed = false;
        if inner.reason.is_none() {
            inner.transport = TransportKind::WebSocket;
            inner.upgrading = false;
            true
        } else {
            false
        }
    };
    if moved {
        // The pending GET (if any) answers a noop; the WebSocket writer takes the queue.
        shared.wake();
        Some(ws)
    } else {
        tracing::debug!(sid = %shared.id, "Engine.IO upgrade abandoned");
        let _ = timeout(WS_CLOSE_WAIT, ws.close(None)).await;
        None
    }
}

/// Runs a session over its WebSocket: writes the queue, reads packets, until closed.
async fn ws_loop(shared: Arc<Shared>, ws: HyperWebSocket, write_timeout: Duration) {
    let (mut tx, mut rx) = ws.split();
    'run: loop {
        let notified = shared.out_notify.notified();
        // One write: the whole queue, or up to a write end (`send_all_and_flush`).
        let (batch, ended, closed, more) = {
            let mut inner = shared.lock();
            let (batch, ended) = inner.take_write();
            (
                batch,
                ended,
                inner.reason.is_some(),
                !inner.queue.is_empty(),
            )
        };
        if !batch.is_empty() {
            let write = async {
                for packet in &batch {
                    let message = match packet {
                        // Like Node engine.io, the close packet is never written over a
                        // WebSocket: the connection's close frame (sent below, after the rest of
                        // the queue) ends the session. Clients such as python-engineio treat a
                        // `1` as a deliberate disconnect and would not reconnect. Nor is a noop
                        // (it only ends long-polling GETs).
                        Packet::Close | Packet::Noop => continue,
                        Packet::Message(Data::Binary(bytes)) => Message::binary(bytes.clone()),
                        other => Message::text(other.to_text()),
                    };
                    tx.feed(message).await?;
                }
                tx.flush().await
            };
            // A peer that stops reading cannot hold the task and its connection forever.
            match timeout(write_timeout, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(sid = %shared.id, "Engine.IO WebSocket write failed: {e}");
                    shared.close(CloseReason::TransportError);
                    break 'run;
                }
                Err(_) => {
                    tracing::debug!(sid = %shared.id, "Engine.IO WebSocket write timed out");
                    shared.close(CloseReason::TransportError);
                    // Drop the connection without waiting for a close handshake.
                    return;
                }
            }
        }
        if batch.contains(&Packet::Close) {
            let mut inner = shared.lock();
            if inner.close_undelivered {
                inner.close_undelivered = false;
                shared.delivered.notify_one();
            }
        }
        if ended && !closed {
            // Whatever comes next, queued already or soon, goes out in a later read.
            sleep(WRITE_END_PAUSE).await;
        }
        if more {
            continue;
        }
        if closed {
            break;
        }
        tokio::select! {
            message = rx.recv() => match message {
                None | Some(Ok(Message::Close(_))) => shared.close(CloseReason::TransportClose),
                // The connection dropped: a transport close, as Node's `ws` reports it.
                Some(Err(volley::Error::Io(_) | volley::Error::AbnormalClose)) => {
                    shared.close(CloseReason::TransportClose);
                }
                // Protocol violations, messages over max_payload.
                Some(Err(e)) => {
                    tracing::debug!(sid = %shared.id, "Engine.IO WebSocket failed: {e}");
                    shared.close(CloseReason::TransportError);
                }
                Some(Ok(Message::Text(text))) => match decode_text(text.as_str()) {
                    // Node's WebSocket transport does not act on a close packet (clients close
                    // the WebSocket instead).
                    Ok(Packet::Close) => {}
                    Ok(packet) => {
                        shared.on_packet(packet).await;
                    }
                    Err(e) => {
                        tracing::debug!(sid = %shared.id, "bad Engine.IO packet: {e}");
                        shared.close(CloseReason::ParseError);
                    }
                },
                Some(Ok(Message::Binary(bytes))) => {
                    shared.note_packet();
                    shared.deliver(Data::Binary(bytes)).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
            () = notified => {}
            () = shared.closed() => {}
        }
    }
    // A close frame without a status code, as Node's `ws` sends for `socket.close()`.
    let _ = timeout(WS_CLOSE_WAIT, tx.close(None)).await;
    // Keep reading until the peer's close arrives (or the wait ends) so the close handshake
    // completes.
    let _ = timeout(WS_CLOSE_WAIT, async { while rx.recv().await.is_some() {} }).await;
}

/// A copy of `headers` that owns its bytes: hyper's header values share the buffer the request
/// was read into, which a long-lived session would otherwise keep alive whole.
fn detach_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        if let Ok(mut copy) = HeaderValue::from_bytes(value.as_bytes()) {
            copy.set_sensitive(value.is_sensitive());
            out.append(name.clone(), copy);
        }
    }
    out
}

/// A copy of `uri` that owns its bytes (hyper's share the request's read buffer, as header
/// values do).
fn detach_uri(uri: &http::Uri) -> http::Uri {
    http::Uri::from_maybe_shared(Bytes::copy_from_slice(uri.to_string().as_bytes()))
        .unwrap_or_else(|_| uri.clone())
}

/// The callbacks of a handler engine's WebSocket sessions on volley's callback drivers.
struct WsCallbacks {
    engine: Weak<EngineInner>,
}

/// What the driver keeps for one WebSocket session (the connection's data).
struct WsSession {
    shared: Arc<Shared>,
    /// The pong of a ping is awaited: since when the ping was sent.
    ping_sent: Option<Instant>,
    /// The pong's wait was extended once (a packet arrived while it was awaited).
    extended: bool,
}

impl WsCallbacks {
    /// The heartbeat's next step: the next ping, or the pong's deadline.
    fn arm(conn: &mut volley::callback::Conn<'_>, config: &EngineConfig) {
        let at = match conn.data::<WsSession>() {
            Some(ws) => match ws.ping_sent {
                None => Instant::now() + config.ping_interval,
                Some(sent) => {
                    let packet = ws.shared.lock().packet_since_ping;
                    match packet {
                        Some(at) if ws.extended => at + config.ping_timeout,
                        _ => sent + config.ping_timeout,
                    }
                }
            },
            None => return,
        };
        conn.set_timer(Some(at));
    }
}

impl volley::callback::Callbacks for WsCallbacks {
    fn on_open(&self, conn: &mut volley::callback::Conn<'_>) {
        let Some(inner) = self.engine.upgrade() else {
            let _ = conn.close(None);
            return;
        };
        let App::Handler(handler) = &inner.app else {
            let _ = conn.close(None);
            return;
        };
        let engine = Engine {
            inner: inner.clone(),
        };
        let config = &inner.config;
        let remote_addr = (conn.extensions().get::<volley::PeerAddr>().map(|p| p.0))
            .or_else(|| conn.extensions().get::<SocketAddr>().copied())
            .or_else(|| conn.peer_addr());
        let info = match conn.request() {
            Some(request) => RequestInfo::new(
                detach_uri(request.uri()),
                detach_headers(request.headers()),
                remote_addr,
            ),
            None => RequestInfo::new(http::Uri::default(), HeaderMap::new(), remote_addr),
        };
        // Kept in the session's request info: the connection need not hold them.
        // (Replaced, not cleared: a cleared map keeps its allocation.)
        *conn.extensions_mut() = http::Extensions::new();
        let max = config.max_buffered_packets;
        let handle = conn.handle();
        let shared = engine
            .register(|id| Shared::with_events(id, TransportKind::WebSocket, max, Some(handle)));
        let open = Packet::Open(open_json(&shared.id, "[]", config));
        if conn.send(Message::text(open.to_text())).is_err() {
            shared.close(CloseReason::TransportError);
        }
        conn.set_data(WsSession {
            shared: shared.clone(),
            ping_sent: None,
            extended: false,
        });
        Self::arm(conn, config);
        let sender = SessionSender::new(shared.clone());
        shared.set_events(handler.on_open(sender, info));
    }

    fn on_message(&self, conn: &mut volley::callback::Conn<'_>, message: Message) {
        let Some(ws) = conn.data::<WsSession>() else {
            return;
        };
        let shared = ws.shared.clone();
        let awaiting = ws.ping_sent.is_some();
        let data = match message {
            Message::Text(text) => match decode_text(text.as_str()) {
                Ok(Packet::Message(data)) => data,
                Ok(Packet::Pong(_)) => {
                    // Only the pong of the outstanding ping counts.
                    if awaiting
                        && let (Some(inner), Some(ws)) =
                            (self.engine.upgrade(), conn.data_mut::<WsSession>())
                    {
                        ws.ping_sent = None;
                        ws.extended = false;
                        Self::arm(conn, &inner.config);
                    }
                    return;
                }
                // In protocol v4 only the server pings: Node closes on "invalid heartbeat
                // direction".
                Ok(Packet::Ping(_)) => {
                    shared.close(CloseReason::TransportError);
                    return;
                }
                // Node ignores these over WebSocket (clients close the WebSocket instead of
                // sending a close packet).
                Ok(Packet::Close | Packet::Open(_) | Packet::Upgrade | Packet::Noop) => {
                    self.note_packet(&shared, awaiting);
                    return;
                }
                Err(e) => {
                    tracing::debug!(sid = %shared.id, "bad Engine.IO packet: {e}");
                    shared.close(CloseReason::ParseError);
                    return;
                }
            },
            Message::Binary(bytes) => Data::Binary(bytes),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
        };
        self.note_packet(&shared, awaiting);
        shared.deliver_now(data);
    }

    fn on_timer(&self, conn: &mut volley::callback::Conn<'_>) {
        let Some(inner) = self.engine.upgrade() else {
            return;
        };
        let config = &inner.config;
        let Some(ws) = conn.data_mut::<WsSession>() else {
            return;
        };
        let shared = ws.shared.clone();
        match ws.ping_sent {
            None => {
                ws.ping_sent = Some(Instant::now());
                ws.extended = false;
                shared.lock().packet_since_ping = None;
                if conn.send(Message::text("2")).is_err() {
                    return;
                }
            }
            Some(sent) => {
                // A packet while the pong was awaited extends the wait once, to ping_timeout
                // after that packet (as Node's engine refreshes its ping-timeout timer).
                let packet = shared.lock().packet_since_ping;
                match packet {
                    Some(at)
                        if !ws.extended
                            && at + config.ping_timeout > sent + config.ping_timeout =>
                    {
                        ws.extended = true;
                    }
                    _ => {
                        shared.close(CloseReason::PingTimeout);
                        return;
                    }
                }
            }
        }
        Self::arm(conn, config);
    }

    fn on_close(
        &self,
        conn: &mut volley::callback::Conn<'_>,
        result: volley::Result<Option<volley::CloseFrame>>,
    ) {
        let Some(ws) = conn.take_data::<WsSession>() else {
            return;
        };
        let reason = match result {
            Ok(_) | Err(volley::Error::Io(_) | volley::Error::AbnormalClose) => {
                CloseReason::TransportClose
            }
            Err(e) => {
                tracing::debug!(sid = %ws.shared.id, "Engine.IO WebSocket failed: {e}");
                CloseReason::TransportError
            }
        };
        ws.shared.close(reason);
        if let Some(engine) = self.engine.upgrade() {
            let mut sessions = engine.sessions();
            if sessions
                .get(&ws.shared.id)
                .is_some_and(|s| Arc::ptr_eq(s, &ws.shared))
            {
                sessions.remove(&ws.shared.id);
            }
        }
    }
}

impl WsCallbacks {
    /// A packet other than a pong arrived: while a pong is awaited, the first one extends the
    /// ping timeout (once).
    fn note_packet(&self, shared: &Shared, awaiting: bool) {
        if awaiting {
            let mut inner = shared.lock();
            if inner.packet_since_ping.is_none() {
                inner.packet_since_ping = Some(Instant::now());
            }
        }
    }
}

impl<B> tower_service::Service<Request<B>> for Engine
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<EngineBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let engine = self.clone();
        Box::pin(async move { Ok(engine.handle(request).await) })
    }
}

impl<B> hyper::service::Service<Request<B>> for Engine
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Response = Response<EngineBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, request: Request<B>) -> Self::Future {
        let engine = self.clone();
        Box::pin(async move { Ok(engine.handle(request).await) })
    }
}
