//! raftshop's tooling as a library: the local cluster of real processes
//! that `raftshop chaos`, the benchmarks and the integration tests start,
//! and the chaos suite's faults and checkers.

pub mod chaos;
pub mod demo;
pub mod local_cluster;
