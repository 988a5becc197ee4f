//! The protocol of `@socket.io/redis-streams-adapter` 0.3 (Node's `ClusterAdapter` over a Redis
//! stream), with connection state recovery across servers.
//!
//! - Broadcasts (without acknowledgement), `socketsJoin`, `socketsLeave` and
//!   `disconnectSockets` are appended to the stream `socket.io` (`XADD … MAXLEN ~ 10000`) as
//!   entries `{uid, nsp, type, data}` (`type` a decimal string, `data` JSON, or base64 msgpack
//!   when it holds binary data); every server reads the stream (`XREAD BLOCK`, on a connection
//!   of its own) and applies the entries of the other servers. A broadcast is delivered to the
//!   local sockets once Redis has given it its stream id, which is the packet's offset.
//! - Requests that need answers (broadcast with acknowledgement, `fetchSockets`,
//!   `serverSideEmit`) go over pub/sub, msgpack, on `socket.io#<nsp>#`; answers on
//!   `socket.io#<nsp>#<uid>#`. The server count is `PUBSUB NUMSUB socket.io#<nsp>#`.
//! - Sessions are kept in `sio:session:<pid>` (base64 msgpack `{sid, pid, rooms, data}`, expiring
//!   after `maxDisconnectionDuration`); a client that comes back with its last offset, to any
//!   server (Volley or Node) of the cluster, gets the stream entries after it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use volley_redis::{
    Message, NewEntry, PublishKind, Publisher, Redis, RedisConfig, StreamEntry, Subscription,
    SubscriptionId,
};
use volley_socketio::adapter::{BoxFuture, InMemoryAdapter};
use volley_socketio::packet::{Packet, PacketType};
use volley_socketio::recovery::{MissedPacket, Session, SessionToPersist, should_include};
use volley_socketio::{
    AckResponse, Adapter, AdapterError, AdapterFactory, BroadcastOptions, EncodedPacket,
    NamespaceRef, SocketInfo,
};

use crate::cluster::{self, Cluster, MAY_CONTAIN_BINARY, kind};
use crate::msgpack;
use crate::wire::{
    Requests, cluster_packet_to_node, decode_raw, lock, opts_from_node, opts_to_node,
};

/// Options of the streams adapter (Node's `RedisStreamsAdapterOptions`).
#[derive(Clone, Debug)]
pub struct RedisStreamsAdapterConfig {
    /// The stream (`"socket.io"`).
    pub stream_name: String,
    /// The prefix of the pub/sub channels (`"socket.io"`).
    pub channel_prefix: String,
    /// Sharded pub/sub (Redis 7) for the requests (false).
    pub use_sharded_pubsub: bool,
    /// The approximate most entries the stream keeps (10,000): a client that missed more
    /// than that is not recovered.
    pub max_len: usize,
    /// How many entries one `XREAD` fetches (100).
    pub read_count: usize,
    /// How long one `XREAD` blocks (5 s).
    pub block_time: Duration,
    /// The prefix of the session keys (`"sio:session:"`).
    pub session_key_prefix: String,
    /// How long to wait for the other servers' answers (5 s).
    pub requests_timeout: Duration,
}

impl Default for RedisStreamsAdapterConfig {
    fn default() -> Self {
        RedisStreamsAdapterConfig {
            stream_name: "socket.io".into(),
            channel_prefix: "socket.io".into(),
            use_sharded_pubsub: false,
            max_len: 10_000,
            read_count: 100,
            block_time: Duration::from_secs(5),
            session_key_prefix: "sio:session:".into(),
            requests_timeout: volley_socketio::adapter::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// A stream id `<ms>-<seq>`, comparable.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One entry to append, and what to deliver locally once it has its id.
struct Append {
    entry: NewEntry,
    local: Option<(Weak<Inner>, Packet, BroadcastOptions)>,
}

/// What the servers of one factory share: the connections, the stream reader, the appender.
struct Shared {
    redis: Redis,
    publisher: Publisher,
    config: RedisStreamsAdapterConfig,
    adapters: Mutex<HashMap<String, Weak<Inner>>>,
    appends: mpsc::Sender<Append>,
}

/// Restored sockets: held back until their CONNECT, then guarded against the stream entries
/// they got among their missed packets that this server delivers only now (its reader, or
/// its appender, may lag behind the stream).
#[derive(Default)]
struct Restoring {
    held: HashMap<String, Held>,
    /// sid -> the last stream id the socket got on restore: entries up to it are dropped.
    floors: HashMap<String, (u64, u64)>,
}

/// A restored socket held back until its CONNECT: the packets broadcast to it meanwhile.
#[derive(Default)]
struct Held {
    /// The last stream id its missed packets include (later ones only are sent from `packets`).
    after: Option<(u64, u64)>,
    packets: Vec<(Option<(u64, u64)>, MissedPacket)>,
}

struct Inner {
    local: InMemoryAdapter,
    ns: NamespaceRef,
    shared: Arc<Shared>,
    uid: String,
    public_channel: String,
    requests: Arc<Requests>,
    subscriptions: Mutex<Vec<SubscriptionId>>,
    /// Restored sockets; locked across every local delivery.
    held: Mutex<Restoring>,
    /// Connected sockets with a session (sid -> pid), kept fresh in Redis so that a crash of
    /// this server does not lose them.
    live: Mutex<HashMap<String, String>>,
    /// Live sessions whose rooms changed since they were last written.
    dirty: Mutex<std::collections::HashSet<String>>,
    refresh: tokio::sync::Notify,
}

/// A namespace's adapter speaking the protocol of Node's `@socket.io/redis-streams-adapter`
/// 0.3: Volley and Node servers using it on one Redis form one cluster, and with connection
/// state recovery on, a client recovers on any of them.
///
/// Build it through [`RedisStreamsAdapter::factory`]. Malformed or foreign entries and messages
/// are logged (debug) and dropped. While Redis is unreachable, local broadcasts are delivered
/// without an offset (they cannot be recovered) and nothing crosses servers.
pub struct RedisStreamsAdapter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RedisStreamsAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStreamsAdapter")
            .field("nsp", &self.inner.ns.name())
            .field("uid", &self.inner.uid)
            .finish()
    }
}

impl RedisStreamsAdapter {
    /// The adapter factory for every namespace of a server. `redis` carries the commands and
    /// the pub/sub; the stream is read on a second connection made from `redis`'s
    /// configuration (a blocking read holds its connection). Must be called within a Tokio
    /// runtime.
    pub fn factory(
        redis: Redis,
        config: RedisStreamsAdapterConfig,
    ) -> Result<AdapterFactory, volley_redis::RedisError> {
        let mut reader_config: RedisConfig = redis.config().clone();
        reader_config.response_timeout = config.block_time + Duration::from_secs(5);
        let reader = Redis::connect(reader_config)?;
        let (appends, append_rx) = mpsc::channel(redis.config().publish_queue.max(1));
        let shared = Arc::new(Shared {
            publisher: redis.publisher(),
            redis,
            config,
            adapters: Mutex::new(HashMap::new()),
            appends,
        });
        tokio::spawn(run_appender(Arc::downgrade(&shared), append_rx));
        tokio::spawn(run_reader(Arc::downgrade(&shared), reader));
        Ok(Arc::new(move |ns| {
            Arc::new(RedisStreamsAdapter::new(ns, shared.clone())) as Arc<dyn Adapter>
        }))
    }

    fn new(ns: NamespaceRef, shared: Arc<Shared>) -> Self {
        let uid = cluster::random_id();
        let prefix = &shared.config.channel_prefix;
        let public_channel = format!("{prefix}#{}#", ns.name());
        let private_channel = format!("{public_channel}{uid}#");
        let inner = Arc::new(Inner {
            local: InMemoryAdapter::without_recovery(ns.clone()),
            ns,
            shared: shared.clone(),
            uid,
            public_channel: public_channel.clone(),
            requests: Arc::default(),
            subscriptions: Mutex::new(Vec::new()),
            held: Mutex::new(Restoring::default()),
            live: Mutex::new(HashMap::new()),
            dirty: Mutex::new(std::collections::HashSet::new()),
            refresh: tokio::sync::Notify::new(),
        });
        if let Some(recovery) = inner.ns.recovery() {
            tokio::spawn(run_session_keeper(
                Arc::downgrade(&inner),
                recovery.max_disconnection_duration,
            ));
        }
        lock(&shared.adapters).insert(inner.ns.name().to_owned(), Arc::downgrade(&inner));
        let weak = Arc::downgrade(&inner);
        let handler: volley_redis::Handler = Arc::new(move |m: Message| {
            if let Some(inner) = weak.upgrade() {
                inner.on_pubsub(&m);
            }
        });
        let ids = [public_channel, private_channel]
            .into_iter()
            .map(|c| {
                let sub = if shared.config.use_sharded_pubsub {
                    Subscription::Shard(c)
                } else {
                    Subscription::Channel(c)
                };
                shared.redis.subscribe(sub, handler.clone())
            })
            .collect();
        *lock(&inner.subscriptions) = ids;
        RedisStreamsAdapter { inner }
    }
}

/// Appends entries in order (pipelined), then delivers the local broadcasts with their ids.
async fn run_appender(shared: Weak<Shared>, mut rx: mpsc::Receiver<Append>) {
    let mut batch = Vec::with_capacity(256);
    let mut failing = false;
    while rx.recv_many(&mut batch, 256).await > 0 {
        let Some(s) = shared.upgrade() else { return };
        let entries: Vec<NewEntry> = batch.iter().map(|a: &Append| a.entry.clone()).collect();
        let ids = match s.redis.xadd_many(&entries, s.config.max_len).await {
            Ok(ids) if ids.len() == batch.len() => {
                if failing {
                    failing = false;
                    tracing::info!("socket.io redis streams: appending again");
                }
                ids.into_iter().map(Some).collect()
            }
            other => {
                if !failing {
                    failing = true;
                    tracing::warn!(
                        "socket.io redis streams: cannot append to the stream ({}): local \
                         delivery continues without offsets, nothing crosses servers",
                        match other {
                            Err(e) => e.to_string(),
                            Ok(ids) => format!("{} ids for {} entries", ids.len(), batch.len()),
                        }
                    );
                }
                vec![None; batch.len()]
            }
        };
        drop(s);
        for (append, id) in batch.drain(..).zip(ids) {
            if let Some((inner, packet, opts)) = append.local
                && let Some(inner) = inner.upgrade()
            {
                inner.deliver(&packet, &opts, id.as_deref());
            }
        }
    }
}

/// Reads the stream from its end and hands every entry to the adapter of its namespace.
async fn run_reader(shared: Weak<Shared>, reader: Redis) {
    let mut after = "$".to_owned();
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(s) = shared.upgrade() else { return };
        let (stream, count, block) = (
            s.config.stream_name.clone(),
            s.config.read_count,
            s.config.block_time,
        );
        drop(s);
        match reader.xread(&stream, &after, count, Some(block)).await {
            Ok(entries) => {
                backoff = Duration::from_millis(100);
                let Some(s) = shared.upgrade() else { return };
                for entry in entries {
                    if let Some(nsp) = entry.field("nsp") {
                        let nsp = String::from_utf8_lossy(nsp);
                        let adapter = lock(&s.adapters).get(nsp.as_ref()).and_then(Weak::upgrade);
                        if let Some(adapter) = adapter {
                            adapter.on_entry(&entry);
                        }
                    }
                    after = entry.id;
                }
            }
            Err(e) => {
                tracing::debug!("socket.io redis streams: reading the stream failed: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often the live sessions are written again.
fn refresh_period(window: Duration) -> Duration {
    (window / 4).clamp(Duration::from_secs(1), Duration::from_secs(30))
}

/// Keeps the sessions of the connected sockets in Redis (expiring one window after the last
/// write, plus the refresh period): written when they connect, soon after their rooms change,
/// and every refresh period. So a client of a server that crashes (no disconnect handling at
/// all) can still recover on another server within the window.
async fn run_session_keeper(inner: Weak<Inner>, window: Duration) {
    let period = refresh_period(window);
    let mut next_full = tokio::time::Instant::now() + period;
    loop {
        let notified = {
            let Some(i) = inner.upgrade() else { return };
            let fut = async move {
                i.refresh.notified().await;
            };
            tokio::select! {
                () = fut => true,
                () = tokio::time::sleep_until(next_full) => false,
            }
        };
        if notified {
            // Coalesce the changes of a burst.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let Some(i) = inner.upgrade() else { return };
        let sids: Vec<String> = if notified {
            lock(&i.dirty).drain().collect()
        } else {
            lock(&i.dirty).clear();
            next_full = tokio::time::Instant::now() + period;
            lock(&i.live).keys().cloned().collect()
        };
        let items: Vec<(String, Vec<u8>)> = sids
            .iter()
            .filter_map(|sid| {
                let pid = lock(&i.live).get(sid).cloned()?;
                let data =
                    i.ns.socket(sid)
                        .map(|s| s.data_json())
                        .unwrap_or(Value::Null);
                let session = SessionToPersist {
                    sid: sid.clone(),
                    pid,
                    rooms: i.local.socket_rooms(sid),
                    data,
                };
                Some(i.session_entry(&session))
            })
            .collect();
        if items.is_empty() {
            continue;
        }
        if let Err(e) = i.shared.redis.set_px_many(&items, window + period).await {
            tracing::debug!("socket.io redis streams: cannot refresh the sessions: {e}");
        }
    }
}

fn is_ephemeral(kind: u64, data: &Value) -> bool {
    (kind == kind::BROADCAST && data.get("requestId").is_some())
        || kind == kind::SERVER_SIDE_EMIT
        || kind == kind::FETCH_SOCKETS
}

/// A stream entry's `data` field: JSON, or base64 msgpack.
fn decode_entry_data(raw: &[u8]) -> Result<msgpack::Decoded, String> {
    if raw.first() == Some(&b'{') {
        decode_raw(raw)
    } else {
        let bin = base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|e| format!("invalid base64: {e}"))?;
        msgpack::decode(&bin).map_err(|e| e.to_string())
    }
}

impl Inner {
    fn config(&self) -> &RedisStreamsAdapterConfig {
        &self.shared.config
    }

    /// The key and value of a session, as Node's adapter writes them.
    fn session_entry(&self, session: &SessionToPersist) -> (String, Vec<u8>) {
        let key = format!("{}{}", self.config().session_key_prefix, session.pid);
        let value = json!({
            "sid": session.sid, "pid": session.pid, "rooms": session.rooms, "data": session.data,
        });
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(msgpack::encode(&value, &[]));
        (key, encoded.into_bytes())
    }

    fn mark_dirty(&self, sid: &str) {
        if lock(&self.live).contains_key(sid) {
            lock(&self.dirty).insert(sid.to_owned());
            self.refresh.notify_one();
        }
    }

    /// `{type, data, uid, nsp}` as an entry: `type` a string, `data` JSON or base64 msgpack.
    fn entry(&self, kind: u64, data: &Value, attachments: &[Bytes]) -> NewEntry {
        let data = if !attachments.is_empty() && MAY_CONTAIN_BINARY.contains(&kind) {
            base64::engine::general_purpose::STANDARD
                .encode(msgpack::encode(data, attachments))
                .into_bytes()
        } else {
            serde_json::to_vec(data).unwrap_or_default()
        };
        (
            self.config().stream_name.clone(),
            vec![
                ("uid", self.uid.clone().into_bytes()),
                ("nsp", self.ns.name().as_bytes().to_vec()),
                ("type", kind.to_string().into_bytes()),
                ("data", data),
            ],
        )
    }

    fn append(&self, append: Append) -> Result<(), AdapterError> {
        self.shared
            .appends
            .try_send(append)
            .map_err(|e| AdapterError::Unavailable(format!("stream append queue: {e}")))
    }

    fn publish_message(
        &self,
        channel: String,
        kind: u64,
        data: Value,
        attachments: &[Bytes],
    ) -> Result<(), AdapterError> {
        let msg = json!({"type": kind, "data": data, "uid": self.uid, "nsp": self.ns.name()});
        let how = if self.config().use_sharded_pubsub {
            PublishKind::SPublish
        } else {
            PublishKind::Publish
        };
        self.shared
            .publisher
            .send(how, channel, msgpack::encode(&msg, attachments))
            .map_err(|e| AdapterError::Unavailable(e.to_string()))
    }

    fn on_pubsub(self: &Arc<Self>, m: &Message) {
        let decoded = match decode_raw(&m.payload) {
            Ok(d) => d,
            Err(e) => {
                crate::wire::dropped(
                    &m.channel,
                    format_args!("socket.io redis streams: dropping a malformed message: {e}"),
                );
                return;
            }
        };
        let Some(msg) = decoded.value.as_object() else {
            crate::wire::dropped(
                &m.channel,
                format_args!("socket.io redis streams: dropping a message that is not an object"),
            );
            return;
        };
        cluster::on_message(self, msg, &decoded.attachments, None);
    }

    fn on_entry(self: &Arc<Self>, entry: &StreamEntry) {
        let Some((msg, attachments)) = entry_message(entry) else {
            crate::wire::dropped(
                &entry.id,
                format_args!("socket.io redis streams: dropping a malformed entry"),
            );
            return;
        };
        cluster::on_message(self, &msg, &attachments, Some(&entry.id));
    }

    /// Delivers a broadcast to the local sockets, with its offset appended when recovery is
    /// on and the packet is recoverable; sockets being restored hold it back.
    fn deliver(&self, packet: &Packet, opts: &BroadcastOptions, offset: Option<&str>) {
        let recoverable = self.ns.recovery().is_some()
            && matches!(packet.kind, PacketType::Event | PacketType::BinaryEvent)
            && packet.id.is_none()
            && !opts.flags.volatile;
        let mut packet = std::borrow::Cow::Borrowed(packet);
        if let (true, Some(offset), Some(Value::Array(data))) = (recoverable, offset, &packet.data)
        {
            let mut data = data.clone();
            data.push(Value::String(offset.to_owned()));
            packet = std::borrow::Cow::Owned(Packet {
                data: Some(Value::Array(data)),
                ..packet.into_owned()
            });
        }
        let encoded = EncodedPacket::new(&packet);
        let id = offset.and_then(parse_id);
        let mut restoring = lock(&self.held);
        for sid in self.local.sockets(opts) {
            if let Some(floor) = restoring.floors.get(&sid) {
                match id {
                    Some(id) if id <= *floor => continue,
                    Some(_) => {
                        restoring.floors.remove(&sid);
                    }
                    None => {}
                }
            }
            if let Some(h) = restoring.held.get_mut(&sid) {
                if let (true, Some(Value::Array(data))) = (recoverable, &packet.data) {
                    h.packets.push((
                        id,
                        MissedPacket {
                            data: data.clone(),
                            attachments: packet.attachments.clone(),
                        },
                    ));
                }
                continue;
            }
            if let Some(socket) = self.ns.socket(&sid) {
                let _ = socket.send_encoded(&encoded, opts.flags.volatile);
            }
        }
    }

    async fn restore(
        self: &Arc<Self>,
        pid: &str,
        offset: &str,
    ) -> Result<Option<Session>, AdapterError> {
        let unavailable = |e: volley_redis::RedisError| AdapterError::Unavailable(e.to_string());
        if parse_id(offset).is_none() {
            return Ok(None);
        }
        let stream = &self.config().stream_name;
        let key = format!("{}{pid}", self.config().session_key_prefix);
        let redis = &self.shared.redis;
        let raw = redis.get_del(&key).await.map_err(unavailable)?;
        let known = !redis
            .xrange(stream, offset, offset, Some(1))
            .await
            .map_err(unavailable)?
            .is_empty();
        let (Some(raw), true) = (raw, known) else {
            return Ok(None);
        };
        let Some(session) = decode_session(&raw) else {
            crate::wire::dropped(
                "",
                format_args!("socket.io redis streams: dropping a malformed session"),
            );
            return Ok(None);
        };
        // From now on, what is delivered to the socket is held back; what was delivered
        // before is in the stream already, after the client's offset.
        {
            let mut restoring = lock(&self.held);
            restoring.held.insert(session.sid.clone(), Held::default());
            self.local.add_all(&session.sid, &session.rooms);
        }
        let result = self.missed_after(&session, offset).await;
        match result {
            Ok((missed, last)) => {
                if let Some(h) = lock(&self.held).held.get_mut(&session.sid) {
                    h.after = last;
                }
                tracing::debug!(
                    sid = session.sid,
                    offset,
                    missed = missed.len(),
                    ?last,
                    "socket.io redis streams: session restored"
                );
                Ok(Some(Session { session, missed }))
            }
            Err(e) => {
                lock(&self.held).held.remove(&session.sid);
                self.local.del_all(&session.sid);
                Err(e)
            }
        }
    }

    /// The broadcasts of this namespace after `offset` that reach `session`'s rooms.
    async fn missed_after(
        &self,
        session: &SessionToPersist,
        offset: &str,
    ) -> Result<(Vec<MissedPacket>, Option<(u64, u64)>), AdapterError> {
        let mut missed = Vec::new();
        let mut from = offset.to_owned();
        let mut last = parse_id(offset);
        // Bounded, as Node's (100 calls of at most 1,000 entries).
        for _ in 0..100 {
            let Some((ms, seq)) = parse_id(&from) else {
                break;
            };
            let start = format!("{ms}-{}", seq + 1);
            let entries = self
                .shared
                .redis
                .xrange(&self.config().stream_name, &start, "+", Some(1000))
                .await
                .map_err(|e| AdapterError::Unavailable(e.to_string()))?;
            if entries.is_empty() {
                break;
            }
            for entry in &entries {
                from = entry.id.clone();
                last = parse_id(&entry.id);
                let is_broadcast = entry.field("nsp").map(|n| n.as_ref())
                    == Some(self.ns.name().as_bytes())
                    && entry.field("type").map(|t| t.as_ref()) == Some(b"3");
                if !is_broadcast {
                    continue;
                }
                let Some((msg, attachments)) = entry_message(entry) else {
                    continue;
                };
                let data = msg.get("data");
                let (Some(packet), Some(opts)) = (
                    data.and_then(|d| d.get("packet")),
                    opts_from_node(data.and_then(|d| d.get("opts"))),
                ) else {
                    continue;
                };
                if data.and_then(|d| d.get("requestId")).is_some()
                    || !should_include(&session.rooms, &opts)
                {
                    continue;
                }
                let Some(Value::Array(items)) = packet.get("data") else {
                    continue;
                };
                let mut items = items.clone();
                items.push(Value::String(entry.id.clone()));
                missed.push(MissedPacket {
                    data: items,
                    attachments,
                });
            }
        }
        Ok((missed, last))
    }
}

/// A stream entry as a cluster message (`None`: malformed).
fn entry_message(entry: &StreamEntry) -> Option<(Map<String, Value>, Vec<Bytes>)> {
    let text = |name: &str| entry.field(name).and_then(|b| std::str::from_utf8(b).ok());
    let mut msg = Map::new();
    msg.insert("uid".into(), json!(text("uid")?));
    msg.insert("nsp".into(), json!(text("nsp")?));
    msg.insert("type".into(), json!(text("type")?));
    let mut attachments = Vec::new();
    if let Some(raw) = entry.field("data") {
        let decoded = decode_entry_data(raw).ok()?;
        msg.insert("data".into(), decoded.value);
        attachments = decoded.attachments;
    }
    Some((msg, attachments))
}

fn decode_session(raw: &[u8]) -> Option<SessionToPersist> {
    let bin = base64::engine::general_purpose::STANDARD.decode(raw).ok()?;
    let v = msgpack::decode(&bin).ok()?.value;
    Some(SessionToPersist {
        sid: v.get("sid")?.as_str()?.to_owned(),
        pid: v.get("pid")?.as_str()?.to_owned(),
        rooms: v
            .get("rooms")?
            .as_array()?
            .iter()
            .filter_map(|r| r.as_str().map(str::to_owned))
            .collect(),
        data: v.get("data").cloned().unwrap_or(Value::Null),
    })
}

impl Cluster for Inner {
    fn local(&self) -> &InMemoryAdapter {
        &self.local
    }

    fn ns(&self) -> &NamespaceRef {
        &self.ns
    }

    fn uid(&self) -> &str {
        &self.uid
    }

    fn requests(&self) -> &Arc<Requests> {
        &self.requests
    }

    fn requests_timeout(&self) -> Duration {
        self.config().requests_timeout
    }

    fn what(&self) -> &'static str {
        "socket.io redis streams"
    }

    fn publish(&self, kind: u64, data: Value, attachments: &[Bytes]) -> Result<(), AdapterError> {
        if is_ephemeral(kind, &data) {
            self.publish_message(self.public_channel.clone(), kind, data, attachments)
        } else {
            self.append(Append {
                entry: self.entry(kind, &data, attachments),
                local: None,
            })
        }
    }

    fn respond(&self, requester: &str, kind: u64, data: Value, attachments: &[Bytes]) {
        let channel = format!("{}{requester}#", self.public_channel);
        if let Err(e) = self.publish_message(channel, kind, data, attachments) {
            tracing::debug!("socket.io redis streams: cannot answer: {e}");
        }
    }

    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>> {
        let (redis, channel, sharded) = (
            self.shared.redis.clone(),
            self.public_channel.clone(),
            self.config().use_sharded_pubsub,
        );
        Box::pin(async move {
            let n = if sharded {
                redis.shard_numsub(&channel).await
            } else {
                redis.numsub(&channel).await
            };
            n.map_err(|e| AdapterError::Unavailable(e.to_string()))
        })
    }

    fn deliver_remote(&self, packet: &Packet, opts: &BroadcastOptions, offset: Option<&str>) {
        self.deliver(packet, opts, offset);
    }
}

impl Adapter for RedisStreamsAdapter {
    fn init(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            inner
                .shared
                .redis
                .ready(inner.config().requests_timeout)
                .await
                .map_err(|e| AdapterError::Unavailable(e.to_string()))
        })
    }

    fn close(&self) -> BoxFuture<'static, Result<(), AdapterError>> {
        let ids = std::mem::take(&mut *lock(&self.inner.subscriptions));
        for id in ids {
            self.inner.shared.redis.unsubscribe(id);
        }
        lock(&self.inner.shared.adapters).remove(self.inner.ns.name());
        Box::pin(std::future::ready(Ok(())))
    }

    fn server_count(&self) -> BoxFuture<'static, Result<usize, AdapterError>> {
        Cluster::server_count(&*self.inner)
    }

    fn add_all(&self, id: &str, rooms: &[String]) {
        self.inner.local.add_all(id, rooms);
        self.inner.mark_dirty(id);
    }

    fn del(&self, id: &str, room: &str) {
        self.inner.local.del(id, room);
        self.inner.mark_dirty(id);
    }

    fn del_all(&self, id: &str) {
        {
            let mut restoring = lock(&self.inner.held);
            restoring.held.remove(id);
            restoring.floors.remove(id);
        }
        self.inner.local.del_all(id);
    }

    fn socket_rooms(&self, id: &str) -> Vec<String> {
        self.inner.local.socket_rooms(id)
    }

    fn rooms(&self) -> Vec<String> {
        self.inner.local.rooms()
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<String> {
        self.inner.local.sockets(opts)
    }

    fn broadcast(&self, packet: &Packet, opts: &BroadcastOptions) -> Result<(), AdapterError> {
        let inner = &self.inner;
        if opts.flags.local {
            inner.deliver(packet, opts, None);
            return Ok(());
        }
        let data =
            json!({"packet": cluster_packet_to_node(packet), "opts": opts_to_node(opts, true)});
        let append = Append {
            entry: inner.entry(kind::BROADCAST, &data, &packet.attachments),
            local: Some((Arc::downgrade(inner), packet.clone(), opts.clone())),
        };
        inner.append(append).inspect_err(|_| {
            // Not even queued: deliver locally now, without an offset.
            inner.deliver(packet, opts, None);
        })
    }

    fn broadcast_with_ack(
        &self,
        packet: &Packet,
        opts: &BroadcastOptions,
        default_timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>> {
        cluster::broadcast_with_ack(&self.inner, packet, opts, default_timeout)
    }

    fn fetch_sockets(
        &self,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Result<Vec<SocketInfo>, AdapterError>> {
        cluster::fetch_sockets(&self.inner, opts)
    }

    fn add_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::SOCKETS_JOIN, opts, rooms, false)
    }

    fn del_sockets(&self, opts: &BroadcastOptions, rooms: &[String]) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::SOCKETS_LEAVE, opts, rooms, false)
    }

    fn disconnect_sockets(&self, opts: &BroadcastOptions, close: bool) -> Result<(), AdapterError> {
        cluster::bulk(&self.inner, kind::DISCONNECT_SOCKETS, opts, &[], close)
    }

    fn server_side_emit(&self, event: &str, args: &[Value]) -> Result<(), AdapterError> {
        cluster::server_side_emit(&self.inner, event, args)
    }

    fn server_side_emit_with_ack(
        &self,
        event: &str,
        args: &[Value],
    ) -> BoxFuture<'static, Result<Vec<Value>, AdapterError>> {
        cluster::server_side_emit_with_ack(&self.inner, event, args)
    }

    fn persist_session(&self, session: SessionToPersist) {
        let Some(recovery) = self.inner.ns.recovery() else {
            return;
        };
        lock(&self.inner.live).remove(&session.sid);
        let ttl = recovery.max_disconnection_duration;
        let (key, value) = self.inner.session_entry(&session);
        let redis = self.inner.shared.redis.clone();
        tokio::spawn(async move {
            if let Err(e) = redis.set_px(&key, &value, ttl).await {
                tracing::warn!("socket.io redis streams: cannot persist a session: {e}");
            }
        });
    }

    fn open_session(&self, session: SessionToPersist) {
        let Some(recovery) = self.inner.ns.recovery() else {
            return;
        };
        lock(&self.inner.live).insert(session.sid.clone(), session.pid.clone());
        let window = recovery.max_disconnection_duration;
        let (key, value) = self.inner.session_entry(&session);
        let redis = self.inner.shared.redis.clone();
        tokio::spawn(async move {
            if let Err(e) = redis
                .set_px(&key, &value, window + refresh_period(window))
                .await
            {
                tracing::debug!("socket.io redis streams: cannot store a session: {e}");
            }
        });
    }

    fn discard_session(&self, pid: &str) {
        lock(&self.inner.live).retain(|_, p| p != pid);
        let key = format!("{}{pid}", self.inner.config().session_key_prefix);
        let redis = self.inner.shared.redis.clone();
        tokio::spawn(async move {
            let _ = redis.del(&key).await;
        });
    }

    fn restore_session(
        &self,
        pid: &str,
        offset: &str,
    ) -> BoxFuture<'static, Result<Option<Session>, AdapterError>> {
        let inner = self.inner.clone();
        let (pid, offset) = (pid.to_owned(), offset.to_owned());
        Box::pin(async move { inner.restore(&pid, &offset).await })
    }

    fn finish_restore(&self, sid: &str, send: &mut dyn FnMut(MissedPacket)) {
        let mut restoring = lock(&self.inner.held);
        if let Some(h) = restoring.held.remove(sid) {
            let mut floor = h.after;
            for (id, packet) in h.packets {
                // Sent already among the missed packets?
                if let (Some(id), Some(after)) = (id, h.after)
                    && id <= after
                {
                    continue;
                }
                floor = floor.max(id);
                send(packet);
            }
            tracing::debug!(sid, ?floor, "socket.io redis streams: restore finished");
            if let Some(floor) = floor {
                restoring.floors.insert(sid.to_owned(), floor);
            }
        }
    }
}
