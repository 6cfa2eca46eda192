//! Randomized histories from a real register, so the answer is known.
//!
//! Simulated clients run against one in-memory store. Each operation is
//! called, takes effect on the store at a later step, and returns at a later
//! step still, so the order of effects is a linearization by construction.
//! Some operations fail (no effect), some time out: a timed-out write may
//! still take effect much later, or never. Corrupting one read to return a
//! value overwritten before the read began must then be caught.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::{check_history, KeyVerdict, Verdict};
use crate::chaos::history::{read_jsonl, write_jsonl, OpKind, Operation, Outcome};

/// Enough for every history here; running out is a failure, not a pass.
const BUDGET: Duration = Duration::from_secs(60);

/// The shape of a simulated run.
#[derive(Clone, Copy, Debug)]
struct Workload {
    /// Concurrent clients, each with at most one operation in flight.
    clients: u64,
    /// Keys the clients pick from uniformly.
    keys: u64,
    /// Operations to record.
    ops: usize,
    /// Seed of the run's only randomness.
    seed: u64,
}

/// How an in-flight operation will end.
#[derive(Clone, Copy, Debug)]
enum Fate {
    /// It takes effect, then the client hears so.
    Acknowledged,
    /// It never takes effect, and the client hears so.
    Failed,
    /// The client gives up; a write may still take effect much later.
    TimedOut {
        /// Whether the write does take effect eventually.
        applies_later: bool,
    },
}

/// An operation a client has called and not yet finished.
#[derive(Debug)]
struct InFlight {
    /// The record so far (observed value and return time filled in as it goes).
    op: Operation,
    /// How it will end.
    fate: Fate,
    /// Whether it has taken effect on the store.
    applied: bool,
}

/// The simulated store, clients and clock.
struct Simulation {
    /// The run's only randomness.
    rng: StdRng,
    /// Simulated nanoseconds.
    clock: u64,
    /// The real register of each key: the ground truth.
    store: HashMap<String, Option<String>>,
    /// Each client's operation in flight, if any.
    clients: Vec<Option<InFlight>>,
    /// Timed-out writes that will still take effect at some later step.
    lingering_writes: Vec<Operation>,
    /// The finished operations, in return order.
    history: Vec<Operation>,
    /// Counter that keeps written values unique.
    next_value: u64,
}

fn simulate(workload: Workload) -> Vec<Operation> {
    let mut simulation = Simulation {
        rng: StdRng::seed_from_u64(workload.seed),
        clock: 0,
        store: HashMap::new(),
        clients: (0..workload.clients).map(|_| None).collect(),
        lingering_writes: Vec::new(),
        history: Vec::new(),
        next_value: 0,
    };
    while simulation.history.len() < workload.ops {
        simulation.step(workload);
    }
    simulation.finish();
    simulation.history
}

impl Simulation {
    fn step(&mut self, workload: Workload) {
        self.clock += self.rng.gen_range(1..=10);
        if !self.lingering_writes.is_empty() && self.rng.gen_bool(0.05) {
            let index = self.rng.gen_range(0..self.lingering_writes.len());
            let mut write = self.lingering_writes.swap_remove(index);
            self.apply(&mut write);
        }
        let client = self.rng.gen_range(0..workload.clients);
        let flight = match self.clients[client as usize].take() {
            None => Some(self.call(client, workload)),
            Some(flight) => self.advance(flight),
        };
        self.clients[client as usize] = flight;
    }

    fn call(&mut self, client: u64, workload: Workload) -> InFlight {
        let key = format!("key-{}", self.rng.gen_range(0..workload.keys));
        let kind = match self.rng.gen_range(0..10) {
            0..=4 => OpKind::Read,
            5..=8 => {
                self.next_value += 1;
                OpKind::Write(format!("v{}", self.next_value))
            }
            _ => OpKind::Delete,
        };
        let fate = match self.rng.gen_range(0..20) {
            0 => Fate::Failed,
            1 => Fate::TimedOut { applies_later: self.rng.gen_bool(0.5) },
            _ => Fate::Acknowledged,
        };
        let op = Operation {
            client,
            key,
            kind,
            observed: None,
            called_at: self.clock,
            returned_at: None,
            outcome: Outcome::Ok,
        };
        InFlight { op, fate, applied: false }
    }

    fn advance(&mut self, mut flight: InFlight) -> Option<InFlight> {
        match flight.fate {
            Fate::Acknowledged if !flight.applied => {
                self.apply(&mut flight.op);
                flight.applied = true;
                return Some(flight);
            }
            Fate::Acknowledged => {}
            Fate::Failed => flight.op = flight.op.failed(),
            Fate::TimedOut { applies_later } => {
                if applies_later && flight.op.kind != OpKind::Read {
                    self.lingering_writes.push(flight.op.clone());
                }
                flight.op = flight.op.unknown();
            }
        }
        let gave_up_silently = matches!(flight.fate, Fate::TimedOut { .. }) && self.rng.gen_bool(0.5);
        flight.op.returned_at = (!gave_up_silently).then_some(self.clock);
        self.history.push(flight.op);
        None
    }

    fn apply(&mut self, op: &mut Operation) {
        let value = self.store.entry(op.key.clone()).or_default();
        match &op.kind {
            OpKind::Read => op.observed = value.clone(),
            OpKind::Write(written) => *value = Some(written.clone()),
            OpKind::Delete => *value = None,
        }
    }

    /// Lets every client finish what it has in flight.
    fn finish(&mut self) {
        for client in 0..self.clients.len() {
            let mut flight = self.clients[client].take();
            while let Some(in_flight) = flight {
                self.clock += 1;
                flight = self.advance(in_flight);
            }
        }
    }
}

/// Makes one acknowledged read return a value overwritten before the read was
/// called (values are unique, so no linearization explains it); returns its key.
fn corrupt_one_read(history: &mut [Operation], rng: &mut StdRng) -> Option<String> {
    let acknowledged = |op: &&Operation| op.outcome == Outcome::Ok && op.kind != OpKind::Read;
    let mutations: Vec<&Operation> = history.iter().filter(acknowledged).collect();
    let mut reads: Vec<usize> =
        (0..history.len()).filter(|&i| history[i].outcome == Outcome::Ok && history[i].kind == OpKind::Read).collect();
    reads.shuffle(rng);
    let (read, stale) = reads.into_iter().find_map(|read| {
        let read_op = &history[read];
        let same_key = |op: &&&Operation| op.key == read_op.key;
        let finished_before_read = |op: &&&Operation| op.returned_at < Some(read_op.called_at);
        let overwrite = mutations.iter().filter(same_key).filter(finished_before_read).max_by_key(|op| op.called_at)?;
        let stale = mutations.iter().filter(same_key).rev().find_map(|op| match &op.kind {
            OpKind::Write(value) if op.returned_at < Some(overwrite.called_at) => Some(value.clone()),
            _ => None,
        })?;
        Some((read, stale))
    })?;
    history[read].observed = Some(stale);
    Some(history[read].key.clone())
}

fn check_and_time(history: &[Operation]) -> super::Report {
    let started = Instant::now();
    let report = check_history(history, BUDGET).unwrap();
    eprintln!("{} operations: {report} (wall {:?})", history.len(), started.elapsed());
    report
}

fn assert_linearizable_then_caught_when_corrupted(workload: Workload) {
    let mut history = simulate(workload);
    let report = check_and_time(&history);
    assert_eq!(report.verdict, Verdict::Linearizable, "{workload:?}: {report}");
    let mut rng = StdRng::seed_from_u64(workload.seed ^ 0xbad);
    let key = corrupt_one_read(&mut history, &mut rng).expect("the workload has a stale-able read");
    let report = check_and_time(&history);
    assert!(matches!(report.keys[&key], KeyVerdict::Violation(_)), "{workload:?}: {report}");
    assert_eq!(report.verdict, Verdict::Violation);
}

#[test]
fn small_random_histories() {
    for seed in 0..40 {
        assert_linearizable_then_caught_when_corrupted(Workload { clients: 8, keys: 2, ops: 200, seed });
    }
}

#[test]
fn hot_key_history() {
    assert_linearizable_then_caught_when_corrupted(Workload { clients: 16, keys: 1, ops: 2_000, seed: 7 });
}

#[test]
fn chaos_sized_history() {
    assert_linearizable_then_caught_when_corrupted(Workload { clients: 32, keys: 20, ops: 10_000, seed: 42 });
}

#[test]
fn saved_history_rechecks_the_same() {
    let history = simulate(Workload { clients: 8, keys: 4, ops: 500, seed: 3 });
    let mut file = Vec::new();
    write_jsonl(&history, &mut file).unwrap();
    let reloaded = read_jsonl(&file[..]).unwrap();
    assert_eq!(reloaded, history);
    assert_eq!(check_history(&reloaded, BUDGET).unwrap().verdict, Verdict::Linearizable);
}
