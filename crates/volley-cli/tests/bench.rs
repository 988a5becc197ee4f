//! `volley bench`: functional tests of each mode against `volley serve` and small in-test TCP
//! servers (no performance assertions).

mod common;

use std::process::{Output, Stdio};

use common::{Serve, WAIT, volley};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::timeout;

/// Runs `volley bench <args>` and returns its output (bounded by [`WAIT`]).
async fn bench(args: &[&str]) -> Output {
    let child = volley()
        .arg("bench")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volley bench");
    timeout(WAIT, child.wait_with_output())
        .await
        .expect("volley bench finished in time")
        .expect("volley bench output")
}

/// The JSON object `volley bench --json` printed.
/// `volley bench echo --raw tcp://addr --duration <duration> --warmup 0s --json`.
async fn raw_echo(addr: std::net::SocketAddr, duration: &str) -> Output {
    let url = format!("tcp://{addr}");
    bench(&[
        "echo",
        "--raw",
        &url,
        "--duration",
        duration,
        "--warmup",
        "0s",
        "--json",
    ])
    .await
}

fn json(output: &Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON object ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// A TCP echo server on a free loopback port; with `corrupt`, it flips one byte of the stream
/// after the first `skip` bytes (e.g. past the HTTP handshake).
async fn tcp_echo(corrupt: Option<usize>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                let mut total = 0usize;
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if let Some(at) = corrupt
                        && (total..total + n).contains(&at)
                    {
                        buf[at - total] ^= 0x01;
                    }
                    total += n;
                    if stream.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// A "WebSocket echo server" that answers the handshake like a real one (via volley's accept)
/// and then echoes each frame's payload in an unmasked frame, flipping one payload byte of the
/// third message.
async fn corrupting_ws_echo() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = volley::accept(stream).await else {
                    return;
                };
                let mut count = 0u32;
                while let Some(Ok(message)) = ws.recv().await {
                    if let volley::Message::Text(text) = message {
                        count += 1;
                        let mut bytes = text.as_str().as_bytes().to_vec();
                        if count == 3 {
                            // Stays ASCII (valid UTF-8): only the content is wrong.
                            let last = bytes.len() - 1;
                            bytes[last] = if bytes[last] == b'a' { b'b' } else { b'a' };
                        }
                        let text = String::from_utf8(bytes).expect("ASCII");
                        if ws.send(volley::Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn echo_against_volley_serve_completes_messages_without_errors() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let pid = server.child.id().expect("server pid").to_string();
    let url = server.url();
    let output = bench(&[
        "echo",
        "--url",
        &url,
        "--connections",
        "4",
        "--size",
        "300",
        "--in-flight",
        "2",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--server-pid",
        &pid,
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["mode"], "echo");
    assert!(
        report["msg_per_s"].as_f64().expect("msg_per_s") > 0.0,
        "{report}"
    );
    assert!(
        report["messages"].as_u64().expect("messages") > 0,
        "{report}"
    );
    assert_eq!(report["mismatches"], 0, "{report}");
    assert_eq!(report["connection_errors"], 0, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    let latency = &report["latency_us"];
    assert!(latency["p50"].as_f64().expect("p50") > 0.0, "{report}");
    assert!(
        latency["p99"].as_f64() >= latency["p50"].as_f64(),
        "{report}"
    );
    // The server worked for the echoes over the measured second: some CPU per echo, at most
    // the whole of one core (its one thread), and the generator's own use beside it.
    let per_echo = report["server_cpu_us_per_msg"]
        .as_f64()
        .expect("server CPU");
    let messages = report["messages"].as_f64().expect("messages");
    assert!(per_echo > 0.0 && per_echo * messages <= 1.05e6, "{report}");
    let server = report["server_cpu_percent"].as_f64().expect("server %");
    assert!(server > 0.0 && server <= 105.0, "{report}");
    let generator = report["generator_cpu_percent"]
        .as_f64()
        .expect("generator %");
    assert!(generator > 0.0, "{report}");
}

#[tokio::test]
async fn echo_fails_clearly_when_the_server_pid_cannot_be_read() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let url = server.url();
    let output = bench(&[
        "echo",
        "--url",
        &url,
        "--duration",
        "300ms",
        "--warmup",
        "100ms",
        "--server-pid",
        "4000000000",
    ])
    .await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("CPU time of the server"), "{stderr}");
}

#[tokio::test]
async fn echo_detects_a_corrupted_echo_and_fails() {
    let addr = corrupting_ws_echo().await;
    let output = bench(&[
        "echo",
        "--url",
        &format!("ws://{addr}/"),
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["mismatches"], 1, "{report}");
    assert_eq!(report["ok"], false, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("differs"), "{report}");
}

#[tokio::test]
async fn raw_echo_against_a_tcp_echo_server_works() {
    let addr = tcp_echo(None).await;
    let output = bench(&[
        "echo",
        "--raw",
        &format!("tcp://{addr}"),
        "--connections",
        "3",
        "--size",
        "1000",
        "--binary",
        "--duration",
        "500ms",
        "--warmup",
        "100ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["raw"], true, "{report}");
    assert!(
        report["messages"].as_u64().expect("messages") > 0,
        "{report}"
    );
    assert_eq!(report["mismatches"], 0, "{report}");
}

#[tokio::test]
async fn raw_echo_detects_a_flipped_byte() {
    // Byte 100 of the stream lies in the payload of the fourth 20-byte message (frames of 26).
    let addr = tcp_echo(Some(100)).await;
    let output = raw_echo(addr, "300ms").await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["mismatches"], 1, "{report}");
}

#[tokio::test]
async fn echo_against_a_server_that_does_not_echo_fails() {
    // Accepts and reads, never answers: no message completes.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    let output = raw_echo(addr, "200ms").await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["messages"], 0, "{report}");
}

#[tokio::test]
async fn fanout_delivers_every_publication_to_every_subscriber() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let url = format!("ws://{}/chat", server.addr);
    let output = bench(&[
        "fanout",
        "--url",
        &url,
        "--subscribers",
        "10",
        "--rate",
        "500",
        "--size",
        "200",
        "--duration",
        "1s",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["out_of_order"], 0, "{report}");
    let published = report["published"].as_u64().expect("published");
    assert!(published > 0, "{report}");
    assert_eq!(
        report["deliveries"].as_u64(),
        Some(published * 10),
        "{report}"
    );
    assert!(
        report["latency_us"]["p50"].as_f64().expect("p50") > 0.0,
        "{report}"
    );
}

#[tokio::test]
async fn connections_reports_server_memory_per_connection() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let pid = server.child.id().expect("server pid").to_string();
    let url = server.url();
    let output = bench(&[
        "connections",
        "--url",
        &url,
        "--count",
        "200",
        "--server-pid",
        &pid,
        "--hold",
        "1s",
        "--settle",
        "500ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["opened"], 200, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    let per = report["vm_rss_bytes_per_connection"]
        .as_f64()
        .expect("a per-connection figure");
    // Each connection holds at least some server state; none holds megabytes.
    assert!(per > 0.0 && per < 1e6, "{report}");
    assert!(report["vm_rss_kib_after"].as_u64() > report["vm_rss_kib_before"].as_u64());
}

#[tokio::test]
async fn connections_refuses_more_than_the_open_files_limit() {
    let output = bench(&[
        "connections",
        "--url",
        "ws://127.0.0.1:9/",
        "--count",
        "100000000",
    ])
    .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("open files"), "{stderr}");
}

#[tokio::test]
async fn bad_arguments_get_clear_errors() {
    let output = bench(&["echo", "--url", "http://127.0.0.1:1/", "--duration", "1s"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("ws://"));
    let output = bench(&["echo", "--url", "ws://127.0.0.1:1/", "--duration", "soon"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("duration"));
}

#[tokio::test]
async fn echo_with_the_volley_client_side_verifies_echoes_too() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let url = server.url();
    let output = bench(&[
        "echo",
        "--url",
        &url,
        "--client",
        "volley",
        "--connections",
        "2",
        "--in-flight",
        "3",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert!(
        report["messages"].as_u64().expect("messages") > 0,
        "{report}"
    );
    assert_eq!(report["mismatches"], 0, "{report}");
    // And it detects a corrupted echo as the lean side does.
    let addr = corrupting_ws_echo().await;
    let output = bench(&[
        "echo",
        "--url",
        &format!("ws://{addr}/"),
        "--client",
        "volley",
        "--duration",
        "500ms",
        "--warmup",
        "0s",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["mismatches"], 1, "{report}");
}

#[tokio::test]
async fn connections_held_past_the_ping_timeout_answer_pings_and_stay_open() {
    let server = Serve::start_with(&[
        "--threads",
        "1",
        "--ping-interval",
        "0.2",
        "--ping-timeout",
        "0.3",
    ])
    .await;
    let url = server.url();
    let output = bench(&[
        "connections",
        "--url",
        &url,
        "--count",
        "20",
        "--hold",
        "1500ms",
        "--settle",
        "100ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["opened"], 20, "{report}");
    assert_eq!(report["closed_while_held"], 0, "{report}");
    // Without --server-pid there is no memory figure.
    assert!(report["vm_rss_bytes_per_connection"].is_null(), "{report}");
}

#[tokio::test]
async fn serve_threads_must_be_at_least_one() {
    let output = timeout(
        WAIT,
        volley()
            .args(["serve", "--bind", "127.0.0.1:0", "--threads", "0"])
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("volley serve exited in time")
    .expect("volley serve output");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--threads"));
}

#[tokio::test]
async fn storm_completes_every_handshake_and_echo_against_volley_serve() {
    let server = Serve::start_with(&["--threads", "1"]).await;
    let url = server.url();
    let output = bench(&[
        "storm",
        "--url",
        &url,
        "--count",
        "500",
        "--in-flight",
        "100",
        "--hold",
        "300ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["mode"], "storm", "{report}");
    assert_eq!(report["handshakes"], 500, "{report}");
    assert_eq!(report["echoes"], 500, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["closed_before_end"], 0, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    for kind in [
        "refused",
        "reset",
        "timeout",
        "bad_handshake",
        "bad_echo",
        "other",
    ] {
        assert_eq!(report["failures"][kind], 0, "{kind}: {report}");
    }
    assert!(
        report["handshakes_per_s"].as_f64().expect("rate") > 0.0,
        "{report}"
    );
    for times in ["tcp_connect_ms", "handshake_ms", "echo_ms"] {
        let t = &report[times];
        assert_eq!(t["samples"], 500, "{times}: {report}");
        let (p50, p99, max) = (t["p50"].as_f64(), t["p99"].as_f64(), t["max"].as_f64());
        assert!(
            p50 > Some(0.0) && p99 >= p50 && max >= p99,
            "{times}: {report}"
        );
    }
    // Each stage ends after the one before it.
    assert!(
        report["echo_ms"]["max"].as_f64() >= report["handshake_ms"]["max"].as_f64()
            && report["handshake_ms"]["p50"].as_f64() >= report["tcp_connect_ms"]["p50"].as_f64(),
        "{report}"
    );
}

/// A WebSocket server whose connections misbehave in turn, by the order they were accepted:
/// the 1st of every 5 is reset before its handshake, the 2nd answered 400, the 3rd gets a
/// wrong echo, the 4th is closed right after a good echo, the 5th is served well.
async fn storm_target() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        let mut n = 0u32;
        while let Ok((stream, _)) = listener.accept().await {
            n += 1;
            let turn = n % 5;
            tokio::spawn(async move {
                let mut stream = stream;
                match turn {
                    1 => {
                        // Reset: close with unread data (the request) in the receive queue.
                        let mut first = [0u8; 1];
                        let _ = stream.read(&mut first).await;
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        drop(stream);
                    }
                    2 => {
                        let mut buf = vec![0u8; 4096];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream
                            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        let _ = stream.shutdown().await;
                    }
                    _ => {
                        let Ok(mut ws) = volley::accept(stream).await else {
                            return;
                        };
                        if let Some(Ok(volley::Message::Text(text))) = ws.recv().await {
                            let reply = if turn == 3 {
                                text.as_str().replace("storm", "strom")
                            } else {
                                text.as_str().to_owned()
                            };
                            let _ = ws.send(volley::Message::text(reply)).await;
                        }
                        if turn == 4 {
                            let _ = ws.close(None).await;
                        } else {
                            while let Some(Ok(_)) = ws.recv().await {}
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn storm_counts_failures_by_kind_and_connections_closed_before_the_end() {
    let addr = storm_target().await;
    let output = bench(&[
        "storm",
        "--url",
        &format!("ws://{addr}/"),
        "--count",
        "50",
        "--in-flight",
        "10",
        "--hold",
        "500ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["ok"], false, "{report}");
    let failures = &report["failures"];
    assert_eq!(failures["reset"], 10, "{report}");
    assert_eq!(failures["bad_handshake"], 10, "{report}");
    assert_eq!(failures["bad_echo"], 10, "{report}");
    assert_eq!(failures["refused"], 0, "{report}");
    assert_eq!(failures["timeout"], 0, "{report}");
    assert_eq!(failures["other"], 0, "{report}");
    assert_eq!(report["failed"], 30, "{report}");
    // The handshakes of the wrong echoes completed; only 20 echoes were right.
    assert_eq!(report["handshakes"], 30, "{report}");
    assert_eq!(report["echoes"], 20, "{report}");
    assert_eq!(report["closed_before_end"], 10, "{report}");
    let errors = report["errors"].to_string();
    assert!(errors.contains("bad_echo: client"), "{report}");
    assert!(errors.contains("differs"), "{report}");
}

#[tokio::test]
async fn storm_counts_refused_connections_and_timeouts() {
    // Nothing listens on a port just freed: every connect is refused.
    let port = common::free_port();
    let output = bench(&[
        "storm",
        "--url",
        &format!("ws://127.0.0.1:{port}/"),
        "--count",
        "20",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["failures"]["refused"], 20, "{report}");
    assert_eq!(report["handshakes"], 0, "{report}");
    // A server that accepts and never answers: every attempt times out waiting for its 101.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let output = bench(&[
        "storm",
        "--url",
        &format!("ws://{addr}/"),
        "--count",
        "20",
        "--timeout",
        "300ms",
        "--json",
    ])
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["failures"]["timeout"], 20, "{report}");
    assert!(
        report["errors"].to_string().contains("waiting for the 101"),
        "{report}"
    );
}

/// A Socket.IO server in this process with the handlers of `scripts/bench-peers`' Socket.IO
/// servers (volley-socketio's `bench_server` example): `message` → `message-back`,
/// `message-with-ack` acknowledged with its data, `join` (acknowledged), `to-room` →
/// `room-message` to the room (acknowledged). With `broken`, `message-back` carries other data.
async fn sio_bench_server(broken: bool) -> std::net::SocketAddr {
    use volley_socketio::{Payload, SocketIo};
    let io = SocketIo::new();
    io.of("/").on_connection(move |socket| {
        socket.on("message", move |socket, payload: Payload, _ack| {
            if broken {
                let _ = socket.emit("message-back", "something else");
            } else {
                let _ = socket.emit("message-back", &payload);
            }
        });
        socket.on("message-with-ack", |_socket, payload: Payload, ack| {
            if let Some(ack) = ack {
                let _ = ack.send(&payload);
            }
        });
        socket.on("join", |socket, room: String, ack| {
            socket.join(room);
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
        socket.on(
            "to-room",
            |socket, (room, data): (String, serde_json::Value), ack| {
                let _ = socket.namespace().to(room).emit("room-message", &data);
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            },
        );
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    tokio::spawn(async move { io.serve(listener).await });
    addr
}

/// `volley bench socketio --workload <workload> --json` against `addr`, this process being the
/// server (short runs).
async fn socketio(addr: std::net::SocketAddr, workload: &str, extra: &[&str]) -> Output {
    let pid = std::process::id().to_string();
    let url = format!("ws://{addr}/");
    let mut args = vec![
        "socketio",
        "--url",
        &url,
        "--workload",
        workload,
        "--server-pid",
        &pid,
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ];
    args.extend_from_slice(extra);
    bench(&args).await
}

/// The report of a run that must have succeeded.
fn socketio_ok(output: &Output, workload: &str) -> serde_json::Value {
    let report = json(output);
    assert!(output.status.success(), "{report}");
    assert_eq!(report["mode"], "socketio", "{report}");
    assert_eq!(report["workload"], workload, "{report}");
    assert_eq!(report["ok"], true, "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_workloads_run_against_a_socketio_server() {
    let addr = sio_bench_server(false).await;
    for workload in ["echo", "ack"] {
        let output = socketio(addr, workload, &["--connections", "4", "--in-flight", "3"]).await;
        let report = socketio_ok(&output, workload);
        assert!(report["round_trips"].as_u64() > Some(0), "{report}");
        assert_eq!(report["mismatches"], 0, "{report}");
        assert_eq!(report["connection_errors"], 0, "{report}");
        assert!(
            report["server_cpu_us_per_msg"].as_f64() > Some(0.0),
            "{report}"
        );
    }
    let output = socketio(addr, "room", &["--connections", "5", "--size", "100"]).await;
    let report = socketio_ok(&output, "room");
    assert_eq!(report["members"], 5, "{report}");
    assert!(report["publications"].as_u64() > Some(0), "{report}");
    // Every member got every publication of the measured window.
    assert!(
        report["deliveries"].as_u64() >= report["publications"].as_u64(),
        "{report}"
    );
    assert_eq!(report["connection_errors"], 0, "{report}");
    let idle = [
        "--connections",
        "50",
        "--hold",
        "500ms",
        "--settle",
        "300ms",
    ];
    let report = socketio_ok(&socketio(addr, "idle", &idle).await, "idle");
    assert_eq!(report["opened"], 50, "{report}");
    assert_eq!(report["closed_while_held"], 0, "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_detects_wrong_replies_and_servers_that_are_not_socketio() {
    let addr = sio_bench_server(true).await;
    let output = socketio(addr, "echo", &["--connections", "2"]).await;
    let report = json(&output);
    assert!(!output.status.success(), "{report}");
    assert!(report["mismatches"].as_u64() > Some(0), "{report}");
    // A WebSocket echo answers the Engine.IO handshake with silence.
    let server = Serve::start().await;
    let url = format!("ws://{}/echo", server.addr);
    let args = [
        "socketio",
        "--url",
        &url,
        "--connections",
        "1",
        "--duration",
        "300ms",
    ];
    let output = bench(&args).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not connected to Socket.IO"), "{stderr}");
}
