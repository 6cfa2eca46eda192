//! The one way this project builds a gRPC client endpoint.
//!
//! Every connection to a node or a portal (clients, peers, the CLI, the
//! chaos suite, the bench) starts from [`endpoint`]: small requests go out
//! at once (`TCP_NODELAY`; Nagle's algorithm against delayed ACKs costs
//! ~40 ms a call), a dead peer is noticed within seconds (HTTP/2
//! keep-alive pings), and connecting gives up after [`CONNECT_TIMEOUT`].
//! Callers adjust from there: their own timeouts, lazy or eager
//! connection, larger HTTP/2 windows for replication streams.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

/// Time allowed to open a TCP connection, unless the caller sets another.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Interval of HTTP/2 keep-alive pings, and how long one may go unanswered.
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// An endpoint for `addr`: `host:port`, or a URI such as
/// `http://host:port`; an error says why it is not one.
pub fn endpoint(addr: impl std::fmt::Display) -> Result<Endpoint, String> {
    with_scheme(addr, "http")
}

/// An endpoint for a portal at `addr`: over TLS when `config`'s `[auth]`
/// has `tls = true`, trusting the cluster's CA and showing `user`'s
/// certificate and key files if given; else as [`endpoint`].
pub fn portal_endpoint(
    addr: impl std::fmt::Display,
    config: &crate::ClusterConfig,
    user: Option<(&std::path::Path, &std::path::Path)>,
) -> Result<Endpoint, String> {
    let Some(dir) = config.portal_tls_dir() else { return endpoint(addr) };
    let settings = crate::tls::portal_client_config(dir, user).map_err(|e| format!("TLS towards {addr}: {e}"))?;
    let addr = addr.to_string();
    let bare = addr.split_once("://").map_or(addr.as_str(), |(_, rest)| rest);
    with_scheme(bare, "https")?.tls_config(settings).map_err(|e| format!("TLS towards {addr}: {e}"))
}

/// A lazily connecting channel to a storage node at `endpoint`: over TLS
/// with this process's client side if it set one
/// (`crate::tls::use_for_clients`; each new connection takes the
/// certificates of the moment), else plaintext.
pub fn connect_node_lazy(endpoint: &Endpoint) -> Channel {
    match crate::tls::clients_use_tls() {
        true => endpoint.connect_with_connector_lazy(crate::tls::Connector),
        false => endpoint.connect_lazy(),
    }
}

/// [`connect_node_lazy`], connected now.
pub async fn connect_node(endpoint: &Endpoint) -> Result<Channel, tonic::transport::Error> {
    match crate::tls::clients_use_tls() {
        true => endpoint.connect_with_connector(crate::tls::Connector).await,
        false => endpoint.connect().await,
    }
}

fn with_scheme(addr: impl std::fmt::Display, scheme: &str) -> Result<Endpoint, String> {
    let addr = addr.to_string();
    let uri = if addr.contains("://") { addr.clone() } else { format!("{scheme}://{addr}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("{addr:?} is not an address: {e}"))?;
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_uris_are_taken_and_nonsense_refused() {
        assert_eq!(endpoint("127.0.0.1:50101").unwrap().uri().to_string(), "http://127.0.0.1:50101/");
        assert_eq!(endpoint("http://shop-1:55006").unwrap().uri().to_string(), "http://shop-1:55006/");
        let refused = endpoint("not an address").unwrap_err();
        assert!(refused.contains("\"not an address\" is not an address"), "{refused}");
    }
}
