//! A whole raftshop cluster of real processes on this machine, for tests,
//! `raftshop chaos` and benchmarks.
//!
//! [`LocalCluster::start`] picks free loopback ports, writes one
//! `cluster.toml` per process into a working directory, and starts storage
//! nodes (and, on request, portals) as child processes whose output goes to
//! per-process log files. With link proxies enabled, node i reaches node j
//! through its own proxy (node i's config names the proxy as node j's
//! address), so any directed link can be cut or slowed ([`LinkProxy`]).
//! Clients and portals reach nodes directly.
//!
//! Faults are real: SIGKILL, SIGTERM, SIGSTOP/SIGCONT. Every child is killed
//! when the cluster is dropped, also when a test panics (on a panic the tail
//! of every log is printed so a CI failure can be read), and by the kernel
//! when the process that started it dies of a signal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use storage_node::client::{ClusterClient, ShardClient};
use storage_node::config::{ClusterConfig, NodeConfig, PortalsConfig, RaftTimings};
use storage_node::{NodeId, Shard};

pub use crate::ports::{free_port, free_ports};
pub use portals::server::PortalKind;

use crate::chaos::proxy::{LinkProxy, LinkState};
use crate::process::{self, Output, Signal};

/// How long a polling wait sleeps between looks.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a SIGTERM'd process may take to exit before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the cluster's executables are.
#[derive(Clone, Debug)]
pub struct Binaries {
    /// The `storage-node` executable.
    pub storage_node: PathBuf,
    /// The `admin-portal` executable, if portals are wanted.
    pub admin_portal: Option<PathBuf>,
    /// The `order-portal` executable, if portals are wanted.
    pub order_portal: Option<PathBuf>,
}

/// How to lay out a local cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The executables.
    pub binaries: Binaries,
    /// Raft timings and compaction for every node.
    pub raft: RaftTimings,
    /// Route node-to-node traffic through link proxies (for partitions).
    pub link_proxies: bool,
    /// `RUST_LOG` for the children ([`LOG_FILTER_ENV`] overrides the default).
    pub log_filter: String,
    /// Extra environment for storage nodes (e.g. a planted fault).
    pub node_env: Vec<(String, String)>,
    /// Spare nodes, one per entry, in that shard (ids 7 on): laid out with
    /// `join = true` but not started; see [`local_config_with_spares`].
    pub spares: Vec<Shard>,
    /// A backup (`raftshop backup`'s directory) to build the nodes' data
    /// directories from before they first start.
    pub restore_from: Option<PathBuf>,
    /// Mutual TLS between the processes, with certificates made for the
    /// cluster in `certs/` of its directory.
    pub tls: bool,
    /// Users and roles for the portals' API (`[auth]`), with the users
    /// file `users.toml` of its directory (made by `raftshop user add`).
    pub auth: bool,
}

impl ClusterOptions {
    /// Defaults: the Raft timings of the embedded `cluster.toml` (what
    /// `raftshop up` runs), no proxies, info logs.
    pub fn new(binaries: Binaries) -> Self {
        ClusterOptions {
            binaries,
            raft: ClusterConfig::embedded().raft,
            link_proxies: false,
            log_filter: std::env::var(LOG_FILTER_ENV).unwrap_or_else(|_| storage_node::cli::NODE_LOG_FILTER.into()),
            node_env: Vec::new(),
            spares: Vec::new(),
            restore_from: None,
            tls: false,
            auth: false,
        }
    }
}

/// Set to a `RUST_LOG` filter, the children of every local cluster log with
/// it (e.g. `info` to see openraft's elections after a failed test).
pub const LOG_FILTER_ENV: &str = "RAFTSHOP_CLUSTER_LOG";

/// A child process of the cluster.
struct Process {
    /// e.g. "node-3", "order-portal".
    name: String,
    /// The running child, if started.
    child: Option<Child>,
    /// Its log file.
    log: PathBuf,
}

/// Set this variable to keep a local cluster's temp dir (data, configs and
/// logs) after it stops, for a post-mortem.
pub const KEEP_DIR_ENV: &str = "RAFTSHOP_KEEP_CLUSTER_DIR";

/// Sends `signal` to `process`, if it runs.
fn signal_process(process: &Process, signal: Signal) {
    if let Some(child) = process.child.as_ref() {
        // The child is not reaped while `process` holds it; a failure means
        // it has just exited, which the caller learns otherwise.
        let _ = process::signal(child.id(), signal);
    }
}

/// A running local cluster. Dropping it kills every child (and removes its
/// temp dir, unless [`KEEP_DIR_ENV`] is set).
pub struct LocalCluster {
    /// Where configs, data and logs live.
    dir: PathBuf,
    /// Removed on drop, if the cluster made it.
    _temp: Option<tempfile::TempDir>,
    /// The layout clients and portals use (direct node addresses).
    config: ClusterConfig,
    /// Options it was started with.
    options: ClusterOptions,
    /// Storage nodes by id.
    nodes: BTreeMap<NodeId, Process>,
    /// Portal processes by name.
    portals: BTreeMap<String, Process>,
    /// Link proxies by (from, to), when enabled.
    links: BTreeMap<(NodeId, NodeId), LinkProxy>,
}

impl LocalCluster {
    /// Lays out a cluster in a fresh temp dir and starts every node.
    pub async fn start(options: ClusterOptions) -> std::io::Result<Self> {
        let temp = tempfile::Builder::new().prefix("raftshop-").tempdir()?;
        let dir = temp.path().to_owned();
        let restore_from = options.restore_from.clone();
        let mut cluster = Self::layout(dir, Some(temp), options).await?;
        if let Some(backup) = restore_from {
            crate::backup::restore(&backup, &cluster.config, &cluster.dir).await.map_err(std::io::Error::other)?;
        }
        let first: Vec<NodeId> = cluster.config.nodes.iter().filter(|n| !n.join).map(|n| n.id).collect();
        for id in first {
            cluster.start_node(id)?;
        }
        Ok(cluster)
    }

    /// Lays out (but does not start) a cluster in `dir`.
    async fn layout(dir: PathBuf, temp: Option<tempfile::TempDir>, options: ClusterOptions) -> std::io::Result<Self> {
        let mut config = local_config_with_spares(&dir, options.raft.clone(), &options.spares)?;
        if options.tls {
            let certs = dir.join("certs");
            storage_node::tls::init(&certs).map_err(std::io::Error::other)?;
            config.tls = Some(storage_node::config::TlsConfig { dir: certs });
        }
        if options.auth {
            // With [tls] too, the portals' API is TLS as well.
            config.auth = Some(storage_node::config::AuthConfig { users: dir.join("users.toml"), tls: options.tls });
        }
        let mut links = BTreeMap::new();
        if options.link_proxies {
            for from in &config.nodes {
                for to in config.members(from.shard).filter(|to| to.id != from.id) {
                    links.insert((from.id, to.id), LinkProxy::start(to.addr).await?);
                }
            }
        }
        let mut cluster =
            LocalCluster { dir, _temp: temp, config, options, nodes: BTreeMap::new(), portals: BTreeMap::new(), links };
        cluster.write_configs()?;
        Ok(cluster)
    }

    /// Writes the shared config and each node's own (with proxied peers).
    fn write_configs(&mut self) -> std::io::Result<()> {
        std::fs::write(self.dir.join("cluster.toml"), self.config.to_toml())?;
        for node in self.config.nodes.clone() {
            let mut own = self.config.clone();
            for peer in own.nodes.iter_mut() {
                if let Some(proxy) = self.links.get(&(node.id, peer.id)) {
                    peer.addr = proxy.addr();
                    peer.advertise = None;
                }
            }
            std::fs::write(self.node_config_path(node.id), own.to_toml())?;
            let log = self.dir.join(format!("node-{}.log", node.id));
            self.nodes.insert(node.id, Process { name: format!("node-{}", node.id), child: None, log });
        }
        Ok(())
    }

    /// The config node `id` starts with (its peers' addresses are those of
    /// their link proxies when proxies are on).
    pub fn node_config_path(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node-{id}.toml"))
    }

    /// The layout as clients see it.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// The shared config file (direct addresses), for portals and tools.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("cluster.toml")
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every node id.
    pub fn node_ids(&self) -> Vec<NodeId> {
        self.config.nodes.iter().map(|n| n.id).collect()
    }

    /// The members of `shard`.
    pub fn members(&self, shard: Shard) -> Vec<NodeId> {
        self.config.members(shard).map(|n| n.id).collect()
    }

    /// Clients of both shards.
    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(&self.config)
    }

    /// A client of one shard.
    pub fn shard_client(&self, shard: Shard) -> ShardClient {
        ShardClient::new(&self.config, shard)
    }

    /// Starts (or restarts) node `id`.
    pub fn start_node(&mut self, id: NodeId) -> std::io::Result<()> {
        self.start_node_with(id, &[])
    }

    /// Starts node `id` with extra command-line flags (e.g.
    /// `--force-new-cluster`).
    pub fn start_node_with(&mut self, id: NodeId, flags: &[&str]) -> std::io::Result<()> {
        let config = self.node_config_path(id);
        let options = &self.options;
        let process = self.nodes.get_mut(&id).ok_or_else(|| std::io::Error::other(format!("no node {id}")))?;
        spawn(process, &options.binaries.storage_node, &options.log_filter, |command| {
            command.arg("--id").arg(id.to_string()).arg("--config").arg(config).args(flags);
            command.envs(options.node_env.iter().map(|(k, v)| (k, v)));
        })
    }

    /// Starts a portal (`admin` or `order`) on its configured address.
    pub fn start_portal(&mut self, kind: PortalKind) -> std::io::Result<SocketAddr> {
        let (binary, addr) = match kind {
            PortalKind::Admin => (self.options.binaries.admin_portal.clone(), self.config.portals.admin),
            PortalKind::Order => (self.options.binaries.order_portal.clone(), self.config.portals.order),
        };
        let binary = binary.ok_or_else(|| std::io::Error::other(format!("no {} executable", kind.name())))?;
        let config = self.config_path();
        let log = self.dir.join(format!("{}.log", kind.name()));
        let process =
            self.portals.entry(kind.name().into()).or_insert(Process { name: kind.name().into(), child: None, log });
        spawn(process, &binary, &self.options.log_filter, |command| {
            command.arg("--listen").arg(addr.to_string()).arg("--config").arg(config);
        })?;
        Ok(addr)
    }

    /// SIGKILLs a portal.
    pub fn kill_portal(&mut self, kind: PortalKind) {
        if let Some(process) = self.portals.get_mut(kind.name()) {
            kill(process);
        }
    }

    /// The operating-system process id of node `id`, while it runs.
    pub fn node_pid(&self, id: NodeId) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(|child| child.id())
    }

    /// The process ids of every node and portal process started and not
    /// yet stopped or killed through this handle (one that exited on its
    /// own is among them until then).
    pub fn pids(&self) -> Vec<u32> {
        self.nodes.values().chain(self.portals.values()).filter_map(|p| p.child.as_ref().map(|c| c.id())).collect()
    }

    /// SIGKILLs node `id` (a crash).
    pub fn kill(&mut self, id: NodeId) {
        if let Some(process) = self.nodes.get_mut(&id) {
            kill(process);
        }
    }

    /// SIGTERMs node `id` and waits for it to exit (a clean stop).
    pub fn stop(&mut self, id: NodeId) -> std::io::Result<std::process::ExitStatus> {
        let process = self.nodes.get_mut(&id).ok_or_else(|| std::io::Error::other(format!("no node {id}")))?;
        stop(process)
    }

    /// SIGSTOPs node `id` (it freezes, sockets stay open).
    pub fn pause(&self, id: NodeId) {
        self.signal(id, Signal::Pause);
    }

    /// SIGCONTs node `id`.
    pub fn resume(&self, id: NodeId) {
        self.signal(id, Signal::Resume);
    }

    /// SIGHUPs every running node and portal: they read their TLS
    /// certificates again.
    pub fn hang_up_all(&self) {
        for process in self.nodes.values().chain(self.portals.values()) {
            signal_process(process, Signal::HangUp);
        }
    }

    fn signal(&self, id: NodeId, signal: Signal) {
        if let Some(process) = self.nodes.get(&id) {
            signal_process(process, signal);
        }
    }

    /// True if node `id` has a live process.
    pub fn is_running(&mut self, id: NodeId) -> bool {
        self.nodes.get_mut(&id).and_then(|p| p.child.as_mut()).is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Cuts every link between `node` and the rest of its shard.
    pub fn isolate(&self, node: NodeId) {
        for ((from, to), proxy) in &self.links {
            if *from == node || *to == node {
                proxy.set(LinkState::Cut);
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        for proxy in self.links.values() {
            proxy.set(LinkState::Up);
        }
    }

    /// Waits until `shard` has a leader that a majority agrees on.
    pub async fn wait_for_leader(&self, shard: Shard, timeout: Duration) -> Result<NodeId, String> {
        let client = self.shard_client(shard);
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let mut votes: BTreeMap<NodeId, usize> = BTreeMap::new();
            for id in self.members(shard) {
                if let Ok(status) = client.status(id, Duration::from_millis(300)).await {
                    if let (Some(leader), "leader" | "follower") = (status.leader_id, status.role.as_str()) {
                        *votes.entry(leader).or_default() += 1;
                    }
                }
            }
            if let Some((leader, _)) = votes.into_iter().find(|(_, n)| *n >= 2) {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!("shard {shard} has no leader after {timeout:?}\n{}", self.log_tails(20)));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until a portal accepts gRPC connections; returns its address.
    pub async fn wait_for_portal(&self, kind: PortalKind, timeout: Duration) -> Result<SocketAddr, String> {
        let addr = match kind {
            PortalKind::Admin => self.config.portals.admin,
            PortalKind::Order => self.config.portals.order,
        };
        let give_up = tokio::time::Instant::now() + timeout;
        loop {
            let endpoint = storage_node::endpoint::portal_endpoint(addr, &self.config, None)?;
            if endpoint.connect_timeout(Duration::from_millis(300)).connect().await.is_ok() {
                return Ok(addr);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(format!("{} is not up after {timeout:?}\n{}", kind.name(), self.log_tails(20)));
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// The last `lines` lines of every log, for failure reports.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for process in self.nodes.values().chain(self.portals.values()) {
            let text = std::fs::read_to_string(&process.log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            let _ = writeln!(out, "--- {} ({}) ---", process.name, process.log.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for process in self.nodes.values_mut().chain(self.portals.values_mut()) {
            kill(process);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tails(40));
        }
        if std::env::var_os(KEEP_DIR_ENV).is_some() {
            if let Some(temp) = self._temp.take() {
                eprintln!("{KEEP_DIR_ENV} is set: keeping the cluster's data and logs in {}", temp.keep().display());
            }
        }
    }
}

/// Starts `process` as `program` through [`process::command`], its output
/// appended to its log file; `arguments` adds its arguments and environment.
fn spawn(
    process: &mut Process,
    program: &Path,
    log_filter: &str,
    arguments: impl FnOnce(&mut Command),
) -> std::io::Result<()> {
    if let Some(child) = process.child.as_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            return Err(std::io::Error::other(format!("{} is already running", process.name)));
        }
    }
    let log = std::fs::OpenOptions::new().create(true).append(true).open(&process.log)?;
    let mut command = process::command(program, Output::File(log))?;
    command.env("RUST_LOG", log_filter).env("NO_COLOR", "1");
    arguments(&mut command);
    process.child = Some(command.spawn()?);
    Ok(())
}

fn kill(process: &mut Process) {
    if let Some(mut child) = process.child.take() {
        let _ = process::kill(&mut child);
    }
}

fn stop(process: &mut Process) -> std::io::Result<std::process::ExitStatus> {
    let mut child =
        process.child.take().ok_or_else(|| std::io::Error::other(format!("{} is not running", process.name)))?;
    process::stop(&mut child, STOP_TIMEOUT)
}

/// The default topology (nodes 1-3 even, 4-6 odd, two portals) on free
/// loopback ports, with each node's data under `dir/node-N`.
pub fn local_config(dir: &Path, raft: RaftTimings) -> std::io::Result<ClusterConfig> {
    local_config_with_spares(dir, raft, &[])
}

/// [`local_config`] plus one spare node per entry of `spares` (ids 7 on),
/// in that shard, marked `join`: not started with the cluster, ready to be
/// added to its shard as a new member.
pub fn local_config_with_spares(dir: &Path, raft: RaftTimings, spares: &[Shard]) -> std::io::Result<ClusterConfig> {
    let mut ports = free_ports(17 + 2 * spares.len())?.into_iter();
    let mut port = || ports.next().expect("enough ports were taken");
    let first = (1..=6).map(|id| (id, if id <= 3 { Shard::Even } else { Shard::Odd }, false));
    let spare = spares.iter().enumerate().map(|(i, shard)| (7 + i as NodeId, *shard, true));
    let nodes: Vec<NodeConfig> = first
        .chain(spare)
        .map(|(id, shard, join)| NodeConfig {
            id,
            shard,
            addr: port(),
            advertise: None,
            data_dir: dir.join(format!("node-{id}")),
            metrics: Some(port()),
            join,
        })
        .collect();
    let portals = PortalsConfig {
        admin: port(),
        order: port(),
        admin_metrics: Some(port()),
        order_metrics: Some(port()),
        console: Some(port()),
    };
    // Each local cluster its own id: a message that reaches another test's
    // cluster on a reused port is refused rather than counted.
    let cluster_id = format!("local-{:016x}", rand::random::<u64>());
    Ok(ClusterConfig { cluster_id, portals, raft, nodes, tls: None, auth: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_configs_parse_back() {
        let config = ClusterConfig::embedded();
        let again = ClusterConfig::parse(&config.to_toml(), "rendered").unwrap();
        assert_eq!(config, again);
    }

    #[test]
    fn local_configs_parse_back_with_every_optional_address() {
        let dir = tempfile::tempdir().unwrap();
        let config = local_config(dir.path(), ClusterConfig::embedded().raft).unwrap();
        assert!(config.portals.admin_metrics.is_some() && config.nodes.iter().all(|n| n.metrics.is_some()));
        assert!(config.portals.console.is_some(), "a console address");
        assert_eq!(ClusterConfig::parse(&config.to_toml(), "rendered").unwrap(), config);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(64).unwrap();
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), 64, "{ports:?}");
    }
}
