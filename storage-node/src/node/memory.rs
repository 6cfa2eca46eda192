//! The allocator of the server processes, and handing memory it holds but
//! no longer uses back to the system.
//!
//! Storage nodes and portals allocate with mimalloc ([`Allocator`], made the
//! global allocator by each server binary). Under load glibc's malloc took a
//! seventh of the machine (`_int_malloc`, `_int_free`, `malloc_consolidate`:
//! sled copies a leaf for every insert, and every request builds and drops
//! its buffers); with mimalloc the same builds wrote 11–17% more
//! (docs/performance.md, "mimalloc"). Its defaults hold more resident
//! memory than glibc did, so [`configure`] turns transparent huge pages off
//! for the process (the crate is also built without asking for them), and
//! mimalloc's own short purge delay hands freed pages back.
//!
//! Every [`TRIM_EVERY`] in which the node applied at most
//! [`QUIET_ENTRIES`] entries, [`run`] also asks the allocator to collect
//! what the node's main thread, which makes most allocations, still holds
//! free. Under steady writes it does not: the pages would be taken again at
//! once.

use std::time::{Duration, Instant};

use crate::metrics::resident_memory_bytes;

/// How often the node considers handing free heap pages back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);
/// Most entries applied in one [`TRIM_EVERY`] for the interval to count as
/// quiet (100 a second; a single client writing sends about 800).
pub const QUIET_ENTRIES: u64 = 1_000;

/// Releases free heap pages after every quiet [`TRIM_EVERY`], for as long
/// as the node runs. `applied_index` is the state machine's last applied
/// log index.
pub async fn run(applied_index: impl Fn() -> u64) {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    let mut last = applied_index();
    loop {
        ticks.tick().await;
        let now = applied_index();
        let applied = now.saturating_sub(last);
        last = now;
        if applied > QUIET_ENTRIES {
            continue;
        }
        let started = Instant::now();
        let before = resident_memory_bytes();
        release_free_pages();
        let after = resident_memory_bytes();
        let released = before.zip(after).map(|(before, after)| before.saturating_sub(after)).unwrap_or(0);
        tracing::debug!(
            took_us = started.elapsed().as_micros() as u64,
            released_kb = released / 1024,
            "free heap pages handed back"
        );
    }
}

/// The global allocator of the storage node and portal binaries:
/// `#[global_allocator] static ALLOCATOR: Allocator = Allocator;`.
pub use mimalloc::MiMalloc as Allocator;

/// Settles how the process uses memory; call it first thing in `main`,
/// before the process starts threads. Turns transparent huge pages off for
/// this process (where the kernel hands them out to every process, a
/// huge page each allocator region touches would stay resident); a no-op
/// elsewhere than Linux.
pub fn configure() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's memory
    // map; it changes no memory in use.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Asks the allocator to hand back the free memory of the calling thread's
/// heap and of threads that have exited.
fn release_free_pages() {
    // SAFETY: mi_collect frees only memory no allocation uses.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
}
