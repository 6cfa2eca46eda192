//! Why a storage node could not start or had to stop.
//!
//! Start-up errors are the operator's to fix (a bad config, a port in use, a
//! data directory of another node); they are reported as one sentence and
//! the process exits non-zero before touching any data. A storage error
//! while running is fatal on purpose: a replica that cannot persist or apply
//! deterministically must stop rather than diverge from its peers.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::ConfigError;
use crate::types::{NodeId, Shard};

/// A storage node's failure to start or to keep running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// `cluster.toml` is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The `[tls]` certificates could not be read.
    #[error("cannot use the cluster's certificates: {0}")]
    Tls(String),
    /// `--id` names no node of the config.
    #[error("node {id} is not in {origin}; its nodes are {known:?}")]
    UnknownNode {
        /// The id asked for.
        id: NodeId,
        /// Where the config came from.
        origin: String,
        /// The ids the config has.
        known: Vec<NodeId>,
    },
    /// Another process listens on the node's address.
    #[error("address {addr} is already in use (is node {id} already running?)")]
    PortInUse {
        /// The node's configured address.
        addr: SocketAddr,
        /// The node that wanted it.
        id: NodeId,
    },
    /// The node's address cannot be bound for another reason.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The node's configured address.
        addr: SocketAddr,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The data directory was created by another node.
    #[error("data directory {dir} belongs to node {owner} (shard {owner_shard}), not node {id}; refusing to use it")]
    ForeignDataDir {
        /// The directory.
        dir: PathBuf,
        /// The node that created it.
        owner: NodeId,
        /// The owner's shard.
        owner_shard: Shard,
        /// The node that was started.
        id: NodeId,
    },
    /// The data directory was made for a node of another cluster.
    #[error(
        "data directory {dir} belongs to cluster {recorded:?}, but the config is of cluster {configured:?}; \
         refusing to mix two clusters' data"
    )]
    OtherCluster {
        /// The directory.
        dir: PathBuf,
        /// The cluster its identity file names.
        recorded: String,
        /// The cluster of the config the node was started with.
        configured: String,
    },
    /// The data directory holds files raftshop did not write.
    #[error("data directory {dir} is not empty and was not created by a raftshop node; refusing to use it")]
    UnclaimedDataDir {
        /// The directory.
        dir: PathBuf,
    },
    /// A file in the data directory is in a format version this build does
    /// not read (written by another release).
    #[error(
        "{path}: {what} format version {found}, but this storage-node reads only version {supported}; it was \
         written by another release of raftshop, so run that release (nothing was changed)"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
        /// What it is.
        what: &'static str,
        /// The version it says.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// `--force-new-cluster` on a node with no data: nothing to recover.
    #[error(
        "--force-new-cluster turns a surviving member into a shard of one with its data, but node {id} has no \
         data in {dir}; start it without the flag"
    )]
    NothingToForce {
        /// The node.
        id: NodeId,
        /// Its data directory.
        dir: PathBuf,
    },
    /// Start-up found the state damaged and cannot rebuild it.
    #[error("node {id}'s state in {dir}: {source} (docs/operations.md, \"Checking replicas after a power cut\")")]
    DamagedState {
        /// The node.
        id: NodeId,
        /// Its state directory.
        dir: PathBuf,
        /// What is wrong, and why it cannot be rebuilt.
        source: crate::state::machine::Unrebuildable,
    },
    /// sled does not support the node's state
    /// (`crate::state::unwritten::SledRefusal`).
    #[error(
        "node {id}'s state in {dir}: {source}. A restart will not change that: run the release that wrote it, \
         or restore the data directory from a backup, or replace this member under a new id \
         (docs/operations.md)"
    )]
    StateRefused {
        /// The node.
        id: NodeId,
        /// Its state directory.
        dir: PathBuf,
        /// What sled said.
        source: std::io::Error,
    },
    /// The node's state is in a layout this build does not know
    /// (`crate::state::layout`).
    #[error(
        "node {id}'s state in {dir}: {source}. A restart will not change that: run the newer build (or replace \
         this member under a new id, docs/operations.md)"
    )]
    LayoutUnknown {
        /// The node.
        id: NodeId,
        /// Its state directory.
        dir: PathBuf,
        /// Which layout, and which this build knows.
        source: std::io::Error,
    },
    /// Opening or writing the node's storage failed.
    #[error("storage failure in {path}: {source}")]
    Storage {
        /// The file or directory concerned.
        path: PathBuf,
        /// What the OS or the storage engine said.
        source: std::io::Error,
    },
    /// openraft refused to start or stopped with an error.
    #[error("raft failure: {0}")]
    Raft(String),
}

impl NodeError {
    /// True if the operator must change something before a retry can work
    /// (as opposed to an I/O failure that may pass).
    pub fn is_operator_error(&self) -> bool {
        !matches!(self, NodeError::Storage { .. } | NodeError::Raft(_))
    }
}
