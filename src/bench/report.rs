//! The benchmark's results: a table for people (with the raftshop / etcd
//! ratio when both ran), a JSON file for machines, an SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::run::Measurement;

/// The results as a table, one row per measurement, with ratios: by
/// workload (in the order run), then target, clients and round. A round
/// column appears when a point was measured more than once.
pub fn table(results: &[Measurement]) -> String {
    let rounds = results.iter().any(|m| m.round > 1);
    let round_head = if rounds { format!(" {:>5}", "round") } else { String::new() };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:<9} {:>7}{round_head} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8}  errors",
        "workload",
        "target",
        "clients",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "vs etcd",
        "cpu/op",
        "gen/op"
    );
    for m in in_table_order(results) {
        let errors: Vec<String> = m.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let round = if rounds { format!(" {:>5}", m.round) } else { String::new() };
        let _ = writeln!(
            out,
            "{:<17} {:<9} {:>7}{round} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1}  {:>8} {:>8} {:>8}  {}",
            m.workload.to_string(),
            m.target,
            m.clients,
            m.throughput,
            m.p50_ms,
            m.p90_ms,
            m.p99_ms,
            m.p999_ms,
            m.max_ms,
            ratio(results, m).map_or("-".into(), |r| format!("{r:.2}x")),
            micros(m.server_cpu_us),
            micros(m.load_generator_cpu_us),
            if errors.is_empty() { "-".into() } else { errors.join(", ") },
        );
    }
    if results.iter().any(|m| m.server_cpu_us.is_some() || m.load_generator_cpu_us.is_some()) {
        out.push_str(CPU_LEGEND);
    }
    out
}

/// What the table's CPU columns mean.
const CPU_LEGEND: &str = "cpu/op: µs of CPU (user + system) the target's own processes spent per answered request \
     (storage nodes and portals, or etcd's members); gen/op: the load generator's\n";

/// A CPU figure in µs, or "-" for none.
fn micros(figure: Option<f64>) -> String {
    figure.map_or("-".into(), |us| format!("{us:.1}"))
}

/// Each point's medians over its rounds: throughput (with the slowest and
/// fastest round), p50 and p99 per target, and the median of the rounds'
/// raftshop / etcd ratios (each round's pair measured back to back).
pub fn summary(results: &[Measurement]) -> String {
    let mut out = String::from("medians over the rounds:\n");
    let _ = writeln!(
        out,
        "{:<17} {:<9} {:>7} {:>6} {:>10} {:>17} {:>8} {:>8}  {:>8} {:>15} {:>8}",
        "workload",
        "target",
        "clients",
        "rounds",
        "ops/s",
        "slowest-fastest",
        "p50 ms",
        "p99 ms",
        "vs etcd",
        "ratios",
        "cpu/op"
    );
    for rounds in points(results) {
        let first = rounds[0];
        let of = |figure: fn(&Measurement) -> f64| rounds.iter().map(|m| figure(m)).collect::<Vec<f64>>();
        let ops = of(|m| m.throughput);
        let (slowest, fastest) = lowest_and_highest(&ops);
        let ratios: Vec<f64> = rounds.iter().filter_map(|m| ratio(results, m)).collect();
        let (vs_etcd, spread) = match ratios.as_slice() {
            [] => ("-".to_owned(), String::new()),
            _ => {
                let (lo, hi) = lowest_and_highest(&ratios);
                (format!("{:.2}x", median(&ratios)), format!("{lo:.2}-{hi:.2}x"))
            }
        };
        let cpu: Vec<f64> = rounds.iter().filter_map(|m| m.server_cpu_us).collect();
        let _ = writeln!(
            out,
            "{:<17} {:<9} {:>7} {:>6} {:>10.0} {:>17} {:>8.2} {:>8.2}  {:>8} {:>15} {:>8}",
            first.workload.to_string(),
            first.target,
            first.clients,
            rounds.len(),
            median(&ops),
            format!("{slowest:.0}-{fastest:.0}"),
            median(&of(|m| m.p50_ms)),
            median(&of(|m| m.p99_ms)),
            vs_etcd,
            spread,
            micros((!cpu.is_empty()).then(|| median(&cpu))),
        );
    }
    out
}

/// The smallest and the largest of `values` (infinities for none).
fn lowest_and_highest(values: &[f64]) -> (f64, f64) {
    values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// The middle value (the mean of the two middle ones for an even count);
/// 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The results by workload (in the order first run), target (raftshop
/// first), clients and round.
fn in_table_order(results: &[Measurement]) -> Vec<&Measurement> {
    let mut ordered: Vec<&Measurement> = results.iter().collect();
    ordered.sort_by(|a, b| point_key(results, a).cmp(&point_key(results, b)).then(a.round.cmp(&b.round)));
    ordered
}

/// What identifies `m`'s point, in table order: its workload's place in
/// `results`, its target (raftshop first), its clients.
fn point_key<'a>(results: &[Measurement], m: &'a Measurement) -> (usize, bool, &'a str, usize) {
    let workload = results.iter().position(|r| r.workload == m.workload).unwrap_or(usize::MAX);
    (workload, m.target != "raftshop", &m.target, m.clients)
}

/// Each point's rounds, in table order.
fn points(results: &[Measurement]) -> Vec<Vec<&Measurement>> {
    let mut points: Vec<Vec<&Measurement>> = Vec::new();
    for m in in_table_order(results) {
        match points.last_mut() {
            Some(point) if point_key(results, point[0]) == point_key(results, m) => point.push(m),
            _ => points.push(vec![m]),
        }
    }
    points
}

/// One measurement per point, the round of median throughput (the slower
/// of the middle two for an even count): what the plot draws.
fn representatives(results: &[Measurement]) -> Vec<&Measurement> {
    points(results)
        .into_iter()
        .map(|mut rounds| {
            rounds.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
            rounds[(rounds.len() - 1) / 2]
        })
        .collect()
}

/// raftshop's throughput over etcd's for the same workload, clients and
/// round.
fn ratio(results: &[Measurement], m: &Measurement) -> Option<f64> {
    if m.target != "raftshop" {
        return None;
    }
    results
        .iter()
        .find(|e| e.target == "etcd" && e.workload == m.workload && e.clients == m.clients && e.round == m.round)
        .map(|e| m.throughput / e.throughput.max(f64::MIN_POSITIVE))
}

/// One chart of the plot: title, left offset, the values drawn per point.
type Chart<'a> = (&'a str, f64, Box<dyn Fn(&Measurement) -> Vec<f64>>);

/// An SVG with throughput against clients (left) and p50/p99 latency
/// against clients (right), one line per workload and target. A point
/// measured in several rounds is drawn from its round of median
/// throughput.
pub fn plot(results: &[Measurement]) -> String {
    let results = representatives(results);
    let mut series: BTreeMap<String, Vec<&Measurement>> = BTreeMap::new();
    for m in results.iter().copied() {
        series.entry(format!("{} {}", m.workload, m.target)).or_default().push(m);
    }
    let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
    let mut svg = String::from(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="960" height="420" font-family="sans-serif" font-size="12">"#,
    );
    svg.push_str(r#"<rect width="960" height="420" fill="white"/>"#);
    let max_clients = results.iter().map(|m| m.clients).max().unwrap_or(1).max(2) as f64;
    let x = |clients: usize, left: f64| left + 40.0 + 380.0 * (clients as f64).log2() / max_clients.log2();
    let charts: [Chart; 2] = [
        ("throughput (ops/s) vs clients", 0.0, Box::new(|m: &Measurement| vec![m.throughput])),
        (
            "latency p50 (solid), p99 (dashed), ms vs clients",
            480.0,
            Box::new(|m: &Measurement| vec![m.p50_ms, m.p99_ms]),
        ),
    ];
    for (title, left, values) in charts {
        let top = results.iter().flat_map(|m| values(m)).fold(1.0f64, f64::max) * 1.1;
        let y = |v: f64| 360.0 - 300.0 * v / top;
        let _ = write!(svg, r#"<text x="{}" y="30" font-weight="bold">{title}</text>"#, left + 40.0);
        let _ = write!(
            svg,
            r#"<line x1="{0}" y1="360" x2="{1}" y2="360" stroke="black"/><line x1="{0}" y1="60" x2="{0}" y2="360" stroke="black"/>"#,
            left + 40.0,
            left + 430.0
        );
        let _ = write!(svg, r#"<text x="{}" y="62" text-anchor="end">{top:.0}</text>"#, left + 36.0);
        for (i, (name, points)) in series.iter().enumerate() {
            let color = colors[i % colors.len()];
            let curves = points.first().map_or(0, |m| values(m).len());
            for curve in 0..curves {
                let path: Vec<String> =
                    points.iter().map(|m| format!("{:.1},{:.1}", x(m.clients, left), y(values(m)[curve]))).collect();
                let dash = if curve == 0 { "" } else { r#" stroke-dasharray="5,4""# };
                let _ = write!(
                    svg,
                    r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                    path.join(" ")
                );
            }
            let _ =
                write!(svg, r#"<text x="{}" y="{}" fill="{color}">{name}</text>"#, left + 50.0, 80.0 + 16.0 * i as f64);
        }
        for clients in results.iter().map(|m| m.clients).collect::<std::collections::BTreeSet<_>>() {
            let _ = write!(svg, r#"<text x="{:.1}" y="378" text-anchor="middle">{clients}</text>"#, x(clients, left));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::Workload;

    fn measurement(target: &str, clients: usize, throughput: f64) -> Measurement {
        Measurement {
            workload: Workload::KvPut,
            target: target.into(),
            clients,
            ops: 100,
            seconds: 1.0,
            throughput,
            p50_ms: 1.0,
            p90_ms: 2.0,
            p99_ms: 3.0,
            p999_ms: 4.0,
            max_ms: 5.0,
            errors: BTreeMap::new(),
            round: 1,
            server_cpu_us: None,
            load_generator_cpu_us: None,
        }
    }

    #[test]
    fn the_table_and_the_summary_show_cpu_per_request_where_measured() {
        let mut ours = measurement("raftshop", 64, 9_000.0);
        ours.server_cpu_us = Some(117.25);
        ours.load_generator_cpu_us = Some(33.5);
        let theirs = measurement("etcd", 64, 6_000.0);
        let table = table(&[ours.clone(), theirs.clone()]);
        let row = |target: &str| table.lines().find(|l| l.split_whitespace().nth(1) == Some(target)).map(str::to_owned);
        let ours_row = row("raftshop").expect("a raftshop row");
        assert!(ours_row.contains(" 117.2 ") && ours_row.contains(" 33.5 "), "{table}");
        let theirs_row = row("etcd").expect("an etcd row");
        assert_eq!(
            theirs_row.split_whitespace().filter(|f| *f == "-").count(),
            4,
            "no ratio, no CPU, no errors: {table}"
        );
        assert!(table.contains("cpu/op: µs of CPU"), "the columns are explained: {table}");
        let without = super::table(&[theirs]);
        assert!(!without.contains("cpu/op: µs"), "no legend without a figure: {without}");
        let mut generator_only = measurement("raftshop", 64, 9_000.0);
        generator_only.load_generator_cpu_us = Some(30.0);
        assert!(super::table(&[generator_only]).contains("gen/op: the load generator"), "gen/op is explained too");

        let rounds: Vec<Measurement> = [100.0, 130.0, 120.0]
            .iter()
            .enumerate()
            .map(|(i, &us)| {
                let mut m = in_round(measurement("raftshop", 64, 9_000.0), i as u32 + 1);
                m.server_cpu_us = Some(us);
                m
            })
            .collect();
        let summary = summary(&rounds);
        let line = summary.lines().find(|l| l.starts_with("kv-put")).expect("a summary row");
        assert_eq!(line.split_whitespace().last(), Some("120.0"), "the median of the rounds: {summary}");
    }

    fn in_round(mut m: Measurement, round: u32) -> Measurement {
        m.round = round;
        m
    }

    #[test]
    fn the_table_shows_the_ratio_to_etcd() {
        let results = [measurement("raftshop", 1, 1000.0), measurement("etcd", 1, 400.0)];
        let table = table(&results);
        assert!(table.contains("2.50x"), "{table}");
    }

    #[test]
    fn each_round_is_compared_with_its_own_peer() {
        let results = [
            measurement("raftshop", 64, 900.0),
            measurement("etcd", 64, 600.0),
            in_round(measurement("etcd", 64, 300.0), 2),
            in_round(measurement("raftshop", 64, 1200.0), 2),
            in_round(measurement("raftshop", 64, 1000.0), 3),
            in_round(measurement("etcd", 64, 500.0), 3),
        ];
        let table = table(&results);
        for ratio in ["1.50x", "4.00x", "2.00x"] {
            assert!(table.contains(ratio), "{ratio} missing:\n{table}");
        }
        let rows: Vec<&str> = table.lines().skip(1).collect();
        assert!(rows[..3].iter().all(|row| row.contains("raftshop")), "raftshop's rounds first:\n{table}");
        assert!(table.lines().next().is_some_and(|head| head.contains("round")), "{table}");
        let summary = summary(&results);
        let row = |target| summary.lines().find(|l| l.split_whitespace().nth(1) == Some(target));
        let raftshop = row("raftshop").expect("a raftshop line");
        // Medians: 1,000 ops/s, the ratio 2.00x of 1.50 / 4.00 / 2.00.
        assert!(raftshop.contains(" 1000 ") && raftshop.contains("900-1200"), "{summary}");
        assert!(raftshop.contains("2.00x") && raftshop.contains("1.50-4.00x"), "{summary}");
        let etcd = row("etcd").expect("an etcd line");
        assert!(etcd.contains(" 500 ") && etcd.contains("300-600"), "{summary}");
    }

    #[test]
    fn one_round_shows_no_round_column() {
        let table = table(&[measurement("raftshop", 1, 1000.0)]);
        assert!(!table.contains("round"), "{table}");
    }

    #[test]
    fn the_plot_draws_each_point_from_its_median_round() {
        let results = [
            measurement("raftshop", 1, 100.0),
            in_round(measurement("raftshop", 1, 7000.0), 2),
            in_round(measurement("raftshop", 1, 300.0), 3),
        ];
        let svg = plot(&results);
        // The throughput axis tops at 1.1x the largest value drawn.
        assert!(svg.contains(">330<"), "{svg}");
        assert!(!svg.contains(">7700<"), "{svg}");
    }

    #[test]
    fn the_plot_is_an_svg_with_every_series() {
        let results =
            [measurement("raftshop", 1, 1000.0), measurement("raftshop", 16, 5000.0), measurement("etcd", 1, 400.0)];
        let svg = plot(&results);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("kv-put raftshop") && svg.contains("kv-put etcd"));
    }
}
