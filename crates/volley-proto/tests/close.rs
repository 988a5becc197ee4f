//! The close handshake (RFC 6455 §5.5.1, §7): close frame validation, echoing, states, and what
//! may still be sent and received while closing. Also pings and pongs.

mod common;

use bytes::Bytes;
use common::*;
use volley_proto::{
    CloseCode, CloseFrame, Connection, Message, ProtocolConfig, ProtocolError, Role, SendError,
    State,
};

const ROLES: [Role; 2] = [Role::Server, Role::Client];

fn conn(role: Role) -> Connection {
    Connection::new(role, ProtocolConfig::default())
}

fn close_from_peer(role: Role, payload: &[u8]) -> Vec<u8> {
    from_peer(role, RawFrame::new(CLOSE, payload))
}

// ---------------------------------------------------------------------------------------------
// Received close frames
// ---------------------------------------------------------------------------------------------

#[test]
fn close_with_one_byte_payload_fails_with_1002() {
    for role in ROLES {
        let mut c = conn(role);
        expect_failure(
            &mut c,
            &close_from_peer(role, &[0x03]),
            ProtocolError::InvalidClosePayload,
            1002,
        );
        assert_eq!(events(&mut c), []);
    }
}

#[test]
fn close_with_an_invalid_code_fails_with_1002() {
    for role in ROLES {
        for code in [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            for reason in [&b""[..], b"reason"] {
                let mut c = conn(role);
                expect_failure(
                    &mut c,
                    &close_from_peer(role, &close_payload(code, reason)),
                    ProtocolError::InvalidCloseCode(code),
                    1002,
                );
                assert_eq!(events(&mut c), [], "code {code}");
            }
        }
    }
}

#[test]
fn close_with_a_valid_code_is_echoed() {
    for role in ROLES {
        for code in [
            1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999,
            4000, 4999,
        ] {
            let mut c = conn(role);
            c.handle_read(&close_from_peer(
                role,
                &close_payload(code, b"bye \xe2\x82\xac"),
            ))
            .unwrap();
            assert_eq!(c.state(), State::Closed, "code {code}");
            assert!(c.is_terminated());
            assert_eq!(
                events(&mut c),
                [Message::Close(Some(CloseFrame::new(
                    CloseCode(code),
                    "bye €"
                )))]
            );
            let echo = expect_close_sent(&mut c, code);
            assert_eq!(
                &echo.payload[2..],
                "bye €".as_bytes(),
                "the whole frame is echoed"
            );
        }
    }
}

#[test]
fn close_reason_of_maximum_length_is_accepted() {
    let mut s = server();
    let reason = "r".repeat(123);
    s.handle_read(&cframe(CLOSE, close_payload(1000, reason.as_bytes())))
        .unwrap();
    assert_eq!(
        events(&mut s),
        [Message::Close(Some(CloseFrame::new(
            CloseCode::NORMAL,
            reason
        )))]
    );
    expect_close_sent(&mut s, 1000);
}

#[test]
fn close_with_invalid_utf8_reason_fails_with_1007() {
    for role in ROLES {
        for reason in [&b"\xff"[..], b"ok\xe2\x82", b"\xed\xa0\x80", b"\xc0\xaf"] {
            let mut c = conn(role);
            expect_failure(
                &mut c,
                &close_from_peer(role, &close_payload(1000, reason)),
                ProtocolError::InvalidCloseReason,
                1007,
            );
            assert_eq!(events(&mut c), []);
        }
    }
}

#[test]
fn empty_close_is_echoed_with_an_empty_close() {
    for role in ROLES {
        let mut c = conn(role);
        c.handle_read(&close_from_peer(role, b"")).unwrap();
        assert_eq!(events(&mut c), [Message::Close(None)]);
        assert_eq!(c.state(), State::Closed);
        let frames = transmitted(&mut c);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].opcode, CLOSE);
        assert!(frames[0].payload.is_empty());
        assert_eq!(frames[0].masked, role == Role::Client);
    }
}

#[test]
fn close_split_across_reads_is_handled_once_complete() {
    let mut s = server();
    let frame = cframe(CLOSE, close_payload(1001, b"going"));
    for &b in &frame[..frame.len() - 1] {
        s.handle_read(&[b]).unwrap();
        assert_eq!(s.state(), State::Open);
    }
    s.handle_read(&frame[frame.len() - 1..]).unwrap();
    assert_eq!(s.state(), State::Closed);
    expect_close_sent(&mut s, 1001);
}

#[test]
fn close_in_the_middle_of_a_fragmented_message_drops_it() {
    let mut s = server();
    s.handle_read(&cframe_fin(false, TEXT, "part")).unwrap();
    s.handle_read(&cframe(CLOSE, close_payload(1000, b"")))
        .unwrap();
    assert_eq!(
        events(&mut s),
        [Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
    );
    expect_close_sent(&mut s, 1000);
    // The rest of the message is ignored, like everything after the close.
    s.handle_read(&cframe_fin(true, CONT, "ial")).unwrap();
    assert_eq!(events(&mut s), []);
}

#[test]
fn close_behind_unpolled_data_takes_effect_when_polled() {
    for role in ROLES {
        let mut c = conn(role);
        let mut input = from_peer(role, RawFrame::new(TEXT, "question"));
        input.extend(close_from_peer(role, &close_payload(1000, b"done")));
        input.extend(from_peer(role, RawFrame::new(TEXT, "after the close")));
        c.handle_read(&input).unwrap();
        // Nothing takes effect yet, but no more input is taken.
        assert_eq!(c.state(), State::Open);
        assert!(c.is_terminated());
        assert_eq!(drain_transmit(&mut c), b"");
        c.handle_read(&from_peer(role, RawFrame::new(TEXT, "ignored")))
            .unwrap();
        // The application can still answer the message before the echo goes out.
        assert_eq!(c.poll_event(), Some(Message::text("question")));
        c.send(Message::text("answer")).unwrap();
        assert_eq!(c.state(), State::Open);
        assert_eq!(
            c.poll_event(),
            Some(Message::Close(Some(CloseFrame::new(
                CloseCode::NORMAL,
                "done"
            ))))
        );
        assert_eq!(c.state(), State::Closed);
        assert_eq!(c.poll_event(), None);
        let frames = transmitted(&mut c);
        let ops: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
        assert_eq!(ops, [TEXT, CLOSE]);
        assert_eq!(frames[1].close_code(), Some(1000));
        assert_eq!(c.send(Message::text("late")), Err(SendError::Closed));
    }
}

#[test]
fn our_close_while_a_received_close_is_pending_is_not_doubled() {
    let mut s = server();
    let mut input = cframe(BINARY, "data");
    input.extend(cframe(CLOSE, close_payload(1001, b"")));
    s.handle_read(&input).unwrap();
    s.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    assert_eq!(s.state(), State::CloseSent);
    assert_eq!(
        events(&mut s),
        [
            Message::binary(&b"data"[..]),
            Message::Close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "")))
        ]
    );
    assert_eq!(s.state(), State::Closed);
    expect_close_sent(&mut s, 1000);
}

#[test]
fn close_behind_only_control_frames_takes_effect_at_once() {
    let mut s = server();
    let mut input = cframe(PING, "p");
    input.extend(cframe(CLOSE, close_payload(1000, b"")));
    s.handle_read(&input).unwrap();
    assert_eq!(s.state(), State::Closed);
    let ops: Vec<u8> = transmitted(&mut s).iter().map(|f| f.opcode).collect();
    assert_eq!(ops, [PONG, CLOSE]);
}

// ---------------------------------------------------------------------------------------------
// The close handshake
// ---------------------------------------------------------------------------------------------

#[test]
fn we_close_then_the_peer_replies() {
    for role in ROLES {
        let mut c = conn(role);
        c.close(Some(CloseFrame::new(
            CloseCode::GOING_AWAY,
            "shutting down",
        )))
        .unwrap();
        assert_eq!(c.state(), State::CloseSent);
        assert!(!c.is_terminated());
        let sent = expect_close_sent(&mut c, 1001);
        assert_eq!(&sent.payload[2..], b"shutting down");

        c.handle_read(&close_from_peer(role, &close_payload(1001, b"")))
            .unwrap();
        assert_eq!(c.state(), State::Closed);
        assert!(c.is_terminated());
        assert_eq!(
            events(&mut c),
            [Message::Close(Some(CloseFrame::new(
                CloseCode::GOING_AWAY,
                ""
            )))]
        );
        assert_eq!(drain_transmit(&mut c), b"", "no second close frame");
    }
}

#[test]
fn we_close_without_a_code() {
    let mut c = client();
    c.close(None).unwrap();
    let frames = transmitted(&mut c);
    assert_eq!(frames.len(), 1);
    assert_eq!((frames[0].opcode, frames[0].payload.len()), (CLOSE, 0));
    assert!(frames[0].masked);
}

#[test]
fn send_close_message_is_close() {
    let mut s = server();
    s.send(Message::Close(Some(CloseFrame::new(
        CloseCode(4000),
        "custom",
    ))))
    .unwrap();
    assert_eq!(s.state(), State::CloseSent);
    let f = expect_close_sent(&mut s, 4000);
    assert_eq!(&f.payload[2..], b"custom");
}

#[test]
fn peer_closes_then_we_echo() {
    for role in ROLES {
        let mut c = conn(role);
        c.handle_read(&close_from_peer(role, &close_payload(1000, b"done")))
            .unwrap();
        assert_eq!(c.state(), State::Closed);
        expect_close_sent(&mut c, 1000);
        // Closing again does nothing.
        c.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
            .unwrap();
        c.close(None).unwrap();
        assert_eq!(drain_transmit(&mut c), b"");
        assert_eq!(c.state(), State::Closed);
    }
}

#[test]
fn close_twice_sends_one_close_frame() {
    let mut s = server();
    s.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    s.close(Some(CloseFrame::new(CloseCode::GOING_AWAY, "")))
        .unwrap();
    expect_close_sent(&mut s, 1000);
    assert_eq!(s.state(), State::CloseSent);
}

#[test]
fn data_is_still_delivered_in_close_sent() {
    for role in ROLES {
        let mut c = conn(role);
        c.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
            .unwrap();
        drain_transmit(&mut c);
        let mut input = from_peer(role, RawFrame::new(TEXT, "still"));
        input.extend(from_peer(role, RawFrame::new(BINARY, "here").fin(false)));
        input.extend(from_peer(role, RawFrame::new(CONT, "!")));
        input.extend(from_peer(role, RawFrame::new(PONG, "pong")));
        c.handle_read(&input).unwrap();
        assert_eq!(c.state(), State::CloseSent);
        assert_eq!(
            events(&mut c),
            [
                Message::text("still"),
                Message::binary(&b"here!"[..]),
                Message::Pong("pong".into()),
            ]
        );
        assert_eq!(drain_transmit(&mut c), b"");
    }
}

#[test]
fn input_after_closed_is_ignored() {
    for role in ROLES {
        let mut c = conn(role);
        let mut input = close_from_peer(role, &close_payload(1000, b""));
        // In the same read: a message, garbage, and a second close.
        input.extend(from_peer(role, RawFrame::new(TEXT, "after")));
        input.extend([0xff, 0xff, 0xff]);
        c.handle_read(&input).unwrap();
        assert_eq!(
            events(&mut c),
            [Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]
        );
        expect_close_sent(&mut c, 1000);
        // In later reads, through both entry points.
        c.handle_read(&from_peer(role, RawFrame::new(TEXT, "later")))
            .unwrap();
        c.handle_read(&[0x83, 0x00]).unwrap();
        c.read_buffer().extend_from_slice(&[0xff; 20]);
        c.handle_buffered().unwrap();
        c.handle_read(&close_from_peer(role, &close_payload(1002, b"")))
            .unwrap();
        assert_eq!(events(&mut c), []);
        assert_eq!(drain_transmit(&mut c), b"");
        assert_eq!(c.state(), State::Closed);
    }
}

#[test]
fn input_after_failure_is_ignored() {
    let mut s = server();
    assert!(s.handle_read(&[0x83, 0x80]).is_err());
    drain_transmit(&mut s);
    s.handle_read(&cframe(TEXT, "x")).unwrap();
    s.read_buffer().extend_from_slice(&cframe(TEXT, "y"));
    s.handle_buffered().unwrap();
    assert_eq!(events(&mut s), []);
    assert_eq!(s.state(), State::Failed);
}

#[test]
fn send_after_close_is_an_error() {
    for role in ROLES {
        // After our close (CloseSent), after the peer's (Closed) and after a failure.
        let mut sent = conn(role);
        sent.close(None).unwrap();
        let mut closed = conn(role);
        closed.handle_read(&close_from_peer(role, b"")).unwrap();
        let mut failed = conn(role);
        assert!(failed.handle_read(&[0x8F, 0x00]).is_err());
        for c in [&mut sent, &mut closed, &mut failed] {
            drain_transmit(c);
            let state = c.state();
            assert_eq!(
                c.send(Message::text("x")),
                Err(SendError::Closed),
                "{state:?}"
            );
            assert_eq!(c.send(Message::binary(&b"x"[..])), Err(SendError::Closed));
            assert_eq!(c.send(Message::Ping(Bytes::new())), Err(SendError::Closed));
            assert_eq!(c.send(Message::Pong(Bytes::new())), Err(SendError::Closed));
            // Closing again is a no-op rather than an error.
            assert_eq!(c.close(None), Ok(()));
            assert_eq!(c.send(Message::Close(None)), Ok(()));
            assert_eq!(drain_transmit(c), b"");
            assert_eq!(c.state(), state);
        }
    }
}

#[test]
fn close_with_an_unsendable_code_is_an_error() {
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
        let mut s = server();
        assert_eq!(
            s.close(Some(CloseFrame::new(CloseCode(code), ""))),
            Err(SendError::InvalidCloseCode(code))
        );
        assert_eq!(s.state(), State::Open, "nothing changed");
        assert_eq!(s.pending_transmit(), 0);
        // The connection is still usable and can close properly afterwards.
        s.send(Message::text("ok")).unwrap();
        s.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
            .unwrap();
        let frames = transmitted(&mut s);
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].close_code(), Some(1000));
    }
}

#[test]
fn close_reason_over_123_bytes_is_an_error() {
    let mut c = client();
    assert_eq!(
        c.close(Some(CloseFrame::new(CloseCode::NORMAL, "r".repeat(124)))),
        Err(SendError::ControlFrameTooLong(126))
    );
    assert_eq!(c.state(), State::Open);
    c.close(Some(CloseFrame::new(CloseCode::NORMAL, "r".repeat(123))))
        .unwrap();
    let f = expect_close_sent(&mut c, 1000);
    assert_eq!(f.payload.len(), 125);
}

#[test]
fn violation_after_our_close_fails_without_a_second_close_frame() {
    let mut s = server();
    s.close(Some(CloseFrame::new(CloseCode::NORMAL, "")))
        .unwrap();
    expect_close_sent(&mut s, 1000);
    assert_eq!(
        s.handle_read(&RawFrame::new(TEXT, "unmasked").encode()),
        Err(ProtocolError::UnmaskedFrame)
    );
    assert_eq!(s.state(), State::Failed);
    assert_eq!(drain_transmit(&mut s), b"");
}

#[test]
fn invalid_close_after_our_close_fails() {
    let mut s = server();
    s.close(None).unwrap();
    drain_transmit(&mut s);
    assert_eq!(
        s.handle_read(&cframe(CLOSE, close_payload(1005, b""))),
        Err(ProtocolError::InvalidCloseCode(1005))
    );
    assert_eq!(s.state(), State::Failed);
    assert_eq!(drain_transmit(&mut s), b"");
}

// ---------------------------------------------------------------------------------------------
// Ping and pong
// ---------------------------------------------------------------------------------------------

#[test]
fn ping_is_answered_with_a_pong_with_the_same_payload() {
    for role in ROLES {
        for payload in [&b""[..], b"x", b"hello", &[0xffu8; 125]] {
            let mut c = conn(role);
            c.handle_read(&from_peer(role, RawFrame::new(PING, payload)))
                .unwrap();
            assert_eq!(events(&mut c), [Message::Ping(payload.to_vec().into())]);
            let frames = transmitted(&mut c);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].opcode, PONG);
            assert!(frames[0].fin);
            assert_eq!(frames[0].payload, payload);
            assert_eq!(frames[0].masked, role == Role::Client);
        }
    }
}

#[test]
fn every_ping_gets_its_own_pong_in_order() {
    let mut s = server();
    let mut input = Vec::new();
    for i in 0..10u8 {
        input.extend(cframe(PING, [i]));
    }
    s.handle_read(&input).unwrap();
    let pongs: Vec<Vec<u8>> = transmitted(&mut s).into_iter().map(|f| f.payload).collect();
    assert_eq!(pongs, (0..10u8).map(|i| vec![i]).collect::<Vec<_>>());
}

#[test]
fn ping_inside_a_fragmented_message_is_answered() {
    for role in ROLES {
        let mut c = conn(role);
        let mut input = from_peer(role, RawFrame::new(TEXT, "Hel").fin(false));
        input.extend(from_peer(role, RawFrame::new(PING, "mid")));
        input.extend(from_peer(role, RawFrame::new(CONT, "lo")));
        // Byte by byte, so that the pong is produced while the message is still open.
        for (i, &b) in input.iter().enumerate() {
            c.handle_read(&[b]).unwrap();
            if i == input.len() - 1 - from_peer(role, RawFrame::new(CONT, "lo")).len() {
                let frames = transmitted(&mut c);
                assert_eq!(frames.len(), 1);
                assert_eq!(
                    (frames[0].opcode, &frames[0].payload[..]),
                    (PONG, &b"mid"[..])
                );
            }
        }
        assert_eq!(
            events(&mut c),
            [Message::Ping("mid".into()), Message::text("Hello")]
        );
    }
}

#[test]
fn no_pong_once_close_was_sent() {
    for role in ROLES {
        let mut c = conn(role);
        c.close(None).unwrap();
        drain_transmit(&mut c);
        c.handle_read(&from_peer(role, RawFrame::new(PING, "late")))
            .unwrap();
        assert_eq!(events(&mut c), [Message::Ping("late".into())]);
        assert_eq!(drain_transmit(&mut c), b"", "no pong after our close");
    }
}

#[test]
fn pong_is_queued_before_the_close_echo() {
    let mut s = server();
    let mut input = cframe(PING, "p");
    input.extend(cframe(CLOSE, close_payload(1000, b"")));
    s.handle_read(&input).unwrap();
    let frames = transmitted(&mut s);
    let ops: Vec<u8> = frames.iter().map(|f| f.opcode).collect();
    assert_eq!(ops, [PONG, CLOSE]);
}

#[test]
fn unsolicited_pong_is_delivered_without_reply() {
    let mut c = client();
    c.handle_read(&RawFrame::new(PONG, "beat").encode())
        .unwrap();
    assert_eq!(events(&mut c), [Message::Pong("beat".into())]);
    assert_eq!(drain_transmit(&mut c), b"");
}
