//! Certificates that change while the processes run.
//!
//! A node's server side ([`ServerSide`]) and every process's client side
//! ([`use_for_clients`]) keep the rustls settings made from the files of
//! `[tls] dir`, and read the files again on SIGHUP ([`reload_on_hangup`]).
//! A new connection uses the settings of the moment, accepted
//! ([`ServerSide::incoming`]) or opened ([`Connector`]); connections
//! already open keep theirs until they close. So replacing the files and
//! sending SIGHUP to every process rotates certificates without a restart,
//! and a CA taken out of `ca.pem` is refused from then on. To change CAs
//! without a moment of refusals, put both in `ca.pem` first (a bundle:
//! every certificate in the file is trusted), then the new certificates,
//! then drop the old CA, with a SIGHUP after each step.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::{self, pki_types, ClientConfig, RootCertStore, ServerConfig};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::http::Uri;

use super::{ca_file, read, role_files, Role, TlsError, NODE_SERVER_NAME};

/// How long a caller may take over its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for the server to take them up.
const ACCEPT_QUEUE: usize = 64;
/// Handshakes under way at once; more connections wait to be accepted.
pub const MAX_HANDSHAKES: usize = 256;

/// The cryptography every side uses: ring, as tonic's own TLS does.
/// rustls 0.23.48 marks it deprecated for lacking post-quantum key
/// exchange; its other provider, aws-lc-rs, builds a large C library (and
/// wants cmake), which CI's fresh machines and the build time can spare
/// less than traffic inside one cluster needs post-quantum keys.
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls refusal, said of `path`.
fn unusable(path: &Path, detail: impl std::fmt::Display) -> TlsError {
    TlsError::Unusable { path: path.to_owned(), detail: detail.to_string() }
}

/// Every certificate in `ca.pem` of `dir`: the CAs to trust.
fn trusted(dir: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    let path = ca_file(dir);
    let mut roots = RootCertStore::empty();
    for cert in certificates(&path)? {
        roots.add(cert).map_err(|e| unusable(&path, e))?;
    }
    Ok(Arc::new(roots))
}

/// The certificates of a PEM file, at least one.
fn certificates(path: &Path) -> Result<Vec<pki_types::CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::File { path: path.to_owned(), source: e })?;
    if certs.is_empty() {
        return Err(unusable(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// `role`'s certificate chain and key in `dir`.
fn identity(
    dir: &Path,
    role: Role,
) -> Result<(Vec<pki_types::CertificateDer<'static>>, pki_types::PrivateKeyDer<'static>), TlsError> {
    let (cert, key) = role_files(dir, role);
    let chain = certificates(&cert)?;
    let pem = read(&key)?;
    let found = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| TlsError::File { path: key.clone(), source: e })?;
    let private = found.ok_or_else(|| unusable(&key, "no private key in the file"))?;
    Ok((chain, private))
}

/// Which server a [`ServerSide`] serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// A storage node: it shows the node certificate, and every caller
    /// must show a certificate of the CA.
    Node,
    /// A portal's API: it shows the portal certificate, and a caller may
    /// show a certificate of the CA (a user's, `portals::auth`).
    Portal,
}

/// A server side from `dir`: `server`'s certificate, and callers'
/// certificates checked against the CAs of `ca.pem`.
fn server_config(dir: &Path, server: Server) -> Result<Arc<ServerConfig>, TlsError> {
    let roots = trusted(dir)?;
    let role = match server {
        Server::Node => Role::Node,
        Server::Portal => Role::Portal,
    };
    let (chain, key) = identity(dir, role)?;
    let ca = ca_file(dir);
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider());
    let verifier = match server {
        Server::Node => verifier,
        Server::Portal => verifier.allow_unauthenticated(),
    };
    let verifier = verifier.build().map_err(|e| unusable(&ca, e))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&ca, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| unusable(&role_files(dir, role).0, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A client side of `role` from `dir`: the CAs to trust, and the
/// certificate to show.
fn client_config(dir: &Path, role: Role) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = trusted(dir)?;
    let (chain, key) = identity(dir, role)?;
    let ca = ca_file(dir);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| unusable(&ca, e))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| unusable(&role_files(dir, role).0, e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A node's or portal's TLS server side, as last read from its files.
#[derive(Debug)]
pub struct ServerSide {
    dir: PathBuf,
    server: Server,
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerSide {
    /// Reads `server`'s certificate and the CAs of `dir`.
    pub fn load(dir: &Path, server: Server) -> Result<Arc<Self>, TlsError> {
        let config = RwLock::new(server_config(dir, server)?);
        Ok(Arc::new(ServerSide { dir: dir.to_owned(), server, config }))
    }

    /// Reads the files again; on an error the side stays as it was.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.install(self.read_files()?);
        Ok(())
    }

    /// The settings the files hold now.
    fn read_files(&self) -> Result<Arc<ServerConfig>, TlsError> {
        server_config(&self.dir, self.server)
    }

    /// Uses `config` for every connection from now on.
    fn install(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = config;
    }

    fn current(&self) -> Arc<ServerConfig> {
        Arc::clone(&self.config.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    /// The connections `listener` accepts, each once its handshake with
    /// the settings of the moment succeeded. A failed handshake (a
    /// certificate of another CA or expired; for a node, none at all, or
    /// one that names no role, such as a portal user's) is logged and
    /// dropped; the others go on. At most `MAX_HANDSHAKES` handshakes run
    /// at once. Ends when the stream is dropped.
    pub fn incoming(
        self: Arc<Self>,
        listener: TcpListener,
    ) -> ReceiverStream<io::Result<tokio_rustls::server::TlsStream<TcpStream>>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(ACCEPT_QUEUE);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(slot) = Arc::clone(&handshakes).acquire_owned().await else { return };
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors, say: pause, go on.
                            tracing::warn!(%error, "cannot accept a connection");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                    () = sender.closed() => return,
                };
                // Small replies must not wait out Nagle's algorithm.
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(self.current());
                let (sender, server) = (sender.clone(), self.server);
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                    drop(slot);
                    match handshake {
                        Ok(Ok(stream)) if server == Server::Node && !names_a_role(&stream) => tracing::info!(
                            %peer,
                            "refused a TLS connection: its certificate names no node, portal or operator role"
                        ),
                        Ok(Ok(stream)) => {
                            let _ = sender.send(Ok(stream)).await;
                        }
                        Ok(Err(error)) => tracing::info!(%peer, %error, "refused a TLS connection"),
                        Err(_) => tracing::info!(%peer, "refused a TLS connection: no handshake in time"),
                    }
                });
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// True if the caller's certificate names a role (node, portal, operator).
fn names_a_role(stream: &tokio_rustls::server::TlsStream<TcpStream>) -> bool {
    let certificates = stream.get_ref().1.peer_certificates();
    certificates.and_then(|c| c.first()).and_then(|c| super::role_named_by(c.as_ref())).is_some()
}

/// This process's client side: where its files are, and the settings.
struct ClientSide {
    dir: PathBuf,
    role: Role,
    config: Arc<ClientConfig>,
}

/// This process's client side, once set.
static CLIENT_SIDE: RwLock<Option<ClientSide>> = RwLock::new(None);

/// Makes every later connection to a node use TLS as `role`, with the
/// certificates of `dir`. A process has one client side: once set, later
/// calls leave it as it is (and [`reload_clients`] reads its files again).
pub fn use_for_clients(dir: &Path, role: Role) -> Result<(), TlsError> {
    let mut side = CLIENT_SIDE.write().unwrap_or_else(|poisoned| poisoned.into_inner());
    if side.is_none() {
        *side = Some(ClientSide { dir: dir.to_owned(), role, config: client_config(dir, role)? });
    }
    Ok(())
}

/// The client side's settings, if this process set one.
fn client_side() -> Option<Arc<ClientConfig>> {
    CLIENT_SIDE.read().unwrap_or_else(|poisoned| poisoned.into_inner()).as_ref().map(|side| Arc::clone(&side.config))
}

/// True if this process connects to nodes over TLS.
pub fn clients_use_tls() -> bool {
    client_side().is_some()
}

/// Reads the client side's files again, if there is one; on an error it
/// stays as it was.
pub fn reload_clients() -> Result<(), TlsError> {
    if let Some(config) = read_client_files()? {
        install_client(config);
    }
    Ok(())
}

/// The client settings the files hold now, if this process has a client
/// side.
fn read_client_files() -> Result<Option<Arc<ClientConfig>>, TlsError> {
    let side = CLIENT_SIDE.read().unwrap_or_else(|poisoned| poisoned.into_inner());
    side.as_ref().map(|side| client_config(&side.dir, side.role)).transpose()
}

/// Uses `config` for every connection to a node from now on.
fn install_client(config: Arc<ClientConfig>) {
    if let Some(side) = CLIENT_SIDE.write().unwrap_or_else(|poisoned| poisoned.into_inner()).as_mut() {
        side.config = config;
    }
}

/// Reads every TLS file of this process again on each SIGHUP: the client
/// side, and `server`'s if given. Both are read before either is used, so
/// a bad file leaves both as they were, and says so.
pub fn reload_on_hangup(server: Option<Arc<ServerSide>>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; certificates reload only on restart");
            return;
        }
    };
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if server.is_none() && !clients_use_tls() {
                tracing::info!("SIGHUP: this process uses no TLS certificates; nothing to read again");
                continue;
            }
            let read = server.as_ref().map(|side| side.read_files()).transpose().and_then(|served| {
                let client = read_client_files()?;
                Ok((served, client))
            });
            match read {
                Ok((served, client)) => {
                    if let (Some(side), Some(config)) = (&server, served) {
                        side.install(config);
                    }
                    if let Some(config) = client {
                        install_client(config);
                    }
                    tracing::info!("SIGHUP: read the TLS certificates again");
                }
                Err(error) => tracing::error!(%error, "SIGHUP: kept the TLS certificates as they were"),
            }
        }
    });
}

/// Opens connections to nodes over TCP and TLS with the client side of
/// the moment (for `Endpoint::connect_with_connector`).
#[derive(Clone, Debug, Default)]
pub struct Connector;

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = client_side();
        Box::pin(async move {
            let config = config.ok_or_else(|| io::Error::other("this process has no TLS client side"))?;
            let host = uri.host().ok_or_else(|| io::Error::other(format!("{uri} names no host")))?;
            let port = uri.port_u16().ok_or_else(|| io::Error::other(format!("{uri} names no port")))?;
            let tcp = TcpStream::connect((host.trim_start_matches('[').trim_end_matches(']'), port)).await?;
            tcp.set_nodelay(true)?;
            let name = pki_types::ServerName::try_from(NODE_SERVER_NAME).expect("a valid DNS name");
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_side_reads_and_a_damaged_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        super::super::init(dir.path()).unwrap();
        let side = ServerSide::load(dir.path(), Server::Node).unwrap();
        ServerSide::load(dir.path(), Server::Portal).unwrap();
        for role in Role::ALL {
            client_config(dir.path(), role).unwrap();
        }
        let (cert, _) = role_files(dir.path(), Role::Node);
        std::fs::write(&cert, "not a certificate").unwrap();
        let refused = side.reload().unwrap_err().to_string();
        assert!(refused.contains("node.pem") && refused.contains("no certificate"), "{refused}");
        assert!(server_config(dir.path(), Server::Node).is_err());
    }
}
