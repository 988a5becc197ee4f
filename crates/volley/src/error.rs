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
    /// A timeout elapsed: the opening handshake (`open_timeout`) or the close handshake (`close_timeout`).
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl From<Error> for std::io::Error {
    fn from(err: Error) -> Self {
        use std::io::ErrorKind;
        match err {
            Error::Io(e) => e,
            Error::AbnormalClose => Self::new(ErrorKind::UnexpectedEof, err),
            Error::Timeout(_) | Error::KeepaliveTimeout => Self::new(ErrorKind::TimedOut, err),
            Error::Send(_) => Self::new(ErrorKind::BrokenPipe, err),
            other => Self::new(ErrorKind::InvalidData, other),
        }
    }
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
