//! The `raftshop` commands.
//!
//! `up` runs a whole cluster in the foreground: it loads `cluster.toml` (or
//! the embedded default), finds the cluster's executables next to its own
//! (rebuilding them first when launched through `cargo run`), starts one
//! child process per storage node, prefixes each child's output lines with
//! its name, waits until every shard has elected a leader, and then
//! supervises: a child that dies is reported and the rest keep running; Ctrl-C
//! or SIGTERM stops them all (SIGTERM, a grace period, then SIGKILL).
//!
//! `status` asks every node for its Raft status in parallel, prints one table
//! row per node and one line per shard naming its leader, and exits 0 only
//! when both shards have one.
//!
//! Both commands share [`probe`], the parallel `Status` poll. The pure parts
//! (argument parsing, locating executables, line prefixes, table layout,
//! leader election from probes) are kept apart from the I/O so they are unit
//! tested without a cluster.
//!
//! - [`args`]: the command line, as clap types.
//! - [`up`]: the `up` command.
//! - [`status`]: the `status` command.
//! - [`chaos`]: the `chaos` command, a run of the chaos suite.
//! - [`coord`]: `lock`, `watch`, `topics` and `demo`.
//! - [`bench`]: the `bench` command.
//! - [`probe`]: asking every node for its status; who leads a shard.
//! - [`config_source`]: which config `up` uses, and the file the nodes read.
//! - [`binaries`]: finding the cluster's executables, rebuilding them under
//!   `cargo run`.
//! - [`children`]: starting, watching, signalling child processes.
//! - [`prefix`]: the `node-1 | ` labels on children's output lines.
//! - [`table`]: column layout for terminal tables.

mod args;
mod bench;
mod binaries;
mod chaos;
mod children;
mod config_source;
mod coord;
mod prefix;
mod probe;
mod status;
mod table;
mod up;

use std::process::ExitCode;

pub use args::Cli;
use args::Command;

/// Runs the command `cli` names; the exit code reports its verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Status(args) => status::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Lock(args) => coord::lock(args).await,
        Command::Watch(args) => coord::watch(args).await,
        Command::Topics(args) => coord::topics(args).await,
        Command::Demo(command) => coord::demo(command).await,
        Command::Bench(args) => bench::run(args).await,
    }
}
