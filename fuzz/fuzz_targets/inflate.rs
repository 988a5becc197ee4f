//! permessage-deflate on the receiving side: bytes fed to a server-role and a client-role
//! `Connection` that negotiated compression (window bits and context takeover chosen by the
//! input). Nothing may panic, and:
//!
//! - a data event never exceeds `max_message_size` (the limit applies to the inflated size), a
//!   text event is valid UTF-8;
//! - after an error the connection is `Failed` once the events are polled, with a close code that
//!   matches the error;
//! - in "structured" mode the input is cut into messages that a real zlib compressor (the peer)
//!   compresses and frames: every message must come out exactly as it went in, or — only when it
//!   is larger than the limit — fail with 1009.
//!
//! Input layout: byte 0 selects the mode, the limits and the parameters; byte 1 the chunking;
//! the rest is the stream (raw mode) or the messages, separated by 0xFF (structured mode).

#![no_main]

use flate2::{Compress, Compression, FlushCompress};
use libfuzzer_sys::fuzz_target;
use volley_proto::{ProtocolConfig, Connection, DeflateParams, Message, ProtocolError, Role, State};

fn params(sel: u8) -> DeflateParams {
    let bits = [None, Some(8), Some(9), Some(12)][usize::from(sel & 3)];
    DeflateParams::default()
        .server_no_context_takeover(sel & 4 != 0)
        .client_no_context_takeover(sel & 4 != 0)
        .server_max_window_bits(bits)
        .client_max_window_bits(bits)
}

fn max_message(sel: u8) -> usize {
    [0usize, 10, 1000, 65_536][usize::from((sel >> 3) & 3)]
}

/// Feeds `stream` in chunks of at most `chunk` bytes; returns the events and the error.
fn feed(
    conn: &mut Connection,
    stream: &[u8],
    chunk: usize,
) -> (Vec<Message>, Option<ProtocolError>) {
    let max = conn.max_message_size();
    let mut events = Vec::new();
    let mut error = None;
    for piece in stream.chunks(chunk.max(1)) {
        if let Err(e) = conn.handle_read(piece) {
            assert!(error.is_none(), "two errors");
            error = Some(e);
        }
        while let Some(ev) = conn.poll_event() {
            match &ev {
                Message::Text(t) => {
                    assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                    assert!(t.len() <= max, "text of {} over the limit {max}", t.len());
                }
                Message::Binary(b) => assert!(b.len() <= max, "binary over the limit"),
                _ => {}
            }
            events.push(ev);
        }
        while conn.poll_transmit().is_some() {}
    }
    if let Some(e) = &error {
        assert_eq!(conn.state(), State::Failed, "{e}");
        let code = e.close_code().0;
        assert!(matches!(code, 1002 | 1007 | 1009), "{e}: {code}");
    }
    (events, error)
}

/// A frame to a connection of `role` (masked towards a server).
fn frame(role: Role, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (u8::from(rsv1) << 6) | opcode];
    let mask = if role == Role::Server { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask | n as u8),
        n @ 126..=0xffff => {
            out.push(mask | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if role == Role::Server {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

fn sync_compress(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        c.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
            .expect("compress");
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [sel, chunk, rest @ ..] = data else {
        return;
    };
    let params = params(*sel);
    let max = max_message(*sel);
    let chunk = usize::from(*chunk) + 1;
    for role in [Role::Server, Role::Client] {
        let config = ProtocolConfig::default().max_message_size(max);
        let mut conn = Connection::with_deflate(role, config, Some(params));
        if sel & 0x80 == 0 {
            // Raw: arbitrary frames, RSV bits and DEFLATE data.
            feed(&mut conn, rest, chunk);
            continue;
        }
        // Structured: a peer compresses each message (with context takeover unless negotiated
        // away) and splits it into frames of `chunk` bytes.
        let bits = match role {
            Role::Server => params.client_max_window_bits,
            Role::Client => params.server_max_window_bits,
        }
        .unwrap_or(15)
        .max(9);
        let mut z = Compress::new_with_window_bits(Compression::new(6), false, bits);
        let messages: Vec<&[u8]> = rest.split(|&b| b == 0xff).collect();
        let mut stream = Vec::new();
        for m in &messages {
            if sel & 4 != 0 {
                z = Compress::new_with_window_bits(Compression::new(6), false, bits);
            }
            let mut payload = sync_compress(&mut z, m);
            if payload.is_empty() {
                // zlib emits nothing for an empty message right after a flush: send an empty
                // stored block's header, as RFC 7692 §7.2.3.6 says.
                payload.push(0);
            } else {
                payload.truncate(payload.len() - 4);
            }
            let parts: Vec<&[u8]> = payload.chunks(chunk).collect();
            for (i, part) in parts.iter().enumerate() {
                let opcode = if i == 0 { 2 } else { 0 };
                stream.extend(frame(role, i + 1 == parts.len(), i == 0, opcode, part));
            }
        }
        let (events, error) = feed(&mut conn, &stream, chunk * 3);
        for (got, want) in events.iter().zip(&messages) {
            assert_eq!(got, &Message::binary(want.to_vec()));
        }
        match error {
            None => assert_eq!(events.len(), messages.len()),
            Some(ProtocolError::MessageTooLarge { .. } | ProtocolError::FrameTooLarge { .. }) => {
                assert!(
                    messages[events.len()].len() > max,
                    "a message within the limit was refused"
                );
            }
            Some(e) => panic!("a valid compressed stream failed: {e}"),
        }
    }
});
