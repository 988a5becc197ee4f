//! A chat with rooms on the topics hub: every room is a topic.
//!
//! ```text
//! cargo run -p volley --example chat -- 127.0.0.1:9002
//! volley connect ws://127.0.0.1:9002/        # in two or more terminals
//! ```
//!
//! Each line a client sends is a message to its current room (everyone in the room sees it,
//! the sender included), or a command:
//!
//! - `/nick NAME` — change your name (default `guest-<id>`)
//! - `/join ROOM` — join ROOM and make it your current room (you start in `lobby`)
//! - `/leave ROOM` — leave ROOM
//! - `/rooms` — list the rooms with how many people are in each
//! - `/stats` — the hub's counters
//!
//! A client that reads too slowly to keep up with its rooms is closed with 1013 (try again
//! later) instead of making the server buffer without bound. Clients are served by callbacks
//! ([`volley::callback`]) on a few driver tasks, not a task each: an idle member costs about a
//! kilobyte and a half.

use volley::callback::{Callbacks, Conn};
use volley::hub::{Hub, HubConfig, Member};
use volley::{Endpoint, Message, Overflow, QueueLimits, Server};

/// Longest room or nick name, in bytes.
const MAX_NAME: usize = 32;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9002".into());
    let server = Server::bind(&addr).await?;
    eprintln!("chat: listening on ws://{}/", server.local_addr()?);
    server.route("/*", endpoint()).run().await
}

/// The chat as a route endpoint: connections served by callbacks (no task per client), each
/// client's queue bounded to 128 messages and 256 KiB.
pub(crate) fn endpoint() -> Endpoint {
    let limits = QueueLimits::default()
        .overflow(Overflow::Close)
        .max_messages(128)
        .max_bytes(256 * 1024);
    Endpoint::callbacks(Chat {
        hub: Hub::new(HubConfig::default().queue(limits)),
    })
}

struct Chat {
    hub: Hub,
}

impl Callbacks for Chat {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let member = self.hub.join(conn.handle());
        let session = Session {
            nick: format!("guest-{}", member.id()),
            room: "lobby".to_string(),
            member,
        };
        session.member.subscribe(&session.room);
        session.tell("welcome! you are in lobby; try /join, /nick, /rooms");
        session.announce("joined");
        // Kept with the connection until it ends; then the member leaves every room.
        conn.set_data(session);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        if let (Some(session), Message::Text(line)) = (conn.data_mut::<Session>(), message) {
            session.handle(line.trim());
        }
    }
}

#[derive(Clone)]
struct Session {
    member: Member,
    nick: String,
    room: String,
}

impl Session {
    fn handle(&mut self, line: &str) {
        let (command, arg) = match line.split_once(' ') {
            Some((c, a)) => (c, a.trim()),
            None => (line, ""),
        };
        match command {
            "/nick" if valid(arg) => {
                let old = std::mem::replace(&mut self.nick, arg.to_string());
                self.announce(&format!("was {old}"));
            }
            "/join" if valid(arg) => {
                self.member.subscribe(arg);
                self.room = arg.to_string();
                self.announce("joined");
            }
            "/leave" if valid(arg) => {
                if self.member.unsubscribe(arg) {
                    self.tell(&format!("you left {arg}"));
                    let hub = self.member.hub();
                    hub.publish(arg, format!("[{arg}] * {} left", self.nick));
                }
                if self.room == arg {
                    self.room = self.member.topics().into_iter().next().unwrap_or_default();
                    let now = if self.room.is_empty() {
                        "no room: /join one".to_string()
                    } else {
                        format!("you are now in {}", self.room)
                    };
                    self.tell(&now);
                }
            }
            "/rooms" => {
                let rooms: Vec<String> = (self.member.hub().topics().into_iter())
                    .map(|t| format!("{} ({})", t.name, t.subscribers))
                    .collect();
                self.tell(&format!("rooms: {}", rooms.join(", ")));
            }
            "/stats" => {
                let stats = self.member.hub().stats();
                self.tell(&format!("{stats:?}"));
            }
            c if c.starts_with('/') => {
                self.tell("commands: /nick NAME, /join ROOM, /leave ROOM, /rooms, /stats");
            }
            _ if self.room.is_empty() => self.tell("you are in no room: /join one"),
            _ => {
                let text = format!("[{}] {}: {line}", self.room, self.nick);
                // Everyone in the room, the sender included, gets the same encoded frame.
                self.member.hub().publish(&self.room, text);
            }
        }
    }

    /// A message to this client alone, in order with the room traffic it receives.
    fn tell(&self, text: &str) {
        self.member.send(format!("* {text}"));
    }

    /// A notice to the current room.
    fn announce(&self, what: &str) {
        let text = format!("[{}] * {} {what}", self.room, self.nick);
        self.member.hub().publish(&self.room, text);
    }
}

fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && !name.contains(char::is_whitespace)
}
