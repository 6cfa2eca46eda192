//! How rows and bookkeeping are laid out in the sled tree, and the state
//! digest replicas compare.
//!
//! One tree holds everything, so one all-or-nothing write (see
//! `unwritten::write_all`) changes rows, the last-applied log id, the
//! membership and the digest together. Row keys sort by table, then by
//! numeric id (big-endian) or by key bytes, so a scan of one table is a
//! prefix range.

use crate::command::{Row, RowKey, Table, TxnId};
use crate::fnv::Fnv1a;
use crate::types::{LogIndex, Shard};

/// Prefix of every row key.
pub const ROW: u8 = b'r';
/// The last applied log id: bincode `Option<LogId>`.
pub const APPLIED: &[u8] = b"m:applied";
/// The last applied membership: bincode `StoredMembership`.
pub const MEMBERSHIP: &[u8] = b"m:membership";
/// The state digest: 8 bytes, big-endian.
pub const DIGEST: &[u8] = b"m:digest";
/// Present while a snapshot is being installed (empty value).
pub const INSTALLING: &[u8] = b"m:installing";
/// The last list of writes handed to sled, written whole before them and
/// written again at start-up (see `unwritten::write_all`).
pub const REDO: &[u8] = b"m:redo";

const fn table_tag(table: Table) -> u8 {
    match table {
        Table::Clients => 0,
        Table::Products => 1,
        Table::Orders => 2,
        Table::Kv => 3,
        Table::ClientOrders => 4,
        Table::ProductOrders => 5,
        Table::Txns => 6,
        Table::TxnsDone => 7,
        Table::Intents => 8,
        Table::Mutexes => 9,
        Table::Barriers => 10,
        Table::Sessions => 11,
        Table::Events => 12,
        Table::Idempotency => 13,
        Table::IdempotencyDone => 14,
        Table::Writers => 15,
        Table::WritersIdle => 17,
        Table::Fences => 18,
        Table::TxnsPrepared => 19,
        Table::Settings => 20,
    }
}

/// The first bytes of every key of `table`.
pub fn table_prefix(table: Table) -> [u8; 2] {
    [ROW, table_tag(table)]
}

/// Each tag's table, derived from [`table_tag`] so the two cannot differ.
/// A tag past the end would fail to compile.
const TABLES_BY_TAG: [Option<Table>; 32] = {
    let mut by_tag = [None; 32];
    let mut i = 0;
    while i < Table::ALL.len() {
        by_tag[table_tag(Table::ALL[i]) as usize] = Some(Table::ALL[i]);
        i += 1;
    }
    by_tag
};

/// The table a sled key belongs to, from its first two bytes; `None` for
/// keys that are not rows (the bookkeeping under `m:`).
pub fn table_of(key: &[u8]) -> Option<Table> {
    let [ROW, tag, ..] = *key else { return None };
    TABLES_BY_TAG.get(usize::from(tag)).copied().flatten()
}

/// The sled key of a row.
pub fn row_key(key: &RowKey) -> Vec<u8> {
    let mut bytes = table_prefix(key.table()).to_vec();
    match key {
        RowKey::Client(id) | RowKey::Product(id) | RowKey::Order(id) => bytes.extend_from_slice(&id.to_be_bytes()),
        RowKey::Kv(key) => bytes.extend_from_slice(key.as_bytes()),
        RowKey::ClientOrder(a, b) | RowKey::ProductOrder(a, b) | RowKey::WriterIdle(a, b) => {
            bytes.extend_from_slice(&a.to_be_bytes());
            bytes.extend_from_slice(&b.to_be_bytes());
        }
        RowKey::Txn(id) => bytes.extend_from_slice(&id.0.to_be_bytes()),
        RowKey::TxnDone(at, id) | RowKey::TxnPrepared(at, id) => {
            bytes.extend_from_slice(&at.to_be_bytes());
            bytes.extend_from_slice(&id.0.to_be_bytes());
        }
        RowKey::Intent(row) => bytes.extend_from_slice(&row_key(row)),
        RowKey::Mutex(name) | RowKey::Barrier(name) => bytes.extend_from_slice(name.as_bytes()),
        RowKey::Session(site) | RowKey::Writer(site) => bytes.extend_from_slice(&site.to_be_bytes()),
        RowKey::Event(index, n) => {
            bytes.extend_from_slice(&index.to_be_bytes());
            bytes.extend_from_slice(&n.to_be_bytes());
        }
        RowKey::Fence => {}
        // One byte per setting, so later settings sort beside it.
        RowKey::Layout => bytes.push(0),
        RowKey::Idempotency(shard, key) => {
            bytes.push(shard_tag(*shard));
            bytes.extend_from_slice(key.as_bytes());
        }
        RowKey::IdempotencyDone(at, shard, key) => {
            bytes.extend_from_slice(&at.to_be_bytes());
            bytes.push(shard_tag(*shard));
            bytes.extend_from_slice(key.as_bytes());
        }
    }
    bytes
}

fn shard_tag(shard: Shard) -> u8 {
    match shard {
        Shard::Even => 0,
        Shard::Odd => 1,
    }
}

fn parse_shard(tag: u8) -> Option<Shard> {
    match tag {
        0 => Some(Shard::Even),
        1 => Some(Shard::Odd),
        _ => None,
    }
}

/// The first bytes of every event of log entries `index` and later.
pub fn event_key(index: LogIndex, n: u32) -> Vec<u8> {
    row_key(&RowKey::Event(index, n))
}

/// The first bytes of every index entry of client `cid` (table
/// `ClientOrders`) or product `pid` (table `ProductOrders`).
pub fn index_prefix(table: Table, owner: u64) -> Vec<u8> {
    let mut bytes = table_prefix(table).to_vec();
    bytes.extend_from_slice(&owner.to_be_bytes());
    bytes
}

/// The row key a sled key encodes, `None` for bookkeeping keys.
pub fn parse_row_key(bytes: &[u8]) -> Option<RowKey> {
    let (&[ROW, tag], rest) = bytes.split_first_chunk::<2>()? else {
        return None;
    };
    let id = || rest.try_into().ok().map(u64::from_be_bytes);
    let pair = || {
        let (a, b) = rest.split_first_chunk::<8>()?;
        Some((u64::from_be_bytes(*a), b.try_into().ok().map(u64::from_be_bytes)?))
    };
    let txn = |bytes: &[u8]| bytes.try_into().ok().map(|b| TxnId(u128::from_be_bytes(b)));
    match tag {
        0 => id().map(RowKey::Client),
        1 => id().map(RowKey::Product),
        2 => id().map(RowKey::Order),
        3 => String::from_utf8(rest.to_vec()).ok().map(RowKey::Kv),
        4 => pair().map(|(a, b)| RowKey::ClientOrder(a, b)),
        5 => pair().map(|(a, b)| RowKey::ProductOrder(a, b)),
        6 => txn(rest).map(RowKey::Txn),
        7 => {
            let (at, id) = rest.split_first_chunk::<8>()?;
            Some(RowKey::TxnDone(u64::from_be_bytes(*at), txn(id)?))
        }
        8 => parse_row_key(rest).map(|row| RowKey::Intent(Box::new(row))),
        9 => String::from_utf8(rest.to_vec()).ok().map(RowKey::Mutex),
        10 => String::from_utf8(rest.to_vec()).ok().map(RowKey::Barrier),
        11 => id().map(RowKey::Session),
        12 => {
            let (index, n) = rest.split_first_chunk::<8>()?;
            Some(RowKey::Event(u64::from_be_bytes(*index), u32::from_be_bytes(n.try_into().ok()?)))
        }
        13 => {
            let (tag, key) = rest.split_first()?;
            Some(RowKey::Idempotency(parse_shard(*tag)?, String::from_utf8(key.to_vec()).ok()?))
        }
        14 => {
            let (at, rest) = rest.split_first_chunk::<8>()?;
            let (tag, key) = rest.split_first()?;
            let key = String::from_utf8(key.to_vec()).ok()?;
            Some(RowKey::IdempotencyDone(u64::from_be_bytes(*at), parse_shard(*tag)?, key))
        }
        15 => id().map(RowKey::Writer),
        17 => pair().map(|(a, b)| RowKey::WriterIdle(a, b)),
        18 if rest.is_empty() => Some(RowKey::Fence),
        19 => {
            let (at, id) = rest.split_first_chunk::<8>()?;
            Some(RowKey::TxnPrepared(u64::from_be_bytes(*at), txn(id)?))
        }
        20 if rest == [0] => Some(RowKey::Layout),
        _ => None,
    }
}

/// A row's contribution to the state digest. The digest is the wrapping sum
/// over all rows, so it can be updated per write and does not depend on the
/// order rows were written in.
pub fn row_digest(key: &RowKey, row: &Row) -> u64 {
    stored_row_digest(&row_key(key), row)
}

/// [`row_digest`] of the row sled holds under `key` (a [`row_key`]),
/// whether or not this build still knows the key's table.
pub fn stored_row_digest(key: &[u8], row: &Row) -> u64 {
    let mut hash = Fnv1a::new();
    for field in [key, &row.version.to_be_bytes()[..], &row.value] {
        hash.write(field);
        // A separator, so ("ab", "c") and ("a", "bc") differ.
        hash.write(&[0xff]);
    }
    hash.finish()
}

/// [`stored_row_digest`] of a row as sled and snapshots hold it: its key
/// and its encoded value. Fails (`InvalidData`) if the value does not
/// decode.
fn stored_value_digest(key: &[u8], value: &[u8]) -> std::io::Result<u64> {
    let row: Row = crate::codec::decode_stored(value)?;
    Ok(stored_row_digest(key, &row))
}

/// The state digest summed afresh over stored rows (sled's, or a
/// snapshot's), to compare with the one kept entry by entry.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowSum(u64);

impl RowSum {
    /// Adds the row stored under `key`; fails (`InvalidData`) if its
    /// value does not decode.
    pub fn add(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<()> {
        self.0 = self.0.wrapping_add(stored_value_digest(key, value)?);
        Ok(())
    }

    /// The digest of the rows added so far.
    pub fn digest(self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_is_found_from_its_keys() {
        for table in Table::ALL {
            assert_eq!(table_of(&table_prefix(table)), Some(table));
            let mut key = table_prefix(table).to_vec();
            key.extend_from_slice(b"some id");
            assert_eq!(table_of(&key), Some(table));
        }
        let tags: Vec<u8> = Table::ALL.iter().map(|table| table_tag(*table)).collect();
        for tag in (0..=u8::MAX).filter(|tag| !tags.contains(tag)) {
            assert_eq!(table_of(&[ROW, tag]), None, "tag {tag} is no table's");
        }
        assert_eq!(table_of(APPLIED), None);
        assert_eq!(table_of(&[ROW]), None);
    }

    #[test]
    fn row_keys_round_trip_and_sort_by_id() {
        let keys = [
            RowKey::Client(3),
            RowKey::Product(u64::MAX),
            RowKey::Order(0),
            RowKey::Kv("x/y".into()),
            RowKey::ClientOrder(7, 10),
            RowKey::ProductOrder(1, 2),
            RowKey::Txn(TxnId(u128::MAX - 3)),
            RowKey::TxnDone(99, TxnId(5)),
            RowKey::TxnPrepared(98, TxnId(6)),
            RowKey::Intent(Box::new(RowKey::Product(8))),
            RowKey::Mutex("printer".into()),
            RowKey::Barrier("round-1".into()),
            RowKey::Session(3),
            RowKey::Event(42, 7),
            RowKey::Idempotency(Shard::Odd, "CreateClient:abc".into()),
            RowKey::IdempotencyDone(12, Shard::Even, "k".into()),
            RowKey::Writer(u64::MAX),
            RowKey::WriterIdle(9, 10),
            RowKey::Fence,
            RowKey::Layout,
        ];
        for key in keys {
            assert_eq!(parse_row_key(&row_key(&key)), Some(key));
        }
        assert!(row_key(&RowKey::Client(2)) < row_key(&RowKey::Client(10)));
        assert!(row_key(&RowKey::Client(u64::MAX)) < row_key(&RowKey::Product(0)));
        assert_eq!(parse_row_key(APPLIED), None);
    }

    #[test]
    fn digest_sees_version_and_value() {
        let key = RowKey::Kv("a".into());
        let row = Row { version: 1, value: b"v".to_vec() };
        let later = Row { version: 2, value: b"v".to_vec() };
        let other = Row { version: 1, value: b"w".to_vec() };
        assert_ne!(row_digest(&key, &row), row_digest(&key, &later));
        assert_ne!(row_digest(&key, &row), row_digest(&key, &other));
    }
}
