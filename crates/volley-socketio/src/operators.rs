//! Broadcast operators: `to`, `except`, `local`, `volatile`, `timeout`, and the sockets
//! [`fetch_sockets`](BroadcastOperator::fetch_sockets) returns.

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use crate::adapter::{AckResponse, AdapterError, BoxFuture, BroadcastOptions, SocketInfo};
use crate::socket::{EmitError, event_packet};
use crate::util::IntoRooms;
use crate::{Namespace, Socket};

/// A set of target sockets of one namespace, built with chained operators, then acted on:
/// `ns.to("room").except("muted").emit("news", json!("hi"))`.
///
/// With a multi-server adapter every action reaches the matching sockets of every server of the
/// cluster unless [`local`](Self::local) is set.
#[derive(Clone, Debug)]
#[must_use = "an operator does nothing until emit/fetch_sockets/sockets_join/... is called"]
pub struct BroadcastOperator {
    ns: Namespace,
    opts: BroadcastOptions,
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Namespace, opts: BroadcastOptions) -> Self {
        BroadcastOperator { ns, opts }
    }

    /// The options built so far (what an adapter receives).
    pub fn options(&self) -> &BroadcastOptions {
        &self.opts
    }

    /// Also targets the sockets in `rooms` (the union of every `to`).
    pub fn to(mut self, rooms: impl IntoRooms) -> Self {
        self.opts.rooms.extend(rooms.into_rooms());
        self
    }

    /// Same as [`to`](Self::to).
    pub fn in_(self, rooms: impl IntoRooms) -> Self {
        self.to(rooms)
    }

    /// Excludes the sockets in `rooms`.
    pub fn except(mut self, rooms: impl IntoRooms) -> Self {
        self.opts.except.extend(rooms.into_rooms());
        self
    }

    /// Only this server's sockets.
    pub fn local(mut self) -> Self {
        self.opts.flags.local = true;
        self
    }

    /// Marks the packet as droppable (see [`BroadcastFlags::volatile`](crate::BroadcastFlags::volatile)).
    pub fn volatile(mut self) -> Self {
        self.opts.flags.volatile = true;
        self
    }

    /// How long [`emit_with_ack`](Self::emit_with_ack) waits for the acknowledgements.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.opts.flags.timeout_ms = Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        self
    }

    /// Sends event `event` with `data` (any `Serialize` value, mapped as for
    /// [`Socket::emit`]) to the targeted sockets; the packet is encoded once. The local
    /// sockets have it queued when this returns; the other servers' copy is queued in call
    /// order ([`EmitError::Adapter`] when the adapter cannot take it; local delivery happened).
    pub fn emit(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        let packet = event_packet(self.ns.name(), event, &data, None)?;
        self.ns
            .adapter()
            .broadcast(&packet, &self.opts)
            .map_err(EmitError::Adapter)
    }

    /// Sends event `event` to the targeted sockets asking each for an acknowledgement; the
    /// returned future resolves with one [`AckResponse`] per targeted socket of every server
    /// once all have answered or the timeout (see [`timeout`](Self::timeout); the server's ack
    /// timeout by default) has passed ([`AckResponse::into_data`] makes typed data of each).
    /// The packet is sent before this returns. Dropping the future forgets the answers (not
    /// cancel-safe in that sense).
    pub fn emit_with_ack(
        &self,
        event: &str,
        data: impl Serialize,
    ) -> Result<BoxFuture<'static, Result<Vec<AckResponse>, AdapterError>>, EmitError> {
        let id = self.ns.next_ack_id();
        let packet = event_packet(self.ns.name(), event, &data, Some(id))?;
        Ok(self
            .ns
            .adapter()
            .broadcast_with_ack(&packet, &self.opts, self.ns.default_ack_timeout()))
    }

    /// The targeted sockets, on every server of the cluster (the local ones carry their
    /// [`Socket`]). Waits at most the adapter's request timeout for the other servers.
    /// Cancel-safe (dropping the future only gives up the answers).
    pub async fn fetch_sockets(&self) -> Result<Vec<RemoteSocket>, AdapterError> {
        let infos = self.ns.adapter().fetch_sockets(&self.opts).await?;
        Ok(infos
            .into_iter()
            .map(|info| RemoteSocket {
                local: self.ns.get_socket(&info.id),
                ns: self.ns.clone(),
                info,
            })
            .collect())
    }

    /// Makes the targeted sockets join `rooms`.
    pub fn sockets_join(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.ns
            .adapter()
            .add_sockets(&self.opts, &rooms.into_rooms())
    }

    /// Makes the targeted sockets leave `rooms`.
    pub fn sockets_leave(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.ns
            .adapter()
            .del_sockets(&self.opts, &rooms.into_rooms())
    }

    /// Disconnects the targeted sockets (closing their connections when `close`).
    pub fn disconnect_sockets(&self, close: bool) -> Result<(), AdapterError> {
        self.ns.adapter().disconnect_sockets(&self.opts, close)
    }
}

/// A socket returned by [`fetch_sockets`](BroadcastOperator::fetch_sockets): connected to this
/// server or to another one of the cluster (Node's `RemoteSocket`). Its actions go through the
/// adapter, so they work wherever the socket is.
#[derive(Clone, Debug)]
pub struct RemoteSocket {
    ns: Namespace,
    info: SocketInfo,
    local: Option<Socket>,
}

impl RemoteSocket {
    /// The socket id.
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// The handshake as Node serializes it (see [`Handshake::to_json`](crate::Handshake::to_json)).
    pub fn handshake(&self) -> &Value {
        &self.info.handshake
    }

    /// The rooms the socket was in when fetched.
    pub fn rooms(&self) -> &[String] {
        &self.info.rooms
    }

    /// Its shared data (Node's `socket.data`, see [`Socket::data_json`]).
    pub fn data(&self) -> &Value {
        &self.info.data
    }

    /// Everything fetched about the socket.
    pub fn info(&self) -> &SocketInfo {
        &self.info
    }

    /// The socket itself when it is connected to this server.
    pub fn local(&self) -> Option<&Socket> {
        self.local.as_ref()
    }

    fn target(&self) -> BroadcastOperator {
        self.ns.to(self.info.id.clone())
    }

    /// Sends it event `event` with `data` (through the adapter: it may be on another server).
    pub fn emit(&self, event: &str, data: impl Serialize) -> Result<(), EmitError> {
        self.target().emit(event, data)
    }

    /// Makes it join `rooms`.
    pub fn join(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.target().sockets_join(rooms)
    }

    /// Makes it leave `rooms`.
    pub fn leave(&self, rooms: impl IntoRooms) -> Result<(), AdapterError> {
        self.target().sockets_leave(rooms)
    }

    /// Disconnects it (closing its connection when `close`).
    pub fn disconnect(&self, close: bool) -> Result<(), AdapterError> {
        self.target().disconnect_sockets(close)
    }
}
