//! What the state machine takes from callers: the tables a command may
//! touch and the bounds of every value it stores.
//!
//! One set of rules, used twice: the `Store` service refuses a command
//! that breaks them before it is proposed (`admission`), and `apply`
//! refuses it again with [`Rejection::Invalid`] whatever reached the log (a
//! client of another version, an old entry), the same on every replica,
//! writing nothing of it. The bounds are `limits`'.

use crate::command::{Check, Effect, Rejection, RowKey, RowWrite, Table, TxnPart};
use crate::limits::{
    MAX_IDEMPOTENCY_ROW_BYTES, MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES, MAX_ORDER_LINES, MAX_PRICE, MAX_QUANTITY,
};
use crate::records::shop::{decode_record, ClientRecord, OrderRecord, ProductRecord};

/// [`check_batch`] as `apply` answers it.
pub fn batch_refusal(writes: &[RowWrite]) -> Option<Rejection> {
    check_batch(writes).err().map(Rejection::Invalid)
}

/// [`check_part`] as `apply` answers it.
pub fn part_refusal(part: &TxnPart) -> Option<Rejection> {
    check_part(part).err().map(Rejection::Invalid)
}

/// The tables a transaction (a portal's call) may check and change; the
/// others are kv rows, written by batches, or the state machine's own
/// bookkeeping (transactions, intents, mutexes, sessions, barriers,
/// events), written only by their commands.
pub const TRANSACTION_TABLES: [Table; 7] = [
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

/// A batch of row writes: not empty, every write to the `kv` table, within
/// the sizes.
pub fn check_batch(writes: &[RowWrite]) -> Result<(), String> {
    if writes.is_empty() {
        return Err("a batch needs at least one write".into());
    }
    for write in writes {
        let key = write.key();
        let RowKey::Kv(name) = key else {
            return Err(format!("a batch writes only the kv table, not {} ({})", key.table().name(), shown(key)));
        };
        kv_key(name)?;
        if let RowWrite::Put { value, .. } = write {
            if value.len() > MAX_KV_VALUE_BYTES {
                return Err(format!("the value of {key} is {} bytes; the limit is {MAX_KV_VALUE_BYTES}", value.len()));
            }
        }
    }
    Ok(())
}

/// A kv key within [`MAX_KV_KEY_BYTES`].
fn kv_key(name: &str) -> Result<(), String> {
    match name.len() {
        len if len > MAX_KV_KEY_BYTES => Err(format!("a kv key is {len} bytes; the limit is {MAX_KV_KEY_BYTES}")),
        _ => Ok(()),
    }
}

/// A transaction part: only [`TRANSACTION_TABLES`], sound records,
/// bounded stock moves.
pub fn check_part(part: &TxnPart) -> Result<(), String> {
    for check in &part.checks {
        match check {
            Check::Exists(key) | Check::Absent(key) | Check::Version(key, _) => portal_row(key)?,
            Check::ProductPrice { pid, price } | Check::QuotedPrice { pid, price } => {
                check_price(*price, &format!("the price checked of product {pid}"))?
            }
            Check::NoOrdersOfClient(_) | Check::NoOrdersOfProduct(_) | Check::QuotePrice(_) => {}
        }
    }
    for (at, effect) in part.effects.iter().enumerate() {
        match effect {
            Effect::Put(key, value) => record_put(key, value)?,
            Effect::PriceOrder(oid) => priced_order(&part.effects[..at], *oid).map(drop)?,
            Effect::PriceLines { oid, pids } => {
                let order = priced_order(&part.effects[..at], *oid)?;
                if pids.is_empty() || pids.len() > MAX_ORDER_LINES {
                    return Err(format!("pricing lines of order {oid} names {} products", pids.len()));
                }
                if let Some(pid) = pids.iter().find(|pid| !order.lines.iter().any(|line| line.pid == **pid)) {
                    return Err(format!("pricing the line of product {pid} in order {oid}, which has none"));
                }
            }
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
    if !TRANSACTION_TABLES.contains(&key.table()) {
        return Err(format!("a transaction may not touch the {} table ({})", key.table().name(), shown(key)));
    }
    match key {
        RowKey::Idempotency(_, idempotency_key) | RowKey::IdempotencyDone(_, _, idempotency_key)
            if idempotency_key.len() > MAX_IDEMPOTENCY_ROW_BYTES =>
        {
            let len = idempotency_key.len();
            Err(format!("an idempotency key is {len} bytes with its method; the limit is {MAX_IDEMPOTENCY_ROW_BYTES}"))
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
fn record_put(key: &RowKey, value: &[u8]) -> Result<(), String> {
    portal_row(key)?;
    let shown = shown(key);
    if value.len() > MAX_KV_VALUE_BYTES {
        return Err(format!("the value of {shown} is {} bytes; the limit is {MAX_KV_VALUE_BYTES}", value.len()));
    }
    let invalid = |detail: String| format!("the record for {shown} is invalid: {detail}");
    match key.table() {
        Table::Clients => decode_record::<ClientRecord>(value).map(drop).map_err(invalid),
        Table::Products => decode_record::<ProductRecord>(value).map_err(&invalid).and_then(|product| {
            check_quantity(product.quantity, "its stock").map_err(&invalid)?;
            check_price(product.price, "its price").map_err(&invalid)
        }),
        Table::Orders => decode_record::<OrderRecord>(value)
            .map_err(&invalid)
            .and_then(|order| check_order(&order).map_err(&invalid)),
        Table::ClientOrders | Table::ProductOrders if !value.is_empty() => {
            Err(format!("the index row {shown} carries no value"))
        }
        _ => Ok(()),
    }
}

/// `Ok` if `earlier` effects write order `oid` as a sound record, so
/// [`Effect::PriceOrder`] can price it. (Lines of products in the other
/// shard wait for that shard's quote; `state::txn` refuses them in a
/// single-shard call.)
fn priced_order(earlier: &[Effect], oid: u64) -> Result<OrderRecord, String> {
    let written = earlier.iter().rev().find_map(|effect| match effect {
        Effect::Put(RowKey::Order(id), value) if *id == oid => Some(value),
        _ => None,
    });
    let Some(value) = written else {
        return Err(format!("pricing order {oid} needs a put of that order earlier in the same part"));
    };
    decode_record::<OrderRecord>(value).map_err(|detail| format!("order {oid} is invalid: {detail}"))
}

/// Prices one shard quoted for an order in the other (`CommitPriced`): at
/// most [`MAX_ORDER_LINES`], each a price.
pub fn check_prices(prices: &[(u64, f64)]) -> Result<(), String> {
    if prices.len() > MAX_ORDER_LINES {
        return Err(format!("{} prices quoted; an order has at most {MAX_ORDER_LINES} lines", prices.len()));
    }
    prices.iter().try_for_each(|(pid, price)| check_price(*price, &format!("the price quoted of product {pid}")))
}

/// An order's lines: at most [`MAX_ORDER_LINES`], each within the maxima.
fn check_order(order: &OrderRecord) -> Result<(), String> {
    if order.lines.len() > MAX_ORDER_LINES {
        return Err(format!("{} lines; the limit is {MAX_ORDER_LINES}", order.lines.len()));
    }
    for line in &order.lines {
        check_quantity(line.quantity, &format!("the quantity of product {}", line.pid))?;
        check_price(line.price, &format!("the price of product {}", line.pid))?;
    }
    Ok(())
}

/// A quantity of at most [`MAX_QUANTITY`] units.
fn check_quantity(quantity: u64, what: &str) -> Result<(), String> {
    match quantity {
        q if q > MAX_QUANTITY => Err(format!("{what} is {q}; the limit is {MAX_QUANTITY}")),
        _ => Ok(()),
    }
}

/// A finite price from 0 to [`MAX_PRICE`].
fn check_price(price: f64, what: &str) -> Result<(), String> {
    match (0.0..=MAX_PRICE).contains(&price) {
        true => Ok(()),
        false => Err(format!("{what} is {price}; a price is a number from 0 to {MAX_PRICE}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TxnId;
    use crate::records::shop::encode_record;

    fn put_product(price: f64, quantity: u64) -> Effect {
        let record = ProductRecord { name: "pen".into(), price, quantity, extra: "{}".into() };
        Effect::Put(RowKey::Product(1), encode_record(&record))
    }

    fn part(effects: Vec<Effect>) -> TxnPart {
        TxnPart { id: TxnId(1), checks: vec![], effects }
    }

    #[test]
    fn products_within_bounds_pass_and_others_are_refused() {
        assert_eq!(check_part(&part(vec![put_product(2.5, MAX_QUANTITY)])), Ok(()));
        for (price, quantity) in [(f64::NAN, 1), (f64::INFINITY, 1), (-1.0, 1), (MAX_PRICE * 2.0, 1), (1.0, u64::MAX)] {
            let refused = check_part(&part(vec![put_product(price, quantity)]));
            assert!(refused.is_err(), "{price} {quantity}: {refused:?}");
        }
    }

    #[test]
    fn internal_tables_and_huge_stock_moves_are_refused() {
        let intent = RowKey::Intent(Box::new(RowKey::Product(1)));
        assert!(check_part(&part(vec![Effect::Put(intent, vec![])])).is_err());
        assert!(check_part(&part(vec![Effect::Delete(RowKey::Txn(TxnId(3)))])).is_err());
        assert!(check_part(&part(vec![Effect::AdjustStock { pid: 1, delta: i64::MIN }])).is_err());
        assert!(check_part(&part(vec![Effect::AdjustStock { pid: 1, delta: -(MAX_QUANTITY as i64) }])).is_ok());
        let put = |key: RowKey, value: Vec<u8>| vec![RowWrite::upsert(key, value)];
        assert!(check_batch(&put(RowKey::Kv("k".into()), vec![0; MAX_KV_VALUE_BYTES + 1])).is_err());
        assert!(check_batch(&put(RowKey::Product(1), b"garbage".to_vec())).is_err(), "batches write kv rows only");
        assert_eq!(batch_refusal(&[]), Some(Rejection::Invalid("a batch needs at least one write".into())));
    }
}
