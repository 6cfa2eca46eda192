//! `GET /api/metrics`: every portal method's cumulative calls, failures and
//! latency sums, for the page to turn into throughput and mean latency.
//!
//! The admin portal's numbers are its own ([`crate::metrics::PortalMetrics::method_totals`]);
//! the order portal's are scraped from its metrics address (`order_metrics`
//! in `cluster.toml`) and read with a Prometheus parser
//! ([`totals_from_scrape`]). Counters are cumulative since each portal
//! started, so the page takes differences between two answers; a portal
//! that restarted shows as counters going down. The course's `project.`
//! service names are folded into the package-less ones they alias, so one
//! method is one line on the chart. An order portal that is down or serves
//! no metrics is reported as such, and the admin portal's numbers are still
//! answered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use prometheus_parse::{Scrape, Value};
use serde::Serialize;

use super::AbortOnDrop;
use crate::metrics::{portal, MethodTotals};
use crate::server::unaliased;

/// How long a scrape of the order portal may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);
/// The largest metrics text read from the order portal.
pub const MAX_SCRAPE_BYTES: usize = 4 * 1024 * 1024;

/// One portal's numbers, or why there are none.
#[derive(Debug, Serialize)]
pub struct PortalCalls {
    /// `admin-portal` or `order-portal`.
    pub portal: &'static str,
    /// Where its numbers were read (none for the admin portal's own).
    pub metrics_address: Option<SocketAddr>,
    /// Whether the numbers could be read.
    pub answered: bool,
    /// Why not.
    pub error: Option<String>,
    /// Each method that has been called, by service and method.
    pub methods: Vec<MethodTotals>,
}

/// What the console answers: both portals' numbers, and when they were read.
#[derive(Debug, Serialize)]
pub struct CallsAnswer {
    /// When, in ms since the Unix epoch.
    pub at_ms: u64,
    /// The admin portal, then the order portal.
    pub portals: Vec<PortalCalls>,
}

/// Both portals' numbers; the order portal's scraped from `order_metrics`.
pub async fn both_portals(order_metrics: Option<SocketAddr>) -> CallsAnswer {
    let admin = PortalCalls {
        portal: "admin-portal",
        metrics_address: None,
        answered: true,
        error: None,
        methods: folded(portal().method_totals()),
    };
    let order = match order_metrics {
        None => PortalCalls {
            portal: "order-portal",
            metrics_address: None,
            answered: false,
            error: Some("cluster.toml gives the order portal no metrics address (order_metrics)".into()),
            methods: Vec::new(),
        },
        Some(addr) => match scrape(addr).await {
            Ok(scrape) => PortalCalls {
                portal: "order-portal",
                metrics_address: Some(addr),
                answered: true,
                error: None,
                methods: folded(totals_from_scrape(&scrape)),
            },
            Err(error) => PortalCalls {
                portal: "order-portal",
                metrics_address: Some(addr),
                answered: false,
                error: Some(error),
                methods: Vec::new(),
            },
        },
    };
    CallsAnswer { at_ms: super::now_ms(), portals: vec![admin, order] }
}

/// The per-method totals in a portal's metrics text.
pub fn totals_from_scrape(scrape: &Scrape) -> Vec<MethodTotals> {
    let mut totals: BTreeMap<(String, String), MethodTotals> = BTreeMap::new();
    for sample in &scrape.samples {
        let (Some(service), Some(method)) = (sample.labels.get("service"), sample.labels.get("method")) else {
            continue;
        };
        let number = match sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) if v.is_finite() && v >= 0.0 => v,
            _ => continue,
        };
        let entry = || MethodTotals { service: service.to_owned(), method: method.to_owned(), ..Default::default() };
        let key = (service.to_owned(), method.to_owned());
        match sample.metric.as_str() {
            "raftshop_grpc_calls_total" => {
                let totals = totals.entry(key).or_insert_with(entry);
                totals.calls += number as u64;
                if sample.labels.get("code") != Some("OK") {
                    totals.failed += number as u64;
                }
            }
            "raftshop_grpc_call_duration_seconds_sum" => {
                totals.entry(key).or_insert_with(entry).latency_sum_seconds += number;
            }
            "raftshop_grpc_call_duration_seconds_count" => {
                totals.entry(key).or_insert_with(entry).latency_count += number as u64;
            }
            _ => {}
        }
    }
    totals.into_values().collect()
}

/// `totals` with each `project.` alias folded into the service it names.
pub fn folded(totals: Vec<MethodTotals>) -> Vec<MethodTotals> {
    let mut merged: BTreeMap<(String, String), MethodTotals> = BTreeMap::new();
    for mut totals in totals {
        if let Some(path) = unaliased(&format!("/{}/{}", totals.service, totals.method)) {
            if let Some((service, _)) = path.trim_start_matches('/').split_once('/') {
                totals.service = service.to_owned();
            }
        }
        match merged.entry((totals.service.clone(), totals.method.clone())) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(totals);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => {
                let sum = slot.get_mut();
                sum.calls += totals.calls;
                sum.failed += totals.failed;
                sum.latency_sum_seconds += totals.latency_sum_seconds;
                sum.latency_count += totals.latency_count;
            }
        }
    }
    merged.into_values().collect()
}

/// `GET /metrics` from `addr`, parsed, within [`SCRAPE_TIMEOUT`].
async fn scrape(addr: SocketAddr) -> Result<Scrape, String> {
    let text = tokio::time::timeout(SCRAPE_TIMEOUT, fetch_metrics(addr))
        .await
        .map_err(|_| format!("the order portal's metrics at {addr} did not answer within {SCRAPE_TIMEOUT:?}"))??;
    Scrape::parse(text.lines().map(|line| Ok(line.to_owned())))
        .map_err(|e| format!("the order portal's metrics at {addr} do not parse: {e}"))
}

/// The body of `GET /metrics` at `addr`, over one HTTP/1.1 connection.
async fn fetch_metrics(addr: SocketAddr) -> Result<String, String> {
    let failed = |what: &str, e: &dyn std::fmt::Display| format!("the order portal's metrics at {addr}: {what}: {e}");
    let stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| failed("cannot connect", &e))?;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|e| failed("no HTTP handshake", &e))?;
    // Drives the connection; aborted when this function returns or is dropped.
    let _connection = AbortOnDrop(tokio::spawn(connection));
    let request = hyper::Request::get("/metrics")
        .header(hyper::header::HOST, addr.to_string())
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| failed("bad request", &e))?;
    let response = sender.send_request(request).await.map_err(|e| failed("no answer", &e))?;
    if !response.status().is_success() {
        return Err(failed("answered", &response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
        .collect()
        .await
        .map_err(|e| failed("reading the answer", &e))?
        .to_bytes();
    String::from_utf8(body.to_vec()).map_err(|e| failed("not UTF-8", &e))
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn parse(text: &str) -> Scrape {
        Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).expect("parses")
    }

    /// The portal's own totals, and the same totals read back from its
    /// metrics text, agree.
    #[test]
    fn the_scraped_totals_match_the_accessor() {
        let metrics = portal();
        let started = Instant::now();
        metrics.record("/ConsoleTest/Ok", tonic::Code::Ok, started);
        metrics.record("/ConsoleTest/Ok", tonic::Code::Ok, started);
        metrics.record("/ConsoleTest/Ok", tonic::Code::Unavailable, started);
        metrics.record("/ConsoleTest/Other", tonic::Code::InvalidArgument, started);
        let ours = |totals: Vec<MethodTotals>| -> Vec<MethodTotals> {
            totals.into_iter().filter(|t| t.service == "ConsoleTest").collect()
        };
        let direct = ours(metrics.method_totals());
        let scraped = ours(totals_from_scrape(&parse(&metrics.render())));
        assert_eq!(direct.len(), 2, "{direct:?}");
        assert_eq!((direct[0].method.as_str(), direct[0].calls, direct[0].failed), ("Ok", 3, 1));
        assert_eq!((direct[1].method.as_str(), direct[1].calls, direct[1].failed), ("Other", 1, 1));
        assert_eq!(direct[0].latency_count, 3);
        for (d, s) in direct.iter().zip(&scraped) {
            assert_eq!(
                (&d.service, &d.method, d.calls, d.failed, d.latency_count),
                (&s.service, &s.method, s.calls, s.failed, s.latency_count)
            );
            assert!((d.latency_sum_seconds - s.latency_sum_seconds).abs() < 1e-9, "{d:?} {s:?}");
        }
    }

    #[test]
    fn the_project_alias_is_folded_into_its_service() {
        let totals = |service: &str, calls| MethodTotals {
            service: service.into(),
            method: "CreateClient".into(),
            calls,
            failed: 1,
            latency_sum_seconds: 0.5,
            latency_count: calls,
        };
        let folded = folded(vec![
            totals("AdminPortal", 2),
            totals("project.AdminPortal", 3),
            totals("grpc.health.v1.Health", 1),
        ]);
        assert_eq!(folded.len(), 2);
        assert_eq!((folded[0].service.as_str(), folded[0].calls, folded[0].failed), ("AdminPortal", 5, 2));
        assert_eq!(folded[0].latency_sum_seconds, 1.0);
        assert_eq!(folded[1].service, "grpc.health.v1.Health");
    }

    #[tokio::test]
    async fn an_order_portal_that_is_down_is_reported_not_fatal() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let addr = closed.local_addr().expect("an address");
        drop(closed);
        let answer = both_portals(Some(addr)).await;
        assert!(answer.portals[0].answered, "the admin portal's own numbers");
        let order = &answer.portals[1];
        assert!(!order.answered);
        assert!(order.error.as_deref().is_some_and(|e| e.contains("cannot connect")), "{order:?}");
        let none = both_portals(None).await;
        assert!(none.portals[1].error.as_deref().is_some_and(|e| e.contains("order_metrics")));
    }
}
