//! The feed against a real (sled) state machine: exact starting values
//! although listed in chunks while entries are applied, resuming, and the
//! cap on open watches.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use openraft::storage::RaftStateMachine;
use openraft::EntryPayload;

use super::*;
use crate::command::{Command, RowWrite};
use crate::state::StateMachine;
use crate::types::Entry;

/// How long a test waits for the feed.
const DEADLINE: Duration = Duration::from_secs(10);

/// A state machine in a temp dir, and a model of its kv rows over time.
struct Replica {
    /// Keeps the directory alive.
    _dir: tempfile::TempDir,
    /// The machine under test.
    machine: StateMachine,
    /// The last applied index.
    index: LogIndex,
    /// Every change applied: index, topic, new value.
    history: Vec<(LogIndex, String, Option<Vec<u8>>)>,
}

impl Replica {
    fn open() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshots")).expect("opens");
        Replica { _dir: dir, machine, index: 0, history: Vec::new() }
    }

    /// Applies one write of kv row `key` as the next entry.
    async fn write(&mut self, key: &str, value: Option<&str>) {
        self.index += 1;
        let row = RowKey::Kv(key.into());
        let write = match value {
            Some(value) => RowWrite::upsert(row, value),
            None => RowWrite::delete(row),
        };
        let entry = Entry {
            log_id: openraft::testing::log_id::<crate::types::TypeConfig>(1, 1, self.index),
            payload: EntryPayload::Normal(Command::single(write).into()),
        };
        self.machine.apply(futures::stream::iter([Ok((entry, None))])).await.expect("applies");
        self.history.push((self.index, format!("kv/{key}"), value.map(|v| v.as_bytes().to_vec())));
    }

    /// The model's rows as of `index`.
    fn rows_at(&self, index: LogIndex) -> BTreeMap<String, Vec<u8>> {
        let mut rows = BTreeMap::new();
        for (_, topic, value) in self.history.iter().filter(|(i, _, _)| *i <= index) {
            match value {
                Some(value) => rows.insert(topic.clone(), value.clone()),
                None => rows.remove(topic),
            };
        }
        rows
    }

    /// `count` seeded changes: upserts, and deletions of rows that exist.
    async fn churn(&mut self, count: u64, seed: u64) {
        let mut random = seed;
        for _ in 0..count {
            random = random.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            let key = format!("k{:04}", (random >> 33) % 1100);
            let exists = self.rows_at(self.index).contains_key(&format!("kv/{key}"));
            let value = format!("v{}", self.index + 1);
            self.write(&key, if exists && random.is_multiple_of(4) { None } else { Some(&value) }).await;
        }
    }
}

/// The next event of `stream`, failing the test after [`DEADLINE`].
async fn next(stream: &mut WatchStream) -> pb::WatchEvent {
    tokio::time::timeout(DEADLINE, stream.next()).await.expect("the feed answers").expect("open").expect("no error")
}

/// Applies one event to `rows`, as a subscriber would.
fn fold(rows: &mut BTreeMap<String, Vec<u8>>, event: pb::WatchEvent) {
    match event.value {
        Some(value) => rows.insert(event.topic, value),
        None => rows.remove(&event.topic),
    };
}

#[tokio::test]
async fn starting_values_listed_in_chunks_are_exact_at_the_marker() {
    let mut replica = Replica::open();
    for i in 0..1000 {
        replica.write(&format!("k{i:04}"), Some("v0")).await;
    }
    let slots = WatchSlots::new(4);
    let mut stream = open(replica.machine.state(), &slots, "kv".into(), None).expect("opens");
    let mut seen = BTreeMap::new();
    for _ in 0..10 {
        fold(&mut seen, next(&mut stream).await);
    }
    replica.churn(300, 7).await; // while the listing waits for the subscriber
    let mut newer = 0; // current values of rows listed before they changed
    let marker = loop {
        let event = next(&mut stream).await;
        if event.caught_up {
            break event.index;
        }
        assert!(event.current, "only current values before the marker");
        newer += usize::from(seen.contains_key(&event.topic) && event.index > 1000);
        fold(&mut seen, event);
    };
    assert!(newer > 0, "some rows changed after their chunk was listed");
    assert!(marker >= 1000, "the marker is at or after the listing's start");
    assert_eq!(seen, replica.rows_at(marker), "the current values are the rows at the marker's index");

    replica.churn(50, 11).await;
    let mut last = marker;
    while last < replica.index {
        let event = next(&mut stream).await;
        assert!(!event.current && event.index > last, "changes after the marker, in log order, once");
        last = event.index;
        fold(&mut seen, event);
    }
    assert_eq!(seen, replica.rows_at(replica.index));
}

#[tokio::test]
async fn resuming_sends_exactly_the_stored_changes_from_the_index() {
    let mut replica = Replica::open();
    for i in 0..600 {
        replica.write(&format!("k{}", i % 5), Some(&i.to_string())).await;
    }
    let slots = WatchSlots::new(4);
    let mut stream = open(replica.machine.state(), &slots, "kv/k3".into(), Some(100)).expect("opens");
    let mut indexes = Vec::new();
    loop {
        let event = next(&mut stream).await;
        if event.caught_up {
            assert_eq!(event.index, 600);
            break;
        }
        assert_eq!(event.topic, "kv/k3");
        indexes.push(event.index);
    }
    let expected: Vec<LogIndex> = (100..=600).filter(|i| (i - 1) % 5 == 3).collect();
    assert_eq!(indexes, expected);
}

#[tokio::test]
async fn a_watch_beyond_the_cap_is_refused_until_one_closes() {
    let replica = Replica::open();
    let slots = WatchSlots::new(2);
    let first = open(replica.machine.state(), &slots, String::new(), None).expect("first");
    let _second = open(replica.machine.state(), &slots, String::new(), None).expect("second");
    let refused = open(replica.machine.state(), &slots, String::new(), None).err().expect("third is refused");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    assert!(refused.message().contains("already serves 2 watches"), "{}", refused.message());
    drop(first);
    let reopened = tokio::time::timeout(DEADLINE, async {
        loop {
            match open(replica.machine.state(), &slots, String::new(), None) {
                Ok(stream) => return stream,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    });
    let _stream = reopened.await.expect("closing a watch frees its slot");
}

#[test]
fn a_listing_knows_which_chunk_saw_a_row() {
    let key = |name: &str| keys::row_key(&RowKey::Kv(name.into()));
    let mut after_b = key("b");
    after_b.push(0);
    let listing = Listing { chunks: vec![(after_b, 10), (key("z"), 12)] };
    assert_eq!(listing.index_of("kv/a"), 10);
    assert_eq!(listing.index_of("kv/b"), 10);
    assert_eq!(listing.index_of("kv/b0"), 12);
    assert_eq!(listing.index_of("kv/z"), 0, "past the listing");
    assert_eq!(listing.index_of("nonsense"), 0);
}
