//! `volley`: run a WebSocket server, connect to one, or benchmark one.

mod bench;
mod chat;
mod events;
mod metrics;
mod serve;
mod settings;
mod sio_chat;
mod web;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use volley::{ClientBuilder, CloseCode, Config, Message};

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
    /// Run the Volley server: a page at / for browsers, a WebSocket echo, a JSON topics chat at
    /// /chat, Socket.IO at /socket.io/, server-sent events at /events, /metrics and /healthz.
    Serve(Box<settings::ServeArgs>),
    /// Connect to a WebSocket server: stdin lines are sent, received messages printed.
    Connect(ConnectArgs),
    /// Load-test a WebSocket server: echo throughput and latency, topic fan-out, idle connections.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

/// permessage-deflate options of connect.
#[derive(clap::Args)]
struct DeflateArgs {
    /// Offer permessage-deflate compression (RFC 7692) to the server.
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (runtime, job) = match cli.command {
        // The load generator builds its own runtimes (one single-threaded one per --threads).
        Command::Bench(command) => {
            init_logging(settings::LogFormat::Text, None);
            return bench::run(command);
        }
        Command::Serve(args) => {
            let settings = match args.resolve() {
                Ok(settings) => settings,
                Err(e) => {
                    eprintln!("volley serve: {e}");
                    return ExitCode::from(2);
                }
            };
            init_logging(settings.log_format, settings.log.as_deref());
            let runtime = match settings.threads {
                Some(1) => tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build(),
                Some(n) => tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(usize::from(n))
                    .enable_all()
                    .build(),
                None => tokio::runtime::Runtime::new(),
            };
            (runtime, Job::Serve(Box::new(settings)))
        }
        Command::Connect(args) => {
            init_logging(settings::LogFormat::Text, None);
            (tokio::runtime::Runtime::new(), Job::Connect(args))
        }
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("volley: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let code = runtime.block_on(async {
        match job {
            Job::Serve(settings) => serve::serve(*settings).await,
            Job::Connect(args) => connect(args).await,
        }
    });
    // Don't wait for blocking work: a read of stdin cannot be cancelled, and dropping the runtime
    // would wait for it (that is, for the user to press Enter) after the server went away.
    runtime.shutdown_background();
    code
}

/// What runs on the runtime.
enum Job {
    Serve(Box<settings::Settings>),
    Connect(ConnectArgs),
}

/// Logs to stderr through `tracing`: `filter` (a level or directives), else `RUST_LOG`, else
/// info; as text or JSON lines.
fn init_logging(format: settings::LogFormat, filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(filter) => EnvFilter::try_new(filter).unwrap_or_else(|e| {
            eprintln!("volley: --log {filter:?}: {e}; logging at info");
            EnvFilter::new("info")
        }),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        settings::LogFormat::Text => builder.init(),
        settings::LogFormat::Json => builder.json().init(),
    }
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
