//! The portals' API over TLS (`[auth] tls = true`), against real
//! processes: a plaintext caller is refused at the connection; over TLS a
//! call needs a user, known by a token or by a user's certificate of the
//! cluster's CA (`raftshop user add --cert`), whose roles then apply as
//! with a token, and only the certificate recorded for the user counts; a
//! node refuses a user's certificate; the CLI and `raftshop status` reach
//! such portals. (Its own
//! test binary: a process has one TLS client side towards the nodes.)

mod common;

use common::auth::{add_user, code_of, raftshop, with};
use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::{ClusterOptions, PortalKind};
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Client, Id, Order};
use tonic::transport::Endpoint;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_user_certificate_or_token_gets_in_and_plaintext_does_not() {
    let options = ClusterOptions { tls: true, auth: true, ..ClusterOptions::new(binaries()) };
    let mut cluster = cluster_with(options).await;
    let config = cluster.config().clone();
    let config_path = cluster.config_path();
    let config_arg = config_path.to_str().unwrap();
    add_user(&cluster, "ana", "admin", &["--cert"]).await;
    let clerk = add_user(&cluster, "bo", "clerk", &[]).await;
    let (ana_pem, ana_key) = (cluster.dir().join("ana.user.pem"), cluster.dir().join("ana.user.key"));
    for kind in [PortalKind::Admin, PortalKind::Order] {
        cluster.start_portal(kind).unwrap();
        cluster.wait_for_portal(kind, STARTUP).await.expect("the portal serves over TLS");
    }
    let (admin_addr, order_addr) = (config.portals.admin, config.portals.order);

    // Plaintext: refused at the connection.
    let plain = Endpoint::from_shared(format!("http://{admin_addr}")).unwrap();
    let mut plain = AdminPortalClient::new(plain.connect_lazy());
    let refused = plain.retrieve_client(Id { id: "2".into() }).await.unwrap_err();
    // (The TLS server reads the plaintext HTTP/2 preface as garbage.)
    assert!(matches!(refused.code(), Code::Unavailable | Code::Unknown), "a transport failure: {refused:?}");

    // Over TLS with ana's certificate and no token: her role, admin, holds.
    let tls = |addr, user| storage_node::endpoint::portal_endpoint(addr, &config, user).unwrap().connect_lazy();
    let mut as_ana = AdminPortalClient::new(tls(admin_addr, Some((ana_pem.as_path(), ana_key.as_path()))));
    let ana = Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(code_of(as_ana.create_client(ana).await), Code::Ok);
    let mut ana_orders = OrderPortalClient::new(tls(order_addr, Some((ana_pem.as_path(), ana_key.as_path()))));
    let order = || Order { oid: "10".into(), cid: "2".into(), data: "[]".into() };
    let denied = ana_orders.create_order(order()).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().starts_with("user ana (admin) may not call"), "{denied:?}");

    // Over TLS without a certificate: a token, or nothing gets in.
    let mut anonymous = OrderPortalClient::new(tls(order_addr, None));
    let retrieve = || Id { id: "10".into() };
    assert_eq!(code_of(anonymous.retrieve_order(retrieve()).await), Code::Unauthenticated);
    assert_eq!(code_of(anonymous.retrieve_order(with(retrieve(), Some(&clerk))).await), Code::Ok);

    // A certificate of the CA that names no user (a node's) is no user.
    let certs = config.tls.as_ref().unwrap().dir.clone();
    let (node_pem, node_key) = storage_node::tls::role_files(&certs, storage_node::tls::Role::Node);
    let mut as_node = AdminPortalClient::new(tls(admin_addr, Some((node_pem.as_path(), node_key.as_path()))));
    assert_eq!(code_of(as_node.retrieve_client(Id { id: "2".into() }).await), Code::Unauthenticated);

    // A user's certificate is for the portals: a node refuses it at the
    // handshake, since it names no node, portal or operator role.
    let node_addr = config.nodes[0].addr;
    let user_tls = common::tls::showing(&certs, std::fs::read(&ana_pem).unwrap(), std::fs::read(&ana_key).unwrap());
    let refused = common::tls::status_over(common::tls::tls_endpoint(node_addr, user_tls)).await;
    assert!(refused.is_err(), "a node must refuse a portal user's certificate");

    // Only the certificate recorded for ana stands for her: once she is
    // removed and added again, with a new certificate, the old one is out.
    let old_pem = std::fs::read(&ana_pem).unwrap();
    let old_key = std::fs::read(&ana_key).unwrap();
    let removed = raftshop(&["user", "remove", "ana", "--config", config_arg], None).await;
    assert!(removed.status.success(), "{removed:?}");
    add_user(&cluster, "ana", "admin", &["--cert"]).await;
    let old_files = (cluster.dir().join("old.pem"), cluster.dir().join("old.key"));
    std::fs::write(&old_files.0, old_pem).unwrap();
    std::fs::write(&old_files.1, old_key).unwrap();
    let since = std::time::Instant::now();
    loop {
        let mut as_old_ana =
            AdminPortalClient::new(tls(admin_addr, Some((old_files.0.as_path(), old_files.1.as_path()))));
        match as_old_ana.retrieve_client(Id { id: "2".into() }).await {
            Err(status) if status.code() == Code::Unauthenticated => {
                assert!(status.message().contains("not that user's certificate"), "{status:?}");
                break;
            }
            other => assert!(since.elapsed() < STARTUP, "the old certificate still works: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let mut as_new_ana = AdminPortalClient::new(tls(admin_addr, Some((ana_pem.as_path(), ana_key.as_path()))));
    assert_eq!(code_of(as_new_ana.retrieve_client(Id { id: "2".into() }).await), Code::Ok);

    // The CLI reaches the portal over TLS from the config, with the
    // certificate; `status` finds both portals serving.
    let (pem, key) = (ana_pem.to_str().unwrap(), ana_key.to_str().unwrap());
    let got = raftshop(&["admin", "--config", config_arg, "--cert", pem, "--key", key, "get-client", "2"], None).await;
    assert!(got.status.success() && String::from_utf8_lossy(&got.stdout).contains("Ana"), "{got:?}");
    let status = raftshop(&["status", "--config", config_arg], None).await;
    let table = String::from_utf8_lossy(&status.stdout);
    let serving = table.lines().filter(|l| l.contains("-portal") && l.contains("SERVING")).count();
    assert_eq!(serving, 2, "both portals serving over TLS:\n{table}");
}
