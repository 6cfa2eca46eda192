//! The checker against a brute-force oracle on tiny random histories.
//!
//! The oracle is the definition, with no cleverness: try every order of
//! every subset of the operations that contains all acknowledged ones, keep
//! real-time order (an operation that returned before another was called
//! comes first), and replay the register. Histories use few values, so
//! values repeat, and mix in failed and unknown operations — exactly where
//! the checker's shortcuts (unread values merged, drop points, stranding)
//! could go wrong.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{check_history, Verdict};
use crate::chaos::history::{OpKind, Operation, Outcome};

/// Random histories per run of the test.
const CASES: u64 = 30_000;

/// Whether some order of the relevant operations explains every read.
fn brute_force_linearizable(history: &[Operation]) -> bool {
    let relevant: Vec<&Operation> = history
        .iter()
        .filter(|op| match op.outcome {
            Outcome::Ok => true,
            Outcome::Failed => false,
            Outcome::Unknown => op.kind != OpKind::Read,
        })
        .collect();
    extend_order(&relevant, &mut vec![false; relevant.len()], None)
}

fn extend_order(ops: &[&Operation], placed: &mut Vec<bool>, register: Option<&str>) -> bool {
    let is_pending = |i: usize, placed: &[bool]| !placed[i] && ops[i].outcome == Outcome::Ok;
    if !(0..ops.len()).any(|i| is_pending(i, placed)) {
        return true;
    }
    for next in 0..ops.len() {
        if placed[next] {
            continue;
        }
        let must_precede =
            |i: usize| is_pending(i, placed) && ops[i].returned_at.is_some_and(|at| at < ops[next].called_at);
        if (0..ops.len()).any(must_precede) {
            continue;
        }
        let after = match &ops[next].kind {
            OpKind::Read if ops[next].observed.as_deref() != register => continue,
            OpKind::Read => register,
            OpKind::Write(value) => Some(value.as_str()),
            OpKind::Delete => None,
        };
        placed[next] = true;
        let found = extend_order(ops, placed, after);
        placed[next] = false;
        if found {
            return true;
        }
    }
    false
}

fn random_history(rng: &mut StdRng) -> Vec<Operation> {
    const VALUES: [&str; 4] = ["a", "b", "c", "d"];
    let len = rng.gen_range(1..=8);
    let values = &VALUES[..rng.gen_range(1..=VALUES.len())];
    let delete_percent = rng.gen_range(0..40);
    let unsure_percent = rng.gen_range(0..40);
    (0..len)
        .map(|client| {
            let called_at = rng.gen_range(0..20);
            let returned_at = called_at + rng.gen_range(0..8);
            let value = values[rng.gen_range(0..values.len())];
            let op = match rng.gen_range(0..100) {
                0..=44 => Operation::read(client, "k", rng.gen_bool(0.8).then_some(value), called_at, returned_at),
                roll if roll < 100 - delete_percent => Operation::write(client, "k", value, called_at, returned_at),
                _ => Operation::delete(client, "k", called_at, returned_at),
            };
            match rng.gen_range(0..100) {
                roll if roll >= unsure_percent => op,
                roll if roll % 3 == 0 => op.failed(),
                roll if roll % 3 == 1 => op.unknown(),
                _ => op.unknown().never_returned(),
            }
        })
        .collect()
}

#[test]
fn checker_agrees_with_brute_force() {
    let mut rng = StdRng::seed_from_u64(2024);
    let mut violations = 0;
    for case in 0..CASES {
        let history = random_history(&mut rng);
        let expected = brute_force_linearizable(&history);
        let report = check_history(&history, Duration::from_secs(10)).unwrap();
        let expected_verdict = if expected { Verdict::Linearizable } else { Verdict::Violation };
        assert_eq!(report.verdict, expected_verdict, "case {case}: {report}\n{history:#?}");
        violations += usize::from(!expected);
    }
    // Both answers must be well represented for the comparison to mean much.
    assert!(violations as u64 > CASES / 10 && (violations as u64) < CASES * 9 / 10, "{violations} violations");
}
