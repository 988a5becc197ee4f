//! The connection state machine: bytes in, messages and bytes out.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

use crate::close::{CloseCode, CloseFrame};
use crate::config::{Config, Role};
use crate::deflate::{DeflateParams, Deflater, Inflater};
use crate::error::{ProtocolError, SendError};
use crate::frame::{FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::Utf8Validator;

/// Payloads at least this long are queued for transmission as their own [`Bytes`] instead of
/// being copied next to their header (server role only: client payloads are masked in a copy).
const ZERO_COPY_MIN: usize = 1024;

/// RSV1 in [`FrameHeader::rsv`]: set on the first frame of a compressed message.
const RSV1: u8 = 0b100;

/// The most compressed bytes a message may take on the wire: DEFLATE can expand incompressible
/// data a little (5 bytes per 64 KiB stored block, plus a flush marker per frame the peer flushed),
/// so a message whose inflated size is exactly the limit must still fit.
fn compressed_wire_limit(max_message_size: usize) -> usize {
    max_message_size
        .saturating_add(max_message_size / 8)
        .saturating_add(1024)
}
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

/// A fragmented (or still arriving) message being reassembled.
#[derive(Debug)]
struct Assembly {
    text: bool,
    /// The first frame had RSV1 set: the payload is DEFLATE data, inflated into `buf`.
    compressed: bool,
    /// Payload bytes received on the wire so far (for a compressed message, before inflating).
    wire: u64,
    buf: BytesMut,
    utf8: Utf8Validator,
}

/// permessage-deflate state: the agreed parameters and one codec per direction.
#[derive(Debug)]
struct Deflate {
    params: DeflateParams,
    threshold: usize,
    deflater: Deflater,
    inflater: Inflater,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    remaining: u64,
    consumed: usize,
    /// A whole unfragmented, uncompressed message arriving in pieces: its payload stays in the
    /// receive buffer (unmasked and UTF-8-checked as it arrives, `consumed` bytes so far) and is
    /// handed out without a copy once complete.
    in_place: bool,
}

/// How the input ended, behind messages the application has not polled yet.
#[derive(Debug)]
enum PendingEnd {
    /// A protocol violation: the connection fails (close frame queued, state `Failed`).
    Failure(ProtocolError),
    /// The peer's close frame: its reply is queued, the state becomes `Closed`, and the
    /// application sees `Message::Close`, after it could still answer the messages before it.
    Close(Option<CloseFrame>),
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
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    rbuf: BytesMut,
    frame: Option<InFrame>,
    /// Boxed: only fragmented (or partially received) messages need it, and an idle connection
    /// should cost little.
    message: Option<Box<Assembly>>,
    events: VecDeque<Message>,
    out: VecDeque<Bytes>,
    out_buf: BytesMut,
    out_len: usize,
    /// The end of the input, found behind messages not yet polled (rare, so boxed: an idle
    /// connection should be small). It takes effect once they have been polled.
    pending_end: Option<Box<PendingEnd>>,
    /// permessage-deflate, when negotiated (boxed: most connections don't use it).
    deflate: Option<Box<Deflate>>,
    /// UTF-8 state of a text message received in place (see [`InFrame::in_place`]).
    in_place_utf8: Utf8Validator,
}

impl Connection {
    /// A connection in the `Open` state, as after a successful opening handshake without
    /// extensions.
    pub fn new(role: Role, config: Config) -> Self {
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
    pub fn with_deflate(role: Role, config: Config, deflate: Option<DeflateParams>) -> Self {
        let deflate = deflate.map(|params| {
            let prefs = config.deflate.clone().unwrap_or_default();
            let (local_nct, local_bits, remote_nct, remote_bits) = match role {
                Role::Server => (
                    params.server_no_context_takeover,
                    params.server_max_window_bits,
                    params.client_no_context_takeover,
                    params.client_max_window_bits,
                ),
                Role::Client => (
                    params.client_no_context_takeover,
                    params.client_max_window_bits,
                    params.server_no_context_takeover,
                    params.server_max_window_bits,
                ),
            };
            Box::new(Deflate {
                params,
                threshold: prefs.threshold,
                deflater: Deflater::new(local_bits.unwrap_or(15), prefs.level, local_nct),
                inflater: Inflater::new(remote_bits.unwrap_or(15), remote_nct),
            })
        });
        Self {
            role,
            config,
            state: State::Open,
            rbuf: BytesMut::new(),
            frame: None,
            message: None,
            events: VecDeque::new(),
            out: VecDeque::new(),
            out_buf: BytesMut::new(),
            out_len: 0,
            pending_end: None,
            deflate,
            in_place_utf8: Utf8Validator::new(),
        }
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.deflate.as_ref().map(|d| &d.params)
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Where the close handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether no more input is expected: the close handshake completed or the connection failed
    /// (or will fail once the messages received before the violation are polled).
    pub fn is_terminated(&self) -> bool {
        matches!(self.state, State::Closed | State::Failed) || self.pending_end.is_some()
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
        if self.is_terminated() {
            return Ok(());
        }
        self.rbuf.extend_from_slice(data);
        self.process()
    }

    /// The receive buffer, for drivers that read straight into it; call
    /// [`handle_buffered`](Self::handle_buffered) after appending.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Processes bytes appended to [`read_buffer`](Self::read_buffer); same contract as
    /// [`handle_read`](Self::handle_read).
    pub fn handle_buffered(&mut self) -> Result<(), ProtocolError> {
        if self.is_terminated() {
            self.rbuf.clear();
            return Ok(());
        }
        self.process()
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
        let event = self.events.pop_front();
        if event.is_none() {
            match self.pending_end.take().map(|end| *end) {
                Some(PendingEnd::Close(frame)) => {
                    self.on_close(frame);
                    return self.events.pop_front();
                }
                Some(PendingEnd::Failure(err)) => self.fail(&err),
                None => {}
            }
        }
        event
    }

    /// The next bytes to write to the transport, in order.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let bytes = match self.out.pop_front() {
            Some(b) => b,
            None if !self.out_buf.is_empty() => self.out_buf.split().freeze(),
            None => return None,
        };
        self.out_len -= bytes.len();
        Some(bytes)
    }

    /// The bytes waiting to be written, without taking them: fills `dst` with them in order and
    /// returns how many slices it filled. For vectored writes straight from the connection's
    /// queue; after writing `n` bytes, call [`advance_transmit`](Self::advance_transmit)`(n)`.
    /// An alternative to [`poll_transmit`](Self::poll_transmit); the two can be mixed.
    pub fn transmit_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let tail = (!self.out_buf.is_empty()).then_some(&self.out_buf[..]);
        let pieces = self.out.iter().map(|b| &b[..]).chain(tail);
        let mut filled = 0;
        for (slot, piece) in dst.iter_mut().zip(pieces) {
            *slot = IoSlice::new(piece);
            filled += 1;
        }
        filled
    }

    /// Drops the first `n` bytes of those waiting to be written (see
    /// [`transmit_slices`](Self::transmit_slices)). `n` larger than
    /// [`pending_transmit`](Self::pending_transmit) drops them all.
    pub fn advance_transmit(&mut self, n: usize) {
        let mut left = n.min(self.out_len);
        self.out_len -= left;
        while left > 0 {
            match self.out.front_mut() {
                Some(front) if front.len() <= left => {
                    left -= front.len();
                    self.out.pop_front();
                }
                Some(front) => {
                    front.advance(left);
                    left = 0;
                }
                None => {
                    self.out_buf.advance(left);
                    left = 0;
                }
            }
        }
    }

    /// How many bytes wait in [`poll_transmit`](Self::poll_transmit).
    pub fn pending_transmit(&self) -> usize {
        self.out_len
    }

    /// How many more bytes the frame being received needs before it can be handed out, when its
    /// payload is collected in the receive buffer (0 otherwise). Drivers reading straight into
    /// [`read_buffer`](Self::read_buffer) can reserve that much, so that one read completes it.
    pub fn read_hint(&self) -> usize {
        match &self.frame {
            Some(f) if f.in_place => {
                (f.header.payload_len as usize).saturating_sub(self.rbuf.len())
            }
            _ => 0,
        }
    }

    /// Whether the receive buffer holds no bytes and no capacity: a driver that finds it so can
    /// read into scratch space of its own and pass the bytes to
    /// [`handle_read`](Self::handle_read), so that an idle connection keeps no read buffer.
    pub fn read_buffer_released(&self) -> bool {
        self.rbuf.capacity() == 0
    }

    /// Frees the memory of buffers and queues that are empty (the receive buffer, the output
    /// buffer, the event and transmit queues); call it when the connection goes idle. Buffers
    /// holding bytes are kept. Returns whether anything was freed.
    pub fn release_idle_buffers(&mut self) -> bool {
        let mut freed = false;
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
            freed = true;
        }
        if self.out_buf.is_empty() && self.out_buf.capacity() > 0 {
            self.out_buf = BytesMut::new();
            freed = true;
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
            freed = true;
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
            freed = true;
        }
        freed
    }

    /// Queues a message. Text and binary messages longer than the configured fragment size are
    /// split into frames; `Message::Close` is the same as [`close`](Self::close).
    pub fn send(&mut self, message: Message) -> Result<(), SendError> {
        match message {
            Message::Text(text) => self.send_data(OpCode::Text, text.into_bytes()),
            Message::Binary(data) => self.send_data(OpCode::Binary, data),
            Message::Ping(data) => self.send_control(OpCode::Ping, data),
            Message::Pong(data) => self.send_control(OpCode::Pong, data),
            Message::Close(frame) => self.close(frame),
        }
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
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let fits = self
            .config
            .fragment_size
            .is_none_or(|max| prepared.payload_len() <= max);
        if self.role == Role::Client || !fits {
            return self.send(prepared.to_message());
        }
        // Everything in `out` goes before `out_buf`: move what `out_buf` holds first.
        if !self.out_buf.is_empty() {
            let head = self.out_buf.split().freeze();
            self.out.push_back(head);
        }
        self.out_len += prepared.frame().len();
        self.out.push_back(prepared.frame().clone());
        Ok(())
    }

    /// Starts the close handshake with `frame` (or an empty close frame for `None`).
    ///
    /// Does nothing if a close frame was already sent. The reason must fit in a control frame
    /// (123 bytes) and the code must be one that may be sent ([`CloseCode::is_sendable`]).
    pub fn close(&mut self, frame: Option<CloseFrame>) -> Result<(), SendError> {
        if self.state != State::Open {
            return Ok(());
        }
        if let Some(f) = &frame {
            if !f.code.is_sendable() {
                return Err(SendError::InvalidCloseCode(f.code.0));
            }
            if f.reason.len() > 123 {
                return Err(SendError::ControlFrameTooLong(2 + f.reason.len()));
            }
        }
        self.queue_close(frame.as_ref());
        self.state = State::CloseSent;
        if let Some(d) = &mut self.deflate {
            // No data message can follow our close frame.
            d.deflater.release();
        }
        Ok(())
    }

    fn send_data(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        let (payload, rsv) = match &mut self.deflate {
            Some(d) if payload.len() >= d.threshold => {
                match d
                    .deflater
                    .compress(&payload)
                    .map_err(|_| SendError::Compression)?
                {
                    Some(compressed) => (Bytes::from(compressed), RSV1),
                    None => (payload, 0),
                }
            }
            _ => (payload, 0),
        };
        let fragment = self.config.fragment_size.unwrap_or(usize::MAX).max(1);
        if payload.len() <= fragment {
            self.queue_frame_rsv(true, rsv, opcode, payload);
            return Ok(());
        }
        let mut rest = payload;
        let mut opcode = opcode;
        let mut rsv = rsv;
        while rest.len() > fragment {
            let head = rest.split_to(fragment);
            self.queue_frame_rsv(false, rsv, opcode, head);
            opcode = OpCode::Continuation;
            rsv = 0;
        }
        self.queue_frame_rsv(true, rsv, opcode, rest);
        Ok(())
    }

    fn send_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), SendError> {
        if self.state != State::Open {
            return Err(SendError::Closed);
        }
        if payload.len() > 125 {
            return Err(SendError::ControlFrameTooLong(payload.len()));
        }
        self.queue_frame(true, opcode, payload);
        Ok(())
    }

    fn queue_close(&mut self, frame: Option<&CloseFrame>) {
        let mut payload = BytesMut::new();
        if let Some(f) = frame {
            payload.extend_from_slice(&f.code.0.to_be_bytes());
            payload.extend_from_slice(f.reason.as_bytes());
        }
        self.queue_frame(true, OpCode::Close, payload.freeze());
    }

    fn queue_frame(&mut self, fin: bool, opcode: OpCode, payload: Bytes) {
        self.queue_frame_rsv(fin, 0, opcode, payload);
    }

    fn queue_frame_rsv(&mut self, fin: bool, rsv: u8, opcode: OpCode, payload: Bytes) {
        let mask = match self.role {
            Role::Client => Some(rand::random::<[u8; 4]>()),
            Role::Server => None,
        };
        let header = FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len: payload.len() as u64,
        };
        self.out_len += header.encoded_len() + payload.len();
        header.encode(&mut self.out_buf);
        if let Some(key) = mask {
            let start = self.out_buf.len();
            self.out_buf.extend_from_slice(&payload);
            apply_mask(&mut self.out_buf[start..], key, 0);
        } else if payload.len() < ZERO_COPY_MIN {
            self.out_buf.extend_from_slice(&payload);
        } else {
            let head = self.out_buf.split().freeze();
            self.out.push_back(head);
            self.out.push_back(payload);
        }
    }

    fn process(&mut self) -> Result<(), ProtocolError> {
        match self.process_frames() {
            Ok(()) => Ok(()),
            Err(err) => {
                if self.events.is_empty() {
                    self.fail(&err);
                } else {
                    self.frame = None;
                    self.message = None;
                    self.rbuf.clear();
                    self.pending_end = Some(Box::new(PendingEnd::Failure(err.clone())));
                }
                Err(err)
            }
        }
    }

    fn fail(&mut self, err: &ProtocolError) {
        if self.state == State::Open {
            let mut reason = err.to_string();
            if reason.len() > 123 {
                let mut cut = 123;
                while !reason.is_char_boundary(cut) {
                    cut -= 1;
                }
                reason.truncate(cut);
            }
            self.queue_close(Some(&CloseFrame::new(err.close_code(), reason)));
        }
        self.state = State::Failed;
        self.frame = None;
        self.message = None;
        self.rbuf.clear();
        self.release_codecs();
    }

    /// Frees the zlib state of both directions: no data message will be sent or received again.
    fn release_codecs(&mut self) {
        if let Some(d) = &mut self.deflate {
            d.deflater.release();
            d.inflater.release();
        }
    }

    fn check_rsv(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv == 0 {
            return Ok(());
        }
        if self.deflate.is_some() && h.rsv == RSV1 {
            return match h.opcode {
                OpCode::Text | OpCode::Binary => Ok(()),
                OpCode::Continuation => Err(ProtocolError::CompressedContinuation),
                _ => Err(ProtocolError::CompressedControlFrame),
            };
        }
        Err(ProtocolError::ReservedBits(h.rsv))
    }

    fn check_header(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        self.check_rsv(h)?;
        match (self.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        match h.opcode {
            OpCode::Continuation if self.message.is_none() => {
                return Err(ProtocolError::UnexpectedContinuation);
            }
            OpCode::Text | OpCode::Binary if self.message.is_some() => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            let compressed = match (&self.message, h.opcode) {
                (Some(m), OpCode::Continuation) => m.compressed,
                _ => h.rsv & RSV1 != 0,
            };
            // On the wire; a compressed message's inflated size is checked while inflating.
            let max_message = if compressed {
                compressed_wire_limit(self.config.max_message_size)
            } else {
                self.config.max_message_size
            };
            let max_frame = self
                .config
                .max_frame_size
                .map_or(max_message, |f| f.min(max_message));
            if h.payload_len > max_frame as u64 {
                return Err(ProtocolError::FrameTooLarge {
                    size: h.payload_len,
                    max: max_frame,
                });
            }
            let have = self.message.as_ref().map_or(0, |m| m.wire);
            let total = have.saturating_add(h.payload_len);
            if total > max_message as u64 {
                return Err(ProtocolError::MessageTooLarge {
                    size: total,
                    max: max_message,
                });
            }
        }
        Ok(())
    }

    fn process_frames(&mut self) -> Result<(), ProtocolError> {
        loop {
            if self.is_terminated() {
                self.rbuf.clear();
                return Ok(());
            }
            let Some(frame) = self.frame.as_mut() else {
                let Some((header, header_len)) = FrameHeader::parse(&self.rbuf)? else {
                    return Ok(());
                };
                self.check_header(&header)?;
                self.rbuf.advance(header_len);
                let whole_message = header.fin
                    && header.rsv == 0
                    && matches!(header.opcode, OpCode::Text | OpCode::Binary)
                    && self.rbuf.len() as u64 >= header.payload_len;
                if whole_message {
                    // The common case: an unfragmented message already fully received. Hand out
                    // its bytes without copying them.
                    let mut payload = self.rbuf.split_to(header.payload_len as usize);
                    if let Some(key) = header.mask {
                        apply_mask(&mut payload, key, 0);
                    }
                    let payload = payload.freeze();
                    let message = if header.opcode == OpCode::Text {
                        simdutf8::basic::from_utf8(&payload)
                            .map_err(|_| ProtocolError::InvalidUtf8)?;
                        Message::Text(Utf8Bytes::from_validated(payload))
                    } else {
                        Message::Binary(payload)
                    };
                    self.events.push_back(message);
                    continue;
                }
                let in_place = header.fin
                    && header.rsv == 0
                    && matches!(header.opcode, OpCode::Text | OpCode::Binary);
                if in_place {
                    self.in_place_utf8.reset();
                } else if matches!(header.opcode, OpCode::Text | OpCode::Binary) {
                    self.message = Some(Box::new(Assembly {
                        text: header.opcode == OpCode::Text,
                        compressed: header.rsv & RSV1 != 0,
                        wire: 0,
                        buf: BytesMut::new(),
                        utf8: Utf8Validator::new(),
                    }));
                }
                self.frame = Some(InFrame {
                    header,
                    remaining: header.payload_len,
                    consumed: 0,
                    in_place,
                });
                continue;
            };

            if frame.header.opcode.is_control() {
                // At most 125 bytes: wait for all of it.
                let len = frame.remaining as usize;
                if self.rbuf.len() < len {
                    return Ok(());
                }
                let header = frame.header;
                self.frame = None;
                let mut payload = self.rbuf.split_to(len);
                if let Some(key) = header.mask {
                    apply_mask(&mut payload, key, 0);
                }
                self.on_control(header.opcode, payload.freeze())?;
                continue;
            }

            if frame.in_place {
                // Unmask and validate what arrived since the last call, where it lies.
                let total = frame.header.payload_len as usize;
                let upto = self.rbuf.len().min(total);
                if upto > frame.consumed {
                    let chunk = &mut self.rbuf[frame.consumed..upto];
                    if let Some(key) = frame.header.mask {
                        apply_mask(chunk, key, frame.consumed);
                    }
                    if frame.header.opcode == OpCode::Text {
                        self.in_place_utf8
                            .feed(chunk)
                            .map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                    frame.consumed = upto;
                    frame.remaining = (total - upto) as u64;
                }
                if upto < total {
                    return Ok(());
                }
                let text = frame.header.opcode == OpCode::Text;
                self.frame = None;
                let payload = self.rbuf.split_to(total).freeze();
                let message = if text {
                    if !self.in_place_utf8.is_complete() {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    Message::Text(Utf8Bytes::from_validated(payload))
                } else {
                    Message::Binary(payload)
                };
                self.events.push_back(message);
                continue;
            }

            // A data frame's payload, streamed: unmask, validate and append what has arrived, so
            // that invalid UTF-8 fails the connection at the first bad byte.
            let n = frame.remaining.min(self.rbuf.len() as u64) as usize;
            if n == 0 && frame.remaining > 0 {
                return Ok(());
            }
            let chunk = &mut self.rbuf[..n];
            if let Some(key) = frame.header.mask {
                apply_mask(chunk, key, frame.consumed);
            }
            frame.consumed += n;
            frame.remaining -= n as u64;
            let frame_done = frame.remaining == 0;
            let fin = frame.header.fin;
            let Some(message) = self.message.as_mut() else {
                // check_header guarantees a message for every data frame.
                return Err(ProtocolError::UnexpectedContinuation);
            };
            message.wire += n as u64;
            if message.compressed {
                let Some(deflate) = self.deflate.as_mut() else {
                    // check_header accepts RSV1 only with deflate negotiated.
                    return Err(ProtocolError::ReservedBits(RSV1));
                };
                let max = self.config.max_message_size;
                // Inflate what arrived; the sink sees at most 16 KiB at a time and stops the
                // inflater the moment the message crosses the limit.
                deflate
                    .inflater
                    .inflate(chunk, frame_done && fin, &mut |out: &[u8]| {
                        let size = message.buf.len() + out.len();
                        if size > max {
                            return Err(ProtocolError::MessageTooLarge {
                                size: size as u64,
                                max,
                            });
                        }
                        if message.text {
                            message
                                .utf8
                                .feed(out)
                                .map_err(|_| ProtocolError::InvalidUtf8)?;
                        }
                        message.buf.extend_from_slice(out);
                        Ok(())
                    })?;
            } else {
                if message.text {
                    message
                        .utf8
                        .feed(chunk)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                }
                message.buf.extend_from_slice(chunk);
            }
            self.rbuf.advance(n);
            if frame_done {
                self.frame = None;
                if fin {
                    self.finish_message()?;
                }
            }
        }
    }

    fn finish_message(&mut self) -> Result<(), ProtocolError> {
        let Some(message) = self.message.take() else {
            return Ok(());
        };
        if message.compressed {
            if let Some(d) = &mut self.deflate {
                d.inflater.end_message();
            }
        }
        let payload = message.buf.freeze();
        let event = if message.text {
            if !message.utf8.is_complete() {
                return Err(ProtocolError::InvalidUtf8);
            }
            Message::Text(Utf8Bytes::from_validated(payload))
        } else {
            Message::Binary(payload)
        };
        self.events.push_back(event);
        Ok(())
    }

    fn on_control(&mut self, opcode: OpCode, payload: Bytes) -> Result<(), ProtocolError> {
        match opcode {
            OpCode::Ping => {
                if self.state == State::Open {
                    self.queue_frame(true, OpCode::Pong, payload.clone());
                }
                self.events.push_back(Message::Ping(payload));
            }
            OpCode::Pong => self.events.push_back(Message::Pong(payload)),
            OpCode::Close => {
                let frame = parse_close_payload(payload)?;
                if self.events.iter().any(Message::is_data) {
                    self.pending_end = Some(Box::new(PendingEnd::Close(frame)));
                } else {
                    self.on_close(frame);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies a received close frame: echo it (RFC 6455 §5.5.1, as Python websockets and Node
    /// ws do; an empty close gets an empty reply) unless ours was sent, and surface it.
    fn on_close(&mut self, frame: Option<CloseFrame>) {
        if self.state == State::Open {
            self.queue_close(frame.as_ref());
        }
        self.state = State::Closed;
        self.message = None;
        self.release_codecs();
        self.events.push_back(Message::Close(frame));
    }
}

/// Parses and validates a received close frame's payload.
fn parse_close_payload(payload: Bytes) -> Result<Option<CloseFrame>, ProtocolError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(ProtocolError::InvalidClosePayload),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_sendable() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason = Utf8Bytes::try_from_bytes(payload.slice(2..))
                .map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}
