//! The admin portal's web console against a real cluster: its JSON API over
//! HTTP, then the page in headless Chromium (driven through chromedriver
//! with WebDriver): it shows both shards' leaders, follows a SIGKILLed
//! leader to its successor without a reload, records the change, and finds
//! a product created through the gRPC API with its search box. A
//! screenshot is saved under the target directory.
//!
//! Without `chromium` and `chromedriver` on the PATH (Debian:
//! `apt-get install chromium chromium-driver`), the browser part says it is
//! skipped and why; the HTTP part runs anyway.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{channel, shop_cluster, STARTUP};
use fantoccini::{Client, ClientBuilder, Locator};
use raftshop::local_cluster::{free_port, local_config, LocalCluster};
use raftshop::process::{self, Signal};
use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::order_portal_client::OrderPortalClient;
use raftshop_proto::api::{Client as ShopClient, Id, Order, Product};
use serde_json::{json, Value};
use storage_node::{ClusterConfig, Shard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// How soon after a leader's SIGKILL the page must name another leader.
const LEADER_CHANGE_SHOWN_WITHIN: Duration = Duration::from_secs(5);
/// How often the test looks at the page.
const POLL: Duration = Duration::from_millis(100);
/// How long the browser part waits for anything that is not the leader change.
const PAGE_WAIT: Duration = Duration::from_secs(15);

/// `method path` over HTTP/1.1: the status and the body as JSON (`Null`
/// if it is not JSON).
async fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("the console accepts connections");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("the request is sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("an answer");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {response}"));
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).expect("a status code");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Polls `GET path` until `accept` takes its JSON, or panics after `wait`.
async fn until_json(addr: SocketAddr, path: &str, wait: Duration, accept: impl Fn(&Value) -> bool) -> Value {
    let give_up = Instant::now() + wait;
    loop {
        let (status, body) = http(addr, "GET", path).await;
        if status == 200 && accept(&body) {
            return body;
        }
        assert!(Instant::now() < give_up, "GET {path} never gave what was wanted; last: {status} {body}");
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_the_cluster_and_follows_a_leader_kill() {
    let mut cluster = shop_cluster().await;
    let console = cluster.config().portals.console.expect("local clusters give the console an address");
    let product = create_shop_rows(&cluster).await;
    check_the_api(&cluster, console, product).await;

    let Some(programs) = BrowserPrograms::find() else {
        eprintln!(
            "SKIPPED the browser part of the console test: `chromium` and `chromedriver` must both be on the \
             PATH (Debian: apt-get install chromium chromium-driver); the console's HTTP API was tested"
        );
        return;
    };
    let driver = Chromedriver::start(&programs).await;
    let browser = driver.browser(&programs).await;
    drive_the_page(&browser, &mut cluster, console, product).await;
    let screenshot = browser.screenshot().await.expect("a screenshot");
    let path = screenshot_path();
    std::fs::write(&path, screenshot).expect("the screenshot is saved");
    eprintln!("console screenshot: {}", path.display());
    browser.close().await.expect("the browser closes");
}

/// Creates a client, a product and an order through the portals; returns
/// the product's PID.
async fn create_shop_rows(cluster: &LocalCluster) -> u64 {
    let portals = &cluster.config().portals;
    let mut admin = AdminPortalClient::new(channel(portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(portals.order).await);
    let pid = 4242;
    let data = r#"{"name": "console lamp", "price": 12.5, "quantity": 40}"#;
    let created = admin.create_product(Product { pid: pid.to_string(), data: data.into() }).await.unwrap();
    assert_eq!(created.into_inner().error, 0);
    let client = ShopClient { cid: "7".into(), data: r#"{"name": "Ana"}"#.into() };
    assert_eq!(admin.create_client(client).await.unwrap().into_inner().error, 0);
    let order = Order { oid: "11".into(), cid: "7".into(), data: format!(r#"[{{"id": {pid}, "quantity": 2}}]"#) };
    assert_eq!(orders.create_order(order).await.unwrap().into_inner().error, 0);
    pid
}

/// The JSON API: shapes, both portals' numbers, search answers and errors.
async fn check_the_api(cluster: &LocalCluster, console: SocketAddr, pid: u64) {
    let settled = |shard: &Value| {
        let members = shard["members"].as_array().into_iter().flatten();
        shard["leader"].is_u64()
            && members.clone().all(|m| m["answered"] == true && m["committed_index"].as_u64() >= Some(1))
    };
    let view = until_json(console, "/api/cluster", STARTUP, |view| {
        view["shards"].as_array().is_some_and(|shards| shards.len() == 2 && shards.iter().all(settled))
    })
    .await;
    for (shard, expected) in view["shards"].as_array().into_iter().flatten().zip(Shard::ALL) {
        assert_eq!(shard["shard"], expected.name());
        let members = shard["members"].as_array().expect("members");
        let ids: Vec<u64> = members.iter().filter_map(|m| m["id"].as_u64()).collect();
        assert_eq!(ids, cluster.members(expected), "every member, in order");
        let leader = members.iter().find(|m| m["id"] == shard["leader"]).expect("the leader is a member");
        assert_eq!((&leader["role"], &leader["lag"]), (&json!("leader"), &json!(0)), "{leader}");
    }

    let calls = until_json(console, "/api/metrics", STARTUP, |answer| answer["portals"][1]["answered"] == true).await;
    let called = |portal: usize, method: &str| {
        calls["portals"][portal]["methods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["method"] == method)
            .and_then(|m| m["calls"].as_u64())
    };
    assert_eq!(called(0, "CreateProduct"), Some(1), "the admin portal's own numbers: {calls}");
    assert_eq!(called(1, "CreateOrder"), Some(1), "the order portal's numbers, scraped: {calls}");

    let (status, found) = http(console, "GET", &format!("/api/search?kind=product&id={pid}")).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(found["data"]["name"], "console lamp");
    let (status, order) = http(console, "GET", "/api/search?kind=order&id=11").await;
    assert_eq!((status, &order["data"]["total"]), (200, &json!(25.0)), "{order}");
    let (status, client) = http(console, "GET", "/api/search?kind=client&id=7").await;
    assert_eq!((status, &client["data"]["name"]), (200, &json!("Ana")), "{client}");
    let (status, missing) = http(console, "GET", "/api/search?kind=client&id=8").await;
    assert_eq!((status, missing["error"].as_str()), (404, Some("client 8 does not exist")));
    let (status, bad) = http(console, "GET", "/api/search?kind=product&id=abc").await;
    assert_eq!(status, 400, "{bad}");
    assert!(bad["error"].as_str().is_some_and(|e| e.contains("decimal integer")), "{bad}");
    assert_eq!(http(console, "GET", "/no/such/page").await.0, 404);
    assert_eq!(http(console, "POST", "/api/cluster").await.0, 405);

    let open = until_json(console, "/api/transactions", STARTUP, |t| t["shards"].as_array().is_some()).await;
    assert!(open["shards"].as_array().into_iter().flatten().all(|s| s["error"].is_null()), "{open}");
    let leader_seen = |events: &Value, shard: Shard| {
        events["events"].as_array().into_iter().flatten().any(|e| e["kind"] == "leader" && e["shard"] == shard.name())
    };
    until_json(console, "/api/events", STARTUP, |events| Shard::ALL.iter().all(|s| leader_seen(events, *s))).await;
}

/// The page: leaders, a leader kill followed, events, search, the charts.
async fn drive_the_page(browser: &Client, cluster: &mut LocalCluster, console: SocketAddr, pid: u64) {
    browser.goto(&format!("http://{console}/")).await.expect("the page loads");
    let even = until_attr(browser, "#leader-even", "data-leader", PAGE_WAIT, |v| !v.is_empty()).await;
    let shard = Shard::Odd;
    let old: u64 = until_attr(browser, "#leader-odd", "data-leader", PAGE_WAIT, |v| !v.is_empty())
        .await
        .parse()
        .expect("a node id");
    assert_eq!(old, cluster.wait_for_leader(shard, STARTUP).await.unwrap(), "the page names the real leader");
    let row = format!(r#"tr[data-shard="odd"][data-node="{old}"]"#);
    assert_eq!(until_attr(browser, &row, "data-role", PAGE_WAIT, |_| true).await, "leader");
    assert!(!even.is_empty());

    cluster.kill(old);
    let killed_at = Instant::now();
    let new = until_attr(browser, "#leader-odd", "data-leader", LEADER_CHANGE_SHOWN_WITHIN, |v| {
        !v.is_empty() && v != old.to_string()
    })
    .await;
    eprintln!("the page showed node {new} leading shard odd {:?} after node {old} was killed", killed_at.elapsed());
    let killed = until_attr(browser, &row, "data-answered", PAGE_WAIT, |v| v == "false").await;
    assert_eq!(killed, "false", "the killed node shows as not answering");
    let change = format!(r#"li[data-kind="leader"][data-shard="odd"][data-to="{new}"]"#);
    until_attr(browser, &change, "data-seq", PAGE_WAIT, |_| true).await;

    cluster.start_node(old).expect("the killed node restarts");
    until_attr(browser, &row, "data-answered", STARTUP, |v| v == "true").await;
    let back = format!(r#"li[data-kind="node-up"][data-node="{old}"]"#);
    until_attr(browser, &back, "data-seq", PAGE_WAIT, |_| true).await;

    search(browser, "product", &pid.to_string(), "found").await;
    let result = browser.find(Locator::Css("#search-result")).await.expect("the result").text().await.unwrap();
    assert!(result.contains("console lamp") && result.contains(&format!("product {pid}")), "{result}");
    search(browser, "order", "999", "not-found").await;
    search(browser, "client", "seven", "invalid").await;

    some_load(cluster).await;
    until_attr(
        browser,
        r#"#method-rows tr[data-method="AdminPortal/RetrieveProduct"]"#,
        "data-portal",
        PAGE_WAIT,
        |_| true,
    )
    .await;
    until_attr(browser, "#transactions-summary", "data-intents", PAGE_WAIT, |v| v == "0").await;
    search(browser, "product", &pid.to_string(), "found").await;
}

/// Types a search into the page's form and waits for its result's status.
async fn search(browser: &Client, kind: &str, id: &str, status: &str) {
    browser.find(Locator::Css("#search-kind")).await.unwrap().select_by_value(kind).await.unwrap();
    let input = browser.find(Locator::Css("#search-id")).await.unwrap();
    input.clear().await.unwrap();
    input.send_keys(id).await.unwrap();
    browser.find(Locator::Css("#search-button")).await.unwrap().click().await.unwrap();
    let wanted = format!(r#"#search-result[data-status="{status}"]"#);
    until_attr(browser, &wanted, "data-status", PAGE_WAIT, |_| true).await;
}

/// A few seconds of calls to both portals, so the charts have lines.
async fn some_load(cluster: &LocalCluster) {
    let portals = &cluster.config().portals;
    let mut admin = AdminPortalClient::new(channel(portals.admin).await);
    let mut orders = OrderPortalClient::new(channel(portals.order).await);
    let until = Instant::now() + Duration::from_secs(3);
    let mut n = 0;
    while Instant::now() < until {
        admin.retrieve_product(Id { id: "4242".into() }).await.unwrap();
        orders.retrieve_order(Id { id: "11".into() }).await.unwrap();
        n += 1;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls the page until the first element matching `selector` has
/// `attribute` and `accept` takes its value; panics after `wait`, saying
/// what the page showed.
async fn until_attr(
    browser: &Client,
    selector: &str,
    attribute: &str,
    wait: Duration,
    accept: impl Fn(&str) -> bool,
) -> String {
    let give_up = Instant::now() + wait;
    let mut last = None;
    loop {
        if let Ok(element) = browser.find(Locator::Css(selector)).await {
            last = element.attr(attribute).await.ok().flatten();
            if let Some(value) = last.as_deref().filter(|v| accept(v)) {
                return value.to_owned();
            }
        }
        if Instant::now() >= give_up {
            let page = browser.find(Locator::Css("main")).await;
            let text = match page {
                Ok(main) => main.text().await.unwrap_or_default(),
                Err(e) => format!("(no page: {e})"),
            };
            panic!("after {wait:?}, {selector} has {attribute} = {last:?}; the page shows:\n{text}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Where the screenshot goes: the target directory.
fn screenshot_path() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("console-screenshot.png")
}

/// The browser and its WebDriver, if both are installed.
struct BrowserPrograms {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl BrowserPrograms {
    fn find() -> Option<Self> {
        let on_path = |name: &str| {
            std::env::split_paths(&std::env::var_os("PATH")?).map(|dir| dir.join(name)).find(|path| path.is_file())
        };
        let chromium = on_path("chromium").or_else(|| on_path("chromium-browser"))?;
        Some(BrowserPrograms { chromium, chromedriver: on_path("chromedriver")? })
    }
}

/// A chromedriver process in a process group of its own, with the browser
/// profile in a temp dir. Dropping it kills the group and any browser
/// process still using the profile, also when the test panics.
struct Chromedriver {
    child: Child,
    addr: SocketAddr,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    async fn start(programs: &BrowserPrograms) -> Self {
        use std::os::unix::process::CommandExt;
        let addr = free_port().expect("a free port");
        let child = Command::new(&programs.chromedriver)
            .arg(format!("--port={}", addr.port()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::Builder::new().prefix("raftshop-console-browser-").tempdir().expect("a temp dir");
        let driver = Chromedriver { child, addr, profile };
        let give_up = Instant::now() + PAGE_WAIT;
        while tokio::net::TcpStream::connect(driver.addr).await.is_err() {
            assert!(Instant::now() < give_up, "chromedriver does not listen on {} after {PAGE_WAIT:?}", driver.addr);
            tokio::time::sleep(POLL).await;
        }
        driver
    }

    /// A headless Chromium session.
    async fn browser(&self, programs: &BrowserPrograms) -> Client {
        let options = json!({
            "binary": programs.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1500", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", self.profile.path().display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://{}", self.addr))
            .await
            .expect("chromedriver starts a headless Chromium")
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = process::signal_group(self.child.id(), Signal::Kill);
        let _ = self.child.wait();
        for pid in processes_using(self.profile.path()) {
            let _ = process::signal(pid, Signal::Kill);
        }
    }
}

/// Processes whose command line names `profile` (our browser's).
fn processes_using(profile: &Path) -> Vec<u32> {
    let needle = profile.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline).contains(&needle)
        })
        .collect()
}

/// An admin portal whose console address is taken stops at once, saying
/// so; an order portal refuses `--console`.
#[tokio::test]
async fn a_console_address_in_use_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let config: ClusterConfig = local_config(dir.path(), ClusterConfig::embedded().raft).unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let console = config.portals.console.expect("a console address");
    let _taken = std::net::TcpListener::bind(console).expect("the console's port binds");

    let admin = portal_output(env!("CARGO_BIN_EXE_admin-portal"), &path, &[]).await;
    assert_eq!(admin.status.code(), Some(2), "{admin:?}");
    let stderr = String::from_utf8_lossy(&admin.stderr);
    let expected = format!("cannot serve the web console: address {console} is already in use");
    assert!(stderr.contains(&expected), "{stderr}");

    let free = free_port().unwrap().to_string();
    let order = portal_output(env!("CARGO_BIN_EXE_order-portal"), &path, &["--console", &free]).await;
    assert_eq!(order.status.code(), Some(2), "{order:?}");
    let stderr = String::from_utf8_lossy(&order.stderr);
    assert!(stderr.contains("only the admin portal serves the web console"), "{stderr}");
}

/// Runs a portal with `config` and `args` until it exits (within [`STARTUP`]).
async fn portal_output(binary: &str, config: &Path, args: &[&str]) -> std::process::Output {
    let run = tokio::process::Command::new(binary)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(STARTUP, run).await.expect("the portal exits by itself").expect("the portal runs")
}
