//! A chat server: Socket.IO at `/socket.io/`, the chat handlers of [`volley_socketio::chat`]
//! on namespace `/chat` (rooms, join/leave, messages with acknowledgements).
//!
//! ```text
//! cargo run -p volley-socketio --example chat -- [PORT]
//! ```
//!
//! Then, from Node's `socket.io-client`:
//!
//! ```js
//! const s = io("http://127.0.0.1:3000/chat");
//! s.on("message", (m) => console.log(m));
//! await s.emitWithAck("join", "lobby");
//! await s.emitWithAck("message", { room: "lobby", text: "hello" }); // { ok: true }
//! ```

use volley_socketio::SocketIo;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse().map_err(|e| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("port: {e}"))
        })?,
        None => 3000,
    };
    let io = SocketIo::new();
    volley_socketio::chat::chat_namespace(&io);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "chat on http://{}/socket.io/ (namespace /chat)",
        listener.local_addr()?
    );
    io.serve(listener).await
}
