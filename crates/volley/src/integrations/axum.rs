//! An axum 0.8 extractor for WebSocket routes (feature `axum`), so that WebSocket endpoints live
//! beside REST routes in one [`Router`](::axum::Router).
//!
//! ```no_run
//! use axum::Router;
//! use axum::response::Response;
//! use axum::routing::get;
//! use volley::axum::WebSocketUpgrade;
//!
//! async fn ws(upgrade: WebSocketUpgrade) -> Response {
//!     upgrade
//!         .protocols(["chat.v1"])
//!         .on_upgrade(|mut ws| async move {
//!             while let Some(Ok(msg)) = ws.recv().await {
//!                 if msg.is_data() && ws.send(msg).await.is_err() {
//!                     break;
//!                 }
//!             }
//!         })
//! }
//!
//! let app: Router = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .route("/ws", get(ws));
//! ```
//!
//! Requests that are not valid upgrades are answered by the extractor's [`Rejection`] (400, 405,
//! 426); a [`Policy`] can add an Origin allow-list (403), an auth hook (401/403), subprotocols and
//! headers. Permessage-deflate is negotiated when the [`Config`] enables it. See
//! [`volley::hyper`](crate::hyper) for what happens underneath.

use std::future::Future;

use ::axum::body::Body;
use ::axum::extract::FromRequestParts;
use ::axum::response::{IntoResponse, Response};
use ::hyper::upgrade::OnUpgrade;
use http::Request;
use http::request::Parts;
use volley_proto::handshake::UpgradeRequest;

use crate::callback::Drivers;
use crate::config::Config;
use crate::integrations::hyper::{
    Accepted, HyperWebSocket, Rejection, finish, spawn_upgrade, validate_parts,
};
use crate::policy::{Policy, now_or_never};

/// Extracts a WebSocket upgrade request in an axum handler; answer it with
/// [`on_upgrade`](Self::on_upgrade) (or [`on_upgrade_with`](Self::on_upgrade_with)).
///
/// Extraction fails with a [`Rejection`] (its HTTP answer: 400, 405 or 426) when the request is
/// not a valid RFC 6455 opening handshake.
pub struct WebSocketUpgrade {
    upgrade: UpgradeRequest,
    on_upgrade: Option<OnUpgrade>,
    config: Config,
    policy: Policy,
}

impl std::fmt::Debug for WebSocketUpgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebSocketUpgrade")
            .field("request", self.upgrade.request())
            .field("config", &self.config)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for WebSocketUpgrade {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        let (upgrade, on_upgrade) = validate_parts(parts)?;
        Ok(Self {
            upgrade,
            on_upgrade,
            config: Config::default(),
            policy: Policy::default(),
        })
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        Rejection::into_response::<Body>(self)
    }
}

impl WebSocketUpgrade {
    /// Sets the connection's configuration (default: [`Config::default`]).
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Sets the handshake policy: Origin allow-list, auth hook, subprotocols, extra headers.
    /// Replaces subprotocols set with [`protocols`](Self::protocols) before.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The subprotocols this endpoint speaks, in its order of preference: the first one the client
    /// offered is selected (see [`Policy::protocols`]).
    pub fn protocols<I, T>(mut self, supported: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.policy = self.policy.protocols(supported);
        self
    }

    /// The request head: method, URI, headers, and the extensions axum and its layers added.
    pub fn request(&self) -> &Request<()> {
        self.upgrade.request()
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn offered_protocols(&self) -> &[String] {
        self.upgrade.protocols()
    }

    /// Answers the upgrade: applies the policy, returns the 101 response and runs `handler` with
    /// the WebSocket in a spawned task once axum hands the connection over. A refused request
    /// gets its HTTP error instead.
    ///
    /// The policy's auth hook, if any, must complete without waiting (a check of a header or
    /// token table is fine); one that awaits I/O cannot run here and the request is answered 500
    /// with an error logged: use [`on_upgrade_with`](Self::on_upgrade_with) for it.
    pub fn on_upgrade<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(HyperWebSocket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        match self.accept_now() {
            Ok((response, accepted)) => {
                spawn_upgrade(accepted, move |ws, _request| handler(ws));
                response
            }
            Err(rejection) => rejected(rejection),
        }
    }

    /// Answers the upgrade like [`on_upgrade`](Self::on_upgrade), and hands the connection to
    /// `drivers`: their [`Callbacks`](crate::callback::Callbacks) serve it, with the drivers'
    /// configuration (which replaces this extractor's [`config`](Self::config)). The request
    /// head, with the extensions axum added (such as `ConnectInfo`), reaches
    /// [`Callbacks::on_open`](crate::callback::Callbacks::on_open).
    pub fn on_upgrade_callbacks(mut self, drivers: &Drivers) -> Response {
        self.config = drivers.config().clone();
        match self.accept_now() {
            Ok((response, accepted)) => {
                accepted.adopt(drivers);
                response
            }
            Err(rejection) => rejected(rejection),
        }
    }

    /// Applies the policy (its auth hook must not wait) and builds the 101.
    fn accept_now(self) -> Result<(Response, Accepted), Rejection> {
        let Self {
            mut upgrade,
            on_upgrade,
            config,
            policy,
        } = self;
        let (request, protocol, extra) = match now_or_never(policy.decide_request(&mut upgrade)) {
            Some(decided) => decided?,
            None => {
                tracing::error!(
                    "the handshake policy's auth hook awaited: use WebSocketUpgrade::on_upgrade_with"
                );
                return Err(Rejection::NotUpgradable(
                    "the handshake policy's auth hook cannot wait here",
                ));
            }
        };
        finish(upgrade, on_upgrade, config, request, protocol, extra)
    }

    /// Like [`on_upgrade`](Self::on_upgrade), with the whole policy, including an auth hook that
    /// awaits; `handler` also receives the request head, with what the auth hook put in its
    /// extensions and the selected [`Subprotocol`](crate::Subprotocol).
    ///
    /// Cancel-safe in the sense that dropping it before it completes accepts nothing (the
    /// handler does not run).
    pub async fn on_upgrade_with<F, Fut>(self, handler: F) -> Response
    where
        F: FnOnce(HyperWebSocket, Request<()>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Self {
            mut upgrade,
            on_upgrade,
            config,
            policy,
        } = self;
        let accepted = match policy.decide_request(&mut upgrade).await {
            Ok((request, protocol, extra)) => {
                finish(upgrade, on_upgrade, config, request, protocol, extra)
            }
            Err(reject) => Err(Rejection::Policy(reject)),
        };
        match accepted {
            Ok((response, accepted)) => {
                spawn_upgrade(accepted, handler);
                response
            }
            Err(rejection) => rejected(rejection),
        }
    }
}

/// The answer to a refused upgrade (logged at debug level).
fn rejected(rejection: Rejection) -> Response {
    tracing::debug!("WebSocket upgrade refused: {rejection}");
    IntoResponse::into_response(rejection)
}
