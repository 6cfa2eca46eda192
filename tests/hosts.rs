//! Real hosts, as far as one machine allows: three network namespaces,
//! each with its own address and host name, laid out like
//! `deploy/cluster.example.toml` — host `shop-i` runs node i of shard
//! `even` and node i+3 of shard `odd`, every node listens on `0.0.0.0` at
//! the same two ports on every host and is reached by its host name, which
//! each host resolves through its own `/etc/hosts` (`ip netns exec` mounts
//! `/etc/netns/<name>/hosts` over it). The admin portal runs on host 1.
//!
//! Needs root and `ip netns`; elsewhere the test says why it skipped and
//! passes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use raftshop_proto::api::admin_portal_client::AdminPortalClient;
use raftshop_proto::api::{Id, Product};
use storage_node::client::ShardClient;
use storage_node::config::{NodeConfig, PortalsConfig};
use storage_node::{ClusterConfig, NodeId, Shard};

/// Hosts, each a network namespace.
const HOSTS: u8 = 3;
/// Every even node's port, on every host.
const EVEN_PORT: u16 = 50101;
/// Every odd node's port, on every host.
const ODD_PORT: u16 = 50104;
/// The admin portal's port on host 1.
const ADMIN_PORT: u16 = 55006;

/// Three namespaces on a bridge, torn down (with every process started in
/// them) when dropped.
struct Hosts {
    /// This run's tag, in every name, so that runs do not collide.
    tag: String,
    /// The first three octets of the hosts' subnet, e.g. `10.77.3`.
    subnet: String,
    /// Processes started in the namespaces.
    children: Vec<(String, Child)>,
    /// Logs and data.
    dir: tempfile::TempDir,
}

impl Hosts {
    /// Sets the hosts up, or says why this machine cannot.
    fn create() -> Result<Hosts, String> {
        if unsafe { libc::geteuid() } != 0 {
            return Err("not running as root".into());
        }
        let pid = std::process::id();
        let hosts = Hosts {
            tag: format!("{}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250),
            children: Vec::new(),
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        hosts.wire()?;
        Ok(hosts)
    }

    fn namespace(&self, host: u8) -> String {
        format!("rs{}-shop-{host}", self.tag)
    }

    fn bridge(&self) -> String {
        format!("rsb{}", self.tag)
    }

    fn address(&self, host: u8) -> String {
        format!("{}.{host}", self.subnet)
    }

    fn name(host: u8) -> String {
        format!("shop-{host}.raftshop.test")
    }

    /// The bridge, one namespace per host with a veth into it, and each
    /// host's `/etc/hosts`.
    fn wire(&self) -> Result<(), String> {
        let bridge = self.bridge();
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{}.254/24", self.subnet), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        let mut hosts_file = String::from("127.0.0.1 localhost\n");
        for host in 1..=HOSTS {
            hosts_file += &format!("{} {}\n", self.address(host), Hosts::name(host));
        }
        for host in 1..=HOSTS {
            let ns = self.namespace(host);
            let (outside, inside) = (format!("rsv{}-{host}", self.tag), format!("rsi{}-{host}", self.tag));
            ip(&["netns", "add", &ns])?;
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &outside, "master", &bridge, "up"])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["-n", &ns, "addr", "add", &format!("{}/24", self.address(host)), "dev", &inside])?;
            ip(&["-n", &ns, "link", "set", &inside, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let etc = PathBuf::from("/etc/netns").join(&ns);
            std::fs::create_dir_all(&etc).map_err(|e| format!("{}: {e}", etc.display()))?;
            std::fs::write(etc.join("hosts"), &hosts_file).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// The cluster as every host sees it: nodes on `0.0.0.0`, reached by
    /// host name, as in `deploy/cluster.example.toml`.
    fn config(&self) -> ClusterConfig {
        let node = |id: NodeId, host: u8, shard: Shard, port: u16| NodeConfig {
            id,
            shard,
            addr: format!("0.0.0.0:{port}").parse().unwrap(),
            advertise: Some(format!("{}:{port}", Hosts::name(host))),
            data_dir: self.dir.path().join(format!("node-{id}")),
            metrics: None,
            join: false,
        };
        let mut nodes = Vec::new();
        for host in 1..=HOSTS {
            nodes.push(node(NodeId::from(host), host, Shard::Even, EVEN_PORT));
            nodes.push(node(NodeId::from(host) + 3, host, Shard::Odd, ODD_PORT));
        }
        let any = |port: u16| format!("0.0.0.0:{port}").parse().unwrap();
        let portals = PortalsConfig {
            admin: any(ADMIN_PORT),
            order: any(ADMIN_PORT - 1),
            admin_metrics: None,
            order_metrics: None,
            console: None,
        };
        ClusterConfig {
            cluster_id: format!("hosts-{}", self.tag),
            portals,
            raft: ClusterConfig::embedded().raft,
            nodes,
            tls: None,
            auth: None,
        }
    }

    /// The same cluster reached by address, for this test's own clients in
    /// the root namespace, where the host names do not resolve.
    fn config_by_address(&self) -> ClusterConfig {
        let mut config = self.config();
        for node in &mut config.nodes {
            let host = (node.id - 1) % 3 + 1;
            node.advertise = Some(format!("{}:{}", self.address(host as u8), node.addr.port()));
        }
        config
    }

    /// Starts `binary args` on `host`, logging to `<dir>/<name>.log`.
    fn start(&mut self, host: u8, name: &str, binary: &Path, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(host)]).arg(binary).args(args);
        command.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        self.children.push((name.to_owned(), command.spawn().expect("ip netns exec starts")));
    }

    /// SIGKILLs the process started as `name`.
    fn kill(&mut self, name: &str) {
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name).expect("started");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.children {
            let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(15).collect();
            out += &format!("--- {name}\n{}\n", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        out
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for host in 1..=HOSTS {
            let ns = self.namespace(host);
            let _ = ip(&["netns", "del", &ns]);
            let _ = std::fs::remove_dir_all(PathBuf::from("/etc/netns").join(&ns));
        }
        let _ = ip(&["link", "del", &self.bridge()]);
    }
}

/// Runs `ip args`, its error output as the error.
fn ip(args: &[&str]) -> Result<(), String> {
    let output = Command::new("ip").args(args).output().map_err(|e| format!("ip: {e}"))?;
    match output.status.success() {
        true => Ok(()),
        false => Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr).trim())),
    }
}

/// The leader of `shard` as its members report it, within `timeout`.
async fn leader(client: &ShardClient, timeout: Duration) -> Result<NodeId, String> {
    let deadline = Instant::now() + timeout;
    loop {
        for id in client.member_ids() {
            if let Ok(status) = client.status(id, Duration::from_millis(500)).await {
                if status.role == "leader" {
                    return Ok(id);
                }
            }
        }
        if Instant::now() > deadline {
            return Err(format!("no leader in shard {} within {timeout:?}", client.shard()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create(admin: &mut AdminPortalClient<tonic::transport::Channel>, pid: u64) -> i32 {
    let data = format!(r#"{{"name":"p{pid}","price":2,"quantity":5}}"#);
    admin.create_product(Product { pid: pid.to_string(), data }).await.expect("the portal answers").into_inner().error
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_three_hosts_reached_by_name_survives_losing_a_leader() {
    let mut hosts = match Hosts::create() {
        Ok(hosts) => hosts,
        Err(why) => {
            eprintln!("SKIPPED: the multi-host test needs root and `ip netns` ({why})");
            return;
        }
    };
    let config_path = hosts.dir.path().join("cluster.toml");
    std::fs::write(&config_path, hosts.config().to_toml()).unwrap();
    let config = config_path.to_str().unwrap().to_owned();
    let storage_node = PathBuf::from(env!("CARGO_BIN_EXE_storage-node"));
    for host in 1..=HOSTS {
        for id in [NodeId::from(host), NodeId::from(host) + 3] {
            hosts.start(host, &format!("node-{id}"), &storage_node, &["--id", &id.to_string(), "--config", &config]);
        }
    }
    let listen = format!("0.0.0.0:{ADMIN_PORT}");
    let admin_portal = PathBuf::from(env!("CARGO_BIN_EXE_admin-portal"));
    hosts.start(1, "admin-portal", &admin_portal, &["--listen", &listen, "--config", &config]);

    let by_address = hosts.config_by_address();
    let even = ShardClient::new(&by_address, Shard::Even);
    let odd = ShardClient::new(&by_address, Shard::Odd);
    let first_leader = leader(&even, common::STARTUP).await.unwrap();
    leader(&odd, common::STARTUP).await.unwrap();

    let portal = format!("http://{}:{ADMIN_PORT}", hosts.address(1));
    let deadline = Instant::now() + common::STARTUP;
    let mut admin = loop {
        if let Ok(channel) = tonic::transport::Endpoint::from_shared(portal.clone()).unwrap().connect().await {
            break AdminPortalClient::new(channel);
        }
        assert!(Instant::now() < deadline, "the portal on host 1 did not come up\n{}", hosts.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for pid in [2, 3] {
        assert_eq!(create(&mut admin, pid).await, 0, "product {pid} is created through the portal on host 1");
    }

    hosts.kill(&format!("node-{first_leader}"));
    let started = Instant::now();
    let next_leader = loop {
        let next = leader(&even, common::STARTUP).await.unwrap();
        if next != first_leader {
            break next;
        }
        assert!(started.elapsed() < common::STARTUP, "node {first_leader} was killed but is still reported leading");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("node {first_leader} was SIGKILLed; node {next_leader} leads after {:?}", started.elapsed());
    assert_eq!(create(&mut admin, 4).await, 0, "shard even takes writes under its new leader\n{}", hosts.logs());
    for pid in [2u64, 3, 4] {
        let reply = admin.retrieve_product(Id { id: pid.to_string() }).await.expect("answered").into_inner();
        assert!(reply.data.contains(&format!("\"p{pid}\"")), "product {pid} reads back: {reply:?}");
    }
}
