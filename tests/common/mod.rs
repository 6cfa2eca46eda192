//! Shared set-up of the integration tests: the binaries cargo built for
//! this package, and a cluster with or without portals.

#![allow(dead_code)]

pub mod auth;
pub mod tls;

use std::time::Duration;

use raftshop::local_cluster::{Binaries, ClusterOptions, LocalCluster, PortalKind};
use storage_node::{Command, CommandResult, RowKey, RowWrite, Shard};

/// How long one check of [`all_serve_on`] may take.
const SERVE_DEADLINE: Duration = Duration::from_secs(20);

/// How long set-up waits for leaders and portals.
pub const STARTUP: Duration = Duration::from_secs(30);

/// The executables of this package, built by cargo for the tests.
pub fn binaries() -> Binaries {
    Binaries {
        storage_node: env!("CARGO_BIN_EXE_storage-node").into(),
        admin_portal: Some(env!("CARGO_BIN_EXE_admin-portal").into()),
        order_portal: Some(env!("CARGO_BIN_EXE_order-portal").into()),
    }
}

/// Six nodes with a leader in each shard, their state in the newest layout
/// their leaders know.
pub async fn cluster_with(options: ClusterOptions) -> LocalCluster {
    let cluster = LocalCluster::start(options).await.expect("the cluster starts");
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    }
    layout_settled(&cluster).await;
    cluster
}

/// Waits until each shard's state is in the newest layout its leader
/// knows (`storage_node::state::layout`). A new cluster switches within a second or so of
/// electing its leaders (`UseLayout`, an entry that changes the state
/// digest); a test comparing digests before and after something must not
/// take that switch for a change it made.
pub async fn layout_settled(cluster: &LocalCluster) {
    let give_up = std::time::Instant::now() + STARTUP;
    for shard in Shard::ALL {
        loop {
            let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
            let status = cluster.shard_client(shard).status(leader, Duration::from_secs(1)).await;
            if status.is_ok_and(|s| s.layout >= s.newest_layout) {
                break;
            }
            assert!(std::time::Instant::now() < give_up, "shard {shard} never moved to its newest layout");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Six nodes and both portals, all ready.
pub async fn shop_cluster() -> LocalCluster {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    for kind in [PortalKind::Admin, PortalKind::Order] {
        cluster.start_portal(kind).unwrap();
        cluster.wait_for_portal(kind, STARTUP).await.unwrap();
    }
    cluster
}

/// A gRPC channel to `addr`.
pub async fn channel(addr: std::net::SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

/// A Raft vote (or pre-vote) request for candidate 99 at term 1,000, far
/// above any test cluster's, addressed to node `id` and naming cluster
/// `cluster` (or none): what a rogue or misrouted sender would send.
pub fn far_vote(id: u64, cluster: Option<&str>) -> tonic::Request<raftshop_proto::store::RaftPayload> {
    use storage_node::raft::network::{ADDRESSEE_HEADER, CLUSTER_HEADER};
    let request: openraft::raft::VoteRequest<storage_node::types::TypeConfig> =
        openraft::raft::VoteRequest::new(openraft::Vote::new(1_000, 99), None);
    let payload = raftshop_proto::store::RaftPayload { data: storage_node::codec::encode(&request) };
    let mut call = tonic::Request::new(payload);
    call.metadata_mut().insert(ADDRESSEE_HEADER, id.into());
    if let Some(cluster) = cluster {
        call.metadata_mut().insert(CLUSTER_HEADER, cluster.parse().expect("a cluster id is valid metadata"));
    }
    call
}

/// A key of the kv table that shard `shard` owns.
pub fn key_in(shard: Shard, name: &str) -> RowKey {
    (0..).map(|i| format!("{name}-{i}")).find(|k| Shard::of_key(k) == shard).map(RowKey::Kv).expect("a key")
}

/// Every node process is alive and each shard takes a write and a read.
pub async fn all_serve_on(cluster: &mut LocalCluster, case: &str) {
    for id in cluster.node_ids() {
        assert!(cluster.is_running(id), "node {id} died after {case}\n{}", cluster.log_tails(30));
    }
    for shard in Shard::ALL {
        let client = cluster.shard_client(shard);
        let key = key_in(shard, "health");
        let write = Command::single(RowWrite::upsert(key.clone(), case.as_bytes().to_vec()));
        let written = client.write(&write, SERVE_DEADLINE).await;
        assert!(matches!(written, Ok(CommandResult::Applied { .. })), "shard {shard} takes no write after {case}");
        let row = client.get(&key, SERVE_DEADLINE).await.expect("a read").expect("the row");
        assert_eq!(row.value, case.as_bytes(), "shard {shard} reads back after {case}");
    }
}

/// Waits up to `within` until every one of `members` of `shard` reports the
/// same applied index and state digest; returns them.
pub async fn converged(cluster: &LocalCluster, shard: Shard, members: &[u64], within: Duration) -> (u64, u64) {
    let client = cluster.shard_client(shard);
    let give_up = std::time::Instant::now() + within;
    loop {
        let mut seen = Vec::new();
        for id in members {
            if let Ok(status) = client.status(*id, Duration::from_secs(1)).await {
                seen.push((status.applied_index, status.state_digest));
            }
        }
        if seen.len() == members.len() && seen.iter().all(|s| *s == seen[0]) {
            return seen[0];
        }
        let now = std::time::Instant::now();
        assert!(now < give_up, "members {members:?} did not converge: {seen:?}\n{}", cluster.log_tails(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
