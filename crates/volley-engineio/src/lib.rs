//! Engine.IO protocol v4 (`EIO=4`) server: the transport layer under Socket.IO.
//!
//! - [`packet`]: the sans-IO packet and long-polling payload codec.
pub mod packet;
