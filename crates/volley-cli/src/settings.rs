//! The settings of `volley serve`: its flags, the same keys in a TOML file (`--config`), and
//! what they resolve to (flags override the file, the file overrides the defaults).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Flags of `volley serve`; every one but `--config` is also a key of the config file, spelled
/// like the flag without its dashes (`max-message-size = 65536`, `origin = ["https://a.example"]`).
#[derive(clap::Args, Deserialize, Default, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(crate) struct ServeArgs {
    /// Read settings from this TOML file (keys named like the flags: `bind = "127.0.0.1:9001"`,
    /// `no-socketio = true`; see volley.toml in the repository). Flags override it.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,

    // ---- Network
    /// Address to listen on [default: 127.0.0.1:9001].
    #[arg(long, value_name = "ADDR", help_heading = "Network")]
    pub(crate) bind: Option<SocketAddr>,
    /// Serve wss:// and https://: PEM certificate chain (leaf first). Needs --tls-key.
    #[arg(long, value_name = "PEM", help_heading = "Network")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// Serve wss:// and https://: PEM private key. Needs --tls-cert.
    #[arg(long, value_name = "PEM", help_heading = "Network")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Accept browsers only from this Origin, e.g. https://app.example.com (repeatable); others
    /// get 403. Clients that send no Origin header are accepted.
    #[arg(long, value_name = "ORIGIN", help_heading = "Network")]
    #[serde(default)]
    pub(crate) origin: Vec<String>,
    /// Worker threads [default: one per core]; 1 runs a single-threaded runtime.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024), help_heading = "Network")]
    pub(crate) threads: Option<u16>,

    // ---- Connections
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long, value_name = "BYTES", help_heading = "Connections")]
    pub(crate) max_message_size: Option<usize>,
    /// Bytes of outgoing data that may be queued per connection before sending waits
    /// [default: 32768].
    #[arg(long, value_name = "BYTES", help_heading = "Connections")]
    pub(crate) write_limit: Option<usize>,
    /// Seconds between keep-alive pings, 0 disables keep-alive [default: 20].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) ping_interval: Option<f64>,
    /// Seconds a ping may wait for its pong before the connection is closed with 1011, 0: forever
    /// [default: 20].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) ping_timeout: Option<f64>,
    /// Seconds the opening handshake may take, TLS included [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) open_timeout: Option<f64>,
    /// Seconds to wait for the peer's half of the close handshake [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) close_timeout: Option<f64>,
    /// Seconds open connections get to finish their close handshake at shutdown [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) drain_timeout: Option<f64>,
    /// Seconds between the heartbeat pings of Socket.IO (Engine.IO) sessions; more than 0
    /// [default: 25, as Node's].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) socketio_ping_interval: Option<f64>,
    /// Seconds a Socket.IO client has to answer a heartbeat before its session is closed; more
    /// than 0 [default: 20].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Connections")]
    pub(crate) socketio_ping_timeout: Option<f64>,
    /// Enable permessage-deflate compression (RFC 7692) for clients that offer it.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Connections")]
    pub(crate) deflate: Option<bool>,
    /// With --deflate: compress every message on its own, so that idle connections keep no
    /// compression state (less memory, lower ratio).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Connections")]
    pub(crate) deflate_no_context_takeover: Option<bool>,

    // ---- Topics
    /// Publications each topic keeps for clients that come back (/chat `"after"`, SSE
    /// Last-Event-ID); 0 keeps none [default: 1000].
    #[arg(
        long,
        value_name = "COUNT",
        help_heading = "Topics (/chat, /events, $metrics)"
    )]
    pub(crate) history_messages: Option<usize>,
    /// Seconds a topic keeps a publication for clients that come back [default: 120].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Topics (/chat, /events, $metrics)")]
    pub(crate) history_age: Option<f64>,
    /// Messages that may wait for one topic subscriber (a /chat connection, an /events
    /// stream) before it is closed as too slow; a resume must fit in it [default: 1024].
    #[arg(
        long,
        value_name = "COUNT",
        help_heading = "Topics (/chat, /events, $metrics)"
    )]
    pub(crate) queue_messages: Option<usize>,
    /// Bytes that may wait for one topic subscriber before it is closed as too slow; a resume
    /// must fit in it [default: 1048576].
    #[arg(
        long,
        value_name = "BYTES",
        help_heading = "Topics (/chat, /events, $metrics)"
    )]
    pub(crate) queue_bytes: Option<usize>,
    /// Seconds between keep-alive comments on idle /events streams, 0: none [default: 15].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Topics (/chat, /events, $metrics)")]
    pub(crate) sse_keep_alive: Option<f64>,
    /// Seconds between two snapshots of the server's metrics on the $metrics topic, 0: none
    /// [default: 1].
    #[arg(long, value_name = "SECONDS", value_parser = seconds, help_heading = "Topics (/chat, /events, $metrics)")]
    pub(crate) metrics_interval: Option<f64>,

    // ---- Endpoints
    /// No page at / and no /assets/ (WebSocket clients at / still get the echo).
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_demo: Option<bool>,
    /// No echo: WebSocket upgrades outside the other endpoints get 404.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_echo: Option<bool>,
    /// No topics chat at /chat.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_chat: Option<bool>,
    /// No Socket.IO at /socket.io/.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_socketio: Option<bool>,
    /// No server-sent events at /events.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_sse: Option<bool>,
    /// No /metrics and no $metrics topic.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Endpoints")]
    pub(crate) no_metrics: Option<bool>,

    // ---- Cluster
    /// Share the topics and the Socket.IO namespaces with every server on this Redis (other
    /// volley serve processes, Node socket.io servers with @socket.io/redis-adapter), e.g.
    /// redis://127.0.0.1:6379. Topic publications then carry no offset and topics keep no
    /// history (resuming reports a gap); $metrics stays per server.
    #[arg(long, value_name = "URL", help_heading = "Cluster")]
    pub(crate) redis: Option<String>,
    /// With --redis: Socket.IO uses the sharded Redis adapter (Node's createShardedAdapter,
    /// Redis >= 7) instead of the classic one.
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", help_heading = "Cluster")]
    pub(crate) redis_sharded: Option<bool>,

    // ---- Logging
    /// Log lines as human-readable text or as JSON objects (one per line) [default: text].
    #[arg(long, value_name = "FORMAT", help_heading = "Logging")]
    pub(crate) log_format: Option<LogFormat>,
    /// What to log, as a tracing filter: a level (error, warn, info, debug, trace) or
    /// directives such as "info,volley=debug" [default: RUST_LOG, else info].
    #[arg(long, value_name = "FILTER", help_heading = "Logging")]
    pub(crate) log: Option<String>,
}

/// How log lines look.
#[derive(clap::ValueEnum, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable text.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses a non-negative number of seconds.
pub(crate) fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..1e9).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds")),
    }
}

/// What `volley serve` runs with: the flags over the file over the defaults.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) bind: SocketAddr,
    pub(crate) tls: Option<(PathBuf, PathBuf)>,
    pub(crate) origins: Vec<String>,
    pub(crate) threads: Option<u16>,
    pub(crate) max_message_size: usize,
    pub(crate) write_limit: usize,
    pub(crate) ping_interval: Option<Duration>,
    pub(crate) ping_timeout: Option<Duration>,
    pub(crate) open_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) socketio_ping_interval: Duration,
    pub(crate) socketio_ping_timeout: Duration,
    pub(crate) deflate: Option<volley::DeflateConfig>,
    /// `None`: no history.
    pub(crate) history: Option<volley::hub::History>,
    /// Each topic subscriber's queue.
    pub(crate) queue: volley::QueueLimits,
    pub(crate) sse_keep_alive: Option<Duration>,
    pub(crate) metrics_interval: Option<Duration>,
    pub(crate) demo: bool,
    pub(crate) echo: bool,
    pub(crate) chat: bool,
    pub(crate) socketio: bool,
    pub(crate) sse: bool,
    pub(crate) metrics: bool,
    pub(crate) redis: Option<String>,
    pub(crate) redis_sharded: bool,
    pub(crate) log_format: LogFormat,
    pub(crate) log: Option<String>,
}

/// `Some(duration)`, or `None` for 0.
fn optional(secs: f64) -> Option<Duration> {
    (secs > 0.0).then(|| Duration::from_secs_f64(secs))
}

/// Most bytes read from a config file.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Reads and parses a config file.
fn read_file(path: &Path) -> Result<ServeArgs, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    (file.take(MAX_CONFIG_BYTES + 1))
        .read_to_string(&mut text)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(format!("{}: larger than 1 MiB", path.display()));
    }
    let parsed: ServeArgs =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, value) in [
        ("ping-interval", parsed.ping_interval),
        ("ping-timeout", parsed.ping_timeout),
        ("open-timeout", parsed.open_timeout),
        ("close-timeout", parsed.close_timeout),
        ("drain-timeout", parsed.drain_timeout),
        ("socketio-ping-interval", parsed.socketio_ping_interval),
        ("socketio-ping-timeout", parsed.socketio_ping_timeout),
        ("history-age", parsed.history_age),
        ("sse-keep-alive", parsed.sse_keep_alive),
        ("metrics-interval", parsed.metrics_interval),
    ] {
        if let Some(v) = value {
            seconds(&v.to_string()).map_err(|e| format!("{}: {name}: {e}", path.display()))?;
        }
    }
    if parsed.threads.is_some_and(|t| !(1..=1024).contains(&t)) {
        return Err(format!("{}: threads: 1 to 1024", path.display()));
    }
    Ok(parsed)
}

impl ServeArgs {
    /// Fills what the flags left unset from `file`.
    fn over(mut self, file: ServeArgs) -> ServeArgs {
        macro_rules! fill {
            ($($field:ident),* $(,)?) => {
                $(if self.$field.is_none() { self.$field = file.$field; })*
            };
        }
        fill!(
            bind,
            tls_cert,
            tls_key,
            threads,
            max_message_size,
            write_limit,
            ping_interval,
            ping_timeout,
            open_timeout,
            close_timeout,
            drain_timeout,
            socketio_ping_interval,
            socketio_ping_timeout,
            deflate,
            deflate_no_context_takeover,
            history_messages,
            history_age,
            queue_messages,
            queue_bytes,
            sse_keep_alive,
            metrics_interval,
            no_demo,
            no_echo,
            no_chat,
            no_socketio,
            no_sse,
            no_metrics,
            redis,
            redis_sharded,
            log_format,
            log,
        );
        if self.origin.is_empty() {
            self.origin = file.origin;
        }
        self
    }

    /// The settings: these flags over the config file they name (if any) over the defaults.
    pub(crate) fn resolve(self) -> Result<Settings, String> {
        let merged = match &self.config {
            Some(path) => {
                let file = read_file(path)?;
                self.over(file)
            }
            None => self,
        };
        merged.settings()
    }

    fn settings(self) -> Result<Settings, String> {
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let redis_sharded = self.redis_sharded.unwrap_or(false);
        if redis_sharded && self.redis.is_none() {
            return Err("--redis-sharded needs --redis".into());
        }
        let deflate = self.deflate.unwrap_or(false);
        let no_context_takeover = self.deflate_no_context_takeover.unwrap_or(false);
        if no_context_takeover && !deflate {
            return Err("--deflate-no-context-takeover needs --deflate".into());
        }
        let socketio_ping_interval = self.socketio_ping_interval.unwrap_or(25.0);
        let socketio_ping_timeout = self.socketio_ping_timeout.unwrap_or(20.0);
        if socketio_ping_interval <= 0.0 || socketio_ping_timeout <= 0.0 {
            return Err(
                "--socketio-ping-interval and --socketio-ping-timeout must be more than 0 \
                 (Socket.IO clients expect heartbeats)"
                    .into(),
            );
        }
        let history_messages = self.history_messages.unwrap_or(1000);
        let history_age = self.history_age.unwrap_or(120.0);
        // Across servers the history would miss the others' publications: none, so that a
        // client that comes back is told of a gap rather than missing messages silently.
        let history =
            (history_messages > 0 && history_age > 0.0 && self.redis.is_none()).then(|| {
                volley::hub::History::default()
                    .max_messages(history_messages)
                    .max_age(Duration::from_secs_f64(history_age))
            });
        Ok(Settings {
            bind: self
                .bind
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9001))),
            tls,
            origins: self.origin,
            threads: self.threads,
            max_message_size: self.max_message_size.unwrap_or(1 << 20),
            write_limit: self.write_limit.unwrap_or(32 * 1024),
            ping_interval: optional(self.ping_interval.unwrap_or(20.0)),
            ping_timeout: optional(self.ping_timeout.unwrap_or(20.0)),
            open_timeout: Duration::from_secs_f64(self.open_timeout.unwrap_or(10.0)),
            close_timeout: Duration::from_secs_f64(self.close_timeout.unwrap_or(10.0)),
            drain_timeout: Duration::from_secs_f64(self.drain_timeout.unwrap_or(10.0)),
            socketio_ping_interval: Duration::from_secs_f64(socketio_ping_interval),
            socketio_ping_timeout: Duration::from_secs_f64(socketio_ping_timeout),
            deflate: deflate
                .then(|| volley::DeflateConfig::default().no_context_takeover(no_context_takeover)),
            history,
            queue: volley::QueueLimits::default()
                .max_messages(self.queue_messages.unwrap_or(1024))
                .max_bytes(self.queue_bytes.unwrap_or(1 << 20)),
            sse_keep_alive: optional(self.sse_keep_alive.unwrap_or(15.0)),
            metrics_interval: optional(self.metrics_interval.unwrap_or(1.0)),
            demo: !self.no_demo.unwrap_or(false),
            echo: !self.no_echo.unwrap_or(false),
            chat: !self.no_chat.unwrap_or(false),
            socketio: !self.no_socketio.unwrap_or(false),
            sse: !self.no_sse.unwrap_or(false),
            metrics: !self.no_metrics.unwrap_or(false),
            redis: self.redis,
            redis_sharded,
            log_format: self.log_format.unwrap_or_default(),
            log: self.log,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<ServeArgs, toml::de::Error> {
        toml::from_str(toml)
    }

    #[test]
    fn the_example_config_parses_and_says_what_the_defaults_are() {
        let example = include_str!("../../../volley.toml");
        let file = parse(example).expect("volley.toml parses");
        let settings = ServeArgs::default().over(file).settings().expect("valid");
        let defaults = ServeArgs::default().settings().expect("valid");
        // The example spells out the defaults, so that reading it tells what they are.
        assert_eq!(format!("{settings:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn flags_override_the_file_and_the_file_the_defaults() {
        let file = parse(
            "bind = \"127.0.0.1:1234\"\nno-sse = true\nhistory-messages = 5\norigin = [\"https://a.example\"]\nlog-format = \"json\"",
        )
        .unwrap();
        let flags = ServeArgs {
            no_sse: Some(false),
            history_age: Some(3.0),
            ..ServeArgs::default()
        };
        let s = flags.over(file).settings().unwrap();
        assert_eq!(s.bind.port(), 1234);
        assert!(s.sse, "the flag wins");
        let history = s.history.unwrap();
        assert_eq!(history.max_messages, 5);
        assert_eq!(history.max_age, Duration::from_secs(3));
        assert_eq!(s.origins, ["https://a.example"]);
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_files_are_refused_with_the_key_at_fault() {
        assert!(
            parse("no-such-key = 1")
                .unwrap_err()
                .to_string()
                .contains("no-such-key")
        );
        assert!(parse("bind = 5").is_err());
        assert!(parse("config = \"x\"").is_err(), "no config in a config");
        let s = ServeArgs {
            tls_cert: Some("a".into()),
            ..ServeArgs::default()
        };
        assert!(s.settings().is_err());
        let dir = std::env::temp_dir().join(format!("volley-settings-{}", std::process::id()));
        std::fs::write(&dir, "ping-interval = -1").unwrap();
        let err = read_file(&dir).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(err.contains("ping-interval"), "{err}");
    }
}
