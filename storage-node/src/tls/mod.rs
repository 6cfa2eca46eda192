//! Mutual TLS inside the cluster.
//!
//! With a `[tls]` table in `cluster.toml`, every connection to a storage
//! node is TLS in both directions: the node shows the cluster's node
//! certificate, and the caller must show a certificate of the same CA, or
//! the handshake fails. The certificate also says what the caller is, by
//! the DNS name it carries ([`Role::server_name`]): a node, a portal, or an
//! operator's tool. A node serves Raft messages to nodes only, and its
//! `Store` service to all three (nodes call it too, to settle a transaction
//! on the other shard).
//!
//! `raftshop certs init DIR` makes a development CA and one certificate per
//! role ([`init`]). Every process of one role shares its certificate; a node
//! checks a peer's role, and, at the application layer, its cluster id and
//! node id (`service::check_cluster`, `check_addressee`).
//!
//! Each process sets its own client identity once at start-up
//! ([`use_for_clients`]); [`crate::endpoint::connect_node_lazy`] then
//! connects to nodes with it. Both sides read their files again on SIGHUP
//! (`live`).

mod live;

pub use live::{clients_use_tls, reload_clients, reload_on_hangup, use_for_clients, Connector, Server, ServerSide};

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// What a certificate's holder is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A storage node.
    Node,
    /// An admin or order portal.
    Portal,
    /// An operator's tool: the `raftshop` CLI.
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 3] = [Role::Node, Role::Portal, Role::Operator];

    /// The role's name, and its files' stem (`node.pem`, `node.key`).
    pub fn name(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Portal => "portal",
            Role::Operator => "operator",
        }
    }

    /// The DNS name the role's certificate carries. Clients check a node's
    /// certificate for [`NODE_SERVER_NAME`]; nodes read a caller's role
    /// from it.
    pub fn server_name(self) -> &'static str {
        match self {
            Role::Node => NODE_SERVER_NAME,
            Role::Portal => "portal.raftshop",
            Role::Operator => "operator.raftshop",
        }
    }
}

/// The name every node certificate carries, and every client expects.
pub const NODE_SERVER_NAME: &str = "node.raftshop";
/// How long `init`'s certificates are valid.
const VALID_DAYS: i64 = 825;

/// Why certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: io::Error,
    },
    /// `init` found certificates in place.
    #[error("{0} holds certificates already; remove it to make new ones")]
    Exists(PathBuf),
    /// The certificate library refused.
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file was read but cannot be used.
    #[error("{path}: {detail}")]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why not.
        detail: String,
    },
}

/// The files of `role` in `dir`: certificate and key.
pub fn role_files(dir: &Path, role: Role) -> (PathBuf, PathBuf) {
    (dir.join(format!("{}.pem", role.name())), dir.join(format!("{}.key", role.name())))
}

/// The CA certificate in `dir`.
pub fn ca_file(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// Makes a CA (`ca.pem`, `ca.key`) and a certificate for every role in
/// `dir`, valid for `VALID_DAYS`. Refuses a directory that has a CA.
pub fn init(dir: &Path) -> Result<(), TlsError> {
    if ca_file(dir).exists() {
        return Err(TlsError::Exists(dir.to_owned()));
    }
    fs::create_dir_all(dir).map_err(|source| TlsError::File { path: dir.to_owned(), source })?;
    let (not_before, not_after) = validity(-1, VALID_DAYS);
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "raftshop cluster CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (ca.not_before, ca.not_after) = (not_before, not_after);
    let ca_cert = ca.self_signed(&ca_key)?;
    write(&ca_file(dir), &ca_cert.pem(), false)?;
    write(&dir.join("ca.key"), &ca_key.serialize_pem(), true)?;
    for role in Role::ALL {
        let (cert, key) = issue(role, &ca_cert, &ca_key, (not_before, not_after))?;
        let (cert_file, key_file) = role_files(dir, role);
        write(&cert_file, &cert, false)?;
        write(&key_file, &key, true)?;
    }
    Ok(())
}

/// A certificate and key (PEM) for `role`, signed by the CA, valid from
/// `not_before` to `not_after`.
pub fn issue(
    role: Role,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> Result<(String, String), TlsError> {
    let subject = (role.server_name().to_owned(), format!("raftshop {}", role.name()));
    let usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    issue_for(subject, usages, ca_cert, ca_key, validity).map(|issued| (issued.pem, issued.key))
}

/// A certificate just made: PEM, its key (PEM), and its DER bytes.
#[derive(Debug)]
pub struct Issued {
    /// The certificate, PEM.
    pub pem: String,
    /// Its private key, PEM.
    pub key: String,
    /// The certificate, DER (what a peer shows in a handshake).
    pub der: Vec<u8>,
}

/// A certificate and key (PEM) for the DNS name and common name of
/// `subject`, signed by the CA.
fn issue_for(
    (dns_name, common_name): (String, String),
    usages: Vec<ExtendedKeyUsagePurpose>,
    ca_cert: &rcgen::Certificate,
    ca_key: &KeyPair,
    (not_before, not_after): (time::OffsetDateTime, time::OffsetDateTime),
) -> Result<Issued, TlsError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![dns_name])?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    params.extended_key_usages = usages;
    (params.not_before, params.not_after) = (not_before, not_after);
    let cert = params.signed_by(&key, ca_cert, ca_key)?;
    Ok(Issued { pem: cert.pem(), key: key.serialize_pem(), der: cert.der().to_vec() })
}

/// A new certificate and key (PEM) for `role`, signed by the CA in `dir`
/// (`ca.pem`, `ca.key`), valid from `from_days` to `to_days` from now.
pub fn issue_from(dir: &Path, role: Role, from_days: i64, to_days: i64) -> Result<(String, String), TlsError> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    issue(role, &ca_cert, &ca_key, validity(from_days, to_days))
}

/// The DNS names of portal users' certificates end so: `ana.user.raftshop`.
pub const USER_NAME_SUFFIX: &str = ".user.raftshop";

/// A certificate naming portal user `name` (`<name>.user.raftshop`),
/// for client authentication only, signed by the CA in `dir`, valid for
/// `VALID_DAYS`. A portal whose API is TLS takes it instead of the
/// user's token; a node refuses it, since it names no role.
pub fn issue_user(dir: &Path, name: &str) -> Result<Issued, TlsError> {
    let (ca_cert, ca_key) = load_ca(dir)?;
    let subject = (format!("{name}{USER_NAME_SUFFIX}"), format!("raftshop user {name}"));
    issue_for(subject, vec![ExtendedKeyUsagePurpose::ClientAuth], &ca_cert, &ca_key, validity(-1, VALID_DAYS))
}

/// The DNS names a certificate (DER) carries; none if it does not parse.
fn dns_names(certificate: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(certificate) else { return Vec::new() };
    let Ok(Some(names)) = cert.subject_alternative_name() else { return Vec::new() };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            _ => None,
        })
        .collect()
}

/// The portal user a certificate (DER) names, if it names one.
pub fn user_named_by(certificate: &[u8]) -> Option<String> {
    dns_names(certificate).iter().find_map(|dns| dns.strip_suffix(USER_NAME_SUFFIX).map(str::to_owned))
}

/// The role a certificate (DER) names, if it names one.
pub fn role_named_by(certificate: &[u8]) -> Option<Role> {
    let names = dns_names(certificate);
    Role::ALL.into_iter().find(|role| names.iter().any(|dns| dns == role.server_name()))
}

/// The CA of `dir` (`ca.pem`, `ca.key`), to sign with.
fn load_ca(dir: &Path) -> Result<(rcgen::Certificate, KeyPair), TlsError> {
    let ca_pem = String::from_utf8_lossy(&read(&ca_file(dir))?).into_owned();
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read(&dir.join("ca.key"))?))?;
    // The CA again from its own fields and key: same name, same key, so
    // what it signs verifies against `ca.pem`.
    let ca_cert = CertificateParams::from_ca_cert_pem(&ca_pem)?.self_signed(&ca_key)?;
    Ok((ca_cert, ca_key))
}

/// From `from_days` to `to_days` days from now.
pub fn validity(from_days: i64, to_days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (now + time::Duration::days(from_days), now + time::Duration::days(to_days))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let written = if secret { write_private(path, text.as_bytes()) } else { fs::write(path, text) };
    written.map_err(|source| TlsError::File { path: path.to_owned(), source })
}

/// Writes `bytes` to `path`, readable and writable by its owner only from
/// the moment it exists (and made so if it existed before).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::File { path: path.to_owned(), source })
}

/// A client side as tonic takes it, for channels built by hand (tools,
/// tests, callers of the portals): the CAs of `dir` to trust, a server
/// named `server_name` to expect, and a certificate and key (PEM) to
/// show, if any.
pub fn tonic_client_config(
    dir: &Path,
    server_name: &str,
    shown: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<ClientTlsConfig, TlsError> {
    let config =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(&ca_file(dir))?)).domain_name(server_name);
    Ok(match shown {
        Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
        None => config,
    })
}

/// A client side towards the nodes, as tonic takes it, showing `role`'s
/// certificate.
pub fn client_config(dir: &Path, role: Role) -> Result<ClientTlsConfig, TlsError> {
    let (cert, key) = role_files(dir, role);
    tonic_client_config(dir, NODE_SERVER_NAME, Some((read(&cert)?, read(&key)?)))
}

/// A client side towards a portal whose API is TLS (`[auth] tls`): the
/// CA to trust, and the user's certificate and key files to show, if any.
pub fn portal_client_config(dir: &Path, user: Option<(&Path, &Path)>) -> Result<ClientTlsConfig, TlsError> {
    let shown = user.map(|(cert, key)| Ok::<_, TlsError>((read(cert)?, read(key)?))).transpose()?;
    tonic_client_config(dir, Role::Portal.server_name(), shown)
}

/// The role this process shows when it connects to nodes, if set.
static PROCESS_ROLE: OnceLock<Role> = OnceLock::new();

/// Says what this process is (a portal's or node's `main` does; the
/// `raftshop` CLI is an [`Role::Operator`], the default).
pub fn set_process_role(role: Role) {
    let _ = PROCESS_ROLE.set(role);
}

/// Sets this process's client side from `config`'s `[tls]`, as its role
/// (see [`set_process_role`]), unless it is set already or the cluster is
/// plaintext. `ClusterClient::new` calls it.
pub fn prepare_clients(config: &crate::ClusterConfig) -> Result<(), TlsError> {
    match &config.tls {
        Some(tls) => use_for_clients(&tls.dir, PROCESS_ROLE.get().copied().unwrap_or(Role::Operator)),
        None => Ok(()),
    }
}

/// The role a caller's certificate names, `None` without TLS (no
/// certificate) or for a certificate that names no role.
pub fn role_of<T>(request: &Request<T>) -> Option<Role> {
    role_named_by(request.peer_certs()?.first()?.as_ref())
}

/// Refuses a call over TLS whose certificate is not of an `allowed` role.
/// Calls without TLS pass: a node without `[tls]` accepts only plaintext,
/// and one with it accepts no connection without a certificate.
pub fn check_role<T>(request: &Request<T>, allowed: &[Role], service: &str) -> Result<(), Status> {
    if request.peer_certs().is_none() {
        return Ok(());
    }
    match role_of(request) {
        Some(role) if allowed.contains(&role) => Ok(()),
        Some(role) => Err(Status::permission_denied(format!(
            "a {} certificate may not call {service}; it is for {}",
            role.name(),
            allowed.iter().map(|r| r.name()).collect::<Vec<_>>().join(" and ")
        ))),
        None => Err(Status::permission_denied(format!("the caller's certificate names no raftshop role ({service})"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_makes_a_ca_and_every_role_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        for role in Role::ALL {
            let (cert, key) = role_files(dir.path(), role);
            assert!(cert.exists() && key.exists(), "{role:?}");
            client_config(dir.path(), role).unwrap();
        }
        ServerSide::load(dir.path(), Server::Node).unwrap();
        assert!(matches!(init(dir.path()), Err(TlsError::Exists(_))));
    }
}
