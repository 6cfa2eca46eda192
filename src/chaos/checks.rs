//! What must hold after a chaos run, besides linearizability:
//!
//! - no lost acknowledged write: a final linearizable read of every key
//!   returns the last acknowledged write or a value written later (by a
//!   write whose outcome was unknown or that overlapped it);
//! - replicas converge: the members of each shard reach the same applied
//!   index with the same state digest;
//! - the shop's invariants: stock never below zero (it is unsigned, and
//!   every change is checked), stock + ordered quantity per product equals
//!   the initial stock, no order without its client, the client index lists
//!   exactly the live orders, and no transaction intent is left;
//! - no lost acknowledged order: every order the clients were told was
//!   created is there with its client and lines unless a delete of it was
//!   sent, and no order whose delete was acknowledged, or whose create was
//!   refused, is there; and every order line is at its product's price
//!   (prices never change during a run).

use std::collections::BTreeMap;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::records::shop::{decode_record, OrderRecord, ProductRow};
use storage_node::{Query, QueryResult, Row, RowKey, Shard, Table};

use super::history::{OpKind, Operation, Outcome};
use super::workload::OrderLedger;
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
    let mut prices = BTreeMap::new();
    for (key, row) in scan_all(cluster, Table::Products).await? {
        let RowKey::Product(pid) = key else { continue };
        let ProductRow { record: product, orders: counted } = ProductRow::decode(&row.value)?;
        prices.insert(pid, product.price);
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
    // The run never changes a price, so each line holds its product's:
    // whichever shard priced it (its own, or the other's quote through the
    // commit or a recovery), never the 0 an order is written with.
    let mispriced: Vec<String> = found
        .iter()
        .flat_map(|(oid, order)| order.lines.iter().map(move |line| (oid, line)))
        .filter(|(_, line)| prices.get(&line.pid).is_some_and(|price| *price != line.price))
        .map(|(oid, line)| format!("order {oid}'s product {} at {}", line.pid, line.price))
        .collect();
    if let Some(example) = mispriced.first() {
        broken.push(format!("{} order lines are not at their product's price, e.g. {example}", mispriced.len()));
    }
    let index = scan_all(cluster, Table::ClientOrders).await?.len();
    if index != orders.len() {
        broken.push(format!("the client index lists {index} orders, but {} exist", orders.len()));
    }
    Ok(broken)
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
}
