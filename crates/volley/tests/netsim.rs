//! Deterministic network simulation (issue #14): a publisher and a subscriber, both
//! [`ReconnectingClient`]s, talk to a server over [turmoil]'s simulated TCP, with simulated time
//! and a seeded fault schedule: partitions (a partition stalls a TCP stream for good, as a
//! connection whose retransmissions all failed: keep-alive must notice), latency spikes,
//! connection resets by the server, and server restarts.
//!
//! The server is the `/chat` resume logic of `volley serve` on a [`Hub`] with a bounded history:
//! a plain join answers the topic's mark ([`Member::subscribe_marked`]); a join after an offset
//! resumes ([`Member::resume_with`]): "resumed" and every publication missed, or "gap" and what
//! follows only. The publisher resends what was not acknowledged after each reconnect
//! (at-least-once); the subscriber drops repeated sequence numbers (exactly-once end to end).
//!
//! What each run checks:
//! - every sequence number the publisher published is delivered to the subscriber exactly once,
//!   in order, or lies in a gap the subscriber was told of — never lost silently;
//! - each gap the subscriber reports covers exactly what it missed: the publications the
//!   server's log holds after the resume's offset, less what it received anyway;
//! - the hub answers each resume as an independent model of its history predicts: a gap exactly
//!   when the offset is not this incarnation's, or more publications followed it than the
//!   history keeps (or than the member's queue takes at once);
//! - in the scenarios whose history is long enough, no gap at all; in the short-history one,
//!   gaps do happen.
//!
//! Each scenario runs over many seeds (turmoil's and the fault schedule's). A failure names its
//! seed: replay it alone with `NETSIM_SEED=<seed> cargo test -p volley --test netsim`.

#[path = "../../volley/tests/support/netsim_seeds.rs"]
mod netsim_seeds;

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use volley::hub::{History, Hub, HubConfig, Member, Resume};
use volley::reconnect::{Backoff, Event, Reconnect, ReconnectingClient};
use volley::{ClientBuilder, Config, Message, PreparedMessage};

const TOPIC: &str = "feed";
const PORT: u16 = 9000;
const URL: &str = "ws://server:9000/feed";
/// What a member's queue takes (the hub's default): a replay must fit it at once.
const QUEUE_MESSAGES: usize = 256;
/// A publication every this long (simulated).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Publications per run.
const MESSAGES: u32 = 100;
/// Seeds per scenario (`NETSIM_SEEDS` to change it).
const SEEDS: u64 = 64;
/// Longest simulated time a run may take before it counts as stuck.
const SIM_LIMIT: Duration = Duration::from_secs(900);
/// How long nothing must change, after the faults stopped, for a run to be over.
const QUIET: Duration = Duration::from_secs(5);

/// Prints what happens with `NETSIM_TRACE=1` (with simulated time).
macro_rules! trace {
    ($($arg:tt)*) => {
        if netsim_seeds::tracing() {
            eprintln!("[{:>9.3}] {}", turmoil::sim_elapsed().unwrap_or_default().as_secs_f64(), format_args!($($arg)*));
        }
    };
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which faults a scenario injects.
#[derive(Clone, Copy, Debug)]
struct Faults {
    partitions: bool,
    latency: bool,
    resets: bool,
    restarts: bool,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    faults: Faults,
    /// The history's `max_messages`.
    history: usize,
    /// Publications.
    messages: u32,
    /// Whether a gap may be reported (the history may not hold what an outage missed, or the
    /// server restarts).
    gaps_allowed: bool,
}

/// What the server saw and did, for the checks (all hosts run on this thread, in turn).
#[derive(Default)]
struct Server {
    /// Starts of the server (1 after the first).
    incarnation: u32,
    /// Every numbered publication: (incarnation, offset, sequence number).
    log: Vec<(u32, u64, u32)>,
    /// Marks handed out: (incarnation, offset).
    marks: Vec<(u32, u64)>,
    /// Every resume.
    resumes: Vec<ResumeRecord>,
    /// Resumes the hub answered otherwise than the model predicts.
    mismatches: Vec<String>,
    /// The server's connection tasks, to reset them.
    conns: Vec<tokio::task::AbortHandle>,
}

struct ResumeRecord {
    after: u64,
    gap: bool,
    /// The sequence numbers the log holds after `after` when the resume happened.
    missed: BTreeSet<u32>,
}

/// What the subscriber received.
#[derive(Default, Debug)]
struct Subscriber {
    /// The offset to resume after: its mark, then the last publication received.
    last_offset: Option<u64>,
    last_seq: u32,
    /// Sequence numbers delivered to the application, after dropping repeats.
    delivered: Vec<u32>,
    /// Repeated sequence numbers dropped.
    repeats: usize,
    /// Publications whose offset was not above the previous one: (previous, offset).
    backwards: Vec<(u64, u64)>,
    /// Gaps reported: the offset resumed after, the first sequence number missed and the last
    /// (`None` until the next delivery tells it).
    gaps: Vec<Gap>,
    /// Whether the current connection's join was answered.
    joined: bool,
    connections: usize,
    /// Whether it joined once (the publisher waits for it).
    ever_joined: bool,
}

#[derive(Debug, Clone, Copy)]
struct Gap {
    after: u64,
    first: u32,
    last: Option<u32>,
}

#[derive(Default)]
struct Publisher {
    done: bool,
    connections: usize,
}

#[derive(Default)]
struct Shared {
    server: Mutex<Server>,
    subscriber: Mutex<Subscriber>,
    publisher: Mutex<Publisher>,
}

fn client_config() -> Config {
    Config::default()
        .open_timeout(ms(3000))
        .close_timeout(ms(2000))
        .ping_interval(Some(ms(1000)))
        .ping_timeout(Some(ms(2000)))
}

fn server_config() -> Config {
    client_config()
}

fn client(seed: u64) -> ReconnectingClient {
    Reconnect::new(ClientBuilder::new(URL).config(client_config()))
        .connector(|| turmoil::net::TcpStream::connect(("server", PORT)))
        .backoff(
            Backoff::default()
                .base(ms(300))
                .cap(ms(3000))
                .stable(Duration::from_secs(5)),
        )
        .seed(seed)
        .start()
}

// ---------------------------------------------------------------------------------------------
// The server: /chat's join, resume and publish on a hub with a bounded history.

async fn server(shared: Arc<Shared>, history: usize) -> turmoil::Result {
    let incarnation = {
        let mut server = lock(&shared.server);
        server.incarnation += 1;
        server.conns.clear();
        // A hub numbers from the wall clock's microseconds, so that offsets grow across
        // restarts; the simulation restarts much faster than a real server (simulated time),
        // so wait until the wall clock has passed the previous incarnation's offsets.
        let newest = server
            .log
            .iter()
            .map(|l| l.1)
            .chain(server.marks.iter().map(|m| m.1));
        let newest = newest.max().unwrap_or(0);
        while wall_micros() <= newest {
            std::thread::sleep(Duration::from_micros(100));
        }
        server.incarnation
    };
    let hub = Hub::new(
        HubConfig::default().history(Some(
            History::default()
                .max_messages(history)
                .max_age(Duration::from_secs(3600)),
        )),
    );
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let task = tokio::spawn(serve(
            hub.clone(),
            stream,
            shared.clone(),
            incarnation,
            history,
        ));
        lock(&shared.server).conns.push(task.abort_handle());
    }
}

fn wall_micros() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| d.as_micros() as u64)
}

async fn serve(
    hub: Hub,
    stream: turmoil::net::TcpStream,
    shared: Arc<Shared>,
    incarnation: u32,
    history: usize,
) {
    let Ok((ws, _)) = volley::accept_with_config(stream, server_config()).await else {
        return;
    };
    let (member, mut rx) = hub.join_socket(ws);
    while let Some(Ok(message)) = rx.recv().await {
        let Message::Text(text) = message else {
            continue;
        };
        let words: Vec<&str> = text.as_str().split(' ').collect();
        match words[..] {
            ["join"] => {
                let mark = member.subscribe_marked(TOPIC).expect("a first join");
                lock(&shared.server).marks.push((incarnation, mark));
                member.send(PreparedMessage::text(format!("joined {mark}")));
            }
            ["join", after] => {
                let after: u64 = after.parse().expect("an offset");
                resume(&member, &shared, incarnation, history, after);
            }
            ["pub", seq] => {
                let seq: u32 = seq.parse().expect("a sequence number");
                let (offset, _) = hub.publish_numbered(TOPIC, |offset| {
                    PreparedMessage::text(format!("msg {offset} {seq}"))
                });
                lock(&shared.server).log.push((incarnation, offset, seq));
                member.send(PreparedMessage::text(format!("ack {seq}")));
            }
            _ => panic!("unexpected command {text:?}"),
        }
    }
}

/// A resume, checked against a model of the history: a gap exactly when `after` is not one of
/// this incarnation's offsets, or more publications followed it than the history keeps (or
/// than a member's queue takes at once).
fn resume(member: &Member, shared: &Shared, incarnation: u32, history: usize, after: u64) {
    let (expect_gap, missed) = {
        let server = lock(&shared.server);
        let known = (server
            .log
            .iter()
            .any(|l| (l.0, l.1) == (incarnation, after)))
            || server.marks.contains(&(incarnation, after));
        let following = (server.log.iter())
            .filter(|l| l.0 == incarnation && l.1 > after)
            .count();
        let missed = (server.log.iter().filter(|l| l.1 > after))
            .map(|l| l.2)
            .collect();
        let gap = !known || following > history || following >= QUEUE_MESSAGES;
        (gap, missed)
    };
    let resume = member.resume_with(TOPIC, after, |resume| {
        let answer = match resume {
            Resume::Complete { .. } => "resumed",
            _ => "gap",
        };
        Some(PreparedMessage::text(answer))
    });
    let gap = !matches!(resume, Resume::Complete { .. });
    let mut server = lock(&shared.server);
    if gap != expect_gap {
        let message =
            format!("resume after {after}: the hub said gap={gap}, the model {expect_gap}");
        server.mismatches.push(message);
    }
    server.resumes.push(ResumeRecord { after, gap, missed });
}

// ---------------------------------------------------------------------------------------------
// The clients.

/// Publishes 1..=`messages`, one per [`PUBLISH_EVERY`] while connected, and resends what was not
/// acknowledged after each reconnect, until every one is acknowledged.
async fn publisher(shared: Arc<Shared>, seed: u64, messages: u32) -> turmoil::Result {
    while !lock(&shared.subscriber).ever_joined {
        tokio::time::sleep(ms(10)).await;
    }
    let mut client = client(seed);
    let mut next = 1u32;
    let mut unacked = VecDeque::new();
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next <= messages || !unacked.is_empty() {
        tokio::select! {
            event = client.next() => match event.expect("the client runs") {
                Event::Connected { .. } => {
                    trace!("pub: connected");
                    lock(&shared.publisher).connections += 1;
                    for seq in unacked.clone() {
                        let _ = client.send(format!("pub {seq}")).await;
                    }
                }
                Event::Message(Message::Text(text)) => {
                    let seq: u32 = (text.as_str().strip_prefix("ack "))
                        .and_then(|s| s.parse().ok())
                        .expect("an ack");
                    unacked.retain(|s| *s != seq);
                }
                other => trace!("pub: {other:?}"),
            },
            _ = tick.tick(), if next <= messages && client.is_connected() => {
                unacked.push_back(next);
                let _ = client.send(format!("pub {next}")).await;
                next += 1;
            }
        }
    }
    lock(&shared.publisher).done = true;
    client.close(None).await;
    Ok(())
}

/// Joins, then resumes after the last offset received on every reconnect; drops repeated
/// sequence numbers and notes gaps. Runs until the simulation ends.
async fn subscriber(shared: Arc<Shared>, seed: u64) -> turmoil::Result {
    let mut client = client(seed);
    while let Some(event) = client.next().await {
        trace!("sub: {event:?}");
        match event {
            Event::Connected { .. } => {
                let command = {
                    let mut sub = lock(&shared.subscriber);
                    sub.joined = false;
                    sub.connections += 1;
                    match sub.last_offset {
                        None => "join".to_owned(),
                        Some(after) => format!("join {after}"),
                    }
                };
                let _ = client.send(command).await;
            }
            Event::Message(Message::Text(text)) => {
                let mut sub = lock(&shared.subscriber);
                receive(&mut sub, text.as_str());
            }
            Event::Disconnected { .. } => lock(&shared.subscriber).joined = false,
            _ => {}
        }
    }
    Ok(())
}

fn receive(sub: &mut Subscriber, text: &str) {
    let words: Vec<&str> = text.split(' ').collect();
    match words[..] {
        ["joined", mark] => {
            sub.last_offset = Some(mark.parse().expect("a mark"));
            sub.joined = true;
            sub.ever_joined = true;
        }
        ["resumed"] => sub.joined = true,
        ["gap"] => {
            sub.joined = true;
            let gap = Gap {
                after: sub.last_offset.expect("resumed after an offset"),
                first: sub.last_seq + 1,
                last: None,
            };
            sub.gaps.push(gap);
        }
        ["msg", offset, seq] => {
            let offset: u64 = offset.parse().expect("an offset");
            let seq: u32 = seq.parse().expect("a sequence number");
            // The hub never repeats a publication nor goes back: offsets only grow (repeated
            // sequence numbers are the publisher's resends, under new offsets).
            if sub.last_offset.is_some_and(|last| offset <= last) {
                sub.backwards.push((sub.last_offset.unwrap_or(0), offset));
            }
            sub.last_offset = Some(offset);
            if seq <= sub.last_seq {
                sub.repeats += 1;
                return;
            }
            if let Some(gap) = sub.gaps.last_mut().filter(|g| g.last.is_none()) {
                gap.last = Some(seq - 1);
            }
            sub.delivered.push(seq);
            sub.last_seq = seq;
        }
        _ => panic!("unexpected message {text:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The simulation.

/// What one run did, for the totals.
#[derive(Debug, Default)]
struct Outcome {
    seeds: usize,
    faults: usize,
    reconnects: usize,
    gaps: usize,
    /// Resumes answered "resumed".
    resumed: usize,
    repeats: usize,
    sim_secs: f64,
}

impl netsim_seeds::Tally for Outcome {
    fn add(&mut self, other: Self) {
        self.faults += other.faults;
        self.reconnects += other.reconnects;
        self.gaps += other.gaps;
        self.resumed += other.resumed;
        self.repeats += other.repeats;
        self.sim_secs += other.sim_secs;
    }
}

/// A fault in progress, and when it ends.
enum Active {
    Partition(&'static str),
    Latency(&'static str),
    Hold(&'static str),
}

fn run(scenario: &Scenario, seed: u64) -> Result<Outcome, String> {
    // Scenarios with the same faults still see different schedules for the same seed.
    let seed = (scenario.name.bytes()).fold(seed, |h, b| h.rotate_left(5) ^ u64::from(b));
    let shared = Arc::new(Shared::default());
    let mut sim = netsim_seeds::sim(seed, SIM_LIMIT);
    let history = scenario.history;
    let s = shared.clone();
    sim.host("server", move || server(s.clone(), history));
    sim.client("sub", subscriber(shared.clone(), seed ^ 0x5u64));
    sim.client(
        "pub",
        publisher(shared.clone(), seed ^ 0x9u64, scenario.messages),
    );

    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let mut next_fault = Duration::from_millis(rng.random_range(500..3000));
    let mut active: Option<(Active, Duration)> = None;
    let mut last_change = (Duration::ZERO, (0, 0, 0));
    // When publishing ended (the faults with it).
    let mut settled = None;
    let faults = scenario.faults;
    loop {
        sim.step().map_err(|e| format!("a host failed: {e}"))?;
        let now = sim.elapsed();
        if now > SIM_LIMIT {
            return Err(format!("stuck at {now:?}: {:?}", lock(&shared.subscriber)));
        }
        let publishing = !lock(&shared.publisher).done;
        // End the fault in progress when its time comes (or when publishing is over).
        if !publishing && settled.is_none() {
            settled = Some(now);
        }
        if let Some((fault, until)) = &active
            && (now >= *until || !publishing)
        {
            if netsim_seeds::tracing() {
                eprintln!("[{:>9.3}] fault over", now.as_secs_f64());
            }
            match fault {
                Active::Partition(host) => sim.repair(*host, "server"),
                Active::Latency(host) => sim.set_link_max_message_latency(*host, "server", ms(20)),
                Active::Hold(host) => sim.release(*host, "server"),
            }
            active = None;
            next_fault = now + Duration::from_millis(rng.random_range(500..4000));
        }
        if publishing && active.is_none() && now >= next_fault {
            let host = if rng.random_bool(0.5) { "sub" } else { "pub" };
            let mut kinds = Vec::new();
            if faults.partitions {
                kinds.push(0);
            }
            if faults.latency {
                kinds.push(1);
            }
            if faults.resets {
                kinds.push(2);
            }
            if faults.restarts {
                kinds.push(3);
            }
            outcome.faults += 1;
            next_fault = now + Duration::from_millis(rng.random_range(1000..6000));
            let kind = kinds[rng.random_range(0..kinds.len())];
            if netsim_seeds::tracing() {
                let name = ["partition", "latency or hold", "reset", "restart"][kind];
                eprintln!("[{:>9.3}] fault: {name} {host}", now.as_secs_f64());
            }
            match kind {
                0 => {
                    sim.partition(host, "server");
                    let lasts = Duration::from_millis(rng.random_range(100..8000));
                    active = Some((Active::Partition(host), now + lasts));
                }
                1 if rng.random_bool(0.5) => {
                    // A spike: some segments wait up to 4 s (beyond the ping timeout, now and
                    // then); TCP keeps them in order.
                    sim.set_link_max_message_latency(host, "server", ms(4000));
                    let lasts = Duration::from_millis(rng.random_range(500..5000));
                    active = Some((Active::Latency(host), now + lasts));
                }
                1 => {
                    // A stall: every segment held, then all delivered at once (after the
                    // connection was given up, if it lasted past the ping timeout).
                    sim.hold(host, "server");
                    let lasts = Duration::from_millis(rng.random_range(200..5000));
                    active = Some((Active::Hold(host), now + lasts));
                }
                2 => {
                    // The server drops a connection at random: a reset (or a FIN) without a
                    // close frame.
                    let mut server = lock(&shared.server);
                    server.conns.retain(|c| !c.is_finished());
                    if !server.conns.is_empty() {
                        let i = rng.random_range(0..server.conns.len());
                        server.conns.swap_remove(i).abort();
                    }
                }
                _ => sim.bounce("server"),
            }
        }
        // Over when publishing is done, the faults stopped, the subscriber joined, and nothing
        // changed for a while.
        let sub = lock(&shared.subscriber);
        let state = (sub.delivered.len(), sub.gaps.len(), sub.connections);
        if state != last_change.1 {
            last_change = (now, state);
        }
        let quiet = |since: Duration| now - since >= QUIET;
        if settled.is_some_and(quiet) && active.is_none() && sub.joined && quiet(last_change.0) {
            break;
        }
    }
    outcome.sim_secs = sim.elapsed().as_secs_f64();
    if netsim_seeds::tracing() {
        eprintln!("[{:>9.3}] over", outcome.sim_secs);
    }
    let server = lock(&shared.server);
    let sub = lock(&shared.subscriber);
    let publisher = lock(&shared.publisher);
    outcome.reconnects = (sub.connections + publisher.connections).saturating_sub(2);
    outcome.gaps = sub.gaps.len();
    outcome.resumed = server.resumes.iter().filter(|r| !r.gap).count();
    outcome.repeats = sub.repeats;
    check(scenario, &server, &sub).inspect_err(|_| {
        if netsim_seeds::tracing() {
            eprintln!("log: {:?}", server.log);
            eprintln!("marks: {:?}", server.marks);
            for r in &server.resumes {
                eprintln!(
                    "resume after {} gap {} missed {:?}",
                    r.after, r.gap, r.missed
                );
            }
            eprintln!("subscriber: {sub:?}");
        }
    })?;
    Ok(outcome)
}

/// The checks of one run (see the module docs).
fn check(scenario: &Scenario, server: &Server, sub: &Subscriber) -> Result<(), String> {
    if let Some(mismatch) = server.mismatches.first() {
        return Err(format!(
            "{mismatch} ({} mismatches)",
            server.mismatches.len()
        ));
    }
    if let Some((last, offset)) = sub.backwards.first() {
        return Err(format!(
            "offset {offset} received after {last}: repeated or out of order"
        ));
    }
    if !sub.delivered.windows(2).all(|w| w[0] < w[1]) {
        return Err(format!(
            "delivered out of order or twice: {:?}",
            sub.delivered
        ));
    }
    let n = scenario.messages;
    let delivered: BTreeSet<u32> = sub.delivered.iter().copied().collect();
    let mut covered = BTreeSet::new();
    let gap_resumes: Vec<&ResumeRecord> = server.resumes.iter().filter(|r| r.gap).collect();
    if gap_resumes.len() != sub.gaps.len() {
        return Err(format!(
            "the server answered {} resumes with a gap, the subscriber noted {}",
            gap_resumes.len(),
            sub.gaps.len()
        ));
    }
    for (gap, resume) in sub.gaps.iter().zip(gap_resumes) {
        let range: BTreeSet<u32> = (gap.first..=gap.last.unwrap_or(n)).collect();
        if resume.after != gap.after {
            return Err(format!(
                "gap {gap:?}: the server resumed after {}",
                resume.after
            ));
        }
        let missed: BTreeSet<u32> = (resume.missed.range(gap.first..))
            .filter(|s| !delivered.contains(s))
            .copied()
            .collect();
        if range != missed {
            return Err(format!(
                "gap {gap:?} reported {range:?}, but the server's log after it holds {missed:?} \
                 not delivered otherwise"
            ));
        }
        covered.extend(range);
    }
    for seq in 1..=n {
        match (delivered.contains(&seq), covered.contains(&seq)) {
            (true, false) | (false, true) => {}
            (false, false) => return Err(format!("message {seq} lost without a gap reported")),
            (true, true) => return Err(format!("message {seq} delivered and reported missed")),
        }
    }
    if !scenario.gaps_allowed && !sub.gaps.is_empty() {
        return Err(format!("gaps reported: {:?}", sub.gaps));
    }
    Ok(())
}

/// Runs `scenario` over `count` seeds; panics with the failing seed. Returns the totals.
fn run_seeds(scenario: &Scenario, count: u64) -> Outcome {
    let started = std::time::Instant::now();
    let (mut total, seeds) =
        netsim_seeds::run_seeds("volley", scenario.name, count, |seed| run(scenario, seed));
    total.seeds = seeds;
    eprintln!(
        "netsim {}: {} seeds, {} faults, {} reconnects, {} complete resumes, {} gaps, {} repeats \
         dropped, {:.0} s simulated in {:.1} s",
        scenario.name,
        total.seeds,
        total.faults,
        total.reconnects,
        total.resumed,
        total.gaps,
        total.repeats,
        total.sim_secs,
        started.elapsed().as_secs_f64()
    );
    total
}

/// Asserts that the faults did bite: at least `per_seed` × seeds `what` happened (over 10
/// seeds or more; a replay of one seed need not).
fn at_least(total: &Outcome, got: usize, per_seed: f64, what: &str) {
    let want = (total.seeds as f64 * per_seed) as usize;
    if total.seeds >= 10 {
        assert!(got >= want, "too few {what}: {got} < {want}: {total:?}");
    }
}

const NO_FAULTS: Faults = Faults {
    partitions: false,
    latency: false,
    resets: false,
    restarts: false,
};

/// Partitions (of either client from the server, 0.1 to 8 s) and latency spikes (up to 4 s):
/// keep-alive notices the stalled connections, the clients reconnect, and the subscriber
/// resumes within the history: every message exactly once, in order, and no gap.
#[test]
fn partitions_and_latency_lose_nothing() {
    let scenario = Scenario {
        name: "partitions_and_latency_lose_nothing",
        faults: Faults {
            partitions: true,
            latency: true,
            ..NO_FAULTS
        },
        history: 1000,
        messages: MESSAGES,
        gaps_allowed: false,
    };
    let total = run_seeds(&scenario, SEEDS);
    at_least(&total, total.reconnects, 1.0, "reconnects");
}

/// The server drops connections at random (a reset, or a FIN without a close frame), among
/// partitions: no message lost, none repeated, no gap.
#[test]
fn resets_lose_nothing() {
    let scenario = Scenario {
        name: "resets_lose_nothing",
        faults: Faults {
            partitions: true,
            resets: true,
            ..NO_FAULTS
        },
        history: 1000,
        messages: MESSAGES,
        gaps_allowed: false,
    };
    let total = run_seeds(&scenario, SEEDS);
    at_least(&total, total.reconnects, 1.0, "reconnects");
}

/// Server restarts (the hub and its history are gone) among resets and latency spikes: a
/// resume after a restart is told of a gap, which covers exactly what the subscriber missed;
/// everything else arrives exactly once.
#[test]
fn restarts_report_the_gap() {
    let scenario = Scenario {
        name: "restarts_report_the_gap",
        faults: Faults {
            latency: true,
            resets: true,
            restarts: true,
            ..NO_FAULTS
        },
        history: 1000,
        messages: MESSAGES,
        gaps_allowed: true,
    };
    let total = run_seeds(&scenario, SEEDS);
    at_least(&total, total.gaps, 0.5, "gaps");
}

/// A history of 5 messages: an outage longer than half a second loses publications from the
/// history, and the resume must say so, with the right range; shorter ones still resume
/// completely.
#[test]
fn short_history_reports_the_gap() {
    let scenario = Scenario {
        name: "short_history_reports_the_gap",
        faults: Faults {
            partitions: true,
            resets: true,
            ..NO_FAULTS
        },
        history: 5,
        messages: MESSAGES,
        gaps_allowed: true,
    };
    let total = run_seeds(&scenario, SEEDS);
    at_least(&total, total.gaps, 0.5, "gaps");
    at_least(&total, total.resumed, 0.25, "complete resumes");
}
