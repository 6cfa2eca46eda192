//! The cluster topology, read from `cluster.toml`.
//!
//! Every process of the cluster (storage nodes, portals, the CLI) loads the
//! same file, so they agree on which node belongs to which shard and where it
//! listens. Loading is strict: an unknown key, a duplicate id, address or data
//! directory, or a shard without exactly three members is refused with a
//! message that names the offending entry, before anything is started.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::types::{NodeId, Shard};

/// The default topology, identical to the repository's `cluster.toml`.
pub const DEFAULT_CLUSTER_TOML: &str = include_str!("../../cluster.toml");
/// How messages name the embedded default.
pub const EMBEDDED_ORIGIN: &str = "(embedded default)";

/// Members each shard must have: a quorum of two survives one failure.
pub const SHARD_SIZE: usize = 3;

/// A parsed, validated `cluster.toml`.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// The cluster's name ([`DEFAULT_CLUSTER_ID`] when the file has none).
    /// Every Raft message carries it, and a node refuses messages of
    /// another cluster; a data directory remembers the cluster it was
    /// created for.
    pub cluster_id: String,
    /// Where the portals listen.
    pub portals: PortalsConfig,
    /// Raft timings shared by every node.
    pub raft: RaftTimings,
    /// Every storage node, ordered by id.
    pub nodes: Vec<NodeConfig>,
    /// Mutual TLS between the cluster's processes; plaintext if absent.
    pub tls: Option<TlsConfig>,
    /// Users and roles for the portals' API; open to anyone if absent.
    pub auth: Option<AuthConfig>,
}

/// The `[tls]` table: where the cluster's certificates are
/// (`raftshop certs init` writes them; see `crate::tls`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The directory with `ca.pem` and each role's `<role>.pem` and
    /// `<role>.key`, relative to the working directory.
    pub dir: PathBuf,
}

/// The `[auth]` table: the portals' API asks every call for a user's
/// token and checks the user's roles (`portals::auth`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The users file (`raftshop user add` writes it; tokens are stored
    /// hashed), relative to the working directory.
    pub users: PathBuf,
    /// Serve the portals' API over TLS, with the portal certificate of
    /// `[tls] dir` (which it needs); a caller may then also show a user's
    /// certificate (`raftshop user add --cert`) instead of a token.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

/// Listen addresses of the two portals.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortalsConfig {
    /// AdminPortal (clients and products).
    pub admin: SocketAddr,
    /// OrderPortal (orders).
    pub order: SocketAddr,
    /// Where the admin portal serves `GET /metrics`; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_metrics: Option<SocketAddr>,
    /// Where the order portal serves `GET /metrics`; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_metrics: Option<SocketAddr>,
    /// Where the admin portal serves the web console; none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<SocketAddr>,
}

/// Raft timings and log compaction policy, in the file's units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RaftTimings {
    /// How often a leader tells followers it is alive.
    pub heartbeat_interval_ms: u64,
    /// Shortest time a follower waits for a leader before it stands.
    pub election_timeout_min_ms: u64,
    /// Longest such wait; each node draws from [min, max).
    pub election_timeout_max_ms: u64,
    /// Entries applied since the last snapshot that trigger a new one.
    pub snapshot_after_entries: u64,
    /// Entries kept in the log behind a snapshot.
    pub keep_entries_after_snapshot: u64,
    /// How the leader makes sure it still leads before it answers a read.
    #[serde(default)]
    pub read_policy: ReadPolicy,
}

/// How a leader confirms its leadership before a linearizable read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Answer while a quorum acknowledged one of the leader's messages within
    /// the last `election_timeout_max_ms` (the leader's lease): followers
    /// refuse to vote for anyone else for that long after hearing from it, so
    /// no other leader can exist. No network round per read. Assumes the
    /// nodes' clocks run at the same rate (they may disagree on the time); a
    /// host that can be frozen (a paused VM) should use `read-index`.
    #[default]
    Lease,
    /// Ask a quorum before every read round (Raft's ReadIndex): one network
    /// round per round of reads, no assumption about clocks.
    ReadIndex,
}

impl ReadPolicy {
    /// The name `cluster.toml` uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadPolicy::Lease => "lease",
            ReadPolicy::ReadIndex => "read-index",
        }
    }
}

impl RaftTimings {
    /// The heartbeat interval as a duration.
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    /// The longest election timeout as a duration: after this long without a
    /// leader, some node has certainly stood for election.
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.election_timeout_max_ms)
    }
}

/// One storage node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Raft node id, unique in the cluster.
    pub id: NodeId,
    /// The shard this node is a member of.
    pub shard: Shard,
    /// Address this node listens on for both the Raft and the Store gRPC
    /// services (e.g. `0.0.0.0:50101` on a real host).
    pub addr: SocketAddr,
    /// `host:port` the other processes reach this node at (a host name is
    /// fine); `addr` if absent. Needed when `addr` is a wildcard or behind
    /// NAT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// Where this node keeps its Raft log, state machine and snapshots.
    pub data_dir: PathBuf,
    /// Where it serves `GET /metrics` (Prometheus text); none if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Not one of the shard's first members: the node starts empty and
    /// waits until an operator adds it (`raftshop member add`). The shard's
    /// first members are the others.
    #[serde(default)]
    pub join: bool,
}

impl NodeConfig {
    /// `host:port` where other processes reach this node: `advertise`, else
    /// `addr`.
    pub fn reach(&self) -> String {
        self.advertise.clone().unwrap_or_else(|| self.addr.to_string())
    }
}

/// Why `value` cannot be an advertised `host:port`, if it cannot.
pub fn check_advertised(value: &str) -> Result<(), String> {
    let (host, port) = value.rsplit_once(':').ok_or("it has no :port")?;
    port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| format!("{port:?} is not a port"))?;
    let bracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    let bare = bracketed.unwrap_or(host);
    if bracketed.is_none() && bare.contains(':') {
        return Err(format!("{host:?} is an IPv6 address without brackets; write [{host}]:{port}"));
    }
    let is_ip = bare.parse::<std::net::IpAddr>().is_ok();
    let is_name = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if !(is_ip || is_name) {
        return Err(format!("{host:?} is neither an IP address nor a host name"));
    }
    if is_ip && bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_unspecified()) {
        return Err(format!("{host} is a wildcard address that others cannot reach"));
    }
    Ok(())
}

/// The cluster id of a `cluster.toml` that names none.
pub const DEFAULT_CLUSTER_ID: &str = "raftshop";

fn default_cluster_id() -> String {
    DEFAULT_CLUSTER_ID.to_owned()
}

/// Why `id` cannot be a cluster id, if it cannot: 1 to 64 characters of
/// letters, digits, `.`, `_` and `-` (it travels as gRPC metadata).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    check_name("cluster_id", id)
}

/// Why `value`, a name of kind `what`, cannot be one, if it cannot: names
/// (a cluster id, a portal user's) are 1 to 64 letters, digits, `.`, `_`
/// and `-`, so that they travel in metadata, file names and certificates.
pub fn check_name(what: &str, value: &str) -> Result<(), String> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    match value.len() {
        1..=64 if value.chars().all(allowed) => Ok(()),
        _ => Err(format!("{what} {value:?} must be 1 to 64 letters, digits, '.', '_' or '-'")),
    }
}

/// The file as written, before validation.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterFile {
    #[serde(default = "default_cluster_id")]
    cluster_id: String,
    portals: PortalsConfig,
    raft: RaftTimings,
    node: Vec<NodeConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tls: Option<TlsConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    auth: Option<AuthConfig>,
}

/// Why a `cluster.toml` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read cluster config {path}: {source}")]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown or missing keys.
    #[error("invalid cluster config {origin}: {message}")]
    Parse {
        /// The file name, or "(embedded default)".
        origin: String,
        /// The parser's one-line description.
        message: String,
    },
    /// The TOML is well-formed but describes an impossible cluster.
    #[error("invalid cluster config {origin}: {message}")]
    Invalid {
        /// The file name, or "(embedded default)".
        origin: String,
        /// What is wrong, naming the offending entry.
        message: String,
    },
}

impl ClusterConfig {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Reads `path` if given, else `./cluster.toml` if it exists, else the
    /// embedded default. Returns the config and where it came from.
    pub fn load_or_default(path: Option<&Path>) -> Result<(Self, String), ConfigError> {
        match path {
            Some(path) => Ok((Self::load(path)?, path.display().to_string())),
            None if Path::new("cluster.toml").exists() => {
                Ok((Self::load(Path::new("cluster.toml"))?, "cluster.toml".into()))
            }
            None => Ok((Self::embedded(), EMBEDDED_ORIGIN.into())),
        }
    }

    /// The embedded default (`cluster.toml` as built in). It is valid: a
    /// unit test parses it.
    pub fn embedded() -> Self {
        Self::parse(DEFAULT_CLUSTER_TOML, EMBEDDED_ORIGIN).expect("the embedded cluster.toml is valid")
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let file: ClusterFile = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { origin: origin.to_owned(), message: one_line(&e.to_string()) })?;
        let mut config = ClusterConfig {
            cluster_id: file.cluster_id,
            portals: file.portals,
            raft: file.raft,
            nodes: file.node,
            tls: file.tls,
            auth: file.auth,
        };
        config.nodes.sort_by_key(|n| n.id);
        config.validate().map_err(|message| ConfigError::Invalid { origin: origin.to_owned(), message })?;
        Ok(config)
    }

    /// The config as `cluster.toml` text, which [`Self::parse`] reads back
    /// to an equal config.
    pub fn to_toml(&self) -> String {
        let file = ClusterFile {
            cluster_id: self.cluster_id.clone(),
            portals: self.portals.clone(),
            raft: self.raft.clone(),
            node: self.nodes.clone(),
            tls: self.tls.clone(),
            auth: self.auth.clone(),
        };
        toml::to_string(&file).expect("a config always encodes as TOML")
    }

    /// The certificates directory, if the portals serve their API over
    /// TLS (`[auth] tls = true`, which needs `[tls]`).
    pub fn portal_tls_dir(&self) -> Option<&Path> {
        self.auth.as_ref().filter(|auth| auth.tls).and(self.tls.as_ref()).map(|tls| tls.dir.as_path())
    }

    /// Checks the invariants every process relies on.
    fn validate(&self) -> Result<(), String> {
        check_cluster_id(&self.cluster_id)?;
        if self.auth.as_ref().is_some_and(|auth| auth.tls) && self.tls.is_none() {
            return Err("[auth] tls = true serves the portals with the portal certificate of [tls], \
                        but there is no [tls] table"
                .into());
        }
        let mut ids = BTreeSet::new();
        let mut reached = BTreeMap::new();
        let mut dirs = BTreeMap::new();
        for node in &self.nodes {
            if node.id == 0 {
                return Err("node id 0 is reserved; ids start at 1".into());
            }
            if !ids.insert(node.id) {
                return Err(format!("node id {} appears more than once", node.id));
            }
            if let Some(advertised) = &node.advertise {
                check_advertised(advertised)
                    .map_err(|why| format!("node {}'s advertise = {advertised:?} is unusable: {why}", node.id))?;
            } else if node.addr.ip().is_unspecified() {
                return Err(format!(
                    "node {} listens on the wildcard address {}; set its advertise = \"host:port\" for others \
                     to reach it",
                    node.id, node.addr
                ));
            }
            if let Some(other) = dirs.insert(node.data_dir.clone(), node.id) {
                return Err(format!(
                    "nodes {other} and {} share the data directory {}",
                    node.id,
                    node.data_dir.display()
                ));
            }
        }
        self.check_listeners()?;
        for node in &self.nodes {
            if let Some(other) = reached.insert(node.reach(), node.id) {
                return Err(format!("nodes {other} and {} are both reached at {}", node.id, node.reach()));
            }
        }
        for shard in Shard::ALL {
            let members = self.first_members(shard).count();
            if members != SHARD_SIZE {
                return Err(format!(
                    "shard {shard} has {members} first members (nodes without join = true); it needs exactly \
                     {SHARD_SIZE}"
                ));
            }
        }
        let raft = &self.raft;
        if raft.heartbeat_interval_ms == 0 {
            return Err("raft.heartbeat_interval_ms must be above 0".into());
        }
        if raft.election_timeout_min_ms <= raft.heartbeat_interval_ms {
            return Err("raft.election_timeout_min_ms must exceed heartbeat_interval_ms".into());
        }
        if raft.election_timeout_max_ms <= raft.election_timeout_min_ms {
            return Err("raft.election_timeout_max_ms must exceed election_timeout_min_ms".into());
        }
        if raft.snapshot_after_entries == 0 {
            return Err("raft.snapshot_after_entries must be above 0".into());
        }
        Ok(())
    }

    /// The node with this id.
    pub fn node(&self, id: NodeId) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Refuses two listeners on one address of one host. A node with an
    /// `advertise` address runs on that host; nodes without one, and the
    /// portals (which run wherever they are started), count as this host.
    fn check_listeners(&self) -> Result<(), String> {
        let mut taken: BTreeMap<(Option<String>, SocketAddr), String> = BTreeMap::new();
        let mut listeners = Vec::new();
        for node in &self.nodes {
            let host =
                node.advertise.as_ref().map(|a| a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h).to_lowercase());
            listeners.push((host.clone(), node.addr, format!("node {}", node.id)));
            if let Some(metrics) = node.metrics {
                listeners.push((host, metrics, format!("node {}'s metrics", node.id)));
            }
        }
        let portals = [
            ("the admin portal", Some(self.portals.admin)),
            ("the order portal", Some(self.portals.order)),
            ("the admin portal's metrics", self.portals.admin_metrics),
            ("the order portal's metrics", self.portals.order_metrics),
            ("the console", self.portals.console),
        ];
        listeners.extend(portals.into_iter().filter_map(|(name, addr)| Some((None, addr?, name.to_owned()))));
        for (host, addr, name) in listeners {
            if let Some(other) = taken.insert((host, addr), name.clone()) {
                return Err(match (other.strip_prefix("node "), name.strip_prefix("node ")) {
                    (Some(a), Some(b)) if !a.contains(' ') && !b.contains(' ') => {
                        format!("nodes {a} and {b} both listen on {addr}")
                    }
                    _ => format!("{name} and {other} both use {addr}"),
                });
            }
        }
        Ok(())
    }

    /// The members of `shard`, ordered by id.
    pub fn members(&self, shard: Shard) -> impl Iterator<Item = &NodeConfig> + '_ {
        self.nodes.iter().filter(move |n| n.shard == shard)
    }

    /// The nodes of `shard` that form its first membership (all but those
    /// marked `join`).
    pub fn first_members(&self, shard: Shard) -> impl Iterator<Item = &NodeConfig> + '_ {
        self.members(shard).filter(|n| !n.join)
    }
}

/// Folds a multi-line parser message into one line.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty() && *l != "|").collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_config() -> ClusterConfig {
        ClusterConfig::parse(DEFAULT_CLUSTER_TOML, "default").expect("default config is valid")
    }

    #[test]
    fn the_embedded_default_is_valid() {
        assert_eq!(ClusterConfig::embedded(), default_config());
    }

    #[test]
    fn default_has_two_shards_of_three() {
        let config = default_config();
        let even: Vec<_> = config.members(Shard::Even).map(|n| n.id).collect();
        let odd: Vec<_> = config.members(Shard::Odd).map(|n| n.id).collect();
        assert_eq!(even, vec![1, 2, 3]);
        assert_eq!(odd, vec![4, 5, 6]);
        assert_eq!(config.portals.admin.port(), 55006);
        assert_eq!(config.portals.order.port(), 55005);
        assert_eq!(config.portals.console.map(|addr| addr.port()), Some(55080));
    }

    fn refused(text: &str) -> String {
        ClusterConfig::parse(text, "test.toml").expect_err("config should be refused").to_string()
    }

    #[test]
    fn unknown_key_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("[portals]", "[portals]\nbogus = 1");
        let error = refused(&text);
        assert!(error.contains("bogus"), "{error}");
        assert!(!error.contains('\n'), "one line: {error}");
    }

    #[test]
    fn duplicate_id_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("id = 2", "id = 1");
        assert!(refused(&text).contains("node id 1 appears more than once"));
    }

    #[test]
    fn duplicate_port_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("127.0.0.1:50102", "127.0.0.1:50101");
        assert!(refused(&text).contains("both listen on 127.0.0.1:50101"));
    }

    #[test]
    fn a_node_may_be_advertised_by_host_name() {
        let text = DEFAULT_CLUSTER_TOML.replace(
            "addr = \"127.0.0.1:50101\"",
            "addr = \"0.0.0.0:50101\"\nadvertise = \"node-1.shop.internal:50101\"",
        );
        let config = ClusterConfig::parse(&text, "test").expect("valid");
        assert_eq!(config.node(1).unwrap().reach(), "node-1.shop.internal:50101");
        assert_eq!(config.node(2).unwrap().reach(), "127.0.0.1:50102", "addr when not advertised");
    }

    #[test]
    fn unusable_advertised_addresses_are_named() {
        let with = |advertise: &str| {
            DEFAULT_CLUSTER_TOML.replace(
                "addr = \"127.0.0.1:50101\"",
                &format!("addr = \"127.0.0.1:50101\"\nadvertise = \"{advertise}\""),
            )
        };
        assert!(refused(&with("node-1")).contains("no :port"));
        assert!(refused(&with("node-1:http")).contains("is not a port"));
        assert!(refused(&with("bad_host!:50101")).contains("neither an IP address nor a host name"));
        assert!(refused(&with("0.0.0.0:50101")).contains("wildcard"));
        assert!(refused(&with("127.0.0.1:50102")).contains("nodes 1 and 2 are both reached at 127.0.0.1:50102"));
        let wildcard = DEFAULT_CLUSTER_TOML.replace("addr = \"127.0.0.1:50101\"", "addr = \"0.0.0.0:50101\"");
        assert!(refused(&wildcard).contains("set its advertise"));
        assert!(ClusterConfig::parse(&with("[::1]:50101"), "test").is_ok(), "a bracketed IPv6 address");
        // A URI needs the brackets: a client would fail to connect to it.
        assert!(refused(&with("::1:50101")).contains("without brackets; write [::1]:50101"));
    }

    #[test]
    fn the_deployment_example_is_valid() {
        let text = include_str!("../../deploy/cluster.example.toml");
        let config = ClusterConfig::parse(text, "deploy/cluster.example.toml").expect("valid");
        assert_eq!(config.nodes.len(), 6);
        assert!(config.nodes.iter().all(|n| n.advertise.is_some() && n.addr.ip().is_unspecified()));
        let same_host = text.replace("shop-2.example.internal:50101", "shop-1.example.internal:50101");
        assert!(refused(&same_host).contains("nodes 1 and 2 both listen on 0.0.0.0:50101"), "one host, one port");
    }

    #[test]
    fn shared_data_dir_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("data/node-2", "data/node-1");
        assert!(refused(&text).contains("share the data directory data/node-1"));
    }

    #[test]
    fn short_shard_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("id = 3\nshard = \"even\"", "id = 3\nshard = \"odd\"");
        let error = refused(&text);
        assert!(error.contains("shard even has 2 first members"), "{error}");
        // A joining node does not count among the first members.
        let joining = DEFAULT_CLUSTER_TOML.replace("id = 3\nshard = \"even\"", "id = 3\nshard = \"even\"\njoin = true");
        assert!(refused(&joining).contains("shard even has 2 first members"));
    }

    #[test]
    fn a_joining_node_is_a_member_but_not_a_first_member() {
        let text = format!(
            "{DEFAULT_CLUSTER_TOML}\n[[node]]\nid = 7\nshard = \"even\"\naddr = \"127.0.0.1:50107\"\n\
             data_dir = \"data/node-7\"\njoin = true\n"
        );
        let config = ClusterConfig::parse(&text, "test").expect("valid");
        assert_eq!(config.members(Shard::Even).map(|n| n.id).collect::<Vec<_>>(), [1, 2, 3, 7]);
        assert_eq!(config.first_members(Shard::Even).map(|n| n.id).collect::<Vec<_>>(), [1, 2, 3]);
    }

    #[test]
    fn unknown_shard_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("shard = \"odd\"", "shard = \"blue\"");
        let error = refused(&text);
        assert!(error.contains("blue"), "{error}");
    }

    #[test]
    fn bad_timings_are_refused() {
        let text = DEFAULT_CLUSTER_TOML.replace("election_timeout_max_ms = 500", "election_timeout_max_ms = 10");
        assert!(refused(&text).contains("election_timeout_max_ms"));
    }

    #[test]
    fn read_policy_defaults_to_the_lease_and_takes_read_index() {
        let parse = |text: &str| ClusterConfig::parse(text, "test").expect("valid").raft.read_policy;
        assert_eq!(parse(DEFAULT_CLUSTER_TOML), ReadPolicy::Lease);
        let without = DEFAULT_CLUSTER_TOML.replace("read_policy = \"lease\"", "");
        assert_eq!(parse(&without), ReadPolicy::Lease);
        let read_index = DEFAULT_CLUSTER_TOML.replace("read_policy = \"lease\"", "read_policy = \"read-index\"");
        assert_eq!(parse(&read_index), ReadPolicy::ReadIndex);
        let unknown = DEFAULT_CLUSTER_TOML.replace("read_policy = \"lease\"", "read_policy = \"stale\"");
        let error = refused(&unknown);
        assert!(error.contains("stale") && error.contains("read-index"), "{error}");
    }

    #[test]
    fn a_metrics_address_in_use_by_another_listener_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("127.0.0.1:50203", "127.0.0.1:50101");
        let error = refused(&text);
        assert!(error.contains("node 3's metrics and node 1 both use 127.0.0.1:50101"), "{error}");
    }

    #[test]
    fn a_console_address_in_use_by_another_listener_is_named() {
        let text = DEFAULT_CLUSTER_TOML.replace("127.0.0.1:55080", "127.0.0.1:55016");
        let error = refused(&text);
        assert!(error.contains("the console and the admin portal's metrics both use 127.0.0.1:55016"), "{error}");
    }

    #[test]
    fn the_cluster_id_defaults_and_a_bad_one_is_refused() {
        let without = DEFAULT_CLUSTER_TOML.replace("cluster_id = \"raftshop-local\"", "");
        assert_eq!(ClusterConfig::parse(&without, "test").expect("valid").cluster_id, DEFAULT_CLUSTER_ID);
        let spaced = DEFAULT_CLUSTER_TOML.replace("\"raftshop-local\"", "\"shop production\"");
        assert!(refused(&spaced).contains("cluster_id \"shop production\" must be"), "{}", refused(&spaced));
    }

    #[test]
    fn the_console_is_optional() {
        let text = DEFAULT_CLUSTER_TOML.replace("console = \"127.0.0.1:55080\"", "");
        let config = ClusterConfig::parse(&text, "test").expect("valid without a console");
        assert_eq!(config.portals.console, None);
    }
}
