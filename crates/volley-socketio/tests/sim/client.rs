//! A Socket.IO client for network simulations over turmoil: Engine.IO v4 long-polling
//! (`Connection: close` requests), Socket.IO v5, with connection state recovery as
//! `socket.io-client` 4.6+ does it: after every failure (a request that fails or times out, a
//! session the server closed) it waits a random time and opens a new session — on one of
//! `servers`, at random, as behind a load balancer — whose CONNECT carries the `pid` of its
//! socket and the last `offset` it saw. The CONNECT reply says whether the socket was recovered
//! (the same socket id) or is a fresh one.
//!
//! It records every event `["tick", n, offset]` it receives with the session it came in, and
//! whether each session was recovered; [`check`] then holds it to Node's semantics.
#![allow(dead_code)]

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the client received.
#[derive(Default, Debug)]
pub(crate) struct Record {
    /// Events received: (sequence number, session it arrived in).
    pub(crate) received: Mutex<Vec<(u32, usize)>>,
    /// Per Engine.IO session: `Some(recovered)` once its CONNECT was answered.
    pub(crate) sessions: Mutex<Vec<Option<bool>>>,
    /// Per Engine.IO session: the server it was opened on.
    pub(crate) servers: Mutex<Vec<String>>,
}

impl Record {
    /// The last sequence number received.
    pub(crate) fn last(&self) -> Option<u32> {
        lock(&self.received).last().map(|r| r.0)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn trace(what: std::fmt::Arguments<'_>) {
    if std::env::var_os("NETSIM_TRACE").is_some() {
        let now = turmoil::sim_elapsed().unwrap_or_default().as_secs_f64();
        eprintln!("[{now:>9.3}] client: {what}");
    }
}

/// Why a session ended.
#[derive(Debug)]
struct Failed(#[allow(dead_code)] String);

/// One HTTP/1.1 request (`Connection: close`) to `host` within `limit`: the status and body.
async fn http(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    body: Option<&str>,
    limit: Duration,
) -> Result<(u16, String), Failed> {
    let exchange = async {
        let mut stream = turmoil::net::TcpStream::connect((host, port)).await?;
        let mut request =
            format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
        if let Some(body) = body {
            request.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        request.push_str("\r\n");
        request.push_str(body.unwrap_or(""));
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(limit, exchange).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(Failed(format!("{method} {host}: {e}"))),
        Err(_) => {
            return Err(Failed(format!(
                "{method} {host}: no answer within {limit:?}"
            )));
        }
    };
    let raw = String::from_utf8(raw).map_err(|_| Failed("not UTF-8".into()))?;
    let (head, body) = (raw.split_once("\r\n\r\n")).ok_or(Failed("no end of headers".into()))?;
    let status: u16 = (head.split(' ').nth(1).and_then(|s| s.parse().ok()))
        .ok_or(Failed(format!("bad status line in {head:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// What the client keeps across sessions: its socket (id, pid), and the last offset it saw.
#[derive(Default)]
struct State {
    socket: Option<(String, String)>,
    offset: Option<String>,
}

/// How long the server waits between pings, and for a pong: a long-poll lasts at most the
/// first, a request more than both is dead.
#[derive(Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) ping_interval: Duration,
    pub(crate) ping_timeout: Duration,
}

/// Runs the client until the simulation ends.
pub(crate) async fn run(
    record: Arc<Record>,
    servers: &'static [&'static str],
    port: u16,
    timing: Timing,
    seed: u64,
) -> turmoil::Result {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut state = State::default();
    loop {
        let server = servers[rng.random_range(0..servers.len())];
        let ended = session(&record, &mut state, server, port, timing).await;
        trace(format_args!("session on {server} ended: {ended:?}"));
        // Reconnect after a random delay, as socket.io-client does (1-5 s by default; shorter
        // here).
        tokio::time::sleep(ms(rng.random_range(100..1000))).await;
    }
}

async fn session(
    record: &Record,
    state: &mut State,
    host: &str,
    port: u16,
    timing: Timing,
) -> Failed {
    let base = "/socket.io/?EIO=4&transport=polling";
    let request = |method, path: String, body: Option<String>, limit| async move {
        http(host, port, method, &path, body.as_deref(), limit).await
    };
    let result = async {
        let (status, body) = request("GET", base.to_owned(), None, ms(3000)).await?;
        let open: Value = (body
            .strip_prefix('0')
            .and_then(|j| serde_json::from_str(j).ok()))
        .ok_or(Failed(format!("open: {status} {body:?}")))?;
        let eio = open["sid"].as_str().expect("an Engine.IO sid").to_owned();
        let index = {
            let mut sessions = lock(&record.sessions);
            sessions.push(None);
            lock(&record.servers).push(host.to_owned());
            sessions.len() - 1
        };
        let path = format!("{base}&sid={eio}");
        let post = |body: String| {
            let path = path.clone();
            async move {
                let (status, answer) = request("POST", path, Some(body), ms(3000)).await?;
                if status != 200 {
                    return Err(Failed(format!("post: {status} {answer:?}")));
                }
                Ok(())
            }
        };
        let connect = match (&state.socket, &state.offset) {
            (Some((_, pid)), Some(offset)) => {
                format!("40{}", json!({"pid": pid, "offset": offset}))
            }
            _ => "40".to_owned(),
        };
        post(connect).await?;
        let poll_limit = timing.ping_interval + timing.ping_timeout + ms(1000);
        loop {
            let (status, body) = request("GET", path.clone(), None, poll_limit).await?;
            if status != 200 {
                return Err(Failed(format!("poll: {status} {body:?}")));
            }
            for packet in body.split('\x1e') {
                match packet.as_bytes().first() {
                    Some(b'2') => post("3".to_owned()).await?,
                    Some(b'1') => return Err(Failed("the server closed the session".into())),
                    Some(b'4') => receive(record, state, index, &packet[1..])?,
                    _ => return Err(Failed(format!("unexpected packet {packet:?}"))),
                }
            }
        }
    };
    match result.await {
        Ok(()) => Failed("closed".into()),
        Err(e) => e,
    }
}

/// One Socket.IO packet of session `index`.
fn receive(record: &Record, state: &mut State, index: usize, packet: &str) -> Result<(), Failed> {
    if let Some(reply) = packet.strip_prefix("0{") {
        let reply: Value = serde_json::from_str(&format!("{{{reply}")).expect("a CONNECT reply");
        let sid = reply["sid"].as_str().expect("a sid").to_owned();
        let pid = reply["pid"]
            .as_str()
            .expect("a pid (recovery is on)")
            .to_owned();
        let recovered = state.socket.as_ref().is_some_and(|(old, _)| *old == sid);
        trace(format_args!("connected: sid {sid}, recovered {recovered}"));
        lock(&record.sessions)[index] = Some(recovered);
        if !recovered {
            // A fresh socket: what the old one missed is gone, and so is its offset.
            state.offset = None;
        }
        state.socket = Some((sid, pid));
        return Ok(());
    }
    if let Some(event) = packet.strip_prefix('2') {
        let event: Vec<Value> = serde_json::from_str(event).expect("an EVENT");
        let seq = event
            .get(1)
            .and_then(Value::as_u64)
            .expect("a sequence number") as u32;
        let offset = event.last().and_then(Value::as_str).expect("an offset");
        state.offset = Some(offset.to_owned());
        lock(&record.received).push((seq, index));
        return Ok(());
    }
    if packet.starts_with('4') || packet.starts_with('1') {
        return Err(Failed(format!("refused or disconnected: {packet:?}")));
    }
    Err(Failed(format!("unexpected Socket.IO packet {packet:?}")))
}

/// What a run of the client came to.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) recovered: usize,
    /// Sessions recovered on another server than the one before.
    pub(crate) recovered_elsewhere: usize,
    pub(crate) fresh: usize,
    pub(crate) missed: usize,
}

/// Node's semantics: events never repeat nor go back, and a missing event is always followed
/// by a fresh session — never lost within recovered ones. `broadcast` says which sequence
/// numbers were really broadcast (a broadcast can fail before it is numbered); only those
/// count as missed.
pub(crate) fn check(record: &Record, broadcast: impl Fn(u32) -> bool) -> Result<Tally, String> {
    let received = lock(&record.received);
    let sessions = lock(&record.sessions);
    let mut tally = Tally::default();
    for window in received.windows(2) {
        let ((a, sa), (b, sb)) = (window[0], window[1]);
        if b <= a {
            return Err(format!("event {b} after {a}: repeated or out of order"));
        }
        let missed: Vec<u32> = (a + 1..b).filter(|s| broadcast(*s)).collect();
        if !missed.is_empty() {
            tally.missed += missed.len();
            // Missed: some session since must have been a fresh one.
            let fresh = sb > sa && sessions[sa + 1..=sb].contains(&Some(false));
            if !fresh {
                return Err(format!(
                    "events {missed:?} missed within recovered sessions (sessions {sa}..={sb}: \
                     {:?})",
                    &sessions[sa..=sb]
                ));
            }
        }
    }
    tally.recovered = sessions.iter().filter(|s| **s == Some(true)).count();
    let servers = lock(&record.servers);
    tally.recovered_elsewhere = (1..sessions.len())
        .filter(|i| sessions[*i] == Some(true) && servers[*i] != servers[i - 1])
        .count();
    // The first session is fresh by definition.
    tally.fresh = (sessions.iter().filter(|s| **s == Some(false)).count()).saturating_sub(1);
    Ok(tally)
}
