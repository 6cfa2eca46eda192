//! Calls to nodes over TLS with certificates a test chooses.

use std::time::Duration;

use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::StatusRequest;
use storage_node::tls;
use tonic::transport::{ClientTlsConfig, Endpoint};

/// A `Store.Status` call to `addr` over `endpoint`: the error, if any.
pub async fn status_over(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| format!("{e:?}"))?;
    StoreClient::new(channel).status(StatusRequest {}).await.map(drop).map_err(|s| format!("{s:?}"))
}

/// A client side towards the nodes that trusts the cluster's CA in
/// `certs` and shows `cert`/`key` (PEM).
pub fn showing(certs: &std::path::Path, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> ClientTlsConfig {
    tls::tonic_client_config(certs, tls::NODE_SERVER_NAME, Some((cert.into(), key.into()))).unwrap()
}

/// An endpoint to `addr` over TLS with `config`.
pub fn tls_endpoint(addr: std::net::SocketAddr, config: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config).unwrap()
}
