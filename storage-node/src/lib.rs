//! A storage node: one member of one shard of the raftshop cluster.
//!
//! # What it owns
//!
//! A node keeps one replica of its shard's state — the `clients`,
//! `products`, `orders` and `kv` tables — and takes part in the shard's Raft
//! group (openraft). Two shards of three nodes each make the default cluster:
//! entities with an even ID live in shard `even`, odd IDs in shard `odd`.
//!
//! # How a write flows
//!
//! 1. A portal or the CLI sends a [`Command`] (a batch of row writes with
//!    preconditions) to the `Store` service of the node it believes leads
//!    ([`client::ShardClient`] finds it and follows redirects).
//! 2. The leader appends the command to its Raft log ([`log_store`], the
//!    `raft-log` WAL) and replicates it over the `Raft` gRPC service
//!    ([`network`], [`service`]). An append counts towards the quorum only
//!    once it is fdatasync'ed.
//! 3. Once committed, every replica applies it ([`state`]): the pure
//!    [`state::apply`] evaluates all preconditions against the committed rows
//!    and yields the changes, which are written to sled in one atomic batch
//!    together with the last-applied log id. The leader answers with the
//!    deterministic [`CommandResult`].
//!
//! Reads pass a read-index barrier (the leader confirms its leadership with a
//! quorum and waits until it has applied everything committed before the
//! read), so they are linearizable from any caller's point of view.
//!
//! # Invariants
//!
//! - An acknowledged write is in the fdatasync'ed logs of a quorum.
//! - The applied state is always that of a prefix of the log; the sled state
//!   is flushed before the log behind a snapshot may be purged.
//! - `apply` is deterministic: same log, same rows, same results, same
//!   [`state::keys::row_digest`] sum on every replica.
//! - A data directory belongs to exactly one node id ([`identity`]).
//!
//! # Modules
//!
//! - [`config`]: `cluster.toml`, validated strictly.
//! - [`types`], [`command`]: ids, shards, and the command language.
//! - [`log_store`], [`state`]: the Raft log and the state machine.
//! - [`network`], [`service`], [`batch`]: Raft RPCs and the `Store`
//!   service, which batches concurrent writes and reads.
//! - [`node`], [`identity`], [`error`], [`cli`]: start-up and shutdown.
//! - [`limits`]: the documented maxima of every input.
//! - [`fnv`]: the stable hash behind key routing, the state digest and
//!   request fingerprints.
//! - [`codec`], [`admission`]: how network bytes are decoded (bounded in
//!   size and depth) and which commands the `Store` service admits.
//! - [`commit_protocol`]: how a call spanning both shards commits (parallel
//!   commits), driven by portals and finished by [`recovery`].
//! - [`recovery`]: the leader's housekeeping, settling transactions
//!   abandoned by a dead portal among it.
//! - [`shop`]: the e-commerce records the tables hold.
//! - [`client`]: how other processes talk to a shard.

// openraft's `StorageError` and tonic's `Status` are large, and the traits
// we implement dictate them as error types.
#![allow(clippy::result_large_err)]

pub mod admission;
pub mod backup;
pub mod batch;
pub mod cli;
pub mod client;
pub mod codec;
pub mod command;
pub mod commit_protocol;
pub mod config;
pub mod coordination;
pub mod endpoint;
pub mod error;
pub mod fnv;
pub mod force;
pub mod http;
pub mod identity;
pub mod limits;
pub mod log_store;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod node;
pub mod recovery;
pub mod request_id;
pub mod service;
pub mod shop;
pub mod state;
pub mod stream_append;
pub mod tls;
pub mod types;
pub mod watch;

pub use command::{
    Command, CommandResult, Disposition, Precondition, Query, QueryResult, Rejection, Row, RowKey, RowWrite, Table,
};
pub use config::ClusterConfig;
pub use types::{LogIndex, NodeId, Shard, TypeConfig};
