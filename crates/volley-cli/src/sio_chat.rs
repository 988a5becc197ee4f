//! The Socket.IO chat namespace of `volley serve` (rooms, join/leave, messages with
//! acknowledgements). It was `volley_socketio::chat`; the library's example of a chat is now
//! `crates/volley-socketio/examples/socketio_chat.rs`.
//!
//! Events from the client (each acknowledged when the client asks for it):
//! - `join` (room: string) → joins; the room gets `joined` `{"id", "room"}`; ack `{"ok": true}`.
//! - `leave` (room) → leaves; the room gets `left` `{"id", "room"}`; ack `{"ok": true}`.
//! - `message` (`{"room", "text"}`) → every member of the room (sender included) gets `message`
//!   `{"from", "room", "text"}`; ack `{"ok": true}`, or `{"ok": false, "error"}` when the sender
//!   is not in the room or the message is malformed.
//! - `rooms` → ack with the rooms the socket joined (without its own id room).

use serde_json::{Value, json};
use volley_socketio::{AckSender, Namespace, Payload, Socket, SocketIo};

/// Rooms names longer than this are refused.
const MAX_ROOM_LEN: usize = 128;
/// Messages longer than this (in bytes) are refused.
const MAX_TEXT_LEN: usize = 16 * 1024;

/// Installs the chat handlers on `/chat` and returns that namespace.
pub(crate) fn chat_namespace(io: &SocketIo) -> Namespace {
    let ns = io.of("/chat");
    register(&ns);
    ns
}

/// Installs the chat handlers on `ns`.
fn register(ns: &Namespace) {
    ns.on_connection(|socket| {
        socket.on("join", |socket, payload: Payload, ack| {
            let answer = match room_arg(payload.first()) {
                Ok(room) => {
                    socket.join(room.as_str());
                    let _ = socket
                        .namespace()
                        .to(room.as_str())
                        .emit("joined", json!({ "id": socket.id(), "room": room }));
                    json!({ "ok": true })
                }
                Err(e) => json!({ "ok": false, "error": e }),
            };
            reply(ack, answer);
        });
        socket.on("leave", |socket, payload: Payload, ack| {
            let answer = match room_arg(payload.first()) {
                Ok(room) => {
                    socket.leave(room.as_str());
                    let _ = socket
                        .namespace()
                        .to(room.as_str())
                        .emit("left", json!({ "id": socket.id(), "room": room }));
                    json!({ "ok": true })
                }
                Err(e) => json!({ "ok": false, "error": e }),
            };
            reply(ack, answer);
        });
        socket.on("message", |socket, payload: Payload, ack| {
            let answer = match message(&socket, payload.first()) {
                Ok(()) => json!({ "ok": true }),
                Err(e) => json!({ "ok": false, "error": e }),
            };
            reply(ack, answer);
        });
        socket.on("rooms", |socket, _: (), ack| {
            let rooms: Vec<String> = socket
                .rooms()
                .into_iter()
                .filter(|r| r != socket.id())
                .collect();
            reply(ack, json!(rooms));
        });
    });
}

fn reply(ack: Option<AckSender>, answer: Value) {
    if let Some(ack) = ack {
        let _ = ack.send(answer);
    }
}

fn room_arg(arg: Option<&Value>) -> Result<String, &'static str> {
    match arg.and_then(Value::as_str) {
        Some(room) if !room.is_empty() && room.len() <= MAX_ROOM_LEN => Ok(room.to_owned()),
        _ => Err("expected a room name (1 to 128 bytes)"),
    }
}

fn message(socket: &Socket, arg: Option<&Value>) -> Result<(), &'static str> {
    let obj = arg
        .and_then(Value::as_object)
        .ok_or("expected {\"room\", \"text\"}")?;
    let room = room_arg(obj.get("room"))?;
    let text = obj
        .get("text")
        .and_then(Value::as_str)
        .ok_or("expected a text")?;
    if text.len() > MAX_TEXT_LEN {
        return Err("text too long");
    }
    if room == socket.id() || !socket.rooms().contains(&room) {
        return Err("not in that room");
    }
    socket
        .namespace()
        .to(room.as_str())
        .emit(
            "message",
            json!({ "from": socket.id(), "room": room, "text": text }),
        )
        .map_err(|_| "could not send")
}
