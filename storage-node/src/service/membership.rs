//! Changing a shard's members while it serves: the `Membership` and
//! `ChangeMembership` calls of the `Store` service.
//!
//! The membership lives in the replicated log (openraft's membership
//! entries); `cluster.toml` only gives the first one. A new node joins as a
//! learner (it receives the log, or a snapshot when it is far behind, and
//! does not vote), is promoted to voter once it has caught up, and a member
//! leaves by being removed. Each change goes through the leader and is
//! answered once committed; openraft moves through a joint configuration
//! when voters change, so the shard keeps a quorum of both old and new
//! voters throughout. `raftshop member` drives these calls.

use std::collections::{BTreeMap, BTreeSet};

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use raftshop_proto::store::{membership_change, membership_reply, Member, MembershipChange, MembershipReply};
use raftshop_proto::store::{MembershipView, NotLeader};
use tonic::Status;

use crate::types::{NodeId, Raft};

/// Answers `reply` if this node leads, else the redirect `not_leader` makes
/// for the leader it knows of.
pub fn view(raft: &Raft, not_leader: impl Fn(Option<NodeId>) -> NotLeader) -> MembershipReply {
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(metrics.id) {
        return MembershipReply {
            outcome: Some(membership_reply::Outcome::NotLeader(not_leader(metrics.current_leader))),
        };
    }
    let config = metrics.membership_config.membership();
    let voters: BTreeSet<NodeId> = config.voter_ids().collect();
    let last = metrics.last_log_index.unwrap_or_default();
    let matched: BTreeMap<NodeId, Option<u64>> =
        metrics.replication.iter().flatten().map(|(id, log_id)| (*id, log_id.as_ref().map(|l| l.index))).collect();
    let members = config
        .nodes()
        .map(|(id, node)| Member {
            node_id: *id,
            addr: node.addr.clone(),
            voter: voters.contains(id),
            matched_index: if *id == metrics.id { Some(last) } else { matched.get(id).copied().flatten() },
        })
        .collect();
    let view = MembershipView {
        leader_id: metrics.id,
        term: metrics.current_term,
        last_log_index: last,
        members,
        changing: config.get_joint_config().len() > 1,
    };
    MembershipReply { outcome: Some(membership_reply::Outcome::Membership(view)) }
}

/// Carries out `change` on this node, which must lead; answers the
/// membership after it, a redirect, or a refusal with a sentence.
pub async fn change(
    raft: &Raft,
    change: MembershipChange,
    not_leader: impl Fn(Option<NodeId>) -> NotLeader,
) -> Result<MembershipReply, Status> {
    let change = change.change.ok_or_else(|| Status::invalid_argument("the request names no change"))?;
    let result = match change {
        membership_change::Change::AddLearner(add) => {
            crate::config::check_advertised(&add.addr).map_err(|why| {
                Status::invalid_argument(format!("node {}'s address {:?} is unusable: {why}", add.node_id, add.addr))
            })?;
            if add.node_id == 0 {
                return Err(Status::invalid_argument("node id 0 is reserved; ids start at 1"));
            }
            // Not blocking: a far-behind learner may need minutes; the
            // caller watches its progress in `Membership`.
            raft.add_learner(add.node_id, BasicNode::new(add.addr), false).await
        }
        membership_change::Change::Promote(ids) => {
            let ids = node_ids(ids.node_ids)?;
            raft.change_membership(ChangeMembers::AddVoterIds(ids), false).await
        }
        membership_change::Change::TransferLeaderTo(to) => return transfer(raft, to, not_leader).await,
        membership_change::Change::Remove(ids) => {
            let ids = node_ids(ids.node_ids)?;
            let voters: BTreeSet<NodeId> = raft.metrics().borrow_watched().membership_config.voter_ids().collect();
            let (leaving_voters, learners): (BTreeSet<NodeId>, BTreeSet<NodeId>) =
                ids.into_iter().partition(|id| voters.contains(id));
            if !leaving_voters.is_empty() {
                // `retain: false`: a removed voter leaves the shard, not
                // just the vote.
                let written = raft.change_membership(ChangeMembers::RemoveVoters(leaving_voters), false).await;
                let written = written.map_err(refusal)?;
                if learners.is_empty() {
                    shows_membership_of(raft, written.log_id, TRANSFER_WAIT).await;
                    return Ok(view(raft, not_leader));
                }
            }
            raft.change_membership(ChangeMembers::RemoveNodes(learners), false).await
        }
    };
    match result {
        Ok(written) => {
            shows_membership_of(raft, written.log_id, TRANSFER_WAIT).await;
            Ok(view(raft, not_leader))
        }
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
            Ok(MembershipReply { outcome: Some(membership_reply::Outcome::NotLeader(not_leader(forward.leader_id))) })
        }
        Err(error) => Err(refusal(error)),
    }
}

/// Hands leadership to voter `to` and waits (a few seconds at most) until
/// a leader is known again; answers the view of whichever node this is then
/// (a redirect to the new leader, normally).
async fn transfer(
    raft: &Raft,
    to: NodeId,
    not_leader: impl Fn(Option<NodeId>) -> NotLeader,
) -> Result<MembershipReply, Status> {
    let metrics = raft.metrics().borrow_watched().clone();
    if metrics.current_leader != Some(metrics.id) {
        return Ok(view(raft, not_leader));
    }
    if !metrics.membership_config.voter_ids().any(|id| id == to) {
        return Err(Status::failed_precondition(format!("node {to} is not a voter of this shard; it cannot lead")));
    }
    if to == metrics.id {
        return Ok(view(raft, not_leader));
    }
    raft.trigger().transfer_leader(to).await.map_err(|e| Status::unavailable(format!("cannot hand over: {e}")))?;
    another_leader(raft, metrics.id, TRANSFER_WAIT).await;
    Ok(view(raft, not_leader))
}

/// Waits (at most `timeout`) until `raft` knows a leader other than `me`;
/// that leader, or `None` if none came in time or the core stopped.
pub async fn another_leader(raft: &Raft, me: NodeId, timeout: std::time::Duration) -> Option<NodeId> {
    let other = |leader: Option<NodeId>| leader.filter(|leader| *leader != me);
    let found = raft.wait(Some(timeout)).metrics(|m| other(m.current_leader).is_some(), "another leader").await;
    found.ok().and_then(|metrics| other(metrics.current_leader))
}

/// Waits (at most `timeout`) until `raft`'s metrics show the membership
/// written at `log_id` or a later one: openraft may answer the change
/// before its metrics catch up, and the view answered must include it.
async fn shows_membership_of(raft: &Raft, log_id: crate::types::LogId, timeout: std::time::Duration) {
    let shows =
        |m: &openraft::RaftMetrics<crate::types::TypeConfig>| m.membership_config.log_id().as_ref() >= Some(&log_id);
    if raft.wait(Some(timeout)).metrics(shows, "the new membership").await.is_err() {
        tracing::warn!(%log_id, "the metrics did not show the new membership in time");
    }
}

/// How long a transfer waits for the new leader.
const TRANSFER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A failed change as a status: the caller's mistake (an unknown learner,
/// an empty shard, a change under way) or the node's trouble.
fn refusal(error: RaftError<crate::types::TypeConfig, ClientWriteError<crate::types::TypeConfig>>) -> Status {
    match error {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!("the change was refused: {e}"))
        }
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership moved during the change; ask the new leader")
        }
        other => Status::unavailable(format!("the change did not complete: {other}")),
    }
}

/// The ids of a request, at least one, none zero.
fn node_ids(ids: Vec<u64>) -> Result<BTreeSet<NodeId>, Status> {
    if ids.is_empty() {
        return Err(Status::invalid_argument("the request names no node"));
    }
    if ids.contains(&0) {
        return Err(Status::invalid_argument("node id 0 is reserved; ids start at 1"));
    }
    Ok(ids.into_iter().collect())
}
