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
//!   with 1013 (try again later): the hub's default [`Overflow::Close`](volley::hub::Overflow).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use volley::hub::{Hub, Member};
use volley::{CloseCode, CloseFrame, Message, WebSocket};

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

/// Runs one chat connection: joins `hub`, then executes the client's commands until it leaves.
pub(crate) async fn serve<S>(ws: WebSocket<S>, hub: Hub)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (member, mut rx) = hub.join_socket(ws);
    send_json(&member, &Reply::Id(member.id().get())).await;
    while let Some(message) = rx.recv().await {
        match message {
            Ok(Message::Text(text)) => execute(&member, &text).await,
            Ok(Message::Binary(_)) => {
                let frame =
                    CloseFrame::new(CloseCode::UNSUPPORTED_DATA, "the chat speaks JSON text");
                let _ = member.close(Some(frame));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(member = %member.id(), "chat connection ended: {e}");
                break;
            }
        }
    }
    // Dropping `member` leaves the hub.
}

async fn execute(member: &Member, text: &str) {
    let command: Command<'_> = match serde_json::from_str(text) {
        Ok(c) => c,
        Err(e) => return error(member, &format!("invalid command: {e}")).await,
    };
    match command {
        Command {
            join: Some(topic),
            leave: None,
            topic: None,
            data: None,
        } => {
            if let Err(e) = check_topic(&topic) {
                return error(member, &e).await;
            }
            let joined = member.topics();
            if joined.len() >= MAX_TOPICS && !joined.iter().any(|t| t == topic.as_ref()) {
                return error(member, "too many topics joined").await;
            }
            member.subscribe(&topic);
            let subscribers = member.hub().subscribers(&topic);
            send_json(
                member,
                &Joined {
                    joined: &topic,
                    subscribers,
                },
            )
            .await;
        }
        Command {
            join: None,
            leave: Some(topic),
            topic: None,
            data: None,
        } => {
            member.unsubscribe(&topic);
            send_json(member, &Reply::Left(&topic)).await;
        }
        Command {
            join: None,
            leave: None,
            topic: Some(topic),
            data,
        } => {
            if let Err(e) = check_topic(&topic) {
                return error(member, &e).await;
            }
            let null = RawValue::NULL;
            let publication = Publication {
                topic: &topic,
                from: member.id().get(),
                data: data.unwrap_or(null),
            };
            match serde_json::to_string(&publication) {
                // To every subscriber, the sender included: encoded once for all of them.
                Ok(json) => {
                    member.hub().publish(&topic, json).await;
                }
                Err(e) => error(member, &format!("cannot encode: {e}")).await,
            }
        }
        _ => {
            error(
                member,
                "expected exactly one of {\"join\": topic}, {\"leave\": topic} or \
                 {\"topic\": topic, \"data\": …}",
            )
            .await
        }
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

async fn error(member: &Member, message: &str) {
    send_json(member, &Reply::Error(message)).await;
}

async fn send_json(member: &Member, value: &impl Serialize) {
    match serde_json::to_string(value) {
        Ok(json) => {
            member.send(json).await;
        }
        Err(e) => tracing::warn!("chat: cannot encode a reply: {e}"),
    }
}
