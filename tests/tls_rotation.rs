//! Certificate rotation without a restart, against real processes: new
//! certificates of a new CA replace the files of `[tls] dir`, every node
//! and the portal get SIGHUP, and from then on every node takes the new CA
//! and refuses the old one. Nodes that never restarted reach a restarted
//! peer, and the portal reaches a restarted shard, which only works with
//! their new certificates. (Its own test binary: a process has one TLS
//! client side, and this one changes it.)

mod common;

use std::time::{Duration, Instant};

use common::tls::{status_over, tls_endpoint};
use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::{ClusterOptions, PortalKind};
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::Client;
use storage_node::tls::{self, Role};
use storage_node::Shard;
use tonic::transport::Channel;

/// Creates client `cid` through the portal, trying again until the shop
/// answers success or `STARTUP` has passed; the last answer otherwise.
async fn create_until_done(admin: &mut AdminPortalClient<Channel>, cid: u64) -> Result<(), String> {
    let since = Instant::now();
    loop {
        let client = Client { cid: cid.to_string(), data: r#"{"name":"Ana"}"#.into() };
        let answer = match admin.create_client(client).await {
            Ok(reply) if reply.get_ref().error == 0 => return Ok(()),
            Ok(reply) => format!("{:?}", reply.into_inner()),
            Err(status) => format!("{status:?}"),
        };
        if since.elapsed() > STARTUP {
            return Err(answer);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_certificates_and_the_old_ca_is_refused() {
    let mut options = ClusterOptions::new(binaries());
    options.tls = true;
    let mut cluster = cluster_with(options).await;
    let certs = cluster.config().tls.clone().expect("the cluster has [tls]").dir;
    cluster.start_portal(PortalKind::Admin).unwrap();
    let portal = cluster.wait_for_portal(PortalKind::Admin, STARTUP).await.unwrap();
    let mut admin = AdminPortalClient::new(common::channel(portal).await);
    create_until_done(&mut admin, 2).await.expect("the portal serves before the rotation");

    // A new CA and certificates replace the files; every process is told.
    let old_operator = tls::client_config(&certs, Role::Operator).unwrap();
    let fresh = tempfile::tempdir().unwrap();
    tls::init(fresh.path()).unwrap();
    for entry in std::fs::read_dir(fresh.path()).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), certs.join(entry.file_name())).unwrap();
    }
    let new_operator = tls::client_config(&certs, Role::Operator).unwrap();
    cluster.hang_up_all();
    tls::reload_clients().expect("this test's own client side reads the new files");

    // Every node takes the new CA and refuses the old one.
    for id in cluster.node_ids() {
        let addr = cluster.config().node(id).unwrap().addr;
        let since = Instant::now();
        while let Err(why) = status_over(tls_endpoint(addr, new_operator.clone())).await {
            assert!(since.elapsed() < STARTUP, "node {id} does not take the new CA: {why}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = status_over(tls_endpoint(addr, old_operator.clone())).await;
        assert!(refused.is_err(), "node {id} must refuse a certificate of the old CA");
    }

    // The nodes' client sides: node 1 restarts knowing only the new CA, and
    // the leader, which never restarted, must reach it to bring it up to
    // date with a write made after the restart.
    cluster.kill(1);
    cluster.start_node(1).unwrap();
    // The portal's client side: the whole odd shard restarts, so the portal
    // must open new connections, with its new certificate, to write there.
    for id in cluster.members(Shard::Odd) {
        cluster.kill(id);
        cluster.start_node(id).unwrap();
    }
    cluster.wait_for_leader(Shard::Odd, STARTUP).await.unwrap();
    create_until_done(&mut admin, 3).await.expect("the portal writes to the restarted odd shard");
    create_until_done(&mut admin, 4).await.expect("the portal writes to the even shard");

    let even = cluster.shard_client(Shard::Even);
    let leader = cluster.wait_for_leader(Shard::Even, STARTUP).await.unwrap();
    let target = even.status(leader, STARTUP).await.unwrap().applied_index;
    let since = Instant::now();
    loop {
        let applied = even.status(1, STARTUP).await.map(|s| s.applied_index).unwrap_or(0);
        if applied >= target {
            break;
        }
        assert!(since.elapsed() < STARTUP, "node 1 did not catch up: applied {applied} of {target}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
