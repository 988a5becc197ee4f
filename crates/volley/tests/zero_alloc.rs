//! Steady-state echo allocates nothing: a counting global allocator counts the allocations made
//! on the server's thread while it receives and echoes thousands of messages (text and binary,
//! 20 B to 16 KiB, one message in flight and pipelined), after a warm-up.
//!
//! The client is a plain blocking socket on another thread that writes pre-built masked frames;
//! `allocation_counter` counts only the server thread's allocations.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use volley::WebSocket;

const WARMUP: usize = 2_000;
const MEASURED: usize = 10_000;

/// Echoes `count` data messages; returns how many it echoed.
async fn echo<S>(ws: &mut WebSocket<S>, count: usize, copy: bool) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let mut seen = 0;
    while seen < count {
        match ws.recv().await {
            Some(Ok(message)) if message.is_data() => {
                let message = if copy {
                    // What an application that copies payloads would do: must be counted.
                    volley::Message::binary(message.payload().to_vec())
                } else {
                    message
                };
                if ws.send(message).await.is_err() {
                    break;
                }
                seen += 1;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    seen
}

/// Runs an echo server on its own thread; returns its port and a receiver of the number of
/// allocations its thread made while echoing messages WARMUP..WARMUP+MEASURED.
fn echo_server(copy: bool) -> (u16, mpsc::Receiver<u64>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let mut ws = rt.block_on(async move {
            listener.set_nonblocking(true).expect("nonblocking");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let (stream, _) = listener.accept().await.expect("accept");
            stream.set_nodelay(true).expect("nodelay");
            let mut ws = volley::accept(stream).await.expect("handshake");
            assert_eq!(echo(&mut ws, WARMUP, copy).await, WARMUP, "warm-up echoes");
            ws
        });
        // Counts the allocations of this thread only: the runtime and the server run here.
        let info = allocation_counter::measure(|| {
            assert_eq!(
                rt.block_on(echo(&mut ws, MEASURED, copy)),
                MEASURED,
                "measured echoes"
            );
        });
        let _ = tx.send(info.count_total);
        // The client closes; finish the connection outside the measurement.
        rt.block_on(async { while ws.recv().await.is_some() {} });
    });
    (port, rx)
}

fn handshake(port: u16) -> TcpStream {
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
fn frames(opcode: u8, payload: &[u8]) -> (Vec<u8>, Vec<u8>) {
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

/// Echoes WARMUP + MEASURED messages of `size` bytes, `in_flight` at a time, and returns the
/// allocations the server made for the measured ones (`copy`: the handler copies each payload).
fn run(opcode: u8, size: usize, in_flight: usize, copy: bool) -> u64 {
    let (port, counted) = echo_server(copy);
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

#[test]
fn echoing_small_text_messages_allocates_nothing() {
    assert_eq!(
        run(0x1, 20, 1, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_pipelined_binary_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 20, 16, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_1_kib_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 1024, 4, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn echoing_16_kib_messages_allocates_nothing() {
    assert_eq!(
        run(0x2, 16 * 1024, 2, false),
        0,
        "allocations for {MEASURED} echoes"
    );
}

#[test]
fn the_count_sees_an_echo_that_copies_payloads() {
    // The same harness with one allocation per message in the handler: proves the counter is
    // installed and counts the server thread.
    let counted = run(0x2, 20, 1, true);
    assert!(counted >= MEASURED as u64, "counted {counted}");
}
