//! Every storage node and both portals serve Prometheus metrics at their
//! metrics addresses: the text is well-formed OpenMetrics that a Prometheus
//! parser reads, the Raft gauges agree with the cluster (one leader per
//! shard, replication lag for its two followers), and the counters move the
//! right way under a short load.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::{binaries, channel, cluster_with, key_in, shop_cluster, STARTUP};
use prometheus_parse::{Sample, Scrape, Value};
use raftshop::local_cluster::ClusterOptions;
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Client, Id, Order, Product};
use storage_node::{Command, CommandResult, RowWrite, Shard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DEADLINE: Duration = Duration::from_secs(5);

/// `GET path` over HTTP/1.1; the status line and the body.
async fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {response}"));
    (head.lines().next().unwrap_or_default().to_owned(), body.to_owned())
}

/// Checks the OpenMetrics text line by line (what a scraper relies on),
/// then parses it with a Prometheus text parser.
fn parse(text: &str) -> Scrape {
    let mut typed = BTreeSet::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "the text ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let (kind, name) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "unknown comment: {line}");
            assert!(name.starts_with("raftshop_"), "every family has the prefix: {line}");
            if kind == "TYPE" {
                typed.insert(name.to_owned());
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no value: {line}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "not a number in: {line}");
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if let Some(labels) = series.strip_prefix(name) {
            assert!(labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')), "bad labels: {line}");
        }
        let family = ["_total", "_bucket", "_count", "_sum", "_created"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| typed.contains(*family))
            .unwrap_or(name);
        assert!(typed.contains(family), "sample without a TYPE line: {line}");
    }
    Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("a Prometheus parser reads it")
}

fn scalar(sample: &Sample) -> f64 {
    match &sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        Value::Histogram(_) | Value::Summary(_) => panic!("{} is not a scalar", sample.metric),
    }
}

/// The value of the one sample named `metric` with these labels.
fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<f64> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(scalar)
        .collect();
    match matching.as_slice() {
        [one] => *one,
        [] => 0.0,
        many => panic!("{metric} {labels:?} matches {} samples", many.len()),
    }
}

async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "/metrics").await;
    assert!(status.contains(" 200 "), "{status}");
    parse(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_node_serves_metrics_that_follow_its_work() {
    let cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let metrics_of = |id: u64| cluster.config().node(id).and_then(|n| n.metrics).expect("a metrics address");
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
    let odd_leader = cluster.wait_for_leader(Shard::Odd, STARTUP).await.unwrap();

    let before = scrape(metrics_of(leader)).await;
    let client = cluster.shard_client(shard);
    for i in 0..20 {
        let write = Command::single(RowWrite::upsert(key_in(shard, &format!("m{i}")), b"v".to_vec()));
        let result = client.write(&write, DEADLINE).await.unwrap();
        assert!(matches!(result, CommandResult::Applied { .. }), "{result:?}");
    }
    for i in 0..5 {
        client.get(&key_in(shard, &format!("m{i}")), DEADLINE).await.unwrap();
    }
    let after = scrape(metrics_of(leader)).await;

    let moved = |metric: &str, labels: &[(&str, &str)]| value(&after, metric, labels) - value(&before, metric, labels);
    let ok_writes = [("method", "Write"), ("code", "OK")];
    assert!(moved("raftshop_grpc_calls_total", &ok_writes) >= 20.0, "write calls counted");
    assert!(moved("raftshop_grpc_calls_total", &[("method", "Read"), ("code", "OK")]) >= 5.0, "read calls counted");
    assert!(moved("raftshop_read_rounds_total", &[]) >= 1.0, "read rounds counted");
    assert!(moved("raftshop_raft_applied_index", &[]) >= 1.0, "the applied index moved");
    assert!(moved("raftshop_apply_duration_seconds_count", &[]) >= 1.0, "applies timed");
    assert!(moved("raftshop_log_append_durable_duration_seconds_count", &[]) >= 1.0, "appends timed");
    assert!(moved("raftshop_write_batch_commands_count", &[]) >= 1.0, "batches counted");
    // 20 writes one after another outlast the 10 ms an applied entry waits
    // for sled, so at least one batch went; each holds its rows, the
    // bookkeeping and the redo list.
    let (batches, sled_writes) =
        (moved("raftshop_state_write_rows_count", &[]), moved("raftshop_state_write_rows_sum", &[]));
    assert!(batches >= 1.0 && sled_writes >= 3.0 * batches, "sled writes counted: {sled_writes} in {batches} batches");
    let followers: Vec<f64> = cluster
        .members(shard)
        .into_iter()
        .filter(|id| *id != leader)
        .map(|id| value(&after, "raftshop_raft_replication_lag_entries", &[("follower", &id.to_string())]))
        .collect();
    assert_eq!(followers.len(), 2);
    assert!(followers.iter().all(|lag| *lag >= 0.0), "{followers:?}");

    for id in cluster.node_ids() {
        let node = scrape(metrics_of(id)).await;
        let is_leader = value(&node, "raftshop_raft_role", &[("role", "leader")]);
        assert_eq!(is_leader == 1.0, id == leader || id == odd_leader, "node {id}'s role gauge");
        let roles: f64 = ["leader", "follower", "candidate", "learner", "shutdown"]
            .iter()
            .map(|role| value(&node, "raftshop_raft_role", &[("role", role)]))
            .sum();
        assert_eq!(roles, 1.0, "node {id} has one role");
        assert!(value(&node, "raftshop_raft_term", &[]) >= 1.0, "node {id}'s term");
        let expected_leader = if id <= 3 { leader } else { odd_leader };
        assert_eq!(value(&node, "raftshop_raft_leader", &[]), expected_leader as f64, "node {id}'s leader");
        assert!(value(&node, "raftshop_process_resident_memory_bytes", &[]) > 1e6, "node {id}'s memory");
        assert!(node.samples.iter().any(|s| s.metric == "raftshop_txn_open_intents"), "node {id} counts intents");
    }

    let (status, _) = get(metrics_of(leader), "/elsewhere").await;
    assert!(status.contains(" 404 "), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn portals_count_their_calls_by_method_and_code() {
    let cluster = shop_cluster().await;
    let portals = &cluster.config().portals;
    let (admin_metrics, order_metrics) = (portals.admin_metrics.unwrap(), portals.order_metrics.unwrap());
    let mut admin = AdminPortalClient::new(channel(portals.admin).await);
    let data = r#"{"name": "lamp", "price": 10, "quantity": 5}"#;
    for pid in ["71", "72", "73"] {
        let reply = admin.create_product(Product { pid: pid.into(), data: data.into() }).await.unwrap();
        assert_eq!(reply.into_inner().error, 0);
    }
    let refused = admin.retrieve_product(Id { id: "not-a-number".into() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let scrape_admin = scrape(admin_metrics).await;
    let calls = |method: &str, code: &str| {
        value(
            &scrape_admin,
            "raftshop_grpc_calls_total",
            &[("service", "AdminPortal"), ("method", method), ("code", code)],
        )
    };
    assert_eq!(calls("CreateProduct", "OK"), 3.0);
    assert_eq!(calls("RetrieveProduct", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(calls("RetrieveProduct", "OK"), 0.0);
    let timed = value(
        &scrape_admin,
        "raftshop_grpc_call_duration_seconds_count",
        &[("service", "AdminPortal"), ("method", "CreateProduct")],
    );
    assert_eq!(timed, 3.0);
    assert!(value(&scrape_admin, "raftshop_process_resident_memory_bytes", &[]) > 1e6);

    // An order of client 2 (shard even) for products 71 and 72 (both
    // shards): one cross-shard transaction through the order portal.
    let created = admin.create_client(Client { cid: "2".into(), data: r#"{"name": "ada"}"#.into() }).await.unwrap();
    assert_eq!(created.into_inner().error, 0);
    let mut orders = OrderPortalClient::new(channel(portals.order).await);
    let order =
        Order { oid: "5".into(), cid: "2".into(), data: r#"[{"id":71,"quantity":1},{"id":72,"quantity":1}]"#.into() };
    assert_eq!(orders.create_order(order).await.unwrap().into_inner().error, 0);

    let scrape_order = scrape(order_metrics).await;
    assert_eq!(value(&scrape_order, "raftshop_grpc_calls_total", &[("service", "AdminPortal")]), 0.0);
    let cross_committed = [("kind", "cross-shard"), ("outcome", "committed")];
    assert!(value(&scrape_order, "raftshop_txn_attempts_total", &cross_committed) >= 1.0, "the order's commit counted");
    let admin_single = value(&scrape(admin_metrics).await, "raftshop_txn_attempts_total", &[("kind", "single-shard")]);
    assert!(admin_single >= 4.0, "the products' and the client's writes counted: {admin_single}");
    // Followers apply the resolves a moment after the leaders answered.
    for node in &cluster.config().nodes {
        let mut intents = f64::NAN;
        for _ in 0..50 {
            intents = value(&scrape(node.metrics.unwrap()).await, "raftshop_txn_open_intents", &[]);
            if intents == 0.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(intents, 0.0, "node {} holds no intent once the order is settled", node.id);
    }
    assert!(value(&scrape_order, "raftshop_process_resident_memory_bytes", &[]) > 1e6);
}
