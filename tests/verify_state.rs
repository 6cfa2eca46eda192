//! `storage-node --verify-state` on a real node's state: after a SIGKILL
//! its rows sum to the digest it keeps (exit 0); after a row disappears
//! from sled underneath the state machine, as a power cut can make sled
//! lose an update, they do not (exit 1); a check that cannot run exits 2.

mod common;

use std::process::Output;
use std::time::Duration;

use common::{binaries, cluster_with, converged, key_in};
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use storage_node::{Command, RowWrite, Shard};

/// Runs `storage-node --id id --verify-state` against the cluster's config.
fn verify(cluster: &LocalCluster, id: u64) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(["--id", &id.to_string(), "--verify-state", "--config"])
        .arg(cluster.config_path())
        .env_remove("RUST_LOG")
        .output()
        .expect("storage-node runs")
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
        let put = Command::single(RowWrite::upsert(key.clone(), b"a value".to_vec()));
        shard.write(&put, Duration::from_secs(5)).await.expect("written");
    }
    // Writes to other keys, 20 ms apart, so the last batches the state
    // writer hands sled (one every 10 ms) hold none of the keys above,
    // and the start-up redo (the last batch's list) cannot put back the
    // row taken out below.
    for i in 0..15 {
        let put = Command::single(RowWrite::upsert(key_in(Shard::Even, &format!("filler-{i}")), b"x".to_vec()));
        shard.write(&put, Duration::from_secs(5)).await.expect("written");
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
    assert!(stdout(&damaged).contains("replace this member"), "{damaged:?}");

    let unknown = verify(&cluster, 9);
    assert_eq!(unknown.status.code(), Some(2), "{unknown:?}");
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("node 9 is not in the cluster config"), "{unknown:?}");
}
