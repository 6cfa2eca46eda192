//! The faults the chaos suite injects, one at a time, from a seeded random
//! schedule, each followed by a health wait.
//!
//! Every kind hits a real process or a real link: SIGKILL (a crash),
//! SIGSTOP/SIGCONT (a frozen leader that wakes up believing it still
//! leads), and cuts in the link proxies between the members of a shard (a
//! partition). The schedule cycles through all kinds in a shuffled order,
//! so a run of N faults has every kind about N / kinds times.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};
use storage_node::{NodeId, Shard};

use crate::local_cluster::{LocalCluster, PortalKind};

/// How long set-up and health waits may take.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum FaultKind {
    /// SIGKILL a shard's leader, restart it after a while.
    KillLeader,
    /// SIGKILL a follower, restart it after a while.
    KillFollower,
    /// SIGKILL two of a shard's three nodes: writes must stop; restart one,
    /// writes resume; then the other.
    KillMajority,
    /// SIGSTOP the leader for longer than the election timeout, then SIGCONT.
    PauseLeader,
    /// Cut every link between the leader and its shard, then heal.
    IsolateLeader,
    /// Cut a follower off (a minority of one), then heal.
    IsolateFollower,
    /// SIGKILL both portals while orders (cross-shard transactions) and
    /// price changes are being made, and restart them.
    KillPortal,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 7] = [
        FaultKind::KillLeader,
        FaultKind::KillFollower,
        FaultKind::KillMajority,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::IsolateFollower,
        FaultKind::KillPortal,
    ];

    /// True if the fault is a leader kill, after which the unavailability
    /// gap (until the shard acknowledges a write again) is measured.
    pub fn kills_leader(self) -> bool {
        self == FaultKind::KillLeader
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            FaultKind::KillLeader => "kill-leader",
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillMajority => "kill-majority",
            FaultKind::PauseLeader => "pause-leader",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::IsolateFollower => "isolate-follower",
            FaultKind::KillPortal => "kill-portal",
        };
        f.write_str(name)
    }
}

/// One injected fault, as it goes into the report and the saved history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultEvent {
    /// What was done.
    pub kind: FaultKind,
    /// The shard hit (the odd shard for a portal kill, by convention).
    pub shard: Shard,
    /// The nodes hit.
    pub nodes: Vec<NodeId>,
    /// When it started, on the history's clock (ns).
    pub started_at: u64,
    /// When everything was healed again.
    pub healed_at: u64,
}

/// A shuffled schedule of `count` faults covering every kind.
pub fn schedule(count: usize, kinds: &[FaultKind], rng: &mut StdRng) -> Vec<(FaultKind, Shard)> {
    let mut plan = Vec::with_capacity(count);
    while plan.len() < count && !kinds.is_empty() {
        let mut round = kinds.to_vec();
        round.shuffle(rng);
        for kind in round.into_iter().take(count - plan.len()) {
            let shard = if rng.gen_bool(0.5) { Shard::Even } else { Shard::Odd };
            plan.push((kind, shard));
        }
    }
    plan
}

/// Injects one fault and heals it; `now` reads the history's clock.
pub async fn inject(
    cluster: &mut LocalCluster,
    kind: FaultKind,
    shard: Shard,
    rng: &mut StdRng,
    now: &dyn Fn() -> u64,
) -> Result<FaultEvent, String> {
    let leader = cluster.wait_for_leader(shard, HEALTH_TIMEOUT).await?;
    let followers: Vec<NodeId> = cluster.members(shard).into_iter().filter(|id| *id != leader).collect();
    let follower = followers[rng.gen_range(0..followers.len())];
    let hold = Duration::from_millis(rng.gen_range(800..2000));
    let pause = cluster.config().raft.election_timeout_max() * 2;
    let started_at = now();
    let nodes = match kind {
        FaultKind::KillLeader => restart_after(cluster, &[leader], hold).await?,
        FaultKind::KillFollower => restart_after(cluster, &[follower], hold).await?,
        FaultKind::KillMajority => {
            cluster.kill(leader);
            cluster.kill(follower);
            tokio::time::sleep(hold).await;
            cluster.start_node(leader).map_err(|e| e.to_string())?;
            cluster.wait_for_leader(shard, HEALTH_TIMEOUT).await?;
            cluster.start_node(follower).map_err(|e| e.to_string())?;
            vec![leader, follower]
        }
        FaultKind::PauseLeader => {
            cluster.pause(leader);
            tokio::time::sleep(pause).await;
            cluster.resume(leader);
            vec![leader]
        }
        FaultKind::IsolateLeader => isolate_for(cluster, leader, hold.max(pause)).await,
        FaultKind::IsolateFollower => isolate_for(cluster, follower, hold).await,
        FaultKind::KillPortal => {
            const BOTH: [PortalKind; 2] = [PortalKind::Order, PortalKind::Admin];
            BOTH.into_iter().for_each(|portal| cluster.kill_portal(portal));
            tokio::time::sleep(Duration::from_millis(rng.gen_range(100..500))).await;
            for portal in BOTH {
                cluster.start_portal(portal).map_err(|e| e.to_string())?;
                cluster.wait_for_portal(portal, HEALTH_TIMEOUT).await?;
            }
            Vec::new()
        }
    };
    for shard in Shard::ALL {
        cluster.wait_for_leader(shard, HEALTH_TIMEOUT).await?;
    }
    Ok(FaultEvent { kind, shard, nodes, started_at, healed_at: now() })
}

async fn restart_after(cluster: &mut LocalCluster, nodes: &[NodeId], hold: Duration) -> Result<Vec<NodeId>, String> {
    for node in nodes {
        cluster.kill(*node);
    }
    tokio::time::sleep(hold).await;
    for node in nodes {
        cluster.start_node(*node).map_err(|e| e.to_string())?;
    }
    Ok(nodes.to_vec())
}

async fn isolate_for(cluster: &LocalCluster, node: NodeId, hold: Duration) -> Vec<NodeId> {
    cluster.isolate(node);
    tokio::time::sleep(hold).await;
    cluster.heal();
    vec![node]
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_schedule_takes_every_kind_in_turn() {
        let plan = schedule(14, &FaultKind::ALL, &mut StdRng::seed_from_u64(3));
        for kind in FaultKind::ALL {
            assert_eq!(plan.iter().filter(|(k, _)| *k == kind).count(), 2, "{kind} twice in 14 faults");
        }
    }

    #[test]
    fn a_schedule_keeps_to_the_kinds_asked_for() {
        let plan = schedule(5, &[FaultKind::KillLeader], &mut StdRng::seed_from_u64(3));
        assert_eq!(plan.len(), 5);
        assert!(plan.iter().all(|(kind, _)| *kind == FaultKind::KillLeader));
        assert!(schedule(5, &[], &mut StdRng::seed_from_u64(3)).is_empty());
    }
}
