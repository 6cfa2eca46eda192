//! A shard's move to a newer layout (`storage_node::state::layout`: which
//! bookkeeping rows an entry writes), as a rolling upgrade meets it: real
//! nodes, restarted one at a time.
//!
//! Every node starts saying it knows only the first layout (as a build
//! from before the second would); the shard keeps writing it. Upgraded one
//! by one, the shard switches to the second once its last member knows
//! it, at one log index on every replica, so the replicas' state digests
//! still agree; upgraded again, to the third. A subscriber resuming from before the switch gets every
//! change, from change-feed rows of both layouts, in order; a single-shard
//! transaction leaves its record before the switch and none after. In the
//! fourth, a product counts its order lines in its row, and an index row
//! written before still holds the product until its line goes. A
//! cross-shard order line prepared in the third and left to recovery (its
//! other shard without quorum meanwhile) commits in the fourth as a count
//! and lets go of every row it held.

mod common;

use std::time::{Duration, Instant};

use futures::StreamExt;
use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use storage_node::cli::NEWEST_LAYOUT_ENV;
use storage_node::client::{FeedItem, ShardClient};
use storage_node::command::{Check, Effect, TxnId, TxnPart};
use storage_node::records::shop::{encode_record, ClientRecord, ProductRecord, ProductRow};
use storage_node::state::layout;
use storage_node::{Command, CommandResult, Query, QueryResult, Rejection, RowKey, RowWrite, Shard};

use common::{binaries, cluster_with, converged, STARTUP};

const SHARD: Shard = Shard::Odd;
const DEADLINE: Duration = Duration::from_secs(10);

/// Writes `count` kv rows under `feed/`, numbered from `first`, some
/// several to an entry; returns (log index, number) of each.
async fn write(client: &ShardClient, first: u32, count: u32) -> Vec<(u64, u32)> {
    let mut written = Vec::new();
    for chunk_start in (first..first + count).step_by(4) {
        let numbers: Vec<u32> = (chunk_start..(chunk_start + 4).min(first + count)).collect();
        let writes = numbers.iter().map(|n| RowWrite::upsert(RowKey::Kv(format!("feed/{n}")), n.to_string())).collect();
        match client.write(&Command::Batch(writes), DEADLINE).await {
            Ok(CommandResult::Applied { index }) => written.extend(numbers.iter().map(|n| (index, *n))),
            other => panic!("write of {numbers:?}: {other:?}"),
        }
    }
    written
}

/// Runs a single-shard transaction (a new client, `cid`) as a portal
/// does, and says whether the shard kept a record of it.
async fn execute_leaves_record(client: &ShardClient, cid: u64) -> bool {
    let id = TxnId::fresh();
    let record = encode_record(&ClientRecord { document: format!(r#"{{"CID":"{cid}","name":"upgrade"}}"#) });
    let part = TxnPart {
        id,
        checks: vec![Check::Absent(RowKey::Client(cid))],
        effects: vec![Effect::Put(RowKey::Client(cid), record)],
    };
    match client.write(&Command::Execute { part, at_ms: 0 }, DEADLINE).await {
        Ok(CommandResult::Committed) => {}
        other => panic!("execute of client {cid}: {other:?}"),
    }
    match client.read(&Query::Get(RowKey::Txn(id)), DEADLINE).await {
        Ok(QueryResult::Row(row)) => row.is_some(),
        other => panic!("read of transaction {id}: {other:?}"),
    }
}

/// Runs one single-shard transaction as a portal does; its answer.
async fn execute(client: &ShardClient, checks: Vec<Check>, effects: Vec<Effect>) -> CommandResult {
    let part = TxnPart { id: TxnId::fresh(), checks, effects };
    client.write(&Command::Execute { part, at_ms: 0 }, DEADLINE).await.expect("an answer")
}

/// Order `oid` takes (`take`) or gives back a unit of product `pid`, with
/// its line's entry in the product's order index, as a portal plans it
/// (the order's own row left out).
async fn order_line(client: &ShardClient, pid: u64, oid: u64, take: bool) {
    let (delta, index) = match take {
        true => (-1, Effect::Put(RowKey::ProductOrder(pid, oid), Vec::new())),
        false => (1, Effect::Delete(RowKey::ProductOrder(pid, oid))),
    };
    let result = execute(client, vec![], vec![Effect::AdjustStock { pid, delta }, index]).await;
    assert_eq!(result, CommandResult::Committed, "line of order {oid}");
}

/// Whether a DeleteProduct of `pid` is refused for the orders holding it
/// (and otherwise deletes it).
async fn held_by_orders(client: &ShardClient, pid: u64) -> bool {
    let checks = vec![Check::Exists(RowKey::Product(pid)), Check::NoOrdersOfProduct(pid)];
    match execute(client, checks, vec![Effect::Delete(RowKey::Product(pid))]).await {
        CommandResult::Rejected(Rejection::ProductInOrders(_)) => true,
        CommandResult::Committed => false,
        other => panic!("delete of product {pid}: {other:?}"),
    }
}

/// A row's value, read linearizably.
async fn row(client: &ShardClient, key: RowKey) -> Option<Vec<u8>> {
    match client.read(&Query::Get(key.clone()), DEADLINE).await {
        Ok(QueryResult::Row(row)) => row.map(|row| row.value),
        other => panic!("read of {key}: {other:?}"),
    }
}

/// Product `pid`'s row read linearizably, or the transaction that holds it
/// exclusively.
async fn product_or_holder(client: &ShardClient, pid: u64) -> Result<ProductRow, TxnId> {
    match client.read(&Query::Get(RowKey::Product(pid)), DEADLINE).await {
        Ok(QueryResult::Row(Some(row))) => Ok(ProductRow::decode(&row.value).expect("a product row")),
        Ok(QueryResult::Locked { holder, .. }) => Err(holder),
        other => panic!("read of product {pid}: {other:?}"),
    }
}

/// `raftshop status` against the cluster, once every shard has a leader
/// (it fails while one has none: just after paused members resume, an
/// election may be under way).
fn status(cluster: &LocalCluster) -> String {
    let give_up = Instant::now() + STARTUP;
    loop {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
            .arg("status")
            .arg("--config")
            .arg(cluster.config_path())
            .output()
            .expect("raftshop status runs");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if output.status.success() {
            return stdout;
        }
        assert!(Instant::now() < give_up, "raftshop status: {stdout}{}", String::from_utf8_lossy(&output.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The layout each member reports.
async fn layouts(cluster: &LocalCluster, members: &[u64]) -> Vec<u32> {
    let client = cluster.shard_client(SHARD);
    let mut layouts = Vec::new();
    for id in members {
        layouts.push(client.status(*id, DEADLINE).await.expect("a status").layout);
    }
    layouts
}

/// Restarts every member of the shard, one at a time, saying it knows
/// layouts up to `newest`, with writes in between; the shard stays in
/// `from` until the last one is back, then switches to `newest`.
async fn upgrade(cluster: &mut LocalCluster, written: &mut Vec<(u64, u32)>, from: u32, newest: u32) {
    let members = cluster.members(SHARD);
    let client = cluster.shard_client(SHARD);
    for (upgraded, id) in members.iter().enumerate() {
        cluster.stop(*id).expect("a clean stop");
        cluster.start_node_with(*id, &["--newest-layout", &newest.to_string()]).expect("restart");
        cluster.wait_for_leader(SHARD, STARTUP).await.unwrap();
        let first = written.len() as u32;
        written.extend(write(&client, first, 20).await);
        if upgraded + 1 < members.len() {
            converged(cluster, SHARD, &members, STARTUP).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(layouts(cluster, &members).await, vec![from; 3], "{} of 3 know {newest}", upgraded + 1);
        }
    }
    let give_up = Instant::now() + STARTUP;
    while layouts(cluster, &members).await != vec![newest; 3] {
        assert!(Instant::now() < give_up, "the shard did not switch: {:?}", layouts(cluster, &members).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    converged(cluster, SHARD, &members, STARTUP).await;
}

/// `raftshop status` shows the upgraded shard in layout `newest`.
fn status_shows(cluster: &LocalCluster, newest: u32) {
    let shown = status(cluster);
    let line = format!("state layout: {newest}");
    assert_eq!(shown.matches(&line).count(), 1, "the upgraded shard, in status:\n{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_switches_its_layout_when_its_last_member_knows_the_new_one() {
    let mut options = ClusterOptions::new(binaries());
    options.node_env.push((NEWEST_LAYOUT_ENV.into(), layout::EVENT_ROWS.to_string()));
    let mut cluster = cluster_with(options).await;
    let members = cluster.members(SHARD);
    let client = cluster.shard_client(SHARD);

    let mut written = write(&client, 0, 40).await;
    assert!(execute_leaves_record(&client, 1).await, "layout 1 records single-shard transactions");
    // Housekeeping looks four times a second; give it several chances.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(layouts(&cluster, &members).await, vec![1; 3], "nobody knows a newer layout yet");
    let before = status(&cluster);
    assert_eq!(before.matches("state layout: 1").count(), 2, "both shards, in status:\n{before}");

    // As the change feed's layout reached deployed shards, then the next.
    upgrade(&mut cluster, &mut written, layout::EVENT_ROWS, layout::ENTRY_EVENTS).await;
    status_shows(&cluster, layout::ENTRY_EVENTS);
    assert!(execute_leaves_record(&client, 2).await, "layout 2 records single-shard transactions");
    upgrade(&mut cluster, &mut written, layout::ENTRY_EVENTS, layout::UNRECORDED_EXECUTES).await;
    status_shows(&cluster, layout::UNRECORDED_EXECUTES);
    assert!(!execute_leaves_record(&client, 3).await, "from layout 3 a single-shard transaction leaves no record");

    // An order line of layout 3 is an index row; from layout 4 a count in
    // the product's row, and the old row still holds the product.
    let pid = 101;
    let product = ProductRecord { name: "lamp".into(), price: 4.0, quantity: 10, extra: "{}".into() };
    let create = vec![Effect::Put(RowKey::Product(pid), encode_record(&product))];
    assert_eq!(execute(&client, vec![Check::Absent(RowKey::Product(pid))], create).await, CommandResult::Committed);
    order_line(&client, pid, 103, true).await;
    assert!(row(&client, RowKey::ProductOrder(pid, 103)).await.is_some(), "layout 3 writes an index row");

    // A cross-shard order line prepared in layout 3 on both shards, whose
    // portal died: the other shard loses its quorum before recovery can
    // settle it, so it is still prepared when this shard switches.
    let (held, even) = (107, cluster.shard_client(Shard::Even));
    let product = ProductRecord { name: "desk".into(), price: 9.0, quantity: 10, extra: "{}".into() };
    let create = vec![Effect::Put(RowKey::Product(held), encode_record(&product))];
    assert_eq!(execute(&client, vec![Check::Absent(RowKey::Product(held))], create).await, CommandResult::Committed);
    let id = TxnId::fresh();
    let prepare =
        |effects| Command::Prepare { part: TxnPart { id, checks: vec![], effects }, decision_shard: SHARD, at_ms: 0 };
    // The customer's side, in the other shard: its order index.
    let even_effects = vec![Effect::Put(RowKey::ClientOrder(108, 109), Vec::new())];
    assert_eq!(even.write(&prepare(even_effects), DEADLINE).await.unwrap(), CommandResult::Prepared);
    let line =
        vec![Effect::AdjustStock { pid: held, delta: -2 }, Effect::Put(RowKey::ProductOrder(held, 109), Vec::new())];
    assert_eq!(client.write(&prepare(line), DEADLINE).await.unwrap(), CommandResult::Prepared);
    let paused = &cluster.members(Shard::Even)[..2];
    paused.iter().for_each(|id| cluster.pause(*id));

    upgrade(&mut cluster, &mut written, layout::UNRECORDED_EXECUTES, layout::ORDER_COUNTS).await;
    assert_eq!(product_or_holder(&client, held).await.unwrap_err(), id, "the line is still only prepared");
    paused.iter().for_each(|id| cluster.resume(*id));
    status_shows(&cluster, layout::ORDER_COUNTS);
    // Recovery finds both parts prepared and commits them: the part of
    // layout 3 commits in layout 4, as a count, and lets go of the product.
    let give_up = Instant::now() + STARTUP;
    let committed = loop {
        match product_or_holder(&client, held).await {
            Ok(product) => break product,
            Err(holder) => assert!(Instant::now() < give_up, "still held by {holder}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((committed.record.quantity, committed.orders), (8, 1), "the line committed, counted");
    assert!(row(&client, RowKey::ProductOrder(held, 109)).await.is_none(), "counted, not an index row");
    assert!(row(&even, RowKey::ClientOrder(108, 109)).await.is_some(), "the other part committed too");
    order_line(&client, held, 111, true).await; // refused as Locked if an intent were left
    assert!(held_by_orders(&client, held).await, "the counted lines hold the product");
    assert!(held_by_orders(&client, pid).await, "the index row of layout 3 holds the product");
    order_line(&client, pid, 105, true).await;
    assert!(row(&client, RowKey::ProductOrder(pid, 105)).await.is_none(), "layout 4 writes no index row");
    let counted = |value: Option<Vec<u8>>| ProductRow::decode(&value.expect("the product")).unwrap().orders;
    assert_eq!(counted(row(&client, RowKey::Product(pid)).await), 1);
    order_line(&client, pid, 103, false).await;
    assert!(row(&client, RowKey::ProductOrder(pid, 103)).await.is_none(), "the old line takes its row along");
    assert!(held_by_orders(&client, pid).await, "the count of layout 4 holds the product");
    order_line(&client, pid, 105, false).await;
    assert_eq!(counted(row(&client, RowKey::Product(pid)).await), 0);
    assert!(!held_by_orders(&client, pid).await, "no line holds the product: it is deleted");
    let first = written.len() as u32;
    written.extend(write(&client, first, 40).await);
    converged(&cluster, SHARD, &members, STARTUP).await;

    // From before the first write: every change once, in log order, the
    // ones stored per event and the ones stored per entry alike.
    let mut feed = Box::pin(client.watch("kv/feed", Some(1)));
    let mut seen = Vec::new();
    while seen.len() < written.len() {
        let item = tokio::time::timeout(DEADLINE, feed.next()).await.expect("the feed keeps flowing");
        if let Some(Ok(FeedItem::Event { index, value: Some(value), .. })) = item {
            seen.push((index, String::from_utf8(value).unwrap().parse::<u32>().unwrap()));
        }
    }
    // An entry's events come in key order.
    written.sort_by_key(|(index, n)| (*index, n.to_string()));
    assert_eq!(seen, written, "each change once, in order, across the switch");
}
