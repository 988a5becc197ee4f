//! `volley bench storm`: a reconnect storm, as after a server restart.
//!
//! N clients connect at once, at most `--in-flight` connection attempts outstanding (an attempt
//! lasts from the start of its TCP connect until its echo is verified or it fails; a new one
//! starts as soon as one ends). Each attempt connects, completes the opening handshake (a fresh
//! key each, the `101` validated by `volley-proto`'s `ClientHandshake`), sends one 20-byte text
//! message and checks that the echo is that message; the connection then stays open until every
//! attempt is done and `--hold` has passed, when the connections the server closed meanwhile are
//! counted.
//!
//! Reported: handshakes per second over the storm (from the first connect to the end of the last
//! attempt), the time from the start of each TCP connect to the connect's completion, to the
//! handshake's `101` and to the echo (p50/p99/max), and failures by kind.
//!
//! Past [`PER_SOURCE`] connections to a loopback server the client sockets are bound to several
//! source addresses, as `volley bench connections` does (the addresses depend on the server's
//! port, so that storms against servers on different ports do not meet each other's sockets in
//! TIME_WAIT).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use volley::proto::handshake::ClientHandshake;

use super::connections::{
    PER_SOURCE, SPARE_FDS, connect_socket, is_loopback_v4, raise_nofile, source_address,
};
use super::wire::frame_header;
use super::{
    HandshakeFailure, Progress, Target, client_handshake, current_thread_runtime,
    latency_histogram, parse_duration, round3,
};

/// Payload bytes of the one message each connection sends.
const PAYLOAD: usize = 20;
/// Largest frame accepted where the echo is expected (anything longer is a bad echo).
const MAX_FRAME: usize = 64 * 1024;
/// Error messages kept for the report.
const MAX_ERRORS_KEPT: usize = 8;
/// Most clients in one storm (the open-files limit usually binds first).
const MAX_COUNT: usize = 100_000;

/// Arguments of `volley bench storm`.
#[derive(clap::Args)]
pub(crate) struct StormArgs {
    /// The echo server: ws://host:port/path.
    #[arg(long)]
    url: String,
    /// Number of clients (each holds its connection until the end: one open file each).
    #[arg(long, default_value_t = 15_000)]
    count: usize,
    /// Connection attempts outstanding at most (connect + handshake + echo).
    #[arg(long, default_value_t = 1_000)]
    in_flight: usize,
    /// Time limit of one attempt, from the start of its TCP connect to its verified echo.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// How long the connections stay open after the last attempt ended, before the ones the
    /// server closed are counted and all are closed.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    hold: Duration,
    /// Print one JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// Why an attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// The TCP connect was refused (nothing listening, or the listener's queue refused it).
    Refused,
    /// The server reset the connection or closed it before the echo.
    Reset,
    /// The attempt did not complete within `--timeout` (or the kernel gave up connecting).
    Timeout,
    /// The server's answer to the handshake was not an acceptable `101`.
    BadHandshake,
    /// The first frame after the handshake was not the echo of the message sent.
    BadEcho,
    /// Anything else (e.g. no local port or file descriptor left).
    Other,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Refused,
        Kind::Reset,
        Kind::Timeout,
        Kind::BadHandshake,
        Kind::BadEcho,
        Kind::Other,
    ];

    /// The name in the JSON report.
    fn name(self) -> &'static str {
        match self {
            Kind::Refused => "refused",
            Kind::Reset => "reset",
            Kind::Timeout => "timeout",
            Kind::BadHandshake => "bad_handshake",
            Kind::BadEcho => "bad_echo",
            Kind::Other => "other",
        }
    }

    /// The kind of an I/O error.
    fn of_io(e: &std::io::Error) -> Self {
        match e.kind() {
            ErrorKind::ConnectionRefused => Kind::Refused,
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => Kind::Reset,
            ErrorKind::TimedOut => Kind::Timeout,
            _ => Kind::Other,
        }
    }

    fn of_handshake(e: &HandshakeFailure) -> Self {
        match e {
            HandshakeFailure::Send(e) | HandshakeFailure::Receive(e) => Kind::of_io(e),
            HandshakeFailure::Closed => Kind::Reset,
            HandshakeFailure::Refused(_) => Kind::BadHandshake,
        }
    }
}

/// A failed attempt.
struct Failure {
    kind: Kind,
    message: String,
    ended: Instant,
    /// From the start of the attempt to the 101, if the handshake completed.
    upgraded: Option<Duration>,
}

impl Failure {
    fn new(kind: Kind, message: String) -> Self {
        Self {
            kind,
            message,
            ended: Instant::now(),
            upgraded: None,
        }
    }
}

/// A connection whose handshake and echo completed, with its times from the start of the
/// attempt.
struct Opened {
    stream: TcpStream,
    connected: Duration,
    upgraded: Duration,
    echoed: Duration,
    ended: Instant,
}

/// What every attempt shares.
struct Plan {
    addr: SocketAddr,
    uri: http::Uri,
    timeout: Duration,
}

/// The text message connection `index` sends: exactly [`PAYLOAD`] ASCII bytes, distinct per
/// connection (so that an echo from another connection is caught too).
fn payload(index: usize) -> [u8; PAYLOAD] {
    let mut out = [0u8; PAYLOAD];
    let text = format!("storm-{:014}", index % 100_000_000_000_000);
    out.copy_from_slice(text.as_bytes());
    out
}

/// The masked client frame carrying `payload` (FIN, text).
fn masked_frame(index: usize, payload: &[u8; PAYLOAD]) -> [u8; PAYLOAD + 6] {
    let key = [0x6b, 0x1d, (index >> 8) as u8, index as u8];
    let mut frame = [0u8; PAYLOAD + 6];
    frame[0] = 0x81;
    frame[1] = 0x80 | PAYLOAD as u8;
    frame[2..6].copy_from_slice(&key);
    for (i, b) in payload.iter().enumerate() {
        frame[6 + i] = b ^ key[i % 4];
    }
    frame
}

/// Reads server frames from `buf` (bytes already read) and `stream` until a data frame arrives,
/// and checks it is the unmasked text echo of `expected`; pings and pongs before it are skipped.
async fn read_echo(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    expected: &[u8],
) -> Result<(), Failure> {
    let bad = |message: String| Failure::new(Kind::BadEcho, message);
    let mut chunk = [0u8; 256];
    loop {
        if buf.len() >= 2 {
            if buf[1] & 0x80 != 0 {
                return Err(bad("the server sent a masked frame".into()));
            }
            if let Some((header, len)) = frame_header(&buf) {
                if len > MAX_FRAME {
                    return Err(bad(format!(
                        "a frame of {len} bytes where the {PAYLOAD}-byte echo was expected"
                    )));
                }
                if buf.len() >= header + len {
                    let body = &buf[header..header + len];
                    match buf[0] {
                        // Ping or pong before the echo: skip it.
                        0x89 | 0x8a => {
                            buf.drain(..header + len);
                            continue;
                        }
                        0x81 if body == expected => return Ok(()),
                        0x81 => {
                            return Err(bad(format!(
                                "the echo differs: sent {:?}, received {:?}",
                                String::from_utf8_lossy(expected),
                                String::from_utf8_lossy(&body[..body.len().min(64)])
                            )));
                        }
                        0x88 => {
                            let code =
                                (body.len() >= 2).then(|| u16::from_be_bytes([body[0], body[1]]));
                            return Err(bad(format!(
                                "the server closed the connection instead of echoing (close code {})",
                                code.map_or("none".into(), |c| c.to_string())
                            )));
                        }
                        first => {
                            return Err(bad(format!(
                                "a frame with first byte {first:#04x} where the text echo was expected"
                            )));
                        }
                    }
                }
            }
        }
        match stream.read(&mut chunk).await {
            Ok(0) => {
                return Err(Failure::new(
                    Kind::Reset,
                    "the server closed the connection before the echo".into(),
                ));
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => {
                return Err(Failure::new(
                    Kind::of_io(&e),
                    format!("reading the echo: {e}"),
                ));
            }
        }
    }
}

/// Whether the server frames in `bytes` (as read, complete or not) include a close frame.
fn has_close_frame(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 2 {
        if bytes[0] & 0x0f == 0x8 {
            return true;
        }
        let (len, header): (usize, usize) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (usize::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[2..10]);
                (
                    usize::try_from(u64::from_be_bytes(b)).unwrap_or(usize::MAX),
                    10,
                )
            }
            126 | 127 => return false,
            n => (usize::from(n), 2),
        };
        match bytes.get(header.saturating_add(len)..) {
            Some(rest) => bytes = rest,
            None => return false,
        }
    }
    false
}

/// One client: connect (from `source`), handshake, one verified echo, within the time limit.
async fn attempt(
    index: usize,
    plan: Arc<Plan>,
    source: Option<SocketAddr>,
) -> Result<Opened, Failure> {
    let start = Instant::now();
    const STAGES: [&str; 3] = ["connecting", "waiting for the 101", "waiting for the echo"];
    let stage = AtomicU8::new(0);
    let work = async {
        let mut stream = connect_socket(plan.addr, source).await.map_err(|e| {
            Failure::new(
                Kind::of_io(&e),
                format!("cannot connect to {}: {e}", plan.addr),
            )
        })?;
        let connected = start.elapsed();
        stage.store(1, Ordering::Relaxed);
        let handshake = ClientHandshake::new(&plan.uri, &[], &http::HeaderMap::new())
            .map_err(|e| Failure::new(Kind::Other, format!("handshake: {e}")))?;
        let leftover = client_handshake(&mut stream, &handshake)
            .await
            .map_err(|e| Failure::new(Kind::of_handshake(&e), e.to_string()))?;
        let upgraded = start.elapsed();
        stage.store(2, Ordering::Relaxed);
        let payload = payload(index);
        stream
            .write_all(&masked_frame(index, &payload))
            .await
            .map_err(|e| Failure::new(Kind::of_io(&e), format!("sending the message: {e}")))?;
        read_echo(&mut stream, leftover, &payload)
            .await
            .map_err(|failure| Failure {
                upgraded: Some(upgraded),
                ..failure
            })?;
        Ok(Opened {
            stream,
            connected,
            upgraded,
            echoed: start.elapsed(),
            ended: Instant::now(),
        })
    };
    let result = match tokio::time::timeout(plan.timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(Failure::new(
            Kind::Timeout,
            format!(
                "still {} after {:?}",
                STAGES[usize::from(stage.load(Ordering::Relaxed))],
                plan.timeout
            ),
        )),
    };
    result.map_err(|mut failure| {
        failure.message = format!("client {index}: {}", failure.message);
        failure
    })
}

/// Times in milliseconds (3 decimals) as JSON, and one line of text.
fn ms_summary(h: &Histogram<u64>) -> (serde_json::Value, String) {
    if h.is_empty() {
        return (serde_json::Value::Null, "no samples".into());
    }
    let ms = |ns: u64| ns as f64 / 1e6;
    let (p50, p99, p999, max) = (
        ms(h.value_at_quantile(0.5)),
        ms(h.value_at_quantile(0.99)),
        ms(h.value_at_quantile(0.999)),
        ms(h.max()),
    );
    let json = serde_json::json!({
        "samples": h.len(),
        "mean": round3(h.mean() / 1e6),
        "p50": round3(p50),
        "p99": round3(p99),
        "p99_9": round3(p999),
        "max": round3(max),
    });
    (
        json,
        format!("p50 {p50:.1} ms, p99 {p99:.1} ms, max {max:.1} ms"),
    )
}

/// Records `d` in nanoseconds (clamped to the histogram's range).
fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
    let _ = h.record(ns.min(h.high()));
}

pub(super) fn run(args: StormArgs) -> Result<ExitCode, String> {
    let target = Target::parse(&args.url)?;
    let Some(uri) = target.uri.clone() else {
        return Err("--url must be a ws:// URL".into());
    };
    if args.count == 0 || args.count > MAX_COUNT {
        return Err(format!("--count must be between 1 and {MAX_COUNT}"));
    }
    if args.in_flight == 0 || args.in_flight > 20_000 {
        return Err("--in-flight must be between 1 and 20000".into());
    }
    if args.timeout.is_zero() {
        return Err("--timeout must be above 0".into());
    }
    let limit = raise_nofile()?;
    if args.count as u64 + SPARE_FDS > limit {
        return Err(format!(
            "--count {} needs {} open files (every client stays open until the end), but this \
             process may open only {limit} (the hard RLIMIT_NOFILE; raise it with `ulimit -Hn` \
             as root, or use fewer clients)",
            args.count,
            args.count as u64 + SPARE_FDS
        ));
    }
    let spread = args.count > PER_SOURCE && is_loopback_v4(target.addr);
    let port = target.addr.port();
    let plan = Arc::new(Plan {
        addr: target.addr,
        uri,
        timeout: args.timeout,
    });
    let runtime = current_thread_runtime()?;
    let counter = Arc::new(AtomicU64::new(0));
    let progress = Progress::counting(
        args.count as u64,
        2_000,
        args.timeout * 2 + Duration::from_secs(60),
        args.json,
        counter.clone(),
        "attempts",
    );
    let mut connected_h = latency_histogram();
    let mut upgraded_h = latency_histogram();
    let mut echoed_h = latency_histogram();
    let mut failures = [0u64; Kind::ALL.len()];
    let mut errors: Vec<String> = Vec::new();
    let mut held: Vec<TcpStream> = Vec::with_capacity(args.count);
    let started = Instant::now();
    let mut last_end = started;
    runtime.block_on(async {
        let mut tasks = JoinSet::new();
        let mut collect = |done: Result<Result<Opened, Failure>, tokio::task::JoinError>| {
            counter.fetch_add(1, Ordering::Relaxed);
            let failure = match done {
                Ok(Ok(opened)) => {
                    record(&mut connected_h, opened.connected);
                    record(&mut upgraded_h, opened.upgraded);
                    record(&mut echoed_h, opened.echoed);
                    last_end = last_end.max(opened.ended);
                    held.push(opened.stream);
                    return;
                }
                Ok(Err(failure)) => failure,
                Err(e) => Failure::new(Kind::Other, format!("client task: {e}")),
            };
            last_end = last_end.max(failure.ended);
            if let Some(upgraded) = failure.upgraded {
                record(&mut upgraded_h, upgraded);
            }
            failures[Kind::ALL
                .iter()
                .position(|k| *k == failure.kind)
                .unwrap_or(Kind::ALL.len() - 1)] += 1;
            if errors.len() < MAX_ERRORS_KEPT {
                errors.push(format!("{}: {}", failure.kind.name(), failure.message));
            }
        };
        for index in 0..args.count {
            while tasks.len() >= args.in_flight {
                match tasks.join_next().await {
                    Some(done) => collect(done),
                    None => break,
                }
            }
            let source = spread.then(|| source_address(index, port));
            tasks.spawn(attempt(index, plan.clone(), source));
        }
        while let Some(done) = tasks.join_next().await {
            collect(done);
        }
    });
    let storm_secs = last_end.duration_since(started).as_secs_f64();
    // Held until every attempt ended and --hold passed (the runtime keeps polling, so a close
    // by the server is seen); then a connection whose stream ended, failed or brought a close
    // frame was closed early.
    let closed_early = runtime.block_on(async {
        tokio::time::sleep(args.hold).await;
        let mut closed = 0u64;
        let mut scratch = vec![0u8; 4096];
        for stream in &held {
            let mut got = Vec::new();
            let open = loop {
                match stream.try_read(&mut scratch) {
                    Ok(0) => break false,
                    Ok(n) => got.extend_from_slice(&scratch[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break true,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
                if got.len() > MAX_FRAME {
                    break true;
                }
            };
            if !open || has_close_frame(&got) {
                closed += 1;
            }
        }
        closed
    });
    drop(progress);
    let opened = held.len();
    drop(held);
    runtime.shutdown_background();

    let handshakes = upgraded_h.len();
    let echoes = echoed_h.len();
    let failed: u64 = failures.iter().sum();
    let rate = handshakes as f64 / storm_secs.max(1e-9);
    let ok = failed == 0 && closed_early == 0 && opened == args.count;
    let sources = if spread {
        args.count.div_ceil(PER_SOURCE)
    } else {
        1
    };
    let (connect_json, connect_text) = ms_summary(&connected_h);
    let (upgrade_json, upgrade_text) = ms_summary(&upgraded_h);
    let (echo_json, echo_text) = ms_summary(&echoed_h);
    if args.json {
        let by_kind: serde_json::Map<String, serde_json::Value> = Kind::ALL
            .iter()
            .zip(failures)
            .map(|(k, n)| (k.name().to_string(), n.into()))
            .collect();
        let json = serde_json::json!({
            "mode": "storm",
            "url": args.url,
            "count": args.count,
            "in_flight": args.in_flight,
            "timeout_s": round3(args.timeout.as_secs_f64()),
            "source_addresses": sources,
            "handshakes": handshakes,
            "echoes": echoes,
            "failed": failed,
            "failures": by_kind,
            "closed_before_end": closed_early,
            "duration_s": round3(storm_secs),
            "handshakes_per_s": round3(rate),
            "tcp_connect_ms": connect_json,
            "handshake_ms": upgrade_json,
            "echo_ms": echo_json,
            "errors": errors,
            "ok": ok,
        });
        println!("{json}");
    } else {
        println!(
            "volley bench storm {}: {handshakes} of {} handshakes in {storm_secs:.2} s \
             ({rate:.0}/s), {} in flight{}",
            args.url,
            args.count,
            args.in_flight,
            if spread {
                format!(", from {sources} source addresses")
            } else {
                String::new()
            }
        );
        println!("  connect → 101:  {upgrade_text}");
        println!("  connect → echo: {echo_text} ({echoes} echoes verified)");
        println!("  TCP connect:    {connect_text}");
        let kinds: Vec<String> = Kind::ALL
            .iter()
            .zip(failures)
            .map(|(k, n)| format!("{} {n}", k.name().replace('_', " ")))
            .collect();
        println!(
            "  failures {failed} ({}); closed by the server before the end {closed_early}",
            kinds.join(", ")
        );
        for e in &errors {
            println!("    {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_distinct_and_frames_unmask_to_them() {
        let (a, b) = (payload(7), payload(70_000));
        assert_ne!(a, b);
        assert_eq!(&a, b"storm-00000000000007");
        let frame = masked_frame(70_000, &b);
        let key = &frame[2..6];
        let unmasked: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, x)| x ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, b);
        assert_eq!(frame[..2], [0x81, 0x80 | PAYLOAD as u8]);
    }

    #[test]
    fn close_frames_are_found_behind_other_frames() {
        let ping = [0x89, 0x02, b'h', b'i'];
        let close = [0x88, 0x02, 0x03, 0xe8];
        assert!(has_close_frame(&close));
        assert!(has_close_frame(&[&ping[..], &close[..]].concat()));
        assert!(!has_close_frame(&ping));
        assert!(!has_close_frame(&[0x81, 0x7e, 0x01]));
        // A 300-byte text frame, then a close.
        let mut text = vec![0x81, 0x7e, 0x01, 0x2c];
        text.extend(std::iter::repeat_n(b'x', 300));
        assert!(!has_close_frame(&text));
        text.extend_from_slice(&close);
        assert!(has_close_frame(&text));
    }

    #[test]
    fn io_errors_map_to_kinds() {
        let kind = |k| Kind::of_io(&std::io::Error::from(k));
        assert_eq!(kind(ErrorKind::ConnectionRefused), Kind::Refused);
        assert_eq!(kind(ErrorKind::ConnectionReset), Kind::Reset);
        assert_eq!(kind(ErrorKind::BrokenPipe), Kind::Reset);
        assert_eq!(kind(ErrorKind::TimedOut), Kind::Timeout);
        assert_eq!(kind(ErrorKind::AddrNotAvailable), Kind::Other);
    }
}
