//! What the network simulations share (seeds, the simulation, tracing): the `tests/netsim.rs`
//! of volley, volley-redis, volley-socketio and volley-socketio-redis include this file.
//! `NETSIM_SEED=N` replays one seed, `NETSIM_SEEDS=N` runs seeds 1 to N instead of the file's
//! default.

/// What the runs of a scenario add up to.
pub(crate) trait Tally: Default {
    /// Adds one seed's outcome.
    fn add(&mut self, other: Self);
}

/// The seeds to run: `NETSIM_SEED` alone, or seeds 1 to `NETSIM_SEEDS` (default `count`).
pub(crate) fn seeds(count: u64) -> Vec<u64> {
    match std::env::var("NETSIM_SEED") {
        Ok(seed) => vec![seed.parse().expect("NETSIM_SEED: a number")],
        Err(_) => {
            let count = std::env::var("NETSIM_SEEDS")
                .map_or(count, |n| n.parse().expect("NETSIM_SEEDS: a number"));
            (1..=count).collect()
        }
    }
}

/// Runs `run` for every seed of [`seeds`]`(count)` and adds up the outcomes; the first failure
/// panics with the seed and the command that replays it (`cargo test -p <package> --test netsim
/// <scenario>`). Returns the total and the number of seeds run.
pub(crate) fn run_seeds<O: Tally>(
    package: &str,
    scenario: &str,
    count: u64,
    mut run: impl FnMut(u64) -> Result<O, String>,
) -> (O, usize) {
    let mut total = O::default();
    let seeds = seeds(count);
    for &seed in &seeds {
        match run(seed) {
            Ok(outcome) => total.add(outcome),
            Err(e) => panic!(
                "netsim {scenario}: seed {seed} failed: {e}\n  replay: NETSIM_SEED={seed} cargo \
                 test -p {package} --test netsim {scenario}"
            ),
        }
    }
    (total, seeds.len())
}

/// The simulation every scenario runs in: seeded by `seed`, ending `limit` (plus a minute of
/// grace) of simulated time after its start, 10 ms ticks, 1–20 ms of latency per message.
pub(crate) fn sim(seed: u64, limit: std::time::Duration) -> turmoil::Sim<'static> {
    let ms = std::time::Duration::from_millis;
    turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(limit + std::time::Duration::from_secs(60))
        .tick_duration(ms(10))
        .min_message_latency(ms(1))
        .max_message_latency(ms(20))
        .build()
}

/// Whether `NETSIM_TRACE` asks for what happens to be printed.
pub(crate) fn tracing() -> bool {
    std::env::var_os("NETSIM_TRACE").is_some()
}
