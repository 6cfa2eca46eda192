//! Asking every node for its status, and telling from the answers who leads
//! each shard.
//!
//! A probe sends `Status` to every configured node at once, each call with its
//! own short timeout, so a dead node costs one timeout in total rather than
//! one per node, and the answers are a snapshot taken at about the same
//! moment. Calls go over the channels of one [`ClusterClient`], so repeated
//! probes (`up` polls until the cluster is ready) reuse their connections.
//!
//! Leadership is read off the answers: a shard has a leader when a reachable
//! member says it is the leader. Two may say so for a moment, when a deposed
//! leader has not yet heard of the newer term; the higher term wins.

use std::fmt;
use std::time::Duration;

use raftshop_proto::store::NodeStatus;
use storage_node::client::ClusterClient;
use storage_node::config::{ClusterConfig, NodeConfig};
use storage_node::{NodeId, Shard};
use tracing::debug;

/// The `role` a node reports while it leads its shard.
const LEADER_ROLE: &str = "leader";

/// One node's answer to `Status`, or why there was none.
#[derive(Debug, Clone)]
pub struct NodeProbe {
    /// The node as the config describes it.
    pub node: NodeConfig,
    /// Its own view of its shard, or the reason it did not answer in time.
    pub status: Result<NodeStatus, String>,
}

/// Asks every node of `config` for its status, in parallel, each allowed
/// `timeout`; the answers come back in the config's node order.
pub async fn probe_all(config: &ClusterConfig, client: &ClusterClient, timeout: Duration) -> Vec<NodeProbe> {
    let calls = config.nodes.iter().map(|node| async move {
        let status = client.shard(node.shard).status(node.id, timeout).await.map_err(|status| {
            debug!(node = node.id, code = ?status.code(), message = status.message(), "status probe failed");
            status.message().to_owned()
        });
        NodeProbe { node: node.clone(), status }
    });
    futures::future::join_all(calls).await
}

/// Who leads a shard, according to its members' answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// A member says it leads.
    Leader {
        /// The leading member.
        node: NodeId,
        /// The term it leads in.
        term: u64,
    },
    /// No reachable member says it leads.
    Leaderless {
        /// Members that answered.
        reachable: usize,
        /// Members the config lists.
        members: usize,
    },
}

impl Leadership {
    /// True when the shard has a leader.
    pub fn has_leader(&self) -> bool {
        matches!(self, Leadership::Leader { .. })
    }
}

/// The leadership of `shard` as `probes` show it.
pub fn leadership(probes: &[NodeProbe], shard: Shard) -> Leadership {
    let members: Vec<&NodeProbe> = probes.iter().filter(|p| p.node.shard == shard).collect();
    let answers = members.iter().filter_map(|p| p.status.as_ref().ok());
    let leader = answers.clone().filter(|s| s.role == LEADER_ROLE).max_by_key(|s| s.term);
    match leader {
        Some(status) => Leadership::Leader { node: status.node_id, term: status.term },
        None => Leadership::Leaderless { reachable: answers.count(), members: members.len() },
    }
}

/// One shard's leadership, as printed by `status` and `up`.
#[derive(Debug, Clone, Copy)]
pub struct ShardLeadership {
    /// The shard.
    pub shard: Shard,
    /// Who leads it.
    pub leadership: Leadership,
}

impl ShardLeadership {
    /// Every shard's leadership as `probes` show it, in [`Shard::ALL`] order.
    pub fn all(probes: &[NodeProbe]) -> Vec<ShardLeadership> {
        Shard::ALL.into_iter().map(|shard| ShardLeadership { shard, leadership: leadership(probes, shard) }).collect()
    }
}

impl fmt::Display for ShardLeadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.leadership {
            Leadership::Leader { node, term } => write!(f, "shard {}: leader node {node} (term {term})", self.shard),
            Leadership::Leaderless { reachable, members } => {
                write!(f, "shard {}: no leader ({reachable} of {members} nodes reachable)", self.shard)
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A probe of node `id` (nodes 1-3 in shard even, 4-6 in odd, as in the
    /// default config) that answered with `role` and `term`, or did not.
    pub(crate) fn probe(id: NodeId, answer: Option<(&str, u64)>) -> NodeProbe {
        let shard = if id <= 3 { Shard::Even } else { Shard::Odd };
        let node = NodeConfig {
            id,
            shard,
            addr: format!("127.0.0.1:{}", 50100 + id).parse().expect("address"),
            advertise: None,
            data_dir: format!("data/node-{id}").into(),
            metrics: None,
            join: false,
        };
        let status = match answer {
            Some((role, term)) => Ok(NodeStatus {
                node_id: id,
                shard: shard.name().into(),
                role: role.into(),
                term,
                ..NodeStatus::default()
            }),
            None => Err("connection refused".into()),
        };
        NodeProbe { node, status }
    }

    #[test]
    fn a_member_that_says_it_leads_leads() {
        let probes = [probe(1, Some(("follower", 3))), probe(2, Some(("leader", 3))), probe(3, None)];
        assert_eq!(leadership(&probes, Shard::Even), Leadership::Leader { node: 2, term: 3 });
    }

    #[test]
    fn of_two_self_declared_leaders_the_newer_term_wins() {
        let probes = [probe(4, Some(("leader", 2))), probe(5, Some(("leader", 3))), probe(6, Some(("follower", 3)))];
        assert_eq!(leadership(&probes, Shard::Odd), Leadership::Leader { node: 5, term: 3 });
    }

    #[test]
    fn without_a_leader_the_reachable_members_are_counted() {
        let probes = [probe(1, Some(("candidate", 4))), probe(2, None), probe(3, None), probe(4, Some(("leader", 1)))];
        assert_eq!(leadership(&probes, Shard::Even), Leadership::Leaderless { reachable: 1, members: 3 });
    }

    #[test]
    fn shard_lines_name_the_leader_or_say_there_is_none() {
        let probes = [probe(2, Some(("leader", 3))), probe(4, None), probe(5, None), probe(6, Some(("follower", 2)))];
        let lines: Vec<String> = ShardLeadership::all(&probes).iter().map(ToString::to_string).collect();
        assert_eq!(lines, ["shard even: leader node 2 (term 3)", "shard odd: no leader (1 of 3 nodes reachable)"]);
    }
}
