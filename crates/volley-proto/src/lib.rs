//! Sans-IO core of the Volley WebSocket toolkit: RFC 6455 without sockets, runtimes or clocks.
//!
//! - [`handshake`]: the opening handshake in both roles.
//! - [`Connection`]: the state machine after the handshake. Feed it bytes with
//!   [`Connection::handle_read`], queue messages with [`Connection::send`], and after every input
//!   drain [`Connection::poll_event`] and [`Connection::poll_transmit`]. [`Connection::split`]
//!   separates it into a [`RecvHalf`] and a [`SendHalf`] for drivers that receive and send on
//!   different threads; the receive half hands what the sender must do (pongs, close frames) over
//!   as [`Reply`]s.
//! - [`deflate`]: permessage-deflate (RFC 7692) negotiation; a [`Connection`] created with the
//!   agreed [`DeflateParams`] compresses and inflates messages, applying the message size limit to
//!   the inflated size.
//! - [`PreparedMessage`]: a message encoded once, for [`Connection::send_prepared`] to many.
//! - [`frame`], [`mask`], [`utf8`]: the building blocks, public for tools and fuzzing.
//!
//! ```
//! use volley_proto::{ProtocolConfig, Connection, Message, Role};
//!
//! let mut server = Connection::new(Role::Server, ProtocolConfig::default());
//! let mut client = Connection::new(Role::Client, ProtocolConfig::default());
//! client.send(Message::text("hello")).unwrap();
//! while let Some(bytes) = client.poll_transmit() {
//!     server.handle_read(&bytes).unwrap();
//! }
//! assert_eq!(server.poll_event(), Some(Message::text("hello")));
//! ```

pub mod close;
pub mod config;
pub mod conn;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod message;
pub mod prepared;
pub mod utf8;

pub use close::{CloseCode, CloseFrame};
pub use config::{ProtocolConfig, Role};
pub use conn::{Connection, RecvHalf, Reply, SendHalf, State};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ProtocolError, SendError};
pub use message::{Message, Utf8Bytes};
pub use prepared::PreparedMessage;
