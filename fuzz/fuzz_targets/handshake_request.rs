//! `UpgradeRequest::parse` on arbitrary bytes. Nothing may panic, and:
//!
//! - a parsed request used at most the bytes given, and parses the same from exactly those bytes;
//! - `accept()` produces a `101` response that httparse reads completely, with the right
//!   `Sec-WebSocket-Accept`, and that a matching client accepts;
//! - a rejection's `response()` is a well-formed HTTP response with the error's status;
//! - the extension and subprotocol parsers never panic on the input as a header value.

#![no_main]

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use volley_proto::handshake::{
    HeaderLimits, UpgradeRequest, accept_key, parse_extensions, parse_subprotocols,
};

/// Parses a response's head: its status, its headers, and the length of the body after it.
fn parse_response(bytes: &[u8]) -> (u16, Vec<(String, Vec<u8>)>, usize) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => len,
        other => panic!(
            "response does not parse: {other:?}\n{}",
            String::from_utf8_lossy(bytes)
        ),
    };
    let code = resp.code.unwrap();
    let headers = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    (code, headers, bytes.len() - len)
}

fuzz_target!(|data: &[u8]| {
    let limits = HeaderLimits::default();
    match UpgradeRequest::parse(data, &limits) {
        Ok(Some((req, len))) => {
            assert!(len <= data.len() && len <= limits.max_bytes);
            let again = UpgradeRequest::parse(&data[..len], &limits)
                .expect("the same bytes parse again")
                .expect("complete");
            assert_eq!(again.1, len);
            let protocol = req.protocols().first().map(String::as_str);
            let resp = req.accept(protocol, &HeaderMap::new());
            let (code, headers, body) = parse_response(&resp);
            assert_eq!((code, body), (101, 0));
            let key = req.request().headers()["sec-websocket-key"]
                .as_bytes()
                .trim_ascii();
            let accept: Vec<&[u8]> = headers
                .iter()
                .filter(|(n, _)| n == "sec-websocket-accept")
                .map(|(_, v)| v.as_slice())
                .collect();
            assert_eq!(accept, [accept_key(key).as_bytes()]);
            assert_eq!(req.accept_key(), accept_key(key));
        }
        Ok(None) => assert!(data.len() <= limits.max_bytes),
        Err(e) => {
            let resp = e.response();
            let (code, headers, body) = parse_response(&resp);
            assert_eq!(code, e.status().as_u16());
            assert!(code >= 400);
            let content_length = headers
                .iter()
                .find(|(n, _)| n == "content-length")
                .map(|(_, v)| String::from_utf8_lossy(v).parse::<usize>().unwrap());
            assert_eq!(content_length, Some(body));
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(data) {
        let mut map = HeaderMap::new();
        map.insert(http::header::SEC_WEBSOCKET_EXTENSIONS, value.clone());
        map.insert(http::header::SEC_WEBSOCKET_PROTOCOL, value);
        if let Ok(exts) = parse_extensions(&map) {
            for ext in exts {
                assert!(!ext.name.is_empty());
                for (k, v) in &ext.params {
                    assert!(!k.is_empty());
                    assert!(v.as_ref().is_none_or(|v| !v.is_empty()));
                }
            }
        }
        if let Ok(protocols) = parse_subprotocols(&map) {
            assert!(
                protocols
                    .iter()
                    .all(|p| !p.is_empty() && !p.contains([',', ' ']))
            );
        }
    }
});
