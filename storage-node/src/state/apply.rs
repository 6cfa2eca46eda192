//! The deterministic heart of the state machine: what one command does.
//!
//! [`apply_command`] reads committed rows through a [`RowSource`] and returns
//! the command's result together with the row changes to persist. It reads
//! no clock, no randomness and no network, so every replica that applies the
//! same log computes the same changes. Persisting them (atomically, with the
//! applied log id) is the caller's job.

use std::collections::BTreeMap;
use std::io;

use crate::command::{Command, CommandResult, Precondition, Rejection, Row, RowKey, RowWrite};
use crate::types::LogIndex;

/// Read access to committed rows: the only input `apply` has besides the
/// command itself.
pub trait RowSource {
    /// The committed row at `key`, if any.
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>>;
}

/// Rows changed by one command: new contents, or `None` for a deletion.
pub type RowChanges = BTreeMap<RowKey, Option<Row>>;

/// An in-memory table, for unit tests of the command language.
impl RowSource for BTreeMap<RowKey, Row> {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        Ok(self.get(key).cloned())
    }
}

/// Applies `command`, logged at `index`, to the rows in `rows`.
///
/// Returns `Err` only for an I/O failure reading `rows`, which the caller
/// must treat as fatal; a refused command is an `Ok(Rejected)` result.
pub fn apply_command(
    index: LogIndex,
    command: &Command,
    rows: &impl RowSource,
) -> io::Result<(CommandResult, RowChanges)> {
    match command {
        Command::Batch(writes) => apply_batch(index, writes, rows),
    }
}

/// All writes of a batch, or none of them.
fn apply_batch(index: LogIndex, writes: &[RowWrite], rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    if writes.is_empty() {
        let rejection = Rejection::Invalid("a batch needs at least one write".into());
        return Ok((CommandResult::Rejected(rejection), RowChanges::new()));
    }
    let mut changes = RowChanges::new();
    for write in writes {
        let key = write.key();
        let current = match changes.get(key) {
            Some(pending) => pending.clone(),
            None => rows.row(key)?,
        };
        if let Err(rejection) = check(key, write.expect(), current.as_ref()) {
            return Ok((CommandResult::Rejected(rejection), RowChanges::new()));
        }
        let new = match write {
            RowWrite::Put { value, .. } => Some(Row { version: index, value: value.clone() }),
            RowWrite::Delete { .. } => None,
        };
        changes.insert(key.clone(), new);
    }
    Ok((CommandResult::Applied { index }, changes))
}

/// Whether `expect` holds for the row currently at `key`.
fn check(key: &RowKey, expect: &Precondition, current: Option<&Row>) -> Result<(), Rejection> {
    match (expect, current) {
        (Precondition::Any, _) => Ok(()),
        (Precondition::Absent, None) => Ok(()),
        (Precondition::Absent, Some(_)) => Err(Rejection::AlreadyExists(key.clone())),
        (Precondition::Exists, Some(_)) => Ok(()),
        (Precondition::Exists, None) => Err(Rejection::NotFound(key.clone())),
        (Precondition::Version(v), Some(row)) if row.version == *v => Ok(()),
        (Precondition::Version(v), found) => {
            Err(Rejection::VersionMismatch { key: key.clone(), expected: *v, actual: found.map(|row| row.version) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> RowKey {
        RowKey::Kv(key.into())
    }

    /// Applies `command` at `index` and persists its changes into `table`.
    fn run(table: &mut BTreeMap<RowKey, Row>, index: LogIndex, command: Command) -> CommandResult {
        let (result, changes) = apply_command(index, &command, table).unwrap();
        for (key, row) in changes {
            match row {
                Some(row) => table.insert(key, row),
                None => table.remove(&key),
            };
        }
        result
    }

    #[test]
    fn create_then_create_again_is_refused() {
        let mut table = BTreeMap::new();
        let first = run(&mut table, 1, Command::single(RowWrite::create(kv("a"), "1")));
        assert_eq!(first, CommandResult::Applied { index: 1 });
        let second = run(&mut table, 2, Command::single(RowWrite::create(kv("a"), "2")));
        assert_eq!(second, CommandResult::Rejected(Rejection::AlreadyExists(kv("a"))));
        assert_eq!(table[&kv("a")], Row { version: 1, value: b"1".to_vec() });
    }

    #[test]
    fn update_and_delete_need_the_row() {
        let mut table = BTreeMap::new();
        let update = run(&mut table, 1, Command::single(RowWrite::update(kv("a"), "1")));
        assert_eq!(update, CommandResult::Rejected(Rejection::NotFound(kv("a"))));
        let delete = run(&mut table, 2, Command::single(RowWrite::delete(kv("a"))));
        assert_eq!(delete, CommandResult::Rejected(Rejection::NotFound(kv("a"))));
        assert!(table.is_empty());
    }

    #[test]
    fn a_failed_precondition_discards_the_whole_batch() {
        let mut table = BTreeMap::new();
        run(&mut table, 1, Command::single(RowWrite::create(kv("taken"), "x")));
        let batch = Command::Batch(vec![RowWrite::create(kv("new"), "y"), RowWrite::create(kv("taken"), "z")]);
        let result = run(&mut table, 2, batch);
        assert_eq!(result, CommandResult::Rejected(Rejection::AlreadyExists(kv("taken"))));
        assert!(!table.contains_key(&kv("new")), "no write of a refused batch survives");
        assert_eq!(table[&kv("taken")].value, b"x");
    }

    #[test]
    fn compare_and_set_uses_the_log_index_as_version() {
        let mut table = BTreeMap::new();
        run(&mut table, 7, Command::single(RowWrite::create(kv("a"), "1")));
        let stale = RowWrite::Put { key: kv("a"), value: b"2".to_vec(), expect: Precondition::Version(6) };
        let refused = run(&mut table, 8, Command::single(stale));
        let expected = Rejection::VersionMismatch { key: kv("a"), expected: 6, actual: Some(7) };
        assert_eq!(refused, CommandResult::Rejected(expected));
        let fresh = RowWrite::Put { key: kv("a"), value: b"3".to_vec(), expect: Precondition::Version(7) };
        assert_eq!(run(&mut table, 9, Command::single(fresh)), CommandResult::Applied { index: 9 });
        assert_eq!(table[&kv("a")], Row { version: 9, value: b"3".to_vec() });
    }

    #[test]
    fn writes_in_a_batch_see_earlier_writes_of_the_batch() {
        let mut table = BTreeMap::new();
        let batch = Command::Batch(vec![
            RowWrite::create(kv("a"), "1"),
            RowWrite::update(kv("a"), "2"),
            RowWrite::create(kv("b"), "3"),
            RowWrite::delete(kv("b")),
        ]);
        assert_eq!(run(&mut table, 4, batch), CommandResult::Applied { index: 4 });
        assert_eq!(table.len(), 1);
        assert_eq!(table[&kv("a")], Row { version: 4, value: b"2".to_vec() });
    }

    #[test]
    fn an_empty_batch_is_invalid() {
        let mut table = BTreeMap::new();
        let result = run(&mut table, 1, Command::Batch(vec![]));
        assert!(matches!(result, CommandResult::Rejected(Rejection::Invalid(_))));
    }
}
