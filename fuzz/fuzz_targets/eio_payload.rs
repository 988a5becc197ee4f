//! The Engine.IO v4 codec (`volley_engineio::packet`) on arbitrary input. Nothing may panic, and:
//!
//! - `decode_payload` on the raw bytes: when it succeeds, `encode_payload` of the packets decodes
//!   back to the same packets (text is re-encoded as is, binary as canonical padded base64), and
//!   encoding that again gives the same payload;
//! - `decode_text` on the input as UTF-8 (when it is): when it succeeds, the packet's text form
//!   decodes back to the same packet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use volley_engineio::packet::{Packet, decode_payload, decode_text, encode_payload};

fn payload(packets: &[Packet]) -> String {
    let mut out = String::new();
    encode_payload(packets, &mut out);
    out
}

fuzz_target!(|input: &[u8]| {
    if let Ok(packets) = decode_payload(input) {
        assert!(!packets.is_empty());
        let encoded = payload(&packets);
        let again = decode_payload(encoded.as_bytes())
            .unwrap_or_else(|e| panic!("re-encoded payload {encoded:?} does not decode: {e}"));
        assert_eq!(again, packets, "{encoded:?}");
        assert_eq!(payload(&again), encoded);
    }

    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(packet) = decode_text(text) {
            let mut encoded = String::new();
            packet.encode_text(&mut encoded);
            let again = decode_text(&encoded)
                .unwrap_or_else(|e| panic!("re-encoded packet {encoded:?} does not decode: {e}"));
            assert_eq!(again, packet, "{encoded:?}");
        }
    }
});
