//! The runtime layer's error type.

use volley_proto::handshake::HandshakeError;
use volley_proto::{ProtocolError, SendError};

/// Everything that can go wrong on a WebSocket connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The transport failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer violated RFC 6455 or crossed a limit; the connection was failed with
    /// [`ProtocolError::close_code`].
    #[error("protocol error: {0}")]
    Protocol(#[from] ProtocolError),
    /// The opening handshake failed.
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// A message could not be sent (the connection is closing, or the frame was invalid).
    #[error("cannot send: {0}")]
    Send(#[from] SendError),
    /// The transport closed without a close frame (close code 1006).
    #[error("connection closed without a close frame (1006)")]
    AbnormalClose,
    /// A TLS configuration could not be built.
    #[cfg(feature = "tls")]
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The server's handshake policy refused the request (origin, authentication, shutdown);
    /// the client was answered with this status.
    #[error("handshake refused with HTTP {0}")]
    Rejected(http::StatusCode),
    /// The peer did not answer a keep-alive ping within `ping_timeout`; the connection was
    /// failed with close code 1011.
    #[error("keep-alive ping timed out (no pong within the ping timeout); closed with 1011")]
    KeepaliveTimeout,
    /// A timeout elapsed; which one says what took too long.
    #[error("{0} timed out")]
    Timeout(Timeout),
    /// A message was not queued: the connection's send queue was full (its
    /// [`Overflow`](crate::Overflow) policy dropped it, or closed the slow consumer with 1013).
    #[error("send queue full ({limit} bytes, policy {overflow:?}): the peer reads too slowly")]
    QueueFull {
        /// The queue's byte limit.
        limit: usize,
        /// The policy that applied.
        overflow: crate::Overflow,
    },
}

/// Which timeout elapsed, in an [`Error::Timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Timeout {
    /// Connecting over TCP (and TLS) took longer than `open_timeout`.
    Connect,
    /// The opening handshake took longer than `open_timeout`.
    Open,
    /// The close handshake took longer than `close_timeout`.
    Close,
    /// hyper did not hand an accepted upgrade over within `open_timeout`.
    Upgrade,
    /// A server's graceful shutdown ended the connection at its drain deadline.
    Drain,
    /// A blocking client's `recv_timeout` passed without a message.
    Recv,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Connect => "connecting",
            Self::Open => "the opening handshake",
            Self::Close => "the close handshake",
            Self::Upgrade => "the hyper upgrade",
            Self::Drain => "the shutdown drain",
            Self::Recv => "receiving",
        })
    }
}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        use std::io::ErrorKind;
        match err {
            Error::Io(e) => e,
            Error::AbnormalClose => Self::new(ErrorKind::UnexpectedEof, err),
            Error::Timeout(_) | Error::KeepaliveTimeout => Self::new(ErrorKind::TimedOut, err),
            Error::Send(_) => Self::new(ErrorKind::BrokenPipe, err),
            Error::QueueFull { .. } => Self::new(ErrorKind::WouldBlock, err),
            other => Self::new(ErrorKind::InvalidData, other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
