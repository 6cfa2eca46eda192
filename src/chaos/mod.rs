//! The chaos suite: faults injected into a real local cluster under load,
//! and checkers that judge what clients saw.
//!
//! - [`proxy`]: TCP link proxies that cut or slow node-to-node links.
//! - [`workload`]: the clients (key-value and cross-shard orders).
//! - [`faults`]: the fault kinds and the seeded schedule.
//! - [`history`]: the operation records a chaos run collects, their
//!   JSON-lines file format, and the [`history::Recorder`] that stamps them.
//! - [`linearizability`]: the per-key linearizability checker, with a time
//!   budget and a verdict that is never a pass by default.
//! - [`checks`]: lost writes, convergence, the shop's invariants.
//! - [`runner`]: one run, end to end, and its report.

pub mod checks;
pub mod faults;
pub mod history;
pub mod linearizability;
pub mod proxy;
pub mod runner;
pub mod workload;

pub use history::{Operation, Outcome, Recorder};
pub use linearizability::{check_history, KeyVerdict, Report, Verdict, Violation};
