//! The allocator of the server processes, and handing memory it holds but
//! no longer uses back to the system.
//!
//! Storage nodes and portals allocate with mimalloc ([`Allocator`], made the
//! global allocator by each server binary). Under load glibc's malloc took a
//! seventh of the machine (`_int_malloc`, `_int_free`, `malloc_consolidate`:
//! sled copies a leaf for every insert, and every request builds and drops
//! its buffers); with mimalloc the same builds wrote 11–17% more
//! (docs/performance.md, "mimalloc"). Its defaults hold more resident
//! memory than glibc did, so [`disable_transparent_huge_pages`] keeps the
//! process off huge pages (the crate is also built not to ask for them),
//! and mimalloc's own short purge delay hands freed pages back.
//!
//! Every [`TRIM_EVERY`] in which the node applied at most
//! [`QUIET_ENTRIES`] entries, [`run`] also asks the allocator to collect
//! what it still holds free. mimalloc collects the heap of the thread that
//! asks (and the heaps of threads that have exited), so `run` asks on the
//! runtime thread itself, which makes most allocations when the node runs
//! on one thread, as it does by default; with `--worker-threads`, on
//! whichever worker runs it. Under steady writes it does not ask: the
//! pages would be taken again at once.

use std::time::{Duration, Instant};

use crate::metrics::resident_memory_bytes;

/// The global allocator of the storage node and portal binaries:
/// `#[global_allocator] static ALLOCATOR: Allocator = Allocator;`. [`run`]
/// frees memory through it, so a binary without it trims nothing.
pub use mimalloc::MiMalloc as Allocator;

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

/// Turns transparent huge pages off for this process: where the kernel
/// hands them to every process, each 2 MiB the allocator touches would stay
/// resident whole. Call it at the start of `main`, once tracing is set up:
/// a failure is a warning (the process runs on, holding more memory). A
/// no-op elsewhere than Linux.
pub fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        // SAFETY: PR_SET_THP_DISABLE only sets a flag on this process's
        // memory map; it changes no memory in use.
        if unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) } != 0 {
            let error = std::io::Error::last_os_error();
            tracing::warn!(%error, "could not turn transparent huge pages off; resident memory may be higher");
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_is_kept_off_transparent_huge_pages() {
        disable_transparent_huge_pages();
        let unused: libc::c_ulong = 0;
        // SAFETY: PR_GET_THP_DISABLE only reads the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, unused, unused, unused, unused) };
        assert_eq!(flag, 1);
    }
}
