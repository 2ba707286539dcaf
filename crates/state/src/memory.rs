//! Giving memory back to the kernel after bursts. The allocator (the binary's choice, see
//! [`set_release_free_memory`]) keeps freed pages resident until later allocations on the same
//! thread let it purge them; a worker that just closed thousands of connections and then goes
//! quiet would keep their memory (tasks, socket registrations, buffers) in RSS for as long as
//! it stays quiet. So once a burst is over, a worker asks the allocator to release what is
//! free: [`release_soon`] after parking or unparking connections, [`connection_ended`] after
//! connections end.
//!
//! The release runs on the worker, [`RELEASE_DELAY`] after the first request of a burst, and
//! again every [`RELEASE_DELAY`] while requests keep coming, so the last one runs at least
//! that long after the burst's last request (when what it freed is free): at most once per
//! [`RELEASE_DELAY`] per worker whatever the rate of requests.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// How long after the first request of a burst the release runs (ends and parks come in
/// bursts; a task's memory is freed when the reactor next turns).
pub const RELEASE_DELAY: Duration = Duration::from_millis(100);

/// Connections ended on a worker before a release is asked for: a few connections ending
/// free little, so a steady trickle of ends does not cost a release every
/// [`RELEASE_DELAY`].
pub const ENDED_PER_RELEASE: u32 = 64;

static RELEASE_FREE_MEMORY: OnceLock<fn()> = OnceLock::new();

thread_local! {
    static PENDING: Cell<bool> = const { Cell::new(false) };
    static AGAIN: Cell<bool> = const { Cell::new(false) };
    static ENDED: Cell<u32> = const { Cell::new(0) };
}

/// Registers the function that returns the calling thread's freed allocator pages to the
/// kernel (the binary's allocator, e.g. mimalloc's `mi_collect`). Only the first call counts;
/// without one, nothing is released.
pub fn set_release_free_memory(f: fn()) {
    let _ = RELEASE_FREE_MEMORY.set(f);
}

/// Schedules a release on this worker [`RELEASE_DELAY`] from now; when one is pending, asks
/// for another [`RELEASE_DELAY`] after it. Must be called from a task of the worker's
/// `LocalSet` (it spawns a local task).
pub fn release_soon() {
    let Some(&release) = RELEASE_FREE_MEMORY.get() else {
        return;
    };
    if PENDING.replace(true) {
        AGAIN.set(true);
        return;
    }
    tokio::task::spawn_local(async move {
        loop {
            tokio::time::sleep(RELEASE_DELAY).await;
            ENDED.set(0);
            release();
            if !AGAIN.replace(false) {
                break;
            }
        }
        PENDING.set(false);
    });
}

/// Counts a connection that ended on this worker; every [`ENDED_PER_RELEASE`] ends
/// schedule a release. Must be called from a task of the worker's `LocalSet`.
pub fn connection_ended() {
    let n = ENDED.get() + 1;
    ENDED.set(n);
    if n >= ENDED_PER_RELEASE {
        release_soon();
    }
}
