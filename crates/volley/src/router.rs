//! Routing: which endpoint serves a request, by its path, with one rule for every kind of
//! endpoint.
//!
//! A route binds a path pattern to an [`Endpoint`]: a task per connection
//! ([`Endpoint::task`]), callbacks on shared drivers ([`Endpoint::callbacks`]), or an HTTP
//! service ([`Endpoint::service`], feature `hyper`: Socket.IO, REST, pages). Patterns:
//!
//! - `"/chat"` matches exactly that path;
//! - `"/socket.io/*"` matches `/socket.io`, `/socket.io/` and everything under it;
//! - `"/*"` matches every path.
//!
//! An exact pattern wins over a prefix; among prefixes the longest wins. A path no route
//! matches is answered `404 Not Found` with a short plain-text body. The query string plays no
//! part.
//!
//! A connection is routed by its first request: a WebSocket route gets the opening handshake
//! (over TLS if the server has it); a service route gets an HTTP/1.1 connection (keep-alive,
//! upgrades) whose every request is routed again, so that a page, its event stream and its
//! API share connections, and a WebSocket upgrade on such a connection still reaches its
//! route. Every endpoint can learn the peer's address: [`PeerAddr`] in the request's
//! extensions, [`Conn::peer_addr`](crate::callback::Conn::peer_addr) for callbacks.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::Request;

use crate::callback::{Callbacks, Drivers};
use crate::config::Config;
use crate::maybe_tls::MaybeTlsStream;
use crate::task::WebSocket;

/// The peer's address, in the extensions of every request a [`Server`](crate::Server) hands to
/// an endpoint (a task handler's request, a service's requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

type TaskFuture = Pin<Box<dyn Future<Output = ()> + Send>>;
pub(crate) type TaskFn = dyn Fn(WebSocket<MaybeTlsStream>, Request<()>) -> TaskFuture + Send + Sync;

/// What serves the requests of a route.
pub struct Endpoint {
    kind: Kind,
    /// Where the route's requests that are not WebSocket upgrades go ([`Endpoint::or_http`]).
    #[cfg(feature = "hyper")]
    http: Option<crate::integrations::service::Service>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.kind {
            Kind::Task(_) => "task",
            Kind::Callbacks(_) => "callbacks",
            Kind::Drivers(_) => "drivers",
            #[cfg(feature = "hyper")]
            Kind::Service(_) => "service",
        };
        f.debug_struct("Endpoint").field("kind", &kind).finish()
    }
}

enum Kind {
    Task(Arc<TaskFn>),
    /// Callbacks whose drivers the server starts with its own configuration.
    Callbacks(Arc<dyn Callbacks>),
    Drivers(Drivers),
    #[cfg(feature = "hyper")]
    Service(crate::integrations::service::Service),
}

impl Endpoint {
    /// WebSocket connections, each served by `handler` in a task of its own with the
    /// connection and the opening handshake's request (its extensions hold the
    /// [`PeerAddr`], the [`Subprotocol`](crate::Subprotocol) and what the auth hook added).
    pub fn task<F, Fut>(handler: F) -> Self
    where
        F: Fn(WebSocket<MaybeTlsStream>, Request<()>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let handler = move |ws, request| Box::pin(handler(ws, request)) as TaskFuture;
        Self::of(Kind::Task(Arc::new(handler)))
    }

    /// WebSocket connections served by `callbacks` on shared drivers (see
    /// [`callback`](crate::callback)), with the server's configuration.
    pub fn callbacks(callbacks: impl Callbacks) -> Self {
        Self::of(Kind::Callbacks(Arc::new(callbacks)))
    }

    /// WebSocket connections served by `drivers` (with their own configuration): to share one
    /// set of callbacks and drivers between routes, or with an axum router.
    pub fn drivers(drivers: Drivers) -> Self {
        Self::of(Kind::Drivers(drivers))
    }

    /// HTTP requests served by `service` (feature `hyper`): Socket.IO's `handle`, a REST API,
    /// a page. It may accept WebSocket upgrades itself ([`volley::hyper`](crate::hyper)).
    #[cfg(feature = "hyper")]
    pub fn service<F, Fut, B>(service: F) -> Self
    where
        F: Fn(Request<::hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<B>> + Send + 'static,
        B: ::hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        Self::of(Kind::Service(crate::integrations::service::Service::new(
            service,
        )))
    }

    /// This endpoint for WebSocket upgrades, and `service` (feature `hyper`) for the route's
    /// other HTTP requests: a page at `/` for browsers, while WebSocket clients connecting to
    /// `/` still reach their endpoint. A request is an upgrade if it has an `Upgrade` header
    /// naming `websocket`; the first request of a connection is told apart before it is
    /// accepted, so a WebSocket connection costs no more than on a route without `or_http`.
    #[cfg(feature = "hyper")]
    pub fn or_http<F, Fut, B>(mut self, service: F) -> Self
    where
        F: Fn(Request<::hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = http::Response<B>> + Send + 'static,
        B: ::hyper::body::Body<Data = bytes::Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.http = Some(crate::integrations::service::Service::new(service));
        self
    }

    fn of(kind: Kind) -> Self {
        Self {
            kind,
            #[cfg(feature = "hyper")]
            http: None,
        }
    }
}

/// A route's endpoint, ready to serve (callbacks have their drivers).
#[derive(Clone)]
pub(crate) enum Target {
    Task(Arc<TaskFn>),
    Callbacks(Drivers),
    #[cfg(feature = "hyper")]
    Service(crate::integrations::service::Service),
}

/// How a pattern matches paths.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// The path with the `*` removed (ends with `/`); also matches the path without its
    /// trailing slash.
    Prefix(String),
}

impl Pattern {
    /// Parses a route pattern.
    ///
    /// # Panics
    /// If `pattern` does not start with `/`, or has a `*` anywhere but as a last segment of
    /// its own (`/a/*`): a programming error, like a malformed route in axum.
    fn parse(pattern: &str) -> Self {
        assert!(
            pattern.starts_with('/'),
            "route pattern {pattern:?} must start with '/'"
        );
        match pattern.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') && !prefix.contains('*') => {
                Self::Prefix(prefix.to_owned())
            }
            _ if pattern.contains('*') => {
                panic!("route pattern {pattern:?}: '*' may only end the pattern, as in \"/a/*\"")
            }
            _ => Self::Exact(pattern.to_owned()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(p) => p == path,
            Self::Prefix(p) => path.starts_with(p.as_str()) || path == &p[..p.len() - 1],
        }
    }
}

/// A route's endpoint, ready to serve, with the service of its other HTTP requests if it has
/// one ([`Endpoint::or_http`]).
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) target: Target,
    #[cfg(feature = "hyper")]
    pub(crate) http: Option<crate::integrations::service::Service>,
}

/// Routes being set up on a [`Server`](crate::Server).
#[derive(Default)]
pub(crate) struct Routes {
    routes: Vec<(Pattern, Endpoint)>,
}

impl Routes {
    /// Adds a route; a pattern added twice keeps its last endpoint.
    pub(crate) fn add(&mut self, pattern: &str, endpoint: Endpoint) {
        let pattern = Pattern::parse(pattern);
        self.routes.retain(|(p, _)| *p != pattern);
        self.routes.push((pattern, endpoint));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The router, with drivers started for callbacks (sharing `config`).
    pub(crate) fn build(self, config: &Arc<Config>) -> Router {
        let mut routes: Vec<(Pattern, Routed)> = (self.routes.into_iter())
            .map(|(pattern, endpoint)| {
                let target = match endpoint.kind {
                    Kind::Task(handler) => Target::Task(handler),
                    Kind::Callbacks(callbacks) => {
                        Target::Callbacks(Drivers::shared(callbacks, config.clone()))
                    }
                    Kind::Drivers(drivers) => Target::Callbacks(drivers),
                    #[cfg(feature = "hyper")]
                    Kind::Service(service) => Target::Service(service),
                };
                let routed = Routed {
                    target,
                    #[cfg(feature = "hyper")]
                    http: endpoint.http,
                };
                (pattern, routed)
            })
            .collect();
        // Exact patterns first, then prefixes, longest first: the first match wins.
        routes.sort_by_key(|(pattern, _)| match pattern {
            Pattern::Exact(_) => (0, 0),
            Pattern::Prefix(prefix) => (1, usize::MAX - prefix.len()),
        });
        Router { routes }
    }
}

/// The routes of a running server, in matching order.
pub(crate) struct Router {
    routes: Vec<(Pattern, Routed)>,
}

impl Router {
    /// The endpoint serving `path`.
    pub(crate) fn find(&self, path: &str) -> Option<&Routed> {
        self.route(path).map(|(_, routed)| routed)
    }

    fn route(&self, path: &str) -> Option<&(Pattern, Routed)> {
        self.routes
            .iter()
            .find(|(pattern, _)| pattern.matches(path))
    }

    /// Every callbacks endpoint's drivers (for shutdown).
    pub(crate) fn drivers(&self) -> impl Iterator<Item = &Drivers> {
        self.routes
            .iter()
            .filter_map(|(_, routed)| match &routed.target {
                Target::Callbacks(drivers) => Some(drivers),
                _ => None,
            })
    }
}

/// The answer to a request no route matches.
pub(crate) fn not_found_body(path: &str) -> String {
    let mut shown: String = path.chars().take(200).collect();
    if shown.len() < path.len() {
        shown.push('…');
    }
    format!("404 Not Found: no route for {shown}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(patterns: &[&str]) -> Router {
        let mut routes = Routes::default();
        for p in patterns {
            routes.add(p, Endpoint::task(|_, _| async {}));
        }
        routes.build(&Arc::new(Config::default()))
    }

    /// The pattern of the route that serves `path`.
    fn which(router: &Router, path: &str) -> Option<String> {
        router.route(path).map(|(pattern, _)| match pattern {
            Pattern::Exact(p) => p.clone(),
            Pattern::Prefix(p) => format!("{p}*"),
        })
    }

    #[test]
    fn exact_beats_prefix_and_the_longest_prefix_wins() {
        let patterns = ["/*", "/chat", "/socket.io/*", "/socket.io/admin/*"];
        let r = router(&patterns);
        assert_eq!(which(&r, "/chat").as_deref(), Some("/chat"));
        assert_eq!(which(&r, "/chat/x").as_deref(), Some("/*"));
        assert_eq!(which(&r, "/socket.io/").as_deref(), Some("/socket.io/*"));
        assert_eq!(which(&r, "/socket.io").as_deref(), Some("/socket.io/*"));
        assert_eq!(
            which(&r, "/socket.io/admin/x").as_deref(),
            Some("/socket.io/admin/*")
        );
        assert_eq!(which(&r, "/").as_deref(), Some("/*"));
    }

    #[test]
    fn unmatched_paths_find_nothing() {
        let r = router(&["/", "/chat", "/api/*"]);
        assert!(r.find("/other").is_none());
        assert!(r.find("/chat/").is_none());
        assert!(r.find("/apix").is_none());
        assert!(r.find("/api").is_some());
        assert!(r.find("").is_none());
    }

    #[test]
    fn a_pattern_added_twice_keeps_its_last_endpoint() {
        let mut routes = Routes::default();
        routes.add("/a", Endpoint::task(|_, _| async {}));
        routes.add("/a", Endpoint::callbacks(Nop));
        let r = routes.build(&Arc::new(Config::default()));
        assert!(matches!(
            r.find("/a").map(|r| &r.target),
            Some(Target::Callbacks(_))
        ));
    }

    struct Nop;

    impl Callbacks for Nop {
        fn on_message(&self, _: &mut crate::callback::Conn<'_>, _: volley_proto::Message) {}
    }

    #[test]
    #[should_panic(expected = "must start with '/'")]
    fn patterns_start_with_a_slash() {
        Pattern::parse("chat");
    }

    #[test]
    #[should_panic(expected = "may only end the pattern")]
    fn a_star_ends_the_pattern() {
        Pattern::parse("/a*/b");
    }

    #[test]
    fn not_found_bodies_are_bounded() {
        let long = format!("/{}", "x".repeat(10_000));
        assert!(not_found_body(&long).len() < 300);
        assert_eq!(not_found_body("/x"), "404 Not Found: no route for /x\n");
    }
}
