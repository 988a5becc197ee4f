//! The opening handshake (RFC 6455 §4) in both roles, without I/O.
//!
//! Server: [`UpgradeRequest::parse`] reads and validates a client's request from a buffer;
//! [`UpgradeRequest::accept`] builds the `101 Switching Protocols` response and
//! [`HandshakeError::response`] the rejection. Client: [`ClientHandshake::new`] builds the request
//! and [`ClientHandshake::parse_response`] validates the server's answer.

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use sha1::{Digest, Sha1};

use crate::deflate::{DeflateConfig, DeflateParams, EXTENSION_NAME};

/// Header lines parsed into an array on the stack; a larger [`HeaderLimits::max_headers`] uses
/// one on the heap.
const STACK_HEADERS: usize = 128;

/// The GUID that RFC 6455 §1.3 appends to the key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Bounds on an HTTP header block, checked before it is buffered further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeaderLimits {
    /// Largest header block (request or status line plus headers), in bytes. Default 8 KiB.
    pub max_bytes: usize,
    /// Most header lines. Default 128.
    pub max_headers: usize,
}

impl Default for HeaderLimits {
    fn default() -> Self {
        Self {
            max_bytes: 8 * 1024,
            max_headers: 128,
        }
    }
}

impl HeaderLimits {
    /// Sets [`HeaderLimits::max_bytes`].
    pub fn max_bytes(mut self, bytes: usize) -> Self {
        self.max_bytes = bytes;
        self
    }

    /// Sets [`HeaderLimits::max_headers`].
    pub fn max_headers(mut self, count: usize) -> Self {
        self.max_headers = count;
        self
    }
}

/// Why an opening handshake failed.
///
/// On the server, [`status`](Self::status) and [`response`](Self::response) give the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The bytes were not a well-formed HTTP/1.1 message.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// The header block exceeded the byte limit.
    #[error("header block exceeds {0} bytes")]
    HeadersTooLarge(usize),
    /// The header block had more lines than allowed.
    #[error("more than {0} headers")]
    TooManyHeaders(usize),
    /// The request method was not GET.
    #[error("method {0} not allowed: a WebSocket handshake uses GET")]
    MethodNotAllowed(String),
    /// The request (or, on the client, the 101 response) was not HTTP/1.1.
    #[error("a WebSocket handshake needs HTTP/1.1")]
    HttpVersion,
    /// The request had no Host header.
    #[error("missing Host header")]
    MissingHost,
    /// `Upgrade: websocket` was missing.
    #[error("missing \"Upgrade: websocket\": this is a WebSocket endpoint, use a WebSocket client")]
    MissingUpgrade,
    /// `Connection: upgrade` was missing.
    #[error("missing \"Connection: upgrade\"")]
    MissingConnectionUpgrade,
    /// `Sec-WebSocket-Version` was missing or not 13.
    #[error("unsupported WebSocket version (only 13 is supported)")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` was missing, repeated, or not 16 bytes in base64.
    #[error("missing or invalid Sec-WebSocket-Key")]
    InvalidKey,
    /// `Sec-WebSocket-Protocol` was not a list of tokens.
    #[error("invalid Sec-WebSocket-Protocol header")]
    InvalidSubprotocolHeader,
    /// `Sec-WebSocket-Extensions` did not parse.
    #[error("invalid Sec-WebSocket-Extensions header")]
    InvalidExtensionHeader,
    /// Client: the URL could not be used (scheme, host).
    #[error("invalid URL: {0}")]
    InvalidUrl(String),
    /// Client: the server answered with a status other than 101.
    #[error("server answered HTTP {0} instead of 101 Switching Protocols")]
    UnexpectedStatus(u16),
    /// Client: `Sec-WebSocket-Accept` was missing or wrong.
    #[error("missing or wrong Sec-WebSocket-Accept")]
    InvalidAccept,
    /// Client: the server selected a subprotocol that was not offered.
    #[error("server selected subprotocol {0:?}, which was not offered")]
    UnexpectedSubprotocol(String),
    /// Client: the server selected an extension that was not offered.
    #[error("server selected extension {0:?}, which was not offered")]
    UnexpectedExtension(String),
    /// Client: the server's permessage-deflate response does not fit the offer (unknown, repeated
    /// or out-of-range parameter, a window larger than offered, a requested parameter missing).
    #[error("invalid permessage-deflate response: {0}")]
    InvalidDeflateResponse(String),
}

impl HandshakeError {
    /// The HTTP status a server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::HeadersTooLarge(_) | Self::TooManyHeaders(_) => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// The complete HTTP response a server sends for this error: status, the headers the status
    /// calls for (`Allow: GET` for 405, `Sec-WebSocket-Version: 13` for 426) and a short body.
    pub fn response(&self) -> Vec<u8> {
        let status = self.status();
        let body = format!("{self}\n");
        let mut extra = String::new();
        match status {
            StatusCode::METHOD_NOT_ALLOWED => extra.push_str("Allow: GET\r\n"),
            StatusCode::UPGRADE_REQUIRED => {
                extra.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
            }
            _ => {}
        }
        error_response(status, &extra, &body)
    }
}

/// A plain-text HTTP error response that closes the connection.
pub fn error_response(status: StatusCode, extra_headers: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        extra_headers,
        body
    )
    .into_bytes()
}

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut out = [0u8; ACCEPT_KEY_LEN];
    String::from_utf8_lossy(accept_key_bytes(key, &mut out)).into_owned()
}

/// Length of a `Sec-WebSocket-Accept` value: a SHA-1 digest in base64.
const ACCEPT_KEY_LEN: usize = 28;

/// [`accept_key`] written into `out`, without allocating.
fn accept_key_bytes<'a>(key: &[u8], out: &'a mut [u8; ACCEPT_KEY_LEN]) -> &'a [u8] {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    // 20 bytes encode to exactly 28: the buffer always fits.
    let n = BASE64.encode_slice(sha.finalize(), out).unwrap_or(0);
    &out[..n]
}

/// One extension offered or accepted in `Sec-WebSocket-Extensions`, with its parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extension {
    /// The extension token, e.g. `permessage-deflate`.
    pub name: String,
    /// Parameters in order: name and optional value (quotes removed).
    pub params: Vec<(String, Option<String>)>,
}

fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_tchar)
}

/// Splits every value of header `name` on commas, trimming whitespace and dropping empty items.
fn header_tokens<'a>(headers: &'a HeaderMap, name: &HeaderName) -> impl Iterator<Item = &'a [u8]> {
    headers.get_all(name).iter().flat_map(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .map(|t| t.trim_ascii())
            .filter(|t| !t.is_empty())
    })
}

fn header_has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    header_tokens(headers, name).any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses `Sec-WebSocket-Protocol` values into the offered subprotocols.
pub fn parse_subprotocols(headers: &HeaderMap) -> Result<Vec<String>, HandshakeError> {
    header_tokens(headers, &http::header::SEC_WEBSOCKET_PROTOCOL)
        .map(|t| match std::str::from_utf8(t) {
            Ok(s) if is_token(s) => Ok(s.to_owned()),
            _ => Err(HandshakeError::InvalidSubprotocolHeader),
        })
        .collect()
}

/// Parses `Sec-WebSocket-Extensions` values (RFC 6455 §9.1) in one linear pass.
pub fn parse_extensions(headers: &HeaderMap) -> Result<Vec<Extension>, HandshakeError> {
    let mut out = Vec::new();
    for value in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        parse_extension_list(value.as_bytes(), &mut out)?;
    }
    Ok(out)
}

fn parse_extension_list(s: &[u8], out: &mut Vec<Extension>) -> Result<(), HandshakeError> {
    let err = || HandshakeError::InvalidExtensionHeader;
    let mut p = Cursor { s, i: 0 };
    loop {
        p.skip_ws();
        if p.eof() {
            return Ok(());
        }
        if p.peek() == Some(b',') {
            p.i += 1;
            continue;
        }
        let name = p.token().ok_or_else(err)?;
        let mut ext = Extension {
            name,
            params: Vec::new(),
        };
        loop {
            p.skip_ws();
            match p.peek() {
                None => break,
                Some(b',') => {
                    p.i += 1;
                    break;
                }
                Some(b';') => {
                    p.i += 1;
                    p.skip_ws();
                    let key = p.token().ok_or_else(err)?;
                    p.skip_ws();
                    let value = if p.peek() == Some(b'=') {
                        p.i += 1;
                        p.skip_ws();
                        let v = if p.peek() == Some(b'"') {
                            p.quoted().ok_or_else(err)?
                        } else {
                            p.token().ok_or_else(err)?
                        };
                        if !is_token(&v) {
                            return Err(err());
                        }
                        Some(v)
                    } else {
                        None
                    };
                    ext.params.push((key, value));
                }
                Some(_) => return Err(err()),
            }
        }
        out.push(ext);
    }
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn eof(&self) -> bool {
        self.i >= self.s.len()
    }
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> Option<String> {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }
    fn quoted(&mut self) -> Option<String> {
        self.i += 1; // opening quote
        let mut v = Vec::new();
        loop {
            match self.peek()? {
                b'"' => {
                    self.i += 1;
                    return String::from_utf8(v).ok();
                }
                b'\\' => {
                    self.i += 1;
                    v.push(self.peek()?);
                    self.i += 1;
                }
                c => {
                    v.push(c);
                    self.i += 1;
                }
            }
        }
    }
}

fn parse_headers(raw: &[httparse::Header<'_>]) -> Result<HeaderMap, HandshakeError> {
    let mut headers = HeaderMap::with_capacity(raw.len());
    for h in raw {
        let name = HeaderName::from_bytes(h.name.as_bytes())
            .map_err(|_| HandshakeError::Malformed(format!("bad header name {:?}", h.name)))?;
        let value = HeaderValue::from_bytes(h.value)
            .map_err(|_| HandshakeError::Malformed(format!("bad value for header {}", h.name)))?;
        headers.append(name, value);
    }
    Ok(headers)
}

fn map_httparse(e: httparse::Error, limits: &HeaderLimits) -> HandshakeError {
    match e {
        httparse::Error::TooManyHeaders => HandshakeError::TooManyHeaders(limits.max_headers),
        other => HandshakeError::Malformed(other.to_string()),
    }
}

/// What a valid opening handshake request carries, checked from its header lines.
struct Valid {
    key: [u8; KEY_LEN],
    protocols: Vec<String>,
    extensions: Vec<Extension>,
}

impl Valid {
    /// Checks the header lines (`(name, value)`, names in any case) of a request with `method`
    /// (RFC 6455 §4.2.1), in this order: GET, `Host`, `Upgrade: websocket`, `Connection:
    /// upgrade`, one `Sec-WebSocket-Version: 13`, one `Sec-WebSocket-Key` of 16 bytes, then the
    /// offered subprotocols and extensions (allocated only when offered).
    fn check<'a, I>(method: &Method, lines: impl Fn() -> I) -> Result<Self, HandshakeError>
    where
        I: Iterator<Item = (&'a [u8], &'a [u8])>,
    {
        if *method != Method::GET {
            return Err(HandshakeError::MethodNotAllowed(method.to_string()));
        }
        let (mut host, mut upgrade, mut connection) = (false, false, false);
        let (mut versions, mut version_ok, mut keys) = (0u32, false, 0u32);
        let mut key: &[u8] = &[];
        let (mut protocol_lines, mut extension_lines) = (false, false);
        for (name, value) in lines() {
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted.as_bytes());
            match name.len() {
                4 if is("host") => host = true,
                7 if is("upgrade") => upgrade |= has_token(value, b"websocket"),
                10 if is("connection") => connection |= has_token(value, b"upgrade"),
                17 if is("sec-websocket-key") => {
                    keys += 1;
                    key = value.trim_ascii();
                }
                21 if is("sec-websocket-version") => {
                    versions += 1;
                    version_ok = value.trim_ascii() == b"13";
                }
                22 if is("sec-websocket-protocol") => protocol_lines = true,
                24 if is("sec-websocket-extensions") => extension_lines = true,
                _ => {}
            }
        }
        if !host {
            return Err(HandshakeError::MissingHost);
        }
        if !upgrade {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !connection {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if versions != 1 || !version_ok {
            return Err(HandshakeError::UnsupportedVersion);
        }
        let mut decoded = [0u8; 18];
        let key: [u8; KEY_LEN] = match key.try_into() {
            Ok(key) if keys == 1 && BASE64.decode_slice(key, &mut decoded) == Ok(16) => key,
            _ => return Err(HandshakeError::InvalidKey),
        };
        let values = |wanted: &'static str| {
            lines()
                .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted.as_bytes()))
                .map(|(_, value)| value)
        };
        let mut protocols = Vec::new();
        if protocol_lines {
            for token in values("sec-websocket-protocol").flat_map(list_items) {
                match std::str::from_utf8(token) {
                    Ok(p) if is_token(p) => protocols.push(p.to_owned()),
                    _ => return Err(HandshakeError::InvalidSubprotocolHeader),
                }
            }
        }
        let mut extensions = Vec::new();
        if extension_lines {
            for value in values("sec-websocket-extensions") {
                parse_extension_list(value, &mut extensions)?;
            }
        }
        Ok(Self {
            key,
            protocols,
            extensions,
        })
    }
}

/// The items of a comma-separated header value, trimmed, empty ones dropped.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitively).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    list_items(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// A client's opening handshake request, parsed and validated.
///
/// Parsed from bytes ([`parse`](Self::parse)), it is validated straight from the header lines
/// and keeps one copy of the header block; the [`http::Request`] with its header map is built
/// from that copy only when asked for ([`request`](Self::request),
/// [`take_request`](Self::take_request)): a server that never looks at the request's headers
/// does not pay for them.
#[derive(Debug, Clone)]
pub struct UpgradeRequest {
    /// The request: given to [`from_request`](Self::from_request), or built from `head` on
    /// first use.
    request: OnceLock<Request<()>>,
    /// The header block as received (empty when the request was given).
    head: Bytes,
    /// Header lines in `head` (to parse it again without guessing).
    head_lines: usize,
    method: Method,
    uri: Uri,
    /// `Sec-WebSocket-Key`, trimmed (24 characters: 16 bytes in base64).
    key: [u8; KEY_LEN],
    protocols: Vec<String>,
    extensions: Vec<Extension>,
}

/// Length of a valid `Sec-WebSocket-Key`: 16 bytes in base64, padded.
const KEY_LEN: usize = 24;

impl UpgradeRequest {
    /// Parses and validates a request from the start of `buf`.
    ///
    /// Returns `Ok(None)` while the header block is incomplete (and still under the limits), or the
    /// request and the number of bytes it used; bytes after that belong to the WebSocket stream.
    ///
    /// Up to 128 header lines are parsed on the stack, the handshake headers are validated
    /// where they lie in `buf`, and the header block is copied once (for the request, built
    /// when first asked for).
    pub fn parse(
        buf: &[u8],
        limits: &HeaderLimits,
    ) -> Result<Option<(Self, usize)>, HandshakeError> {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let slots = if limits.max_headers <= STACK_HEADERS {
            &mut stack[..limits.max_headers]
        } else {
            heap.resize(limits.max_headers, MaybeUninit::uninit());
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        let len = match req
            .parse_with_uninit_headers(buf, slots)
            .map_err(|e| map_httparse(e, limits))?
        {
            httparse::Status::Partial => {
                if buf.len() > limits.max_bytes {
                    return Err(HandshakeError::HeadersTooLarge(limits.max_bytes));
                }
                return Ok(None);
            }
            httparse::Status::Complete(len) => len,
        };
        if len > limits.max_bytes {
            return Err(HandshakeError::HeadersTooLarge(limits.max_bytes));
        }
        if req.version != Some(1) {
            return Err(HandshakeError::HttpVersion);
        }
        // httparse accepts exactly the bytes `http` does in methods (tokens), header names
        // (tokens) and header values (visible ASCII, obs-text, tab): building the request from
        // them later cannot fail. The URI is checked by `http`'s own parser here.
        let method = Method::from_bytes(req.method.unwrap_or_default().as_bytes())
            .map_err(|_| HandshakeError::Malformed("bad method".into()))?;
        let uri = match req.path {
            Some(path) => Uri::from_maybe_shared(Bytes::copy_from_slice(path.as_bytes()))
                .map_err(|e| HandshakeError::Malformed(http::Error::from(e).to_string()))?,
            None => Uri::from_static("/"),
        };
        let lines = || req.headers.iter().map(|h| (h.name.as_bytes(), h.value));
        let valid = Valid::check(&method, lines)?;
        Ok(Some((
            Self {
                request: OnceLock::new(),
                head: Bytes::copy_from_slice(&buf[..len]),
                head_lines: req.headers.len(),
                method,
                uri,
                key: valid.key,
                protocols: valid.protocols,
                extensions: valid.extensions,
            },
            len,
        )))
    }

    /// Validates a request already parsed by an HTTP stack (hyper, axum).
    pub fn from_request(request: Request<()>) -> Result<Self, HandshakeError> {
        if request.method() != Method::GET {
            return Err(HandshakeError::MethodNotAllowed(
                request.method().to_string(),
            ));
        }
        if request.version() < http::Version::HTTP_11 {
            return Err(HandshakeError::HttpVersion);
        }
        let headers = request.headers();
        let lines = || {
            headers
                .iter()
                .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        };
        let valid = Valid::check(request.method(), lines)?;
        Ok(Self {
            method: request.method().clone(),
            uri: request.uri().clone(),
            request: OnceLock::from(request),
            head: Bytes::new(),
            head_lines: 0,
            key: valid.key,
            protocols: valid.protocols,
            extensions: valid.extensions,
        })
    }

    /// The request: method, URI (path and query) and headers (built on first use when the
    /// request was parsed from bytes).
    pub fn request(&self) -> &Request<()> {
        self.request.get_or_init(|| self.build())
    }

    /// Takes the request out (to hand it on without a copy). The key, the offered subprotocols
    /// and extensions stay: [`accept`](Self::accept) and
    /// [`negotiate_deflate`](Self::negotiate_deflate) still work. Asked for again,
    /// [`request`](Self::request) builds it anew from the bytes received (for a request given to
    /// [`from_request`](Self::from_request): its method and URI, without headers).
    pub fn take_request(&mut self) -> Request<()> {
        self.request.take().unwrap_or_else(|| self.build())
    }

    /// The request from the header block received: method, URI, HTTP/1.1, the headers in order
    /// (their values share the block's copy).
    fn build(&self) -> Request<()> {
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.version_mut() = http::Version::HTTP_11;
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
        let mut heap = Vec::new();
        let slots = if self.head_lines <= STACK_HEADERS {
            &mut stack[..self.head_lines]
        } else {
            heap.resize(self.head_lines, MaybeUninit::uninit());
            &mut heap[..]
        };
        let mut req = httparse::Request::new(&mut []);
        if let Ok(httparse::Status::Complete(_)) = req.parse_with_uninit_headers(&self.head, slots)
        {
            let headers = request.headers_mut();
            headers.reserve(req.headers.len());
            for h in req.headers.iter() {
                let start = (h.value.as_ptr() as usize).wrapping_sub(self.head.as_ptr() as usize);
                let value = self.head.slice(start..start + h.value.len());
                // Both were validated by the parse that made this request (see `parse`).
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(h.name.as_bytes()),
                    HeaderValue::from_maybe_shared(value),
                ) {
                    headers.append(name, value);
                }
            }
        }
        request
    }

    /// The subprotocols the client offered, in its order of preference.
    pub fn protocols(&self) -> &[String] {
        &self.protocols
    }

    /// The extensions the client offered.
    pub fn extensions(&self) -> &[Extension] {
        &self.extensions
    }

    /// Negotiates permessage-deflate: the parameters of the first acceptable offer, or `None` if
    /// the client offered none that `config` can accept. Put
    /// [`DeflateParams::header_value`] in the 101's `Sec-WebSocket-Extensions` header.
    pub fn negotiate_deflate(&self, config: &DeflateConfig) -> Option<DeflateParams> {
        config.negotiate(&self.extensions)
    }

    /// The `Sec-WebSocket-Accept` value for this request.
    pub fn accept_key(&self) -> String {
        accept_key(&self.key)
    }

    /// The `101 Switching Protocols` response, selecting `protocol` (which should be one the client
    /// offered) and adding `extra` headers.
    pub fn accept(&self, protocol: Option<&str>, extra: &HeaderMap) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.write_accept(protocol, extra, &mut out);
        out
    }

    /// [`accept`](Self::accept), appended to `out` (a buffer reused across handshakes: no
    /// allocation once it is large enough).
    pub fn write_accept(&self, protocol: Option<&str>, extra: &HeaderMap, out: &mut Vec<u8>) {
        out.extend_from_slice(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
        );
        let mut key = [0u8; ACCEPT_KEY_LEN];
        out.extend_from_slice(accept_key_bytes(&self.key, &mut key));
        out.extend_from_slice(b"\r\n");
        if let Some(p) = protocol {
            out.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            out.extend_from_slice(p.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        for (name, value) in extra {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The server's accepted handshake response, as seen by the client.
#[derive(Debug, Clone)]
pub struct UpgradeResponse {
    /// The response's status and headers.
    pub response: Response<()>,
    /// The subprotocol the server selected, if any.
    pub protocol: Option<String>,
    /// The permessage-deflate parameters in force, if the client offered it and the server
    /// accepted.
    pub deflate: Option<DeflateParams>,
}

/// A client's opening handshake: the request to send and what the response must satisfy.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    key: String,
    protocols: Vec<String>,
    request: Vec<u8>,
    deflate: Option<DeflateConfig>,
}

impl ClientHandshake {
    /// Builds the request for `uri` (`ws://` or `wss://`), offering `protocols`, with `extra`
    /// headers appended.
    pub fn new(uri: &Uri, protocols: &[String], extra: &HeaderMap) -> Result<Self, HandshakeError> {
        let secure = match uri.scheme_str() {
            Some("ws") => false,
            Some("wss") => true,
            other => {
                return Err(HandshakeError::InvalidUrl(format!(
                    "scheme must be ws or wss, not {}",
                    other.unwrap_or("missing")
                )));
            }
        };
        let host = uri
            .host()
            .ok_or_else(|| HandshakeError::InvalidUrl("missing host".into()))?;
        let default_port = if secure { 443 } else { 80 };
        let host_header = match uri.port_u16() {
            Some(p) if p != default_port => format!("{host}:{p}"),
            _ => host.to_owned(),
        };
        for p in protocols {
            if !is_token(p) {
                return Err(HandshakeError::InvalidSubprotocolHeader);
            }
        }
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let key = BASE64.encode(rand::random::<[u8; 16]>());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        )
        .into_bytes();
        if !protocols.is_empty() {
            request.extend_from_slice(b"Sec-WebSocket-Protocol: ");
            request.extend_from_slice(protocols.join(", ").as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        for (name, value) in extra {
            request.extend_from_slice(name.as_str().as_bytes());
            request.extend_from_slice(b": ");
            request.extend_from_slice(value.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        Ok(Self {
            key,
            protocols: protocols.to_vec(),
            request,
            deflate: None,
        })
    }

    /// Offers permessage-deflate with `config` (adds `Sec-WebSocket-Extensions` to the request).
    /// [`parse_response`](Self::parse_response) then validates the server's answer to it.
    pub fn offer_deflate(mut self, config: &DeflateConfig) -> Self {
        // The request ends with the empty line: insert the header before it.
        self.request.truncate(self.request.len() - 2);
        self.request
            .extend_from_slice(b"Sec-WebSocket-Extensions: ");
        self.request.extend_from_slice(config.offer().as_bytes());
        self.request.extend_from_slice(b"\r\n\r\n");
        self.deflate = Some(config.clone());
        self
    }

    /// The request bytes to write.
    pub fn request(&self) -> &[u8] {
        &self.request
    }

    /// Parses and validates the server's response from the start of `buf`.
    ///
    /// Returns `Ok(None)` while the header block is incomplete, or the response and the number of
    /// bytes it used; bytes after that are WebSocket frames.
    pub fn parse_response(
        &self,
        buf: &[u8],
        limits: &HeaderLimits,
    ) -> Result<Option<(UpgradeResponse, usize)>, HandshakeError> {
        use http::header;
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut heap = Vec::new();
        let raw = if limits.max_headers <= STACK_HEADERS {
            &mut stack[..limits.max_headers]
        } else {
            heap.resize(limits.max_headers, httparse::EMPTY_HEADER);
            &mut heap[..]
        };
        let mut resp = httparse::Response::new(raw);
        let len = match resp.parse(buf).map_err(|e| map_httparse(e, limits))? {
            httparse::Status::Partial => {
                if buf.len() > limits.max_bytes {
                    return Err(HandshakeError::HeadersTooLarge(limits.max_bytes));
                }
                return Ok(None);
            }
            httparse::Status::Complete(len) => len,
        };
        if len > limits.max_bytes {
            return Err(HandshakeError::HeadersTooLarge(limits.max_bytes));
        }
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(HandshakeError::UnexpectedStatus(code));
        }
        if resp.version != Some(1) {
            return Err(HandshakeError::HttpVersion);
        }
        let headers = parse_headers(resp.headers)?;
        if !header_has_token(&headers, &header::UPGRADE, "websocket") {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !header_has_token(&headers, &header::CONNECTION, "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        let expected = accept_key(self.key.as_bytes());
        let mut accepts = headers.get_all(header::SEC_WEBSOCKET_ACCEPT).iter();
        match (accepts.next(), accepts.next()) {
            (Some(v), None) if v.as_bytes().trim_ascii() == expected.as_bytes() => {}
            _ => return Err(HandshakeError::InvalidAccept),
        }
        let mut selected = parse_subprotocols(&headers)?;
        if selected.len() > 1 {
            return Err(HandshakeError::InvalidSubprotocolHeader);
        }
        let protocol = selected.pop();
        if let Some(p) = &protocol
            && !self.protocols.iter().any(|o| o == p)
        {
            return Err(HandshakeError::UnexpectedSubprotocol(p.clone()));
        }
        let mut deflate = None;
        for ext in parse_extensions(&headers)? {
            match &self.deflate {
                Some(config) if ext.name.eq_ignore_ascii_case(EXTENSION_NAME) => {
                    if deflate.is_some() {
                        return Err(HandshakeError::InvalidDeflateResponse(
                            "permessage-deflate selected twice".into(),
                        ));
                    }
                    deflate = Some(config.accept_response(&ext)?);
                }
                _ => return Err(HandshakeError::UnexpectedExtension(ext.name)),
            }
        }
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *response.headers_mut() = headers;
        Ok(Some((
            UpgradeResponse {
                response,
                protocol,
                deflate,
            },
            len,
        )))
    }
}
