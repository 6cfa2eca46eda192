//! Which commands the `Store` service admits from the network.
//!
//! The command language is also the log's: the same `Command` carries a
//! portal's transaction, a kv write and the leader's own housekeeping, and
//! it can name every table, internal ones included. A caller that could
//! write `intents`, `txns` or `events` rows could plant records the state
//! machine trusts. So before a command is proposed, [`validate`] holds it
//! against what legitimate callers send:
//!
//! - `Batch` (kv workloads, the CLI, demos): one or more writes, each to the
//!   `kv` table, keys up to [`MAX_KV_KEY_BYTES`], values up to
//!   [`MAX_KV_VALUE_BYTES`].
//! - `Execute` / `Prepare` (portals): checks and effects on the shop tables
//!   and the portals' idempotency tables only ([`PORTAL_TABLES`]); a record
//!   put into `clients`, `products` or `orders` must decode as one, within
//!   the documented maxima; index rows carry no value; a stock move is at
//!   most [`MAX_QUANTITY`] units; a price checked is a finite price.
//! - `Resolve` (portals, other shards' recovery): any.
//! - `Mutex`, `KeepAlive`, `EnterBarrier` (coordination clients): names up
//!   to [`MAX_KV_KEY_BYTES`], sessions up to [`MAX_SESSION_TTL`], at least
//!   one message, at least one participant.
//! - `PruneTxns`, `PruneIdempotency`, `ExpireSessions`: proposed by a
//!   shard's leader to itself, never sent; refused.
//! - `Many`: how a node batches callers' commands into one entry; a caller
//!   sends one command per call, so it is refused.
//!
//! The rules are pure and cheap (no state is read); the state machine still
//! decides everything that depends on the state, deterministically.

use crate::command::{Check, Command, Effect, MutexOp, RowKey, RowWrite, Table, TxnPart};
use crate::limits::{
    MAX_IDEMPOTENCY_KEY_BYTES, MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES, MAX_ORDER_LINES, MAX_PRICE, MAX_QUANTITY,
    MAX_SESSION_TTL,
};
use crate::shop::{decode_record, ClientRecord, OrderRecord, ProductRecord};

/// The tables a portal's transaction may check and change.
pub const PORTAL_TABLES: [Table; 7] = [
    Table::Clients,
    Table::Products,
    Table::Orders,
    Table::ClientOrders,
    Table::ProductOrders,
    Table::Idempotency,
    Table::IdempotencyDone,
];

/// Most characters of a row key quoted in a refusal.
const SHOWN_KEY_CHARS: usize = 80;

/// `Ok` if a caller may send `command`; else why not, as a sentence.
pub fn validate(command: &Command) -> Result<(), String> {
    match command {
        Command::Batch(writes) => validate_batch(writes),
        Command::Execute { part, .. } | Command::Prepare { part, .. } => validate_part(part),
        Command::Resolve { .. } => Ok(()),
        Command::Mutex { ops, ttl_ms, .. } => validate_mutex(ops, *ttl_ms),
        Command::KeepAlive { ttl_ms, .. } => validate_ttl(*ttl_ms),
        Command::EnterBarrier { name, size, .. } => {
            validate_name("barrier", name)?;
            match size {
                0 => Err("a barrier needs at least one participant".into()),
                _ => Ok(()),
            }
        }
        Command::PruneTxns { .. } | Command::PruneIdempotency { .. } | Command::ExpireSessions { .. } => {
            Err(format!("\"{command}\" is proposed by a shard's leader itself and is not accepted from callers"))
        }
        Command::Many(_) => Err("a batch of commands (Many) is built by the node; send one command per call".into()),
    }
}

/// A kv batch: not empty, every write to the `kv` table, within the sizes.
fn validate_batch(writes: &[RowWrite]) -> Result<(), String> {
    if writes.is_empty() {
        return Err("a batch needs at least one write".into());
    }
    for write in writes {
        let key = write.key();
        let RowKey::Kv(name) = key else {
            return Err(format!("a batch writes only the kv table, not {} ({})", key.table().name(), shown(key)));
        };
        validate_kv_key(name)?;
        if let RowWrite::Put { value, .. } = write {
            if value.len() > MAX_KV_VALUE_BYTES {
                return Err(format!("the value of {key} is {} bytes; the limit is {MAX_KV_VALUE_BYTES}", value.len()));
            }
        }
    }
    Ok(())
}

/// A kv key within [`MAX_KV_KEY_BYTES`].
fn validate_kv_key(name: &str) -> Result<(), String> {
    match name.len() {
        len if len > MAX_KV_KEY_BYTES => Err(format!("a kv key is {len} bytes; the limit is {MAX_KV_KEY_BYTES}")),
        _ => Ok(()),
    }
}

/// A portal's transaction part: only [`PORTAL_TABLES`], sound records.
fn validate_part(part: &TxnPart) -> Result<(), String> {
    for check in &part.checks {
        match check {
            Check::Exists(key) | Check::Absent(key) | Check::Version(key, _) => portal_row(key)?,
            Check::ProductPrice { pid, price } => {
                validate_price(*price, &format!("the price checked of product {pid}"))?
            }
            Check::NoOrdersOfClient(_) | Check::NoOrdersOfProduct(_) => {}
        }
    }
    for effect in &part.effects {
        match effect {
            Effect::Put(key, value) => validate_put(key, value)?,
            Effect::Delete(key) => portal_row(key)?,
            Effect::AdjustStock { pid, delta } if delta.unsigned_abs() > MAX_QUANTITY => {
                return Err(format!("a stock move of {delta} units of product {pid} exceeds {MAX_QUANTITY}"))
            }
            Effect::AdjustStock { .. } => {}
        }
    }
    Ok(())
}

/// `Ok` if `key` is a row a portal's transaction may touch.
fn portal_row(key: &RowKey) -> Result<(), String> {
    if !PORTAL_TABLES.contains(&key.table()) {
        return Err(format!("a transaction may not touch the {} table ({})", key.table().name(), shown(key)));
    }
    match key {
        RowKey::Idempotency(_, idempotency_key) | RowKey::IdempotencyDone(_, _, idempotency_key)
            if idempotency_key.len() > MAX_IDEMPOTENCY_KEY_BYTES =>
        {
            let len = idempotency_key.len();
            Err(format!("an idempotency key is {len} bytes; the limit is {MAX_IDEMPOTENCY_KEY_BYTES}"))
        }
        _ => Ok(()),
    }
}

/// A key as shown in a refusal: at most [`SHOWN_KEY_CHARS`] characters, so
/// that a hostile key cannot blow up the answer.
fn shown(key: &RowKey) -> String {
    let text = key.to_string();
    match text.char_indices().nth(SHOWN_KEY_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text,
    }
}

/// A portal's put: a shop record that decodes and keeps the maxima, an
/// empty index entry, or a bounded idempotency row.
fn validate_put(key: &RowKey, value: &[u8]) -> Result<(), String> {
    portal_row(key)?;
    let shown = shown(key);
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(format!("the value of {shown} is {} bytes; the limit is {MAX_KV_VALUE_BYTES}", value.len()));
    }
    let invalid = |detail: String| format!("the record for {shown} is invalid: {detail}");
    match key.table() {
        Table::Clients => decode_record::<ClientRecord>(value).map(drop).map_err(invalid),
        Table::Products => decode_record::<ProductRecord>(value).map_err(&invalid).and_then(|product| {
            validate_quantity(product.quantity, "its stock").map_err(&invalid)?;
            validate_price(product.price, "its price").map_err(&invalid)
        }),
        Table::Orders => decode_record::<OrderRecord>(value)
            .map_err(&invalid)
            .and_then(|order| validate_order(&order).map_err(&invalid)),
        Table::ClientOrders | Table::ProductOrders if !value.is_empty() => {
            Err(format!("the index row {shown} carries no value"))
        }
        _ => Ok(()),
    }
}

/// An order's lines: at most [`MAX_ORDER_LINES`], each within the maxima.
fn validate_order(order: &OrderRecord) -> Result<(), String> {
    if order.lines.len() > MAX_ORDER_LINES {
        return Err(format!("{} lines; the limit is {MAX_ORDER_LINES}", order.lines.len()));
    }
    for line in &order.lines {
        validate_quantity(line.quantity, &format!("the quantity of product {}", line.pid))?;
        validate_price(line.price, &format!("the price of product {}", line.pid))?;
    }
    Ok(())
}

/// A quantity of at most [`MAX_QUANTITY`] units.
fn validate_quantity(quantity: u64, what: &str) -> Result<(), String> {
    match quantity {
        q if q > MAX_QUANTITY => Err(format!("{what} is {q}; the limit is {MAX_QUANTITY}")),
        _ => Ok(()),
    }
}

/// A finite price from 0 to [`MAX_PRICE`].
fn validate_price(price: f64, what: &str) -> Result<(), String> {
    match (0.0..=MAX_PRICE).contains(&price) {
        true => Ok(()),
        false => Err(format!("{what} is {price}; a price is a number from 0 to {MAX_PRICE}")),
    }
}

/// Lamport messages: at least one, each naming a bounded mutex.
fn validate_mutex(ops: &[MutexOp], ttl_ms: u64) -> Result<(), String> {
    if ops.is_empty() {
        return Err("a mutex command needs at least one message".into());
    }
    for op in ops {
        let (MutexOp::Request { resource, .. } | MutexOp::Release { resource, .. }) = op;
        validate_name("mutex", resource)?;
    }
    validate_ttl(ttl_ms)
}

/// A mutex's or barrier's name within [`MAX_KV_KEY_BYTES`].
fn validate_name(kind: &str, name: &str) -> Result<(), String> {
    match name.len() {
        len if len > MAX_KV_KEY_BYTES => Err(format!("a {kind} name is {len} bytes; the limit is {MAX_KV_KEY_BYTES}")),
        _ => Ok(()),
    }
}

/// A session lifetime within [`MAX_SESSION_TTL`].
fn validate_ttl(ttl_ms: u64) -> Result<(), String> {
    match u128::from(ttl_ms) > MAX_SESSION_TTL.as_millis() {
        true => Err(format!("a session of {ttl_ms} ms is longer than the limit of {MAX_SESSION_TTL:?}")),
        false => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Outcome, Precondition, TxnId};
    use crate::shop::{encode_record, OrderLine};
    use crate::types::Shard;

    fn kv(name: &str) -> RowKey {
        RowKey::Kv(name.into())
    }

    fn put(key: RowKey, value: &[u8]) -> Command {
        Command::single(RowWrite::upsert(key, value.to_vec()))
    }

    fn part(checks: Vec<Check>, effects: Vec<Effect>) -> Command {
        Command::Execute { part: TxnPart { id: TxnId(7), checks, effects }, at_ms: 0 }
    }

    fn product(quantity: u64, price: f64) -> Vec<u8> {
        encode_record(&ProductRecord { name: "p".into(), price, quantity, extra: "{}".into() })
    }

    fn refused(command: &Command, words: &str) {
        let reason = validate(command).expect_err("refused");
        assert!(reason.contains(words), "{reason:?} should say {words:?}");
    }

    #[test]
    fn legitimate_commands_pass() {
        let order = OrderRecord { cid: 1, lines: vec![OrderLine { pid: 2, quantity: 3, price: 4.5 }] };
        let legitimate = [
            put(kv("a"), b"v"),
            Command::Batch(vec![
                RowWrite::Delete { key: kv("a"), expect: Precondition::Any },
                RowWrite::create(kv("b"), "x"),
            ]),
            part(
                vec![Check::Exists(RowKey::Client(1)), Check::ProductPrice { pid: 2, price: 4.5 }],
                vec![
                    Effect::Put(RowKey::Order(3), encode_record(&order)),
                    Effect::Put(RowKey::ClientOrder(1, 3), vec![]),
                    Effect::AdjustStock { pid: 2, delta: -3 },
                    Effect::Put(RowKey::Idempotency(Shard::Odd, "key".into()), b"outcome".to_vec()),
                    Effect::Put(RowKey::IdempotencyDone(5, Shard::Odd, "key".into()), vec![]),
                ],
            ),
            part(vec![Check::Absent(RowKey::Product(2))], vec![Effect::Put(RowKey::Product(2), product(10, 1.0))]),
            Command::Resolve { id: TxnId(7), outcome: Outcome::Commit, at_ms: 0 },
            Command::Mutex {
                ops: vec![MutexOp::Request { resource: "m".into(), site: 1, clock: 1 }],
                ttl_ms: 3000,
                at_ms: 0,
            },
            Command::KeepAlive { site: 1, ttl_ms: 3000, at_ms: 0 },
            Command::EnterBarrier { name: "b".into(), participant: 1, size: 3, generation: 0 },
        ];
        for command in legitimate {
            assert_eq!(validate(&command), Ok(()), "{command:?}");
        }
    }

    #[test]
    fn a_batch_writes_only_bounded_kv_rows() {
        refused(&Command::Batch(vec![]), "at least one write");
        refused(&put(RowKey::Intent(Box::new(kv("a"))), b"x"), "only the kv table, not intents");
        refused(&put(RowKey::Txn(TxnId(1)), b"x"), "not txns");
        refused(&put(RowKey::Event(1, 0), b"x"), "not events");
        refused(&put(RowKey::Client(1), b"x"), "not clients");
        refused(&put(kv(&"k".repeat(MAX_KV_KEY_BYTES + 1)), b"x"), "kv key");
        refused(&put(kv("a"), &vec![0; MAX_KV_VALUE_BYTES + 1]), "the limit is");
        assert_eq!(validate(&put(kv(&"k".repeat(MAX_KV_KEY_BYTES)), &vec![0; MAX_KV_VALUE_BYTES])), Ok(()));
    }

    #[test]
    fn a_transaction_touches_only_portal_tables() {
        let intent = RowKey::Intent(Box::new(RowKey::Product(2)));
        refused(&part(vec![Check::Exists(intent.clone())], vec![]), "intents table");
        refused(&part(vec![], vec![Effect::Put(intent, vec![])]), "intents table");
        refused(&part(vec![], vec![Effect::Delete(RowKey::TxnDone(1, TxnId(1)))]), "txns-done table");
        refused(&part(vec![], vec![Effect::Put(kv("a"), vec![])]), "kv table");
        refused(&part(vec![], vec![Effect::Put(RowKey::Session(1), vec![])]), "sessions table");
        let prepare = Command::Prepare {
            part: TxnPart { id: TxnId(1), checks: vec![], effects: vec![Effect::Delete(RowKey::Mutex("m".into()))] },
            decision_shard: Shard::Even,
            at_ms: 0,
        };
        refused(&prepare, "locks table");
    }

    #[test]
    fn a_transaction_puts_only_sound_records() {
        refused(&part(vec![], vec![Effect::Put(RowKey::Product(2), b"garbage".to_vec())]), "invalid");
        refused(&part(vec![], vec![Effect::Put(RowKey::Client(1), vec![])]), "invalid");
        refused(&part(vec![], vec![Effect::Put(RowKey::Product(2), product(MAX_QUANTITY + 1, 1.0))]), "stock");
        refused(&part(vec![], vec![Effect::Put(RowKey::Product(2), product(1, f64::NAN))]), "price");
        refused(&part(vec![], vec![Effect::Put(RowKey::Product(2), product(1, -1.0))]), "price");
        let line = OrderLine { pid: 2, quantity: 1, price: 1.0 };
        let long = OrderRecord { cid: 1, lines: vec![line; MAX_ORDER_LINES + 1] };
        refused(&part(vec![], vec![Effect::Put(RowKey::Order(3), encode_record(&long))]), "lines");
        refused(&part(vec![], vec![Effect::Put(RowKey::ProductOrder(2, 3), b"x".to_vec())]), "no value");
        refused(&part(vec![], vec![Effect::AdjustStock { pid: 2, delta: i64::MIN }]), "exceeds");
        let key = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        refused(&part(vec![Check::Absent(RowKey::Idempotency(Shard::Even, key))], vec![]), "idempotency key");
        refused(&part(vec![Check::ProductPrice { pid: 2, price: f64::INFINITY }], vec![]), "price");
    }

    #[test]
    fn a_refusal_quotes_a_long_key_shortened() {
        let long = RowKey::Intent(Box::new(RowKey::Idempotency(Shard::Even, "k".repeat(1 << 20))));
        let reason = validate(&part(vec![Check::Exists(long)], vec![])).unwrap_err();
        assert!(reason.len() < 200 && reason.ends_with("...)"), "{reason}");
    }

    #[test]
    fn housekeeping_and_batches_of_commands_are_refused() {
        refused(&Command::PruneTxns { before_ms: 1 }, "leader itself");
        refused(&Command::PruneIdempotency { before_ms: 1 }, "leader itself");
        refused(&Command::ExpireSessions { now_ms: 1 }, "leader itself");
        refused(&Command::Many(vec![put(kv("a"), b"x")]), "one command per call");
    }

    #[test]
    fn coordination_commands_are_bounded() {
        let request = |resource: String| MutexOp::Request { resource, site: 1, clock: 1 };
        refused(&Command::Mutex { ops: vec![], ttl_ms: 1, at_ms: 0 }, "at least one message");
        let long = "m".repeat(MAX_KV_KEY_BYTES + 1);
        refused(&Command::Mutex { ops: vec![request(long.clone())], ttl_ms: 1, at_ms: 0 }, "mutex name");
        refused(&Command::Mutex { ops: vec![request("m".into())], ttl_ms: u64::MAX, at_ms: 0 }, "session");
        refused(&Command::KeepAlive { site: 1, ttl_ms: u64::MAX, at_ms: 0 }, "session");
        refused(&Command::EnterBarrier { name: long, participant: 1, size: 1, generation: 0 }, "barrier name");
        refused(&Command::EnterBarrier { name: "b".into(), participant: 1, size: 0, generation: 0 }, "participant");
    }
}
