//! Event arguments with their binary attachments.

use bytes::Bytes;
use serde_json::Value;

/// The arguments of an event or an acknowledgement, with their binary attachments.
///
/// Binary arguments travel as attachments: `args` holds a placeholder
/// `{"_placeholder":true,"num":i}` (see [`Payload::placeholder`]) where the `i`-th attachment
/// belongs. Received payloads keep the placeholders as they came; [`Payload::binary`] resolves one.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Payload {
    /// The JSON arguments (without the event name).
    pub args: Vec<Value>,
    /// The binary attachments referenced by placeholders in `args`.
    pub attachments: Vec<Bytes>,
}

impl Payload {
    /// A payload of JSON arguments without attachments.
    pub fn new(args: Vec<Value>) -> Self {
        Payload {
            args,
            attachments: Vec::new(),
        }
    }

    /// A payload without arguments.
    pub fn empty() -> Self {
        Payload::default()
    }

    /// A payload of JSON arguments and the attachments their placeholders refer to.
    pub fn with_attachments(args: Vec<Value>, attachments: Vec<Bytes>) -> Self {
        Payload { args, attachments }
    }

    /// A payload whose only argument is one binary blob (sent as a BINARY_EVENT/BINARY_ACK).
    pub fn binary(data: impl Into<Bytes>) -> Self {
        Payload {
            args: vec![Payload::placeholder(0)],
            attachments: vec![data.into()],
        }
    }

    /// The placeholder object standing for attachment `num` inside `args`.
    pub fn placeholder(num: usize) -> Value {
        serde_json::json!({ "_placeholder": true, "num": num })
    }

    /// The attachment that `value` stands for, if `value` is a placeholder with a valid index.
    pub fn resolve(&self, value: &Value) -> Option<&Bytes> {
        let obj = value.as_object()?;
        if obj.get("_placeholder")?.as_bool()? {
            let num = obj.get("num")?.as_u64()?;
            self.attachments.get(usize::try_from(num).ok()?)
        } else {
            None
        }
    }

    /// The first argument, if any.
    pub fn first(&self) -> Option<&Value> {
        self.args.first()
    }
}

impl From<Vec<Value>> for Payload {
    fn from(args: Vec<Value>) -> Self {
        Payload::new(args)
    }
}

impl From<Value> for Payload {
    /// One argument.
    fn from(arg: Value) -> Self {
        Payload::new(vec![arg])
    }
}

impl From<()> for Payload {
    /// No arguments.
    fn from(_: ()) -> Self {
        Payload::empty()
    }
}

impl From<&str> for Payload {
    /// One string argument.
    fn from(arg: &str) -> Self {
        Payload::new(vec![Value::String(arg.to_owned())])
    }
}

impl From<String> for Payload {
    /// One string argument.
    fn from(arg: String) -> Self {
        Payload::new(vec![Value::String(arg)])
    }
}

impl From<Bytes> for Payload {
    /// One binary argument.
    fn from(data: Bytes) -> Self {
        Payload::binary(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn placeholders_resolve_to_their_attachment() {
        let p = Payload::with_attachments(
            vec![
                json!("text"),
                Payload::placeholder(1),
                Payload::placeholder(0),
                json!({"_placeholder": true, "num": 2}),
                json!({"_placeholder": true, "num": "0"}),
                json!({"_placeholder": false, "num": 0}),
            ],
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")],
        );
        assert_eq!(p.resolve(&p.args[0]), None);
        assert_eq!(p.resolve(&p.args[1]).map(|b| &b[..]), Some(&b"b"[..]));
        assert_eq!(p.resolve(&p.args[2]).map(|b| &b[..]), Some(&b"a"[..]));
        assert_eq!(p.resolve(&p.args[3]), None, "index out of range");
        assert_eq!(p.resolve(&p.args[4]), None, "non-numeric num");
        assert_eq!(p.resolve(&p.args[5]), None, "not a placeholder");
        let bin = Payload::from(Bytes::from_static(b"\x00\x01"));
        assert_eq!(bin.args, vec![Payload::placeholder(0)]);
        assert_eq!(
            bin.resolve(bin.first().unwrap()).unwrap().as_ref(),
            b"\x00\x01"
        );
        assert_eq!(Payload::from(()).args.len(), 0);
        assert_eq!(Payload::from("x").args, vec![json!("x")]);
        assert_eq!(Payload::from(json!([1, 2])).args, vec![json!([1, 2])]);
    }
}
