//! The portals under bad input and under fire: racing orders for scarce
//! stock while portals and shard leaders are SIGKILLed. Afterwards the
//! store's invariants are checked directly on the shards.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{channel, shop_cluster};
use raftshop::local_cluster::{LocalCluster, PortalKind};
use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
use raftshop_proto::api::{Client, Id, Order, Product};
use rand::{Rng, SeedableRng};
use storage_node::records::shop::{decode_record, OrderRecord, ProductRecord};
use storage_node::{Row, RowKey, Shard, Table};

const READ_DEADLINE: Duration = Duration::from_secs(20);

/// Every row of `table` in both shards.
async fn scan_all(cluster: &LocalCluster, table: Table) -> Vec<(RowKey, Row)> {
    raftshop::chaos::checks::scan_all(&cluster.client(), table).await.unwrap()
}

/// The digest of every shard, read from each shard's leader.
async fn digests(cluster: &LocalCluster) -> Vec<u64> {
    let mut digests = Vec::new();
    for shard in Shard::ALL {
        let leader = cluster.wait_for_leader(shard, READ_DEADLINE).await.unwrap();
        digests.push(cluster.shard_client(shard).status(leader, READ_DEADLINE).await.unwrap().state_digest);
    }
    digests
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_reply_and_changes_nothing() {
    let cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
    let reply = admin.create_client(Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() }).await.unwrap();
    assert_eq!(reply.into_inner().error, 0);
    let product = r#"{"name":"pen","price":2.5,"quantity":8}"#;
    assert_eq!(
        admin.create_product(Product { pid: "1".into(), data: product.into() }).await.unwrap().into_inner().error,
        0
    );
    let before = digests(&cluster).await;

    let huge = format!(r#"{{"name":"{}"}}"#, "x".repeat(10 * 1024 * 1024));
    let bad_clients = [
        ("4", "{\"name\": "),
        ("4", r#"{"city":"nowhere"}"#),
        ("4", r#"["a","list"]"#),
        ("", r#"{"name":"x"}"#),
        ("abc", r#"{"name":"x"}"#),
        ("-4", r#"{"name":"x"}"#),
        ("4", huge.as_str()),
    ];
    for (cid, data) in bad_clients {
        let reply = admin.create_client(Client { cid: cid.into(), data: data.into() }).await.unwrap().into_inner();
        let why = reply.description.unwrap_or_default();
        assert_eq!(reply.error, 400, "CreateClient({cid:?}, {:.40}): {why}", data);
        assert!(!why.is_empty() && why.len() < 300, "a sentence a person can read: {why:.200}");
    }
    let bad_products = [
        r#"{"name":"x","price":-1,"quantity":1}"#,
        r#"{"name":"x","price":1,"quantity":-1}"#,
        r#"{"name":"x","price":1,"quantity":0.5}"#,
        r#"{"name":"x","price":"cheap","quantity":1}"#,
        r#"{"price":1,"quantity":1}"#,
    ];
    for data in bad_products {
        let reply = admin.update_product(Product { pid: "1".into(), data: data.into() }).await.unwrap().into_inner();
        assert_eq!(reply.error, 400, "UpdateProduct({data}): {:?}", reply.description);
    }
    let bad_orders = [
        ("10", "2", r#"[{"id":1,"quantity":-2}]"#),
        ("10", "2", r#"[{"id":1,"quantity":1.5}]"#),
        ("10", "2", r#"[{"id":"one","quantity":1}]"#),
        ("10", "2", r#"{"products":"none"}"#),
        ("ten", "2", r#"[{"id":1,"quantity":1}]"#),
        ("10", "", r#"[{"id":1,"quantity":1}]"#),
        ("10", "2", "not json at all"),
    ];
    for (oid, cid, data) in bad_orders {
        let order = Order { oid: oid.into(), cid: cid.into(), data: data.into() };
        let reply = orders.create_order(order).await.unwrap().into_inner();
        assert_eq!(reply.error, 400, "CreateOrder({oid:?}, {cid:?}, {data}): {:?}", reply.description);
    }
    assert_eq!(admin.retrieve_client(Id { id: "".into() }).await.unwrap_err().code(), tonic::Code::InvalidArgument);

    // The portals still serve, and nothing changed in the store.
    let product = admin.retrieve_product(Id { id: "1".into() }).await.unwrap().into_inner();
    assert!(product.data.contains("\"quantity\":8"), "{}", product.data);
    assert_eq!(digests(&cluster).await, before, "no bad request changed any shard");
}

/// One racer: creates (and sometimes deletes) orders until `stop`.
async fn racer(addr: std::net::SocketAddr, racer: u64, products: Vec<u64>, stop: Instant) -> (u64, u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(racer);
    let (mut committed, mut refused) = (0, 0);
    let mut n = 0u64;
    while Instant::now() < stop {
        let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut orders = OrderPortalClient::new(channel);
        while Instant::now() < stop {
            n += 1;
            let oid = racer * 1_000_000 + n;
            let cid = 2 + rng.gen_range(0..2u64); // clients 2 (even) and 3 (odd)
            let a = products[rng.gen_range(0..products.len())];
            let b = products[rng.gen_range(0..products.len())];
            let data = format!(
                r#"[{{"id":{a},"quantity":{}}},{{"id":{b},"quantity":{}}}]"#,
                rng.gen_range(1..3),
                rng.gen_range(1..3)
            );
            let order = Order { oid: oid.to_string(), cid: cid.to_string(), data };
            match orders.create_order(order).await {
                Ok(reply) if reply.get_ref().error == 0 => committed += 1,
                Ok(_) => refused += 1,
                Err(_) => break, // the portal died: reconnect
            }
            if rng.gen_bool(0.3) && orders.delete_order(Id { id: oid.to_string() }).await.is_err() {
                break;
            }
        }
    }
    (committed, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_orders_conserve_stock_through_portal_and_leader_crashes() {
    let mut cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    for cid in [2, 3] {
        let client = Client { cid: cid.to_string(), data: r#"{"name":"racer"}"#.into() };
        assert_eq!(admin.create_client(client).await.unwrap().into_inner().error, 0);
    }
    let products: Vec<u64> = (1..=6).collect();
    let initial: BTreeMap<u64, u64> = products.iter().map(|p| (*p, 15)).collect();
    for (pid, stock) in &initial {
        let data = format!(r#"{{"name":"scarce {pid}","price":1,"quantity":{stock}}}"#);
        assert_eq!(admin.create_product(Product { pid: pid.to_string(), data }).await.unwrap().into_inner().error, 0);
    }

    let stop = Instant::now() + Duration::from_secs(10);
    let addr = cluster.config().portals.order;
    let racers: Vec<_> = (1..=12).map(|r| tokio::spawn(racer(addr, r, products.clone(), stop))).collect();
    let mut faults = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(2200)).await;
        cluster.kill_portal(PortalKind::Order);
        faults += 1;
        if faults == 2 {
            let leader = cluster.wait_for_leader(Shard::Odd, READ_DEADLINE).await.unwrap();
            cluster.kill(leader);
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.start_node(leader).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        cluster.start_portal(PortalKind::Order).unwrap();
    }
    let (mut committed, mut refused) = (0, 0);
    for racer in racers {
        let (c, r) = racer.await.unwrap();
        committed += c;
        refused += r;
    }
    eprintln!("racing orders: {committed} committed, {refused} refused, {faults} portal kills, 1 leader kill");
    assert!(committed > 20, "the race made progress: {committed} committed, {refused} refused");
    assert!(refused > 0, "scarce stock refused some orders");

    // Abandoned transactions are settled by the shards within their timeout.
    let settle_by = Instant::now() + storage_node::node::housekeeping::TXN_TIMEOUT + Duration::from_secs(10);
    loop {
        let intents = scan_all(&cluster, Table::Intents).await;
        if intents.is_empty() {
            break;
        }
        assert!(
            Instant::now() < settle_by,
            "intents still locked: {:?}",
            intents.iter().map(|(k, _)| k).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let mut ordered: BTreeMap<u64, u64> = BTreeMap::new();
    let clients: Vec<u64> = scan_all(&cluster, Table::Clients)
        .await
        .iter()
        .filter_map(|(k, _)| match k {
            RowKey::Client(id) => Some(*id),
            _ => None,
        })
        .collect();
    for (key, row) in scan_all(&cluster, Table::Orders).await {
        let order: OrderRecord = decode_record(&row.value).unwrap();
        assert!(clients.contains(&order.cid), "{key} belongs to a client that exists");
        for line in order.lines {
            *ordered.entry(line.pid).or_default() += line.quantity;
        }
    }
    for (key, row) in scan_all(&cluster, Table::Products).await {
        let RowKey::Product(pid) = key else { continue };
        let product: ProductRecord = decode_record(&row.value).unwrap();
        let held = ordered.get(&pid).copied().unwrap_or_default();
        assert_eq!(
            product.quantity + held,
            initial[&pid],
            "product {pid}: stock {} + ordered {held}",
            product.quantity
        );
    }
    let index = scan_all(&cluster, Table::ClientOrders).await.len();
    let live = scan_all(&cluster, Table::Orders).await.len();
    assert_eq!(index, live, "the client index lists exactly the live orders");
}
