//! The sans-IO Socket.IO protocol v5 packet codec.
//!
//! # Wire format
//!
//! A packet is one Engine.IO text message
//!
//! ```text
//! <type>[<attachments>-][<nsp>,][<ack id>][<JSON data>]
//! ```
//!
//! followed, for `BINARY_EVENT` (5) and `BINARY_ACK` (6), by `<attachments>` Engine.IO binary
//! messages. This module decodes and encodes it the way socket.io-parser 4.x (Node) does, e.g.
//!
//! | packet                                       | text                                  |
//! |----------------------------------------------|---------------------------------------|
//! | CONNECT to `/`                               | `0`                                   |
//! | CONNECT to `/admin` with auth                | `0/admin,{"token":"123"}`             |
//! | CONNECT reply                                | `0{"sid":"oSO0OpakMV_3jnilAAAA"}`     |
//! | DISCONNECT from `/admin`                     | `1/admin,`                            |
//! | EVENT `hello` with ack id 12                 | `212["hello",1]`                      |
//! | ACK 12                                       | `312["bar"]`                          |
//! | CONNECT_ERROR                                | `4{"message":"Not authorized"}`       |
//! | BINARY_EVENT with one attachment             | `51-["hello",{"_placeholder":true,"num":0}]` + 1 binary message |
//! | BINARY_ACK 15 on `/admin`                    | `61-/admin,15[{"_placeholder":true,"num":0}]` + 1 binary message |
//!
//! # Binary attachments: the placeholder representation
//!
//! JSON has no binary type, so a [`Packet`] keeps binary arguments the way they travel on the
//! wire: [`Packet::data`] holds a *placeholder* object `{"_placeholder":true,"num":i}` where the
//! binary sits, and [`Packet::attachments`]`[i]` holds its bytes.
//!
//! - Decoded packets: [`decode`] checks that the placeholders of a binary packet reference every
//!   announced attachment exactly once (nums `0..count`, each a non-negative integer) before any
//!   attachment arrives; a [`PartialPacket`] then collects the attachments in order. So for a
//!   decoded packet, every placeholder in `data` has a matching entry in `attachments`; use
//!   [`Packet::attachment`] or [`placeholder_num`] to resolve one. Non-binary EVENT/ACK packets
//!   must not contain placeholder objects (socket.io-parser would pass them on as plain objects;
//!   here they are rejected, so a placeholder never dangles).
//! - Packets the application builds: put a placeholder where a binary goes, e.g. with
//!   [`AttachmentsBuilder::add`] (which returns the placeholder for the bytes it stores), and set
//!   `attachments` (e.g. [`Packet::with_attachments`]). Placeholders may appear in any order,
//!   more than once, or reference only some of the attachments (handy when echoing a subset of a
//!   received packet's arguments): [`Packet::encode`] (through [`extract_attachments`]) renumbers
//!   them in document order and sends only the referenced bytes, exactly as the Node encoder
//!   numbers binaries as it finds them. Placeholders whose `num` does not index `attachments`
//!   are sent unchanged (they are an application bug; the peer will reject the packet).
//!
//! # Validation (like socket.io-parser's `isPayloadValid`, slightly stricter)
//!
//! - the type is one digit `0`–`6`; BINARY types need a decimal attachment count in
//!   `1..=`[`Limits::max_attachments`] followed by `-`;
//! - a namespace starts with `/` and runs to the next `,` (or the end of the text); when the text
//!   has no `/` there, the namespace is `/`;
//! - the ack id is decimal digits and must fit in a `u64`;
//! - the data is one JSON value (serde_json's nesting limit of 128 applies) with nothing after it
//!   but whitespace;
//! - CONNECT: data absent or an object; DISCONNECT: no data; CONNECT_ERROR: absent, a string or
//!   an object; EVENT / BINARY_EVENT: a non-empty array whose first element is a number or a
//!   string that is not a reserved event name ([`RESERVED_EVENTS`]); ACK / BINARY_ACK: an array
//!   and an ack id. (socket.io-parser also accepts EVENT and ACK packets without data and ACK
//!   packets without id; neither is ever sent by the official clients and neither means anything
//!   to a server, so they are rejected here.)
//!
//! ## The event name `error`
//!
//! socket.io-parser 4.2.x does **not** reserve `error` (its list is exactly
//! [`RESERVED_EVENTS`]), and Node's socket.io server delivers a client's `error` event to the
//! application's listener. Its danger in Node was specific to `EventEmitter` (an unhandled
//! `error` event throws and could crash the process). Rust has no such behaviour, so this codec
//! accepts `error` as an ordinary event name, keeping wire compatibility with clients that emit
//! it; the server must simply treat it like any other event.
//!
//! # Encoding
//!
//! [`Packet::encode`] builds the same text as the Node encoder: the type, the attachment count
//! and `-` for binary packets, the namespace and `,` unless it is `/`, the ack id, and the data
//! as compact JSON (object keys in insertion order: this crate enables serde_json's
//! `preserve_order`). Numbers are parsed exactly (serde_json's `float_roundtrip`, as
//! `JSON.parse` does), so relaying a decoded value re-encodes the same number. Known differences
//! from `JSON.stringify`, all of which parse back to the same values: some floats are written in
//! exponent form where JavaScript writes plain decimals (`1e+20` for `100000000000000000000`,
//! `1e-6` for `0.000001`), `-0.0` stays `-0.0` (JavaScript writes `0`), and integer-like object
//! keys keep insertion order instead of moving first.

use std::fmt::{self, Write as _};

use bytes::Bytes;
use serde_json::{Map, Value};

/// Event names a client must not use (the same list as socket.io-parser 4.2.x): EVENT packets
/// naming one of them are rejected. `error` is deliberately not in the list (see the module docs).
pub const RESERVED_EVENTS: [&str; 6] = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Whether `name` is one of the [`RESERVED_EVENTS`].
pub fn is_reserved_event(name: &str) -> bool {
    RESERVED_EVENTS.contains(&name)
}

/// The Socket.IO packet types (the first character of a packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: connect to a namespace (client: optional auth object; server: `{"sid":…}`).
    Connect = 0,
    /// `1`: disconnect from a namespace.
    Disconnect = 1,
    /// `2`: an event `[name, ...args]`.
    Event = 2,
    /// `3`: an acknowledgement `[...args]`.
    Ack = 3,
    /// `4`: the server refused a namespace connection (`{"message":…,"data":…}`).
    ConnectError = 4,
    /// `5`: an event with binary attachments.
    BinaryEvent = 5,
    /// `6`: an acknowledgement with binary attachments.
    BinaryAck = 6,
}

impl PacketType {
    /// The type for the digit `d` (`0`–`6`).
    pub fn from_digit(d: u8) -> Option<PacketType> {
        Some(match d {
            0 => PacketType::Connect,
            1 => PacketType::Disconnect,
            2 => PacketType::Event,
            3 => PacketType::Ack,
            4 => PacketType::ConnectError,
            5 => PacketType::BinaryEvent,
            6 => PacketType::BinaryAck,
            _ => return None,
        })
    }

    /// Whether this is BINARY_EVENT or BINARY_ACK.
    pub fn is_binary(self) -> bool {
        matches!(self, PacketType::BinaryEvent | PacketType::BinaryAck)
    }

    /// Whether this is EVENT or BINARY_EVENT.
    pub fn is_event(self) -> bool {
        matches!(self, PacketType::Event | PacketType::BinaryEvent)
    }

    /// Whether this is ACK or BINARY_ACK.
    pub fn is_ack(self) -> bool {
        matches!(self, PacketType::Ack | PacketType::BinaryAck)
    }
}

/// One Socket.IO packet, with its binary attachments (see the module docs for the placeholder
/// representation).
#[derive(Clone, Debug, PartialEq)]
pub struct Packet {
    /// The packet type. Decoded packets keep the type of the wire (BINARY_EVENT / BINARY_ACK when
    /// attachments were announced); [`Packet::encode`] picks the binary type itself from whether
    /// any attachment is referenced, so EVENT and BINARY_EVENT (ACK and BINARY_ACK) are
    /// interchangeable when building packets.
    pub kind: PacketType,
    /// The namespace, `/` when omitted on the wire. Must start with `/` and must not contain `,`
    /// (the encoder writes it verbatim; [`decode`] never produces anything else).
    pub nsp: String,
    /// The ack id.
    pub id: Option<u64>,
    /// CONNECT: the auth object (client) or `{"sid":…}` (server); EVENT: `[name, ...args]`;
    /// ACK: `[...args]`; CONNECT_ERROR: `{"message":…,"data":…}`. `None` when absent
    /// (`Some(Value::Null)` is encoded like `None`, as in Node).
    pub data: Option<Value>,
    /// Binary attachments; `data` holds `{"_placeholder":true,"num":i}` for each. Only EVENT and
    /// ACK packets (binary or not) carry attachments; the encoder ignores them for other types.
    pub attachments: Vec<Bytes>,
}

impl Packet {
    fn new(kind: PacketType, nsp: impl Into<String>, data: Option<Value>) -> Packet {
        Packet {
            kind,
            nsp: nsp.into(),
            id: None,
            data,
            attachments: Vec::new(),
        }
    }

    /// A CONNECT packet: from a client, `data` is the auth object; from the server, `{"sid":…}`.
    pub fn connect(nsp: impl Into<String>, data: Option<Value>) -> Packet {
        Packet::new(PacketType::Connect, nsp, data)
    }

    /// A DISCONNECT packet.
    pub fn disconnect(nsp: impl Into<String>) -> Packet {
        Packet::new(PacketType::Disconnect, nsp, None)
    }

    /// A CONNECT_ERROR packet with data `{"message": message}` or, when `data` is `Some`,
    /// `{"message": message, "data": data}` (what Node's server sends and socket.io-client turns
    /// into `err.message` / `err.data`).
    pub fn connect_error(
        nsp: impl Into<String>,
        message: impl Into<String>,
        data: Option<Value>,
    ) -> Packet {
        let mut obj = Map::new();
        obj.insert("message".to_owned(), Value::String(message.into()));
        if let Some(data) = data {
            obj.insert("data".to_owned(), data);
        }
        Packet::new(PacketType::ConnectError, nsp, Some(Value::Object(obj)))
    }

    /// An EVENT packet `[name, ...args]` without ack id (add one with [`Packet::with_id`]) and
    /// without attachments (add them with [`Packet::with_attachments`]).
    pub fn event(nsp: impl Into<String>, name: impl Into<String>, args: Vec<Value>) -> Packet {
        let mut data = Vec::with_capacity(args.len() + 1);
        data.push(Value::String(name.into()));
        data.extend(args);
        Packet::new(PacketType::Event, nsp, Some(Value::Array(data)))
    }

    /// An ACK packet `[...args]` answering ack id `id` (add attachments with
    /// [`Packet::with_attachments`]).
    pub fn ack(nsp: impl Into<String>, id: u64, args: Vec<Value>) -> Packet {
        Packet::new(PacketType::Ack, nsp, Some(Value::Array(args))).with_id(id)
    }

    /// Sets the ack id.
    pub fn with_id(mut self, id: u64) -> Packet {
        self.id = Some(id);
        self
    }

    /// Sets the binary attachments the placeholders in `data` refer to.
    pub fn with_attachments(mut self, attachments: Vec<Bytes>) -> Packet {
        self.attachments = attachments;
        self
    }

    /// The event name of an EVENT / BINARY_EVENT packet whose name is a string.
    pub fn event_name(&self) -> Option<&str> {
        if !self.kind.is_event() {
            return None;
        }
        match &self.data {
            Some(Value::Array(items)) => items.first().and_then(Value::as_str),
            _ => None,
        }
    }

    /// The arguments: an event's array without its name, an ack's whole array; empty for other
    /// types.
    pub fn args(&self) -> &[Value] {
        match (&self.data, self.kind) {
            (Some(Value::Array(items)), k) if k.is_event() => items.get(1..).unwrap_or(&[]),
            (Some(Value::Array(items)), k) if k.is_ack() => items,
            _ => &[],
        }
    }

    /// The attachment a placeholder value refers to (`None` if `value` is not a placeholder or
    /// its `num` is out of range).
    pub fn attachment(&self, value: &Value) -> Option<&Bytes> {
        placeholder_num(value).and_then(|n| self.attachments.get(n))
    }

    /// The wire form: the text packet and the attachments to send after it, each as one binary
    /// message. EVENT/ACK packets whose data references attachments are sent as BINARY_EVENT /
    /// BINARY_ACK (with the placeholders renumbered in document order, see
    /// [`extract_attachments`]); otherwise as EVENT / ACK.
    pub fn encode(&self) -> (String, Vec<Bytes>) {
        let data = self.data.as_ref().filter(|d| !d.is_null());
        let carries = self.kind.is_event() || self.kind.is_ack();
        let mut renumbered = None;
        let mut attachments = Vec::new();
        if let (true, false, Some(d)) = (carries, self.attachments.is_empty(), data) {
            if placeholders_in_order(d, self.attachments.len()) {
                attachments = self.attachments.clone();
            } else {
                let mut d = d.clone();
                attachments = extract_attachments(&mut d, &self.attachments);
                renumbered = Some(d);
            }
        }
        let data = renumbered.as_ref().or(data);
        let kind = match self.kind {
            PacketType::Event | PacketType::BinaryEvent if !attachments.is_empty() => {
                PacketType::BinaryEvent
            }
            PacketType::Event | PacketType::BinaryEvent => PacketType::Event,
            PacketType::Ack | PacketType::BinaryAck if !attachments.is_empty() => {
                PacketType::BinaryAck
            }
            PacketType::Ack | PacketType::BinaryAck => PacketType::Ack,
            other => other,
        };
        // Sized for the whole packet at once (it would otherwise grow several times).
        let hint = 24 + self.nsp.len() + data.map_or(0, json_len_hint);
        let mut out = String::with_capacity(hint);
        // Writing to a String cannot fail.
        let _ = write!(out, "{}", kind as u8);
        if kind.is_binary() {
            let _ = write!(out, "{}-", attachments.len());
        }
        if !self.nsp.is_empty() && self.nsp != "/" {
            out.push_str(&self.nsp);
            out.push(',');
        }
        if let Some(id) = self.id {
            let _ = write!(out, "{id}");
        }
        if let Some(data) = data {
            let _ = write!(out, "{data}");
        }
        (out, attachments)
    }
}

/// About the length of `value` as JSON (exact for plain ASCII strings, numbers guessed): enough
/// to size an encoder's buffer in one allocation.
pub(crate) fn json_len_hint(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 20,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(|v| json_len_hint(v) + 1).sum::<usize>(),
        Value::Object(map) => {
            2 + (map.iter())
                .map(|(k, v)| k.len() + 4 + json_len_hint(v))
                .sum::<usize>()
        }
    }
}

/// A placeholder for attachment `num`: `{"_placeholder":true,"num":num}`.
pub fn placeholder(num: usize) -> Value {
    let mut obj = Map::new();
    obj.insert("_placeholder".to_owned(), Value::Bool(true));
    obj.insert("num".to_owned(), Value::from(num as u64));
    Value::Object(obj)
}

/// Whether `value` is a placeholder object (`"_placeholder": true`), valid or not.
fn is_placeholder(value: &Value) -> Option<&Map<String, Value>> {
    match value {
        Value::Object(obj) if obj.get("_placeholder") == Some(&Value::Bool(true)) => Some(obj),
        _ => None,
    }
}

/// The attachment index of a placeholder `{"_placeholder":true,"num":i}` (`None` if `value` is
/// not a placeholder or `num` is not a non-negative integer).
pub fn placeholder_num(value: &Value) -> Option<usize> {
    is_placeholder(value)?
        .get("num")?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// Collects the bytes for the placeholders an application put into a JSON tree: walks `data` in
/// document order (array items in order, object members in insertion order), renumbers every
/// placeholder whose `num` indexes `attachments` to 0, 1, 2, … and returns the bytes in that
/// order (a placeholder used twice yields the bytes twice, cheaply: [`Bytes`] is shared).
/// Placeholders with an out-of-range or malformed `num` are left untouched. The result is what
/// the Node encoder builds from a tree holding the binaries themselves.
pub fn extract_attachments(data: &mut Value, attachments: &[Bytes]) -> Vec<Bytes> {
    fn walk(value: &mut Value, attachments: &[Bytes], out: &mut Vec<Bytes>) {
        if let Some(n) = placeholder_num(value) {
            if let Some(bytes) = attachments.get(n) {
                if let Value::Object(obj) = value {
                    obj.insert("num".to_owned(), Value::from(out.len() as u64));
                }
                out.push(bytes.clone());
            }
            return;
        }
        if is_placeholder(value).is_some() {
            return;
        }
        match value {
            Value::Array(items) => items.iter_mut().for_each(|v| walk(v, attachments, out)),
            Value::Object(obj) => obj.values_mut().for_each(|v| walk(v, attachments, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(data, attachments, &mut out);
    out
}

/// Whether the placeholders of `data` are exactly `0..count` in document order (then encoding
/// needs no renumbering).
fn placeholders_in_order(data: &Value, count: usize) -> bool {
    let mut nums = Vec::new();
    collect_placeholders(data, &mut nums);
    nums.len() == count && nums.iter().enumerate().all(|(i, n)| *n == Some(i as u64))
}

/// Appends the `num` of every placeholder in `data` (in document order; `None` for a malformed
/// one). Recursion depth is bounded by the tree's depth (at most 128 for decoded JSON).
fn collect_placeholders(data: &Value, nums: &mut Vec<Option<u64>>) {
    if let Some(obj) = is_placeholder(data) {
        nums.push(obj.get("num").and_then(Value::as_u64));
        return;
    }
    match data {
        Value::Array(items) => items.iter().for_each(|v| collect_placeholders(v, nums)),
        Value::Object(obj) => obj.values().for_each(|v| collect_placeholders(v, nums)),
        _ => {}
    }
}

/// Decoder limits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Limits {
    /// The most binary attachments one packet may announce (socket.io-parser's
    /// `maxAttachments`, default 10).
    pub max_attachments: usize,
}

impl Limits {
    /// These limits with `max_attachments` set.
    pub fn with_max_attachments(mut self, max_attachments: usize) -> Limits {
        self.max_attachments = max_attachments;
        self
    }
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_attachments: 10,
        }
    }
}

/// The result of decoding a text packet.
#[derive(Debug)]
pub enum Decoded {
    /// A complete packet.
    Complete(Packet),
    /// A BINARY_EVENT / BINARY_ACK waiting for its attachments.
    Partial(PartialPacket),
}

/// A BINARY_EVENT / BINARY_ACK whose text part has been decoded and validated, waiting for its
/// attachments (the next binary messages of the Engine.IO session, in order).
#[derive(Debug)]
pub struct PartialPacket {
    packet: Option<Packet>,
    expected: usize,
}

impl PartialPacket {
    /// Adds the next attachment; returns the complete packet with the last one. Once the packet
    /// has been returned the partial packet is spent: further calls return `None` (the caller
    /// should drop it and decode the next message as a new packet).
    pub fn push(&mut self, attachment: Bytes) -> Option<Packet> {
        let packet = self.packet.as_mut()?;
        packet.attachments.push(attachment);
        if packet.attachments.len() >= self.expected {
            self.packet.take()
        } else {
            None
        }
    }

    /// How many attachments are still missing (0 once the packet has been returned).
    pub fn remaining(&self) -> usize {
        self.packet
            .as_ref()
            .map_or(0, |p| self.expected.saturating_sub(p.attachments.len()))
    }
}

/// What was wrong with a packet (see [`PacketError::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PacketErrorKind {
    /// The text is empty.
    Empty,
    /// The first character is not a packet type `0`–`6`.
    UnknownType,
    /// A binary packet's attachment count is missing, not decimal, zero, or not followed by `-`.
    IllegalAttachments,
    /// A binary packet announces more attachments than [`Limits::max_attachments`].
    TooManyAttachments,
    /// The ack id does not fit in a `u64`.
    InvalidId,
    /// The data is not one JSON value (syntax error, trailing garbage, nesting over 128).
    InvalidJson,
    /// The data does not suit the packet type (see the module docs).
    InvalidPayload,
    /// A placeholder is malformed, out of range, duplicated, missing, or in a non-binary packet.
    InvalidPlaceholder,
    /// Not one msgpack map, or a map that is not a packet, for the msgpack parser (see
    /// [`decode_msgpack`]).
    InvalidMsgpack,
}

/// A packet that cannot be decoded. Decoding never panics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacketError {
    kind: PacketErrorKind,
    detail: String,
}

impl PacketError {
    fn new(kind: PacketErrorKind, detail: impl Into<String>) -> PacketError {
        PacketError {
            kind,
            detail: detail.into(),
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> PacketErrorKind {
        self.kind
    }
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid Socket.IO packet: {}", self.detail)
    }
}

impl std::error::Error for PacketError {}

/// The packet as `socket.io-msgpack-parser` (3.x) encodes it: one msgpack map (notepack's
/// encoding, see [`msgpack`](crate::msgpack)) sent as one binary Engine.IO message, binary data
/// inline as `bin`, the types EVENT (2) and ACK (3) also for binary data. The keys come in the
/// order Node's socket.io server builds its packets (`type`, `data`, `id`, `nsp` for an event;
/// `id`, `type`, `data`, `nsp` for an ack; `type`, `nsp`, `data` for a refused namespace), and
/// an absent `pid` in the CONNECT reply or `data` of a middleware's CONNECT_ERROR is written as
/// notepack 2's `undefined`, as Node's server writes it: the bytes are Node's.
pub fn encode_msgpack(packet: &Packet) -> Vec<u8> {
    use crate::msgpack::{write_map_len, write_str, write_uint, write_value};
    const UNDEFINED: [u8; 3] = [0xd4, 0x00, 0x00];
    let mut out = Vec::with_capacity(32);
    let data = packet.data.as_ref().filter(|d| !d.is_null());
    let ty = |out: &mut Vec<u8>, t: u64| {
        write_str(out, "type");
        write_uint(out, t);
    };
    let nsp = |out: &mut Vec<u8>| {
        write_str(out, "nsp");
        write_str(out, &packet.nsp);
    };
    let id = |out: &mut Vec<u8>| {
        if let Some(id) = packet.id {
            write_str(out, "id");
            write_uint(out, id);
        }
    };
    let value = |out: &mut Vec<u8>, v: &Value| write_value(out, v, &packet.attachments);
    match packet.kind {
        PacketType::Connect => {
            write_map_len(&mut out, 2 + usize::from(data.is_some()));
            ty(&mut out, 0);
            if let Some(data) = data {
                write_str(&mut out, "data");
                match data {
                    // Node's `{ sid, pid }` with `pid` undefined when recovery is off.
                    Value::Object(obj) if obj.contains_key("sid") && !obj.contains_key("pid") => {
                        write_map_len(&mut out, obj.len() + 1);
                        for (k, v) in obj {
                            write_str(&mut out, k);
                            value(&mut out, v);
                        }
                        write_str(&mut out, "pid");
                        out.extend_from_slice(&UNDEFINED);
                    }
                    other => value(&mut out, other),
                }
            }
            nsp(&mut out);
        }
        PacketType::Disconnect => {
            write_map_len(&mut out, 2);
            ty(&mut out, 1);
            nsp(&mut out);
        }
        PacketType::Event | PacketType::BinaryEvent => {
            write_map_len(&mut out, 3 + usize::from(packet.id.is_some()));
            ty(&mut out, 2);
            write_str(&mut out, "data");
            value(&mut out, data.unwrap_or(&Value::Array(Vec::new())));
            id(&mut out);
            nsp(&mut out);
        }
        PacketType::Ack | PacketType::BinaryAck => {
            write_map_len(&mut out, 3 + usize::from(packet.id.is_some()));
            id(&mut out);
            ty(&mut out, 3);
            write_str(&mut out, "data");
            value(&mut out, data.unwrap_or(&Value::Array(Vec::new())));
            nsp(&mut out);
        }
        PacketType::ConnectError => {
            let message = data.and_then(|d| d.get("message")).and_then(Value::as_str);
            write_map_len(&mut out, 3);
            ty(&mut out, 4);
            match data {
                // The client's `Client#connect` refusing an unknown namespace: nsp first.
                Some(d) if message == Some("Invalid namespace") => {
                    nsp(&mut out);
                    write_str(&mut out, "data");
                    value(&mut out, d);
                }
                // A middleware's `{ message, data }`, `data` undefined when it has none.
                Some(Value::Object(obj)) if !obj.contains_key("data") => {
                    write_str(&mut out, "data");
                    write_map_len(&mut out, obj.len() + 1);
                    for (k, v) in obj {
                        write_str(&mut out, k);
                        value(&mut out, v);
                    }
                    write_str(&mut out, "data");
                    out.extend_from_slice(&UNDEFINED);
                    nsp(&mut out);
                }
                other => {
                    write_str(&mut out, "data");
                    value(&mut out, other.unwrap_or(&Value::Null));
                    nsp(&mut out);
                }
            }
        }
    }
    out
}

/// Decodes one binary Engine.IO message as the msgpack parser's packet, validating it as
/// `socket.io-msgpack-parser`'s decoder does: a map whose `type` is an integer 0–4, `nsp` a
/// string, `data` absent or an object (CONNECT), absent (DISCONNECT), a string or an object
/// (CONNECT_ERROR), an array (EVENT, ACK), and `id` absent or an integer (here also: not
/// negative, at most 2^53 − 1; Node would take a negative id). Binary data comes back as
/// attachments (an EVENT or ACK with any is a BINARY_EVENT or BINARY_ACK). Never panics.
pub fn decode_msgpack(bytes: &[u8]) -> Result<Packet, PacketError> {
    use PacketErrorKind as K;
    let bad = |what: &str| PacketError::new(K::InvalidMsgpack, what);
    let decoded = crate::msgpack::decode(bytes)
        .map_err(|e| PacketError::new(K::InvalidMsgpack, e.to_string()))?;
    let Value::Object(mut obj) = decoded.value else {
        return Err(bad("not a map"));
    };
    let kind = match obj.get("type").and_then(Value::as_u64) {
        Some(0) => PacketType::Connect,
        Some(1) => PacketType::Disconnect,
        Some(2) => PacketType::Event,
        Some(3) => PacketType::Ack,
        Some(4) => PacketType::ConnectError,
        _ => return Err(bad("invalid packet type")),
    };
    let Some(Value::String(nsp)) = obj.remove("nsp") else {
        return Err(bad("invalid namespace"));
    };
    let data = obj.remove("data");
    let valid = matches!(
        (kind, &data),
        (PacketType::Connect, None | Some(Value::Object(_)))
            | (PacketType::Disconnect, None)
            | (
                PacketType::ConnectError,
                Some(Value::String(_) | Value::Object(_))
            )
            | (PacketType::Event | PacketType::Ack, Some(Value::Array(_)))
    );
    if !valid {
        return Err(bad("invalid payload"));
    }
    let id = match obj.get("id") {
        None => None,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(id) if id <= MAX_SAFE_INTEGER => Some(id),
            _ => return Err(PacketError::new(K::InvalidId, "invalid packet id")),
        },
        Some(_) => return Err(PacketError::new(K::InvalidId, "invalid packet id")),
    };
    let kind = match kind {
        PacketType::Event if !decoded.attachments.is_empty() => PacketType::BinaryEvent,
        PacketType::Ack if !decoded.attachments.is_empty() => PacketType::BinaryAck,
        other => other,
    };
    Ok(Packet {
        kind,
        nsp,
        id,
        data,
        attachments: decoded.attachments,
    })
}

/// JavaScript's `Number.MAX_SAFE_INTEGER`.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// Decodes one text packet, validating it like socket.io-parser's decoder (see the module docs).
/// A BINARY_EVENT / BINARY_ACK comes back as [`Decoded::Partial`]; feed it the following binary
/// messages. The work is linear in the length of `text`, and nothing is allocated in proportion
/// to an announced attachment count.
pub fn decode(text: &str, limits: &Limits) -> Result<Decoded, PacketError> {
    use PacketErrorKind as K;
    let b = text.as_bytes();
    let first = *b
        .first()
        .ok_or_else(|| PacketError::new(K::Empty, "empty packet"))?;
    let kind = first
        .checked_sub(b'0')
        .and_then(PacketType::from_digit)
        .ok_or_else(|| {
            PacketError::new(
                K::UnknownType,
                format!(
                    "unknown packet type {:?}",
                    text.chars().next().unwrap_or_default()
                ),
            )
        })?;
    let mut i = 1;

    let mut count = 0usize;
    if kind.is_binary() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(PacketError::new(
                K::IllegalAttachments,
                "binary packet without attachment count",
            ));
        }
        if b.get(i) != Some(&b'-') {
            return Err(PacketError::new(
                K::IllegalAttachments,
                "binary packet: no '-' after the attachment count",
            ));
        }
        // Many digits would overflow: that is "too many" as well.
        count = text[start..i].parse::<usize>().unwrap_or(usize::MAX);
        if count == 0 {
            return Err(PacketError::new(
                K::IllegalAttachments,
                "binary packet with 0 attachments",
            ));
        }
        if count > limits.max_attachments {
            return Err(PacketError::new(
                K::TooManyAttachments,
                format!(
                    "{} attachments announced, the limit is {}",
                    &text[start..i],
                    limits.max_attachments
                ),
            ));
        }
        i += 1;
    }

    let nsp = if b.get(i) == Some(&b'/') {
        let end = b[i..]
            .iter()
            .position(|&c| c == b',')
            .map_or(b.len(), |p| i + p);
        let nsp = text[i..end].to_owned();
        i = (end + 1).min(b.len());
        nsp
    } else {
        "/".to_owned()
    };

    let start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let id = if i > start {
        Some(
            text[start..i]
                .parse::<u64>()
                .map_err(|_| PacketError::new(K::InvalidId, "ack id does not fit in 64 bits"))?,
        )
    } else {
        None
    };

    let data = if i < b.len() {
        let value: Value = serde_json::from_str(&text[i..])
            .map_err(|e| PacketError::new(K::InvalidJson, format!("data is not JSON: {e}")))?;
        Some(value)
    } else {
        None
    };

    validate_payload(kind, id, data.as_ref())?;

    // Placeholders: a binary packet's must be exactly 0..count, each once; other packets have none.
    let mut nums = Vec::new();
    if let Some(d) = &data {
        collect_placeholders(d, &mut nums);
    }
    if kind.is_binary() {
        if nums.len() != count {
            return Err(PacketError::new(
                K::InvalidPlaceholder,
                format!(
                    "{count} attachments announced, {} placeholders found",
                    nums.len()
                ),
            ));
        }
        let mut seen = vec![false; count];
        for num in &nums {
            let slot = num
                .and_then(|n| usize::try_from(n).ok())
                .and_then(|n| seen.get_mut(n))
                .ok_or_else(|| {
                    PacketError::new(
                        K::InvalidPlaceholder,
                        "placeholder num is not an attachment index",
                    )
                })?;
            if std::mem::replace(slot, true) {
                return Err(PacketError::new(
                    K::InvalidPlaceholder,
                    "two placeholders for one attachment",
                ));
            }
        }
    } else if !nums.is_empty() {
        return Err(PacketError::new(
            K::InvalidPlaceholder,
            "placeholder in a packet without attachments",
        ));
    }

    let packet = Packet {
        kind,
        nsp,
        id,
        data,
        attachments: Vec::with_capacity(count),
    };
    Ok(if kind.is_binary() {
        Decoded::Partial(PartialPacket {
            packet: Some(packet),
            expected: count,
        })
    } else {
        Decoded::Complete(packet)
    })
}

fn validate_payload(
    kind: PacketType,
    id: Option<u64>,
    data: Option<&Value>,
) -> Result<(), PacketError> {
    use PacketErrorKind as K;
    let invalid = |what: &str| Err(PacketError::new(K::InvalidPayload, what.to_owned()));
    match kind {
        PacketType::Connect => match data {
            None | Some(Value::Object(_)) => Ok(()),
            Some(_) => invalid("CONNECT data must be an object"),
        },
        PacketType::Disconnect => match data {
            None => Ok(()),
            Some(_) => invalid("DISCONNECT carries no data"),
        },
        PacketType::ConnectError => match data {
            None | Some(Value::Object(_)) | Some(Value::String(_)) => Ok(()),
            Some(_) => invalid("CONNECT_ERROR data must be an object or a string"),
        },
        PacketType::Event | PacketType::BinaryEvent => match data {
            Some(Value::Array(items)) => match items.first() {
                Some(Value::Number(_)) => Ok(()),
                Some(Value::String(name)) if is_reserved_event(name) => {
                    invalid("reserved event name")
                }
                Some(Value::String(_)) => Ok(()),
                Some(_) => invalid("event name must be a string or a number"),
                None => invalid("EVENT data must not be empty"),
            },
            _ => invalid("EVENT data must be an array [name, ...args]"),
        },
        PacketType::Ack | PacketType::BinaryAck => match (id, data) {
            (None, _) => invalid("ACK without ack id"),
            (Some(_), Some(Value::Array(_))) => Ok(()),
            (Some(_), _) => invalid("ACK data must be an array"),
        },
    }
}

/// Builds the attachments of a packet while the application builds its JSON arguments:
/// [`AttachmentsBuilder::add`] stores the bytes and returns the placeholder to put in their
/// place.
///
/// ```
/// use bytes::Bytes;
/// use serde_json::json;
/// use volley_socketio::packet::{AttachmentsBuilder, Packet};
///
/// let mut files = AttachmentsBuilder::new();
/// let args = vec![json!({"name": "a.bin", "content": files.add(Bytes::from_static(b"\x00\x01"))})];
/// let packet = Packet::event("/", "upload", args).with_attachments(files.into_vec());
/// let (text, binaries) = packet.encode();
/// assert_eq!(text, r#"51-["upload",{"name":"a.bin","content":{"_placeholder":true,"num":0}}]"#);
/// assert_eq!(binaries, vec![Bytes::from_static(b"\x00\x01")]);
/// ```
#[derive(Clone, Debug, Default)]
pub struct AttachmentsBuilder {
    attachments: Vec<Bytes>,
}

impl AttachmentsBuilder {
    /// An empty builder.
    pub fn new() -> AttachmentsBuilder {
        AttachmentsBuilder::default()
    }

    /// Stores `bytes` and returns the placeholder that stands for them.
    pub fn add(&mut self, bytes: Bytes) -> Value {
        self.attachments.push(bytes);
        placeholder(self.attachments.len() - 1)
    }

    /// The stored attachments, for [`Packet::with_attachments`].
    pub fn into_vec(self) -> Vec<Bytes> {
        self.attachments
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn complete(text: &str) -> Packet {
        match decode(text, &Limits::default()) {
            Ok(Decoded::Complete(p)) => p,
            other => panic!("{text:?}: expected a complete packet, got {other:?}"),
        }
    }

    fn partial(text: &str) -> PartialPacket {
        match decode(text, &Limits::default()) {
            Ok(Decoded::Partial(p)) => p,
            other => panic!("{text:?}: expected a partial packet, got {other:?}"),
        }
    }

    fn error(text: &str) -> PacketErrorKind {
        match decode(text, &Limits::default()) {
            Err(e) => {
                assert!(!e.to_string().is_empty());
                e.kind()
            }
            Ok(d) => panic!("{text:?}: expected an error, got {d:?}"),
        }
    }

    /// Decodes `text` (+ attachments), checks it equals `expected`, and that encoding gives back
    /// exactly `text` and the attachments.
    fn round_trip(text: &str, attachments: &[&'static [u8]], expected: &Packet) {
        let packet = match decode(text, &Limits::default()).unwrap() {
            Decoded::Complete(p) => {
                assert!(attachments.is_empty());
                p
            }
            Decoded::Partial(mut partial) => {
                let mut done = None;
                for (i, a) in attachments.iter().enumerate() {
                    assert_eq!(partial.remaining(), attachments.len() - i);
                    assert!(done.is_none());
                    done = partial.push(Bytes::from_static(a));
                }
                assert_eq!(partial.remaining(), 0);
                done.expect("complete after the last attachment")
            }
        };
        assert_eq!(&packet, expected);
        let (out, bins) = packet.encode();
        assert_eq!(out, text);
        let want: Vec<Bytes> = attachments.iter().map(|a| Bytes::from_static(a)).collect();
        assert_eq!(bins, want);
    }

    #[test]
    fn spec_examples_round_trip() {
        round_trip("0", &[], &Packet::connect("/", None));
        round_trip("0/admin,", &[], &Packet::connect("/admin", None));
        round_trip(
            r#"0/admin,{"token":"123"}"#,
            &[],
            &Packet::connect("/admin", Some(json!({"token": "123"}))),
        );
        round_trip(
            r#"0{"sid":"oSO0OpakMV_3jnilAAAA"}"#,
            &[],
            &Packet::connect("/", Some(json!({"sid": "oSO0OpakMV_3jnilAAAA"}))),
        );
        round_trip("1/admin,", &[], &Packet::disconnect("/admin"));
        round_trip("1", &[], &Packet::disconnect("/"));
        round_trip(r#"2["foo"]"#, &[], &Packet::event("/", "foo", vec![]));
        round_trip(
            r#"2/admin,["bar"]"#,
            &[],
            &Packet::event("/admin", "bar", vec![]),
        );
        round_trip(
            r#"212["foo","bar",{"a":1}]"#,
            &[],
            &Packet::event("/", "foo", vec![json!("bar"), json!({"a": 1})]).with_id(12),
        );
        round_trip(
            r#"3/admin,13["bar"]"#,
            &[],
            &Packet::ack("/admin", 13, vec![json!("bar")]),
        );
        round_trip(r#"312[]"#, &[], &Packet::ack("/", 12, vec![]));
        round_trip(
            r#"4{"message":"Not authorized"}"#,
            &[],
            &Packet::connect_error("/", "Not authorized", None),
        );
        round_trip(
            r#"4/custom,{"message":"not authorized","data":{"code":401}}"#,
            &[],
            &Packet::connect_error("/custom", "not authorized", Some(json!({"code": 401}))),
        );
        let bin = Packet {
            kind: PacketType::BinaryEvent,
            nsp: "/".into(),
            id: None,
            data: Some(json!(["baz", placeholder(0)])),
            attachments: vec![Bytes::from_static(&[1, 2, 3, 4])],
        };
        round_trip(
            r#"51-["baz",{"_placeholder":true,"num":0}]"#,
            &[&[1, 2, 3, 4]],
            &bin,
        );
        let bin_ack = Packet {
            kind: PacketType::BinaryAck,
            nsp: "/admin".into(),
            id: Some(15),
            data: Some(json!(["bar", placeholder(0)])),
            attachments: vec![Bytes::from_static(&[1, 2, 3])],
        };
        round_trip(
            r#"61-/admin,15["bar",{"_placeholder":true,"num":0}]"#,
            &[&[1, 2, 3]],
            &bin_ack,
        );
    }

    #[test]
    fn binary_packet_with_two_attachments_in_any_order() {
        let text = r#"52-["up",{"b":{"_placeholder":true,"num":1}},{"_placeholder":true,"num":0}]"#;
        let mut p = partial(text);
        assert_eq!(p.remaining(), 2);
        assert!(p.push(Bytes::from_static(b"zero")).is_none());
        assert_eq!(p.remaining(), 1);
        let packet = p.push(Bytes::from_static(b"one")).unwrap();
        assert_eq!(p.remaining(), 0);
        assert!(
            p.push(Bytes::from_static(b"extra")).is_none(),
            "spent partial takes nothing more"
        );
        assert_eq!(packet.event_name(), Some("up"));
        assert_eq!(
            packet.attachment(&packet.args()[0]["b"]).unwrap().as_ref(),
            b"one"
        );
        assert_eq!(
            packet.attachment(&packet.args()[1]).unwrap().as_ref(),
            b"zero"
        );
        // Re-encoding renumbers in document order, like the Node encoder would.
        let (text2, bins) = packet.encode();
        assert_eq!(
            text2,
            r#"52-["up",{"b":{"_placeholder":true,"num":0}},{"_placeholder":true,"num":1}]"#
        );
        assert_eq!(
            bins,
            vec![Bytes::from_static(b"one"), Bytes::from_static(b"zero")]
        );
    }

    #[test]
    fn namespace_id_and_data_forms() {
        let p = complete(r#"2/chat,7["m"]"#);
        assert_eq!(
            (p.nsp.as_str(), p.id, p.kind),
            ("/chat", Some(7), PacketType::Event)
        );
        // A namespace runs to the end of the text when there is no comma.
        assert_eq!(complete("0/custom").nsp, "/custom");
        assert_eq!(complete("1/a b").nsp, "/a b");
        // An explicit "/" namespace is the default one.
        assert_eq!(complete("0/,").nsp, "/");
        // Leading zeros in an id are accepted (Node's Number()), the re-encoded text drops them.
        assert_eq!(complete(r#"3007[]"#).id, Some(7));
        assert_eq!(complete(r#"3007[]"#).encode().0, "37[]");
        assert_eq!(complete(&format!("3{}[]", u64::MAX)).id, Some(u64::MAX));
        // Numeric event names are allowed, like socket.io-parser.
        assert_eq!(complete("2[1,2]").args(), &[json!(2)]);
        assert_eq!(complete("2[1,2]").event_name(), None);
        // Whitespace around the JSON is fine (JSON.parse accepts it too).
        assert_eq!(complete("2 [\"a\"] \n").event_name(), Some("a"));
        // CONNECT_ERROR may carry a string (old servers).
        assert_eq!(complete(r#"4"nope""#).data, Some(json!("nope")));
        // Floats are parsed exactly, so they re-encode unchanged (found by the sio_packet fuzzer).
        let f = complete(
            "21[2777777777777700000000000000000000000000000000000000000000000000000000000000515120390]",
        );
        assert_eq!(f.encode().0, "21[2.7777777777777e+84]");
        assert_eq!(complete(&f.encode().0), f);
        assert_eq!(complete("4").data, None);
    }

    #[test]
    fn type_errors() {
        assert_eq!(error(""), PacketErrorKind::Empty);
        assert_eq!(error("7"), PacketErrorKind::UnknownType);
        assert_eq!(error("9[\"a\"]"), PacketErrorKind::UnknownType);
        assert_eq!(error("x"), PacketErrorKind::UnknownType);
        assert_eq!(error("é"), PacketErrorKind::UnknownType);
    }

    #[test]
    fn hostile_binary_packet_without_dash() {
        assert_eq!(
            error(r#"51["ev",{"_placeholder":true,"num":0}]"#),
            PacketErrorKind::IllegalAttachments
        );
        assert_eq!(error("51"), PacketErrorKind::IllegalAttachments);
        assert_eq!(error("5"), PacketErrorKind::IllegalAttachments);
        assert_eq!(error(r#"5-["ev"]"#), PacketErrorKind::IllegalAttachments);
        assert_eq!(error(r#"5["ev"]"#), PacketErrorKind::IllegalAttachments);
        assert_eq!(error(r#"60-0[]"#), PacketErrorKind::IllegalAttachments);
        assert_eq!(error(r#"5a-["ev"]"#), PacketErrorKind::IllegalAttachments);
    }

    #[test]
    fn hostile_huge_attachment_count() {
        assert_eq!(
            error(r#"5599999999999-["ev",{"_placeholder":true,"num":0}]"#),
            PacketErrorKind::TooManyAttachments
        );
        assert_eq!(error("5599999999999-"), PacketErrorKind::TooManyAttachments);
        let huge = format!("5{}-[\"ev\"]", "9".repeat(5000));
        assert_eq!(error(&huge), PacketErrorKind::TooManyAttachments);
        let eleven = format!(
            "511-[\"ev\",{}]",
            (0..11)
                .map(|i| placeholder(i).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(error(&eleven), PacketErrorKind::TooManyAttachments);
        let limits = Limits {
            max_attachments: 11,
        };
        assert!(matches!(decode(&eleven, &limits), Ok(Decoded::Partial(p)) if p.remaining() == 11));
        // Exactly at the default limit is fine.
        let ten = format!(
            "510-[\"ev\",{}]",
            (0..10)
                .map(|i| placeholder(i).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        assert_eq!(partial(&ten).remaining(), 10);
        // A huge limit does not let a small packet allocate for a huge count.
        let limits = Limits {
            max_attachments: usize::MAX,
        };
        let r = decode(
            "5999999999999-[\"ev\",{\"_placeholder\":true,\"num\":0}]",
            &limits,
        );
        assert_eq!(r.unwrap_err().kind(), PacketErrorKind::InvalidPlaceholder);
    }

    #[test]
    fn event_named_error_is_an_ordinary_event() {
        let p = complete(r#"2["error","boom"]"#);
        assert_eq!(p.event_name(), Some("error"));
        assert_eq!(p.args(), &[json!("boom")]);
        assert!(!is_reserved_event("error"));
    }

    #[test]
    fn reserved_event_names_are_rejected() {
        for name in RESERVED_EVENTS {
            assert_eq!(
                error(&format!(r#"2["{name}"]"#)),
                PacketErrorKind::InvalidPayload,
                "{name}"
            );
            assert_eq!(
                error(&format!(r#"51-["{name}",{{"_placeholder":true,"num":0}}]"#)),
                PacketErrorKind::InvalidPayload,
                "{name}"
            );
        }
        // Close relatives are not reserved.
        assert_eq!(complete(r#"2["Connect"]"#).event_name(), Some("Connect"));
    }

    #[test]
    fn hostile_placeholders() {
        use PacketErrorKind::InvalidPlaceholder as P;
        // non-numeric num
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":"0"}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":"x"}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":null}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":{}}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true}]"#), P);
        // negative, fractional, out of range
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":-1}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":0.5}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":1}]"#), P);
        assert_eq!(error(r#"51-["ev",{"_placeholder":true,"num":1e300}]"#), P);
        assert_eq!(
            error(r#"51-["ev",{"_placeholder":true,"num":18446744073709551616}]"#),
            P
        );
        // count mismatch: too few, too many, duplicates
        assert_eq!(error(r#"52-["ev",{"_placeholder":true,"num":0}]"#), P);
        assert_eq!(error(r#"51-["ev"]"#), P);
        assert_eq!(
            error(r#"51-["ev",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]"#),
            P
        );
        assert_eq!(
            error(r#"52-["ev",{"_placeholder":true,"num":0},{"_placeholder":true,"num":0}]"#),
            P
        );
        // placeholders in non-binary packets
        assert_eq!(error(r#"2["ev",{"_placeholder":true,"num":0}]"#), P);
        assert_eq!(error(r#"31[{"x":[{"_placeholder":true,"num":0}]}]"#), P);
        // "_placeholder" not exactly true: an ordinary object
        let p = complete(r#"2["ev",{"_placeholder":"true","num":0}]"#);
        assert_eq!(p.attachment(&p.args()[0]), None);
    }

    #[test]
    fn payload_validation() {
        use PacketErrorKind::InvalidPayload as V;
        // CONNECT: object or nothing
        assert_eq!(error(r#"0[]"#), V);
        assert_eq!(error(r#"0"x""#), V);
        // (an id on CONNECT is meaningless but accepted, like socket.io-parser)
        assert_eq!(complete("0/a,1").id, Some(1));
        assert_eq!(error("0null"), V);
        // DISCONNECT: nothing
        assert_eq!(error("1{}"), V);
        assert_eq!(error(r#"1/a,"x""#), V);
        // CONNECT_ERROR: object or string
        assert_eq!(error("4[]"), V);
        assert_eq!(error("4 1"), V);
        // EVENT: non-empty array, string/number name
        assert_eq!(error("2"), V);
        assert_eq!(error("2/a,"), V);
        assert_eq!(error("21"), V);
        assert_eq!(error("2[]"), V);
        assert_eq!(error("2{}"), V);
        assert_eq!(error(r#"2"ev""#), V);
        assert_eq!(error(r#"2[null]"#), V);
        assert_eq!(error(r#"2[["ev"]]"#), V);
        assert_eq!(error(r#"2[{"ev":1}]"#), V);
        // ACK: array, with id
        assert_eq!(error("3[]"), V);
        assert_eq!(error("31"), V);
        assert_eq!(error("31{}"), V);
        assert_eq!(error(r#"61-[{"_placeholder":true,"num":0}]"#), V);
    }

    #[test]
    fn id_json_and_namespace_errors() {
        assert_eq!(
            error(r#"218446744073709551616["a"]"#),
            PacketErrorKind::InvalidId
        );
        assert_eq!(
            error(&format!("2{}[\"a\"]", "9".repeat(1000))),
            PacketErrorKind::InvalidId
        );
        // trailing garbage after the JSON
        assert_eq!(error(r#"2["a"]x"#), PacketErrorKind::InvalidJson);
        assert_eq!(error(r#"2["a"]["b"]"#), PacketErrorKind::InvalidJson);
        assert_eq!(error(r#"2["a""#), PacketErrorKind::InvalidJson);
        // a namespace without the leading '/' is not a namespace: it is read as (bad) JSON
        assert_eq!(error(r#"2chat,["a"]"#), PacketErrorKind::InvalidJson);
        assert_eq!(error(r#"0admin,"#), PacketErrorKind::InvalidJson);
        // deep nesting hits serde_json's recursion limit (128) instead of the stack
        let deep = format!("2[\"a\",{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(error(&deep), PacketErrorKind::InvalidJson);
        let ok = format!("2[\"a\",{}{}]", "[".repeat(100), "]".repeat(100));
        assert_eq!(complete(&ok).event_name(), Some("a"));
    }

    #[test]
    fn encode_exact_strings() {
        // Key order is insertion order, as in JSON.stringify.
        let p = Packet::event(
            "/",
            "msg",
            vec![json!({"z": 1, "a": [true, null, 1.5, "é\n\u{1}"]})],
        );
        assert_eq!(
            p.encode().0,
            r#"2["msg",{"z":1,"a":[true,null,1.5,"é\n\u0001"]}]"#
        );
        assert_eq!(Packet::disconnect("/x").encode().0, "1/x,");
        assert_eq!(Packet::connect("", None).encode().0, "0");
        assert_eq!(
            Packet::connect("/", Some(Value::Null)).encode().0,
            "0",
            "null data is omitted like in Node"
        );
        assert_eq!(Packet::ack("/", 0, vec![]).encode().0, "30[]");
        // Attachments on an EVENT make it binary; without attachments a BINARY_EVENT is sent as EVENT.
        let mut b = AttachmentsBuilder::new();
        let args = vec![
            b.add(Bytes::from_static(b"a")),
            json!({"k": b.add(Bytes::from_static(b"b"))}),
        ];
        let p = Packet::event("/custom", "file", args)
            .with_id(3)
            .with_attachments(b.into_vec());
        let (text, bins) = p.encode();
        assert_eq!(
            text,
            r#"52-/custom,3["file",{"_placeholder":true,"num":0},{"k":{"_placeholder":true,"num":1}}]"#
        );
        assert_eq!(
            bins,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
        let mut plain = p.clone();
        plain.data = Some(json!(["file"]));
        plain.kind = PacketType::BinaryEvent;
        assert_eq!(plain.encode(), ("2/custom,3[\"file\"]".to_owned(), vec![]));
        // Connect packets never carry attachments.
        let c = Packet::connect("/", Some(json!({}))).with_attachments(vec![Bytes::new()]);
        assert_eq!(c.encode(), ("0{}".to_owned(), vec![]));
    }

    #[test]
    fn extract_attachments_renumbers_and_drops_unreferenced() {
        let atts = vec![
            Bytes::from_static(b"0"),
            Bytes::from_static(b"1"),
            Bytes::from_static(b"2"),
        ];
        // Echo only the last two args of a received packet whose first arg held attachment 0.
        let mut data = json!([placeholder(2), {"x": placeholder(1)}, placeholder(2), placeholder(7),
            {"_placeholder": true, "num": "z"}]);
        let out = extract_attachments(&mut data, &atts);
        assert_eq!(out, vec![atts[2].clone(), atts[1].clone(), atts[2].clone()]);
        assert_eq!(
            data,
            json!([placeholder(0), {"x": placeholder(1)}, placeholder(2), placeholder(7),
                {"_placeholder": true, "num": "z"}])
        );
        // Re-sending a subset of a received packet's args through encode.
        let received = Packet {
            kind: PacketType::BinaryEvent,
            nsp: "/".into(),
            id: None,
            data: Some(json!(["message", placeholder(0), "text", placeholder(1)])),
            attachments: vec![atts[0].clone(), atts[1].clone()],
        };
        let back = Packet::event("/", "message-back", received.args()[1..].to_vec())
            .with_attachments(received.attachments.clone());
        let (text, bins) = back.encode();
        assert_eq!(
            text,
            r#"51-["message-back","text",{"_placeholder":true,"num":0}]"#
        );
        assert_eq!(bins, vec![atts[1].clone()]);
        // And what we encode we decode again.
        let mut p = partial(&text);
        let again = p.push(bins[0].clone()).unwrap();
        assert_eq!(again.attachment(&again.args()[1]), Some(&atts[1]));
    }

    #[test]
    fn helpers() {
        let e = Packet::event("/", "ev", vec![json!(1)]);
        assert_eq!(e.event_name(), Some("ev"));
        assert_eq!(e.args(), &[json!(1)]);
        let a = Packet::ack("/", 5, vec![json!("x")]);
        assert_eq!(a.event_name(), None);
        assert_eq!(a.args(), &[json!("x")]);
        assert_eq!(Packet::connect("/", None).args(), &[] as &[Value]);
        assert_eq!(placeholder_num(&placeholder(3)), Some(3));
        assert_eq!(placeholder_num(&json!({"num": 3})), None);
        assert_eq!(
            placeholder_num(&json!({"_placeholder": true, "num": -3})),
            None
        );
        let err = decode("", &Limits::default()).unwrap_err();
        assert_eq!(err.to_string(), "invalid Socket.IO packet: empty packet");
        let ce = Packet::connect_error("/", "m", None);
        assert_eq!(ce.data, Some(json!({"message": "m"})));
    }
}
