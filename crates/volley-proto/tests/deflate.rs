//! permessage-deflate (RFC 7692): negotiation in both roles, compressed messages both ways with
//! and without context takeover, fragmentation, RSV1 rules, window bits 8, and limits applied to
//! the inflated size (bombs, exactly-at-limit, limit + 1).
//!
//! Self-contained: frames are encoded and decoded here, and compressed payloads checked with a
//! small DEFLATE decoder of our own, so the code is not only checked against itself.

use flate2::{Compress, Compression, FlushCompress};
use http::{HeaderMap, HeaderValue, Uri};
use volley_proto::deflate::{DeflateConfig, DeflateParams};
use volley_proto::handshake::{
    ClientHandshake, Extension, HandshakeError, HeaderLimits, UpgradeRequest, accept_key,
    parse_extensions,
};
use volley_proto::{CloseCode, Connection, Message, ProtocolConfig, ProtocolError, Role, State};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// The extensions in a `Sec-WebSocket-Extensions` value.
fn extensions(value: &str) -> Vec<Extension> {
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_str(value).unwrap(),
    );
    parse_extensions(&headers).expect("valid header")
}

/// What a server with `config` answers to the offer `offer`.
fn server_answer(config: &DeflateConfig, offer: &str) -> Option<String> {
    config
        .negotiate(&extensions(offer))
        .map(|p| p.header_value())
}

/// What a client with `config` makes of the response `response`.
fn client_take(config: &DeflateConfig, response: &str) -> Result<DeflateParams, HandshakeError> {
    let mut exts = extensions(response);
    assert_eq!(exts.len(), 1);
    config.accept_response(&exts.remove(0))
}

/// Negotiates like a real handshake: the client's offer, the server's choice, the client's
/// validation of the answer. Returns (server params, client params).
fn negotiate(server: &DeflateConfig, client: &DeflateConfig) -> (DeflateParams, DeflateParams) {
    let params = server
        .negotiate(&extensions(&client.offer()))
        .expect("the server accepts the client's offer");
    let client_params = client_take(client, &params.header_value()).expect("valid answer");
    (params, client_params)
}

/// A connected server and client with permessage-deflate negotiated from these preferences.
fn pair_with(
    server: DeflateConfig,
    client: DeflateConfig,
    max_message: usize,
    fragment: Option<usize>,
) -> (Connection, Connection) {
    let (sp, cp) = negotiate(&server, &client);
    let base = ProtocolConfig::default()
        .max_message_size(max_message)
        .fragment_size(fragment);
    (
        Connection::with_deflate(Role::Server, base.clone().deflate(Some(server)), Some(sp)),
        Connection::with_deflate(Role::Client, base.deflate(Some(client)), Some(cp)),
    )
}

fn pair(server: DeflateConfig, client: DeflateConfig) -> (Connection, Connection) {
    pair_with(server, client, 16 * MIB, None)
}

/// Moves everything `from` wants to send into `to`; returns the bytes that crossed the wire.
fn pump(from: &mut Connection, to: &mut Connection) -> Vec<u8> {
    let mut wire = Vec::new();
    while let Some(bytes) = from.poll_transmit() {
        wire.extend_from_slice(&bytes);
    }
    to.handle_read(&wire).expect("the peer accepts our frames");
    wire
}

fn events(c: &mut Connection) -> Vec<Message> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn transmitted(c: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(b) = c.poll_transmit() {
        out.extend_from_slice(&b);
    }
    out
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    fin: bool,
    rsv: u8,
    opcode: u8,
    payload: Vec<u8>,
}

/// Decodes a stream of complete frames (unmasking them).
fn frames(mut buf: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    while !buf.is_empty() {
        let (b0, b1) = (buf[0], buf[1]);
        let (len, mut at) = match b1 & 0x7f {
            126 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 => (
                usize::try_from(u64::from_be_bytes(buf[2..10].try_into().unwrap())).unwrap(),
                10,
            ),
            n => (usize::from(n), 2),
        };
        let key = (b1 & 0x80 != 0).then(|| {
            at += 4;
            [buf[at - 4], buf[at - 3], buf[at - 2], buf[at - 1]]
        });
        let mut payload = buf[at..at + len].to_vec();
        if let Some(k) = key {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= k[i % 4];
            }
        }
        out.push(Frame {
            fin: b0 & 0x80 != 0,
            rsv: (b0 >> 4) & 7,
            opcode: b0 & 0x0f,
            payload,
        });
        buf = &buf[at + len..];
    }
    out
}

/// A frame as a peer sends it to a connection of `receiver` role (masked towards a server).
fn raw_frame(receiver: Role, fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (rsv << 4) | opcode];
    let mask_bit = if receiver == Role::Server { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if receiver == Role::Server {
        let key = [0x12, 0x34, 0x56, 0x78];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Raw DEFLATE of `data` with a sync flush, as a peer's compressor produces it (tail included).
fn sync_compress(c: &mut Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        c.compress_vec(&data[done..], &mut out, FlushCompress::Sync)
            .unwrap();
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}

/// A compressed message payload for `data` from a fresh compressor: DEFLATE, tail stripped.
fn deflate_message(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::new(6), false);
    let mut out = sync_compress(&mut c, data);
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A decompression bomb: `mib` MiB of zeros in about 1 KiB of DEFLATE per MiB (the most DEFLATE
/// allows: ~1030:1). Built from three compressed MiB, the later ones repeating exactly.
fn zeros_bomb(mib: usize) -> Vec<u8> {
    let zeros = vec![0u8; MIB];
    let mut c = Compress::new(Compression::new(9), false);
    let first = sync_compress(&mut c, &zeros);
    let second = sync_compress(&mut c, &zeros);
    let third = sync_compress(&mut c, &zeros);
    assert_eq!(
        second, third,
        "the compressor's output repeats once its window is all zeros"
    );
    let mut out = first;
    for _ in 1..mib {
        out.extend_from_slice(&second);
    }
    out.truncate(out.len() - 4);
    out
}

/// Text with repeats at distances up to ~600 bytes: compressible, but only with a window that
/// reaches back far enough.
fn texty(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    let mut data: Vec<u8> = Vec::with_capacity(len);
    for i in 0..len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let c = if (x >> 16).is_multiple_of(3) || i < 600 {
            b'a' + ((x >> 8) % 26) as u8
        } else {
            data[i - 1 - ((x >> 4) % 600) as usize]
        };
        data.push(c);
    }
    data
}

fn default() -> DeflateConfig {
    DeflateConfig::default()
}

// ---------------------------------------------------------------------------------------------
// A minimal DEFLATE decoder (after zlib's puff.c) that records the farthest match distance, to
// check window limits independently of zlib.
// ---------------------------------------------------------------------------------------------

struct Huffman {
    count: [u16; 16],
    symbol: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Self {
        let mut count = [0u16; 16];
        for &l in lengths {
            count[usize::from(l)] += 1;
        }
        let mut offs = [0u16; 16];
        for len in 1..15 {
            offs[len + 1] = offs[len] + count[len];
        }
        let mut symbol = vec![0u16; lengths.len()];
        for (sym, &l) in lengths.iter().enumerate() {
            if l != 0 {
                symbol[usize::from(offs[usize::from(l)])] = sym as u16;
                offs[usize::from(l)] += 1;
            }
        }
        Self { count, symbol }
    }
}

struct Puff<'a> {
    input: &'a [u8],
    pos: usize,
    bitbuf: u32,
    bitcnt: u32,
    out: Vec<u8>,
    max_distance: usize,
}

const LBASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LEXT: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DBASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DEXT: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

impl Puff<'_> {
    fn bits(&mut self, need: u32) -> Option<u32> {
        let mut val = self.bitbuf;
        while self.bitcnt < need {
            val |= u32::from(*self.input.get(self.pos)?) << self.bitcnt;
            self.pos += 1;
            self.bitcnt += 8;
        }
        self.bitbuf = val >> need;
        self.bitcnt -= need;
        Some(val & ((1u32 << need) - 1))
    }

    fn decode(&mut self, h: &Huffman) -> Option<u16> {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for len in 1..16 {
            code |= self.bits(1)? as i32;
            let count = i32::from(h.count[len]);
            if code - count < first {
                return Some(h.symbol[(index + code - first) as usize]);
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        None
    }

    fn stored(&mut self) -> Option<()> {
        self.bitbuf = 0;
        self.bitcnt = 0;
        let b = self.input.get(self.pos..self.pos + 4)?;
        let len = usize::from(u16::from_le_bytes([b[0], b[1]]));
        assert_eq!(len, usize::from(!u16::from_le_bytes([b[2], b[3]])));
        self.pos += 4;
        self.out
            .extend_from_slice(self.input.get(self.pos..self.pos + len)?);
        self.pos += len;
        Some(())
    }

    fn codes(&mut self, lencode: &Huffman, distcode: &Huffman) -> Option<()> {
        loop {
            let sym = usize::from(self.decode(lencode)?);
            if sym < 256 {
                self.out.push(sym as u8);
            } else if sym == 256 {
                return Some(());
            } else {
                let sym = sym - 257;
                let len = usize::from(LBASE[sym]) + self.bits(LEXT[sym])? as usize;
                let dsym = usize::from(self.decode(distcode)?);
                let dist = usize::from(DBASE[dsym]) + self.bits(DEXT[dsym])? as usize;
                assert!(dist <= self.out.len(), "distance beyond the start");
                self.max_distance = self.max_distance.max(dist);
                for _ in 0..len {
                    let b = self.out[self.out.len() - dist];
                    self.out.push(b);
                }
            }
        }
    }

    fn fixed(&mut self) -> Option<()> {
        let mut lengths = [0u8; 288];
        lengths[..144].fill(8);
        lengths[144..256].fill(9);
        lengths[256..280].fill(7);
        lengths[280..].fill(8);
        let lencode = Huffman::new(&lengths);
        let distcode = Huffman::new(&[5; 30]);
        self.codes(&lencode, &distcode)
    }

    fn dynamic(&mut self) -> Option<()> {
        const ORDER: [usize; 19] = [
            16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
        ];
        let nlen = self.bits(5)? as usize + 257;
        let ndist = self.bits(5)? as usize + 1;
        let ncode = self.bits(4)? as usize + 4;
        let mut lengths = [0u8; 320];
        for &o in &ORDER[..ncode] {
            lengths[o] = self.bits(3)? as u8;
        }
        let lencode = Huffman::new(&lengths[..19]);
        let mut index = 0;
        while index < nlen + ndist {
            let sym = self.decode(&lencode)?;
            if sym < 16 {
                lengths[index] = sym as u8;
                index += 1;
            } else {
                let (value, repeat) = match sym {
                    16 => (lengths[index - 1], 3 + self.bits(2)?),
                    17 => (0, 3 + self.bits(3)?),
                    _ => (0, 11 + self.bits(7)?),
                };
                for _ in 0..repeat {
                    lengths[index] = value;
                    index += 1;
                }
            }
        }
        let lencode = Huffman::new(&lengths[..nlen]);
        let distcode = Huffman::new(&lengths[nlen..nlen + ndist]);
        self.codes(&lencode, &distcode)
    }
}

/// Decodes a compressed message payload (tail appended here) and returns the output and the
/// farthest distance any match reached back.
fn puff(payload: &[u8]) -> (Vec<u8>, usize) {
    let mut input = payload.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut p = Puff {
        input: &input,
        pos: 0,
        bitbuf: 0,
        bitcnt: 0,
        out: Vec::new(),
        max_distance: 0,
    };
    while p.pos < input.len() {
        let _last = p.bits(1).expect("block header");
        let kind = p.bits(2).expect("block type");
        match kind {
            0 => p.stored(),
            1 => p.fixed(),
            2 => p.dynamic(),
            _ => panic!("invalid block type"),
        }
        .expect("complete block");
    }
    (p.out, p.max_distance)
}

// ---------------------------------------------------------------------------------------------
// Negotiation: the server
// ---------------------------------------------------------------------------------------------

#[test]
fn server_accepts_a_plain_offer_and_each_parameter() {
    let d = default();
    let cases = [
        ("permessage-deflate", "permessage-deflate"),
        (
            "permessage-deflate; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover",
        ),
        (
            "permessage-deflate; client_no_context_takeover",
            "permessage-deflate; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        (
            "permessage-deflate; server_max_window_bits=8",
            "permessage-deflate; server_max_window_bits=8",
        ),
        (
            "permessage-deflate; server_max_window_bits=\"12\"",
            "permessage-deflate; server_max_window_bits=12",
        ),
        // Without a value: the client merely supports the parameter; we don't limit it.
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
        ),
        // With a value: the client's own limit, confirmed so that our inflater can use it.
        (
            "permessage-deflate; client_max_window_bits=9",
            "permessage-deflate; client_max_window_bits=9",
        ),
        (
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
             server_no_context_takeover; server_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9",
        ),
        // The name and parameter names are case-insensitive tokens.
        (
            "PerMessage-Deflate; Server_No_Context_Takeover",
            "permessage-deflate; server_no_context_takeover",
        ),
    ];
    for (offer, answer) in cases {
        assert_eq!(
            server_answer(&d, offer).as_deref(),
            Some(answer),
            "offer {offer:?}"
        );
    }
}

#[test]
fn server_preferences_shape_the_answer() {
    let d = default().server_max_window_bits(10);
    // Announced even when not asked for (RFC 7692 §7.1.2.1 allows it) ...
    assert_eq!(
        server_answer(&d, "permessage-deflate").as_deref(),
        Some("permessage-deflate; server_max_window_bits=10")
    );
    // ... the smaller of the two when asked for.
    assert_eq!(
        server_answer(&d, "permessage-deflate; server_max_window_bits=12").as_deref(),
        Some("permessage-deflate; server_max_window_bits=10")
    );
    assert_eq!(
        server_answer(&d, "permessage-deflate; server_max_window_bits=9").as_deref(),
        Some("permessage-deflate; server_max_window_bits=9")
    );

    let d = default().client_max_window_bits(11);
    // A client that does not support the parameter cannot be limited: accepted all the same.
    assert_eq!(
        server_answer(&d, "permessage-deflate").as_deref(),
        Some("permessage-deflate")
    );
    assert_eq!(
        server_answer(&d, "permessage-deflate; client_max_window_bits").as_deref(),
        Some("permessage-deflate; client_max_window_bits=11")
    );
    assert_eq!(
        server_answer(&d, "permessage-deflate; client_max_window_bits=13").as_deref(),
        Some("permessage-deflate; client_max_window_bits=11")
    );
    assert_eq!(
        server_answer(&d, "permessage-deflate; client_max_window_bits=9").as_deref(),
        Some("permessage-deflate; client_max_window_bits=9")
    );

    let d = default().no_context_takeover(true);
    assert_eq!(
        server_answer(&d, "permessage-deflate").as_deref(),
        Some("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
    );
}

#[test]
fn server_declines_invalid_offers() {
    let d = default();
    for offer in [
        "permessage-deflate; foo",
        "permessage-deflate; foo=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
        "permessage-deflate; server_max_window_bits=10; server_max_window_bits=10",
        "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
        "permessage-deflate; server_no_context_takeover=1",
        "permessage-deflate; client_no_context_takeover=true",
        "permessage-deflate; server_max_window_bits",
        "permessage-deflate; server_max_window_bits=7",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; server_max_window_bits=0",
        "permessage-deflate; server_max_window_bits=08",
        "permessage-deflate; server_max_window_bits=abc",
        "permessage-deflate; client_max_window_bits=7",
        "permessage-deflate; client_max_window_bits=16",
        "permessage-deflate; client_max_window_bits=+9",
        "permessage-deflate; client_max_window_bits=15.0",
    ] {
        assert_eq!(
            server_answer(&d, offer),
            None,
            "offer {offer:?} must be declined"
        );
    }
}

#[test]
fn server_takes_the_first_acceptable_offer() {
    let d = default();
    // An invalid first offer is skipped, the next one taken.
    assert_eq!(
        server_answer(
            &d,
            "permessage-deflate; server_max_window_bits=99, permessage-deflate; client_max_window_bits=10"
        )
        .as_deref(),
        Some("permessage-deflate; client_max_window_bits=10")
    );
    // Both valid: the first wins.
    assert_eq!(
        server_answer(
            &d,
            "permessage-deflate; server_no_context_takeover, permessage-deflate"
        )
        .as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    // Other extensions are ignored.
    assert_eq!(
        server_answer(
            &d,
            "x-webkit-deflate-frame, permessage-foo; bar, permessage-deflate; server_max_window_bits=11"
        )
        .as_deref(),
        Some("permessage-deflate; server_max_window_bits=11")
    );
    // Nothing acceptable: declined, the connection goes on uncompressed.
    assert_eq!(
        server_answer(&d, "permessage-deflate; a, permessage-deflate; b"),
        None
    );
    assert_eq!(server_answer(&d, "x-webkit-deflate-frame"), None);
    // Autobahn 13.7's offers.
    assert_eq!(
        server_answer(
            &d,
            "permessage-deflate; client_no_context_takeover; client_max_window_bits; \
             server_no_context_takeover; server_max_window_bits=9, \
             permessage-deflate; client_no_context_takeover; client_max_window_bits; \
             server_no_context_takeover, permessage-deflate; client_no_context_takeover; \
             client_max_window_bits"
        )
        .as_deref(),
        Some(
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=9"
        )
    );
}

#[test]
fn upgrade_request_negotiates_from_its_header() {
    let request = "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=99\r\n\
        Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n";
    let (req, _) = UpgradeRequest::parse(request.as_bytes(), &HeaderLimits::default())
        .unwrap()
        .unwrap();
    let params = req.negotiate_deflate(&default().client_max_window_bits(12));
    assert_eq!(
        params,
        Some(DeflateParams::default().client_max_window_bits(Some(12)))
    );
    let mut extra = HeaderMap::new();
    extra.insert(
        http::header::SEC_WEBSOCKET_EXTENSIONS,
        HeaderValue::from_str(&params.unwrap().header_value()).unwrap(),
    );
    let response = String::from_utf8(req.accept(None, &extra)).unwrap();
    assert!(
        response.contains(
            "\r\nsec-websocket-extensions: permessage-deflate; client_max_window_bits=12\r\n"
        ),
        "{response}"
    );
}

// ---------------------------------------------------------------------------------------------
// Negotiation: the client
// ---------------------------------------------------------------------------------------------

#[test]
fn client_offers_its_preferences() {
    assert_eq!(
        default().offer(),
        "permessage-deflate; client_max_window_bits"
    );
    assert_eq!(
        default()
            .no_context_takeover(true)
            .server_max_window_bits(10)
            .client_max_window_bits(9)
            .offer(),
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
         server_max_window_bits=10; client_max_window_bits=9"
    );
    // Out-of-range settings are clamped.
    assert_eq!(
        default()
            .server_max_window_bits(3)
            .client_max_window_bits(30)
            .offer(),
        "permessage-deflate; server_max_window_bits=9; client_max_window_bits"
    );
}

#[test]
fn window_bits_8_is_accepted_but_asked_as_9() {
    // A peer asking for 8 gets 8 (compressed with zlib's 9-bit window, see below) ...
    assert_eq!(
        server_answer(&default(), "permessage-deflate; server_max_window_bits=8").as_deref(),
        Some("permessage-deflate; server_max_window_bits=8")
    );
    assert_eq!(
        client_take(&default(), "permessage-deflate; client_max_window_bits=8").unwrap(),
        DeflateParams::default().client_max_window_bits(Some(8))
    );
    // ... a client that announces 8 for itself is confirmed at 8 ...
    let d = default().client_max_window_bits(8);
    assert_eq!(
        server_answer(&d, "permessage-deflate; client_max_window_bits=8").as_deref(),
        Some("permessage-deflate; client_max_window_bits=8")
    );
    // ... but Volley never asks a peer for 8, which zlib-based peers refuse.
    assert_eq!(
        server_answer(&d, "permessage-deflate; client_max_window_bits").as_deref(),
        Some("permessage-deflate; client_max_window_bits=9")
    );
    assert_eq!(
        default().server_max_window_bits(8).offer(),
        "permessage-deflate; server_max_window_bits=9; client_max_window_bits"
    );
    assert_eq!(
        default().client_max_window_bits(8).offer(),
        "permessage-deflate; client_max_window_bits=8"
    );
    // A server answering the 9 we asked for is within the offer.
    assert_eq!(
        client_take(
            &default().server_max_window_bits(8),
            "permessage-deflate; server_max_window_bits=9"
        )
        .unwrap(),
        DeflateParams::default().server_max_window_bits(Some(9))
    );
}

#[test]
fn client_accepts_valid_responses() {
    let d = default();
    assert_eq!(
        client_take(&d, "permessage-deflate").unwrap(),
        DeflateParams::default()
    );
    assert_eq!(
        client_take(
            &d,
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=8; client_max_window_bits=9"
        )
        .unwrap(),
        DeflateParams::default()
            .server_no_context_takeover(true)
            .client_no_context_takeover(true)
            .server_max_window_bits(Some(8))
            .client_max_window_bits(Some(9))
    );
    // Our own limits hold even when the server does not repeat them.
    let d = default()
        .client_max_window_bits(10)
        .client_no_context_takeover(true);
    assert_eq!(
        client_take(&d, "permessage-deflate").unwrap(),
        DeflateParams::default()
            .client_no_context_takeover(true)
            .client_max_window_bits(Some(10))
    );
    let d = default()
        .server_max_window_bits(12)
        .server_no_context_takeover(true);
    assert_eq!(
        client_take(
            &d,
            "permessage-deflate; server_max_window_bits=11; server_no_context_takeover"
        )
        .unwrap(),
        DeflateParams::default()
            .server_no_context_takeover(true)
            .server_max_window_bits(Some(11))
    );
}

#[test]
fn client_rejects_invalid_responses() {
    let check = |d: &DeflateConfig, response: &str, why: &str| match client_take(d, response) {
        Err(HandshakeError::InvalidDeflateResponse(reason)) => {
            assert!(
                reason.contains(why),
                "{response:?}: {reason:?} lacks {why:?}"
            )
        }
        other => panic!("{response:?}: expected a rejection, got {other:?}"),
    };
    let d = default();
    check(&d, "permessage-deflate; foo", "unknown parameter");
    check(
        &d,
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "twice",
    );
    check(
        &d,
        "permessage-deflate; client_max_window_bits=10; client_max_window_bits=10",
        "twice",
    );
    check(
        &d,
        "permessage-deflate; server_max_window_bits=16",
        "not 8-15",
    );
    check(
        &d,
        "permessage-deflate; server_max_window_bits=7",
        "not 8-15",
    );
    check(&d, "permessage-deflate; server_max_window_bits", "not 8-15");
    check(
        &d,
        "permessage-deflate; client_max_window_bits=0",
        "not 8-15",
    );
    check(
        &d,
        "permessage-deflate; client_no_context_takeover=1",
        "no value",
    );
    check(
        &d,
        "permessage-deflate; client_max_window_bits",
        "without a value",
    );

    let d = default().client_max_window_bits(10);
    check(
        &d,
        "permessage-deflate; client_max_window_bits=12",
        "exceeds",
    );
    let d = default().server_max_window_bits(10);
    check(
        &d,
        "permessage-deflate; server_max_window_bits=12",
        "exceeds",
    );
    check(&d, "permessage-deflate", "not confirmed");
    let d = default().server_no_context_takeover(true);
    check(&d, "permessage-deflate", "not confirmed");
}

/// A 101 response to `hs` with `extra` header lines.
fn response_to(hs: &ClientHandshake, extra: &[&str]) -> Vec<u8> {
    let request = String::from_utf8(hs.request().to_vec()).unwrap();
    let key = request
        .lines()
        .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
        .unwrap();
    let mut r = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {}\r\n",
        accept_key(key.as_bytes())
    );
    for line in extra {
        r.push_str(line);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

#[test]
fn client_handshake_offers_and_validates() {
    let uri: Uri = "ws://example.com/chat".parse().unwrap();
    let config = default().server_no_context_takeover(true);
    let hs = ClientHandshake::new(&uri, &[], &HeaderMap::new())
        .unwrap()
        .offer_deflate(&config);
    let request = String::from_utf8(hs.request().to_vec()).unwrap();
    assert!(
        request.ends_with(
            "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
             client_max_window_bits\r\n\r\n"
        ),
        "{request}"
    );
    let limits = HeaderLimits::default();

    // Accepted: the parameters come back in the response.
    let ok = response_to(
        &hs,
        &["Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"],
    );
    let (resp, len) = hs.parse_response(&ok, &limits).unwrap().unwrap();
    assert_eq!(len, ok.len());
    assert_eq!(
        resp.deflate,
        Some(DeflateParams::default().server_no_context_takeover(true))
    );

    // Declined: no extension, no compression.
    let plain = response_to(&hs, &[]);
    let (resp, _) = hs.parse_response(&plain, &limits).unwrap().unwrap();
    assert_eq!(resp.deflate, None);

    // Invalid answers fail the handshake.
    for bad in [
        "Sec-WebSocket-Extensions: permessage-deflate",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; x=1",
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, permessage-deflate; server_no_context_takeover",
    ] {
        let resp = response_to(&hs, &[bad]);
        assert!(
            matches!(
                hs.parse_response(&resp, &limits),
                Err(HandshakeError::InvalidDeflateResponse(_))
            ),
            "{bad}"
        );
    }
    let resp = response_to(
        &hs,
        &["Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover, x-other"],
    );
    assert_eq!(
        hs.parse_response(&resp, &limits).err(),
        Some(HandshakeError::UnexpectedExtension("x-other".into()))
    );

    // Without an offer, any extension is unexpected.
    let plain_hs = ClientHandshake::new(&uri, &[], &HeaderMap::new()).unwrap();
    let resp = response_to(&plain_hs, &["Sec-WebSocket-Extensions: permessage-deflate"]);
    assert_eq!(
        plain_hs.parse_response(&resp, &limits).err(),
        Some(HandshakeError::UnexpectedExtension(
            "permessage-deflate".into()
        ))
    );
}

// ---------------------------------------------------------------------------------------------
// Compressed messages
// ---------------------------------------------------------------------------------------------

/// Sends `message` from `from` to `to` and returns the frames that crossed the wire.
fn exchange(from: &mut Connection, to: &mut Connection, message: Message) -> Vec<Frame> {
    from.send(message.clone()).unwrap();
    let wire = pump(from, to);
    assert_eq!(events(to), vec![message]);
    frames(&wire)
}

#[test]
fn round_trips_in_both_directions_with_and_without_context_takeover() {
    let body = texty(20_000, 7);
    for server_nct in [false, true] {
        for client_nct in [false, true] {
            let d = default()
                .server_no_context_takeover(server_nct)
                .client_no_context_takeover(client_nct);
            let (mut server, mut client) = pair(d.clone(), d);
            let params = *server.deflate().unwrap();
            assert_eq!(params.server_no_context_takeover, server_nct);
            assert_eq!(params.client_no_context_takeover, client_nct);
            assert_eq!(client.deflate(), Some(&params));

            for (from_server, nct) in [(false, client_nct), (true, server_nct)] {
                let (a, b) = if from_server {
                    (&mut server, &mut client)
                } else {
                    (&mut client, &mut server)
                };
                let text = Message::text(String::from_utf8(body.clone()).unwrap());
                let first = exchange(a, b, text.clone());
                let second = exchange(a, b, text.clone());
                let binary = exchange(a, b, Message::binary(body.clone()));
                for f in [&first, &second, &binary] {
                    assert_eq!(f.len(), 1);
                    assert_eq!(f[0].rsv, 0b100, "RSV1 on a compressed message");
                    assert!(f[0].payload.len() < body.len() * 3 / 4);
                }
                let (n1, n2) = (first[0].payload.len(), second[0].payload.len());
                if nct {
                    // Each message compressed on its own: identical messages, identical bytes.
                    assert_eq!(first[0].payload, second[0].payload);
                } else {
                    // With context takeover the repeat is a few back-references.
                    assert!(n2 * 20 < n1, "second {n2} vs first {n1}");
                }
            }
        }
    }
}

#[test]
fn small_messages_and_control_frames_are_not_compressed() {
    let (mut server, mut client) = pair(default().threshold(100), default().threshold(100));
    for (len, compressed) in [(0, false), (99, false), (100, true), (1000, true)] {
        let f = exchange(&mut client, &mut server, Message::binary(vec![b'x'; len]));
        assert_eq!(f[0].rsv != 0, compressed, "len {len}");
        let f = exchange(&mut server, &mut client, Message::binary(vec![b'y'; len]));
        assert_eq!(f[0].rsv != 0, compressed, "len {len}");
    }
    client.send(Message::Ping(vec![b'p'; 125].into())).unwrap();
    let wire = pump(&mut client, &mut server);
    assert_eq!(frames(&wire)[0].rsv, 0);
    // The automatic pong is not compressed either.
    let pong = frames(&transmitted(&mut server));
    assert_eq!((pong[0].opcode, pong[0].rsv), (0xA, 0));
}

#[test]
fn empty_messages_compress_and_inflate() {
    let (mut server, mut client) = pair(default().threshold(0), default().threshold(0));
    for _ in 0..3 {
        for msg in [
            Message::text(""),
            Message::binary(Vec::new()),
            Message::text("a"),
        ] {
            let f = exchange(&mut client, &mut server, msg.clone());
            assert_eq!(f[0].rsv, 0b100);
            let f = exchange(&mut server, &mut client, msg);
            assert_eq!(f[0].rsv, 0b100);
        }
    }
}

#[test]
fn compressed_messages_are_fragmented_with_rsv1_on_the_first_frame_only() {
    let (mut server, mut client) = pair_with(default(), default(), 16 * MIB, Some(100));
    let body = texty(30_000, 3);
    for from_client in [true, false] {
        let (a, b) = if from_client {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        for _ in 0..2 {
            let f = exchange(a, b, Message::binary(body.clone()));
            assert!(f.len() > 2, "{} frames", f.len());
            assert_eq!((f[0].opcode, f[0].rsv, f[0].fin), (2, 0b100, false));
            for mid in &f[1..f.len() - 1] {
                assert_eq!((mid.opcode, mid.rsv, mid.fin), (0, 0, false));
                assert_eq!(mid.payload.len(), 100);
            }
            let last = f.last().unwrap();
            assert_eq!((last.opcode, last.rsv, last.fin), (0, 0, true));
        }
    }
}

#[test]
fn peer_fragmented_compressed_message_with_pings_between_fragments_in_any_chunking() {
    let body = texty(50_000, 11);
    let payload = deflate_message(&body);
    for role in [Role::Server, Role::Client] {
        let mut wire = Vec::new();
        let parts: Vec<&[u8]> = payload.chunks(payload.len() / 5 + 1).collect();
        for (i, part) in parts.iter().enumerate() {
            let (op, rsv) = if i == 0 { (1, 0b100) } else { (0, 0) };
            wire.extend(raw_frame(role, i + 1 == parts.len(), rsv, op, part));
            wire.extend(raw_frame(role, true, 0, 0x9, b"between"));
        }
        // Also an empty final fragment.
        for chunk in [1, 7, 1000, wire.len()] {
            let mut c = Connection::with_deflate(
                role,
                ProtocolConfig::default(),
                Some(DeflateParams::default()),
            );
            for piece in wire.chunks(chunk) {
                c.handle_read(piece).unwrap();
            }
            let evs = events(&mut c);
            let texts: Vec<_> = evs.iter().filter(|m| m.is_data()).collect();
            assert_eq!(
                texts,
                vec![&Message::text(String::from_utf8(body.clone()).unwrap())]
            );
            assert_eq!(evs.len(), 1 + parts.len(), "every ping surfaces too");
        }
    }
}

#[test]
fn multibyte_text_split_across_inflate_steps_is_valid() {
    // 3-byte code points: the 16 KiB inflate steps cut through them.
    let text = "✓ volley ".repeat(20_000);
    let (mut server, mut client) = pair(default(), default());
    exchange(&mut client, &mut server, Message::text(text.clone()));
    exchange(&mut server, &mut client, Message::text(text));
}

#[test]
fn a_final_deflate_block_ends_the_message_stream() {
    // A peer may end each message with BFINAL (no tail to strip): accepted, and the next message
    // starts a fresh stream.
    for role in [Role::Server, Role::Client] {
        let mut c = Connection::with_deflate(
            role,
            ProtocolConfig::default(),
            Some(
                DeflateParams::default()
                    .server_no_context_takeover(true)
                    .client_no_context_takeover(true),
            ),
        );
        for text in [
            "first message, first message",
            "second message, second message",
        ] {
            let mut z = Compress::new(Compression::new(6), false);
            let mut out = Vec::with_capacity(1024);
            z.compress_vec(text.as_bytes(), &mut out, FlushCompress::Finish)
                .unwrap();
            c.handle_read(&raw_frame(role, true, 0b100, 1, &out))
                .unwrap();
            assert_eq!(events(&mut c), vec![Message::text(text)]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RSV1 and invalid data
// ---------------------------------------------------------------------------------------------

fn expect_failure(c: &mut Connection, input: &[u8], err: ProtocolError, code: u16) {
    assert_eq!(c.handle_read(input), Err(err.clone()));
    let _ = events(c);
    assert_eq!(c.state(), State::Failed);
    let sent = frames(&transmitted(c));
    let close = sent.last().expect("a close frame");
    assert_eq!(close.opcode, 8);
    assert_eq!(
        u16::from_be_bytes([close.payload[0], close.payload[1]]),
        code,
        "{err:?}"
    );
    assert_eq!(err.close_code(), CloseCode(code));
}

fn deflate_conn(role: Role) -> Connection {
    Connection::with_deflate(
        role,
        ProtocolConfig::default(),
        Some(DeflateParams::default()),
    )
}

#[test]
fn rsv1_misuse_fails_with_1002() {
    let payload = deflate_message(b"hello hello hello");
    for role in [Role::Server, Role::Client] {
        // RSV1 on a continuation frame, compressed message or not.
        let mut c = deflate_conn(role);
        let mut input = raw_frame(role, false, 0b100, 1, &payload);
        input.extend(raw_frame(role, true, 0b100, 0, b""));
        expect_failure(&mut c, &input, ProtocolError::CompressedContinuation, 1002);
        let mut c = deflate_conn(role);
        let mut input = raw_frame(role, false, 0, 2, b"plain");
        input.extend(raw_frame(role, true, 0b100, 0, &payload));
        expect_failure(&mut c, &input, ProtocolError::CompressedContinuation, 1002);
        // RSV1 on control frames.
        for op in [0x8, 0x9, 0xA] {
            let mut c = deflate_conn(role);
            expect_failure(
                &mut c,
                &raw_frame(role, true, 0b100, op, b""),
                ProtocolError::CompressedControlFrame,
                1002,
            );
        }
        // RSV2/RSV3 stay reserved.
        for rsv in [0b010, 0b001, 0b110, 0b111] {
            let mut c = deflate_conn(role);
            expect_failure(
                &mut c,
                &raw_frame(role, true, rsv, 1, &payload),
                ProtocolError::ReservedBits(rsv),
                1002,
            );
        }
        // Without permessage-deflate, RSV1 is just a reserved bit.
        let mut c = Connection::new(role, ProtocolConfig::default());
        expect_failure(
            &mut c,
            &raw_frame(role, true, 0b100, 1, &payload),
            ProtocolError::ReservedBits(0b100),
            1002,
        );
    }
}

#[test]
fn invalid_deflate_data_fails_with_1007() {
    for role in [Role::Server, Role::Client] {
        // Block type 3 is invalid.
        let mut c = deflate_conn(role);
        expect_failure(
            &mut c,
            &raw_frame(role, true, 0b100, 2, &[0xff, 0xff, 0xff]),
            ProtocolError::InvalidCompressedData,
            1007,
        );
        // A back-reference before the start of the stream.
        let mut c = deflate_conn(role);
        let mut z = Compress::new(Compression::new(6), false);
        let mut history = sync_compress(&mut z, &texty(10_000, 1));
        let next = sync_compress(&mut z, &texty(10_000, 1));
        history.clear();
        let mut payload = next;
        payload.truncate(payload.len() - 4);
        expect_failure(
            &mut c,
            &raw_frame(role, true, 0b100, 2, &payload),
            ProtocolError::InvalidCompressedData,
            1007,
        );
    }
}

#[test]
fn invalid_utf8_in_inflated_text_fails_fast_with_1007() {
    for role in [Role::Server, Role::Client] {
        let mut body = b"ok \xff".to_vec();
        body.extend(texty(MIB / 2, 5));
        let payload = deflate_message(&body);
        let frame = raw_frame(role, true, 0b100, 1, &payload);
        let mut c = deflate_conn(role);
        let mut failed_at = None;
        for (i, piece) in frame.chunks(1024).enumerate() {
            if let Err(e) = c.handle_read(piece) {
                assert_eq!(e, ProtocolError::InvalidUtf8);
                failed_at = Some(i);
                break;
            }
        }
        // The bad byte is in the first KiB of the inflated text: the failure comes long before
        // the frame ends.
        let failed_at = failed_at.expect("invalid UTF-8 detected");
        assert!(
            failed_at < 4,
            "failed after {failed_at} KiB of {}",
            frame.len() / 1024
        );
        assert_eq!(events(&mut c), vec![]);
        assert_eq!(c.state(), State::Failed);
    }
}

// ---------------------------------------------------------------------------------------------
// Limits apply to the inflated size
// ---------------------------------------------------------------------------------------------

#[test]
fn bomb_of_1_gib_fails_with_1009_after_inflating_little_more_than_the_limit() {
    // 1 GiB in 1 MiB against a 1 MiB limit; 64 MiB in 64 KiB against a 64 KiB limit. (A bomb
    // must fit the limit compressed to get past the frame header check at all; DEFLATE cannot
    // do better than ~1030:1, so "1 KiB to 1 GiB" is not a thing.)
    let big = zeros_bomb(1024);
    assert!(big.len() < 1100 * KIB, "the bomb is {} bytes", big.len());
    let small = zeros_bomb(64);
    for role in [Role::Server, Role::Client] {
        for (max, bomb) in [(64 * KIB, &small), (MIB, &big)] {
            // In one read.
            let mut c = Connection::with_deflate(
                role,
                ProtocolConfig::default().max_message_size(max),
                Some(DeflateParams::default()),
            );
            let frame = raw_frame(role, true, 0b100, 2, bomb);
            match c.handle_read(&frame) {
                Err(ProtocolError::MessageTooLarge { size, max: m }) => {
                    assert_eq!(m, max);
                    assert!(
                        size > max as u64 && size <= (max + 16 * KIB) as u64,
                        "{size}"
                    );
                }
                other => panic!("expected MessageTooLarge, got {other:?}"),
            }
            let _ = events(&mut c);
            let close = frames(&transmitted(&mut c)).pop().unwrap();
            assert_eq!(
                u16::from_be_bytes([close.payload[0], close.payload[1]]),
                1009
            );

            // Streamed: the failure comes as soon as the inflated size crosses the limit, after
            // about limit / 1000 bytes of input, not at the end of the 1 MiB frame.
            let mut c = Connection::with_deflate(
                role,
                ProtocolConfig::default().max_message_size(max),
                Some(DeflateParams::default()),
            );
            let mut fed = 0;
            for piece in frame.chunks(512) {
                fed += piece.len();
                if c.handle_read(piece).is_err() {
                    break;
                }
            }
            assert_eq!(c.state(), State::Failed);
            assert!(
                fed <= max / 1000 + 2048,
                "fed {fed} bytes for a limit of {max}"
            );
        }
    }
}

#[test]
fn bomb_in_fragments_fails_the_same() {
    let bomb = zeros_bomb(64);
    for role in [Role::Server, Role::Client] {
        let mut wire = Vec::new();
        let parts: Vec<&[u8]> = bomb.chunks(4096).collect();
        for (i, part) in parts.iter().enumerate() {
            let (op, rsv) = if i == 0 { (2, 0b100) } else { (0, 0) };
            wire.extend(raw_frame(role, i + 1 == parts.len(), rsv, op, part));
        }
        let mut c = Connection::with_deflate(
            role,
            ProtocolConfig::default().max_message_size(MIB),
            Some(DeflateParams::default()),
        );
        assert!(matches!(
            c.handle_read(&wire),
            Err(ProtocolError::MessageTooLarge { .. })
        ));
    }
}

#[test]
fn the_bomb_generator_is_honest() {
    // The same construction, small enough to inflate: exactly 8 MiB of zeros.
    let bomb = zeros_bomb(8);
    for role in [Role::Server, Role::Client] {
        let mut c = Connection::with_deflate(
            role,
            ProtocolConfig::default().max_message_size(8 * MIB),
            Some(DeflateParams::default()),
        );
        c.handle_read(&raw_frame(role, true, 0b100, 2, &bomb))
            .unwrap();
        assert_eq!(events(&mut c), vec![Message::binary(vec![0u8; 8 * MIB])]);
    }
}

#[test]
fn exactly_the_limit_is_accepted_and_one_more_byte_is_not() {
    let limit = 300_000;
    for (sender_is_client, fragment) in [
        (true, None),
        (false, None),
        (true, Some(1000)),
        (false, Some(777)),
    ] {
        let (mut server, mut client) = pair_with(default(), default(), limit, fragment);
        let (a, b) = if sender_is_client {
            (&mut client, &mut server)
        } else {
            (&mut server, &mut client)
        };
        // Some history first, so that the inflater carries context.
        exchange(a, b, Message::binary(texty(50_000, 2)));
        let at_limit = texty(limit, 9);
        let frames_sent = exchange(a, b, Message::binary(at_limit.clone()));
        let wire: usize = frames_sent.iter().map(|f| f.payload.len()).sum();
        assert!(wire < limit * 3 / 4, "compressed to {wire}");
        let text = String::from_utf8(texty(limit, 10)).unwrap();
        exchange(a, b, Message::text(text));

        a.send(Message::binary(texty(limit + 1, 9))).unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = a.poll_transmit() {
            bytes.extend_from_slice(&chunk);
        }
        assert_eq!(
            b.handle_read(&bytes),
            Err(ProtocolError::MessageTooLarge {
                size: (limit + 1) as u64,
                max: limit
            })
        );
        assert_eq!(events(b), vec![]);
        let close = frames(&transmitted(b)).pop().unwrap();
        assert_eq!(
            u16::from_be_bytes([close.payload[0], close.payload[1]]),
            1009
        );
    }
}

#[test]
fn incompressible_message_at_the_limit_fits_on_the_wire() {
    // Random bytes grow a little when compressed; a message of exactly the limit still passes.
    let limit = 200_000;
    let mut x = 99u32;
    let noise: Vec<u8> = (0..limit)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    let payload = deflate_message(&noise);
    assert!(payload.len() > limit);
    for role in [Role::Server, Role::Client] {
        let mut c = Connection::with_deflate(
            role,
            ProtocolConfig::default().max_message_size(limit),
            Some(DeflateParams::default()),
        );
        c.handle_read(&raw_frame(role, true, 0b100, 2, &payload))
            .unwrap();
        assert_eq!(events(&mut c), vec![Message::binary(noise.clone())]);
    }
}

#[test]
fn compressed_wire_size_is_still_bounded() {
    // Compressed frames far beyond the limit are refused from their header, before any inflating.
    for role in [Role::Server, Role::Client] {
        let mut c = Connection::with_deflate(
            role,
            ProtocolConfig::default().max_message_size(1000),
            Some(DeflateParams::default()),
        );
        let mut header = raw_frame(role, true, 0b100, 2, &[0u8; 3000]);
        header.truncate(if role == Role::Server { 8 } else { 4 });
        assert!(matches!(
            c.handle_read(&header),
            Err(ProtocolError::FrameTooLarge { size: 3000, .. })
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// Window bits
// ---------------------------------------------------------------------------------------------

#[test]
fn window_bits_limit_the_match_distances_we_send() {
    let body = texty(200_000, 4);
    for bits in [8u8, 9, 10, 12, 15] {
        let d = default()
            .server_max_window_bits(bits)
            .client_max_window_bits(bits);
        let (mut server, mut client) = pair(d.clone(), d);
        assert_eq!(
            server.deflate().unwrap().server_max_window_bits,
            (bits < 15).then_some(bits)
        );
        assert_eq!(
            client.deflate().unwrap().client_max_window_bits,
            (bits < 15).then_some(bits)
        );
        for from_client in [true, false] {
            let (a, b) = if from_client {
                (&mut client, &mut server)
            } else {
                (&mut server, &mut client)
            };
            let f = exchange(a, b, Message::binary(body.clone()));
            let (out, max_distance) = puff(&f[0].payload);
            assert_eq!(out, body);
            // zlib compresses 8 with a 9-bit window but never reaches back farther than
            // 512 - 262 = 250 bytes: a strict 256-byte window decodes it.
            assert!(
                max_distance <= 1 << bits,
                "window {bits}: a match {max_distance} bytes back"
            );
            if bits == 15 {
                assert!(max_distance > 256, "the checker sees far matches");
            }
        }
    }
}

#[test]
fn peer_compressing_with_a_9_bit_window_is_inflated_when_8_was_negotiated() {
    let body = texty(100_000, 8);
    for role in [Role::Server, Role::Client] {
        let params = DeflateParams::default()
            .server_max_window_bits(Some(8))
            .client_max_window_bits(Some(8));
        let mut c = Connection::with_deflate(role, ProtocolConfig::default(), Some(params));
        let mut z = Compress::new_with_window_bits(Compression::new(9), false, 9);
        for _ in 0..3 {
            let mut payload = sync_compress(&mut z, &body);
            payload.truncate(payload.len() - 4);
            c.handle_read(&raw_frame(role, true, 0b100, 2, &payload))
                .unwrap();
            assert_eq!(events(&mut c), vec![Message::binary(body.clone())]);
        }
    }
}
