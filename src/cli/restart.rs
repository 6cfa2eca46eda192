//! When `up` restarts a child that failed, and when it gives up on one.
//!
//! A child that exits with a failure while `up` runs is restarted after a
//! pause that starts at [`FIRST_BACKOFF`] and doubles with each further
//! crash, up to [`MAX_BACKOFF`]; a child that ran for [`STABLE_RUN`] before
//! crashing starts over at the first pause. A child that crashes
//! [`MAX_CRASHES`] times within [`CRASH_WINDOW`] is given up on: restarting
//! it again would only flood the terminal, and the operator has to look.
//!
//! Everything here is pure: time comes in as [`Instant`] values, so the
//! policy is unit tested without processes or clocks. `up` asks
//! [`Restarts`] what to do when a child exits, and when the next restart is
//! due.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The pause before the first restart of a child.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// The longest pause before a restart.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A child that ran this long before it crashed gets the first pause again.
pub const STABLE_RUN: Duration = Duration::from_secs(30);
/// How many crashes within [`CRASH_WINDOW`] make `up` give up on a child.
pub const MAX_CRASHES: usize = 5;
/// The window [`MAX_CRASHES`] counts crashes in.
pub const CRASH_WINDOW: Duration = Duration::from_secs(60);

/// How `up` restarts children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The pause before the first restart.
    pub first_backoff: Duration,
    /// The longest pause.
    pub max_backoff: Duration,
    /// A run at least this long resets the pause.
    pub stable_run: Duration,
    /// Crashes within `window` that make `up` give up.
    pub max_crashes: usize,
    /// The window crashes are counted in.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            first_backoff: FIRST_BACKOFF,
            max_backoff: MAX_BACKOFF,
            stable_run: STABLE_RUN,
            max_crashes: MAX_CRASHES,
            window: CRASH_WINDOW,
        }
    }
}

/// What to do about a child that just crashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Start it again after a pause.
    Restart {
        /// The pause.
        after: Duration,
        /// Its crashes within the window, this one included.
        crashes: usize,
    },
    /// Leave it stopped: it crashed too often.
    GiveUp {
        /// Its crashes within the window, this one included.
        crashes: usize,
    },
}

/// One child's recent crashes and its current pause.
#[derive(Debug, Default, Clone)]
struct CrashHistory {
    /// When it crashed, oldest first, within the window.
    crashes: VecDeque<Instant>,
    /// The pause before its last restart, if it was restarted.
    backoff: Option<Duration>,
    /// When it was last started.
    started: Option<Instant>,
}

impl CrashHistory {
    /// Records a crash at `at` and decides what follows.
    fn crashed(&mut self, policy: &RestartPolicy, at: Instant) -> Verdict {
        self.crashes.push_back(at);
        while self.crashes.front().is_some_and(|first| at.saturating_duration_since(*first) > policy.window) {
            self.crashes.pop_front();
        }
        let crashes = self.crashes.len();
        if crashes >= policy.max_crashes {
            return Verdict::GiveUp { crashes };
        }
        let ran = self.started.map(|started| at.saturating_duration_since(started));
        let after = match (self.backoff, ran) {
            (Some(last), Some(ran)) if ran < policy.stable_run => last.saturating_mul(2).min(policy.max_backoff),
            _ => policy.first_backoff,
        };
        self.backoff = Some(after);
        Verdict::Restart { after, crashes }
    }
}

/// The restart bookkeeping of every child of `up`.
#[derive(Debug, Default)]
pub struct Restarts {
    /// The rules.
    policy: RestartPolicy,
    /// Per child name, its crashes.
    histories: BTreeMap<String, CrashHistory>,
    /// Per child name, when its pending restart is due.
    pending: BTreeMap<String, Instant>,
}

impl Restarts {
    /// No child has crashed yet.
    pub fn new(policy: RestartPolicy) -> Self {
        Restarts { policy, histories: BTreeMap::new(), pending: BTreeMap::new() }
    }

    /// The rules in force.
    pub fn policy(&self) -> &RestartPolicy {
        &self.policy
    }

    /// Notes that `name` was (re)started at `at`.
    pub fn started(&mut self, name: &str, at: Instant) {
        self.histories.entry(name.to_owned()).or_default().started = Some(at);
    }

    /// Notes that `name` crashed at `at`; schedules its restart unless the
    /// verdict is to give up.
    pub fn crashed(&mut self, name: &str, at: Instant) -> Verdict {
        let verdict = self.histories.entry(name.to_owned()).or_default().crashed(&self.policy, at);
        if let Verdict::Restart { after, .. } = verdict {
            self.pending.insert(name.to_owned(), at + after);
        }
        verdict
    }

    /// When the next pending restart is due, if any is pending.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.values().min().copied()
    }

    /// The children whose restart is due at `now`, no longer pending.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let due: Vec<String> = self.pending.iter().filter(|(_, at)| **at <= now).map(|(n, _)| n.clone()).collect();
        for name in &due {
            self.pending.remove(name);
        }
        due
    }

    /// How many restarts are pending.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    /// Crashes `name` right after each restart (a child that cannot stay
    /// up), returning the verdicts.
    fn crash_loop(restarts: &mut Restarts, start: Instant, times: usize) -> Vec<Verdict> {
        let mut now = start;
        restarts.started("node-1", now);
        let mut verdicts = Vec::new();
        for _ in 0..times {
            now += ms(100);
            let verdict = restarts.crashed("node-1", now);
            verdicts.push(verdict);
            if let Verdict::Restart { after, .. } = verdict {
                now += after;
                assert_eq!(restarts.take_due(now), ["node-1"]);
                restarts.started("node-1", now);
            }
        }
        verdicts
    }

    #[test]
    fn the_pause_doubles_then_up_gives_up_after_five_crashes_in_a_minute() {
        let mut restarts = Restarts::new(RestartPolicy::default());
        let verdicts = crash_loop(&mut restarts, Instant::now(), 5);
        let expected = [
            Verdict::Restart { after: ms(500), crashes: 1 },
            Verdict::Restart { after: ms(1000), crashes: 2 },
            Verdict::Restart { after: ms(2000), crashes: 3 },
            Verdict::Restart { after: ms(4000), crashes: 4 },
            Verdict::GiveUp { crashes: 5 },
        ];
        assert_eq!(verdicts, expected);
        assert_eq!(restarts.pending(), 0, "a child given up on is not restarted");
    }

    #[test]
    fn the_pause_stops_at_its_maximum() {
        let policy = RestartPolicy { max_crashes: 100, ..RestartPolicy::default() };
        let mut restarts = Restarts::new(policy);
        let verdicts = crash_loop(&mut restarts, Instant::now(), 8);
        let pauses: Vec<u64> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Restart { after, .. } => after.as_millis() as u64,
                Verdict::GiveUp { .. } => 0,
            })
            .collect();
        assert_eq!(pauses, [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000]);
    }

    #[test]
    fn crashes_out_of_the_window_are_forgotten_and_a_long_run_resets_the_pause() {
        let mut restarts = Restarts::new(RestartPolicy::default());
        let start = Instant::now();
        restarts.started("node-2", start);
        for minute in 1..=10 {
            let at = start + Duration::from_secs(61 * minute);
            assert_eq!(restarts.crashed("node-2", at), Verdict::Restart { after: FIRST_BACKOFF, crashes: 1 });
            restarts.started("node-2", at + FIRST_BACKOFF);
        }
    }

    #[test]
    fn due_restarts_come_in_time_and_each_once() {
        let mut restarts = Restarts::new(RestartPolicy::default());
        let start = Instant::now();
        restarts.crashed("node-1", start);
        restarts.crashed("admin-portal", start + ms(200));
        assert_eq!(restarts.next_due(), Some(start + FIRST_BACKOFF));
        assert!(restarts.take_due(start + ms(499)).is_empty());
        assert_eq!(restarts.take_due(start + ms(500)), ["node-1"]);
        assert_eq!(restarts.next_due(), Some(start + ms(700)));
        assert_eq!(restarts.take_due(start + ms(10_000)), ["admin-portal"]);
        assert_eq!((restarts.next_due(), restarts.pending()), (None, 0));
    }

    #[test]
    fn children_are_counted_apart() {
        let mut restarts = Restarts::new(RestartPolicy::default());
        let start = Instant::now();
        crash_loop(&mut restarts, start, 4);
        assert_eq!(restarts.crashed("node-2", start), Verdict::Restart { after: FIRST_BACKOFF, crashes: 1 });
    }
}
