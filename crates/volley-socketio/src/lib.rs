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
//! - [`chat`]: a small chat namespace (rooms, messages with acknowledgements).
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
pub mod chat;
mod client;
mod io;
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
pub use io::{SocketIo, SocketIoBuilder};
pub use namespace::{ConnectError, Namespace};
pub use operators::{BroadcastOperator, RemoteSocket};
pub use payload::Payload;
pub use recovery::RecoveryConfig;
pub use socket::{
    AckError, AckRequest, AckSender, DisconnectReason, EmitError, EncodedPacket, Handshake, Socket,
};
pub use util::IntoRooms;
pub use volley_engineio as engineio;
