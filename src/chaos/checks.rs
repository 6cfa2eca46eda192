//! What must hold after a chaos run, besides linearizability:
//!
//! - no lost acknowledged write: a final linearizable read of every key
//!   returns the last acknowledged write or a value written later (by a
//!   write whose outcome was unknown or that overlapped it);
//! - replicas converge: the members of each shard reach the same applied
//!   index with the same state digest;
//! - the shop's invariants: stock never below zero (it is unsigned, and
//!   every change is checked), stock + ordered quantity per product equals
//!   the initial stock (for the products whose stock no price change
//!   resets), no order without its client, the client index lists
//!   exactly the live orders, and no transaction intent is left;
//! - no lost acknowledged order: every order the clients were told was
//!   created is there with its client and lines unless a delete of it was
//!   sent, and no order whose delete was acknowledged, or whose create was
//!   refused, is there;
//! - prices: every order line holds a price its product had at some moment
//!   while the order was being made (prices change during a run, see
//!   [`PriceHistory`]), and every product ends at the last price set (or
//!   the one before, if the last change went unanswered).

use std::collections::BTreeMap;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::records::shop::{decode_record, OrderRecord, ProductRow};
use storage_node::{Query, QueryResult, Row, RowKey, Shard, Table};
use tokio::time::Instant;

use super::history::{OpKind, Operation, Outcome};
use super::workload::{CallWindow, OrderLedger, PriceChange};
use crate::local_cluster::LocalCluster;

/// How long a check may wait for the cluster to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A key whose final value is older than its last acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LostWrite {
    /// The key.
    pub key: String,
    /// The last acknowledged value.
    pub acknowledged: Option<String>,
    /// What the final read returned.
    pub found: Option<String>,
}

/// Final values per key, compared with the history's acknowledged writes.
pub fn lost_writes(history: &[Operation], finals: &BTreeMap<String, Option<String>>) -> Vec<LostWrite> {
    let mut lost = Vec::new();
    for (key, found) in finals {
        let writes: Vec<&Operation> =
            history.iter().filter(|op| &op.key == key && !matches!(op.kind, OpKind::Read)).collect();
        let Some(last) = writes.iter().filter(|op| op.outcome == Outcome::Ok).max_by_key(|op| op.returned_at) else {
            continue;
        };
        let acknowledged = value_of(last);
        if *found == acknowledged {
            continue;
        }
        // A different final value is fine if its write may have happened
        // after the last acknowledged one: it was not acknowledged before
        // that one was called.
        let last_called = last.called_at;
        let later = writes.iter().any(|op| {
            value_of(op) == *found && op.outcome != Outcome::Failed && op.returned_at.is_none_or(|r| r > last_called)
        });
        if !later {
            lost.push(LostWrite { key: key.clone(), acknowledged, found: found.clone() });
        }
    }
    lost
}

fn value_of(op: &Operation) -> Option<String> {
    match &op.kind {
        OpKind::Write(value) => Some(value.clone()),
        _ => None,
    }
}

/// Reads every key linearizably.
pub async fn final_values(
    cluster: &ClusterClient,
    keys: &[String],
) -> Result<BTreeMap<String, Option<String>>, String> {
    let mut finals = BTreeMap::new();
    for key in keys {
        let row = cluster.get(&RowKey::Kv(key.clone()), SETTLE_TIMEOUT).await.map_err(|e| e.to_string())?;
        finals.insert(key.clone(), row.map(|r| String::from_utf8_lossy(&r.value).into_owned()));
    }
    Ok(finals)
}

/// Waits until each shard's members agree on applied index and digest;
/// returns the shards that did not (with what each member reported).
pub async fn divergence(cluster: &LocalCluster) -> Vec<String> {
    let mut diverged = Vec::new();
    for shard in Shard::ALL {
        let client = cluster.shard_client(shard);
        let give_up = tokio::time::Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for id in cluster.members(shard) {
                if let Ok(s) = client.status(id, Duration::from_secs(1)).await {
                    seen.push((id, s.applied_index, s.state_digest));
                }
            }
            let agree = seen.len() == 3 && seen.iter().all(|s| (s.1, s.2) == (seen[0].1, seen[0].2));
            if agree {
                break;
            }
            if tokio::time::Instant::now() >= give_up {
                diverged.push(format!("shard {shard}: {seen:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    diverged
}

/// Every row of `table` in both shards.
pub async fn scan_all(cluster: &ClusterClient, table: Table) -> Result<Vec<(RowKey, Row)>, String> {
    let mut rows = Vec::new();
    for shard in Shard::ALL {
        let mut after = None;
        loop {
            let query = Query::Scan { table, after: after.clone(), limit: 1000 };
            let page = match cluster.shard(shard).read(&query, SETTLE_TIMEOUT).await.map_err(|e| e.to_string())? {
                QueryResult::Rows(page) => page,
                other => return Err(format!("a scan answered {other:?}")),
            };
            // A page ends at a row limit or a byte budget; an empty one
            // means the table ended.
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            rows.extend(page);
        }
    }
    Ok(rows)
}

/// Violations of the shop's invariants, in words; empty if all hold.
/// Waits (up to the settle timeout) for abandoned transactions to be
/// settled first.
pub async fn shop_invariants(
    cluster: &ClusterClient,
    initial_stock: &BTreeMap<u64, u64>,
    ledger: &OrderLedger,
    mut prices: PriceHistory,
) -> Result<Vec<String>, String> {
    let give_up = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    let mut broken = Vec::new();
    loop {
        let intents = scan_all(cluster, Table::Intents).await?;
        if intents.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= give_up {
            broken.push(format!("{} intents still locked, e.g. {}", intents.len(), intents[0].0));
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let clients: Vec<u64> = scan_all(cluster, Table::Clients)
        .await?
        .into_iter()
        .filter_map(|(k, _)| if let RowKey::Client(id) = k { Some(id) } else { None })
        .collect();
    // Per product: units ordered, and orders with a line of it.
    let (mut ordered, mut lines): (BTreeMap<u64, u64>, BTreeMap<u64, u64>) = Default::default();
    let orders = scan_all(cluster, Table::Orders).await?;
    let mut found = BTreeMap::new();
    for (key, row) in &orders {
        let order: OrderRecord = decode_record(&row.value)?;
        if !clients.contains(&order.cid) {
            broken.push(format!("{key} belongs to client {}, who does not exist", order.cid));
        }
        for line in &order.lines {
            *ordered.entry(line.pid).or_default() += line.quantity;
            *lines.entry(line.pid).or_default() += 1;
        }
        if let RowKey::Order(oid) = key {
            found.insert(*oid, order);
        }
    }
    broken.extend(ledger_violations(ledger, &found));
    // A product's order index: rows of layouts 1 to 3, then a count in
    // the product's row.
    let mut indexed: BTreeMap<u64, u64> = BTreeMap::new();
    for (key, _) in scan_all(cluster, Table::ProductOrders).await? {
        if let RowKey::ProductOrder(pid, _) = key {
            *indexed.entry(pid).or_default() += 1;
        }
    }
    let mut off_price = Vec::new();
    for (key, row) in scan_all(cluster, Table::Products).await? {
        let RowKey::Product(pid) = key else { continue };
        let ProductRow { record: product, orders: counted } = ProductRow::decode(&row.value)?;
        if !prices.possible_last(pid, product.price) {
            off_price.push(format!("product {pid} at {}", product.price));
        }
        let held = ordered.get(&pid).copied().unwrap_or_default();
        if let Some(initial) = initial_stock.get(&pid) {
            if product.quantity + held != *initial {
                broken.push(format!("product {pid}: stock {} + ordered {held} != initial {initial}", product.quantity));
            }
        }
        let index = counted + indexed.get(&pid).copied().unwrap_or_default();
        let holding = lines.get(&pid).copied().unwrap_or_default();
        if index != holding {
            broken.push(format!("product {pid}'s order index holds {index} lines, but {holding} orders have one"));
        }
    }
    if let Some(example) = off_price.first() {
        broken.push(format!("{} products do not hold the last price set, e.g. {example}", off_price.len()));
    }
    // Whichever shard priced a line (its own, or the other's quote through
    // the commit or a recovery), never the 0 an order is written with, nor
    // a price from before or after the order: not one set after it was
    // answered, nor one older than a price another order (answered before
    // it began) or the price client saw in place.
    for (oid, order) in &found {
        if let Some(answered) = ledger.made.get(oid).and_then(|window| window.answered) {
            order.lines.iter().for_each(|line| prices.learn(line.pid, line.price, answered));
        }
    }
    let mispriced: Vec<String> = found
        .iter()
        .flat_map(|(oid, order)| order.lines.iter().map(move |line| (oid, line)))
        .filter(|(oid, line)| !prices.possible(line.pid, line.price, ledger.made.get(oid)))
        .map(|(oid, line)| format!("order {oid}'s product {} at {}", line.pid, line.price))
        .collect();
    if let Some(example) = mispriced.first() {
        broken.push(format!(
            "{} order lines hold a price their product did not have while the order was made, e.g. {example}",
            mispriced.len()
        ));
    }
    let index = scan_all(cluster, Table::ClientOrders).await?.len();
    if index != orders.len() {
        broken.push(format!("the client index lists {index} orders, but {} exist", orders.len()));
    }
    Ok(broken)
}

/// The prices each product had during a run, in the order they were set:
/// the seeded one, then each change with when its call was being made.
/// Changes come from one client, one call at a time, so each starts after
/// the one before was answered, and once a price is in place no earlier
/// one comes back.
#[derive(Clone, Debug, Default)]
pub struct PriceHistory {
    /// Per product, its prices in the order set.
    by_product: BTreeMap<u64, Vec<SetPrice>>,
}

/// One price in a product's history.
#[derive(Clone, Debug)]
struct SetPrice {
    price: f64,
    /// When it was set; `None` if seeded before the run.
    set: Option<CallWindow>,
    /// The earliest moment it is known to have been in place: its call's
    /// answer, or the answer of an order that holds it ([`PriceHistory::learn`]).
    in_place_by: Option<Instant>,
}

impl PriceHistory {
    /// The history of products seeded at `seeded` prices and then changed
    /// by `changes`, in the order they were sent.
    pub fn new(seeded: BTreeMap<u64, f64>, changes: &[PriceChange]) -> Self {
        let mut by_product: BTreeMap<u64, Vec<SetPrice>> = seeded
            .into_iter()
            .map(|(pid, price)| (pid, vec![SetPrice { price, set: None, in_place_by: None }]))
            .collect();
        for change in changes {
            let set = SetPrice { price: change.price, set: Some(change.call), in_place_by: change.call.answered };
            by_product.entry(change.pid).or_default().push(set);
        }
        PriceHistory { by_product }
    }

    /// Learns from an order answered at `answered` with a line of product
    /// `pid` at `price`: that price was in place by then, so an order begun
    /// later cannot hold an earlier one. (A price the history does not
    /// know teaches nothing; [`PriceHistory::possible`] refuses it.)
    pub fn learn(&mut self, pid: u64, price: f64, answered: Instant) {
        let Some(set) = self.by_product.get_mut(&pid).and_then(|prices| prices.iter_mut().find(|p| p.price == price))
        else {
            return;
        };
        set.in_place_by = Some(set.in_place_by.map_or(answered, |known| known.min(answered)));
    }

    /// Whether product `pid` may have been at `price` at some moment of a
    /// call made within `window` (`None`: at any time): the price was set
    /// no later than the call's end, and no later price was known to be in
    /// place before the call began.
    pub fn possible(&self, pid: u64, price: f64, window: Option<&CallWindow>) -> bool {
        let Some(prices) = self.by_product.get(&pid) else { return false };
        let set_by_end = |set: &SetPrice| match (set.set, window.and_then(|w| w.answered)) {
            (Some(call), Some(end)) => call.sent <= end,
            _ => true,
        };
        let in_place_before_start = |later: &SetPrice| match (later.in_place_by, window) {
            (Some(in_place), Some(window)) => in_place < window.sent,
            _ => false,
        };
        prices
            .iter()
            .enumerate()
            .any(|(i, set)| set.price == price && set_by_end(set) && !prices[i + 1..].iter().any(in_place_before_start))
    }

    /// Whether product `pid` may end the run at `price`: the last price
    /// set, or the one before if the last call went unanswered.
    pub fn possible_last(&self, pid: u64, price: f64) -> bool {
        let Some(prices) = self.by_product.get(&pid) else { return false };
        let mut latest = prices.iter().rev();
        match latest.next() {
            Some(last) if last.price == price => true,
            Some(SetPrice { set: Some(CallWindow { answered: None, .. }), .. }) => {
                latest.next().is_some_and(|before| before.price == price)
            }
            _ => false,
        }
    }
}

/// The ways the final orders (`found`, by OID) disagree with what their
/// clients were told, a line per kind with a few examples.
fn ledger_violations(ledger: &OrderLedger, found: &BTreeMap<u64, OrderRecord>) -> Vec<String> {
    let (mut missing, mut changed) = (Vec::new(), Vec::new());
    for (oid, cid, units) in &ledger.kept {
        match found.get(oid) {
            None => missing.push(*oid),
            Some(order) => {
                let mut held = BTreeMap::new();
                for line in &order.lines {
                    *held.entry(line.pid).or_insert(0) += line.quantity;
                }
                if order.cid != *cid || held != *units {
                    changed.push(*oid);
                }
            }
        }
    }
    missing.extend(&ledger.lost);
    let present: Vec<u64> = ledger.absent.iter().copied().filter(|oid| found.contains_key(oid)).collect();
    let line = |oids: &[u64], what: &str| {
        let examples: Vec<String> = oids.iter().take(3).map(u64::to_string).collect();
        format!("{} {what}, e.g. order {}", oids.len(), examples.join(", "))
    };
    let mut broken = Vec::new();
    if !missing.is_empty() {
        broken.push(line(&missing, "acknowledged orders are missing"));
    }
    if !changed.is_empty() {
        broken.push(line(&changed, "acknowledged orders hold other lines or another client"));
    }
    if !present.is_empty() {
        broken.push(line(&present, "orders refused, or deleted with an acknowledgement, exist"));
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finals(key: &str, value: Option<&str>) -> BTreeMap<String, Option<String>> {
        BTreeMap::from([(key.to_owned(), value.map(str::to_owned))])
    }

    #[test]
    fn the_last_acknowledged_value_is_not_lost() {
        let history = vec![Operation::write(1, "k", "a", 0, 10), Operation::write(1, "k", "b", 20, 30)];
        assert!(lost_writes(&history, &finals("k", Some("b"))).is_empty());
        let lost = lost_writes(&history, &finals("k", Some("a")));
        assert_eq!(lost, vec![LostWrite { key: "k".into(), acknowledged: Some("b".into()), found: Some("a".into()) }]);
        assert_eq!(lost_writes(&history, &finals("k", None)).len(), 1, "vanished");
    }

    #[test]
    fn a_later_unknown_write_may_win() {
        let history = vec![Operation::write(1, "k", "a", 0, 10), Operation::write(2, "k", "x", 5, 6).unknown()];
        assert!(lost_writes(&history, &finals("k", Some("x"))).is_empty());
        let failed = vec![Operation::write(1, "k", "a", 0, 10), Operation::write(2, "k", "x", 5, 6).failed()];
        assert_eq!(lost_writes(&failed, &finals("k", Some("x"))).len(), 1, "a failed write cannot be the final value");
    }

    fn order(cid: u64, lines: &[(u64, u64)]) -> OrderRecord {
        let lines = lines
            .iter()
            .map(|(pid, quantity)| storage_node::records::shop::OrderLine {
                pid: *pid,
                quantity: *quantity,
                price: 1.5,
            })
            .collect();
        OrderRecord { cid, lines }
    }

    #[test]
    fn orders_are_checked_against_what_their_clients_were_told() {
        let ledger = OrderLedger {
            kept: vec![(10, 2, BTreeMap::from([(1, 3)])), (11, 3, BTreeMap::from([(1, 1), (2, 2)]))],
            absent: vec![12, 13],
            lost: vec![],
            made: BTreeMap::new(),
        };
        let mut found = BTreeMap::from([(10, order(2, &[(1, 3)])), (11, order(3, &[(1, 1), (2, 2)]))]);
        assert!(ledger_violations(&ledger, &found).is_empty(), "the state agrees");

        found.insert(12, order(2, &[(1, 1)]));
        found.insert(11, order(3, &[(1, 1)]));
        found.remove(&10);
        let broken = ledger_violations(&ledger, &found);
        assert_eq!(broken.len(), 3, "{broken:?}");
        assert!(broken[0].starts_with("1 acknowledged orders are missing, e.g. order 10"), "{broken:?}");
        assert!(broken[1].contains("order 11"), "{broken:?}");
        assert!(broken[2].contains("order 12"), "{broken:?}");

        let lost = OrderLedger { lost: vec![14], ..OrderLedger::default() };
        assert_eq!(ledger_violations(&lost, &BTreeMap::new()), ["1 acknowledged orders are missing, e.g. order 14"]);
    }

    /// A call made from `from` to `to` ms after `zero` (`None`: unanswered).
    fn window(zero: Instant, from: u64, to: Option<u64>) -> CallWindow {
        let at = |ms| zero + Duration::from_millis(ms);
        CallWindow { sent: at(from), answered: to.map(at) }
    }

    #[test]
    fn a_line_holds_a_price_its_product_had_while_the_order_was_made() {
        let zero = Instant::now();
        // Product 9 at 9.5, then 109.5 set from 10 to 20 ms, then 209.5
        // from 30 to 40 ms.
        let changes = [
            PriceChange { pid: 9, price: 109.5, call: window(zero, 10, Some(20)) },
            PriceChange { pid: 9, price: 209.5, call: window(zero, 30, Some(40)) },
        ];
        let history = PriceHistory::new(BTreeMap::from([(9, 9.5), (1, 1.5)]), &changes);
        let possible = |price, from, to| history.possible(9, price, Some(&window(zero, from, to)));
        // An order made from 5 to 8 ms: only the seeded price.
        assert!(possible(9.5, 5, Some(8)));
        assert!(!possible(109.5, 5, Some(8)), "a price set after the order");
        // From 15 to 25 ms: the change may have come before or after.
        assert!(possible(9.5, 15, Some(25)) && possible(109.5, 15, Some(25)));
        assert!(!possible(209.5, 15, Some(25)));
        // From 22 to 28 ms: 109.5 was in place all along.
        assert!(possible(109.5, 22, Some(28)));
        assert!(!possible(9.5, 22, Some(28)), "a price replaced before the order");
        // Never answered: any later price too.
        assert!(possible(209.5, 22, None) && !possible(9.5, 22, None));
        // Another product's price, or the 0 an order is written with.
        assert!(!possible(1.5, 0, None) && !possible(0.0, 0, None));
        assert!(history.possible(1, 1.5, Some(&window(zero, 50, Some(60)))));
        assert!(!history.possible(2, 1.5, None), "a product the run does not know");
    }

    #[test]
    fn an_order_cannot_hold_a_price_older_than_one_an_earlier_order_held() {
        let zero = Instant::now();
        // 109.5 set from 10 ms on, its answer lost (the run ended first).
        let unanswered = PriceChange { pid: 9, price: 109.5, call: window(zero, 10, None) };
        let mut history = PriceHistory::new(BTreeMap::from([(9, 9.5)]), &[unanswered]);
        let made_at_30 = window(zero, 30, Some(35));
        assert!(history.possible(9, 9.5, Some(&made_at_30)), "the change may not have been made yet");
        // An order answered at 25 ms held 109.5: in place since then at
        // the latest, so an order begun at 30 ms cannot hold 9.5.
        history.learn(9, 109.5, zero + Duration::from_millis(25));
        assert!(!history.possible(9, 9.5, Some(&made_at_30)));
        assert!(history.possible(9, 109.5, Some(&made_at_30)));
        assert!(history.possible(9, 9.5, Some(&window(zero, 20, Some(35)))), "begun before that order's answer");
        // A price the history does not know teaches nothing.
        history.learn(9, 0.0, zero);
        assert!(history.possible(9, 9.5, Some(&window(zero, 20, Some(35)))));
    }

    #[test]
    fn a_product_ends_at_the_last_price_set() {
        let zero = Instant::now();
        let set = PriceChange { pid: 9, price: 109.5, call: window(zero, 10, Some(20)) };
        let history = PriceHistory::new(BTreeMap::from([(9, 9.5)]), &[set]);
        assert!(history.possible_last(9, 109.5) && !history.possible_last(9, 9.5), "a change acknowledged is kept");
        let unanswered = PriceChange { pid: 9, price: 209.5, call: window(zero, 30, None) };
        let history = PriceHistory::new(BTreeMap::from([(9, 9.5)]), &[set, unanswered]);
        assert!(history.possible_last(9, 109.5) && history.possible_last(9, 209.5));
        assert!(!history.possible_last(9, 9.5));
    }
}
