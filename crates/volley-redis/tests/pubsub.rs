//! The supervised connection against a real redis-server: pub/sub on channels, patterns and
//! shard channels, ordered publishing, and a Redis restart (reconnect, resubscribe, publish
//! again).

#[path = "common/redis_server.rs"]
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis_server::RedisServer;
use volley_redis::{Message, PublishKind, Redis, RedisConfig, Subscription};

type Log = Arc<Mutex<Vec<(String, String)>>>;

fn recorder(log: &Log) -> volley_redis::Handler {
    let log = log.clone();
    Arc::new(move |m: Message| {
        log.lock()
            .unwrap()
            .push((m.channel, String::from_utf8_lossy(&m.payload).into_owned()));
    })
}

async fn wait_for(log: &Log, n: usize) -> Vec<(String, String)> {
    for _ in 0..500 {
        if log.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    log.lock().unwrap().clone()
}

fn config(url: String) -> RedisConfig {
    let mut c = RedisConfig::new(url);
    c.min_backoff = Duration::from_millis(50);
    c.max_backoff = Duration::from_millis(400);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_publish_in_order_and_survive_a_restart() {
    let mut server = RedisServer::start();
    let redis = Redis::connect(config(server.url())).unwrap();
    let log: Log = Arc::default();
    // A handler that panics is logged; the other subscriptions go on.
    redis.subscribe(
        Subscription::Channel("a#".into()),
        Arc::new(|m: Message| {
            if m.payload.as_ref() == b"0" {
                panic!("handler panic (expected by the test)");
            }
        }),
    );
    redis.subscribe(Subscription::Channel("a#".into()), recorder(&log));
    redis.subscribe(Subscription::Pattern("p#*".into()), recorder(&log));
    redis.subscribe(Subscription::Shard("s#".into()), recorder(&log));
    redis.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(redis.numsub("a#").await.unwrap(), 1);
    assert_eq!(redis.shard_numsub("s#").await.unwrap(), 1);

    let publisher = redis.publisher();
    for i in 0..500 {
        publisher
            .send(
                PublishKind::Publish,
                "a#".into(),
                format!("{i}").into_bytes(),
            )
            .unwrap();
    }
    publisher
        .send(PublishKind::Publish, "p#x#".into(), b"pattern".to_vec())
        .unwrap();
    publisher
        .send(PublishKind::SPublish, "s#".into(), b"shard".to_vec())
        .unwrap();
    let got = wait_for(&log, 502).await;
    assert_eq!(got.len(), 502);
    let ordered: Vec<String> = got
        .iter()
        .filter(|(c, _)| c == "a#")
        .map(|(_, p)| p.clone())
        .collect();
    assert_eq!(ordered, (0..500).map(|i| i.to_string()).collect::<Vec<_>>());
    assert!(got.contains(&("p#x#".into(), "pattern".into())));
    assert!(got.contains(&("s#".into(), "shard".into())));

    // Redis goes away: commands fail fast, queued publications are dropped, nothing panics.
    server.stop();
    let mut state = redis.state();
    tokio::time::timeout(Duration::from_secs(5), state.wait_for(|s| !s.ready))
        .await
        .expect("the loss is noticed")
        .unwrap();
    assert!(redis.numsub("a#").await.is_err());
    publisher
        .send(PublishKind::Publish, "a#".into(), b"lost".to_vec())
        .unwrap();
    // Back: the supervisor reconnects and resubscribes everything.
    server.restart();
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| s.ready && s.connections >= 2),
    )
    .await
    .expect("reconnected within 10 s")
    .unwrap();
    assert_eq!(redis.numsub("a#").await.unwrap(), 1);
    assert_eq!(redis.shard_numsub("s#").await.unwrap(), 1);
    log.lock().unwrap().clear();
    publisher
        .send(PublishKind::Publish, "a#".into(), b"again".to_vec())
        .unwrap();
    publisher
        .send(PublishKind::SPublish, "s#".into(), b"shard again".to_vec())
        .unwrap();
    let got = wait_for(&log, 2).await;
    assert_eq!(
        got,
        vec![
            ("a#".to_owned(), "again".to_owned()),
            ("s#".to_owned(), "shard again".to_owned())
        ]
    );

    // Unsubscribing the last handler unsubscribes on Redis.
    let id = redis.subscribe(Subscription::Channel("b#".into()), recorder(&log));
    redis.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(redis.numsub("b#").await.unwrap(), 1);
    redis.unsubscribe(id);
    for _ in 0..200 {
        if redis.numsub("b#").await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(redis.numsub("b#").await.unwrap(), 0);

    // Shard channels too.
    let id = redis.subscribe(Subscription::Shard("sb#".into()), recorder(&log));
    redis.ready(Duration::from_secs(5)).await.unwrap();
    assert_eq!(redis.shard_numsub("sb#").await.unwrap(), 1);
    redis.unsubscribe(id);
    for _ in 0..200 {
        if redis.shard_numsub("sb#").await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(redis.shard_numsub("sb#").await.unwrap(), 0);
    // The connection is still the first reconnection's: no command timed out.
    assert_eq!(redis.state().borrow().connections, 2);
    assert!(redis.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_and_keys() {
    let server = RedisServer::start();
    let redis = Redis::connect(config(server.url())).unwrap();
    redis.ready(Duration::from_secs(5)).await.unwrap();
    // A blocking reader on its own connection sees entries added after it started.
    let reader = Redis::connect(config(server.url())).unwrap();
    reader.ready(Duration::from_secs(5)).await.unwrap();
    let read = tokio::spawn(async move {
        // A blocked XREAD is served as soon as one entry comes: read on from the last id.
        let mut got = Vec::new();
        let mut after = "$".to_owned();
        while got.len() < 2 {
            let entries: Vec<volley_redis::StreamEntry> = reader
                .xread("st", &after, 10, Some(Duration::from_secs(5)))
                .await
                .unwrap();
            assert!(!entries.is_empty(), "XREAD timed out");
            after = entries.last().unwrap().id.clone();
            got.extend(entries);
        }
        got
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ids = redis
        .xadd_many(
            &[
                (
                    "st".into(),
                    vec![("k", b"v1".to_vec()), ("n", b"1".to_vec())],
                ),
                ("st".into(), vec![("k", vec![0xff, 0x00])]),
            ],
            1000,
        )
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    let got = read.await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].id, ids[0]);
    assert_eq!(got[0].field("k").unwrap().as_ref(), b"v1");
    assert_eq!(got[1].field("k").unwrap().as_ref(), &[0xff, 0x00]);
    let range = redis.xrange("st", &ids[1], "+", None).await.unwrap();
    assert_eq!(range.len(), 1);
    assert!(
        redis
            .xrange("nope", "-", "+", None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        redis
            .xread("st", &ids[1], 10, None)
            .await
            .unwrap()
            .is_empty()
    );

    redis
        .set_px("key", b"value", Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(redis.get_del("key").await.unwrap(), Some(b"value".to_vec()));
    assert_eq!(redis.get_del("key").await.unwrap(), None);
    redis
        .set_px("short", b"x", Duration::from_millis(20))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(redis.get_del("short").await.unwrap(), None);
}
