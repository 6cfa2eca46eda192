//! The rows as of one log index, read while later entries are applied.
//!
//! A snapshot is the state at one log id. Copying every row while no entry
//! is applied would hold writes still for as long as the copy takes: with a
//! million keys in a shard, seconds, on every replica at once (they all
//! reach `snapshot_after_entries` together). Instead the copy reads the rows
//! in key order a chunk at a time while entries go on being applied, and
//! `apply`, before it writes a row, keeps aside the value the row had at the
//! snapshot's log id, as long as the reader has not passed that row yet: its
//! *before-image*. A chunk is sled's rows with those before-images laid over
//! them, so the copy is exactly the state at the snapshot's log id.
//!
//! The before-images cost memory only for rows changed during the copy, and
//! each row at most once (the first change keeps the value; later ones do
//! not matter).

use std::collections::BTreeMap;

use sled::IVec;

/// Raw sled rows, key and value, in key order.
pub type RawRows = Vec<(IVec, IVec)>;

/// Where a copy stands and the rows it must not read from sled.
#[derive(Debug, Default)]
pub struct Capture {
    /// Every key up to and including this one has been read (none yet if
    /// `None`); changes to them no longer matter.
    read_through: Option<Vec<u8>>,
    /// Rows changed since the snapshot's log id that the reader has not
    /// reached: their value then, `None` if they did not exist.
    before: BTreeMap<Vec<u8>, Option<IVec>>,
    /// The last chunk was read: nothing more needs keeping.
    done: bool,
    /// Before-images kept so far, for the log.
    kept: usize,
}

impl Capture {
    /// A copy that has read nothing yet.
    pub fn new() -> Self {
        Capture::default()
    }

    /// The key after which the next chunk starts, if any was read.
    pub fn read_through(&self) -> Option<&[u8]> {
        self.read_through.as_deref()
    }

    /// Rows whose before-images are held.
    pub fn held(&self) -> usize {
        self.before.len()
    }

    /// Before-images kept since the copy began.
    pub fn kept(&self) -> usize {
        self.kept
    }

    /// Called by `apply` before the row at `key` changes; `current` is its
    /// value until then. Keeps that value if the reader has not passed
    /// `key` and it is the row's first change since the snapshot's log id.
    pub fn before_change(&mut self, key: &[u8], current: Option<&IVec>) {
        if self.done || self.read_through.as_deref().is_some_and(|read| key <= read) {
            return;
        }
        if let std::collections::btree_map::Entry::Vacant(slot) = self.before.entry(key.to_vec()) {
            slot.insert(current.cloned());
            self.kept += 1;
        }
    }

    /// Turns `rows`, the next chunk read from sled (the rows after
    /// [`Self::read_through`], in key order), into the rows as of the
    /// snapshot's log id. `last` says sled holds no row after the chunk, so
    /// every before-image left is laid in too.
    pub fn merge(&mut self, rows: RawRows, last: bool) -> RawRows {
        let covered = match (last, rows.last()) {
            (false, Some((end, _))) => {
                let mut after = end.to_vec();
                after.push(0);
                let ahead = self.before.split_off(&after);
                self.read_through = Some(end.to_vec());
                std::mem::replace(&mut self.before, ahead)
            }
            _ => {
                self.done = true;
                std::mem::take(&mut self.before)
            }
        };
        if covered.is_empty() {
            return rows;
        }
        let mut merged = Vec::with_capacity(rows.len() + covered.len());
        let mut rows = rows.into_iter().peekable();
        let mut covered = covered.into_iter().peekable();
        loop {
            let before_first = match (rows.peek(), covered.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((row, _)), Some((changed, _))) => changed.as_slice() <= row.as_ref(),
            };
            if !before_first {
                merged.extend(rows.next());
                continue;
            }
            let Some((key, then)) = covered.next() else { break };
            // sled's value of a changed row is newer than the snapshot's.
            rows.next_if(|(row, _)| row.as_ref() == key.as_slice());
            if let Some(then) = then {
                merged.push((IVec::from(key), then));
            }
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator, so a failure replays.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    fn key(i: u64) -> Vec<u8> {
        format!("r{i:04}").into_bytes()
    }

    /// The next chunk of `rows` after `after`, as the state machine reads it.
    fn chunk(rows: &BTreeMap<Vec<u8>, IVec>, after: Option<&[u8]>, limit: usize) -> (RawRows, bool) {
        let read: RawRows = rows
            .iter()
            .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
            .take(limit)
            .map(|(k, v)| (IVec::from(k.as_slice()), v.clone()))
            .collect();
        let last = read.len() < limit;
        (read, last)
    }

    /// Rows are inserted, changed and deleted between the chunks, ahead of
    /// the reader and behind it; the copy is always the state at its start.
    #[test]
    fn a_copy_interleaved_with_changes_is_the_state_at_its_start() {
        for seed in 0..200 {
            let mut rng = Lcg(seed);
            let mut rows: BTreeMap<Vec<u8>, IVec> = BTreeMap::new();
            for i in 0..rng.below(60) {
                rows.insert(key(rng.below(100)), IVec::from(format!("v{i}").as_bytes()));
            }
            let at_start = rows.clone();
            let mut capture = Capture::new();
            let mut copy = RawRows::new();
            let mut changes = 0;
            loop {
                for _ in 0..rng.below(6) {
                    let k = key(rng.below(100));
                    capture.before_change(&k, rows.get(&k));
                    changes += 1;
                    match rng.below(3) {
                        0 => rows.remove(&k),
                        _ => rows.insert(k, IVec::from(format!("new{changes}").as_bytes())),
                    };
                }
                let limit = 1 + rng.below(8) as usize;
                let (read, last) = chunk(&rows, capture.read_through(), limit);
                copy.extend(capture.merge(read, last));
                if last {
                    break;
                }
            }
            let expected: RawRows = at_start.into_iter().map(|(k, v)| (IVec::from(k), v)).collect();
            assert_eq!(copy, expected, "seed {seed}");
            assert_eq!(capture.held(), 0, "seed {seed}: every before-image was used");
        }
    }

    #[test]
    fn changes_behind_the_reader_or_after_the_end_are_not_kept() {
        let mut capture = Capture::new();
        let rows =
            vec![(IVec::from(&b"ra"[..]), IVec::from(&b"1"[..])), (IVec::from(&b"rb"[..]), IVec::from(&b"2"[..]))];
        assert_eq!(capture.merge(rows, false).len(), 2);
        capture.before_change(b"ra", None);
        capture.before_change(b"rb", None);
        assert_eq!(capture.held(), 0, "rows already read are not kept");
        capture.before_change(b"rc", None);
        assert_eq!(capture.held(), 1);
        assert!(capture.merge(Vec::new(), true).is_empty(), "a row added since is not in the copy");
        capture.before_change(b"rd", None);
        assert_eq!(capture.held(), 0, "nothing is kept once the copy is done");
    }
}
