//! The shop's change feed, merged from both shards: a gRPC service beside
//! the seed's API, and the JSON rendering of feed values for people.
//!
//! Each shard's feed is followed with [`ShardClient::watch`] (which
//! survives node failures and resumes without gaps); the two streams are
//! merged as events arrive. Order is kept within a shard (its log order);
//! across shards there is no order to keep, the shards being independent.
//!
//! A portal serves at most [`MAX_PORTAL_WATCHES`] feed watches at once (each
//! holds a watch on a node of each shard); one more is refused with
//! `RESOURCE_EXHAUSTED`, and a watch frees its slot when its caller leaves.
//!
//! [`ShardClient::watch`]: storage_node::client::ShardClient::watch

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use raftshop_proto::feed::{feed_server::Feed, FeedEvent, FeedRequest, FeedTopic, FeedTopics};
use serde_json::{json, Value};
use storage_node::client::{ClusterClient, FeedItem};
use storage_node::limits::MAX_PORTAL_WATCHES;
use storage_node::records::coordination::{BarrierState, MutexState};
use storage_node::records::shop::{decode_record, ClientRecord, OrderRecord, ProductRecord};
use storage_node::Shard;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::service::product_json;

/// How long ListTopics waits for each shard.
const TOPICS_TIMEOUT: Duration = Duration::from_secs(3);

/// A feed value as JSON in the API's shapes, by its topic.
pub fn render(topic: &str, value: &[u8]) -> Value {
    let parts: Vec<&str> = topic.split('/').collect();
    let id = |i: usize| parts.get(i).and_then(|p| p.parse::<u64>().ok()).unwrap_or_default();
    let rendered = match parts.first().copied() {
        Some("clients") => decode_record::<ClientRecord>(value)
            .map(|c| serde_json::from_str(&c.document).unwrap_or(Value::String(c.document))),
        Some("products") => decode_record::<ProductRecord>(value)
            .map(|p| serde_json::from_str(&product_json(id(1), &p)).unwrap_or_default()),
        Some("orders") => decode_record::<OrderRecord>(value).map(|o| order_value(id(2), &o)),
        Some("locks") => decode_record::<MutexState>(value).map(|m| mutex_value(&m)),
        Some("barriers") => decode_record::<BarrierState>(value).map(|b| json!(b)),
        _ => Ok(Value::String(String::from_utf8_lossy(value).into_owned())),
    };
    rendered.unwrap_or_else(|e| json!({ "undecodable": e }))
}

fn order_value(oid: u64, order: &OrderRecord) -> Value {
    let lines: Vec<Value> = order
        .lines
        .iter()
        .map(|l| json!({"PID": l.pid.to_string(), "quantity": l.quantity, "price": l.price}))
        .collect();
    let total: f64 = order.lines.iter().map(|l| l.quantity as f64 * l.price).sum();
    json!({"OID": oid.to_string(), "CID": order.cid.to_string(), "products": lines, "total": total})
}

fn mutex_value(state: &MutexState) -> Value {
    let queue: Vec<Value> = state.queue.iter().map(|(clock, site)| json!({"clock": clock, "site": site})).collect();
    let holder = state.holder.map(|g| json!({"site": g.site, "clock": g.clock, "token": g.token}));
    json!({"holder": holder, "queue": queue, "clocks": state.clocks})
}

/// Both shards' feeds under `prefix`, merged, as API events.
pub fn merged(cluster: &ClusterClient, prefix: &str) -> impl Stream<Item = Result<FeedEvent, Status>> {
    let per_shard = Shard::ALL.map(|shard| {
        cluster.shard(shard).watch(prefix, None).filter_map(move |item| async move {
            match item {
                Ok(FeedItem::Event { index, topic, value, current }) => Some(Ok(FeedEvent {
                    shard: shard.to_string(),
                    index,
                    json: value.as_deref().map(|v| render(&topic, v).to_string()).unwrap_or_default(),
                    deleted: value.is_none(),
                    topic,
                    current,
                })),
                Ok(FeedItem::CaughtUp { .. }) => None,
                Err(e) => Some(Err(Status::unavailable(e.to_string()))),
            }
        })
    });
    let [even, odd] = per_shard;
    futures::stream::select(even, odd)
}

/// The `raftshop.feed.Feed` service of a portal.
pub struct FeedService {
    /// Clients of both shards.
    pub cluster: Arc<ClusterClient>,
    /// One permit per watch that may still open.
    slots: Arc<Semaphore>,
    /// How many watches may be open at once, for the refusal's sentence.
    capacity: usize,
}

impl FeedService {
    /// The feed of `cluster`, with room for [`MAX_PORTAL_WATCHES`] watches.
    pub fn new(cluster: Arc<ClusterClient>) -> Self {
        Self::with_capacity(cluster, MAX_PORTAL_WATCHES)
    }

    /// The feed of `cluster`, with room for `capacity` watches at once.
    pub fn with_capacity(cluster: Arc<ClusterClient>, capacity: usize) -> Self {
        FeedService { cluster, slots: Arc::new(Semaphore::new(capacity)), capacity }
    }
}

/// A stream of merged feed events.
pub type FeedStream = std::pin::Pin<Box<dyn Stream<Item = Result<FeedEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Feed for FeedService {
    type WatchStream = FeedStream;

    async fn watch(&self, request: Request<FeedRequest>) -> Result<Response<FeedStream>, Status> {
        let slot = self.slots.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this portal already serves {} feed watches, its most; close one or try again later",
                self.capacity
            ))
        })?;
        let prefix = request.into_inner().prefix;
        // The slot lives as long as the stream: dropping it frees the slot.
        let events = merged(&self.cluster, &prefix).map(move |event| {
            let _holds = &slot;
            event
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn list_topics(&self, request: Request<FeedRequest>) -> Result<Response<FeedTopics>, Status> {
        let prefix = request.into_inner().prefix;
        let mut counts = std::collections::BTreeMap::new();
        for shard in Shard::ALL {
            let topics = self.cluster.shard(shard).list_topics(&prefix, TOPICS_TIMEOUT).await;
            for (topic, count) in topics.map_err(|e| Status::unavailable(e.to_string()))? {
                *counts.entry(topic).or_insert(0u64) += count;
            }
        }
        let topics = counts.into_iter().map(|(topic, count)| FeedTopic { topic, count }).collect();
        Ok(Response::new(FeedTopics { topics }))
    }
}

#[cfg(test)]
mod tests {
    use storage_node::records::shop::{encode_record, OrderLine};

    use super::*;

    #[test]
    fn values_render_in_the_api_shapes() {
        let order = OrderRecord { cid: 7, lines: vec![OrderLine { pid: 2, quantity: 3, price: 1.5 }] };
        let rendered = render("orders/7/10", &encode_record(&order));
        assert_eq!(rendered["OID"], "10");
        assert_eq!(rendered["total"], 4.5);
        let product = ProductRecord { name: "pen".into(), price: 2.0, quantity: 5, extra: "{}".into() };
        assert_eq!(render("products/3", &encode_record(&product))["PID"], "3");
        assert_eq!(render("kv/greeting", b"hello"), json!("hello"));
    }

    #[tokio::test]
    async fn a_watch_beyond_the_cap_is_refused_until_one_closes() {
        let cluster = Arc::new(ClusterClient::new(&storage_node::ClusterConfig::embedded()));
        let feed = FeedService::with_capacity(cluster, 1);
        let watch = || feed.watch(Request::new(FeedRequest { prefix: "kv".into() }));
        let first = watch().await.expect("the first watch opens");
        let refused = watch().await.err().expect("the second is refused");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(refused.message().contains("already serves 1 feed watches"), "{}", refused.message());
        drop(first);
        assert!(watch().await.is_ok(), "closing a watch frees its slot");
    }
}
