//! Cancellation safety, fuzzed: every public async operation of a task's connection is polled by
//! hand exactly K times and then dropped, for K = 0, 1, 2, … up to the poll at which it completes,
//! and the connection is checked afterwards.
//!
//! Progress is deterministic: the transport is an in-memory duplex with a small buffer under a
//! [`Chaos`] wrapper that returns `Pending` (every other read, write and flush, and more drawn
//! from a seed), short reads and short writes, and the peer (a `volley_proto` connection, over
//! TLS or not) moves a seeded number of bytes between two polls. So run K of an operation replays
//! run K - 1 and goes one poll further (up to the order in which `tokio::select!` polls branches
//! that are ready together): every await point it has is hit. The clock is paused (timers fire
//! only when the test moves time), and polls run outside tokio's cooperative budget.
//!
//! After each cancellation the connection is driven to the end and checked: the peer saw a valid
//! frame stream (its protocol core fails on any torn frame, and every message carries its number,
//! length and a pattern checked byte by byte); every message reported sent arrived exactly once and
//! in order, and one whose future was dropped arrived at most once, whole; every message the peer
//! sent arrived exactly once and in order; every ping was answered once; a final exchange works;
//! the close handshake completes and the transport is closed. Where an operation is documented as
//! not cancel-safe (`WebSocket::close`, the reconnecting client's `send`), the documented outcome
//! is what is checked.
//!
//! Also here: random interleavings of both halves' operations with time moving, the
//! reconnecting client's `send`, `next` and `close`, `ConnHandle` sends from cancelled tasks, and
//! regression tests for what the harness found. docs/CONFORMANCE.md sums it up.
//!
//! `CANCEL_SEEDS=N` runs N seeds per test instead of the default few.

mod common;

use std::cell::RefCell;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use volley::proto::{Connection, ProtocolConfig};
use volley::reconnect::{Event, Reconnect, ReconnectingClient};
use volley::{
    CloseCode, CloseFrame, Config, DeflateConfig, DeflateParams, Message, PreparedMessage, Role,
    State, WebSocket,
};

/// Seeds a test iterates over: `CANCEL_SEEDS` of them, or `default`.
fn seeds(default: u64) -> std::ops::Range<u64> {
    let n = std::env::var("CANCEL_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    0..n
}

/// The most polls any operation may need: beyond, it is stuck.
const MAX_POLLS: usize = 20_000;

// ---------------------------------------------------------------------------------------------
// Randomness and numbered messages
// ---------------------------------------------------------------------------------------------

/// splitmix64: small, deterministic, good enough to draw schedules from.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, stream: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() - 1)]
    }
}

/// `#0000000042/0000300:`: a numbered message's id and length.
const HEADER: usize = 20;

/// Bodies are windows of this, at an offset that depends on the message: runs of a pattern
/// (compressible) and of noise (not), so that deflate has work of both kinds.
const TABLE_LEN: usize = 4093;

fn table() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut rng = Rng::new(0, 0);
        (0..TABLE_LEN)
            .map(|i| match (i / 64) % 2 {
                0 => b'a' + (i % 26) as u8,
                _ => b'a' + (rng.next() % 26) as u8,
            })
            .collect()
    })
}

/// Calls `f` with the pieces of message `id`'s body from byte `from` to byte `to`, in order.
fn body_pieces(id: u64, from: usize, to: usize, mut f: impl FnMut(&[u8])) {
    let table = table();
    let mut at = (id as usize).wrapping_mul(131).wrapping_add(from) % TABLE_LEN;
    let mut left = to - from;
    while left > 0 {
        let n = left.min(TABLE_LEN - at);
        f(&table[at..at + n]);
        left -= n;
        at = 0;
    }
}

/// Message `id`, `len` bytes long (at least the header): text for even ids, binary for odd ones.
fn numbered(id: u64, len: usize) -> Message {
    let len = len.max(HEADER);
    let mut v = format!("#{id:010}/{len:07}:").into_bytes();
    body_pieces(id, HEADER, len, |piece| v.extend_from_slice(piece));
    if id.is_multiple_of(2) {
        Message::text(String::from_utf8(v).expect("ASCII"))
    } else {
        Message::binary(v)
    }
}

fn prepared(message: &Message) -> PreparedMessage {
    match message {
        Message::Text(t) => PreparedMessage::text(t.clone()),
        other => PreparedMessage::binary(other.payload()),
    }
}

/// The id of a numbered message, after checking every byte of it: a torn, spliced or corrupted
/// message fails here.
#[track_caller]
fn check_numbered(m: &Message) -> u64 {
    let p = m.payload();
    let head = p
        .get(..HEADER)
        .and_then(|h| std::str::from_utf8(h).ok())
        .unwrap_or_else(|| panic!("not a numbered message: {m:?}"));
    let parse = |s: &str| s.parse::<u64>().ok();
    let (id, len) = match (
        head.get(1..11).and_then(parse),
        head.get(12..19).and_then(parse),
    ) {
        (Some(id), Some(len)) if head.starts_with('#') => (id, len as usize),
        _ => panic!("bad header {head:?}"),
    };
    assert_eq!(
        p.len(),
        len,
        "message {id} torn: {} of {len} bytes",
        p.len()
    );
    let mut at = HEADER;
    let mut whole = true;
    body_pieces(id, HEADER, len, |piece| {
        whole &= p[at..at + piece.len()] == *piece;
        at += piece.len();
    });
    assert!(whole, "message {id} corrupted");
    assert_eq!(
        matches!(m, Message::Text(_)),
        id % 2 == 0,
        "message {id} of the wrong kind"
    );
    id
}

/// A message in a failure report: a number, a ping, …
fn describe(m: &Message) -> String {
    match m {
        Message::Text(_) | Message::Binary(_) => format!("#{}", check_numbered(m)),
        Message::Ping(p) => format!("ping {}", String::from_utf8_lossy(p)),
        Message::Pong(p) => format!("pong {}", String::from_utf8_lossy(p)),
        Message::Close(f) => format!("close {f:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Transports
// ---------------------------------------------------------------------------------------------

/// What the connection under test and its peer run over.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxIo = Box<dyn Io>;

/// A transport that returns `Pending` (waking at once), short reads and short writes on a
/// schedule drawn from a seed. Once `calm` is set it passes everything through.
struct Chaos<T> {
    inner: T,
    rng: Rng,
    /// Percent of calls that return `Pending`.
    pending: u64,
    /// The most bytes one read or write moves.
    chunk: usize,
    /// Every other read, write and flush returns `Pending` (besides those drawn): each one is
    /// then a point where the caller waits, so dropping after every poll count drops there.
    stutter: bool,
    /// Whether the last read, write and flush returned `Pending`.
    stalled: [bool; 3],
    calm: Arc<AtomicBool>,
}

impl<T> Chaos<T> {
    /// Whether this call (0: read, 1: write, 2: flush) is cut short; else how many bytes it may
    /// move.
    fn step(&mut self, cx: &mut Context<'_>, call: usize) -> Option<usize> {
        if self.calm.load(Ordering::Relaxed) {
            return Some(usize::MAX);
        }
        let stutter = self.stutter && !self.stalled[call];
        if stutter || self.rng.chance(self.pending) {
            self.stalled[call] = true;
            cx.waker().wake_by_ref();
            return None;
        }
        self.stalled[call] = false;
        Some(self.rng.range(1, self.chunk))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Chaos<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let Some(n) = this.step(cx, 0) else {
            return Poll::Pending;
        };
        let n = n.min(buf.remaining());
        let got = {
            let mut part = ReadBuf::new(buf.initialize_unfilled_to(n));
            match Pin::new(&mut this.inner).poll_read(cx, &mut part) {
                Poll::Ready(Ok(())) => part.filled().len(),
                other => return other,
            }
        };
        buf.advance(got);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Chaos<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let Some(n) = this.step(cx, 1) else {
            return Poll::Pending;
        };
        Pin::new(&mut this.inner).poll_write(cx, &data[..n.min(data.len())])
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.step(cx, 2).is_none() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// The connection's side and the peer's side of an in-memory link, with TLS if asked.
#[cfg(feature = "tls")]
async fn tls_link(
    ours: Chaos<tokio::io::DuplexStream>,
    theirs: tokio::io::DuplexStream,
    role: Role,
) -> (BoxIo, BoxIo) {
    use rustls::pki_types::ServerName;
    static CONFIGS: OnceLock<(Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>)> =
        OnceLock::new();
    let (server, client) = CONFIGS.get_or_init(|| {
        let pki = common::Pki::new("cancel-fuzz");
        let server = volley::tls::server_config(pki.path("cert.pem"), pki.path("key.pem"))
            .expect("server config");
        // No session tickets: the server writes them after the handshake, and over a pipe of a
        // few bytes its `accept` would wait for a client that finished its own handshake and is
        // not reading yet.
        let mut server = (*server).clone();
        server.send_tls13_tickets = 0;
        let server = Arc::new(server);
        let roots = volley::tls::Roots::Custom(vec![pki.path("ca.pem")]);
        let client = volley::tls::client_config(&roots).expect("client config");
        (server, client)
    });
    let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
    let connector = tokio_rustls::TlsConnector::from(client.clone());
    let name = ServerName::try_from("localhost").expect("name");
    match role {
        Role::Server => {
            let (s, c) = tokio::join!(acceptor.accept(ours), connector.connect(name, theirs));
            (
                Box::new(s.expect("tls accept")),
                Box::new(c.expect("tls connect")),
            )
        }
        Role::Client => {
            let (s, c) = tokio::join!(acceptor.accept(theirs), connector.connect(name, ours));
            (
                Box::new(c.expect("tls connect")),
                Box::new(s.expect("tls accept")),
            )
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Polling by hand
// ---------------------------------------------------------------------------------------------

/// Counts wake-ups.
#[derive(Default)]
struct Wakes(AtomicU64);

impl Wake for Wakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

impl Wakes {
    /// Whether it was woken since the last call.
    fn take(&self) -> bool {
        self.0.swap(0, Ordering::Relaxed) > 0
    }
}

/// One poll, outside tokio's cooperative budget (whose running out would add `Pending`s that
/// depend on how much the test did before).
fn poll_once<F: Future + ?Sized>(fut: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
    let mut fut = tokio::task::unconstrained(fut);
    Pin::new(&mut fut).poll(cx)
}

// ---------------------------------------------------------------------------------------------
// The peer
// ---------------------------------------------------------------------------------------------

/// The other end: a `volley_proto` connection moved by hand, a few bytes at a time. Any protocol
/// error it sees fails the test.
struct Peer {
    io: BoxIo,
    proto: Connection,
    out: BytesMut,
    rng: Rng,
    read_max: usize,
    write_max: usize,
    max_len: usize,
    /// What it sent, in order: numbered messages and pings.
    sent: Vec<Message>,
    /// What it received, in order.
    events: Vec<Message>,
    next_id: u64,
    eof: bool,
    io_error: Option<std::io::Error>,
    shut: bool,
    /// A server closes the transport once the close handshake is over (RFC 6455 §7.1.1).
    closes_transport: bool,
    /// Whether it reads at all (a peer that does not makes the connection's writes wait).
    reading: bool,
    /// Where it reads into.
    scratch: Vec<u8>,
    calm: Arc<AtomicBool>,
}

impl Peer {
    fn send(&mut self, m: Message) {
        self.proto.send(m.clone()).expect("peer send");
        self.sent.push(m);
    }

    /// Sends the next numbered message; returns its id.
    fn send_numbered(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let len = self.rng.range(HEADER, self.max_len);
        self.send(numbered(id, len));
        id
    }

    /// Whether every ping it sent was answered.
    fn pings_answered(&self) -> bool {
        let pings = self.sent.iter().filter(|m| matches!(m, Message::Ping(_)));
        let pongs = self.events.iter().filter(|m| matches!(m, Message::Pong(_)));
        pings.count() == pongs.count()
    }

    fn send_ping(&mut self) {
        self.send(Message::Ping(format!("p{}", self.sent.len()).into()));
    }

    /// One step: reads at most `read_max` bytes and writes at most `write_max` (everything once
    /// calm). Returns whether anything moved.
    fn pump(&mut self) -> bool {
        // Outside the cooperative budget too: the test's task may not yield for thousands of
        // polls, and a spent budget would make every pipe operation of the peer `Pending`.
        let step = std::future::poll_fn(|cx| Poll::Ready(self.pump_with(cx)));
        match poll_once(pin!(step), &mut Context::from_waker(Waker::noop())) {
            Poll::Ready(moved) => moved,
            Poll::Pending => unreachable!(),
        }
    }

    fn pump_with(&mut self, cx: &mut Context<'_>) -> bool {
        let calm = self.calm.load(Ordering::Relaxed);
        let mut moved = false;
        if self.reading && !self.eof {
            let n = if calm {
                64 * 1024
            } else {
                self.rng.range(1, self.read_max)
            };
            let mut buf = std::mem::take(&mut self.scratch);
            if buf.len() < n {
                buf = vec![0; n];
            }
            let mut rb = ReadBuf::new(&mut buf[..n]);
            match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    self.eof = true;
                    moved = true;
                }
                Poll::Ready(Ok(())) => {
                    moved = true;
                    if let Err(e) = self.proto.handle_read(rb.filled()) {
                        let last: Vec<_> = self.events.iter().rev().take(3).map(describe).collect();
                        panic!("the peer saw a protocol error: {e} (last events {last:?})");
                    }
                }
                Poll::Ready(Err(e)) => {
                    self.eof = true;
                    self.io_error.get_or_insert(e);
                }
                Poll::Pending => {}
            }
            self.scratch = buf;
        }
        while let Some(m) = self.proto.poll_event() {
            self.events.push(m);
        }
        while let Some(b) = self.proto.poll_transmit() {
            self.out.extend_from_slice(&b);
        }
        if !self.out.is_empty() && !self.shut {
            let n = if calm {
                self.out.len()
            } else {
                self.rng.range(1, self.write_max).min(self.out.len())
            };
            match Pin::new(&mut self.io).poll_write(cx, &self.out[..n]) {
                Poll::Ready(Ok(k)) => {
                    self.out.advance(k);
                    moved |= k > 0;
                }
                Poll::Ready(Err(e)) => {
                    self.io_error.get_or_insert(e);
                    self.out.clear();
                }
                Poll::Pending => {}
            }
        }
        if !self.shut {
            let _ = Pin::new(&mut self.io).poll_flush(cx);
        }
        let closed = self.proto.state() == State::Closed;
        if self.closes_transport
            && closed
            && !self.shut
            && self.out.is_empty()
            && let Poll::Ready(r) = Pin::new(&mut self.io).poll_shutdown(cx)
        {
            if let Err(e) = r {
                self.io_error.get_or_insert(e);
            }
            self.shut = true;
            moved = true;
        }
        moved
    }

    /// Pumps (sometimes skipping a beat, so that the connection is polled twice with nothing
    /// new) between two polls of the operation under test.
    fn step(&mut self) {
        if !self.rng.chance(15) {
            self.pump();
        }
    }
}

/// Polls `fut` by hand at most `k` times, the peer moving between polls, then drops it.
/// Returns its output if it completed. The link is calm from then on: what follows checks the
/// aftermath, and runs faster without chaos.
fn poll_k<F: Future>(peer: &mut Peer, fut: F, k: usize) -> Option<F::Output> {
    let out = {
        let mut fut = pin!(fut);
        let mut cx = Context::from_waker(Waker::noop());
        let mut out = None;
        for _ in 0..k {
            if let Poll::Ready(o) = poll_once(fut.as_mut(), &mut cx) {
                out = Some(o);
                break;
            }
            peer.step();
        }
        out
    };
    peer.calm.store(true, Ordering::Relaxed);
    out
}

/// Runs `fut` to completion while the peer keeps pumping. `fut` is polled again only once it was
/// woken, so a lost wake-up shows as a stall; when nothing moves, time moves (the clock is paused:
/// waiting for a timer costs no real time).
#[track_caller]
fn drive<'a, F: Future + 'a>(peer: &'a mut Peer, fut: F) -> impl Future<Output = F::Output> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        let mut fut = pin!(fut);
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let start = Instant::now();
        let mut idle = 0u32;
        let mut woken = true;
        loop {
            if woken && let Poll::Ready(out) = poll_once(fut.as_mut(), &mut cx) {
                return out;
            }
            let moved = peer.pump();
            tokio::task::yield_now().await;
            woken = wakes.take();
            if moved || woken {
                idle = 0;
                continue;
            }
            idle += 1;
            if idle > 8 {
                let ms = 1u64 << (idle - 8).min(10);
                tokio::time::sleep(Duration::from_millis(ms)).await;
                woken = wakes.take();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "stuck (no wake-up, no progress) at {caller}; peer events: {:?}",
                peer.events.iter().map(describe).collect::<Vec<_>>()
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Connections
// ---------------------------------------------------------------------------------------------

/// What is under test: the connection's role, compression, TLS.
#[derive(Debug, Clone, Copy)]
struct Setup {
    role: Role,
    deflate: bool,
    tls: bool,
}

impl Setup {
    fn all(tls: bool) -> Vec<Setup> {
        let mut all = Vec::new();
        for role in [Role::Server, Role::Client] {
            for deflate in [false, true] {
                all.push(Setup { role, deflate, tls });
            }
        }
        all
    }
}

/// Transport and traffic parameters drawn from a seed, sized so that an operation completes
/// within a few hundred polls.
#[derive(Debug, Clone)]
struct Knobs {
    duplex: usize,
    pending: u64,
    chunk: usize,
    peer_read: usize,
    peer_write: usize,
    max_len: usize,
    fragment: Option<usize>,
    peer_fragment: Option<usize>,
    write_limit: usize,
    threshold: usize,
    no_context_takeover: bool,
    stutter: bool,
}

impl Knobs {
    fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed, 1);
        // Bytes per step: the same scale for every part, so that no part starves the others.
        let g = r.pick(&[1, 3, 16, 128, 1024]);
        let max_len = r
            .pick(&[64, 400, 3000, 24_000])
            .min(100 * g)
            .max(2 * HEADER);
        let fragment = |r: &mut Rng| r.pick(&[None, None, Some(max_len / 3), Some(max_len / 8)]);
        Knobs {
            duplex: g * r.pick(&[1, 2, 8]),
            pending: r.pick(&[0, 20, 50]),
            chunk: g * r.pick(&[1, 4]),
            peer_read: g * r.pick(&[1, 4]),
            peer_write: g * r.pick(&[1, 4]),
            max_len,
            fragment: fragment(&mut r).map(|f| f.max(1)),
            peer_fragment: fragment(&mut r).map(|f| f.max(1)),
            write_limit: r.pick(&[1, 256, 32 * 1024]),
            threshold: r.pick(&[0, 64]),
            no_context_takeover: r.chance(30),
            stutter: r.chance(50),
        }
    }
}

/// A connection under test and its peer, over a fresh link.
async fn pair(setup: Setup, seed: u64, k: Knobs, config: Config) -> (WebSocket<BoxIo>, Peer) {
    let calm = Arc::new(AtomicBool::new(false));
    // TLS 1.3 handshakes deadlock over a pipe of a byte or two: rustls reads nothing while it
    // has records to write, and both ends do at the client's ChangeCipherSpec.
    let duplex = if setup.tls {
        k.duplex.max(64)
    } else {
        k.duplex
    };
    let (a, b) = tokio::io::duplex(duplex);
    fn chaos<T>(inner: T, seed: u64, stream: u64, k: &Knobs, calm: &Arc<AtomicBool>) -> Chaos<T> {
        Chaos {
            inner,
            rng: Rng::new(seed, stream),
            pending: k.pending,
            chunk: k.chunk,
            stutter: k.stutter,
            stalled: [false; 3],
            calm: calm.clone(),
        }
    }
    let (ours, theirs): (BoxIo, BoxIo) = if setup.tls {
        #[cfg(feature = "tls")]
        {
            // Below TLS the chaos moves at least 256 bytes at a time (records written a byte at
            // a time only make runs long); above it, anything. The handshake runs calm.
            let below = Knobs {
                chunk: k.chunk.max(256),
                ..k.clone()
            };
            calm.store(true, Ordering::Relaxed);
            let (ours, theirs) = tls_link(chaos(a, seed, 2, &below, &calm), b, setup.role).await;
            calm.store(false, Ordering::Relaxed);
            (Box::new(chaos(ours, seed, 3, &k, &calm)), theirs)
        }
        #[cfg(not(feature = "tls"))]
        unreachable!("TLS setups need the tls feature")
    } else {
        (Box::new(chaos(a, seed, 2, &k, &calm)), Box::new(b))
    };
    let params = setup.deflate.then(|| {
        DeflateParams::default()
            .server_no_context_takeover(k.no_context_takeover)
            .client_no_context_takeover(k.no_context_takeover)
    });
    let deflate_config = setup
        .deflate
        .then(|| DeflateConfig::default().threshold(k.threshold));
    let config = config
        .fragment_size(k.fragment)
        .write_limit(k.write_limit)
        .deflate(deflate_config.clone());
    let ws = WebSocket::from_raw_with_deflate(ours, setup.role, config, params, &[]);
    let peer_role = match setup.role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let proto_config = ProtocolConfig::default()
        .fragment_size(k.peer_fragment)
        .deflate(deflate_config);
    let peer = Peer {
        io: theirs,
        proto: Connection::with_deflate(peer_role, proto_config, params),
        out: BytesMut::new(),
        rng: Rng::new(seed, 4),
        read_max: k.peer_read,
        write_max: k.peer_write,
        max_len: k.max_len,
        sent: Vec::new(),
        events: Vec::new(),
        next_id: 1_000_000,
        eof: false,
        io_error: None,
        shut: false,
        closes_transport: peer_role == Role::Server,
        reading: true,
        scratch: Vec::new(),
        calm,
    };
    (ws, peer)
}

/// A peer over a plain pipe, without compression, moving everything it can at each step.
fn plain_peer(io: BoxIo, role: Role) -> Peer {
    Peer {
        io,
        proto: Connection::new(role, ProtocolConfig::default()),
        out: BytesMut::new(),
        rng: Rng::new(0, 4),
        read_max: 1,
        write_max: 1,
        max_len: 100,
        sent: Vec::new(),
        events: Vec::new(),
        next_id: 1_000_000,
        eof: false,
        io_error: None,
        shut: false,
        closes_transport: role == Role::Server,
        reading: true,
        scratch: Vec::new(),
        calm: Arc::new(AtomicBool::new(true)),
    }
}

/// The configuration under test: no timers unless a test asks for them.
fn quiet() -> Config {
    Config::default().ping_interval(None).ping_timeout(None)
}

// ---------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------

/// What the connection under test sent: ids below `created` were handed to an operation, those
/// in `ok` were reported sent (or queued, for `feed`).
#[derive(Debug, Default)]
struct Sent {
    created: u64,
    ok: Vec<u64>,
}

impl Sent {
    fn next(&mut self) -> u64 {
        self.created += 1;
        self.created - 1
    }
}

/// The peer saw a valid stream: numbered messages in increasing order (none twice, none torn),
/// every one reported sent among them, pongs in the order of the pings (one for each if
/// `every_ping_answered`: the connection was closed after they all arrived), and our close frame
/// last.
#[track_caller]
fn check_peer_saw(peer: &Peer, sent: &Sent, every_ping_answered: bool) {
    let mut data = Vec::new();
    let mut pongs = Vec::new();
    let mut closes = 0;
    for e in &peer.events {
        assert_eq!(closes, 0, "{} after our close frame", describe(e));
        match e {
            Message::Text(_) | Message::Binary(_) => data.push(check_numbered(e)),
            Message::Pong(p) => pongs.push(p.clone()),
            Message::Ping(_) => {} // keep-alive
            Message::Close(_) => closes += 1,
        }
    }
    assert_eq!(closes, 1, "our close frame, once");
    assert!(
        data.windows(2).all(|w| w[0] < w[1]),
        "duplicated or out of order: {data:?}"
    );
    assert!(data.iter().all(|&id| id < sent.created), "{data:?}");
    for id in &sent.ok {
        assert!(
            data.binary_search(id).is_ok(),
            "message {id} was reported sent and never arrived (the peer got {data:?})"
        );
    }
    let pings: Vec<Bytes> = peer
        .sent
        .iter()
        .filter_map(|m| match m {
            Message::Ping(p) => Some(p.clone()),
            _ => None,
        })
        .collect();
    if every_ping_answered {
        assert_eq!(pongs, pings, "one pong per ping, in order");
    } else {
        // Pings that arrive after our close frame are not answered.
        assert!(
            pings.starts_with(&pongs),
            "pongs {pongs:?} for pings {pings:?}"
        );
    }
    if let Some(e) = &peer.io_error {
        panic!("the peer's transport failed: {e}");
    }
}

/// What the connection under test received (`got`, its pongs and the peer's close frame left
/// out) is what the peer sent, or with `skipped_prefix` a suffix of it (`WebSocket::close`
/// discards what arrives while it waits).
#[track_caller]
fn check_we_got(got: &[Message], peer: &Peer, skipped_prefix: bool) {
    let closes = got
        .iter()
        .filter(|m| matches!(m, Message::Close(_)))
        .count();
    assert!(closes <= 1, "the peer's close frame twice");
    if closes == 1 {
        assert!(
            matches!(got.last(), Some(Message::Close(_))),
            "close not last"
        );
    }
    let got: Vec<String> = got
        .iter()
        .filter(|m| !matches!(m, Message::Pong(_) | Message::Close(_)))
        .map(describe)
        .collect();
    let sent: Vec<String> = peer.sent.iter().map(describe).collect();
    if skipped_prefix {
        assert!(
            sent.ends_with(&got),
            "received {got:?}: not the end of what was sent, {sent:?}"
        );
    } else {
        assert_eq!(got, sent, "received (left) against sent (right)");
    }
}

/// After the cancellations: whatever was queued goes out, a message each way, and a clean close.
async fn finish(
    ws: &mut WebSocket<BoxIo>,
    peer: &mut Peer,
    sent: &mut Sent,
    got: &mut Vec<Message>,
) {
    drive(peer, ws.flush())
        .await
        .expect("flush after the cancellation");
    let last = sent.next();
    drive(peer, ws.send(numbered(last, 30)))
        .await
        .expect("send after the cancellation");
    sent.ok.push(last);
    let back = peer.send_numbered();
    loop {
        match drive(peer, ws.recv()).await {
            Some(Ok(m)) => {
                let done = m.is_data() && check_numbered(&m) == back;
                got.push(m);
                if done {
                    break;
                }
            }
            other => panic!("recv after the cancellation: {other:?}"),
        }
    }
    drive(peer, ws.close(None)).await.expect("clean close");
    closed(ws.state(), peer).await;
}

/// The close handshake is over: the state says so and the peer sees the transport end.
async fn closed(state: State, peer: &mut Peer) {
    assert_eq!(state, State::Closed);
    let start = Instant::now();
    while !peer.eof {
        if !peer.pump() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the transport was never closed"
        );
    }
}

/// Names the run that failed, if one does.
struct RunName(String);

impl Drop for RunName {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("failed run: {}", self.0);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Every operation, dropped after every poll count
// ---------------------------------------------------------------------------------------------

/// The operations of a task's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Send,
    SendPrepared,
    Feed,
    Flush,
    Recv,
    /// `recv` until `None` while the peer closes: the loop is what is dropped, in whichever
    /// `recv` it is (the one handing out the peer's close frame writes the echo first).
    RecvToEnd,
    Close,
    CloseHandle,
}

const ALL_OPS: [Op; 8] = [
    Op::Send,
    Op::SendPrepared,
    Op::Feed,
    Op::Flush,
    Op::Recv,
    Op::RecvToEnd,
    Op::Close,
    Op::CloseHandle,
];

/// One run: on a fresh connection in mid-stream, `op` polled at most `k` times and dropped, then
/// the connection finished and checked. Returns whether `op` completed within `k` polls.
async fn run_once(setup: Setup, seed: u64, op: Op, k: usize) -> bool {
    let _name = RunName(format!(
        "{op:?} dropped after {k} polls, {setup:?}, seed {seed}"
    ));
    // Stuttering: every read, write and flush waits once, so every await point is reached.
    let knobs = Knobs {
        stutter: true,
        ..Knobs::new(seed)
    };
    let (mut ws, mut peer) = pair(setup, seed, knobs, quiet()).await;
    let mut rng = Rng::new(seed, 5);
    let mut sent = Sent::default();
    let mut got = Vec::new();
    // The traffic before the operation runs calm (only the state it leaves matters), the
    // operation itself in chaos.
    peer.calm.store(true, Ordering::Relaxed);
    // Mid-stream: traffic both ways before the operation, some of it still in flight.
    if op == Op::Recv && rng.chance(50) {
        peer.send_ping();
    }
    peer.send_numbered();
    if rng.chance(50) {
        peer.send_ping();
    }
    peer.send_numbered();
    let peer_close = CloseFrame::new(CloseCode::GOING_AWAY, "peer");
    if op == Op::RecvToEnd {
        // A short message right before the close frame: read together, the message is handed
        // out first and the close frame (and its echo) waits for the next `recv`, which must
        // write the echo before handing the close frame out.
        let id = peer.next_id;
        peer.next_id += 1;
        peer.send(numbered(id, HEADER));
        peer.proto
            .close(Some(peer_close.clone()))
            .expect("peer close");
    }
    let first = sent.next();
    let max_len = peer.max_len;
    drive(
        &mut peer,
        ws.send(numbered(first, rng.range(HEADER, max_len))),
    )
    .await
    .expect("send before the operation");
    sent.ok.push(first);
    if op == Op::Flush {
        for _ in 0..rng.range(1, 3) {
            let id = sent.next();
            drive(&mut peer, ws.feed(numbered(id, rng.range(HEADER, max_len))))
                .await
                .expect("feed");
            sent.ok.push(id);
        }
    }
    let id = sent.next();
    let message = numbered(id, rng.range(HEADER, max_len));
    peer.calm.store(false, Ordering::Relaxed);
    let completed = match op {
        Op::Send | Op::SendPrepared | Op::Feed | Op::Flush => {
            let p = prepared(&message);
            let result = match op {
                Op::Send => poll_k(&mut peer, ws.send(message), k),
                Op::SendPrepared => poll_k(&mut peer, ws.send_prepared(&p), k),
                Op::Feed => poll_k(&mut peer, ws.feed(message), k),
                _ => poll_k(&mut peer, ws.flush(), k),
            };
            match result {
                Some(Ok(())) if op != Op::Flush => sent.ok.push(id),
                Some(Ok(())) | None => {}
                Some(Err(e)) => panic!("{op:?}: {e}"),
            }
            let completed = result.is_some();
            finish(&mut ws, &mut peer, &mut sent, &mut got).await;
            check_we_got(&got, &peer, false);
            completed
        }
        Op::Recv => {
            let result = poll_k(&mut peer, ws.recv(), k);
            match &result {
                Some(Some(Ok(m))) => got.push(m.clone()),
                None => {}
                Some(other) => panic!("recv: {other:?}"),
            }
            finish(&mut ws, &mut peer, &mut sent, &mut got).await;
            check_we_got(&got, &peer, false);
            result.is_some()
        }
        Op::RecvToEnd => {
            let to_end = async {
                while let Some(item) = ws.recv().await {
                    got.push(item.expect("recv"));
                }
            };
            let completed = poll_k(&mut peer, to_end, k).is_some();
            // Then as documented: receive until `None`.
            loop {
                match drive(&mut peer, ws.recv()).await {
                    None => break,
                    Some(Ok(m)) => got.push(m),
                    Some(Err(e)) => panic!("recv after the peer's close: {e}"),
                }
            }
            closed(ws.state(), &mut peer).await;
            check_we_got(&got, &peer, false);
            assert_eq!(
                got.last().map(describe),
                Some(describe(&Message::Close(Some(peer_close)))),
                "the peer's close frame, handed out last"
            );
            completed
        }
        Op::Close | Op::CloseHandle => {
            let completed = if op == Op::Close {
                match poll_k(&mut peer, ws.close(None), k) {
                    Some(r) => {
                        r.expect("close");
                        true
                    }
                    None => false,
                }
            } else {
                let handle = ws.close_handle();
                let frame = CloseFrame::new(CloseCode::NORMAL, "bye");
                poll_k(&mut peer, handle.close(Some(frame)), k).is_some()
            };
            // `WebSocket::close` discards what arrives while it waits.
            let mut discarding = op == Op::Close;
            if ws.state() == State::Open {
                // Never polled: nothing happened.
                assert_eq!(k, 0, "{op:?} polled {k} times and still open");
                drive(&mut peer, ws.close(None)).await.expect("close");
                discarding = true;
            } else if !(op == Op::Close && completed) {
                // The documented way to finish a close that was dropped (or that only wrote the
                // close frame, for a `CloseHandle`): receive until `None`.
                loop {
                    match drive(&mut peer, ws.recv()).await {
                        None => break,
                        Some(Ok(m)) => got.push(m),
                        Some(Err(e)) => panic!(
                            "recv after {op:?}: {e}; the peer is {:?} and got {:?}; we got {:?}",
                            peer.proto.state(),
                            peer.events.iter().map(describe).collect::<Vec<_>>(),
                            got.iter().map(describe).collect::<Vec<_>>(),
                        ),
                    }
                }
            }
            closed(ws.state(), &mut peer).await;
            check_we_got(&got, &peer, discarding);
            completed
        }
    };
    check_peer_saw(&peer, &sent, !matches!(op, Op::Close | Op::CloseHandle));
    completed
}

/// Drops `op` after every poll count, K = 0, 1, …, until it completes.
async fn exhaust(setup: Setup, seed: u64, op: Op) -> usize {
    for k in 0..MAX_POLLS {
        if run_once(setup, seed, op, k).await {
            return k;
        }
    }
    panic!("{op:?} did not complete within {MAX_POLLS} polls ({setup:?}, seed {seed})");
}

async fn exhaust_all(setups: &[Setup], ops: &[Op], seeds: std::ops::Range<u64>) {
    for seed in seeds {
        for &setup in setups {
            for &op in ops {
                let started = std::time::Instant::now();
                let polls = exhaust(setup, seed, op).await;
                let took = started.elapsed();
                eprintln!("{setup:?} seed {seed} {op:?}: completes at poll {polls} ({took:.0?})");
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_operation_dropped_at_every_poll_count_plain() {
    exhaust_all(
        &Setup::all(false)
            .into_iter()
            .filter(|s| !s.deflate)
            .collect::<Vec<_>>(),
        &ALL_OPS,
        seeds(4),
    )
    .await;
}

#[tokio::test(start_paused = true)]
async fn every_operation_dropped_at_every_poll_count_deflate() {
    exhaust_all(
        &Setup::all(false)
            .into_iter()
            .filter(|s| s.deflate)
            .collect::<Vec<_>>(),
        &ALL_OPS,
        seeds(4),
    )
    .await;
}

#[cfg(feature = "tls")]
#[tokio::test(start_paused = true)]
async fn send_recv_and_close_dropped_at_every_poll_count_over_tls() {
    exhaust_all(
        &Setup::all(true),
        &[Op::Send, Op::Recv, Op::Close],
        seeds(2),
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Regressions: what the harness found, pinned
// ---------------------------------------------------------------------------------------------

/// A transport that keeps what is written until it is flushed, and needs two flushes for it
/// (as TLS keeps the records it could not write yet).
struct Buffering<T> {
    inner: T,
    held: Vec<u8>,
    first_flush: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffering<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffering<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.held.extend_from_slice(data);
        this.first_flush = true;
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.first_flush) {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        while !this.held.is_empty() {
            let n = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, &this.held))?;
            this.held.drain(..n);
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Regression: a `send` dropped while the transport was flushing left its bytes in the
/// transport's buffer, and the next `flush` saw an empty queue and returned without flushing
/// the transport (over TLS: the message, or a close frame, stuck until some later write).
#[tokio::test(start_paused = true)]
async fn a_flush_after_a_send_dropped_in_the_transport_flush_flushes_the_transport() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let io: BoxIo = Box::new(Buffering {
        inner: a,
        held: Vec::new(),
        first_flush: false,
    });
    let mut ws = WebSocket::from_raw(io, Role::Server, quiet(), &[]);
    let mut peer = plain_peer(Box::new(b), Role::Client);
    // One poll: the frame is written into the transport's buffer, whose flush is pending.
    assert!(poll_k(&mut peer, ws.send(numbered(0, 100)), 1).is_none());
    drive(&mut peer, ws.flush()).await.expect("flush");
    peer.pump();
    let got: Vec<_> = peer.events.iter().map(describe).collect();
    assert_eq!(got, ["#0"], "the flush left the message in the transport");
}

/// Regression: a `recv` dropped while it closed the transport after the close handshake (a
/// client waits for the server to close first) left the next `recv` returning `None` at once,
/// with the transport still open: "call `recv` until `None`" did not finish a dropped `close`.
#[tokio::test(start_paused = true)]
async fn recv_after_a_close_dropped_while_finishing_still_closes_the_transport() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let mut ws = WebSocket::from_raw(Box::new(a) as BoxIo, Role::Client, quiet(), &[]);
    let mut peer = plain_peer(Box::new(b), Role::Server);
    // The server answers the close frame but keeps the transport open for now.
    peer.closes_transport = false;
    assert!(poll_k(&mut peer, ws.close(None), 50).is_none());
    assert_eq!(ws.state(), State::Closed, "the close handshake is over");
    assert_eq!(peer.proto.state(), State::Closed);
    // Now the server closes the transport; the client's next `recv` finishes its side.
    peer.closes_transport = true;
    assert!(drive(&mut peer, ws.recv()).await.is_none());
    let start = Instant::now();
    while !peer.eof {
        peer.pump();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "recv returned None with the transport still open"
        );
    }
}

/// Regression: a pong the receiver queued while a `send` held the writer stayed queued when
/// that `send` was dropped, while the receiver waited for the peer (which was waiting for the
/// pong): it went out only when a timer woke the receiver (or never, on an idle connection).
#[tokio::test(start_paused = true)]
async fn a_pong_queued_behind_a_dropped_send_goes_out_while_recv_waits() {
    let (a, b) = tokio::io::duplex(64);
    let ws = WebSocket::from_raw(Box::new(a) as BoxIo, Role::Server, quiet(), &[]);
    let (mut tx, mut rx) = ws.split();
    let mut peer = plain_peer(Box::new(b), Role::Client);
    let mut cx = Context::from_waker(Waker::noop());
    // A send that waits: 10 KB into a pipe of 64 bytes that the peer does not read.
    peer.reading = false;
    let mut send = Box::pin(tx.send(numbered(0, 10_000)));
    assert!(poll_once(send.as_mut(), &mut cx).is_pending());
    // The peer pings; the receiver hands the ping out, its pong queued behind the send.
    peer.send_ping();
    peer.pump();
    let ping = poll_once(pin!(rx.recv()), &mut cx);
    assert!(
        matches!(ping, Poll::Ready(Some(Ok(Message::Ping(_))))),
        "{ping:?}"
    );
    // The next `recv` waits for the peer, which waits for its pong; the send is dropped.
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let mut recv = Box::pin(rx.recv());
    assert!(poll_once(recv.as_mut(), &mut cx).is_pending());
    drop(send);
    peer.reading = true;
    let start = Instant::now();
    while !peer.pings_answered() {
        if wakes.take() {
            assert!(poll_once(recv.as_mut(), &mut cx).is_pending());
        }
        if !peer.pump() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            start.elapsed() < Duration::from_millis(100),
            "the pong stayed queued while recv waited"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Sequences: both halves at once, futures dropped at random points, time moving
// ---------------------------------------------------------------------------------------------

type TxFuture<'a> = Pin<Box<dyn Future<Output = volley::Result<()>> + 'a>>;
type RxFuture<'a> = Pin<Box<dyn Future<Output = Option<volley::Result<Message>>> + 'a>>;

/// One seed: a random interleaving of operations on the split halves (a send-side future and a
/// `recv` alive at the same time, each polled, left waiting or dropped at random points), the
/// peer sending messages and pings and moving bytes at random, and, for half the seeds, time
/// moving so that keep-alive pings go out midway and idle buffers are released. Then the
/// connection is finished and checked like above.
#[allow(clippy::await_holding_refcell_ref)] // one future per half at a time: borrows never overlap
async fn sequence(setup: Setup, seed: u64, steps: usize) {
    let _name = RunName(format!("sequence {setup:?}, seed {seed}"));
    let mut rng = Rng::new(seed, 6);
    let keepalive = rng.chance(50);
    let config = quiet().ping_interval(keepalive.then_some(Duration::from_secs(2)));
    let (ws, mut peer) = pair(setup, seed, Knobs::new(seed), config).await;
    let (tx, rx) = ws.split();
    let (tx, rx) = (RefCell::new(tx), RefCell::new(rx));
    let mut sent = Sent::default();
    let mut got = Vec::new();
    let mut tx_op: Option<(Option<u64>, TxFuture<'_>)> = None;
    let mut rx_op: Option<RxFuture<'_>> = None;
    let mut cx = Context::from_waker(Waker::noop());
    let max_len = peer.max_len;
    for _ in 0..steps {
        match rng.range(0, 99) {
            0..=14 if tx_op.is_none() => {
                let tx = &tx;
                let kind = rng.range(0, 4);
                let id = (kind < 4).then(|| sent.next());
                let message = id.map(|id| numbered(id, rng.range(HEADER, max_len)));
                let fut: TxFuture<'_> = match (kind, message) {
                    (0, Some(m)) => Box::pin(async move { tx.borrow_mut().send(m).await }),
                    (1, Some(m)) => Box::pin(async move { tx.borrow_mut().feed(m).await }),
                    (2, Some(m)) => {
                        let p = prepared(&m);
                        Box::pin(async move { tx.borrow_mut().send_prepared(&p).await })
                    }
                    (3, Some(m)) => {
                        let p = prepared(&m);
                        Box::pin(async move { tx.borrow_mut().feed_prepared(&p).await })
                    }
                    _ => Box::pin(async move { tx.borrow_mut().flush().await }),
                };
                tx_op = Some((id, fut));
            }
            15..=27 if rx_op.is_none() => {
                let rx = &rx;
                rx_op = Some(Box::pin(async move { rx.borrow_mut().recv().await }));
            }
            28..=47 => {
                let done = match &mut tx_op {
                    Some((id, fut)) => match poll_once(fut.as_mut(), &mut cx) {
                        Poll::Ready(result) => {
                            result.expect("send side");
                            sent.ok.extend(*id);
                            true
                        }
                        Poll::Pending => false,
                    },
                    None => false,
                };
                if done {
                    tx_op = None;
                }
            }
            48..=67 => {
                let done = match &mut rx_op {
                    Some(fut) => match poll_once(fut.as_mut(), &mut cx) {
                        Poll::Ready(Some(Ok(m))) => {
                            got.push(m);
                            true
                        }
                        Poll::Ready(other) => panic!("recv: {other:?}"),
                        Poll::Pending => false,
                    },
                    None => false,
                };
                if done {
                    rx_op = None;
                }
            }
            68..=70 => tx_op = None,
            71..=73 => rx_op = None,
            74..=89 => {
                peer.pump();
            }
            90..=93 => {
                peer.send_numbered();
            }
            94..=96 => peer.send_ping(),
            _ if keepalive => {
                let ms = rng.range(1, 2500) as u64;
                tokio::time::advance(Duration::from_millis(ms)).await;
            }
            _ => {}
        }
    }
    drop(tx_op);
    // With the sending half left alone (its last future dropped), the receiver alone (the `recv`
    // that was waiting, if there is one) writes whatever is queued: every pong, and what dropped
    // sends left behind. At once, not when a timer goes off (the first one is the release of
    // idle buffers, a second after the last read): once nothing moves for 50 ms, the peer has
    // everything it will get before our next write (checked below), and sends its last message.
    let mut rx_fut = rx_op.unwrap_or_else(|| Box::pin(async { rx.borrow_mut().recv().await }));
    let mut back = None;
    let mut quiet_at = usize::MAX;
    let wakes = Arc::new(Wakes::default());
    let waker = Waker::from(wakes.clone());
    let mut cx = Context::from_waker(&waker);
    let start = Instant::now();
    let mut last_move = Instant::now();
    let mut woken = true;
    let mut idle = 0;
    loop {
        if woken && let Poll::Ready(item) = poll_once(rx_fut.as_mut(), &mut cx) {
            let m = match item {
                Some(Ok(m)) => m,
                other => panic!("recv after the cancellations: {other:?}"),
            };
            let done = m.is_data() && Some(check_numbered(&m)) == back;
            got.push(m);
            if done {
                break;
            }
            rx_fut = Box::pin(async { rx.borrow_mut().recv().await });
            continue;
        }
        if peer.pump() {
            last_move = Instant::now();
        }
        let quiet = last_move.elapsed() >= Duration::from_millis(50);
        if back.is_none() && quiet && peer.pings_answered() {
            quiet_at = peer.events.len();
            back = Some(peer.send_numbered());
        }
        tokio::task::yield_now().await;
        woken = wakes.take();
        if woken {
            last_move = Instant::now();
            idle = 0;
        } else {
            idle += 1;
            if idle > 8 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                woken = wakes.take();
            }
        }
        assert!(
            start.elapsed() < Duration::from_millis(500),
            "the receiver alone did not get the pongs out (pings {}, peer got {:?})",
            peer.sent
                .iter()
                .filter(|m| matches!(m, Message::Ping(_)))
                .count(),
            peer.events.iter().map(describe).collect::<Vec<_>>()
        );
    }
    drop(rx_fut);
    let (mut tx, mut rx) = (tx.into_inner(), rx.into_inner());
    drive(&mut peer, tx.flush())
        .await
        .expect("flush after the cancellations");
    let late: Vec<_> = peer.events[quiet_at..]
        .iter()
        .filter(|m| !matches!(m, Message::Ping(_))) // keep-alive
        .map(describe)
        .collect();
    assert!(
        late.is_empty(),
        "{late:?} stayed queued while the receiver waited, until the next write"
    );
    let last = sent.next();
    drive(&mut peer, tx.send(numbered(last, 30)))
        .await
        .expect("send after the cancellations");
    sent.ok.push(last);
    drive(&mut peer, tx.close(None)).await.expect("close");
    loop {
        match drive(&mut peer, rx.recv()).await {
            None => break,
            Some(Ok(m)) => got.push(m),
            Some(Err(e)) => panic!("recv while closing: {e}"),
        }
    }
    closed(rx.state(), &mut peer).await;
    check_we_got(&got, &peer, false);
    check_peer_saw(&peer, &sent, true);
}

async fn sequences(setups: &[Setup], seeds: std::ops::Range<u64>) {
    for seed in seeds {
        for &setup in setups {
            sequence(setup, seed, 400).await;
        }
    }
}

#[tokio::test(start_paused = true)]
async fn random_sequences_on_split_halves() {
    sequences(&Setup::all(false), seeds(16)).await;
}

#[cfg(feature = "tls")]
#[tokio::test(start_paused = true)]
async fn random_sequences_on_split_halves_over_tls() {
    sequences(&Setup::all(true), seeds(4)).await;
}

// ---------------------------------------------------------------------------------------------
// The reconnecting client (over loopback TCP, in real time: its connection lives in a task)
// ---------------------------------------------------------------------------------------------

/// Polls `fut` by hand at most `k` times, letting the runtime run (the client's task, the
/// server, the sockets) between polls, then drops it.
async fn poll_k_yielding<F: Future>(fut: F, k: usize) -> Option<F::Output> {
    let mut fut = pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..k {
        if let Poll::Ready(out) = poll_once(fut.as_mut(), &mut cx) {
            return Some(out);
        }
        tokio::task::yield_now().await;
    }
    None
}

async fn connected_client(addr: std::net::SocketAddr) -> ReconnectingClient {
    let builder = volley::ClientBuilder::new(format!("ws://{addr}/")).config(quiet());
    let mut client = Reconnect::new(builder).start();
    match common::within(client.next()).await {
        Some(Event::Connected { .. }) => client,
        other => panic!("expected to connect, got {other:?}"),
    }
}

/// `ReconnectingClient::send` is documented as not cancel-safe: a dropped send may still be sent
/// once handed over. Checked: such a message arrives at most once and whole, one never polled
/// never does, and every send reported `Ok` arrives exactly once, in order.
#[tokio::test]
async fn reconnecting_client_send_dropped_at_every_poll_count() {
    let (addr, mut seen) = common::recording_server(quiet()).await;
    let client = connected_client(addr).await;
    let (mut ok, mut never_polled, mut id) = (Vec::new(), Vec::new(), 0);
    for seed in seeds(4) {
        let len = Rng::new(seed, 9).range(HEADER, 100_000);
        for k in 0..MAX_POLLS {
            let result = poll_k_yielding(client.send(numbered(id, len)), k).await;
            match &result {
                Some(Ok(())) => ok.push(id),
                Some(Err(e)) => panic!("send: {e}"),
                None if k == 0 => never_polled.push(id),
                None => {}
            }
            id += 1;
            if result.is_some() {
                break;
            }
        }
    }
    common::within(client.send("end")).await.expect("send");
    let mut received = Vec::new();
    loop {
        match common::within(seen.recv()).await {
            Some(common::Seen::Open(_)) => {}
            Some(common::Seen::Msg(Message::Text(t))) if t == "end" => break,
            Some(common::Seen::Msg(m)) => received.push(check_numbered(&m)),
            other => panic!("after {received:?}: {other:?}"),
        }
    }
    assert!(
        received.windows(2).all(|w| w[0] < w[1]),
        "duplicated or out of order: {received:?}"
    );
    for id in &ok {
        assert!(
            received.contains(id),
            "send {id} returned Ok and never arrived"
        );
    }
    for id in &never_polled {
        assert!(
            !received.contains(id),
            "send {id} was never polled and arrived"
        );
    }
    let dropped_midway = id as usize - ok.len() - never_polled.len();
    eprintln!(
        "{id} sends: {} completed, {} never polled, {dropped_midway} dropped midway; {} arrived",
        ok.len(),
        never_polled.len(),
        received.len()
    );
    assert!(dropped_midway > 0, "no send was dropped midway");
    common::within(client.close(None)).await;
}

/// `ReconnectingClient::next` is cancel-safe: dropped after any number of polls, no event is lost.
#[tokio::test]
async fn reconnecting_client_next_dropped_at_every_poll_count_loses_nothing() {
    const N: u64 = 300;
    let addr = common::start_server(quiet(), |mut ws, _| async move {
        for i in 0..N {
            if i % 10 == 0 && ws.send(Message::Ping(Bytes::from("p"))).await.is_err() {
                return;
            }
            if ws
                .send(numbered(i, 20 + (i as usize * 7919) % 5000))
                .await
                .is_err()
            {
                return;
            }
        }
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
    let mut client = connected_client(addr).await;
    let (mut next, mut k, mut dropped) = (0, 0, 0);
    common::within_for(Duration::from_secs(60), async {
        while next < N {
            k = (k + 1) % 6;
            match poll_k_yielding(client.next(), k).await {
                Some(Some(Event::Message(m))) if m.is_data() => {
                    assert_eq!(check_numbered(&m), next, "lost, duplicated or reordered");
                    next += 1;
                }
                Some(Some(Event::Message(Message::Ping(_)))) => {}
                None => dropped += 1,
                Some(other) => panic!("after {next} messages: {other:?}"),
            }
        }
    })
    .await;
    assert!(dropped > 0, "no next() was dropped");
    common::within(client.close(None)).await;
}

/// `ReconnectingClient::close` dropped after its first poll still stops the client (with its
/// frame); one never polled does nothing.
#[tokio::test]
async fn reconnecting_client_close_dropped_after_its_first_poll_still_stops_it() {
    let (addr, mut seen) = common::recording_server(quiet()).await;
    for k in 0..4 {
        let mut client = connected_client(addr).await;
        let frame = CloseFrame::new(CloseCode::NORMAL, format!("k={k}"));
        let _ = poll_k_yielding(client.close(Some(frame)), k).await;
        if k == 0 {
            common::within(client.send("still connected"))
                .await
                .expect("a close never polled does nothing");
            common::within(client.close(Some(CloseFrame::new(CloseCode::NORMAL, "k=0")))).await;
        }
        let mut last = None;
        while let Some(event) = common::within(client.next()).await {
            last = Some(event);
        }
        assert!(
            matches!(last, Some(Event::Disconnected { retry_in: None, .. })),
            "k={k}: {last:?}"
        );
        let close = loop {
            match common::within(seen.recv()).await {
                Some(common::Seen::Msg(Message::Close(frame))) => break frame,
                Some(_) => {}
                None => panic!("the server stopped"),
            }
        };
        assert_eq!(close.map(|f| f.reason.to_string()), Some(format!("k={k}")));
    }
}

// ---------------------------------------------------------------------------------------------
// Callbacks: `ConnHandle` sends are synchronous offers, so a task cancelled around them
// ---------------------------------------------------------------------------------------------

struct GiveHandles(tokio::sync::mpsc::UnboundedSender<volley::callback::ConnHandle>);

impl volley::callback::Callbacks for GiveHandles {
    fn on_open(&self, conn: &mut volley::callback::Conn<'_>) {
        let _ = self.0.send(conn.handle());
    }

    fn on_message(&self, _conn: &mut volley::callback::Conn<'_>, _message: Message) {}
}

/// A callback connection has no futures to cancel on the server side: `ConnHandle::send` is a
/// synchronous offer. Tasks that send through a handle are aborted at random points (over a
/// chaos transport): every offer that returned `Ok` arrives exactly once, in order, whole, and
/// nothing else does; the connection then still works and closes cleanly.
#[tokio::test]
async fn conn_handle_sends_from_cancelled_tasks_arrive_exactly_once() {
    for seed in seeds(4) {
        let (tx, mut handles) = tokio::sync::mpsc::unbounded_channel();
        let drivers = volley::callback::Drivers::new(GiveHandles(tx), quiet());
        let k = Knobs::new(seed);
        let (a, b) = tokio::io::duplex(k.duplex);
        let calm = Arc::new(AtomicBool::new(false));
        let chaos = Chaos {
            inner: a,
            rng: Rng::new(seed, 2),
            pending: k.pending,
            chunk: k.chunk,
            stutter: k.stutter,
            stalled: [false; 3],
            calm,
        };
        drivers.adopt_transport(chaos, http::Request::new(()), None, &[]);
        let handle = common::within(handles.recv()).await.expect("on_open");
        let mut peer = WebSocket::from_raw(b, Role::Client, quiet(), &[]);
        let reader = tokio::spawn(async move {
            let mut ids = Vec::new();
            loop {
                match peer.recv().await {
                    Some(Ok(Message::Text(t))) if t == "end" => break,
                    Some(Ok(m)) if m.is_data() => ids.push(check_numbered(&m)),
                    Some(Ok(_)) => {}
                    other => panic!("after {ids:?}: {other:?}"),
                }
            }
            common::within(peer.close(None)).await.expect("close");
            ids
        });
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let next = Arc::new(AtomicU64::new(0));
        let mut rng = Rng::new(seed, 10);
        for _ in 0..20 {
            let (h, log, next) = (handle.clone(), log.clone(), next.clone());
            let len = rng.range(HEADER, 2000);
            let task = tokio::spawn(async move {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    // No await between the offer and its result: a cancellation lands between
                    // two messages, never inside one.
                    h.send(numbered(id, len)).expect("queued");
                    log.lock().unwrap().push(id);
                    tokio::task::yield_now().await;
                }
            });
            for _ in 0..rng.range(0, 20) {
                tokio::task::yield_now().await;
            }
            task.abort();
            assert!(task.await.unwrap_err().is_cancelled());
        }
        handle.send("end").expect("send");
        let ids = common::within_for(Duration::from_secs(30), reader)
            .await
            .expect("reader");
        assert_eq!(ids, *log.lock().unwrap(), "seed {seed}");
        common::within(drivers.closed()).await;
    }
}
