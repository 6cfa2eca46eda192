//! The coordination primitives under failures, against real processes:
//! the replicated Lamport mutex, the change feed, and the dice game.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use raftshop::local_cluster::{Binaries, ClusterOptions, LocalCluster};
use storage_node::client::{FeedItem, LamportSite, ShardClient};
use storage_node::{Command, CommandResult, RowKey, RowWrite, Shard};

const DEADLINE: Duration = Duration::from_secs(20);

fn binaries() -> Binaries {
    Binaries { storage_node: env!("CARGO_BIN_EXE_storage-node").into(), admin_portal: None, order_portal: None }
}

async fn cluster() -> LocalCluster {
    let cluster = LocalCluster::start(ClusterOptions::new(binaries())).await.expect("cluster starts");
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, DEADLINE).await.unwrap();
    }
    cluster
}

/// One critical section as its site saw it.
#[derive(Debug, Clone, Copy)]
struct Section {
    site: u64,
    token: u64,
    clock: u64,
    entered: Instant,
    left: Instant,
}

/// Retries `f` until it succeeds (a leader may be down for a moment).
async fn retry<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, storage_node::client::ClientError>>,
{
    let give_up = Instant::now() + DEADLINE;
    loop {
        match f().await {
            Ok(value) => return value,
            Err(e) if Instant::now() < give_up => {
                eprintln!("retrying after: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("gave up: {e}"),
        }
    }
}

/// One site entering the critical section `rounds` times, each time doing
/// a deliberately non-atomic read-modify-write of a shared counter.
async fn site_loop(shard: Arc<ShardClient>, site: u64, rounds: u32) -> Vec<Section> {
    let lamport = LamportSite::new(shard.clone(), site);
    let counter = RowKey::Kv("counter".into());
    let mut sections = Vec::new();
    for _ in 0..rounds {
        let grant = retry(|| lamport.acquire("counter")).await;
        let entered = Instant::now();
        let row = retry(|| shard.get(&counter, Duration::from_secs(5))).await;
        let value: u64 = row.map(|r| String::from_utf8(r.value).unwrap().parse().unwrap()).unwrap_or(0);
        let write = Command::single(RowWrite::upsert(counter.clone(), (value + 1).to_string()));
        let result = retry(|| shard.write(&write, Duration::from_secs(5))).await;
        assert!(matches!(result, CommandResult::Applied { .. }), "{result:?}");
        let left = Instant::now();
        retry(|| lamport.release("counter")).await;
        sections.push(Section { site, token: grant.token, clock: grant.clock, entered, left });
    }
    sections
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn mutual_exclusion_holds_while_the_leader_is_killed() {
    let mut cluster = cluster().await;
    let shard_id = Shard::of_key("counter");
    let shard = Arc::new(cluster.shard_client(shard_id));
    let sites: Vec<_> = (1..=5).map(|site| tokio::spawn(site_loop(shard.clone(), site, 50))).collect();

    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let leader = cluster.wait_for_leader(shard_id, DEADLINE).await.unwrap();
        cluster.kill(leader);
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.start_node(leader).unwrap();
    }
    let mut sections: Vec<Section> = Vec::new();
    for site in sites {
        sections.extend(site.await.expect("site task"));
    }

    let counter = shard.get(&RowKey::Kv("counter".into()), DEADLINE).await.unwrap().unwrap();
    assert_eq!(String::from_utf8(counter.value).unwrap(), "250", "every increment survived, none was lost to a race");
    sections.sort_by_key(|s| s.entered);
    for pair in sections.windows(2) {
        assert!(pair[0].left <= pair[1].entered, "critical sections overlap: {pair:?}");
        assert!(pair[0].token < pair[1].token, "fencing tokens grow with every grant: {pair:?}");
    }
    assert_eq!(sections.len(), 250);
    for site in 1..=5 {
        let clocks: Vec<u64> = sections.iter().filter(|s| s.site == site).map(|s| s.clock).collect();
        assert_eq!(clocks.len(), 50, "site {site} entered 50 times");
        let mut by_token = sections.iter().filter(|s| s.site == site).collect::<Vec<_>>();
        by_token.sort_by_key(|s| s.token);
        assert!(by_token.windows(2).all(|w| w[0].clock < w[1].clock), "site {site}'s Lamport clock only grows");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_follow_clock_then_site_order() {
    let cluster = cluster().await;
    let shard = Arc::new(cluster.shard_client(Shard::of_key("order-check")));
    let holder = LamportSite::new(shard.clone(), 9);
    holder.acquire("order-check").await.unwrap();
    // While 9 holds it, three requests queue up; then they are served in
    // (clock, site) order, whatever order they arrived in.
    let waiting: Vec<LamportSite> = [3, 1, 2].into_iter().map(|site| LamportSite::new(shard.clone(), site)).collect();
    for site in &waiting {
        site.request("order-check").await.unwrap();
    }
    let mut state = holder.release("order-check").await.unwrap();
    let mut order = Vec::new();
    while let Some(grant) = state.holder {
        let queue_head = *state.queue.first().unwrap();
        assert_eq!((grant.clock, grant.site), queue_head, "the grant goes to the smallest (clock, site)");
        order.push(grant.site);
        let site = waiting.iter().find(|s| s.id() == grant.site).unwrap();
        state = site.release("order-check").await.unwrap();
    }
    assert_eq!(order, vec![1, 2, 3], "equal clocks (each site's first request): smaller site first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_delivers_every_change_once_in_order_across_a_leader_change() {
    let mut cluster = cluster().await;
    let shard_id = Shard::Odd;
    let shard = cluster.shard_client(shard_id);
    let leader = cluster.wait_for_leader(shard_id, DEADLINE).await.unwrap();
    let mut feed = Box::pin(shard.watch("kv/feed", None));
    assert!(matches!(feed.next().await, Some(Ok(FeedItem::CaughtUp { .. }))), "an empty prefix has no current values");

    let writer = tokio::spawn({
        let shard = cluster.shard_client(shard_id);
        async move {
            let mut acknowledged = Vec::new();
            for i in 0..300u32 {
                let command = Command::single(RowWrite::upsert(RowKey::Kv(format!("feed/{}", i % 7)), i.to_string()));
                if let Ok(CommandResult::Applied { index }) = shard.write(&command, Duration::from_secs(5)).await {
                    acknowledged.push((index, i));
                }
            }
            acknowledged
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader);
    let acknowledged = writer.await.unwrap();
    cluster.start_node(leader).unwrap();

    let mut seen: Vec<(u64, u32)> = Vec::new();
    let last_acknowledged = acknowledged.last().unwrap().0;
    while seen.last().is_none_or(|(index, _)| *index < last_acknowledged) {
        let item = tokio::time::timeout(DEADLINE, feed.next()).await.expect("feed keeps flowing").unwrap().unwrap();
        if let FeedItem::Event { index, value: Some(value), current: false, .. } = item {
            seen.push((index, String::from_utf8(value).unwrap().parse().unwrap()));
        }
    }
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "strictly in log order, no repeats");
    for ack in &acknowledged {
        assert!(seen.contains(ack), "acknowledged change {ack:?} was delivered");
    }

    // Resume from a saved index: exactly the changes from there on.
    let saved = seen[seen.len() / 2].0;
    let mut resumed = Box::pin(shard.watch("kv/feed", Some(saved)));
    let mut again = Vec::new();
    while again.len() < seen.iter().filter(|(i, _)| *i >= saved).count() {
        if let Some(Ok(FeedItem::Event { index, value: Some(value), .. })) = resumed.next().await {
            again.push((index, String::from_utf8(value).unwrap().parse::<u32>().unwrap()));
        }
    }
    let expected: Vec<(u64, u32)> = seen.iter().copied().filter(|(i, _)| *i >= saved).collect();
    assert_eq!(again, expected, "a resumed feed has no gap and no repeat");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dice_players_agree_and_each_result_is_written_once_despite_a_crash() {
    let mut cluster = cluster().await;
    let shard_id = Shard::of_key("dice");
    let shard = Arc::new(cluster.shard_client(shard_id));
    let game = tokio::spawn(raftshop::demo::dice::play(shard.clone(), "test", 4, 6));
    tokio::time::sleep(Duration::from_millis(400)).await;
    let leader = cluster.wait_for_leader(shard_id, DEADLINE).await.unwrap();
    cluster.kill(leader);
    let views = tokio::time::timeout(Duration::from_secs(90), game).await.expect("the game finishes").unwrap().unwrap();
    cluster.start_node(leader).unwrap();

    let reference = &views[&1];
    for (player, view) in &views {
        let winners: Vec<u64> = view.iter().map(|r| r.winner).collect();
        let expected: Vec<u64> = reference.iter().map(|r| r.winner).collect();
        assert_eq!(winners, expected, "player {player} agrees on every winner");
    }
    let mut results: BTreeMap<u32, String> = BTreeMap::new();
    for round in 1..=6u32 {
        let row = shard.get(&RowKey::Kv(format!("dice/test/results/{round}")), DEADLINE).await.unwrap();
        let row = row.unwrap_or_else(|| panic!("round {round} has a result"));
        let text = String::from_utf8(row.value).unwrap();
        let winner = reference[round as usize - 1].winner;
        assert!(text.contains(&format!("player {winner} wins")), "round {round}: {text}");
        results.insert(round, text);
    }
    let tokens: Vec<u64> = (1..=6).filter_map(|r| views.values().find_map(|v| v[r - 1].token)).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "each round's grant is newer: {tokens:?}");
}
