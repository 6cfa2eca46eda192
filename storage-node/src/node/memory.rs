//! Handing memory the allocator holds but no longer uses back to the system.
//!
//! glibc's malloc gives freed memory back to the kernel only from the top
//! of a heap; what is freed below live blocks stays resident. A node that
//! took a burst (seeding, a snapshot, a large batch) keeps that peak for
//! good, and its RSS creeps up with use while its heap does not (see
//! docs/performance.md, "Memory"). Every [`TRIM_EVERY`] in which the node
//! applied at most [`QUIET_ENTRIES`] entries, [`run`] asks malloc to
//! release every free page (`malloc_trim`), on a blocking thread, since it
//! walks each arena under its lock. Under steady writes it does not: the
//! pages would be taken again at once, and trimming every 10 s at 64
//! clients cost a few percent of kv-put throughput in side-by-side runs.
//! And so that less is held in the first place, a node allocates from one
//! arena ([`use_one_arena`]).

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
        if tokio::task::spawn_blocking(release_free_pages).await.is_err() {
            return;
        }
        let after = resident_memory_bytes();
        let released = before.zip(after).map(|(before, after)| before.saturating_sub(after)).unwrap_or(0);
        tracing::debug!(
            took_us = started.elapsed().as_micros() as u64,
            released_kb = released / 1024,
            "free heap pages handed back"
        );
    }
}

/// Has malloc serve every thread from one arena, unless the operator set
/// `MALLOC_ARENA_MAX`; a no-op where the allocator is not glibc's. Call it
/// before the process starts threads.
///
/// glibc gives each thread that meets a busy arena one of its own, up to 8
/// per core, and a block freed stays in the arena it came from. A leader's
/// reads page sled's leaves in and out on whichever thread serves them,
/// so long-lived cache nodes and short-lived request buffers interleave in
/// several arenas, and the pages they share stay resident when the
/// buffers go: a leader held ~30 MB of free blocks in its arenas where a
/// follower held ~12 MB (`malloc_stats` after the memory bench). On two
/// cores at most two threads allocate at once, so one arena costs little
/// waiting (docs/performance.md, "One malloc arena").
pub fn use_one_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a malloc parameter; M_ARENA_MAX limits the
    // arenas created from now on.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// Asks malloc to release every free page it holds; a no-op where the
/// allocator is not glibc's.
fn release_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only takes malloc's own locks and changes no
    // allocation that is in use.
    unsafe {
        libc::malloc_trim(0);
    }
}
