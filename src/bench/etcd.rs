//! A three-member etcd cluster on loopback, in a temp dir, for comparison.
//!
//! It runs Debian's `etcd-server` package (`etcd` on the PATH) with its
//! defaults — every write fsync'ed, as raftshop's are — and is stopped when
//! dropped.

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use raftshop_proto::etcd::kv_client::KvClient;
use raftshop_proto::etcd::RangeRequest;
use tonic::transport::Channel;

use crate::local_cluster::free_ports;
use crate::process::{self, Output};

/// A running local etcd.
pub struct LocalEtcd {
    /// The members' client addresses.
    pub endpoints: Vec<SocketAddr>,
    /// The member processes.
    members: Vec<Child>,
    /// Their data, removed on drop.
    _dir: tempfile::TempDir,
}

impl LocalEtcd {
    /// Starts three members and waits until they serve linearizable reads.
    pub async fn start() -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("raftshop-etcd-").tempdir().map_err(|e| e.to_string())?;
        let free = free_ports(6).map_err(|e| e.to_string())?;
        let ports: Vec<(SocketAddr, SocketAddr)> = free.chunks(2).map(|pair| (pair[0], pair[1])).collect();
        let cluster: Vec<String> =
            ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://{peer}")).collect();
        let mut members = Vec::new();
        for (i, (client, peer)) in ports.iter().enumerate() {
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).map_err(|e| e.to_string())?;
            let child = process::command("etcd", Output::File(log))
                .map_err(|e| format!("cannot start etcd: {e}"))?
                .args(["--name", &format!("m{i}")])
                .arg("--data-dir")
                .arg(dir.path().join(format!("m{i}")))
                .args([
                    "--listen-client-urls",
                    &format!("http://{client}"),
                    "--advertise-client-urls",
                    &format!("http://{client}"),
                ])
                .args([
                    "--listen-peer-urls",
                    &format!("http://{peer}"),
                    "--initial-advertise-peer-urls",
                    &format!("http://{peer}"),
                ])
                .args(["--initial-cluster", &cluster.join(","), "--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "raftshop-bench", "--log-level", "warn"])
                .spawn()
                .map_err(|e| format!("cannot start etcd ({e}); install it with `apt-get install etcd-server`"))?;
            members.push(child);
        }
        let etcd = LocalEtcd { endpoints: ports.iter().map(|(c, _)| *c).collect(), members, _dir: dir };
        etcd.wait_ready().await?;
        Ok(etcd)
    }

    /// The members' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.members.iter().map(Child::id).collect()
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(channel) = connect(&self.endpoints[0]).await {
                let request = RangeRequest { key: b"ready".to_vec(), ..Default::default() };
                if KvClient::new(channel).range(request).await.is_ok() {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() >= give_up {
                return Err("etcd did not become ready in 30 s".into());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        for member in &mut self.members {
            let _ = process::kill(member);
        }
    }
}

/// A channel to an etcd member.
pub async fn connect(addr: &SocketAddr) -> Result<Channel, tonic::transport::Error> {
    storage_node::endpoint::endpoint(addr).expect("a socket address is a URI").connect().await
}
