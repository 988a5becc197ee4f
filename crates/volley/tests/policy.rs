//! Handshake policy: Origin allow-list (403), authentication hook (401/403 or per-connection
//! state), subprotocol selection, extra 101 headers, and 503 for handshakes in flight at shutdown.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::{HeaderName, HeaderValue, StatusCode};
use tokio::sync::{mpsc, oneshot};
use volley::{ClientBuilder, Error, HandshakeError, Policy, Reject, Server, Subprotocol};

#[derive(Clone, Debug, PartialEq)]
struct User(String);

/// A server with `policy` whose handler reports the request it was given.
async fn policy_server(policy: Policy) -> (SocketAddr, mpsc::UnboundedReceiver<http::Request<()>>) {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .policy(policy);
    let addr = server.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(server.serve(move |mut ws, request| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(request);
            while let Some(Ok(_)) = ws.recv().await {}
        }
    }));
    (addr, rx)
}

async fn raw_upgrade(addr: SocketAddr, extra_headers: &str) -> String {
    let mut raw = raw_tcp(addr).await;
    let request = upgrade_request(addr);
    let request = if extra_headers.is_empty() {
        request
    } else {
        request.replacen("\r\n\r\n", &format!("\r\n{extra_headers}\r\n\r\n"), 1)
    };
    raw.write(request.as_bytes()).await;
    raw.read_http_head().await
}

#[tokio::test]
async fn foreign_origins_get_403_and_allowed_or_absent_origins_connect() {
    let (addr, mut seen) =
        policy_server(Policy::default().origins(["https://app.example.com"])).await;
    let head = raw_upgrade(addr, "Origin: https://evil.example.net").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let head = raw_upgrade(addr, "Origin: https://APP.example.com").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    within(seen.recv()).await.expect("handler ran");
    // Non-browser clients send no Origin.
    let head = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
}

#[tokio::test]
async fn the_auth_hook_rejects_with_its_status_or_passes_state_to_the_handler() {
    let policy = Policy::default().auth(|mut request| async move {
        let cookie = request
            .headers()
            .get(http::header::COOKIE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        match cookie.strip_prefix("session=") {
            Some(user) if !user.is_empty() => {
                request.extensions_mut().insert(User(user.to_owned()));
                Ok(request)
            }
            _ => Err(
                Reject::new(StatusCode::UNAUTHORIZED, "log in first").header(
                    http::header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Cookie"),
                ),
            ),
        }
    });
    let (addr, mut seen) = policy_server(policy).await;

    let head = raw_upgrade(addr, "").await;
    assert!(head.starts_with("HTTP/1.1 401 "), "{head}");
    assert!(head.contains("www-authenticate: Cookie"), "{head}");

    let rejected = volley::connect(&format!("ws://{addr}/")).await;
    assert!(
        matches!(
            rejected,
            Err(Error::Handshake(HandshakeError::UnexpectedStatus(401)))
        ),
        "{rejected:?}"
    );

    let (_ws, _) = ClientBuilder::new(format!("ws://{addr}/room?x=1"))
        .header(
            http::header::COOKIE,
            HeaderValue::from_static("session=alice"),
        )
        .connect()
        .await
        .expect("authenticated client connects");
    let request = within(seen.recv()).await.expect("handler ran");
    assert_eq!(
        request.extensions().get::<User>(),
        Some(&User("alice".into()))
    );
    assert_eq!(request.uri().path(), "/room");
    assert_eq!(request.uri().query(), Some("x=1"));
}

#[tokio::test]
async fn the_server_selects_its_preferred_offered_subprotocol() {
    let (addr, mut seen) = policy_server(Policy::default().protocols(["chat.v2", "chat.v1"])).await;
    let (_ws, response) = ClientBuilder::new(format!("ws://{addr}/"))
        .protocol("chat.v1")
        .protocol("chat.v2")
        .connect()
        .await
        .expect("connect");
    assert_eq!(response.protocol.as_deref(), Some("chat.v2"));
    let request = within(seen.recv()).await.expect("handler ran");
    assert_eq!(
        request.extensions().get::<Subprotocol>(),
        Some(&Subprotocol("chat.v2".into()))
    );

    // Nothing in common: no subprotocol selected.
    let (_ws, response) = ClientBuilder::new(format!("ws://{addr}/"))
        .protocol("other")
        .connect()
        .await
        .expect("connect");
    assert_eq!(response.protocol, None);
    let request = within(seen.recv()).await.expect("handler ran");
    assert!(request.extensions().get::<Subprotocol>().is_none());
}

#[tokio::test]
async fn extra_headers_go_into_the_101() {
    let policy = Policy::default().header(
        HeaderName::from_static("x-volley-node"),
        HeaderValue::from_static("n1"),
    );
    let (addr, _seen) = policy_server(policy).await;
    let (_ws, response) = ClientBuilder::new(format!("ws://{addr}/"))
        .connect()
        .await
        .expect("connect");
    assert_eq!(response.response.headers()["x-volley-node"], "n1");
}

#[tokio::test]
async fn handshakes_in_flight_at_shutdown_get_503() {
    // A slow auth hook keeps the handshake in flight while shutdown starts.
    let policy = Policy::default().auth(|request| async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(request)
    });
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .policy(policy);
    let addr = server.local_addr().expect("addr");
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let serving = tokio::spawn(server.serve_with_shutdown(
        |mut ws, _| async move { while let Some(Ok(_)) = ws.recv().await {} },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let url = format!("ws://{addr}/");
    let connecting = tokio::spawn(async move { volley::connect(&url).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop_tx.send(()).expect("stop");
    let result = within(connecting).await.expect("join");
    assert!(
        matches!(
            result,
            Err(Error::Handshake(HandshakeError::UnexpectedStatus(503)))
        ),
        "{:?}",
        result.map(|_| ())
    );
    within(serving).await.expect("join").expect("serve");
}
