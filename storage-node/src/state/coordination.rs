//! Lamport mutexes, sessions and barriers inside the state machine.
//!
//! A `Mutex` command carries Lamport messages. REQUEST(clock, site) enters
//! the site's request into the resource's queue (one outstanding request per
//! site) and updates clocks as receipt would: the sender's known clock
//! becomes at least `clock`, every other site's `max(own, clock) + 1`.
//! RELEASE(clock, site) removes the site's request. After all messages of
//! the entry, a free mutex is granted to the head of its queue — the
//! smallest (clock, site) — with the entry's log index as fencing token.
//! A grant is never taken back except by RELEASE or by the holder's session
//! lapsing (`ExpireSessions`, proposed by the leader with its clock).
//!
//! A barrier releases when its last participant enters, by moving to the
//! next generation; waiters watch its row until the generation passes theirs.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::io;

use super::apply::{corrupt_record, RowChanges, RowSource, Staged};
use super::keys;
use crate::command::{CommandResult, MutexOp, Rejection, RowKey, Table};
use crate::records::coordination::{BarrierState, Grant, MutexState, Session, SiteId};
use crate::records::shop::{decode_record, encode_record};
use crate::types::LogIndex;

type Applied = (CommandResult, RowChanges);

fn read<S: RowSource, T: serde::de::DeserializeOwned>(staged: &Staged<'_, S>, key: &RowKey) -> io::Result<Option<T>> {
    match staged.get(key)? {
        Some(row) => decode_record(&row.value).map(Some).map_err(|detail| corrupt_record(key, detail)),
        None => Ok(None),
    }
}

/// Applies Lamport messages, then grants every free mutex they touched.
pub fn apply_mutex(
    index: LogIndex,
    ops: &[MutexOp],
    ttl_ms: u64,
    at_ms: u64,
    rows: &impl RowSource,
) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let mut touched: BTreeMap<String, MutexState> = BTreeMap::new();
    for op in ops {
        let (resource, site) = match op {
            MutexOp::Request { resource, site, .. } | MutexOp::Release { resource, site, .. } => (resource, *site),
        };
        let state = match touched.entry(resource.clone()) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(read(&staged, &RowKey::Mutex(resource.clone()))?.unwrap_or_default()),
        };
        match op {
            MutexOp::Request { clock, .. } => request(state, site, *clock),
            MutexOp::Release { clock, .. } => release(state, site, *clock),
        }
        let session = Session { expires_at_ms: at_ms.saturating_add(ttl_ms) };
        staged.put(RowKey::Session(site), index, encode_record(&session));
    }
    let mut states = Vec::with_capacity(touched.len());
    for (name, mut state) in touched {
        grant_if_free(&mut state, index);
        staged.put(RowKey::Mutex(name.clone()), index, encode_record(&state));
        states.push((name, state));
    }
    Ok((CommandResult::Mutexes(states), staged.changes))
}

/// REQUEST(clock, site): queue it and let every other site "receive" it.
fn request(state: &mut MutexState, site: SiteId, clock: u64) {
    if state.queue.iter().any(|(_, s)| *s == site) {
        return; // one outstanding request per site; a retry changes nothing
    }
    receive(state, site, clock);
    state.queue.insert((clock, site));
}

/// RELEASE(clock, site): drop its request (and its grant).
fn release(state: &mut MutexState, site: SiteId, clock: u64) {
    state.queue.retain(|(_, s)| *s != site);
    if state.holder.is_some_and(|grant| grant.site == site) {
        state.holder = None;
    }
    receive(state, site, clock);
}

/// Clock updates for a message from `site` stamped `clock`.
fn receive(state: &mut MutexState, site: SiteId, clock: u64) {
    for (other, known) in state.clocks.iter_mut() {
        if *other != site {
            // Saturating: a clock at the top of the range stays there
            // rather than wrapping (or panicking) on every replica.
            *known = (*known).max(clock).saturating_add(1);
        }
    }
    let own = state.clocks.entry(site).or_default();
    *own = (*own).max(clock);
}

/// Grants a free mutex to the head of its queue.
fn grant_if_free(state: &mut MutexState, index: LogIndex) {
    if state.holder.is_none() {
        if let Some(&(clock, site)) = state.queue.first() {
            state.holder = Some(Grant { site, clock, token: index });
        }
    }
}

/// Extends a site's session to `at_ms + ttl_ms`.
pub fn keep_alive(
    index: LogIndex,
    site: SiteId,
    ttl_ms: u64,
    at_ms: u64,
    rows: &impl RowSource,
) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let session = Session { expires_at_ms: at_ms.saturating_add(ttl_ms) };
    staged.put(RowKey::Session(site), index, encode_record(&session));
    Ok((CommandResult::Applied { index }, staged.changes))
}

/// Ends sessions lapsed before `now_ms` and drops their sites' requests.
pub fn expire_sessions(index: LogIndex, now_ms: u64, rows: &impl RowSource) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let mut expired = Vec::new();
    for key in staged.committed_keys_with_prefix(&keys::table_prefix(Table::Sessions), usize::MAX)? {
        let RowKey::Session(site) = key else { continue };
        let session: Option<Session> = read(&staged, &key)?;
        if session.is_some_and(|s| s.expires_at_ms < now_ms) {
            expired.push(site);
            staged.delete(key);
        }
    }
    if expired.is_empty() {
        return Ok((CommandResult::Applied { index }, RowChanges::new()));
    }
    for key in staged.committed_keys_with_prefix(&keys::table_prefix(Table::Mutexes), usize::MAX)? {
        let Some(mut state) = read::<_, MutexState>(&staged, &key)? else { continue };
        let before = state.clone();
        state.queue.retain(|(_, site)| !expired.contains(site));
        if state.holder.is_some_and(|grant| expired.contains(&grant.site)) {
            state.holder = None;
        }
        grant_if_free(&mut state, index);
        if state != before {
            staged.put(key, index, encode_record(&state));
        }
    }
    Ok((CommandResult::Applied { index }, staged.changes))
}

/// Enters `participant` into generation `generation` of barrier `name`.
pub fn enter_barrier(
    index: LogIndex,
    name: &str,
    participant: u64,
    size: u32,
    generation: u64,
    rows: &impl RowSource,
) -> io::Result<Applied> {
    let mut staged = Staged::new(rows);
    let key = RowKey::Barrier(name.to_owned());
    let mut state: BarrierState = read(&staged, &key)?.unwrap_or(BarrierState { size, ..Default::default() });
    if size == 0 || (state.size != size && !state.entered.is_empty()) {
        let reason = format!("barrier {name} has {} participants, not {size}", state.size);
        return Ok((CommandResult::Rejected(Rejection::Invalid(reason)), RowChanges::new()));
    }
    if generation < state.generation {
        return Ok((CommandResult::Barrier(state), RowChanges::new())); // released already
    }
    if generation > state.generation {
        let reason = format!("barrier {name} is at generation {}, not {generation}", state.generation);
        return Ok((CommandResult::Rejected(Rejection::Invalid(reason)), RowChanges::new()));
    }
    state.size = size;
    state.entered.insert(participant);
    if state.entered.len() >= size as usize {
        state.generation = state.generation.saturating_add(1);
        state.entered.clear();
    }
    staged.put(key, index, encode_record(&state));
    Ok((CommandResult::Barrier(state), staged.changes))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::Command;

    use crate::state::testing::Replica;

    impl Replica {
        fn mutex(&self, name: &str) -> MutexState {
            decode_record(&self.rows[&RowKey::Mutex(name.into())].value).unwrap()
        }
    }

    fn send(ops: Vec<MutexOp>, at_ms: u64) -> Command {
        Command::Mutex { ops, ttl_ms: 1000, at_ms }
    }

    fn req(site: SiteId, clock: u64) -> MutexOp {
        MutexOp::Request { resource: "cs".into(), site, clock }
    }

    fn rel(site: SiteId, clock: u64) -> MutexOp {
        MutexOp::Release { resource: "cs".into(), site, clock }
    }

    #[test]
    fn a_lone_request_is_granted_with_its_log_index_as_token() {
        let mut replica = Replica::default();
        replica.apply(send(vec![req(1, 1)], 0));
        assert_eq!(replica.mutex("cs").holder, Some(Grant { site: 1, clock: 1, token: 1 }));
    }

    #[test]
    fn simultaneous_requests_with_equal_clocks_go_to_the_smaller_site() {
        let mut replica = Replica::default();
        replica.apply(send(vec![req(2, 1), req(1, 1)], 0));
        let state = replica.mutex("cs");
        assert_eq!(state.holder.map(|g| g.site), Some(1), "{state:?}");
        replica.apply(send(vec![rel(1, 3)], 0));
        let state = replica.mutex("cs");
        assert_eq!(state.holder.map(|g| (g.site, g.token)), Some((2, 2)), "next grant, larger token");
    }

    #[test]
    fn clocks_follow_lamport_receipt_rules() {
        let mut replica = Replica::default();
        replica.apply(send(vec![req(1, 1)], 0));
        replica.apply(send(vec![req(2, 1)], 0));
        // site 1 "received" site 2's request stamped 1: max(1, 1) + 1 = 2
        assert_eq!(replica.mutex("cs").clocks, BTreeMap::from([(1, 2), (2, 1)]));
    }

    #[test]
    fn a_grant_is_kept_until_release_even_if_a_smaller_request_arrives() {
        let mut replica = Replica::default();
        replica.apply(send(vec![req(2, 5)], 0));
        replica.apply(send(vec![req(1, 1)], 0));
        assert_eq!(replica.mutex("cs").holder.map(|g| g.site), Some(2));
    }

    #[test]
    fn a_lapsed_session_loses_the_mutex_to_the_next_site() {
        let mut replica = Replica::default();
        replica.apply(send(vec![req(1, 1)], 0)); // session until 1000
        replica.apply(send(vec![req(2, 2)], 900)); // session until 1900
        replica.apply(Command::ExpireSessions { now_ms: 1500 });
        let state = replica.mutex("cs");
        assert_eq!(state.holder.map(|g| (g.site, g.token)), Some((2, 3)));
        assert!(!replica.rows.contains_key(&RowKey::Session(1)));
    }

    #[test]
    fn a_barrier_releases_when_the_last_participant_enters() {
        let mut replica = Replica::default();
        let enter = |p| Command::EnterBarrier { name: "b".into(), participant: p, size: 3, generation: 0 };
        for p in [1, 2] {
            let CommandResult::Barrier(state) = replica.apply(enter(p)) else { panic!() };
            assert_eq!(state.generation, 0);
        }
        let CommandResult::Barrier(state) = replica.apply(enter(3)) else { panic!() };
        assert_eq!(state.generation, 1, "released");
        let CommandResult::Barrier(late) = replica.apply(enter(1)) else { panic!() };
        assert_eq!(late.generation, 1, "a retry of an old generation sees it released");
    }
}
