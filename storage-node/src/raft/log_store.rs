//! The Raft log: openraft's `RaftLogStorage` over the `raft-log` crate.
//!
//! `raft-log` is a chunked write-ahead log made for Raft. Appends, votes,
//! truncations and purges are buffered records; `flush(true, callback)` hands
//! them to a worker thread that writes and fdatasyncs them, then fires the
//! callback. The one invariant this module exists to keep:
//!
//! > openraft is told an append is durable (`IOFlushed::io_completed`)
//! > only from that callback, i.e. after the fdatasync.
//!
//! Many appends queued while a sync is running share the next sync (group
//! commit happens in the worker). A vote is saved the same way and the caller
//! waits for its callback, because a vote must never be forgotten.
//!
//! Replication reads through [`RaftLogReader::limited_get_log_entries`],
//! which stops at [`MAX_APPEND_BYTES`] (always at least one entry), so one
//! AppendEntries stays small; the state machine applies through a chunked
//! `entries_stream`, which takes the WAL lock once per chunk rather than over
//! a whole committed range.
//!
//! Log ids, votes and payloads are stored bincode-encoded through the small
//! [`Encoded`] wrapper, which gives them the `codeq` codec `raft-log` asks for.

use std::fmt::Debug;
use std::io::{self, Read, Write};
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::Stream;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use raft_log::api::raft_log_writer::RaftLogWriter;
use raft_log::codeq::{Decode, Encode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::limits::MAX_APPEND_BYTES;
use crate::types::{Entry, EntryPayload, LogId, TypeConfig, Vote};

/// Buffer for replaying one WAL chunk at start-up.
const WAL_READ_BUFFER_BYTES: usize = 4 * 1024 * 1024;
/// Size at which a WAL chunk is closed; purging frees whole chunks only.
///
/// This is also a memory bound: raft-log keeps every entry of the open
/// chunk in memory (its entry cache may evict only entries of closed
/// chunks), whatever [`LOG_CACHE_BYTES`] says. With 64 MiB chunks a node
/// held 118-130 MB after 100,000 products were written to its shard; with
/// 4 MiB, 87-95 MB. Closing a chunk costs one more fdatasync and a new
/// file, every few seconds at full write load.
const WAL_CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Entries of closed chunks kept in memory for replication to followers
/// (a follower that is not far behind reads the open chunk's, which are
/// all in memory anyway).
const LOG_CACHE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes an entry occupies in that cache beyond its encoded size.
const ENTRY_OVERHEAD_BYTES: u64 = 128;
/// At most this many entries in that cache.
const LOG_CACHE_ENTRIES: usize = 50_000;
/// Entries the apply stream reads per WAL lock.
const APPLY_CHUNK_ENTRIES: u64 = 512;

/// A value stored in the WAL as a length-prefixed bincode document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Encoded<T>(pub T);

impl<T: Serialize> Encode for Encoded<T> {
    fn encode<W: Write>(&self, mut w: W) -> Result<usize, io::Error> {
        let bytes = crate::codec::encode(&self.0);
        let len = u32::try_from(bytes.len()).map_err(io::Error::other)?;
        w.write_all(&len.to_be_bytes())?;
        w.write_all(&bytes)?;
        Ok(4 + bytes.len())
    }
}

impl<T: DeserializeOwned> Decode for Encoded<T> {
    fn decode<R: Read>(mut r: R) -> Result<Self, io::Error> {
        let mut len = [0u8; 4];
        r.read_exact(&mut len)?;
        let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut bytes)?;
        Ok(Encoded(crate::codec::decode_stored(&bytes)?))
    }
}

/// Whom the WAL worker tells that a flush is on disk.
pub enum FlushNotice {
    /// openraft, for an append: the entries are durable. With when the
    /// append was handed over, for the metrics.
    Appended(IOFlushed<TypeConfig>, std::time::Instant),
    /// A task waiting for a vote or truncation to be durable.
    Waiter(oneshot::Sender<io::Result<()>>),
}

impl raft_log::Callback for FlushNotice {
    fn send(self, result: Result<(), io::Error>) {
        match self {
            FlushNotice::Appended(flushed, appended) => {
                crate::metrics::node().log_append_durable.observe(appended.elapsed().as_secs_f64());
                flushed.io_completed(result)
            }
            FlushNotice::Waiter(tx) => {
                let _ = tx.send(result);
            }
        }
    }
}

impl Debug for FlushNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FlushNotice::Appended(..) => f.write_str("FlushNotice::Appended"),
            FlushNotice::Waiter(_) => f.write_str("FlushNotice::Waiter"),
        }
    }
}

/// The type family of raftshop's WAL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalTypes;

impl raft_log::Types for WalTypes {
    type LogId = Encoded<LogId>;
    type LogPayload = Encoded<EntryPayload>;
    type Vote = Encoded<Vote>;
    type Callback = FlushNotice;
    type UserData = Encoded<()>;

    fn log_index(log_id: &Self::LogId) -> u64 {
        log_id.0.index
    }

    /// What an entry counts against the entry cache's byte budget: its
    /// encoded size plus the in-memory overhead of its allocations. Batched
    /// entries hold hundreds of commands, so a flat figure let the cache
    /// grow to several times its budget.
    fn payload_size(payload: &Self::LogPayload) -> u64 {
        ENTRY_OVERHEAD_BYTES.saturating_add(u64::try_from(crate::codec::encoded_len(&payload.0)).unwrap_or(u64::MAX))
    }
}

/// The Raft log of one node. Cheap to clone: clones share one WAL, which is
/// how openraft's replication tasks read while the core appends.
#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<raft_log::RaftLog<WalTypes>>>,
    /// Set only by the test hook [`LEADER_FLUSH_DELAY_ENV`].
    delayed: Option<DelayedFlushes>,
}

/// Test hook, never for production: a storage node started with this
/// variable set to a number of milliseconds holds back the flush of the
/// entries it appends as leader for that long, and does not write commit
/// records meanwhile, so those entries stay in memory only. The write path
/// must then acknowledge a write once the followers have synced it, and a
/// SIGKILL in that window loses the leader's copy as a power cut would.
/// Votes, truncations and purges still flush everything buffered.
pub const LEADER_FLUSH_DELAY_ENV: &str = "RAFTSHOP_TEST_LEADER_FLUSH_DELAY_MS";

/// The flushes that [`LEADER_FLUSH_DELAY_ENV`] holds back, in append order.
#[derive(Clone)]
struct DelayedFlushes {
    /// This node: entries whose leader it is were appended as leader.
    me: u64,
    delay: Duration,
    queue: std::sync::mpsc::Sender<(std::time::Instant, IOFlushed<TypeConfig>)>,
}

impl LogStore {
    /// Opens (or creates) the WAL in `dir`.
    pub fn open(dir: &Path) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut config = raft_log::Config::new(dir.display());
        // Sync as soon as a write arrives: appends queued while a sync runs
        // form the next batch (group commit without added latency).
        config.wal.flush_batch_wait = Some(Duration::ZERO);
        config.wal.read_buffer_size = Some(WAL_READ_BUFFER_BYTES);
        config.wal.chunk_max_size = Some(WAL_CHUNK_BYTES);
        config.log_cache_capacity = Some(LOG_CACHE_BYTES);
        config.log_cache_max_items = Some(LOG_CACHE_ENTRIES);
        let wal = raft_log::RaftLog::open(Arc::new(config))?;
        Ok(LogStore { wal: Arc::new(Mutex::new(wal)), delayed: None })
    }

    /// Turns on the test hook [`LEADER_FLUSH_DELAY_ENV`] for node `me`: one
    /// thread flushes each held-back append `delay` after it was made, in
    /// order.
    pub fn delay_leader_flushes(&mut self, me: u64, delay: Duration) {
        tracing::error!(delay_ms = delay.as_millis() as u64, "TEST HOOK: the leader's own log flushes are held back");
        let (queue, held) = std::sync::mpsc::channel::<(std::time::Instant, IOFlushed<TypeConfig>)>();
        let wal = Arc::clone(&self.wal);
        std::thread::spawn(move || {
            while let Ok((due, callback)) = held.recv() {
                std::thread::sleep(due.saturating_duration_since(std::time::Instant::now()));
                let mut wal = wal.lock().expect("WAL lock");
                if let Err(e) = wal.flush(true, Some(FlushNotice::Appended(callback, std::time::Instant::now()))) {
                    tracing::error!(error = %e, "a held-back flush failed");
                }
            }
        });
        self.delayed = Some(DelayedFlushes { me, delay, queue });
    }

    /// True if nothing was ever written: no vote and no entries. Only such a
    /// node may take part in initializing its shard.
    pub fn is_pristine(&self) -> bool {
        let wal = self.lock();
        let state = wal.log_state();
        state.vote().is_none() && state.last().is_none() && state.purged().is_none()
    }

    /// The last log id purged from the log, if any was.
    pub fn last_purged(&self) -> Option<LogId> {
        self.lock().log_state().purged().map(|id| id.0)
    }

    fn lock(&self) -> MutexGuard<'_, raft_log::RaftLog<WalTypes>> {
        self.wal.lock().expect("a panic while holding the WAL lock already stopped the node")
    }

    /// Queues a durable flush and waits until the worker has synced it.
    async fn sync(&self) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.lock().flush(true, Some(FlushNotice::Waiter(tx)))?;
        rx.await.map_err(|_| io::Error::other("WAL worker stopped"))?
    }

    /// Reads `[start, end)` under one lock, stopping early once the encoded
    /// entries pass `max_bytes` (the entry that passes it is kept, so the
    /// result is never empty while the WAL holds `start`).
    fn read_bounded(&self, start: u64, end: u64, max_bytes: Option<u64>) -> io::Result<Vec<Entry>> {
        let wal = self.lock();
        let mut entries = Vec::new();
        let mut bytes = 0u64;
        for item in wal.read(start, end) {
            let (log_id, payload) = item?;
            bytes += <WalTypes as raft_log::Types>::payload_size(&payload);
            entries.push(Entry { log_id: log_id.0, payload: payload.0 });
            if max_bytes.is_some_and(|max| bytes >= max) {
                break;
            }
        }
        Ok(entries)
    }
}

/// The half-open index range `[start, end)` that `range` covers.
fn index_range<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(i) => *i,
        Bound::Excluded(i) => i + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(i) => i + 1,
        Bound::Excluded(i) => *i,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let (start, end) = index_range(&range);
        self.read_bounded(start, end, None)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(self.lock().log_state().vote().map(|v| v.0))
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> io::Result<Vec<Entry>> {
        self.read_bounded(start, end, Some(MAX_APPEND_BYTES as u64))
    }

    async fn entries_stream<RB>(&mut self, range: RB) -> impl Stream<Item = io::Result<Entry>> + OptionalSend
    where
        RB: RangeBounds<u64> + Clone + Debug + OptionalSend,
    {
        let (start, end) = index_range(&range);
        let store = self.clone();
        let chunks = futures::stream::unfold(start, move |next| {
            let store = store.clone();
            async move {
                if next >= end {
                    return None;
                }
                let chunk_end = end.min(next.saturating_add(APPLY_CHUNK_ENTRIES));
                match store.read_bounded(next, chunk_end, None) {
                    // A short chunk means the WAL has no more: end the stream.
                    Ok(entries) if (entries.len() as u64) < chunk_end - next => Some((Ok(entries), end)),
                    Ok(entries) => Some((Ok(entries), chunk_end)),
                    Err(e) => Some((Err(e), end)),
                }
            }
        });
        futures::StreamExt::flat_map(chunks, |chunk| match chunk {
            Ok(entries) => futures::stream::iter(entries.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => futures::stream::iter(vec![Err(e)]),
        })
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let wal = self.lock();
        let state = wal.log_state();
        let last_purged_log_id = state.purged().map(|id| id.0);
        let last_log_id = state.last().map(|id| id.0).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.lock().save_vote(Encoded(*vote))?;
        self.sync().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Best effort: a lost commit record only means replaying a little more
        // of the log at start-up. The record waits in the WAL's buffer for the
        // next append's sync, which carries it to disk: openraft saves the
        // commit point on the way to applying every committed entry, and a
        // flush of its own here woke the WAL worker (and kept it writing
        // while the next append waited) once per entry.
        if let Some(committed) = committed {
            if self.delayed.is_some() {
                return Ok(()); // writing it would write the held-back entries too
            }
            self.lock().commit(Encoded(committed))?;
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.lock().log_state().committed().map(|id| id.0))
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut wal = self.lock();
        // Entries at or below the purge point are already part of the applied
        // state (a purge never passes it); the WAL refuses them as reversals.
        let purged = wal.log_state().purged().map(|id| id.0.index);
        // The hook holds back entries this node appends as the leader of the
        // current term, not its own older entries that a later leader sends
        // back to it (after a restart that lost them).
        let voted_for = wal.log_state().vote().map(|v| *v.0.leader_id());
        let mut own_as_leader = false;
        let records = entries
            .into_iter()
            .filter(|e| purged.is_none_or(|p| e.log_id.index > p))
            .inspect(|e| {
                let leader = &e.log_id.leader_id;
                own_as_leader = self
                    .delayed
                    .as_ref()
                    .is_some_and(|d| leader.term > 0 && leader.node_id == d.me && voted_for.as_ref() == Some(leader));
            })
            .map(|e| (Encoded(e.log_id), Encoded(e.payload)));
        wal.append(records)?;
        match &self.delayed {
            Some(delayed) if own_as_leader => {
                let due = std::time::Instant::now() + delayed.delay;
                delayed.queue.send((due, callback)).map_err(|_| io::Error::other("the held-back flush thread stopped"))
            }
            _ => wal.flush(true, Some(FlushNotice::Appended(callback, std::time::Instant::now()))),
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        {
            let mut wal = self.lock();
            // raft-log's truncate(i) looks up entry i-1 and fails if it is
            // absent, so keeping everything up to or past the last entry is a
            // no-op here rather than an error.
            let last = wal.log_state().last().map(|id| id.0.index);
            let keep_all = match (last_log_id, last) {
                (_, None) => true,
                (Some(keep), Some(last)) => keep.index >= last,
                (None, Some(_)) => false,
            };
            if keep_all {
                return Ok(());
            }
            wal.truncate(last_log_id.map_or(0, |id| id.index + 1))?;
        }
        self.sync().await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        let mut wal = self.lock();
        wal.purge(Encoded(log_id))?;
        wal.flush(true, None)?;
        Ok(())
    }
}
