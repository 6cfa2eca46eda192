//! Hand-written histories with a known answer. Times are in nanoseconds;
//! `[call, return]` intervals are chosen so that overlaps are obvious.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::prepare::prepare;
use super::search::{Finding, Progress, Search};
use super::*;
use crate::chaos::history::Outcome;

/// Far more than any test here needs: a test that ends Unknown is a bug.
const BUDGET: Duration = Duration::from_secs(30);

fn write(client: u64, value: &str, called_at: u64, returned_at: u64) -> Operation {
    Operation::write(client, "k", value, called_at, returned_at)
}

fn read(client: u64, observed: Option<&str>, called_at: u64, returned_at: u64) -> Operation {
    Operation::read(client, "k", observed, called_at, returned_at)
}

fn delete(client: u64, called_at: u64, returned_at: u64) -> Operation {
    Operation::delete(client, "k", called_at, returned_at)
}

/// A write of unknown outcome that never returned.
fn lost_write(client: u64, value: &str, called_at: u64) -> Operation {
    write(client, value, called_at, called_at).unknown().never_returned()
}

fn verdict(history: &[Operation]) -> KeyVerdict {
    let report = check_history(history, BUDGET).expect("valid history");
    assert!(report.verdict != Verdict::Unknown, "undecided within {BUDGET:?}: {report}");
    report.keys.get("k").cloned().unwrap_or(KeyVerdict::Linearizable)
}

fn assert_linearizable(history: &[Operation]) {
    let verdict = verdict(history);
    assert_eq!(verdict, KeyVerdict::Linearizable, "{history:#?}");
}

fn assert_violation(history: &[Operation]) -> Violation {
    match verdict(history) {
        KeyVerdict::Violation(violation) => violation,
        other => panic!("expected a violation, got {other:?} for {history:#?}"),
    }
}

#[test]
fn empty_history_is_linearizable() {
    let report = check_history(&[], BUDGET).unwrap();
    assert_eq!(report.verdict, Verdict::Linearizable);
    assert!(report.keys.is_empty());
}

#[test]
fn sequential_history_is_linearizable() {
    assert_linearizable(&[
        read(1, None, 0, 1),
        write(1, "a", 2, 3),
        read(2, Some("a"), 4, 5),
        write(2, "b", 6, 7),
        read(1, Some("b"), 8, 9),
        delete(3, 10, 11),
        read(1, None, 12, 13),
    ]);
}

#[test]
fn read_concurrent_with_a_write_may_see_old_or_new() {
    assert_linearizable(&[write(1, "a", 0, 10), read(2, None, 2, 4)]);
    assert_linearizable(&[write(1, "a", 0, 10), read(2, Some("a"), 2, 4)]);
    // Touching at one instant counts as concurrent.
    assert_linearizable(&[write(1, "a", 0, 10), read(2, None, 10, 20)]);
}

#[test]
fn overlapping_writes_may_take_effect_in_either_order() {
    let writes = [write(1, "a", 0, 10), write(2, "b", 0, 10)];
    assert_linearizable(&[writes[0].clone(), writes[1].clone(), read(3, Some("a"), 20, 30)]);
    assert_linearizable(&[writes[0].clone(), writes[1].clone(), read(3, Some("b"), 20, 30)]);
    assert_linearizable(&[
        write(1, "a", 0, 100),
        write(2, "b", 0, 100),
        read(3, Some("a"), 10, 20),
        read(4, Some("b"), 30, 40),
    ]);
}

#[test]
fn clients_must_agree_on_the_order_of_overlapping_writes() {
    let violation = assert_violation(&[
        write(1, "a", 0, 100),
        write(2, "b", 0, 100),
        read(3, Some("a"), 10, 20),
        read(4, Some("b"), 30, 40),
        read(3, Some("a"), 50, 60),
    ]);
    assert_eq!(violation.key, "k");
}

#[test]
fn failed_writes_and_unknown_reads_are_ignored() {
    let unknown_read = Operation { observed: Some("garbage".into()), outcome: Outcome::Unknown, ..read(2, None, 4, 5) };
    assert_linearizable(&[write(1, "a", 0, 1), write(1, "f", 2, 3).failed(), unknown_read, read(3, Some("a"), 6, 7)]);
}

#[test]
fn values_need_not_be_unique() {
    assert_linearizable(&[write(1, "x", 0, 1), write(1, "y", 2, 3), write(2, "x", 2, 10), read(3, Some("x"), 4, 5)]);
    assert_violation(&[write(1, "x", 0, 1), write(1, "y", 2, 3), read(3, Some("x"), 4, 5), write(2, "x", 6, 7)]);
}

#[test]
fn stale_read_after_a_completed_write_is_a_violation() {
    let violation = assert_violation(&[write(1, "a", 0, 1), write(1, "b", 2, 3), read(2, Some("a"), 4, 5)]);
    assert!(violation.explanation.contains("holding \"a\""), "{}", violation.explanation);
    assert!(violation.explanation.contains("client 2's read of \"a\""), "{}", violation.explanation);
    assert!(violation.explanation.contains("client 1's write of \"b\""), "{}", violation.explanation);
}

#[test]
fn read_of_a_value_never_written_is_a_violation() {
    let violation = assert_violation(&[write(1, "a", 0, 1), read(2, Some("z"), 4, 5)]);
    assert_eq!(violation.op_index, 1);
    assert!(violation.explanation.contains("no write"), "{}", violation.explanation);
}

#[test]
fn read_of_a_value_only_a_failed_write_wrote_is_a_violation() {
    assert_violation(&[write(1, "f", 0, 1).failed(), read(2, Some("f"), 4, 5)]);
}

#[test]
fn read_of_a_value_written_only_later_is_a_violation() {
    let violation = assert_violation(&[read(2, Some("a"), 0, 1), write(1, "a", 5, 6)]);
    assert!(violation.explanation.contains("only called at 5 ns"), "{}", violation.explanation);
}

#[test]
fn new_value_then_old_value_is_a_violation() {
    assert_violation(&[write(1, "a", 0, 1), write(1, "b", 2, 10), read(2, Some("b"), 3, 4), read(3, Some("a"), 5, 6)]);
}

#[test]
fn lost_acknowledged_write_is_a_violation() {
    assert_violation(&[write(1, "a", 0, 10), read(2, None, 20, 30)]);
    assert_violation(&[write(1, "a", 0, 1), write(2, "b", 0, 1), read(3, None, 5, 6)]);
}

#[test]
fn deleted_value_resurfacing_is_a_violation() {
    assert_violation(&[write(1, "a", 0, 1), delete(1, 2, 3), read(2, Some("a"), 4, 5)]);
}

#[test]
fn unknown_write_may_never_happen() {
    assert_linearizable(&[write(1, "a", 0, 1), lost_write(2, "u", 2), read(3, Some("a"), 10, 20)]);
}

#[test]
fn unknown_write_may_happen_long_after_it_timed_out() {
    let timed_out = write(2, "u", 0, 5).unknown();
    assert_linearizable(&[timed_out, read(1, None, 10, 20), read(1, Some("u"), 1000, 1010)]);
}

#[test]
fn unknown_write_cannot_be_seen_before_its_call() {
    assert_violation(&[read(1, Some("u"), 0, 5), lost_write(2, "u", 10)]);
}

#[test]
fn unknown_write_cannot_take_effect_twice() {
    assert_violation(&[
        lost_write(1, "u", 0),
        read(2, Some("u"), 10, 20),
        write(3, "b", 30, 40),
        read(2, Some("u"), 50, 60),
    ]);
}

#[test]
fn unknown_writes_may_take_effect_in_either_order_but_only_once() {
    let writes = [lost_write(1, "u1", 0), lost_write(2, "u2", 0)];
    let mut history =
        vec![writes[0].clone(), writes[1].clone(), read(3, Some("u2"), 10, 20), read(3, Some("u1"), 30, 40)];
    assert_linearizable(&history);
    history.push(read(3, Some("u2"), 50, 60));
    assert_violation(&history);
}

#[test]
fn unknown_delete_may_explain_an_absent_read() {
    let unknown_delete = delete(2, 2, 3).unknown();
    assert_linearizable(&[write(1, "a", 0, 1), unknown_delete, read(3, None, 10, 11)]);
    assert_violation(&[write(1, "a", 0, 1), read(3, None, 10, 11)]);
}

#[test]
fn unknown_write_does_not_excuse_losing_an_acknowledged_one() {
    assert_violation(&[write(1, "a", 0, 1), lost_write(2, "u", 5), read(3, None, 10, 11)]);
}

#[test]
fn keys_are_independent_registers() {
    let history = [
        Operation::write(1, "x", "1", 0, 1),
        Operation::read(2, "y", None, 2, 3),
        Operation::read(2, "x", Some("1"), 4, 5),
        Operation::read(3, "y", Some("1"), 6, 7),
    ];
    let report = check_history(&history, BUDGET).unwrap();
    assert_eq!(report.verdict, Verdict::Violation, "{report}");
    assert_eq!(report.keys["x"], KeyVerdict::Linearizable);
    assert!(matches!(&report.keys["y"], KeyVerdict::Violation(v) if v.key == "y" && v.op_index == 3));
}

#[test]
fn invalid_operations_are_an_error_not_a_verdict() {
    let error = check_history(&[write(1, "a", 0, 1), write(1, "b", 5, 2)], BUDGET).unwrap_err();
    assert!(matches!(error, HistoryError::Invalid { index: 1, .. }), "{error}");
}

#[test]
fn overall_verdict_prefers_violation_then_unknown() {
    let violation = KeyVerdict::Violation(Violation { key: "b".into(), op_index: 0, explanation: String::new() });
    let unknown = KeyVerdict::Unknown { states_explored: 1 };
    let verdict_of = |verdicts: &[KeyVerdict]| {
        let keys: BTreeMap<String, KeyVerdict> =
            verdicts.iter().enumerate().map(|(i, verdict)| (i.to_string(), verdict.clone())).collect();
        Report::new(keys, Duration::ZERO).verdict
    };
    assert_eq!(verdict_of(&[KeyVerdict::Linearizable, unknown.clone(), violation.clone()]), Verdict::Violation);
    assert_eq!(verdict_of(&[KeyVerdict::Linearizable, unknown]), Verdict::Unknown);
    assert_eq!(verdict_of(&[KeyVerdict::Linearizable]), Verdict::Linearizable);
}

/// `width` concurrent pairs of a write and a read of its value, which can
/// happen in any order (`width * 2^width` states), then a stale read that
/// only an exhaustive search over all those orders can condemn. The later
/// write of "a" keeps the stranding rule from seeing the dead end early.
fn pathological(width: u64) -> Vec<Operation> {
    let mut history = Vec::new();
    for pair in 0..width {
        let value = format!("pair-{pair}");
        history.push(write(2 * pair, &value, 10, 100));
        history.push(read(2 * pair + 1, Some(&value), 10, 100));
    }
    history.extend([write(100, "a", 200, 210), write(100, "b", 220, 230), read(101, Some("a"), 300, 310)]);
    history.push(write(102, "a", 500, 510));
    history
}

#[test]
fn pathological_history_is_a_violation_given_time() {
    assert_violation(&pathological(8));
}

#[test]
fn exhausted_budget_is_unknown_never_a_pass() {
    let started = Instant::now();
    let report = check_history(&pathological(40), Duration::from_millis(50)).unwrap();
    assert_eq!(report.verdict, Verdict::Unknown, "{report}");
    assert!(matches!(report.keys["k"], KeyVerdict::Unknown { states_explored } if states_explored > 1));
    assert!(started.elapsed() < Duration::from_secs(5), "the budget was not respected: {:?}", started.elapsed());
}

#[test]
fn zero_budget_still_reports_violations_found_without_search() {
    let mut history = pathological(4);
    history.push(Operation::read(1, "other", Some("never-written"), 0, 1));
    let report = check_history(&history, Duration::ZERO).unwrap();
    assert_eq!(report.verdict, Verdict::Violation);
    assert!(matches!(report.keys["k"], KeyVerdict::Unknown { .. }));
    assert!(matches!(report.keys["other"], KeyVerdict::Violation(_)));
}

#[test]
fn resumed_search_reaches_the_same_finding() {
    let history = pathological(12);
    let indices: Vec<usize> = (0..history.len()).collect();
    let one_shot = Search::new(prepare("k", &history, &indices).unwrap()).run(Instant::now() + BUDGET, usize::MAX);
    let Progress::Decided(one_shot) = one_shot else { panic!("undecided: {one_shot:?}") };
    let mut search = Search::new(prepare("k", &history, &indices).unwrap());
    let mut slices = 1;
    let resumed = loop {
        match search.run(Instant::now(), usize::MAX) {
            Progress::Decided(finding) => break finding,
            Progress::Paused => slices += 1,
            Progress::OutOfMemory => unreachable!("no memory limit"),
        }
    };
    assert!(matches!(one_shot, Finding::Violation(_)));
    assert_eq!(resumed, one_shot);
    assert!(slices > 1, "the search never paused, so resumption was not exercised");
}
