//! The cluster test harness: a private redis-server, Volley servers with the Redis adapter
//! in-process, and Node peers (a socket.io server with `@socket.io/redis-adapter`, the official
//! `socket.io-client`s) driven over stdin/stdout as JSON lines. The Node side is pinned in
//! `e2e/` and installed by `scripts/install-peers`; a missing peer fails the test.
#![allow(dead_code, unreachable_pub, missing_docs)]

#[path = "../../../volley-redis/tests/common/redis_server.rs"]
pub mod redis_server;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use volley_redis::{Redis, RedisConfig};
use volley_socketio::{AdapterFactory, SocketIo};

/// The tests of one binary that start whole clusters take turns (each starts a Redis, Node
/// processes and servers: run side by side on a 2-core machine they would mostly measure the
/// machine's load).
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Logs to the test output when RUST_LOG is set.
pub fn init_logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A Node process speaking JSON lines.
pub struct NodeProc {
    child: Child,
    stdin: Option<ChildStdin>,
    pub lines: Arc<Mutex<Vec<Value>>>,
    next_id: u64,
    pub what: String,
}

impl NodeProc {
    pub fn spawn(script: &str, args: &[&str]) -> NodeProc {
        let root = repo();
        assert!(
            root.join("e2e/node_modules/@socket.io/redis-adapter")
                .exists(),
            "e2e/node_modules/@socket.io/redis-adapter is missing: run scripts/install-peers"
        );
        let mut child = Command::new("node")
            .arg(root.join("e2e/node").join(script))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start node {script}: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let stdin = child.stdin.take();
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = lines.clone();
        let name = script.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => sink.lock().unwrap().push(v),
                    Err(_) => eprintln!("{name}: {line}"),
                }
            }
        });
        NodeProc {
            child,
            stdin,
            lines,
            next_id: 0,
            what: script.to_owned(),
        }
    }

    pub fn send(&mut self, v: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{v}").expect("write to node");
        stdin.flush().expect("flush");
    }

    /// Waits (at most `timeout`) for a line `f` accepts, and returns it.
    pub async fn wait_line(
        &self,
        timeout: Duration,
        what: &str,
        f: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| f(v)) {
                return v.clone();
            }
            assert!(
                started.elapsed() < timeout,
                "{}: no {what} within {timeout:?}; lines: {:#?}",
                self.what,
                self.lines.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Runs command `cmd` (an object with "op") and returns its result.
    pub async fn call(&mut self, mut cmd: Value) -> Result<Value, String> {
        self.next_id += 1;
        let id = self.next_id;
        cmd["id"] = json!(id);
        self.send(&cmd);
        let line = self
            .wait_line(Duration::from_secs(20), &format!("answer to {cmd}"), |v| {
                v.get("id") == Some(&json!(id))
            })
            .await;
        match line.get("error") {
            Some(e) => Err(e.as_str().unwrap_or_default().to_owned()),
            None => Ok(line.get("ok").cloned().unwrap_or(Value::Null)),
        }
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Node socket.io server with the Redis adapter (`mode`: "classic", "sharded", "streams").
pub async fn node_server(redis_url: &str, mode: &str) -> (NodeProc, SocketAddr) {
    node_server_with(redis_url, mode, &[]).await
}

/// [`node_server`] with more arguments (e.g. `--recovery-ms 120000`).
pub async fn node_server_with(
    redis_url: &str,
    mode: &str,
    extra: &[&str],
) -> (NodeProc, SocketAddr) {
    let mut args = vec!["--redis", redis_url, "--adapter", mode];
    args.extend_from_slice(extra);
    let p = NodeProc::spawn("sio_cluster_node.js", &args);
    let line = p
        .wait_line(Duration::from_secs(20), "listening", |v| {
            v.get("listening").is_some()
        })
        .await;
    let port = line["listening"].as_u64().unwrap() as u16;
    (p, SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The official socket.io-client, many instances in one Node process.
pub struct Clients(pub NodeProc);

impl Clients {
    pub fn start() -> Clients {
        Clients(NodeProc::spawn("sio_cluster_clients.js", &[]))
    }

    /// Connects client `name` to `addr`, joined to `rooms`; returns its socket id.
    pub async fn connect(&mut self, name: &str, addr: SocketAddr, rooms: &[&str]) -> String {
        self.0.send(&json!({
            "op": "connect", "name": name, "url": format!("http://{addr}"), "rooms": rooms,
        }));
        let line = self
            .0
            .wait_line(Duration::from_secs(20), &format!("{name} connected"), |v| {
                v.get("connected") == Some(&json!(name))
            })
            .await;
        line["sid"].as_str().unwrap().to_owned()
    }

    /// Every `(client, args)` of event `event` received so far.
    pub fn received(&self, event: &str) -> Vec<(String, Value)> {
        self.0
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("event") == Some(&json!(event)))
            .map(|v| (v["name"].as_str().unwrap().to_owned(), v["args"].clone()))
            .collect()
    }

    /// The clients that received event `event`, sorted.
    pub fn recipients(&self, event: &str) -> Vec<String> {
        let mut names: Vec<String> = self.received(event).into_iter().map(|(n, _)| n).collect();
        names.sort();
        names
    }

    /// Waits until each of `names` has received event `event` (at most 10 s).
    pub async fn wait_event(&self, event: &str, names: &[&str]) {
        let started = Instant::now();
        loop {
            let got = self.recipients(event);
            if names.iter().all(|n| got.iter().any(|g| g == n)) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "event {event}: expected {names:?}, got {got:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The disconnect reasons of client `name`.
    pub fn disconnects(&self, name: &str) -> Vec<String> {
        self.0
            .lines
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v.get("name") == Some(&json!(name)) && v.get("disconnect").is_some())
            .map(|v| v["disconnect"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Installs the same handlers as the Node cluster server: "join" (rooms, ack) sets
/// `data = {name}`; server-side "ping" answers `{from: <name>, arg}`; "note" is recorded.
pub fn install_handlers(io: &SocketIo, name: &'static str, notes: Arc<Mutex<Vec<Value>>>) {
    let ns = io.of("/");
    ns.on_connection(|socket| {
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
    ns.on_server_side_emit("ping", move |args, ack| {
        if let Some(ack) = ack {
            ack.send(json!({"from": name, "arg": args.first().cloned().unwrap_or(Value::Null)}));
        }
    });
    ns.on_server_side_emit("note", move |args, _| {
        notes.lock().unwrap().push(Value::Array(args));
    });
    // A namespace only Volley servers have (Node's adapter would crash on the malformed
    // messages the tests publish there).
    io.of("/garbage")
        .on_server_side_emit("ping", move |_, ack| {
            if let Some(ack) = ack {
                ack.send(json!({"from": name}));
            }
        });
}

/// A Volley server on 127.0.0.1:0 with `factory` as adapter, started and subscribed.
pub async fn volley_server(
    factory: AdapterFactory,
    name: &'static str,
) -> (SocketIo, SocketAddr, Arc<Mutex<Vec<Value>>>) {
    init_logs();
    let io = SocketIo::builder()
        .ping_interval(Duration::from_secs(2))
        .ping_timeout(Duration::from_secs(5))
        .adapter(factory)
        .build();
    let notes: Arc<Mutex<Vec<Value>>> = Arc::default();
    install_handlers(&io, name, notes.clone());
    io.init_adapters().await.expect("adapter started");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = io.clone();
    tokio::spawn(async move {
        let _ = server.serve(listener).await;
    });
    (io, addr, notes)
}

pub fn redis_handle(url: &str) -> Redis {
    let mut c = RedisConfig::new(url);
    c.min_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(500);
    Redis::connect(c).expect("redis config")
}

/// Waits until `f` holds (at most `timeout`).
pub async fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
