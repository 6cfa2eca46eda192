//! Which node a data directory belongs to.
//!
//! On first start a node writes `raftshop-node.toml` (its id, shard and
//! cluster id) into its data directory. Every later start reads it back
//! before opening any storage, so pointing a node at another node's
//! directory (a typo in `cluster.toml`, a swapped volume), or at a
//! directory of another cluster, is refused instead of silently mixing two
//! replicas' logs. A file written before cluster ids names none and is
//! taken as this cluster's. The file carries a format version; a version this
//! build does not read stops the node before it opens anything.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::types::{NodeId, Shard};

/// The identity file's name inside a data directory.
pub const IDENTITY_FILE: &str = "raftshop-node.toml";
/// Where [`claim`] writes the identity before renaming it into place, so
/// that a node killed while claiming leaves no half-written identity. A
/// leftover one does not count as content of the directory.
const PARTIAL_IDENTITY_FILE: &str = "raftshop-node.toml.partial";
/// The identity file's format version. Files written before it had one
/// are version 1.
pub const IDENTITY_FORMAT: u32 = 1;

/// The owner of a data directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// The node that created the directory.
    pub node_id: NodeId,
    /// Its shard.
    pub shard: Shard,
}

/// The identity file as stored: its format version, then the owner.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    /// [`IDENTITY_FORMAT`] when written.
    #[serde(default = "first_format")]
    format: u32,
    /// The owner's id.
    node_id: NodeId,
    /// The owner's shard.
    shard: Shard,
    /// The owner's cluster; absent in files written before cluster ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cluster_id: Option<String>,
}

fn first_format() -> u32 {
    1
}

/// Checks, without writing anything, that `dir` is free or already ours
/// (this node's, of cluster `cluster`). Returns true if the directory still
/// has to be claimed.
pub fn check(dir: &Path, me: NodeIdentity, cluster: &str) -> Result<bool, NodeError> {
    let file = dir.join(IDENTITY_FILE);
    let storage = |source| NodeError::Storage { path: file.clone(), source };
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let stored: IdentityFile = toml::from_str(&text)
                .map_err(|e| storage(std::io::Error::new(std::io::ErrorKind::InvalidData, e.message().to_owned())))?;
            if stored.format != IDENTITY_FORMAT {
                return Err(NodeError::UnknownFormat {
                    path: file.clone(),
                    what: "identity file",
                    found: stored.format,
                    supported: IDENTITY_FORMAT,
                });
            }
            let owner = NodeIdentity { node_id: stored.node_id, shard: stored.shard };
            if owner != me {
                return Err(NodeError::ForeignDataDir {
                    dir: dir.to_owned(),
                    owner: owner.node_id,
                    owner_shard: owner.shard,
                    id: me.node_id,
                });
            }
            match stored.cluster_id {
                Some(recorded) if recorded != cluster => {
                    Err(NodeError::OtherCluster { dir: dir.to_owned(), recorded, configured: cluster.to_owned() })
                }
                _ => Ok(false),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if is_non_empty_dir(dir).map_err(storage)? {
                return Err(NodeError::UnclaimedDataDir { dir: dir.to_owned() });
            }
            Ok(true)
        }
        Err(e) => Err(storage(e)),
    }
}

/// Creates `dir` if needed and records `me`, of cluster `cluster`, as its
/// owner: written to a file beside it, synced, renamed into place and the
/// directory synced, so the identity is either whole or absent after a
/// crash at any point.
pub fn claim(dir: &Path, me: NodeIdentity, cluster: &str) -> Result<(), NodeError> {
    let file: PathBuf = dir.join(IDENTITY_FILE);
    let storage = |source| NodeError::Storage { path: file.clone(), source };
    std::fs::create_dir_all(dir).map_err(storage)?;
    let text = format!(
        "# Written by storage-node on first start: this directory belongs to\n# this node. Do not edit or copy it to another node.\n{}",
        toml::to_string(&IdentityFile {
            format: IDENTITY_FORMAT,
            node_id: me.node_id,
            shard: me.shard,
            cluster_id: Some(cluster.to_owned()),
        })
        .expect("an identity always encodes")
    );
    let partial = dir.join(PARTIAL_IDENTITY_FILE);
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(&partial)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&partial, &file)?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().map_err(storage)
}

/// True if `dir` exists and holds anything but a leftover of an
/// interrupted [`claim`] (a missing one is empty).
pub fn is_non_empty_dir(dir: &Path) -> std::io::Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                if entry?.file_name() != PARTIAL_IDENTITY_FILE {
                    return Ok(true);
                }
            }
            Ok(false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: NodeIdentity = NodeIdentity { node_id: 1, shard: Shard::Even };
    const TWO: NodeIdentity = NodeIdentity { node_id: 2, shard: Shard::Even };

    #[test]
    fn a_claimed_directory_refuses_other_nodes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        assert!(check(&data, ONE, "c").unwrap(), "a missing directory is free");
        claim(&data, ONE, "c").unwrap();
        assert!(!check(&data, ONE, "c").unwrap(), "the owner may reuse it");
        let error = check(&data, TWO, "c").unwrap_err().to_string();
        assert!(error.contains("belongs to node 1 (shard even), not node 2"), "{error}");
    }

    #[test]
    fn the_format_version_is_written_and_an_unknown_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), ONE, "c").unwrap();
        let file = dir.path().join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.contains("format = 1"), "{text}");
        std::fs::write(&file, text.replace("format = 1", "format = 7")).unwrap();
        let error = check(dir.path(), ONE, "c").unwrap_err().to_string();
        assert!(
            error.contains(IDENTITY_FILE) && error.contains("version 7") && error.contains("only version 1"),
            "{error}"
        );
    }

    #[test]
    fn an_unknown_field_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "node_id = 1\nshard = \"even\"\ncolour = 3\n").unwrap();
        let error = check(dir.path(), ONE, "c").unwrap_err().to_string();
        assert!(error.contains("colour"), "{error}");
    }

    #[test]
    fn a_file_written_before_format_versions_is_version_1() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "node_id = 1\nshard = \"even\"\n").unwrap();
        assert!(!check(dir.path(), ONE, "c").unwrap());
    }

    #[test]
    fn a_directory_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), ONE, "staging").unwrap();
        let error = check(dir.path(), ONE, "production").unwrap_err().to_string();
        assert!(error.contains("cluster \"staging\"") && error.contains("\"production\""), "{error}");
        assert!(!check(dir.path(), ONE, "staging").unwrap());
    }

    #[test]
    fn a_claim_interrupted_before_its_rename_leaves_the_directory_free() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PARTIAL_IDENTITY_FILE), "node_id = ").unwrap();
        assert!(check(dir.path(), ONE, "c").unwrap(), "still to be claimed");
        claim(dir.path(), ONE, "c").unwrap();
        assert!(!check(dir.path(), ONE, "c").unwrap(), "claimed once the claim completes");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, [IDENTITY_FILE], "the partial file became the identity");
    }

    #[test]
    fn a_foreign_non_empty_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("precious.txt"), "keep me").unwrap();
        let error = check(dir.path(), ONE, "c").unwrap_err();
        assert!(matches!(error, NodeError::UnclaimedDataDir { .. }), "{error}");
    }
}
