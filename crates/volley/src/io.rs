//! Moving bytes between a transport and the protocol core: the vectored write loop and the
//! read path that both drivers use.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use volley_proto::{Connection, ProtocolError, RecvHalf};

use crate::error::Error;

/// Free space a connection's read buffer has before a read, at first. It grows to the size of
/// the frames that needed more than one read (up to [`MAX_READ_TARGET`]), so that a stream of
/// large messages is read with one system call per message.
pub(crate) const READ_TARGET: usize = 4 * 1024;

/// The most free space reserved ahead of frames of unknown size.
const MAX_READ_TARGET: usize = 64 * 1024;

/// Size of the per-thread buffer that idle connections (which keep no read buffer) read into.
const SCRATCH_LEN: usize = 16 * 1024;

thread_local! {
    /// Where a connection without a read buffer reads: only the bytes it needs are kept.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Most buffers handed to one vectored write.
const MAX_IOV: usize = 64;

/// Slices tried first: writes with fewer pieces than this never set up [`MAX_IOV`] of them.
const FEW_IOV: usize = 4;

/// The receiving side of a protocol connection, as the read path sees it (a whole
/// [`Connection`], or the receive half a task's receiver owns).
pub(crate) trait Incoming {
    /// See [`Connection::read_buffer_released`].
    fn read_buffer_released(&self) -> bool;
    /// See [`Connection::read_buffer`].
    fn read_buffer(&mut self) -> &mut BytesMut;
    /// See [`Connection::handle_read`].
    fn handle_read(&mut self, data: &[u8]) -> Result<(), ProtocolError>;
    /// See [`Connection::handle_buffered`].
    fn handle_buffered(&mut self) -> Result<(), ProtocolError>;
    /// See [`Connection::read_hint`].
    fn read_hint(&self) -> usize;
}

/// Both implementations delegate to the inherent methods of the same names.
macro_rules! incoming {
    ($t:ty) => {
        impl Incoming for $t {
            fn read_buffer_released(&self) -> bool {
                <$t>::read_buffer_released(self)
            }

            fn read_buffer(&mut self) -> &mut BytesMut {
                <$t>::read_buffer(self)
            }

            fn handle_read(&mut self, data: &[u8]) -> Result<(), ProtocolError> {
                <$t>::handle_read(self, data)
            }

            fn handle_buffered(&mut self) -> Result<(), ProtocolError> {
                <$t>::handle_buffered(self)
            }

            fn read_hint(&self) -> usize {
                <$t>::read_hint(self)
            }
        }
    };
}

incoming!(Connection);
incoming!(RecvHalf);

/// Bytes waiting to be written, shown as slices and dropped as they are written: a writer's
/// queue, or a protocol connection's own (written straight from it).
pub(crate) trait Outgoing {
    /// Fills `dst` with the waiting bytes in order; returns how many slices it filled.
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize;
    /// Drops the first `n` waiting bytes.
    fn advance(&mut self, n: usize);
}

impl Outgoing for VecDeque<Bytes> {
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut count = 0;
        for (slot, bytes) in dst.iter_mut().zip(self.iter()) {
            *slot = IoSlice::new(bytes);
            count += 1;
        }
        count
    }

    fn advance(&mut self, mut left: usize) {
        while left > 0 {
            let Some(front) = self.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                self.pop_front();
            } else {
                front.advance(left);
                left = 0;
            }
        }
    }
}

impl Outgoing for Connection {
    fn slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        self.transmit_slices(dst)
    }

    fn advance(&mut self, n: usize) {
        self.advance_transmit(n);
    }
}

/// Writes everything `out` holds to `io` (vectored when the transport supports it, at most
/// [`MAX_IOV`] buffers per system call), then flushes the transport. Pending as soon as the
/// transport is; what was written stays written.
pub(crate) fn poll_write_all<W: AsyncWrite>(
    mut io: Pin<&mut W>,
    out: &mut impl Outgoing,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<()>> {
    loop {
        // The slice arrays live only for this synchronous step. Most writes have a piece or
        // two (a small message, or a header and its payload): filling a short array first
        // spares them setting up the long one (a measurable cost at one write per message).
        let mut few = [IoSlice::new(&[]); FEW_IOV];
        let count = out.slices(&mut few);
        let n = if count == 0 {
            break;
        } else if count < FEW_IOV {
            ready!(poll_write_slices(io.as_mut(), &few[..count], cx))?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let count = out.slices(&mut slices);
            ready!(poll_write_slices(io.as_mut(), &slices[..count], cx))?
        };
        if n == 0 {
            return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
        }
        out.advance(n);
    }
    io.poll_flush(cx)
}

/// One write of `slices` (not empty): vectored when the transport supports it.
fn poll_write_slices<W: AsyncWrite>(
    io: Pin<&mut W>,
    slices: &[IoSlice<'_>],
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if slices.len() > 1 && io.is_write_vectored() {
        io.poll_write_vectored(cx, slices)
    } else {
        io.poll_write(cx, &slices[0])
    }
}

/// Reads once from `io` into the connection and processes what arrived (a protocol error lands
/// in `error`). A connection with a read buffer reads straight into it (its spare capacity,
/// handed over uninitialized, as tokio's sockets and the callback drivers' own take it), with
/// room for the rest of the frame being received; one without (idle) reads into this thread's
/// scratch buffer and keeps only the bytes of a frame still incomplete — unless it is `warm`
/// (it read recently: more reads are likely), then it keeps a read buffer of the usual size.
/// `target` is the free space to have before a read (see [`READ_TARGET`]); it follows the size
/// of the frames that needed more than one read.
pub(crate) fn poll_fill<R: AsyncRead>(
    proto: &mut impl Incoming,
    mut io: Pin<&mut R>,
    error: &mut Option<Error>,
    target: &mut usize,
    warm: bool,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    let n = if proto.read_buffer_released() {
        ready!(SCRATCH.with_borrow_mut(|scratch| {
            let mut buf = ReadBuf::new(scratch);
            ready!(io.as_mut().poll_read(cx, &mut buf))?;
            let filled = buf.filled();
            if !filled.is_empty() {
                if warm {
                    // Reads follow one another: keep room for the next ones.
                    proto.read_buffer().reserve(filled.len().max(*target));
                }
                // Otherwise only what arrived is copied (complete messages are handed out from
                // that copy): a connection that wakes up for a message or two must not be left
                // holding a read buffer of the usual size until it is idle again.
                if let Err(e) = proto.handle_read(filled) {
                    *error = Some(Error::Protocol(e));
                }
                let rest = proto.read_buffer();
                if !warm && rest.is_empty() {
                    *rest = BytesMut::new();
                }
            }
            Poll::Ready(Ok::<_, std::io::Error>(filled.len()))
        }))?
    } else {
        // Room for the rest of the frame being received, else for a frame of the usual size.
        let want = proto.read_hint().max(*target);
        let buf = proto.read_buffer();
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let n = ready!(tokio_util::io::poll_read_buf(io, cx, buf))?;
        if n > 0
            && let Err(e) = proto.handle_buffered()
        {
            *error = Some(Error::Protocol(e));
        }
        n
    };
    // A frame that did not arrive in one read: make room for frames of its size from now on.
    let hint = proto.read_hint();
    if hint > 0 {
        let frame = proto.read_buffer().len() + hint;
        *target = (*target).max(frame).min(MAX_READ_TARGET);
    }
    Poll::Ready(Ok(n))
}
