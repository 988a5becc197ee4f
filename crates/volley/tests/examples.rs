//! Smoke tests of the runnable examples' server logic: the dashboard pushes snapshots to a fast
//! client while a stalled one is connected; the IoT server refuses bad tokens with 401 and routes
//! an operator's command to a device (the example's simulated one) and its ack back.

mod common;

#[path = "../examples/dashboard.rs"]
#[allow(dead_code)]
mod dashboard;
#[path = "../examples/iot.rs"]
#[allow(dead_code)]
mod iot;

use std::time::Duration;

use common::{raw_client, within};
use http::{HeaderValue, header};
use serde_json::{Value, json};
use volley::{ClientBuilder, Error, HandshakeError, Message, Server};

async fn next_json<S>(ws: &mut volley::WebSocket<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    loop {
        match within(ws.recv()).await {
            Some(Ok(Message::Text(t))) => return serde_json::from_str(&t).expect("JSON"),
            Some(Ok(_)) => {}
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn dashboard_pushes_snapshots_while_a_client_is_stalled() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(dashboard::serve(server, Duration::from_millis(10)));

    // A client that completes the handshake and then never reads.
    let _stalled = raw_client(addr).await;

    let mut ws = within(volley::connect(&format!("ws://{addr}/")))
        .await
        .expect("connect");
    let first = next_json(&mut ws).await;
    let mut last = first["seq"].as_u64().expect("seq");
    for _ in 0..20 {
        let snapshot = next_json(&mut ws).await;
        let seq = snapshot["seq"].as_u64().expect("seq");
        assert!(seq > last, "snapshots arrive in order, newest last");
        assert!(snapshot["cpu_percent"].is_number());
        last = seq;
    }
    assert!(last >= 20);
}

#[test]
fn snapshot_is_valid_json() {
    let text = dashboard::snapshot_json(3, Duration::from_secs(2), 5, 1);
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(v["seq"], 3);
    assert_eq!(v["clients"], 5);
    assert_eq!(v["dropped_snapshots"], 1);
}

#[tokio::test]
async fn iot_auth_registry_and_command_push() {
    let server = Server::bind("127.0.0.1:0").await.expect("bind");
    let addr = server.local_addr().expect("addr");
    tokio::spawn(iot::serve(server));

    // Bad or missing tokens: 401 before any WebSocket exists.
    for token in ["Bearer nope", "Bearer operator-secret"] {
        let refused = within(
            ClientBuilder::new(format!("ws://{addr}/device"))
                .header(header::AUTHORIZATION, HeaderValue::from_static(token))
                .connect(),
        )
        .await;
        assert!(
            matches!(
                refused,
                Err(Error::Handshake(HandshakeError::UnexpectedStatus(401)))
            ),
            "{token}: {refused:?}"
        );
    }

    // The example's simulated device.
    let device_url = format!("ws://{addr}/device");
    tokio::spawn(async move { iot::run_device(&device_url, "thermo-1", "thermo-secret").await });

    let (mut operator, _) = within(
        ClientBuilder::new(format!("ws://{addr}/operator"))
            .header(
                header::AUTHORIZATION,
                HeaderValue::from_static("Bearer operator-secret"),
            )
            .connect(),
    )
    .await
    .expect("operator connects");

    // Wait for the device to appear in the registry.
    within(async {
        loop {
            operator.send(r#"{"list": true}"#).await.expect("send");
            let list = next_json(&mut operator).await;
            if list["devices"].as_array().is_some_and(|d| !d.is_empty()) {
                assert_eq!(list["devices"][0]["id"], "thermo-1");
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;

    let push = json!({ "device": "thermo-1", "command": { "set_point": 21.5 } });
    operator.send(push.to_string()).await.expect("send");
    let answer = next_json(&mut operator).await;
    assert_eq!(answer["device"], "thermo-1");
    assert_eq!(answer["ack"]["ok"], true);
    assert_eq!(answer["ack"]["applied"]["set_point"], 21.5);

    let push = json!({ "device": "lamp-1", "command": "on" });
    operator.send(push.to_string()).await.expect("send");
    let answer = next_json(&mut operator).await;
    assert_eq!(answer["error"], "device lamp-1 is not connected");

    // A device connected by hand, with its token in the query as a browser would, is kicked by
    // the operator with 4001.
    let mut lamp = within(volley::connect(&format!(
        "ws://{addr}/device?token=lamp-secret"
    )))
    .await
    .expect("lamp connects");
    within(async {
        loop {
            operator.send(r#"{"list": true}"#).await.expect("send");
            let list = next_json(&mut operator).await;
            if list["devices"].as_array().is_some_and(|d| d.len() == 2) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    operator.send(r#"{"kick": "lamp-1"}"#).await.expect("send");
    assert_eq!(next_json(&mut operator).await["kicked"], "lamp-1");
    match within(lamp.recv()).await {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(u16::from(frame.code), 4001),
        other => panic!("expected the kick, got {other:?}"),
    }
}
