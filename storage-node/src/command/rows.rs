//! Rows: the tables, row keys, versioned rows and conditional writes that
//! commands are made of.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::TxnId;
use crate::records::coordination::SiteId;
use crate::types::{LogIndex, Shard};

/// The tables of the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Table {
    /// Shop clients, keyed by CID.
    Clients,
    /// Products with price and stock, keyed by PID.
    Products,
    /// Orders, keyed by OID.
    Orders,
    /// Free-form keys, for key-value workloads and coordination records.
    Kv,
    /// Index: the orders of each client, in the client's shard.
    ClientOrders,
    /// Index: the orders holding each product, in the product's shard.
    ProductOrders,
    /// Transaction records (outcome, staged effects), in each participant.
    Txns,
    /// Transaction records by finishing time, for pruning.
    TxnsDone,
    /// Intents: rows locked by a prepared transaction.
    Intents,
    /// Lamport mutexes, by name.
    Mutexes,
    /// Barriers, by name.
    Barriers,
    /// Sites' sessions.
    Sessions,
    /// Change-feed events, by log index.
    Events,
    /// Idempotency keys of portal writes that committed, in their shard.
    Idempotency,
    /// Idempotency keys by commit time, for pruning.
    IdempotencyDone,
    /// Write sessions of `ShardClient`s: how far each has been answered,
    /// and the recorded result of each write still in flight, so that a
    /// copy gets it back instead of applying.
    Writers,
    /// Write sessions by the minute they were last used, for expiry.
    WritersIdle,
    /// The backup fence: while it holds, no cross-shard transaction
    /// prepares here.
    Fences,
    /// Transactions prepared here and not yet resolved, by the time they
    /// were prepared: what recovery and the backup drain look through.
    TxnsPrepared,
    /// Settings every replica changes at the same log index (the state's
    /// layout).
    Settings,
}

impl Table {
    /// Every table, in key order.
    pub const ALL: [Table; 20] = [
        Table::Clients,
        Table::Products,
        Table::Orders,
        Table::Kv,
        Table::ClientOrders,
        Table::ProductOrders,
        Table::Txns,
        Table::TxnsDone,
        Table::Intents,
        Table::Mutexes,
        Table::Barriers,
        Table::Sessions,
        Table::Events,
        Table::Idempotency,
        Table::IdempotencyDone,
        Table::Writers,
        Table::WritersIdle,
        Table::Fences,
        Table::TxnsPrepared,
        Table::Settings,
    ];

    /// The table's name in paths and output: `clients`, `products`, ...
    pub fn name(self) -> &'static str {
        match self {
            Table::Clients => "clients",
            Table::Products => "products",
            Table::Orders => "orders",
            Table::Kv => "kv",
            Table::ClientOrders => "client-orders",
            Table::ProductOrders => "product-orders",
            Table::Txns => "txns",
            Table::TxnsDone => "txns-done",
            Table::Intents => "intents",
            Table::Mutexes => "locks",
            Table::Barriers => "barriers",
            Table::Sessions => "sessions",
            Table::Events => "events",
            Table::Idempotency => "idempotency",
            Table::IdempotencyDone => "idempotency-done",
            Table::Writers => "writers",
            Table::WritersIdle => "writers-idle",
            Table::Fences => "fences",
            Table::TxnsPrepared => "txns-prepared",
            Table::Settings => "settings",
        }
    }
}

/// The identity of one row: its table and key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RowKey {
    /// A client by CID.
    Client(u64),
    /// A product by PID.
    Product(u64),
    /// An order by OID.
    Order(u64),
    /// A free-form key.
    Kv(String),
    /// Index entry: order `.1` belongs to client `.0`.
    ClientOrder(u64, u64),
    /// Index entry: order `.1` holds product `.0`.
    ProductOrder(u64, u64),
    /// The record of a transaction in this shard.
    Txn(TxnId),
    /// Index entry: transaction `.1` finished at `.0` (ms since the epoch).
    TxnDone(u64, TxnId),
    /// The intent (lock) a prepared transaction holds on a row.
    Intent(#[serde(deserialize_with = "crate::codec::nested")] Box<RowKey>),
    /// A Lamport mutex.
    Mutex(String),
    /// A barrier.
    Barrier(String),
    /// A site's session.
    Session(SiteId),
    /// Change-feed event `.1` of log entry `.0`.
    Event(LogIndex, u32),
    /// The idempotency key `.1` of a portal write that committed, kept in
    /// shard `.0` (the write's decision shard, so that the key and the
    /// write commit together).
    Idempotency(Shard, String),
    /// Index entry: idempotency key `.2` of shard `.1` was recorded at `.0`
    /// (ms since the epoch), for pruning after the retention window.
    IdempotencyDone(u64, Shard, String),
    /// The write session `.0` of a client ([`Command::Once`](super::Command::Once)).
    Writer(u64),
    /// Index entry: session `.1` was last used in minute `.0` since the
    /// epoch, for expiry.
    WriterIdle(u64, u64),
    /// The shard's backup fence ([`Command::Fence`](super::Command::Fence)).
    Fence,
    /// Index entry: transaction `.1` was prepared here at `.0` (ms since
    /// the epoch) and is not resolved yet.
    TxnPrepared(u64, TxnId),
    /// The layout entries are applied in from the next entry on
    /// ([`Command::UseLayout`](super::Command::UseLayout)); absent means
    /// the first layout.
    Layout,
}

impl RowKey {
    /// The table the row belongs to.
    pub fn table(&self) -> Table {
        match self {
            RowKey::Client(_) => Table::Clients,
            RowKey::Product(_) => Table::Products,
            RowKey::Order(_) => Table::Orders,
            RowKey::Kv(_) => Table::Kv,
            RowKey::ClientOrder(..) => Table::ClientOrders,
            RowKey::ProductOrder(..) => Table::ProductOrders,
            RowKey::Txn(_) => Table::Txns,
            RowKey::TxnDone(..) => Table::TxnsDone,
            RowKey::Intent(_) => Table::Intents,
            RowKey::Mutex(_) => Table::Mutexes,
            RowKey::Barrier(_) => Table::Barriers,
            RowKey::Session(_) => Table::Sessions,
            RowKey::Event(..) => Table::Events,
            RowKey::Idempotency(..) => Table::Idempotency,
            RowKey::IdempotencyDone(..) => Table::IdempotencyDone,
            RowKey::Writer(_) => Table::Writers,
            RowKey::WriterIdle(..) => Table::WritersIdle,
            RowKey::Fence => Table::Fences,
            RowKey::TxnPrepared(..) => Table::TxnsPrepared,
            RowKey::Layout => Table::Settings,
        }
    }

    /// The shard that stores the row.
    pub fn shard(&self) -> Shard {
        match self {
            RowKey::Client(id) | RowKey::Product(id) | RowKey::Order(id) => Shard::of_id(*id),
            RowKey::ClientOrder(owner, _) | RowKey::ProductOrder(owner, _) => Shard::of_id(*owner),
            RowKey::Kv(key) | RowKey::Mutex(key) | RowKey::Barrier(key) => Shard::of_key(key),
            RowKey::Intent(row) => row.shard(),
            RowKey::Session(site) => Shard::of_id(*site),
            // Bookkeeping of whichever shard applied the entry; the key does
            // not say which.
            RowKey::Event(..) | RowKey::Writer(_) | RowKey::WriterIdle(..) | RowKey::Fence | RowKey::Layout => {
                Shard::Even
            }
            RowKey::Txn(id) | RowKey::TxnDone(_, id) | RowKey::TxnPrepared(_, id) => Shard::of_id(id.0 as u64),
            RowKey::Idempotency(shard, _) | RowKey::IdempotencyDone(_, shard, _) => *shard,
        }
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RowKey::Client(id) | RowKey::Product(id) | RowKey::Order(id) => {
                write!(f, "{}/{id}", self.table().name())
            }
            RowKey::Kv(key) => write!(f, "kv/{key}"),
            RowKey::ClientOrder(a, b) | RowKey::ProductOrder(a, b) => write!(f, "{}/{a}/{b}", self.table().name()),
            RowKey::Txn(id) => write!(f, "txns/{id}"),
            RowKey::TxnDone(at, id) => write!(f, "txns-done/{at}/{id}"),
            RowKey::TxnPrepared(at, id) => write!(f, "txns-prepared/{at}/{id}"),
            RowKey::Intent(row) => write!(f, "intents/{row}"),
            RowKey::Mutex(name) => write!(f, "locks/{name}"),
            RowKey::Barrier(name) => write!(f, "barriers/{name}"),
            RowKey::Session(site) => write!(f, "sessions/{site}"),
            RowKey::Event(index, n) => write!(f, "events/{index}/{n}"),
            RowKey::Idempotency(shard, key) => write!(f, "idempotency/{shard}/{key}"),
            RowKey::IdempotencyDone(at, shard, key) => write!(f, "idempotency-done/{at}/{shard}/{key}"),
            RowKey::Writer(writer) => write!(f, "writers/{writer:016x}"),
            RowKey::WriterIdle(minute, writer) => write!(f, "writers-idle/{minute}/{writer:016x}"),
            RowKey::Fence => write!(f, "fences/backup"),
            RowKey::Layout => write!(f, "settings/layout"),
        }
    }
}

/// A stored row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Index of the log entry that last wrote this row; strictly grows with
    /// every write, so it doubles as an optimistic-concurrency version.
    pub version: LogIndex,
    /// The row's contents (for shop tables, the entity's JSON document).
    /// Encoded as one byte string (the same bytes as a sequence of `u8`,
    /// written and read in one copy instead of one call per byte).
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// What must be true of a row for a write to it to proceed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Precondition {
    /// No condition: an unconditional put or an idempotent delete.
    Any,
    /// The row must not exist (create).
    Absent,
    /// The row must exist (update, delete).
    Exists,
    /// The row must exist at exactly this version (compare-and-set).
    Version(LogIndex),
}

/// One write of a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RowWrite {
    /// Store `value` at `key` if `expect` holds.
    Put {
        /// The row to write.
        key: RowKey,
        /// Its new contents (one byte string on the wire, like `Row::value`).
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// What must hold first.
        expect: Precondition,
    },
    /// Remove `key` if `expect` holds.
    Delete {
        /// The row to remove.
        key: RowKey,
        /// What must hold first.
        expect: Precondition,
    },
}

impl RowWrite {
    /// The row this write touches.
    pub fn key(&self) -> &RowKey {
        match self {
            RowWrite::Put { key, .. } | RowWrite::Delete { key, .. } => key,
        }
    }

    /// The precondition of this write.
    pub fn expect(&self) -> &Precondition {
        match self {
            RowWrite::Put { expect, .. } | RowWrite::Delete { expect, .. } => expect,
        }
    }

    /// Creates a row that must not exist yet.
    pub fn create(key: RowKey, value: impl Into<Vec<u8>>) -> Self {
        RowWrite::Put { key, value: value.into(), expect: Precondition::Absent }
    }

    /// Replaces a row that must exist.
    pub fn update(key: RowKey, value: impl Into<Vec<u8>>) -> Self {
        RowWrite::Put { key, value: value.into(), expect: Precondition::Exists }
    }

    /// Writes a row whether or not it exists.
    pub fn upsert(key: RowKey, value: impl Into<Vec<u8>>) -> Self {
        RowWrite::Put { key, value: value.into(), expect: Precondition::Any }
    }

    /// Removes a row that must exist.
    pub fn delete(key: RowKey) -> Self {
        RowWrite::Delete { key, expect: Precondition::Exists }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Row` as it was encoded before values became byte strings.
    #[derive(Serialize, Deserialize)]
    struct RowBefore {
        version: LogIndex,
        value: Vec<u8>,
    }

    #[test]
    fn byte_string_values_keep_the_wire_format() {
        let value: Vec<u8> = (0..=255).collect();
        let before = bincode::serialize(&RowBefore { version: 7, value: value.clone() }).unwrap();
        let now = Row { version: 7, value };
        assert_eq!(bincode::serialize(&now).unwrap(), before, "the same bytes as a sequence of u8");
        assert_eq!(bincode::deserialize::<Row>(&before).unwrap(), now);
    }
}
