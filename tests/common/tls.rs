//! Calls to nodes over TLS with certificates a test chooses.

use std::time::Duration;

use raftshop_proto::store::store_client::StoreClient;
use raftshop_proto::store::StatusRequest;
use storage_node::tls;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A `Store.Status` call to `addr` over `endpoint`: the error, if any.
pub async fn status_over(endpoint: Endpoint) -> Result<(), String> {
    let channel = endpoint.connect_timeout(Duration::from_secs(2)).connect().await.map_err(|e| format!("{e:?}"))?;
    StoreClient::new(channel).status(StatusRequest {}).await.map(drop).map_err(|s| format!("{s:?}"))
}

/// A client side that trusts the cluster's CA in `certs` and shows
/// `cert`/`key` (PEM).
pub fn showing(certs: &std::path::Path, cert: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(tls::ca_file(certs)).unwrap()))
        .identity(Identity::from_pem(cert, key))
        .domain_name(tls::NODE_SERVER_NAME)
}

/// An endpoint to `addr` over TLS with `config`.
pub fn tls_endpoint(addr: std::net::SocketAddr, config: ClientTlsConfig) -> Endpoint {
    Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config).unwrap()
}
