//! Mutual TLS inside the cluster, against real processes: with `[tls]`,
//! nodes, portals and this test (an operator) work as before, and a node
//! refuses a plaintext caller, a certificate of another CA, an expired
//! certificate of its own CA, and a portal's certificate sending a Raft
//! vote; the shard keeps its leader and term throughout.

mod common;

use std::time::Duration;

use common::tls::{showing, status_over, tls_endpoint};
use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::ClusterOptions;
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::{Client, Id};
use raftshop_proto::store::raft_client::RaftClient;
use storage_node::tls::{self, Role};
use storage_node::Shard;
use tonic::transport::Endpoint;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_cluster_ca_and_the_right_role_get_in() {
    let mut options = ClusterOptions::new(binaries());
    options.tls = true;
    let mut cluster = cluster_with(options).await;
    let certs = cluster.config().tls.clone().expect("the cluster has [tls]").dir;
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let client = cluster.shard_client(shard);
    let term = client.status(leader, STARTUP).await.unwrap().term;
    let addr = cluster.config().node(leader).unwrap().addr;

    // The portal reaches the nodes over TLS: a client goes in and comes out.
    cluster.start_portal(raftshop::local_cluster::PortalKind::Admin).unwrap();
    let portal = cluster.wait_for_portal(raftshop::local_cluster::PortalKind::Admin, STARTUP).await.unwrap();
    let mut admin = AdminPortalClient::new(common::channel(portal).await);
    let created = admin.create_client(Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() }).await.unwrap();
    assert_eq!(created.get_ref().error, 0, "{:?}", created.get_ref());
    assert_eq!(admin.retrieve_client(Id { id: "2".into() }).await.unwrap().get_ref().cid, "2");

    // The operator's own certificate works directly too.
    let operator = tls::client_config(&certs, Role::Operator).unwrap();
    status_over(tls_endpoint(addr, operator)).await.expect("an operator may ask a node's status");

    // Plaintext: refused at the connection.
    let plain = status_over(Endpoint::from_shared(format!("http://{addr}")).unwrap()).await;
    assert!(plain.is_err(), "a plaintext call must not be served");

    // A certificate of another CA: the handshake fails.
    let other = tempfile::tempdir().unwrap();
    tls::init(other.path()).unwrap();
    let (cert, key) = tls::role_files(other.path(), Role::Operator);
    let stranger = showing(&certs, std::fs::read(cert).unwrap(), std::fs::read(key).unwrap());
    let refused = status_over(tls_endpoint(addr, stranger)).await;
    assert!(refused.is_err(), "a certificate of another CA must not get in");

    // An expired certificate of the cluster's own CA: refused too.
    let (cert, key) = tls::issue_from(&certs, Role::Operator, -30, -1).unwrap();
    let expired = showing(&certs, cert, key);
    let refused = status_over(tls_endpoint(addr, expired)).await;
    assert!(refused.is_err(), "an expired certificate must not get in");
    // A fresh one from the same CA does: the refusal above was the date.
    let (cert, key) = tls::issue_from(&certs, Role::Operator, -1, 30).unwrap();
    let fresh = showing(&certs, cert, key);
    status_over(tls_endpoint(addr, fresh)).await.expect("a valid certificate of the CA gets in");

    // A portal's certificate sending a Raft vote for a far higher term.
    let follower = cluster.members(shard).into_iter().find(|id| *id != leader).unwrap();
    let follower_addr = cluster.config().node(follower).unwrap().addr;
    let portal_tls = tls::client_config(&certs, Role::Portal).unwrap();
    let channel = tls_endpoint(follower_addr, portal_tls).connect().await.unwrap();
    let call = common::far_vote(follower, Some(&cluster.config().cluster_id));
    let refused = RaftClient::new(channel).vote(call).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("a portal certificate may not call"), "{refused:?}");

    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = client.status(leader, STARTUP).await.unwrap();
    assert_eq!((after.leader_id, after.term), (Some(leader), term), "the shard kept its leader and term");
}

/// A node and a portal whose `[tls] dir` holds no certificates stop at
/// once, each with a sentence naming the file it missed.
#[tokio::test]
async fn missing_certificates_stop_a_node_and_a_portal_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = raftshop::local_cluster::local_config(dir.path(), storage_node::ClusterConfig::embedded().raft)
        .expect("free ports");
    let missing = dir.path().join("no-certs");
    config.tls = Some(storage_node::config::TlsConfig { dir: missing.clone() });
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let run = |binary: &str, args: Vec<String>| {
        let command = tokio::process::Command::new(binary)
            .args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        async move { tokio::time::timeout(STARTUP, command).await.expect("it exits by itself").expect("it runs") }
    };
    let config_arg = path.to_str().unwrap().to_owned();
    let node =
        run(env!("CARGO_BIN_EXE_storage-node"), vec!["--id".into(), "1".into(), "--config".into(), config_arg.clone()])
            .await;
    let portal = run(env!("CARGO_BIN_EXE_admin-portal"), vec!["--config".into(), config_arg]).await;
    for (name, output) in [("node", node), ("portal", portal)] {
        assert!(!output.status.success(), "{name} must not start: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("cannot use the cluster's certificates"), "{name}: {stderr}");
        assert!(
            stderr.contains(&missing.join("ca.pem").display().to_string()),
            "{name} names the first file it missed: {stderr}"
        );
    }
}
