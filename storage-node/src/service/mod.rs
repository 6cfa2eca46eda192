//! The gRPC services a storage node serves on its one address.
//!
//! - `Raft`: peers' AppendEntries (unary and as a pipelined stream), Vote,
//!   PreVote, leadership transfers and whole snapshots, handed to openraft
//!   as they come.
//! - `Store`: the portals' and the CLI's door. Writes go through Raft on the
//!   leader; reads pass a barrier (`ensure_linearizable`: the leader makes
//!   sure it still leads, by its lease or by asking a quorum as
//!   `read_policy` says, then waits until its state machine has applied up
//!   to the commit index it saw) before reading the local state. Concurrent
//!   writes share log entries and concurrent reads share rounds
//!   ([`crate::service::batch`]). A follower answers `NotLeader` naming the leader,
//!   so callers redirect instead of being proxied.
//!
//! Handlers are thin: decode, call openraft or the state, encode. Every
//! byte from the network is decoded by [`crate::codec`] (bounded in size
//! and nesting), and a `Store` write must pass [`admission::validate`]
//! first: a request that is undecodable, oversized, or writes an internal
//! table is answered `INVALID_ARGUMENT` with a sentence, and the node serves
//! on.

pub mod admission;
pub mod backup;
pub mod batch;
pub mod membership;
pub mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raftshop_proto::store::{
    self as pb, raft_server, store_reply, store_server, MembershipChange, MembershipReply, MembershipRequest,
    NodeStatus, RaftPayload, ReadRequest, StatusRequest, StoreReply, WriteEachRequest, WriteRequest,
};
use tonic::{Request, Response, Status};

use crate::codec::{decode, decode_peer_message, encode};
use crate::command::{Command, Query, QueryResult};
use crate::limits::{MAX_COMMAND_BYTES, MAX_REPLY_BYTES, MAX_WRITE_EACH};
use crate::raft::network::{ADDRESSEE_HEADER, CLUSTER_HEADER};
use crate::raft::stream_append::StreamAppendReplies;
use crate::service::batch::{BatchError, ReadBarrier, WriteBatcher};
use crate::state::machine::Snapshot;
use crate::state::snapshot::{SnapshotFile, INCOMING_PREFIX};
use crate::state::AppliedState;
use crate::tls::Role;
use crate::types::{NodeId, Raft, Shard, SnapshotMeta, Vote};
use tokio::io::AsyncWriteExt;
use tracing::Instrument;

/// Serves peers' Raft RPCs.
pub struct RaftService {
    /// This node's Raft.
    pub raft: Raft,
    /// This node's id: a message addressed to another node is refused.
    pub node_id: NodeId,
    /// This node's cluster: a message of another cluster is refused.
    pub cluster_id: String,
    /// Vote and pre-vote requests before this instant are refused: a
    /// restarted node waits out any lease it may have granted before.
    pub votes_from: std::time::Instant,
    /// Where a snapshot received from the leader is written.
    pub snapshot_dir: std::path::PathBuf,
}

/// Refuses a Raft message of another cluster (or of none): its sender is a
/// node of another cluster whose addresses got crossed with this one's.
fn check_cluster<T>(request: &Request<T>, me: NodeId, cluster: &str) -> Result<(), Status> {
    crate::tls::check_role(request, &[Role::Node], "a node's Raft service")?;
    match request.metadata().get(CLUSTER_HEADER).map(|value| value.to_str()) {
        Some(Ok(theirs)) if theirs == cluster => Ok(()),
        Some(Ok(theirs)) => Err(Status::permission_denied(format!(
            "node {me} of cluster {cluster:?} refuses a Raft message from cluster {theirs:?}: two clusters' \
             addresses are crossed; check the sender's cluster.toml"
        ))),
        _ => Err(Status::permission_denied(format!(
            "node {me} of cluster {cluster:?} refuses a Raft message that names no cluster (metadata \
             {CLUSTER_HEADER}); is the sender an older raftshop?"
        ))),
    }
}

/// Refuses a Raft message that names another node as its addressee (or
/// none): the sender's address for that node leads here by mistake. Checks
/// the sender's cluster first.
fn check_addressee<T>(request: &Request<T>, me: NodeId, cluster: &str) -> Result<(), Status> {
    check_cluster(request, me, cluster)?;
    let addressee: Option<NodeId> =
        request.metadata().get(ADDRESSEE_HEADER).and_then(|value| value.to_str().ok()?.parse().ok());
    match addressee {
        Some(to) if to == me => Ok(()),
        Some(to) => Err(Status::failed_precondition(format!(
            "this is node {me}, not node {to}: the sender's address for node {to} leads to node {me}; \
             check the addresses in the sender's cluster.toml"
        ))),
        None => Err(Status::failed_precondition(format!(
            "node {me} refuses a Raft message that does not name its addressee \
             (metadata {ADDRESSEE_HEADER}); is the sender an older raftshop?"
        ))),
    }
}

impl RaftService {
    /// Refuses a vote while the node holds its votes after a restart.
    fn check_vote_hold(&self) -> Result<(), Status> {
        let left = self.votes_from.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        Err(Status::unavailable(format!(
            "node {} restarted moments ago and grants no vote for another {left:?}: a leader may still hold a \
             lease this node granted before it stopped",
            self.node_id
        )))
    }
}

fn bad_payload(error: String) -> Status {
    Status::invalid_argument(format!("undecodable Raft payload: {error}"))
}

/// A stopped Raft core answers `UNAVAILABLE`, which the peer reads as
/// unreachable and backs off from.
fn core_stopped<E: std::fmt::Display>(error: E) -> Status {
    Status::unavailable(format!("raft core stopped: {error}"))
}

/// Receives a whole snapshot into a temp file in `dir`: the leader's vote
/// and the metadata first, then the bytes, written as they come.
async fn receive_snapshot(
    dir: &std::path::Path,
    mut stream: tonic::Streaming<RaftPayload>,
) -> Result<(Vote, Snapshot), Status> {
    let first = stream.message().await?.ok_or_else(|| bad_payload("empty snapshot stream".into()))?;
    let (vote, meta): (Vote, SnapshotMeta) = decode_peer_message(&first.data).map_err(bad_payload)?;
    let path = dir.join(format!("{INCOMING_PREFIX}{:016x}.tmp", rand::random::<u64>()));
    let received = write_incoming(&path, &mut stream).await;
    if received.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    received?;
    let snapshot = SnapshotFile::open(&path).map_err(incoming_write_failed)?;
    Ok((vote, Snapshot { meta, snapshot }))
}

/// Writes the rest of `stream` to `path` and syncs it.
async fn write_incoming(path: &std::path::Path, stream: &mut tonic::Streaming<RaftPayload>) -> Result<(), Status> {
    let mut file = tokio::fs::File::create(path).await.map_err(incoming_write_failed)?;
    while let Some(chunk) = stream.message().await? {
        file.write_all(&chunk.data).await.map_err(incoming_write_failed)?;
    }
    file.sync_data().await.map_err(incoming_write_failed)
}

fn incoming_write_failed(error: std::io::Error) -> Status {
    Status::internal(format!("writing a received snapshot failed: {error}"))
}

#[tonic::async_trait]
impl raft_server::Raft for RaftService {
    async fn append_entries(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        let rpc = decode_peer_message(&request.into_inner().data).map_err(bad_payload)?;
        let response = self.raft.append_entries(rpc).await.map_err(core_stopped)?;
        Ok(Response::new(RaftPayload { data: encode(&response) }))
    }

    async fn vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        self.check_vote_hold()?;
        let rpc = decode_peer_message(&request.into_inner().data).map_err(bad_payload)?;
        let response = self.raft.vote(rpc).await.map_err(core_stopped)?;
        Ok(Response::new(RaftPayload { data: encode(&response) }))
    }

    async fn pre_vote(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        self.check_vote_hold()?;
        let rpc = decode_peer_message(&request.into_inner().data).map_err(bad_payload)?;
        let response = self.raft.pre_vote(rpc).await.map_err(core_stopped)?;
        Ok(Response::new(RaftPayload { data: encode(&response) }))
    }

    async fn transfer_leader(&self, request: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        let rpc = decode_peer_message(&request.into_inner().data).map_err(bad_payload)?;
        let response = self.raft.handle_transfer_leader(rpc).await.map_err(core_stopped)?;
        Ok(Response::new(RaftPayload { data: encode(&response) }))
    }

    type StreamAppendStream = StreamAppendReplies;

    async fn stream_append(
        &self,
        request: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<Self::StreamAppendStream>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        Ok(Response::new(crate::raft::stream_append::serve(&self.raft, request.into_inner())))
    }

    async fn install_full_snapshot(
        &self,
        request: Request<tonic::Streaming<RaftPayload>>,
    ) -> Result<Response<RaftPayload>, Status> {
        check_addressee(&request, self.node_id, &self.cluster_id)?;
        let (vote, snapshot) = receive_snapshot(&self.snapshot_dir, request.into_inner()).await?;
        let path = snapshot.snapshot.path.clone();
        let response = self.raft.install_full_snapshot(vote, snapshot).await.map_err(core_stopped)?;
        // openraft answers once the install is done. An installed file was
        // renamed to the current snapshot; one it refused (a stale leader, an
        // older snapshot) is still here. (If the core stopped instead, the
        // file is left to the start-up clean-up.)
        let _ = std::fs::remove_file(&path);
        Ok(Response::new(RaftPayload { data: encode(&response) }))
    }
}

/// Serves the replicated store to portals and the CLI.
pub struct StoreService {
    /// This node's Raft.
    pub raft: Raft,
    /// The applied rows.
    pub state: Arc<AppliedState>,
    /// This node's id.
    pub node_id: NodeId,
    /// This node's shard.
    pub shard: Shard,
    /// Addresses of the shard's members, to name the leader in redirects.
    pub peers: BTreeMap<NodeId, String>,
    /// Folds concurrent writes into shared log entries.
    pub writes: WriteBatcher,
    /// Shares read-index rounds among concurrent reads.
    pub reads: ReadBarrier,
    /// The open change-feed watches, at most [`crate::limits::MAX_OPEN_WATCHES`].
    pub watches: crate::service::watch::WatchSlots,
    /// A planted bug for the chaos suite's own test: answer reads from the
    /// local state with no read index, even on a follower. Never set in
    /// production; see [`UNSAFE_LOCAL_READS_ENV`].
    pub unsafe_local_reads: bool,
    /// Where this node's snapshot files are, for backups.
    pub snapshot_dir: std::path::PathBuf,
    /// The newest layout this node says it knows.
    pub newest_layout: u32,
}

/// Environment variable that plants the stale-read bug in a node, to prove
/// the chaos suite's checker catches it.
pub const UNSAFE_LOCAL_READS_ENV: &str = "RAFTSHOP_UNSAFE_LOCAL_READS";

impl StoreService {
    /// A reply telling the caller to ask `redirect`'s leader instead.
    /// The answer to `query` from the applied state, refused with
    /// `RESOURCE_EXHAUSTED` if it would pass [`MAX_REPLY_BYTES`].
    fn answer(&self, query: &Query) -> Result<Response<StoreReply>, Status> {
        let answer = self.state.answer(query).map_err(|e| {
            match e.get_ref().and_then(|inner| inner.downcast_ref::<crate::state::machine::ReplyTooLarge>()) {
                Some(too_large) => Status::resource_exhausted(too_large.to_string()),
                None => Status::internal(format!("reading failed: {e}")),
            }
        })?;
        if let QueryResult::Locked { .. } = answer {
            // A resolve waiting in the batcher for company may release it.
            self.writes.nudge();
        }
        let bytes = encode(&answer);
        if bytes.len() > MAX_REPLY_BYTES {
            return Err(Status::resource_exhausted(format!(
                "the answer would be {} bytes, over the limit of {MAX_REPLY_BYTES}; ask for fewer rows",
                bytes.len()
            )));
        }
        Ok(result_reply(bytes))
    }

    fn not_leader(&self, leader: Option<NodeId>) -> Response<StoreReply> {
        Response::new(StoreReply { outcome: Some(store_reply::Outcome::NotLeader(self.redirect(leader))) })
    }

    /// A redirect to `leader`, with its address when known (from the config,
    /// else from the membership, where members added later are).
    fn redirect(&self, leader: Option<NodeId>) -> pb::NotLeader {
        let from_membership = |id: NodeId| {
            let metrics = self.raft.metrics().borrow_watched().clone();
            metrics.membership_config.membership().get_node(&id).map(|node| node.addr.clone())
        };
        let leader_addr =
            leader.and_then(|id| self.peers.get(&id).cloned().or_else(|| from_membership(id))).unwrap_or_default();
        pb::NotLeader { leader_id: leader, leader_addr }
    }
}

/// The wall clock in ms since the epoch: how time enters the log.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or_default()
}

/// Decodes a caller's command or query (`what`), refusing oversized or
/// undecodable bytes with a sentence.
fn decode_request<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    if bytes.len() > MAX_COMMAND_BYTES {
        let len = bytes.len();
        return Err(Status::invalid_argument(format!("the {what} is {len} bytes; the limit is {MAX_COMMAND_BYTES}")));
    }
    decode(bytes).map_err(|e| Status::invalid_argument(format!("undecodable {what}: {e}")))
}

/// Decodes a caller's command and checks that callers may send it.
fn admit(bytes: &[u8]) -> Result<Command, Status> {
    let command: Command = decode_request(bytes, "command")?;
    admission::validate(&command).map_err(|reason| Status::invalid_argument(format!("refused command: {reason}")))?;
    Ok(command)
}

fn result_reply(bytes: Vec<u8>) -> Response<StoreReply> {
    Response::new(StoreReply { outcome: Some(store_reply::Outcome::Result(bytes)) })
}

/// A stream of watch events to one subscriber.
pub type WatchStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl store_server::Store for StoreService {
    type WatchStream = WatchStream;
    type BackupStream = crate::service::backup::BackupStream;

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Response<Self::BackupStream>, Status> {
        let started = Instant::now();
        crate::tls::check_role(&request, &[Role::Operator], "Store.Backup")?;
        let source = crate::service::backup::Source {
            raft: &self.raft,
            state: &self.state,
            reads: &self.reads,
            snapshot_dir: &self.snapshot_dir,
            node_id: self.node_id,
        };
        let stream = source.stream().await;
        observed("Backup", started, stream.map(Response::new))
    }

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Response<WatchStream>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let stream = crate::service::watch::open(self.state.clone(), &self.watches, request.prefix, request.from_index);
        observed("Watch", started, stream.map(Response::new))
    }

    async fn list_topics(&self, request: Request<pb::ListTopicsRequest>) -> Result<Response<pb::TopicList>, Status> {
        let started = Instant::now();
        let prefix = request.into_inner().prefix;
        let listed = crate::state::feed::topics(&self.state, &prefix)
            .map_err(|e| Status::internal(format!("reading failed: {e}")))
            .map(|(topics, index)| {
                let topics = topics.into_iter().map(|(topic, count)| pb::TopicCount { topic, count }).collect();
                Response::new(pb::TopicList { topics, index })
            });
        observed("ListTopics", started, listed)
    }

    async fn write(&self, request: Request<WriteRequest>) -> Result<Response<StoreReply>, Status> {
        let started = Instant::now();
        let span = call_span(&request);
        let result = self.write_command(request).instrument(span.clone()).await;
        span.in_scope(|| observed("Write", started, result))
    }

    async fn write_each(&self, request: Request<WriteEachRequest>) -> Result<Response<StoreReply>, Status> {
        let started = Instant::now();
        let span = call_span(&request);
        let result = self.write_commands(request).instrument(span.clone()).await;
        span.in_scope(|| observed("WriteEach", started, result))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<StoreReply>, Status> {
        let started = Instant::now();
        let span = call_span(&request);
        let result = self.read_query(request).instrument(span.clone()).await;
        span.in_scope(|| observed("Read", started, result))
    }

    async fn status(&self, _request: Request<StatusRequest>) -> Result<Response<NodeStatus>, Status> {
        let started = Instant::now();
        observed("Status", started, Ok(Response::new(self.node_status())))
    }

    async fn membership(&self, _request: Request<MembershipRequest>) -> Result<Response<MembershipReply>, Status> {
        let started = Instant::now();
        let reply = crate::service::membership::view(&self.raft, |leader| self.redirect(leader));
        observed("Membership", started, Ok(Response::new(reply)))
    }

    async fn change_membership(&self, request: Request<MembershipChange>) -> Result<Response<MembershipReply>, Status> {
        let started = Instant::now();
        crate::tls::check_role(&request, &[Role::Operator], "Store.ChangeMembership")?;
        let change = request.into_inner();
        tracing::info!(?change, "membership change asked");
        let reply = crate::service::membership::change(&self.raft, change, |leader| self.redirect(leader)).await;
        if let Ok(reply) = &reply {
            tracing::info!(?reply, "membership change answered");
        }
        observed("ChangeMembership", started, reply.map(Response::new))
    }
}

/// The name of a Raft role, as `Status` and the metrics give it.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

/// Counts a `Store` call in the node's metrics, logs it at debug level,
/// and passes its result on.
fn observed<T>(method: &'static str, started: Instant, result: Result<T, Status>) -> Result<T, Status> {
    let code = result.as_ref().map_or_else(Status::code, |_| tonic::Code::Ok);
    let took = started.elapsed();
    crate::metrics::node().record_call(method, code, took);
    tracing::debug!(method, code = crate::metrics::code_name(code), took_us = took.as_micros() as u64, "answered");
    result
}

/// The span a `Store` call runs in: named after the portal call's request
/// id when the request carries one ([`crate::request_id`]), so every line
/// the call logs here names it.
fn call_span<T>(request: &Request<T>) -> tracing::Span {
    match crate::request_id::incoming(request) {
        Some(id) => tracing::info_span!("store", request_id = %id),
        None => tracing::Span::none(),
    }
}

impl StoreService {
    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node_id))]
    async fn write_command(&self, request: Request<WriteRequest>) -> Result<Response<StoreReply>, Status> {
        let bytes = request.into_inner().command;
        let mut command = admit(&bytes)?;
        command.stamp(now_ms());
        match self.writes.write(command, bytes.len()).await {
            Ok(result) => Ok(result_reply(encode(&result))),
            Err(error) => self.write_failed(error),
        }
    }

    /// The answer to a write the batcher could not commit here: where the
    /// leader is, or `UNAVAILABLE`.
    fn write_failed(&self, error: BatchError) -> Result<Response<StoreReply>, Status> {
        match error {
            BatchError::NotLeader(leader) => Ok(self.not_leader(leader)),
            BatchError::Unavailable(error) => {
                Err(Status::unavailable(format!("node {} cannot commit: {error}", self.node_id)))
            }
        }
    }

    /// `Store.WriteEach`: each command through the write batcher, side by
    /// side; the results in order once all are applied. Only commands whose
    /// repeat changes nothing are taken, since a call that fails part way
    /// is sent again whole.
    async fn write_commands(&self, request: Request<WriteEachRequest>) -> Result<Response<StoreReply>, Status> {
        let encoded = request.into_inner().commands;
        if encoded.is_empty() || encoded.len() > MAX_WRITE_EACH {
            let count = encoded.len();
            return Err(Status::invalid_argument(format!(
                "WriteEach takes 1 to {MAX_WRITE_EACH} commands, got {count}"
            )));
        }
        let now = now_ms();
        let mut commands = Vec::with_capacity(encoded.len());
        for bytes in &encoded {
            let mut command = admit(bytes)?;
            if !command.repeats_harmlessly() {
                return Err(Status::invalid_argument(format!(
                    "refused command: WriteEach takes Resolve, CommitPriced and Prevent only, not \"{command}\""
                )));
            }
            command.stamp(now);
            commands.push((command, bytes.len()));
        }
        let writes = commands.into_iter().map(|(command, len)| self.writes.write(command, len));
        let mut results = Vec::with_capacity(encoded.len());
        for written in futures::future::join_all(writes).await {
            match written {
                Ok(result) => results.push(result),
                Err(error) => return self.write_failed(error),
            }
        }
        Ok(result_reply(encode(&results)))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(node = self.node_id))]
    async fn read_query(&self, request: Request<ReadRequest>) -> Result<Response<StoreReply>, Status> {
        let query: Query = decode_request(&request.into_inner().query, "query")?;
        if self.unsafe_local_reads {
            return self.answer(&query);
        }
        match self.reads.pass().await {
            Ok(()) => self.answer(&query),
            Err(BatchError::NotLeader(leader)) => Ok(self.not_leader(leader)),
            Err(BatchError::Unavailable(error)) => {
                Err(Status::unavailable(format!("node {} cannot confirm leadership: {error}", self.node_id)))
            }
        }
    }

    fn node_status(&self) -> NodeStatus {
        let metrics = self.raft.metrics().borrow_watched().clone();
        let progress = self.state.progress();
        let role = role_name(metrics.state);
        NodeStatus {
            node_id: self.node_id,
            shard: self.shard.to_string(),
            role: role.into(),
            term: metrics.current_term,
            leader_id: metrics.current_leader,
            last_log_index: metrics.last_log_index.unwrap_or_default(),
            applied_index: progress.applied.map(|id| id.index).unwrap_or_default(),
            committed_index: metrics.local_committed.map(|id| id.index).unwrap_or_default(),
            snapshot_index: metrics.snapshot.map(|id| id.index).unwrap_or_default(),
            purged_index: metrics.purged.map(|id| id.index).unwrap_or_default(),
            members: metrics.membership_config.membership().voter_ids().collect(),
            learners: metrics.membership_config.membership().learner_ids().collect(),
            state_digest: progress.digest,
            // 0 if the setting cannot be read; the node's log says why.
            layout: self.state.layout().unwrap_or_else(|e| {
                tracing::error!(error = %e, "cannot read the state's layout");
                0
            }),
            newest_layout: self.newest_layout,
        }
    }
}
