//! The project's one small HTTP/1 server, behind the nodes' and portals'
//! `/metrics` and the admin portal's web console.
//!
//! One task per connection, at most [`MAX_CONNECTIONS`] at once (more wait
//! in the listen queue); a connection that sends no complete request head
//! within [`HEADER_READ_TIMEOUT`] is closed, so idle or stalled clients
//! cannot hold the slots. Each request is answered whole by the handler,
//! from its method and URI (these servers take no request bodies).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// Connections served at once; more wait in the listen queue.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a client has to send a request head (also how long an idle
/// keep-alive connection stays open).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (e.g. out of file descriptors), so the loop
/// does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A complete response.
pub type Response = hyper::Response<Full<Bytes>>;
/// The answer to one request, from its method and URI.
pub type Handler =
    Arc<dyn Fn(hyper::Method, hyper::Uri) -> Pin<Box<dyn Future<Output = Response> + Send>> + Send + Sync>;

/// Serves `handler` on `listener` until the task is dropped; `name` says
/// which server in the logs.
pub async fn serve(listener: TcpListener, name: &'static str, handler: Handler) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, server = name, "cannot accept an HTTP connection");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let answer = handler(request.method().clone(), request.uri().clone());
                async move { Ok::<_, Infallible>(answer.await) }
            });
            let mut connection = hyper::server::conn::http1::Builder::new();
            connection.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
            let _ = connection.serve_connection(TokioIo::new(stream), service).await;
            drop(slot);
        });
    }
}
