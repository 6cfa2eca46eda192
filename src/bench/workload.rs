//! The benchmark's workloads: one request each, against one target.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portals::auth::PortalChannel;
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Client, Id, Order, Product};
use raftshop_proto::etcd::kv_client::KvClient;
use raftshop_proto::etcd::{PutRequest, RangeRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage_node::client::ClusterClient;
use storage_node::{ClusterConfig, Command, CommandResult, Query, QueryResult, RowKey, RowWrite};
use tonic::transport::Channel;

/// Deadline of one request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// What is measured.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum Workload {
    /// Write a value (the Store service, or etcd Put).
    KvPut,
    /// Read a value linearizably (the Store service, or etcd Range).
    KvGet,
    /// CreateProduct through the AdminPortal.
    CreateProduct,
    /// RetrieveProduct through the AdminPortal.
    RetrieveProduct,
    /// UpdateProduct through the AdminPortal.
    UpdateProduct,
    /// CreateOrder through the OrderPortal from many customers, two
    /// products each: half the orders in one shard (one write), half with
    /// the customer in the other shard (a cross-shard commit).
    CreateOrder,
    /// CreateOrder with customer, order and products in one shard.
    CreateOrderLocal,
    /// CreateOrder with the customer in the other shard than the order and
    /// its products.
    CreateOrderCross,
    /// CreateOrder of one product from each shard, the customer in either:
    /// every order is cross-shard, and one product's price comes from the
    /// shard that does not hold the order.
    CreateOrderSpread,
    /// A shop day: 50% RetrieveProduct, 20% CreateOrder, 15%
    /// RetrieveOrder, 10% UpdateProduct, 5% CreateClient.
    Mixed,
}

impl Workload {
    /// True for the key-value workloads, which can also run against etcd.
    pub fn is_kv(self) -> bool {
        matches!(self, Workload::KvPut | Workload::KvGet)
    }

    /// True if `--against etcd` runs it against etcd too: the key-value
    /// workloads, and `create-product` as etcd's put of kv-put's keys and
    /// values (a product written through the admin portal against the
    /// plainest replicated write etcd has, as issue 13 compares them).
    pub fn has_etcd_peer(self) -> bool {
        self.is_kv() || self == Workload::CreateProduct
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Workload::KvPut => "kv-put",
            Workload::KvGet => "kv-get",
            Workload::CreateProduct => "create-product",
            Workload::RetrieveProduct => "retrieve-product",
            Workload::UpdateProduct => "update-product",
            Workload::CreateOrder => "create-order",
            Workload::CreateOrderLocal => "create-order-local",
            Workload::CreateOrderCross => "create-order-cross",
            Workload::CreateOrderSpread => "create-order-spread",
            Workload::Mixed => "mixed",
        };
        f.write_str(name)
    }
}

/// Why a request failed, for the error table.
pub type ErrorKind = String;

/// Where requests go, with connections shared by the workers.
#[derive(Clone)]
pub enum Target {
    /// raftshop's Store service, directly.
    Store(Vec<Arc<ClusterClient>>),
    /// raftshop's portals.
    Portals { admin: Vec<PortalChannel>, order: Vec<PortalChannel> },
    /// A local etcd.
    Etcd(Vec<Channel>),
}

/// Sizes of the data a workload touches.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// Distinct keys (or products) read and overwritten.
    pub keys: u64,
    /// Bytes per value for the key-value workloads.
    pub value_size: usize,
}

/// Numbers that must never repeat across workers (new IDs).
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A fresh ID above every seeded one.
fn fresh_id(parity: u64) -> u64 {
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    let base = 10_000_000 + n * 2 + parity;
    base + (std::process::id() as u64 % 1000) * 100_000_000
}

/// The key of index `i`.
pub fn kv_key(i: u64) -> String {
    format!("bench-{i:08}")
}

/// One request of `workload` against `target` by `worker`.
pub async fn request(
    workload: Workload,
    target: &Target,
    worker: usize,
    shape: Shape,
    value: &[u8],
) -> Result<(), ErrorKind> {
    let mut rng = StdRng::from_rng(rand::thread_rng()).expect("the thread rng seeds another");
    let key = rng.gen_range(0..shape.keys);
    match (workload, target) {
        (Workload::KvPut, Target::Store(clients)) => {
            let row = RowKey::Kv(kv_key(key));
            let command = Command::single(RowWrite::upsert(row.clone(), value.to_vec()));
            match clients[worker % clients.len()].shard(row.shard()).write(&command, REQUEST_DEADLINE).await {
                Ok(CommandResult::Applied { .. }) => Ok(()),
                Ok(other) => Err(format!("refused: {other:?}")),
                Err(e) => Err(error_kind(&e.to_string())),
            }
        }
        (Workload::KvGet, Target::Store(clients)) => {
            let row = RowKey::Kv(kv_key(key));
            match clients[worker % clients.len()].shard(row.shard()).read(&Query::Get(row), REQUEST_DEADLINE).await {
                Ok(QueryResult::Row(Some(_))) => Ok(()),
                Ok(QueryResult::Row(None)) => Err("missing key".into()),
                Ok(other) => Err(format!("unexpected: {other:?}")),
                Err(e) => Err(error_kind(&e.to_string())),
            }
        }
        // Issue 13's yardstick for a product written through the portal:
        // etcd's put of the same keys and values as kv-put.
        (Workload::KvPut | Workload::CreateProduct, Target::Etcd(channels)) => {
            let mut kv = KvClient::new(channels[worker % channels.len()].clone());
            let request = PutRequest { key: kv_key(key).into_bytes(), value: value.to_vec() };
            kv.put(request).await.map(|_| ()).map_err(|s| error_kind(s.message()))
        }
        (Workload::KvGet, Target::Etcd(channels)) => {
            let mut kv = KvClient::new(channels[worker % channels.len()].clone());
            let request = RangeRequest { key: kv_key(key).into_bytes(), ..Default::default() };
            match kv.range(request).await {
                Ok(reply) if reply.get_ref().kvs.is_empty() => Err("missing key".into()),
                Ok(_) => Ok(()),
                Err(s) => Err(error_kind(s.message())),
            }
        }
        (workload, Target::Portals { admin, order }) => {
            let admin = AdminPortalClient::new(admin[worker % admin.len()].clone());
            let order = OrderPortalClient::new(order[worker % order.len()].clone());
            portal_request(workload, admin, order, key, shape, &mut rng).await
        }
        (workload, _) => Err(format!("{workload} does not run against this target")),
    }
}

/// A product's `data` with plenty of stock.
fn product_data(price: f64) -> String {
    format!(r#"{{"name":"bench item","price":{price},"quantity":100000000}}"#)
}

/// The seeded product of index `i`: PIDs 1 to `keys`, both shards.
pub fn seeded_pid(i: u64) -> u64 {
    i + 1
}

/// Customers seeded: CIDs 1 to this, both shards.
pub const SEEDED_CLIENTS: u64 = 64;

/// Of the IDs 1 to `2 * per_shard`, one of `parity` (0 even, 1 odd),
/// picked by `i`.
fn id_of_parity(parity: u64, i: u64, per_shard: u64) -> u64 {
    2 * (i % per_shard.max(1)) + 2 - parity
}

/// An order of two seeded products from a seeded customer: order and
/// products in a random shard, the customer in the same one (`local`) or
/// the other.
fn order_of(local: bool, shape: Shape, rng: &mut impl Rng) -> Order {
    let parity = rng.gen_range(0..2);
    let customer = if local { parity } else { 1 - parity };
    let (a, b) = (rng.gen_range(0..shape.keys.max(1)), rng.gen_range(0..shape.keys.max(1)));
    let products = shape.keys / 2;
    let (a, b) = (id_of_parity(parity, a, products), id_of_parity(parity, b, products));
    let data = format!(r#"[{{"id":{a},"quantity":1}},{{"id":{b},"quantity":1}}]"#);
    let cid = id_of_parity(customer, rng.gen_range(0..SEEDED_CLIENTS), SEEDED_CLIENTS / 2);
    Order { oid: fresh_id(parity).to_string(), cid: cid.to_string(), data }
}

/// An order of one seeded product from each shard, the order and the
/// customer each in a random shard.
fn spread_order(shape: Shape, rng: &mut impl Rng) -> Order {
    let products = shape.keys / 2;
    let (a, b) = (rng.gen_range(0..shape.keys.max(1)), rng.gen_range(0..shape.keys.max(1)));
    let (even, odd) = (id_of_parity(0, a, products), id_of_parity(1, b, products));
    let data = format!(r#"[{{"id":{even},"quantity":1}},{{"id":{odd},"quantity":1}}]"#);
    let cid = id_of_parity(rng.gen_range(0..2), rng.gen_range(0..SEEDED_CLIENTS), SEEDED_CLIENTS / 2);
    Order { oid: fresh_id(rng.gen_range(0..2)).to_string(), cid: cid.to_string(), data }
}

async fn portal_request(
    workload: Workload,
    mut admin: AdminPortalClient<PortalChannel>,
    mut order: OrderPortalClient<PortalChannel>,
    key: u64,
    shape: Shape,
    rng: &mut impl Rng,
) -> Result<(), ErrorKind> {
    let reply = |r: Result<tonic::Response<raftshop_proto::api::Reply>, tonic::Status>| match r {
        Ok(reply) if reply.get_ref().error == 0 => Ok(()),
        Ok(reply) => {
            Err(format!("{} {}", reply.get_ref().error, reply.get_ref().description.clone().unwrap_or_default()))
        }
        Err(status) => Err(error_kind(status.message())),
    };
    let workload = match workload {
        Workload::Mixed => match rng.gen_range(0..100) {
            0..=49 => Workload::RetrieveProduct,
            50..=69 => Workload::CreateOrder,
            70..=84 => return retrieve_order(&mut order, key).await,
            85..=94 => Workload::UpdateProduct,
            _ => {
                let client = Client { cid: fresh_id(1).to_string(), data: r#"{"name":"bench"}"#.into() };
                return reply(admin.create_client(client).await);
            }
        },
        other => other,
    };
    match workload {
        Workload::CreateProduct => reply(
            admin
                .create_product(Product { pid: fresh_id(rng.gen_range(0..2)).to_string(), data: product_data(2.5) })
                .await,
        ),
        Workload::RetrieveProduct => match admin.retrieve_product(Id { id: seeded_pid(key).to_string() }).await {
            Ok(p) if p.get_ref().pid != "0" => Ok(()),
            Ok(_) => Err("missing product".into()),
            Err(status) => Err(error_kind(status.message())),
        },
        Workload::UpdateProduct => {
            reply(admin.update_product(Product { pid: seeded_pid(key).to_string(), data: product_data(2.5) }).await)
        }
        Workload::CreateOrder => {
            let local = rng.gen_bool(0.5);
            reply(order.create_order(order_of(local, shape, rng)).await)
        }
        Workload::CreateOrderLocal => reply(order.create_order(order_of(true, shape, rng)).await),
        Workload::CreateOrderCross => reply(order.create_order(order_of(false, shape, rng)).await),
        Workload::CreateOrderSpread => reply(order.create_order(spread_order(shape, rng)).await),
        other => Err(format!("{other} does not run against the portals")),
    }
}

async fn retrieve_order(order: &mut OrderPortalClient<PortalChannel>, _key: u64) -> Result<(), ErrorKind> {
    let latest = NEXT_ID.load(Ordering::Relaxed).saturating_sub(1);
    let oid = 10_000_000 + latest * 2 + (std::process::id() as u64 % 1000) * 100_000_000;
    order.retrieve_order(Id { id: oid.to_string() }).await.map(|_| ()).map_err(|s| error_kind(s.message()))
}

/// A short class of an error message, for the error table.
fn error_kind(message: &str) -> ErrorKind {
    let lower = message.to_ascii_lowercase();
    let kind = if lower.contains("deadline") || lower.contains("did not answer") {
        "timeout"
    } else if lower.contains("no reachable leader") || lower.contains("unavailable") {
        "unavailable"
    } else if lower.contains("connect") {
        "connection"
    } else {
        return message.chars().take(60).collect();
    };
    kind.into()
}

/// Puts every key once, so reads find them (`kv-get`).
pub async fn seed_kv(target: &Target, shape: Shape, value: &[u8]) -> Result<(), String> {
    for chunk in (0..shape.keys).collect::<Vec<_>>().chunks(64) {
        futures::future::try_join_all(chunk.iter().map(|i| seed_key(target, *i, value))).await?;
    }
    Ok(())
}

/// Puts key `i`, retrying a few times (a leader may still be settling).
async fn seed_key(target: &Target, i: u64, value: &[u8]) -> Result<(), String> {
    let mut attempts = 0;
    loop {
        let result = match target {
            Target::Store(clients) => {
                let row = RowKey::Kv(kv_key(i));
                let command = Command::single(RowWrite::upsert(row.clone(), value.to_vec()));
                clients[0]
                    .shard(row.shard())
                    .write(&command, REQUEST_DEADLINE)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Target::Etcd(channels) => {
                let request = PutRequest { key: kv_key(i).into_bytes(), value: value.to_vec() };
                KvClient::new(channels[0].clone()).put(request).await.map(|_| ()).map_err(|s| s.to_string())
            }
            Target::Portals { .. } => Ok(()),
        };
        attempts += 1;
        match result {
            Err(e) if attempts >= 3 => return Err(format!("seeding key {i}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            Ok(()) => return Ok(()),
        }
    }
}

/// Creates the seeded client and products through the portals.
pub async fn seed_shop(target: &Target, shape: Shape) -> Result<(), String> {
    let Target::Portals { admin, .. } = target else { return Ok(()) };
    let admin = AdminPortalClient::new(admin[0].clone());
    let clients = (1..=SEEDED_CLIENTS).map(|cid| {
        let mut admin = admin.clone();
        async move {
            let client = Client { cid: cid.to_string(), data: r#"{"name":"bench"}"#.into() };
            let reply = admin.create_client(client).await.map_err(|e| e.to_string())?.into_inner();
            match reply.error {
                0 | 400 => Ok(()),
                _ => Err(format!("seeding client {cid}: {:?}", reply.description)),
            }
        }
    });
    futures::future::try_join_all(clients).await?;
    for chunk in (0..shape.keys.max(2)).collect::<Vec<_>>().chunks(64) {
        let creates = chunk.iter().map(|i| {
            let mut admin = admin.clone();
            async move {
                let product = Product { pid: seeded_pid(*i).to_string(), data: product_data(2.5) };
                admin.create_product(product).await.map(|_| ()).map_err(|e| e.to_string())
            }
        });
        futures::future::try_join_all(creates).await?;
    }
    Ok(())
}

/// `count` channels to the Store service: one `ClusterClient` each.
pub fn store_target(config: &ClusterConfig, count: usize) -> Target {
    Target::Store((0..count.max(1)).map(|_| Arc::new(ClusterClient::new(config))).collect())
}
