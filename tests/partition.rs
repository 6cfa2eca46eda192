//! A leader cut off from its shard by a network partition can neither
//! commit a write nor answer a linearizable read, while the majority elects
//! a new leader and carries on; after healing, everyone converges.

use std::time::Duration;

use raftshop::local_cluster::{Binaries, ClusterOptions, LocalCluster};
use storage_node::client::ShardClient;
use storage_node::{Command, CommandResult, Query, RowKey, RowWrite, Shard};

fn binaries() -> Binaries {
    Binaries { storage_node: env!("CARGO_BIN_EXE_storage-node").into(), admin_portal: None, order_portal: None }
}

/// A key that lives in `shard`.
fn key_in(shard: Shard, name: &str) -> RowKey {
    (0..).map(|i| format!("{name}-{i}")).find(|k| Shard::of_key(k) == shard).map(RowKey::Kv).unwrap()
}

/// A client that talks to one node only, so it cannot be redirected away.
fn pinned(cluster: &LocalCluster, node: u64) -> ShardClient {
    let mut config = cluster.config().clone();
    let shard = config.node(node).unwrap().shard;
    config.nodes.retain(|n| n.shard != shard || n.id == node);
    // The client needs a full config; keep one node of the shard.
    ShardClient::new(&config, shard)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_neither_commits_nor_serves_reads() {
    let mut options = ClusterOptions::new(binaries());
    options.link_proxies = true;
    // Elections and log conflicts in the logs, for the assertion messages.
    options.log_filter = "info,openraft=info,sled=warn,raft_log=warn,chunked_wal=warn".into();
    let cluster = LocalCluster::start(options).await.expect("cluster starts");
    let shard = Shard::Even;
    let old_leader = cluster.wait_for_leader(shard, Duration::from_secs(20)).await.unwrap();
    let client = cluster.shard_client(shard);
    let key = key_in(shard, "partition");
    let written =
        client.write(&Command::single(RowWrite::upsert(key.clone(), b"before".to_vec())), Duration::from_secs(5)).await;
    assert!(matches!(written, Ok(CommandResult::Applied { .. })), "{written:?}");

    cluster.isolate(old_leader);
    let stranded = pinned(&cluster, old_leader);
    let write =
        stranded.write(&Command::single(RowWrite::upsert(key.clone(), b"lost".to_vec())), Duration::from_secs(2)).await;
    assert!(write.is_err(), "an isolated leader must not acknowledge a write: {write:?}");
    let read = stranded.read(&Query::Get(key.clone()), Duration::from_secs(2)).await;
    assert!(read.is_err(), "an isolated leader must not answer a linearizable read: {read:?}");

    let new_leader = wait_for_other_leader(&cluster, shard, old_leader).await;
    assert_ne!(new_leader, old_leader);
    let after =
        client.write(&Command::single(RowWrite::upsert(key.clone(), b"after".to_vec())), Duration::from_secs(10)).await;
    assert!(matches!(after, Ok(CommandResult::Applied { .. })), "the majority keeps serving: {after:?}");

    cluster.heal();
    let row = client.get(&key, Duration::from_secs(10)).await.unwrap().unwrap();
    assert_eq!(row.value, b"after", "the write the isolated leader took was never applied");
    let status = wait_until_converged(&cluster, shard).await;
    assert!(
        status.iter().all(|s| s.1 == status[0].1),
        "replicas converge after healing (old leader {old_leader}, new {new_leader}): {status:?}\n{}",
        cluster.log_tails(60)
    );
}

/// Waits until the shard's majority names a leader other than `old`.
async fn wait_for_other_leader(cluster: &LocalCluster, shard: Shard, old: u64) -> u64 {
    let client = cluster.shard_client(shard);
    for _ in 0..200 {
        for id in cluster.members(shard).into_iter().filter(|id| *id != old) {
            if let Ok(status) = client.status(id, Duration::from_millis(300)).await {
                if status.role == "leader" {
                    return id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no new leader\n{}", cluster.log_tails(30));
}

/// Waits until every member reports the same applied index; returns
/// (node, (applied index, digest)) for each.
async fn wait_until_converged(cluster: &LocalCluster, shard: Shard) -> Vec<(u64, (u64, u64))> {
    let client = cluster.shard_client(shard);
    for _ in 0..200 {
        let mut seen = Vec::new();
        for id in cluster.members(shard) {
            if let Ok(s) = client.status(id, Duration::from_millis(300)).await {
                seen.push((id, (s.applied_index, s.state_digest)));
            }
        }
        if seen.len() == 3 && seen.iter().all(|s| s.1 .0 == seen[0].1 .0) {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replicas did not converge\n{}", cluster.log_tails(30));
}
