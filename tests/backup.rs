//! Online backup and restore against real processes: a backup taken while
//! kv writes and cross-shard orders go on, restored into a new cluster on
//! other ports, holds every write acknowledged before the backup began,
//! keeps stock plus ordered units conserved and leaves no intent; damaged
//! or mismatched backups are refused, naming the file.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{binaries, channel, cluster_with, shop_cluster, STARTUP};
use raftshop::local_cluster::{ClusterOptions, PortalKind};
use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
use raftshop_proto::api::{Client, Id, Order, Product};
use storage_node::client::ClusterClient;
use storage_node::{Command, CommandResult, Query, QueryResult, RowKey, RowWrite, Shard, Table};

/// Units each product starts with.
const STOCK: u64 = 1_000_000;
/// The products every order takes one unit of: 3 lives in shard odd, 4 in
/// shard even; the orders (even OIDs, client 2) live in shard even.
const PRODUCTS: [u64; 2] = [3, 4];

/// What the load had acknowledged, and when.
#[derive(Default)]
struct Acknowledged {
    /// kv key number → when its put was acknowledged.
    puts: BTreeMap<u64, Instant>,
    /// OID → when its order was acknowledged.
    orders: BTreeMap<u64, Instant>,
}

fn kv_key(n: u64) -> RowKey {
    RowKey::Kv(format!("backup-{n}"))
}

/// Every row of `table` in `shard`.
async fn scan(client: &ClusterClient, shard: Shard, table: Table) -> Vec<(RowKey, storage_node::Row)> {
    let mut rows = Vec::new();
    let mut after = None;
    loop {
        let query = Query::Scan { table, after: after.clone(), limit: 1_000 };
        let QueryResult::Rows(page) = client.shard(shard).read(&query, Duration::from_secs(10)).await.unwrap() else {
            panic!("a scan answers rows")
        };
        match page.last() {
            None => return rows,
            Some((key, _)) => after = Some(key.clone()),
        }
        rows.extend(page);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_taken_under_load_restores_every_acknowledged_write_and_whole_orders() {
    let cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let client = Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(admin.create_client(client).await.unwrap().into_inner().error, 0);
    for pid in PRODUCTS {
        let data = format!(r#"{{"name":"p{pid}","price":1,"quantity":{STOCK}}}"#);
        assert_eq!(admin.create_product(Product { pid: pid.to_string(), data }).await.unwrap().into_inner().error, 0);
    }

    let acknowledged = Arc::new(Mutex::new(Acknowledged::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let kv = {
        let (client, acknowledged, stop) = (cluster.client(), acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            for n in 0.. {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let key = kv_key(n);
                let put = Command::single(RowWrite::upsert(key.clone(), n.to_string().into_bytes()));
                if let Ok(CommandResult::Applied { .. }) =
                    client.shard(key.shard()).write(&put, Duration::from_secs(5)).await
                {
                    acknowledged.lock().unwrap().puts.insert(n, Instant::now());
                }
            }
        })
    };
    let orders = {
        let addr = cluster.config().portals.order;
        let (acknowledged, stop) = (acknowledged.clone(), stop.clone());
        tokio::spawn(async move {
            let mut portal = OrderPortalClient::new(channel(addr).await);
            for oid in (100..).step_by(2) {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let lines = r#"[{"id":3,"quantity":1},{"id":4,"quantity":1}]"#;
                let order = Order { oid: u64::to_string(&oid), cid: "2".into(), data: lines.into() };
                if portal.create_order(order).await.is_ok_and(|reply| reply.into_inner().error == 0) {
                    acknowledged.lock().unwrap().orders.insert(oid, Instant::now());
                }
            }
        })
    };

    tokio::time::sleep(Duration::from_secs(2)).await;
    let backup_dir = tempfile::tempdir().unwrap();
    let backup = backup_dir.path().join("backup");
    let began = Instant::now();
    let manifest = raftshop::backup::take(cluster.config(), &backup, Duration::from_secs(30)).await.unwrap();
    let took = began.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    kv.await.unwrap();
    orders.await.unwrap();
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let puts_before: Vec<u64> = acknowledged.puts.iter().filter(|(_, at)| **at < began).map(|(n, _)| *n).collect();
    let orders_before: Vec<u64> = acknowledged.orders.iter().filter(|(_, at)| **at < began).map(|(o, _)| *o).collect();
    let orders_after = acknowledged.orders.len() - orders_before.len();
    eprintln!(
        "backup took {took:?} at indexes even {} / odd {}; acknowledged before it: {} puts, {} orders; {orders_after} \
         orders acknowledged during and after it",
        manifest.shards[&Shard::Even].index,
        manifest.shards[&Shard::Odd].index,
        puts_before.len(),
        orders_before.len(),
    );
    assert!(puts_before.len() > 50 && orders_before.len() > 5, "the load ran before the backup");
    assert!(orders_after > 0, "cross-shard orders went on once the backup had its cut");
    drop(cluster);

    let mut options = ClusterOptions::new(binaries());
    options.restore_from = Some(backup.clone());
    let mut restored = cluster_with(options).await;
    for shard in Shard::ALL {
        let leader = restored.wait_for_leader(shard, STARTUP).await.unwrap();
        let status = restored.shard_client(shard).status(leader, STARTUP).await.unwrap();
        assert_eq!(status.state_digest, manifest.shards[&shard].digest, "shard {shard} holds the backup's state");
        assert_eq!(status.members.len(), 3, "shard {shard} has the new cluster's three members: {status:?}");
    }
    let client = restored.client();
    for n in &puts_before {
        let row = client.get(&kv_key(*n), Duration::from_secs(10)).await.unwrap();
        assert_eq!(row.map(|row| row.value), Some(n.to_string().into_bytes()), "put {n} was acknowledged before");
    }
    restored.start_portal(PortalKind::Order).unwrap();
    restored.wait_for_portal(PortalKind::Order, STARTUP).await.unwrap();
    let mut portal = OrderPortalClient::new(channel(restored.config().portals.order).await);
    for oid in &orders_before {
        let order = portal.retrieve_order(Id { id: oid.to_string() }).await.unwrap().into_inner();
        assert!(order.data.contains("\"quantity\":1"), "order {oid} was acknowledged before: {order:?}");
    }

    // Whole orders only: every product's stock plus the units its orders
    // hold is what it started with, and no transaction is left half-way.
    let orders_held = scan(&client, Shard::Even, Table::Orders).await.len() as u64;
    for pid in PRODUCTS {
        let row = client.get(&RowKey::Product(pid), Duration::from_secs(10)).await.unwrap().unwrap();
        let product =
            storage_node::records::shop::decode_record::<storage_node::records::shop::ProductRecord>(&row.value)
                .unwrap();
        assert_eq!(product.quantity + orders_held, STOCK, "product {pid}: stock plus ordered units are conserved");
    }
    for shard in Shard::ALL {
        assert!(scan(&client, shard, Table::Intents).await.is_empty(), "shard {shard} restored an intent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_mismatched_backup_is_refused_naming_the_file() {
    let cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let put = Command::single(RowWrite::upsert(kv_key(1), b"one".to_vec()));
    cluster.client().shard(kv_key(1).shard()).write(&put, Duration::from_secs(5)).await.unwrap();
    let leader = cluster.wait_for_leader(Shard::Even, STARTUP).await.unwrap();
    let mut store = cluster.shard_client(Shard::Even).store_client(leader).unwrap();
    let unfenced = store.backup(raftshop_proto::store::BackupRequest {}).await.map(|_| ()).unwrap_err();
    assert!(
        unfenced.message().contains("no backup fence holds"),
        "a snapshot without the fence is refused: {unfenced:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    raftshop::backup::take(cluster.config(), &backup, Duration::from_secs(30)).await.unwrap();
    let again = raftshop::backup::take(cluster.config(), &backup, Duration::from_secs(30)).await.unwrap_err();
    assert!(again.contains("is not empty"), "{again}");
    let target = |name: &str| dir.path().join(name);
    let restore = |base: std::path::PathBuf| {
        let config = cluster.config().clone();
        let backup = backup.clone();
        async move {
            let mut config = config;
            for node in &mut config.nodes {
                node.data_dir = std::path::PathBuf::from(format!("node-{}", node.id));
            }
            raftshop::backup::restore(&backup, &config, &base).await
        }
    };

    let snapshot = backup.join("odd.snapshot");
    let original = std::fs::read(&snapshot).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(&snapshot, &flipped).unwrap();
    let error = restore(target("a")).await.unwrap_err();
    assert!(error.contains("odd.snapshot") && error.contains("damaged"), "{error}");
    std::fs::write(&snapshot, &original).unwrap();

    let manifest_path = backup.join("manifest.json");
    let manifest = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, manifest.replace("\"format\": 1", "\"format\": 7")).unwrap();
    let error = restore(target("b")).await.unwrap_err();
    assert!(error.contains("manifest.json") && error.contains("version 7"), "{error}");
    std::fs::write(&manifest_path, &manifest).unwrap();

    std::fs::remove_file(backup.join("even.snapshot")).unwrap();
    let error = restore(target("c")).await.unwrap_err();
    assert!(error.contains("even.snapshot"), "{error}");
    assert!(!target("c").join("node-1").exists(), "nothing was built from a refused backup");
}
