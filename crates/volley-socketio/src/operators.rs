//! Broadcast operators: `to`, `except`, `local`, `volatile`, `timeout`.

use std::time::Duration;

use crate::adapter::{AckResponse, BoxFuture, BroadcastOptions};
use crate::socket::{EmitError, event_packet};
use crate::util::IntoRooms;
use crate::{Namespace, Payload, Socket};

/// A set of target sockets of one namespace, built with chained operators, then acted on:
/// `ns.to("room").except("muted").emit("news", json!("hi"))`.
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

    /// Sends event `event` to the targeted sockets; the packet is encoded once.
    pub fn emit(&self, event: &str, payload: impl Into<Payload>) -> Result<(), EmitError> {
        let packet = event_packet(self.ns.name(), event, payload.into(), None)?;
        self.ns.adapter().broadcast(&packet, &self.opts);
        Ok(())
    }

    /// Sends event `event` to the targeted sockets asking each for an acknowledgement; the
    /// returned future resolves with one [`AckResponse`] per targeted socket once all have
    /// answered or the timeout (see [`timeout`](Self::timeout); the server's ack timeout by
    /// default) has passed. The packet is sent before this returns. Dropping the future forgets
    /// the answers (not cancel-safe in that sense).
    pub fn emit_with_ack(
        &self,
        event: &str,
        payload: impl Into<Payload>,
    ) -> Result<BoxFuture<'static, Vec<AckResponse>>, EmitError> {
        let id = self.ns.next_ack_id();
        let packet = event_packet(self.ns.name(), event, payload.into(), Some(id))?;
        Ok(self
            .ns
            .adapter()
            .broadcast_with_ack(&packet, &self.opts, self.ns.default_ack_timeout()))
    }

    /// The targeted sockets that are connected to this server. Cancel-safe.
    pub async fn fetch_sockets(&self) -> Vec<Socket> {
        let ids = self.ns.adapter().fetch_sockets(&self.opts).await;
        ids.iter().filter_map(|id| self.ns.get_socket(id)).collect()
    }

    /// Makes the targeted sockets join `rooms`.
    pub fn sockets_join(&self, rooms: impl IntoRooms) {
        self.ns
            .adapter()
            .add_sockets(&self.opts, &rooms.into_rooms());
    }

    /// Makes the targeted sockets leave `rooms`.
    pub fn sockets_leave(&self, rooms: impl IntoRooms) {
        self.ns
            .adapter()
            .del_sockets(&self.opts, &rooms.into_rooms());
    }

    /// Disconnects the targeted sockets (closing their connections when `close`).
    pub fn disconnect_sockets(&self, close: bool) {
        self.ns.adapter().disconnect_sockets(&self.opts, close);
    }
}
