//! The typed handler API through raw Socket.IO packets: typed events and acknowledgements
//! (binary attachments included), parse failures, async handlers and the per-socket order of
//! events, packet middlewares and the error hook.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{Frame, WsClient, start};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use volley_socketio::{AckError, EventError, MAX_QUEUED_EVENTS, Payload, SocketIo, TryData};

#[derive(Debug, Deserialize, Serialize, PartialEq)]
struct Upload {
    name: String,
    data: Bytes,
}

#[derive(Debug, Serialize)]
struct Receipt<'a> {
    name: &'a str,
    size: usize,
    echo: Bytes,
}

/// Records what the error hook sees.
fn record_errors(io: &SocketIo) -> Arc<Mutex<Vec<String>>> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = errors.clone();
    io.of("/").on_connection(move |socket| {
        let seen = seen.clone();
        socket.on_error(move |_socket, err| {
            let kind = match &err {
                EventError::Rejected { .. } => "rejected",
                EventError::Data { .. } => "data",
                EventError::Overflow { .. } => "overflow",
                _ => "other",
            };
            seen.lock()
                .unwrap()
                .push(format!("{kind} {}: {err}", err.event()));
        });
    });
    errors
}

async fn wait_for(errors: &Arc<Mutex<Vec<String>>>, n: usize) -> Vec<String> {
    for _ in 0..200 {
        if errors.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    errors.lock().unwrap().clone()
}

#[tokio::test]
async fn typed_events_and_acks_with_binary_attachments() {
    let io = SocketIo::new();
    let errors = record_errors(&io);
    io.of("/").on_connection(|socket| {
        socket.on("upload", |socket, upload: Upload, ack| {
            let receipt = Receipt {
                name: &upload.name,
                size: upload.data.len(),
                echo: upload.data.clone(),
            };
            // A tuple is the argument list: two arguments, the first with an attachment.
            ack.unwrap().send((&receipt, "stored")).unwrap();
            socket
                .emit("uploaded", (&upload.name, upload.data.len()))
                .unwrap();
        });
        socket.on(
            "maybe",
            |_socket, TryData(data): TryData<(String, u8)>, ack| {
                let answer = match data {
                    Ok((s, n)) => json!({"ok": format!("{s}{n}")}),
                    Err(e) => json!({"error": e.to_string()}),
                };
                ack.unwrap().send(answer).unwrap();
            },
        );
    });
    let addr = start(io).await;
    let (mut c, _) = WsClient::connect_ns(addr, "0").await;

    c.send(r#"51-1["upload",{"name":"a.bin","data":{"_placeholder":true,"num":0}}]"#)
        .await;
    c.send_binary(&[0, 1, 2, 255]).await;
    assert_eq!(
        c.recv_text().await,
        r#"61-1[{"name":"a.bin","size":4,"echo":{"_placeholder":true,"num":0}},"stored"]"#
    );
    assert_eq!(&c.recv_binary().await[..], &[0, 1, 2, 255]);
    assert_eq!(c.recv_text().await, r#"2["uploaded","a.bin",4]"#);

    // Arguments that do not fit: the handler does not run, no ack, the hook is told, and the
    // socket goes on.
    c.send(r#"22["upload",{"name":"a.bin","data":5}]"#).await;
    c.send(r#"23["upload",{"name":7}]"#).await;
    let seen = wait_for(&errors, 2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(
        seen.iter().all(|e| e.starts_with("data upload: ")),
        "{seen:?}"
    );
    // A handler taking TryData sees the failure itself.
    c.send(r#"24["maybe","x",300]"#).await;
    let (_, answer) = common::split_json(&c.recv_text().await);
    assert!(
        answer[0]["error"].as_str().unwrap().contains("300"),
        "{answer}"
    );
    c.send(r#"25["maybe","x",3]"#).await;
    assert_eq!(c.recv_text().await, r#"35[{"ok":"x3"}]"#);
    assert_eq!(
        wait_for(&errors, 2).await.len(),
        2,
        "TryData failures are not reported"
    );
}

#[tokio::test]
async fn emit_with_ack_answers_are_typed() {
    let io = SocketIo::new();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    io.of("/").on_connection(move |socket| {
        let tx = tx.clone();
        socket.on_async("ask", move |socket, kind: String, _ack| {
            let tx = tx.clone();
            async move {
                let line = match kind.as_str() {
                    "pair" => match socket.emit_with_ack::<(String, u32)>("q", ()).await {
                        Ok((s, n)) => format!("pair {s} {n}"),
                        Err(e) => format!("pair error {e}"),
                    },
                    "bytes" => match socket.emit_with_ack::<Bytes>("q", ()).await {
                        Ok(b) => format!("bytes {:?}", &b[..]),
                        Err(e) => format!("bytes error {e}"),
                    },
                    _ => match socket
                        .emit_with_ack::<(String, u32)>("q", ())
                        .timeout(Duration::from_millis(100))
                        .await
                    {
                        Err(AckError::Timeout) => "timeout".to_owned(),
                        other => format!("unexpected {other:?}"),
                    },
                };
                tx.send(line).unwrap();
            }
        });
    });
    let addr = start(io).await;
    let (mut c, _) = WsClient::connect_ns(addr, "0").await;

    c.send(r#"2["ask","pair"]"#).await;
    assert_eq!(c.recv_text().await, r#"20["q"]"#);
    c.send(r#"30["seven",7]"#).await;
    assert_eq!(rx.recv().await.unwrap(), "pair seven 7");

    c.send(r#"2["ask","pair"]"#).await;
    assert_eq!(c.recv_text().await, r#"21["q"]"#);
    c.send(r#"31[7,"seven"]"#).await;
    let line = rx.recv().await.unwrap();
    assert!(
        line.starts_with("pair error unexpected acknowledgement data"),
        "{line}"
    );

    c.send(r#"2["ask","bytes"]"#).await;
    assert_eq!(c.recv_text().await, r#"22["q"]"#);
    c.send(r#"61-2[{"_placeholder":true,"num":0}]"#).await;
    c.send_binary(b"\x09\x08").await;
    assert_eq!(rx.recv().await.unwrap(), "bytes [9, 8]");

    c.send(r#"2["ask","never"]"#).await;
    assert_eq!(c.recv_text().await, r#"23["q"]"#);
    assert_eq!(rx.recv().await.unwrap(), "timeout");
}

#[tokio::test]
async fn events_of_a_socket_are_handled_one_at_a_time_in_order() {
    let io = SocketIo::new();
    let errors = record_errors(&io);
    io.of("/").on_connection(|socket| {
        // Slow async handler: its successors wait for it.
        socket.on_async("slow", |socket, ms: u64, _ack| async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            socket.emit("done", ("slow", ms)).unwrap();
        });
        socket.on("fast", |socket, n: u32, _ack| {
            socket.emit("done", ("fast", n)).unwrap();
        });
        socket.on_async("boom", |_socket, (): (), _ack| async move {
            tokio::task::yield_now().await;
            panic!("async handler bug");
        });
    });
    let addr = start(io).await;
    let (mut a, _) = WsClient::connect_ns(addr, "0").await;
    let (mut b, _) = WsClient::connect_ns(addr, "0").await;

    a.send(r#"2["slow",300]"#).await;
    a.send(r#"2["fast",1]"#).await;
    a.send(r#"2["slow",10]"#).await;
    a.send(r#"2["fast",2]"#).await;
    // Another socket is not held up by a's slow handler.
    b.send(r#"2["fast",9]"#).await;
    let started = tokio::time::Instant::now();
    assert_eq!(b.recv_text().await, r#"2["done","fast",9]"#);
    assert!(started.elapsed() < Duration::from_millis(250));
    for expected in [
        r#"2["done","slow",300]"#,
        r#"2["done","fast",1]"#,
        r#"2["done","slow",10]"#,
        r#"2["done","fast",2]"#,
    ] {
        assert_eq!(a.recv_text().await, expected);
    }

    // A panicking async handler is logged; the next events are handled.
    a.send(r#"2["boom"]"#).await;
    a.send(r#"2["fast",3]"#).await;
    assert_eq!(a.recv_text().await, r#"2["done","fast",3]"#);

    // Behind a running handler at most MAX_QUEUED_EVENTS wait; the others are dropped.
    a.send(r#"2["slow",400]"#).await;
    for i in 0..MAX_QUEUED_EVENTS + 5 {
        a.send(&format!(r#"2["fast",{i}]"#)).await;
    }
    assert_eq!(a.recv_text().await, r#"2["done","slow",400]"#);
    for i in 0..MAX_QUEUED_EVENTS {
        assert_eq!(a.recv_text().await, format!(r#"2["done","fast",{i}]"#));
    }
    let seen = wait_for(&errors, 5).await;
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert!(
        seen.iter().all(|e| e.starts_with("overflow fast")),
        "{seen:?}"
    );
    assert!(a.next_within(Duration::from_millis(100)).await.is_err());
}

#[tokio::test]
async fn packet_middleware_inspects_changes_and_rejects_events() {
    let io = SocketIo::new();
    let errors = record_errors(&io);
    let any = Arc::new(Mutex::new(Vec::new()));
    let seen_by_any = any.clone();
    io.of("/").on_connection(move |socket| {
        let seen_by_any = seen_by_any.clone();
        socket.on_any(move |_socket, event, _payload, _ack| {
            seen_by_any.lock().unwrap().push(event);
        });
        socket.use_middleware(|_socket, event| {
            if event.name == "forbidden" {
                return Err("unauthorized event".into());
            }
            Ok(())
        });
        // A second middleware rewrites an event: it runs after the first.
        socket.use_middleware(|_socket, event| {
            if event.name == "old-name" {
                event.name = "echo".into();
                event.payload.args.push(json!("added"));
            }
            Ok(())
        });
        socket.on("echo", |_socket, payload: Payload, ack| {
            if let Some(ack) = ack {
                ack.send(&payload).unwrap();
            }
        });
        socket.on("forbidden", |_socket, _: Value, ack| {
            if let Some(ack) = ack {
                ack.send("handler ran").unwrap();
            }
        });
    });
    let addr = start(io).await;
    let (mut c, _) = WsClient::connect_ns(addr, "0").await;

    c.send(r#"21["forbidden",1]"#).await;
    c.send(r#"22["old-name",1]"#).await;
    // Rejected: no ack, no handler; the next event is answered.
    assert_eq!(c.recv_text().await, r#"32[1,"added"]"#);
    let seen = wait_for(&errors, 1).await;
    assert_eq!(
        seen,
        vec!["rejected forbidden: event \"forbidden\" rejected: unauthorized event"]
    );
    c.send(r#"23["echo","still connected"]"#).await;
    assert_eq!(c.recv_text().await, r#"33["still connected"]"#);
    // As in Node, catch-all handlers run before the middlewares: they saw everything.
    assert_eq!(*any.lock().unwrap(), vec!["forbidden", "old-name", "echo"]);
    assert!(matches!(
        c.next_within(Duration::from_millis(100)).await,
        Err(())
    ));
}

#[tokio::test]
async fn emitted_data_is_serialized_as_socket_io_arguments() {
    #[derive(Serialize)]
    enum Status {
        Online,
        Away { minutes: u32 },
    }
    let io = SocketIo::new();
    io.of("/").on_connection(|socket| {
        socket.emit("none", ()).unwrap();
        socket.emit("null", Value::Null).unwrap();
        socket.emit("one-array", vec![1, 2]).unwrap();
        socket.emit("two", ("a", 2)).unwrap();
        socket
            .emit("status", (Status::Online, Status::Away { minutes: 5 }))
            .unwrap();
        socket
            .emit("bin", (Bytes::from_static(b"x"), json!({"k": 1})))
            .unwrap();
        assert!(matches!(
            socket.emit("connect", ()),
            Err(volley_socketio::EmitError::Reserved(_))
        ));
        let mut bad = std::collections::HashMap::new();
        bad.insert((1, 2), 3);
        assert!(matches!(
            socket.emit("bad", &bad),
            Err(volley_socketio::EmitError::Data(_))
        ));
    });
    let addr = start(io).await;
    let (mut c, _) = WsClient::connect_ns(addr, "0").await;
    for expected in [
        r#"2["none"]"#,
        r#"2["null",null]"#,
        r#"2["one-array",[1,2]]"#,
        r#"2["two","a",2]"#,
        r#"2["status","Online",{"Away":{"minutes":5}}]"#,
        r#"51-["bin",{"_placeholder":true,"num":0},{"k":1}]"#,
    ] {
        assert_eq!(c.recv_text().await, expected);
    }
    assert_eq!(
        c.next().await,
        Some(Frame::Binary(Bytes::from_static(b"x")))
    );
}
