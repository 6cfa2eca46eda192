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
