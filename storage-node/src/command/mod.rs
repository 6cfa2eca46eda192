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

mod rejection;
mod rows;
mod txn;

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use rejection::{Disposition, Rejection};
pub use rows::{Precondition, Row, RowKey, RowWrite, Table};
pub use txn::{Check, Effect, Outcome, TxnId, TxnPart};

use crate::records::coordination::{BarrierState, MutexState, SiteId};
use crate::types::{LogIndex, Shard};

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
    /// entry. Send it inside [`Command::Once`] to make a retry safe: from
    /// layout 3 (`crate::state::layout`) the shard keeps no record of it,
    /// so only the write session answers a repeat with the first outcome.
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
    /// `Resolve` with [`Outcome::Commit`] for a part that waits for prices
    /// quoted by the other shard's prepare ([`Effect::PriceLines`] kept by
    /// its prepare for products there): fills them into the order's lines as it
    /// commits. A part that waits for none commits as with `Resolve`; one
    /// that waits for a price not given is refused and stays prepared.
    CommitPriced {
        /// The transaction.
        id: TxnId,
        /// (product, unit price) as the other shard's prepare quoted them.
        prices: Vec<(u64, f64)>,
        /// When the leader proposed it.
        at_ms: u64,
    },
    /// Applies entries in `layout` from the next entry on
    /// (`crate::state::layout`: which bookkeeping rows an entry writes).
    /// Proposed by a shard's leader once every member runs a build that
    /// knows it, so every replica switches at the same log index and they
    /// keep holding the same rows. A layout never goes back.
    UseLayout {
        /// The layout: 1, one row per change-feed event; 2, one row per
        /// entry; 3, also no record of a single-shard transaction.
        layout: u32,
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
    /// True for a write that can wait a moment to share the next entry
    /// (`service::batch::LAZY_WAIT`): committing a transaction's part once
    /// the transaction is committed, which its caller has been told already.
    /// Its intents stay that much longer; a read that meets one hurries it
    /// along. Aborts do not wait: their callers do.
    pub fn may_wait(&self) -> bool {
        match self {
            Command::Resolve { outcome, .. } => *outcome == Outcome::Commit,
            Command::CommitPriced { .. } => true,
            Command::Once { command, .. } => command.may_wait(),
            _ => false,
        }
    }

    /// True for the transaction commands that change nothing when applied
    /// again: a transaction's record moves once from prepared to an
    /// outcome, and a repeat answers the recorded one.
    pub fn repeats_harmlessly(&self) -> bool {
        matches!(self, Command::Resolve { .. } | Command::CommitPriced { .. } | Command::Prevent { .. })
    }

    /// A batch of one write.
    pub fn single(write: RowWrite) -> Self {
        Command::Batch(vec![write])
    }

    /// Sets the proposal time of commands that carry one: the leader's clock
    /// is the only clock that enters the log. A part's idempotency index
    /// entries, dated by the portal that planned them, are dated again by
    /// it ([`TxnPart::date_idempotency_entries`]).
    pub fn stamp(&mut self, now_ms: u64) {
        match self {
            Command::Execute { at_ms, part } | Command::Prepare { at_ms, part, .. } => {
                *at_ms = now_ms;
                part.date_idempotency_entries(now_ms);
            }
            Command::Resolve { at_ms, .. }
            | Command::Mutex { at_ms, .. }
            | Command::KeepAlive { at_ms, .. }
            | Command::Fence { at_ms, .. }
            | Command::Prevent { at_ms, .. }
            | Command::CommitPriced { at_ms, .. }
            | Command::ExpireSessions { now_ms: at_ms } => *at_ms = now_ms,
            Command::Batch(_)
            | Command::PruneTxns { .. }
            | Command::PruneIdempotency { .. }
            | Command::PruneWriters { .. }
            | Command::EnterBarrier { .. }
            | Command::UseLayout { .. } => {}
            Command::Many(commands) => commands.iter_mut().for_each(|c| c.stamp(now_ms)),
            Command::Once { at_ms, command, .. } => {
                *at_ms = now_ms;
                command.stamp(now_ms);
            }
        }
    }
}

/// A command as a log entry carries it: shared, not copied.
///
/// openraft and the WAL hold several copies of each entry: the WAL's
/// in-memory cache takes one when the entry is appended, and replication
/// reads one per follower. With a plain [`Command`] each copy cloned every
/// row value in the entry; in a profile of kv-put at 256 clients those
/// clones were about a twentieth of the nodes' main-thread time. Here a
/// copy is a reference count.
///
/// Encoded exactly as the command itself, so the log, the wire and the
/// snapshots are unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedCommand(Arc<Command>);

impl From<Command> for SharedCommand {
    fn from(command: Command) -> Self {
        SharedCommand(Arc::new(command))
    }
}

impl Deref for SharedCommand {
    type Target = Command;

    fn deref(&self) -> &Command {
        &self.0
    }
}

impl fmt::Display for SharedCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for SharedCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for SharedCommand {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Command::deserialize(deserializer).map(SharedCommand::from)
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
            Command::CommitPriced { id, prices, .. } => write!(f, "resolve {id} Commit with {} prices", prices.len()),
            Command::UseLayout { layout } => write!(f, "apply entries in layout {layout}"),
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
    /// Like `Prepared`, for a part that quoted prices for an order in the
    /// other shard ([`Check::QuotePrice`]): (product, unit price), which
    /// the order's shard needs to commit (`Command::CommitPriced`).
    PreparedQuoting(Vec<(u64, f64)>),
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
    use crate::codec::{decode, encode};

    #[test]
    fn the_leader_dates_a_parts_idempotency_entries_by_its_own_clock() {
        // As a portal whose clock is an hour behind plans it.
        let done = |at| Effect::Put(RowKey::IdempotencyDone(at, Shard::Odd, "CreateOrder:k".into()), vec![]);
        let part = TxnPart {
            id: TxnId(1),
            checks: vec![],
            effects: vec![Effect::Put(RowKey::Order(3), vec![1]), done(1_000)],
        };
        let mut command = Command::Once {
            writer: 1,
            seq: 1,
            answered_below: 0,
            at_ms: 0,
            command: Box::new(Command::Prepare { part, decision_shard: Shard::Odd, at_ms: 0 }),
        };
        command.stamp(3_601_000);
        let Command::Once { command, .. } = command else { unreachable!() };
        let Command::Prepare { part, at_ms, .. } = *command else { unreachable!() };
        assert_eq!(at_ms, 3_601_000);
        assert_eq!(part.effects, vec![Effect::Put(RowKey::Order(3), vec![1]), done(3_601_000)]);
    }

    /// The log, the wire and the snapshots hold a shared command as the
    /// bytes of the command itself, so logs and peers from earlier builds
    /// read each other.
    #[test]
    fn a_shared_command_is_encoded_as_the_command() {
        let command = Command::Many(vec![
            Command::single(RowWrite::Put {
                key: RowKey::Kv("k".into()),
                value: b"value".to_vec(),
                expect: Precondition::Any,
            }),
            Command::single(RowWrite::Delete { key: RowKey::Kv("j".into()), expect: Precondition::Exists }),
        ]);
        let shared = SharedCommand::from(command.clone());
        assert_eq!(encode(&shared), encode(&command));
        assert_eq!(*decode::<SharedCommand>(&encode(&command)).expect("decodes"), command);
    }

    /// A copy of an entry's command is the same command, not a deep copy.
    #[test]
    fn copies_of_a_shared_command_share_it() {
        let shared = SharedCommand::from(Command::PruneTxns { before_ms: 7 });
        let copy = shared.clone();
        assert!(std::ptr::eq::<Command>(&*shared, &*copy));
    }
}
