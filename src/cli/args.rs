//! The command line of `raftshop`, as clap derive types.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use raftshop::chaos::faults::FaultKind;

/// Operator command line of the raftshop cluster.
#[derive(Debug, Parser)]
#[command(name = "raftshop", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// How to write log lines to stderr: `text` or `json`; `up` starts the
    /// nodes and portals with the same format.
    #[arg(long, global = true, value_enum, default_value_t, env = storage_node::cli::LOG_FORMAT_ENV)]
    pub log_format: storage_node::cli::LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Start every storage node and both portals as child processes and
    /// supervise them until Ctrl-C or SIGTERM, restarting any that fail.
    /// Data already on disk is kept and resumed.
    Up(UpArgs),
    /// Ask a running `raftshop up` to restart its processes one at a time
    /// while the cluster serves.
    Restart(RestartArgs),
    /// Show each node's Raft role, health, term and log positions, who leads
    /// each shard, and the portals' health. Exits 1 unless both shards have a
    /// leader.
    Status(StatusArgs),
    /// Run the chaos suite on a cluster of its own: load, a seeded schedule
    /// of crashes, freezes and partitions, then the checkers' verdicts.
    /// Exits 1 unless every checker passed.
    Chaos(ChaosArgs),
    /// Acquire, release or inspect a replicated Lamport mutex.
    Lock(LockArgs),
    /// Follow the change feed of both shards as JSON lines (current values
    /// first, then every change), until Ctrl-C.
    Watch(WatchArgs),
    /// List the feed's topics with how many entities each holds.
    Topics(TopicsArgs),
    /// A shard's live membership, and changing it while it serves: add a
    /// learner, promote it, remove a member, hand leadership over.
    Member(super::member::MemberArgs),
    /// Back up both shards while the cluster serves, as one consistent cut
    /// (cross-shard orders wait for it a moment): a snapshot per shard and a
    /// manifest with their log indexes and checksums.
    Backup(super::backup::BackupArgs),
    /// Build a new cluster's data directories from a backup; refuses
    /// damaged or mismatched files, naming them.
    Restore(super::backup::RestoreArgs),
    /// Certificates for mutual TLS inside the cluster (`[tls]` in
    /// cluster.toml).
    Certs(super::certs::CertsArgs),
    /// The portals' users and their roles (`[auth]` in cluster.toml): add
    /// one (its token is printed once), remove one, list them.
    User(super::user::UserArgs),
    /// Demonstrations of the coordination primitives.
    #[command(subcommand)]
    Demo(DemoCommand),
    /// Measure throughput and latency with closed-loop clients, optionally
    /// side by side with a local etcd.
    Bench(BenchArgs),
    /// Clients and products through the AdminPortal: one call per verb,
    /// JSON out (exit 1 if the shop refuses, 2 if it cannot be reached);
    /// without a verb, a prompt.
    Admin(super::admin::AdminArgs),
    /// Orders through the OrderPortal: one call per verb, JSON out (exit 1
    /// if the shop refuses, 2 if it cannot be reached); without a verb, a
    /// prompt for one client (`--cid`).
    Order(super::order::OrderArgs),
}

/// What `raftshop bench` compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// A three-member etcd (Debian's `etcd-server`), started by the bench.
    Etcd,
}

/// Flags of `raftshop bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run, in order.
    #[arg(long = "workload", value_enum, num_args = 1.., value_delimiter = ',', default_value = "kv-put")]
    pub workloads: Vec<raftshop::bench::workload::Workload>,
    /// Concurrent clients; a list runs a sweep (e.g. 1,16,64,256).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub clients: Vec<usize>,
    /// HTTP/2 connections the clients share (per target).
    #[arg(long, default_value = "4")]
    pub connections: usize,
    /// Measured seconds per point.
    #[arg(long, default_value = "10")]
    pub duration: f64,
    /// Unmeasured seconds before each point.
    #[arg(long, default_value = "2")]
    pub warmup: f64,
    /// Times each point is measured. Targets take turns, swapping who goes
    /// first each time (raftshop then etcd, then etcd then raftshop, ...),
    /// and a summary gives each figure's median over the rounds.
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Distinct keys (key-value) or seeded products (portal workloads),
    /// spread over both shards (products: half in each).
    #[arg(long, default_value = "10000")]
    pub keys: u64,
    /// Bytes per value (key-value workloads).
    #[arg(long, default_value = "256")]
    pub value_size: usize,
    /// Also run the key-value workloads against etcd, side by side, and
    /// create-product as etcd's put.
    #[arg(long, value_enum)]
    pub against: Option<Against>,
    /// Use these etcd members instead of starting one (host:port,...).
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<std::net::SocketAddr>>,
    /// Start a cluster of its own in a temp dir instead of using the
    /// config's (which `raftshop up` runs).
    #[arg(long)]
    pub local: bool,
    /// With `--local`: mutual TLS between the cluster's processes (and from
    /// the bench to the nodes), with certificates made for the run.
    #[arg(long, requires = "local")]
    pub tls: bool,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// A portal user's token with the roles the workloads need (admin,
    /// clerk), for a cluster whose config has `[auth]`.
    #[arg(long, value_name = "TOKEN", env = portals::auth::TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
    /// Write the results as JSON: every measurement (each round's), in the
    /// order run.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw throughput and latency against clients as SVG.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// Flags of `raftshop lock`.
#[derive(Debug, Args)]
pub struct LockArgs {
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: LockCommand,
}

/// The `raftshop lock` verbs.
#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Request the mutex as site SITE, print the grant (with its fencing
    /// token) once granted, hold it until Ctrl-C or SIGTERM, then release.
    Acquire {
        /// The mutex.
        name: String,
        /// This site's id; ties between equal clocks go to the smaller.
        #[arg(long)]
        site: u64,
    },
    /// Send RELEASE for site SITE (e.g. for a site that crashed).
    Release {
        /// The mutex.
        name: String,
        /// The releasing site.
        #[arg(long)]
        site: u64,
    },
    /// Print the mutex: holder, queue, every site's clock.
    Status {
        /// The mutex.
        name: String,
    },
}

/// Flags of `raftshop watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Topic prefix, whole segments: clients, products/13, orders/7, locks.
    #[arg(default_value = "")]
    pub prefix: String,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Flags of `raftshop topics`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// Topic prefix, whole segments.
    #[arg(default_value = "")]
    pub prefix: String,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// The demos.
#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// Replay seed 001's three examples of Lamport's algorithm, printing each
    /// site's clock and the queue at every step.
    Lamport {
        /// The cluster config; defaults to ./cluster.toml, else the built-in one.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
    /// Seed 000's dice game: roll, broadcast, the winner writes the round's
    /// result under the mutex, a barrier before the next round.
    Dice {
        /// Players.
        #[arg(long, default_value = "5")]
        players: u64,
        /// Rounds.
        #[arg(long, default_value = "10")]
        rounds: u32,
        /// The cluster config; defaults to ./cluster.toml, else the built-in one.
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
    },
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
    /// Only these kinds of fault (e.g. `--kinds kill-leader` to measure
    /// failover); all seven by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub kinds: Vec<FaultKind>,
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
    /// Leave a process that fails stopped (report it and print how to start
    /// it by hand) instead of restarting it with backoff.
    #[arg(long)]
    pub no_restart: bool,
    /// Lock the portals too: their API over TLS, and every call needs a
    /// user (`[auth]`). The first time, makes a user `operator` with every
    /// role, prints its token and writes its certificate to the data
    /// directory. Needs `[tls]` (the default config has it).
    #[arg(long)]
    pub secure: bool,
}

/// Flags of `raftshop restart`.
#[derive(Debug, Args)]
pub struct RestartArgs {
    /// Restart every node, then the portals, one at a time, each node only
    /// once the previous one has caught up with its leader (the only way
    /// offered: the cluster serves throughout).
    #[arg(long, required = true)]
    pub rolling: bool,
    /// The data directory of the `raftshop up` to ask (its `--data-dir`).
    #[arg(long, value_name = "DIR", default_value = "data")]
    pub data_dir: PathBuf,
}

/// Flags of `raftshop status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Redraw the report every second until Ctrl-C.
    #[arg(long)]
    pub watch: bool,
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
    fn restart_asks_for_rolling_and_takes_ups_data_dir() {
        assert!(parse(&["restart"]).is_err(), "--rolling is the only kind, and must be said");
        let cli = parse(&["restart", "--rolling", "--data-dir", "/srv/up"]).expect("parses");
        let Command::Restart(restart) = cli.command else { panic!("restart parsed as {:?}", cli.command) };
        assert!(restart.rolling);
        assert_eq!(restart.data_dir, PathBuf::from("/srv/up"));
    }

    #[test]
    fn up_defaults_to_no_config_and_data_dir() {
        let Command::Up(up) = parse(&["up"]).expect("parses").command else { panic!("expected up") };
        assert_eq!(up.config, None);
        assert_eq!(up.data_dir, PathBuf::from("data"));
        assert!(!up.no_restart, "restarts are on by default");
    }

    #[test]
    fn up_takes_config_and_data_dir() {
        let cli = parse(&["up", "--config", "c.toml", "--data-dir", "/tmp/x", "--no-restart"]).expect("parses");
        let Command::Up(up) = cli.command else { panic!("expected up") };
        assert_eq!(up.config, Some(PathBuf::from("c.toml")));
        assert_eq!(up.data_dir, PathBuf::from("/tmp/x"));
        assert!(up.no_restart);
    }

    #[test]
    fn status_takes_config() {
        let Command::Status(status) = parse(&["status", "--config", "c.toml"]).expect("parses").command else {
            panic!("expected status")
        };
        assert_eq!(status.config, Some(PathBuf::from("c.toml")));
        assert!(!status.watch);
        let Command::Status(status) = parse(&["status", "--watch"]).expect("parses").command else {
            panic!("expected status")
        };
        assert!(status.watch);
    }

    #[test]
    fn unknown_flags_and_missing_command_are_refused() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["status", "--data-dir", "x"]).is_err());
        assert!(parse(&["down"]).is_err());
    }
}
