//! Request ids: one id per portal call, carried into every node it reaches.
//!
//! A portal takes the caller's `x-request-id` metadata (or makes an id when
//! there is none, or it is unusable), answers with it, and runs the call in
//! a [`scope`] with it. Every `Store` request the cluster client sends from
//! inside that scope carries it ([`outgoing`]), and the node's handler logs
//! under a span naming it. So `grep <id>` over the portal's and the nodes'
//! logs (text or JSON) finds one call's lines.

use std::future::Future;

/// The gRPC metadata key of a request id, in and out.
pub const HEADER: &str = "x-request-id";
/// The longest id accepted from a caller; longer ones are replaced.
pub const MAX_LEN: usize = 64;

tokio::task_local! {
    /// The id of the call the current task works for.
    static CURRENT: String;
}

/// `value` if it can serve as a request id: 1 to [`MAX_LEN`] characters of
/// letters, digits and `-_.:/`, so it prints safely in any log.
pub fn accept(value: &str) -> Option<String> {
    let usable = !value.is_empty()
        && value.len() <= MAX_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:/".contains(&b));
    usable.then(|| value.to_owned())
}

/// A new id: 16 hex digits.
pub fn generate() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Runs `future` as part of the call with request id `id`.
pub async fn scope<F: Future>(id: String, future: F) -> F::Output {
    CURRENT.scope(id, future).await
}

/// The id of the call the current task works for, if any.
pub fn current() -> Option<String> {
    CURRENT.try_with(Clone::clone).ok()
}

/// `future`, to be spawned as its own task, still working for the current
/// call (task-locals do not cross `tokio::spawn` by themselves).
pub fn propagate<F: Future>(future: F) -> impl Future<Output = F::Output> {
    let id = current();
    async move {
        match id {
            Some(id) => scope(id, future).await,
            None => future.await,
        }
    }
}

/// `message` as a request carrying the current call's id, if any.
pub fn outgoing<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = current().and_then(|id| id.parse().ok()) {
        request.metadata_mut().insert(HEADER, value);
    }
    request
}

/// The usable request id in `request`'s metadata, if any.
pub fn incoming<T>(request: &tonic::Request<T>) -> Option<String> {
    request.metadata().get(HEADER).and_then(|value| value.to_str().ok()).and_then(accept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_ids_are_accepted() {
        assert_eq!(accept("order-42/retry.1").as_deref(), Some("order-42/retry.1"));
        assert_eq!(accept(""), None);
        assert_eq!(accept("has space"), None);
        assert_eq!(accept("line\nbreak"), None);
        assert_eq!(accept(&"x".repeat(MAX_LEN + 1)), None);
        assert!(accept(&generate()).is_some(), "a generated id is accepted");
    }

    #[tokio::test]
    async fn the_id_travels_with_the_call_and_into_spawned_work() {
        assert_eq!(current(), None);
        assert!(outgoing(()).metadata().get(HEADER).is_none(), "no call, no id");
        let (inside, spawned, header) = scope("abc-1".into(), async {
            let spawned = tokio::spawn(propagate(async { current() })).await.unwrap();
            let header = outgoing(()).metadata().get(HEADER).map(|v| v.to_str().unwrap().to_owned());
            (current(), spawned, header)
        })
        .await;
        assert_eq!(inside.as_deref(), Some("abc-1"));
        assert_eq!(spawned.as_deref(), Some("abc-1"));
        assert_eq!(header.as_deref(), Some("abc-1"));
        assert_eq!(current(), None, "the scope ends with the call");
    }
}
