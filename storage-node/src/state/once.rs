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
//!   result as a `WriterReply(writer, seq)` row;
//! - a later copy finds that row and gets the same result back, changing
//!   nothing;
//! - each write also says below which number every write of the session
//!   has been answered (`answered_below`); those records are no longer
//!   needed and go, a few per write, and a copy of such a write that turns
//!   up late (stuck in a dead leader's log, or in the network) is refused
//!   with [`Rejection::LateCopy`] rather than applied — nobody waits for
//!   its answer any more.
//!
//! A session's `Writer` row holds how far it has been answered; a
//! `WriterIdle(minute, writer)` index row says when it was last used, and
//! the leader proposes `PruneWriters` to forget sessions idle for longer
//! than [`crate::limits::WRITER_IDLE`] with their records. Space is thus
//! bounded by the writes in flight plus one row per recently active client.
//!
//! Everything here is pure: rows in, result and row changes out.

use std::io;

use serde::{Deserialize, Serialize};

use super::apply::{apply_command, corrupt_record, RowChanges, RowSource, Staged};
use super::keys;
use crate::codec::{decode_reply, encode};
use crate::command::{Command, CommandResult, Rejection, RowKey, Table};
use crate::shop::{decode_record, encode_record};
use crate::types::LogIndex;

/// Most records of answered writes one `Once` deletes, so that a session
/// whose watermark jumps far (a call that hung while thousands finished)
/// costs no single entry much; the rest go with the session's next writes.
pub const SWEEP_PER_WRITE: u64 = 64;
/// Most idle sessions one `PruneWriters` entry forgets.
pub const PRUNE_SESSIONS: usize = 1_000;
/// Most records of one session a `PruneWriters` deletes; a session has one
/// per write in flight when it went idle, which is far fewer.
const PRUNE_REPLIES_PER_SESSION: usize = 4_096;

/// A write session as the shard knows it (the value of a `Writer` row).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterRecord {
    /// Every write numbered below this has been answered; a copy of one is
    /// refused.
    pub answered_below: u64,
    /// Records of writes numbered below this are deleted (it trails
    /// `answered_below` by at most what the sweep has not reached yet).
    pub swept_below: u64,
    /// The minute (since the epoch) of the session's last write: the key of
    /// its `WriterIdle` index row.
    pub idle_minute: u64,
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

/// Applies `command` (logged at `index`) unless a copy of write `id` was
/// applied before, in which case that copy's result is the answer.
pub fn apply_once(
    index: LogIndex,
    id: WriteId,
    command: &Command,
    rows: &impl RowSource,
) -> io::Result<(CommandResult, RowChanges)> {
    let mut staged = Staged::new(rows);
    let session = read_session(&staged, id.writer)?;
    if session.is_some_and(|s| id.seq < s.answered_below) {
        let late = Rejection::LateCopy { writer: id.writer, seq: id.seq };
        return Ok((CommandResult::Rejected(late), RowChanges::new()));
    }
    let reply_key = RowKey::WriterReply(id.writer, id.seq);
    let result = match staged.get(&reply_key)? {
        Some(row) => decode_reply(&row.value).map_err(|detail| corrupt_record(&reply_key, detail))?,
        None => {
            let (result, changes) = apply_command(index, command, &staged)?;
            staged.changes.extend(changes);
            staged.put(reply_key, index, encode(&result));
            result
        }
    };
    touch_session(&mut staged, index, id, session);
    Ok((result, staged.changes))
}

/// Moves the session's watermark (creating the session if it has none),
/// deletes a few records it passed, and refreshes its idle index row.
fn touch_session<S: RowSource>(
    staged: &mut Staged<'_, S>,
    index: LogIndex,
    id: WriteId,
    session: Option<WriterRecord>,
) {
    // A caller never sends a watermark above the write it sends (the write
    // itself is unanswered), so one that does is held at the write.
    let answered_below = id.answered_below.min(id.seq);
    let minute = id.at_ms / 60_000;
    let mut session = match session {
        Some(session) => session,
        // A new session has no records below its first watermark.
        None => {
            staged.put(RowKey::WriterIdle(minute, id.writer), index, Vec::new());
            WriterRecord { answered_below, swept_below: answered_below, idle_minute: minute }
        }
    };
    session.answered_below = session.answered_below.max(answered_below);
    let sweep_to = session.answered_below.min(session.swept_below.saturating_add(SWEEP_PER_WRITE));
    for seq in session.swept_below..sweep_to {
        staged.delete(RowKey::WriterReply(id.writer, seq));
    }
    session.swept_below = session.swept_below.max(sweep_to);
    if session.idle_minute != minute {
        staged.delete(RowKey::WriterIdle(session.idle_minute, id.writer));
        staged.put(RowKey::WriterIdle(minute, id.writer), index, Vec::new());
        session.idle_minute = minute;
    }
    staged.put(RowKey::Writer(id.writer), index, encode_record(&session));
}

/// Session `writer`'s record, if it has one.
fn read_session<S: RowSource>(staged: &Staged<'_, S>, writer: u64) -> io::Result<Option<WriterRecord>> {
    let key = RowKey::Writer(writer);
    match staged.get(&key)? {
        Some(row) => decode_record(&row.value).map(Some).map_err(|detail| corrupt_record(&key, detail)),
        None => Ok(None),
    }
}

/// Forgets sessions whose last write was in a minute before `before_ms`'s,
/// with their records.
pub fn prune_writers(before_ms: u64, rows: &impl RowSource) -> io::Result<(CommandResult, RowChanges)> {
    let mut staged = Staged::new(rows);
    let cutoff_minute = before_ms / 60_000;
    let idle = staged.committed_keys_with_prefix(&keys::table_prefix(Table::WritersIdle), PRUNE_SESSIONS)?;
    for key in idle {
        let RowKey::WriterIdle(minute, writer) = key else { continue };
        if minute >= cutoff_minute {
            break;
        }
        let mut prefix = keys::table_prefix(Table::WriterReplies).to_vec();
        prefix.extend_from_slice(&writer.to_be_bytes());
        for reply in staged.committed_keys_with_prefix(&prefix, PRUNE_REPLIES_PER_SESSION)? {
            staged.delete(reply);
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

    fn replies(table: &Table) -> Vec<u64> {
        table.keys().filter_map(|key| if let RowKey::WriterReply(_, seq) = key { Some(*seq) } else { None }).collect()
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
    fn a_far_watermark_is_swept_a_bounded_number_at_a_time() {
        let mut table = Table::new();
        let many = 2 * SWEEP_PER_WRITE + 10;
        for seq in 0..many {
            run(&mut table, seq + 1, once(seq, 0, 0, put("v")));
        }
        run(&mut table, many + 1, once(many, many, 0, put("v")));
        assert_eq!(replies(&table).len() as u64, many + 1 - SWEEP_PER_WRITE);
        for n in 1..=3 {
            run(&mut table, many + 1 + n, once(many + n, many, 0, put("v")));
        }
        assert_eq!(replies(&table), (many..=many + 3).collect::<Vec<_>>());
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

    #[test]
    fn a_corrupt_session_record_refuses_the_write_on_every_replica() {
        let mut table = Table::new();
        table.insert(RowKey::Writer(0xabc), Row { version: 1, value: vec![1] });
        let result = run(&mut table, 2, once(1, 1, 0, put("v")));
        assert!(matches!(result, CommandResult::Rejected(Rejection::Corrupt { .. })), "{result:?}");
        assert_eq!(value(&table), None);
    }
}
