//! The receive direction: frames parsed, unmasked, validated, reassembled and inflated into
//! messages.

use std::collections::VecDeque;

use bytes::{Buf, Bytes, BytesMut};

use super::{RSV1, Replies, Reply, ReplyKind};
use crate::close::{CloseCode, CloseFrame};
use crate::config::{ProtocolConfig, Role};
use crate::deflate::{DeflateParams, Inflater};
use crate::error::ProtocolError;
use crate::frame::{FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::message::{Message, Utf8Bytes};
use crate::utf8::Utf8Validator;

/// The most compressed bytes a message may take on the wire: DEFLATE can expand incompressible
/// data a little (5 bytes per 64 KiB stored block, plus a flush marker per frame the peer flushed),
/// so a message whose inflated size is exactly the limit must still fit.
fn compressed_wire_limit(max_message_size: usize) -> usize {
    max_message_size
        .saturating_add(max_message_size / 8)
        .saturating_add(1024)
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

/// permessage-deflate, receiving side: the agreed parameters and the peer's direction's codec.
#[derive(Debug)]
struct Inflate {
    params: DeflateParams,
    inflater: Inflater,
}

/// The frame whose payload is arriving.
#[derive(Debug, Clone, Copy)]
struct InFrame {
    header: FrameHeader,
    /// Payload bytes processed so far.
    consumed: usize,
}

impl InFrame {
    /// Payload bytes still to come.
    fn remaining(&self) -> u64 {
        self.header.payload_len.saturating_sub(self.consumed as u64)
    }
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

/// What only some connections need, boxed together so that an idle connection pays one pointer
/// for it.
#[derive(Debug, Default)]
struct Aside {
    /// The end of the input, found behind messages not yet polled. It takes effect once they have
    /// been polled.
    pending_end: Option<PendingEnd>,
    /// A split receive half's replies, waiting for [`RecvHalf::poll_reply`] (an unsplit
    /// [`Connection`](super::Connection) applies them as they are made and never queues any).
    replies: VecDeque<ReplyKind>,
}

impl Replies for VecDeque<ReplyKind> {
    fn answer_ping(&mut self, payload: &Bytes) {
        self.push_back(ReplyKind::Pong(payload.clone()));
    }

    fn answer_close(&mut self, frame: Option<&CloseFrame>) {
        self.push_back(ReplyKind::Close(frame.cloned()));
    }

    fn answer_failure(&mut self, err: &ProtocolError) {
        self.push_back(ReplyKind::Failure(err.clone()));
    }
}

/// The receiving half of a connection: turns the peer's bytes into messages.
///
/// It comes from [`Connection::split`](super::Connection::split), together with the
/// [`SendHalf`](super::SendHalf) it belongs with, and can be used without it (on another thread,
/// without the lock that guards the sender): parsing, unmasking, UTF-8 validation and inflating
/// touch only this half.
///
/// Feed it bytes with [`handle_read`](Self::handle_read) (or [`read_buffer`](Self::read_buffer)
/// and [`handle_buffered`](Self::handle_buffered)) and drain [`poll_event`](Self::poll_event).
/// What the peer's frames require of the sending side (a pong for a ping, the echo of a close
/// frame, the close frame that reports a protocol violation, and the state change that goes with
/// the last two) is not done here but handed out as [`Reply`]s:
///
/// **After `handle_read` or `handle_buffered`, and after each `poll_event`, drain
/// [`poll_reply`](Self::poll_reply) into [`SendHalf::handle_reply`](super::SendHalf::handle_reply)**
/// (under whatever lock guards the send half: that is the only moment the receiver needs it).
///
/// Drained so, the pair behaves as the unsplit [`Connection`](super::Connection): replies go out
/// in the order the frames arrived, and a close frame or protocol violation found behind messages
/// not yet polled makes its reply only when `poll_event` gets to it, so that the application's
/// answers to those messages are sent first. Until a reply is applied, the send half does not know
/// about it: its [`state`](super::SendHalf::state) is still `Open` and messages sent in the
/// meantime go out before the pong or close frame.
#[derive(Debug)]
pub struct RecvHalf {
    role: Role,
    /// No more input is processed: the peer's close frame arrived or the protocol was violated
    /// (the effect may still wait in [`Aside::pending_end`]).
    ended: bool,
    /// [`ProtocolConfig::max_message_size`].
    max_message: usize,
    /// [`ProtocolConfig::max_frame_size`], `usize::MAX` for none.
    max_frame: usize,
    rbuf: BytesMut,
    frame: Option<InFrame>,
    /// Boxed: only fragmented (or partially received) messages need it, and an idle connection
    /// should cost little.
    message: Option<Box<Assembly>>,
    events: VecDeque<Message>,
    /// A pending end of the input and the replies of a split half (rare, so boxed: an idle
    /// connection should be small).
    aside: Option<Box<Aside>>,
    /// permessage-deflate, when negotiated (boxed: most connections don't use it).
    inflate: Option<Box<Inflate>>,
    /// The frame being received (`frame`) is a whole unfragmented, uncompressed message arriving
    /// in pieces: its payload stays in the receive buffer (unmasked and UTF-8-checked as it
    /// arrives, [`InFrame::consumed`] bytes so far) and is handed out without a copy once
    /// complete. Kept here rather than in [`InFrame`], where it would cost 8 bytes of padding
    /// per connection (idle memory is a measured goal).
    in_place: bool,
    /// UTF-8 state of a text message received in place (see [`in_place`](Self::in_place)).
    in_place_utf8: Utf8Validator,
}

impl RecvHalf {
    /// The receive half of a new connection; `deflate` as in
    /// [`Connection::with_deflate`](super::Connection::with_deflate).
    pub(super) fn new(role: Role, config: ProtocolConfig, deflate: Option<DeflateParams>) -> Self {
        let inflate = deflate.map(|params| {
            // The peer's direction.
            let (no_context_takeover, bits) = match role {
                Role::Server => (
                    params.client_no_context_takeover,
                    params.client_max_window_bits,
                ),
                Role::Client => (
                    params.server_no_context_takeover,
                    params.server_max_window_bits,
                ),
            };
            Box::new(Inflate {
                params,
                inflater: Inflater::new(bits.unwrap_or(15), no_context_takeover),
            })
        });
        Self {
            role,
            ended: false,
            max_message: config.max_message_size,
            max_frame: config.max_frame_size.unwrap_or(usize::MAX),
            rbuf: BytesMut::new(),
            frame: None,
            message: None,
            events: VecDeque::new(),
            aside: None,
            inflate,
            in_place: false,
            in_place_utf8: Utf8Validator::new(),
        }
    }

    /// The permessage-deflate parameters in force, if it was negotiated.
    pub fn deflate(&self) -> Option<&DeflateParams> {
        self.inflate.as_ref().map(|d| &d.params)
    }

    /// This endpoint's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The largest message accepted ([`ProtocolConfig::max_message_size`]), in bytes (inflated bytes
    /// for compressed messages).
    pub fn max_message_size(&self) -> usize {
        self.max_message
    }

    /// Whether no more input is expected: the peer's close frame was received or the connection
    /// failed (or will, once the messages received before the close frame or violation are
    /// polled).
    pub fn is_terminated(&self) -> bool {
        self.ended
    }

    /// Processes bytes received from the peer; drain [`poll_reply`](Self::poll_reply) afterwards.
    ///
    /// Same contract as [`Connection::handle_read`](super::Connection::handle_read), except that
    /// the pongs, the close frame and the state change it describes are replies.
    pub fn handle_read(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
        self.queueing_replies(|recv, replies| recv.handle_read_with(data, replies))
    }

    /// The receive buffer, for drivers that read straight into it; call
    /// [`handle_buffered`](Self::handle_buffered) after appending.
    pub fn read_buffer(&mut self) -> &mut BytesMut {
        &mut self.rbuf
    }

    /// Processes bytes appended to [`read_buffer`](Self::read_buffer); same contract as
    /// [`handle_read`](Self::handle_read).
    pub fn handle_buffered(&mut self) -> Result<(), ProtocolError> {
        self.queueing_replies(|recv, replies| recv.handle_buffered_with(replies))
    }

    /// The next message or control frame received, in arrival order; drain
    /// [`poll_reply`](Self::poll_reply) after each call.
    ///
    /// Once it returns `None`, a pending protocol failure takes effect (its reply is queued). A
    /// close frame received behind text or binary messages not yet polled takes effect (its reply
    /// is queued) only when this returns it, after those messages.
    pub fn poll_event(&mut self) -> Option<Message> {
        self.queueing_replies(|recv, replies| recv.poll_event_with(replies))
    }

    /// The next reply for the send half, in order: apply it with
    /// [`SendHalf::handle_reply`](super::SendHalf::handle_reply).
    pub fn poll_reply(&mut self) -> Option<Reply> {
        let reply = self.aside.as_mut()?.replies.pop_front()?;
        Some(Reply(reply))
    }

    /// How many more bytes the frame being received needs before it can be handed out, when its
    /// payload is collected in the receive buffer (0 otherwise). Drivers reading straight into
    /// [`read_buffer`](Self::read_buffer) can reserve that much, so that one read completes it.
    pub fn read_hint(&self) -> usize {
        match &self.frame {
            Some(f) if self.in_place => {
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

    /// Frees the memory of the receive buffer and the event and reply queues that are empty;
    /// call it when the connection goes idle. Returns whether anything was freed.
    pub fn release_idle_buffers(&mut self) -> bool {
        let mut freed = false;
        if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
            self.rbuf = BytesMut::new();
            freed = true;
        }
        if self.events.is_empty() && self.events.capacity() > 0 {
            self.events = VecDeque::new();
            freed = true;
        }
        if let Some(aside) = &mut self.aside {
            if aside.pending_end.is_none() && aside.replies.is_empty() {
                self.aside = None;
                freed = true;
            } else if aside.replies.is_empty() && aside.replies.capacity() > 0 {
                aside.replies = VecDeque::new();
                freed = true;
            }
        }
        freed
    }

    /// [`handle_read`](Self::handle_read), with the replies going to `replies`.
    pub(super) fn handle_read_with(
        &mut self,
        data: &[u8],
        replies: &mut dyn Replies,
    ) -> Result<(), ProtocolError> {
        if self.is_terminated() {
            return Ok(());
        }
        self.rbuf.extend_from_slice(data);
        self.process(replies)
    }

    /// [`handle_buffered`](Self::handle_buffered), with the replies going to `replies`.
    pub(super) fn handle_buffered_with(
        &mut self,
        replies: &mut dyn Replies,
    ) -> Result<(), ProtocolError> {
        if self.is_terminated() {
            self.rbuf.clear();
            return Ok(());
        }
        self.process(replies)
    }

    /// [`poll_event`](Self::poll_event), with the replies going to `replies`.
    pub(super) fn poll_event_with(&mut self, replies: &mut dyn Replies) -> Option<Message> {
        let event = self.events.pop_front();
        if event.is_none() {
            match self.take_pending_end() {
                Some(PendingEnd::Close(frame)) => {
                    self.on_close(frame, replies);
                    return self.events.pop_front();
                }
                Some(PendingEnd::Failure(err)) => self.fail(&err, replies),
                None => {}
            }
        }
        event
    }

    /// Runs `f` with this half's reply queue as the destination of replies: taken out of its box
    /// (so that `f` can borrow both) and put back afterwards.
    fn queueing_replies<R>(&mut self, f: impl FnOnce(&mut Self, &mut dyn Replies) -> R) -> R {
        let mut queue = self
            .aside
            .as_mut()
            .map(|aside| std::mem::take(&mut aside.replies))
            .unwrap_or_default();
        let result = f(self, &mut queue);
        if queue.capacity() > 0 {
            self.aside.get_or_insert_with(Box::default).replies = queue;
        }
        result
    }

    /// Takes the pending end of the input, if any, freeing its box when no reply queue lives
    /// there.
    fn take_pending_end(&mut self) -> Option<PendingEnd> {
        let aside = self.aside.as_mut()?;
        let end = aside.pending_end.take()?;
        if aside.replies.capacity() == 0 {
            self.aside = None;
        }
        Some(end)
    }

    /// Records the end of the input behind messages not yet polled: it takes effect once
    /// [`poll_event`](Self::poll_event) has returned them.
    fn end_pending(&mut self, end: PendingEnd) {
        self.aside.get_or_insert_with(Box::default).pending_end = Some(end);
        self.ended = true;
    }

    fn process(&mut self, replies: &mut dyn Replies) -> Result<(), ProtocolError> {
        match self.process_frames(replies) {
            Ok(()) => Ok(()),
            Err(err) => {
                if self.events.is_empty() {
                    self.fail(&err, replies);
                } else {
                    self.frame = None;
                    self.message = None;
                    self.rbuf.clear();
                    self.end_pending(PendingEnd::Failure(err.clone()));
                }
                Err(err)
            }
        }
    }

    /// Fails the connection: the send half queues a close frame (if none was sent) and moves to
    /// `Failed`; no more input is processed.
    fn fail(&mut self, err: &ProtocolError, replies: &mut dyn Replies) {
        replies.answer_failure(err);
        self.ended = true;
        self.frame = None;
        self.message = None;
        self.rbuf.clear();
        self.release_inflater();
    }

    /// Frees the zlib state: no data message will be received again.
    fn release_inflater(&mut self) {
        if let Some(d) = &mut self.inflate {
            d.inflater.release();
        }
    }

    fn check_rsv(&self, h: &FrameHeader) -> Result<(), ProtocolError> {
        if h.rsv == 0 {
            return Ok(());
        }
        if self.inflate.is_some() && h.rsv == RSV1 {
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
                compressed_wire_limit(self.max_message)
            } else {
                self.max_message
            };
            let max_frame = self.max_frame.min(max_message);
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

    fn process_frames(&mut self, replies: &mut dyn Replies) -> Result<(), ProtocolError> {
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
                    consumed: 0,
                });
                self.in_place = in_place;
                continue;
            };

            if frame.header.opcode.is_control() {
                // At most 125 bytes: wait for all of it.
                let len = frame.remaining() as usize;
                if self.rbuf.len() < len {
                    return Ok(());
                }
                let header = frame.header;
                self.frame = None;
                let mut payload = self.rbuf.split_to(len);
                if let Some(key) = header.mask {
                    apply_mask(&mut payload, key, 0);
                }
                self.on_control(header.opcode, payload.freeze(), replies)?;
                continue;
            }

            if self.in_place {
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
            let remaining = frame.remaining();
            let n = remaining.min(self.rbuf.len() as u64) as usize;
            if n == 0 && remaining > 0 {
                return Ok(());
            }
            let chunk = &mut self.rbuf[..n];
            if let Some(key) = frame.header.mask {
                apply_mask(chunk, key, frame.consumed);
            }
            frame.consumed += n;
            let frame_done = frame.remaining() == 0;
            let fin = frame.header.fin;
            let Some(message) = self.message.as_mut() else {
                // check_header guarantees a message for every data frame.
                return Err(ProtocolError::UnexpectedContinuation);
            };
            message.wire += n as u64;
            if message.compressed {
                let Some(inflate) = self.inflate.as_mut() else {
                    // check_header accepts RSV1 only with deflate negotiated.
                    return Err(ProtocolError::ReservedBits(RSV1));
                };
                let max = self.max_message;
                // Inflate what arrived; the sink sees at most 16 KiB at a time and stops the
                // inflater the moment the message crosses the limit.
                inflate
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
        if message.compressed
            && let Some(d) = &mut self.inflate
        {
            d.inflater.end_message();
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

    fn on_control(
        &mut self,
        opcode: OpCode,
        payload: Bytes,
        replies: &mut dyn Replies,
    ) -> Result<(), ProtocolError> {
        match opcode {
            OpCode::Ping => {
                replies.answer_ping(&payload);
                self.events.push_back(Message::Ping(payload));
            }
            OpCode::Pong => self.events.push_back(Message::Pong(payload)),
            OpCode::Close => {
                let frame = parse_close_payload(payload)?;
                if self.events.iter().any(Message::is_data) {
                    self.end_pending(PendingEnd::Close(frame));
                } else {
                    self.on_close(frame, replies);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Applies a received close frame: the send half echoes it (RFC 6455 §5.5.1, as Python
    /// websockets and Node ws do; an empty close gets an empty reply) unless ours was sent, and
    /// moves to `Closed`; the application sees it as an event.
    fn on_close(&mut self, frame: Option<CloseFrame>, replies: &mut dyn Replies) {
        replies.answer_close(frame.as_ref());
        self.ended = true;
        self.message = None;
        self.release_inflater();
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
