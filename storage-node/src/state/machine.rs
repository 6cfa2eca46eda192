//! The state machine openraft drives: rows in sled, snapshots on disk.
//!
//! Entries are applied in memory first and handed to sled a few at a time
//! (see [`super::unwritten`]), each sled batch holding the rows the entries
//! changed, the last-applied log id, the digest and the membership, so after
//! a crash the state is always that of some log prefix. sled flushes lazily
//! too; that is safe because the Raft log holds every entry after the last
//! flush and openraft replays it at start-up. The one point where the log
//! may forget entries is a purge, and openraft purges only up to a
//! snapshot, so building a snapshot writes and flushes sled first.
//!
//! A snapshot is written while entries keep being applied (see
//! [`super::capture`]): its rows are read in chunks, and `apply` keeps the
//! snapshot-time value of each row it changes ahead of the reader.
//!
//! The rows are shared ([`AppliedState`]) with the `Store` service, which reads
//! them after a linearizable read barrier.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use futures::{Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use tokio::sync::broadcast;

use super::apply::{apply_command, RowChanges, RowSource, Staged};
use super::capture::{Capture, RawRows};
use super::keys::{self, row_digest, RowSum};
use super::known::KnownRows;
use super::snapshot::{self, SnapshotFile, SnapshotWriter};
use super::unwritten::{self, sled_io, LockRows, Overlay, SledReads, Unwritten, Write, WRITE_BEHIND};
use super::{feed, txn};
use crate::codec::{decode_stored, encode};
use crate::command::{Command, CommandResult, Query, QueryResult, Rejection, Row, RowKey, Table, TxnId};
use crate::limits::{MAX_ORDER_IDS_PER_QUERY, MAX_REPLY_BYTES};
use crate::records::coordination::FeedEvent;
use crate::types::{Entry, LogId, LogIndex, Shard, SnapshotMeta, StoredMembership, TypeConfig};

/// A snapshot as openraft hands it around: metadata and the open file.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Most rows one scan may return, whatever the caller asks.
pub const MAX_SCAN_ROWS: u32 = 10_000;
/// Entries' events buffered per watcher before it must catch up from storage.
const FEED_BUFFER_EVENTS: usize = 1024;
/// sled's page cache: small, so a node stays lean; the OS caches the rest.
/// sled's resident memory is many times this figure: with 100,000 rows
/// written, a 16 MiB cache held 127-304 MB and a 4 MiB one 52-113 MB (see
/// `examples/sled_cache_memory.rs`).
const SLED_CACHE_BYTES: u64 = 4 * 1024 * 1024;
/// How often sled writes dirty pages on its own.
const SLED_FLUSH_EVERY_MS: u64 = 1000;
/// Rows a snapshot copy reads from sled at a time.
const SNAPSHOT_CHUNK_ROWS: usize = 512;

/// Rows with their sled keys, in key order: a chunk of a listing.
pub type KeyedRows = Vec<(Vec<u8>, Row)>;

/// Where the applied state stands: always updated together with the rows.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// The last applied log id.
    pub applied: Option<LogId>,
    /// The last applied membership.
    pub membership: StoredMembership,
    /// Wrapping sum of every row's digest.
    pub digest: u64,
}

/// What `apply` changes, under one lock.
#[derive(Debug, Default)]
struct Applying {
    /// Where the applied state stands, unwritten entries included.
    progress: Progress,
    /// Rows of applied entries that sled does not hold yet.
    unwritten: Unwritten,
    /// The rows being handed to sled, older than `unwritten`, if a write
    /// is under way (see [`AppliedState::write_aside`]).
    writing: Option<Unwritten>,
    /// The sled keys of every lock row (table `Intents`) in sled or in
    /// `unwritten`: exact, so `apply` learns that a key is unlocked, the
    /// common case, without a walk through sled's tree.
    locks: LockRows,
    /// What sled answered to `apply`'s reads (see [`SledReads`]).
    reads: SledReads,
    /// The keys sled may hold: those of the lasting tables, and the newest
    /// of each transaction table (see [`KnownRows`]); `apply` learns that a
    /// new row is new without a walk through sled's tree. `None` while a
    /// snapshot install replaces the rows (and after one that failed):
    /// every row is looked up in sled.
    known: Option<KnownRows>,
}

/// The applied rows of one node, readable while openraft applies.
pub struct AppliedState {
    /// The open database, kept to flush it.
    db: sled::Db,
    /// Its directory, whose `blobs` [`Self::flush`] syncs.
    dir: PathBuf,
    /// Rows and bookkeeping, see [`keys`].
    tree: sled::Tree,
    /// Locked while an entry is applied, or while rows are written to sled
    /// by someone who needs the state not to move meanwhile.
    applying: Mutex<Applying>,
    /// Held by whoever writes rows to sled, so batches land one at a time
    /// and in order. Taken before `applying`, never while holding it.
    writes: Mutex<()>,
    /// True while some applied entry's rows are not in sled yet: long
    /// scans then have them written first (see [`Self::read_waiting`]).
    has_unwritten: AtomicBool,
    /// How many lock rows exist (the size of `Applying::locks`), for
    /// readers: while none does, a read learns that its row is unlocked
    /// without a walk through sled's tree for the absent lock row.
    lock_rows: AtomicUsize,
    /// Live change-feed events, one message per entry, for watchers.
    feed: broadcast::Sender<Arc<Vec<FeedEvent>>>,
    /// The snapshot being copied, if one is. `apply` holds it (after
    /// `applying`) for a whole entry.
    capture: Mutex<Option<Capture>>,
    /// Set when a snapshot copy found the rows damaged.
    damaged: AtomicBool,
    /// A layout newer than this build knows that an entry or an installed
    /// snapshot switched to (0: none); the node stops on it.
    unknown_layout: AtomicU32,
}

/// Reads the rows with every applied entry in them. A row, and a prefix
/// of at most [`WAITING_SCAN_KEYS`] keys, are read through the same
/// [`Overlay`] as `apply` (see [`AppliedState::read_waiting`]), without
/// handing sled the rows still waiting for it; a longer prefix has them
/// written first and is read from sled without the apply lock. Never
/// called by `apply` itself, which holds the apply lock already.
impl RowSource for AppliedState {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        // Every entry the reader waited for counted its lock rows before it
        // counted as applied; a later one may add some, and the read comes
        // before it.
        if matches!(key, RowKey::Intent(_)) && self.lock_rows.load(Ordering::Acquire) == 0 {
            return Ok(None);
        }
        self.read_waiting(|rows| rows.row(key))
    }

    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        if limit <= WAITING_SCAN_KEYS {
            return self.read_waiting(|rows| rows.keys_with_prefix(prefix, limit));
        }
        self.settle()?;
        let mut found = Vec::new();
        for item in self.tree.scan_prefix(prefix).keys() {
            if found.len() >= limit {
                break;
            }
            found.extend(keys::parse_row_key(&item.map_err(sled_io)?));
        }
        Ok(found)
    }
}

/// The most keys a prefix read takes through the rows waiting for sled,
/// under the apply lock (the housekeeping's batch of prepared
/// transactions, a lock check's one key), and the most rows a `GetMany`
/// reads under one hold of it; `apply` waits meanwhile. A longer prefix
/// read (a client's orders, every transaction record) has the rows
/// written first and scans sled without the lock; a longer `GetMany` goes
/// this many rows at a time.
const WAITING_SCAN_KEYS: usize = 256;

/// A read whose answer would pass [`MAX_REPLY_BYTES`]: it stops reading
/// there rather than building the whole answer first.
#[derive(Debug, thiserror::Error)]
#[error("the answer for {rows} rows would pass the limit of {MAX_REPLY_BYTES} bytes; ask for fewer rows")]
pub struct ReplyTooLarge {
    /// How many rows were asked for.
    pub rows: usize,
}

impl AppliedState {
    /// Opens (or creates) the sled database in `dir`.
    fn open(dir: &Path) -> io::Result<Self> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()
            .map_err(sled_io)?;
        let tree = db.open_tree("shop").map_err(sled_io)?;
        if tree.contains_key(keys::INSTALLING).map_err(sled_io)? {
            // A snapshot install was cut short: report an empty state, so
            // openraft installs the current snapshot again at start-up.
            tracing::warn!("an interrupted snapshot install is redone");
            let (feed, _) = broadcast::channel(FEED_BUFFER_EVENTS);
            let locks = LockRows::scan(&tree)?;
            // No known rows (`None`: every row is looked up): the install
            // about to be redone replaces the rows and reads them afresh.
            return Ok(AppliedState {
                db,
                dir: dir.to_owned(),
                tree,
                lock_rows: AtomicUsize::new(locks.len()),
                applying: Mutex::new(Applying { locks, ..Applying::default() }),
                writes: Mutex::new(()),
                has_unwritten: AtomicBool::new(false),
                feed,
                capture: Mutex::new(None),
                damaged: AtomicBool::new(false),
                unknown_layout: AtomicU32::new(0),
            });
        }
        // The last batch may have been cut short by a crash.
        unwritten::redo(&tree)?;
        let progress = Progress {
            applied: read_meta(&tree, keys::APPLIED)?.flatten(),
            membership: read_meta(&tree, keys::MEMBERSHIP)?.unwrap_or_default(),
            digest: tree
                .get(keys::DIGEST)
                .map_err(sled_io)?
                .map(|b| u64::from_be_bytes(b.as_ref().try_into().unwrap_or_default()))
                .unwrap_or_default(),
        };
        let locks = LockRows::scan(&tree)?;
        let known = Some(KnownRows::scan(&tree)?);
        let (feed, _) = broadcast::channel(FEED_BUFFER_EVENTS);
        Ok(AppliedState {
            db,
            dir: dir.to_owned(),
            tree,
            lock_rows: AtomicUsize::new(locks.len()),
            applying: Mutex::new(Applying {
                progress,
                unwritten: Unwritten::default(),
                writing: None,
                locks,
                reads: SledReads::default(),
                known,
            }),
            writes: Mutex::new(()),
            has_unwritten: AtomicBool::new(false),
            feed,
            capture: Mutex::new(None),
            damaged: AtomicBool::new(false),
            unknown_layout: AtomicU32::new(0),
        })
    }

    /// The applied log id, membership and digest, as of the last entry.
    pub fn progress(&self) -> Progress {
        self.lock().progress.clone()
    }

    /// The rows sled holds and the state digest summed afresh over them,
    /// for [`verify_state`] (which calls it on a state just opened, so no
    /// applied rows are still waiting for sled).
    fn summed_digest(&self) -> io::Result<(u64, u64)> {
        let (mut rows, mut sum) = (0u64, RowSum::default());
        for item in self.tree.scan_prefix([keys::ROW]) {
            let (key, value) = item.map_err(sled_io)?;
            sum.add(&key, &value)?;
            rows += 1;
        }
        Ok((rows, sum.digest()))
    }

    /// What a check of this state, just opened, finds: a snapshot install
    /// cut short, or the digest it keeps beside the one summed afresh over
    /// its rows. The one check of `--verify-state` and of start-up.
    fn inspect(&self) -> io::Result<Verification> {
        if self.tree.contains_key(keys::INSTALLING).map_err(sled_io)? {
            return Ok(Verification::InstallCutShort);
        }
        let progress = self.progress();
        let (rows, summed) = self.summed_digest()?;
        Ok(Verification::Checked { applied: progress.applied, rows, kept: progress.digest, summed })
    }

    /// Has sled hold every applied entry's rows: readers of sled call this
    /// first. Cheap when nothing waits.
    pub fn settle(&self) -> io::Result<()> {
        if !self.has_unwritten.load(Ordering::Acquire) {
            return Ok(());
        }
        self.write_aside(false)
    }

    /// Has sled hold the applied entries' rows if they have waited long
    /// enough ([`Unwritten::is_due`]): the writer thread's step.
    fn settle_when_due(&self) -> io::Result<()> {
        if !self.has_unwritten.load(Ordering::Acquire) {
            return Ok(());
        }
        self.write_aside(true)
    }

    /// Hands the unwritten rows to sled in one batch with the bookkeeping
    /// as of the last applied entry, without holding the apply lock while
    /// sled takes them: the batch moves to `writing`, where `apply` still
    /// reads it, and leaves it once sled holds it. With `only_if_due`, only
    /// rows that have waited long enough. On an error the rows wait again
    /// (and `apply` keeps reading them), so nothing applied is skipped.
    fn write_aside(&self, only_if_due: bool) -> io::Result<()> {
        let _writes = self.lock_writes();
        let writes = {
            let mut applying = self.lock();
            let Applying { progress, unwritten, writing, .. } = &mut *applying;
            debug_assert!(writing.is_none(), "a batch was left half written");
            if unwritten.is_empty() || (only_if_due && !unwritten.is_due()) {
                return Ok(());
            }
            let writes = batch_writes(unwritten, progress);
            *writing = Some(std::mem::take(unwritten));
            writes
        };
        let written = unwritten::write_all(&self.tree, &writes);
        let mut applying = self.lock();
        let Applying { unwritten, writing, reads, .. } = &mut *applying;
        let batch = writing.take().unwrap_or_default();
        match written {
            Ok(sled_writes) => {
                crate::metrics::node().state_write_entries.observe(batch.entries() as f64);
                crate::metrics::node().state_write_rows.observe(sled_writes as f64);
                reads.keep_written(&self.tree, &batch, unwritten);
                if unwritten.is_empty() {
                    self.has_unwritten.store(false, Ordering::Release);
                }
                Ok(())
            }
            Err(error) => {
                // sled may hold some of the rows now: a later removal of
                // one must reach it.
                unwritten.take_back(batch);
                applying.reads.forget_all();
                Err(error)
            }
        }
    }

    /// Hands the unwritten rows to sled in one batch with the bookkeeping
    /// as of the last applied entry, holding the apply lock throughout:
    /// for callers that read sled under that lock. The caller holds the
    /// write lock too, so no batch is under way. On an error they stay
    /// unwritten (and `apply` keeps reading them).
    fn write_unwritten(&self, applying: &mut Applying) -> io::Result<()> {
        let Applying { progress, unwritten, writing, reads, .. } = applying;
        debug_assert!(writing.is_none(), "written while a batch was under way");
        if unwritten.is_empty() {
            return Ok(());
        }
        let sled_writes = match unwritten::write_all(&self.tree, &batch_writes(unwritten, progress)) {
            Ok(sled_writes) => sled_writes,
            Err(error) => {
                // sled may hold some of the rows now: a later removal of
                // one must reach it.
                unwritten.may_be_in_sled();
                reads.forget_all();
                return Err(error);
            }
        };
        crate::metrics::node().state_write_entries.observe(unwritten.entries() as f64);
        crate::metrics::node().state_write_rows.observe(sled_writes as f64);
        reads.keep_written(&self.tree, unwritten, &Unwritten::default());
        *unwritten = Unwritten::default();
        self.has_unwritten.store(false, Ordering::Release);
        Ok(())
    }

    /// Answers a read from the applied state. The caller has passed the
    /// read barrier; a row locked by a transaction in flight answers
    /// `Locked` rather than a value that may be about to change.
    pub fn answer(&self, query: &Query) -> io::Result<QueryResult> {
        match query {
            Query::Get(key) => self.read_waiting(|rows| locked_or_row(rows, key)),
            Query::GetMany(keys) => self.get_many(keys),
            Query::OrdersOfClient(cid) => match self.pending_index_entry(Table::ClientOrders, *cid)? {
                Some(answer) => Ok(answer),
                None => {
                    let prefix = keys::index_prefix(Table::ClientOrders, *cid);
                    let entries = self.keys_with_prefix(&prefix, MAX_ORDER_IDS_PER_QUERY)?;
                    let ids = entries.into_iter().filter_map(|key| match key {
                        RowKey::ClientOrder(_, oid) => Some(oid),
                        _ => None,
                    });
                    Ok(QueryResult::Ids(ids.collect()))
                }
            },
            Query::Scan { table, after, limit } => {
                let limit = (*limit).min(MAX_SCAN_ROWS) as usize;
                self.scan(*table, after.as_ref(), limit).map(QueryResult::Rows)
            }
        }
    }

    /// `Query::GetMany`: the rows of `keys` in the order asked, or
    /// `Locked` for the first one a prepared transaction holds. Each chunk
    /// of [`WAITING_SCAN_KEYS`] keys is read under one hold of the apply
    /// lock, lock checks and rows alike, so a read of up to that many rows
    /// never sees half of an entry that changed several of them; a longer
    /// one goes a chunk at a time, so `apply` never waits for all of it.
    fn get_many(&self, keys: &[RowKey]) -> io::Result<QueryResult> {
        let mut found = Vec::with_capacity(keys.len());
        let mut bytes = 0usize;
        for chunk in keys.chunks(WAITING_SCAN_KEYS) {
            let locked = self.read_waiting(|rows| {
                for key in chunk {
                    let row = match locked_or_row(rows, key)? {
                        QueryResult::Row(row) => row,
                        locked => return Ok(Some(locked)),
                    };
                    bytes = bytes.saturating_add(row.as_ref().map_or(0, |r| r.value.len()));
                    if bytes > MAX_REPLY_BYTES {
                        return Err(io::Error::other(ReplyTooLarge { rows: keys.len() }));
                    }
                    found.push(row);
                }
                Ok(None)
            })?;
            if let Some(locked) = locked {
                return Ok(locked);
            }
        }
        Ok(QueryResult::Many(found))
    }

    /// `Locked` if a prepared transaction is about to add or remove an
    /// index entry of `owner` in `table`.
    fn pending_index_entry(&self, table: Table, owner: u64) -> io::Result<Option<QueryResult>> {
        let mut prefix = keys::table_prefix(Table::Intents).to_vec();
        prefix.extend_from_slice(&keys::index_prefix(table, owner));
        let Some(intent) = self.keys_with_prefix(&prefix, 1)?.into_iter().next() else { return Ok(None) };
        let RowKey::Intent(key) = intent else { return Ok(None) };
        let staged = Staged::new(self);
        Ok(txn::lock_holder(&staged, &key)?.map(|holder| QueryResult::Locked { key: *key, holder }))
    }

    /// Whether `command`, applied to the rows as they stand, would change
    /// any of them: a dry run, which writes nothing. Housekeeping uses it
    /// to propose a prune only while there is something left to forget.
    pub fn would_change(&self, command: &Command) -> io::Result<bool> {
        // The index only versions the rows a real apply writes.
        let (_, changes) = apply_command(0, command, self)?;
        Ok(!changes.is_empty())
    }

    /// The layout the next entry is applied in (`super::layout`).
    pub fn layout(&self) -> io::Result<u32> {
        super::layout::current(self)
    }

    /// True if some site's session lapsed before `now_ms`.
    pub fn has_lapsed_session(&self, now_ms: u64) -> io::Result<bool> {
        self.read_waiting(|rows| {
            for (_, value) in rows.raw_under(&keys::table_prefix(Table::Sessions), usize::MAX)? {
                let row: Row = decode_stored(&value)?;
                let session: crate::records::coordination::Session = decode_stored(&row.value)?;
                if session.expires_at_ms < now_ms {
                    return Ok(true);
                }
            }
            Ok(false)
        })
    }

    /// Transactions prepared here and not yet resolved: id, decision shard,
    /// and when they were prepared.
    pub fn prepared_txns(&self, limit: usize) -> io::Result<Vec<(TxnId, Shard, u64)>> {
        self.read_waiting(|rows| txn::prepared(rows, limit))
    }

    /// Runs `read` over the applied rows as `apply` sees them, the ones
    /// still waiting for sled included, under the apply lock: for short
    /// reads (a client's rows, the housekeeping's scans every 250 ms).
    /// Reading through [`Self::settle`] instead would have the reader hand
    /// sled every waiting row first, on its own thread, and would cut short
    /// the wait in which a transaction's lock rows and prepared-index row
    /// come and go without reaching sled. What sled answers is not kept in
    /// [`SledReads`], which holds the rows `apply` reads again: a client
    /// reading a million keys at random would push them out.
    fn read_waiting<T>(&self, read: impl FnOnce(&Overlay<'_>) -> io::Result<T>) -> io::Result<T> {
        let applying = self.lock();
        let Applying { unwritten, writing, locks, known, .. } = &*applying;
        read(&Overlay {
            tree: &self.tree,
            unwritten,
            writing: writing.as_ref(),
            locks: Some(locks),
            reads: None,
            known: known.as_ref(),
        })
    }

    /// How many lock rows exist: the rows locked by prepared, unresolved
    /// transactions.
    pub fn lock_row_count(&self) -> usize {
        self.lock_rows.load(Ordering::Acquire)
    }

    /// [`Self::prepared_txns`] by reading every transaction record, for
    /// parts prepared by a build without the index.
    pub fn prepared_txns_unindexed(&self, limit: usize) -> io::Result<Vec<(TxnId, Shard, u64)>> {
        txn::prepared_unindexed(self, limit)
    }

    /// Rows of `table` in key order after `after`, at most `limit`.
    pub fn scan(&self, table: Table, after: Option<&RowKey>, limit: usize) -> io::Result<Vec<(RowKey, Row)>> {
        self.settle()?;
        let prefix = keys::table_prefix(table);
        let start = match after {
            Some(key) => {
                let mut k = keys::row_key(key);
                k.push(0);
                k
            }
            None => prefix.to_vec(),
        };
        let mut rows = Vec::new();
        let mut bytes = 0;
        for item in self.tree.range(start..) {
            let (k, v) = item.map_err(sled_io)?;
            if !k.starts_with(&prefix) || rows.len() >= limit || bytes > MAX_REPLY_BYTES / 2 {
                break;
            }
            if let Some(key) = keys::parse_row_key(&k) {
                bytes += k.len() + v.len();
                rows.push((key, decode_stored(&v)?));
            }
        }
        Ok(rows)
    }

    fn lock(&self) -> MutexGuard<'_, Applying> {
        // Poisoned only by a panic while the lock was held, which stops the
        // node anyway.
        self.applying.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks writing to sled; taken before [`Self::lock`], never after.
    fn lock_writes(&self) -> MutexGuard<'_, ()> {
        self.writes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the snapshot copy. `apply` takes it after `applying`; no one
    /// takes `applying` while holding it.
    fn lock_capture(&self) -> MutexGuard<'_, Option<Capture>> {
        self.capture.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies one log entry atomically and returns its result. Its rows
    /// reach sled with the entries around it (see [`super::unwritten`]);
    /// readers see them at once all the same.
    fn apply_entry(&self, entry: &Entry) -> io::Result<CommandResult> {
        let mut applying = self.lock();
        let mut capture = self.lock_capture();
        let Applying { progress, unwritten, writing, locks, reads, known } = &mut *applying;
        let index = entry.log_id.index;
        let rows = Overlay {
            tree: &self.tree,
            unwritten,
            writing: writing.as_ref(),
            locks: Some(locks),
            reads: Some(reads),
            known: known.as_ref(),
        };
        let (result, mut changes) = match &entry.payload {
            EntryPayload::Normal(command) => {
                let (result, changes) = apply_command(index, command, &rows)?;
                log_refusals(&entry.log_id, &result);
                (result, changes)
            }
            EntryPayload::Blank | EntryPayload::Membership(_) => (CommandResult::Internal, RowChanges::new()),
        };
        let events = feed::stage_events(index, &mut changes, &rows)?;
        // The expired events, read with their values in one pass over sled
        // rather than listed and then read again one by one for the digest.
        let expired = match feed::expired_events(index) {
            Some(prefix) => rows.raw_under(&prefix, usize::MAX)?,
            None => Vec::new(),
        };
        // Nothing in `progress` or `unwritten` changes until every read the
        // entry needs has succeeded: a failed entry leaves no trace there.
        let digest = progress.digest;
        let staged = (&mut *unwritten, writing.as_ref(), &*reads);
        progress.digest =
            self.stage_changes(index, staged, (locks, known), changes, expired, digest, capture.as_mut())?;
        if let EntryPayload::Membership(membership) = &entry.payload {
            progress.membership = StoredMembership::new(Some(entry.log_id), membership.clone());
        }
        progress.applied = Some(entry.log_id);
        unwritten.entry_done();
        self.has_unwritten.store(true, Ordering::Release);
        drop(capture);
        let full = unwritten.is_full();
        drop(applying);
        if full {
            self.write_aside(false)?;
        }
        if !events.is_empty() {
            // No watcher is fine; a lagging one re-reads the stored events.
            let _ = self.feed.send(Arc::new(events));
        }
        Ok(result)
    }

    /// A receiver of the events of every entry applied from now on, one
    /// message per entry.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Vec<FeedEvent>>> {
        self.feed.subscribe()
    }

    /// Up to `limit` rows with sled keys in `[start, end)`, in key order,
    /// and the applied index they are current at: one bounded chunk of a
    /// long listing (the change feed's). Read under the apply lock, so the
    /// chunk is one consistent state, but only `limit` rows long, so `apply`
    /// waits at most for one short chunk.
    pub fn rows_chunk(&self, start: &[u8], end: &[u8], limit: usize) -> io::Result<(KeyedRows, LogIndex)> {
        let _writes = self.lock_writes();
        let mut applying = self.lock();
        self.write_unwritten(&mut applying)?;
        let index = applying.progress.applied.map(|id| id.index).unwrap_or_default();
        let mut rows = Vec::new();
        if start < end {
            for item in self.tree.range(start..end).take(limit) {
                let (key, value) = item.map_err(sled_io)?;
                rows.push((key.to_vec(), decode_stored(&value)?));
            }
        }
        Ok((rows, index))
    }

    /// Adds the row changes of entry `index` and the removal of the rows
    /// `expired` (raw, as they stand) to the unwritten ones; returns the
    /// digest after them. A snapshot being copied keeps each changed row's
    /// value first. All or nothing: a failed read stages none of the
    /// changes, so the writer thread never hands sled half an entry.
    #[allow(clippy::too_many_arguments)]
    fn stage_changes(
        &self,
        index: LogIndex,
        (unwritten, writing, reads): (&mut Unwritten, Option<&Unwritten>, &SledReads),
        (locks, known): (&mut LockRows, &mut Option<KnownRows>),
        changes: RowChanges,
        expired: Vec<(sled::IVec, sled::IVec)>,
        mut digest: u64,
        mut capture: Option<&mut Capture>,
    ) -> io::Result<u64> {
        let rows = Overlay {
            tree: &self.tree,
            unwritten,
            writing,
            locks: Some(locks),
            reads: Some(reads),
            known: known.as_ref(),
        };
        let mut staged = Vec::with_capacity(changes.len() + expired.len());
        for (sled_key, old) in expired {
            let key = keys::parse_row_key(&sled_key).ok_or_else(|| io::Error::other("an unreadable event key"))?;
            debug_assert!(!changes.contains_key(&key), "entry {index} changes the expired row {key}");
            if let Some(capture) = capture.as_deref_mut() {
                capture.before_change(&sled_key, Some(&old));
            }
            digest = digest.wrapping_sub(row_digest(&key, &decode_stored(&old)?));
            staged.push((sled_key, None, true));
        }
        for (key, new) in changes {
            let sled_key = sled::IVec::from(keys::row_key(&key));
            // An entry's own events are new rows: no entry before it can
            // have written them (a snapshot or a crash leaves the rows of a
            // log prefix that ends before it), so their old value is known
            // without a walk through sled's tree.
            let old = match key {
                RowKey::Event(of, _) if of == index => {
                    debug_assert!(rows.raw(&sled_key)?.is_none(), "entry {index} meets its own event {key} stored");
                    None
                }
                _ => rows.raw_before_change(&sled_key)?,
            };
            if let Some(capture) = capture.as_deref_mut() {
                capture.before_change(&sled_key, old.as_ref());
            }
            if let Some(old) = &old {
                digest = digest.wrapping_sub(row_digest(&key, &decode_stored(old)?));
            }
            let new = new.map(|row| {
                digest = digest.wrapping_add(row_digest(&key, &row));
                sled::IVec::from(encode(&row))
            });
            staged.push((sled_key, new, old.is_some()));
        }
        for (key, new, existed) in staged {
            reads.forget(&key);
            locks.note(&key, new.is_some());
            if let (Some(known), true) = (known.as_mut(), new.is_some()) {
                known.note(&key);
            }
            // Where no waiting entry changed the row, `existed` is sled's.
            unwritten.stage(key, new, existed);
        }
        self.lock_rows.store(locks.len(), Ordering::Release);
        Ok(digest)
    }

    /// Starts copying the rows as they stand for a snapshot: returns its
    /// metadata and digest. Only one copy runs at a time.
    ///
    /// Rows applied but not in sled yet join the copy as before-images:
    /// they are the snapshot's values, which the copy must not read from
    /// sled. The unwritten ones first: where a row also waits in the batch
    /// being written, theirs is the newer value, and the first image kept
    /// counts.
    fn begin_capture(&self) -> (SnapshotMeta, u64) {
        let applying = self.lock();
        let mut capture = Capture::new();
        let writing = applying.writing.iter().flat_map(Unwritten::rows);
        for (key, value) in applying.unwritten.rows().chain(writing) {
            capture.before_change(key, value.as_ref());
        }
        *self.lock_capture() = Some(capture);
        let progress = &applying.progress;
        let meta = SnapshotMeta { last_log_id: progress.applied, last_membership: progress.membership.clone() };
        (meta, progress.digest)
    }

    /// The next chunk of the copy, and whether it is the last.
    ///
    /// sled is read with no lock held, so entries go on being applied
    /// meanwhile. That is safe because `apply` keeps a row's before-image
    /// before it writes the row: whatever this read sees of an entry applied
    /// meanwhile, that entry's rows ahead of the reader have before-images
    /// by the time the chunk is merged (under the capture lock, which
    /// `apply` holds for a whole entry), and a row it changes after the merge
    /// was read before the change.
    fn capture_chunk(&self) -> io::Result<(RawRows, bool)> {
        let ended = || io::Error::other("the snapshot copy was ended");
        let read_through = self.lock_capture().as_ref().ok_or_else(ended)?.read_through().map(<[u8]>::to_vec);
        let range = match &read_through {
            Some(read) => {
                self.tree.range::<&[u8], _>((std::ops::Bound::Excluded(&read[..]), std::ops::Bound::Unbounded))
            }
            None => self.tree.range::<&[u8], _>(&[keys::ROW][..]..),
        };
        let mut rows = Vec::with_capacity(SNAPSHOT_CHUNK_ROWS);
        for item in range.take(SNAPSHOT_CHUNK_ROWS) {
            let (key, value) = item.map_err(sled_io)?;
            if key.first() != Some(&keys::ROW) {
                break;
            }
            rows.push((key, value));
        }
        let last = rows.len() < SNAPSHOT_CHUNK_ROWS;
        let mut capture = self.lock_capture();
        Ok((capture.as_mut().ok_or_else(ended)?.merge(rows, last), last))
    }

    /// Ends the copy, if one runs; returns how many before-images it kept.
    fn end_capture(&self) -> usize {
        self.lock_capture().take().map_or(0, |capture| capture.kept())
    }

    /// Copies every row as of [`Self::begin_capture`], in key order, into a
    /// snapshot file in `dir`; returns its path and the before-images kept.
    ///
    /// The rows copied must sum to `digest`, the digest kept entry by entry
    /// up to the snapshot's log id: if they do not, sled lost or changed
    /// rows underneath the state machine (see [`verify_state`]), and the
    /// copy fails rather than carry the loss into a snapshot that lets the
    /// log be purged and that peers may install. The state is then marked
    /// damaged ([`Self::found_damaged`]).
    fn write_captured(&self, dir: &Path, meta: &SnapshotMeta, digest: u64) -> io::Result<(PathBuf, usize)> {
        let copied = self.copy_captured(dir, meta, digest);
        if let Err(error) = &copied {
            if is_damage(error) {
                self.mark_damaged(error);
            }
        }
        copied
    }

    fn copy_captured(&self, dir: &Path, meta: &SnapshotMeta, digest: u64) -> io::Result<(PathBuf, usize)> {
        let mut writer = SnapshotWriter::create(dir, meta, digest)?;
        let mut summed = RowSum::default();
        loop {
            let (rows, last) = self.capture_chunk()?;
            for (key, value) in &rows {
                summed.add(key, value)?;
                writer.row(key, value)?;
            }
            if last {
                break;
            }
        }
        let kept = self.end_capture();
        let summed = summed.digest();
        if summed != digest {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the rows copied for the snapshot at {} sum to {summed:016x}, but the state keeps {digest:016x}: \
                     sled lost or changed rows; no snapshot made",
                    meta.last_log_id.map_or(0, |id| id.index)
                ),
            ));
        }
        Ok((writer.finish()?, kept))
    }

    /// Records that the rows are damaged: the flag, and `damaged` in the
    /// node's `last-run` (beside the state directory), so that its next
    /// start checks the state and rebuilds it however this run ends.
    fn mark_damaged(&self, error: &io::Error) {
        self.damaged.store(true, Ordering::Release);
        tracing::error!(%error, "the state is damaged; the node rebuilds it at its next start");
        let Some(data_dir) = self.dir.parent() else { return };
        if let Err(error) = crate::node::last_run::LastRun::Damaged.write(data_dir) {
            tracing::error!(%error, "cannot record the damaged state in last-run");
        }
    }

    /// True once a snapshot copy found the rows damaged (see
    /// [`Self::mark_damaged`]).
    pub fn found_damaged(&self) -> bool {
        self.damaged.load(Ordering::Acquire)
    }

    /// The layout newer than this build's that an entry or an installed
    /// snapshot switched to, if one did (the node then stops).
    pub fn met_unknown_layout(&self) -> Option<u32> {
        Some(self.unknown_layout.load(Ordering::Acquire)).filter(|layout| *layout > 0)
    }

    /// Notes `error` if it names a layout this build does not know
    /// ([`super::layout::unknown_layout`]).
    fn note_unknown_layout(&self, error: &io::Error) {
        if let Some(layout) = super::layout::unknown_layout(error) {
            self.unknown_layout.store(layout, Ordering::Release);
        }
    }

    /// Replaces the whole state with a snapshot's. A marker key is set
    /// first and removed last, so a crash in between is seen at start-up
    /// (sled recovers a prefix of its writes) and the install redone from
    /// the snapshot file. An error part way leaves the rows half replaced
    /// and the lock-row set as it was. No client is answered from them: a
    /// node installing a snapshot follows, and followers refuse reads
    /// (barring the test-only unsafe local reads); the error stops
    /// openraft's core (a storage error is fatal to it), and the node
    /// exits when its core stops (`node::run`), to redo the install from
    /// the marker at its next start.
    fn replace_with(&self, file: &mut std::fs::File, meta: &SnapshotMeta) -> io::Result<()> {
        let _writes = self.lock_writes();
        let mut applying = self.lock();
        // The snapshot is newer than every entry applied here.
        applying.unwritten = Unwritten::default();
        applying.reads.forget_all();
        applying.known = None;
        self.has_unwritten.store(false, Ordering::Release);
        self.tree.insert(keys::INSTALLING, &[]).map_err(sled_io)?;
        self.clear_except_marker()?;
        let mut summed = RowSum::default();
        let (_, digest) = snapshot::read_rows(file, |rows| {
            rows.iter().try_for_each(|(key, value)| summed.add(key, value))?;
            let writes: Vec<Write> = rows.into_iter().map(|(key, value)| (key.into(), Some(value.into()))).collect();
            unwritten::write_each(&self.tree, &writes)
        })?;
        // On a mismatch the install marker stays: the rows are half
        // replaced, and the node's core stops on this error (see above).
        snapshot::check_digest(summed, digest)?;
        let progress = Progress { applied: meta.last_log_id, membership: meta.last_membership.clone(), digest };
        unwritten::write_each(&self.tree, &bookkeeping_writes(&progress))?;
        self.tree.remove(keys::INSTALLING).map_err(sled_io)?;
        self.flush_sled()?;
        applying.progress = progress;
        applying.locks = LockRows::scan(&self.tree)?;
        applying.known = Some(KnownRows::scan(&self.tree)?);
        self.lock_rows.store(applying.locks.len(), Ordering::Release);
        Ok(())
    }

    /// Removes every key but the install marker (the last batch's list of
    /// writes too, so start-up does not lay it over the snapshot's rows).
    fn clear_except_marker(&self) -> io::Result<()> {
        for key in self.tree.iter().keys() {
            let key = key.map_err(sled_io)?;
            if key.as_ref() != keys::INSTALLING {
                self.tree.remove(key).map_err(sled_io)?;
            }
        }
        Ok(())
    }

    /// Makes every applied entry durable in sled.
    pub fn flush(&self) -> io::Result<()> {
        self.settle()?;
        self.flush_sled()
    }

    /// Has sled write and sync its log, then syncs its blob files, which
    /// sled itself never syncs: values and tree nodes over about 128 KiB
    /// (a quarter of its 512 KiB segments), such as a large batch's redo
    /// list, each go to a file of their own under `blobs`, and sled's log
    /// only points at them.
    fn flush_sled(&self) -> io::Result<()> {
        self.db.flush().map_err(sled_io)?;
        sync_blobs(&self.dir.join("blobs"))
    }
}

/// What [`verify_state`] found in a node's state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// The state as of its last applied entry: the digest it keeps, updated
    /// write by write, and the one summed afresh over its rows. They differ
    /// if sled lost or changed a row underneath the state machine.
    Checked {
        /// The last entry applied to the state, if any.
        applied: Option<LogId>,
        /// Rows sled holds.
        rows: u64,
        /// The digest the state keeps.
        kept: u64,
        /// The digest summed over the rows.
        summed: u64,
    },
    /// A snapshot install was cut short: the node installs the snapshot
    /// again when it starts, so there is nothing to check.
    InstallCutShort,
    /// The directory holds no state (the node never started).
    NoState,
}

/// Opens the state directory `dir` as a node's start-up does (sled's
/// recovery, then the redo of a batch that a crash cut short, so this
/// writes), and sums the state digest afresh over its rows: `storage-node
/// --verify-state`, for after a power cut (docs/operations.md, "Checking
/// replicas after a power cut"). Fails with `ResourceBusy` if a running
/// node has it open, and otherwise as reading the state fails ([`is_damage`]
/// tells the errors that come from the state itself).
pub fn verify_state(dir: &Path) -> io::Result<Verification> {
    if !dir.join("db").exists() {
        return Ok(Verification::NoState);
    }
    let state = open_for_check(dir)?;
    let found = state.inspect()?;
    // Opening wrote (sled's recovery, the redo): make that durable.
    state.flush_sled()?;
    Ok(found)
}

/// [`AppliedState::open`], with sled's refusal of a directory another
/// process holds told apart as `ResourceBusy`.
fn open_for_check(dir: &Path) -> io::Result<AppliedState> {
    AppliedState::open(dir).map_err(|error| {
        // sled's words when another process holds its directory's lock.
        if error.to_string().contains("could not acquire lock") {
            io::Error::new(io::ErrorKind::ResourceBusy, format!("the state is in use (is the node running?): {error}"))
        } else {
            error
        }
    })
}

/// What start-up found when it checked a node's state
/// ([`StateMachine::open_checked`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupCheck {
    /// Not asked for: the state was opened as it is.
    NotRun,
    /// Its rows sum to the digest it keeps.
    Whole {
        /// How many rows it holds.
        rows: u64,
    },
    /// A snapshot install was cut short, and openraft installs the
    /// snapshot again: nothing to check. (Where the node can rebuild its
    /// state, it moves this one aside instead, as `Rebuilt`: the install
    /// replaces every row anyway, and starts from a state that holds none
    /// of the damaged ones.)
    InstallCutShort,
    /// The rows did not sum to the digest, or the state could not be read
    /// (`reason`): it was moved to `kept`, and the node starts from an
    /// empty state, which openraft fills from the current snapshot and the
    /// log as at any start.
    Rebuilt {
        /// What was wrong.
        reason: String,
        /// Where the damaged state now is, for a look by hand.
        kept: PathBuf,
    },
}

/// The error of [`StateMachine::open_checked`] for a damaged state that
/// cannot be rebuilt: the operator must replace the member.
#[derive(Debug, thiserror::Error)]
#[error("{reason}; it cannot be rebuilt here ({why}): replace this member under a new id")]
pub struct Unrebuildable {
    /// What is wrong with the state.
    pub reason: String,
    /// Why the snapshot and log cannot rebuild it.
    pub why: String,
}

/// The damaged state of a node is moved here, beside `state`; one is kept.
pub const DAMAGED_STATE_DIR: &str = "state.damaged";

/// Opens the state in `dir` and checks it: `Ok(Ok(..))` if it is whole
/// (or a snapshot install is to be redone), `Ok(Err(reason))` if sled
/// holds rows that no longer sum to the digest, or cannot read them, or
/// panics on them, `Err` if the check could not run (a running node, no
/// permission, no space, a failing disk), which says nothing of the state.
fn open_verified(dir: &Path) -> io::Result<Result<(AppliedState, StartupCheck), String>> {
    let checked = std::panic::catch_unwind(|| -> io::Result<Result<(AppliedState, StartupCheck), String>> {
        let (state, found) = match open_for_check(dir).and_then(|state| state.inspect().map(|found| (state, found))) {
            Ok(inspected) => inspected,
            Err(error) if is_damage(&error) => return Ok(Err(format!("its state cannot be read: {error}"))),
            Err(error) => return Err(error),
        };
        match found {
            Verification::Checked { rows, kept, summed, .. } if summed == kept => {
                Ok(Ok((state, StartupCheck::Whole { rows })))
            }
            Verification::Checked { applied, rows, kept, summed } => Ok(Err(format!(
                "its {rows} rows at applied index {} sum to {summed:016x}, but it keeps {kept:016x}: sled lost or \
                 changed rows",
                applied.map_or(0, |id| id.index)
            ))),
            Verification::InstallCutShort => Ok(Ok((state, StartupCheck::InstallCutShort))),
            // Not one `inspect` gives: an empty state would be whole.
            Verification::NoState => Ok(Ok((state, StartupCheck::Whole { rows: 0 }))),
        }
    });
    checked.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Ok(Err(format!("sled panicked reading the state: {what}")))
    })
}

/// True for errors that come from what is on disk (sled's corruption
/// reports, rows that do not decode, a file cut short, a blob file sled
/// points at but that is gone), not from the machine around it (no space,
/// no permission, a failing disk, a lock held) or from sled refusing a
/// directory of another version.
pub fn is_damage(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof | io::ErrorKind::NotFound)
}

/// Waits (at most ten seconds) until no one holds sled's lock on the state
/// in `dir`: sled's threads let go of a database a little after the last
/// handle is dropped, and they name blob files by path, so the directory
/// must not move before they are done.
fn wait_until_released(dir: &Path) -> io::Result<()> {
    let db = match std::fs::File::open(dir.join("db")) {
        Ok(db) => db,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match db.try_lock() {
            Ok(()) => return db.unlock(),
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < give_up => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(io::Error::new(io::ErrorKind::ResourceBusy, "sled did not let go of the state"));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Moves the state directory `dir` aside to [`DAMAGED_STATE_DIR`] beside
/// it, replacing one kept before, and returns where it went.
fn set_aside(dir: &Path) -> io::Result<PathBuf> {
    wait_until_released(dir)?;
    let kept = dir.with_file_name(DAMAGED_STATE_DIR);
    match std::fs::remove_dir_all(&kept) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::rename(dir, &kept)?;
    if let Some(parent) = dir.parent() {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(kept)
}

/// Syncs every file in sled's blob directory `blobs`, and the directory.
/// A file sled removes meanwhile is skipped.
fn sync_blobs(blobs: &Path) -> io::Result<()> {
    let entries = match std::fs::read_dir(blobs) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        match std::fs::File::open(entry?.path()).and_then(|file| file.sync_data()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    std::fs::File::open(blobs)?.sync_all()
}

/// Whether [`StateMachine::open_checked`] checks the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Open it as it is.
    No,
    /// Check it. `purged` is the last index purged from the log, if any
    /// was: a damaged state is rebuilt only if the current snapshot
    /// reaches that far, so that the snapshot and the log hold every
    /// entry it applied.
    Yes {
        /// The log's last purged index.
        purged: Option<LogIndex>,
    },
}

/// Whether the current snapshot in `snapshot_dir` and a log purged up to
/// `purged` can rebuild a state: `Err` says why not. The snapshot, if
/// there is one, must read whole and its rows sum to its digest: openraft
/// installs it into the empty state.
fn rebuildable(snapshot_dir: &Path, purged: Option<LogIndex>) -> Result<(), String> {
    let current = match std::fs::File::open(snapshot_dir.join(snapshot::CURRENT)) {
        Ok(mut file) => match snapshot::check_rows(&mut file) {
            Ok(meta) => Some(meta),
            Err(error) => return Err(format!("the current snapshot cannot be used: {error}")),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(error) => return Err(format!("the current snapshot cannot be read: {error}")),
    };
    let Some(purged) = purged else { return Ok(()) };
    match current {
        Some(meta) if meta.last_log_id.is_some_and(|last| last.index >= purged) => Ok(()),
        Some(meta) => Err(format!(
            "the log is purged up to index {purged}, past the current snapshot's {}",
            meta.last_log_id.map_or(0, |id| id.index)
        )),
        None => Err(format!("the log is purged up to index {purged} and no snapshot is kept")),
    }
}

/// openraft's handle on the state machine of one node.
pub struct StateMachine {
    /// The rows, shared with the `Store` service.
    state: Arc<AppliedState>,
    /// Where snapshots are kept.
    snapshot_dir: PathBuf,
    /// Held by the snapshot build under way, so that installing a snapshot
    /// (which replaces every row) waits for the copy to end.
    building: Arc<tokio::sync::Mutex<()>>,
}

impl StateMachine {
    /// Opens the state in `state_dir` and snapshots in `snapshot_dir`.
    pub fn open(state_dir: &Path, snapshot_dir: &Path) -> io::Result<Self> {
        let (machine, _) = Self::open_checked(state_dir, snapshot_dir, Check::No)?;
        Ok(machine)
    }

    /// Opens the state as [`Self::open`] does, checking it first if
    /// `check` says so: its rows must sum to the digest it keeps. A state
    /// that fails is moved aside ([`DAMAGED_STATE_DIR`]) and the node
    /// starts from an empty one, if the current snapshot and the log can
    /// rebuild it ([`Check::Yes`]); else opening fails with an
    /// [`Unrebuildable`] error (kind `InvalidData`).
    pub fn open_checked(state_dir: &Path, snapshot_dir: &Path, check: Check) -> io::Result<(Self, StartupCheck)> {
        std::fs::create_dir_all(snapshot_dir)?;
        snapshot::remove_temp_files(snapshot_dir)?;
        snapshot::upgrade_legacy(snapshot_dir)?;
        let (state, found) = match check {
            Check::No => (AppliedState::open(state_dir)?, StartupCheck::NotRun),
            Check::Yes { purged } => {
                // Moves the state aside and opens an empty one, for
                // openraft to fill from the snapshot and the log.
                let rebuild = |reason: String| -> io::Result<(AppliedState, StartupCheck)> {
                    let kept = set_aside(state_dir)?;
                    Ok((AppliedState::open(state_dir)?, StartupCheck::Rebuilt { reason, kept }))
                };
                match open_verified(state_dir)? {
                    Ok((state, StartupCheck::InstallCutShort)) if rebuildable(snapshot_dir, purged).is_ok() => {
                        drop(state);
                        rebuild("a snapshot install was cut short".to_owned())?
                    }
                    Ok(whole) => whole,
                    Err(reason) => match rebuildable(snapshot_dir, purged) {
                        Ok(()) => rebuild(reason)?,
                        Err(why) => {
                            return Err(io::Error::new(io::ErrorKind::InvalidData, Unrebuildable { reason, why }));
                        }
                    },
                }
            }
        };
        let state = Arc::new(state);
        start_writer(Arc::downgrade(&state))?;
        Ok((StateMachine { state, snapshot_dir: snapshot_dir.to_owned(), building: Arc::default() }, found))
    }

    /// The rows, for readers.
    pub fn state(&self) -> Arc<AppliedState> {
        self.state.clone()
    }

    /// Flushes the applied state; called at shutdown.
    pub fn flush(&self) -> io::Result<()> {
        self.state.flush()
    }

    /// Applies one entry and answers its client, if one waits for it.
    fn apply_one(&self, entry: &Entry, responder: Option<ApplyResponder<TypeConfig>>) -> io::Result<()> {
        let started = std::time::Instant::now();
        let result = self.state.apply_entry(entry).map_err(|e| {
            self.state.note_unknown_layout(&e);
            io::Error::other(format!("applying {}: {e}", entry.log_id))
        })?;
        crate::metrics::node().apply.observe(started.elapsed().as_secs_f64());
        if let Some(responder) = responder {
            responder.send(result);
        }
        Ok(())
    }

    /// Begins a snapshot of the state as it stands, holding `building`.
    fn builder(&self, building: tokio::sync::OwnedMutexGuard<()>) -> SnapshotBuilder {
        let (meta, digest) = self.state.begin_capture();
        SnapshotBuilder {
            state: self.state.clone(),
            meta,
            digest,
            dir: self.snapshot_dir.clone(),
            _copy: CopyGuard(self.state.clone()),
            _building: building,
        }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.snapshot_dir.join(snapshot::CURRENT)
    }
}

/// A snapshot of the state as of one log id, begun between two applies and
/// copied by openraft's build task while entries go on being applied.
pub struct SnapshotBuilder {
    /// The state being copied; flushed before the snapshot is reported (and
    /// the log behind it purged).
    state: Arc<AppliedState>,
    /// Its metadata.
    meta: SnapshotMeta,
    /// The state digest at its log id.
    digest: u64,
    /// The snapshot directory.
    dir: PathBuf,
    /// Ends the copy if the builder is dropped unfinished.
    _copy: CopyGuard,
    /// Keeps installs out until the build ends.
    _building: tokio::sync::OwnedMutexGuard<()>,
}

/// Ends a snapshot copy when dropped, so an abandoned build stops keeping
/// before-images.
struct CopyGuard(Arc<AppliedState>);

impl Drop for CopyGuard {
    fn drop(&mut self) {
        self.0.end_capture();
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let started = std::time::Instant::now();
        let (state, dir, meta, digest) = (self.state.clone(), self.dir.clone(), self.meta.clone(), self.digest);
        // Seconds of sled reads and file writes with a large state: off the
        // async workers.
        let (written, kept) = tokio::task::spawn_blocking(move || {
            let written = state.write_captured(&dir, &meta, digest)?;
            // sled next: once the snapshot is current, openraft may purge
            // the log behind it, and the state must not depend on that log.
            state.flush()?;
            Ok::<_, io::Error>(written)
        })
        .await
        .map_err(|e| io::Error::other(format!("the snapshot copy stopped: {e}")))??;
        let mut file = std::fs::File::open(&written)?;
        let current = snapshot::make_current(&self.dir, &written, &mut file)?;
        tracing::info!(
            last_log_id = ?self.meta.last_log_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            rows_changed_meanwhile = kept,
            "snapshot built"
        );
        let metrics = crate::metrics::node();
        metrics.snapshots_built.inc();
        metrics.snapshot_build.observe(started.elapsed().as_secs_f64());
        Ok(Snapshot { meta: self.meta.clone(), snapshot: SnapshotFile::open(&current)? })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let progress = self.state.progress();
        Ok((progress.applied, progress.membership))
    }

    /// Applies each entry and answers its waiting client straight away, so
    /// a write returns as soon as its own entry is applied. The whole stream
    /// is drained: openraft expects every entry it sent to be consumed.
    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut first_error = None;
        while let Some(item) = entries.next().await {
            // After a failure nothing more is applied (the node stops on the
            // error), but the stream is still read to its end.
            if first_error.is_some() {
                continue;
            }
            match item.and_then(|(entry, responder)| self.apply_one(&entry, responder)) {
                Ok(()) => {}
                Err(e) => first_error = Some(e),
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Begins a snapshot at the last applied entry (this runs between two
    /// applies); the rows are copied later, by the builder. Declines while
    /// another build is under way; openraft then tries again later.
    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        match self.building.clone().try_lock_owned() {
            Ok(building) => Some(self.builder(building)),
            Err(_) => {
                tracing::info!("a snapshot is being built already; not starting another");
                None
            }
        }
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let building = self.building.clone().lock_owned().await;
        self.builder(building)
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotFile) -> io::Result<()> {
        let SnapshotFile { path, mut file } = snapshot;
        // A build still copying rows would read the new state's rows.
        let _building = self.building.lock().await;
        // A snapshot from elsewhere must read whole and sum to its digest
        // before it becomes current (and a rebuild's source). Seconds for
        // a large state: off the async threads, which (one by default)
        // also carry this node's Raft heartbeats.
        let mut file = if path == self.snapshot_path() {
            file
        } else {
            tokio::task::spawn_blocking(move || snapshot::check_rows(&mut file).map(|_| file))
                .await
                .map_err(|e| io::Error::other(format!("the snapshot check stopped: {e}")))??
        };
        // Durable as the current snapshot before the state is touched, so an
        // interrupted install can be redone from it.
        snapshot::make_current(&self.snapshot_dir, &path, &mut file)?;
        // Seconds for a large state: off the async threads, which (one by
        // default) also carry this node's Raft heartbeats.
        let (state, meta_owned) = (self.state.clone(), meta.clone());
        tokio::task::spawn_blocking(move || state.replace_with(&mut file, &meta_owned))
            .await
            .map_err(|e| io::Error::other(format!("the snapshot install stopped: {e}")))??;
        // A peer's newer build wrote it: this node stops here (and refuses
        // to start) rather than apply what follows the old way.
        super::layout::check_known(&*self.state).inspect_err(|e| self.state.note_unknown_layout(e))?;
        tracing::info!(last_log_id = ?meta.last_log_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let mut file = match SnapshotFile::open(&self.snapshot_path()) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let (meta, _) = snapshot::read_header(&mut std::io::BufReader::new(&mut file.file))?;
        std::io::Seek::rewind(&mut file.file)?;
        Ok(Some(Snapshot { meta, snapshot: file }))
    }
}

/// The row at `key` as `rows` hold it (`Row`), or `Locked` if a prepared
/// transaction holds it for writing: its committed value may be about to
/// change. The lock check and the row come from the same `rows`.
fn locked_or_row(rows: &Overlay<'_>, key: &RowKey) -> io::Result<QueryResult> {
    match txn::writer_of(&Staged::new(rows), key)? {
        Some(holder) => Ok(QueryResult::Locked { key: key.clone(), holder }),
        None => rows.row(key).map(QueryResult::Row),
    }
}

fn read_meta<T: serde::de::DeserializeOwned>(tree: &sled::Tree, key: &[u8]) -> io::Result<Option<T>> {
    tree.get(key).map_err(sled_io)?.map(|bytes| decode_stored(&bytes)).transpose()
}

/// Logs, with the entry's log id, every part of `result` that refused a
/// malformed or out-of-bounds command or met a corrupt record: refusals
/// that point at a caller (or a bug) rather than at the shop's rules.
fn log_refusals(log_id: &LogId, result: &CommandResult) {
    match result {
        CommandResult::Rejected(rejection @ (Rejection::Invalid(_) | Rejection::Corrupt { .. })) => {
            tracing::warn!(%log_id, %rejection, "committed command refused");
        }
        CommandResult::Many(results) => results.iter().for_each(|result| log_refusals(log_id, result)),
        _ => {}
    }
}

/// What sled is given for the unwritten rows: the rows, then the
/// bookkeeping as of the last entry they come from.
fn batch_writes(unwritten: &Unwritten, progress: &Progress) -> Vec<Write> {
    let mut writes: Vec<Write> = unwritten.rows().map(|(key, value)| (key.clone(), value.clone())).collect();
    writes.extend(bookkeeping_writes(progress));
    writes
}

/// The bookkeeping keys as of `progress`: applied log id, membership,
/// digest (read back by `AppliedState::open`).
fn bookkeeping_writes(progress: &Progress) -> [Write; 3] {
    [
        (keys::APPLIED.into(), Some(encode(&progress.applied).into())),
        (keys::MEMBERSHIP.into(), Some(encode(&progress.membership).into())),
        (keys::DIGEST.into(), Some(progress.digest.to_be_bytes().as_slice().into())),
    ]
}

/// Starts the thread that hands applied rows to sled about
/// [`WRITE_BEHIND`] (or [`unwritten::LOCKED_WRITE_BEHIND`]) after `apply`
/// staged them; it ends with the state.
fn start_writer(state: Weak<AppliedState>) -> io::Result<()> {
    std::thread::Builder::new().name("state-writer".into()).spawn(move || loop {
        std::thread::sleep(WRITE_BEHIND);
        let Some(state) = state.upgrade() else { return };
        if let Err(error) = state.settle_when_due() {
            // The rows stay unwritten and `apply` keeps them in view; when
            // it next writes them itself it meets the error and the node
            // stops.
            tracing::error!(%error, "writing applied rows to sled failed");
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_many_stops_at_the_reply_budget() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let value = vec![b'x'; 64 * 1024];
        let keys: Vec<RowKey> = (0..MAX_REPLY_BYTES / value.len() + 1).map(|i| RowKey::Kv(format!("k{i}"))).collect();
        for key in &keys {
            store_directly(&machine.state, key, &Row { version: 1, value: value.clone() });
        }
        let error = machine.state.answer(&Query::GetMany(keys.clone())).unwrap_err();
        let too_large = error.get_ref().and_then(|e| e.downcast_ref::<ReplyTooLarge>());
        assert_eq!(too_large.map(|e| e.rows), Some(keys.len()), "{error}");
        let fewer = Query::GetMany(keys[..10].to_vec());
        assert!(matches!(machine.state.answer(&fewer), Ok(QueryResult::Many(rows)) if rows.len() == 10));
    }

    /// Entries that each set two rows to the same value, applied on one
    /// thread while another reads both rows with `GetMany` over and over:
    /// every answer holds two equal values, never one row from before an
    /// entry and the other from after it. (Read a row at a time, with the
    /// apply lock taken per row, answers mixed two states.)
    #[test]
    fn get_many_answers_from_one_applied_state() {
        use std::sync::atomic::AtomicBool;
        const ENTRIES: u64 = 3_000;
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = Arc::clone(&machine.state);
        let (a, b) = (RowKey::Kv("a".into()), RowKey::Kv("b".into()));
        let query = Query::GetMany(vec![a.clone(), b.clone()]);
        let entry = move |index: u64| {
            let set = |key: &RowKey| {
                Command::single(crate::command::RowWrite::upsert(key.clone(), index.to_be_bytes().to_vec()))
            };
            Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(Command::Many(vec![set(&a), set(&b)]).into()),
            }
        };
        state.apply_entry(&entry(1)).expect("applied");
        let done = Arc::new(AtomicBool::new(false));
        let writer = {
            let (state, done) = (Arc::clone(&state), Arc::clone(&done));
            std::thread::spawn(move || {
                for index in 2..=ENTRIES {
                    state.apply_entry(&entry(index)).expect("applied");
                }
                done.store(true, Ordering::Release);
            })
        };
        let mut answers = 0u64;
        while !done.load(Ordering::Acquire) {
            let Ok(QueryResult::Many(rows)) = state.answer(&query) else { panic!("no rows") };
            let values: Vec<Option<Vec<u8>>> = rows.into_iter().map(|row| row.map(|row| row.value)).collect();
            assert_eq!(values[0], values[1], "answer {answers} mixed two entries");
            answers += 1;
        }
        writer.join().expect("writer");
        assert!(answers > 0, "no read ran while the entries applied");
    }

    #[test]
    fn get_many_answers_in_the_order_asked_across_chunks() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let count = WAITING_SCAN_KEYS as u64 * 2 + 7;
        for index in 1..=count {
            write(&machine.state, index, &format!("k{index}"), Some(index));
        }
        // Ten absent keys first, then every key backwards: not sled's order.
        let asked: Vec<u64> = (1..=count + 10).rev().collect();
        let keys: Vec<RowKey> = asked.iter().map(|i| RowKey::Kv(format!("k{i}"))).collect();
        let Ok(QueryResult::Many(rows)) = machine.state.answer(&Query::GetMany(keys)) else { panic!("no rows") };
        let values: Vec<Option<u64>> = rows
            .into_iter()
            .map(|row| row.map(|row| u64::from_be_bytes(row.value.try_into().expect("eight bytes"))))
            .collect();
        let expected: Vec<Option<u64>> = asked.iter().map(|i| (*i <= count).then_some(*i)).collect();
        assert_eq!(values, expected);
    }

    #[test]
    fn would_change_is_a_dry_run() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let done = RowKey::TxnDone(100, TxnId(7));
        store_directly(&machine.state, &done, &Row { version: 1, value: vec![] });
        let due = Command::PruneTxns { before_ms: 200 };
        assert!(machine.state.would_change(&due).expect("dry run"));
        assert!(machine.state.row(&done).expect("read").is_some(), "a dry run writes nothing");
        assert!(!machine.state.would_change(&Command::PruneTxns { before_ms: 100 }).expect("dry run"));
    }

    /// Puts `row` straight into sled and adds its key to the keys sled may
    /// hold, which readers trust as `apply` does. Only for keys that no
    /// lock row or kept read covers.
    fn store_directly(state: &AppliedState, key: &RowKey, row: &Row) {
        let sled_key = keys::row_key(key);
        state.tree.insert(&sled_key, encode(row)).expect("insert");
        if let Some(known) = state.lock().known.as_mut() {
            known.note(&sled_key);
        }
    }

    /// `verify_state` sums the rows afresh: they match the digest the state
    /// kept, until a row disappears from sled underneath it (as a lost
    /// update would make it); it refuses to check a state a node has open.
    #[tokio::test]
    async fn verify_state_tells_rows_that_no_longer_sum_to_the_digest() {
        let dir = tempfile::tempdir().expect("temp dir");
        let state_dir = dir.path().join("state");
        {
            let machine = StateMachine::open(&state_dir, &dir.path().join("snapshots")).expect("open");
            for index in 1..=300u64 {
                write(&machine.state, index, &format!("k{:03}", index % 120), Some(index));
            }
            write(&machine.state, 301, "k005", None);
            machine.state.settle().expect("every entry's rows written");
            // A last batch of its own, so the start-up redo (the last
            // batch's list) cannot put back the row removed below.
            write(&machine.state, 302, "last", Some(302));
            machine.state.settle().expect("written");
            let running = verify_state(&state_dir).expect_err("a state a node has open is not checked");
            assert_eq!(running.kind(), io::ErrorKind::ResourceBusy, "{running}");
        }
        let whole = verified(&state_dir).await;
        let Verification::Checked { applied, rows, kept, summed } = whole else { panic!("{whole:?}") };
        assert_eq!(applied.map(|id| id.index), Some(302));
        assert!(rows >= 120, "the key-value rows at least: {rows}");
        assert_ne!(kept, 0);
        assert_eq!(summed, kept);
        {
            let db = sled::open(&state_dir).expect("sled");
            let tree = db.open_tree("shop").expect("tree");
            let lost = tree.remove(keys::row_key(&RowKey::Kv("k007".into()))).expect("remove");
            assert!(lost.is_some(), "the row was there");
            db.flush().expect("flush");
        }
        let damaged = verified(&state_dir).await;
        let Verification::Checked { rows: left, kept: still_kept, summed, .. } = damaged else { panic!("{damaged:?}") };
        assert_eq!((left, still_kept), (rows - 1, kept));
        assert_ne!(summed, kept, "one row fewer sums to another digest");
        let nothing = verify_state(&dir.path().join("nothing")).expect("no state, no check");
        assert_eq!(nothing, Verification::NoState);
    }

    /// A checked start-up: a whole state opens as it is; a damaged one
    /// is moved aside and the node starts from an empty state, or, where
    /// the snapshot and log could not rebuild it, does not start and
    /// leaves the state where it is.
    #[tokio::test]
    async fn a_checked_start_rebuilds_a_damaged_state_only_where_it_can() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (dir.path().join("state"), dir.path().join("snapshots"));
        {
            let machine = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
            for index in 1..=200u64 {
                write(&machine.state, index, &format!("k{:03}", index % 80), Some(index));
            }
            machine.state.settle().expect("written");
            // A last batch of its own, as in the test above.
            write(&machine.state, 201, "last", Some(201));
            machine.state.settle().expect("written");
        }
        let (machine, found) = checked(&state_dir, &snapshot_dir, Check::Yes { purged: None }).await.expect("opens");
        let StartupCheck::Whole { rows } = found else { panic!("{found:?}") };
        assert!(rows >= 81, "{rows}");
        assert_eq!(machine.state.progress().applied.map(|id| id.index), Some(201));
        drop(machine);
        {
            let db = reopen_sled(&state_dir).await;
            let tree = db.open_tree("shop").expect("tree");
            assert!(tree.remove(keys::row_key(&RowKey::Kv("k007".into()))).expect("remove").is_some());
            db.flush().expect("flush");
        }
        // A log purged up to index 150, and no snapshot to stand for it.
        let refused = checked(&state_dir, &snapshot_dir, Check::Yes { purged: Some(150) })
            .await
            .err()
            .expect("a damaged state that cannot be rebuilt does not open");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        let message = refused.to_string();
        assert!(message.contains("sled lost or changed rows"), "{message}");
        assert!(message.contains("purged up to index 150 and no snapshot is kept"), "{message}");
        assert!(!dir.path().join(DAMAGED_STATE_DIR).exists(), "the state stays where it is");

        // Nor from a snapshot whose rows do not sum to its digest, even
        // with the whole log: openraft would install it into the empty state.
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        let mut bad = SnapshotWriter::create(&snapshot_dir, &meta, 77).expect("create");
        bad.row(&keys::row_key(&RowKey::Kv("x".into())), &encode(&Row { version: 1, value: vec![1] })).expect("row");
        std::fs::rename(bad.finish().expect("written"), snapshot_dir.join(snapshot::CURRENT)).expect("current");
        let refused = checked(&state_dir, &snapshot_dir, Check::Yes { purged: None }).await.err().expect("refused");
        assert!(refused.to_string().contains("the current snapshot cannot be used"), "{refused}");
        std::fs::remove_file(snapshot_dir.join(snapshot::CURRENT)).expect("removed");

        let (machine, found) = checked(&state_dir, &snapshot_dir, Check::Yes { purged: None }).await.expect("opens");
        let StartupCheck::Rebuilt { reason, kept } = found else { panic!("{found:?}") };
        assert!(reason.contains(&format!("{} rows at applied index 201", rows - 1)), "{reason}");
        assert_eq!(kept, dir.path().join(DAMAGED_STATE_DIR));
        assert!(kept.join("db").exists(), "the damaged state is kept for a look");
        let progress = machine.state.progress();
        assert!(
            progress.applied.is_none() && progress.digest == 0,
            "an empty state, for openraft to fill: {progress:?}"
        );
        assert_eq!(machine.state.summed_digest().expect("sums"), (0, 0));
    }

    /// A snapshot copy sums the rows it copies: when sled has lost one
    /// underneath the state machine, the copy fails, no snapshot becomes
    /// current (the log behind the last one stays), and the state is
    /// marked damaged for the node to stop and rebuild it.
    #[tokio::test]
    async fn a_snapshot_of_rows_sled_lost_is_refused_and_marks_the_state_damaged() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        for index in 1..=300u64 {
            write(&machine.state, index, &format!("k{:03}", index % 150), Some(index));
        }
        let whole = machine.get_snapshot_builder().await.build_snapshot().await.expect("a whole state copies");
        assert_eq!(whole.meta.last_log_id.map(|id| id.index), Some(300));
        assert!(!machine.state.found_damaged());

        write(&machine.state, 301, "k999", Some(301));
        machine.state.settle().expect("written");
        let lost = machine.state.tree.remove(keys::row_key(&RowKey::Kv("k042".into()))).expect("remove");
        assert!(lost.is_some(), "the row was in sled");
        let refused = machine.get_snapshot_builder().await.build_snapshot().await.expect_err("refused");
        assert_eq!(refused.kind(), io::ErrorKind::InvalidData, "{refused}");
        assert!(refused.to_string().contains("sled lost or changed rows"), "{refused}");
        assert!(machine.state.found_damaged());
        let record = crate::node::last_run::LastRun::read(dir.path()).expect("read");
        assert_eq!(record, Some(crate::node::last_run::LastRun::Damaged), "recorded for the next start");
        let current = machine.get_current_snapshot().await.expect("read").expect("the first snapshot stays");
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(300));
    }

    /// [`StateMachine::open_checked`] once whoever had `state_dir` open
    /// before has let go of it.
    async fn checked(state_dir: &Path, snapshot_dir: &Path, check: Check) -> io::Result<(StateMachine, StartupCheck)> {
        once_let_go(state_dir, || StateMachine::open_checked(state_dir, snapshot_dir, check)).await
    }

    /// `open` once it no longer fails with `ResourceBusy`: sled lets go of
    /// `state_dir` a little after the last handle is dropped.
    async fn once_let_go<T>(state_dir: &Path, open: impl Fn() -> io::Result<T>) -> io::Result<T> {
        for _ in 0..100 {
            match open() {
                Err(error) if error.kind() == io::ErrorKind::ResourceBusy => {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                other => return other,
            }
        }
        panic!("{} stayed locked", state_dir.display())
    }

    /// sled on `state_dir` once whoever had it open before has let go.
    async fn reopen_sled(state_dir: &Path) -> sled::Db {
        for _ in 0..100 {
            match sled::open(state_dir) {
                Ok(db) => return db,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        panic!("{} stayed locked", state_dir.display())
    }

    /// `verify_state` once whoever had `state_dir` open before has let go
    /// of it (see [`reopen`]).
    async fn verified(state_dir: &Path) -> Verification {
        once_let_go(state_dir, || verify_state(state_dir)).await.expect("checks")
    }

    /// Applies, as log entry `index`, one write: `key` set to `value`, or
    /// removed without one.
    fn write(state: &AppliedState, index: u64, key: &str, value: Option<u64>) {
        let key = RowKey::Kv(key.to_owned());
        let write = match value {
            Some(value) => crate::command::RowWrite::upsert(key, value.to_be_bytes().to_vec()),
            None => crate::command::RowWrite::delete(key),
        };
        let entry = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Command::single(write).into()),
        };
        state.apply_entry(&entry).expect("applied");
    }

    #[test]
    fn a_switch_to_a_layout_this_build_does_not_know_stops_the_apply_and_is_noted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        write(&machine.state, 1, "a", Some(1));
        assert_eq!(machine.state.met_unknown_layout(), None);
        let newer = super::super::layout::NEWEST + 1;
        let entry = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 2),
            payload: EntryPayload::Normal(Command::UseLayout { layout: newer }.into()),
        };
        let error = machine.apply_one(&entry, None).expect_err("the entry is not applied");
        assert!(error.to_string().contains(&format!("layout {newer}")), "{error}");
        assert_eq!(machine.state.met_unknown_layout(), Some(newer), "the node learns why its core stopped");
        assert_eq!(machine.state.progress().applied.map(|id| id.index), Some(1), "nothing of the entry is applied");
        assert_eq!(machine.state.layout().unwrap(), super::super::layout::EVENT_ROWS);
    }

    /// Every row, every applied entry's included.
    fn all_rows(state: &AppliedState) -> RawRows {
        state.settle().expect("rows written");
        state.tree.scan_prefix([keys::ROW]).map(|item| item.expect("read")).collect()
    }

    /// Writes that change, remove and add rows ahead of a snapshot's reader
    /// and behind it: the copy is still exactly the state at its log id.
    #[test]
    fn a_snapshot_copied_while_entries_apply_is_the_state_at_its_log_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = &machine.state;
        let mut index = 0;
        for i in 0..1_500u64 {
            index += 1;
            write(state, index, &format!("k{:04}", i % 700), Some(i));
        }
        let expected = all_rows(state);
        assert!(expected.len() > 3 * SNAPSHOT_CHUNK_ROWS, "the copy takes several chunks");
        let (meta, digest) = state.begin_capture();
        assert_eq!(meta.last_log_id.map(|id| id.index), Some(index));
        assert_eq!(digest, state.progress().digest);
        let mut copy = RawRows::new();
        let mut round = 0u64;
        loop {
            // Keys all over the range: some already copied, some not.
            for n in 0..40u64 {
                index += 1;
                let key = format!("k{:04}", (round * 97 + n * 31) % 900);
                write(state, index, &key, (!n.is_multiple_of(4)).then_some(index));
            }
            round += 1;
            let (rows, last) = state.capture_chunk().expect("chunk");
            copy.extend(rows);
            if last {
                break;
            }
        }
        assert!(state.end_capture() > 0, "rows were changed ahead of the reader");
        assert!(round > 3);
        assert_ne!(all_rows(state), expected, "the writes did change the state");
        assert_eq!(copy.len(), expected.len());
        assert!(copy == expected, "the copy is the state at the snapshot's log id");
    }

    /// The whole build, with a writer applying entries as fast as it can
    /// beside it: the file holds the rows and digest of its log id, and a
    /// fresh replica that installs it has exactly that state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_built_beside_a_busy_writer_installs_as_the_state_at_its_log_id() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = machine.state();
        for i in 1..=3_000u64 {
            write(&state, i, &format!("k{:04}", i % 2_000), Some(i));
        }
        let expected = all_rows(&state);
        let expected_digest = state.progress().digest;
        let mut builder = machine.get_snapshot_builder().await;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (state, stop) = (state.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut index = 3_000u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    index += 1;
                    write(
                        &state,
                        index,
                        &format!("k{:04}", (index * 7) % 2_500),
                        (!index.is_multiple_of(3)).then_some(index),
                    );
                }
                index - 3_000
            })
        };
        let snapshot = builder.build_snapshot().await.expect("built");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let written = writer.join().expect("writer");
        assert!(written > 0, "entries were applied during the build");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(3_000));

        let mut file = snapshot.snapshot.file;
        let mut rows = RawRows::new();
        let (_, digest) = snapshot::read_rows(&mut file, |chunk| {
            rows.extend(chunk.into_iter().map(|(k, v)| (sled::IVec::from(k), sled::IVec::from(v))));
            Ok(())
        })
        .expect("read back");
        assert_eq!(digest, expected_digest);
        assert!(rows == expected, "the file holds the rows at its log id");

        let other = tempfile::tempdir().expect("temp dir");
        let mut replica =
            StateMachine::open(&other.path().join("state"), &other.path().join("snapshots")).expect("open");
        let source = SnapshotFile::open(&snapshot.snapshot.path).expect("open the snapshot");
        replica.install_snapshot(&snapshot.meta, source).await.expect("install");
        assert!(all_rows(&replica.state) == expected);
        assert_eq!(replica.state.progress().digest, expected_digest);
        // Rows the snapshot brought are found by the entries after it (the
        // known rows were read again from sled): the digest stays the sum.
        for index in 3_001..=3_100u64 {
            write(&replica.state, index, &format!("k{:04}", (index * 7) % 2_500), (index % 4 != 0).then_some(index));
        }
        assert_eq!(replica.state.progress().digest, summed_digest(&all_rows(&replica.state)));
    }

    /// A read right after `apply` sees the entry, before the writer thread
    /// has handed it to sled.
    #[test]
    fn readers_see_an_entry_as_soon_as_it_is_applied() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = &machine.state;
        for index in 1..=50u64 {
            write(state, index, "k", Some(index));
            let answer = state.answer(&Query::Get(RowKey::Kv("k".into()))).expect("read");
            let QueryResult::Row(Some(row)) = answer else { panic!("{answer:?}") };
            assert_eq!(row.value, index.to_be_bytes());
        }
    }

    /// Clients' reads and the housekeeping's scans see the rows still
    /// waiting for sled without writing them: they answer while the writer
    /// lock is held (a read that wrote the rows first would wait for it),
    /// they see a transaction prepared meanwhile, and sled still lacks its
    /// rows afterwards.
    #[test]
    fn reads_see_the_waiting_rows_and_leave_them_waiting() {
        use crate::command::{Effect, TxnId, TxnPart};
        use crate::records::shop::{encode_record, ClientRecord};
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = Arc::clone(&machine.state);
        let key = |index: u64| format!("k{index}");
        let held = written_then_held(&state, 3, 8, &key, &|index| Some(index));
        let part = TxnPart {
            id: TxnId(1),
            checks: vec![],
            effects: vec![Effect::Put(RowKey::Client(2), encode_record(&ClientRecord { document: "d".into() }))],
        };
        let prepare = Entry {
            log_id: openraft::testing::log_id::<TypeConfig>(1, 1, 9),
            payload: EntryPayload::Normal(Command::Prepare { part, decision_shard: Shard::Even, at_ms: 0 }.into()),
        };
        assert_eq!(state.apply_entry(&prepare).expect("applied"), CommandResult::Prepared);
        let (answers, answered) = std::sync::mpsc::channel();
        let reader = Arc::clone(&state);
        std::thread::spawn(move || {
            let one = reader.answer(&Query::Get(RowKey::Kv("k8".into())));
            let many = reader.answer(&Query::GetMany(vec![RowKey::Kv("k2".into()), RowKey::Kv("k6".into())]));
            let locked = reader.answer(&Query::Get(RowKey::Client(2)));
            let scans = (reader.has_lapsed_session(u64::MAX), reader.prepared_txns(10));
            let _ = answers.send((one, many, locked, scans));
        });
        let (one, many, locked, (lapsed, prepared)) = answered
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("the reads answered without the writer lock");
        let value = |row: &Option<Row>| row.as_ref().map(|row| row.value.clone());
        assert!(matches!(one.expect("get"), QueryResult::Row(row) if value(&row) == Some(8u64.to_be_bytes().to_vec())));
        let Ok(QueryResult::Many(rows)) = many else { panic!("get many") };
        assert_eq!(
            rows.iter().map(value).collect::<Vec<_>>(),
            vec![Some(2u64.to_be_bytes().to_vec()), Some(6u64.to_be_bytes().to_vec())]
        );
        let locked = locked.expect("locked");
        assert!(matches!(locked, QueryResult::Locked { holder: TxnId(1), .. }), "{locked:?}");
        assert!(!lapsed.expect("sessions"), "no session exists");
        assert_eq!(prepared.expect("prepared"), vec![(TxnId(1), Shard::Even, 0)]);
        assert_eq!(state.lock_row_count(), 1, "the prepare's lock row");
        let waiting =
            [RowKey::Intent(Box::new(RowKey::Client(2))), RowKey::TxnPrepared(0, TxnId(1)), RowKey::Kv(key(8))];
        for key in waiting.iter().chain(&[RowKey::Kv(key(4))]) {
            assert!(
                state.tree.get(keys::row_key(key)).expect("sled").is_none(),
                "{key} reached sled while the writer lock was held"
            );
        }
        drop(held);
        state.settle().expect("written");
        for key in &waiting {
            assert!(state.tree.get(keys::row_key(key)).expect("sled").is_some(), "{key} in sled once written");
        }
    }

    /// Opens the state machine in `state_dir` again once the dropped one
    /// has let go of it: sled's background thread releases the directory
    /// lock shortly after the drop, so wait for that, not for a fixed time.
    async fn reopen(state_dir: &Path, snapshot_dir: &Path) -> StateMachine {
        let mut reopened = StateMachine::open(state_dir, snapshot_dir);
        for _ in 0..100 {
            if reopened.is_ok() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            reopened = StateMachine::open(state_dir, snapshot_dir);
        }
        reopened.expect("reopen")
    }

    /// The lock rows `apply` knows of are exactly those sled holds with
    /// the unwritten changes over it, through a prepare, its resolve, and
    /// a restart; a key locked by a prepared transaction still refuses a
    /// second writer.
    #[tokio::test]
    async fn the_known_lock_rows_are_the_stored_ones() {
        use crate::command::{Effect, Outcome, TxnId, TxnPart};
        use crate::records::shop::{encode_record, ClientRecord};
        let dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (dir.path().join("state"), dir.path().join("snapshots"));
        let apply = |machine: &StateMachine, index: u64, command: Command| {
            let entry = Entry {
                log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(command.into()),
            };
            machine.state.apply_entry(&entry).expect("applied")
        };
        let stored_locks = |machine: &StateMachine| {
            machine.state.settle().expect("settle");
            LockRows::scan(&machine.state.tree).expect("scan").keys
        };
        let known_locks = |machine: &StateMachine| machine.state.lock().locks.keys.clone();
        let locked_to_readers = |machine: &StateMachine| {
            let answer = machine.state.answer(&Query::Get(RowKey::Client(2))).expect("answered");
            matches!(answer, QueryResult::Locked { .. })
        };
        let put = |id: u128, value: u8| TxnPart {
            id: TxnId(id),
            checks: vec![],
            effects: vec![Effect::Put(
                RowKey::Client(2),
                encode_record(&ClientRecord { document: format!("{value}") }),
            )],
        };
        let prepare = |id, value| Command::Prepare { part: put(id, value), decision_shard: Shard::Even, at_ms: 0 };
        {
            let machine = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
            assert_eq!(apply(&machine, 1, prepare(1, 1)), CommandResult::Prepared);
            // Known before sled has the entry's rows, and the same after.
            assert_eq!(known_locks(&machine).len(), 1, "the prepare's lock is known at once");
            assert_eq!(known_locks(&machine), stored_locks(&machine));
            assert!(locked_to_readers(&machine), "a reader meets the lock");
            let second = apply(&machine, 2, prepare(2, 2));
            assert!(matches!(second, CommandResult::Rejected(Rejection::Locked { .. })), "{second:?}");
        }
        let machine = reopen(&state_dir, &snapshot_dir).await;
        assert_eq!(known_locks(&machine).len(), 1, "read from sled at start-up");
        assert!(locked_to_readers(&machine), "a reader meets the lock after a restart");
        let resolve = Command::Resolve { id: TxnId(1), outcome: Outcome::Commit, at_ms: 0 };
        assert_eq!(apply(&machine, 3, resolve), CommandResult::Committed);
        assert!(known_locks(&machine).is_empty(), "the resolve's unlock is known at once");
        assert!(!locked_to_readers(&machine), "and readers see the row");
        assert_eq!(known_locks(&machine), stored_locks(&machine));
        assert_eq!(apply(&machine, 4, prepare(3, 3)), CommandResult::Prepared, "the key is free again");
    }

    /// The rows and digest of a replica that applied entries `1..=last`
    /// (entry `i` sets `key(i)` to `value(i)`) and never crashed.
    fn never_crashed(last: u64, key: &dyn Fn(u64) -> String, value: &dyn Fn(u64) -> Option<u64>) -> (RawRows, u64) {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        written_then_applied(&machine.state, last, last, key, value);
        (all_rows(&machine.state), machine.state.progress().digest)
    }

    /// Applies entries `1..=written` and has sled hold them, then applies
    /// `written + 1..=last`, whose rows are left to the writer thread.
    fn written_then_applied(
        state: &AppliedState,
        written: u64,
        last: u64,
        key: &dyn Fn(u64) -> String,
        value: &dyn Fn(u64) -> Option<u64>,
    ) {
        for index in 1..=written {
            write(state, index, &key(index), value(index));
        }
        state.settle().expect("written");
        for index in written + 1..=last {
            write(state, index, &key(index), value(index));
        }
    }

    /// As [`written_then_applied`], but the entries after `written` are
    /// applied holding the lock the writer thread takes, and the lock is
    /// returned: however loaded the machine, they stay in memory only (a
    /// few small entries do not fill a batch, which would take the lock).
    fn written_then_held<'s>(
        state: &'s AppliedState,
        written: u64,
        last: u64,
        key: &dyn Fn(u64) -> String,
        value: &dyn Fn(u64) -> Option<u64>,
    ) -> MutexGuard<'s, ()> {
        // More would fill a batch, and `apply` would wait for this lock.
        assert!(last - written < unwritten::MAX_UNWRITTEN_ENTRIES as u64, "too many entries to hold back");
        written_then_applied(state, written, written, key, value);
        let writes = state.lock_writes();
        for index in written + 1..=last {
            write(state, index, &key(index), value(index));
        }
        writes
    }

    /// The digest of `rows`, summed afresh.
    fn summed_digest(rows: &RawRows) -> u64 {
        rows.iter().fold(0u64, |sum, (key, value)| {
            let key = keys::parse_row_key(key).expect("a row key");
            sum.wrapping_add(row_digest(&key, &decode_stored(value).expect("a row")))
        })
    }

    /// Each entry removes the events of the entry `RETAINED_ENTRIES` before
    /// it, with their values read in the same pass, and the digest stays
    /// the sum over the rows that remain.
    #[test]
    fn expired_events_leave_and_the_digest_follows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = &machine.state;
        let last = feed::RETAINED_ENTRIES + 30;
        for index in 1..=last {
            write(state, index, &format!("k{}", index % 50), (!index.is_multiple_of(7)).then_some(index));
            if index % 5_000 == 0 {
                state.settle().expect("written");
            }
        }
        let rows = all_rows(state);
        assert_eq!(state.progress().digest, summed_digest(&rows));
        let events = |of: u64| {
            let prefix = feed::entry_events(of);
            rows.iter().filter(|(key, _)| key.starts_with(&prefix)).count()
        };
        assert_eq!((events(1), events(30)), (0, 0), "expired");
        assert_eq!((events(31), events(last)), (1, 1), "retained");
    }

    /// Entries applied while a batch is on its way to sled, half of it
    /// there, read the batch's rows (for their checks and the digest), and
    /// the state once it lands is that of a node that wrote everything at
    /// once.
    #[test]
    fn entries_apply_while_a_batch_is_written() {
        let key = |index: u64| format!("k{:02}", index * 7 % 30);
        let value = |index: u64| (!index.is_multiple_of(3)).then_some(index);
        let expected = never_crashed(150, &key, &value);
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("open");
        let state = &machine.state;
        written_then_applied(state, 40, 90, &key, &value);
        // What `write_aside` does, stopped half way through sled's writes.
        let writes_lock = state.lock_writes();
        let writes = {
            let mut applying = state.lock();
            let Applying { progress, unwritten, writing, .. } = &mut *applying;
            let writes = batch_writes(unwritten, progress);
            *writing = Some(std::mem::take(unwritten));
            writes
        };
        let kv_rows = keys::table_prefix(crate::command::Table::Kv);
        let half = writes.iter().filter(|(key, _)| key.starts_with(&kv_rows)).count() / 2;
        assert!(half > 5, "the batch holds rows of many keys");
        unwritten::write_list(&state.tree, &writes).expect("the list");
        let (landed, rest) =
            writes.split_at(writes.iter().position(|(key, _)| key.starts_with(&kv_rows)).unwrap() + half);
        unwritten::write_each(&state.tree, landed).expect("half the batch's rows");
        for index in 91..=150 {
            write(state, index, &key(index), value(index));
        }
        unwritten::write_each(&state.tree, rest).expect("the rest");
        state.lock().writing = None;
        drop(writes_lock);
        assert!((all_rows(state), state.progress().digest) == expected);
    }

    /// Entries applied but not yet in sled are lost in a crash; sled then
    /// holds the state of an earlier log id, and applying the lost entries
    /// again (as openraft does from the log) gives the state of a replica
    /// that never crashed.
    #[tokio::test]
    async fn a_crash_loses_only_unwritten_entries_and_replaying_them_restores_the_state() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (dir.path().join("state"), dir.path().join("snapshots"));
        let key = |index: u64| format!("k{:03}", index * 7 % 120);
        let value = |index: u64| (!index.is_multiple_of(5)).then_some(index);
        let expected = never_crashed(300, &key, &value);

        let written = {
            let machine = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
            let _writes = written_then_held(&machine.state, 200, 300, &key, &value);
            // The crash: what was only in memory is gone.
            let mut applying = machine.state.lock();
            assert!(applying.unwritten.entries() > 0, "the last entries were not written yet");
            let stored: Option<LogId> = read_meta(&machine.state.tree, keys::APPLIED).expect("read").flatten();
            applying.unwritten = Unwritten::default();
            machine.state.has_unwritten.store(false, Ordering::Release);
            stored.map_or(0, |id| id.index)
        };
        let mut machine = reopen(&state_dir, &snapshot_dir).await;
        let (applied, _) = machine.applied_state().await.expect("applied state");
        assert_eq!(written, 200, "the entries after 200 were held back");
        assert_eq!(applied.map(|id| id.index), Some(written), "sled holds the state as of the last write");
        for index in written + 1..=300 {
            write(&machine.state, index, &key(index), value(index));
        }
        assert!((all_rows(&machine.state), machine.state.progress().digest) == expected);
    }

    /// A crash while a batch is handed to sled keeps some of its writes
    /// and not the rest; start-up writes the rest from the batch's list, so
    /// sled holds the state after the whole batch, not a mix.
    #[tokio::test]
    async fn a_batch_cut_short_by_a_crash_is_completed_at_start_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (dir.path().join("state"), dir.path().join("snapshots"));
        let key = |index: u64| format!("k{}", index % 13);
        let value = |index: u64| (!index.is_multiple_of(4)).then_some(index);
        let expected = never_crashed(80, &key, &value);
        {
            let machine = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
            let _writes = written_then_held(&machine.state, 50, 80, &key, &value);
            // The crash, as sled recovers it: the list and the first three
            // writes of the batch, nothing after them.
            let mut applying = machine.state.lock();
            let writes = batch_writes(&applying.unwritten, &applying.progress);
            assert!(writes.len() > 6, "the batch has rows after the first three");
            unwritten::write_list(&machine.state.tree, &writes).expect("list");
            unwritten::write_each(&machine.state.tree, &writes[..3]).expect("some writes");
            applying.unwritten = Unwritten::default();
            machine.state.has_unwritten.store(false, Ordering::Release);
            machine.state.db.flush().expect("flush");
        }
        let mut machine = reopen(&state_dir, &snapshot_dir).await;
        let (applied, _) = machine.applied_state().await.expect("applied state");
        assert_eq!(applied.map(|id| id.index), Some(80));
        assert!((all_rows(&machine.state), machine.state.progress().digest) == expected);
    }

    #[tokio::test]
    async fn an_interrupted_install_reports_an_empty_state_so_openraft_reinstalls() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (dir.path().join("state"), dir.path().join("snapshots"));
        {
            let machine = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
            let applied = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 5));
            machine.state.tree.insert(keys::APPLIED, encode(&applied)).expect("applied");
            machine.state.tree.insert(keys::INSTALLING, &[]).expect("marker");
            machine.flush().expect("flush");
        }
        let mut machine = reopen(&state_dir, &snapshot_dir).await;
        let (applied, _) = machine.applied_state().await.expect("applied state");
        assert_eq!(applied, None);
        drop(machine);
        // A checked start moves such a state aside instead: the install
        // replaces every row anyway, and its half-replaced rows may be
        // what a power cut damaged.
        let (_, found) = checked(&state_dir, &snapshot_dir, Check::Yes { purged: None }).await.expect("opens");
        let StartupCheck::Rebuilt { reason, .. } = found else { panic!("{found:?}") };
        assert_eq!(reason, "a snapshot install was cut short");
    }

    /// A peer's snapshot in a layout this build does not know installs
    /// (it is the shard's state), then stops the node with the layout
    /// noted; a restart refuses it too.
    #[tokio::test]
    async fn a_snapshot_in_a_layout_this_build_does_not_know_stops_the_node() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 9)),
            last_membership: StoredMembership::default(),
        };
        let newer = super::super::layout::NEWEST + 1;
        let layout = Row { version: 1, value: newer.to_be_bytes().to_vec() };
        let key = keys::row_key(&RowKey::Layout);
        let mut writer =
            SnapshotWriter::create(dir.path(), &meta, keys::stored_row_digest(&key, &layout)).expect("create");
        writer.row(&key, &encode(&layout)).expect("row");
        let path = writer.finish().expect("written");

        let replica_dir = tempfile::tempdir().expect("temp dir");
        let (state_dir, snapshot_dir) = (replica_dir.path().join("state"), replica_dir.path().join("snapshots"));
        let mut replica = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
        assert_eq!(replica.state.met_unknown_layout(), None);
        let error = replica
            .install_snapshot(&meta, SnapshotFile::open(&path).expect("open"))
            .await
            .expect_err("the node stops after the install");
        assert!(error.to_string().contains(&format!("layout {newer}")), "{error}");
        assert_eq!(replica.state.met_unknown_layout(), Some(newer), "the node learns why its core stopped");
        drop(replica);

        let reopened = StateMachine::open(&state_dir, &snapshot_dir).expect("open");
        let refused = super::super::layout::check_known(&*reopened.state).expect_err("start-up refuses the state");
        assert_eq!(super::super::layout::unknown_layout(&refused), Some(newer));
    }

    /// An install sums the rows it reads: a snapshot whose rows do not sum
    /// to the digest it records is refused.
    #[tokio::test]
    async fn a_snapshot_whose_rows_do_not_sum_to_its_digest_is_not_installed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let meta = SnapshotMeta {
            last_log_id: Some(openraft::testing::log_id::<TypeConfig>(1, 1, 9)),
            last_membership: StoredMembership::default(),
        };
        let row = Row { version: 3, value: b"v".to_vec() };
        let key = keys::row_key(&RowKey::Kv("k".into()));
        for (digest, installs) in [(keys::stored_row_digest(&key, &row), true), (12345, false)] {
            let mut writer = SnapshotWriter::create(dir.path(), &meta, digest).expect("create");
            writer.row(&key, &encode(&row)).expect("row");
            let path = writer.finish().expect("written");
            let other = tempfile::tempdir().expect("temp dir");
            let mut replica =
                StateMachine::open(&other.path().join("state"), &other.path().join("snapshots")).expect("open");
            let installed = replica.install_snapshot(&meta, SnapshotFile::open(&path).expect("open")).await;
            match installed {
                Ok(()) => assert!(installs, "a snapshot of digest {digest} was installed"),
                Err(error) => {
                    assert!(!installs, "{error}");
                    assert!(error.to_string().contains("but it records the digest"), "{error}");
                    let current = replica.get_current_snapshot().await.expect("read");
                    assert!(current.is_none(), "a refused snapshot does not become current");
                    assert!(replica.state.progress().applied.is_none(), "the state is untouched");
                }
            }
        }
    }
}
