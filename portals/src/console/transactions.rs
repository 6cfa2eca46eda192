//! `GET /api/transactions`: the transactions still open in the shards, as
//! their intents show them.
//!
//! A prepared transaction holds an intent on every row it reads (shared),
//! moves the stock of (escrow) or writes (exclusive) until its outcome is
//! applied, and each shard keeps those intents as rows of its `Intents`
//! table. The console scans that table in both shards with linearizable
//! reads, pages of [`SCAN_PAGE`] rows: it counts at most
//! [`INTENTS_COUNTED`] intents and shows the first [`INTENTS_SHOWN`], then
//! groups the shown ones by transaction and reads each transaction's record
//! in the shards that hold its intents (when it was prepared, which shard
//! decides it). Normally there are none: intents live for the few
//! milliseconds of a two-phase commit, or up to the settle timeout after a
//! portal died mid-way. A shard that cannot answer is reported, and the
//! other shard is still shown.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use storage_node::client::{ClusterClient, ShardClient};
use storage_node::command::TxnId;
use storage_node::records::shop::decode_record;
use storage_node::state::txn::{IntentRecord, LockMode, TxnRecord, TxnState};
use storage_node::{Query, QueryResult, Row, RowKey, Shard, Table};

/// Intents shown, over both shards.
pub const INTENTS_SHOWN: usize = 100;
/// Intents counted per shard before the count gives up and says "at least".
pub const INTENTS_COUNTED: usize = 10_000;
/// Rows asked for per scan.
pub const SCAN_PAGE: u32 = 500;
/// How long a shard's scan, and then the reads of its transactions'
/// records, may each take: the answer comes within 3 s, before the page
/// gives up on the request (after 4 s).
pub const READ_DEADLINE: Duration = Duration::from_millis(1500);

/// What the console answers.
#[derive(Debug, Default, Serialize)]
pub struct OpenTransactions {
    /// How each shard's scan went.
    pub shards: Vec<ShardIntents>,
    /// The first [`INTENTS_SHOWN`] intents, shard even first.
    pub intents: Vec<IntentView>,
    /// The transactions holding the intents shown.
    pub transactions: Vec<TransactionView>,
}

/// One shard's count of intents.
#[derive(Debug, Serialize)]
pub struct ShardIntents {
    /// The shard.
    pub shard: Shard,
    /// Intents counted.
    pub total: usize,
    /// False if counting stopped at [`INTENTS_COUNTED`] (or the shard did
    /// not answer): then `total` is a lower bound.
    pub complete: bool,
    /// Why the shard could not be read.
    pub error: Option<String>,
}

/// The intents on one row.
#[derive(Debug, Clone, Serialize)]
pub struct IntentView {
    /// The row's shard.
    pub shard: Shard,
    /// The locked row, e.g. `products/4`.
    pub row: String,
    /// Each transaction holding it, and how; empty if the record does not
    /// decode.
    pub holders: Vec<Holder>,
}

/// One transaction's hold on a row.
#[derive(Debug, Clone, Serialize)]
pub struct Holder {
    /// The transaction's id, shown in hex.
    #[serde(serialize_with = "hex")]
    pub txn: TxnId,
    /// `shared`, `escrow` or `exclusive`.
    pub mode: &'static str,
}

/// One open transaction.
#[derive(Debug, Serialize)]
pub struct TransactionView {
    /// Its id, shown in hex.
    #[serde(serialize_with = "hex")]
    pub txn: TxnId,
    /// Rows it holds among the intents shown, as `shard:row (mode)`.
    pub locks: Vec<String>,
    /// The shard whose record decides its outcome, if a record says.
    pub decision_shard: Option<Shard>,
    /// When the earliest of its shards prepared it (ms since the epoch).
    pub prepared_at_ms: Option<u64>,
}

/// Scans both shards' intents and reads the records of their transactions.
pub async fn open_transactions(cluster: &ClusterClient) -> OpenTransactions {
    let scans = Shard::ALL.map(|shard| scan_intents(cluster.shard(shard)));
    let mut answer = OpenTransactions::default();
    for (shard, scan) in Shard::ALL.into_iter().zip(futures::future::join_all(scans).await) {
        match scan {
            Ok(scan) => {
                answer.shards.push(ShardIntents { shard, total: scan.total, complete: scan.complete, error: None });
                answer.intents.extend(scan.shown.into_iter().map(|(row, record)| intent_view(shard, &row, record)));
            }
            Err(error) => answer.shards.push(ShardIntents { shard, total: 0, complete: false, error: Some(error) }),
        }
    }
    answer.intents.truncate(INTENTS_SHOWN);
    answer.transactions = transactions(cluster, &answer.intents).await;
    answer
}

/// One shard's scan: the first intents and how many there are.
struct Scan {
    shown: Vec<(RowKey, Option<IntentRecord>)>,
    total: usize,
    complete: bool,
}

async fn scan_intents(shard: &ShardClient) -> Result<Scan, String> {
    let give_up = tokio::time::Instant::now() + READ_DEADLINE;
    let mut scan = Scan { shown: Vec::new(), total: 0, complete: true };
    let mut after = None;
    loop {
        let budget = give_up.saturating_duration_since(tokio::time::Instant::now());
        let query = Query::Scan { table: Table::Intents, after: after.take(), limit: SCAN_PAGE };
        let page = match shard.read(&query, budget).await.map_err(|e| e.to_string())? {
            QueryResult::Rows(page) => page,
            other => return Err(format!("a scan of the intents answered {other:?}")),
        };
        let Some((last, _)) = page.last() else { return Ok(scan) };
        after = Some(last.clone());
        for (key, row) in page {
            scan.total += 1;
            if scan.shown.len() < INTENTS_SHOWN {
                scan.shown.push((key, decode_record(&row.value).ok()));
            }
        }
        if scan.total >= INTENTS_COUNTED {
            scan.complete = false;
            return Ok(scan);
        }
    }
}

fn intent_view(shard: Shard, key: &RowKey, record: Option<IntentRecord>) -> IntentView {
    let row = match key {
        RowKey::Intent(row) => row.to_string(),
        other => other.to_string(),
    };
    let holders = record
        .map(|r| r.holders.into_iter().map(|(txn, mode)| Holder { txn, mode: mode_name(mode) }))
        .into_iter()
        .flatten()
        .collect();
    IntentView { shard, row, holders }
}

fn mode_name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Shared => "shared",
        LockMode::Escrow => "escrow",
        LockMode::Exclusive => "exclusive",
    }
}

/// The transactions holding `intents`, with their records where readable.
async fn transactions(cluster: &ClusterClient, intents: &[IntentView]) -> Vec<TransactionView> {
    let mut views: BTreeMap<TxnId, TransactionView> = BTreeMap::new();
    let mut per_shard: BTreeMap<Shard, Vec<TxnId>> = BTreeMap::new();
    for intent in intents {
        for holder in &intent.holders {
            let view = views.entry(holder.txn).or_insert_with(|| TransactionView {
                txn: holder.txn,
                locks: Vec::new(),
                decision_shard: None,
                prepared_at_ms: None,
            });
            view.locks.push(format!("{}:{} ({})", intent.shard, intent.row, holder.mode));
            let ids = per_shard.entry(intent.shard).or_default();
            if !ids.contains(&holder.txn) {
                ids.push(holder.txn);
            }
        }
    }
    let reads = per_shard.into_iter().map(|(shard, ids)| async move {
        let records = records(cluster.shard(shard), &ids).await;
        ids.into_iter().zip(records).collect::<Vec<_>>()
    });
    for (id, record) in futures::future::join_all(reads).await.into_iter().flatten() {
        let (Some(view), Some(TxnRecord { state: TxnState::Prepared { decision_shard, .. }, at_ms })) =
            (views.get_mut(&id), record)
        else {
            continue;
        };
        view.decision_shard = Some(decision_shard);
        view.prepared_at_ms = Some(view.prepared_at_ms.map_or(at_ms, |earlier| earlier.min(at_ms)));
    }
    views.into_values().collect()
}

/// The records of transactions `ids` in `shard`, `None` where there is
/// none or it cannot be read.
async fn records(shard: &ShardClient, ids: &[TxnId]) -> Vec<Option<TxnRecord>> {
    let keys = ids.iter().map(|id| RowKey::Txn(*id)).collect();
    match shard.read(&Query::GetMany(keys), READ_DEADLINE).await {
        Ok(QueryResult::Many(rows)) => {
            rows.into_iter().map(|row| row.and_then(|row: Row| decode_record(&row.value).ok())).collect()
        }
        _ => vec![None; ids.len()],
    }
}

/// Serializes a transaction id as the hex the logs print.
fn hex<S: serde::Serializer>(id: &TxnId, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_intent_names_its_row_and_holders() {
        let holders = BTreeMap::from([(TxnId(0xab), LockMode::Escrow), (TxnId(0xcd), LockMode::Shared)]);
        let key = RowKey::Intent(Box::new(RowKey::Product(4)));
        let view = intent_view(Shard::Even, &key, Some(IntentRecord { holders }));
        assert_eq!(view.row, "products/4");
        let json = serde_json::to_value(&view).expect("serializes");
        assert_eq!(json["shard"], "even");
        assert_eq!(json["holders"][0]["txn"], format!("{:032x}", 0xab));
        assert_eq!(json["holders"][0]["mode"], "escrow");
        assert_eq!(json["holders"][1]["mode"], "shared");
        let unreadable = intent_view(Shard::Odd, &key, None);
        assert!(unreadable.holders.is_empty());
    }
}
