//! Namespaces: connection handlers, middleware and the namespace-wide operators.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::Socket;
use crate::adapter::{
    AckResponse, Adapter, AdapterError, AdapterFactory, BoxFuture, BroadcastOptions, NamespaceRef,
    ServerAck,
};
use crate::io::IoInner;
use crate::operators::{BroadcastOperator, RemoteSocket};
use crate::socket::EmitError;
use crate::util::{IntoRooms, read, write};

/// A connect middleware's refusal: the client gets a CONNECT_ERROR `{"message", "data"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectError {
    /// The error message (`err.message` on the client).
    pub message: String,
    /// Optional details (`err.data` on the client).
    pub data: Option<Value>,
}

impl ConnectError {
    /// A refusal with `message` and no data.
    pub fn new(message: impl Into<String>) -> Self {
        ConnectError {
            message: message.into(),
            data: None,
        }
    }

    /// Adds details.
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub(crate) fn to_value(&self) -> Value {
        let mut obj = serde_json::Map::new();
        obj.insert("message".into(), Value::String(self.message.clone()));
        if let Some(data) = &self.data {
            obj.insert("data".into(), data.clone());
        }
        Value::Object(obj)
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConnectError {}

pub(crate) type Middleware =
    Arc<dyn Fn(Socket, Value) -> BoxFuture<'static, Result<(), ConnectError>> + Send + Sync>;
type ConnectionHandler = Arc<dyn Fn(Socket) + Send + Sync>;
type ServerEventHandler = Arc<dyn Fn(Vec<Value>, Option<ServerAck>) + Send + Sync>;

/// Handlers shared by a dynamic namespace template and the namespaces made from it.
#[derive(Default)]
pub(crate) struct NsHandlers {
    middlewares: RwLock<Vec<Middleware>>,
    connection: RwLock<Vec<ConnectionHandler>>,
    server_events: RwLock<HashMap<String, ServerEventHandler>>,
}

pub(crate) struct NsInner {
    name: String,
    handlers: Arc<NsHandlers>,
    /// id -> socket (a fast hash: broadcasts look up every recipient).
    sockets: RwLock<HashMap<String, Socket, foldhash::fast::RandomState>>,
    adapter: Arc<dyn Adapter>,
    ids: AtomicU64,
    ack_timeout: Duration,
    /// For a namespace made by a dynamic matcher with cleanup on: the server to leave when the
    /// last socket goes.
    cleanup: Option<Weak<IoInner>>,
    recovery: Option<crate::RecoveryConfig>,
}

/// A namespace (`"/"`, `"/chat"`, …): its own handlers, sockets, rooms and adapter.
/// Cheap to clone (a handle).
#[derive(Clone)]
pub struct Namespace(pub(crate) Arc<NsInner>);

impl std::fmt::Debug for Namespace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespace")
            .field("name", &self.0.name)
            .field("sockets", &read(&self.0.sockets).len())
            .finish()
    }
}

impl Namespace {
    pub(crate) fn new(
        name: String,
        handlers: Arc<NsHandlers>,
        factory: &AdapterFactory,
        ack_timeout: Duration,
        cleanup: Option<Weak<IoInner>>,
        recovery: Option<crate::RecoveryConfig>,
    ) -> Namespace {
        let ns_ref = |weak: &Weak<NsInner>| NamespaceRef {
            ns: weak.clone(),
            name: name.as_str().into(),
            recovery: recovery.clone(),
        };
        let ns = Namespace(Arc::new_cyclic(|weak| NsInner {
            adapter: factory(ns_ref(weak)),
            name: name.clone(),
            handlers,
            sockets: RwLock::new(HashMap::default()),
            ids: AtomicU64::new(0),
            ack_timeout,
            cleanup,
            recovery: recovery.clone(),
        }));
        // As Node: the adapter starts with the namespace (in the background; see
        // `SocketIo::init_adapters` to wait for it).
        if tokio::runtime::Handle::try_current().is_ok() {
            let init = ns.0.adapter.init();
            let name = ns.0.name.clone();
            tokio::spawn(async move {
                if let Err(e) = init.await {
                    tracing::warn!(nsp = name, "socket.io: the adapter did not start: {e}");
                }
            });
        }
        ns
    }

    /// The namespace name, e.g. `"/chat"`.
    pub fn name(&self) -> &str {
        &self.0.name
    }

    /// This namespace's adapter (rooms, broadcasts).
    pub fn adapter(&self) -> &Arc<dyn Adapter> {
        &self.0.adapter
    }

    /// Adds a connect middleware. Middlewares run in order for every namespace CONNECT, before
    /// the socket joins the namespace, with the socket (not yet connected: do not emit) and the
    /// auth payload (`{}` when none); the first `Err` refuses the connection with a
    /// CONNECT_ERROR carrying its message and data.
    pub fn use_middleware<F, Fut>(&self, middleware: F)
    where
        F: Fn(Socket, Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), ConnectError>> + Send + 'static,
    {
        let mw: Middleware = Arc::new(move |socket, auth| Box::pin(middleware(socket, auth)));
        write(&self.0.handlers.middlewares).push(mw);
    }

    /// Calls `handler` for every socket that connects (after the CONNECT reply is sent). Register
    /// the socket's event handlers there. It runs on the client's task: do not block.
    pub fn on_connection<F>(&self, handler: F)
    where
        F: Fn(Socket) + Send + Sync + 'static,
    {
        write(&self.0.handlers.connection).push(Arc::new(handler));
    }

    pub(crate) fn middlewares(&self) -> Vec<Middleware> {
        read(&self.0.handlers.middlewares).clone()
    }

    pub(crate) fn run_connection_handlers(&self, socket: &Socket) {
        let handlers: Vec<ConnectionHandler> = read(&self.0.handlers.connection).clone();
        for handler in handlers {
            crate::socket::guarded("connection handler", || handler(socket.clone()));
        }
    }

    pub(crate) fn insert_socket(&self, socket: &Socket) {
        write(&self.0.sockets).insert(socket.id().to_owned(), socket.clone());
        self.0
            .adapter
            .add_all(socket.id(), &[socket.id().to_owned()]);
    }

    pub(crate) fn remove_socket(&self, id: &str) {
        let empty = {
            let mut sockets = write(&self.0.sockets);
            sockets.remove(id);
            sockets.is_empty()
        };
        if empty && let Some(io) = self.0.cleanup.as_ref().and_then(Weak::upgrade) {
            crate::io::remove_namespace(&io, self);
        }
    }

    /// A fresh acknowledgement id of this namespace (for [`Adapter`] implementations that
    /// relay another server's broadcast with acknowledgement, as Node's adapters do).
    pub fn next_ack_id(&self) -> u64 {
        self.0.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Handles event `event` sent by another server's
    /// [`server_side_emit`](Self::server_side_emit) (Node's `io.on("event", …)` for
    /// `serverSideEmit`): `handler(args, ack)` runs on the adapter's task, so it should not
    /// block; `ack` is `Some` when the sender asked for an answer. Replaces an earlier handler.
    pub fn on_server_side_emit<F>(&self, event: impl Into<String>, handler: F)
    where
        F: Fn(Vec<Value>, Option<ServerAck>) + Send + Sync + 'static,
    {
        write(&self.0.handlers.server_events).insert(event.into(), Arc::new(handler));
    }

    /// Runs the handler of a server-side event received from another server (for [`Adapter`]
    /// implementations). Returns whether a handler ran; without one, `ack` is dropped unanswered.
    pub fn dispatch_server_side_emit(
        &self,
        event: &str,
        args: Vec<Value>,
        ack: Option<ServerAck>,
    ) -> bool {
        let handler = read(&self.0.handlers.server_events).get(event).cloned();
        match handler {
            Some(handler) => {
                crate::socket::guarded("server-side event handler", || handler(args, ack));
                true
            }
            None => false,
        }
    }

    /// Sends event `event` with `args` to the namespace of the same name on every other server
    /// of the cluster (Node's `serverSideEmit`; JSON arguments only, as Node's adapters).
    pub fn server_side_emit(&self, event: &str, args: Vec<Value>) -> Result<(), EmitError> {
        if crate::socket::RESERVED_EVENTS.contains(&event) {
            return Err(EmitError::Reserved(event.to_owned()));
        }
        self.0
            .adapter
            .server_side_emit(event, &args)
            .map_err(EmitError::Adapter)
    }

    /// Like [`server_side_emit`](Self::server_side_emit), asking every other server for one
    /// answer: resolves with the answers, or [`AdapterError::Timeout`] when not every server
    /// answered within the adapter's request timeout. Cancel-safe (dropping the future only
    /// gives up the answers).
    pub async fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: Vec<Value>,
    ) -> Result<Vec<Value>, EmitError> {
        if crate::socket::RESERVED_EVENTS.contains(&event) {
            return Err(EmitError::Reserved(event.to_owned()));
        }
        self.0
            .adapter
            .server_side_emit_with_ack(event, &args)
            .await
            .map_err(EmitError::Adapter)
    }

    /// How many servers the cluster has (1 with the in-memory adapter). Cancel-safe.
    pub async fn server_count(&self) -> Result<usize, AdapterError> {
        self.0.adapter.server_count().await
    }

    /// The connection state recovery settings (`None`: off).
    pub(crate) fn recovery(&self) -> Option<&crate::RecoveryConfig> {
        self.0.recovery.as_ref()
    }

    pub(crate) fn default_ack_timeout(&self) -> Duration {
        self.0.ack_timeout
    }

    /// The connected local socket with id `id`.
    pub fn get_socket(&self, id: &str) -> Option<Socket> {
        read(&self.0.sockets).get(id).cloned()
    }

    /// The table of connected local sockets, read-locked: hold it briefly, and take no lock
    /// that a socket's removal takes (an adapter's own state may be locked before it).
    pub(crate) fn socket_table(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Socket, foldhash::fast::RandomState>> {
        read(&self.0.sockets)
    }

    /// The connected local sockets among `ids` (one lookup of the socket table for all).
    pub(crate) fn get_sockets<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<Socket> {
        let sockets = read(&self.0.sockets);
        ids.into_iter()
            .filter_map(|id| sockets.get(id).cloned())
            .collect()
    }

    /// The connected local sockets.
    pub fn sockets(&self) -> Vec<Socket> {
        read(&self.0.sockets).values().cloned().collect()
    }

    fn operator(&self) -> BroadcastOperator {
        BroadcastOperator::new(self.clone(), BroadcastOptions::default())
    }

    /// Targets the sockets in `rooms`.
    pub fn to(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.operator().to(rooms)
    }

    /// Same as [`to`](Self::to).
    pub fn in_(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.operator().to(rooms)
    }

    /// Targets every socket not in `rooms`.
    pub fn except(&self, rooms: impl IntoRooms) -> BroadcastOperator {
        self.operator().except(rooms)
    }

    /// Only this server's sockets.
    pub fn local(&self) -> BroadcastOperator {
        self.operator().local()
    }

    /// A broadcast whose packet may be lost (see
    /// [`BroadcastFlags::volatile`](crate::BroadcastFlags::volatile)).
    pub fn volatile(&self) -> BroadcastOperator {
        self.operator().volatile()
    }

    /// Sets the acknowledgement timeout of [`BroadcastOperator::emit_with_ack`].
    pub fn timeout(&self, timeout: Duration) -> BroadcastOperator {
        self.operator().timeout(timeout)
    }

    /// Sends event `event` to every socket of the namespace (encoded once), on every server.
    pub fn emit(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        self.operator().emit(event, data)
    }

    /// Sends event `event` to every socket and collects their acknowledgements (see
    /// [`BroadcastOperator::emit_with_ack`]).
    pub fn emit_with_ack(
        &self,
        event: &str,
        data: impl Serialize,
    ) -> Result<BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>>, EmitError> {
        self.operator().emit_with_ack(event, data)
    }

    /// The sockets of the namespace on every server (see
    /// [`BroadcastOperator::fetch_sockets`]). Cancel-safe.
    pub async fn fetch_sockets(&self) -> Result<Vec<RemoteSocket>, AdapterError> {
        self.operator().fetch_sockets().await
    }

    /// Makes every socket join `rooms`.
    pub fn sockets_join(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.operator().sockets_join(rooms)
    }

    /// Makes every socket leave `rooms`.
    pub fn sockets_leave(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.operator().sockets_leave(rooms)
    }

    /// Disconnects every socket (and closes their connections when `close`).
    pub fn disconnect_sockets(&self, close: bool) -> Result<(), AdapterError> {
        self.operator().disconnect_sockets(close)
    }
}
