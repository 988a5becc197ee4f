//! IoT device auth and command push: devices connect with a token, the server keeps a registry
//! of connected devices, and an operator pushes commands to a device by id and gets its ack.
//!
//! ```text
//! cargo run -p volley --example iot                                   # server on 127.0.0.1:9004
//! cargo run -p volley --example iot -- device thermo-1 thermo-secret  # a simulated device
//!
//! # An operator (another terminal): push a command, list devices, kick one.
//! volley connect ws://127.0.0.1:9004/operator -H "Authorization: Bearer operator-secret"
//! > {"device": "thermo-1", "command": {"set_point": 21.5}}
//! < {"ack":{"applied":{"set_point":21.5},"ok":true},"device":"thermo-1","id":1}
//! > {"list": true}
//! > {"kick": "thermo-1"}
//!
//! # Be a device by hand: answer each {"id": N, "command": ...} with {"ack": N, "result": ...}.
//! volley connect ws://127.0.0.1:9004/device -H "Authorization: Bearer lamp-secret"
//! # A bad token is refused with 401 before any WebSocket exists.
//! volley connect ws://127.0.0.1:9004/device -H "Authorization: Bearer nope"
//! ```
//!
//! Authentication is the server's [`Policy::auth`] hook: it runs during the opening handshake,
//! answers 401 for a bad token, and puts the device id in the request's extensions, where the
//! connection handler finds it. Browsers cannot set headers on a WebSocket, so `?token=` in the
//! URL works too. The simulated device uses [`volley::reconnect`]: restart the server and watch
//! it come back (after a random delay, so that a fleet does not stampede).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderValue, Request, StatusCode, header};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use volley::reconnect::{Event, Reconnect};
use volley::{
    ClientBuilder, CloseCode, CloseFrame, CloseHandle, MaybeTlsStream, Message, Policy, Reject,
    Server, WebSocket,
};

/// Device ids and their tokens. A real deployment keeps hashed tokens in a database.
const DEVICES: &[(&str, &str)] = &[("thermo-1", "thermo-secret"), ("lamp-1", "lamp-secret")];
/// The operator's token.
const OPERATOR_TOKEN: &str = "operator-secret";
/// How long an operator waits for a device's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["device", id, token, rest @ ..] => {
            let url = rest
                .first()
                .copied()
                .unwrap_or("ws://127.0.0.1:9004/device");
            run_device(url, id, token).await;
            Ok(())
        }
        [] | [_] => {
            let addr = args.first().map_or("127.0.0.1:9004", String::as_str);
            let server = Server::bind(addr).await?;
            println!(
                "IoT server on ws://{}/device and /operator",
                server.local_addr()?
            );
            serve(server).await
        }
        _ => {
            eprintln!("usage: iot [ADDR] | iot device ID TOKEN [URL]");
            std::process::exit(2);
        }
    }
}

/// Who a connection is, as decided by the auth hook.
#[derive(Debug, Clone)]
enum Peer {
    Device(String),
    Operator,
}

/// The handshake policy: `/device` needs a device token, `/operator` the operator token.
pub(crate) fn policy() -> Policy {
    Policy::default().auth(|mut request: Request<()>| async move {
        let token = bearer_token(&request);
        let peer = match request.uri().path() {
            "/device" => DEVICES
                .iter()
                .find(|(_, t)| Some(*t) == token.as_deref())
                .map(|(id, _)| Peer::Device((*id).to_owned())),
            "/operator" => (token.as_deref() == Some(OPERATOR_TOKEN)).then_some(Peer::Operator),
            _ => return Err(Reject::new(StatusCode::NOT_FOUND, "no such endpoint")),
        };
        match peer {
            Some(peer) => {
                request.extensions_mut().insert(peer);
                Ok(request)
            }
            None => Err(
                Reject::new(StatusCode::UNAUTHORIZED, "missing or bad token")
                    .header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")),
            ),
        }
    })
}

/// The token from `Authorization: Bearer …`, or from `?token=…`.
fn bearer_token(request: &Request<()>) -> Option<String> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    from_header.or_else(|| {
        request
            .uri()
            .query()?
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_owned)
    })
}

/// A connected device: where its commands go, and how to close it.
struct Device {
    outbox: mpsc::Sender<String>,
    close: CloseHandle,
    connection: u64,
    since: Instant,
}

#[derive(Default)]
struct State {
    devices: HashMap<String, Device>,
    /// Commands waiting for their ack, by command id.
    pending: HashMap<u64, oneshot::Sender<Value>>,
    next_command: u64,
    next_connection: u64,
}

/// The registry of connected devices and pending commands.
#[derive(Clone, Default)]
pub(crate) struct Registry {
    state: Arc<Mutex<State>>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a device connection, replacing (and closing) an older one with the same id.
    fn register(&self, id: &str, outbox: mpsc::Sender<String>, close: CloseHandle) -> u64 {
        let mut state = self.lock();
        state.next_connection += 1;
        let connection = state.next_connection;
        let device = Device {
            outbox,
            close,
            connection,
            since: Instant::now(),
        };
        if let Some(old) = state.devices.insert(id.to_owned(), device) {
            tokio::spawn(async move {
                let frame = CloseFrame::new(CloseCode::from(4000), "replaced by a new connection");
                old.close.close(Some(frame)).await;
            });
        }
        connection
    }

    /// Forgets a device connection (unless a newer one replaced it).
    fn unregister(&self, id: &str, connection: u64) {
        let mut state = self.lock();
        if state
            .devices
            .get(id)
            .is_some_and(|d| d.connection == connection)
        {
            state.devices.remove(id);
        }
    }

    /// Queues `command` for device `id`; the receiver gets the device's ack.
    fn push(&self, id: &str, command: Value) -> Result<(u64, oneshot::Receiver<Value>), String> {
        let mut state = self.lock();
        let Some(device) = state.devices.get(id) else {
            return Err(format!("device {id} is not connected"));
        };
        let outbox = device.outbox.clone();
        state.next_command += 1;
        let command_id = state.next_command;
        let text = json!({ "id": command_id, "command": command }).to_string();
        // A device that has 16 commands in flight is not keeping up: refuse rather than queue.
        outbox
            .try_send(text)
            .map_err(|_| format!("device {id} is busy or going away"))?;
        let (ack_tx, ack_rx) = oneshot::channel();
        state.pending.insert(command_id, ack_tx);
        Ok((command_id, ack_rx))
    }

    /// Hands a device's ack to the operator waiting for it.
    fn ack(&self, command_id: u64, result: Value) {
        if let Some(waiting) = self.lock().pending.remove(&command_id) {
            let _ = waiting.send(result);
        }
    }

    fn forget(&self, command_id: u64) {
        self.lock().pending.remove(&command_id);
    }

    fn list(&self) -> Value {
        let state = self.lock();
        let mut devices: Vec<Value> = state
            .devices
            .iter()
            .map(|(id, d)| json!({ "id": id, "connected_s": d.since.elapsed().as_secs() }))
            .collect();
        devices.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        json!({ "devices": devices })
    }

    fn close_handle(&self, id: &str) -> Option<CloseHandle> {
        self.lock().devices.get(id).map(|d| d.close.clone())
    }
}

/// Runs the IoT server on `server`.
pub(crate) async fn serve(server: Server) -> std::io::Result<()> {
    let registry = Registry::default();
    server
        .policy(policy())
        .serve(move |ws, request| {
            let registry = registry.clone();
            async move {
                match request.extensions().get::<Peer>().cloned() {
                    Some(Peer::Device(id)) => device_session(ws, &id, &registry).await,
                    Some(Peer::Operator) => operator_session(ws, &registry).await,
                    // The auth hook always sets one; refuse anything else all the same.
                    None => {
                        let mut ws = ws;
                        let frame = CloseFrame::new(CloseCode::POLICY_VIOLATION, "who are you?");
                        let _ = ws.close(Some(frame)).await;
                    }
                }
            }
        })
        .await
}

/// A device's connection: commands go out through its outbox, acks come back.
async fn device_session(ws: WebSocket<MaybeTlsStream>, id: &str, registry: &Registry) {
    let close = ws.close_handle();
    let (mut tx, mut rx) = ws.split();
    let (outbox, mut commands) = mpsc::channel::<String>(16);
    let connection = registry.register(id, outbox, close);
    println!("device {id} connected");
    let writer = tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            if tx.send(command).await.is_err() {
                break;
            }
        }
    });
    while let Some(Ok(message)) = rx.recv().await {
        let Message::Text(text) = message else {
            continue;
        };
        match serde_json::from_str::<Value>(&text) {
            Ok(v) if v["ack"].is_u64() => {
                let result = v.get("result").cloned().unwrap_or(Value::Null);
                registry.ack(v["ack"].as_u64().unwrap_or_default(), result);
            }
            _ => println!("device {id} says: {text}"),
        }
    }
    registry.unregister(id, connection);
    writer.abort();
    println!("device {id} disconnected");
}

/// An operator's connection: one JSON request per message, one JSON answer each.
async fn operator_session(mut ws: WebSocket<MaybeTlsStream>, registry: &Registry) {
    while let Some(Ok(message)) = ws.recv().await {
        let Message::Text(text) = message else {
            continue;
        };
        let request: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let answer = if let (Some(device), Some(command)) =
            (request["device"].as_str(), request.get("command"))
        {
            push_command(registry, device, command.clone()).await
        } else if request["list"] == json!(true) {
            registry.list()
        } else if let Some(device) = request["kick"].as_str() {
            match registry.close_handle(device) {
                Some(handle) => {
                    handle
                        .close(Some(CloseFrame::new(
                            CloseCode::from(4001),
                            "kicked by operator",
                        )))
                        .await;
                    json!({ "kicked": device })
                }
                None => json!({ "error": format!("device {device} is not connected") }),
            }
        } else {
            json!({ "error": r#"send {"device": ID, "command": ...}, {"list": true} or {"kick": ID}"# })
        };
        if ws.send(answer.to_string()).await.is_err() {
            break;
        }
    }
}

/// Pushes `command` to `device` and waits for its ack.
async fn push_command(registry: &Registry, device: &str, command: Value) -> Value {
    let (id, ack) = match registry.push(device, command) {
        Ok(pushed) => pushed,
        Err(error) => return json!({ "device": device, "error": error }),
    };
    match tokio::time::timeout(ACK_TIMEOUT, ack).await {
        Ok(Ok(result)) => json!({ "id": id, "device": device, "ack": result }),
        Ok(Err(_)) | Err(_) => {
            registry.forget(id);
            json!({ "id": id, "device": device, "error": "no ack (device gone or too slow)" })
        }
    }
}

/// A simulated device: connects with its token, acks every command, reconnects when cut off.
pub(crate) async fn run_device(url: &str, id: &str, token: &str) {
    let Ok(auth) = HeaderValue::try_from(format!("Bearer {token}")) else {
        eprintln!("the token must be printable ASCII");
        return;
    };
    let client = ClientBuilder::new(url).header(header::AUTHORIZATION, auth);
    let mut device = Reconnect::new(client).start();
    while let Some(event) = device.next().await {
        match event {
            Event::Connected { .. } => println!("{id}: connected"),
            Event::Message(Message::Text(text)) => {
                let Ok(command) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                println!("{id}: command {}", command["command"]);
                let ack = json!({
                    "ack": command["id"],
                    "result": { "ok": true, "applied": command["command"] },
                });
                let _ = device.send(ack.to_string()).await;
            }
            Event::Disconnected { retry_in, .. } => {
                println!("{id}: disconnected, retrying in {retry_in:?}");
            }
            Event::ConnectFailed { error, retry_in } => {
                println!("{id}: cannot connect ({error}), retrying in {retry_in:?}");
            }
            _ => {}
        }
    }
}
