//! The callback drivers' own event loop for plain TCP connections (issue #15): plain TCP
//! connections of callback routes run on driver threads, one per runtime worker, each blocking
//! in its own `mio::Poll` (uWebSockets' model): one `epoll_wait` per wake-up, timers as its
//! timeout, no tokio task to wake or poll. The thread enters the runtime, so callbacks can still
//! spawn tasks and arm tokio timers. A plain-TCP connection thus costs no tokio I/O registration
//! (`ScheduledIo`, 256 B with its alignment): its socket is registered, edge-triggered, for
//! reading and writing once, in its driver's poll, under its index in the driver's registry.
//!
//! TLS connections and boxed transports (hyper upgrades, custom transports) stay on tokio, with
//! drivers that are tokio tasks. Handles ([`ConnHandle`](super::ConnHandle) sends, hub offers)
//! wake a connection through its driver's ready queue, and its poll's [`mio::Waker`] when the
//! driver thread sleeps; timers stay in the driver's timer queue.
//!
//! Readiness is edge-triggered: a connection reads until a read comes back short or would
//! block (a short read of a stream socket means its receive queue was emptied; anything that
//! arrives after it is a new edge), and a write that would block waits for the next event (the
//! socket's send buffer draining is an edge too). Reads go straight into the connection's
//! buffer, uninitialized memory: the one `unsafe` function, [`recv_uninit`], with its SAFETY
//! comments (the crate denies `unsafe_code` everywhere else).

use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Token};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Most bytes one read takes.
const MAX_READ: usize = 64 * 1024;

/// Events taken from the poll in one go; more wait for the next call.
const EVENTS: usize = 256;

/// Whether plain-TCP connections of callback routes use the drivers' own event loop: yes
/// unless the environment variable `VOLLEY_CALLBACK_IO` is `tokio` (read once; for comparing
/// the two in benchmarks).
pub(crate) fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("VOLLEY_CALLBACK_IO").map_or(true, |v| v != "tokio"))
}

/// A plain TCP connection in a driver's own poll.
#[derive(Debug)]
pub(crate) struct PlainTcp {
    /// Non-blocking; registered through its descriptor (a `mio` stream would be larger).
    stream: std::net::TcpStream,
    /// The last event said readable and no read since came back short or would block.
    readable: bool,
    /// An event said the peer is done sending (or the socket failed): reads no longer wait
    /// for an edge, the next one (after the bytes before the end) tells how it ended. A read
    /// that comes back short just before the end was received must not wait for an edge
    /// that came already.
    ended: bool,
}

/// What an event said about a socket.
#[derive(Clone, Copy, Debug)]
pub(super) struct Readiness {
    /// Bytes (or the end) to read.
    pub(super) read: bool,
    /// The peer is done sending, or the socket failed.
    pub(super) ended: bool,
}

impl PlainTcp {
    /// Takes a socket away from tokio (its registration is dropped): the driver registers it in
    /// its own poll when it first runs the connection.
    pub(crate) fn from_tokio(stream: tokio::net::TcpStream) -> io::Result<Self> {
        // Still non-blocking.
        let stream = stream.into_std()?;
        Ok(Self {
            stream,
            // Bytes may have arrived before the registration: the first turn reads.
            readable: true,
            ended: false,
        })
    }

    /// Registers the socket in `poll` under `token`, for reading and writing, edge-triggered.
    pub(super) fn register(&mut self, poll: &EventLoop, token: usize) -> io::Result<()> {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let fd = self.stream.as_raw_fd();
        poll.registry()
            .register(&mut SourceFd(&fd), Token(token), interest)
    }

    /// What an event said about the socket.
    pub(super) fn on_event(&mut self, readiness: Readiness) {
        self.readable |= readiness.read;
        self.ended |= readiness.ended;
    }

    pub(super) fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }
}

/// Retries `op` while it is interrupted; `Pending` when it would block.
fn nonblocking<T>(mut op: impl FnMut() -> io::Result<T>) -> Poll<io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Poll::Pending,
            result => return Poll::Ready(result),
        }
    }
}

/// The waker is not used: the driver runs the connection again on its socket's next event.
impl AsyncRead for PlainTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.readable && !this.ended {
            return Poll::Pending;
        }
        let room = buf.remaining().min(MAX_READ);
        let read = nonblocking(|| recv_uninit(&this.stream, buf, room));
        match read {
            Poll::Ready(Ok(n)) => {
                if n < room {
                    // The receive queue is empty (or the peer is done): wait for the next edge.
                    this.readable = false;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                this.readable = false;
                Poll::Pending
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        }
    }
}

/// Receives at most `room` bytes from `stream` into `buf`'s unfilled part, which may be
/// uninitialized memory (a connection's read buffer is, past its length), and marks them
/// filled. Returns how many arrived.
///
/// The one `unsafe` of this module (issue #15 allows one confined I/O-backend module): safe
/// code could only read into initialized memory, that is zero (or copy through a scratch
/// buffer) every byte before the kernel overwrites it — 6 % of the server's CPU at 200×16 KiB
/// echoes (docs/PERFORMANCE.md). tokio's own `TcpStream` reads the same way.
#[allow(unsafe_code)]
fn recv_uninit(
    stream: &std::net::TcpStream,
    buf: &mut ReadBuf<'_>,
    room: usize,
) -> io::Result<usize> {
    // SAFETY: `unfilled_mut` is unsafe because the caller must not de-initialize bytes that
    // are initialized: the slice is only handed to `recv`, which writes bytes into it and never
    // reads or de-initializes any.
    let unfilled = unsafe { buf.unfilled_mut() };
    let room = room.min(unfilled.len());
    let n = socket2::SockRef::from(stream).recv(&mut unfilled[..room])?;
    // `recv` never reports more than it was given room for; checked rather than trusted.
    assert!(n <= room, "recv reported {n} bytes for a buffer of {room}");
    // SAFETY: `recv` wrote the first `n` bytes of the unfilled part (the kernel copied them
    // in), so they are initialized.
    unsafe { buf.assume_init(n) };
    buf.advance(n);
    Ok(n)
}

/// The waker is not used: a write that would block is retried on the socket's next event.
impl AsyncWrite for PlainTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.stream;
        nonblocking(|| (&*stream).write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.stream;
        nonblocking(|| (&*stream).write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.stream.shutdown(std::net::Shutdown::Write))
    }
}

/// The token of a driver's [`mio::Waker`] (registry indexes are `u32`, so it names no
/// connection).
const WAKER: Token = Token(usize::MAX);

/// One driver's poll: its thread blocks in it (see the driver's `run_thread`), and its
/// [`mio::Waker`] wakes it for what does not come through a socket (a connection woken by a
/// handle, a new connection, shutdown).
pub(super) struct EventLoop {
    poll: mio::Poll,
    events: Events,
}

impl EventLoop {
    /// A poll and the waker that interrupts its waits.
    pub(super) fn new() -> io::Result<(Self, mio::Waker)> {
        let poll = mio::Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKER)?;
        let events = Events::with_capacity(EVENTS);
        Ok((Self { poll, events }, waker))
    }

    /// Waits for events, at most `timeout` (forever for `None`), and keeps them for
    /// [`events`](Self::events). Returns whether there may be more (the batch was full).
    pub(super) fn wait(&mut self, timeout: Option<Duration>) -> bool {
        let Self { poll, events } = self;
        events.clear();
        match poll.poll(events, timeout) {
            Ok(()) => events.iter().count() >= EVENTS,
            // A signal: the driver looks again at once.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => true,
            Err(e) => {
                tracing::error!("polling a callback driver's sockets failed: {e}");
                events.clear();
                if timeout.is_none_or(|t| !t.is_zero()) {
                    // Not a busy loop on a poll that keeps failing.
                    std::thread::sleep(Duration::from_millis(10));
                }
                false
            }
        }
    }

    /// Whether the last [`wait`](Self::wait) found events for connections.
    pub(super) fn has_events(&self) -> bool {
        self.events.iter().any(|event| event.token() != WAKER)
    }

    /// The events the last [`wait`](Self::wait) found: the registry index of a connection,
    /// and what its socket is ready for.
    pub(super) fn events(&self) -> impl Iterator<Item = (usize, Readiness)> + '_ {
        self.events
            .iter()
            .filter(|event| event.token() != WAKER)
            .map(|event| {
                let ended = event.is_read_closed() || event.is_error();
                let read = event.is_readable() || ended;
                (event.token().0, Readiness { read, ended })
            })
    }

    fn registry(&self) -> &mio::Registry {
        self.poll.registry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::MaybeUninit;
    use std::net::{TcpListener, TcpStream};
    use std::task::Waker;
    use std::time::Instant;

    /// A connected pair: the writing end, and the reading end as a `PlainTcp` (non-blocking).
    fn pair() -> (TcpStream, PlainTcp) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let writer = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        let tcp = PlainTcp {
            stream,
            readable: true,
            ended: false,
        };
        (writer, tcp)
    }

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Polls `read` until it is ready (the bytes may still be on their way), at most 10 s.
    fn until_ready<T>(mut read: impl FnMut(&mut Context<'_>) -> Poll<io::Result<T>>) -> T {
        let mut cx = Context::from_waker(Waker::noop());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match read(&mut cx) {
                Poll::Ready(Ok(value)) => return value,
                Poll::Ready(Err(e)) => panic!("read failed: {e}"),
                Poll::Pending => {
                    assert!(Instant::now() < deadline, "the bytes did not arrive");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
    }

    /// Reads until `want` bytes have arrived (the writer's bytes may come in pieces).
    fn read_exactly(tcp: &mut PlainTcp, buf: &mut ReadBuf<'_>, want: usize) {
        while buf.filled().len() < want {
            until_ready(|cx| {
                tcp.readable = true; // as an edge would say
                Pin::new(&mut *tcp).poll_read(cx, buf)
            });
        }
    }

    #[test]
    fn reads_into_uninitialized_memory_fill_exactly_what_arrived() {
        let (mut writer, mut tcp) = pair();
        let sent = pattern(3000);
        writer.write_all(&sent).unwrap();
        let mut memory = vec![MaybeUninit::<u8>::uninit(); 8192];
        let mut buf = ReadBuf::uninit(&mut memory);
        read_exactly(&mut tcp, &mut buf, sent.len());
        assert_eq!(buf.filled(), &sent[..]);
        // Exactly the bytes received count as initialized: nothing beyond them was claimed.
        assert_eq!(buf.initialized().len(), sent.len());
        // Nothing more came: the next read would block and says so.
        let mut cx = Context::from_waker(Waker::noop());
        tcp.readable = true;
        assert!(Pin::new(&mut tcp).poll_read(&mut cx, &mut buf).is_pending());
        assert!(!tcp.readable);
    }

    #[test]
    fn a_read_takes_no_more_than_the_room_left_and_keeps_what_was_filled() {
        let (mut writer, mut tcp) = pair();
        let sent = pattern(1000);
        writer.write_all(&sent).unwrap();
        let mut memory = vec![MaybeUninit::<u8>::uninit(); 300];
        let mut buf = ReadBuf::uninit(&mut memory);
        read_exactly(&mut tcp, &mut buf, 300);
        assert_eq!(buf.filled(), &sent[..300]);
        // A full read leaves the socket readable: more may be waiting.
        assert!(tcp.readable);
        // The rest, into a buffer that already holds bytes: they stay where they are.
        let mut memory = vec![MaybeUninit::<u8>::uninit(); 2000];
        let mut buf = ReadBuf::uninit(&mut memory);
        buf.put_slice(b"kept");
        read_exactly(&mut tcp, &mut buf, 4 + 700);
        assert_eq!(&buf.filled()[..4], b"kept");
        assert_eq!(&buf.filled()[4..], &sent[300..]);
    }

    #[test]
    fn reads_into_a_connection_buffer_advance_it_by_what_arrived() {
        let (mut writer, mut tcp) = pair();
        let sent = pattern(70_000);
        let sender = std::thread::spawn(move || writer.write_all(&sent).map(|()| sent));
        let mut buffer = bytes::BytesMut::with_capacity(1024);
        buffer.extend_from_slice(b"head");
        while buffer.len() < 4 + 70_000 {
            if buffer.capacity() == buffer.len() {
                buffer.reserve(4096);
            }
            let n = until_ready(|cx| {
                tcp.readable = true;
                tokio_util::io::poll_read_buf(Pin::new(&mut tcp), cx, &mut buffer)
            });
            assert!(n > 0 && n <= MAX_READ);
        }
        let sent = sender.join().unwrap().unwrap();
        assert_eq!(&buffer[..4], b"head");
        assert_eq!(&buffer[4..], &sent[..]);
    }

    #[test]
    fn the_end_of_stream_reads_as_zero_bytes() {
        let (writer, mut tcp) = pair();
        drop(writer);
        let mut memory = vec![MaybeUninit::<u8>::uninit(); 64];
        let mut buf = ReadBuf::uninit(&mut memory);
        until_ready(|cx| {
            tcp.ended = true; // as the event would say
            Pin::new(&mut tcp).poll_read(cx, &mut buf)
        });
        assert!(buf.filled().is_empty());
        assert!(buf.initialized().is_empty());
    }
}
