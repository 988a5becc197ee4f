//! The topics hub over real TCP on 127.0.0.1: routing by topic, excluding the sender, leaving,
//! encode-once sharing, and the overflow policies with a subscriber that never reads.
//!
//! Every wait is bounded (`within`), so a hung test fails instead of hanging.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use volley::hub::{Hub, HubConfig, MemberId};
use volley::proto::frame::{FrameHeader, OpCode};
use volley::proto::{Connection, ProtocolConfig as ProtoConfig, Role};
use volley::{
    CloseCode, CloseFrame, Config, DeflateConfig, MaybeTlsStream, Message, Overflow,
    PreparedMessage, QueueLimits, Server,
};

const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
#[track_caller]
fn within<F: Future>(f: F) -> impl Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, f).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {WAIT:?} (waiting at {caller})"),
        }
    }
}

/// Polls `cond` every few milliseconds until it holds, failing the test after [`WAIT`].
#[track_caller]
fn until(what: &'static str, mut cond: impl FnMut() -> bool) -> impl Future<Output = ()> {
    let caller = std::panic::Location::caller();
    async move {
        let start = Instant::now();
        while !cond() {
            assert!(
                start.elapsed() < WAIT,
                "timed out waiting for {what} at {caller}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

type Ids = Arc<Mutex<HashMap<String, MemberId>>>;

/// A test server around `hub`. A connection to `/NAME/T1,T2` joins the hub (its id recorded
/// under NAME), subscribes to the listed topics and gets "ready". Then it understands the text
/// commands `sub T`, `unsub T`, `pub T DATA` (publish excluding itself) and `bye` (a direct
/// message, then a close 1000). A connection to `/hold/NAME/T…` never reads and keeps its member
/// until the hub lets it go.
///
/// Accepted sockets get a small send buffer (`sndbuf`, if any), so that a client that stops
/// reading backs the writer up quickly.
async fn hub_server(hub: Hub, sndbuf: Option<u32>) -> (SocketAddr, Ids) {
    hub_server_with(hub, sndbuf, Config::default()).await
}

/// [`hub_server`] with a connection configuration.
async fn hub_server_with(hub: Hub, sndbuf: Option<u32>, config: Config) -> (SocketAddr, Ids) {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = sndbuf {
        socket.set_send_buffer_size(size).unwrap();
    }
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(128).unwrap();
    let server = Server::from_listener(listener).config(config);
    let addr = server.local_addr().unwrap();
    let ids: Ids = Arc::default();
    let ids2 = ids.clone();
    tokio::spawn(server.serve(move |ws, request| {
        let hub = hub.clone();
        let ids = ids2.clone();
        async move {
            let path = request.uri().path().to_string();
            let mut parts = path.trim_start_matches('/').split('/');
            let mut name = parts.next().unwrap_or_default();
            let hold = name == "hold";
            if hold {
                name = parts.next().unwrap_or_default();
            }
            let topics = parts.next().unwrap_or_default();
            let (member, mut rx) = hub.join_socket(ws);
            ids.lock().unwrap().insert(name.to_string(), member.id());
            for topic in topics.split(',').filter(|t| !t.is_empty()) {
                member.subscribe(topic);
            }
            member.send("ready");
            if hold {
                // Never reads; keeps its member until the hub lets it go.
                while !member.is_closed() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                drop(rx);
                return;
            }
            while let Some(Ok(message)) = rx.recv().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let mut words = text.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("sub"), Some(topic), None) => {
                        member.subscribe(topic);
                        member.send("ok");
                    }
                    (Some("unsub"), Some(topic), None) => {
                        member.unsubscribe(topic);
                        member.send("ok");
                    }
                    (Some("pub"), Some(topic), Some(data)) => {
                        member.publish(topic, data);
                    }
                    (Some("bye"), None, None) => {
                        member.send("bye");
                        member.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
                    }
                    _ => panic!(
                        "test server: unknown command {:?}",
                        text.chars().take(40).collect::<String>()
                    ),
                }
            }
        }
    }));
    (addr, ids)
}

type Client = volley::WebSocket<MaybeTlsStream>;

/// A volley client at `path`, once the server said "ready".
async fn client(addr: SocketAddr, path: &str) -> Client {
    client_with(addr, path, Config::default()).await
}

/// [`client`] with a connection configuration.
async fn client_with(addr: SocketAddr, path: &str, config: Config) -> Client {
    let builder = volley::ClientBuilder::new(format!("ws://{addr}{path}")).config(config);
    let (mut ws, _) = within(builder.connect()).await.expect("connect");
    assert_eq!(next_text(&mut ws).await, "ready");
    ws
}

async fn next_message(ws: &mut Client) -> Message {
    match within(ws.recv()).await {
        Some(Ok(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

async fn next_text(ws: &mut Client) -> String {
    match next_message(ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected text, got {other:?}"),
    }
}

/// Sends a command and waits for the server's "ok".
async fn command(ws: &mut Client, text: &str) {
    within(ws.send(text)).await.unwrap();
    assert_eq!(next_text(ws).await, "ok");
}

// ---------------------------------------------------------------------------------------------
// A raw client that completes the handshake and then reads only when told to
// ---------------------------------------------------------------------------------------------

struct RawClient {
    io: TcpStream,
    buf: BytesMut,
}

impl RawClient {
    /// Connects with a small receive buffer and completes the handshake, reading nothing past it.
    async fn connect(addr: SocketAddr, path: &str) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut io = within(socket.connect(addr)).await.unwrap();
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        io.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(
                within(io.read(&mut byte)).await.unwrap(),
                1,
                "EOF in handshake"
            );
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{head:?}");
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// The next frame (server frames are unmasked and, here, unfragmented); `None` at EOF.
    async fn next_frame(&mut self) -> Option<(OpCode, Vec<u8>)> {
        loop {
            if let Some((header, len)) = FrameHeader::parse(&self.buf).unwrap() {
                let total = len + header.payload_len as usize;
                if self.buf.len() >= total {
                    self.buf.advance(len);
                    let payload = self.buf.split_to(header.payload_len as usize);
                    return Some((header.opcode, payload.to_vec()));
                }
            }
            let n = within(self.io.read_buf(&mut self.buf)).await.ok()?;
            if n == 0 {
                return None;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Routing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_reaches_exactly_the_subscribers_of_a_topic() {
    let hub = Hub::default();
    let (addr, _) = hub_server(hub.clone(), None).await;
    let mut a = client(addr, "/a/red").await;
    let mut b = client(addr, "/b/red,blue").await;
    let mut c = client(addr, "/c/blue").await;
    let mut d = client(addr, "/d/").await;

    let red = hub.publish("red", "to red");
    assert_eq!((red.delivered, red.dropped), (2, 0));
    let blue = hub.publish("blue", "to blue");
    assert_eq!((blue.delivered, blue.dropped), (2, 0));
    assert_eq!(hub.publish("green", "nobody").delivered, 0);
    assert_eq!(hub.broadcast("end").delivered, 4);

    assert_eq!(next_text(&mut a).await, "to red");
    assert_eq!(next_text(&mut a).await, "end");
    assert_eq!(next_text(&mut b).await, "to red");
    assert_eq!(next_text(&mut b).await, "to blue");
    assert_eq!(next_text(&mut b).await, "end");
    assert_eq!(next_text(&mut c).await, "to blue");
    assert_eq!(next_text(&mut c).await, "end");
    assert_eq!(next_text(&mut d).await, "end");

    let topics = hub.topics();
    let names: Vec<(&str, usize)> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.subscribers))
        .collect();
    assert_eq!(names, [("blue", 2), ("red", 2)]);
    let stats = hub.stats();
    assert_eq!((stats.members, stats.topics), (4, 2));
    assert_eq!(
        (stats.published, stats.delivered, stats.dropped),
        // 4 "ready" messages, 4 publishes.
        (8, 4 + 2 + 2 + 4, 0)
    );
}

#[tokio::test]
async fn member_publish_excludes_the_sender() {
    let hub = Hub::default();
    let (addr, _) = hub_server(hub.clone(), None).await;
    let mut a = client(addr, "/a/room").await;
    let mut b = client(addr, "/b/room").await;
    let mut c = client(addr, "/c/room").await;

    within(a.send("pub room hi from a")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "hi from a");
    assert_eq!(next_text(&mut c).await, "hi from a");
    // A publisher that is not subscribed reaches the subscribers all the same.
    let mut outsider = client(addr, "/o/").await;
    within(outsider.send("pub room hi from o")).await.unwrap();
    assert_eq!(next_text(&mut b).await, "hi from o");
    hub.publish("room", "end");
    // `a` got nothing of its own.
    assert_eq!(next_text(&mut a).await, "hi from o");
    assert_eq!(next_text(&mut a).await, "end");
    assert_eq!(next_text(&mut b).await, "end");
}

#[tokio::test]
async fn unsubscribe_and_leave_on_disconnect() {
    let hub = Hub::default();
    let (addr, _) = hub_server(hub.clone(), None).await;
    let mut a = client(addr, "/a/t,u").await;
    let mut b = client(addr, "/b/t").await;
    assert_eq!(hub.subscribers("t"), 2);

    command(&mut a, "unsub t").await;
    assert_eq!(hub.subscribers("t"), 1);
    assert_eq!(hub.publish("t", "only b").delivered, 1);
    assert_eq!(next_text(&mut b).await, "only b");
    command(&mut a, "unsub u").await;
    assert!(
        hub.topics().iter().all(|t| t.name != "u"),
        "empty topic kept"
    );
    command(&mut a, "sub t").await;
    assert_eq!(hub.subscribers("t"), 2);

    // A clean close: the handler's `recv` ends and dropping the member leaves the hub.
    within(b.close(None)).await.unwrap();
    until("b to leave", || hub.subscribers("t") == 1).await;
    // An abrupt disconnect (no close frame).
    drop(a);
    until("a to leave", || hub.stats().members == 0).await;
    assert!(hub.topics().is_empty());
}

#[tokio::test]
async fn member_leaves_when_its_connection_fails_even_if_the_handle_is_kept() {
    let hub = Hub::default();
    let (addr, ids) = hub_server(hub.clone(), None).await;
    let mut held = RawClient::connect(addr, "/hold/h/t").await;
    let (op, ready) = held.next_frame().await.unwrap();
    assert_eq!((op, &ready[..]), (OpCode::Text, &b"ready"[..]));
    let id = ids.lock().unwrap()["h"];
    drop(held);
    // The handler neither reads nor drops its member: the writer notices the dead connection
    // on the next writes.
    let start = Instant::now();
    while hub.subscribers("t") > 0 {
        assert!(start.elapsed() < WAIT, "member never left");
        hub.publish("t", vec![0u8; 1024]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(hub.member_stats(id).is_none());
    assert_eq!(hub.stats().members, 0);
}

#[tokio::test]
async fn member_close_sends_queued_messages_then_the_close_frame() {
    let hub = Hub::default();
    let (addr, _) = hub_server(hub.clone(), None).await;
    let mut a = client(addr, "/a/t").await;
    within(a.send("bye")).await.unwrap();
    assert_eq!(next_text(&mut a).await, "bye");
    match next_message(&mut a).await {
        Message::Close(Some(frame)) => {
            assert_eq!(
                (frame.code, frame.reason.as_str()),
                (CloseCode::NORMAL, "bye")
            )
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    assert!(within(a.recv()).await.is_none());
    until("the member to leave", || hub.stats().members == 0).await;
}

// ---------------------------------------------------------------------------------------------
// Encode once
// ---------------------------------------------------------------------------------------------

#[test]
fn prepared_frames_are_shared_not_copied() {
    let prepared = PreparedMessage::binary(vec![42u8; 4096]);
    let clone = prepared.clone();
    assert_eq!(prepared.frame().as_ptr(), clone.frame().as_ptr());

    // Every server connection queues the very same allocation.
    let mut servers: Vec<Connection> = (0..3)
        .map(|_| Connection::new(Role::Server, ProtoConfig::default()))
        .collect();
    for server in &mut servers {
        server.send(Message::text("before")).unwrap();
        server.send_prepared(&prepared).unwrap();
        let first = server.poll_transmit().unwrap();
        assert_eq!(&first[..], b"\x81\x06before");
        let shared = server.poll_transmit().unwrap();
        assert_eq!(shared.as_ptr(), prepared.frame().as_ptr());
        assert_eq!(shared.len(), prepared.frame().len());
        assert!(server.poll_transmit().is_none());
    }

    // A client must mask per connection: it encodes normally, and the peer decodes the message.
    let mut client = Connection::new(Role::Client, ProtoConfig::default());
    let mut server = Connection::new(Role::Server, ProtoConfig::default());
    client.send_prepared(&prepared).unwrap();
    while let Some(bytes) = client.poll_transmit() {
        assert_ne!(bytes.as_ptr(), prepared.frame().as_ptr());
        server.handle_read(&bytes).unwrap();
    }
    assert_eq!(server.poll_event(), Some(Message::binary(vec![42u8; 4096])));

    // A fragmenting connection splits it like any message.
    let mut fragmenting = Connection::new(
        Role::Server,
        ProtoConfig::default().fragment_size(Some(1000)),
    );
    fragmenting.send_prepared(&prepared).unwrap();
    let wire = fragmenting.poll_transmit().unwrap();
    assert_eq!(wire[0], 0x02, "first fragment: binary without FIN");

    // Like `send`, only while open.
    let mut closing = Connection::new(Role::Server, ProtoConfig::default());
    closing.close(None).unwrap();
    assert_eq!(
        closing.send_prepared(&prepared),
        Err(volley::SendError::Closed)
    );
}

#[tokio::test]
async fn prepared_messages_reach_deflate_connections_uncompressed() {
    let hub = Hub::default();
    let deflate = Config::default().deflate(Some(DeflateConfig::default()));
    let (addr, _) = hub_server_with(hub.clone(), None, deflate.clone()).await;
    let mut plain = client(addr, "/plain/t").await;
    let mut compressed = client_with(addr, "/deflate/t", deflate).await;
    assert!(plain.deflate().is_none());
    assert!(compressed.deflate().is_some());
    let big = "all work and no play makes a dull hub ".repeat(500);
    assert_eq!(hub.publish("t", big.as_str()).delivered, 2);
    assert_eq!(hub.publish("t", vec![1u8, 2, 3]).delivered, 2);
    for ws in [&mut plain, &mut compressed] {
        assert_eq!(next_text(ws).await, big);
        assert_eq!(next_message(ws).await, Message::binary(vec![1u8, 2, 3]));
    }
    // A compressed message from the connection itself, published on.
    within(compressed.send(format!("pub t {big}")))
        .await
        .unwrap();
    assert_eq!(next_text(&mut plain).await, big);
}

// ---------------------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------------------

/// Messages in flight to the fast subscriber: fewer than its queue bound, so that it never
/// overflows while the test publishes as fast as it consumes.
const WINDOW: usize = 8;

/// A binary message carrying its index in its first 8 bytes.
fn numbered(i: usize, size: usize) -> PreparedMessage {
    let mut data = vec![0u8; size.max(8)];
    data[..8].copy_from_slice(&(i as u64).to_be_bytes());
    PreparedMessage::binary(data)
}

fn index_of(payload: &[u8]) -> usize {
    u64::from_be_bytes(payload[..8].try_into().unwrap()) as usize
}

/// Spawns a fast subscriber that reads `n` numbered messages, checking their order, and reports
/// its count through the returned watch channel. The task returns how long it took.
async fn fast_subscriber(
    addr: SocketAddr,
    path: &str,
    n: usize,
) -> (watch::Receiver<usize>, tokio::task::JoinHandle<Duration>) {
    let mut ws = client(addr, path).await;
    let (tx, rx) = watch::channel(0usize);
    let task = tokio::spawn(async move {
        let start = Instant::now();
        for expected in 0..n {
            match next_message(&mut ws).await {
                Message::Binary(data) => assert_eq!(index_of(&data), expected),
                other => panic!("fast subscriber: unexpected {other:?}"),
            }
            tx.send_replace(expected + 1);
        }
        start.elapsed()
    });
    (rx, task)
}

/// Publishes `n` numbered messages to `topic`, keeping at most [`WINDOW`] in flight to the fast
/// subscriber. Returns how long it took.
async fn publish_paced(
    hub: &Hub,
    topic: &str,
    n: usize,
    size: usize,
    fast: &mut watch::Receiver<usize>,
) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        while i - *fast.borrow() >= WINDOW {
            within(fast.changed()).await.unwrap();
        }
        hub.publish(topic, numbered(i, size));
    }
    start.elapsed()
}

const N: usize = 2000;
const SIZE: usize = 512;
const QUEUE: usize = 16;

fn slow_config(overflow: Overflow) -> HubConfig {
    let limits = QueueLimits::default()
        .overflow(overflow)
        .max_messages(QUEUE)
        .max_bytes(64 * 1024);
    HubConfig::default()
        .queue(limits)
        .close_timeout(Duration::from_secs(5))
}

/// One fast and one stuck subscriber under a drop policy: returns the hub and the raw client.
async fn run_with_stuck_subscriber(overflow: Overflow) -> (Hub, Ids, RawClient) {
    let hub = Hub::new(slow_config(overflow));
    let (addr, ids) = hub_server(hub.clone(), Some(4096)).await;

    // Baseline: the fast subscriber alone.
    let (mut progress, fast) = fast_subscriber(addr, "/alone/base", N).await;
    let published = publish_paced(&hub, "base", N, SIZE, &mut progress).await;
    let received = within(fast).await.unwrap();
    eprintln!(
        "{overflow:?} baseline: fast subscriber alone got {N} x {SIZE} B in {received:?} \
         ({:.0} msg/s; publishing took {published:?})",
        N as f64 / received.as_secs_f64()
    );

    // A subscriber that never reads, and a fast one on the same topic.
    let slow = RawClient::connect(addr, "/slow/t").await;
    let (mut progress, fast) = fast_subscriber(addr, "/fast/t", N).await;
    until("both subscribed", || hub.subscribers("t") == 2).await;
    let published = publish_paced(&hub, "t", N, SIZE, &mut progress).await;
    let received = within(fast).await.unwrap();
    eprintln!(
        "{overflow:?} with a stuck subscriber: fast subscriber got {N} x {SIZE} B in \
         {received:?} ({:.0} msg/s; publishing took {published:?})",
        N as f64 / received.as_secs_f64()
    );
    assert!(
        received < Duration::from_secs(5),
        "the fast subscriber was slowed down: {received:?}"
    );
    let fast_stats = hub.member_stats(ids.lock().unwrap()["fast"]).unwrap();
    assert_eq!(fast_stats.dropped, 0);
    (hub, ids, slow)
}

/// Checks the stuck subscriber's queue stayed within its bounds and lost messages were counted.
fn check_capped(hub: &Hub, ids: &Ids, overflow: Overflow) {
    let slow_id = ids.lock().unwrap()["slow"];
    let slow = hub.member_stats(slow_id).unwrap();
    let frame = numbered(0, SIZE).frame().len();
    eprintln!("{overflow:?} stuck subscriber: {slow:?}");
    assert!(slow.queued_bytes <= QUEUE * frame, "{slow:?}");
    assert!(slow.dropped > (N / 2) as u64, "{slow:?}");
    // Everything offered is accounted for: "ready" + N.
    let offered = N as u64 + 1;
    match overflow {
        Overflow::DropNewest => assert_eq!(slow.delivered + slow.dropped, offered, "{slow:?}"),
        // Every message was taken; the oldest were evicted later (counted as dropped).
        _ => assert_eq!(slow.delivered, offered, "{slow:?}"),
    }
    let stats = hub.stats();
    assert_eq!(stats.dropped, slow.dropped);
    assert_eq!(stats.closed_slow, 0);
}

#[tokio::test]
async fn drop_oldest_caps_a_stuck_subscriber_and_the_fast_one_keeps_its_rate() {
    let (hub, ids, mut slow) = run_with_stuck_subscriber(Overflow::DropOldest).await;
    check_capped(&hub, &ids, Overflow::DropOldest);
    // Reading again, the slow subscriber gets a gapped but ordered stream that ends with the
    // newest message (the oldest were the ones dropped): what it reads and what was evicted
    // add up to everything offered.
    let mut last = None;
    let mut read = 0u64;
    while last != Some(N - 1) {
        let (op, payload) = slow
            .next_frame()
            .await
            .expect("EOF before the last message");
        read += 1;
        if op == OpCode::Binary {
            let i = index_of(&payload);
            assert!(
                last.is_none_or(|l| i > l),
                "out of order: {i} after {last:?}"
            );
            last = Some(i);
        }
    }
    let slow_stats = hub.member_stats(ids.lock().unwrap()["slow"]).unwrap();
    assert_eq!(read + slow_stats.dropped, N as u64 + 1, "{slow_stats:?}");
}

#[tokio::test]
async fn drop_newest_caps_a_stuck_subscriber_and_the_fast_one_keeps_its_rate() {
    let (hub, ids, _slow) = run_with_stuck_subscriber(Overflow::DropNewest).await;
    check_capped(&hub, &ids, Overflow::DropNewest);
}

#[tokio::test]
async fn close_policy_closes_the_stuck_subscriber_with_1013() {
    let hub = Hub::new(slow_config(Overflow::Close));
    let (addr, ids) = hub_server(hub.clone(), Some(4096)).await;
    let mut slow = RawClient::connect(addr, "/slow/t").await;
    let (mut progress, fast) = fast_subscriber(addr, "/fast/t", N).await;
    until("both subscribed", || hub.subscribers("t") == 2).await;
    let slow_id = ids.lock().unwrap()["slow"];

    let published = publish_paced(&hub, "t", N, SIZE, &mut progress).await;
    let received = within(fast).await.unwrap();
    eprintln!(
        "Close: fast subscriber got {N} x {SIZE} B in {received:?} ({:.0} msg/s; publishing \
         took {published:?})",
        N as f64 / received.as_secs_f64()
    );
    let stats = hub.stats();
    assert_eq!(stats.closed_slow, 1, "{stats:?}");
    assert!(stats.dropped >= 1, "{stats:?}");
    assert_eq!(
        hub.subscribers("t"),
        1,
        "the slow subscriber left the topic"
    );
    assert!(hub.member_stats(slow_id).is_none(), "the slow member left");
    let fast_id = ids.lock().unwrap()["fast"];
    assert_eq!(hub.member_stats(fast_id).unwrap().dropped, 0);

    // Reading again, the slow client finds complete frames and then the close frame.
    let close = loop {
        match slow.next_frame().await {
            Some((OpCode::Close, payload)) => break payload,
            Some((OpCode::Binary | OpCode::Text, _)) => {}
            other => panic!("expected frames then a close, got {other:?}"),
        }
    };
    assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1013);
    assert_eq!(&close[2..], b"slow consumer: send queue full");
}

/// The documented defaults.
#[test]
fn hub_config_defaults() {
    let config = HubConfig::default();
    assert_eq!(config.queue.overflow, Overflow::Close);
    assert_eq!(config.queue.max_messages, 256);
    assert_eq!(config.queue.max_bytes, 1 << 20);
    assert_eq!(config.queue.slow_close_code, CloseCode::TRY_AGAIN_LATER);
    assert_eq!(config.close_timeout, Duration::from_secs(10));
    assert_eq!(QueueLimits::default().max_messages(0).max_messages, 1);
}

// ---------------------------------------------------------------------------------------------
// Callback connections as subscribers: no task per member, bounded by the hub's limits
// ---------------------------------------------------------------------------------------------

/// Joins every connection to the hub (its id recorded), subscribed to "t", and greets it with
/// "ready".
struct Joiner(Hub, Arc<Mutex<Vec<MemberId>>>);

impl volley::callback::Callbacks for Joiner {
    fn on_open(&self, conn: &mut volley::callback::Conn<'_>) {
        let member = self.0.join(conn.handle());
        self.1.lock().unwrap().push(member.id());
        member.subscribe("t");
        member.send("ready");
        conn.set_data(member);
    }

    fn on_message(&self, _conn: &mut volley::callback::Conn<'_>, _message: Message) {}
}

/// A server whose connections are callback members of `hub`; accepted sockets get a 4 KiB send
/// buffer, so that a client that stops reading backs its queue up quickly.
async fn callbacks_hub_server(hub: Hub, ids: Arc<Mutex<Vec<MemberId>>>) -> SocketAddr {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_send_buffer_size(4096).unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1024).unwrap();
    let server = Server::from_listener(listener)
        .config(Config::default().ping_interval(None))
        .route("/*", volley::Endpoint::callbacks(Joiner(hub, ids)));
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.run());
    addr
}

/// 99 fast callback subscribers and one that never reads, while a publisher floods the topic
/// (paced only by the fast ones): every fast one gets every message in order, the slow one is
/// closed with 1013 or capped per policy, and no member ever holds more than the hub's limit.
async fn slow_reader_among_callback_subscribers(overflow: Overflow) {
    const FAST: usize = 99;
    const N: usize = 1000;
    const SIZE: usize = 512;
    const LIMIT: usize = 32 * 1024;
    let limits = QueueLimits::default()
        .overflow(overflow)
        .max_bytes(LIMIT)
        .max_messages(usize::MAX);
    let hub = Hub::new(HubConfig::default().queue(limits));
    let ids: Arc<Mutex<Vec<MemberId>>> = Arc::default();
    let addr = callbacks_hub_server(hub.clone(), ids.clone()).await;
    let mut slow = RawClient::connect(addr, "/slow").await;
    // Opened (and its id recorded) before the others; then it stops reading.
    assert_eq!(slow.next_frame().await.unwrap().1, b"ready");
    let mut progress = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..FAST {
        let (rx, task) = fast_subscriber(addr, "/fast", N).await;
        progress.push(rx);
        readers.push(task);
    }
    until("everyone subscribed", || hub.subscribers("t") == FAST + 1).await;

    let frame = numbered(0, SIZE).frame().len();
    let mut peak_member = 0;
    let mut peak_total = 0;
    for i in 0..N {
        // At most WINDOW messages ahead of the slowest fast subscriber.
        for rx in &mut progress {
            while i - *rx.borrow() >= WINDOW {
                within(rx.changed()).await.unwrap();
            }
        }
        hub.publish("t", numbered(i, SIZE));
        if i % 50 == 0 {
            let levels: Vec<usize> = (ids.lock().unwrap().iter())
                .filter_map(|&id| hub.member_stats(id).map(|s| s.queued_bytes))
                .collect();
            peak_member = peak_member.max(levels.iter().copied().max().unwrap_or(0));
            peak_total = peak_total.max(levels.iter().sum::<usize>());
        }
    }
    for reader in readers {
        within(reader).await.unwrap();
    }
    eprintln!(
        "{overflow:?}: peak queued per member {peak_member} B, all members {peak_total} B \
         (limit {LIMIT} B each); {:?}",
        hub.stats()
    );
    // Bounded: a member holds at most its limit (here also the write limit, the most the
    // protocol's queue takes, plus the message that crossed it) and the newest message, which
    // is always taken when nothing older can make room.
    let bound = LIMIT + 2 * frame;
    assert!(peak_member <= bound, "{peak_member}");
    assert!(peak_total <= (FAST + 1) * bound, "{peak_total}");
    let stats = hub.stats();
    match overflow {
        Overflow::Close => {
            assert_eq!(stats.closed_slow, 1, "{stats:?}");
            let slow_id = ids.lock().unwrap()[0];
            assert!(hub.member_stats(slow_id).is_none(), "the slow one left");
            let close = loop {
                match slow.next_frame().await {
                    Some((OpCode::Close, payload)) => break payload,
                    Some(_) => {}
                    None => panic!("EOF before the close frame"),
                }
            };
            assert_eq!(u16::from_be_bytes([close[0], close[1]]), 1013);
        }
        _ => {
            assert_eq!(stats.closed_slow, 0, "{stats:?}");
            assert!(stats.dropped > 0, "the slow one lost messages: {stats:?}");
            // Reading again, it finds a gapped but ordered stream.
            let mut last = None;
            while last != Some(N - 1) && overflow == Overflow::DropOldest {
                let (op, payload) = slow.next_frame().await.expect("EOF");
                if op == OpCode::Binary {
                    let i = index_of(&payload);
                    assert!(last.is_none_or(|l| i > l), "{i} after {last:?}");
                    last = Some(i);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_callback_subscriber_is_closed_with_1013_and_the_others_get_everything() {
    slow_reader_among_callback_subscribers(Overflow::Close).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_callback_subscriber_loses_its_oldest_and_the_others_get_everything() {
    slow_reader_among_callback_subscribers(Overflow::DropOldest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_callback_subscriber_loses_its_newest_and_the_others_get_everything() {
    slow_reader_among_callback_subscribers(Overflow::DropNewest).await;
}
