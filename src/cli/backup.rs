//! `raftshop backup DIR` and `raftshop restore DIR --into BASE`: online
//! backups of both shards as one consistent cut, and new data directories
//! built from one (see `raftshop::backup` and `docs/design/backup.md`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use storage_node::config::ClusterConfig;

/// `raftshop backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    /// A new (or empty) directory for the backup.
    pub dir: PathBuf,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Longest time cross-shard orders may wait for the backup's cut, in
    /// seconds (the fence lapses by itself after it, at most 60).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub hold: u64,
}

/// `raftshop restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The backup directory (`raftshop backup`'s).
    pub dir: PathBuf,
    /// Where the nodes' relative `data_dir`s resolve (as under `raftshop up`
    /// started there). Each data directory must be missing or empty.
    #[arg(long, value_name = "BASE", default_value = ".")]
    pub into: PathBuf,
    /// The config of the cluster to build; defaults to ./cluster.toml, else
    /// the built-in one. Its members may differ in ids and addresses from
    /// the backed-up cluster's.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// Runs `raftshop backup`.
pub async fn backup(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref())?;
    match raftshop::backup::take(&config, &args.dir, Duration::from_secs(args.hold)).await {
        Ok(manifest) => {
            for (shard, backup) in &manifest.shards {
                println!(
                    "shard {shard}: log index {}, {} bytes, checksum {}",
                    backup.index, backup.bytes, backup.checksum
                );
            }
            println!("backup of the cluster in {origin} written to {}", args.dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("backup failed: {error}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Runs `raftshop restore`.
pub async fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref())?;
    match raftshop::backup::restore(&args.dir, &config, &args.into).await {
        Ok(shards) => {
            for (shard, index) in shards {
                println!("shard {shard}: restored at log index {index}");
            }
            println!(
                "data directories of the cluster in {origin} built under {}; start it (e.g. `raftshop up` there)",
                args.into.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("restore failed: {error}");
            Ok(ExitCode::from(1))
        }
    }
}
