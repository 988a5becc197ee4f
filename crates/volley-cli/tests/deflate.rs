//! `volley serve --deflate` and `volley connect --deflate`, as separate processes on loopback.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;
use volley::{ClientBuilder, Config, DeflateConfig, Message};

const WAIT: Duration = Duration::from_secs(20);

fn volley() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.kill_on_drop(true);
    cmd
}

/// Starts `volley serve` with `args` on a free port; returns it, its address and its
/// "listening" line.
async fn serve(args: &[&str]) -> (Child, SocketAddr, String) {
    for _ in 0..5 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut child = volley()
            .args(["serve", "--bind", &addr.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn volley serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let listening = timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("listening") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .expect("volley serve printed nothing in time");
        if let Some(line) = listening {
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            return (child, addr, line);
        }
    }
    panic!("volley serve did not start");
}

/// Runs `volley connect <url> <args>` with `input` on stdin; returns (success, stdout, stderr).
async fn connect(url: &str, args: &[&str], input: &str) -> (bool, String, String) {
    let mut child = volley()
        .arg("connect")
        .arg(url)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volley connect");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    let out = timeout(WAIT, child.wait_with_output())
        .await
        .expect("volley connect finished in time")
        .expect("wait");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_and_connect_negotiate_compression() {
    let (_server, addr, listening) = serve(&["--deflate"]).await;
    assert!(listening.contains("permessage-deflate"), "{listening}");
    let url = format!("ws://{addr}/");
    let long = "compress me ".repeat(500);
    let (ok, stdout, stderr) = connect(&url, &["--deflate"], &format!("hello\n{long}\n")).await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, format!("hello\n{long}\n"));
    assert!(
        stderr.contains("volley connect: compression: permessage-deflate"),
        "{stderr}"
    );

    // The library client sees the server's answer too.
    let config = Config::default().deflate(Some(DeflateConfig::default()));
    let (mut ws, response) = ClientBuilder::new(&url)
        .config(config)
        .connect()
        .await
        .expect("connect");
    assert!(response.deflate.is_some());
    ws.send(long.as_str()).await.unwrap();
    let echo = timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap();
    assert_eq!(echo, Message::text(long));
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn no_context_takeover_is_negotiated_both_ways() {
    let (_server, addr, _) = serve(&["--deflate", "--deflate-no-context-takeover"]).await;
    let (ok, stdout, stderr) = connect(
        &format!("ws://{addr}/"),
        &["--deflate", "--deflate-no-context-takeover"],
        "abc\n",
    )
    .await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, "abc\n");
    assert!(
        stderr.contains(
            "compression: permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_server_without_deflate_declines() {
    let (_server, addr, listening) = serve(&[]).await;
    assert!(!listening.contains("permessage-deflate"), "{listening}");
    let (ok, stdout, stderr) = connect(&format!("ws://{addr}/"), &["--deflate"], "plain\n").await;
    assert!(ok, "stderr: {stderr}");
    assert_eq!(stdout, "plain\n");
    assert!(
        stderr.contains("the server declined permessage-deflate"),
        "{stderr}"
    );
}
