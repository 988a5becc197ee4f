//! Messages encoded once and sent to many connections.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::{FrameHeader, OpCode};
use crate::message::{Message, Utf8Bytes};

/// A text or binary message encoded once into its server frame, to send to many connections.
///
/// It holds the complete unmasked frame (FIN set, no RSV bits) in one [`Bytes`]; cloning it and
/// [`Connection::send_prepared`](crate::Connection::send_prepared) share that allocation, so
/// a broadcast to a thousand server connections encodes the message once and copies no payload.
///
/// Client connections must mask every frame with a fresh key, and connections configured with a
/// [`fragment_size`](crate::ProtocolConfig::fragment_size) smaller than the payload must split it: for
/// those `send_prepared` falls back to encoding the message like `send` (the payload is still
/// shared, as a slice of the frame). Server connections send the prepared frame uncompressed
/// even where permessage-deflate was negotiated, which RFC 7692 allows (RSV1 stays clear):
/// compressing once for everyone would need the same window and no context takeover on every
/// connection, so it is not attempted.
///
/// ```
/// use volley_proto::{ProtocolConfig, Connection, PreparedMessage, Role};
///
/// let prepared = PreparedMessage::text("hello, everyone");
/// let mut a = Connection::new(Role::Server, ProtocolConfig::default());
/// let mut b = Connection::new(Role::Server, ProtocolConfig::default());
/// a.send_prepared(&prepared).unwrap();
/// b.send_prepared(&prepared).unwrap();
/// // Both connections queue the very same bytes.
/// assert_eq!(a.poll_transmit().unwrap().as_ptr(), prepared.frame().as_ptr());
/// assert_eq!(b.poll_transmit().unwrap().as_ptr(), prepared.frame().as_ptr());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    /// Header and payload of the unmasked, unfragmented frame.
    frame: Bytes,
    /// Where the payload starts in `frame`.
    header_len: usize,
    /// Text (else binary).
    text: bool,
}

impl PreparedMessage {
    /// Encodes a text message.
    pub fn text(text: impl Into<Utf8Bytes>) -> Self {
        Self::encode(OpCode::Text, text.into().as_bytes())
    }

    /// Encodes a binary message.
    pub fn binary(data: impl AsRef<[u8]>) -> Self {
        Self::encode(OpCode::Binary, data.as_ref())
    }

    fn encode(opcode: OpCode, payload: &[u8]) -> Self {
        let header = FrameHeader {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: payload.len() as u64,
        };
        let header_len = header.encoded_len();
        let mut frame = BytesMut::with_capacity(header_len + payload.len());
        header.encode(&mut frame);
        frame.put_slice(payload);
        Self {
            frame: frame.freeze(),
            header_len,
            text: opcode == OpCode::Text,
        }
    }

    /// The encoded server frame, exactly as it goes on the wire.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The payload: a slice of [`frame`](Self::frame), not a copy.
    pub fn payload(&self) -> Bytes {
        self.frame.slice(self.header_len..)
    }

    /// The payload's length in bytes.
    pub fn payload_len(&self) -> usize {
        self.frame.len() - self.header_len
    }

    /// Whether this is a text message (else binary).
    pub fn is_text(&self) -> bool {
        self.text
    }

    /// The message, with its payload sharing the frame's allocation.
    pub fn to_message(&self) -> Message {
        let payload = self.payload();
        if self.text {
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        }
    }
}

impl std::fmt::Debug for PreparedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedMessage")
            .field("text", &self.text)
            .field("payload_len", &self.payload_len())
            .finish_non_exhaustive()
    }
}

impl From<Utf8Bytes> for PreparedMessage {
    fn from(text: Utf8Bytes) -> Self {
        Self::text(text)
    }
}

impl From<&str> for PreparedMessage {
    fn from(text: &str) -> Self {
        Self::encode(OpCode::Text, text.as_bytes())
    }
}

impl From<String> for PreparedMessage {
    fn from(text: String) -> Self {
        Self::encode(OpCode::Text, text.as_bytes())
    }
}

impl From<Bytes> for PreparedMessage {
    fn from(data: Bytes) -> Self {
        Self::binary(data)
    }
}

impl From<Vec<u8>> for PreparedMessage {
    fn from(data: Vec<u8>) -> Self {
        Self::binary(data)
    }
}

impl From<&[u8]> for PreparedMessage {
    fn from(data: &[u8]) -> Self {
        Self::binary(data)
    }
}

impl TryFrom<Message> for PreparedMessage {
    /// Control messages (ping, pong, close) cannot be prepared; they are handed back.
    type Error = Message;

    fn try_from(message: Message) -> Result<Self, Message> {
        match message {
            Message::Text(text) => Ok(Self::text(text)),
            Message::Binary(data) => Ok(Self::binary(data)),
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_header_then_payload() {
        let p = PreparedMessage::text("hi");
        assert_eq!(&p.frame()[..], &[0x81, 2, b'h', b'i']);
        assert_eq!(p.to_message(), Message::text("hi"));
        let big = PreparedMessage::binary(vec![7u8; 300]);
        assert_eq!(&big.frame()[..4], &[0x82, 126, 1, 44]);
        assert_eq!(big.payload().len(), 300);
        assert_eq!(big.to_message(), Message::binary(vec![7u8; 300]));
    }

    #[test]
    fn clones_share_the_frame() {
        let p = PreparedMessage::from("shared");
        let q = p.clone();
        assert_eq!(p.frame().as_ptr(), q.frame().as_ptr());
        assert_eq!(p.payload().as_ptr(), p.frame()[2..].as_ptr());
    }

    #[test]
    fn control_messages_are_handed_back() {
        let ping = Message::Ping(Bytes::from_static(b"x"));
        assert_eq!(PreparedMessage::try_from(ping.clone()), Err(ping));
    }
}
