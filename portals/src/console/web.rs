//! The console's answers over the project's HTTP/1 server
//! ([`storage_node::http`]: a bounded number of connections, a timeout for
//! request heads), each made by [`Console::answer`].
//!
//! Every answer is complete before it is sent ([`Answer`]: a status, a
//! content type and a body), carries headers that keep the browser from
//! caching or sniffing it and from loading anything but the console's own
//! files, and is JSON unless it is one of the page's files. A connection
//! that sends no complete request head within [`HEADER_READ_TIMEOUT`] is
//! closed, so idle or stalled clients cannot hold the connection slots.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use http_body_util::Full;
use serde::Serialize;
use tokio::net::TcpListener;

use super::api::Console;

/// What the page may load: only the console's own files and API.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One complete answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body's media type.
    pub content_type: &'static str,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// `value` as JSON with `status` (a number such as 200 or 404).
    pub fn json(status: u16, value: &impl Serialize) -> Self {
        match serde_json::to_vec(value) {
            Ok(body) => Answer { status: code(status), content_type: "application/json", body: body.into() },
            Err(e) => Answer::error(500, &format!("the answer does not serialize: {e}")),
        }
    }

    /// `{"error": message}` with `status`.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Answer { status: code(status), content_type: "application/json", body: body.into() }
    }

    /// A file of the page.
    pub fn file(content_type: &'static str, body: &'static [u8]) -> Self {
        Answer { status: StatusCode::OK, content_type, body: Bytes::from_static(body) }
    }

    /// The body as JSON, for tests.
    #[cfg(test)]
    pub fn json_body(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    pub(crate) fn into_response(self) -> hyper::Response<Full<Bytes>> {
        let mut response = hyper::Response::new(Full::new(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
        headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY));
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        response
    }
}

fn code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// Serves `console` on `listener` until the task is dropped, on the
/// project's one HTTP/1 server ([`storage_node::http`]).
pub async fn serve(listener: TcpListener, console: Arc<Console>) {
    let handler: storage_node::http::Handler = Arc::new(move |method, uri| {
        let console = Arc::clone(&console);
        Box::pin(async move { console.answer(&method, &uri).await.into_response() })
    });
    storage_node::http::serve(listener, "console", handler).await
}
