//! Serving the change feed to one subscriber.
//!
//! A subscriber first gets a starting point — the current value of every
//! row under its prefix, or the stored events from the index it resumes at —
//! then live events as they are applied. It subscribes to live events
//! *before* reading the starting point and skips live entries at or below
//! the last index already sent, so nothing is lost or repeated in between.
//! Live events come one message per log entry, so an entry is delivered
//! whole or (after a lag) re-read whole from storage.
//! A subscriber too slow for the live buffer falls back to the stored events
//! and carries on; each event is delivered exactly once, in log order.

use std::sync::Arc;

use futures::StreamExt;
use raftshop_proto::store as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::coordination::FeedEvent;
use crate::service::WatchStream;
use crate::state::{feed, ShopState};
use crate::types::LogIndex;

/// Events queued for one subscriber before the sender waits for it.
const SUBSCRIBER_QUEUE: usize = 256;

/// Opens a watch on `prefix`, resuming at `from` if given.
pub fn open(state: Arc<ShopState>, prefix: String, from: Option<LogIndex>) -> Result<WatchStream, Status> {
    let live = state.subscribe();
    let internal = |e: std::io::Error| Status::internal(format!("reading the feed failed: {e}"));
    let (start, last, current) = match from {
        None => {
            let (events, index) = state.current_under(&prefix).map_err(internal)?;
            (events, index, true)
        }
        Some(from) => match state.events_since(&prefix, from).map_err(internal)? {
            Ok(events) => {
                let last = events.last().map_or(from.saturating_sub(1), |e| e.index);
                (events, last, false)
            }
            Err(oldest) => {
                return Err(Status::failed_precondition(format!(
                    "compacted: events before index {oldest} are no longer kept; resume from {oldest} or later, or watch without an index"
                )))
            }
        },
    };
    let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
    tokio::spawn(forward(state, prefix, start, current, last, live, tx));
    Ok(tokio_stream::wrappers::ReceiverStream::new(rx).boxed())
}

/// Sends the starting events, then live ones, until the subscriber leaves.
async fn forward(
    state: Arc<ShopState>,
    prefix: String,
    start: Vec<FeedEvent>,
    current: bool,
    mut last: LogIndex,
    mut live: broadcast::Receiver<Arc<Vec<FeedEvent>>>,
    tx: mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    for event in &start {
        if tx.send(Ok(to_proto(event, current))).await.is_err() {
            return;
        }
    }
    let marker = pb::WatchEvent { index: last, caught_up: true, ..Default::default() };
    if tx.send(Ok(marker)).await.is_err() {
        return;
    }
    loop {
        let entry = match live.recv().await {
            Ok(entry) => entry,
            Err(broadcast::error::RecvError::Lagged(_)) => match catch_up(&state, &prefix, last, &tx).await {
                Some(new_last) => {
                    last = new_last;
                    continue;
                }
                None => return,
            },
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Some(index) = entry.first().map(|e| e.index) else { continue };
        if index <= last {
            continue; // already sent as part of the starting point
        }
        for event in entry.iter().filter(|e| feed::matches(&prefix, &e.topic)) {
            if tx.send(Ok(to_proto(event, false))).await.is_err() {
                return;
            }
        }
        last = index;
    }
}

/// Re-reads stored events after `last`; returns the new last index, or
/// `None` if the subscriber left or the events are gone.
async fn catch_up(
    state: &ShopState,
    prefix: &str,
    last: LogIndex,
    tx: &mpsc::Sender<Result<pb::WatchEvent, Status>>,
) -> Option<LogIndex> {
    let events = match state.events_since(prefix, last + 1) {
        Ok(Ok(events)) => events,
        Ok(Err(oldest)) => {
            let status =
                Status::data_loss(format!("the subscriber fell behind past the retained events (oldest {oldest})"));
            let _ = tx.send(Err(status)).await;
            return None;
        }
        Err(e) => {
            let _ = tx.send(Err(Status::internal(format!("reading the feed failed: {e}")))).await;
            return None;
        }
    };
    let mut new_last = last;
    for event in events {
        tx.send(Ok(to_proto(&event, false))).await.ok()?;
        new_last = event.index;
    }
    Some(new_last)
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
