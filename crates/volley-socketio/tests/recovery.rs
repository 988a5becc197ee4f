//! Connection state recovery against the official `socket.io-client` 4.8 (pinned in `e2e/`,
//! installed by `scripts/install-peers`; a missing peer fails the test), driven by
//! `e2e/node/sio_recovery_clients.js`.
//!
//! - Within the window: clients in a room receive a stream of broadcasts while their
//!   transports are closed again and again; every reconnection must be recovered and every
//!   client must get every event exactly once, in order. The suite runs 10 clients, 20 closes,
//!   1,000 events; `VOLLEY_RECOVERY_LONG=1` runs the 100 closes over 10,000 events
//!   (20 clients).
//! - Past the window: a client that comes back after `maxDisconnectionDuration` is not
//!   recovered.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use volley_socketio::{RecoveryConfig, SocketIo};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

struct Peer {
    child: Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Peer {
    fn start(args: &[&str]) -> Peer {
        let root = repo();
        assert!(
            root.join("e2e/node_modules/socket.io-client").exists(),
            "e2e/node_modules/socket.io-client is missing: run scripts/install-peers"
        );
        let mut child = Command::new("node")
            .arg(root.join("e2e/node/sio_recovery_clients.js"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start node");
        let stdout = child.stdout.take().unwrap();
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => eprintln!("recovery client: {line}"),
                }
            }
        });
        Peer { child, lines }
    }

    async fn wait_line(&self, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| f(v)) {
                return v.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "no {what}: {:?}",
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn exit_ok(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(started.elapsed() < Duration::from_secs(90), "client hung");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve(io: SocketIo) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = io.serve(listener).await;
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_exactly_once_in_order_across_forced_transport_closes() {
    let long = std::env::var_os("VOLLEY_RECOVERY_LONG").is_some();
    let (clients, closes, events, duration_ms) = if long {
        (20u32, 100u32, 10_000u32, 8_000u64)
    } else {
        (10, 20, 1_000, 1_000)
    };
    let io = SocketIo::builder()
        .connection_state_recovery(RecoveryConfig::default())
        .build();
    io.of("/").on_connection(|socket| {
        // A recovered socket is back in its rooms already.
        if !socket.recovered() {
            socket.join("room");
        }
    });
    let addr = serve(io.clone()).await;
    let url = format!("http://{addr}");
    let (c, k, e, d) = (
        clients.to_string(),
        closes.to_string(),
        events.to_string(),
        duration_ms.to_string(),
    );
    let mut peer = Peer::start(&[
        "--url",
        &url,
        "--scenario",
        "within",
        "--clients",
        &c,
        "--closes",
        &k,
        "--events",
        &e,
        "--duration-ms",
        &d,
        "--timeout-ms",
        "80000",
    ]);
    peer.wait_line("ready", |v| v.get("ready").is_some()).await;
    // The broadcast, paced so that it spans `duration_ms` (bounded in count and time).
    let started = Instant::now();
    let per_ms = (u64::from(events) / duration_ms).max(1);
    for i in 0..events {
        io.to("room").emit("e", json!(i)).unwrap();
        if u64::from(i) % per_ms == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(started.elapsed() < Duration::from_secs(60));
    }
    io.to("room").emit("done", ()).unwrap();
    let result = peer.wait_line("result", |v| v.get("ok").is_some()).await;
    let ok = peer.exit_ok().await;
    assert!(ok && result["ok"] == json!(true), "{result}");
    assert_eq!(result["closes"], json!(closes), "{result}");
    assert!(
        result["reconnects"].as_u64().unwrap() >= u64::from(closes),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_window_the_state_is_not_recovered() {
    let io = SocketIo::builder()
        .connection_state_recovery(RecoveryConfig {
            max_disconnection_duration: Duration::from_millis(300),
            skip_middlewares: true,
        })
        .build();
    io.of("/").on_connection(|socket| {
        let _ = socket.emit("e", json!(1));
    });
    let addr = serve(io).await;
    let url = format!("http://{addr}");
    let mut peer = Peer::start(&[
        "--url",
        &url,
        "--scenario",
        "expired",
        "--reconnect-ms",
        "1000",
        "--timeout-ms",
        "20000",
    ]);
    let result = peer.wait_line("result", |v| v.get("ok").is_some()).await;
    assert!(
        peer.exit_ok().await && result["ok"] == json!(true),
        "{result}"
    );
}
