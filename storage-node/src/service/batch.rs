//! Sharing Raft work among concurrent callers of the `Store` service.
//!
//! openraft appends, syncs and replicates each proposal on its own. When
//! many clients write at once, [`WriteBatcher`] folds the writes that
//! arrive while earlier proposals are in flight into one `Command::Many`
//! entry: one append, one fdatasync, one AppendEntries, one apply batch.
//! [`ReadBarrier`] does the same for reads: the reads that arrive while a
//! read-index round is running share the next round.
//!
//! An entry stays within [`MAX_ENTRY_BYTES`] (peers refuse Raft messages
//! over 64 MiB, so an entry bigger than that would never commit): a batch
//! being assembled stops before the command that would pass the budget, and
//! that command starts the next entry. One command is at most
//! [`MAX_COMMAND_BYTES`] (the `Store` service refuses bigger ones), so every
//! entry holds at least one.
//!
//! [`MAX_COMMAND_BYTES`]: crate::limits::MAX_COMMAND_BYTES
//!
//! Neither adds latency to a lone caller: a request finds a free slot and
//! goes at once. Batches form only while [`IN_FLIGHT`] proposals (or read
//! rounds) are already under way — exactly when waiting is unavoidable.
//! The one exception is a write nobody waits on ([`Command::may_wait`]: the
//! `Resolve(Commit)` a portal sends after answering a cross-shard call). It
//! waits up to [`LAZY_WAIT`] for another write to share its entry, so it
//! neither costs a Raft round of its own nor holds the slot the next
//! call's prepare needs; a read that meets a lock sends it at once
//! ([`WriteBatcher::nudge`]).
//! A read joins only a round that starts after it arrived, so every read
//! still sees everything committed before it began.
//!
//! A proposal that has not finished after [`STALL`] (a leader that is
//! losing its quorum, an entry that a new leader will truncate) gives up its
//! slot, so it holds back the next batch for at most that long; it still
//! answers its own callers when it ends. At most [`MAX_OUTSTANDING`] such
//! proposals are under way at once.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::raft::linearizable_read::LinearizerOption;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::command::{Command, CommandResult};
use crate::config::ReadPolicy;
use crate::limits::MAX_ENTRY_BYTES;
use crate::types::{NodeId, Raft};

/// Proposals (or read rounds) under way at once before callers batch.
///
/// One. First chosen under openraft 0.9, which appended, fsynced and
/// replicated proposals one after another anyway, so a second proposal in
/// flight only split a batch that could have shared one fsync and one
/// AppendEntries. Re-measured on openraft 0.10, which pipelines them (2
/// cores, side by side, docs/performance.md): kv-put at 64 clients 8,824 /
/// 8,778 ops/s with one against 8,367 / 8,507 with two and 8,293 / 9,112
/// with three; at 256 clients 12,898 / 12,754 against 12,224 / 12,641 and
/// 11,876 / 12,463. Smaller entries cost more CPU per write, and the two
/// cores are what writes run out of.
pub const IN_FLIGHT: usize = 1;
/// How long a proposal or read round may hold its slot before the next
/// batch goes anyway. Far above a healthy round (p99 under 100 ms at 256
/// clients on 2 cores), far below an election.
pub const STALL: Duration = Duration::from_millis(250);
/// How long a lazy write ([`Command::may_wait`]) waits for another write
/// to share its entry before it goes alone. A committed transaction's
/// `Resolve` is such a write: riding in the next prepare's entry, it costs
/// no Raft round of its own and does not hold the slot that prepare needs.
pub const LAZY_WAIT: Duration = Duration::from_millis(2);
/// Most proposals (or read rounds) under way at once, stalled ones included.
pub const MAX_OUTSTANDING: usize = 16;
/// Most commands folded into one entry.
pub const MAX_BATCH: usize = 512;
/// Bytes a `Command::Many` adds around its commands: its tag and length.
const MANY_OVERHEAD_BYTES: usize = 12;

/// Why a batched call did not produce a result.
#[derive(Clone, Debug)]
pub enum BatchError {
    /// This node does not lead; the leader it knows of, if any.
    NotLeader(Option<NodeId>),
    /// Raft could not commit or confirm (quorum lost, shutting down).
    Unavailable(String),
}

/// A caller's write waiting for its entry.
struct PendingWrite {
    /// The command to propose.
    command: Command,
    /// Its encoded size, counted against the entry's byte budget.
    bytes: usize,
    /// Where the caller waits for the command's own result.
    reply: oneshot::Sender<Result<CommandResult, BatchError>>,
}

/// Folds concurrent writes into shared log entries.
#[derive(Clone)]
pub struct WriteBatcher {
    tx: mpsc::Sender<PendingWrite>,
    /// Sends the lazy writes waiting in the queue at once.
    nudge: Arc<Notify>,
}

impl WriteBatcher {
    /// Starts the batcher of `raft`.
    pub fn start(raft: Raft) -> Self {
        WriteBatcher::with_proposer(move |batch| {
            let raft = raft.clone();
            async move { propose(&raft, batch).await }
        })
    }

    /// Starts a batcher that hands each entry's writes to `propose`, which
    /// answers their callers.
    fn with_proposer<F, P>(propose: P) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
        P: FnMut(Vec<PendingWrite>) -> F + Send + 'static,
    {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        let nudge = Arc::new(Notify::new());
        tokio::spawn(write_loop(rx, Arc::clone(&nudge), propose));
        WriteBatcher { tx, nudge }
    }

    /// Proposes the lazy writes waiting for company now: a reader met a
    /// lock that one of them may release.
    pub fn nudge(&self) {
        self.nudge.notify_one();
    }

    /// Proposes `command` (possibly together with others) and returns its
    /// own result once applied. `bytes` is its encoded size (the length of
    /// the request it came in), counted against the entry's byte budget.
    pub async fn write(&self, command: Command, bytes: usize) -> Result<CommandResult, BatchError> {
        let (reply, rx) = oneshot::channel();
        let pending = PendingWrite { command, bytes, reply };
        self.tx.send(pending).await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?;
        rx.await.map_err(|_| BatchError::Unavailable("the node is stopping".into()))?
    }
}

/// Slots for batches: [`IN_FLIGHT`] of them, and [`MAX_OUTSTANDING`] for
/// rounds still under way, stalled ones included.
struct Slots {
    free: Arc<Semaphore>,
    outstanding: Arc<Semaphore>,
}

impl Slots {
    fn new() -> Self {
        Slots { free: Arc::new(Semaphore::new(IN_FLIGHT)), outstanding: Arc::new(Semaphore::new(MAX_OUTSTANDING)) }
    }

    /// Waits for a free slot.
    async fn acquire(&self) -> Slot {
        let closed = "the batcher's semaphores are never closed";
        let outstanding = self.outstanding.clone().acquire_owned().await.expect(closed);
        let free = self.free.clone().acquire_owned().await.expect(closed);
        Slot { free, outstanding }
    }
}

/// A held slot (see [`Slots`]).
struct Slot {
    free: OwnedSemaphorePermit,
    outstanding: OwnedSemaphorePermit,
}

impl Slot {
    /// Runs `round` in its own task. The slot is free again when the round
    /// ends or after [`STALL`], whichever comes first.
    fn spawn(self, round: impl Future<Output = ()> + Send + 'static) {
        let Slot { free, outstanding } = self;
        tokio::spawn(async move {
            tokio::pin!(round);
            if tokio::time::timeout(STALL, &mut round).await.is_err() {
                drop(free);
                round.await;
            }
            drop(outstanding);
        });
    }
}

async fn write_loop<F, P>(mut rx: mpsc::Receiver<PendingWrite>, nudge: Arc<Notify>, mut propose: P)
where
    F: Future<Output = ()> + Send + 'static,
    P: FnMut(Vec<PendingWrite>) -> F,
{
    let slots = Slots::new();
    // Writes not yet in an entry, in arrival order: lazy ones waiting for
    // company, and one that did not fit the previous entry's budget.
    let mut queue: VecDeque<PendingWrite> = VecDeque::new();
    loop {
        // Wait until the queue holds a write that should go now, or its
        // first lazy write has waited `LAZY_WAIT`.
        let mut lazy_until: Option<Instant> = None;
        while queue.is_empty() || lazy_until.is_some() {
            let timer = async {
                match lazy_until {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                received = rx.recv() => {
                    let Some(write) = received else { return };
                    let lazy = write.command.may_wait() && queue.len() < MAX_BATCH;
                    queue.push_back(write);
                    match lazy {
                        true => lazy_until = lazy_until.or(Some(Instant::now() + LAZY_WAIT)),
                        false => break,
                    }
                }
                () = nudge.notified(), if lazy_until.is_some() => break,
                () = timer => break,
            }
        }
        // The slot first, then the batch: it takes every write that arrived
        // while waiting, up to the entry's budget.
        let slot = slots.acquire().await;
        let first = queue.pop_front().expect("the loop above leaves a write queued");
        let (batch, next) = fill_entry(first, || queue.pop_front().or_else(|| rx.try_recv().ok()), |write| write.bytes);
        if let Some(write) = next {
            queue.push_front(write);
        }
        slot.spawn(propose(batch));
    }
}

/// One entry's worth of writes: `first`, then more from `next` while the
/// entry stays within [`MAX_BATCH`] commands and [`MAX_ENTRY_BYTES`] (as
/// measured by `bytes`). The write that would pass the budget is handed
/// back, to start the next entry.
fn fill_entry<T>(first: T, mut next: impl FnMut() -> Option<T>, bytes: impl Fn(&T) -> usize) -> (Vec<T>, Option<T>) {
    let mut total = MANY_OVERHEAD_BYTES.saturating_add(bytes(&first));
    let mut entry = vec![first];
    while entry.len() < MAX_BATCH {
        let Some(more) = next() else { break };
        total = total.saturating_add(bytes(&more));
        if total > MAX_ENTRY_BYTES {
            return (entry, Some(more));
        }
        entry.push(more);
    }
    (entry, None)
}

/// Proposes a batch as one entry and hands each caller its result.
async fn propose(raft: &Raft, batch: Vec<PendingWrite>) {
    let (commands, callers): (Vec<Command>, Vec<_>) =
        batch.into_iter().map(|write| (write.command, write.reply)).unzip();
    let single = commands.len() == 1;
    crate::metrics::node().batch_commands.observe(commands.len() as f64);
    let command = if single { commands.into_iter().next().expect("one command") } else { Command::Many(commands) };
    let outcome = match raft.client_write(command.into()).await {
        Ok(written) => Ok(written.data),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(BatchError::NotLeader(f.leader_id)),
        // The entry was appended, then dropped by a leader change: it may or
        // may not commit, so this is not `NotLeader` (which invites a blind
        // retry elsewhere) but an unknown outcome.
        Err(RaftError::APIError(e @ ClientWriteError::LogEntryDiscarded(_))) => {
            Err(BatchError::Unavailable(e.to_string()))
        }
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

/// Shares read rounds (a lease check or a ReadIndex round, by
/// [`ReadPolicy`]) among concurrent reads.
#[derive(Clone)]
pub struct ReadBarrier {
    tx: mpsc::Sender<oneshot::Sender<Result<(), BatchError>>>,
}

impl ReadBarrier {
    /// Starts the barrier of `raft`.
    pub fn start(raft: Raft, policy: ReadPolicy) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(read_loop(raft, policy, rx));
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

async fn read_loop(raft: Raft, policy: ReadPolicy, mut rx: mpsc::Receiver<oneshot::Sender<Result<(), BatchError>>>) {
    let slots = Slots::new();
    while let Some(first) = rx.recv().await {
        let slot = slots.acquire().await;
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let raft = raft.clone();
        crate::metrics::node().read_rounds.inc();
        slot.spawn(async move {
            let outcome = match raft.ensure_linearizable(linearizer_option(policy)).await {
                Ok(_) => Ok(()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    Err(BatchError::NotLeader(f.leader_id))
                }
                Err(e) => Err(BatchError::Unavailable(e.to_string())),
            };
            for reader in waiting {
                let _ = reader.send(outcome.clone());
            }
        });
    }
}

/// openraft's option for a read round under `policy`.
fn linearizer_option(policy: ReadPolicy) -> LinearizerOption {
    match policy {
        // The lease when a quorum acknowledged the leader recently enough;
        // otherwise heartbeat at once and wait for the acknowledgements,
        // which makes the round a ReadIndex round.
        ReadPolicy::Lease => LinearizerOption::new(None, true),
        ReadPolicy::ReadIndex => openraft::ReadPolicy::ReadIndex.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encoded_len;
    use crate::command::{Outcome, TxnId};
    use crate::limits::MAX_COMMAND_BYTES;
    use tokio::time::Instant;

    /// Splits writes of `sizes` into entries as the write loop does.
    fn entries(sizes: &[usize]) -> Vec<Vec<usize>> {
        let mut queue = sizes.iter().copied();
        let mut carried = None;
        let mut entries = Vec::new();
        while let Some(first) = carried.take().or_else(|| queue.next()) {
            let (entry, next) = fill_entry(first, || queue.next(), |bytes| *bytes);
            entries.push(entry);
            carried = next;
        }
        entries
    }

    #[test]
    fn an_entry_stops_before_the_write_that_would_pass_its_byte_budget() {
        let big = MAX_COMMAND_BYTES - 100;
        let sizes = vec![big; 24];
        let split = entries(&sizes);
        assert_eq!(split.concat(), sizes, "every write, once, in order");
        for entry in &split {
            let total: usize = entry.iter().sum::<usize>() + MANY_OVERHEAD_BYTES;
            assert!(total <= MAX_ENTRY_BYTES, "an entry of {total} bytes");
        }
        assert_eq!(split[0].len(), MAX_ENTRY_BYTES / big, "an entry is filled up to its budget");
    }

    #[test]
    fn small_writes_share_an_entry_up_to_the_command_count() {
        let split = entries(&vec![100; MAX_BATCH + 1]);
        assert_eq!(split.iter().map(Vec::len).collect::<Vec<_>>(), vec![MAX_BATCH, 1]);
        let split = entries(&[100, MAX_ENTRY_BYTES, 100]);
        assert_eq!(split, vec![vec![100], vec![MAX_ENTRY_BYTES], vec![100]], "an oversized write goes alone");
    }

    #[test]
    fn the_counted_overhead_is_that_of_many() {
        let command = Command::Batch(vec![]);
        let many = Command::Many(vec![command.clone(), command.clone()]);
        assert_eq!(encoded_len(&many), MANY_OVERHEAD_BYTES + 2 * encoded_len(&command));
    }

    /// The entries a test batcher proposed, each with when it went.
    type Recorded = Arc<std::sync::Mutex<Vec<(Instant, Vec<Command>)>>>;

    /// A batcher whose entries are recorded, with the time each went, and
    /// whose writes all commit.
    fn recording_batcher() -> (WriteBatcher, Recorded) {
        let entries = Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = Arc::clone(&entries);
        let batcher = WriteBatcher::with_proposer(move |batch: Vec<PendingWrite>| {
            let commands = batch.iter().map(|write| write.command.clone()).collect();
            recorded.lock().unwrap().push((Instant::now(), commands));
            async move {
                for write in batch {
                    let _ = write.reply.send(Ok(CommandResult::Committed));
                }
            }
        });
        (batcher, entries)
    }

    fn resolve(outcome: Outcome) -> Command {
        Command::Resolve { id: TxnId::fresh(), outcome, at_ms: 0 }
    }

    /// Starts `command`'s write in the background, as a caller would.
    fn send(batcher: &WriteBatcher, command: Command) -> tokio::task::JoinHandle<Result<CommandResult, BatchError>> {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.write(command, 100).await })
    }

    #[tokio::test(start_paused = true)]
    async fn a_committing_resolve_rides_in_the_next_entry() {
        let (batcher, entries) = recording_batcher();
        let lazy = resolve(Outcome::Commit);
        let waiting = send(&batcher, lazy.clone());
        tokio::time::sleep(LAZY_WAIT / 2).await;
        assert!(entries.lock().unwrap().is_empty(), "a lazy write went before its wait was up");
        let eager = Command::Batch(vec![]);
        send(&batcher, eager.clone()).await.unwrap().unwrap();
        waiting.await.unwrap().unwrap();
        let entries = entries.lock().unwrap();
        assert_eq!(entries.len(), 1, "one entry for both: {entries:?}");
        assert_eq!(entries[0].1, vec![lazy, eager], "the lazy write first, as it arrived first");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_committing_resolve_goes_after_its_wait() {
        let (batcher, entries) = recording_batcher();
        let started = Instant::now();
        send(
            &batcher,
            Command::Once {
                writer: 1,
                seq: 1,
                answered_below: 1,
                at_ms: 0,
                command: Box::new(resolve(Outcome::Commit)),
            },
        )
        .await
        .unwrap()
        .unwrap();
        let went = entries.lock().unwrap()[0].0;
        assert_eq!(went - started, LAZY_WAIT, "a write sent once is as lazy as its command");
    }

    #[tokio::test(start_paused = true)]
    async fn a_nudge_sends_waiting_resolves_at_once() {
        let (batcher, entries) = recording_batcher();
        let started = Instant::now();
        let waiting = send(&batcher, resolve(Outcome::Commit));
        tokio::task::yield_now().await;
        batcher.nudge();
        waiting.await.unwrap().unwrap();
        let went = entries.lock().unwrap()[0].0;
        assert!(went - started < LAZY_WAIT, "went after {:?}", went - started);
    }

    #[tokio::test(start_paused = true)]
    async fn aborts_and_other_writes_do_not_wait() {
        let (batcher, entries) = recording_batcher();
        let started = Instant::now();
        send(&batcher, resolve(Outcome::Abort)).await.unwrap().unwrap();
        send(&batcher, Command::Batch(vec![])).await.unwrap().unwrap();
        for (went, _) in entries.lock().unwrap().iter() {
            assert_eq!(*went, started);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_finished_round_frees_its_slot_at_once() {
        let slots = Slots::new();
        slots.acquire().await.spawn(async {});
        let started = Instant::now();
        slots.acquire().await;
        assert!(started.elapsed() < STALL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_round_frees_its_slot_after_the_stall_time_and_still_finishes() {
        let slots = Slots::new();
        let (done_tx, done_rx) = oneshot::channel();
        let started = Instant::now();
        slots.acquire().await.spawn(async move {
            tokio::time::sleep(STALL * 10).await;
            let _ = done_tx.send(());
        });
        slots.acquire().await;
        assert!(started.elapsed() >= STALL && started.elapsed() < STALL * 2, "{:?}", started.elapsed());
        done_rx.await.expect("the stalled round runs to its end");
        assert!(started.elapsed() >= STALL * 10);
    }

    #[tokio::test(start_paused = true)]
    async fn stalled_rounds_are_bounded() {
        let slots = Slots::new();
        let started = Instant::now();
        for _ in 0..MAX_OUTSTANDING {
            slots.acquire().await.spawn(std::future::pending());
        }
        assert!(started.elapsed() >= STALL * (MAX_OUTSTANDING as u32 - 1));
        let more = tokio::time::timeout(STALL * 100, slots.acquire()).await;
        assert!(more.is_err(), "a slot beyond MAX_OUTSTANDING was handed out");
    }
}
