//! The change feed's move from one stored row per event to one per entry,
//! as a rolling upgrade meets it: real nodes, restarted one at a time.
//!
//! Every node starts saying it knows only the first layout (as a build
//! from before the second would); the shard keeps writing it. Upgraded one
//! by one, the shard switches once its last member knows the second
//! layout, at one log index on every replica, so the replicas' state
//! digests still agree; and a subscriber resuming from before the switch
//! gets every change, from rows of both layouts, in order.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use storage_node::cli::NEWEST_FEED_LAYOUT_ENV;
use storage_node::client::{FeedItem, ShardClient};
use storage_node::{Command, CommandResult, RowKey, RowWrite, Shard};

use common::{binaries, cluster_with, converged, STARTUP};

const SHARD: Shard = Shard::Odd;
const DEADLINE: Duration = Duration::from_secs(10);

/// Writes `count` kv rows under `feed/`, numbered from `first`, some
/// several to an entry; returns (log index, number) of each.
async fn write(client: &ShardClient, first: u32, count: u32) -> Vec<(u64, u32)> {
    let mut written = Vec::new();
    for chunk_start in (first..first + count).step_by(4) {
        let numbers: Vec<u32> = (chunk_start..(chunk_start + 4).min(first + count)).collect();
        let writes = numbers.iter().map(|n| RowWrite::upsert(RowKey::Kv(format!("feed/{n}")), n.to_string())).collect();
        match client.write(&Command::Batch(writes), DEADLINE).await {
            Ok(CommandResult::Applied { index }) => written.extend(numbers.iter().map(|n| (index, *n))),
            other => panic!("write of {numbers:?}: {other:?}"),
        }
    }
    written
}

/// `raftshop status` against the cluster.
fn status(cluster: &LocalCluster) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .arg("status")
        .arg("--config")
        .arg(cluster.config_path())
        .output()
        .expect("raftshop status runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "raftshop status: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

/// The feed layout each member reports.
async fn layouts(cluster: &LocalCluster, members: &[u64]) -> Vec<u32> {
    let client = cluster.shard_client(SHARD);
    let mut layouts = Vec::new();
    for id in members {
        layouts.push(client.status(*id, DEADLINE).await.expect("a status").feed_layout);
    }
    layouts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_switches_its_feed_layout_when_its_last_member_knows_the_new_one() {
    let mut options = ClusterOptions::new(binaries());
    options.node_env.push((NEWEST_FEED_LAYOUT_ENV.into(), "1".into()));
    let mut cluster = cluster_with(options).await;
    let members = cluster.members(SHARD);
    let client = cluster.shard_client(SHARD);

    let mut written = write(&client, 0, 40).await;
    // Housekeeping looks four times a second; give it several chances.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(layouts(&cluster, &members).await, vec![1; 3], "nobody knows layout 2 yet");
    let before = status(&cluster);
    assert_eq!(before.matches("change feed: layout 1").count(), 2, "both shards, in status:\n{before}");

    for (upgraded, id) in members.iter().enumerate() {
        cluster.stop(*id).expect("a clean stop");
        cluster.start_node_with(*id, &["--newest-feed-layout", "2"]).expect("restart");
        cluster.wait_for_leader(SHARD, STARTUP).await.unwrap();
        let first = written.len() as u32;
        written.extend(write(&client, first, 20).await);
        if upgraded + 1 < members.len() {
            converged(&cluster, SHARD, &members, STARTUP).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(layouts(&cluster, &members).await, vec![1; 3], "{} of 3 upgraded", upgraded + 1);
        }
    }

    let give_up = Instant::now() + STARTUP;
    while layouts(&cluster, &members).await != vec![2; 3] {
        assert!(Instant::now() < give_up, "the shard did not switch: {:?}", layouts(&cluster, &members).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let after = status(&cluster);
    assert_eq!(after.matches("change feed: layout 2").count(), 1, "the upgraded shard, in status:\n{after}");
    let first = written.len() as u32;
    written.extend(write(&client, first, 40).await);
    converged(&cluster, SHARD, &members, STARTUP).await;

    // From before the first write: every change once, in log order, the
    // ones stored per event and the ones stored per entry alike.
    let mut feed = Box::pin(client.watch("kv/feed", Some(1)));
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let item = tokio::time::timeout(DEADLINE, feed.next()).await.expect("the feed keeps flowing");
        if let Some(Ok(FeedItem::Event { index, value: Some(value), .. })) = item {
            seen.push((index, String::from_utf8(value).unwrap().parse::<u32>().unwrap()));
        }
    }
    // An entry's events come in key order.
    written.sort_by_key(|(index, n)| (*index, n.to_string()));
    assert_eq!(seen, written, "each change once, in order, across the switch");
}
