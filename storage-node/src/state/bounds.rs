//! What the state machine takes: the tables a caller's command may touch and
//! the bounds of every value it stores, checked inside `apply`.
//!
//! The portals and the `Store` service check the same bounds before a
//! command is proposed; these checks make `apply` safe whatever reached the
//! log (a client of another version, a hostile caller, an old entry). A
//! command that fails one is refused with [`Rejection::Invalid`], the same
//! on every replica, and nothing of it is written.

use crate::command::{Check, Effect, Rejection, RowKey, Table, TxnPart};
use crate::limits::{MAX_DATA_BYTES, MAX_KV_KEY_BYTES, MAX_KV_VALUE_BYTES, MAX_ORDER_LINES, MAX_PRICE, MAX_QUANTITY};
use crate::shop::{decode_record, ClientRecord, OrderRecord, ProductRecord};

/// Largest value of an index or idempotency row, in bytes.
const MAX_MARKER_BYTES: usize = 1024;

/// True for the tables callers' commands may read and write; the others
/// (transactions, intents, mutexes, sessions, barriers, events) are the
/// state machine's own bookkeeping, written only by their commands.
pub fn open_to_callers(table: Table) -> bool {
    match table {
        Table::Clients
        | Table::Products
        | Table::Orders
        | Table::Kv
        | Table::ClientOrders
        | Table::ProductOrders
        | Table::Idempotency
        | Table::IdempotencyDone => true,
        Table::Txns
        | Table::TxnsDone
        | Table::Intents
        | Table::Mutexes
        | Table::Barriers
        | Table::Sessions
        | Table::Events => false,
    }
}

fn invalid(reason: String) -> Rejection {
    Rejection::Invalid(reason)
}

/// A write of `value` (`None`: a deletion) at `key`, as a caller may ask it.
pub fn check_write(key: &RowKey, value: Option<&[u8]>) -> Result<(), Rejection> {
    check_key(key)?;
    match value {
        Some(value) => check_value(key, value),
        None => Ok(()),
    }
}

/// A key a caller's command may name.
fn check_key(key: &RowKey) -> Result<(), Rejection> {
    if !open_to_callers(key.table()) {
        return Err(invalid(format!("{key} is internal to the state machine")));
    }
    match key {
        RowKey::Kv(name) | RowKey::Idempotency(_, name) | RowKey::IdempotencyDone(_, _, name)
            if name.len() > MAX_KV_KEY_BYTES =>
        {
            Err(invalid(format!("a key is {} bytes long; at most {MAX_KV_KEY_BYTES} are allowed", name.len())))
        }
        _ => Ok(()),
    }
}

/// The contents of a row a caller writes: decodable and within bounds.
fn check_value(key: &RowKey, value: &[u8]) -> Result<(), Rejection> {
    let corrupt = |detail: String| invalid(format!("{key}: {detail}"));
    match key.table() {
        Table::Kv if value.len() > MAX_KV_VALUE_BYTES => {
            Err(invalid(format!("{key}: a value of {} bytes is over {MAX_KV_VALUE_BYTES}", value.len())))
        }
        Table::Products => product(&decode_record::<ProductRecord>(value).map_err(corrupt)?).map_err(corrupt),
        Table::Orders => order(&decode_record::<OrderRecord>(value).map_err(corrupt)?).map_err(corrupt),
        Table::Clients => {
            let client = decode_record::<ClientRecord>(value).map_err(corrupt)?;
            text("the client's document", &client.document).map_err(corrupt)
        }
        Table::ClientOrders | Table::ProductOrders | Table::Idempotency | Table::IdempotencyDone
            if value.len() > MAX_MARKER_BYTES =>
        {
            Err(invalid(format!("{key}: a value of {} bytes is over {MAX_MARKER_BYTES}", value.len())))
        }
        _ => Ok(()),
    }
}

/// A product within bounds.
pub fn product(product: &ProductRecord) -> Result<(), String> {
    price(product.price)?;
    quantity(product.quantity)?;
    text("the name", &product.name)?;
    text("the other fields", &product.extra)
}

/// An order within bounds.
pub fn order(order: &OrderRecord) -> Result<(), String> {
    if order.lines.len() > MAX_ORDER_LINES {
        return Err(format!("{} lines; an order has at most {MAX_ORDER_LINES}", order.lines.len()));
    }
    for line in &order.lines {
        quantity(line.quantity)?;
        price(line.price)?;
    }
    Ok(())
}

fn price(price: f64) -> Result<(), String> {
    match price.is_finite() && (0.0..=MAX_PRICE).contains(&price) {
        true => Ok(()),
        false => Err(format!("price {price} is not a number from 0 to {MAX_PRICE}")),
    }
}

fn quantity(quantity: u64) -> Result<(), String> {
    match quantity <= MAX_QUANTITY {
        true => Ok(()),
        false => Err(format!("quantity {quantity} is over the limit of {MAX_QUANTITY}")),
    }
}

fn text(what: &str, text: &str) -> Result<(), String> {
    match text.len() <= MAX_DATA_BYTES {
        true => Ok(()),
        false => Err(format!("{what} is {} bytes long; at most {MAX_DATA_BYTES} are allowed", text.len())),
    }
}

/// A transaction part as a caller may send it: known tables, values within
/// bounds, stock moves no larger than a product can hold.
pub fn check_part(part: &TxnPart) -> Result<(), Rejection> {
    for check in &part.checks {
        match check {
            Check::Exists(key) | Check::Absent(key) | Check::Version(key, _) => check_key(key)?,
            Check::ProductPrice { .. } | Check::NoOrdersOfClient(_) | Check::NoOrdersOfProduct(_) => {}
        }
    }
    for effect in &part.effects {
        match effect {
            Effect::Put(key, value) => check_write(key, Some(value))?,
            Effect::Delete(key) => check_write(key, None)?,
            Effect::AdjustStock { pid, delta } if delta.unsigned_abs() > MAX_QUANTITY => {
                return Err(invalid(format!("a stock move of {delta} on product {pid} is over {MAX_QUANTITY}")));
            }
            Effect::AdjustStock { .. } => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::TxnId;
    use crate::shop::encode_record;

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
            assert!(matches!(refused, Err(Rejection::Invalid(_))), "{price} {quantity}: {refused:?}");
        }
    }

    #[test]
    fn internal_tables_and_huge_stock_moves_are_refused() {
        let intent = RowKey::Intent(Box::new(RowKey::Product(1)));
        assert!(check_part(&part(vec![Effect::Put(intent, vec![])])).is_err());
        assert!(check_part(&part(vec![Effect::Delete(RowKey::Txn(TxnId(3)))])).is_err());
        assert!(check_part(&part(vec![Effect::AdjustStock { pid: 1, delta: i64::MIN }])).is_err());
        assert!(check_part(&part(vec![Effect::AdjustStock { pid: 1, delta: -(MAX_QUANTITY as i64) }])).is_ok());
        assert!(check_write(&RowKey::Kv("k".into()), Some(&vec![0; MAX_KV_VALUE_BYTES + 1])).is_err());
        assert!(check_write(&RowKey::Product(1), Some(b"garbage")).is_err());
    }
}
