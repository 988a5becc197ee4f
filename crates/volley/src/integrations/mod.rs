//! Integrations with HTTP frameworks: WebSocket routes beside REST routes in one app.
//!
//! - [`hyper`](crate::hyper) (feature `hyper`): accept an upgrade from a hyper 1 request.
//! - [`axum`](crate::axum) (feature `axum`): the `WebSocketUpgrade` extractor for axum 0.8.

#[cfg(feature = "axum")]
pub mod axum;
#[cfg(feature = "hyper")]
pub mod hyper;
#[cfg(feature = "hyper")]
pub(crate) mod service;
