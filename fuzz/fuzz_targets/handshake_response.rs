//! `ClientHandshake::parse_response` on arbitrary bytes. Nothing may panic, and an accepted
//! response used at most the bytes given, selected an offered subprotocol (or none), and parses
//! the same from exactly those bytes.
//!
//! The key is random, so the fuzzer could never guess the accept value: the placeholder `ACCEPT`
//! in the input is replaced with the right one (see `fuzz/dict/handshake.dict`).

#![no_main]

use http::{HeaderMap, Uri};
use libfuzzer_sys::fuzz_target;
use volley_proto::handshake::{ClientHandshake, HeaderLimits, accept_key};

fn key_of(request: &[u8]) -> Vec<u8> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut req = httparse::Request::new(&mut headers);
    assert!(req.parse(request).unwrap().is_complete());
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"))
        .unwrap()
        .value
        .to_vec()
}

fn replace_all(data: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(data[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let uri: Uri = "ws://example.com:8080/chat".parse().unwrap();
    let offered = ["chat".to_owned(), "superchat".to_owned()];
    let hs = ClientHandshake::new(&uri, &offered, &HeaderMap::new()).unwrap();
    let accept = accept_key(&key_of(hs.request()));
    let data = replace_all(data, b"ACCEPT", accept.as_bytes());
    let limits = HeaderLimits::default();
    match hs.parse_response(&data, &limits) {
        Ok(Some((resp, len))) => {
            assert!(len <= data.len() && len <= limits.max_bytes);
            assert_eq!(resp.response.status(), 101);
            if let Some(p) = &resp.protocol {
                assert!(offered.contains(p));
            }
            let again = hs.parse_response(&data[..len], &limits).unwrap().unwrap();
            assert_eq!((again.0.protocol, again.1), (resp.protocol, len));
        }
        Ok(None) => assert!(data.len() <= limits.max_bytes),
        Err(_) => {}
    }
});
