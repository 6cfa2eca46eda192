//! A shard forgets a finished cross-shard transaction's record only once
//! the other shard no longer holds its part prepared: a shard frozen for
//! longer than the records are kept still finds the transaction committed
//! when it comes back, and then both shards forget it. (Here the frozen
//! shard cannot be asked at all; the case of a shard that answers "still
//! prepared" is the commit protocol's model test.)

mod common;

use std::time::{Duration, Instant};

use common::{binaries, cluster_with};
use raftshop::local_cluster::ClusterOptions;
use storage_node::cli::TXN_RETENTION_ENV;
use storage_node::client::ShardClient;
use storage_node::command::{Effect, Outcome, TxnId, TxnPart};
use storage_node::node::housekeeping::PRUNE_INTERVAL;
use storage_node::{Command, CommandResult, Query, QueryResult, RowKey, Shard, Table};

const DEADLINE: Duration = Duration::from_secs(10);
/// Records are kept 1 s here; the leader prunes every `PRUNE_INTERVAL`.
const RETENTION_SECS: u64 = 1;

/// Prepares transaction `id` in both shards: each part adds a client-order
/// index row (client 100 is even, 101 odd).
async fn prepare_both(even: &ShardClient, odd: &ShardClient, id: TxnId, oid: u64) {
    for (shard, cid) in [(even, 100), (odd, 101)] {
        let part =
            TxnPart { id, checks: vec![], effects: vec![Effect::Put(RowKey::ClientOrder(cid, oid), Vec::new())] };
        let prepare = Command::Prepare { part, decision_shard: Shard::Even, at_ms: 0 };
        assert_eq!(shard.write(&prepare, DEADLINE).await.unwrap(), CommandResult::Prepared);
    }
}

async fn commit(shard: &ShardClient, id: TxnId) {
    let resolve = Command::Resolve { id, outcome: Outcome::Commit, at_ms: 0 };
    assert_eq!(shard.write(&resolve, DEADLINE).await.unwrap(), CommandResult::Committed);
}

/// The ids of the finished transactions `shard` still keeps a record of.
async fn finished(shard: &ShardClient) -> Vec<TxnId> {
    let scan = Query::Scan { table: Table::TxnsDone, after: None, limit: 100 };
    match shard.read(&scan, DEADLINE).await.unwrap() {
        QueryResult::Rows(rows) => rows
            .into_iter()
            .filter_map(|(key, _)| match key {
                RowKey::TxnDone(_, id) => Some(id),
                _ => None,
            })
            .collect(),
        other => panic!("unexpected answer {other:?}"),
    }
}

/// True once `key` is written and no prepared transaction holds it.
async fn written(shard: &ShardClient, key: RowKey) -> bool {
    match shard.read(&Query::Get(key), DEADLINE).await.unwrap() {
        QueryResult::Row(row) => row.is_some(),
        QueryResult::Locked { .. } => false,
        other => panic!("unexpected answer {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_record_outlives_a_frozen_shard_and_then_goes() {
    let mut options = ClusterOptions::new(binaries());
    options.node_env.push((TXN_RETENTION_ENV.into(), RETENTION_SECS.to_string()));
    let cluster = cluster_with(options).await;
    let (even, odd) = (cluster.shard_client(Shard::Even), cluster.shard_client(Shard::Odd));

    // Committed in the even shard only; then the odd shard freezes whole
    // before its recovery (1.5 s after the prepare) can commit its part.
    let id = TxnId::fresh();
    prepare_both(&even, &odd, id, 7).await;
    commit(&even, id).await;
    let frozen = cluster.members(Shard::Odd);
    frozen.iter().for_each(|node| cluster.pause(*node));

    // Well past the retention, over a prune round: the even shard keeps it.
    tokio::time::sleep(PRUNE_INTERVAL + Duration::from_secs(RETENTION_SECS + 3)).await;
    assert_eq!(finished(&even).await, [id], "kept while the odd part may still be prepared");

    // Back, the odd shard's recovery finds the transaction committed.
    frozen.iter().for_each(|node| cluster.resume(*node));
    let give_up = Instant::now() + Duration::from_secs(30);
    while !written(&odd, RowKey::ClientOrder(101, 7)).await {
        assert!(Instant::now() < give_up, "the odd part never committed\n{}", cluster.log_tails(30));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Then both shards forget it.
    let give_up = Instant::now() + 3 * PRUNE_INTERVAL;
    loop {
        let (kept_even, kept_odd) = (finished(&even).await, finished(&odd).await);
        if kept_even.is_empty() && kept_odd.is_empty() {
            break;
        }
        assert!(Instant::now() < give_up, "still kept: even {kept_even:?}, odd {kept_odd:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(written(&even, RowKey::ClientOrder(100, 7)).await, "the even part stays committed");
}
