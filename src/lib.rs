//! raftshop's tooling as a library: the local cluster of real processes
//! that `raftshop chaos`, the benchmarks and the integration tests start,
//! the chaos suite's faults and checkers, and the coordination demos.
//!
//! - [`local_cluster`]: six nodes (and portals) as child processes.
//! - [`process`]: how every child process is started, signalled and stopped.
//! - [`chaos`]: fault injection, client histories, and their checkers.
//! - [`demo`]: seed 001's Lamport examples and seed 000's dice game.

pub mod backup;
pub mod bench;
pub mod chaos;
pub mod demo;
pub mod local_cluster;
pub mod ports;
pub mod process;
