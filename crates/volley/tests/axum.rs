//! Framework integration: WebSocket routes beside REST routes in one axum app, and a bare hyper
//! service; handshake errors answered with the right HTTP status; subprotocols, policy and
//! permessage-deflate negotiated as by `volley::accept_with_policy`.

mod common;

use std::net::SocketAddr;

use axum::Router;
use axum::response::Response;
use axum::routing::{any, get};
use common::{KEY, Raw, raw_tcp, within};
use http::{HeaderValue, StatusCode};
use tokio::net::TcpListener;
use volley::axum::WebSocketUpgrade;
use volley::{ClientBuilder, Config, DeflateConfig, Message, Policy, Reject, Subprotocol};

/// The per-connection state the auth hook of `/private` stores.
#[derive(Clone, Debug)]
struct User(String);

async fn echo(mut ws: volley::hyper::HyperWebSocket) {
    while let Some(Ok(msg)) = ws.recv().await {
        if msg.is_data() && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn ws_route(upgrade: WebSocketUpgrade) -> Response {
    upgrade
        .protocols(["chat.v2", "chat.v1"])
        .config(Config::default().deflate(Some(DeflateConfig::default())))
        .on_upgrade(echo)
}

async fn private_route(upgrade: WebSocketUpgrade) -> Response {
    let policy =
        Policy::default()
            .origins(["https://app.example"])
            .auth(|mut request| async move {
                // An auth hook that really waits: only `on_upgrade_with` can run it.
                tokio::task::yield_now().await;
                match request.headers().get("authorization") {
                    Some(v) if v == "Bearer alice-token" => {
                        request.extensions_mut().insert(User("alice".into()));
                        Ok(request)
                    }
                    _ => Err(
                        Reject::new(StatusCode::UNAUTHORIZED, "missing or bad token").header(
                            http::header::WWW_AUTHENTICATE,
                            HeaderValue::from_static("Bearer"),
                        ),
                    ),
                }
            });
    upgrade
        .policy(policy)
        .on_upgrade_with(|mut ws, request| async move {
            let user = request.extensions().get::<User>().cloned();
            let name = user.map_or_else(|| "nobody".to_owned(), |u| u.0);
            let _ = ws.send(format!("hello {name}")).await;
            echo(ws).await;
        })
        .await
}

/// Awaiting auth hooks cannot run in the synchronous `on_upgrade`: answered 500, never a hang.
async fn misused_route(upgrade: WebSocketUpgrade) -> Response {
    let policy = Policy::default().auth(|request| async move {
        tokio::task::yield_now().await;
        Ok(request)
    });
    upgrade.policy(policy).on_upgrade(echo)
}

async fn start_app() -> SocketAddr {
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/ws", any(ws_route))
        .route("/private", get(private_route))
        .route("/misused", get(misused_route));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Sends `request` on a fresh connection and returns the response: its head and its
/// `Content-Length` body (the connection may stay open).
async fn http(addr: SocketAddr, request: &str) -> String {
    let mut raw = raw_tcp(addr).await;
    raw.write(request.as_bytes()).await;
    let (head, body) = raw.read_response().await;
    head + &body
}

fn upgrade_to(addr: SocketAddr, path: &str, extra: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn rest_and_websocket_routes_share_one_router() {
    let addr = start_app().await;

    let health = http(
        addr,
        &format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("\r\n\r\nok"), "{health}");

    let (mut ws, response) = within(ClientBuilder::new(format!("ws://{addr}/ws")).connect())
        .await
        .expect("connect to the axum WebSocket route");
    assert_eq!(response.protocol, None, "nothing offered, nothing selected");
    ws.send("hello axum").await.expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("reply").expect("ok"),
        Message::text("hello axum")
    );
    ws.send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("reply").expect("ok"),
        Message::binary(vec![1u8, 2, 3])
    );
    within(ws.close(None)).await.expect("close handshake");
}

#[tokio::test]
async fn subprotocol_is_selected_in_server_preference_order() {
    let addr = start_app().await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .protocol("chat.v1")
            .protocol("chat.v2")
            .connect(),
    )
    .await
    .expect("connect");
    assert_eq!(response.protocol.as_deref(), Some("chat.v2"));
    ws.send("x").await.expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("reply").expect("ok"),
        Message::text("x")
    );

    let (_ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .protocol("chat.v1")
            .connect(),
    )
    .await
    .expect("connect");
    assert_eq!(response.protocol.as_deref(), Some("chat.v1"));

    let (_ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .protocol("mqtt")
            .connect(),
    )
    .await
    .expect("an unknown subprotocol still connects, without one selected");
    assert_eq!(response.protocol, None);
}

#[tokio::test]
async fn plain_get_and_bad_handshakes_get_the_right_4xx() {
    let addr = start_app().await;

    let plain = http(
        addr,
        &format!("GET /ws HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
    assert!(plain.contains("Upgrade: websocket"), "{plain}");

    let post = http(
        addr,
        &format!(
            "POST /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
        ),
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    assert!(post.to_ascii_lowercase().contains("allow: get"), "{post}");

    let old = upgrade_to(addr, "/ws", "").replace("Version: 13", "Version: 8");
    let old = http(addr, &old).await;
    assert!(old.starts_with("HTTP/1.1 426"), "{old}");
    assert!(
        old.to_ascii_lowercase()
            .contains("sec-websocket-version: 13"),
        "{old}"
    );

    let no_key = upgrade_to(addr, "/ws", "").replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "");
    let no_key = http(addr, &no_key).await;
    assert!(no_key.starts_with("HTTP/1.1 400"), "{no_key}");
}

#[tokio::test]
async fn the_101_is_a_clean_upgrade_and_frames_follow() {
    let addr = start_app().await;
    let mut raw: Raw = raw_tcp(addr).await;
    raw.write(upgrade_to(addr, "/ws", "Sec-WebSocket-Protocol: chat.v1\r\n").as_bytes())
        .await;
    let head = raw.read_http_head().await;
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(lower.contains(&format!(
        "sec-websocket-accept: {}",
        common::ACCEPT.to_ascii_lowercase()
    )));
    assert!(lower.contains("sec-websocket-protocol: chat.v1"), "{head}");
    assert!(lower.contains("upgrade: websocket"), "{head}");
    assert!(!lower.contains("transfer-encoding"), "{head}");
    assert!(
        !lower.contains("content-length"),
        "no body on a 101: {head}"
    );
    assert!(
        !lower.contains("sec-websocket-extensions"),
        "not offered: {head}"
    );
    raw.write(&common::client_frame(0x1, b"raw")).await;
    let frame = raw.read_frame().await;
    assert_eq!((frame.opcode, frame.payload.as_slice()), (0x1, &b"raw"[..]));
}

#[tokio::test]
async fn permessage_deflate_is_negotiated_when_configured() {
    let addr = start_app().await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/ws"))
            .config(Config::default().deflate(Some(DeflateConfig::default())))
            .connect(),
    )
    .await
    .expect("connect");
    assert!(response.deflate.is_some(), "the server accepted the offer");
    assert!(ws.deflate().is_some());
    let big = "compress me ".repeat(10_000);
    ws.send(big.as_str()).await.expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("reply").expect("ok"),
        Message::text(big)
    );
}

#[tokio::test]
async fn policy_origin_and_awaiting_auth_hook_with_on_upgrade_with() {
    let addr = start_app().await;

    let foreign = http(
        addr,
        &upgrade_to(
            addr,
            "/private",
            "Origin: https://evil.example\r\nAuthorization: Bearer alice-token\r\n",
        ),
    )
    .await;
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");

    let anonymous = http(addr, &upgrade_to(addr, "/private", "")).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(
        anonymous
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer"),
        "{anonymous}"
    );
    assert!(anonymous.contains("missing or bad token"), "{anonymous}");

    let (mut ws, _) = within(
        ClientBuilder::new(format!("ws://{addr}/private"))
            .header(
                http::header::AUTHORIZATION,
                HeaderValue::from_static("Bearer alice-token"),
            )
            .header(
                http::header::ORIGIN,
                HeaderValue::from_static("https://app.example"),
            )
            .connect(),
    )
    .await
    .expect("authenticated client connects");
    assert_eq!(
        within(ws.recv()).await.expect("greeting").expect("ok"),
        Message::text("hello alice")
    );
}

#[tokio::test]
async fn awaiting_auth_hook_in_sync_on_upgrade_is_a_500_not_a_hang() {
    let addr = start_app().await;
    let answer = http(addr, &upgrade_to(addr, "/misused", "")).await;
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
}

/// `volley::hyper` without axum: a hand-written hyper 1 service.
#[tokio::test]
async fn bare_hyper_service_upgrades() {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service =
                    service_fn(|request: http::Request<hyper::body::Incoming>| async move {
                        let policy = Policy::default().protocols(["echo"]);
                        let response: http::Response<String> = volley::hyper::upgrade(
                            request,
                            Config::default(),
                            &policy,
                            |mut ws, request| async move {
                                let protocol = request.extensions().get::<Subprotocol>().cloned();
                                let _ = ws.send(format!("{protocol:?}")).await;
                            },
                        )
                        .await;
                        Ok::<_, std::convert::Infallible>(response)
                    });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });

    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://{addr}/"))
            .protocol("echo")
            .connect(),
    )
    .await
    .expect("connect to the hyper service");
    assert_eq!(response.protocol.as_deref(), Some("echo"));
    assert_eq!(
        within(ws.recv()).await.expect("message").expect("ok"),
        Message::text(r#"Some(Subprotocol("echo"))"#)
    );

    let plain = http(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 400"), "{plain}");
}

/// Callbacks that echo and greet with the peer address they see and the request path.
struct Greeter;

impl volley::callback::Callbacks for Greeter {
    fn on_open(&self, conn: &mut volley::callback::Conn<'_>) {
        let path = conn.request().map(|r| r.uri().path().to_owned());
        let peer = conn.peer_addr();
        let _ = conn.send(format!("hello {path:?} from {peer:?}"));
    }

    fn on_message(&self, conn: &mut volley::callback::Conn<'_>, message: Message) {
        let _ = conn.send(message);
    }
}

#[tokio::test]
async fn an_axum_route_hands_upgraded_connections_to_callbacks() {
    use axum::extract::State;
    use volley::callback::Drivers;

    async fn route(State(drivers): State<Drivers>, upgrade: WebSocketUpgrade) -> Response {
        upgrade.on_upgrade_callbacks(&drivers)
    }

    let drivers = Drivers::new(
        Greeter,
        Config::default().deflate(Some(DeflateConfig::default())),
    );
    let app = Router::new()
        .route("/cb", any(route))
        .with_state(drivers.clone());
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });

    // The drivers' configuration governs the handshake: compression is negotiated.
    let config = Config::default().deflate(Some(DeflateConfig::default()));
    let url = format!("ws://{addr}/cb");
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let local = stream.local_addr().expect("local addr");
    let uri: http::Uri = url.parse().expect("uri");
    let (mut ws, response) = within(
        ClientBuilder::new(&url)
            .config(config)
            .handshake(stream, &uri),
    )
    .await
    .expect("upgrade on the callbacks route");
    assert!(
        response.deflate.is_some(),
        "deflate from the drivers' config"
    );
    let greeting = match within(ws.recv()).await {
        Some(Ok(Message::Text(text))) => text.to_string(),
        other => panic!("expected the greeting, got {other:?}"),
    };
    // The peer address comes from axum's ConnectInfo (hyper owns the transport).
    assert_eq!(greeting, format!("hello Some(\"/cb\") from Some({local})"));
    let text = "echoed by a callback behind axum ".repeat(100);
    ws.send(text.as_str()).await.expect("send");
    assert_eq!(
        within(ws.recv()).await.expect("echo").expect("echo"),
        Message::text(text)
    );
    assert_eq!(drivers.connections(), 1);
    ws.close(None).await.expect("close");
    within(async {
        while drivers.connections() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    })
    .await;

    // A request that is not an upgrade gets the extractor's 400.
    let refused = http(
        addr,
        &format!("GET /cb HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
}
