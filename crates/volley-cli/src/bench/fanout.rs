//! `volley bench fanout`: N subscribers of one topic on `volley serve`'s `/chat`, one publisher.
//!
//! Every publication carries its sequence number `s` and its send time `t` (nanoseconds since
//! the start of the run, on this process's monotonic clock); each subscriber checks that it
//! gets every publication exactly once and in order, and records publish→delivery latency.
//! The publisher never runs more than [`WINDOW`] publications ahead of the slowest subscriber,
//! so that the server's per-subscriber queue (256 messages) never overflows because of the
//! generator; with `--rate 0` that makes it publish as fast as the slowest subscriber receives.

use std::cell::{Cell, RefCell};
use std::fmt::Write as _;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio::sync::Notify;
use tokio::task::{JoinSet, LocalSet};
use volley::{ClientBuilder, Message};

use super::{
    CONNECT_TIMEOUT, Progress, current_thread_runtime, latency_histogram, latency_summary,
    parse_duration, round3,
};

/// Most publications in flight beyond the slowest subscriber.
const WINDOW: u64 = 128;
/// Time subscribers get after the last publication to receive it.
const DRAIN: Duration = Duration::from_secs(5);
/// Most subscribers joining at once.
const JOIN_CONCURRENCY: usize = 256;
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;

/// Arguments of `volley bench fanout`.
#[derive(clap::Args)]
pub(crate) struct FanoutArgs {
    /// The chat endpoint of `volley serve`, e.g. ws://127.0.0.1:9001/chat.
    #[arg(long)]
    url: String,
    /// Number of subscribers.
    #[arg(long, default_value_t = 10)]
    subscribers: usize,
    /// Publications per second (0: as fast as the slowest subscriber keeps up).
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Bytes of each publish command the publisher sends (padded; at least ~60).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// How long to publish (e.g. 10s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// The topic (default: one unique to this run).
    #[arg(long)]
    topic: Option<String>,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(borrow)]
    data: Data<'a>,
}

#[derive(Deserialize)]
struct Data<'a> {
    s: u64,
    t: u64,
    #[serde(borrow)]
    p: &'a str,
}

/// State shared by the subscribers and the publisher (one thread).
struct Shared {
    base: Instant,
    /// In-order publications received, per subscriber.
    received: Vec<Cell<u64>>,
    out_of_order: Cell<u64>,
    bad: Cell<u64>,
    subscriber_errors: Cell<u64>,
    histogram: RefCell<Histogram<u64>>,
    delivered: Cell<u64>,
    last_delivery: Cell<Option<Instant>>,
    errors: RefCell<Vec<String>>,
    publisher_waiting: Cell<bool>,
    progress: Notify,
    counter: Arc<AtomicU64>,
}

impl Shared {
    fn note(&self, error: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < MAX_ERRORS_KEPT {
            errors.push(error);
        }
    }

    fn min_received(&self) -> u64 {
        self.received.iter().map(Cell::get).min().unwrap_or(0)
    }
}

pub(super) fn run(args: FanoutArgs) -> Result<ExitCode, String> {
    if !args.url.starts_with("ws://") {
        return Err(format!("--url must be a ws:// URL, not {:?}", args.url));
    }
    if args.subscribers == 0 || args.subscribers > 50_000 {
        return Err("--subscribers must be between 1 and 50000".into());
    }
    if args.size > 1 << 20 {
        return Err("--size must be at most 1 MiB (the chat's default message limit)".into());
    }
    if args.duration.is_zero() {
        return Err("--duration must be more than 0".into());
    }
    let topic = args
        .topic
        .clone()
        .unwrap_or_else(|| format!("volley-bench-{}", std::process::id()));
    if topic.is_empty()
        || topic.len() > 128
        || topic.contains(['"', '\\'])
        || topic.chars().any(char::is_control)
    {
        return Err(
            "--topic must be 1 to 128 bytes without quotes, backslashes or control characters"
                .into(),
        );
    }
    let runtime = current_thread_runtime()?;
    let counter = Arc::new(AtomicU64::new(0));
    let shared = Rc::new(Shared {
        base: Instant::now(),
        received: (0..args.subscribers).map(|_| Cell::new(0)).collect(),
        out_of_order: Cell::new(0),
        bad: Cell::new(0),
        subscriber_errors: Cell::new(0),
        histogram: RefCell::new(latency_histogram()),
        delivered: Cell::new(0),
        last_delivery: Cell::new(None),
        errors: RefCell::new(Vec::new()),
        publisher_waiting: Cell::new(false),
        progress: Notify::new(),
        counter: counter.clone(),
    });
    let local = LocalSet::new();
    let outcome = local.block_on(&runtime, async {
        // 1. Every subscriber connects and joins.
        let mut joining = JoinSet::new();
        let mut joined = Vec::with_capacity(args.subscribers);
        for index in 0..args.subscribers {
            if joining.len() >= JOIN_CONCURRENCY
                && let Some(done) = joining.join_next().await
            {
                joined.push(done.map_err(|e| format!("joining: {e}"))??);
            }
            let (url, topic) = (args.url.clone(), topic.clone());
            joining.spawn_local(async move {
                let ws = tokio::time::timeout(CONNECT_TIMEOUT, join(&url, &topic))
                    .await
                    .map_err(|_| format!("subscriber {index}: joining timed out"))?
                    .map_err(|e| format!("subscriber {index}: {e}"))?;
                Ok::<_, String>((index, ws))
            });
        }
        while let Some(done) = joining.join_next().await {
            joined.push(done.map_err(|e| format!("joining: {e}"))??);
        }
        // 2. They receive and verify.
        let mut subscribers = JoinSet::new();
        for (index, mut ws) in joined {
            let shared = shared.clone();
            subscribers.spawn_local(async move {
                let mut expected = 0u64;
                while let Some(message) = ws.recv().await {
                    match message {
                        Ok(Message::Text(text)) => {
                            deliver(&shared, index, &text, &mut expected);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            shared
                                .subscriber_errors
                                .set(shared.subscriber_errors.get() + 1);
                            shared.note(format!("subscriber {index}: {e}"));
                            return;
                        }
                    }
                }
                shared
                    .subscriber_errors
                    .set(shared.subscriber_errors.get() + 1);
                shared.note(format!(
                    "subscriber {index}: the server closed the connection"
                ));
            });
        }
        // 3. One publisher.
        let (publisher, _) =
            tokio::time::timeout(CONNECT_TIMEOUT, ClientBuilder::new(&args.url).connect())
                .await
                .map_err(|_| "publisher: connecting timed out".to_string())?
                .map_err(|e| format!("publisher: {e}"))?;
        let (mut tx, mut rx) = publisher.split();
        let watcher_shared = shared.clone();
        let watcher = tokio::task::spawn_local(async move {
            while let Some(message) = rx.recv().await {
                match message {
                    Ok(Message::Text(text)) if text.contains("\"error\"") => {
                        watcher_shared.note(format!("publisher got {}", text.as_str()));
                        watcher_shared.bad.set(watcher_shared.bad.get() + 1);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        watcher_shared.note(format!("publisher: {e}"));
                        return;
                    }
                }
            }
        });
        let progress = Progress::start(args.duration, args.json, counter.clone(), "deliveries");
        let started = Instant::now();
        let end = started + args.duration;
        let mut published = 0u64;
        let mut text = String::with_capacity(args.size + 64);
        let mut stalled = false;
        while Instant::now() < end {
            // Flow control: stay within WINDOW of the slowest subscriber.
            if published >= WINDOW && published - shared.min_received() >= WINDOW {
                shared.publisher_waiting.set(true);
                let waited =
                    tokio::time::timeout(Duration::from_secs(2), shared.progress.notified()).await;
                shared.publisher_waiting.set(false);
                if waited.is_err() && published - shared.min_received() >= WINDOW {
                    stalled = true;
                    shared.note(format!(
                        "a subscriber received nothing for 2 s ({} of {published} received)",
                        shared.min_received()
                    ));
                    break;
                }
                continue;
            }
            if args.rate > 0 {
                let due = started + Duration::from_secs_f64(published as f64 / args.rate as f64);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                    continue;
                }
            }
            publication(
                &mut text,
                &topic,
                published,
                shared.base.elapsed(),
                args.size,
            );
            if let Err(e) = tx.send(Message::text(text.clone())).await {
                shared.note(format!("publisher: {e}"));
                stalled = true;
                break;
            }
            published += 1;
        }
        let publish_secs = started.elapsed().as_secs_f64();
        // 4. Drain: wait for every subscriber to get everything (bounded).
        let drain_end = Instant::now() + DRAIN;
        while shared.min_received() < published && Instant::now() < drain_end {
            shared.publisher_waiting.set(true);
            let _ =
                tokio::time::timeout(Duration::from_millis(50), shared.progress.notified()).await;
        }
        shared.publisher_waiting.set(false);
        drop(progress);
        subscribers.abort_all();
        watcher.abort();
        Ok::<_, String>((published, publish_secs, started, stalled))
    });
    let (published, publish_secs, started, stalled) = outcome?;
    drop(local);
    runtime.shutdown_background();
    Ok(report(
        &args,
        &topic,
        &shared,
        published,
        publish_secs,
        started,
        stalled,
    ))
}

/// Connects to the chat, reads the greeting and joins `topic`.
async fn join(url: &str, topic: &str) -> Result<volley::WebSocket<volley::MaybeTlsStream>, String> {
    let (mut ws, _) = ClientBuilder::new(url)
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    ws.send(Message::text(format!("{{\"join\":\"{topic}\"}}")))
        .await
        .map_err(|e| e.to_string())?;
    // Bounded by the caller's timeout: the greeting {"id":…}, then {"joined":…}.
    while let Some(message) = ws.recv().await {
        match message.map_err(|e| e.to_string())? {
            Message::Text(text) if text.contains("\"joined\"") => return Ok(ws),
            Message::Text(text) if text.contains("\"error\"") => {
                return Err(format!("the chat answered {}", text.as_str()));
            }
            _ => {}
        }
    }
    Err("the server closed the connection before the join was confirmed".into())
}

/// Writes the publish command of publication `seq` into `out`, padded to `size` bytes.
fn publication(out: &mut String, topic: &str, seq: u64, at: Duration, size: usize) {
    out.clear();
    let t = at.as_nanos().min(u128::from(u64::MAX));
    let _ = write!(
        out,
        "{{\"topic\":\"{topic}\",\"data\":{{\"s\":{seq},\"t\":{t},\"p\":\""
    );
    let pad = size.saturating_sub(out.len() + 3);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}}");
}

/// Verifies one delivery to subscriber `index`.
fn deliver(shared: &Shared, index: usize, text: &str, expected: &mut u64) {
    let now = shared.base.elapsed();
    let delivery = match serde_json::from_str::<Delivery<'_>>(text) {
        Ok(d) if d.data.p.bytes().all(|b| b == b'x') => d,
        _ => {
            shared.bad.set(shared.bad.get() + 1);
            if shared.bad.get() == 1 {
                let head: String = text.chars().take(120).collect();
                shared.note(format!("subscriber {index}: unexpected message {head:?}"));
            }
            return;
        }
    };
    let seq = delivery.data.s;
    if seq < *expected {
        shared.out_of_order.set(shared.out_of_order.get() + 1);
        shared.note(format!(
            "subscriber {index}: publication {seq} after {}",
            *expected - 1
        ));
        return;
    }
    if seq > *expected {
        shared.note(format!(
            "subscriber {index}: publications {} to {} missing",
            *expected,
            seq - 1
        ));
    }
    *expected = seq + 1;
    let received = &shared.received[index];
    received.set(received.get() + 1);
    shared.delivered.set(shared.delivered.get() + 1);
    shared.last_delivery.set(Some(Instant::now()));
    let latency = now.as_nanos().saturating_sub(u128::from(delivery.data.t));
    shared
        .histogram
        .borrow_mut()
        .saturating_record(latency.min(u128::from(u64::MAX)) as u64);
    shared.counter.fetch_add(1, Ordering::Relaxed);
    if shared.publisher_waiting.get() {
        shared.progress.notify_one();
    }
}

fn report(
    args: &FanoutArgs,
    topic: &str,
    shared: &Shared,
    published: u64,
    publish_secs: f64,
    started: Instant,
    stalled: bool,
) -> ExitCode {
    let delivered = shared.delivered.get();
    let lost: u64 = shared
        .received
        .iter()
        .map(|r| published.saturating_sub(r.get()))
        .sum();
    let delivery_secs = shared
        .last_delivery
        .get()
        .map_or(publish_secs, |last| {
            last.duration_since(started).as_secs_f64()
        })
        .max(1e-9);
    let deliveries_per_s = delivered as f64 / delivery_secs;
    let publish_rate = published as f64 / publish_secs.max(1e-9);
    let (latency_json, latency_text) = latency_summary(&shared.histogram.borrow());
    let errors = shared.errors.borrow();
    let ok = lost == 0
        && shared.out_of_order.get() == 0
        && shared.bad.get() == 0
        && shared.subscriber_errors.get() == 0
        && !stalled
        && delivered > 0;
    if args.json {
        let json = serde_json::json!({
            "mode": "fanout",
            "url": args.url,
            "topic": topic,
            "subscribers": args.subscribers,
            "rate": args.rate,
            "size": args.size,
            "duration_s": args.duration.as_secs_f64(),
            "published": published,
            "publish_per_s": round3(publish_rate),
            "deliveries": delivered,
            "deliveries_per_s": round3(deliveries_per_s),
            "latency_us": latency_json,
            "lost": lost,
            "out_of_order": shared.out_of_order.get(),
            "bad_messages": shared.bad.get(),
            "subscriber_errors": shared.subscriber_errors.get(),
            "errors": *errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench fanout {} topic {topic:?}: {} subscriber(s), rate {}, {} B publish \
             commands, {:.1} s",
            args.url,
            args.subscribers,
            if args.rate == 0 {
                "as fast as possible".to_string()
            } else {
                format!("{}/s", args.rate)
            },
            args.size,
            publish_secs
        );
        println!(
            "  published {published} ({publish_rate:.0}/s), {delivered} deliveries \
             ({deliveries_per_s:.0}/s)"
        );
        println!("  publish→delivery: {latency_text}");
        println!(
            "  lost {lost}, out of order {}, bad messages {}, subscriber errors {}",
            shared.out_of_order.get(),
            shared.bad.get(),
            shared.subscriber_errors.get()
        );
        for e in errors.iter() {
            println!("    {e}");
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publications_are_padded_json() {
        let mut out = String::new();
        publication(&mut out, "room", 42, Duration::from_nanos(7), 200);
        assert_eq!(out.len(), 200);
        let v: serde_json::Value = serde_json::from_str(&out).expect("valid JSON");
        assert_eq!(v["topic"], "room");
        assert_eq!(v["data"]["s"], 42);
        assert_eq!(v["data"]["t"], 7);
        publication(&mut out, "room", 1, Duration::ZERO, 0);
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok());
    }
}
