//! Raft traffic between the members of a shard, over tonic.
//!
//! openraft asks the [`PeerNetwork`] factory for a client per peer whenever
//! it (re)starts replicating to it. The factory keeps one lazily connected
//! HTTP/2 channel per peer and hands out clones, so every replication stream,
//! vote and snapshot chunk to a peer shares one connection.
//!
//! Requests and replies are bincode-encoded openraft messages inside a
//! `RaftPayload`; the reply carries the remote `Result`, so a remote Raft
//! error (e.g. a higher vote) reaches openraft as a `RemoteError`, while a
//! dead peer shows up as `Unreachable`, which makes openraft back off.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::BasicNode;
use raftshop_proto::store::raft_client::RaftClient;
use raftshop_proto::store::RaftPayload;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use crate::client::{decode, encode};
use crate::limits::MAX_APPEND_BYTES;
use crate::types::{NodeId, TypeConfig};

/// Time allowed to open a connection to a peer; short, since peers share
/// the machine or a LAN, and a dead peer should be noticed fast.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(300);

/// Hands openraft a client per peer, sharing one channel per peer.
#[derive(Clone, Default)]
pub struct PeerNetwork {
    /// Where to reach each peer, from this node's `cluster.toml`. It wins
    /// over the address recorded in the membership, so a node's own config
    /// can route a link differently (through a proxy, a NAT, a new host).
    addresses: BTreeMap<NodeId, SocketAddr>,
    /// Channels by peer id, created on first use.
    channels: Arc<Mutex<HashMap<NodeId, Channel>>>,
}

impl PeerNetwork {
    /// A network reaching peers at `addresses` (others as the membership says).
    pub fn new(addresses: BTreeMap<NodeId, SocketAddr>) -> Self {
        PeerNetwork { addresses, channels: Arc::default() }
    }

    /// The cached channel to `target` at `addr`, created if needed.
    fn channel(&self, target: NodeId, addr: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().expect("channel map lock is never poisoned");
        if let Some(channel) = channels.get(&target) {
            return Ok(channel.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("bad address {addr:?} for node {target}: {e}"))?
            .connect_timeout(PEER_CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .connect_lazy();
        channels.insert(target, channel.clone());
        Ok(channel)
    }
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let addr = self.addresses.get(&target).map_or_else(|| node.addr.clone(), ToString::to_string);
        let client = self.channel(target, &addr).map(RaftClient::new);
        PeerClient { target, client }
    }
}

/// openraft's connection to one peer.
pub struct PeerClient {
    /// The peer's node id, for error reports.
    target: NodeId,
    /// The gRPC client, or why none could be made (a bad address).
    client: Result<RaftClient<Channel>, String>,
}

impl PeerClient {
    /// Sends one encoded request and decodes the remote result.
    async fn call<Req, Resp, E>(
        &mut self,
        method: RaftMethod,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = self
            .client
            .as_mut()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&std::io::Error::other(e.clone()))))?;
        let mut grpc_request = tonic::Request::new(RaftPayload { data: encode(request) });
        grpc_request.set_timeout(option.hard_ttl());
        let reply = match method {
            RaftMethod::AppendEntries => client.append_entries(grpc_request).await,
            RaftMethod::Vote => client.vote(grpc_request).await,
            RaftMethod::InstallSnapshot => client.install_snapshot(grpc_request).await,
        };
        let reply = reply.map_err(|status| transport_error(&status))?.into_inner();
        let result: Result<Resp, E> =
            decode(&reply.data).map_err(|e| RPCError::Network(NetworkError::new(&std::io::Error::other(e))))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

/// `Some(n)` if `rpc` carries more than [`MAX_APPEND_BYTES`] of entries:
/// the first `n` entries (at least one) fit, the rest wait for the next
/// call. openraft 0.9 gives a call one heartbeat interval, so a call that
/// carries too much would miss it again at every retry.
fn entries_that_fit(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    if rpc.entries.len() < 2 {
        return None;
    }
    let mut total: u64 = 0;
    for (n, entry) in rpc.entries.iter().enumerate() {
        total = total.saturating_add(bincode::serialized_size(entry).unwrap_or(u64::MAX));
        if total > MAX_APPEND_BYTES as u64 {
            return Some(n.max(1) as u64);
        }
    }
    None
}

/// The three Raft RPCs.
#[derive(Clone, Copy)]
enum RaftMethod {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

/// A peer that cannot be reached is `Unreachable` (openraft backs off for
/// 500 ms); anything else, a call that ran out of time included, is a
/// network error worth retrying at once: a slow call under load is no
/// reason to stop replicating to a live follower for half a second.
fn transport_error<E: std::error::Error>(status: &tonic::Status) -> RPCError<NodeId, BasicNode, E> {
    match status.code() {
        tonic::Code::Unavailable => RPCError::Unreachable(Unreachable::new(status)),
        _ => RPCError::Network(NetworkError::new(status)),
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        if let Some(fit) = entries_that_fit(&rpc) {
            return Err(RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint(fit)));
        }
        self.call(RaftMethod::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.call(RaftMethod::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call(RaftMethod::Vote, &rpc, &option).await
    }
}
