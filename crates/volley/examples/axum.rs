//! WebSocket routes beside REST routes in one axum app.
//!
//! ```text
//! cargo run -p volley --features axum --example axum            # listens on 127.0.0.1:3000
//! curl http://127.0.0.1:3000/health                              # REST: "ok"
//! volley connect ws://127.0.0.1:3000/ws --subprotocol echo.v1    # type lines, they come back
//! curl -i http://127.0.0.1:3000/ws                               # not an upgrade: 400
//! ```
//!
//! Set `ADDR` to listen elsewhere.

use axum::Router;
use axum::response::Response;
use axum::routing::get;
use volley::axum::WebSocketUpgrade;
use volley::{Config, DeflateConfig};

/// The WebSocket route: echo, with a subprotocol and permessage-deflate on offer.
async fn ws(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .protocols(["echo.v1"])
        .config(Config::default().deflate(Some(DeflateConfig::default())))
        .on_upgrade(|mut ws| async move {
            while let Some(Ok(msg)) = ws.recv().await {
                if msg.is_data() && ws.send(msg).await.is_err() {
                    break;
                }
            }
        })
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws", get(ws));
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}
