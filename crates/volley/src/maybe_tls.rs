//! A TCP stream that may be wrapped in TLS, so plain and secure connections share one type.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A transport that is either plain TCP or TLS over TCP: what [`Server`](crate::Server) handlers
/// and [`connect`](crate::connect) give you.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaybeTlsStream {
    /// Plain TCP (`ws://`).
    Plain(TcpStream),
    /// TLS server side (`wss://` accepted by a server).
    #[cfg(feature = "tls")]
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS client side (`wss://` connected by a client).
    #[cfg(feature = "tls")]
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A connection a [`Server`](crate::Server) upgraded through hyper: a WebSocket request
    /// that arrived on an HTTP connection (its first request went to a service route).
    #[cfg(feature = "hyper")]
    Upgraded(Box<crate::hyper::UpgradedIo>),
}

impl MaybeTlsStream {
    /// The underlying TCP stream (`None` for an upgraded connection, whose transport hyper
    /// owns).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Self::Plain(s) => Some(s),
            #[cfg(feature = "tls")]
            Self::ServerTls(s) => Some(s.get_ref().0),
            #[cfg(feature = "tls")]
            Self::ClientTls(s) => Some(s.get_ref().0),
            #[cfg(feature = "hyper")]
            Self::Upgraded(_) => None,
        }
    }

    /// Whether the stream is encrypted (for an upgraded connection: unknown here, `false`).
    pub fn is_tls(&self) -> bool {
        match self {
            Self::Plain(_) => false,
            #[cfg(feature = "tls")]
            Self::ServerTls(_) | Self::ClientTls(_) => true,
            #[cfg(feature = "hyper")]
            Self::Upgraded(_) => false,
        }
    }

    /// Wraps a connection upgraded through hyper.
    #[cfg(feature = "hyper")]
    pub(crate) fn upgraded(io: crate::hyper::UpgradedIo) -> Self {
        Self::Upgraded(Box::new(io))
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            MaybeTlsStream::Plain($s) => $e,
            #[cfg(feature = "tls")]
            MaybeTlsStream::ServerTls($s) => $e,
            #[cfg(feature = "tls")]
            MaybeTlsStream::ClientTls($s) => $e,
            #[cfg(feature = "hyper")]
            MaybeTlsStream::Upgraded($s) => $e,
        }
    };
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::ServerTls(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Self::ClientTls(s) => s.is_write_vectored(),
            #[cfg(feature = "hyper")]
            Self::Upgraded(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}
