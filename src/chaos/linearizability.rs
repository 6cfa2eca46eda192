//! Is a recorded history linearizable, key by key?
//!
//! # What is checked
//!
//! Each key is a register: it starts absent, a write sets it, a delete makes
//! it absent again, a read returns what it holds. A history is linearizable
//! if every acknowledged operation can be given one instant between its call
//! and its return such that, taken in that order, every read returns what
//! the register holds. A write of unknown outcome may get an instant anywhere
//! after its call, or none at all; failed operations and reads of unknown
//! outcome are ignored (see [`crate::chaos::history`]).
//!
//! # How
//!
//! Linearizability is local (Herlihy & Wing), and a key-value store is
//! P-compositional in the sense of Horn & Kroening: a history is
//! linearizable iff each key's sub-history is. So [`check_history`] splits the history by key and
//! checks each key on its own:
//!
//! 1. `prepare` drops what carries no information, numbers the values,
//!    gives unknown writes a point after which they count as never applied,
//!    and reports reads of values no write could have produced.
//! 2. `search` runs the Wing–Gong backtracking search with Lowe's
//!    memoization of (operations done, register value) states — the
//!    algorithm of Knossos and porcupine — over an `events` list.
//!
//! # Time and memory
//!
//! The search is exponential in the worst case, so the caller gives a time
//! budget. Keys share it round-robin: each round gives every unfinished key
//! an equal slice of what is left, and a search that runs out of its slice
//! resumes where it stopped in the next round. Memory is bounded too: all
//! searches together remember at most [`MAX_REMEMBERED_STATES`] states, and
//! a key whose search needs more is given up on. A key still undecided when
//! the budget is spent, or given up on, is [`KeyVerdict::Unknown`] — never a
//! pass — and so is the whole history unless another key is a violation.
//!
//! Values need not be unique for the result to be right; unique values (as
//! the chaos workload writes them) only make the search faster.

mod events;
mod memo;
#[cfg(test)]
mod oracle;
mod prepare;
mod search;
#[cfg(test)]
mod simulation;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use self::prepare::prepare;
use self::search::{DeadEnd, Finding, Progress, Search};
use crate::chaos::history::{validate_history, HistoryError, Operation};

/// The budget beyond which no deadline is computed (it would overflow `Instant`).
const UNBOUNDED_BUDGET: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How many search states all keys' memos may hold together (about 200 bytes each).
pub const MAX_REMEMBERED_STATES: usize = 3_000_000;

/// The verdict on a whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every key is linearizable.
    Linearizable,
    /// At least one key is not.
    Violation,
    /// No key is a violation, but at least one was not decided within the budget.
    Unknown,
}

/// Why one key's history is not linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The key whose history admits no linearization.
    pub key: String,
    /// The position, in the checked history, of the operation that could not be placed.
    pub op_index: usize,
    /// One or two sentences a person can act on.
    pub explanation: String,
}

/// The verdict on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    Violation(Violation),
    /// The time or memory budget ran out first; this is not a pass.
    Unknown {
        /// How far the search got, to size the next budget.
        states_explored: usize,
    },
}

/// The outcome of [`check_history`].
#[derive(Clone, Debug)]
pub struct Report {
    /// The overall verdict: any violation, else any unknown, else linearizable.
    pub verdict: Verdict,
    /// One verdict per key that occurs in the history.
    pub keys: BTreeMap<String, KeyVerdict>,
    /// How long the check took.
    pub elapsed: Duration,
}

impl Report {
    fn new(keys: BTreeMap<String, KeyVerdict>, elapsed: Duration) -> Self {
        let violation = keys.values().any(|verdict| matches!(verdict, KeyVerdict::Violation(_)));
        let unknown = keys.values().any(|verdict| matches!(verdict, KeyVerdict::Unknown { .. }));
        let verdict = match (violation, unknown) {
            (true, _) => Verdict::Violation,
            (false, true) => Verdict::Unknown,
            (false, false) => Verdict::Linearizable,
        };
        Self { verdict, keys, elapsed }
    }

    /// The violations found, by key.
    pub fn violations(&self) -> impl Iterator<Item = &Violation> {
        self.keys.values().filter_map(|verdict| match verdict {
            KeyVerdict::Violation(violation) => Some(violation),
            _ => None,
        })
    }

    /// The keys the budget did not suffice for.
    pub fn unknown_keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().filter(|(_, verdict)| matches!(verdict, KeyVerdict::Unknown { .. })).map(|(key, _)| &**key)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({} keys checked in {:?})", self.verdict, self.keys.len(), self.elapsed)?;
        for violation in self.violations() {
            write!(f, "\n  key {:?}: {}", violation.key, violation.explanation)?;
        }
        let unknown: Vec<&str> = self.unknown_keys().collect();
        if !unknown.is_empty() {
            write!(f, "\n  undecided within the budget: {unknown:?}")?;
        }
        Ok(())
    }
}

/// Checks every key of `history` for linearizability within `budget` of wall time.
///
/// Fails only if an operation contradicts itself (see [`Operation::validate`]).
pub fn check_history(history: &[Operation], budget: Duration) -> Result<Report, HistoryError> {
    validate_history(history)?;
    let started = Instant::now();
    let deadline = started + budget.min(UNBOUNDED_BUDGET);
    let mut verdicts = BTreeMap::new();
    let mut searches = Vec::new();
    for (key, indices) in ops_by_key(history) {
        match prepare(key, history, &indices) {
            Ok(key_history) => searches.push(Search::new(key_history)),
            Err(violation) => {
                verdicts.insert(key.to_owned(), KeyVerdict::Violation(violation));
            }
        }
    }
    share_time(searches, deadline, history, &mut verdicts);
    Ok(Report::new(verdicts, started.elapsed()))
}

/// The positions of each key's operations, in history order.
fn ops_by_key(history: &[Operation]) -> BTreeMap<&str, Vec<usize>> {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (index, op) in history.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(index);
    }
    by_key
}

/// Runs the searches round-robin until each concludes or gives up, or `deadline` passes.
fn share_time(
    mut searches: Vec<Search>,
    deadline: Instant,
    history: &[Operation],
    verdicts: &mut BTreeMap<String, KeyVerdict>,
) {
    while !searches.is_empty() && Instant::now() < deadline {
        let mut remembered: usize = searches.iter().map(Search::states_explored).sum();
        let round = searches.len();
        let mut unfinished = Vec::new();
        for (position, mut search) in searches.into_iter().enumerate() {
            let now = Instant::now();
            let keys_left_in_round = u32::try_from(round - position).unwrap_or(u32::MAX);
            let slice_end = now + deadline.saturating_duration_since(now) / keys_left_in_round;
            let others = remembered - search.states_explored();
            let progress = search.run(slice_end, MAX_REMEMBERED_STATES.saturating_sub(others));
            let key = search.history().key.clone();
            match progress {
                Progress::Decided(finding) => {
                    verdicts.insert(key, verdict_of(&search, finding, history));
                    remembered = others;
                }
                Progress::OutOfMemory => {
                    verdicts.insert(key, unknown(&search));
                    remembered = others;
                }
                Progress::Paused => {
                    remembered = others + search.states_explored();
                    unfinished.push(search);
                }
            }
        }
        searches = unfinished;
    }
    for search in searches {
        verdicts.insert(search.history().key.clone(), unknown(&search));
    }
}

fn unknown(search: &Search) -> KeyVerdict {
    KeyVerdict::Unknown { states_explored: search.states_explored() }
}

fn verdict_of(search: &Search, finding: Finding, history: &[Operation]) -> KeyVerdict {
    match finding {
        Finding::Linearizable => KeyVerdict::Linearizable,
        Finding::Violation(dead_end) => KeyVerdict::Violation(explain(search, dead_end, history)),
    }
}

/// Words the deepest dead end of a failed search for a person.
fn explain(search: &Search, dead_end: DeadEnd, history: &[Operation]) -> Violation {
    let key_history = search.history();
    let op_index = key_history.ops[dead_end.op].input_index;
    let prefix = format!(
        "no order of this key's operations respects both real time and the register; at best {} of its {} \
         acknowledged operations can be ordered, leaving the register holding {}",
        dead_end.placed,
        key_history.required_count(),
        key_history.describe(dead_end.register),
    );
    let blocked = &history[op_index];
    let explanation = match dead_end.stranded_read {
        Some(read) => {
            let read = &history[key_history.ops[read].input_index];
            format!("{prefix}, which {read} still has to see, so {blocked} cannot take effect before it returns")
        }
        None => format!("{prefix}, and then {blocked} cannot take effect before it returns"),
    };
    Violation { key: key_history.key.clone(), op_index, explanation }
}
