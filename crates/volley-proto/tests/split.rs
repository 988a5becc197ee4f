//! A connection split into its receive and send halves: the halves used apart (and on two
//! threads), replies from the receiver applied to the sender, and the split pair behaving exactly
//! as the unsplit connection.

mod common;

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use common::{
    BINARY, CLOSE, PING, RawFrame, Rng, TEXT, cframe, close_payload, decode_all, drain_transmit,
    events,
};
use volley_proto::{
    CloseCode, CloseFrame, Connection, DeflateConfig, DeflateParams, Message, ProtocolConfig,
    ProtocolError, RecvHalf, Reply, Role, SendError, SendHalf, State,
};

/// A split connection driven as [`RecvHalf`] asks: replies drained into the send half after every
/// read and every event.
struct Split {
    recv: RecvHalf,
    send: SendHalf,
}

impl Split {
    fn new(conn: Connection) -> Self {
        let (recv, send) = conn.split();
        Self { recv, send }
    }

    /// Applies every reply the receive half holds; returns how many there were.
    fn apply_replies(&mut self) -> usize {
        let mut n = 0;
        while let Some(reply) = self.recv.poll_reply() {
            self.send.handle_reply(reply);
            n += 1;
        }
        n
    }

    fn read(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        let result = self.recv.handle_read(data);
        self.apply_replies();
        result
    }

    fn event(&mut self) -> Option<Message> {
        let event = self.recv.poll_event();
        self.apply_replies();
        event
    }

    fn events(&mut self) -> Vec<Message> {
        std::iter::from_fn(|| self.event()).collect()
    }

    fn transmit(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(b) = self.send.poll_transmit() {
            out.extend_from_slice(&b);
        }
        assert_eq!(self.send.pending_transmit(), 0);
        out
    }
}

/// Delivers `bytes` to `to` in random-sized reads, collecting its events.
fn deliver(bytes: &[u8], to: &mut Split, rng: &mut Rng, got: &mut Vec<Message>) {
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = (1 + rng.below(4096)).min(rest.len());
        to.read(&rest[..n]).expect("no protocol error");
        got.extend(to.events());
        rest = &rest[n..];
    }
}

fn random_message(rng: &mut Rng, i: usize) -> Message {
    let len = match rng.below(10) {
        0 => 0,
        1..=5 => rng.below(126),
        6..=8 => rng.below(70_000),
        _ => 200_000 + rng.below(100_000),
    };
    if rng.below(2) == 0 {
        let words = ["alpha ", "beta ", "é", "€", "𝄞", "gamma delta "];
        let mut s = format!("#{i} ");
        while s.len() < len {
            s.push_str(words[rng.below(words.len())]);
        }
        Message::text(s)
    } else if rng.below(2) == 0 {
        Message::binary(rng.bytes(len))
    } else {
        // Compressible, with matches far back (and, without context takeover, in the messages
        // before): a decoder with the wrong window or context fails on these.
        let block_len = 600 + rng.below(1400);
        let block = rng.bytes(block_len);
        Message::binary(block.repeat(1 + len / block.len().max(1)))
    }
}

/// Asymmetric permessage-deflate parameters: each direction inflated with the other one's window
/// or context takeover setting fails on [`random_message`]'s repeats.
fn asymmetric_deflate() -> DeflateParams {
    DeflateParams::default()
        .client_max_window_bits(Some(9))
        .client_no_context_takeover(true)
}

fn run_split_pair(deflate: Option<DeflateParams>, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut client = Split::new(Connection::with_deflate(
        Role::Client,
        ProtocolConfig::default(),
        deflate,
    ));
    let mut server = Split::new(Connection::with_deflate(
        Role::Server,
        ProtocolConfig::default(),
        deflate,
    ));
    for half in [client.recv.deflate(), client.send.deflate()] {
        assert_eq!(half, deflate.as_ref());
    }
    assert_eq!(server.recv.deflate(), server.send.deflate());

    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut got_by_server, mut got_by_client) = (Vec::new(), Vec::new());
    let (mut pings_to_server, mut pings_to_client) = (Vec::new(), Vec::new());
    let mut wire_bytes = 0;
    for i in 0..150 {
        let m = random_message(&mut rng, i);
        let (from, sent, pings) = if rng.below(2) == 0 {
            (&mut client, &mut to_server, &mut pings_to_server)
        } else {
            (&mut server, &mut to_client, &mut pings_to_client)
        };
        from.send.send(m.clone()).unwrap();
        sent.push(m);
        if rng.below(5) == 0 {
            let len = rng.below(126);
            let payload = Bytes::from(rng.bytes(len));
            from.send.send(Message::Ping(payload.clone())).unwrap();
            pings.push(payload);
        }
        if rng.below(3) == 0 {
            let bytes = client.transmit();
            wire_bytes += bytes.len();
            deliver(&bytes, &mut server, &mut rng, &mut got_by_server);
            let bytes = server.transmit();
            wire_bytes += bytes.len();
            deliver(&bytes, &mut client, &mut rng, &mut got_by_client);
        }
    }
    // Twice: the pongs to the last pings go out after the first round.
    for _ in 0..2 {
        let bytes = client.transmit();
        wire_bytes += bytes.len();
        deliver(&bytes, &mut server, &mut rng, &mut got_by_server);
        let bytes = server.transmit();
        wire_bytes += bytes.len();
        deliver(&bytes, &mut client, &mut rng, &mut got_by_client);
    }

    for (got, sent, pings_received, pings_sent) in [
        (
            &got_by_server,
            &to_server,
            &pings_to_server,
            &pings_to_client,
        ),
        (
            &got_by_client,
            &to_client,
            &pings_to_client,
            &pings_to_server,
        ),
    ] {
        let data: Vec<&Message> = got.iter().filter(|m| m.is_data()).collect();
        assert_eq!(data.len(), sent.len());
        for (i, (got, sent)) in data.iter().zip(sent).enumerate() {
            assert!(*got == sent, "message {i} differs");
        }
        let pings: Vec<&[u8]> = got
            .iter()
            .filter(|m| matches!(m, Message::Ping(_)))
            .map(Message::payload)
            .collect();
        let pongs: Vec<&[u8]> = got
            .iter()
            .filter(|m| matches!(m, Message::Pong(_)))
            .map(Message::payload)
            .collect();
        assert_eq!(
            pings,
            pings_received.iter().map(|p| &p[..]).collect::<Vec<_>>()
        );
        // Every ping this side sent was answered, in order.
        assert_eq!(pongs, pings_sent.iter().map(|p| &p[..]).collect::<Vec<_>>());
    }
    let total: usize = to_server
        .iter()
        .chain(&to_client)
        .map(|m| m.payload().len())
        .sum();
    if deflate.is_some() {
        assert!(
            wire_bytes < total * 9 / 10,
            "{wire_bytes} bytes on the wire for {total} bytes of messages: not compressed?"
        );
    } else {
        assert!(wire_bytes > total);
    }

    // Clean close, initiated by the client's send half.
    client
        .send
        .close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")))
        .unwrap();
    assert_eq!(client.send.state(), State::CloseSent);
    let bye = Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "bye")));
    let mut got = Vec::new();
    deliver(&client.transmit(), &mut server, &mut rng, &mut got);
    assert_eq!(got, std::slice::from_ref(&bye));
    assert_eq!(server.send.state(), State::Closed);
    assert!(server.recv.is_terminated());
    let mut got = Vec::new();
    deliver(&server.transmit(), &mut client, &mut rng, &mut got);
    assert_eq!(got, [bye]);
    assert_eq!(client.send.state(), State::Closed);
    assert!(client.recv.is_terminated());
    assert_eq!(client.transmit(), b"");
    assert_eq!(server.transmit(), b"");
}

#[test]
fn split_pair_exchanges_messages_and_pings_and_closes_cleanly() {
    run_split_pair(None, 11);
}

#[test]
fn split_pair_with_deflate_each_direction_its_own_codec() {
    run_split_pair(Some(asymmetric_deflate()), 12);
    let no_context_takeover = DeflateParams::default()
        .server_no_context_takeover(true)
        .client_no_context_takeover(true);
    run_split_pair(Some(no_context_takeover), 13);
}

fn split_server() -> Split {
    Split::new(Connection::new(Role::Server, ProtocolConfig::default()))
}

#[test]
fn pings_are_answered_through_replies_in_order() {
    let mut s = split_server();
    let mut input = cframe(PING, "one");
    input.extend(cframe(PING, "two"));
    s.recv.handle_read(&input).unwrap();
    // The receive half touched nothing of the send half.
    assert_eq!(s.send.pending_transmit(), 0);
    let first = s.recv.poll_reply().expect("a reply for the first ping");
    let second = s.recv.poll_reply().expect("a reply for the second ping");
    assert!(s.recv.poll_reply().is_none());
    s.send.handle_reply(first);
    s.send.handle_reply(second);
    let frames = decode_all(&s.transmit());
    let pongs: Vec<(u8, &[u8])> = frames.iter().map(|f| (f.opcode, &f.payload[..])).collect();
    assert_eq!(pongs, [(0xA, &b"one"[..]), (0xA, &b"two"[..])]);
    assert_eq!(
        s.events(),
        [Message::Ping("one".into()), Message::Ping("two".into())]
    );
    assert_eq!(s.send.state(), State::Open);

    // After our close frame, pings are still reported but no longer answered.
    s.send.close(None).unwrap();
    assert_eq!(decode_all(&s.transmit())[0].opcode, CLOSE);
    s.read(&cframe(PING, "late")).unwrap();
    assert_eq!(s.events(), [Message::Ping("late".into())]);
    assert_eq!(s.transmit(), b"");
    assert_eq!(s.send.state(), State::CloseSent);
}

#[test]
fn receive_half_reads_into_its_own_buffer() {
    let mut s = split_server();
    let mut input = cframe(PING, "buffered");
    let message = cframe(BINARY, vec![5; 100_000]);
    input.extend_from_slice(&message[..50_000]);
    s.recv.read_buffer().extend_from_slice(&input);
    s.recv.handle_buffered().unwrap();
    // The message's payload collects in the buffer: the rest is what one read should bring.
    assert_eq!(s.recv.read_hint(), message.len() - 50_000);
    assert_eq!(s.send.pending_transmit(), 0);
    assert_eq!(s.apply_replies(), 1);
    assert_eq!(decode_all(&s.transmit())[0].payload, b"buffered");
    s.recv.read_buffer().extend_from_slice(&message[50_000..]);
    s.recv.handle_buffered().unwrap();
    assert_eq!(s.recv.read_hint(), 0);
    assert_eq!(
        s.events(),
        [
            Message::Ping("buffered".into()),
            Message::binary(vec![5; 100_000])
        ]
    );
    s.recv.release_idle_buffers();
    assert!(s.recv.read_buffer_released());
}

#[test]
fn peer_close_is_echoed_by_the_send_half_once_the_reply_is_applied() {
    let mut s = split_server();
    s.recv
        .handle_read(&cframe(CLOSE, close_payload(1000, b"bye")))
        .unwrap();
    let bye = CloseFrame::new(CloseCode::NORMAL, "bye");
    assert_eq!(s.recv.poll_event(), Some(Message::Close(Some(bye.clone()))));
    assert!(s.recv.is_terminated());
    // Until the reply is applied, the send half knows nothing of it.
    assert_eq!(s.send.state(), State::Open);
    assert_eq!(s.send.pending_transmit(), 0);
    assert_eq!(s.apply_replies(), 1);
    assert_eq!(s.send.state(), State::Closed);
    let frames = decode_all(&s.transmit());
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].opcode, CLOSE);
    assert_eq!(frames[0].payload, close_payload(1000, b"bye"));
    assert_eq!(
        s.send.send(Message::text("too late")),
        Err(SendError::Closed)
    );
    // Input after the close is ignored.
    assert_eq!(s.read(&cframe(TEXT, "ignored")), Ok(()));
    assert_eq!(s.events(), []);
    assert_eq!(s.transmit(), b"");
}

#[test]
fn close_started_by_the_send_half_alone() {
    let mut rng = Rng::new(21);
    let mut s = split_server();
    let mut client = Connection::new(Role::Client, ProtocolConfig::default());
    // The client sends data before it sees the close; the server still receives it.
    client.send(Message::binary(vec![1, 2, 3])).unwrap();

    let restart = CloseFrame::new(CloseCode::GOING_AWAY, "restart");
    s.send.close(Some(restart.clone())).unwrap();
    assert_eq!(s.send.state(), State::CloseSent);
    assert!(!s.recv.is_terminated());
    // A second close does nothing.
    s.send.close(None).unwrap();
    let ours = s.transmit();
    assert_eq!(decode_all(&ours).len(), 1);

    let mut got = Vec::new();
    deliver(&drain_transmit(&mut client), &mut s, &mut rng, &mut got);
    assert_eq!(got, [Message::binary(vec![1, 2, 3])]);
    client.handle_read(&ours).unwrap();
    assert_eq!(events(&mut client), [Message::Close(Some(restart.clone()))]);
    assert_eq!(client.state(), State::Closed);

    let mut got = Vec::new();
    deliver(&drain_transmit(&mut client), &mut s, &mut rng, &mut got);
    assert_eq!(got, [Message::Close(Some(restart))]);
    assert_eq!(s.send.state(), State::Closed);
    // Our close frame was sent already: no echo.
    assert_eq!(s.transmit(), b"");
}

/// Three data messages and a ping, and behind them in the same read `end`; the application
/// answers each message as it polls it. Returns the split connection, what the read returned, the
/// last event (if it is not a data message or the ping) and everything written.
fn answer_messages_then(
    end: &[u8],
) -> (Split, Result<(), ProtocolError>, Option<Message>, Vec<u8>) {
    let mut s = split_server();
    let mut input = cframe(TEXT, "a");
    input.extend(cframe(BINARY, [1]));
    input.extend(cframe(PING, "p"));
    input.extend(cframe(TEXT, "c"));
    input.extend(end);
    let result = s.recv.handle_read(&input);
    assert!(s.recv.is_terminated());
    // The ping's reply is there; the end's is not, yet.
    assert_eq!(s.apply_replies(), 1);
    assert_eq!(s.send.state(), State::Open);
    let mut last = None;
    while let Some(event) = s.event() {
        if event.is_data() {
            assert_eq!(s.send.state(), State::Open, "ended before {event:?}");
            s.send
                .send(Message::binary(event.payload().to_vec()))
                .unwrap();
        } else if !matches!(event, Message::Ping(_)) {
            last = Some(event);
        }
    }
    let out = s.transmit();
    (s, result, last, out)
}

#[test]
fn failure_behind_unpolled_messages_goes_out_after_their_replies() {
    let bad = RawFrame::new(TEXT, "x").rsv(0b010).masked().encode();
    let (s, result, last, out) = answer_messages_then(&bad);
    assert_eq!(result, Err(ProtocolError::ReservedBits(0b010)));
    assert_eq!(last, None);
    assert_eq!(s.send.state(), State::Failed);
    let frames = decode_all(&out);
    let summary: Vec<(u8, Vec<u8>)> = frames
        .iter()
        .map(|f| (f.opcode, f.payload.clone()))
        .collect();
    assert_eq!(summary.len(), 5, "{summary:?}");
    assert_eq!(summary[0], (0xA, b"p".to_vec()));
    assert_eq!(summary[1], (BINARY, b"a".to_vec()));
    assert_eq!(summary[2], (BINARY, vec![1]));
    assert_eq!(summary[3], (BINARY, b"c".to_vec()));
    assert_eq!(frames[4].close_code(), Some(1002));
}

#[test]
fn close_behind_unpolled_messages_is_echoed_after_their_replies() {
    let close = cframe(CLOSE, close_payload(1001, b"away"));
    let (s, result, last, out) = answer_messages_then(&close);
    assert_eq!(result, Ok(()));
    assert_eq!(
        last,
        Some(Message::Close(Some(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "away"
        ))))
    );
    assert_eq!(s.send.state(), State::Closed);
    let frames = decode_all(&out);
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(opcodes, [0xA, BINARY, BINARY, BINARY, CLOSE]);
    assert_eq!(frames[4].payload, close_payload(1001, b"away"));
}

/// What a server connection did with `input`, read in pieces of the given sizes, while the
/// application echoed every data message as it polled it.
#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<Message>,
    errors: Vec<ProtocolError>,
    written: Vec<u8>,
    state: State,
    terminated: bool,
}

/// Drives `input` through an unsplit server connection and through a split one (replies drained
/// as [`RecvHalf`] asks): everything observable must be the same.
/// Returns whether the connection failed.
fn assert_split_behaves_as_unsplit(
    input: &[u8],
    rng: &mut Rng,
    deflate: Option<DeflateParams>,
) -> bool {
    let server = || Connection::with_deflate(Role::Server, ProtocolConfig::default(), deflate);
    let mut unsplit = server();
    let mut split = Split::new(server());
    let mut a = Run {
        events: Vec::new(),
        errors: Vec::new(),
        written: Vec::new(),
        state: State::Open,
        terminated: false,
    };
    let mut b = Run {
        events: Vec::new(),
        errors: Vec::new(),
        written: Vec::new(),
        state: State::Open,
        terminated: false,
    };
    let mut rest = input;
    while !rest.is_empty() {
        let n = (1 + rng.below(5000)).min(rest.len());
        a.errors.extend(unsplit.handle_read(&rest[..n]).err());
        while let Some(event) = unsplit.poll_event() {
            if event.is_data() {
                unsplit.send(event.clone()).unwrap();
            }
            a.events.push(event);
        }
        a.written.extend(drain_transmit(&mut unsplit));

        b.errors.extend(split.read(&rest[..n]).err());
        while let Some(event) = split.event() {
            if event.is_data() {
                split.send.send(event.clone()).unwrap();
            }
            b.events.push(event);
        }
        b.written.extend(split.transmit());
        rest = &rest[n..];
    }
    (a.state, a.terminated) = (unsplit.state(), unsplit.is_terminated());
    (b.state, b.terminated) = (split.send.state(), split.recv.is_terminated());
    // Not assert_eq: the runs can be megabytes.
    assert!(a == b, "the split connection behaved differently");
    a.state == State::Failed
}

/// What a client sends: `count` messages (fragmented into `fragment` bytes at most) and pings.
fn client_traffic(
    rng: &mut Rng,
    count: usize,
    fragment: usize,
    deflate: Option<DeflateParams>,
) -> Vec<u8> {
    let mut peer = Connection::with_deflate(
        Role::Client,
        ProtocolConfig::default().fragment_size(Some(fragment)),
        deflate,
    );
    for i in 0..count {
        let message = random_message(rng, i);
        peer.send(message).unwrap();
        if rng.below(3) == 0 {
            let len = rng.below(126);
            peer.send(Message::Ping(Bytes::from(rng.bytes(len))))
                .unwrap();
        }
    }
    drain_transmit(&mut peer)
}

#[test]
fn split_pair_writes_exactly_what_the_unsplit_connection_writes() {
    for (seed, deflate) in [
        (31, None),
        (32, Some(DeflateParams::default())),
        (33, Some(asymmetric_deflate())),
    ] {
        let mut rng = Rng::new(seed);
        let mut input = client_traffic(&mut rng, 60, 3000, deflate);
        // Then a violation or a close.
        if seed % 2 == 0 {
            input.extend(RawFrame::new(0x3, "").masked().encode());
        } else {
            input.extend(cframe(CLOSE, close_payload(1000, b"done")));
        }
        let failed = assert_split_behaves_as_unsplit(&input, &mut rng, deflate);
        assert_eq!(failed, seed % 2 == 0);
    }
}

/// The same with a few bits of valid traffic flipped, mostly in frame headers (small messages,
/// small fragments): every failure path, split and unsplit.
#[test]
fn split_pair_fails_exactly_as_the_unsplit_connection_on_corrupted_input() {
    let mut failed = 0;
    for seed in 0..300 {
        let mut rng = Rng::new(1000 + seed);
        let deflate = (seed % 3 == 0).then(DeflateParams::default);
        let mut messages = Vec::new();
        for i in 0..6 {
            let len = rng.below(100);
            messages.push(if rng.below(2) == 0 {
                Message::text("é".repeat(len / 2))
            } else {
                Message::binary(rng.bytes(len))
            });
            if rng.below(3) == 0 {
                messages.push(Message::Ping(Bytes::from(format!("ping {i}"))));
            }
        }
        let mut peer = Connection::with_deflate(
            Role::Client,
            ProtocolConfig::default()
                .fragment_size(Some(10 + rng.below(40)))
                .deflate(Some(DeflateConfig::default().threshold(0))),
            deflate,
        );
        for m in messages {
            peer.send(m).unwrap();
        }
        if seed % 2 == 0 {
            peer.close(Some(CloseFrame::new(CloseCode::NORMAL, "done")))
                .unwrap();
        }
        let mut input = drain_transmit(&mut peer);
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(input.len());
            input[at] ^= 1 << rng.below(8);
        }
        failed += usize::from(assert_split_behaves_as_unsplit(&input, &mut rng, deflate));
    }
    // The flips must reach the failure paths often enough to be worth it (most of the others
    // land in binary payloads).
    assert!(failed > 80, "only {failed} runs of 300 failed");
}

#[test]
fn join_applies_the_replies_the_receive_half_still_holds() {
    let mut s = split_server();
    let mut input = cframe(PING, "hi");
    input.extend(cframe(CLOSE, close_payload(1000, b"")));
    s.recv.handle_read(&input).unwrap();
    let mut conn = Connection::join(s.recv, s.send);
    assert_eq!(conn.state(), State::Closed);
    let frames = decode_all(&drain_transmit(&mut conn));
    let opcodes: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(opcodes, [0xA, CLOSE]);
    assert_eq!(
        events(&mut conn),
        [
            Message::Ping("hi".into()),
            Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
        ]
    );
}

#[test]
fn each_half_releases_its_idle_buffers() {
    let mut s = split_server();
    s.read(&cframe(PING, "hi")).unwrap();
    s.recv.handle_read(&cframe(PING, "again")).unwrap();
    // A reply waits: its queue is kept.
    s.recv.release_idle_buffers();
    assert_eq!(s.apply_replies(), 1);
    s.send.send(Message::binary(vec![7; 4000])).unwrap();
    assert_eq!(s.events().len(), 2);
    assert!(!s.transmit().is_empty());
    assert!(s.recv.release_idle_buffers());
    assert!(!s.recv.release_idle_buffers());
    assert!(s.recv.read_buffer_released());
    assert!(s.send.release_idle_buffers());
    assert!(!s.send.release_idle_buffers());

    // The unsplit connection releases both halves in one call.
    let mut conn = Connection::new(Role::Server, ProtocolConfig::default());
    conn.handle_read(&cframe(PING, "hi")).unwrap();
    assert_eq!(events(&mut conn).len(), 1);
    assert!(!drain_transmit(&mut conn).is_empty());
    assert!(conn.release_idle_buffers());
    assert!(!conn.release_idle_buffers());
    assert!(conn.read_buffer_released());
}

#[test]
fn idle_release_frees_an_emptied_read_buffer_but_keeps_a_partial_frame() {
    let mut conn = Connection::new(Role::Server, ProtocolConfig::default());
    let frame = cframe(TEXT, "hello, buffered world");
    let buf = conn.read_buffer();
    buf.reserve(16 * 1024);
    buf.extend_from_slice(&frame[..9]);
    conn.handle_buffered().unwrap();
    assert_eq!(events(&mut conn), []);
    // Half a frame waits in the buffer: releasing must not drop it.
    conn.release_idle_buffers();
    assert!(!conn.read_buffer_released());
    conn.read_buffer().extend_from_slice(&frame[9..]);
    conn.handle_buffered().unwrap();
    assert_eq!(events(&mut conn), [Message::text("hello, buffered world")]);
    // Now the buffer is empty but still holds its capacity: released, and reading goes on.
    assert!(!conn.read_buffer_released());
    assert!(conn.release_idle_buffers());
    assert!(conn.read_buffer_released());
    conn.handle_read(&cframe(TEXT, "again")).unwrap();
    assert_eq!(events(&mut conn), [Message::text("again")]);
}

fn assert_send<T: Send + 'static>() {}

/// The receive half inflates a large compressed message, in pieces, on this thread, while the
/// send half sends (compressing) on another one, behind a mutex that the receiver takes only to
/// apply replies. A quarter into the message the receiver lets the sender start and waits for half
/// of its messages: had the sender needed anything the receiver holds (as with one lock around a
/// whole `Connection`), this would time out. That the halves can be used apart at all is checked
/// by the compiler: each is owned by one thread, and both are `Send`.
#[test]
fn receive_half_inflates_while_the_send_half_sends_from_another_thread() {
    assert_send::<RecvHalf>();
    assert_send::<SendHalf>();
    assert_send::<Reply>();

    const BIG: usize = 16 << 20;
    const SENT: usize = 200;
    let deflate = Some(DeflateParams::default());
    let config = ProtocolConfig::default().max_message_size(BIG);
    let mut client = Connection::with_deflate(
        Role::Client,
        config.clone().fragment_size(Some(64 << 10)),
        deflate,
    );
    let server = Connection::with_deflate(Role::Server, config, deflate);
    let (mut recv, send) = server.split();
    let send = Arc::new(Mutex::new(send));

    let big: Vec<u8> = (0..BIG)
        .map(|i| (i % 251) as u8 ^ (i >> 16) as u8)
        .collect();
    client.send(Message::binary(big.clone())).unwrap();
    let mut wire = drain_transmit(&mut client);
    assert!(
        wire.len() < BIG / 20,
        "{} bytes: not compressed",
        wire.len()
    );
    // A ping in the middle of the fragmented message: its pong goes out among the sender's
    // messages, through the mutex.
    let half = wire.len() / 2;
    let boundary = frame_boundary_after(&wire, half);
    let tail = wire.split_off(boundary);
    wire.extend(cframe(PING, "mid"));
    wire.extend(tail);

    let (go_tx, go_rx) = mpsc::channel();
    let (halfway_tx, halfway_rx) = mpsc::channel();
    let sender = {
        let send = Arc::clone(&send);
        thread::spawn(move || {
            let mut out = Vec::new();
            go_rx.recv().unwrap();
            for i in 0..SENT {
                let mut s = send.lock().unwrap();
                s.send(Message::text(format!("message {i} {}", "x".repeat(i))))
                    .unwrap();
                while let Some(b) = s.poll_transmit() {
                    out.extend_from_slice(&b);
                }
                drop(s);
                if i == SENT / 2 {
                    halfway_tx.send(()).unwrap();
                }
            }
            out
        })
    };

    let pieces: Vec<&[u8]> = wire.chunks(8 << 10).collect();
    let mut got = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        recv.handle_read(piece).unwrap();
        while let Some(reply) = recv.poll_reply() {
            send.lock().unwrap().handle_reply(reply);
        }
        while let Some(event) = recv.poll_event() {
            got.push(event);
        }
        if i == pieces.len() / 4 {
            // A quarter of the message inflated, the rest to come: the sender sends half of its
            // messages while the receiver stands still, then the rest while it inflates on.
            assert!(!got.iter().any(Message::is_data));
            go_tx.send(()).unwrap();
            halfway_rx
                .recv_timeout(Duration::from_secs(60))
                .expect("the sender was blocked by the receiver");
        }
    }
    let mut out = sender.join().unwrap();
    {
        let mut s = send.lock().unwrap();
        while let Some(b) = s.poll_transmit() {
            out.extend_from_slice(&b);
        }
    }
    assert_eq!(got.len(), 2, "a ping and the big message");
    assert_eq!(got[0], Message::Ping("mid".into()));
    assert!(got[1] == Message::binary(big), "the big message differs");

    client.handle_read(&out).unwrap();
    let received = events(&mut client);
    assert_eq!(received.len(), SENT + 1);
    let pongs = received
        .iter()
        .filter(|m| **m == Message::Pong("mid".into()))
        .count();
    assert_eq!(pongs, 1);
    let texts: Vec<&Message> = received.iter().filter(|m| m.is_data()).collect();
    for (i, m) in texts.iter().enumerate() {
        assert_eq!(**m, Message::text(format!("message {i} {}", "x".repeat(i))));
    }
}

/// The offset of the first frame boundary at or after `at` in `wire` (a client's masked frames).
fn frame_boundary_after(wire: &[u8], at: usize) -> usize {
    let mut pos = 0;
    while pos < at {
        let len7 = wire[pos + 1] & 0x7F;
        let (len, header) = match len7 {
            126 => (
                u16::from_be_bytes([wire[pos + 2], wire[pos + 3]]) as usize,
                4,
            ),
            127 => (
                u64::from_be_bytes(wire[pos + 2..pos + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (n as usize, 2),
        };
        let mask = if wire[pos + 1] & 0x80 != 0 { 4 } else { 0 };
        pos += header + mask + len;
    }
    pos
}

/// Idle memory is a measured goal: the split must not make the connection noticeably larger
/// (224 B since the in-place flag and the fragment size pack with the small fields).
#[cfg(target_pointer_width = "64")]
#[test]
fn connection_stays_small() {
    let size = std::mem::size_of::<Connection>();
    assert!(size <= 224, "Connection is {size} bytes");
}
