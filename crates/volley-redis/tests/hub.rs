//! The hub's Redis backend against a real redis-server: two hubs ("servers") in one process,
//! each on its own connection. A publication reaches every subscriber once, on both servers;
//! a server subscribes to a topic's channel only while it has subscribers; Redis stopped and
//! restarted: local delivery goes on and cross-server delivery resumes; malformed messages on
//! the channels are dropped.

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::RedisServer;
use volley::hub::{Hub, HubConfig, Member, Subscriber};
use volley::{CloseFrame, Offer, PreparedMessage, QueueLimits};
use volley_redis::hub::{RedisHubBackend, RedisHubConfig};
use volley_redis::{Redis, RedisConfig};

/// A subscriber that records what it is offered.
#[derive(Clone, Default)]
struct Probe(Arc<Mutex<Vec<PreparedMessage>>>);

impl Subscriber for Probe {
    fn offer(&self, message: &PreparedMessage, _: &QueueLimits) -> Offer {
        self.0.lock().unwrap().push(message.clone());
        Offer::Queued { evicted: 0 }
    }
    fn close(&self, _: Option<CloseFrame>) {}
    fn buffered_amount(&self) -> usize {
        0
    }
    fn is_open(&self) -> bool {
        true
    }
}

impl Probe {
    /// What it got: text as is, binary as `bin:<bytes>`.
    fn got(&self) -> Vec<String> {
        let messages = self.0.lock().unwrap();
        (messages.iter())
            .map(|m| match m.to_message() {
                volley::Message::Text(t) => t.to_string(),
                volley::Message::Binary(b) => format!("bin:{:?}", b.as_ref()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// Waits (at most 5 s) until it got `last`; returns what it got.
    async fn wait_for(&self, last: &str) -> Vec<String> {
        for _ in 0..500 {
            if self.got().iter().any(|m| m == last) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.got()
    }
}

fn redis_config(url: String) -> RedisConfig {
    let mut c = RedisConfig::new(url);
    c.min_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(400);
    c
}

struct Node {
    hub: Hub,
    backend: RedisHubBackend,
}

impl Node {
    fn start(url: String, config: RedisHubConfig) -> Node {
        let redis = Redis::connect(redis_config(url)).unwrap();
        let backend = RedisHubBackend::new(redis, config);
        let hub = backend.hub(HubConfig::default()).unwrap();
        assert!(
            backend.hub(HubConfig::default()).is_err(),
            "one hub per backend"
        );
        Node { hub, backend }
    }

    fn member(&self, topics: &[&str]) -> (Member, Probe) {
        let probe = Probe::default();
        let member = self.hub.join(probe.clone());
        for t in topics {
            member.subscribe(t);
        }
        (member, probe)
    }
}

/// Waits (at most 5 s) until `n` connections subscribe to `channel`.
async fn wait_numsub(redis: &Redis, channel: &str, n: usize) {
    let mut last = None;
    for _ in 0..500 {
        last = Some(redis.numsub(channel).await);
        if last == Some(Ok(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{channel}: expected {n} subscribers, last {last:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publication_reaches_every_subscriber_once_on_every_server() {
    let server = RedisServer::start();
    let a = Node::start(server.url(), RedisHubConfig::default());
    let b = Node::start(server.url(), RedisHubConfig::default());
    assert_ne!(a.backend.node_id(), b.backend.node_id());
    let (a1, a1_got) = a.member(&["t"]);
    let (_a2, a2_got) = a.member(&["t"]);
    let (b1, b1_got) = b.member(&["t"]);
    let (_b2, b2_got) = b.member(&["other"]);
    let redis = a.backend.redis().clone();
    redis.ready(Duration::from_secs(5)).await.unwrap();
    b.backend
        .redis()
        .ready(Duration::from_secs(5))
        .await
        .unwrap();
    let t = a.backend.topic_channel("t");
    assert_eq!(t, "volley-hub#topic#t");
    wait_numsub(&redis, &t, 2).await;
    wait_numsub(&redis, &a.backend.broadcast_channel(), 2).await;
    wait_numsub(&redis, &a.backend.topic_channel("other"), 1).await;

    // From A: a hub publication (every subscriber) and a member's (not to itself), binary.
    assert_eq!(a.hub.publish("t", "from-a").delivered, 2);
    assert_eq!(a1.publish("t", vec![1u8, 2, 3]).delivered, 1);
    b1_got.wait_for("bin:[1, 2, 3]").await;
    // From B, once A's publications went through Redis: to every member of both servers.
    b.hub.broadcast("all-b");
    a1_got.wait_for("all-b").await;
    a2_got.wait_for("all-b").await;
    // A fence from A, once B's broadcast came back to B through Redis too: what each server
    // got from Redis before the fence is complete when the fence is there.
    a.hub.broadcast("fence-a");
    b1_got.wait_for("fence-a").await;
    b2_got.wait_for("fence-a").await;
    // A's own publications come back to A through Redis: wait for the last (to be ignored).
    for _ in 0..500 {
        if a.backend.stats().own == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    assert_eq!(a1_got.got(), ["from-a", "all-b", "fence-a"]);
    assert_eq!(
        a2_got.got(),
        ["from-a", "bin:[1, 2, 3]", "all-b", "fence-a"]
    );
    assert_eq!(
        b1_got.got(),
        ["from-a", "bin:[1, 2, 3]", "all-b", "fence-a"]
    );
    assert_eq!(b2_got.got(), ["all-b", "fence-a"]);
    let (sa, sb) = (a.backend.stats(), b.backend.stats());
    assert_eq!((sa.published, sa.delivered, sa.own), (3, 1, 3), "{sa:?}");
    assert_eq!((sb.published, sb.delivered, sb.own), (1, 3, 1), "{sb:?}");
    assert_eq!(sa.malformed + sb.malformed, 0);

    // B's last subscriber of "t" leaves: B unsubscribes from its channel; and back.
    drop(b1);
    wait_numsub(&redis, &t, 1).await;
    let (_b3, b3_got) = b.member(&["t"]);
    wait_numsub(&redis, &t, 2).await;
    a.hub.publish("t", "again");
    assert_eq!(b3_got.wait_for("again").await, ["again"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_away_local_delivery_goes_on_and_cross_server_delivery_resumes() {
    let mut server = RedisServer::start();
    let a = Node::start(server.url(), RedisHubConfig::default());
    let b = Node::start(server.url(), RedisHubConfig::default());
    let (_a1, a1_got) = a.member(&["t"]);
    let (_b1, b1_got) = b.member(&["t"]);
    let (ra, rb) = (a.backend.redis().clone(), b.backend.redis().clone());
    ra.ready(Duration::from_secs(5)).await.unwrap();
    rb.ready(Duration::from_secs(5)).await.unwrap();
    wait_numsub(&ra, &a.backend.topic_channel("t"), 2).await;
    a.hub.publish("t", "before");
    b1_got.wait_for("before").await;

    server.stop();
    for _ in 0..500 {
        if !ra.is_ready() && !rb.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!ra.is_ready() && !rb.is_ready(), "both saw Redis go");
    // Local delivery does not wait for Redis.
    assert_eq!(a.hub.publish("t", "during-a").delivered, 1);
    assert_eq!(b.hub.publish("t", "during-b").delivered, 1);
    assert_eq!(a1_got.got(), ["before", "during-a"]);

    server.restart();
    // Ready means reconnected and resubscribed to every channel the hubs need.
    ra.ready(Duration::from_secs(10)).await.unwrap();
    rb.ready(Duration::from_secs(10)).await.unwrap();
    a.hub.publish("t", "after-a");
    b.hub.publish("t", "after-b");
    a1_got.wait_for("after-b").await;
    b1_got.wait_for("after-a").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // What was published while Redis was away stayed local; nothing came twice. (A local
    // publication and a remote one made at about the same time may arrive in either order.)
    for (got, during) in [(a1_got.got(), "during-a"), (b1_got.got(), "during-b")] {
        assert_eq!(got[..2], ["before", during], "{got:?}");
        let mut after = got[2..].to_vec();
        after.sort();
        assert_eq!(after, ["after-a", "after-b"], "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_on_the_channels_are_dropped() {
    let server = RedisServer::start();
    let a = Node::start(
        server.url(),
        RedisHubConfig::default()
            .prefix("custom")
            .max_message_size(1024),
    );
    let (_a1, a1_got) = a.member(&["t"]);
    let raw = Redis::connect(redis_config(server.url())).unwrap();
    raw.ready(Duration::from_secs(5)).await.unwrap();
    let t = a.backend.topic_channel("t");
    assert_eq!(t, "custom#topic#t");
    wait_numsub(&raw, &t, 1).await;
    wait_numsub(&raw, "custom#all#", 1).await;

    let mut oversized = b"b\0\0\0\0\0\0\0\x01".to_vec();
    oversized.resize(9 + 1025, 0);
    let junk: [&[u8]; 6] = [
        b"",
        b"t\0\0\0",
        b"x\0\0\0\0\0\0\0\x01hello",
        b"t\0\0\0\0\0\0\0\x01\xff\xfe",
        &oversized,
        b"{\"topic\":\"t\",\"data\":1}",
    ];
    for payload in junk {
        raw.publish(&t, payload).await.unwrap();
    }
    raw.publish("custom#all#", b"nonsense").await.unwrap();
    // Then well-formed messages from another node, written by hand from the documented format.
    raw.publish(&t, b"t\0\0\0\0\0\0\0\x01valid").await.unwrap();
    raw.publish("custom#all#", b"b\0\0\0\0\0\0\0\x01\x00\xff")
        .await
        .unwrap();
    a1_got.wait_for("bin:[0, 255]").await;
    assert_eq!(a1_got.got(), ["valid", "bin:[0, 255]"]);
    let stats = a.backend.stats();
    assert_eq!(
        (stats.received, stats.malformed, stats.delivered),
        (9, 7, 2)
    );
    // The hub goes on.
    assert_eq!(a.hub.publish("t", "local").delivered, 1);
}
