//! One router for every kind of endpoint: task handlers, callbacks and HTTP services share one
//! matching rule, unmatched paths get 404, every endpoint learns the peer's address, and a
//! WebSocket route is reached from an HTTP keep-alive connection too.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{KEY, Raw, client_frame, within};
use http::{Request, Response};
use http_body_util::Full;
use tokio::net::TcpStream;
use volley::callback::{Callbacks, Conn};
use volley::{Endpoint, Message, PeerAddr, Server};

/// Echoes, after greeting with the peer address it sees.
struct Greeter;

impl Callbacks for Greeter {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let _ = conn.send(format!("callbacks sees {:?}", conn.peer_addr()));
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        let _ = conn.send(message);
    }
}

/// A server with a task route, a callbacks route and a service route, and nothing else.
async fn server() -> SocketAddr {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let server = server
        .route(
            "/task",
            Endpoint::task(|mut ws, request| async move {
                let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
                let _ = ws.send(format!("task sees {peer:?}")).await;
                while let Some(Ok(m)) = ws.recv().await {
                    if m.is_data() && ws.send(m).await.is_err() {
                        break;
                    }
                }
            }),
        )
        .route("/callbacks", Endpoint::callbacks(Greeter))
        .route(
            "/svc/*",
            Endpoint::service(|request: Request<hyper::body::Incoming>| async move {
                let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
                let body = format!("{} sees {peer:?}", request.uri().path());
                Response::new(Full::new(Bytes::from(body)))
            }),
        );
    tokio::spawn(server.run());
    addr
}

/// A raw connection and its local address.
async fn connect(addr: SocketAddr) -> (Raw, SocketAddr) {
    let stream = within(TcpStream::connect(addr)).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    (Raw::new(stream), local)
}

fn upgrade(path: &str, addr: SocketAddr) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

fn get(path: &str, addr: SocketAddr) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")
}

async fn response(raw: &mut Raw) -> (String, String) {
    raw.read_response().await
}

async fn text_frame(raw: &mut Raw) -> String {
    let frame = raw.read_frame().await;
    assert_eq!(frame.opcode, 1, "a text frame");
    String::from_utf8(frame.payload).expect("UTF-8")
}

#[tokio::test]
async fn every_kind_of_endpoint_sees_the_peer_address() {
    let addr = server().await;
    for path in ["/task", "/callbacks"] {
        let (mut raw, local) = connect(addr).await;
        raw.write(upgrade(path, addr).as_bytes()).await;
        assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101"));
        let kind = path.trim_start_matches('/');
        assert_eq!(
            text_frame(&mut raw).await,
            format!("{kind} sees Some({local})")
        );
        raw.write(&client_frame(1, b"echo")).await;
        assert_eq!(text_frame(&mut raw).await, "echo");
    }
    let (mut raw, local) = connect(addr).await;
    raw.write(get("/svc/peer", addr).as_bytes()).await;
    let (head, body) = response(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, format!("/svc/peer sees Some({local})"));
}

#[tokio::test]
async fn unmatched_paths_get_404_on_a_fresh_connection() {
    let addr = server().await;
    let close =
        |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    for request in [upgrade("/nope", addr), close("/task/"), close("/svc")] {
        let (mut raw, _) = connect(addr).await;
        raw.write(request.as_bytes()).await;
        let reply = raw.read_all_string().await;
        let line = request.lines().next().unwrap_or_default();
        if line.starts_with("GET /svc ") {
            // "/svc/*" also serves "/svc".
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            continue;
        }
        assert!(reply.starts_with("HTTP/1.1 404"), "{line}: {reply}");
        let path = line.split(' ').nth(1).unwrap_or_default();
        assert!(
            reply.ends_with(&format!("no route for {path}\n")),
            "{reply}"
        );
    }
    // A request line that is not HTTP gets 400, one longer than the header limit 414.
    let (mut raw, _) = connect(addr).await;
    raw.write(b"\x16\x03\x01 garbage\r\n\r\n").await;
    assert!(raw.read_all_string().await.starts_with("HTTP/1.1 400"));
    let (mut raw, _) = connect(addr).await;
    raw.write(format!("GET /{} HTTP/1.1\r\n", "x".repeat(10_000)).as_bytes())
        .await;
    assert!(raw.read_all_string().await.starts_with("HTTP/1.1 414"));
}

#[tokio::test]
async fn an_http_connection_routes_every_request_and_still_reaches_websocket_routes() {
    let addr = server().await;
    for ws_path in ["/task", "/callbacks"] {
        let (mut raw, local) = connect(addr).await;
        raw.write(get("/svc/a", addr).as_bytes()).await;
        assert_eq!(
            response(&mut raw).await.1,
            format!("/svc/a sees Some({local})")
        );
        raw.write(get("/missing", addr).as_bytes()).await;
        let (head, body) = response(&mut raw).await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert_eq!(body, "404 Not Found: no route for /missing\n");
        raw.write(get("/svc/b", addr).as_bytes()).await;
        assert_eq!(
            response(&mut raw).await.1,
            format!("/svc/b sees Some({local})")
        );
        // The same connection upgrades to a WebSocket route.
        raw.write(upgrade(ws_path, addr).as_bytes()).await;
        let head = raw.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let kind = ws_path.trim_start_matches('/');
        assert_eq!(
            text_frame(&mut raw).await,
            format!("{kind} sees Some({local})")
        );
        raw.write(&client_frame(1, b"after an upgrade through hyper"))
            .await;
        assert_eq!(text_frame(&mut raw).await, "after an upgrade through hyper");
    }
}

#[tokio::test]
async fn a_server_without_routes_refuses_to_run() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let error = server.run().await.expect_err("no routes");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidInput);
}

#[tokio::test]
async fn shutdown_ends_idle_http_keep_alive_connections_without_waiting_for_the_drain_timeout() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = server
        .drain_timeout(std::time::Duration::from_secs(30))
        .route(
            "/svc/*",
            Endpoint::service(|_request: Request<hyper::body::Incoming>| async move {
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }),
        );
    let served = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    let (mut raw, _) = connect(addr).await;
    raw.write(get("/svc/x", addr).as_bytes()).await;
    assert_eq!(response(&mut raw).await.1, "ok");
    // The connection stays open (keep-alive) until the server shuts down.
    let start = std::time::Instant::now();
    stop.send(()).expect("stop");
    within(served).await.expect("task").expect("run_until");
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    raw.expect_eof_within(std::time::Duration::from_secs(5))
        .await;
}

/// `Endpoint::or_http`: one route whose WebSocket upgrades go to callbacks and whose other
/// requests go to a service, on a fresh connection (told apart by the head) and on an HTTP
/// keep-alive connection (by each request); the server's refusals are counted by reason.
#[tokio::test]
async fn a_route_serves_http_requests_and_websocket_upgrades_apart() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let stats = server.stats();
    let page = |request: Request<hyper::body::Incoming>| async move {
        let body = format!("page for {}", request.uri().path());
        Response::new(Full::new(Bytes::from(body)))
    };
    let server = server.route("/", Endpoint::callbacks(Greeter).or_http(page));
    tokio::spawn(server.run());
    // A browser's GET: the page.
    let (mut raw, _) = connect(addr).await;
    raw.write(b"GET / HTTP/1.1\r\nAccept: text/html\r\nUpgrade-Insecure-Requests: 1\r\n\r\n")
        .await;
    let (head, body) = response(&mut raw).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "page for /");
    // The same connection upgrades: the callbacks.
    raw.write(upgrade("/", addr).as_bytes()).await;
    assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101"));
    assert!(text_frame(&mut raw).await.starts_with("callbacks sees"));
    // A fresh connection whose head arrives in pieces, upgrading at once: the callbacks.
    let (mut raw, local) = connect(addr).await;
    let request = upgrade("/", addr);
    let (first, rest) = request.split_at(30);
    raw.write(first.as_bytes()).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    raw.write(rest.as_bytes()).await;
    assert!(raw.read_http_head().await.starts_with("HTTP/1.1 101"));
    assert_eq!(
        text_frame(&mut raw).await,
        format!("callbacks sees Some({local})")
    );
    raw.write(&client_frame(1, b"echo")).await;
    assert_eq!(text_frame(&mut raw).await, "echo");
    // Refusals are counted by reason.
    let (mut raw, _) = connect(addr).await;
    raw.write(
        format!("GET /nope HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await;
    assert!(raw.read_all_string().await.starts_with("HTTP/1.1 404"));
    let mut bad =
        upgrade("/", addr).replace("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8");
    bad = bad.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n");
    let (mut raw, _) = connect(addr).await;
    raw.write(bad.as_bytes()).await;
    assert!(raw.read_all_string().await.starts_with("HTTP/1.1 426"));
    within(async {
        while stats.refused(volley::Refusal::Handshake) < 1 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    assert_eq!(stats.refused(volley::Refusal::NoRoute), 1);
    assert!(stats.accepted() >= 4);
}

/// Regression (found by `volley bench churn`): a service route's connection was served by hyper
/// without a head timeout, so a peer that sent its request line and part of the headers and then
/// went silent was held forever (Socket.IO's `/socket.io/` under churn), and so was an idle HTTP
/// keep-alive connection. Both now end after the open timeout.
#[tokio::test]
async fn a_half_sent_head_or_an_idle_keep_alive_on_a_service_route_ends_after_the_open_timeout() {
    let open_timeout = std::time::Duration::from_millis(300);
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    let server = server
        .config(volley::Config::default().open_timeout(open_timeout))
        .route(
            "/svc/*",
            Endpoint::service(|_request: Request<hyper::body::Incoming>| async move {
                Response::new(Full::new(Bytes::from_static(b"ok")))
            }),
        );
    tokio::spawn(server.run());
    // The request line (routed to the service) and half a header, then nothing.
    let (mut raw, _) = connect(addr).await;
    let start = std::time::Instant::now();
    raw.write(format!("GET /svc/x HTTP/1.1\r\nHost: {addr}\r\nX-Half: ab").as_bytes())
        .await;
    raw.expect_eof_within(std::time::Duration::from_secs(5))
        .await;
    // Counted from when hyper starts reading the head: after the line, within two timeouts.
    assert!(start.elapsed() >= open_timeout, "{:?}", start.elapsed());
    // A keep-alive connection idle after its first request.
    let (mut raw, _) = connect(addr).await;
    raw.write(get("/svc/x", addr).as_bytes()).await;
    assert_eq!(response(&mut raw).await.1, "ok");
    let idle = std::time::Instant::now();
    raw.expect_eof_within(std::time::Duration::from_secs(5))
        .await;
    assert!(idle.elapsed() >= open_timeout / 2, "{:?}", idle.elapsed());
}
