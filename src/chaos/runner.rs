//! One chaos run: a cluster of real processes, the workload, a seeded fault
//! schedule, and the verdicts.
//!
//! The run starts its own cluster (six nodes behind link proxies, both
//! portals), seeds the shop, starts the key-value and order clients, injects
//! faults one after another (each followed by a health wait) until the
//! schedule is done and the minimum duration has passed, stops the clients,
//! heals everything, then judges: linearizability of the key-value history
//! (with the final reads included), lost writes, convergence of replicas,
//! and the shop's invariants. The same seed gives the same fault schedule
//! and the same client choices (timing still varies, as in any real run).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::{Client, Product};
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::checks::{self, LostWrite};
use super::faults::{self, FaultEvent, FaultKind};
use super::history::{self, Operation, Outcome, Recorder};
use super::linearizability::{check_history, Verdict};
use super::workload::{self, OrderLedger, OrderTally, PriceChange, PriceTally};
use crate::local_cluster::{ClusterOptions, LocalCluster, PortalKind};

/// What a run does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Seeds the fault schedule and every client's choices.
    pub seed: u64,
    /// Faults to inject (the schedule covers every kind of `kinds`).
    pub faults: usize,
    /// The kinds of fault to draw from, each in turn.
    pub kinds: Vec<FaultKind>,
    /// The run lasts at least this long.
    pub min_duration: Duration,
    /// Key-value clients.
    pub kv_clients: u64,
    /// Order clients.
    pub order_clients: u64,
    /// Hot keys per shard.
    pub keys_per_shard: usize,
    /// Time the linearizability checker may spend before saying "unknown".
    pub check_budget: Duration,
    /// Where to save the history (JSON lines), if anywhere.
    pub history_path: Option<PathBuf>,
    /// Prints progress lines to stderr.
    pub verbose: bool,
}

impl Default for ChaosOptions {
    fn default() -> Self {
        ChaosOptions {
            seed: 1,
            faults: 7,
            kinds: FaultKind::ALL.to_vec(),
            min_duration: Duration::from_secs(20),
            kv_clients: 8,
            order_clients: 4,
            keys_per_shard: 5,
            check_budget: Duration::from_secs(60),
            history_path: None,
            verbose: false,
        }
    }
}

/// The products the order clients race for, in both shards.
pub const PRODUCTS: [u64; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
/// Each product's stock at the start: scarce, so orders race for it.
pub const INITIAL_STOCK: u64 = 40;
/// The products whose prices change during the run, one in each shard.
/// UpdateProduct sets the stock too, so theirs is plenty and set again with
/// every price: their stock is not checked, their lines' prices are.
pub const PRICED_PRODUCTS: [u64; 2] = [9, 10];
/// The stock of the priced products, set with every price.
const PRICED_STOCK: u64 = 1_000_000;

/// Every product of the shop, with its stock at the start.
fn seeded_products() -> impl Iterator<Item = (u64, u64)> {
    PRODUCTS.map(|pid| (pid, INITIAL_STOCK)).into_iter().chain(PRICED_PRODUCTS.map(|pid| (pid, PRICED_STOCK)))
}

/// Everything a run found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChaosReport {
    /// The seed, to reproduce the schedule.
    pub seed: u64,
    /// Wall time of the workload phase.
    pub duration: Duration,
    /// Key-value operations by outcome: ok, failed, unknown.
    pub operations: BTreeMap<String, u64>,
    /// Order calls by outcome (committed, refused, unavailable, internal
    /// error, no answer, deleted), units sold, calls retried, orders
    /// checked against what their clients were told, and prices changed
    /// and price changes retried.
    pub orders: BTreeMap<String, u64>,
    /// The faults, in order.
    pub faults: Vec<FaultEvent>,
    /// Unavailability after each leader kill: from the SIGKILL to the first
    /// acknowledged write on that shard (ms).
    pub gaps_ms: Vec<u64>,
    /// The linearizability verdict: "linearizable", "violation: ..." or
    /// "unknown: ...".
    pub linearizability: String,
    /// Keys whose final value is older than their last acknowledged write.
    pub lost_writes: Vec<String>,
    /// Shards whose replicas did not converge.
    pub diverged: Vec<String>,
    /// Broken shop invariants.
    pub broken_invariants: Vec<String>,
    /// Where the history was saved.
    pub history_path: Option<PathBuf>,
}

impl ChaosReport {
    /// True if every checker passed (a checker that ran out of time is not
    /// a pass).
    pub fn passed(&self) -> bool {
        self.linearizability == "linearizable"
            && self.lost_writes.is_empty()
            && self.diverged.is_empty()
            && self.broken_invariants.is_empty()
    }

    /// Key-value operations that were checked (ok reads and writes plus
    /// unknown writes).
    pub fn checked_operations(&self) -> u64 {
        self.operations.get("ok").copied().unwrap_or_default()
            + self.operations.get("unknown").copied().unwrap_or_default()
    }
}

/// Runs the workload and the fault schedule against a fresh cluster.
pub async fn run(cluster_options: ClusterOptions, options: ChaosOptions) -> Result<ChaosReport, String> {
    let mut cluster_options = cluster_options;
    cluster_options.link_proxies = true;
    let mut cluster =
        LocalCluster::start(cluster_options).await.map_err(|e| format!("cannot start the cluster: {e}"))?;
    for shard in storage_node::Shard::ALL {
        cluster.wait_for_leader(shard, Duration::from_secs(30)).await?;
    }
    for kind in [PortalKind::Admin, PortalKind::Order] {
        cluster.start_portal(kind).map_err(|e| e.to_string())?;
        cluster.wait_for_portal(kind, Duration::from_secs(30)).await?;
    }
    seed_shop(&cluster).await?;
    let progress = |line: String| {
        if options.verbose {
            eprintln!("chaos: {line}");
        }
    };

    let recorder = Arc::new(Recorder::new());
    let client = Arc::new(cluster.client());
    let keys = workload::hot_keys(options.keys_per_shard);
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let kv: Vec<_> = (0..options.kv_clients)
        .map(|c| {
            let (client, keys, recorder) = (client.clone(), keys.clone(), recorder.clone());
            tokio::spawn(workload::kv_client(client, c, keys, recorder, options.seed, stop.clone()))
        })
        .collect();
    let portal = cluster.config().portals.order;
    let products = (PRODUCTS.to_vec(), PRICED_PRODUCTS.to_vec());
    let orders: Vec<_> = (0..options.order_clients)
        .map(|c| tokio::spawn(workload::order_client(portal, c, products.clone(), options.seed, stop.clone())))
        .collect();
    let admin = cluster.config().portals.admin;
    let priced = PRICED_PRODUCTS.to_vec();
    let prices = tokio::spawn(workload::price_client(admin, priced, PRICED_STOCK, options.seed, stop.clone()));

    let mut rng = StdRng::seed_from_u64(options.seed);
    let plan = faults::schedule(options.faults, &options.kinds, &mut rng);
    let mut events = Vec::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, (kind, shard)) in plan.into_iter().enumerate() {
        let now = || recorder.now();
        let event = faults::inject(&mut cluster, kind, shard, &mut rng, &now).await?;
        progress(format!("fault {}/{}: {kind} on shard {shard} {:?}", i + 1, options.faults, event.nodes));
        events.push(event);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let remaining = options.min_duration.saturating_sub(started.elapsed());
    tokio::time::sleep(remaining).await;
    stop.store(true, Ordering::Relaxed);
    for task in kv {
        let _ = task.await;
    }
    let (mut tally, mut ledger) = (OrderTally::default(), OrderLedger::default());
    for task in orders {
        // A client that panicked took its ledger with it: the run proves
        // nothing about its orders.
        let (t, l) = task.await.map_err(|e| format!("an order client failed: {e}"))?;
        ledger.extend(l);
        tally += t;
    }
    let prices = prices.await.map_err(|e| format!("the price client failed: {e}"))?;
    let duration = started.elapsed();
    cluster.heal();
    progress(format!("workload done after {:.1} s; checking", duration.as_secs_f64()));

    judge(&cluster, &options, recorder, &keys, events, (tally, ledger, prices), duration).await
}

/// Creates the shop's clients and scarce products through the AdminPortal.
async fn seed_shop(cluster: &LocalCluster) -> Result<(), String> {
    let endpoint = storage_node::endpoint::endpoint(cluster.config().portals.admin)?;
    let mut admin = AdminPortalClient::new(endpoint.connect().await.map_err(|e| e.to_string())?);
    for cid in [2u64, 3] {
        let client = Client { cid: cid.to_string(), data: r#"{"name":"chaos"}"#.into() };
        let reply = admin.create_client(client).await.map_err(|e| e.to_string())?.into_inner();
        if reply.error != 0 {
            return Err(format!("seeding client {cid}: {:?}", reply.description));
        }
    }
    for (pid, stock) in seeded_products() {
        let data = format!(r#"{{"name":"item {pid}","price":{},"quantity":{stock}}}"#, workload::price_at(pid, 0));
        let reply =
            admin.create_product(Product { pid: pid.to_string(), data }).await.map_err(|e| e.to_string())?.into_inner();
        if reply.error != 0 {
            return Err(format!("seeding product {pid}: {:?}", reply.description));
        }
    }
    Ok(())
}

/// Runs every checker over the finished run.
async fn judge(
    cluster: &LocalCluster,
    options: &ChaosOptions,
    recorder: Arc<Recorder>,
    keys: &[String],
    faults: Vec<FaultEvent>,
    (tally, ledger, (price_tally, prices)): (OrderTally, OrderLedger, (PriceTally, Vec<PriceChange>)),
    duration: Duration,
) -> Result<ChaosReport, String> {
    let client = cluster.client();
    // Final reads go into the history too: the checker then also proves
    // that no acknowledged write was lost.
    let finals = checks::final_values(&client, keys).await?;
    for (key, value) in &finals {
        let at = recorder.now();
        recorder.record(Operation::read(u64::MAX, key, value.as_deref(), at, recorder.now()));
    }
    let history = recorder.history();
    if let Some(path) = &options.history_path {
        history::save(path, &history).map_err(|e| format!("cannot save the history: {e}"))?;
    }
    let verdict = check_history(&history, options.check_budget).map_err(|e| e.to_string())?;
    let linearizability = match &verdict.verdict {
        Verdict::Linearizable => "linearizable".to_owned(),
        Verdict::Violation => {
            let first =
                verdict.violations().next().map(|v| format!("key {}: {}", v.key, v.explanation)).unwrap_or_default();
            format!("violation: {first}")
        }
        Verdict::Unknown => format!("unknown: the checker ran out of time on {} keys", verdict.unknown_keys().count()),
    };
    let lost: Vec<LostWrite> = checks::lost_writes(&history, &finals);
    let initial: BTreeMap<u64, u64> = PRODUCTS.iter().map(|p| (*p, INITIAL_STOCK)).collect();
    let seeded = seeded_products().map(|(pid, _)| (pid, workload::price_at(pid, 0))).collect();
    let mut broken =
        checks::shop_invariants(&client, &initial, &ledger, checks::PriceHistory::new(seeded, &prices)).await?;
    if price_tally.refused > 0 {
        broken.push(format!("{} price changes were refused", price_tally.refused));
    }
    let diverged = checks::divergence(cluster).await;

    let mut operations = BTreeMap::new();
    for op in &history {
        let outcome = match op.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *operations.entry(outcome.to_owned()).or_default() += 1;
    }
    let orders = BTreeMap::from([
        ("committed".to_owned(), tally.committed),
        ("refused".to_owned(), tally.refused),
        ("unavailable".to_owned(), tally.unavailable),
        ("no answer".to_owned(), tally.no_answer),
        ("deleted".to_owned(), tally.deleted),
        ("units sold".to_owned(), tally.units_sold),
        ("retried".to_owned(), tally.retried),
        ("internal error".to_owned(), tally.internal),
        ("checked against the ledger".to_owned(), ledger.len() as u64),
        ("prices changed".to_owned(), price_tally.changed),
        ("price changes retried".to_owned(), price_tally.retried),
    ]);
    let report = ChaosReport {
        seed: options.seed,
        duration,
        operations,
        orders,
        gaps_ms: unavailability_gaps(&history, &faults),
        faults,
        linearizability,
        lost_writes: lost
            .iter()
            .map(|l| format!("{}: acknowledged {:?}, found {:?}", l.key, l.acknowledged, l.found))
            .collect(),
        diverged,
        broken_invariants: broken,
        history_path: options.history_path.clone(),
    };
    if let Some(path) = &options.history_path {
        // The faults, on the history's clock, and the verdicts, beside it.
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(report_path(path), json).map_err(|e| format!("cannot save the report: {e}"))?;
    }
    Ok(report)
}

/// Where the report of a run whose history is at `history` is saved.
pub fn report_path(history: &std::path::Path) -> PathBuf {
    history.with_extension("report.json")
}

/// For each leader kill: ms from the SIGKILL to the first write on its
/// shard that was called after it and acknowledged.
fn unavailability_gaps(history: &[Operation], faults: &[FaultEvent]) -> Vec<u64> {
    faults
        .iter()
        .filter(|f| f.kind.kills_leader())
        .filter_map(|f| {
            history
                .iter()
                .filter(|op| op.outcome == Outcome::Ok && !matches!(op.kind, history::OpKind::Read))
                .filter(|op| storage_node::Shard::of_key(&op.key) == f.shard && op.called_at >= f.started_at)
                .filter_map(|op| op.returned_at)
                .min()
                .map(|returned| (returned - f.started_at) / 1_000_000)
        })
        .collect()
}

/// The report for people.
pub fn render(report: &ChaosReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "chaos run, seed {} ({:.1} s of workload)", report.seed, report.duration.as_secs_f64());
    let ops: Vec<String> = report.operations.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  key-value operations: {} ({} checked)", ops.join(", "), report.checked_operations());
    let orders: Vec<String> = report.orders.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "  orders: {}", orders.join(", "));
    let mut by_kind: BTreeMap<FaultKind, usize> = BTreeMap::new();
    for fault in &report.faults {
        *by_kind.entry(fault.kind).or_default() += 1;
    }
    let kinds: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(out, "  faults: {} ({})", report.faults.len(), kinds.join(", "));
    let mut gaps = report.gaps_ms.clone();
    gaps.sort_unstable();
    match (gaps.get(gaps.len() / 2), gaps.last()) {
        (Some(p50), Some(max)) => {
            let _ = writeln!(
                out,
                "  unavailability after a leader kill: p50 {p50} ms, max {max} ms ({} kills)",
                gaps.len()
            );
        }
        _ => {
            let _ = writeln!(out, "  unavailability after a leader kill: no leader was killed");
        }
    }
    let verdict = |problems: &[String]| if problems.is_empty() { "ok".to_owned() } else { problems.join("; ") };
    let _ = writeln!(out, "  linearizability: {}", report.linearizability);
    let _ = writeln!(out, "  lost acknowledged writes: {}", verdict(&report.lost_writes));
    let _ = writeln!(out, "  replicas converged: {}", verdict(&report.diverged));
    let _ = writeln!(out, "  shop invariants: {}", verdict(&report.broken_invariants));
    if let Some(path) = &report.history_path {
        let _ = writeln!(out, "  history: {} (faults and verdicts: {})", path.display(), report_path(path).display());
    }
    let _ = writeln!(out, "  verdict: {}", if report.passed() { "PASS" } else { "FAIL" });
    out
}
