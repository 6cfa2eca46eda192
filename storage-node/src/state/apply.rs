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

    /// Up to `limit` keys whose encoding starts with `prefix`, in key order.
    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>>;
}

/// Rows changed by one command: new contents, or `None` for a deletion.
pub type RowChanges = BTreeMap<RowKey, Option<Row>>;

/// An in-memory table, for unit tests of the command language.
impl RowSource for BTreeMap<RowKey, Row> {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        Ok(self.get(key).cloned())
    }

    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        let mut keys: Vec<_> = self.keys().filter(|k| super::keys::row_key(k).starts_with(prefix)).cloned().collect();
        keys.sort_by_key(super::keys::row_key);
        keys.truncate(limit);
        Ok(keys)
    }
}

/// Committed rows seen through the changes a command has made so far.
pub struct Staged<'a, S: RowSource> {
    /// The committed rows.
    source: &'a S,
    /// This command's changes, which take precedence.
    pub changes: RowChanges,
}

impl<'a, S: RowSource> Staged<'a, S> {
    /// A view with no changes yet.
    pub fn new(source: &'a S) -> Self {
        Staged { source, changes: RowChanges::new() }
    }

    /// The row at `key` as this command sees it.
    pub fn get(&self, key: &RowKey) -> io::Result<Option<Row>> {
        match self.changes.get(key) {
            Some(pending) => Ok(pending.clone()),
            None => self.source.row(key),
        }
    }

    /// Stores `value` at `key`, versioned `index`.
    pub fn put(&mut self, key: RowKey, index: LogIndex, value: Vec<u8>) {
        self.changes.insert(key, Some(Row { version: index, value }));
    }

    /// Removes `key`.
    pub fn delete(&mut self, key: RowKey) {
        self.changes.insert(key, None);
    }

    /// True if some row whose encoded key starts with `prefix` exists.
    pub fn any_with_prefix(&self, prefix: &[u8]) -> io::Result<bool> {
        let staged_put =
            self.changes.iter().any(|(key, row)| row.is_some() && super::keys::row_key(key).starts_with(prefix));
        if staged_put {
            return Ok(true);
        }
        let deleted = self.changes.values().filter(|row| row.is_none()).count();
        let committed = self.source.keys_with_prefix(prefix, deleted + 1)?;
        Ok(committed.iter().any(|key| !matches!(self.changes.get(key), Some(None))))
    }

    /// Committed keys under `prefix` (ignoring this command's changes).
    pub fn committed_keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        self.source.keys_with_prefix(prefix, limit)
    }
}

/// A stored record that does not decode. Every replica holds the same rows,
/// so this is a deterministic refusal of the command that met it (raised
/// as an `io::Error` so that `?` carries it out of the command's code, and
/// turned into [`Rejection::Corrupt`] by [`apply_command`]); a row that
/// cannot be read from disk at all stays a fatal I/O error.
#[derive(Debug, thiserror::Error)]
#[error("corrupt record at {key}: {detail}")]
pub struct CorruptRecord {
    /// The row.
    pub key: RowKey,
    /// What failed to decode.
    pub detail: String,
}

/// The error a command's code raises for an undecodable record at `key`.
pub fn corrupt_record(key: &RowKey, detail: String) -> io::Error {
    io::Error::other(CorruptRecord { key: key.clone(), detail })
}

/// Applies `command`, logged at `index`, to the rows in `rows`.
///
/// Total: no command makes it panic. Returns `Err` only for an I/O failure
/// reading `rows`, which the caller must treat as fatal; a refused command
/// (malformed, out of bounds, or meeting a corrupt record) is an
/// `Ok(Rejected)` result with no changes, the same on every replica.
pub fn apply_command(
    index: LogIndex,
    command: &Command,
    rows: &impl RowSource,
) -> io::Result<(CommandResult, RowChanges)> {
    match apply_unchecked(index, command, rows) {
        Err(error) => Ok((refusal_of(error)?, RowChanges::new())),
        applied => applied,
    }
}

/// A command's error as its refusal if it met a corrupt record; any other
/// error stays one.
fn refusal_of(error: io::Error) -> io::Result<CommandResult> {
    match error.get_ref().and_then(|inner| inner.downcast_ref::<CorruptRecord>()) {
        Some(CorruptRecord { key, detail }) => {
            Ok(CommandResult::Rejected(Rejection::Corrupt { key: key.clone(), detail: detail.clone() }))
        }
        None => Err(error),
    }
}

/// [`apply_command`] before corrupt records become refusals.
fn apply_unchecked(
    index: LogIndex,
    command: &Command,
    rows: &impl RowSource,
) -> io::Result<(CommandResult, RowChanges)> {
    match command {
        Command::Batch(writes) => apply_batch(index, writes, rows),
        Command::Execute { part, at_ms } => super::txn::execute(index, part, *at_ms, rows),
        Command::Prepare { part, decision_shard, at_ms } => {
            super::txn::prepare(index, part, *decision_shard, *at_ms, rows)
        }
        Command::Resolve { id, outcome, at_ms } => super::txn::resolve(index, *id, *outcome, &[], *at_ms, rows),
        Command::CommitPriced { id, prices, at_ms } => {
            super::txn::resolve(index, *id, crate::command::Outcome::Commit, prices, *at_ms, rows)
        }
        Command::PruneTxns { before_ms } => super::txn::prune(*before_ms, rows),
        Command::Mutex { ops, ttl_ms, at_ms } => super::coordination::apply_mutex(index, ops, *ttl_ms, *at_ms, rows),
        Command::KeepAlive { site, ttl_ms, at_ms } => {
            super::coordination::keep_alive(index, *site, *ttl_ms, *at_ms, rows)
        }
        Command::ExpireSessions { now_ms } => super::coordination::expire_sessions(index, *now_ms, rows),
        Command::EnterBarrier { name, participant, size, generation } => {
            super::coordination::enter_barrier(index, name, *participant, *size, *generation, rows)
        }
        Command::Many(commands) => apply_many(index, commands, rows),
        Command::PruneIdempotency { before_ms } => super::txn::prune_idempotency(*before_ms, rows),
        Command::Once { writer, seq, answered_below, at_ms, command } => {
            let id =
                super::once::WriteId { writer: *writer, seq: *seq, answered_below: *answered_below, at_ms: *at_ms };
            super::once::apply_once(index, id, command, &Dyn(rows))
        }
        Command::PruneWriters { before_ms } => super::once::prune_writers(*before_ms, rows),
        Command::Fence { hold_ms, at_ms } => Ok(super::txn::fence(index, *hold_ms, *at_ms)),
        Command::Prevent { id, at_ms } => super::txn::prevent(index, *id, *at_ms, rows),
        Command::UseLayout { layout } => super::layout::use_layout(index, *layout, rows),
    }
}

/// Applies commands in order, each over the changes of those before. The
/// write sessions of consecutive `Once` commands are kept decoded between
/// them ([`super::once::Sessions`]) and stored before any other command.
fn apply_many(index: LogIndex, commands: &[Command], rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    let mut staged = Staged::new(rows);
    let mut sessions = super::once::Sessions::default();
    let mut results = Vec::with_capacity(commands.len());
    for command in commands {
        let result = match command {
            Command::Once { writer, seq, answered_below, at_ms, command } => {
                let id =
                    super::once::WriteId { writer: *writer, seq: *seq, answered_below: *answered_below, at_ms: *at_ms };
                match super::once::apply_once_in(index, id, command, &mut staged, &mut sessions) {
                    Ok(result) => result,
                    Err(error) => refusal_of(error)?,
                }
            }
            other => {
                sessions.store(index, &mut staged);
                // Through a trait object, so a nested `Many` does not
                // instantiate an ever deeper generic type.
                let (result, changes) = apply_command(index, other, &Dyn(&staged))?;
                staged.changes.extend(changes);
                result
            }
        };
        results.push(result);
    }
    sessions.store(index, &mut staged);
    Ok((CommandResult::Many(results), staged.changes))
}

/// Any row source, behind one concrete type.
pub(super) struct Dyn<'a>(pub(super) &'a dyn RowSource);

impl RowSource for Dyn<'_> {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        self.0.row(key)
    }

    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        self.0.keys_with_prefix(prefix, limit)
    }
}

/// A staged view is itself a row source, so commands can be chained.
impl<S: RowSource> RowSource for Staged<'_, S> {
    fn row(&self, key: &RowKey) -> io::Result<Option<Row>> {
        self.get(key)
    }

    fn keys_with_prefix(&self, prefix: &[u8], limit: usize) -> io::Result<Vec<RowKey>> {
        let deleted = self.changes.values().filter(|row| row.is_none()).count();
        let mut keys: std::collections::BTreeSet<RowKey> = self
            .source
            .keys_with_prefix(prefix, limit.saturating_add(deleted))?
            .into_iter()
            .filter(|key| !matches!(self.changes.get(key), Some(None)))
            .collect();
        for (key, row) in &self.changes {
            if row.is_some() && super::keys::row_key(key).starts_with(prefix) {
                keys.insert(key.clone());
            }
        }
        let mut keys: Vec<RowKey> = keys.into_iter().collect();
        keys.sort_by_key(super::keys::row_key);
        keys.truncate(limit);
        Ok(keys)
    }
}

/// All writes of a batch, or none of them.
fn apply_batch(index: LogIndex, writes: &[RowWrite], rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    if let Some(rejection) = super::bounds::batch_refusal(writes) {
        return Ok((CommandResult::Rejected(rejection), RowChanges::new()));
    }
    let mut staged = Staged::new(rows);
    for write in writes {
        let key = write.key();
        if let Some(holder) = super::txn::lock_holder(&staged, key)? {
            let rejection = Rejection::Locked { key: key.clone(), holder };
            return Ok((CommandResult::Rejected(rejection), RowChanges::new()));
        }
        let current = staged.get(key)?;
        if let Err(rejection) = check(key, write.expect(), current.as_ref()) {
            return Ok((CommandResult::Rejected(rejection), RowChanges::new()));
        }
        match write {
            RowWrite::Put { value, .. } => staged.put(key.clone(), index, value.clone()),
            RowWrite::Delete { .. } => staged.delete(key.clone()),
        }
    }
    Ok((CommandResult::Applied { index }, staged.changes))
}

/// Whether `expect` holds for the row currently at `key`.
pub(super) fn check(key: &RowKey, expect: &Precondition, current: Option<&Row>) -> Result<(), Rejection> {
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
    fn many_applies_in_order_and_each_sees_the_ones_before() {
        let mut table = BTreeMap::new();
        let many = Command::Many(vec![
            Command::single(RowWrite::create(kv("a"), "1")),
            Command::single(RowWrite::create(kv("a"), "2")),
            Command::single(RowWrite::update(kv("a"), "3")),
        ]);
        let expected = CommandResult::Many(vec![
            CommandResult::Applied { index: 5 },
            CommandResult::Rejected(Rejection::AlreadyExists(kv("a"))),
            CommandResult::Applied { index: 5 },
        ]);
        assert_eq!(run(&mut table, 5, many), expected);
        assert_eq!(table[&kv("a")], Row { version: 5, value: b"3".to_vec() });
    }

    #[test]
    fn an_empty_batch_is_invalid() {
        let mut table = BTreeMap::new();
        let result = run(&mut table, 1, Command::Batch(vec![]));
        assert!(matches!(result, CommandResult::Rejected(Rejection::Invalid(_))));
    }
}
