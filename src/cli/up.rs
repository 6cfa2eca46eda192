//! `raftshop up`: the whole cluster in the foreground of one terminal.
//!
//! In order, `up`:
//!
//! 1. Chooses the config like every other process does (`--config`, else
//!    `./cluster.toml`, else the embedded default) and says which. The
//!    children get it as a file: the chosen file, or for the embedded default
//!    a copy written to `<data-dir>/cluster.toml`, by default
//!    `data/cluster.toml` (see [`config_source`](super::config_source)).
//! 2. Rebuilds the executables when `cargo run` launched it, then finds them
//!    next to its own (see [`binaries`](super::binaries)).
//! 3. Checks that no other process listens on the cluster's addresses (a
//!    cluster left running would answer for the new one), then starts one
//!    child per storage node, `storage-node --id N --config FILE`, all in
//!    `up`'s own working directory, so relative `data_dir`s resolve as
//!    `cluster.toml` promises: the default config keeps node N's data in
//!    `./data/node-N`. Nothing is ever deleted, so a second `up` resumes
//!    from the data the first one left.
//! 4. Prints where every process listens, then polls `Status` on every node
//!    until each shard has a leader, and prints who leads and how long it
//!    took; if a shard has none after [`READY_TIMEOUT`], it stops the
//!    children and fails, naming the shard.
//! 5. Supervises (see [`supervisor`](super::supervisor)), from the start,
//!    not only once ready: a child that fails is reported with its status
//!    and restarted after a pause that grows from 0.5 s to 10 s; one that
//!    crashes 5 times within 60 s is given up on, with the command that
//!    starts it by hand, and the others keep running. With `--no-restart`,
//!    every child that exits is only reported, with that command.
//! 6. On SIGINT (Ctrl-C) or SIGTERM, drops pending restarts, sends every
//!    child SIGTERM, waits up to [`STOP_GRACE`](super::supervisor::STOP_GRACE)
//!    (a second signal cuts the wait short), SIGKILLs the rest, and exits 0.
//!
//! Everything the cluster consists of is the list [`cluster_children`]
//! returns; the portals join the cluster by joining that list.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use portals::auth::Role;
use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;
use storage_node::NodeId;
use tokio::time::Instant;

use super::args::UpArgs;
use super::binaries::{self, CargoBuild, STORAGE_NODE};
use super::children::ChildSpec;
use super::config_source::ConfigSource;
use super::probe::{probe_all, ShardLeadership};
use super::restart::RestartPolicy;
use super::supervisor::{Cluster, StopSignals, Wake};
use super::table::{self, Align, Column};

/// How long every shard has to elect a leader once the nodes are started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two readiness probes.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long each node has to answer a readiness probe.
const READY_PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Runs `raftshop up`.
pub async fn run(args: UpArgs) -> anyhow::Result<ExitCode> {
    let source = ConfigSource::choose(args.config.as_deref());
    let config = source.load()?;
    if let Some(tls) = config.tls.as_ref().filter(|tls| !storage_node::tls::ca_file(&tls.dir).exists()) {
        storage_node::tls::init(&tls.dir).context("cannot make the cluster's certificates")?;
        println!("mutual TLS: made a CA and certificates in {}", tls.dir.display());
    }
    let (config, config_file) = match args.secure {
        true => secure(config, &args.data_dir)?,
        false => {
            let file = source.file_for_children(&args.data_dir)?;
            println!("config: {}", source.describe(&file));
            (config, file)
        }
    };
    let specs = cluster_children(&config, &config_file);
    let programs = prepare_executables(&specs).await?;
    let workdir = std::env::current_dir().context("cannot tell the current directory")?;
    check_addresses_free(&specs)?;
    let mut signals = StopSignals::install()?;
    let mut cluster = Cluster::new(&workdir, (!args.no_restart).then(RestartPolicy::default));
    let started = Instant::now();
    let from = programs.first().and_then(|p| p.parent()).unwrap_or(Path::new("?"));
    println!("starting {} processes from {} in {}", specs.len(), from.display(), workdir.display());
    match cluster.start(&specs, &programs) {
        Ok(pids) => print!("{}", listing(&specs, &pids)),
        Err(error) => {
            cluster.stop(&mut signals).await;
            return Err(error);
        }
    }
    let pid_file = args.data_dir.join(PID_FILE);
    if let Err(error) = std::fs::create_dir_all(&args.data_dir).and_then(|()| write_pid(&pid_file)) {
        println!("cannot write {} ({error}); `raftshop restart --rolling` will not find this up", pid_file.display());
    }
    let outcome = supervise(&mut cluster, &config, started, &mut signals).await;
    cluster.stop(&mut signals).await;
    let _ = std::fs::remove_file(&pid_file);
    outcome.map(|()| ExitCode::SUCCESS)
}

/// `config` with the portals locked (`--secure`): `[auth]` with `tls =
/// true`, its users file `<data_dir>/users.toml` unless the config names
/// one. Writes it to `<data_dir>/cluster.secure.toml` for the children and
/// the CLI; on first start makes the user `operator` with every role.
fn secure(mut config: ClusterConfig, data_dir: &Path) -> anyhow::Result<(ClusterConfig, PathBuf)> {
    let Some(tls) = config.tls.clone() else {
        bail!("--secure serves the portals with the certificates of [tls], and the config has no [tls] table");
    };
    let users = config.auth.as_ref().map_or_else(|| data_dir.join("users.toml"), |auth| auth.users.clone());
    config.auth = Some(storage_node::config::AuthConfig { users: users.clone(), tls: true });
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let file = data_dir.join("cluster.secure.toml");
    std::fs::write(&file, config.to_toml()).with_context(|| format!("cannot write {}", file.display()))?;
    println!("config: {} (--secure: the portals' API over TLS, users required)", file.display());
    if !users.exists() {
        let added = super::user::add(&users, "operator", &[Role::Admin, Role::Clerk, Role::Reader], Some(&tls.dir))
            .map_err(|e| anyhow!("cannot make the first portal user: {e}"))?;
        let (pem, key) = added.cert.expect("asked for a certificate");
        println!("made user operator (every role): token {} (shown once)", added.token);
        println!(
            "  e.g. raftshop admin --config {} --cert {} --key {} get-client 1",
            file.display(),
            pem.display(),
            key.display()
        );
    }
    let file = std::path::absolute(&file).with_context(|| format!("cannot make {} absolute", file.display()))?;
    Ok((config, file))
}

/// The file in `up`'s data directory naming its pid, for `restart`.
const PID_FILE: &str = "up.pid";

fn write_pid(path: &Path) -> std::io::Result<()> {
    std::fs::write(path, format!("{}\n", std::process::id()))
}

/// Runs `raftshop restart --rolling`: asks the `raftshop up` whose data
/// directory is `data_dir` (by SIGHUP) to restart its processes one at a
/// time. `up`'s own output reports each step.
pub fn ask_rolling_restart(data_dir: &Path) -> anyhow::Result<ExitCode> {
    let path = data_dir.join(PID_FILE);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("no running `raftshop up` found: cannot read {}", path.display()))?;
    let pid: u32 = text.trim().parse().with_context(|| format!("{} does not hold a pid", path.display()))?;
    let command = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    if !command.contains("raftshop") {
        bail!("{} names pid {pid}, which is not a running raftshop up; is the cluster stopped?", path.display());
    }
    // The pid file and the command line above vouch for the pid.
    if let Err(error) = raftshop::process::signal(pid, raftshop::process::Signal::HangUp) {
        bail!("cannot signal raftshop up (pid {pid}): {error}");
    }
    println!("asked raftshop up (pid {pid}) for a rolling restart; its output reports each step");
    Ok(ExitCode::SUCCESS)
}

/// Every process of the cluster `config` describes — the storage nodes,
/// then the two portals — each reading its config from `config_file`.
pub fn cluster_children(config: &ClusterConfig, config_file: &Path) -> Vec<ChildSpec> {
    let nodes = config.nodes.iter().map(|node| ChildSpec {
        name: format!("node-{}", node.id),
        binary: STORAGE_NODE,
        args: vec!["--id".into(), node.id.to_string().into(), "--config".into(), config_file.into()],
        listens: node.addr,
        summary: format!("shard {}, data in {}", node.shard, node.data_dir.display()),
    });
    let portal = |name: &'static str, addr: std::net::SocketAddr, serves: &str| ChildSpec {
        name: name.into(),
        binary: name,
        args: vec!["--listen".into(), addr.to_string().into(), "--config".into(), config_file.into()],
        listens: addr,
        summary: format!("the seed's {serves} API"),
    };
    let portals = [
        portal("admin-portal", config.portals.admin, "AdminPortal"),
        portal("order-portal", config.portals.order, "OrderPortal"),
    ];
    nodes.chain(portals).collect()
}

/// The executable of every child, rebuilt first when `cargo run` launched
/// `up`.
async fn prepare_executables(specs: &[ChildSpec]) -> anyhow::Result<Vec<PathBuf>> {
    let build = CargoBuild::from_env()?;
    if let Some(build) = &build {
        println!("launched by cargo: building the cluster's executables first ({})", build.describe());
        build.run().await?;
    }
    let dir = binaries::own_dir()?;
    specs.iter().map(|spec| binaries::locate(&dir, spec.binary, build.is_some())).collect()
}

/// Fails, naming the child, if another process already listens where a
/// child should: most likely a cluster started earlier and still running,
/// whose nodes would otherwise answer for ours.
fn check_addresses_free(specs: &[ChildSpec]) -> anyhow::Result<()> {
    for spec in specs {
        if let Err(error) = std::net::TcpListener::bind(spec.listens) {
            bail!(
                "{} cannot listen on {} ({error}); is another cluster still running? Stop it, or change the \
                 addresses in the config",
                spec.name,
                spec.listens
            );
        }
    }
    Ok(())
}

/// Waits for the cluster to be ready, then keeps it running until a stop
/// signal; fails if it never gets ready or every child has exited.
async fn supervise(
    cluster: &mut Cluster,
    config: &ClusterConfig,
    started: Instant,
    signals: &mut StopSignals,
) -> anyhow::Result<()> {
    let client = ClusterClient::new(config);
    let ready = wait_for_leaders(config, &client);
    tokio::pin!(ready);
    loop {
        tokio::select! {
            shards = &mut ready => {
                println!("{}", ready_line(&shards?, started.elapsed()));
                break;
            }
            wake = cluster.wake(signals) => if let Some(name) = act(cluster, wake)? {
                println!("{name} received before the cluster was ready; stopping");
                return Ok(());
            },
        }
    }
    match (config.portals.console, &config.auth) {
        (Some(_), Some(_)) => println!("web console: not served, since it has no login and [auth] is on"),
        (Some(console), None) => println!("web console: http://{console}/"),
        (None, _) => {}
    }
    println!("Ctrl-C stops the cluster; `raftshop status` shows how it is; `raftshop restart --rolling` restarts it");
    loop {
        let wake = cluster.wake(signals).await;
        let stop = match wake {
            Wake::RollingRestart => cluster.rolling_restart(signals, |name| ready_again(config, &client, name)).await?,
            wake => act(cluster, wake)?,
        };
        if let Some(name) = stop {
            println!("{name} received; stopping the cluster");
            return Ok(());
        }
    }
}

/// Resolves once child `name`, just restarted, serves again: a node has
/// caught up with its shard's leader (its applied index reached what the
/// leader had applied when the node first answered), a portal accepts
/// connections. Fails after [`READY_TIMEOUT`].
async fn ready_again(config: &ClusterConfig, client: &ClusterClient, name: String) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let node = name.strip_prefix("node-").and_then(|id| id.parse::<NodeId>().ok()).and_then(|id| config.node(id));
    let Some(node) = node else {
        let addr = if name == "admin-portal" { config.portals.admin } else { config.portals.order };
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if Instant::now() >= deadline {
                return Err(format!("it does not accept connections at {addr}"));
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        return Ok(());
    };
    let shard = client.shard(node.shard);
    let mut target = None;
    loop {
        if let Ok(status) = shard.status(node.id, READY_PROBE_TIMEOUT).await {
            let leader = match status.leader_id {
                Some(leader) if leader != node.id => shard.status(leader, READY_PROBE_TIMEOUT).await.ok(),
                Some(_) => Some(status.clone()),
                None => None,
            };
            if let Some(leader) = leader {
                let want = *target.get_or_insert(leader.applied_index);
                if status.applied_index >= want {
                    return Ok(());
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("it did not catch up with its leader within {} s", READY_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

/// Acts on what `up` woke up for; returns the signal's name if it was told
/// to stop.
fn act(cluster: &mut Cluster, wake: Wake) -> anyhow::Result<Option<&'static str>> {
    match wake {
        Wake::Stop(name) => return Ok(Some(name)),
        Wake::Exit(exit) => cluster.exited(exit)?,
        Wake::RestartDue => cluster.restart_due()?,
        Wake::RollingRestart => println!("SIGHUP before the cluster was ready: no rolling restart"),
    }
    Ok(None)
}

/// Polls every node until each shard has a leader, or fails after
/// [`READY_TIMEOUT`] naming the shards without one.
async fn wait_for_leaders(config: &ClusterConfig, client: &ClusterClient) -> anyhow::Result<Vec<ShardLeadership>> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let probes = probe_all(config, client, READY_PROBE_TIMEOUT).await;
        let shards = ShardLeadership::all(&probes);
        if shards.iter().all(|s| s.leadership.has_leader()) {
            return Ok(shards);
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(not_ready_message(&shards, READY_TIMEOUT)));
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
}

/// Why the cluster is not ready: every shard without a leader.
fn not_ready_message(shards: &[ShardLeadership], waited: Duration) -> String {
    let leaderless: Vec<String> =
        shards.iter().filter(|s| !s.leadership.has_leader()).map(ToString::to_string).collect();
    format!("the cluster is not ready after {} s: {}", waited.as_secs(), leaderless.join("; "))
}

/// The line announcing readiness: every shard's leader and the time taken.
fn ready_line(shards: &[ShardLeadership], elapsed: Duration) -> String {
    let parts: Vec<String> = shards.iter().map(ToString::to_string).collect();
    format!("{} — ready in {:.2} s", parts.join(" — "), elapsed.as_secs_f64())
}

/// Where every child listens, one indented line each, with its pid.
fn listing(specs: &[ChildSpec], pids: &[u32]) -> String {
    const COLUMNS: [Column; 4] = [
        Column { title: "process", align: Align::Left },
        Column { title: "listens on", align: Align::Left },
        Column { title: "pid", align: Align::Right },
        Column { title: "", align: Align::Left },
    ];
    let rows: Vec<Vec<String>> = specs
        .iter()
        .zip(pids)
        .map(|(spec, pid)| vec![spec.name.clone(), spec.listens.to_string(), pid.to_string(), spec.summary.clone()])
        .collect();
    table::render(&COLUMNS, &rows).lines().map(|line| format!("  {line}\n")).collect()
}

#[cfg(test)]
mod tests {
    use storage_node::Shard;

    use super::super::probe::Leadership;

    use super::*;

    fn default_config() -> ClusterConfig {
        ClusterConfig::embedded()
    }

    #[test]
    fn every_node_and_portal_is_a_child_reading_the_given_config() {
        let children = cluster_children(&default_config(), Path::new("/srv/data/cluster.toml"));
        let names: Vec<&str> = children.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-5", "node-6", "admin-portal", "order-portal"]);
        let order: Vec<_> = children[7].args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(order, ["--listen", "127.0.0.1:55005", "--config", "/srv/data/cluster.toml"]);
        let args: Vec<_> = children[4].args.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(args, ["--id", "5", "--config", "/srv/data/cluster.toml"]);
        assert_eq!(children[4].binary, "storage-node");
        assert_eq!(children[4].listens.to_string(), "127.0.0.1:50105");
        assert_eq!(children[4].summary, "shard odd, data in data/node-5");
    }

    #[test]
    fn an_address_in_use_is_refused_naming_the_child() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut children = cluster_children(&default_config(), Path::new("/c.toml"));
        children[1].listens = taken.local_addr().expect("address");
        let error = check_addresses_free(&children[1..2]).expect_err("in use").to_string();
        assert!(error.starts_with(&format!("node-2 cannot listen on {}", children[1].listens)), "{error}");
        drop(taken);
        assert!(check_addresses_free(&children[1..2]).is_ok());
    }

    fn shard(shard: Shard, leadership: Leadership) -> ShardLeadership {
        ShardLeadership { shard, leadership }
    }

    #[test]
    fn ready_line_names_each_leader_and_the_time_taken() {
        let shards = [
            shard(Shard::Even, Leadership::Leader { node: 2, term: 3 }),
            shard(Shard::Odd, Leadership::Leader { node: 5, term: 2 }),
        ];
        assert_eq!(
            ready_line(&shards, Duration::from_millis(1843)),
            "shard even: leader node 2 (term 3) — shard odd: leader node 5 (term 2) — ready in 1.84 s"
        );
    }

    #[test]
    fn not_ready_names_the_leaderless_shard() {
        let shards = [
            shard(Shard::Even, Leadership::Leader { node: 2, term: 3 }),
            shard(Shard::Odd, Leadership::Leaderless { reachable: 1, members: 3 }),
        ];
        assert_eq!(
            not_ready_message(&shards, READY_TIMEOUT),
            "the cluster is not ready after 30 s: shard odd: no leader (1 of 3 nodes reachable)"
        );
    }

    #[test]
    fn listing_shows_address_pid_and_summary() {
        let children = cluster_children(&default_config(), Path::new("/c.toml"));
        let text = listing(&children[..2], &[41, 4242]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "  process  listens on        pid");
        assert_eq!(lines[1], "  node-1   127.0.0.1:50101    41  shard even, data in data/node-1");
        assert_eq!(lines[2], "  node-2   127.0.0.1:50102  4242  shard even, data in data/node-2");
    }
}
