//! The Raft layer: how a shard's members keep one log.
//!
//! openraft runs the protocol; this layer gives it what it asks for.
//!
//! - [`log_store`]: the log on disk (the `raft-log` write-ahead log), with
//!   votes and the committed position. An append counts only once it is
//!   fdatasync'ed.
//! - [`network`]: the client side of the `Raft` gRPC service, one per peer,
//!   with the unary calls (vote, snapshot, leadership transfer).
//! - [`stream_append`]: AppendEntries pipelined on one long-lived stream per
//!   follower.
//! - [`force`]: `--force-new-cluster`, which rewrites a survivor's log to
//!   make it the only member after a lost majority.
//!
//! The state machine the log feeds is [`crate::state`]; the server side of
//! the `Raft` service is in [`crate::service`].

pub mod force;
pub mod log_store;
pub mod network;
pub mod stream_append;
