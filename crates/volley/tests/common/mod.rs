//! Helpers shared by the integration tests: servers on loopback, a raw (hand-written) WebSocket
//! peer in both roles, frame encoding and decoding, and bounded waits.
//!
//! Every wait goes through [`within`] (or an explicit `tokio::time::timeout`), so a hung test
//! fails instead of hanging.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use volley::proto::frame::FrameHeader;
use volley::proto::mask::apply_mask;
use volley::{Config, Message, Server, WebSocket};

mod pki;
#[allow(unused_imports)] // not every test binary uses TLS
pub use pki::Pki;

/// The bound on every wait that is expected to succeed quickly.
pub const WAIT: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it takes longer than [`WAIT`].
#[track_caller]
pub fn within<F: Future>(f: F) -> impl Future<Output = F::Output> {
    within_for(WAIT, f)
}

/// Awaits `f`, failing the test if it takes longer than `limit`.
#[track_caller]
pub fn within_for<F: Future>(limit: Duration, f: F) -> impl Future<Output = F::Output> {
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(limit, f).await {
            Ok(out) => out,
            Err(_) => panic!("timed out after {limit:?} (waiting at {caller})"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------------------------

/// Starts a `volley::Server` on 127.0.0.1:0 with `config`, running `handler` per connection, in a
/// background task. Returns the address it listens on.
pub async fn start_server<F, Fut>(config: Config, handler: F) -> SocketAddr
where
    F: Fn(WebSocket<volley::MaybeTlsStream>, Request<()>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
        .config(config);
    let addr = server.local_addr().expect("local_addr");
    tokio::spawn(server.serve(handler));
    addr
}

/// An echo server with `config`: data messages are sent back; the handler keeps calling `recv`
/// until it returns `None` or an error.
pub async fn echo_server_with(config: Config) -> SocketAddr {
    start_server(config, |mut ws, _| async move {
        while let Some(Ok(message)) = ws.recv().await {
            if message.is_data() && ws.send(message).await.is_err() {
                break;
            }
        }
    })
    .await
}

/// An echo server with the default configuration.
pub async fn echo_server() -> SocketAddr {
    echo_server_with(Config::default()).await
}

/// What a recording server's handler saw, in order.
#[derive(Debug)]
pub enum Seen {
    /// A new connection, with its request.
    Open(Request<()>),
    /// One `recv()` result.
    Msg(Message),
    /// `recv()` returned an error.
    Err(volley::Error),
    /// `recv()` returned `None`.
    End,
}

/// A server that reports every `recv()` result (without echoing) through the returned channel,
/// until `recv()` returns `None`.
pub async fn recording_server(config: Config) -> (SocketAddr, mpsc::UnboundedReceiver<Seen>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let addr = start_server(config, move |mut ws, request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Seen::Open(request));
            loop {
                match ws.recv().await {
                    Some(Ok(m)) => {
                        let _ = tx.send(Seen::Msg(m));
                    }
                    Some(Err(e)) => {
                        let _ = tx.send(Seen::Err(e));
                    }
                    None => {
                        let _ = tx.send(Seen::End);
                        return;
                    }
                }
            }
        }
    })
    .await;
    (addr, rx)
}

/// Connects a volley client to `addr` with `config`.
pub async fn client(addr: SocketAddr, config: Config) -> WebSocket<volley::MaybeTlsStream> {
    within(
        volley::ClientBuilder::new(format!("ws://{addr}/"))
            .config(config)
            .connect(),
    )
    .await
    .expect("client connect")
    .0
}

/// Receives the next item or fails the test (timeout, `None`, or an error).
#[track_caller]
pub fn next_msg<S>(ws: &mut WebSocket<S>) -> impl Future<Output = Message> + '_
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let caller = std::panic::Location::caller();
    async move {
        match tokio::time::timeout(WAIT, ws.recv()).await {
            Ok(Some(Ok(m))) => m,
            Ok(other) => panic!("expected a message at {caller}, got {other:?}"),
            Err(_) => panic!("timed out waiting for a message at {caller}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Frames by hand
// ---------------------------------------------------------------------------------------------

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Encodes a frame by hand: `fin`, `opcode` (any 4 bits), optional masking key, payload.
pub fn frame(fin: bool, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | (opcode & 0x0F)];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.push(mask_bit | n as u8),
        n @ 126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
    let body = out.len();
    out.extend_from_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut out[body..], key, 0);
    }
    out
}

/// A masked (client-to-server) frame with a fixed key.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, Some([0x37, 0xfa, 0x21, 0x3d]), payload)
}

/// An unmasked (server-to-client) frame.
pub fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, opcode, None, payload)
}

/// A close frame payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// A frame read off the wire, unmasked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub masked: bool,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// For a close frame: the code (if any) and the reason.
    pub fn close_code(&self) -> Option<u16> {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        (self.payload.len() >= 2).then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    pub fn close_reason(&self) -> String {
        assert_eq!(self.opcode, OP_CLOSE, "not a close frame: {self:?}");
        String::from_utf8(self.payload.get(2..).unwrap_or_default().to_vec()).expect("utf-8")
    }
}

/// A raw TCP peer with a read buffer (bytes read past a handshake or a frame stay in it).
pub struct Raw {
    pub stream: TcpStream,
    pub buf: Vec<u8>,
}

impl Raw {
    pub fn new(stream: TcpStream) -> Self {
        Self {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        within(self.stream.write_all(bytes))
            .await
            .expect("raw write");
    }

    /// Reads more bytes into the buffer; returns how many (0 at EOF).
    async fn fill(&mut self) -> std::io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one frame (waiting at most [`WAIT`]); panics on EOF or a malformed frame.
    pub async fn read_frame(&mut self) -> RawFrame {
        within(async {
            loop {
                if let Some((h, len)) = FrameHeader::parse(&self.buf).expect("valid frame header") {
                    let total = len + h.payload_len as usize;
                    if self.buf.len() >= total {
                        let mut payload = self.buf[len..total].to_vec();
                        if let Some(key) = h.mask {
                            apply_mask(&mut payload, key, 0);
                        }
                        self.buf.drain(..total);
                        return RawFrame {
                            fin: h.fin,
                            opcode: h.opcode.bits(),
                            masked: h.mask.is_some(),
                            payload,
                        };
                    }
                }
                let n = self.fill().await.expect("raw read");
                assert!(n > 0, "EOF while waiting for a frame (have {:?})", self.buf);
            }
        })
        .await
    }

    /// Reads frames until a close frame, which it returns.
    pub async fn read_close(&mut self) -> RawFrame {
        loop {
            let f = self.read_frame().await;
            if f.opcode == OP_CLOSE {
                return f;
            }
        }
    }

    /// Waits (at most `limit`) for the peer to close the TCP connection, discarding data; returns
    /// what was read. A connection reset counts as closed.
    pub async fn expect_eof_within(&mut self, limit: Duration) -> Vec<u8> {
        let start = self.buf.len();
        within_for(limit, async {
            loop {
                match self.fill().await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        self.buf[start..].to_vec()
    }

    /// Reads an HTTP head (up to and including the blank line) and returns it as a string; bytes
    /// after it stay in the buffer. Panics on EOF before the head is complete.
    pub async fn read_http_head(&mut self) -> String {
        within(async {
            loop {
                if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                    let head: Vec<u8> = self.buf.drain(..end + 4).collect();
                    return String::from_utf8(head).expect("ASCII head");
                }
                let n = self.fill().await.expect("read HTTP head");
                assert!(
                    n > 0,
                    "EOF inside HTTP head: {:?}",
                    String::from_utf8_lossy(&self.buf)
                );
            }
        })
        .await
    }

    /// Reads one HTTP response, its head and its `Content-Length` body, from a connection that
    /// may stay open; bytes after it stay in the buffer.
    pub async fn read_response(&mut self) -> (String, String) {
        let head = self.read_http_head().await;
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        within(async {
            while self.buf.len() < length {
                let n = self.fill().await.expect("read body");
                assert!(n > 0, "EOF inside the body");
            }
        })
        .await;
        let body: Vec<u8> = self.buf.drain(..length).collect();
        (head, String::from_utf8_lossy(&body).into_owned())
    }

    /// Reads everything until EOF (or reset), bounded by [`WAIT`], and returns it as a string
    /// (including anything already buffered).
    pub async fn read_all_string(&mut self) -> String {
        self.expect_eof_within(WAIT).await;
        String::from_utf8_lossy(&std::mem::take(&mut self.buf)).into_owned()
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The key of RFC 6455 §1.3 and its accept value.
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A valid client handshake request for `addr`.
pub fn upgrade_request(addr: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Opens a raw TCP connection to `addr` without any handshake.
pub async fn raw_tcp(addr: SocketAddr) -> Raw {
    let stream = within(TcpStream::connect(addr)).await.expect("tcp connect");
    stream.set_nodelay(true).expect("nodelay");
    Raw::new(stream)
}

/// Opens a raw connection to `addr` and performs the client handshake by hand, checking the 101.
pub async fn raw_client(addr: SocketAddr) -> Raw {
    let mut raw = raw_tcp(addr).await;
    raw.write(upgrade_request(addr).as_bytes()).await;
    let head = raw.read_http_head().await;
    assert!(
        head.starts_with("HTTP/1.1 101 "),
        "expected 101, got {head:?}"
    );
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
        "bad accept in {head:?}"
    );
    raw
}

/// A listener for a scripted raw "server" on 127.0.0.1:0.
pub async fn raw_listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    (listener, addr)
}

/// Accepts one TCP connection and reads the client's handshake request; returns the connection and
/// the request head.
pub async fn raw_accept_request(listener: &TcpListener) -> (Raw, String) {
    let (stream, _) = within(listener.accept()).await.expect("accept");
    stream.set_nodelay(true).expect("nodelay");
    let mut raw = Raw::new(stream);
    let head = raw.read_http_head().await;
    (raw, head)
}

/// The `Sec-WebSocket-Key` of a request head.
pub fn request_key(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("request has Sec-WebSocket-Key")
}

/// The 101 response for a request head.
pub fn switching_protocols(head: &str) -> String {
    let accept = volley::proto::handshake::accept_key(request_key(head).as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// Accepts one connection and completes the server handshake by hand.
pub async fn raw_server_accept(listener: &TcpListener) -> Raw {
    let (mut raw, head) = raw_accept_request(listener).await;
    raw.write(switching_protocols(&head).as_bytes()).await;
    raw
}

/// Raw DEFLATE of `data` ending in a sync flush (the `00 00 ff ff` tail kept), continuing
/// `c`'s stream: what a peer's compressor produces for one message.
pub fn sync_compress(c: &mut flate2::Compress, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    let start = c.total_in();
    loop {
        let done = (c.total_in() - start) as usize;
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
        }
        c.compress_vec(&data[done..], &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        if (c.total_in() - start) as usize == data.len() && out.len() < out.capacity() {
            break;
        }
    }
    out
}
