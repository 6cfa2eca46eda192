//! A portal call's request id follows it into the nodes' logs: the caller's
//! `x-request-id` (or one the portal makes, also for an unusable one) comes
//! back in the answer's metadata, names the portal's log lines for the call,
//! and names the lines the shard's leader logs for the `Store` requests the
//! call made. The nodes here log JSON (`RAFTSHOP_LOG_FORMAT=json`): every
//! line of theirs parses as one JSON object.

mod common;

use std::time::Duration;

use common::{binaries, channel, cluster_with, STARTUP};
use raftshop::local_cluster::{ClusterOptions, LocalCluster, PortalKind};
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::Product;
use storage_node::cli::LOG_FORMAT_ENV;
use storage_node::request_id::HEADER;
use storage_node::Shard;

/// Creates product `pid` through the AdminPortal with `request_id` (if
/// any) in the metadata; returns the id the answer carries.
async fn create_product(cluster: &LocalCluster, pid: u64, request_id: Option<&str>) -> String {
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut request = tonic::Request::new(Product {
        pid: pid.to_string(),
        data: r#"{"name": "lamp", "price": 2, "quantity": 3}"#.into(),
    });
    if let Some(id) = request_id {
        request.metadata_mut().insert(HEADER, id.parse().unwrap());
    }
    let answer = admin.create_product(request).await.expect("the portal answers");
    let id = answer.metadata().get(HEADER).expect("the answer carries a request id").to_str().unwrap().to_owned();
    assert_eq!(answer.into_inner().error, 0, "product {pid} created");
    id
}

fn log_of(cluster: &LocalCluster, name: &str) -> String {
    std::fs::read_to_string(cluster.dir().join(format!("{name}.log"))).unwrap()
}

/// The lines of node `id`'s JSON log whose spans name `request_id`.
fn node_lines_for(cluster: &LocalCluster, id: u64, request_id: &str) -> Vec<serde_json::Value> {
    let mut found = Vec::new();
    for line in log_of(cluster, &format!("node-{id}")).lines() {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("node {id} logged a line that is not JSON ({e}): {line}"));
        let spans = event["spans"].as_array().cloned().unwrap_or_default();
        if spans.iter().any(|span| span["request_id"] == request_id) {
            found.push(event);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_id_follows_the_call_into_the_leaders_log() {
    let mut options = ClusterOptions::new(binaries());
    options.log_filter = format!("{},storage_node::service=debug,portals::request_ids=debug", options.log_filter);
    options.node_env.push((LOG_FORMAT_ENV.into(), "json".into()));
    let mut cluster = cluster_with(options).await;
    cluster.start_portal(PortalKind::Admin).unwrap();
    cluster.wait_for_portal(PortalKind::Admin, STARTUP).await.unwrap();

    let pid = 4_242; // even: shard even owns it
    let given = "it-call-4242";
    assert_eq!(create_product(&cluster, pid, Some(given)).await, given, "the caller's id comes back");
    let leader = cluster.wait_for_leader(Shard::of_id(pid), STARTUP).await.unwrap();
    // The log is written as the call goes; give the file a moment.
    let mut lines = Vec::new();
    for _ in 0..50 {
        lines = node_lines_for(&cluster, leader, given);
        if !lines.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !lines.is_empty(),
        "leader {leader} logged lines under {given}:\n{}",
        log_of(&cluster, &format!("node-{leader}"))
    );
    assert!(
        lines.iter().any(|l| l["fields"]["message"] == "answered" && l["fields"]["code"] == "OK"),
        "the leader logged the answered Store calls: {lines:?}"
    );
    let portal = log_of(&cluster, "admin-portal");
    assert!(portal.lines().any(|l| l.contains(given) && l.contains("answered")), "the portal's line:\n{portal}");

    let made = create_product(&cluster, pid + 2, None).await;
    assert!(made.len() == 16 && made.chars().all(|c| c.is_ascii_hexdigit()), "a made id: {made}");
    let replaced = create_product(&cluster, pid + 4, Some("two words")).await;
    assert_ne!(replaced, "two words", "an unusable id is replaced");
    assert!(storage_node::request_id::accept(&replaced).is_some());
    let portal = log_of(&cluster, "admin-portal");
    for id in [&made, &replaced] {
        assert!(portal.contains(id.as_str()), "the portal logged {id}:\n{portal}");
    }
}
