//! `volley`: run a WebSocket server, connect to one, or benchmark one.

mod bench;
mod chat;
mod sio_chat;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use volley::callback::{Callbacks, Conn};
use volley::hub::{Hub, HubConfig};
use volley::{ClientBuilder, CloseCode, Config, Endpoint, Message, Server};
use volley_redis::hub::{RedisHubBackend, RedisHubConfig};
use volley_redis::{Redis, RedisConfig};
use volley_socketio_redis::{
    RedisAdapter, RedisAdapterConfig, ShardedRedisAdapter, ShardedRedisAdapterConfig,
};

#[derive(Parser)]
#[command(
    name = "volley",
    version,
    about = "Volley WebSocket toolkit: serve, connect, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Volley server: an echo endpoint, and a JSON topics chat at /chat.
    Serve(ServeArgs),
    /// Connect to a WebSocket server: stdin lines are sent, received messages printed.
    Connect(ConnectArgs),
    /// Load-test a WebSocket server: echo throughput and latency, topic fan-out, idle connections.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    bind: SocketAddr,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: usize,
    /// Serve wss://: PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Serve wss://: PEM private key. Needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Seconds between keep-alive pings (0 disables keep-alive).
    #[arg(long, default_value_t = 20.0, value_parser = seconds)]
    ping_interval: f64,
    /// Seconds a ping may wait for its pong before the connection is closed with 1011 (0: forever).
    #[arg(long, default_value_t = 20.0, value_parser = seconds)]
    ping_timeout: f64,
    /// Seconds the opening handshake may take (TLS included).
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    open_timeout: f64,
    /// Seconds to wait for the peer's half of the close handshake.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    close_timeout: f64,
    /// Bytes of outgoing data that may be queued per connection before sending waits.
    #[arg(long, default_value_t = 32 * 1024)]
    write_limit: usize,
    /// Accept browsers only from this Origin, e.g. https://app.example.com (repeatable); others
    /// get 403. Clients that send no Origin header are accepted.
    #[arg(long = "origin")]
    origins: Vec<String>,
    /// Seconds open connections get to finish their close handshake at shutdown.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    drain_timeout: f64,
    /// Worker threads (default: one per core); 1 runs a single-threaded runtime.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    #[command(flatten)]
    deflate: DeflateArgs,
    /// Share the /chat topics and the Socket.IO namespaces with every server on this Redis
    /// (other volley serve processes, Node socket.io servers with @socket.io/redis-adapter), e.g.
    /// redis://127.0.0.1:6379.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// With --redis: Socket.IO uses the sharded Redis adapter (Node's createShardedAdapter,
    /// Redis >= 7) instead of the classic one.
    #[arg(long, requires = "redis")]
    redis_sharded: bool,
}

/// permessage-deflate options, shared by serve and connect.
#[derive(clap::Args)]
struct DeflateArgs {
    /// Enable permessage-deflate compression (RFC 7692): accept it from clients (serve) or offer
    /// it to the server (connect).
    #[arg(long)]
    deflate: bool,
    /// With --deflate: compress every message on its own in both directions, so that idle
    /// connections keep no compression state (less memory, lower ratio).
    #[arg(long, requires = "deflate")]
    deflate_no_context_takeover: bool,
}

impl DeflateArgs {
    fn config(&self) -> Option<volley::DeflateConfig> {
        self.deflate.then(|| {
            volley::DeflateConfig::default().no_context_takeover(self.deflate_no_context_takeover)
        })
    }
}

/// Parses a non-negative number of seconds.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// `Some(duration)`, or `None` for 0.
fn optional(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

#[derive(clap::Args)]
struct ConnectArgs {
    /// The ws:// URL to connect to.
    url: String,
    /// Send stdin lines as binary messages instead of text.
    #[arg(long)]
    binary: bool,
    /// Extra request header, as "Name: value" (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Offer a subprotocol (repeatable, in order of preference).
    #[arg(long = "subprotocol")]
    subprotocols: Vec<String>,
    /// wss://: trust the CA certificates in this PEM file (in addition to the Mozilla roots).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// wss://: accept any server certificate (dangerous: for testing only).
    #[arg(long, conflicts_with = "ca")]
    insecure: bool,
    /// Largest message accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_message_size: usize,
    #[command(flatten)]
    deflate: DeflateArgs,
}

/// Where `volley serve` mounts Socket.IO (the clients' default path).
const SOCKETIO_PATH: &str = "/socket.io/";

/// The route of Socket.IO: everything under [`SOCKETIO_PATH`].
const SOCKETIO_ROUTE: &str = "/socket.io/*";

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match &cli.command {
        // The load generator builds its own runtimes (one single-threaded one per --threads).
        Command::Bench(_) => None,
        Command::Serve(ServeArgs {
            threads: Some(1), ..
        }) => Some(
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build(),
        ),
        Command::Serve(ServeArgs {
            threads: Some(n), ..
        }) => Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(usize::from(*n))
                .enable_all()
                .build(),
        ),
        _ => Some(tokio::runtime::Runtime::new()),
    };
    let runtime = match runtime {
        None => match cli.command {
            Command::Bench(command) => return bench::run(command),
            _ => unreachable!("only bench runs without a runtime"),
        },
        Some(runtime) => runtime,
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("volley: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Connect(args) => connect(args).await,
            Command::Bench(_) => ExitCode::from(2),
        }
    });
    // Don't wait for blocking work: a read of stdin cannot be cancelled, and dropping the runtime
    // would wait for it (that is, for the user to press Enter) after the server went away.
    runtime.shutdown_background();
    code
}

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

async fn serve(args: ServeArgs) -> ExitCode {
    let config = Config::default()
        .max_message_size(args.max_message_size)
        .ping_interval(optional(args.ping_interval))
        .ping_timeout(optional(args.ping_timeout))
        .open_timeout(Duration::from_secs_f64(args.open_timeout))
        .close_timeout(Duration::from_secs_f64(args.close_timeout))
        .write_limit(args.write_limit)
        .deflate(args.deflate.config());
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match volley::tls::server_config(cert, key) {
            Ok(tls) => Some(tls),
            Err(e) => {
                eprintln!("volley serve: {e}");
                return ExitCode::from(2);
            }
        },
        _ => None,
    };
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let redis = match &args.redis {
        Some(url) => match Redis::connect(RedisConfig::new(url.clone())) {
            Ok(redis) => Some(redis),
            Err(e) => {
                eprintln!("volley serve: --redis: {e}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let mut server = match Server::bind(args.bind).await {
        Ok(s) => s
            .config(config)
            .drain_timeout(Duration::from_secs_f64(args.drain_timeout)),
        Err(e) => {
            eprintln!("volley serve: cannot listen on {}: {e}", args.bind);
            return ExitCode::from(2);
        }
    };
    if let Some(tls) = tls {
        server = server.tls(tls);
    }
    if !args.origins.is_empty() {
        server = server.policy(volley::Policy::default().origins(args.origins.clone()));
    }
    let addr = server.local_addr().map_or(args.bind, |a| a);
    let compression = if args.deflate.deflate {
        ", permessage-deflate"
    } else {
        ""
    };
    // Socket.IO v4 (Engine.IO polling + WebSocket) at /socket.io/, with the chat namespace.
    let mut io = volley_socketio::SocketIo::builder();
    if !args.origins.is_empty() {
        io = io.cors(Some(volley_engineio::Cors::origins(args.origins.clone())));
    }
    // The chat's topics hub; with --redis, both it and Socket.IO span every server on Redis.
    let (hub, chat_ids, cluster) = match &redis {
        None => (Hub::default(), 0, String::new()),
        Some(redis) => {
            let backend = RedisHubBackend::new(redis.clone(), RedisHubConfig::default());
            let hub = match backend.hub(HubConfig::default()) {
                Ok(hub) => hub,
                Err(e) => {
                    eprintln!("volley serve: {e}");
                    return ExitCode::from(2);
                }
            };
            let adapter = if args.redis_sharded {
                ShardedRedisAdapter::factory(redis.clone(), ShardedRedisAdapterConfig::default())
            } else {
                RedisAdapter::factory(redis.clone(), RedisAdapterConfig::default())
            };
            io = io.adapter(adapter);
            let kind = if args.redis_sharded {
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
    let io = io.build();
    sio_chat::chat_namespace(&io);
    if redis.is_some() {
        // Subscribed before serving, so that the other servers' first messages are not missed.
        // Redis away: serve the local clients anyway (the connection keeps retrying).
        if let Err(e) = io.init_adapters().await {
            tracing::warn!(
                "volley serve: {e}; serving local clients, cross-server delivery starts once \
                 Redis is reachable"
            );
        }
    }
    eprintln!(
        "volley serve: listening on {scheme}://{addr}/ (echo{compression}; topics chat at {}; \
         Socket.IO at {SOCKETIO_PATH}, chat namespace /chat{cluster})",
        chat::PATH
    );
    // Every WebSocket path echoes, on the callback drivers (an idle connection costs < 1 KiB),
    // but the chat's.
    server = server
        .route("/*", Endpoint::callbacks(Echo))
        .route(
            chat::PATH,
            Endpoint::callbacks(chat::Chat::new(hub, chat_ids)),
        )
        .route(SOCKETIO_ROUTE, io.endpoint());
    let shutdown = async move {
        shutdown_signal().await;
        io.close();
    };
    let served = server.run_until(shutdown);
    match served.await {
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

/// Completes on SIGTERM or Ctrl-C (SIGINT).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
    eprintln!("volley serve: shutting down (closing connections with 1001)");
}

async fn connect(args: ConnectArgs) -> ExitCode {
    let config = Config::default()
        .max_message_size(args.max_message_size)
        .deflate(args.deflate.config());
    let mut builder = ClientBuilder::new(&args.url).config(config);
    for header in &args.headers {
        let parsed = header.split_once(':').and_then(|(name, value)| {
            let name = http::HeaderName::from_bytes(name.trim().as_bytes()).ok()?;
            let value = http::HeaderValue::from_str(value.trim()).ok()?;
            Some((name, value))
        });
        match parsed {
            Some((name, value)) => builder = builder.header(name, value),
            None => {
                eprintln!("volley connect: --header {header:?} is not \"Name: value\"");
                return ExitCode::from(2);
            }
        }
    }
    for protocol in &args.subprotocols {
        builder = builder.protocol(protocol.clone());
    }
    if args.insecure || args.ca.is_some() {
        let tls = if args.insecure {
            volley::tls::insecure_client_config()
        } else {
            let ca = args.ca.clone().into_iter().collect();
            volley::tls::client_config(&volley::tls::Roots::WebPkiAnd(ca))
        };
        match tls {
            Ok(tls) => builder = builder.tls_config(tls),
            Err(e) => {
                eprintln!("volley connect: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let ws = match builder.connect().await {
        Ok((ws, _)) => ws,
        Err(e) => {
            eprintln!("volley connect: {e}");
            return ExitCode::from(2);
        }
    };
    if args.deflate.deflate {
        match ws.deflate() {
            Some(params) => eprintln!("volley connect: compression: {params}"),
            None => eprintln!("volley connect: the server declined permessage-deflate"),
        }
    }
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("connected to {} (type messages, Ctrl-D to close)", args.url);
    }
    let (mut tx, mut rx) = ws.split();
    let binary = args.binary;
    let input = tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let message = if binary {
                Message::binary(line.into_bytes())
            } else {
                Message::text(line)
            };
            if tx.send(message).await.is_err() {
                return;
            }
        }
        let _ = tx
            .close(Some(volley::CloseFrame::new(CloseCode::NORMAL, "")))
            .await;
    });

    let mut stdout = tokio::io::stdout();
    let mut status = ExitCode::from(2);
    while let Some(message) = rx.recv().await {
        match message {
            Ok(Message::Text(text)) => {
                let _ = stdout.write_all(text.as_bytes()).await;
                let _ = stdout.write_all(b"\n").await;
                let _ = stdout.flush().await;
            }
            Ok(Message::Binary(data)) => {
                let _ = stdout.write_all(&data).await;
                let _ = stdout.write_all(b"\n").await;
                let _ = stdout.flush().await;
            }
            Ok(Message::Close(frame)) => {
                let (code, reason) = frame.map_or((CloseCode::NO_STATUS, String::new()), |f| {
                    (f.code, f.reason.to_string())
                });
                eprintln!("closed: {code} {reason}");
                status = if matches!(code.0, 1000 | 1001 | 1005) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                };
            }
            Ok(_) => {}
            Err(e) => {
                eprintln!("volley connect: {e}");
                status = ExitCode::from(2);
                break;
            }
        }
    }
    input.abort();
    status
}
