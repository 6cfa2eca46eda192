//! The cross-shard commit protocol: parallel commits over the two shards.
//!
//! A call that changes rows of both shards is one transaction with two
//! participants, the two shards. Each gets its part as a `Prepare`, sent
//! to both at once. A prepare that passes its checks locks its rows with
//! intents and stages its effects (see `state::txn`).
//!
//! **The commit point.** The transaction is committed the moment *both*
//! participants hold their prepares: nothing can abort it from then on,
//! because an abort needs a participant that will never prepare. So the
//! caller is answered right after the two parallel prepares, one consensus
//! round. Resolving the intents (`Resolve(Commit)` on both) follows, off the
//! caller's path ([`finish`]). Until it lands, reads of the locked rows wait,
//! and one that waited long helps it along by reading both records
//! ([`settled_by`]), so nobody sees half a transaction.
//!
//! **Aborts.** A participant that refused (its checks failed, or it is
//! locked or fenced) will never prepare: a recorded refusal stays, and one
//! that left no record is made permanent with `Prevent`, which records the
//! transaction aborted in a shard that never prepared it. Only once some
//! participant is out for good does anyone send `Resolve(Abort)` to the
//! others. No timer decides anything.
//!
//! **Lost answers and dead portals.** A prepare whose answer was lost may
//! have landed or not; `Prevent` asks, and settles "not yet" as "never".
//! The leaders' recovery does the same for a transaction still prepared
//! some time after its prepare ([`recover`]): it sends `Prevent` to both
//! participants and commits if both held their prepares, aborts otherwise.
//! A portal, a recovering leader on each side, and a late copy of a prepare
//! can run in any interleaving and still agree, because each participant's
//! record moves only from "nothing" to prepared or aborted, and from
//! prepared to committed or aborted, and an abort is only ever sent once a
//! participant is out for good. `tests` below checks this with a crash, a
//! lost message or a late delivery at every step and every pair of steps.
//!
//! **Prices quoted across shards.** An order written in one shard with
//! products of the other takes those products' prices in the other shard's
//! prepare (`Check::QuotePrice`), which answers them
//! (`CommandResult::PreparedQuoting`) and keeps them in its record; the
//! order's shard fills them in as it commits (`Command::CommitPriced`). So
//! an order records the prices its prepare saw, and no price is read
//! first. Once the quoting shard has committed, its record no longer holds
//! the prices, so it commits only after every other participant has
//! ([`finish`]): whoever finds the transaction later, still prepared in the
//! order's shard, finds the prices in the other's record.
//!
//! **Forgetting records.** Each shard's leader forgets finished records
//! some minutes old, but never one whose other part is still prepared
//! ([`may_forget`]): that part's recovery needs this shard's answer, and a
//! forgotten record would read as "never prepared", which aborts.
//!
//! This is the scheme of CockroachDB's parallel commits (RFC, 2018), for a
//! fixed set of two participants: the staging record that lists the
//! participants is implicit, since every cross-shard transaction spans
//! exactly both shards.

use std::future::Future;

use crate::command::{Command, CommandResult, Outcome, Rejection, TxnId, TxnPart};
use crate::state::txn::{quoted_prices, TxnState};
use crate::types::Shard;

/// A command whose answer did not come.
#[derive(Clone, Debug, PartialEq)]
pub struct NoAnswer {
    /// What went wrong.
    pub detail: String,
    /// False only if the command certainly was not applied.
    pub maybe_applied: bool,
}

impl From<crate::client::ClientError> for NoAnswer {
    fn from(error: crate::client::ClientError) -> Self {
        NoAnswer { maybe_applied: error.maybe_applied(), detail: error.to_string() }
    }
}

/// The shards' leaders, as the protocol reaches them: a portal sends
/// through its cluster client, a recovering leader proposes to itself and
/// sends to the other shard.
pub trait Participants: Sync {
    /// Has `shard`'s leader apply `command`, and returns its result.
    fn send(&self, shard: Shard, command: Command) -> impl Future<Output = Result<CommandResult, NoAnswer>> + Send;
}

/// Prices a participant's prepare quoted for an order in the other one,
/// which needs them to commit.
#[derive(Clone, Debug, PartialEq)]
pub struct Quoted {
    /// The participant that quoted them; it commits last.
    pub by: Shard,
    /// (product, unit price).
    pub prices: Vec<(u64, f64)>,
}

/// How a transaction attempt ended for its caller.
#[derive(Clone, Debug, PartialEq)]
pub enum Attempt {
    /// Both participants hold their prepares: committed. The caller runs
    /// [`finish`] with [`Outcome::Commit`] and these quoted prices, if any,
    /// after answering.
    Committed(Option<Quoted>),
    /// Aborted, or certain to abort: the refusals that caused it, none if
    /// the transaction was overtaken (recovery prevented a prepare).
    Aborted(Vec<Rejection>),
    /// Not known yet; recovery settles it. `maybe_applied` says whether it
    /// may have committed.
    Unknown(NoAnswer),
}

/// Where one participant stands, as far as this run has learned.
#[derive(Clone, Debug, PartialEq)]
enum Standing {
    /// It holds its prepare, or has committed it already; the prices its
    /// prepare quoted, if it is still prepared and quoted some.
    Prepared(Vec<(u64, f64)>),
    /// It will never hold it; the reason, if it refused.
    Out(Option<Rejection>),
    /// It refused without keeping a record: not prepared, but not yet
    /// certain never to be.
    Refused(Rejection),
    /// Its answer was lost.
    Unknown(NoAnswer),
}

impl Standing {
    fn of(answer: Result<CommandResult, NoAnswer>) -> Standing {
        match answer {
            Ok(CommandResult::Prepared | CommandResult::Committed) => Standing::Prepared(Vec::new()),
            Ok(CommandResult::PreparedQuoting(prices)) => Standing::Prepared(prices),
            Ok(CommandResult::Aborted(reason)) => Standing::Out(reason),
            Ok(CommandResult::Rejected(rejection)) => Standing::Refused(rejection),
            Ok(other) => {
                Standing::Unknown(NoAnswer { detail: format!("unexpected answer {other:?}"), maybe_applied: true })
            }
            Err(no_answer) => Standing::Unknown(no_answer),
        }
    }

    fn is_prepared(&self) -> bool {
        matches!(self, Standing::Prepared(_))
    }
}

/// The prices one of `standings` quoted, if one did.
fn quoted(standings: &[(Shard, Standing)]) -> Option<Quoted> {
    standings.iter().find_map(|(shard, standing)| match standing {
        Standing::Prepared(prices) if !prices.is_empty() => Some(Quoted { by: *shard, prices: prices.clone() }),
        _ => None,
    })
}

/// Runs one attempt of transaction `parts` (one part per shard, under one
/// id) and says how it ended. On [`Attempt::Committed`] the intents are
/// still to be resolved: the caller answers first, then runs [`finish`].
pub async fn run(participants: &impl Participants, parts: [(Shard, TxnPart); 2], decision: Shard) -> Attempt {
    let id = parts[0].1.id;
    let prepare = |(shard, part): (Shard, TxnPart)| async move {
        let command = Command::Prepare { part, decision_shard: decision, at_ms: 0 };
        (shard, Standing::of(participants.send(shard, command).await))
    };
    let [first, second] = parts;
    let (first, second) = futures::join!(prepare(first), prepare(second));
    let mut standings = [first, second];
    if standings.iter().all(|(_, s)| s.is_prepared()) {
        return Attempt::Committed(quoted(&standings));
    }
    // Make every standing certain: learn what a lost answer said, and make
    // a refusal without a record permanent.
    let uncertain = standings.iter_mut().filter(|(_, s)| matches!(s, Standing::Refused(_) | Standing::Unknown(_)));
    let learned = futures::future::join_all(uncertain.map(|(shard, standing)| async move {
        let found = Standing::of(participants.send(*shard, Command::Prevent { id, at_ms: 0 }).await);
        *standing = match (std::mem::replace(standing, Standing::Prepared(Vec::new())), found) {
            (Standing::Refused(reason), Standing::Out(None)) => Standing::Out(Some(reason)),
            (Standing::Refused(reason), Standing::Unknown(_) | Standing::Refused(_)) => Standing::Refused(reason),
            // Still not known: the prepare may have landed only if it may
            // have been applied when it was sent.
            (Standing::Unknown(sent), Standing::Refused(rejection)) => Standing::Unknown(NoAnswer {
                detail: format!("{}; asking again was refused: {rejection}", sent.detail),
                maybe_applied: sent.maybe_applied,
            }),
            (Standing::Unknown(sent), Standing::Unknown(asked)) => Standing::Unknown(NoAnswer {
                detail: format!("{}; asking again: {}", sent.detail, asked.detail),
                maybe_applied: sent.maybe_applied,
            }),
            (_, found) => found,
        };
    }));
    learned.await;
    settle(participants, id, &standings).await
}

/// The attempt's end once every standing is as certain as it can be.
async fn settle(participants: &impl Participants, id: TxnId, standings: &[(Shard, Standing); 2]) -> Attempt {
    if standings.iter().all(|(_, s)| s.is_prepared()) {
        // A lost answer was a prepare after all.
        return Attempt::Committed(quoted(standings));
    }
    if standings.iter().any(|(_, s)| matches!(s, Standing::Out(_))) {
        // One participant is out for good, so nothing can commit: drop the
        // others' prepares (a participant whose answer is lost gets a
        // tombstone or loses its prepare; either is right now).
        let others = standings.iter().filter(|(_, s)| !matches!(s, Standing::Out(_))).map(|(shard, _)| *shard);
        for (shard, result) in finish(participants, id, Outcome::Abort, others, None).await {
            if let Err(no_answer) = result {
                tracing::warn!(txn = %id, %shard, ?no_answer, "abort not confirmed; recovery will settle it");
            }
        }
        let refusals = standings.iter().filter_map(|(_, s)| match s {
            Standing::Out(reason) => reason.clone(),
            Standing::Refused(rejection) => Some(rejection.clone()),
            _ => None,
        });
        return Attempt::Aborted(refusals.collect());
    }
    // Some participant's standing is unknown, or refused and not yet made
    // permanent, and none is out for good: recovery will settle it. It may
    // have committed only if every participant may hold its prepare (a
    // refusal without a record cannot become a prepare: a copy of the same
    // write gets the same answer, see `state::once`).
    let maybe_committed = standings.iter().all(|(_, s)| match s {
        Standing::Prepared(_) => true,
        Standing::Unknown(no_answer) => no_answer.maybe_applied,
        Standing::Out(_) | Standing::Refused(_) => false,
    });
    let detail = standings.iter().filter_map(|(shard, s)| match s {
        Standing::Unknown(no_answer) => Some(format!("shard {shard}: {}", no_answer.detail)),
        Standing::Refused(rejection) => {
            Some(format!("shard {shard} refused ({rejection}) and could not be asked again"))
        }
        _ => None,
    });
    Attempt::Unknown(NoAnswer { detail: detail.collect::<Vec<_>>().join("; "), maybe_applied: maybe_committed })
}

/// Resolves transaction `id` with `outcome` on `shards`, in parallel, and
/// returns each shard's answer. Resolving is idempotent, so a caller may
/// run it again, and recovery runs it for a transaction left prepared. A
/// commit with `quoted` prices gives them to the other participants
/// (`Command::CommitPriced`) and commits the quoting one only once they
/// have committed; if one has not, the quoting one is left prepared, with
/// the prices in its record for whoever finishes the transaction later.
pub async fn finish(
    participants: &impl Participants,
    id: TxnId,
    outcome: Outcome,
    shards: impl IntoIterator<Item = Shard>,
    quoted: Option<&Quoted>,
) -> Vec<(Shard, Result<CommandResult, NoAnswer>)> {
    let resolve = |shard: Shard| async move {
        let command = match (outcome, quoted) {
            (Outcome::Commit, Some(quoted)) if quoted.by != shard => {
                Command::CommitPriced { id, prices: quoted.prices.clone(), at_ms: 0 }
            }
            _ => Command::Resolve { id, outcome, at_ms: 0 },
        };
        let result = participants.send(shard, command).await;
        if let (Outcome::Commit, Ok(CommandResult::Aborted(_))) = (outcome, &result) {
            // Commit is sent only after both participants held their
            // prepares, which nothing can abort; this is a broken invariant.
            tracing::error!(txn = %id, %shard, "a committed transaction was found aborted");
        }
        (shard, result)
    };
    let (last, first): (Vec<Shard>, Vec<Shard>) = match (outcome, quoted) {
        (Outcome::Commit, Some(quoted)) => shards.into_iter().partition(|shard| *shard == quoted.by),
        _ => (Vec::new(), shards.into_iter().collect()),
    };
    let mut results = futures::future::join_all(first.into_iter().map(resolve)).await;
    let others_committed = results.iter().all(|(_, result)| matches!(result, Ok(CommandResult::Committed)));
    for shard in last {
        let result = match others_committed {
            true => resolve(shard).await.1,
            false => Err(NoAnswer {
                detail: "left prepared, holding the prices it quoted, until the order's shard has committed".into(),
                maybe_applied: false,
            }),
        };
        results.push((shard, result));
    }
    results
}

/// Settles transaction `id`, left prepared by a portal that went away:
/// asks both participants (preventing a prepare that has not landed), then
/// resolves both with the outcome that follows. `Err` if some participant
/// did not answer; the next attempt starts over.
pub async fn recover(participants: &impl Participants, id: TxnId) -> Result<Outcome, NoAnswer> {
    let ask = |shard: Shard| async move {
        (shard, Standing::of(participants.send(shard, Command::Prevent { id, at_ms: 0 }).await))
    };
    let (even, odd) = futures::join!(ask(Shard::Even), ask(Shard::Odd));
    let quoted = quoted(&[even.clone(), odd.clone()]);
    let outcome = match [&even.1, &odd.1] {
        [Standing::Prepared(_), Standing::Prepared(_)] => Outcome::Commit,
        standings if standings.iter().any(|s| matches!(s, Standing::Out(_))) => Outcome::Abort,
        standings => {
            let detail = format!("the participants answered {standings:?}");
            return Err(NoAnswer { detail, maybe_applied: true });
        }
    };
    for (shard, result) in finish(participants, id, outcome, Shard::ALL, quoted.as_ref()).await {
        if let Err(no_answer) = result {
            return Err(NoAnswer { detail: format!("shard {shard}: {}", no_answer.detail), ..no_answer });
        }
    }
    Ok(outcome)
}

/// The prices one participant's record quoted for the other, which a
/// commit of the transaction gives to the other ([`finish`]); `records`
/// are the two shards' in [`Shard::ALL`] order.
pub fn quoted_by(records: [Option<&TxnState>; 2]) -> Option<Quoted> {
    Shard::ALL.into_iter().zip(records).find_map(|(shard, record)| match record {
        Some(TxnState::Prepared { part, .. }) => {
            let prices = quoted_prices(part);
            (!prices.is_empty()).then_some(Quoted { by: shard, prices })
        }
        _ => None,
    })
}

/// The outcome that the participants' records already fix, read without
/// changing anything (a reader meeting an intent asks this): commit if
/// both hold their prepares, abort if one is out for good, `None` while a
/// prepare may still be on its way.
pub fn settled_by(records: [Option<&TxnState>; 2]) -> Option<Outcome> {
    let prepared = |r: &Option<&TxnState>| matches!(r, Some(TxnState::Prepared { .. } | TxnState::Committed));
    if records.iter().all(prepared) {
        Some(Outcome::Commit)
    } else if records.iter().any(|r| matches!(r, Some(TxnState::Aborted(_)))) {
        Some(Outcome::Abort)
    } else {
        None
    }
}

/// Whether a shard may forget its record of a finished transaction while
/// the other participant's record is `other`. Not while that part is still
/// prepared: its recovery would ask this shard with `Prevent`, find no
/// record, record an abort, and abort a transaction that may have
/// committed here (a committed record is the only proof left that both
/// parts were prepared). Once the other part has finished, or forgotten
/// its own record (which it does only once finished), nobody asks again.
pub fn may_forget(other: Option<&TxnState>) -> bool {
    !matches!(other, Some(TxnState::Prepared { .. }))
}

#[cfg(test)]
mod tests;
