//! A portal's metrics: every gRPC call it answers, by service, method and
//! status code, with latency histograms, and its resident memory. Served
//! in the Prometheus (OpenMetrics) text format by
//! [`storage_node::metrics::serve`] at the portal's metrics address
//! (`admin_metrics` / `order_metrics` under `[portals]` in `cluster.toml`).
//!
//! [`CallMetricsLayer`] wraps the whole gRPC server, so the seed's services
//! under both names, the feed, health and reflection are all counted. A
//! call's code is the `grpc-status` of its response headers (where tonic
//! puts the status of a call that failed before answering) and `OK`
//! otherwise; its latency runs to the response headers, which for a unary
//! call is the whole call. Calls to methods the portal does not serve are
//! counted under method `unknown`, so junk paths cannot grow the label set.
//!
//! [`PortalMetrics::method_totals`] hands the same counts to the web console
//! as numbers, so it need not parse its own text.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use storage_node::metrics::{code_name, encode, latency_buckets, register_resident_memory, IntGauge};

/// Labels of one method's answered calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    service: String,
    method: String,
    code: &'static str,
}

/// Labels of one method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    service: String,
    method: String,
}

/// One method's cumulative numbers since the portal started.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct MethodTotals {
    /// The gRPC service, e.g. `AdminPortal`.
    pub service: String,
    /// The method, e.g. `CreateProduct`.
    pub method: String,
    /// Calls answered, whatever their code.
    pub calls: u64,
    /// Of those, calls answered with a code other than `OK`.
    pub failed: u64,
    /// Their summed latency, so a mean over any interval is a difference
    /// of sums over a difference of counts.
    pub latency_sum_seconds: f64,
    /// Calls timed (the same calls as `calls`).
    pub latency_count: u64,
}

/// Labels of one transaction attempt's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TxnLabels {
    /// `single-shard` (one command) or `cross-shard` (two-phase commit).
    kind: &'static str,
    /// `committed`, `refused`, `stale`, `locked`, `overtaken`,
    /// `unavailable` or `maybe-committed`.
    outcome: &'static str,
}

/// Everything a portal counts.
pub struct PortalMetrics {
    registry: Registry,
    /// The same calls as `calls` and `latency`, by service and method, as
    /// numbers (the registry's families cannot be listed or read back).
    tallies: Mutex<BTreeMap<String, BTreeMap<String, MethodTotals>>>,
    transactions: Family<TxnLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    latency: Family<MethodLabels, Histogram>,
    in_flight: IntGauge,
    resident_memory: IntGauge,
}

impl PortalMetrics {
    fn new() -> Self {
        let mut metrics = PortalMetrics {
            registry: Registry::with_prefix("raftshop"),
            tallies: Mutex::default(),
            transactions: Family::default(),
            calls: Family::default(),
            latency: Family::new_with_constructor(latency_buckets),
            in_flight: IntGauge::default(),
            resident_memory: IntGauge::default(),
        };
        let r = &mut metrics.registry;
        r.register("grpc_calls", "gRPC calls answered, by service, method and status code", metrics.calls.clone());
        r.register_with_unit(
            "grpc_call_duration",
            "gRPC calls' latency to the response headers, by service and method",
            Unit::Seconds,
            metrics.latency.clone(),
        );
        r.register("grpc_calls_in_flight", "gRPC calls being served", metrics.in_flight.clone());
        r.register(
            "txn_attempts",
            "Attempts to commit a planned change, by kind (single-shard, cross-shard) and outcome",
            metrics.transactions.clone(),
        );
        register_resident_memory(r, &metrics.resident_memory);
        metrics
    }

    /// The metrics as OpenMetrics text.
    pub fn render(&self) -> String {
        encode(&self.registry, &self.resident_memory)
    }

    /// Every method's totals, ordered by service and method.
    pub fn method_totals(&self) -> Vec<MethodTotals> {
        let tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        tallies.values().flat_map(|methods| methods.values().cloned()).collect()
    }

    /// Counts one answered call of `path` (`/service/method`).
    /// Counts one attempt to commit a planned change.
    pub fn record_transaction(&self, cross_shard: bool, outcome: &'static str) {
        let kind = if cross_shard { "cross-shard" } else { "single-shard" };
        self.transactions.get_or_create(&TxnLabels { kind, outcome }).inc();
    }

    pub(crate) fn record(&self, path: &str, code: tonic::Code, started: Instant) {
        let (service, method) = path.trim_start_matches('/').split_once('/').unwrap_or(("unknown", "unknown"));
        let (service, method) = if code == tonic::Code::Unimplemented {
            ("unknown".to_owned(), "unknown".to_owned())
        } else {
            (service.to_owned(), method.to_owned())
        };
        let took = started.elapsed().as_secs_f64();
        self.tally(&service, &method, code, took);
        self.latency.get_or_create(&MethodLabels { service: service.clone(), method: method.clone() }).observe(took);
        self.calls.get_or_create(&CallLabels { service, method, code: code_name(code) }).inc();
    }

    fn tally(&self, service: &str, method: &str, code: tonic::Code, took: f64) {
        let mut tallies = self.tallies.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Looked up by &str first: a key is allocated once per method.
        if !tallies.contains_key(service) {
            tallies.insert(service.to_owned(), BTreeMap::new());
        }
        let methods = tallies.get_mut(service).expect("inserted above");
        if !methods.contains_key(method) {
            let totals = MethodTotals { service: service.to_owned(), method: method.to_owned(), ..Default::default() };
            methods.insert(method.to_owned(), totals);
        }
        let tally = methods.get_mut(method).expect("inserted above");
        tally.calls += 1;
        tally.failed += u64::from(code != tonic::Code::Ok);
        tally.latency_sum_seconds += took;
        tally.latency_count += 1;
    }
}

/// This process's metrics.
pub fn portal() -> &'static PortalMetrics {
    static METRICS: LazyLock<PortalMetrics> = LazyLock::new(PortalMetrics::new);
    &METRICS
}

/// The gRPC status of an answered call: its response headers' `grpc-status`
/// (where tonic puts the status of a call that failed before answering),
/// else `OK`.
pub(crate) fn answered_code<R>(response: &http::Response<R>) -> tonic::Code {
    response.headers().get("grpc-status").map_or(tonic::Code::Ok, |status| tonic::Code::from_bytes(status.as_bytes()))
}

/// Counts every call of the server it wraps (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct CallMetricsLayer;

impl<S> tower::Layer<S> for CallMetricsLayer {
    type Service = CallMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallMetrics { inner }
    }
}

/// The service [`CallMetricsLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct CallMetrics<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for CallMetrics<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().to_owned();
        let started = Instant::now();
        let metrics = portal();
        metrics.in_flight.inc();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            metrics.in_flight.dec();
            let code = result.as_ref().map_or(tonic::Code::Unknown, answered_code);
            metrics.record(&path, code, started);
            result
        })
    }
}
