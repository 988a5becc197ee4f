//! socketioxide (Socket.IO v4) server for the Socket.IO rows of `scripts/bench-peers`, with the
//! same handlers as Volley's (`volley-socketio`'s `bench_server` example) and Node's
//! (`benches/peers/node/sio_server.js`), written like socketioxide's own hyper example: a
//! `SocketIoService` served by hyper with upgrades, on a single-threaded runtime. Handlers are
//! async closures, as socketioxide 0.18 requires (each event's future is spawned as a task).
//!
//! Namespace `/`, default configuration (pingInterval 25 s, pingTimeout 20 s):
//! - `message` (data) → `message-back` with the same data;
//! - `message-with-ack` (data) → acknowledged with the same data;
//! - `join` (room) → joins the room, acknowledged with no data;
//! - `to-room` (room, data) → `room-message` with the data to every socket of the room (the
//!   sender's included), acknowledged with no data.
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use socketioxide::extract::{AckSender, Data, SocketRef};
use socketioxide::SocketIo;

async fn on_connect(socket: SocketRef) {
    socket.on("message", async |socket: SocketRef, Data::<Value>(data)| {
        let _ = socket.emit("message-back", &data);
    });
    socket.on(
        "message-with-ack",
        async |Data::<Value>(data), ack: AckSender| {
            let _ = ack.send(&data);
        },
    );
    socket.on(
        "join",
        async |socket: SocketRef, Data::<String>(room), ack: AckSender| {
            socket.join(room);
            // An empty tuple: no arguments (`()` would be one `null`).
            let _ = ack.send(&[(); 0]);
        },
    );
    socket.on(
        "to-room",
        async |socket: SocketRef, Data::<(String, Value)>((room, data)), ack: AckSender| {
            let _ = socket.within(room).emit("room-message", &data).await;
            // An empty tuple: no arguments (`()` would be one `null`).
            let _ = ack.send(&[(); 0]);
        },
    );
}

fn main() -> std::io::Result<()> {
    let port = volley_bench_peers::port_from_args();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (service, io) = SocketIo::new_svc();
        io.ns("/", on_connect);
        let listener = volley_bench_peers::listen(port).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let service = service.clone();
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    })
}
