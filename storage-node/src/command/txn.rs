//! A cross-shard transaction's parts as the log carries them: its id, the
//! checks and effects of one shard's part, and the outcome that resolves it
//! (the protocol is `commit_protocol`, the participant `state::txn`).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::RowKey;
use crate::types::LogIndex;

/// A transaction's identity, chosen by the portal that runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TxnId(pub u128);

impl TxnId {
    /// A new id: the wall-clock time in milliseconds in the top 48 bits,
    /// 80 random bits below, so ids of the same millisecond (from any
    /// portal) stay apart. Time first, so that a shard adds its
    /// transaction records (keyed by id) at the end of their table: sled
    /// then inserts them, and looks up the ids it has not seen, in the few
    /// leaves of the newest records instead of in a random leaf each time.
    /// Any id is valid; the order is only for sled's sake.
    pub fn fresh() -> Self {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let random_bits = rand::random::<u128>() & ((1u128 << 80) - 1);
        TxnId((ms & ((1u128 << 48) - 1)) << 80 | random_bits)
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
    /// Product `pid` exists; its current unit price is taken for an order
    /// in the other shard. A prepare turns it into [`Check::QuotedPrice`]
    /// with that price (`state::txn::price_orders`), and the prepare's
    /// answer carries the prices to the order's shard
    /// (`CommandResult::PreparedQuoting`, then `Command::CommitPriced`).
    QuotePrice(u64),
    /// Product `pid` exists and still has the unit price this part quoted
    /// for an order in the other shard: a [`Check::ProductPrice`] whose
    /// price a prepare took itself.
    QuotedPrice {
        /// The product.
        pid: u64,
        /// The price quoted.
        price: f64,
    },
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
    /// Sets every line of order `.0`, as a `Put` earlier in the same part
    /// writes it, to its product's current unit price, so the caller need
    /// not read prices first. The state machine turns it into that `Put`
    /// with the prices, and a `ProductPrice` check per product, before
    /// anything else (`state::txn::price_orders`): a prepared part records
    /// the prices its prepare saw, and holds them with shared intents until
    /// it ends. Lines of products in the other shard are priced there
    /// ([`Check::QuotePrice`]) and filled in when the transaction commits
    /// (`Command::CommitPriced`); until then the prepared part keeps an
    /// [`Effect::PriceLines`] naming them, as the mark that it waits for
    /// them. A single-shard call (`Execute`) must have every product it
    /// prices in the order's shard.
    PriceOrder(u64),
    /// [`Effect::PriceOrder`] for the lines of products `pids` only; the
    /// other lines keep the prices the order's put gives them. How an order
    /// update prices the lines it adds. A prepared part that waits for
    /// prices of the other shard keeps this effect, naming those products.
    PriceLines {
        /// The order.
        oid: u64,
        /// The products whose lines take their current price.
        pids: Vec<u64>,
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

impl TxnPart {
    /// Dates the part's idempotency index entries
    /// (`RowKey::IdempotencyDone`, by which the leader later forgets the
    /// key) at `now_ms`, the proposing leader's clock. The portal planned
    /// them by its own clock; the leaders' clocks prune them, so a portal
    /// whose clock ran behind would have had its keys forgotten early, and
    /// a retry within the window applied a second time.
    pub fn date_idempotency_entries(&mut self, now_ms: u64) {
        for effect in &mut self.effects {
            if let Effect::Put(RowKey::IdempotencyDone(at, ..), _) = effect {
                *at = now_ms;
            }
        }
    }
}

/// How a transaction ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// Every effect happened.
    Commit,
    /// No effect happened.
    Abort,
}
