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
//! 2. The leader appends the command to its Raft log ([`raft::log_store`], the
//!    `raft-log` WAL) and replicates it over the `Raft` gRPC service
//!    ([`raft::network`], [`service`]). An append counts towards the quorum only
//!    once it is fdatasync'ed.
//! 3. Once committed, every replica applies it ([`state`]): the pure
//!    [`state::apply`] evaluates all preconditions against the committed rows
//!    and yields the changes, which readers see at once and which reach sled
//!    within milliseconds, in one atomic batch per group of entries
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
//! - A data directory belongs to exactly one node id ([`node::identity`]).
//!
//! # Layers
//!
//! From the disk up to the callers:
//!
//! - [`raft`]: the Raft plumbing openraft asks for — the log on disk
//!   ([`raft::log_store`]), peers' clients ([`raft::network`],
//!   [`raft::stream_append`]) and `--force-new-cluster` ([`raft::force`]).
//! - [`state`]: the replicated state machine — the pure [`state::apply`],
//!   rows and their bounds, the transaction participant ([`state::txn`]),
//!   the Lamport mutex and sessions ([`state::coordination`]), the change
//!   feed ([`state::feed`]), at-most-once writes ([`state::once`]) and
//!   snapshots, over sled ([`state::machine`]).
//! - [`command`]: the language of the log — commands, queries, their results
//!   and refusals; [`records`]: the records the tables hold.
//! - [`service`]: the gRPC services a node serves — `Raft` and `Store`, with
//!   admission of network input ([`service::admission`]), batching
//!   ([`service::batch`]), the change feed ([`service::watch`]), membership
//!   changes and online backup.
//! - [`node`]: start-up, the data directory's owner ([`node::identity`]), the
//!   leader's housekeeping ([`node::housekeeping`]) and shutdown.
//! - [`client`]: how other processes (portals, the CLI, other nodes) talk
//!   to a shard, and [`commit_protocol`]: how a call spanning both shards
//!   commits (parallel commits), driven by portals and by the housekeeping.
//!
//! Beside them, what every process shares: [`config`] (`cluster.toml`,
//! validated strictly), [`types`] (ids, shards, openraft's type config),
//! [`limits`] (the maxima of every input), [`codec`] (the one bincode
//! codec, bounded for network bytes), [`fnv`] (the stable hash behind
//! routing and digests), [`endpoint`] and [`tls`] (how connections are
//! made and secured), [`http`] and [`metrics`], [`request_id`], [`error`]
//! and [`cli`] (logging and signals for every binary).

// openraft's `StorageError` and tonic's `Status` are large, and the traits
// we implement dictate them as error types.
#![allow(clippy::result_large_err)]

pub mod cli;
pub mod client;
pub mod codec;
pub mod command;
pub mod commit_protocol;
pub mod config;
pub mod endpoint;
pub mod error;
pub mod fnv;
pub mod http;
pub mod limits;
pub mod metrics;
pub mod node;
pub mod raft;
pub mod records;
pub mod request_id;
pub mod service;
pub mod state;
pub mod tls;
pub mod types;

pub use command::{
    Command, CommandResult, Disposition, Precondition, Query, QueryResult, Rejection, Row, RowKey, RowWrite, Table,
};
pub use config::ClusterConfig;
pub use types::{LogIndex, NodeId, Shard, TypeConfig};
