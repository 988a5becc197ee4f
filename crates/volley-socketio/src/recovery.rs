//! Connection state recovery (Socket.IO 4.6+): a client whose connection dropped for a moment
//! gets back its socket id, rooms and data, and the packets it missed.
//!
//! With [`SocketIoBuilder::connection_state_recovery`](crate::SocketIoBuilder::connection_state_recovery):
//!
//! - the CONNECT reply carries a private session id, `pid`, next to `sid`;
//! - every broadcast EVENT without acknowledgement that is not volatile (and every
//!   [`Socket::emit`](crate::Socket::emit), which then goes through the adapter) gets an offset
//!   appended as its last argument, and is kept for [`RecoveryConfig::max_disconnection_duration`];
//! - a socket that leaves for a recoverable reason (transport close or error, ping timeout,
//!   forced close, server shutdown) is persisted (id, pid, rooms, data);
//! - a CONNECT whose auth carries that `pid` and the last `offset` the client saw, within the
//!   window, restores the socket ([`Socket::recovered`](crate::Socket::recovered) is true): the
//!   missed packets are sent before the CONNECT reply, and the middlewares are skipped unless
//!   [`RecoveryConfig::skip_middlewares`] is false.
//!
//! The [`InMemoryAdapter`](crate::InMemoryAdapter) keeps sessions and packets in this process
//! ([`SessionStore`]); a multi-server adapter may keep them elsewhere (Redis streams) so that a
//! client recovers on another server.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::adapter::BroadcastOptions;

/// Connection state recovery settings (Node's `connectionStateRecovery`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryConfig {
    /// How long a session and the packets it may miss are kept (2 minutes).
    pub max_disconnection_duration: Duration,
    /// Whether a recovered socket skips the connect middlewares (true).
    pub skip_middlewares: bool,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            max_disconnection_duration: Duration::from_secs(120),
            skip_middlewares: true,
        }
    }
}

/// What is persisted of a socket that left for a recoverable reason.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionToPersist {
    /// The socket id.
    pub sid: String,
    /// The private session id.
    pub pid: String,
    /// Its rooms (including its own id).
    pub rooms: Vec<String>,
    /// Its shared data ([`Socket::data_json`](crate::Socket::data_json)).
    pub data: Value,
}

/// One packet a client missed: the EVENT's data (`[name, ...args, offset]`) and attachments.
#[derive(Clone, Debug, PartialEq)]
pub struct MissedPacket {
    /// `[name, ...args, offset]`, with placeholders for the attachments.
    pub data: Vec<Value>,
    /// The binary attachments.
    pub attachments: Vec<Bytes>,
}

/// A restored session.
#[derive(Clone, Debug, PartialEq)]
pub struct Session {
    /// What was persisted.
    pub session: SessionToPersist,
    /// The packets sent to its rooms after the client's offset, in order.
    pub missed: Vec<MissedPacket>,
}

/// Whether a socket in `rooms` was targeted by a broadcast with `opts` (Node's
/// `shouldIncludePacket`).
pub fn should_include(rooms: &[String], opts: &BroadcastOptions) -> bool {
    let included = opts.rooms.is_empty() || rooms.iter().any(|r| opts.rooms.contains(r));
    included && rooms.iter().all(|r| !opts.except.contains(r))
}

struct Stored {
    offset: String,
    at: Instant,
    packet: MissedPacket,
    opts: BroadcastOptions,
}

/// Sessions and recent packets in memory (Node's `SessionAwareAdapter`): what the
/// [`InMemoryAdapter`](crate::InMemoryAdapter) uses when recovery is on. Expired entries are
/// dropped as new ones come, so memory is bounded by what is sent within the window.
pub struct SessionStore {
    config: RecoveryConfig,
    sessions: HashMap<String, (SessionToPersist, Instant)>,
    packets: VecDeque<Stored>,
    /// offset -> sequence number of the packet (index = seq - first_seq).
    index: HashMap<String, u64>,
    first_seq: u64,
    /// When expired sessions were last looked for.
    sessions_pruned: Instant,
    /// Restored sockets not yet connected: what was broadcast to them meanwhile.
    holding: HashMap<String, Vec<MissedPacket>>,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore")
            .field("sessions", &self.sessions.len())
            .field("packets", &self.packets.len())
            .finish()
    }
}

static OFFSETS: AtomicU64 = AtomicU64::new(0);

/// A fresh offset: unique in this process and across restarts (time-based prefix, as Node's
/// `yeast`).
pub fn new_offset() -> String {
    use std::fmt::Write;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = OFFSETS.fetch_add(1, Ordering::Relaxed);
    let mut s = String::with_capacity(16);
    let _ = write!(s, "{ms:x}.{n:x}");
    s
}

impl SessionStore {
    /// An empty store.
    pub fn new(config: RecoveryConfig) -> Self {
        SessionStore {
            config,
            sessions: HashMap::new(),
            packets: VecDeque::new(),
            index: HashMap::new(),
            first_seq: 0,
            sessions_pruned: Instant::now(),
            holding: HashMap::new(),
        }
    }

    /// Holds back what is broadcast to socket `sid` until [`stop_holding`](Self::stop_holding).
    pub fn start_holding(&mut self, sid: &str) {
        self.holding.insert(sid.to_owned(), Vec::new());
    }

    /// Whether socket `sid` is held back; if so, `packet` (when recoverable) is kept for it.
    pub fn hold(&mut self, sid: &str, packet: Option<&MissedPacket>) -> bool {
        match self.holding.get_mut(sid) {
            Some(held) => {
                if let Some(p) = packet {
                    // Bounded like the store: a socket that never connects is dropped on
                    // expiry of its window (see `prune`).
                    held.push(p.clone());
                }
                true
            }
            None => false,
        }
    }

    /// Stops holding socket `sid` back and returns what was held, in order.
    pub fn stop_holding(&mut self, sid: &str) -> Vec<MissedPacket> {
        self.holding.remove(sid).unwrap_or_default()
    }

    fn prune(&mut self, now: Instant) {
        let max = self.config.max_disconnection_duration;
        while self
            .packets
            .front()
            .is_some_and(|p| now.duration_since(p.at) > max)
        {
            if let Some(p) = self.packets.pop_front() {
                self.index.remove(&p.offset);
                self.first_seq += 1;
            }
        }
        // Sessions never restored expire too: looked for at most once a second (a scan).
        if now.duration_since(self.sessions_pruned) >= Duration::from_secs(1) {
            self.sessions_pruned = now;
            self.sessions
                .retain(|_, (_, at)| now.duration_since(*at) <= max);
        }
    }

    /// Keeps a broadcast packet (its data already ends with `offset`).
    pub fn store(&mut self, offset: String, packet: MissedPacket, opts: &BroadcastOptions) {
        let now = Instant::now();
        self.prune(now);
        let seq = self.first_seq + self.packets.len() as u64;
        self.index.insert(offset.clone(), seq);
        self.packets.push_back(Stored {
            offset,
            at: now,
            packet,
            opts: opts.clone(),
        });
    }

    /// Persists a session.
    pub fn persist(&mut self, session: SessionToPersist) {
        let now = Instant::now();
        self.prune(now);
        self.sessions.insert(session.pid.clone(), (session, now));
    }

    /// The session `pid` with the packets after `offset`, unless it expired or the offset is
    /// unknown (too old). A session is restored once.
    pub fn restore(&mut self, pid: &str, offset: &str) -> Option<Session> {
        let now = Instant::now();
        self.prune(now);
        let (session, at) = self.sessions.remove(pid)?;
        if now.duration_since(at) > self.config.max_disconnection_duration {
            return None;
        }
        let seq = *self.index.get(offset)?;
        let start = usize::try_from(seq - self.first_seq + 1).ok()?;
        let missed = self
            .packets
            .iter()
            .skip(start)
            .filter(|p| should_include(&session.rooms, &p.opts))
            .map(|p| p.packet.clone())
            .collect();
        Some(Session { session, missed })
    }

    /// How many packets are kept.
    pub fn packets(&self) -> usize {
        self.packets.len()
    }
}

/// The disconnect reasons after which a session is persisted.
pub(crate) fn recoverable(reason: crate::DisconnectReason) -> bool {
    use crate::DisconnectReason as R;
    matches!(
        reason,
        R::TransportError
            | R::TransportClose
            | R::ForcedClose
            | R::PingTimeout
            | R::ServerShuttingDown
            | R::ForcedServerClose
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn opts(rooms: &[&str], except: &[&str]) -> BroadcastOptions {
        BroadcastOptions {
            rooms: rooms.iter().map(|s| (*s).to_owned()).collect(),
            except: except.iter().map(|s| (*s).to_owned()).collect(),
            ..BroadcastOptions::default()
        }
    }

    fn packet(i: u64, offset: &str) -> MissedPacket {
        MissedPacket {
            data: vec![json!("e"), json!(i), json!(offset)],
            attachments: Vec::new(),
        }
    }

    #[test]
    fn restores_what_the_rooms_missed_after_the_offset() {
        let mut store = SessionStore::new(RecoveryConfig::default());
        let offsets: Vec<String> = (0..6).map(|_| new_offset()).collect();
        let targets = [
            opts(&[], &[]),
            opts(&["r"], &[]),
            opts(&["other"], &[]),
            opts(&[], &["r"]),
            opts(&["r", "x"], &[]),
            opts(&["sid"], &[]),
        ];
        for (i, (o, t)) in offsets.iter().zip(&targets).enumerate() {
            store.store(o.clone(), packet(i as u64, o), t);
        }
        let session = SessionToPersist {
            sid: "sid".into(),
            pid: "pid".into(),
            rooms: vec!["sid".into(), "r".into()],
            data: json!({"k": 1}),
        };
        store.persist(session.clone());
        assert!(store.restore("pid", "unknown").is_none(), "unknown offset");
        store.persist(session.clone());
        let s = store.restore("pid", &offsets[0]).unwrap();
        assert_eq!(s.session, session);
        let got: Vec<u64> = s
            .missed
            .iter()
            .map(|p| p.data[1].as_u64().unwrap())
            .collect();
        assert_eq!(got, [1, 4, 5]);
        assert!(store.restore("pid", &offsets[0]).is_none(), "restored once");
    }

    #[test]
    fn expires() {
        let mut store = SessionStore::new(RecoveryConfig {
            max_disconnection_duration: Duration::from_millis(30),
            skip_middlewares: true,
        });
        let o = new_offset();
        store.store(o.clone(), packet(0, &o), &opts(&[], &[]));
        store.persist(SessionToPersist {
            sid: "s".into(),
            pid: "p".into(),
            rooms: vec![],
            data: Value::Null,
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(store.restore("p", &o).is_none());
        let o2 = new_offset();
        store.store(o2.clone(), packet(1, &o2), &opts(&[], &[]));
        assert_eq!(store.packets(), 1, "expired packets dropped");
    }
}
