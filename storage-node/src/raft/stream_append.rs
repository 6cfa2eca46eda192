//! Pipelined replication: AppendEntries as one long-lived gRPC stream per
//! leader-to-follower session.
//!
//! openraft 0.10's replication task hands the network a lazy stream of
//! AppendEntries requests that does not end while the session lasts, and
//! reads the answers in order. Both ends of that live here:
//!
//! - [`open`] (leader side) sends requests on one `StreamAppend` call. A
//!   semaphore of [`WINDOW`] permits bounds the requests in flight: a permit
//!   is taken before the next request is pulled and given back by its answer.
//!   One HTTP/2 stream is ordered and the follower answers in order, so the
//!   answers line up with the requests without sequence numbers. A request
//!   that only passes the commit index on may give way to the next one
//!   ([`COMMIT_ONLY_HOLD`]).
//! - [`serve`] (follower side) decodes requests into `Raft::stream_append`,
//!   which answers each after the follower's own flush, and ends the input at
//!   the first transport or decode error rather than skipping a message.
//!
//! The call has no gRPC deadline: a session may idle for hours. A stalled
//! follower is caught by a progress timer instead: the session fails only
//! when a request has waited [`PROGRESS_TIMEOUT`] for its answer. HTTP/2
//! keep-alives catch a dead connection.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::error::{NetworkError, RPCError};
use openraft::raft::{AppendEntriesRequest, StreamAppendResult};
use raftshop_proto::store::raft_client::RaftClient;
use raftshop_proto::store::RaftPayload;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::codec::{decode_peer_message, encode};
use crate::types::{NodeId, Raft, TypeConfig};

/// Most AppendEntries requests in flight on one session; at most the
/// follower's pipeline buffer (64 in openraft 0.10).
pub const WINDOW: usize = 32;

/// How long the oldest unanswered request may wait before the session is
/// given up. Longer than a follower's fdatasync under load on two busy
/// cores, so a slow disk does not churn sessions; an idle session (nothing
/// outstanding) never times out.
pub const PROGRESS_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a request without entries waits for a later request to take
/// its place (see `outbound`).
///
/// With one client, each write cost every follower a second message, a
/// second wake-up and a second answer, and the leader two more sends and
/// receives, all while the write was being answered. Holding them back
/// costs a follower only a later apply when writes stop (a request waits
/// at most this long, counted from when the first of a run of replaced
/// ones came; the leader's heartbeats carry the commit index too). Nothing
/// waits on a follower's apply: reads are the leader's, and a write is
/// answered once the leader applied it. The lease is not lengthened:
/// openraft dates each request when it builds it, before this wait, and
/// matches answers to requests by log position, so an answer to a later
/// request acknowledges the dropped one as well (as an answer to an
/// earlier request that reaches as far already did before this hold).
pub const COMMIT_ONLY_HOLD: Duration = Duration::from_millis(2);

/// The follower's answers, as tonic sends them.
pub type StreamAppendReplies = Pin<Box<dyn Stream<Item = Result<RaftPayload, Status>> + Send + 'static>>;

/// One answer per request, in order, or why the session ended.
type Answers = BoxStream<'static, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// Serves one `StreamAppend` call on a follower.
pub fn serve(raft: &Raft, inbound: Streaming<RaftPayload>) -> StreamAppendReplies {
    let requests = futures::stream::unfold(Some(inbound), |state| async move {
        let mut inbound = state?;
        match inbound.message().await {
            Ok(Some(message)) => match decode_peer_message::<AppendEntriesRequest<TypeConfig>>(&message.data) {
                Ok(rpc) => Some((rpc, Some(inbound))),
                Err(error) => {
                    tracing::warn!(%error, "undecodable AppendEntries on a stream; ending it");
                    None
                }
            },
            Ok(None) => None,
            Err(status) => {
                tracing::debug!(%status, "AppendEntries stream broke");
                None
            }
        }
    });
    let replies = raft.stream_append(requests).map(|item| match item {
        Ok(result) => Ok(RaftPayload { data: encode(&result) }),
        Err(fatal) => Err(Status::unavailable(format!("raft core stopped: {fatal}"))),
    });
    Box::pin(replies)
}

/// Opens a `StreamAppend` call to `target` carrying `input`, at most
/// [`WINDOW`] requests ahead of their answers.
pub async fn open<S>(
    mut client: RaftClient<Channel>,
    target: NodeId,
    cluster: tonic::metadata::AsciiMetadataValue,
    input: S,
) -> Result<Answers, RPCError<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    // Pull the first request before connecting: openraft's backoff after a
    // failed session is a sleep inside this pull, and a call that fails to
    // connect without waiting for it would be retried in a tight loop.
    // It goes out as it is, never held (see `outbound`): every probe of
    // where the follower's log ends is a session's first request, and one
    // without entries must be answered before the session goes on.
    let mut input = input;
    let Some(first) = input.next().await else {
        return Ok(Box::pin(futures::stream::empty()));
    };
    let window = Arc::new(Semaphore::new(WINDOW - 1));
    let sent_at = Arc::new(Mutex::new(VecDeque::from([Instant::now()])));
    let first = RaftPayload { data: encode(&first) };
    let outbound =
        futures::stream::once(std::future::ready(first)).chain(outbound(input, window.clone(), sent_at.clone()));
    let inbound = client
        .stream_append(crate::raft::network::addressed(outbound, target, &cluster))
        .await
        .map_err(|s| crate::raft::network::transport_error(&s))?
        .into_inner();
    tracing::info!(target_node = target, window = WINDOW, "replication stream opened");
    let session = Session { inbound, window, sent_at, target };
    Ok(Box::pin(futures::stream::unfold(Some(session), |state| async move {
        let mut session = state?;
        match session.next_answer().await {
            Some(Ok(answer)) => Some((Ok(answer), Some(session))),
            Some(Err(error)) => Some((Err(error), None)),
            None => None,
        }
    })))
}

/// The encoded requests, each pulled only once a window permit is free.
///
/// After a session's first request (which [`open`] sends itself, so
/// probes are never held), a request without entries carries only the
/// leader's commit index: openraft sends one to each follower right after
/// every commit that no request has carried yet, which with few clients is
/// after every write. Such a request waits up to [`COMMIT_ONLY_HOLD`] and
/// is dropped if the next request comes first, since that one carries the
/// same vote, the same previous log position and a commit index at least
/// as high. If the input ends meanwhile, the held request still goes.
fn outbound<S>(
    input: S,
    window: Arc<Semaphore>,
    sent_at: Arc<Mutex<VecDeque<Instant>>>,
) -> impl Stream<Item = RaftPayload> + Send + 'static
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
{
    // Fused: `next_to_send` may meet the end of the input and still return
    // a held request, and the next pull must then see the end again.
    futures::stream::unfold(input.fuse(), move |mut input| {
        let window = window.clone();
        let sent_at = sent_at.clone();
        async move {
            // The permit is returned by the answer, not by this scope.
            window.acquire().await.ok()?.forget();
            let rpc = next_to_send(&mut input).await?;
            lock(&sent_at).push_back(Instant::now());
            Some((RaftPayload { data: encode(&rpc) }, input))
        }
    })
}

/// The next request worth sending: one with entries, or the last of a run
/// without entries that no request with entries followed within
/// [`COMMIT_ONLY_HOLD`] of the run's first, or that the end of the input
/// cut short. `None` when the input has ended.
async fn next_to_send<S>(input: &mut S) -> Option<AppendEntriesRequest<TypeConfig>>
where
    S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Unpin,
{
    let mut rpc = input.next().await?;
    let deadline = tokio::time::Instant::now() + COMMIT_ONLY_HOLD;
    while rpc.entries.is_empty() {
        match tokio::time::timeout_at(deadline, input.next()).await {
            Ok(Some(next)) => rpc = next,
            Ok(None) | Err(_) => break,
        }
    }
    Some(rpc)
}

/// The leader's end of one session.
struct Session {
    /// The follower's answers.
    inbound: Streaming<RaftPayload>,
    /// Free slots for requests; an answer frees one.
    window: Arc<Semaphore>,
    /// When each unanswered request was sent, oldest first.
    sent_at: Arc<Mutex<VecDeque<Instant>>>,
    /// The follower, for error reports.
    target: NodeId,
}

impl Session {
    /// The next answer; `None` when the follower ended the stream.
    async fn next_answer(&mut self) -> Option<Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>> {
        loop {
            let wait = self.oldest_wait().map_or(PROGRESS_TIMEOUT, |waited| PROGRESS_TIMEOUT.saturating_sub(waited));
            let message = match tokio::time::timeout(wait, self.inbound.message()).await {
                Ok(message) => message,
                Err(_) if self.stalled() => return Some(Err(self.timeout())),
                Err(_) => continue,
            };
            return match message {
                Ok(Some(payload)) => Some(self.answer(&payload)),
                Ok(None) => None,
                Err(status) => Some(Err(crate::raft::network::transport_error(&status))),
            };
        }
    }

    /// Decodes an answer and frees its request's window slot.
    fn answer(&mut self, payload: &RaftPayload) -> Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>> {
        lock(&self.sent_at).pop_front();
        self.window.add_permits(1);
        decode_peer_message(&payload.data).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    /// How long the oldest unanswered request has waited, if any.
    fn oldest_wait(&self) -> Option<Duration> {
        lock(&self.sent_at).front().map(Instant::elapsed)
    }

    /// True if a request has waited its full allowance.
    fn stalled(&self) -> bool {
        self.oldest_wait().is_some_and(|waited| waited >= PROGRESS_TIMEOUT)
    }

    /// A stall is a network error, not `Unreachable`: openraft retries at
    /// once with a new session instead of backing off from a live follower.
    fn timeout(&self) -> RPCError<TypeConfig> {
        let error = std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("node {} answered no AppendEntries for {PROGRESS_TIMEOUT:?}", self.target),
        );
        RPCError::Network(NetworkError::new(&error))
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use futures::channel::mpsc;

    use super::*;
    use crate::types::{Entry, EntryPayload, Vote};

    /// A request from the leader of term 1, after the entry at `prev`,
    /// carrying the entries up to `last` and commit index `commit`.
    fn request(prev: u64, last: u64, commit: u64) -> AppendEntriesRequest<TypeConfig> {
        let log_id = |index| openraft::testing::log_id::<TypeConfig>(1, 1, index);
        AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(log_id(prev)),
            leader_commit: Some(log_id(commit)),
            entries: (prev + 1..=last)
                .map(|index| Entry { log_id: log_id(index), payload: EntryPayload::Blank })
                .collect(),
        }
    }

    fn summary(rpc: &AppendEntriesRequest<TypeConfig>) -> (usize, Option<u64>) {
        (rpc.entries.len(), rpc.leader_commit.map(|id| id.index))
    }

    /// Requests without entries that a later request follows at once are
    /// not sent; the later one carries their commit index on.
    #[tokio::test]
    async fn a_commit_only_request_gives_way_to_the_next_one() {
        let mut input = futures::stream::iter([request(2, 2, 1), request(2, 2, 2), request(2, 4, 2), request(4, 5, 4)]);
        assert_eq!(next_to_send(&mut input).await.as_ref().map(summary), Some((2, Some(2))));
        assert_eq!(next_to_send(&mut input).await.as_ref().map(summary), Some((1, Some(4))));
        assert!(next_to_send(&mut input).await.is_none());
    }

    /// A run of requests without entries waits the hold once, from its
    /// first request, not again for each that replaces another.
    #[tokio::test(start_paused = true)]
    async fn a_run_of_commit_only_requests_waits_one_hold() {
        let (tx, mut input) = mpsc::unbounded();
        tx.unbounded_send(request(3, 3, 3)).expect("send");
        let started = tokio::time::Instant::now();
        let later = async {
            tokio::time::sleep(COMMIT_ONLY_HOLD / 2).await;
            tx.unbounded_send(request(3, 3, 4)).expect("send");
        };
        let (sent, ()) = tokio::join!(next_to_send(&mut input), later);
        assert_eq!(sent.as_ref().map(summary), Some((0, Some(4))));
        assert_eq!(started.elapsed(), COMMIT_ONLY_HOLD);
    }

    /// A run of requests without entries that the end of the input cuts
    /// short still sends its last one: the follower learns the commit.
    #[tokio::test]
    async fn a_held_request_goes_when_the_input_ends() {
        let mut input = futures::stream::iter([request(2, 2, 1), request(2, 2, 2)]).fuse();
        assert_eq!(next_to_send(&mut input).await.as_ref().map(summary), Some((0, Some(2))));
        assert!(next_to_send(&mut input).await.is_none());
    }

    /// A request without entries that nothing follows is sent after the
    /// hold, so followers learn the commit index when writes stop.
    #[tokio::test(start_paused = true)]
    async fn a_commit_only_request_is_sent_when_nothing_follows() {
        let (tx, mut input) = mpsc::unbounded();
        tx.unbounded_send(request(3, 3, 3)).expect("send");
        let started = tokio::time::Instant::now();
        let sent = tokio::time::timeout(Duration::from_secs(1), next_to_send(&mut input)).await;
        assert_eq!(sent.expect("sent after the hold").as_ref().map(summary), Some((0, Some(3))));
        assert_eq!(started.elapsed(), COMMIT_ONLY_HOLD);
        // The input is still open: the next request is awaited, not made up.
        tx.unbounded_send(request(3, 4, 3)).expect("send");
        assert_eq!(next_to_send(&mut input).await.as_ref().map(summary), Some((1, Some(3))));
    }
}
