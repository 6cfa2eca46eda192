//! The language of the replicated state machine: commands that go through
//! the Raft log, queries answered by linearizable reads, and their results.
//!
//! A command is a batch of row writes with preconditions. `apply` checks
//! every precondition against the committed state and either performs every
//! write or none, so a check made by a portal can never be decided on stale
//! data: the state machine decides, atomically with the write. Results are
//! deterministic values, identical on every replica; a rejected command is a
//! normal result, not an error.
//!
//! Everything here is bincode-encoded, in the log and on the wire.

use std::fmt;

use serde::{Deserialize, Serialize};

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
}

impl Table {
    /// Every table, in key order.
    pub const ALL: [Table; 4] = [Table::Clients, Table::Products, Table::Orders, Table::Kv];

    /// The table's name in paths and output: `clients`, `products`, ...
    pub fn name(self) -> &'static str {
        match self {
            Table::Clients => "clients",
            Table::Products => "products",
            Table::Orders => "orders",
            Table::Kv => "kv",
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
}

impl RowKey {
    /// The table the row belongs to.
    pub fn table(&self) -> Table {
        match self {
            RowKey::Client(_) => Table::Clients,
            RowKey::Product(_) => Table::Products,
            RowKey::Order(_) => Table::Orders,
            RowKey::Kv(_) => Table::Kv,
        }
    }

    /// The shard that stores the row.
    pub fn shard(&self) -> Shard {
        match self {
            RowKey::Client(id) | RowKey::Product(id) | RowKey::Order(id) => Shard::of_id(*id),
            RowKey::Kv(key) => Shard::of_key(key),
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
        /// Its new contents.
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

/// A replicated command: one Raft log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Applies every write if every precondition holds, else none. Writes
    /// are checked in order and see the batch's own earlier writes.
    Batch(Vec<RowWrite>),
}

impl Command {
    /// A batch of one write.
    pub fn single(write: RowWrite) -> Self {
        Command::Batch(vec![write])
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Batch(writes) => {
                write!(f, "batch[")?;
                for (i, w) in writes.iter().enumerate() {
                    let verb = match w {
                        RowWrite::Put { .. } => "put",
                        RowWrite::Delete { .. } => "delete",
                    };
                    let sep = if i == 0 { "" } else { ", " };
                    write!(f, "{sep}{verb} {}", w.key())?;
                }
                write!(f, "]")
            }
        }
    }
}

/// Why a command was refused; deterministic, identical on every replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A create met an existing row.
    #[error("{0} already exists")]
    AlreadyExists(RowKey),
    /// An update or delete met no row.
    #[error("{0} does not exist")]
    NotFound(RowKey),
    /// A compare-and-set met another version.
    #[error("{key} is at version {actual:?}, not {expected}")]
    VersionMismatch {
        /// The row.
        key: RowKey,
        /// The version the writer read.
        expected: LogIndex,
        /// The version found, `None` if the row is gone.
        actual: Option<LogIndex>,
    },
    /// The command was malformed (e.g. an empty batch).
    #[error("invalid command: {0}")]
    Invalid(String),
}

/// The outcome of an applied log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Every write was performed; rows written now carry version `index`.
    Applied {
        /// The log index of the command, the new version of written rows.
        index: LogIndex,
    },
    /// Nothing was written.
    Rejected(Rejection),
    /// A membership change or blank entry, which carries no command.
    Internal,
}

/// A read, answered linearizably by a shard's leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// One row.
    Get(RowKey),
    /// Rows of one table in key order, starting after `after`.
    Scan {
        /// The table to list.
        table: Table,
        /// Continue after this key; `None` starts at the beginning.
        after: Option<RowKey>,
        /// At most this many rows.
        limit: u32,
    },
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// The row, or `None` if absent.
    Row(Option<Row>),
    /// Rows in key order; fewer than `limit` means the table ended.
    Rows(Vec<(RowKey, Row)>),
}
