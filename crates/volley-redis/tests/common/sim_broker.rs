//! A minimal Redis (RESP3) for network simulations over turmoil: what Volley's supervised
//! connection and the Socket.IO Redis adapters use, no more. Pub/sub (`SUBSCRIBE`,
//! `UNSUBSCRIBE`, `PUBLISH`, `PUBSUB NUMSUB`), keys (`SET … PX`, `GET`, `DEL`, `MULTI`/`EXEC`),
//! streams (`XADD … MAXLEN ~ n *`, `XREAD [BLOCK] [COUNT] STREAMS`, `XRANGE`), and the
//! connection setup (`HELLO`, `CLIENT`, `PING`). Like Redis, one connection runs one command at
//! a time: a blocking `XREAD` holds its connection. State lives as long as the broker's host: a
//! restart forgets everything.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

/// The fields of every entry appended to any stream, in order.
pub(crate) type Log = Arc<Mutex<Vec<Vec<Vec<u8>>>>>;

/// A connection's outgoing queue.
type Outgoing = mpsc::UnboundedSender<Vec<u8>>;

/// A stream id.
type Id = (u64, u64);

#[derive(Default)]
struct State {
    next_conn: u64,
    /// Subscribers of each channel: connection id and its outgoing queue.
    subscribers: HashMap<String, Vec<(u64, Outgoing)>>,
    keys: HashMap<String, (Vec<u8>, Option<Instant>)>,
    streams: HashMap<String, Stream>,
}

#[derive(Default)]
struct Stream {
    last: Id,
    entries: VecDeque<(Id, Vec<Vec<u8>>)>,
}

/// The broker's shared state; one per start of its host.
#[derive(Clone, Default)]
pub(crate) struct Broker {
    state: Arc<Mutex<State>>,
    /// Every entry appended to a stream (its fields), for the tests' oracles.
    log: Log,
    /// Woken by every `XADD` (blocked `XREAD`s look again).
    appended: Arc<Notify>,
    started: Arc<Mutex<Option<Instant>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Serves a broker on `port` (call it from a turmoil host).
pub(crate) async fn serve(port: u16) -> turmoil::Result {
    serve_logged(port, Log::default()).await
}

/// [`serve`], appending the fields of every stream entry to `log`.
pub(crate) async fn serve_logged(port: u16, log: Log) -> turmoil::Result {
    let broker = Broker {
        log,
        ..Broker::default()
    };
    *lock(&broker.started) = Some(Instant::now());
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(broker.clone().connection(stream));
    }
}

fn bulk(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\r\n");
}

fn push3(kind: &str, channel: &str, last: Result<&[u8], i64>) -> Vec<u8> {
    let mut out = b">3\r\n".to_vec();
    bulk(&mut out, kind.as_bytes());
    bulk(&mut out, channel.as_bytes());
    match last {
        Ok(payload) => bulk(&mut out, payload),
        Err(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
    }
    out
}

const NULL: &[u8] = b"_\r\n";
const OK: &[u8] = b"+OK\r\n";

/// Parses one command (an array of bulk strings) from the front of `buf`.
fn parse(buf: &mut Vec<u8>) -> Option<Vec<Vec<u8>>> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf.get(at..)?.windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    assert_eq!(head.first(), Some(&b'*'), "the broker takes arrays only");
    let n: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
    let mut args = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(&len[1..]).ok()?.parse().ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        args.push(buf[next..next + len].to_vec());
        at = next + len + 2;
    }
    buf.drain(..at);
    Some(args)
}

fn parse_id(s: &str, default_seq: u64) -> Option<Id> {
    match s.split_once('-') {
        Some((ms, seq)) => Some((ms.parse().ok()?, seq.parse().ok()?)),
        None => Some((s.parse().ok()?, default_seq)),
    }
}

fn entries_reply(out: &mut Vec<u8>, entries: &[(Id, Vec<Vec<u8>>)]) {
    out.extend_from_slice(format!("*{}\r\n", entries.len()).as_bytes());
    for ((ms, seq), fields) in entries {
        out.extend_from_slice(b"*2\r\n");
        bulk(out, format!("{ms}-{seq}").as_bytes());
        out.extend_from_slice(format!("*{}\r\n", fields.len()).as_bytes());
        for f in fields {
            bulk(out, f);
        }
    }
}

/// Per-connection state.
struct Conn {
    id: u64,
    tx: Outgoing,
    subscribed: Vec<String>,
    multi: Option<Vec<Vec<Vec<u8>>>>,
}

impl Broker {
    async fn connection(self, stream: turmoil::net::TcpStream) {
        let id = {
            let mut s = lock(&self.state);
            s.next_conn += 1;
            s.next_conn
        };
        let (mut rd, mut wr) = stream.into_split();
        let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(async move {
            while let Some(bytes) = rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        });
        let mut conn = Conn {
            id,
            tx,
            subscribed: Vec::new(),
            multi: None,
        };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        'read: loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            while let Some(args) = parse(&mut buf) {
                let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
                let reply = match (name.as_str(), &mut conn.multi) {
                    ("EXEC", Some(_)) => {
                        let queued = conn.multi.take().unwrap_or_default();
                        let mut out = format!("*{}\r\n", queued.len()).into_bytes();
                        for cmd in queued {
                            out.extend(self.execute(&mut conn, cmd).await);
                        }
                        out
                    }
                    (_, Some(queued)) => {
                        queued.push(args);
                        b"+QUEUED\r\n".to_vec()
                    }
                    ("MULTI", None) => {
                        conn.multi = Some(Vec::new());
                        OK.to_vec()
                    }
                    _ => self.execute(&mut conn, args).await,
                };
                if conn.tx.send(reply).is_err() {
                    break 'read;
                }
            }
        }
        let mut s = lock(&self.state);
        for channel in conn.subscribed {
            if let Some(subs) = s.subscribers.get_mut(&channel) {
                subs.retain(|(c, _)| *c != id);
            }
        }
        drop(s);
        writer.abort();
    }

    /// The broker's clock, in milliseconds since it started (stream ids).
    fn now_ms(&self) -> u64 {
        let started = lock(&self.started).unwrap_or_else(Instant::now);
        started.elapsed().as_millis() as u64 + 1
    }

    async fn execute(&self, conn: &mut Conn, args: Vec<Vec<u8>>) -> Vec<u8> {
        let name = String::from_utf8_lossy(&args[0]).to_ascii_uppercase();
        let arg =
            |i: usize| String::from_utf8_lossy(args.get(i).map_or(&[][..], |a| a)).into_owned();
        match name.as_str() {
            "HELLO" => {
                let mut out = b"%3\r\n".to_vec();
                for (k, v) in [
                    ("server", "sim"),
                    ("version", "7.2.0"),
                    ("mode", "standalone"),
                ] {
                    bulk(&mut out, k.as_bytes());
                    bulk(&mut out, v.as_bytes());
                }
                out
            }
            "CLIENT" => OK.to_vec(),
            "PING" => b"+PONG\r\n".to_vec(),
            "SUBSCRIBE" => {
                let mut out = Vec::new();
                for i in 1..args.len() {
                    let channel = arg(i);
                    if !conn.subscribed.contains(&channel) {
                        let mut s = lock(&self.state);
                        let subs = s.subscribers.entry(channel.clone()).or_default();
                        subs.push((conn.id, conn.tx.clone()));
                        conn.subscribed.push(channel.clone());
                    }
                    let n = conn.subscribed.len() as i64;
                    out.extend(push3("subscribe", &channel, Err(n)));
                }
                out
            }
            "UNSUBSCRIBE" => {
                let mut out = Vec::new();
                for i in 1..args.len() {
                    let channel = arg(i);
                    conn.subscribed.retain(|c| *c != channel);
                    if let Some(subs) = lock(&self.state).subscribers.get_mut(&channel) {
                        subs.retain(|(c, _)| *c != conn.id);
                    }
                    let n = conn.subscribed.len() as i64;
                    out.extend(push3("unsubscribe", &channel, Err(n)));
                }
                out
            }
            "PUBLISH" => {
                let channel = arg(1);
                let message = push3("message", &channel, Ok(&args[2]));
                let s = lock(&self.state);
                let subs = s.subscribers.get(&channel).map_or(&[][..], |s| &s[..]);
                for (_, sub) in subs {
                    let _ = sub.send(message.clone());
                }
                format!(":{}\r\n", subs.len()).into_bytes()
            }
            "PUBSUB" if arg(1).eq_ignore_ascii_case("NUMSUB") => {
                let s = lock(&self.state);
                let mut out = format!("*{}\r\n", (args.len() - 2) * 2).into_bytes();
                for i in 2..args.len() {
                    let channel = arg(i);
                    bulk(&mut out, channel.as_bytes());
                    let n = s.subscribers.get(&channel).map_or(0, Vec::len);
                    out.extend_from_slice(format!(":{n}\r\n").as_bytes());
                }
                out
            }
            "SET" => {
                let expires = (args.len() >= 5 && arg(3).eq_ignore_ascii_case("PX"))
                    .then(|| arg(4).parse().ok())
                    .flatten()
                    .map(|ms| Instant::now() + Duration::from_millis(ms));
                lock(&self.state)
                    .keys
                    .insert(arg(1), (args[2].clone(), expires));
                OK.to_vec()
            }
            "GET" => {
                let mut s = lock(&self.state);
                let key = arg(1);
                if s.keys
                    .get(&key)
                    .is_some_and(|(_, e)| e.is_some_and(|e| e <= Instant::now()))
                {
                    s.keys.remove(&key);
                }
                match s.keys.get(&key) {
                    Some((value, _)) => {
                        let mut out = Vec::new();
                        bulk(&mut out, value);
                        out
                    }
                    None => NULL.to_vec(),
                }
            }
            "DEL" => {
                let mut s = lock(&self.state);
                let n = (1..args.len())
                    .filter(|i| s.keys.remove(&arg(*i)).is_some())
                    .count();
                format!(":{n}\r\n").into_bytes()
            }
            "XADD" => {
                // XADD key MAXLEN ~ n * field value …
                let key = arg(1);
                let max_len: usize = arg(4).parse().unwrap_or(usize::MAX);
                let now = self.now_ms();
                let mut s = lock(&self.state);
                let stream = s.streams.entry(key).or_default();
                let id = if now > stream.last.0 {
                    (now, 0)
                } else {
                    (stream.last.0, stream.last.1 + 1)
                };
                stream.last = id;
                stream.entries.push_back((id, args[6..].to_vec()));
                lock(&self.log).push(args[6..].to_vec());
                while stream.entries.len() > max_len {
                    stream.entries.pop_front();
                }
                drop(s);
                self.appended.notify_waiters();
                let mut out = Vec::new();
                bulk(&mut out, format!("{}-{}", id.0, id.1).as_bytes());
                out
            }
            "XRANGE" => {
                let (key, start, end) = (arg(1), arg(2), arg(3));
                let count: usize = (args.len() >= 6)
                    .then(|| arg(5).parse().ok())
                    .flatten()
                    .unwrap_or(usize::MAX);
                let start = if start == "-" {
                    (0, 0)
                } else {
                    parse_id(&start, 0).unwrap_or((u64::MAX, 0))
                };
                let end = if end == "+" {
                    (u64::MAX, u64::MAX)
                } else {
                    parse_id(&end, u64::MAX).unwrap_or((0, 0))
                };
                let s = lock(&self.state);
                let entries: Vec<_> = (s.streams.get(&key).into_iter())
                    .flat_map(|st| st.entries.iter())
                    .filter(|(id, _)| *id >= start && *id <= end)
                    .take(count)
                    .cloned()
                    .collect();
                let mut out = Vec::new();
                entries_reply(&mut out, &entries);
                out
            }
            "XREAD" => self.xread(&args).await,
            other => format!("-ERR unknown command '{other}'\r\n").into_bytes(),
        }
    }

    /// `XREAD [BLOCK ms] [COUNT n] STREAMS key id` (one stream).
    async fn xread(&self, args: &[Vec<u8>]) -> Vec<u8> {
        let arg =
            |i: usize| String::from_utf8_lossy(args.get(i).map_or(&[][..], |a| a)).into_owned();
        let (mut block, mut count, mut i) = (None, usize::MAX, 1);
        while i < args.len() {
            match arg(i).to_ascii_uppercase().as_str() {
                "BLOCK" => {
                    block = arg(i + 1).parse::<u64>().ok();
                    i += 2;
                }
                "COUNT" => {
                    count = arg(i + 1).parse().unwrap_or(usize::MAX);
                    i += 2;
                }
                "STREAMS" => break,
                _ => i += 1,
            }
        }
        let (key, after) = (arg(i + 1), arg(i + 2));
        let after = if after == "$" {
            let s = lock(&self.state);
            s.streams.get(&key).map_or((0, 0), |st| st.last)
        } else {
            parse_id(&after, 0).unwrap_or((0, 0))
        };
        let deadline = block.map(|ms| (ms > 0).then(|| Instant::now() + Duration::from_millis(ms)));
        loop {
            let appended = self.appended.notified();
            let entries: Vec<_> = {
                let s = lock(&self.state);
                (s.streams.get(&key).into_iter())
                    .flat_map(|st| st.entries.iter())
                    .filter(|(id, _)| *id > after)
                    .take(count)
                    .cloned()
                    .collect()
            };
            if !entries.is_empty() {
                let mut out = b"%1\r\n".to_vec();
                bulk(&mut out, key.as_bytes());
                entries_reply(&mut out, &entries);
                return out;
            }
            match deadline {
                None => return NULL.to_vec(),
                Some(None) => appended.await,
                Some(Some(at)) => {
                    if tokio::time::timeout_at(at, appended).await.is_err() {
                        return NULL.to_vec();
                    }
                }
            }
        }
    }
}
