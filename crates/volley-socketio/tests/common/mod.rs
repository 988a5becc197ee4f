//! Raw Engine.IO / Socket.IO clients for the server tests: WebSocket through `volley::connect`,
//! long-polling through plain HTTP/1.1 requests. Every wait is bounded.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use volley::{MaybeTlsStream, Message, WebSocket};

/// How long any single wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(5);

/// Starts `io` on 127.0.0.1:0 and returns its address.
pub async fn start(io: volley_socketio::SocketIo) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { io.serve(listener).await });
    addr
}

/// One frame the server sent (Engine.IO message packets only; pings are answered).
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A Socket.IO packet in text form (the Engine.IO `4` prefix removed).
    Text(String),
    /// A binary attachment.
    Binary(Bytes),
}

impl Frame {
    pub fn text(&self) -> &str {
        match self {
            Frame::Text(t) => t,
            Frame::Binary(b) => panic!("expected a text frame, got binary {b:?}"),
        }
    }
}

/// A raw Engine.IO client over WebSocket.
pub struct WsClient {
    ws: WebSocket<MaybeTlsStream>,
    /// The Engine.IO open packet's JSON.
    pub open: serde_json::Value,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr) -> WsClient {
        WsClient::connect_with_query(addr, "").await
    }

    /// Connects with extra query parameters (`a=b&c=d`).
    pub async fn connect_with_query(addr: SocketAddr, query: &str) -> WsClient {
        let extra = if query.is_empty() {
            String::new()
        } else {
            format!("&{query}")
        };
        let url = format!("ws://{addr}/socket.io/?EIO=4&transport=websocket{extra}");
        let mut ws = timeout(WAIT, volley::connect(&url))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let first = timeout(WAIT, ws.recv())
            .await
            .expect("open packet timed out")
            .expect("closed before the open packet")
            .expect("error before the open packet");
        let Message::Text(t) = first else {
            panic!("expected the open packet, got {first:?}")
        };
        let open = t
            .as_str()
            .strip_prefix('0')
            .expect("open packet starts with 0");
        WsClient {
            ws,
            open: serde_json::from_str(open).unwrap(),
        }
    }

    /// Connects and joins namespace `"/"` (no auth); returns the client and its socket id.
    /// Consumes the `auth` event of the conformance server when `conformance` is true.
    pub async fn connect_ns(addr: SocketAddr, connect: &str) -> (WsClient, String) {
        let mut c = WsClient::connect(addr).await;
        c.send(connect).await;
        let reply = c.recv_text().await;
        let sid = connect_sid(&reply);
        (c, sid)
    }

    /// Sends one Socket.IO packet text (the Engine.IO `4` prefix is added).
    pub async fn send(&mut self, sio: &str) {
        self.ws
            .send(Message::text(format!("4{sio}")))
            .await
            .unwrap();
    }

    /// Sends a raw Engine.IO text frame.
    pub async fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Sends a binary attachment.
    pub async fn send_binary(&mut self, data: &[u8]) {
        self.ws
            .send(Message::binary(Bytes::copy_from_slice(data)))
            .await
            .unwrap();
    }

    /// The next Socket.IO frame, within `WAIT`; `None` when the connection closed (Engine.IO
    /// close packet, WebSocket close or end of stream).
    pub async fn next(&mut self) -> Option<Frame> {
        self.next_within(WAIT)
            .await
            .expect("no frame from the server in time")
    }

    /// Like `next`, but `Err(())` when nothing came within `d`.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<Frame>, ()> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.ws.recv()).await {
                Err(_) => return Err(()),
                Ok(None) | Ok(Some(Err(_))) => return Ok(None),
                Ok(Some(Ok(m))) => m,
            };
            match msg {
                Message::Text(t) => {
                    let t = t.as_str();
                    if t == "2" {
                        self.ws.send(Message::text("3")).await.ok();
                    } else if t == "1" {
                        return Ok(None);
                    } else if let Some(sio) = t.strip_prefix('4') {
                        return Ok(Some(Frame::Text(sio.to_owned())));
                    } else if t == "6" {
                        continue;
                    } else {
                        panic!("unexpected Engine.IO packet {t:?}");
                    }
                }
                Message::Binary(b) => return Ok(Some(Frame::Binary(b))),
                Message::Close(_) => return Ok(None),
                Message::Ping(_) | Message::Pong(_) => {}
            }
        }
    }

    /// The next frame, which must be text.
    pub async fn recv_text(&mut self) -> String {
        match self.next().await {
            Some(Frame::Text(t)) => t,
            other => panic!("expected a text packet, got {other:?}"),
        }
    }

    /// The next frame, which must be binary.
    pub async fn recv_binary(&mut self) -> Bytes {
        match self.next().await {
            Some(Frame::Binary(b)) => b,
            other => panic!("expected a binary attachment, got {other:?}"),
        }
    }

    /// Waits (bounded) for the server to close the connection, skipping other frames.
    pub async fn expect_closed(&mut self) {
        for _ in 0..100 {
            if self.next().await.is_none() {
                return;
            }
        }
        panic!("the server kept sending instead of closing");
    }

    /// Closes the WebSocket.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// The sid in a CONNECT reply `40{"sid":"…"}` or `40/nsp,{"sid":"…"}`.
pub fn connect_sid(reply: &str) -> String {
    assert!(
        reply.starts_with('0'),
        "expected a CONNECT reply, got {reply:?}"
    );
    let json = &reply[reply.find('{').expect("CONNECT reply has a JSON object")..];
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["sid"].as_str().expect("sid is a string").to_owned()
}

/// Splits a Socket.IO text packet `<type>[/nsp,][id]<json>` into (type+nsp+id prefix, JSON).
pub fn split_json(packet: &str) -> (&str, serde_json::Value) {
    let i = packet
        .find(['[', '{'])
        .unwrap_or_else(|| panic!("no JSON in {packet:?}"));
    (&packet[..i], serde_json::from_str(&packet[i..]).unwrap())
}

/// One HTTP/1.1 request with `Connection: close`; returns the status, headers and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String, Vec<u8>) {
    let fut = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        if let Some(body) = body {
            req.push_str(&format!(
                "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        if let Some(body) = body {
            stream.write_all(body).await.unwrap();
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        raw
    };
    let raw = timeout(WAIT * 2, fut)
        .await
        .expect("HTTP request timed out");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("no end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    (status, head, body)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..line_end]).unwrap().trim(), 16)
                .unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[line_end + 2..line_end + 2 + size]);
        body = &body[line_end + 2 + size + 2..];
    }
}

/// A raw Engine.IO client over HTTP long-polling.
pub struct PollClient {
    addr: SocketAddr,
    pub sid: String,
}

impl PollClient {
    pub async fn connect(addr: SocketAddr) -> PollClient {
        let (status, _, body) =
            http(addr, "GET", "/socket.io/?EIO=4&transport=polling", None).await;
        assert_eq!(status, 200);
        let body = String::from_utf8(body).unwrap();
        let open: serde_json::Value =
            serde_json::from_str(body.strip_prefix('0').expect("open packet")).unwrap();
        PollClient {
            addr,
            sid: open["sid"].as_str().unwrap().to_owned(),
        }
    }

    /// POSTs Socket.IO packets (each gets the Engine.IO `4` prefix; joined by `\x1e`).
    pub async fn send(&self, packets: &[&str]) -> u16 {
        let body: Vec<String> = packets.iter().map(|p| format!("4{p}")).collect();
        self.send_raw(&body.join("\x1e")).await
    }

    /// POSTs a raw Engine.IO payload.
    pub async fn send_raw(&self, body: &str) -> u16 {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid);
        http(self.addr, "POST", &path, Some(body.as_bytes()))
            .await
            .0
    }

    /// One GET: the Engine.IO packets of the payload (pings answered by the caller).
    pub async fn poll(&self) -> (u16, Vec<String>) {
        let path = format!("/socket.io/?EIO=4&transport=polling&sid={}", self.sid);
        let (status, _, body) = http(self.addr, "GET", &path, None).await;
        let body = String::from_utf8(body).unwrap();
        (status, body.split('\x1e').map(str::to_owned).collect())
    }

    /// GETs until a Socket.IO packet arrives (answering pings); returns the Socket.IO packets
    /// of that payload.
    pub async fn recv(&self) -> Vec<String> {
        for _ in 0..20 {
            let (status, packets) = self.poll().await;
            assert_eq!(status, 200, "poll failed: {packets:?}");
            let mut out = Vec::new();
            for p in packets {
                if p == "2" {
                    self.send_raw("3").await;
                } else if let Some(sio) = p.strip_prefix('4') {
                    out.push(sio.to_owned());
                } else if p == "1" {
                    panic!("session closed");
                }
            }
            if !out.is_empty() {
                return out;
            }
        }
        panic!("no Socket.IO packet after 20 polls");
    }
}
