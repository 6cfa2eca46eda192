//! Demonstrations of the cluster's coordination primitives, after the seeds:
//!
//! - [`lamport`]: seed 001's three examples of Lamport's mutual exclusion,
//!   replayed on the replicated mutex.
//! - [`dice`]: seed 000's dice game — roll, broadcast through the log, the
//!   highest roller writes the round's result under the mutex, a barrier
//!   before the next round.

pub mod dice;
pub mod lamport;
