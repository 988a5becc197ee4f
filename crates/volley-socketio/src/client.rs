//! One Engine.IO session: decodes Socket.IO packets and multiplexes the namespace sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use volley_engineio::packet::Data;
use volley_engineio::{CloseReason, RequestInfo, SessionEvents, SessionSender};

use crate::packet::{Decoded, Limits, Packet, PacketType, PartialPacket, decode, decode_msgpack};
use crate::socket::DisconnectReason;
use crate::util::lock;
use crate::{Namespace, Socket, SocketIo};

/// What the sockets need from the handshake request.
pub(crate) struct RequestSnapshot {
    /// Shared with the client's sockets' [`Handshake`](crate::Handshake)s.
    pub(crate) uri: Arc<http::Uri>,
    pub(crate) headers: Arc<crate::HandshakeHeaders>,
    pub(crate) remote_addr: Option<SocketAddr>,
}

#[derive(Default)]
struct ClientState {
    /// namespace name -> socket
    /// The client's sockets, one per namespace (a list: clients join few namespaces).
    sockets: Vec<Socket>,
    /// Set when the session has ended: no socket may be added any more.
    closed: bool,
}

/// The part of a client its sockets share.
pub(crate) struct ClientShared {
    sender: SessionSender,
    request: RequestSnapshot,
    state: Mutex<ClientState>,
    /// CONNECTs waiting for their middlewares.
    pending_connects: AtomicUsize,
    parser: crate::Parser,
    /// The connect timeout's task, until a namespace is joined.
    connect_timer: Mutex<Option<tokio::task::AbortHandle>>,
}

/// The most CONNECTs of one client that may wait for middlewares at once; more are refused
/// with a CONNECT_ERROR (a client flooding CONNECTs cannot pile up tasks).
pub(crate) const MAX_PENDING_CONNECTS: usize = 16;

impl ClientShared {
    pub(crate) fn sender(&self) -> &SessionSender {
        &self.sender
    }

    /// The wire format of this server's packets.
    pub(crate) fn parser(&self) -> crate::Parser {
        self.parser
    }

    pub(crate) fn request(&self) -> &RequestSnapshot {
        &self.request
    }

    /// Whether a volatile packet may be queued now: the transport would write it at once
    /// (nothing waits before it), as Node's `transport.writable`.
    pub(crate) fn writable(&self) -> bool {
        self.sender.writable()
    }

    pub(crate) fn remove_socket(&self, socket: &Socket) {
        let mut state = lock(&self.state);
        state
            .sockets
            .retain(|s| !(s.nsp() == socket.nsp() && s.id() == socket.id()));
    }

    fn get(&self, nsp: &str) -> Option<Socket> {
        lock(&self.state)
            .sockets
            .iter()
            .find(|s| s.nsp() == nsp)
            .cloned()
    }

    fn is_empty(&self) -> bool {
        lock(&self.state).sockets.is_empty()
    }

    /// Disconnects every socket (DISCONNECT packets), then closes the session.
    pub(crate) fn disconnect_all(&self) {
        let sockets: Vec<Socket> = lock(&self.state).sockets.clone();
        for socket in sockets {
            socket.disconnect(false);
        }
        self.sender.close();
    }

    fn send(&self, packet: &Packet) {
        self.send_frames(packet, false);
    }

    /// Sends `packet` in a write of its own (with what was queued before it): see
    /// [`SessionSender::send_all_and_flush`].
    fn send_flushed(&self, packet: &Packet) {
        self.send_frames(packet, true);
    }

    fn send_frames(&self, packet: &Packet, flush: bool) {
        let frames = crate::socket::frames_of(packet, self.parser);
        let sent = if flush {
            self.sender.send_all_and_flush(frames)
        } else {
            self.sender.send_all(frames)
        };
        if let Err(e) = sent {
            tracing::debug!(sid = self.sender.id(), "socket.io: send failed: {e}");
        }
    }
}

/// Counts one CONNECT waiting for its middlewares, until dropped.
struct PendingConnect(Arc<ClientShared>);

impl Drop for PendingConnect {
    fn drop(&mut self) {
        self.0.pending_connects.fetch_sub(1, Ordering::AcqRel);
    }
}

fn reason_from(reason: Option<CloseReason>) -> DisconnectReason {
    match reason {
        Some(CloseReason::TransportError) => DisconnectReason::TransportError,
        Some(CloseReason::PingTimeout) => DisconnectReason::PingTimeout,
        Some(CloseReason::ClientClose) => DisconnectReason::ForcedClose,
        Some(CloseReason::ServerClose) => DisconnectReason::ForcedServerClose,
        Some(CloseReason::ParseError) => DisconnectReason::ParseError,
        _ => DisconnectReason::TransportClose,
    }
}

/// A new Engine.IO session: its client, as the session's events.
pub(crate) fn open(
    io: SocketIo,
    sender: SessionSender,
    req: RequestInfo,
) -> Box<dyn SessionEvents> {
    let shared = Arc::new(ClientShared {
        sender,
        request: RequestSnapshot {
            uri: Arc::new(req.uri),
            headers: Arc::new(crate::HandshakeHeaders::new(&req.headers)),
            remote_addr: req.remote_addr,
        },
        state: Mutex::new(ClientState::default()),
        pending_connects: AtomicUsize::new(0),
        parser: io.parser(),
        connect_timer: Mutex::new(None),
    });
    // Closed unless a namespace is joined in time (the task is aborted at the first join).
    let timeout = io.connect_timeout();
    let waiting = shared.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        if waiting.is_empty() {
            tracing::debug!(
                sid = waiting.sender.id(),
                "socket.io: no namespace joined in time"
            );
            waiting.sender.close();
        }
    });
    *lock(&shared.connect_timer) = Some(timer.abort_handle());
    Box::new(Client {
        io,
        shared,
        partial: None,
        refused: None,
    })
}

/// One Engine.IO session: decodes its Socket.IO packets.
struct Client {
    io: SocketIo,
    shared: Arc<ClientShared>,
    /// A binary packet waiting for its attachments.
    partial: Option<Box<PartialPacket>>,
    /// Why the client refused the connection (then closed), if it did.
    refused: Option<DisconnectReason>,
}

impl SessionEvents for Client {
    fn on_message(&mut self, data: Data) {
        if self.refused.is_some() {
            return;
        }
        let limits = self.io.limits_ref();
        match on_data(&self.io, &self.shared, &mut self.partial, limits, data) {
            Ok(()) => {}
            Err(Refusal::Invalid(e)) => {
                tracing::debug!(
                    sid = self.shared.sender.id(),
                    "socket.io: closing on invalid packet: {e}"
                );
                self.refused = Some(DisconnectReason::ParseError);
                self.shared.sender.close();
            }
            Err(Refusal::State(what)) => {
                tracing::debug!(
                    sid = self.shared.sender.id(),
                    "socket.io: closing on {what}"
                );
                self.refused = Some(DisconnectReason::ForcedServerClose);
                self.shared.sender.close();
            }
        }
    }

    fn on_close(&mut self, reason: CloseReason) {
        if let Some(timer) = lock(&self.shared.connect_timer).take() {
            timer.abort();
        }
        let reason = match self.refused.take() {
            Some(reason) => reason,
            None if self.io.is_closing() => DisconnectReason::ServerShuttingDown,
            None => reason_from(Some(reason)),
        };
        let sockets: Vec<Socket> = {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            std::mem::take(&mut state.sockets)
        };
        for socket in sockets {
            socket.on_close(reason);
        }
    }
}

/// Why a client's connection is closed on a packet it sent.
enum Refusal {
    /// Not a valid Socket.IO packet (Node's decoder throws; "parse error").
    Invalid(String),
    /// A valid packet that does not fit the client's state: Node's server closes the connection
    /// ("forced server close") on a CONNECT for a namespace already joined, on any other packet
    /// for a namespace not joined, and on a CONNECT_ERROR.
    State(&'static str),
}

fn on_data(
    io: &SocketIo,
    shared: &Arc<ClientShared>,
    partial: &mut Option<Box<PartialPacket>>,
    limits: &Limits,
    data: Data,
) -> Result<(), Refusal> {
    if io.parser() == crate::Parser::MsgPack {
        // One packet per binary message; a text message is not msgpack (Node's decoder throws).
        return match data {
            Data::Binary(bytes) => {
                let packet = decode_msgpack(&bytes).map_err(|e| Refusal::Invalid(e.to_string()))?;
                on_packet(io, shared, packet)
            }
            Data::Text(_) => Err(Refusal::Invalid(
                "a text message with the msgpack parser".into(),
            )),
        };
    }
    match data {
        Data::Text(text) => {
            if partial.is_some() {
                return Err(Refusal::Invalid(
                    "text packet while waiting for binary attachments".into(),
                ));
            }
            match decode(&text, limits).map_err(|e| Refusal::Invalid(e.to_string()))? {
                Decoded::Complete(packet) => on_packet(io, shared, packet)?,
                Decoded::Partial(p) => *partial = Some(Box::new(p)),
            }
        }
        Data::Binary(bytes) => {
            let Some(p) = partial.as_mut() else {
                return Err(Refusal::Invalid(
                    "binary attachment without a binary packet".into(),
                ));
            };
            if let Some(packet) = p.push(bytes) {
                *partial = None;
                on_packet(io, shared, packet)?;
            }
        }
    }
    Ok(())
}

fn on_packet(io: &SocketIo, shared: &Arc<ClientShared>, packet: Packet) -> Result<(), Refusal> {
    let joined = shared.get(&packet.nsp);
    match (packet.kind, &joined) {
        (PacketType::Connect, Some(_)) => {
            return Err(Refusal::State("a CONNECT for a namespace already joined"));
        }
        (PacketType::ConnectError, _) => return Err(Refusal::State("a CONNECT_ERROR")),
        (PacketType::Connect, None) => {}
        (_, None) => return Err(Refusal::State("a packet for a namespace not joined")),
        (_, Some(_)) => {}
    }
    match packet.kind {
        PacketType::Connect => {
            let io = io.clone();
            let shared = shared.clone();
            let Packet { nsp, data, .. } = packet;
            let auth = match data {
                Some(v @ Value::Object(_)) => v,
                _ => json!({}),
            };
            match io.lookup_namespace(&nsp, &auth) {
                None => shared.send(&Packet {
                    kind: PacketType::ConnectError,
                    nsp,
                    id: None,
                    data: Some(json!({ "message": "Invalid namespace" })),
                    attachments: Vec::new(),
                }),
                Some(ns) => {
                    // Connection state recovery: a CONNECT carrying the private session id and
                    // the last offset the client saw.
                    let restore = match (ns.recovery(), auth.get("pid"), auth.get("offset")) {
                        (Some(_), Some(Value::String(pid)), Some(Value::String(offset))) => {
                            Some((pid.clone(), offset.clone()))
                        }
                        _ => None,
                    };
                    let middlewares = ns.middlewares();
                    if restore.is_none() && middlewares.is_empty() {
                        let socket = Socket::new(ns.clone(), shared.clone(), auth, None);
                        finish_connect(&ns, &shared, socket);
                    } else if shared.pending_connects.fetch_add(1, Ordering::AcqRel)
                        >= MAX_PENDING_CONNECTS
                    {
                        shared.pending_connects.fetch_sub(1, Ordering::AcqRel);
                        shared.send(&Packet {
                            kind: PacketType::ConnectError,
                            nsp,
                            id: None,
                            data: Some(json!({ "message": "Too many pending connections" })),
                            attachments: Vec::new(),
                        });
                    } else {
                        tokio::spawn(async move {
                            let _pending = PendingConnect(shared.clone());
                            let restored = match restore {
                                Some((pid, offset)) => {
                                    match ns.adapter().restore_session(&pid, &offset).await {
                                        Ok(session) => session,
                                        Err(e) => {
                                            tracing::debug!(
                                                "socket.io: cannot restore a session: {e}"
                                            );
                                            None
                                        }
                                    }
                                }
                                None => None,
                            };
                            let socket =
                                Socket::new(ns.clone(), shared.clone(), auth.clone(), restored);
                            let skip = socket.recovered()
                                && ns.recovery().is_some_and(|r| r.skip_middlewares);
                            if !skip {
                                for mw in middlewares {
                                    if shared.sender.is_closed() {
                                        socket.abandon();
                                        return;
                                    }
                                    if let Err(e) = mw(socket.clone(), auth.clone()).await {
                                        socket.abandon();
                                        shared.send(&Packet {
                                            kind: PacketType::ConnectError,
                                            nsp: ns.name().to_owned(),
                                            id: None,
                                            data: Some(e.to_value()),
                                            attachments: Vec::new(),
                                        });
                                        return;
                                    }
                                }
                            }
                            if shared.sender.is_closed() {
                                socket.abandon();
                                return;
                            }
                            finish_connect(&ns, &shared, socket);
                        });
                    }
                }
            }
        }
        PacketType::Disconnect => {
            if let Some(socket) = joined {
                socket.on_close(DisconnectReason::ClientNamespaceDisconnect);
            }
        }
        PacketType::Event | PacketType::BinaryEvent => {
            if let Some(socket) = joined {
                socket.dispatch_event(packet);
            }
        }
        PacketType::Ack | PacketType::BinaryAck => {
            if let Some(socket) = joined {
                socket.dispatch_ack(packet);
            }
        }
        // Refused above.
        PacketType::ConnectError => {}
    }
    Ok(())
}

/// Registers the socket (unless the session has ended), replies `{"sid"}`, runs the connection
/// handlers.
fn finish_connect(ns: &Namespace, shared: &Arc<ClientShared>, socket: Socket) {
    let replaced = {
        let mut state = lock(&shared.state);
        if state.closed {
            drop(state);
            socket.abandon();
            return;
        }
        socket.set_connected();
        ns.insert_socket(&socket);
        match state.sockets.iter().position(|s| s.nsp() == ns.name()) {
            Some(i) => Some(std::mem::replace(&mut state.sockets[i], socket.clone())),
            None => {
                state.sockets.push(socket.clone());
                None
            }
        }
    };
    if let Some(timer) = lock(&shared.connect_timer).take() {
        timer.abort();
    }
    if let Some(old) = replaced {
        old.on_close(DisconnectReason::ClientNamespaceDisconnect);
    }
    if let Some(restored) = socket.take_restore() {
        // A recovered socket: its rooms back, then the packets it missed, then those the
        // adapter held back since the restore, before the CONNECT reply (the client buffers
        // events received before it, then emits them in order).
        socket.join(restored.session.rooms);
        let mut send = |missed: crate::recovery::MissedPacket| {
            // The CONNECT reply goes out in its own write, before what the connection handlers send (as
            // from Node's engine, which writes a packet at once when its transport is idle): a client
            // that handles one message per socket read (`ws.once("message")` on Node's `ws`) would lose
            // a packet that shares the reply's read.
            shared.send_flushed(&Packet {
                kind: if missed.attachments.is_empty() {
                    PacketType::Event
                } else {
                    PacketType::BinaryEvent
                },
                nsp: ns.name().to_owned(),
                id: None,
                data: Some(Value::Array(missed.data)),
                attachments: missed.attachments,
            });
        };
        for missed in restored.missed {
            send(missed);
        }
        ns.adapter().finish_restore(socket.id(), &mut send);
    }
    if let Some(pid) = socket.pid() {
        ns.adapter().open_session(socket.session(pid));
    }
    let data = match socket.pid() {
        Some(pid) => json!({ "sid": socket.id(), "pid": pid }),
        None => json!({ "sid": socket.id() }),
    };
    // The CONNECT reply goes out in its own write, before what the connection handlers send (as
    // from Node's engine, which writes a packet at once when its transport is idle): a client
    // that handles one message per socket read (`ws.once("message")` on Node's `ws`) would lose
    // a packet that shares the reply's read.
    shared.send_flushed(&Packet {
        kind: PacketType::Connect,
        nsp: ns.name().to_owned(),
        id: None,
        data: Some(data),
        attachments: Vec::new(),
    });
    ns.run_connection_handlers(&socket);
}
