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

#[path = "sim/client.rs"]
mod sim_client;

#[path = "../../volley/tests/support/netsim_seeds.rs"]
mod netsim_seeds;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
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

#[derive(Default)]
struct Shared {
    /// Events broadcast so far.
    broadcast: AtomicU32,
    /// Whether the client joined the room once (the broadcast waits for it).
    joined: AtomicBool,
    /// Set when the client received event [`EVENTS`] (or later): the broadcast stops.
    stop: AtomicBool,
    /// What the client received.
    record: Arc<sim_client::Record>,
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

impl netsim_seeds::Tally for Outcome {
    fn add(&mut self, other: Self) {
        self.faults += other.faults;
        self.recovered += other.recovered;
        self.fresh += other.fresh;
        self.missed += other.missed;
        self.sim_secs += other.sim_secs;
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    restarts: bool,
}

fn run(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    let seed = (scenario.name.bytes()).fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let shared = Arc::new(Shared::default());
    let mut sim = netsim_seeds::sim(seed, SIM_LIMIT);
    let s = shared.clone();
    sim.host("server", move || server(s.clone()));
    let timing = sim_client::Timing {
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
    };
    let record = shared.record.clone();
    sim.client(
        "client",
        sim_client::run(record, &["server"], PORT, timing, seed ^ 0x77),
    );

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
                shared.record.last()
            ));
        }
        let faulty = shared.broadcast.load(Ordering::SeqCst) < FAULTS_UNTIL;
        if let Some((latency, until)) = active
            && (now >= until || !faulty)
        {
            if latency {
                sim.set_link_max_message_latency("client", "server", ms(20));
            } else {
                sim.repair("client", "server");
            }
            if netsim_seeds::tracing() {
                eprintln!("[{:>9.3}] fault over", now.as_secs_f64());
            }
            active = None;
            next_fault = now + ms(rng.random_range(500..4000));
        }
        if faulty && active.is_none() && now >= next_fault {
            outcome.faults += 1;
            next_fault = now + ms(rng.random_range(1000..5000));
            let kind = rng.random_range(0..if scenario.restarts { 3 } else { 2 });
            let lasts = ms(rng.random_range(100..6000));
            if netsim_seeds::tracing() {
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
        if shared.record.last().is_some_and(|last| last >= EVENTS) {
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
    // Every sequence number was broadcast (one server: a broadcast cannot fail).
    let tally = sim_client::check(&shared.record, |_| true)?;
    outcome.recovered += tally.recovered;
    outcome.fresh += tally.fresh;
    outcome.missed += tally.missed;
    Ok(())
}

fn run_seeds(scenario: Scenario) -> Outcome {
    let started = std::time::Instant::now();
    let (mut total, seeds) =
        netsim_seeds::run_seeds("volley-socketio", scenario.name, SEEDS, |seed| {
            run(scenario, seed)
        });
    total.seeds = seeds;
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
