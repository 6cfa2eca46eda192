//! `raftshop status`: how every node of the cluster is, at a glance.
//!
//! Every node is asked at once (see [`probe`](super::probe)); a node that does
//! not answer within [`STATUS_TIMEOUT`] is shown as `unreachable`. The output
//! is one table row per node, grouped by shard, then one line per shard:
//!
//! ```text
//! config: cluster.toml
//! node  shard  address          role         term  leader  last log  applied  snapshot
//!    1  even   127.0.0.1:50101  follower        3       2      1042     1042         0
//!    2  even   127.0.0.1:50102  leader          3       2      1042     1042         0
//!    3  even   127.0.0.1:50103  unreachable     -       -         -        -         -
//!    4  odd    127.0.0.1:50104  leader          2       4       880      880         0
//! ...
//! shard even: leader node 2 (term 3)
//! shard odd: leader node 4 (term 2)
//! ```
//!
//! The exit code is the verdict, for scripts: 0 when both shards have a
//! leader, 1 otherwise.

use std::process::ExitCode;
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;

use super::args::StatusArgs;
use super::probe::{probe_all, NodeProbe, ShardLeadership};
use super::table::{self, Align, Column};

/// How long each node has to answer before it is shown as unreachable.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the table shows about a node that did not answer.
const UNREACHABLE: &str = "unreachable";

/// Stands for a value that is unknown or absent.
const NONE: &str = "-";

/// The table's columns, in order.
const COLUMNS: [Column; 9] = [
    Column { title: "node", align: Align::Right },
    Column { title: "shard", align: Align::Left },
    Column { title: "address", align: Align::Left },
    Column { title: "role", align: Align::Left },
    Column { title: "term", align: Align::Right },
    Column { title: "leader", align: Align::Right },
    Column { title: "last log", align: Align::Right },
    Column { title: "applied", align: Align::Right },
    Column { title: "snapshot", align: Align::Right },
];

/// Runs `raftshop status`.
pub async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let (config, origin) = ClusterConfig::load_or_default(args.config.as_deref())?;
    let client = ClusterClient::new(&config);
    let probes = probe_all(&config, &client, STATUS_TIMEOUT).await;
    let shards = ShardLeadership::all(&probes);
    println!("config: {origin}");
    print!("{}", render(&probes));
    for shard in &shards {
        println!("{shard}");
    }
    let healthy = shards.iter().all(|s| s.leadership.has_leader());
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The node table, rows ordered by shard, then node id.
pub fn render(probes: &[NodeProbe]) -> String {
    let mut ordered: Vec<&NodeProbe> = probes.iter().collect();
    ordered.sort_by_key(|p| (p.node.shard, p.node.id));
    let rows: Vec<Vec<String>> = ordered.into_iter().map(row).collect();
    table::render(&COLUMNS, &rows)
}

/// One node's cells.
fn row(probe: &NodeProbe) -> Vec<String> {
    let node = &probe.node;
    let mut cells = vec![node.id.to_string(), node.shard.to_string(), node.addr.to_string()];
    match &probe.status {
        Ok(status) => cells.extend([
            status.role.clone(),
            status.term.to_string(),
            status.leader_id.map_or_else(|| NONE.to_owned(), |id| id.to_string()),
            status.last_log_index.to_string(),
            status.applied_index.to_string(),
            status.snapshot_index.to_string(),
        ]),
        Err(_) => {
            cells.push(UNREACHABLE.to_owned());
            cells.extend(std::iter::repeat_n(NONE.to_owned(), COLUMNS.len() - 4));
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
        }
        let text = render(&[probe(3, None), probe(1, Some(("candidate", 4))), leader]);
        let expected = "\
node  shard  address          role         term  leader  last log  applied  snapshot
   1  even   127.0.0.1:50101  candidate       4       -         0        0         0
   2  even   127.0.0.1:50102  leader          3       2      1042     1041      1000
   3  even   127.0.0.1:50103  unreachable     -       -         -        -         -
";
        assert_eq!(text, expected);
    }

    #[test]
    fn rows_are_grouped_by_shard() {
        let text = render(&[probe(5, None), probe(1, None), probe(4, None)]);
        let ids: Vec<&str> = text.lines().skip(1).map(|l| l.split_whitespace().next().unwrap_or("")).collect();
        assert_eq!(ids, ["1", "4", "5"]);
    }
}
