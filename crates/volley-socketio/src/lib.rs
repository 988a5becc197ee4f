//! Socket.IO protocol v5 server on [`volley_engineio`], with the feature set of Node's
//! `socket.io` 4.x.
//!
//! - [`SocketIo`] (built with [`SocketIo::builder`]): the server; mount
//!   [`SocketIo::engine`] at `/socket.io/` or run [`SocketIo::serve`]. The wire format is
//!   socket.io-parser's, or `socket.io-msgpack-parser`'s with [`Parser::MsgPack`].
//! - [`Namespace`]: connect middleware ([`Namespace::use_middleware`]), connection handlers
//!   ([`Namespace::on_connection`]) and the namespace-wide operators.
//! - [`Socket`]: one client in one namespace: typed events ([`Socket::on`],
//!   [`Socket::on_async`], [`Socket::on_any`]), packet middleware ([`Socket::use_middleware`])
//!   and its error hook ([`Socket::on_error`]), [`Socket::emit`], [`Socket::emit_with_ack`],
//!   rooms, per-socket data, [`Socket::on_disconnecting`] (rooms still readable) and
//!   [`Socket::on_disconnect`].
//! - [`BroadcastOperator`]: `to`, `except`, `local`, `volatile`, `timeout`, `emit`,
//!   `emit_with_ack` (collects acknowledgements), `fetch_sockets` ([`RemoteSocket`]s, on every
//!   server of a cluster), `sockets_join/leave`, `disconnect_sockets`.
//! - [`adapter`]: the [`Adapter`] trait (rooms, broadcast delivery, across servers for a
//!   multi-server adapter) and the default [`InMemoryAdapter`].
//! - [`recovery`]: connection state recovery (Socket.IO 4.6+), off by default.
//! - [`packet`]: the sans-IO Socket.IO packet codec (binary attachments with placeholders), and
//!   the msgpack parser's; [`msgpack`]: MessagePack as Node's `notepack.io` writes it.
//!
//! # Typed data
//!
//! Whatever is sent is any `serde::Serialize` value and whatever is received any
//! `serde::Deserialize` type ([`FromPayload`]), mapped to Socket.IO's argument lists:
//! - **a tuple is the argument list**: `socket.emit("move", (x, y))` is Node's
//!   `socket.emit("move", x, y)`, and a handler taking `(i32, i32)` receives both; `()` is no
//!   argument; any other value (a struct, a `Vec`, a `serde_json::Value`) is one argument. A
//!   handler taking a tuple gets `null` for missing trailing arguments (an `Option` takes
//!   `None`) and ignores extra ones, as a JavaScript function does.
//! - **bytes are binary attachments**: what serde serializes as bytes ([`bytes::Bytes`],
//!   `serde_bytes::ByteBuf`, a `#[serde(with = "serde_bytes")] Vec<u8>`) becomes a binary
//!   attachment (a `Buffer` on a Node client), wherever it is nested; receiving, a `Bytes` or
//!   `Vec<u8>` field takes one. Why serde's bytes and no wrapper type: it is serde's own way of
//!   saying "binary" (what `bytes`, `serde_bytes` and every binary format use), so existing
//!   types work unchanged and nothing else can be mistaken for binary. A plain `Vec<u8>` is
//!   serialized by serde as a sequence of numbers: it stays a JSON array (mark it
//!   `serde_bytes` to send it as binary).
//! - A [`Payload`] (the raw arguments and attachments) is sent and received as it is.
//! - Arguments that do not fit a handler's type never reach it (nor panic): the socket's
//!   [`on_error`](Socket::on_error) hook gets [`EventError::Data`]; a handler taking
//!   [`TryData<T>`] sees the error itself. An acknowledgement that does not fit is
//!   [`AckError::Data`].
//!
//! # Order of events
//!
//! The events of one socket are handled one at a time, in the order they arrived: a handler
//! starts when the previous event's handler has finished, the future of an async handler
//! included (see [`Socket::on_async`]). Acknowledgements from the client are not held up.
//!
//! # Example
//!
//! ```no_run
//! use bytes::Bytes;
//! use serde::{Deserialize, Serialize};
//! use volley_socketio::{ConnectError, EventError, SocketIo};
//!
//! #[derive(Deserialize)]
//! struct Post {
//!     room: String,
//!     text: String,
//! }
//!
//! #[derive(Serialize)]
//! struct Message<'a> {
//!     from: &'a str,
//!     text: &'a str,
//! }
//!
//! #[derive(Deserialize, Serialize)]
//! struct Avatar {
//!     name: String,
//!     image: Bytes, // a binary attachment, a Buffer for a Node client
//! }
//!
//! # async fn run() -> std::io::Result<()> {
//! let io = SocketIo::new();
//! let chat = io.of("/chat");
//! // Connect middleware: refuse a client without a name in its auth payload.
//! chat.use_middleware(|socket, auth| async move {
//!     match auth["name"].as_str() {
//!         Some(name) => {
//!             socket.insert_data(name.to_owned());
//!             Ok(())
//!         }
//!         None => Err(ConnectError::new("a name is needed")),
//!     }
//! });
//! chat.on_connection(|socket| {
//!     // One argument, a room name; the client's ack gets `true`.
//!     socket.on("join", |socket, room: String, ack| {
//!         socket.join(room);
//!         if let Some(ack) = ack {
//!             let _ = ack.send(true);
//!         }
//!     });
//!     // A struct: `socket.emit("post", { room, text })` on the client.
//!     socket.on("post", |socket, post: Post, _ack| {
//!         let from = socket.data::<String>().unwrap_or_default();
//!         let _ = socket
//!             .namespace()
//!             .to(post.room)
//!             .emit("message", Message { from: &from, text: &post.text });
//!     });
//!     // Binary data both ways.
//!     socket.on("avatar", |socket, avatar: Avatar, _ack| {
//!         let _ = socket.broadcast().emit("avatar", &avatar);
//!     });
//!     // Async: ask the client, await its typed answer (two arguments), reply to the event.
//!     socket.on_async("confirm", |socket, question: String, ack| async move {
//!         let answer: Result<(bool, Option<String>), _> =
//!             socket.emit_with_ack("question", &question).await;
//!         if let (Some(ack), Ok((yes, comment))) = (ack, answer) {
//!             let _ = ack.send((yes, comment.unwrap_or_default()));
//!         }
//!     });
//!     // Packet middleware (Node's `socket.use`) and the error hook.
//!     socket.use_middleware(|_socket, event| {
//!         if event.name.starts_with("admin:") {
//!             return Err("unauthorized event".into());
//!         }
//!         Ok(())
//!     });
//!     socket.on_error(|socket, err| {
//!         if let EventError::Data { event, error } = &err {
//!             let _ = socket.emit("bad-request", (event, error.to_string()));
//!         }
//!     });
//!     // Still in its rooms here.
//!     socket.on_disconnecting(|socket, reason| {
//!         for room in socket.rooms() {
//!             let _ = socket.to(room).emit("left", (socket.id(), reason.as_str()));
//!         }
//!     });
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! io.serve(listener).await
//! # }
//! ```
//!
//! `examples/socketio_chat.rs` (rooms and presence) and `examples/socketio_dashboard.rs`
//! (volatile broadcasts) are complete servers.
//!
//! # Compatibility with Node
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
//! - Node runs the event listeners of one socket concurrently (an async listener's await lets
//!   the next event's listener start); here they run one at a time (see above);
//! - Node's `error` event on a server-side socket also gets events named `"error"` sent by the
//!   client; here those are ordinary events ([`Socket::on`]`("error", …)`), and
//!   [`Socket::on_error`] only gets the server's own reports;
//! - with the msgpack parser, an ack id must be an integer from 0 to 2^53 − 1 (Node also takes a
//!   negative one);
//! - the client bundle (`/socket.io/socket.io.js`, Node's `serveClient`) is not served.
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
    EventError, Handshake, HandshakeHeaders, MAX_QUEUED_EVENTS, Socket,
};
pub use util::IntoRooms;
pub use volley_engineio as engineio;
