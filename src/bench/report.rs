//! The benchmark's results: a table for people (with the raftshop / etcd
//! ratio when both ran), a JSON file for machines, an SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::run::Measurement;

/// The results as a table, one row per measurement, with ratios.
pub fn table(results: &[Measurement]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<17} {:<9} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8}  {:>8}  errors",
        "workload", "target", "clients", "ops/s", "p50 ms", "p90 ms", "p99 ms", "p99.9", "max ms", "vs etcd"
    );
    for m in results {
        let errors: Vec<String> = m.errors.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        let _ = writeln!(
            out,
            "{:<17} {:<9} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1}  {:>8}  {}",
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
            if errors.is_empty() { "-".into() } else { errors.join(", ") },
        );
    }
    out
}

/// raftshop's throughput over etcd's for the same workload and clients.
fn ratio(results: &[Measurement], m: &Measurement) -> Option<f64> {
    if m.target != "raftshop" {
        return None;
    }
    results
        .iter()
        .find(|e| e.target == "etcd" && e.workload == m.workload && e.clients == m.clients)
        .map(|e| m.throughput / e.throughput.max(f64::MIN_POSITIVE))
}

/// One chart of the plot: title, left offset, the values drawn per point.
type Chart<'a> = (&'a str, f64, Box<dyn Fn(&Measurement) -> Vec<f64>>);

/// An SVG with throughput against clients (left) and p50/p99 latency
/// against clients (right), one line per workload and target.
pub fn plot(results: &[Measurement]) -> String {
    let mut series: BTreeMap<String, Vec<&Measurement>> = BTreeMap::new();
    for m in results {
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
        let top = results.iter().flat_map(&values).fold(1.0f64, f64::max) * 1.1;
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
        }
    }

    #[test]
    fn the_table_shows_the_ratio_to_etcd() {
        let results = [measurement("raftshop", 1, 1000.0), measurement("etcd", 1, 400.0)];
        let table = table(&results);
        assert!(table.contains("2.50x"), "{table}");
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
