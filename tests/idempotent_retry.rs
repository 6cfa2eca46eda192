//! Safe retries against real processes: a write sent again with the same
//! idempotency key answers like the first and applies once — sent twice in
//! a row, sent many times at once, sent again after a first attempt
//! whose outcome was unknown because the shard leader was SIGKILLed mid-call,
//! and sent again while a first attempt whose portal died is still
//! prepared on both shards, or on one only past the retry's deadline.

mod common;
mod edge;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{channel, shop_cluster};
use edge::{keyed, ExtraPortal};
use portals::shop::OUTCOME_UNKNOWN;
use raftshop::local_cluster::{LocalCluster, PortalKind};
use raftshop_proto::api::{admin_portal_client::AdminPortalClient, order_portal_client::OrderPortalClient};
use raftshop_proto::api::{Client, Id, Order, Product, Reply};
use serde_json::Value;
use storage_node::{RowKey, Shard, Table};
use tonic::transport::Channel;

/// A reply's code and sentence.
fn code(reply: Result<tonic::Response<Reply>, tonic::Status>) -> (i32, String) {
    match reply {
        Ok(reply) => {
            let reply = reply.into_inner();
            (reply.error, reply.description.unwrap_or_default())
        }
        Err(status) => (-1, format!("{status:?}")),
    }
}

/// Product `pid`'s stock.
async fn stock(admin: &mut AdminPortalClient<Channel>, pid: u64) -> u64 {
    let product = admin.retrieve_product(Id { id: pid.to_string() }).await.unwrap().into_inner();
    serde_json::from_str::<Value>(&product.data).unwrap()["quantity"].as_u64().unwrap()
}

/// An order of `cid` for `(pid, quantity)` lines.
fn order(oid: u64, cid: u64, lines: &[(u64, u64)]) -> Order {
    let items: Vec<String> = lines.iter().map(|(pid, q)| format!(r#"{{"id":{pid},"quantity":{q}}}"#)).collect();
    Order { oid: oid.to_string(), cid: cid.to_string(), data: format!("[{}]", items.join(",")) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_key_twice_applies_once_and_answers_success() {
    let cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);

    // A client created twice under one key: success twice, created once.
    let ana = || Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() };
    assert_eq!(code(admin.create_client(keyed(ana(), "c-1")).await).0, 0);
    assert_eq!(code(admin.create_client(keyed(ana(), "c-1")).await), (0, String::new()), "the retry succeeds");
    let (error, why) = code(admin.create_client(ana()).await);
    assert_eq!(error, 400, "without a key it is a new request: {why}");
    assert!(why.contains("already exists"), "{why}");
    let (error, why) = code(admin.create_client(keyed(Client { cid: "4".into(), ..ana() }, "c-1")).await);
    assert_eq!(error, 400, "a key reused for another request: {why}");
    assert!(why.contains("was used for a different CreateClient request"), "{why}");
    assert_eq!(admin.retrieve_client(Id { id: "4".into() }).await.unwrap().into_inner().cid, "0", "not created");
    // The key is scoped by the method.
    assert_eq!(code(admin.update_client(keyed(ana(), "c-1")).await).0, 0);

    // Products 4 (even) and 5 (odd), stock 100 each.
    for pid in [4, 5] {
        let data = format!(r#"{{"name":"p{pid}","price":2,"quantity":100}}"#);
        assert_eq!(code(admin.create_product(Product { pid: pid.to_string(), data }).await).0, 0);
    }
    // An order in one shard, and one across both, each sent twice.
    assert_eq!(code(orders.create_order(keyed(order(10, 2, &[(4, 3)]), "o-1")).await).0, 0);
    assert_eq!(code(orders.create_order(keyed(order(10, 2, &[(4, 3)]), "o-1")).await).0, 0);
    assert_eq!(code(orders.create_order(keyed(order(12, 2, &[(4, 1), (5, 2)]), "o-2")).await).0, 0);
    assert_eq!(code(orders.create_order(keyed(order(12, 2, &[(4, 1), (5, 2)]), "o-2")).await).0, 0);
    assert_eq!((stock(&mut admin, 4).await, stock(&mut admin, 5).await), (96, 98), "stock taken once");

    // Sent eight times at once: one order, stock taken once.
    let calls = (0..8).map(|_| {
        let mut orders = orders.clone();
        async move { code(orders.create_order(keyed(order(14, 2, &[(4, 5), (5, 5)]), "o-3")).await) }
    });
    for (error, why) in futures::future::join_all(calls).await {
        assert_eq!(error, 0, "every duplicate answers success: {why}");
    }
    assert_eq!((stock(&mut admin, 4).await, stock(&mut admin, 5).await), (91, 93), "stock taken once");

    // Update and delete, each twice.
    assert_eq!(code(orders.update_order(keyed(order(10, 2, &[(4, 1)]), "u-1")).await).0, 0);
    assert_eq!(code(orders.update_order(keyed(order(10, 2, &[(4, 1)]), "u-1")).await).0, 0);
    assert_eq!(stock(&mut admin, 4).await, 93, "2 units back once");
    assert_eq!(code(orders.delete_order(keyed(Id { id: "12".into() }, "d-1")).await).0, 0);
    assert_eq!(code(orders.delete_order(keyed(Id { id: "12".into() }, "d-1")).await).0, 0);
    assert_eq!(code(orders.delete_order(Id { id: "12".into() }).await).0, 404, "deleted, once");
    assert_eq!((stock(&mut admin, 4).await, stock(&mut admin, 5).await), (94, 95), "stock back once");
    let (error, why) = code(orders.delete_order(keyed(Id { id: "14".into() }, "d-1")).await);
    assert_eq!(error, 400, "{why}");

    // Deletes sent eight times at once: every copy answers success, the
    // stock comes back once. (A copy that found the order already gone
    // would answer 404 but for the key's second read in
    // `Shop::unless_recorded`; as run here, the copies' reads wait on the
    // first one's locks instead.)
    let oids = [20u64, 22, 24, 26];
    for oid in oids {
        assert_eq!(code(orders.create_order(order(oid, 2, &[(4, 1), (5, 1)])).await).0, 0);
    }
    let deletes = oids.iter().flat_map(|oid| (0..8).map(move |_| *oid)).map(|oid| {
        let mut orders = orders.clone();
        async move { (oid, code(orders.delete_order(keyed(Id { id: oid.to_string() }, &format!("dd-{oid}"))).await)) }
    });
    for (oid, (error, why)) in futures::future::join_all(deletes).await {
        assert_eq!(error, 0, "every duplicate of order {oid}'s delete answers success: {why}");
    }
    assert_eq!((stock(&mut admin, 4).await, stock(&mut admin, 5).await), (94, 95), "each order's stock back once");
}

/// The OIDs of every order in the store, read from the shards directly.
/// A scan reads rows, not intents: an order committed but not yet resolved
/// in its shard (its portal's resolve went to the leader that died; the new
/// leader's recovery finishes it) has no row until then. So the listing
/// waits until no transaction holds an intent.
async fn order_ids(cluster: &LocalCluster) -> Vec<u64> {
    let client = cluster.client();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let intents = raftshop::chaos::checks::scan_all(&client, Table::Intents).await.unwrap();
        if intents.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < give_up, "{} intents still held, e.g. {}", intents.len(), intents[0].0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows = raftshop::chaos::checks::scan_all(&client, Table::Orders).await.unwrap();
    let mut oids: Vec<u64> = rows
        .into_iter()
        .filter_map(|(key, _)| match key {
            RowKey::Order(oid) => Some(oid),
            _ => None,
        })
        .collect();
    oids.sort();
    oids
}

/// What became of one order call.
#[derive(Debug, Default)]
struct Attempts {
    /// The first attempt's outcome was unknown.
    unknown_first: bool,
    /// Attempts made until a definitive answer.
    attempts: u32,
}

/// Sends CreateOrder `oid` (one unit of each product of the pair) with `key`
/// until the answer is definitive (success or a refusal other than a 503);
/// returns the attempts.
async fn create_until_answered(
    mut orders: OrderPortalClient<Channel>,
    oid: u64,
    [even, odd]: [u64; 2],
    key: String,
) -> Attempts {
    let mut record = Attempts::default();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        record.attempts += 1;
        let (error, why) = code(orders.create_order(keyed(order(oid, 2, &[(even, 1), (odd, 1)]), &key)).await);
        if record.attempts == 1 {
            record.unknown_first = error == 503 && why.contains(OUTCOME_UNKNOWN);
        }
        match error {
            0 => return record,
            503 | -1 => {
                assert!(tokio::time::Instant::now() < give_up, "order {oid} never got an answer: {why}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("order {oid}: retried with its key, it must not be refused: {other} {why}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_after_the_leader_died_mid_call_applies_once() {
    let mut cluster = shop_cluster().await;
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    assert_eq!(code(admin.create_client(Client { cid: "2".into(), data: r#"{"name":"Ana"}"#.into() }).await).0, 0);
    // Each writer orders its own two products, one per shard, so writers
    // do not queue on each other's locks: nearly always some writer's
    // prepare is in flight on the even leader when it dies.
    const INITIAL: u64 = 1_000_000;
    const WRITERS: u64 = 12;
    let products_of = |writer: u64| [4 + 2 * writer, 5 + 2 * writer];
    for pid in (0..WRITERS).flat_map(products_of) {
        let data = format!(r#"{{"name":"p{pid}","price":1,"quantity":{INITIAL}}}"#);
        assert_eq!(code(admin.create_product(Product { pid: pid.to_string(), data }).await).0, 0);
    }
    // A portal with a short deadline, so that calls in flight when the
    // leader dies end "may or may not have been made" rather than waiting
    // out the election.
    let portal = ExtraPortal::start(&cluster, PortalKind::Order, &["--deadline-ms", "400"]).await;
    let orders = OrderPortalClient::new(portal.channel().await);

    let mut results: BTreeMap<u64, (u64, Attempts)> = BTreeMap::new();
    let mut next_oid = 10u64;
    for round in 0..5 {
        // Writers: even OIDs (the even shard decides), one call after another.
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|writer| {
                let (orders, stop) = (orders.clone(), stop.clone());
                let first = next_oid + writer * 2; // writers step by 32: no OID twice
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    let mut oid = first;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("retry-{oid}");
                        let lines = products_of(writer);
                        done.push((oid, create_until_answered(orders.clone(), oid, lines, key).await));
                        oid += 32;
                    }
                    done
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = cluster.wait_for_leader(Shard::Even, Duration::from_secs(30)).await.unwrap();
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        cluster.start_node(leader).unwrap();
        stop.store(true, Ordering::Relaxed);
        for (writer, task) in writers.into_iter().enumerate() {
            for (oid, attempts) in task.await.unwrap() {
                next_oid = next_oid.max(oid + 2);
                results.insert(oid, (writer as u64, attempts));
            }
        }
        next_oid += 64;
        let unknown = results.values().filter(|(_, a)| a.unknown_first).count();
        eprintln!("round {round}: {} orders, {unknown} first answered \"{OUTCOME_UNKNOWN}\"", results.len());
        if unknown > 0 {
            break;
        }
        cluster.wait_for_leader(Shard::Even, Duration::from_secs(30)).await.unwrap();
    }
    let unknown: Vec<u64> = results.iter().filter(|(_, (_, a))| a.unknown_first).map(|(oid, _)| *oid).collect();
    assert!(!unknown.is_empty(), "some call's outcome was unknown when the leader died");

    // Every order answered success exactly once in the store, stock taken
    // once per order.
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, Duration::from_secs(30)).await.unwrap();
    }
    let listed = order_ids(&cluster).await;
    let answered: Vec<u64> = results.keys().copied().collect();
    assert_eq!(listed, answered, "exactly the orders answered success exist");
    for writer in 0..WRITERS {
        let ordered = results.values().filter(|(w, _)| *w == writer).count() as u64;
        for pid in products_of(writer) {
            let left = stock(&mut admin, pid).await;
            assert_eq!(left + ordered, INITIAL, "product {pid}: one unit per order, taken once");
        }
    }
    eprintln!("{} orders, {} retried after an unknown outcome: {unknown:?}", answered.len(), unknown.len());
}

/// A first attempt that prepared on both shards before its portal died
/// holds the key's row, the order's and the stock until recovery settles
/// it, and will commit. A retry under the key that meets it must answer
/// as the first attempt ends (success, the order made once), not with a
/// refusal of the moment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_that_meets_an_undecided_first_attempt_answers_like_it() {
    let cluster = shop_cluster().await;
    let (mut admin, mut orders) = one_unit_shop(&cluster).await;
    prepare_first_attempt(&cluster, "o-undecided", &Shard::ALL).await;

    // The retry: its read of the key meets the first attempt, finds it
    // prepared on both shards, commits it and answers as it did. (Were
    // the read not there, its prepares would meet the first attempt's
    // order row and its hold on the last unit: it waits for the first
    // attempt rather than answer "no stock", see `txn::priority`.)
    let (error, why) = code(orders.create_order(keyed(order(11, 3, &[(2, 1)]), "o-undecided")).await);
    assert_eq!((error, why.as_str()), (0, ""), "the first attempt's answer");
    assert_eq!(stock(&mut admin, 2).await, 0, "the order was made once");
    let made = orders.retrieve_order(Id { id: "11".into() }).await.unwrap().into_inner();
    assert_eq!(made.oid, "11");
    let made: Value = serde_json::from_str(&made.data).unwrap();
    assert_eq!(made["products"][0]["price"], 2.5, "priced by the other shard's quote: {made}");
    assert_eq!(made["total"], 2.5, "{made}");
}

/// A first attempt prepared only in the shard that records its key (its
/// portal died before the other prepare went out) holds the key until
/// recovery settles it. A retry whose deadline comes first cannot know
/// whether that attempt will commit: it says so ("may or may not"), not a
/// bare 503 that would mean nothing was made. Once recovery has aborted
/// the attempt, the retry makes the order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_that_meets_an_attempt_undecided_at_its_deadline_may_or_may_not_have_made_it() {
    let cluster = shop_cluster().await;
    let (mut admin, mut orders) = one_unit_shop(&cluster).await;
    // A portal whose calls end after 800 ms, started first: the retry
    // below then ends well before recovery (1.5 s after the prepare)
    // settles the attempt.
    let hasty = ExtraPortal::start(&cluster, PortalKind::Order, &["--deadline-ms", "800"]).await;
    let mut hasty_orders = OrderPortalClient::new(hasty.channel().await);
    prepare_first_attempt(&cluster, "o-half", &[Shard::Odd]).await;

    let (error, why) = code(hasty_orders.create_order(keyed(order(11, 3, &[(2, 1)]), "o-half")).await);
    assert_eq!(error, 503, "{why}");
    assert!(why.contains(OUTCOME_UNKNOWN), "the earlier attempt may still commit: {why}");

    // Recovery aborts the attempt (its other part never came); the retry
    // through the default portal then makes the order, once.
    let retried = tokio::time::Instant::now();
    let (error, why) = loop {
        let answer = code(orders.create_order(keyed(order(11, 3, &[(2, 1)]), "o-half")).await);
        if answer.0 != 503 || retried.elapsed() > Duration::from_secs(20) {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((error, why.as_str()), (0, ""), "made by the retry");
    assert_eq!(stock(&mut admin, 2).await, 0, "one unit taken, once");
}

/// Client 3 (odd) and product 2 (even), one in stock at 2.5; clients of
/// both portals.
async fn one_unit_shop(cluster: &LocalCluster) -> (AdminPortalClient<Channel>, OrderPortalClient<Channel>) {
    let mut admin = AdminPortalClient::new(channel(cluster.config().portals.admin).await);
    let orders = OrderPortalClient::new(channel(cluster.config().portals.order).await);
    assert_eq!(code(admin.create_client(Client { cid: "3".into(), data: r#"{"name":"Bo"}"#.into() }).await).0, 0);
    let data = r#"{"name":"p2","price":2.5,"quantity":1}"#.to_owned();
    assert_eq!(code(admin.create_product(Product { pid: "2".into(), data }).await).0, 0);
    (admin, orders)
}

/// The first attempt of "order 11: one of product 2" for client 3 under
/// `key`, prepared in `shards` exactly as a portal plans it (order 11's
/// odd shard decides and records the key); its portal then died.
async fn prepare_first_attempt(cluster: &LocalCluster, key: &str, shards: &[Shard]) {
    use portals::idempotency::{now_ms, Claim, IdempotencyKey};
    use portals::orders::{order_fingerprint, plan_new_order};
    use storage_node::command::TxnId;
    use storage_node::{Command, CommandResult};

    let wanted = BTreeMap::from([(2, 1)]);
    let key = IdempotencyKey::parse(key).unwrap();
    let mut plan = plan_new_order(11, 3, &wanted).unwrap();
    Claim::new("CreateOrder", &key, order_fingerprint(11, 3, &wanted)).guard(&mut plan, Shard::Odd, now_ms());
    for (shard, part) in plan.parts(TxnId::fresh()).into_iter().filter(|(shard, _)| shards.contains(shard)) {
        let prepare = Command::Prepare { part, decision_shard: Shard::Odd, at_ms: 0 };
        let prepared = cluster.shard_client(shard).write(&prepare, Duration::from_secs(10)).await.unwrap();
        assert!(matches!(prepared, CommandResult::Prepared | CommandResult::PreparedQuoting(_)), "{prepared:?}");
    }
}
