//! The `raftshop` commands.
//!
//! `up` runs a whole cluster in the foreground: it loads `cluster.toml` (or
//! the embedded default), finds the cluster's executables next to its own
//! (rebuilding them first when launched through `cargo run`), starts one
//! child process per storage node, prefixes each child's output lines with
//! its name, waits until every shard has elected a leader, and then
//! supervises: a child that fails is restarted with backoff (given up on
//! after repeated crashes) and the rest keep running; Ctrl-C or SIGTERM stops
//! them all (SIGTERM, a grace period, then SIGKILL).
//!
//! `status` asks every node for its Raft status and health in parallel,
//! prints one table row per node, one line per shard naming its leader and
//! the portals' health, and exits 0 only when both shards have a leader.
//!
//! `admin` and `order` are the shop's clients for people and scripts: one
//! verb per RPC of the AdminPortal and OrderPortal, answering in JSON with
//! an exit code that says how it went, or, without a verb, a prompt. Their
//! pure parts (what an answer prints, how a prompt line reads) are apart
//! from the calls, as for the other commands.
//!
//! `up` and `status` share [`probe`], the parallel `Status` poll. The pure parts
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
//! - [`admin`]: the `admin` command, AdminPortal calls.
//! - [`order`]: the `order` command, OrderPortal calls.
//! - [`answer`]: an answer as a JSON line, a sentence, an exit code.
//! - [`portal`]: the portal's address and channel; scriptable reports.
//! - [`interactive`]: the prompt's read-call-print loop.
//! - [`prompt`]: reading one prompt line; the help text.
//! - [`probe`]: asking every node for its status; who leads a shard.
//! - [`config_source`]: which config `up` uses, and the file the nodes read.
//! - [`binaries`]: finding the cluster's executables, rebuilding them under
//!   `cargo run`.
//! - [`children`]: starting, watching, signalling child processes.
//! - [`supervisor`]: the processes `up` runs, restarted, given up on, stopped.
//! - [`restart`]: when `up` restarts a failed child, and when it gives up.
//! - [`health`]: asking a process for its `grpc.health.v1` answer.
//! - [`prefix`]: the `node-1 | ` labels on children's output lines.
//! - [`table`]: column layout for terminal tables.

mod admin;
mod answer;
mod args;
mod backup;
mod bench;
mod binaries;
mod certs;
mod chaos;
mod children;
mod config_source;
mod coord;
mod health;
mod interactive;
mod member;
mod order;
mod portal;
mod prefix;
mod probe;
mod prompt;
mod restart;
mod status;
mod supervisor;
mod table;
mod up;
mod user;

use std::process::ExitCode;

pub use args::Cli;
use args::Command;

/// Runs the command `cli` names; the exit code reports its verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up::run(args).await,
        Command::Restart(args) => up::ask_rolling_restart(&args.data_dir),
        Command::Status(args) => status::run(args).await,
        Command::Chaos(args) => chaos::run(args).await,
        Command::Lock(args) => coord::lock(args).await,
        Command::Watch(args) => coord::watch(args).await,
        Command::Topics(args) => coord::topics(args).await,
        Command::Member(args) => member::run(args).await,
        Command::Backup(args) => backup::backup(args).await,
        Command::Restore(args) => backup::restore(args).await,
        Command::Certs(args) => Ok(certs::run(args)),
        Command::User(args) => Ok(user::run(args)),
        Command::Demo(command) => coord::demo(command).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Admin(args) => Ok(admin::run(args).await),
        Command::Order(args) => Ok(order::run(args).await),
    }
}
