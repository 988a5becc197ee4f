//! The small value types of the public API: which close codes may be sent, the conversions into
//! `Message` and `PreparedMessage` (and which messages cannot be prepared), and what `payload()`
//! returns for every kind of message.

use bytes::Bytes;
use volley_proto::{CloseCode, CloseFrame, Message, PreparedMessage, Utf8Bytes};

#[test]
fn sendable_close_codes_are_exactly_the_registered_and_private_ranges() {
    let sendable: Vec<u16> = (0..=u16::MAX)
        .filter(|&c| CloseCode(c).is_sendable())
        .collect();
    let expected: Vec<u16> = (1000..=1003)
        .chain(1007..=1014)
        .chain(3000..=4999)
        .collect();
    assert_eq!(sendable, expected);
    // The codes reserved for local use never go on the wire.
    for reserved in [
        CloseCode::NO_STATUS,
        CloseCode::ABNORMAL,
        CloseCode(1004),
        CloseCode(1015),
    ] {
        assert!(!reserved.is_sendable(), "{reserved}");
    }
    assert_eq!(CloseCode::from(4001), CloseCode(4001));
    assert_eq!(u16::from(CloseCode::GOING_AWAY), 1001);
    assert_eq!(CloseCode::TRY_AGAIN_LATER.to_string(), "1013");
}

#[test]
fn only_data_messages_can_be_prepared_and_control_messages_are_handed_back() {
    let text = PreparedMessage::try_from(Message::text("héllo")).unwrap();
    assert!(text.is_text());
    assert_eq!(text.frame(), PreparedMessage::text("héllo").frame());
    assert_eq!(text.to_message(), Message::text("héllo"));

    let binary = PreparedMessage::try_from(Message::binary(vec![1, 2, 3])).unwrap();
    assert!(!binary.is_text());
    assert_eq!(&binary.frame()[..], &[0x82, 3, 1, 2, 3]);

    for control in [
        Message::Ping(Bytes::from_static(b"p")),
        Message::Pong(Bytes::new()),
        Message::Close(Some(CloseFrame::new(CloseCode::NORMAL, "bye"))),
        Message::Close(None),
    ] {
        assert_eq!(PreparedMessage::try_from(control.clone()), Err(control));
    }
}

#[test]
fn conversions_into_prepared_messages_keep_the_kind_and_payload() {
    let frames = [
        (PreparedMessage::from(String::from("ab")), true),
        (PreparedMessage::from(Utf8Bytes::from("ab")), true),
        (PreparedMessage::from(b"ab".to_vec()), false),
        (PreparedMessage::from(&b"ab"[..]), false),
        (PreparedMessage::from(Bytes::from_static(b"ab")), false),
    ];
    for (p, text) in frames {
        assert_eq!(p.is_text(), text, "{p:?}");
        assert_eq!(
            &p.frame()[..],
            &[if text { 0x81 } else { 0x82 }, 2, b'a', b'b']
        );
        assert_eq!(p.payload_len(), 2);
    }
}

#[test]
fn payload_of_every_message_kind() {
    assert_eq!(Message::from("txt").payload(), b"txt");
    assert_eq!(Message::from(String::from("txt")), Message::text("txt"));
    assert_eq!(Message::from(vec![7u8]).payload(), [7]);
    assert_eq!(
        Message::from(Bytes::from_static(b"\x08")),
        Message::binary(vec![8])
    );
    assert_eq!(Message::Ping(Bytes::from_static(b"pi")).payload(), b"pi");
    assert_eq!(Message::Pong(Bytes::from_static(b"po")).payload(), b"po");
    // A close message's payload is its reason (the code is not part of it).
    let close = Message::Close(Some(CloseFrame::new(CloseCode(4000), "why")));
    assert_eq!(close.payload(), b"why");
    assert_eq!(Message::Close(None).payload(), b"");
    assert!(Message::text("").is_data() && Message::binary(vec![]).is_data());
    assert!(!close.is_data() && !Message::Ping(Bytes::new()).is_data());
}

#[test]
fn utf8_bytes_compare_and_print_as_their_text() {
    let s = Utf8Bytes::from_static("añb");
    assert_eq!(s, *"añb");
    assert_eq!(s, "añb");
    assert_eq!(s.to_string(), "añb");
    assert_eq!(format!("{s:?}"), "\"añb\"");
    assert_eq!(Utf8Bytes::new().as_str(), "");
    assert!(Utf8Bytes::try_from_bytes(Bytes::from_static(b"a\xffb")).is_err());
    assert_eq!(
        Utf8Bytes::try_from_bytes(Bytes::from_static(b"ok")).unwrap(),
        "ok"
    );
}
