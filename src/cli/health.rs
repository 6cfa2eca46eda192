//! Asking a process for its `grpc.health.v1` answer.
//!
//! Storage nodes and portals serve the standard health service. A node says
//! `NOT_SERVING` while its Raft core is down or it is shutting down; a
//! portal while a shard it needs has no reachable leader. `status` asks for
//! the server as a whole (service `""`), every process at once, each with
//! its own timeout, so a dead one costs one timeout in total.

use std::fmt;
use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A process's answer to `grpc.health.v1.Health/Check`, or why none came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// `SERVING`.
    Serving,
    /// `NOT_SERVING`.
    NotServing,
    /// Another answer (`UNKNOWN`, `SERVICE_UNKNOWN`), by its name.
    Other(String),
    /// No answer within the timeout, or an error instead; the reason.
    Unreachable(String),
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Serving => f.write_str("SERVING"),
            Health::NotServing => f.write_str("NOT_SERVING"),
            Health::Other(name) => f.write_str(name),
            Health::Unreachable(_) => f.write_str("unreachable"),
        }
    }
}

impl Health {
    /// The health a `Check` answer's status code stands for.
    fn from_code(code: i32) -> Self {
        match ServingStatus::try_from(code) {
            Ok(ServingStatus::Serving) => Health::Serving,
            Ok(ServingStatus::NotServing) => Health::NotServing,
            Ok(other) => Health::Other(other.as_str_name().to_owned()),
            Err(_) => Health::Other(format!("status {code}")),
        }
    }
}

/// Asks the process at `endpoint` how it is, within `timeout`; a storage
/// node (`node`) over the cluster's TLS if it has it.
pub async fn check(endpoint: Result<Endpoint, String>, node: bool, timeout: Duration) -> Health {
    match tokio::time::timeout(timeout, ask(endpoint, node, timeout)).await {
        Ok(Ok(code)) => Health::from_code(code),
        Ok(Err(reason)) => Health::Unreachable(reason),
        Err(_) => Health::Unreachable(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// Asks every endpoint at once; the answers come back in the same order.
pub async fn check_all(
    endpoints: impl IntoIterator<Item = (Result<Endpoint, String>, bool)>,
    timeout: Duration,
) -> Vec<Health> {
    futures::future::join_all(endpoints.into_iter().map(|(endpoint, node)| check(endpoint, node, timeout))).await
}

/// One `Check` call on a fresh connection: the answer's status code.
async fn ask(endpoint: Result<Endpoint, String>, node: bool, timeout: Duration) -> Result<i32, String> {
    let endpoint = endpoint?.connect_timeout(timeout);
    let channel = match node {
        true => storage_node::endpoint::connect_node(&endpoint).await,
        false => endpoint.connect().await,
    };
    let channel = channel.map_err(|e| e.to_string())?;
    let request = HealthCheckRequest { service: String::new() };
    let answer = HealthClient::new(channel).check(request).await.map_err(|status| status.message().to_owned())?;
    Ok(answer.into_inner().status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_grpc_names_them() {
        assert_eq!(Health::from_code(ServingStatus::Serving as i32).to_string(), "SERVING");
        assert_eq!(Health::from_code(ServingStatus::NotServing as i32).to_string(), "NOT_SERVING");
        assert_eq!(Health::from_code(ServingStatus::ServiceUnknown as i32).to_string(), "SERVICE_UNKNOWN");
        assert_eq!(Health::from_code(42).to_string(), "status 42");
        assert_eq!(Health::Unreachable("refused".into()).to_string(), "unreachable");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("binds").local_addr().expect("address");
        let health = check(storage_node::endpoint::endpoint(port), false, Duration::from_millis(500)).await;
        assert!(matches!(health, Health::Unreachable(_)), "{health:?}");
    }
}
