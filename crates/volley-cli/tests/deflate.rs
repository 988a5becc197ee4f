//! `volley serve --deflate` and `volley connect --deflate`, as separate processes on loopback.

use std::net::SocketAddr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::time::timeout;
use volley::{ClientBuilder, Config, DeflateConfig, Message};

mod common;

use common::{Serve, WAIT, volley};

/// Starts `volley serve` with `args` on a free port; returns it, its address and its
/// "listening" line.
async fn serve(args: &[&str]) -> (Serve, SocketAddr, String) {
    let serve = Serve::start_with(args).await;
    let (addr, line) = (serve.addr, serve.listening.clone());
    (serve, addr, line)
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
