//! Reaching a portal from the CLI, and reporting a scriptable call's answer.
//!
//! `raftshop admin` and `raftshop order` share their flags ([`PortalFlags`]):
//! `--addr` names the portal outright; otherwise its address comes from the
//! cluster config's `[portals]` (`--config`, else `./cluster.toml`, else the
//! built-in default), so the config is read only when it is needed. The
//! channel connects lazily: the prompt opens even while the portal is down,
//! and each call that cannot reach it says so.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use storage_node::config::{ClusterConfig, PortalsConfig};
use tonic::transport::{Channel, Endpoint};

use super::answer::{Answer, EXIT_NO_ANSWER};

/// How long a connection attempt to the portal may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a call may wait for the portal's answer; longer than the
/// portal's own deadline, so the portal's 503 arrives rather than ours.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where `admin` and `order` find their portal.
#[derive(Debug, Args)]
pub struct PortalFlags {
    /// The portal's address (host:port); default: the config's `[portals]`.
    #[arg(long, value_name = "ADDR", conflicts_with = "config")]
    pub addr: Option<String>,
    /// The cluster config to take the portal's address from; defaults to
    /// ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
}

/// One portal, reachable.
#[derive(Debug, Clone)]
pub struct Portal {
    /// The channel every call goes through.
    pub channel: Channel,
    /// The portal in sentences: `the admin portal at 127.0.0.1:55006`.
    pub described: String,
}

impl PortalFlags {
    /// The portal `name` (`admin`, `order`), its address from `--addr` or
    /// from the config via `pick`; an error sentence if neither works.
    pub fn portal(&self, name: &str, pick: fn(&PortalsConfig) -> SocketAddr) -> Result<Portal, String> {
        let addr = match &self.addr {
            Some(addr) => addr.clone(),
            None => {
                let (config, _) = ClusterConfig::load_or_default(self.config.as_deref()).map_err(|e| e.to_string())?;
                pick(&config.portals).to_string()
            }
        };
        Ok(Portal { channel: channel(&addr)?, described: format!("the {name} portal at {addr}") })
    }
}

/// A lazily connecting channel to `addr` (`host:port`, or a URI).
fn channel(addr: &str) -> Result<Channel, String> {
    let uri = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri).map_err(|e| format!("{addr:?} is not an address of a portal: {e}"))?;
    Ok(endpoint.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT).connect_lazy())
}

/// Reports `answer` the scriptable way: its line on stdout, its failure as
/// a sentence on stderr; returns the exit code it calls for.
pub fn report(answer: &Answer) -> ExitCode {
    if let Some(line) = answer.script_line() {
        println!("{line}");
    }
    if let Some(sentence) = answer.failure() {
        eprintln!("raftshop: {sentence}");
    }
    ExitCode::from(answer.exit_code())
}

/// Ends a command that could not start: the sentence on stderr, exit 2.
pub fn cannot_start(sentence: &str) -> ExitCode {
    eprintln!("raftshop: {sentence}");
    ExitCode::from(EXIT_NO_ANSWER)
}

/// `data` as given, or all of stdin if it is `-` (for JSON too long or
/// awkward to quote on a command line).
pub fn data_argument(data: &str) -> Result<String, String> {
    if data != "-" {
        return Ok(data.to_owned());
    }
    let mut text = String::new();
    io::stdin().read_to_string(&mut text).map_err(|e| format!("cannot read the JSON data from stdin: {e}"))?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(addr: Option<&str>, config: Option<&str>) -> PortalFlags {
        PortalFlags { addr: addr.map(Into::into), config: config.map(Into::into) }
    }

    #[tokio::test]
    async fn addr_wins_and_names_the_portal() {
        let portal = flags(Some("127.0.0.1:1"), None).portal("admin", |p| p.admin).expect("valid");
        assert_eq!(portal.described, "the admin portal at 127.0.0.1:1");
    }

    #[tokio::test]
    async fn the_config_supplies_the_address_otherwise() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("cluster.toml");
        let text = storage_node::config::DEFAULT_CLUSTER_TOML.replace("127.0.0.1:55005", "127.0.0.1:4242");
        std::fs::write(&path, text).expect("write");
        let portal = flags(None, path.to_str()).portal("order", |p| p.order).expect("valid");
        assert_eq!(portal.described, "the order portal at 127.0.0.1:4242");
    }

    #[tokio::test]
    async fn a_bad_address_or_config_is_a_sentence() {
        let error = flags(Some("not an address"), None).portal("admin", |p| p.admin).unwrap_err();
        assert!(error.contains("is not an address of a portal"), "{error}");
        let error = flags(None, Some("/nonexistent/cluster.toml")).portal("admin", |p| p.admin).unwrap_err();
        assert!(error.contains("cannot read cluster config /nonexistent/cluster.toml"), "{error}");
    }

    #[test]
    fn data_other_than_a_dash_is_taken_as_given() {
        assert_eq!(data_argument(r#"{"name":"Ana"}"#).as_deref(), Ok(r#"{"name":"Ana"}"#));
    }
}
