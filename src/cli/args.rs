//! The command line of `raftshop`, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Operator command line of the raftshop cluster.
#[derive(Debug, Parser)]
#[command(name = "raftshop", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every storage node as a child process and supervise them until
    /// Ctrl-C or SIGTERM. Data already on disk is kept and resumed.
    Up(UpArgs),
    /// Show each node's Raft role, term and log positions, and who leads each
    /// shard. Exits 1 unless both shards have a leader.
    Status(StatusArgs),
    /// Run the chaos suite on a cluster of its own: load, a seeded schedule
    /// of crashes, freezes and partitions, then the checkers' verdicts.
    /// Exits 1 unless every checker passed.
    Chaos(ChaosArgs),
    /// Clients and products through the AdminPortal: one call per verb,
    /// JSON out (exit 1 if the shop refuses, 2 if it cannot be reached);
    /// without a verb, a prompt.
    Admin(super::admin::AdminArgs),
    /// Orders through the OrderPortal: one call per verb, JSON out (exit 1
    /// if the shop refuses, 2 if it cannot be reached); without a verb, a
    /// prompt for one client (`--cid`).
    Order(super::order::OrderArgs),
}

/// Flags of `raftshop chaos`.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// Seeds the fault schedule and the clients; random if not given.
    #[arg(long)]
    pub seed: Option<u16>,
    /// Faults to inject; every kind comes up in turn.
    #[arg(long, default_value = "14")]
    pub faults: usize,
    /// The workload runs at least this long, in seconds.
    #[arg(long = "duration", value_name = "SECS", default_value = "60")]
    pub duration_secs: u64,
    /// Key-value clients.
    #[arg(long, default_value = "8")]
    pub kv_clients: u64,
    /// Order clients racing for scarce products.
    #[arg(long, default_value = "4")]
    pub order_clients: u64,
    /// Hot keys per shard.
    #[arg(long, default_value = "5")]
    pub keys_per_shard: usize,
    /// Seconds the linearizability checker may take before it says
    /// "unknown" (never a pass).
    #[arg(long = "check-budget", value_name = "SECS", default_value = "120")]
    pub check_budget_secs: u64,
    /// Where to save the history (JSON lines); default
    /// chaos-history-SEED.jsonl.
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
    /// Plant a bug in every node: reads served from local state without a
    /// read index. For showing that the checkers catch it.
    #[arg(long)]
    pub planted_stale_reads: bool,
}

/// Flags of `raftshop up`.
#[derive(Debug, Args)]
pub struct UpArgs {
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Where `up` writes files of its own (the built-in config, for the
    /// nodes to read). Node data lives where the config's `data_dir` says,
    /// relative paths resolved against the current directory.
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Flags of `raftshop status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("raftshop").chain(args.iter().copied()))
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn up_defaults_to_no_config_and_data_dir() {
        let Command::Up(up) = parse(&["up"]).expect("parses").command else { panic!("expected up") };
        assert_eq!(up.config, None);
        assert_eq!(up.data_dir, PathBuf::from("data"));
    }

    #[test]
    fn up_takes_config_and_data_dir() {
        let cli = parse(&["up", "--config", "c.toml", "--data-dir", "/tmp/x"]).expect("parses");
        let Command::Up(up) = cli.command else { panic!("expected up") };
        assert_eq!(up.config, Some(PathBuf::from("c.toml")));
        assert_eq!(up.data_dir, PathBuf::from("/tmp/x"));
    }

    #[test]
    fn status_takes_config() {
        let Command::Status(status) = parse(&["status", "--config", "c.toml"]).expect("parses").command else {
            panic!("expected status")
        };
        assert_eq!(status.config, Some(PathBuf::from("c.toml")));
    }

    #[test]
    fn unknown_flags_and_missing_command_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["status", "--data-dir", "x"]).is_err());
        assert!(parse(&["down"]).is_err());
    }
}
