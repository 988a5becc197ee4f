//! Server-sent events at `/events`: the topics of the chat hub as a `text/event-stream`, for
//! browsers' `EventSource` and anything else that reads HTTP.
//!
//! `GET /events?topic=a&topic=b` subscribes to the listed topics (the same as WebSocket
//! clients of `/chat`, `$metrics` included). Each publication is one event:
//!
//! ```text
//! id: <offset>
//! data: {"topic": "a", "offset": <offset>, "from": <id>, "data": …}
//! ```
//!
//! the very JSON a WebSocket client gets (split into several `data:` lines if it holds line
//! breaks, which the client joins back). Offsets grow across all topics of the server, so one
//! id says where a stream stopped: a client that reconnects with `Last-Event-ID: <offset>`
//! (browsers do it by themselves), or with `?lastEventId=<offset>` where it cannot set headers,
//! gets every publication of the listed topics after that offset that the history still holds,
//! in order, then what follows. Where the history no longer reaches back that far — or the id
//! is not a number the server gave — the stream starts with, for each such topic,
//!
//! ```text
//! event: gap
//! data: {"topic": "a", "after": <offset or null>}
//! ```
//!
//! and goes on with what follows (fetch the state anew). Comment lines (`:`) keep idle streams
//! alive. A stream whose reader falls behind is ended like any slow subscriber (the hub's
//! queue bounds and policy); `EventSource` then reconnects with its last id (and gets a gap if
//! what it missed no longer fits the queue: `--queue-messages`, `--queue-bytes`).
//!
//! Refused with `400 Bad Request` and a plain-text reason: no topic, more than
//! [`MAX_TOPICS`], a topic name that is empty, over 128 bytes or holds a control character, a
//! query string over [`MAX_QUERY`] bytes or not valid percent-encoded UTF-8. Other methods than
//! GET get 405.

use bytes::BytesMut;
use http::{Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use volley::PreparedMessage;
use volley::hub::{Hub, Resume};
use volley::sse::{EncodedEvent, EventStreams, SseConfig, encode_event};

use crate::chat::{MAX_TOPICS, check_topic};
use crate::web::{Body, only_get, text};

/// The path of the event streams.
pub(crate) const PATH: &str = "/events";

/// Longest query string accepted, in bytes.
/// (Longer request lines, past 8 KiB, are answered 414 by the server before they get here.)
pub(crate) const MAX_QUERY: usize = 4 * 1024;

/// The event streams of `volley serve`, on the chat's hub.
pub(crate) struct Events {
    hub: Hub,
    streams: EventStreams,
}

/// What the encoder reads of a hub message: a publication's offset, or a gap marker.
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(default)]
    offset: Option<u64>,
    #[serde(borrow, default)]
    gap: Option<&'a RawValue>,
}

/// The event of one hub message: a publication with its offset as id, a gap marker as an
/// `event: gap`, anything else as plain data.
fn encode(message: &PreparedMessage) -> Option<EncodedEvent> {
    if !message.is_text() {
        return None;
    }
    let payload = message.payload();
    let head: Option<Head<'_>> = std::str::from_utf8(&payload)
        .ok()
        .and_then(|text| serde_json::from_str(text).ok());
    let mut out = BytesMut::with_capacity(payload.len() + 32);
    match head {
        Some(Head { gap: Some(gap), .. }) => {
            encode_event(&mut out, Some("gap"), None, gap.get().as_bytes());
            Some(EncodedEvent::new(None, out.freeze()))
        }
        Some(Head {
            offset: Some(offset),
            ..
        }) => {
            encode_event(&mut out, None, Some(&offset.to_string()), &payload);
            Some(EncodedEvent::new(Some(offset), out.freeze()))
        }
        _ => {
            encode_event(&mut out, None, None, &payload);
            Some(EncodedEvent::new(None, out.freeze()))
        }
    }
}

/// The marker of a gap in `topic` after `after` (`None`: an id that is not an offset), which
/// [`encode`] turns into an `event: gap`.
fn gap(topic: &str, after: Option<u64>) -> Option<PreparedMessage> {
    let marker = serde_json::json!({ "gap": { "topic": topic, "after": after } });
    Some(PreparedMessage::text(marker.to_string()))
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
struct Query {
    topics: Vec<String>,
    /// The `lastEventId` parameter.
    last_event_id: Option<String>,
}

/// Decodes one `application/x-www-form-urlencoded` component.
fn decode(component: &str) -> Result<String, String> {
    let bytes = component.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err("the query string has a malformed %-escape".into());
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "the query string is not UTF-8".into())
}

/// Parses and checks the query string.
fn parse_query(query: Option<&str>) -> Result<Query, String> {
    let query = query.unwrap_or("");
    if query.len() > MAX_QUERY {
        return Err(format!("the query string is longer than {MAX_QUERY} bytes"));
    }
    let mut parsed = Query {
        topics: Vec::new(),
        last_event_id: None,
    };
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match decode(name)?.as_str() {
            "topic" => {
                let topic = decode(value)?;
                check_topic(&topic).map_err(|e| format!("topic {topic:?}: {e}"))?;
                if !parsed.topics.contains(&topic) {
                    if parsed.topics.len() == MAX_TOPICS {
                        return Err(format!("more than {MAX_TOPICS} topics"));
                    }
                    parsed.topics.push(topic);
                }
            }
            "lastEventId" => parsed.last_event_id = Some(decode(value)?),
            // Others (cache busters and the like) are ignored.
            _ => {}
        }
    }
    if parsed.topics.is_empty() {
        return Err(format!(
            "no topic: ask for {PATH}?topic=NAME (repeat topic= for more, up to {MAX_TOPICS})"
        ));
    }
    Ok(parsed)
}

impl Events {
    /// Event streams on `hub`.
    pub(crate) fn new(hub: Hub, config: SseConfig) -> Self {
        Self {
            hub,
            streams: EventStreams::new(config, encode),
        }
    }

    /// The streams (for metrics).
    pub(crate) fn streams(&self) -> &EventStreams {
        &self.streams
    }

    /// Answers `GET /events`.
    pub(crate) fn answer<B>(&self, request: &Request<B>) -> Response<Body> {
        if let Some(refused) = only_get(request) {
            return refused;
        }
        let query = match parse_query(request.uri().query()) {
            Ok(query) => query,
            Err(e) => return text(StatusCode::BAD_REQUEST, format!("400 Bad Request: {e}")),
        };
        let header = (request.headers().get("last-event-id"))
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        let last_event_id = header.or(query.last_event_id);
        let (member, body) = self.streams.join(&self.hub);
        match last_event_id.as_deref().map(|id| id.trim().parse::<u64>()) {
            None => {
                for topic in &query.topics {
                    member.subscribe(topic);
                }
            }
            Some(Ok(after)) => {
                for topic in &query.topics {
                    // The gap event first, then what follows (under the topic's lock).
                    member.resume_with(topic, after, |resume| match resume {
                        Resume::Gap => gap(topic, Some(after)),
                        _ => None,
                    });
                }
            }
            Some(Err(_)) => {
                for topic in &query.topics {
                    if let Some(marker) = gap(topic, None) {
                        member.send(marker);
                    }
                    member.subscribe(topic);
                }
            }
        }
        // Replays come topic by topic: in offset order, so that the last id seen is a
        // complete position.
        body.sort_by_id();
        drop(member);
        body.into_response().map(|body| {
            use http_body_util::BodyExt;
            body.boxed()
        })
    }
}

/// The query's topics, for tests.
#[cfg(test)]
fn topics(query: &str) -> Result<Vec<String>, String> {
    parse_query(Some(query)).map(|q| q.topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_decoded_and_checked() {
        assert_eq!(
            topics("topic=a&topic=b%20c&topic=a&t=1").unwrap(),
            ["a", "b c"]
        );
        assert_eq!(topics("topic=%24metrics").unwrap(), ["$metrics"]);
        assert_eq!(topics("topic=a+b").unwrap(), ["a b"]);
        for bad in [
            "",
            "topic=",
            "x=1",
            "topic=%",
            "topic=%zz",
            "topic=%ff",
            "topic=a%0Ab",
        ] {
            assert!(topics(bad).is_err(), "{bad:?}");
        }
        let long = format!("topic={}", "x".repeat(129));
        assert!(topics(&long).unwrap_err().contains("128"));
        let many: Vec<String> = (0..=MAX_TOPICS).map(|i| format!("topic=t{i}")).collect();
        assert!(topics(&many.join("&")).unwrap_err().contains("more than"));
        let huge = format!("topic=a&x={}", "y".repeat(MAX_QUERY));
        assert!(topics(&huge).unwrap_err().contains("longer than"));
        let q = parse_query(Some("topic=a&lastEventId=12")).unwrap();
        assert_eq!(q.last_event_id.as_deref(), Some("12"));
    }

    #[test]
    fn publications_become_events_with_their_offset_as_id() {
        let publication =
            PreparedMessage::text(r#"{"topic":"a","offset":42,"from":1,"data":{"x":"y\nz"}}"#);
        let event = encode(&publication).unwrap();
        assert_eq!(event.id(), Some(42));
        assert_eq!(
            std::str::from_utf8(event.bytes()).unwrap(),
            "id: 42\ndata: {\"topic\":\"a\",\"offset\":42,\"from\":1,\"data\":{\"x\":\"y\\nz\"}}\n\n"
        );
        let marker = gap("a", None).unwrap();
        let event = encode(&marker).unwrap();
        assert_eq!(event.id(), None);
        assert_eq!(
            std::str::from_utf8(event.bytes()).unwrap(),
            "event: gap\ndata: {\"topic\":\"a\",\"after\":null}\n\n"
        );
        assert!(encode(&PreparedMessage::binary(b"x")).is_none());
        let plain = encode(&PreparedMessage::text("not json")).unwrap();
        assert_eq!(
            std::str::from_utf8(plain.bytes()).unwrap(),
            "data: not json\n\n"
        );
    }
}
