//! Property tests of the sans-IO core (proptest).
//!
//! 1. **Messages arrive as sent**: random message sequences (text with multi-byte UTF-8, binary,
//!    empty, up to 256 KiB, pings and pongs between them) × the sender's fragmentation
//!    (`fragment_size`) × a re-cut of every frame into random fragments with pings injected
//!    between them × random read-chunk boundaries × permessage-deflate off/on (context takeover
//!    on/off per direction, window bits 8–15, any threshold and level) × both roles × whole and
//!    split connections → the receiver sees exactly the sent messages in order, and answers
//!    every ping with a pong.
//! 2. **The close handshake completes from any state**: a random exchange (sends, partial
//!    deliveries, lazy polling) in which either side or both at once start closing at a random
//!    point with a random valid code and reason → both end `Closed`, each saw the other's close
//!    frame as its last event, nothing sent before a close is lost, nothing after it delivered.
//! 3. **Hostile input**: random bytes, random frames and random mutations of a valid stream never
//!    panic and either keep going or fail the connection with 1002/1007/1009 (the close frame
//!    carrying the error's code, all later input ignored); and targeted violations (invalid
//!    UTF-8, oversized messages, every kind of protocol error) injected at a random point of a
//!    valid stream fail with exactly the right error and code after delivering what came before.
//!
//! The case counts keep the whole file at about 11 s of CPU in a debug build (8–18 s of wall time on
//! the shared 2-core CI machine, depending on its load); `PROPTEST_CASES=n` sets every property's
//! count to `n` instead. Each run draws new cases; a failure prints the minimal failing input.

mod common;

use std::io::IoSlice;

use bytes::Bytes;
use common::{BINARY, CLOSE, CONT, Decoded, PING, PONG, RawFrame, Rng, TEXT, decode_all};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use volley_proto::{
    CloseCode, CloseFrame, Connection, DeflateConfig, DeflateParams, Message, PreparedMessage,
    ProtocolConfig, ProtocolError, RecvHalf, Role, SendError, SendHalf, State,
};

type TestResult = Result<(), TestCaseError>;

/// `default` cases, or `PROPTEST_CASES` when set. Failures are not persisted to files: the
/// minimal failing input is printed, to be turned into a regression test.
fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn peer_of(role: Role) -> Role {
    match role {
        Role::Client => Role::Server,
        Role::Server => Role::Client,
    }
}

// ---------------------------------------------------------------------------------------------
// An endpoint, whole or split into halves.

/// One end of a connection: a [`Connection`], or its halves with every reply handed from the
/// receive half to the send half after each input and each polled event (as `RecvHalf`'s
/// contract says).
#[derive(Debug)]
enum End {
    Whole(Connection),
    Split(RecvHalf, SendHalf),
}

/// Forwards a method of the send direction to the connection or the send half.
macro_rules! send_side {
    ($end:expr, $s:ident => $body:expr) => {
        match $end {
            End::Whole($s) => $body,
            End::Split(_, $s) => $body,
        }
    };
}

impl End {
    fn new(
        role: Role,
        config: ProtocolConfig,
        deflate: Option<DeflateParams>,
        split: bool,
    ) -> Self {
        let conn = Connection::with_deflate(role, config, deflate);
        if split {
            let (recv, send) = conn.split();
            Self::Split(recv, send)
        } else {
            Self::Whole(conn)
        }
    }

    fn replies(recv: &mut RecvHalf, send: &mut SendHalf) {
        while let Some(reply) = recv.poll_reply() {
            send.handle_reply(reply);
        }
    }

    /// Delivers received bytes, through `handle_read` or appended to the read buffer.
    fn read(&mut self, data: &[u8], buffered: bool) -> Result<(), ProtocolError> {
        match self {
            Self::Whole(c) if buffered => {
                c.read_buffer().extend_from_slice(data);
                c.handle_buffered()
            }
            Self::Whole(c) => c.handle_read(data),
            Self::Split(r, s) => {
                let result = if buffered {
                    r.read_buffer().extend_from_slice(data);
                    r.handle_buffered()
                } else {
                    r.handle_read(data)
                };
                Self::replies(r, s);
                result
            }
        }
    }

    fn poll_event(&mut self) -> Option<Message> {
        match self {
            Self::Whole(c) => c.poll_event(),
            Self::Split(r, s) => {
                let event = r.poll_event();
                Self::replies(r, s);
                event
            }
        }
    }

    fn events(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.poll_event()).collect()
    }

    fn is_terminated(&self) -> bool {
        match self {
            Self::Whole(c) => c.is_terminated(),
            Self::Split(r, _) => r.is_terminated(),
        }
    }

    fn state(&self) -> State {
        send_side!(self, s => s.state())
    }

    fn send(&mut self, message: Message) -> Result<(), SendError> {
        send_side!(self, s => s.send(message))
    }

    fn send_prepared(&mut self, prepared: &PreparedMessage) -> Result<(), SendError> {
        send_side!(self, s => s.send_prepared(prepared))
    }

    fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        send_side!(self, s => s.close(frame))
    }

    fn pending_transmit(&self) -> usize {
        send_side!(self, s => s.pending_transmit())
    }

    /// Everything queued for the transport: with `poll_transmit`, or with `transmit_slices` and
    /// `advance_transmit` in writes of at most `write` bytes (short writes).
    fn transmit(&mut self, write: Option<usize>) -> Vec<u8> {
        let mut out = Vec::new();
        match write {
            None => {
                while let Some(b) = send_side!(self, s => s.poll_transmit()) {
                    out.extend_from_slice(&b);
                }
            }
            Some(max) => {
                let max = max.max(1);
                while self.pending_transmit() > 0 {
                    let before = out.len();
                    {
                        let mut slices = [IoSlice::new(&[]); 3];
                        let n = send_side!(&*self, s => s.transmit_slices(&mut slices));
                        assert!(n > 0, "bytes pending but no slices");
                        for slice in &slices[..n] {
                            let take = slice.len().min(max - (out.len() - before));
                            out.extend_from_slice(&slice[..take]);
                        }
                    }
                    let written = out.len() - before;
                    assert!(written > 0, "empty slices");
                    send_side!(self, s => s.advance_transmit(written));
                }
            }
        }
        assert_eq!(self.pending_transmit(), 0);
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Payloads.

/// Text of exactly `len` bytes of 1- to 4-byte characters.
fn text(len: usize, seed: u64) -> String {
    const PIECES: [&str; 9] = ["a", "b", " ", "\0", "é", "ß", "€", "한", "𝄞"];
    let mut rng = Rng::new(seed);
    let mut s = String::with_capacity(len);
    while s.len() < len {
        let piece = PIECES[rng.below(PIECES.len())];
        if s.len() + piece.len() <= len {
            s.push_str(piece);
        } else {
            s.push('x');
        }
    }
    s
}

/// `len` bytes: repetitive (compressible) or random.
fn binary(len: usize, seed: u64, compressible: bool) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    if compressible {
        let words: Vec<Vec<u8>> = (0..8).map(|i| rng.bytes(1 + i)).collect();
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&words[rng.below(words.len())]);
        }
        out.truncate(len);
        out
    } else {
        rng.bytes(len)
    }
}

/// Data message lengths up to `big` (at least 126): empty, and the 7-bit, 16-bit and (for `big`
/// above 64 KiB) 64-bit length forms.
fn data_len(big: usize) -> impl Strategy<Value = usize> {
    let mid = big.min(70_000);
    prop_oneof![
        2 => Just(0usize),
        10 => 1usize..126,
        4 => 126usize..=mid,
        1 => mid..=big,
    ]
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=125)
}

/// A message to send; `prepared` sends it with `send_prepared`.
#[derive(Debug, Clone)]
enum Op {
    Text {
        len: usize,
        seed: u64,
        prepared: bool,
    },
    Binary {
        len: usize,
        seed: u64,
        compressible: bool,
        prepared: bool,
    },
    Ping(Vec<u8>),
    Pong(Vec<u8>),
}

impl Op {
    fn message(&self) -> Message {
        match *self {
            Op::Text { len, seed, .. } => Message::text(text(len, seed)),
            Op::Binary {
                len,
                seed,
                compressible,
                ..
            } => Message::binary(binary(len, seed, compressible)),
            Op::Ping(ref p) => Message::Ping(Bytes::from(p.clone())),
            Op::Pong(ref p) => Message::Pong(Bytes::from(p.clone())),
        }
    }

    fn prepared(&self) -> bool {
        matches!(
            self,
            Op::Text { prepared: true, .. } | Op::Binary { prepared: true, .. }
        )
    }
}

fn op(big: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (data_len(big), any::<u64>(), prop::bool::weighted(0.2))
            .prop_map(|(len, seed, prepared)| Op::Text { len, seed, prepared }),
        4 => (data_len(big), any::<u64>(), any::<bool>(), prop::bool::weighted(0.2)).prop_map(
            |(len, seed, compressible, prepared)| Op::Binary { len, seed, compressible, prepared }
        ),
        1 => control_payload().prop_map(Op::Ping),
        1 => control_payload().prop_map(Op::Pong),
    ]
}

/// Sends `op` (as a prepared message when it says so).
fn send_op(end: &mut End, op: &Op) -> Result<(), SendError> {
    let message = op.message();
    if op.prepared() {
        let prepared = match message {
            Message::Text(t) => PreparedMessage::text(t),
            Message::Binary(b) => PreparedMessage::binary(b),
            _ => unreachable!("only data messages are prepared"),
        };
        end.send_prepared(&prepared)
    } else {
        end.send(message)
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration.

/// permessage-deflate as negotiated (the same parameters on both ends), with the sender's
/// threshold and level.
#[derive(Debug, Clone)]
struct Deflate {
    params: DeflateParams,
    threshold: usize,
    level: u32,
}

fn window_bits() -> impl Strategy<Value = Option<u8>> {
    prop_oneof![Just(None), (8u8..=15).prop_map(Some)]
}

fn deflate() -> impl Strategy<Value = Option<Deflate>> {
    prop_oneof![
        1 => Just(None),
        2 => (
            any::<bool>(),
            any::<bool>(),
            window_bits(),
            window_bits(),
            prop_oneof![Just(0usize), 1usize..200],
            0u32..=9,
        )
            .prop_map(|(snct, cnct, sbits, cbits, threshold, level)| {
                Some(Deflate {
                    params: DeflateParams::default()
                        .server_no_context_takeover(snct)
                        .client_no_context_takeover(cnct)
                        .server_max_window_bits(sbits)
                        .client_max_window_bits(cbits),
                    threshold,
                    level,
                })
            }),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Client), Just(Role::Server)]
}

/// A connection's configuration: `deflate`'s threshold and level, fragment size, limits.
fn config(deflate: &Option<Deflate>, fragment: Option<usize>) -> ProtocolConfig {
    ProtocolConfig::default()
        .fragment_size(fragment)
        .deflate(deflate.as_ref().map(|d| {
            DeflateConfig::default()
                .threshold(d.threshold)
                .level(d.level)
        }))
}

fn end(role: Role, config: ProtocolConfig, deflate: &Option<Deflate>, split: bool) -> End {
    End::new(role, config, deflate.as_ref().map(|d| d.params), split)
}

/// The sender's fragment size: none, tiny, small or large.
fn fragment() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        2 => Just(None),
        1 => (1usize..=16).prop_map(Some),
        1 => (17usize..=2000).prop_map(Some),
        1 => (2000usize..=100_000).prop_map(Some),
    ]
}

/// How the receiver gets the bytes: in reads of these sizes (cycled), through `handle_read` or
/// the read buffer.
#[derive(Debug, Clone)]
struct Delivery {
    chunks: Vec<usize>,
    buffered: bool,
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (
        prop::collection::vec(
            prop_oneof![1usize..=3, 1usize..=100, 1usize..=5000, 1usize..=400_000,],
            1..=5,
        ),
        any::<bool>(),
    )
        .prop_map(|(chunks, buffered)| Delivery { chunks, buffered })
}

/// Feeds `wire` to `end` as `delivery` says, polling events after every read; stops at the
/// first error. Returns the events and the error.
fn deliver(
    end: &mut End,
    wire: &[u8],
    delivery: &Delivery,
) -> (Vec<Message>, Option<ProtocolError>) {
    let mut events = Vec::new();
    let mut rest = wire;
    let mut sizes = delivery.chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().expect("at least one chunk size")).min(rest.len());
        let result = end.read(&rest[..n], delivery.buffered);
        events.extend(end.events());
        if let Err(e) = result {
            return (events, Some(e));
        }
        rest = &rest[n..];
    }
    (events, None)
}

// ---------------------------------------------------------------------------------------------
// Re-cutting a sender's frames.

/// How every data frame is cut again: into pieces of these sizes (cycled, at most 64 pieces per
/// frame, the rest in the last), with a ping injected after every `ping_every`-th piece that is
/// not the end of its message.
#[derive(Debug, Clone)]
struct Recut {
    sizes: Vec<usize>,
    ping_every: Option<usize>,
    seed: u64,
}

fn recut(pings: bool) -> impl Strategy<Value = Recut> {
    (
        prop::collection::vec(
            prop_oneof![0usize..=3, 0usize..=300, 0usize..=70_000],
            0..=6,
        ),
        if pings {
            prop::option::of(1usize..=4).boxed()
        } else {
            Just(None).boxed()
        },
        any::<u64>(),
    )
        .prop_map(|(sizes, ping_every, seed)| Recut {
            sizes,
            ping_every,
            seed,
        })
}

/// A frame boundary of a re-cut stream.
#[derive(Debug, Clone, Copy)]
struct Bound {
    /// Byte offset.
    at: usize,
    /// Events the receiver has seen at this point.
    events: usize,
    /// A fragmented data message is open.
    open: bool,
}

/// A stream of frames as a peer writes it, and what the receiver must make of it.
#[derive(Debug)]
struct Wire {
    bytes: Vec<u8>,
    /// Every frame boundary, the start of the stream included.
    bounds: Vec<Bound>,
    expected: Vec<Message>,
    /// For each message sent, how many events precede it.
    starts: Vec<usize>,
}

impl Wire {
    fn push(&mut self, frame: &RawFrame, open: bool) {
        self.bytes.extend_from_slice(&frame.encode());
        self.bounds.push(Bound {
            at: self.bytes.len(),
            events: self.expected.len(),
            open,
        });
    }
}

/// Re-encodes the frames a sender wrote for `messages`, each data frame cut as `cut` says (masked
/// with random keys if `masked`); the first frame of message `as_text` gets the text opcode.
fn recut_frames(
    frames: &[Decoded],
    messages: &[Message],
    masked: bool,
    cut: &Recut,
    as_text: Option<usize>,
) -> Wire {
    let mut rng = Rng::new(cut.seed);
    let key = |rng: &mut Rng| masked.then(|| rng.bytes(4).try_into().unwrap());
    let mut wire = Wire {
        bytes: Vec::new(),
        bounds: vec![Bound {
            at: 0,
            events: 0,
            open: false,
        }],
        expected: Vec::new(),
        starts: Vec::new(),
    };
    let mut sizes = cut.sizes.iter().cycle();
    let mut frames = frames.iter();
    let mut pieces = 0usize;
    let mut injected = 0usize;
    for (i, message) in messages.iter().enumerate() {
        wire.starts.push(wire.expected.len());
        if !message.is_data() {
            let f = frames.next().expect("a frame per control message");
            wire.expected.push(message.clone());
            let frame = RawFrame::new(f.opcode, &f.payload)
                .rsv(f.rsv)
                .mask(key(&mut rng));
            wire.push(&frame, false);
            continue;
        }
        let mut first = true;
        loop {
            let f = frames.next().expect("frames up to FIN");
            let mut rest = &f.payload[..];
            let mut n = 0;
            loop {
                let size = if cut.sizes.is_empty() || n >= 64 {
                    rest.len()
                } else {
                    (*sizes.next().unwrap()).min(rest.len())
                };
                let (piece, tail) = rest.split_at(size);
                rest = tail;
                n += 1;
                let last_piece = rest.is_empty();
                let fin = f.fin && last_piece;
                let (opcode, rsv) = match (first, as_text == Some(i)) {
                    (true, true) => (TEXT, f.rsv),
                    (true, false) => (f.opcode, f.rsv),
                    (false, _) => (CONT, 0),
                };
                first = false;
                if fin {
                    wire.expected.push(message.clone());
                }
                let frame = RawFrame::new(opcode, piece)
                    .fin(fin)
                    .rsv(rsv)
                    .mask(key(&mut rng));
                wire.push(&frame, !fin);
                pieces += 1;
                if let Some(every) = cut.ping_every
                    && !fin
                    && pieces.is_multiple_of(every)
                {
                    injected += 1;
                    let payload = format!("injected {injected}");
                    wire.expected
                        .push(Message::Ping(Bytes::from(payload.clone())));
                    wire.push(&RawFrame::new(PING, payload).mask(key(&mut rng)), true);
                }
                if last_piece {
                    break;
                }
            }
            if f.fin {
                break;
            }
        }
    }
    assert!(frames.next().is_none(), "frames left over");
    wire
}

// ---------------------------------------------------------------------------------------------
// Comparing messages without printing 256 KiB of them.

fn describe(m: &Message) -> String {
    let kind = match m {
        Message::Text(_) => "text",
        Message::Binary(_) => "binary",
        Message::Ping(_) => "ping",
        Message::Pong(_) => "pong",
        Message::Close(_) => return format!("{m:?}"),
    };
    let p = m.payload();
    format!(
        "{kind} of {} bytes starting {:?}",
        p.len(),
        &p[..p.len().min(16)]
    )
}

fn same_messages(what: &str, got: &[Message], want: &[Message]) -> TestResult {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if g != w {
            let at = g
                .payload()
                .iter()
                .zip(w.payload())
                .position(|(a, b)| a != b);
            return Err(TestCaseError::fail(format!(
                "{what}: event {i} is {} instead of {} (first differing byte: {at:?})",
                describe(g),
                describe(w)
            )));
        }
    }
    if got.len() != want.len() {
        return Err(TestCaseError::fail(format!(
            "{what}: {} events instead of {} (next got: {:?}, next expected: {:?})",
            got.len(),
            want.len(),
            got.get(want.len()).map(describe),
            want.get(got.len()).map(describe),
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 1. Messages arrive as sent.

#[derive(Debug, Clone)]
struct MessagesCase {
    sender: Role,
    deflate: Option<Deflate>,
    fragment: Option<usize>,
    short_writes: Option<usize>,
    ops: Vec<Op>,
    recut: Option<Recut>,
    delivery: Delivery,
    split: bool,
}

fn messages_case() -> impl Strategy<Value = MessagesCase> {
    (
        role(),
        deflate(),
        fragment(),
        prop::option::weighted(0.3, 1usize..=3000),
        prop::collection::vec(op(256 * 1024), 0..=10),
        prop::option::of(recut(true)),
        delivery(),
        any::<bool>(),
    )
        .prop_map(
            |(sender, deflate, fragment, short_writes, ops, recut, delivery, split)| MessagesCase {
                sender,
                deflate,
                fragment,
                short_writes,
                ops,
                recut,
                delivery,
                split,
            },
        )
}

/// Checks the frames a sender wrote: masked exactly when it is a client, data frames within the
/// fragment size, RSV1 only on the first frame of a message and only with permessage-deflate,
/// control frames whole and uncompressed, one message's frames together.
fn check_sender_frames(frames: &[Decoded], case: &MessagesCase) -> TestResult {
    let mut open = false;
    for f in frames {
        prop_assert_eq!(
            f.masked,
            case.sender == Role::Client,
            "masking of {:?}",
            f.opcode
        );
        match f.opcode {
            PING | PONG | CLOSE => {
                prop_assert!(f.fin && f.rsv == 0 && f.payload.len() <= 125);
                prop_assert!(!open, "a control frame inside a message sent with send()");
            }
            TEXT | BINARY | CONT => {
                prop_assert_eq!(f.opcode == CONT, open, "continuation state");
                if let Some(max) = case.fragment {
                    prop_assert!(f.payload.len() <= max, "frame over the fragment size");
                }
                let rsv1_ok = case.deflate.is_some() && f.opcode != CONT;
                prop_assert!(f.rsv == 0 || (f.rsv == 4 && rsv1_ok), "rsv {}", f.rsv);
                open = !f.fin;
            }
            other => prop_assert!(false, "opcode {other}"),
        }
    }
    prop_assert!(!open, "the last message is unfinished");
    Ok(())
}

fn run_messages(case: &MessagesCase) -> TestResult {
    let receiver_role = peer_of(case.sender);
    let mut sender = end(
        case.sender,
        config(&case.deflate, case.fragment),
        &case.deflate,
        false,
    );
    let mut receiver = end(
        receiver_role,
        config(&case.deflate, None),
        &case.deflate,
        case.split,
    );

    for op in &case.ops {
        send_op(&mut sender, op).map_err(|e| TestCaseError::fail(format!("send: {e}")))?;
    }
    let sent = sender.transmit(case.short_writes);
    let frames = decode_all(&sent);
    check_sender_frames(&frames, case)?;
    let messages: Vec<Message> = case.ops.iter().map(Op::message).collect();
    let (wire, expected) = match &case.recut {
        None => (sent, messages),
        Some(cut) => {
            let w = recut_frames(&frames, &messages, case.sender == Role::Client, cut, None);
            (w.bytes, w.expected)
        }
    };

    let (got, err) = deliver(&mut receiver, &wire, &case.delivery);
    prop_assert_eq!(err, None, "the receiver rejected valid input");
    same_messages("receiver", &got, &expected)?;
    prop_assert_eq!(receiver.state(), State::Open);

    // Every ping answered with a pong of the same payload, in order, masked by a client.
    let answers = decode_all(&receiver.transmit(None));
    let pings: Vec<&[u8]> = expected
        .iter()
        .filter(|m| matches!(m, Message::Ping(_)))
        .map(Message::payload)
        .collect();
    prop_assert_eq!(answers.len(), pings.len());
    for (answer, ping) in answers.iter().zip(&pings) {
        prop_assert_eq!(answer.opcode, PONG);
        prop_assert_eq!(answer.masked, receiver_role == Role::Client);
        prop_assert_eq!(&answer.payload[..], *ping);
    }
    // And the sender takes the pongs.
    let back = sender.read_all(&encode_frames(&answers, case.sender == Role::Server));
    prop_assert_eq!(back.1, None, "the sender rejected the pongs");
    let want: Vec<Message> = pings
        .iter()
        .map(|p| Message::Pong(Bytes::copy_from_slice(p)))
        .collect();
    same_messages("sender", &back.0, &want)?;
    Ok(())
}

/// Re-encodes decoded frames (masked towards a server).
fn encode_frames(frames: &[Decoded], masked: bool) -> Vec<u8> {
    frames
        .iter()
        .flat_map(|f| {
            let frame = RawFrame::new(f.opcode, &f.payload).fin(f.fin).rsv(f.rsv);
            if masked { frame.masked() } else { frame }.encode()
        })
        .collect()
}

impl End {
    /// Delivers `data` in one read; returns the events and the error.
    fn read_all(&mut self, data: &[u8]) -> (Vec<Message>, Option<ProtocolError>) {
        let result = self.read(data, false);
        (self.events(), result.err())
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// Property 1: whatever the messages, fragmentation, read boundaries, compression and role,
    /// the receiver sees exactly the sent messages in order and answers every ping.
    #[test]
    fn messages_arrive_as_sent(case in messages_case()) {
        run_messages(&case)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The close handshake completes from any state.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

impl Side {
    fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
        }
    }
}

#[derive(Debug, Clone)]
enum Step {
    /// The side sends a message (or a ping).
    Send(Side, Message),
    /// Up to this many bytes the side wrote reach its peer (in one read).
    Deliver(Side, usize),
    /// The side's application polls its events.
    Poll(Side),
    /// The side starts (or tries to start) the close handshake.
    Close(Side, Option<CloseFrame>),
}

#[derive(Debug, Clone, Copy)]
enum Closer {
    Client,
    Server,
    Both,
}

fn side() -> impl Strategy<Value = Side> {
    prop_oneof![Just(Side::Client), Just(Side::Server)]
}

fn small_message() -> impl Strategy<Value = Message> {
    let len = || {
        prop_oneof![
            3 => 0usize..126,
            2 => 126usize..3000,
            1 => 3000usize..70_000,
        ]
    };
    prop_oneof![
        3 => (len(), any::<u64>()).prop_map(|(l, s)| Message::text(text(l, s))),
        3 => (len(), any::<u64>(), any::<bool>())
            .prop_map(|(l, s, c)| Message::binary(binary(l, s, c))),
        1 => control_payload().prop_map(|p| Message::Ping(p.into())),
    ]
}

/// A valid close frame: none, or a sendable code with a reason of at most 123 bytes (often
/// exactly at the limit, cut at a character boundary).
fn close_frame() -> impl Strategy<Value = Option<CloseFrame>> {
    let code = prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999];
    prop_oneof![
        1 => Just(None),
        4 => (code, "[a-z0-9 éß€𝄞]{0,45}").prop_map(|(code, mut reason)| {
            let mut cut = reason.len().min(123);
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            Some(CloseFrame::new(CloseCode(code), reason))
        }),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (side(), small_message()).prop_map(|(s, m)| Step::Send(s, m)),
        4 => (side(), prop_oneof![1usize..=8, 1usize..=300, 1usize..=100_000])
            .prop_map(|(s, n)| Step::Deliver(s, n)),
        2 => side().prop_map(Step::Poll),
        1 => (side(), close_frame()).prop_map(|(s, f)| Step::Close(s, f)),
    ]
}

#[derive(Debug, Clone)]
struct CloseCase {
    deflate: Option<Deflate>,
    fragment: Option<usize>,
    split: [bool; 2],
    buffered: bool,
    steps: Vec<Step>,
    close_at: Index,
    closer: Closer,
    frames: [Option<CloseFrame>; 2],
}

fn close_case() -> impl Strategy<Value = CloseCase> {
    (
        deflate(),
        fragment(),
        any::<[bool; 2]>(),
        any::<bool>(),
        prop::collection::vec(step(), 0..40),
        any::<Index>(),
        prop_oneof![
            Just(Closer::Client),
            Just(Closer::Server),
            Just(Closer::Both)
        ],
        [close_frame(), close_frame()],
    )
        .prop_map(
            |(deflate, fragment, split, buffered, steps, close_at, closer, frames)| CloseCase {
                deflate,
                fragment,
                split,
                buffered,
                steps,
                close_at,
                closer,
                frames,
            },
        )
}

/// One side of the exchange and what it did.
#[derive(Debug)]
struct Peer {
    end: End,
    role: Role,
    /// Written, not yet delivered.
    in_flight: Vec<u8>,
    /// Everything it wrote.
    wire: Vec<u8>,
    /// Data messages and pings it sent successfully, in order.
    sent: Vec<Message>,
    /// The events it polled.
    got: Vec<Message>,
    /// The close frame it started the handshake with, if it did.
    initiated: Option<Option<CloseFrame>>,
}

impl Peer {
    fn flush(&mut self) {
        let bytes = self.end.transmit(None);
        self.in_flight.extend_from_slice(&bytes);
        self.wire.extend_from_slice(&bytes);
    }

    fn poll(&mut self) {
        let events = self.end.events();
        self.got.extend(events);
    }

    fn send(&mut self, message: &Message) -> TestResult {
        let open = self.end.state() == State::Open;
        let result = self.end.send(message.clone());
        if open {
            prop_assert_eq!(result, Ok(()));
            self.sent.push(message.clone());
        } else {
            prop_assert_eq!(result, Err(SendError::Closed));
        }
        Ok(())
    }

    fn close(&mut self, frame: &Option<CloseFrame>) -> TestResult {
        let open = self.end.state() == State::Open;
        prop_assert_eq!(self.end.close(frame.clone()), Ok(()));
        if open {
            self.initiated = Some(frame.clone());
            prop_assert_eq!(self.end.state(), State::CloseSent);
        }
        Ok(())
    }
}

/// Moves up to `n` bytes from `from`'s output to `to`.
fn deliver_some(from: &mut Peer, to: &mut Peer, n: usize, buffered: bool) -> TestResult {
    from.flush();
    let n = n.min(from.in_flight.len());
    if n == 0 {
        return Ok(());
    }
    let chunk: Vec<u8> = from.in_flight.drain(..n).collect();
    let result = to.end.read(&chunk, buffered);
    prop_assert_eq!(result, Ok(()), "{:?} rejected valid input", to.role);
    Ok(())
}

/// The close frame as it goes on the wire.
fn close_payload(frame: &Option<CloseFrame>) -> Vec<u8> {
    match frame {
        None => Vec::new(),
        Some(f) => {
            let mut p = f.code.0.to_be_bytes().to_vec();
            p.extend_from_slice(f.reason.as_bytes());
            p
        }
    }
}

fn run_close(case: &CloseCase) -> TestResult {
    let mut peers = [Role::Client, Role::Server].map(|role| {
        let split = case.split[usize::from(role == Role::Server)];
        Peer {
            end: end(
                role,
                config(&case.deflate, case.fragment),
                &case.deflate,
                split,
            ),
            role,
            in_flight: Vec::new(),
            wire: Vec::new(),
            sent: Vec::new(),
            got: Vec::new(),
            initiated: None,
        }
    });
    let mut steps = case.steps.clone();
    let at = case.close_at.index(steps.len() + 1);
    let [client_frame, server_frame] = case.frames.clone();
    match case.closer {
        Closer::Client => steps.insert(at, Step::Close(Side::Client, client_frame)),
        Closer::Server => steps.insert(at, Step::Close(Side::Server, server_frame)),
        Closer::Both => {
            steps.insert(at, Step::Close(Side::Server, server_frame));
            steps.insert(at, Step::Close(Side::Client, client_frame));
        }
    }

    for step in &steps {
        match step {
            Step::Send(s, m) => peers[s.index()].send(m)?,
            Step::Close(s, f) => peers[s.index()].close(f)?,
            Step::Poll(s) => peers[s.index()].poll(),
            Step::Deliver(s, n) => {
                let [client, server] = &mut peers;
                match s {
                    Side::Client => deliver_some(client, server, *n, case.buffered)?,
                    Side::Server => deliver_some(server, client, *n, case.buffered)?,
                }
            }
        }
    }
    // Let the exchange run its course.
    for _ in 0..8 {
        let [client, server] = &mut peers;
        deliver_some(client, server, usize::MAX, case.buffered)?;
        deliver_some(server, client, usize::MAX, case.buffered)?;
        client.poll();
        server.poll();
    }
    for p in &mut peers {
        p.flush();
    }

    for (x, y) in [(0, 1), (1, 0)] {
        let (me, peer) = (&peers[x], &peers[y]);
        let who = me.role;
        prop_assert_eq!(me.end.state(), State::Closed, "{:?}", who);
        prop_assert!(me.end.is_terminated());
        prop_assert!(
            me.in_flight.is_empty(),
            "{:?} still has bytes to deliver",
            who
        );

        // On the wire: masked by a client, one close frame, last.
        let frames = decode_all(&me.wire);
        for f in &frames {
            prop_assert_eq!(f.masked, who == Role::Client);
        }
        let closes = frames.iter().filter(|f| f.opcode == CLOSE).count();
        prop_assert_eq!(closes, 1, "{:?} sent {} close frames", who, closes);
        let last = frames.last().expect("a close frame");
        prop_assert_eq!(last.opcode, CLOSE, "{:?} sent a frame after its close", who);
        // Its own close frame if it started the handshake, else the echo of the peer's.
        let mine = match (&me.initiated, &peer.initiated) {
            (Some(f), _) | (None, Some(f)) => f.clone(),
            (None, None) => return Err(TestCaseError::fail("nobody closed")),
        };
        prop_assert_eq!(
            &last.payload,
            &close_payload(&mine),
            "{:?}'s close frame",
            who
        );

        // The peer saw it as its last event, after everything sent before it.
        let Some((last_event, before)) = peer.got.split_last() else {
            return Err(TestCaseError::fail(format!("{:?} saw no close", peer.role)));
        };
        prop_assert_eq!(
            last_event,
            &Message::Close(mine),
            "{:?}'s last event",
            peer.role
        );
        let (pongs, rest): (Vec<Message>, Vec<Message>) = before
            .iter()
            .cloned()
            .partition(|m| matches!(m, Message::Pong(_)));
        same_messages("data and pings before the close", &rest, &me.sent)?;
        // Pongs answer the peer's own pings, in order, as long as `me` was open.
        let peer_pings: Vec<Message> = peer
            .sent
            .iter()
            .filter_map(|m| match m {
                Message::Ping(p) => Some(Message::Pong(p.clone())),
                _ => None,
            })
            .take(pongs.len())
            .collect();
        same_messages("pongs", &pongs, &peer_pings)?;
    }

    // Nothing after the close is delivered, answered or sent.
    for p in &mut peers {
        let late = RawFrame::new(TEXT, "late");
        let late = if p.role == Role::Server {
            late.masked()
        } else {
            late
        }
        .encode();
        prop_assert_eq!(p.end.read(&late, case.buffered), Ok(()));
        prop_assert_eq!(p.end.events(), Vec::<Message>::new());
        prop_assert_eq!(p.end.transmit(None), Vec::<u8>::new());
        prop_assert_eq!(p.end.send(Message::text("late")), Err(SendError::Closed));
    }
    Ok(())
}

proptest! {
    #![proptest_config(cases(768))]

    /// Property 2: a close started by either side or both, at any point of an exchange, completes.
    #[test]
    fn close_handshake_completes_from_any_state(case in close_case()) {
        run_close(&case)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Hostile input.

/// A receiver's configuration for hostile input: role, compression, limits.
#[derive(Debug, Clone)]
struct Receiver {
    role: Role,
    deflate: Option<Deflate>,
    max_message: usize,
    max_frame: Option<usize>,
    split: bool,
}

fn receiver() -> impl Strategy<Value = Receiver> {
    (
        role(),
        deflate(),
        prop_oneof![Just(1usize << 20), 1usize..=4096],
        prop::option::weighted(0.2, 1usize..=2048),
        any::<bool>(),
    )
        .prop_map(|(role, deflate, max_message, max_frame, split)| Receiver {
            role,
            deflate,
            max_message,
            max_frame,
            split,
        })
}

impl Receiver {
    fn end(&self) -> End {
        let config = config(&self.deflate, None)
            .max_message_size(self.max_message)
            .max_frame_size(self.max_frame);
        end(self.role, config, &self.deflate, self.split)
    }
}

/// Checks what a receiver did with hostile input: events within the limits; on an error, the
/// connection failed with a close frame carrying the error's code (1002, 1007 or 1009), after
/// nothing but pongs, and ignores all later input; without one, it is open or closed and wrote
/// nothing but pongs and the echo of a close frame.
fn check_hostile(
    end: &mut End,
    r: &Receiver,
    events: &[Message],
    err: Option<&ProtocolError>,
    buffered: bool,
) -> TestResult {
    for e in events {
        let max = if e.is_data() { r.max_message } else { 125 };
        prop_assert!(e.payload().len() <= max, "{} over the limit", describe(e));
    }
    let closed = events.iter().any(|m| matches!(m, Message::Close(_)));
    let out = decode_all(&end.transmit(None));
    for f in &out {
        prop_assert_eq!(f.masked, r.role == Role::Client);
        prop_assert!(f.fin && f.rsv == 0);
    }
    let (last, before) = match out.split_last() {
        Some((last, before)) if last.opcode == CLOSE => (Some(last), before),
        _ => (None, &out[..]),
    };
    prop_assert!(
        before.iter().all(|f| f.opcode == PONG),
        "only pongs before the close frame"
    );
    match err {
        Some(e) => {
            let code = e.close_code().0;
            prop_assert!(matches!(code, 1002 | 1007 | 1009), "{e:?} has code {code}");
            prop_assert!(!closed, "an error after the close frame");
            prop_assert_eq!(end.state(), State::Failed);
            prop_assert!(end.is_terminated());
            let close = last.expect("a close frame after an error");
            prop_assert_eq!(close.close_code(), Some(code));
            prop_assert!(std::str::from_utf8(&close.payload[2..]).is_ok());
        }
        None if closed => {
            prop_assert_eq!(end.state(), State::Closed);
            prop_assert!(last.is_some(), "the close frame is echoed");
        }
        None => {
            prop_assert_eq!(end.state(), State::Open);
            prop_assert!(last.is_none());
        }
    }
    if err.is_some() || closed {
        // Everything after the end is ignored.
        let late = RawFrame::new(PING, "late");
        let late = if r.role == Role::Server {
            late.masked()
        } else {
            late
        }
        .encode();
        prop_assert_eq!(end.read(&late, buffered), Ok(()));
        prop_assert_eq!(end.events(), Vec::<Message>::new());
        prop_assert_eq!(end.transmit(None), Vec::<u8>::new());
    }
    Ok(())
}

/// A frame with random header bits, usually masked as the receiver expects.
fn random_frame(receiver_role: Role) -> impl Strategy<Value = Vec<u8>> {
    (
        prop_oneof![
            6 => prop::sample::select(vec![CONT, TEXT, BINARY, CLOSE, PING, PONG]),
            1 => 0u8..16,
        ],
        prop::bool::weighted(0.8),
        prop_oneof![6 => Just(0u8), 1 => 0u8..8],
        prop::bool::weighted(0.9),
        prop::collection::vec(any::<u8>(), 0..300),
        prop::option::weighted(0.1, any::<u64>()),
    )
        .prop_map(move |(opcode, fin, rsv, mask_right, payload, declared)| {
            let masked = (receiver_role == Role::Server) == mask_right;
            let mut frame = RawFrame::new(opcode, payload).fin(fin).rsv(rsv);
            if masked {
                frame = frame.masked();
            }
            if let Some(len) = declared {
                frame = frame.declared_len(len % 100_000);
            }
            frame.encode()
        })
}

#[derive(Debug, Clone)]
enum Mutation {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, bit)| Mutation::Flip(i, bit)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        1 => (any::<Index>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        1 => (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
    ]
}

fn mutate(bytes: &mut Vec<u8>, m: &Mutation) {
    if bytes.is_empty() {
        return;
    }
    match m {
        Mutation::Flip(i, bit) => {
            let at = i.index(bytes.len());
            bytes[at] ^= 1 << bit;
        }
        Mutation::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Mutation::Insert(i, b) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, b.iter().copied());
        }
        Mutation::Delete(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

/// Hostile input: random bytes, random frames, or a valid stream mutated.
#[derive(Debug, Clone)]
enum Hostile {
    Bytes(Vec<u8>),
    Frames(Vec<Vec<u8>>),
    Mutated {
        ops: Vec<Op>,
        fragment: Option<usize>,
        mutations: Vec<Mutation>,
    },
}

fn hostile_case() -> impl Strategy<Value = (Receiver, Hostile, Delivery)> {
    (receiver(), delivery()).prop_flat_map(|(r, d)| {
        let input = prop_oneof![
            1 => prop::collection::vec(any::<u8>(), 0..2048).prop_map(Hostile::Bytes),
            2 => prop::collection::vec(random_frame(r.role), 0..12).prop_map(Hostile::Frames),
            4 => (
                prop::collection::vec(op(20_000), 1..8),
                fragment(),
                prop::collection::vec(mutation(), 1..4),
            )
                .prop_map(|(ops, fragment, mutations)| Hostile::Mutated {
                    ops,
                    fragment,
                    mutations,
                }),
        ];
        (Just(r), input, Just(d))
    })
}

fn run_hostile(r: &Receiver, input: &Hostile, d: &Delivery) -> TestResult {
    let bytes = match input {
        Hostile::Bytes(b) => b.clone(),
        Hostile::Frames(frames) => frames.concat(),
        Hostile::Mutated {
            ops,
            fragment,
            mutations,
        } => {
            let mut sender = end(
                peer_of(r.role),
                config(&r.deflate, *fragment),
                &r.deflate,
                false,
            );
            for op in ops {
                send_op(&mut sender, op).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            let mut bytes = sender.transmit(None);
            for m in mutations {
                mutate(&mut bytes, m);
            }
            bytes
        }
    };
    let mut receiver = r.end();
    let (events, err) = deliver(&mut receiver, &bytes, d);
    check_hostile(&mut receiver, r, &events, err.as_ref(), d.buffered)
}

proptest! {
    #![proptest_config(cases(2048))]

    /// Property 3: hostile input never panics; it keeps going or fails with 1002/1007/1009.
    #[test]
    fn hostile_input_fails_cleanly_or_keeps_going((r, input, d) in hostile_case()) {
        run_hostile(&r, &input, &d)?;
    }
}

// ---------------------------------------------------------------------------------------------
// 3b. Targeted violations, with the exact error and code.

/// A valid stream towards a receiver: small messages from a real sender, re-cut.
#[derive(Debug, Clone)]
struct Stream {
    receiver: Role,
    deflate: Option<Deflate>,
    fragment: Option<usize>,
    ops: Vec<Op>,
    recut: Recut,
    delivery: Delivery,
    split: bool,
}

fn stream(big: usize) -> impl Strategy<Value = Stream> {
    (
        role(),
        deflate(),
        fragment(),
        prop::collection::vec(op(big), 0..6),
        recut(false),
        delivery(),
        any::<bool>(),
    )
        .prop_map(
            |(receiver, deflate, fragment, ops, recut, delivery, split)| Stream {
                receiver,
                deflate,
                fragment,
                ops,
                recut,
                delivery,
                split,
            },
        )
}

impl Stream {
    /// The wire: `extra` (if any) sent after the stream's messages, with message `as_text` sent
    /// with the text opcode.
    fn wire(&self, extra: Option<Message>, as_text: Option<usize>) -> Result<Wire, TestCaseError> {
        let mut sender = end(
            peer_of(self.receiver),
            config(&self.deflate, self.fragment),
            &self.deflate,
            false,
        );
        let mut messages = Vec::new();
        for op in &self.ops {
            send_op(&mut sender, op).map_err(|e| TestCaseError::fail(e.to_string()))?;
            messages.push(op.message());
        }
        if let Some(m) = extra {
            sender
                .send(m.clone())
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            messages.push(m);
        }
        let frames = decode_all(&sender.transmit(None));
        let masked = self.receiver == Role::Server;
        Ok(recut_frames(
            &frames,
            &messages,
            masked,
            &self.recut,
            as_text,
        ))
    }

    /// Feeds `bytes` to a receiver with `config`; checks that it delivers `expected` and fails
    /// with `want`.
    fn expect_failure(
        &self,
        config: ProtocolConfig,
        bytes: &[u8],
        expected: &[Message],
        want: impl Fn(&ProtocolError) -> bool,
        code: u16,
    ) -> TestResult {
        let mut receiver = end(self.receiver, config.clone(), &self.deflate, self.split);
        let (events, err) = deliver(&mut receiver, bytes, &self.delivery);
        same_messages("before the failure", &events, expected)?;
        let err = err.ok_or_else(|| TestCaseError::fail("no error"))?;
        prop_assert!(want(&err), "unexpected error {:?}", err);
        prop_assert_eq!(err.close_code().0, code);
        let r = Receiver {
            role: self.receiver,
            deflate: self.deflate.clone(),
            max_message: config.max_message_size,
            max_frame: config.max_frame_size,
            split: self.split,
        };
        check_hostile(
            &mut receiver,
            &r,
            &events,
            Some(&err),
            self.delivery.buffered,
        )
    }
}

/// Byte sequences that are never valid UTF-8 (the last one only at the end of a message).
const BAD_UTF8: [&[u8]; 7] = [
    b"\xff",
    b"\x80",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82a",
    b"\xf0\x9d\x84",
];

/// A protocol violation to inject between two frames.
#[derive(Debug, Clone, Copy)]
enum Violation {
    ReservedOpcode(u8),
    ReservedBits(u8),
    WrongMask,
    /// A continuation frame outside a message, or a new message inside one.
    OutOfSequence,
    ControlTooLong(usize),
    FragmentedControl,
    CloseOneByte,
    CloseCode(u16),
    CloseReason,
    /// RSV1 on a control frame.
    CompressedControl,
    /// RSV1 on a continuation frame.
    CompressedContinuation,
    LengthTopBit,
}

fn violation() -> impl Strategy<Value = Violation> {
    prop_oneof![
        prop::sample::select(vec![3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf])
            .prop_map(Violation::ReservedOpcode),
        prop::sample::select(vec![1u8, 2, 3, 5, 6, 7]).prop_map(Violation::ReservedBits),
        Just(Violation::WrongMask),
        Just(Violation::OutOfSequence),
        (126usize..=300).prop_map(Violation::ControlTooLong),
        Just(Violation::FragmentedControl),
        Just(Violation::CloseOneByte),
        prop_oneof![
            0u16..1000,
            Just(1004u16),
            Just(1005u16),
            Just(1006u16),
            1015u16..3000,
            5000u16..=u16::MAX
        ]
        .prop_map(Violation::CloseCode),
        Just(Violation::CloseReason),
        Just(Violation::CompressedControl),
        Just(Violation::CompressedContinuation),
        Just(Violation::LengthTopBit),
    ]
}

impl Violation {
    /// The frame, as a peer of a `receiver` sends it with a message `open` or not, and the error.
    fn frame(self, receiver: Role, open: bool, deflate: bool) -> (Vec<u8>, ProtocolError, u16) {
        use ProtocolError as E;
        let ping = RawFrame::new(PING, "x");
        let (frame, err) = match self {
            Violation::ReservedOpcode(op) => (RawFrame::new(op, "x"), E::ReservedOpcode(op)),
            Violation::ReservedBits(rsv) => (ping.rsv(rsv), E::ReservedBits(rsv)),
            Violation::WrongMask => {
                let err = match receiver {
                    Role::Server => E::UnmaskedFrame,
                    Role::Client => E::MaskedFrame,
                };
                return (from_wrong_side(receiver, ping), err, 1002);
            }
            Violation::OutOfSequence if open => {
                (RawFrame::new(BINARY, "x"), E::ExpectedContinuation)
            }
            Violation::OutOfSequence => (RawFrame::new(CONT, "x"), E::UnexpectedContinuation),
            Violation::ControlTooLong(n) => {
                (RawFrame::new(PING, vec![0; n]), E::ControlFrameTooLong(126))
            }
            Violation::FragmentedControl => (ping.fin(false), E::FragmentedControlFrame),
            Violation::CloseOneByte => (RawFrame::new(CLOSE, [3]), E::InvalidClosePayload),
            Violation::CloseCode(c) => (
                RawFrame::new(CLOSE, c.to_be_bytes()),
                E::InvalidCloseCode(c),
            ),
            Violation::CloseReason => (
                RawFrame::new(CLOSE, b"\x03\xe8ok\xff"),
                E::InvalidCloseReason,
            ),
            Violation::CompressedControl => (
                ping.rsv(4),
                if deflate {
                    E::CompressedControlFrame
                } else {
                    E::ReservedBits(4)
                },
            ),
            Violation::CompressedContinuation => (
                RawFrame::new(CONT, "x").rsv(4),
                if deflate {
                    E::CompressedContinuation
                } else {
                    E::ReservedBits(4)
                },
            ),
            Violation::LengthTopBit => (
                RawFrame::new(if open { CONT } else { BINARY }, "")
                    .len_form(127)
                    .declared_len(1 << 63),
                E::InvalidLength,
            ),
        };
        let code = err.close_code().0;
        let frame = if receiver == Role::Server {
            frame.masked()
        } else {
            frame
        };
        (frame.encode(), err, code)
    }
}

/// A frame masked the wrong way for `receiver`.
fn from_wrong_side(receiver: Role, frame: RawFrame) -> Vec<u8> {
    match receiver {
        Role::Server => frame.mask(None).encode(),
        Role::Client => frame.masked().encode(),
    }
}

/// An oversized message: length over the limit, text or binary, compressible or not.
#[derive(Debug, Clone)]
struct TooBig {
    max: usize,
    over: usize,
    text: bool,
    seed: u64,
    compressible: bool,
}

fn too_big() -> impl Strategy<Value = TooBig> {
    (
        1usize..=3000,
        1usize..=4000,
        any::<bool>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(max, over, text, seed, compressible)| TooBig {
            max,
            over,
            text,
            seed,
            compressible,
        })
}

proptest! {
    #![proptest_config(cases(256))]

    /// Invalid UTF-8 anywhere in a text message (fragmented, compressed or not, read in any
    /// pieces) fails with InvalidUtf8 and 1007 after the messages before it.
    #[test]
    fn invalid_utf8_fails_with_1007(
        s in stream(70_000),
        len in 0usize..5000,
        seed: u64,
        at: Index,
        bad in prop::sample::select(BAD_UTF8.to_vec()),
    ) {
        let valid = text(len, seed);
        let mut cut = at.index(valid.len() + 1);
        while !valid.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = valid.as_bytes()[..cut].to_vec();
        payload.extend_from_slice(bad);
        if bad != b"\xf0\x9d\x84" {
            payload.extend_from_slice(&valid.as_bytes()[cut..]);
        }
        let wire = s.wire(Some(Message::binary(payload)), Some(s.ops.len()))?;
        let before = &wire.expected[..wire.starts[s.ops.len()]];
        s.expect_failure(
            config(&s.deflate, None),
            &wire.bytes,
            before,
            |e| *e == ProtocolError::InvalidUtf8,
            1007,
        )?;
    }

    /// A message over the limit (on the wire or once inflated) fails with 1009 after the
    /// messages before it.
    #[test]
    fn oversized_message_fails_with_1009(s in stream(3000), big in too_big()) {
        let max = big.max.max(
            s.ops.iter().map(|op| op.message().payload().len()).max().unwrap_or(0),
        );
        let len = max + big.over;
        let message = if big.text {
            Message::text(text(len, big.seed))
        } else {
            Message::binary(binary(len, big.seed, big.compressible))
        };
        let wire = s.wire(Some(message), None)?;
        let before = &wire.expected[..wire.starts[s.ops.len()]];
        s.expect_failure(
            config(&s.deflate, None).max_message_size(max),
            &wire.bytes,
            before,
            |e| matches!(e, ProtocolError::MessageTooLarge { .. } | ProtocolError::FrameTooLarge { .. }),
            1009,
        )?;
    }

    /// Every kind of protocol violation, injected at any frame boundary of a valid stream, fails
    /// with its own error and code after the messages before it.
    #[test]
    fn protocol_violations_fail_with_their_code(
        s in stream(70_000),
        at: Index,
        v in violation(),
    ) {
        let wire = s.wire(None, None)?;
        let bound = wire.bounds[at.index(wire.bounds.len())];
        let (frame, err, code) = v.frame(s.receiver, bound.open, s.deflate.is_some());
        let mut bytes = wire.bytes.clone();
        bytes.splice(bound.at..bound.at, frame);
        s.expect_failure(
            config(&s.deflate, None),
            &bytes,
            &wire.expected[..bound.events],
            |e| *e == err,
            code,
        )?;
    }
}
