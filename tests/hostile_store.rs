//! Hostile bytes cannot hurt a storage node (issue 11): raw `Store` requests
//! that are undecodable, nested without bound, oversized, or aimed at
//! internal tables, or a `WriteEach` of anything but resolves, are refused
//! with `INVALID_ARGUMENT` and a sentence. After
//! every case, every node process is alive and each shard takes a write and
//! a read.
//!

mod common;

use raftshop::local_cluster::{ClusterOptions, LocalCluster};
use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::{store_reply, ReadRequest, WriteEachRequest, WriteRequest};
use storage_node::codec::{decode_reply, encode};
use storage_node::command::{Check, Command, CommandResult, Effect, Outcome, RowKey, RowWrite, TxnId, TxnPart};
use storage_node::limits::{MAX_COMMAND_BYTES, MAX_STORE_MESSAGE_BYTES, MAX_WRITE_EACH};
use storage_node::{NodeId, Query, Shard};
use tonic::transport::Channel;
use tonic::Code;

/// Levels of the deeply nested requests.
const DEEP: usize = 20_000;
/// A key whose encoding marks where [`with_deep_key`] splices.
const MARKER: &str = "marker-key";

/// A raw `Store` client of node `id`, able to send any message size.
async fn raw_client(cluster: &LocalCluster, id: NodeId) -> StoreClient<Channel> {
    let addr = cluster.config().node(id).expect("a member").addr;
    StoreClient::new(common::channel(addr).await).max_encoding_message_size(usize::MAX)
}

/// The bytes `value` encodes to, with its one `RowKey::Kv(MARKER)` replaced
/// by `levels` nested intents around it. Written by hand: building such a
/// value would itself recurse as deep.
fn with_deep_key<T: serde::Serialize>(value: &T, levels: usize) -> Vec<u8> {
    let marker = encode(&RowKey::Kv(MARKER.into()));
    let intent_tag = strip_suffix(encode(&RowKey::Intent(Box::new(RowKey::Kv(MARKER.into())))), &marker);
    let bytes = encode(value);
    let at = bytes.windows(marker.len()).position(|w| w == marker).expect("the value holds the marker key");
    [&bytes[..at], &intent_tag.repeat(levels), &bytes[at..]].concat()
}

/// `Many([Many([... Batch([]) ...])])` with `levels` Manys, as bytes.
fn deep_many(levels: usize) -> Vec<u8> {
    let inner = encode(&Command::Batch(vec![]));
    let one_level = strip_suffix(encode(&Command::Many(vec![Command::Batch(vec![])])), &inner);
    [one_level.repeat(levels), inner].concat()
}

/// `bytes` without the trailing `suffix`.
fn strip_suffix(mut bytes: Vec<u8>, suffix: &[u8]) -> Vec<u8> {
    assert!(bytes.ends_with(suffix), "the encoding ends with its last field");
    bytes.truncate(bytes.len() - suffix.len());
    bytes
}

/// Sends `command` bytes to node `id` and asserts a refusal with `code`
/// whose message mentions `words`.
async fn write_refused(cluster: &LocalCluster, id: NodeId, command: Vec<u8>, code: Code, words: &str) {
    let answer = raw_client(cluster, id).await.write(WriteRequest { command }).await;
    let status = answer.expect_err("the write is refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(words), "{:?} should mention {words:?}", status.message());
}

/// Sends `query` bytes to node `id` and asserts an `INVALID_ARGUMENT`.
async fn read_refused(cluster: &LocalCluster, id: NodeId, query: Vec<u8>, words: &str) {
    let answer = raw_client(cluster, id).await.read(ReadRequest { query }).await;
    let status = answer.expect_err("the read is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(words), "{:?} should mention {words:?}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_store_requests_are_refused_and_every_node_serves_on() {
    let mut cluster = common::cluster_with(ClusterOptions::new(common::binaries())).await;
    let leader = cluster.wait_for_leader(Shard::Even, common::STARTUP).await.unwrap();
    let odd_member = cluster.members(Shard::Odd)[0];
    let marker = || RowKey::Kv(MARKER.into());

    for id in [leader, odd_member] {
        write_refused(&cluster, id, vec![0xff; 64], Code::InvalidArgument, "undecodable command").await;
        read_refused(&cluster, id, vec![0xff; 64], "undecodable query").await;
    }
    common::all_serve_on(&mut cluster, "garbage bytes").await;

    let deep_put = with_deep_key(&Command::single(RowWrite::upsert(marker(), b"x".to_vec())), DEEP);
    write_refused(&cluster, leader, deep_put, Code::InvalidArgument, "MAX_NESTING").await;
    read_refused(&cluster, leader, with_deep_key(&Query::Get(marker()), DEEP), "MAX_NESTING").await;
    common::all_serve_on(&mut cluster, "a deeply nested intent key").await;

    write_refused(&cluster, leader, deep_many(DEEP), Code::InvalidArgument, "MAX_NESTING").await;
    let shallow = Command::Many(vec![Command::Many(vec![Command::single(RowWrite::upsert(marker(), "x"))])]);
    write_refused(&cluster, leader, encode(&shallow), Code::InvalidArgument, "one command per call").await;
    common::all_serve_on(&mut cluster, "a deeply nested Many").await;

    let oversized = vec![0; MAX_COMMAND_BYTES + 1024];
    write_refused(&cluster, leader, oversized.clone(), Code::InvalidArgument, "the limit is").await;
    read_refused(&cluster, leader, oversized, "the limit is").await;
    let beyond_tonic = vec![0; MAX_STORE_MESSAGE_BYTES + 1024];
    write_refused(&cluster, leader, beyond_tonic, Code::OutOfRange, "too large").await;
    common::all_serve_on(&mut cluster, "oversized requests").await;

    for key in
        [RowKey::Intent(Box::new(common::key_in(Shard::Even, "row"))), RowKey::Txn(TxnId(7)), RowKey::Event(1, 0)]
    {
        let planted = encode(&Command::single(RowWrite::upsert(key, b"corrupt".to_vec())));
        write_refused(&cluster, leader, planted, Code::InvalidArgument, "only the kv table").await;
    }
    let part = TxnPart { id: TxnId(7), checks: vec![Check::Exists(RowKey::Client(2))], effects: vec![] };
    let txn = |effect| {
        let execute = Command::Execute { part: TxnPart { effects: vec![effect], ..part.clone() }, at_ms: 0 };
        Command::Once { writer: 1, seq: 1, answered_below: 1, at_ms: 0, command: Box::new(execute) }
    };
    let planted = txn(Effect::Put(RowKey::TxnDone(1, TxnId(7)), b"corrupt".to_vec()));
    write_refused(&cluster, leader, encode(&planted), Code::InvalidArgument, "txns-done table").await;
    let garbage_product = txn(Effect::Put(RowKey::Product(2), b"corrupt".to_vec()));
    write_refused(&cluster, leader, encode(&garbage_product), Code::InvalidArgument, "invalid").await;
    // A single-shard transaction only inside a write session, which is
    // what applies a re-sent one once (the shard keeps no record of it).
    let bare = encode(&Command::Execute { part: part.clone(), at_ms: 0 });
    write_refused(&cluster, leader, bare, Code::InvalidArgument, "only inside a write session").await;
    let prune = encode(&Command::PruneTxns { before_ms: u64::MAX });
    write_refused(&cluster, leader, prune, Code::InvalidArgument, "leader itself").await;
    common::all_serve_on(&mut cluster, "writes to internal tables").await;

    // WriteEach takes 1 to MAX_WRITE_EACH resolves and nothing else.
    let resolve = |id: u64| encode(&Command::Resolve { id: TxnId(u128::from(id)), outcome: Outcome::Commit, at_ms: 0 });
    write_each_refused(&cluster, leader, vec![], "1 to").await;
    write_each_refused(&cluster, leader, (0..=MAX_WRITE_EACH as u64).map(resolve).collect(), "1 to").await;
    write_each_refused(&cluster, leader, vec![resolve(1), vec![0xff; 64]], "undecodable command").await;
    let put = encode(&Command::single(RowWrite::upsert(marker(), b"x".to_vec())));
    write_each_refused(&cluster, leader, vec![resolve(1), put], "Resolve, CommitPriced and Prevent only").await;
    common::all_serve_on(&mut cluster, "WriteEach of commands it does not take").await;

    // Resolves of transactions never prepared here abort them, and the same
    // call again answers the same.
    let resolves: Vec<Vec<u8>> = [11, 12, 13].map(resolve).to_vec();
    for _ in 0..2 {
        let request = WriteEachRequest { commands: resolves.clone() };
        let reply = raw_client(&cluster, leader).await.write_each(request).await.expect("taken").into_inner();
        let Some(store_reply::Outcome::Result(bytes)) = reply.outcome else { panic!("a result: {reply:?}") };
        let results: Vec<CommandResult> = decode_reply(&bytes).expect("results");
        assert_eq!(results, vec![CommandResult::Aborted(None); 3]);
    }
}

/// Sends `commands` to node `id` in one `WriteEach` and asserts an
/// `INVALID_ARGUMENT` whose message mentions `words`.
async fn write_each_refused(cluster: &LocalCluster, id: NodeId, commands: Vec<Vec<u8>>, words: &str) {
    let answer = raw_client(cluster, id).await.write_each(WriteEachRequest { commands }).await;
    let status = answer.expect_err("the call is refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains(words), "{:?} should mention {words:?}", status.message());
}

/// The spliced encodings are what bincode would write for shallow values.
#[test]
fn the_hand_written_encodings_match_bincode() {
    let one_intent = RowKey::Intent(Box::new(RowKey::Kv(MARKER.into())));
    assert_eq!(with_deep_key(&RowKey::Kv(MARKER.into()), 1), encode(&one_intent));
    assert_eq!(deep_many(2), encode(&Command::Many(vec![Command::Many(vec![Command::Batch(vec![])])])));
}
