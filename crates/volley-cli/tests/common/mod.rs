//! Shared by the CLI tests: run `volley serve` on a free loopback port and the `volley` binary.
#![allow(dead_code, unreachable_pub)]

/// A private redis-server on a free loopback port (the helper of volley-redis' tests).
#[path = "../../../volley-redis/tests/common/redis_server.rs"]
pub mod redis_server;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::timeout;

/// Upper bound on every wait in the CLI tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// The `volley` binary, killed when its handle is dropped.
pub fn volley() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volley"));
    cmd.env("RUST_LOG", "info").kill_on_drop(true);
    cmd
}

/// A free loopback port: bind port 0 and drop the listener.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local_addr")
        .port()
}

/// A running `volley serve`; killed on drop.
pub struct Serve {
    pub child: Child,
    pub addr: SocketAddr,
    /// The "listening on …" line it printed.
    pub listening: String,
}

impl Serve {
    /// Starts `volley serve --bind 127.0.0.1:<free port>` and waits for its "listening" line,
    /// retrying with another port if the chosen one was taken in the meantime.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// Like [`start`](Self::start), with extra `volley serve` arguments.
    pub async fn start_with(extra: &[&str]) -> Self {
        for _ in 0..5 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
                .parse()
                .expect("socket address");
            let mut child = volley()
                .args(["serve", "--bind", &addr.to_string()])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn volley serve");
            let stderr = child.stderr.take().expect("stderr");
            let mut lines = BufReader::new(stderr).lines();
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
            if let Some(listening) = listening {
                assert!(listening.contains(&addr.to_string()), "{listening}");
                // Keep draining stderr so the server never blocks on a full pipe.
                tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
                return Self {
                    child,
                    addr,
                    listening,
                };
            }
            // The port was taken between choosing and binding: try another one.
            let _ = timeout(WAIT, child.wait()).await;
        }
        panic!("volley serve did not start in 5 attempts");
    }

    /// `ws://` URL of the server's root.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}
