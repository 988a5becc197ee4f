//! Steady-state echo served by callbacks (`volley::callback`) allocates nothing. Plain TCP
//! connections of callback routes run on a driver thread of their own, not on the thread that
//! runs the server's runtime, so a per-thread counter (tests/zero_alloc.rs) would look at the
//! wrong thread: this binary counts every allocation of the process instead (`stats_alloc`),
//! from the callback that sees the last warm-up message to the one that sees the last measured
//! message. While it counts, the other threads wait without allocating: the test's own client
//! (pre-built frames, a fixed reply buffer), the runtime's thread (parked in `block_on`) and
//! the test harness (one test in this binary, so nothing else runs or reports meanwhile).

#[path = "support/alloc_echo.rs"]
mod alloc_echo;

use std::alloc::System;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use alloc_echo::{MEASURED, WARMUP, run_with, server_thread};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::sync::Notify;
use volley::callback::{Callbacks, Conn};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Allocations and reallocations of the whole process so far.
fn allocations() -> u64 {
    let stats = GLOBAL.stats();
    (stats.allocations + stats.reallocations) as u64
}

/// What the echo callbacks share with their server thread.
struct Echo {
    copy: bool,
    seen: AtomicUsize,
    /// The process's count when the last warm-up message was seen, then what the measured
    /// messages added.
    counted: AtomicU64,
    measured: Notify,
    closed: Notify,
}

/// The callbacks: a newtype, since `Endpoint::callbacks` takes them by value.
struct Shared(Arc<Echo>);

impl Callbacks for Shared {
    fn on_message(&self, conn: &mut Conn<'_>, message: volley::Message) {
        let message = if self.0.copy {
            // What an application that copies payloads would do: must be counted.
            volley::Message::binary(message.payload().to_vec())
        } else {
            message
        };
        let _ = conn.send(message);
        match self.0.seen.fetch_add(1, Ordering::Relaxed) + 1 {
            WARMUP => self.0.counted.store(allocations(), Ordering::Relaxed),
            n if n == WARMUP + MEASURED => {
                let start = self.0.counted.load(Ordering::Relaxed);
                self.0
                    .counted
                    .store(allocations() - start, Ordering::Relaxed);
                self.0.measured.notify_one();
            }
            _ => {}
        }
    }

    fn on_close(&self, _conn: &mut Conn<'_>, _result: volley::Result<Option<volley::CloseFrame>>) {
        self.0.closed.notify_one();
    }
}

/// An echo at "/" served by callbacks, on a current-thread runtime of its own thread.
fn callback_echo_server(copy: bool) -> (u16, mpsc::Receiver<u64>) {
    server_thread(move |rt, listener, tx| {
        let echo = Arc::new(Echo {
            copy,
            seen: AtomicUsize::new(0),
            counted: AtomicU64::new(0),
            measured: Notify::new(),
            closed: Notify::new(),
        });
        rt.block_on(async {
            let server = volley::Server::from_listener(listener)
                .route("/", volley::Endpoint::callbacks(Shared(echo.clone())));
            tokio::spawn(server.run());
            echo.measured.notified().await;
            let _ = tx.send(echo.counted.load(Ordering::Relaxed));
            // Keep serving (the last echoes may still be queued) until the client goes away.
            let _ = tokio::time::timeout(Duration::from_secs(10), echo.closed.notified()).await;
        });
    })
}

/// One test, so that the harness runs nothing else while the process's count is taken.
#[test]
fn callback_echo_allocates_nothing_and_the_count_sees_a_handler_that_copies() {
    let counted = run_with(callback_echo_server, 0x1, 20, 1, false);
    assert_eq!(counted, 0, "allocations for {MEASURED} echoes of 20 B text");
    let counted = run_with(callback_echo_server, 0x2, 16 * 1024, 2, false);
    assert_eq!(
        counted, 0,
        "allocations for {MEASURED} echoes of 16 KiB binary"
    );
    // The same with one allocation per message in the callback: proves the count is taken
    // where the callbacks run.
    let counted = run_with(callback_echo_server, 0x2, 20, 1, true);
    assert!(counted >= MEASURED as u64, "counted {counted}");
}
