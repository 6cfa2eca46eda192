//! What every storage node says about itself, one snapshot at a time.
//!
//! [`observe`] asks every member of both shards for its `Status` at once,
//! each with [`STATUS_TIMEOUT`], so a dead node costs one timeout in total
//! and the answers describe about the same moment. [`ClusterView::from_answers`]
//! turns the answers into what the console shows, with no I/O: per shard,
//! who leads (the member that says it leads, the highest term winning while
//! a deposed leader has not yet heard of the newer one) and how far each
//! member's log is behind the leader's.

use std::net::SocketAddr;
use std::time::Duration;

use raftshop_proto::store::NodeStatus;
use serde::Serialize;
use storage_node::client::ClusterClient;
use storage_node::config::ClusterConfig;
use storage_node::{NodeId, Shard};

/// How long each node has to answer before it counts as not answering.
pub const STATUS_TIMEOUT: Duration = Duration::from_millis(800);

/// The role a node reports while it leads its shard.
const LEADER_ROLE: &str = "leader";

/// Both shards as their members described themselves.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterView {
    /// When the answers were gathered, in ms since the Unix epoch.
    pub observed_at_ms: u64,
    /// Each shard, in [`Shard::ALL`] order.
    pub shards: Vec<ShardView>,
}

/// One shard: its leader, if a member says it leads, and every member.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardView {
    /// The shard.
    pub shard: Shard,
    /// The member that says it leads (the highest term if two do).
    pub leader: Option<NodeId>,
    /// The leader's term.
    pub term: Option<u64>,
    /// Every member, ordered by id.
    pub members: Vec<MemberView>,
}

/// One member, as it answered `Status` (every field `None` if it did not).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberView {
    /// The node's id.
    pub id: NodeId,
    /// Where it serves Raft and `Store`.
    pub address: SocketAddr,
    /// Whether it answered within [`STATUS_TIMEOUT`].
    pub answered: bool,
    /// Why it did not answer.
    pub error: Option<String>,
    /// `leader`, `follower`, `candidate` or `learner`.
    pub role: Option<String>,
    /// Its current term.
    pub term: Option<u64>,
    /// The leader it knows of.
    pub leader_id: Option<NodeId>,
    /// Index of the last entry in its log.
    pub last_log_index: Option<u64>,
    /// Highest index it knows committed.
    pub committed_index: Option<u64>,
    /// Highest index applied to its state machine.
    pub applied_index: Option<u64>,
    /// Last index in its snapshot.
    pub snapshot_index: Option<u64>,
    /// Entries the leader's log has beyond this member's, when both answered.
    pub lag: Option<u64>,
}

/// One member of the config and its answer to `Status`, or why none came.
pub type Answer = (NodeId, SocketAddr, Shard, Result<NodeStatus, String>);

/// Asks every node of `config` for its status, in parallel.
pub async fn observe(config: &ClusterConfig, cluster: &ClusterClient) -> ClusterView {
    let calls = config.nodes.iter().map(|node| async move {
        let answer = cluster.shard(node.shard).status(node.id, STATUS_TIMEOUT).await;
        (node.id, node.addr, node.shard, answer.map_err(|status| reason(&status)))
    });
    let answers = futures::future::join_all(calls).await;
    ClusterView::from_answers(super::now_ms(), answers)
}

/// Why a call failed: the status's message and its deepest cause (tonic's
/// "tcp connect error" has "Connection refused" behind it).
fn reason(status: &tonic::Status) -> String {
    let mut deepest = None;
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        deepest = Some(error.to_string());
        cause = error.source();
    }
    match deepest {
        Some(cause) if !status.message().contains(&cause) => format!("{}: {cause}", status.message()),
        _ => status.message().to_owned(),
    }
}

impl ClusterView {
    /// The view of `answers` gathered at `observed_at_ms`.
    pub fn from_answers(observed_at_ms: u64, answers: Vec<Answer>) -> Self {
        let shards = Shard::ALL
            .into_iter()
            .map(|shard| {
                let mut members: Vec<&Answer> = answers.iter().filter(|a| a.2 == shard).collect();
                members.sort_by_key(|a| a.0);
                ShardView::from_answers(shard, &members)
            })
            .collect();
        ClusterView { observed_at_ms, shards }
    }

    /// The view of `shard`.
    pub fn shard(&self, shard: Shard) -> Option<&ShardView> {
        self.shards.iter().find(|s| s.shard == shard)
    }
}

impl ShardView {
    fn from_answers(shard: Shard, members: &[&Answer]) -> Self {
        let statuses = members.iter().filter_map(|a| a.3.as_ref().ok());
        let leader = statuses.filter(|s| s.role == LEADER_ROLE).max_by_key(|s| s.term);
        let leader_log = leader.map(|s| s.last_log_index);
        let members = members.iter().map(|answer| MemberView::new(answer, leader_log)).collect();
        ShardView { shard, leader: leader.map(|s| s.node_id), term: leader.map(|s| s.term), members }
    }
}

impl MemberView {
    fn new((id, address, _, answer): &Answer, leader_log: Option<u64>) -> Self {
        let status = answer.as_ref().ok();
        let field = |read: fn(&NodeStatus) -> u64| status.map(read);
        MemberView {
            id: *id,
            address: *address,
            answered: status.is_some(),
            error: answer.as_ref().err().cloned(),
            role: status.map(|s| s.role.clone()),
            term: field(|s| s.term),
            leader_id: status.and_then(|s| s.leader_id),
            last_log_index: field(|s| s.last_log_index),
            committed_index: field(|s| s.committed_index),
            applied_index: field(|s| s.applied_index),
            snapshot_index: field(|s| s.snapshot_index),
            lag: leader_log.zip(status).map(|(leader, s)| leader.saturating_sub(s.last_log_index)),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Node `id` (1-3 even, 4-6 odd) answering as `role` in `term` with
    /// its last log at `last_log`, or not answering.
    pub(crate) fn answer(id: NodeId, reply: Option<(&str, u64, u64)>) -> Answer {
        let shard = if id <= 3 { Shard::Even } else { Shard::Odd };
        let address = format!("127.0.0.1:{}", 50100 + id).parse().expect("an address");
        let status = match reply {
            Some((role, term, last_log)) => Ok(NodeStatus {
                node_id: id,
                shard: shard.name().into(),
                role: role.into(),
                term,
                last_log_index: last_log,
                ..NodeStatus::default()
            }),
            None => Err("connection refused".into()),
        };
        (id, address, shard, status)
    }

    #[test]
    fn the_leader_and_each_members_lag_come_from_the_answers() {
        let view = ClusterView::from_answers(
            7,
            vec![
                answer(2, Some(("leader", 3, 100))),
                answer(1, Some(("follower", 3, 97))),
                answer(3, None),
                answer(4, Some(("candidate", 5, 40))),
                answer(5, Some(("follower", 4, 40))),
                answer(6, Some(("follower", 4, 41))),
            ],
        );
        let even = view.shard(Shard::Even).expect("even");
        assert_eq!((even.leader, even.term), (Some(2), Some(3)));
        let ids: Vec<NodeId> = even.members.iter().map(|m| m.id).collect();
        assert_eq!(ids, [1, 2, 3], "members ordered by id");
        let lags: Vec<Option<u64>> = even.members.iter().map(|m| m.lag).collect();
        assert_eq!(lags, [Some(3), Some(0), None]);
        assert!(!even.members[2].answered && even.members[2].error.as_deref() == Some("connection refused"));
        let odd = view.shard(Shard::Odd).expect("odd");
        assert_eq!((odd.leader, odd.term), (None, None), "no member says it leads");
        assert!(odd.members.iter().all(|m| m.lag.is_none()), "no lag without a leader");
    }

    #[test]
    fn of_two_members_that_say_they_lead_the_higher_term_wins() {
        let view = ClusterView::from_answers(
            0,
            vec![answer(4, Some(("leader", 2, 10))), answer(5, Some(("leader", 3, 11))), answer(6, None)],
        );
        let odd = view.shard(Shard::Odd).expect("odd");
        assert_eq!((odd.leader, odd.term), (Some(5), Some(3)));
    }

    #[test]
    fn the_json_names_every_field_the_page_reads() {
        let view = ClusterView::from_answers(1, vec![answer(1, Some(("leader", 1, 5))), answer(2, None)]);
        let json = serde_json::to_value(&view).expect("serializes");
        let member = &json["shards"][0]["members"][0];
        assert_eq!(json["shards"][0]["shard"], "even");
        assert_eq!(json["shards"][0]["leader"], 1);
        for field in ["id", "address", "answered", "role", "term", "leader_id", "last_log_index", "committed_index"] {
            assert!(member.get(field).is_some(), "{field} in {member}");
        }
        for field in ["applied_index", "snapshot_index", "lag", "error"] {
            assert!(member.get(field).is_some(), "{field} in {member}");
        }
        assert_eq!(member["address"], "127.0.0.1:50101");
        assert_eq!(json["shards"][0]["members"][1]["answered"], false);
    }
}
