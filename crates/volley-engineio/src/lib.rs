//! Engine.IO protocol v4 (`EIO=4`) server: the transport layer under Socket.IO, speaking to
//! `engine.io-client` / `socket.io-client` 4.x and python-engineio 4.x as Node's `engine.io` 6.x
//! does.
//!
//! - [`packet`]: the sans-IO packet and long-polling payload codec.
//! - [`Engine`]: the server. It serves HTTP long-polling (GET/POST), the WebSocket transport
//!   (through volley's hyper integration), the upgrade from polling to WebSocket, the
//!   server-sent heartbeat, CORS and Node's error answers. Mount it in hyper with
//!   [`Engine::handle`] or as a tower service (axum: `nest_service("/socket.io", engine)`).
//! - [`Session`] / [`SessionSender`]: one Engine.IO connection, receiving and sending.
//!
//! Where this crate's behaviour differs from Node's engine.io 6.6 (checked side by side):
//! - a close packet from the client closes the session with [`CloseReason::ClientClose`]
//!   (`"forced close"`); Node reports `"transport close"`;
//! - a long-polling POST over `max_payload` is answered 413 *and* closes the session as a
//!   transport error (Node answers 413 and leaves the session to time out);
//! - JSONP polling and protocol v3 (`allowEIO3`) are not supported; `b64` is ignored (v4 polling
//!   always carries binary as base64).
//!
//! As in Node, a session closed by the server (or by a heartbeat timeout or an error) gets the
//! close packet `1` only over long-polling; over WebSocket the connection is just closed (a close
//! frame without a status code, as Node's `ws` sends), which clients see as a transport close and
//! answer by reconnecting (python-engineio takes a `1` as a deliberate disconnect and would not).
//!
//! ```no_run
//! use volley_engineio::{Engine, EngineConfig, Data};
//!
//! let engine = Engine::new(EngineConfig::default(), |mut session| {
//!     tokio::spawn(async move {
//!         let sender = session.sender();
//!         while let Some(data) = session.recv().await {
//!             // Echo every message.
//!             if sender.send(data).is_err() {
//!                 break;
//!             }
//!         }
//!         println!("closed: {:?}", session.close_reason());
//!     });
//! });
//! # let _ = engine;
//! ```

mod config;
mod engine;
pub mod packet;
mod session;

pub use config::{AllowOrigin, AllowRequest, Cors, EngineConfig, Transports};
pub use engine::{Engine, EngineBody};
pub use packet::{Data, Packet, PacketError};
pub use session::{CloseReason, RequestInfo, SendError, Session, SessionSender, TransportKind};
