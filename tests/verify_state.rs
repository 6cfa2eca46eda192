//! A real node's state after sled lost a row underneath the state
//! machine, as a power cut can make it lose an update:
//! `storage-node --verify-state` tells it from a whole state (exit 1 and
//! 0; a check that cannot run exits 2), and the node rebuilds it from its
//! snapshot and log at its next start, then, or when its last run was on
//! an earlier boot.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{binaries, cluster_with, converged, key_in};
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use storage_node::client::ShardClient;
use storage_node::{Command, RowKey, RowWrite, Shard};

/// Runs `storage-node --id id --verify-state` against the cluster's config.
fn verify(cluster: &LocalCluster, id: u64) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(["--id", &id.to_string(), "--verify-state", "--config"])
        .arg(cluster.config_path())
        .env_remove("RUST_LOG")
        .output()
        .expect("storage-node runs")
}

/// Writes `value` under `key` through the shard's leader.
async fn put(shard: &ShardClient, key: RowKey, value: &[u8]) {
    let put = Command::single(RowWrite::upsert(key, value.to_vec()));
    shard.write(&put, Duration::from_secs(5)).await.expect("written");
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_state_tells_a_whole_state_from_one_that_lost_a_row() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = cluster.shard_client(Shard::Even);
    let keys: Vec<_> = (0..40).map(|i| key_in(Shard::Even, &format!("verify-{i}"))).collect();
    for key in &keys {
        put(&shard, key.clone(), b"a value").await;
    }
    // Writes to other keys, 20 ms apart, so the last batches the state
    // writer hands sled (one every 10 ms) hold none of the keys above,
    // and the start-up redo (the last batch's list) cannot put back the
    // row taken out below.
    for i in 0..15 {
        put(&shard, key_in(Shard::Even, &format!("filler-{i}")), b"x").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    converged(&cluster, Shard::Even, &[1, 2, 3], Duration::from_secs(10)).await;
    // sled writes its buffers to its file at least every second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let running = verify(&cluster, 2);
    assert_eq!(running.status.code(), Some(2), "a running node's state is not checked: {running:?}");
    assert!(String::from_utf8_lossy(&running.stderr).contains("is the node running?"), "{running:?}");
    cluster.kill(2);
    let whole = verify(&cluster, 2);
    assert_eq!(whole.status.code(), Some(0), "{whole:?}");
    assert!(stdout(&whole).contains("the state is whole"), "{whole:?}");

    let state_dir = cluster.config().node(2).expect("node 2").data_dir.join("state");
    {
        let db = sled::open(&state_dir).expect("node 2's sled opens");
        let tree = db.open_tree("shop").expect("its tree");
        let row = storage_node::state::keys::row_key(&keys[7]);
        assert!(tree.remove(row).expect("removed").is_some(), "the row was in sled");
        db.flush().expect("flushed");
    }
    // sled's background thread in this process lets go of the lock
    // shortly after the drop.
    let mut damaged = verify(&cluster, 2);
    for _ in 0..50 {
        if damaged.status.code() != Some(2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        damaged = verify(&cluster, 2);
    }
    assert_eq!(damaged.status.code(), Some(1), "{damaged:?}");
    assert!(stdout(&damaged).contains("rebuilds it from its current snapshot and its log"), "{damaged:?}");
    let data_dir = cluster.config().node(2).expect("node 2").data_dir.clone();
    let record = std::fs::read_to_string(data_dir.join("last-run")).expect("the check left a record");
    assert!(record.lines().any(|line| line == "damaged"), "{record}");

    // Its next start rebuilds the state (from the log alone here: the
    // shard has taken no snapshot) and it converges with its peers.
    cluster.start_node(2).expect("node 2 starts");
    converged(&cluster, Shard::Even, &[1, 2, 3], Duration::from_secs(20)).await;
    assert!(cluster.log_tails(400).contains("rebuilding it from the current snapshot and the log"));
    assert!(data_dir.join("state.damaged").join("db").exists(), "the damaged state is kept beside");
    assert!(cluster.stop(2).expect("stops").success(), "a clean stop exits 0");
    let rebuilt = verify(&cluster, 2);
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");

    let unknown = verify(&cluster, 9);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("node 9 is not in the cluster config"), "{unknown:?}");
}

/// A node whose last run was on an earlier boot (a power cut, as its
/// `last-run` record makes it look here) checks its state at start-up;
/// finding a row gone, it moves the state aside and rebuilds it from its
/// snapshot and the log after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_after_a_power_cut_rebuilds_a_state_that_lost_a_row() {
    let mut options = ClusterOptions::new(binaries());
    options.raft.snapshot_after_entries = 40;
    options.raft.keep_entries_after_snapshot = 5;
    let mut cluster = cluster_with(options).await;
    let shard = cluster.shard_client(Shard::Even);
    let keys: Vec<_> = (0..20).map(|i| key_in(Shard::Even, &format!("cut-{i}"))).collect();
    for key in &keys {
        put(&shard, key.clone(), b"a value").await;
    }
    // Enough writes for node 2 to take snapshots and purge its log behind
    // them, so the rebuild needs the snapshot; 20 ms apart at the end, as
    // in the test above, so the last batch's redo list holds no key above.
    for i in 0..200 {
        put(&shard, key_in(Shard::Even, &format!("filler-{i}")), b"x").await;
        if i >= 185 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    converged(&cluster, Shard::Even, &[1, 2, 3], Duration::from_secs(10)).await;
    let status = shard.status(2, Duration::from_secs(1)).await.expect("node 2's status");
    assert!(status.snapshot_index > 0 && status.purged_index > 0, "node 2 purged behind a snapshot: {status:?}");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    cluster.kill(2);

    let data_dir = cluster.config().node(2).expect("node 2").data_dir.clone();
    let record = std::fs::read_to_string(data_dir.join("last-run")).expect("a running node keeps a record");
    assert!(record.lines().any(|line| line.starts_with("running ")), "{record}");
    {
        let db = sled::open(data_dir.join("state")).expect("node 2's sled opens");
        let tree = db.open_tree("shop").expect("its tree");
        let row = storage_node::state::keys::row_key(&keys[3]);
        assert!(tree.remove(row).expect("removed").is_some(), "the row was in sled");
        db.flush().expect("flushed");
    }
    std::fs::write(data_dir.join("last-run"), "running a-boot-before-the-power-cut\n").expect("record");
    // sled's background thread in this process lets go of the lock
    // shortly after the drop; a node that finds it held fails to start.
    tokio::time::sleep(Duration::from_millis(500)).await;

    cluster.start_node(2).expect("node 2 starts");
    converged(&cluster, Shard::Even, &[1, 2, 3], Duration::from_secs(20)).await;
    let logs = std::fs::read_to_string(cluster.dir().join("node-2.log")).expect("node 2's log");
    let restart = &logs[logs.rfind("the state is damaged").expect("the check found the state damaged")..];
    assert!(restart.contains("sled lost or changed rows"), "{restart}");
    assert!(restart.contains("the machine has booted since"), "{restart}");
    assert!(restart.contains("snapshot installed"), "the rebuild began with the snapshot: {restart}");
    assert!(cluster.stop(2).expect("stops").success(), "a clean stop exits 0");
    let record = std::fs::read_to_string(data_dir.join("last-run")).expect("record");
    assert!(record.lines().any(|line| line.starts_with("stopped ")), "{record}");
    let rebuilt = verify(&cluster, 2);
    assert_eq!(rebuilt.status.code(), Some(0), "{rebuilt:?}");
}
