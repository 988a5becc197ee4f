//! Measures the memory one connection costs with and without permessage-deflate, in both roles.
//!
//! ```sh
//! cargo run --release -p volley --example deflate_memory -- [CONNECTIONS]   # default 500
//! ```
//!
//! For each configuration a fresh server process starts; a fresh client process opens the
//! connections, each sending one 16 KiB compressible text message that the server echoes (so
//! both ends have compressed and inflated once), and holds them open. Each process reads its
//! anonymous resident memory (`RssAnon` in `/proc/self/status`) before and after; the difference
//! divided by the number of connections is printed per role. Socket buffers live in the kernel and
//! are not counted.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use volley::{ClientBuilder, Config, DeflateConfig, Message, Server};

const MODES: [(&str, &str); 4] = [
    ("off", "no compression"),
    ("takeover", "permessage-deflate, context takeover (default)"),
    (
        "no-takeover",
        "permessage-deflate, no context takeover (both directions)",
    ),
    (
        "takeover-w10",
        "permessage-deflate, context takeover, 10-bit windows",
    ),
];

fn config(mode: &str) -> Config {
    let deflate = match mode {
        "off" => None,
        "takeover" => Some(DeflateConfig::default()),
        "no-takeover" => Some(DeflateConfig::default().no_context_takeover(true)),
        "takeover-w10" => Some(
            DeflateConfig::default()
                .server_max_window_bits(10)
                .client_max_window_bits(10),
        ),
        other => panic!("unknown mode {other}"),
    };
    Config::default().deflate(deflate)
}

/// Anonymous resident memory of this process, in bytes.
fn rss_anon() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<usize>().ok())
        .expect("RssAnon")
        * 1024
}

fn message() -> String {
    let words = [
        "volley", "deflate", "window", "context", "takeover", "frame",
    ];
    let mut s = String::new();
    let mut i = 0usize;
    while s.len() < 16 * 1024 {
        s.push_str(words[(i * 7 + i / 5) % words.len()]);
        s.push(' ');
        i += 1;
    }
    s.truncate(16 * 1024);
    s
}

/// Client process: opens `n` connections to `url`, each exchanging one message; prints
/// `READY <bytes per connection>` and holds them until stdin closes.
async fn clients(url: &str, mode: &str, n: usize) {
    let before = rss_anon();
    let text = message();
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        let (mut ws, _) = ClientBuilder::new(url)
            .config(config(mode))
            .connect()
            .await
            .expect("connect");
        assert_eq!(ws.deflate().is_some(), mode != "off");
        ws.send(text.as_str()).await.expect("send");
        match ws.recv().await {
            Some(Ok(Message::Text(t))) => assert_eq!(t.len(), text.len()),
            other => panic!("unexpected {other:?}"),
        }
        open.push(ws);
    }
    let per = rss_anon().saturating_sub(before) / n;
    println!("READY {per}");
    std::io::stdout().flush().ok();
    let _ = tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await;
    drop(open);
}

/// Server process: serves `mode`, runs a client process with `n` connections, prints
/// `RESULT <server bytes per connection> <client bytes per connection>`.
async fn server(mode: &str, n: usize) {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .config(config(mode));
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(m)) = ws.recv().await {
            if m.is_data() && ws.send(m).await.is_err() {
                break;
            }
        }
    }));
    // Let the runtime settle before the baseline.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = rss_anon();
    let exe = std::env::current_exe().expect("current exe");
    let mut child = Command::new(exe)
        .args(["--clients", &format!("ws://{addr}/"), mode, &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn clients");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read");
        line
    })
    .await
    .expect("join");
    let client_per: usize = line
        .trim()
        .strip_prefix("READY ")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unexpected client output {line:?}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server_per = rss_anon().saturating_sub(before) / n;
    drop(child.stdin.take());
    let _ = child.wait();
    println!("RESULT {server_per} {client_per}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("--clients") => rt.block_on(clients(&args[1], &args[2], args[3].parse().unwrap())),
        Some("--server") => rt.block_on(server(&args[1], args[2].parse().unwrap())),
        other => {
            let n: usize = other.map_or(500, |v| v.parse().expect("CONNECTIONS"));
            println!(
                "memory per connection (RssAnon delta / {n} connections, one 16 KiB message each way)"
            );
            println!("| configuration | server | client |");
            println!("| --- | ---: | ---: |");
            for (mode, label) in MODES {
                let out = Command::new(std::env::current_exe().expect("exe"))
                    .args(["--server", mode, &n.to_string()])
                    .output()
                    .expect("run server process");
                let text = String::from_utf8_lossy(&out.stdout);
                let result = text
                    .lines()
                    .find_map(|l| l.strip_prefix("RESULT "))
                    .unwrap_or_else(|| panic!("{mode}: no result: {text}"));
                let mut parts = result.split_whitespace().map(|v| v.parse::<f64>().unwrap());
                let (s, c) = (parts.next().unwrap(), parts.next().unwrap());
                println!(
                    "| {label} | {:.1} KiB | {:.1} KiB |",
                    s / 1024.0,
                    c / 1024.0
                );
            }
        }
    }
}
