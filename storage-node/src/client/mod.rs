//! Talking to a shard from outside: leader discovery, redirects and retries.
//!
//! A [`ShardClient`] keeps one lazily connected HTTP/2 channel per member of
//! its shard and remembers who leads. A call goes to the presumed leader; a
//! follower answers with the leader's id and the call follows it; a dead or
//! partitioned node is skipped. All of this happens within one deadline, and
//! when the deadline passes the caller learns whether the call might still
//! have been applied ([`ClientError::maybe_applied`]), which is what a chaos
//! checker needs to classify the outcome honestly. A write may be sent more
//! than once on the way; the shard applies it once (see
//! [`crate::state::once`]).

mod coordination;
mod membership;
mod watch;

pub use coordination::{LamportSite, MutexGrant, SESSION_TTL};
pub use watch::FeedItem;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::{
    store_reply, NodeStatus, ReadRequest, StatusRequest, StoreReply, WriteEachRequest, WriteRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::codec::encode;
use crate::command::{Command, CommandResult, Query, QueryResult, Row, RowKey};
use crate::config::ClusterConfig;
use crate::state::once::MAX_WRITES_IN_FLIGHT;
use crate::types::{NodeId, Shard};

/// How long a single attempt may take before the client tries elsewhere.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Pause before retrying when no node knows a leader (an election is on).
pub const NO_LEADER_BACKOFF: Duration = Duration::from_millis(40);

/// Why a call to a shard did not produce an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// No node of the shard answered as leader before the deadline.
    #[error("shard {shard} has no reachable leader (quorum lost or election in progress) after {attempts} attempts: {last_error}")]
    Unavailable {
        /// The shard that could not make progress.
        shard: Shard,
        /// How many nodes were tried.
        attempts: u32,
        /// The last failure seen, for the operator.
        last_error: String,
        /// True if some attempt reached a node that may have proposed the
        /// command; then it may yet be applied.
        maybe_applied: bool,
    },
    /// A node refused the request itself (malformed, out of bounds, or an
    /// answer too large): nothing was proposed, and asking again, here or
    /// elsewhere, would get the same answer, so it is never retried.
    #[error("node {node} refused the request: {message}")]
    Refused {
        /// The node that refused.
        node: NodeId,
        /// Its reason, a sentence.
        message: String,
    },
    /// A node answered something this client cannot decode: a bug or a
    /// version mismatch, never retried.
    #[error("unreadable answer from node {node}: {detail}")]
    Protocol {
        /// The node that answered.
        node: NodeId,
        /// What could not be decoded.
        detail: String,
    },
}

impl ClientError {
    /// True if the call may have taken effect although no answer came.
    pub fn maybe_applied(&self) -> bool {
        match self {
            ClientError::Unavailable { maybe_applied, .. } => *maybe_applied,
            ClientError::Refused { .. } => false,
            ClientError::Protocol { .. } => true,
        }
    }
}

/// A client of one shard's `Store` service.
#[derive(Debug)]
pub struct ShardClient {
    /// The shard this client talks to.
    shard: Shard,
    /// One channel per member, connected on first use and then reused.
    members: BTreeMap<NodeId, Channel>,
    /// Leaders met in redirects that the config does not list (members
    /// added since), by the address the redirect gave.
    learned: std::sync::RwLock<BTreeMap<NodeId, Channel>>,
    /// The member believed to lead, 0 when unknown.
    leader_hint: AtomicU64,
    /// This client's write session: every write is numbered in it, so the
    /// shard applies each at most once however often it is re-sent.
    session: WriteSession,
}

/// A client's write session ([`Command::Once`]): a random id, and the
/// numbers of the writes in flight.
#[derive(Debug)]
struct WriteSession {
    /// The session's id.
    writer: u64,
    /// The next number and the numbers not yet answered, under one lock:
    /// a number must be in flight before any later one is sent, or a later
    /// write's watermark could pass it.
    numbers: std::sync::Mutex<(u64, std::collections::BTreeSet<u64>)>,
    /// Woken when a write leaves the flight, for writes waiting for the
    /// window ([`WriteSession::begin`]).
    window: tokio::sync::Notify,
}

impl WriteSession {
    fn new() -> Self {
        WriteSession {
            writer: rand::random(),
            numbers: std::sync::Mutex::new((1, Default::default())),
            window: tokio::sync::Notify::new(),
        }
    }

    /// Numbers a new write. It stays in flight until the returned guard is
    /// dropped: when the call has its answer, or its caller gave up on it
    /// (a cancelled call too), since either way nobody sends it again.
    ///
    /// A shard keeps the result of every write of a session from the
    /// write's watermark on, answered or not, and refuses a write that would
    /// make that [`MAX_WRITES_IN_FLIGHT`]. So a write waits here until it is
    /// numbered fewer than that many after the oldest write in flight: one
    /// slow write (stuck on a leader that lost its quorum) holds the later
    /// ones back instead of having them refused.
    async fn begin(&self) -> InFlight<'_> {
        loop {
            let left_flight = self.window.notified();
            if let Some(write) = self.try_begin() {
                return write;
            }
            left_flight.await;
        }
    }

    /// [`Self::begin`] if the window lets the write go now.
    fn try_begin(&self) -> Option<InFlight<'_>> {
        let mut numbers = self.numbers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let (next, in_flight) = &mut *numbers;
        let seq = *next;
        let oldest = in_flight.first().copied().unwrap_or(seq);
        if seq - oldest >= MAX_WRITES_IN_FLIGHT as u64 {
            return None;
        }
        *next += 1;
        in_flight.insert(seq);
        Some(InFlight { session: self, seq, answered_below: oldest })
    }
}

/// A write of a [`WriteSession`] in flight.
struct InFlight<'a> {
    session: &'a WriteSession,
    /// The write's number.
    seq: u64,
    /// The session's watermark when it was numbered.
    answered_below: u64,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut numbers = self.session.numbers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        numbers.1.remove(&self.seq);
        drop(numbers);
        self.session.window.notify_waiters();
    }
}

impl ShardClient {
    /// A client for `shard` as described by `config`.
    pub fn new(config: &ClusterConfig, shard: Shard) -> Self {
        if let Err(e) = crate::tls::prepare_clients(config) {
            tracing::error!(error = %e, "cannot use the cluster's certificates; connections to nodes will fail");
        }
        let members = config.members(shard).map(|node| (node.id, lazy_channel(&node.reach()))).collect();
        ShardClient {
            shard,
            members,
            learned: Default::default(),
            leader_hint: AtomicU64::new(0),
            session: WriteSession::new(),
        }
    }

    /// The shard this client talks to.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The member this client currently believes leads, if any.
    pub fn leader_hint(&self) -> Option<NodeId> {
        match self.leader_hint.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }

    /// Proposes `command` and waits until it is committed and applied.
    ///
    /// An attempt that may have been applied (the node died or did not
    /// answer in time) is sent again to whoever leads; the command travels
    /// as a numbered write of this client's session ([`Command::Once`]), so
    /// the shard applies it once and a copy gets the first one's result.
    pub async fn write(&self, command: &Command, deadline: Duration) -> Result<CommandResult, ClientError> {
        let write = self.session.begin().await;
        let (seq, answered_below) = (write.seq, write.answered_below);
        let once = Command::Once {
            writer: self.session.writer,
            seq,
            answered_below,
            at_ms: 0,
            command: Box::new(command.clone()),
        };
        let request = WriteRequest { command: encode(&once) };
        self.call(deadline, true, |mut client| {
            let request = request.clone();
            async move { client.write(crate::request_id::outgoing(request)).await }
        })
        .await
    }

    /// Proposes `commands`, each one whose repeat changes nothing
    /// ([`Command::repeats_harmlessly`]: transaction resolves), in one call,
    /// and returns their results in order. Unlike [`Self::write`] they are
    /// not numbered in the session: an attempt that fails part way is sent
    /// again whole, which is why only such commands are taken.
    pub async fn write_each(
        &self,
        commands: &[Command],
        deadline: Duration,
    ) -> Result<Vec<CommandResult>, ClientError> {
        let request = WriteEachRequest { commands: commands.iter().map(encode).collect() };
        let results: Vec<CommandResult> = self
            .call(deadline, true, |mut client| {
                let request = request.clone();
                async move { client.write_each(crate::request_id::outgoing(request)).await }
            })
            .await?;
        match results.len() == commands.len() {
            true => Ok(results),
            false => Err(ClientError::Protocol {
                node: self.leader_hint().unwrap_or_default(),
                detail: format!("{} results for {} commands", results.len(), commands.len()),
            }),
        }
    }

    /// Answers `query` linearizably.
    pub async fn read(&self, query: &Query, deadline: Duration) -> Result<QueryResult, ClientError> {
        self.read_via(None, query, deadline).await
    }

    /// Answers `query`, asking member `first` first (then following
    /// redirects as usual). A correct node redirects to the leader; the
    /// chaos suite uses this to give a buggy node the chance to misbehave.
    pub async fn read_via(
        &self,
        first: Option<NodeId>,
        query: &Query,
        deadline: Duration,
    ) -> Result<QueryResult, ClientError> {
        let request = ReadRequest { query: encode(query) };
        let send = |mut client: StoreClient<Channel>| {
            let request = request.clone();
            async move { client.read(crate::request_id::outgoing(request)).await }
        };
        self.call_from(first, deadline, false, send, store_answer).await
    }

    /// Reads one row linearizably.
    pub async fn get(&self, key: &RowKey, deadline: Duration) -> Result<Option<Row>, ClientError> {
        match self.read(&Query::Get(key.clone()), deadline).await? {
            QueryResult::Row(row) => Ok(row),
            other => Err(ClientError::Protocol {
                node: self.leader_hint().unwrap_or_default(),
                detail: format!("expected a row, got {other:?}"),
            }),
        }
    }

    /// Topics under `prefix` with their row counts, from any member that
    /// answers (not linearizable: a view of that member's applied state).
    pub async fn list_topics(&self, prefix: &str, timeout: Duration) -> Result<Vec<(String, u64)>, ClientError> {
        let mut last_error = String::from("no member");
        for (id, channel) in &self.members {
            let request = raftshop_proto::store::ListTopicsRequest { prefix: prefix.to_owned() };
            match tokio::time::timeout(timeout, StoreClient::new(channel.clone()).list_topics(request)).await {
                Ok(Ok(reply)) => {
                    return Ok(reply.into_inner().topics.into_iter().map(|t| (t.topic, t.count)).collect())
                }
                Ok(Err(status)) => last_error = format!("node {id}: {}", status.message()),
                Err(_) => last_error = format!("node {id} did not answer within {timeout:?}"),
            }
        }
        Err(ClientError::Unavailable {
            shard: self.shard,
            attempts: self.members.len() as u32,
            last_error,
            maybe_applied: false,
        })
    }

    /// Asks one member (configured or learned) for its status, without
    /// retries.
    pub async fn status(&self, node: NodeId, timeout: Duration) -> Result<NodeStatus, tonic::Status> {
        let channel = self
            .channel_to(node)
            .ok_or_else(|| tonic::Status::not_found(format!("node {node} is not in shard {}", self.shard)))?;
        let mut client = StoreClient::new(channel);
        match tokio::time::timeout(timeout, client.status(StatusRequest {})).await {
            Ok(reply) => reply.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("node {node} did not answer within {timeout:?}"))),
        }
    }

    /// A `Store` client of member `node` (configured or learned), for the
    /// calls that need one node rather than the leader-following loop.
    pub fn store_client(&self, node: NodeId) -> Option<StoreClient<Channel>> {
        self.channel_to(node).map(StoreClient::new)
    }

    /// The channel to member `node`, if it is one.
    fn channel(&self, node: NodeId) -> Option<Channel> {
        self.members.get(&node).cloned()
    }

    /// Node ids of the members, in order.
    pub fn member_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.keys().copied()
    }

    /// Runs one call against the leader, following redirects and skipping
    /// unreachable members until `deadline` has passed.
    async fn call<T, F, Fut>(&self, deadline: Duration, is_write: bool, send: F) -> Result<T, ClientError>
    where
        T: serde::de::DeserializeOwned,
        F: Fn(StoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<StoreReply>, tonic::Status>>,
    {
        self.call_from(None, deadline, is_write, send, store_answer).await
    }

    /// [`Self::call`] for any reply type, starting at member `first` if
    /// given; `read` tells a reply's result from a redirect.
    async fn call_from<R, T, F, Fut>(
        &self,
        first: Option<NodeId>,
        deadline: Duration,
        is_write: bool,
        send: F,
        read: impl Fn(NodeId, R) -> Answer<T>,
    ) -> Result<T, ClientError>
    where
        F: Fn(StoreClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let give_up = Instant::now() + deadline;
        let mut attempts = 0u32;
        let mut maybe_applied = false;
        let mut last_error = String::from("no attempt made");
        let mut target = first.filter(|id| self.members.contains_key(id)).unwrap_or_else(|| self.first_target());
        loop {
            let now = Instant::now();
            if now >= give_up {
                return Err(ClientError::Unavailable {
                    shard: self.shard,
                    attempts,
                    last_error,
                    maybe_applied: is_write && maybe_applied,
                });
            }
            attempts += 1;
            let budget = ATTEMPT_TIMEOUT.min(give_up - now);
            let client = StoreClient::new(self.channel_to(target).expect("targets are members or learned leaders"))
                .max_decoding_message_size(crate::limits::MAX_REPLY_BYTES + 1024 * 1024);
            let outcome = tokio::time::timeout(budget, send(client)).await;
            match outcome {
                Ok(Ok(reply)) => match read(target, reply.into_inner()) {
                    Answer::Done(result) => {
                        if result.is_ok() {
                            self.leader_hint.store(target, Ordering::Relaxed);
                        }
                        return result;
                    }
                    Answer::Redirect(redirect) => {
                        last_error = format!("node {target} is not the leader");
                        let known = |id: &NodeId| self.knows(*id, &redirect.leader_addr);
                        match redirect.leader_id.filter(|id| *id != target && known(id)) {
                            Some(leader) => target = leader,
                            None => {
                                target = self.next_member(target);
                                tokio::time::sleep(NO_LEADER_BACKOFF.min(give_up - Instant::now().min(give_up))).await;
                            }
                        }
                        self.leader_hint.store(target, Ordering::Relaxed);
                    }
                },
                Ok(Err(status)) if refused_outright(&status) => {
                    return Err(ClientError::Refused { node: target, message: status.message().to_owned() });
                }
                Ok(Err(status)) => {
                    maybe_applied |= status_maybe_applied(&status);
                    last_error = format!("node {target}: {}", status.message());
                    target = self.next_member(target);
                    tokio::time::sleep(NO_LEADER_BACKOFF.min(give_up.saturating_duration_since(Instant::now()))).await;
                }
                Err(_elapsed) => {
                    maybe_applied = true;
                    last_error = format!("node {target} did not answer within {budget:?}");
                    target = self.next_member(target);
                }
            }
        }
    }

    /// The channel to member `node`, configured or learned from a redirect.
    fn channel_to(&self, node: NodeId) -> Option<Channel> {
        self.members.get(&node).cloned().or_else(|| self.learned_channels().get(&node).cloned())
    }

    /// True if this client can reach `node`: a configured member, one
    /// learned before, or one learned now from `addr` (a redirect's leader
    /// address; ignored when empty or unusable).
    fn knows(&self, node: NodeId, addr: &str) -> bool {
        if self.channel_to(node).is_some() {
            return true;
        }
        if addr.is_empty() || crate::config::check_advertised(addr).is_err() {
            return false;
        }
        tracing::info!(shard = %self.shard, node, addr, "learned of a leader the config does not list");
        let mut learned = self.learned.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        learned.insert(node, lazy_channel(addr));
        true
    }

    fn learned_channels(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<NodeId, Channel>> {
        self.learned.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The leader hint, or the first member when none is known.
    fn first_target(&self) -> NodeId {
        self.leader_hint()
            .filter(|id| self.channel_to(*id).is_some())
            .unwrap_or_else(|| *self.members.keys().next().expect("a shard has members"))
    }

    /// The member after `node`, wrapping around.
    fn next_member(&self, node: NodeId) -> NodeId {
        self.members
            .range(node + 1..)
            .next()
            .or_else(|| self.members.iter().next())
            .map(|(id, _)| *id)
            .expect("a shard has members")
    }
}

/// Clients for both shards, routing each row to the shard that owns it.
#[derive(Debug)]
pub struct ClusterClient {
    even: ShardClient,
    odd: ShardClient,
}

impl ClusterClient {
    /// Clients for both shards of `config`.
    pub fn new(config: &ClusterConfig) -> Self {
        ClusterClient { even: ShardClient::new(config, Shard::Even), odd: ShardClient::new(config, Shard::Odd) }
    }

    /// The client of `shard`.
    pub fn shard(&self, shard: Shard) -> &ShardClient {
        match shard {
            Shard::Even => &self.even,
            Shard::Odd => &self.odd,
        }
    }

    /// Reads one row from the shard that owns it.
    pub async fn get(&self, key: &RowKey, deadline: Duration) -> Result<Option<Row>, ClientError> {
        self.shard(key.shard()).get(key, deadline).await
    }
}

/// A channel to `addr` (`host:port`, as validated by the config) that
/// connects on first use and reconnects on failure.
fn lazy_channel(addr: &str) -> Channel {
    crate::endpoint::connect_node_lazy(&crate::endpoint::endpoint(addr).expect("a validated host:port is a valid URI"))
}

/// What a node's reply tells the call loop.
enum Answer<T> {
    /// The call's result: the answer, or why the reply is unusable.
    Done(Result<T, ClientError>),
    /// The node does not lead; the redirect names who does, if it knows.
    Redirect(raftshop_proto::store::NotLeader),
}

/// Reads a `Write` or `Read` reply of `node`: its decoded result, or a
/// redirect.
fn store_answer<T: serde::de::DeserializeOwned>(node: NodeId, reply: StoreReply) -> Answer<T> {
    match reply.outcome {
        Some(store_reply::Outcome::Result(bytes)) => {
            Answer::Done(crate::codec::decode_reply(&bytes).map_err(|detail| ClientError::Protocol { node, detail }))
        }
        Some(store_reply::Outcome::NotLeader(redirect)) => Answer::Redirect(redirect),
        None => Answer::Done(Err(ClientError::Protocol { node, detail: "empty reply".into() })),
    }
}

/// True for the refusals a node makes of the request itself, before any
/// proposal: the same request would be refused again anywhere (a failed
/// precondition: a membership change the shard cannot make).
fn refused_outright(status: &tonic::Status) -> bool {
    // A connection closed by HTTP/2 (tonic says "h2 protocol error") is a
    // transport failure, whatever code it maps to, not the node's answer.
    let transport = status.message().starts_with("h2 protocol error");
    !transport
        && matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::OutOfRange
                | tonic::Code::ResourceExhausted
                | tonic::Code::FailedPrecondition
        )
}

/// True unless the status proves the request never reached the node.
fn status_maybe_applied(status: &tonic::Status) -> bool {
    let refused = status.code() == tonic::Code::Unavailable
        && (status.message().contains("tcp connect error") || status.message().contains("Connection refused"));
    !refused
}

#[cfg(test)]
mod tests {
    use super::{WriteSession, MAX_WRITES_IN_FLIGHT};

    #[tokio::test]
    async fn the_watermark_is_the_oldest_write_in_flight() {
        let session = WriteSession::new();
        let first = session.begin().await;
        let second = session.begin().await;
        assert_eq!((first.seq, first.answered_below), (1, 1));
        assert_eq!((second.seq, second.answered_below), (2, 1), "write 1 is not answered yet");
        drop(second);
        assert_eq!(session.begin().await.answered_below, 1, "write 1 still holds the watermark back");
        drop(first);
        let next = session.begin().await;
        assert_eq!((next.seq, next.answered_below), (4, 4), "writes 1 to 3 ended, answered or given up");
    }

    #[tokio::test]
    async fn a_cancelled_write_leaves_the_flight_too() {
        let session = WriteSession::new();
        let stuck = async {
            let _write = session.begin().await;
            std::future::pending::<()>().await;
        };
        let cancelled = tokio::time::timeout(std::time::Duration::from_millis(10), stuck).await;
        assert!(cancelled.is_err());
        assert_eq!(session.begin().await.answered_below, 2, "the cancelled write 1 no longer holds the watermark");
    }

    #[tokio::test]
    async fn a_slow_write_holds_back_the_writes_a_shard_would_refuse() {
        let session = WriteSession::new();
        let slow = session.begin().await;
        // Every later write of the window is answered; the shard still
        // keeps their results, from the slow write's number on.
        for _ in 1..MAX_WRITES_IN_FLIGHT {
            drop(session.begin().await);
        }
        let waiting = session.begin();
        tokio::pin!(waiting);
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), &mut waiting).await;
        assert!(early.is_err(), "the write numbered {MAX_WRITES_IN_FLIGHT} after the slow one waits");
        drop(slow);
        let next = tokio::time::timeout(std::time::Duration::from_secs(5), waiting).await.expect("goes once it ends");
        let window = MAX_WRITES_IN_FLIGHT as u64;
        assert_eq!((next.seq, next.answered_below), (window + 1, window + 1));
    }
}
