//! openraft's own storage test suite, run against the real log store
//! (raft-log) and state machine (sled), each case in a fresh temp directory.
//!
//! The cases are listed one by one (the same list as 0.10's
//! `Suite::test_store`), so a failure names the case that failed; `test_all`
//! runs openraft's own list on top, so a case added to openraft later is
//! never silently skipped.

// openraft's `StorageError` is large, and the suite dictates it.
#![allow(clippy::result_large_err)]

use std::io;

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use storage_node::raft::log_store::LogStore;
use storage_node::state::StateMachine;
use storage_node::types::{StorageError, TypeConfig};
use tempfile::TempDir;

/// Builds a store in a temp dir that lives as long as the case needs it.
struct RealStore;

impl RealStore {
    fn open() -> io::Result<(TempDir, LogStore, StateMachine)> {
        let dir = TempDir::new()?;
        let log = LogStore::open(&dir.path().join("raft-log"))?;
        let machine = StateMachine::open(&dir.path().join("state"), &dir.path().join("snapshot"))?;
        Ok((dir, log, machine))
    }
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for RealStore {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        RealStore::open().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))
    }
}

type RealSuite = Suite<TypeConfig, LogStore, StateMachine, RealStore, TempDir>;

macro_rules! suite_cases {
    ($($case:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $case() -> io::Result<()> {
            let (_dir, log, machine) = RealStore::open()?;
            RealSuite::$case(log, machine).await
        }
    )*};
}

suite_cases!(
    last_membership_in_log_initial,
    last_membership_in_log,
    last_membership_in_log_multi_step,
    get_membership_initial,
    get_membership_from_log_and_empty_sm,
    get_membership_from_empty_log_and_sm,
    get_membership_from_log_le_sm_last_applied,
    get_membership_from_log_gt_sm_last_applied_1,
    get_membership_from_log_gt_sm_last_applied_2,
    get_initial_state_without_init,
    get_initial_state_membership_from_empty_log_and_sm,
    get_initial_state_membership_from_sm_inlog_is_smaller,
    get_initial_state_membership_from_log_insm_is_smaller,
    get_initial_state_with_state,
    get_initial_state_last_log_gt_sm,
    get_initial_state_last_log_lt_sm,
    get_initial_state_inverted_log_order,
    get_initial_state_conflict_at_same_index,
    get_initial_state_log_ids,
    get_initial_state_re_apply_committed,
    save_vote,
    get_log_entries,
    limited_get_log_entries,
    leader_bounded_stream,
    entries_stream,
    try_get_log_entry,
    log_reader_reads_new_entries,
    initial_logs,
    get_log_state,
    get_log_id,
    last_id_in_log,
    last_applied_state,
    purge_logs_upto_0,
    purge_logs_upto_5,
    purge_logs_upto_20,
    delete_logs_after_11,
    delete_logs_after_5,
    delete_logs_after_0,
    delete_logs_after_none,
    append_to_log,
    snapshot_meta,
    snapshot_meta_optional,
    apply_single,
    apply_multiple,
);

#[tokio::test]
async fn transfer_snapshot() -> io::Result<()> {
    RealSuite::transfer_snapshot(&RealStore).await
}

#[tokio::test]
async fn test_all() -> Result<(), StorageError> {
    RealSuite::test_all(RealStore).await
}

/// Appends blank entries `indexes` and waits until they are durable.
async fn append_durably(log: &mut LogStore, indexes: std::ops::RangeInclusive<u64>) -> io::Result<()> {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    let entries = indexes.map(|index| storage_node::types::Entry {
        log_id: openraft::testing::log_id::<TypeConfig>(1, 1, index),
        payload: storage_node::types::EntryPayload::Blank,
    });
    let (tx, rx) = TypeConfig::oneshot();
    log.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(io::Error::other)?
}

/// `save_committed` writes no record of its own (a flush per committed
/// entry cost the write path a WAL wake-up); the commit point reaches the
/// disk with the next append's sync and is read back after a restart.
#[tokio::test]
async fn the_commit_point_reaches_the_disk_with_the_next_append() -> io::Result<()> {
    use openraft::storage::RaftLogStorage;
    let dir = TempDir::new()?;
    let path = dir.path().join("raft-log");
    let committed = openraft::testing::log_id::<TypeConfig>(1, 1, 3);
    {
        let mut log = LogStore::open(&path)?;
        append_durably(&mut log, 1..=3).await?;
        log.save_committed(Some(committed)).await?;
        assert_eq!(log.read_committed().await?, Some(committed), "known at once");
        append_durably(&mut log, 4..=4).await?;
    }
    let mut reopened = LogStore::open(&path)?;
    assert_eq!(reopened.read_committed().await?, Some(committed));
    Ok(())
}
