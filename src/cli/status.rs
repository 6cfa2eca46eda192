//! `raftshop status`: how every node of the cluster is, at a glance.
//!
//! Every node is asked at once for its Raft status (see
//! [`probe`](super::probe)) and, meanwhile, every node and both portals for
//! their `grpc.health.v1` answer (see [`health`](super::health)); a process
//! that does not answer within [`STATUS_TIMEOUT`] is shown as `unreachable`.
//! The output is one table row per node, grouped by shard, one line per
//! shard, then one row per portal:
//!
//! ```text
//! config: cluster.toml
//! node  shard  address          role         health       term  leader  last log  applied  snapshot  digest
//!    1  even   127.0.0.1:50101  follower     SERVING         3       2      1042     1042         0  9f3c0e5a71d2b846
//!    2  even   127.0.0.1:50102  leader       SERVING         3       2      1042     1042         0  9f3c0e5a71d2b846
//!    3  even   127.0.0.1:50103  unreachable  unreachable     -       -         -        -         -  -
//!    4  odd    127.0.0.1:50104  leader       SERVING         2       4       880      880         0  04be11d9c3a8f270
//! ...
//! shard even: leader node 2 (term 3)
//! shard odd: leader node 4 (term 2)
//! portal        address          health
//! admin-portal  127.0.0.1:55004  SERVING
//! order-portal  127.0.0.1:55005  NOT_SERVING
//! ```
//!
//! `digest` is the state digest the node keeps at its `applied` index,
//! updated entry by entry (`-` before its first entry): members of a shard
//! that applied the same entries show the same one, so on a quiet shard a
//! member that shows another applied other entries than its peers. Rows
//! that sled lost underneath a digest that is still right are found by
//! `storage-node --verify-state` (docs/operations.md, "Checking replicas
//! after a power cut").
//!
//! A node is `NOT_SERVING` while its Raft core is down or it is stopping; a
//! portal while a shard it needs has no reachable leader. The exit code is
//! the verdict, for scripts: 0 when both shards have a leader, 1 otherwise
//! (the portals are optional, so their health does not count).
//!
//! `--watch` redraws the report every second (clearing the terminal first;
//! into a pipe, reports follow each other) until Ctrl-C.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;

use super::args::StatusArgs;
use super::health::{self, Health};
use super::probe::{probe_all, Leadership, NodeProbe, ShardLeadership};
use super::table::{self, Align, Column};

/// How long each node has to answer before it is shown as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the table shows about a node that did not answer.
const UNREACHABLE: &str = "unreachable";

/// Stands for a value that is unknown or absent.
const NONE: &str = "-";

/// The table's columns, in order.
const COLUMNS: [Column; 11] = [
    Column { title: "node", align: Align::Right },
    Column { title: "shard", align: Align::Left },
    Column { title: "address", align: Align::Left },
    Column { title: "role", align: Align::Left },
    Column { title: "health", align: Align::Left },
    Column { title: "term", align: Align::Right },
    Column { title: "leader", align: Align::Right },
    Column { title: "last log", align: Align::Right },
    Column { title: "applied", align: Align::Right },
    Column { title: "snapshot", align: Align::Right },
    Column { title: "digest", align: Align::Left },
];

/// The portals' table's columns.
const PORTAL_COLUMNS: [Column; 3] = [
    Column { title: "portal", align: Align::Left },
    Column { title: "address", align: Align::Left },
    Column { title: "health", align: Align::Left },
];

/// Runs `raftshop status`; with `--watch`, again every [`WATCH_INTERVAL`]
/// until Ctrl-C, the exit code then being the last report's.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref())?;
    let client = ClusterClient::new(&config);
    if !args.watch {
        let (text, healthy) = report(&config, &origin, &client).await;
        print!("{text}");
        return Ok(verdict(healthy));
    }
    let terminal = std::io::stdout().is_terminal();
    let mut stop = std::pin::pin!(tokio::signal::ctrl_c());
    loop {
        let (text, healthy) = report(&config, &origin, &client).await;
        if terminal {
            // Clear the screen and go home, so the table redraws in place.
            print!("\x1b[2J\x1b[H");
        }
        let now = time_of_day();
        println!("{text}every {} s, at {now}; Ctrl-C to stop", WATCH_INTERVAL.as_secs());
        if !terminal {
            println!();
        }
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = &mut stop => return Ok(verdict(healthy)),
            _ = tokio::time::sleep(WATCH_INTERVAL) => {}
        }
    }
}

/// How often `--watch` redraws.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(1);

fn verdict(healthy: bool) -> ExitCode {
    if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The wall-clock time of day, UTC, as `HH:MM:SS`.
fn time_of_day() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{:02}:{:02}:{:02} UTC", secs / 3600 % 24, secs / 60 % 60, secs % 60)
}

/// One report: the node table, the shards' leaders, the portals' table;
/// and whether both shards have a leader.
async fn report(config: &ClusterConfig, origin: &str, client: &ClusterClient) -> (String, bool) {
    let portals = [("admin-portal", config.portals.admin), ("order-portal", config.portals.order)];
    let nodes = config.nodes.iter().map(|node| (storage_node::endpoint::endpoint(node.reach()), true));
    let portal_endpoints =
        portals.iter().map(|(_, addr)| (storage_node::endpoint::portal_endpoint(addr, config, None), false));
    let (probes, mut healths) = tokio::join!(
        probe_all(config, client, STATUS_TIMEOUT),
        health::check_all(nodes.chain(portal_endpoints), STATUS_TIMEOUT),
    );
    let portal_healths = healths.split_off(probes.len());
    let shards = ShardLeadership::all(&probes);
    let mut text = format!("config: {origin}\n");
    text.push_str(&render(&probes, &healths));
    for shard in &shards {
        text.push_str(&format!("{shard}\n"));
        if let Some(line) = membership_line(&probes, shard) {
            text.push_str(&line);
        }
    }
    text.push_str(&render_portals(&portals, &portal_healths));
    (text, shards.iter().all(|s| s.leadership.has_leader()))
}

/// The shard's live membership as its leader reports it (the config gives
/// only the first one), and the layout its state is in
/// (`storage_node::state::layout`):
/// `  members: voters 1, 3, 7; learners 8` and `  state layout: 3`.
fn membership_line(probes: &[NodeProbe], shard: &ShardLeadership) -> Option<String> {
    let Leadership::Leader { node, .. } = shard.leadership else { return None };
    let status = probes.iter().find(|p| p.node.id == node)?.status.as_ref().ok()?;
    let list = |ids: &[u64]| ids.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let learners =
        if status.learners.is_empty() { String::new() } else { format!("; learners {}", list(&status.learners)) };
    let members = list(&status.members);
    Some(format!("  members: voters {members}{learners}\n  state layout: {}\n", status.layout))
}

/// The node table, rows ordered by shard, then node id; `healths[i]` is
/// the health of `probes[i]`'s node.
pub fn render(probes: &[NodeProbe], healths: &[Health]) -> String {
    assert_eq!(probes.len(), healths.len(), "one health per probed node");
    let mut ordered: Vec<(&NodeProbe, &Health)> = probes.iter().zip(healths).collect();
    ordered.sort_by_key(|(p, _)| (p.node.shard, p.node.id));
    let rows: Vec<Vec<String>> = ordered.into_iter().map(|(probe, health)| row(probe, health)).collect();
    table::render(&COLUMNS, &rows)
}

/// The portals' table: name, address, health.
fn render_portals(portals: &[(&str, std::net::SocketAddr)], healths: &[Health]) -> String {
    let rows: Vec<Vec<String>> = portals
        .iter()
        .zip(healths)
        .map(|((name, addr), health)| vec![(*name).to_owned(), addr.to_string(), health.to_string()])
        .collect();
    table::render(&PORTAL_COLUMNS, &rows)
}

/// One node's cells.
fn row(probe: &NodeProbe, health: &Health) -> Vec<String> {
    let node = &probe.node;
    let mut cells = vec![node.id.to_string(), node.shard.to_string(), node.reach()];
    match &probe.status {
        Ok(status) => cells.extend([
            status.role.clone(),
            health.to_string(),
            status.term.to_string(),
            status.leader_id.map_or_else(|| NONE.to_owned(), |id| id.to_string()),
            status.last_log_index.to_string(),
            status.applied_index.to_string(),
            status.snapshot_index.to_string(),
            if status.applied_index == 0 { NONE.to_owned() } else { format!("{:016x}", status.state_digest) },
        ]),
        Err(_) => {
            cells.extend([UNREACHABLE.to_owned(), health.to_string()]);
            cells.extend(std::iter::repeat_n(NONE.to_owned(), COLUMNS.len() - cells.len()));
        }
    }
    cells
}

#[cfg(test)]
mod tests {
    use super::super::probe::tests::probe;
    use super::*;

    #[test]
    fn answers_fill_a_row_and_silence_shows_unreachable() {
        let mut leader = probe(2, Some(("leader", 3)));
        if let Ok(status) = &mut leader.status {
            status.leader_id = Some(2);
            status.last_log_index = 1042;
            status.applied_index = 1041;
            status.snapshot_index = 1000;
            status.state_digest = 0x04be_11d9_c3a8_f270;
        }
        let probes = [probe(3, None), probe(1, Some(("candidate", 4))), leader];
        let healths = [Health::Unreachable("refused".into()), Health::NotServing, Health::Serving];
        let text = render(&probes, &healths);
        let expected = "\
node  shard  address          role         health       term  leader  last log  applied  snapshot  digest
   1  even   127.0.0.1:50101  candidate    NOT_SERVING     4       -         0        0         0  -
   2  even   127.0.0.1:50102  leader       SERVING         3       2      1042     1041      1000  04be11d9c3a8f270
   3  even   127.0.0.1:50103  unreachable  unreachable     -       -         -        -         -  -
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rows_are_grouped_by_shard() {
        let unreachable = || Health::Unreachable(String::new());
        let text =
            render(&[probe(5, None), probe(1, None), probe(4, None)], &[unreachable(), unreachable(), unreachable()]);
        let ids: Vec<&str> = text.lines().skip(1).map(|l| l.split_whitespace().next().unwrap_or("")).collect();
        assert_eq!(ids, ["1", "4", "5"]);
    }

    #[test]
    fn portals_show_their_health() {
        let portals = [
            ("admin-portal", "127.0.0.1:55004".parse().expect("addr")),
            ("order-portal", "127.0.0.1:55005".parse().expect("addr")),
        ];
        let text = render_portals(&portals, &[Health::Serving, Health::Unreachable("refused".into())]);
        let expected = "\
portal        address          health
admin-portal  127.0.0.1:55004  SERVING
order-portal  127.0.0.1:55005  unreachable
";
        assert_eq!(text, expected);
    }
}
