//! Shared test harness: an [`Engine`] served by hyper on 127.0.0.1:0, a raw HTTP/1.1 client over
//! a `TcpStream`, and WebSocket helpers.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use volley::{Message, WebSocket};
use volley_engineio::{Engine, EngineConfig, Session};

/// Every wait in the tests ends within this.
pub const WAIT: Duration = Duration::from_secs(10);

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub engine: Engine,
    sessions: mpsc::UnboundedReceiver<Session>,
}

/// Serves an engine with `config` on 127.0.0.1:0 (HTTP/1.1 with upgrades).
pub async fn serve(config: EngineConfig) -> TestServer {
    let (tx, sessions) = mpsc::unbounded_channel();
    let engine = Engine::new(config, move |session| {
        let _ = tx.send(session);
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = engine.clone();
    tokio::spawn(async move {
        while let Ok((stream, peer)) = listener.accept().await {
            let engine = service.clone();
            // The peer's address goes into the request extensions for RequestInfo::remote_addr.
            let service = hyper::service::service_fn(move |mut request: http::Request<_>| {
                request.extensions_mut().insert(peer);
                let engine = engine.clone();
                async move { Ok::<_, std::convert::Infallible>(engine.handle(request).await) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    TestServer {
        addr,
        engine,
        sessions,
    }
}

impl TestServer {
    /// The next session the engine handed to the application.
    pub async fn session(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("no session within the wait")
            .expect("engine dropped")
    }

    /// Waits until the session table is empty.
    pub async fn wait_no_sessions(&self) {
        wait_for(|| self.engine.session_count() == 0).await;
    }

    /// GET with `query` on `/socket.io/`.
    pub async fn get(&self, query: &str) -> Reply {
        request(self.addr, "GET", &format!("/socket.io/?{query}"), &[], b"").await
    }

    /// POST `body` with `query` on `/socket.io/`.
    pub async fn post(&self, query: &str, body: &[u8]) -> Reply {
        request(
            self.addr,
            "POST",
            &format!("/socket.io/?{query}"),
            &[("Content-Type", "text/plain;charset=UTF-8")],
            body,
        )
        .await
    }

    /// A polling handshake: returns the sid and the open packet's JSON.
    pub async fn handshake(&self) -> (String, serde_json::Value) {
        let reply = self.get("EIO=4&transport=polling").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let text = reply.text();
        let json_text = text.strip_prefix('0').expect("open packet");
        let json: serde_json::Value = serde_json::from_str(json_text).unwrap();
        (json["sid"].as_str().unwrap().to_owned(), json)
    }

    /// A WebSocket to `/socket.io/` with `query`.
    pub async fn ws(&self, query: &str) -> WebSocket<volley::MaybeTlsStream> {
        let url = format!("ws://{}/socket.io/?{query}", self.addr);
        tokio::time::timeout(WAIT, volley::connect(&url))
            .await
            .expect("connect timed out")
            .expect("connect failed")
    }
}

/// Polls `condition` every 10 ms until it holds; panics after [`WAIT`].
pub async fn wait_for(mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within the wait"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// Asserts Node engine.io's JSON error answer.
    pub fn assert_error(&self, status: u16, code: u64, message: &str) {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.text(),
            format!(r#"{{"code":{code},"message":"{message}"}}"#)
        );
    }
}

impl Reply {
    /// Asserts Node engine.io's answer to a refused WebSocket upgrade (`abortUpgrade`): 400 with
    /// the message as a `text/html` body.
    pub fn assert_upgrade_error(&self, message: &str) {
        assert_eq!(self.status, 400, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("text/html"));
        assert_eq!(self.text(), message);
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`), read to the end.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        let chunked = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("transfer-encoding"));
        if !chunked && (method == "POST" || !body.is_empty()) {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        parse_reply(&raw)
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .expect("HTTP request timed out")
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = std::str::from_utf8(&raw[..split]).unwrap();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    if let Some((_, len)) = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        body.truncate(len.parse().unwrap());
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// The next data frame of a WebSocket as text (binary frames as `<bin:..>`), skipping control
/// frames; `None` when it closed.
pub async fn next_frame(ws: &mut WebSocket<volley::MaybeTlsStream>) -> Option<Message> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.recv().await {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Some(m),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("no frame within the wait")
}

/// Waits for the WebSocket's close frame, skipping control frames; panics on a data frame (an
/// Engine.IO packet such as the close packet `1`) or when the connection ends without a close
/// frame. Returns the close frame's payload (`None`: no status code).
pub async fn next_close(ws: &mut WebSocket<volley::MaybeTlsStream>) -> Option<volley::CloseFrame> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.recv().await {
                Some(Ok(Message::Close(frame))) => return frame,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("expected the WebSocket close frame, got {other:?}"),
            }
        }
    })
    .await
    .expect("no close frame within the wait")
}

/// The next text frame; panics on anything else.
pub async fn next_text(ws: &mut WebSocket<volley::MaybeTlsStream>) -> String {
    match next_frame(ws).await {
        Some(Message::Text(t)) => t.as_str().to_owned(),
        other => panic!("expected a text frame, got {other:?}"),
    }
}

/// The headers of a WebSocket opening handshake, for raw requests.
pub const UPGRADE_HEADERS: &[(&str, &str)] = &[
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
];

/// A persistent HTTP/1.1 connection (keep-alive): requests on it reach the server without a TCP
/// handshake, as a browser's polling requests do.
pub struct KeepAlive {
    stream: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

impl KeepAlive {
    pub async fn connect(addr: SocketAddr) -> KeepAlive {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .unwrap();
        stream.set_nodelay(true).unwrap();
        KeepAlive {
            stream,
            addr,
            buf: Vec::new(),
        }
    }

    /// Sends one request (without waiting for the answer).
    pub async fn send(&mut self, method: &str, target: &str, body: &[u8]) {
        let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        if method == "POST" || !body.is_empty() {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.stream.write_all(&raw).await.unwrap();
    }

    /// Reads the next answer (its body delimited by `Content-Length`).
    pub async fn reply(&mut self) -> Reply {
        let read = async {
            loop {
                if let Some(split) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = parse_reply(&self.buf[..split + 4]);
                    let len: usize = head
                        .header("content-length")
                        .map_or(0, |l| l.parse().unwrap());
                    if self.buf.len() >= split + 4 + len {
                        let rest = self.buf.split_off(split + 4 + len);
                        let reply = parse_reply(&self.buf);
                        self.buf = rest;
                        return reply;
                    }
                }
                let mut chunk = [0u8; 4096];
                let n = self.stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the server closed the keep-alive connection");
                self.buf.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(WAIT, read)
            .await
            .expect("no HTTP answer within the wait")
    }

    /// One request and its answer.
    pub async fn request(&mut self, method: &str, target: &str, body: &[u8]) -> Reply {
        self.send(method, target, body).await;
        self.reply().await
    }
}
