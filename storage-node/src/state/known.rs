//! Which rows sled may hold: a Bloom filter of the lasting tables' keys,
//! and the newest key of each time-ordered table, which tell `apply` a row
//! is new without a walk through sled's tree.
//!
//! An order creates its order row and an index row per client and per
//! product, and `apply` reads each row's old value before changing it (for
//! the digest). For a row that does not exist, that read walked sled's tree
//! down to a leaf, often one not in its cache: at 64 clients of orders,
//! 35% of the reads that reached sled were of such rows (docs/performance.md).
//!
//! [`KnownRows`] holds every key of the lasting tables (clients, products,
//! orders, their indexes, key-value rows, mutexes, barriers) that sled
//! holds or that an applied entry wrote since: built from sled at start-up
//! and after a snapshot install, and told of every row `apply` stages. A
//! key it has never been told of is not in sled; a key it may hold is
//! looked up as before. Removed rows stay in it (a filter cannot forget),
//! which only costs a lookup.
//!
//! The transaction tables (records by id, and the indexes by prepare and
//! by finishing time) are not in the filter: their keys are new for every
//! transaction and removed soon after, so the filter would grow with every
//! order forever. Their keys start with a time instead (`TxnId::fresh`, the
//! leader's clock), so a new transaction's rows come after every row of
//! their table. For each of them [`KnownRows`] keeps the greatest key it was
//! told of or found in sled: a key above it is not in sled. A key at or
//! below it (a transaction id drawn in the same millisecond as a newer one,
//! a clock that went back, a retry) is looked up as before.
//!
//! Sized as it grows: a layer holds ten bits per key, which with seven
//! hashes gives under 1% false positives when it is full, and a full layer
//! gets a successor twice its size (so a key's false positives add up over
//! the layers, a few percent at most). 100,000 keys take 224 KiB, a
//! million 2 MiB. Start-up reads every key of the lasting tables once to
//! build it (logged with its time), and the last key of each time-ordered
//! one. The filter only grows: a table whose
//! keys keep changing (key-value rows, say) keeps adding to it until the
//! next start-up or snapshot install reads it afresh.

use std::io;

use super::keys;
use crate::command::Table;
use crate::fnv::Fnv1a;

/// Bits of the first layer (32 KiB); each next layer has twice as many.
const FIRST_LAYER_BITS: usize = 1 << 18;
/// Bits per key a layer is filled to.
const BITS_PER_KEY: usize = 10;
/// Bits set per key: optimal for 10 bits per key.
const HASHES: u32 = 7;

/// True for the lasting tables: rows that, once written, usually stay.
fn lasting(table: &Table) -> bool {
    use Table::*;
    matches!(table, Clients | Products | Orders | Kv | ClientOrders | ProductOrders | Mutexes | Barriers)
}

/// True for the tables whose keys start with a time, so that new rows come
/// last: transaction records and their indexes.
fn time_ordered(table: &Table) -> bool {
    matches!(table, Table::Txns | Table::TxnsDone | Table::TxnsPrepared)
}

/// How [`KnownRows`] answers for a table.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Coverage {
    /// In the Bloom filter.
    Filtered,
    /// By the table's newest key.
    Newest(Table),
}

/// The coverage of the table `key` belongs to, if covered.
fn coverage(key: &[u8]) -> Option<Coverage> {
    let table = keys::table_of(key)?;
    match (lasting(&table), time_ordered(&table)) {
        (true, _) => Some(Coverage::Filtered),
        (_, true) => Some(Coverage::Newest(table)),
        _ => None,
    }
}

/// A superset of the keys sled holds in the lasting tables, and a bound on
/// those of the time-ordered ones (see the module notes).
#[derive(Debug, Default)]
pub struct KnownRows {
    layers: Vec<Layer>,
    /// The greatest key sled may hold, for each time-ordered table that
    /// has had one.
    newest: Vec<(Table, Vec<u8>)>,
}

#[derive(Debug)]
struct Layer {
    bits: Vec<u64>,
    /// Keys added to this layer.
    keys: usize,
    /// Keys it takes before the next layer starts.
    capacity: usize,
}

impl Layer {
    /// A layer of `bits` bits, a power of two of at least 64.
    fn new(bits: usize) -> Self {
        Layer { bits: vec![0; bits / 64], keys: 0, capacity: bits / BITS_PER_KEY }
    }

    fn contains(&self, hashes: (u64, u64)) -> bool {
        positions(self.bits.len(), hashes).all(|bit| self.bits[bit / 64] & (1 << (bit % 64)) != 0)
    }

    fn insert(&mut self, hashes: (u64, u64)) {
        for bit in positions(self.bits.len(), hashes) {
            self.bits[bit / 64] |= 1 << (bit % 64);
        }
        self.keys += 1;
    }
}

/// The bit positions of a key's hashes in a layer of `words` 64-bit words
/// (a power of two): double hashing.
fn positions(words: usize, (h1, h2): (u64, u64)) -> impl Iterator<Item = usize> {
    let mask = (words * 64 - 1) as u64;
    (0..u64::from(HASHES)).map(move |i| (h1.wrapping_add(i.wrapping_mul(h2)) & mask) as usize)
}

impl KnownRows {
    /// Every key of the lasting tables that `tree` holds, and the last key
    /// of each time-ordered one.
    pub fn scan(tree: &sled::Tree) -> io::Result<Self> {
        let started = std::time::Instant::now();
        let mut known = KnownRows::default();
        let mut rows = 0_u64;
        for table in Table::ALL.iter().filter(|table| lasting(table)) {
            for key in tree.scan_prefix(keys::table_prefix(*table)).keys() {
                known.note(&key.map_err(super::unwritten::sled_io)?);
                rows += 1;
            }
        }
        for table in Table::ALL.iter().filter(|table| time_ordered(table)) {
            if let Some(last) = tree.scan_prefix(keys::table_prefix(*table)).keys().next_back() {
                known.note(&last.map_err(super::unwritten::sled_io)?);
            }
        }
        tracing::info!(
            rows,
            filter_bytes = known.size(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "known rows read from the state"
        );
        Ok(known)
    }

    /// Records that sled may hold `key` from now on (keys of other tables
    /// are ignored).
    pub fn note(&mut self, key: &[u8]) {
        match coverage(key) {
            None => {}
            Some(Coverage::Newest(table)) => match self.newest.iter_mut().find(|(of, _)| *of == table) {
                Some((_, newest)) if key <= newest.as_slice() => {}
                Some((_, newest)) => *newest = key.to_vec(),
                None => self.newest.push((table, key.to_vec())),
            },
            Some(Coverage::Filtered) => {
                let hashes = hashes(key);
                if self.filtered(hashes) {
                    return;
                }
                if self.layers.last().is_none_or(|layer| layer.keys >= layer.capacity) {
                    let bits = self.layers.last().map_or(FIRST_LAYER_BITS, |layer| layer.bits.len() * 64 * 2);
                    self.layers.push(Layer::new(bits));
                }
                if let Some(layer) = self.layers.last_mut() {
                    layer.insert(hashes);
                }
            }
        }
    }

    /// False only if sled does not hold `key`; always true for a key of a
    /// table this does not cover.
    pub fn may_hold(&self, key: &[u8]) -> bool {
        match coverage(key) {
            None => true,
            Some(Coverage::Newest(table)) => {
                self.newest.iter().any(|(of, newest)| *of == table && key <= newest.as_slice())
            }
            Some(Coverage::Filtered) => self.filtered(hashes(key)),
        }
    }

    /// True if some layer of the filter holds the key of `hashes`.
    fn filtered(&self, hashes: (u64, u64)) -> bool {
        self.layers.iter().any(|layer| layer.contains(hashes))
    }

    /// Bytes of the filter and the newest keys.
    pub fn size(&self) -> usize {
        let newest: usize = self.newest.iter().map(|(_, key)| key.len()).sum();
        self.layers.iter().map(|layer| layer.bits.len() * 8).sum::<usize>() + newest
    }
}

/// Two 64-bit hashes of `key` for double hashing: FNV-1a mixed by
/// splitmix64's finalizer (so its low bits, which pick the positions,
/// spread well), and a second derived from it, odd so that the seven
/// positions in a power-of-two layer differ.
fn hashes(key: &[u8]) -> (u64, u64) {
    let h1 = mix(Fnv1a::of(key));
    let h2 = mix(h1 ^ 0x9e37_79b9_7f4a_7c15) | 1;
    (h1, h2)
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{RowKey, TxnId};

    fn covered(key: &[u8]) -> bool {
        coverage(key).is_some()
    }

    fn order(id: u64) -> Vec<u8> {
        keys::row_key(&RowKey::Order(id))
    }

    /// Every key noted is held, across layers, and most keys never noted
    /// are not.
    #[test]
    fn noted_keys_are_held_and_few_others() {
        let mut known = KnownRows::default();
        let noted = 4 * (FIRST_LAYER_BITS / BITS_PER_KEY) as u64;
        for id in 0..noted {
            known.note(&order(id * 2));
        }
        assert!(known.layers.len() >= 3, "the filter grew: {} layers", known.layers.len());
        assert!((0..noted).all(|id| known.may_hold(&order(id * 2))), "a noted key went missing");
        let false_positives = (0..noted).filter(|id| known.may_hold(&order(id * 2 + 1))).count();
        assert!(false_positives < noted as usize * 3 / 100, "{false_positives} false positives of {noted}");
        assert!(known.size() <= noted as usize * 3, "{} bytes for {noted} keys", known.size());
    }

    /// Keys of tables whose rows come and go in no order (events, sessions)
    /// are not noted, and so are never answered for (`may_hold` is true).
    #[test]
    fn unordered_passing_tables_are_not_covered() {
        let mut known = KnownRows::default();
        let event = keys::row_key(&RowKey::Event(7, 0));
        known.note(&event);
        assert!(!covered(&event) && known.may_hold(&event));
        assert_eq!(known.size(), 0);
        assert!(covered(&order(1)) && covered(&keys::row_key(&RowKey::Kv("k".into()))));
        assert!(!covered(keys::APPLIED) && known.may_hold(keys::APPLIED));
    }

    /// A time-ordered table answers by its newest key: keys above it are
    /// new, keys at or below it are looked up, each table on its own.
    #[test]
    fn time_ordered_tables_answer_by_their_newest_key() {
        let txn = |id: u128| keys::row_key(&RowKey::Txn(TxnId(id)));
        let prepared = |at: u64| keys::row_key(&RowKey::TxnPrepared(at, TxnId(1)));
        let mut known = KnownRows::default();
        assert!(covered(&txn(1)) && covered(&prepared(1)));
        assert!(!known.may_hold(&txn(1)), "an empty table holds nothing");
        known.note(&txn(50));
        known.note(&txn(20));
        assert!(known.may_hold(&txn(50)) && known.may_hold(&txn(20)) && known.may_hold(&txn(21)));
        assert!(!known.may_hold(&txn(51)), "above the newest");
        assert!(!known.may_hold(&prepared(1)), "another table has its own newest key");
        known.note(&prepared(100));
        assert!(known.may_hold(&prepared(99)) && !known.may_hold(&prepared(101)));
        assert!(!known.may_hold(&txn(51)));
    }

    /// A scan finds what sled holds, in both kinds of table.
    #[test]
    fn a_scan_holds_every_stored_key() {
        let db = sled::Config::new().temporary(true).open().expect("sled");
        let tree = db.open_tree("t").expect("tree");
        let stored: Vec<Vec<u8>> = (0..1000).map(|i| keys::row_key(&RowKey::Kv(format!("key-{i}")))).collect();
        let txns: Vec<Vec<u8>> = [9, 3, 700].map(|id| keys::row_key(&RowKey::Txn(TxnId(id)))).to_vec();
        let done = keys::row_key(&RowKey::TxnDone(5, TxnId(700)));
        for key in stored.iter().chain(&txns).chain([&done]) {
            tree.insert(key, &b"v"[..]).expect("insert");
        }
        let known = KnownRows::scan(&tree).expect("scan");
        assert!(stored.iter().chain(&txns).chain([&done]).all(|key| known.may_hold(key)));
        let absent = (0..1000).filter(|i| known.may_hold(&keys::row_key(&RowKey::Kv(format!("other-{i}"))))).count();
        assert!(absent < 10, "{absent} of 1,000 absent keys held");
        assert!(!known.may_hold(&keys::row_key(&RowKey::Txn(TxnId(701)))), "a newer transaction");
        assert!(!known.may_hold(&keys::row_key(&RowKey::TxnDone(6, TxnId(1)))));
        assert!(!known.may_hold(&keys::row_key(&RowKey::TxnPrepared(1, TxnId(1)))), "an empty table");
    }
}
