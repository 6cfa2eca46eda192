//! A storage node: one member of one shard of the raftshop cluster.
//!
//! (The design essay is written as the node takes shape.)

pub mod client;
pub mod command;
pub mod config;
pub mod log_store;
pub mod state;
pub mod types;

pub use command::{Command, CommandResult, Precondition, Query, QueryResult, Rejection, Row, RowKey, RowWrite, Table};
pub use config::ClusterConfig;
pub use types::{LogIndex, NodeId, Shard, TypeConfig};
