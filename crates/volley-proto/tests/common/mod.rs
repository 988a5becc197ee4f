//! Helpers shared by the integration tests: an encoder and decoder for raw frames written
//! independently of the crate's own (so the tests do not check the code against itself), and
//! shortcuts for driving a `Connection`.

#![allow(dead_code, unreachable_pub)]

use volley_proto::{CloseCode, Connection, Message, ProtocolConfig, ProtocolError, Role, State};

pub const CONT: u8 = 0x0;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

/// The masking key every test frame from a "client" uses.
pub const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame as it appears on the wire, built by hand.
#[derive(Debug, Clone)]
pub struct RawFrame {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    pub payload: Vec<u8>,
    /// Overrides the payload length written in the header (the payload itself is unchanged).
    pub declared_len: Option<u64>,
    /// Forces the 16-bit or 64-bit length form (126 or 127) even for short payloads.
    pub len_form: Option<u8>,
}

impl RawFrame {
    pub fn new(opcode: u8, payload: impl AsRef<[u8]>) -> Self {
        Self {
            fin: true,
            rsv: 0,
            opcode,
            mask: None,
            payload: payload.as_ref().to_vec(),
            declared_len: None,
            len_form: None,
        }
    }

    pub fn fin(mut self, fin: bool) -> Self {
        self.fin = fin;
        self
    }

    pub fn rsv(mut self, rsv: u8) -> Self {
        self.rsv = rsv;
        self
    }

    pub fn masked(mut self) -> Self {
        self.mask = Some(KEY);
        self
    }

    pub fn mask(mut self, key: Option<[u8; 4]>) -> Self {
        self.mask = key;
        self
    }

    pub fn declared_len(mut self, len: u64) -> Self {
        self.declared_len = Some(len);
        self
    }

    pub fn len_form(mut self, form: u8) -> Self {
        self.len_form = Some(form);
        self
    }

    /// The header bytes alone.
    pub fn header(&self) -> Vec<u8> {
        let mut out = vec![(u8::from(self.fin) << 7) | (self.rsv << 4) | self.opcode];
        let len = self.declared_len.unwrap_or(self.payload.len() as u64);
        let mask_bit = if self.mask.is_some() { 0x80 } else { 0 };
        let form = self.len_form.unwrap_or(match len {
            0..=125 => 0,
            126..=0xFFFF => 126,
            _ => 127,
        });
        match form {
            126 => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            127 => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
            _ => out.push(mask_bit | len as u8),
        }
        if let Some(key) = self.mask {
            out.extend_from_slice(&key);
        }
        out
    }

    /// Header and (masked, if a key is set) payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.header();
        let start = out.len();
        out.extend_from_slice(&self.payload);
        if let Some(key) = self.mask {
            for (i, b) in out[start..].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        out
    }
}

/// A frame as a peer sends it to a connection of `role`: masked when the receiver is a server.
pub fn from_peer(role: Role, frame: RawFrame) -> Vec<u8> {
    match role {
        Role::Server => frame.masked().encode(),
        Role::Client => frame.mask(None).encode(),
    }
}

/// Shortcut: a complete frame as a client sends it to a server (masked).
pub fn cframe(opcode: u8, payload: impl AsRef<[u8]>) -> Vec<u8> {
    RawFrame::new(opcode, payload).masked().encode()
}

/// Shortcut: a client frame with FIN as given.
pub fn cframe_fin(fin: bool, opcode: u8, payload: impl AsRef<[u8]>) -> Vec<u8> {
    RawFrame::new(opcode, payload).fin(fin).masked().encode()
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason);
    p
}

/// A frame decoded from bytes a connection wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    pub fin: bool,
    pub rsv: u8,
    pub opcode: u8,
    pub masked: bool,
    /// The payload, unmasked.
    pub payload: Vec<u8>,
    /// The length form used in the header: 0 (7-bit), 126 or 127.
    pub len_form: u8,
}

impl Decoded {
    /// The close code of a close frame, if its payload has one.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// Decodes a byte stream into frames; panics on trailing garbage or an incomplete frame.
pub fn decode_all(mut buf: &[u8]) -> Vec<Decoded> {
    let mut frames = Vec::new();
    while !buf.is_empty() {
        assert!(buf.len() >= 2, "truncated header");
        let fin = buf[0] & 0x80 != 0;
        let rsv = (buf[0] >> 4) & 7;
        let opcode = buf[0] & 0x0F;
        let masked = buf[1] & 0x80 != 0;
        let len7 = buf[1] & 0x7F;
        let (len, mut at) = match len7 {
            126 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()), 10),
            n => (u64::from(n), 2),
        };
        let key = if masked {
            let k: [u8; 4] = buf[at..at + 4].try_into().unwrap();
            at += 4;
            Some(k)
        } else {
            None
        };
        let len = len as usize;
        assert!(buf.len() >= at + len, "truncated payload");
        let mut payload = buf[at..at + len].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        frames.push(Decoded {
            fin,
            rsv,
            opcode,
            masked,
            payload,
            len_form: if len7 >= 126 { len7 } else { 0 },
        });
        buf = &buf[at + len..];
    }
    frames
}

/// Every byte the connection has queued for the transport.
pub fn drain_transmit(conn: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = conn.poll_transmit() {
        out.extend_from_slice(&b);
    }
    assert_eq!(conn.pending_transmit(), 0);
    out
}

/// Every frame the connection has queued, decoded.
pub fn transmitted(conn: &mut Connection) -> Vec<Decoded> {
    decode_all(&drain_transmit(conn))
}

/// Every event the connection has queued.
pub fn events(conn: &mut Connection) -> Vec<Message> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

pub fn server() -> Connection {
    Connection::new(Role::Server, ProtocolConfig::default())
}

pub fn client() -> Connection {
    Connection::new(Role::Client, ProtocolConfig::default())
}

/// Asserts that the connection's transmit queue holds exactly one close frame with `code`,
/// correctly masked for its role, and returns it.
pub fn expect_close_sent(conn: &mut Connection, code: u16) -> Decoded {
    let role = conn.role();
    let frames = transmitted(conn);
    assert_eq!(frames.len(), 1, "expected one close frame, got {frames:?}");
    let f = frames.into_iter().next().unwrap();
    assert_eq!(f.opcode, CLOSE, "expected a close frame, got {f:?}");
    assert!(f.fin);
    assert_eq!(
        f.masked,
        role == Role::Client,
        "masking of {f:?} for {role:?}"
    );
    assert_eq!(f.close_code(), Some(code), "close frame {f:?}");
    assert!(
        std::str::from_utf8(&f.payload[2..]).is_ok(),
        "reason must be UTF-8"
    );
    assert!(f.payload.len() <= 125);
    f
}

/// Feeds `input` to `conn` and asserts it fails with `err`, queuing a close with `err`'s code.
pub fn expect_failure(conn: &mut Connection, input: &[u8], err: ProtocolError, code: u16) {
    assert_eq!(
        err.close_code(),
        CloseCode(code),
        "test expectation is inconsistent"
    );
    assert_eq!(conn.handle_read(input), Err(err));
    assert_eq!(conn.state(), State::Failed);
    assert!(conn.is_terminated());
    expect_close_sent(conn, code);
    // Everything after the failure is ignored.
    assert_eq!(conn.handle_read(&cframe(TEXT, "late")), Ok(()));
    assert_eq!(drain_transmit(conn), b"");
}

/// A small deterministic PRNG (xorshift64*), so random-split tests are reproducible.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// Feeds `input` in chunks whose sizes come from `rng` (1..=max_chunk), stopping at an error.
pub fn feed_random_splits(
    conn: &mut Connection,
    input: &[u8],
    rng: &mut Rng,
    max_chunk: usize,
) -> Result<(), ProtocolError> {
    let mut rest = input;
    while !rest.is_empty() {
        let n = (1 + rng.below(max_chunk)).min(rest.len());
        conn.handle_read(&rest[..n])?;
        rest = &rest[n..];
    }
    Ok(())
}
