//! A storage node refuses bad input with one clear line on stderr and a
//! non-zero exit, before touching anything: a malformed config, an unknown
//! node id, a port in use, a data directory of another node, a data
//! directory written in a format version this build does not read.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use raftshop::local_cluster::free_port;
use storage_node::config::DEFAULT_CLUSTER_TOML;
use storage_node::ClusterConfig;

fn node(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A refusal is immediate; a node that starts would run forever.
    for _ in 0..100 {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("storage-node {args:?} did not refuse to start: {:?}", child.wait_with_output().unwrap());
}

/// The error line of a refused start.
fn refusal(output: &Output) -> String {
    assert!(!output.status.success(), "non-zero exit expected");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "exactly one error line: {stderr}");
    lines[0].to_owned()
}

/// A valid config in `dir` with free ports and data under `dir`.
fn config_in(dir: &Path) -> (ClusterConfig, std::path::PathBuf) {
    let mut config = ClusterConfig::embedded();
    // Plaintext: these tests are about the node's own checks.
    config.tls = None;
    for node in &mut config.nodes {
        node.addr = free_port().unwrap();
        // The embedded config's metrics ports are fixed, and these tests
        // start nodes in parallel.
        node.metrics = Some(free_port().unwrap());
        node.data_dir = dir.join(format!("node-{}", node.id));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    (config, path)
}

#[test]
fn a_malformed_config_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.toml");
    std::fs::write(&path, DEFAULT_CLUSTER_TOML.replace("[portals]", "[portals]\nadmn = \"x\"")).unwrap();
    let line = refusal(&node(&["--id", "1", "--config", path.to_str().unwrap()]));
    assert!(line.contains("admn") && line.contains("cluster.toml"), "{line}");
    std::fs::write(&path, "this is [not toml").unwrap();
    let line = refusal(&node(&["--id", "1", "--config", path.to_str().unwrap()]));
    assert!(line.contains("invalid cluster config"), "{line}");
    assert!(!dir.path().join("node-1").exists(), "nothing was created");
}

#[test]
fn an_unknown_node_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = config_in(dir.path());
    let line = refusal(&node(&["--id", "9", "--config", path.to_str().unwrap()]));
    assert!(line.contains("node 9 is not in"), "{line}");
    let output = node(&["--id", "nine", "--config", path.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("invalid value 'nine'"));
}

#[test]
fn a_port_in_use_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = config_in(dir.path());
    let _squatter = std::net::TcpListener::bind(config.node(1).unwrap().addr).unwrap();
    let line = refusal(&node(&["--id", "1", "--config", path.to_str().unwrap()]));
    assert!(line.contains("already in use"), "{line}");
    assert!(!config.node(1).unwrap().data_dir.exists(), "no data directory was claimed");
}

#[test]
fn a_data_directory_of_another_node_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, path) = config_in(dir.path());
    // Node 1 claims its directory and stops.
    let mut first = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(["--id", "1", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let identity = config.node(1).unwrap().data_dir.join("raftshop-node.toml");
    for _ in 0..200 {
        if identity.exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let before = std::fs::read_to_string(&identity).expect("node 1 wrote its identity");
    let files_before = std::fs::read_dir(config.node(1).unwrap().data_dir.clone()).unwrap().count();

    // Node 2 is pointed at node 1's directory.
    let shared = config.node(1).unwrap().data_dir.clone();
    config.nodes.iter_mut().find(|n| n.id == 2).unwrap().data_dir = shared.clone();
    config.nodes.iter_mut().find(|n| n.id == 1).unwrap().data_dir = dir.path().join("elsewhere");
    let swapped = dir.path().join("swapped.toml");
    std::fs::write(&swapped, config.to_toml()).unwrap();
    let line = refusal(&node(&["--id", "2", "--config", swapped.to_str().unwrap()]));
    assert!(line.contains("belongs to node 1 (shard even), not node 2"), "{line}");
    assert_eq!(std::fs::read_to_string(&identity).unwrap(), before, "the identity is untouched");
    assert_eq!(std::fs::read_dir(&shared).unwrap().count(), files_before, "nothing was added");
}

#[test]
fn a_data_directory_of_an_unknown_format_version_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = config_in(dir.path());
    let data = config.node(3).unwrap().data_dir.clone();
    std::fs::create_dir_all(&data).unwrap();
    let identity = data.join("raftshop-node.toml");
    let written = "format = 2\nnode_id = 3\nshard = \"even\"\n";
    std::fs::write(&identity, written).unwrap();

    let output = node(&["--id", "3", "--config", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "the operator's to fix");
    let line = refusal(&output);
    assert!(line.contains("raftshop-node.toml") && line.contains("format version 2"), "{line}");
    assert_eq!(std::fs::read_to_string(&identity).unwrap(), written, "the identity is untouched");
    assert_eq!(std::fs::read_dir(&data).unwrap().count(), 1, "nothing was added");
}

#[test]
fn forcing_a_new_cluster_on_a_node_without_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, path) = config_in(dir.path());
    let output = node(&["--id", "1", "--config", path.to_str().unwrap(), "--force-new-cluster"]);
    assert_eq!(output.status.code(), Some(2), "an operator error");
    let line = refusal(&output);
    assert!(line.contains("--force-new-cluster") && line.contains("has no"), "{line}");
}

/// Starts node 1 of the config at `path`, waits until it has opened its
/// state in `data` (its last-run record appears), and kills it.
fn killed_once_started(path: &Path, data: &Path) {
    let mut first = Command::new(env!("CARGO_BIN_EXE_storage-node"))
        .args(["--id", "1", "--config", path.to_str().unwrap()])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..400 {
        if data.join("last-run").exists() {
            break;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(data.join("last-run").exists(), "node 1 opened its state");
}

#[test]
fn a_state_sled_refuses_to_open_stops_the_node_and_stays_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let (config, path) = config_in(dir.path());
    let data = config.node(1).unwrap().data_dir.clone();
    // Node 1 claims its directory, opens its state and is killed.
    killed_once_started(&path, &data);
    let state = data.join("state");

    // Its state becomes a sled database made with another segment size,
    // as a state written by another sled configuration would be.
    std::fs::remove_dir_all(&state).unwrap();
    let foreign = || sled::Config::new().path(&state).segment_size(1 << 20).open().expect("sled opens its own files");
    {
        let db = foreign();
        db.insert(b"kept", b"as it was").unwrap();
        db.flush().unwrap();
    }

    // Killed on this boot, the node opens its state without checking it;
    // its last run named another boot, it checks the state first. Either
    // way sled's refusal stops it, and the check does not take it for
    // damage to move aside.
    for last_run in [None, Some("running 00000000-0000-0000-0000-000000000000\n")] {
        if let Some(text) = last_run {
            std::fs::write(data.join("last-run"), text).unwrap();
        }
        let output = node(&["--id", "1", "--config", path.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2), "a restart would meet the same refusal: {output:?}");
        let line = refusal(&output);
        assert!(line.contains("sled refuses the state") && line.contains("io buffer size"), "{line}");
        assert!(!data.join("state.damaged").exists(), "a refusal is not damage: the state is not moved aside");
    }
    let db = foreign();
    assert_eq!(db.get(b"kept").unwrap().as_deref(), Some(&b"as it was"[..]), "the state is untouched");
}

#[test]
fn a_state_in_a_newer_layout_than_the_build_knows_stops_the_node() {
    // Both ways a node starts: on the boot it was killed on (the state is
    // trusted as it is) and after a reboot (the state is checked first,
    // and is whole, so the check passes it on to the layout's).
    for rebooted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let (config, path) = config_in(dir.path());
        let data = config.node(1).unwrap().data_dir.clone();
        killed_once_started(&path, &data);
        set_layout(&data.join("state"), storage_node::state::layout::NEWEST + 1);
        if rebooted {
            std::fs::write(data.join("last-run"), "running a-boot-before-this-one\n").unwrap();
        }
        let last_run = std::fs::read(data.join("last-run")).unwrap();
        let output = node(&["--id", "1", "--config", path.to_str().unwrap()]);
        assert_eq!(
            output.status.code(),
            Some(2),
            "a restart would meet the same state (rebooted: {rebooted}): {output:?}"
        );
        let line = refusal(&output);
        let newer = storage_node::state::layout::NEWEST + 1;
        assert!(line.contains(&format!("layout {newer}")) && line.contains("newer build"), "{line}");
        assert_eq!(std::fs::read(data.join("last-run")).unwrap(), last_run, "nothing is recorded as a run");
        assert!(!data.join("state.damaged").exists(), "the state was whole: nothing is moved aside");
    }
}

/// Switches the closed state in `state` to `layout` as a newer build would
/// leave it: the layout row and the state digest together, so that a
/// start-up check finds the state whole.
fn set_layout(state: &Path, layout: u32) {
    use storage_node::state::keys::{self, RowSum};
    use storage_node::{Row, RowKey};

    let digest_of = |key: &[u8], value: &[u8]| {
        let mut sum = RowSum::default();
        sum.add(key, value).expect("a stored row decodes");
        sum.digest()
    };
    let db = sled::open(state).expect("the state opens");
    let tree = db.open_tree("shop").unwrap();
    let key = keys::row_key(&RowKey::Layout);
    let value = storage_node::codec::encode(&Row { version: 1, value: layout.to_be_bytes().to_vec() });
    let mut digest = tree.get(keys::DIGEST).unwrap().map_or(0, |d| u64::from_be_bytes(d.as_ref().try_into().unwrap()));
    if let Some(old) = tree.insert(&key, value.clone()).unwrap() {
        digest = digest.wrapping_sub(digest_of(&key, &old));
    }
    digest = digest.wrapping_add(digest_of(&key, &value));
    tree.insert(keys::DIGEST, &digest.to_be_bytes()).unwrap();
    db.flush().unwrap();
}
