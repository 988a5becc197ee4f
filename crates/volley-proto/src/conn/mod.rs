//! The connection state machine: bytes in, messages and bytes out.
//!
//! [`Connection`] holds both directions of one WebSocket connection. [`Connection::split`] turns it
//! into a [`RecvHalf`] and a [`SendHalf`] that can be used apart (on two threads, or with the
//! sender behind a lock the receiver does not take while it parses and inflates); the receive half
//! then hands what the peer's frames require of the sender (pongs, close frames, state changes) to
//! the send half as [`Reply`]s. [`Connection::join`] puts the halves back together.

use std::io::IoSlice;

use bytes::{Bytes, BytesMut};

use crate::close::CloseFrame;
use crate::config::{ProtocolConfig, Role};
use crate::deflate::DeflateParams;
use crate::error::{ProtocolError, SendError};
use crate::message::Message;

mod recv;
mod send;

pub use recv::RecvHalf;
pub use send::SendHalf;

/// RSV1 in [`FrameHeader::rsv`](crate::frame::FrameHeader::rsv): set on the first frame of a
/// compressed message.
const RSV1: u8 = 0b100;

/// Where the close handshake stands (RFC 6455 §7).
///
/// ```text
///             send close                     receive close
///   Open ─────────────────▶ CloseSent ─────────────────────▶ Closed
///     │                                                        ▲
///     │ receive close (reply queued when the close is polled)  │
///     └────────────────────────────────────────────────────────┘
///   Open / CloseSent ── protocol violation (close 1002/1007/1009 queued if none was sent) ──▶ Failed
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// This endpoint sent a close frame and waits for the peer's; incoming messages are still delivered.
    CloseSent,
    /// Both close frames were exchanged. The server closes the transport now; a client waits briefly
    /// for the server to do so.
    Closed,
    /// The peer violated the protocol (or a limit). A close frame with the reason is queued when
    /// none had been sent; the transport should be closed once it is written.
    Failed,
}

/// Something the receive half needs the send half to do, handed over by
/// [`RecvHalf::poll_reply`] and applied with [`SendHalf::handle_reply`].
///
/// A pong for a ping, the echo of the peer's close frame, or the close frame that reports a
/// protocol violation, together with the state change that goes with the last two. Opaque: it is
/// only meant to be passed on, in the order it was polled.
#[derive(Debug)]
#[must_use = "a reply does nothing until it is passed to SendHalf::handle_reply"]
pub struct Reply(ReplyKind);

#[derive(Debug)]
enum ReplyKind {
    /// Answer a ping while `Open`.
    Pong(Bytes),
    /// The peer's close frame: echo it while `Open`, then the state is `Closed`.
    Close(Option<CloseFrame>),
    /// A protocol violation: send a close frame with its code while `Open`, then the state is
    /// `Failed`.
    Failure(ProtocolError),
}

/// Where the receive half's replies go: straight into the send half (an unsplit [`Connection`],
/// without allocating) or into the receive half's queue (split).
trait Replies {
    /// A ping arrived with `payload`.
    fn answer_ping(&mut self, payload: &Bytes);
    /// The peer's close frame arrived (and every message before it was polled).
    fn answer_close(&mut self, frame: Option<&CloseFrame>);
    /// The peer violated the protocol (and every message before it was polled).
    fn answer_failure(&mut self, err: &ProtocolError);
}

/// One WebSocket connection after the opening handshake, without any I/O.
///
/// Feed received bytes to [`handle_read`](Self::handle_read), queue outgoing messages with
/// [`send`](Self::send) and [`close`](Self::close). After every input, drain
/// [`poll_event`](Self::poll_event) (messages for the application) and
/// [`poll_transmit`](Self::poll_transmit) (bytes to write, in order) until both return `None`.
///
/// Pings are answered and close frames echoed automatically; both still surface as events.
/// No input can make it panic, and every limit is checked before memory is committed for it.
///
/// It is a [`RecvHalf`] and a [`SendHalf`] side by side; [`split`](Self::split) separates them,
/// for drivers that receive and send on different threads.
#[derive(Debug)]
pub struct Connection {
    recv: RecvHalf,
    send: SendHalf,
}

impl Connection {
    /// A connection in the `Open` state, as after a successful opening handshake without
    /// extensions.
    pub fn new(role: Role, config: ProtocolConfig) -> Self {
        Self::with_deflate(role, config, None)
    }

    /// A connection in the `Open` state with permessage-deflate, when `deflate` holds the
    /// parameters the handshake agreed on ([`UpgradeRequest::negotiate_deflate`] on a server,
    /// [`UpgradeResponse::deflate`] on a client).
    ///
    /// Text and binary messages of at least [`DeflateConfig::threshold`](crate::DeflateConfig::threshold) bytes (from
    /// `config.deflate`, else the default) are then sent compressed, and compressed messages from
    /// the peer are inflated, with the max message size applied to the inflated size.
    ///
    /// [`UpgradeRequest::negotiate_deflate`]: crate::handshake::UpgradeRequest::negotiate_deflate
    /// [`UpgradeResponse::deflate`]: crate::handshake::UpgradeResponse::deflate
    pub fn with_deflate(
        role: Role,
        config: ProtocolConfig,
        deflate: Option<DeflateParams>,
    ) -> Self {
        let send = SendHalf::new(role, &config, deflate);
        Self {
            recv: RecvHalf::new(role, config, deflate),
            send,
        }
    }

    /// Separates the receiving and the sending half, to be used apart (see [`RecvHalf`] for the
    /// contract between them). Nothing is lost: what was received and not yet polled stays in
    /// the receive half, what was queued and not yet written in the send half.
    pub fn split(self) -> (RecvHalf, SendHalf) {
        (self.recv, self.send)
    }

    /// Puts the halves of one connection back together, applying the replies the receive half
    /// still holds. The halves must come from the same [`split`](Self::split): joining halves of
    /// two connections is not detected, and the result would answer one peer's frames on the
    /// other's stream.
    pub fn join(mut recv: RecvHalf, mut send: SendHalf) -> Self {
        while let Some(reply) = recv.poll_reply() {
            send.handle_reply(reply);
        }
        Self { recv, send }
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.send.deflate()
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.send.role()
    }

    /// The largest message accepted ([`ProtocolConfig::max_message_size`]), in bytes (inflated bytes
    /// for compressed messages).
    pub fn max_message_size(&self) -> usize {
        self.recv.max_message_size()
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.send.state()
    }

    /// Whether no more input is expected: the close handshake completed or the connection failed
    /// (or will fail once the messages received before the violation are polled).
    pub fn is_terminated(&self) -> bool {
        self.recv.is_terminated()
    }

    /// Processes bytes received from the peer.
    ///
    /// On a protocol violation it returns the error, ignores all further input, and fails the
    /// connection: it moves to [`State::Failed`] and queues a close frame with the matching code
    /// (unless one was sent already). If messages received before the violation are still queued,
    /// the failure waits until [`poll_event`](Self::poll_event) has returned them all, so that
    /// the application's replies to them are sent before the close frame (as Autobahn's strict
    /// cases 3.x–5.x expect). Input after the connection terminated is ignored.
    pub fn handle_read(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        self.recv.handle_read_with(data, &mut self.send)
    }

    /// The receive buffer, for drivers that read straight into it; call
    /// [`handle_buffered`](Self::handle_buffered) after appending.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        self.recv.read_buffer()
    }

    /// Processes bytes appended to [`read_buffer`](Self::read_buffer); same contract as
    /// [`handle_read`](Self::handle_read).
    pub fn handle_buffered(&mut self) -> Result<(), ProtocolError> {
        self.recv.handle_buffered_with(&mut self.send)
    }

    /// The next message or control frame received, in arrival order.
    ///
    /// Once it returns `None`, a pending protocol failure takes effect (see
    /// [`handle_read`](Self::handle_read)): drain [`poll_transmit`](Self::poll_transmit) next.
    ///
    /// A close frame received behind text or binary messages not yet polled takes effect (its
    /// reply is queued and the state becomes `Closed`) only when this returns it, after those
    /// messages: the application can still send replies to them first.
    pub fn poll_event(&mut self) -> Option<Message> {
        self.recv.poll_event_with(&mut self.send)
    }

    /// The next bytes to write to the transport, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.send.poll_transmit()
    }

    /// The bytes waiting to be written, without taking them: fills `dst` with them in order and
    /// returns how many slices it filled. For vectored writes straight from the connection's
    /// queue; after writing `n` bytes, call [`advance_transmit`](Self::advance_transmit)`(n)`.
    /// An alternative to [`poll_transmit`](Self::poll_transmit); the two can be mixed.
    pub fn transmit_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.send.transmit_slices(dst)
    }

    /// Drops the first `n` bytes of those waiting to be written (see
    /// [`transmit_slices`](Self::transmit_slices)). `n` larger than
    /// [`pending_transmit`](Self::pending_transmit) drops them all.
    pub fn advance_transmit(&mut self, n: usize) {
        self.send.advance_transmit(n);
    }

    /// How many bytes wait in [`poll_transmit`](Self::poll_transmit).
    pub fn pending_transmit(&self) -> usize {
        self.send.pending_transmit()
    }

    /// How many more bytes the frame being received needs before it can be handed out, when its
    /// payload is collected in the receive buffer (0 otherwise). Drivers reading straight into
    /// [`read_buffer`](Self::read_buffer) can reserve that much, so that one read completes it.
    pub fn read_hint(&self) -> usize {
        self.recv.read_hint()
    }

    /// Whether the receive buffer holds no bytes and no capacity: a driver that finds it so can
    /// read into scratch space of its own and pass the bytes to
    /// [`handle_read`](Self::handle_read), so that an idle connection keeps no read buffer.
    pub fn read_buffer_released(&self) -> bool {
        self.recv.read_buffer_released()
    }

    /// Frees the memory of buffers and queues that are empty (the receive buffer, the output
    /// buffer, the event and transmit queues); call it when the connection goes idle. Buffers
    /// holding bytes are kept. Returns whether anything was freed.
    pub fn release_idle_buffers(&mut self) -> bool {
        let recv = self.recv.release_idle_buffers();
        let send = self.send.release_idle_buffers();
        recv || send
    }

    /// Queues a message. Text and binary messages longer than the configured fragment size are
    /// split into frames; `Message::Close` is the same as [`close`](Self::close).
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        self.send.send(message)
    }

    /// Queues a message encoded once for many connections: the prepared frame's [`Bytes`] are
    /// queued as they are, shared with every other connection it is sent to.
    ///
    /// Same contract as [`send`](Self::send): only while the state is `Open`, else
    /// [`SendError::Closed`]. A client connection (which must mask) or one whose
    /// `fragment_size` is smaller than the payload encodes the message like `send` instead
    /// (compressing it if permessage-deflate is on). Otherwise the frame goes out uncompressed
    /// even with permessage-deflate, which RFC 7692 allows (RSV1 clear).
    pub fn send_prepared(
        &mut self,
        prepared: &crate::prepared::PreparedMessage,
    ) -> Result<(), SendError> {
        self.send.send_prepared(prepared)
    }

    /// Starts the close handshake with `frame` (or an empty close frame for `None`).
    ///
    /// Does nothing if a close frame was already sent. The reason must fit in a control frame
    /// (123 bytes) and the code must be one that may be sent ([`CloseCode::is_sendable`]).
    ///
    /// [`CloseCode::is_sendable`]: crate::CloseCode::is_sendable
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        self.send.close(frame)
    }
}
