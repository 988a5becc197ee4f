//! Live dashboard push: the server sends a JSON metrics snapshot to every connected client at a
//! fixed interval.
//!
//! ```text
//! cargo run -p volley --example dashboard                        # 127.0.0.1:9003, every 500 ms
//! cargo run -p volley --example dashboard -- 127.0.0.1:9003 100  # every 100 ms
//! volley connect ws://127.0.0.1:9003/                            # watch the snapshots arrive
//! ```
//!
//! A new client gets the latest snapshot at once, then every new one. Snapshots go through the
//! topics [`Hub`]: each is encoded once and shared by every client, and each client has a small
//! queue with [`Overflow::DropOldest`], so a client that reads slowly (a phone on a bad network,
//! a stalled browser tab) skips stale snapshots instead of slowing down the others or making the
//! server buffer without bound. For a dashboard only the latest value matters.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use volley::hub::{Hub, HubConfig};
use volley::{Message, Overflow, PreparedMessage, QueueLimits, Server};

/// The topic snapshots are published to.
const TOPIC: &str = "metrics";

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:9003".into());
    let every_ms = args.next().and_then(|s| s.parse().ok()).unwrap_or(500);
    let server = Server::bind(&addr).await?;
    println!(
        "dashboard on ws://{}/ every {every_ms} ms",
        server.local_addr()?
    );
    serve(server, Duration::from_millis(every_ms)).await
}

/// Runs the dashboard on `server`, publishing a snapshot every `interval`.
pub(crate) async fn serve(server: Server, interval: Duration) -> std::io::Result<()> {
    let hub = Hub::new(
        HubConfig::default().queue(
            QueueLimits::default()
                .overflow(Overflow::DropOldest)
                .max_messages(4),
        ),
    );
    // The latest snapshot, for clients that just connected.
    let latest: Arc<Mutex<Option<PreparedMessage>>> = Arc::default();
    tokio::spawn(publish_metrics(hub.clone(), latest.clone(), interval));
    server
        .serve(move |ws, _request| {
            let hub = hub.clone();
            let latest = latest.clone();
            async move {
                let (member, mut rx) = hub.join_socket(ws);
                member.subscribe(TOPIC);
                let snapshot = latest.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some(snapshot) = snapshot {
                    member.send(snapshot);
                }
                // Keep reading: that answers pings and completes the close handshake. Clients
                // have nothing to say to a dashboard.
                while let Some(Ok(message)) = rx.recv().await {
                    if let Message::Close(_) = message {
                        break;
                    }
                }
            }
        })
        .await
}

/// Publishes a snapshot every `interval`, forever.
async fn publish_metrics(
    hub: Hub,
    latest: Arc<Mutex<Option<PreparedMessage>>>,
    interval: Duration,
) {
    let started = Instant::now();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    for seq in 0u64.. {
        ticker.tick().await;
        let stats = hub.stats();
        let snapshot = snapshot_json(seq, started.elapsed(), stats.members, stats.dropped);
        // Encode once: the same frame bytes go to every client and to the latest-value cache.
        let prepared = PreparedMessage::from(snapshot);
        *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(prepared.clone());
        hub.publish(TOPIC, prepared);
    }
}

/// One metrics snapshot as JSON. The "system" numbers are synthetic waves (this is a demo), the
/// others are the dashboard's own counters.
pub(crate) fn snapshot_json(seq: u64, uptime: Duration, clients: usize, dropped: u64) -> String {
    let t = uptime.as_secs_f64();
    let cpu = 50.0 + 35.0 * (t / 7.0).sin() + 10.0 * (t * 1.3).sin();
    let rps = 1200.0 + 400.0 * (t / 11.0).cos();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    format!(
        r#"{{"seq":{seq},"time_ms":{now_ms},"uptime_s":{t:.1},"cpu_percent":{cpu:.1},"requests_per_s":{rps:.0},"clients":{clients},"dropped_snapshots":{dropped}}}"#
    )
}
