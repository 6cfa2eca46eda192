//! Raft traffic between the members of a shard, over tonic.
//!
//! openraft asks the [`PeerNetwork`] factory for a client per peer whenever
//! it (re)starts replicating to it, and for a separate heartbeat client. The
//! factory keeps one lazily connected HTTP/2 channel per peer and hands out
//! clones, so every replication stream, vote and snapshot to a peer shares
//! one connection.
//!
//! Log replication travels as one pipelined `StreamAppend` call per session
//! ([`crate::raft::stream_append`]); heartbeats, votes and pre-votes are unary
//! calls; a snapshot is one client-streamed `InstallFullSnapshot` call.
//! Requests and replies are bincode-encoded openraft messages inside a
//! `RaftPayload`. A higher vote or a conflict is part of openraft's reply, not
//! an error; a peer whose core stopped answers `UNAVAILABLE`, which becomes
//! `Unreachable` and makes openraft back off, while any other failure (a slow
//! call included) is a network error that openraft retries at once.
//!
//! AppendEntries stay small because the log reader caps a batch at
//! [`crate::limits::MAX_APPEND_BYTES`] (`LogStore::limited_get_log_entries`).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use raftshop_proto::store::raft_client::RaftClient;
use raftshop_proto::store::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;

use crate::codec::{decode, encode};
use crate::state::machine::Snapshot;
use crate::state::snapshot::SnapshotFile;
use crate::types::{NodeId, TypeConfig, Vote};

/// Time allowed to open a connection to a peer; short, since peers share
/// the machine or a LAN, and a dead peer should be noticed fast.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Metadata key naming the node a Raft message is meant for. A node refuses
/// a message addressed to another: a peer's address that leads to the wrong
/// node (a stale `cluster.toml`, a reused port, a proxy gone astray) must
/// fail loudly, not let a node count its own vote twice.
pub const ADDRESSEE_HEADER: &str = "raftshop-to-node";

/// Metadata naming the sender's cluster in every Raft RPC: a node refuses
/// a message of another cluster.
pub const CLUSTER_HEADER: &str = "raftshop-cluster";

/// `message` as a request of cluster `cluster` addressed to node `target`.
pub(crate) fn addressed<T>(message: T, target: NodeId, cluster: &AsciiMetadataValue) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(ADDRESSEE_HEADER, target.into());
    request.metadata_mut().insert(CLUSTER_HEADER, cluster.clone());
    request
}

/// Hands openraft a client per peer, sharing one channel per peer.
#[derive(Clone)]
pub struct PeerNetwork {
    /// Where to reach each peer, from this node's `cluster.toml`. It wins
    /// over the address recorded in the membership, so a node's own config
    /// can route a link differently (through a proxy, a NAT, a new host).
    addresses: BTreeMap<NodeId, String>,
    /// Channels by peer id, created on first use.
    channels: Arc<Mutex<HashMap<NodeId, Channel>>>,
    /// This node's cluster id, sent with every message.
    cluster: AsciiMetadataValue,
}

impl PeerNetwork {
    /// A network of cluster `cluster_id` (validated by the config) reaching
    /// peers at `addresses` (others as the membership says).
    pub fn new(addresses: BTreeMap<NodeId, String>, cluster_id: &str) -> Self {
        let cluster = cluster_id.parse().expect("a validated cluster id is valid metadata");
        PeerNetwork { addresses, channels: Arc::default(), cluster }
    }

    /// The cached channel to `target` at `addr`, created if needed.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
        if let Some(channel) = channels.get(&target) {
            return Ok(channel.clone());
        }
        let endpoint = crate::endpoint::endpoint(addr)
            .map_err(|e| format!("bad address for node {target}: {e}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            // Pipelined multi-entry requests on one stream stall on HTTP/2's
            // default 64 KiB windows; let them grow with the bandwidth.
            .http2_adaptive_window(true);
        let channel = crate::endpoint::connect_node_lazy(&endpoint);
        channels.insert(target, channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = self.addresses.get(&target).cloned().unwrap_or_else(|| node.addr.clone());
        let client = self.channel(target, &addr).map(RaftClient::new);
        PeerClient { target, client, kind: ClientKind::Replication, cluster: self.cluster.clone() }
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        PeerClient { kind: ClientKind::Heartbeat, ..self.new_client(target, node).await }
    }
}

/// What openraft uses a client for; it decides how AppendEntries travel.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    /// Log replication: one pipelined stream per session.
    Replication,
    /// Heartbeats: one unary call each, never a stream of their own.
    Heartbeat,
}

/// openraft's connection to one peer.
pub struct PeerClient {
    /// The peer's node id, for error reports.
    target: NodeId,
    /// The gRPC client, or why none could be made (a bad address).
    client: Result<RaftClient<Channel>, String>,
    /// Replication or heartbeats.
    kind: ClientKind,
    /// This node's cluster id, sent with every message.
    cluster: AsciiMetadataValue,
}

impl PeerClient {
    /// The gRPC client, or `Unreachable` if the peer's address is unusable.
    fn grpc(&mut self) -> Result<&mut RaftClient<Channel>, RPCError<TypeConfig>> {
        self.client.as_mut().map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone()))))
    }

    /// Sends one encoded request and decodes the reply.
    async fn call<Req, Resp>(
        &mut self,
        method: RaftMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<TypeConfig>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let (target, cluster) = (self.target, self.cluster.clone());
        let client = self.grpc()?;
        let mut grpc_request = addressed(RaftPayload { data: encode(request) }, target, &cluster);
        grpc_request.set_timeout(option.hard_ttl());
        let reply = match method {
            RaftMethod::AppendEntries => client.append_entries(grpc_request).await,
            RaftMethod::Vote => client.vote(grpc_request).await,
            RaftMethod::PreVote => client.pre_vote(grpc_request).await,
            RaftMethod::TransferLeader => client.transfer_leader(grpc_request).await,
        };
        let reply = reply.map_err(|status| transport_error(&status))?.into_inner();
        decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))
    }

    /// Streams `snapshot` to the peer in chunks and waits for its answer.
    async fn send_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        option: &RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk_bytes = option.snapshot_chunk_size().unwrap_or(SNAPSHOT_CHUNK_BYTES).max(1);
        let header = RaftPayload { data: encode(&(vote, &snapshot.meta)) };
        let messages =
            futures::stream::once(std::future::ready(header)).chain(file_chunks(snapshot.snapshot.file, chunk_bytes));
        let (target, cluster) = (self.target, self.cluster.clone());
        let client = self.grpc().map_err(rpc_to_streaming)?;
        let reply = client
            .install_full_snapshot(addressed(messages, target, &cluster))
            .await
            .map_err(|s| rpc_to_streaming(transport_error(&s)))?;
        decode(&reply.into_inner().data)
            .map_err(|e| StreamingError::Network(NetworkError::new(&std::io::Error::other(e))))
    }
}

/// One answer of a replication stream.
type Answer = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// The file's bytes in messages of `chunk_bytes`. A read error ends the
/// stream early; the follower then refuses the cut-off file (no end mark).
fn file_chunks(file: std::fs::File, chunk_bytes: usize) -> impl Stream<Item = RaftPayload> + Send + 'static {
    let file = tokio::fs::File::from_std(file);
    futures::stream::unfold(Some(file), move |state| async move {
        let mut file = state?;
        let mut data = Vec::with_capacity(chunk_bytes);
        match (&mut file).take(chunk_bytes as u64).read_to_end(&mut data).await {
            Ok(0) => None,
            Ok(_) => Some((RaftPayload { data }, Some(file))),
            Err(error) => {
                tracing::warn!(%error, "reading a snapshot to send failed");
                None
            }
        }
    })
}

/// The unary Raft RPCs.
#[derive(Clone, Copy)]
enum RaftMethod {
    AppendEntries,
    Vote,
    PreVote,
    TransferLeader,
}

/// Snapshot chunk size when openraft's option names none.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A peer that cannot be reached is `Unreachable` (openraft backs off);
/// anything else, a call that ran out of time included, is a network error
/// worth retrying at once: a slow call under load is no reason to stop
/// replicating to a live follower.
pub(crate) fn transport_error(status: &tonic::Status) -> RPCError<TypeConfig> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

/// The snapshot transfer's view of a failed call.
fn rpc_to_streaming(error: RPCError<TypeConfig>) -> StreamingError<TypeConfig> {
    match error {
        RPCError::Unreachable(e) => StreamingError::Unreachable(e),
        RPCError::Timeout(e) => StreamingError::Timeout(e),
        RPCError::Network(e) => StreamingError::Network(e),
        RPCError::RemoteError(e) => StreamingError::Network(NetworkError::new(&e)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerClient {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftMethod::AppendEntries, &rpc, &option).await
    }

    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Answer>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + openraft::OptionalSend + Unpin + 'static,
    {
        if self.kind == ClientKind::Heartbeat {
            return stream_append_sequential(self, input, option);
        }
        Box::pin(async move {
            let client = self.grpc()?.clone();
            crate::raft::stream_append::open(client, self.target, self.cluster.clone(), input).await
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftMethod::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftMethod::PreVote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(RaftMethod::TransferLeader, &rpc, &option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + openraft::OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            result = self.send_snapshot(vote, snapshot, &option) => result,
        }
    }
}
