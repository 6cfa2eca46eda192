//! `raftshop member`: a shard's live membership, and changing it while it
//! serves (see `storage_node::service::membership`).
//!
//! ```text
//! raftshop member list [--shard even]
//! raftshop member add --shard even --id 7 --addr shop-4:50101   # learner; waits until caught up
//! raftshop member promote --shard even --id 7                   # learner to voter
//! raftshop member remove --shard even --id 2
//! raftshop member transfer-leader --shard even --to 3
//! ```
//!
//! To replace a dead member: start the new node (its `[[node]]` in its
//! cluster.toml with `join = true` and an empty data directory), `add` it,
//! `promote` it, then `remove` the dead one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use raftshop_proto::store::{membership_change::Change, AddLearner, MembershipChange, MembershipView, NodeIds};
use storage_node::client::{ClientError, ClusterClient, ShardClient};
use storage_node::config::ClusterConfig;
use storage_node::{NodeId, Shard};

use super::table::{render, Align, Column};

/// How long one membership call may take.
const CALL_DEADLINE: Duration = Duration::from_secs(20);

/// `raftshop member ...`.
#[derive(Debug, Args)]
pub struct MemberArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: MemberCommand,
    /// The cluster config; defaults to ./cluster.toml, else the built-in one.
    #[arg(long, value_name = "PATH", global = true)]
    pub config: Option<PathBuf>,
}

/// The membership verbs.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// Each member's role and how far it is behind the leader.
    List {
        /// Only this shard (`even` or `odd`); both by default.
        #[arg(long)]
        shard: Option<Shard>,
    },
    /// Add a started node as a learner and wait until it has caught up.
    Add {
        /// The shard it joins.
        #[arg(long)]
        shard: Shard,
        /// Its node id (unused in the shard).
        #[arg(long)]
        id: NodeId,
        /// host:port the members reach it at.
        #[arg(long)]
        addr: String,
        /// Longest wait for it to catch up, in seconds.
        #[arg(long, value_name = "SECS", default_value = "300")]
        wait: u64,
    },
    /// Make learners voters.
    Promote {
        /// The shard.
        #[arg(long)]
        shard: Shard,
        /// A learner to promote (repeat for several).
        #[arg(long = "id", required = true)]
        ids: Vec<NodeId>,
    },
    /// Take members out of the shard.
    Remove {
        /// The shard.
        #[arg(long)]
        shard: Shard,
        /// A member to remove (repeat for several).
        #[arg(long = "id", required = true)]
        ids: Vec<NodeId>,
    },
    /// Hand the shard's leadership to a voter.
    TransferLeader {
        /// The shard.
        #[arg(long)]
        shard: Shard,
        /// The voter to lead.
        #[arg(long)]
        to: NodeId,
    },
}

/// Runs `raftshop member ...`.
pub async fn run(args: MemberArgs) -> anyhow::Result<ExitCode> {
    let (config, _) = ClusterConfig::load_or_default(args.config.as_deref())?;
    let cluster = ClusterClient::new(&config);
    match args.command {
        MemberCommand::List { shard } => {
            let shards = shard.map_or(Shard::ALL.to_vec(), |s| vec![s]);
            for shard in shards {
                print_view(shard, &cluster.shard(shard).membership(CALL_DEADLINE).await?);
            }
        }
        MemberCommand::Add { shard, id, addr, wait } => {
            let client = cluster.shard(shard);
            let change = Change::AddLearner(AddLearner { node_id: id, addr });
            client.change_membership(MembershipChange { change: Some(change) }, CALL_DEADLINE).await?;
            println!("node {id} is a learner of shard {shard}; waiting for it to catch up");
            let view = wait_for_catch_up(client, id, Duration::from_secs(wait)).await?;
            print_view(shard, &view);
            println!("node {id} has caught up; promote it with: raftshop member promote --shard {shard} --id {id}");
        }
        MemberCommand::Promote { shard, ids } => {
            change(&cluster, shard, Change::Promote(NodeIds { node_ids: ids })).await?;
        }
        MemberCommand::Remove { shard, ids } => {
            change(&cluster, shard, Change::Remove(NodeIds { node_ids: ids })).await?;
        }
        MemberCommand::TransferLeader { shard, to } => {
            change(&cluster, shard, Change::TransferLeaderTo(to)).await?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Carries out one change and prints the membership after it, as the
/// leader then sees it.
async fn change(cluster: &ClusterClient, shard: Shard, change: Change) -> Result<(), ClientError> {
    let client = cluster.shard(shard);
    client.change_membership(MembershipChange { change: Some(change) }, CALL_DEADLINE).await?;
    print_view(shard, &client.membership(CALL_DEADLINE).await?);
    Ok(())
}

/// Polls the leader until learner `id` is within a few entries of its log.
async fn wait_for_catch_up(client: &ShardClient, id: NodeId, wait: Duration) -> anyhow::Result<MembershipView> {
    let started = Instant::now();
    let mut reported = Instant::now();
    loop {
        let view = client.membership(CALL_DEADLINE).await?;
        let matched = view.members.iter().find(|m| m.node_id == id).and_then(|m| m.matched_index);
        if matched.is_some_and(|m| m + CAUGHT_UP_WITHIN >= view.last_log_index) {
            return Ok(view);
        }
        if started.elapsed() > wait {
            anyhow::bail!(
                "node {id} has not caught up after {}s (at {} of {}); is it running and reachable?",
                wait.as_secs(),
                matched.map_or("nothing".into(), |m| m.to_string()),
                view.last_log_index
            );
        }
        if reported.elapsed() > Duration::from_secs(5) {
            println!("  node {id} at {} of {}", matched.map_or("-".into(), |m| m.to_string()), view.last_log_index);
            reported = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A learner this close to the leader's last index has caught up.
const CAUGHT_UP_WITHIN: u64 = 10;

fn print_view(shard: Shard, view: &MembershipView) {
    let change = if view.changing { ", a change under way" } else { "" };
    println!(
        "shard {shard}: leader node {}, term {}, last index {}{change}",
        view.leader_id, view.term, view.last_log_index
    );
    let columns = [
        Column { title: "node", align: Align::Right },
        Column { title: "address", align: Align::Left },
        Column { title: "role", align: Align::Left },
        Column { title: "matched", align: Align::Right },
        Column { title: "behind", align: Align::Right },
    ];
    let rows: Vec<Vec<String>> = view.members.iter().map(|m| member_row(view, m)).collect();
    print!("{}", render(&columns, &rows));
}

fn member_row(view: &MembershipView, member: &raftshop_proto::store::Member) -> Vec<String> {
    let role = match (member.node_id == view.leader_id, member.voter) {
        (true, _) => "leader",
        (false, true) => "voter",
        (false, false) => "learner",
    };
    let (matched, behind) = match member.matched_index {
        Some(m) => (m.to_string(), view.last_log_index.saturating_sub(m).to_string()),
        None => ("-".into(), "-".into()),
    };
    vec![member.node_id.to_string(), member.addr.clone(), role.into(), matched, behind]
}

#[cfg(test)]
mod tests {
    use raftshop_proto::store::Member;

    use super::*;

    #[test]
    fn a_row_names_the_role_and_the_distance_to_the_leader() {
        let view = MembershipView { leader_id: 1, term: 3, last_log_index: 50, members: vec![], changing: false };
        let member = |node_id, voter, matched_index| Member { node_id, addr: "h:1".into(), voter, matched_index };
        assert_eq!(member_row(&view, &member(1, true, Some(50))), ["1", "h:1", "leader", "50", "0"]);
        assert_eq!(member_row(&view, &member(2, true, Some(48))), ["2", "h:1", "voter", "48", "2"]);
        assert_eq!(member_row(&view, &member(7, false, None)), ["7", "h:1", "learner", "-", "-"]);
    }
}
