//! Deterministic network simulation of Socket.IO connection state recovery (issue #14): a
//! Socket.IO server with recovery on, served over [turmoil]'s simulated TCP (hyper, HTTP
//! long-polling), broadcasts numbered events to a room; a client written here (Engine.IO v4
//! polling, Socket.IO v5, as `socket.io-client` does it: a new session after every failure,
//! with the `pid` and the last `offset` it saw) stays in the room under a seeded fault schedule:
//! partitions between client and server (a long-poll whose response is lost takes its packets
//! with it), latency spikes, and server restarts.
//!
//! Node's semantics, checked on every run: each reconnection either recovers the session (same
//! socket id) and then gets every event it missed, or is a fresh session (the server had not yet
//! let the old one go, or restarted); events never repeat nor go back, and a missing event is
//! always followed by a fresh session — never lost within a recovered one. After the faults,
//! the last events arrive.
//!
//! Each scenario runs over many seeds; a failure names its seed: replay it with
//! `NETSIM_SEED=<seed> cargo test -p volley-socketio --test netsim`.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use volley_socketio::{RecoveryConfig, SocketIo};

const PORT: u16 = 3000;
/// Events the client must receive (the last one or a later one); the faults stop after
/// [`FAULTS_UNTIL`] of them.
const EVENTS: u32 = 200;
const FAULTS_UNTIL: u32 = 160;
const BROADCAST_EVERY: Duration = Duration::from_millis(100);
const PING_INTERVAL: Duration = Duration::from_millis(1000);
const PING_TIMEOUT: Duration = Duration::from_millis(2000);
const SIM_LIMIT: Duration = Duration::from_secs(300);
/// Seeds per scenario (`NETSIM_SEEDS` to change it).
const SEEDS: u64 = 40;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn tracing() -> bool {
    std::env::var_os("NETSIM_TRACE").is_some()
}

macro_rules! trace {
    ($($arg:tt)*) => {
        if tracing() {
            let now = turmoil::sim_elapsed().unwrap_or_default().as_secs_f64();
            eprintln!("[{now:>9.3}] {}", format_args!($($arg)*));
        }
    };
}

#[derive(Default)]
struct Shared {
    /// Events broadcast so far.
    broadcast: AtomicU32,
    /// Whether the client joined the room once (the broadcast waits for it).
    joined: AtomicBool,
    /// Set when the client received event [`EVENTS`] (or later): the broadcast stops.
    stop: AtomicBool,
    /// Events received: (sequence number, Engine.IO session it arrived in).
    received: Mutex<Vec<(u32, usize)>>,
    /// Per Engine.IO session of the client: `Some(recovered)` once its CONNECT was answered.
    sessions: Mutex<Vec<Option<bool>>>,
}

// ---------------------------------------------------------------------------------------------
// The server.

async fn server(shared: Arc<Shared>) -> turmoil::Result {
    let io = SocketIo::builder()
        .connection_state_recovery(RecoveryConfig::default())
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .transports(volley_engineio::Transports::POLLING)
        .build();
    let s = shared.clone();
    io.of("/").on_connection(move |socket| {
        // A recovered socket is back in its rooms already.
        if !socket.recovered() {
            socket.join("room");
        }
        s.joined.store(true, Ordering::SeqCst);
    });
    let broadcaster = io.clone();
    tokio::spawn(async move {
        while !shared.joined.load(Ordering::SeqCst) {
            tokio::time::sleep(ms(10)).await;
        }
        // After a restart the numbering goes on where it was; it goes on past `EVENTS` until
        // the client got there (a fresh session may start after event `EVENTS`).
        while !shared.stop.load(Ordering::SeqCst) {
            let seq = shared.broadcast.load(Ordering::SeqCst) + 1;
            broadcaster
                .to("room")
                .emit("tick", json!(seq))
                .expect("emit");
            shared.broadcast.store(seq, Ordering::SeqCst);
            tokio::time::sleep(BROADCAST_EVERY).await;
        }
    });
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let io = io.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let io = io.clone();
                async move { Ok::<_, std::convert::Infallible>(io.handle(request).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The client.

/// Why a session ended.
#[derive(Debug)]
struct Failed(#[allow(dead_code)] String);

/// One HTTP/1.1 request (`Connection: close`) within `limit`: the status and body.
async fn http(
    method: &str,
    path: &str,
    body: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), Failed> {
    let exchange = async {
        let mut stream = turmoil::net::TcpStream::connect(("server", PORT)).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(Failed(format!("{method}: {e}"))),
        Err(_) => return Err(Failed(format!("{method}: no answer within {limit:?}"))),
    };
    let raw = String::from_utf8(raw).map_err(|_| Failed("not UTF-8".into()))?;
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .ok_or(Failed("no end of headers".into()))?;
    let status: u16 = (head.split(' ').nth(1).and_then(|s| s.parse().ok()))
        .ok_or(Failed(format!("bad status line in {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// What the client keeps across sessions: the socket it had, and the last offset it saw.
#[derive(Default)]
struct Client {
    socket: Option<(String, String)>,
    offset: Option<String>,
    last_seq: u32,
}

async fn client(shared: Arc<Shared>, seed: u64) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = Client::default();
    loop {
        let ended = session(&shared, &mut state).await;
        trace!("session ended: {ended:?}");
        // Reconnect after a random delay, as socket.io-client does (its default is 1 s-5 s;
        // shorter here).
        tokio::time::sleep(ms(rng.random_range(100..1000))).await;
    }
}

/// One Engine.IO session: open, connect (recovering if it can), then poll until a failure.
async fn session(shared: &Shared, state: &mut Client) -> Failed {
    match run_session(shared, state).await {
        Ok(()) => Failed("closed".into()),
        Err(e) => e,
    }
}

async fn run_session(shared: &Shared, state: &mut Client) -> Result<(), Failed> {
    let base = "/socket.io/?EIO=4&transport=polling";
    let (status, body) = http("GET", base, None, ms(3000)).await?;
    let open: Value = (body
        .strip_prefix('0')
        .and_then(|j| serde_json::from_str(j).ok()))
    .ok_or(Failed(format!("open: {status} {body:?}")))?;
    let eio = open["sid"].as_str().expect("an Engine.IO sid").to_owned();
    let index = {
        let mut sessions = lock(&shared.sessions);
        sessions.push(None);
        sessions.len() - 1
    };
    let path = format!("{base}&sid={eio}");
    let connect = match (&state.socket, &state.offset) {
        (Some((_, pid)), Some(offset)) => format!("40{}", json!({"pid": pid, "offset": offset})),
        _ => "40".to_owned(),
    };
    post(&path, &connect).await?;
    loop {
        let (status, body) =
            http("GET", &path, None, PING_INTERVAL + PING_TIMEOUT + ms(1000)).await?;
        if status != 200 {
            return Err(Failed(format!("poll: {status} {body:?}")));
        }
        for packet in body.split('\x1e') {
            match packet.as_bytes().first() {
                Some(b'2') => post(&path, "3").await?,
                Some(b'1') => return Err(Failed("the server closed the session".into())),
                Some(b'4') => receive(shared, state, index, &packet[1..])?,
                _ => return Err(Failed(format!("unexpected packet {packet:?}"))),
            }
        }
    }
}

async fn post(path: &str, body: &str) -> Result<(), Failed> {
    let (status, answer) = http("POST", path, Some(body), ms(3000)).await?;
    if status != 200 {
        return Err(Failed(format!("post: {status} {answer:?}")));
    }
    Ok(())
}

/// One Socket.IO packet of session `index`.
fn receive(shared: &Shared, state: &mut Client, index: usize, packet: &str) -> Result<(), Failed> {
    if let Some(reply) = packet.strip_prefix("0{") {
        let reply: Value = serde_json::from_str(&format!("{{{reply}")).expect("a CONNECT reply");
        let sid = reply["sid"].as_str().expect("a sid").to_owned();
        let pid = reply["pid"]
            .as_str()
            .expect("a pid (recovery is on)")
            .to_owned();
        let recovered = state.socket.as_ref().is_some_and(|(old, _)| *old == sid);
        trace!("connected: sid {sid}, recovered {recovered}");
        lock(&shared.sessions)[index] = Some(recovered);
        if !recovered {
            // A fresh session: what the old socket missed is gone, and so is its offset.
            state.offset = None;
        }
        state.socket = Some((sid, pid));
        return Ok(());
    }
    if let Some(event) = packet.strip_prefix('2') {
        let event: Vec<Value> = serde_json::from_str(event).expect("an EVENT");
        let seq = event
            .get(1)
            .and_then(Value::as_u64)
            .expect("a sequence number") as u32;
        let offset = event.last().and_then(Value::as_str).expect("an offset");
        state.offset = Some(offset.to_owned());
        state.last_seq = seq;
        lock(&shared.received).push((seq, index));
        return Ok(());
    }
    Err(Failed(format!("unexpected Socket.IO packet {packet:?}")))
}

// ---------------------------------------------------------------------------------------------
// The simulation.

#[derive(Debug, Default)]
struct Outcome {
    seeds: usize,
    faults: usize,
    recovered: usize,
    fresh: usize,
    missed: usize,
    sim_secs: f64,
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    restarts: bool,
}

fn run(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    let seed = (scenario.name.bytes()).fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let shared = Arc::new(Shared::default());
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(SIM_LIMIT + Duration::from_secs(60))
        .tick_duration(ms(10))
        .min_message_latency(ms(1))
        .max_message_latency(ms(20))
        .build();
    let s = shared.clone();
    sim.host("server", move || server(s.clone()));
    sim.client("client", client(shared.clone(), seed ^ 0x77));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let mut next_fault = ms(rng.random_range(1000..3000));
    let mut active: Option<(bool, Duration)> = None;
    loop {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
        let now = sim.elapsed();
        if now > SIM_LIMIT {
            return Err(format!(
                "stuck at {now:?}: {} broadcast, last received {:?}",
                shared.broadcast.load(Ordering::SeqCst),
                lock(&shared.received).last()
            ));
        }
        let faulty = shared.broadcast.load(Ordering::SeqCst) < FAULTS_UNTIL;
        if let Some((latency, until)) = active {
            if now >= until || !faulty {
                if latency {
                    sim.set_link_max_message_latency("client", "server", ms(20));
                } else {
                    sim.repair("client", "server");
                }
                if tracing() {
                    eprintln!("[{:>9.3}] fault over", now.as_secs_f64());
                }
                active = None;
                next_fault = now + ms(rng.random_range(500..4000));
            }
        }
        if faulty && active.is_none() && now >= next_fault {
            outcome.faults += 1;
            next_fault = now + ms(rng.random_range(1000..5000));
            let kind = rng.random_range(0..if scenario.restarts { 3 } else { 2 });
            let lasts = ms(rng.random_range(100..6000));
            if tracing() {
                let name = ["partition", "latency spike", "server restart"][kind];
                eprintln!("[{:>9.3}] {name} ({lasts:?})", now.as_secs_f64());
            }
            match kind {
                0 => {
                    sim.partition("client", "server");
                    active = Some((false, now + lasts));
                }
                1 => {
                    sim.set_link_max_message_latency("client", "server", ms(3000));
                    active = Some((true, now + lasts));
                }
                _ => sim.bounce("server"),
            }
        }
        if lock(&shared.received).last().is_some_and(|r| r.0 >= EVENTS) {
            shared.stop.store(true, Ordering::SeqCst);
            break;
        }
    }
    for _ in 0..100 {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
    }
    outcome.sim_secs = sim.elapsed().as_secs_f64();
    check(&shared, &mut outcome)?;
    Ok(outcome)
}

fn check(shared: &Shared, outcome: &mut Outcome) -> Result<(), String> {
    let received = lock(&shared.received);
    let sessions = lock(&shared.sessions);
    for window in received.windows(2) {
        let ((a, sa), (b, sb)) = (window[0], window[1]);
        if b <= a {
            return Err(format!("event {b} after {a}: repeated or out of order"));
        }
        if b > a + 1 {
            outcome.missed += (b - a - 1) as usize;
            // Missed: some session since must have been a fresh one.
            let fresh = sessions[sa + 1..=sb].contains(&Some(false));
            if sb == sa || !fresh {
                return Err(format!(
                    "events {}..{} missed within recovered sessions (sessions {sa}..={sb}: {:?})",
                    a + 1,
                    b - 1,
                    &sessions[sa..=sb]
                ));
            }
        }
    }
    outcome.recovered += sessions.iter().filter(|s| **s == Some(true)).count();
    // The first session is fresh by definition.
    outcome.fresh += (sessions.iter().filter(|s| **s == Some(false)).count()).saturating_sub(1);
    Ok(())
}

fn seeds() -> Vec<u64> {
    match std::env::var("NETSIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("NETSIM_SEED: a number")],
        Err(_) => {
            let count = std::env::var("NETSIM_SEEDS")
                .map_or(SEEDS, |n| n.parse().expect("NETSIM_SEEDS: a number"));
            (1..=count).collect()
        }
    }
}

fn run_seeds(scenario: Scenario) -> Outcome {
    let started = std::time::Instant::now();
    let mut total = Outcome::default();
    for seed in seeds() {
        total.seeds += 1;
        match run(scenario, seed) {
            Ok(o) => {
                total.faults += o.faults;
                total.recovered += o.recovered;
                total.fresh += o.fresh;
                total.missed += o.missed;
                total.sim_secs += o.sim_secs;
            }
            Err(e) => panic!(
                "netsim {}: seed {seed} failed: {e}\n  replay: NETSIM_SEED={seed} cargo test -p \
                 volley-socketio --test netsim {}",
                scenario.name, scenario.name
            ),
        }
    }
    eprintln!(
        "netsim {}: {} seeds, {} faults, {} sessions recovered, {} fresh, {} events missed (each \
         followed by a fresh session), {:.0} s simulated in {:.1} s",
        scenario.name,
        total.seeds,
        total.faults,
        total.recovered,
        total.fresh,
        total.missed,
        total.sim_secs,
        started.elapsed().as_secs_f64()
    );
    total
}

/// Partitions and latency spikes: most reconnections recover, with every event they missed.
#[test]
fn partitions_recover_or_start_afresh() {
    let total = run_seeds(Scenario {
        name: "partitions_recover_or_start_afresh",
        restarts: false,
    });
    if total.seeds >= 10 {
        assert!(
            total.recovered >= total.seeds,
            "too few recoveries: {total:?}"
        );
    }
}

/// Server restarts too (the sessions are gone: a fresh session, never a silent loss).
#[test]
fn restarts_start_afresh() {
    let total = run_seeds(Scenario {
        name: "restarts_start_afresh",
        restarts: true,
    });
    if total.seeds >= 10 {
        assert!(
            total.fresh >= total.seeds / 2,
            "too few fresh sessions: {total:?}"
        );
    }
}
