//! The change feed: every applied change of a visible row, in log order.
//!
//! When an entry is applied, each change to a client, product, order, kv
//! row, mutex or barrier becomes a [`FeedEvent`] with a topic path
//! (`clients/7`, `orders/7/10`, `locks/printer`, ...). Events are stored as
//! `Event(index, n)` rows in the same atomic batch as the change, so a
//! subscriber can resume from any index still retained — on any replica,
//! since all apply the same log — and the newest [`RETAINED_ENTRIES`] log
//! entries' events are kept: applying entry `i` deletes those of entry
//! `i - RETAINED_ENTRIES`, deterministically. After the batch commits the
//! events are also pushed to live watchers.
//!
//! Internal rows (indexes, transactions, intents, sessions, events) have no
//! topic and are not published.

use std::io;

use super::apply::{RowChanges, RowSource};
use super::keys;
use crate::command::{Row, RowKey, Table};
use crate::coordination::FeedEvent;
use crate::shop::{decode_record, encode_record, OrderRecord};
use crate::types::LogIndex;

/// How many log entries' events are kept for resuming subscribers.
pub const RETAINED_ENTRIES: u64 = 20_000;

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

/// Adds the events of entry `index`'s `changes` (and the pruning of old
/// events) to `changes`. Returns the events, for live watchers.
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
    for (n, event) in events.iter().enumerate() {
        let row = Row { version: index, value: encode_record(event) };
        changes.insert(RowKey::Event(index, n as u32), Some(row));
    }
    if let Some(expired) = index.checked_sub(RETAINED_ENTRIES) {
        let prefix = keys::row_key(&RowKey::Event(expired, 0));
        for key in rows.keys_with_prefix(&prefix[..prefix.len() - 4], usize::MAX)? {
            changes.insert(key, None);
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn events_are_staged_and_old_ones_pruned() {
        let mut rows = std::collections::BTreeMap::new();
        let old = FeedEvent { index: 5, topic: "kv/a".into(), value: None };
        rows.insert(RowKey::Event(5, 0), Row { version: 5, value: encode_record(&old) });
        let mut changes = RowChanges::new();
        changes.insert(RowKey::Kv("b".into()), Some(Row { version: 5 + RETAINED_ENTRIES, value: b"x".to_vec() }));
        let events = stage_events(5 + RETAINED_ENTRIES, &mut changes, &rows).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].topic, "kv/b");
        assert!(changes.contains_key(&RowKey::Event(5 + RETAINED_ENTRIES, 0)));
        assert_eq!(changes.get(&RowKey::Event(5, 0)), Some(&None), "the expired event is deleted");
    }
}
