//! `volley_socketio::packet::decode` on arbitrary text with the default limits. Nothing may
//! panic, and:
//!
//! - a binary packet (`Decoded::Partial`) takes exactly the announced number of attachments
//!   (fed from the input) and `remaining()` counts down to 0;
//! - a complete packet re-encodes to text (+ attachments) that decodes again to the same packet,
//!   up to the numbering of the placeholders (the encoder numbers them in document order), and
//!   encoding is idempotent: encoding the re-decoded packet gives the same text and attachments.
//!
//! Input layout: the bytes up to the first 0x00 are the text packet (lossy UTF-8); every
//! following 0x00-separated chunk is one binary attachment.

#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use volley_socketio::packet::{Decoded, Limits, Packet, decode, placeholder_num};

/// Decodes `text` and feeds it `attachments` (at most as many as it needs); `None` when the text
/// is rejected or the attachments run out first.
fn decode_with(text: &str, attachments: &mut dyn Iterator<Item = Bytes>) -> Option<Packet> {
    match decode(text, &Limits::default()) {
        Err(e) => {
            assert!(!e.to_string().is_empty());
            None
        }
        Ok(Decoded::Complete(packet)) => {
            assert!(
                !packet.kind.is_binary(),
                "complete binary packet {packet:?}"
            );
            assert!(packet.attachments.is_empty());
            Some(packet)
        }
        Ok(Decoded::Partial(mut partial)) => {
            let expected = partial.remaining();
            assert!((1..=Limits::default().max_attachments).contains(&expected));
            for (i, attachment) in attachments.enumerate() {
                assert_eq!(partial.remaining(), expected - i);
                if let Some(packet) = partial.push(attachment) {
                    assert_eq!(i + 1, expected);
                    assert_eq!(partial.remaining(), 0);
                    assert_eq!(packet.attachments.len(), expected);
                    assert!(packet.kind.is_binary());
                    return Some(packet);
                }
            }
            None
        }
    }
}

/// The attachments in the order their placeholders appear in the data.
fn resolved(packet: &Packet) -> Vec<Bytes> {
    fn walk(value: &Value, packet: &Packet, out: &mut Vec<Bytes>) {
        if placeholder_num(value).is_some() {
            out.push(
                packet
                    .attachment(value)
                    .expect("placeholder resolves")
                    .clone(),
            );
            return;
        }
        match value {
            Value::Array(items) => items.iter().for_each(|v| walk(v, packet, out)),
            Value::Object(obj) => obj.values().for_each(|v| walk(v, packet, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Some(data) = &packet.data {
        walk(data, packet, &mut out);
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let mut chunks = input.split(|&b| b == 0);
    let text = String::from_utf8_lossy(chunks.next().unwrap_or_default());
    let mut attachments = chunks.map(Bytes::copy_from_slice);
    let Some(packet) = decode_with(&text, &mut attachments) else {
        return;
    };

    let (text1, bins1) = packet.encode();
    let again = decode_with(&text1, &mut bins1.clone().into_iter())
        .unwrap_or_else(|| panic!("re-encoded packet does not decode: {text1:?} from {packet:?}"));
    assert_eq!(
        (again.kind, &again.nsp, again.id),
        (packet.kind, &packet.nsp, packet.id)
    );
    assert_eq!(resolved(&again), resolved(&packet), "{text1:?}");
    if again.data == packet.data {
        // Nothing was renumbered (placeholders already in document order): the attachments
        // must come back in the same order too. (Comparing the attachment lists instead is
        // wrong when two attachments hold the same bytes and were swapped.)
        assert_eq!(again, packet, "{text1:?}");
    }
    let (text2, bins2) = again.encode();
    assert_eq!(text2, text1);
    assert_eq!(bins2, bins1);
});
