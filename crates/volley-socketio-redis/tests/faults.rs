//! Faults: Redis stopped (SIGKILL) and restarted during traffic. No panic; local delivery goes
//! on during the outage; the servers reconnect with backoff, resubscribe, and cross-server
//! delivery resumes.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::*;
use serde_json::json;
use volley_socketio_redis::{
    RedisAdapter, RedisAdapterConfig, ShardedRedisAdapter, ShardedRedisAdapterConfig,
};

fn ticks(clients: &Clients, event: &str, name: &str) -> usize {
    clients
        .received(event)
        .iter()
        .filter(|(n, _)| n == name)
        .count()
}

async fn redis_restart_during_traffic(sharded: bool) {
    let mut server = RedisServer::start();
    let url = server.url();
    let (r1, r2) = (redis_handle(&url), redis_handle(&url));
    let factory = |r: &volley_redis::Redis| {
        if sharded {
            ShardedRedisAdapter::factory(r.clone(), ShardedRedisAdapterConfig::default())
        } else {
            RedisAdapter::factory(r.clone(), RedisAdapterConfig::default())
        }
    };
    let (v1, a1, _) = volley_server(factory(&r1), "volley1").await;
    let (v2, a2, _) = volley_server(factory(&r2), "volley2").await;
    let mut clients = Clients::start();
    clients.connect("local", a1, &[]).await;
    clients.connect("remote", a2, &[]).await;

    // Traffic: v1 broadcasts a tick every 5 ms (bounded: at most 2,000 ticks, 20 s).
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (v1, stop) = (v1.clone(), stop.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..2_000u32 {
                if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(20) {
                    break;
                }
                // An error is only "cannot forward" (local delivery happened): never a panic.
                let _ = v1.emit("tick", json!(i));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    clients.wait_event("tick", &["local", "remote"]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    server.stop();
    let mut state = r1.state();
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| !s.ready))
        .await
        .expect("the outage is noticed")
        .unwrap();
    // Whatever was in flight lands; then the remote client gets nothing while local delivery
    // goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (local_before, remote_before) = (
        ticks(&clients, "tick", "local"),
        ticks(&clients, "tick", "remote"),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (local_after, remote_after) = (
        ticks(&clients, "tick", "local"),
        ticks(&clients, "tick", "remote"),
    );
    assert!(
        local_after >= local_before + 50,
        "local delivery must go on during the outage: {local_before} -> {local_after}"
    );
    assert_eq!(
        remote_before, remote_after,
        "nothing crosses servers without Redis"
    );
    // Requests that need the other servers fail fast and clearly.
    assert!(v1.server_count().await.is_err());
    assert!(v1.of("/").fetch_sockets().await.is_err());

    server.restart();
    for r in [&r1, &r2] {
        let mut state = r.state();
        tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| s.ready && s.connections >= 2),
        )
        .await
        .expect("reconnected and resubscribed within 10 s")
        .unwrap();
    }
    // Cross-server delivery resumes, both ways.
    clients.wait_event("tick", &["remote"]).await;
    let resumed = ticks(&clients, "tick", "remote");
    wait_until(
        "ticks reach the remote client again",
        Duration::from_secs(10),
        || ticks(&clients, "tick", "remote") > resumed + 10,
    )
    .await;
    v2.emit("back", json!("from v2")).unwrap();
    clients.wait_event("back", &["local", "remote"]).await;
    assert_eq!(v1.server_count().await.unwrap(), 2);
    stop.store(true, Ordering::Relaxed);
    traffic.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_adapter_survives_a_redis_restart() {
    let _serial = SERIAL.lock().await;
    redis_restart_during_traffic(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_adapter_survives_a_redis_restart() {
    let _serial = SERIAL.lock().await;
    redis_restart_during_traffic(true).await;
}
