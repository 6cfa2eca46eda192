//! Changing a shard's members while clients write and read (issue 14), with
//! real processes: the chaos suite's key-value clients record every
//! operation, and its checker proves the history linearizable and that no
//! acknowledged write was lost.
//!
//! - Replace a member: kill node 2, add node 7 as a learner, promote it,
//!   remove node 2.
//! - Grow the shard to five voters (nodes 7 and 8) and shrink it back to
//!   three.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{binaries, cluster_with};
use raftshop::chaos::checks;
use raftshop::chaos::history::{Operation, Recorder};
use raftshop::chaos::linearizability::{check_history, Verdict};
use raftshop::chaos::workload::{hot_keys, kv_client};
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use raftshop_proto::store::{membership_change::Change, AddLearner, MembershipChange, MembershipView, NodeIds};
use storage_node::client::ShardClient;
use storage_node::{Command, CommandResult, NodeId, RowWrite, Shard};
use tokio::task::JoinHandle;

const SHARD: Shard = Shard::Even;
const CHANGE_DEADLINE: Duration = Duration::from_secs(20);

/// Key-value clients on the shard's hot keys, recording into `recorder`.
struct Load {
    recorder: Arc<Recorder>,
    keys: Vec<String>,
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(cluster: &LocalCluster) -> Self {
        let recorder = Arc::new(Recorder::new());
        let keys: Vec<String> = hot_keys(4).into_iter().filter(|k| Shard::of_key(k) == SHARD).collect();
        let stop = Arc::new(AtomicBool::new(false));
        let client = Arc::new(cluster.client());
        let clients = (0..4)
            .map(|c| tokio::spawn(kv_client(client.clone(), c, keys.clone(), recorder.clone(), 14, stop.clone())))
            .collect();
        Load { recorder, keys, stop, clients }
    }

    /// Stops the clients, reads every key once more, and checks the history.
    async fn finish_and_check(self, cluster: &LocalCluster) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        let finals = checks::final_values(&cluster.client(), &self.keys).await.unwrap();
        for (key, value) in &finals {
            let at = self.recorder.now();
            self.recorder.record(Operation::read(u64::MAX, key, value.as_deref(), at, self.recorder.now()));
        }
        let history = self.recorder.history();
        let acknowledged = history.iter().filter(|op| op.returned_at.is_some()).count();
        assert!(acknowledged > 100, "the clients kept working: {acknowledged} operations answered");
        let report = check_history(&history, Duration::from_secs(60)).unwrap();
        assert!(matches!(report.verdict, Verdict::Linearizable), "{:?}", report.violations().next());
        assert_eq!(checks::lost_writes(&history, &finals), vec![], "no acknowledged write lost");
    }
}

fn change(change: Change) -> MembershipChange {
    MembershipChange { change: Some(change) }
}

fn voters(view: &MembershipView) -> BTreeSet<NodeId> {
    view.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect()
}

/// Starts node `id` and adds it as a learner; returns once it has caught up.
async fn add_and_catch_up(cluster: &mut LocalCluster, client: &ShardClient, id: NodeId) {
    cluster.start_node(id).unwrap();
    let addr = cluster.config().node(id).unwrap().reach();
    let view = client
        .change_membership(change(Change::AddLearner(AddLearner { node_id: id, addr })), CHANGE_DEADLINE)
        .await
        .unwrap();
    assert!(view.members.iter().any(|m| m.node_id == id && !m.voter), "node {id} is a learner: {view:?}");
    let started = std::time::Instant::now();
    loop {
        let view = client.membership(CHANGE_DEADLINE).await.unwrap();
        let matched = view.members.iter().find(|m| m.node_id == id).and_then(|m| m.matched_index);
        if matched.is_some_and(|m| m + 10 >= view.last_log_index) {
            return;
        }
        assert!(started.elapsed() < CHANGE_DEADLINE, "node {id} did not catch up: {view:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_member_is_replaced_under_load() {
    let mut options = ClusterOptions::new(binaries());
    options.spares = vec![SHARD];
    let mut cluster = cluster_with(options).await;
    let client = cluster.shard_client(SHARD);
    let load = Load::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.kill(2);
    add_and_catch_up(&mut cluster, &client, 7).await;
    let status = raftshop(&cluster, &["status"]);
    assert!(status.contains("members: voters 1, 2, 3; learners 7"), "status shows the live membership:\n{status}");
    let view = client.change_membership(change(Change::Promote(NodeIds { node_ids: vec![7] })), CHANGE_DEADLINE).await;
    assert_eq!(voters(&view.unwrap()), BTreeSet::from([1, 2, 3, 7]));
    let view = client.change_membership(change(Change::Remove(NodeIds { node_ids: vec![2] })), CHANGE_DEADLINE).await;
    let view = view.unwrap();
    assert_eq!(voters(&view), BTreeSet::from([1, 3, 7]));
    assert!(view.members.iter().all(|m| m.node_id != 2), "node 2 left the shard: {view:?}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The operator's view, and a hand-over to the new member, by the CLI.
    let transfer = raftshop(&cluster, &["member", "transfer-leader", "--shard", "even", "--to", "7"]);
    assert!(transfer.contains("leader node 7"), "{transfer}");
    let list = raftshop(&cluster, &["member", "list", "--shard", "even"]);
    let roles: Vec<(String, String)> = list
        .lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            Some((cells.first()?.to_string(), cells.get(2)?.to_string()))
        })
        .filter(|(node, _)| node.parse::<u64>().is_ok())
        .collect();
    let expected = [("1", "voter"), ("3", "voter"), ("7", "leader")].map(|(n, r)| (n.to_string(), r.to_string()));
    assert_eq!(roles, expected, "{list}");

    // A client whose config predates node 7 follows the redirects to it.
    let mut old_config = cluster.config().clone();
    old_config.nodes.retain(|n| n.id != 7);
    let old_client = ShardClient::new(&old_config, SHARD);
    let key = common::key_in(SHARD, "after-the-change");
    let write = Command::single(RowWrite::upsert(key.clone(), b"seen".to_vec()));
    let written = old_client.write(&write, CHANGE_DEADLINE).await.unwrap();
    assert!(matches!(written, CommandResult::Applied { .. }), "{written:?}");
    let row = old_client.get(&key, CHANGE_DEADLINE).await.unwrap().expect("the row");
    assert_eq!(row.value, b"seen");
    assert_eq!(old_client.leader_hint(), Some(7), "it found the leader its config does not list");

    load.finish_and_check(&cluster).await;
    common::converged(&cluster, SHARD, &[1, 3, 7], CHANGE_DEADLINE).await;
}

/// Runs `raftshop ARGS --config <the cluster's>`; its stdout, which must
/// report success.
fn raftshop(cluster: &LocalCluster, args: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(args)
        .arg("--config")
        .arg(cluster.config_path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "raftshop {args:?}: {stdout}{}", String::from_utf8_lossy(&output.stderr));
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_grows_to_five_voters_and_shrinks_back_under_load() {
    let mut options = ClusterOptions::new(binaries());
    options.spares = vec![SHARD, SHARD];
    let mut cluster = cluster_with(options).await;
    let client = cluster.shard_client(SHARD);
    let load = Load::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;

    add_and_catch_up(&mut cluster, &client, 7).await;
    add_and_catch_up(&mut cluster, &client, 8).await;
    let view = client.change_membership(change(Change::Promote(NodeIds { node_ids: vec![7, 8] })), CHANGE_DEADLINE);
    assert_eq!(voters(&view.await.unwrap()), BTreeSet::from([1, 2, 3, 7, 8]));
    common::converged(&cluster, SHARD, &[1, 2, 3, 7, 8], CHANGE_DEADLINE).await;

    // Shrink by two of the first members, whoever leads.
    let view = client.change_membership(change(Change::Remove(NodeIds { node_ids: vec![1, 2] })), CHANGE_DEADLINE);
    assert_eq!(voters(&view.await.unwrap()), BTreeSet::from([3, 7, 8]));
    tokio::time::sleep(Duration::from_secs(1)).await;

    load.finish_and_check(&cluster).await;
    common::converged(&cluster, SHARD, &[3, 7, 8], CHANGE_DEADLINE).await;
    let refused =
        client.change_membership(change(Change::Promote(NodeIds { node_ids: vec![9] })), CHANGE_DEADLINE).await;
    assert!(matches!(refused, Err(storage_node::client::ClientError::Refused { .. })), "{refused:?}");
}

/// Recovery from a lost majority: nodes 2 and 3 are SIGKILLed and their
/// data deleted; node 1, started with `--force-new-cluster`, becomes the
/// shard alone, takes nodes 7 and 8 as new members, and every write
/// acknowledged before the loss is readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_lost_its_majority_is_rebuilt_from_the_survivor() {
    let mut options = ClusterOptions::new(binaries());
    options.spares = vec![SHARD, SHARD];
    let mut cluster = cluster_with(options).await;
    let client = cluster.shard_client(SHARD);
    let mut acknowledged = Vec::new();
    for i in 0..40 {
        let key = common::key_in(SHARD, &format!("kept-{i}"));
        let write = Command::single(RowWrite::upsert(key.clone(), format!("v{i}").into_bytes()));
        client.write(&write, CHANGE_DEADLINE).await.unwrap();
        acknowledged.push((key, format!("v{i}")));
    }
    // Node 1 must hold every acknowledged write: let it catch up first, as
    // an operator would pick the member with the longest log.
    common::converged(&cluster, SHARD, &[1, 2, 3], CHANGE_DEADLINE).await;

    for id in [1, 2, 3] {
        cluster.kill(id);
    }
    for id in [2, 3] {
        std::fs::remove_dir_all(&cluster.config().node(id).unwrap().data_dir).unwrap();
    }
    cluster.start_node_with(1, &["--force-new-cluster"]).unwrap();
    let started = std::time::Instant::now();
    let view = loop {
        match client.membership(Duration::from_secs(2)).await {
            Ok(view) if view.leader_id == 1 => break view,
            other => assert!(started.elapsed() < CHANGE_DEADLINE, "node 1 does not lead alone: {other:?}"),
        }
    };
    assert_eq!(voters(&view), BTreeSet::from([1]), "{view:?}");
    let log = std::fs::read_to_string(cluster.dir().join("node-1.log")).unwrap();
    assert!(log.contains("FORCED A NEW CLUSTER"), "the node says what it did");

    add_and_catch_up(&mut cluster, &client, 7).await;
    add_and_catch_up(&mut cluster, &client, 8).await;
    let view = client.change_membership(change(Change::Promote(NodeIds { node_ids: vec![7, 8] })), CHANGE_DEADLINE);
    assert_eq!(voters(&view.await.unwrap()), BTreeSet::from([1, 7, 8]));
    for (key, value) in &acknowledged {
        let row = client.get(key, CHANGE_DEADLINE).await.unwrap();
        assert_eq!(row.map(|r| r.value), Some(value.clone().into_bytes()), "{key:?}");
    }
    common::converged(&cluster, SHARD, &[1, 7, 8], CHANGE_DEADLINE).await;
    // The shard commits again with a quorum of its new members.
    cluster.kill(1);
    let key = common::key_in(SHARD, "after-the-rebuild");
    client.write(&Command::single(RowWrite::upsert(key, b"new".to_vec())), CHANGE_DEADLINE).await.unwrap();
}
