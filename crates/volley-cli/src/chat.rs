//! The topics chat that `volley serve` runs at `/chat`: JSON commands over a [`Hub`].
//!
//! Every client message is a text message holding one JSON object:
//!
//! | client sends                            | effect and answer                                   |
//! |-----------------------------------------|-----------------------------------------------------|
//! | `{"join": "room"}`                      | subscribes; answers `{"joined": "room", "subscribers": n, "offset": m}`: `m` is the topic's mark (the newest offset handed out when the subscription took effect; absent with `--redis`), to resume after if nothing is published before the client comes back |
//! | `{"join": "room", "after": N}`          | subscribes as one that saw everything up to offset `N`: answers `{"joined": "room", "subscribers": n, "resumed": true}` and then every publication it missed, in order, exactly once — or `"resumed": false` (a gap: the history no longer holds all of it; fetch the state anew) and what follows only |
//! | `{"leave": "room"}`                     | unsubscribes; answers `{"left": "room"}`            |
//! | `{"topic": "room", "data": <any JSON>}` | every subscriber of `room` gets `{"topic": "room", "offset": N, "from": <id>, "data": …}` |
//!
//! On connecting, a client gets `{"id": <id>}`, the id that `from` carries.
//!
//! **Offsets and resuming.** Every publication carries its `offset`: a number that grows with
//! every publication of the server (across all topics, and across restarts: it starts at the
//! wall clock's microseconds, below 2^53 so that JavaScript reads it exactly). A client keeps
//! the offset of the last publication it received on each topic; after a reconnect it joins
//! with `"after"`. The server keeps a bounded history per topic (`volley serve
//! --history-messages`, `--history-age`); within it, nothing is lost or repeated between the
//! replay and what follows. Server-sent events at `/events` carry the same offsets as their
//! `id:`. Topics whose name starts with `$` are the server's (such as [`METRICS_TOPIC`]):
//! clients may join them but not publish to them.
//!
//! With `volley serve --redis`, the topics span every server on that Redis: a publication reaches
//! the topic's subscribers on all of them, `subscribers` counts those of this server, and ids
//! stay distinct across servers (each server adds a random base of its own, below 2^53 so that
//! JavaScript reads them exactly). Publications then carry no `offset` and topics keep no
//! history (a resume answers `"resumed": false`): the servers' offsets would interleave out of
//! order, and no server's history holds the others' publications.
//!
//! Choices, as most chat servers make them:
//! - A publication reaches every subscriber of the topic **including the sender** (if it joined):
//!   seeing its own message come back tells the sender that it went out, in the order everyone
//!   else sees it. Publishing to a topic one has not joined is allowed. `data` may be any JSON
//!   value and is forwarded verbatim (a missing `data` is `null`).
//! - A text message that is not such a command (invalid JSON, an unknown field, no command or
//!   two, `after` without `join`, a topic name that is empty, longer than [`MAX_TOPIC_LEN`]
//!   bytes or holds a control character, a publication to a `$` topic, more than
//!   [`MAX_TOPICS`] topics joined) is answered with `{"error": "…"}` and the connection stays
//!   open: people type these by hand in `volley connect`.
//! - A binary message closes the connection with 1003 (unsupported data).
//! - A subscriber that falls more than the hub's queue (`--queue-messages`, 1024 messages, or
//!   `--queue-bytes`, 1 MiB) behind is closed with 1013 (try again later): the hub's default
//!   [`Overflow::Close`](volley::Overflow). A resume whose replay would not fit that queue is
//!   answered `"resumed": false`.
//!
//! The chat runs on callbacks ([`volley::callback`]): a member costs its connection, its place
//! in the hub and its topics, with no task of its own.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use volley::callback::{Callbacks, Conn};
use volley::hub::{Hub, Member, Resume};
use volley::{CloseCode, CloseFrame, Message, PreparedMessage};

/// The request path the chat answers on.
pub(crate) const PATH: &str = "/chat";

/// Longest topic name, in bytes.
pub(crate) const MAX_TOPIC_LEN: usize = 128;

/// Most topics one connection may join.
pub(crate) const MAX_TOPICS: usize = 64;

/// The topic the server publishes its metrics snapshot to, every second.
pub(crate) const METRICS_TOPIC: &str = "$metrics";

/// A client command: exactly one of `join` (with `after` to resume), `leave` or `topic` (with
/// `data`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Command<'a> {
    #[serde(borrow, default)]
    join: Option<Cow<'a, str>>,
    #[serde(default)]
    after: Option<u64>,
    #[serde(borrow, default)]
    leave: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    topic: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// What a subscriber receives for a publication (WebSocket and server-sent events alike).
#[derive(Serialize)]
pub(crate) struct Publication<'a> {
    pub(crate) topic: &'a str,
    /// Absent when the hub spans several servers (`--redis`): each numbers its own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) offset: Option<u64>,
    pub(crate) from: u64,
    pub(crate) data: &'a RawValue,
}

/// How publications go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Numbering {
    /// Numbered by the hub (`offset`), kept in its history: one server.
    Offsets,
    /// Without offsets: across servers (`--redis`), where the offsets of several servers would
    /// interleave out of order and no history holds the others' publications.
    None,
}

impl Publication<'_> {
    /// Publishes `data` from client `from` to `topic` on `hub` (on every server of its
    /// backend).
    pub(crate) fn publish(
        hub: &Hub,
        numbering: Numbering,
        topic: &str,
        from: u64,
        data: &RawValue,
    ) {
        let message = |offset| {
            let publication = Publication {
                topic,
                offset,
                from,
                data,
            };
            // Cannot fail: strings, numbers and JSON that was already valid.
            PreparedMessage::text(json(&publication).unwrap_or_default())
        };
        match numbering {
            Numbering::Offsets => {
                hub.publish_numbered(topic, |offset| message(Some(offset)));
            }
            Numbering::None => {
                hub.publish(topic, message(None));
            }
        }
    }
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
    /// The topic's mark on a join without `after` (one server): the newest offset handed out
    /// when the subscription took effect; resuming after it misses nothing even if the topic
    /// stays silent until the client comes back.
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resumed: Option<bool>,
}

/// The chat's callbacks: every connection joins the hub.
pub(crate) struct Chat {
    hub: Hub,
    /// Added to the hub's member ids to make the ids that clients see.
    id_base: u64,
    numbering: Numbering,
}

impl Chat {
    /// The chat on `hub`; client ids are `id_base` plus the hub's member ids.
    pub(crate) fn new(hub: Hub, id_base: u64, numbering: Numbering) -> Self {
        Self {
            hub,
            id_base,
            numbering,
        }
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
                if let Some(reply) = execute(&member, self.id(&member), self.numbering, &text) {
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
fn execute(member: &Member, id: u64, numbering: Numbering, text: &str) -> Option<String> {
    let command: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => return error(&format!("invalid command: {e}")),
    };
    match command {
        Command {
            join: Some(topic),
            after,
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
            let Some(after) = after else {
                let offset = match numbering {
                    Numbering::Offsets => member.subscribe_marked(&topic),
                    Numbering::None => {
                        member.subscribe(&topic);
                        None
                    }
                };
                let subscribers = member.hub().subscribers(&topic);
                return json(&Joined {
                    joined: &topic,
                    subscribers,
                    offset,
                    resumed: None,
                });
            };
            // The answer goes first, then what the topic kept after `after`, then what follows
            // (the hub queues all three in that order, under the topic's lock).
            let hub = member.hub().clone();
            member.resume_with(&topic, after, |resume| {
                let joined = Joined {
                    joined: &topic,
                    subscribers: hub.subscribers(&topic),
                    offset: None,
                    resumed: Some(matches!(resume, Resume::Complete { .. })),
                };
                json(&joined).map(PreparedMessage::text)
            });
            None
        }
        Command {
            join: None,
            after: None,
            leave: Some(topic),
            topic: None,
            data: None,
        } => {
            member.unsubscribe(&topic);
            json(&Reply::Left(&topic))
        }
        Command {
            join: None,
            after: None,
            leave: None,
            topic: Some(topic),
            data,
        } => {
            if let Err(e) = check_topic(&topic) {
                return error(&e);
            }
            if topic.starts_with('$') {
                return error("topics whose name starts with '$' are the server's");
            }
            // To every subscriber, the sender included: encoded once for all of them.
            let data = data.unwrap_or(RawValue::NULL);
            Publication::publish(member.hub(), numbering, &topic, id, data);
            None
        }
        _ => error(
            "expected exactly one of {\"join\": topic} (with \"after\": offset to resume), \
             {\"leave\": topic} or {\"topic\": topic, \"data\": …}",
        ),
    }
}

/// Checks a topic name: 1 to [`MAX_TOPIC_LEN`] bytes, no control character.
pub(crate) fn check_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        Err("the topic name is empty".into())
    } else if topic.len() > MAX_TOPIC_LEN {
        Err(format!(
            "the topic name is longer than {MAX_TOPIC_LEN} bytes"
        ))
    } else if topic.chars().any(char::is_control) {
        Err("the topic name holds a control character".into())
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
