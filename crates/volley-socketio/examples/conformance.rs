//! The Socket.IO conformance server: the handlers the protocol test suites and the interop tests
//! (official Node and Python clients) expect.
//!
//! ```text
//! cargo run --release -p volley-socketio --example conformance -- --port 3000 \
//!     [--ping-interval-ms 300] [--ping-timeout-ms 200] [--parser msgpack]
//! ```
//!
//! Listens on 127.0.0.1, Socket.IO at `/socket.io/`. Namespaces `/` and `/custom` behave alike;
//! any other namespace gets CONNECT_ERROR `{"message":"Invalid namespace"}`.
//!
//! - auth `{"reject": true}` → CONNECT_ERROR `"not authorized"` with data `{"code": 401}`;
//! - on connect: `auth` with the handshake auth (`{}` when none);
//! - `message` → `message-back` with the same arguments (binary included);
//! - `message-with-ack` → acknowledged with the same arguments;
//! - `join` / `leave` (room) → join / leave, then an empty ack;
//! - `to-room` (room, ...args) → `room-message` with args to every socket in the room, empty ack;
//! - `server-ack` (payload) → `ask` with payload, ack awaited 1000 ms: `ask-result` with the
//!   client's ack arguments, or `ask-timeout`;
//! - `close-transport` → the Engine.IO session is closed;
//! - `disconnect-me` → the socket is disconnected from its namespace.
//!
//! Tests can include this file (`#[path = "../examples/conformance.rs"] mod conformance;`) and
//! run [`serve`] in-process on `127.0.0.1:0`.
// Included as a module by tests, where `pub` items are not reachable from outside.
#![allow(unreachable_pub)]

use std::time::Duration;

use serde_json::{Value, json};
use volley_socketio::{ConnectError, Namespace, Parser, Payload, SocketIo};

/// Server settings (the defaults suit fast tests: 300 ms / 200 ms / 1000 ms / 1e6).
#[derive(Clone, Debug)]
pub struct Options {
    /// Engine.IO pingInterval.
    pub ping_interval: Duration,
    /// Engine.IO pingTimeout.
    pub ping_timeout: Duration,
    /// How long a connection may go without joining a namespace.
    pub connect_timeout: Duration,
    /// maxHttpBufferSize.
    pub max_payload: usize,
    /// The packets' wire format.
    pub parser: Parser,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            ping_interval: Duration::from_millis(300),
            ping_timeout: Duration::from_millis(200),
            connect_timeout: Duration::from_millis(1000),
            max_payload: 1_000_000,
            parser: Parser::Default,
        }
    }
}

/// Serves the conformance handlers on `listener` until dropped.
pub async fn serve(listener: tokio::net::TcpListener, opts: Options) -> std::io::Result<()> {
    let io = SocketIo::builder()
        .ping_interval(opts.ping_interval)
        .ping_timeout(opts.ping_timeout)
        .connect_timeout(opts.connect_timeout)
        .max_payload(opts.max_payload)
        .parser(opts.parser)
        .build();
    for name in ["/", "/custom"] {
        setup(&io.of(name));
    }
    io.serve(listener).await
}

fn setup(ns: &Namespace) {
    ns.use_middleware(|_socket, auth: Value| async move {
        if auth.get("reject") == Some(&Value::Bool(true)) {
            Err(ConnectError::new("not authorized").with_data(json!({ "code": 401 })))
        } else {
            Ok(())
        }
    });
    ns.on_connection(|socket| {
        let auth = socket.handshake().auth.clone();
        let _ = socket.emit("auth", &auth);
        // Echoes take the raw `Payload`: every argument, binary attachments included, goes back
        // as it came.
        socket.on("message", |socket, payload: Payload, _ack| {
            let _ = socket.emit("message-back", &payload);
        });
        socket.on("message-with-ack", |_socket, payload: Payload, ack| {
            if let Some(ack) = ack {
                let _ = ack.send(&payload);
            }
        });
        // A room name as the first argument (anything else joins nothing), answered with an
        // empty acknowledgement.
        socket.on("join", |socket, room: Option<String>, ack| {
            if let Some(room) = room {
                socket.join(room);
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
        socket.on("leave", |socket, room: Option<String>, ack| {
            if let Some(room) = room {
                socket.leave(room.as_str());
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
        socket.on("to-room", |socket, payload: Payload, ack| {
            let Payload {
                mut args,
                attachments,
            } = payload;
            if !args.is_empty()
                && let Value::String(room) = args.remove(0)
            {
                let _ = socket
                    .namespace()
                    .to(room)
                    .emit("room-message", Payload::with_attachments(args, attachments));
            }
            if let Some(ack) = ack {
                let _ = ack.send(());
            }
        });
        // An async handler awaiting the client's acknowledgement.
        socket.on_async("server-ack", |socket, payload: Payload, _ack| async move {
            let answer = socket
                .emit_with_ack::<Payload>("ask", &payload)
                .timeout(Duration::from_millis(1000))
                .await;
            let _ = match answer {
                Ok(answer) => socket.emit("ask-result", &answer),
                Err(_) => socket.emit("ask-timeout", ()),
            };
        });
        socket.on("close-transport", |socket, _: (), _ack| {
            socket.conn().close();
        });
        socket.on("disconnect-me", |socket, _: (), _ack| {
            socket.disconnect(false);
        });
    });
}

#[allow(dead_code)]
fn parse_args() -> Result<(u16, Options), String> {
    let mut port = 3000u16;
    let mut opts = Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<u64, String> {
            args.next()
                .ok_or(format!("{name} needs a value"))?
                .parse::<u64>()
                .map_err(|e| format!("{name}: {e}"))
        };
        match arg.as_str() {
            "--port" => port = u16::try_from(value("--port")?).map_err(|e| e.to_string())?,
            "--ping-interval-ms" => {
                opts.ping_interval = Duration::from_millis(value("--ping-interval-ms")?)
            }
            "--ping-timeout-ms" => {
                opts.ping_timeout = Duration::from_millis(value("--ping-timeout-ms")?)
            }
            "--connect-timeout-ms" => {
                opts.connect_timeout = Duration::from_millis(value("--connect-timeout-ms")?)
            }
            "--max-payload" => {
                opts.max_payload =
                    usize::try_from(value("--max-payload")?).map_err(|e| e.to_string())?
            }
            "--parser" => match args.next().as_deref() {
                Some("msgpack") => opts.parser = Parser::MsgPack,
                other => return Err(format!("unknown parser {other:?}")),
            },
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((port, opts))
}

#[allow(dead_code)]
fn main() -> std::io::Result<()> {
    let (port, opts) = match parse_args() {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!(
                "conformance: {e}\nusage: conformance [--port N] [--ping-interval-ms N] [--ping-timeout-ms N] [--connect-timeout-ms N] [--max-payload N] [--parser msgpack]"
            );
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!(
            "socket.io conformance server on http://{}/socket.io/",
            listener.local_addr()?
        );
        serve(listener, opts).await
    })
}
