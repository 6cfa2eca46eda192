//! The `raftshop` library: tools shared by the CLI and the test suites.
//!
//! The binaries hold no logic of their own; what they and the chaos suite
//! need in common lives here.
//!
//! - [`chaos`]: recording client histories and checking them for
//!   linearizability.

pub mod chaos;
