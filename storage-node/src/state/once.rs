//! Writes applied at most once, however often a caller sends them.
//!
//! A caller that sent a write and got no answer (the leader died, the
//! attempt timed out) cannot tell whether it was applied. Sending it again
//! elsewhere is the only way to finish the call, but a plain command would
//! then take effect twice — and in between, another caller's write may have
//! changed the row (a put, a delete by someone else, the same put again:
//! the value comes back from the dead). So every write a
//! [`crate::client::ShardClient`] sends travels inside [`Command::Once`],
//! numbered within the client's *write session* (Raft thesis, section 6.3):
//!
//! - the first copy to be applied applies the command and records its
//!   result in the session's `Writer` row;
//! - a later copy finds that result and gets it back, changing nothing;
//! - each write also says below which number every write of the session
//!   has been answered (`answered_below`); their results are no longer
//!   needed and go, and a copy of such a write that turns up late (stuck in
//!   a dead leader's log, or in the network) is refused with
//!   [`Rejection::LateCopy`] rather than applied — nobody waits for its
//!   answer any more.
//!
//! The results live in the session's one row rather than one row per
//! write: the writes of a batched log entry then change one row per
//! session, not three per write (measured: per-write rows cost a quarter
//! of kv-put's throughput at 256 clients). The row holds at most
//! [`MAX_WRITES_IN_FLIGHT`] results; a write beyond that is refused, the
//! same way on every replica. A `WriterIdle(minute, writer)` index row says
//! when the session was last used, and the leader proposes `PruneWriters`
//! to forget sessions idle for longer than [`crate::limits::WRITER_IDLE`].
//! Space is thus bounded by the writes in flight plus one row per recently
//! active client.
//!
//! Everything here is pure: rows in, result and row changes out.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io;

use serde::{Deserialize, Serialize};

use super::apply::{apply_command, corrupt_record, Dyn, RowChanges, RowSource, Staged};
use super::keys;
use crate::command::{Command, CommandResult, Rejection, RowKey, Table};
use crate::records::shop::{decode_record, encode_record};
use crate::types::LogIndex;

/// Most unanswered writes one session may have recorded. A client numbers
/// a write when it sends it and counts it answered when its call ends, so
/// this bounds the calls in flight through one client (the portals, the
/// bench) to one shard.
pub const MAX_WRITES_IN_FLIGHT: usize = 4_096;
/// Most idle sessions one `PruneWriters` entry forgets.
pub const PRUNE_SESSIONS: usize = 1_000;

/// A write session as the shard knows it (the value of a `Writer` row).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct WriterRecord {
    /// Every write numbered below this has been answered; a copy of one is
    /// refused.
    pub answered_below: u64,
    /// The minute (since the epoch) of the session's last write: the key of
    /// its `WriterIdle` index row.
    pub idle_minute: u64,
    /// The result of each applied write numbered `answered_below` or more,
    /// in number order.
    pub replies: Vec<(u64, CommandResult)>,
}

/// One `Once` command's identity.
#[derive(Clone, Copy, Debug)]
pub struct WriteId {
    /// The session.
    pub writer: u64,
    /// The write's number in it.
    pub seq: u64,
    /// The session's watermark as the caller sent it.
    pub answered_below: u64,
    /// The leader's clock when proposed.
    pub at_ms: u64,
}

/// The write sessions the `Once` commands of one log entry read and
/// change: each is decoded from its row once and encoded back once, after
/// the entry's last write of it ([`Sessions::store`]), not once per write.
/// A batched entry holds up to hundreds of one client's writes, and every
/// re-encoding copies every result the session still records. The rows an
/// entry leaves are the same either way.
#[derive(Default)]
pub struct Sessions {
    /// By writer: the session, and whether a write that was not refused
    /// used it (only those change its row).
    open: BTreeMap<u64, (WriterRecord, bool)>,
}

impl Sessions {
    /// Writes every session a write used back into its row, versioned
    /// `index`, and forgets them all.
    pub fn store<S: RowSource>(&mut self, index: LogIndex, staged: &mut Staged<'_, S>) {
        for (writer, (session, used)) in std::mem::take(&mut self.open) {
            if used {
                staged.put(RowKey::Writer(writer), index, encode_record(&session));
            }
        }
    }
}

/// Applies `command` (logged at `index`) unless a copy of write `id` was
/// applied before, in which case that copy's result is the answer.
pub fn apply_once(
    index: LogIndex,
    id: WriteId,
    command: &Command,
    rows: &impl RowSource,
) -> io::Result<(CommandResult, RowChanges)> {
    let mut staged = Staged::new(rows);
    let mut sessions = Sessions::default();
    let result = apply_once_in(index, id, command, &mut staged, &mut sessions)?;
    sessions.store(index, &mut staged);
    Ok((result, staged.changes))
}

/// [`apply_once`] as one of an entry's writes: the command's changes go
/// into `staged`, the session's into `sessions`, which the caller stores
/// after the entry's last `Once` (or before anything else reads rows). A
/// refused write changes neither.
pub fn apply_once_in<S: RowSource>(
    index: LogIndex,
    id: WriteId,
    command: &Command,
    staged: &mut Staged<'_, S>,
    sessions: &mut Sessions,
) -> io::Result<CommandResult> {
    if let Entry::Vacant(unread) = sessions.open.entry(id.writer) {
        let key = RowKey::Writer(id.writer);
        if let Some(row) = staged.get(&key)? {
            let session = decode_record::<WriterRecord>(&row.value).map_err(|detail| corrupt_record(&key, detail))?;
            unread.insert((session, false));
        }
    }
    // A caller never sends a watermark above the write it sends (the write
    // itself is unanswered), so one that does is held at the write.
    let answered_below = id.answered_below.min(id.seq);
    if let Some((stored, _)) = sessions.open.get(&id.writer) {
        if id.seq < stored.answered_below {
            return Ok(CommandResult::Rejected(Rejection::LateCopy { writer: id.writer, seq: id.seq }));
        }
        // The results kept once this write's watermark drops the answered ones.
        let floor = stored.answered_below.max(answered_below);
        let kept = &stored.replies[stored.replies.partition_point(|(seq, _)| *seq < floor)..];
        if kept.len() >= MAX_WRITES_IN_FLIGHT && kept.binary_search_by_key(&id.seq, |(seq, _)| *seq).is_err() {
            let reason =
                format!("session {:016x} has {MAX_WRITES_IN_FLIGHT} writes in flight, the most it may have", id.writer);
            return Ok(CommandResult::Rejected(Rejection::Invalid(reason)));
        }
    }
    let minute = id.at_ms / 60_000;
    let (session, used) = sessions.open.entry(id.writer).or_insert_with(|| {
        staged.put(RowKey::WriterIdle(minute, id.writer), index, Vec::new());
        (WriterRecord { answered_below, idle_minute: minute, replies: Vec::new() }, false)
    });
    *used = true;
    session.answered_below = session.answered_below.max(answered_below);
    let floor = session.answered_below;
    session.replies.retain(|(seq, _)| *seq >= floor);
    let result = match session.replies.binary_search_by_key(&id.seq, |(seq, _)| *seq) {
        Ok(at) => session.replies[at].1.clone(),
        Err(at) => {
            // Through a trait object, so a nested command does not
            // instantiate an ever deeper generic type.
            let (result, changes) = apply_command(index, command, &Dyn(&*staged))?;
            staged.changes.extend(changes);
            session.replies.insert(at, (id.seq, result.clone()));
            result
        }
    };
    if session.idle_minute != minute {
        staged.delete(RowKey::WriterIdle(session.idle_minute, id.writer));
        staged.put(RowKey::WriterIdle(minute, id.writer), index, Vec::new());
        session.idle_minute = minute;
    }
    Ok(result)
}

/// Forgets sessions whose last write was in a minute before `before_ms`'s.
pub fn prune_writers(before_ms: u64, rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    let mut staged = Staged::new(rows);
    let cutoff_minute = before_ms / 60_000;
    let idle = staged.committed_keys_with_prefix(&keys::table_prefix(Table::WritersIdle), PRUNE_SESSIONS)?;
    for key in idle {
        let RowKey::WriterIdle(minute, writer) = key else { continue };
        if minute >= cutoff_minute {
            break;
        }
        staged.delete(RowKey::Writer(writer));
        staged.delete(RowKey::WriterIdle(minute, writer));
    }
    Ok((CommandResult::Committed, staged.changes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::{Row, RowWrite};

    type Table = BTreeMap<RowKey, Row>;

    fn run(table: &mut Table, index: LogIndex, command: Command) -> CommandResult {
        let (result, changes) = super::super::apply::apply_command(index, &command, table).expect("in memory");
        for (key, row) in changes {
            match row {
                Some(row) => table.insert(key, row),
                None => table.remove(&key),
            };
        }
        result
    }

    fn once(seq: u64, answered_below: u64, at_ms: u64, command: Command) -> Command {
        Command::Once { writer: 0xabc, seq, answered_below, at_ms, command: Box::new(command) }
    }

    fn put(value: &str) -> Command {
        Command::single(RowWrite::upsert(RowKey::Kv("k".into()), value.as_bytes().to_vec()))
    }

    fn delete() -> Command {
        Command::single(RowWrite::delete(RowKey::Kv("k".into())))
    }

    fn value(table: &Table) -> Option<&[u8]> {
        table.get(&RowKey::Kv("k".into())).map(|row| row.value.as_slice())
    }

    /// The numbers of the results recorded, over all sessions.
    fn replies(table: &Table) -> Vec<u64> {
        let sessions = table.iter().filter(|(key, _)| matches!(key, RowKey::Writer(_)));
        let records = sessions.map(|(_, row)| decode_record::<WriterRecord>(&row.value).unwrap());
        records.flat_map(|record| record.replies.into_iter().map(|(seq, _)| seq)).collect()
    }

    #[test]
    fn a_copy_applied_after_another_callers_delete_changes_nothing() {
        let mut table = Table::new();
        let first = run(&mut table, 1, once(1, 1, 1_000, put("v")));
        assert_eq!(first, CommandResult::Applied { index: 1 });
        run(&mut table, 2, delete());
        let copy = run(&mut table, 3, once(1, 1, 1_500, put("v")));
        assert_eq!(copy, first, "the copy gets the first copy's answer");
        assert_eq!(value(&table), None, "and does not bring the deleted value back");
    }

    #[test]
    fn a_refused_write_is_refused_again_even_when_it_would_now_pass() {
        let mut table = Table::new();
        let create = || Command::single(RowWrite::create(RowKey::Kv("k".into()), b"mine".to_vec()));
        run(&mut table, 1, put("theirs"));
        let first = run(&mut table, 2, once(1, 1, 0, create()));
        assert!(matches!(first, CommandResult::Rejected(Rejection::AlreadyExists(_))), "{first:?}");
        run(&mut table, 3, delete());
        assert_eq!(run(&mut table, 4, once(1, 1, 0, create())), first);
        assert_eq!(value(&table), None);
    }

    #[test]
    fn answered_writes_lose_their_records_and_late_copies_are_refused() {
        let mut table = Table::new();
        for seq in 1..=3 {
            run(&mut table, seq, once(seq, 1, 0, put("v")));
        }
        assert_eq!(replies(&table), [1, 2, 3]);
        run(&mut table, 4, once(4, 3, 0, put("w")));
        assert_eq!(replies(&table), [3, 4], "writes 1 and 2 were answered");
        let late = run(&mut table, 5, once(2, 1, 0, put("stale")));
        assert_eq!(late, CommandResult::Rejected(Rejection::LateCopy { writer: 0xabc, seq: 2 }));
        assert_eq!(value(&table), Some(&b"w"[..]), "the late copy did not apply");
    }

    #[test]
    fn a_watermark_beyond_the_write_itself_is_held_at_the_write() {
        let mut table = Table::new();
        run(&mut table, 1, once(5, 99, 0, put("v")));
        assert_eq!(replies(&table), [5], "its own record stays");
        assert_eq!(run(&mut table, 2, once(5, 5, 0, put("v"))), CommandResult::Applied { index: 1 });
    }

    #[test]
    fn a_session_records_a_bounded_number_of_writes_in_flight() {
        let mut table = Table::new();
        let limit = MAX_WRITES_IN_FLIGHT as u64;
        for seq in 0..limit {
            run(&mut table, seq + 1, once(seq, 0, 0, put("v")));
        }
        let refused = run(&mut table, limit + 1, once(limit, 0, 0, put("one too many")));
        assert!(matches!(&refused, CommandResult::Rejected(Rejection::Invalid(why)) if why.contains("in flight")));
        assert_eq!(value(&table), Some(&b"v"[..]), "the refused write did not apply");
        let answered = run(&mut table, limit + 2, once(limit, limit, 0, put("w")));
        assert_eq!(answered, CommandResult::Applied { index: limit + 2 }, "once the others are answered it goes");
        assert_eq!(replies(&table), [limit]);
    }

    #[test]
    fn idle_sessions_are_forgotten_with_their_records() {
        let mut table = Table::new();
        run(&mut table, 1, once(1, 1, 60_000, put("v")));
        run(&mut table, 2, once(2, 1, 150_000, put("v")));
        let other = Command::Once { writer: 7, seq: 1, answered_below: 1, at_ms: 600_000, command: Box::new(put("x")) };
        run(&mut table, 3, other);
        let idle: Vec<_> = table.keys().filter(|k| matches!(k, RowKey::WriterIdle(..))).cloned().collect();
        assert_eq!(idle, [RowKey::WriterIdle(2, 0xabc), RowKey::WriterIdle(10, 7)], "one index row per session");
        run(&mut table, 4, Command::PruneWriters { before_ms: 180_000 });
        assert_eq!(run(&mut table, 4, Command::PruneWriters { before_ms: 180_000 }), CommandResult::Committed);
        assert!(!table.contains_key(&RowKey::Writer(0xabc)));
        assert!(table.contains_key(&RowKey::Writer(7)), "the recent session stays");
        assert_eq!(replies(&table), [1], "only the recent session's record is left");
    }

    /// The writes of one entry, applied together (sessions decoded once)
    /// and one after another (each session read and written per write),
    /// leave the same results and the same rows.
    #[test]
    fn an_entry_of_many_writes_leaves_what_its_writes_leave_one_by_one() {
        let other = |seq, answered_below, at_ms, command| Command::Once {
            writer: 7,
            seq,
            answered_below,
            at_ms,
            command: Box::new(command),
        };
        let mut table = Table::new();
        run(&mut table, 1, once(1, 1, 0, put("before")));
        let commands = vec![
            once(2, 1, 0, put("a")),
            other(1, 1, 0, put("x")),
            once(3, 2, 0, delete()),
            once(2, 2, 0, put("a, again")),
            once(1, 1, 0, put("late")),
            delete(),
            once(4, 3, 120_000, put("b")),
            other(2, 1, 60_000, put("y")),
            once(5, 99, 120_000, put("c")),
        ];
        let mut together = table.clone();
        let result = run(&mut together, 5, Command::Many(commands.clone()));
        let mut apart = table.clone();
        let results: Vec<CommandResult> = commands.into_iter().map(|command| run(&mut apart, 5, command)).collect();
        assert_eq!(result, CommandResult::Many(results.clone()));
        assert_eq!(together, apart);
        assert!(matches!(results[4], CommandResult::Rejected(Rejection::LateCopy { seq: 1, .. })), "{results:?}");
        assert_eq!(results[3], CommandResult::Applied { index: 5 }, "a copy gets its first copy's result");
        assert_eq!(replies(&together), [1, 2, 5], "writer 7's, then 0xabc's");
    }

    #[test]
    fn a_corrupt_session_record_refuses_the_write_on_every_replica() {
        let mut table = Table::new();
        table.insert(RowKey::Writer(0xabc), Row { version: 1, value: vec![1] });
        let result = run(&mut table, 2, once(1, 1, 0, put("v")));
        assert!(matches!(result, CommandResult::Rejected(Rejection::Corrupt { .. })), "{result:?}");
        assert_eq!(value(&table), None);
    }
}
