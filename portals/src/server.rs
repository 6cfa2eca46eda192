//! Serving a portal: both service names, health, reflection, shutdown.
//!
//! The seed's `api.proto` has no package, so its clients call
//! `/AdminPortal/CreateClient`; the course's spec declares `package
//! project;`, so its clients call `/project.AdminPortal/CreateClient`. The
//! messages are identical on the wire, so one set of handlers serves both:
//! [`ProjectAlias`] rewrites the `project.` path to the package-less one
//! before routing. Reflection lists both names.
//!
//! Health (grpc.health.v1) reports both names, the feed and the overall
//! `""` entry together: NOT_SERVING from start until the first probe finds
//! a leader in every shard, then whatever the probes find ([`health`]).

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::uri::PathAndQuery;
use raftshop_proto::api::{admin_portal_server::AdminPortalServer, order_portal_server::OrderPortalServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::auth::{AuthLayer, Gate};
use crate::feed::FeedService;
use crate::health;
use crate::service::Portal;
use raftshop_proto::feed::feed_server::FeedServer;
use storage_node::tls::ServerSide;
use tonic::server::NamedService;
use tonic_health::ServingStatus;

/// Largest request accepted on the wire; `data` beyond
/// [`storage_node::limits::MAX_DATA_BYTES`] then gets a 400 that says so,
/// rather than a transport error.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Which of the two portals a process serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortalKind {
    /// AdminPortal: clients and products.
    Admin,
    /// OrderPortal: orders.
    Order,
}

impl PortalKind {
    /// The process's name.
    pub fn name(self) -> &'static str {
        match self {
            PortalKind::Admin => "admin-portal",
            PortalKind::Order => "order-portal",
        }
    }

    /// The names its health service reports: the API's service under both
    /// names, the feed, and `""` (the server as a whole).
    pub fn health_names(self) -> Vec<String> {
        let api = match self {
            PortalKind::Admin => <AdminPortalServer<Portal> as NamedService>::NAME,
            PortalKind::Order => <OrderPortalServer<Portal> as NamedService>::NAME,
        };
        let feed = <FeedServer<FeedService> as NamedService>::NAME;
        vec![api.to_owned(), format!("project.{api}"), feed.to_owned(), String::new()]
    }
}

/// Rewrites `/project.X/Method` to `/X/Method` for the seed's services.
#[derive(Clone, Debug, Default)]
pub struct ProjectAliasLayer;

impl<S> tower::Layer<S> for ProjectAliasLayer {
    type Service = ProjectAlias<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ProjectAlias { inner }
    }
}

/// The service [`ProjectAliasLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct ProjectAlias<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for ProjectAlias<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(path) = unaliased(request.uri().path()) {
            let mut parts = request.uri().clone().into_parts();
            parts.path_and_query = PathAndQuery::from_str(&path).ok();
            if let Ok(uri) = http::Uri::from_parts(parts) {
                *request.uri_mut() = uri;
            }
        }
        self.inner.call(request)
    }
}

/// The package-less path for a `project.` one of the seed's services.
pub fn unaliased(path: &str) -> Option<String> {
    ["AdminPortal", "OrderPortal"].iter().find_map(|service| {
        path.strip_prefix(&format!("/project.{service}/")).map(|method| format!("/{service}/{method}"))
    })
}

/// Who may call a portal, and how they reach it (`[auth]`).
#[derive(Debug, Default)]
pub struct Access {
    /// Every call needs a user with the right role, if set.
    pub gate: Option<Arc<Gate>>,
    /// The API is served over TLS, if set.
    pub tls: Option<Arc<ServerSide>>,
}

/// Serves `kind` on `listener` until `shutdown` resolves; in-flight calls
/// finish first.
pub async fn serve(
    kind: PortalKind,
    listener: TcpListener,
    portal: Portal,
    access: Access,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let (mut health_reporter, health) = tonic_health::server::health_reporter();
    for name in kind.health_names() {
        health_reporter.set_service_status(name, ServingStatus::NotServing).await;
    }
    let prober = tokio::spawn(health::watch_shards(portal.shop.cluster(), health_reporter, kind.health_names()));
    let router = tonic::transport::Server::builder()
        .layer(crate::metrics::CallMetricsLayer)
        .layer(crate::request_ids::RequestIdLayer)
        .layer(ProjectAliasLayer)
        .layer(AuthLayer::new(access.gate))
        .add_service(health)
        .add_service(storage_node::node::reflection_v1())
        .add_service(storage_node::node::reflection_v1alpha());
    let feed = FeedServer::new(FeedService::new(portal.shop.cluster()));
    let router = router.add_service(feed);
    let router = match kind {
        PortalKind::Admin => {
            router.add_service(AdminPortalServer::new(portal).max_decoding_message_size(MAX_MESSAGE_BYTES))
        }
        PortalKind::Order => {
            router.add_service(OrderPortalServer::new(portal).max_decoding_message_size(MAX_MESSAGE_BYTES))
        }
    };
    let served = match access.tls {
        Some(tls) => router.serve_with_incoming_shutdown(tls.incoming(listener), shutdown).await,
        None => {
            // nodelay on accepted sockets: small replies must not wait for ACKs.
            let incoming = TcpIncoming::from_listener(listener, true, Some(Duration::from_secs(30)))
                .expect("a bound listener is valid");
            router.serve_with_incoming_shutdown(incoming, shutdown).await
        }
    };
    prober.abort();
    served
}

/// Binds `addr`, telling a busy port from other failures.
pub async fn bind(kind: PortalKind, addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            format!("address {addr} is already in use (is another {} running?)", kind.name())
        }
        _ => format!("cannot listen on {addr}: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_paths_map_to_the_seed_paths() {
        assert_eq!(unaliased("/project.AdminPortal/CreateClient").as_deref(), Some("/AdminPortal/CreateClient"));
        assert_eq!(
            unaliased("/project.OrderPortal/RetrieveClientOrders").as_deref(),
            Some("/OrderPortal/RetrieveClientOrders")
        );
        assert_eq!(unaliased("/AdminPortal/CreateClient"), None);
        assert_eq!(unaliased("/grpc.health.v1.Health/Check"), None);
        assert_eq!(unaliased("/project.Other/X"), None);
    }
}
