//! The `admin-portal` and `order-portal` command lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use storage_node::client::ClusterClient;
use storage_node::ClusterConfig;

use crate::server::{self, PortalKind};
use crate::service::Portal;
use crate::shop::Shop;

/// A stateless raftshop portal.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Where to listen; defaults to the portal's address in the config.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// How long one call may take before it is answered 503.
    #[arg(long, default_value = "5000")]
    pub deadline_ms: u64,
}

/// Entry point of `admin-portal`.
pub fn admin_main() -> ! {
    main(PortalKind::Admin)
}

/// Entry point of `order-portal`.
pub fn order_main() -> ! {
    main(PortalKind::Order)
}

fn main(kind: PortalKind) -> ! {
    let args = Args::parse();
    storage_node::cli::init_tracing();
    let runtime = tokio::runtime::Runtime::new().expect("cannot start the tokio runtime");
    match runtime.block_on(run(kind, args)) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            eprintln!("{}: error: {message}", kind.name());
            std::process::exit(2)
        }
    }
}

async fn run(kind: PortalKind, args: Args) -> Result<(), String> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref()).map_err(|e| e.to_string())?;
    let addr = args.listen.unwrap_or(match kind {
        PortalKind::Admin => config.portals.admin,
        PortalKind::Order => config.portals.order,
    });
    let listener = server::bind(kind, addr).await?;
    let shop = Shop::new(ClusterClient::new(&config), Duration::from_millis(args.deadline_ms));
    tracing::info!(portal = kind.name(), %addr, config = %origin, "serving");
    server::serve(kind, listener, Portal { shop }, storage_node::cli::shutdown_signal())
        .await
        .map_err(|e| format!("the gRPC server failed: {e}"))?;
    tracing::info!(portal = kind.name(), "stopped cleanly");
    Ok(())
}
