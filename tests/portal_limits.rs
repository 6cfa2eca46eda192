//! The portals' bounds against real processes: every documented maximum
//! (`storage_node::limits`) refused with a 400 and a sentence, under both
//! service names, changing nothing in the shards; the CLI refusing the same
//! with the same sentence; a portal at its limit of calls in flight
//! shedding with a 503; a client's order list cut at its cap with a
//! sentence saying so.

mod common;
mod edge;

use std::process::Stdio;
use std::time::Duration;

use common::{channel, shop_cluster};
use edge::{digests, ExtraPortal};
use raftshop::local_cluster::PortalKind;
use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
use raftshop_proto::api::{Client, Id, Order};
use storage_node::limits::{MAX_DATA_BYTES, MAX_IDEMPOTENCY_KEY_BYTES, MAX_ORDER_LINES, MAX_QUANTITY};

/// Every bound, refused, under one generated client module's names.
macro_rules! bounds_under {
    ($test:ident, $module:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $test() {
            use raftshop_proto::$module::{
                admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient, Client, Order, Product,
                Reply,
            };

            let cluster = shop_cluster().await;
            let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
            let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
            let ok = |reply: tonic::Response<Reply>| {
                let reply = reply.into_inner();
                assert_eq!(reply.error, 0, "{:?}", reply.description);
            };
            // Client 2; products 1..=101 (stock 5); order 10 with 100 lines.
            ok(admin.create_client(Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() }).await.unwrap());
            for pid in 1..=MAX_ORDER_LINES + 1 {
                let data = r#"{"name":"pen","price":1,"quantity":5}"#.to_string();
                ok(admin.create_product(Product { pid: pid.to_string(), data }).await.unwrap());
            }
            let line = |pid: usize, quantity: u64| format!(r#"{{"id":{pid},"quantity":{quantity}}}"#);
            let lines = |pids: std::ops::RangeInclusive<usize>| {
                format!("[{}]", pids.map(|pid| line(pid, 1)).collect::<Vec<_>>().join(","))
            };
            let full = lines(1..=MAX_ORDER_LINES);
            ok(orders.create_order(Order { oid: "10".into(), cid: "2".into(), data: full }).await.unwrap());
            // The order spans both shards: it was answered once both held
            // their prepares, and its intents are resolved just after. Reading
            // it back waits for that on both shards (its products' rows stay
            // locked until then), so the digests below start from rest.
            let read = orders.retrieve_order(raftshop_proto::$module::Id { id: "10".into() }).await.unwrap();
            assert_eq!(read.get_ref().oid, "10");
            let before = digests(&cluster).await;

            let over = MAX_QUANTITY + 1;
            let long_id = "1".repeat(21);
            let product =
                |quantity: String, price: &str| format!(r#"{{"name":"pen","price":{price},"quantity":{quantity}}}"#);
            let big_data = format!(r#"{{"name":"{}"}}"#, "x".repeat(MAX_DATA_BYTES));
            let half = MAX_QUANTITY / 2 + 1;
            let mut refused: Vec<(String, Reply)> = Vec::new();
            let mut push = |what: &str, reply: tonic::Response<Reply>| refused.push((what.into(), reply.into_inner()));

            let client = |cid: &str, data: &str| Client { cid: cid.into(), data: data.into() };
            push("CID of 21 digits", admin.create_client(client(&long_id, r#"{"name":"x"}"#)).await.unwrap());
            push("client data over 64 KiB", admin.create_client(client("4", &big_data)).await.unwrap());
            push("update with data over 64 KiB", admin.update_client(client("2", &big_data)).await.unwrap());
            let bad_product = |pid: &str, data: String| Product { pid: pid.into(), data };
            push(
                "PID of 21 digits",
                admin.create_product(bad_product(&long_id, product("1".into(), "1"))).await.unwrap(),
            );
            push(
                "stock over the limit",
                admin.create_product(bad_product("200", product(over.to_string(), "1"))).await.unwrap(),
            );
            push(
                "stock update over the limit",
                admin.update_product(bad_product("1", product(over.to_string(), "1"))).await.unwrap(),
            );
            push(
                "stock as a huge string",
                admin.update_product(bad_product("1", product("\"1e30\"".into(), "1"))).await.unwrap(),
            );
            push(
                "price over the limit",
                admin.update_product(bad_product("1", product("1".into(), "1500000000"))).await.unwrap(),
            );
            push(
                "price not a number",
                admin.update_product(bad_product("1", product("1".into(), "\"NaN\""))).await.unwrap(),
            );
            push("price negative", admin.update_product(bad_product("1", product("1".into(), "-0.5"))).await.unwrap());
            let order = |oid: &str, data: String| Order { oid: oid.into(), cid: "2".into(), data };
            push("OID of 21 digits", orders.create_order(order(&long_id, lines(1..=1))).await.unwrap());
            push(
                "a line over the limit",
                orders.create_order(order("12", format!("[{}]", line(1, over)))).await.unwrap(),
            );
            let repeated = format!("[{},{}]", line(1, half), line(1, half));
            push(
                "repeated PIDs adding up over the limit",
                orders.create_order(order("12", repeated.clone())).await.unwrap(),
            );
            push("an update adding up over the limit", orders.update_order(order("10", repeated)).await.unwrap());
            push("101 lines", orders.create_order(order("12", lines(1..=MAX_ORDER_LINES + 1))).await.unwrap());
            let grow = format!("[{}]", line(MAX_ORDER_LINES + 1, 1));
            push("an update to 101 lines", orders.update_order(order("10", grow)).await.unwrap());
            push("order data over 64 KiB", orders.create_order(order("12", big_data.clone())).await.unwrap());
            let long_key = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
            push(
                "a key over 128 bytes",
                admin.create_client(edge::keyed(client("4", r#"{"name":"x"}"#), &long_key)).await.unwrap(),
            );
            push(
                "an empty key",
                orders.delete_order(edge::keyed(raftshop_proto::$module::Id { id: "10".into() }, "")).await.unwrap(),
            );

            for (what, reply) in &refused {
                let why = reply.description.clone().unwrap_or_default();
                assert_eq!(reply.error, 400, "{what}: {why}");
                assert!(!why.is_empty() && why.len() < 300, "{what}: a sentence a person can read: {why:.300}");
            }
            assert_eq!(digests(&cluster).await, before, "no out-of-bound request changed any shard");
            // A key of the longest length works, and a repeat answers the same.
            let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
            for attempt in ["first", "repeat"] {
                let keyed = edge::keyed(client("4", r#"{"name":"x"}"#), &longest);
                let reply = admin.create_client(keyed).await.unwrap().into_inner();
                assert_eq!(reply.error, 0, "{attempt} with a 128-byte key: {:?}", reply.description);
            }
            let status = admin.retrieve_client(raftshop_proto::$module::Id { id: long_id }).await.unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        }
    };
}

bounds_under!(bounds_are_refused_under_the_seed_names, api);
bounds_under!(bounds_are_refused_under_the_project_names, project);

/// What a run of `raftshop` printed and how it exited.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `raftshop args...`, nothing on stdin.
async fn raftshop(args: &[&str]) -> Run {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(args)
        .stdin(Stdio::null())
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), output).await.expect("raftshop finishes").unwrap();
    Run {
        code: output.status.code().expect("an exit code"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// Creates client 2, Ana, through `admin`.
async fn create_ana(admin: &mut AdminPortalClient<tonic::transport::Channel>) {
    let ana = Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(admin.create_client(ana).await.unwrap().into_inner().error, 0, "client 2 is created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_refuses_what_the_portals_refuse_with_the_same_sentence() {
    let cluster = shop_cluster().await;
    let (admin_addr, order_addr) =
        (cluster.config().portals.admin.to_string(), cluster.config().portals.order.to_string());
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
    create_ana(&mut admin).await;
    let before = digests(&cluster).await;

    let over = MAX_QUANTITY + 1;
    let product = format!(r#"{{"name":"pen","price":1,"quantity":{over}}}"#);
    let pricey = r#"{"name":"pen","price":1e12,"quantity":1}"#.to_string();
    let lines: Vec<String> = (1..=MAX_ORDER_LINES + 1).map(|pid| format!(r#"{{"id":{pid},"quantity":1}}"#)).collect();
    let many = format!("[{}]", lines.join(","));
    let repeated = format!(r#"[{{"id":1,"quantity":{}}},{{"id":1,"quantity":{}}}]"#, over / 2 + 1, over / 2 + 1);
    let cases: [(&str, &str, Vec<&str>); 4] = [
        ("admin", &admin_addr, vec!["create-product", "3", &product]),
        ("admin", &admin_addr, vec!["update-product", "3", &pricey]),
        ("order", &order_addr, vec!["create", "2", "10", &many]),
        ("order", &order_addr, vec!["update", "2", "10", &repeated]),
    ];
    for (command, addr, verb) in cases {
        let args: Vec<&str> = [command, "--addr", addr].into_iter().chain(verb.iter().copied()).collect();
        let run = raftshop(&args).await;
        assert_eq!(run.code, 1, "{args:?}: {}", run.stderr);
        let line: serde_json::Value = serde_json::from_str(run.stdout.trim()).expect("a reply line");
        assert_eq!(line["error"], 400, "{args:?}");
        let portal_says = match verb[0] {
            "create-product" => {
                admin.create_product(raftshop_proto::api::Product { pid: "3".into(), data: verb[2].into() }).await
            }
            "update-product" => {
                admin.update_product(raftshop_proto::api::Product { pid: "3".into(), data: verb[2].into() }).await
            }
            "create" => orders.create_order(Order { oid: "10".into(), cid: "2".into(), data: verb[3].into() }).await,
            _ => orders.update_order(Order { oid: "10".into(), cid: "2".into(), data: verb[3].into() }).await,
        }
        .unwrap()
        .into_inner();
        assert_eq!(portal_says.error, 400);
        assert_eq!(line["description"].as_str(), portal_says.description.as_deref(), "{args:?}: the same sentence");
        assert!(run.stderr.contains("(400)"), "{}", run.stderr);
    }
    let run = raftshop(&["admin", "--addr", &admin_addr, "get-client", &"7".repeat(21)]).await;
    assert_eq!(run.code, 2, "a usage error: {}", run.stderr);
    assert!(run.stderr.contains("at most 20"), "{}", run.stderr);
    assert_eq!(digests(&cluster).await, before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_portal_at_its_limit_sheds_with_a_503_and_applies_nothing() {
    let cluster = shop_cluster().await;
    let portal = ExtraPortal::start(&cluster, PortalKind::Admin, &["--max-calls-in-flight", "1"]).await;
    let admin = AdminPortalClient::new(portal.channel().await);
    let (mut shed, mut served) = (Vec::new(), 0);
    for round in 0..5u64 {
        let calls = (0..64u64).map(|n| {
            let mut admin = admin.clone();
            let cid = round * 1000 + n;
            async move {
                let reply = admin.create_client(Client { cid: cid.to_string(), data: r#"{"name":"x"}"#.into() }).await;
                (cid, reply.unwrap().into_inner())
            }
        });
        for (cid, reply) in futures::future::join_all(calls).await {
            match reply.error {
                0 => served += 1,
                503 => {
                    let why = reply.description.unwrap_or_default();
                    assert!(why.contains("limit of 1 calls at once"), "{why}");
                    shed.push(cid);
                }
                other => panic!("client {cid}: {other} {:?}", reply.description),
            }
        }
        if !shed.is_empty() && served > 0 {
            break;
        }
    }
    assert!(!shed.is_empty() && served > 0, "some calls shed ({}), some served ({served})", shed.len());
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    for cid in shed {
        let found = admin.retrieve_client(Id { id: cid.to_string() }).await.unwrap().into_inner();
        assert_eq!(found.cid, "0", "shed client {cid} was not created");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_order_list_ends_with_a_sentence_saying_what_was_left_out() {
    let cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
    create_ana(&mut admin).await;
    let product =
        raftshop_proto::api::Product { pid: "1".into(), data: r#"{"name":"pen","price":1,"quantity":50}"#.into() };
    assert_eq!(admin.create_product(product).await.unwrap().into_inner().error, 0);
    for oid in 10..15 {
        let order = Order { oid: oid.to_string(), cid: "2".into(), data: r#"[{"id":1,"quantity":1}]"#.into() };
        assert_eq!(orders.create_order(order).await.unwrap().into_inner().error, 0);
    }
    let portal = ExtraPortal::start(&cluster, PortalKind::Order, &["--max-listed-orders", "3"]).await;
    let mut capped = OrderPortalClient::new(portal.channel().await);
    let mut stream = capped.retrieve_client_orders(Id { id: "2".into() }).await.unwrap().into_inner();
    let mut listed = 0;
    let status = loop {
        match stream.message().await {
            Ok(Some(_)) => listed += 1,
            Ok(None) => panic!("the stream ended without saying that orders were left out"),
            Err(status) => break status,
        }
    };
    assert_eq!(listed, 3);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("client 2 has 5 orders; one call lists at most 3"), "{}", status.message());

    let run = raftshop(&["order", "--addr", &portal.addr.to_string(), "list", "2"]).await;
    assert_eq!((run.code, run.stdout.lines().count()), (1, 3), "{}", run.stderr);
    assert!(run.stderr.contains("2 were left out (413)"), "{}", run.stderr);
}
