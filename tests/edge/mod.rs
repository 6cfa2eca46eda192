//! Shared by the tests of the portals' edge (limits, retries, health): a
//! portal of our own with non-default flags, requests with an idempotency
//! key, and the shards' state digests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use raftshop::local_cluster::{free_port, LocalCluster, PortalKind};
use storage_node::Shard;

/// How long set-up waits for a portal or a leader.
pub const STARTUP: Duration = Duration::from_secs(30);

/// A portal process started with extra flags, killed on drop.
pub struct ExtraPortal {
    /// The running process.
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl ExtraPortal {
    /// Starts a `kind` portal of `cluster` on a free port (and its metrics,
    /// and an admin portal's console, on others, beside the cluster's own
    /// portal) with `flags`, and waits
    /// until it accepts connections.
    pub async fn start(cluster: &LocalCluster, kind: PortalKind, flags: &[&str]) -> Self {
        let addr = free_port().expect("a free port");
        let binary = match kind {
            PortalKind::Admin => env!("CARGO_BIN_EXE_admin-portal"),
            PortalKind::Order => env!("CARGO_BIN_EXE_order-portal"),
        };
        let log = std::fs::File::create(cluster.dir().join(format!("extra-{}-{}.log", kind.name(), addr.port())))
            .expect("a log file");
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--config")
            .arg(cluster.config_path())
            .arg("--metrics")
            .arg(free_port().expect("a free port").to_string());
        if kind == PortalKind::Admin {
            // The cluster's own admin portal serves the console at the
            // config's address.
            command.arg("--console").arg(free_port().expect("a free port").to_string());
        }
        let child = command
            .args(flags)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("the portal starts");
        let portal = ExtraPortal { child, addr };
        let give_up = tokio::time::Instant::now() + STARTUP;
        while tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.is_err() {
            assert!(tokio::time::Instant::now() < give_up, "the extra {} did not come up", kind.name());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        portal
    }

    /// A channel to it.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }
}

impl Drop for ExtraPortal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `message` as a request with the metadata `idempotency-key: key`.
pub fn keyed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(portals::idempotency::METADATA_KEY, key.parse().expect("an ASCII key"));
    request
}

/// The state digest of every shard, from each shard's leader.
pub async fn digests(cluster: &LocalCluster) -> Vec<u64> {
    let mut digests = Vec::new();
    for shard in Shard::ALL {
        let leader = cluster.wait_for_leader(shard, STARTUP).await.unwrap();
        digests.push(cluster.shard_client(shard).status(leader, STARTUP).await.unwrap().state_digest);
    }
    digests
}
