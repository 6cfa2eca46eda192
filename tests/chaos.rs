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
    assert!(report.orders["committed"] > 0, "{:?}", report.orders);
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
