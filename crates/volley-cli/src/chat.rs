//! The topics chat that `volley serve` runs at `/chat`: JSON commands over a [`Hub`].
//!
//! Every client message is a text message holding one JSON object:
//!
//! | client sends                            | effect and answer                                   |
//! |-----------------------------------------|-----------------------------------------------------|
//! | `{"join": "room"}`                      | subscribes; answers `{"joined": "room", "subscribers": n}` |
//! | `{"leave": "room"}`                     | unsubscribes; answers `{"left": "room"}`            |
//! | `{"topic": "room", "data": <any JSON>}` | every subscriber of `room` gets `{"topic": "room", "from": <id>, "data": …}` |
//!
//! On connecting, a client gets `{"id": <id>}`, the id that `from` carries.
//!
//! With `volley serve --redis`, the topics span every server on that Redis: a publication reaches
//! the topic's subscribers on all of them, `subscribers` counts those of this server, and ids
//! stay distinct across servers (each server adds a random base of its own, below 2^53 so that
//! JavaScript reads them exactly).
//!
//! Choices, as most chat servers make them:
//! - A publication reaches every subscriber of the topic **including the sender** (if it joined):
//!   seeing its own message come back tells the sender that it went out, in the order everyone
//!   else sees it. Publishing to a topic one has not joined is allowed. `data` may be any JSON
//!   value and is forwarded verbatim (a missing `data` is `null`).
//! - A text message that is not such a command (invalid JSON, an unknown field, no command or
//!   two, a topic name that is empty or longer than [`MAX_TOPIC_LEN`] bytes, more than
//!   [`MAX_TOPICS`] topics joined) is answered with `{"error": "…"}` and the connection stays
//!   open: people type these by hand in `volley connect`.
//! - A binary message closes the connection with 1003 (unsupported data).
//! - A subscriber that falls more than the hub's queue (256 messages or 1 MiB) behind is closed
//!   with 1013 (try again later): the hub's default [`Overflow::Close`](volley::Overflow).
//!
//! The chat runs on callbacks ([`volley::callback`]): a member costs its connection, its place
//! in the hub and its topics, with no task of its own.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use volley::callback::{Callbacks, Conn};
use volley::hub::{Hub, Member};
use volley::{CloseCode, CloseFrame, Message};

/// The request path the chat answers on.
pub(crate) const PATH: &str = "/chat";

/// Longest topic name, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 128;

/// Most topics one connection may join.
pub(crate) const MAX_TOPICS: usize = 64;

/// A client command: exactly one of `join`, `leave` or `topic` (with `data`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command<'a> {
    #[serde(borrow, default)]
    join: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    leave: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// What a subscriber receives for a publication.
#[derive(Serialize)]
struct Publication<'a> {
    topic: &'a str,
    from: u64,
    data: &'a RawValue,
}

#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Reply<'a> {
    Id(u64),
    Left(&'a str),
    Error(&'a str),
}

#[derive(Serialize)]
struct Joined<'a> {
    joined: &'a str,
    subscribers: usize,
}

/// The chat's callbacks: every connection joins the hub.
pub(crate) struct Chat {
    hub: Hub,
    /// Added to the hub's member ids to make the ids that clients see.
    id_base: u64,
}

impl Chat {
    /// The chat on `hub`; client ids are `id_base` plus the hub's member ids.
    pub(crate) fn new(hub: Hub, id_base: u64) -> Self {
        Self { hub, id_base }
    }

    fn id(&self, member: &Member) -> u64 {
        self.id_base.wrapping_add(member.id().get())
    }
}

impl Callbacks for Chat {
    fn on_open(&self, conn: &mut Conn<'_>) {
        let member = self.hub.join(conn.handle());
        send_json(conn, &Reply::Id(self.id(&member)));
        // Dropped with the connection when it ends: the member leaves the hub.
        conn.set_data(member);
    }

    fn on_message(&self, conn: &mut Conn<'_>, message: Message) {
        let Some(member) = conn.data::<Member>().cloned() else {
            return;
        };
        match message {
            Message::Text(text) => {
                if let Some(reply) = execute(&member, self.id(&member), &text) {
                    let _ = conn.send(reply);
                }
            }
            _ => {
                let frame =
                    CloseFrame::new(CloseCode::UNSUPPORTED_DATA, "the chat speaks JSON text");
                let _ = conn.close(Some(frame));
            }
        }
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: volley::Result<Option<CloseFrame>>) {
        if let Err(e) = result {
            tracing::debug!(id = conn.id(), "chat connection ended: {e}");
        }
    }
}

/// Executes one command of the member whose client id is `id`; returns the answer to the
/// sender, if any.
fn execute(member: &Member, id: u64, text: &str) -> Option<String> {
    let command: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => return error(&format!("invalid command: {e}")),
    };
    match command {
        Command {
            join: Some(topic),
            leave: None,
            topic: None,
            data: None,
        } => {
            if let Err(e) = check_topic(&topic) {
                return error(&e);
            }
            let joined = member.topics();
            if joined.len() >= MAX_TOPICS && !joined.iter().any(|t| t == topic.as_ref()) {
                return error("too many topics joined");
            }
            member.subscribe(&topic);
            let subscribers = member.hub().subscribers(&topic);
            json(&Joined {
                joined: &topic,
                subscribers,
            })
        }
        Command {
            join: None,
            leave: Some(topic),
            topic: None,
            data: None,
        } => {
            member.unsubscribe(&topic);
            json(&Reply::Left(&topic))
        }
        Command {
            join: None,
            leave: None,
            topic: Some(topic),
            data,
        } => {
            if let Err(e) = check_topic(&topic) {
                return error(&e);
            }
            let publication = Publication {
                topic: &topic,
                from: id,
                data: data.unwrap_or(RawValue::NULL),
            };
            // To every subscriber, the sender included: encoded once for all of them.
            member.hub().publish(&topic, json(&publication)?);
            None
        }
        _ => error(
            "expected exactly one of {\"join\": topic}, {\"leave\": topic} or \
             {\"topic\": topic, \"data\": …}",
        ),
    }
}

fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        Err("the topic name is empty".into())
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(format!(
            "the topic name is longer than {MAX_TOPIC_LEN} bytes"
        ))
    } else {
        Ok(())
    }
}

fn error(message: &str) -> Option<String> {
    json(&Reply::Error(message))
}

fn json(value: &impl Serialize) -> Option<String> {
    match serde_json::to_string(value) {
        Ok(json) => Some(json),
        Err(e) => {
            tracing::warn!("chat: cannot encode: {e}");
            None
        }
    }
}

fn send_json(conn: &mut Conn<'_>, value: &impl Serialize) {
    if let Some(json) = json(value) {
        let _ = conn.send(json);
    }
}
