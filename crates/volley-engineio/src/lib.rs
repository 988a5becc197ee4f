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
//! The wire behaviour is Node's engine.io 6.6 (socket.io 4.8.4), checked answer by answer against
//! Node's own server: `e2e/node/sio_raw_parity.js` sends the same raw long-polling requests and
//! WebSocket frames to both and volley-socketio's `tests/node_wire.rs` asserts identical
//! transcripts (handshakes, errors and their order of checks, upgrades, a second WebSocket for a
//! session, closes from either side, malformed and out-of-place packets, payload limits). What
//! still differs:
//! - a close packet from a long-polling client closes the session with
//!   [`CloseReason::ClientClose`] (`"forced close"`); Node reports `"transport close"`;
//! - upgrade timing: a GET that waits when the upgrade is probed is answered the noop at once
//!   (Node: at its next 100 ms upgrade check). A GET that arrives while the upgrade is probed is
//!   answered the noop after 100 ms, or 400 "Bad request" if the upgrade completes first; Node
//!   answers 400 if it read the client's upgrade packet before that GET and the close packet `1`
//!   if after — Volley reads them on different connections and cannot tell, and no client polls
//!   after sending its upgrade packet;
//! - [`EngineConfig::allow_upgrades`]`(false)` refuses upgrade requests (400 "Bad request");
//!   Node's `allowUpgrades: false` only leaves `websocket` out of the open packet and still
//!   upgrades a client that tries;
//! - a WebSocket with the sid of a session that is on WebSocket from its handshake is accepted
//!   and closed at once (as for an upgraded session); Node probes it as an upgrade to a second
//!   WebSocket;
//! - a plain GET with `transport=websocket` and the sid of a WebSocket session is answered 400
//!   "Bad request"; Node never answers it;
//! - a long-polling session closed by the server whose close packet waits for a GET refuses
//!   upgrade requests (400 "Bad request"); Node takes them (and ends the session once upgraded);
//! - [`Engine::close_all`] (server shutdown) gives a long-polling session without a waiting GET
//!   its close packet in its next GET; Node drops such sessions at once (the next GET gets 400
//!   "Session ID unknown");
//! - a pong without an outstanding ping is ignored; Node restarts its ping interval on it;
//! - long-polling answers are never compressed (Node gzips or deflates those of 1 KiB or more
//!   when the client accepts it: `httpCompression`); JSONP polling and protocol v3
//!   (`allowEIO3`) are not supported; `b64` is ignored (v4 polling always carries binary as
//!   base64; Node also sends binary as base64 text frames over a WebSocket opened with `b64`).
//!
//! Writes are batched: a long-polling GET answers everything queued, a WebSocket writes what
//! is queued in one write. [`SessionSender::send_all_and_flush`] ends a write after its messages
//! (Socket.IO's CONNECT reply), as Node writes a packet at once when its transport is idle.
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
pub use packet::{Data, Packet, PacketError, SharedData};
pub use session::{
    CloseReason, Handler, RequestInfo, SendError, Session, SessionEvents, SessionSender,
    TransportKind,
};
