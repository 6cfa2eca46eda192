//! `raftshop up` keeps the cluster up: a storage node killed with SIGKILL is
//! restarted by `up` (and says so), answers again, `raftshop status` shows
//! every node and portal healthy, and stopping `up` leaves no child behind.
//! The nodes are advertised by host name, so every link resolves one.
//! `raftshop restart --rolling` restarts every process one at a time while
//! a client's writes all succeed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftshop::local_cluster::local_config;
use raftshop::process::{self, Signal};
use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;
use storage_node::{Command as StoreCommand, NodeId, RowKey, RowWrite, Shard};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// How long `up` has to get the cluster ready, and a node to come back.
const DEADLINE: Duration = Duration::from_secs(60);
/// The node this test kills.
const VICTIM: NodeId = 2;

/// A cluster config on free ports with its data under `dir`, written to
/// `dir/cluster.toml`. The nodes are advertised by host name
/// (`localhost:PORT`), as on real hosts, so peers and clients resolve it.
fn write_config(dir: &Path) -> (ClusterConfig, PathBuf) {
    let mut config = local_config(dir, ClusterConfig::embedded().raft).expect("free ports");
    for node in &mut config.nodes {
        node.advertise = Some(format!("localhost:{}", node.addr.port()));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, config.to_toml()).expect("config written");
    (config, path)
}

/// A running `raftshop up`, its output lines, and every child pid it
/// reported. Dropping it kills them all, so a failing test leaves nothing.
struct Up {
    /// The `up` process.
    child: Child,
    /// Its stdout, line by line.
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for failure messages.
    seen: Vec<String>,
    /// Every pid of a child `up` started, by child name (restarts added).
    pids: BTreeMap<String, Vec<i32>>,
}

impl Up {
    /// Starts `raftshop up` in `dir` with `config`.
    fn start(dir: &Path, config: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_raftshop"))
            .args(["up", "--config"])
            .arg(config)
            .arg("--data-dir")
            .arg(dir.join("up"))
            .current_dir(dir)
            .env_remove("CARGO") // else `up` would run cargo build first
            .env_remove("CARGO_MANIFEST_DIR")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("raftshop up starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                let _ = tx.send(line);
            }
        });
        Up { child, lines, seen: Vec::new(), pids: BTreeMap::new() }
    }

    /// Reads lines until one contains `needle`; returns it.
    async fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let line = match timeout(deadline.saturating_duration_since(Instant::now()), self.lines.recv()).await {
                Ok(Some(line)) => line,
                Ok(None) => panic!("up's output ended before {needle:?}:\n{}", self.seen.join("\n")),
                Err(_) => panic!("no {needle:?} within {DEADLINE:?}:\n{}", self.seen.join("\n")),
            };
            self.note_pids(&line);
            self.seen.push(line.clone());
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Records the pids of the listing's rows and of restarts.
    fn note_pids(&mut self, line: &str) {
        let words: Vec<&str> = line.split_whitespace().collect();
        let found = match words.as_slice() {
            [name, "restarted", "(pid", pid] => Some((name, pid.trim_end_matches(')'))),
            [name, addr, pid, ..] if addr.parse::<std::net::SocketAddr>().is_ok() => Some((name, *pid)),
            _ => None,
        };
        if let Some((name, pid)) = found.and_then(|(name, pid)| Some((name, pid.parse().ok()?))) {
            self.pids.entry((*name).to_owned()).or_default().push(pid);
        }
    }

    /// The latest pid of child `name`.
    fn pid(&self, name: &str) -> i32 {
        *self.pids.get(name).and_then(|pids| pids.last()).unwrap_or_else(|| panic!("no pid of {name} yet"))
    }

    /// Every child pid still alive.
    fn alive(&self) -> Vec<i32> {
        self.pids.values().flatten().copied().filter(|pid| is_alive(*pid)).collect()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        for pid in self.alive() {
            signal(pid, Signal::Kill);
        }
    }
}

/// True if process `pid` exists.
fn is_alive(pid: i32) -> bool {
    u32::try_from(pid).is_ok_and(process::is_alive)
}

/// Sends `signal` to process `pid`, if it still runs.
fn signal(pid: i32, signal: Signal) {
    if let Ok(pid) = u32::try_from(pid) {
        let _ = process::signal(pid, signal);
    }
}

/// Waits until node `id` answers `Status` and its shard has a leader.
async fn wait_until_answering(client: &ClusterClient, shard: Shard, id: NodeId) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let answer = client.shard(shard).status(id, Duration::from_millis(500)).await;
        match answer {
            Ok(status) if status.leader_id.is_some() => return,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("node {id} did not come back within {DEADLINE:?}: {other:?}"),
        }
    }
}

/// Runs `raftshop status --config config`: its exit code and stdout.
async fn status(config: &Path) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(["status", "--config"])
        .arg(config)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("raftshop status runs");
    (output.status.code().expect("status exits"), String::from_utf8(output.stdout).expect("utf-8"))
}

/// `raftshop up` of a fresh cluster in a temp dir, once it reported ready
/// with its eight processes: the dir (removed when dropped), the config and
/// its file, and the running `up`.
async fn ready_up() -> (tempfile::TempDir, ClusterConfig, PathBuf, Up) {
    let dir = tempfile::Builder::new().prefix("raftshop-up-").tempdir().expect("temp dir");
    let (config, config_path) = write_config(dir.path());
    let mut up = Up::start(dir.path(), &config_path);
    up.wait_for("ready in").await;
    assert_eq!(up.pids.len(), 8, "six nodes and two portals listed: {:?}", up.pids);
    (dir, config, config_path, up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_restarts_a_killed_node_and_leaves_nothing_behind() {
    let (_dir, config, config_path, mut up) = ready_up().await;

    let victim = format!("node-{VICTIM}");
    signal(up.pid(&victim), Signal::Kill);
    let restarting = up.wait_for(&format!("{victim} exited unexpectedly")).await;
    assert!(restarting.contains("(signal: 9 (SIGKILL)); restarting it in 0.5 s"), "{restarting}");
    up.wait_for(&format!("{victim} restarted (pid")).await;
    assert_eq!(up.pids[&victim].len(), 2, "a new process");
    wait_until_answering(&ClusterClient::new(&config), Shard::Even, VICTIM).await;

    let (code, table) = status(&config_path).await;
    assert_eq!(code, 0, "both shards have a leader:\n{table}");
    for node in &config.nodes {
        let row = table.lines().find(|l| l.contains(&node.reach())).expect("a row per node");
        assert!(row.contains(" SERVING "), "node {} is healthy: {row}", node.id);
    }
    for portal in ["admin-portal", "order-portal"] {
        let row = table.lines().find(|l| l.starts_with(portal)).unwrap_or_else(|| panic!("a row for {portal}"));
        assert!(!row.ends_with("unreachable"), "{portal} answers health checks: {row}");
    }

    signal(up.child.id().expect("up runs") as i32, Signal::Terminate);
    let exit = timeout(DEADLINE, up.child.wait()).await.expect("up stops in time").expect("up exits");
    assert!(exit.success(), "up exits 0 after SIGTERM: {exit}");
    assert_eq!(up.alive(), Vec::<i32>::new(), "no child outlives up");
    up.wait_for("SIGTERM received; stopping the cluster").await;
    let stopping = up.wait_for("stopping").await;
    assert!(stopping.starts_with("stopping 8 processes"), "every child, the restarted one too: {stopping}");
}

/// A `raftshop up` killed by SIGKILL runs no destructor and stops nothing in
/// order; the kernel still takes its nodes and portals with it, so none
/// holds its port and data directory against the next `up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_up_leaves_no_child_behind() {
    let (_dir, _, _, mut up) = ready_up().await;
    signal(up.child.id().expect("up runs") as i32, Signal::Kill);
    up.child.wait().await.expect("up is reaped");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !up.alive().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(up.alive(), Vec::<i32>::new(), "no child outlives a killed up");
}

/// `raftshop restart --rolling` has `up` restart every node, then the
/// portals, one at a time, while a client keeps writing to both shards:
/// every write is acknowledged (the client retries within its deadline, as
/// it does through a leader change), every process runs under a new pid,
/// and the longest pause between two acknowledged writes is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_restarts_every_process_while_writes_go_on() {
    let (dir, config, _, mut up) = ready_up().await;

    let stop = Arc::new(AtomicBool::new(false));
    let client = ClusterClient::new(&config);
    let writer = tokio::spawn({
        let stop = stop.clone();
        async move {
            let (mut acked, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let key = RowKey::Kv(format!("rolling-{}", n % 16));
                let write = StoreCommand::single(RowWrite::upsert(key.clone(), n.to_string().into_bytes()));
                match client.shard(key.shard()).write(&write, Duration::from_secs(10)).await {
                    Ok(_) => acked.push(std::time::Instant::now()),
                    Err(error) => failed.push(error.to_string()),
                }
            }
            (acked, failed)
        }
    });

    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(["restart", "--rolling", "--data-dir"])
        .arg(dir.path().join("up"))
        .output()
        .await
        .expect("raftshop restart runs");
    assert!(asked.status.success(), "{}", String::from_utf8_lossy(&asked.stderr));
    let done = up.wait_for("rolling restart done").await;
    stop.store(true, Ordering::Relaxed);
    let (acked, failed) = writer.await.unwrap();

    assert_eq!(failed, Vec::<String>::new(), "no write failed");
    for (name, pids) in &up.pids {
        assert_eq!(pids.len(), 2, "{name} was restarted once: {pids:?}");
        assert!(!is_alive(pids[0]), "{name}'s first process is gone");
    }
    let longest = acked.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default();
    eprintln!("{done}; {} writes acknowledged, the longest pause between two: {longest:?}", acked.len());
    assert!(acked.len() > 50, "writes went on: {}", acked.len());
}
