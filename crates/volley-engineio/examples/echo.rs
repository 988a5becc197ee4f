//! An Engine.IO echo server: every message (text or binary) is sent back.
//!
//! `cargo run -p volley-engineio --example echo -- [PORT] [PING_INTERVAL_MS] [PING_TIMEOUT_MS]`
//! listens on 127.0.0.1 (default port 3001) and serves Engine.IO on every path, conventionally
//! `/engine.io/` for `engine.io-client` or `/socket.io/` for Socket.IO's engine.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use volley_engineio::{Engine, EngineConfig};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3001);
    let interval = args.next().and_then(|a| a.parse().ok()).unwrap_or(25_000);
    let timeout = args.next().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let config = EngineConfig::default()
        .ping_interval(Duration::from_millis(interval))
        .ping_timeout(Duration::from_millis(timeout));
    let engine = Engine::new(config, |mut session| {
        tokio::spawn(async move {
            let sender = session.sender();
            println!("open {} over {:?}", session.id(), session.transport());
            while let Some(data) = session.recv().await {
                if sender.send(data).is_err() {
                    break;
                }
            }
            println!(
                "closed {}: {}",
                session.id(),
                session.close_reason().map_or("?", |r| r.as_str())
            );
        });
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let engine = engine.clone();
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), engine)
                .with_upgrades()
                .await;
        });
    }
}
