//! The leader's housekeeping: resolving transactions whose portal went
//! away, forgetting old ones, and ending lapsed sessions.
//!
//! A portal drives each cross-shard transaction, but holds nothing durable:
//! if it dies between prepare and resolve, the prepared part keeps its rows
//! locked. So the leader of every shard looks, every [`SCAN_INTERVAL`], for
//! parts prepared longer than [`TXN_TIMEOUT`] ago (by its own clock against
//! the `at_ms` its predecessor stamped into the log), and settles each one
//! the way the portal would have:
//!
//! - it proposes `Resolve(Abort)` to the transaction's decision shard; as
//!   the first recorded outcome wins, that returns `Commit` if the portal
//!   got there first, and records `Abort` otherwise;
//! - it then resolves its own part with that outcome (if it is the decision
//!   shard, the first step already did).
//!
//! Because the decision is one replicated record, a portal and any number
//! of recovering leaders can never disagree. The leader also proposes
//! `PruneTxns` every [`PRUNE_INTERVAL`], dropping records of transactions
//! finished more than [`TXN_RETENTION`] ago — long enough to answer any late
//! retry of a portal, whose calls end within seconds — and
//! `PruneIdempotency`, dropping idempotency keys older than
//! [`IDEMPOTENCY_WINDOW`], and `PruneWriters`, forgetting clients' write
//! sessions unused for [`WRITER_IDLE`].
//!
//! Sessions of mutex sites work the same way: when the leader's clock says
//! a session has lapsed, it proposes `ExpireSessions` stamped with that
//! clock, and every replica drops the site's requests (and its grant).

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::client::ClusterClient;
use crate::command::{Command, CommandResult, Outcome, TxnId};
use crate::limits::{IDEMPOTENCY_WINDOW, WRITER_IDLE};
use crate::service::now_ms;
use crate::state::ShopState;
use crate::types::{Raft, Shard};

/// How often the leader looks for abandoned transactions.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// How long a part may stay prepared before recovery settles it. A live
/// portal decides within milliseconds; if recovery overtakes a slow one,
/// the decision record makes the portal see the abort and retry, so this
/// only trades spurious retries against how long a dead portal's intents
/// block others.
pub const TXN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often finished transaction records are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a finished transaction's record is kept for late retries.
pub const TXN_RETENTION: Duration = Duration::from_secs(120);
/// Most abandoned transactions settled per scan.
const SETTLE_BATCH: usize = 256;
/// Deadline of one call to the decision shard.
const DECISION_DEADLINE: Duration = Duration::from_secs(3);

/// Everything the recovery loop needs.
pub struct Recovery {
    /// This node's Raft.
    pub raft: Raft,
    /// The applied rows.
    pub state: Arc<ShopState>,
    /// This node's shard.
    pub shard: Shard,
    /// Clients of both shards, to reach the decision shard.
    pub cluster: ClusterClient,
}

impl Recovery {
    /// Runs until the process ends.
    pub async fn run(self) {
        let mut last_prune = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(SCAN_INTERVAL);
        loop {
            ticker.tick().await;
            if self.raft.metrics().borrow_watched().state != ServerState::Leader {
                continue;
            }
            self.settle_abandoned().await;
            self.expire_sessions().await;
            if last_prune.elapsed() >= PRUNE_INTERVAL {
                last_prune = tokio::time::Instant::now();
                let before_ms = now_ms().saturating_sub(TXN_RETENTION.as_millis() as u64);
                self.propose_locally(Command::PruneTxns { before_ms }).await;
                let before_ms = now_ms().saturating_sub(IDEMPOTENCY_WINDOW.as_millis() as u64);
                self.propose_locally(Command::PruneIdempotency { before_ms }).await;
                let before_ms = now_ms().saturating_sub(WRITER_IDLE.as_millis() as u64);
                self.propose_locally(Command::PruneWriters { before_ms }).await;
            }
        }
    }

    /// Proposes `ExpireSessions` when some site's session has lapsed, so a
    /// crashed mutex holder loses its grant.
    async fn expire_sessions(&self) {
        match self.state.has_lapsed_session(now_ms()) {
            Ok(true) => {
                self.propose_locally(Command::ExpireSessions { now_ms: 0 }).await;
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot read sessions"),
        }
    }

    /// Settles every part prepared more than [`TXN_TIMEOUT`] ago.
    async fn settle_abandoned(&self) {
        let cutoff = now_ms().saturating_sub(TXN_TIMEOUT.as_millis() as u64);
        let prepared = match self.state.prepared_txns(SETTLE_BATCH) {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(error = %e, "cannot list prepared transactions");
                return;
            }
        };
        for (id, decision_shard, at_ms) in prepared.into_iter().filter(|(_, _, at)| *at < cutoff) {
            tracing::warn!(txn = %id, %decision_shard, age_ms = now_ms().saturating_sub(at_ms), "settling an abandoned transaction");
            self.settle(id, decision_shard).await;
        }
    }

    /// Learns (or makes) the decision for `id`, then applies it here.
    async fn settle(&self, id: TxnId, decision_shard: Shard) {
        let ask = Command::Resolve { id, outcome: Outcome::Abort, at_ms: 0 };
        let decided = if decision_shard == self.shard {
            self.propose_locally(ask).await
        } else {
            match self.cluster.shard(decision_shard).write(&ask, DECISION_DEADLINE).await {
                Ok(result) => Some(result),
                Err(e) => {
                    tracing::warn!(txn = %id, error = %e, "decision shard unreachable; will retry");
                    None
                }
            }
        };
        let outcome = match decided {
            Some(CommandResult::Committed) => Outcome::Commit,
            Some(CommandResult::Aborted(_)) => Outcome::Abort,
            Some(other) => {
                tracing::error!(txn = %id, result = ?other, "unexpected answer from the decision shard");
                return;
            }
            None => return,
        };
        if decision_shard != self.shard {
            self.propose_locally(Command::Resolve { id, outcome, at_ms: 0 }).await;
        }
        let name = match outcome {
            Outcome::Commit => "commit",
            Outcome::Abort => "abort",
        };
        crate::metrics::node()
            .recovered_transactions
            .get_or_create(&crate::metrics::OutcomeLabels { outcome: name })
            .inc();
        tracing::info!(txn = %id, ?outcome, "abandoned transaction settled");
    }

    /// Proposes a command through this node's Raft (it leads, or it fails).
    async fn propose_locally(&self, mut command: Command) -> Option<CommandResult> {
        command.stamp(now_ms());
        match self.raft.client_write(command).await {
            Ok(written) => Some(written.data),
            Err(e) => {
                tracing::debug!(error = %e, "recovery proposal failed (leadership moved?)");
                None
            }
        }
    }
}
