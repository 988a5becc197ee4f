//! Socket.IO protocol v5 server on [`volley_engineio`].
//!
//! - [`packet`]: the sans-IO Socket.IO packet codec (binary attachments with placeholders).
pub mod packet;
