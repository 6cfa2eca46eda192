//! Running one shop call atomically, on one shard or across both.
//!
//! A call is planned as a [`Plan`]: checks and effects per shard, plus the
//! decision shard (the order's shard for order calls). Running it:
//!
//! - one shard: a single `Execute` entry, checks and effects together;
//! - two shards: parallel commits (`storage_node::commit_protocol`):
//!   `Prepare` on both at once; if both hold, the transaction is committed
//!   and the caller is answered, and `Resolve(Commit)` on both follows in
//!   the background; if one refused, it is made permanent and the other
//!   part is aborted.
//!
//! Until the intents are resolved, reads of the rows they lock wait (see
//! `Shop::read`), so the caller's next read sees what it was told
//! committed. Every cross-shard step carries the transaction id and is
//! idempotent; a single-shard `Execute` leaves no record, and the write
//! session it is sent in answers its repeats. If this portal dies mid-way,
//! the shards' recovery settles the transaction by asking both
//! participants (see `storage_node::node::housekeeping`).
//!
//! A refusal that may pass (a row locked by another transaction in flight) is
//! retried with a fresh transaction after a short, growing pause; one that
//! means the plan is stale (a version or price moved) goes back to the
//! caller to re-read and re-plan; any other is the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use storage_node::client::ClusterClient;
use storage_node::command::{Check, Command, CommandResult, Disposition, Effect, Outcome, Rejection, TxnId, TxnPart};
use storage_node::commit_protocol::{self, Attempt, NoAnswer, Participants};
use storage_node::limits::MAX_WRITE_EACH;
use storage_node::records::shop::decode_record;
use storage_node::state::txn::TxnRecord;
use storage_node::Shard;
use storage_node::{Query, QueryResult, RowKey};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

/// First pause before retrying a transaction that met a lock.
const FIRST_BACKOFF: Duration = Duration::from_millis(2);
/// Longest pause between such retries.
const MAX_BACKOFF: Duration = Duration::from_millis(100);
/// How long the background resolution of a committed transaction tries
/// before leaving it to the shards' recovery.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);
/// `Store.WriteEach` calls of resolves under way to one shard at once.
const RESOLVE_CALLS: usize = 2;

/// What one call does on each shard.
#[derive(Debug, Default)]
pub struct Plan {
    /// Checks and effects per shard, in evaluation order.
    parts: BTreeMap<Shard, (Vec<Check>, Vec<Effect>)>,
}

impl Plan {
    /// Adds a check to `shard`'s part.
    pub fn check(&mut self, shard: Shard, check: Check) -> &mut Self {
        self.parts.entry(shard).or_default().0.push(check);
        self
    }

    /// Puts a check before every other check of `shard`'s part: the first
    /// that fails is the one reported.
    pub fn check_first(&mut self, shard: Shard, check: Check) -> &mut Self {
        self.parts.entry(shard).or_default().0.insert(0, check);
        self
    }

    /// The checks and effects of `shard`'s part, if it has one.
    pub fn part(&self, shard: Shard) -> Option<(&[Check], &[Effect])> {
        self.parts.get(&shard).map(|(checks, effects)| (checks.as_slice(), effects.as_slice()))
    }

    /// Adds an effect to `shard`'s part.
    pub fn effect(&mut self, shard: Shard, effect: Effect) -> &mut Self {
        self.parts.entry(shard).or_default().1.push(effect);
        self
    }

    /// The parts as sent, all under transaction `id`.
    pub fn parts(&self, id: TxnId) -> Vec<(Shard, TxnPart)> {
        self.parts
            .iter()
            .map(|(shard, (checks, effects))| {
                (*shard, TxnPart { id, checks: checks.clone(), effects: effects.clone() })
            })
            .collect()
    }
}

/// Why a plan did not commit.
#[derive(Debug)]
pub enum TxnFailure {
    /// A shard refused it for a reason that will not pass by retrying.
    Refused(Rejection),
    /// The plan was built on data that changed; re-read and re-plan.
    Stale(Rejection),
    /// Recovery aborted it before this portal could commit it (the portal
    /// was too slow); nothing happened, so running it again is safe.
    Overtaken,
    /// No answer before the deadline; `maybe_committed` if it may have.
    Unavailable {
        /// What went wrong last.
        detail: String,
        /// True if the transaction may have committed nonetheless.
        maybe_committed: bool,
    },
}

/// A command or transaction whose answer did not come: unavailable, and
/// committed maybe if it may have been applied.
impl From<NoAnswer> for TxnFailure {
    fn from(no_answer: NoAnswer) -> Self {
        TxnFailure::Unavailable { detail: no_answer.detail, maybe_committed: no_answer.maybe_applied }
    }
}

/// Runs a plan until it commits, is refused, or `give_up` passes.
/// `keyed`: the plan records the call's idempotency key in `decision`
/// ([`crate::idempotency::Claim::guard`]).
pub async fn run(
    cluster: &Arc<ClusterClient>,
    resolver: &Arc<Resolver>,
    plan: &Plan,
    decision: Shard,
    keyed: bool,
    give_up: Instant,
) -> Result<(), TxnFailure> {
    let mut backoff = FIRST_BACKOFF;
    let leaders = Leaders { cluster: Arc::clone(cluster), resolver: Some(Arc::clone(resolver)), give_up };
    let keyed = keyed.then_some(decision);
    loop {
        let id = TxnId::fresh();
        let parts = plan.parts(id);
        let attempt = match parts.as_slice() {
            [] => return Ok(()),
            [(shard, part)] => execute(&leaders, *shard, part.clone()).await,
            [first, second] => two_phase(&leaders, first.clone(), second.clone(), decision, keyed).await,
            more => unreachable!("a plan spans at most two shards, got {}", more.len()),
        };
        crate::metrics::portal().record_transaction(parts.len() > 1, outcome_name(&attempt));
        let waits = match &attempt {
            Err(TxnFailure::Refused(rejection)) => rejection.disposition() == Disposition::Wait,
            Err(TxnFailure::Overtaken) => true,
            _ => false,
        };
        match attempt {
            Err(_) if waits && Instant::now() + backoff < give_up => {
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(TxnFailure::Refused(Rejection::Locked { key, .. })) => {
                // A lock in the shard of the call's key may be an attempt
                // of this very call (sent again after no answer), undecided
                // and able to commit yet.
                let maybe_committed = keyed == Some(key.shard());
                return Err(TxnFailure::Unavailable {
                    detail: format!("{key} stayed locked by other transactions until the deadline"),
                    maybe_committed,
                });
            }
            Err(TxnFailure::Overtaken) => {
                return Err(TxnFailure::Unavailable {
                    detail: "the change could not commit before the deadline".into(),
                    maybe_committed: false,
                })
            }
            other => return other,
        }
    }
}

/// The name an attempt's outcome is counted under.
fn outcome_name(attempt: &Result<(), TxnFailure>) -> &'static str {
    match attempt {
        Ok(()) => "committed",
        Err(TxnFailure::Refused(Rejection::Locked { .. })) => "locked",
        Err(TxnFailure::Refused(Rejection::Fenced { .. })) => "fenced",
        Err(TxnFailure::Refused(_)) => "refused",
        Err(TxnFailure::Stale(_)) => "stale",
        Err(TxnFailure::Overtaken) => "overtaken",
        Err(TxnFailure::Unavailable { maybe_committed: true, .. }) => "maybe-committed",
        Err(TxnFailure::Unavailable { maybe_committed: false, .. }) => "unavailable",
    }
}

/// A pause of about `base`, randomized so competing portals spread out.
fn jitter(base: Duration) -> Duration {
    base.mul_f64(0.5 + rand::random::<f64>())
}

/// The single-shard path: one `Execute` entry.
async fn execute(leaders: &Leaders, shard: Shard, part: TxnPart) -> Result<(), TxnFailure> {
    let command = Command::Execute { part, at_ms: 0 };
    match leaders.send(shard, command).await? {
        CommandResult::Committed => Ok(()),
        CommandResult::Rejected(rejection) | CommandResult::Aborted(Some(rejection)) => Err(classify(rejection)),
        other => Err(unexpected(shard, other)),
    }
}

/// The cross-shard path: parallel commits (`storage_node::commit_protocol`).
/// Both prepares go out at once; when both hold, the transaction is
/// committed and the caller is answered, and resolving the intents goes on
/// in the background (recovery finishes it should this portal die).
async fn two_phase(
    leaders: &Leaders,
    first: (Shard, TxnPart),
    second: (Shard, TxnPart),
    decision: Shard,
    keyed: Option<Shard>,
) -> Result<(), TxnFailure> {
    let id = first.1.id;
    match commit_protocol::run(leaders, [first, second], decision).await {
        Attempt::Committed(quoted) => {
            let cluster = Arc::clone(&leaders.cluster);
            let resolver = leaders.resolver.clone();
            let leaders = Leaders { cluster, resolver, give_up: Instant::now() + RESOLVE_DEADLINE };
            tokio::spawn(async move {
                let resolved = commit_protocol::finish(&leaders, id, Outcome::Commit, Shard::ALL, quoted.as_ref());
                for (shard, result) in resolved.await {
                    if let Err(no_answer) = result {
                        tracing::warn!(txn = %id, %shard, detail = %no_answer.detail, "commit not resolved; recovery will finish it");
                    }
                }
            });
            Ok(())
        }
        Attempt::Aborted(refusals) => match refusals.into_iter().min_by_key(|refusal| priority(refusal, keyed)) {
            Some(rejection) => Err(classify(rejection)),
            // A prepare met the mark of a recovery that overtook this portal.
            None => Err(TxnFailure::Overtaken),
        },
        Attempt::Unknown(no_answer) => Err(no_answer.into()),
    }
}

/// Resolves transaction `id` if the participants' records already fix its
/// outcome (`commit_protocol::settled_by`); does nothing while a prepare
/// may still be on its way, or if a shard does not answer (the reader goes
/// on waiting, and recovery settles it in the end).
pub async fn help_resolve(cluster: &Arc<ClusterClient>, id: TxnId, give_up: Instant) {
    let read = |shard: Shard| async move {
        let budget = give_up.saturating_duration_since(Instant::now());
        match cluster.shard(shard).read(&Query::Get(RowKey::Txn(id)), budget).await {
            Ok(QueryResult::Row(None)) => Ok(None),
            Ok(QueryResult::Row(Some(row))) => decode_record::<TxnRecord>(&row.value).map(|r| Some(r.state)),
            Ok(other) => Err(format!("unexpected answer {other:?}")),
            Err(e) => Err(e.to_string()),
        }
    };
    let (even, odd) = tokio::join!(read(Shard::Even), read(Shard::Odd));
    let (even, odd) = match (even, odd) {
        (Ok(even), Ok(odd)) => (even, odd),
        (Err(detail), _) | (_, Err(detail)) => {
            tracing::debug!(txn = %id, %detail, "cannot read the transaction's records");
            return;
        }
    };
    let records = [even.as_ref(), odd.as_ref()];
    let Some(outcome) = commit_protocol::settled_by(records) else { return };
    tracing::info!(txn = %id, ?outcome, "a read resolves a transaction its portal left");
    let leaders = Leaders { cluster: Arc::clone(cluster), resolver: None, give_up };
    commit_protocol::finish(&leaders, id, outcome, Shard::ALL, commit_protocol::quoted_by(records).as_ref()).await;
}

/// The shards' leaders within a deadline, as the commit protocol sends.
struct Leaders {
    cluster: Arc<ClusterClient>,
    /// Where resolves go, if they may share a call with others.
    resolver: Option<Arc<Resolver>>,
    give_up: Instant,
}

impl Participants for Leaders {
    async fn send(&self, shard: Shard, command: Command) -> Result<CommandResult, NoAnswer> {
        let budget = self.give_up.saturating_duration_since(Instant::now());
        match &self.resolver {
            Some(resolver) if command.repeats_harmlessly() => resolver.send(shard, command, budget).await,
            _ => self.cluster.shard(shard).write(&command, budget).await.map_err(NoAnswer::from),
        }
    }
}

/// Sends the resolves of committed transactions to each shard many to a
/// call (`Store.WriteEach`).
///
/// After answering a cross-shard call the portal resolves its transaction
/// on both shards, off the caller's path. Sent one by one, that was two
/// more gRPC calls per order beside the two prepares, each costing the
/// portal and the leader as much CPU as a prepare's call. Here at most
/// [`RESOLVE_CALLS`] calls per shard are under way; the resolves that come
/// meanwhile wait and go together in the next, so a lone resolve goes at
/// once and a busy portal sends a call or two per Raft round. (With one
/// call, a resolve waited for the round before its own as well, and reads
/// that met its locks waited with it: `mixed`'s p99 grew by a few ms.)
/// Resolves repeat harmlessly, so a
/// call that fails is reported to each resolve's sender, which leaves the
/// transaction to the shards' recovery as before.
pub struct Resolver {
    cluster: Arc<ClusterClient>,
    /// Each shard's queue, with its sending task started on first use
    /// (inside the portal's runtime).
    queues: OnceLock<BTreeMap<Shard, mpsc::UnboundedSender<WaitingResolve>>>,
}

/// A resolve waiting for its call, and where its result goes.
struct WaitingResolve {
    command: Command,
    answer: oneshot::Sender<Result<CommandResult, NoAnswer>>,
}

impl Resolver {
    /// A resolver over `cluster`; nothing starts until the first resolve.
    pub fn new(cluster: Arc<ClusterClient>) -> Self {
        Resolver { cluster, queues: OnceLock::new() }
    }

    /// Has `shard` apply `command` (a resolve) in the next call, and waits
    /// at most `budget` for its result.
    async fn send(&self, shard: Shard, command: Command, budget: Duration) -> Result<CommandResult, NoAnswer> {
        let queues = self.queues.get_or_init(|| {
            let start = |shard: Shard| {
                let (queue, waiting) = mpsc::unbounded_channel();
                tokio::spawn(send_resolves(Arc::clone(&self.cluster), shard, waiting));
                (shard, queue)
            };
            Shard::ALL.into_iter().map(start).collect()
        });
        let (answer, result) = oneshot::channel();
        let stopped = || NoAnswer { detail: "the portal's resolve queue has stopped".into(), maybe_applied: true };
        if queues[&shard].send(WaitingResolve { command, answer }).is_err() {
            return Err(NoAnswer { maybe_applied: false, ..stopped() });
        }
        match tokio::time::timeout(budget, result).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(stopped()),
            Err(_) => Err(NoAnswer { detail: format!("no answer within {budget:?}"), maybe_applied: true }),
        }
    }
}

/// `shard`'s sending task: once a call may start, takes what waits (up to
/// a call's worth), sends it and hands out the results in a task of its
/// own, and again. Ends when the resolver is dropped.
async fn send_resolves(cluster: Arc<ClusterClient>, shard: Shard, mut queue: mpsc::UnboundedReceiver<WaitingResolve>) {
    let calls = Arc::new(Semaphore::new(RESOLVE_CALLS));
    loop {
        let call = Arc::clone(&calls).acquire_owned().await.expect("the semaphore is never closed");
        let mut batch = Vec::new();
        if queue.recv_many(&mut batch, MAX_WRITE_EACH).await == 0 {
            return;
        }
        let cluster = Arc::clone(&cluster);
        tokio::spawn(async move {
            let commands: Vec<Command> = batch.iter().map(|waiting| waiting.command.clone()).collect();
            match cluster.shard(shard).write_each(&commands, RESOLVE_DEADLINE).await {
                Ok(results) => {
                    for (waiting, result) in batch.into_iter().zip(results) {
                        let _ = waiting.answer.send(Ok(result));
                    }
                }
                Err(error) => {
                    let no_answer = NoAnswer::from(error);
                    for waiting in batch {
                        let _ = waiting.answer.send(Err(no_answer.clone()));
                    }
                }
            }
            drop(call);
        });
    }
}

/// Stale plans go back to be re-planned ([`Disposition::Replan`]); the
/// others are refused (and [`run`] waits out those that say so).
fn classify(rejection: Rejection) -> TxnFailure {
    match rejection.disposition() {
        Disposition::Replan => TxnFailure::Stale(rejection),
        Disposition::Wait | Disposition::Final => TxnFailure::Refused(rejection),
    }
}

fn unexpected(shard: Shard, result: CommandResult) -> TxnFailure {
    TxnFailure::Refused(Rejection::Invalid(format!("shard {shard} answered {result:?}")))
}

/// Which refusal to report when both shards refused. The idempotency key
/// first: recorded (the call was made before, whatever else is true now),
/// or, for a call with a key (`keyed`: the shard that records it), any lock
/// in that shard. An attempt of this very call whose answer was lost holds
/// the key and the rows beside it (the order's, say) there until it is
/// settled, and may still commit: no refusal of the moment (the stock that
/// attempt holds) is the call's answer, so the caller waits and tries
/// again. Then the refusal a person would want to hear first (mission.md's
/// order of business rules).
fn priority(rejection: &Rejection, keyed: Option<Shard>) -> u8 {
    use storage_node::RowKey;
    match rejection {
        Rejection::AlreadyExists(RowKey::Idempotency(..)) => 0,
        Rejection::Locked { key, .. } if keyed == Some(key.shard()) => 0,
        Rejection::NotFound(RowKey::Client(_)) => 1,
        Rejection::NotFound(RowKey::Order(_)) | Rejection::AlreadyExists(RowKey::Order(_)) => 2,
        Rejection::NotFound(RowKey::Product(_)) => 3,
        Rejection::InsufficientStock { .. } => 4,
        Rejection::Locked { .. } | Rejection::Fenced { .. } => 6,
        Rejection::Aborted(_) => 7,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storage_node::RowKey;

    #[test]
    fn a_lock_in_the_keys_shard_outranks_the_other_shards_refusal() {
        let stock = Rejection::InsufficientStock { pid: 2, available: 0, needed: 1 };
        let reported =
            |refusals: [&Rejection; 2], keyed| refusals.into_iter().min_by_key(|r| priority(r, keyed)).cloned();
        // An earlier attempt of the call holds its order's row (it sorts
        // before the key's, so a prepare names it first) and the key.
        for row in [RowKey::Order(11), RowKey::Idempotency(Shard::Odd, "CreateOrder:k".into())] {
            let held = Rejection::Locked { key: row, holder: TxnId(7) };
            assert_eq!(reported([&stock, &held], Some(Shard::Odd)), Some(held.clone()), "a keyed call waits");
            assert_eq!(reported([&held, &stock], None), Some(stock.clone()), "without a key: the stock");
        }
        // A lock in the other shard is no attempt of this call.
        let elsewhere = Rejection::Locked { key: RowKey::Product(2), holder: TxnId(7) };
        assert_eq!(reported([&elsewhere, &stock], Some(Shard::Odd)), Some(stock.clone()));
        let recorded = Rejection::AlreadyExists(RowKey::Idempotency(Shard::Odd, "CreateOrder:k".into()));
        assert_eq!(reported([&stock, &recorded], None), Some(recorded));
    }
}
