//! `volley bench churn --check` against `volley serve` (issue #14): a minute of connections
//! opened at a fixed rate on the echo, the topics chat and Socket.IO, ending in every close kind
//! (clean, FIN, resets before, during and after the handshake and during the close handshake,
//! half-open peers silent after the exchange or halfway through the request), must leave the
//! server's file descriptors where they started, no connection stuck, and its RSS within 5 %
//! of its value after the warm-up.
//!
//! Chosen from measurements (docs/PERFORMANCE.md, "Churn"), debug builds as `cargo test` runs
//! them, on the 2-core machine with other builds running and with three CPU hogs on top:
//! - 150 connections/s: the generator used 4–26 s of CPU and the server 5–8 s per minute, so
//!   the rate holds (achieved 150.0/s in every run) on a loaded machine.
//! - Short keep-alive and timeouts, so that half-open peers are freed within 4 s and the
//!   connection population is steady after ~5 s.
//! - Warm-up 20 s: RSS at the end was 1.9–2.4 % above its value at 5 s, 1.0–1.6 % above 10 s
//!   and 0.6–1.1 % above 20 s (allocator pools still filling early on); at 20 s the margin to
//!   the 5 % bound is > 3.9 points.
//! - A warm-up burst of 3 s worth of connections (450 at once): a stall of the server (a loaded
//!   machine) piles connections up, and the allocator keeps the pile-up's memory. Stopping the
//!   server with SIGSTOP for 1 s and then 2 s raised RSS by 3.0 % and 4.5 % (the check failed at
//!   +8.8 %); after the burst the same stalls raised it by 0.0 % (flat within 8 KiB from 1 s to
//!   the end), so the check sees growth, not pile-ups.
//! - No file descriptor of tolerance: every run ended at exactly the baseline (the settle phase
//!   waits for it).

mod common;

use std::process::{Output, Stdio};
use std::time::Duration;

use common::{Serve, volley};
use tokio::time::timeout;

/// `volley serve` with short keep-alive and timeouts: half-open peers are freed within 2 s on
/// WebSocket routes (ping after 1 s, pong overdue 1 s later), 4 s on Socket.IO (its heartbeat,
/// then 2 s for the close handshake), half-sent request heads after 2 s.
const SHORT_TIMERS: [&str; 14] = [
    "--ping-interval",
    "1",
    "--ping-timeout",
    "1",
    "--close-timeout",
    "2",
    "--open-timeout",
    "2",
    "--history-age",
    "5",
    "--socketio-ping-interval",
    "1",
    "--socketio-ping-timeout",
    "1",
];

/// One churn run at a time: the two tests would load each other's server.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `volley bench churn` against `server` on its three WebSocket routes, bounded by
/// `limit`.
async fn churn(server: &Serve, args: &[&str], limit: Duration) -> Output {
    let pid = server.child.id().expect("server pid").to_string();
    let base = format!("ws://{}", server.addr);
    let child = volley()
        .args(["bench", "churn", "--json", "--server-pid", &pid])
        .args(["--url", &format!("{base}/")])
        .args(["--url", &format!("{base}/chat")])
        .args(["--url", &format!("{base}/socket.io/")])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn volley bench churn");
    timeout(limit, child.wait_with_output())
        .await
        .expect("volley bench churn finished in time")
        .expect("volley bench churn output")
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

fn u64_at(report: &serde_json::Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(serde_json::Value::as_u64)
        .unwrap_or_else(|| panic!("{pointer} missing: {report}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_minute_of_churn_leaves_the_server_where_it_started() {
    let _serial = SERIAL.lock().await;
    let server = Serve::start_with(&SHORT_TIMERS).await;
    let output = churn(
        &server,
        &[
            "--rate",
            "150",
            "--duration",
            "60s",
            "--warmup",
            "20s",
            "--warmup-burst",
            "3s",
            "--half-open-limit",
            "20s",
            "--check",
            "--fd-tolerance",
            "0",
        ],
        Duration::from_secs(180),
    )
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(report["ok"], true, "{report}");
    // The rate held (9,000 on schedule and the burst of 450), and every connection ended as
    // planned, on every route and kind.
    assert_eq!(report["warmup_burst"], 450, "{report}");
    assert!(
        report["achieved_rate"].as_f64().expect("rate") >= 140.0,
        "{report}"
    );
    let opened = u64_at(&report, "/opened");
    assert!(opened >= 9_000, "{report}");
    for route in report["routes"].as_array().expect("routes") {
        assert_eq!(route["failed"], 0, "{route}");
        assert!(
            route["ok"].as_u64().expect("ok") >= opened / 3 - 1,
            "{route}"
        );
    }
    let kinds = report["kinds"].as_object().expect("kinds");
    assert_eq!(kinds.len(), 8, "every close kind ran: {report}");
    for (kind, count) in kinds {
        assert_eq!(count["failed"], 0, "{kind}: {report}");
        assert_eq!(count["ok"], count["started"], "{kind}: {report}");
    }
    for (stage, n) in report["errors_by_stage"].as_object().expect("stages") {
        assert_eq!(n, 0, "{stage}: {report}");
    }
    // Half-open peers were freed by the server's timers, not by the client, and soon: 2 s on
    // the WebSocket routes and for half-sent requests, 4 s on Socket.IO (2 s of heartbeat, 2 s
    // for the close handshake; it was 12 s when that waited volley's default 10 s).
    for (kind, half_open) in report["half_open"].as_object().expect("half_open") {
        assert_eq!(half_open["not_freed"], 0, "{kind}: {report}");
        assert_eq!(half_open["freed"], half_open["count"], "{kind}: {report}");
        let slowest = half_open["freed_after_s"]["max"].as_f64().expect("max");
        assert!(slowest < 9.0, "{kind} freed after {slowest} s: {report}");
    }
    // File descriptors back to the baseline, no socket left, RSS within 5 % of its value after
    // the warm-up.
    let baseline_fds = u64_at(&report, "/server/fds/baseline");
    assert_eq!(u64_at(&report, "/server/fds/end"), baseline_fds, "{report}");
    assert!(
        u64_at(&report, "/server/fds/max") > baseline_fds + 20,
        "{report}"
    );
    assert_eq!(report["stuck"], 0, "{report}");
    assert_eq!(u64_at(&report, "/server/held_sockets/end"), 0, "{report}");
    let warm = u64_at(&report, "/server/vm_rss_kib/after_warmup") as f64;
    for at in ["end_of_load", "end"] {
        let rss = u64_at(&report, &format!("/server/vm_rss_kib/{at}")) as f64;
        assert!(
            rss <= warm * 1.05,
            "RSS {at} {rss} KiB > 1.05 × {warm} KiB: {report}"
        );
    }
    for check in ["rss", "fds", "stuck"] {
        assert_eq!(report["checks"][check]["ok"], true, "{check}: {report}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_check_fails_when_the_server_keeps_half_open_peers() {
    let _serial = SERIAL.lock().await;
    // Keep-alive off: nothing frees a peer that went silent after its handshake.
    let mut args = SHORT_TIMERS.to_vec();
    args[1] = "0";
    let server = Serve::start_with(&args).await;
    let output = churn(
        &server,
        &[
            "--rate",
            "50",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--mix",
            "clean=3,silent=1",
            "--half-open-limit",
            "3s",
            "--check",
        ],
        Duration::from_secs(60),
    )
    .await;
    let report = json(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["checks"]["stuck"]["ok"], false, "{report}");
    // The silent peers on the two WebSocket routes stay; Socket.IO's own heartbeat (1 s here)
    // still frees those on /socket.io/.
    let silent = &report["half_open"]["silent"];
    let not_freed = silent["not_freed"].as_u64().expect("not_freed");
    assert!(not_freed > 0, "{report}");
    assert_eq!(
        silent["freed"].as_u64().expect("freed") + not_freed,
        silent["count"].as_u64().expect("count"),
        "{report}"
    );
    assert_eq!(report["stuck"].as_u64(), Some(not_freed), "{report}");
    assert_eq!(report["kinds"]["clean"]["failed"], 0, "{report}");
}
