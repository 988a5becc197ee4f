//! Deterministic network simulation of Socket.IO connection state recovery across a cluster
//! (issue #14): two Socket.IO servers with the Redis streams adapter and a broker (the minimal
//! RESP3 server of `volley-redis/tests/common/sim_broker.rs`: pub/sub, keys, streams) on
//! [turmoil]'s simulated network; a client (`volley-socketio/tests/sim/client.rs`: Engine.IO
//! long-polling, Socket.IO with `pid` and `offset`) opens each session on either server, as
//! behind a load balancer, and stays in a room that server 1 broadcasts numbered events to.
//! Faults: the client cut off from the cluster (it then comes back to either server), latency
//! spikes between the client and a server, partitions between server 2 and the broker.
//!
//! Node's semantics, checked on every run: a reconnection, to either server, either recovers
//! the socket and then gets every event broadcast while it was away (from the stream), or is a
//! fresh socket; events never repeat nor go back; an event in the stream that the client did
//! not get is always followed by a fresh socket. After the faults, the last events arrive.
//!
//! Each scenario runs over many seeds; a failure names its seed: replay it with
//! `NETSIM_SEED=<seed> cargo test -p volley-socketio-redis --test netsim`.

#[path = "../../volley-redis/tests/common/sim_broker.rs"]
mod sim_broker;
#[path = "../../volley-socketio/tests/sim/client.rs"]
mod sim_client;

#[path = "../../volley/tests/support/netsim_seeds.rs"]
mod netsim_seeds;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use volley_redis::{Connector, Redis, RedisConfig};
use volley_socketio::{RecoveryConfig, SocketIo};
use volley_socketio_redis::{RedisStreamsAdapter, RedisStreamsAdapterConfig};

const PORT: u16 = 3000;
const SERVERS: &[&str] = &["node1", "node2"];
/// Events the client must receive (the last one or a later one); the faults stop after
/// [`FAULTS_UNTIL`] of them.
const EVENTS: u32 = 150;
const FAULTS_UNTIL: u32 = 120;
const BROADCAST_EVERY: Duration = Duration::from_millis(100);
const PING_INTERVAL: Duration = Duration::from_millis(1000);
const PING_TIMEOUT: Duration = Duration::from_millis(2000);
const SIM_LIMIT: Duration = Duration::from_secs(300);
/// Seeds per scenario (`NETSIM_SEEDS` to change it).
const SEEDS: u64 = 20;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[derive(Default)]
struct Shared {
    /// Events broadcast by server 1 so far.
    broadcast: AtomicU32,
    /// Whether the client joined the room once (the broadcast waits for it).
    joined: AtomicBool,
    /// Set when the client received event [`EVENTS`] (or later): the broadcast stops.
    stop: AtomicBool,
    record: Arc<sim_client::Record>,
    /// The stream's entries, as the broker appended them.
    stream: sim_broker::Log,
}

fn redis() -> Redis {
    let mut config = RedisConfig::new("redis://broker:6379");
    config.min_backoff = ms(100);
    config.max_backoff = ms(1000);
    config.connect_timeout = ms(2000);
    config.response_timeout = ms(1000);
    config.health_check = Some(ms(1000));
    config.connector = Some(Connector::new(|| {
        turmoil::net::TcpStream::connect(("broker", 6379))
    }));
    Redis::connect(config).expect("a valid URL")
}

/// A Socket.IO server of the cluster; server 1 also broadcasts.
async fn server(shared: Arc<Shared>, broadcasts: bool) -> turmoil::Result {
    let adapter = RedisStreamsAdapterConfig {
        block_time: ms(1000),
        ..RedisStreamsAdapterConfig::default()
    };
    let factory = RedisStreamsAdapter::factory(redis(), adapter).expect("an adapter");
    let io = SocketIo::builder()
        .adapter(factory)
        .connection_state_recovery(RecoveryConfig::default())
        .ping_interval(PING_INTERVAL)
        .ping_timeout(PING_TIMEOUT)
        .transports(volley_engineio::Transports::POLLING)
        .build();
    let s = shared.clone();
    io.of("/").on_connection(move |socket| {
        if !socket.recovered() {
            socket.join("room");
        }
        s.joined.store(true, Ordering::SeqCst);
    });
    io.init_adapters().await?;
    if broadcasts {
        let broadcaster = io.clone();
        tokio::spawn(async move {
            while !shared.joined.load(Ordering::SeqCst) {
                tokio::time::sleep(ms(10)).await;
            }
            while !shared.stop.load(Ordering::SeqCst) {
                let seq = shared.broadcast.load(Ordering::SeqCst) + 1;
                // May fail (the broker unreachable): the event is then in no stream.
                let _ = broadcaster.to("room").emit("tick", json!(seq));
                shared.broadcast.store(seq, Ordering::SeqCst);
                tokio::time::sleep(BROADCAST_EVERY).await;
            }
        });
    }
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

#[derive(Debug, Default)]
struct Outcome {
    seeds: usize,
    faults: usize,
    recovered: usize,
    recovered_elsewhere: usize,
    fresh: usize,
    missed: usize,
    sim_secs: f64,
}

impl netsim_seeds::Tally for Outcome {
    fn add(&mut self, other: Self) {
        self.faults += other.faults;
        self.recovered += other.recovered;
        self.recovered_elsewhere += other.recovered_elsewhere;
        self.fresh += other.fresh;
        self.missed += other.missed;
        self.sim_secs += other.sim_secs;
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    /// Which servers may be partitioned from the broker.
    broker_partitions: &'static [&'static str],
}

/// A fault in progress: what to undo.
enum Active {
    Isolated,
    Partition(&'static str, &'static str),
    Latency(&'static str),
}

fn run(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    let seed = (scenario.name.bytes()).fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let shared = Arc::new(Shared::default());
    let mut sim = netsim_seeds::sim(seed, SIM_LIMIT);
    let log = shared.stream.clone();
    sim.host("broker", move || {
        sim_broker::serve_logged(6379, log.clone())
    });
    let s = shared.clone();
    sim.host("node1", move || server(s.clone(), true));
    let s = shared.clone();
    sim.host("node2", move || server(s.clone(), false));
    let timing = sim_client::Timing {
        ping_interval: PING_INTERVAL,
        ping_timeout: PING_TIMEOUT,
    };
    let record = shared.record.clone();
    sim.client(
        "client",
        sim_client::run(record, SERVERS, PORT, timing, seed ^ 0x77),
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let mut next_fault = ms(rng.random_range(1000..3000));
    let mut active: Option<(Active, Duration)> = None;
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
        if let Some((fault, until)) = &active
            && (now >= *until || !faulty)
        {
            match fault {
                Active::Isolated => {
                    for server in SERVERS {
                        sim.repair("client", *server);
                    }
                }
                Active::Partition(a, b) => sim.repair(*a, *b),
                Active::Latency(a) => sim.set_link_max_message_latency("client", *a, ms(20)),
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
            let lasts = ms(rng.random_range(100..6000));
            let server = SERVERS[rng.random_range(0..SERVERS.len())];
            let kinds = if scenario.broker_partitions.is_empty() {
                2
            } else {
                3
            };
            let fault = match rng.random_range(0..kinds) {
                0 => {
                    // The client cut off from the whole cluster: it comes back to either
                    // server.
                    for server in SERVERS {
                        sim.partition("client", *server);
                    }
                    Active::Isolated
                }
                1 => {
                    sim.set_link_max_message_latency("client", server, ms(3000));
                    Active::Latency(server)
                }
                _ => {
                    let server = scenario.broker_partitions
                        [rng.random_range(0..scenario.broker_partitions.len())];
                    sim.partition(server, "broker");
                    Active::Partition(server, "broker")
                }
            };
            if netsim_seeds::tracing() {
                let what = match &fault {
                    Active::Isolated => "client isolated".to_owned(),
                    Active::Partition(a, b) => format!("partition {a} / {b}"),
                    Active::Latency(a) => format!("latency spike client / {a}"),
                };
                eprintln!("[{:>9.3}] {what} ({lasts:?})", now.as_secs_f64());
            }
            active = Some((fault, now + lasts));
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
    // The events that made it into the stream (a broadcast whose XADD failed is in none).
    let streamed: BTreeSet<u32> = (shared.stream.lock().unwrap().iter())
        .filter_map(|fields| tick_of(fields))
        .collect();
    let tally = sim_client::check(&shared.record, |seq| streamed.contains(&seq))?;
    outcome.recovered = tally.recovered;
    outcome.recovered_elsewhere = tally.recovered_elsewhere;
    outcome.fresh = tally.fresh;
    outcome.missed = tally.missed;
    Ok(outcome)
}

/// The sequence number of a stream entry that broadcasts `["tick", n]`.
fn tick_of(fields: &[Vec<u8>]) -> Option<u32> {
    let text = fields
        .iter()
        .map(|f| String::from_utf8_lossy(f))
        .collect::<Vec<_>>()
        .join(" ");
    let at = text.find("\"tick\",")? + "\"tick\",".len();
    let digits: String = text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

fn run_seeds(scenario: Scenario) -> Outcome {
    let started = std::time::Instant::now();
    let (mut total, seeds) =
        netsim_seeds::run_seeds("volley-socketio-redis", scenario.name, SEEDS, |seed| {
            run(scenario, seed)
        });
    total.seeds = seeds;
    eprintln!(
        "netsim {}: {} seeds, {} faults, {} sessions recovered ({} on the other server), {} fresh, {} events missed (each \
         followed by a fresh session), {:.0} s simulated in {:.1} s",
        scenario.name,
        total.seeds,
        total.faults,
        total.recovered,
        total.recovered_elsewhere,
        total.fresh,
        total.missed,
        total.sim_secs,
        started.elapsed().as_secs_f64()
    );
    if total.seeds >= 10 {
        assert!(
            total.recovered >= total.seeds / 2,
            "too few recoveries: {total:?}"
        );
        assert!(
            total.recovered_elsewhere >= total.seeds / 4,
            "too few recoveries on the other server: {total:?}"
        );
    }
    total
}

/// The client cut off, and latency spikes, with every session opened on either server: the
/// reconnections recover (on either server) with every event they missed.
#[test]
fn recovery_across_servers() {
    run_seeds(Scenario {
        name: "recovery_across_servers",
        broker_partitions: &[],
    });
}

/// Server 2 partitioned from the broker too (its stream reader stalls, its sessions may not be
/// persisted): late or a fresh socket, never a silent loss.
#[test]
fn recovery_across_servers_with_broker_partitions() {
    run_seeds(Scenario {
        name: "recovery_across_servers_with_broker_partitions",
        broker_partitions: &["node2"],
    });
}
