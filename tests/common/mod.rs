//! Shared set-up of the integration tests: the binaries cargo built for
//! this package, and a cluster with or without portals.

#![allow(dead_code)]

use std::time::Duration;

use raftshop::local_cluster::{Binaries, ClusterOptions, LocalCluster, PortalKind};
use storage_node::Shard;

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

/// Six nodes with a leader in each shard.
pub async fn cluster_with(options: ClusterOptions) -> LocalCluster {
    let cluster = LocalCluster::start(options).await.expect("the cluster starts");
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    }
    cluster
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
