//! Portal users for the tests: the CLI's `user add`, calls with a token.

use std::process::Output;

use raftshop::local_cluster::LocalCluster;
use tonic::{Code, Request};

use super::STARTUP;

/// Runs the `raftshop` CLI with `args` (and `RAFTSHOP_TOKEN` if given).
pub async fn raftshop(args: &[&str], token: Option<&str>) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_raftshop"));
    command.args(args).env_remove("RAFTSHOP_TOKEN").stdin(std::process::Stdio::null()).kill_on_drop(true);
    if let Some(token) = token {
        command.env("RAFTSHOP_TOKEN", token);
    }
    tokio::time::timeout(STARTUP, command.output()).await.expect("the CLI exits").expect("the CLI runs")
}

/// Adds user `name` with `roles` (and `extra` flags) through the CLI;
/// returns its token.
pub async fn add_user(cluster: &LocalCluster, name: &str, roles: &str, extra: &[&str]) -> String {
    let config = cluster.config_path();
    let args = [&["user", "add", name, "--role", roles, "--config", config.to_str().unwrap()], extra].concat();
    let output = raftshop(&args, None).await;
    assert!(output.status.success(), "user add {name}: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// `message` carrying `token`, if any.
pub fn with<T>(message: T, token: Option<&str>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// The gRPC code a call ended with (`Ok` for an answer).
pub fn code_of<T>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    result.map(|_| Code::Ok).unwrap_or_else(|status| status.code())
}
