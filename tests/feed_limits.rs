//! Watches are a bounded resource (issue 11): a storage node serves at most
//! `MAX_OPEN_WATCHES` change-feed watches and a portal at most
//! `MAX_PORTAL_WATCHES`; the next one is refused with `RESOURCE_EXHAUSTED`
//! and a sentence, closing one frees its slot, and meanwhile the shard
//! keeps taking writes and every node lives.

mod common;

use std::time::Duration;

use common::{channel, shop_cluster};
use raftshop_proto::feed::feed_client::FeedClient;
use raftshop_proto::feed::FeedRequest;
use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::WatchRequest;
use storage_node::limits::{MAX_OPEN_WATCHES, MAX_PORTAL_WATCHES};
use tonic::transport::Channel;
use tonic::{Code, Streaming};

/// Streams per HTTP/2 connection, well below any server's stream limit.
const STREAMS_PER_CHANNEL: usize = 64;

/// Enough channels to `addr` to carry `streams` streams.
async fn channels(addr: std::net::SocketAddr, streams: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..streams.div_ceil(STREAMS_PER_CHANNEL) + 1 {
        channels.push(channel(addr).await);
    }
    channels
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_and_a_portal_refuse_one_watch_over_their_limit() {
    let mut cluster = shop_cluster().await;

    // A node: MAX_OPEN_WATCHES watches are served, one more is refused.
    let node = cluster.config().nodes[0].addr;
    let node_channels = channels(node, MAX_OPEN_WATCHES).await;
    let node_watch = |n: usize| {
        let mut client = StoreClient::new(node_channels[n / STREAMS_PER_CHANNEL].clone());
        async move { client.watch(WatchRequest { prefix: "kv/quiet".into(), from_index: None }).await }
    };
    let mut open: Vec<Streaming<_>> = Vec::new();
    for n in 0..MAX_OPEN_WATCHES {
        open.push(node_watch(n).await.unwrap_or_else(|e| panic!("watch {n} of {MAX_OPEN_WATCHES}: {e}")).into_inner());
    }
    let refused = node_watch(MAX_OPEN_WATCHES).await.expect_err("one watch too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("watches"), "a sentence: {}", refused.message());
    common::all_serve_on(&mut cluster, "watches at the limit").await;
    // Closing one frees its slot (the node sees the stream end shortly).
    drop(open.pop());
    let reopened = retry(|| node_watch(MAX_OPEN_WATCHES)).await;
    assert!(reopened.is_ok(), "a closed watch gives its slot back: {reopened:?}");
    drop(open);
    drop(reopened);

    // A portal's merged feed: MAX_PORTAL_WATCHES, then RESOURCE_EXHAUSTED.
    let portal = cluster.config().portals.admin;
    let portal_channels = channels(portal, MAX_PORTAL_WATCHES).await;
    let portal_watch = |n: usize| {
        let mut client = FeedClient::new(portal_channels[n / STREAMS_PER_CHANNEL].clone());
        async move { client.watch(FeedRequest { prefix: "kv/quiet".into() }).await }
    };
    let mut feeds = Vec::new();
    for n in 0..MAX_PORTAL_WATCHES {
        feeds.push(portal_watch(n).await.unwrap_or_else(|e| panic!("feed {n}: {e}")).into_inner());
    }
    let refused = portal_watch(MAX_PORTAL_WATCHES).await.expect_err("one feed too many");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    common::all_serve_on(&mut cluster, "watches at the limit").await;
}

/// Calls `open` until it succeeds or two seconds pass; the last answer.
async fn retry<F, Fut, T>(open: F) -> Result<T, tonic::Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match open().await {
            Err(status) if tokio::time::Instant::now() < give_up => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answer => return answer,
        }
    }
}
