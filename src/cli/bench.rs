//! `raftshop bench`: measure a cluster, optionally side by side with etcd.
//!
//! By default it measures the cluster of the config (as `up` runs it);
//! `--local` starts a cluster of its own in a temp dir instead. With
//! `--against etcd` the key-value workloads also run, same clients and
//! value size, against a three-member etcd it starts on loopback (or the
//! members given by `--etcd-endpoints`), and so does `create-product`, as
//! etcd's put; the table shows the ratio.
//! The targets take turns at each client count, who goes first swapping
//! at every turn ([`schedule`]), and with `--rounds N` each point is
//! measured N times, followed by a summary of the medians.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use portals::auth::{Credentials, PortalChannel};
use raftshop::bench::cpu::CpuMeter;
use raftshop::bench::etcd::{self, LocalEtcd};
use raftshop::bench::run::{measure, schedule, Measurement, Timing};
use raftshop::bench::workload::{self, Shape, Target, Workload};
use raftshop::bench::{memory, report};
use raftshop::local_cluster::{ClusterOptions, LocalCluster, PortalKind};
use storage_node::{ClusterConfig, Shard};
use tonic::service::interceptor::InterceptedService;

use super::args::{Against, BenchArgs};
use super::binaries;

/// Runs `raftshop bench`.
pub async fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let credentials = Credentials::new(args.token.as_deref()).map_err(anyhow::Error::msg)?;
    let local = if args.local { Some(start_local(args.tls).await?) } else { None };
    let config = match &local {
        Some(cluster) => cluster.config().clone(),
        None => ClusterConfig::load_or_default(args.config.as_deref())?.0,
    };
    let etcd = match (args.against, &args.etcd_endpoints) {
        (Some(Against::Etcd), None) => {
            eprintln!("starting a three-member etcd on loopback");
            Some(LocalEtcd::start().await.map_err(anyhow::Error::msg)?)
        }
        _ => None,
    };
    let etcd_endpoints: Option<Vec<std::net::SocketAddr>> = match (&etcd, &args.etcd_endpoints) {
        (Some(etcd), _) => Some(etcd.endpoints.clone()),
        (None, Some(list)) => Some(list.clone()),
        (None, None) => None,
    };
    let shape = Shape { keys: args.keys, value_size: args.value_size };
    let timing =
        Timing { warmup: Duration::from_secs_f64(args.warmup), duration: Duration::from_secs_f64(args.duration) };
    // A count given twice is one point (its rounds are `--rounds`).
    let mut client_counts: Vec<usize> = Vec::new();
    for clients in &args.clients {
        if !client_counts.contains(clients) {
            client_counts.push(*clients);
        }
    }
    let mut results: Vec<Measurement> = Vec::new();
    for workload in &args.workloads {
        let targets = targets(*workload, &config, args.connections, &credentials, etcd_endpoints.as_deref()).await?;
        for (name, target) in &targets {
            seed(*workload, target, shape).await.with_context(|| format!("seeding {workload} on {name}"))?;
        }
        for (clients, round, turn) in schedule(targets.len(), &client_counts, args.rounds) {
            let (name, target) = &targets[turn];
            // The CPU of the processes this run started for the target.
            let servers = match name.as_str() {
                "raftshop" => local.as_ref().map(LocalCluster::pids),
                "etcd" => etcd.as_ref().map(LocalEtcd::pids),
                _ => None,
            };
            let cpu = CpuMeter::new(servers.unwrap_or_default());
            results.push(measure(*workload, name, target, &cpu, clients, round, shape, timing).await);
        }
    }
    println!("{}", report::table(&results));
    if args.rounds > 1 {
        println!("{}", report::summary(&results));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("results written to {}", path.display());
    }
    if let Some(path) = &args.plot {
        std::fs::write(path, report::plot(&results)).with_context(|| format!("writing {}", path.display()))?;
        println!("plot written to {}", path.display());
    }
    if let Some(cluster) = &local {
        println!("{}", memory_line(cluster));
    }
    drop(local);
    Ok(ExitCode::SUCCESS)
}

/// Starts a cluster of its own with both portals.
async fn start_local(tls: bool) -> anyhow::Result<LocalCluster> {
    let binaries = binaries::cluster_binaries().await?;
    let mut options = ClusterOptions::new(binaries);
    options.tls = tls;
    let mut cluster = LocalCluster::start(options).await?;
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    }
    for kind in [PortalKind::Admin, PortalKind::Order] {
        cluster.start_portal(kind)?;
        cluster.wait_for_portal(kind, Duration::from_secs(30)).await.map_err(anyhow::Error::msg)?;
    }
    eprintln!("started a local cluster in {}", cluster.dir().display());
    Ok(cluster)
}

/// The local cluster's storage nodes' resident memory, one figure per node.
fn memory_line(cluster: &LocalCluster) -> String {
    let figures: Vec<String> = cluster
        .node_ids()
        .into_iter()
        .map(|id| match cluster.node_pid(id).and_then(memory::resident_bytes) {
            Some(bytes) => format!("node {id} {:.0} MB", bytes as f64 / 1e6),
            None => format!("node {id} unknown"),
        })
        .collect();
    format!("storage-node resident memory after the run: {}", figures.join(", "))
}

/// The targets a workload runs against, by name.
async fn targets(
    workload: Workload,
    config: &ClusterConfig,
    connections: usize,
    credentials: &Credentials,
    etcd: Option<&[std::net::SocketAddr]>,
) -> anyhow::Result<Vec<(String, Target)>> {
    let mut targets = Vec::new();
    if workload.is_kv() {
        targets.push(("raftshop".to_owned(), workload::store_target(config, connections)));
    } else {
        let portal = |addr| channels(config, addr, connections, credentials);
        let admin = portal(config.portals.admin).await.context("connecting to the admin portal")?;
        let order = portal(config.portals.order).await.context("connecting to the order portal")?;
        targets.push(("raftshop".to_owned(), Target::Portals { admin, order }));
    }
    // create-product's peer is etcd's put (see `Workload::has_etcd_peer`).
    if let (true, Some(endpoints)) = (workload.has_etcd_peer(), etcd) {
        let mut channels = Vec::new();
        for i in 0..connections.max(1) {
            channels.push(etcd::connect(&endpoints[i % endpoints.len()]).await.context("connecting to etcd")?);
        }
        targets.push(("etcd".to_owned(), Target::Etcd(channels)));
    }
    Ok(targets)
}

/// `count` connections to the portal at `addr` (over TLS if the config's
/// `[auth]` says so), each sending `credentials`.
async fn channels(
    config: &ClusterConfig,
    addr: std::net::SocketAddr,
    count: usize,
    credentials: &Credentials,
) -> anyhow::Result<Vec<PortalChannel>> {
    let endpoint = storage_node::endpoint::portal_endpoint(addr, config, None).map_err(anyhow::Error::msg)?;
    let mut channels = Vec::new();
    for _ in 0..count.max(1) {
        channels.push(InterceptedService::new(endpoint.connect().await?, credentials.clone()));
    }
    Ok(channels)
}

/// What a workload needs to find before it starts.
async fn seed(workload: Workload, target: &Target, shape: Shape) -> anyhow::Result<()> {
    let value = vec![b'v'; shape.value_size];
    match workload {
        Workload::KvGet => workload::seed_kv(target, shape, &value).await.map_err(anyhow::Error::msg),
        Workload::KvPut | Workload::CreateProduct => Ok(()),
        _ => workload::seed_shop(target, shape).await.map_err(anyhow::Error::msg),
    }
}
