//! The OrderPortal's writes and RetrieveOrder, as [`Shop`] calls.
//!
//! An order call touches the order's shard (its row, decided there), the
//! client's (the client must exist; the client's order index) and each
//! product's (price, stock, the product's order index): one shard or both.
//! Each call reads what it needs linearizably (a new order whose products
//! all live in its shard reads nothing: that shard prices it), plans the
//! checks and effects per shard, and runs the plan with the order's shard
//! as the decision shard (see `txn`); a plan built on data that moved since
//! is re-read and re-planned until the deadline. An order has at most `MAX_ORDER_LINES`
//! lines, so a RetrieveOrder reply is bounded too.

use std::collections::BTreeMap;

use storage_node::command::{Check, Effect, RowKey};
use storage_node::limits::MAX_ORDER_LINES;
use storage_node::records::shop::{encode_record, OrderLine, OrderRecord};
use storage_node::Shard;
use tokio::time::Instant;

use crate::idempotency::{Claim, Fingerprint, IdempotencyKey};
use crate::request;
use crate::shop::{ItemRequest, OrderLineView, OrderView, Shop, ShopError};
use crate::txn::Plan;

impl Shop {
    /// Creates order `oid` for client `cid`: the client must exist, the OID
    /// be new, every product exist with enough stock; repeated PIDs are
    /// summed; each line copies the product's current price. No price is
    /// read first: the order's shard prices the lines of its own products as
    /// it writes the order (`Effect::PriceOrder`), and the other shard's
    /// prepare quotes the prices of its products (`Check::QuotePrice`),
    /// which the order's shard fills in as it commits.
    pub async fn create_order(
        &self,
        oid: u64,
        cid: u64,
        items: Vec<ItemRequest>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let wanted = request::order_lines(&items)?;
        if wanted.is_empty() {
            return Err(ShopError::BadRequest("an order needs at least one product".into()));
        }
        if let Some(item) = items.iter().find(|i| i.quantity == 0) {
            return Err(ShopError::BadRequest(format!("the quantity of product {} must be above 0", item.pid)));
        }
        let claim = idempotency.map(|k| Claim::new("CreateOrder", k, order_fingerprint(oid, cid, &wanted)));
        let (give_up, decision) = (Instant::now() + self.deadline, Shard::of_id(oid));
        if self.recorded(claim.as_ref(), decision, give_up).await? {
            return Ok(());
        }
        let wanted = &wanted;
        self.replan(
            decision,
            claim.as_ref(),
            give_up,
            move || async move { plan_new_order(oid, cid, wanted).map(Some) },
        )
        .await
    }

    /// The order `oid` with product names and total, `None` if absent.
    pub async fn get_order(&self, oid: u64) -> Result<Option<OrderView>, ShopError> {
        let give_up = Instant::now() + self.deadline;
        let Some((order, _)) = self.read_order(oid, give_up).await? else {
            return Ok(None);
        };
        let names = self.names(order.lines.iter().map(|l| l.pid), give_up).await?;
        Ok(Some(view(oid, order, &names)))
    }

    /// Sets new absolute quantities on order `oid` of client `cid` (a PID
    /// listed twice counts the sum, as in create): 0 removes a line, lines
    /// not listed stay, a new line takes the product's current
    /// price, and stock moves by old - new without ever going negative.
    pub async fn update_order(
        &self,
        oid: u64,
        cid: u64,
        items: Vec<ItemRequest>,
        idempotency: Option<&IdempotencyKey>,
    ) -> Result<(), ShopError> {
        let requested = request::order_lines(&items)?;
        let claim = idempotency.map(|k| Claim::new("UpdateOrder", k, order_fingerprint(oid, cid, &requested)));
        let (give_up, decision) = (Instant::now() + self.deadline, Shard::of_id(oid));
        if self.recorded(claim.as_ref(), decision, give_up).await? {
            return Ok(());
        }
        let requested = &requested;
        self.replan(decision, claim.as_ref(), give_up, move || async move {
            let (order, version) = self.owned_order(oid, cid, give_up).await?;
            // `None` when nothing changes, so nothing is recorded either.
            plan_update(oid, &order, version, requested)
        })
        .await
    }

    /// Deletes order `oid`, restoring its stock (404 if absent).
    pub async fn delete_order(&self, oid: u64, idempotency: Option<&IdempotencyKey>) -> Result<(), ShopError> {
        let claim = idempotency.map(|k| Claim::new("DeleteOrder", k, Fingerprint::new().number(oid)));
        let (give_up, decision) = (Instant::now() + self.deadline, Shard::of_id(oid));
        if self.recorded(claim.as_ref(), decision, give_up).await? {
            return Ok(());
        }
        self.replan(decision, claim.as_ref(), give_up, move || async move {
            let Some((order, version)) = self.read_order(oid, give_up).await? else {
                return Err(ShopError::NotFound(format!("order {oid} does not exist")));
            };
            let mut plan = Plan::default();
            plan.check(Shard::of_id(oid), Check::Version(RowKey::Order(oid), version))
                .effect(Shard::of_id(oid), Effect::Delete(RowKey::Order(oid)))
                .effect(Shard::of_id(order.cid), Effect::Delete(RowKey::ClientOrder(order.cid, oid)));
            for line in &order.lines {
                let shard = Shard::of_id(line.pid);
                plan.effect(shard, Effect::AdjustStock { pid: line.pid, delta: signed(line.quantity)? })
                    .effect(shard, Effect::Delete(RowKey::ProductOrder(line.pid, oid)));
            }
            Ok(Some(plan))
        })
        .await
    }
}

/// The plan of CreateOrder of `oid` for client `cid` with `wanted` (units
/// per product, summed), the order's shard deciding: the client must exist
/// and the OID be new; each product gives its stock and counts the line;
/// the order is written with prices 0, which its shard fills in for its
/// own products and the other shard's prepare quotes for the rest.
pub fn plan_new_order(oid: u64, cid: u64, wanted: &BTreeMap<u64, u64>) -> Result<Plan, ShopError> {
    let decision = Shard::of_id(oid);
    let lines: Vec<OrderLine> =
        wanted.iter().map(|(pid, quantity)| OrderLine { pid: *pid, quantity: *quantity, price: 0.0 }).collect();
    let mut plan = Plan::default();
    plan.check(Shard::of_id(cid), Check::Exists(RowKey::Client(cid)))
        .effect(Shard::of_id(cid), Effect::Put(RowKey::ClientOrder(cid, oid), Vec::new()))
        .check(decision, Check::Absent(RowKey::Order(oid)))
        .effect(decision, Effect::Put(RowKey::Order(oid), encode_record(&OrderRecord { cid, lines })))
        .effect(decision, Effect::PriceOrder(oid));
    for (pid, quantity) in wanted {
        let shard = Shard::of_id(*pid);
        if shard != decision {
            plan.check(shard, Check::QuotePrice(*pid));
        }
        plan.effect(shard, Effect::AdjustStock { pid: *pid, delta: -signed(*quantity)? })
            .effect(shard, Effect::Put(RowKey::ProductOrder(*pid, oid), Vec::new()));
    }
    Ok(plan)
}

/// The fingerprint of an order write: its IDs and its summed lines.
pub fn order_fingerprint(oid: u64, cid: u64, lines: &BTreeMap<u64, u64>) -> Fingerprint {
    lines.iter().fold(Fingerprint::new().number(oid).number(cid), |f, (pid, quantity)| f.number(*pid).number(*quantity))
}

/// The plan of an order update, `None` if nothing changes. Lines added take
/// their products' current prices as the shards prepare: the order's shard
/// prices those of its own products (`Effect::PriceLines`), the other
/// shard quotes the rest (`Check::QuotePrice`); other lines keep theirs.
fn plan_update(
    oid: u64,
    order: &OrderRecord,
    version: u64,
    requested: &BTreeMap<u64, u64>,
) -> Result<Option<Plan>, ShopError> {
    let decision = Shard::of_id(oid);
    let mut added = Vec::new();
    let mut lines: BTreeMap<u64, OrderLine> = order.lines.iter().map(|l| (l.pid, l.clone())).collect();
    let mut plan = Plan::default();
    let mut changed = false;
    for (&pid, &quantity) in requested {
        let old = order.quantity_of(pid);
        if old == quantity {
            continue;
        }
        changed = true;
        let shard = Shard::of_id(pid);
        let delta = signed(old)? - signed(quantity)?;
        match (old, quantity) {
            (0, _) => {
                if shard != decision {
                    plan.check(shard, Check::QuotePrice(pid));
                }
                plan.effect(shard, Effect::Put(RowKey::ProductOrder(pid, oid), Vec::new()));
                lines.insert(pid, OrderLine { pid, quantity, price: 0.0 });
                added.push(pid);
            }
            (_, 0) => {
                plan.effect(shard, Effect::Delete(RowKey::ProductOrder(pid, oid)));
                lines.remove(&pid);
            }
            _ => lines.get_mut(&pid).expect("an existing line").quantity = quantity,
        }
        plan.effect(shard, Effect::AdjustStock { pid, delta });
    }
    if !changed {
        return Ok(None);
    }
    if lines.len() > MAX_ORDER_LINES {
        return Err(ShopError::BadRequest(format!(
            "order {oid} would have {} products; an order has at most {MAX_ORDER_LINES}",
            lines.len()
        )));
    }
    let updated = OrderRecord { cid: order.cid, lines: lines.into_values().collect() };
    plan.check(decision, Check::Version(RowKey::Order(oid), version))
        .effect(decision, Effect::Put(RowKey::Order(oid), encode_record(&updated)));
    if !added.is_empty() {
        plan.effect(decision, Effect::PriceLines { oid, pids: added });
    }
    Ok(Some(plan))
}

/// A quantity as a stock delta.
fn signed(quantity: u64) -> Result<i64, ShopError> {
    i64::try_from(quantity).map_err(|_| ShopError::BadRequest(format!("quantity {quantity} is too large")))
}

/// An order with product names and its total.
pub(crate) fn view(oid: u64, order: OrderRecord, names: &BTreeMap<u64, String>) -> OrderView {
    let lines: Vec<OrderLineView> = order
        .lines
        .into_iter()
        .map(|l| OrderLineView {
            pid: l.pid,
            name: names.get(&l.pid).cloned().unwrap_or_default(),
            quantity: l.quantity,
            price: l.price,
        })
        .collect();
    let total = lines.iter().map(|l| l.quantity as f64 * l.price).sum();
    OrderView { oid, cid: order.cid, lines, total }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_may_not_grow_an_order_past_its_lines() {
        let lines = (1..=MAX_ORDER_LINES as u64).map(|pid| OrderLine { pid, quantity: 1, price: 1.0 }).collect();
        let order = OrderRecord { cid: 2, lines };
        let extra = MAX_ORDER_LINES as u64 + 1;
        let requested = BTreeMap::from([(extra, 1)]);
        let why = plan_update(10, &order, 1, &requested).unwrap_err();
        assert!(why.to_string().contains("at most 100"), "{why}");
        let swap = BTreeMap::from([(1, 0), (extra, 1)]);
        assert!(plan_update(10, &order, 1, &swap).unwrap().is_some(), "one out, one in");
    }

    #[test]
    fn an_update_prices_only_the_lines_it_adds_each_in_its_products_shard() {
        let order = OrderRecord { cid: 2, lines: vec![OrderLine { pid: 2, quantity: 1, price: 1.5 }] };
        let requested = BTreeMap::from([(2, 3), (4, 1), (5, 1)]);
        let plan = plan_update(10, &order, 7, &requested).unwrap().expect("a change");
        let (even_checks, even_effects) = plan.part(Shard::Even).expect("the order's shard");
        assert!(even_effects.contains(&Effect::PriceLines { oid: 10, pids: vec![4, 5] }), "{even_effects:?}");
        assert!(!even_checks.iter().any(|c| matches!(c, Check::QuotePrice(_))), "{even_checks:?}");
        let (odd_checks, _) = plan.part(Shard::Odd).expect("product 5's shard");
        assert_eq!(odd_checks, [Check::QuotePrice(5)]);
        let unchanged = plan_update(10, &order, 7, &BTreeMap::from([(2, 2)])).unwrap().expect("a change");
        let (_, effects) = unchanged.part(Shard::Even).unwrap();
        assert!(!effects.iter().any(|e| matches!(e, Effect::PriceLines { .. })), "no line added: {effects:?}");
    }

    #[test]
    fn order_fingerprints_follow_the_lines() {
        let a = order_fingerprint(10, 2, &BTreeMap::from([(1, 3)]));
        assert_eq!(a, order_fingerprint(10, 2, &BTreeMap::from([(1, 3)])));
        assert_ne!(a, order_fingerprint(10, 2, &BTreeMap::from([(1, 4)])));
        assert_ne!(a, order_fingerprint(12, 2, &BTreeMap::from([(1, 3)])));
    }
}
