//! Interop with real peers: Node `ws` and Python `websockets`, in both directions.
//!
//! The peers live in `e2e/` and are installed by `scripts/install-peers` (which `scripts/test`
//! runs first). A missing peer fails these tests: it is never a silent skip.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::timeout;
use volley::{ClientBuilder, CloseCode, CloseFrame, Config, Error, Message, ProtocolError, Server};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[derive(Clone, Copy, Debug)]
enum Peer {
    Node,
    Python,
}

impl Peer {
    fn command(self, script: &str) -> Command {
        let root = repo();
        let program = match self {
            Peer::Node => {
                assert!(
                    root.join("e2e/node_modules/ws").exists(),
                    "e2e/node_modules/ws is missing: run scripts/install-peers"
                );
                PathBuf::from("node")
            }
            Peer::Python => {
                let python = root.join(".deps/py/bin/python");
                assert!(
                    python.exists(),
                    "{} is missing: run scripts/install-peers",
                    python.display()
                );
                python
            }
        };
        let path = match self {
            Peer::Node => root.join("e2e/node").join(format!("{script}.js")),
            Peer::Python => root.join("e2e/python").join(format!("{script}.py")),
        };
        let mut cmd = Command::new(program);
        cmd.arg(path).kill_on_drop(true);
        cmd
    }
}

// ---------------------------------------------------------------------------------------------
// Peer clients against a Volley echo server.
// ---------------------------------------------------------------------------------------------

async fn volley_echo_server() -> std::net::SocketAddr {
    let server = Server::bind("127.0.0.1:0")
        .await
        .expect("bind")
        .config(Config::default().max_message_size(16 << 20));
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve(|mut ws, _| async move {
        while let Some(Ok(message)) = ws.recv().await {
            if message.is_data() && ws.send(message).await.is_err() {
                break;
            }
        }
    }));
    addr
}

async fn run_peer_client(peer: Peer, scenario: &str) {
    let addr = volley_echo_server().await;
    let mut cmd = peer.command("client");
    cmd.arg(format!("ws://{addr}/"))
        .args(["--scenario", scenario]);
    let output = timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{peer:?} client ({scenario}) timed out"))
        .expect("spawn peer client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let passes = stdout.lines().filter(|l| l.starts_with("PASS ")).count();
    assert!(
        output.status.success() && passes > 0 && !stdout.contains("FAIL"),
        "{peer:?} client scenario {scenario} failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
}

#[tokio::test]
async fn node_ws_client_all_scenarios() {
    run_peer_client(Peer::Node, "all").await;
}

#[tokio::test]
async fn python_websockets_client_all_scenarios() {
    run_peer_client(Peer::Python, "all").await;
}

#[tokio::test]
async fn node_ws_client_malformed_frames_get_the_right_close_codes() {
    for scenario in ["malformed-unmasked", "malformed-opcode", "bad-utf8"] {
        run_peer_client(Peer::Node, scenario).await;
    }
}

#[tokio::test]
async fn python_websockets_client_malformed_frames_get_the_right_close_codes() {
    for scenario in ["malformed-unmasked", "malformed-opcode", "bad-utf8"] {
        run_peer_client(Peer::Python, scenario).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The Volley client against peer echo servers.
// ---------------------------------------------------------------------------------------------

struct PeerServer {
    _child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    url: String,
}

impl PeerServer {
    async fn start(peer: Peer) -> Self {
        Self::start_with(peer, &[]).await
    }

    /// Starts the peer's echo server with extra arguments (e.g. `--deflate`).
    async fn start_with(peer: Peer, args: &[&str]) -> Self {
        let mut cmd = peer.command("echo_server");
        cmd.args(["--port", "0"]).args(args).stdout(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn peer echo server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("peer server did not start in 30 s")
            .expect("read peer stdout")
            .expect("peer server exited");
        let port = first
            .strip_prefix("LISTENING ")
            .unwrap_or_else(|| panic!("unexpected first line {first:?}"))
            .to_owned();
        Self {
            _child: child,
            lines,
            url: format!("ws://127.0.0.1:{port}/"),
        }
    }

    /// The next `CLOSED <code> <reason>` line: the close frame the peer received from us.
    async fn closed(&mut self) -> (u16, String) {
        loop {
            let line = timeout(Duration::from_secs(15), self.lines.next_line())
                .await
                .expect("no CLOSED line within 15 s")
                .expect("read")
                .expect("peer server exited");
            if let Some(rest) = line.strip_prefix("CLOSED ") {
                let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
                return (code.parse().expect("close code"), reason.to_owned());
            }
        }
    }
}

/// The next message that is not a ping.
async fn next(ws: &mut volley::WebSocket<volley::MaybeTlsStream>) -> Message {
    loop {
        let message = timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("no message within 10 s")
            .expect("connection ended")
            .expect("receive error");
        if !matches!(message, Message::Ping(_)) {
            return message;
        }
    }
}

async fn volley_client_against(peer: Peer) {
    let mut server = PeerServer::start(peer).await;
    let config = Config::default().fragment_size(Some(1000));
    let (mut ws, _) = ClientBuilder::new(&server.url)
        .config(config)
        .connect()
        .await
        .expect("connect");

    ws.send("hello peer").await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("hello peer"));

    let bytes: Vec<u8> = (0..=255).collect();
    ws.send(bytes.clone()).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::binary(bytes));

    ws.send("").await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text(""));
    ws.send(Vec::new()).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::binary(Vec::new()));

    ws.send("héllo wörld ✓ 🚀").await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("héllo wörld ✓ 🚀"));

    // 1 MiB, sent in 1000-byte fragments (fragment_size above), echoed back as one message.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    ws.send(big.clone()).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::binary(big));
    let big_text = "volley ".repeat((1 << 20) / 7);
    ws.send(big_text.as_str()).await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text(big_text));

    // A message the peer sends in three fragments.
    ws.send("fragmented").await.expect("send");
    assert_eq!(
        next(&mut ws).await,
        Message::text("frag-one|frag-two|frag-three")
    );

    // Our ping, their pong.
    ws.send(Message::Ping("are-you-there".into()))
        .await
        .expect("send");
    assert_eq!(next(&mut ws).await, Message::Pong("are-you-there".into()));

    // Their ping, our automatic pong: the peer reports it saw the pong.
    ws.send("ping:abc").await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("pong:abc"));

    // We close with a code and reason; the peer sees exactly those and echoes the code.
    ws.send(Message::Close(Some(CloseFrame::new(
        CloseCode(4001),
        "done here",
    ))))
    .await
    .expect("send close");
    match next(&mut ws).await {
        Message::Close(Some(frame)) => assert_eq!(frame.code, CloseCode(4001)),
        other => panic!("expected the close echo, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("close completes")
            .is_none()
    );
    assert_eq!(server.closed().await, (4001, "done here".to_owned()));

    // The peer closes with a code and reason.
    let mut ws = volley::connect(&server.url).await.expect("connect");
    ws.send("close:4002:bye now").await.expect("send");
    match next(&mut ws).await {
        Message::Close(Some(frame)) => {
            assert_eq!(frame.code, CloseCode(4002));
            assert_eq!(frame.reason, "bye now");
        }
        other => panic!("expected the peer's close, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("close completes")
            .is_none()
    );
    // Our reply echoes the close frame.
    assert_eq!(server.closed().await, (4002, "bye now".to_owned()));

    // A malformed frame from the peer (reserved opcode 0xB) fails the connection with 1002.
    let mut ws = volley::connect(&server.url).await.expect("connect");
    ws.send("malformed").await.expect("send");
    let err = loop {
        match timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("error within 10 s")
        {
            Some(Ok(Message::Ping(_))) => continue,
            Some(Err(e)) => break e,
            other => panic!("expected a protocol error, got {other:?}"),
        }
    };
    match err {
        Error::Protocol(e) => {
            assert_eq!(e, ProtocolError::ReservedOpcode(0xB));
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(
        timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("ends")
            .is_none()
    );
}

#[tokio::test]
async fn volley_client_against_node_ws_server() {
    volley_client_against(Peer::Node).await;
}

#[tokio::test]
async fn volley_client_against_python_websockets_server() {
    volley_client_against(Peer::Python).await;
}

// ---------------------------------------------------------------------------------------------
// permessage-deflate with real peers, through a proxy that watches the frames cross the wire.
// ---------------------------------------------------------------------------------------------

/// What crossed the proxy in one direction.
#[derive(Debug, Default, Clone, Copy)]
struct Direction {
    /// All bytes, HTTP head included.
    bytes: u64,
    /// WebSocket frames.
    frames: u64,
    /// Frames with RSV1 set: the first frames of compressed messages.
    compressed_frames: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct WireStats {
    to_server: Direction,
    to_client: Direction,
}

/// Follows one direction of a WebSocket connection: skips the HTTP head, then reads each frame
/// header and skips its payload.
#[derive(Default)]
struct Sniffer {
    head_done: bool,
    buf: Vec<u8>,
    skip: u64,
}

impl Sniffer {
    fn feed(&mut self, data: &[u8], d: &mut Direction) {
        d.bytes += data.len() as u64;
        self.buf.extend_from_slice(data);
        if !self.head_done {
            match self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(end) => {
                    self.buf.drain(..end + 4);
                    self.head_done = true;
                }
                None => return,
            }
        }
        loop {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(self.buf.len());
                self.buf.drain(..n);
                self.skip -= n as u64;
                if self.skip > 0 {
                    return;
                }
            }
            match volley::proto::frame::FrameHeader::parse(&self.buf) {
                Ok(Some((header, len))) => {
                    d.frames += 1;
                    if header.rsv & 0b100 != 0 {
                        d.compressed_frames += 1;
                    }
                    self.buf.drain(..len);
                    self.skip = header.payload_len;
                }
                _ => return,
            }
        }
    }
}

/// A TCP proxy in front of `target` that forwards everything unchanged and records, per
/// direction, the bytes and frames that crossed it.
async fn sniffing_proxy(
    target: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<WireStats>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind proxy");
    let addr = listener.local_addr().expect("proxy addr");
    let stats = std::sync::Arc::new(std::sync::Mutex::new(WireStats::default()));
    let shared = stats.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            for (mut from, mut to, to_server) in [
                (
                    Box::new(ir) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
                    Box::new(ow) as Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
                    true,
                ),
                (Box::new(or), Box::new(iw), false),
            ] {
                let stats = shared.clone();
                tokio::spawn(async move {
                    let mut sniffer = Sniffer::default();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let n = match from.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        {
                            let mut st = stats.lock().unwrap();
                            let d = if to_server {
                                &mut st.to_server
                            } else {
                                &mut st.to_client
                            };
                            sniffer.feed(&buf[..n], d);
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown().await;
                });
            }
        }
    });
    (addr, stats)
}

/// Four 100 KB compressible messages each way crossed as compressed frames, in far fewer bytes
/// than their 400 KB.
fn assert_compressed_on_the_wire(stats: WireStats) {
    for (name, d) in [
        ("to server", stats.to_server),
        ("to client", stats.to_client),
    ] {
        assert!(
            d.compressed_frames >= 4,
            "{name}: only {} of {} frames had RSV1 ({stats:?})",
            d.compressed_frames,
            d.frames
        );
        assert!(
            d.bytes < 100 * 1024,
            "{name}: {} bytes crossed for 400 KB of messages ({stats:?})",
            d.bytes
        );
    }
}

async fn peer_client_with_deflate(peer: Peer) {
    peer_client_with_deflate_config(peer, volley::DeflateConfig::default()).await;
}

async fn peer_client_with_deflate_config(peer: Peer, deflate: volley::DeflateConfig) {
    let server = Server::bind("127.0.0.1:0").await.expect("bind").config(
        Config::default()
            .max_message_size(16 << 20)
            .deflate(Some(deflate)),
    );
    let addr = server.local_addr().expect("addr");
    tokio::spawn(server.serve(|mut ws, _| async move {
        assert!(
            ws.deflate().is_some(),
            "the peer did not offer permessage-deflate"
        );
        while let Some(Ok(message)) = ws.recv().await {
            if message.is_data() && ws.send(message).await.is_err() {
                break;
            }
        }
    }));
    let (proxy, stats) = sniffing_proxy(addr).await;
    let mut cmd = peer.command("client");
    cmd.arg(format!("ws://{proxy}/"))
        .args(["--scenario", "deflate"]);
    let output = timeout(Duration::from_secs(90), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{peer:?} client (deflate) timed out"))
        .expect("spawn peer client");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success()
            && stdout.contains("PASS negotiated permessage-deflate")
            && !stdout.contains("FAIL"),
        "{peer:?} client deflate scenario failed ({})\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let stats = *stats.lock().unwrap();
    eprintln!("{peer:?} client -> Volley server: {stats:?}");
    assert_compressed_on_the_wire(stats);
}

#[tokio::test]
async fn node_ws_client_with_per_message_deflate_exchanges_compressed_frames() {
    peer_client_with_deflate(Peer::Node).await;
}

#[tokio::test]
async fn python_websockets_client_with_compression_exchanges_compressed_frames() {
    peer_client_with_deflate(Peer::Python).await;
}

/// The smallest windows and no context takeover: Volley compresses "8" with zlib's 9-bit window
/// and asks clients for 9 (Python websockets refuses to be asked for 8).
fn small_windows() -> volley::DeflateConfig {
    volley::DeflateConfig::default()
        .server_max_window_bits(8)
        .client_max_window_bits(8)
        .no_context_takeover(true)
}

#[tokio::test]
async fn node_ws_client_with_small_windows_and_no_context_takeover() {
    peer_client_with_deflate_config(Peer::Node, small_windows()).await;
}

#[tokio::test]
async fn python_websockets_client_with_small_windows_and_no_context_takeover() {
    peer_client_with_deflate_config(Peer::Python, small_windows()).await;
}

async fn volley_client_with_deflate_against(peer: Peer) {
    let mut server = PeerServer::start_with(peer, &["--deflate"]).await;
    let target: std::net::SocketAddr = server
        .url
        .trim_start_matches("ws://")
        .trim_end_matches('/')
        .parse()
        .expect("peer address");
    let (proxy, stats) = sniffing_proxy(target).await;
    let config = Config::default()
        .max_message_size(16 << 20)
        .deflate(Some(volley::DeflateConfig::default()));
    let (mut ws, response) = ClientBuilder::new(format!("ws://{proxy}/"))
        .config(config)
        .connect()
        .await
        .expect("connect");
    let params = response
        .deflate
        .expect("the peer accepted permessage-deflate");
    assert_eq!(ws.deflate(), Some(params));
    // The peer reports the extension it negotiated.
    let line = timeout(Duration::from_secs(15), server.lines.next_line())
        .await
        .expect("EXTENSIONS line")
        .expect("read")
        .expect("peer server exited");
    assert!(
        line.starts_with("EXTENSIONS permessage-deflate"),
        "peer reported {line:?}"
    );

    let words = [
        "volley", "deflate", "window", "context", "takeover", "frame",
    ];
    let text: String = (0..30_000usize)
        .map(|i| words[(i * 7 + i / 5) % words.len()])
        .collect::<Vec<_>>()
        .join(" ")[..100 * 1024]
        .to_owned();
    for _ in 0..2 {
        ws.send(text.as_str()).await.expect("send");
        assert_eq!(next(&mut ws).await, Message::text(text.clone()));
        ws.send(text.clone().into_bytes()).await.expect("send");
        assert_eq!(
            next(&mut ws).await,
            Message::binary(text.clone().into_bytes())
        );
    }
    ws.send("hi").await.expect("send");
    assert_eq!(next(&mut ws).await, Message::text("hi"));
    ws.close(Some(CloseFrame::new(CloseCode::NORMAL, "done")))
        .await
        .expect("close");
    assert_eq!(server.closed().await, (1000, "done".to_owned()));
    let stats = *stats.lock().unwrap();
    eprintln!("Volley client -> {peer:?} server: {stats:?}");
    assert_compressed_on_the_wire(stats);
}

#[tokio::test]
async fn volley_client_with_deflate_against_node_ws_server() {
    volley_client_with_deflate_against(Peer::Node).await;
}

#[tokio::test]
async fn volley_client_with_deflate_against_python_websockets_server() {
    volley_client_with_deflate_against(Peer::Python).await;
}
