//! How much memory sled holds for a given `cache_capacity`, with the write
//! pattern of a storage node: 100,000 atomic batches, each writing a row,
//! the applied index and a change-feed event, and dropping the event that
//! fell out of retention.
//!
//! ```sh
//! cargo run --release -p storage-node --example sled_cache_memory -- 4194304
//! ```
//!
//! Runs vary with how far sled's flusher has got. On the 2-core machine of
//! the README it printed, resident after the batches (after a flush): 2 MiB
//! cache → 29-32 MB; 4 MiB → 52-113 MB (52-60 MB); 16 MiB → 258-304 MB
//! (127-142 MB). In a storage node holding 100,000 products, 16 → 4 MiB cut
//! ~27 MB, while 4 → 2 MiB saved only ~2 MB and slowed reads, so a node's
//! sled cache is 4 MiB.

/// This process's resident set, as `/proc/self/status` reports it.
fn resident() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("VmRSS")).unwrap_or("VmRSS: unknown").split_whitespace().skip(1).collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let cache: u64 = match std::env::args().nth(1) {
        Some(bytes) => bytes.parse()?,
        None => 4 << 20,
    };
    let dir = tempfile::tempdir()?;
    let db = sled::Config::new().path(dir.path()).cache_capacity(cache).flush_every_ms(Some(1000)).open()?;
    let tree = db.open_tree("state")?;
    println!("cache_capacity {cache} bytes; resident at open: {}", resident());
    let value = vec![7u8; 200];
    for i in 0..100_000u64 {
        let mut batch = sled::Batch::default();
        batch.insert(format!("r/product/{i:012}").as_bytes(), value.clone());
        batch.insert(b"applied".as_slice(), i.to_be_bytes().to_vec());
        batch.insert(format!("e/{i:012}").as_bytes(), value.clone());
        if let Some(expired) = i.checked_sub(20_000) {
            batch.remove(format!("e/{expired:012}").as_bytes());
        }
        tree.apply_batch(batch)?;
    }
    println!("resident after 100,000 batches: {}", resident());
    db.flush()?;
    println!("resident after a flush: {}; on disk: {} bytes", resident(), db.size_on_disk()?);
    Ok(())
}
