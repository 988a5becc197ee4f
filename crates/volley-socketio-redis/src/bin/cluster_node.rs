//! A Volley Socket.IO server in a Redis cluster, for the cross-node tests (which kill it with
//! SIGKILL) and `scripts/bench-cluster`.
//!
//! ```text
//! cargo run --release -p volley-socketio-redis --bin volley-socketio-cluster-node -- \
//!     --redis redis://127.0.0.1:6379 --adapter classic|sharded|streams [--port 0] \
//!     [--recovery-ms 120000] [--name volley]
//! ```
//!
//! Prints `{"listening": port}` once subscribed. Its sockets: a `join` event `(rooms, ack)`
//! joins the rooms and sets the socket's data to `{name: auth.name}`. Commands on stdin, one
//! JSON object a line: `{"op": "emit", "event", "args", "rooms"}` broadcasts;
//! `{"op": "blast", "count", "size"}` broadcasts `count` events `b` with a `size`-byte string
//! as fast as it can and prints `{"blasted": count, "ms": …}`. End of stdin stops it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;
use volley_redis::{Redis, RedisConfig};
use volley_socketio::{Payload, RecoveryConfig, SocketIo};
use volley_socketio_redis::{
    RedisAdapter, RedisAdapterConfig, RedisStreamsAdapter, RedisStreamsAdapterConfig,
    ShardedRedisAdapter, ShardedRedisAdapterConfig,
};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == &format!("--{name}"))
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let redis_url = arg("redis").unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let adapter = arg("adapter").unwrap_or_else(|| "classic".into());
    let port: u16 = arg("port").map(|p| p.parse()).transpose()?.unwrap_or(0);
    let mut config = RedisConfig::new(redis_url);
    config.min_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(500);
    let redis = Redis::connect(config)?;
    let factory = match adapter.as_str() {
        "classic" => RedisAdapter::factory(redis, RedisAdapterConfig::default()),
        "sharded" => ShardedRedisAdapter::factory(redis, ShardedRedisAdapterConfig::default()),
        "streams" => RedisStreamsAdapter::factory(redis, RedisStreamsAdapterConfig::default())?,
        other => return Err(format!("unknown adapter {other}").into()),
    };
    let mut builder = SocketIo::builder()
        .adapter(factory)
        .ping_interval(Duration::from_secs(2))
        .ping_timeout(Duration::from_secs(5));
    if let Some(ms) = arg("recovery-ms") {
        builder = builder.connection_state_recovery(RecoveryConfig {
            max_disconnection_duration: Duration::from_millis(ms.parse()?),
            skip_middlewares: true,
        });
    }
    let io = builder.build();
    io.of("/").on_connection(|socket| {
        socket.on("join", |socket, rooms: Value, ack| {
            let rooms: Vec<String> = rooms
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect();
            socket.join(rooms);
            let name = socket
                .handshake()
                .auth
                .get("name")
                .cloned()
                .unwrap_or(Value::Null);
            socket.set_data_json(json!({ "name": name }));
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
    });
    io.init_adapters().await?;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "{}",
        json!({"listening": listener.local_addr()?.port(), "pid": std::process::id()})
    );
    let server = io.clone();
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let Ok(cmd) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        match cmd["op"].as_str() {
            Some("emit") => {
                let rooms: Vec<String> = cmd["rooms"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|r| r.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                let args = cmd["args"].as_array().cloned().unwrap_or_default();
                let event = cmd["event"].as_str().unwrap_or("e");
                let _ = io.of("/").to(rooms).emit(event, Payload::new(args));
                println!("{}", json!({"id": cmd["id"], "ok": true}));
            }
            Some("blast") => {
                let count = cmd["count"].as_u64().unwrap_or(1000);
                let payload = "x".repeat(cmd["size"].as_u64().unwrap_or(16) as usize);
                let started = Instant::now();
                for i in 0..count {
                    let _ = io.emit("b", json!([i, payload]));
                    if i % 64 == 63 {
                        tokio::task::yield_now().await;
                    }
                }
                println!(
                    "{}",
                    json!({"blasted": count, "ms": started.elapsed().as_secs_f64() * 1000.0})
                );
            }
            _ => {}
        }
    }
    Ok(())
}
