//! Socket.IO protocol v5 server on [`volley_engineio`], with the feature set of Node's
//! `socket.io` 4.x.
//!
//! - [`SocketIo`] (built with [`SocketIo::builder`]): the server; mount
//!   [`SocketIo::engine`] at `/socket.io/` or run [`SocketIo::serve`].
//! - [`Namespace`]: connect middleware ([`Namespace::use_middleware`]), connection handlers
//!   ([`Namespace::on_connection`]) and the namespace-wide operators.
//! - [`Socket`]: one client in one namespace: events ([`Socket::on`], [`Socket::on_any`]),
//!   [`Socket::emit`], [`Socket::emit_with_ack`], rooms, per-socket data.
//! - [`BroadcastOperator`]: `to`, `except`, `local`, `volatile`, `timeout`, `emit`,
//!   `emit_with_ack` (collects acknowledgements), `fetch_sockets` ([`RemoteSocket`]s, on every
//!   server of a cluster), `sockets_join/leave`, `disconnect_sockets`.
//! - [`adapter`]: the [`Adapter`] trait (rooms, broadcast delivery, across servers for a
//!   multi-server adapter) and the default [`InMemoryAdapter`].
//! - [`recovery`]: connection state recovery (Socket.IO 4.6+), off by default.
//! - [`packet`]: the sans-IO Socket.IO packet codec (binary attachments with placeholders).
//!
//! On the wire it answers as Node's socket.io 4.8.4 does: `tests/node_wire.rs` compares raw
//! exchanges with Node's own server (see [`engineio`] for the Engine.IO layer and what differs
//! there). A CONNECT for a namespace already joined, any other packet for a namespace not joined
//! and a CONNECT_ERROR from a client close the connection, as in Node; the CONNECT reply goes out
//! in a write of its own, before what the connection handlers send. Still different from Node:
//! - the disconnect reason handlers see: Node gives `"transport close"` when a long-polling
//!   client sends its close packet (here `"forced close"`), and `"forced close"` when the server
//!   closes the Engine.IO session (`socket.conn.close()`, here `"forced server close"`) or the
//!   client sends an undecodable packet (here `"parse error"`);
//! - Node completes a CONNECT and handles a DISCONNECT on the next tick: an EVENT in the same
//!   socket read (or polling payload) as its CONNECT closes the connection there even when the
//!   namespace has no connect middleware (here it reaches the new socket), and an EVENT right
//!   behind a DISCONNECT is ignored there (here it closes the connection: its namespace is no
//!   longer joined);
//! - the client bundle (`/socket.io/socket.io.js`, Node's `serveClient`) is not served.
//!
//! ```no_run
//! use serde_json::json;
//! use volley_socketio::{SocketIo, Payload};
//!
//! # async fn run() -> std::io::Result<()> {
//! let io = SocketIo::new();
//! io.of("/").on_connection(|socket| {
//!     socket.on("ping", |socket, payload, ack| {
//!         if let Some(ack) = ack {
//!             let _ = ack.send(payload);
//!         }
//!         let _ = socket.emit("pong", json!({"at": "now"}));
//!     });
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! io.serve(listener).await
//! # }
//! ```
pub mod adapter;
mod args;
mod client;
mod io;
pub mod msgpack;
mod namespace;
mod operators;
pub mod packet;
mod payload;
pub mod recovery;
mod socket;
mod util;

pub use adapter::{
    AckResponse, Adapter, AdapterError, AdapterFactory, BroadcastFlags, BroadcastOptions,
    InMemoryAdapter, NamespaceRef, RoomChange, ServerAck, SocketInfo,
};
pub use args::{DataError, FromPayload, TryData};
pub use io::{Parser, SocketIo, SocketIoBuilder};
pub use namespace::{ConnectError, Namespace};
pub use operators::{BroadcastOperator, RemoteSocket};
pub use payload::Payload;
pub use recovery::RecoveryConfig;
pub use socket::{
    AckError, AckRequest, AckSender, BoxError, DisconnectReason, EmitError, EncodedPacket, Event,
    EventError, Handshake, MAX_QUEUED_EVENTS, Socket,
};
pub use util::IntoRooms;
pub use volley_engineio as engineio;
