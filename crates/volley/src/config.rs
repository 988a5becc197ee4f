//! Connection configuration for servers and clients.

use std::time::Duration;

use volley_proto::handshake::HeaderLimits;

/// Configuration of a WebSocket endpoint, server or client.
///
/// Start from [`Config::default`] and change what you need with the by-value setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Frame and message limits and outgoing fragmentation (see [`volley_proto::Config`]): max
    /// message size 1 MiB, no separate frame limit, no fragmentation.
    pub protocol: volley_proto::Config,
    /// Limits on the HTTP header block of the opening handshake: 8 KiB, 128 headers.
    pub headers: HeaderLimits,
    /// How long the opening handshake may take, from accept (or connect) to the 101. Default 10 s.
    pub open_timeout: Duration,
    /// How long to wait for the peer's side of the close handshake (its close frame, and for a
    /// client the server's TCP close) after sending ours. Default 10 s.
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            protocol: volley_proto::Config::default(),
            headers: HeaderLimits::default(),
            open_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// Sets the largest message accepted, in bytes (default 1 MiB).
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.protocol = self.protocol.max_message_size(bytes);
        self
    }

    /// Sets the largest frame accepted, in bytes (default: the max message size).
    pub fn max_frame_size(mut self, bytes: Option<usize>) -> Self {
        self.protocol = self.protocol.max_frame_size(bytes);
        self
    }

    /// Sets the payload size above which outgoing messages are fragmented (default: never).
    pub fn fragment_size(mut self, bytes: Option<usize>) -> Self {
        self.protocol = self.protocol.fragment_size(bytes);
        self
    }

    /// Sets the header block limits of the opening handshake.
    pub fn headers(mut self, limits: HeaderLimits) -> Self {
        self.headers = limits;
        self
    }

    /// Sets [`Config::open_timeout`].
    pub fn open_timeout(mut self, timeout: Duration) -> Self {
        self.open_timeout = timeout;
        self
    }

    /// Sets [`Config::close_timeout`].
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }
}
