//! The `storage-node` command line: parse flags, set up logging, run the
//! node until SIGTERM or Ctrl-C, and turn a failure into one line on stderr
//! and a non-zero exit code.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::config::ClusterConfig;
use crate::error::NodeError;
use crate::node::housekeeping::TXN_RETENTION;
use crate::node::last_run::LastRun;
use crate::node::{self, NodeOptions};
use crate::state::Verification;
use crate::types::NodeId;

/// One member of a raftshop shard.
#[derive(Debug, Parser)]
#[command(name = "storage-node", version, about)]
pub struct Args {
    /// This node's id in the cluster config (1-6 in the default topology).
    #[arg(long)]
    pub id: NodeId,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How to write log lines to stderr: `text` or `json` (one object per line).
    #[arg(long, value_enum, default_value_t, env = LOG_FORMAT_ENV)]
    pub log_format: LogFormat,
    /// Threads that run the node's requests and Raft: 1 (the default) runs
    /// them all on one thread, 0 gives one per core.
    #[arg(long, default_value_t = 1, env = WORKER_THREADS_ENV)]
    pub worker_threads: usize,
    /// Recovery from a lost majority: make this node the only member of its
    /// shard, with its data, then serve. DANGEROUS: every entry in this
    /// node's log becomes committed, and entries the lost members committed
    /// but this node never received are gone. Use it on the surviving member
    /// with the longest log, only when the others cannot come back, and only
    /// once: start without it afterwards. Add new members with `raftshop
    /// member add` and `promote`.
    #[arg(long)]
    pub force_new_cluster: bool,
    /// Check this node's state instead of starting it: open the state as
    /// start-up does, sum the state digest afresh over its rows, and compare
    /// it with the digest the node keeps write by write. Exit code 0 if they
    /// match, 1 if not or if the state cannot be read (the node's next
    /// start then rebuilds it from its snapshot and log), 2 if the check
    /// cannot run (the node is running, say). Writes as start-up does
    /// (sled's recovery, the redo of a batch a crash cut short). A node
    /// checks itself at start-up when its last run was on an earlier boot;
    /// this is the same check by hand. See
    /// docs/operations.md, "Checking replicas after a power cut".
    #[arg(long, conflicts_with = "force_new_cluster")]
    pub verify_state: bool,
    /// The newest layout (`state::layout`) this node tells its shard it knows
    /// (and, leading, switches the shard to); defaults to this build's
    /// newest. For rehearsing an upgrade from a build that knew only older
    /// layouts.
    #[arg(long, hide = true, alias = "newest-feed-layout", env = NEWEST_LAYOUT_ENV, value_parser = clap::value_parser!(u32).range(1..=crate::state::layout::NEWEST as i64))]
    pub newest_layout: Option<u32>,
    /// How long the leader keeps a finished cross-shard transaction's
    /// record, in seconds (default: `TXN_RETENTION`). For tests that watch
    /// records being forgotten.
    #[arg(long, hide = true, env = TXN_RETENTION_ENV, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub txn_retention_secs: Option<u64>,
}

/// Entry point of the `storage-node` binary.
pub fn main() -> ! {
    if std::env::var_os(NEWEST_LAYOUT_ENV).is_none() {
        if let Some(layout) = std::env::var_os(LEGACY_NEWEST_LAYOUT_ENV) {
            // Before any thread starts, so nothing reads the environment meanwhile.
            std::env::set_var(NEWEST_LAYOUT_ENV, layout);
        }
    }
    let args = Args::parse();
    init_tracing(args.log_format, NODE_LOG_FILTER);
    if args.verify_state {
        std::process::exit(verify_state(&args));
    }
    crate::node::memory::disable_transparent_huge_pages();
    let runtime = build_runtime(args.worker_threads).unwrap_or_else(|error| {
        eprintln!("storage-node: error: cannot start the tokio runtime: {error}");
        std::process::exit(1)
    });
    let outcome = runtime.block_on(run(args));
    match outcome {
        Ok(()) => std::process::exit(0),
        Err(error) => {
            eprintln!("storage-node: error: {error}");
            std::process::exit(if error.is_operator_error() { 2 } else { 1 })
        }
    }
}

async fn run(args: Args) -> Result<(), NodeError> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref())?;
    let options = NodeOptions {
        id: args.id,
        config,
        origin,
        force_new_cluster: args.force_new_cluster,
        newest_layout: args.newest_layout.unwrap_or(crate::state::layout::NEWEST),
        txn_retention: args.txn_retention_secs.map_or(TXN_RETENTION, Duration::from_secs),
    };
    node::run(options, shutdown_signal()).await
}

/// `--verify-state`: prints what [`crate::state::verify_state`] found in
/// node `args.id`'s state and returns the exit code: 0 whole, 1 damaged
/// (its rows differ from what it applied, or cannot be read; recorded so
/// that its next start rebuilds it), 2 not checked (a bad config, another
/// node's directory, the node still running, no state yet).
fn verify_state(args: &Args) -> i32 {
    let me = args.id;
    let not_checked = |error: &dyn std::fmt::Display| {
        eprintln!("storage-node: error: {error}");
        2
    };
    let config = match ClusterConfig::load_or_default(args.config.as_deref()) {
        Ok((config, _)) => config,
        Err(error) => return not_checked(&error),
    };
    let Some(node) = config.node(me) else {
        return not_checked(&format!("node {me} is not in the cluster config"));
    };
    let identity = node::identity::NodeIdentity { node_id: me, shard: node.shard };
    if let Err(error) = node::identity::check(&node.data_dir, identity, &config.cluster_id) {
        return not_checked(&error);
    }
    let dir = node.data_dir.join("state");
    // sled may panic on a damaged state: that is damage too.
    let verified = std::panic::catch_unwind(|| crate::state::verify_state(&dir))
        .unwrap_or_else(|_| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "sled panicked reading it")));
    match verified {
        Ok(Verification::Checked { applied, rows, kept, summed }) => {
            let index = applied.map_or(0, |id| id.index);
            if kept == summed {
                println!("node {me}: {rows} rows at applied index {index} sum to the digest the node keeps ({kept:016x}): the state is whole");
                0
            } else {
                println!(
                    "node {me}: {rows} rows at applied index {index} sum to {summed:016x}, but the node keeps {kept:016x}: \
                     its rows differ from what it applied; {}",
                    rebuild_at_next_start(&node.data_dir)
                );
                1
            }
        }
        Ok(Verification::InstallCutShort) => {
            println!(
                "node {me}: a snapshot install was cut short; the node installs the snapshot again when it starts, so there is nothing to check"
            );
            0
        }
        Ok(Verification::NoState) => not_checked(&format!("cannot check {}: it holds no state", dir.display())),
        Err(error) if !crate::state::machine::is_damage(&error) => {
            not_checked(&format!("cannot check {}: {error}", dir.display()))
        }
        Err(error) => {
            println!(
                "node {me}: its state in {} cannot be read ({error}); {}",
                dir.display(),
                rebuild_at_next_start(&node.data_dir)
            );
            1
        }
    }
}

/// Records in `data_dir` that the node's state is damaged, so that its
/// next start checks it again and rebuilds it, and says what comes next.
fn rebuild_at_next_start(data_dir: &std::path::Path) -> String {
    const SECTION: &str = "docs/operations.md, \"Checking replicas after a power cut\"";
    match LastRun::Damaged.write(data_dir) {
        Ok(()) => format!(
            "when it next starts, the node moves this state aside and rebuilds it from its current snapshot and its \
             log, or, if those no longer reach back far enough, refuses to start: then replace this member under a \
             new id ({SECTION})"
        ),
        Err(error) => format!(
            "recording that in {} failed ({error}), so its next start may not rebuild it; replace this member under \
             a new id ({SECTION})",
            data_dir.display()
        ),
    }
}

/// Resolves on the first SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("cannot install the SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}

/// The log filter of nodes and portals when `RUST_LOG` is not set: info,
/// with openraft and the storage crates quieter.
pub const NODE_LOG_FILTER: &str = "info,openraft=warn,sled=warn,raft_log=warn,chunked_wal=warn";

/// Environment variable that sets the hidden `--newest-layout`.
pub const NEWEST_LAYOUT_ENV: &str = "RAFTSHOP_NEWEST_LAYOUT";
/// Its name while layouts were the change feed's only; still read (see
/// [`main`]), so a rehearsal that holds nodes back with it does not switch
/// the shard.
pub const LEGACY_NEWEST_LAYOUT_ENV: &str = "RAFTSHOP_NEWEST_FEED_LAYOUT";

/// Environment variable that sets the hidden `--txn-retention-secs`.
pub const TXN_RETENTION_ENV: &str = "RAFTSHOP_TXN_RETENTION_SECS";

/// Environment variable that sets `--worker-threads` (of nodes and portals).
pub const WORKER_THREADS_ENV: &str = "RAFTSHOP_WORKER_THREADS";

/// The async runtime of a node or portal with `threads` worker threads:
/// one (a current-thread runtime) runs every task on the thread that
/// blocks on it, 0 means one per core. Blocking work (snapshot files, the
/// state writer's batches) has threads of its own either way.
///
/// One is the default because a task handed from one worker thread to
/// another waits for that thread to wake; on a small machine shared by
/// several nodes that wait was most of the gap between a write's Raft
/// steps (docs/performance.md, "One thread per process").
pub fn build_runtime(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        0 => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
        n => tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build(),
    }
}

/// Environment variable that sets `--log-format` (of every raftshop
/// process; `raftshop up` hands its own format to the processes it starts).
pub const LOG_FORMAT_ENV: &str = "RAFTSHOP_LOG_FORMAT";

/// How a process writes its log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event, for people.
    #[default]
    Text,
    /// One JSON object per line, for log collectors: `timestamp`, `level`,
    /// `fields` (with the `message`), and `spans` (the request id of the
    /// call it belongs to, for example).
    Json,
}

impl LogFormat {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// The format [`init_tracing`] set up for this process.
static FORMAT: std::sync::OnceLock<LogFormat> = std::sync::OnceLock::new();

/// The format this process logs in (text until [`init_tracing`] ran).
pub fn log_format() -> LogFormat {
    FORMAT.get().copied().unwrap_or_default()
}

/// Logs to stderr in `format`; `RUST_LOG` sets the verbosity, else
/// `default_filter` does.
pub fn init_tracing(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => subscriber.with_target(false).init(),
        LogFormat::Json => subscriber.json().with_current_span(false).with_span_list(true).init(),
    }
    let _ = FORMAT.set(format);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_thread_count_gives_a_runtime_that_runs_spawned_tasks() {
        for threads in [0, 1, 3] {
            let runtime = build_runtime(threads).expect("a runtime");
            let answer = runtime.block_on(async { tokio::spawn(async { 6 * 7 }).await.expect("the task ran") });
            assert_eq!(answer, 42, "{threads} threads");
            let flavor = runtime.handle().runtime_flavor();
            assert_eq!(flavor == tokio::runtime::RuntimeFlavor::CurrentThread, threads == 1, "{threads} threads");
        }
    }
}
