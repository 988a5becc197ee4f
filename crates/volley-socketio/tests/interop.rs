//! Interop with the official Socket.IO clients: `socket.io-client` 4.x on Node (with the default
//! parser, and with `socket.io-msgpack-parser` against a server built with
//! [`Parser::MsgPack`](volley_socketio::Parser::MsgPack)) and `python-socketio` 5.x, pinned in
//! `e2e/` and installed by `scripts/install-peers` (which `scripts/test` runs first). A missing
//! peer fails these tests: it is never a silent skip.
//!
//! Every test starts the conformance example server in-process on 127.0.0.1:0 and runs one
//! scenario of `e2e/node/sio_client.js` or `e2e/python/sio_client.py` against it as a
//! subprocess; the scenario passes iff the client exits 0. The same scenarios pass against Node's
//! own socket.io server (`e2e/node/sio_reference_server.js`), so they test real Socket.IO
//! behaviour:
//!
//! ```text
//! node e2e/node/sio_reference_server.js --port 3000 [--parser msgpack] &
//! node e2e/node/sio_client.js --url http://127.0.0.1:3000 --scenario rooms [--parser msgpack]
//! .deps/py/bin/python e2e/python/sio_client.py --url http://127.0.0.1:3000 --scenario rooms
//! ```

#[path = "../examples/conformance.rs"]
// The example's `main` and argument parsing are unused here (the example itself allows
// `unreachable_pub` for this inclusion).
#[allow(dead_code)]
mod conformance;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The whole client run, including the interpreter's start-up on a loaded machine (each
/// scenario bounds itself to ~10 s).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Clone, Copy, Debug)]
enum Peer {
    Node,
    /// `socket.io-client` with `socket.io-msgpack-parser`.
    NodeMsgpack,
    Python,
}

impl Peer {
    /// The client command, or a panic telling how to install the missing peer.
    fn command(self) -> Command {
        let root = repo();
        let (program, script) = match self {
            Peer::Node | Peer::NodeMsgpack => {
                assert!(
                    root.join("e2e/node_modules/socket.io-client").exists(),
                    "e2e/node_modules/socket.io-client is missing: run scripts/install-peers"
                );
                (PathBuf::from("node"), root.join("e2e/node/sio_client.js"))
            }
            Peer::Python => {
                let python = root.join(".deps/py/bin/python");
                assert!(
                    python.exists(),
                    "{} is missing: run scripts/install-peers",
                    python.display()
                );
                (python, root.join("e2e/python/sio_client.py"))
            }
        };
        assert!(script.exists(), "{} is missing", script.display());
        let mut cmd = Command::new(program);
        cmd.arg(script);
        if let Peer::NodeMsgpack = self {
            cmd.args(["--parser", "msgpack"]);
        }
        cmd
    }
}

/// Server settings for a scenario: the heartbeat scenarios need short ping settings (the clients
/// insist on pingInterval + pingTimeout <= 3 s) but not the conformance defaults' 300 ms / 200 ms:
/// with those, a client stalled for 200 ms on a loaded machine (no ping for interval + timeout)
/// closed the connection itself before the server dropped it, and the scenario failed with "the
/// server sent no ping to withhold a pong from". 1 s / 1 s leaves a second of margin: the server
/// drops the client 1 s after an unanswered ping, the client's own timer would fire after 2 s.
/// The other scenarios get a ping timeout that a client on a loaded machine can always meet, with
/// pings still frequent enough to happen mid-scenario.
fn options(peer: Peer, scenario: &str) -> conformance::Options {
    let defaults = conformance::Options {
        parser: match peer {
            Peer::NodeMsgpack => volley_socketio::Parser::MsgPack,
            Peer::Node | Peer::Python => volley_socketio::Parser::Default,
        },
        ..conformance::Options::default()
    };
    if scenario.starts_with("heartbeat-timeout") {
        conformance::Options {
            ping_interval: Duration::from_millis(1000),
            ping_timeout: Duration::from_millis(1000),
            ..defaults
        }
    } else {
        conformance::Options {
            ping_interval: Duration::from_millis(500),
            ping_timeout: Duration::from_millis(1500),
            ..defaults
        }
    }
}

async fn start_server(opts: conformance::Options) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        if let Err(err) = conformance::serve(listener, opts).await {
            eprintln!("conformance server stopped: {err}");
        }
    });
    addr
}

/// Reads a child's pipe to the end on a thread (so a chatty child never blocks on a full pipe).
fn collect(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

async fn run(peer: Peer, scenario: &str) {
    let addr = start_server(options(peer, scenario)).await;
    let mut child = peer
        .command()
        .args(["--url", &format!("http://{addr}"), "--scenario", scenario])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start the {peer:?} client: {err}"));
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));

    // Wait for the child without blocking the runtime that serves it (bounded in time).
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for the client") {
            Some(status) => break Some(status),
            None if started.elapsed() > CLIENT_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => {
            assert!(
                stdout.contains(&format!("OK {scenario}")) && !stdout.contains("FAIL"),
                "{peer:?} client exited 0 without passing {scenario}\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
        }
        Some(status) => panic!(
            "{peer:?} client failed scenario {scenario} ({status}) against the conformance server \
             at {addr}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        ),
        None => panic!(
            "{peer:?} client did not finish scenario {scenario} within {CLIENT_TIMEOUT:?}\n\
             stdout:\n{stdout}\nstderr:\n{stderr}"
        ),
    }
}

macro_rules! scenarios {
    ($($test:ident => $scenario:literal,)*) => {
        /// `socket.io-client` 4.x (Node).
        mod node {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Peer::Node, $scenario).await;
                }
            )*
        }

        /// `socket.io-client` 4.x with `socket.io-msgpack-parser` 3.x, against the server with
        /// the msgpack parser.
        mod node_msgpack {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Peer::NodeMsgpack, $scenario).await;
                }
            )*
        }

        /// `python-socketio` 5.x (sync client).
        mod python {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::run(super::Peer::Python, $scenario).await;
                }
            )*
        }
    };
}

scenarios! {
    connect_default => "connect-default",
    connect_custom_namespace_with_auth => "connect-custom",
    connect_invalid_namespace => "connect-invalid-namespace",
    middleware_rejects_with_message_and_data => "middleware-reject",
    events_both_directions => "events",
    acks_both_directions_with_timeout => "acks",
    binary_payloads_both_directions => "binary",
    rooms_broadcast_reaches_exactly_the_members => "rooms",
    polling_only => "polling-only",
    websocket_only => "websocket-only",
    polling_upgrades_to_websocket => "upgrade",
    heartbeat_timeout_drops_a_silent_client => "heartbeat-timeout",
    heartbeat_timeout_drops_a_silent_polling_client => "heartbeat-timeout-polling",
    client_reconnects_after_transport_close => "reconnect",
    server_disconnect_without_reconnect => "server-disconnect",
}
