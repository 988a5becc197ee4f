//! Typed event arguments: any `Serialize` value to a [`Payload`], a [`Payload`] to any
//! `Deserialize` value, with binary data as attachments.
//!
//! The mapping, in both directions:
//! - a tuple is the argument list (`("room", 42)` is two arguments); `()` is no argument;
//!   any other value is one argument (a `Vec`, a struct, a tuple struct, a `Value`, `Value::Null`
//!   included: one each);
//! - bytes (what serde calls `bytes`: [`bytes::Bytes`], `serde_bytes::ByteBuf`, a
//!   `#[serde(with = "serde_bytes")] Vec<u8>`, …) become binary attachments, wherever they are
//!   nested; a plain `Vec<u8>` is serialized by serde as a sequence of numbers and stays a JSON
//!   array (serde cannot tell it from any other `Vec<u8>`);
//! - receiving, a bytes field takes a binary attachment (a `Vec<u8>` field also does: a
//!   sequence is read from the attachment's bytes); a `serde_json::Value` field keeps the
//!   placeholder object (`{"_placeholder":true,"num":i}`), as a [`Payload`] does;
//! - receiving a tuple, missing trailing arguments read as `null` (so an `Option` takes
//!   `None`) and extra ones are ignored, as JavaScript functions treat their arguments.

use bytes::Bytes;
use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use serde::ser::{self, Serialize};
use serde_json::{Map, Number, Value};

use crate::Payload;

/// Why typed data could not be made from a payload, or a value could not be serialized.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataError(String);

impl DataError {
    /// An error with `message`.
    pub fn new(message: impl Into<String>) -> Self {
        DataError(message.into())
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for DataError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

impl ser::Error for DataError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DataError(msg.to_string())
    }
}

impl de::Error for DataError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DataError(msg.to_string())
    }
}

/// What an event handler or an acknowledgement can receive: any [`DeserializeOwned`] type
/// (read with the mapping of this module: a tuple takes the arguments, anything else the first
/// one), the raw [`Payload`], or [`TryData<T>`] to see a parse failure instead of the socket's
/// [`on_error`](crate::Socket::on_error) hook seeing it.
pub trait FromPayload: Sized {
    /// Makes `Self` from the arguments of an event or acknowledgement.
    fn from_payload(payload: Payload) -> Result<Self, DataError>;
}

impl<T: DeserializeOwned> FromPayload for T {
    fn from_payload(payload: Payload) -> Result<Self, DataError> {
        T::deserialize(ArgsDeserializer {
            args: &payload.args,
            attachments: &payload.attachments,
        })
    }
}

impl FromPayload for Payload {
    fn from_payload(payload: Payload) -> Result<Self, DataError> {
        Ok(payload)
    }
}

/// Event data whose parse failure the handler sees: `|socket, TryData(data): TryData<Msg>, ack|`
/// gets `Err` where a handler taking `Msg` would not run (and the socket's
/// [`on_error`](crate::Socket::on_error) hook would get the error).
#[derive(Clone, Debug, PartialEq)]
pub struct TryData<T>(pub Result<T, DataError>);

impl<T: FromPayload> FromPayload for TryData<T> {
    fn from_payload(payload: Payload) -> Result<Self, DataError> {
        Ok(TryData(T::from_payload(payload)))
    }
}

/// Serializes `value` into an argument list (see the module docs).
pub(crate) fn to_payload<T: Serialize + ?Sized>(value: &T) -> Result<Payload, DataError> {
    let mut attachments = Vec::new();
    let mut shape = Shape::One;
    let value = value.serialize(Ser {
        att: &mut attachments,
        shape: Some(&mut shape),
    })?;
    // `()` and `Value::Null` both serialize as a unit: only `()` (or a reference to it) is "no
    // argument"; a null value is one `null` argument.
    let unit_type = std::any::type_name::<T>().trim_start_matches('&') == "()";
    let args = match (shape, value) {
        (Shape::Unit, _) if unit_type => Vec::new(),
        (Shape::Tuple, Value::Array(items)) => items,
        (_, value) => vec![value],
    };
    Ok(Payload::with_attachments(args, attachments))
}

/// What the top-level value was.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Unit,
    Tuple,
}

impl Serialize for Payload {
    /// The arguments as a tuple (so that [`Socket::emit`](crate::Socket::emit) sends them as
    /// they are), each placeholder that names an attachment as serde bytes.
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ser::SerializeTuple;
        let mut tuple = serializer.serialize_tuple(self.args.len())?;
        for arg in &self.args {
            tuple.serialize_element(&Resolved {
                value: arg,
                attachments: &self.attachments,
            })?;
        }
        tuple.end()
    }
}

/// A JSON value whose placeholders serialize as the bytes of their attachment.
struct Resolved<'a> {
    value: &'a Value,
    attachments: &'a [Bytes],
}

impl Serialize for Resolved<'_> {
    fn serialize<S: ser::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use ser::{SerializeMap, SerializeSeq};
        match self.value {
            Value::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Resolved {
                        value: item,
                        attachments: self.attachments,
                    })?;
                }
                seq.end()
            }
            Value::Object(obj) => {
                if let Some(bytes) =
                    crate::packet::placeholder_num(self.value).and_then(|n| self.attachments.get(n))
                {
                    return serializer.serialize_bytes(bytes);
                }
                let mut map = serializer.serialize_map(Some(obj.len()))?;
                for (k, v) in obj {
                    map.serialize_entry(
                        k,
                        &Resolved {
                            value: v,
                            attachments: self.attachments,
                        },
                    )?;
                }
                map.end()
            }
            other => other.serialize(serializer),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Serializer: a value to JSON, bytes to attachments.

struct Ser<'a> {
    att: &'a mut Vec<Bytes>,
    /// Set at the top level only: records a tuple or a unit.
    shape: Option<&'a mut Shape>,
}

impl<'a> Ser<'a> {
    fn child(att: &mut Vec<Bytes>) -> Ser<'_> {
        Ser { att, shape: None }
    }
}

fn float(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

struct SeqSer<'a> {
    att: &'a mut Vec<Bytes>,
    items: Vec<Value>,
    /// For a tuple or struct variant: the variant name to wrap the result in.
    variant: Option<&'static str>,
}

struct MapSer<'a> {
    att: &'a mut Vec<Bytes>,
    map: Map<String, Value>,
    key: Option<String>,
    variant: Option<&'static str>,
}

fn wrap(variant: Option<&'static str>, value: Value) -> Value {
    match variant {
        Some(name) => {
            let mut obj = Map::new();
            obj.insert(name.to_owned(), value);
            Value::Object(obj)
        }
        None => value,
    }
}

impl<'a> ser::Serializer for Ser<'a> {
    type Ok = Value;
    type Error = DataError;
    type SerializeSeq = SeqSer<'a>;
    type SerializeTuple = SeqSer<'a>;
    type SerializeTupleStruct = SeqSer<'a>;
    type SerializeTupleVariant = SeqSer<'a>;
    type SerializeMap = MapSer<'a>;
    type SerializeStruct = MapSer<'a>;
    type SerializeStructVariant = MapSer<'a>;

    fn serialize_bool(self, v: bool) -> Result<Value, DataError> {
        Ok(Value::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_i16(self, v: i16) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_i32(self, v: i32) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_i64(self, v: i64) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_i128(self, v: i128) -> Result<Value, DataError> {
        match (i64::try_from(v), u64::try_from(v)) {
            (Ok(i), _) => Ok(Value::from(i)),
            (_, Ok(u)) => Ok(Value::from(u)),
            _ => Ok(float(v as f64)),
        }
    }
    fn serialize_u8(self, v: u8) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_u16(self, v: u16) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_u32(self, v: u32) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_u64(self, v: u64) -> Result<Value, DataError> {
        Ok(Value::from(v))
    }
    fn serialize_u128(self, v: u128) -> Result<Value, DataError> {
        match u64::try_from(v) {
            Ok(u) => Ok(Value::from(u)),
            Err(_) => Ok(float(v as f64)),
        }
    }
    fn serialize_f32(self, v: f32) -> Result<Value, DataError> {
        Ok(float(f64::from(v)))
    }
    fn serialize_f64(self, v: f64) -> Result<Value, DataError> {
        Ok(float(v))
    }
    fn serialize_char(self, v: char) -> Result<Value, DataError> {
        Ok(Value::String(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Value, DataError> {
        Ok(Value::String(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, DataError> {
        let num = self.att.len();
        self.att.push(Bytes::copy_from_slice(v));
        Ok(Payload::placeholder(num))
    }
    fn serialize_none(self) -> Result<Value, DataError> {
        Ok(Value::Null)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Value, DataError> {
        value.serialize(Ser::child(self.att))
    }
    fn serialize_unit(self) -> Result<Value, DataError> {
        if let Some(shape) = self.shape {
            *shape = Shape::Unit;
        }
        Ok(Value::Null)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Value, DataError> {
        Ok(Value::Null)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Value, DataError> {
        Ok(Value::String(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Value, DataError> {
        value.serialize(Ser::child(self.att))
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Value, DataError> {
        Ok(wrap(Some(variant), value.serialize(Ser::child(self.att))?))
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqSer<'a>, DataError> {
        Ok(SeqSer {
            att: self.att,
            items: Vec::with_capacity(len.unwrap_or(0).min(1024)),
            variant: None,
        })
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqSer<'a>, DataError> {
        if let Some(shape) = self.shape {
            *shape = Shape::Tuple;
        }
        Ser::child(self.att).serialize_seq(Some(len))
    }
    fn serialize_tuple_struct(
        self,
        _name: &'static str,
        len: usize,
    ) -> Result<SeqSer<'a>, DataError> {
        Ser::child(self.att).serialize_seq(Some(len))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<SeqSer<'a>, DataError> {
        let mut seq = Ser::child(self.att).serialize_seq(Some(len))?;
        seq.variant = Some(variant);
        Ok(seq)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<MapSer<'a>, DataError> {
        Ok(MapSer {
            att: self.att,
            map: Map::new(),
            key: None,
            variant: None,
        })
    }
    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<MapSer<'a>, DataError> {
        Ser::child(self.att).serialize_map(Some(len))
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<MapSer<'a>, DataError> {
        let mut map = Ser::child(self.att).serialize_map(Some(len))?;
        map.variant = Some(variant);
        Ok(map)
    }
}

impl ser::SerializeSeq for SeqSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DataError> {
        self.items.push(value.serialize(Ser::child(self.att))?);
        Ok(())
    }
    fn end(self) -> Result<Value, DataError> {
        Ok(wrap(self.variant, Value::Array(self.items)))
    }
}

impl ser::SerializeTuple for SeqSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DataError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, DataError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DataError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, DataError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DataError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Value, DataError> {
        ser::SerializeSeq::end(self)
    }
}

/// A map key as a string (as JSON writes keys: strings, numbers, booleans, chars).
fn key_string<T: Serialize + ?Sized>(key: &T) -> Result<String, DataError> {
    match key.serialize(serde_json::value::Serializer) {
        Ok(Value::String(s)) => Ok(s),
        Ok(Value::Number(n)) => Ok(n.to_string()),
        Ok(Value::Bool(b)) => Ok(b.to_string()),
        Ok(_) => Err(DataError::new(
            "a map key must be a string, a number or a bool",
        )),
        Err(e) => Err(DataError::new(e.to_string())),
    }
}

impl ser::SerializeMap for MapSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), DataError> {
        self.key = Some(key_string(key)?);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), DataError> {
        let key = self
            .key
            .take()
            .ok_or_else(|| DataError::new("a map value without its key"))?;
        let value = value.serialize(Ser::child(self.att))?;
        self.map.insert(key, value);
        Ok(())
    }
    fn end(self) -> Result<Value, DataError> {
        Ok(wrap(self.variant, Value::Object(self.map)))
    }
}

impl ser::SerializeStruct for MapSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), DataError> {
        let value = value.serialize(Ser::child(self.att))?;
        self.map.insert(key.to_owned(), value);
        Ok(())
    }
    fn end(self) -> Result<Value, DataError> {
        ser::SerializeMap::end(self)
    }
}

impl ser::SerializeStructVariant for MapSer<'_> {
    type Ok = Value;
    type Error = DataError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), DataError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Value, DataError> {
        ser::SerializeMap::end(self)
    }
}

// ---------------------------------------------------------------------------------------------
// Deserializer: arguments to a value, attachments to bytes.

/// The whole argument list: a tuple takes the arguments, anything else the first one.
struct ArgsDeserializer<'a> {
    args: &'a [Value],
    attachments: &'a [Bytes],
}

impl ArgsDeserializer<'_> {
    fn first(&self) -> ValueDeserializer<'_> {
        ValueDeserializer {
            value: self.args.first().unwrap_or(&Value::Null),
            attachments: self.attachments,
        }
    }
}

macro_rules! to_first {
    ($($method:ident)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
                self.first().$method(visitor)
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for ArgsDeserializer<'_> {
    type Error = DataError;

    to_first! {
        deserialize_any deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32
        deserialize_i64 deserialize_i128 deserialize_u8 deserialize_u16 deserialize_u32
        deserialize_u64 deserialize_u128 deserialize_f32 deserialize_f64 deserialize_char
        deserialize_str deserialize_string deserialize_bytes deserialize_byte_buf
        deserialize_option deserialize_seq deserialize_map deserialize_identifier
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        visitor.visit_unit()
    }
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        visitor.visit_unit()
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.first().deserialize_unit_struct(name, visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.first().deserialize_newtype_struct(name, visitor)
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        visitor.visit_seq(Seq {
            items: self.args,
            pos: 0,
            len: len.max(self.args.len()),
            attachments: self.attachments,
        })
    }
    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.first().deserialize_tuple_struct(name, len, visitor)
    }
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.first().deserialize_struct(name, fields, visitor)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.first().deserialize_enum(name, variants, visitor)
    }
}

/// One JSON value; placeholders resolve to their attachment where bytes are expected.
#[derive(Clone, Copy)]
struct ValueDeserializer<'a> {
    value: &'a Value,
    attachments: &'a [Bytes],
}

impl<'a> ValueDeserializer<'a> {
    fn child(&self, value: &'a Value) -> ValueDeserializer<'a> {
        ValueDeserializer {
            value,
            attachments: self.attachments,
        }
    }

    fn attachment(&self) -> Option<&'a Bytes> {
        crate::packet::placeholder_num(self.value).and_then(|n| self.attachments.get(n))
    }

    fn invalid(&self, expected: &dyn de::Expected) -> DataError {
        let unexpected = match self.value {
            Value::Null => de::Unexpected::Unit,
            Value::Bool(b) => de::Unexpected::Bool(*b),
            Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
                (Some(u), _, _) => de::Unexpected::Unsigned(u),
                (_, Some(i), _) => de::Unexpected::Signed(i),
                (_, _, Some(f)) => de::Unexpected::Float(f),
                _ => de::Unexpected::Other("number"),
            },
            Value::String(s) => de::Unexpected::Str(s),
            Value::Array(_) => de::Unexpected::Seq,
            Value::Object(_) => de::Unexpected::Map,
        };
        de::Error::invalid_type(unexpected, expected)
    }
}

struct Seq<'a> {
    items: &'a [Value],
    pos: usize,
    /// How many elements to yield: missing ones are `null`.
    len: usize,
    attachments: &'a [Bytes],
}

impl<'de> de::SeqAccess<'de> for Seq<'_> {
    type Error = DataError;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DataError> {
        if self.pos >= self.len {
            return Ok(None);
        }
        let value = self.items.get(self.pos).unwrap_or(&Value::Null);
        self.pos += 1;
        seed.deserialize(ValueDeserializer {
            value,
            attachments: self.attachments,
        })
        .map(Some)
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.len - self.pos)
    }
}

struct MapAccess<'a> {
    iter: serde_json::map::Iter<'a>,
    value: Option<&'a Value>,
    attachments: &'a [Bytes],
}

impl<'de> de::MapAccess<'de> for MapAccess<'_> {
    type Error = DataError;
    fn next_key_seed<K: de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DataError> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.as_str().into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }
    fn next_value_seed<V: de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, DataError> {
        let value = self
            .value
            .take()
            .ok_or_else(|| DataError::new("a map value without its key"))?;
        seed.deserialize(ValueDeserializer {
            value,
            attachments: self.attachments,
        })
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

/// An enum: `"Variant"` or `{"Variant": content}` (serde's external tagging, as serde_json).
struct Enum<'a> {
    variant: &'a str,
    content: Option<ValueDeserializer<'a>>,
}

impl<'de, 'a> de::EnumAccess<'de> for Enum<'a> {
    type Error = DataError;
    type Variant = VariantDe<'a>;
    fn variant_seed<V: de::DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self::Variant), DataError> {
        let variant = seed.deserialize(self.variant.into_deserializer())?;
        Ok((variant, VariantDe(self.content)))
    }
}

/// An enum variant's content (none for `"Variant"`).
struct VariantDe<'a>(Option<ValueDeserializer<'a>>);

impl<'de> de::VariantAccess<'de> for VariantDe<'_> {
    type Error = DataError;
    fn unit_variant(self) -> Result<(), DataError> {
        match self.0 {
            None => Ok(()),
            Some(d) if d.value.is_null() => Ok(()),
            Some(d) => Err(d.invalid(&"a unit variant")),
        }
    }
    fn newtype_variant_seed<T: de::DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, DataError> {
        match self.0 {
            Some(d) => seed.deserialize(d),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }
    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, DataError> {
        match self.0 {
            Some(d) => de::Deserializer::deserialize_tuple(d, len, visitor),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a tuple variant",
            )),
        }
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DataError> {
        match self.0 {
            Some(d) => de::Deserializer::deserialize_struct(d, "", fields, visitor),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a struct variant",
            )),
        }
    }
}

/// The bytes of an attachment as a sequence of numbers (for a plain `Vec<u8>`).
struct ByteSeq<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'de> de::SeqAccess<'de> for ByteSeq<'_> {
    type Error = DataError;
    fn next_element_seed<T: de::DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DataError> {
        match self.bytes.get(self.pos) {
            Some(b) => {
                self.pos += 1;
                seed.deserialize(IntoDeserializer::<DataError>::into_deserializer(*b))
                    .map(Some)
            }
            None => Ok(None),
        }
    }
    fn size_hint(&self) -> Option<usize> {
        Some(self.bytes.len() - self.pos)
    }
}

impl<'de> de::Deserializer<'de> for ValueDeserializer<'_> {
    type Error = DataError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            Value::Bool(b) => visitor.visit_bool(*b),
            Value::Number(n) => {
                if let Some(u) = n.as_u64() {
                    visitor.visit_u64(u)
                } else if let Some(i) = n.as_i64() {
                    visitor.visit_i64(i)
                } else {
                    visitor.visit_f64(n.as_f64().unwrap_or(f64::NAN))
                }
            }
            Value::String(s) => visitor.visit_str(s),
            Value::Array(items) => visitor.visit_seq(Seq {
                items,
                pos: 0,
                len: items.len(),
                attachments: self.attachments,
            }),
            Value::Object(obj) => visitor.visit_map(MapAccess {
                iter: obj.iter(),
                value: None,
                attachments: self.attachments,
            }),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        map struct identifier ignored_any tuple_struct
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.attachment() {
            Some(bytes) => visitor.visit_bytes(bytes),
            None => self.deserialize_any(visitor),
        }
    }
    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.attachment() {
            Some(bytes) => visitor.visit_byte_buf(bytes.to_vec()),
            None => self.deserialize_any(visitor),
        }
    }
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.attachment() {
            Some(bytes) => visitor.visit_seq(ByteSeq { bytes, pos: 0 }),
            None => self.deserialize_any(visitor),
        }
    }
    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.deserialize_seq(visitor)
    }
    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }
    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DataError> {
        match self.value {
            Value::Null => visitor.visit_unit(),
            _ => Err(self.invalid(&visitor)),
        }
    }
    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        self.deserialize_unit(visitor)
    }
    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DataError> {
        visitor.visit_newtype_struct(self)
    }
    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DataError> {
        match self.value {
            Value::String(s) => visitor.visit_enum(Enum {
                variant: s,
                content: None,
            }),
            Value::Object(obj) if obj.len() == 1 => {
                let Some((k, v)) = obj.iter().next() else {
                    return Err(self.invalid(&"an enum"));
                };
                visitor.visit_enum(Enum {
                    variant: k,
                    content: Some(self.child(v)),
                })
            }
            _ => Err(self.invalid(&"an enum (a string or an object with one key)")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct File {
        name: String,
        #[serde(with = "bytes_as_serde_bytes")]
        data: Vec<u8>,
        blob: Bytes,
    }

    /// `#[serde(with = "serde_bytes")]` without the crate.
    mod bytes_as_serde_bytes {
        pub(super) fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(v)
        }
        pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<u8>, D::Error> {
            let b: bytes::Bytes = serde::Deserialize::deserialize(d)?;
            Ok(b.to_vec())
        }
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    enum Kind {
        Plain,
        Wrapped(u8),
        Pair(u8, String),
        Named { x: i32 },
    }

    #[test]
    fn tuples_are_argument_lists_and_other_values_one_argument() {
        assert_eq!(to_payload(&()).unwrap().args, Vec::<Value>::new());
        assert_eq!(to_payload(&&()).unwrap().args, Vec::<Value>::new());
        assert_eq!(to_payload(&Value::Null).unwrap().args, vec![json!(null)]);
        assert_eq!(to_payload(&()).unwrap().attachments, Vec::<Bytes>::new());
        assert_eq!(
            to_payload(&("a", 1)).unwrap().args,
            vec![json!("a"), json!(1)]
        );
        assert_eq!(to_payload(&(5,)).unwrap().args, vec![json!(5)]);
        assert_eq!(to_payload(&vec![1, 2]).unwrap().args, vec![json!([1, 2])]);
        assert_eq!(to_payload("s").unwrap().args, vec![json!("s")]);
        assert_eq!(to_payload(&json!([1])).unwrap().args, vec![json!([1])]);
        assert_eq!(to_payload(&None::<u8>).unwrap().args, vec![json!(null)]);
        assert_eq!(
            to_payload(&(Kind::Plain, Kind::Wrapped(1), Kind::Pair(2, "x".into())))
                .unwrap()
                .args,
            vec![
                json!("Plain"),
                json!({"Wrapped": 1}),
                json!({"Pair": [2, "x"]})
            ]
        );
        assert_eq!(
            to_payload(&Kind::Named { x: -1 }).unwrap().args,
            vec![json!({"Named": {"x": -1}})]
        );
        assert_eq!(
            to_payload(&f64::NAN).unwrap().args,
            vec![json!(null)],
            "as JSON.stringify"
        );
        let mut map = std::collections::BTreeMap::new();
        map.insert(3, "three");
        assert_eq!(to_payload(&map).unwrap().args, vec![json!({"3": "three"})]);
        let mut bad = std::collections::BTreeMap::new();
        bad.insert(vec![1], 1);
        assert!(to_payload(&bad).is_err(), "a sequence as a map key");
    }

    #[test]
    fn bytes_become_attachments_in_order_and_come_back() {
        let file = File {
            name: "f".into(),
            data: vec![1, 2],
            blob: Bytes::from_static(b"\xff"),
        };
        let p = to_payload(&(&file, Bytes::from_static(b"z"))).unwrap();
        assert_eq!(
            p.args,
            vec![
                json!({"name": "f", "data": Payload::placeholder(0), "blob": Payload::placeholder(1)}),
                Payload::placeholder(2)
            ]
        );
        assert_eq!(
            p.attachments,
            vec![
                Bytes::from_static(b"\x01\x02"),
                Bytes::from_static(b"\xff"),
                Bytes::from_static(b"z")
            ]
        );
        let (back, z): (File, Bytes) = FromPayload::from_payload(p.clone()).unwrap();
        assert_eq!(back, file);
        assert_eq!(&z[..], b"z");
        // A plain Vec<u8> takes an attachment's bytes, or a JSON array of numbers.
        let (a, b): (Vec<u8>, Vec<u8>) = FromPayload::from_payload(Payload::with_attachments(
            vec![json!([7, 8]), Payload::placeholder(0)],
            vec![Bytes::from_static(b"\x05")],
        ))
        .unwrap();
        assert_eq!((a, b), (vec![7, 8], vec![5]));
        let v: Vec<u8> = FromPayload::from_payload(Payload::binary(vec![9u8, 9])).unwrap();
        assert_eq!(v, vec![9, 9]);
        // A Value keeps the placeholder.
        let raw: Value = FromPayload::from_payload(p.clone()).unwrap();
        assert_eq!(raw["data"], Payload::placeholder(0));
        // A payload serializes back to itself (attachments renumbered in order of appearance).
        let again = to_payload(&p).unwrap();
        assert_eq!(again, p);
        let swapped = Payload::with_attachments(
            vec![Payload::placeholder(1), Payload::placeholder(0)],
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        );
        let renumbered = to_payload(&swapped).unwrap();
        assert_eq!(
            renumbered.args,
            vec![Payload::placeholder(0), Payload::placeholder(1)]
        );
        assert_eq!(
            renumbered.attachments,
            vec![Bytes::from_static(b"b"), Bytes::from_static(b"a")]
        );
    }

    #[test]
    fn receiving_tuples_pads_with_null_and_ignores_extras() {
        let p = Payload::new(vec![json!("a")]);
        let (a, b): (String, Option<u32>) = FromPayload::from_payload(p.clone()).unwrap();
        assert_eq!((a.as_str(), b), ("a", None));
        let p3 = Payload::new(vec![json!(1), json!(2), json!(3)]);
        let (x,): (u8,) = FromPayload::from_payload(p3.clone()).unwrap();
        assert_eq!(x, 1);
        let first: u8 = FromPayload::from_payload(p3.clone()).unwrap();
        assert_eq!(first, 1);
        let () = FromPayload::from_payload(p3).unwrap();
        let none: Option<String> = FromPayload::from_payload(Payload::empty()).unwrap();
        assert_eq!(none, None);
        let kinds: (Kind, Kind, Kind, Kind) = FromPayload::from_payload(Payload::new(vec![
            json!("Plain"),
            json!({"Wrapped": 1}),
            json!({"Pair": [2, "x"]}),
            json!({"Named": {"x": -1}}),
        ]))
        .unwrap();
        assert_eq!(
            kinds,
            (
                Kind::Plain,
                Kind::Wrapped(1),
                Kind::Pair(2, "x".into()),
                Kind::Named { x: -1 }
            )
        );
    }

    #[test]
    fn mismatches_are_errors_not_panics() {
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Msg {
            room: String,
            text: String,
        }
        let bad = [
            json!(null),
            json!(1),
            json!("x"),
            json!([1, 2]),
            json!({"room": 1, "text": "t"}),
            json!({"room": "r"}),
            Payload::placeholder(0),
        ];
        for arg in bad {
            let err = <Msg as FromPayload>::from_payload(Payload::new(vec![arg.clone()]))
                .expect_err(&arg.to_string());
            assert!(!err.message().is_empty());
        }
        assert!(<u8 as FromPayload>::from_payload(Payload::new(vec![json!(300)])).is_err());
        assert!(
            <Kind as FromPayload>::from_payload(Payload::new(vec![json!({"A": 1, "B": 2})]))
                .is_err()
        );
        assert!(<Bytes as FromPayload>::from_payload(Payload::new(vec![json!(true)])).is_err());
        let TryData(wrapped): TryData<u8> =
            FromPayload::from_payload(Payload::new(vec![json!("no")])).unwrap();
        assert!(wrapped.is_err());
        let raw = Payload::new(vec![json!(1)]);
        assert_eq!(
            <Payload as FromPayload>::from_payload(raw.clone()).unwrap(),
            raw
        );
    }
}
