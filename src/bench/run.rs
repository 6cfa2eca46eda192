//! The closed loop: workers, histograms, progress.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::cpu::CpuMeter;
use super::workload::{request, Shape, Target, Workload};

/// Latencies above this are recorded as this (µs): one minute.
const MAX_LATENCY_US: u64 = 60_000_000;

/// One measurement: a workload, a target, a client count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    /// The workload.
    pub workload: Workload,
    /// "raftshop" or "etcd".
    pub target: String,
    /// Concurrent closed-loop clients.
    pub clients: usize,
    /// Successful requests in the measured period.
    pub ops: u64,
    /// The measured period, in seconds.
    pub seconds: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency percentiles of successful requests, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile (ms).
    pub p90_ms: f64,
    /// 99th percentile (ms).
    pub p99_ms: f64,
    /// 99.9th percentile (ms).
    pub p999_ms: f64,
    /// Slowest (ms).
    pub max_ms: f64,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
    /// Which of the point's rounds (`--rounds`) this is, from 1.
    #[serde(default = "first_round")]
    pub round: u32,
    /// CPU time (user + system) the target's processes used per successful
    /// request over the measured period, in µs; absent where the bench did
    /// not start them (see [`super::cpu`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cpu_us: Option<f64>,
    /// CPU time the load generator used per successful request, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_generator_cpu_us: Option<f64>,
}

/// The round of a measurement that does not say (one round per point).
fn first_round() -> u32 {
    1
}

/// Which of a point's measurements one is: `number` of `of`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    /// From 1.
    pub number: u32,
    /// How many rounds each point has.
    pub of: u32,
}

/// The order of a sweep's measurements, as (clients, round, target index):
/// each client count in turn, measured `rounds` times, the targets taking
/// turns and swapping who goes first from one turn to the next, across
/// points too (A B, B A, A B for the first point, B A, A B, B A for the
/// second, ...). A machine that speeds up or slows down while a point is
/// measured then weighs on every target alike, whatever one target leaves
/// behind (sled's writes, a snapshot) lands on each about as often, and a
/// target's figure is never far from its peer's.
pub fn schedule(targets: usize, clients: &[usize], rounds: u32) -> Vec<(usize, Round, usize)> {
    let mut order = Vec::new();
    for (point, &count) in clients.iter().enumerate() {
        for number in 1..=rounds {
            let round = Round { number, of: rounds };
            let in_order = (point + number as usize) % 2 == 1;
            let turns: Vec<usize> = if in_order { (0..targets).collect() } else { (0..targets).rev().collect() };
            order.extend(turns.into_iter().map(|target| (count, round, target)));
        }
    }
    order
}

/// How long to run.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Not recorded: connections warm up, leaders settle.
    pub warmup: Duration,
    /// Recorded.
    pub duration: Duration,
}

/// Runs `clients` closed-loop workers for warm-up plus duration; `cpu`
/// reads the CPU time of the target's processes over the recorded period.
#[allow(clippy::too_many_arguments)]
pub async fn measure(
    workload: Workload,
    target_name: &str,
    target: &Target,
    cpu: &CpuMeter,
    clients: usize,
    round: Round,
    shape: Shape,
    timing: Timing,
) -> Measurement {
    let value = Arc::new(vec![b'v'; shape.value_size]);
    let recording = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|worker| {
            let (target, value, recording, done, count) =
                (target.clone(), value.clone(), recording.clone(), done.clone(), count.clone());
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_US, 3).expect("valid bounds");
                let mut errors: BTreeMap<String, u64> = BTreeMap::new();
                while !done.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let outcome = request(workload, &target, worker, shape, &value).await;
                    if !recording.load(Ordering::Relaxed) {
                        continue;
                    }
                    match outcome {
                        Ok(()) => {
                            histogram.saturating_record(started.elapsed().as_micros() as u64);
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(kind) => *errors.entry(kind).or_default() += 1,
                    }
                }
                (histogram, errors)
            })
        })
        .collect();
    tokio::time::sleep(timing.warmup).await;
    recording.store(true, Ordering::Relaxed);
    let cpu_at_start = cpu.read();
    let started = Instant::now();
    let mut label = format!("{workload} against {target_name}, {clients} clients");
    if round.of > 1 {
        label.push_str(&format!(", round {} of {}", round.number, round.of));
    }
    while started.elapsed() < timing.duration {
        tokio::time::sleep(Duration::from_millis(500).min(timing.duration.saturating_sub(started.elapsed()))).await;
        let elapsed = started.elapsed().as_secs_f64();
        let ops = count.load(Ordering::Relaxed);
        eprint!(
            "\r  {label}: {elapsed:>5.1}/{:.0} s, {ops} ops, {:.0} ops/s   ",
            timing.duration.as_secs_f64(),
            ops as f64 / elapsed.max(0.001)
        );
        let _ = std::io::stderr().flush();
    }
    recording.store(false, Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    let cpu_at_end = cpu.read();
    done.store(true, Ordering::Relaxed);
    eprintln!();
    let mut histogram = Histogram::<u64>::new_with_max(MAX_LATENCY_US, 3).expect("valid bounds");
    let mut errors = BTreeMap::new();
    for worker in workers {
        if let Ok((h, e)) = worker.await {
            histogram.add(&h).expect("same bounds");
            for (kind, n) in e {
                *errors.entry(kind).or_default() += n;
            }
        }
    }
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    // Requests that ended in an error cost CPU too, but only answered ones
    // count, as in the throughput.
    let cpu_per_request = cpu_at_start.per_request(&cpu_at_end, histogram.len());
    Measurement {
        workload,
        target: target_name.to_owned(),
        clients,
        ops: histogram.len(),
        seconds,
        throughput: histogram.len() as f64 / seconds,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: histogram.max() as f64 / 1000.0,
        errors,
        round: round.number,
        server_cpu_us: cpu_per_request.servers_us,
        load_generator_cpu_us: cpu_per_request.load_generator_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_turns_and_swap_order_each_turn() {
        let order: Vec<(usize, u32, usize)> = schedule(2, &[1, 64], 3)
            .into_iter()
            .map(|(clients, round, target)| (clients, round.number, target))
            .collect();
        assert_eq!(
            order,
            [
                (1, 1, 0),
                (1, 1, 1),
                (1, 2, 1),
                (1, 2, 0),
                (1, 3, 0),
                (1, 3, 1),
                (64, 1, 1),
                (64, 1, 0),
                (64, 2, 0),
                (64, 2, 1),
                (64, 3, 1),
                (64, 3, 0),
            ]
        );
        assert!(schedule(1, &[16], 2).iter().all(|(_, round, target)| *target == 0 && round.of == 2));
    }
}
