//! A live dashboard over Socket.IO, on the typed API: the server pushes a metrics snapshot to
//! every client of `/dashboard` at a fixed interval, as a volatile broadcast.
//!
//! ```text
//! cargo run -p volley-socketio --example socketio_dashboard -- [PORT] [INTERVAL_MS]
//! ```
//!
//! ```js
//! const s = io("http://127.0.0.1:3000/dashboard");
//! s.on("metrics", (m) => console.log(m.seq, m.clients, m.uptime_ms, m.load)); // m.load: a Buffer
//! const latest = await s.emitWithAck("latest");
//! ```
//!
//! - `metrics` `{seq, clients, uptime_ms, load}` every interval, `load` the last 60 load samples
//!   (one byte each) as a binary attachment. The broadcast is volatile: a client whose
//!   connection cannot take it now (a long-polling client between two requests, a closed
//!   session) skips that snapshot instead of having it queued: for a dashboard only the latest
//!   value matters.
//! - `latest` → acknowledged with the latest snapshot (what a client that just connected, or
//!   skipped one, asks for).
//!
//! Tests include this file (`#[path = "../examples/socketio_dashboard.rs"] mod
//! socketio_dashboard;`) and run [`publish`].
// Included as a module by tests, where `pub` items are not reachable from outside.
#![allow(unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use volley_socketio::{Namespace, SocketIo};

/// One metrics snapshot.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Metrics {
    /// Snapshot number (from 1).
    pub seq: u64,
    /// Connected dashboard clients.
    pub clients: usize,
    /// Since the dashboard started.
    pub uptime_ms: u64,
    /// The last load samples, 0–255, oldest first: sent as a binary attachment.
    pub load: Bytes,
}

/// Installs the `latest` handler on `/dashboard` and returns that namespace with the shared
/// latest snapshot.
pub fn dashboard_namespace(io: &SocketIo) -> (Namespace, Arc<Mutex<Metrics>>) {
    let latest = Arc::new(Mutex::new(Metrics::default()));
    let ns = io.of("/dashboard");
    let shared = latest.clone();
    ns.on_connection(move |socket| {
        let latest = shared.clone();
        socket.on("latest", move |_socket, (): (), ack| {
            if let Some(ack) = ack {
                let snapshot = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let _ = ack.send(&snapshot);
            }
        });
    });
    (ns, latest)
}

/// Publishes a snapshot on `ns` every `interval`, forever (until the future is dropped).
pub async fn publish(ns: Namespace, latest: Arc<Mutex<Metrics>>, interval: Duration) {
    let started = Instant::now();
    let mut load: Vec<u8> = Vec::with_capacity(60);
    let mut ticker = tokio::time::interval(interval);
    for seq in 1u64.. {
        ticker.tick().await;
        // A made-up load figure; a real dashboard would read its own.
        let sample = (seq.wrapping_mul(37) % 256) as u8;
        if load.len() == 60 {
            load.remove(0);
        }
        load.push(sample);
        let snapshot = Metrics {
            seq,
            clients: ns.sockets().len(),
            uptime_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            load: Bytes::copy_from_slice(&load),
        };
        // Encoded once for every client; dropped for a client that cannot take it now.
        let _ = ns.volatile().emit("metrics", &snapshot);
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = snapshot;
    }
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(3000);
    let every_ms: u64 = args.next().and_then(|p| p.parse().ok()).unwrap_or(500);
    let io = SocketIo::new();
    let (ns, latest) = dashboard_namespace(&io);
    tokio::spawn(publish(ns, latest, Duration::from_millis(every_ms)));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "dashboard on http://{}/socket.io/ (namespace /dashboard), every {every_ms} ms",
        listener.local_addr()?
    );
    io.serve(listener).await
}
