//! Starting, running and stopping one storage node.
//!
//! Start-up checks everything an operator can get wrong before touching any
//! data: the config, the node id, the data directory's owner, the listen
//! address. Only then does it claim the directory, open the log and state,
//! and start Raft and the gRPC server. A node whose storage is pristine offers
//! to initialize its shard with the configured members; openraft accepts that
//! only on a node without any log or vote, so a restart never re-initializes
//! and any number of fresh members may offer at once.
//!
//! Shutdown (SIGTERM or Ctrl-C) runs in order: stop accepting calls and let
//! in-flight ones finish (bounded), stop Raft, flush the state machine.
//!
//! The node's `grpc.health.v1` answers are honest: `SERVING` while its Raft
//! core runs, `NOT_SERVING` from the moment the core stops or shutdown
//! begins, so a load balancer or `raftshop status` stops counting on it
//! before it is gone.

pub mod housekeeping;
pub mod identity;
pub mod last_run;
pub mod memory;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{InitializeError, RaftError};
use openraft::{BasicNode, SnapshotPolicy};
use raftshop_proto::store::{raft_server::RaftServer, store_server::StoreServer};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::client::ClusterClient;
use crate::config::{ClusterConfig, NodeConfig, ReadPolicy};
use crate::error::NodeError;
use crate::limits::MAX_OPEN_WATCHES;
use crate::node::housekeeping::Housekeeping;
use crate::node::last_run::LastRun;
use crate::raft::log_store::LogStore;
use crate::raft::network::PeerNetwork;
use crate::service::batch::{ReadBarrier, WriteBatcher};
use crate::service::watch::WatchSlots;
use crate::service::{RaftService, StoreService};
use crate::state::machine::Unrebuildable;
use crate::state::{Check, StartupCheck, StateMachine};
use crate::types::{NodeId, Raft};
use identity::NodeIdentity;

/// Streams a client may reset before the server takes them up, per
/// connection, before the server closes it (see `serve`).
const MAX_PENDING_RESET_STREAMS: usize = 1024;
/// How long shutdown waits for in-flight calls before stopping Raft anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest gRPC message a node accepts (snapshot chunks, big batches).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The node to run.
    pub id: NodeId,
    /// The cluster config, already loaded.
    pub config: ClusterConfig,
    /// Where the config came from, for messages.
    pub origin: String,
    /// Make this node the only member of its shard before Raft starts
    /// (recovery from a lost majority; see [`crate::raft::force`]).
    pub force_new_cluster: bool,
    /// The newest layout the node says it knows
    /// (`crate::state::layout::NEWEST` but when rehearsing an upgrade).
    pub newest_layout: u32,
    /// How long the leader keeps finished transactions' records
    /// ([`housekeeping::TXN_RETENTION`] but in tests).
    pub txn_retention: Duration,
}

/// Runs the node until `shutdown` resolves, then stops it cleanly.
pub async fn run(options: NodeOptions, shutdown: impl std::future::Future<Output = ()>) -> Result<(), NodeError> {
    let me = options.config.node(options.id).cloned().ok_or_else(|| NodeError::UnknownNode {
        id: options.id,
        origin: options.origin.clone(),
        known: options.config.nodes.iter().map(|n| n.id).collect(),
    })?;
    let server_tls = match &options.config.tls {
        Some(tls) => {
            let failed = |e: crate::tls::TlsError| NodeError::Tls(e.to_string());
            crate::tls::use_for_clients(&tls.dir, crate::tls::Role::Node).map_err(failed)?;
            Some(crate::tls::ServerSide::load(&tls.dir, crate::tls::Server::Node).map_err(failed)?)
        }
        None => None,
    };
    crate::tls::reload_on_hangup(server_tls.clone());
    let identity = NodeIdentity { node_id: me.id, shard: me.shard };
    let cluster_id = &options.config.cluster_id;
    let unclaimed = identity::check(&me.data_dir, identity, cluster_id)?;
    let listener = bind(me.addr, me.id).await?;
    let metrics_listener = match me.metrics {
        Some(addr) => Some(bind(addr, me.id).await?),
        None => None,
    };
    if unclaimed {
        identity::claim(&me.data_dir, identity, cluster_id)?;
    }
    let (raft, machine_state, pristine) = open_raft(&options.config, &me, options.force_new_cluster).await?;
    let votes_from = hold_votes(&raft, pristine, options.config.raft.election_timeout_max());
    let metrics_server = metrics_listener.map(|listener| {
        tokio::spawn(crate::metrics::serve(listener, std::sync::Arc::new(|| crate::metrics::node().render())))
    });
    let peers: BTreeMap<NodeId, String> = options.config.members(me.shard).map(|n| (n.id, n.reach())).collect();
    tracing::info!(node = me.id, shard = %me.shard, addr = %me.addr, data_dir = %me.data_dir.display(), "serving");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (mut health, health_service) = tonic_health::server::health_reporter();
    report_health(&mut health, ServingStatus::Serving).await;
    let services = Services { raft: raft.clone(), state: machine_state.clone(), health: health_service };
    let settings = ServeSettings {
        read_policy: options.config.raft.read_policy,
        votes_from,
        cluster_id: options.config.cluster_id.clone(),
        tls: server_tls,
        newest_layout: options.newest_layout,
    };
    let server = tokio::spawn(serve(listener, services, me.clone(), peers.clone(), settings, stop_rx));
    let recovery = Housekeeping {
        raft: raft.clone(),
        state: machine_state.clone(),
        shard: me.shard,
        cluster: ClusterClient::new(&options.config),
        newest_layout: options.newest_layout,
        txn_retention: options.txn_retention,
    };
    let recovery = tokio::spawn(recovery.run());
    let applied = machine_state.clone();
    let trimming = tokio::spawn(memory::run(move || applied.progress().applied.map(|id| id.index).unwrap_or_default()));
    if pristine && !me.join {
        let first: BTreeMap<NodeId, String> =
            options.config.first_members(me.shard).map(|n| (n.id, n.reach())).collect();
        let rank = first.keys().position(|id| *id == me.id).unwrap_or_default() as u32;
        let delay = rank * 2 * options.config.raft.election_timeout_max();
        tokio::spawn(initialize(raft.clone(), first, delay));
    } else if pristine {
        tracing::info!(node = me.id, "waiting to be added to shard {} (join = true)", me.shard);
    }

    tokio::select! {
        _ = shutdown => {}
        reason = core_stopped(&raft) => {
            // A node whose Raft core is gone would answer every call with an
            // error forever; exiting lets a supervisor restart it from disk.
            tracing::error!(node = me.id, %reason, "the Raft core stopped; exiting");
            report_health(&mut health, ServingStatus::NotServing).await;
            recovery.abort();
            trimming.abort();
            let _ = stop_tx.send(());
            if let Some(layout) = machine_state.met_unknown_layout() {
                return Err(layout_unknown(&me, layout));
            }
            return Err(NodeError::Raft(format!("the Raft core stopped: {reason}")));
        }
    }
    hand_over_leadership(&raft, me.id, 2 * options.config.raft.election_timeout_max()).await;
    tracing::info!(node = me.id, "shutting down: draining in-flight calls");
    report_health(&mut health, ServingStatus::NotServing).await;
    recovery.abort();
    trimming.abort();
    let _ = stop_tx.send(());
    if tokio::time::timeout(DRAIN_TIMEOUT, server).await.is_err() {
        tracing::warn!(node = me.id, "in-flight calls did not finish in {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    raft.shutdown().await.map_err(|e| NodeError::Raft(e.to_string()))?;
    if let Some(server) = metrics_server {
        server.abort();
    }
    machine_state.flush().map_err(|source| NodeError::Storage { path: me.data_dir.clone(), source })?;
    // A state found damaged keeps its `damaged` record, for the next start.
    if !machine_state.found_damaged() {
        LastRun::Stopped(last_run::current_boot_id())
            .write(&me.data_dir)
            .map_err(|source| NodeError::Storage { path: me.data_dir.clone(), source })?;
    }
    tracing::info!(node = me.id, "stopped cleanly");
    Ok(())
}

/// If this node leads, names the follower furthest along as its successor
/// and waits until another node leads (at most `timeout`). The successor
/// stands at once and this node votes for it, so a planned stop costs the
/// shard one election round instead of an election timeout. openraft stops
/// this node's lease reads as the transfer starts.
async fn hand_over_leadership(raft: &Raft, me: NodeId, timeout: Duration) {
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(me) {
        return;
    }
    // Voters only: a learner cannot lead.
    let voters: BTreeSet<NodeId> = metrics.membership_config.voter_ids().collect();
    let successor = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != me && voters.contains(id))
        .max_by(|(_, a), (_, b)| a.cmp(b))
        .map(|(id, _)| *id);
    let Some(successor) = successor else { return };
    tracing::info!(node = me, successor, "stopping as leader: handing leadership over");
    if let Err(error) = raft.trigger().transfer_leader(successor).await {
        tracing::warn!(%error, "cannot hand leadership over");
        return;
    }
    match crate::service::membership::another_leader(raft, me, timeout).await {
        Some(leader) => tracing::info!(node = me, leader, "handed leadership over"),
        None => tracing::warn!(node = me, "no other node took over within {timeout:?}; stopping anyway"),
    }
}

/// After a restart, holds this node's votes and elections for one leader
/// lease (`lease`, openraft's `election_timeout_max`) and returns when the
/// hold ends.
///
/// Before it stopped, this node may have acknowledged a heartbeat that
/// gave the leader its lease: the leader then answers reads without asking
/// anyone, trusting that no quorum elects another leader until the lease
/// ends. openraft forgets that promise across a restart (a restarted node
/// votes at once), so a follower killed and restarted within the lease,
/// with one more such vote, could elect a second leader while the first
/// still serves reads from its lease. A node with no data has promised
/// nothing and is not held.
fn hold_votes(raft: &Raft, pristine: bool, lease: Duration) -> std::time::Instant {
    let now = std::time::Instant::now();
    if pristine {
        return now;
    }
    tracing::info!(?lease, "holding this node's votes and elections for a leader lease after the restart");
    raft.runtime_config().elect(false);
    let raft = raft.clone();
    tokio::spawn(async move {
        tokio::time::sleep(lease).await;
        raft.runtime_config().elect(true);
    });
    now + lease
}

/// Sets the node's health, as a whole (service `""`) and per service.
async fn report_health(health: &mut HealthReporter, status: ServingStatus) {
    let services = ["", StoreServer::<StoreService>::NAME, RaftServer::<RaftService>::NAME];
    for service in services {
        health.set_service_status(service, status).await;
    }
}

/// Resolves, with the reason, when `raft`'s core task stops on its own (a
/// storage error, a panic in it); never during normal operation.
async fn core_stopped(raft: &Raft) -> String {
    let mut metrics = raft.metrics();
    loop {
        if let Err(error) = &metrics.borrow_watched().running_state {
            return error.to_string();
        }
        if metrics.changed().await.is_err() {
            return "its metrics channel closed".into();
        }
    }
}

/// Binds the node's address, telling a busy port from other failures.
async fn bind(addr: SocketAddr, id: NodeId) -> Result<TcpListener, NodeError> {
    TcpListener::bind(addr).await.map_err(|source| match source.kind() {
        std::io::ErrorKind::AddrInUse => NodeError::PortInUse { addr, id },
        _ => NodeError::Listen { addr, source },
    })
}

/// Opens the log and state machine and starts Raft. Returns the Raft handle,
/// the readable state, and whether the storage was pristine.
async fn open_raft(
    config: &ClusterConfig,
    me: &NodeConfig,
    force_new_cluster: bool,
) -> Result<(Raft, Arc<crate::state::AppliedState>, bool), NodeError> {
    let storage = |path: &Path| {
        let path = path.to_owned();
        move |source| NodeError::Storage { path, source }
    };
    let log_dir = me.data_dir.join("raft-log");
    let state_dir = me.data_dir.join("state");
    let snapshot_dir = snapshot_dir(me);
    let mut log = LogStore::open(&log_dir).map_err(storage(&log_dir))?;
    if let Some(delay) = std::env::var(crate::raft::log_store::LEADER_FLUSH_DELAY_ENV).ok().and_then(|v| v.parse().ok())
    {
        log.delay_leader_flushes(me.id, Duration::from_millis(delay));
    }
    let last = LastRun::read(&me.data_dir).map_err(storage(&me.data_dir))?;
    let why = last_run::reason_to_check(last.as_ref(), last_run::current_boot_id().as_deref());
    let check = match why {
        Some(_) => Check::Yes { purged: log.last_purged().map(|id| id.index) },
        None => Check::No,
    };
    let opening = std::time::Instant::now();
    let (machine, found) = StateMachine::open_checked(&state_dir, &snapshot_dir, check).map_err(|source| {
        match source.downcast::<Unrebuildable>() {
            Ok(damage) => NodeError::DamagedState { id: me.id, dir: state_dir.clone(), source: damage },
            Err(source) if crate::state::unwritten::is_refusal(&source) => {
                NodeError::StateRefused { id: me.id, dir: state_dir.clone(), source }
            }
            Err(source) => NodeError::Storage { path: state_dir.clone(), source },
        }
    })?;
    match found {
        StartupCheck::NotRun | StartupCheck::InstallCutShort => {}
        StartupCheck::Whole { rows } => {
            tracing::info!(
                node = me.id,
                rows,
                why = why.unwrap_or_default(),
                elapsed_ms = opening.elapsed().as_millis() as u64,
                "checked the state at start-up: whole"
            )
        }
        StartupCheck::Rebuilt { reason, kept } => tracing::error!(
            node = me.id,
            why = why.unwrap_or_default(),
            %reason,
            kept = %kept.display(),
            "the state is damaged, as a power cut can leave it: moved it aside; rebuilding it from the current \
             snapshot and the log"
        ),
    }
    let state = machine.state();
    // Before anything is applied: entries applied in an older layout than
    // the other replicas' would diverge from theirs.
    crate::state::layout::check_known(&*state).map_err(|source| {
        match crate::state::layout::unknown_layout(&source) {
            Some(layout) => layout_unknown(me, layout),
            None => NodeError::Storage { path: state_dir.clone(), source },
        }
    })?;
    LastRun::running_now().write(&me.data_dir).map_err(storage(&me.data_dir))?;
    let pristine = log.is_pristine() && state.progress().applied.is_none();
    if force_new_cluster {
        if pristine {
            return Err(NodeError::NothingToForce { id: me.id, dir: me.data_dir.clone() });
        }
        let (term, index) = crate::raft::force::make_sole_member(&mut log, me).await.map_err(storage(&log_dir))?;
        tracing::warn!(
            node = me.id,
            term,
            index,
            "FORCED A NEW CLUSTER: this node is now shard {}'s only member, with its whole log; add members \
             with `raftshop member add` and `promote`, and start it without --force-new-cluster from now on",
            me.shard
        );
    }
    let raft_config = raft_config(config, me)?;
    let addresses = config.members(me.shard).map(|n| (n.id, n.reach())).collect();
    let network = PeerNetwork::new(addresses, &config.cluster_id);
    // Replaying the log (or installing the current snapshot) may meet the
    // layout switch this build does not know.
    let raft =
        Raft::new(me.id, raft_config, network, log, machine).await.map_err(|e| match state.met_unknown_layout() {
            Some(layout) => layout_unknown(me, layout),
            None => NodeError::Raft(e.to_string()),
        })?;
    Ok((raft, state, pristine))
}

/// The refusal of a node whose shard switched to `layout`, newer than this
/// build knows (in its state, an installed snapshot or its log).
fn layout_unknown(me: &NodeConfig, layout: u32) -> NodeError {
    NodeError::LayoutUnknown {
        id: me.id,
        dir: me.data_dir.join("state"),
        source: crate::state::layout::unknown(layout),
    }
}

/// openraft's settings, from `cluster.toml`'s `[raft]` table.
fn raft_config(config: &ClusterConfig, me: &NodeConfig) -> Result<Arc<openraft::Config>, NodeError> {
    let timings = &config.raft;
    let raft_config = openraft::Config {
        cluster_name: format!("raftshop-{}", me.shard),
        heartbeat_interval: timings.heartbeat_interval_ms,
        election_timeout_min: timings.election_timeout_min_ms,
        election_timeout_max: timings.election_timeout_max_ms,
        install_snapshot_timeout: 2000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(timings.snapshot_after_entries),
        max_in_snapshot_log_to_keep: timings.keep_entries_after_snapshot,
        snapshot_max_chunk_size: 1024 * 1024,
        // A leader that restarts must win an election again. openraft's
        // default lets it resume leading at its old term, but its log may
        // have lost entries that a quorum of followers acknowledged (the
        // leader replicates before its own flush), and it would then write
        // different entries under the same log ids.
        // tests/cluster_recovery.rs kills a leader in that state.
        enable_leader_restore: Some(false),
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    raft_config.validate().map(Arc::new).map_err(|e| NodeError::Raft(format!("invalid raft timings: {e}")))
}

/// Offers to initialize the shard with its configured members after
/// `delay`. The lowest id goes first (delay 0); the others wait a couple of
/// election timeouts, by when a leader has usually reached them, which makes
/// openraft refuse (harmlessly). They offer only so that a shard still forms
/// when its lowest member never starts.
async fn initialize(raft: Raft, peers: BTreeMap<NodeId, String>, delay: Duration) {
    tokio::time::sleep(delay).await;
    if raft.metrics().borrow_watched().last_log_index.is_some() {
        return; // a leader reached this node first
    }
    let members: BTreeMap<NodeId, BasicNode> =
        peers.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect();
    match raft.initialize(members).await {
        Ok(()) => tracing::info!(members = ?peers.keys().collect::<BTreeSet<_>>(), "initialized the shard"),
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {
            tracing::debug!("the shard was already initialized")
        }
        Err(e) => tracing::error!(error = %e, "cannot initialize the shard"),
    }
}

/// What [`serve`] serves, besides reflection.
struct Services<H: Health> {
    /// This node's Raft, for the `Raft` and `Store` services.
    raft: Raft,
    /// The applied rows, for `Store`.
    state: Arc<crate::state::AppliedState>,
    /// The `grpc.health.v1` service, whose answers [`run`] sets.
    health: HealthServer<H>,
}

/// Where a node keeps its snapshot files.
fn snapshot_dir(me: &NodeConfig) -> std::path::PathBuf {
    me.data_dir.join("snapshots")
}

/// How the services answer, beyond what they serve.
struct ServeSettings {
    /// How reads confirm leadership.
    read_policy: ReadPolicy,
    /// Vote requests before this instant are refused ([`hold_votes`]).
    votes_from: std::time::Instant,
    /// Raft messages of another cluster are refused.
    cluster_id: String,
    /// Mutual TLS, if the cluster has `[tls]`.
    tls: Option<Arc<crate::tls::ServerSide>>,
    /// The newest layout the node says it knows.
    newest_layout: u32,
}

/// Serves the Raft, Store, health and reflection services until `stop`.
async fn serve<H: Health>(
    listener: TcpListener,
    services: Services<H>,
    me: NodeConfig,
    peers: BTreeMap<NodeId, String>,
    settings: ServeSettings,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    let ServeSettings { read_policy, votes_from, cluster_id, tls, newest_layout } = settings;
    let Services { raft, state, health } = services;
    let snapshot_dir = snapshot_dir(&me);
    let unsafe_local_reads = std::env::var_os(crate::service::UNSAFE_LOCAL_READS_ENV).is_some_and(|v| v == "1");
    if unsafe_local_reads {
        tracing::error!(
            "PLANTED BUG: reads are served from local state without a read index; for testing the chaos checker only"
        );
    }
    let store = StoreService {
        raft: raft.clone(),
        state,
        node_id: me.id,
        shard: me.shard,
        peers,
        writes: WriteBatcher::start(raft.clone()),
        reads: ReadBarrier::start(raft.clone(), read_policy),
        watches: WatchSlots::new(MAX_OPEN_WATCHES),
        unsafe_local_reads,
        snapshot_dir: snapshot_dir.clone(),
        newest_layout,
    };
    crate::metrics::node().attach(raft.clone(), store.watches.clone(), store.state.clone());
    let router = tonic::transport::Server::builder()
        // Pipelined AppendEntries streams need more than HTTP/2's default
        // 64 KiB window to keep several requests in flight.
        .http2_adaptive_window(Some(true))
        // h2 closes a connection (GOAWAY, ENHANCE_YOUR_CALM) once more than
        // 20 streams were reset by the client before the server took them
        // up: its guard against "rapid reset" floods. Under overload a
        // portal's timed-out attempts do exactly that, and the close failed
        // every call on the connection (seen at 256 clients ordering across
        // shards). A higher bound still bounds the work a client can waste.
        .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_RESET_STREAMS))
        .add_service(health)
        .add_service(reflection_v1())
        .add_service(reflection_v1alpha())
        .add_service(
            RaftServer::new(RaftService { raft, node_id: me.id, cluster_id, snapshot_dir, votes_from })
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(StoreServer::new(store).max_decoding_message_size(crate::limits::MAX_STORE_MESSAGE_BYTES));
    let stop = async {
        let _ = stop.await;
    };
    let result = match tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), stop).await,
        None => {
            // Our own listener (bound early to report a busy port), so the
            // builder's nodelay setting would not reach it: set it here, or
            // every small reply waits out Nagle's algorithm against delayed
            // ACKs (~40 ms).
            let incoming = TcpIncoming::from_listener(listener, true, None).expect("a bound listener is valid");
            router.serve_with_incoming_shutdown(incoming, stop).await
        }
    };
    if let Err(e) = result {
        tracing::error!(error = %e, "gRPC server failed");
    }
}

/// gRPC reflection (v1), so `grpcurl list` works against a node.
pub fn reflection_v1(
) -> tonic_reflection::server::v1::ServerReflectionServer<impl tonic_reflection::server::v1::ServerReflection> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(raftshop_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("the embedded descriptors are valid")
}

/// gRPC reflection (v1alpha), for older clients.
pub fn reflection_v1alpha(
) -> tonic_reflection::server::v1alpha::ServerReflectionServer<impl tonic_reflection::server::v1alpha::ServerReflection>
{
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(raftshop_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("the embedded descriptors are valid")
}

#[cfg(test)]
mod tests {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    use super::*;

    #[tokio::test]
    async fn health_answers_what_the_node_reports() {
        let (mut health, service) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
        let addr = listener.local_addr().expect("address");
        let incoming = TcpIncoming::from_listener(listener, true, None).expect("incoming");
        tokio::spawn(tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("uri");
        let mut client = HealthClient::new(channel.connect().await.expect("connects"));
        for status in [ServingStatus::Serving, ServingStatus::NotServing, ServingStatus::Serving] {
            report_health(&mut health, status).await;
            for service in ["", StoreServer::<StoreService>::NAME, RaftServer::<RaftService>::NAME] {
                let request = HealthCheckRequest { service: service.into() };
                let answer = client.check(request).await.expect("answers").into_inner();
                assert_eq!(answer.status, status as i32, "service {service:?}");
            }
        }
    }
}
