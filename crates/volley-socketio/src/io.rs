//! The server: configuration, namespaces, mounting.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use serde::Serialize;
use serde_json::Value;
use volley_engineio::{Engine, EngineBody, EngineConfig};

use crate::Namespace;
use crate::adapter::{AckResponse, AdapterError, AdapterFactory, BoxFuture, InMemoryAdapter};
use crate::namespace::NsHandlers;
use crate::operators::{BroadcastOperator, RemoteSocket};
use crate::packet::Limits;
use crate::socket::EmitError;
use crate::util::{IntoRooms, read, write};

type Matcher = Arc<dyn Fn(&str, &Value) -> bool + Send + Sync>;

/// Builds a [`SocketIo`]. Defaults as Node's socket.io: pingInterval 25 s, pingTimeout 20 s,
/// upgradeTimeout 10 s, maxHttpBufferSize 1e6, connectTimeout 45 s, 10 attachments per packet.
#[must_use]
pub struct SocketIoBuilder {
    engine: EngineConfig,
    connect_timeout: Duration,
    max_attachments: usize,
    ack_timeout: Duration,
    adapter: AdapterFactory,
    cleanup_empty_children: bool,
    recovery: Option<crate::RecoveryConfig>,
    parser: Parser,
}

/// The wire format of Socket.IO packets, chosen per server ([`SocketIoBuilder::parser`]); the
/// clients must use the same one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parser {
    /// socket.io-parser, the default of every client: text packets (`2["event",…]`) and
    /// binary attachments in messages of their own.
    #[default]
    Default,
    /// `socket.io-msgpack-parser`: each packet one binary message, MessagePack as `notepack.io`
    /// writes it, binary data inline (see [`packet::encode_msgpack`](crate::packet::encode_msgpack)).
    /// The client needs the same parser: `io(url, { parser: require("socket.io-msgpack-parser") })`.
    MsgPack,
}

impl std::fmt::Debug for SocketIoBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIoBuilder")
            .field("engine", &self.engine)
            .field("connect_timeout", &self.connect_timeout)
            .field("max_attachments", &self.max_attachments)
            .field("ack_timeout", &self.ack_timeout)
            .field("parser", &self.parser)
            .finish()
    }
}

impl Default for SocketIoBuilder {
    fn default() -> Self {
        SocketIoBuilder {
            engine: EngineConfig::default(),
            connect_timeout: Duration::from_secs(45),
            max_attachments: 10,
            ack_timeout: Duration::from_secs(30),
            adapter: InMemoryAdapter::factory(),
            cleanup_empty_children: false,
            recovery: None,
            parser: Parser::Default,
        }
    }
}

impl SocketIoBuilder {
    /// The whole Engine.IO configuration (transports, CORS, heartbeat, …).
    pub fn engine_config(mut self, config: EngineConfig) -> Self {
        self.engine = config;
        self
    }

    /// The Engine.IO heartbeat interval (25 s).
    pub fn ping_interval(mut self, d: Duration) -> Self {
        self.engine.ping_interval = d;
        self
    }

    /// How long a pong may take (20 s).
    pub fn ping_timeout(mut self, d: Duration) -> Self {
        self.engine.ping_timeout = d;
        self
    }

    /// How long a transport upgrade may take (10 s).
    pub fn upgrade_timeout(mut self, d: Duration) -> Self {
        self.engine.upgrade_timeout = d;
        self
    }

    /// The largest HTTP body / WebSocket message (maxHttpBufferSize, 1e6 bytes).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.engine.max_payload = bytes;
        self
    }

    /// CORS headers for cross-origin browser clients (`None`, the default, sends none, like
    /// Node without the `cors` option).
    pub fn cors(mut self, cors: Option<volley_engineio::Cors>) -> Self {
        self.engine.cors = cors;
        self
    }

    /// Which transports clients may use (polling and WebSocket by default).
    pub fn transports(mut self, transports: volley_engineio::Transports) -> Self {
        self.engine.transports = transports;
        self
    }

    /// How long a new connection may take to join a namespace before it is closed (45 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The most binary attachments one packet may announce (10); more closes the connection.
    pub fn max_attachments(mut self, n: usize) -> Self {
        self.max_attachments = n;
        self
    }

    /// How long `emit_with_ack` waits when no timeout is given (30 s; Node waits forever).
    pub fn ack_timeout(mut self, d: Duration) -> Self {
        self.ack_timeout = d;
        self
    }

    /// Removes a namespace made by [`SocketIo::of_dynamic`] when its last socket leaves (off by
    /// default, as Node's `cleanupEmptyChildNamespaces`). Turn it on when clients can name
    /// unboundedly many dynamic namespaces.
    pub fn cleanup_empty_child_namespaces(mut self, on: bool) -> Self {
        self.cleanup_empty_children = on;
        self
    }

    /// Turns connection state recovery on (off by default, as in Node): see
    /// [`recovery`](crate::recovery). `RecoveryConfig::default()` is Node's: a 2-minute window,
    /// middlewares skipped for a recovered socket.
    pub fn connection_state_recovery(mut self, config: crate::RecoveryConfig) -> Self {
        self.recovery = Some(config);
        self
    }

    /// The wire format of the packets ([`Parser::Default`] by default).
    pub fn parser(mut self, parser: Parser) -> Self {
        self.parser = parser;
        self
    }

    /// The adapter of every namespace ([`InMemoryAdapter`] by default).
    pub fn adapter(mut self, factory: AdapterFactory) -> Self {
        self.adapter = factory;
        self
    }

    /// The server, with the namespace `"/"`.
    pub fn build(self) -> SocketIo {
        let inner = Arc::new_cyclic(|weak: &std::sync::Weak<IoInner>| {
            let engine =
                Engine::with_handler(self.engine.clone(), ClientHandler { io: weak.clone() });
            let limits = Limits {
                max_attachments: self.max_attachments,
                ..Limits::default()
            };
            IoInner {
                engine,
                namespaces: RwLock::new(HashMap::new()),
                dynamic: RwLock::new(Vec::new()),
                dynamic_count: AtomicU64::new(0),
                closing: AtomicBool::new(false),
                cleanup_empty_children: self.cleanup_empty_children,
                connect_timeout: self.connect_timeout,
                limits,
                ack_timeout: self.ack_timeout,
                adapter: self.adapter,
                recovery: self.recovery,
                parser: self.parser,
            }
        });
        let io = SocketIo(inner);
        io.of("/");
        io
    }
}

/// Hands every new Engine.IO session to a Socket.IO client (no task of its own: its messages
/// are handled where they arrive).
struct ClientHandler {
    io: std::sync::Weak<IoInner>,
}

impl volley_engineio::Handler for ClientHandler {
    fn on_open(
        &self,
        sender: volley_engineio::SessionSender,
        request: volley_engineio::RequestInfo,
    ) -> Box<dyn volley_engineio::SessionEvents> {
        match self.io.upgrade() {
            Some(inner) => crate::client::open(SocketIo(inner), sender, request),
            None => {
                sender.close();
                Box::new(Gone)
            }
        }
    }
}

/// The events of a session that arrived as the server was dropped.
struct Gone;

impl volley_engineio::SessionEvents for Gone {
    fn on_message(&mut self, _data: volley_engineio::Data) {}
    fn on_close(&mut self, _reason: volley_engineio::CloseReason) {}
}

/// Forgets namespace `ns` if it is still the one registered under its name and still empty.
pub(crate) fn remove_namespace(io: &IoInner, ns: &Namespace) {
    let mut namespaces = write(&io.namespaces);
    if namespaces
        .get(ns.name())
        .is_some_and(|n| Arc::ptr_eq(&n.0, &ns.0) && n.sockets().is_empty())
    {
        namespaces.remove(ns.name());
    }
}

pub(crate) struct IoInner {
    engine: Engine,
    namespaces: RwLock<HashMap<String, Namespace>>,
    dynamic: RwLock<Vec<(Matcher, Arc<NsHandlers>)>>,
    dynamic_count: AtomicU64,
    closing: AtomicBool,
    cleanup_empty_children: bool,
    connect_timeout: Duration,
    limits: Limits,
    ack_timeout: Duration,
    adapter: AdapterFactory,
    recovery: Option<crate::RecoveryConfig>,
    parser: Parser,
}

/// A Socket.IO server. Cheap to clone (a handle).
///
/// Mount [`engine`](Self::engine) at `/socket.io` in a router (it is a hyper/tower service:
/// `Router::new().nest_service("/socket.io", io.engine().clone())`) or run
/// [`serve`](Self::serve) on a listener.
#[derive(Clone)]
pub struct SocketIo(Arc<IoInner>);

impl std::fmt::Debug for SocketIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketIo")
            .field(
                "namespaces",
                &read(&self.0.namespaces).keys().collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Default for SocketIo {
    fn default() -> Self {
        SocketIo::new()
    }
}

fn normalize(name: &str) -> String {
    if name.starts_with('/') {
        name.to_owned()
    } else {
        format!("/{name}")
    }
}

impl SocketIo {
    /// A server with the default configuration.
    pub fn new() -> SocketIo {
        SocketIo::builder().build()
    }

    /// A builder for a configured server.
    pub fn builder() -> SocketIoBuilder {
        SocketIoBuilder::default()
    }

    /// The Engine.IO server: the HTTP handler to mount at `/socket.io/`.
    pub fn engine(&self) -> &Engine {
        &self.0.engine
    }

    pub(crate) fn limits_ref(&self) -> &Limits {
        &self.0.limits
    }

    /// The wire format of this server's packets.
    pub fn parser(&self) -> Parser {
        self.0.parser
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        self.0.connect_timeout
    }

    /// The namespace `name` (`"/chat"`; a missing leading `/` is added), created on first use.
    pub fn of(&self, name: &str) -> Namespace {
        let name = normalize(name);
        if let Some(ns) = read(&self.0.namespaces).get(&name) {
            return ns.clone();
        }
        write(&self.0.namespaces)
            .entry(name.clone())
            .or_insert_with(|| {
                Namespace::new(
                    name,
                    Arc::default(),
                    &self.0.adapter,
                    self.0.ack_timeout,
                    None,
                    self.0.recovery.clone(),
                )
            })
            .clone()
    }

    /// Dynamic namespaces: a client connecting to a namespace that does not exist yet creates it
    /// when `matcher(name, auth)` is true. The returned template namespace holds the middlewares
    /// and connection handlers every namespace created this way shares (register them there);
    /// the created namespaces are then reachable through [`of`](Self::of). Sockets never connect
    /// to the template itself, so its broadcast operators reach nobody.
    pub fn of_dynamic<F>(&self, matcher: F) -> Namespace
    where
        F: Fn(&str, &Value) -> bool + Send + Sync + 'static,
    {
        let n = self.0.dynamic_count.fetch_add(1, Ordering::Relaxed);
        let handlers: Arc<NsHandlers> = Arc::default();
        let template = Namespace::new(
            format!("<dynamic #{n}>"),
            handlers.clone(),
            &self.0.adapter,
            self.0.ack_timeout,
            None,
            self.0.recovery.clone(),
        );
        write(&self.0.dynamic).push((Arc::new(matcher), handlers));
        template
    }

    /// The namespace a client's CONNECT addresses: an existing one, or a new dynamic one.
    pub(crate) fn lookup_namespace(&self, name: &str, auth: &Value) -> Option<Namespace> {
        if let Some(ns) = read(&self.0.namespaces).get(name) {
            return Some(ns.clone());
        }
        let handlers = read(&self.0.dynamic)
            .iter()
            .find(|(matcher, _)| matcher(name, auth))
            .map(|(_, h)| h.clone())?;
        Some(
            write(&self.0.namespaces)
                .entry(name.to_owned())
                .or_insert_with(|| {
                    Namespace::new(
                        name.to_owned(),
                        handlers,
                        &self.0.adapter,
                        self.0.ack_timeout,
                        self.0
                            .cleanup_empty_children
                            .then(|| Arc::downgrade(&self.0)),
                        self.0.recovery.clone(),
                    )
                })
                .clone(),
        )
    }

    /// The names of the existing namespaces.
    pub fn namespaces(&self) -> Vec<String> {
        let mut names: Vec<String> = read(&self.0.namespaces).keys().cloned().collect();
        names.sort();
        names
    }

    fn main_ns(&self) -> Namespace {
        self.of("/")
    }

    /// Targets the sockets of `"/"` in `rooms`.
    pub fn to(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.main_ns().to(rooms)
    }

    /// Targets the sockets of `"/"` not in `rooms`.
    pub fn except(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.main_ns().except(rooms)
    }

    /// Only this server's sockets of `"/"`.
    pub fn local(&self) -> BroadcastOperator {
        self.main_ns().local()
    }

    /// A volatile broadcast on `"/"`.
    pub fn volatile(&self) -> BroadcastOperator {
        self.main_ns().volatile()
    }

    /// A broadcast on `"/"` whose acknowledgements are awaited at most `timeout`.
    pub fn timeout(&self, timeout: Duration) -> BroadcastOperator {
        self.main_ns().timeout(timeout)
    }

    /// Sends event `event` to every socket of `"/"`.
    pub fn emit(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        self.main_ns().emit(event, data)
    }

    /// Sends event `event` to every socket of `"/"` and collects the acknowledgements.
    pub fn emit_with_ack(
        &self,
        event: &str,
        data: impl Serialize,
    ) -> Result<BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>>, EmitError> {
        self.main_ns().emit_with_ack(event, data)
    }

    /// The sockets of `"/"` on every server. Cancel-safe.
    pub async fn fetch_sockets(&self) -> Result<Vec<RemoteSocket>, AdapterError> {
        self.main_ns().fetch_sockets().await
    }

    /// Makes every socket of `"/"` join `rooms`.
    pub fn sockets_join(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.main_ns().sockets_join(rooms)
    }

    /// Makes every socket of `"/"` leave `rooms`.
    pub fn sockets_leave(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.main_ns().sockets_leave(rooms)
    }

    /// Disconnects every socket of `"/"`.
    pub fn disconnect_sockets(&self, close: bool) -> Result<(), AdapterError> {
        self.main_ns().disconnect_sockets(close)
    }

    /// Sends a server-side event to the `"/"` namespace of every other server (see
    /// [`Namespace::server_side_emit`]).
    pub fn server_side_emit(&self, event: &str, args: Vec<Value>) -> Result<(), EmitError> {
        self.main_ns().server_side_emit(event, args)
    }

    /// Sends a server-side event to every other server and collects one answer from each
    /// (see [`Namespace::server_side_emit_with_ack`]). Cancel-safe.
    pub async fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, EmitError> {
        self.main_ns().server_side_emit_with_ack(event, args).await
    }

    /// How many servers the cluster has (see [`Namespace::server_count`]). Cancel-safe.
    pub async fn server_count(&self) -> Result<usize, AdapterError> {
        self.main_ns().server_count().await
    }

    /// Waits until the adapter of every existing namespace has started (Redis subscriptions
    /// made, …): call it after creating the namespaces and before serving, so that the first
    /// broadcasts of the other servers are not missed. Namespaces created later start their
    /// adapter in the background. Cancel-safe (the adapters keep starting).
    pub async fn init_adapters(&self) -> Result<(), AdapterError> {
        let namespaces: Vec<Namespace> = read(&self.0.namespaces).values().cloned().collect();
        for ns in namespaces {
            ns.adapter().init().await?;
        }
        Ok(())
    }

    /// Server shutdown: closes every Engine.IO session; the sockets leave with reason
    /// [`DisconnectReason::ServerShuttingDown`](crate::DisconnectReason::ServerShuttingDown);
    /// then closes every namespace's adapter (in the background when there is a Tokio runtime;
    /// see [`close_adapters`](Self::close_adapters) to await it). New connections are still
    /// accepted by the engine; stop serving to refuse them.
    pub fn close(&self) {
        self.0.closing.store(true, Ordering::Release);
        self.0.engine.close_all();
        if tokio::runtime::Handle::try_current().is_ok() {
            let io = self.clone();
            tokio::spawn(async move {
                if let Err(e) = io.close_adapters().await {
                    tracing::warn!("socket.io: closing an adapter failed: {e}");
                }
            });
        }
    }

    /// Closes the adapter of every namespace (unsubscribes from the cluster). Cancel-safe.
    pub async fn close_adapters(&self) -> Result<(), AdapterError> {
        let namespaces: Vec<Namespace> = read(&self.0.namespaces).values().cloned().collect();
        for ns in namespaces {
            ns.adapter().close().await?;
        }
        Ok(())
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.0.closing.load(Ordering::Acquire)
    }

    /// Handles one HTTP request: paths under `/socket.io/` go to the engine, others get 404.
    /// Cancel-safe (dropping it drops the request).
    pub async fn handle<B>(
        &self,
        req: http::Request<B>,
    ) -> http::Response<Either<EngineBody, Full<Bytes>>>
    where
        B: hyper::body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if path == "/socket.io" || path.starts_with("/socket.io/") {
            self.0.engine.handle(req).await.map(Either::Left)
        } else {
            let mut res =
                http::Response::new(Either::Right(Full::new(Bytes::from_static(b"Not Found"))));
            *res.status_mut() = http::StatusCode::NOT_FOUND;
            res
        }
    }

    /// The endpoint that serves Socket.IO on a [`volley::Server`]: route `"/socket.io/*"` to
    /// it, beside WebSocket routes, with the server's TLS, graceful shutdown and limits.
    ///
    /// ```no_run
    /// # async fn run(io: volley_socketio::SocketIo) -> std::io::Result<()> {
    /// volley::Server::bind("127.0.0.1:3000")
    ///     .await?
    ///     .route("/socket.io/*", io.endpoint())
    ///     .run()
    ///     .await
    /// # }
    /// ```
    pub fn endpoint(&self) -> volley::Endpoint {
        let io = self.clone();
        volley::Endpoint::service(move |request| {
            let io = io.clone();
            async move { io.handle(request).await }
        })
    }

    /// Serves Socket.IO at `/socket.io/` on `listener` (a [`volley::Server`] with the default
    /// configuration and only [`endpoint`](Self::endpoint) routed), until the future is
    /// dropped; other paths get 404. Cancel-safe (dropping it stops accepting; running
    /// connections go on). For TLS, graceful shutdown or more routes, build the server
    /// yourself.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        volley::Server::from_listener(listener)
            .route("/socket.io/*", self.endpoint())
            .run()
            .await
    }
}
