//! The opening handshake (RFC 6455 §4) in both roles.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, StatusCode, Uri};
use volley_proto::handshake::{
    ClientHandshake, Extension, HandshakeError, HeaderLimits, UpgradeRequest, accept_key,
    parse_extensions, parse_subprotocols,
};

/// The example key and accept value from RFC 6455 §1.3.
const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

fn limits() -> HeaderLimits {
    HeaderLimits::default()
}

/// A request line and header lines joined into a request.
fn request(first_line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{first_line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const GOOD_HEADERS: [&str; 5] = [
    "Host: server.example.com",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    "Sec-WebSocket-Version: 13",
];

/// The good request with the header whose name starts with `drop` removed and `add` appended.
fn request_with(drop: &[&str], add: &[&str]) -> Vec<u8> {
    let mut headers: Vec<&str> = GOOD_HEADERS
        .iter()
        .copied()
        .filter(|h| !drop.iter().any(|d| h.starts_with(d)))
        .collect();
    headers.extend_from_slice(add);
    request("GET /chat HTTP/1.1", &headers)
}

fn parse(buf: &[u8]) -> Result<Option<(UpgradeRequest, usize)>, HandshakeError> {
    UpgradeRequest::parse(buf, &limits())
}

fn parse_ok(buf: &[u8]) -> UpgradeRequest {
    let (req, len) = parse(buf).expect("valid").expect("complete");
    assert_eq!(len, buf.len());
    req
}

/// Asserts `buf` is rejected with `err`, and that the error response is well-formed HTTP with
/// `status` and (if given) the header `extra`.
fn rejects(buf: &[u8], err: HandshakeError, status: u16, extra: Option<(&str, &str)>) {
    let got = parse(buf).err();
    assert_eq!(got.as_ref(), Some(&err), "{}", String::from_utf8_lossy(buf));
    check_error_response(&err, status, extra);
}

fn check_error_response(err: &HandshakeError, status: u16, extra: Option<(&str, &str)>) {
    assert_eq!(err.status(), StatusCode::from_u16(status).unwrap());
    let bytes = err.response();
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(&bytes).unwrap() {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => panic!("incomplete error response"),
    };
    assert_eq!(resp.code, Some(status));
    let header = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| std::str::from_utf8(h.value).unwrap().to_owned())
    };
    let body_len: usize = header("Content-Length").unwrap().parse().unwrap();
    assert_eq!(
        body_len,
        bytes.len() - len,
        "Content-Length matches the body"
    );
    assert_eq!(header("Connection").as_deref(), Some("close"));
    if let Some((name, value)) = extra {
        assert_eq!(header(name).as_deref(), Some(value), "{name} in {err:?}");
    }
}

fn header_map(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, HeaderValue::from_str(value).unwrap());
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Server side: accepting
// ---------------------------------------------------------------------------------------------

#[test]
fn rfc_example_key_gives_the_rfc_accept() {
    assert_eq!(accept_key(RFC_KEY.as_bytes()), RFC_ACCEPT);
    let req = parse_ok(&request_with(&[], &[]));
    assert_eq!(req.accept_key(), RFC_ACCEPT);
    assert_eq!(req.request().method(), http::Method::GET);
    assert_eq!(req.request().uri().path(), "/chat");
    assert_eq!(req.protocols(), [] as [String; 0]);
    assert_eq!(req.extensions(), []);
}

#[test]
fn accept_builds_a_valid_101_response() {
    let req = parse_ok(&request_with(
        &[],
        &["Sec-WebSocket-Protocol: chat, superchat"],
    ));
    assert_eq!(req.protocols(), ["chat", "superchat"]);
    let extra = header_map(&[("server", "volley"), ("x-trace", "abc")]);
    let resp = req.accept(Some("chat"), &extra);
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    assert_eq!(
        parsed.parse(&resp).unwrap(),
        httparse::Status::Complete(resp.len())
    );
    assert_eq!(parsed.code, Some(101));
    assert_eq!(parsed.version, Some(1));
    let get = |name: &str| -> Vec<&[u8]> {
        parsed
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
            .collect()
    };
    assert_eq!(get("Upgrade"), [b"websocket"]);
    assert_eq!(get("Connection"), [b"Upgrade"]);
    assert_eq!(get("Sec-WebSocket-Accept"), [RFC_ACCEPT.as_bytes()]);
    assert_eq!(get("Sec-WebSocket-Protocol"), [b"chat"]);
    assert_eq!(get("Server"), [b"volley"]);
    assert_eq!(get("X-Trace"), [b"abc"]);

    let plain = req.accept(None, &HeaderMap::new());
    assert!(
        !String::from_utf8(plain)
            .unwrap()
            .to_ascii_lowercase()
            .contains("sec-websocket-protocol")
    );
}

#[test]
fn path_and_query_are_kept() {
    let buf = request("GET /chat/room?id=42&x=y HTTP/1.1", &GOOD_HEADERS);
    let req = parse_ok(&buf);
    assert_eq!(req.request().uri().path(), "/chat/room");
    assert_eq!(req.request().uri().query(), Some("id=42&x=y"));
    assert_eq!(
        req.request().headers()["host"],
        HeaderValue::from_static("server.example.com")
    );
}

#[test]
fn upgrade_and_connection_tokens_are_case_insensitive_lists() {
    for (upgrade, connection) in [
        ("Upgrade: WebSocket", "Connection: keep-alive, Upgrade"),
        ("upgrade: WEBSOCKET", "connection: upgrade"),
        ("Upgrade: h2c, websocket", "Connection: Upgrade,keep-alive"),
        ("Upgrade:websocket", "Connection:   keep-alive ,  UPGRADE  "),
    ] {
        let buf = request_with(&["Upgrade", "Connection"], &[upgrade, connection]);
        let req = parse_ok(&buf);
        assert_eq!(req.accept_key(), RFC_ACCEPT, "{upgrade} / {connection}");
    }
    // The Connection token may also come in a separate header line.
    let buf = request_with(
        &["Connection"],
        &["Connection: keep-alive", "Connection: Upgrade"],
    );
    parse_ok(&buf);
}

#[test]
fn key_and_version_may_have_surrounding_whitespace() {
    let buf = request_with(
        &["Sec-WebSocket-Key", "Sec-WebSocket-Version"],
        &[
            "Sec-WebSocket-Key:    dGhlIHNhbXBsZSBub25jZQ==   ",
            "Sec-WebSocket-Version:  13 ",
        ],
    );
    assert_eq!(parse_ok(&buf).accept_key(), RFC_ACCEPT);
}

#[test]
fn incomplete_request_needs_more_bytes() {
    let buf = request_with(&[], &[]);
    for cut in 0..buf.len() {
        assert!(
            matches!(parse(&buf[..cut]), Ok(None)),
            "prefix of {cut} bytes"
        );
    }
    parse_ok(&buf);
}

#[test]
fn bytes_after_the_request_are_left_over() {
    let buf = request_with(&[], &[]);
    let mut with_frames = buf.clone();
    with_frames.extend_from_slice(&[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let (_, len) = parse(&with_frames).unwrap().unwrap();
    assert_eq!(len, buf.len());
    assert_eq!(
        &with_frames[len..],
        &[0x81, 0x85, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    );
}

#[test]
fn from_request_validates_a_request_parsed_elsewhere() {
    let mut builder = http::Request::builder().method("GET").uri("/ws");
    for h in GOOD_HEADERS {
        let (name, value) = h.split_once(": ").unwrap();
        builder = builder.header(name, value);
    }
    let req = UpgradeRequest::from_request(builder.body(()).unwrap()).unwrap();
    assert_eq!(req.accept_key(), RFC_ACCEPT);

    let http10 = http::Request::builder()
        .method("GET")
        .version(http::Version::HTTP_10)
        .body(())
        .unwrap();
    assert_eq!(
        UpgradeRequest::from_request(http10).err(),
        Some(HandshakeError::HttpVersion)
    );
}

// ---------------------------------------------------------------------------------------------
// Server side: rejecting
// ---------------------------------------------------------------------------------------------

#[test]
fn post_is_rejected_with_405_and_allow_get() {
    let buf = request("POST /chat HTTP/1.1", &GOOD_HEADERS);
    rejects(
        &buf,
        HandshakeError::MethodNotAllowed("POST".into()),
        405,
        Some(("Allow", "GET")),
    );
    let buf = request("PUT /chat HTTP/1.1", &GOOD_HEADERS);
    rejects(
        &buf,
        HandshakeError::MethodNotAllowed("PUT".into()),
        405,
        Some(("Allow", "GET")),
    );
}

#[test]
fn wrong_or_missing_version_is_rejected_with_426() {
    for add in [
        &["Sec-WebSocket-Version: 8"][..],
        &["Sec-WebSocket-Version: 12"],
        &["Sec-WebSocket-Version: 13, 8"],
        &["Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 13"],
        &[],
    ] {
        let buf = request_with(&["Sec-WebSocket-Version"], add);
        rejects(
            &buf,
            HandshakeError::UnsupportedVersion,
            426,
            Some(("Sec-WebSocket-Version", "13")),
        );
    }
}

#[test]
fn missing_host_is_rejected_with_400() {
    rejects(
        &request_with(&["Host"], &[]),
        HandshakeError::MissingHost,
        400,
        None,
    );
}

#[test]
fn missing_upgrade_is_rejected_with_400() {
    for add in [
        &[][..],
        &["Upgrade: h2c"],
        &["Upgrade: websocket2"],
        &["Upgrade: "],
    ] {
        rejects(
            &request_with(&["Upgrade"], add),
            HandshakeError::MissingUpgrade,
            400,
            None,
        );
    }
}

#[test]
fn missing_connection_upgrade_is_rejected_with_400() {
    for add in [
        &[][..],
        &["Connection: keep-alive"],
        &["Connection: close"],
        &["Connection: upgraded"],
    ] {
        rejects(
            &request_with(&["Connection"], add),
            HandshakeError::MissingConnectionUpgrade,
            400,
            None,
        );
    }
}

#[test]
fn bad_key_is_rejected_with_400() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let fifteen = format!("Sec-WebSocket-Key: {}", b64.encode([7u8; 15]));
    let seventeen = format!("Sec-WebSocket-Key: {}", b64.encode([7u8; 17]));
    for add in [
        &[][..],
        &["Sec-WebSocket-Key: not base64 at all!"],
        &["Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ"], // missing padding
        &[fifteen.as_str()],
        &[seventeen.as_str()],
        &["Sec-WebSocket-Key: "],
        &[
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ],
    ] {
        rejects(
            &request_with(&["Sec-WebSocket-Key"], add),
            HandshakeError::InvalidKey,
            400,
            None,
        );
    }
}

#[test]
fn http_1_0_is_rejected_with_400() {
    rejects(
        &request("GET /chat HTTP/1.0", &GOOD_HEADERS),
        HandshakeError::HttpVersion,
        400,
        None,
    );
}

#[test]
fn malformed_http_is_rejected_with_400() {
    for buf in [
        &b"\x00\x01\x02garbage\r\n\r\n"[..],
        b"GET /chat HTTP/1.1\r\nBad Header Name: x\r\n\r\n",
        b"GET /chat HTTP/2.0\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", // a TLS ClientHello
    ] {
        match parse(buf) {
            Err(e @ HandshakeError::Malformed(_)) => check_error_response(&e, 400, None),
            other => panic!("{buf:?}: {other:?}"),
        }
    }
}

#[test]
fn header_block_over_8_kib_is_rejected_with_431() {
    let big = format!("X-Big: {}", "a".repeat(8 * 1024));
    rejects(
        &request_with(&[], &[&big]),
        HandshakeError::HeadersTooLarge(8192),
        431,
        None,
    );
    // Just under the limit is fine.
    let base = request_with(&[], &[]).len();
    let fill = format!("X-Fill: {}", "a".repeat(8192 - base - "X-Fill: \r\n".len()));
    let buf = request_with(&[], &[&fill]);
    assert_eq!(buf.len(), 8192);
    parse_ok(&buf);
}

#[test]
fn never_ending_header_line_is_rejected_with_431_while_partial() {
    let mut buf = b"GET /chat HTTP/1.1\r\nHost: x\r\nX-Endless: ".to_vec();
    while buf.len() <= 8192 {
        assert!(matches!(parse(&buf), Ok(None)), "at {} bytes", buf.len());
        buf.extend_from_slice(&[b'a'; 512]);
    }
    let err = parse(&buf).unwrap_err();
    assert_eq!(err, HandshakeError::HeadersTooLarge(8192));
    check_error_response(&err, 431, None);
    // A never-ending request line, likewise.
    let mut line = b"GET /".to_vec();
    line.extend_from_slice(&[b'a'; 9000]);
    assert_eq!(
        parse(&line).err(),
        Some(HandshakeError::HeadersTooLarge(8192))
    );
}

#[test]
fn more_than_128_headers_is_rejected_with_431() {
    let extra: Vec<String> = (0..124).map(|i| format!("X-H{i}: v")).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    // 5 + 123 = 128: accepted.
    parse_ok(&request_with(&[], &extra[..123]));
    // 5 + 124 = 129: rejected.
    rejects(
        &request_with(&[], &extra),
        HandshakeError::TooManyHeaders(128),
        431,
        None,
    );
}

#[test]
fn header_limits_are_configurable() {
    let buf = request_with(&[], &["X-A: 1", "X-B: 2"]);
    let strict = HeaderLimits::default().max_headers(6);
    assert_eq!(
        UpgradeRequest::parse(&buf, &strict).err(),
        Some(HandshakeError::TooManyHeaders(6))
    );
    let small = HeaderLimits::default().max_bytes(100);
    assert_eq!(
        UpgradeRequest::parse(&buf, &small).err(),
        Some(HandshakeError::HeadersTooLarge(100))
    );
    assert!(
        UpgradeRequest::parse(&buf, &HeaderLimits::default().max_headers(7))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_parsed_request_is_built_with_every_header_in_order_when_asked_for() {
    let buf = request_with(
        &[],
        &[
            "X-Trace: a",
            "x-trace: b",
            "Cookie: k=v; other=w",
            "Sec-WebSocket-Protocol: chat",
        ],
    );
    let mut req = parse_ok(&buf);
    // Validated without building the request: the key and the offers are there already.
    assert_eq!(req.accept_key(), RFC_ACCEPT);
    assert_eq!(req.protocols(), ["chat"]);
    let built = req.request();
    assert_eq!(built.method(), http::Method::GET);
    assert_eq!(built.uri(), "/chat");
    assert_eq!(built.version(), http::Version::HTTP_11);
    assert_eq!(built.headers().len(), 9);
    let traces: Vec<_> = built.headers().get_all("x-trace").iter().collect();
    assert_eq!(traces, ["a", "b"]);
    assert_eq!(built.headers()["cookie"], "k=v; other=w");
    assert_eq!(built.headers()["host"], "server.example.com");
    // Taken out, it is the same request; asked for again, it is built anew from the bytes.
    let taken = req.take_request();
    assert_eq!(taken.headers(), req.request().headers());
    assert_eq!(taken.uri(), req.request().uri());
    // The response does not depend on the request having been built.
    assert!(
        String::from_utf8(req.accept(None, &HeaderMap::new()))
            .expect("ASCII")
            .contains(&format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n"))
    );
}

#[test]
fn more_header_lines_than_fit_on_the_stack_are_parsed_and_built_when_allowed() {
    let extra: Vec<String> = (0..200).map(|i| format!("X-H{i}: {i}")).collect();
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let buf = request_with(&[], &extra);
    let limits = HeaderLimits::default()
        .max_headers(300)
        .max_bytes(64 * 1024);
    let (req, _) = UpgradeRequest::parse(&buf, &limits)
        .expect("valid")
        .expect("complete");
    assert_eq!(req.request().headers().len(), 205);
    assert_eq!(req.request().headers()["x-h199"], "199");
}

#[test]
fn a_request_from_an_http_stack_keeps_its_headers_and_extensions() {
    let mut request = http::Request::get("/x?y=1")
        .header("host", "h")
        .header("upgrade", "websocket")
        .header("connection", "upgrade")
        .header("sec-websocket-key", RFC_KEY)
        .header("sec-websocket-version", "13")
        .body(())
        .expect("request");
    request.extensions_mut().insert(7u32);
    let mut req = UpgradeRequest::from_request(request).expect("valid");
    assert_eq!(req.request().extensions().get::<u32>(), Some(&7));
    let taken = req.take_request();
    assert_eq!(taken.headers().len(), 5);
    assert_eq!(taken.extensions().get::<u32>(), Some(&7));
    // What stays: method and URI, no headers.
    assert_eq!(req.request().uri(), "/x?y=1");
    assert!(req.request().headers().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Subprotocols and extensions
// ---------------------------------------------------------------------------------------------

#[test]
fn subprotocols_from_several_headers_with_whitespace() {
    let req = parse_ok(&request_with(
        &[],
        &[
            "Sec-WebSocket-Protocol:  chat ,superchat,, ",
            "Sec-WebSocket-Protocol:\tv2.bin.example",
        ],
    ));
    assert_eq!(req.protocols(), ["chat", "superchat", "v2.bin.example"]);
}

#[test]
fn invalid_subprotocols_are_rejected() {
    for bad in ["chat/1", "a b", "\"quoted\"", "x;y", "é"] {
        let map = header_map(&[("sec-websocket-protocol", bad)]);
        assert_eq!(
            parse_subprotocols(&map),
            Err(HandshakeError::InvalidSubprotocolHeader),
            "{bad}"
        );
    }
    let buf = request_with(&[], &["Sec-WebSocket-Protocol: chat, a b"]);
    rejects(&buf, HandshakeError::InvalidSubprotocolHeader, 400, None);
}

fn ext(name: &str, params: &[(&str, Option<&str>)]) -> Extension {
    Extension {
        name: name.into(),
        params: params
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
            .collect(),
    }
}

#[test]
fn extensions_with_params_and_quoted_values() {
    let map = header_map(&[
        (
            "sec-websocket-extensions",
            "permessage-deflate; client_max_window_bits, permessage-deflate ;server_max_window_bits=10; client_no_context_takeover",
        ),
        (
            "sec-websocket-extensions",
            "x-foo; a=\"quoted\"; b = 1 ,x-bar, ,x-baz;q=\"\\1\\0\"",
        ),
    ]);
    assert_eq!(
        parse_extensions(&map).unwrap(),
        [
            ext("permessage-deflate", &[("client_max_window_bits", None)]),
            ext(
                "permessage-deflate",
                &[
                    ("server_max_window_bits", Some("10")),
                    ("client_no_context_takeover", None)
                ]
            ),
            ext("x-foo", &[("a", Some("quoted")), ("b", Some("1"))]),
            ext("x-bar", &[]),
            ext("x-baz", &[("q", Some("10"))]),
        ]
    );
    // Through the request parser too.
    let req = parse_ok(&request_with(
        &[],
        &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=\"15\""],
    ));
    assert_eq!(
        req.extensions(),
        [ext(
            "permessage-deflate",
            &[("client_max_window_bits", Some("15"))]
        )]
    );
}

#[test]
fn malformed_extension_headers_are_rejected() {
    for bad in [
        ";a",
        "foo;",
        "foo; ",
        "foo bar",
        "foo; a=",
        "foo; a=\"unterminated",
        "foo; a=\"ends in backslash\\",
        "foo; a=\"has space\"",
        "foo; a=\"\"",
        "foo; =1",
        "foo; a==1",
        "foo; a=1 2",
        "foo,;",
        "fo\"o",
        "foo; a/b",
    ] {
        let map = header_map(&[("sec-websocket-extensions", bad)]);
        assert_eq!(
            parse_extensions(&map),
            Err(HandshakeError::InvalidExtensionHeader),
            "{bad:?}"
        );
    }
    let buf = request_with(&[], &["Sec-WebSocket-Extensions: foo; a=\"unterminated"]);
    rejects(&buf, HandshakeError::InvalidExtensionHeader, 400, None);
}

#[test]
fn empty_extension_lists_parse_to_nothing() {
    for empty in ["", ",", " , ,, ", "\t"] {
        let map = header_map(&[("sec-websocket-extensions", empty)]);
        assert_eq!(parse_extensions(&map), Ok(vec![]), "{empty:?}");
    }
}

/// Parses a hostile header of about 1 MB and asserts it takes well under a second (a quadratic
/// parser would take minutes). Even unoptimized, the slowest case takes about 0.3 s; the best of
/// two runs keeps a busy machine from failing the test.
fn assert_fast(name: &'static str, value: Vec<u8>, parse: impl Fn(&HeaderMap) -> bool) {
    let mut map = HeaderMap::new();
    map.insert(name, HeaderValue::from_bytes(&value).unwrap());
    let mut ok = false;
    let elapsed = (0..2)
        .map(|_| {
            let start = Instant::now();
            ok = parse(&map);
            start.elapsed()
        })
        .min()
        .unwrap();
    assert!(
        elapsed < Duration::from_secs(1),
        "{name}: {} bytes starting {:?} took {elapsed:?} (ok: {ok})",
        value.len(),
        String::from_utf8_lossy(&value[..20])
    );
}

#[test]
fn hostile_extension_headers_parse_in_linear_time() {
    const MB: usize = 1 << 20;
    let ext = |m: &HeaderMap| parse_extensions(m).is_ok();
    let cases: Vec<Vec<u8>> = vec![
        // a;b;b;b;...: one extension with half a million params.
        [b"a".as_slice(), &b";b".repeat(MB / 2)].concat(),
        // Many commas.
        b",".repeat(MB),
        // Many extensions.
        b"a,".repeat(MB / 2),
        // Whitespace then something invalid at the very end.
        [b"a;".as_slice(), &b" ".repeat(MB), b"/"].concat(),
        // An unterminated quoted string full of escapes.
        [b"a;b=\"".as_slice(), &b"\\\\".repeat(MB / 2)].concat(),
        // A long quoted value.
        [b"a;b=\"".as_slice(), &b"x".repeat(MB), b"\""].concat(),
        // Params with values.
        b"a;b=c".repeat(MB / 5),
    ];
    for value in cases {
        assert_fast("sec-websocket-extensions", value, ext);
    }
    let proto = |m: &HeaderMap| parse_subprotocols(m).is_ok();
    assert_fast("sec-websocket-protocol", b",".repeat(MB), proto);
    assert_fast("sec-websocket-protocol", b"a, ".repeat(MB / 3), proto);
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// The request a client handshake would send, parsed.
struct SentRequest {
    path: String,
    headers: Vec<(String, String)>,
}

impl SentRequest {
    fn parse(bytes: &[u8]) -> Self {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert_eq!(
            req.parse(bytes).unwrap(),
            httparse::Status::Complete(bytes.len())
        );
        assert_eq!(req.method, Some("GET"));
        assert_eq!(req.version, Some(1));
        Self {
            path: req.path.unwrap().to_owned(),
            headers: req
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_ascii_lowercase(),
                        String::from_utf8(h.value.to_vec()).unwrap(),
                    )
                })
                .collect(),
        }
    }

    fn get(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    fn key(&self) -> &str {
        self.get("sec-websocket-key")[0]
    }
}

fn client(uri: &str, protocols: &[&str]) -> ClientHandshake {
    let protocols: Vec<String> = protocols.iter().map(|p| (*p).to_owned()).collect();
    ClientHandshake::new(&uri.parse::<Uri>().unwrap(), &protocols, &HeaderMap::new()).unwrap()
}

#[test]
fn client_request_is_correct() {
    let hs = client("ws://example.com:8080/chat?room=1&x=2", &[]);
    let sent = SentRequest::parse(hs.request());
    assert_eq!(sent.path, "/chat?room=1&x=2");
    assert_eq!(sent.get("host"), ["example.com:8080"]);
    assert_eq!(sent.get("upgrade"), ["websocket"]);
    assert_eq!(sent.get("connection"), ["Upgrade"]);
    assert_eq!(sent.get("sec-websocket-version"), ["13"]);
    assert_eq!(sent.get("sec-websocket-protocol"), [] as [&str; 0]);
    use base64::Engine as _;
    let key = base64::engine::general_purpose::STANDARD
        .decode(sent.key())
        .unwrap();
    assert_eq!(key.len(), 16);
    // A fresh key every time.
    let other = client("ws://example.com:8080/chat?room=1&x=2", &[]);
    assert_ne!(SentRequest::parse(other.request()).key(), sent.key());
}

#[test]
fn client_host_header_omits_default_ports() {
    for (uri, host, path) in [
        ("ws://example.com", "example.com", "/"),
        ("ws://example.com/", "example.com", "/"),
        ("ws://example.com:80/a", "example.com", "/a"),
        ("wss://example.com:443/a", "example.com", "/a"),
        ("wss://example.com:80/a", "example.com:80", "/a"),
        ("ws://example.com:443/a", "example.com:443", "/a"),
        ("ws://127.0.0.1:9001/?q", "127.0.0.1:9001", "/?q"),
        ("ws://[::1]:9001/", "[::1]:9001", "/"),
    ] {
        let sent = SentRequest::parse(client(uri, &[]).request());
        assert_eq!(sent.get("host"), [host], "{uri}");
        assert_eq!(sent.path, path, "{uri}");
    }
}

#[test]
fn client_request_offers_protocols_and_extra_headers() {
    let extra = header_map(&[
        ("origin", "https://example.com"),
        ("authorization", "Bearer t"),
    ]);
    let hs = ClientHandshake::new(
        &"ws://h/".parse().unwrap(),
        &["chat".to_owned(), "superchat".to_owned()],
        &extra,
    )
    .unwrap();
    let sent = SentRequest::parse(hs.request());
    assert_eq!(sent.get("sec-websocket-protocol"), ["chat, superchat"]);
    assert_eq!(sent.get("origin"), ["https://example.com"]);
    assert_eq!(sent.get("authorization"), ["Bearer t"]);
    // And the server side accepts it.
    let (req, _) = parse(hs.request()).unwrap().unwrap();
    assert_eq!(req.protocols(), ["chat", "superchat"]);
}

#[test]
fn client_rejects_bad_urls_and_protocols() {
    for uri in ["http://example.com/", "example.com:80", "/path"] {
        let uri: Uri = uri.parse().unwrap();
        assert!(
            matches!(
                ClientHandshake::new(&uri, &[], &HeaderMap::new()),
                Err(HandshakeError::InvalidUrl(_))
            ),
            "{uri}"
        );
    }
    assert_eq!(
        ClientHandshake::new(
            &"ws://h/".parse().unwrap(),
            &["a b".to_owned()],
            &HeaderMap::new()
        )
        .err(),
        Some(HandshakeError::InvalidSubprotocolHeader)
    );
}

/// A 101 response for `hs` with the lines in `lines` (use `{accept}` for the right accept value).
fn response(hs: &ClientHandshake, lines: &[&str]) -> Vec<u8> {
    let accept = accept_key(SentRequest::parse(hs.request()).key().as_bytes());
    let mut s = String::new();
    for l in lines {
        s.push_str(&l.replace("{accept}", &accept));
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

const GOOD_RESPONSE: [&str; 4] = [
    "HTTP/1.1 101 Switching Protocols",
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Accept: {accept}",
];

fn response_with(hs: &ClientHandshake, drop: &[&str], add: &[&str]) -> Vec<u8> {
    let mut lines: Vec<&str> = GOOD_RESPONSE
        .iter()
        .copied()
        .filter(|l| !drop.iter().any(|d| l.starts_with(d)))
        .collect();
    lines.extend_from_slice(add);
    response(hs, &lines)
}

#[test]
fn client_accepts_a_correct_101() {
    let hs = client("ws://h/", &["chat", "superchat"]);
    let resp = response_with(&hs, &[], &[]);
    let (up, len) = hs.parse_response(&resp, &limits()).unwrap().unwrap();
    assert_eq!(len, resp.len());
    assert_eq!(up.protocol, None);
    assert_eq!(up.response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let resp = response_with(&hs, &[], &["Sec-WebSocket-Protocol: superchat"]);
    let (up, _) = hs.parse_response(&resp, &limits()).unwrap().unwrap();
    assert_eq!(up.protocol.as_deref(), Some("superchat"));

    // Case-insensitive tokens, frames after the response left over.
    let mut resp = response_with(
        &hs,
        &["Upgrade", "Connection"],
        &["upgrade: WebSocket", "connection: keep-alive, upgrade"],
    );
    let head = resp.len();
    resp.extend_from_slice(&[0x81, 0x02, b'h', b'i']);
    let (_, len) = hs.parse_response(&resp, &limits()).unwrap().unwrap();
    assert_eq!(len, head);

    // Incomplete: every prefix.
    for cut in 0..head {
        assert!(matches!(
            hs.parse_response(&resp[..cut], &limits()),
            Ok(None)
        ));
    }
}

#[test]
fn client_accepts_what_the_server_sends() {
    let hs = client("ws://localhost:9001/echo", &["chat"]);
    let (req, _) = parse(hs.request()).unwrap().unwrap();
    let resp = req.accept(Some("chat"), &HeaderMap::new());
    let (up, len) = hs.parse_response(&resp, &limits()).unwrap().unwrap();
    assert_eq!(len, resp.len());
    assert_eq!(up.protocol.as_deref(), Some("chat"));
}

#[test]
fn client_rejects_a_non_101_status() {
    let hs = client("ws://h/", &[]);
    for (line, code) in [
        ("HTTP/1.1 200 OK", 200),
        ("HTTP/1.1 302 Found", 302),
        ("HTTP/1.1 400 Bad Request", 400),
        ("HTTP/1.1 426 Upgrade Required", 426),
        ("HTTP/1.0 200 OK", 200),
    ] {
        let mut lines = GOOD_RESPONSE.to_vec();
        lines[0] = line;
        let resp = response(&hs, &lines);
        assert_eq!(
            hs.parse_response(&resp, &limits()).err(),
            Some(HandshakeError::UnexpectedStatus(code)),
            "{line}"
        );
    }
}

#[test]
fn client_rejects_an_http_1_0_upgrade() {
    // Upgrade is an HTTP/1.1 mechanism: a "101" in an HTTP/1.0 response is not a handshake.
    let hs = client("ws://h/", &[]);
    let mut lines = GOOD_RESPONSE.to_vec();
    lines[0] = "HTTP/1.0 101 Switching Protocols";
    let resp = response(&hs, &lines);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::HttpVersion)
    );
}

#[test]
fn client_rejects_a_wrong_accept() {
    let hs = client("ws://h/", &[]);
    for add in [
        &[][..],
        &["Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="],
        &["Sec-WebSocket-Accept: garbage"],
        &[
            "Sec-WebSocket-Accept: {accept}",
            "Sec-WebSocket-Accept: {accept}",
        ],
    ] {
        let resp = response_with(&hs, &["Sec-WebSocket-Accept"], add);
        assert_eq!(
            hs.parse_response(&resp, &limits()).err(),
            Some(HandshakeError::InvalidAccept),
            "{add:?}"
        );
    }
}

#[test]
fn client_rejects_an_unoffered_subprotocol() {
    let hs = client("ws://h/", &["chat"]);
    let resp = response_with(&hs, &[], &["Sec-WebSocket-Protocol: superchat"]);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::UnexpectedSubprotocol("superchat".into()))
    );
    let resp = response_with(&hs, &[], &["Sec-WebSocket-Protocol: chat, chat"]);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::InvalidSubprotocolHeader)
    );
    // None offered at all.
    let hs = client("ws://h/", &[]);
    let resp = response_with(&hs, &[], &["Sec-WebSocket-Protocol: chat"]);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::UnexpectedSubprotocol("chat".into()))
    );
}

#[test]
fn client_rejects_any_extension() {
    let hs = client("ws://h/", &[]);
    let resp = response_with(
        &hs,
        &[],
        &["Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover"],
    );
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::UnexpectedExtension(
            "permessage-deflate".into()
        ))
    );
    let resp = response_with(&hs, &[], &["Sec-WebSocket-Extensions: ;;"]);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::InvalidExtensionHeader)
    );
}

#[test]
fn client_rejects_missing_upgrade_or_connection() {
    let hs = client("ws://h/", &[]);
    for (drop, add, err) in [
        ("Upgrade", None, HandshakeError::MissingUpgrade),
        (
            "Upgrade",
            Some("Upgrade: h2c"),
            HandshakeError::MissingUpgrade,
        ),
        ("Connection", None, HandshakeError::MissingConnectionUpgrade),
        (
            "Connection",
            Some("Connection: keep-alive"),
            HandshakeError::MissingConnectionUpgrade,
        ),
    ] {
        let add: Vec<&str> = add.into_iter().collect();
        let resp = response_with(&hs, &[drop], &add);
        assert_eq!(hs.parse_response(&resp, &limits()).err(), Some(err));
    }
}

#[test]
fn client_rejects_an_oversized_response() {
    let hs = client("ws://h/", &[]);
    let mut resp = b"HTTP/1.1 101 Switching Protocols\r\nX-Endless: ".to_vec();
    resp.extend_from_slice(&[b'a'; 9000]);
    assert_eq!(
        hs.parse_response(&resp, &limits()).err(),
        Some(HandshakeError::HeadersTooLarge(8192))
    );
}

#[test]
fn client_rejects_a_complete_response_over_the_limit() {
    // A valid 101 response whose header block, complete in one read, is larger than the limit:
    // refused even though nothing is missing, and accepted once the limit allows it.
    let hs = client("ws://h/", &[]);
    let fill = format!("X-Fill: {}", "a".repeat(300));
    let resp = response_with(&hs, &[], &[&fill]);
    let small = HeaderLimits::default().max_bytes(resp.len() - 1);
    assert_eq!(
        hs.parse_response(&resp, &small).err(),
        Some(HandshakeError::HeadersTooLarge(resp.len() - 1))
    );
    let exact = HeaderLimits::default().max_bytes(resp.len());
    let (_, len) = hs.parse_response(&resp, &exact).unwrap().unwrap();
    assert_eq!(len, resp.len());
}
