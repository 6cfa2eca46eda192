//! A write whose answer is lost is sent again, and the shard applies it
//! once — against real processes.
//!
//! The chaos test once caught one write taking effect twice: a client's put
//! reached a leader that was SIGKILLed before it answered, the client sent
//! the put again to the next leader, and the first copy — already in the
//! new leader's log — was applied, then another client's delete, then the
//! copy, which brought the deleted value back
//! (`docs/incidents/2026-12-04-duplicate-retried-write.md`). Here the
//! leader's answer is held back by a proxy instead, which makes the same
//! sequence happen every time.

mod common;

use std::time::{Duration, Instant};

use common::{binaries, cluster_with, key_in, STARTUP};
use raftshop::chaos::proxy::{LinkProxy, LinkState};
use raftshop::local_cluster::ClusterOptions;
use storage_node::client::{ShardClient, ATTEMPT_TIMEOUT};
use storage_node::{Command, CommandResult, Precondition, RowWrite, Shard};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_sent_again_after_its_answer_was_lost_is_applied_once() {
    let cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let shard = Shard::Even;
    let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();

    // The writer reaches the leader through a proxy; everyone else directly.
    let leader_addr = cluster.config().node(leader).unwrap().addr;
    let proxy = LinkProxy::start(leader_addr).await.unwrap();
    let mut config = cluster.config().clone();
    let through_proxy = config.nodes.iter_mut().find(|node| node.id == leader).unwrap();
    through_proxy.addr = proxy.addr();
    through_proxy.advertise = None;
    let writer = ShardClient::new(&config, shard);
    let other = cluster.shard_client(shard);

    let key = key_in(shard, "resurrected");
    let put = |value: &str| Command::single(RowWrite::upsert(key.clone(), value.as_bytes().to_vec()));
    let warm_up = writer.write(&put("warm-up"), Duration::from_secs(10)).await;
    assert!(matches!(warm_up, Ok(CommandResult::Applied { .. })), "{warm_up:?}");
    assert_eq!(writer.leader_hint(), Some(leader), "the writer now sends to the leader, through the proxy");

    proxy.set(LinkState::RepliesHeld);
    let sent = Instant::now();
    let first = put("first");
    let call = tokio::spawn(async move { writer.write(&first, Duration::from_secs(10)).await });

    // The put is applied; its answer is stuck in the proxy. Another client
    // deletes the key meanwhile.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = other.get(&key, Duration::from_secs(5)).await.unwrap();
        if row.is_some_and(|row| row.value == b"first") {
            break;
        }
        assert!(Instant::now() < deadline, "the put was not applied while its answer was held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delete = Command::single(RowWrite::Delete { key: key.clone(), expect: Precondition::Any });
    let deleted = other.write(&delete, Duration::from_secs(5)).await;
    assert!(matches!(deleted, Ok(CommandResult::Applied { .. })), "{deleted:?}");

    // The writer's attempt times out and it sends the put again — to the
    // leader, through the proxy, where the copy's answer is held too until
    // the hold ends, after the first attempt was given up.
    tokio::time::sleep((sent + ATTEMPT_TIMEOUT + Duration::from_millis(700)).saturating_duration_since(Instant::now()))
        .await;
    proxy.set(LinkState::Up);
    let answer = call.await.unwrap();
    assert!(sent.elapsed() > ATTEMPT_TIMEOUT, "the first attempt was given up, so the put was sent again");
    assert!(matches!(answer, Ok(CommandResult::Applied { .. })), "the writer learns its put was applied: {answer:?}");

    let row = other.get(&key, Duration::from_secs(5)).await.unwrap();
    assert_eq!(row, None, "the copy of the put was applied after the delete: one write took effect twice");
}
