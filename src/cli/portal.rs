//! Reaching a portal from the CLI, and reporting a scriptable call's answer.
//!
//! `raftshop admin` and `raftshop order` share their flags ([`PortalFlags`]):
//! `--addr` names the portal outright; otherwise its address comes from the
//! cluster config's `[portals]` (`--config`, else `./cluster.toml`, else the
//! built-in default), so the config is read only when it is needed. The
//! channel connects lazily: the prompt opens even while the portal is down,
//! and each call that cannot reach it says so.
//!
//! Every write is sent with a fresh idempotency key ([`idempotency_key`]).
//! When the portal answers that the outcome is unknown (a 503 saying the
//! change "may or may not have been made"), the verb sends the same call
//! once more with the same key ([`once_more`]): the shop then answers with
//! the first call's outcome if it did happen, and makes it if it did not,
//! never twice. IDs and JSON data are checked here with the portals' own
//! parsing ([`portals::request`]), so the CLI refuses with the same 400 and
//! the same sentence, without a call.

use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use portals::auth::{Credentials, PortalChannel};
use portals::idempotency::METADATA_KEY;
use portals::request::BadRequest;
use portals::shop::OUTCOME_UNKNOWN;
use storage_node::config::{ClusterConfig, PortalsConfig};
use tonic::service::interceptor::InterceptedService;
use tonic::Status;

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
    /// A portal user's token (`raftshop user add`), for a cluster whose
    /// config has `[auth]`; sent with every call.
    #[arg(long, value_name = "TOKEN", env = TOKEN_ENV, hide_env_values = true)]
    pub token: Option<String>,
    /// A portal user's certificate (`raftshop user add --cert`), shown
    /// instead of a token to portals whose API is TLS (`[auth] tls`).
    #[arg(long, value_name = "PATH", requires = "key", conflicts_with = "addr")]
    pub cert: Option<PathBuf>,
    /// The key of `--cert`.
    #[arg(long, value_name = "PATH", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// The environment variable `--token` may come from.
pub const TOKEN_ENV: &str = portals::auth::TOKEN_ENV;

/// One portal, reachable.
#[derive(Debug, Clone)]
pub struct Portal {
    /// The channel every call goes through.
    pub channel: PortalChannel,
    /// The portal in sentences: `the admin portal at 127.0.0.1:55006`.
    pub described: String,
}

impl PortalFlags {
    /// The portal `name` (`admin`, `order`), its address from `--addr` or
    /// from the config via `pick`; an error sentence if neither works.
    pub fn portal(&self, name: &str, pick: fn(&PortalsConfig) -> SocketAddr) -> Result<Portal, String> {
        let (addr, endpoint) = match &self.addr {
            Some(addr) => {
                let endpoint = storage_node::endpoint::endpoint(addr)
                    .map_err(|_| format!("{addr:?} is not an address of a portal: give host:port or a URI"));
                (addr.clone(), endpoint)
            }
            None => {
                let (config, _) = ClusterConfig::load_or_default(self.config.as_deref()).map_err(|e| e.to_string())?;
                let addr = pick(&config.portals);
                let user = self.cert.as_deref().zip(self.key.as_deref());
                (addr.to_string(), storage_node::endpoint::portal_endpoint(addr, &config, user))
            }
        };
        let endpoint = endpoint?;
        if self.token.is_some() && endpoint.uri().scheme_str() == Some("http") && !on_loopback(&endpoint) {
            eprintln!("warning: sending the token to {addr} without TLS; anyone on the path can read it");
        }
        let channel = endpoint.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT).connect_lazy();
        let channel = InterceptedService::new(channel, Credentials::new(self.token.as_deref())?);
        Ok(Portal { channel, described: format!("the {name} portal at {addr}") })
    }
}

/// True if `endpoint` names this machine (a loopback address or
/// `localhost`).
fn on_loopback(endpoint: &tonic::transport::Endpoint) -> bool {
    match endpoint.uri().host() {
        Some("localhost") => true,
        Some(host) => {
            host.trim_matches(|c| c == '[' || c == ']').parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        }
        None => false,
    }
}

/// An ID on the command line, parsed as the portals parse it.
pub fn id_argument(text: &str) -> Result<u64, String> {
    portals::request::parse_id("the ID", text).map_err(|e| e.0)
}

/// The answer to a call the portals' own parsing refuses: their 400, with
/// their sentence.
pub fn refused(bad: BadRequest) -> Answer {
    Answer::Refused { code: 400, description: bad.0 }
}

/// A fresh idempotency key for one write: 128 random bits in hex.
pub fn idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// `message` as a request carrying the idempotency `key`.
pub fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = key.parse() {
        request.metadata_mut().insert(METADATA_KEY, value);
    }
    request
}

/// True if `answer` says the write may or may not have happened: the one
/// case where the same call, with the same key, is sent once more.
pub fn once_more(answer: &Result<Answer, Status>) -> bool {
    matches!(answer, Ok(Answer::Refused { code: 503, description }) if description.contains(OUTCOME_UNKNOWN))
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
        PortalFlags { addr: addr.map(Into::into), config: config.map(Into::into), token: None, cert: None, key: None }
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
    fn only_an_unknown_outcome_is_sent_once_more() {
        let unknown = format!("shard odd has no reachable leader; {OUTCOME_UNKNOWN}");
        assert!(once_more(&Ok(Answer::Refused { code: 503, description: unknown })));
        assert!(!once_more(&Ok(Answer::Refused { code: 503, description: "no quorum".into() })));
        assert!(!once_more(&Ok(Answer::Refused { code: 400, description: OUTCOME_UNKNOWN.into() })));
        assert!(!once_more(&Ok(Answer::Done)));
        assert!(!once_more(&Err(Status::unavailable("down"))));
    }

    #[test]
    fn keys_are_fresh_and_travel_as_metadata() {
        let (a, b) = (idempotency_key(), idempotency_key());
        assert_ne!(a, b);
        assert!(a.len() == 32 && a.bytes().all(|c| c.is_ascii_hexdigit()), "{a}");
        let request = keyed((), &a);
        assert_eq!(request.metadata().get(METADATA_KEY).and_then(|v| v.to_str().ok()), Some(a.as_str()));
    }

    #[test]
    fn ids_follow_the_portals_rules() {
        assert_eq!(id_argument("7"), Ok(7));
        assert!(id_argument("seven").unwrap_err().contains("decimal integer"));
        assert!(id_argument(&"0".repeat(21)).unwrap_err().contains("at most 20"));
    }

    #[test]
    fn data_other_than_a_dash_is_taken_as_given() {
        assert_eq!(data_argument(r#"{"name":"Ana"}"#).as_deref(), Ok(r#"{"name":"Ana"}"#));
    }
}
