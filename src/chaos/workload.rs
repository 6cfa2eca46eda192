//! The chaos workload: clients that keep the cluster busy and record what
//! they saw.
//!
//! Key-value clients hammer a few hot keys per shard through the `Store`
//! service: writes of values unique in the whole run, linearizable reads,
//! deletes. Each operation is recorded with its call and return times on
//! one monotonic clock and an honest outcome: `ok`, `failed` (certainly not
//! applied: refused before it reached a node that could apply it) or
//! `unknown` (no answer; it may have been applied). Reads start at a random
//! member, so a node that wrongly answers reads itself gets caught.
//!
//! Order clients race cross-shard orders for scarce products through the
//! OrderPortal, and delete their own orders again to keep the stock moving;
//! a call without an answer goes again under its idempotency key. A price
//! client changes the prices of a few other products through the
//! AdminPortal all the while, so orders race price changes too. Their
//! results are judged at the end, not by a history: by the store's
//! invariants, by a ledger of what each client was told ([`OrderLedger`]),
//! and by the prices set and when ([`PriceChange`]): every order line must
//! hold a price its product had while the order was being made.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portals::idempotency::METADATA_KEY;
use portals::shop::OUTCOME_UNKNOWN;
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Id, Order, Product};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use storage_node::client::{ClientError, ClusterClient};
use storage_node::limits::IDEMPOTENCY_WINDOW;
use storage_node::{Command, CommandResult, Precondition, Query, QueryResult, RowKey, RowWrite, Shard};
use tokio::time::Instant;

use super::history::{Operation, Recorder};

/// Deadline of one key-value operation: short, so a fault turns into an
/// `unknown` quickly and the client moves on.
pub const KV_DEADLINE: Duration = Duration::from_secs(1);

/// The hot keys: `per_shard` keys in each shard.
pub fn hot_keys(per_shard: usize) -> Vec<String> {
    let mut keys = Vec::new();
    for shard in Shard::ALL {
        keys.extend((0..).map(|i| format!("hot-{i}")).filter(|k| Shard::of_key(k) == shard).take(per_shard));
    }
    keys
}

/// What a key-value client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KvOp {
    Write,
    Read,
    Delete,
}

/// One key-value client; runs until `stop` is set.
pub async fn kv_client(
    cluster: Arc<ClusterClient>,
    client: u64,
    keys: Vec<String>,
    recorder: Arc<Recorder>,
    seed: u64,
    stop: Arc<AtomicBool>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ client.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let key = keys[rng.gen_range(0..keys.len())].clone();
        let op = match rng.gen_range(0..100) {
            0..=44 => KvOp::Write,
            45..=94 => KvOp::Read,
            _ => KvOp::Delete,
        };
        let record = match op {
            KvOp::Write => write(&cluster, client, &key, &format!("c{client}-{n}"), &recorder).await,
            KvOp::Delete => delete(&cluster, client, &key, &recorder).await,
            KvOp::Read => read(&cluster, client, &key, &recorder, &mut rng).await,
        };
        recorder.record(record);
    }
}

/// Classifies a failed call: may it have been applied?
fn failed(op: Operation, error: &ClientError) -> Operation {
    if error.maybe_applied() {
        op.unknown()
    } else {
        op.failed()
    }
}

async fn write(cluster: &ClusterClient, client: u64, key: &str, value: &str, recorder: &Recorder) -> Operation {
    let row = RowKey::Kv(key.to_owned());
    let command = Command::single(RowWrite::upsert(row.clone(), value.as_bytes().to_vec()));
    let called = recorder.now();
    let result = cluster.shard(row.shard()).write(&command, KV_DEADLINE).await;
    let op = Operation::write(client, key, value, called, recorder.now());
    match result {
        Ok(CommandResult::Applied { .. }) => op,
        Ok(_) => op.failed(),
        Err(e) => failed(op, &e),
    }
}

async fn delete(cluster: &ClusterClient, client: u64, key: &str, recorder: &Recorder) -> Operation {
    let row = RowKey::Kv(key.to_owned());
    let command = Command::single(RowWrite::Delete { key: row.clone(), expect: Precondition::Any });
    let called = recorder.now();
    let result = cluster.shard(row.shard()).write(&command, KV_DEADLINE).await;
    let op = Operation::delete(client, key, called, recorder.now());
    match result {
        Ok(CommandResult::Applied { .. }) => op,
        Ok(_) => op.failed(),
        Err(e) => failed(op, &e),
    }
}

async fn read(cluster: &ClusterClient, client: u64, key: &str, recorder: &Recorder, rng: &mut StdRng) -> Operation {
    let row = RowKey::Kv(key.to_owned());
    let shard = cluster.shard(row.shard());
    let members: Vec<u64> = shard.member_ids().collect();
    let first = members[rng.gen_range(0..members.len())];
    let called = recorder.now();
    let result = shard.read_via(Some(first), &Query::Get(row), KV_DEADLINE).await;
    let returned = recorder.now();
    match result {
        Ok(QueryResult::Row(row)) => {
            let observed = row.map(|r| String::from_utf8_lossy(&r.value).into_owned());
            Operation::read(client, key, observed.as_deref(), called, returned)
        }
        // A read that got no value carries no information.
        _ => Operation::read(client, key, None, called, returned).failed(),
    }
}

/// Tallies of the order clients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrderTally {
    /// Orders committed (reply 0).
    pub committed: u64,
    /// Orders refused with a reason (4xx).
    pub refused: u64,
    /// Calls that got 503 or a transport error.
    pub unavailable: u64,
    /// Calls that got 500: the portal's own error, never expected.
    pub internal: u64,
    /// Calls not answered within [`SHOP_CALL_TIMEOUT`] (the portal's own
    /// deadline is 5 s, so it broke its promise or the call was lost).
    pub no_answer: u64,
    /// Orders deleted again.
    pub deleted: u64,
    /// Order calls sent again, under their idempotency key, after no
    /// answer or an unavailable one.
    pub retried: u64,
    /// Units of the scarce products in the committed orders: above their
    /// whole stock, units given back were sold again.
    pub units_sold: u64,
}

impl std::ops::AddAssign for OrderTally {
    /// Adds another client's tallies.
    fn add_assign(&mut self, other: OrderTally) {
        self.committed += other.committed;
        self.refused += other.refused;
        self.unavailable += other.unavailable;
        self.internal += other.internal;
        self.no_answer += other.no_answer;
        self.deleted += other.deleted;
        self.retried += other.retried;
        self.units_sold += other.units_sold;
    }
}

/// What the order clients were told, to check against the final state:
/// an acknowledged order must be there with its lines until a delete of it
/// is acknowledged, and then be gone; a refused one never there.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OrderLedger {
    /// Orders acknowledged (reply 0) and not sent a delete since: each
    /// (oid, client, units per product) must exist as created.
    pub kept: Vec<(u64, u64, BTreeMap<u64, u64>)>,
    /// Orders whose create was refused with a reason (4xx), and orders
    /// whose delete was acknowledged (or found them gone after an earlier
    /// delete of unknown outcome sent too long ago for its key to tell):
    /// none may exist.
    pub absent: Vec<u64>,
    /// Acknowledged orders a delete found missing that no earlier delete
    /// of theirs had removed (none was sent, or its key, asked again, said
    /// it had not committed): lost.
    pub lost: Vec<u64>,
    /// When each order acknowledged, or still unanswered at the end, was
    /// being made: its lines' prices must be ones its products had then.
    pub made: BTreeMap<u64, CallWindow>,
}

impl OrderLedger {
    /// Orders whose state the ledger fixes.
    pub fn len(&self) -> usize {
        self.kept.len() + self.absent.len() + self.lost.len()
    }

    /// True if it fixes no order's state.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds `other`'s entries.
    pub fn extend(&mut self, other: OrderLedger) {
        self.kept.extend(other.kept);
        self.absent.extend(other.absent);
        self.lost.extend(other.lost);
        self.made.extend(other.made);
    }
}

/// When a call was being made: from its first attempt to the answer that
/// settled it (a call sent again under its idempotency key took effect
/// once, somewhere in between).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallWindow {
    /// When the first attempt was sent.
    pub sent: Instant,
    /// When it was answered; `None` if the run ended first, so it may have
    /// taken effect at any time after `sent`.
    pub answered: Option<Instant>,
}

/// A price the price client set on a product.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceChange {
    /// The product.
    pub pid: u64,
    /// Its new price.
    pub price: f64,
    /// When the UpdateProduct call was being made.
    pub call: CallWindow,
}

/// Tallies of the price client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PriceTally {
    /// Prices set (reply 0).
    pub changed: u64,
    /// UpdateProduct calls sent again, under their idempotency key, after
    /// no answer, an unavailable one or a 500.
    pub retried: u64,
    /// Calls refused with a reason (4xx): never expected, the products
    /// exist and the data is valid.
    pub refused: u64,
}

/// Product `pid`'s price after its `version`th change in a run (0: as
/// seeded): unique to the product and the change, so that a line priced
/// with another product's price, or with a price from another time, is
/// told apart.
pub fn price_at(pid: u64, version: u64) -> f64 {
    100.0 * version as f64 + pid as f64 + 0.5
}

/// How long the price client waits between two price changes.
const PRICE_PAUSE: Duration = Duration::from_millis(25);

/// The price client: until `stop` is set, sets a new price (and `stock`,
/// since UpdateProduct sets both) on one of `products` after another
/// through the AdminPortal at `portal`, one call at a time; a call without
/// an answer goes again under its idempotency key until it gets one.
/// Returns the prices set, in the order they were set.
pub async fn price_client(
    portal: SocketAddr,
    products: Vec<u64>,
    stock: u64,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (PriceTally, Vec<PriceChange>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7072_6963_6573);
    let mut tally = PriceTally::default();
    let mut versions: BTreeMap<u64, u64> = BTreeMap::new();
    let mut changes = Vec::new();
    // The change last sent, with its version, if its outcome is unknown.
    let mut unsure: Option<(PriceChange, u64)> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(channel) = connect(portal).await else { continue };
        let mut admin = AdminPortalClient::new(channel);
        while !stop.load(Ordering::Relaxed) {
            let (change, version) = match unsure.take() {
                Some(sent) => {
                    tally.retried += 1;
                    sent
                }
                None => {
                    let pid = products[rng.gen_range(0..products.len())];
                    let version = versions.entry(pid).or_default();
                    *version += 1;
                    let call = CallWindow { sent: Instant::now(), answered: None };
                    (PriceChange { pid, price: price_at(pid, *version), call }, *version)
                }
            };
            let pid = change.pid;
            let data = format!(r#"{{"name":"item {pid}","price":{},"quantity":{stock}}}"#, change.price);
            let mut request = tonic::Request::new(Product { pid: pid.to_string(), data });
            request.metadata_mut().insert(METADATA_KEY, idempotency_key(seed, pid, &format!("price-{version}")));
            match admin.update_product(request).await {
                Ok(reply) => match reply.into_inner().error {
                    0 => {
                        tally.changed += 1;
                        changes.push(PriceChange {
                            call: CallWindow { answered: Some(Instant::now()), ..change.call },
                            ..change
                        });
                    }
                    // Unavailable, or the portal's own error: perhaps made.
                    503 | 500 => {
                        unsure = Some((change, version));
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    _ => tally.refused += 1,
                },
                Err(_) => {
                    unsure = Some((change, version));
                    break; // reconnect
                }
            }
            tokio::time::sleep(PRICE_PAUSE).await;
        }
    }
    // A change without an answer may have been made.
    changes.extend(unsure.map(|(change, _)| change));
    (tally, changes)
}

/// Order IDs each order client has for itself (client `c` uses those from
/// `(c + 1) *` this on): far more than a run's calls.
const ORDER_IDS_PER_CLIENT: u64 = 1_000_000_000_000;

/// How long an order client waits before it sends again a call that a
/// portal answered as unavailable.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// One CreateOrder call of an order client.
#[derive(Clone, Copy)]
struct OrderCall {
    oid: u64,
    cid: u64,
    /// (product, quantity) of its two lines, perhaps of one product.
    lines: [(u64, u64); 2],
    /// When its first attempt was sent.
    sent: Instant,
}

impl OrderCall {
    /// The call, under its idempotency key.
    fn request(&self, seed: u64) -> tonic::Request<Order> {
        let [(a, qa), (b, qb)] = self.lines;
        let data = format!(r#"[{{"id":{a},"quantity":{qa}}},{{"id":{b},"quantity":{qb}}}]"#);
        let mut request = tonic::Request::new(Order { oid: self.oid.to_string(), cid: self.cid.to_string(), data });
        request.metadata_mut().insert(METADATA_KEY, idempotency_key(seed, self.oid, "create"));
        request
    }
}

/// The idempotency key of a client's `call` of order or product `id`:
/// unique in the run, and in runs of other seeds.
fn idempotency_key(seed: u64, id: u64, call: &str) -> tonic::metadata::MetadataValue<tonic::metadata::Ascii> {
    format!("chaos-{seed}-{id}-{call}").parse().expect("printable ASCII")
}

/// An acknowledged order this client has not seen deleted.
struct HeldOrder {
    oid: u64,
    cid: u64,
    units: BTreeMap<u64, u64>,
    /// When the first delete of it whose outcome is unknown was sent.
    delete_sent: Option<Instant>,
}

/// DeleteOrder of `oid`, under the client's idempotency key for it.
fn delete_request(seed: u64, oid: u64) -> tonic::Request<Id> {
    let mut delete = tonic::Request::new(Id { id: oid.to_string() });
    delete.metadata_mut().insert(METADATA_KEY, idempotency_key(seed, oid, "delete"));
    delete
}

/// A channel to the portal at `portal`, or `None` after a short pause if
/// it does not take connections (it may be down, killed by a fault).
async fn connect(portal: SocketAddr) -> Option<tonic::transport::Channel> {
    let endpoint = storage_node::endpoint::endpoint(portal).expect("a socket address is a URI");
    let endpoint = endpoint.connect_timeout(Duration::from_millis(300)).timeout(SHOP_CALL_TIMEOUT);
    match endpoint.connect().await {
        Ok(channel) => Some(channel),
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            None
        }
    }
}

/// How long a shop client waits for one answer: three times the
/// portal's default deadline. Without a bound, one lost call would hang the
/// whole run.
pub const SHOP_CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// One order client racing for the `scarce` products, and ordering the
/// `priced` ones (whose prices change), through the OrderPortal at
/// `portal` until `stop` is set; reconnects when the portal dies.
pub async fn order_client(
    portal: SocketAddr,
    client: u64,
    (scarce, priced): (Vec<u64>, Vec<u64>),
    seed: u64,
    stop: Arc<AtomicBool>,
) -> (OrderTally, OrderLedger) {
    let products: Vec<u64> = scarce.iter().chain(&priced).copied().collect();
    let mut rng = StdRng::seed_from_u64(seed ^ (client << 32));
    let mut tally = OrderTally::default();
    let mut ledger = OrderLedger::default();
    let mut n = 0u64;
    // Orders this client created (acknowledged) and has not seen deleted.
    let mut held: Vec<HeldOrder> = Vec::new();
    // The order call last sent, if its outcome is unknown.
    let mut unsure: Option<OrderCall> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(channel) = connect(portal).await else { continue };
        let mut orders = OrderPortalClient::new(channel);
        while !stop.load(Ordering::Relaxed) {
            // An order whose outcome is unknown goes again, under the same
            // idempotency key, until it gets an answer: then the ledger
            // knows it, and the portals' idempotency meets every fault.
            let call = match unsure.take() {
                Some(call) => {
                    tally.retried += 1;
                    call
                }
                None => {
                    n += 1;
                    let oid = ORDER_IDS_PER_CLIENT * (client + 1) + n;
                    let (a, b) =
                        (products[rng.gen_range(0..products.len())], products[rng.gen_range(0..products.len())]);
                    let (qa, qb) = (rng.gen_range(1..3), rng.gen_range(1..3));
                    OrderCall { oid, cid: 2 + (oid % 2), lines: [(a, qa), (b, qb)], sent: Instant::now() }
                }
            };
            let created = match orders.create_order(call.request(seed)).await {
                Ok(reply) => match reply.into_inner().error {
                    0 => {
                        let mut units = BTreeMap::new();
                        for (pid, quantity) in call.lines {
                            *units.entry(pid).or_default() += quantity;
                            if scarce.contains(&pid) {
                                tally.units_sold += quantity;
                            }
                        }
                        tally.committed += 1;
                        ledger.made.insert(call.oid, CallWindow { sent: call.sent, answered: Some(Instant::now()) });
                        held.push(HeldOrder { oid: call.oid, cid: call.cid, units, delete_sent: None });
                        true
                    }
                    error @ (503 | 500) => {
                        match error {
                            500 => tally.internal += 1,
                            _ => tally.unavailable += 1,
                        }
                        unsure = Some(call);
                        tokio::time::sleep(RETRY_PAUSE).await;
                        continue;
                    }
                    _ => {
                        tally.refused += 1;
                        ledger.absent.push(call.oid);
                        false
                    }
                },
                Err(status) if status.code() == tonic::Code::Cancelled && status.message().contains("Timeout") => {
                    tally.no_answer += 1;
                    unsure = Some(call);
                    break; // reconnect
                }
                Err(_) => {
                    tally.unavailable += 1;
                    unsure = Some(call);
                    break; // reconnect
                }
            };
            // The stock is scarce: kept, it would sell out in the first
            // seconds and every later order be refused. A client whose
            // order failed gives one of its orders back, and every client
            // now and then, so orders commit under every fault of the run.
            if held.is_empty() || (created && !rng.gen_bool(0.3)) {
                continue;
            }
            let at = rng.gen_range(0..held.len());
            let oid = held[at].oid;
            let earlier = held[at].delete_sent;
            held[at].delete_sent = Some(earlier.unwrap_or_else(Instant::now));
            let Ok(reply) = orders.delete_order(delete_request(seed, oid)).await else { break };
            let mut answer = reply.into_inner();
            // Gone after a delete of unknown outcome: deleted by it, or
            // lost. The delete's key tells which: a delete that committed
            // left its answer under the key (kept for the portals'
            // idempotency window), so the same call again answers success.
            // The portal reads the key again before it answers 404, but
            // that read may come before the earlier attempt's prepare
            // lands, or go unanswered under a fault; a new call reads the
            // key first and answers 503, not 404, if it cannot.
            // It can within half the window; decided once, for both uses below.
            let key_tells = earlier.is_some_and(|sent| sent.elapsed() < IDEMPOTENCY_WINDOW / 2);
            if answer.error == 404 && key_tells {
                let Ok(reply) = orders.delete_order(delete_request(seed, oid)).await else { break };
                answer = reply.into_inner();
            }
            match answer.error {
                0 => {
                    tally.deleted += 1;
                    ledger.absent.push(held.swap_remove(at).oid);
                }
                // Lost, unless an earlier delete was sent too long ago for
                // its key to tell.
                404 if earlier.is_some() && !key_tells => ledger.absent.push(held.swap_remove(at).oid),
                404 => ledger.lost.push(held.swap_remove(at).oid),
                // Refused with a reason (4xx), or unavailable without
                // having been applied: not deleted by this call.
                error if (400..500).contains(&error) || !answer.description().contains(OUTCOME_UNKNOWN) => {
                    held[at].delete_sent = earlier
                }
                _ => {}
            }
        }
    }
    // An order still without an answer may have been made.
    if let Some(call) = unsure {
        ledger.made.insert(call.oid, CallWindow { sent: call.sent, answered: None });
    }
    // Orders with a delete of unknown outcome may be there or not.
    ledger.kept.extend(held.into_iter().filter(|o| o.delete_sent.is_none()).map(|o| (o.oid, o.cid, o.units)));
    (tally, ledger)
}
