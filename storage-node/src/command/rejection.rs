//! Why a command was refused, and what a caller does about it.

use serde::{Deserialize, Serialize};

use super::{RowKey, TxnId};
use crate::types::LogIndex;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_says_whether_to_answer_replan_or_wait() {
        let key = RowKey::Product(4);
        assert_eq!(Rejection::PriceChanged { pid: 4 }.disposition(), Disposition::Replan);
        let moved = Rejection::VersionMismatch { key: key.clone(), expected: 3, actual: Some(5) };
        assert_eq!(moved.disposition(), Disposition::Replan);
        let locked = Rejection::Locked { key: key.clone(), holder: TxnId::fresh() };
        assert_eq!(locked.disposition(), Disposition::Wait);
        assert_eq!(Rejection::Fenced { until_ms: 1 }.disposition(), Disposition::Wait);
        assert_eq!(Rejection::NotFound(key).disposition(), Disposition::Final);
        let short = Rejection::InsufficientStock { pid: 4, available: 1, needed: 2 };
        assert_eq!(short.disposition(), Disposition::Final);
    }
}
