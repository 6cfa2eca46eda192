//! Honest health: a portal says SERVING (grpc.health.v1) only while it can
//! reach a leader of every shard.
//!
//! A portal holds no data, so it can serve a call only if the shards can:
//! clients, products and orders live in both shards by the parity of their
//! IDs, so every portal needs both. A background task ([`watch_shards`])
//! probes each shard every [`PROBE_INTERVAL`] with the cheapest linearizable
//! read there is (an empty `GetMany`, which still passes the leader's
//! read-index barrier and so proves a leader with a quorum behind it). While
//! some shard fails its probe, every service the portal reports — both names
//! of its API, the feed, and the overall `""` entry — is NOT_SERVING; as
//! soon as all shards answer again, SERVING. A load balancer or `raftshop
//! status` asking the portal therefore learns what a call would meet.

use std::sync::Arc;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::{Query, Shard};
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// A status as a health service reports it (`SERVING`, `NOT_SERVING`, ...),
/// for callers without a dependency on tonic-health.
pub use tonic_health::pb::health_check_response::ServingStatus as HealthStatus;

/// How often each shard's leader is probed.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// How long one probe may take before the shard counts as leaderless; an
/// election takes 400-800 ms, so a probe rides out a short one.
pub const PROBE_DEADLINE: Duration = Duration::from_millis(1000);

/// Probes every shard forever, reporting `services` SERVING while all of
/// them answer and NOT_SERVING otherwise. Abort the task to stop it.
pub async fn watch_shards(cluster: Arc<ClusterClient>, mut reporter: HealthReporter, services: Vec<String>) {
    let mut serving = None;
    loop {
        let probes = Shard::ALL.map(|shard| {
            let cluster = cluster.clone();
            async move { (shard, probe(&cluster, shard).await) }
        });
        let failed: Vec<(Shard, String)> = futures::future::join_all(probes)
            .await
            .into_iter()
            .filter_map(|(shard, outcome)| outcome.err().map(|why| (shard, why)))
            .collect();
        let now_serving = failed.is_empty();
        if serving != Some(now_serving) {
            match failed.first() {
                None => tracing::info!("every shard has a reachable leader; reporting SERVING"),
                Some((shard, why)) => {
                    tracing::warn!(%shard, %why, "a shard has no reachable leader; reporting NOT_SERVING")
                }
            }
            let status = if now_serving { ServingStatus::Serving } else { ServingStatus::NotServing };
            for service in &services {
                reporter.set_service_status(service, status).await;
            }
            serving = Some(now_serving);
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}

/// Ok if `shard` has a leader that can confirm a linearizable read.
async fn probe(cluster: &ClusterClient, shard: Shard) -> Result<(), String> {
    cluster.shard(shard).read(&Query::GetMany(Vec::new()), PROBE_DEADLINE).await.map(drop).map_err(|e| e.to_string())
}

/// Asks the health service behind `channel` about `service` (`""`: the
/// server as a whole), within `timeout`.
pub async fn check(channel: Channel, service: &str, timeout: Duration) -> Result<HealthStatus, tonic::Status> {
    let request = HealthCheckRequest { service: service.to_owned() };
    let answer = tokio::time::timeout(timeout, HealthClient::new(channel).check(request))
        .await
        .map_err(|_| tonic::Status::deadline_exceeded(format!("no health answer within {timeout:?}")))??;
    Ok(answer.into_inner().status())
}
