//! `raftshop bench --local`: a short run against a cluster of its own, with
//! a key-value and a portal workload measured in two rounds each. Checks
//! what the run leaves for people and scripts (the table, the summary of
//! medians, the JSON), not how fast anything is: figures belong in the
//! bench's output, not in a test that a slow machine fails.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

/// How long the whole run may take: a debug cluster starts, seeds and
/// measures four short points.
const RUN_TIMEOUT: Duration = Duration::from_secs(240);

#[tokio::test]
async fn a_short_bench_measures_every_round_and_writes_them_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("results.json");
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        // Not "launched by cargo": the executables beside this one are
        // current, so the run must not start a build of its own.
        .env_remove("CARGO")
        .env_remove("CARGO_MANIFEST_DIR")
        .current_dir(dir.path())
        .args(["bench", "--local", "--workload", "kv-put,create-product", "--clients", "2", "--keys", "100"])
        .args(["--duration", "1", "--warmup", "0.5", "--rounds", "2", "--json"])
        .arg(&json)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_TIMEOUT, run).await.expect("bench finished in time").expect("bench ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("medians over the rounds"), "no summary:\n{stdout}");
    assert!(stdout.contains("cpu/op: µs of CPU"), "the table explains its CPU columns:\n{stdout}");
    assert!(stderr.contains("round 2 of 2"), "the progress line names the round:\n{stderr}");

    let results: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("JSON written")).expect("JSON results");
    let points: BTreeSet<(String, u64)> = results
        .iter()
        .map(|m| (m["workload"].as_str().expect("workload").to_owned(), m["round"].as_u64().expect("round")))
        .collect();
    let expected: BTreeSet<(String, u64)> = ["KvPut", "CreateProduct"]
        .into_iter()
        .flat_map(|workload| [1, 2].map(|round| (workload.to_owned(), round)))
        .collect();
    assert_eq!(points, expected, "one measurement per workload and round: {results:#?}");
    for m in &results {
        assert!(m["ops"].as_u64().is_some_and(|ops| ops > 0), "nothing measured: {m}");
        assert_eq!(m["target"], "raftshop", "{m}");
        // The bench started the cluster, so it read its processes' CPU.
        assert!(m["server_cpu_us"].as_f64().is_some_and(|us| us > 0.0), "no server CPU per request: {m}");
        assert!(m["load_generator_cpu_us"].as_f64().is_some_and(|us| us > 0.0), "no load-generator CPU: {m}");
    }
}
