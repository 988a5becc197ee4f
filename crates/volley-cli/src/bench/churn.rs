//! `volley bench churn`: connections open at a fixed rate for a set duration; each completes
//! the WebSocket handshake, exchanges a few verified messages and ends by one of a mix of close
//! kinds ([`Kind`]: a clean close handshake, a FIN without a close frame, TCP resets at several
//! points, half-open peers that go silent). Meanwhile the server's memory, open file
//! descriptors and TCP connections are sampled every second; the report says whether they came
//! back to where they started, and `--check` turns that into the exit code.
//!
//! What is sampled, and how (so that it works against any server on this machine):
//! - memory: `VmRSS` and `RssAnon` of `/proc/<pid>/status` (`--server-pid`);
//! - file descriptors: the entries of `/proc/<pid>/fd` (`--server-pid`);
//! - connections: the server's side of TCP connections to the target's address and port in
//!   `/proc/net/tcp` and `/proc/net/tcp6`: `ESTABLISHED` ones, and every one a process still
//!   holds (a socket inode, any state but `LISTEN`): what is left of those at the end was not
//!   released by the server.
//!
//! A half-open client (`silent`, `handshake-silent`) stops reading and writing but keeps its
//! socket open; only the server's timers (keep-alive pings, the opening-handshake timeout) can
//! free it. The client waits without reading for the server's FIN or RST (the socket's
//! read-closed readiness; the server's pings stay unread in its receive buffer) for at most
//! `--half-open-limit`; one the server has not closed by then is counted as stuck.
//!
//! One thread (a single-threaded runtime) drives the clients; the sampler is a thread of its own
//! so that its readings keep their times when the clients are busy.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::task::{JoinSet, LocalSet};
use volley::proto::handshake::ClientHandshake;

use super::connections::{
    Memory, PER_SOURCE, SPARE_FDS, connect_from, is_loopback_v4, raise_nofile, read_memory,
    source_address,
};
use super::socketio::{engineio_uri, payload};
use super::wire::Wire;
use super::{CONNECT_TIMEOUT, Progress, Target, current_thread_runtime, parse_duration, round3};

/// Upper bound on each step of a connection after its handshake: the message exchange, and the
/// close (the server's close frame and the end of its stream).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;
/// The largest server frame a client accepts.
const MAX_FRAME: usize = 1 << 20;
/// The mask key of every client frame.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
/// How often the sampler reads the server's figures.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the settle phase looks whether the server is back to its baseline.
const SETTLE_POLL: Duration = Duration::from_millis(200);
/// The Socket.IO namespace of `--protocol socketio` (`volley serve`'s chat).
const SIO_NAMESPACE: &str = "/chat";
/// The default mix of close kinds.
const DEFAULT_MIX: &str = "clean=30,drop=10,reset=10,silent=15,close-reset=10,handshake-reset=10,\
                           upgrade-reset=10,handshake-silent=5";

/// How a connection ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The close handshake: the client sends a close frame (1000), reads the server's and waits
    /// for the server to close the TCP connection.
    Clean,
    /// No close frame: the client shuts its side of the TCP connection down (FIN) and waits for
    /// the server to close its side.
    Drop,
    /// After the exchange, a TCP reset (`SO_LINGER` 0, then close).
    Reset,
    /// Half-open after the exchange: the client neither reads nor writes and keeps the socket
    /// open, until the server closes it or `--half-open-limit` passes.
    Silent,
    /// The client sends its close frame and resets the connection at once: a reset during the
    /// close handshake.
    CloseReset,
    /// A reset during the opening handshake: part of the HTTP request is sent (from nothing to
    /// all but its last byte, varying from connection to connection), then a reset.
    HandshakeReset,
    /// The whole HTTP request, then a reset as soon as the server's response starts to arrive
    /// (unread): a client gone right after the upgrade.
    UpgradeReset,
    /// Part of the HTTP request (as for `handshake-reset`), then silence (half-open during the
    /// opening handshake): only the server's handshake timeout frees it.
    HandshakeSilent,
}

impl Kind {
    const ALL: [Kind; 8] = [
        Self::Clean,
        Self::Drop,
        Self::Reset,
        Self::Silent,
        Self::CloseReset,
        Self::HandshakeReset,
        Self::UpgradeReset,
        Self::HandshakeSilent,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Clean => "clean",
            Self::Drop => "drop",
            Self::Reset => "reset",
            Self::Silent => "silent",
            Self::CloseReset => "close-reset",
            Self::HandshakeReset => "handshake-reset",
            Self::UpgradeReset => "upgrade-reset",
            Self::HandshakeSilent => "handshake-silent",
        }
    }

    /// Whether the client leaves the connection half-open for the server to free.
    fn half_open(self) -> bool {
        matches!(self, Self::Silent | Self::HandshakeSilent)
    }
}

/// The weights of the close kinds (indexed like [`Kind::ALL`]).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mix([u32; Kind::ALL.len()]);

impl Mix {
    /// Parses `clean=60,reset=20,silent=20`: kinds not named get weight 0.
    fn parse(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; Kind::ALL.len()];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected kind=weight (e.g. clean=60)"))?;
            let at = Kind::ALL
                .iter()
                .position(|k| k.name() == name.trim())
                .ok_or_else(|| {
                    let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
                    format!("unknown close kind {name:?} (kinds: {})", names.join(", "))
                })?;
            weights[at] = match weight.trim().parse::<u32>() {
                Ok(w) if w <= 1_000_000 => w,
                _ => return Err(format!("{part:?}: the weight must be 0 to 1000000")),
            };
        }
        if weights.iter().all(|&w| w == 0) {
            return Err(format!("{s:?}: no close kind has a weight above 0"));
        }
        Ok(Self(weights))
    }

    /// The sum of the weights.
    #[cfg(test)]
    fn total(&self) -> u64 {
        self.0.iter().map(|&w| u64::from(w)).sum()
    }

    /// `clean=35,drop=10,…` (kinds of weight 0 left out).
    fn describe(&self) -> String {
        let parts: Vec<String> = (Kind::ALL.iter().zip(self.0))
            .filter(|(_, w)| *w > 0)
            .map(|(k, w)| format!("{}={w}", k.name()))
            .collect();
        parts.join(",")
    }
}

/// Picks close kinds in the proportions of a [`Mix`], evenly interleaved and deterministic
/// (smooth weighted round-robin): any window of `total` consecutive connections holds each kind
/// exactly its weight's number of times.
struct Picker {
    weights: [i64; Kind::ALL.len()],
    current: [i64; Kind::ALL.len()],
    total: i64,
}

impl Picker {
    fn new(mix: &Mix) -> Self {
        let weights = mix.0.map(i64::from);
        Self {
            weights,
            current: [0; Kind::ALL.len()],
            total: weights.iter().sum(),
        }
    }

    fn next(&mut self) -> Kind {
        let mut best = 0;
        for i in 0..self.weights.len() {
            self.current[i] += self.weights[i];
            if self.current[i] > self.current[best] {
                best = i;
            }
        }
        self.current[best] -= self.total;
        Kind::ALL[best]
    }
}

/// What the clients say after the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// Any echo server: every message must come back unchanged.
    Echo,
    /// `volley serve`'s /chat topics: join a topic of the connection's own, publish to it and
    /// receive each publication back.
    Chat,
    /// Socket.IO v4 over WebSocket, `volley serve`'s chat namespace (/chat): connect, join a
    /// room of the connection's own, send messages to it (each acknowledged and received back).
    Socketio,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Chat => "chat",
            Self::Socketio => "socketio",
        }
    }

    /// The protocol a URL's path suggests: `/chat` → chat, `/socket.io/…` → socketio, else echo.
    fn of_path(path: &str) -> Self {
        if path == "/chat" {
            Self::Chat
        } else if path.starts_with("/socket.io") {
            Self::Socketio
        } else {
            Self::Echo
        }
    }
}

/// Arguments of `volley bench churn`.
#[derive(clap::Args)]
pub(crate) struct ChurnArgs {
    /// The server: ws://host:port/path. Repeat it for several paths of one server
    /// (connections take them in turn), e.g. --url ws://h:p/ --url ws://h:p/chat.
    #[arg(long, required = true)]
    url: Vec<String>,
    /// New connections per second (e.g. 200 or 200/s).
    #[arg(long, value_parser = parse_rate)]
    rate: f64,
    /// How long connections are opened.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Messages each connection sends (and must get back) after its handshake.
    #[arg(long, default_value_t = 3)]
    messages: u32,
    /// Bytes of each message's payload.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// How connections end, as weights: clean, drop, reset, silent, close-reset,
    /// handshake-reset, upgrade-reset, handshake-silent (see docs/BENCH.md).
    #[arg(long, default_value = DEFAULT_MIX, value_parser = Mix::parse)]
    mix: Mix,
    /// What the clients say after the handshake [default: from the URL's path: /chat → chat,
    /// /socket.io/ → socketio, else echo].
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    /// The server's process id: its memory and file descriptors are sampled from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The warm-up window: the server's RSS at its end is the reference of the RSS check
    /// [default: a third of --duration, at most 60 s].
    #[arg(long, value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// At the start, opens this long's worth of connections (rate × it) at once, on top of the
    /// schedule: the server's memory reaches the high-water mark of such a pile-up (what a stall
    /// of the server or of this machine causes) within the warm-up, so that a later pile-up no
    /// larger is not taken for growth.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup_burst: Duration,
    /// How long a half-open client waits for the server to close its connection before
    /// counting it as stuck (must exceed the server's keep-alive or handshake timeout).
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    half_open_limit: Duration,
    /// After the last client socket closed, how long the server may take to get back to its
    /// baseline (file descriptors, sockets) before the final reading.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    settle: Duration,
    /// Exit 1 unless the server's RSS at the end is within --rss-tolerance of its value after
    /// the warm-up, its file descriptors are back to the baseline (± --fd-tolerance) and no
    /// connection is stuck. Needs --server-pid.
    #[arg(long)]
    check: bool,
    /// RSS growth allowed by --check, in percent of the value after the warm-up.
    #[arg(long, default_value_t = 5.0)]
    rss_tolerance: f64,
    /// File descriptors above the baseline allowed by --check at the end (for servers that
    /// open some lazily, on their first connections).
    #[arg(long, default_value_t = 0)]
    fd_tolerance: u64,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Parses a rate: `200`, `200/s`, `12.5/s`.
fn parse_rate(s: &str) -> Result<f64, String> {
    let number = s.trim().trim_end_matches("/s").trim();
    match number.parse::<f64>() {
        Ok(r) if r.is_finite() && (0.1..=100_000.0).contains(&r) => Ok(r),
        _ => Err(format!(
            "{s:?} is not a rate between 0.1/s and 100000/s (e.g. 200/s)"
        )),
    }
}

/// Where a connection failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The TCP connection could not be opened.
    Connect,
    /// The opening handshake failed or was refused.
    Handshake,
    /// A message did not come back as it should (or the connection ended during the exchange).
    Exchange,
    /// The close did not complete (no close frame, or the server did not close its side).
    Close,
}

impl Stage {
    const ALL: [Stage; 4] = [Self::Connect, Self::Handshake, Self::Exchange, Self::Close];

    fn name(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Handshake => "handshake",
            Self::Exchange => "exchange",
            Self::Close => "close",
        }
    }
}

/// How one connection went.
enum Outcome {
    /// As planned.
    Done,
    /// Half-open: the server closed it after this long.
    Freed(Duration),
    /// Half-open: the server had not closed it when the limit passed.
    NotFreed,
    /// It failed.
    Failed(Stage, String),
}

/// Per close kind.
#[derive(Clone, Copy, Default)]
struct KindCount {
    started: u64,
    ok: u64,
    failed: u64,
}

/// What the clients of a run count.
struct Totals {
    kinds: [KindCount; Kind::ALL.len()],
    /// Per `--url`.
    routes: Vec<KindCount>,
    stages: [u64; Stage::ALL.len()],
    /// Tasks still running at the end of the drain (aborted).
    stalled: u64,
    /// Per close kind: half-open connections the server closed, and after how long (ms).
    freed: Vec<Histogram<u64>>,
    /// Per close kind: half-open connections the server had not closed by the limit.
    not_freed: [u64; Kind::ALL.len()],
    errors: Vec<String>,
}

impl Totals {
    fn new(routes: usize) -> Self {
        Self {
            kinds: [KindCount::default(); Kind::ALL.len()],
            routes: vec![KindCount::default(); routes],
            stages: [0; Stage::ALL.len()],
            stalled: 0,
            // 1 ms to 1 hour, 2 significant digits.
            freed: (Kind::ALL.iter())
                .map(|_| Histogram::new_with_bounds(1, 3_600_000, 2).expect("valid bounds"))
                .collect(),
            not_freed: [0; Kind::ALL.len()],
            errors: Vec::new(),
        }
    }

    fn note(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error);
        }
    }

    fn record(&mut self, index: u64, kind: Kind, route: usize, outcome: Outcome) {
        let failed = matches!(outcome, Outcome::NotFreed | Outcome::Failed(..));
        let count = &mut self.routes[route];
        match failed {
            true => count.failed += 1,
            false => count.ok += 1,
        }
        let count = &mut self.kinds[kind as usize];
        match outcome {
            Outcome::Done => count.ok += 1,
            Outcome::Freed(after) => {
                count.ok += 1;
                let ms = after.as_millis().clamp(1, 3_600_000) as u64;
                self.freed[kind as usize].saturating_record(ms);
            }
            Outcome::NotFreed => {
                count.failed += 1;
                self.not_freed[kind as usize] += 1;
            }
            Outcome::Failed(stage, e) => {
                count.failed += 1;
                self.stages[stage as usize] += 1;
                self.note(format!(
                    "connection {index} ({}), {}: {e}",
                    kind.name(),
                    stage.name()
                ));
            }
        }
    }

    fn failures(&self) -> u64 {
        self.stages.iter().sum::<u64>() + self.stalled
    }
}

/// One `--url`: where a connection goes and what it says there.
struct Route {
    /// As given.
    url: String,
    /// The URI of the opening handshake (the Engine.IO one for Socket.IO).
    uri: http::Uri,
    protocol: Protocol,
}

/// What every connection task of a run shares.
struct Ctx {
    target: Target,
    /// Connection `i` goes to route `i mod len`.
    routes: Vec<Route>,
    messages: u32,
    size: usize,
    half_open_limit: Duration,
    /// Source addresses the connections rotate over (1: the kernel picks, no bind).
    sources: usize,
    /// A distinct prefix for topic and room names.
    tag: String,
    /// Client sockets open now.
    live: Arc<AtomicU64>,
}

/// One reading of the server's figures.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    /// Seconds since the run started.
    t: f64,
    memory: Option<Memory>,
    fds: Option<u64>,
    sockets: Sockets,
    /// Client sockets this process had open.
    clients: u64,
    /// The server's CPU time so far (user + system), in seconds.
    cpu: Option<f64>,
}

/// The server's side of TCP connections to the target address, from /proc/net/tcp{,6}.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sockets {
    /// In state `ESTABLISHED`.
    established: u64,
    /// Held by a process (an inode), in any state but `LISTEN`.
    held: u64,
}

pub(super) fn run(args: ChurnArgs) -> Result<ExitCode, String> {
    if args.url.len() > 16 {
        return Err("at most 16 --url".into());
    }
    let mut target: Option<Target> = None;
    let mut routes = Vec::new();
    for url in &args.url {
        let parsed = Target::parse(url)?;
        let Some(uri) = parsed.uri.clone() else {
            return Err(format!("--url {url}: expected a ws:// URL"));
        };
        if target.as_ref().is_some_and(|t| t.addr != parsed.addr) {
            return Err("every --url must name the same server (host and port)".into());
        }
        let protocol = args
            .protocol
            .unwrap_or_else(|| Protocol::of_path(uri.path()));
        let uri = match protocol {
            Protocol::Socketio => engineio_uri(&uri)?,
            _ => uri,
        };
        routes.push(Route {
            url: url.clone(),
            uri,
            protocol,
        });
        target = Some(parsed);
    }
    let Some(target) = target else {
        return Err("--url is required".into());
    };
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    if args.messages > 10_000 {
        return Err("--messages must be at most 10000".into());
    }
    if args.size == 0 || args.size > 65_536 {
        return Err("--size must be between 1 and 65536".into());
    }
    if !(0.0..=1000.0).contains(&args.rss_tolerance) {
        return Err("--rss-tolerance must be between 0 and 1000 (percent)".into());
    }
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.duration / 3).min(Duration::from_secs(60)));
    if warmup >= args.duration {
        return Err(format!(
            "--warmup ({warmup:?}) must be shorter than --duration ({:?})",
            args.duration
        ));
    }
    let burst = (args.rate * args.warmup_burst.as_secs_f64()).round() as u64;
    if args.warmup_burst > warmup {
        return Err("--warmup-burst must not be longer than --warmup".into());
    }
    if args.check && args.server_pid.is_none() {
        return Err("--check needs --server-pid (the server's memory and descriptors)".into());
    }
    if let Some(pid) = args.server_pid {
        read_memory(pid)?;
        count_fds(pid)?;
    }
    let limit = raise_nofile()?;
    let max_live = limit.saturating_sub(SPARE_FDS).min(1_000_000);
    if max_live < 16 {
        return Err(format!("this process may open only {limit} files"));
    }
    if burst > max_live / 2 {
        return Err(format!(
            "--warmup-burst: {burst} connections at once is more than half of the {max_live} \
             this process may open"
        ));
    }
    // Rotate client sockets over several source addresses when one could run out of ephemeral
    // ports: every connection that might be open or in TIME_WAIT (60 s) at once, at most
    // PER_SOURCE per address.
    let lifetime = args.half_open_limit.as_secs_f64() + 60.0;
    let sources = match (args.rate * lifetime / PER_SOURCE as f64).ceil() as usize {
        n if n > 1 && is_loopback_v4(target.addr) => n.min(48),
        _ => 1,
    };
    let ctx = Rc::new(Ctx {
        target: target.clone(),
        routes,
        messages: args.messages,
        size: args.size,
        half_open_limit: args.half_open_limit,
        sources,
        tag: format!("churn-{}", std::process::id()),
        live: Arc::new(AtomicU64::new(0)),
    });

    // The baseline, then a reading every second on a thread of its own.
    let started = Instant::now();
    let pid = args.server_pid;
    let baseline = sample(pid, target.addr, started, 0);
    let samples = Arc::new(Mutex::new(vec![baseline]));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (samples, stop, live) = (samples.clone(), stop.clone(), ctx.live.clone());
        let addr = target.addr;
        std::thread::spawn(move || {
            let mut next = started + SAMPLE_EVERY;
            while !stop.load(Ordering::Relaxed) {
                let now = Instant::now();
                if now < next {
                    std::thread::sleep((next - now).min(Duration::from_millis(100)));
                    continue;
                }
                next += SAMPLE_EVERY;
                let s = sample(pid, addr, started, live.load(Ordering::Relaxed));
                lock(&samples).push(s);
            }
        })
    };

    let counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(args.duration, args.json, counter.clone(), "conn");
    let runtime = current_thread_runtime()?;
    let local = LocalSet::new();
    let totals = Rc::new(RefCell::new(Totals::new(ctx.routes.len())));
    let (opened, throttled, max_late, load_secs) = local.block_on(&runtime, async {
        let mut tasks = JoinSet::new();
        let mut picker = Picker::new(&args.mix);
        let interval = Duration::from_secs_f64(1.0 / args.rate);
        let begin = tokio::time::Instant::now();
        let end = begin + args.duration;
        let mut next = begin;
        let mut index = 0u64;
        let mut throttled = 0u64;
        let mut nths = vec![[0u64; Kind::ALL.len()]; ctx.routes.len()];
        let mut max_late = Duration::ZERO;
        let mut burst_left = burst;
        while next < end {
            tokio::time::sleep_until(next).await;
            // Reap finished tasks (their results are recorded by the tasks themselves).
            while tasks.try_join_next().is_some() {}
            if ctx.live.load(Ordering::Relaxed) >= max_live {
                // Out of file descriptors here: wait for some to close (the rate drops).
                throttled += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let late = tokio::time::Instant::now().saturating_duration_since(next);
            max_late = max_late.max(late);
            ctx.live.fetch_add(1, Ordering::Relaxed);
            let kind = picker.next();
            let route = index as usize % ctx.routes.len();
            // The how-many-th connection of this kind on this route.
            let nth = nths[route][kind as usize];
            nths[route][kind as usize] += 1;
            {
                let mut totals = totals.borrow_mut();
                totals.kinds[kind as usize].started += 1;
                totals.routes[route].started += 1;
            }
            counter.fetch_add(1, Ordering::Relaxed);
            let (ctx, totals) = (ctx.clone(), totals.clone());
            tasks.spawn_local(async move {
                let outcome = connection(&ctx, index, route, kind, nth).await;
                totals.borrow_mut().record(index, kind, route, outcome);
            });
            index += 1;
            if burst_left > 0 {
                burst_left -= 1;
            } else {
                next += interval;
            }
            // Fallen far behind (this process is overloaded): do not make up for it in a burst.
            let now = tokio::time::Instant::now();
            if now > next + Duration::from_secs(1) {
                next = now;
            }
        }
        let load_secs = begin.elapsed().as_secs_f64();
        // Every task ends by itself within these bounds; what is left then is stalled.
        let deadline =
            tokio::time::Instant::now() + CONNECT_TIMEOUT + STEP_TIMEOUT * 3 + args.half_open_limit;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
        let stalled = tasks.len() as u64;
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        if stalled > 0 {
            let mut totals = totals.borrow_mut();
            totals.stalled = stalled;
            totals.note(format!("{stalled} connection(s) did not finish in time"));
        }
        (index, throttled, max_late, load_secs)
    });
    drop(local);
    runtime.shutdown_background();
    drop(progress);

    // Settle: the server gets up to --settle to release what the last clients left; the final
    // reading is the first one back at the baseline (the tolerance of --check is not used
    // here: it is for what stays).
    let settle_from = Instant::now();
    let mut last = sample(pid, target.addr, started, 0);
    while settle_from.elapsed() < args.settle {
        let fds_back = match (last.fds, baseline.fds) {
            (Some(now), Some(base)) => now <= base,
            _ => true,
        };
        if fds_back && last.sockets.held <= baseline.sockets.held {
            break;
        }
        std::thread::sleep(SETTLE_POLL);
        last = sample(pid, target.addr, started, 0);
    }
    let settle_secs = settle_from.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let samples = std::mem::take(&mut *lock(&samples));
    let totals = Rc::try_unwrap(totals)
        .map_err(|_| "connection tasks outlived the run".to_string())?
        .into_inner();

    let routes = (ctx.routes.iter())
        .map(|r| (r.url.clone(), r.protocol))
        .collect();
    let report = Report::new(
        &args,
        routes,
        warmup,
        &totals,
        &samples,
        last,
        opened,
        throttled,
        max_late,
        load_secs,
        settle_secs,
        sources,
    );
    if args.json {
        println!("{}", report.json(&args, &totals, &samples));
    } else {
        report.print(&args, &totals);
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Reads the server's figures now.
fn sample(pid: Option<u32>, addr: SocketAddr, started: Instant, clients: u64) -> Sample {
    Sample {
        t: started.elapsed().as_secs_f64(),
        memory: pid.and_then(|pid| read_memory(pid).ok()),
        fds: pid.and_then(|pid| count_fds(pid).ok()),
        sockets: server_sockets(addr),
        clients,
        cpu: pid.and_then(cpu_seconds),
    }
}

/// The CPU time (user + system) process `pid` used so far, in seconds, from /proc/PID/stat
/// (in clock ticks of 1/100 s, the value Linux reports on every architecture it runs on).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces: count from the closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file: utime and stime (here at 11 and 12, after the state).
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The number of open file descriptors of process `pid`.
fn count_fds(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/fd");
    let entries = std::fs::read_dir(&path).map_err(|e| format!("cannot read {path}: {e}"))?;
    Ok(entries.filter(Result::is_ok).count() as u64)
}

/// The server's side of TCP connections to `addr`: sockets whose local address is `addr`.
fn server_sockets(addr: SocketAddr) -> Sockets {
    let mut sockets = Sockets::default();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            let counted = count_sockets(&text, addr);
            sockets.established += counted.established;
            sockets.held += counted.held;
        }
    }
    sockets
}

/// [`server_sockets`] of one table's text.
fn count_sockets(table: &str, addr: SocketAddr) -> Sockets {
    const ESTABLISHED: &str = "01";
    const LISTEN: &str = "0A";
    let mut sockets = Sockets::default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().take(10).collect();
        let [_, local, _, state, _, _, _, _, _, inode] = fields[..] else {
            continue;
        };
        if parse_proc_addr(local) != Some(addr) {
            continue;
        }
        if state == ESTABLISHED {
            sockets.established += 1;
        }
        if state != LISTEN && inode != "0" {
            sockets.held += 1;
        }
    }
    sockets
}

/// Parses an address of /proc/net/tcp{,6} (`0100007F:2329`: the IP as the kernel's 32-bit
/// words in host byte order, the port in hex); IPv4-mapped IPv6 addresses come out as IPv4.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = ip.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let ip = match ip.len() {
        8 => IpAddr::from(word(0)?),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::from(bytes).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

// ---- One connection

/// Runs connection `index` (to route `route`, of kind `kind`, the `nth` of that kind there) to
/// its end.
async fn connection(ctx: &Ctx, index: u64, route: usize, kind: Kind, nth: u64) -> Outcome {
    // Counted in `live` by the pacer when it spawned this (so that spawned tasks that have not
    // run yet count against the open-files limit too).
    let outcome = connection_inner(ctx, index, route, kind, nth).await;
    ctx.live.fetch_sub(1, Ordering::Relaxed);
    outcome
}

/// Connection `index`, the `nth` of its kind on its route.
async fn connection_inner(ctx: &Ctx, index: u64, route: usize, kind: Kind, nth: u64) -> Outcome {
    let route = &ctx.routes[route];
    // Round-robin over the source addresses (source_address gives the n-th for n × PER_SOURCE).
    let source = (ctx.sources > 1).then(|| {
        let n = index as usize % ctx.sources;
        source_address(n * PER_SOURCE, ctx.target.addr.port())
    });
    let connect = tokio::time::timeout(CONNECT_TIMEOUT, connect_from(ctx.target.addr, source));
    let mut stream = match connect.await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Outcome::Failed(Stage::Connect, e),
        Err(_) => {
            return Outcome::Failed(
                Stage::Connect,
                format!("no connection in {CONNECT_TIMEOUT:?}"),
            );
        }
    };
    let _ = stream.set_nodelay(true);
    if matches!(
        kind,
        Kind::HandshakeReset | Kind::UpgradeReset | Kind::HandshakeSilent
    ) {
        return partial_handshake(ctx, route, stream, nth, kind).await;
    }
    let leftover = match super::ws_handshake(&mut stream, &route.uri).await {
        Ok(leftover) => leftover,
        Err(e) => return Outcome::Failed(Stage::Handshake, e),
    };
    let mut wire = Peer::new(stream, leftover, route.protocol == Protocol::Socketio);
    let exchange = tokio::time::timeout(STEP_TIMEOUT, exchange(ctx, route, &mut wire, index));
    match exchange.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Outcome::Failed(Stage::Exchange, e),
        Err(_) => {
            return Outcome::Failed(Stage::Exchange, format!("not done within {STEP_TIMEOUT:?}"));
        }
    }
    match kind {
        Kind::Clean => {
            if route.protocol == Protocol::Socketio {
                // Leave the namespace first, as a Socket.IO client's disconnect() does.
                wire.push(0x1, format!("41{SIO_NAMESPACE},").as_bytes());
            }
            wire.push(0x8, &close_payload(1000));
            let close = tokio::time::timeout(STEP_TIMEOUT, wire.close_handshake());
            match close.await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => Outcome::Failed(Stage::Close, e),
                Err(_) => Outcome::Failed(
                    Stage::Close,
                    format!("the close handshake took more than {STEP_TIMEOUT:?}"),
                ),
            }
        }
        Kind::Drop => {
            if let Err(e) = wire.stream.shutdown().await {
                return Outcome::Failed(Stage::Close, format!("shutdown: {e}"));
            }
            match tokio::time::timeout(STEP_TIMEOUT, wire.until_end()).await {
                Ok(Ok(())) => Outcome::Done,
                Ok(Err(e)) => Outcome::Failed(Stage::Close, e),
                Err(_) => Outcome::Failed(
                    Stage::Close,
                    format!("the server kept its side open {STEP_TIMEOUT:?} after our FIN"),
                ),
            }
        }
        Kind::Reset => {
            reset(wire.into_stream());
            Outcome::Done
        }
        Kind::CloseReset => {
            wire.push(0x8, &close_payload(1000));
            if let Err(e) = wire.flush().await {
                return Outcome::Failed(Stage::Close, e);
            }
            reset(wire.into_stream());
            Outcome::Done
        }
        Kind::Silent => half_open(wire.into_stream(), ctx.half_open_limit).await,
        Kind::HandshakeReset | Kind::UpgradeReset | Kind::HandshakeSilent => Outcome::Done,
    }
}

/// Sends a part of the opening handshake's request, then resets the connection or goes
/// silent; or (`upgrade-reset`) the whole request, and a reset once the response starts.
async fn partial_handshake(
    ctx: &Ctx,
    route: &Route,
    mut stream: TcpStream,
    nth: u64,
    kind: Kind,
) -> Outcome {
    let handshake = match ClientHandshake::new(&route.uri, &[], &http::HeaderMap::new()) {
        Ok(handshake) => handshake,
        Err(e) => return Outcome::Failed(Stage::Handshake, format!("handshake: {e}")),
    };
    let request = handshake.request();
    let sent = match kind {
        Kind::UpgradeReset => request,
        // Every length from 0 to all but the last byte, spread over the connections: a part of
        // the request line, of the headers, or nothing at all.
        _ => &request[..cut(nth, request.len())],
    };
    if let Err(e) = stream.write_all(sent).await {
        return Outcome::Failed(Stage::Handshake, format!("sending the request: {e}"));
    }
    if kind == Kind::HandshakeSilent {
        return half_open(stream, ctx.half_open_limit).await;
    }
    if kind == Kind::UpgradeReset {
        let response = tokio::time::timeout(CONNECT_TIMEOUT, stream.readable()).await;
        reset(stream);
        return match response {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(e)) => {
                Outcome::Failed(Stage::Handshake, format!("waiting for the response: {e}"))
            }
            Err(_) => Outcome::Failed(
                Stage::Handshake,
                format!("no response within {CONNECT_TIMEOUT:?}"),
            ),
        };
    }
    // Give the server a moment to read what was sent, so that the reset finds the handshake in
    // progress rather than a connection not yet accepted.
    tokio::time::sleep(Duration::from_millis(5)).await;
    reset(stream);
    Outcome::Done
}

/// How many bytes of a request of `len` bytes the `nth` connection of a kind on a route sends
/// before it stops: 0, 1, … `len - 1`, then again.
fn cut(nth: u64, len: usize) -> usize {
    (nth % len.max(1) as u64) as usize
}

/// Closes `stream` with a TCP reset.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Holds `stream` without reading or writing until the server closes it (FIN or RST) or
/// `limit` passes; resets it then.
async fn half_open(stream: TcpStream, limit: Duration) -> Outcome {
    let from = Instant::now();
    let deadline = tokio::time::Instant::now() + limit;
    let outcome = loop {
        match tokio::time::timeout_at(deadline, stream.ready(Interest::READABLE)).await {
            Err(_) => break Outcome::NotFreed,
            Ok(Err(_)) => break Outcome::Freed(from.elapsed()),
            Ok(Ok(ready)) if ready.is_read_closed() || ready.is_error() => {
                break Outcome::Freed(from.elapsed());
            }
            Ok(Ok(_)) => {
                // Data (a ping): left unread. Clear the readiness to wait for the next event.
                let _ = stream.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
        }
    };
    reset(stream);
    outcome
}

/// A close frame's payload with `code`.
fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

/// The messages of a connection after its handshake, by protocol.
async fn exchange(ctx: &Ctx, route: &Route, wire: &mut Peer, index: u64) -> Result<(), String> {
    let mut scratch = Vec::with_capacity(ctx.size + 128);
    let mut text = Vec::with_capacity(ctx.size);
    let name = format!("{}-{index}", ctx.tag);
    match route.protocol {
        Protocol::Echo => {
            for seq in 0..u64::from(ctx.messages) {
                text.clear();
                payload(&mut text, index as usize, seq, ctx.size);
                wire.push(0x1, &text);
                wire.flush().await?;
                let got = wire.next_text().await?;
                if wire.slice(&got) != text.as_slice() {
                    return Err(format!(
                        "message {seq} came back different ({} bytes, {} sent)",
                        got.len(),
                        text.len()
                    ));
                }
            }
        }
        Protocol::Chat => {
            let hello = wire.next_json().await?;
            let id = hello
                .get("id")
                .and_then(serde_json::Value::as_u64)
                .ok_or_else(|| format!("expected {{\"id\": …}} first, got {hello}"))?;
            wire.push(
                0x1,
                serde_json::json!({ "join": name }).to_string().as_bytes(),
            );
            wire.flush().await?;
            let joined = wire.next_json().await?;
            if joined.get("joined").and_then(serde_json::Value::as_str) != Some(&name) {
                return Err(format!(
                    "expected {{\"joined\": \"{name}\", …}}, got {joined}"
                ));
            }
            for seq in 0..u64::from(ctx.messages) {
                text.clear();
                payload(&mut text, index as usize, seq, ctx.size);
                let data = String::from_utf8_lossy(&text).into_owned();
                let publish = serde_json::json!({ "topic": name, "data": data });
                wire.push(0x1, publish.to_string().as_bytes());
                wire.flush().await?;
                let got = wire.next_json().await?;
                let expected = (got.get("topic").and_then(|t| t.as_str()) == Some(&name))
                    && got.get("from").and_then(serde_json::Value::as_u64) == Some(id)
                    && got.get("data").and_then(|d| d.as_str()) == Some(&data);
                if !expected {
                    return Err(format!("publication {seq}: got {got}"));
                }
            }
        }
        Protocol::Socketio => {
            let open = wire.next_text().await?;
            if !wire.slice(&open).starts_with(b"0{") {
                return Err(format!(
                    "expected the Engine.IO open packet, got {:?}",
                    String::from_utf8_lossy(wire.slice(&open))
                ));
            }
            let ns = SIO_NAMESPACE;
            wire.push(0x1, format!("40{ns},").as_bytes());
            wire.flush().await?;
            let connected = wire.next_text().await?;
            let prefix = format!("40{ns},{{\"sid\":\"");
            let sid = wire
                .slice(&connected)
                .strip_prefix(prefix.as_bytes())
                .and_then(|rest| rest.split(|&b| b == b'"').next())
                .map(|sid| String::from_utf8_lossy(sid).into_owned())
                .ok_or_else(|| {
                    format!(
                        "expected the CONNECT reply {prefix}…, got {:?}",
                        String::from_utf8_lossy(wire.slice(&connected))
                    )
                })?;
            // Join a room of our own (ack 0), then send each message to it: the room's
            // `message` event comes back to us, and the ack.
            let join = serde_json::json!(["join", name]);
            wire.push(0x1, format!("42{ns},0{join}").as_bytes());
            wire.flush().await?;
            let ok = serde_json::json!([{ "ok": true }]);
            sio_await(wire, 0, &ok, None).await?;
            for seq in 0..u64::from(ctx.messages) {
                text.clear();
                payload(&mut text, index as usize, seq, ctx.size);
                let data = String::from_utf8_lossy(&text).into_owned();
                let event = serde_json::json!(["message", { "room": name, "text": data }]);
                scratch.clear();
                scratch.extend_from_slice(format!("42{ns},{}{event}", seq + 1).as_bytes());
                wire.push(0x1, &scratch);
                wire.flush().await?;
                let message =
                    serde_json::json!(["message", { "from": sid, "room": name, "text": data }]);
                sio_await(wire, seq + 1, &ok, Some(&message)).await?;
            }
        }
    }
    Ok(())
}

/// Reads Socket.IO packets of [`SIO_NAMESPACE`] until the ack `id` arrives (it must be `ack`);
/// with `event`, that event must have arrived before it. Other events are skipped.
async fn sio_await(
    wire: &mut Peer,
    id: u64,
    ack: &serde_json::Value,
    event: Option<&serde_json::Value>,
) -> Result<(), String> {
    let ack_prefix = format!("43{SIO_NAMESPACE},{id}");
    let event_prefix = format!("42{SIO_NAMESPACE},");
    let mut seen = event.is_none();
    loop {
        let range = wire.next_text().await?;
        let packet = wire.slice(&range);
        if let Some(rest) = packet.strip_prefix(ack_prefix.as_bytes()) {
            let got: serde_json::Value =
                serde_json::from_slice(rest).map_err(|e| format!("ack {id}: not JSON ({e})"))?;
            if &got != ack {
                return Err(format!("ack {id}: expected {ack}, got {got}"));
            }
            if !seen {
                return Err(format!("ack {id} came before the event it acknowledges"));
            }
            return Ok(());
        }
        if let (Some(rest), Some(expected)) = (packet.strip_prefix(event_prefix.as_bytes()), event)
        {
            let got: serde_json::Value =
                serde_json::from_slice(rest).map_err(|e| format!("event: not JSON ({e})"))?;
            if got.get(0) == expected.get(0) {
                if &got != expected {
                    return Err(format!("expected the event {expected}, got {got}"));
                }
                seen = true;
            }
            continue;
        }
        if !packet.starts_with(b"42") {
            return Err(format!(
                "unexpected packet {:?}",
                String::from_utf8_lossy(packet)
            ));
        }
    }
}

/// A client connection of the churn: the shared [`Wire`] plus what the exchanges need (pings
/// answered and, for Engine.IO, its `2` heartbeats with `3`; JSON; the close handshake).
struct Peer {
    wire: Wire,
    engineio: bool,
}

impl std::ops::Deref for Peer {
    type Target = Wire;
    fn deref(&self) -> &Wire {
        &self.wire
    }
}

impl std::ops::DerefMut for Peer {
    fn deref_mut(&mut self) -> &mut Wire {
        &mut self.wire
    }
}

impl Peer {
    fn new(stream: TcpStream, leftover: Vec<u8>, engineio: bool) -> Self {
        Self {
            wire: Wire::new(stream, &leftover, MASK, MAX_FRAME),
            engineio,
        }
    }

    fn into_stream(self) -> TcpStream {
        self.wire.stream
    }

    /// The next frame that is not a ping, pong or Engine.IO heartbeat (those are answered or
    /// skipped): its first byte and payload range.
    async fn next_frame(&mut self) -> Result<(u8, Range<usize>), String> {
        loop {
            while let Some((first, range)) = self.parse()? {
                match first {
                    0x89 => self.pong(range),
                    0x8a => {}
                    0x81 if self.engineio && self.slice(&range) == b"2" => {
                        self.push(0x1, b"3");
                    }
                    _ => {
                        self.flush().await?;
                        return Ok((first, range));
                    }
                }
            }
            self.flush().await?;
            self.fill().await?;
        }
    }

    /// The next text message's range (anything else is an error).
    async fn next_text(&mut self) -> Result<Range<usize>, String> {
        let (first, range) = self.next_frame().await?;
        match first {
            0x81 => Ok(range),
            0x88 => Err(format!(
                "the server closed the WebSocket ({})",
                describe_close(self.slice(&range))
            )),
            other => Err(format!(
                "unexpected frame (first byte {other:#04x}; fragments are not expected)"
            )),
        }
    }

    /// The next text message, parsed as JSON.
    async fn next_json(&mut self) -> Result<serde_json::Value, String> {
        let range = self.next_text().await?;
        serde_json::from_slice(self.slice(&range)).map_err(|e| {
            format!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(self.slice(&range))
            )
        })
    }

    /// Sends the queued close frame, reads up to the server's close frame (which must be 1000)
    /// and then to the end of the stream.
    async fn close_handshake(&mut self) -> Result<(), String> {
        self.flush().await?;
        loop {
            let (first, range) = self.next_frame().await?;
            if first == 0x88 {
                let payload = self.slice(&range);
                if payload.len() >= 2 && payload[..2] != close_payload(1000) {
                    return Err(format!(
                        "the server answered our close with {}",
                        describe_close(payload)
                    ));
                }
                break;
            }
        }
        self.until_end().await
    }

    /// Reads (and discards) until the server ends the stream.
    async fn until_end(&mut self) -> Result<(), String> {
        let mut chunk = [0u8; 1024];
        loop {
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Ok(()),
                Ok(_) => {}
                // A reset after the close handshake ends it too.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(()),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// `1000 "reason"` of a close frame's payload.
fn describe_close(payload: &[u8]) -> String {
    if payload.len() < 2 {
        return "no status code".into();
    }
    let code = u16::from_be_bytes([payload[0], payload[1]]);
    format!("close {code} {:?}", String::from_utf8_lossy(&payload[2..]))
}

// ---- The report

/// The figures of a run and the verdict of its checks.
struct Report {
    /// Each `--url` and its protocol.
    routes: Vec<(String, Protocol)>,
    warmup: Duration,
    opened: u64,
    throttled: u64,
    /// How far the pacer fell behind its schedule at worst.
    max_late: Duration,
    load_secs: f64,
    settle_secs: f64,
    sources: usize,
    baseline: Sample,
    /// The first reading at or after the end of the warm-up window.
    after_warmup: Option<Sample>,
    /// The last reading before the end of the load.
    end_of_load: Option<Sample>,
    end: Sample,
    max_fds: Option<u64>,
    max_established: u64,
    max_clients: u64,
    stuck: u64,
    checks: Option<Checks>,
    ok: bool,
}

/// The verdicts of `--check`.
struct Checks {
    /// The RSS limit (KiB) and the largest of the end-of-load and final readings.
    rss_limit: Option<f64>,
    rss_value: Option<u64>,
    rss_ok: bool,
    fd_limit: Option<u64>,
    fds_ok: bool,
    stuck_ok: bool,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn new(
        args: &ChurnArgs,
        routes: Vec<(String, Protocol)>,
        warmup: Duration,
        totals: &Totals,
        samples: &[Sample],
        end: Sample,
        opened: u64,
        throttled: u64,
        max_late: Duration,
        load_secs: f64,
        settle_secs: f64,
        sources: usize,
    ) -> Self {
        let baseline = samples.first().copied().unwrap_or_default();
        let warm = warmup.as_secs_f64();
        let load = args.duration.as_secs_f64();
        let after_warmup = samples.iter().find(|s| s.t >= warm).copied();
        let end_of_load = samples.iter().rev().find(|s| s.t <= load + 0.5).copied();
        let max_fds = samples.iter().filter_map(|s| s.fds).max();
        let max_established = samples.iter().map(|s| s.sockets.established).max();
        let max_clients = samples.iter().map(|s| s.clients).max().unwrap_or(0);
        let leftover = end.sockets.held.saturating_sub(baseline.sockets.held);
        let stuck = totals.not_freed.iter().sum::<u64>() + leftover;
        let rss = |s: &Option<Sample>| s.and_then(|s| s.memory).and_then(|m| m.vm_rss);
        let checks = args.check.then(|| {
            let rss_limit =
                rss(&after_warmup).map(|r| r as f64 * (1.0 + args.rss_tolerance / 100.0));
            let rss_value = rss(&end_of_load).max(end.memory.and_then(|m| m.vm_rss));
            let rss_ok = matches!((rss_limit, rss_value), (Some(l), Some(v)) if v as f64 <= l);
            let fd_limit = baseline.fds.map(|b| b + args.fd_tolerance);
            let fds_ok = matches!((fd_limit, end.fds), (Some(l), Some(v)) if v <= l);
            Checks {
                rss_limit,
                rss_value,
                rss_ok,
                fd_limit,
                fds_ok,
                stuck_ok: stuck == 0,
            }
        });
        let checks_ok = checks
            .as_ref()
            .is_none_or(|c| c.rss_ok && c.fds_ok && c.stuck_ok);
        let ok = opened > 0 && totals.failures() == 0 && checks_ok;
        Self {
            routes,
            warmup,
            opened,
            throttled,
            max_late,
            load_secs,
            settle_secs,
            sources,
            baseline,
            after_warmup,
            end_of_load,
            end,
            max_fds,
            max_established: max_established.unwrap_or(0).max(end.sockets.established),
            max_clients,
            stuck,
            checks,
            ok,
        }
    }

    fn achieved_rate(&self) -> f64 {
        self.opened as f64 / self.load_secs.max(1e-9)
    }

    fn json(&self, args: &ChurnArgs, totals: &Totals, samples: &[Sample]) -> serde_json::Value {
        use serde_json::json;
        let memory = |f: fn(&Memory) -> Option<u64>| {
            let at = |s: &Option<Sample>| s.and_then(|s| s.memory).as_ref().and_then(f);
            json!({
                "baseline": at(&Some(self.baseline)),
                "after_warmup": at(&self.after_warmup),
                "end_of_load": at(&self.end_of_load),
                "end": at(&Some(self.end)),
            })
        };
        let kinds: serde_json::Map<String, serde_json::Value> = (Kind::ALL.iter())
            .zip(totals.kinds)
            .filter(|(_, c)| c.started > 0)
            .map(|(k, c)| {
                let value = json!({ "started": c.started, "ok": c.ok, "failed": c.failed });
                (k.name().to_owned(), value)
            })
            .collect();
        let mut stages: serde_json::Map<String, serde_json::Value> = (Stage::ALL.iter())
            .zip(totals.stages)
            .map(|(s, n)| (s.name().to_owned(), json!(n)))
            .collect();
        stages.insert("stalled".into(), json!(totals.stalled));
        let half_open: serde_json::Map<String, serde_json::Value> = (Kind::ALL.iter())
            .zip(totals.kinds)
            .filter(|(k, c)| k.half_open() && c.started > 0)
            .map(|(&k, c)| {
                let freed = &totals.freed[k as usize];
                let after = (!freed.is_empty()).then(|| {
                    json!({
                        "p50": round3(freed.value_at_quantile(0.5) as f64 / 1000.0),
                        "max": round3(freed.max() as f64 / 1000.0),
                    })
                });
                let value = json!({
                    "count": c.started,
                    "freed": freed.len(),
                    "not_freed": totals.not_freed[k as usize],
                    "freed_after_s": after,
                });
                (k.name().to_owned(), value)
            })
            .collect();
        let routes: Vec<serde_json::Value> = (self.routes.iter().zip(&totals.routes))
            .map(|((url, protocol), c)| {
                json!({
                    "url": url,
                    "protocol": protocol.name(),
                    "started": c.started,
                    "ok": c.ok,
                    "failed": c.failed,
                })
            })
            .collect();
        let checks = self.checks.as_ref().map(|c| {
            json!({
                "rss": {
                    "ok": c.rss_ok,
                    "value_kib": c.rss_value,
                    "limit_kib": c.rss_limit.map(round3),
                    "tolerance_pct": args.rss_tolerance,
                },
                "fds": {
                    "ok": c.fds_ok,
                    "value": self.end.fds,
                    "limit": c.fd_limit,
                },
                "stuck": { "ok": c.stuck_ok, "value": self.stuck },
            })
        });
        let samples: Vec<serde_json::Value> = samples
            .iter()
            .map(|s| {
                json!([
                    round3(s.t),
                    s.memory.and_then(|m| m.vm_rss),
                    s.memory.and_then(|m| m.rss_anon),
                    s.fds,
                    s.sockets.established,
                    s.clients,
                    s.cpu.map(round3),
                ])
            })
            .collect();
        json!({
            "mode": "churn",
            "url": args.url,
            "routes": routes,
            "rate": args.rate,
            "duration_s": args.duration.as_secs_f64(),
            "messages": args.messages,
            "size": args.size,
            "mix": args.mix.describe(),
            "warmup_s": self.warmup.as_secs_f64(),
            "warmup_burst": (args.rate * args.warmup_burst.as_secs_f64()).round() as u64,
            "half_open_limit_s": args.half_open_limit.as_secs_f64(),
            "settle_s": round3(self.settle_secs),
            "server_pid": args.server_pid,
            "source_addresses": self.sources,
            "opened": self.opened,
            "achieved_rate": round3(self.achieved_rate()),
            "throttled": self.throttled,
            "max_late_ms": round3(self.max_late.as_secs_f64() * 1000.0),
            "max_client_sockets": self.max_clients,
            "kinds": kinds,
            "errors_by_stage": stages,
            "half_open": half_open,
            "server": {
                "vm_rss_kib": memory(|m| m.vm_rss),
                "rss_anon_kib": memory(|m| m.rss_anon),
                "fds": { "baseline": self.baseline.fds, "max": self.max_fds, "end": self.end.fds },
                "established": {
                    "baseline": self.baseline.sockets.established,
                    "max": self.max_established,
                    "end": self.end.sockets.established,
                },
                "held_sockets": {
                    "baseline": self.baseline.sockets.held,
                    "end": self.end.sockets.held,
                },
            },
            "stuck": self.stuck,
            "checks": checks,
            "samples_columns": ["t_s", "vm_rss_kib", "rss_anon_kib", "fds", "established", "client_sockets", "server_cpu_s"],
            "samples": samples,
            "errors": totals.errors,
            "ok": self.ok,
        })
    }

    fn print(&self, args: &ChurnArgs, totals: &Totals) {
        let routes: Vec<String> = (self.routes.iter())
            .map(|(url, protocol)| format!("{url} ({})", protocol.name()))
            .collect();
        println!(
            "volley bench churn {}: {}/s for {} s, {} message(s) of {} B, mix {}",
            routes.join(", "),
            args.rate,
            args.duration.as_secs_f64(),
            args.messages,
            args.size,
            args.mix.describe()
        );
        println!(
            "  opened {} connections ({:.1}/s achieved{}, at worst {:.0} ms behind schedule), at \
             most {} client sockets at once",
            self.opened,
            self.achieved_rate(),
            if self.throttled > 0 {
                format!(
                    ", throttled {} times by the open-files limit",
                    self.throttled
                )
            } else {
                String::new()
            },
            self.max_late.as_secs_f64() * 1000.0,
            self.max_clients
        );
        let kinds: Vec<String> = (Kind::ALL.iter().zip(totals.kinds))
            .filter(|(_, c)| c.started > 0)
            .map(|(k, c)| format!("{} {}/{}", k.name(), c.ok, c.started))
            .collect();
        println!("  ended as planned: {}", kinds.join(", "));
        if self.routes.len() > 1 {
            let routes: Vec<String> = (self.routes.iter().zip(&totals.routes))
                .map(|((url, _), c)| format!("{url} {}/{}", c.ok, c.started))
                .collect();
            println!("  by URL: {}", routes.join(", "));
        }
        let stages: Vec<String> = (Stage::ALL.iter().zip(totals.stages))
            .map(|(s, n)| format!("{} {n}", s.name()))
            .collect();
        println!(
            "  errors: {}, stalled {}",
            stages.join(", "),
            totals.stalled
        );
        for e in &totals.errors {
            println!("    {e}");
        }
        for (&kind, count) in Kind::ALL.iter().zip(totals.kinds) {
            if !kind.half_open() || count.started == 0 {
                continue;
            }
            let freed = &totals.freed[kind as usize];
            println!(
                "  {}: {} freed by the server (after p50 {:.1} s, max {:.1} s), {} not freed \
                 within {} s",
                kind.name(),
                freed.len(),
                freed.value_at_quantile(0.5) as f64 / 1000.0,
                freed.max() as f64 / 1000.0,
                totals.not_freed[kind as usize],
                args.half_open_limit.as_secs_f64()
            );
        }
        let kib = |s: &Option<Sample>| {
            s.and_then(|s| s.memory)
                .and_then(|m| m.vm_rss)
                .map_or("?".into(), |v| format!("{v} KiB"))
        };
        if args.server_pid.is_some() {
            println!(
                "  server VmRSS: {} at baseline, {} after the warm-up ({} s), {} at the end of \
                 the load, {} at the end",
                kib(&Some(self.baseline)),
                kib(&self.after_warmup),
                self.warmup.as_secs_f64(),
                kib(&self.end_of_load),
                kib(&Some(self.end))
            );
            let fds = |v: Option<u64>| v.map_or("?".into(), |v| v.to_string());
            println!(
                "  server fds: {} at baseline, {} at most, {} at the end (after {:.1} s settling)",
                fds(self.baseline.fds),
                fds(self.max_fds),
                fds(self.end.fds),
                self.settle_secs
            );
        }
        println!(
            "  server connections: {} established at most, {} at the end; {} socket(s) held at \
             the end ({} at baseline); stuck {}",
            self.max_established,
            self.end.sockets.established,
            self.end.sockets.held,
            self.baseline.sockets.held,
            self.stuck
        );
        if let Some(c) = &self.checks {
            let verdict = |ok: bool| if ok { "ok" } else { "FAILED" };
            println!(
                "  check rss: {} ({} KiB, limit {} KiB); fds: {} ({}, limit {}); stuck: {} ({})",
                verdict(c.rss_ok),
                c.rss_value.map_or("?".into(), |v| v.to_string()),
                c.rss_limit.map_or("?".into(), |v| format!("{v:.0}")),
                verdict(c.fds_ok),
                self.end.fds.map_or("?".into(), |v| v.to_string()),
                c.fd_limit.map_or("?".into(), |v| v.to_string()),
                verdict(c.stuck_ok),
                self.stuck
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_refuse_nonsense() {
        let mix = Mix::parse("clean=60, reset=20,silent=20").unwrap();
        assert_eq!(mix.total(), 100);
        assert_eq!(mix.describe(), "clean=60,reset=20,silent=20");
        assert!(Mix::parse(DEFAULT_MIX).is_ok());
        assert!(Mix::parse("clean").unwrap_err().contains("kind=weight"));
        assert!(
            Mix::parse("polite=3")
                .unwrap_err()
                .contains("unknown close kind")
        );
        assert!(Mix::parse("clean=0").unwrap_err().contains("no close kind"));
        assert!(Mix::parse("clean=-1").is_err());
        assert!(Mix::parse("clean=99999999999").is_err());
    }

    #[test]
    fn the_picker_keeps_the_proportions_in_every_window() {
        let mix = Mix::parse("clean=3,reset=1,silent=1").unwrap();
        let mut picker = Picker::new(&mix);
        let picks: Vec<Kind> = (0..50).map(|_| picker.next()).collect();
        for window in picks.chunks(5) {
            let count = |k: Kind| window.iter().filter(|&&p| p == k).count();
            assert_eq!(count(Kind::Clean), 3, "{window:?}");
            assert_eq!(count(Kind::Reset), 1, "{window:?}");
            assert_eq!(count(Kind::Silent), 1, "{window:?}");
        }
    }

    #[test]
    fn request_cuts_cover_every_length() {
        let len = 37;
        let cuts: std::collections::BTreeSet<usize> = (0..1000).map(|i| cut(i, len)).collect();
        assert_eq!(cuts.len(), len, "0 to len - 1: {cuts:?}");
        assert!(cuts.iter().all(|&c| c < len));
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("200").unwrap(), 200.0);
        assert_eq!(parse_rate("12.5/s").unwrap(), 12.5);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("1e9").is_err());
    }

    #[test]
    fn proc_net_tcp_addresses_and_states() {
        let v4: SocketAddr = "127.0.0.1:9001".parse().unwrap();
        assert_eq!(parse_proc_addr("0100007F:2329"), Some(v4));
        assert_eq!(
            parse_proc_addr("0000000000000000FFFF00000100007F:2329"),
            Some(v4)
        );
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:2329"), {
            Some("[::1]:9001".parse().unwrap())
        });
        assert_eq!(parse_proc_addr("zz:1"), None);
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:2329 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:2329 0100007F:A000 01 00000000:00000000 00:00000000 00000000  1000        0 222 1 0 20 4 30 10 -1\n\
   2: 0100007F:2329 0100007F:A001 08 00000000:00000000 00:00000000 00000000  1000        0 333 1 0 20 4 30 10 -1\n\
   3: 0100007F:2329 0100007F:A002 06 00000000:00000000 03:00001000 00000000     0        0 0 3 0\n\
   4: 0100007F:A000 0100007F:2329 01 00000000:00000000 00:00000000 00000000  1000        0 444 1 0 20 4 30 10 -1\n";
        let counted = count_sockets(table, v4);
        assert_eq!(
            counted,
            Sockets {
                established: 1,
                held: 2
            }
        );
    }

    #[test]
    fn reads_own_descriptors_and_cpu_time() {
        assert!(count_fds(std::process::id()).unwrap() >= 3);
        assert!(cpu_seconds(std::process::id()).is_some_and(|s| s >= 0.0));
        assert_eq!(cpu_seconds(u32::MAX), None);
    }
}
