//! `storage-node --force-new-cluster`: recovery from a lost majority, as
//! etcd's flag of that name.
//!
//! When two of a shard's three members are gone for good (dead disks), the
//! survivor cannot commit anything: no quorum. This turns it into a shard
//! of one. Before Raft starts, it appends to its own log a membership entry
//! naming only itself, at a term above any it has seen, and votes for
//! itself at that term. openraft then finds itself the only voter, elects
//! itself at once and commits its whole log, the new membership included.
//! New members are then added with `raftshop member add` and `promote`.
//!
//! Dangers, as with etcd: every entry in the survivor's log becomes
//! committed, also one the old majority never committed; one the old
//! majority committed and the survivor never received is lost for good. Run
//! it on the member with the longest log, only when the others cannot come
//! back, and once: remove the flag after the start that used it (a second
//! forced start would again drop every member added since).

use std::collections::{BTreeMap, BTreeSet};
use std::io;

use openraft::alias::{CommittedLeaderIdOf, LogIdOf};
use openraft::storage::{IOFlushed, RaftLogReader, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use openraft::{BasicNode, Membership};

use crate::config::NodeConfig;
use crate::raft::log_store::LogStore;
use crate::types::{Entry, EntryPayload, TypeConfig, Vote};

/// Appends the membership of `me` alone to `log` at a new term and votes for
/// `me` in it; returns that entry's (term, index).
pub async fn make_sole_member(log: &mut LogStore, me: &NodeConfig) -> io::Result<(u64, u64)> {
    let last = log.get_log_state().await?.last_log_id;
    let vote = log.read_vote().await?;
    let seen = [vote.map(|v| v.leader_id().term()), last.as_ref().map(|l| l.leader_id.term())];
    let term = seen.into_iter().flatten().max().unwrap_or(0) + 1;
    let index = last.as_ref().map_or(0, |l| l.index + 1);
    let voters = BTreeSet::from([me.id]);
    let nodes = BTreeMap::from([(me.id, BasicNode::new(me.reach()))]);
    let membership = Membership::new(vec![voters], nodes).map_err(io::Error::other)?;
    log.save_vote(&Vote::new_committed(term, me.id)).await?;
    let leader = CommittedLeaderIdOf::<TypeConfig>::new(term, me.id);
    let entry =
        Entry { log_id: LogIdOf::<TypeConfig>::new(leader, index), payload: EntryPayload::Membership(membership) };
    let (tx, rx) = TypeConfig::oneshot();
    log.append([entry], IOFlushed::signal(tx)).await?;
    rx.await.map_err(|_| io::Error::other("the log dropped the flush callback"))??;
    Ok((term, index))
}
