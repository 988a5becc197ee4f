//! Frame-level behaviour of `Connection`: every protocol violation with its close code, the size
//! limits, UTF-8 validation, message reassembly across any read boundaries, and outgoing framing.

mod common;

use bytes::Bytes;
use common::*;
use volley_proto::{Connection, Message, ProtocolConfig, ProtocolError, Role, SendError, State};

const ROLES: [Role; 2] = [Role::Server, Role::Client];

fn conn(role: Role) -> Connection {
    Connection::new(role, ProtocolConfig::default())
}

// ---------------------------------------------------------------------------------------------
// Protocol violations: 1002
// ---------------------------------------------------------------------------------------------

#[test]
fn unmasked_client_frame_fails_server_with_1002() {
    for opcode in [TEXT, BINARY, PING, CLOSE] {
        let mut s = server();
        let frame = RawFrame::new(opcode, "hi").encode();
        expect_failure(&mut s, &frame, ProtocolError::UnmaskedFrame, 1002);
        assert_eq!(events(&mut s), []);
    }
}

#[test]
fn unmasked_frame_is_rejected_from_the_header_alone() {
    let mut s = server();
    let header = RawFrame::new(BINARY, vec![0; 100]).header();
    expect_failure(&mut s, &header, ProtocolError::UnmaskedFrame, 1002);
}

#[test]
fn masked_server_frame_fails_client_with_1002() {
    for opcode in [TEXT, BINARY, PONG, CLOSE] {
        let mut c = client();
        let frame = RawFrame::new(opcode, "hi").masked().encode();
        expect_failure(&mut c, &frame, ProtocolError::MaskedFrame, 1002);
        assert_eq!(events(&mut c), []);
    }
}

#[test]
fn reserved_bits_fail_with_1002() {
    for role in ROLES {
        for rsv in 1..=7u8 {
            for opcode in [TEXT, BINARY, PING] {
                let mut c = conn(role);
                let frame = from_peer(role, RawFrame::new(opcode, "x").rsv(rsv));
                expect_failure(&mut c, &frame, ProtocolError::ReservedBits(rsv), 1002);
            }
        }
    }
}

#[test]
fn reserved_bits_on_a_continuation_fail_with_1002() {
    let mut s = server();
    s.handle_read(&cframe_fin(false, TEXT, "a")).unwrap();
    let cont = RawFrame::new(CONT, "b").rsv(0b100).masked().encode();
    expect_failure(&mut s, &cont, ProtocolError::ReservedBits(0b100), 1002);
}

#[test]
fn every_reserved_opcode_fails_with_1002() {
    for role in ROLES {
        for op in [3u8, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF] {
            for fin in [true, false] {
                let mut c = conn(role);
                let frame = from_peer(role, RawFrame::new(op, "payload").fin(fin));
                expect_failure(&mut c, &frame, ProtocolError::ReservedOpcode(op), 1002);
            }
        }
    }
}

#[test]
fn reserved_opcode_is_rejected_from_the_first_two_bytes() {
    let mut s = server();
    expect_failure(
        &mut s,
        &[0x83, 0x85],
        ProtocolError::ReservedOpcode(3),
        1002,
    );
}

#[test]
fn sixty_four_bit_length_with_top_bit_fails_with_1002() {
    for role in ROLES {
        for len in [1u64 << 63, u64::MAX, (1 << 63) | 5] {
            let mut c = conn(role);
            let header = from_peer(
                role,
                RawFrame::new(BINARY, "").declared_len(len).len_form(127),
            );
            // Only the header: no payload needs to arrive for the check.
            expect_failure(&mut c, &header, ProtocolError::InvalidLength, 1002);
        }
    }
}

#[test]
fn control_frame_over_125_bytes_fails_with_1002() {
    for role in ROLES {
        for opcode in [PING, PONG, CLOSE] {
            let mut c = conn(role);
            let frame = from_peer(role, RawFrame::new(opcode, vec![b'a'; 126]));
            expect_failure(
                &mut c,
                &frame,
                ProtocolError::ControlFrameTooLong(126),
                1002,
            );
        }
    }
}

#[test]
fn oversized_control_frame_is_rejected_from_the_first_two_bytes() {
    let mut s = server();
    let frame = RawFrame::new(PING, vec![0; 126]).masked().encode();
    expect_failure(
        &mut s,
        &frame[..2],
        ProtocolError::ControlFrameTooLong(126),
        1002,
    );
}

#[test]
fn control_frame_of_exactly_125_bytes_is_accepted() {
    let mut s = server();
    let payload = vec![7u8; 125];
    s.handle_read(&cframe(PING, &payload)).unwrap();
    assert_eq!(events(&mut s), [Message::Ping(payload.clone().into())]);
    let pong = transmitted(&mut s);
    assert_eq!(pong.len(), 1);
    assert_eq!((pong[0].opcode, &pong[0].payload), (PONG, &payload));
}

#[test]
fn fragmented_control_frame_fails_with_1002() {
    for role in ROLES {
        for opcode in [PING, PONG, CLOSE] {
            let mut c = conn(role);
            let frame = from_peer(role, RawFrame::new(opcode, "x").fin(false));
            expect_failure(&mut c, &frame, ProtocolError::FragmentedControlFrame, 1002);
        }
    }
}

#[test]
fn continuation_without_a_message_fails_with_1002() {
    for role in ROLES {
        for fin in [true, false] {
            let mut c = conn(role);
            let frame = from_peer(role, RawFrame::new(CONT, "x").fin(fin));
            expect_failure(&mut c, &frame, ProtocolError::UnexpectedContinuation, 1002);
        }
    }
}

#[test]
fn continuation_after_a_finished_message_fails_with_1002() {
    let mut s = server();
    let mut input = cframe_fin(false, TEXT, "a");
    input.extend(cframe_fin(true, CONT, "b"));
    s.handle_read(&input).unwrap();
    assert_eq!(events(&mut s), [Message::text("ab")]);
    expect_failure(
        &mut s,
        &cframe(CONT, "c"),
        ProtocolError::UnexpectedContinuation,
        1002,
    );
}

#[test]
fn new_data_frame_during_a_fragmented_message_fails_with_1002() {
    for role in ROLES {
        for first in [TEXT, BINARY] {
            for second in [TEXT, BINARY] {
                for fin in [true, false] {
                    let mut c = conn(role);
                    c.handle_read(&from_peer(role, RawFrame::new(first, "a").fin(false)))
                        .unwrap();
                    let frame = from_peer(role, RawFrame::new(second, "b").fin(fin));
                    expect_failure(&mut c, &frame, ProtocolError::ExpectedContinuation, 1002);
                    assert_eq!(events(&mut c), [], "the partial message is dropped");
                }
            }
        }
    }
}

#[test]
fn messages_completed_before_a_violation_are_still_delivered() {
    let mut s = server();
    let mut input = cframe(TEXT, "one");
    input.extend(cframe(BINARY, "two"));
    input.extend(RawFrame::new(TEXT, "bad").encode()); // unmasked
    input.extend(cframe(TEXT, "never"));
    assert_eq!(s.handle_read(&input), Err(ProtocolError::UnmaskedFrame));
    assert_eq!(
        events(&mut s),
        [Message::text("one"), Message::binary(&b"two"[..])]
    );
    expect_close_sent(&mut s, 1002);
    assert_eq!(s.state(), State::Failed);
}

#[test]
fn violation_behind_unpolled_messages_fails_once_they_are_polled() {
    // Autobahn's strict cases: replies to messages received before a violation go out before
    // the close frame.
    let mut s = server();
    let mut input = cframe(TEXT, "one");
    input.extend(cframe(PING, "p"));
    input.extend(cframe(TEXT, b"\xff")); // 1007
    assert_eq!(s.handle_read(&input), Err(ProtocolError::InvalidUtf8));
    // Not failed yet, but no more input is taken.
    assert_eq!(s.state(), State::Open);
    assert!(s.is_terminated());
    s.handle_read(&cframe(TEXT, "ignored")).unwrap();
    // The pong was queued as the ping was read; no close frame yet.
    let pong = transmitted(&mut s);
    assert_eq!(pong.len(), 1);
    assert_eq!((pong[0].opcode, &pong[0].payload[..]), (PONG, &b"p"[..]));
    // The application answers the message it is about to poll.
    s.send(Message::text("reply")).unwrap();
    assert_eq!(s.poll_event(), Some(Message::text("one")));
    assert_eq!(s.poll_event(), Some(Message::Ping("p".into())));
    assert_eq!(s.state(), State::Open);
    assert_eq!(s.poll_event(), None);
    assert_eq!(s.state(), State::Failed);
    let frames = transmitted(&mut s);
    let ops: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(ops, [TEXT, CLOSE]);
    assert_eq!(frames[1].close_code(), Some(1007));
    assert_eq!(s.send(Message::text("late")), Err(SendError::Closed));
    assert_eq!(s.poll_event(), None);
    assert_eq!(drain_transmit(&mut s), b"");
}

#[test]
fn violation_behind_unpolled_messages_after_our_close_sends_no_second_close() {
    let mut s = server();
    s.close(None).unwrap();
    drain_transmit(&mut s);
    let mut input = cframe(TEXT, "one");
    input.extend(cframe(CONT, "bad"));
    assert_eq!(
        s.handle_read(&input),
        Err(ProtocolError::UnexpectedContinuation)
    );
    assert_eq!(events(&mut s), [Message::text("one")]);
    assert_eq!(s.state(), State::Failed);
    assert_eq!(drain_transmit(&mut s), b"");
}

#[test]
fn the_failure_close_frame_carries_a_reason() {
    let mut s = server();
    let _ = s.handle_read(&RawFrame::new(TEXT, "x").encode());
    let close = expect_close_sent(&mut s, 1002);
    let reason = std::str::from_utf8(&close.payload[2..]).unwrap();
    assert_eq!(reason, ProtocolError::UnmaskedFrame.to_string());
}

#[test]
fn failure_in_client_role_queues_a_masked_close() {
    let mut c = client();
    assert!(c.handle_read(&[0x83, 0x00]).is_err());
    let f = expect_close_sent(&mut c, 1002);
    assert!(f.masked);
}

// ---------------------------------------------------------------------------------------------
// Size limits: 1009
// ---------------------------------------------------------------------------------------------

#[test]
fn frame_over_max_frame_size_fails_with_1009() {
    let config = ProtocolConfig::default().max_frame_size(Some(100));
    let mut s = Connection::new(Role::Server, config.clone());
    s.handle_read(&cframe(BINARY, vec![1; 100])).unwrap();
    assert_eq!(events(&mut s), [Message::binary(vec![1; 100])]);
    expect_failure(
        &mut s,
        &cframe(BINARY, vec![1; 101]),
        ProtocolError::FrameTooLarge {
            size: 101,
            max: 100,
        },
        1009,
    );

    // A fragment of a message is a frame too.
    let mut s = Connection::new(Role::Server, config);
    s.handle_read(&cframe_fin(false, TEXT, vec![b'a'; 100]))
        .unwrap();
    expect_failure(
        &mut s,
        &cframe_fin(true, CONT, vec![b'a'; 101]),
        ProtocolError::FrameTooLarge {
            size: 101,
            max: 100,
        },
        1009,
    );
}

#[test]
fn max_frame_size_is_checked_from_the_header_alone() {
    let mut s = Connection::new(
        Role::Server,
        ProtocolConfig::default().max_frame_size(Some(1000)),
    );
    let header = RawFrame::new(BINARY, "")
        .declared_len(1 << 40)
        .masked()
        .header();
    expect_failure(
        &mut s,
        &header,
        ProtocolError::FrameTooLarge {
            size: 1 << 40,
            max: 1000,
        },
        1009,
    );
}

#[test]
fn huge_frame_fails_at_the_header_with_the_default_limit() {
    // With no frame limit, the message limit (1 MiB by default) bounds each frame.
    for role in ROLES {
        for len in [(1u64 << 20) + 1, u64::from(u32::MAX), (1 << 63) - 1] {
            let mut c = conn(role);
            let header = from_peer(role, RawFrame::new(TEXT, "").declared_len(len));
            expect_failure(
                &mut c,
                &header,
                ProtocolError::FrameTooLarge {
                    size: len,
                    max: 1 << 20,
                },
                1009,
            );
        }
    }
}

#[test]
fn header_is_checked_only_once_it_is_complete() {
    // A 64-bit length header of a masked frame is 14 bytes: nothing can be decided before.
    let mut s = conn(Role::Server);
    let header = RawFrame::new(BINARY, "")
        .declared_len(1 << 40)
        .masked()
        .header();
    assert_eq!(header.len(), 14);
    for &b in &header[..13] {
        assert_eq!(s.handle_read(&[b]), Ok(()));
    }
    assert_eq!(drain_transmit(&mut s), b"");
    assert!(matches!(
        s.handle_read(&header[13..]),
        Err(ProtocolError::FrameTooLarge { .. })
    ));
    expect_close_sent(&mut s, 1009);
}

#[test]
fn message_size_is_exactly_at_limit_accepted_and_limit_plus_one_rejected() {
    let config = ProtocolConfig::default().max_message_size(64);
    for role in ROLES {
        for opcode in [TEXT, BINARY] {
            let mut c = Connection::new(role, config.clone());
            c.handle_read(&from_peer(role, RawFrame::new(opcode, vec![b'x'; 64])))
                .unwrap();
            assert_eq!(events(&mut c).len(), 1);
            // Single frame over the message limit: the frame limit defaults to the message limit.
            expect_failure(
                &mut c,
                &from_peer(role, RawFrame::new(opcode, vec![b'x'; 65])),
                ProtocolError::FrameTooLarge { size: 65, max: 64 },
                1009,
            );
        }
    }
}

#[test]
fn message_size_is_summed_over_fragments() {
    let config = ProtocolConfig::default().max_message_size(10);
    // 4 + 3 + 3 = 10: accepted.
    let mut s = Connection::new(Role::Server, config.clone());
    let mut input = cframe_fin(false, BINARY, b"abcd");
    input.extend(cframe_fin(false, CONT, b"efg"));
    input.extend(cframe_fin(true, CONT, b"hij"));
    s.handle_read(&input).unwrap();
    assert_eq!(events(&mut s), [Message::binary(&b"abcdefghij"[..])]);

    // 4 + 3 + 4 = 11: rejected at the header of the last fragment, before its payload.
    let mut s = Connection::new(Role::Server, config);
    let mut input = cframe_fin(false, TEXT, b"abcd");
    input.extend(cframe_fin(false, CONT, b"efg"));
    s.handle_read(&input).unwrap();
    let last = RawFrame::new(CONT, b"hijk").masked().header();
    expect_failure(
        &mut s,
        &last,
        ProtocolError::MessageTooLarge { size: 11, max: 10 },
        1009,
    );
    assert_eq!(events(&mut s), []);
}

#[test]
fn message_limit_counts_each_message_separately() {
    let mut s = Connection::new(Role::Server, ProtocolConfig::default().max_message_size(10));
    for _ in 0..5 {
        s.handle_read(&cframe_fin(false, TEXT, b"12345")).unwrap();
        s.handle_read(&cframe_fin(true, CONT, b"67890")).unwrap();
    }
    assert_eq!(events(&mut s), vec![Message::text("1234567890"); 5]);
}

#[test]
fn control_frames_do_not_count_against_the_message_limit() {
    let mut s = Connection::new(Role::Server, ProtocolConfig::default().max_message_size(4));
    let mut input = cframe_fin(false, TEXT, b"ab");
    input.extend(cframe(PING, vec![9; 100]));
    input.extend(cframe_fin(true, CONT, b"cd"));
    s.handle_read(&input).unwrap();
    assert_eq!(
        events(&mut s),
        [Message::Ping(vec![9; 100].into()), Message::text("abcd")]
    );
}

#[test]
fn frame_limit_above_message_limit_is_capped_by_it() {
    let config = ProtocolConfig::default()
        .max_message_size(50)
        .max_frame_size(Some(1000));
    assert_eq!(config.effective_max_frame_size(), 50);
    let mut s = Connection::new(Role::Server, config);
    expect_failure(
        &mut s,
        &cframe(BINARY, vec![0; 51]),
        ProtocolError::FrameTooLarge { size: 51, max: 50 },
        1009,
    );
}

// ---------------------------------------------------------------------------------------------
// UTF-8: 1007
// ---------------------------------------------------------------------------------------------

const INVALID_UTF8: &[&[u8]] = &[
    b"\xff",
    b"\x80",
    b"abc\xc0\xafdef",   // overlong '/'
    b"\xed\xa0\x80",     // surrogate U+D800
    b"\xf4\x90\x80\x80", // above U+10FFFF
    b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited",
    b"\xf8\x88\x80\x80\x80", // 5-byte form
];

#[test]
fn invalid_utf8_in_a_single_frame_fails_with_1007() {
    for role in ROLES {
        for bad in INVALID_UTF8 {
            // Whole frame at once (zero-copy path).
            let mut c = conn(role);
            let frame = from_peer(role, RawFrame::new(TEXT, bad));
            expect_failure(&mut c, &frame, ProtocolError::InvalidUtf8, 1007);
            // Byte by byte (streaming path).
            let mut c = conn(role);
            let err = frame.iter().find_map(|&b| c.handle_read(&[b]).err());
            assert_eq!(err, Some(ProtocolError::InvalidUtf8), "{bad:?}");
            expect_close_sent(&mut c, 1007);
        }
    }
}

#[test]
fn invalid_utf8_in_binary_is_fine() {
    let mut s = server();
    for bad in INVALID_UTF8 {
        s.handle_read(&cframe(BINARY, bad)).unwrap();
        assert_eq!(events(&mut s), [Message::binary(bad.to_vec())]);
    }
}

#[test]
fn code_point_split_across_fragments_is_accepted() {
    // "€" = E2 82 AC and "𝄞" = F0 9D 84 9E, split at every position across two or three frames.
    let text = "a€b𝄞c";
    let bytes = text.as_bytes();
    for i in 0..=bytes.len() {
        for j in i..=bytes.len() {
            let mut s = server();
            let mut input = cframe_fin(false, TEXT, &bytes[..i]);
            input.extend(cframe_fin(false, CONT, &bytes[i..j]));
            input.extend(cframe_fin(true, CONT, &bytes[j..]));
            s.handle_read(&input).unwrap();
            assert_eq!(events(&mut s), [Message::text(text)], "split {i},{j}");
        }
    }
}

#[test]
fn invalid_code_point_split_across_fragments_fails_with_1007() {
    // The first fragment holds a valid prefix; the second makes it invalid.
    for (first, second) in [
        (&b"ok\xe2"[..], &b"\x28\xa1"[..]), // E2 followed by a non-continuation
        (b"\xed", b"\xa0\x80"),             // surrogate
        (b"\xf4", b"\x90\x80\x80"),         // above U+10FFFF
        (b"\xf0\x9d", b"\x84"),             // valid so far, but the message ends mid-code-point
    ] {
        let mut s = server();
        s.handle_read(&cframe_fin(false, TEXT, first)).unwrap();
        let last = cframe_fin(true, CONT, second);
        expect_failure(&mut s, &last, ProtocolError::InvalidUtf8, 1007);
    }
}

#[test]
fn invalid_utf8_in_a_later_fragment_fails_before_the_message_ends() {
    let mut s = server();
    s.handle_read(&cframe_fin(false, TEXT, "fine")).unwrap();
    // A non-final fragment with an invalid byte fails at once, no need for FIN.
    expect_failure(
        &mut s,
        &cframe_fin(false, CONT, b"\xff"),
        ProtocolError::InvalidUtf8,
        1007,
    );
}

/// Feeds `input` one byte at a time and returns the index of the byte whose arrival failed.
fn failing_byte(c: &mut Connection, input: &[u8]) -> Option<(usize, ProtocolError)> {
    input
        .iter()
        .enumerate()
        .find_map(|(i, &b)| c.handle_read(&[b]).err().map(|e| (i, e)))
}

#[test]
fn invalid_utf8_fails_at_the_first_invalid_byte_of_a_frame() {
    // Autobahn 6.4.x: the error must come when the bad byte arrives, not when the frame is complete.
    for (payload, bad_at) in [
        (&b"hello\xffworld, more text follows"[..], 5),
        (
            b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80edited",
            12,
        ), // F4 90
        (b"abc\xed\xa0\x80xyz", 4), // ED A0
        (b"\xc0\xaf the rest", 0),  // C0
        (b"\xe2\x82\x28 rest", 2),  // E2 82 28
    ] {
        for role in ROLES {
            let mut c = conn(role);
            let frame = from_peer(role, RawFrame::new(TEXT, payload));
            let header_len = frame.len() - payload.len();
            let (at, err) = failing_byte(&mut c, &frame).expect("must fail");
            assert_eq!(err, ProtocolError::InvalidUtf8);
            assert_eq!(at, header_len + bad_at, "{payload:?} as {role:?}");
            expect_close_sent(&mut c, 1007);
        }
    }
}

#[test]
fn invalid_utf8_fails_fast_inside_a_continuation_frame() {
    let mut s = server();
    s.handle_read(&cframe_fin(false, TEXT, "first ")).unwrap();
    let payload = b"second \xff and lots more that never needs to arrive";
    let frame = cframe_fin(true, CONT, payload);
    let (at, err) = failing_byte(&mut s, &frame).unwrap();
    assert_eq!(err, ProtocolError::InvalidUtf8);
    assert_eq!(at, frame.len() - payload.len() + 7);
}

#[test]
fn invalid_utf8_fails_when_only_part_of_the_frame_arrived() {
    // Header and the first half of the payload in one read: the bad byte is in that half.
    let mut s = server();
    let payload = [b"ab\xffcd".as_slice(), &[b'x'; 1000]].concat();
    let frame = cframe(TEXT, &payload);
    let header_len = frame.len() - payload.len();
    expect_failure(
        &mut s,
        &frame[..header_len + 10],
        ProtocolError::InvalidUtf8,
        1007,
    );
}

#[test]
fn text_ending_in_an_incomplete_code_point_fails_with_1007() {
    for payload in [&b"abc\xe2\x82"[..], b"\xf0", b"\xf0\x9d\x84", b"\xc3"] {
        // One frame, whole.
        let mut s = server();
        expect_failure(
            &mut s,
            &cframe(TEXT, payload),
            ProtocolError::InvalidUtf8,
            1007,
        );
        // One frame, byte by byte: the error comes with the last byte.
        let mut s = server();
        let frame = cframe(TEXT, payload);
        let (at, err) = failing_byte(&mut s, &frame).unwrap();
        assert_eq!((at, err), (frame.len() - 1, ProtocolError::InvalidUtf8));
        // Fragmented, with an empty final fragment.
        let mut s = server();
        s.handle_read(&cframe_fin(false, TEXT, payload)).unwrap();
        expect_failure(
            &mut s,
            &cframe_fin(true, CONT, b""),
            ProtocolError::InvalidUtf8,
            1007,
        );
    }
}

#[test]
fn incomplete_code_point_in_a_non_final_fragment_is_not_an_error_yet() {
    let mut s = server();
    s.handle_read(&cframe_fin(false, TEXT, b"\xf0\x9d"))
        .unwrap();
    s.handle_read(&cframe(PING, b"")).unwrap();
    s.handle_read(&cframe_fin(true, CONT, b"\x84\x9e")).unwrap();
    assert_eq!(
        events(&mut s),
        [Message::Ping(Bytes::new()), Message::text("𝄞")]
    );
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

#[test]
fn text_and_binary_are_distinct() {
    for role in ROLES {
        let mut c = conn(role);
        let mut input = from_peer(role, RawFrame::new(TEXT, "same"));
        input.extend(from_peer(role, RawFrame::new(BINARY, "same")));
        c.handle_read(&input).unwrap();
        let ev = events(&mut c);
        assert_eq!(ev, [Message::text("same"), Message::binary(&b"same"[..])]);
        assert_ne!(ev[0], ev[1]);
        assert_eq!(drain_transmit(&mut c), b"", "data needs no reply");
    }
}

#[test]
fn empty_messages() {
    for role in ROLES {
        let mut c = conn(role);
        let mut input = from_peer(role, RawFrame::new(TEXT, ""));
        input.extend(from_peer(role, RawFrame::new(BINARY, "")));
        input.extend(from_peer(role, RawFrame::new(TEXT, "").fin(false)));
        input.extend(from_peer(role, RawFrame::new(CONT, "").fin(false)));
        input.extend(from_peer(role, RawFrame::new(CONT, "")));
        input.extend(from_peer(role, RawFrame::new(BINARY, "").fin(false)));
        input.extend(from_peer(role, RawFrame::new(CONT, "")));
        input.extend(from_peer(role, RawFrame::new(PING, "")));
        input.extend(from_peer(role, RawFrame::new(PONG, "")));
        c.handle_read(&input).unwrap();
        assert_eq!(
            events(&mut c),
            [
                Message::text(""),
                Message::binary(Bytes::new()),
                Message::text(""),
                Message::binary(Bytes::new()),
                Message::Ping(Bytes::new()),
                Message::Pong(Bytes::new()),
            ]
        );
    }
}

#[test]
fn fragmented_messages_are_reassembled() {
    let mut s = server();
    let text = "The quick brown fox jumps over the lazy dog — ünïcödé 🦊";
    let bytes = text.as_bytes();
    let mut input = Vec::new();
    let chunks: Vec<&[u8]> = bytes.chunks(3).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let opcode = if i == 0 { TEXT } else { CONT };
        input.extend(cframe_fin(i == chunks.len() - 1, opcode, chunk));
    }
    let data: Vec<u8> = (0..=255).collect();
    for (i, chunk) in data.chunks(100).enumerate() {
        let opcode = if i == 0 { BINARY } else { CONT };
        input.extend(cframe_fin(i == 2, opcode, chunk));
    }
    s.handle_read(&input).unwrap();
    assert_eq!(
        events(&mut s),
        [Message::text(text), Message::binary(data.clone())]
    );
}

#[test]
fn control_frames_interleaved_in_a_fragmented_message() {
    let mut s = server();
    let mut input = cframe_fin(false, TEXT, "frag");
    input.extend(cframe(PING, "p1"));
    input.extend(cframe_fin(false, CONT, "men"));
    input.extend(cframe(PONG, "unsolicited"));
    input.extend(cframe(PING, "p2"));
    input.extend(cframe_fin(true, CONT, "ted"));
    s.handle_read(&input).unwrap();
    assert_eq!(
        events(&mut s),
        [
            Message::Ping("p1".into()),
            Message::Pong("unsolicited".into()),
            Message::Ping("p2".into()),
            Message::text("fragmented"),
        ]
    );
    let out = transmitted(&mut s);
    let pongs: Vec<_> = out
        .iter()
        .map(|f| (f.opcode, f.payload.as_slice()))
        .collect();
    assert_eq!(pongs, [(PONG, &b"p1"[..]), (PONG, &b"p2"[..])]);
}

/// A stream exercising most of the receive paths, as a client would send it.
fn mixed_stream(rng: &mut Rng) -> (Vec<u8>, Vec<Message>) {
    let mut input = Vec::new();
    let mut expected = Vec::new();
    let push = |f: RawFrame, input: &mut Vec<u8>| input.extend(f.mask(Some(KEY)).encode());
    push(RawFrame::new(TEXT, "Hello, κόσμε! 𝄞"), &mut input);
    expected.push(Message::text("Hello, κόσμε! 𝄞"));
    let big = rng.bytes(70_000); // 64-bit length
    push(RawFrame::new(BINARY, &big), &mut input);
    expected.push(Message::binary(big));
    let mid = rng.bytes(300); // 16-bit length
    push(RawFrame::new(BINARY, &mid), &mut input);
    expected.push(Message::binary(mid));
    push(RawFrame::new(TEXT, "€uro").fin(false), &mut input);
    push(RawFrame::new(PING, "ping!"), &mut input);
    push(RawFrame::new(CONT, "s and ").fin(false), &mut input);
    push(RawFrame::new(CONT, "").fin(false), &mut input);
    push(RawFrame::new(CONT, "cents ¢"), &mut input);
    expected.push(Message::Ping("ping!".into()));
    expected.push(Message::text("€uros and cents ¢"));
    push(RawFrame::new(TEXT, ""), &mut input);
    expected.push(Message::text(""));
    push(RawFrame::new(PONG, "pong"), &mut input);
    expected.push(Message::Pong("pong".into()));
    // Non-minimal length encodings are accepted for data frames.
    push(RawFrame::new(TEXT, "sixteen").len_form(126), &mut input);
    expected.push(Message::text("sixteen"));
    push(
        RawFrame::new(BINARY, "sixty-four").len_form(127),
        &mut input,
    );
    expected.push(Message::binary(&b"sixty-four"[..]));
    push(RawFrame::new(BINARY, [0xffu8; 3]).fin(false), &mut input);
    push(RawFrame::new(CONT, [0u8; 2]), &mut input);
    expected.push(Message::binary(vec![0xff, 0xff, 0xff, 0, 0]));
    (input, expected)
}

#[test]
fn messages_survive_a_split_at_every_byte() {
    let (input, expected) = {
        // A smaller stream so that every split point (and every byte-by-byte feed) stays fast.
        let mut input = cframe(TEXT, "Hello, κόσμε! 𝄞");
        input.extend(cframe_fin(false, BINARY, vec![1u8; 130]));
        input.extend(cframe(PING, "ping"));
        input.extend(cframe_fin(true, CONT, [2u8; 3]));
        input.extend(cframe_fin(false, TEXT, &"€".as_bytes()[..2]));
        input.extend(cframe_fin(true, CONT, &"€".as_bytes()[2..]));
        input.extend(cframe(BINARY, ""));
        let expected = vec![
            Message::text("Hello, κόσμε! 𝄞"),
            Message::Ping("ping".into()),
            Message::binary([vec![1u8; 130], vec![2; 3]].concat()),
            Message::text("€"),
            Message::binary(Bytes::new()),
        ];
        (input, expected)
    };
    for i in 0..=input.len() {
        let mut s = server();
        s.handle_read(&input[..i]).unwrap();
        let mut got = events(&mut s);
        s.handle_read(&input[i..]).unwrap();
        got.extend(events(&mut s));
        assert_eq!(got, expected, "split at {i}");
        let pongs = transmitted(&mut s);
        assert_eq!(pongs.len(), 1);
        assert_eq!(pongs[0].payload, b"ping");
    }
    let mut s = server();
    for &b in &input {
        s.handle_read(&[b]).unwrap();
    }
    assert_eq!(events(&mut s), expected, "byte by byte");
}

#[test]
fn messages_survive_random_read_boundaries() {
    let mut rng = Rng::new(0x5eed_1234);
    let (input, expected) = mixed_stream(&mut rng);
    for (round, max_chunk) in [1usize, 2, 3, 7, 64, 1000, 5000, 100_000]
        .into_iter()
        .cycle()
        .take(24)
        .enumerate()
    {
        let mut s = server();
        let mut got = Vec::new();
        let mut rest = input.as_slice();
        while !rest.is_empty() {
            let n = (1 + rng.below(max_chunk)).min(rest.len());
            s.handle_read(&rest[..n]).unwrap();
            got.extend(events(&mut s));
            rest = &rest[n..];
        }
        assert_eq!(got, expected, "round {round}, max chunk {max_chunk}");
        assert_eq!(s.state(), State::Open);
    }
}

#[test]
fn read_buffer_and_handle_buffered_match_handle_read() {
    let mut rng = Rng::new(77);
    let (input, expected) = mixed_stream(&mut rng);
    let mut s = server();
    let mut got = Vec::new();
    for chunk in input.chunks(333) {
        s.read_buffer().extend_from_slice(chunk);
        s.handle_buffered().unwrap();
        got.extend(events(&mut s));
    }
    assert_eq!(got, expected);
}

#[test]
fn every_length_encoding_is_decoded() {
    for role in ROLES {
        for len in [0usize, 1, 125, 126, 127, 1000, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let frame = from_peer(role, RawFrame::new(BINARY, &payload));
            let expected_header =
                2 + match len {
                    0..=125 => 0,
                    126..=65_535 => 2,
                    _ => 8,
                } + if role == Role::Server { 4 } else { 0 };
            assert_eq!(frame.len(), expected_header + len);
            let mut c = conn(role);
            c.handle_read(&frame).unwrap();
            assert_eq!(events(&mut c), [Message::binary(payload)], "len {len}");
        }
    }
}

#[test]
fn zero_copy_and_streaming_paths_agree() {
    let mut rng = Rng::new(9);
    for role in ROLES {
        for len in [0usize, 5, 125, 126, 2000, 70_000] {
            for opcode in [TEXT, BINARY] {
                let payload = if opcode == TEXT {
                    "añ€𝄞".repeat(len / 10 + 1).into_bytes()
                } else {
                    rng.bytes(len)
                };
                let frame = from_peer(role, RawFrame::new(opcode, &payload));
                // Whole frame in one read: the zero-copy path.
                let mut whole = conn(role);
                whole.handle_read(&frame).unwrap();
                let a = events(&mut whole);
                // Header first, then the payload in pieces: the streaming path.
                let mut streamed = conn(role);
                let header_len = frame.len() - payload.len();
                streamed.handle_read(&frame[..header_len]).unwrap();
                let mut b = events(&mut streamed);
                assert_eq!(b.is_empty(), !payload.is_empty());
                for piece in frame[header_len..].chunks(997) {
                    streamed.handle_read(piece).unwrap();
                }
                b.extend(events(&mut streamed));
                assert_eq!(a.len(), 1);
                assert_eq!(a, b, "len {len} opcode {opcode}");
                assert_eq!(a[0].payload(), &payload[..]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Outgoing frames
// ---------------------------------------------------------------------------------------------

#[test]
fn server_frames_are_unmasked_and_client_frames_masked() {
    for role in ROLES {
        for len in [0usize, 10, 125, 126, 1023, 1024, 5000, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut c = conn(role);
            c.send(Message::binary(payload.clone())).unwrap();
            c.send(Message::text("tail")).unwrap();
            c.send(Message::Ping("p".into())).unwrap();
            c.send(Message::Pong("q".into())).unwrap();
            let frames = transmitted(&mut c);
            assert_eq!(frames.len(), 4);
            for f in &frames {
                assert_eq!(f.masked, role == Role::Client, "{role:?} len {len}");
                assert!(f.fin);
                assert_eq!(f.rsv, 0);
            }
            assert_eq!((frames[0].opcode, &frames[0].payload), (BINARY, &payload));
            assert_eq!(
                (frames[1].opcode, &frames[1].payload[..]),
                (TEXT, &b"tail"[..])
            );
            assert_eq!(
                (frames[2].opcode, &frames[2].payload[..]),
                (PING, &b"p"[..])
            );
            assert_eq!(
                (frames[3].opcode, &frames[3].payload[..]),
                (PONG, &b"q"[..])
            );
            let form = match len {
                0..=125 => 0,
                126..=65_535 => 126,
                _ => 127,
            };
            assert_eq!(frames[0].len_form, form, "shortest length form for {len}");
        }
    }
}

#[test]
fn client_masking_keys_vary() {
    let mut c = client();
    let mut keys = std::collections::HashSet::new();
    for _ in 0..20 {
        c.send(Message::binary(&b"x"[..])).unwrap();
        let bytes = drain_transmit(&mut c);
        keys.insert(bytes[2..6].to_vec());
    }
    assert!(keys.len() > 1, "the masking key must not be constant");
}

#[test]
fn fragment_size_splits_outgoing_messages() {
    for role in ROLES {
        let mut c = Connection::new(role, ProtocolConfig::default().fragment_size(Some(4)));
        c.send(Message::text("hello world")).unwrap(); // 11 bytes: 4 + 4 + 3
        c.send(Message::binary(&b"12345678"[..])).unwrap(); // exactly 2 × 4
        c.send(Message::binary(&b"1234"[..])).unwrap(); // exactly one fragment
        c.send(Message::text("")).unwrap();
        c.send(Message::Ping("pingpayload".into())).unwrap(); // control frames are never split
        let frames = transmitted(&mut c);
        let summary: Vec<(bool, u8, &[u8])> = frames
            .iter()
            .map(|f| (f.fin, f.opcode, f.payload.as_slice()))
            .collect();
        assert_eq!(
            summary,
            [
                (false, TEXT, &b"hell"[..]),
                (false, CONT, b"o wo"),
                (true, CONT, b"rld"),
                (false, BINARY, b"1234"),
                (true, CONT, b"5678"),
                (true, BINARY, b"1234"),
                (true, TEXT, b""),
                (true, PING, b"pingpayload"),
            ]
        );
        assert!(frames.iter().all(|f| f.masked == (role == Role::Client)));
    }
}

#[test]
fn fragment_size_splits_text_anywhere_and_the_peer_reassembles_it() {
    let mut c = Connection::new(
        Role::Client,
        ProtocolConfig::default().fragment_size(Some(1)),
    );
    c.send(Message::text("€𝄞")).unwrap();
    let bytes = drain_transmit(&mut c);
    assert_eq!(decode_all(&bytes).len(), 7);
    let mut s = server();
    s.handle_read(&bytes).unwrap();
    assert_eq!(events(&mut s), [Message::text("€𝄞")]);
}

#[test]
fn fragment_size_zero_means_one() {
    let config = ProtocolConfig::default().fragment_size(Some(0));
    assert_eq!(config.fragment_size, Some(1));
    let mut s = Connection::new(Role::Server, config);
    s.send(Message::binary(&b"abc"[..])).unwrap();
    assert_eq!(transmitted(&mut s).len(), 3);
}

/// A fragment size beyond 32 bits (the connection keeps it in 32 to stay small) fragments
/// nothing smaller than 4 GiB: a message goes out whole.
#[cfg(target_pointer_width = "64")]
#[test]
fn fragment_size_beyond_four_gib_leaves_messages_whole() {
    let mut s = Connection::new(
        Role::Server,
        ProtocolConfig::default().fragment_size(Some(1 << 40)),
    );
    s.send(Message::binary(vec![7u8; 70_000])).unwrap();
    s.send_prepared(&volley_proto::PreparedMessage::text("prepared"))
        .unwrap();
    let frames = transmitted(&mut s);
    assert_eq!(frames.len(), 2);
    assert!(frames.iter().all(|f| f.fin));
    assert_eq!(frames[0].payload.len(), 70_000);
}

#[test]
fn large_fragmented_server_message_is_intact() {
    // Exercises the zero-copy transmit path (payloads ≥ 1 KiB) together with fragmentation.
    let mut rng = Rng::new(3);
    let payload = rng.bytes(10_000);
    let mut s = Connection::new(
        Role::Server,
        ProtocolConfig::default().fragment_size(Some(3000)),
    );
    s.send(Message::binary(payload.clone())).unwrap();
    s.send(Message::text("after")).unwrap();
    let pending = s.pending_transmit();
    let bytes = drain_transmit(&mut s);
    assert_eq!(bytes.len(), pending);
    let frames = decode_all(&bytes);
    assert_eq!(frames.len(), 5);
    let lens: Vec<usize> = frames.iter().map(|f| f.payload.len()).collect();
    assert_eq!(lens, [3000, 3000, 3000, 1000, 5]);
    let mut c = client();
    c.handle_read(&bytes).unwrap();
    assert_eq!(
        events(&mut c),
        [Message::binary(payload), Message::text("after")]
    );
}

#[test]
fn control_frame_payload_over_125_is_rejected_on_send() {
    for role in ROLES {
        let mut c = conn(role);
        assert_eq!(
            c.send(Message::Ping(vec![0; 126].into())),
            Err(SendError::ControlFrameTooLong(126))
        );
        assert_eq!(
            c.send(Message::Pong(vec![0; 1000].into())),
            Err(SendError::ControlFrameTooLong(1000))
        );
        assert_eq!(c.pending_transmit(), 0, "nothing queued");
        assert_eq!(c.state(), State::Open);
        c.send(Message::Ping(vec![0; 125].into())).unwrap();
        c.send(Message::Pong(vec![0; 125].into())).unwrap();
        assert_eq!(transmitted(&mut c).len(), 2);
    }
}

#[test]
fn pending_transmit_tracks_queued_bytes() {
    let mut s = server();
    assert_eq!(s.pending_transmit(), 0);
    assert_eq!(s.poll_transmit(), None);
    s.send(Message::text("abc")).unwrap();
    assert_eq!(s.pending_transmit(), 5);
    s.send(Message::binary(vec![0; 2000])).unwrap();
    assert_eq!(s.pending_transmit(), 5 + 4 + 2000);
    let first = s.poll_transmit().unwrap();
    assert_eq!(s.pending_transmit(), 2009 - first.len());
    drain_transmit(&mut s);
    assert_eq!(s.pending_transmit(), 0);
}

/// Everything `transmit_slices` shows, written in pieces of `chunk` bytes with
/// `advance_transmit`.
fn write_in_pieces(c: &mut Connection, chunk: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    while c.pending_transmit() > 0 {
        let mut slices = [std::io::IoSlice::new(&[]); 3];
        let count = c.transmit_slices(&mut slices);
        assert!(count > 0, "bytes pending but no slice");
        let mut taken = 0;
        for slice in &slices[..count] {
            let n = slice.len().min(chunk - taken);
            wire.extend_from_slice(&slice[..n]);
            taken += n;
            if taken == chunk {
                break;
            }
        }
        c.advance_transmit(taken);
    }
    wire
}

#[test]
fn transmit_slices_and_advance_give_the_same_bytes_as_poll_transmit() {
    // Small frames (collected in one buffer), large ones (queued as their own pieces), a
    // prepared one, in every order, written in odd-sized pieces.
    let queue = |c: &mut Connection| {
        c.send(Message::text("abc")).unwrap();
        c.send(Message::binary(vec![7; 2000])).unwrap();
        c.send(Message::text("de")).unwrap();
        let prepared = volley_proto::PreparedMessage::text("shared");
        c.send_prepared(&prepared).unwrap();
        c.send(Message::binary(vec![9; 3000])).unwrap();
        c.send(Message::Ping(Bytes::from_static(b"p"))).unwrap();
    };
    let mut reference = server();
    queue(&mut reference);
    let expected = transmitted_bytes(&mut reference);
    for chunk in [1, 2, 5, 64, 1999, 2004, 100_000] {
        let mut c = server();
        queue(&mut c);
        let total = c.pending_transmit();
        let wire = write_in_pieces(&mut c, chunk);
        assert_eq!(wire.len(), total, "chunk {chunk}");
        assert_eq!(wire, expected, "chunk {chunk}");
        assert_eq!(c.poll_transmit(), None);
        // Mixed with poll_transmit afterwards: still in order.
        c.send(Message::text("x")).unwrap();
        c.send(Message::binary(vec![1; 1500])).unwrap();
        c.advance_transmit(1);
        let rest: Vec<u8> = std::iter::from_fn(|| c.poll_transmit())
            .flat_map(|b| b.to_vec())
            .collect();
        assert_eq!(rest.len(), 3 - 1 + 4 + 1500);
        assert_eq!(
            &rest[..2],
            &[0x01, b'x'],
            "the frame's first byte was dropped"
        );
    }
    // Advancing past the end drops everything and nothing more.
    let mut c = server();
    queue(&mut c);
    c.advance_transmit(usize::MAX);
    assert_eq!(c.pending_transmit(), 0);
    assert_eq!(c.transmit_slices(&mut [std::io::IoSlice::new(&[])]), 0);
}

fn transmitted_bytes(c: &mut Connection) -> Vec<u8> {
    std::iter::from_fn(|| c.poll_transmit())
        .flat_map(|b| b.to_vec())
        .collect()
}
