//! Arbitrary bytes fed to a server-role and a client-role `Connection` in chunks whose sizes come
//! from the input. Nothing may panic, and:
//!
//! - after an error everything is ignored, and once the events are polled the connection is
//!   `Failed`;
//! - a text event is valid UTF-8, no data event exceeds `max_message_size`, control payloads fit
//!   in 125 bytes, a received close frame has a sendable code;
//! - every byte the connection transmits is a well-formed frame stream, masked as its role
//!   requires, that a peer of the other role accepts without a protocol error;
//! - a pong answers a ping with its payload;
//! - without our own sends in between, the chunking does not change the outcome.
//!
//! Input layout: byte 0 picks the limits (its top bit: also send and close from our side between
//! chunks), bytes 1–2 seed the chunk sizes, the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_proto::frame::{FrameHeader, OpCode};
use volley_proto::mask::apply_mask;
use volley_proto::{
    CloseCode, CloseFrame, ProtocolConfig, Connection, Message, ProtocolError, Role, SendError, State,
};

/// A tiny deterministic generator for chunk sizes and interleaved actions.
struct Rng(u32);

impl Rng {
    fn next(&mut self) -> u32 {
        // xorshift32; the seed is never zero.
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.0 = x;
        x
    }
}

fn config(sel: u8) -> ProtocolConfig {
    let max_message = [0usize, 1, 16, 125, 126, 1000, 65_536, 1 << 20][usize::from(sel & 7)];
    let max_frame = [None, Some(0), Some(10), Some(200)][usize::from((sel >> 3) & 3)];
    let fragment = [None, Some(1), Some(7), Some(100)][usize::from((sel >> 5) & 3)];
    ProtocolConfig::default()
        .max_message_size(max_message)
        .max_frame_size(max_frame)
        .fragment_size(fragment)
}

/// What a run produced, for comparing two chunkings of the same input.
#[derive(Debug, PartialEq)]
struct Outcome {
    events: Vec<Message>,
    error: Option<ProtocolError>,
    state: State,
    /// The frames transmitted, unmasked: (fin, opcode, payload).
    sent: Vec<(bool, OpCode, Vec<u8>)>,
}

/// Checks and decodes everything `conn` queued for transmission, and feeds it to `peer`.
fn drain_transmit(
    conn: &mut Connection,
    peer: &mut Connection,
    partial: &mut Vec<u8>,
    sent: &mut Vec<(bool, OpCode, Vec<u8>)>,
) {
    while let Some(bytes) = conn.poll_transmit() {
        assert!(!bytes.is_empty(), "poll_transmit returned an empty chunk");
        partial.extend_from_slice(&bytes);
        if let Err(e) = peer.handle_read(&bytes) {
            panic!("the peer rejected our output: {e}");
        }
        while let Some(ev) = peer.poll_event() {
            if let Message::Text(t) = &ev {
                assert!(std::str::from_utf8(t.as_bytes()).is_ok());
            }
        }
        while peer.poll_transmit().is_some() {}
    }
    assert_eq!(conn.pending_transmit(), 0);
    // Decode the complete frames written so far.
    loop {
        let Some((header, header_len)) =
            FrameHeader::parse(partial).expect("we wrote an invalid frame header")
        else {
            break;
        };
        let len = usize::try_from(header.payload_len).unwrap();
        if partial.len() < header_len + len {
            break;
        }
        assert_eq!(header.rsv, 0);
        assert_eq!(
            header.mask.is_some(),
            conn.role() == Role::Client,
            "masking does not match the role"
        );
        let mut payload = partial[header_len..header_len + len].to_vec();
        if let Some(key) = header.mask {
            apply_mask(&mut payload, key, 0);
        }
        if header.opcode.is_control() {
            assert!(header.fin && len <= 125);
        }
        if header.opcode == OpCode::Close && len >= 2 {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            assert!(code.is_sendable(), "we sent close code {code}");
            assert!(std::str::from_utf8(&payload[2..]).is_ok());
        }
        assert!(!(header.opcode == OpCode::Close && len == 1));
        sent.push((header.fin, header.opcode, payload));
        partial.drain(..header_len + len);
    }
}

fn check_event(ev: &Message, config: &ProtocolConfig) {
    match ev {
        Message::Text(t) => {
            assert!(std::str::from_utf8(t.as_bytes()).is_ok());
            assert!(t.len() <= config.max_message_size);
        }
        Message::Binary(b) => assert!(b.len() <= config.max_message_size),
        Message::Ping(p) | Message::Pong(p) => assert!(p.len() <= 125),
        Message::Close(Some(f)) => {
            assert!(f.code.is_sendable(), "received close code {}", f.code);
            assert!(f.reason.len() <= 123);
        }
        Message::Close(None) => {}
    }
}

/// Sends a message, a ping or a close from our side, or nothing, and checks the result.
fn act_once(conn: &mut Connection, rng: &mut Rng) {
    let open = conn.state() == State::Open;
    match rng.next() % 8 {
        0 => {
            let r = conn.send(Message::text("x".repeat(rng.next() as usize % 300)));
            assert_eq!(r.is_ok(), open);
        }
        1 => {
            let len = rng.next() as usize % 130;
            let r = conn.send(Message::Ping(vec![1; len].into()));
            let expected = match (open, len) {
                (false, _) => Err(SendError::Closed),
                (true, 126..) => Err(SendError::ControlFrameTooLong(len)),
                (true, _) => Ok(()),
            };
            assert_eq!(r, expected);
        }
        2 => {
            assert_eq!(
                conn.close(Some(CloseFrame::new(CloseCode::NORMAL, "bye"))),
                Ok(())
            );
            assert_ne!(conn.state(), State::Open);
        }
        _ => {}
    }
}

/// Feeds `stream` to a connection of `role` in chunks sized from `seed` (`None`: in one read);
/// with `act`, also sends and closes from our side between chunks.
fn run(role: Role, config: &ProtocolConfig, stream: &[u8], seed: Option<u16>, act: bool) -> Outcome {
    let mut conn = Connection::new(role, config.clone());
    let peer_role = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut peer = Connection::new(peer_role, ProtocolConfig::default().max_message_size(usize::MAX));
    let mut rng = Rng(u32::from(seed.unwrap_or(0)) | 0x1_0000);
    let max_chunk = seed.map_or(0, |s| [1usize, 2, 3, 8, 64, 1024][usize::from(s) % 6]);
    let mut partial = Vec::new();
    let mut out = Outcome {
        events: Vec::new(),
        error: None,
        state: State::Open,
        sent: Vec::new(),
    };
    let mut rest = stream;
    let mut pings: Vec<Vec<u8>> = Vec::new();
    while !rest.is_empty() {
        let n = match max_chunk {
            0 => rest.len(),
            max => (1 + rng.next() as usize % max).min(rest.len()),
        };
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let was_terminated = conn.is_terminated();
        let before = out.events.len();
        let result = conn.handle_read(chunk);
        if act && rng.next() % 4 == 0 {
            // Reply before polling: with a failure or a close pending behind the events, the
            // reply still goes out, and before our close frame (checked at the end).
            act_once(&mut conn, &mut rng);
        }
        match result {
            Ok(()) => {}
            Err(e) => {
                assert!(!was_terminated, "an error after termination");
                // The failure may wait for the events before it to be polled; input is
                // ignored from now on either way.
                assert!(conn.is_terminated());
                assert!(out.error.is_none(), "two errors");
                out.error = Some(e);
            }
        }
        while let Some(ev) = conn.poll_event() {
            check_event(&ev, config);
            if let Message::Ping(p) = &ev {
                pings.push(p.to_vec());
            }
            out.events.push(ev);
        }
        // With every event polled, a failure or a received close has taken effect.
        if out.error.is_some() {
            assert_eq!(conn.state(), State::Failed);
        }
        if let Some(Message::Close(_)) = out.events.last() {
            assert_eq!(conn.state(), State::Closed);
        }
        if was_terminated {
            assert_eq!(out.events.len(), before, "events after termination");
        }
        drain_transmit(&mut conn, &mut peer, &mut partial, &mut out.sent);
        if act {
            act_once(&mut conn, &mut rng);
            drain_transmit(&mut conn, &mut peer, &mut partial, &mut out.sent);
        }
    }
    out.state = conn.state();
    match out.state {
        State::Failed => assert!(out.error.is_some()),
        _ => assert!(out.error.is_none()),
    }
    assert!(partial.is_empty(), "a frame was transmitted in part only");
    // At most one close frame, and nothing after it.
    if let Some(i) = out.sent.iter().position(|(_, op, _)| *op == OpCode::Close) {
        assert_eq!(i, out.sent.len() - 1, "frames after our close frame");
    }
    // Every pong we sent answers a ping, in order, with its payload (we never send pongs).
    let pongs: Vec<&Vec<u8>> = out
        .sent
        .iter()
        .filter(|(_, op, _)| *op == OpCode::Pong)
        .map(|(_, _, p)| p)
        .collect();
    assert!(pongs.len() <= pings.len());
    for (pong, ping) in pongs.iter().zip(&pings) {
        assert_eq!(*pong, ping);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [sel, s0, s1, stream @ ..] = data else {
        return;
    };
    let config = config(*sel);
    let seed = u16::from_le_bytes([*s0, *s1]);
    for role in [Role::Server, Role::Client] {
        let act = sel & 0x80 != 0;
        let chunked = run(role, &config, stream, Some(seed), act);
        if !act {
            // The same bytes in one read must give the same result.
            let whole = run(role, &config, stream, None, false);
            assert_eq!(chunked, whole, "chunking changed the outcome");
        }
    }
});
