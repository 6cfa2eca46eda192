//! The leader's housekeeping: resolving transactions whose portal went
//! away, forgetting old ones, and ending lapsed sessions.
//!
//! A portal drives each cross-shard transaction, but holds nothing durable:
//! if it dies between prepare and resolve, the prepared part keeps its rows
//! locked. So the leader of every shard looks, every [`SCAN_INTERVAL`], for
//! parts prepared longer than [`TXN_TIMEOUT`] ago (by its own clock against
//! the `at_ms` its predecessor stamped into the log), and settles each one
//! by the commit protocol ([`commit_protocol::recover`]): it asks both
//! shards with `Prevent` (a prepare that has not landed never will), then
//! commits if both held their prepares and aborts otherwise. The timeout
//! only says when to look; the participants' records decide.
//!
//! Each participant's record only moves forward, and an abort is sent only
//! once some participant is out for good, so a portal and any number of
//! recovering leaders can never disagree. The leader also proposes
//! `PruneTxns` every [`PRUNE_INTERVAL`] (as many entries as it takes, if
//! any record is due), dropping records of transactions
//! finished more than [`TXN_RETENTION`] ago — long enough to answer any late
//! prepare, resolve or recovery question about a cross-shard transaction,
//! whose portal's calls end within seconds (single-shard ones leave no
//! record from layout 3) — but none from the first whose part the other
//! shard still holds prepared, or cannot say ([`commit_protocol::may_forget`]:
//! a shard cut off for longer than that settles its part by this record) —
//! and
//! `PruneIdempotency`, dropping idempotency keys older than
//! [`IDEMPOTENCY_WINDOW`], and `PruneWriters`, forgetting clients' write
//! sessions unused for [`WRITER_IDLE`].
//!
//! Sessions of mutex sites work the same way: when the leader's clock says
//! a session has lapsed, it proposes `ExpireSessions` stamped with that
//! clock, and every replica drops the site's requests (and its grant).
//!
//! Last, while the shard's state is in an older layout (which bookkeeping
//! rows an entry writes, `crate::state::layout`) than this build's newest
//! (`layout::NEWEST`), the leader asks every
//! member (voters and learners) for its status, and once each one's build
//! knows the newest layout it proposes `UseLayout`: a shard upgraded
//! one node at a time switches when its last node runs the new build, and
//! no replica ever meets a command it cannot apply. This runs in a loop of
//! its own, so a member that is slow to answer delays nothing else.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;

use crate::client::ClusterClient;
use crate::command::{Command, CommandResult, Outcome, Query, QueryResult, RowKey, Table, TxnId};
use crate::commit_protocol::{self, NoAnswer, Participants};
use crate::limits::{IDEMPOTENCY_WINDOW, WRITER_IDLE};
use crate::records::shop::decode_record;
use crate::service::now_ms;
use crate::state::txn::{TxnRecord, PRUNE_BATCH};
use crate::state::AppliedState;
use crate::types::{NodeId, Raft, Shard};

/// How often the leader looks for abandoned transactions.
pub const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// How long a part may stay prepared before recovery checks on it. A live
/// portal resolves within milliseconds; if recovery overtakes a slow one
/// whose other prepare has not landed, it prevents that prepare, and the
/// portal sees the abort and retries. So this only trades spurious retries
/// against how long a dead portal's intents block others; it never decides
/// an outcome.
pub const TXN_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often finished transaction records are pruned.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// How long a finished transaction's record is kept for late retries.
pub const TXN_RETENTION: Duration = Duration::from_secs(120);
/// Most entries of one prune command proposed per [`PRUNE_INTERVAL`]; with
/// up to 1,000 records each, that forgets 10,000 records a second.
const PRUNE_ENTRIES_PER_ROUND: usize = 100;
/// Most abandoned transactions settled per scan.
const SETTLE_BATCH: usize = 256;
/// Deadline of one call to the other shard.
const OTHER_SHARD_DEADLINE: Duration = Duration::from_secs(3);
/// Deadline of one member's answer about the layouts it knows.
const STATUS_DEADLINE: Duration = Duration::from_secs(1);
/// How often the leader checks whether its shard can switch to the newest
/// layout (a loop of its own, so a member slow to answer holds up
/// nothing else).
const LAYOUT_INTERVAL: Duration = Duration::from_millis(250);

/// Everything the recovery loop needs.
pub struct Housekeeping {
    /// This node's Raft.
    pub raft: Raft,
    /// The applied rows.
    pub state: Arc<AppliedState>,
    /// This node's shard.
    pub shard: Shard,
    /// Clients of both shards, to reach the decision shard.
    pub cluster: ClusterClient,
    /// The newest layout this node knows, which it switches
    /// its shard to when every member knows it too.
    pub newest_layout: u32,
    /// How long finished transactions' records are kept
    /// ([`TXN_RETENTION`] but in tests).
    pub txn_retention: Duration,
}

impl Housekeeping {
    /// Runs until the process ends.
    pub async fn run(self) {
        tokio::join!(self.recover(), self.switch_layout());
    }

    /// Settles abandoned transactions, expires sessions and prunes, every
    /// [`SCAN_INTERVAL`] while this node leads.
    async fn recover(&self) {
        let mut last_prune = tokio::time::Instant::now();
        // Whether this leader has looked through every transaction record
        // once, for parts prepared by a build without the prepared index.
        let mut swept_unindexed = false;
        let mut ticker = tokio::time::interval(SCAN_INTERVAL);
        loop {
            ticker.tick().await;
            if self.raft.metrics().borrow_watched().state != ServerState::Leader {
                continue;
            }
            self.settle_abandoned(!swept_unindexed).await;
            swept_unindexed = true;
            self.expire_sessions().await;
            if last_prune.elapsed() >= PRUNE_INTERVAL {
                last_prune = tokio::time::Instant::now();
                let before_ms = now_ms().saturating_sub(self.txn_retention.as_millis() as u64);
                let before_ms = self.forgettable_before(before_ms).await;
                self.prune(Command::PruneTxns { before_ms }).await;
                let before_ms = now_ms().saturating_sub(IDEMPOTENCY_WINDOW.as_millis() as u64);
                self.prune(Command::PruneIdempotency { before_ms }).await;
                let before_ms = now_ms().saturating_sub(WRITER_IDLE.as_millis() as u64);
                self.prune(Command::PruneWriters { before_ms }).await;
            }
        }
    }

    /// Proposes the prune `command` while it still has rows to forget: each
    /// entry forgets a bounded batch, so a backlog (a burst of writes
    /// [`TXN_RETENTION`] ago) takes several small entries rather than one
    /// large one; at most [`PRUNE_ENTRIES_PER_ROUND`] per round.
    async fn prune(&self, command: Command) {
        for _ in 0..PRUNE_ENTRIES_PER_ROUND {
            match self.state.would_change(&command) {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    tracing::error!(error = %e, %command, "cannot read what to prune");
                    return;
                }
            }
            if let Err(e) = self.propose(command.clone()).await {
                tracing::debug!(error = %e.detail, "prune proposal failed (leadership moved?)");
                return;
            }
        }
    }

    /// The bound for `PruneTxns`: `before_ms`, or, if the other shard still
    /// holds some due transaction's part prepared or cannot be asked, the
    /// end time of the first such record, which then stays with every later
    /// one ([`commit_protocol::may_forget`]). Checks at most as many
    /// records as one round prunes.
    async fn forgettable_before(&self, before_ms: u64) -> u64 {
        let other = self.cluster.shard(self.shard.other());
        let mut after = None;
        for _ in 0..PRUNE_ENTRIES_PER_ROUND {
            let page = match self.state.scan(Table::TxnsDone, after.as_ref(), PRUNE_BATCH) {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "cannot list finished transactions");
                    return 0;
                }
            };
            let due: Vec<(u64, TxnId)> = page
                .iter()
                .map_while(|(key, _)| match key {
                    RowKey::TxnDone(at, id) if *at < before_ms => Some((*at, *id)),
                    _ => None,
                })
                .collect();
            let Some(&(first_at, _)) = due.first() else { return before_ms };
            let keys = due.iter().map(|(_, id)| RowKey::Txn(*id)).collect();
            let rows = match other.read(&Query::GetMany(keys), OTHER_SHARD_DEADLINE).await {
                Ok(QueryResult::Many(rows)) if rows.len() == due.len() => rows,
                answer => {
                    let detail = match answer {
                        Ok(other) => format!("unexpected answer {other:?}"),
                        Err(e) => e.to_string(),
                    };
                    tracing::debug!(%detail, "cannot ask the other shard about finished transactions; keeping them");
                    return first_at;
                }
            };
            for (&(at, id), row) in due.iter().zip(&rows) {
                let other_state = match row.as_ref().map(|row| decode_record::<TxnRecord>(&row.value)).transpose() {
                    Ok(record) => record.map(|record| record.state),
                    Err(detail) => {
                        tracing::error!(txn = %id, %detail, "the other shard's transaction record does not decode; keeping ours");
                        return at;
                    }
                };
                if !commit_protocol::may_forget(other_state.as_ref()) {
                    tracing::info!(txn = %id, "keeping finished transaction records from this one on: the other shard still holds its part prepared");
                    return at;
                }
            }
            if due.len() < page.len() {
                return before_ms;
            }
            after = page.last().map(|(key, _)| key.clone());
        }
        // More records are due than one round checks: forget the checked
        // ones (those that ended at the last one's time wait a round).
        match after {
            Some(RowKey::TxnDone(at, _)) => at,
            _ => before_ms,
        }
    }

    /// Every [`LAYOUT_INTERVAL`] while this node leads: [`Self::upgrade_layout`].
    async fn switch_layout(&self) {
        let mut ticker = tokio::time::interval(LAYOUT_INTERVAL);
        loop {
            ticker.tick().await;
            if self.raft.metrics().borrow_watched().state == ServerState::Leader {
                self.upgrade_layout().await;
            }
        }
    }

    /// Proposes `UseLayout` with the newest layout this node knows if
    /// the shard uses an older one and every member knows the newest.
    async fn upgrade_layout(&self) {
        let layout = self.newest_layout;
        match self.state.layout() {
            Ok(current) if current < layout => {}
            Ok(_) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state's layout");
                return;
            }
        }
        let members: Vec<NodeId> =
            self.raft.metrics().borrow_watched().membership_config.membership().nodes().map(|(id, _)| *id).collect();
        let shard = self.cluster.shard(self.shard);
        for node in members {
            match shard.status(node, STATUS_DEADLINE).await {
                Ok(status) if status.newest_layout >= layout => {}
                Ok(status) => {
                    tracing::debug!(node, knows = status.newest_layout, "a member's build holds the layout back");
                    return;
                }
                Err(e) => {
                    tracing::debug!(node, error = %e.message(), "cannot ask a member which layouts it knows");
                    return;
                }
            }
        }
        match self.propose(Command::UseLayout { layout }).await {
            Ok(result) => tracing::info!(layout, ?result, "the shard switched layout"),
            Err(e) => tracing::debug!(error = %e.detail, "layout proposal failed (leadership moved?)"),
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

    /// Settles every part prepared more than [`TXN_TIMEOUT`] ago (found
    /// through the prepared index, or by reading every record if `sweep`).
    async fn settle_abandoned(&self, sweep: bool) {
        let cutoff = now_ms().saturating_sub(TXN_TIMEOUT.as_millis() as u64);
        let listed = match sweep {
            true => self.state.prepared_txns_unindexed(SETTLE_BATCH),
            false => self.state.prepared_txns(SETTLE_BATCH),
        };
        let prepared = match listed {
            Ok(prepared) => prepared,
            Err(e) => {
                tracing::error!(error = %e, "cannot list prepared transactions");
                return;
            }
        };
        for (id, decision_shard, at_ms) in prepared.into_iter().filter(|(_, _, at)| *at < cutoff) {
            tracing::warn!(txn = %id, %decision_shard, age_ms = now_ms().saturating_sub(at_ms), "settling an abandoned transaction");
            self.settle(id).await;
        }
    }

    /// Settles `id` by the commit protocol: both participants are asked
    /// (a prepare that has not landed is prevented), then both resolved.
    async fn settle(&self, id: TxnId) {
        let outcome = match commit_protocol::recover(self, id).await {
            Ok(outcome) => outcome,
            Err(no_answer) => {
                tracing::warn!(txn = %id, detail = %no_answer.detail, "transaction not settled yet; will retry");
                return;
            }
        };
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

    /// Proposes housekeeping through this node's Raft; a failure (the
    /// node no longer leads) is retried by the next round anyway.
    async fn propose_locally(&self, command: Command) {
        if let Err(e) = self.propose(command).await {
            tracing::debug!(error = %e.detail, "recovery proposal failed (leadership moved?)");
        }
    }

    /// Proposes a command through this node's Raft (it leads, or it fails).
    async fn propose(&self, mut command: Command) -> Result<CommandResult, NoAnswer> {
        command.stamp(now_ms());
        match self.raft.client_write(command.into()).await {
            Ok(written) => Ok(written.data),
            Err(e) => Err(NoAnswer { detail: format!("this node no longer leads: {e}"), maybe_applied: true }),
        }
    }
}

/// Housekeeping reaches its own shard through its own Raft, and the other
/// through the cluster client.
impl Participants for Housekeeping {
    async fn send(&self, shard: Shard, command: Command) -> Result<CommandResult, NoAnswer> {
        if shard != self.shard {
            return self.cluster.shard(shard).write(&command, OTHER_SHARD_DEADLINE).await.map_err(NoAnswer::from);
        }
        self.propose(command).await
    }
}
