//! `volley bench`: a load generator for WebSocket servers (see docs/BENCH.md).
//!
//! Five modes:
//! - [`echo`]: N connections keep K messages in flight each against an echo server and verify
//!   every echo byte for byte; msg/s, MB/s and round-trip latency percentiles. With a `tcp://`
//!   target (`--raw`) it skips the HTTP handshake and expects its masked frames back verbatim:
//!   the same load generator against a raw TCP echo server measures the ceiling.
//! - [`fanout`]: N subscribers of a topic on `volley serve`'s `/chat`, one publisher.
//! - [`connections`]: N idle connections and the server's memory growth per connection.
//! - [`socketio`]: a Socket.IO server over WebSocket: `message` → `message-back` and
//!   `emitWithAck` round trips, broadcasts to a room, idle clients' memory.
//! - [`storm`]: a reconnect storm: N clients connect at once, each completes the handshake and
//!   one echo; handshakes/s, connect-time percentiles and failures by kind.
//! - [`churn`]: connections opened at a fixed rate, each exchanging a few messages and ending
//!   by one of a mix of close kinds (clean, FIN, resets, half-open), while the server's memory,
//!   file descriptors and connections are sampled: do they come back to where they started?
//!
//! Each mode builds its own tokio runtimes (`current_thread`, one per `--threads`), so that the
//! generator's cost is known and can be pinned to one core.

mod churn;
mod connections;
mod echo;
mod fanout;
mod socketio;
mod storm;
mod wire;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley::proto::handshake::{ClientHandshake, HandshakeError, HeaderLimits};

/// Upper bound on connecting and on the opening handshake of one connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `volley bench` and its modes.
#[derive(clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Echo load: N connections, K messages in flight each, every echo verified.
    Echo(echo::EchoArgs),
    /// Topic fan-out on `volley serve`'s /chat: N subscribers, one publisher.
    Fanout(fanout::FanoutArgs),
    /// Open N idle connections and report the server's memory growth per connection.
    Connections(connections::ConnectionsArgs),
    /// Socket.IO v4 over WebSocket: event or ack round trips, room broadcasts, idle clients.
    Socketio(socketio::SocketIoArgs),
    /// Reconnect storm: N clients connect at once (K attempts in flight), each completes the
    /// handshake and one echo and stays open; handshakes/s, connect times, failures by kind.
    Storm(storm::StormArgs),
    /// Connections opened at a fixed rate and closed in a mix of ways (clean, reset, half-open),
    /// with the server's memory, file descriptors and connections sampled.
    Churn(churn::ChurnArgs),
}

/// Runs one `volley bench` mode to completion (it builds its own runtimes).
pub(crate) fn run(command: BenchCommand) -> ExitCode {
    let result = match command {
        BenchCommand::Echo(args) => echo::run(args),
        BenchCommand::Fanout(args) => fanout::run(args),
        BenchCommand::Connections(args) => connections::run(args),
        BenchCommand::Socketio(args) => socketio::run(args),
        BenchCommand::Storm(args) => storm::run(args),
        BenchCommand::Churn(args) => churn::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("volley bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Parses a duration: `10s`, `500ms`, `2m`, `1.5s` or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=1e6).contains(&(v * scale)) => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "{s:?} is not a duration (examples: 10s, 500ms, 2m)"
        )),
    }
}

/// Where to connect: a `ws://` URL (WebSocket handshake) or a `tcp://` address (raw).
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The resolved socket address.
    pub(crate) addr: SocketAddr,
    /// The `ws://` URI (for the handshake); `None` for `tcp://`.
    pub(crate) uri: Option<http::Uri>,
}

impl Target {
    /// Parses `ws://host:port/path` or `tcp://host:port` and resolves the host.
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let raw = match uri.scheme_str() {
            Some("ws") => false,
            Some("tcp") => true,
            Some("wss") => {
                return Err(
                    "wss:// is not supported by volley bench: use ws:// (the load \
                            generator measures the WebSocket layer, not TLS)"
                        .into(),
                );
            }
            _ => return Err(format!("{url:?}: expected a ws:// or tcp:// URL")),
        };
        let host = uri
            .host()
            .ok_or_else(|| format!("{url:?} has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = uri
            .port_u16()
            .or(if raw { None } else { Some(80) })
            .ok_or_else(|| format!("{url:?} has no port"))?;
        let addr = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} resolves to no address"))?;
        Ok(Self {
            addr,
            uri: (!raw).then_some(uri),
        })
    }

    /// True for a `tcp://` target: no handshake, frames echoed verbatim.
    pub(crate) fn is_raw(&self) -> bool {
        self.uri.is_none()
    }
}

/// Completes the client's opening handshake on `stream` for `uri`; returns the bytes read after
/// the response (the first frames, if any).
pub(crate) async fn ws_handshake(
    stream: &mut TcpStream,
    uri: &http::Uri,
) -> Result<Vec<u8>, String> {
    let handshake = ClientHandshake::new(uri, &[], &http::HeaderMap::new())
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::time::timeout(CONNECT_TIMEOUT, client_handshake(stream, &handshake))
        .await
        .map_err(|_| format!("no handshake response within {CONNECT_TIMEOUT:?}"))?
        .map_err(|e| e.to_string())
}

/// Why a client's opening handshake failed (see [`client_handshake`]).
#[derive(Debug)]
pub(crate) enum HandshakeFailure {
    /// Writing the request failed.
    Send(std::io::Error),
    /// Reading the response failed.
    Receive(std::io::Error),
    /// The server closed the connection before its response was complete.
    Closed,
    /// The response was not an acceptable `101 Switching Protocols`.
    Refused(HandshakeError),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Send(e) => write!(f, "sending the handshake: {e}"),
            Self::Receive(e) => write!(f, "reading the handshake response: {e}"),
            Self::Closed => f.write_str("the server closed the connection during the handshake"),
            Self::Refused(e) => write!(f, "handshake refused: {e}"),
        }
    }
}

/// Sends `handshake`'s request on `stream` and reads and validates the response (no time
/// limit: the caller sets one); returns the bytes read after the response (the first frames,
/// if any).
pub(crate) async fn client_handshake(
    stream: &mut TcpStream,
    handshake: &ClientHandshake,
) -> Result<Vec<u8>, HandshakeFailure> {
    let limits = HeaderLimits::default();
    stream
        .write_all(handshake.request())
        .await
        .map_err(HandshakeFailure::Send)?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(HandshakeFailure::Receive)?;
        if n == 0 {
            return Err(HandshakeFailure::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        match handshake.parse_response(&buf, &limits) {
            Ok(Some((_, used))) => return Ok(buf.split_off(used)),
            Ok(None) => {}
            Err(e) => return Err(HandshakeFailure::Refused(e)),
        }
    }
}

/// A latency histogram in nanoseconds (1 ns to 10 minutes, 3 significant digits).
pub(crate) fn latency_histogram() -> Histogram<u64> {
    // The bounds are constants that satisfy the constructor's preconditions.
    Histogram::new_with_bounds(1, 600_000_000_000, 3).expect("valid histogram bounds")
}

/// Latency percentiles in microseconds, as a JSON object and as one line of text.
pub(crate) fn latency_summary(h: &Histogram<u64>) -> (serde_json::Value, String) {
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let (p50, p99, p999) = (us(0.5), us(0.99), us(0.999));
    let max = h.max() as f64 / 1000.0;
    let mean = h.mean() / 1000.0;
    let json = serde_json::json!({
        "samples": h.len(),
        "mean": round3(mean),
        "p50": round3(p50),
        "p99": round3(p99),
        "p99_9": round3(p999),
        "max": round3(max),
    });
    let text = format!(
        "p50 {p50:.1} µs, p99 {p99:.1} µs, p99.9 {p999:.1} µs (max {max:.1} µs, {} samples)",
        h.len()
    );
    (json, text)
}

/// Rounds to 3 decimals, for JSON output.
/// The CPU time process `pid` has used, in nanoseconds: the sum over its threads of the first
/// field of `/proc/<pid>/task/<tid>/schedstat` (time spent running).
pub(crate) fn cpu_time_ns(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut total = 0u64;
    for entry in entries.flatten() {
        let path = entry.path().join("schedstat");
        // A thread that ended meanwhile is skipped.
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let ns = (text.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| format!("{}: unexpected content {text:?}", path.display()))?;
        total += ns;
    }
    Ok(total)
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// A progress bar on stderr, driven by a thread that reads a shared counter, shown for runs
/// longer than ~2 s when stderr is a terminal and JSON output was not asked for.
pub(crate) struct Progress {
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Starts the bar for a run of `total`; `counter` counts completed operations (`unit`).
    pub(crate) fn start(total: Duration, json: bool, counter: Arc<AtomicU64>, unit: &str) -> Self {
        let show = !json && total > Duration::from_secs(2) && std::io::stderr().is_terminal();
        // Bounded: the run ends by `total` plus its grace period; stop a little after.
        let limit = total * 2 + CONNECT_TIMEOUT;
        Self::spawn(show, limit, counter, unit, move |elapsed, _| {
            (
                elapsed.as_millis().min(u128::from(u64::MAX)) as u64,
                total.as_millis() as u64,
            )
        })
    }

    /// Starts a bar that fills as `counter` goes to `total` operations (`unit`), for a run whose
    /// length is not known beforehand (at most `limit`); shown for at least `min_total`
    /// operations when stderr is a terminal and JSON output was not asked for.
    pub(crate) fn counting(
        total: u64,
        min_total: u64,
        limit: Duration,
        json: bool,
        counter: Arc<AtomicU64>,
        unit: &str,
    ) -> Self {
        let show = !json && total >= min_total && std::io::stderr().is_terminal();
        Self::spawn(show, limit, counter, unit, move |_, count| (count, total))
    }

    /// The bar's thread: every 200 ms, `position(elapsed, count)` gives (position, length).
    fn spawn(
        show: bool,
        limit: Duration,
        counter: Arc<AtomicU64>,
        unit: &str,
        position: impl Fn(Duration, u64) -> (u64, u64) + Send + 'static,
    ) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let thread = show.then(|| {
            let done = done.clone();
            let unit = unit.to_owned();
            std::thread::spawn(move || {
                let bar = indicatif::ProgressBar::new(position(Duration::ZERO, 0).1);
                if let Ok(style) = indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
                ) {
                    bar.set_style(style);
                }
                let start = Instant::now();
                let (mut last, mut last_at) = (0u64, start);
                while !done.load(Ordering::Relaxed) && start.elapsed() < limit {
                    std::thread::sleep(Duration::from_millis(200));
                    let now = Instant::now();
                    let count = counter.load(Ordering::Relaxed);
                    let rate = (count - last.min(count)) as f64
                        / now.duration_since(last_at).as_secs_f64().max(1e-9);
                    (last, last_at) = (count, now);
                    let (at, length) = position(now - start, count);
                    bar.set_length(length);
                    bar.set_position(at);
                    bar.set_message(format!("{rate:.0} {unit}/s"));
                }
                bar.finish_and_clear();
            })
        });
        Self { done, thread }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Builds a single-threaded runtime for the load generator.
pub(crate) fn current_thread_runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))
}
