//! A storage node's metrics, in the Prometheus (OpenMetrics) text format.
//!
//! One [`NodeMetrics`] per process ([`node`]): a storage node is one Raft
//! member, so the counters need no node label, and every module records
//! into the same registry without handles being passed around. Raft's own
//! state (term, role, log positions, replication lag) is read from
//! openraft's metrics when a scrape asks ([`NodeMetrics::render`]); the
//! rest is counted where it happens. [`serve`] answers `GET /metrics` on
//! the address `cluster.toml` gives the node (`metrics = "host:port"`).
//!
//! Names follow Prometheus' conventions: the `raftshop_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` on counters.

use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;

use crate::service::watch::WatchSlots;
use crate::state::AppliedState;
use crate::types::{NodeId, Raft};

/// The answer's content type (the text encoder writes OpenMetrics 1.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of one gRPC method's calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    /// The gRPC service, e.g. `raftshop.store.Store`.
    pub service: &'static str,
    /// The method, e.g. `Write`.
    pub method: &'static str,
    /// The gRPC status code name, e.g. `OK`, `UNAVAILABLE`.
    pub code: &'static str,
}

/// Labels of one gRPC method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// The gRPC service.
    pub service: &'static str,
    /// The method.
    pub method: &'static str,
}

/// Labels of a follower's replication.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: NodeId,
}

/// Labels of a Raft role.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

/// The gauge type of every metric here.
pub type IntGauge = Gauge<i64>;

/// Everything one storage node counts.
pub struct NodeMetrics {
    registry: Registry,
    /// The Raft handle and watch slots whose state a scrape reads; set once
    /// the node serves.
    sources: Mutex<Option<(Raft, WatchSlots, Arc<AppliedState>)>>,
    term: IntGauge,
    role: Family<RoleLabels, IntGauge>,
    leader: IntGauge,
    last_log_index: IntGauge,
    committed_index: IntGauge,
    applied_index: IntGauge,
    snapshot_index: IntGauge,
    purged_index: IntGauge,
    replication_lag: Family<FollowerLabels, IntGauge>,
    resident_memory: IntGauge,
    /// `Store` calls by method and status code.
    pub calls: Family<CallLabels, Counter>,
    /// Their latency, by method.
    pub call_latency: Family<MethodLabels, Histogram>,
    /// Commands per proposed log entry (writes that shared one entry).
    pub batch_commands: Histogram,
    /// Read rounds (lease checks or ReadIndex rounds) and the reads that shared them.
    pub read_rounds: Counter,
    /// From handing entries to the log to their fdatasync being done.
    pub log_append_durable: Histogram,
    /// Applying one committed entry to the state machine.
    pub apply: Histogram,
    /// Applied entries whose rows went to sled in one batch.
    pub state_write_entries: Histogram,
    /// sled inserts and removals of one batch (its rows, the redo list and
    /// the bookkeeping), each of which costs sled a write of its own.
    pub state_write_rows: Histogram,
    /// Snapshots built.
    pub snapshots_built: Counter,
    /// How long building one took: copying its rows beside the applies,
    /// syncing the file, flushing sled.
    pub snapshot_build: Histogram,
    /// Change-feed watches open on this node.
    open_watches: IntGauge,
    /// Rows locked by prepared, unresolved transactions.
    open_intents: IntGauge,
    /// Abandoned transactions this node's recovery settled, by outcome.
    pub recovered_transactions: Family<OutcomeLabels, Counter>,
}

/// Labels of a transaction's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `commit` or `abort`.
    pub outcome: &'static str,
}

/// A histogram for latencies, with buckets from 50 µs to about 26 s.
pub fn latency_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl NodeMetrics {
    fn new() -> Self {
        let mut metrics = NodeMetrics {
            registry: Registry::with_prefix("raftshop"),
            sources: Mutex::new(None),
            term: IntGauge::default(),
            role: Family::default(),
            leader: IntGauge::default(),
            last_log_index: IntGauge::default(),
            committed_index: IntGauge::default(),
            applied_index: IntGauge::default(),
            snapshot_index: IntGauge::default(),
            purged_index: IntGauge::default(),
            replication_lag: Family::default(),
            resident_memory: IntGauge::default(),
            calls: Family::default(),
            call_latency: Family::new_with_constructor(latency_buckets),
            batch_commands: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            read_rounds: Counter::default(),
            log_append_durable: latency_buckets(),
            apply: latency_buckets(),
            state_write_entries: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            state_write_rows: Histogram::new(exponential_buckets(1.0, 2.0, 15)),
            snapshots_built: Counter::default(),
            snapshot_build: latency_buckets(),
            open_watches: IntGauge::default(),
            open_intents: IntGauge::default(),
            recovered_transactions: Family::default(),
        };
        metrics.register();
        metrics
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register("raft_term", "The node's current Raft term", self.term.clone());
        r.register("raft_role", "1 for the node's current Raft role, 0 for the others", self.role.clone());
        r.register("raft_leader", "The id of the leader this node knows of (0: none)", self.leader.clone());
        r.register("raft_last_log_index", "Index of the last entry in the node's log", self.last_log_index.clone());
        r.register("raft_committed_index", "Highest index the node knows committed", self.committed_index.clone());
        r.register("raft_applied_index", "Highest index applied to the state machine", self.applied_index.clone());
        r.register("raft_snapshot_index", "Last index in the node's snapshot", self.snapshot_index.clone());
        r.register("raft_purged_index", "Highest index purged from the log", self.purged_index.clone());
        r.register(
            "raft_replication_lag_entries",
            "On the leader: entries a follower has yet to acknowledge",
            self.replication_lag.clone(),
        );
        register_resident_memory(r, &self.resident_memory);
        r.register("grpc_calls", "Store calls answered, by method and gRPC status code", self.calls.clone());
        r.register_with_unit(
            "grpc_call_duration",
            "Store calls' latency, by method",
            Unit::Seconds,
            self.call_latency.clone(),
        );
        r.register("write_batch_commands", "Writes that shared one proposed log entry", self.batch_commands.clone());
        r.register("read_rounds", "Rounds that confirmed leadership for a group of reads", self.read_rounds.clone());
        r.register_with_unit(
            "log_append_durable_duration",
            "From an append handed to the Raft log to its fdatasync being done",
            Unit::Seconds,
            self.log_append_durable.clone(),
        );
        r.register_with_unit(
            "apply_duration",
            "Applying one committed entry to the state machine",
            Unit::Seconds,
            self.apply.clone(),
        );
        r.register(
            "state_write_entries",
            "Applied entries whose rows were written to sled in one batch",
            self.state_write_entries.clone(),
        );
        r.register(
            "state_write_rows",
            "sled inserts and removals in one batch of applied entries, the redo list and bookkeeping included",
            self.state_write_rows.clone(),
        );
        r.register("snapshots_built", "Snapshots this node built", self.snapshots_built.clone());
        r.register_with_unit(
            "snapshot_build_duration",
            "Building one snapshot: copying its rows while entries apply, syncing the file, flushing sled",
            Unit::Seconds,
            self.snapshot_build.clone(),
        );
        r.register("feed_open_watches", "Change-feed watches open on this node", self.open_watches.clone());
        r.register("txn_open_intents", "Rows locked by prepared, unresolved transactions", self.open_intents.clone());
        r.register(
            "txn_recovered",
            "Abandoned transactions this node's recovery settled, by outcome",
            self.recovered_transactions.clone(),
        );
    }

    /// Lets scrapes read `raft`'s state, count the open watches and the
    /// open intents in `state`.
    pub fn attach(&self, raft: Raft, watches: WatchSlots, state: Arc<AppliedState>) {
        *self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((raft, watches, state));
    }

    /// Records one `Store` call.
    pub fn record_call(&self, method: &'static str, code: tonic::Code, took: Duration) {
        let service = "raftshop.store.Store";
        self.calls.get_or_create(&CallLabels { service, method, code: code_name(code) }).inc();
        self.call_latency.get_or_create(&MethodLabels { service, method }).observe(took.as_secs_f64());
    }

    /// The metrics as OpenMetrics text, Raft's state read now.
    pub fn render(&self) -> String {
        self.refresh();
        encode(&self.registry, &self.resident_memory)
    }

    fn refresh(&self) {
        let sources = self.sources.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        let Some((raft, watches, state)) = sources else { return };
        self.open_watches.set(watches.open_count() as i64);
        // Known exactly in memory: counting the rows in sled would first
        // hand it every row waiting to be written, at every scrape.
        self.open_intents.set(state.lock_row_count() as i64);
        let m = raft.metrics().borrow_watched().clone();
        let index = |id: Option<&crate::types::LogId>| id.map_or(0, |id| id.index as i64);
        self.term.set(m.current_term as i64);
        use openraft::ServerState::*;
        for state in [Leader, Follower, Candidate, Learner, Shutdown] {
            let role = crate::service::role_name(state);
            self.role.get_or_create(&RoleLabels { role }).set(i64::from(state == m.state));
        }
        self.leader.set(m.current_leader.map_or(0, |id| id as i64));
        self.last_log_index.set(m.last_log_index.map_or(0, |i| i as i64));
        self.committed_index.set(index(m.local_committed.as_ref()));
        self.applied_index.set(index(m.last_applied.as_ref()));
        self.snapshot_index.set(index(m.snapshot.as_ref()));
        self.purged_index.set(index(m.purged.as_ref()));
        self.replication_lag.clear();
        let last = m.last_log_index.unwrap_or(0) as i64;
        for (follower, matched) in m.replication.iter().flatten() {
            if *follower != m.id {
                let lag = last - index(matched.as_ref());
                self.replication_lag.get_or_create(&FollowerLabels { follower: *follower }).set(lag.max(0));
            }
        }
    }
}

/// This process's metrics.
pub fn node() -> &'static NodeMetrics {
    static METRICS: LazyLock<NodeMetrics> = LazyLock::new(NodeMetrics::new);
    &METRICS
}

/// Registers `gauge` as the process's resident memory, which [`encode`]
/// sets at each scrape.
pub fn register_resident_memory(registry: &mut Registry, gauge: &IntGauge) {
    registry.register_with_unit(
        "process_resident_memory",
        "Resident memory of the process",
        Unit::Bytes,
        gauge.clone(),
    );
}

/// `registry` as OpenMetrics text, with `resident_memory` read now.
pub fn encode(registry: &Registry, resident_memory: &IntGauge) -> String {
    if let Some(bytes) = resident_memory_bytes() {
        resident_memory.set(bytes);
    }
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => text,
        Err(_) => String::from("# EOF\n"),
    }
}

/// The name gRPC gives a status code, as used in labels.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The process's resident memory, from `/proc/self/status` (Linux).
pub fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Answers `GET /metrics` on `listener` with `render()`, anything else with
/// 404, until the task is dropped. HTTP/1.1, one task per connection.
pub async fn serve(listener: TcpListener, render: Arc<dyn Fn() -> String + Send + Sync>) {
    let handler: crate::http::Handler = Arc::new(move |method, uri| {
        let response = answer(&method, &uri, render.as_ref());
        Box::pin(std::future::ready(response))
    });
    crate::http::serve(listener, "metrics", handler).await
}

fn answer(
    method: &hyper::Method,
    uri: &hyper::Uri,
    render: &(dyn Fn() -> String + Send + Sync),
) -> crate::http::Response {
    let (status, content_type, body) = match (method, uri.path()) {
        (&hyper::Method::GET, "/metrics") => (hyper::StatusCode::OK, CONTENT_TYPE, render()),
        _ => (hyper::StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "only GET /metrics is served here\n".into()),
    };
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
