//! Users and roles for the portals' API, against real processes: with
//! `[auth]`, users made by `raftshop user add` can make exactly their
//! role's calls, a call without a token or with the wrong role is refused
//! with a sentence, removing a user takes effect without a restart, and
//! the CLI sends the token from `--token` or `RAFTSHOP_TOKEN`.

mod common;

use std::time::{Duration, Instant};

use common::auth::{add_user, code_of, raftshop, with};
use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::{ClusterOptions, PortalKind};
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Client, Id, Order, Product};
use raftshop_proto::feed::feed_client::FeedClient;
use raftshop_proto::feed::FeedRequest;
use tonic::transport::Channel;
use tonic::Code;

struct Portals {
    admin: AdminPortalClient<Channel>,
    order: OrderPortalClient<Channel>,
    admin_feed: FeedClient<Channel>,
}

impl Portals {
    /// The code of each kind of call made with `token`: an admin write, an
    /// admin retrieve, an order write, an order retrieve, the feed.
    async fn codes(&mut self, token: Option<&str>, oid: u64) -> [Code; 5] {
        let client = Client { cid: format!("{}", 100 + oid), data: r#"{"name":"Ana"}"#.into() };
        let order = Order { oid: oid.to_string(), cid: "2".into(), data: r#"[{"id":4,"quantity":1}]"#.into() };
        let id = |id: &str| Id { id: id.into() };
        [
            code_of(self.admin.create_client(with(client, token)).await),
            code_of(self.admin.retrieve_product(with(id("4"), token)).await),
            code_of(self.order.create_order(with(order, token)).await),
            code_of(self.order.retrieve_order(with(id("10"), token)).await),
            code_of(self.admin_feed.list_topics(with(FeedRequest { prefix: String::new() }, token)).await),
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_role_makes_exactly_its_calls_and_others_are_refused_with_a_sentence() {
    let mut cluster = cluster_with(ClusterOptions { auth: true, ..ClusterOptions::new(binaries()) }).await;

    // Without a users file the portal stops at once, saying how to make one.
    let config = cluster.config_path();
    let output = tokio::time::timeout(
        STARTUP,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_admin-portal"))
            .args(["--config", config.to_str().unwrap()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the portal exits by itself")
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("raftshop user add"), "{stderr}");

    let admin = add_user(&cluster, "ana", "admin", &[]).await;
    let clerk = add_user(&cluster, "bo", "clerk", &[]).await;
    let reader = add_user(&cluster, "cy", "reader", &[]).await;
    let both = add_user(&cluster, "dee", "admin,clerk", &[]).await;
    let users = cluster.dir().join("users.toml");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(!text.contains(&admin) && text.contains("ana"), "the file keeps hashes, not tokens: {text}");

    for kind in [PortalKind::Admin, PortalKind::Order] {
        cluster.start_portal(kind).unwrap();
        cluster.wait_for_portal(kind, STARTUP).await.expect("health is open without a token");
    }
    let connect = |addr| async move { common::channel(addr).await };
    let mut portals = Portals {
        admin: AdminPortalClient::new(connect(cluster.config().portals.admin).await),
        order: OrderPortalClient::new(connect(cluster.config().portals.order).await),
        admin_feed: FeedClient::new(connect(cluster.config().portals.admin).await),
    };
    // The shop the calls need: client 2 and product 4.
    let ana = Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(code_of(portals.admin.create_client(with(ana, Some(&both))).await), Code::Ok);
    let product = Product { pid: "4".into(), data: r#"{"name":"pen","price":1,"quantity":100}"#.into() };
    assert_eq!(code_of(portals.admin.create_product(with(product, Some(&both))).await), Code::Ok);

    use Code::{Ok as Yes, PermissionDenied as No, Unauthenticated as Who};
    assert_eq!(portals.codes(Some(&admin), 10).await, [Yes, Yes, No, No, No], "admin");
    assert_eq!(portals.codes(Some(&clerk), 10).await, [No, No, Yes, Yes, No], "clerk");
    assert_eq!(portals.codes(Some(&reader), 12).await, [No, Yes, No, Yes, Yes], "reader");
    assert_eq!(portals.codes(None, 12).await, [Who; 5], "no token");
    assert_eq!(portals.codes(Some("rs_guess"), 12).await, [Who; 5], "an unknown token");
    // Under the course's `project.` names, the same services guarded alike.
    use raftshop_proto::project;
    let mut project_orders =
        project::order_portal_client::OrderPortalClient::new(connect(cluster.config().portals.order).await);
    let order = || project::Order { oid: "14".into(), cid: "2".into(), data: r#"[{"id":4,"quantity":1}]"#.into() };
    let denied = project_orders.create_order(with(order(), Some(&admin))).await.unwrap_err();
    assert_eq!(denied.message(), "user ana (admin) may not call OrderPortal/CreateOrder: it takes the role clerk");
    let unknown = project_orders.create_order(with(order(), None)).await.unwrap_err();
    assert_eq!(unknown.code(), Who);
    assert_eq!(code_of(project_orders.create_order(with(order(), Some(&clerk))).await), Yes);
    // The watch stream is the feed too.
    let watch = portals.admin_feed.watch(with(FeedRequest { prefix: String::new() }, Some(&clerk))).await;
    assert_eq!(code_of(watch), No, "the feed needs reader");

    // Removing a user ends its token without a restart.
    let removed = raftshop(&["user", "remove", "cy", "--config", config.to_str().unwrap()], None).await;
    assert!(removed.status.success(), "{removed:?}");
    let since = Instant::now();
    while portals.codes(Some(&reader), 16).await[1] != Who {
        assert!(since.elapsed() < Duration::from_secs(10), "the removed user's token still works");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let listed = raftshop(&["user", "list", "--config", config.to_str().unwrap()], None).await;
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "ana\tadmin\nbo\tclerk\ndee\tadmin,clerk\n");

    // The CLI: refused with the portal's sentence and exit 1 without a
    // token; served with --token or RAFTSHOP_TOKEN.
    let addr = cluster.config().portals.admin.to_string();
    let get = ["admin", "--addr", addr.as_str(), "get-client", "2"];
    let refused = raftshop(&get, None).await;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("requires a user's token") && stderr.contains("(401)"), "{stderr}");
    let with_flag = ["admin", "--addr", addr.as_str(), "--token", admin.as_str(), "get-client", "2"];
    for (args, env) in [(&with_flag[..], None), (&get[..], Some(admin.as_str()))] {
        let served = raftshop(args, env).await;
        assert!(served.status.success(), "{served:?}");
        assert!(String::from_utf8_lossy(&served.stdout).contains("Ana"), "{served:?}");
    }
    let order_addr = cluster.config().portals.order.to_string();
    let wrong = raftshop(&["order", "--addr", order_addr.as_str(), "--token", &admin, "get", "10"], None).await;
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it takes the role clerk or reader (403)"), "{stderr}");
}
