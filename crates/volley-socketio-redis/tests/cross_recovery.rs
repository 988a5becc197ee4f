//! Connection state recovery across the servers of a cluster, with the streams adapter
//! (`@socket.io/redis-streams-adapter` 0.3 on the Node side): Volley server A (a separate
//! process, the `volley-socketio-cluster-node` binary), Volley server B (in this process) and a Node
//! socket.io server C on one private redis-server; the official socket.io-client.
//!
//! - Transport closes: clients start on A, B or C and every reconnection goes to a Volley
//!   server (the same or another), 150 ms later, while B broadcasts: every reconnection is
//!   recovered, every event arrives exactly once, in order (sessions persisted by Node and by
//!   Volley, restored by Volley).
//! - kill -9: A is killed (SIGKILL: no disconnect handling at all); its clients reconnect, half
//!   to B and half to C (Node), and recover what was broadcast while they were away, then go
//!   on; every event exactly once, in order.
//!
//! Node's own restore has a window where a broadcast that arrives during the restore is lost
//! (it joins the rooms after reading the stream); the kill -9 test therefore broadcasts in
//! bursts while the clients are away, not during their reconnection. Volley's restore holds
//! such broadcasts back (the transport-close test broadcasts throughout).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use serde_json::{Value, json};
use volley_socketio::{RecoveryConfig, SocketIo};
use volley_socketio_redis::{RedisStreamsAdapter, RedisStreamsAdapterConfig};

/// The `volley-socketio-cluster-node` binary (cargo builds it for the integration tests).
struct VolleyProcess {
    child: Child,
    port: u16,
}

impl VolleyProcess {
    fn start(redis_url: &str) -> VolleyProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volley-socketio-cluster-node"))
            .args([
                "--redis",
                redis_url,
                "--adapter",
                "streams",
                "--recovery-ms",
                "120000",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start volley-socketio-cluster-node");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: Value = serde_json::from_str(&line).expect("listening line");
        VolleyProcess {
            child,
            port: v["listening"].as_u64().unwrap() as u16,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// SIGKILL.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for VolleyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn volley_b(redis_url: &str) -> (SocketIo, String) {
    init_logs();
    let factory = RedisStreamsAdapter::factory(
        redis_handle(redis_url),
        RedisStreamsAdapterConfig::default(),
    )
    .unwrap();
    let io = SocketIo::builder()
        .adapter(factory)
        .connection_state_recovery(RecoveryConfig::default())
        .build();
    io.of("/").on_connection(|socket| {
        if !socket.recovered() {
            socket.join("room");
        }
    });
    io.init_adapters().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = io.clone();
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (io, format!("http://{addr}"))
}

/// The example and the Node server join "room" through the clients' "join" event; the
/// recovery clients do not send it, so their servers must put them in the room: A and C
/// broadcast to everyone instead (rooms: none), which the clients receive the same way.
const ROOMS: [&str; 0] = [];

async fn result_of(clients: &mut NodeProc) -> Value {
    clients
        .wait_line(Duration::from_secs(60), "the clients' result", |v| {
            v.get("ok").is_some()
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_on_another_server_after_transport_closes() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let a = VolleyProcess::start(&url);
    let (b, b_url) = volley_b(&url).await;
    let (_node, c_addr) = node_server_with(&url, "streams", &["--recovery-ms", "120000"]).await;
    let c_url = format!("http://{c_addr}");
    let (events, closes, duration_ms) = (600u32, 12u32, 1_200u64);
    let only_b = std::env::var_os("ONLY_B").is_some();
    let first = if only_b {
        b_url.clone()
    } else {
        format!("{},{},{}", a.url(), b_url, c_url)
    };
    let next = if only_b {
        b_url.clone()
    } else {
        format!("{},{}", a.url(), b_url)
    };
    let mut clients = NodeProc::spawn(
        "sio_recovery_clients.js",
        &[
            "--scenario",
            "cross",
            "--first-urls",
            &first,
            "--next-urls",
            &next,
            // Node persists a session when it sees the disconnection (asynchronously): a
            // client that came back within milliseconds would find none there.
            "--reconnect-ms",
            "150",
            "--clients",
            "6",
            "--closes",
            &closes.to_string(),
            "--events",
            &events.to_string(),
            "--duration-ms",
            &duration_ms.to_string(),
            "--timeout-ms",
            "50000",
        ],
    );
    clients
        .wait_line(Duration::from_secs(20), "ready", |v| {
            v.get("ready").is_some()
        })
        .await;
    let started = Instant::now();
    for i in 0..events {
        b.of("/").to(ROOMS.to_vec()).emit("e", json!(i)).unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    b.emit("done", ()).unwrap();
    let result = result_of(&mut clients).await;
    assert_eq!(result["ok"], json!(true), "{result}");
    assert_eq!(result["closes"], json!(closes), "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recover_on_volley_and_node_after_kill_9() {
    let _serial = SERIAL.lock().await;
    let redis = RedisServer::start();
    let url = redis.url();
    let mut a = VolleyProcess::start(&url);
    let (b, b_url) = volley_b(&url).await;
    let (_node, c_addr) = node_server_with(&url, "streams", &["--recovery-ms", "120000"]).await;
    let c_url = format!("http://{c_addr}");
    let n = 6;
    let burst = 300u32;
    let mut clients = NodeProc::spawn(
        "sio_recovery_clients.js",
        &[
            "--scenario",
            "cross",
            "--first-urls",
            &a.url(),
            "--next-urls",
            &format!("{b_url},{c_url}"),
            "--reconnect-ms",
            "400",
            "--clients",
            &n.to_string(),
            "--closes",
            "0",
            "--events",
            &(3 * burst).to_string(),
            "--timeout-ms",
            "50000",
        ],
    );
    clients
        .wait_line(Duration::from_secs(20), "ready", |v| {
            v.get("ready").is_some()
        })
        .await;
    let marks = |lines: &Arc<Mutex<Vec<Value>>>, m: u64| {
        lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("mark") == Some(&json!(m)))
            .count()
    };
    let mut next = 0u32;
    for mark in 1..=2u64 {
        for _ in 0..burst {
            b.emit("e", json!(next)).unwrap();
            next += 1;
        }
        b.emit("mark", json!(mark)).unwrap();
        if mark == 1 {
            let lines = clients.lines.clone();
            wait_until("every client at mark 1", Duration::from_secs(20), || {
                marks(&lines, 1) == n
            })
            .await;
            // Give the session keeper time to write the rooms, then crash A.
            tokio::time::sleep(Duration::from_millis(200)).await;
            a.kill();
        }
    }
    // The second burst was sent while A's clients were away (they wait 400 ms before they
    // reconnect); they get it from the stream when they recover.
    let lines = clients.lines.clone();
    wait_until(
        "every client recovered to mark 2",
        Duration::from_secs(20),
        || marks(&lines, 2) == n,
    )
    .await;
    for _ in 0..burst {
        b.emit("e", json!(next)).unwrap();
        next += 1;
    }
    b.emit("done", ()).unwrap();
    let result = result_of(&mut clients).await;
    assert_eq!(result["ok"], json!(true), "{result}");
    assert_eq!(result["reconnects"], json!(n), "{result}");
}

async fn retention_case(max_len: usize) -> Value {
    let redis = RedisServer::start();
    let url = redis.url();
    let factory = RedisStreamsAdapter::factory(
        redis_handle(&url),
        RedisStreamsAdapterConfig {
            max_len,
            ..RedisStreamsAdapterConfig::default()
        },
    )
    .unwrap();
    let io = SocketIo::builder()
        .adapter(factory)
        .connection_state_recovery(RecoveryConfig::default())
        .build();
    io.init_adapters().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = io.clone();
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    let mut client = NodeProc::spawn(
        "sio_recovery_clients.js",
        &[
            "--url",
            &format!("http://{addr}"),
            "--scenario",
            "expired",
            "--reconnect-ms",
            "800",
            "--timeout-ms",
            "20000",
        ],
    );
    client
        .wait_line(Duration::from_secs(20), "ready", |v| {
            v.get("ready").is_some()
        })
        .await;
    // The client closes its transport on the first event; while it is away, 1,000 more
    // entries push its offset out of a stream trimmed to ~max_len entries.
    io.emit("e", json!(0)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 1..=1_000 {
        io.emit("e", json!(i)).unwrap();
    }
    result_of(&mut client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_streams_retention_the_state_is_not_recovered() {
    let _serial = SERIAL.lock().await;
    let result = retention_case(10).await;
    assert_eq!(result["ok"], json!(true), "{result}");
    // The same within the retention is recovered (so the case above fails for its reason).
    let result = retention_case(10_000).await;
    assert_eq!(result["recovered"], json!(true), "{result}");
}
