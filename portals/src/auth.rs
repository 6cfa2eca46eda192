//! Users and roles for the portals' API (`[auth]` in `cluster.toml`).
//!
//! With `[auth]`, every call to a portal's API or to its change feed must
//! carry a user's token as `authorization: Bearer <token>` metadata, and
//! the user must hold a role that allows the call ([`required_roles`]):
//!
//! - `admin`: AdminPortal, every call;
//! - `clerk`: OrderPortal, every call;
//! - `reader`: the retrieves of both portals, and the feed.
//!
//! A call without a known token is answered `UNAUTHENTICATED`, one whose
//! user lacks the role `PERMISSION_DENIED`, each with a sentence saying
//! what is missing. Health and reflection stay open, so load balancers
//! and `grpcurl list` work without a token. Without `[auth]` nothing is
//! checked: the seed's clients, which send no token, keep working.
//!
//! The users file ([`UsersFile`]) holds each user's name, roles and the
//! SHA-256 of the token, never the token. A token is 256 random bits, so
//! a fast hash suffices: nothing can guess its way back from the file.
//! `raftshop user add|remove|list` edits the file, and a portal reads it
//! again within a second of a change ([`Gate::watch`]), so adding or
//! removing a user needs no restart.
//!
//! With `tls = true` in `[auth]` the API is TLS, and a caller may show a
//! user's certificate of the cluster's CA (its DNS name
//! `<user>.user.raftshop`) instead of a token; the certificate's user
//! then counts, with that user's roles, if it is the very certificate
//! `raftshop user add --cert` made for the user (the file records its
//! SHA-256): removing a user, or adding one of the same name again, ends
//! the old certificate.
//!
//! Callers in this project (the CLI, the bench) send their token with
//! [`Credentials`], on a [`PortalChannel`].

use std::collections::HashMap;
use std::fmt;
use std::future::{ready, Ready};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::Either;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::body::BoxBody;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::Status;

/// The metadata a call's token travels in, as `Bearer <token>`.
pub const AUTHORIZATION: &str = "authorization";
/// The environment variable the CLI and the bench take a token from.
pub const TOKEN_ENV: &str = "RAFTSHOP_TOKEN";
/// How often a portal looks whether the users file changed.
const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// What a user may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every AdminPortal call: clients and products.
    Admin,
    /// Every OrderPortal call: orders.
    Clerk,
    /// The retrieves of both portals, and the change feed.
    Reader,
}

impl Role {
    /// The role's name in the users file and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Clerk => "clerk",
            Role::Reader => "reader",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The roles that may make a call to gRPC `path` (`/Service/Method`, after
/// the `project.` alias is undone); `None` if any caller may (health,
/// reflection).
pub fn required_roles(path: &str) -> Option<&'static [Role]> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let retrieve = method.starts_with("Retrieve");
    match service {
        "AdminPortal" if retrieve => Some(&[Role::Admin, Role::Reader]),
        "AdminPortal" => Some(&[Role::Admin]),
        "OrderPortal" if retrieve => Some(&[Role::Clerk, Role::Reader]),
        "OrderPortal" => Some(&[Role::Clerk]),
        "raftshop.feed.Feed" => Some(&[Role::Reader]),
        _ => None,
    }
}

/// One user as the users file keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Who: 1 to 64 letters, digits, `.`, `_`, `-`.
    pub name: String,
    /// What the user may do.
    pub roles: Vec<Role>,
    /// The SHA-256 of the user's token, in hex.
    pub token_sha256: String,
    /// The SHA-256 of the user's certificate (DER), in hex, if it has one
    /// (`raftshop user add --cert`): only that certificate stands for the
    /// user, not another one naming the same user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_sha256: Option<String>,
}

/// The users file: `[[user]]` tables.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Every user, in the order added.
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
}

impl UsersFile {
    /// Reads and checks the users file at `path`.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!(
                    "there is no users file at {}: make one with `raftshop user add NAME --role ROLE`",
                    path.display()
                )
            }
            _ => format!("cannot read the users file {}: {e}", path.display()),
        })?;
        let file: UsersFile =
            toml::from_str(&text).map_err(|e| format!("the users file {} is not valid: {e}", path.display()))?;
        file.check().map_err(|e| format!("the users file {} is not valid: {e}", path.display()))?;
        Ok(file)
    }

    /// [`Self::load`], or no users if there is no file yet.
    pub fn load_or_empty(path: &Path) -> Result<Self, String> {
        if path.exists() {
            Self::load(path)
        } else {
            Ok(UsersFile::default())
        }
    }

    /// Writes the file to `path`, readable by its owner only, replacing
    /// the old one at once (a portal never reads half a file). Two
    /// editors at the same moment do not mix their files, but the later
    /// one's wins: edit users from one place at a time.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let failed = |e: std::io::Error| format!("cannot write the users file {}: {e}", path.display());
        let text = toml::to_string(self).expect("a users file always encodes as TOML");
        let partial = path.with_extension(format!("partial-{}", std::process::id()));
        storage_node::tls::write_private(&partial, text.as_bytes()).map_err(failed)?;
        std::fs::rename(&partial, path).map_err(failed)
    }

    /// Adds user `name` with `roles` (and the SHA-256 of its certificate,
    /// if it has one) and returns its new token, which is stored only
    /// hashed.
    pub fn add(&mut self, name: &str, roles: &[Role], cert_sha256: Option<String>) -> Result<String, String> {
        check_name(name)?;
        if roles.is_empty() {
            return Err(format!("user {name} needs at least one role (admin, clerk, reader)"));
        }
        if self.users.iter().any(|u| u.name == name) {
            return Err(format!("user {name} already exists; remove it first to give it a new token"));
        }
        let token = new_token();
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        self.users.push(User { name: name.to_owned(), roles, token_sha256: sha256_hex(token.as_bytes()), cert_sha256 });
        Ok(token)
    }

    /// Removes user `name`; its token stops working.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        let before = self.users.len();
        self.users.retain(|u| u.name != name);
        if self.users.len() == before {
            return Err(format!("there is no user {name}"));
        }
        Ok(())
    }

    /// Unique valid names, and hashes that are SHA-256 hex.
    fn check(&self) -> Result<(), String> {
        let mut names = std::collections::BTreeSet::new();
        for user in &self.users {
            check_name(&user.name)?;
            if !names.insert(user.name.as_str()) {
                return Err(format!("user {} appears twice", user.name));
            }
            let hex = |digest: &str| digest.len() == 64 && digest.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'));
            if !hex(&user.token_sha256) {
                return Err(format!("user {}'s token_sha256 is not 64 lowercase hex digits", user.name));
            }
            if user.cert_sha256.as_deref().is_some_and(|digest| !hex(digest)) {
                return Err(format!("user {}'s cert_sha256 is not 64 lowercase hex digits", user.name));
            }
        }
        Ok(())
    }
}

/// Why `name` cannot be a user's name, if it cannot.
fn check_name(name: &str) -> Result<(), String> {
    storage_node::config::check_name("user name", name)
}

/// A new token: `rs_` and 256 random bits in hex.
pub fn new_token() -> String {
    let bits: [u8; 32] = rand::random();
    format!("rs_{}", hex(&bits))
}

/// The SHA-256 of `bytes` in lowercase hex, as the users file keeps a
/// token's (its text) and a certificate's (its DER).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// `bytes` in lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Who a token or certificate belongs to.
#[derive(Debug)]
struct Identity {
    name: String,
    roles: Vec<Role>,
    cert_sha256: Option<String>,
}

/// The user a TLS client certificate names, with the certificate's
/// SHA-256 (which must be the one recorded for that user).
#[derive(Debug)]
pub struct Certified {
    /// The user the certificate names.
    pub name: String,
    /// The SHA-256 of the certificate's DER, hex.
    pub cert_sha256: String,
}

/// The users as last read: by token hash, and by name (for certificates).
#[derive(Debug, Default)]
struct Known {
    by_token: HashMap<String, Arc<Identity>>,
    by_name: HashMap<String, Arc<Identity>>,
}

/// A portal's check of every call against the users file.
#[derive(Debug)]
pub struct Gate {
    /// The users file.
    path: PathBuf,
    /// The users, as last read.
    users: RwLock<Known>,
}

impl Gate {
    /// Reads the users file at `path`; an error sentence if it cannot.
    pub fn open(path: &Path) -> Result<Arc<Gate>, String> {
        let gate = Gate { path: path.to_owned(), users: RwLock::new(Known::default()) };
        gate.reload()?;
        Ok(Arc::new(gate))
    }

    /// Reads the users file again; on an error the users stay as they were.
    fn reload(&self) -> Result<(), String> {
        let mut known = Known::default();
        for user in UsersFile::load(&self.path)?.users {
            let identity =
                Arc::new(Identity { name: user.name.clone(), roles: user.roles, cert_sha256: user.cert_sha256 });
            known.by_token.insert(user.token_sha256, Arc::clone(&identity));
            known.by_name.insert(user.name, identity);
        }
        *self.users.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = known;
        Ok(())
    }

    /// Reads the users file again whenever its contents change (looked at
    /// every [`RELOAD_EVERY`]; a file's modification time is too coarse to
    /// see two quick edits), for as long as the portal runs.
    pub async fn watch(self: Arc<Self>) {
        let contents = |path: &Path| std::fs::read(path).ok().map(|bytes| sha256_hex(&bytes));
        let mut seen = contents(&self.path);
        loop {
            tokio::time::sleep(RELOAD_EVERY).await;
            let now = contents(&self.path);
            if now == seen {
                continue;
            }
            seen = now;
            match self.reload() {
                Ok(()) => tracing::info!(users = %self.path.display(), "read the users file again"),
                Err(why) => tracing::error!(%why, "kept the users as they were"),
            }
        }
    }

    /// Lets a call to `path` through, or says why not: its caller is the
    /// user its TLS certificate names (`certified`; the certificate must
    /// be the one recorded for that user), else the one whose token the
    /// `authorization` metadata carries.
    pub fn check(
        &self,
        path: &str,
        certified: Option<&Certified>,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<(), Status> {
        let Some(allowed) = required_roles(path) else { return Ok(()) };
        let users = self.users.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let user = match (certified, authorization) {
            (Some(Certified { name, cert_sha256 }), _) => {
                users.by_name.get(name).filter(|user| user.cert_sha256.as_ref() == Some(cert_sha256)).ok_or_else(
                    || {
                        Status::unauthenticated(format!(
                            "the certificate names user {name}, but it is not that user's certificate in the users \
                         file (the user was removed, or added again with a new certificate)"
                        ))
                    },
                )?
            }
            (None, Some(value)) => {
                let token = value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
                    .ok_or_else(|| Status::unauthenticated("the authorization metadata must read `Bearer <token>`"))?;
                users.by_token.get(&sha256_hex(token.trim().as_bytes())).ok_or_else(|| {
                    Status::unauthenticated(
                        "the token is not one of this cluster's users (mistyped, or the user was removed)",
                    )
                })?
            }
            (None, None) => {
                return Err(Status::unauthenticated(
                    "this portal requires a user's token: send `authorization: Bearer <token>` metadata \
                     (`raftshop user add` makes a user; the CLI takes --token or RAFTSHOP_TOKEN)",
                ))
            }
        };
        if user.roles.iter().any(|role| allowed.contains(role)) {
            return Ok(());
        }
        let needed: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
        let held: Vec<&str> = user.roles.iter().map(|r| r.name()).collect();
        Err(Status::permission_denied(format!(
            "user {} ({}) may not call {}: it takes the role {}",
            user.name,
            held.join(", "),
            path.trim_start_matches('/'),
            needed.join(" or "),
        )))
    }
}

// The client side: what callers send.

/// The channel to a portal, adding the user's token to every call.
pub type PortalChannel = InterceptedService<tonic::transport::Channel, Credentials>;

/// A user's token as call metadata, when there is one.
#[derive(Debug, Clone)]
pub struct Credentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl Credentials {
    /// `Bearer <token>`, or an error sentence if the token cannot travel
    /// as metadata.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let authorization = token
            .map(|token| format!("Bearer {}", token.trim()).parse())
            .transpose()
            .map_err(|_| "the token holds characters no token has; copy it again from `raftshop user add`")?;
        Ok(Credentials { authorization })
    }
}

impl Interceptor for Credentials {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(value) = &self.authorization {
            request.metadata_mut().insert(AUTHORIZATION, value.clone());
        }
        Ok(request)
    }
}

/// Checks every call against a [`Gate`], when there is one.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    gate: Option<Arc<Gate>>,
}

impl AuthLayer {
    /// Checks calls against `gate`; lets every call through if `None`.
    pub fn new(gate: Option<Arc<Gate>>) -> Self {
        AuthLayer { gate }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth { inner, gate: self.gate.clone() }
    }
}

/// The service [`AuthLayer`] wraps around the router.
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S, B> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<BoxBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(gate) = &self.gate {
            let certified = certified_user(&request);
            let checked = gate.check(request.uri().path(), certified.as_ref(), request.headers().get(AUTHORIZATION));
            if let Err(refusal) = checked {
                return Either::Left(ready(Ok(refusal.into_http())));
            }
        }
        Either::Right(self.inner.call(request))
    }
}

/// The user a request's TLS client certificate names, if it came over TLS
/// with one that names a user (the handshake checked it against the CA).
fn certified_user<B>(request: &http::Request<B>) -> Option<Certified> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    let der = certs.first()?.as_ref();
    Some(Certified { name: storage_node::tls::user_named_by(der)?, cert_sha256: sha256_hex(der) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate_with(users: &UsersFile) -> (tempfile::TempDir, Arc<Gate>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        users.save(&path).unwrap();
        let gate = Gate::open(&path).unwrap();
        (dir, gate)
    }

    fn bearer(token: &str) -> http::HeaderValue {
        format!("Bearer {token}").parse().unwrap()
    }

    #[test]
    fn each_role_gets_exactly_its_calls() {
        let mut users = UsersFile::default();
        let admin = users.add("ana", &[Role::Admin], None).unwrap();
        let clerk = users.add("bo", &[Role::Clerk], None).unwrap();
        let reader = users.add("cy", &[Role::Reader], None).unwrap();
        let (_dir, gate) = gate_with(&users);
        let allowed = |token: &str, path: &str| gate.check(path, None, Some(&bearer(token))).is_ok();
        let calls = [
            "/AdminPortal/CreateClient",
            "/AdminPortal/RetrieveProduct",
            "/OrderPortal/CreateOrder",
            "/OrderPortal/RetrieveClientOrders",
            "/raftshop.feed.Feed/Watch",
        ];
        let table: Vec<[bool; 5]> =
            [&admin, &clerk, &reader].iter().map(|token| calls.map(|path| allowed(token, path))).collect();
        assert_eq!(
            table,
            [[true, true, false, false, false], [false, false, true, true, false], [false, true, false, true, true],]
        );
    }

    #[test]
    fn refusals_say_what_is_missing() {
        let mut users = UsersFile::default();
        let clerk = users.add("bo", &[Role::Clerk], Some(sha256_hex(b"bo's certificate"))).unwrap();
        let (_dir, gate) = gate_with(&users);
        let certified = |name: &str, der: &[u8]| Certified { name: name.into(), cert_sha256: sha256_hex(der) };
        let missing = gate.check("/AdminPortal/CreateClient", None, None).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        let unknown = gate.check("/AdminPortal/CreateClient", None, Some(&bearer("rs_nope"))).unwrap_err();
        assert_eq!(unknown.code(), tonic::Code::Unauthenticated);
        assert!(unknown.message().contains("not one of this cluster's users"), "{}", unknown.message());
        let basic = gate.check("/AdminPortal/CreateClient", None, Some(&"Basic eDp5".parse().unwrap())).unwrap_err();
        assert!(basic.message().contains("Bearer"), "{}", basic.message());
        let denied = gate.check("/AdminPortal/CreateClient", None, Some(&bearer(&clerk))).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert_eq!(denied.message(), "user bo (clerk) may not call AdminPortal/CreateClient: it takes the role admin");
        assert!(gate.check("/grpc.health.v1.Health/Check", None, None).is_ok(), "health stays open");
        // A certificate's user comes before any token, and must be known,
        // with that very certificate.
        let bo = certified("bo", b"bo's certificate");
        assert!(gate.check("/OrderPortal/CreateOrder", Some(&bo), None).is_ok());
        let denied = gate.check("/AdminPortal/CreateClient", Some(&bo), Some(&bearer(&clerk))).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let stranger = certified("zed", b"zed's certificate");
        let unknown = gate.check("/OrderPortal/CreateOrder", Some(&stranger), Some(&bearer(&clerk))).unwrap_err();
        assert!(unknown.message().contains("names user zed, but it is not that user's certificate"), "{unknown:?}");
        let other = certified("bo", b"another certificate naming bo");
        let refused = gate.check("/OrderPortal/CreateOrder", Some(&other), None).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn the_file_keeps_hashes_and_refuses_what_it_cannot_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let mut users = UsersFile::default();
        let token = users.add("ana", &[Role::Reader, Role::Admin, Role::Reader], None).unwrap();
        users.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains(&token) && text.contains(&sha256_hex(token.as_bytes())), "{text}");
        let loaded = UsersFile::load(&path).unwrap();
        assert_eq!(loaded.users[0].roles, [Role::Admin, Role::Reader], "sorted, once each");
        assert!(users.add("ana", &[Role::Clerk], None).unwrap_err().contains("already exists"));
        assert!(users.add("with space", &[Role::Clerk], None).is_err());
        assert!(users.add("dee", &[], None).unwrap_err().contains("at least one role"));
        assert_eq!(users.remove("zed").unwrap_err(), "there is no user zed");
        users.remove("ana").unwrap();
        assert!(users.users.is_empty());

        std::fs::write(&path, "[[user]]\nname = \"x\"\nroles = [\"boss\"]\ntoken_sha256 = \"00\"\n").unwrap();
        assert!(UsersFile::load(&path).unwrap_err().contains("not valid"));
        let hash = "0".repeat(64);
        std::fs::write(&path, format!("[[user]]\nname = \"x\"\nroles = []\ntoken_sha256 = \"{hash}\"\nage = 3\n"))
            .unwrap();
        assert!(UsersFile::load(&path).unwrap_err().contains("unknown field"));
        let missing = UsersFile::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(missing.contains("raftshop user add"), "{missing}");
    }
}
