//! The replicated state machine of a shard.
//!
//! - [`apply`]: what a command does — pure, deterministic, unit-tested.
//! - [`bounds`]: the tables callers may touch and the bounds of their values.
//! - [`capture`]: the rows as of a snapshot's log id, read while entries apply.
//! - [`keys`]: how rows and bookkeeping sit in sled, and the state digest.
//! - [`layout`]: which bookkeeping rows an entry writes, switched at one
//!   log index on every replica.
//! - [`machine`]: openraft's `RaftStateMachine` over sled.
//! - [`once`]: callers' writes applied at most once, however often sent.
//! - [`snapshot`]: snapshot files, streamed from and into sled.
//! - [`unwritten`]: applied rows waiting to be written to sled in one batch.

pub mod apply;
pub mod bounds;
pub mod capture;
pub mod coordination;
pub mod feed;
pub mod keys;
pub mod known;
pub mod layout;
pub mod machine;
pub mod once;
#[cfg(test)]
mod properties;
pub mod snapshot;
#[cfg(test)]
pub mod testing;
pub mod txn;
pub mod unwritten;

pub use machine::{
    verify_state, AppliedState, Check, Progress, StartupCheck, StateMachine, Verification, DAMAGED_STATE_DIR,
};
