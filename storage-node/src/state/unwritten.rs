//! Entries applied in memory whose rows sled has not been given yet, and
//! how they are handed to sled all or nothing.
//!
//! sled makes every `apply_batch` atomic by writing its log buffer out
//! before and after the batch, each time with a `sync_file_range` that
//! waits for the disk, on a pool thread woken for it. Once per entry, on
//! every replica, that cost a quarter of kv-put's throughput at 64 clients
//! (measured by a sled built without the wait). So `apply` changes the rows
//! here first and hands sled the changes of many entries as one batch a few
//! milliseconds later ([`WRITE_BEHIND`]), or sooner when many are waiting.
//! Each batch still holds the rows, the last-applied log id, the digest and
//! the membership together, so sled's state stays that of some log prefix
//! and a crash loses only entries that openraft applies again from the log.
//!
//! The batch does not go through `apply_batch` either: once a tree has
//! taken one, sled puts every read and write of the process behind one
//! lock, and `apply`'s reads wait for whole batches. [`write_all`] gets
//! all-or-nothing from sled's recovery instead, which replays its log only
//! up to the first message missing in its tail (sled 0.34's
//! `check_contiguity_in_unstable_tail`) and so keeps a prefix of the
//! writes in the order they were made. Only one thread writes sled at a
//! time (under `AppliedState`'s write lock), so that order is the order of
//! the calls.
//!
//! The writer hands a batch to sled without holding the apply lock: the
//! batch moves aside (`writing`), `apply` goes on staging the next one and
//! reads through both. At a million keys a batch of sled inserts took
//! about 1 ms, paging leaves in, and every entry applied meanwhile waited.
//!
//! `apply` reads the rows through an [`Overlay`] (these changes over
//! sled's rows), and so do clients' reads and the housekeeping's short
//! scans (`AppliedState::read_waiting`); long scans, snapshots and the
//! change feed's listings first have the rows written
//! (`AppliedState::settle`), then read sled.

use std::cell::RefCell;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::time::{Duration, Instant};

use serde_bytes::{ByteBuf, Bytes};
use sled::IVec;

use super::apply::RowSource;
use super::keys;
use super::known::KnownRows;
use crate::codec::{decode_stored, encode};
use crate::command::{Row, RowKey, Table};

/// How long an applied entry waits before its rows are handed to sled.
pub const WRITE_BEHIND: Duration = Duration::from_millis(10);
/// How long the rows wait instead while they hold lock rows that sled
/// lacks: a transaction's resolve comes a Raft round or two after its
/// prepare (20-40 ms at 64 clients), and if it comes before the batch is
/// written, its lock rows and its row in the index of prepared
/// transactions never reach sled (see [`Unwritten`]). The wait counts from
/// the batch's first entry, so a prepare applied late in it has less time.
/// With `create-order` at 64 clients, sled took 3.1 inserts and removes of
/// lock rows per order at 50 ms, 1.6-1.8 at 100 ms (docs/performance.md).
/// Not the default for every batch: when `apply` still waited while sled
/// took a batch, a longer one showed in kv-put's p99; since the batch
/// moves aside (see the module notes), 50 ms for every batch measured
/// within the noise of 10 ms at 64 clients, so the shorter wait stays.
pub const LOCKED_WRITE_BEHIND: Duration = Duration::from_millis(100);
/// Entries waiting that make `apply` write them at once.
pub const MAX_UNWRITTEN_ENTRIES: usize = 256;
/// Bytes of rows waiting that make `apply` write them at once.
pub const MAX_UNWRITTEN_BYTES: usize = 8 * 1024 * 1024;

/// Row changes of the entries applied since the last write to sled.
///
/// A row that sled does not hold and that an entry removes again before
/// the batch goes to sled leaves the batch: sled has nothing to change
/// there. That is the life of a cross-shard transaction's lock rows and
/// its prepared-index row, taken at prepare and dropped at resolve, which
/// rides in the next entry; each would otherwise cost sled an insert and a
/// remove on every replica.
#[derive(Debug, Default)]
pub struct Unwritten {
    /// Each changed row by sled key.
    rows: BTreeMap<IVec, Waiting>,
    /// Entries these changes come from.
    entries: usize,
    /// Bytes of keys and values staged (a row changed twice counts twice).
    bytes: usize,
    /// When the first of these entries was applied.
    since: Option<Instant>,
    /// Whether an entry added a lock row that sled lacks.
    new_lock_rows: bool,
}

impl Unwritten {
    /// True if no entry waits.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// True if enough waits that `apply` should write it now.
    pub fn is_full(&self) -> bool {
        self.entries >= MAX_UNWRITTEN_ENTRIES || self.bytes >= MAX_UNWRITTEN_BYTES
    }

    /// True if the writer thread should hand these rows to sled now: they
    /// have waited [`LOCKED_WRITE_BEHIND`] if they hold new lock rows, or
    /// any time at all if not (the thread wakes every [`WRITE_BEHIND`]).
    pub fn is_due(&self) -> bool {
        match self.since {
            None => false,
            Some(_) if !self.new_lock_rows => true,
            Some(since) => since.elapsed() >= LOCKED_WRITE_BEHIND,
        }
    }

    /// The newest value of `key` if an entry waiting here changed it.
    pub fn get(&self, key: &[u8]) -> Option<&Option<IVec>> {
        self.rows.get(key).map(|waiting| &waiting.value)
    }

    /// Records that the row at `key` now holds `value` (`None`: removed).
    /// `in_sled` says whether sled holds a row at `key`; it is read only
    /// when no waiting entry has changed the row yet.
    pub fn stage(&mut self, key: IVec, value: Option<IVec>, in_sled: bool) {
        self.bytes = self.bytes.saturating_add(key.len()).saturating_add(value.as_ref().map_or(0, |v| v.len()));
        match self.rows.entry(key) {
            Entry::Occupied(waiting) if value.is_none() && !waiting.get().in_sled => {
                waiting.remove();
            }
            Entry::Occupied(mut waiting) => waiting.get_mut().value = value,
            Entry::Vacant(_) if value.is_none() && !in_sled => {}
            Entry::Vacant(slot) => {
                self.new_lock_rows |= !in_sled && LockRows::is_lock_key(slot.key());
                slot.insert(Waiting { value, in_sled });
            }
        }
    }

    /// Forgets which rows sled lacked, after a write to sled that failed
    /// part way: any of them may be there now.
    pub fn may_be_in_sled(&mut self) {
        self.rows.values_mut().for_each(|waiting| waiting.in_sled = true);
    }

    /// Takes back `older`, the batch before these rows, whose write to sled
    /// failed part way: its rows wait again under the newer changes here,
    /// and any row may be in sled now.
    pub fn take_back(&mut self, older: Unwritten) {
        for (key, waiting) in older.rows {
            self.rows.entry(key).or_insert(waiting);
        }
        self.may_be_in_sled();
        self.entries = self.entries.saturating_add(older.entries);
        self.bytes = self.bytes.saturating_add(older.bytes);
        self.since = match (self.since, older.since) {
            (Some(newer), Some(older)) => Some(newer.min(older)),
            (newer, older) => newer.or(older),
        };
        self.new_lock_rows |= older.new_lock_rows;
    }

    /// Counts one more entry applied here.
    pub fn entry_done(&mut self) {
        self.since.get_or_insert_with(Instant::now);
        self.entries = self.entries.saturating_add(1);
    }

    /// How many entries wait.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The changed rows in key order, `None` for a removal.
    pub fn rows(&self) -> impl Iterator<Item = (&IVec, &Option<IVec>)> {
        self.rows.iter().map(|(key, waiting)| (key, &waiting.value))
    }
}

/// A changed row waiting for sled.
#[derive(Debug)]
struct Waiting {
    /// Its newest raw value, `None` if removed.
    value: Option<IVec>,
    /// Whether sled held the row when the first waiting entry changed it.
    in_sled: bool,
}

/// The sled keys of the lock rows (table `Intents`) that exist, in sled
/// or among the unwritten changes. A transaction in flight holds a few;
/// most keys a command touches have none, and a lookup of an absent key
/// costs a walk through sled's tree like any other (measured: about 15 µs
/// of a local order's CPU went to such walks). Kept exact by `apply`,
/// which notes every lock row it stages; read from sled again whenever
/// sled's rows are replaced.
#[derive(Debug, Default)]
pub struct LockRows {
    /// The lock rows' sled keys.
    pub(super) keys: BTreeSet<IVec>,
}

impl LockRows {
    /// The lock rows `tree` holds.
    pub fn scan(tree: &sled::Tree) -> io::Result<Self> {
        let keys = tree.scan_prefix(keys::table_prefix(Table::Intents)).keys();
        Ok(LockRows { keys: keys.collect::<Result<_, _>>().map_err(sled_io)? })
    }

    /// True if `key` is the sled key of a lock row.
    pub fn is_lock_key(key: &[u8]) -> bool {
        key.starts_with(&keys::table_prefix(Table::Intents))
    }

    /// Records that the row at `key` now exists or not (other keys are
    /// ignored).
    pub fn note(&mut self, key: &IVec, exists: bool) {
        if !Self::is_lock_key(key) {
            return;
        }
        if exists {
            self.keys.insert(key.clone());
        } else {
            self.keys.remove(key);
        }
    }

    /// How many lock rows exist.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no lock row exists.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// False if no lock row exists at `key`.
    pub fn may_exist(&self, key: &[u8]) -> bool {
        self.keys.contains(key)
    }
}

/// What sled answered to `apply`'s reads, by sled key (`None`: no row),
/// kept across entries.
///
/// An order's rows are read many times: by each order of a batched entry
/// that holds the same product (to price, to check and to take stock),
/// again for each changed row's old value (the digest, the snapshot copy),
/// and again by the resolve entry of a cross-shard order that its prepare
/// entry read. In `create-order` at 64 clients a walk through sled's tree
/// took 2-13 µs, most for rows sled had to page in or for keys it does not
/// hold, ten times a lookup here.
///
/// Most rows just handed to sled are kept too ([`Self::keep_written`],
/// `kept_after_write`): the next write of a row reads its old value (for
/// the digest), and a product's row is read again by the next order that
/// holds it. With kv-put at 64 clients over 10,000 keys, that took the
/// lookups that reach sled from 3.1 per write (over three replicas) to
/// 1.1.
///
/// Exact, not a guess: sled's rows change only by batches of unwritten
/// rows, and every row is staged there (see [`Self::forget`]) before it
/// can reach sled; until its batch is written [`Overlay::raw`] answers it
/// from that batch, before it looks here. Holds at most
/// [`MAX_KEPT_READS`] rows and [`MAX_KEPT_BYTES`] of keys and values, and
/// starts over when full; a row bigger than [`MAX_KEPT_ROW_BYTES`] is not
/// kept.
#[derive(Debug, Default)]
pub struct SledReads {
    kept: RefCell<Kept>,
}

#[derive(Debug, Default)]
struct Kept {
    rows: HashMap<IVec, Option<IVec>>,
    /// Bytes of the keys and values in `rows`.
    bytes: usize,
}

/// Most rows [`SledReads`] keeps.
pub const MAX_KEPT_READS: usize = 8_192;
/// Most bytes of keys and values [`SledReads`] keeps.
pub const MAX_KEPT_BYTES: usize = 2 * 1024 * 1024;
/// Bytes of key and value above which a row is not kept (shop rows are a
/// few hundred; a key-value row may hold 64 KiB).
pub const MAX_KEPT_ROW_BYTES: usize = 4 * 1024;

impl SledReads {
    /// Drops what sled said about `key`: the row is about to change.
    pub fn forget(&self, key: &[u8]) {
        let mut kept = self.kept.borrow_mut();
        if let Some(value) = kept.rows.remove(key) {
            kept.bytes = kept.bytes.saturating_sub(kept_size(key.len(), value.as_deref()));
        }
    }

    /// Drops everything: sled's rows changed other than through a batch.
    pub fn forget_all(&self) {
        *self.kept.borrow_mut() = Kept::default();
    }

    fn get(&self, key: &[u8]) -> Option<Option<IVec>> {
        self.kept.borrow().rows.get(key).cloned()
    }

    /// Keeps a copy of `value`: sled's may be a slice of a whole page it
    /// read, which keeping would keep in memory.
    fn keep(&self, key: &[u8], value: Option<&[u8]>) {
        self.keep_owned(IVec::from(key), value.map(IVec::from));
    }

    /// Keeps what `tree` now holds at the keys of `batch`, just written to
    /// it, except those that `newer` (staged since, not written yet)
    /// changes again ([`Overlay::raw`] answers those from `newer`, and
    /// staging them forgot what was kept), and those no one reads by key
    /// (`kept_after_write`).
    pub fn keep_written(&self, tree: &sled::Tree, batch: &Unwritten, newer: &Unwritten) {
        for (key, value) in batch.rows() {
            if newer.get(key).is_none() && kept_after_write(key, value.as_ref()) {
                debug_assert_eq!(tree.get(key).ok(), Some(value.clone()), "a written row that sled does not hold");
                self.keep_owned(key.clone(), value.clone());
            }
        }
    }

    fn keep_owned(&self, key: IVec, value: Option<IVec>) {
        let size = kept_size(key.len(), value.as_deref());
        if size > MAX_KEPT_ROW_BYTES {
            return;
        }
        let mut kept = self.kept.borrow_mut();
        if kept.rows.len() >= MAX_KEPT_READS || kept.bytes.saturating_add(size) > MAX_KEPT_BYTES {
            *kept = Kept::default();
        }
        let key_len = key.len();
        let replaced_size = kept.rows.insert(key, value).map_or(0, |old| kept_size(key_len, old.as_deref()));
        kept.bytes = kept.bytes.saturating_sub(replaced_size).saturating_add(size);
    }
}

/// Whether [`SledReads::keep_written`] keeps a row just written: only if
/// it is likely to be read by key before it changes again. Not the rows
/// that each write, order or transaction adds and that are read back by
/// range, or by key only rarely: change-feed events (removed by range
/// when they fall out of retention), orders and the order indexes (a new
/// key is known absent by [`KnownRows`], and listings scan), idempotency
/// keys (read by key only when a call is retried), the indexes only
/// pruning walks (finished transactions, idempotency keys, idle writers).
/// Nor transaction records: the resolve does read its record by key, but
/// usually while the prepare's rows are still waiting for sled
/// (they hold lock rows, [`LOCKED_WRITE_BEHIND`]); when they were already
/// written (a prepare late in its batch, a long scan's `settle`, a full
/// batch) it costs one lookup. Nor a removed intent or row of the index of
/// prepared transactions: an intent's absence is known without sled
/// ([`LockRows`]), and a prepared row's key does not come back; present
/// ones are kept for their resolve.
///
/// Keeping those rows filled `SledReads`, which starts over when full,
/// and pushed out the ones read again: with kv-put at 64 clients the
/// change-feed rows of a few seconds passed [`MAX_KEPT_BYTES`], and with
/// create-order at 64 clients the order, transaction and intent rows
/// passed [`MAX_KEPT_READS`]; each time every key-value or product row
/// was looked up in sled again.
fn kept_after_write(key: &[u8], value: Option<&IVec>) -> bool {
    use Table::*;
    match keys::table_of(key) {
        Some(
            Events | Orders | ClientOrders | ProductOrders | Txns | TxnsDone | Idempotency | IdempotencyDone
            | WritersIdle,
        ) => false,
        Some(TxnsPrepared | Intents) => value.is_some(),
        _ => true,
    }
}

/// The bytes a kept row counts: its key (`key_len` bytes) and its value.
fn kept_size(key_len: usize, value: Option<&[u8]>) -> usize {
    key_len.saturating_add(value.map_or(0, <[u8]>::len))
}

/// The rows as `apply` sees them: sled's, with the batch being written
/// to sled over them and the unwritten changes over both.
pub struct Overlay<'a> {
    /// The rows sled holds. Only rows of `writing` change there meanwhile.
    pub tree: &'a sled::Tree,
    /// Newer changes not yet in sled.
    pub unwritten: &'a Unwritten,
    /// The batch being handed to sled, if one is: older than `unwritten`.
    pub writing: Option<&'a Unwritten>,
    /// The lock rows that exist, if known (`None`: look each up in sled).
    pub locks: Option<&'a LockRows>,
    /// sled's answers so far, if they may be kept (`None`: ask sled each time).
    pub reads: Option<&'a SledReads>,
    /// The keys sled may hold of the tables `KnownRows` covers, if known
    /// (`None`: look each up in sled).
    pub known: Option<&'a KnownRows>,
}

impl Overlay<'_> {
    /// The newest waiting change of `key`, if a waiting entry changed it.
    fn waiting(&self, key: &[u8]) -> Option<&Option<IVec>> {
        self.unwritten.get(key).or_else(|| self.writing.and_then(|writing| writing.get(key)))
    }

    /// The waiting changes of keys under `prefix`, the newest per key, in
    /// key order: each key's value now (`None`: removed).
    fn waiting_under(&self, prefix: &[u8]) -> BTreeMap<&IVec, Option<&IVec>> {
        fn add<'b>(rows: &mut BTreeMap<&'b IVec, Option<&'b IVec>>, batch: &'b Unwritten, prefix: &[u8]) {
            let range = batch.rows.range::<[u8], _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded));
            for (key, waiting) in range.take_while(|(key, _)| key.starts_with(prefix)) {
                rows.insert(key, waiting.value.as_ref());
            }
        }
        let mut rows = BTreeMap::new();
        if let Some(writing) = self.writing {
            add(&mut rows, writing, prefix);
        }
        add(&mut rows, self.unwritten, prefix);
        rows
    }

    /// The raw value at a sled key.
    pub fn raw(&self, key: &[u8]) -> io::Result<Option<IVec>> {
        self.raw_keeping(key, true)
    }

    /// [`Self::raw`] for a row about to change: a kept answer serves, but
    /// sled's is not kept, since staging the row forgets it.
    pub fn raw_before_change(&self, key: &[u8]) -> io::Result<Option<IVec>> {
        self.raw_keeping(key, false)
    }

    fn raw_keeping(&self, key: &[u8], keep: bool) -> io::Result<Option<IVec>> {
        if let Some(value) = self.waiting(key) {
            return Ok(value.clone());
        }
        match (self.locks, self.known) {
            (Some(locks), _) if LockRows::is_lock_key(key) && !locks.may_exist(key) => {
                debug_assert!(self.tree.get(key).map_err(sled_io)?.is_none(), "a lock row missing from the set");
                Ok(None)
            }
            (_, Some(known)) if !known.may_hold(key) => {
                debug_assert!(self.tree.get(key).map_err(sled_io)?.is_none(), "a stored row missing from the known");
                Ok(None)
            }
            _ => self.stored(key, keep),
        }
    }

    /// The value sled holds at `key`, from [`SledReads`] if it was read
    /// before; kept there for later if `keep`.
    fn stored(&self, key: &[u8], keep: bool) -> io::Result<Option<IVec>> {
        let Some(reads) = self.reads else { return self.tree.get(key).map_err(sled_io) };
        if let Some(value) = reads.get(key) {
            return Ok(value);
        }
        let value = self.tree.get(key).map_err(sled_io)?;
        if keep {
            reads.keep(key, value.as_deref());
        }
        Ok(value)
    }

    /// Up to `limit` rows whose sled keys start with `prefix`, raw, in key
    /// order: sled's rows that no waiting entry changed, merged with the
    /// ones waiting entries wrote. One pass, values included, so a caller
    /// that removes the rows needs no second read of each.
    pub fn raw_under(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<(IVec, IVec)>> {
        let waiting = self.waiting_under(prefix);
        let mut stored = self.tree.scan_prefix(prefix);
        let mut next_stored = || -> io::Result<Option<(IVec, IVec)>> {
            for row in stored.by_ref() {
                let (key, value) = row.map_err(sled_io)?;
                if !waiting.contains_key(&key) {
                    return Ok(Some((key, value)));
                }
            }
            Ok(None)
        };
        let mut staged = waiting.iter().filter_map(|(key, value)| value.map(|value| ((*key).clone(), value.clone())));
        let mut next_staged = staged.next();
        let mut from_sled = next_stored()?;
        let mut found = Vec::new();
        while found.len() < limit {
            let staged_first = match (&from_sled, &next_staged) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((stored, _)), Some((staged, _))) => staged < stored,
            };
            let row = if staged_first {
                std::mem::replace(&mut next_staged, staged.next())
            } else {
                std::mem::replace(&mut from_sled, next_stored()?)
            };
            found.extend(row);
        }
        Ok(found)
    }
}

impl RowSource for Overlay<'_> {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        self.raw(&keys::row_key(key))?.map(|bytes| decode_stored(&bytes)).transpose()
    }

    /// sled's keys under `prefix` that no waiting entry changed, merged in
    /// key order with the ones waiting entries wrote.
    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        let rows = self.raw_under(prefix, limit)?;
        Ok(rows.iter().filter_map(|(key, _)| keys::parse_row_key(key)).collect())
    }
}

/// One write to sled: a key and its new value, `None` to remove it.
pub type Write = (IVec, Option<IVec>);

/// Writes `writes` so that after a crash sled holds all of them or none,
/// once [`redo`] has run at start-up. The list goes first, whole, as the
/// one value under [`keys::REDO`]; then each write by itself. sled
/// recovers a prefix of what it was given, so a crash that keeps any of
/// the writes keeps the list, and [`redo`] writes the rest. Returns how
/// many writes sled was given: the list, then each of `writes`.
pub fn write_all(tree: &sled::Tree, writes: &[Write]) -> io::Result<usize> {
    write_list(tree, writes)?;
    write_each(tree, writes)?;
    Ok(writes.len() + 1)
}

/// Keeps `writes` under [`keys::REDO`] for [`redo`].
pub(super) fn write_list(tree: &sled::Tree, writes: &[Write]) -> io::Result<()> {
    tree.insert(keys::REDO, encode_list(writes)).map(drop).map_err(sled_io)
}

/// The list [`redo`] reads: each key and value as one byte string. These
/// are the bytes bincode gives a list of plain byte slices (a length, then
/// the bytes), copied at once instead of one serializer call per byte, which
/// had taken a twentieth of the state writer's time at 256 clients of kv-put.
fn encode_list(writes: &[Write]) -> Vec<u8> {
    let list: Vec<(&Bytes, Option<&Bytes>)> =
        writes.iter().map(|(key, value)| (Bytes::new(key), value.as_deref().map(Bytes::new))).collect();
    encode(&list)
}

/// The writes of a list [`encode_list`] made.
fn decode_list(list: &[u8]) -> io::Result<Vec<Write>> {
    let list: Vec<(ByteBuf, Option<ByteBuf>)> = decode_stored(list)?;
    Ok(list.into_iter().map(|(key, value)| (key.into_vec().into(), value.map(|v| v.into_vec().into()))).collect())
}

/// Writes the last list [`write_all`] was given again, if there is one:
/// the same values in the same order, so it changes nothing if they are
/// all there already. Called before anything else reads the tree.
pub fn redo(tree: &sled::Tree) -> io::Result<()> {
    let Some(list) = tree.get(keys::REDO).map_err(sled_io)? else {
        return Ok(());
    };
    write_each(tree, &decode_list(&list)?)
}

/// Each write by itself, in order. Besides a snapshot install and the
/// redo at start-up, rows reach sled only through here, in batches that
/// `stage_changes` staged first: what keeps [`SledReads`] exact and
/// [`KnownRows`] a superset of sled's keys.
pub fn write_each(tree: &sled::Tree, writes: &[Write]) -> io::Result<()> {
    for (key, value) in writes {
        match value {
            Some(value) => tree.insert(key, value.clone()).map(drop),
            None => tree.remove(key).map(drop),
        }
        .map_err(sled_io)?;
    }
    Ok(())
}

/// sled refusing the state for good: it does not support what it found
/// (files of another sled version or configuration, such as another
/// segment size). That does not pass with a restart, so a node that meets
/// it at start-up stops as for an operator's error
/// (`NodeError::StateRefused`) instead of restarting into it again and
/// again.
#[derive(Debug, thiserror::Error)]
#[error("sled refuses the state: {0}")]
pub struct SledRefusal(pub String);

/// True if `error` is sled's [`SledRefusal`].
pub fn is_refusal(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<SledRefusal>())
}

/// sled's error as an I/O error.
pub fn sled_io(error: sled::Error) -> io::Error {
    match error {
        sled::Error::Io(e) => e,
        // What is on disk is damaged (see `machine::is_damage`). sled
        // reports most of its own "bugs" when its files are not as it left
        // them (a page it points at is missing), as after a power cut, so
        // they count as damage too: the start-up check rebuilds the state.
        damage @ (sled::Error::Corruption { .. } | sled::Error::ReportableBug(_)) => {
            io::Error::new(io::ErrorKind::InvalidData, damage.to_string())
        }
        refusal @ sled::Error::Unsupported(_) => io::Error::other(SledRefusal(refusal.to_string())),
        other => io::Error::other(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TxnId;

    fn kv(name: &str) -> RowKey {
        RowKey::Kv(name.to_owned())
    }

    fn raw_row(value: u8) -> IVec {
        IVec::from(encode(&Row { version: 1, value: vec![value] }))
    }

    /// sled's "bugs" (mostly its files not as it left them) count as damage,
    /// which the start-up check rebuilds; an unsupported state is refused.
    #[test]
    fn sled_errors_are_damage_or_a_refusal() {
        let bug = sled_io(sled::Error::ReportableBug("failed to retrieve META page".into()));
        assert!(crate::state::machine::is_damage(&bug) && !is_refusal(&bug), "{bug:?}");
        let unsupported = sled_io(sled::Error::Unsupported("cannot change the io buffer size".into()));
        assert!(is_refusal(&unsupported) && !crate::state::machine::is_damage(&unsupported), "{unsupported:?}");
        assert!(unsupported.to_string().starts_with("sled refuses the state"), "{unsupported}");
    }

    /// A redo list is written as byte strings, but its bytes are the ones
    /// earlier builds wrote (plain byte slices), so a list a node left
    /// before an upgrade is redone after it, and the other way round.
    #[test]
    fn redo_list_bytes_are_those_of_plain_byte_slices() {
        let writes: Vec<Write> = vec![
            (IVec::from(&b"r:kv/a"[..]), Some(raw_row(7))),
            (IVec::from(&b"r:kv/b"[..]), None),
            (IVec::from(vec![0u8; 300]), Some(IVec::from(vec![0xff; 70_000]))),
        ];
        let plain: Vec<(&[u8], Option<&[u8]>)> = writes.iter().map(|(k, v)| (k.as_ref(), v.as_deref())).collect();
        let earlier = encode(&plain);
        assert_eq!(encode_list(&writes), earlier);
        assert_eq!(decode_list(&earlier).expect("decodes"), writes);
        assert!(decode_list(&earlier[..earlier.len() - 1]).is_err(), "a cut list is refused, not half redone");
    }

    /// Keys listed through the overlay are sled's and the waiting ones,
    /// without the removed ones, in key order, cut at the limit.
    #[test]
    fn keys_merge_sled_and_waiting_changes_in_order() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        for name in ["b", "d", "f", "h"] {
            tree.insert(keys::row_key(&kv(name)), raw_row(1)).expect("insert");
        }
        tree.insert(keys::row_key(&RowKey::Client(1)), raw_row(1)).expect("another table");
        let mut unwritten = Unwritten::default();
        unwritten.stage(keys::row_key(&kv("a")).into(), Some(raw_row(2)), false);
        unwritten.stage(keys::row_key(&kv("d")).into(), None, true);
        unwritten.stage(keys::row_key(&kv("e")).into(), Some(raw_row(2)), false);
        unwritten.stage(keys::row_key(&kv("f")).into(), Some(raw_row(3)), true);
        unwritten.stage(keys::row_key(&kv("z")).into(), None, false);
        unwritten.stage(keys::row_key(&RowKey::Client(2)).into(), Some(raw_row(2)), false);
        unwritten.entry_done();
        let overlay =
            Overlay { tree: &tree, unwritten: &unwritten, writing: None, locks: None, reads: None, known: None };
        let prefix = keys::table_prefix(crate::command::Table::Kv);
        let names = |limit| overlay.keys_with_prefix(&prefix, limit).expect("keys");
        assert_eq!(names(usize::MAX), ["a", "b", "e", "f", "h"].map(kv).to_vec());
        assert_eq!(names(3), ["a", "b", "e"].map(kv).to_vec());
        assert_eq!(overlay.row(&kv("f")).expect("row").map(|row| row.value), Some(vec![3]));
        assert_eq!(overlay.row(&kv("d")).expect("row"), None);
        assert_eq!(overlay.row(&kv("h")).expect("row").map(|row| row.value), Some(vec![1]));
    }

    /// sled's answers are kept (also an absent row's) until forgotten, and
    /// rows waiting to be written still come before them.
    #[test]
    fn sled_reads_are_kept_under_the_waiting_rows() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        let key = |name: &str| IVec::from(keys::row_key(&kv(name)));
        tree.insert(key("a"), raw_row(1)).expect("insert");
        tree.insert(key("b"), raw_row(1)).expect("insert");
        let reads = SledReads::default();
        let empty = Unwritten::default();
        let first =
            Overlay { tree: &tree, unwritten: &empty, writing: None, locks: None, reads: Some(&reads), known: None };
        let value = |overlay: &Overlay<'_>, name: &str| overlay.row(&kv(name)).expect("row").map(|row| row.value);
        assert_eq!(value(&first, "a"), Some(vec![1]));
        assert_eq!(value(&first, "b"), Some(vec![1]));
        assert_eq!(value(&first, "c"), None);
        // Changed behind the overlay's back (under the apply lock only the
        // batch being written changes sled, and that batch is read first):
        // the kept answers show that sled is not asked again.
        tree.insert(key("a"), raw_row(5)).expect("insert");
        tree.insert(key("c"), raw_row(5)).expect("insert");
        let mut writing = Unwritten::default();
        writing.stage(key("b"), Some(raw_row(2)), true);
        writing.entry_done();
        let mut unwritten = Unwritten::default();
        unwritten.stage(key("c"), Some(raw_row(3)), false);
        unwritten.entry_done();
        let second = Overlay {
            tree: &tree,
            unwritten: &unwritten,
            writing: Some(&writing),
            locks: None,
            reads: Some(&reads),
            known: None,
        };
        assert_eq!(value(&second, "a"), Some(vec![1]), "kept from the first read");
        assert_eq!(value(&second, "b"), Some(vec![2]), "the batch being written comes first");
        assert_eq!(value(&second, "c"), Some(vec![3]), "an unwritten row comes before a kept absence");
        let fresh = Overlay { tree: &tree, unwritten: &empty, writing: None, locks: None, reads: None, known: None };
        assert_eq!(value(&fresh, "a"), Some(vec![5]), "without kept reads sled is asked");
        reads.forget(&key("a"));
        reads.forget(&key("c"));
        let third =
            Overlay { tree: &tree, unwritten: &empty, writing: None, locks: None, reads: Some(&reads), known: None };
        assert_eq!(value(&third, "a"), Some(vec![5]), "a forgotten row is read from sled again");
        assert_eq!(value(&third, "c"), Some(vec![5]));
        assert_eq!(third.raw_before_change(&key("a")).expect("raw").as_deref(), Some(&raw_row(5)[..]));
        tree.insert(key("d"), raw_row(6)).expect("insert");
        assert!(third.raw_before_change(&key("d")).expect("raw").is_some());
        assert!(reads.get(&key("d")).is_none(), "a row about to change is not kept");
        for n in 0..MAX_KEPT_READS {
            value(&third, &format!("n{n}"));
        }
        assert!(reads.kept.borrow().rows.len() <= MAX_KEPT_READS, "bounded by rows");
        tree.insert(key("big"), vec![0u8; MAX_KEPT_ROW_BYTES]).expect("insert");
        value(&third, "big");
        assert!(reads.get(&key("big")).is_none(), "a big row is not kept");
        let kept = reads.kept.borrow();
        let bytes: usize = kept.rows.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len())).sum();
        assert_eq!(kept.bytes, bytes, "the byte count follows the rows");
        assert!(kept.bytes <= MAX_KEPT_BYTES, "bounded by bytes");
    }

    /// A batch just written is kept as sled now holds it (removals as
    /// absent rows), except rows staged again since and rows too big.
    #[test]
    fn written_rows_are_kept_unless_changed_since() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        let key = |name: &str| IVec::from(keys::row_key(&kv(name)));
        tree.insert(key("gone"), raw_row(1)).expect("insert");
        let mut batch = Unwritten::default();
        batch.stage(key("a"), Some(raw_row(2)), false);
        batch.stage(key("gone"), None, true);
        batch.stage(key("again"), Some(raw_row(3)), false);
        batch.stage(key("big"), Some(IVec::from(vec![0u8; MAX_KEPT_ROW_BYTES])), false);
        let event = IVec::from(keys::row_key(&RowKey::Event(9, 0)));
        batch.stage(event.clone(), Some(raw_row(5)), false);
        let order = IVec::from(keys::row_key(&RowKey::Order(7)));
        batch.stage(order.clone(), Some(raw_row(6)), false);
        let prepared = |id| IVec::from(keys::row_key(&RowKey::TxnPrepared(1, TxnId(id))));
        tree.insert(prepared(1), raw_row(7)).expect("insert");
        batch.stage(prepared(1), None, true);
        batch.stage(prepared(2), Some(raw_row(8)), false);
        batch.entry_done();
        let writes: Vec<Write> = batch.rows().map(|(key, value)| (key.clone(), value.clone())).collect();
        write_each(&tree, &writes).expect("written");
        let mut newer = Unwritten::default();
        newer.stage(key("again"), Some(raw_row(4)), true);
        newer.entry_done();
        let reads = SledReads::default();
        reads.keep_written(&tree, &batch, &newer);
        assert_eq!(reads.get(&key("a")), Some(Some(raw_row(2))));
        assert_eq!(reads.get(&key("gone")), Some(None), "a removed row is kept absent");
        assert_eq!(reads.get(&key("again")), None, "a row staged since is left to the newer batch");
        assert_eq!(reads.get(&key("big")), None, "a big row is not kept");
        assert_eq!(reads.get(&event), None, "a change-feed row is not kept");
        assert_eq!(reads.get(&order), None, "nor a new order");
        assert_eq!(reads.get(&prepared(1)), None, "nor a resolved transaction's prepared row");
        assert_eq!(reads.get(&prepared(2)), Some(Some(raw_row(8))), "a prepared row is kept for its resolve");
        let overlay =
            Overlay { tree: &tree, unwritten: &newer, writing: None, locks: None, reads: Some(&reads), known: None };
        assert_eq!(overlay.row(&kv("again")).expect("row").map(|row| row.value), Some(vec![4]));
        assert_eq!(overlay.row(&kv("a")).expect("row").map(|row| row.value), Some(vec![2]));
    }

    /// With a batch on its way to sled, reads see the unwritten changes
    /// over the batch's over sled's, and listings merge all three.
    #[test]
    fn reads_see_the_batch_being_written_under_the_newer_changes() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        for name in ["b", "d", "f"] {
            tree.insert(keys::row_key(&kv(name)), raw_row(1)).expect("insert");
        }
        let key = |name: &str| IVec::from(keys::row_key(&kv(name)));
        let mut writing = Unwritten::default();
        writing.stage(key("a"), Some(raw_row(2)), false);
        writing.stage(key("b"), None, true);
        writing.stage(key("c"), Some(raw_row(2)), false);
        writing.stage(key("d"), Some(raw_row(2)), true);
        writing.entry_done();
        let mut unwritten = Unwritten::default();
        unwritten.stage(key("a"), None, true);
        unwritten.stage(key("b"), Some(raw_row(3)), false);
        unwritten.stage(key("e"), Some(raw_row(3)), false);
        unwritten.entry_done();
        // Half the batch has reached sled: reads must not care.
        tree.remove(key("b")).expect("remove");
        let overlay = Overlay {
            tree: &tree,
            unwritten: &unwritten,
            writing: Some(&writing),
            locks: None,
            reads: None,
            known: None,
        };
        let value = |name: &str| overlay.row(&kv(name)).expect("row").map(|row| row.value);
        assert_eq!(value("a"), None, "removed after the batch added it");
        assert_eq!(value("b"), Some(vec![3]), "added again after the batch removed it");
        assert_eq!(value("c"), Some(vec![2]), "only in the batch");
        assert_eq!(value("d"), Some(vec![2]), "the batch's over sled's");
        assert_eq!(value("f"), Some(vec![1]), "sled's, changed by neither");
        let prefix = keys::table_prefix(crate::command::Table::Kv);
        let names = overlay.keys_with_prefix(&prefix, usize::MAX).expect("keys");
        assert_eq!(names, ["b", "c", "d", "e", "f"].map(kv).to_vec());
    }

    /// A batch whose write failed part way waits again under the newer
    /// changes; any of its rows may be in sled now, so a removal of one is
    /// kept rather than dropped.
    #[test]
    fn a_batch_taken_back_waits_again_under_newer_changes() {
        let key = |name: &str| IVec::from(keys::row_key(&kv(name)));
        let mut failed = Unwritten::default();
        failed.stage(key("a"), Some(raw_row(1)), false);
        failed.stage(key("b"), Some(raw_row(1)), false);
        failed.entry_done();
        let mut newer = Unwritten::default();
        newer.stage(key("a"), Some(raw_row(2)), true);
        newer.entry_done();
        newer.take_back(failed);
        assert_eq!(newer.entries(), 2);
        assert_eq!(newer.get(&key("a")), Some(&Some(raw_row(2))), "the newer value wins");
        newer.stage(key("b"), None, false);
        assert_eq!(newer.get(&key("b")), Some(&None), "the removal reaches sled, which may hold the row");
    }

    /// A row sled does not hold, added and removed again while waiting,
    /// leaves the batch; one sled holds stays in it as a removal; one
    /// added again after its removal is written.
    #[test]
    fn a_row_added_and_removed_while_waiting_is_not_written() {
        let key = |name: &str| IVec::from(keys::row_key(&kv(name)));
        let mut unwritten = Unwritten::default();
        unwritten.stage(key("lock"), Some(raw_row(1)), false);
        unwritten.stage(key("held"), Some(raw_row(1)), true);
        unwritten.stage(key("again"), Some(raw_row(1)), false);
        unwritten.stage(key("never"), None, false);
        unwritten.entry_done();
        unwritten.stage(key("lock"), Some(raw_row(2)), true);
        unwritten.stage(key("lock"), None, true);
        unwritten.stage(key("held"), None, false);
        unwritten.stage(key("again"), None, false);
        unwritten.stage(key("again"), Some(raw_row(3)), false);
        unwritten.entry_done();
        let rows: Vec<(IVec, Option<IVec>)> = unwritten.rows().map(|(k, v)| (k.clone(), v.clone())).collect();
        assert_eq!(rows, vec![(key("again"), Some(raw_row(3))), (key("held"), None)]);
        assert_eq!(unwritten.get(&key("lock")), None, "reads of it go to sled, which has no row");
        assert_eq!(unwritten.entries(), 2);
    }

    /// Rows are due at once unless they hold a lock row sled lacks; then
    /// they wait [`LOCKED_WRITE_BEHIND`] from their first entry on.
    #[test]
    fn rows_holding_new_lock_rows_wait_longer() {
        let mut unwritten = Unwritten::default();
        assert!(!unwritten.is_due(), "nothing waits");
        unwritten.stage(keys::row_key(&kv("a")).into(), Some(raw_row(1)), false);
        unwritten.entry_done();
        assert!(unwritten.is_due());
        let lock = IVec::from(keys::row_key(&RowKey::Intent(Box::new(kv("a")))));
        let mut stored_lock = Unwritten::default();
        stored_lock.stage(lock.clone(), Some(raw_row(1)), true);
        stored_lock.entry_done();
        assert!(stored_lock.is_due(), "a lock row sled holds is written as soon as any row");
        unwritten.stage(lock, Some(raw_row(1)), false);
        unwritten.entry_done();
        assert!(!unwritten.is_due());
        std::thread::sleep(LOCKED_WRITE_BEHIND);
        assert!(unwritten.is_due());
    }
}
