//! What `volley serve` tells about itself: `/metrics` in the Prometheus text format, and a
//! JSON snapshot published every second on the [`METRICS_TOPIC`](crate::chat::METRICS_TOPIC)
//! topic (the page's dashboard; any `/chat` or `/events` client may subscribe).
//!
//! Everything is read from counters the libraries keep anyway (atomics read on demand): the
//! callback drivers' [`traffic`](volley::callback::Drivers::traffic) and connection counts,
//! the server's [`stats`](volley::Server::stats), the hub's [`stats`](volley::hub::Hub::stats),
//! the event streams, Socket.IO's sessions and the Redis link. Nothing is counted on a hot
//! path for the metrics' sake.
//!
//! The snapshot (`data` of the `$metrics` publications) is an object of numbers:
//!
//! ```json
//! {"uptime_seconds": 12,
//!  "connections": {"echo": 1, "chat": 2, "sse": 1, "socketio_polling": 0, "socketio_websocket": 1},
//!  "messages": {"received": 10, "sent": 30}, "bytes": {"received": 900, "sent": 4000},
//!  "hub": {"members": 3, "topics": 2, "published": 15, "delivered": 40, "dropped": 0, "slow_closed": 0},
//!  "handshakes": {"accepted": 9, "refused": 1}}
//! ```
//!
//! (counters only grow: a client computes rates from two snapshots; sections of endpoints
//! turned off are absent; `"redis": {"up": 1}` when `--redis` is given).

use std::fmt::Write as _;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use serde::Serialize;
use volley::ServerStats;
use volley::callback::{Drivers, TrafficStats};
use volley::hub::Hub;
use volley::sse::EventStreams;
use volley_engineio::TransportKind;

use crate::web::{Body, full, only_get};

/// Where the numbers come from.
pub(crate) struct Sources {
    pub(crate) started: Instant,
    pub(crate) server: ServerStats,
    pub(crate) hub: Hub,
    /// The echo's drivers (`/*` and `/`).
    pub(crate) echo: Option<Drivers>,
    pub(crate) chat: Option<Drivers>,
    pub(crate) sse: Option<EventStreams>,
    pub(crate) socketio: Option<volley_socketio::SocketIo>,
    pub(crate) redis: Option<volley_redis::Redis>,
}

/// One reading of every number.
#[derive(Serialize)]
pub(crate) struct Snapshot {
    uptime_seconds: u64,
    connections: Connections,
    messages: Pair,
    bytes: Pair,
    hub: HubNumbers,
    handshakes: Handshakes,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RedisNumbers>,
    #[serde(skip)]
    detail: Detail,
}

#[derive(Serialize)]
struct Connections {
    #[serde(skip_serializing_if = "Option::is_none")]
    echo: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chat: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sse: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socketio_polling: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    socketio_websocket: Option<usize>,
}

#[derive(Serialize, Default)]
struct Pair {
    received: u64,
    sent: u64,
}

#[derive(Serialize)]
struct HubNumbers {
    members: usize,
    topics: usize,
    published: u64,
    delivered: u64,
    dropped: u64,
    slow_closed: u64,
}

#[derive(Serialize)]
struct Handshakes {
    accepted: u64,
    refused: u64,
}

#[derive(Serialize)]
struct RedisNumbers {
    up: u8,
    connections: u64,
}

/// What only `/metrics` shows.
#[derive(Default)]
struct Detail {
    echo: TrafficStats,
    chat: TrafficStats,
    sse_bytes: u64,
    sse_opened: usize,
    refusals: Vec<(&'static str, u64)>,
}

impl Sources {
    /// Reads every number now.
    pub(crate) fn snapshot(&self) -> Snapshot {
        let echo = self.echo.as_ref().map(Drivers::traffic).unwrap_or_default();
        let chat = self.chat.as_ref().map(Drivers::traffic).unwrap_or_default();
        let sse_bytes = self.sse.as_ref().map_or(0, EventStreams::sent_bytes);
        let engine = self.socketio.as_ref().map(|io| io.engine());
        let sessions = |kind| engine.map(|e| e.session_count_by_transport(kind));
        let hub = self.hub.stats();
        let refusals: Vec<_> = (volley::Refusal::ALL.iter())
            .map(|&r| (r.as_str(), self.server.refused(r)))
            .collect();
        let redis = self.redis.as_ref().map(|redis| {
            let state = *redis.state().borrow();
            RedisNumbers {
                up: u8::from(state.ready),
                connections: state.connections,
            }
        });
        Snapshot {
            uptime_seconds: self.started.elapsed().as_secs(),
            connections: Connections {
                echo: self.echo.as_ref().map(Drivers::connections),
                chat: self.chat.as_ref().map(Drivers::connections),
                sse: self.sse.as_ref().map(EventStreams::open),
                socketio_polling: sessions(TransportKind::Polling),
                socketio_websocket: sessions(TransportKind::WebSocket),
            },
            messages: Pair {
                received: echo.messages_received + chat.messages_received,
                sent: echo.messages_sent + chat.messages_sent,
            },
            bytes: Pair {
                received: echo.bytes_received + chat.bytes_received,
                sent: echo.bytes_sent + chat.bytes_sent + sse_bytes,
            },
            hub: HubNumbers {
                members: hub.members,
                topics: hub.topics,
                published: hub.published,
                delivered: hub.delivered,
                dropped: hub.dropped,
                slow_closed: hub.closed_slow,
            },
            handshakes: Handshakes {
                accepted: self.server.accepted(),
                refused: refusals.iter().map(|(_, n)| n).sum(),
            },
            redis,
            detail: Detail {
                echo,
                chat,
                sse_bytes,
                sse_opened: self.sse.as_ref().map_or(0, EventStreams::opened),
                refusals,
            },
        }
    }
}

/// Writes one metric family: its help, its type and its samples (`labels` without braces).
fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

impl Snapshot {
    /// The Prometheus text exposition format (version 0.0.4).
    pub(crate) fn prometheus(&self) -> String {
        let mut out = String::with_capacity(4096);
        let d = &self.detail;
        let c = &self.connections;
        let route = |transport: &str, route: &str, n: Option<usize>| {
            n.map(|n| {
                (
                    format!("transport=\"{transport}\",route=\"{route}\""),
                    n as u64,
                )
            })
        };
        let connections: Vec<_> = [
            route("websocket", "/*", c.echo),
            route("websocket", "/chat", c.chat),
            route("sse", "/events", c.sse),
            route("socketio-polling", "/socket.io/", c.socketio_polling),
            route("socketio-websocket", "/socket.io/", c.socketio_websocket),
        ]
        .into_iter()
        .flatten()
        .collect();
        family(
            &mut out,
            "volley_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            &[(String::new(), self.uptime_seconds)],
        );
        family(
            &mut out,
            "volley_connections",
            "gauge",
            "Open connections by transport and route (Socket.IO: sessions).",
            &connections,
        );
        let sessions: Vec<_> = [
            ("polling", c.socketio_polling),
            ("websocket", c.socketio_websocket),
        ]
        .into_iter()
        .filter_map(|(t, n)| n.map(|n| (format!("transport=\"{t}\""), n as u64)))
        .collect();
        if !sessions.is_empty() {
            family(
                &mut out,
                "volley_socketio_sessions",
                "gauge",
                "Open Socket.IO (Engine.IO) sessions by transport.",
                &sessions,
            );
        }
        let per_route = |f: fn(&TrafficStats) -> u64| {
            let mut samples = Vec::new();
            if c.echo.is_some() {
                samples.push(("route=\"/*\"".to_owned(), f(&d.echo)));
            }
            if c.chat.is_some() {
                samples.push(("route=\"/chat\"".to_owned(), f(&d.chat)));
            }
            samples
        };
        family(
            &mut out,
            "volley_messages_received_total",
            "counter",
            "WebSocket text and binary messages received, by route.",
            &per_route(|t| t.messages_received),
        );
        family(
            &mut out,
            "volley_messages_sent_total",
            "counter",
            "WebSocket text and binary messages sent, by route.",
            &per_route(|t| t.messages_sent),
        );
        family(
            &mut out,
            "volley_bytes_received_total",
            "counter",
            "Bytes read from WebSocket connections, by route.",
            &per_route(|t| t.bytes_received),
        );
        let mut sent = per_route(|t| t.bytes_sent);
        if c.sse.is_some() {
            sent.push(("route=\"/events\"".to_owned(), d.sse_bytes));
        }
        family(
            &mut out,
            "volley_bytes_sent_total",
            "counter",
            "Bytes written to WebSocket connections and event streams, by route.",
            &sent,
        );
        if c.sse.is_some() {
            family(
                &mut out,
                "volley_sse_streams_opened_total",
                "counter",
                "Event streams opened at /events.",
                &[(String::new(), d.sse_opened as u64)],
            );
        }
        let h = &self.hub;
        family(
            &mut out,
            "volley_topics",
            "gauge",
            "Topics with subscribers (or a history) on the hub.",
            &[(String::new(), h.topics as u64)],
        );
        family(
            &mut out,
            "volley_hub_members",
            "gauge",
            "Hub members: /chat connections and event streams.",
            &[(String::new(), h.members as u64)],
        );
        for (name, help, value) in [
            (
                "volley_hub_published_total",
                "Messages published on the hub.",
                h.published,
            ),
            (
                "volley_hub_delivered_total",
                "Messages queued for a hub subscriber, summed over subscribers.",
                h.delivered,
            ),
            (
                "volley_hub_dropped_total",
                "Messages lost to a full subscriber queue (overflow policy).",
                h.dropped,
            ),
            (
                "volley_hub_slow_consumers_closed_total",
                "Subscribers closed because they fell behind.",
                h.slow_closed,
            ),
            (
                "volley_connections_accepted_total",
                "TCP connections accepted.",
                self.handshakes.accepted,
            ),
        ] {
            family(&mut out, name, "counter", help, &[(String::new(), value)]);
        }
        let refusals: Vec<_> = (d.refusals.iter())
            .map(|(reason, n)| (format!("reason=\"{reason}\""), *n))
            .collect();
        family(
            &mut out,
            "volley_handshake_rejections_total",
            "counter",
            "Connections and WebSocket handshakes refused, by reason.",
            &refusals,
        );
        if let Some(redis) = &self.redis {
            family(
                &mut out,
                "volley_redis_up",
                "gauge",
                "1 while the Redis link is up with every subscription confirmed.",
                &[(String::new(), u64::from(redis.up))],
            );
            family(
                &mut out,
                "volley_redis_connections_total",
                "counter",
                "Connections made to Redis (1 + reconnects).",
                &[(String::new(), redis.connections)],
            );
        }
        out
    }
}

/// `GET /metrics`.
pub(crate) fn answer<B>(sources: &Sources, request: &Request<B>) -> Response<Body> {
    if let Some(refused) = only_get(request) {
        return refused;
    }
    let mut response = Response::new(full(sources.snapshot().prometheus()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
