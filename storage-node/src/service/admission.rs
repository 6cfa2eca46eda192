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
//!   [`MAX_KV_VALUE_BYTES`](crate::limits::MAX_KV_VALUE_BYTES).
//! - `Execute` / `Prepare` (portals): checks and effects on the shop tables
//!   and the portals' idempotency tables only ([`bounds::TRANSACTION_TABLES`]); a record
//!   put into `clients`, `products` or `orders` must decode as one, within
//!   the documented maxima; index rows carry no value; a stock move is at
//!   most [`MAX_QUANTITY`](crate::limits::MAX_QUANTITY) units; a price checked is a finite price.
//!   A product's record comes alone, with no bytes after it: those are
//!   the node's count of the order lines holding the product
//!   ([`ProductRow`](crate::records::shop::ProductRow)). (Only here: `apply` took such bytes before layout 4,
//!   and drops them from it on.)
//! - `Resolve`, `Prevent` (portals, shards' recovery): any.
//! - `CommitPriced` (the same): at most [`MAX_ORDER_LINES`](crate::limits::MAX_ORDER_LINES)
//!   prices, each a finite price.
//! - `Fence` (`raftshop backup`): held at most [`MAX_FENCE_HOLD`].
//! - `Mutex`, `KeepAlive`, `EnterBarrier` (coordination clients): names up
//!   to [`MAX_KV_KEY_BYTES`], sessions up to [`MAX_SESSION_TTL`], at least
//!   one message, at least one participant.
//! - `PruneTxns`, `PruneIdempotency`, `PruneWriters`, `ExpireSessions`,
//!   `UseLayout`: proposed by a shard's leader to itself, never sent;
//!   refused.
//! - `Many`: how a node batches callers' commands into one entry; a caller
//!   sends one command per call, so it is refused.
//! - `Once` (every `ShardClient` write): any command above but `Once`
//!   itself, with a watermark no higher than its own number. An `Execute`
//!   is taken only inside one: the shard keeps no record of it (layout 3,
//!   `crate::state::layout`), so only the write session makes a re-sent
//!   one apply once.
//!
//! The rules are pure and cheap (no state is read). The rules on rows and
//! records are [`crate::state::bounds`]'s, which `apply` enforces again;
//! the state machine still decides everything that depends on the state,
//! deterministically.

use crate::command::{Command, Effect, MutexOp, RowKey, TxnPart};
use crate::limits::{MAX_FENCE_HOLD, MAX_KV_KEY_BYTES, MAX_SESSION_TTL};
use crate::records::shop::ProductRow;
use crate::state::bounds;

/// `Ok` if a caller may send `command`; else why not, as a sentence.
pub fn validate(command: &Command) -> Result<(), String> {
    validate_in(command, false)
}

/// [`validate`] for a command sent by itself or, if `in_session`, inside
/// a `Once`.
fn validate_in(command: &Command, in_session: bool) -> Result<(), String> {
    match command {
        Command::Execute { .. } if !in_session => {
            Err("a single-shard transaction (Execute) is taken only inside a write session (Once), which applies \
             it at most once however often it is sent; the shard keeps no record of it"
                .into())
        }
        Command::Batch(writes) => bounds::check_batch(writes),
        Command::Execute { part, .. } | Command::Prepare { part, .. } => {
            bounds::check_part(part)?;
            products_alone(part)
        }
        Command::Resolve { .. } | Command::Prevent { .. } => Ok(()),
        Command::CommitPriced { prices, .. } => bounds::check_prices(prices),
        Command::Fence { hold_ms, .. } => match u128::from(*hold_ms) > MAX_FENCE_HOLD.as_millis() {
            true => Err(format!("a fence of {hold_ms} ms is longer than the limit of {MAX_FENCE_HOLD:?}")),
            false => Ok(()),
        },
        Command::Mutex { ops, ttl_ms, .. } => validate_mutex(ops, *ttl_ms),
        Command::KeepAlive { ttl_ms, .. } => validate_ttl(*ttl_ms),
        Command::EnterBarrier { name, size, .. } => {
            validate_name("barrier", name)?;
            match size {
                0 => Err("a barrier needs at least one participant".into()),
                _ => Ok(()),
            }
        }
        Command::PruneTxns { .. }
        | Command::PruneIdempotency { .. }
        | Command::PruneWriters { .. }
        | Command::ExpireSessions { .. }
        | Command::UseLayout { .. } => {
            Err(format!("\"{command}\" is proposed by a shard's leader itself and is not accepted from callers"))
        }
        Command::Many(_) => Err("a batch of commands (Many) is built by the node; send one command per call".into()),
        Command::Once { seq, answered_below, command, .. } => {
            if answered_below > seq {
                return Err(format!(
                    "write {seq} says every write below {answered_below} was answered, which would include itself"
                ));
            }
            match command.as_ref() {
                Command::Once { .. } => Err("a write sent once (Once) cannot contain another".into()),
                inner => validate_in(inner, true),
            }
        }
    }
}

/// `Ok` if every product record `part` puts is a record alone (see the
/// module's notes); `bounds` made sure each decodes.
fn products_alone(part: &TxnPart) -> Result<(), String> {
    for effect in &part.effects {
        let Effect::Put(key @ RowKey::Product(_), value) = effect else { continue };
        let (_, after) = ProductRow::split(value)?;
        if !after.is_empty() {
            return Err(format!(
                "the record for {key} has {} bytes after it; send the product's record alone (the node keeps the \
                 count of its order lines there)",
                after.len()
            ));
        }
    }
    Ok(())
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
    use crate::command::{Check, Effect, Outcome, Precondition, RowKey, RowWrite, TxnId, TxnPart};
    use crate::limits::{MAX_IDEMPOTENCY_ROW_BYTES, MAX_KV_VALUE_BYTES, MAX_ORDER_LINES, MAX_QUANTITY};
    use crate::records::shop::{encode_record, OrderLine, OrderRecord, ProductRecord};
    use crate::types::Shard;

    fn kv(name: &str) -> RowKey {
        RowKey::Kv(name.into())
    }

    fn put(key: RowKey, value: &[u8]) -> Command {
        Command::single(RowWrite::upsert(key, value.to_vec()))
    }

    fn once(seq: u64, answered_below: u64, command: Command) -> Command {
        Command::Once { writer: 1, seq, answered_below, at_ms: 0, command: Box::new(command) }
    }

    /// A single-shard transaction, sent as a portal sends it.
    fn part(checks: Vec<Check>, effects: Vec<Effect>) -> Command {
        once(1, 1, Command::Execute { part: TxnPart { id: TxnId(7), checks, effects }, at_ms: 0 })
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
    fn a_write_sent_once_is_held_to_the_rules_of_what_it_carries() {
        assert_eq!(validate(&once(3, 3, put(kv("a"), b"v"))), Ok(()));
        refused(&once(3, 3, put(RowKey::Txn(TxnId(1)), b"x")), "not txns");
        refused(&once(3, 3, Command::Many(vec![])), "send one command per call");
        refused(&once(3, 3, Command::PruneWriters { before_ms: 0 }), "proposed by a shard's leader");
        refused(&once(3, 3, once(4, 4, put(kv("a"), b"v"))), "cannot contain another");
        refused(&once(3, 4, put(kv("a"), b"v")), "would include itself");
        refused(&Command::PruneWriters { before_ms: 0 }, "proposed by a shard's leader");
        let execute = Command::Execute { part: TxnPart { id: TxnId(7), checks: vec![], effects: vec![] }, at_ms: 0 };
        assert_eq!(validate(&once(3, 3, execute.clone())), Ok(()));
        refused(&execute, "only inside a write session");
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
        let mut counted = product(1, 1.0);
        counted.extend_from_slice(&7u64.to_le_bytes());
        refused(&part(vec![], vec![Effect::Put(RowKey::Product(2), counted)]), "8 bytes after it");
        let line = OrderLine { pid: 2, quantity: 1, price: 1.0 };
        let long = OrderRecord { cid: 1, lines: vec![line; MAX_ORDER_LINES + 1] };
        refused(&part(vec![], vec![Effect::Put(RowKey::Order(3), encode_record(&long))]), "lines");
        refused(&part(vec![], vec![Effect::Put(RowKey::ProductOrder(2, 3), b"x".to_vec())]), "no value");
        refused(&part(vec![], vec![Effect::AdjustStock { pid: 2, delta: i64::MIN }]), "exceeds");
        let key = "k".repeat(MAX_IDEMPOTENCY_ROW_BYTES + 1);
        refused(&part(vec![Check::Absent(RowKey::Idempotency(Shard::Even, key))], vec![]), "idempotency key");
        refused(&part(vec![Check::ProductPrice { pid: 2, price: f64::INFINITY }], vec![]), "price");
        refused(&part(vec![Check::QuotedPrice { pid: 2, price: -1.0 }], vec![]), "price");
        refused(&Command::CommitPriced { id: TxnId(1), prices: vec![(2, f64::NAN)], at_ms: 0 }, "price");
        let many = vec![(2, 1.0); MAX_ORDER_LINES + 1];
        refused(&Command::CommitPriced { id: TxnId(1), prices: many, at_ms: 0 }, "at most");
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
        refused(&Command::UseLayout { layout: 2 }, "leader itself");
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
