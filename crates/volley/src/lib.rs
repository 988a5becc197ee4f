//! Volley: a WebSocket server and client for tokio, on the sans-IO [`volley_proto`] core.
//!
//! - [`Server`] binds and runs a handler per connection; [`accept`] upgrades any transport.
//! - [`connect`] and [`ClientBuilder`] open client connections.
//! - [`WebSocket`] sends and receives [`Message`]s and [`split`](WebSocket::split)s into halves.
//! - [`events`]: connections run by callbacks on a few driver tasks instead of a task each
//!   (the lightest way to hold many idle connections), routed by [`Server::events`].
//! - [`hub::Hub`] fans messages out to topics of connections, each message encoded once.
//! - [`sync`] is a blocking client for scripts and tests; [`reconnect`] a client that reconnects
//!   with backoff and jitter and tells the application when to resubscribe.
//! - Features `hyper` and `axum`: accept upgrades from a hyper request (`volley::hyper`) or with
//!   an axum extractor (`volley::axum::WebSocketUpgrade`), beside REST routes.
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

mod config;
mod error;
pub mod events;
mod handshake;
pub mod hub;
#[cfg(feature = "hyper")]
mod integrations;
mod maybe_tls;
mod policy;
pub mod reconnect;
mod server;
mod stream;
pub mod sync;
#[cfg(feature = "tls")]
pub mod tls;

pub use config::Config;
pub use error::{Error, Result};
pub use handshake::{ClientBuilder, accept, accept_with_config, accept_with_policy, connect};
#[cfg(feature = "axum")]
pub use integrations::axum;
#[cfg(feature = "hyper")]
pub use integrations::hyper;
pub use maybe_tls::MaybeTlsStream;
pub use policy::{Policy, Reject, Subprotocol};
pub use server::Server;
pub use stream::{CloseHandle, WebSocket, WsReceiver, WsSender};
pub use volley_proto::handshake::{HandshakeError, HeaderLimits, UpgradeResponse};
pub use volley_proto::{
    CloseCode, CloseFrame, DeflateConfig, DeflateParams, Message, PreparedMessage, ProtocolError,
    Role, SendError, State, Utf8Bytes,
};

/// The sans-IO protocol core, re-exported.
pub use volley_proto as proto;
