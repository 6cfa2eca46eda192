//! The `admin-portal` and `order-portal` command lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use storage_node::client::ClusterClient;
use storage_node::ClusterConfig;

use crate::console::Console;
use crate::listing::MAX_LISTED_ORDERS;
use crate::server::{self, PortalKind};
use crate::service::{Portal, MAX_CALLS_IN_FLIGHT};
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
    /// Where to serve Prometheus metrics (`GET /metrics`); defaults to the
    /// portal's metrics address in the config, if it has one.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Where the admin portal serves the web console (`GET /`); defaults
    /// to `console` under `[portals]` in the config, if it has one.
    #[arg(long)]
    pub console: Option<SocketAddr>,
    /// How to write log lines to stderr: `text` or `json` (one object per line).
    #[arg(long, value_enum, default_value_t, env = storage_node::cli::LOG_FORMAT_ENV)]
    pub log_format: storage_node::cli::LogFormat,
    /// Threads that serve calls: 1 (the default) serves them all on one
    /// thread, 0 gives one per core.
    #[arg(long, default_value_t = 1, env = storage_node::cli::WORKER_THREADS_ENV)]
    pub worker_threads: usize,
    /// How long one call may take before it is answered 503.
    #[arg(long, default_value = "5000")]
    pub deadline_ms: u64,
    /// Most calls served at once; more are answered 503 at once.
    #[arg(long, default_value_t = MAX_CALLS_IN_FLIGHT, value_parser = at_least_one())]
    pub max_calls_in_flight: usize,
    /// Most orders one RetrieveClientOrders call lists; the stream of a
    /// client with more ends with a RESOURCE_EXHAUSTED status saying so.
    #[arg(long, default_value_t = MAX_LISTED_ORDERS, value_parser = at_least_one())]
    pub max_listed_orders: usize,
}

/// A count flag that must be at least 1.
fn at_least_one() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..)
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
    storage_node::cli::init_tracing(args.log_format, storage_node::cli::NODE_LOG_FILTER);
    storage_node::node::memory::disable_transparent_huge_pages();
    let runtime = storage_node::cli::build_runtime(args.worker_threads).unwrap_or_else(|error| {
        eprintln!("{}: error: cannot start the tokio runtime: {error}", kind.name());
        std::process::exit(1)
    });
    match runtime.block_on(run(kind, args)) {
        Ok(()) => std::process::exit(0),
        Err(message) => {
            eprintln!("{}: error: {message}", kind.name());
            std::process::exit(2)
        }
    }
}

async fn run(kind: PortalKind, args: Args) -> Result<(), String> {
    if args.console.is_some() && kind != PortalKind::Admin {
        return Err(format!("--console: only the admin portal serves the web console, not the {}", kind.name()));
    }
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref()).map_err(|e| e.to_string())?;
    let addr = args.listen.unwrap_or(match kind {
        PortalKind::Admin => config.portals.admin,
        PortalKind::Order => config.portals.order,
    });
    let gate = match &config.auth {
        Some(auth) => Some(crate::auth::Gate::open(&auth.users).map_err(|e| format!("[auth] in {origin}: {e}"))?),
        None => None,
    };
    let listener = server::bind(kind, addr).await?;
    let metrics_addr = args.metrics.or(match kind {
        PortalKind::Admin => config.portals.admin_metrics,
        PortalKind::Order => config.portals.order_metrics,
    });
    if let Some(metrics_addr) = metrics_addr {
        let listener = server::bind(kind, metrics_addr).await?;
        tracing::info!(portal = kind.name(), %metrics_addr, "serving metrics");
        tokio::spawn(storage_node::metrics::serve(listener, Arc::new(|| crate::metrics::portal().render())));
    }
    storage_node::tls::set_process_role(storage_node::tls::Role::Portal);
    storage_node::tls::prepare_clients(&config)
        .map_err(|e| format!("cannot use the cluster's certificates ([tls] in {origin}): {e}"))?;
    let api_tls = match config.portal_tls_dir() {
        Some(dir) => Some(
            storage_node::tls::ServerSide::load(dir, storage_node::tls::Server::Portal)
                .map_err(|e| format!("cannot serve the API over TLS ([auth] tls in {origin}): {e}"))?,
        ),
        None => None,
    };
    storage_node::tls::reload_on_hangup(api_tls.clone());
    let shop = Shop::new(ClusterClient::new(&config), Duration::from_millis(args.deadline_ms))
        .listing_at_most(args.max_listed_orders);
    let console = args.console.or(config.portals.console).filter(|_| kind == PortalKind::Admin);
    match (console, &config.auth) {
        // The console has no login: it would show every client, product and
        // order to anyone who reaches it, past the users and roles.
        (Some(_), Some(_)) if args.console.is_some() => {
            return Err("--console: the web console has no login, so it is not served while [auth] is on".into())
        }
        (Some(_), Some(_)) => tracing::info!("not serving the web console: it has no login, and [auth] is on"),
        (Some(console_addr), None) => serve_console(console_addr, &config, &shop).await?,
        (None, _) => {}
    }
    let portal = Portal::with_limit(shop, args.max_calls_in_flight);
    let (auth, tls) = (gate.is_some(), api_tls.is_some());
    tracing::info!(portal = kind.name(), %addr, config = %origin, auth, tls, "serving");
    if let Some(gate) = &gate {
        tokio::spawn(Arc::clone(gate).watch());
    }
    let access = server::Access { gate, tls: api_tls };
    server::serve(kind, listener, portal, access, storage_node::cli::shutdown_signal())
        .await
        .map_err(|e| format!("the gRPC server failed: {e}"))?;
    tracing::info!(portal = kind.name(), "stopped cleanly");
    Ok(())
}

/// Serves the web console on `addr`, for the admin portal.
async fn serve_console(addr: SocketAddr, config: &ClusterConfig, shop: &Shop) -> Result<(), String> {
    let listener =
        server::bind(PortalKind::Admin, addr).await.map_err(|e| format!("cannot serve the web console: {e}"))?;
    tracing::info!(console_addr = %addr, "serving the web console");
    tokio::spawn(crate::console::web::serve(listener, Arc::new(Console::start(config, shop.clone()))));
    Ok(())
}
