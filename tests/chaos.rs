//! The chaos suite inside `cargo test`: a short run with every fault kind
//! must pass every checker, and the same run with a planted bug (reads
//! served without a read index) must be caught. A longer run is behind
//! `--ignored`:
//!
//! ```sh
//! cargo test --release --test chaos -- --ignored --nocapture
//! ```

mod common;

use std::time::Duration;

use common::binaries;
use raftshop::chaos::faults::FaultKind;
use raftshop::chaos::runner::{self, ChaosOptions, ChaosReport};
use raftshop::local_cluster::ClusterOptions;

async fn chaos(options: ChaosOptions, planted_stale_reads: bool) -> ChaosReport {
    let mut cluster = ClusterOptions::new(binaries());
    if planted_stale_reads {
        cluster.node_env.push((storage_node::service::UNSAFE_LOCAL_READS_ENV.into(), "1".into()));
    }
    let report = runner::run(cluster, options).await.expect("the run completes");
    eprintln!("{}", runner::render(&report));
    report
}

/// Every kind once, about twenty seconds of load.
fn short(seed: u64) -> ChaosOptions {
    ChaosOptions {
        seed,
        faults: FaultKind::ALL.len(),
        min_duration: Duration::from_secs(15),
        verbose: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_chaos_run_passes_every_checker() {
    let history = std::env::temp_dir().join(format!("raftshop-chaos-short-{}.jsonl", std::process::id()));
    let report = chaos(ChaosOptions { history_path: Some(history.clone()), ..short(11) }, false).await;
    let saved = raftshop::chaos::history::load(&history).expect("the history was saved");
    assert!(saved.len() as u64 >= report.checked_operations(), "every operation is in the saved history");
    let faults: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(runner::report_path(&history)).unwrap()).unwrap();
    assert_eq!(faults["faults"].as_array().map(Vec::len), Some(FaultKind::ALL.len()), "faults saved beside it");
    assert_eq!(report.faults.len(), FaultKind::ALL.len());
    for kind in FaultKind::ALL {
        assert!(report.faults.iter().any(|f| f.kind == kind), "{kind} was injected");
    }
    assert!(report.checked_operations() > 500, "enough load to mean something: {:?}", report.operations);
    // More units sold than the shop ever had: stock given back was sold
    // again, so orders kept committing through the faults.
    let whole_stock = runner::PRODUCTS.len() as u64 * runner::INITIAL_STOCK;
    assert!(report.orders["units sold"] > whole_stock, "{:?}", report.orders);
    assert!(report.orders["deleted"] > 0, "{:?}", report.orders);
    // Prices changed while orders were made: the invariants hold each
    // line to a price its product had then.
    assert!(report.orders["prices changed"] > 10, "{:?}", report.orders);
    assert!(report.orders["checked against the ledger"] > report.orders["committed"], "{:?}", report.orders);
    assert_eq!(report.linearizability, "linearizable");
    assert!(report.lost_writes.is_empty(), "{:?}", report.lost_writes);
    assert!(report.diverged.is_empty(), "{:?}", report.diverged);
    assert!(report.broken_invariants.is_empty(), "{:?}", report.broken_invariants);
    assert!(report.passed());
    // Kept when an assertion failed, for a post-mortem.
    let _ = std::fs::remove_file(&history);
    let _ = std::fs::remove_file(runner::report_path(&history));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_reads_without_a_read_index() {
    let report = chaos(short(12), true).await;
    assert!(
        report.linearizability.starts_with("violation"),
        "the planted stale reads were caught: {}",
        report.linearizability
    );
    assert!(!report.passed());
}

/// Pids of the processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Field 4 of /proc/PID/stat, after the parenthesized name.
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
            after_name.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// A child process killed when the test ends, also by a failed assertion.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process running a local cluster (here `raftshop chaos`) that dies of
/// SIGKILL, so no destructor runs, takes its nodes and portals with it.
#[test]
fn a_killed_chaos_run_leaves_no_process_behind() {
    // The run's cluster directory lands here, removed with it.
    let temp = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(["chaos", "--faults", "1", "--duration", "120"])
        .env("TMPDIR", temp.path())
        .env_remove("CARGO") // else the CLI would run `cargo build` first
        .env_remove("CARGO_MANIFEST_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut run = KillOnDrop(run);
    let started = std::time::Instant::now();
    let children = loop {
        let children = children_of(run.0.id());
        if children.len() >= 6 {
            break children;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the run started its nodes: {children:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    run.0.kill().unwrap();
    run.0.wait().unwrap();
    let alive = |pid: &u32| raftshop::process::is_alive(*pid);
    for _ in 0..100 {
        if !children.iter().any(alive) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("children of the killed run live on: {:?}", children.iter().filter(|p| alive(p)).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "several minutes; run with --ignored"]
async fn a_long_chaos_run_passes_every_checker() {
    let faults = std::env::var("CHAOS_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(21);
    let options = ChaosOptions {
        seed: 2026,
        faults,
        min_duration: Duration::from_secs(120),
        verbose: true,
        history_path: Some(std::env::temp_dir().join("raftshop-chaos-long.jsonl")),
        ..Default::default()
    };
    let report = chaos(options, false).await;
    assert!(report.checked_operations() >= 10_000, "{:?}", report.operations);
    assert!(report.passed());
}
