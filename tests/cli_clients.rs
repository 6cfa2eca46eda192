//! `raftshop admin` and `raftshop order` against a real cluster with both
//! portals: the scriptable verbs' JSON, sentences and exit codes through a
//! create/get/delete round trip, and an order prompt fed through stdin.

mod common;

use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

/// How long one run of the CLI may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// What a run of `raftshop` printed and how it exited.
#[derive(Debug)]
struct Run {
    /// The exit code.
    code: i32,
    /// Everything on stdout.
    stdout: String,
    /// Everything on stderr.
    stderr: String,
}

impl Run {
    /// Stdout as one JSON document.
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {self:?}"))
    }
}

/// Runs `raftshop args...` with `input` on stdin.
async fn raftshop(args: &[&str], input: &str) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftshop"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_LOG")
        .kill_on_drop(true)
        .spawn()
        .expect("raftshop starts");
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(input.as_bytes()).await.expect("stdin takes the input");
    drop(stdin);
    let output = tokio::time::timeout(RUN_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("raftshop {args:?} did not finish within {RUN_TIMEOUT:?}"))
        .expect("raftshop runs");
    Run {
        code: output.status.code().expect("raftshop exits, not killed"),
        stdout: String::from_utf8(output.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("utf-8 stderr"),
    }
}

/// The two portals of the cluster under test.
struct Shop {
    /// The AdminPortal's address.
    admin: String,
    /// The OrderPortal's address.
    order: String,
}

impl Shop {
    /// `raftshop admin --addr ADMIN verb...`.
    async fn admin(&self, verb: &[&str]) -> Run {
        self.run("admin", &self.admin, verb).await
    }

    /// `raftshop order --addr ORDER verb...`.
    async fn order(&self, verb: &[&str]) -> Run {
        self.run("order", &self.order, verb).await
    }

    /// `raftshop COMMAND --addr ADDR verb...`, nothing on stdin.
    async fn run(&self, command: &str, addr: &str, verb: &[&str]) -> Run {
        let args: Vec<&str> = [command, "--addr", addr].into_iter().chain(verb.iter().copied()).collect();
        raftshop(&args, "").await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scriptable_verbs_and_an_order_prompt_talk_to_a_real_shop() {
    let cluster = common::shop_cluster().await;
    let portals = &cluster.config().portals;
    let shop = Shop { admin: portals.admin.to_string(), order: portals.order.to_string() };
    let config = cluster.config_path();

    // Create, read back, refuse a duplicate.
    let created = shop.admin(&["create-client", "7", r#"{"name":"Ana"}"#]).await;
    assert_eq!((created.code, created.stdout.as_str(), created.stderr.as_str()), (0, "{\"error\":0}\n", ""));
    let got = shop.admin(&["get-client", "7"]).await;
    assert_eq!(got.code, 0, "{got:?}");
    assert_eq!(got.json(), json!({"CID": "7", "data": {"CID": "7", "name": "Ana"}}));
    let again = shop.admin(&["create-client", "7", r#"{"name":"Ana"}"#]).await;
    assert_eq!(again.code, 1, "{again:?}");
    assert_eq!(again.json(), json!({"error": 400, "description": "client 7 already exists"}));
    assert_eq!(again.stderr, "raftshop: client 7 already exists (400)\n");

    // Data from stdin, and the address from the cluster config.
    let args = ["admin", "--config", config.to_str().expect("utf-8 path"), "update-client", "7", "-"];
    let updated = raftshop(&args, r#"{"name": "Ana Maria"}"#).await;
    assert_eq!((updated.code, updated.stdout.as_str()), (0, "{\"error\":0}\n"), "{updated:?}");
    assert_eq!(shop.admin(&["get-client", "7"]).await.json()["data"]["name"], "Ana Maria");

    // An order: placed, shown with its total, listed.
    let pen = shop.admin(&["create-product", "3", r#"{"name":"pen","price":2.5,"quantity":8}"#]).await;
    assert_eq!(pen.code, 0, "{pen:?}");
    let placed = shop.order(&["create", "7", "10", r#"[{"id":3,"quantity":3}]"#]).await;
    assert_eq!((placed.code, placed.stdout.as_str()), (0, "{\"error\":0}\n"), "{placed:?}");
    let shown = shop.order(&["get", "10"]).await;
    assert_eq!((shown.code, &shown.json()["data"]["total"]), (0, &json!(7.5)), "{shown:?}");
    let listed = shop.order(&["list", "7"]).await;
    let lines: Vec<Value> = listed.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!((listed.code, lines.len()), (0, 1), "{listed:?}");
    assert_eq!((&lines[0]["OID"], &lines[0]["CID"]), (&json!("10"), &json!("7")));

    // The prompt for client 7, piped: every answer, a bad line in between.
    let script = "help\n\
                  create 11 [{\"id\": 3, \"quantity\": 1}]\n\
                  get 11\n\
                  bogus 1\n\
                  update 11 [{\"id\": 3, \"quantity\": 2}]\n\
                  update 11 [{\"id\": 3, \"quantity\": 99}]\n\
                  list\n\
                  delete 11\n\
                  get 11\n\
                  quit\n\
                  get 10\n";
    let session = raftshop(&["order", "--addr", &shop.order, "--cid", "7"], script).await;
    assert_eq!((session.code, session.stderr.as_str()), (0, ""), "{session:?}");
    let text = &session.stdout;
    let expected_in_order = [
        "create OID JSON",
        "order 11 created for client 7\n",
        "{\n  \"CID\": \"7\",\n  \"OID\": \"11\",\n  \"data\": {\n",
        "\"total\": 2.5\n",
        "there is no command \"bogus\"; type help to see the commands\n",
        "order 11 updated\n",
        "product 3 has 3 in stock; the change needs 97 (400)\n",
        "\"OID\": \"10\"",
        "2 orders\n",
        "order 11 deleted\n",
        "order 11 does not exist\n",
    ];
    let mut rest = text.as_str();
    for expected in expected_in_order {
        let at =
            rest.find(expected).unwrap_or_else(|| panic!("{expected:?} missing after the earlier answers in:\n{text}"));
        rest = &rest[at + expected.len()..];
    }
    assert!(text.ends_with("order 11 does not exist\n"), "nothing after quit:\n{text}");

    // Delete: the order, then the product and client it held; all gone.
    for (run, what) in [
        (shop.order(&["delete", "10"]).await, "order 10"),
        (shop.admin(&["delete-product", "3"]).await, "product 3"),
        (shop.admin(&["delete-client", "7"]).await, "client 7"),
    ] {
        assert_eq!((run.code, run.stdout.as_str()), (0, "{\"error\":0}\n"), "delete {what}: {run:?}");
    }
    let gone = shop.admin(&["get-client", "7"]).await;
    assert_eq!((gone.code, gone.stdout.as_str()), (1, "null\n"));
    assert_eq!(gone.stderr, "raftshop: client 7 does not exist\n");
    let none = shop.admin(&["delete-client", "7"]).await;
    assert_eq!((none.code, none.json()["error"].as_i64()), (1, Some(404)), "{none:?}");
    let orphan = shop.order(&["list", "7"]).await;
    assert_eq!((orphan.code, orphan.stdout.as_str()), (1, ""), "{orphan:?}");
    assert_eq!(orphan.stderr, "raftshop: client 7 does not exist (404)\n");

    // No portal there: exit 2 and a sentence; a bad ID is a usage error.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address");
    let down = raftshop(&["admin", "--addr", &closed.to_string(), "get-client", "1"], "").await;
    assert_eq!((down.code, down.stdout.as_str()), (2, ""), "{down:?}");
    let expected = format!("raftshop: no answer from the admin portal at {closed}: ");
    assert!(down.stderr.starts_with(&expected) && down.stderr.lines().count() == 1, "{down:?}");
    let usage = shop.admin(&["get-client", "seven"]).await;
    assert_eq!((usage.code, usage.stdout.as_str()), (2, ""), "{usage:?}");
    drop(cluster);
}
