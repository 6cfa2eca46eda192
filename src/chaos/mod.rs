//! Chaos testing: what clients saw while the cluster was being hurt.
//!
//! - [`history`]: the operation records a chaos run collects, their JSON-lines
//!   file format, and the [`history::Recorder`] that stamps them.

pub mod history;

pub use history::{Operation, Outcome, Recorder};
