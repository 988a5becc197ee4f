//! MessagePack exactly as `notepack.io` (the codec of Node's Redis adapter and emitter, and of
//! `socket.io-msgpack-parser`) writes it, to and from JSON values whose binary parts are
//! attachments.
//!
//! Socket.IO packets keep binary data as attachments referenced by placeholders
//! (`{"_placeholder":true,"num":i}`, see [`Payload`](crate::Payload)); on Redis, and on the wire
//! with the msgpack parser ([`Parser::MsgPack`](crate::Parser::MsgPack)), Node writes the packet
//! with its `Buffer`s inline as msgpack `bin`. [`encode`] writes each valid
//! placeholder as the `bin` of its attachment; [`decode`] turns each `bin` (and each
//! `ArrayBuffer` ext) back into a placeholder and an attachment.
//!
//! Encoding follows notepack: the smallest integer format for integral numbers (also for
//! integral floats, which JavaScript cannot tell apart), float 64 for the others, `fixstr`/`str
//! 8/16/32`, `bin 8/16/32`, `fixarray`/`array 16/32`, `fixmap`/`map 16/32`. Decoding accepts
//! every msgpack format plus notepack's extensions (`undefined`, `Date`, `ArrayBuffer`); it is
//! bounded: a length is checked against the bytes left before anything is allocated, and
//! nesting is limited to [`MAX_DEPTH`].

use bytes::Bytes;
use serde_json::{Map, Number, Value};

/// The deepest nesting [`decode`] accepts.
pub const MAX_DEPTH: usize = 100;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError(pub String);

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid msgpack: {}", self.0)
    }
}

impl std::error::Error for DecodeError {}

fn err<T>(what: impl Into<String>) -> Result<T, DecodeError> {
    Err(DecodeError(what.into()))
}

/// Encodes `value`, writing each placeholder that names one of `attachments` as its `bin`.
pub fn encode(value: &Value, attachments: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    write_value(&mut out, value, attachments);
    out
}

fn placeholder_num(obj: &Map<String, Value>) -> Option<usize> {
    if obj.len() == 2 && obj.get("_placeholder")?.as_bool()? {
        usize::try_from(obj.get("num")?.as_u64()?).ok()
    } else {
        None
    }
}

pub(crate) fn write_map_len(out: &mut Vec<u8>, len: usize) {
    write_len(out, len, Some((0x80, 0x10)), None, 0xde, 0xdf);
}

fn write_len(
    out: &mut Vec<u8>,
    len: usize,
    fix: Option<(u8, usize)>,
    b8: Option<u8>,
    b16: u8,
    b32: u8,
) {
    match fix {
        Some((tag, limit)) if len < limit => out.push(tag | len as u8),
        _ => {
            if let (Some(tag), true) = (b8, len < 0x100) {
                out.extend_from_slice(&[tag, len as u8]);
            } else if len < 0x10000 {
                out.push(b16);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            } else {
                out.push(b32);
                out.extend_from_slice(&(len as u32).to_be_bytes());
            }
        }
    }
}

pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    write_len(out, s.len(), Some((0xa0, 0x20)), Some(0xd9), 0xda, 0xdb);
    out.extend_from_slice(s.as_bytes());
}

fn write_bin(out: &mut Vec<u8>, b: &[u8]) {
    write_len(out, b.len(), None, Some(0xc4), 0xc5, 0xc6);
    out.extend_from_slice(b);
}

pub(crate) fn write_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v < 0x100 {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v < 0x10000 {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v < 0x1_0000_0000 {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn write_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        write_uint(out, v as u64);
    } else if v >= -0x20 {
        out.push(v as i8 as u8);
    } else if v >= -0x80 {
        out.extend_from_slice(&[0xd0, v as i8 as u8]);
    } else if v >= -0x8000 {
        out.push(0xd1);
        out.extend_from_slice(&(v as i16).to_be_bytes());
    } else if v >= -0x8000_0000 {
        out.push(0xd2);
        out.extend_from_slice(&(v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

fn write_number(out: &mut Vec<u8>, n: &Number) {
    if let Some(u) = n.as_u64() {
        write_uint(out, u);
    } else if let Some(i) = n.as_i64() {
        write_int(out, i);
    } else {
        let f = n.as_f64().unwrap_or(f64::NAN);
        // JavaScript has one number type: an integral float is written as an integer.
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            write_int(out, f as i64);
        } else {
            out.push(0xcb);
            out.extend_from_slice(&f.to_be_bytes());
        }
    }
}

pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value, attachments: &[Bytes]) {
    match value {
        Value::Null => out.push(0xc0),
        Value::Bool(b) => out.push(if *b { 0xc3 } else { 0xc2 }),
        Value::Number(n) => write_number(out, n),
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            write_len(out, items.len(), Some((0x90, 0x10)), None, 0xdc, 0xdd);
            for item in items {
                write_value(out, item, attachments);
            }
        }
        Value::Object(obj) => {
            if let Some(bin) = placeholder_num(obj).and_then(|n| attachments.get(n)) {
                write_bin(out, bin);
                return;
            }
            write_len(out, obj.len(), Some((0x80, 0x10)), None, 0xde, 0xdf);
            for (k, v) in obj {
                write_str(out, k);
                write_value(out, v, attachments);
            }
        }
    }
}

/// A decoded message: the JSON value, with a placeholder for each binary part, and the
/// binary parts in placeholder order.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The value.
    pub value: Value,
    /// The binary parts (`bin` and `ArrayBuffer` ext), referenced by placeholders in `value`.
    pub attachments: Vec<Bytes>,
}

/// Decodes one msgpack value that fills `bytes` exactly.
pub fn decode(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    let mut d = Decoder {
        buf: bytes,
        pos: 0,
        attachments: Vec::new(),
    };
    let value = d.value(0)?.unwrap_or(Value::Null);
    if d.pos != bytes.len() {
        return err(format!("{} trailing bytes", bytes.len() - d.pos));
    }
    Ok(Decoded {
        value,
        attachments: d.attachments,
    })
}

struct Decoder<'a> {
    buf: &'a [u8],
    pos: usize,
    attachments: Vec<Bytes>,
}

impl Decoder<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return err("truncated");
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn be(&mut self, n: usize) -> Result<u64, DecodeError> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize) -> Result<usize, DecodeError> {
        let len = usize::try_from(self.be(n)?).map_err(|_| DecodeError("length".into()))?;
        Ok(len)
    }

    /// Checks that `count` items of at least `min` bytes each can still follow.
    fn room_for(&self, count: usize, min: usize) -> Result<(), DecodeError> {
        if count.saturating_mul(min) > self.buf.len() - self.pos {
            return err("length beyond the message");
        }
        Ok(())
    }

    fn str(&mut self, len: usize) -> Result<Value, DecodeError> {
        let s = std::str::from_utf8(self.take(len)?)
            .map_err(|_| DecodeError("invalid UTF-8".into()))?;
        Ok(Value::String(s.to_owned()))
    }

    fn bin(&mut self, len: usize) -> Result<Value, DecodeError> {
        let b = Bytes::copy_from_slice(self.take(len)?);
        let num = self.attachments.len();
        self.attachments.push(b);
        Ok(crate::Payload::placeholder(num))
    }

    fn float(f: f64) -> Value {
        // JavaScript numbers: an integral float reads back as an integer.
        if f.is_finite() && f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
            Value::from(f as i64)
        } else {
            Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or(Value::Null)
        }
    }

    fn array(&mut self, len: usize, depth: usize) -> Result<Value, DecodeError> {
        self.room_for(len, 1)?;
        let mut items = Vec::with_capacity(len);
        for _ in 0..len {
            // `undefined` in an array reads as null (as JSON.stringify writes it).
            items.push(self.value(depth + 1)?.unwrap_or(Value::Null));
        }
        Ok(Value::Array(items))
    }

    fn map(&mut self, len: usize, depth: usize) -> Result<Value, DecodeError> {
        self.room_for(len, 2)?;
        let mut obj = Map::new();
        for _ in 0..len {
            let key = match self.value(depth + 1)? {
                Some(Value::String(s)) => s,
                Some(Value::Number(n)) => n.to_string(),
                Some(Value::Bool(b)) => b.to_string(),
                Some(Value::Null) | None => "null".to_owned(),
                Some(_) => return err("map key is not a scalar"),
            };
            // A property whose value is `undefined` does not exist (as in JSON).
            if let Some(v) = self.value(depth + 1)? {
                obj.insert(key, v);
            }
        }
        Ok(Value::Object(obj))
    }

    /// An extension: notepack's `undefined` (None), `Date` (ms since the epoch) and
    /// `ArrayBuffer` (an attachment); others are refused.
    fn ext(&mut self, len: usize) -> Result<Option<Value>, DecodeError> {
        let kind = self.u8()? as i8;
        match (kind, len) {
            (0, 1) => {
                self.take(1)?;
                Ok(None)
            }
            (0, 8) => {
                let hi = self.be(4)? as u32 as i32 as i64;
                let lo = self.be(4)? as i64;
                Ok(Some(Value::from(hi * 0x1_0000_0000 + lo)))
            }
            (0, _) => Ok(Some(self.bin(len)?)),
            _ => err(format!("unknown extension type {kind}")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Option<Value>, DecodeError> {
        if depth > MAX_DEPTH {
            return err("nested too deeply");
        }
        let tag = self.u8()?;
        let v = match tag {
            0x00..=0x7f => Value::from(tag),
            0x80..=0x8f => self.map(usize::from(tag & 0x0f), depth)?,
            0x90..=0x9f => self.array(usize::from(tag & 0x0f), depth)?,
            0xa0..=0xbf => self.str(usize::from(tag & 0x1f))?,
            0xc0 => Value::Null,
            0xc2 => Value::Bool(false),
            0xc3 => Value::Bool(true),
            0xc4 => {
                let n = self.len(1)?;
                self.bin(n)?
            }
            0xc5 => {
                let n = self.len(2)?;
                self.bin(n)?
            }
            0xc6 => {
                let n = self.len(4)?;
                self.bin(n)?
            }
            0xc7 => {
                let n = self.len(1)?;
                return self.ext(n);
            }
            0xc8 => {
                let n = self.len(2)?;
                return self.ext(n);
            }
            0xc9 => {
                let n = self.len(4)?;
                return self.ext(n);
            }
            0xca => Self::float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Self::float(f64::from_bits(self.be(8)?)),
            0xcc => Value::from(self.be(1)?),
            0xcd => Value::from(self.be(2)?),
            0xce => Value::from(self.be(4)?),
            0xcf => Value::from(self.be(8)?),
            0xd0 => Value::from(self.be(1)? as u8 as i8),
            0xd1 => Value::from(self.be(2)? as u16 as i16),
            0xd2 => Value::from(self.be(4)? as u32 as i32),
            0xd3 => Value::from(self.be(8)? as i64),
            0xd4 => return self.ext(1),
            0xd5 => return self.ext(2),
            0xd6 => return self.ext(4),
            0xd7 => return self.ext(8),
            0xd8 => return self.ext(16),
            0xd9 => {
                let n = self.len(1)?;
                self.str(n)?
            }
            0xda => {
                let n = self.len(2)?;
                self.str(n)?
            }
            0xdb => {
                let n = self.len(4)?;
                self.str(n)?
            }
            0xdc => {
                let n = self.len(2)?;
                self.array(n, depth)?
            }
            0xdd => {
                let n = self.len(4)?;
                self.array(n, depth)?
            }
            0xde => {
                let n = self.len(2)?;
                self.map(n, depth)?
            }
            0xdf => {
                let n = self.len(4)?;
                self.map(n, depth)?
            }
            0xe0..=0xff => Value::from(tag as i8),
            0xc1 => return err("reserved tag 0xc1"),
        };
        Ok(Some(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roundtrip(v: Value) {
        let bytes = encode(&v, &[]);
        assert_eq!(decode(&bytes).unwrap().value, v, "{bytes:02x?}");
    }

    #[test]
    fn scalars_in_notepack_formats() {
        assert_eq!(encode(&json!(1), &[]), [0x01]);
        assert_eq!(encode(&json!(-2), &[]), [0xfe]);
        assert_eq!(encode(&json!(200), &[]), [0xcc, 200]);
        assert_eq!(encode(&json!(1000), &[]), [0xcd, 0x03, 0xe8]);
        assert_eq!(encode(&json!(-100), &[]), [0xd0, 0x9c]);
        assert_eq!(
            encode(&json!(1.0), &[]),
            [0x01],
            "integral float as integer"
        );
        assert_eq!(
            encode(&json!(1.5), &[]),
            [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            encode(&json!(5_000_000_000u64), &[]),
            [0xcf, 0, 0, 0, 1, 0x2a, 0x05, 0xf2, 0]
        );
        assert_eq!(encode(&json!("a"), &[]), [0xa1, b'a']);
        assert_eq!(encode(&json!(null), &[]), [0xc0]);
        for v in [
            json!(0),
            json!(-33),
            json!(-40000),
            json!(-3_000_000_000i64),
            json!(u64::MAX),
            json!(0.25),
            json!("x".repeat(40)),
            json!("y".repeat(300)),
            json!("z".repeat(70_000)),
            json!([1, [2, [3]], {"a": {"b": null}}]),
            json!((0..20).collect::<Vec<_>>()),
            json!(
                (0..20)
                    .map(|i| (i.to_string(), json!(i)))
                    .collect::<Map<_, _>>()
            ),
        ] {
            roundtrip(v);
        }
    }

    #[test]
    fn binaries_become_attachments_and_back() {
        let v = json!(["bin", {"_placeholder": true, "num": 0}, {"x": {"_placeholder": true, "num": 1}}]);
        let att = vec![Bytes::from_static(&[1, 2, 3]), Bytes::from(vec![7u8; 300])];
        let bytes = encode(&v, &att);
        let d = decode(&bytes).unwrap();
        assert_eq!(d.value, v);
        assert_eq!(d.attachments, att);
        // A placeholder naming no attachment stays an object.
        let lone = json!({"_placeholder": true, "num": 5});
        assert_eq!(decode(&encode(&lone, &[])).unwrap().value, lone);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic_or_a_huge_allocation() {
        for bad in [
            &[][..],
            &[0x92, 0x01],                               // array of 2 with 1 item
            &[0xdd, 0xff, 0xff, 0xff, 0xff],             // array of 4 G items, no bytes
            &[0xdf, 0xff, 0xff, 0xff, 0xff],             // map of 4 G entries
            &[0xc6, 0xff, 0xff, 0xff, 0xff, 0x00],       // bin of 4 GiB
            &[0xdb, 0x00, 0x00, 0x00, 0x02, 0xff, 0xfe], // invalid UTF-8
            &[0xc1],
            &[0xd4, 0x05, 0x00],             // unknown extension
            &[0x01, 0x02],                   // trailing bytes
            &[0x81, 0x92, 0x01, 0x02, 0x01], // array as a map key
        ] {
            assert!(decode(bad).is_err(), "{bad:02x?}");
        }
        let deep: Vec<u8> = std::iter::repeat_n(0x91, MAX_DEPTH + 2)
            .chain([0xc0])
            .collect();
        assert!(decode(&deep).is_err());
        // Arbitrary bytes never panic.
        let mut x: u32 = 1;
        for _ in 0..20_000 {
            let len = (x % 24) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = decode(&bytes);
        }
    }

    #[test]
    fn notepack_undefined_and_date() {
        // {a: undefined, b: 1} and [undefined]
        let d = decode(&[0x82, 0xa1, b'a', 0xd4, 0, 0, 0xa1, b'b', 0x01]).unwrap();
        assert_eq!(d.value, json!({"b": 1}));
        assert_eq!(decode(&[0x91, 0xd4, 0, 0]).unwrap().value, json!([null]));
        let date = decode(&[0xd7, 0, 0, 0, 0x01, 0x9a, 0, 0, 0, 0x10]).unwrap();
        assert_eq!(date.value, json!(0x19a_0000_0010u64));
    }
}
