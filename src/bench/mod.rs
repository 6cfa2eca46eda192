//! `raftshop bench`: a closed-loop load generator with HDR latency
//! histograms, run against a cluster (and, for comparison, a local etcd).
//!
//! Each of `clients` workers sends one request, waits for the answer,
//! records its latency, and sends the next — for a warm-up period (not
//! recorded) and then for the measured duration. Workers share
//! `connections` HTTP/2 channels. The same workload, value size and client
//! count run against raftshop and etcd in one invocation, so the ratio is
//! measured side by side on the same machine.
//!
//! - [`workload`]: what one request is, per workload and target.
//! - [`run`]: the closed loop, the histogram, the progress line.
//! - [`etcd`]: a three-member etcd started in a temp dir.
//! - [`report`]: the table, the JSON file, the SVG plot.
//! - [`memory`]: the storage nodes' resident memory after a `--local` run.
//! - [`cpu`]: the CPU time each request costs the target and the load
//!   generator.

pub mod cpu;
pub mod etcd;
pub mod memory;
pub mod report;
pub mod run;
pub mod workload;
