//! What the chaos suite's clients did, as the linearizability checker reads it.
//!
//! # What a history is
//!
//! A history is a flat list of [`Operation`]s on a key-value store, each one
//! a read, write or delete of one key by one client, stamped with the times
//! the client called it and saw it return. All timestamps come from one
//! monotonic clock (a [`Recorder`] owns it during a run), in nanoseconds, so
//! "A returned before B was called" is a plain comparison.
//!
//! # What an outcome promises
//!
//! - [`Outcome::Ok`]: the store acknowledged the operation; it took effect at
//!   one instant between its call and its return, and a read's `observed`
//!   value is what the register held at that instant.
//! - [`Outcome::Failed`]: the store answered that it did not apply the
//!   operation. The checker drops it.
//! - [`Outcome::Unknown`]: the client gave up (timeout, lost connection). A
//!   write may take effect at any instant after its call — even after the
//!   client stopped waiting — or never. A read carries no information.
//!
//! # How a history travels
//!
//! A chaos run saves its history as JSON lines ([`save`], [`write_jsonl`]),
//! one operation per line, so that a person can read it, trim it and re-check
//! it ([`load`], [`read_jsonl`]). Loading validates every line
//! ([`Operation::validate`]); so does the checker.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Identifies the client that issued an operation, for explanations only.
pub type ClientId = u64;

/// Nanoseconds since the start of a run, on the run's one monotonic clock.
pub type Nanos = u64;

/// What an operation asked the store to do to its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Return the key's current value (or its absence).
    Read,
    /// Set the key to this value.
    Write(String),
    /// Make the key absent.
    Delete,
}

/// What the client learned about whether its operation took effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Acknowledged: it took effect exactly once, between call and return.
    Ok,
    /// Rejected: it certainly did not take effect.
    Failed,
    /// Indeterminate: a write may have taken effect after its call, or never.
    Unknown,
}

/// One client operation on one key, as recorded by the chaos suite.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// Who issued it, so an explanation can name the client.
    pub client: ClientId,
    /// The register it touched; keys are checked independently.
    pub key: String,
    /// What it asked for.
    pub kind: OpKind,
    /// For an acknowledged read, the value it saw (`None`: the key was absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed: Option<String>,
    /// When the client sent it.
    pub called_at: Nanos,
    /// When the client got its answer; `None` if it never did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned_at: Option<Nanos>,
    /// Whether it took effect, as far as the client knows.
    pub outcome: Outcome,
}

impl Operation {
    /// An acknowledged read that saw `observed` (`None`: absent).
    pub fn read(client: ClientId, key: &str, observed: Option<&str>, called_at: Nanos, returned_at: Nanos) -> Self {
        let observed = observed.map(str::to_owned);
        Self { observed, ..Self::acknowledged(client, key, OpKind::Read, called_at, returned_at) }
    }

    /// An acknowledged write of `value`.
    pub fn write(client: ClientId, key: &str, value: &str, called_at: Nanos, returned_at: Nanos) -> Self {
        Self::acknowledged(client, key, OpKind::Write(value.to_owned()), called_at, returned_at)
    }

    /// An acknowledged delete.
    pub fn delete(client: ClientId, key: &str, called_at: Nanos, returned_at: Nanos) -> Self {
        Self::acknowledged(client, key, OpKind::Delete, called_at, returned_at)
    }

    /// The same operation, but the client never learned whether it applied.
    pub fn unknown(self) -> Self {
        Self { outcome: Outcome::Unknown, observed: None, ..self }
    }

    /// The same operation, but the store said it did not apply.
    pub fn failed(self) -> Self {
        Self { outcome: Outcome::Failed, observed: None, ..self }
    }

    /// The same operation, but the client never got any answer.
    pub fn never_returned(self) -> Self {
        Self { returned_at: None, ..self }
    }

    fn acknowledged(client: ClientId, key: &str, kind: OpKind, called_at: Nanos, returned_at: Nanos) -> Self {
        let key = key.to_owned();
        Self { client, key, kind, observed: None, called_at, returned_at: Some(returned_at), outcome: Outcome::Ok }
    }

    /// Why this record cannot describe a real operation, if it cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.returned_at.is_some_and(|returned_at| returned_at < self.called_at) {
            return Err(format!("it returned ({:?}) before it was called ({})", self.returned_at, self.called_at));
        }
        if self.outcome == Outcome::Ok && self.returned_at.is_none() {
            return Err("it is acknowledged but has no return time".to_owned());
        }
        if self.kind != OpKind::Read && self.observed.is_some() {
            return Err("only a read can observe a value".to_owned());
        }
        Ok(())
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {}'s ", self.client)?;
        match (&self.kind, &self.observed) {
            (OpKind::Read, Some(value)) => write!(f, "read of {value:?}")?,
            (OpKind::Read, None) => write!(f, "read of nothing")?,
            (OpKind::Write(value), _) => write!(f, "write of {value:?}")?,
            (OpKind::Delete, _) => write!(f, "delete")?,
        }
        write!(f, " on {:?} over [{}, ", self.key, self.called_at)?;
        match self.returned_at {
            Some(returned_at) => write!(f, "{returned_at}] ns")?,
            None => write!(f, "never] ns")?,
        }
        match self.outcome {
            Outcome::Ok => Ok(()),
            Outcome::Failed => write!(f, " (failed)"),
            Outcome::Unknown => write!(f, " (outcome unknown)"),
        }
    }
}

/// Why a history could not be loaded, saved or checked.
#[derive(Debug)]
pub enum HistoryError {
    /// The file could not be read or written.
    Io(std::io::Error),
    /// A line is not the JSON of an [`Operation`].
    Json {
        /// 1-based line number in the file.
        line: usize,
        /// What serde said.
        source: serde_json::Error,
    },
    /// An operation contradicts itself (see [`Operation::validate`]).
    Invalid {
        /// 0-based position of the operation in the history.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
}

impl HistoryError {
    /// Whether the history itself is wrong (as opposed to the file system).
    pub fn is_malformed_history(&self) -> bool {
        !matches!(self, Self::Io(_))
    }
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(error) => write!(f, "history I/O failed: {error}"),
            Self::Json { line, source } => write!(f, "history line {line} is not an operation: {source}"),
            Self::Invalid { index, reason } => write!(f, "history operation #{index} is invalid: {reason}"),
        }
    }
}

impl std::error::Error for HistoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Io(error) => Some(error),
            Self::Json { source, .. } => Some(source),
            Self::Invalid { .. } => None,
        }
    }
}

impl From<std::io::Error> for HistoryError {
    fn from(error: std::io::Error) -> Self {
        Self::Io(error)
    }
}

/// Checks every operation of a history, naming the first invalid one.
pub fn validate_history(ops: &[Operation]) -> Result<(), HistoryError> {
    for (index, op) in ops.iter().enumerate() {
        op.validate().map_err(|reason| HistoryError::Invalid { index, reason })?;
    }
    Ok(())
}

/// Writes a history as JSON lines, one operation per line.
pub fn write_jsonl(ops: &[Operation], mut out: impl Write) -> Result<(), HistoryError> {
    for op in ops {
        serde_json::to_writer(&mut out, op).map_err(std::io::Error::from)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

/// Reads and validates a history written by [`write_jsonl`]; blank lines are skipped.
pub fn read_jsonl(input: impl BufRead) -> Result<Vec<Operation>, HistoryError> {
    let mut ops = Vec::new();
    for (number, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|source| HistoryError::Json { line: number + 1, source })?;
        ops.push(op);
    }
    validate_history(&ops)?;
    Ok(ops)
}

/// Saves a history to a JSON-lines file, replacing it.
pub fn save(path: &Path, ops: &[Operation]) -> Result<(), HistoryError> {
    write_jsonl(ops, BufWriter::new(File::create(path)?))
}

/// Loads a history from a JSON-lines file.
pub fn load(path: &Path) -> Result<Vec<Operation>, HistoryError> {
    read_jsonl(BufReader::new(File::open(path)?))
}

/// Collects the operations of a chaos run, stamped from one monotonic clock.
///
/// Clients read [`Recorder::now`] before sending a request and after getting
/// (or giving up on) the answer, then [`Recorder::record`] the operation.
#[derive(Debug)]
pub struct Recorder {
    /// The instant that is 0 ns in this run's history.
    origin: Instant,
    /// Every operation recorded so far, in recording order.
    ops: Mutex<Vec<Operation>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Self {
        Self { origin: Instant::now(), ops: Mutex::new(Vec::new()) }
    }

    /// The current time on the run's clock.
    pub fn now(&self) -> Nanos {
        Nanos::try_from(self.origin.elapsed().as_nanos()).unwrap_or(Nanos::MAX)
    }

    /// Adds one finished (or abandoned) operation to the history.
    pub fn record(&self, op: Operation) {
        if let Err(reason) = op.validate() {
            panic!("the chaos suite recorded an impossible operation ({reason}): {op:?}");
        }
        self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(op);
    }

    /// A copy of the history so far, ordered by call time.
    pub fn history(&self) -> Vec<Operation> {
        let mut ops = self.ops.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        ops.sort_by_key(|op| op.called_at);
        ops
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Operation> {
        vec![
            Operation::write(1, "k", "v1", 10, 20),
            Operation::read(2, "k", Some("v1"), 15, 30),
            Operation::read(3, "k", None, 1, 5),
            Operation::delete(1, "k", 40, 50).failed(),
            Operation::write(4, "k", "v2", 60, 70).unknown().never_returned(),
        ]
    }

    #[test]
    fn json_lines_round_trip() {
        let mut buffer = Vec::new();
        write_jsonl(&sample(), &mut buffer).unwrap();
        let text = String::from_utf8(buffer.clone()).unwrap();
        assert_eq!(text.lines().count(), 5);
        assert!(text.lines().next().unwrap().contains(r#""kind":{"write":"v1"}"#), "{text}");
        assert_eq!(read_jsonl(&buffer[..]).unwrap(), sample());
    }

    #[test]
    fn file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("history.jsonl");
        save(&path, &sample()).unwrap();
        assert_eq!(load(&path).unwrap(), sample());
    }

    #[test]
    fn reading_names_the_bad_line() {
        let text = "\n{\"client\":1}\n";
        let error = read_jsonl(text.as_bytes()).unwrap_err();
        assert!(matches!(error, HistoryError::Json { line: 2, .. }), "{error}");
        assert!(error.is_malformed_history());
    }

    #[test]
    fn impossible_operations_are_rejected() {
        let backwards = Operation::write(1, "k", "v", 20, 10);
        assert!(backwards.validate().is_err());
        let unanswered_ack = Operation::write(1, "k", "v", 20, 30).never_returned();
        assert!(unanswered_ack.validate().is_err());
        let observing_write = Operation { observed: Some("x".into()), ..Operation::write(1, "k", "v", 1, 2) };
        assert!(observing_write.validate().is_err());
        let error = validate_history(&[sample()[0].clone(), backwards]).unwrap_err();
        assert!(matches!(error, HistoryError::Invalid { index: 1, .. }), "{error}");
    }

    #[test]
    fn recorder_orders_by_call_time() {
        let recorder = Recorder::new();
        let first = recorder.now();
        let second = recorder.now();
        assert!(first <= second);
        recorder.record(Operation::write(1, "k", "late", 50, 60));
        recorder.record(Operation::write(2, "k", "early", 10, 20));
        let calls: Vec<Nanos> = recorder.history().iter().map(|op| op.called_at).collect();
        assert_eq!(calls, vec![10, 50]);
    }

    #[test]
    fn display_names_client_kind_and_interval() {
        let op = Operation::write(4, "k", "v2", 60, 70).unknown().never_returned();
        assert_eq!(op.to_string(), r#"client 4's write of "v2" on "k" over [60, never] ns (outcome unknown)"#);
    }
}
