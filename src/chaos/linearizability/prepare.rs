//! Turning one key's operations into the compact form the search walks.
//!
//! - Failed operations and reads of unknown outcome carry no information and
//!   are dropped.
//! - Values become small ids. Every value no acknowledged read observed is
//!   merged into [`UNREAD`]: a register holding any of them looks the same to
//!   every read (none matches), so merging loses nothing and lets the search
//!   treat states that differ only in an unread value as one.
//! - A write of unknown outcome becomes optional. Once every read that
//!   observed its value has returned, applying it could no longer be seen by
//!   anyone, so "never applied" is as good as "applied later": its
//!   [`Deadline::Optional`] is the last such return, and a write whose value
//!   nobody read is dropped outright.
//! - A read of a value that no write could have produced in time is reported
//!   at once, with a plainer explanation than the search could give.

use std::collections::HashMap;

use super::Violation;
use crate::chaos::history::{Nanos, OpKind, Operation, Outcome};

/// A value's number within one key; see [`ABSENT`] and [`UNREAD`].
pub(super) type ValueId = u32;

/// The key holds no value (its initial state, and what a delete leaves).
pub(super) const ABSENT: ValueId = 0;

/// The key holds some value that no acknowledged read observed.
pub(super) const UNREAD: ValueId = 1;

/// What an operation does to the register when it takes effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    /// Succeeds only if the register holds this value; changes nothing.
    Read(ValueId),
    /// Sets the register to this value (a delete writes [`ABSENT`]).
    Write(ValueId),
}

/// By when an operation must have taken effect, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Deadline {
    /// Acknowledged: it took effect no later than this return time.
    Required(Nanos),
    /// Unknown outcome: if it did not take effect by this time, it may be
    /// treated as never applied.
    Optional(Nanos),
}

impl Deadline {
    /// The time at which the search must decide about the operation.
    pub(super) fn at(self) -> Nanos {
        match self {
            Self::Required(at) | Self::Optional(at) => at,
        }
    }
}

/// One operation of the key, as the search sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct KeyOp {
    /// Where the operation sits in the checked history, for explanations.
    pub(super) input_index: usize,
    /// What it does to the register.
    pub(super) effect: Effect,
    /// It cannot take effect before this time.
    pub(super) called_at: Nanos,
    /// It must take effect by this time, or (if optional) be dropped then.
    pub(super) deadline: Deadline,
}

impl KeyOp {
    /// Whether every linearization must contain this operation.
    pub(super) fn is_required(&self) -> bool {
        matches!(self.deadline, Deadline::Required(_))
    }
}

/// One key's history, ready to search.
#[derive(Debug)]
pub(super) struct KeyHistory {
    /// The key, for explanations.
    pub(super) key: String,
    /// The operations that matter, in call order (which keeps memo entries short).
    pub(super) ops: Vec<KeyOp>,
    /// The observed value each id stands for, from id 2 on.
    observed_values: Vec<String>,
}

impl KeyHistory {
    /// How many distinct register states the search distinguishes.
    pub(super) fn value_count(&self) -> usize {
        self.observed_values.len() + 2
    }

    /// How many operations every linearization must contain.
    pub(super) fn required_count(&self) -> usize {
        self.ops.iter().filter(|op| op.is_required()).count()
    }

    /// The register holding `value`, in words.
    pub(super) fn describe(&self, value: ValueId) -> String {
        match value {
            ABSENT => "no value".to_owned(),
            UNREAD => "a value no read observed".to_owned(),
            id => format!("{:?}", self.observed_values[id as usize - 2]),
        }
    }
}

/// Prepares the operations `indices` of `history`, which all touch `key`.
pub(super) fn prepare(key: &str, history: &[Operation], indices: &[usize]) -> Result<KeyHistory, Violation> {
    let relevant: Vec<usize> = indices.iter().copied().filter(|&index| carries_information(&history[index])).collect();
    let values = ValueIds::from_reads(history, &relevant);
    let ops: Vec<KeyOp> = relevant.iter().map(|&index| values.key_op(index, &history[index])).collect();
    check_reads_have_writers(key, history, &ops)?;
    let latest_reads = latest_read_returns(&ops, values.ids.len() + 2);
    let mut ops: Vec<KeyOp> = ops.into_iter().filter_map(|op| settle_optional(op, &latest_reads)).collect();
    ops.sort_by_key(|op| op.called_at);
    Ok(KeyHistory { key: key.to_owned(), ops, observed_values: values.into_observed_values() })
}

/// Whether an operation constrains the register's history at all.
fn carries_information(op: &Operation) -> bool {
    match op.outcome {
        Outcome::Ok => true,
        Outcome::Failed => false,
        Outcome::Unknown => op.kind != OpKind::Read,
    }
}

/// The ids of the values acknowledged reads observed, in order of first sight.
struct ValueIds<'h> {
    /// Observed value to id (ids start at 2).
    ids: HashMap<&'h str, ValueId>,
}

impl<'h> ValueIds<'h> {
    fn from_reads(history: &'h [Operation], relevant: &[usize]) -> Self {
        let mut ids = HashMap::new();
        let observed = relevant.iter().filter_map(|&index| history[index].observed.as_deref());
        for value in observed {
            let next = ValueId::try_from(ids.len() + 2).expect("fewer than 2^32 distinct values per key");
            ids.entry(value).or_insert(next);
        }
        Self { ids }
    }

    fn id(&self, value: Option<&str>) -> ValueId {
        value.map_or(ABSENT, |value| self.ids.get(value).copied().unwrap_or(UNREAD))
    }

    fn key_op(&self, input_index: usize, op: &Operation) -> KeyOp {
        let effect = match &op.kind {
            OpKind::Read => Effect::Read(self.id(op.observed.as_deref())),
            OpKind::Write(value) => Effect::Write(self.id(Some(value))),
            OpKind::Delete => Effect::Write(ABSENT),
        };
        let deadline = match (op.outcome, op.returned_at) {
            (Outcome::Ok, Some(returned_at)) => Deadline::Required(returned_at),
            // Settled by `settle_optional` once all reads are known.
            _ => Deadline::Optional(Nanos::MAX),
        };
        KeyOp { input_index, effect, called_at: op.called_at, deadline }
    }

    fn into_observed_values(self) -> Vec<String> {
        let mut by_id: Vec<(ValueId, &str)> = self.ids.into_iter().map(|(value, id)| (id, value)).collect();
        by_id.sort_unstable();
        by_id.into_iter().map(|(_, value)| value.to_owned()).collect()
    }
}

/// Reports the first read that saw a value no write was called in time to produce.
fn check_reads_have_writers(key: &str, history: &[Operation], ops: &[KeyOp]) -> Result<(), Violation> {
    let mut first_write_call: HashMap<ValueId, Nanos> = HashMap::new();
    for op in ops {
        if let Effect::Write(value) = op.effect {
            let first = first_write_call.entry(value).or_insert(op.called_at);
            *first = (*first).min(op.called_at);
        }
    }
    for op in ops {
        let Effect::Read(value) = op.effect else { continue };
        let read = &history[op.input_index];
        let explanation = match first_write_call.get(&value) {
            _ if value == ABSENT => continue,
            None => format!("{read} saw a value that no write which may have taken effect ever wrote"),
            Some(&called_at) if called_at > op.deadline.at() => {
                format!("{read} saw a value whose first write was only called at {called_at} ns")
            }
            Some(_) => continue,
        };
        return Err(Violation { key: key.to_owned(), op_index: op.input_index, explanation });
    }
    Ok(())
}

/// For each value id, the latest return of an acknowledged read that observed it.
fn latest_read_returns(ops: &[KeyOp], value_count: usize) -> Vec<Option<Nanos>> {
    let mut latest = vec![None; value_count];
    for op in ops {
        if let Effect::Read(value) = op.effect {
            let slot: &mut Option<Nanos> = &mut latest[value as usize];
            *slot = Some(slot.map_or(op.deadline.at(), |at| at.max(op.deadline.at())));
        }
    }
    latest
}

/// Gives an optional write its decision time, or drops it if no read can see it.
fn settle_optional(op: KeyOp, latest_reads: &[Option<Nanos>]) -> Option<KeyOp> {
    let (Deadline::Optional(_), Effect::Write(value)) = (op.deadline, op.effect) else { return Some(op) };
    let last_seen = latest_reads[value as usize].filter(|&at| at >= op.called_at)?;
    Some(KeyOp { deadline: Deadline::Optional(last_seen), ..op })
}
