//! Identities shared by every part of the cluster: nodes, shards, log
//! positions, and the openraft type configuration that ties them together.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::command::{CommandResult, SharedCommand};

/// A storage node's Raft id, unique across both shards (1..=6 by default).
pub type NodeId = u64;

/// A position in a shard's Raft log. Row versions are log indexes too: the
/// index of the entry that last wrote the row.
pub type LogIndex = u64;

/// One of the two Raft groups. An entity lives in the shard of its own ID's
/// parity: even IDs in `Even`, odd IDs in `Odd`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shard {
    /// Entities with an even ID.
    Even,
    /// Entities with an odd ID.
    Odd,
}

impl Shard {
    /// Both shards, in a fixed order.
    pub const ALL: [Shard; 2] = [Shard::Even, Shard::Odd];

    /// The other shard.
    pub fn other(self) -> Shard {
        match self {
            Shard::Even => Shard::Odd,
            Shard::Odd => Shard::Even,
        }
    }

    /// The shard that owns the entity with this numeric ID.
    pub fn of_id(id: u64) -> Shard {
        if id.is_multiple_of(2) {
            Shard::Even
        } else {
            Shard::Odd
        }
    }

    /// The shard that owns a free-form key (the `kv` table): by a stable
    /// FNV-1a hash of its bytes, so every process agrees without a lookup.
    pub fn of_key(key: &str) -> Shard {
        Shard::of_id(crate::fnv::Fnv1a::of(key.as_bytes()))
    }

    /// The lowercase name used in `cluster.toml` and in status output.
    pub fn name(self) -> &'static str {
        match self {
            Shard::Even => "even",
            Shard::Odd => "odd",
        }
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "even" => Ok(Shard::Even),
            "odd" => Ok(Shard::Odd),
            other => Err(format!("unknown shard {other:?}; expected \"even\" or \"odd\"")),
        }
    }
}

openraft::declare_raft_types!(
    /// openraft's view of a shard: commands in, results out, `u64` node ids.
    /// Everything else (leader id, vote, entry, runtime) is 0.10's default;
    /// the snapshot type belongs to the state machine and the network.
    pub TypeConfig:
        D = SharedCommand,
        R = CommandResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
);

/// The Raft handle of one node; 0.10 names the state machine in the type.
pub type Raft = openraft::Raft<TypeConfig, crate::state::StateMachine>;
/// A log id (leader term and node, index) of this cluster.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote of this cluster.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A log entry of this cluster.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// What a log entry carries: a command, a membership change or a blank.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// A storage error of this cluster (openraft's test builder still wants one).
pub type StorageError = openraft::StorageError<TypeConfig>;
/// Membership as stored with the state machine.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata of this cluster: last log id and membership.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_shard_by_parity() {
        assert_eq!(Shard::of_id(0), Shard::Even);
        assert_eq!(Shard::of_id(44), Shard::Even);
        assert_eq!(Shard::of_id(13), Shard::Odd);
    }

    #[test]
    fn keys_spread_over_both_shards() {
        let even = (0..1000).filter(|i| Shard::of_key(&format!("key-{i}")) == Shard::Even).count();
        assert!((400..600).contains(&even), "{even} of 1000 keys are even");
        assert_eq!(Shard::of_key("abc"), Shard::of_key("abc"));
    }
}
