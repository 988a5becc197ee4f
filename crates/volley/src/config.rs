//! Connection configuration for servers and clients.

use std::time::Duration;

use volley_proto::CloseCode;
use volley_proto::handshake::HeaderLimits;

/// Configuration of a WebSocket endpoint, server or client.
///
/// Start from [`Config::default`] and change what you need with the by-value setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Frame and message limits, outgoing fragmentation and permessage-deflate (see
    /// [`volley_proto::ProtocolConfig`]): max message size 1 MiB, no separate frame limit, no
    /// fragmentation, compression off (enable it with [`Config::deflate`]).
    pub protocol: volley_proto::ProtocolConfig,
    /// Limits on the HTTP header block of the opening handshake: 8 KiB, 128 headers.
    pub headers: HeaderLimits,
    /// How long the opening handshake may take, from accept (or connect) to the 101. Default 10 s.
    /// On a [`Server`](crate::Server), it also bounds each HTTP request head of a service
    /// route, and the idle time of an HTTP keep-alive connection between two requests.
    pub open_timeout: Duration,
    /// How long to wait for the peer's side of the close handshake (its close frame, and for a
    /// client the server's TCP close) after sending ours. Default 10 s.
    pub close_timeout: Duration,
    /// How often to ping the peer. Default 20 s; `None` disables keep-alive. Pings go out on
    /// schedule whatever other traffic there is (the next one an interval after the previous,
    /// once it was answered). A task's connection runs its timers while a `recv` is pending;
    /// a callback connection's driver runs them always.
    pub ping_interval: Option<Duration>,
    /// How long a keep-alive ping may wait for its pong before the connection is failed with
    /// 1011 and `recv` returns [`Error::KeepaliveTimeout`](crate::Error::KeepaliveTimeout).
    /// Default 20 s; `None` never gives up.
    pub ping_timeout: Option<Duration>,
    /// Close the connection (1000, "idle timeout") when nothing at all was received for this
    /// long. Default `None`.
    pub idle_timeout: Option<Duration>,
    /// Bytes of outgoing frames that [`WsSender::feed`](crate::WsSender::feed) may leave queued
    /// before it waits for the transport (the high-water mark of Python websockets'
    /// `write_limit`). Default 32 KiB. `send` always waits until its message is written; replies
    /// the receiver queues (pongs, close echoes) beyond this make `recv` wait for the transport
    /// too, so a peer that floods pings without reading cannot grow memory. A callback
    /// connection with more than this waiting is not read until it drains, and messages its
    /// callbacks and handles send beyond it wait in its send queue ([`Config::send_queue`]).
    pub write_limit: usize,
    /// Bounds of what callbacks and [`ConnHandle`](crate::callback::ConnHandle)s may queue for a
    /// connection served by [callbacks](crate::callback), which cannot wait for room: 1 MiB,
    /// and past that [`Overflow::Close`] with 1013 (try again later). A task's
    /// [`WebSocket::send`](crate::WebSocket::send) waits instead.
    pub send_queue: QueueLimits,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            protocol: volley_proto::ProtocolConfig::default(),
            headers: HeaderLimits::default(),
            open_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(10),
            ping_interval: Some(Duration::from_secs(20)),
            ping_timeout: Some(Duration::from_secs(20)),
            idle_timeout: None,
            write_limit: 32 * 1024,
            send_queue: QueueLimits::default().max_messages(usize::MAX),
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

    /// Enables permessage-deflate (RFC 7692) with `deflate`'s preferences, or disables it with
    /// `None` (the default, for servers and clients alike).
    ///
    /// A server then accepts the first acceptable offer of each client; a client offers it and
    /// fails the connection on an invalid answer. Messages of at least
    /// [`DeflateConfig::threshold`](volley_proto::DeflateConfig::threshold) bytes are sent
    /// compressed, and the max message size applies to the inflated size of received ones.
    /// Memory: with context takeover (the default) a connection that compressed and inflated keeps
    /// about 325 KiB of zlib state (measured: 366 KiB per connection against 39 KiB without
    /// compression); `DeflateConfig::default().no_context_takeover(true)` frees it after every
    /// message (see `docs/DEFLATE.md`).
    pub fn deflate(mut self, deflate: Option<volley_proto::DeflateConfig>) -> Self {
        self.protocol = self.protocol.deflate(deflate);
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

    /// Sets [`Config::ping_interval`].
    pub fn ping_interval(mut self, interval: Option<Duration>) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets [`Config::ping_timeout`].
    pub fn ping_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Sets [`Config::idle_timeout`].
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Sets [`Config::write_limit`].
    pub fn write_limit(mut self, bytes: usize) -> Self {
        self.write_limit = bytes;
        self
    }

    /// Sets [`Config::send_queue`].
    pub fn send_queue(mut self, limits: QueueLimits) -> Self {
        self.send_queue = limits;
        self
    }
}

/// What happens to a message queued for a connection whose queue is full. Nothing waits for
/// room: a slow reader never slows the sender, and its memory stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Overflow {
    /// The new message is not queued (the sender learns it; hubs count it as dropped).
    DropNewest,
    /// The oldest messages not yet handed to the protocol are discarded to make room (counted).
    /// Suits feeds where the latest value matters most: prices, positions, dashboards.
    DropOldest,
    /// The slow consumer is closed: its waiting messages are discarded (counted) and it gets a
    /// close frame with [`QueueLimits::slow_close_code`] (default 1013, try again later) after
    /// the bytes already being written. No message is lost silently, and the client learns
    /// that it fell behind.
    Close,
}

/// Bounds of a queue of messages waiting for one connection, and what to do when it is full.
///
/// Start from [`QueueLimits::default`] and change what you need with the by-value setters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueLimits {
    /// What to do with a message that does not fit. Default [`Overflow::Close`].
    pub overflow: Overflow,
    /// Most bytes waiting (frames as they go on the wire, counting what is already queued for
    /// writing). Default 1 MiB. A larger message is still accepted when nothing waits.
    pub max_bytes: usize,
    /// Most messages waiting. Default 256. At least 1.
    pub max_messages: usize,
    /// The close code of a consumer closed for slowness ([`Overflow::Close`]). Default 1013
    /// (try again later); 1008 (policy violation) is the other usual choice. A code that may not
    /// be sent ([`CloseCode::is_sendable`]) is replaced by 1013.
    pub slow_close_code: CloseCode,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            overflow: Overflow::Close,
            max_bytes: 1 << 20,
            max_messages: 256,
            slow_close_code: CloseCode::TRY_AGAIN_LATER,
        }
    }
}

impl QueueLimits {
    /// Sets [`QueueLimits::overflow`].
    pub fn overflow(mut self, overflow: Overflow) -> Self {
        self.overflow = overflow;
        self
    }

    /// Sets [`QueueLimits::max_bytes`].
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`QueueLimits::max_messages`]; 0 is treated as 1.
    pub fn max_messages(mut self, messages: usize) -> Self {
        self.max_messages = messages.max(1);
        self
    }

    /// Sets [`QueueLimits::slow_close_code`].
    pub fn slow_close_code(mut self, code: CloseCode) -> Self {
        self.slow_close_code = code;
        self
    }

    /// The close frame a consumer closed for slowness gets.
    pub(crate) fn slow_close_frame(&self) -> volley_proto::CloseFrame {
        let code = if self.slow_close_code.is_sendable() {
            self.slow_close_code
        } else {
            CloseCode::TRY_AGAIN_LATER
        };
        volley_proto::CloseFrame::new(code, "slow consumer: send queue full")
    }
}
