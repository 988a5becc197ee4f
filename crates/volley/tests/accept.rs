//! The accept loop's own handshakes (plain TCP to a callbacks route, no auth hook): requests
//! that arrive in pieces or take several reads, the request built for `on_open` only when it
//! asks, the open timeout of clients that send nothing or too little, handshakes still waiting
//! at shutdown (503), and many clients connecting at once.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use volley::callback::{Callbacks, Conn};
use volley::{Config, Endpoint, Message, Policy, Refusal, Server, ServerStats, Subprotocol};

/// Echoes every message; with `describe`, first sends what `on_open` saw of the request.
struct Echo {
    describe: bool,
}

impl Callbacks for Echo {
    fn on_open(&self, conn: &mut Conn<'_>) {
        if !self.describe {
            return;
        }
        let protocol = conn.extensions().get::<Subprotocol>().map(|p| p.0.clone());
        let request = conn.request().expect("on_open sees the request");
        let pad = request.headers().get("x-pad").map_or(0, |v| v.len());
        let text = format!(
            "{} {:?} host={:?} x-pad={pad} protocol={protocol:?} headers={}",
            request.uri().path(),
            request.uri().query(),
            request
                .headers()
                .get("host")
                .map(|h| h.to_str().unwrap_or("?")),
            request.headers().len(),
        );
        let _ = conn.send(text);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        let _ = conn.send(message);
    }
}

struct Running {
    addr: SocketAddr,
    stats: ServerStats,
    stop: Option<oneshot::Sender<()>>,
    served: JoinHandle<std::io::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        within(self.served)
            .await
            .expect("server task")
            .expect("server");
    }
}

async fn serve(config: Config, policy: Policy, describe: bool) -> Running {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .config(config)
        .drain_timeout(Duration::from_millis(500))
        .policy(policy)
        .route("/*", Endpoint::callbacks(Echo { describe }));
    let addr = server.local_addr().expect("addr");
    let stats = server.stats();
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stats,
        stop: Some(stop),
        served,
    }
}

/// Sends `text` and expects it back.
async fn echoes(raw: &mut Raw, text: &str) {
    raw.write(&client_frame(OP_TEXT, text.as_bytes())).await;
    let frame = raw.read_frame().await;
    assert_eq!(
        (frame.opcode, &frame.payload[..]),
        (OP_TEXT, text.as_bytes())
    );
}

/// Waits until `stats` counts `n` refusals for `reason`.
async fn refused(stats: &ServerStats, reason: Refusal, n: u64) {
    within(async {
        while stats.refused(reason) < n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(stats.refused(reason), n, "{reason:?}");
}

#[tokio::test]
async fn a_request_that_arrives_in_pieces_completes_the_handshake() {
    let server = serve(Config::default(), Policy::default(), false).await;
    let request = upgrade_request(server.addr);
    // In the request line, in a header name, just before the blank line.
    let cuts = [5, 40, request.len() - 1];
    let mut raw = raw_tcp(server.addr).await;
    let mut from = 0;
    for cut in cuts {
        raw.write(&request.as_bytes()[from..cut]).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        from = cut;
    }
    // The last byte and the first frame in one write: the frame is read with the request.
    let mut rest = request.as_bytes()[from..].to_vec();
    rest.extend(client_frame(OP_TEXT, b"first"));
    raw.write(&rest).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains(&format!("Sec-WebSocket-Accept: {ACCEPT}\r\n")),
        "{head}"
    );
    let frame = raw.read_frame().await;
    assert_eq!(frame.payload, b"first");
    echoes(&mut raw, "second").await;
    server.stop().await;
}

#[tokio::test]
async fn on_open_gets_the_request_as_sent_even_one_longer_than_a_read() {
    let policy = Policy::default().protocols(["chat.v1", "chat.v2"]);
    let server = serve(Config::default(), policy, true).await;
    for pad in [0, 6000] {
        let mut raw = raw_tcp(server.addr).await;
        let addr = server.addr;
        let request = format!(
            "GET /chat?room=7 HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Protocol: chat.v2\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(pad)
        );
        raw.write(request.as_bytes()).await;
        let head = raw.read_http_head().await;
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        assert!(
            head.contains("Sec-WebSocket-Protocol: chat.v2\r\n"),
            "{head}"
        );
        let described = raw.read_frame().await;
        assert_eq!(
            String::from_utf8_lossy(&described.payload),
            format!(
                "/chat Some(\"room=7\") host=Some(\"{addr}\") x-pad={pad} \
                 protocol=Some(\"chat.v2\") headers=7"
            )
        );
        echoes(&mut raw, "hi").await;
    }
    server.stop().await;
}

#[tokio::test]
async fn clients_that_send_nothing_or_too_little_are_closed_at_the_open_timeout() {
    let timeout = Duration::from_millis(300);
    let config = Config::default().open_timeout(timeout);
    let server = serve(config, Policy::default(), false).await;
    let started = Instant::now();
    let mut silent = raw_tcp(server.addr).await;
    let mut halting = raw_tcp(server.addr).await;
    halting
        .write(&upgrade_request(server.addr).as_bytes()[..30])
        .await;
    // Meanwhile a client that completes its handshake is served.
    let mut good = raw_client(server.addr).await;
    echoes(&mut good, "still here").await;
    for raw in [&mut silent, &mut halting] {
        let got = raw.expect_eof_within(Duration::from_secs(5)).await;
        assert!(got.is_empty(), "{got:?}");
    }
    assert!(
        started.elapsed() >= timeout,
        "closed before the open timeout"
    );
    refused(&server.stats, Refusal::Timeout, 2).await;
    // The good connection outlives the deadline that was set when it was accepted.
    echoes(&mut good, "after the timeout").await;
    // A client that goes away before its request counts as one that sent nothing.
    drop(raw_tcp(server.addr).await);
    refused(&server.stats, Refusal::Timeout, 3).await;
    server.stop().await;
}

#[tokio::test]
async fn handshakes_still_waiting_at_shutdown_get_503() {
    let server = serve(Config::default(), Policy::default(), false).await;
    let request = upgrade_request(server.addr);
    let mut raw = raw_tcp(server.addr).await;
    raw.write(&request.as_bytes()[..20]).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stats = server.stats.clone();
    let mut stop = server.stop;
    let _ = stop.take().expect("stop").send(());
    tokio::time::sleep(Duration::from_millis(100)).await;
    raw.write(&request.as_bytes()[20..]).await;
    let head = raw.read_http_head().await;
    assert!(head.starts_with("HTTP/1.1 503 "), "{head}");
    within(server.served)
        .await
        .expect("server task")
        .expect("server");
    assert_eq!(stats.refused(Refusal::ShuttingDown), 1);
}

#[tokio::test]
async fn many_clients_connecting_at_once_all_complete_their_handshake_and_echo() {
    let server = serve(Config::default(), Policy::default(), false).await;
    let addr = server.addr;
    let clients: Vec<_> = (0..300)
        .map(|i| {
            tokio::spawn(async move {
                let mut raw = raw_client(addr).await;
                echoes(&mut raw, &format!("client {i}")).await;
                raw
            })
        })
        .collect();
    let mut open = Vec::new();
    for client in clients {
        open.push(within(client).await.expect("client"));
    }
    // All still open: each echoes once more.
    for (i, raw) in open.iter_mut().enumerate() {
        echoes(raw, &format!("again {i}")).await;
    }
    assert_eq!(server.stats.accepted(), 300);
    server.stop().await;
}
