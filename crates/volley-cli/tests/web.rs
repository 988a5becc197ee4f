//! The web side of `volley serve` against the binary: the page, server-sent events at
//! `/events`, resuming `/chat` topics, `/metrics` (parsed by the Prometheus client library's
//! text parser), `/healthz`, the config file and the `--no-*` switches.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use volley::{MaybeTlsStream, Message, WebSocket};

mod common;

use common::{Serve, WAIT, volley};

type Client = WebSocket<MaybeTlsStream>;

// ---- HTTP by hand -------------------------------------------------------------------------

/// A response read to its end.
struct Response {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Splits a response head into its status and headers (names lowercased).
fn parse_head(head: &str) -> (u16, HashMap<String, String>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Removes the first complete chunk of a chunked body from `raw`: `Some(Some(data))`, or
/// `Some(None)` for the last chunk; `None` until one is complete.
fn take_chunk(raw: &mut Vec<u8>) -> Option<Option<Vec<u8>>> {
    let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
    let size_line = std::str::from_utf8(&raw[..line_end]).expect("chunk size");
    let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
        .expect("hex chunk size");
    if size == 0 {
        return Some(None);
    }
    let start = line_end + 2;
    if raw.len() < start + size + 2 {
        return None;
    }
    let data = raw[start..start + size].to_vec();
    raw.drain(..start + size + 2);
    Some(Some(data))
}

/// Sends a request (HTTP/1.1, `Connection: close`) and reads the whole response.
async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Response {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.expect("read");
        raw
    };
    let raw = timeout(WAIT, exchange).await.expect("response in time");
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("head") + 4;
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..end]));
    let mut rest = raw[end..].to_vec();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|t| t == "chunked")
    {
        let mut body = Vec::new();
        while let Some(Some(chunk)) = take_chunk(&mut rest) {
            body.extend(chunk);
        }
        body
    } else {
        rest
    };
    Response {
        status,
        headers,
        body,
    }
}

async fn get(addr: SocketAddr, target: &str) -> Response {
    request(addr, "GET", target, &[]).await
}

// ---- An EventSource, by hand --------------------------------------------------------------

/// One server-sent event.
#[derive(Debug, Clone, PartialEq)]
struct Event {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

/// An open `text/event-stream` response.
struct EventStream {
    stream: TcpStream,
    raw: Vec<u8>,
    text: Vec<u8>,
    ended: bool,
    /// The id of the last event that had one (what a browser sends back as Last-Event-ID).
    last_id: Option<String>,
}

impl EventStream {
    /// `GET target` with `Last-Event-ID: last` if given; the stream, or the response head and
    /// body of a refusal.
    async fn open(addr: SocketAddr, target: &str, last: Option<&str>) -> Result<Self, Response> {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let mut head =
            format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(last) = last {
            head.push_str(&format!("Last-Event-ID: {last}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut raw = Vec::new();
        let end = timeout(WAIT, async {
            loop {
                if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    return end + 4;
                }
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed before the response head");
                raw.extend_from_slice(&buf[..n]);
            }
        })
        .await
        .expect("response head in time");
        let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..end]));
        raw.drain(..end);
        if status != 200 {
            // The refusal's body (by its length: the connection may stay open).
            let length: usize = headers
                .get("content-length")
                .and_then(|l| l.parse().ok())
                .expect("a refusal with a Content-Length");
            timeout(WAIT, async {
                while raw.len() < length {
                    let mut buf = [0u8; 4096];
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                    }
                }
            })
            .await
            .expect("the refusal's body in time");
            let body = raw;
            return Err(Response {
                status,
                headers,
                body,
            });
        }
        assert_eq!(headers["content-type"], "text/event-stream; charset=utf-8");
        assert_eq!(headers["transfer-encoding"], "chunked");
        Ok(Self {
            stream,
            raw,
            text: Vec::new(),
            ended: false,
            last_id: None,
        })
    }

    /// The next event (comments skipped), or `None` once the server ended the stream.
    async fn next(&mut self) -> Option<Event> {
        timeout(WAIT, self.next_inner())
            .await
            .expect("an event in time")
    }

    async fn next_inner(&mut self) -> Option<Event> {
        loop {
            while let Some(end) = self.text.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.text.drain(..end + 2).collect()).expect("UTF-8");
                let mut event = Event {
                    event: None,
                    id: None,
                    data: String::new(),
                };
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = Some(value.to_owned()),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => data.push(value),
                        "retry" => {}
                        other => panic!("unknown field {other:?}"),
                    }
                }
                if data.is_empty() && event.event.is_none() {
                    continue; // a comment
                }
                event.data = data.join("\n");
                if event.id.is_some() {
                    self.last_id = event.id.clone();
                }
                return Some(event);
            }
            if self.ended {
                return None;
            }
            match take_chunk(&mut self.raw) {
                Some(Some(chunk)) => {
                    self.text.extend(chunk);
                    continue;
                }
                Some(None) => {
                    self.ended = true;
                    continue;
                }
                None => {}
            }
            let mut buf = [0u8; 16 * 1024];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => self.ended = true,
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }
}

// ---- /chat clients ------------------------------------------------------------------------

async fn connect(addr: SocketAddr, path: &str) -> Client {
    timeout(WAIT, volley::connect(&format!("ws://{addr}{path}")))
        .await
        .expect("connect timed out")
        .expect("connect")
}

async fn recv_json(ws: &mut Client) -> Value {
    match timeout(WAIT, ws.recv()).await.expect("recv timed out") {
        Some(Ok(Message::Text(text))) => serde_json::from_str(&text).expect("JSON"),
        other => panic!("expected a text message, got {other:?}"),
    }
}

async fn send_json(ws: &mut Client, value: Value) {
    timeout(WAIT, ws.send(value.to_string()))
        .await
        .expect("send timed out")
        .expect("send");
}

/// A chat client past its `{"id": n}`.
async fn chat(addr: SocketAddr) -> (Client, u64) {
    let mut ws = connect(addr, "/chat").await;
    let id = recv_json(&mut ws).await["id"].as_u64().expect("id");
    (ws, id)
}

/// Joins `topic` and waits for the answer.
async fn join(ws: &mut Client, topic: &str) {
    send_json(ws, json!({"join": topic})).await;
    assert_eq!(recv_json(ws).await["joined"], topic);
}

/// A publisher that has joined `topic`: publishes and waits for its own publication to come
/// back (so that every subscriber was offered it); returns the publication.
async fn publish(ws: &mut Client, topic: &str, data: Value) -> Value {
    send_json(ws, json!({"topic": topic, "data": data})).await;
    loop {
        let got = recv_json(ws).await;
        if got["topic"] == topic && got["data"] == data {
            return got;
        }
    }
}

// ---- the tests ----------------------------------------------------------------------------

#[tokio::test]
async fn browsers_get_the_page_and_websocket_clients_at_root_the_echo() {
    let server = Serve::start().await;
    assert!(
        server.listening.contains("in a browser"),
        "{}",
        server.listening
    );
    let page = request(
        server.addr,
        "GET",
        "/",
        &[("Accept", "text/html,*/*;q=0.8")],
    )
    .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), "text/html; charset=utf-8");
    let csp = page.header("content-security-policy");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    let html = page.text();
    assert!(html.contains("<html"), "{html}");
    // Every file the page refers to is there, with its type.
    for reference in html
        .split(['"', '\''])
        .filter(|r| r.starts_with("/assets/"))
    {
        let file = get(server.addr, reference).await;
        assert_eq!(file.status, 200, "{reference}");
        let expected = match reference.rsplit_once('.').map(|(_, e)| e) {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            _ => continue,
        };
        assert_eq!(file.header("content-type"), expected, "{reference}");
        assert!(!file.header("etag").is_empty());
    }
    let index = get(server.addr, "/assets/index.html").await;
    assert_eq!(index.body, page.body);
    assert_eq!(get(server.addr, "/assets/nope.js").await.status, 404);
    // Other HTTP clients at / get an overview; unknown pages 404.
    let plain = get(server.addr, "/").await;
    assert_eq!(plain.status, 200);
    assert!(plain.text().contains("/events"), "{}", plain.text());
    assert_eq!(get(server.addr, "/no/such/page").await.status, 404);
    assert_eq!(get(server.addr, "/healthz").await.text(), "ok\n");
    // A WebSocket client at / still gets the echo, and on any other path.
    for path in ["/", "/anything"] {
        let mut ws = connect(server.addr, path).await;
        ws.send("hello").await.unwrap();
        let echoed = timeout(WAIT, ws.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(echoed, Message::text("hello"));
    }
}

#[tokio::test]
async fn events_carry_topic_publications_and_resume_with_last_event_id_exactly_once() {
    let server = Serve::start().await;
    let (mut publisher, publisher_id) = chat(server.addr).await;
    for topic in ["a", "b", "c"] {
        join(&mut publisher, topic).await;
    }
    let mut stream = EventStream::open(server.addr, "/events?topic=a&topic=b", None)
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    let mut expected = Vec::new();
    // JSON with line breaks of its own (kept verbatim): several data lines, joined back.
    let raw = "{\"topic\": \"a\", \"data\": {\n  \"multi\": \"line\"\n}}";
    publisher.send(raw).await.unwrap();
    loop {
        let got = recv_json(&mut publisher).await;
        if got["data"] == json!({"multi": "line"}) {
            expected.push(got);
            break;
        }
    }
    for i in 0..12 {
        let topic = ["a", "b", "c"][i % 3];
        let publication =
            publish(&mut publisher, topic, json!({"n": i, "text": "two\nlines"})).await;
        if topic != "c" {
            expected.push(publication);
        }
    }
    // What a WebSocket subscriber gets, with the offset as id, nothing of topic c.
    for publication in &expected[..5] {
        let event = stream.next().await.expect("an event");
        assert_eq!(event.event, None);
        assert_eq!(
            event.id.as_deref(),
            Some(publication["offset"].to_string().as_str())
        );
        assert_eq!(&event.json(), publication);
        assert_eq!(event.json()["from"], publisher_id);
    }
    // The client goes away after five; more is published meanwhile.
    let last = stream.last_id.clone().expect("an id");
    drop(stream);
    for i in 12..18 {
        let topic = ["a", "b", "c"][i % 3];
        let publication = publish(&mut publisher, topic, json!({"n": i})).await;
        if topic != "c" {
            expected.push(publication);
        }
    }
    // Back with Last-Event-ID: the rest, in order, once each; then what follows.
    let mut stream = EventStream::open(server.addr, "/events?topic=a&topic=b", Some(&last))
        .await
        .unwrap_or_else(|r| panic!("{} {}", r.status, r.text()));
    let live = publish(&mut publisher, "b", json!("live")).await;
    expected.push(live);
    for publication in &expected[5..] {
        assert_eq!(&stream.next().await.expect("an event").json(), publication);
    }
    // The same with the lastEventId parameter (for clients that cannot set headers).
    let target = format!("/events?topic=b&topic=a&lastEventId={last}");
    let mut again = EventStream::open(server.addr, &target, None)
        .await
        .ok()
        .unwrap();
    for publication in &expected[5..] {
        assert_eq!(&again.next().await.expect("an event").json(), publication);
    }
}

#[tokio::test]
async fn garbage_or_too_old_event_ids_get_a_gap_event_then_live_events() {
    let server = Serve::start_with(&["--history-messages", "3"]).await;
    let (mut publisher, _) = chat(server.addr).await;
    join(&mut publisher, "t").await;
    let first = publish(&mut publisher, "t", json!(0)).await;
    for i in 1..6 {
        publish(&mut publisher, "t", json!(i)).await;
    }
    let first = first["offset"].to_string();
    for (last, after) in [
        ("garbage", Value::Null),
        ("-1", Value::Null),
        ("99999999999999999999999", Value::Null),
        (first.as_str(), json!(first.parse::<u64>().unwrap())),
        ("0", json!(0)),
    ] {
        let mut stream = EventStream::open(server.addr, "/events?topic=t", Some(last))
            .await
            .unwrap_or_else(|r| panic!("{last}: {} {}", r.status, r.text()));
        let gap = stream.next().await.expect("the gap event");
        assert_eq!(gap.event.as_deref(), Some("gap"), "{last}");
        assert_eq!(gap.id, None);
        assert_eq!(gap.json(), json!({"topic": "t", "after": after}), "{last}");
        // Then live, nothing replayed.
        let live = publish(&mut publisher, "t", json!(last)).await;
        assert_eq!(stream.next().await.expect("live").json(), live, "{last}");
    }
    // Within the history: no gap.
    let recent = publish(&mut publisher, "t", json!("recent")).await;
    let newest = publish(&mut publisher, "t", json!("newest")).await;
    let last = recent["offset"].to_string();
    let mut stream = EventStream::open(server.addr, "/events?topic=t", Some(&last))
        .await
        .ok()
        .unwrap();
    assert_eq!(stream.next().await.expect("replayed").json(), newest);
}

#[tokio::test]
async fn bad_event_stream_requests_get_400_with_a_reason() {
    let server = Serve::start().await;
    let oversize = format!("/events?topic=a&pad={}", "x".repeat(5_000));
    let many: Vec<String> = (0..65).map(|i| format!("topic=t{i}")).collect();
    let many = format!("/events?{}", many.join("&"));
    let long = format!("/events?topic={}", "x".repeat(129));
    for (target, reason) in [
        (oversize.as_str(), "longer than"),
        (many.as_str(), "more than 64 topics"),
        (long.as_str(), "longer than 128 bytes"),
        ("/events", "no topic"),
        ("/events?topic=", "empty"),
        ("/events?topic=a%01b", "control character"),
        ("/events?topic=%E0%80", "not UTF-8"),
        ("/events?topic=%4", "malformed"),
    ] {
        let refused = match EventStream::open(server.addr, target, None).await {
            Err(refused) => refused,
            Ok(_) => panic!("{target}: accepted"),
        };
        assert_eq!(refused.status, 400, "{target}");
        assert_eq!(refused.header("content-type"), "text/plain; charset=utf-8");
        assert!(
            refused.text().contains(reason),
            "{target}: {}",
            refused.text()
        );
    }
    // Past the server's 8 KiB request line: 414, before any endpoint.
    let huge = format!("/events?topic=a&pad={}", "x".repeat(10_000));
    let refused = get(server.addr, &huge).await;
    assert_eq!(refused.status, 414);
    assert!(refused.text().contains("longer than"), "{}", refused.text());
    let post = request(
        server.addr,
        "POST",
        "/events?topic=a",
        &[("Content-Length", "0")],
    )
    .await;
    assert_eq!(post.status, 405);
    // The server is fine.
    assert_eq!(get(server.addr, "/healthz").await.status, 200);
}

#[tokio::test]
async fn a_slow_event_stream_is_dropped_while_others_keep_up_and_then_resumes() {
    let server = Serve::start().await;
    let (mut publisher, _) = chat(server.addr).await;
    join(&mut publisher, "feed").await;
    let mut slow = EventStream::open(server.addr, "/events?topic=feed", None)
        .await
        .ok()
        .unwrap();
    let mut fast = EventStream::open(server.addr, "/events?topic=feed", None)
        .await
        .ok()
        .unwrap();
    const TOTAL: usize = 400;
    let reader = tokio::spawn(async move {
        let mut offsets = Vec::new();
        while offsets.len() < TOTAL {
            let event = fast.next().await.expect("the fast reader's stream goes on");
            offsets.push(event.json()["offset"].as_u64().unwrap());
        }
        offsets
    });
    // 400 publications of 16 KiB: far past what the hub queues for one stream (1 MiB) and
    // what the sockets buffer.
    let pad = "x".repeat(16 * 1024);
    let mut published = Vec::new();
    for i in 0..TOTAL {
        let publication = publish(&mut publisher, "feed", json!({"n": i, "pad": pad})).await;
        published.push(publication["offset"].as_u64().unwrap());
    }
    let fast_offsets = timeout(WAIT, reader).await.unwrap().unwrap();
    assert_eq!(
        fast_offsets, published,
        "the fast reader got everything, in order"
    );
    // The slow one was closed (the response ended) after some of it.
    let mut seen = Vec::new();
    while let Some(event) = slow.next().await {
        seen.push(event.json()["offset"].as_u64().unwrap());
    }
    assert!(seen.len() < TOTAL, "the slow reader was not dropped");
    assert_eq!(seen, published[..seen.len()], "what it got came in order");
    let metrics = get(server.addr, "/metrics").await.text();
    assert!(
        metrics.contains("volley_hub_slow_consumers_closed_total 1"),
        "{metrics}"
    );
    // It comes back with its last id: what it missed (a queue's worth discarded, and more)
    // does not fit a queue, so it is told of a gap, then gets what follows.
    let last = slow.last_id.clone().expect("it got at least one event");
    let mut back = EventStream::open(server.addr, "/events?topic=feed", Some(&last))
        .await
        .ok()
        .unwrap();
    let gap = back.next().await.expect("a gap event");
    assert_eq!(gap.event.as_deref(), Some("gap"));
    let live = publish(&mut publisher, "feed", json!("after")).await;
    assert_eq!(back.next().await.expect("live").json(), live);
}

/// Kills the server's side of the TCP connection whose client end is `client` (as a server
/// that drops a client: the client sees a reset), with `ss -K`.
fn drop_on_the_server(client: SocketAddr) {
    let output = std::process::Command::new("ss")
        .args([
            "-K",
            "dst",
            &client.ip().to_string(),
            "dport",
            "=",
            &client.port().to_string(),
        ])
        .output()
        .expect("ss (iproute2)");
    let killed = String::from_utf8_lossy(&output.stdout).lines().count();
    assert!(killed >= 2, "ss -K killed nothing: {output:?}");
}

#[tokio::test]
async fn an_event_stream_dropped_by_the_server_resumes_without_loss_or_duplicates() {
    let server = Serve::start().await;
    let (mut publisher, _) = chat(server.addr).await;
    join(&mut publisher, "t").await;
    let mut published = Vec::new();
    let mut stream = EventStream::open(server.addr, "/events?topic=t", None)
        .await
        .ok()
        .unwrap();
    let mut received = Vec::new();
    for round in 0..5 {
        for i in 0..20 {
            let publication = publish(&mut publisher, "t", json!([round, i])).await;
            published.push(publication);
        }
        // Read part of what was published, then the server drops the stream.
        for _ in 0..10 {
            received.push(stream.next().await.expect("an event").json());
        }
        drop_on_the_server(stream.stream.local_addr().unwrap());
        let last = stream.last_id.clone().expect("an id");
        // Published while the client is away.
        for i in 20..25 {
            published.push(publish(&mut publisher, "t", json!([round, i])).await);
        }
        stream = EventStream::open(server.addr, "/events?topic=t", Some(&last))
            .await
            .ok()
            .unwrap();
        // Up to what was published so far, then the next round.
        while received.len() < published.len() {
            let event = stream.next().await.expect("an event");
            assert_eq!(event.event, None, "no gap");
            received.push(event.json());
        }
    }
    assert_eq!(received, published, "everything once, in order");
}

#[tokio::test]
async fn chat_resume_is_exactly_once_and_in_order_across_forced_disconnects() {
    let server = Serve::start().await;
    let (mut publisher, _) = chat(server.addr).await;
    const TOTAL: u64 = 1000;
    const DROPS: u64 = 20;
    // Subscribed before the first publication.
    let (mut first, _) = chat(server.addr).await;
    join(&mut first, "stream").await;
    let mut first = Some(first);
    let publishing = tokio::spawn(async move {
        for n in 0..TOTAL {
            send_json(&mut publisher, json!({"topic": "stream", "data": n})).await;
            if n % 10 == 0 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        publisher
    });
    let mut received: Vec<u64> = Vec::new();
    let mut last_offset: Option<u64> = None;
    let mut drops = 0;
    let mut gaps = 0;
    let run = async {
        while received.len() < TOTAL as usize {
            let mut ws = match first.take() {
                Some(ws) => ws,
                None => chat(server.addr).await.0,
            };
            match last_offset {
                None => {}
                Some(after) => {
                    send_json(&mut ws, json!({"join": "stream", "after": after})).await;
                    // The answer comes before anything replayed.
                    let answer = recv_json(&mut ws).await;
                    assert_eq!(answer["joined"], "stream", "{answer}");
                    if answer["resumed"] != true {
                        gaps += 1;
                    }
                }
            }
            // Read a share of the stream, then drop the connection without a close handshake.
            let share = if drops < DROPS {
                TOTAL / (DROPS + 1)
            } else {
                TOTAL
            };
            for _ in 0..share {
                if received.len() == TOTAL as usize {
                    break;
                }
                let publication = recv_json(&mut ws).await;
                received.push(publication["data"].as_u64().expect("a number"));
                last_offset = Some(publication["offset"].as_u64().expect("an offset"));
            }
            drops += 1;
            drop(ws);
        }
    };
    timeout(Duration::from_secs(60), run)
        .await
        .expect("the stream in time");
    publishing.await.unwrap();
    assert_eq!(gaps, 0, "every resume within the history");
    assert!(drops > DROPS, "{drops} connections");
    assert_eq!(
        received,
        (0..TOTAL).collect::<Vec<_>>(),
        "exactly once, in order"
    );
}

#[tokio::test]
async fn the_metrics_topic_reaches_websocket_and_event_stream_clients() {
    let server = Serve::start_with(&["--metrics-interval", "0.2"]).await;
    let (mut ws, _) = chat(server.addr).await;
    join(&mut ws, "$metrics").await;
    let snapshot = recv_json(&mut ws).await;
    assert_eq!(snapshot["topic"], "$metrics");
    assert_eq!(snapshot["from"], 0);
    assert!(snapshot["data"]["uptime_seconds"].is_u64(), "{snapshot}");
    assert_eq!(snapshot["data"]["connections"]["chat"], 1, "{snapshot}");
    // Clients cannot publish there.
    send_json(&mut ws, json!({"topic": "$metrics", "data": 1})).await;
    loop {
        let answer = recv_json(&mut ws).await;
        if answer.get("error").is_some() {
            assert!(answer["error"].as_str().unwrap().contains('$'), "{answer}");
            break;
        }
    }
    let mut stream = EventStream::open(server.addr, "/events?topic=%24metrics", None)
        .await
        .ok()
        .unwrap();
    let event = stream.next().await.expect("a snapshot");
    assert_eq!(event.json()["data"]["connections"]["sse"], 1);
}

/// `/metrics` parsed by `prometheus_client`'s text parser: `[name, labels, value]` samples.
async fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let response = get(addr, "/metrics").await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = repo.join(".deps/py/bin/python");
    assert!(
        python.exists(),
        "run scripts/install-peers first ({})",
        python.display()
    );
    let script = "import sys, json\n\
        from prometheus_client.parser import text_string_to_metric_families as parse\n\
        print(json.dumps([[s.name, s.labels, s.value] for f in parse(sys.stdin.read()) for s in f.samples]))";
    let mut child = tokio::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&response.body)
        .await
        .unwrap();
    let output = timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "the parser refused /metrics: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        response.text()
    );
    let samples: Vec<(String, HashMap<String, String>, f64)> =
        serde_json::from_slice(&output.stdout).expect("JSON samples");
    samples
        .into_iter()
        .map(|(name, labels, value)| {
            let mut labels: Vec<_> = labels
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            labels.sort();
            if labels.is_empty() {
                (name, value)
            } else {
                (format!("{name}{{{}}}", labels.join(",")), value)
            }
        })
        .collect()
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let server = Serve::start_with(&["--metrics-interval", "0"]).await;
    let before = scrape(server.addr).await;
    let value = |m: &HashMap<String, f64>, key: &str| {
        *m.get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", m.keys()))
    };
    assert_eq!(
        value(&before, "volley_connections{route=/*,transport=websocket}"),
        0.0
    );
    // Traffic: ten echoes, a chat publication, an event stream, a refused handshake.
    let mut echo = connect(server.addr, "/x").await;
    for i in 0..10 {
        echo.send(format!("message {i}")).await.unwrap();
        timeout(WAIT, echo.recv()).await.unwrap().unwrap().unwrap();
    }
    let (mut ws, _) = chat(server.addr).await;
    join(&mut ws, "m").await;
    let _stream = EventStream::open(server.addr, "/events?topic=m", None)
        .await
        .ok()
        .unwrap();
    publish(&mut ws, "m", json!("counted")).await;
    let refused = get(server.addr, "/chat").await;
    assert_eq!(refused.status, 400);
    // (The refusal is counted once its answer is written: look again until it is.)
    let refusals = "volley_handshake_rejections_total{reason=handshake}";
    let mut after = scrape(server.addr).await;
    for _ in 0..100 {
        if after[refusals] > before[refusals] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = scrape(server.addr).await;
    }
    let grew = |key: &str, by: f64| {
        let (b, a) = (value(&before, key), value(&after, key));
        assert!(a - b >= by, "{key}: {b} -> {a}");
    };
    grew("volley_messages_received_total{route=/*}", 10.0);
    grew("volley_messages_sent_total{route=/*}", 10.0);
    grew("volley_bytes_received_total{route=/*}", 10.0 * 15.0);
    grew("volley_bytes_sent_total{route=/*}", 10.0 * 11.0);
    grew("volley_messages_received_total{route=/chat}", 2.0);
    grew("volley_bytes_sent_total{route=/events}", 20.0);
    grew("volley_hub_published_total", 1.0);
    grew("volley_sse_streams_opened_total", 1.0);
    grew("volley_handshake_rejections_total{reason=handshake}", 1.0);
    grew("volley_connections_accepted_total", 5.0);
    assert_eq!(
        value(&after, "volley_connections{route=/*,transport=websocket}"),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "volley_connections{route=/chat,transport=websocket}"
        ),
        1.0
    );
    assert_eq!(
        value(&after, "volley_connections{route=/events,transport=sse}"),
        1.0
    );
    assert!(value(&after, "volley_topics") >= 1.0);
    assert!(after.contains_key("volley_socketio_sessions{transport=polling}"));
}

#[tokio::test]
async fn a_config_file_sets_what_flags_do_not_and_flags_win() {
    let dir = std::env::temp_dir().join(format!("volley-web-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("volley.toml");
    // The file's bind is overridden by the test's --bind; its no-metrics by the flag.
    std::fs::write(
        &file,
        "bind = \"127.0.0.1:1\"\nno-sse = true\nno-metrics = true\nno-socketio = true\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let server = Serve::start_with(&["--config", path, "--no-metrics=false"]).await;
    assert_eq!(get(server.addr, "/metrics").await.status, 200);
    assert_eq!(get(server.addr, "/events?topic=a").await.status, 404);
    assert_eq!(
        get(server.addr, "/socket.io/?EIO=4&transport=polling")
            .await
            .status,
        404
    );
    drop(server);
    // A bad file stops the server at once, naming the key at fault.
    std::fs::write(&file, "no-such-setting = 1\n").unwrap();
    let output = timeout(WAIT, volley().args(["serve", "--config", path]).output())
        .await
        .unwrap()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no-such-setting"), "{stderr}");
}

#[tokio::test]
async fn endpoints_turned_off_answer_404() {
    let server = Serve::start_with(&[
        "--no-demo",
        "--no-echo",
        "--no-chat",
        "--no-socketio",
        "--no-sse",
        "--no-metrics",
    ])
    .await;
    for target in [
        "/",
        "/assets/index.html",
        "/chat",
        "/socket.io/?EIO=4&transport=polling",
        "/events?topic=a",
        "/metrics",
    ] {
        assert_eq!(get(server.addr, target).await.status, 404, "{target}");
    }
    assert_eq!(get(server.addr, "/healthz").await.text(), "ok\n");
    // No echo either: WebSocket clients get 404.
    assert!(
        volley::connect(&format!("ws://{}/x", server.addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn help_is_grouped_and_logs_can_be_json() {
    let help = timeout(WAIT, volley().args(["serve", "--help"]).output())
        .await
        .unwrap()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for heading in [
        "Network:",
        "Connections:",
        "Topics",
        "Endpoints:",
        "Cluster:",
        "Logging:",
    ] {
        assert!(help.contains(heading), "{heading} in\n{help}");
    }
    let server = Serve::start_with(&["--log-format", "json"]).await;
    drop(server);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut child = volley()
        .args(["serve", "--log-format", "json", "--bind", &addr])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stderr);
    let line = timeout(WAIT, async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line).await.unwrap() == 0 {
                panic!("no JSON log line");
            }
            if line.starts_with('{') {
                return line;
            }
        }
    })
    .await
    .unwrap();
    let log: Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(log["level"], "INFO", "{log}");
    assert_eq!(log["fields"]["message"], "listening", "{log}");
}

#[tokio::test]
async fn shutdown_ends_event_streams_without_waiting_for_the_drain_timeout() {
    let mut server = Serve::start_with(&["--drain-timeout", "30"]).await;
    let mut stream = EventStream::open(server.addr, "/events?topic=a", None)
        .await
        .ok()
        .unwrap();
    let pid = server.child.id().expect("pid").to_string();
    let started = std::time::Instant::now();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    assert_eq!(stream.next().await, None, "the stream ends");
    let status = timeout(WAIT, server.child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_topic_silent_since_the_join_resumes_after_the_mark_of_the_joined_answer() {
    let server = Serve::start().await;
    let (mut publisher, _) = chat(server.addr).await;
    join(&mut publisher, "quiet").await;
    let before = publish(&mut publisher, "quiet", json!("before")).await;
    let before = before["offset"].as_u64().expect("an offset");

    // Joins after "before" and sees nothing until it drops: only the mark says where it was.
    let (mut ws, _) = chat(server.addr).await;
    send_json(&mut ws, json!({"join": "quiet"})).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(answer["joined"], "quiet", "{answer}");
    let mark = answer["offset"]
        .as_u64()
        .expect("the joined answer has an offset");
    assert!(
        mark >= before,
        "mark {mark} before the earlier publication {before}"
    );
    drop(ws);

    let mut missed = Vec::new();
    for n in 0..3 {
        let publication = publish(&mut publisher, "quiet", json!(n)).await;
        let offset = publication["offset"].as_u64().expect("an offset");
        assert!(offset > mark, "published after the join: {offset} > {mark}");
        missed.push(n);
    }

    let (mut ws, _) = chat(server.addr).await;
    send_json(&mut ws, json!({"join": "quiet", "after": mark})).await;
    let answer = recv_json(&mut ws).await;
    assert_eq!(answer["resumed"], true, "{answer}");
    let mut got = Vec::new();
    for _ in 0..missed.len() {
        got.push(recv_json(&mut ws).await["data"].clone());
    }
    assert_eq!(
        got,
        vec![json!(0), json!(1), json!(2)],
        "what it missed, once"
    );
    // Nothing else: the next answer is to the next command.
    send_json(&mut ws, json!({"leave": "quiet"})).await;
    assert_eq!(recv_json(&mut ws).await, json!({"left": "quiet"}));
}
