//! Handing memory the allocator holds but no longer uses back to the system.
//!
//! glibc's malloc gives freed memory back to the kernel only from the top
//! of a heap; what is freed below live blocks stays resident. A node that
//! took a burst (seeding, a snapshot, a large batch) keeps that peak for
//! good, and its RSS creeps up with use while its heap does not (see
//! docs/performance.md, "Memory"). Every [`TRIM_EVERY`], [`run`] asks malloc
//! to release every free page (`malloc_trim`), on a blocking thread, since
//! it walks each arena under its lock.

use std::time::{Duration, Instant};

/// How often free heap pages are handed back.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Releases free heap pages every [`TRIM_EVERY`], for as long as the node runs.
pub async fn run() {
    let mut ticks = tokio::time::interval(TRIM_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let before = resident_bytes();
        if tokio::task::spawn_blocking(release_free_pages).await.is_err() {
            return;
        }
        let after = resident_bytes();
        let released = before.zip(after).map(|(before, after)| before.saturating_sub(after)).unwrap_or(0);
        tracing::debug!(
            took_us = started.elapsed().as_micros() as u64,
            released_kb = released / 1024,
            "free heap pages handed back"
        );
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

/// The process's resident set, in bytes, where /proc tells it.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
