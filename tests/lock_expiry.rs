//! A mutex holder that dies by SIGKILL loses the mutex when its session
//! lapses, and the next site gets it with a larger fencing token. The holder
//! is a real `raftshop lock acquire` process.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{binaries, cluster_with};
use raftshop::local_cluster::ClusterOptions;
use storage_node::client::{LamportSite, SESSION_TTL};
use storage_node::Shard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_holder_loses_the_mutex_when_its_session_lapses() {
    let cluster = cluster_with(ClusterOptions::new(binaries())).await;
    let mut holder = Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(["lock", "acquire", "printer", "--site", "1", "--config"])
        .arg(cluster.config_path())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let granted: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(granted["granted"], true, "{line}");
    let first_token = granted["token"].as_u64().unwrap();

    holder.kill().unwrap(); // SIGKILL: no release, no more keep-alives
    holder.wait().unwrap();
    let killed = Instant::now();

    let shard = Arc::new(cluster.shard_client(Shard::of_key("printer")));
    let next = LamportSite::new(shard, 2);
    let grant = tokio::time::timeout(SESSION_TTL + Duration::from_secs(10), next.acquire("printer"))
        .await
        .expect("the lapsed holder's grant passes on")
        .unwrap();
    let waited = killed.elapsed();
    assert!(grant.token > first_token, "a larger fencing token: {} after {first_token}", grant.token);
    assert!(waited + Duration::from_millis(200) >= SESSION_TTL / 2, "not before the session could lapse: {waited:?}");
    eprintln!("granted to site 2 {waited:?} after the holder was killed (session {SESSION_TTL:?})");
}
