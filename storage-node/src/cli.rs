//! The `storage-node` command line: parse flags, set up logging, run the
//! node until SIGTERM or Ctrl-C, and turn a failure into one line on stderr
//! and a non-zero exit code.

use std::path::PathBuf;

use clap::Parser;

use crate::config::ClusterConfig;
use crate::error::NodeError;
use crate::node::{self, NodeOptions};
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
}

/// Entry point of the `storage-node` binary.
pub fn main() -> ! {
    let args = Args::parse();
    init_tracing();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
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
    node::run(NodeOptions { id: args.id, config, origin }, shutdown_signal()).await
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

/// Logs to stderr; `RUST_LOG` sets the verbosity (default: info, with
/// openraft and sled quieter).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=warn,sled=warn,raft_log=warn,chunked_wal=warn")
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
}
