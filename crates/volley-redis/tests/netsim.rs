//! Deterministic network simulation of the cluster link (issue #14): two nodes, each with a
//! supervised [`Redis`] connection, talk through a broker over [turmoil]'s simulated TCP, with
//! simulated time and a seeded fault schedule: partitions between a node and the broker (a
//! partition stalls a TCP stream for good, like a connection whose retransmissions all failed:
//! the supervisor's health check must notice), and broker restarts (every connection reset,
//! every subscription gone).
//!
//! The broker is a minimal RESP3 server written for these simulations (`common/sim_broker.rs`:
//! pub/sub, keys, streams), just what the supervisor and the adapters use.
//! Node 1 publishes numbered messages to a channel; node 2 subscribes to it.
//!
//! Redis pub/sub delivers at most once: what is published while a link is down is lost. What
//! each run checks is what the supervisor promises on top of that:
//! - node 2 never receives a message twice, nor out of order (a reconnect resubscribes once);
//! - every message lost was published while a node reported the outage: its connection state
//!   ([`Redis::state`]) went not-ready within the detection bound (health check interval +
//!   response timeout) of the publication — no silent, unbounded loss;
//! - after the faults end, both nodes are ready again (reconnected and resubscribed) and a
//!   last batch of messages arrives complete, exactly once, in order.
//!
//! Each scenario runs over many seeds; a failure names its seed: replay it with
//! `NETSIM_SEED=<seed> cargo test -p volley-redis --test netsim`.

#[path = "common/sim_broker.rs"]
mod sim_broker;

#[path = "../../volley/tests/support/netsim_seeds.rs"]
mod netsim_seeds;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use volley_redis::{Connector, Message, PublishKind, Redis, RedisConfig, Subscription};

const CHANNEL: &str = "feed";
/// Messages published during the faults, then after them.
const MESSAGES: u32 = 150;
const FINAL_MESSAGES: u32 = 20;
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
const HEALTH_CHECK: Duration = Duration::from_millis(1000);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(1000);
/// How long after a publication its loss must be reported: the health check's period and
/// timeout, plus latency.
const DETECTION: Duration = Duration::from_millis(2500);
const SIM_LIMIT: Duration = Duration::from_secs(300);
/// Seeds per scenario (`NETSIM_SEEDS` to change it).
const SEEDS: u64 = 40;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Simulated time, from inside a host.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// The nodes.

#[derive(Default)]
struct Shared {
    /// Node 1's publications: (sequence number, simulated time).
    published: Mutex<Vec<(u32, Duration)>>,
    /// Node 2's deliveries.
    received: Mutex<Vec<u32>>,
    /// Intervals during which each node reported not being ready: (node, from, to).
    outages: Mutex<Vec<(usize, Duration, Option<Duration>)>>,
    /// Whether each node is ready now.
    ready: [std::sync::atomic::AtomicBool; 2],
    /// Connections made by each node.
    connections: [AtomicU64; 2],
    /// The driver's go-ahead for the final batch (faults over, both ready).
    final_batch: std::sync::atomic::AtomicBool,
    published_all: std::sync::atomic::AtomicBool,
}

fn config() -> RedisConfig {
    let mut config = RedisConfig::new("redis://broker:6379");
    config.min_backoff = ms(100);
    config.max_backoff = ms(1000);
    config.connect_timeout = ms(2000);
    config.response_timeout = RESPONSE_TIMEOUT;
    config.health_check = Some(HEALTH_CHECK);
    config.connector = Some(Connector::new(|| {
        turmoil::net::TcpStream::connect(("broker", 6379))
    }));
    config
}

/// Records `node`'s readiness over time.
fn watch_state(redis: &Redis, node: usize, shared: Arc<Shared>) {
    let mut state = redis.state();
    tokio::spawn(async move {
        let mut was_ready = false;
        loop {
            let s = *state.borrow_and_update();
            shared.connections[node].store(s.connections, Ordering::SeqCst);
            shared.ready[node].store(s.ready, Ordering::SeqCst);
            {
                let mut outages = lock(&shared.outages);
                if was_ready && !s.ready {
                    outages.push((node, now(), None));
                } else if !was_ready && s.ready {
                    let mut open = outages.iter_mut().rev();
                    if let Some(o) = open.find(|o| o.0 == node && o.2.is_none()) {
                        o.2 = Some(now());
                    }
                }
            }
            was_ready = s.ready;
            if state.changed().await.is_err() {
                return;
            }
        }
    });
}

async fn publisher_node(shared: Arc<Shared>) -> turmoil::Result {
    let redis = Redis::connect(config()).expect("a valid URL");
    watch_state(&redis, 0, shared.clone());
    // Both nodes up first, so that the first message has somewhere to go.
    while !(shared.ready[0].load(Ordering::SeqCst) && shared.ready[1].load(Ordering::SeqCst)) {
        tokio::time::sleep(ms(10)).await;
    }
    let publisher = redis.publisher();
    let publish = |seq: u32| {
        lock(&shared.published).push((seq, now()));
        publisher
            .send(
                PublishKind::Publish,
                CHANNEL.into(),
                seq.to_string().into_bytes(),
            )
            .expect("the queue takes it");
    };
    for seq in 1..=MESSAGES {
        publish(seq);
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    while !shared.final_batch.load(Ordering::SeqCst) {
        tokio::time::sleep(ms(10)).await;
    }
    for seq in MESSAGES + 1..=MESSAGES + FINAL_MESSAGES {
        publish(seq);
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
    shared.published_all.store(true, Ordering::SeqCst);
    // Keep the node (and its connection) up until the simulation ends.
    std::future::pending::<()>().await;
    Ok(())
}

async fn subscriber_node(shared: Arc<Shared>) -> turmoil::Result {
    let redis = Redis::connect(config()).expect("a valid URL");
    watch_state(&redis, 1, shared.clone());
    let s = shared.clone();
    redis.subscribe(
        Subscription::Channel(CHANNEL.into()),
        Arc::new(move |m: Message| {
            let seq = std::str::from_utf8(&m.payload)
                .ok()
                .and_then(|s| s.parse().ok());
            lock(&s.received).push(seq.expect("a sequence number"));
        }),
    );
    std::future::pending::<()>().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The simulation.

#[derive(Debug, Default)]
struct Outcome {
    seeds: usize,
    faults: usize,
    reconnects: u64,
    lost: usize,
    sim_secs: f64,
}

impl netsim_seeds::Tally for Outcome {
    fn add(&mut self, other: Self) {
        self.faults += other.faults;
        self.reconnects += other.reconnects;
        self.lost += other.lost;
        self.sim_secs += other.sim_secs;
    }
}

#[derive(Clone, Copy)]
struct Scenario {
    name: &'static str,
    restarts: bool,
}

const NODES: [&str; 2] = ["node1", "node2"];

/// Prints what the driver does with `NETSIM_TRACE=1`.
fn trace(now: Duration, what: &str) {
    if netsim_seeds::tracing() {
        eprintln!("[{:>9.3}] {what}", now.as_secs_f64());
    }
}

fn run(scenario: Scenario, seed: u64) -> Result<Outcome, String> {
    let seed = (scenario.name.bytes()).fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let shared = Arc::new(Shared::default());
    let mut sim = netsim_seeds::sim(seed, SIM_LIMIT);
    sim.host("broker", || sim_broker::serve(6379));
    sim.client("node1", publisher_node(shared.clone()));
    sim.client("node2", subscriber_node(shared.clone()));

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let mut next_fault = ms(rng.random_range(1000..3000));
    let mut active: Option<(&str, Duration)> = None;
    let mut faults_over = None;
    loop {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
        let now = sim.elapsed();
        if now > SIM_LIMIT {
            return Err(format!(
                "stuck at {now:?}: ready {:?}, connections {:?}, {} received",
                shared.ready,
                shared.connections,
                lock(&shared.received).len()
            ));
        }
        let publishing = lock(&shared.published).len() < MESSAGES as usize;
        if let Some((node, until)) = active
            && (now >= until || !publishing)
        {
            sim.repair(node, "broker");
            active = None;
            next_fault = now + ms(rng.random_range(500..4000));
        }
        if publishing && active.is_none() && now >= next_fault {
            outcome.faults += 1;
            next_fault = now + ms(rng.random_range(1000..5000));
            if scenario.restarts && rng.random_bool(0.3) {
                trace(now, "broker restart");
                sim.bounce("broker");
            } else {
                let node = NODES[rng.random_range(0..2)];
                let lasts = ms(rng.random_range(100..6000));
                trace(
                    now,
                    &format!("{node} partitioned from the broker for {lasts:?}"),
                );
                sim.partition(node, "broker");
                active = Some((node, now + lasts));
            }
        }
        if !publishing && active.is_none() {
            let faults_over = *faults_over.get_or_insert(now);
            let ready = shared.ready.iter().all(|r| r.load(Ordering::SeqCst));
            // Each node's health check has had time to notice a stalled link.
            if ready && now - faults_over >= DETECTION * 2 {
                shared.final_batch.store(true, Ordering::SeqCst);
            }
        }
        if shared.published_all.load(Ordering::SeqCst) {
            let received = lock(&shared.received);
            if received.last() == Some(&(MESSAGES + FINAL_MESSAGES)) {
                break;
            }
        }
    }
    // A little longer: anything repeated would show up now.
    for _ in 0..100 {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
    }
    outcome.sim_secs = sim.elapsed().as_secs_f64();
    outcome.reconnects = (shared.connections.iter())
        .map(|c| c.load(Ordering::SeqCst).saturating_sub(1))
        .sum();
    check(&shared, &mut outcome)?;
    Ok(outcome)
}

fn check(shared: &Shared, outcome: &mut Outcome) -> Result<(), String> {
    let received = lock(&shared.received);
    if let Some(w) = received.windows(2).find(|w| w[0] >= w[1]) {
        return Err(format!(
            "received {} after {}: repeated or out of order",
            w[1], w[0]
        ));
    }
    let finals: Vec<u32> = (received.iter().copied())
        .filter(|s| *s > MESSAGES)
        .collect();
    let want: Vec<u32> = (MESSAGES + 1..=MESSAGES + FINAL_MESSAGES).collect();
    if finals != want {
        return Err(format!("the final batch after recovery: {finals:?}"));
    }
    let outages = lock(&shared.outages);
    if netsim_seeds::tracing() {
        eprintln!("outages: {outages:?}");
        let lost: Vec<_> = (lock(&shared.published).iter())
            .filter(|(s, _)| received.binary_search(s).is_err())
            .map(|(s, at)| (*s, at.as_secs_f64()))
            .collect();
        eprintln!("lost: {lost:?}");
    }
    for &(seq, at) in lock(&shared.published).iter() {
        if received.binary_search(&seq).is_ok() {
            continue;
        }
        outcome.lost += 1;
        // Lost: a node must have reported an outage overlapping [at, at + DETECTION].
        let reported = outages
            .iter()
            .any(|&(_, from, to)| from <= at + DETECTION && to.is_none_or(|to| to >= at));
        if !reported {
            return Err(format!(
                "message {seq} (published at {at:?}) lost without an outage reported; \
                 outages: {outages:?}"
            ));
        }
    }
    Ok(())
}

fn run_seeds(scenario: Scenario) -> Outcome {
    let started = std::time::Instant::now();
    let (mut total, seeds) =
        netsim_seeds::run_seeds("volley-redis", scenario.name, SEEDS, |seed| {
            run(scenario, seed)
        });
    total.seeds = seeds;
    eprintln!(
        "netsim {}: {} seeds, {} faults, {} reconnects, {} messages lost (all reported), {:.0} s \
         simulated in {:.1} s",
        scenario.name,
        total.seeds,
        total.faults,
        total.reconnects,
        total.lost,
        total.sim_secs,
        started.elapsed().as_secs_f64()
    );
    if total.seeds >= 10 {
        assert!(
            total.reconnects as usize >= total.seeds,
            "too few reconnects: {total:?}"
        );
    }
    total
}

/// Partitions between a node and the broker (0.1 to 6 s): the health check notices the stalled
/// link, the supervisor reconnects and resubscribes; nothing repeated, every loss reported,
/// the final batch complete.
#[test]
fn partitions_from_the_broker_recover() {
    run_seeds(Scenario {
        name: "partitions_from_the_broker_recover",
        restarts: false,
    });
}

/// Broker restarts (connections reset, subscriptions gone) among partitions: the same.
#[test]
fn broker_restarts_recover() {
    run_seeds(Scenario {
        name: "broker_restarts_recover",
        restarts: true,
    });
}
