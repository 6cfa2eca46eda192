//! Request ids at the portal's door (see [`storage_node::request_id`]).
//!
//! [`RequestIdLayer`] wraps the whole gRPC server. Each call gets the
//! caller's `x-request-id` when it is usable, or a new one; the id goes
//! back in the response's metadata, names a span around everything the
//! call logs here, and rides along on every `Store` request the call makes,
//! so the nodes' log lines for it name it too. With `RUST_LOG` at debug,
//! every answered call logs one line with its id and status code.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http::HeaderValue;
use storage_node::request_id::{self, HEADER};
use tracing::Instrument;

/// Gives every call a request id (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct RequestIdLayer;

impl<S> tower::Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestIds { inner }
    }
}

/// The service [`RequestIdLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct RequestIds<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for RequestIds<S>
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

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let given = request.headers().get(HEADER).and_then(|value| value.to_str().ok());
        let id = given.and_then(request_id::accept).unwrap_or_else(request_id::generate);
        // `accept` and `generate` only make visible ASCII, a valid header value.
        let value = HeaderValue::from_str(&id).expect("a request id is a valid header value");
        // The handlers see the id in their metadata also when it was made here.
        request.headers_mut().insert(HEADER, value.clone());
        let span = tracing::info_span!("call", request_id = %id, method = %request.uri().path());
        let started = Instant::now();
        let answer = span.in_scope(|| self.inner.call(request));
        let answered = async move {
            let mut result = answer.await;
            if let Ok(response) = &mut result {
                let code = crate::metrics::answered_code(response);
                tracing::debug!(
                    code = storage_node::metrics::code_name(code),
                    took_us = started.elapsed().as_micros() as u64,
                    "answered"
                );
                response.headers_mut().insert(HEADER, value);
            }
            result
        };
        Box::pin(request_id::scope(id, answered.instrument(span)))
    }
}
