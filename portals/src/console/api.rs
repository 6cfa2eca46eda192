//! [`Console`]: what the console holds, and which answer each request gets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use storage_node::config::ClusterConfig;
use tokio::sync::watch;

use super::cluster::ClusterView;
use super::events::{self, EventLog};
use super::search::{self, SearchQuery};
use super::web::Answer;
use super::{assets, calls, transactions};
use crate::shop::Shop;

/// How long `/api/cluster` waits for the first snapshot after a start.
const FIRST_VIEW_WAIT: Duration = Duration::from_secs(3);

/// The longest a search may take: a 503 that says why comes before the
/// page gives up on the request (after 4 s).
pub const SEARCH_DEADLINE: Duration = Duration::from_secs(3);

/// The console's state: where to read, and what it has seen.
pub struct Console {
    /// The portal's shop, for searches (and its cluster client).
    shop: Shop,
    /// Where the order portal serves its metrics, if anywhere.
    order_metrics: Option<SocketAddr>,
    /// The latest snapshot of every node's status.
    view: watch::Receiver<Option<Arc<ClusterView>>>,
    /// What the snapshots showed changing.
    events: Arc<EventLog>,
    /// The task taking the snapshots, stopped with the console.
    _watcher: Option<AbortOnDrop<()>>,
}

/// Aborts a task when dropped, so a task never outlives what it serves.
pub(crate) struct AbortOnDrop<T>(pub(crate) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Console {
    /// A console over `shop`'s cluster, observing it from now on in a
    /// background task that ends when the console is dropped.
    pub fn start(config: &ClusterConfig, shop: Shop) -> Self {
        let (latest, view) = watch::channel(None);
        let events = Arc::new(EventLog::default());
        let watcher = tokio::spawn(events::watch_cluster(config.clone(), shop.cluster(), latest, Arc::clone(&events)));
        let order_metrics = config.portals.order_metrics;
        let shop = shop.deadline_at_most(SEARCH_DEADLINE);
        Console { shop, order_metrics, view, events, _watcher: Some(AbortOnDrop(watcher)) }
    }

    /// The answer to `method path?query`.
    pub async fn answer(&self, method: &http::Method, uri: &http::Uri) -> Answer {
        if method != http::Method::GET {
            return Answer::error(405, &format!("the console only answers GET, not {method}"));
        }
        let path = uri.path();
        if let Some(asset) = assets::asset(path) {
            return Answer::file(asset.content_type, asset.body);
        }
        match path {
            "/api/cluster" => self.cluster().await,
            "/api/metrics" => Answer::json(200, &calls::both_portals(self.order_metrics).await),
            "/api/transactions" => Answer::json(200, &transactions::open_transactions(&self.shop.cluster()).await),
            "/api/events" => Answer::json(200, &serde_json::json!({ "events": self.events.newest_first() })),
            "/api/search" => match SearchQuery::parse(uri.query()) {
                Ok(query) => search::find(&self.shop, query).await,
                Err(message) => Answer::error(400, &message),
            },
            _ => Answer::error(
                404,
                &format!(
                    "nothing is served at {}; the page is /, the API /api/cluster, /api/metrics, \
                     /api/transactions, /api/events and /api/search?kind=product&id=N",
                    crate::request::echo(path)
                ),
            ),
        }
    }

    /// The latest snapshot, waiting a little for the first one.
    async fn cluster(&self) -> Answer {
        let mut view = self.view.clone();
        let first = tokio::time::timeout(FIRST_VIEW_WAIT, view.wait_for(Option::is_some)).await;
        match first.ok().and_then(Result::ok).and_then(|latest| latest.clone()) {
            Some(latest) => Answer::json(200, latest.as_ref()),
            None => Answer::error(503, "the console has not observed the cluster yet; try again shortly"),
        }
    }
}

/// Milliseconds since the Unix epoch, for the times the page shows.
pub fn now_ms() -> u64 {
    let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since_epoch.map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_node::client::ClusterClient;

    /// A console over the embedded config's addresses, which nothing serves
    /// in unit tests, observing nothing (its `/api/cluster` answers 503):
    /// only answers that need no cluster are asked for.
    fn console() -> Console {
        let config = ClusterConfig::embedded();
        let shop = Shop::new(ClusterClient::new(&config), Duration::from_millis(200));
        let (_, view) = watch::channel(None);
        Console { shop, order_metrics: config.portals.order_metrics, view, events: Arc::default(), _watcher: None }
    }

    async fn get(console: &Console, target: &str) -> Answer {
        console.answer(&http::Method::GET, &target.parse().expect("a request target")).await
    }

    #[tokio::test]
    async fn the_page_and_its_files_are_served_with_their_types() {
        let console = console();
        for (path, content_type, needle) in [
            ("/", "text/html; charset=utf-8", "<html"),
            ("/index.html", "text/html; charset=utf-8", "app.js"),
            ("/app.js", "text/javascript; charset=utf-8", "/api/cluster"),
            ("/style.css", "text/css; charset=utf-8", "{"),
        ] {
            let answer = get(&console, path).await;
            assert_eq!((answer.status.as_u16(), answer.content_type), (200, content_type), "{path}");
            assert!(String::from_utf8_lossy(&answer.body).contains(needle), "{path} contains {needle}");
        }
    }

    #[tokio::test]
    async fn unknown_paths_are_404_and_other_methods_405_as_json() {
        let console = console();
        let missing = get(&console, "/api/nothing?x=1").await;
        assert_eq!(missing.status.as_u16(), 404);
        assert_eq!(missing.content_type, "application/json");
        let message = missing.json_body()["error"].as_str().unwrap_or_default().to_owned();
        assert!(message.contains("\"/api/nothing\"") && message.contains("/api/search"), "{message}");
        let post = console.answer(&http::Method::POST, &"/api/events".parse().expect("a target")).await;
        assert_eq!(post.status.as_u16(), 405);
        assert!(post.json_body()["error"].as_str().is_some_and(|e| e.contains("only answers GET, not POST")));
        assert_eq!(post.clone().into_response().headers()["allow"], "GET");
    }

    #[tokio::test]
    async fn a_search_with_a_bad_id_or_kind_is_a_400_before_any_read() {
        let console = console();
        let answer = get(&console, "/api/search?kind=product&id=abc").await;
        assert_eq!(answer.status.as_u16(), 400);
        let error = answer.json_body()["error"].as_str().unwrap_or_default().to_owned();
        assert_eq!(error, "id must be a decimal integer, got \"abc\"");
        assert_eq!(get(&console, "/api/search?kind=shoe&id=3").await.status.as_u16(), 400);
        assert_eq!(get(&console, "/api/search").await.status.as_u16(), 400);
    }

    #[tokio::test]
    async fn events_start_empty_and_an_unobserved_cluster_is_a_503() {
        let console = console();
        let events = get(&console, "/api/events").await;
        assert_eq!(events.status.as_u16(), 200);
        assert_eq!(events.json_body(), serde_json::json!({ "events": [] }));
        let cluster = get(&console, "/api/cluster").await;
        assert_eq!(cluster.status.as_u16(), 503);
        assert!(cluster.json_body()["error"].as_str().is_some_and(|e| e.contains("not observed")));
    }

    #[tokio::test]
    async fn every_answer_forbids_loading_from_elsewhere() {
        let response = get(&console(), "/").await.into_response();
        let policy = response.headers()["content-security-policy"].to_str().unwrap_or_default().to_owned();
        assert!(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"), "{policy}");
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
}
