//! Client side of the coordination primitives: a Lamport site that acquires
//! and releases named mutexes, and barriers.
//!
//! A [`LamportSite`] keeps its own Lamport clock. To acquire, it ticks the
//! clock and proposes REQUEST(clock, site); the commit is the REPLY round,
//! and the answer is the mutex as every replica now sees it. If the site is
//! not at the head, it follows the mutex's row on the change feed until the
//! replicas grant it — a server stream, no polling. While it has requests
//! out or holds a mutex, a background task keeps its session alive; if the
//! process dies, the session lapses and the leader hands the mutex on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{ClientError, FeedItem, ShardClient};
use crate::command::{Command, CommandResult, MutexOp};
use crate::records::coordination::{BarrierState, MutexState, SiteId};
use crate::records::shop::decode_record;
use crate::types::LogIndex;

/// How long a site's session lives without a keep-alive.
pub const SESSION_TTL: Duration = Duration::from_secs(3);
/// Deadline of one coordination command.
const COMMAND_DEADLINE: Duration = Duration::from_secs(10);

/// A held mutex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MutexGrant {
    /// The log index of the grant: larger for every later grant of the
    /// mutex, so a resource can refuse stale holders.
    pub token: LogIndex,
    /// The clock of the granted request.
    pub clock: u64,
}

/// One site of Lamport's algorithm, talking to the shard of its mutexes.
pub struct LamportSite {
    /// The shard holding the mutexes this site uses.
    shard: Arc<ShardClient>,
    /// This site's id; ties between equal clocks go to the smaller id.
    site: SiteId,
    /// This site's Lamport clock.
    clock: AtomicU64,
    /// Keeps the session alive while the site exists.
    keep_alive: tokio::task::JoinHandle<()>,
}

impl LamportSite {
    /// A site `site` using mutexes on `shard`; starts its session keep-alive.
    pub fn new(shard: Arc<ShardClient>, site: SiteId) -> Self {
        let keep_alive = tokio::spawn(keep_alive(shard.clone(), site));
        LamportSite { shard, site, clock: AtomicU64::new(0), keep_alive }
    }

    /// This site's id.
    pub fn id(&self) -> SiteId {
        self.site
    }

    /// This site's Lamport clock.
    pub fn clock(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Sends REQUEST for `resource` and waits until it is granted.
    ///
    /// Only a grant of this request counts (its clock is the request's):
    /// the change feed may first replay an older state, served by a
    /// member that is behind, in which this site still held the mutex
    /// from an earlier request it has since released.
    pub async fn acquire(&self, resource: &str) -> Result<MutexGrant, ClientError> {
        let (state, clock) = self.request_with_clock(resource).await?;
        match self.granted(&state, clock) {
            Some(grant) => Ok(grant),
            None => self.wait_for_grant(resource, clock).await,
        }
    }

    /// Sends REQUEST for `resource` without waiting; returns the mutex as
    /// the replicas see it after the request.
    pub async fn request(&self, resource: &str) -> Result<MutexState, ClientError> {
        Ok(self.request_with_clock(resource).await?.0)
    }

    /// [`Self::request`], also returning the request's clock.
    async fn request_with_clock(&self, resource: &str) -> Result<(MutexState, u64), ClientError> {
        let clock = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        let op = MutexOp::Request { resource: resource.to_owned(), site: self.site, clock };
        Ok((self.send(vec![op], resource).await?, clock))
    }

    /// Sends RELEASE for `resource`; returns the mutex afterwards.
    pub async fn release(&self, resource: &str) -> Result<MutexState, ClientError> {
        let clock = self.clock.fetch_add(1, Ordering::SeqCst) + 1;
        let op = MutexOp::Release { resource: resource.to_owned(), site: self.site, clock };
        self.send(vec![op], resource).await
    }

    /// The grant of this site in `state`, if it holds the mutex by a
    /// request made at `clock` or later (not by one it has since released).
    pub fn granted(&self, state: &MutexState, clock: u64) -> Option<MutexGrant> {
        state
            .holder
            .filter(|g| g.site == self.site && g.clock >= clock)
            .map(|g| MutexGrant { token: g.token, clock: g.clock })
    }

    /// Follows the mutex's row until this site holds it by a request made
    /// at `clock` or later.
    pub async fn wait_for_grant(&self, resource: &str, clock: u64) -> Result<MutexGrant, ClientError> {
        let mut feed = Box::pin(self.shard.watch(&format!("locks/{resource}"), None));
        while let Some(item) = feed.next().await {
            if let FeedItem::Event { value: Some(value), .. } = item? {
                let state: MutexState =
                    decode_record(&value).map_err(|detail| ClientError::Protocol { node: 0, detail })?;
                if let Some(grant) = self.granted(&state, clock) {
                    self.observe(&state);
                    return Ok(grant);
                }
            }
        }
        Err(ClientError::Protocol { node: 0, detail: "the change feed ended".into() })
    }

    /// Proposes Lamport messages and returns `resource`'s state after them.
    pub async fn send(&self, ops: Vec<MutexOp>, resource: &str) -> Result<MutexState, ClientError> {
        let command = Command::Mutex { ops, ttl_ms: SESSION_TTL.as_millis() as u64, at_ms: 0 };
        match self.shard.write(&command, COMMAND_DEADLINE).await? {
            CommandResult::Mutexes(states) => {
                let state = states.into_iter().find(|(name, _)| name == resource).map(|(_, s)| s).unwrap_or_default();
                self.observe(&state);
                Ok(state)
            }
            other => Err(ClientError::Protocol { node: 0, detail: format!("unexpected answer {other:?}") }),
        }
    }

    /// Lamport receipt: the local clock becomes at least the replicas' view.
    fn observe(&self, state: &MutexState) {
        if let Some(seen) = state.clocks.get(&self.site) {
            self.clock.fetch_max(*seen, Ordering::SeqCst);
        }
    }
}

impl Drop for LamportSite {
    fn drop(&mut self) {
        self.keep_alive.abort();
    }
}

/// Refreshes `site`'s session every third of its lifetime.
async fn keep_alive(shard: Arc<ShardClient>, site: SiteId) {
    let mut ticker = tokio::time::interval(SESSION_TTL / 3);
    loop {
        ticker.tick().await;
        let command = Command::KeepAlive { site, ttl_ms: SESSION_TTL.as_millis() as u64, at_ms: 0 };
        if let Err(e) = shard.write(&command, SESSION_TTL / 3).await {
            tracing::warn!(site, error = %e, "session keep-alive failed");
        }
    }
}

impl ShardClient {
    /// Enters generation `generation` of barrier `name` (of `size`) and
    /// waits until everyone has entered it.
    pub async fn barrier(
        &self,
        name: &str,
        participant: u64,
        size: u32,
        generation: u64,
    ) -> Result<BarrierState, ClientError> {
        let command = Command::EnterBarrier { name: name.to_owned(), participant, size, generation };
        match self.write(&command, COMMAND_DEADLINE).await? {
            CommandResult::Barrier(state) if state.generation > generation => return Ok(state),
            CommandResult::Barrier(_) => {}
            CommandResult::Rejected(rejection) => {
                return Err(ClientError::Protocol { node: 0, detail: rejection.to_string() });
            }
            other => return Err(ClientError::Protocol { node: 0, detail: format!("unexpected answer {other:?}") }),
        }
        let mut feed = Box::pin(self.watch(&format!("barriers/{name}"), None));
        while let Some(item) = feed.next().await {
            if let FeedItem::Event { value: Some(value), .. } = item? {
                let state: BarrierState =
                    decode_record(&value).map_err(|detail| ClientError::Protocol { node: 0, detail })?;
                if state.generation > generation {
                    return Ok(state);
                }
            }
        }
        Err(ClientError::Protocol { node: 0, detail: "the change feed ended".into() })
    }
}
