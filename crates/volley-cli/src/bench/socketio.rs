//! `volley bench socketio`: load on a Socket.IO v4 server over the WebSocket transport
//! (`/socket.io/?EIO=4&transport=websocket`), with the handlers of `scripts/bench-peers`'
//! Socket.IO servers (`message` → `message-back`, `message-with-ack`, `join`, `to-room` →
//! `room-message`).
//!
//! Every client is a lean Engine.IO/Socket.IO client on a raw `TcpStream`: after the WebSocket
//! handshake it reads the open packet, joins `/` (`40` → `40{"sid":…}`), answers the server's
//! heartbeat (`2` → `3`) and writes its packets as masked text frames (mask key 0, so the
//! payload goes out as it is) into one reusable buffer; replies are parsed in place. Each reply
//! is checked byte for byte against the text the server must send (JSON as `JSON.stringify`
//! writes it, which the three servers agree on), so a wrong, lost, reordered or duplicated
//! reply fails the run. Workloads:
//!
//! - `echo`: N clients, K `message` events in flight each (a payload of `--size` ASCII bytes);
//!   each `message-back` sends the next one. Events/s and round-trip latency.
//! - `ack`: the same with `emitWithAck` round trips: `42<id>["message-with-ack",…]` answered
//!   `43<id>[…]`.
//! - `room`: N members join room `bench` (an acknowledged `join`), then one more client
//!   publishes `to-room` events as fast as the slowest member receives them, never more than
//!   `--window` publications ahead of it; every member must get every publication once, in
//!   order. Deliveries/s (publications × members received per second).
//! - `idle`: N clients connect and join `/` and stay idle (answering pings); the server's
//!   memory growth per client from `/proc/<pid>/status` (as `volley bench connections`).
//!
//! One thread (a single-threaded runtime), so that the generator can be pinned to one core.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Notify;
use tokio::task::{JoinSet, LocalSet};

use super::connections::{
    Memory, PER_SOURCE, SPARE_FDS, connect_from, is_loopback_v4, per_connection, raise_nofile,
    read_memory, source_address,
};
use super::wire::Wire;
use super::{
    CONNECT_TIMEOUT, Progress, Target, cpu_time_ns, current_thread_runtime, latency_histogram,
    latency_summary, parse_duration, round3, ws_handshake,
};

/// Time the clients get past the end of the run for their last replies.
const GRACE: Duration = Duration::from_secs(3);
/// Clients opened at once.
const CONNECT_CONCURRENCY: usize = 256;
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;
/// The largest server frame a client accepts.
const MAX_FRAME: usize = 1 << 16;
/// The room of the `room` workload.
const ROOM: &str = "bench";
/// The longest a room member may wait for its next publication before the run fails.
const STALL: Duration = Duration::from_secs(5);

/// The workloads of `volley bench socketio`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Workload {
    /// `message` → `message-back` round trips.
    Echo,
    /// `message-with-ack` acknowledged round trips (`emitWithAck`).
    Ack,
    /// Broadcasts to a room of N members.
    Room,
    /// N idle clients: the server's memory per client.
    Idle,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::Echo => "echo",
            Self::Ack => "ack",
            Self::Room => "room",
            Self::Idle => "idle",
        }
    }
}

/// Arguments of `volley bench socketio`.
#[derive(clap::Args)]
pub(crate) struct SocketIoArgs {
    /// The server: ws://host:port (Socket.IO at /socket.io/ unless the URL has another path).
    #[arg(long)]
    url: String,
    /// What to measure.
    #[arg(long, value_enum, default_value = "echo")]
    workload: Workload,
    /// Clients (room: members of the room, besides the publisher).
    #[arg(long, default_value_t = 100)]
    connections: usize,
    /// Bytes of the payload string of each event.
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Events in flight per client (echo, ack).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Publications the publisher may run ahead of the slowest member (room).
    #[arg(long, default_value_t = 16)]
    window: u64,
    /// Measured duration (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before the measured duration.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// The server's process id: its memory is read from /proc/<pid>/status (idle), its CPU
    /// time over the measured window from /proc/<pid>/task/*/schedstat (echo, ack, room:
    /// reported as server CPU per message, which stays comparable when the load generator
    /// is the bottleneck).
    #[arg(long)]
    server_pid: Option<u32>,
    /// How long to hold the idle clients once all are connected (idle).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    /// Time the server gets after the last client joined before its memory is read (idle).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    settle: Duration,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// The measured window.
#[derive(Clone, Copy)]
struct Clock {
    measure_from: Instant,
    end: Instant,
}

impl Clock {
    fn measuring(&self, now: Instant) -> bool {
        now >= self.measure_from && now < self.end
    }

    /// Samples the CPU time of process `pid` at the start and at the end of the measured
    /// window, in a task of the current `LocalSet`: the task's result is the CPU seconds spent
    /// in it (await it after the window).
    fn sample_cpu(&self, pid: Option<u32>) -> tokio::task::JoinHandle<Option<f64>> {
        let clock = *self;
        tokio::task::spawn_local(async move {
            let pid = pid?;
            tokio::time::sleep_until(clock.measure_from.into()).await;
            let start = cpu_time_ns(pid).ok()?;
            tokio::time::sleep_until(clock.end.into()).await;
            let end = cpu_time_ns(pid).ok()?;
            Some(end.saturating_sub(start) as f64 / 1e9)
        })
    }
}

/// Server CPU microseconds per message, when measured.
fn cpu_per_message(cpu_s: Option<f64>, messages: u64) -> Option<f64> {
    cpu_s
        .filter(|_| messages > 0)
        .map(|s| round3(s * 1e6 / messages as f64))
}

/// What the clients of a run count.
struct Totals {
    histogram: Histogram<u64>,
    completed: u64,
    mismatches: u64,
    connection_errors: u64,
    errors: Vec<String>,
}

impl Totals {
    fn new() -> Self {
        Self {
            histogram: latency_histogram(),
            completed: 0,
            mismatches: 0,
            connection_errors: 0,
            errors: Vec::new(),
        }
    }

    fn note(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error);
        }
    }
}

/// A server frame, as a range of the client's read buffer.
enum Frame {
    Text(std::ops::Range<usize>),
    /// A WebSocket ping: answered by the client itself.
    Ping(std::ops::Range<usize>),
    /// Anything else to skip (pong, binary).
    Skip,
}

/// A lean Engine.IO client over WebSocket, joined to `/`.
struct Client {
    wire: Wire,
    /// Text frames of the server's heartbeat answered (Engine.IO `2` → `3`).
    pings: u64,
}

impl Client {
    /// Connects, handshakes, reads the Engine.IO open packet and joins `/`.
    async fn open(
        target: &Target,
        uri: &http::Uri,
        source: Option<std::net::SocketAddr>,
    ) -> Result<Self, String> {
        let work = async {
            let mut stream = connect_from(target.addr, source).await?;
            let _ = stream.set_nodelay(true);
            let leftover = ws_handshake(&mut stream, uri).await?;
            let mut client = Client {
                // Mask key 0: the payload goes out as it is (the generator is the bottleneck).
                wire: Wire::new(stream, &leftover, [0; 4], MAX_FRAME),
                pings: 0,
            };
            let open = client.next_text().await?;
            if !open.starts_with(b"0{") {
                return Err(format!(
                    "expected the Engine.IO open packet, got {:?}",
                    String::from_utf8_lossy(&open)
                ));
            }
            client.push_text(b"40");
            client.flush().await?;
            let connected = client.next_text().await?;
            if !connected.starts_with(b"40{\"sid\":") {
                return Err(format!(
                    "expected the CONNECT reply 40{{\"sid\":…}}, got {:?}",
                    String::from_utf8_lossy(&connected)
                ));
            }
            Ok(client)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, work)
            .await
            .map_err(|_| format!("not connected to Socket.IO within {CONNECT_TIMEOUT:?}"))?
    }

    /// Queues a text frame.
    fn push_text(&mut self, payload: &[u8]) {
        self.wire.push(0x1, payload);
    }

    /// Writes what is queued.
    async fn flush(&mut self) -> Result<(), String> {
        self.wire.flush().await
    }

    /// Reads more bytes.
    async fn fill(&mut self) -> Result<(), String> {
        self.wire.fill().await
    }

    /// The payload of a text frame [`parse`](Self::parse) returned.
    fn slice(&self, range: &std::ops::Range<usize>) -> &[u8] {
        self.wire.slice(range)
    }

    /// Parses the next complete frame in the read buffer, if any.
    fn parse(&mut self) -> Result<Option<Frame>, String> {
        let Some((first, range)) = self.wire.parse()? else {
            return Ok(None);
        };
        match first {
            0x81 => Ok(Some(Frame::Text(range))),
            0x89 => Ok(Some(Frame::Ping(range))),
            0x88 => Err("the server closed the WebSocket".into()),
            0x82 | 0x8a => Ok(Some(Frame::Skip)),
            other => Err(format!(
                "unexpected frame (first byte {other:#04x}: fragmented messages are not supported)"
            )),
        }
    }

    /// Handles a frame that is not an application packet: a WebSocket ping (pong queued) or
    /// an Engine.IO ping (`3` queued). Returns the text range of any other text frame.
    fn control(&mut self, frame: Frame) -> Option<std::ops::Range<usize>> {
        match frame {
            Frame::Text(range) => {
                if self.slice(&range) == b"2" {
                    self.pings += 1;
                    self.push_text(b"3");
                    None
                } else {
                    Some(range)
                }
            }
            Frame::Ping(range) => {
                self.wire.pong(range);
                None
            }
            Frame::Skip => None,
        }
    }

    /// The next application text message (heartbeats answered on the way), copied.
    async fn next_text(&mut self) -> Result<Vec<u8>, String> {
        loop {
            while let Some(frame) = self.parse()? {
                if let Some(range) = self.control(frame) {
                    self.flush().await?;
                    return Ok(self.slice(&range).to_vec());
                }
            }
            self.flush().await?;
            self.fill().await?;
        }
    }
}

/// The payload of event `seq` of client `client`: `size` ASCII letters, the first 12 encoding
/// the client and the sequence number, the rest varying with both.
pub(super) fn payload(out: &mut Vec<u8>, client: usize, seq: u64, size: usize) {
    let tag = ((client as u64) << 40) ^ seq;
    let mut x = tag.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    for i in 0..size {
        let b = if i < 12 {
            b'A' + ((tag >> (4 * i)) & 15) as u8
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b'a' + (x % 26) as u8
        };
        out.push(b);
    }
}

pub(super) fn run(args: SocketIoArgs) -> Result<ExitCode, String> {
    let target = Target::parse(&args.url)?;
    let Some(uri) = target.uri.clone() else {
        return Err("--url must be a ws:// URL".into());
    };
    let uri = engineio_uri(&uri)?;
    if args.connections == 0 || args.connections > 100_000 {
        return Err("--connections must be between 1 and 100000".into());
    }
    if args.in_flight == 0 || args.in_flight > 1024 {
        return Err("--in-flight must be between 1 and 1024".into());
    }
    if args.size == 0 || args.size > 16_384 {
        return Err("--size must be between 1 and 16384".into());
    }
    if args.window == 0 || args.window > 4096 {
        return Err("--window must be between 1 and 4096".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    let limit = raise_nofile()?;
    let needed = args.connections as u64 + 1 + SPARE_FDS;
    if needed > limit {
        return Err(format!(
            "{} clients need {needed} open files, but this process may open only {limit}",
            args.connections
        ));
    }
    let runtime = current_thread_runtime()?;
    let local = LocalSet::new();
    let result = local.block_on(&runtime, async {
        match args.workload {
            Workload::Echo | Workload::Ack => round_trips(&args, &target, &uri).await,
            Workload::Room => room(&args, &target, &uri).await,
            Workload::Idle => idle(&args, &target, &uri).await,
        }
    });
    drop(local);
    runtime.shutdown_background();
    result
}

/// `ws://host:port` or `ws://host:port/` → the Engine.IO WebSocket URI at `/socket.io/`;
/// another path is kept (the query is replaced).
pub(super) fn engineio_uri(uri: &http::Uri) -> Result<http::Uri, String> {
    let path = match uri.path() {
        "" | "/" => "/socket.io/",
        other => other,
    };
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    format!("ws://{authority}{path}?EIO=4&transport=websocket")
        .parse()
        .map_err(|e| format!("bad URL: {e}"))
}

/// Opens `count` clients, a bounded number at a time, spread over source addresses past
/// [`PER_SOURCE`]. Counts them in `counter`.
async fn open_clients(
    target: &Target,
    uri: &http::Uri,
    count: usize,
    counter: &AtomicU64,
) -> Result<Vec<Client>, String> {
    let spread = count > PER_SOURCE && is_loopback_v4(target.addr);
    let mut clients = Vec::with_capacity(count);
    let mut tasks = JoinSet::new();
    let mut indexed: Vec<(usize, Client)> = Vec::with_capacity(count);
    for index in 0..count {
        if tasks.len() >= CONNECT_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            indexed.push(done.map_err(|e| format!("connecting: {e}"))??);
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let source = spread.then(|| source_address(index, target.addr.port()));
        let (target, uri) = (target.clone(), uri.clone());
        tasks.spawn_local(async move {
            let client = Client::open(&target, &uri, source)
                .await
                .map_err(|e| format!("client {index}: {e}"))?;
            Ok::<_, String>((index, client))
        });
    }
    while let Some(done) = tasks.join_next().await {
        indexed.push(done.map_err(|e| format!("connecting: {e}"))??);
        counter.fetch_add(1, Ordering::Relaxed);
    }
    indexed.sort_by_key(|(i, _)| *i);
    clients.extend(indexed.into_iter().map(|(_, c)| c));
    Ok(clients)
}

/// `echo` and `ack`: every client keeps `in_flight` events outstanding.
async fn round_trips(
    args: &SocketIoArgs,
    target: &Target,
    uri: &http::Uri,
) -> Result<ExitCode, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let clients = open_clients(target, uri, args.connections, &counter).await?;
    counter.store(0, Ordering::Relaxed);
    let progress = Progress::start(
        args.warmup + args.duration,
        args.json,
        counter.clone(),
        "ev",
    );
    let begin = Instant::now();
    let clock = Clock {
        measure_from: begin + args.warmup,
        end: begin + args.warmup + args.duration,
    };
    let server_cpu = clock.sample_cpu(args.server_pid);
    let totals = Rc::new(RefCell::new(Totals::new()));
    let mut tasks = JoinSet::new();
    let ack = args.workload == Workload::Ack;
    for (index, client) in clients.into_iter().enumerate() {
        let (totals, counter) = (totals.clone(), counter.clone());
        let (size, in_flight) = (args.size, args.in_flight);
        tasks.spawn_local(async move {
            let driven = drive_round_trips(
                client, index, size, in_flight, ack, clock, &totals, &counter,
            )
            .await;
            if let Err(e) = driven {
                let mut totals = totals.borrow_mut();
                totals.connection_errors += 1;
                totals.note(format!("client {index}: {e}"));
            }
        });
    }
    let stalled = join_until(&mut tasks, clock.end + GRACE).await;
    let server_cpu = server_cpu.await.ok().flatten();
    drop(progress);
    let mut totals = Rc::try_unwrap(totals)
        .map_err(|_| "client tasks outlived the run".to_string())?
        .into_inner();
    if stalled > 0 {
        totals.connection_errors += stalled;
        totals.note(format!(
            "{stalled} client(s) got no reply in the {GRACE:?} after the end"
        ));
    }
    let secs = args.duration.as_secs_f64();
    let rate = totals.completed as f64 / secs;
    let errors = totals.mismatches + totals.connection_errors;
    let ok = errors == 0 && totals.completed > 0;
    let (latency_json, latency_text) = latency_summary(&totals.histogram);
    let unit = if ack { "acks" } else { "events" };
    if args.json {
        let json = serde_json::json!({
            "mode": "socketio",
            "workload": args.workload.name(),
            "url": args.url,
            "connections": args.connections,
            "size": args.size,
            "in_flight": args.in_flight,
            "duration_s": secs,
            "warmup_s": args.warmup.as_secs_f64(),
            "round_trips": totals.completed,
            "msg_per_s": round3(rate),
            "server_pid": args.server_pid,
            "server_cpu_s": server_cpu.map(round3),
            "server_cpu_us_per_msg": cpu_per_message(server_cpu, totals.completed),
            "latency_us": latency_json,
            "mismatches": totals.mismatches,
            "connection_errors": totals.connection_errors,
            "errors": totals.errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench socketio {} ({}): {} client(s) × {} B, {} in flight each, {secs} s \
             measured after {} s warm-up",
            args.url,
            args.workload.name(),
            args.connections,
            args.size,
            args.in_flight,
            args.warmup.as_secs_f64()
        );
        println!("  {rate:.0} {unit}/s ({} round trips)", totals.completed);
        if let Some(per) = cpu_per_message(server_cpu, totals.completed) {
            println!("  server CPU: {per:.2} µs per {}", &unit[..unit.len() - 1]);
        }
        println!("  round trip: {latency_text}");
        println!(
            "  errors: {} mismatched replies, {} client errors",
            totals.mismatches, totals.connection_errors
        );
        for e in &totals.errors {
            println!("    {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Waits for the tasks until `deadline`; aborts and counts those still running.
async fn join_until(tasks: &mut JoinSet<()>, deadline: Instant) -> u64 {
    let deadline = tokio::time::Instant::from_std(deadline);
    while let Ok(Some(_)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {}
    let left = tasks.len() as u64;
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    left
}

/// One client of `echo`/`ack`.
#[allow(clippy::too_many_arguments)]
async fn drive_round_trips(
    mut client: Client,
    index: usize,
    size: usize,
    in_flight: usize,
    ack: bool,
    clock: Clock,
    totals: &RefCell<Totals>,
    counter: &AtomicU64,
) -> Result<(), String> {
    let mut scratch = Vec::with_capacity(size + 64);
    let mut expected = Vec::with_capacity(size + 64);
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(in_flight);
    let (mut next_send, mut next_recv) = (0u64, 0u64);
    // The event `seq` (its ack id is `seq` too).
    let request = |out: &mut Vec<u8>, seq: u64| {
        out.clear();
        if ack {
            out.extend_from_slice(format!("42{seq}[\"message-with-ack\",\"").as_bytes());
        } else {
            out.extend_from_slice(b"42[\"message\",\"");
        }
        payload(out, index, seq, size);
        out.extend_from_slice(b"\"]");
    };
    let now = Instant::now();
    for _ in 0..in_flight {
        request(&mut scratch, next_send);
        client.push_text(&scratch);
        next_send += 1;
        sent_at.push_back(now);
    }
    client.flush().await?;
    loop {
        let now = Instant::now();
        let measuring = clock.measuring(now);
        let mut done = 0u64;
        while let Some(frame) = client.parse()? {
            let Some(range) = client.control(frame) else {
                continue;
            };
            expected.clear();
            if ack {
                expected.extend_from_slice(format!("43{next_recv}[\"").as_bytes());
            } else {
                expected.extend_from_slice(b"42[\"message-back\",\"");
            }
            payload(&mut expected, index, next_recv, size);
            expected.extend_from_slice(b"\"]");
            let Some(sent) = sent_at.pop_front() else {
                return Err("a reply to an event that was never sent".into());
            };
            if client.slice(&range) != &expected[..] {
                let mut totals = totals.borrow_mut();
                totals.mismatches += 1;
                totals.note(format!(
                    "client {index}, event {next_recv}: expected {:?}, got {:?}",
                    String::from_utf8_lossy(&expected),
                    String::from_utf8_lossy(client.slice(&range))
                ));
                return Err("a reply differs from what the server must send".into());
            }
            next_recv += 1;
            done += 1;
            if measuring {
                let mut totals = totals.borrow_mut();
                totals.completed += 1;
                let ns = now.duration_since(sent).as_nanos();
                totals
                    .histogram
                    .saturating_record(ns.min(u128::from(u64::MAX)) as u64);
            }
            if now < clock.end {
                request(&mut scratch, next_send);
                client.push_text(&scratch);
                next_send += 1;
                sent_at.push_back(now);
            }
        }
        counter.fetch_add(done, Ordering::Relaxed);
        client.flush().await?;
        if now >= clock.end && (sent_at.is_empty() || done > 0) {
            return Ok(());
        }
        client.fill().await?;
    }
}

/// The state of a room run, shared by its members and its publisher (one thread).
struct RoomState {
    members: usize,
    window: u64,
    /// Per publication in flight (by seq modulo the window): members that received it.
    counts: RefCell<Vec<usize>>,
    /// Every publication below this one reached every member.
    complete: Cell<u64>,
    /// Publications sent.
    published: Cell<u64>,
    /// The publisher stopped: the last publication is `published - 1`.
    stopped: Cell<bool>,
    /// Wakes the publisher when `complete` moves.
    progress: Notify,
    /// Wakes the members when the publisher stops.
    stop: Notify,
    /// Deliveries in the measured window.
    measured: Cell<u64>,
}

impl RoomState {
    /// A member received publication `seq`.
    fn delivered(&self, seq: u64) {
        let slot = (seq % self.window) as usize;
        let mut counts = self.counts.borrow_mut();
        counts[slot] += 1;
        let mut complete = self.complete.get();
        let mut moved = false;
        while complete < self.published.get() {
            let slot = (complete % self.window) as usize;
            if counts[slot] < self.members {
                break;
            }
            counts[slot] = 0;
            complete += 1;
            moved = true;
        }
        if moved {
            self.complete.set(complete);
            self.progress.notify_waiters();
        }
    }
}

/// The payload of publication `seq`: `p<seq>` and letters up to `size` bytes.
fn publication(out: &mut Vec<u8>, seq: u64, size: usize) {
    let start = out.len();
    out.extend_from_slice(format!("p{seq}:").as_bytes());
    while out.len() - start < size {
        out.push(b'a' + ((out.len() - start) % 26) as u8);
    }
}

/// `room`: N members of one room, one publisher.
async fn room(args: &SocketIoArgs, target: &Target, uri: &http::Uri) -> Result<ExitCode, String> {
    let counter = Arc::new(AtomicU64::new(0));
    let mut clients = open_clients(target, uri, args.connections + 1, &counter).await?;
    let Some(mut publisher) = clients.pop() else {
        return Err("no publisher".into());
    };
    // Every member joins (acknowledged) before the first publication.
    let mut joins = JoinSet::new();
    for (index, mut member) in clients.into_iter().enumerate() {
        joins.spawn_local(async move {
            member.push_text(format!("421[\"join\",\"{ROOM}\"]").as_bytes());
            member.flush().await?;
            let answer = member.next_text().await?;
            if answer != b"431[]" {
                return Err(format!(
                    "member {index}: the join was answered {:?}, not 431[]",
                    String::from_utf8_lossy(&answer)
                ));
            }
            Ok::<_, String>(member)
        });
    }
    let mut members = Vec::with_capacity(args.connections);
    let joined = async {
        while let Some(done) = joins.join_next().await {
            members.push(done.map_err(|e| format!("joining: {e}"))??);
        }
        Ok::<_, String>(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, joined)
        .await
        .map_err(|_| format!("the members did not join within {CONNECT_TIMEOUT:?}"))??;
    counter.store(0, Ordering::Relaxed);
    let state = Rc::new(RoomState {
        members: members.len(),
        window: args.window,
        counts: RefCell::new(vec![0; args.window as usize]),
        complete: Cell::new(0),
        published: Cell::new(0),
        stopped: Cell::new(false),
        progress: Notify::new(),
        stop: Notify::new(),
        measured: Cell::new(0),
    });
    let progress = Progress::start(
        args.warmup + args.duration,
        args.json,
        counter.clone(),
        "dlv",
    );
    let begin = Instant::now();
    let clock = Clock {
        measure_from: begin + args.warmup,
        end: begin + args.warmup + args.duration,
    };
    let server_cpu = clock.sample_cpu(args.server_pid);
    let totals = Rc::new(RefCell::new(Totals::new()));
    let mut tasks = JoinSet::new();
    for (index, member) in members.into_iter().enumerate() {
        let (state, totals, counter) = (state.clone(), totals.clone(), counter.clone());
        let size = args.size;
        tasks.spawn_local(async move {
            if let Err(e) = drive_member(member, size, clock, &state, &counter).await {
                let mut totals = totals.borrow_mut();
                totals.connection_errors += 1;
                totals.note(format!("member {index}: {e}"));
            }
        });
    }
    let published = {
        let state = state.clone();
        let size = args.size;
        async move {
            let mut scratch = Vec::with_capacity(size + 64);
            let result = async {
                loop {
                    let now = Instant::now();
                    if now >= clock.end {
                        break Ok(());
                    }
                    if state.published.get() >= state.complete.get() + state.window {
                        let notified = state.progress.notified();
                        tokio::pin!(notified);
                        notified.as_mut().enable();
                        if state.published.get() < state.complete.get() + state.window {
                            continue;
                        }
                        // Read the publisher's socket meanwhile (heartbeats).
                        tokio::select! {
                            () = notified => {}
                            read = publisher.fill() => {
                                read?;
                                while let Some(frame) = publisher.parse()? {
                                    let _ = publisher.control(frame);
                                }
                                publisher.flush().await?;
                            }
                            () = tokio::time::sleep(STALL) => {
                                break Err(format!(
                                    "no member received publication {} within {STALL:?}",
                                    state.complete.get()
                                ));
                            }
                        }
                        continue;
                    }
                    // Everything the window allows, in one write.
                    while state.published.get() < state.complete.get() + state.window {
                        let seq = state.published.get();
                        scratch.clear();
                        scratch
                            .extend_from_slice(format!("42[\"to-room\",\"{ROOM}\",\"").as_bytes());
                        publication(&mut scratch, seq, size);
                        scratch.extend_from_slice(b"\"]");
                        publisher.push_text(&scratch);
                        state.published.set(seq + 1);
                    }
                    publisher.flush().await?;
                }
            }
            .await;
            state.stopped.set(true);
            state.stop.notify_waiters();
            result
        }
    };
    let publisher_result = published.await;
    let stalled = join_until(&mut tasks, clock.end + GRACE).await;
    let server_cpu = server_cpu.await.ok().flatten();
    drop(progress);
    let mut totals = Rc::try_unwrap(totals)
        .map_err(|_| "member tasks outlived the run".to_string())?
        .into_inner();
    if let Err(e) = publisher_result {
        totals.connection_errors += 1;
        totals.note(format!("publisher: {e}"));
    }
    if stalled > 0 {
        totals.connection_errors += stalled;
        totals.note(format!(
            "{stalled} member(s) missed publications in the {GRACE:?} after the end"
        ));
    }
    let secs = args.duration.as_secs_f64();
    let deliveries = state.measured.get();
    let rate = deliveries as f64 / secs;
    let ok = totals.connection_errors == 0 && deliveries > 0;
    if args.json {
        let json = serde_json::json!({
            "mode": "socketio",
            "workload": "room",
            "url": args.url,
            "connections": args.connections,
            "members": state.members,
            "size": args.size,
            "window": args.window,
            "duration_s": secs,
            "warmup_s": args.warmup.as_secs_f64(),
            "publications": state.published.get(),
            "deliveries": deliveries,
            "msg_per_s": round3(rate),
            "deliveries_per_s": round3(rate),
            "server_pid": args.server_pid,
            "server_cpu_s": server_cpu.map(round3),
            "server_cpu_us_per_msg": cpu_per_message(server_cpu, deliveries),
            "connection_errors": totals.connection_errors,
            "errors": totals.errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench socketio {} (room): {} members, {} B publications, window {}, {secs} s \
             measured after {} s warm-up",
            args.url,
            state.members,
            args.size,
            args.window,
            args.warmup.as_secs_f64()
        );
        println!(
            "  {rate:.0} deliveries/s ({} publications, {deliveries} deliveries measured)",
            state.published.get()
        );
        if let Some(per) = cpu_per_message(server_cpu, deliveries) {
            println!("  server CPU: {per:.3} µs per delivery");
        }
        println!("  errors: {} client errors", totals.connection_errors);
        for e in &totals.errors {
            println!("    {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// One room member: receives every publication in order until the publisher stopped and the
/// last one arrived.
async fn drive_member(
    mut member: Client,
    size: usize,
    clock: Clock,
    state: &RoomState,
    counter: &AtomicU64,
) -> Result<(), String> {
    let mut expected = Vec::with_capacity(size + 64);
    let mut next = 0u64;
    loop {
        if state.stopped.get() && next >= state.published.get() {
            return Ok(());
        }
        let stopped = state.stop.notified();
        tokio::pin!(stopped);
        stopped.as_mut().enable();
        tokio::select! {
            read = member.fill() => read?,
            () = stopped => continue,
            () = tokio::time::sleep(STALL) => {
                return Err(format!("publication {next} did not arrive within {STALL:?}"));
            }
        }
        let now = Instant::now();
        let mut got = 0u64;
        while let Some(frame) = member.parse()? {
            let Some(range) = member.control(frame) else {
                continue;
            };
            expected.clear();
            expected.extend_from_slice(b"42[\"room-message\",\"");
            publication(&mut expected, next, size);
            expected.extend_from_slice(b"\"]");
            if member.slice(&range) != &expected[..] {
                return Err(format!(
                    "expected {:?}, got {:?}",
                    String::from_utf8_lossy(&expected),
                    String::from_utf8_lossy(member.slice(&range))
                ));
            }
            state.delivered(next);
            next += 1;
            got += 1;
        }
        if clock.measuring(now) {
            state.measured.set(state.measured.get() + got);
        }
        counter.fetch_add(got, Ordering::Relaxed);
        member.flush().await?;
    }
}

/// `idle`: N clients joined to `/`, idle; the server's memory growth per client.
async fn idle(args: &SocketIoArgs, target: &Target, uri: &http::Uri) -> Result<ExitCode, String> {
    let before: Option<Memory> = args.server_pid.map(read_memory).transpose()?;
    let counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(args.hold + args.settle, args.json, counter.clone(), "conn");
    let started = Instant::now();
    let clients = open_clients(target, uri, args.connections, &counter).await?;
    let open_secs = started.elapsed().as_secs_f64();
    let opened = clients.len();
    let closed = Rc::new(Cell::new(0u64));
    let pings = Rc::new(Cell::new(0u64));
    let mut holders = JoinSet::new();
    for mut client in clients {
        let (closed, pings) = (closed.clone(), pings.clone());
        holders.spawn_local(async move {
            // Answers heartbeats until the server closes the connection or the run ends.
            let held = async {
                loop {
                    client.fill().await?;
                    while let Some(frame) = client.parse()? {
                        let _ = client.control(frame);
                    }
                    client.flush().await?;
                    pings.set(client.pings);
                }
            };
            let _: Result<(), String> = held.await;
            closed.set(closed.get() + 1);
        });
    }
    let held_from = Instant::now();
    tokio::time::sleep(args.settle).await;
    let after: Option<Memory> = args.server_pid.map(read_memory).transpose()?;
    if let Some(rest) = args.hold.checked_sub(held_from.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    drop(progress);
    let closed = closed.get();
    holders.abort_all();
    while holders.join_next().await.is_some() {}
    let (rss_per, anon_per) = per_connection(&before, &after, opened);
    let ok = opened == args.connections && closed == 0;
    if args.json {
        let kib = |m: &Option<Memory>, f: fn(&Memory) -> Option<u64>| m.as_ref().and_then(f);
        let json = serde_json::json!({
            "mode": "socketio",
            "workload": "idle",
            "url": args.url,
            "count": args.connections,
            "opened": opened,
            "closed_while_held": closed,
            "open_s": round3(open_secs),
            "server_pid": args.server_pid,
            "vm_rss_kib_before": kib(&before, |m| m.vm_rss),
            "vm_rss_kib_after": kib(&after, |m| m.vm_rss),
            "rss_anon_kib_before": kib(&before, |m| m.rss_anon),
            "rss_anon_kib_after": kib(&after, |m| m.rss_anon),
            "vm_rss_bytes_per_connection": rss_per.map(round3),
            "rss_anon_bytes_per_connection": anon_per.map(round3),
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench socketio {} (idle): {opened} of {} clients joined / in {open_secs:.2} s",
            args.url, args.connections
        );
        let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{:.2} KiB", v / 1024.0));
        println!(
            "  server VmRSS {} per client (RssAnon {})",
            show(rss_per),
            show(anon_per)
        );
        println!("  closed by the server while held: {closed}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_ascii_sized_and_distinct() {
        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        payload(&mut a, 3, 7, 20);
        payload(&mut b, 3, 8, 20);
        payload(&mut c, 4, 7, 20);
        assert_eq!(a.len(), 20);
        assert!(a.iter().all(u8::is_ascii_alphabetic));
        assert_ne!(a, b);
        assert_ne!(a, c);
        let mut p = Vec::new();
        publication(&mut p, 12, 20);
        assert_eq!(p.len(), 20);
        assert!(p.starts_with(b"p12:"));
    }

    #[test]
    fn engineio_uri_defaults_to_socket_io() {
        let uri: http::Uri = "ws://127.0.0.1:3000".parse().unwrap();
        assert_eq!(
            engineio_uri(&uri).unwrap().to_string(),
            "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
        );
        let uri: http::Uri = "ws://127.0.0.1:3000/io/".parse().unwrap();
        assert_eq!(
            engineio_uri(&uri).unwrap().to_string(),
            "ws://127.0.0.1:3000/io/?EIO=4&transport=websocket"
        );
    }
}
