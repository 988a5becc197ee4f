//! Wire behaviour against Node's: raw exchanges with the conformance server compared with Node's
//! own `socket.io` 4.8 (`e2e/node/sio_reference_server.js`), and a Node client on `ws` 8.x that
//! reads one message at a time. The Node programs are installed by `scripts/install-peers`; a
//! missing peer fails these tests.

#[path = "../examples/conformance.rs"]
// The example's `main` and argument parsing are unused here (the example itself allows
// `unreachable_pub` for this inclusion).
#[allow(dead_code)]
mod conformance;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Node program's whole run, including its start-up on a loaded machine.
const NODE_TIMEOUT: Duration = Duration::from_secs(40);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `node e2e/node/<script>`, or a panic telling how to install the peers.
fn node(script: &str) -> Command {
    let root = repo();
    assert!(
        root.join("e2e/node_modules/ws").exists()
            && root.join("e2e/node_modules/socket.io").exists(),
        "e2e/node_modules is missing: run scripts/install-peers"
    );
    let mut cmd = Command::new("node");
    cmd.arg(root.join("e2e/node").join(script));
    cmd
}

/// Node's own socket.io server with the conformance handlers (`sio_reference_server.js`), on
/// 127.0.0.1; stopped when dropped.
struct NodeServer {
    child: Child,
    addr: SocketAddr,
}

impl NodeServer {
    /// Starts it with the timeouts of [`quiet`] and waits until it listens.
    async fn start() -> NodeServer {
        let opts = quiet();
        let mut cmd = node("sio_reference_server.js");
        cmd.args([
            "--port",
            "0",
            "--ping-interval-ms",
            &opts.ping_interval.as_millis().to_string(),
            "--ping-timeout-ms",
            &opts.ping_timeout.as_millis().to_string(),
            "--connect-timeout-ms",
            &opts.connect_timeout.as_millis().to_string(),
        ]);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start node: {err}"));
        let stdout = child.stdout.take().expect("stdout");
        // "listening on 127.0.0.1:PORT", read on a thread (a blocking read).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = tokio::task::spawn_blocking(move || rx.recv_timeout(NODE_TIMEOUT))
            .await
            .expect("reader thread")
            .unwrap_or_default();
        let Some(addr) = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
        else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the Node reference server did not start: {line:?}");
        };
        NodeServer { child, addr }
    }
}

impl Drop for NodeServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Conformance settings without heartbeats or connect timeouts during a test (a scenario on a
/// loaded machine may take more than the default second to join a namespace).
fn quiet() -> conformance::Options {
    conformance::Options {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
        connect_timeout: Duration::from_secs(15),
        ..conformance::Options::default()
    }
}

async fn start_volley(opts: conformance::Options) -> SocketAddr {
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

/// Runs a Node program to its end without blocking the runtime that serves it; its stdout.
async fn run_node(mut cmd: Command) -> String {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start node: {err}"));
    let collect = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let stdout = collect(Box::new(child.stdout.take().expect("stdout")));
    let stderr = collect(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        match child.try_wait().expect("wait for node") {
            Some(status) => break Some(status),
            None if started.elapsed() > NODE_TIMEOUT => {
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
        Some(status) if status.success() => stdout,
        Some(status) => panic!("node failed ({status})\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        None => {
            panic!("node did not finish in {NODE_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
    }
}

/// Issue 16, point 4. A Node client on `ws` 8.x that awaits one message at a time with one-shot
/// listeners (`ws.once("message")`) connects to `/` and awaits the CONNECT reply, then the `auth`
/// event that the connection handler emits at once. `ws` emits all the messages of one socket
/// read in the same tick, so the second packet is lost when both come in one read: it always was
/// when the server wrote them together. Node's own server writes them separately and the client
/// loses it rarely (about 2 tries in 30 on an idle machine; on a machine so loaded that the client
/// does not run between the two writes, it loses it there too). The tries alternate between
/// Volley and Node's server, and Volley may lose at most a quarter of the tries more than Node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reply_and_handler_output_reach_a_one_message_per_read_client_separately() {
    let reference = NodeServer::start().await;
    let volley = start_volley(quiet()).await;
    let tries = 20;
    let mut cmd = node("sio_one_shot.js");
    cmd.args([
        "--url",
        &format!("http://{volley}"),
        "--url",
        &format!("http://{}", reference.addr),
        "--tries",
        &tries.to_string(),
    ]);
    let out = run_node(cmd).await;
    let results: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    let lost = |i: usize| {
        assert_eq!(results[i]["tries"], tries, "{out}");
        results[i]["lost"].as_u64().expect("lost")
    };
    let (volley_lost, node_lost) = (lost(0), lost(1));
    assert!(
        volley_lost <= node_lost + tries / 4,
        "the auth event was lost in {volley_lost} of {tries} tries with Volley, \
         {node_lost} with Node: {out}"
    );
}

/// Raw exchanges (`e2e/node/sio_raw_parity.js --all`: Engine.IO long-polling and WebSocket
/// requests, upgrades, closes, malformed and out-of-place Engine.IO and Socket.IO packets) give
/// the same answers from the conformance server as from Node's own socket.io 4.8, byte for byte
/// (session and socket ids aside). The few known differences are listed in the volley-engineio
/// crate docs and left out by the script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_exchanges_match_nodes_socket_io() {
    let reference = NodeServer::start().await;
    let volley = start_volley(quiet()).await;
    let transcripts = |addr: SocketAddr| {
        let mut cmd = node("sio_raw_parity.js");
        cmd.args(["--url", &format!("http://{addr}"), "--all"]);
        run_node(cmd)
    };
    let (node_out, volley_out) = tokio::join!(transcripts(reference.addr), transcripts(volley));
    let parse = |out: &str| -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    };
    let (node_t, volley_t) = (parse(&node_out), parse(&volley_out));
    assert!(node_t.len() >= 40, "only {} scenarios ran", node_t.len());
    let mut differences = Vec::new();
    for (scenario, expected) in &node_t {
        let got = volley_t.get(scenario);
        if got != Some(expected) {
            differences.push(format!(
                "{scenario}:\n  Node:   {expected}\n  Volley: {}",
                got.map_or("(missing)".to_owned(), |g| g.to_string())
            ));
        }
    }
    assert!(
        differences.is_empty(),
        "{} scenarios differ from Node:\n{}",
        differences.len(),
        differences.join("\n")
    );
}
