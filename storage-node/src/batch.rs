//! Sharing Raft work among concurrent callers of the `Store` service.
//!
//! openraft appends, syncs and replicates each proposal on its own. When
//! many clients write at once, [`WriteBatcher`] folds the writes that
//! arrive while earlier proposals are in flight into one `Command::Many`
//! entry: one append, one fdatasync, one AppendEntries, one apply batch.
//! [`ReadBarrier`] does the same for reads: the reads that arrive while a
//! read-index round is running share the next round.
//!
//! Neither adds latency to a lone caller: a request finds a free slot and
//! goes at once. Batches form only while [`IN_FLIGHT`] proposals (or read
//! rounds) are already under way — exactly when waiting is unavoidable.
//! A read joins only a round that starts after it arrived, so every read
//! still sees everything committed before it began.

use std::sync::Arc;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::command::{Command, CommandResult};
use crate::types::{NodeId, Raft};

/// Proposals (or read rounds) under way at once before callers batch.
pub const IN_FLIGHT: usize = 4;
/// Most commands folded into one entry.
pub const MAX_BATCH: usize = 512;

/// Why a batched call did not produce a result.
#[derive(Clone, Debug)]
pub enum BatchError {
    /// This node does not lead; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// Raft could not commit or confirm (quorum lost, shutting down).
    Unavailable(String),
}

type WriteRequest = (Command, oneshot::Sender<Result<CommandResult, BatchError>>);

/// Folds concurrent writes into shared log entries.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<WriteRequest>,
}

impl WriteBatcher {
    /// Starts the batcher of `raft`.
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(write_loop(raft, rx));
        WriteBatcher { tx }
    }

    /// Proposes `command` (possibly together with others) and returns its
    /// own result once applied.
    pub async fn write(&self, command: Command) -> Result<CommandResult, BatchError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((command, tx)).await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?;
        rx.await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?
    }
}

async fn write_loop(raft: Raft, mut rx: mpsc::Receiver<WriteRequest>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            propose(&raft, batch).await;
            drop(slot);
        });
    }
}

/// Proposes a batch as one entry and hands each caller its result.
async fn propose(raft: &Raft, batch: Vec<WriteRequest>) {
    let (commands, callers): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
    let single = commands.len() == 1;
    let command = if single { commands.into_iter().next().expect("one command") } else { Command::Many(commands) };
    let outcome = match raft.client_write(command).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(BatchError::NotLeader(f.leader_id)),
        Err(e) => Err(BatchError::Unavailable(e.to_string())),
    };
    match outcome {
        Ok(CommandResult::Many(results)) if !single => {
            for (caller, result) in callers.into_iter().zip(results) {
                let _ = caller.send(Ok(result));
            }
        }
        Ok(result) => {
            let _ = callers.into_iter().next().expect("one caller").send(Ok(result));
        }
        Err(error) => {
            for caller in callers {
                let _ = caller.send(Err(error.clone()));
            }
        }
    }
}

/// Shares read-index rounds among concurrent reads.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::Sender<oneshot::Sender<Result<(), BatchError>>>,
}

impl ReadBarrier {
    /// Starts the barrier of `raft`.
    pub fn start(raft: Raft) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(read_loop(raft, rx));
        ReadBarrier { tx }
    }

    /// Returns once a read-index round that began after this call has
    /// confirmed leadership and the state has applied up to its index.
    pub async fn pass(&self) -> Result<(), BatchError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?;
        rx.await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?
    }
}

async fn read_loop(raft: Raft, mut rx: mpsc::Receiver<oneshot::Sender<Result<(), BatchError>>>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let outcome = match raft.ensure_linearizable().await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                    Err(BatchError::NotLeader(f.leader_id))
                }
                Err(e) => Err(BatchError::Unavailable(e.to_string())),
            };
            for reader in waiting {
                let _ = reader.send(outcome.clone());
            }
            drop(slot);
        });
    }
}
