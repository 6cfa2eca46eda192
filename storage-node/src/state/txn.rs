//! Transactions inside the state machine: one shard's half of an atomic
//! call that may span both shards.
//!
//! A portal call that touches one shard is one `Execute` entry: its checks
//! and effects are evaluated together. A call that touches both shards is
//! committed over the two Raft groups by `crate::commit_protocol`
//! (parallel commits); each shard's steps are here:
//!
//! 1. `Prepare` evaluates the checks against committed rows and dry-runs
//!    the effects. If anything fails, the part is recorded `Aborted` with
//!    the reason. Otherwise every row the part reads or writes gets an
//!    intent naming the transaction and a [`LockMode`], and the effects are
//!    staged in the transaction record. Intents are replicated: they
//!    survive crashes and leader changes like any row. The transaction is
//!    committed once both shards hold their prepares.
//! 2. `Resolve` applies or drops the part, once the outcome is known; the
//!    first outcome recorded wins.
//! 3. `Prevent` reports where the transaction stands here, and records it
//!    aborted if it never prepared here, so a late prepare is refused.
//!
//! Lock modes keep hot rows concurrent. A check (the client exists, the
//! price is unchanged) takes a *shared* intent; many orders of one client
//! prepare side by side. Taking stock takes an *escrow* intent: the units
//! are reserved at prepare (so concurrent orders can never oversell) and
//! given back if the transaction aborts; many orders of one product prepare
//! side by side. Writing a row (an order, an index entry, a product update)
//! takes an *exclusive* intent. A transaction whose intent is incompatible
//! with one already held is refused with a retryable `Locked`; a read of a
//! row under an escrow or exclusive intent answers `Locked` (its value may
//! be about to change), so nobody sees half a transaction.
//! Every command carries the transaction id and is idempotent: a retry gets
//! the recorded state back. A finished transaction leaves a record (and a
//! `TxnDone` index entry by time) long enough to answer late retries; the
//! leader prunes older ones with `PruneTxns`. From layout 3
//! (`crate::state::layout`) a single-shard `Execute` leaves none: it has no
//! second step to meet, and its write session answers its repeats.
//!
//! From layout 4 an order line's entry in its product's order index is a
//! count in the product's row ([`OrderIndex::Counts`]): the line's
//! `ProductOrder` put adds one, its delete takes one (or removes the row
//! an older layout wrote), and both hold the product the way a stock move
//! does, with an escrow intent, since counts commute too. A part prepared
//! in an older layout and resolved in this one lets go of whichever
//! intents it took.
//!
//! Everything here is pure: rows in, result and row changes out.

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use serde::{Deserialize, Serialize};

use super::apply::{check as precondition, corrupt_record, RowChanges, RowSource, Staged};
use super::{bounds, keys, layout};
use crate::command::{
    Check, CommandResult, Effect, Outcome, Precondition, Rejection, Row, RowKey, Table, TxnId, TxnPart,
};
use crate::limits::{MAX_FENCE_HOLD, MAX_QUANTITY};
use crate::records::shop::{decode_record, encode_record, OrderLine, OrderRecord, ProductRecord, ProductRow};
use crate::types::{LogIndex, Shard};

/// Most finished transactions (or idempotency keys) one `PruneTxns` (or
/// `PruneIdempotency`) entry forgets, to bound the work and the memory of a
/// single entry. sled copies a leaf for each key a batch removes and frees
/// the copies only when the whole batch is done: at 10,000 (20,000 rows) a
/// prune entry took ~50 MB at once on every replica, which the allocator
/// then kept. Housekeeping proposes as many entries as it takes.
pub const PRUNE_BATCH: usize = 1_000;

/// A transaction as this shard knows it (the value of a `Txn` row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Where it stands.
    pub state: TxnState,
    /// When it was prepared, or when it finished (ms since the epoch).
    pub at_ms: u64,
}

/// Where a transaction stands in one shard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TxnState {
    /// Rows locked, effects staged; waiting for the outcome.
    Prepared {
        /// The staged part.
        part: TxnPart,
        /// The order's shard, whose part carries the call's idempotency key.
        decision_shard: Shard,
    },
    /// The effects happened.
    Committed,
    /// No effect happened; the reason if this shard refused it.
    Aborted(Option<Rejection>),
}

/// How a prepared transaction holds a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LockMode {
    /// It read the row (a check): the row must not change until it ends.
    Shared,
    /// It moves the row's stock: commutes with other stock moves.
    Escrow,
    /// It writes the row.
    Exclusive,
}

impl LockMode {
    /// True if two transactions may hold a row in these modes at once.
    fn compatible(self, other: LockMode) -> bool {
        self != LockMode::Exclusive && other != LockMode::Exclusive
    }
}

/// The intents on one row (the value of an `Intent` row).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntentRecord {
    /// Every transaction holding the row, and how.
    pub holders: BTreeMap<TxnId, LockMode>,
}

type Applied = (CommandResult, RowChanges);

/// Where a shard keeps the order index of its products: which order lines
/// hold a product, so that it is not deleted while one does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OrderIndex {
    /// A `ProductOrder` row per line (layouts 1 to 3).
    Rows,
    /// A count in the product's row ([`ProductRow`], layout 4 on); rows an
    /// older layout wrote stay until their lines go.
    Counts,
}

impl OrderIndex {
    /// The one the shard's current layout keeps.
    fn of(layout: u32) -> Self {
        match layout >= layout::ORDER_COUNTS {
            true => OrderIndex::Counts,
            false => OrderIndex::Rows,
        }
    }
}

fn rejected(rejection: Rejection) -> Applied {
    (CommandResult::Rejected(rejection), RowChanges::new())
}

/// A single-shard transaction: checks and effects in one entry. Before
/// layout 3 ([`layout::UNRECORDED_EXECUTES`]) it leaves a record of its
/// outcome, which a repeat of the same id gets back; from layout 3 it
/// leaves none (its write session dedups repeats).
pub fn execute(index: LogIndex, part: &TxnPart, at_ms: u64, rows: &impl RowSource) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let layout = layout::current(&staged)?;
    let (recorded, order_index) = (layout < layout::UNRECORDED_EXECUTES, OrderIndex::of(layout));
    if recorded {
        if let Some(record) = read_txn(&staged, part.id)? {
            return Ok((recorded_result(&record.state), RowChanges::new()));
        }
    }
    if let Some(rejection) = bounds::part_refusal(part) {
        return Ok(rejected(rejection));
    }
    let part = match price_orders(part, &staged)? {
        Ok(part) => part,
        Err(rejection) => return Ok(rejected(rejection)),
    };
    let part: &TxnPart = &part;
    if let Some(oid) = awaited_order(part) {
        let detail = format!("order {oid} has products in the other shard; a single-shard call cannot price them");
        return Ok(rejected(Rejection::Invalid(detail)));
    }
    if let Some(rejection) = first_lock_conflict(&staged, part, None, order_index)? {
        return Ok(rejected(rejection));
    }
    if let Err(rejection) = evaluate(index, part, &mut staged, order_index)? {
        return Ok(rejected(rejection));
    }
    // Stock added now must leave room for what prepared transactions may
    // still bring back (their returns, their reservations if they abort).
    for (pid, _) in stock_moves(&part.effects).filter(|(_, moves)| moves.added > 0) {
        if let Err(rejection) = headroom(&staged, pid, None, 0)? {
            return Ok(rejected(rejection));
        }
    }
    if recorded {
        finish(&mut staged, index, part.id, TxnState::Committed, at_ms);
    }
    Ok((CommandResult::Committed, staged.changes))
}

/// Phase one: lock and stage, or record why not.
pub fn prepare(
    index: LogIndex,
    part: &TxnPart,
    decision_shard: Shard,
    at_ms: u64,
    rows: &impl RowSource,
) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    if let Some(record) = read_txn(&staged, part.id)? {
        return Ok((recorded_result(&record.state), RowChanges::new()));
    }
    if let Some(rejection) = bounds::part_refusal(part) {
        return Ok(rejected(rejection));
    }
    let order_index = OrderIndex::of(layout::current(&staged)?);
    if let Some(rejection) = first_lock_conflict(&staged, part, Some(part.id), order_index)? {
        return Ok(rejected(rejection));
    }
    // The prices are taken now, and the part recorded below holds them. Its
    // new price checks hold the products too, so the locks are checked
    // again: a product another transaction is writing waits, as it would
    // for a caller that read the price first.
    let part = match price_orders(part, &staged)? {
        Ok(part) => part,
        Err(rejection) => {
            let result = CommandResult::Aborted(Some(rejection.clone()));
            finish(&mut staged, index, part.id, TxnState::Aborted(Some(rejection)), at_ms);
            return Ok((result, staged.changes));
        }
    };
    let part: &TxnPart = &part;
    if let Some(rejection) = first_lock_conflict(&staged, part, Some(part.id), order_index)? {
        return Ok(rejected(rejection));
    }
    if let Some(until_ms) = fence_lapses_at(&staged)?.filter(|until_ms| at_ms < *until_ms) {
        return Ok(rejected(Rejection::Fenced { until_ms }));
    }
    if let Err(rejection) = admit(index, part, rows, order_index)? {
        let result = CommandResult::Aborted(Some(rejection.clone()));
        finish(&mut staged, index, part.id, TxnState::Aborted(Some(rejection)), at_ms);
        return Ok((result, staged.changes));
    }
    for (key, mode) in lock_set(part, order_index) {
        let mut intents = read_intents(&staged, &key)?;
        intents.holders.insert(part.id, mode);
        staged.put(lock_key(&key), index, encode_record(&intents));
    }
    // `admit` reserved the same units on the same rows (intents do not
    // touch products), so this cannot fail; if it did, the part is refused
    // like any other, on every replica alike.
    if let Err(rejection) = evaluate_effects(index, &reservations(&part.effects), &mut staged, order_index)? {
        return Ok(rejected(rejection));
    }
    let record = TxnRecord { state: TxnState::Prepared { part: part.clone(), decision_shard }, at_ms };
    staged.put(RowKey::Txn(part.id), index, encode_record(&record));
    staged.put(RowKey::TxnPrepared(at_ms, part.id), index, Vec::new());
    Ok((prepared_result(part), staged.changes))
}

/// Phase two: the first outcome recorded for `id` wins. A commit fills in
/// the `prices` the other shard quoted, where the part waits for them
/// (the [`Effect::PriceLines`] its prepare kept); it is refused,
/// and the part stays prepared, if one it waits for is not given.
pub fn resolve(
    index: LogIndex,
    id: TxnId,
    outcome: Outcome,
    prices: &[(u64, f64)],
    at_ms: u64,
    rows: &impl RowSource,
) -> io::Result<Applied> {
    if let Err(detail) = bounds::check_prices(prices) {
        return Ok(rejected(Rejection::Invalid(detail)));
    }
    let mut staged = Staged::new(rows);
    let part = match read_txn(&staged, id)? {
        Some(TxnRecord { state: TxnState::Prepared { part, .. }, at_ms: prepared_at }) => {
            staged.delete(RowKey::TxnPrepared(prepared_at, id));
            part
        }
        Some(record) => return Ok((recorded_result(&record.state), RowChanges::new())),
        None => {
            // Never prepared here: whatever was proposed, nothing can commit
            // in this shard, and a late prepare must be refused.
            finish(&mut staged, index, id, TxnState::Aborted(None), at_ms);
            return Ok((CommandResult::Aborted(None), staged.changes));
        }
    };
    // The part may have been prepared in an older layout, which locked
    // other rows for its order index: it lets go of whichever it holds.
    let lockable = lock_set(&part, OrderIndex::Rows).into_keys().chain(lock_set(&part, OrderIndex::Counts).into_keys());
    for key in lockable.collect::<BTreeSet<RowKey>>() {
        let mut intents = read_intents(&staged, &key)?;
        if intents.holders.remove(&id).is_none() {
            continue;
        }
        match intents.holders.is_empty() {
            true => staged.delete(lock_key(&key)),
            false => staged.put(lock_key(&key), index, encode_record(&intents)),
        }
    }
    let (effects, state) = match outcome {
        // Stock reserved at prepare goes back.
        Outcome::Abort => (give_back(&part.effects), TxnState::Aborted(None)),
        // Everything but the reservations, which are taken already.
        Outcome::Commit => match fill_quoted_prices(without_reservations(&part.effects), prices) {
            Ok(effects) => (effects, TxnState::Committed),
            Err(rejection) => return Ok(rejected(rejection)),
        },
    };
    let order_index = OrderIndex::of(layout::current(&staged)?);
    settle_effects(index, id, &effects, &mut staged, order_index)?;
    let result = recorded_result(&state);
    finish(&mut staged, index, id, state, at_ms);
    Ok((result, staged.changes))
}

/// Where `id` stands here; if this shard never prepared it, it records it
/// aborted first, so that no prepare of it can land afterwards.
pub fn prevent(index: LogIndex, id: TxnId, at_ms: u64, rows: &impl RowSource) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    if let Some(record) = read_txn(&staged, id)? {
        return Ok((recorded_result(&record.state), RowChanges::new()));
    }
    finish(&mut staged, index, id, TxnState::Aborted(None), at_ms);
    Ok((CommandResult::Aborted(None), staged.changes))
}

/// Sets the backup fence to hold until `at_ms + hold_ms` (capped at
/// [`MAX_FENCE_HOLD`]), or lifts it when `hold_ms` is 0.
pub fn fence(index: LogIndex, hold_ms: u64, at_ms: u64) -> Applied {
    let mut changes = RowChanges::new();
    let hold_ms = hold_ms.min(MAX_FENCE_HOLD.as_millis() as u64);
    let row =
        (hold_ms > 0).then(|| Row { version: index, value: at_ms.saturating_add(hold_ms).to_be_bytes().to_vec() });
    changes.insert(RowKey::Fence, row);
    (CommandResult::Committed, changes)
}

/// When the backup fence lapses (ms since the epoch), if one was set and
/// not lifted; whether it still holds depends on the clock asked about.
pub fn fence_lapses_at(rows: &impl RowSource) -> io::Result<Option<u64>> {
    let Some(row) = rows.row(&RowKey::Fence)? else { return Ok(None) };
    let until_ms = row
        .value
        .as_slice()
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| corrupt_record(&RowKey::Fence, format!("{} bytes, not 8", row.value.len())))?;
    Ok(Some(until_ms))
}

/// Forgets finished transactions that ended before `before_ms`.
pub fn prune(before_ms: u64, rows: &impl RowSource) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let done = staged.committed_keys_with_prefix(&keys::table_prefix(Table::TxnsDone), PRUNE_BATCH)?;
    for key in done {
        let RowKey::TxnDone(at, id) = key else { continue };
        if at >= before_ms {
            break;
        }
        staged.delete(RowKey::TxnDone(at, id));
        staged.delete(RowKey::Txn(id));
    }
    Ok((CommandResult::Committed, staged.changes))
}

/// Forgets idempotency keys recorded before `before_ms`.
pub fn prune_idempotency(before_ms: u64, rows: &impl RowSource) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let done = staged.committed_keys_with_prefix(&keys::table_prefix(Table::IdempotencyDone), PRUNE_BATCH)?;
    for key in done {
        let RowKey::IdempotencyDone(at, shard, name) = key else { continue };
        if at >= before_ms {
            break;
        }
        staged.delete(RowKey::Idempotency(shard, name.clone()));
        staged.delete(RowKey::IdempotencyDone(at, shard, name));
    }
    Ok((CommandResult::Committed, staged.changes))
}

/// Some transaction holding an intent on `key`, if any (any mode).
pub fn lock_holder<S: RowSource>(staged: &Staged<'_, S>, key: &RowKey) -> io::Result<Option<TxnId>> {
    Ok(read_intents(staged, key)?.holders.into_keys().next())
}

/// A transaction that may change `key`'s value (an escrow or exclusive
/// intent), so a read of it must wait.
pub fn writer_of<S: RowSource>(staged: &Staged<'_, S>, key: &RowKey) -> io::Result<Option<TxnId>> {
    let intents = read_intents(staged, key)?;
    Ok(intents.holders.into_iter().find(|(_, mode)| *mode != LockMode::Shared).map(|(id, _)| id))
}

fn read_intents<S: RowSource>(staged: &Staged<'_, S>, key: &RowKey) -> io::Result<IntentRecord> {
    let lock = lock_key(key);
    match staged.get(&lock)? {
        Some(row) => decode_record(&row.value).map_err(|detail| corrupt_record(&lock, detail)),
        None => Ok(IntentRecord::default()),
    }
}

/// The stock reservations among `effects` (taken at prepare).
fn reservations(effects: &[Effect]) -> Vec<Effect> {
    effects.iter().filter(|e| matches!(e, Effect::AdjustStock { delta, .. } if *delta < 0)).cloned().collect()
}

/// `effects` without the reservations (what commit still has to do).
fn without_reservations(effects: &[Effect]) -> Vec<Effect> {
    effects.iter().filter(|e| !matches!(e, Effect::AdjustStock { delta, .. } if *delta < 0)).cloned().collect()
}

/// Undoing the reservations (what abort has to do).
fn give_back(effects: &[Effect]) -> Vec<Effect> {
    reservations(effects)
        .into_iter()
        .map(|e| match e {
            Effect::AdjustStock { pid, delta } => Effect::AdjustStock { pid, delta: -delta },
            other => other,
        })
        .collect()
}

/// Prepared transactions in `rows`, oldest first, for recovery and the
/// backup drain: id, decision shard, and when they were prepared. Reads
/// the `TxnsPrepared` index, so its cost follows the transactions in
/// flight, not the finished ones kept for late retries.
pub fn prepared(rows: &impl RowSource, limit: usize) -> io::Result<Vec<(TxnId, Shard, u64)>> {
    let mut found = Vec::new();
    for key in rows.keys_with_prefix(&keys::table_prefix(Table::TxnsPrepared), limit)? {
        let RowKey::TxnPrepared(at_ms, id) = key else { continue };
        match rows.row(&RowKey::Txn(id))? {
            Some(row) => match decode_record::<TxnRecord>(&row.value) {
                Ok(TxnRecord { state: TxnState::Prepared { decision_shard, .. }, .. }) => {
                    found.push((id, decision_shard, at_ms))
                }
                Ok(_) => tracing::error!(txn = %id, "an index entry of a prepared transaction outlived it"),
                Err(detail) => return Err(corrupt_record(&RowKey::Txn(id), detail)),
            },
            None => tracing::error!(txn = %id, "an index entry of a prepared transaction has no record"),
        }
    }
    Ok(found)
}

/// Like [`prepared`], but reading every transaction record: finds parts
/// prepared by a build that kept no `TxnsPrepared` index. Recovery runs it
/// once when it starts.
pub fn prepared_unindexed(rows: &impl RowSource, limit: usize) -> io::Result<Vec<(TxnId, Shard, u64)>> {
    let mut found = Vec::new();
    for key in rows.keys_with_prefix(&keys::table_prefix(Table::Txns), usize::MAX)? {
        let RowKey::Txn(id) = key else { continue };
        let Some(row) = rows.row(&key)? else { continue };
        let record: TxnRecord = decode_record(&row.value).map_err(|detail| corrupt_record(&key, detail))?;
        if let TxnState::Prepared { decision_shard, .. } = record.state {
            found.push((id, decision_shard, record.at_ms));
            if found.len() >= limit {
                break;
            }
        }
    }
    Ok(found)
}

fn lock_key(key: &RowKey) -> RowKey {
    RowKey::Intent(Box::new(key.clone()))
}

fn read_txn<S: RowSource>(staged: &Staged<'_, S>, id: TxnId) -> io::Result<Option<TxnRecord>> {
    let key = RowKey::Txn(id);
    match staged.get(&key)? {
        Some(row) => decode_record(&row.value).map(Some).map_err(|detail| corrupt_record(&key, detail)),
        None => Ok(None),
    }
}

/// What a retry of a recorded transaction gets back.
fn recorded_result(state: &TxnState) -> CommandResult {
    match state {
        TxnState::Prepared { part, .. } => prepared_result(part),
        TxnState::Committed => CommandResult::Committed,
        TxnState::Aborted(reason) => CommandResult::Aborted(reason.clone()),
    }
}

/// Records the end state of `id` and indexes it for pruning.
fn finish<S: RowSource>(staged: &mut Staged<'_, S>, index: LogIndex, id: TxnId, state: TxnState, at_ms: u64) {
    staged.put(RowKey::Txn(id), index, encode_record(&TxnRecord { state, at_ms }));
    staged.put(RowKey::TxnDone(at_ms, id), index, Vec::new());
}

/// The answer for a prepared `part`: the prices it quoted for the other
/// shard's order, if it quoted any.
fn prepared_result(part: &TxnPart) -> CommandResult {
    match quoted_prices(part) {
        prices if prices.is_empty() => CommandResult::Prepared,
        prices => CommandResult::PreparedQuoting(prices),
    }
}

/// The (product, price) pairs a prepared part quoted for the other shard.
pub fn quoted_prices(part: &TxnPart) -> Vec<(u64, f64)> {
    let quoted = part.checks.iter().filter_map(|check| match check {
        Check::QuotedPrice { pid, price } => Some((*pid, *price)),
        _ => None,
    });
    quoted.collect()
}

/// The order whose lines of the other shard's products `part` still waits
/// to price (it kept a pricing effect, see [`price_orders`]).
fn awaited_order(part: &TxnPart) -> Option<u64> {
    part.effects.iter().find_map(pricing).map(|(oid, _)| oid)
}

/// The order a pricing effect prices, and which of its lines (`None`: all).
fn pricing(effect: &Effect) -> Option<(u64, Option<&[u64]>)> {
    match effect {
        Effect::PriceOrder(oid) => Some((*oid, None)),
        Effect::PriceLines { oid, pids } => Some((*oid, Some(pids.as_slice()))),
        _ => None,
    }
}

/// True if `pricing`'s lines include the one of product `pid`.
fn prices_line(lines: Option<&[u64]>, pid: u64) -> bool {
    lines.is_none_or(|pids| pids.contains(&pid))
}

/// `effects` with the lines of every order still waiting for prices
/// ([`awaited_order`]) priced from `prices`, and the marks dropped; a
/// refusal if a price it waits for is not among them.
fn fill_quoted_prices(effects: Vec<Effect>, prices: &[(u64, f64)]) -> Result<Vec<Effect>, Rejection> {
    let mut filled: Vec<Effect> = Vec::with_capacity(effects.len());
    for effect in effects {
        let Some((oid, lines)) = pricing(&effect) else {
            filled.push(effect);
            continue;
        };
        let (value, mut order) = written_order(&mut filled, oid)?;
        let waiting =
            |line: &&mut OrderLine| Shard::of_id(line.pid) != Shard::of_id(oid) && prices_line(lines, line.pid);
        for line in order.lines.iter_mut().filter(waiting) {
            match prices.iter().find(|(pid, _)| *pid == line.pid) {
                Some((_, price)) => line.price = *price,
                None => {
                    return Err(Rejection::Invalid(format!(
                        "order {oid} waits for the price of product {}, which the other shard quotes; none was given",
                        line.pid
                    )))
                }
            }
        }
        *value = encode_record(&order);
    }
    Ok(filled)
}

/// Every row a part reads or writes, with the strongest mode it needs: what
/// it holds when prepared, where the shard keeps its order index as
/// `order_index` says.
fn lock_set(part: &TxnPart, order_index: OrderIndex) -> BTreeMap<RowKey, LockMode> {
    let checked = part.checks.iter().map(|check| match check {
        Check::Exists(key) | Check::Absent(key) | Check::Version(key, _) => key.clone(),
        Check::ProductPrice { pid, .. } | Check::QuotePrice(pid) | Check::QuotedPrice { pid, .. } => {
            RowKey::Product(*pid)
        }
        // Deleting an entity is exclusive anyway; index inserts of others
        // conflict with it through their shared intent on the entity.
        Check::NoOrdersOfProduct(pid) => RowKey::Product(*pid),
        Check::NoOrdersOfClient(cid) => RowKey::Client(*cid),
    });
    let written = part.effects.iter().map(|effect| match effect {
        Effect::Put(RowKey::ProductOrder(pid, _), _) | Effect::Delete(RowKey::ProductOrder(pid, _))
            if order_index == OrderIndex::Counts =>
        {
            (RowKey::Product(*pid), LockMode::Escrow)
        }
        Effect::Put(key, _) | Effect::Delete(key) => (key.clone(), LockMode::Exclusive),
        Effect::AdjustStock { pid, .. } => (RowKey::Product(*pid), LockMode::Escrow),
        // Its put and its checks hold the order and the products.
        Effect::PriceOrder(oid) | Effect::PriceLines { oid, .. } => (RowKey::Order(*oid), LockMode::Exclusive),
    });
    let mut modes: BTreeMap<RowKey, LockMode> = BTreeMap::new();
    for (key, mode) in checked.map(|key| (key, LockMode::Shared)).chain(written) {
        let held = modes.entry(key).or_insert(mode);
        *held = (*held).max(mode);
    }
    modes
}

/// The first row `part` needs that another transaction holds in a mode
/// that excludes it. `own` is the id whose intents do not count: the
/// part's own, for a prepare; none for an `Execute`, which never holds
/// intents, so a prepared part that happens to carry its id still keeps
/// its rows (before layout 3 its record answered such an `Execute` first).
fn first_lock_conflict<S: RowSource>(
    staged: &Staged<'_, S>,
    part: &TxnPart,
    own: Option<TxnId>,
    order_index: OrderIndex,
) -> io::Result<Option<Rejection>> {
    for (key, mode) in lock_set(part, order_index) {
        let intents = read_intents(staged, &key)?;
        let conflict = intents.holders.iter().find(|(holder, held)| Some(**holder) != own && !mode.compatible(**held));
        if let Some((holder, _)) = conflict {
            return Ok(Some(Rejection::Locked { key, holder: *holder }));
        }
    }
    Ok(None)
}

/// Evaluates the checks, then the effects into `staged`.
fn evaluate<S: RowSource>(
    index: LogIndex,
    part: &TxnPart,
    staged: &mut Staged<'_, S>,
    order_index: OrderIndex,
) -> io::Result<Result<(), Rejection>> {
    for check in &part.checks {
        if let Err(rejection) = evaluate_check(check, staged, order_index)? {
            return Ok(Err(rejection));
        }
    }
    evaluate_effects(index, &part.effects, staged, order_index)
}

fn evaluate_check<S: RowSource>(
    check: &Check,
    staged: &Staged<'_, S>,
    order_index: OrderIndex,
) -> io::Result<Result<(), Rejection>> {
    Ok(match check {
        Check::Exists(key) => precondition(key, &Precondition::Exists, staged.get(key)?.as_ref()),
        Check::Absent(key) => precondition(key, &Precondition::Absent, staged.get(key)?.as_ref()),
        Check::Version(key, version) => precondition(key, &Precondition::Version(*version), staged.get(key)?.as_ref()),
        Check::ProductPrice { pid, price } | Check::QuotedPrice { pid, price } => match read_product(staged, *pid)? {
            Err(rejection) => Err(rejection),
            Ok(product) if product.price.to_bits() == price.to_bits() => Ok(()),
            Ok(_) => Err(Rejection::PriceChanged { pid: *pid }),
        },
        // `price_orders` turned it into a `QuotedPrice`; all it asks is a
        // product.
        Check::QuotePrice(pid) => read_product(staged, *pid)?.map(drop),
        Check::NoOrdersOfClient(cid) => {
            match staged.any_with_prefix(&keys::index_prefix(Table::ClientOrders, *cid))? {
                true => Err(Rejection::ClientHasOrders(*cid)),
                false => Ok(()),
            }
        }
        Check::NoOrdersOfProduct(pid) => {
            let counted = match order_index {
                OrderIndex::Counts => read_product_row(staged, *pid, order_index)?.is_ok_and(|row| row.orders > 0),
                OrderIndex::Rows => false,
            };
            match counted || staged.any_with_prefix(&keys::index_prefix(Table::ProductOrders, *pid))? {
                true => Err(Rejection::ProductInOrders(*pid)),
                false => Ok(()),
            }
        }
    })
}

/// Applies effects in order into `staged`; the first failure stops.
fn evaluate_effects<S: RowSource>(
    index: LogIndex,
    effects: &[Effect],
    staged: &mut Staged<'_, S>,
    order_index: OrderIndex,
) -> io::Result<Result<(), Rejection>> {
    for effect in effects {
        match effect {
            Effect::Put(RowKey::ProductOrder(pid, _), _) if order_index == OrderIndex::Counts => {
                let mut row = match read_product_row(staged, *pid, order_index)? {
                    Ok(row) => row,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                row.orders = row.orders.saturating_add(1);
                staged.put(RowKey::Product(*pid), index, row.encode());
            }
            Effect::Delete(key @ RowKey::ProductOrder(pid, _)) if order_index == OrderIndex::Counts => {
                if staged.get(key)?.is_some() {
                    // Written by an older layout: the line lets go of it.
                    staged.delete(key.clone());
                    continue;
                }
                match read_product_row(staged, *pid, order_index)? {
                    Ok(mut row) => {
                        if row.orders == 0 {
                            // Portals delete a line's entry once, when it
                            // goes; a raw caller may not have.
                            tracing::warn!(index, product = pid, "an order line left a product that counts none");
                        }
                        row.orders = row.orders.saturating_sub(1);
                        staged.put(RowKey::Product(*pid), index, row.encode());
                    }
                    // Nothing counts the lines of a product that is gone.
                    Err(Rejection::NotFound(_)) => {}
                    Err(rejection) => return Ok(Err(rejection)),
                }
            }
            // A product's new record keeps the count of the lines holding it.
            Effect::Put(key @ RowKey::Product(pid), value) if order_index == OrderIndex::Counts => {
                let orders = match read_product_row(staged, *pid, order_index)? {
                    Ok(row) => row.orders,
                    Err(_) => 0,
                };
                let value = match decode_record::<ProductRecord>(value) {
                    Ok(record) => ProductRow { record, orders }.encode(),
                    // `bounds` let no such record in; kept as given.
                    Err(_) => value.clone(),
                };
                staged.put(key.clone(), index, value);
            }
            Effect::Put(key, value) => staged.put(key.clone(), index, value.clone()),
            Effect::Delete(key) => staged.delete(key.clone()),
            // `price_orders` turned it into its put before any evaluation.
            Effect::PriceOrder(_) | Effect::PriceLines { .. } => {}
            Effect::AdjustStock { pid, delta } => {
                let mut row = match read_product_row(staged, *pid, order_index)? {
                    Ok(row) => row,
                    Err(rejection) => return Ok(Err(rejection)),
                };
                let available = row.record.quantity;
                let quantity = match available.checked_add_signed(*delta) {
                    Some(quantity) if quantity <= MAX_QUANTITY => quantity,
                    Some(_) | None if *delta > 0 => {
                        let adding = delta.unsigned_abs();
                        return Ok(Err(Rejection::StockLimit { pid: *pid, available, pending: 0, adding }));
                    }
                    _ => {
                        let needed = delta.unsigned_abs();
                        return Ok(Err(Rejection::InsufficientStock { pid: *pid, available, needed }));
                    }
                };
                row.record.quantity = quantity;
                staged.put(RowKey::Product(*pid), index, row.encode());
            }
        }
    }
    Ok(Ok(()))
}

/// Whether a prepare may go ahead: its checks hold and its effects apply
/// (a dry run), its reservations alone can be taken, and the stock it adds
/// leaves room for what other prepared transactions may bring back.
fn admit(
    index: LogIndex,
    part: &TxnPart,
    rows: &impl RowSource,
    order_index: OrderIndex,
) -> io::Result<Result<(), Rejection>> {
    if let Err(rejection) = evaluate(index, part, &mut Staged::new(rows), order_index)? {
        return Ok(Err(rejection));
    }
    // Effects that touch one product several ways (a put, then a move) can
    // pass the dry run in order and still not reserve on their own.
    let mut reserved = Staged::new(rows);
    if let Err(rejection) = evaluate_effects(index, &reservations(&part.effects), &mut reserved, order_index)? {
        return Ok(Err(rejection));
    }
    for (pid, moves) in stock_moves(&part.effects).filter(|(_, moves)| moves.added > 0) {
        // Measured before the reservations: if this part aborts, they come
        // back; if it commits, its additions arrive.
        if let Err(rejection) = headroom(&Staged::new(rows), pid, Some(part.id), moves.added)? {
            return Ok(Err(rejection));
        }
    }
    Ok(Ok(()))
}

/// Units one part moves on one product.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct StockMoves {
    /// Units it adds (at commit).
    added: u64,
    /// Units it takes (reserved at prepare, given back on abort).
    taken: u64,
}

impl StockMoves {
    /// The most this part may bring to the product before it ends: its
    /// additions if it commits, or its reservations if it aborts.
    fn may_bring(self) -> u64 {
        self.added.max(self.taken)
    }
}

/// The stock moves of `effects`, per product.
fn stock_moves(effects: &[Effect]) -> impl Iterator<Item = (u64, StockMoves)> {
    let mut moves: BTreeMap<u64, StockMoves> = BTreeMap::new();
    for effect in effects {
        if let Effect::AdjustStock { pid, delta } = effect {
            let entry = moves.entry(*pid).or_default();
            match *delta > 0 {
                true => entry.added = entry.added.saturating_add(delta.unsigned_abs()),
                false => entry.taken = entry.taken.saturating_add(delta.unsigned_abs()),
            }
        }
    }
    moves.into_iter()
}

/// Refuses to add `adding` units to product `pid` (as `staged` holds it)
/// unless the units that prepared transactions other than `me` (a
/// prepare's own id; none for an `Execute`) may still bring back fit under
/// [`MAX_QUANTITY`] too. With this rule no order of commits and aborts can
/// take a product past the limit, so concurrent returns are serialized as
/// surely as concurrent reservations.
fn headroom<S: RowSource>(
    staged: &Staged<'_, S>,
    pid: u64,
    me: Option<TxnId>,
    adding: u64,
) -> io::Result<Result<(), Rejection>> {
    let product = match read_product(staged, pid)? {
        Ok(product) => product,
        Err(rejection) => return Ok(Err(rejection)),
    };
    let mut pending: u64 = 0;
    for holder in read_intents(staged, &RowKey::Product(pid))?.holders.into_keys().filter(|id| Some(*id) != me) {
        if let Some(TxnRecord { state: TxnState::Prepared { part, .. }, .. }) = read_txn(staged, holder)? {
            let theirs = stock_moves(&part.effects).find(|(p, _)| *p == pid).map(|(_, m)| m.may_bring());
            pending = pending.saturating_add(theirs.unwrap_or(0));
        }
    }
    match product.quantity.saturating_add(pending).saturating_add(adding) <= MAX_QUANTITY {
        true => Ok(Ok(())),
        false => Ok(Err(Rejection::StockLimit { pid, available: product.quantity, pending, adding })),
    }
}

/// Applies the effects of a transaction's recorded outcome. The outcome is
/// decided, so nothing here may refuse: the intents and [`headroom`] make
/// every move fit, and should a record break that (data from outside the
/// rules), the move is clamped and logged, identically on every replica,
/// instead of stopping the shard.
fn settle_effects<S: RowSource>(
    index: LogIndex,
    id: TxnId,
    effects: &[Effect],
    staged: &mut Staged<'_, S>,
    order_index: OrderIndex,
) -> io::Result<()> {
    for effect in effects {
        // Only a stock move or a count can be refused, and only by broken
        // records.
        let Err(rejection) = evaluate_effects(index, std::slice::from_ref(effect), staged, order_index)? else {
            continue;
        };
        tracing::error!(txn = %id, index, %rejection, "an effect of a decided transaction does not fit");
        if let Effect::AdjustStock { pid, delta } = effect {
            if let Ok(mut row) = read_product_row(staged, *pid, order_index)? {
                let product = &mut row.record;
                let moved = product.quantity.saturating_add_signed(*delta);
                product.quantity = moved.min(MAX_QUANTITY.max(product.quantity));
                staged.put(RowKey::Product(*pid), index, row.encode());
            }
        }
    }
    Ok(())
}

/// `part` with its prices taken from the committed rows. Every
/// [`Effect::PriceOrder`] or [`Effect::PriceLines`]: the order's put gets
/// the current price of each product it prices in the order's shard, and
/// the part checks that price ([`Check::ProductPrice`]), which holds the
/// product with a shared intent while the part is prepared; if it prices
/// lines of products in the other shard, a [`Effect::PriceLines`] naming
/// them stays as the mark that the commit fills those in.
/// Every [`Check::QuotePrice`] becomes a [`Check::QuotedPrice`] with the
/// product's current price. A product that does not exist refuses the part.
/// `bounds` made sure the put comes earlier in the part and decodes.
fn price_orders<'p, S: RowSource>(
    part: &'p TxnPart,
    staged: &Staged<'_, S>,
) -> io::Result<Result<std::borrow::Cow<'p, TxnPart>, Rejection>> {
    let prices_orders = part.effects.iter().any(|effect| pricing(effect).is_some());
    if !prices_orders && !part.checks.iter().any(|check| matches!(check, Check::QuotePrice(_))) {
        return Ok(Ok(std::borrow::Cow::Borrowed(part)));
    }
    let mut priced = TxnPart { id: part.id, checks: Vec::with_capacity(part.checks.len()), effects: Vec::new() };
    for check in &part.checks {
        let Check::QuotePrice(pid) = check else {
            priced.checks.push(check.clone());
            continue;
        };
        match read_product(staged, *pid)? {
            Ok(product) => priced.checks.push(Check::QuotedPrice { pid: *pid, price: product.price }),
            Err(rejection) => return Ok(Err(rejection)),
        }
    }
    for effect in &part.effects {
        let Some((oid, lines)) = pricing(effect) else {
            priced.effects.push(effect.clone());
            continue;
        };
        let (value, mut order) = match written_order(&mut priced.effects, oid) {
            Ok(written) => written,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let mut elsewhere = Vec::new();
        for line in order.lines.iter_mut().filter(|line| prices_line(lines, line.pid)) {
            if Shard::of_id(line.pid) != Shard::of_id(oid) {
                elsewhere.push(line.pid);
                continue;
            }
            match read_product(staged, line.pid)? {
                Ok(product) => line.price = product.price,
                Err(rejection) => return Ok(Err(rejection)),
            }
            priced.checks.push(Check::ProductPrice { pid: line.pid, price: line.price });
        }
        *value = encode_record(&order);
        if !elsewhere.is_empty() {
            priced.effects.push(Effect::PriceLines { oid, pids: elsewhere });
        }
    }
    Ok(Ok(std::borrow::Cow::Owned(priced)))
}

/// The value of the last put of order `oid` among `effects`, with the order
/// it holds: what a pricing effect prices.
fn written_order(effects: &mut [Effect], oid: u64) -> Result<(&mut Vec<u8>, OrderRecord), Rejection> {
    let key = RowKey::Order(oid);
    let written = effects.iter_mut().rev().find_map(|effect| match effect {
        Effect::Put(RowKey::Order(id), value) if *id == oid => Some(value),
        _ => None,
    });
    let Some(value) = written else { return Err(Rejection::NotFound(key)) };
    match decode_record(value) {
        Ok(order) => Ok((value, order)),
        Err(detail) => Err(Rejection::Corrupt { key, detail }),
    }
}

fn read_product<S: RowSource>(staged: &Staged<'_, S>, pid: u64) -> io::Result<Result<ProductRecord, Rejection>> {
    let key = RowKey::Product(pid);
    Ok(match staged.get(&key)? {
        None => Err(Rejection::NotFound(key)),
        Some(row) => decode_record(&row.value).map_err(|detail| Rejection::Corrupt { key, detail }),
    })
}

/// Product `pid`'s row with the count of order lines holding it; the
/// count is 0 where the index is kept in rows, whatever bytes follow the
/// record, so a row is rewritten there exactly as before layout 4.
fn read_product_row<S: RowSource>(
    staged: &Staged<'_, S>,
    pid: u64,
    order_index: OrderIndex,
) -> io::Result<Result<ProductRow, Rejection>> {
    let key = RowKey::Product(pid);
    Ok(match staged.get(&key)? {
        None => Err(Rejection::NotFound(key)),
        Some(row) => match ProductRow::decode(&row.value) {
            Ok(product) if order_index == OrderIndex::Rows => Ok(ProductRow { orders: 0, ..product }),
            Ok(product) => Ok(product),
            Err(detail) => Err(Rejection::Corrupt { key, detail }),
        },
    })
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::command::{Command, Row};

    use crate::state::testing::Replica as Shard;

    impl Shard {
        fn with_product(mut self, pid: u64, quantity: u64) -> Self {
            let product = ProductRecord { name: format!("p{pid}"), price: 2.5, quantity, extra: "{}".into() };
            self.rows.insert(RowKey::Product(pid), Row { version: 0, value: encode_record(&product) });
            self
        }

        fn stock(&self, pid: u64) -> u64 {
            let row = &self.rows[&RowKey::Product(pid)];
            decode_record::<ProductRecord>(&row.value).unwrap().quantity
        }

        fn locks(&self) -> usize {
            self.rows.keys().filter(|k| matches!(k, RowKey::Intent(_))).count()
        }
    }

    fn take(id: u128, pid: u64, quantity: i64) -> TxnPart {
        TxnPart {
            id: TxnId(id),
            checks: vec![Check::ProductPrice { pid, price: 2.5 }],
            effects: vec![
                Effect::AdjustStock { pid, delta: -quantity },
                Effect::Put(RowKey::ProductOrder(pid, 10), vec![]),
            ],
        }
    }

    fn execute(part: TxnPart) -> Command {
        Command::Execute { part, at_ms: 1000 }
    }

    fn prepare(part: TxnPart) -> Command {
        Command::Prepare { part, decision_shard: crate::types::Shard::Even, at_ms: 1000 }
    }

    fn resolve(id: u128, outcome: Outcome) -> Command {
        Command::Resolve { id: TxnId(id), outcome, at_ms: 2000 }
    }

    #[test]
    fn execute_commits_once_even_when_retried() {
        let mut shard = Shard::default().with_product(1, 8);
        assert_eq!(shard.apply(execute(take(7, 1, 3))), CommandResult::Committed);
        assert_eq!(shard.apply(execute(take(7, 1, 3))), CommandResult::Committed);
        assert_eq!(shard.stock(1), 5, "a retried transaction must not take stock twice");
        assert!(shard.rows.contains_key(&RowKey::ProductOrder(1, 10)));
    }

    #[test]
    fn stock_never_goes_negative() {
        let mut shard = Shard::default().with_product(1, 2);
        let result = shard.apply(execute(take(7, 1, 3)));
        let expected = Rejection::InsufficientStock { pid: 1, available: 2, needed: 3 };
        assert_eq!(result, CommandResult::Rejected(expected));
        assert_eq!(shard.stock(1), 2);
        assert!(!shard.rows.contains_key(&RowKey::ProductOrder(1, 10)), "nothing of a refused part is written");
    }

    #[test]
    fn prepare_reserves_stock_and_commit_keeps_it() {
        let mut shard = Shard::default().with_product(1, 8);
        assert_eq!(shard.apply(prepare(take(7, 1, 3))), CommandResult::Prepared);
        assert_eq!(shard.stock(1), 5, "the units are reserved at prepare");
        assert!(shard.locks() > 0);
        assert_eq!(shard.apply(resolve(7, Outcome::Commit)), CommandResult::Committed);
        assert_eq!(shard.stock(1), 5, "commit does not take them twice");
        assert_eq!(shard.locks(), 0);
        assert!(shard.rows.contains_key(&RowKey::ProductOrder(1, 10)), "the staged index entry is written");
    }

    #[test]
    fn a_fence_holds_prepares_back_until_lifted_or_lapsed_and_nothing_else() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.apply(Command::Fence { hold_ms: 5_000, at_ms: 1_000 });
        let at = |at_ms, part| Command::Prepare { part, decision_shard: crate::types::Shard::Odd, at_ms };
        let fenced = shard.apply(at(2_000, take(7, 1, 3)));
        assert_eq!(fenced, CommandResult::Rejected(Rejection::Fenced { until_ms: 6_000 }));
        assert_eq!(shard.stock(1), 8, "nothing was reserved");
        assert_eq!(shard.apply(execute(take(8, 1, 1))), CommandResult::Committed, "single-shard changes go on");
        assert_eq!(shard.apply(at(6_000, take(7, 1, 3))), CommandResult::Prepared, "the fence lapsed");
        shard.apply(resolve(7, Outcome::Abort));
        shard.apply(Command::Fence { hold_ms: u64::MAX, at_ms: 7_000 });
        let capped = 7_000 + MAX_FENCE_HOLD.as_millis() as u64;
        assert_eq!(
            shard.apply(at(8_000, take(9, 1, 1))),
            CommandResult::Rejected(Rejection::Fenced { until_ms: capped })
        );
        shard.apply(Command::Fence { hold_ms: 0, at_ms: 8_000 });
        assert_eq!(shard.apply(at(8_001, take(9, 1, 1))), CommandResult::Prepared, "the fence was lifted");
    }

    #[test]
    fn abort_gives_reserved_stock_back() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.apply(prepare(take(7, 1, 3)));
        assert_eq!(shard.apply(resolve(7, Outcome::Abort)), CommandResult::Aborted(None));
        assert_eq!(shard.stock(1), 8);
        assert!(!shard.rows.contains_key(&RowKey::ProductOrder(1, 10)));
    }

    #[test]
    fn stock_moves_share_a_product_but_writes_do_not() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.apply(prepare(take(7, 1, 3)));
        let mut other = take(8, 1, 4);
        other.effects[1] = Effect::Put(RowKey::ProductOrder(1, 11), vec![]);
        assert_eq!(shard.apply(prepare(other)), CommandResult::Prepared, "two orders reserve side by side");
        assert_eq!(shard.stock(1), 1);
        let mut greedy = take(9, 1, 2);
        greedy.effects[1] = Effect::Put(RowKey::ProductOrder(1, 12), vec![]);
        let refused = shard.apply(prepare(greedy));
        let short = Rejection::InsufficientStock { pid: 1, available: 1, needed: 2 };
        assert_eq!(refused, CommandResult::Aborted(Some(short)), "reservations count: no overselling");
        let renamed = encode_record(&ProductRecord { name: "new".into(), price: 2.5, quantity: 1, extra: "{}".into() });
        let rename = TxnPart {
            id: TxnId(10),
            checks: vec![Check::Exists(RowKey::Product(1))],
            effects: vec![Effect::Put(RowKey::Product(1), renamed.clone())],
        };
        let blocked = shard.apply(execute(rename));
        assert!(matches!(blocked, CommandResult::Rejected(Rejection::Locked { .. })), "{blocked:?}");
        // A raw batch may not write a product at all (kv rows only).
        let overwrite = shard.apply(Command::single(crate::command::RowWrite::upsert(RowKey::Product(1), renamed)));
        assert!(matches!(overwrite, CommandResult::Rejected(Rejection::Invalid(_))), "{overwrite:?}");
        shard.apply(resolve(7, Outcome::Commit));
        shard.apply(resolve(8, Outcome::Abort));
        assert_eq!(shard.stock(1), 5, "8 - 3 committed; the aborted 4 came back");
        assert_eq!(shard.locks(), 0);
    }

    #[test]
    fn the_first_outcome_wins() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.apply(prepare(take(7, 1, 3)));
        assert_eq!(shard.apply(resolve(7, Outcome::Abort)), CommandResult::Aborted(None));
        assert_eq!(shard.apply(resolve(7, Outcome::Commit)), CommandResult::Aborted(None));
        assert_eq!(shard.stock(1), 8);
        assert_eq!(shard.locks(), 0);
        assert_eq!(shard.apply(prepare(take(7, 1, 3))), CommandResult::Aborted(None), "no second life");
    }

    #[test]
    fn an_abort_before_prepare_leaves_a_tombstone() {
        let mut shard = Shard::default().with_product(1, 8);
        assert_eq!(shard.apply(resolve(7, Outcome::Abort)), CommandResult::Aborted(None));
        assert_eq!(shard.apply(prepare(take(7, 1, 3))), CommandResult::Aborted(None));
        assert_eq!(shard.locks(), 0);
        assert_eq!(shard.stock(1), 8);
    }

    /// Order `oid` takes `quantity` of product `pid` (its line's stock
    /// and index entry, as a portal plans them; the order row left out).
    fn order_line(id: u128, pid: u64, oid: u64, quantity: i64) -> TxnPart {
        let effects =
            vec![Effect::AdjustStock { pid, delta: -quantity }, Effect::Put(RowKey::ProductOrder(pid, oid), vec![])];
        TxnPart { id: TxnId(id), checks: vec![], effects }
    }

    /// Order `oid` lets go of its line of product `pid`.
    fn drop_line(id: u128, pid: u64, oid: u64, quantity: i64) -> TxnPart {
        let effects =
            vec![Effect::AdjustStock { pid, delta: quantity }, Effect::Delete(RowKey::ProductOrder(pid, oid))];
        TxnPart { id: TxnId(id), checks: vec![], effects }
    }

    fn delete_product(id: u128, pid: u64) -> TxnPart {
        TxnPart {
            id: TxnId(id),
            checks: vec![Check::Exists(RowKey::Product(pid)), Check::NoOrdersOfProduct(pid)],
            effects: vec![Effect::Delete(RowKey::Product(pid))],
        }
    }

    impl Shard {
        fn use_layout(&mut self, layout: u32) {
            assert!(matches!(self.apply(Command::UseLayout { layout }), CommandResult::Applied { .. }));
        }

        fn orders_counted(&self, pid: u64) -> u64 {
            ProductRow::decode(&self.rows[&RowKey::Product(pid)].value).unwrap().orders
        }

        fn index_rows(&self) -> usize {
            self.rows.keys().filter(|k| matches!(k, RowKey::ProductOrder(..))).count()
        }
    }

    #[test]
    fn from_layout_4_a_products_order_lines_are_counted_in_its_row() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.use_layout(layout::ORDER_COUNTS);
        assert_eq!(shard.apply(execute(order_line(1, 1, 10, 3))), CommandResult::Committed);
        assert_eq!(shard.apply(execute(order_line(2, 1, 11, 1))), CommandResult::Committed);
        assert_eq!((shard.stock(1), shard.orders_counted(1), shard.index_rows()), (4, 2, 0));
        let refused = shard.apply(execute(delete_product(3, 1)));
        assert_eq!(refused, CommandResult::Rejected(Rejection::ProductInOrders(1)));

        // A new record (UpdateProduct) keeps the count; callers see theirs.
        let renamed = ProductRecord { name: "new".into(), price: 3.0, quantity: 9, extra: "{}".into() };
        let update = TxnPart {
            id: TxnId(4),
            checks: vec![Check::Exists(RowKey::Product(1))],
            effects: vec![Effect::Put(RowKey::Product(1), encode_record(&renamed))],
        };
        assert_eq!(shard.apply(execute(update)), CommandResult::Committed);
        assert_eq!(shard.orders_counted(1), 2);
        assert_eq!(decode_record::<ProductRecord>(&shard.rows[&RowKey::Product(1)].value).unwrap(), renamed);

        assert_eq!(shard.apply(execute(drop_line(5, 1, 10, 3))), CommandResult::Committed);
        assert_eq!(shard.apply(execute(delete_product(6, 1))), CommandResult::Rejected(Rejection::ProductInOrders(1)));
        assert_eq!(shard.apply(execute(drop_line(7, 1, 11, 1))), CommandResult::Committed);
        assert_eq!((shard.stock(1), shard.orders_counted(1)), (13, 0));
        assert_eq!(shard.apply(execute(delete_product(8, 1))), CommandResult::Committed);
        assert!(!shard.rows.contains_key(&RowKey::Product(1)));
    }

    #[test]
    fn index_rows_of_an_older_layout_hold_their_product_until_their_lines_go() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.use_layout(layout::UNRECORDED_EXECUTES);
        assert_eq!(shard.apply(execute(order_line(1, 1, 10, 3))), CommandResult::Committed);
        assert_eq!((shard.orders_counted(1), shard.index_rows()), (0, 1));
        shard.use_layout(layout::ORDER_COUNTS);
        assert_eq!(shard.apply(execute(delete_product(2, 1))), CommandResult::Rejected(Rejection::ProductInOrders(1)));
        assert_eq!(shard.apply(execute(order_line(3, 1, 11, 1))), CommandResult::Committed);
        assert_eq!((shard.orders_counted(1), shard.index_rows()), (1, 1));

        // The old line removes its row and leaves the count alone.
        assert_eq!(shard.apply(execute(drop_line(4, 1, 10, 3))), CommandResult::Committed);
        assert_eq!((shard.orders_counted(1), shard.index_rows()), (1, 0));
        assert_eq!(shard.apply(execute(delete_product(5, 1))), CommandResult::Rejected(Rejection::ProductInOrders(1)));
        assert_eq!(shard.apply(execute(drop_line(6, 1, 11, 1))), CommandResult::Committed);
        assert_eq!(shard.apply(execute(delete_product(7, 1))), CommandResult::Committed);
    }

    #[test]
    fn a_part_prepared_before_the_switch_to_counts_lets_go_of_its_intents_after_it() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.use_layout(layout::UNRECORDED_EXECUTES);
        assert_eq!(shard.apply(prepare(order_line(1, 1, 10, 3))), CommandResult::Prepared);
        assert_eq!(shard.locks(), 2, "the product and its index row");
        shard.use_layout(layout::ORDER_COUNTS);
        assert_eq!(shard.apply(prepare(order_line(2, 1, 11, 1))), CommandResult::Prepared);
        assert_eq!(shard.locks(), 2, "the second part holds the product alone, beside the first");
        // Deleting the product waits for both.
        let locked = shard.apply(execute(delete_product(3, 1)));
        assert!(matches!(locked, CommandResult::Rejected(Rejection::Locked { .. })), "{locked:?}");

        assert_eq!(shard.apply(resolve(1, Outcome::Commit)), CommandResult::Committed);
        assert_eq!(shard.locks(), 1, "the first part let go of both its rows");
        assert_eq!(shard.apply(resolve(2, Outcome::Abort)), CommandResult::Aborted(None));
        assert_eq!(shard.locks(), 0);
        // The first line, committed in layout 4, is counted; the second
        // never was.
        assert_eq!((shard.stock(1), shard.orders_counted(1), shard.index_rows()), (5, 1, 0));
    }

    #[test]
    fn a_failed_prepare_is_recorded_with_its_reason() {
        let mut shard = Shard::default().with_product(1, 2);
        let reason = Rejection::InsufficientStock { pid: 1, available: 2, needed: 3 };
        assert_eq!(shard.apply(prepare(take(7, 1, 3))), CommandResult::Aborted(Some(reason.clone())));
        assert_eq!(shard.apply(prepare(take(7, 1, 3))), CommandResult::Aborted(Some(reason)));
        assert_eq!(shard.locks(), 0);
    }

    #[test]
    fn a_changed_price_is_detected() {
        let mut shard = Shard::default().with_product(1, 8);
        let mut part = take(7, 1, 1);
        part.checks = vec![Check::ProductPrice { pid: 1, price: 3.0 }];
        assert_eq!(shard.apply(execute(part)), CommandResult::Rejected(Rejection::PriceChanged { pid: 1 }));
    }

    #[test]
    fn index_checks_refuse_deleting_referenced_entities() {
        let mut shard = Shard::default();
        shard.rows.insert(RowKey::Client(2), Row { version: 1, value: vec![] });
        shard.rows.insert(RowKey::ClientOrder(2, 10), Row { version: 1, value: vec![] });
        let delete = |id| TxnPart {
            id: TxnId(id),
            checks: vec![Check::Exists(RowKey::Client(2)), Check::NoOrdersOfClient(2)],
            effects: vec![Effect::Delete(RowKey::Client(2))],
        };
        assert_eq!(shard.apply(execute(delete(1))), CommandResult::Rejected(Rejection::ClientHasOrders(2)));
        shard.rows.remove(&RowKey::ClientOrder(2, 10));
        assert_eq!(shard.apply(execute(delete(2))), CommandResult::Committed);
        assert!(!shard.rows.contains_key(&RowKey::Client(2)));
    }

    /// From layout 3 an `Execute` writes the same rows as before except its
    /// record and index entry; a repeat of its id is a transaction of its
    /// own, and a prepared part that carries the id keeps its rows.
    #[test]
    fn from_layout_3_a_single_shard_transaction_leaves_no_record() {
        let mut before = Shard::default().with_product(1, 8);
        let mut after = Shard::default().with_product(1, 8);
        before.apply(Command::UseLayout { layout: layout::ENTRY_EVENTS });
        after.apply(Command::UseLayout { layout: layout::UNRECORDED_EXECUTES });
        for shard in [&mut before, &mut after] {
            assert_eq!(shard.apply(execute(take(1, 1, 2))), CommandResult::Committed);
        }
        let without_records = |shard: &Shard| {
            let kept = |key: &&RowKey| !matches!(key, RowKey::Txn(_) | RowKey::TxnDone(..) | RowKey::Layout);
            shard.rows.iter().filter(|(key, _)| kept(key)).map(|(k, r)| (k.clone(), r.clone())).collect::<Vec<_>>()
        };
        assert_eq!(without_records(&after), without_records(&before));
        assert!(before.rows.contains_key(&RowKey::Txn(TxnId(1))));
        assert!(before.rows.keys().any(|key| matches!(key, RowKey::TxnDone(_, TxnId(1)))));
        assert!(!after.rows.keys().any(|key| matches!(key, RowKey::Txn(_) | RowKey::TxnDone(..))));

        // A repeat: the record answers it before layout 3, nothing after.
        assert_eq!(before.apply(execute(take(1, 1, 2))), CommandResult::Committed);
        assert_eq!(after.apply(execute(take(1, 1, 2))), CommandResult::Committed);
        assert_eq!((before.stock(1), after.stock(1)), (6, 4));

        // A part prepared under id 2 holds the product's index row; an
        // `Execute` under the same id is refused like any other writer.
        assert_eq!(after.apply(prepare(take(2, 1, 1))), CommandResult::Prepared);
        let refused = after.apply(execute(take(2, 1, 1)));
        assert!(matches!(refused, CommandResult::Rejected(Rejection::Locked { .. })), "{refused:?}");
        assert_eq!(after.apply(resolve(2, Outcome::Commit)), CommandResult::Committed);
        assert_eq!(after.stock(1), 3);
    }

    #[test]
    fn prune_forgets_only_old_finished_transactions() {
        let mut shard = Shard::default().with_product(1, 8);
        shard.apply(Command::Execute { part: take(1, 1, 1), at_ms: 100 });
        shard.apply(Command::Execute { part: take(2, 1, 1), at_ms: 300 });
        shard.apply(prepare(take(3, 1, 1)));
        shard.apply(Command::PruneTxns { before_ms: 200 });
        assert!(!shard.rows.contains_key(&RowKey::Txn(TxnId(1))));
        assert!(shard.rows.contains_key(&RowKey::Txn(TxnId(2))));
        assert!(shard.rows.contains_key(&RowKey::Txn(TxnId(3))), "prepared transactions are never pruned");
        assert_eq!(prepared(&shard.rows, 10).unwrap(), vec![(TxnId(3), crate::types::Shard::Even, 1000)]);
        assert_eq!(prepared_unindexed(&shard.rows, 10).unwrap(), prepared(&shard.rows, 10).unwrap());
        shard.apply(resolve(3, Outcome::Abort));
        assert_eq!(prepared(&shard.rows, 10).unwrap(), vec![], "resolving drops the index entry");
        assert!(!shard.rows.keys().any(|k| matches!(k, RowKey::TxnPrepared(..))));
    }

    #[test]
    fn one_prune_entry_forgets_at_most_a_batch() {
        let finished = PRUNE_BATCH as u128 + 5;
        let mut shard = Shard::default().with_product(1, finished as u64);
        for id in 1..=finished {
            assert_eq!(shard.apply(Command::Execute { part: take(id, 1, 1), at_ms: 100 }), CommandResult::Committed);
        }
        let remembered = |shard: &Shard| shard.rows.keys().filter(|k| matches!(k, RowKey::TxnDone(..))).count();
        assert_eq!(remembered(&shard), finished as usize);
        shard.apply(Command::PruneTxns { before_ms: 200 });
        assert_eq!(remembered(&shard), 5, "the first entry forgets one batch");
        shard.apply(Command::PruneTxns { before_ms: 200 });
        assert_eq!(remembered(&shard), 0, "the next one the rest");
        assert!(!shard.rows.keys().any(|k| matches!(k, RowKey::Txn(..))));
    }

    /// Order 10 of one line of product `pid`, priced by the shard.
    fn priced_order(id: u128, pid: u64, quantity: u64) -> TxnPart {
        let lines = vec![crate::records::shop::OrderLine { pid, quantity, price: 0.0 }];
        let order = encode_record(&OrderRecord { cid: 2, lines });
        TxnPart {
            id: TxnId(id),
            checks: vec![Check::Absent(RowKey::Order(10))],
            effects: vec![
                Effect::Put(RowKey::Order(10), order),
                Effect::PriceOrder(10),
                Effect::AdjustStock { pid, delta: -(quantity as i64) },
            ],
        }
    }

    fn order_price(rows: &BTreeMap<RowKey, Row>) -> f64 {
        decode_record::<OrderRecord>(&rows[&RowKey::Order(10)].value).unwrap().lines[0].price
    }

    fn set_price(shard: &mut Shard, pid: u64, price: f64) {
        let row = shard.rows.get_mut(&RowKey::Product(pid)).unwrap();
        let mut product: ProductRecord = decode_record(&row.value).unwrap();
        product.price = price;
        row.value = encode_record(&product);
    }

    #[test]
    fn an_order_priced_in_its_shard_records_the_price_it_applied_with() {
        let mut shard = Shard::default().with_product(4, 8);
        set_price(&mut shard, 4, 7.25);
        assert_eq!(shard.apply(execute(priced_order(1, 4, 3))), CommandResult::Committed);
        assert_eq!(order_price(&shard.rows), 7.25);
        assert_eq!(shard.stock(4), 5);
    }

    #[test]
    fn a_prepared_order_keeps_the_price_its_prepare_saw_and_holds_the_product() {
        let mut shard = Shard::default().with_product(4, 8);
        assert_eq!(shard.apply(prepare(priced_order(1, 4, 3))), CommandResult::Prepared);
        let Some(TxnRecord { state: TxnState::Prepared { part, .. }, .. }) =
            read_txn(&Staged::new(&shard.rows), TxnId(1)).unwrap()
        else {
            panic!("a prepared record")
        };
        assert!(part.checks.contains(&Check::ProductPrice { pid: 4, price: 2.5 }), "{part:?}");
        assert!(!part.effects.iter().any(|e| matches!(e, Effect::PriceOrder(_))), "carried out: {part:?}");
        // A price change must wait for the order (the product is held).
        let product = ProductRecord { name: "p4".into(), price: 9.0, quantity: 5, extra: "{}".into() };
        let update = TxnPart {
            id: TxnId(2),
            checks: vec![],
            effects: vec![Effect::Put(RowKey::Product(4), encode_record(&product))],
        };
        assert!(matches!(shard.apply(execute(update)), CommandResult::Rejected(Rejection::Locked { .. })));
        assert_eq!(shard.apply(resolve(1, Outcome::Commit)), CommandResult::Committed);
        assert_eq!(order_price(&shard.rows), 2.5);
    }

    #[test]
    fn pricing_an_order_of_a_missing_product_refuses_it_for_good() {
        let mut shard = Shard::default();
        let result = shard.apply(prepare(priced_order(1, 4, 3)));
        assert_eq!(result, CommandResult::Aborted(Some(Rejection::NotFound(RowKey::Product(4)))));
        assert!(!shard.rows.contains_key(&RowKey::Order(10)));
        assert_eq!(shard.locks(), 0);
    }

    #[test]
    fn pricing_needs_the_order_put_first_and_products_of_its_shard() {
        let mut part = priced_order(1, 4, 3);
        part.effects.swap(0, 1);
        let refused = Shard::default().with_product(4, 8).apply(execute(part));
        assert!(
            matches!(refused, CommandResult::Rejected(Rejection::Invalid(ref why)) if why.contains("earlier")),
            "{refused:?}"
        );
        let elsewhere = Shard::default().with_product(5, 8).apply(execute(priced_order(1, 5, 3)));
        assert!(
            matches!(elsewhere, CommandResult::Rejected(Rejection::Invalid(ref why)) if why.contains("other shard")),
            "{elsewhere:?}"
        );
    }

    #[test]
    fn pricing_lines_prices_only_the_lines_named() {
        // Order 10 (even) keeps its line of product 2 at 1.0; the line of
        // product 4 (even) is priced here, that of product 5 (odd) waits
        // for the other shard's quote.
        let lines = [(2, 1.0), (4, 0.0), (5, 0.0)]
            .map(|(pid, price)| crate::records::shop::OrderLine { pid, quantity: 1, price })
            .to_vec();
        let update = TxnPart {
            id: TxnId(1),
            checks: vec![],
            effects: vec![
                Effect::Put(RowKey::Order(10), encode_record(&OrderRecord { cid: 2, lines })),
                Effect::PriceLines { oid: 10, pids: vec![4, 5] },
            ],
        };
        let mut even = Shard::default().with_product(2, 8).with_product(4, 8);
        set_price(&mut even, 2, 9.0);
        set_price(&mut even, 4, 7.25);
        assert_eq!(even.apply(prepare(update.clone())), CommandResult::Prepared);
        let Some(TxnRecord { state: TxnState::Prepared { part, .. }, .. }) =
            read_txn(&Staged::new(&even.rows), TxnId(1)).unwrap()
        else {
            panic!("a prepared record")
        };
        assert!(part.effects.contains(&Effect::PriceLines { oid: 10, pids: vec![5] }), "{part:?}");
        assert!(part.checks.contains(&Check::ProductPrice { pid: 4, price: 7.25 }), "{part:?}");
        let priced = Command::CommitPriced { id: TxnId(1), prices: vec![(5, 3.5)], at_ms: 2_000 };
        assert_eq!(even.apply(priced), CommandResult::Committed);
        let order: OrderRecord = decode_record(&even.rows[&RowKey::Order(10)].value).unwrap();
        let prices: Vec<(u64, f64)> = order.lines.iter().map(|line| (line.pid, line.price)).collect();
        assert_eq!(prices, [(2, 1.0), (4, 7.25), (5, 3.5)]);

        let mut bad = update;
        bad.effects[1] = Effect::PriceLines { oid: 10, pids: vec![6] };
        let refused = Shard::default().apply(execute(bad.clone()));
        assert!(matches!(refused, CommandResult::Rejected(Rejection::Invalid(ref why)) if why.contains("product 6")));
        bad.effects[1] = Effect::PriceLines { oid: 10, pids: vec![] };
        assert!(matches!(Shard::default().apply(execute(bad)), CommandResult::Rejected(Rejection::Invalid(_))));
    }

    #[test]
    fn an_order_takes_the_prices_the_other_shard_quoted_in_its_prepare() {
        // Order 10 (even shard) of product 5, which lives in the odd shard.
        let mut odd = Shard::default().with_product(5, 8);
        set_price(&mut odd, 5, 7.25);
        let quote = TxnPart {
            id: TxnId(1),
            checks: vec![Check::QuotePrice(5)],
            effects: vec![Effect::AdjustStock { pid: 5, delta: -3 }],
        };
        assert_eq!(odd.apply(prepare(quote)), CommandResult::PreparedQuoting(vec![(5, 7.25)]));
        assert_eq!(
            odd.apply(Command::Prevent { id: TxnId(1), at_ms: 1_500 }),
            CommandResult::PreparedQuoting(vec![(5, 7.25)]),
            "asked again, the record still answers the price"
        );
        let mut rise = odd.rows[&RowKey::Product(5)].clone();
        rise.value = encode_record(&ProductRecord { name: "p5".into(), price: 9.0, quantity: 5, extra: "{}".into() });
        let update =
            TxnPart { id: TxnId(2), checks: vec![], effects: vec![Effect::Put(RowKey::Product(5), rise.value)] };
        assert!(
            matches!(odd.apply(execute(update)), CommandResult::Rejected(Rejection::Locked { .. })),
            "the quoted price holds until the transaction ends"
        );

        let mut even = Shard::default();
        let mut order = priced_order(1, 5, 3);
        order.effects.retain(|effect| !matches!(effect, Effect::AdjustStock { .. }));
        assert_eq!(even.apply(prepare(order)), CommandResult::Prepared);
        let without = even.apply(resolve(1, Outcome::Commit));
        assert!(
            matches!(without, CommandResult::Rejected(Rejection::Invalid(ref why)) if why.contains("product 5")),
            "a commit without the quoted price is refused: {without:?}"
        );
        let wrong = even.apply(Command::CommitPriced { id: TxnId(1), prices: vec![(7, 1.0)], at_ms: 2_000 });
        assert!(matches!(wrong, CommandResult::Rejected(Rejection::Invalid(_))), "{wrong:?}");
        let bad = even.apply(Command::CommitPriced { id: TxnId(1), prices: vec![(5, f64::NAN)], at_ms: 2_000 });
        assert!(matches!(bad, CommandResult::Rejected(Rejection::Invalid(_))), "{bad:?}");
        assert!(even.locks() > 0, "still prepared");
        assert!(!even.rows.contains_key(&RowKey::Order(10)));
        let priced = Command::CommitPriced { id: TxnId(1), prices: vec![(5, 7.25)], at_ms: 2_000 };
        assert_eq!(even.apply(priced), CommandResult::Committed);
        assert_eq!(order_price(&even.rows), 7.25);
        assert_eq!(even.locks(), 0);
        assert_eq!(odd.apply(resolve(1, Outcome::Commit)), CommandResult::Committed);
        assert_eq!(odd.stock(5), 5);
    }
}
