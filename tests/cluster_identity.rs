//! Cluster identity against real processes: a Raft message of another
//! cluster (or of none) is refused and changes nothing, and a node whose
//! data directory was made for another cluster does not start.

mod common;

use std::time::{Duration, Instant};

use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::ClusterOptions;
use raftshop_proto::store::raft_client::RaftClient;
use storage_node::Shard;

/// Sends node `addr`/`id` a vote request for a candidate of a far higher
/// term, naming cluster `cluster` (or none).
async fn vote(addr: std::net::SocketAddr, id: u64, cluster: Option<&str>) -> Result<(), tonic::Status> {
    RaftClient::new(common::channel(addr).await).vote(common::far_vote(id, cluster)).await.map(drop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_another_cluster_is_refused_and_a_data_directory_of_another_cluster_not_used() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let client = cluster.shard_client(shard);
    let term = client.status(leader, STARTUP).await.unwrap().term;
    let follower = cluster.members(shard).into_iter().find(|id| *id != leader).unwrap();
    let addr = cluster.config().node(follower).unwrap().addr;

    let foreign = vote(addr, follower, Some("someone-else")).await.unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::PermissionDenied, "{foreign:?}");
    assert!(foreign.message().contains("from cluster \"someone-else\""), "{foreign:?}");
    let anonymous = vote(addr, follower, None).await.unwrap_err();
    assert!(anonymous.message().contains("names no cluster"), "{anonymous:?}");
    let status = client.status(leader, STARTUP).await.unwrap();
    assert_eq!((status.role.as_str(), status.term), ("leader", term), "the refused votes changed nothing");

    // The follower's data directory remembers its cluster.
    cluster.stop(follower).unwrap();
    let path = cluster.node_config_path(follower);
    let config = std::fs::read_to_string(&path).unwrap();
    let own = format!("cluster_id = \"{}\"", cluster.config().cluster_id);
    assert!(config.contains(&own), "{config}");
    std::fs::write(&path, config.replace(&own, "cluster_id = \"someone-else\"")).unwrap();
    cluster.start_node(follower).unwrap();
    let give_up = Instant::now() + STARTUP;
    while cluster.is_running(follower) {
        assert!(Instant::now() < give_up, "node {follower} started on another cluster's data directory");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = std::fs::read_to_string(cluster.dir().join(format!("node-{follower}.log"))).unwrap();
    assert!(
        log.contains(&format!("belongs to cluster \"{}\"", cluster.config().cluster_id))
            && log.contains("\"someone-else\""),
        "node {follower}'s log says why it stopped:\n{log}"
    );
}
