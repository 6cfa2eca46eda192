//! The storage cluster under crashes, against real processes with real
//! disks: acknowledged writes survive leader kills (also a kill before the
//! leader's own log flush), a leader stopped with SIGTERM hands leadership
//! over before it exits, restarted nodes catch up (from the log, or by
//! snapshot when the log was purged; a follower killed in the middle of its
//! replication stream resumes), a whole cluster restarts with its data, a
//! restarted node waits out any leader lease it may have granted before it
//! votes, and a peer address that leads to the wrong node is refused, not
//! obeyed.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{binaries, cluster_with, STARTUP};
use raftshop::chaos::proxy::LinkProxy;
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use raftshop_proto::store::raft_client::RaftClient;
use storage_node::client::ShardClient;
use storage_node::raft::log_store::LEADER_FLUSH_DELAY_ENV;
use storage_node::{Command, CommandResult, RowKey, RowWrite, Shard};

const WRITE_DEADLINE: Duration = Duration::from_secs(5);

/// Keys of `shard`, `count` of them.
fn keys_in(shard: Shard, count: usize) -> Vec<String> {
    (0..).map(|i| format!("key-{i}")).filter(|k| Shard::of_key(k) == shard).take(count).collect()
}

fn put(key: &str, value: String) -> Command {
    Command::single(RowWrite::upsert(RowKey::Kv(key.into()), value.into_bytes()))
}

/// Writes unique values round-robin over `keys` until `stop`; records the
/// last acknowledged value per key and when each was acknowledged.
async fn writer(
    client: ShardClient,
    keys: Vec<String>,
    stop: Instant,
    acked: Arc<Mutex<Vec<(Instant, String, String)>>>,
) {
    let mut n = 0u64;
    while Instant::now() < stop {
        n += 1;
        let key = &keys[n as usize % keys.len()];
        let value = format!("v{n}");
        if let Ok(CommandResult::Applied { .. }) = client.write(&put(key, value.clone()), Duration::from_secs(2)).await
        {
            acked.lock().unwrap().push((Instant::now(), key.clone(), value));
        }
    }
}

/// Every key of `shard` holds its last acknowledged value in `acked`
/// (linearizable reads).
async fn last_acknowledged_values_hold(cluster: &LocalCluster, shard: Shard, acked: &[(Instant, String, String)]) {
    let mut last: BTreeMap<&str, &str> = BTreeMap::new();
    for (_, key, value) in acked {
        last.insert(key, value);
    }
    let client = cluster.shard_client(shard);
    for (key, value) in last {
        let row = client.get(&RowKey::Kv(key.into()), WRITE_DEADLINE).await.unwrap();
        assert_eq!(row.map(|r| String::from_utf8(r.value).unwrap()).as_deref(), Some(value), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_a_leader_kill_and_the_node_catches_up() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = Shard::Even;
    let keys = keys_in(shard, 20);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(6);
    let task = tokio::spawn(writer(cluster.shard_client(shard), keys.clone(), stop, acked.clone()));

    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let killed_at = Instant::now();
    cluster.kill(old_leader);
    task.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let before = acked.iter().filter(|(at, ..)| *at < killed_at).count();
    let after = acked.iter().filter(|(at, ..)| *at > killed_at).count();
    assert!(before > 10 && after > 10, "writes before ({before}) and after ({after}) the kill");
    let new_leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    assert_ne!(new_leader, old_leader);

    last_acknowledged_values_hold(&cluster, shard, &acked).await;

    // The killed node restarts, catches up and holds the same state.
    cluster.start_node(old_leader).unwrap();
    common::converged(&cluster, shard, &cluster.members(shard), STARTUP).await;
}

/// openraft 0.10 streams AppendEntries to each follower on one long-lived
/// gRPC call with many requests in flight. A follower SIGKILLed in the
/// middle of that stream, and started again while writes go on, gets a new
/// stream from where its log ends: the shard never stops taking writes
/// (two of three hold the quorum), and all three end in the same state,
/// holding every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_restarted_mid_stream_resumes() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = Shard::Odd;
    let keys = keys_in(shard, 40);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(6);
    // Several writers keep requests in flight on the followers' streams.
    let writers: Vec<_> = keys
        .chunks(10)
        .map(|chunk| tokio::spawn(writer(cluster.shard_client(shard), chunk.to_vec(), stop, acked.clone())))
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let follower = *cluster.members(shard).iter().find(|id| **id != leader).expect("a follower");
    let killed_at = Instant::now();
    cluster.kill(follower);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let restarted_at = Instant::now();
    cluster.start_node(follower).unwrap();
    for task in writers {
        task.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let while_down = acked.iter().filter(|(at, ..)| (killed_at..restarted_at).contains(at)).count();
    let after = acked.iter().filter(|(at, ..)| *at > restarted_at).count();
    assert!(while_down > 10 && after > 10, "writes while the follower was down ({while_down}) and after ({after})");
    common::converged(&cluster, shard, &cluster.members(shard), STARTUP).await;
    last_acknowledged_values_hold(&cluster, shard, &acked).await;
}

/// How long the test hook holds back a leader's flush of its own entries.
const HELD_BACK: Duration = Duration::from_secs(10);

/// openraft 0.10 replicates an entry as soon as the leader has submitted it
/// to its log, and counts the leader toward the quorum only once its own
/// flush is done. Here the leader's flushes are held back (the test hook
/// keeps its new entries in memory only), so every write is acknowledged on
/// the followers' syncs alone; then the leader is SIGKILLed, losing its
/// copy of all of them as in a power cut. Nothing acknowledged may be lost,
/// and the old leader, whose applied state is now ahead of its own log,
/// must restart and converge with the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_before_its_own_flush_loses_no_acknowledged_write() {
    let mut options = ClusterOptions::new(binaries());
    options.node_env.push((LEADER_FLUSH_DELAY_ENV.into(), HELD_BACK.as_millis().to_string()));
    let mut cluster = cluster_with(options).await;
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let log = std::fs::read_to_string(cluster.dir().join(format!("node-{leader}.log"))).unwrap();
    assert!(log.contains("TEST HOOK"), "the hook is on in the leader:\n{log}");

    // Every entry the leader appends from here on is flushed no sooner
    // than `held_until`.
    let held_until = Instant::now() + HELD_BACK;
    let client = cluster.shard_client(shard);
    let mut acked = Vec::new();
    for (i, key) in keys_in(shard, 10).iter().cycle().take(40).enumerate() {
        let value = format!("held-{i}");
        let result = client.write(&put(key, value.clone()), WRITE_DEADLINE).await.unwrap();
        assert!(matches!(result, CommandResult::Applied { .. }), "{result:?}");
        acked.push((Instant::now(), key.clone(), value));
    }
    cluster.kill(leader);
    assert!(
        Instant::now() < held_until,
        "the writes took longer than {HELD_BACK:?}, so the leader may have flushed some; nothing was shown"
    );

    cluster.start_node(leader).unwrap();
    last_acknowledged_values_hold(&cluster, shard, &acked).await;
    common::converged(&cluster, shard, &cluster.members(shard), STARTUP).await;
}

/// A planned stop of a leader hands leadership to a follower first: the
/// successor it names in its log leads afterwards, at a higher term, the
/// process exits 0, and writes under way lose nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_stopped_with_sigterm_hands_leadership_over_first() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = Shard::Odd;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let client = cluster.shard_client(shard);
    let term_before = client.status(leader, WRITE_DEADLINE).await.unwrap().term;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Instant::now() + Duration::from_secs(4);
    let writer = tokio::spawn(writer(cluster.shard_client(shard), keys_in(shard, 20), stop, acked.clone()));

    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped_at = Instant::now();
    assert!(cluster.stop(leader).unwrap().success(), "a clean stop exits 0");
    writer.await.unwrap();

    let log = std::fs::read_to_string(cluster.dir().join(format!("node-{leader}.log"))).unwrap();
    let handed = log.lines().find(|l| l.contains("handed leadership over")).unwrap_or_else(|| panic!("{log}"));
    let successor = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    assert!(handed.contains(&format!("leader={successor}")), "{handed}");
    let term_after = client.status(successor, WRITE_DEADLINE).await.unwrap().term;
    assert!(term_after > term_before, "terms {term_before} -> {term_after}");

    let acked = acked.lock().unwrap().clone();
    let after = acked.iter().filter(|(at, ..)| *at > stopped_at).count();
    assert!(after > 10, "writes went on after the stop: {after}");
    // The one writer waits for each answer, so its longest pause between
    // two acknowledgements is how long the shard could not write.
    let longest_pause = acked.windows(2).map(|pair| pair[1].0 - pair[0].0).max();
    eprintln!("longest pause between acknowledged writes: {longest_pause:?}");
    last_acknowledged_values_hold(&cluster, shard, &acked).await;
}

/// A peer's address that leads back to the node itself wins it no election.
/// (A CI run had a link proxy take node 6's port and forward to node 5, so
/// node 5's vote requests to "node 6" reached node 5, which granted them
/// and led alone.) Here node 5's config sends node 6's traffic through a
/// proxy to node 5, with nodes 4 and 6 down: node 5 refuses the messages
/// addressed to node 6, never leads, and its log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_address_leading_back_to_the_node_itself_wins_it_no_election() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    cluster.wait_for_leader(Shard::Odd, STARTUP).await.unwrap();
    for id in [4, 5, 6] {
        cluster.kill(id);
    }
    let back_to_five = LinkProxy::start(cluster.config().node(5).unwrap().addr).await.unwrap();
    let path = cluster.node_config_path(5);
    let six = cluster.config().node(6).unwrap().addr.to_string();
    let config = std::fs::read_to_string(&path).unwrap();
    assert!(config.contains(&six), "node 5's config names node 6 at {six}");
    std::fs::write(&path, config.replace(&six, &back_to_five.addr().to_string())).unwrap();
    cluster.start_node(5).unwrap();

    let client = cluster.shard_client(Shard::Odd);
    let until = Instant::now() + Duration::from_secs(4);
    let mut answers = 0;
    while Instant::now() < until {
        if let Ok(status) = client.status(5, Duration::from_millis(500)).await {
            answers += 1;
            assert_ne!(status.role, "leader", "node 5 led on its own votes: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answers > 10, "node 5 was up and answering: {answers} answers");
    let log = std::fs::read_to_string(cluster.dir().join("node-5.log")).unwrap();
    assert!(log.contains("this is node 5, not node 6"), "node 5's log names the misrouting:\n{log}");
}

/// Sends node `id` a pre-vote for a candidate of a far higher term.
async fn pre_vote(cluster: &LocalCluster, id: u64) -> Result<(), tonic::Status> {
    let call = common::far_vote(id, Some(&cluster.config().cluster_id));
    let channel = common::channel(cluster.config().node(id).unwrap().addr).await;
    RaftClient::new(channel).pre_vote(call).await.map(drop)
}

/// A restarted node grants no vote for a leader lease: before it stopped,
/// it may have acknowledged the heartbeat that gave the leader its lease,
/// on which the leader answers reads without asking anyone. (Long election
/// timeouts make the lease 3 s here, so the test does not race the node's
/// start.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_node_grants_no_vote_within_a_leader_lease() {
    let mut options = ClusterOptions::new(binaries());
    options.raft.election_timeout_min_ms = 1_500;
    options.raft.election_timeout_max_ms = 3_000;
    let mut cluster = cluster_with(options).await;
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let follower = cluster.members(shard).into_iter().find(|id| *id != leader).unwrap();
    pre_vote(&cluster, follower).await.expect("a running follower answers a pre-vote");

    cluster.kill(follower);
    cluster.start_node(follower).unwrap();
    let client = cluster.shard_client(shard);
    let started = Instant::now();
    while client.status(follower, Duration::from_millis(200)).await.is_err() {
        assert!(started.elapsed() < STARTUP, "node {follower} did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refused = pre_vote(&cluster, follower).await.expect_err("no vote right after the restart");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("grants no vote"), "{refused:?}");

    tokio::time::sleep(Duration::from_secs(3)).await;
    pre_vote(&cluster, follower).await.expect("votes again after the lease");
    assert_eq!(cluster.wait_for_leader(shard, STARTUP).await.unwrap(), leader, "the leader kept its place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_behind_the_purged_log_catches_up_by_snapshot() {
    let mut options = ClusterOptions::new(binaries());
    options.raft.snapshot_after_entries = 50;
    options.raft.keep_entries_after_snapshot = 10;
    let mut cluster = cluster_with(options).await;
    let shard = Shard::Odd;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let follower = cluster.members(shard).into_iter().find(|id| *id != leader).unwrap();
    assert!(cluster.stop(follower).unwrap().success(), "a clean stop exits 0");

    let client = cluster.shard_client(shard);
    let keys = keys_in(shard, 30);
    // openraft purges only while no replication attempt to the stopped
    // follower holds the range, so the purge may lag the snapshots: keep
    // writing until it has happened.
    let mut status = client.status(leader, WRITE_DEADLINE).await.unwrap();
    for (i, key) in keys.iter().cycle().take(4000).enumerate() {
        let result = client.write(&put(key, format!("v{i}")), WRITE_DEADLINE).await.unwrap();
        assert!(matches!(result, CommandResult::Applied { .. }), "{result:?}");
        if i >= 400 && i % 50 == 0 {
            status = client.status(leader, WRITE_DEADLINE).await.unwrap();
            if status.purged_index > 50 {
                break;
            }
        }
    }
    assert!(status.purged_index > 50, "the leader purged its log behind a snapshot: {status:?}");

    cluster.start_node(follower).unwrap();
    let running: Vec<u64> = cluster.members(shard);
    let (applied, _) = common::converged(&cluster, shard, &running, STARTUP).await;
    let caught_up = client.status(follower, WRITE_DEADLINE).await.unwrap();
    assert!(caught_up.snapshot_index > 0, "the follower installed a snapshot: {caught_up:?}");
    assert!(caught_up.applied_index >= applied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_cluster_restarts_with_its_data() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let mut written = Vec::new();
    for shard in Shard::ALL {
        let client = cluster.shard_client(shard);
        for key in keys_in(shard, 25) {
            let value = format!("{key}-value");
            client.write(&put(&key, value.clone()), WRITE_DEADLINE).await.unwrap();
            written.push((shard, key, value));
        }
    }
    for id in cluster.node_ids() {
        assert!(cluster.stop(id).unwrap().success(), "node {id} stops cleanly");
    }
    for id in cluster.node_ids() {
        cluster.start_node(id).unwrap();
    }
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    }
    for (shard, key, value) in written {
        let row = cluster.shard_client(shard).get(&RowKey::Kv(key.clone()), WRITE_DEADLINE).await.unwrap();
        assert_eq!(row.map(|r| String::from_utf8(r.value).unwrap()), Some(value), "{key} survived the restart");
    }
}
