//! The `raftshop` commands.
//!
//! `status` asks every node for its Raft status in parallel, prints one table
//! row per node and one line per shard naming its leader, and exits 0 only
//! when both shards have one.
//!
//! The pure parts (argument parsing, table layout, leader election from
//! probes) are kept apart from the I/O so they are unit tested without a
//! cluster.
//!
//! - [`args`]: the command line, as clap types.
//! - [`status`]: the `status` command.
//! - [`probe`]: asking every node for its status; who leads a shard.
//! - [`table`]: column layout for terminal tables.

mod args;
mod probe;
mod status;
mod table;

use std::process::ExitCode;

pub use args::Cli;
use args::Command;

/// Runs the command `cli` names; the exit code reports its verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status(args) => status::run(args).await,
    }
}
