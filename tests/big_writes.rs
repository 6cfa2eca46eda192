//! Big concurrent writes cannot stall a shard (issue 11): many writes of
//! the largest size a command may have, at once, all commit. Each batched
//! entry stays within `MAX_ENTRY_BYTES` and each AppendEntries within
//! `MAX_APPEND_BYTES`, so every replication call fits openraft 0.9's
//! deadline of one heartbeat (an entry of several MiB missed it, was
//! retried unchanged, and left the shard without a leader for good). In a
//! file of its own, so that no other cluster shares the two cores with it.

mod common;

use std::time::Duration;

use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use storage_node::codec::encode;
use storage_node::command::{Command, CommandResult, RowKey, RowWrite};
use storage_node::limits::{MAX_COMMAND_BYTES, MAX_KV_VALUE_BYTES};
use storage_node::{Query, QueryResult, Shard, Table};

const DEADLINE: Duration = Duration::from_secs(10);
/// How long the big writes may take, all together.
const BIG_WRITE_DEADLINE: Duration = Duration::from_secs(40);

/// 40 concurrent writes of nearly `MAX_COMMAND_BYTES` each to one shard
/// (about 10 MiB, forty times what one entry or one AppendEntries
/// carries) all commit and read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_concurrent_writes_commit() {
    let mut cluster = common::cluster_with(ClusterOptions::new(common::binaries())).await;
    concurrent_big_writes(&cluster).await;
    common::all_serve_on(&mut cluster, "big concurrent writes").await;
}

/// Sends the big writes and checks that each committed.
async fn concurrent_big_writes(cluster: &LocalCluster) {
    const WRITES: usize = 40;
    const ROWS_PER_WRITE: usize = 4;
    const VALUE_BYTES: usize = MAX_KV_VALUE_BYTES - 1024;
    let client = std::sync::Arc::new(cluster.shard_client(Shard::Even));
    let keys: Vec<Vec<RowKey>> = (0..WRITES)
        .map(|w| (0..ROWS_PER_WRITE).map(|r| common::key_in(Shard::Even, &format!("big-{w}-{r}"))).collect())
        .collect();
    let value = |key: &RowKey| {
        let mut value = key.to_string().into_bytes();
        value.resize(VALUE_BYTES, b'.');
        value
    };
    let writes = keys.iter().map(|row_keys| {
        let client = client.clone();
        let command = Command::Batch(row_keys.iter().map(|k| RowWrite::upsert(k.clone(), value(k))).collect());
        assert!(encode(&command).len() < MAX_COMMAND_BYTES);
        tokio::spawn(async move { client.write(&command, BIG_WRITE_DEADLINE).await })
    });
    for (i, write) in futures::future::join_all(writes.collect::<Vec<_>>()).await.into_iter().enumerate() {
        let result = write.expect("the task ran");
        assert!(matches!(result, Ok(CommandResult::Applied { .. })), "big write {i}: {result:?}");
    }
    for key in keys.iter().flatten() {
        let row = client.get(key, DEADLINE).await.expect("a read").expect("the row was committed");
        assert!(row.value == value(key), "{key} reads back as written");
    }
    // The rows pass a scan page's byte budget: the first page stops early,
    // and paging still reads every one.
    let scan = Query::Scan { table: Table::Kv, after: None, limit: 1000 };
    let Ok(QueryResult::Rows(first)) = client.read(&scan, DEADLINE).await else { panic!("a scan answers rows") };
    assert!(first.len() < WRITES * ROWS_PER_WRITE, "a {}-row page is over the byte budget", first.len());
    let all = raftshop::chaos::checks::scan_all(&cluster.client(), Table::Kv).await.unwrap();
    let big = all.iter().filter(|(key, _)| keys.iter().flatten().any(|k| k == key)).count();
    assert_eq!(big, WRITES * ROWS_PER_WRITE, "paging reads every row");
}
