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
    /// Show each node's Raft role, term and log positions, and who leads each
    /// shard. Exits 1 unless both shards have a leader.
    Status(StatusArgs),
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
    fn status_takes_config() {
        let Command::Status(status) = parse(&["status", "--config", "c.toml"]).expect("parses").command;
        assert_eq!(status.config, Some(PathBuf::from("c.toml")));
    }

    #[test]
    fn unknown_flags_and_missing_command_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["status", "--data-dir", "x"]).is_err());
        assert!(parse(&["down"]).is_err());
        assert!(parse(&["up"]).is_err());
    }
}
