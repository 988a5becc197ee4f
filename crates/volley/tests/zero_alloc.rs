//! Steady-state echo allocates nothing: a counting global allocator counts the allocations made
//! on the server's thread while it receives and echoes thousands of messages (text and binary,
//! 20 B to 16 KiB, one message in flight and pipelined), after a warm-up.
//!
//! The client is a plain blocking socket on another thread that writes pre-built masked frames;
//! `allocation_counter` counts only the server thread's allocations. Callbacks, whose plain TCP
//! connections run on a driver thread of their own: tests/zero_alloc_callback.rs.

#[path = "support/alloc_echo.rs"]
mod alloc_echo;

use std::sync::mpsc;

use alloc_echo::{MEASURED, WARMUP, run_with, server_thread};
use volley::WebSocket;

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
    server_thread(move |rt, listener, tx| {
        let mut ws = rt.block_on(async move {
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
    })
}

/// Echoes WARMUP + MEASURED messages of `size` bytes, `in_flight` at a time, and returns the
/// allocations the server made for the measured ones (`copy`: the handler copies each payload).
fn run(opcode: u8, size: usize, in_flight: usize, copy: bool) -> u64 {
    run_with(echo_server, opcode, size, in_flight, copy)
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
