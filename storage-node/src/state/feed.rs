//! The change feed: every applied change of a visible row, in log order.
//!
//! When an entry is applied, each change to a client, product, order, kv
//! row, mutex or barrier becomes a [`FeedEvent`] with a topic path
//! (`clients/7`, `orders/7/10`, `locks/printer`, ...). Events are stored
//! with the change (in the same sled batch), so a subscriber can resume
//! from any index still retained — on any replica, since all apply the same
//! log — and the newest [`RETAINED_ENTRIES`] log entries' events are kept:
//! applying entry `i` deletes those of entry `i - RETAINED_ENTRIES`,
//! deterministically. Once the entry is applied the events are also pushed
//! to live watchers.
//!
//! Two layouts of the stored events exist, and the state's layout
//! (`crate::state::layout`) says which one an entry writes:
//!
//! - [`layout::EVENT_ROWS`]: `Event(index, n)` holds the entry's event
//!   `n`. A batched entry of 100 kv writes wrote 100 event rows, and its
//!   expiry removed 100.
//! - [`layout::ENTRY_EVENTS`] and later layouts: one row,
//!   `Event(index, `[`ENTRY_ROW`]`)`, holds all the entry's events in
//!   order: one insert and one removal per entry.
//!
//! Every replica switches at the same entry, so replicas keep holding the
//! same rows. Readers take both layouts, since a shard that switched still
//! retains events stored in the old one.
//!
//! Internal rows (indexes, transactions, intents, sessions, events) have no
//! topic and are not published.
//!
//! Listings (a watch's starting values, the stored events a subscriber
//! resumes from, topic counts) never hold the apply lock for a whole table:
//! a [`KeyCursor`] reads [`CHUNK_ROWS`] rows at a time, each chunk under a
//! short lock and current at its own applied index, which the chunk
//! reports with the key range it covers. [`crate::service::watch`] uses those
//! indexes to make a chunked listing exact.

use std::collections::{BTreeMap, VecDeque};
use std::io;

use super::apply::{RowChanges, RowSource};
use super::keys;
use super::layout;
use crate::command::{Row, RowKey, Table};
use crate::records::coordination::FeedEvent;
use crate::records::shop::{decode_record, encode_record, OrderRecord};
use crate::state::AppliedState;
use crate::types::LogIndex;

/// How many log entries' events are kept for resuming subscribers.
pub const RETAINED_ENTRIES: u64 = 20_000;

/// The event number of the one row of an entry in the [`layout::ENTRY_EVENTS`]
/// layout; no entry has that many events, so it cannot meet a
/// [`layout::EVENT_ROWS`] row.
pub const ENTRY_ROW: u32 = u32::MAX;

/// Rows one chunk of a listing reads while `apply` waits.
pub const CHUNK_ROWS: usize = 256;

/// The topic of a row, given its new or (for a deletion) old value.
pub fn topic(key: &RowKey, value: Option<&[u8]>) -> Option<String> {
    Some(match key {
        RowKey::Client(id) => format!("clients/{id}"),
        RowKey::Product(id) => format!("products/{id}"),
        RowKey::Order(oid) => {
            let cid = value.and_then(|v| decode_record::<OrderRecord>(v).ok()).map(|o| o.cid).unwrap_or_default();
            format!("orders/{cid}/{oid}")
        }
        RowKey::Kv(key) => format!("kv/{key}"),
        RowKey::Mutex(name) => format!("locks/{name}"),
        RowKey::Barrier(name) => format!("barriers/{name}"),
        _ => return None,
    })
}

/// True if `topic` is `prefix` or lies under it (whole path segments).
pub fn matches(prefix: &str, topic: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty() || topic == prefix || (topic.starts_with(prefix) && topic[prefix.len()..].starts_with('/'))
}

/// The tables whose rows may have topics under `prefix`.
pub fn tables_under(prefix: &str) -> Vec<Table> {
    let first = prefix.split('/').next().unwrap_or_default();
    let all = [Table::Clients, Table::Products, Table::Orders, Table::Kv, Table::Mutexes, Table::Barriers];
    all.into_iter().filter(|t| first.is_empty() || t.name() == first).collect()
}

/// The row a topic names: the inverse of [`topic`] (an order's topic
/// carries its client, the row key only its OID).
pub fn topic_key(topic: &str) -> Option<RowKey> {
    let (group, rest) = topic.split_once('/')?;
    Some(match group {
        "clients" => RowKey::Client(rest.parse().ok()?),
        "products" => RowKey::Product(rest.parse().ok()?),
        "orders" => RowKey::Order(rest.rsplit('/').next()?.parse().ok()?),
        "kv" => RowKey::Kv(rest.to_owned()),
        "locks" => RowKey::Mutex(rest.to_owned()),
        "barriers" => RowKey::Barrier(rest.to_owned()),
        _ => return None,
    })
}

/// The sled key ranges `[start, end)`, in key order, that hold every row
/// whose topic may lie under `prefix`. Tables keyed by name (kv, locks,
/// barriers) are narrowed to the names `prefix` allows.
pub fn key_ranges_under(prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let prefix = prefix.trim_end_matches('/');
    let name = prefix.split_once('/').map(|(_, name)| name).unwrap_or_default();
    let mut ranges: Vec<(Vec<u8>, Vec<u8>)> = tables_under(prefix)
        .into_iter()
        .map(|table| {
            let mut start = keys::table_prefix(table).to_vec();
            if matches!(table, Table::Kv | Table::Mutexes | Table::Barriers) {
                start.extend_from_slice(name.as_bytes());
            }
            let end = past_prefix(&start);
            (start, end)
        })
        .collect();
    ranges.sort();
    ranges
}

/// The sled key range of every stored event from log entry `from` on.
pub fn event_range(from: LogIndex) -> (Vec<u8>, Vec<u8>) {
    (keys::event_key(from, 0), past_prefix(&keys::table_prefix(Table::Events)))
}

/// The first key after every key that starts with `prefix`. Row keys start
/// with `b'r'`, so some byte can always be incremented.
fn past_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if let Some(next) = last.checked_add(1) {
            end.push(next);
            return end;
        }
    }
    vec![u8::MAX; prefix.len() + 1]
}

/// The oldest log entry whose events are still stored once `applied` is.
pub fn oldest_retained(applied: LogIndex) -> LogIndex {
    applied.saturating_sub(RETAINED_ENTRIES) + 1
}

/// One chunk of a listing: rows current at one applied index.
#[derive(Debug)]
pub struct Chunk {
    /// The rows, in key order (keys that are not rows are left out).
    pub rows: Vec<(RowKey, Row)>,
    /// The applied index the rows are current at.
    pub index: LogIndex,
    /// The chunk covers every key from the previous chunk's `until` (or its
    /// range's start) up to this, exclusive: a key in there that is not in
    /// `rows` did not exist at `index`.
    pub until: Vec<u8>,
}

/// A listing of key ranges read in [`CHUNK_ROWS`]-row chunks.
#[derive(Debug)]
pub struct KeyCursor {
    /// The ranges still to read, the first one from where the last chunk
    /// stopped.
    ranges: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl KeyCursor {
    /// A listing of `ranges`, which are in key order and disjoint.
    pub fn new(ranges: Vec<(Vec<u8>, Vec<u8>)>) -> Self {
        KeyCursor { ranges: ranges.into() }
    }

    /// Reads the next chunk from `state`; `None` once every range is read.
    pub fn next_chunk(&mut self, state: &AppliedState) -> io::Result<Option<Chunk>> {
        let Some((start, end)) = self.ranges.front_mut() else { return Ok(None) };
        let (rows, index) = state.rows_chunk(start, end, CHUNK_ROWS)?;
        let until = match rows.last() {
            Some((last, _)) if rows.len() >= CHUNK_ROWS => {
                let mut after = last.clone();
                after.push(0);
                *start = after.clone();
                after
            }
            _ => {
                let until = end.clone();
                self.ranges.pop_front();
                until
            }
        };
        let rows = rows.into_iter().filter_map(|(key, row)| Some((keys::parse_row_key(&key)?, row))).collect();
        Ok(Some(Chunk { rows, index, until }))
    }
}

/// Topic groups under `prefix` (`clients`, `orders/7`, `locks`, ...) with
/// how many rows each holds, and the applied index of the newest chunk
/// read. Counted chunk by chunk, so a row written during the listing may
/// be counted as before or after that write.
pub fn topics(state: &AppliedState, prefix: &str) -> io::Result<(Vec<(String, u64)>, LogIndex)> {
    let mut cursor = KeyCursor::new(key_ranges_under(prefix));
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut index = state.progress().applied.map(|id| id.index).unwrap_or_default();
    while let Some(chunk) = cursor.next_chunk(state)? {
        index = index.max(chunk.index);
        for (key, row) in &chunk.rows {
            match topic(key, Some(&row.value)) {
                Some(topic) if matches(prefix, &topic) => count_topic(&mut counts, &topic),
                _ => {}
            }
        }
    }
    let listed = counts.into_iter().filter(|(topic, _)| matches(prefix, topic) || topic.starts_with(prefix));
    Ok((listed.collect(), index))
}

/// Counts `topic` in its group, and an order also under its client.
fn count_topic(counts: &mut BTreeMap<String, u64>, topic: &str) {
    let mut parts = topic.split('/');
    let group = parts.next().unwrap_or_default().to_owned();
    if group == "orders" {
        let by_client = format!("orders/{}", parts.next().unwrap_or_default());
        *counts.entry(by_client).or_default() += 1;
    }
    *counts.entry(group).or_default() += 1;
}

/// The events stored in the row `Event(index, n)`, in either layout.
pub fn stored_events(key: &RowKey, row: &Row) -> Result<Vec<FeedEvent>, String> {
    match key {
        RowKey::Event(_, ENTRY_ROW) => decode_record(&row.value),
        RowKey::Event(..) => decode_record(&row.value).map(|event| vec![event]),
        other => Err(format!("{other} is not a change-feed row")),
    }
}

/// Adds the events of entry `index`'s `changes` to `changes`, in the layout
/// `rows` says. Returns the events, for live watchers. The entry also
/// removes the events that fall out of retention ([`expired_events`]).
pub fn stage_events(index: LogIndex, changes: &mut RowChanges, rows: &impl RowSource) -> io::Result<Vec<FeedEvent>> {
    let mut events = Vec::new();
    for (key, new) in changes.iter() {
        let value = new.as_ref().map(|row| row.value.clone());
        let topic_value = match (&value, key) {
            (None, RowKey::Order(_)) => rows.row(key)?.map(|old| old.value),
            _ => value.clone(),
        };
        if let Some(topic) = topic(key, topic_value.as_deref()) {
            events.push(FeedEvent { index, topic, value });
        }
    }
    if events.is_empty() {
        return Ok(events);
    }
    match layout::current(rows)? {
        layout::EVENT_ROWS => {
            for (n, event) in events.iter().enumerate() {
                let row = Row { version: index, value: encode_record(event) };
                changes.insert(RowKey::Event(index, n as u32), Some(row));
            }
        }
        _ => {
            let row = Row { version: index, value: encode_record(&events) };
            changes.insert(RowKey::Event(index, ENTRY_ROW), Some(row));
        }
    }
    Ok(events)
}

/// The sled key prefix of every stored event of log entry `index`.
pub fn entry_events(index: LogIndex) -> Vec<u8> {
    let mut prefix = keys::row_key(&RowKey::Event(index, 0));
    prefix.truncate(prefix.len().saturating_sub(std::mem::size_of::<u32>()));
    prefix
}

/// The sled key prefix of the events that entry `index` removes: those of
/// the entry [`RETAINED_ENTRIES`] before it, if there is one.
pub fn expired_events(index: LogIndex) -> Option<Vec<u8>> {
    index.checked_sub(RETAINED_ENTRIES).map(entry_events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::CommandResult;

    #[test]
    fn topics_match_whole_segments() {
        assert!(matches("orders/7", "orders/7/10"));
        assert!(!matches("orders/7", "orders/70/1"));
        assert!(matches("orders", "orders/7/10"));
        assert!(matches("", "kv/a"));
        assert!(matches("locks/printer", "locks/printer"));
        assert!(matches("orders/", "orders/7/10"));
    }

    #[test]
    fn order_topics_carry_the_client() {
        let order = encode_record(&OrderRecord { cid: 7, lines: vec![] });
        assert_eq!(topic(&RowKey::Order(10), Some(&order)).as_deref(), Some("orders/7/10"));
        assert_eq!(topic(&RowKey::Intent(Box::new(RowKey::Client(1))), None), None);
    }

    #[test]
    fn topics_lead_back_to_their_rows() {
        let order = encode_record(&OrderRecord { cid: 7, lines: vec![] });
        let rows = [
            (RowKey::Client(3), None),
            (RowKey::Product(u64::MAX), None),
            (RowKey::Order(10), Some(order.as_slice())),
            (RowKey::Kv("a/b/c".into()), None),
            (RowKey::Mutex("printer".into()), None),
            (RowKey::Barrier("round-1".into()), None),
        ];
        for (key, value) in rows {
            let topic = topic(&key, value).unwrap();
            assert_eq!(topic_key(&topic), Some(key), "{topic}");
        }
        assert_eq!(topic_key("clients/x"), None);
        assert_eq!(topic_key("events/1/2"), None);
    }

    #[test]
    fn ranges_hold_exactly_the_rows_a_prefix_may_match() {
        let contains = |ranges: &[(Vec<u8>, Vec<u8>)], key: &RowKey| {
            let bytes = keys::row_key(key);
            ranges.iter().any(|(start, end)| *start <= bytes && bytes < *end)
        };
        let kv = key_ranges_under("kv/feed/");
        assert!(contains(&kv, &RowKey::Kv("feed".into())));
        assert!(contains(&kv, &RowKey::Kv("feed/3".into())));
        assert!(!contains(&kv, &RowKey::Kv("fee".into())));
        assert!(!contains(&kv, &RowKey::Mutex("feed".into())));
        let all = key_ranges_under("");
        assert_eq!(all.len(), 6);
        assert!(all.windows(2).all(|w| w[0].1 <= w[1].0), "in key order and disjoint");
        assert!(contains(&all, &RowKey::Order(u64::MAX)));
        assert!(!contains(&all, &RowKey::Event(1, 0)));
        assert!(key_ranges_under("nothing").is_empty());
        assert_eq!(past_prefix(&[b'r', 3, 0xff, 0xff]), vec![b'r', 4]);
    }

    #[test]
    fn topics_count_groups_and_orders_by_client() {
        let mut counts = BTreeMap::new();
        for topic in ["orders/7/10", "orders/7/12", "orders/8/1", "clients/7"] {
            count_topic(&mut counts, topic);
        }
        let counts: Vec<(&str, u64)> = counts.iter().map(|(t, n)| (t.as_str(), *n)).collect();
        assert_eq!(counts, [("clients", 1), ("orders", 3), ("orders/7", 2), ("orders/8", 1)]);
    }

    #[test]
    fn events_are_staged_and_old_ones_expire() {
        let rows = std::collections::BTreeMap::new();
        let mut changes = RowChanges::new();
        changes.insert(RowKey::Kv("b".into()), Some(Row { version: 5 + RETAINED_ENTRIES, value: b"x".to_vec() }));
        let events = stage_events(5 + RETAINED_ENTRIES, &mut changes, &rows).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].topic, "kv/b");
        assert!(changes.contains_key(&RowKey::Event(5 + RETAINED_ENTRIES, 0)));
        let expired = expired_events(5 + RETAINED_ENTRIES).expect("an entry expires");
        for n in [0, 1, u32::MAX] {
            assert!(keys::row_key(&RowKey::Event(5, n)).starts_with(&expired));
        }
        assert!(!keys::row_key(&RowKey::Event(4, u32::MAX)).starts_with(&expired));
        assert!(!keys::row_key(&RowKey::Event(6, 0)).starts_with(&expired));
        assert_eq!(expired_events(RETAINED_ENTRIES - 1), None);
    }

    /// Two kv writes in one entry, staged over `rows`.
    fn stage_two(index: LogIndex, rows: &BTreeMap<RowKey, Row>) -> (Vec<FeedEvent>, RowChanges) {
        let mut changes = RowChanges::new();
        for key in ["a", "b"] {
            changes.insert(RowKey::Kv(key.into()), Some(Row { version: index, value: key.as_bytes().to_vec() }));
        }
        let events = stage_events(index, &mut changes, rows).unwrap();
        (events, changes)
    }

    #[test]
    fn the_layout_setting_decides_how_an_entry_stores_its_events() {
        let mut rows = BTreeMap::new();
        assert_eq!(layout::current(&rows).unwrap(), layout::EVENT_ROWS);
        let (events, changes) = stage_two(7, &rows);
        let stored: Vec<_> = changes.iter().filter(|(key, _)| matches!(key, RowKey::Event(..))).collect();
        assert_eq!(stored.len(), 2, "one row per event");
        let read: Vec<FeedEvent> =
            stored.iter().flat_map(|(key, row)| stored_events(key, row.as_ref().unwrap()).unwrap()).collect();
        assert_eq!(read, events);

        // The switch's own entry still writes the old layout; the next one
        // writes one row for the whole entry, and readers get the same events.
        let (result, switch) = layout::use_layout(8, layout::ENTRY_EVENTS, &rows).unwrap();
        assert_eq!(result, CommandResult::Applied { index: 8 });
        rows.extend(switch.into_iter().map(|(key, row)| (key, row.unwrap())));
        assert_eq!(layout::current(&rows).unwrap(), layout::ENTRY_EVENTS);
        let (events, changes) = stage_two(9, &rows);
        let stored: Vec<_> = changes.iter().filter(|(key, _)| matches!(key, RowKey::Event(..))).collect();
        assert_eq!(stored.len(), 1, "one row for the entry");
        let (key, row) = stored[0];
        assert_eq!(key, &RowKey::Event(9, ENTRY_ROW));
        assert_eq!(stored_events(key, row.as_ref().unwrap()).unwrap(), events);
        assert_eq!(events.len(), 2);
        assert!(keys::row_key(key).starts_with(&entry_events(9)), "expiry removes it with its entry");
        assert!(stored_events(&RowKey::Kv("a".into()), row.as_ref().unwrap()).is_err());
    }
}
