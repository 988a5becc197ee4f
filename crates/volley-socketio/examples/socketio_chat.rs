//! A Socket.IO chat with rooms and presence, on the typed API.
//!
//! ```text
//! cargo run -p volley-socketio --example socketio_chat -- [PORT]
//! ```
//!
//! Then, from Node's `socket.io-client`:
//!
//! ```js
//! const s = io("http://127.0.0.1:3000/chat", { auth: { name: "alice" } });
//! s.on("message", (m) => console.log(`${m.from}@${m.room}: ${m.text}`));
//! s.on("presence", (p) => console.log(`${p.name} ${p.online ? "joined" : "left"} ${p.room}`));
//! const { members } = await s.emitWithAck("join", "lobby");
//! await s.emitWithAck("message", { room: "lobby", text: "hello" }); // { ok: true }
//! ```
//!
//! Namespace `/chat`:
//! - connecting needs `auth: { name }` (1 to 32 bytes), else CONNECT_ERROR "a name is needed";
//! - `join` (room) → the others in the room get `presence` `{room, name, online: true}`; ack
//!   `{ok: true, members: [names]}` (the members on every server of a cluster);
//! - `leave` (room) → the others in the room get `presence` `{room, name, online: false}`; ack
//!   `{ok: true}`;
//! - `message` `{room, text}` → the room (sender included) gets `message` `{room, from, text}`;
//!   ack `{ok: true}` or `{ok: false, error}`;
//! - `typing` (room) → the others in the room get `typing` `{room, name}`, volatile (a lost one
//!   does not matter);
//! - on disconnect, each room the socket was in gets `presence` `{online: false}` (sent from
//!   the `disconnecting` hook, while the socket's rooms can still be read);
//! - more than 20 events in a second: a packet middleware rejects them; the client gets
//!   `chat-error` `"slow down"` (once per second at most).
//!
//! Tests include this file (`#[path = "../examples/socketio_chat.rs"] mod socketio_chat;`) and
//! call [`chat_namespace`].
// Included as a module by tests, where `pub` items are not reachable from outside.
#![allow(unreachable_pub)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use volley_socketio::{AckSender, ConnectError, EventError, Namespace, Socket, SocketIo};

/// Longest name or room, in bytes.
const MAX_NAME: usize = 32;
/// Longest message, in bytes.
const MAX_TEXT: usize = 4096;
/// Events a socket may send per second.
const EVENTS_PER_SECOND: u32 = 20;

/// A chat message from a client.
#[derive(Debug, Deserialize)]
pub struct Post {
    /// The room to post to.
    pub room: String,
    /// What to say.
    pub text: String,
}

/// A chat message as the room receives it.
#[derive(Debug, Serialize)]
pub struct Message<'a> {
    /// The room.
    pub room: &'a str,
    /// The sender's name.
    pub from: &'a str,
    /// What they said.
    pub text: &'a str,
}

/// Someone arrived in or left a room.
#[derive(Debug, Serialize)]
pub struct Presence<'a> {
    /// The room.
    pub room: &'a str,
    /// Who.
    pub name: &'a str,
    /// Arrived (true) or left (false).
    pub online: bool,
}

/// An acknowledgement: `{ok: true, ...}` or `{ok: false, error}`.
#[derive(Debug, Default, Serialize)]
pub struct Reply {
    /// Whether the request was done.
    pub ok: bool,
    /// Why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'static str>,
    /// The room's members (after a join).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

impl Reply {
    fn ok() -> Self {
        Reply {
            ok: true,
            ..Reply::default()
        }
    }

    fn error(error: &'static str) -> Self {
        Reply {
            error: Some(error),
            ..Reply::default()
        }
    }
}

/// The connected user's name (per-socket data).
#[derive(Clone, Debug)]
struct Name(String);

/// A socket's event budget for the current second.
#[derive(Debug)]
struct RateLimit {
    window: Instant,
    count: u32,
    warned: bool,
}

fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

fn name_of(socket: &Socket) -> String {
    socket.data::<Name>().map(|n| n.0).unwrap_or_default()
}

fn answer(ack: Option<AckSender>, reply: Reply) {
    if let Some(ack) = ack {
        let _ = ack.send(&reply);
    }
}

/// Installs the chat on `/chat` and returns that namespace.
pub fn chat_namespace(io: &SocketIo) -> Namespace {
    let ns = io.of("/chat");
    ns.use_middleware(|socket, auth| async move {
        match auth.get("name").and_then(|n| n.as_str()) {
            Some(name) if valid(name) => {
                socket.insert_data(Name(name.to_owned()));
                // Also in the shared data, where `fetch_sockets` (on every server) sees it.
                socket.set_data_json(serde_json::json!({ "name": name }));
                Ok(())
            }
            _ => Err(ConnectError::new("a name is needed")),
        }
    });
    ns.on_connection(|socket| {
        let limit = Arc::new(Mutex::new(RateLimit {
            window: Instant::now(),
            count: 0,
            warned: false,
        }));
        socket.use_middleware(move |_socket, _event| {
            let mut limit = limit.lock().unwrap_or_else(|e| e.into_inner());
            if limit.window.elapsed() >= Duration::from_secs(1) {
                *limit = RateLimit {
                    window: Instant::now(),
                    count: 0,
                    warned: false,
                };
            }
            limit.count += 1;
            if limit.count <= EVENTS_PER_SECOND {
                return Ok(());
            }
            let first = !std::mem::replace(&mut limit.warned, true);
            Err(if first { "slow down" } else { "" }.into())
        });
        socket.on_error(|socket, err| match err {
            EventError::Rejected { error, .. } if !error.to_string().is_empty() => {
                let _ = socket.emit("chat-error", error.to_string());
            }
            _ => {}
        });

        // The members' names come from every server of the cluster: an async handler.
        socket.on_async("join", |socket, room: String, ack| async move {
            if !valid(&room) {
                return answer(ack, Reply::error("a room is 1 to 32 bytes"));
            }
            let name = name_of(&socket);
            socket.join(room.as_str());
            let _ = socket.to(room.as_str()).emit(
                "presence",
                Presence {
                    room: &room,
                    name: &name,
                    online: true,
                },
            );
            let mut members: Vec<String> =
                match socket.namespace().in_(room.as_str()).fetch_sockets().await {
                    Ok(sockets) => sockets
                        .iter()
                        .filter_map(|s| s.data()["name"].as_str().map(str::to_owned))
                        .collect(),
                    Err(_) => vec![name],
                };
            members.sort();
            answer(
                ack,
                Reply {
                    members: Some(members),
                    ..Reply::ok()
                },
            );
        });

        socket.on("leave", |socket, room: String, ack| {
            if socket.rooms().contains(&room) && room != socket.id() {
                let name = name_of(&socket);
                let _ = socket.to(room.as_str()).emit(
                    "presence",
                    Presence {
                        room: &room,
                        name: &name,
                        online: false,
                    },
                );
                socket.leave(room.as_str());
            }
            answer(ack, Reply::ok());
        });

        socket.on("message", |socket, post: Post, ack| {
            let reply = if post.text.is_empty() || post.text.len() > MAX_TEXT {
                Reply::error("a message is 1 to 4096 bytes")
            } else if post.room == socket.id() || !socket.rooms().contains(&post.room) {
                Reply::error("not in that room")
            } else {
                let from = name_of(&socket);
                let message = Message {
                    room: &post.room,
                    from: &from,
                    text: &post.text,
                };
                match socket
                    .namespace()
                    .to(post.room.as_str())
                    .emit("message", &message)
                {
                    Ok(()) => Reply::ok(),
                    Err(_) => Reply::error("could not send"),
                }
            };
            answer(ack, reply);
        });

        socket.on("typing", |socket, room: String, _ack| {
            if socket.rooms().contains(&room) {
                let name = name_of(&socket);
                let _ = socket.to(room.as_str()).volatile().emit(
                    "typing",
                    Presence {
                        room: &room,
                        name: &name,
                        online: true,
                    },
                );
            }
        });

        // Still in its rooms here: tell each that the user left.
        socket.on_disconnecting(|socket, _reason| {
            let name = name_of(&socket);
            for room in socket.rooms().iter().filter(|r| *r != socket.id()) {
                let _ = socket.to(room.as_str()).emit(
                    "presence",
                    Presence {
                        room,
                        name: &name,
                        online: false,
                    },
                );
            }
        });
    });
    ns
}

#[allow(dead_code)]
#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port: {e}"))
        })?,
        None => 3000,
    };
    let io = SocketIo::new();
    chat_namespace(&io);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "chat on http://{}/socket.io/ (namespace /chat)",
        listener.local_addr()?
    );
    io.serve(listener).await
}
