//! Shared helpers for the peer echo servers used by `scripts/bench-peers`.
//!
//! Every server binary takes `--port N` (0 = ephemeral), listens on 127.0.0.1, runs a
//! single-threaded tokio runtime (`current_thread`) with one task per connection, and prints
//! `LISTENING <port>` on stdout once it is bound.

use std::io::Write;
use std::net::SocketAddr;

/// Largest message/frame the WebSocket servers accept (the benchmark sends at most 16 KiB).
pub const MAX_MESSAGE: usize = 1 << 20;

/// Parses `--port N` from the command line; exits with status 2 and a message on bad input.
pub fn port_from_args() -> u16 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut port = None;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--port" => {
                let Some(v) = args.get(i + 1).and_then(|v| v.parse::<u16>().ok()) else {
                    usage("--port needs a number 0..=65535");
                };
                port = Some(v);
                i += 2;
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    port.unwrap_or_else(|| usage("--port N is required"))
}

fn usage(msg: &str) -> ! {
    let me = std::env::args().next().unwrap_or_default();
    if !msg.is_empty() {
        eprintln!("{me}: {msg}");
    }
    eprintln!("usage: {me} --port N   (echo server on 127.0.0.1:N, single-threaded)");
    std::process::exit(2)
}

/// Binds 127.0.0.1:`port` and announces `LISTENING <port>` on stdout.
pub async fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let port = listener.local_addr()?.port();
    let mut out = std::io::stdout().lock();
    writeln!(out, "LISTENING {port}")?;
    out.flush()?;
    Ok(listener)
}

/// A single-threaded tokio runtime with IO enabled (no timers are needed by the echo servers).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("cannot build the tokio runtime")
}
