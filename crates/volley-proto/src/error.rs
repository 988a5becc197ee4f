//! Errors of the protocol core, each knowing how it must be reported to the peer.

use crate::close::CloseCode;

/// A violation of RFC 6455 by the peer, or a configured limit that its data crossed.
///
/// Every variant maps to the close code the connection is failed with ([`ProtocolError::close_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// A client sent a frame without a masking key (RFC 6455 §5.1).
    #[error("client frame was not masked")]
    UnmaskedFrame,
    /// A server sent a masked frame (RFC 6455 §5.1).
    #[error("server frame was masked")]
    MaskedFrame,
    /// RSV1, RSV2 or RSV3 was set without an extension that defines it.
    #[error("reserved bits {0:#05b} set without a negotiated extension")]
    ReservedBits(u8),
    /// The frame used an opcode that RFC 6455 reserves (3–7, 0xB–0xF).
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// A 64-bit payload length had its most significant bit set.
    #[error("payload length has its most significant bit set")]
    InvalidLength,
    /// A control frame carried more than 125 bytes of payload.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(u64),
    /// A control frame had FIN clear.
    #[error("control frame was fragmented")]
    FragmentedControlFrame,
    /// A continuation frame arrived while no fragmented message was in progress.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame arrived while a fragmented message was still open.
    #[error("new data frame while a fragmented message is in progress")]
    ExpectedContinuation,
    /// A single frame was larger than the configured maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum frame size of {max} bytes")]
    FrameTooLarge {
        /// The frame's declared payload length.
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A message grew beyond the configured maximum message size.
    #[error("message of at least {size} bytes exceeds the maximum message size of {max} bytes")]
    MessageTooLarge {
        /// The size the message reached (at least).
        size: u64,
        /// The configured limit.
        max: usize,
    },
    /// A text message (or a close reason) was not valid UTF-8.
    #[error("invalid UTF-8 in a text message")]
    InvalidUtf8,
    /// A close frame carried a one-byte payload.
    #[error("close frame with a one-byte payload")]
    InvalidClosePayload,
    /// A close frame carried a status code that may not be sent on the wire.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A close frame's reason was not valid UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidCloseReason,
    /// With permessage-deflate, RSV1 was set on a continuation frame: only the first frame of a
    /// compressed message carries it (RFC 7692 §6.1).
    #[error("RSV1 set on a continuation frame")]
    CompressedContinuation,
    /// With permessage-deflate, RSV1 was set on a control frame: control frames are never
    /// compressed (RFC 7692 §6.1).
    #[error("RSV1 set on a control frame")]
    CompressedControlFrame,
    /// A compressed message was not valid DEFLATE data (or referred to data outside the window).
    #[error("compressed message is not valid DEFLATE data")]
    InvalidCompressedData,
}

impl ProtocolError {
    /// The close code the connection is failed with for this error.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::InvalidUtf8 | Self::InvalidCloseReason | Self::InvalidCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            Self::FrameTooLarge { .. } | Self::MessageTooLarge { .. } => CloseCode::MESSAGE_TOO_BIG,
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }
}

/// Why a message could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// A close frame was already sent (or the connection failed): RFC 6455 forbids further data.
    #[error("the connection is closing or closed")]
    Closed,
    /// A ping, pong or close payload was longer than 125 bytes.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlFrameTooLong(usize),
    /// The close code may not be sent on the wire (1005, 1006, 1015, or outside the allowed ranges).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
    /// The compressor failed on the message (zlib rejected its own state; not expected to happen).
    /// Nothing was queued, but with context takeover the connection cannot compress again: close it.
    #[error("compressing the message failed")]
    Compression,
}
