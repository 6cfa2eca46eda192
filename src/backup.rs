//! `raftshop backup` and `raftshop restore`, as library calls (the CLI and
//! the tests use them). The protocol is `storage_node::service::backup`'s; see
//! `docs/design/backup.md` for why it fences before it snapshots.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use raftshop_proto::store::BackupRequest;
use storage_node::client::{ClusterClient, ShardClient};
use storage_node::service::backup::{self as protocol, Manifest, ShardBackup, MANIFEST, MANIFEST_FORMAT};
use storage_node::{ClusterConfig, Command, CommandResult, Shard};

/// Deadline of the fence writes.
const FENCE_DEADLINE: Duration = Duration::from_secs(10);

/// Takes a consistent backup of both shards of `config`'s cluster into
/// `dir` (created; it must be missing or empty), fencing cross-shard
/// prepares for at most `hold` meanwhile. Returns the manifest written.
pub async fn take(config: &ClusterConfig, dir: &Path, hold: Duration) -> Result<Manifest, String> {
    if storage_node::node::identity::is_non_empty_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        return Err(format!("{} is not empty; a backup goes into a new directory", dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let cluster = ClusterClient::new(config);
    let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
    let fenced = fence_both(&cluster, hold_ms).await;
    let taken = match fenced {
        Ok(()) => snapshot_both(&cluster, dir).await,
        Err(error) => Err(error),
    };
    // Lifted whatever happened; a fence that cannot be lifted lapses by itself.
    if let Err(error) = fence_both(&cluster, 0).await {
        tracing::warn!(%error, "could not lift the backup fence; it lapses by itself within {hold:?}");
    }
    let shards = taken?;
    let manifest = Manifest { format: MANIFEST_FORMAT, taken_at_ms: storage_node::service::now_ms(), shards };
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest always encodes");
    let path = dir.join(MANIFEST);
    std::fs::write(&path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(manifest)
}

/// Sets (or, with `hold_ms` 0, lifts) the backup fence on both shards.
async fn fence_both(cluster: &ClusterClient, hold_ms: u64) -> Result<(), String> {
    for shard in Shard::ALL {
        let fence = Command::Fence { hold_ms, at_ms: 0 };
        match cluster.shard(shard).write(&fence, FENCE_DEADLINE).await {
            Ok(CommandResult::Committed) => {}
            Ok(other) => return Err(format!("shard {shard} answered the fence with {other:?}")),
            Err(error) => return Err(format!("cannot fence shard {shard}: {error}")),
        }
    }
    Ok(())
}

/// Each shard's snapshot, streamed from its leader into `dir`.
async fn snapshot_both(
    cluster: &ClusterClient,
    dir: &Path,
) -> Result<std::collections::BTreeMap<Shard, ShardBackup>, String> {
    let mut shards = std::collections::BTreeMap::new();
    for shard in Shard::ALL {
        let file = format!("{shard}.snapshot");
        let path = dir.join(&file);
        fetch(cluster.shard(shard), &path).await?;
        let (checksum, bytes) = protocol::checksum(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let (meta, digest) = protocol::snapshot_header(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let last = meta.last_log_id.ok_or_else(|| format!("shard {shard} sent a snapshot of nothing"))?;
        shards
            .insert(shard, ShardBackup { file, index: last.index, term: last.leader_id.term, digest, bytes, checksum });
    }
    Ok(shards)
}

/// Streams `client`'s shard's snapshot from its leader into `path`.
async fn fetch(client: &ShardClient, path: &Path) -> Result<(), String> {
    let shard = client.shard();
    let leader = client.leader_hint().ok_or_else(|| format!("no leader of shard {shard} is known"))?;
    let mut store = client.store_client(leader).ok_or_else(|| format!("node {leader} is not reachable"))?;
    let mut stream = store
        .backup(BackupRequest {})
        .await
        .map_err(|status| format!("node {leader} (shard {shard}) refused the backup: {}", status.message()))?
        .into_inner();
    let mut out = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|status| format!("node {leader} (shard {shard}): {}", status.message()))?;
        std::io::Write::write_all(&mut out, &chunk.data).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.sync_all().map_err(|e| format!("{}: {e}", path.display()))
}

/// Builds, for every first member of `config`, its data directory (its
/// `data_dir`, resolved against `base` when relative) from the backup in
/// `dir`. Returns each shard's restored index.
pub async fn restore(dir: &Path, config: &ClusterConfig, base: &Path) -> Result<Vec<(Shard, u64)>, String> {
    let manifest = protocol::verify(dir)?;
    for node in config.nodes.iter().filter(|node| !node.join) {
        let backup = &manifest.shards[&node.shard];
        let data_dir = protocol::resolve(base, &node.data_dir);
        protocol::restore_node(&dir.join(&backup.file), config, node, &data_dir)
            .await
            .map_err(|error| format!("restoring node {}: {error}", node.id))?;
    }
    Ok(manifest.shards.iter().map(|(shard, backup)| (*shard, backup.index)).collect())
}
