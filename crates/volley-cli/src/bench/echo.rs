//! `volley bench echo`: N connections, K messages in flight each, every echo verified.
//!
//! After the WebSocket handshake (done with `volley-proto`'s [`ClientHandshake`]
//! (volley::proto::handshake::ClientHandshake)), each connection is driven by a lean frame
//! writer and reader on the raw `TcpStream`: frames are written from a pre-masked pool of
//! payload bytes into one reusable buffer (every frame produced in one turn goes out in one
//! write), and echoes are parsed and compared in place in one reusable read buffer. This costs
//! a fraction of a full WebSocket client per message (measured in docs/BENCH.md), so the
//! generator measures the server rather than itself.
//!
//! Message `seq` of a connection carries an 8-byte tag that encodes `seq`, followed by pool
//! bytes from an offset chosen by `seq`: every message differs, and an echo that is wrong, late,
//! reordered or from another message is detected.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::ErrorKind;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::TcpStream;
use tokio::task::{JoinSet, LocalSet};

use super::{
    CONNECT_TIMEOUT, Progress, Target, cpu_time_ns, current_thread_runtime, latency_histogram,
    latency_summary, parse_duration, round3, ws_handshake,
};

/// Time a connection may take past the end of the run to notice it (one more echo).
const GRACE: Duration = Duration::from_secs(3);
/// Bytes of the per-message tag that encodes the sequence number.
const TAG: usize = 8;
/// Distinct payload offsets into the pool (each a multiple of 4, so the pool is pre-masked).
const OFFSETS: usize = 1024;
/// Most connections opened at once per thread.
const CONNECT_CONCURRENCY: usize = 256;
/// Largest message size accepted.
const MAX_SIZE: usize = 16 << 20;
/// Largest total of bytes in flight (connections × in-flight × size).
const MAX_IN_FLIGHT_BYTES: u64 = 2 << 30;
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;

/// Arguments of `volley bench echo`.
#[derive(clap::Args)]
pub(crate) struct EchoArgs {
    /// The echo server: ws://host:port/path, or tcp://host:port for a raw TCP echo server.
    #[arg(long, required_unless_present = "raw", conflicts_with = "raw")]
    url: Option<String>,
    /// A raw TCP echo server (tcp://host:port): no handshake; each connection sends the bytes a
    /// WebSocket client would (masked frames) and expects them back verbatim.
    #[arg(long, value_name = "URL")]
    raw: Option<String>,
    /// Number of connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 20)]
    size: usize,
    /// Messages in flight per connection (each echo received sends one more).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Measured duration (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before the measured duration.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Send binary messages (default: text).
    #[arg(long)]
    binary: bool,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// Load-generator threads, each a single-threaded runtime with its share of the connections.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The client side for ws:// targets: `lean` (pre-masked frames written and parsed directly
    /// on the socket; the default) or `volley` (volley's WebSocket API: feed, flush, recv), to
    /// compare the generator's own cost.
    #[arg(long, value_enum, default_value = "lean")]
    client: ClientImpl,
    /// The server's process id: its CPU time over the measured window (from
    /// /proc/<pid>/task/*/schedstat) is reported as server CPU per echo, which stays comparable
    /// between servers when the load generator, not the server, sets the rate (the generator's
    /// own CPU use is reported beside it).
    #[arg(long)]
    server_pid: Option<u32>,
}

/// CPU used over the measured window, in seconds: the server's (with `--server-pid`) and this
/// process's own.
#[derive(Clone, Copy, Default)]
struct CpuUse {
    server_s: Option<f64>,
    generator_s: Option<f64>,
}

/// Set once the last CPU sample is taken: load-generator threads wait for it before they end,
/// so that their CPU time is still in /proc/self/task when it is read.
#[derive(Default)]
struct Sampled {
    done: Mutex<bool>,
    cond: Condvar,
}

impl Sampled {
    fn set(&self) {
        *self.done.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.cond.notify_all();
    }

    /// Waits until set, at most `limit`.
    fn wait(&self, limit: Duration) {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.cond.wait_timeout_while(done, limit, |done| !*done);
    }
}

/// Samples the CPU time of the server and of this process (its threads' schedstat) at the
/// start and at the end of the measured window, on a thread of its own: the window starts
/// `warmup` after `start` is set.
fn sample_cpu(
    start: Arc<OnceLock<Instant>>,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
    failed: Arc<AtomicBool>,
    sampled: Arc<Sampled>,
) -> std::thread::JoinHandle<CpuUse> {
    std::thread::spawn(move || {
        let cpu = measure_cpu(&start, warmup, duration, server_pid, &failed);
        sampled.set();
        cpu
    })
}

/// The CPU the server and this process use over the measured window (see [`sample_cpu`]);
/// nothing if the run failed before it started.
fn measure_cpu(
    start: &OnceLock<Instant>,
    warmup: Duration,
    duration: Duration,
    server_pid: Option<u32>,
    failed: &AtomicBool,
) -> CpuUse {
    let begin = loop {
        if let Some(begin) = start.get() {
            break *begin;
        }
        if failed.load(Ordering::SeqCst) {
            return CpuUse::default();
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    let sleep_until =
        |at: Instant| std::thread::sleep(at.saturating_duration_since(Instant::now()));
    let me = std::process::id();
    let sample = || (server_pid.map(cpu_time_ns), cpu_time_ns(me));
    sleep_until(begin + warmup);
    let (server0, me0) = sample();
    sleep_until(begin + warmup + duration);
    let (server1, me1) = sample();
    let seconds = |a: Result<u64, String>, b: Result<u64, String>| {
        Some(b.ok()?.saturating_sub(a.ok()?) as f64 / 1e9)
    };
    CpuUse {
        server_s: server0.zip(server1).and_then(|(a, b)| seconds(a, b)),
        generator_s: seconds(me0, me1),
    }
}

/// How `echo` drives a ws:// connection after the handshake.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ClientImpl {
    /// Pre-masked frames written and parsed directly on the socket.
    Lean,
    /// Volley's WebSocket API.
    Volley,
}

/// What every connection sends and expects: built once, shared read-only.
struct Plan {
    size: usize,
    in_flight: usize,
    raw: bool,
    /// First header byte of a data frame: FIN and the opcode.
    first_byte: u8,
    key: [u8; 4],
    /// The client frame's header, mask key included.
    header: Vec<u8>,
    /// The payload source, and the same XORed with `key` (aligned at 0).
    pool: Vec<u8>,
    masked_pool: Vec<u8>,
}

impl Plan {
    fn new(size: usize, in_flight: usize, raw: bool, binary: bool) -> Self {
        let first_byte = if binary { 0x82 } else { 0x81 };
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut header = vec![first_byte];
        if size < 126 {
            header.push(0x80 | size as u8);
        } else if size <= usize::from(u16::MAX) {
            header.push(0x80 | 126);
            header.extend_from_slice(&(size as u16).to_be_bytes());
        } else {
            header.push(0x80 | 127);
            header.extend_from_slice(&(size as u64).to_be_bytes());
        }
        header.extend_from_slice(&key);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let pool: Vec<u8> = (0..size + 4 * OFFSETS)
            .map(|_| {
                // xorshift64: deterministic, cheap, well spread.
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if binary {
                    (x >> 24) as u8
                } else {
                    b'a' + ((x >> 24) % 26) as u8
                }
            })
            .collect();
        let masked_pool = pool
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        Self {
            size,
            in_flight,
            raw,
            first_byte,
            key,
            header,
            pool,
            masked_pool,
        }
    }

    fn frame_len(&self) -> usize {
        self.header.len() + self.size
    }

    fn offset(seq: u64) -> usize {
        ((seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 54) as usize % OFFSETS) * 4
    }

    /// The tag of message `seq`: ASCII (valid in text messages), 40 bits of `seq`.
    fn tag(seq: u64) -> [u8; TAG] {
        std::array::from_fn(|i| b'A' + ((seq >> (5 * i)) & 31) as u8)
    }

    /// Appends the masked frame of message `seq` to `out`.
    fn push_frame(&self, out: &mut Vec<u8>, seq: u64) {
        let off = Self::offset(seq);
        out.extend_from_slice(&self.header);
        let start = out.len();
        out.extend_from_slice(&self.masked_pool[off..off + self.size]);
        let tag = Self::tag(seq);
        for (j, t) in tag.iter().enumerate().take(self.size) {
            out[start + j] = t ^ self.key[j % 4];
        }
    }

    /// Whether `payload` is the payload of message `seq`, masked (raw echo) or not.
    fn payload_matches(&self, payload: &[u8], seq: u64, masked: bool) -> bool {
        if payload.len() != self.size {
            return false;
        }
        let off = Self::offset(seq);
        let tag = Self::tag(seq);
        let n = TAG.min(self.size);
        for j in 0..n {
            let expected = if masked {
                tag[j] ^ self.key[j % 4]
            } else {
                tag[j]
            };
            if payload[j] != expected {
                return false;
            }
        }
        let source = if masked {
            &self.masked_pool
        } else {
            &self.pool
        };
        payload[n..] == source[off + n..off + self.size]
    }
}

/// The measured window, shared by every connection.
#[derive(Clone, Copy)]
struct Clock {
    measure_from: Instant,
    end: Instant,
}

/// One thread's results.
struct Totals {
    histogram: Histogram<u64>,
    completed: u64,
    sent: u64,
    mismatches: u64,
    connection_errors: u64,
    stalled: u64,
    errors: Vec<String>,
}

impl Totals {
    fn new() -> Self {
        Self {
            histogram: latency_histogram(),
            completed: 0,
            sent: 0,
            mismatches: 0,
            connection_errors: 0,
            stalled: 0,
            errors: Vec::new(),
        }
    }

    fn note(&mut self, error: String) {
        if self.errors.len() < MAX_ERRORS_KEPT {
            self.errors.push(error);
        }
    }

    fn merge(&mut self, other: Totals) {
        let _ = self.histogram.add(&other.histogram);
        self.completed += other.completed;
        self.sent += other.sent;
        self.mismatches += other.mismatches;
        self.connection_errors += other.connection_errors;
        self.stalled += other.stalled;
        for e in other.errors {
            self.note(e);
        }
    }
}

pub(super) fn run(args: EchoArgs) -> Result<ExitCode, String> {
    let url = match (&args.url, &args.raw) {
        (Some(url), None) => url.clone(),
        (None, Some(raw)) => {
            if !raw.starts_with("tcp://") {
                return Err(format!(
                    "--raw takes a tcp://host:port address, not {raw:?}"
                ));
            }
            raw.clone()
        }
        _ => return Err("give exactly one of --url and --raw".into()),
    };
    let target = Target::parse(&url)?;
    if target.is_raw() && args.client == ClientImpl::Volley {
        return Err("--client volley needs a ws:// URL".into());
    }
    let client = args.client;
    if args.connections == 0 || args.connections > 100_000 {
        return Err("--connections must be between 1 and 100000".into());
    }
    if args.in_flight == 0 || args.in_flight > 100_000 {
        return Err("--in-flight must be between 1 and 100000".into());
    }
    if args.size > MAX_SIZE {
        return Err(format!("--size must be at most {MAX_SIZE} bytes"));
    }
    if args.threads == 0 || args.threads > 256 {
        return Err("--threads must be between 1 and 256".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    let in_flight_bytes = args.connections as u64 * args.in_flight as u64 * (args.size as u64 + 14);
    if in_flight_bytes > MAX_IN_FLIGHT_BYTES {
        return Err(format!(
            "connections × in-flight × size is {in_flight_bytes} bytes, more than the limit of \
             {MAX_IN_FLIGHT_BYTES}"
        ));
    }
    let threads = args.threads.min(args.connections);
    let plan = Arc::new(Plan::new(
        args.size,
        args.in_flight,
        target.is_raw(),
        args.binary,
    ));
    let progress_counter = Arc::new(AtomicU64::new(0));
    let start = Arc::new(OnceLock::new());
    let barrier = Arc::new(Barrier::new(threads));
    let failed = Arc::new(AtomicBool::new(false));
    let (warmup, duration) = (args.warmup, args.duration);

    let sampled = Arc::new(Sampled::default());
    let mut handles = Vec::with_capacity(threads);
    for t in 0..threads {
        let indices: Vec<usize> = (t..args.connections).step_by(threads).collect();
        let (plan, counter, start, barrier, failed, target, sampled) = (
            plan.clone(),
            progress_counter.clone(),
            start.clone(),
            barrier.clone(),
            failed.clone(),
            target.clone(),
            sampled.clone(),
        );
        handles.push(std::thread::spawn(move || -> Result<Totals, String> {
            let runtime = current_thread_runtime();
            let local = LocalSet::new();
            let opened = match &runtime {
                Ok(rt) => local.block_on(rt, open_all(&target, indices)),
                Err(e) => Err(e.clone()),
            };
            if opened.is_err() {
                failed.store(true, Ordering::SeqCst);
            }
            barrier.wait();
            let (runtime, streams) = match (runtime, opened) {
                (Ok(rt), Ok(streams)) if !failed.load(Ordering::SeqCst) => (rt, streams),
                (_, Err(e)) | (Err(e), _) => return Err(e),
                _ => return Err("another thread could not connect".into()),
            };
            let begin = *start.get_or_init(Instant::now);
            let clock = Clock {
                measure_from: begin + warmup,
                end: begin + warmup + duration,
            };
            let totals = Rc::new(RefCell::new(Totals::new()));
            local.block_on(&runtime, async {
                let mut tasks = JoinSet::new();
                for (index, stream, leftover) in streams {
                    let (plan, totals, counter) = (plan.clone(), totals.clone(), counter.clone());
                    tasks.spawn_local(async move {
                        let first_seq = (index as u64) << 24;
                        let driven = match client {
                            ClientImpl::Lean => {
                                drive(stream, leftover, &plan, clock, &totals, &counter, first_seq)
                                    .await
                            }
                            ClientImpl::Volley => {
                                drive_volley(
                                    stream, leftover, &plan, clock, &totals, &counter, first_seq,
                                )
                                .await
                            }
                        };
                        if let Err(e) = driven {
                            let mut totals = totals.borrow_mut();
                            totals.connection_errors += 1;
                            totals.note(format!("connection {index}: {e}"));
                        }
                    });
                }
                let deadline = tokio::time::Instant::from_std(clock.end + GRACE);
                while let Ok(Some(joined)) =
                    tokio::time::timeout_at(deadline, tasks.join_next()).await
                {
                    if let Err(e) = joined {
                        let mut totals = totals.borrow_mut();
                        totals.connection_errors += 1;
                        totals.note(format!("a connection task failed: {e}"));
                    }
                }
                let stalled = tasks.len() as u64;
                if stalled > 0 {
                    let mut totals = totals.borrow_mut();
                    totals.stalled += stalled;
                    totals.note(format!(
                        "{stalled} connection(s) got no echo in the {GRACE:?} after the end"
                    ));
                }
                tasks.abort_all();
            });
            // The last CPU sample counts this thread: it ends only after it.
            sampled.wait(GRACE);
            drop(local);
            runtime.shutdown_background();
            let totals = Rc::try_unwrap(totals)
                .map_err(|_| "connection tasks outlived the run".to_string())?
                .into_inner();
            Ok(totals)
        }));
    }
    let sampler = sample_cpu(
        start.clone(),
        warmup,
        duration,
        args.server_pid,
        failed.clone(),
        sampled,
    );
    let progress = Progress::start(warmup + duration, args.json, progress_counter, "msg");
    let mut totals = Totals::new();
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(t)) => totals.merge(t),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert("a load-generator thread panicked".into());
            }
        }
    }
    drop(progress);
    if let Some(e) = first_error {
        return Err(e);
    }
    let cpu = sampler.join().unwrap_or_default();
    if args.server_pid.is_some() && cpu.server_s.is_none() {
        return Err(format!(
            "could not read the CPU time of the server (pid {}) from /proc",
            args.server_pid.unwrap_or_default()
        ));
    }
    Ok(report(&args, &url, threads, &totals, cpu))
}

type Opened = (usize, TcpStream, Vec<u8>);

/// Connects (and for ws://, handshakes) the connections `indices`, a bounded number at a time.
async fn open_all(target: &Target, indices: Vec<usize>) -> Result<Vec<Opened>, String> {
    let mut opened = Vec::with_capacity(indices.len());
    let mut tasks = JoinSet::new();
    for index in indices {
        if tasks.len() >= CONNECT_CONCURRENCY
            && let Some(done) = tasks.join_next().await
        {
            opened.push(done.map_err(|e| format!("connecting: {e}"))??);
        }
        let target = target.clone();
        tasks.spawn_local(async move {
            let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr));
            let mut stream = connect
                .await
                .map_err(|_| format!("connecting to {} timed out", target.addr))?
                .map_err(|e| format!("cannot connect to {}: {e}", target.addr))?;
            let _ = stream.set_nodelay(true);
            let leftover = match &target.uri {
                Some(uri) => ws_handshake(&mut stream, uri).await?,
                None => Vec::new(),
            };
            Ok::<_, String>((index, stream, leftover))
        });
    }
    while let Some(done) = tasks.join_next().await {
        opened.push(done.map_err(|e| format!("connecting: {e}"))??);
    }
    Ok(opened)
}

/// Runs one connection until the end of the run: keeps `in_flight` messages outstanding,
/// verifies each echo, records latencies in the measured window.
async fn drive(
    mut stream: TcpStream,
    leftover: Vec<u8>,
    plan: &Plan,
    clock: Clock,
    totals: &RefCell<Totals>,
    counter: &AtomicU64,
    first_seq: u64,
) -> Result<(), String> {
    let frame_len = plan.frame_len();
    let mut inbuf = vec![0u8; (64 << 10).max(2 * frame_len).max(leftover.len())];
    inbuf[..leftover.len()].copy_from_slice(&leftover);
    let (mut rpos, mut rend) = (0usize, leftover.len());
    let mut unparsed = rend > 0;
    let mut out = Vec::with_capacity(plan.in_flight * frame_len + 256);
    let mut opos = 0usize;
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(plan.in_flight);
    let (mut next_send, mut next_recv) = (first_seq, first_seq);
    let now = Instant::now();
    for _ in 0..plan.in_flight {
        plan.push_frame(&mut out, next_send);
        next_send += 1;
        sent_at.push_back(now);
    }
    let mut sent = plan.in_flight as u64;
    let result = loop {
        if opos < out.len() {
            match stream.try_write(&out[opos..]) {
                Ok(n) => opos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => break Err(format!("write: {e}")),
            }
            if opos == out.len() {
                out.clear();
                opos = 0;
            }
        }
        // The handshake's leftover (frames already buffered) is parsed before reading.
        if !std::mem::take(&mut unparsed) {
            if rend == inbuf.len() {
                // Room for the rest of the partial frame: the buffer holds two whole frames.
                inbuf.copy_within(rpos..rend, 0);
                (rpos, rend) = (0, rend - rpos);
            }
            let read = if opos < out.len() {
                // Output is pending (the socket's send buffer was full): wait for either.
                let interest = Interest::READABLE | Interest::WRITABLE;
                match stream.ready(interest).await {
                    Ok(r) if r.is_readable() => match stream.try_read(&mut inbuf[rend..]) {
                        Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                        other => other,
                    },
                    Ok(_) => continue,
                    Err(e) => Err(e),
                }
            } else {
                // A plain read: a short read clears the readiness, which saves the extra
                // read returning EWOULDBLOCK that try_read would need.
                stream.read(&mut inbuf[rend..]).await
            };
            match read {
                Ok(0) => break Err("the server closed the connection".into()),
                Ok(n) => rend += n,
                Err(e) => break Err(format!("read: {e}")),
            }
        }
        let now = Instant::now();
        let measuring = now >= clock.measure_from && now < clock.end;
        let mut done = 0u64;
        let mut echoed = 0u64;
        let mut mismatches = 0u64;
        let mut first_mismatch = None;
        let mut parse_error = None;
        let mut totals_guard = None;
        loop {
            let buf = &inbuf[rpos..rend];
            let parsed = if plan.raw {
                (buf.len() >= frame_len).then(|| Frame::Echo {
                    payload: plan.header.len()..frame_len,
                    len: frame_len,
                    header_ok: buf[..plan.header.len()] == plan.header[..],
                })
            } else {
                match parse_server_frame(buf, plan) {
                    Ok(f) => f,
                    Err(e) => {
                        parse_error = Some(e);
                        break;
                    }
                }
            };
            let Some(frame) = parsed else { break };
            match frame {
                Frame::Echo {
                    payload,
                    len,
                    header_ok,
                } => {
                    let Some(sent_time) = sent_at.pop_front() else {
                        parse_error = Some("an echo of a message that was never sent".into());
                        break;
                    };
                    if !(header_ok && plan.payload_matches(&buf[payload], next_recv, plan.raw)) {
                        mismatches += 1;
                        first_mismatch.get_or_insert(next_recv - first_seq);
                    }
                    next_recv += 1;
                    echoed += 1;
                    rpos += len;
                    if measuring {
                        done += 1;
                        let totals = totals_guard.get_or_insert_with(|| totals.borrow_mut());
                        let ns = now.duration_since(sent_time).as_nanos();
                        totals
                            .histogram
                            .saturating_record(ns.min(u128::from(u64::MAX)) as u64);
                    }
                    if now < clock.end {
                        plan.push_frame(&mut out, next_send);
                        next_send += 1;
                        sent += 1;
                        sent_at.push_back(now);
                    }
                }
                Frame::Ping { payload, len } => {
                    // Answer keep-alive pings so that long runs are not cut off.
                    let data = &buf[payload];
                    out.push(0x8a);
                    out.push(0x80 | data.len() as u8);
                    out.extend_from_slice(&plan.key);
                    out.extend(data.iter().enumerate().map(|(i, b)| b ^ plan.key[i % 4]));
                    rpos += len;
                }
                Frame::Skip { len } => rpos += len,
            }
        }
        if rpos == rend {
            (rpos, rend) = (0, 0);
        }
        if done > 0 || mismatches > 0 {
            let totals = totals_guard.get_or_insert_with(|| totals.borrow_mut());
            totals.completed += done;
            totals.mismatches += mismatches;
            if let Some(seq) = first_mismatch {
                totals.note(format!(
                    "message {seq} of connection {}: the echo differs from what was sent",
                    first_seq >> 24
                ));
            }
        }
        if echoed > 0 {
            counter.fetch_add(echoed, Ordering::Relaxed);
        }
        drop(totals_guard);
        if let Some(e) = parse_error {
            break Err(e);
        }
        if now >= clock.end {
            break Ok(());
        }
    };
    totals.borrow_mut().sent += sent;
    result
}

/// Like [`drive`], with volley's WebSocket API (for comparing the generator's cost).
async fn drive_volley(
    stream: TcpStream,
    leftover: Vec<u8>,
    plan: &Plan,
    clock: Clock,
    totals: &RefCell<Totals>,
    counter: &AtomicU64,
    first_seq: u64,
) -> Result<(), String> {
    let config = volley::Config::default()
        .max_message_size(plan.size.max(1024))
        .ping_interval(None);
    let mut ws = volley::WebSocket::from_raw(stream, volley::Role::Client, config, &leftover);
    let message = |seq: u64| {
        let off = Plan::offset(seq);
        let mut payload = plan.pool[off..off + plan.size].to_vec();
        for (j, t) in Plan::tag(seq).iter().enumerate().take(plan.size) {
            payload[j] = *t;
        }
        if plan.first_byte == 0x81 {
            // The pool and tag of text messages are ASCII.
            volley::Message::text(String::from_utf8(payload).unwrap_or_default())
        } else {
            volley::Message::binary(payload)
        }
    };
    let mut sent_at: VecDeque<Instant> = VecDeque::with_capacity(plan.in_flight);
    let (mut next_send, mut next_recv) = (first_seq, first_seq);
    let now = Instant::now();
    for _ in 0..plan.in_flight {
        ws.feed(message(next_send))
            .await
            .map_err(|e| e.to_string())?;
        next_send += 1;
        sent_at.push_back(now);
    }
    ws.flush().await.map_err(|e| e.to_string())?;
    let mut sent = plan.in_flight as u64;
    let result = loop {
        let received = match ws.recv().await {
            Some(Ok(m)) if m.is_data() => m,
            Some(Ok(_)) => continue,
            Some(Err(e)) => break Err(e.to_string()),
            None => break Err("the server closed the connection".into()),
        };
        let now = Instant::now();
        let Some(sent_time) = sent_at.pop_front() else {
            break Err("an echo of a message that was never sent".into());
        };
        let matches = plan.payload_matches(received.payload(), next_recv, false);
        {
            let mut totals = totals.borrow_mut();
            if !matches {
                totals.mismatches += 1;
                totals.note(format!(
                    "message {} of connection {}: the echo differs from what was sent",
                    next_recv - first_seq,
                    first_seq >> 24
                ));
            }
            if now >= clock.measure_from && now < clock.end {
                totals.completed += 1;
                let ns = now.duration_since(sent_time).as_nanos();
                totals
                    .histogram
                    .saturating_record(ns.min(u128::from(u64::MAX)) as u64);
            }
        }
        counter.fetch_add(1, Ordering::Relaxed);
        next_recv += 1;
        if now >= clock.end {
            break Ok(());
        }
        if let Err(e) = ws.send(message(next_send)).await {
            break Err(e.to_string());
        }
        next_send += 1;
        sent += 1;
        sent_at.push_back(now);
    };
    totals.borrow_mut().sent += sent;
    result
}

/// A frame from the server, as ranges into the read buffer.
enum Frame {
    /// A data frame (or, raw, the next frame's worth of bytes).
    Echo {
        payload: std::ops::Range<usize>,
        len: usize,
        header_ok: bool,
    },
    /// A ping to answer.
    Ping {
        payload: std::ops::Range<usize>,
        len: usize,
    },
    /// A frame to ignore (pong).
    Skip { len: usize },
}

/// Parses the server frame at the start of `buf`: `Ok(None)` if incomplete.
fn parse_server_frame(buf: &[u8], plan: &Plan) -> Result<Option<Frame>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err("the server sent a masked frame".into());
    }
    let (len, header) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let limit = plan.size.max(125) as u64;
    if len > limit {
        return Err(format!(
            "the server sent a frame of {len} bytes, more than the {} sent",
            plan.size
        ));
    }
    let total = header + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let payload = header..total;
    match b0 {
        b if b == plan.first_byte => Ok(Some(Frame::Echo {
            payload,
            len: total,
            header_ok: true,
        })),
        0x89 => Ok(Some(Frame::Ping {
            payload,
            len: total,
        })),
        0x8a => Ok(Some(Frame::Skip { len: total })),
        0x88 => {
            let code = (len >= 2).then(|| u16::from_be_bytes([buf[header], buf[header + 1]]));
            Err(format!(
                "the server closed the connection (close code {})",
                code.map_or("none".to_string(), |c| c.to_string())
            ))
        }
        other => Err(format!(
            "unexpected frame (first byte {other:#04x}; fragmented or wrong-type echoes are not \
             supported)"
        )),
    }
}

fn report(args: &EchoArgs, url: &str, threads: usize, totals: &Totals, cpu: CpuUse) -> ExitCode {
    let secs = args.duration.as_secs_f64();
    // Microseconds of server CPU per echo, and CPU use as a percentage of one core.
    let per_echo = |s: Option<f64>| {
        s.filter(|_| totals.completed > 0)
            .map(|s| round3(s * 1e6 / totals.completed as f64))
    };
    let percent = |s: Option<f64>| s.map(|s| round3(s * 100.0 / secs));
    let msg_per_s = totals.completed as f64 / secs;
    let one_way = totals.completed as f64 * args.size as f64 / secs / 1e6;
    let errors = totals.mismatches + totals.connection_errors + totals.stalled;
    let ok = errors == 0 && totals.completed > 0;
    let (latency_json, latency_text) = latency_summary(&totals.histogram);
    if args.json {
        let json = serde_json::json!({
            "mode": "echo",
            "url": url,
            "raw": args.raw.is_some() || url.starts_with("tcp://"),
            "connections": args.connections,
            "size": args.size,
            "in_flight": args.in_flight,
            "binary": args.binary,
            "threads": threads,
            "duration_s": secs,
            "warmup_s": args.warmup.as_secs_f64(),
            "messages": totals.completed,
            "sent": totals.sent,
            "msg_per_s": round3(msg_per_s),
            "mb_per_s_one_way": round3(one_way),
            "mb_per_s_both_ways": round3(2.0 * one_way),
            "latency_us": latency_json,
            "server_pid": args.server_pid,
            "server_cpu_s": cpu.server_s.map(round3),
            "server_cpu_us_per_msg": per_echo(cpu.server_s),
            "server_cpu_percent": percent(cpu.server_s),
            "generator_cpu_percent": percent(cpu.generator_s),
            "mismatches": totals.mismatches,
            "connection_errors": totals.connection_errors,
            "stalled_connections": totals.stalled,
            "errors": totals.errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench echo {url}: {} connection(s) × {} B {}, {} in flight each, {secs} s \
             measured after {} s warm-up, {threads} thread(s)",
            args.connections,
            args.size,
            if args.binary { "binary" } else { "text" },
            args.in_flight,
            args.warmup.as_secs_f64(),
        );
        println!(
            "  {msg_per_s:.0} msg/s ({} echoes), {one_way:.2} MB/s of payload each way ({:.2} MB/s \
             both ways; MB = 10^6 bytes)",
            totals.completed,
            2.0 * one_way
        );
        println!("  round trip: {latency_text}");
        if let Some(per) = per_echo(cpu.server_s) {
            println!(
                "  server CPU: {per:.3} µs per echo ({:.0} % of a core)",
                percent(cpu.server_s).unwrap_or_default()
            );
        }
        if let Some(me) = percent(cpu.generator_s) {
            println!(
                "  generator CPU: {me:.0} % of a core{}",
                if me >= 90.0 * threads as f64 {
                    " (saturated: the generator, not the server, may set the rate; compare \
                     server CPU per echo)"
                } else {
                    ""
                }
            );
        }
        println!(
            "  errors: {} mismatched echoes, {} connection errors, {} stalled connections",
            totals.mismatches, totals.connection_errors, totals.stalled
        );
        for e in &totals.errors {
            println!("    {e}");
        }
    }
    if !ok {
        if totals.completed == 0 {
            eprintln!("volley bench echo: no message completed");
        }
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify_and_differ() {
        for (size, binary) in [
            (0, false),
            (3, true),
            (20, false),
            (200, true),
            (70_000, true),
        ] {
            let plan = Plan::new(size, 1, false, binary);
            let mut a = Vec::new();
            plan.push_frame(&mut a, 7);
            let mut b = Vec::new();
            plan.push_frame(&mut b, 8);
            assert_eq!(a.len(), plan.frame_len());
            if size > 0 {
                assert_ne!(a, b, "size {size}");
            }
            let payload = &a[plan.header.len()..];
            assert!(plan.payload_matches(payload, 7, true));
            let unmasked: Vec<u8> = payload
                .iter()
                .enumerate()
                .map(|(i, x)| x ^ plan.key[i % 4])
                .collect();
            assert!(plan.payload_matches(&unmasked, 7, false));
            if !binary {
                assert!(std::str::from_utf8(&unmasked).is_ok());
            }
            if size > 0 {
                assert!(!plan.payload_matches(&unmasked, 8, false));
                let mut flipped = unmasked.clone();
                *flipped.last_mut().expect("non-empty") ^= 1;
                assert!(!plan.payload_matches(&flipped, 7, false));
            }
        }
    }
}
