//! The zero-allocation tests' echo client and server thread (tests/zero_alloc.rs for the task
//! path, tests/zero_alloc_callback.rs for callbacks): a plain blocking socket that writes
//! pre-built masked frames and checks every echo, against a server on a thread of its own.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

/// Messages echoed before the count starts.
pub(crate) const WARMUP: usize = 2_000;
/// Messages echoed while counting.
pub(crate) const MEASURED: usize = 10_000;

/// Binds a loopback listener and runs `serve` on a thread of its own with a current-thread
/// runtime, so that the thread's allocation count is the server's alone. Returns the port and
/// the receiver of the count `serve` sends.
pub(crate) fn server_thread<F>(serve: F) -> (u16, mpsc::Receiver<u64>)
where
    F: FnOnce(&tokio::runtime::Runtime, tokio::net::TcpListener, mpsc::Sender<u64>)
        + Send
        + 'static,
{
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener).expect("listener")
        };
        serve(&rt, listener, tx);
    });
    (port, rx)
}

pub(crate) fn handshake(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_nodelay(true).expect("nodelay");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("101");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s
}

/// A masked client frame and the unmasked frame the server echoes for it.
pub(crate) fn frames(opcode: u8, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = [0x37, 0xfa, 0x21, 0x3d];
    let mut header = vec![0x80 | opcode];
    let len = payload.len();
    let mut sized = Vec::new();
    if len < 126 {
        sized.push(len as u8);
    } else {
        sized.push(126);
        sized.extend_from_slice(&(len as u16).to_be_bytes());
    }
    let mut echoed = header.clone();
    echoed.extend_from_slice(&sized);
    echoed.extend_from_slice(payload);
    sized[0] |= 0x80;
    header.extend_from_slice(&sized);
    header.extend_from_slice(&key);
    header.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    (header, echoed)
}

/// Echoes WARMUP + MEASURED messages of `size` bytes, `in_flight` at a time, against the
/// server that `server` starts, and returns the allocations it reported for the measured ones
/// (`copy`: the handler copies each payload).
pub(crate) fn run_with(
    server: fn(bool) -> (u16, mpsc::Receiver<u64>),
    opcode: u8,
    size: usize,
    in_flight: usize,
    copy: bool,
) -> u64 {
    let (port, counted) = server(copy);
    let mut s = handshake(port);
    let payload: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    let (frame, echoed) = frames(opcode, &payload);
    let total = WARMUP + MEASURED;
    let batch = frame.repeat(in_flight);
    let mut reply = vec![0u8; echoed.len() * in_flight];
    let mut done = 0;
    while done < total {
        let n = in_flight.min(total - done);
        s.write_all(&batch[..frame.len() * n]).expect("send");
        let got = &mut reply[..echoed.len() * n];
        s.read_exact(got).expect("echo");
        for echo in got.chunks(echoed.len()) {
            assert_eq!(echo, &echoed[..], "echoed frame differs");
        }
        done += n;
    }
    counted
        .recv_timeout(Duration::from_secs(10))
        .expect("server reports its allocation count")
}
