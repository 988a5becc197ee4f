//! The scheduler of callback connections: drivers, each with a ready queue (connections woken
//! by I/O or handles), a timer queue (each connection's next deadline) and a registry (its
//! connections, closed if the driver ends); and the [`Pool`] of drivers of one route, which
//! hands new connections to live drivers and replaces dead ones.
//!
//! Two kinds of drivers, one per runtime worker of each: plain TCP connections run on driver
//! *threads* blocking in their own poll (see [`evloop`](super::evloop)); TLS streams and boxed
//! transports, whose I/O is tokio's, run on driver *tasks*. Both run the same turn
//! ([`Driver::turn`]); they differ in how they wait for the next one.

use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
#[cfg(unix)]
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Sleep;
use volley_proto::{CloseFrame, Connection, DeflateParams, Role};

use super::conn::{ConnState, Driven, NEW, lock};
use super::{Callbacks, Conn, OpenRequest, TrafficStats};
use crate::config::Config;
use crate::core::{self, Micros, NEVER, Shutdown};
use crate::error::{Error, Timeout};
use crate::maybe_tls::MaybeTlsStream;

#[cfg(unix)]
use super::evloop::{EventLoop, PlainTcp, Readiness};

/// The transport of a callback connection: plain TCP in the driver's own poll, a server's TLS
/// stream (or plain TCP on tokio, when the driver's poll is switched off), anything else (a
/// hyper upgrade, a custom transport). Boxed but for plain TCP, so that it takes two words in
/// every connection (a TLS stream is far larger than a box anyway).
pub(crate) enum Io {
    Stream(Box<MaybeTlsStream>),
    #[allow(clippy::redundant_allocation)]
    Boxed(Box<Box<dyn Transport>>),
    /// Plain TCP in the driver's own poll (see [`evloop`](super::evloop)).
    #[cfg(unix)]
    Plain(PlainTcp),
}

/// What a boxed transport must be.
pub(crate) trait Transport: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Transport for T {}

impl Io {
    pub(crate) fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            Self::Stream(s) => s.tcp()?.peer_addr().ok(),
            Self::Boxed(_) => None,
            #[cfg(unix)]
            Self::Plain(s) => s.peer_addr(),
        }
    }

    /// A server's stream: plain TCP leaves tokio for the driver's own poll (unless that is
    /// switched off). Fails only if tokio could not let the socket go (it is closed then).
    pub(crate) fn stream(stream: MaybeTlsStream) -> std::io::Result<Self> {
        #[cfg(unix)]
        #[allow(irrefutable_let_patterns)] // without the `tls` and `hyper` features
        if let MaybeTlsStream::Plain(tcp) = stream {
            if super::evloop::enabled() {
                return Ok(Self::Plain(PlainTcp::from_tokio(tcp)?));
            }
            return Ok(Self::Stream(Box::new(MaybeTlsStream::Plain(tcp))));
        }
        Ok(Self::Stream(Box::new(stream)))
    }

    /// Any other transport.
    pub(crate) fn boxed(transport: impl Transport) -> Self {
        Self::Boxed(Box::new(Box::new(transport)))
    }
}

macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Io::Stream($s) => $e,
            Io::Boxed($s) => $e,
            #[cfg(unix)]
            Io::Plain($s) => $e,
        }
    };
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        each!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Stream(s) => s.is_write_vectored(),
            Self::Boxed(s) => s.is_write_vectored(),
            #[cfg(unix)]
            Self::Plain(_) => true,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        each!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// The drivers of one route. Dropping it (the last [`Drivers`](super::Drivers) clone) lets
/// each driver end once its connections are gone.
pub(crate) struct Pool {
    callbacks: Arc<dyn Callbacks>,
    pub(super) config: Arc<Config>,
    shared: Arc<Shared>,
    /// Driver tasks, started with the first connection that needs one (on its runtime).
    tasks: Mutex<Vec<(Arc<Driver>, JoinHandle<()>)>>,
    /// Driver threads (each with the task that stops it with the runtime), started with the
    /// first plain TCP connection; a thread that ran out of connections ends after
    /// [`LINGER`] and is replaced when the next one comes.
    threads: Mutex<Vec<(Arc<Driver>, JoinHandle<()>)>>,
    next: AtomicUsize,
}

/// New connections waiting for a driver thread past which the thread that hands them over
/// yields its core.
#[cfg(unix)]
const MAX_OPENING: usize = 16;

/// Most entries a driver keeps room for in its queues between turns.
const KEEP_QUEUED: usize = 256;

/// How long a driver thread without connections waits for a new one before it ends (and
/// closes its poll).
const LINGER: Micros = 1_000_000;

/// What a pool's drivers share with it.
#[derive(Default)]
struct Shared {
    shutdown: Shutdown,
    /// The traffic of drivers that died (and were replaced).
    retired: Traffic,
    /// Connections handed over and not finished.
    live: AtomicUsize,
    /// Notified when `live` drops to 0.
    idle: Notify,
}

impl Shared {
    /// A connection handed over is finished (or was dropped unserved).
    fn finished(&self) {
        if self.live.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.each(|driver, _| {
            driver.orphaned.store(true, Ordering::Release);
            driver.wake();
        });
    }
}

impl Pool {
    pub(super) fn new(callbacks: Arc<dyn Callbacks>, config: Arc<Config>) -> Self {
        Self {
            callbacks,
            config,
            shared: Arc::default(),
            tasks: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
            next: AtomicUsize::new(0),
        }
    }

    /// Calls `f` with every driver (tasks, then threads) and its task.
    fn each(&self, mut f: impl FnMut(&Arc<Driver>, &JoinHandle<()>)) {
        for list in [&self.tasks, &self.threads] {
            for (driver, task) in lock(list).iter() {
                f(driver, task);
            }
        }
    }

    pub(super) fn connections(&self) -> usize {
        self.shared.live.load(Ordering::Acquire)
    }

    /// The traffic of every driver, dead ones included.
    pub(super) fn traffic(&self) -> TrafficStats {
        let mut total = self.shared.retired.snapshot();
        self.each(|driver, _| total.add(&driver.traffic.snapshot()));
        total
    }

    /// A live driver of `kind` for the next connection, which it is reserved for (it does not
    /// end before [`Driver::push`] has handed the connection over): round robin over the
    /// runtime's workers; a driver found ended is replaced by a fresh one first.
    fn pick(&self, kind: Kind) -> Arc<Driver> {
        let list = match kind {
            Kind::Task => &self.tasks,
            Kind::Thread => &self.threads,
        };
        let mut drivers = lock(list);
        if drivers.is_empty() {
            let workers = tokio::runtime::Handle::current()
                .metrics()
                .num_workers()
                .max(1);
            drivers.extend((0..workers).map(|_| self.spawn_driver(kind)));
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % drivers.len();
        match drivers[i].0.reserve() {
            Reserved::Yes => {}
            // Shutting down: the connection is closed as the ended driver drops it.
            _ if self.shared.shutdown.frame().is_some() => {}
            ended => {
                if ended == Reserved::Died {
                    tracing::error!("a callback driver died: starting a new one");
                }
                let (old, _) = std::mem::replace(&mut drivers[i], self.spawn_driver(kind));
                self.shared.retired.add(&old.traffic.snapshot());
                drivers[i].0.reserve();
            }
        }
        drivers[i].0.clone()
    }

    fn spawn_driver(&self, kind: Kind) -> (Arc<Driver>, JoinHandle<()>) {
        let driver = Arc::new(Driver {
            shared: self.shared.clone(),
            callbacks: self.callbacks.clone(),
            config: self.config.clone(),
            kind,
            ready: Mutex::new(Ready::default()),
            notify: Notify::new(),
            parked: AtomicBool::new(false),
            stopping: AtomicBool::new(self.shared.shutdown.frame().is_some()),
            orphaned: AtomicBool::new(false),
            aborted: AtomicBool::new(false),
            traffic: Traffic::default(),
        });
        let task = match kind {
            Kind::Task => tokio::spawn(driver.clone().run_task()),
            #[cfg(unix)]
            Kind::Thread => start_thread(driver.clone()),
        };
        (driver, task)
    }

    pub(super) fn adopt(
        &self,
        io: super::Io,
        request: OpenRequest,
        extensions: http::Extensions,
        deflate: Option<DeflateParams>,
        leftover: &[u8],
    ) {
        let kind = match io {
            #[cfg(unix)]
            Io::Plain(_) => Kind::Thread,
            _ => Kind::Task,
        };
        let driver = self.pick(kind);
        let config = &*self.config;
        let mut proto = Connection::with_deflate(Role::Server, config.protocol.clone(), deflate);
        let error = proto.handle_read(leftover).err().map(Error::Protocol);
        let mut state = ConnState::new(io, proto, core::now(), config);
        state.extensions = extensions;
        if let Some(error) = error {
            state.fail_with(error);
        }
        self.shared.live.fetch_add(1, Ordering::AcqRel);
        let conn = Arc::new(Driven::new(driver.clone(), state));
        let waiting = driver.push(conn, Some(request));
        #[cfg(unix)]
        if kind == Kind::Thread && waiting >= MAX_OPENING {
            // The driver thread is behind (it shares a core with this thread, or has more to
            // do): let it run rather than pile up handshake requests (~250 B each) it has yet to
            // open. A storm of 15,000 on one core piled up thousands, and the memory they held
            // stayed in the allocator's free lists: +20-30 B per idle connection measured.
            std::thread::yield_now();
        }
    }

    pub(super) fn shutdown(&self, frame: CloseFrame) {
        self.shared.shutdown.begin(frame);
        self.each(|driver, _| {
            driver.stopping.store(true, Ordering::Release);
            driver.wake();
        });
    }

    pub(super) async fn closed(&self) {
        loop {
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.shared.live.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    pub(super) fn abort(&self) {
        // Its connections are closed when a driver task is dropped, and when a driver thread
        // sees that its task was.
        self.each(|_, task| task.abort());
    }

    /// Aborts the task of driver task `i` (as a bug would kill it), for tests.
    #[cfg(test)]
    pub(crate) fn abort_driver(&self, i: usize) {
        lock(&self.tasks)[i].1.abort();
    }

    /// Driver thread `i`, for tests.
    #[cfg(all(test, unix))]
    pub(crate) fn thread_driver(&self, i: usize) -> Arc<Driver> {
        lock(&self.threads)[i].0.clone()
    }
}

/// Starts a driver thread, in the current runtime; returns the task that ends with it. That
/// task is the thread's tie to the runtime: aborting it (or the runtime shutting down, which
/// drops it) stops the thread, which closes its connections.
#[cfg(unix)]
fn start_thread(driver: Arc<Driver>) -> JoinHandle<()> {
    let runtime = tokio::runtime::Handle::current();
    let (done, ended) = tokio::sync::oneshot::channel::<()>();
    let started = EventLoop::new().and_then(|(poll, waker)| {
        lock(&driver.ready).waker = Some(Arc::new(waker));
        let thread = driver.clone();
        std::thread::Builder::new()
            .name("volley-driver".into())
            .spawn(move || {
                // Dropped when the thread ends, however it ends.
                let _done = done;
                thread.run_thread(poll, &runtime);
            })
    });
    if let Err(e) = started {
        // Its connections are closed, and the next one starts another.
        tracing::error!("could not start a callback driver thread: {e}");
        let mut ready = lock(&driver.ready);
        ready.exited = true;
        ready.waker = None;
    }
    let tie = StopOnDrop(driver);
    tokio::spawn(async move {
        let _tie = tie;
        let _ = ended.await;
    })
}

/// Stops a driver thread when dropped.
#[cfg(unix)]
struct StopOnDrop(Arc<Driver>);

#[cfg(unix)]
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.wake();
    }
}

/// Traffic counters of one driver (or of the dead drivers of a pool), on cache lines of their
/// own: the driver's task writes them for every message, other threads take its ready queue's
/// lock beside them.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct Traffic {
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    messages_sent: AtomicU64,
    bytes_sent: AtomicU64,
}

/// Adds `n` to a counter that only one thread writes at a time (a load and a store: no locked
/// read-modify-write, which was a tenth of the driver's own time per 20-byte echo; readers on
/// other threads still see whole values).
#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The `received_*`/`sent_*` counters of a driver are written by that driver only: from its
/// turn, and from the callbacks it runs (a [`Conn`](super::Conn) exists only there). A driver
/// task that moves between runtime threads is handed over with the synchronization of the
/// runtime's task queues, so one writer at a time sees the previous writer's stores.
impl Traffic {
    pub(super) fn received_message(&self) {
        bump(&self.messages_received, 1);
    }

    pub(super) fn received_bytes(&self, n: usize) {
        bump(&self.bytes_received, n as u64);
    }

    pub(super) fn sent_message(&self) {
        bump(&self.messages_sent, 1);
    }

    pub(super) fn sent_bytes(&self, n: usize) {
        if n > 0 {
            bump(&self.bytes_sent, n as u64);
        }
    }

    fn snapshot(&self) -> TrafficStats {
        TrafficStats {
            messages_received: self.messages_received.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// Adds a dead driver's counts: called from any thread (locked additions).
    fn add(&self, stats: &TrafficStats) {
        (self.messages_received).fetch_add(stats.messages_received, Ordering::Relaxed);
        (self.bytes_received).fetch_add(stats.bytes_received, Ordering::Relaxed);
        (self.messages_sent).fetch_add(stats.messages_sent, Ordering::Relaxed);
        (self.bytes_sent).fetch_add(stats.bytes_sent, Ordering::Relaxed);
    }
}

/// How a driver waits for its next turn.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// A tokio task, woken through [`Driver::notify`] and by its connections' tokio I/O.
    Task,
    /// A thread of its own blocking in its poll, woken by socket events and its poll's waker.
    #[cfg(unix)]
    Thread,
}

/// One driver: a task or a thread that runs the connections it was given.
pub(crate) struct Driver {
    shared: Arc<Shared>,
    callbacks: Arc<dyn Callbacks>,
    pub(super) config: Arc<Config>,
    kind: Kind,
    /// Connections woken since the driver last looked.
    ready: Mutex<Ready>,
    /// Wakes a driver task when `ready` gets a connection, shutdown begins or its pool is
    /// dropped.
    notify: Notify,
    /// A driver thread is about to wait in its poll, or waits there: what wakes it must use
    /// the poll's waker.
    parked: AtomicBool,
    /// Shutdown began: close every connection.
    stopping: AtomicBool,
    /// The pool was dropped: no connection will come; end once the last one is gone.
    orphaned: AtomicBool,
    /// A driver thread must end now (its task was aborted, or the runtime shut down), closing
    /// its connections.
    aborted: AtomicBool,
    /// What its connections received and sent: written by this driver only (no contention),
    /// read by [`Pool::traffic`].
    pub(super) traffic: Traffic,
}

#[derive(Default)]
struct Ready {
    queue: VecDeque<Arc<Driven>>,
    /// New connections with their handshake request (kept here, not in the connection, until
    /// [`Callbacks::on_open`] has seen it).
    opening: Vec<(Arc<Driven>, OpenRequest)>,
    /// Connections [`Pool::pick`] chose the driver for and not yet pushed: a driver thread
    /// without connections does not end while there are any.
    reserved: usize,
    /// The driver ended (its shutdown completed, it ran out of connections, or it died):
    /// connections pushed now are dropped, which closes them.
    exited: bool,
    /// It ended because it ran out of connections (a driver thread).
    retired: bool,
    /// A driver thread's poll's waker, while the thread runs.
    #[cfg(unix)]
    waker: Option<Arc<mio::Waker>>,
}

impl Ready {
    /// No connection waits: neither woken nor new.
    fn is_empty(&self) -> bool {
        self.queue.is_empty() && self.opening.is_empty()
    }
}

/// What [`Driver::reserve`] found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Reserved {
    Yes,
    /// The driver thread ran out of connections and ended.
    Retired,
    /// The driver ended otherwise (shutdown, or it died).
    Died,
}

impl Driver {
    /// Reserves the driver for a new connection (see [`Ready::reserved`]), unless it ended.
    fn reserve(&self) -> Reserved {
        let mut ready = lock(&self.ready);
        if !ready.exited {
            ready.reserved += 1;
            Reserved::Yes
        } else if ready.retired {
            Reserved::Retired
        } else {
            Reserved::Died
        }
    }

    /// Queues a woken connection, or a new one with its handshake request, for the driver's
    /// next turn. Returns how many new connections wait for it.
    pub(super) fn push(&self, conn: Arc<Driven>, request: Option<OpenRequest>) -> usize {
        let mut ready = lock(&self.ready);
        if request.is_some() {
            ready.reserved = ready.reserved.saturating_sub(1);
        }
        if ready.exited {
            drop(ready);
            if request.is_some() {
                // Never opened: dropping it closes the transport.
                self.shared.finished();
            }
            return 0;
        }
        let first = ready.is_empty();
        match request {
            Some(request) => ready.opening.push((conn, request)),
            None => ready.queue.push_back(conn),
        }
        let opening = ready.opening.len();
        // Only the first connection of a turn needs to wake the driver: it takes the whole
        // queue when it runs. A driver thread that is not parked looks at its queue before it
        // parks (and `parked` is set before that look: see `run_thread`).
        #[cfg(unix)]
        let waker = match self.kind {
            Kind::Thread if first && self.parked.load(Ordering::SeqCst) => ready.waker.clone(),
            _ => None,
        };
        drop(ready);
        match self.kind {
            Kind::Task if first => self.notify.notify_one(),
            Kind::Task => {}
            #[cfg(unix)]
            Kind::Thread => {
                if let Some(waker) = waker {
                    wake_poll(&waker);
                }
            }
        }
        opening
    }

    /// Makes the driver look at its flags (shutdown, an orphaned pool, an abort) soon.
    fn wake(&self) {
        match self.kind {
            Kind::Task => self.notify.notify_one(),
            #[cfg(unix)]
            Kind::Thread => {
                let waker = lock(&self.ready).waker.clone();
                if let Some(waker) = waker {
                    wake_poll(&waker);
                }
            }
        }
    }

    /// Whether it ended, and whether for want of connections; for tests.
    #[cfg(test)]
    pub(crate) fn state(&self) -> (bool, bool) {
        let ready = lock(&self.ready);
        (ready.exited, ready.retired)
    }

    /// Whether connections wait in the ready queue.
    fn has_ready(&self) -> bool {
        !lock(&self.ready).is_empty()
    }

    /// Ends a driver thread that ran out of connections, unless one came meanwhile.
    #[cfg(unix)]
    fn retire(&self) -> bool {
        let mut ready = lock(&self.ready);
        if ready.is_empty() && ready.reserved == 0 {
            ready.exited = true;
            ready.retired = true;
            ready.waker = None;
            true
        } else {
            false
        }
    }
}

/// Wakes a driver thread out of its poll.
#[cfg(unix)]
fn wake_poll(waker: &mio::Waker) {
    if let Err(e) = waker.wake() {
        tracing::error!("waking a callback driver thread failed: {e}");
    }
}

/// The connections a driver runs. Dropping it (the driver's task ends, panics or is aborted)
/// marks the driver dead and closes every connection left.
struct Registry {
    driver: Arc<Driver>,
    /// By index (a connection keeps its index while it lives: it is also its token in the
    /// driver's poll); `None` for free indexes.
    conns: Vec<Option<Arc<Driven>>>,
    /// Free indexes of `conns`.
    free: Vec<u32>,
}

impl Registry {
    /// Adds a connection; returns its index.
    fn insert(&mut self, conn: Arc<Driven>) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.conns[slot as usize] = Some(conn);
                slot
            }
            None => {
                self.conns.push(Some(conn));
                (self.conns.len() - 1) as u32
            }
        }
    }

    /// The connection at `slot`, if there is one.
    fn get(&self, slot: usize) -> Option<&Arc<Driven>> {
        self.conns.get(slot)?.as_ref()
    }

    fn is_empty(&self) -> bool {
        self.conns.len() == self.free.len()
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<Driven>> {
        self.conns.iter().flatten()
    }

    /// Removes the connection at `slot`.
    fn remove(&mut self, slot: usize) {
        if self.conns[slot].take().is_some() {
            self.free.push(slot as u32);
        }
        self.driver.shared.finished();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let unserved = {
            let mut ready = lock(&self.driver.ready);
            ready.exited = true;
            #[cfg(unix)]
            {
                ready.waker = None;
            }
            ready.queue.clear();
            std::mem::take(&mut ready.opening).len()
        };
        for _ in 0..unserved {
            self.driver.shared.finished();
        }
        let config = &*self.driver.config;
        for conn in self.conns.drain(..).flatten() {
            let mut st = lock(&conn.state);
            if st.io.take().is_some() {
                conn.open.store(false, Ordering::Release);
                conn.clear_outbox();
                let mut closed = Conn {
                    st: &mut st,
                    config,
                    me: &conn,
                    request: None,
                };
                let call = || {
                    let result = Err(Error::Timeout(Timeout::Drain));
                    self.driver.callbacks.on_close(&mut closed, result);
                };
                let _ = std::panic::catch_unwind(AssertUnwindSafe(call));
                st.drop_data();
            }
            drop(st);
            self.driver.shared.finished();
        }
    }
}

/// Why the driver runs a connection.
#[derive(Clone, Copy)]
enum Why<'r> {
    /// New, with its handshake request (for [`Callbacks::on_open`]).
    Opened(&'r OpenRequest),
    /// Woken by I/O or a handle.
    Woken,
    /// Its socket in the driver's poll had an event.
    #[cfg(unix)]
    Event(Readiness),
    /// Its timer (the deadline it was armed for) fell due.
    Timer(Micros),
}

/// An entry of a driver's timer queue: look at `conn` at `at` (earliest first).
struct TimerEntry {
    at: Micros,
    conn: Weak<Driven>,
}

impl PartialEq for TimerEntry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}

impl Eq for TimerEntry {}

impl PartialOrd for TimerEntry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TimerEntry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must come first.
        other.at.cmp(&self.at)
    }
}

/// What one turn of a driver works with.
struct Turn<'a> {
    registry: &'a mut Registry,
    timers: &'a mut BinaryHeap<TimerEntry>,
    /// When the timer queue holds more entries than this, those of closed connections are
    /// pruned (see [`prune_timers`]).
    prune_above: &'a mut usize,
    now: Micros,
    shutdown: Option<&'a CloseFrame>,
    /// A driver thread's poll, for plain TCP connections.
    #[cfg(unix)]
    poll: Option<&'a EventLoop>,
}

/// What a driver keeps from turn to turn.
struct Loop {
    registry: Registry,
    timers: BinaryHeap<TimerEntry>,
    prune_above: usize,
    /// The ready queue taken for a turn (kept for its allocation).
    batch: VecDeque<Arc<Driven>>,
    opening: Vec<(Arc<Driven>, OpenRequest)>,
    shutting_down: bool,
}

/// What a driver does after a turn.
enum Next {
    /// It is done: its connections are gone and it is shutting down or orphaned.
    Exit,
    /// More is ready (connections that used up their read budget, or woken meanwhile).
    Again,
    /// Nothing is ready: wait for a wake-up, an event or the earliest timer (if any).
    Wait(Option<Micros>),
}

impl Driver {
    fn start(self: &Arc<Self>) -> Loop {
        Loop {
            registry: Registry {
                driver: self.clone(),
                conns: Vec::new(),
                free: Vec::new(),
            },
            timers: BinaryHeap::new(),
            prune_above: PRUNE_MIN,
            batch: VecDeque::new(),
            opening: Vec::new(),
            shutting_down: false,
        }
    }

    /// A driver task: waits for its notify, the earliest timer, or (its connections' tokio
    /// I/O waking them into) its ready queue.
    async fn run_task(self: Arc<Self>) {
        let mut state = self.start();
        let mut sleep: Option<Pin<Box<Sleep>>> = None;
        // Kept across turns and replaced only once it fired: a fresh `Notified` per turn
        // registered and unregistered a waiter every time the driver went back to wait.
        let notified = self.notify.notified();
        tokio::pin!(notified);
        loop {
            #[cfg(unix)]
            let next = self.turn(&mut state, None);
            #[cfg(not(unix))]
            let next = self.turn(&mut state);
            match next {
                Next::Exit => return,
                // Connections that used up their read budget woke themselves: let the runtime
                // poll for I/O and run its other tasks (accepting, other drivers) first.
                Next::Again => tokio::task::yield_now().await,
                Next::Wait(Some(at)) => {
                    let at = core::instant(at);
                    let timer = sleep.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                    if timer.deadline() != at {
                        timer.as_mut().reset(at);
                    }
                    // `biased`: the order does not matter (the next turn looks at everything),
                    // and polling in order spares the random start.
                    tokio::select! {
                        biased;
                        () = notified.as_mut() => notified.set(self.notify.notified()),
                        () = timer.as_mut() => {}
                    }
                }
                Next::Wait(None) => {
                    notified.as_mut().await;
                    notified.set(self.notify.notified());
                }
            }
        }
    }

    /// A driver thread: blocks in its poll until a socket event, its waker or the earliest
    /// timer, within the runtime (callbacks may spawn tasks and arm tokio timers). Ends when
    /// its task is aborted (its connections are closed), and after [`LINGER`] without
    /// connections.
    #[cfg(unix)]
    fn run_thread(self: Arc<Self>, mut poll: EventLoop, runtime: &tokio::runtime::Handle) {
        let _runtime = runtime.enter();
        let mut state = self.start();
        let mut full = false;
        let mut empty_since: Option<Micros> = None;
        loop {
            if self.aborted.load(Ordering::Acquire) {
                // `state`'s registry closes the connections.
                return;
            }
            let next = self.turn(&mut state, Some(&poll));
            let timeout = match next {
                Next::Exit => return,
                Next::Again => Some(Duration::ZERO),
                Next::Wait(_) if full => Some(Duration::ZERO),
                Next::Wait(mut at) => {
                    let now = core::now();
                    if state.registry.is_empty() {
                        let end = empty_since.get_or_insert(now).saturating_add(LINGER);
                        if now >= end && self.retire() {
                            return;
                        }
                        at = Some(at.map_or(end, |at| at.min(end)));
                    } else {
                        empty_since = None;
                    }
                    // Set before the last look at the queue: a push after that look sees it
                    // and wakes the poll (see `push`).
                    self.parked.store(true, Ordering::SeqCst);
                    if self.has_ready() || self.aborted.load(Ordering::Acquire) {
                        Some(Duration::ZERO)
                    } else {
                        // Rounded up to whole milliseconds by the poll: never early.
                        at.map(|at| Duration::from_micros(at.saturating_sub(now)))
                    }
                }
            };
            full = poll.wait(timeout);
            self.parked.store(false, Ordering::Relaxed);
        }
    }

    /// One turn: takes the ready queue, opens new connections, runs those the poll's events
    /// (of a driver thread), the queue and due timers name, and says what next.
    fn turn(&self, state: &mut Loop, #[cfg(unix)] poll: Option<&EventLoop>) -> Next {
        {
            let mut ready = lock(&self.ready);
            std::mem::swap(&mut ready.queue, &mut state.batch);
            std::mem::swap(&mut ready.opening, &mut state.opening);
        }
        let now = core::now();
        // Connections run from the poll count too: one that used up its read budget is in the
        // ready queue now.
        #[cfg(unix)]
        let polled = poll.is_some_and(EventLoop::has_events);
        #[cfg(not(unix))]
        let polled = false;
        let busy = !state.batch.is_empty() || !state.opening.is_empty() || polled;
        let frame = self.shared.shutdown.frame();
        if !state.shutting_down
            && self.stopping.load(Ordering::Acquire)
            && let Some(frame) = frame
        {
            state.shutting_down = true;
            for conn in state.registry.iter() {
                let _ = lock(&conn.state).proto.close(Some(frame.clone()));
                if !conn.queued.swap(true, Ordering::AcqRel) {
                    state.batch.push_back(conn.clone());
                }
            }
        }
        let mut turn = Turn {
            registry: &mut state.registry,
            timers: &mut state.timers,
            prune_above: &mut state.prune_above,
            now,
            shutdown: frame,
            #[cfg(unix)]
            poll,
        };
        for (conn, request) in state.opening.drain(..) {
            conn.queued.store(false, Ordering::Release);
            self.run_conn(&conn, &mut turn, Why::Opened(&request));
        }
        #[cfg(unix)]
        if let Some(poll) = poll {
            for (slot, read) in poll.events() {
                if let Some(conn) = turn.registry.get(slot).cloned() {
                    self.run_conn(&conn, &mut turn, Why::Event(read));
                }
            }
        }
        while let Some(conn) = state.batch.pop_front() {
            conn.queued.store(false, Ordering::Release);
            self.run_conn(&conn, &mut turn, Why::Woken);
        }
        while turn.timers.peek().is_some_and(|t| t.at <= now) {
            let Some(entry) = turn.timers.pop() else {
                break;
            };
            if let Some(conn) = entry.conn.upgrade() {
                self.run_conn(&conn, &mut turn, Why::Timer(entry.at));
            }
        }
        // A burst of new connections (a storm: the accept loop runs beside a driver thread, not
        // between its turns) grows these to thousands of entries, a handshake request each
        // (~250 B): not kept once handled.
        if state.opening.capacity() > KEEP_QUEUED {
            state.opening.shrink_to(KEEP_QUEUED);
        }
        if state.batch.capacity() > KEEP_QUEUED {
            state.batch.shrink_to(KEEP_QUEUED);
        }
        let ending = state.shutting_down || self.orphaned.load(Ordering::Acquire);
        if ending && state.registry.is_empty() {
            if self.has_ready() {
                return Next::Again;
            }
            // `registry`'s drop marks the driver as exited.
            return Next::Exit;
        }
        if busy && self.has_ready() {
            // With nothing left, the driver waits instead: yielding after every turn made the
            // runtime poll epoll once per turn, with few events each time.
            return Next::Again;
        }
        Next::Wait(state.timers.peek().map(|t| t.at))
    }

    /// Runs one connection: registers it if new (calling `on_open` with its request), acts on
    /// its timer if that is `why` and still its deadline, drives its I/O and callbacks, and
    /// re-arms its timer or finishes it.
    fn run_conn(&self, conn: &Arc<Driven>, turn: &mut Turn<'_>, why: Why<'_>) {
        let config = &*self.config;
        let now = turn.now;
        let mut guard = lock(&conn.state);
        let st = &mut *guard;
        if st.io.is_none() {
            return;
        }
        if st.slot == NEW {
            let slot = turn.registry.insert(conn.clone());
            #[cfg(unix)]
            if let Some(Io::Plain(tcp)) = st.io.as_mut() {
                let registered = match turn.poll {
                    Some(poll) => tcp.register(poll, slot as usize),
                    None => Err(std::io::Error::other("the driver has no poll")),
                };
                if let Err(e) = registered {
                    // Never opened: closed without callbacks, as if the driver were gone.
                    tracing::error!("registering a connection in its driver's poll failed: {e}");
                    st.io = None;
                    conn.open.store(false, Ordering::Release);
                    drop(guard);
                    turn.registry.remove(slot as usize);
                    return;
                }
            }
            st.slot = slot;
            let mut opened = Conn {
                st: &mut *st,
                config,
                me: conn,
                request: match why {
                    Why::Opened(request) => Some(request),
                    _ => None,
                },
            };
            let call = || self.callbacks.on_open(&mut opened);
            if std::panic::catch_unwind(AssertUnwindSafe(call)).is_err() {
                st.fail_callback();
            }
            if let Some(frame) = turn.shutdown {
                let _ = st.proto.close(Some(frame.clone()));
            }
        }
        #[cfg(unix)]
        if let (Why::Event(readiness), Some(Io::Plain(tcp))) = (why, st.io.as_mut()) {
            tcp.on_event(readiness);
        }
        if let Why::Timer(at) = why {
            if st.armed != at {
                // A deadline that was replaced by an earlier one.
                return;
            }
            st.armed = NEVER;
            st.on_timer(conn, now, config);
            if st.take_app_timer(now) {
                let mut timed = Conn {
                    st: &mut *st,
                    config,
                    me: conn,
                    request: None,
                };
                let call = || self.callbacks.on_timer(&mut timed);
                if std::panic::catch_unwind(AssertUnwindSafe(call)).is_err() {
                    st.fail_callback();
                }
            }
        }
        // A driver thread runs its plain TCP connections again on their sockets' events, never
        // from their wakers (see `evloop`): those need none, which spares two reference-count
        // updates per run. The rest (TLS, other transports, driver tasks) are woken through
        // the runtime's I/O.
        #[cfg(unix)]
        let own_poll = turn.poll.is_some() && matches!(st.io, Some(Io::Plain(_)));
        #[cfg(not(unix))]
        let own_poll = false;
        let owned;
        let waker = if own_poll {
            Waker::noop()
        } else {
            owned = Waker::from(conn.clone());
            &owned
        };
        let mut cx = Context::from_waker(waker);
        match st.drive(conn, &mut cx, now, &*self.callbacks, config) {
            None => {
                // Never at or before `now`: a timer that is due but not acted on must not make
                // the driver's timer loop spin.
                let at = st.deadline(config).max(now + 1);
                if at < st.armed {
                    st.armed = at;
                    let conn = Arc::downgrade(conn);
                    turn.timers.push(TimerEntry { at, conn });
                }
            }
            Some(result) => {
                conn.open.store(false, Ordering::Release);
                st.io = None;
                st.proto.release_idle_buffers();
                conn.clear_outbox();
                let slot = st.slot as usize;
                let mut closed = Conn {
                    st: &mut *st,
                    config,
                    me: conn,
                    request: None,
                };
                let call = || self.callbacks.on_close(&mut closed, result);
                let _ = std::panic::catch_unwind(AssertUnwindSafe(call));
                st.drop_data();
                drop(guard);
                turn.registry.remove(slot);
                prune_timers(turn.timers, turn.prune_above);
            }
        }
    }
}

/// Drops the timer entries of closed connections once they are many. An entry stays in the
/// queue until its deadline (a keep-alive ping 20 s away by default) and its `Weak` keeps the
/// closed connection's allocation until then: under churn that was up to rate × ping interval
/// connections' worth of memory held for nothing. Pruning only when the queue has doubled since
/// the last pruning keeps the cost at O(1) per close, amortized.
fn prune_timers(timers: &mut BinaryHeap<TimerEntry>, prune_above: &mut usize) {
    if timers.len() > *prune_above {
        timers.retain(|t| t.conn.strong_count() > 0);
        *prune_above = (2 * timers.len()).max(PRUNE_MIN);
    }
}

/// The smallest timer queue that is pruned of closed connections' entries.
const PRUNE_MIN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_queue_pops_the_earliest_deadline_first() {
        let mut heap = BinaryHeap::new();
        for at in [3000, 1000, 2000] {
            heap.push(TimerEntry {
                at,
                conn: Weak::new(),
            });
        }
        let order: Vec<_> = std::iter::from_fn(|| heap.pop().map(|t| t.at)).collect();
        assert_eq!(order, [1000, 2000, 3000]);
    }

    #[test]
    fn closed_connections_timer_entries_are_pruned_once_many() {
        // Entries whose connection is gone (a `Weak` that no longer upgrades).
        let dead = |at| TimerEntry {
            at,
            conn: Weak::new(),
        };
        let mut heap: BinaryHeap<TimerEntry> = (0..PRUNE_MIN as u64).map(dead).collect();
        let mut above = PRUNE_MIN;
        prune_timers(&mut heap, &mut above);
        assert_eq!(heap.len(), PRUNE_MIN, "not yet many: left alone");
        heap.push(dead(1));
        prune_timers(&mut heap, &mut above);
        assert!(heap.is_empty());
        assert_eq!(above, PRUNE_MIN);
    }
}
