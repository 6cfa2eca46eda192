//! Records of the coordination primitives the state machine keeps: Lamport
//! mutexes, barriers, client sessions, and change-feed events.
//!
//! Seed 001's Lamport algorithm needs REQUEST, REPLY and RELEASE messages
//! between all sites. Here the Raft log is the broadcast: a REQUEST or
//! RELEASE is a log command, every replica applies it in the same order, and
//! the commit of a REQUEST stands for the REPLY round (every replica has
//! "received" it). So every replica agrees on each mutex's queue, ordered by
//! (clock, site) with ties to the smaller site, and on who holds it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

/// A site: any client process that takes part in mutual exclusion.
pub type SiteId = u64;

/// One named mutex (the value of a `Mutex` row).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutexState {
    /// Pending requests, ordered by (Lamport clock, site).
    pub queue: BTreeSet<(u64, SiteId)>,
    /// Each site's Lamport clock as the replicas have seen it.
    pub clocks: BTreeMap<SiteId, u64>,
    /// Who is in the critical section, if anyone.
    pub holder: Option<Grant>,
}

/// The right to enter a critical section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The holder.
    pub site: SiteId,
    /// The clock of the request that was granted.
    pub clock: u64,
    /// The log index of the grant: strictly larger for every later grant,
    /// so a resource can refuse a holder whose token is older than one it
    /// has already seen (fencing).
    pub token: LogIndex,
}

/// A barrier for a fixed number of participants (the value of a `Barrier`
/// row). It releases everyone when the last one enters, then re-arms.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BarrierState {
    /// Participants needed to release it.
    pub size: u32,
    /// How many times it has released; a participant waits until it grows
    /// past the generation it entered.
    pub generation: u64,
    /// Who has entered the current generation.
    pub entered: BTreeSet<u64>,
}

/// A site's session on one shard (the value of a `Session` row). A site
/// whose session lapses loses its place in every mutex queue of the shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// When it lapses, in ms since the epoch of the leaders' clocks.
    pub expires_at_ms: u64,
}

/// One change of the applied state, as the change feed delivers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedEvent {
    /// The log index that made the change; events of one shard arrive in
    /// log order.
    pub index: LogIndex,
    /// The topic path: `clients/<CID>`, `products/<PID>`,
    /// `orders/<CID>/<OID>`, `locks/<name>`, `barriers/<name>`, `kv/<key>`.
    pub topic: String,
    /// The new value (the row's bincode record), `None` for a deletion.
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}
