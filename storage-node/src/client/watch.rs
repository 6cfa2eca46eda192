//! Following a shard's change feed from outside, across node failures.
//!
//! [`ShardClient::watch`] opens the `Watch` stream on one member (any
//! member: every replica applies the same log). If that member dies or the
//! stream breaks, it reopens the stream on the next member, resuming right
//! after the last log index it delivered, so the caller sees every change
//! exactly once and in log order. Only a failure during the starting values
//! restarts them from scratch (those are a snapshot, not changes).
//!
//! The starting values are listed in chunks on the node, so a row written
//! meanwhile may come twice (or come back as a deletion): the last current
//! value of a topic is its value at the [`FeedItem::CaughtUp`] index. When
//! the caller drops the stream, the stream to the node is closed at once,
//! freeing the node's watch slot.

use std::time::Duration;

use futures::{Stream, StreamExt};
use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::{WatchEvent, WatchRequest};
use tokio::sync::mpsc;

use super::{ClientError, ShardClient};
use crate::types::{LogIndex, NodeId};

/// Pause before trying the next member after a broken stream.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
/// How long to keep trying members before giving up.
const RECONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// One item of the change feed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FeedItem {
    /// A row's value (current, or a change).
    Event {
        /// The log index of the change (for current values, the index they
        /// are current at; a later current value of the same topic
        /// supersedes an earlier one).
        index: LogIndex,
        /// e.g. `clients/7`, `orders/7/10`, `locks/printer`.
        topic: String,
        /// The new record, `None` for a deletion (or, for a current value,
        /// a row deleted while the starting values were listed).
        value: Option<Vec<u8>>,
        /// True for the starting values sent before live changes.
        current: bool,
    },
    /// The starting values are complete; what follows is live.
    CaughtUp {
        /// The index the feed is caught up to.
        index: LogIndex,
    },
}

impl ShardClient {
    /// Streams the feed under `prefix`: current values (or, with `from`,
    /// the stored changes from that index), then every change, surviving
    /// the failure of the member it reads from. Ends with an error only if
    /// no member answers for `RECONNECT_DEADLINE`, or the resume point was
    /// pruned.
    pub fn watch(&self, prefix: &str, from: Option<LogIndex>) -> impl Stream<Item = Result<FeedItem, ClientError>> {
        let (tx, rx) = mpsc::channel(256);
        let members: Vec<(NodeId, tonic::transport::Channel)> =
            self.member_ids().filter_map(|id| self.channel(id).map(|c| (id, c))).collect();
        let follower = Follower { shard: self.shard(), members, prefix: prefix.to_owned(), from, tx };
        tokio::spawn(follower.run());
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// The task behind one `watch`.
struct Follower {
    shard: crate::types::Shard,
    members: Vec<(NodeId, tonic::transport::Channel)>,
    prefix: String,
    /// The first call's resume point, if the caller gave one.
    from: Option<LogIndex>,
    tx: mpsc::Sender<Result<FeedItem, ClientError>>,
}

/// Marks a log index whose events were all delivered.
const COMPLETE: usize = usize::MAX;

/// How far the caller has been served.
#[derive(Clone, Copy, Debug)]
struct Position {
    /// True once the starting values are complete (or the caller resumed).
    caught_up: bool,
    /// The last log index events were delivered for.
    index: LogIndex,
    /// How many events of `index` were delivered, or [`COMPLETE`].
    delivered: usize,
}

impl Position {
    /// The `from_index` to ask for and how many of its events to skip.
    fn resume_point(self) -> (Option<LogIndex>, usize) {
        match (self.caught_up, self.delivered) {
            (false, _) => (None, 0),
            (true, COMPLETE) => (Some(self.index + 1), 0),
            (true, delivered) => (Some(self.index), delivered),
        }
    }
}

impl Follower {
    async fn run(self) {
        let mut position = match self.from {
            Some(from) => Position { caught_up: true, index: from.saturating_sub(1), delivered: COMPLETE },
            None => Position { caught_up: false, index: 0, delivered: COMPLETE },
        };
        let mut member = 0;
        let mut broken_since: Option<tokio::time::Instant> = None;
        loop {
            let (node, channel) = self.members[member % self.members.len()].clone();
            let before = (position.index, position.delivered);
            match self.follow(channel, &mut position).await {
                Ok(()) => return, // the caller dropped the stream
                Err(Some(error)) => {
                    let _ = self.tx.send(Err(error)).await;
                    return;
                }
                Err(None) => tracing::debug!(node, "feed stream broke; trying the next member"),
            }
            if (position.index, position.delivered) != before {
                broken_since = None; // that member served something
            }
            let since = *broken_since.get_or_insert_with(tokio::time::Instant::now);
            if self.tx.is_closed() {
                return;
            }
            if since.elapsed() > RECONNECT_DEADLINE {
                let error = ClientError::Unavailable {
                    shard: self.shard,
                    attempts: member as u32 + 1,
                    last_error: "no member serves the feed".into(),
                    maybe_applied: false,
                };
                let _ = self.tx.send(Err(error)).await;
                return;
            }
            member += 1;
            tokio::time::sleep(RECONNECT_BACKOFF).await;
        }
    }

    /// Streams from one member. `Ok` when the caller left; `Err(None)` when
    /// the stream broke (try another member); `Err(Some)` when it is final.
    async fn follow(
        &self,
        channel: tonic::transport::Channel,
        position: &mut Position,
    ) -> Result<(), Option<ClientError>> {
        let (from_index, mut skip) = position.resume_point();
        let request = WatchRequest { prefix: self.prefix.clone(), from_index };
        let mut stream = match StoreClient::new(channel).watch(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                return Err(Some(ClientError::Protocol { node: 0, detail: status.message().to_owned() }));
            }
            Err(_) => return Err(None),
        };
        loop {
            let item = tokio::select! {
                () = self.tx.closed() => return Ok(()),
                item = stream.next() => item,
            };
            let Some(item) = item else { break };
            let Ok(event) = item else { return Err(None) };
            if skip > 0 && !event.caught_up && event.index == position.index {
                skip -= 1; // delivered before the stream broke
                continue;
            }
            let Some(item) = advance(position, event) else { continue };
            if self.tx.send(Ok(item)).await.is_err() {
                return Ok(());
            }
        }
        Err(None)
    }
}

/// Moves `position` past `event`; `None` for what the caller has seen.
fn advance(position: &mut Position, event: WatchEvent) -> Option<FeedItem> {
    if event.caught_up {
        if position.caught_up {
            return None; // a resumed stream's marker: nothing new
        }
        *position = Position { caught_up: true, index: event.index, delivered: COMPLETE };
        return Some(FeedItem::CaughtUp { index: event.index });
    }
    if !event.current {
        let same_entry = event.index == position.index && position.delivered != COMPLETE;
        let delivered = if same_entry { position.delivered + 1 } else { 1 };
        *position = Position { caught_up: true, index: event.index, delivered };
    }
    Some(FeedItem::Event { index: event.index, topic: event.topic, value: event.value, current: event.current })
}
