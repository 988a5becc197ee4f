//! The `volley` binary: `serve` and `connect` as separate processes, on loopback only.

use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;
use tokio::time::timeout;
use volley::{CloseCode, CloseFrame, Config, Message, Server};

mod common;
#[allow(unreachable_pub)] // `pub` for the volley tests, which share it through `common`
#[path = "../../volley/tests/common/pki.rs"]
mod pki;

use common::{Serve, WAIT, free_port, volley};

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

struct Output {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: String,
}

/// Runs `volley connect <args>` with `input` on stdin (then EOF), bounded by [`WAIT`].
async fn connect(args: &[&str], input: &[u8]) -> Output {
    let mut child = volley()
        .arg("connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volley connect");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        // Dropping stdin here is the EOF.
    });
    let output = timeout(WAIT, child.wait_with_output())
        .await
        .expect("volley connect did not exit in time")
        .expect("wait for volley connect");
    let _ = writer.await;
    Output {
        status: output.status,
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test]
async fn serve_and_connect_round_trip_text() {
    let server = Serve::start().await;
    let out = connect(&[&server.url()], b"hello\nworld\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello\nworld\n",
        "stderr: {}",
        out.stderr
    );
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(out.stderr.contains("closed: 1000"), "{}", out.stderr);
}

#[tokio::test]
async fn round_trip_is_reliable() {
    // The close follows the last line immediately; the echoes must still come back first.
    let server = Serve::start().await;
    for round in 0..10 {
        let out = connect(&[&server.url()], b"one\ntwo\nthree\n").await;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "one\ntwo\nthree\n",
            "round {round}, stderr: {}",
            out.stderr
        );
        assert!(out.status.success(), "round {round}: {}", out.stderr);
    }
}

#[tokio::test]
async fn serve_and_connect_round_trip_binary() {
    let server = Serve::start().await;
    let out = connect(&["--binary", &server.url()], b"bin one\nbin two\n").await;
    assert_eq!(out.stdout, b"bin one\nbin two\n", "stderr: {}", out.stderr);
    assert!(out.status.success(), "{:?}: {}", out.status, out.stderr);
    assert!(out.stderr.contains("closed: 1000"), "{}", out.stderr);
}

#[tokio::test]
async fn binary_flag_sends_binary_messages_and_text_mode_sends_text() {
    // An in-process server reports each message's type back as text.
    let server = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(m)) = ws.recv().await {
            let reply = match m {
                Message::Text(t) => format!("text:{t}"),
                Message::Binary(b) => format!("binary:{}", String::from_utf8_lossy(&b)),
                _ => continue,
            };
            if ws.send(reply).await.is_err() {
                break;
            }
        }
    }));
    let url = format!("ws://{addr}/");
    let out = connect(&["--binary", &url], b"abc\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "binary:abc\n",
        "{}",
        out.stderr
    );
    let out = connect(&[&url], b"abc\n").await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "text:abc\n",
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_with_a_message() {
    let port = free_port();
    let out = connect(&[&format!("ws://127.0.0.1:{port}/")], b"").await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("volley connect"), "{}", out.stderr);
    assert!(
        out.stderr.to_lowercase().contains("refused"),
        "the message should say why: {}",
        out.stderr
    );
}

#[tokio::test]
async fn connect_with_a_bad_url_fails() {
    let out = connect(&["http://127.0.0.1:1/"], b"").await;
    assert!(!out.status.success());
    assert!(out.stderr.contains("URL"), "{}", out.stderr);
}

/// A raw server that accepts one connection, completes the handshake by hand, sends `frames`
/// and then drops the TCP connection (no close frame unless `frames` has one).
async fn scripted_server(frames: Vec<u8>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await.unwrap() == 0 {
                return;
            }
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        let key = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("sec-websocket-key")
                    .then(|| v.trim().to_owned())
            })
            .unwrap();
        let accept = volley::proto::handshake::accept_key(key.as_bytes());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        stream.write_all(response.as_bytes()).await.unwrap();
        stream.write_all(&frames).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(stream);
    });
    addr
}

fn server_text(s: &str) -> Vec<u8> {
    let mut f = vec![0x81, s.len() as u8];
    f.extend_from_slice(s.as_bytes());
    f
}

#[tokio::test]
async fn server_dropping_tcp_without_close_is_a_failure() {
    let addr = scripted_server(server_text("bye?")).await;
    // stdin stays open (like an interactive session): the CLI must still exit on its own.
    let mut child = volley()
        .args(["connect", &format!("ws://{addr}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volley connect");
    let stdin = child.stdin.take();
    let output = timeout(WAIT, child.wait_with_output())
        .await
        .expect("volley connect must exit when the server goes away, even with stdin open")
        .expect("wait");
    drop(stdin);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "bye?\n");
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("1006") || stderr.contains("without a close frame"),
        "{stderr}"
    );
}

#[tokio::test]
async fn server_closing_with_an_error_code_exits_non_zero() {
    let close = CloseFrame::new(CloseCode(4000), "go away");
    let mut frame = vec![0x88, (2 + close.reason.len()) as u8];
    frame.extend_from_slice(&close.code.0.to_be_bytes());
    frame.extend_from_slice(close.reason.as_bytes());
    let addr = scripted_server(frame).await;
    let out = connect(&[&format!("ws://{addr}/")], b"").await;
    assert!(!out.status.success());
    assert!(
        out.stderr.contains("closed: 4000 go away"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn messages_over_the_max_size_fail_the_client() {
    // `--max-message-size` applies to what the client accepts.
    let server = Server::bind("127.0.0.1:0")
        .await
        .unwrap()
        .config(Config::default());
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve(|mut ws, _| async move {
        let _ = ws.send("x".repeat(100)).await;
        while let Some(Ok(_)) = ws.recv().await {}
    }));
    let out = connect(&["--max-message-size", "10", &format!("ws://{addr}/")], b"").await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(out.stderr.contains("exceeds"), "{}", out.stderr);
}

#[tokio::test]
async fn serve_on_a_port_in_use_fails() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let output = timeout(
        WAIT,
        volley()
            .args(["serve", "--bind", &addr.to_string()])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("volley serve should exit at once")
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot listen"), "{stderr}");
    drop(taken);
}

/// SIGTERM: the server stops accepting, closes open connections with 1001 (after what it had
/// queued), and exits 0.
#[tokio::test]
async fn sigterm_shuts_down_gracefully_with_1001() {
    let mut serve = Serve::start().await;
    let mut ws = volley::connect(&serve.url()).await.expect("connect");
    ws.send("before shutdown").await.expect("send");
    assert_eq!(
        timeout(WAIT, ws.recv())
            .await
            .expect("echo")
            .expect("open")
            .expect("ok"),
        Message::text("before shutdown")
    );
    let pid = serve.child.id().expect("pid").to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    match timeout(WAIT, ws.recv()).await.expect("close in time") {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::GOING_AWAY),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(timeout(WAIT, ws.recv()).await.expect("ends").is_none());
    let status = timeout(WAIT, serve.child.wait())
        .await
        .expect("server exits in time")
        .expect("wait");
    assert!(status.success(), "{status}");
}

/// The README's promise: `volley serve` answers a real Python `websockets` client (and Node `ws`),
/// which run their whole scenario (text, binary, empty, 1 MiB, fragmented, ping, close codes).
#[tokio::test]
async fn volley_serve_answers_python_websockets_and_node_ws_clients() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".deps/py/bin/python");
    assert!(
        python.exists() && repo.join("e2e/node_modules/ws").exists(),
        "peers missing: run scripts/install-peers"
    );
    let serve = Serve::start().await;
    for (program, script) in [
        (python.clone(), repo.join("e2e/python/client.py")),
        (
            std::path::PathBuf::from("node"),
            repo.join("e2e/node/client.js"),
        ),
    ] {
        let output = timeout(
            Duration::from_secs(90),
            Command::new(&program)
                .arg(&script)
                .arg(serve.url())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("peer client finished in time")
        .expect("spawn peer client");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("PASS close") && !stdout.contains("FAIL"),
            "{} against volley serve failed ({}):\n{stdout}\n{}",
            script.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `volley serve --tls-cert … --tls-key …` answers a real Python `websockets` client over `wss://`
/// (whole scenario), trusting only a test CA.
#[tokio::test]
async fn volley_serve_over_tls_answers_python_websockets() {
    let repo = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".deps/py/bin/python");
    assert!(python.exists(), "peers missing: run scripts/install-peers");
    let pki = pki::Pki::new("cli");
    let (ca_pem, cert_pem, key_pem) = (
        pki.path("ca.pem"),
        pki.path("cert.pem"),
        pki.path("key.pem"),
    );

    let serve = Serve::start_with(&[
        "--tls-cert",
        cert_pem.to_str().expect("utf-8 path"),
        "--tls-key",
        key_pem.to_str().expect("utf-8 path"),
    ])
    .await;
    let url = format!("wss://localhost:{}/", serve.addr.port());
    let output = timeout(
        Duration::from_secs(90),
        Command::new(&python)
            .arg(repo.join("e2e/python/client.py"))
            .arg(&url)
            .arg("--ca")
            .arg(&ca_pem)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("python client finished in time")
    .expect("spawn python");
    drop(pki);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("PASS close") && !stdout.contains("FAIL"),
        "python websockets over wss against volley serve failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
