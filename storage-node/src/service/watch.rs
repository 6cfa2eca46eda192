//! Serving the change feed to one subscriber.
//!
//! A subscriber first gets a starting point — the current value of every
//! row under its prefix, or the stored events from the index it resumes at —
//! then a `caught_up` marker, then live events as they are applied. It
//! subscribes to live events *before* reading the starting point and skips
//! live entries at or below the marker's index, so nothing is lost or
//! repeated in between. Live events come one message per log entry, so an
//! entry is delivered whole or (after a lag) re-read whole from storage.
//! A subscriber too slow for the live buffer falls back to the stored events
//! and carries on; each change is delivered exactly once, in log order.
//!
//! Nothing here holds the apply lock for more than one chunk of
//! [`feed::CHUNK_ROWS`] rows, so a big table never stalls `apply`. The price
//! is that the starting values, listed chunk by chunk, are not one state:
//! each chunk is current at its own applied index. The listing is made exact
//! afterwards: the stored events from the first chunk's index on are read,
//! and each one newer than the chunk that listed its row is sent too, as a
//! current value (a deletion as a current value without one). So the last
//! current value of each topic is its value at the marker's index, and
//! everything after the marker is a change.
//!
//! Open watches are capped per node: each holds a slot of [`WatchSlots`]
//! until its subscriber leaves, and a watch beyond the cap is refused with
//! `RESOURCE_EXHAUSTED`.

use std::io;
use std::sync::Arc;

use futures::StreamExt;
use raftshop_proto::store as pb;
use tokio::sync::{broadcast, mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::command::RowKey;
use crate::records::coordination::FeedEvent;
use crate::service::WatchStream;
use crate::state::feed::{self, Chunk, KeyCursor};
use crate::state::{keys, AppliedState};
use crate::types::LogIndex;

/// Events queued for one subscriber before the sender waits for it.
const SUBSCRIBER_QUEUE: usize = 256;

/// The open watches of one node, at most a fixed number at once.
#[derive(Clone, Debug)]
pub struct WatchSlots {
    /// One permit per watch that may still open.
    permits: Arc<Semaphore>,
    /// How many watches may be open at once, for the refusal's sentence.
    capacity: usize,
}

impl WatchSlots {
    /// Room for `capacity` open watches.
    pub fn new(capacity: usize) -> Self {
        WatchSlots { permits: Arc::new(Semaphore::new(capacity)), capacity }
    }

    /// Watches open now.
    pub fn open_count(&self) -> usize {
        self.capacity.saturating_sub(self.permits.available_permits())
    }

    /// A slot for one more watch, held until the watch ends.
    fn take(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "this node already serves {} watches, its most; close one, or watch through another member",
                self.capacity
            ))
        })
    }
}

/// Opens a watch on `prefix`, resuming at `from` if given, in a slot of
/// `slots`.
pub fn open(
    state: Arc<AppliedState>,
    slots: &WatchSlots,
    prefix: String,
    from: Option<LogIndex>,
) -> Result<WatchStream, Status> {
    let slot = slots.take()?;
    let live = state.subscribe();
    if let Some(from) = from {
        let oldest = feed::oldest_retained(applied_index(&state));
        if from < oldest {
            return Err(Status::failed_precondition(format!(
                "compacted: events before index {oldest} are no longer kept; resume from {oldest} or later, or watch without an index"
            )));
        }
    }
    let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    let subscriber = Subscriber { state, prefix, tx, _slot: slot };
    tokio::spawn(subscriber.serve(from, live));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Why serving a subscriber ended early.
enum Ended {
    /// The subscriber went away.
    Left,
    /// The feed cannot go on; the subscriber is told why.
    Failed(Status),
}

/// What serving a subscriber yields, unless it ended.
type Served<T> = Result<T, Ended>;

/// The task serving one watch.
struct Subscriber {
    /// The rows and their stored events.
    state: Arc<AppliedState>,
    /// The topics watched.
    prefix: String,
    /// The subscriber's queue.
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
    /// This watch's slot, freed when the task ends.
    _slot: OwnedSemaphorePermit,
}

impl Subscriber {
    /// Serves the watch until the subscriber leaves or the feed fails.
    async fn serve(self, from: Option<LogIndex>, live: broadcast::Receiver<Arc<Vec<FeedEvent>>>) {
        if let Err(Ended::Failed(status)) = self.run(from, live).await {
            let _ = self.tx.send(Err(status)).await;
        }
    }

    /// Sends the starting point, the marker, then live events.
    async fn run(&self, from: Option<LogIndex>, mut live: broadcast::Receiver<Arc<Vec<FeedEvent>>>) -> Served<()> {
        let mut last = match from {
            None => self.send_current().await?,
            Some(from) => self.send_stored(from, None).await?,
        };
        self.send(pb::WatchEvent { index: last, caught_up: true, ..Default::default() }).await?;
        loop {
            let entry = tokio::select! {
                () = self.tx.closed() => return Err(Ended::Left),
                entry = live.recv() => entry,
            };
            last = match entry {
                Ok(entry) => self.send_live(&entry, last).await?,
                Err(broadcast::error::RecvError::Lagged(_)) => self.send_stored(last + 1, None).await?,
                Err(broadcast::error::RecvError::Closed) => return Ok(()), // the node is stopping
            };
        }
    }

    /// Sends the matching events of one live entry unless it is at or
    /// below `last`; returns the new last index.
    async fn send_live(&self, entry: &[FeedEvent], last: LogIndex) -> Served<LogIndex> {
        let Some(index) = entry.first().map(|e| e.index) else { return Ok(last) };
        if index <= last {
            return Ok(last); // already sent as part of the starting point
        }
        for event in entry.iter().filter(|e| feed::matches(&self.prefix, &e.topic)) {
            self.send(to_proto(event, false)).await?;
        }
        Ok(index)
    }

    /// Sends the current value of every row under the prefix, chunk by
    /// chunk, then what changed meanwhile; returns the index the values are
    /// all current at.
    async fn send_current(&self) -> Served<LogIndex> {
        let mut cursor = KeyCursor::new(feed::key_ranges_under(&self.prefix));
        let mut listing = Listing::default();
        while let Some(Chunk { rows, index, until }) = cursor.next_chunk(&self.state).map_err(read_failed)? {
            for (key, row) in rows {
                match feed::topic(&key, Some(&row.value)) {
                    Some(topic) if feed::matches(&self.prefix, &topic) => {
                        self.send(to_proto(&FeedEvent { index, topic, value: Some(row.value) }, true)).await?
                    }
                    _ => {}
                }
            }
            listing.chunks.push((until, index));
        }
        let first = listing.chunks.first().map_or_else(|| applied_index(&self.state), |(_, index)| *index);
        self.send_stored(first + 1, Some(&listing)).await
    }

    /// Sends the stored events under the prefix from entry `from` on: as
    /// changes, or with a `listing`, as current values where newer than the
    /// chunk that listed their row. Returns the last index they cover.
    async fn send_stored(&self, from: LogIndex, listing: Option<&Listing>) -> Served<LogIndex> {
        let mut cursor = KeyCursor::new(vec![feed::event_range(from)]);
        let mut reading = from; // the entry whose events the cursor is in
        let mut covered = from.saturating_sub(1);
        while let Some(chunk) = cursor.next_chunk(&self.state).map_err(read_failed)? {
            let oldest = feed::oldest_retained(chunk.index);
            if reading < oldest {
                return Err(Ended::Failed(pruned(oldest, listing.is_some())));
            }
            covered = covered.max(chunk.index);
            for (key, row) in chunk.rows {
                let RowKey::Event(index, _) = key else { continue };
                reading = index;
                let events = feed::stored_events(&key, &row).map_err(|e| read_failed(io::Error::other(e)))?;
                for event in events.iter().filter(|event| feed::matches(&self.prefix, &event.topic)) {
                    match listing {
                        None => self.send(to_proto(event, false)).await?,
                        Some(listing) if event.index > listing.index_of(&event.topic) => {
                            self.send(to_proto(event, true)).await?
                        }
                        Some(_) => {} // the listing already holds this change
                    }
                }
            }
        }
        Ok(covered)
    }

    /// Queues one event for the subscriber.
    async fn send(&self, event: pb::WatchEvent) -> Served<()> {
        self.tx.send(Ok(event)).await.map_err(|_| Ended::Left)
    }
}

/// Which applied index each part of a chunked listing is current at.
#[derive(Debug, Default)]
struct Listing {
    /// Per chunk, in key order: the end of its key range (exclusive) and
    /// the index its rows are current at.
    chunks: Vec<(Vec<u8>, LogIndex)>,
}

impl Listing {
    /// The index at which the listing saw `topic`'s row (or its absence);
    /// 0 for a topic outside the listing, whose every event is news.
    fn index_of(&self, topic: &str) -> LogIndex {
        let Some(key) = feed::topic_key(topic) else { return 0 };
        let key = keys::row_key(&key);
        let at = self.chunks.partition_point(|(until, _)| until.as_slice() <= key.as_slice());
        self.chunks.get(at).map_or(0, |(_, index)| *index)
    }
}

/// The index the state has applied up to.
fn applied_index(state: &AppliedState) -> LogIndex {
    state.progress().applied.map(|id| id.index).unwrap_or_default()
}

/// Why the stored events cannot be read on: pruned before `oldest` while
/// the subscriber read them (`listing`: while it listed current values).
fn pruned(oldest: LogIndex, listing: bool) -> Status {
    if listing {
        Status::aborted(format!(
            "the rows changed faster than they could be listed (events before {oldest} were pruned meanwhile); watch again"
        ))
    } else {
        Status::data_loss(format!("the subscriber fell behind past the retained events (oldest {oldest})"))
    }
}

fn read_failed(error: io::Error) -> Ended {
    Ended::Failed(Status::internal(format!("reading the feed failed: {error}")))
}

fn to_proto(event: &FeedEvent, current: bool) -> pb::WatchEvent {
    pb::WatchEvent {
        index: event.index,
        topic: event.topic.clone(),
        value: event.value.clone(),
        current,
        caught_up: false,
    }
}

#[cfg(test)]
mod tests;
