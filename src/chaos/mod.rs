//! Chaos testing: what clients saw while the cluster was being hurt, and
//! whether it is consistent with one correct register per key.
//!
//! - [`history`]: the operation records a chaos run collects, their JSON-lines
//!   file format, and the [`history::Recorder`] that stamps them.
//! - [`linearizability`]: the per-key linearizability checker, with a time
//!   budget and a verdict that is never a pass by default.

pub mod history;
pub mod linearizability;

pub use history::{Operation, Outcome, Recorder};
pub use linearizability::{check_history, KeyVerdict, Report, Verdict, Violation};
