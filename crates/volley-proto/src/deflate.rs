//! permessage-deflate (RFC 7692): negotiation in both roles, and the per-message compressor and
//! decompressor a [`Connection`](crate::Connection) uses once it was negotiated.
//!
//! - [`DeflateConfig`]: what this endpoint is willing to do (window sizes, context takeover, the
//!   size below which messages go out uncompressed, the compression level).
//! - Server: [`DeflateConfig::negotiate`] picks the first acceptable offer of a request and returns
//!   the agreed [`DeflateParams`]; their [`header_value`](DeflateParams::header_value) goes into
//!   the 101's `Sec-WebSocket-Extensions`. Offers with unknown, repeated or out-of-range parameters
//!   are declined (skipped), as RFC 7692 §5 says.
//! - Client: [`DeflateConfig::offer`] is the request's header value;
//!   [`DeflateConfig::accept_response`] validates the server's answer and fails the handshake on
//!   anything the offer did not allow.
//!
//! ## Window bits 8
//!
//! zlib (and zlib-rs) cannot *compress* raw DEFLATE with a 256-byte window: `deflateInit2` rejects
//! `windowBits = -8`. Python websockets therefore declines `server_max_window_bits=8` (and fails on
//! `client_max_window_bits=8` in a response); Node's zlib quietly compresses with 9. Volley accepts
//! 8 when the peer asks for it and compresses with a 512-byte zlib window: zlib never emits a match
//! farther back than `window size - 262` bytes, so the longest distance is 250, which a peer with a
//! 256-byte window decodes (checked by a test against a strict 256-byte decoder). Inflating uses
//! the negotiated window, with 9 for 8, which accepts every stream a 256-byte window allows. Since
//! a window of 8 bits saves Volley nothing, Volley never *asks* a peer for 8: configured as 8, it
//! asks for 9 (a client's `server_max_window_bits`, a server's `client_max_window_bits`), which
//! Python websockets accepts where it would refuse 8.
//!
//! ## Memory
//!
//! With context takeover a direction keeps its zlib state for the whole connection: about 312 KiB
//! for a compressor with a 15-bit window, 32 KiB for a decompressor (see `docs/DEFLATE.md` for the
//! measured numbers). Without context takeover (`*_no_context_takeover`) the state is created for
//! each message and freed right after it, so an idle connection holds none. Both are created lazily:
//! a connection that never sends a message above the threshold never allocates a compressor.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::error::ProtocolError;
use crate::handshake::{Extension, HandshakeError};

/// The extension token, as it appears in `Sec-WebSocket-Extensions`.
pub const EXTENSION_NAME: &str = "permessage-deflate";

/// The four bytes a sender strips from the end of every compressed message and a receiver appends
/// before inflating it (RFC 7692 §7.2.1): the end of an empty stored block.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Bytes inflated per step: the most a message can grow past the limit before it is failed.
const INFLATE_STEP: usize = 16 * 1024;

/// What this endpoint is willing to negotiate and how it compresses.
///
/// The same struct serves both roles; each field says what it means for a server and for a client.
/// Build it from [`DeflateConfig::default`] with the by-value setters:
/// `DeflateConfig::default().no_context_takeover(true).threshold(256)`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Whether the server compresses each message on its own (no LZ77 window kept between
    /// messages). Default `false`.
    ///
    /// Server: always answer with `server_no_context_takeover` and free the compressor after every
    /// message. Client: ask for it in the offer (a server that cannot honour it declines).
    pub server_no_context_takeover: bool,
    /// Whether the client compresses each message on its own. Default `false`.
    ///
    /// Server: ask for it in the response (a client must honour it), so that the decompressor is
    /// freed after every message. Client: never use context takeover, and say so in the offer.
    pub client_no_context_takeover: bool,
    /// The largest LZ77 window the server may use, as a power of two, 8–15. Default 15 (32 KiB).
    ///
    /// Server: the window its compressor uses (at most what the client asked for); below 15 it is
    /// announced with `server_max_window_bits`. Client: below 15, asked for in the offer (8 is
    /// asked as 9, which zlib-based servers accept; see the module docs).
    pub server_max_window_bits: u8,
    /// The largest LZ77 window the client may use, 8–15. Default 15.
    ///
    /// Server: below 15, asked of clients whose offer has `client_max_window_bits` (clients that do
    /// not support the parameter are still accepted and may use 15; 8 is asked as 9, see the module
    /// docs). Client: the window its compressor uses; the offer always carries
    /// `client_max_window_bits` (with this value below 15).
    pub client_max_window_bits: u8,
    /// Messages with fewer payload bytes than this are sent uncompressed (RSV1 clear). Default 64:
    /// smaller messages rarely shrink by more than the few bytes a compressed block costs.
    pub threshold: usize,
    /// zlib compression level, 0 (store) to 9 (smallest). Default 6, zlib's own default.
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            server_no_context_takeover: false,
            client_no_context_takeover: false,
            server_max_window_bits: 15,
            client_max_window_bits: 15,
            threshold: 64,
            level: 6,
        }
    }
}

impl DeflateConfig {
    /// Sets [`DeflateConfig::server_no_context_takeover`].
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Sets [`DeflateConfig::client_no_context_takeover`].
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Sets both `*_no_context_takeover` flags: every message is compressed on its own in both
    /// directions, and an idle connection holds no zlib state.
    pub fn no_context_takeover(self, on: bool) -> Self {
        self.server_no_context_takeover(on)
            .client_no_context_takeover(on)
    }

    /// Sets [`DeflateConfig::server_max_window_bits`], clamped to 8–15.
    pub fn server_max_window_bits(mut self, bits: u8) -> Self {
        self.server_max_window_bits = bits.clamp(8, 15);
        self
    }

    /// Sets [`DeflateConfig::client_max_window_bits`], clamped to 8–15.
    pub fn client_max_window_bits(mut self, bits: u8) -> Self {
        self.client_max_window_bits = bits.clamp(8, 15);
        self
    }

    /// Sets [`DeflateConfig::threshold`].
    pub fn threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// Sets [`DeflateConfig::level`], clamped to 0–9.
    pub fn level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    /// The window bits actually configured (fields set directly may be out of range).
    fn server_bits(&self) -> u8 {
        self.server_max_window_bits.clamp(8, 15)
    }

    fn client_bits(&self) -> u8 {
        self.client_max_window_bits.clamp(8, 15)
    }

    /// The `server_max_window_bits` a client asks for: 8 is asked as 9, because zlib-based
    /// servers (Python websockets) decline 8 and our inflater uses a 512-byte window for 8 anyway.
    fn offered_server_bits(&self) -> u8 {
        self.server_bits().max(9)
    }

    /// Client: the `Sec-WebSocket-Extensions` value offering permessage-deflate with these
    /// preferences, e.g. `permessage-deflate; client_max_window_bits`.
    pub fn offer(&self) -> String {
        let mut out = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.offered_server_bits() < 15 {
            out.push_str(&format!(
                "; server_max_window_bits={}",
                self.offered_server_bits()
            ));
        }
        out.push_str("; client_max_window_bits");
        if self.client_bits() < 15 {
            out.push_str(&format!("={}", self.client_bits()));
        }
        out
    }

    /// Server: picks the first acceptable permessage-deflate offer among `offers` (the request's
    /// extensions, in order) and returns the agreed parameters, or `None` to decline them all.
    ///
    /// Offers of other extensions are ignored; a permessage-deflate offer with an unknown, repeated
    /// or invalid parameter is declined and the next one considered (RFC 7692 §5, §7.1).
    pub fn negotiate(&self, offers: &[Extension]) -> Option<DeflateParams> {
        offers
            .iter()
            .filter(|e| e.name.eq_ignore_ascii_case(EXTENSION_NAME))
            .find_map(|offer| self.accept_offer(offer).ok())
    }

    /// Server: the response to one offer, or why it must be declined.
    fn accept_offer(&self, offer: &Extension) -> Result<DeflateParams, String> {
        let p = parse_params(&offer.params)?;
        let server_max_window_bits = match p.server_max_window_bits {
            Some(asked) => Some(asked.min(self.server_bits())),
            None if self.server_bits() < 15 => Some(self.server_bits()),
            None => None,
        };
        let client_max_window_bits = match p.client_max_window_bits {
            // The client does not support the parameter: it may use up to 15 bits.
            None => None,
            Some(None) if self.client_bits() == 15 => None,
            // We ask for at least 9 (zlib-based clients such as Python websockets refuse 8, and
            // our inflater uses 9 for 8 anyway), unless the client announced 8 itself.
            Some(hint) => Some(hint.unwrap_or(15).min(self.client_bits().max(9))),
        };
        Ok(DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover
                || self.server_no_context_takeover,
            // A client's hint lets the server free its decompressor between messages: take it.
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        })
    }

    /// Client: validates the server's permessage-deflate response to [`offer`](Self::offer) and
    /// returns the parameters in force.
    ///
    /// Fails on unknown, repeated or malformed parameters, on `client_max_window_bits` without a
    /// value or above the offered one, on a `server_max_window_bits` above the one asked for (or
    /// missing when asked for), and on a missing `server_no_context_takeover` that was asked for.
    /// The client must then fail the connection.
    pub fn accept_response(&self, response: &Extension) -> Result<DeflateParams, HandshakeError> {
        let bad = |why: String| HandshakeError::InvalidDeflateResponse(why);
        if !response.name.eq_ignore_ascii_case(EXTENSION_NAME) {
            return Err(HandshakeError::UnexpectedExtension(response.name.clone()));
        }
        let p = parse_params(&response.params).map_err(bad)?;
        if self.server_no_context_takeover && !p.server_no_context_takeover {
            return Err(bad(
                "server_no_context_takeover was requested but not confirmed".into(),
            ));
        }
        let server_max_window_bits = match (p.server_max_window_bits, self.offered_server_bits()) {
            (Some(got), asked) if got > asked => {
                return Err(bad(format!(
                    "server_max_window_bits={got} exceeds the {asked} requested"
                )));
            }
            (None, asked) if asked < 15 => {
                return Err(bad(format!(
                    "server_max_window_bits={asked} was requested but not confirmed"
                )));
            }
            (got, _) => got,
        };
        let ours = self.client_bits();
        let client_max_window_bits = match p.client_max_window_bits {
            None if ours < 15 => Some(ours),
            None => None,
            Some(None) => {
                return Err(bad(
                    "client_max_window_bits without a value in a response".into()
                ));
            }
            Some(Some(got)) if got > ours => {
                return Err(bad(format!(
                    "client_max_window_bits={got} exceeds the {ours} offered"
                )));
            }
            Some(Some(got)) => Some(got),
        };
        Ok(DeflateParams {
            server_no_context_takeover: p.server_no_context_takeover,
            client_no_context_takeover: p.client_no_context_takeover
                || self.client_no_context_takeover,
            server_max_window_bits,
            client_max_window_bits,
        })
    }
}

/// The permessage-deflate parameters agreed in a handshake, as in the server's response.
///
/// `None` window bits mean the parameter is absent: that direction may use a 15-bit window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DeflateParams {
    /// The server compresses every message on its own.
    pub server_no_context_takeover: bool,
    /// The client compresses every message on its own.
    pub client_no_context_takeover: bool,
    /// The server's largest LZ77 window (8–15), if limited.
    pub server_max_window_bits: Option<u8>,
    /// The client's largest LZ77 window (8–15), if limited.
    pub client_max_window_bits: Option<u8>,
}

impl DeflateParams {
    /// Sets [`DeflateParams::server_no_context_takeover`].
    pub fn server_no_context_takeover(mut self, on: bool) -> Self {
        self.server_no_context_takeover = on;
        self
    }

    /// Sets [`DeflateParams::client_no_context_takeover`].
    pub fn client_no_context_takeover(mut self, on: bool) -> Self {
        self.client_no_context_takeover = on;
        self
    }

    /// Sets [`DeflateParams::server_max_window_bits`] (clamped to 8–15).
    pub fn server_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.server_max_window_bits = bits.map(|b| b.clamp(8, 15));
        self
    }

    /// Sets [`DeflateParams::client_max_window_bits`] (clamped to 8–15).
    pub fn client_max_window_bits(mut self, bits: Option<u8>) -> Self {
        self.client_max_window_bits = bits.map(|b| b.clamp(8, 15));
        self
    }

    /// The `Sec-WebSocket-Extensions` value of a server response with these parameters, e.g.
    /// `permessage-deflate; server_no_context_takeover; client_max_window_bits=10`.
    pub fn header_value(&self) -> String {
        let mut out = String::from(EXTENSION_NAME);
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if let Some(bits) = self.server_max_window_bits {
            out.push_str(&format!("; server_max_window_bits={bits}"));
        }
        if let Some(bits) = self.client_max_window_bits {
            out.push_str(&format!("; client_max_window_bits={bits}"));
        }
        out
    }
}

impl std::fmt::Display for DeflateParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.header_value())
    }
}

/// The parameters of one offer or response, checked for syntax.
#[derive(Debug, Default)]
struct Parsed {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// `Some(None)`: present without a value.
    client_max_window_bits: Option<Option<u8>>,
}

/// A window-bits value: a decimal 8–15 without sign or leading zeros (RFC 7692 §7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.is_empty() || value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|b| (8..=15).contains(b))
}

fn parse_params(params: &[(String, Option<String>)]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut seen: [bool; 4] = [false; 4];
    for (name, value) in params {
        let name_lc = name.to_ascii_lowercase();
        let index = match name_lc.as_str() {
            "server_no_context_takeover" => 0,
            "client_no_context_takeover" => 1,
            "server_max_window_bits" => 2,
            "client_max_window_bits" => 3,
            _ => return Err(format!("unknown parameter {name:?}")),
        };
        if std::mem::replace(&mut seen[index], true) {
            return Err(format!("parameter {name_lc} given twice"));
        }
        let value = value.as_deref();
        match index {
            0 | 1 => {
                if let Some(v) = value {
                    return Err(format!("{name_lc} takes no value (got {v:?})"));
                }
                if index == 0 {
                    p.server_no_context_takeover = true;
                } else {
                    p.client_no_context_takeover = true;
                }
            }
            2 => {
                let v = value.unwrap_or_default();
                let bits = window_bits(v)
                    .ok_or_else(|| format!("server_max_window_bits={v:?} is not 8-15"))?;
                p.server_max_window_bits = Some(bits);
            }
            _ => {
                p.client_max_window_bits = Some(match value {
                    None => None,
                    Some(v) => Some(
                        window_bits(v)
                            .ok_or_else(|| format!("client_max_window_bits={v:?} is not 8-15"))?,
                    ),
                });
            }
        }
    }
    Ok(p)
}

/// zlib needs at least 9 window bits for raw DEFLATE; 9 stays within a 256-byte window's reach
/// (see the module docs).
fn zlib_bits(bits: u8) -> u8 {
    bits.clamp(9, 15)
}

/// The compressing direction of a connection.
#[derive(Debug)]
pub(crate) struct Deflater {
    state: Option<Compress>,
    window_bits: u8,
    level: u32,
    no_context_takeover: bool,
}

/// Why a message could not be compressed (zlib refused its own stream: never expected).
#[derive(Debug)]
pub(crate) struct CompressFailed;

impl Deflater {
    pub(crate) fn new(window_bits: u8, level: u32, no_context_takeover: bool) -> Self {
        Self {
            state: None,
            window_bits: zlib_bits(window_bits),
            level: level.min(9),
            no_context_takeover,
        }
    }

    /// Compresses one whole message: the DEFLATE data with the final `00 00 ff ff` removed.
    ///
    /// Returns `None` when the message should rather go out uncompressed: without context takeover,
    /// if compressing did not make it smaller (the peer's window is not affected either way).
    pub(crate) fn compress(&mut self, input: &[u8]) -> Result<Option<Vec<u8>>, CompressFailed> {
        let (bits, level) = (self.window_bits, self.level);
        let c = self.state.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(level), false, bits)
        });
        let mut out = Vec::with_capacity(input.len() / 8 + 64);
        let start = c.total_in();
        loop {
            let done = usize::try_from(c.total_in() - start).map_err(|_| CompressFailed)?;
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(1024));
            }
            let before = out.len();
            c.compress_vec(&input[done..], &mut out, FlushCompress::Sync)
                .map_err(|_| CompressFailed)?;
            let consumed = c.total_in() - start;
            // A sync flush is complete once all input is taken and output space is left over.
            if consumed == input.len() as u64 && out.len() < out.capacity() {
                break;
            }
            if consumed == done as u64 && out.len() == before && out.len() < out.capacity() {
                // No progress with room to spare: never expected from zlib, but never loop.
                self.state = None;
                return Err(CompressFailed);
            }
        }
        if self.no_context_takeover {
            self.state = None;
        }
        if out.is_empty() {
            // zlib emits nothing for an empty message right after a flush. An empty payload would
            // not do: with the tail appended it is a truncated stored block. Send an empty stored
            // block's header instead (RFC 7692 §7.2.3.6); the stream is byte-aligned here.
            out.push(0x00);
        } else {
            // Anything else ends with the empty stored block of the sync flush.
            if !out.ends_with(&TAIL) {
                return Err(CompressFailed);
            }
            out.truncate(out.len() - TAIL.len());
        }
        if self.no_context_takeover && out.len() >= input.len() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Frees the zlib state (the connection will not send again).
    pub(crate) fn release(&mut self) {
        self.state = None;
    }
}

/// The decompressing direction of a connection.
#[derive(Debug)]
pub(crate) struct Inflater {
    state: Option<Decompress>,
    window_bits: u8,
    no_context_takeover: bool,
    /// The peer ended its DEFLATE stream (a block with BFINAL set) inside the current message.
    ended: bool,
}

impl Inflater {
    pub(crate) fn new(window_bits: u8, no_context_takeover: bool) -> Self {
        Self {
            state: None,
            window_bits: zlib_bits(window_bits),
            no_context_takeover,
            ended: false,
        }
    }

    /// Inflates the next piece of a compressed message's payload, handing the output to `sink` in
    /// pieces of at most 16 KiB as it is produced, so that `sink` can stop it (by returning an
    /// error) the moment a limit is crossed. With `last`, this is the end of the message: the
    /// `00 00 ff ff` tail is appended and everything flushed out.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        last: bool,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        self.run(input, FlushDecompress::None, sink)?;
        if last {
            self.run(&TAIL, FlushDecompress::Sync, sink)?;
        }
        Ok(())
    }

    fn run(
        &mut self,
        mut input: &[u8],
        flush: FlushDecompress,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), ProtocolError>,
    ) -> Result<(), ProtocolError> {
        let bits = self.window_bits;
        let d = self
            .state
            .get_or_insert_with(|| Decompress::new_with_window_bits(false, bits));
        let mut scratch = [0u8; INFLATE_STEP];
        loop {
            if self.ended {
                // Data after a final block is ignored (the appended tail always is).
                return Ok(());
            }
            let (in0, out0) = (d.total_in(), d.total_out());
            let status = d
                .decompress(input, &mut scratch, flush)
                .map_err(|_| ProtocolError::InvalidCompressedData)?;
            let consumed = (d.total_in() - in0) as usize;
            let produced = (d.total_out() - out0) as usize;
            input = &input[consumed..];
            if produced > 0 {
                sink(&scratch[..produced])?;
            }
            match status {
                Status::StreamEnd => self.ended = true,
                Status::BufError => return Ok(()),
                Status::Ok => {}
            }
            if (input.is_empty() && produced < scratch.len()) || (consumed == 0 && produced == 0) {
                return Ok(());
            }
        }
    }

    /// Called after the last piece of a message: frees or resets the state as the parameters ask.
    pub(crate) fn end_message(&mut self) {
        if self.no_context_takeover || self.ended {
            // A stream that ended cannot continue: the next message starts a new one.
            self.state = None;
        }
        self.ended = false;
    }

    /// Frees the zlib state (the connection will not receive again).
    pub(crate) fn release(&mut self) {
        self.state = None;
        self.ended = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_bits_values() {
        for ok in 8..=15u8 {
            assert_eq!(window_bits(&ok.to_string()), Some(ok));
        }
        for bad in ["", "7", "16", "08", "+9", "9 ", "0x9", "abc", "150"] {
            assert_eq!(window_bits(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn compress_then_inflate_round_trips_and_strips_the_tail() {
        let mut d = Deflater::new(15, 6, false);
        let mut i = Inflater::new(15, false);
        for msg in [
            &b"hello hello hello hello"[..],
            b"",
            b"hello again hello again",
        ] {
            let c = d.compress(msg).unwrap().unwrap();
            assert!(!c.ends_with(&TAIL) || c.is_empty());
            let mut out = Vec::new();
            i.inflate(&c, true, &mut |b| {
                out.extend_from_slice(b);
                Ok(())
            })
            .unwrap();
            i.end_message();
            assert_eq!(out, msg);
        }
    }
}
