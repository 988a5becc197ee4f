//! Limits and behaviour of a connection, with the defaults users of other stacks expect.

use crate::deflate::DeflateConfig;

/// Which end of the connection this endpoint is. It decides masking (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// The client: masks every frame it sends, rejects masked frames.
    Client,
    /// The server: never masks, rejects unmasked frames.
    Server,
}

/// Configuration of one connection.
///
/// Build it from [`ProtocolConfig::default`] with the by-value setters:
/// `ProtocolConfig::default().max_message_size(16 << 20)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProtocolConfig {
    /// Largest message accepted, in bytes, summed over its fragments. Default 1 MiB (1,048,576).
    /// A message that would cross it fails the connection with 1009 before its bytes are buffered.
    ///
    /// For a compressed message (permessage-deflate) the limit applies to the *inflated* size,
    /// checked while inflating: the connection fails the moment the output crosses it, so a
    /// decompression bomb never costs more than the limit plus 16 KiB. Its compressed size on the
    /// wire may exceed the limit by at most an eighth plus 1 KiB (DEFLATE's worst-case overhead on
    /// incompressible data is far below that).
    pub max_message_size: usize,
    /// Largest single frame accepted, in bytes. Default `None`: the max message size applies alone.
    pub max_frame_size: Option<usize>,
    /// Outgoing text and binary messages longer than this are split into frames of at most this
    /// many payload bytes. Default `None`: every message is sent as one frame. Compressed
    /// messages are compressed whole, then split.
    pub fragment_size: Option<usize>,
    /// permessage-deflate preferences, offered (client) or accepted (server) in the opening
    /// handshake. Default `None`: compression is off in both roles. Only the handshake reads it;
    /// a [`Connection`](crate::Connection) compresses when it is created with the negotiated
    /// parameters ([`Connection::with_deflate`](crate::Connection::with_deflate)), and then takes
    /// the threshold and level from here (or [`DeflateConfig::default`]).
    pub deflate: Option<DeflateConfig>,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            max_message_size: 1 << 20,
            max_frame_size: None,
            fragment_size: None,
            deflate: None,
        }
    }
}

impl ProtocolConfig {
    /// Sets [`ProtocolConfig::max_message_size`].
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Sets [`ProtocolConfig::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: Option<usize>) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`ProtocolConfig::fragment_size`]; `Some(0)` is treated as `Some(1)`.
    pub fn fragment_size(mut self, bytes: Option<usize>) -> Self {
        self.fragment_size = bytes.map(|b| b.max(1));
        self
    }

    /// Sets [`ProtocolConfig::deflate`]: `Some` enables permessage-deflate negotiation.
    pub fn deflate(mut self, deflate: Option<DeflateConfig>) -> Self {
        self.deflate = deflate;
        self
    }

    /// The frame size limit in force: the max frame size if set, else the max message size.
    pub fn effective_max_frame_size(&self) -> usize {
        self.max_frame_size
            .map_or(self.max_message_size, |f| f.min(self.max_message_size))
    }
}
