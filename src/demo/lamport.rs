//! Seed 001's examples, replayed on the replicated Lamport mutex.
//!
//! Three sites S1, S2, S3 share one critical section:
//! 1. S1 alone requests, enters, releases.
//! 2. S2 alone requests, enters, releases.
//! 3. S1 and S2 request at once with equal clocks; S1 wins the tie (smaller
//!    site id), S2 enters after S1 releases.
//!
//! "At once" means in the same log entry: the replicas receive both
//! requests together, as the seed's sites did before any REPLY. Each step
//! prints every site's clock and the queue as the replicas hold them.

use std::fmt::Write as _;
use std::sync::Arc;

use storage_node::client::{ClientError, LamportSite, ShardClient};
use storage_node::command::MutexOp;
use storage_node::records::coordination::MutexState;

/// One line of the replay: what happened and the mutex afterwards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// What happened, e.g. "S1 requests".
    pub action: String,
    /// The mutex as the replicas hold it after the step.
    pub state: MutexState,
}

/// Replays the three examples on mutex `resource`; returns every step.
pub async fn replay(shard: Arc<ShardClient>, resource: &str) -> Result<Vec<Step>, ClientError> {
    let sites: Vec<LamportSite> = (1..=3).map(|id| LamportSite::new(shard.clone(), id)).collect();
    let (s1, s2) = (&sites[0], &sites[1]);
    let mut steps = Vec::new();
    let mut step = |action: &str, state: MutexState| steps.push(Step { action: action.into(), state });

    // Example 1: S1 alone.
    step("example 1: S1 requests", s1.request(resource).await?);
    step("example 1: S1 releases", s1.release(resource).await?);
    // Example 2: S2 alone.
    step("example 2: S2 requests", s2.request(resource).await?);
    step("example 2: S2 releases", s2.release(resource).await?);
    // Example 3: S1 and S2 at once, with equal clocks.
    let clock = s1.clock().max(s2.clock()) + 1;
    let both = vec![
        MutexOp::Request { resource: resource.into(), site: 2, clock },
        MutexOp::Request { resource: resource.into(), site: 1, clock },
    ];
    step("example 3: S1 and S2 request at once", s1.send(both, resource).await?);
    step("example 3: S1 releases", s1.release(resource).await?);
    step("example 3: S2 releases", s2.release(resource).await?);
    Ok(steps)
}

/// The replay as a table for people.
pub fn render(steps: &[Step]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<40} {:<10} {:<26} queue (clock, site)", "step", "holder", "clocks S1 S2 S3");
    for step in steps {
        let holder = step.state.holder.map_or("-".to_owned(), |g| format!("S{} #{}", g.site, g.token));
        let clocks: Vec<String> =
            (1..=3).map(|site| step.state.clocks.get(&site).map_or("-".into(), |c| c.to_string())).collect();
        let queue: Vec<String> = step.state.queue.iter().map(|(c, s)| format!("({c}, S{s})")).collect();
        let _ = writeln!(out, "{:<40} {:<10} {:<26} {}", step.action, holder, clocks.join(" "), queue.join(" "));
    }
    out
}
