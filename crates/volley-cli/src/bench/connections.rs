//! `volley bench connections`: open N idle WebSocket connections, hold them, and report the
//! server's memory growth per connection from `/proc/<pid>/status`.
//!
//! This process holds N sockets: it raises its soft open-files limit to the hard limit first and
//! refuses a count above it. Past [`PER_SOURCE`] connections to a loopback server, client
//! sockets are bound to 127.0.0.b, b + 1, … in turn (b depends on the server's port) so that no
//! source address runs out of ephemeral ports.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;

use super::wire::frame_header;
use super::{
    CONNECT_TIMEOUT, Progress, Target, current_thread_runtime, parse_duration, round3, ws_handshake,
};

/// Connections per source address when they are spread over several.
pub(super) const PER_SOURCE: usize = 10_000;
/// File descriptors kept free for everything else.
pub(super) const SPARE_FDS: u64 = 64;
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;

/// Arguments of `volley bench connections`.
#[derive(clap::Args)]
pub(crate) struct ConnectionsArgs {
    /// The server: ws://host:port/path.
    #[arg(long)]
    url: String,
    /// Number of idle connections to open.
    #[arg(long)]
    count: usize,
    /// The server's process id: its memory is read from /proc/<pid>/status.
    #[arg(long)]
    server_pid: Option<u32>,
    /// How long to hold the connections once all are open (the memory is read after --settle).
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    hold: Duration,
    /// Time the server gets after the last connection opened before its memory is read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// A text message each connection sends once, right after its handshake (e.g.
    /// '{"join": "room"}' to measure members of `volley serve`'s /chat).
    #[arg(long)]
    send: Option<String>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// The growth of VmRSS and of RssAnon from `before` to `after` per connection of `opened`, in
/// bytes (each `None` where a reading is missing or nothing was opened).
pub(super) fn per_connection(
    before: &Option<Memory>,
    after: &Option<Memory>,
    opened: usize,
) -> (Option<f64>, Option<f64>) {
    let delta = |f: fn(&Memory) -> Option<u64>| match (
        before.as_ref().and_then(f),
        after.as_ref().and_then(f),
    ) {
        (Some(b), Some(a)) if opened > 0 => Some((a as f64 - b as f64) * 1024.0 / opened as f64),
        _ => None,
    };
    (delta(|m| m.vm_rss), delta(|m| m.rss_anon))
}

/// Memory figures of a process, in KiB (as /proc reports them).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Memory {
    pub(super) vm_rss: Option<u64>,
    pub(super) rss_anon: Option<u64>,
}

pub(super) fn read_memory(pid: u32) -> Result<Memory, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let field = |name: &str| {
        status.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            rest.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
    };
    let memory = Memory {
        vm_rss: field("VmRSS"),
        rss_anon: field("RssAnon"),
    };
    if memory.vm_rss.is_none() {
        return Err(format!("{path} has no VmRSS line"));
    }
    Ok(memory)
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub(super) fn raise_nofile() -> Result<u64, String> {
    rlimit::increase_nofile_limit(u64::MAX)
        .map_err(|e| format!("cannot raise the open-files limit: {e}"))
}

pub(super) fn run(args: ConnectionsArgs) -> Result<ExitCode, String> {
    let target = Target::parse(&args.url)?;
    let Some(uri) = target.uri.clone() else {
        return Err("--url must be a ws:// URL".into());
    };
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if args.concurrency == 0 || args.concurrency > 10_000 {
        return Err("--concurrency must be between 1 and 10000".into());
    }
    let limit = raise_nofile()?;
    if args.count as u64 + SPARE_FDS > limit {
        return Err(format!(
            "--count {} needs {} open files, but this process may open only {limit} (the hard \
             RLIMIT_NOFILE; raise it with `ulimit -Hn` as root, or open fewer)",
            args.count,
            args.count as u64 + SPARE_FDS
        ));
    }
    let spread = args.count > PER_SOURCE && is_loopback_v4(target.addr);
    // The --send message, as the masked frame every connection writes.
    let hello: Option<Arc<[u8]>> = args.send.as_deref().map(|text| {
        let mut client = volley::proto::Connection::new(
            volley::Role::Client,
            volley::proto::ProtocolConfig::default(),
        );
        let _ = client.send(volley::Message::text(text.to_owned()));
        let mut frame = Vec::new();
        while let Some(bytes) = client.poll_transmit() {
            frame.extend_from_slice(&bytes);
        }
        frame.into()
    });
    let before = args.server_pid.map(read_memory).transpose()?;
    let runtime = current_thread_runtime()?;
    let counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(args.hold + args.settle, args.json, counter.clone(), "conn");
    let started = Instant::now();
    let closed = Arc::new(AtomicU64::new(0));
    let mut holders = JoinSet::new();
    let (opened, failures, errors) = runtime.block_on(async {
        let mut tasks = JoinSet::new();
        let mut opened = 0usize;
        let mut failures = 0u64;
        let mut errors = Vec::new();
        // Each open connection gets a task that answers keep-alive pings (as an idle client
        // does) and notices a close.
        let mut collect =
            |done: Result<Result<TcpStream, String>, tokio::task::JoinError>| match done {
                Ok(Ok(stream)) => {
                    opened += 1;
                    counter.fetch_add(1, Ordering::Relaxed);
                    holders.spawn(hold(stream, closed.clone()));
                }
                Ok(Err(e)) => {
                    failures += 1;
                    if errors.len() < MAX_ERRORS_KEPT {
                        errors.push(e);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if errors.len() < MAX_ERRORS_KEPT {
                        errors.push(format!("connection task: {e}"));
                    }
                }
            };
        for index in 0..args.count {
            if tasks.len() >= args.concurrency
                && let Some(done) = tasks.join_next().await
            {
                collect(done);
            }
            let source = spread.then(|| source_address(index, target.addr.port()));
            let (addr, uri) = (target.addr, uri.clone());
            let hello = hello.clone();
            tasks.spawn(async move {
                let open = async {
                    use tokio::io::AsyncWriteExt;
                    let mut stream = connect_from(addr, source).await?;
                    ws_handshake(&mut stream, &uri).await?;
                    if let Some(frame) = &hello {
                        (stream.write_all(frame).await).map_err(|e| format!("send: {e}"))?;
                    }
                    Ok::<_, String>(stream)
                };
                tokio::time::timeout(CONNECT_TIMEOUT, open)
                    .await
                    .map_err(|_| {
                        format!("connection {index}: no handshake in {CONNECT_TIMEOUT:?}")
                    })?
                    .map_err(|e| format!("connection {index}: {e}"))
            });
        }
        while let Some(done) = tasks.join_next().await {
            collect(done);
        }
        (opened, failures, errors)
    });
    let open_secs = started.elapsed().as_secs_f64();
    let held_from = Instant::now();
    // The runtime keeps running while the connections are held, so that pings are answered.
    let after = runtime.block_on(async {
        tokio::time::sleep(args.settle).await;
        let after = args.server_pid.map(read_memory).transpose();
        if let Some(rest) = args.hold.checked_sub(held_from.elapsed()) {
            tokio::time::sleep(rest).await;
        }
        after
    })?;
    drop(progress);
    let closed = closed.load(Ordering::Relaxed);
    runtime.block_on(async {
        holders.abort_all();
        while holders.join_next().await.is_some() {}
    });
    runtime.shutdown_background();
    let (rss_per, anon_per) = per_connection(&before, &after, opened);
    let ok = failures == 0 && opened > 0 && closed == 0;
    if args.json {
        let kib = |m: &Option<Memory>, f: fn(&Memory) -> Option<u64>| m.as_ref().and_then(f);
        let json = serde_json::json!({
            "mode": "connections",
            "url": args.url,
            "count": args.count,
            "send": args.send,
            "opened": opened,
            "failed": failures,
            "closed_while_held": closed,
            "source_addresses": if spread { args.count.div_ceil(PER_SOURCE) } else { 1 },
            "open_s": round3(open_secs),
            "open_per_s": round3(opened as f64 / open_secs.max(1e-9)),
            "server_pid": args.server_pid,
            "vm_rss_kib_before": kib(&before, |m| m.vm_rss),
            "vm_rss_kib_after": kib(&after, |m| m.vm_rss),
            "rss_anon_kib_before": kib(&before, |m| m.rss_anon),
            "rss_anon_kib_after": kib(&after, |m| m.rss_anon),
            "vm_rss_bytes_per_connection": rss_per.map(round3),
            "rss_anon_bytes_per_connection": anon_per.map(round3),
            "errors": errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench connections {}: opened {opened} of {} in {open_secs:.2} s ({:.0}/s){}",
            args.url,
            args.count,
            opened as f64 / open_secs.max(1e-9),
            if spread {
                format!(
                    ", from {} source addresses",
                    args.count.div_ceil(PER_SOURCE)
                )
            } else {
                String::new()
            }
        );
        match (before, after) {
            (Some(b), Some(a)) => {
                let show = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v} KiB"));
                println!(
                    "  server VmRSS {} → {}: {} per connection",
                    show(b.vm_rss),
                    show(a.vm_rss),
                    rss_per.map_or("?".into(), |v| format!("{:.2} KiB", v / 1024.0))
                );
                println!(
                    "  server RssAnon {} → {}: {} per connection",
                    show(b.rss_anon),
                    show(a.rss_anon),
                    anon_per.map_or("?".into(), |v| format!("{:.2} KiB", v / 1024.0))
                );
            }
            _ => println!("  (no --server-pid: memory not measured)"),
        }
        println!("  failed {failures}, closed by the server while held {closed}");
        for e in &errors {
            println!("    {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Holds an idle connection: answers pings with pongs, counts it in `closed` when the server
/// closes it (a close frame or the end of the stream). Runs until aborted.
async fn hold(mut stream: TcpStream, closed: Arc<AtomicU64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const KEY: [u8; 4] = [0x5a, 0x13, 0xc7, 0x88];
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        // Walk the complete frames (unmasked, from the server).
        while buf.len() >= 2 {
            let Some((header, len)) = frame_header(&buf) else {
                break;
            };
            if len > 1 << 16 {
                // Not an idle connection's traffic: give up on it.
                closed.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if buf.len() < header + len {
                break;
            }
            match buf[0] & 0x0f {
                0x8 => {
                    closed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                0x9 if len <= 125 => {
                    let payload = &buf[header..header + len];
                    let mut pong = vec![0x8a, 0x80 | payload.len() as u8];
                    pong.extend_from_slice(&KEY);
                    pong.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
                    if stream.write_all(&pong).await.is_err() {
                        break;
                    }
                }
                _ => {}
            }
            buf.drain(..header + len);
        }
    }
    closed.fetch_add(1, Ordering::Relaxed);
}

pub(super) fn is_loopback_v4(addr: SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_loopback())
}

/// The source address of connection `index` to a server on `port`: 127.0.0.b for the first
/// [`PER_SOURCE`] connections, b + 1 for the next, and so on, where b = 2 + 4 × (port mod 60).
/// Runs against servers on different ports use different addresses, so the previous run's
/// sockets in TIME_WAIT (60 s) don't slow the next one down (binding before connecting cannot
/// reuse their ports).
pub(super) fn source_address(index: usize, port: u16) -> SocketAddr {
    let base = 2 + 4 * (usize::from(port) % 60);
    let n = (base + index / PER_SOURCE).min(254) as u8;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)), 0)
}

/// Connects to `addr`, from `source` if given (a failed bind keeps its error kind, with the
/// address in the message).
pub(super) async fn connect_socket(
    addr: SocketAddr,
    source: Option<SocketAddr>,
) -> std::io::Result<TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }?;
    if let Some(source) = source {
        socket
            .bind(source)
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot bind {source}: {e}")))?;
    }
    socket.connect(addr).await
}

pub(super) async fn connect_from(
    addr: SocketAddr,
    source: Option<SocketAddr>,
) -> Result<TcpStream, String> {
    connect_socket(addr, source)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_rotate() {
        assert_eq!(source_address(0, 9000).ip().to_string(), "127.0.0.2");
        assert_eq!(
            source_address(PER_SOURCE, 9000).ip().to_string(),
            "127.0.0.3"
        );
        assert_eq!(source_address(0, 9001).ip().to_string(), "127.0.0.6");
        assert_eq!(source_address(0, 9059).ip().to_string(), "127.0.0.238");
    }

    #[test]
    fn reads_own_memory() {
        let m = read_memory(std::process::id()).expect("own /proc status");
        assert!(m.vm_rss.is_some_and(|v| v > 0));
    }
}
