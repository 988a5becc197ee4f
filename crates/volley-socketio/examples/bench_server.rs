//! The Socket.IO server of `scripts/bench-peers`' Socket.IO rows: the same handlers as the
//! socketioxide and Node servers it is compared with (`benches/peers/`), on a single-threaded
//! runtime, with the default configuration (pingInterval 25 s, pingTimeout 20 s, both
//! transports, the default parser).
//!
//! ```text
//! cargo run --release -p volley-socketio --example bench_server -- --port 3000
//! ```
//!
//! Listens on 127.0.0.1, Socket.IO at `/socket.io/`, namespace `/`:
//! - `message` (data) → `message-back` with the same data;
//! - `message-with-ack` (data) → acknowledged with the same data;
//! - `join` (room) → joins the room, acknowledged with no data;
//! - `to-room` (room, data) → `room-message` with the data to every socket of the room (the
//!   sender's included), acknowledged with no data.

use serde_json::Value;
use volley_socketio::{Payload, SocketIo};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut port = 3000u16;
    while let Some(arg) = args.next() {
        match (arg.as_str(), args.next().map(|v| v.parse::<u16>())) {
            ("--port", Some(Ok(p))) => port = p,
            _ => {
                eprintln!("usage: bench_server [--port N]");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let io = SocketIo::new();
        io.of("/").on_connection(|socket| {
            socket.on("message", |socket, payload: Payload, _ack| {
                let _ = socket.emit("message-back", &payload);
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
            socket.on("to-room", |socket, (room, data): (String, Value), ack| {
                let _ = socket.namespace().to(room).emit("room-message", &data);
                if let Some(ack) = ack {
                    let _ = ack.send(());
                }
            });
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("LISTENING {}", listener.local_addr()?.port());
        io.serve(listener).await
    })
}
