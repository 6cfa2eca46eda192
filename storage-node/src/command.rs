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

use crate::coordination::{BarrierState, MutexState, SiteId};
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
}

impl Table {
    /// Every table, in key order.
    pub const ALL: [Table; 19] = [
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
    /// The write session `.0` of a client ([`Command::Once`]).
    Writer(u64),
    /// Index entry: session `.1` was last used in minute `.0` since the
    /// epoch, for expiry.
    WriterIdle(u64, u64),
    /// The shard's backup fence ([`Command::Fence`]).
    Fence,
    /// Index entry: transaction `.1` was prepared here at `.0` (ms since
    /// the epoch) and is not resolved yet.
    TxnPrepared(u64, TxnId),
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
            RowKey::Event(..) | RowKey::Writer(_) | RowKey::WriterIdle(..) | RowKey::Fence => Shard::Even,
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

/// A transaction's identity, chosen at random by the portal that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnId(pub u128);

impl TxnId {
    /// A fresh random id.
    pub fn random() -> Self {
        TxnId(rand::random())
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// A condition a transaction needs, evaluated inside `apply`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Check {
    /// The row exists.
    Exists(RowKey),
    /// The row does not exist.
    Absent(RowKey),
    /// The row exists at exactly this version.
    Version(RowKey, LogIndex),
    /// Product `pid` exists and still has this unit price.
    ProductPrice {
        /// The product.
        pid: u64,
        /// The price the caller read.
        price: f64,
    },
    /// Client `cid` has no orders.
    NoOrdersOfClient(u64),
    /// No order holds product `pid`.
    NoOrdersOfProduct(u64),
}

/// A change a transaction makes when it commits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Effect {
    /// Store `.1` at `.0`.
    Put(RowKey, #[serde(with = "serde_bytes")] Vec<u8>),
    /// Remove the row.
    Delete(RowKey),
    /// Move product `pid`'s stock by `delta`; refused if it would go below 0
    /// or the product does not exist.
    AdjustStock {
        /// The product.
        pid: u64,
        /// Units added (positive) or taken (negative).
        delta: i64,
    },
}

/// Checks and effects on one shard, all or nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnPart {
    /// The transaction this part belongs to; retries reuse it.
    pub id: TxnId,
    /// Conditions, evaluated in order; the first that fails is reported.
    pub checks: Vec<Check>,
    /// Changes, applied in order at commit.
    pub effects: Vec<Effect>,
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every effect happened.
    Commit,
    /// No effect happened.
    Abort,
}

/// A replicated command: one Raft log entry.
///
/// Commands that carry `at_ms` are stamped by the leader that proposes them
/// (its wall clock, ms since the epoch): time enters the log as a value, and
/// `apply` never reads a clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Applies every write if every precondition holds, else none. Writes
    /// are checked in order and see the batch's own earlier writes.
    Batch(Vec<RowWrite>),
    /// A transaction that touches only this shard: checks and effects in one
    /// entry. Idempotent: a retry returns the recorded outcome.
    Execute {
        /// The checks and effects.
        part: TxnPart,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Phase one of a transaction across shards: evaluate the checks and, if
    /// they hold, lock the rows and stage the effects. The transaction is
    /// committed the moment both shards hold their prepared parts
    /// (parallel commits, `crate::commit_protocol`).
    Prepare {
        /// This shard's checks and effects.
        part: TxnPart,
        /// The order's shard, whose part carries the call's idempotency
        /// key; kept in the record for operators and metrics.
        decision_shard: Shard,
        /// When the leader proposed it; recovery checks on a transaction
        /// still prepared some time after this.
        at_ms: u64,
    },
    /// Phase two, on every participant: applies or drops this shard's
    /// part, once the outcome is known (commit: every participant held its
    /// prepare; abort: one never will). The first outcome recorded wins;
    /// later ones get it back. Aborting a transaction this shard never
    /// prepared leaves a tombstone, so a late prepare is refused.
    Resolve {
        /// The transaction.
        id: TxnId,
        /// The outcome proposed.
        outcome: Outcome,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Forgets finished transactions that ended before `before_ms`.
    PruneTxns {
        /// The cut-off, ms since the epoch.
        before_ms: u64,
    },
    /// Lamport REQUEST / RELEASE messages, applied in order; several in one
    /// entry arrive "at once". Each refreshes its site's session.
    Mutex {
        /// The messages.
        ops: Vec<MutexOp>,
        /// The session lifetime each message grants its site.
        ttl_ms: u64,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Keeps a site's session alive until `at_ms + ttl_ms`.
    KeepAlive {
        /// The site.
        site: SiteId,
        /// The session lifetime from now.
        ttl_ms: u64,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Ends sessions that lapsed before `now_ms` and drops their sites'
    /// requests (a crashed holder loses its mutex). Proposed by the leader.
    ExpireSessions {
        /// The leader's clock.
        now_ms: u64,
    },
    /// Enters generation `generation` of barrier `name` of `size`.
    EnterBarrier {
        /// The barrier.
        name: String,
        /// Who enters.
        participant: u64,
        /// Participants needed.
        size: u32,
        /// The generation the participant is entering.
        generation: u64,
    },
    /// Several commands in one log entry, applied in order (each sees the
    /// effects of the ones before): how the `Store` service batches
    /// concurrent writes into one append, one fsync, one replication.
    Many(#[serde(deserialize_with = "crate::codec::nested")] Vec<Command>),
    /// Forgets idempotency keys recorded before `before_ms`. Proposed by the
    /// leader, like `PruneTxns`.
    PruneIdempotency {
        /// The cut-off, ms since the epoch.
        before_ms: u64,
    },
    /// A caller's command, applied at most once however often it is sent:
    /// the first copy applies `command` and records its result in session
    /// `writer` under `seq`; a later copy gets that result back and changes
    /// nothing. How `ShardClient` makes a write safe to send again after an
    /// attempt whose outcome it could not learn (Raft thesis, section 6.3).
    Once {
        /// The caller's write session, a random id.
        writer: u64,
        /// This write's number within the session.
        seq: u64,
        /// Every write of the session numbered below this has been
        /// answered: their records may go, and a copy of one of them that
        /// arrives late is refused instead of applied.
        answered_below: u64,
        /// When the leader proposed it.
        at_ms: u64,
        /// The command itself: any a caller may send, except `Once`.
        #[serde(deserialize_with = "crate::codec::nested")]
        command: Box<Command>,
    },
    /// Forgets write sessions unused since before `before_ms`, with their
    /// records. Proposed by the leader, like `PruneTxns`.
    PruneWriters {
        /// The cut-off, ms since the epoch.
        before_ms: u64,
    },
    /// Refuses cross-shard prepares (retryably) for `hold_ms` from `at_ms`,
    /// or lifts the fence when `hold_ms` is 0: how `raftshop backup` gets
    /// one consistent cut across both shards (`docs/design/backup.md`).
    Fence {
        /// How long the fence holds, at most `limits::MAX_FENCE_HOLD`.
        hold_ms: u64,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Asks where a cross-shard transaction stands in this shard, and makes
    /// sure the answer cannot change from "never prepared": if this shard
    /// holds no record of `id`, it records the transaction aborted, so a
    /// late prepare is refused. A prepared part stays prepared. This is how
    /// a portal that lost an answer, and the recovery of an abandoned
    /// transaction, learn whether every participant holds its prepare (then
    /// the transaction committed) or one never will (then it aborts); see
    /// `crate::commit_protocol`.
    Prevent {
        /// The transaction.
        id: TxnId,
        /// When the leader proposed it.
        at_ms: u64,
    },
}

/// One message of Lamport's algorithm, as a log command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutexOp {
    /// REQUEST(clock, site) for `resource`.
    Request {
        /// The mutex.
        resource: String,
        /// The requesting site.
        site: SiteId,
        /// Its Lamport clock when sending (already incremented).
        clock: u64,
    },
    /// RELEASE(clock, site) for `resource`.
    Release {
        /// The mutex.
        resource: String,
        /// The releasing site.
        site: SiteId,
        /// Its Lamport clock when sending.
        clock: u64,
    },
}

impl Command {
    /// A batch of one write.
    pub fn single(write: RowWrite) -> Self {
        Command::Batch(vec![write])
    }

    /// Sets the proposal time of commands that carry one: the leader's clock
    /// is the only clock that enters the log.
    pub fn stamp(&mut self, now_ms: u64) {
        match self {
            Command::Execute { at_ms, .. }
            | Command::Prepare { at_ms, .. }
            | Command::Resolve { at_ms, .. }
            | Command::Mutex { at_ms, .. }
            | Command::KeepAlive { at_ms, .. }
            | Command::Fence { at_ms, .. }
            | Command::Prevent { at_ms, .. }
            | Command::ExpireSessions { now_ms: at_ms } => *at_ms = now_ms,
            Command::Batch(_)
            | Command::PruneTxns { .. }
            | Command::PruneIdempotency { .. }
            | Command::PruneWriters { .. }
            | Command::EnterBarrier { .. } => {}
            Command::Many(commands) => commands.iter_mut().for_each(|c| c.stamp(now_ms)),
            Command::Once { at_ms, command, .. } => {
                *at_ms = now_ms;
                command.stamp(now_ms);
            }
        }
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
            Command::Execute { part, .. } => write!(f, "execute {}", part.id),
            Command::Prepare { part, .. } => write!(f, "prepare {}", part.id),
            Command::Resolve { id, outcome, .. } => write!(f, "resolve {id} {outcome:?}"),
            Command::PruneTxns { before_ms } => write!(f, "prune txns before {before_ms}"),
            Command::Mutex { ops, .. } => write!(f, "mutex {ops:?}"),
            Command::KeepAlive { site, .. } => write!(f, "keep-alive {site}"),
            Command::ExpireSessions { now_ms } => write!(f, "expire sessions at {now_ms}"),
            Command::EnterBarrier { name, participant, .. } => write!(f, "enter barrier {name} as {participant}"),
            Command::Many(commands) => write!(f, "{} commands", commands.len()),
            Command::PruneIdempotency { before_ms } => write!(f, "prune idempotency keys before {before_ms}"),
            Command::Once { writer, seq, command, .. } => write!(f, "{command} (write {seq} of {writer:016x})"),
            Command::PruneWriters { before_ms } => write!(f, "prune write sessions unused since {before_ms}"),
            Command::Fence { hold_ms: 0, .. } => write!(f, "lift the backup fence"),
            Command::Fence { hold_ms, .. } => write!(f, "fence cross-shard prepares for {hold_ms} ms"),
            Command::Prevent { id, .. } => write!(f, "ask {id}, preventing a late prepare"),
        }
    }
}

/// Why a command was refused; deterministic, identical on every replica.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
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
    /// A product has too little stock for the change.
    #[error("product {pid} has {available} in stock; the change needs {needed}")]
    InsufficientStock {
        /// The product.
        pid: u64,
        /// Units in stock.
        available: u64,
        /// Units the change takes.
        needed: u64,
    },
    /// A product's price changed since the caller read it.
    #[error("the price of product {pid} changed")]
    PriceChanged {
        /// The product.
        pid: u64,
    },
    /// The client still has orders.
    #[error("client {0} has orders; delete them first")]
    ClientHasOrders(u64),
    /// Some order holds the product.
    #[error("product {0} is part of an order; remove it from every order first")]
    ProductInOrders(u64),
    /// Another transaction holds a lock on a row this one needs; retry.
    #[error("{key} is locked by transaction {holder}")]
    Locked {
        /// The locked row.
        key: RowKey,
        /// The transaction holding it.
        holder: TxnId,
    },
    /// The transaction was already aborted (by its portal or by recovery).
    #[error("transaction {0} was aborted")]
    Aborted(TxnId),
    /// A stored record could not be decoded: corrupt data or a bug.
    #[error("corrupt record at {key}: {detail}")]
    Corrupt {
        /// The row.
        key: RowKey,
        /// What failed.
        detail: String,
    },
    /// Adding stock would take a product past `limits::MAX_QUANTITY`,
    /// counting the units that prepared transactions may still bring back.
    #[error(
        "product {pid} cannot take {adding} more units: it has {available} in stock, {pending} more may come \
         back from orders in flight, and the limit is {limit}",
        limit = crate::limits::MAX_QUANTITY
    )]
    StockLimit {
        /// The product.
        pid: u64,
        /// Units in stock.
        available: u64,
        /// Units that transactions in flight may still add (returns and
        /// reservations that may be given back).
        pending: u64,
        /// Units the change adds.
        adding: u64,
    },
    /// A backup is being taken: cross-shard transactions wait until it has
    /// its cut (`docs/design/backup.md`). Retryable.
    #[error("a backup is being taken; cross-shard changes wait until {until_ms} at the latest")]
    Fenced {
        /// When the fence lapses by itself, ms since the epoch.
        until_ms: u64,
    },
    /// A late copy of a write whose caller had its answer already (its
    /// session has moved past it); the copy was not applied.
    #[error("write {seq} of session {writer:016x} was answered already; this late copy was not applied")]
    LateCopy {
        /// The write session.
        writer: u64,
        /// The write's number.
        seq: u64,
    },
}

/// What a caller does about a [`Rejection`] ([`Rejection::disposition`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The request itself is refused, and would be again: answer it.
    Final,
    /// Something the caller read has changed since (a price, a version):
    /// read again, plan again, send the new plan.
    Replan,
    /// The rows are held for now (another transaction's locks, a backup's
    /// fence): wait a little and send the same plan again.
    Wait,
}

impl Rejection {
    /// What a caller does about this refusal. One place says it, for the
    /// portals' transactions and anyone else who retries.
    pub fn disposition(&self) -> Disposition {
        match self {
            Rejection::PriceChanged { .. } | Rejection::VersionMismatch { .. } => Disposition::Replan,
            Rejection::Locked { .. } | Rejection::Fenced { .. } => Disposition::Wait,
            Rejection::AlreadyExists(_)
            | Rejection::NotFound(_)
            | Rejection::Invalid(_)
            | Rejection::InsufficientStock { .. }
            | Rejection::ClientHasOrders(_)
            | Rejection::ProductInOrders(_)
            | Rejection::Aborted(_)
            | Rejection::Corrupt { .. }
            | Rejection::StockLimit { .. }
            | Rejection::LateCopy { .. } => Disposition::Final,
        }
    }
}

/// The outcome of an applied log entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
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
    /// The transaction's part is prepared here: rows locked, effects staged.
    Prepared,
    /// The transaction committed (here, or as the recorded decision).
    Committed,
    /// The transaction aborted; the reason, if this shard refused it.
    Aborted(Option<Rejection>),
    /// The states of the mutexes a `Mutex` command touched, by name.
    Mutexes(Vec<(String, MutexState)>),
    /// The barrier after an `EnterBarrier`.
    Barrier(BarrierState),
    /// The results of a `Many`, in order.
    Many(Vec<CommandResult>),
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
    /// Several rows at once, each `None` if absent.
    GetMany(Vec<RowKey>),
    /// The OIDs of client `cid`'s orders, from the client index.
    OrdersOfClient(u64),
}

/// The answer to a [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    /// The row, or `None` if absent.
    Row(Option<Row>),
    /// Rows in key order, at most `limit` and about half of
    /// `limits::MAX_REPLY_BYTES`; an empty page means the table ended.
    Rows(Vec<(RowKey, Row)>),
    /// For `GetMany`: each row in the order asked, `None` if absent.
    Many(Vec<Option<Row>>),
    /// Order IDs.
    Ids(Vec<u64>),
    /// A row asked for is locked by a transaction in flight; its committed
    /// value may be about to change, so ask again shortly.
    Locked {
        /// The locked row.
        key: RowKey,
        /// The transaction holding it.
        holder: TxnId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_whether_to_answer_replan_or_wait() {
        let key = RowKey::Product(4);
        assert_eq!(Rejection::PriceChanged { pid: 4 }.disposition(), Disposition::Replan);
        let moved = Rejection::VersionMismatch { key: key.clone(), expected: 3, actual: Some(5) };
        assert_eq!(moved.disposition(), Disposition::Replan);
        let locked = Rejection::Locked { key: key.clone(), holder: TxnId::random() };
        assert_eq!(locked.disposition(), Disposition::Wait);
        assert_eq!(Rejection::Fenced { until_ms: 1 }.disposition(), Disposition::Wait);
        assert_eq!(Rejection::NotFound(key).disposition(), Disposition::Final);
        let short = Rejection::InsufficientStock { pid: 4, available: 1, needed: 2 };
        assert_eq!(short.disposition(), Disposition::Final);
    }

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
