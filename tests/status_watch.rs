//! `raftshop status --watch` redraws the report every second until Ctrl-C,
//! then exits with the last report's verdict; a leader change shows in the
//! next report.

mod common;

use std::process::Stdio;

use common::{binaries, cluster_with, STARTUP};
use raftshop::local_cluster::ClusterOptions;
use storage_node::Shard;
use tokio::io::{AsyncBufReadExt, BufReader};

/// Output lines until `times` of them matched `wanted` (within [`STARTUP`]
/// in all).
async fn until_seen(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    wanted: impl Fn(&str) -> bool,
    times: usize,
) -> String {
    let mut seen = 0;
    let mut output = String::new();
    let give_up = tokio::time::Instant::now() + STARTUP;
    while seen < times {
        let line = tokio::time::timeout_at(give_up, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("not seen in time:\n{output}"))
            .expect("stdout reads")
            .unwrap_or_else(|| panic!("stdout ended:\n{output}"));
        seen += usize::from(wanted(&line));
        output.push_str(&line);
        output.push('\n');
    }
    output
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_watch_redraws_until_ctrl_c() {
    let mut cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let leader = cluster.wait_for_leader(Shard::Odd, STARTUP).await.unwrap();
    let mut watch = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(["status", "--watch", "--config"])
        .arg(cluster.config_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("raftshop starts");
    let mut lines = BufReader::new(watch.stdout.take().expect("piped stdout")).lines();
    let first = until_seen(&mut lines, |l| l.contains("Ctrl-C to stop"), 2).await;
    assert!(first.contains(&format!("shard odd: leader node {leader}")), "{first}");

    cluster.kill(leader);
    let old = format!("shard odd: leader node {leader} ");
    let later = until_seen(&mut lines, |l| l.starts_with("shard odd: leader node ") && !l.starts_with(&old), 1).await;
    let killed_row = later.lines().rev().find(|l| l.split_whitespace().next() == Some(leader.to_string().as_str()));
    assert!(
        killed_row.is_some_and(|row| row.contains("unreachable")),
        "the killed node shows as unreachable:\n{later}"
    );

    let pid = watch.id().expect("still running");
    raftshop::process::signal(pid, raftshop::process::Signal::Interrupt).expect("Ctrl-C is delivered");
    let status = tokio::time::timeout(STARTUP, watch.wait()).await.expect("exits on Ctrl-C").expect("waits");
    assert_eq!(status.code(), Some(0), "both shards have a leader in the last report");
}
