//! Server configuration: [`EngineConfig`], [`Transports`], [`Cors`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::session::RequestInfo;

/// Which transports the server accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transports {
    /// HTTP long-polling (`transport=polling`).
    pub polling: bool,
    /// WebSocket (`transport=websocket`).
    pub websocket: bool,
}

impl Default for Transports {
    fn default() -> Self {
        Self::ALL
    }
}

impl Transports {
    /// Both transports (the default).
    pub const ALL: Self = Self {
        polling: true,
        websocket: true,
    };
    /// Long-polling only.
    pub const POLLING: Self = Self {
        polling: true,
        websocket: false,
    };
    /// WebSocket only.
    pub const WEBSOCKET: Self = Self {
        polling: false,
        websocket: true,
    };
}

/// Which origins CORS allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowOrigin {
    /// Any origin (`*`, or the request's origin reflected when credentials are allowed).
    Any,
    /// Exactly these origins (e.g. `https://example.com`), reflected when they match.
    List(Vec<String>),
}

/// Cross-origin resource sharing for the long-polling requests (like the `cors` option of
/// Node's engine.io, which uses the `cors` package).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Cors {
    /// Allowed origins.
    pub origins: AllowOrigin,
    /// Send `Access-Control-Allow-Credentials: true`.
    pub credentials: bool,
    /// `Access-Control-Allow-Methods` of the preflight answer (default `GET`, `POST`).
    pub methods: Vec<String>,
    /// `Access-Control-Allow-Headers`; empty reflects the preflight's
    /// `Access-Control-Request-Headers`.
    pub headers: Vec<String>,
    /// `Access-Control-Max-Age` of the preflight answer, if any.
    pub max_age: Option<Duration>,
}

impl Default for Cors {
    fn default() -> Self {
        Self {
            origins: AllowOrigin::Any,
            credentials: false,
            methods: vec!["GET".into(), "POST".into()],
            headers: Vec::new(),
            max_age: None,
        }
    }
}

impl Cors {
    /// Any origin, without credentials.
    pub fn any() -> Self {
        Self::default()
    }

    /// Only these origins.
    pub fn origins<I, S>(origins: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            origins: AllowOrigin::List(origins.into_iter().map(Into::into).collect()),
            ..Self::default()
        }
    }

    /// Sets whether credentials are allowed.
    pub fn credentials(mut self, allow: bool) -> Self {
        self.credentials = allow;
        self
    }

    /// Sets the preflight's allowed methods.
    pub fn methods<I, S>(mut self, methods: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.methods = methods.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the preflight's allowed headers (empty: reflect the requested ones).
    pub fn headers<I, S>(mut self, headers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.headers = headers.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the preflight's max age.
    pub fn max_age(mut self, max_age: Option<Duration>) -> Self {
        self.max_age = max_age;
        self
    }
}

/// Decides whether a handshake request may open a session; `false` answers
/// 403 `{"code":4,"message":"Forbidden"}`.
pub type AllowRequest = Arc<dyn Fn(&RequestInfo) -> bool + Send + Sync>;

/// Engine.IO server settings; the defaults are Node engine.io's.
#[derive(Clone)]
#[non_exhaustive]
pub struct EngineConfig {
    /// How often the server pings (default 25 s).
    pub ping_interval: Duration,
    /// How long the client has to answer a ping with a pong (default 20 s).
    pub ping_timeout: Duration,
    /// How long an upgrade from polling to WebSocket may take, from the WebSocket handshake to
    /// the client's upgrade packet (default 10 s).
    pub upgrade_timeout: Duration,
    /// The largest long-polling request body and WebSocket message accepted, in bytes
    /// (`maxHttpBufferSize`, default 1 000 000).
    pub max_payload: usize,
    /// Which transports are allowed (both by default).
    pub transports: Transports,
    /// Whether polling sessions may upgrade to WebSocket (default true).
    pub allow_upgrades: bool,
    /// CORS for the long-polling requests; `None` (the default) sends no CORS headers and
    /// answers no preflight.
    pub cors: Option<Cors>,
    /// Called for every handshake request; `false` refuses it with 403.
    pub allow_request: Option<AllowRequest>,
    /// The most packets a session's outgoing queue may hold; over it the session is closed as a
    /// transport error (default 10 000).
    pub max_buffered_packets: usize,
    /// How many received messages a session buffers before the transport waits for
    /// [`Session::recv`](crate::Session::recv) (default 128).
    pub incoming_buffer: usize,
}

impl fmt::Debug for EngineConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EngineConfig")
            .field("ping_interval", &self.ping_interval)
            .field("ping_timeout", &self.ping_timeout)
            .field("upgrade_timeout", &self.upgrade_timeout)
            .field("max_payload", &self.max_payload)
            .field("transports", &self.transports)
            .field("allow_upgrades", &self.allow_upgrades)
            .field("cors", &self.cors)
            .field("allow_request", &self.allow_request.as_ref().map(|_| ".."))
            .field("max_buffered_packets", &self.max_buffered_packets)
            .field("incoming_buffer", &self.incoming_buffer)
            .finish()
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            ping_timeout: Duration::from_secs(20),
            upgrade_timeout: Duration::from_secs(10),
            max_payload: 1_000_000,
            transports: Transports::ALL,
            allow_upgrades: true,
            cors: None,
            allow_request: None,
            max_buffered_packets: 10_000,
            incoming_buffer: 128,
        }
    }
}

impl EngineConfig {
    /// Sets the ping interval.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval;
        self
    }

    /// Sets the ping timeout.
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.ping_timeout = timeout;
        self
    }

    /// Sets the upgrade timeout.
    pub fn upgrade_timeout(mut self, timeout: Duration) -> Self {
        self.upgrade_timeout = timeout;
        self
    }

    /// Sets the largest accepted payload (`maxHttpBufferSize`).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// Sets the allowed transports.
    pub fn transports(mut self, transports: Transports) -> Self {
        self.transports = transports;
        self
    }

    /// Sets whether upgrades from polling to WebSocket are allowed.
    pub fn allow_upgrades(mut self, allow: bool) -> Self {
        self.allow_upgrades = allow;
        self
    }

    /// Sets the CORS options.
    pub fn cors(mut self, cors: Option<Cors>) -> Self {
        self.cors = cors;
        self
    }

    /// Sets the hook that accepts or refuses handshake requests.
    pub fn allow_request(
        mut self,
        hook: impl Fn(&RequestInfo) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.allow_request = Some(Arc::new(hook));
        self
    }

    /// Sets the bound of each session's outgoing queue, in packets (at least 1).
    pub fn max_buffered_packets(mut self, packets: usize) -> Self {
        self.max_buffered_packets = packets.max(1);
        self
    }

    /// Sets how many received messages a session buffers (at least 1).
    pub fn incoming_buffer(mut self, messages: usize) -> Self {
        self.incoming_buffer = messages.max(1);
        self
    }
}
