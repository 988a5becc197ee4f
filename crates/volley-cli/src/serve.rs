//! `volley serve`: the endpoints on one router, and running them until a signal.
//!
//! | path | what |
//! |---|---|
//! | `/` | the page for browsers (`Accept: text/html`), a plain-text overview for other HTTP clients; WebSocket upgrades get the echo |
//! | `/assets/<name>` | the page's files |
//! | any other path | WebSocket echo (HTTP requests get 404) |
//! | `/chat` | the JSON topics chat ([`chat`](crate::chat)) |
//! | `/socket.io/` | Socket.IO v4, chat namespace `/chat` |
//! | `/events` | server-sent events of the chat's topics ([`events`](crate::events)) |
//! | `/metrics` | Prometheus text format ([`metrics`](crate::metrics)) |
//! | `/healthz` | `ok` |
//!
//! `--no-demo`, `--no-echo`, `--no-chat`, `--no-socketio`, `--no-sse` and `--no-metrics` turn
//! endpoints off: their paths then get 404 (WebSocket upgrades get the echo, if it is on).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::value::RawValue;
use volley::callback::{Callbacks, Conn, Drivers};
use volley::hub::{Hub, HubConfig, Scope};
use volley::sse::SseConfig;
use volley::{Config, Endpoint, Server};
use volley_redis::hub::{RedisHubBackend, RedisHubConfig};
use volley_redis::{Redis, RedisConfig};
use volley_socketio_redis::{
    RedisAdapter, RedisAdapterConfig, ShardedRedisAdapter, ShardedRedisAdapterConfig,
};

use crate::chat::{self, METRICS_TOPIC, Numbering, Publication};
use crate::events::{self, Events};
use crate::metrics::{self, Sources};
use crate::settings::Settings;
use crate::sio_chat;
use crate::web::{self, Assets, Page};

/// Where `volley serve` mounts Socket.IO (the clients' default path).
const SOCKETIO_PATH: &str = "/socket.io/";

/// The route of Socket.IO: everything under [`SOCKETIO_PATH`].
const SOCKETIO_ROUTE: &str = "/socket.io/*";

/// The echo of `volley serve`: every text or binary message is sent back.
struct Echo;

impl Callbacks for Echo {
    fn on_message(&self, conn: &mut Conn<'_>, message: volley::Message) {
        // Fails only once the connection is closing, when there is no one to answer.
        let _ = conn.send(message);
    }

    fn on_close(&self, conn: &mut Conn<'_>, result: volley::Result<Option<volley::CloseFrame>>) {
        if let Err(e) = result {
            tracing::debug!(id = conn.id(), "connection ended: {e}");
        }
    }
}

/// Runs `volley serve` until SIGTERM or Ctrl-C.
pub(crate) async fn serve(s: Settings) -> ExitCode {
    let config = Config::default()
        .max_message_size(s.max_message_size)
        .ping_interval(s.ping_interval)
        .ping_timeout(s.ping_timeout)
        .open_timeout(s.open_timeout)
        .close_timeout(s.close_timeout)
        .write_limit(s.write_limit)
        .deflate(s.deflate.clone());
    let tls = match &s.tls {
        Some((cert, key)) => match volley::tls::server_config(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("volley serve: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let (ws, http) = if tls.is_some() {
        ("wss", "https")
    } else {
        ("ws", "http")
    };
    let redis = match &s.redis {
        Some(url) => match Redis::connect(RedisConfig::new(url.clone())) {
            Ok(redis) => Some(redis),
            Err(e) => {
                eprintln!("volley serve: --redis: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut server = match Server::bind(s.bind).await {
        Ok(server) => server.config(config.clone()).drain_timeout(s.drain_timeout),
        Err(e) => {
            eprintln!("volley serve: cannot listen on {}: {e}", s.bind);
            return ExitCode::from(2);
        }
    };
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    if !s.origins.is_empty() {
        server = server.policy(volley::Policy::default().origins(s.origins.clone()));
    }
    let addr = server.local_addr().map_or(s.bind, |a| a);

    // The topics hub of /chat, /events and $metrics; with --redis it spans every server on
    // that Redis, and so does Socket.IO.
    let hub_config = HubConfig::default()
        .history(s.history)
        .queue(s.queue.clone());
    let mut io = volley_socketio::SocketIo::builder()
        .ping_interval(s.socketio_ping_interval)
        .ping_timeout(s.socketio_ping_timeout);
    if !s.origins.is_empty() {
        io = io.cors(Some(volley_engineio::Cors::origins(s.origins.clone())));
    }
    let (hub, chat_ids, cluster) = match &redis {
        None => (Hub::new(hub_config), 0, String::new()),
        Some(redis) => {
            let backend = RedisHubBackend::new(redis.clone(), RedisHubConfig::default());
            let hub = match backend.hub(hub_config) {
                Ok(hub) => hub,
                Err(e) => {
                    eprintln!("volley serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let adapter = if s.redis_sharded {
                ShardedRedisAdapter::factory(redis.clone(), ShardedRedisAdapterConfig::default())
            } else {
                RedisAdapter::factory(redis.clone(), RedisAdapterConfig::default())
            };
            io = io.adapter(adapter);
            let kind = if s.redis_sharded {
                "sharded"
            } else {
                "classic"
            };
            // Distinct chat ids across servers: a random base of 21 bits above the 32 of the
            // member ids (below 2^53, exact in JavaScript).
            let chat_ids = (backend.node_id() >> 43) << 32;
            let cluster = format!("; shared through Redis, {kind} Socket.IO adapter");
            (hub, chat_ids, cluster)
        }
    };
    let numbering = if redis.is_some() {
        Numbering::None
    } else {
        Numbering::Offsets
    };
    let io = s.socketio.then(|| {
        let io = io.build();
        sio_chat::chat_namespace(&io);
        io
    });
    if let (Some(io), Some(_)) = (&io, &redis) {
        // Subscribed before serving, so that the other servers' first messages are not missed.
        // Redis away: serve the local clients anyway (the connection keeps retrying).
        if let Err(e) = io.init_adapters().await {
            tracing::warn!(
                "volley serve: {e}; serving local clients, cross-server delivery starts once \
                 Redis is reachable"
            );
        }
    }

    // Every WebSocket path echoes, on the callback drivers (an idle connection costs < 1 KiB),
    // but the other endpoints'.
    let echo = s.echo.then(|| Drivers::new(Echo, config.clone()));
    let chat = s
        .chat
        .then(|| Drivers::new(chat::Chat::new(hub.clone(), chat_ids, numbering), config));
    let events = s.sse.then(|| {
        let sse = SseConfig::default().keep_alive(s.sse_keep_alive);
        Arc::new(Events::new(hub.clone(), sse))
    });
    let mut endpoints = Vec::new();
    if let Some(echo) = &echo {
        let not_found = web::service(Arc::new(()), |_, request| web::not_found(request));
        server = server.route("/*", Endpoint::drivers(echo.clone()).or_http(not_found));
        endpoints.push("echo".to_owned());
    }
    if s.demo {
        let page = Arc::new(Page {
            assets: Assets::embedded(),
            overview: overview(&s, addr, ws),
        });
        let root = web::service(page.clone(), |page, request| page.root(request));
        let root = match &echo {
            Some(echo) => Endpoint::drivers(echo.clone()).or_http(root),
            None => Endpoint::service(root),
        };
        server = server.route("/", root).route(
            "/assets/*",
            Endpoint::service(web::service(page, |page, request| page.asset(request))),
        );
    }
    if let Some(chat) = &chat {
        server = server.route(chat::PATH, Endpoint::drivers(chat.clone()));
        endpoints.push(format!("topics chat at {}", chat::PATH));
    }
    if let Some(io) = &io {
        server = server.route(SOCKETIO_ROUTE, io.endpoint());
        endpoints.push(format!(
            "Socket.IO at {SOCKETIO_PATH}, chat namespace /chat{cluster}"
        ));
    }
    if let Some(events) = &events {
        let answer = web::service(events.clone(), |events, request| events.answer(request));
        server = server.route(events::PATH, Endpoint::service(answer));
        endpoints.push(format!("events at {}", events::PATH));
    }
    let sources = Arc::new(Sources {
        started: Instant::now(),
        server: server.stats(),
        hub: hub.clone(),
        echo: echo.clone(),
        chat: chat.clone(),
        sse: events.as_ref().map(|e| e.streams().clone()),
        socketio: io.clone(),
        redis: redis.clone(),
    });
    let mut publisher = None;
    if s.metrics {
        let answer = web::service(sources.clone(), metrics::answer);
        server = server.route("/metrics", Endpoint::service(answer));
        endpoints.push("/metrics".to_owned());
        if let Some(every) = s.metrics_interval {
            let metrics = publish_metrics(sources.clone(), every, numbering);
            publisher = Some(tokio::spawn(metrics));
        }
    }
    server = server.route(
        "/healthz",
        Endpoint::service(web::service(Arc::new(()), |_, request| {
            web::healthz(request)
        })),
    );
    endpoints.push("/healthz".to_owned());
    let compression = if s.deflate.is_some() {
        ", permessage-deflate"
    } else {
        ""
    };
    // Listening for the signals before saying that the server listens: a SIGTERM sent as soon
    // as the line is read must find its handler.
    let signals = Signals::install();
    let page = if s.demo {
        format!("; open {http}://{addr}/ in a browser")
    } else {
        String::new()
    };
    eprintln!(
        "volley serve: listening on {ws}://{addr}/ ({}{compression}){page}",
        endpoints.join("; ")
    );
    tracing::info!(%addr, endpoints = %endpoints.join("; "), "listening");
    let shutdown = async {
        signals.received().await;
        if let Some(io) = &io {
            io.close();
        }
        if let Some(events) = &events {
            // Event streams never end by themselves: end them, after what is queued.
            events.streams().close_all();
        }
    };
    let served = server.run_until(shutdown).await;
    if let Some(publisher) = publisher {
        publisher.abort();
    }
    match served {
        Ok(()) => {
            eprintln!("volley serve: stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("volley serve: {e}");
            ExitCode::from(2)
        }
    }
}

/// The plain-text answer at `/` for HTTP clients that do not ask for HTML.
fn overview(s: &Settings, addr: std::net::SocketAddr, ws: &str) -> String {
    let mut lines = vec![format!(
        "volley serve {}: open this address in a browser for the page.",
        env!("CARGO_PKG_VERSION")
    )];
    if s.echo {
        lines.push(format!("  {ws}://{addr}/ (any path): WebSocket echo"));
    }
    if s.chat {
        lines.push(format!("  {ws}://{addr}{}: JSON topics chat", chat::PATH));
    }
    if s.socketio {
        lines.push(format!("  {SOCKETIO_PATH}: Socket.IO v4, namespace /chat"));
    }
    if s.sse {
        lines.push(format!("  {}?topic=NAME: server-sent events", events::PATH));
    }
    if s.metrics {
        lines.push(format!(
            "  /metrics: Prometheus metrics; topic {METRICS_TOPIC}: a JSON snapshot every second"
        ));
    }
    lines.push("  /healthz: health".to_owned());
    lines.join("\n")
}

/// Publishes a snapshot of the metrics on [`METRICS_TOPIC`] every `every`, until aborted: to
/// this server's subscribers only (across servers, each has its own metrics).
async fn publish_metrics(sources: Arc<Sources>, every: Duration, numbering: Numbering) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let snapshot = sources.snapshot();
        let raw = serde_json::to_string(&snapshot)
            .ok()
            .and_then(|json| RawValue::from_string(json).ok());
        let Some(raw) = raw else {
            continue;
        };
        match numbering {
            Numbering::Offsets => {
                Publication::publish(&sources.hub, numbering, METRICS_TOPIC, 0, &raw)
            }
            Numbering::None => {
                let publication = Publication {
                    topic: METRICS_TOPIC,
                    offset: None,
                    from: 0,
                    data: &raw,
                };
                if let Ok(json) = serde_json::to_string(&publication) {
                    let message = volley::PreparedMessage::text(json);
                    sources.hub.deliver(Scope::Topic(METRICS_TOPIC), &message);
                }
            }
        }
    }
}

/// The signals that stop the server: SIGTERM and Ctrl-C (SIGINT).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening for them (from now on they no longer end the process at once).
    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                term: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Completes when one arrives.
    async fn received(self) {
        #[cfg(unix)]
        {
            let (mut term, mut interrupt) = (self.term, self.interrupt);
            let term = async {
                match &mut term {
                    Some(term) => drop(term.recv().await),
                    None => std::future::pending().await,
                }
            };
            let interrupt = async {
                match &mut interrupt {
                    Some(interrupt) => drop(interrupt.recv().await),
                    None => drop(tokio::signal::ctrl_c().await),
                }
            };
            tokio::select! {
                () = term => {}
                () = interrupt => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("volley serve: shutting down (closing connections with 1001)");
    }
}
