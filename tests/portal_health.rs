//! A portal's grpc.health.v1 answers are honest: NOT_SERVING within a few
//! seconds of a shard losing its quorum, SERVING again once it has a leader,
//! for both names of its API and the server as a whole.

mod common;

use std::time::Duration;

use common::{channel, shop_cluster};
use portals::health::{self, HealthStatus};
use raftshop::local_cluster::PortalKind;
use storage_node::Shard;

/// How long the health may take to follow the shards.
const FOLLOW: Duration = Duration::from_secs(8);

/// Polls every name `kind`'s portal at `addr` reports (both API names, the
/// feed, `""`) until all say SERVING (or all do not), or panics after
/// `within`; returns how long it took.
async fn wait_for(addr: std::net::SocketAddr, kind: PortalKind, serving: bool, within: Duration) -> Duration {
    let started = tokio::time::Instant::now();
    let ch = channel(addr).await;
    loop {
        let mut all = true;
        for name in kind.health_names() {
            let status = health::check(ch.clone(), &name, Duration::from_secs(2)).await;
            all &= matches!(status, Ok(HealthStatus::Serving)) == serving;
        }
        if all {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{} did not turn serving={serving} within {within:?}", kind.name());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_shards_quorum() {
    let mut cluster = shop_cluster().await;
    let admin = cluster.config().portals.admin;
    let order = cluster.config().portals.order;
    wait_for(admin, PortalKind::Admin, true, FOLLOW).await;
    wait_for(order, PortalKind::Order, true, FOLLOW).await;

    let members = cluster.members(Shard::Odd);
    let (a, b) = (members[0], members[1]);
    cluster.kill(a);
    cluster.kill(b);
    let took = wait_for(admin, PortalKind::Admin, false, FOLLOW).await;
    eprintln!("admin portal NOT_SERVING {took:?} after shard odd lost two nodes");
    wait_for(order, PortalKind::Order, false, FOLLOW).await;

    cluster.start_node(a).unwrap();
    cluster.start_node(b).unwrap();
    cluster.wait_for_leader(Shard::Odd, Duration::from_secs(30)).await.unwrap();
    let took = wait_for(admin, PortalKind::Admin, true, Duration::from_secs(30)).await;
    eprintln!("admin portal SERVING again {took:?} after the nodes came back");
    wait_for(order, PortalKind::Order, true, FOLLOW).await;
}
