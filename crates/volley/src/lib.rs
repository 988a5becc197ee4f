//! Volley: a WebSocket server and client for tokio, on the sans-IO [`volley_proto`] core.
//!
//! ```no_run
//! # async fn run() -> volley::Result<()> {
//! let mut ws = volley::connect("ws://127.0.0.1:9001/").await?;
//! ws.send("hello").await?;
//! if let Some(reply) = ws.recv().await {
//!     println!("{:?}", reply?);
//! }
//! ws.close(None).await?;
//! # Ok(()) }
//! ```
//!
//! # How the crate is laid out
//!
//! One protocol core below, one runtime layer on top; in this crate, from the bottom up:
//!
//! | part | files | what it owns |
//! |---|---|---|
//! | core | `core.rs` | what every live connection needs besides the frame codec, once, sans-IO (time is an argument): keep-alive pings and pong deadline, idle timeout, close deadline, buffer release, the write limit, bounded send queues with their [`Overflow`] policy, shutdown state |
//! | transport | `io.rs`, `maybe_tls.rs`, `tls.rs` | moving bytes between a transport and the protocol (vectored writes, reads into the protocol's buffer); TCP or TLS |
//! | drivers | `task.rs`, `callback/` | two ways to run a connection over the same core: a task per connection ([`WebSocket`], its [`split`](WebSocket::split) halves, [`CloseHandle`]), or [`callback`]s on one driver per worker ([`callback::Callbacks`], [`callback::ConnHandle`], [`callback::Drivers`]) |
//! | handshake | `handshake.rs`, `policy.rs` | the opening handshake over a transport, both roles ([`accept`], [`connect`], [`ClientBuilder`]) and what a server accepts ([`Policy`]) |
//! | routing | `router.rs`, `server.rs`, `integrations/` | [`Server`]: accept, TLS, route each connection by path to an [`Endpoint`] (task, callbacks, or an HTTP service), graceful shutdown; hyper/axum upgrades into either driver |
//! | fan-out | `hub.rs`, `sse.rs` | topics with encode-once fan-out to any [`hub::Subscriber`] (a task's sender, a callback connection's handle, a server-sent events stream, …), every queue bounded |
//! | clients | `reconnect.rs`, `sync.rs` | a client that reconnects with backoff; a blocking client |
//!
//! Features `hyper` and `axum`: accept upgrades from a hyper request ([`hyper`]) or with an
//! axum extractor ([`axum::WebSocketUpgrade`]), beside REST routes; service routes on a
//! [`Server`]. Feature `tls`: `wss://` servers and clients on rustls.

mod config;
mod core;
mod error;
mod handshake;
#[cfg(feature = "hyper")]
mod integrations;
mod io;
mod maybe_tls;
mod policy;
mod server;
mod task;

pub mod callback;
pub mod hub;
pub mod reconnect;
pub mod router;
#[cfg(feature = "hyper")]
pub mod sse;
pub mod sync;
#[cfg(feature = "tls")]
pub mod tls;

pub use config::{Config, Overflow, QueueLimits};
pub use core::Offer;
pub use error::{Error, Result, Timeout};
pub use handshake::{ClientBuilder, accept, accept_with_config, accept_with_policy, connect};
#[cfg(feature = "axum")]
pub use integrations::axum;
#[cfg(feature = "hyper")]
pub use integrations::hyper;
pub use maybe_tls::MaybeTlsStream;
pub use policy::{Policy, Reject, Subprotocol};
pub use router::{Endpoint, PeerAddr};
pub use server::{Refusal, Server, ServerStats};
pub use task::{CloseHandle, WebSocket, WsReceiver, WsSender};
pub use volley_proto::handshake::{HandshakeError, HeaderLimits, UpgradeResponse};
pub use volley_proto::{
    CloseCode, CloseFrame, DeflateConfig, DeflateParams, Message, PreparedMessage, ProtocolError,
    Role, SendError, State, Utf8Bytes,
};

/// The sans-IO protocol core, re-exported.
pub use volley_proto as proto;
