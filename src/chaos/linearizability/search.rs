//! The Wing–Gong–Lowe search for one key, resumable under a time limit.
//!
//! # The walk
//!
//! The search builds a linearization one operation at a time. It walks the
//! [`EventList`] from its first remaining entry:
//!
//! - at the call of a write, it tries to make that write the next operation
//!   to take effect. If the resulting state is new, it commits to the choice
//!   (pushes a frame, lifts the write's entries) and restarts the walk from
//!   the front; otherwise it walks on;
//! - at the call of a read that matches the register, or of a write of an
//!   unread value while the register already holds one, it places the
//!   operation the same way, but as a *forced* move (see below);
//! - at the return of an operation not yet placed, every choice made since
//!   the last frame has been tried: it backtracks (pops the frame, puts the
//!   entries back, and walks on after that operation's call);
//! - at the drop point of an optional write not yet placed, it drops it, a
//!   forced move too.
//!
//! The history is linearizable once every required operation is placed; it
//! is not once backtracking empties the stack.
//!
//! # What keeps it fast
//!
//! - Memoization ([`memo`](super::memo)): reaching a (done set, register)
//!   state seen before cannot lead anywhere new, so the search refuses it.
//! - Forced reads: a read the walk reaches is minimal (nothing left had to
//!   precede it), so if it matches the register, moving it to the front of
//!   any linearization from here keeps that linearization valid. Placing it
//!   is therefore never a wrong choice: if that fails, this state fails, and
//!   backtracking skips over the read's frame instead of trying alternatives.
//! - Forced unread writes: while the register holds a value no read observed,
//!   nothing but a write can come next, so a minimal write of another unread
//!   value can likewise move to the front of any linearization from here. It
//!   is placed as a forced move, which collapses the otherwise exponential
//!   number of subsets of concurrent unread writes.
//! - Dominated writes, two rules that cut choices which cannot lead anywhere
//!   new. (1) A write of a read value is not tried while a write of an unread
//!   value could go first: any linearization starting with it stays valid
//!   with the unread writes moved just before it. (2) Of several writes of
//!   one value (deletes, above all) only the one that must take effect
//!   soonest is tried: if a linearization starts with a later one, swapping
//!   the two changes no read and the later one fits wherever the sooner one
//!   was; if the sooner one is optional and dropped there, placing it just
//!   before the later one changes nothing either. Each rule points from a
//!   skipped write to one that must take effect strictly sooner or writes an
//!   unread value, so some write is always tried.
//! - Stranding: overwriting value `v` while reads of `v` remain unplaced and
//!   no remaining write can produce `v` again is a dead end, refused at once
//!   instead of at the stranded read's return.
//!
//! The search space is still exponential in the number of writes pending at
//! once; the caller bounds the search in time and memory, and a search that
//! runs out of time is resumed later or reported as unknown.

use std::time::Instant;

use super::events::{Entry, EventList, Node};
use super::memo::{DoneSet, SeenStates};
use super::prepare::{Effect, KeyHistory, KeyOp, ValueId, ABSENT, UNREAD};

/// How many walk steps pass between two looks at the clock.
const STEPS_PER_CLOCK_CHECK: u64 = 1024;

/// How far one call to [`Search::run`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Progress {
    /// The search concluded.
    Decided(Finding),
    /// Its time slice ended; call again to resume.
    Paused,
    /// It remembers as many states as it was allowed; it cannot go on.
    OutOfMemory,
}

/// What the search concluded about its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Finding {
    /// A linearization exists.
    Linearizable,
    /// None exists; the deepest dead end found explains why.
    Violation(DeadEnd),
}

/// The deepest point the search reached before it had to backtrack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DeadEnd {
    /// The operation that could not take effect before its return.
    pub(super) op: usize,
    /// How many required operations had been placed before it.
    pub(super) placed: usize,
    /// What the register held there.
    pub(super) register: ValueId,
    /// If `op` is a write that was refused for stranding: a read it would strand.
    pub(super) stranded_read: Option<usize>,
}

/// One choice on the stack, with what undoing it needs.
#[derive(Clone, Copy, Debug)]
struct Frame {
    /// The operation placed or dropped.
    op: usize,
    /// The register before the choice.
    register_before: ValueId,
    /// Whether it was the only way on, so backtracking must undo the frame below too.
    forced: bool,
}

/// The state of one key's search, kept between time slices.
#[derive(Debug)]
pub(super) struct Search {
    /// The key's prepared operations.
    history: KeyHistory,
    /// The entries not yet lifted.
    events: EventList,
    /// The operations placed or dropped so far.
    done: DoneSet,
    /// The register after the operations placed so far.
    register: ValueId,
    /// The choices made so far, innermost last.
    stack: Vec<Frame>,
    /// The entry the walk stands on.
    cursor: Node,
    /// Every state committed to so far.
    seen: SeenStates,
    /// Per value, how many reads of it are not placed yet.
    readers_left: Vec<u32>,
    /// Per value, how many writes of it are neither placed nor dropped yet.
    writers_left: Vec<u32>,
    /// Per value, the reads that observed it, to name one in explanations.
    readers: Vec<Vec<usize>>,
    /// How many required operations are not placed yet.
    required_left: usize,
    /// How many required operations there are.
    required_total: usize,
    /// The deepest dead end so far.
    deepest: Option<DeadEnd>,
    /// Walk steps left before the next look at the clock.
    steps_to_clock_check: u64,
}

impl Search {
    /// A search at its start: nothing placed, the register absent.
    pub(super) fn new(history: KeyHistory) -> Self {
        let events = EventList::new(&history);
        let mut writers_left = vec![0; history.value_count()];
        let mut readers = vec![Vec::new(); history.value_count()];
        for (index, op) in history.ops.iter().enumerate() {
            match op.effect {
                Effect::Read(value) => readers[value as usize].push(index),
                Effect::Write(value) => writers_left[value as usize] += 1,
            }
        }
        let readers_left = readers.iter().map(|reads| reads.len() as u32).collect();
        let mut seen = SeenStates::default();
        let done = DoneSet::new(history.ops.len());
        seen.insert(&done, ABSENT);
        Search {
            cursor: events.first(),
            required_left: history.required_count(),
            required_total: history.required_count(),
            events,
            done,
            register: ABSENT,
            stack: Vec::new(),
            seen,
            readers_left,
            writers_left,
            readers,
            deepest: None,
            steps_to_clock_check: STEPS_PER_CLOCK_CHECK,
            history,
        }
    }

    /// The key's prepared operations.
    pub(super) fn history(&self) -> &KeyHistory {
        &self.history
    }

    /// How many distinct states the search has committed to.
    pub(super) fn states_explored(&self) -> usize {
        self.seen.len()
    }

    /// Searches until it concludes, `until` passes, or it remembers `max_states` states.
    ///
    /// Every call takes at least one step, so repeated calls always progress.
    pub(super) fn run(&mut self, until: Instant, max_states: usize) -> Progress {
        loop {
            if self.required_left == 0 {
                return Progress::Decided(Finding::Linearizable);
            }
            if !self.step() {
                let deepest = self.deepest.expect("an exhausted search backtracked from at least one return");
                return Progress::Decided(Finding::Violation(deepest));
            }
            self.steps_to_clock_check -= 1;
            if self.steps_to_clock_check == 0 {
                self.steps_to_clock_check = STEPS_PER_CLOCK_CHECK;
                if self.seen.len() >= max_states {
                    return Progress::OutOfMemory;
                }
                if Instant::now() >= until {
                    return Progress::Paused;
                }
            }
        }
    }

    /// Handles the entry under the cursor; false once no choice is left.
    fn step(&mut self) -> bool {
        match self.events.entry(self.cursor) {
            Entry::Call(op) => match self.history.ops[op].effect {
                Effect::Read(value) if value == self.register => self.place_forced(op),
                Effect::Read(_) => self.walk_on(),
                Effect::Write(UNREAD) if self.register == UNREAD => self.place_forced(op),
                Effect::Write(value) => self.try_place_write(op, value) || self.walk_on(),
            },
            Entry::Return(op) => {
                self.note_dead_end(op);
                self.backtrack()
            }
            Entry::DropPoint(op) => self.drop_optional(op),
        }
    }

    /// Moves the cursor past an entry it cannot act on.
    fn walk_on(&mut self) -> bool {
        self.cursor = self.events.next(self.cursor);
        true
    }

    /// Places the minimal operation `op`, which leaves the register as it is
    /// and which any linearization from here could start with: a forced move.
    /// If its state was already seen (and so failed), this state fails too.
    fn place_forced(&mut self, op: usize) -> bool {
        self.commit(Frame { op, register_before: self.register, forced: true }, self.register) || self.backtrack()
    }

    /// Makes the write `op` of `value` the next operation to take effect, if allowed and new.
    fn try_place_write(&mut self, op: usize, value: ValueId) -> bool {
        let changes_register = value != self.register;
        if changes_register && self.would_strand(self.register) {
            return false;
        }
        if self.has_better_choice_than(op) {
            return false;
        }
        self.commit(Frame { op, register_before: self.register, forced: false }, value)
    }

    /// Decides that the optional write `op` never took effect, the only way past its drop point.
    fn drop_optional(&mut self, op: usize) -> bool {
        let Effect::Write(value) = self.history.ops[op].effect else { unreachable!("only writes are optional") };
        let readers = self.readers_left[value as usize];
        assert!(readers == 0, "an optional write's drop point passed with {readers} reads of its value unplaced");
        self.commit(Frame { op, register_before: self.register, forced: true }, self.register) || self.backtrack()
    }

    /// Whether another write that could take effect now is at least as good a
    /// next step as the write `op` (see "Dominated writes" above).
    fn has_better_choice_than(&self, op: usize) -> bool {
        let candidate = &self.history.ops[op];
        let writes_read_value = candidate.effect != Effect::Write(UNREAD);
        let mut node = self.events.first();
        while let Some(Entry::Call(other)) = self.events.entry_at(node) {
            node = self.events.next(node);
            let rival = &self.history.ops[other];
            if other == op || !matches!(rival.effect, Effect::Write(_)) {
                continue;
            }
            if (writes_read_value && rival.effect == Effect::Write(UNREAD))
                || (rival.effect == candidate.effect && is_sooner(rival, other, candidate, op))
            {
                return true;
            }
        }
        false
    }

    /// Whether overwriting `value` now leaves some read of it impossible to place.
    fn would_strand(&self, value: ValueId) -> bool {
        self.readers_left[value as usize] > 0 && self.writers_left[value as usize] == 0
    }

    /// Applies `frame` with the register becoming `register`, unless that state was seen.
    fn commit(&mut self, frame: Frame, register: ValueId) -> bool {
        self.done.toggle(frame.op);
        if !self.seen.insert(&self.done, register) {
            self.done.toggle(frame.op);
            return false;
        }
        self.count_done(frame.op, true);
        self.register = register;
        self.events.lift(frame.op);
        self.stack.push(frame);
        self.cursor = self.events.first();
        true
    }

    /// Undoes choices until one leaves an alternative; false if none does.
    fn backtrack(&mut self) -> bool {
        while let Some(frame) = self.stack.pop() {
            self.events.unlift(frame.op);
            self.count_done(frame.op, false);
            self.register = frame.register_before;
            self.done.toggle(frame.op);
            if !frame.forced {
                self.cursor = self.events.next(self.events.call_node(frame.op));
                return true;
            }
        }
        false
    }

    /// Updates the per-value and required counters as `op` becomes done or undone.
    fn count_done(&mut self, op: usize, done: bool) {
        let key_op = self.history.ops[op];
        let counter = match key_op.effect {
            Effect::Read(value) => &mut self.readers_left[value as usize],
            Effect::Write(value) => &mut self.writers_left[value as usize],
        };
        *counter = if done { *counter - 1 } else { *counter + 1 };
        if key_op.is_required() {
            self.required_left = if done { self.required_left - 1 } else { self.required_left + 1 };
        }
    }

    /// Remembers the dead end at `op`'s return if it is the deepest so far.
    fn note_dead_end(&mut self, op: usize) {
        let placed = self.required_total - self.required_left;
        if self.deepest.is_none_or(|deepest| placed > deepest.placed) {
            let stranded_read = match self.history.ops[op].effect {
                Effect::Write(value) if value != self.register && self.would_strand(self.register) => {
                    self.readers[self.register as usize].iter().copied().find(|&read| !self.done.contains(read))
                }
                _ => None,
            };
            self.deepest = Some(DeadEnd { op, placed, register: self.register, stranded_read });
        }
    }
}

/// Whether `rival` must take effect before `candidate` (ties broken by position).
fn is_sooner(rival: &KeyOp, rival_index: usize, candidate: &KeyOp, candidate_index: usize) -> bool {
    (rival.deadline.at(), rival_index) < (candidate.deadline.at(), candidate_index)
}
