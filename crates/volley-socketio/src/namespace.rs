//! Namespaces: connection handlers, middleware and the namespace-wide operators.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use serde_json::Value;

use crate::adapter::{
    AckResponse, Adapter, AdapterFactory, BoxFuture, BroadcastOptions, NamespaceRef,
};
use crate::io::IoInner;
use crate::operators::BroadcastOperator;
use crate::socket::EmitError;
use crate::util::{IntoRooms, read, write};
use crate::{Payload, Socket};

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

/// Handlers shared by a dynamic namespace template and the namespaces made from it.
#[derive(Default)]
pub(crate) struct NsHandlers {
    middlewares: RwLock<Vec<Middleware>>,
    connection: RwLock<Vec<ConnectionHandler>>,
}

pub(crate) struct NsInner {
    name: String,
    handlers: Arc<NsHandlers>,
    sockets: RwLock<HashMap<String, Socket>>,
    adapter: Arc<dyn Adapter>,
    ids: AtomicU64,
    ack_timeout: Duration,
    /// For a namespace made by a dynamic matcher with cleanup on: the server to leave when the
    /// last socket goes.
    cleanup: Option<Weak<IoInner>>,
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
    ) -> Namespace {
        Namespace(Arc::new_cyclic(|weak| NsInner {
            name,
            handlers,
            sockets: RwLock::new(HashMap::new()),
            adapter: factory(NamespaceRef(weak.clone())),
            ids: AtomicU64::new(0),
            ack_timeout,
            cleanup,
        }))
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
        if empty {
            if let Some(io) = self.0.cleanup.as_ref().and_then(Weak::upgrade) {
                crate::io::remove_namespace(&io, self);
            }
        }
    }

    pub(crate) fn next_ack_id(&self) -> u64 {
        self.0.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn default_ack_timeout(&self) -> Duration {
        self.0.ack_timeout
    }

    /// The connected local socket with id `id`.
    pub fn get_socket(&self, id: &str) -> Option<Socket> {
        read(&self.0.sockets).get(id).cloned()
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

    /// Sends event `event` to every socket of the namespace (encoded once).
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> Result<(), EmitError> {
        self.operator().emit(event, payload)
    }

    /// Sends event `event` to every socket and collects their acknowledgements (see
    /// [`BroadcastOperator::emit_with_ack`]).
    pub fn emit_with_ack(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BoxFuture<'static, Vec<AckResponse>>, EmitError> {
        self.operator().emit_with_ack(event, payload)
    }

    /// The sockets of the namespace (see [`BroadcastOperator::fetch_sockets`]). Cancel-safe.
    pub async fn fetch_sockets(&self) -> Vec<Socket> {
        self.operator().fetch_sockets().await
    }

    /// Makes every socket join `rooms`.
    pub fn sockets_join(&self, rooms: impl IntoRooms) {
        self.operator().sockets_join(rooms)
    }

    /// Makes every socket leave `rooms`.
    pub fn sockets_leave(&self, rooms: impl IntoRooms) {
        self.operator().sockets_leave(rooms)
    }

    /// Disconnects every socket (and closes their connections when `close`).
    pub fn disconnect_sockets(&self, close: bool) {
        self.operator().disconnect_sockets(close)
    }
}
