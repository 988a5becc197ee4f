//! The Engine.IO v4 packet codec (sans-IO).
//!
//! A packet is a one-digit type followed by its data: `0` open (JSON), `1` close, `2` ping,
//! `3` pong, `4` message, `5` upgrade, `6` noop. Over WebSocket every packet is one frame (a binary
//! message is a raw binary frame); over HTTP long-polling packets are joined by the record
//! separator `\x1e` and a binary message is written `b` followed by its base64 encoding.
//!
//! Decoding never panics and allocates at most in proportion to its input.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;

/// The separator of packets in a long-polling payload (ASCII record separator).
pub const SEPARATOR: char = '\x1e';

/// Decodes base64 as Node's `Buffer.from(text, "base64")` does (engine.io-parser decodes the
/// `b` packets of long-polling with it): the standard and the URL-safe alphabets, characters
/// outside them skipped, the end at the first `=`, a last lone character dropped. Never fails.
fn decode_base64_like_node(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 2);
    let mut group = 0u32;
    let mut count = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => break,
            _ => continue,
        };
        group = (group << 6) | u32::from(value);
        count += 1;
        if count == 4 {
            out.extend_from_slice(&group.to_be_bytes()[1..]);
            group = 0;
            count = 0;
        }
    }
    // A partial group: 2 characters make 1 byte, 3 make 2 (the low bits are dropped).
    match count {
        2 => out.push((group >> 4) as u8),
        3 => out.extend_from_slice(&((group >> 2) as u16).to_be_bytes()),
        _ => {}
    }
    out
}

/// A message packet's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A text message.
    Text(String),
    /// A binary message.
    Binary(Bytes),
}

impl Data {
    /// The payload's length in bytes (text as UTF-8, binary as is).
    pub fn len(&self) -> usize {
        match self {
            Self::Text(s) => s.len(),
            Self::Binary(b) => b.len(),
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<String> for Data {
    fn from(s: String) -> Self {
        Self::Text(s)
    }
}

impl From<&str> for Data {
    fn from(s: &str) -> Self {
        Self::Text(s.to_owned())
    }
}

impl From<Bytes> for Data {
    fn from(b: Bytes) -> Self {
        Self::Binary(b)
    }
}

impl From<Vec<u8>> for Data {
    fn from(b: Vec<u8>) -> Self {
        Self::Binary(Bytes::from(b))
    }
}

/// A message packet encoded once for many sessions (a broadcast): cheap to clone, its
/// WebSocket frame built at most once, on first use, and then shared by every session that
/// sends it ([`SessionSender::send_shared`](crate::SessionSender::send_shared)).
#[derive(Clone, Debug)]
pub struct SharedData(std::sync::Arc<SharedInner>);

#[derive(Debug)]
struct SharedInner {
    data: Data,
    frame: std::sync::OnceLock<volley::PreparedMessage>,
}

impl SharedData {
    /// Wraps `data` (a message's payload).
    pub fn new(data: Data) -> Self {
        SharedData(std::sync::Arc::new(SharedInner {
            data,
            frame: std::sync::OnceLock::new(),
        }))
    }

    /// The payload.
    pub fn data(&self) -> &Data {
        &self.0.data
    }

    /// The WebSocket frame (`4` and the text, or the bytes), built once.
    pub(crate) fn ws_frame(&self) -> &volley::PreparedMessage {
        self.0.frame.get_or_init(|| match &self.0.data {
            Data::Text(text) => {
                let mut s = String::with_capacity(text.len() + 1);
                s.push('4');
                s.push_str(text);
                volley::PreparedMessage::text(s)
            }
            Data::Binary(bytes) => volley::PreparedMessage::binary(bytes),
        })
    }
}

/// One Engine.IO packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packet {
    /// `0`: the handshake, with its JSON (`sid`, `upgrades`, `pingInterval`, `pingTimeout`,
    /// `maxPayload`).
    Open(String),
    /// `1`: the transport is closing.
    Close,
    /// `2`: heartbeat ping (the server sends it in v4) or, with data `probe`, the upgrade probe.
    Ping(String),
    /// `3`: heartbeat pong, or the probe's answer `3probe`.
    Pong(String),
    /// `4`: a message.
    Message(Data),
    /// `5`: the client switches to the probed transport.
    Upgrade,
    /// `6`: nothing (ends a pending long-polling GET during an upgrade).
    Noop,
}

impl Packet {
    /// The packet's type digit.
    pub fn type_char(&self) -> char {
        match self {
            Self::Open(_) => '0',
            Self::Close => '1',
            Self::Ping(_) => '2',
            Self::Pong(_) => '3',
            Self::Message(_) => '4',
            Self::Upgrade => '5',
            Self::Noop => '6',
        }
    }

    /// Appends the text form of this packet to `out`: the type digit and its data, or for a
    /// binary message `b` and the base64 of the bytes (the long-polling form).
    pub fn encode_text(&self, out: &mut String) {
        match self {
            Self::Message(Data::Binary(bytes)) => {
                out.push('b');
                STANDARD.encode_string(bytes, out);
            }
            _ => {
                out.push(self.type_char());
                match self {
                    Self::Open(s) | Self::Ping(s) | Self::Pong(s) => out.push_str(s),
                    Self::Message(Data::Text(s)) => out.push_str(s),
                    _ => {}
                }
            }
        }
    }

    /// The text form as a new string (see [`encode_text`](Self::encode_text)).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.encode_text(&mut out);
        out
    }
}

/// A packet or payload that is not valid Engine.IO v4.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketError {
    kind: ErrorKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum ErrorKind {
    Empty,
    UnknownType(char),
    NotUtf8,
}

impl PacketError {
    fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Empty => f.write_str("empty Engine.IO packet"),
            ErrorKind::UnknownType(c) => write!(f, "unknown Engine.IO packet type {c:?}"),
            ErrorKind::NotUtf8 => f.write_str("long-polling payload is not valid UTF-8"),
        }
    }
}

impl std::error::Error for PacketError {}

/// Decodes one packet in text form: a WebSocket text frame (`4hello`, `2probe`) or one record of
/// a long-polling payload (where `b<base64>` is a binary message). The base64 is read as Node
/// reads it: characters outside the alphabet are skipped and it ends at the first `=`, so a `b`
/// packet always decodes.
pub fn decode_text(text: &str) -> Result<Packet, PacketError> {
    let mut chars = text.chars();
    let first = chars.next().ok_or(PacketError::new(ErrorKind::Empty))?;
    let rest = chars.as_str();
    Ok(match first {
        '0' => Packet::Open(rest.to_owned()),
        '1' => Packet::Close,
        '2' => Packet::Ping(rest.to_owned()),
        '3' => Packet::Pong(rest.to_owned()),
        '4' => Packet::Message(Data::Text(rest.to_owned())),
        '5' => Packet::Upgrade,
        '6' => Packet::Noop,
        'b' => Packet::Message(Data::Binary(Bytes::from(decode_base64_like_node(rest)))),
        other => return Err(PacketError::new(ErrorKind::UnknownType(other))),
    })
}

/// Decodes a long-polling request body: packets joined by `\x1e`, binary messages as
/// `b<base64>`. The whole payload is rejected if any packet is invalid or the body is not UTF-8.
/// (The server itself reads a body as Node does: invalid UTF-8 replaced by U+FFFD, the packets
/// before an invalid one handled, then the session closed.)
pub fn decode_payload(body: &[u8]) -> Result<Vec<Packet>, PacketError> {
    let text = std::str::from_utf8(body).map_err(|_| PacketError::new(ErrorKind::NotUtf8))?;
    text.split(SEPARATOR).map(decode_text).collect()
}

/// Appends the long-polling payload for `packets` to `out` (packets joined by `\x1e`).
pub fn encode_payload(packets: &[Packet], out: &mut String) {
    for (i, packet) in packets.iter().enumerate() {
        if i > 0 {
            out.push(SEPARATOR);
        }
        packet.encode_text(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(packets: &[Packet]) -> String {
        let mut s = String::new();
        encode_payload(packets, &mut s);
        s
    }

    #[test]
    fn text_packets_round_trip() {
        let packets = [
            Packet::Open(r#"{"sid":"x"}"#.into()),
            Packet::Close,
            Packet::Ping(String::new()),
            Packet::Ping("probe".into()),
            Packet::Pong("probe".into()),
            Packet::Message(Data::Text("hello €".into())),
            Packet::Message(Data::Text(String::new())),
            Packet::Upgrade,
            Packet::Noop,
        ];
        for p in &packets {
            assert_eq!(decode_text(&p.to_text()).unwrap(), *p, "{p:?}");
        }
        assert_eq!(Packet::Ping("probe".into()).to_text(), "2probe");
        assert_eq!(Packet::Message(Data::Text("hi".into())).to_text(), "4hi");
        assert_eq!(Packet::Close.to_text(), "1");
        assert_eq!(Packet::Noop.to_text(), "6");
    }

    #[test]
    fn binary_is_b_base64() {
        let p = Packet::Message(Data::Binary(Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(p.to_text(), "bAQIDBA==");
        assert_eq!(decode_text("bAQIDBA==").unwrap(), p);
        // Unpadded base64 is accepted like engine.io-parser does.
        assert_eq!(decode_text("bAQIDBA").unwrap(), p);
        let binary = |bytes: &[u8]| Packet::Message(Data::Binary(Bytes::copy_from_slice(bytes)));
        assert_eq!(decode_text("b").unwrap(), binary(&[]));
        // What Node's Buffer.from(text, "base64") makes of odd input (checked with Node 20):
        // other characters skipped, the end at the first "=", URL-safe characters, a lone last
        // character dropped.
        for (text, bytes) in [
            ("AQ*ID", &[1u8, 2, 3][..]),
            ("AQ=ID", &[1]),
            ("AQ==ID", &[1]),
            ("A", &[]),
            ("AQI", &[1, 2]),
            ("AQID A", &[1, 2, 3]),
            ("AQ-_", &[0x01, 0x0f, 0xbf]),
            ("A===", &[]),
            ("AQIDBA", &[1, 2, 3, 4]),
            ("AQIDB", &[1, 2, 3]),
            ("@@@", &[]),
            ("AQéID", &[1, 2, 3]),
            ("!!!!", &[]),
        ] {
            assert_eq!(
                decode_text(&format!("b{text}")).unwrap(),
                binary(bytes),
                "{text}"
            );
        }
    }

    #[test]
    fn payload_round_trip() {
        let packets = vec![
            Packet::Message(Data::Text("hello".into())),
            Packet::Message(Data::Binary(Bytes::from_static(b"\x00\xff"))),
            Packet::Ping(String::new()),
            Packet::Message(Data::Text("€uro".into())),
        ];
        let text = payload(&packets);
        assert_eq!(text, "4hello\x1ebAP8=\x1e2\x1e4€uro");
        assert_eq!(decode_payload(text.as_bytes()).unwrap(), packets);
        assert_eq!(
            decode_payload(b"4a").unwrap(),
            vec![Packet::Message(Data::Text("a".into()))]
        );
    }

    #[test]
    fn hostile_inputs_are_errors() {
        assert!(decode_text("").is_err());
        assert!(decode_text("7").is_err());
        assert!(decode_text("x4").is_err());
        assert!(decode_text("é").is_err());
        assert!(decode_payload(b"").is_err());
        assert!(decode_payload(b"4a\x1e").is_err());
        assert!(decode_payload(b"\x1e\x1e").is_err());
        assert!(decode_payload(b"4a\x1e9").is_err());
        assert!(decode_payload(b"4\xff\xfe").is_err());
        assert!(decode_payload(&[0x1e; 10_000]).is_err());
        let err = decode_payload(b"4ok\x1e9").unwrap_err();
        assert!(err.to_string().contains("type"), "{err}");
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic xorshift fuzz: every input decodes or errs, never panics.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let alphabet = b"0123456b\x1e=+/AZaz\xff\xc3\xa9x";
        for _ in 0..5_000 {
            let mut input = Vec::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                input.push(alphabet[(state % alphabet.len() as u64) as usize]);
            }
            if let Ok(packets) = decode_payload(&input) {
                // What decodes re-encodes to something that decodes to the same packets.
                assert_eq!(
                    decode_payload(payload(&packets).as_bytes()).unwrap(),
                    packets
                );
            }
            state = state.wrapping_add(0x9e37_79b9);
        }
    }
}
