//! Online backup and restore (`raftshop backup`, `raftshop restore`).
//!
//! A backup is one snapshot per shard, taken so that together they are one
//! consistent cut: no cross-shard transaction is committed in one and
//! missing from the other (`docs/design/backup.md` explains why two plain
//! snapshots cannot promise that). The caller first *fences* both shards
//! (`Command::Fence`: no cross-shard prepare passes while it holds), then
//! asks each shard's leader for its snapshot through `Store.Backup`
//! ([`Source::stream`]): the leader waits until nothing is prepared, has
//! openraft build a snapshot at or after that point, checks that the fence
//! still held, and streams the file. Every transaction committed in either
//! snapshot was then prepared on both shards before the fences, and neither
//! snapshot holds one half-way.
//!
//! A restore ([`restore_node`]) loads a shard's snapshot into a fresh data
//! directory for each member of the target `cluster.toml`, with the
//! membership rewritten to those members, and an empty Raft log; openraft
//! purges the log up to the snapshot's index when it starts
//! (`get_initial_state`), so each node starts as one that installed the
//! snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{BasicNode, Membership, StoredMembership};
use serde::{Deserialize, Serialize};
use tonic::Status;

use crate::config::{ClusterConfig, NodeConfig};
use crate::fnv::Fnv1a;
use crate::node::identity::{self, NodeIdentity};
use crate::raft::log_store::LogStore;
use crate::service::batch::{BatchError, ReadBarrier};
use crate::state::snapshot::{self, SnapshotFile};
use crate::state::{AppliedState, StateMachine};
use crate::types::{NodeId, Raft, Shard, SnapshotMeta, Vote};
use raftshop_proto::store as pb;

/// The manifest's format version; a backup of another version is refused.
pub const MANIFEST_FORMAT: u32 = 1;
/// The manifest's file name in a backup directory.
pub const MANIFEST: &str = "manifest.json";
/// How long a leader waits for the transactions in flight to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a leader waits for openraft to build the snapshot.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);
/// How long one trigger is given before the snapshot is asked for again.
const SNAPSHOT_RETRIGGER: Duration = Duration::from_secs(2);
/// Bytes per streamed chunk.
const CHUNK_BYTES: usize = 1024 * 1024;

/// A backup's table of contents (`manifest.json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] when written.
    pub format: u32,
    /// When the backup was taken, ms since the epoch.
    pub taken_at_ms: u64,
    /// Each shard's snapshot, by shard name.
    pub shards: BTreeMap<Shard, ShardBackup>,
}

/// One shard's snapshot in a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardBackup {
    /// The snapshot file, relative to the backup directory.
    pub file: String,
    /// The log index the snapshot stands at.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// The shard's state digest at that index.
    pub digest: u64,
    /// The file's length in bytes.
    pub bytes: u64,
    /// FNV-1a 64 of the file's bytes, in hex.
    pub checksum: String,
}

/// A stream of a snapshot file's bytes.
pub type BackupStream = Pin<Box<dyn futures::Stream<Item = Result<pb::BackupChunk, Status>> + Send>>;

/// What a leader needs to serve `Store.Backup`.
pub struct Source<'a> {
    /// The node's Raft.
    pub raft: &'a Raft,
    /// Its applied state.
    pub state: &'a AppliedState,
    /// Its read barrier: only a leader sure of its role takes a backup.
    pub reads: &'a ReadBarrier,
    /// Where its snapshot files are.
    pub snapshot_dir: &'a Path,
    /// Its id, for messages.
    pub node_id: NodeId,
}

impl Source<'_> {
    /// Drains, snapshots and opens the snapshot for streaming.
    pub async fn stream(&self) -> Result<BackupStream, Status> {
        match self.reads.pass().await {
            Ok(()) => {}
            Err(BatchError::NotLeader(leader)) => {
                let hint = leader.map(|id| format!("; node {id} leads")).unwrap_or_default();
                return Err(Status::failed_precondition(format!(
                    "node {} is not its shard's leader{hint}; a backup is taken from the leader",
                    self.node_id
                )));
            }
            Err(BatchError::Unavailable(error)) => {
                return Err(Status::unavailable(format!("node {} cannot confirm it leads: {error}", self.node_id)))
            }
        }
        let fenced_until = self.fence()?.ok_or_else(|| {
            Status::failed_precondition(
                "no backup fence holds on this shard: propose Command::Fence on both shards first",
            )
        })?;
        let drained = self.drain().await?;
        self.snapshot_at_least(drained).await?;
        if crate::service::now_ms() >= fenced_until {
            return Err(Status::aborted(
                "the backup fence lapsed before the snapshot was built; take the backup again with a longer hold",
            ));
        }
        let path = self.snapshot_dir.join(snapshot::CURRENT);
        // An open file survives a newer snapshot's rename over this name.
        let mut file = std::fs::File::open(&path).map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let (meta, _) = snapshot::read_header(&mut std::io::BufReader::new(&mut file))
            .map_err(|e| Status::internal(format!("{}: {e}", path.display())))?;
        let at = meta.last_log_id.map(|id| id.index).unwrap_or_default();
        if at < drained {
            return Err(Status::internal(format!(
                "the current snapshot is at {at}, before the drained index {drained}"
            )));
        }
        std::io::Seek::rewind(&mut file).map_err(|e| Status::internal(e.to_string()))?;
        tracing::info!(node = self.node_id, index = at, "streaming a backup snapshot");
        Ok(chunks(file))
    }

    /// Has openraft build a snapshot at `index` or later. A trigger while a
    /// build is under way is ignored (`trigger_snapshot` in openraft's
    /// snapshot handler), and that build may end before `index`, so the
    /// trigger is repeated until a snapshot reaches it.
    async fn snapshot_at_least(&self, index: u64) -> Result<(), Status> {
        let give_up = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
        loop {
            self.raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| Status::internal(format!("cannot trigger a snapshot: {e}")))?;
            let reached = self
                .raft
                .wait(Some(SNAPSHOT_RETRIGGER))
                .metrics(|m| m.snapshot.as_ref().is_some_and(|s| s.index >= index), "the backup's snapshot")
                .await;
            match reached {
                Ok(_) => return Ok(()),
                Err(_) if tokio::time::Instant::now() < give_up => continue,
                Err(e) => return Err(Status::unavailable(format!("no snapshot reached index {index}: {e}"))),
            }
        }
    }

    /// When the shard's backup fence lapses, if one holds now.
    fn fence(&self) -> Result<Option<u64>, Status> {
        let until = crate::state::txn::fence_lapses_at(self.state)
            .map_err(|e| Status::internal(format!("reading the fence failed: {e}")))?;
        Ok(until.filter(|until| crate::service::now_ms() < *until))
    }

    /// Waits until no transaction is prepared in the applied state; returns
    /// the applied index at that moment.
    async fn drain(&self) -> Result<u64, Status> {
        let give_up = tokio::time::Instant::now() + DRAIN_TIMEOUT;
        loop {
            let applied = self.state.progress().applied.map(|id| id.index).unwrap_or_default();
            let prepared = self
                .state
                .prepared_txns(1)
                .map_err(|e| Status::internal(format!("reading transactions failed: {e}")))?;
            if prepared.is_empty() {
                return Ok(applied);
            }
            if tokio::time::Instant::now() >= give_up {
                return Err(Status::unavailable(format!(
                    "transaction {} stayed prepared for {DRAIN_TIMEOUT:?}; try again",
                    prepared[0].0
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The file's bytes as a stream of chunks, read off the async runtime.
fn chunks(file: std::fs::File) -> BackupStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let chunk = match file.read(&mut data) {
                Ok(0) => return,
                Ok(n) => {
                    data.truncate(n);
                    Ok(pb::BackupChunk { data })
                }
                Err(e) => Err(Status::internal(format!("reading the snapshot failed: {e}"))),
            };
            let failed = chunk.is_err();
            if tx.blocking_send(chunk).is_err() || failed {
                return;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// FNV-1a 64 of a file's bytes, in hex, and its length.
pub fn checksum(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Fnv1a::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok((format!("{:016x}", hash.finish()), bytes));
        }
        hash.write(&buffer[..n]);
        bytes += n as u64;
    }
}

/// The metadata and digest in a snapshot file's header.
pub fn snapshot_header(path: &Path) -> std::io::Result<(SnapshotMeta, u64)> {
    snapshot::read_header(&mut std::io::BufReader::new(std::fs::File::open(path)?))
}

/// Reads a backup's manifest and checks every file it names: present, of
/// the recorded length and checksum, its header at the recorded index.
/// Refusals name the file.
pub fn verify(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| format!("{}: not a backup manifest: {e}", path.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!(
            "{}: backup format version {} (this build reads only version {MANIFEST_FORMAT})",
            path.display(),
            manifest.format
        ));
    }
    for shard in Shard::ALL {
        let backup =
            manifest.shards.get(&shard).ok_or_else(|| format!("{}: no snapshot of shard {shard}", path.display()))?;
        let file = dir.join(&backup.file);
        let (sum, bytes) = checksum(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if bytes != backup.bytes || sum != backup.checksum {
            return Err(format!(
                "{}: {bytes} bytes with checksum {sum}, but the manifest records {} bytes with checksum {}; the file is \
                 damaged or not this backup's",
                file.display(),
                backup.bytes,
                backup.checksum
            ));
        }
        let (meta, digest) = snapshot_header(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let index = meta.last_log_id.map(|id| id.index).unwrap_or_default();
        if index != backup.index || digest != backup.digest {
            return Err(format!("{}: the snapshot is not the one the manifest describes", file.display()));
        }
    }
    Ok(manifest)
}

/// Builds node `me`'s data directory (`data_dir`, which must be missing or
/// empty) from its shard's snapshot `file`, as a member of a shard whose
/// voters are `config`'s first members of that shard.
pub async fn restore_node(file: &Path, config: &ClusterConfig, me: &NodeConfig, data_dir: &Path) -> Result<(), String> {
    let in_dir = |e: &dyn std::fmt::Display| format!("{}: {e}", data_dir.display());
    if identity::is_non_empty_dir(data_dir).map_err(|e| in_dir(&e))? {
        return Err(format!("{} is not empty; a restore builds new data directories only", data_dir.display()));
    }
    let (meta, _) = snapshot_header(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let last = meta.last_log_id.ok_or_else(|| format!("{}: the snapshot is of an empty shard", file.display()))?;
    let owner = NodeIdentity { node_id: me.id, shard: me.shard };
    identity::claim(data_dir, owner, &config.cluster_id).map_err(|e| in_dir(&e))?;

    let voters: BTreeSet<NodeId> = config.first_members(me.shard).map(|n| n.id).collect();
    let nodes: BTreeMap<NodeId, BasicNode> =
        config.first_members(me.shard).map(|n| (n.id, BasicNode::new(n.reach()))).collect();
    let membership = Membership::new(vec![voters], nodes).map_err(|e| in_dir(&e))?;
    let restored =
        SnapshotMeta { last_log_id: Some(last), last_membership: StoredMembership::new(Some(last), membership) };
    let snapshot_dir = data_dir.join("snapshots");
    let mut machine = StateMachine::open(&data_dir.join("state"), &snapshot_dir).map_err(|e| in_dir(&e))?;
    let source = SnapshotFile::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    machine.install_snapshot(&restored, source).await.map_err(|e| in_dir(&e))?;
    machine.flush().map_err(|e| in_dir(&e))?;
    // The copied file's header still names the old members; openraft builds
    // a new snapshot at start-up when there is none.
    std::fs::remove_file(snapshot_dir.join(snapshot::CURRENT)).map_err(|e| in_dir(&e))?;

    let mut log = LogStore::open(&data_dir.join("raft-log")).map_err(|e| in_dir(&e))?;
    // A vote at the snapshot's term, so that the first election is at a
    // later term than every entry the shard holds.
    log.save_vote(&Vote::new(last.leader_id.term, me.id)).await.map_err(|e| in_dir(&e))?;
    Ok(())
}

/// Where `data_dir` lands when relative paths resolve against `base`.
pub fn resolve(base: &Path, data_dir: &Path) -> PathBuf {
    match data_dir.is_absolute() {
        true => data_dir.to_owned(),
        false => base.join(data_dir),
    }
}
