//! The send direction: messages compressed, fragmented, masked and queued as bytes to write.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::num::NonZeroU32;

use bytes::{Buf, Bytes, BytesMut};

use super::{RSV1, Replies, Reply, ReplyKind, State};
use crate::close::CloseFrame;
use crate::config::{ProtocolConfig, Role};
use crate::deflate::{DeflateParams, Deflater};
use crate::error::{ProtocolError, SendError};
use crate::frame::{FrameHeader, OpCode};
use crate::mask::apply_mask;
use crate::message::Message;

/// Payloads at least this long are queued for transmission as their own [`Bytes`] instead of
/// being copied next to their header (server role only: client payloads are masked in a copy).
const ZERO_COPY_MIN: usize = 1024;

/// permessage-deflate, sending side: the agreed parameters and this direction's codec.
#[derive(Debug)]
struct Deflate {
    params: DeflateParams,
    threshold: usize,
    deflater: Deflater,
}

/// The sending half of a connection: turns messages into bytes to write, and owns the connection's
/// [`State`].
///
/// It comes from [`Connection::split`](super::Connection::split), together with the
/// [`RecvHalf`](super::RecvHalf) it belongs with, and can be used without it: compressing,
/// fragmenting and masking touch only this half. Queue messages with [`send`](Self::send),
/// [`send_prepared`](Self::send_prepared) and [`close`](Self::close), and write what
/// [`poll_transmit`](Self::poll_transmit) (or [`transmit_slices`](Self::transmit_slices)) hands
/// out.
///
/// What the peer's frames require of it (pongs, the echo of a close frame, the close frame that
/// reports a protocol violation) arrives as [`Reply`]s from the receive half: apply each with
/// [`handle_reply`](Self::handle_reply), then drain `poll_transmit`.
#[derive(Debug)]
pub struct SendHalf {
    role: Role,
    state: State,
    /// [`ProtocolConfig::fragment_size`], `None` for none; 32 bits (a size beyond is taken as
    /// 4 GiB − 1, which fragments only messages larger than that, as RFC 6455 allows) so that
    /// it packs with the two fields before it: idle memory per connection is a measured goal.
    fragment: Option<NonZeroU32>,
    out: VecDeque<Bytes>,
    out_buf: BytesMut,
    out_len: usize,
    /// permessage-deflate, when negotiated (boxed: most connections don't use it).
    deflate: Option<Box<Deflate>>,
}

impl SendHalf {
    /// The largest payload of one frame (`usize::MAX`: messages are not fragmented).
    fn fragment(&self) -> usize {
        self.fragment.map_or(usize::MAX, |f| f.get() as usize)
    }

    /// The send half of a new connection; `deflate` as in
    /// [`Connection::with_deflate`](super::Connection::with_deflate).
    pub(super) fn new(role: Role, config: &ProtocolConfig, deflate: Option<DeflateParams>) -> Self {
        let deflate = deflate.map(|params| {
            let prefs = config.deflate.clone().unwrap_or_default();
            // This endpoint's direction.
            let (no_context_takeover, bits) = match role {
                Role::Server => (
                    params.server_no_context_takeover,
                    params.server_max_window_bits,
                ),
                Role::Client => (
                    params.client_no_context_takeover,
                    params.client_max_window_bits,
                ),
            };
            Box::new(Deflate {
                params,
                threshold: prefs.threshold,
                deflater: Deflater::new(bits.unwrap_or(15), prefs.level, no_context_takeover),
            })
        });
        Self {
            role,
            state: State::Open,
            fragment: config
                .fragment_size
                .map(|size| u32::try_from(size).unwrap_or(u32::MAX))
                .map(|size| NonZeroU32::new(size).unwrap_or(NonZeroU32::MIN)),
            out: VecDeque::new(),
            out_buf: BytesMut::new(),
            out_len: 0,
            deflate,
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

    /// Where the close handshake stands, as far as the replies applied so far tell.
    pub fn state(&self) -> State {
        self.state
    }

    /// Applies a reply from the receive half ([`RecvHalf::poll_reply`](super::RecvHalf::poll_reply)):
    /// queues a pong (while `Open`), echoes a close frame (while `Open`; the state becomes
    /// `Closed`), or queues the close frame that reports a protocol violation (while `Open`; the
    /// state becomes `Failed`). Drain [`poll_transmit`](Self::poll_transmit) afterwards.
    pub fn handle_reply(&mut self, reply: Reply) {
        match reply.0 {
            ReplyKind::Pong(payload) => self.answer_ping(&payload),
            ReplyKind::Close(frame) => self.answer_close(frame.as_ref()),
            ReplyKind::Failure(err) => self.answer_failure(&err),
        }
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

    /// Frees the memory of the output buffer and the transmit queue if they are empty; call it
    /// when the connection goes idle. Returns whether anything was freed.
    pub fn release_idle_buffers(&mut self) -> bool {
        let mut freed = false;
        if self.out_buf.is_empty() && self.out_buf.capacity() > 0 {
            self.out_buf = BytesMut::new();
            freed = true;
        }
        if self.out.is_empty() && self.out.capacity() > 0 {
            self.out = VecDeque::new();
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
        let fits = prepared.payload_len() <= self.fragment();
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
    ///
    /// [`CloseCode::is_sendable`]: crate::CloseCode::is_sendable
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
        // No data message can follow our close frame.
        self.release_deflater();
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
        let fragment = self.fragment();
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

    /// Frees the zlib state: no data message will be sent again.
    fn release_deflater(&mut self) {
        if let Some(d) = &mut self.deflate {
            d.deflater.release();
        }
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
}

/// The send half applies replies as they are made (an unsplit [`Connection`](super::Connection))
/// or when [`handle_reply`](SendHalf::handle_reply) hands them over (split).
impl Replies for SendHalf {
    fn answer_ping(&mut self, payload: &Bytes) {
        if self.state == State::Open {
            self.queue_frame(true, OpCode::Pong, payload.clone());
        }
    }

    fn answer_close(&mut self, frame: Option<&CloseFrame>) {
        if self.state == State::Open {
            self.queue_close(frame);
        }
        self.state = State::Closed;
        self.release_deflater();
    }

    fn answer_failure(&mut self, err: &ProtocolError) {
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
        self.release_deflater();
    }
}
