//! Wire behaviour against Node's: raw exchanges with the conformance server compared with Node's
//! own `socket.io` 4.8 (`e2e/node/sio_reference_server.js`), and a Node client on `ws` 8.x that
//! reads one message at a time. The Node programs are installed by `scripts/install-peers`; a
//! missing peer fails these tests.

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

/// Conformance settings without heartbeats during a test.
fn quiet() -> conformance::Options {
    conformance::Options {
        ping_interval: Duration::from_secs(25),
        ping_timeout: Duration::from_secs(20),
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
/// read in the same tick, so the second packet is lost when both come in one read: they always
/// did when the server wrote them together. Node's own server loses it about 2 times in 30 (its
/// second write follows the first after a few microseconds); the assertion allows a quarter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_reply_and_handler_output_reach_a_one_message_per_read_client_separately() {
    let addr = start_volley(quiet()).await;
    let tries = 20;
    let mut cmd = node("sio_one_shot.js");
    cmd.args([
        "--url",
        &format!("http://{addr}"),
        "--tries",
        &tries.to_string(),
    ]);
    let out = run_node(cmd).await;
    let result: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(result["tries"], tries);
    let lost = result["lost"].as_u64().expect("lost");
    assert!(
        lost * 4 <= tries,
        "the auth event was lost in {lost} of {tries} tries: {out}"
    );
}
