//! `raftshop chaos`: one chaos run against a cluster of its own.
//!
//! It starts six nodes behind link proxies and both portals in a temp dir
//! (so faults can kill, freeze and partition them without touching a
//! cluster of `up`'s), runs the workload and a seeded fault schedule, prints
//! progress and the report, saves the history, and exits 0 only if every
//! checker passed.

use std::process::ExitCode;
use std::time::Duration;

use raftshop::chaos::faults::FaultKind;
use raftshop::chaos::runner::{self, ChaosOptions};
use raftshop::local_cluster::ClusterOptions;

use super::args::ChaosArgs;
use super::binaries;

/// Runs `raftshop chaos`.
pub async fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    let binaries = binaries::cluster_binaries().await?;
    let mut cluster = ClusterOptions::new(binaries);
    if args.planted_stale_reads {
        println!("PLANTED BUG: nodes answer reads from local state without a read index; the run must FAIL");
        cluster.node_env.push((storage_node::service::UNSAFE_LOCAL_READS_ENV.into(), "1".into()));
    }
    let seed = args.seed.unwrap_or_else(rand::random::<u16>).into();
    let history = args.history.clone().unwrap_or_else(|| format!("chaos-history-{seed}.jsonl").into());
    let options = ChaosOptions {
        seed,
        faults: args.faults,
        kinds: if args.kinds.is_empty() { FaultKind::ALL.to_vec() } else { args.kinds.clone() },
        min_duration: Duration::from_secs(args.duration_secs),
        kv_clients: args.kv_clients,
        order_clients: args.order_clients,
        keys_per_shard: args.keys_per_shard,
        check_budget: Duration::from_secs(args.check_budget_secs),
        history_path: Some(history),
        verbose: true,
    };
    println!(
        "chaos: seed {seed}, {} faults, at least {} s, {} key-value and {} order clients (reproduce with --seed {seed})",
        options.faults, args.duration_secs, options.kv_clients, options.order_clients
    );
    let report = runner::run(cluster, options).await.map_err(anyhow::Error::msg)?;
    print!("{}", runner::render(&report));
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
