//! The CPU time a run's processes spend per request.
//!
//! On a machine shared by every process of both targets, throughput is
//! set by how much CPU each request costs, so the bench also reports it:
//! the user plus system time the target's own processes (a local
//! cluster's storage nodes and portals, a local etcd's members) and the
//! load generator (this process) used over the recorded period, divided by
//! the requests answered in it. Read from `/proc/<pid>/stat`; absent where
//! the bench did not start the target, has no procfs, or a process ended
//! during the period.

/// CPU-time readings of a target's processes and of the load generator.
#[derive(Clone, Debug, Default)]
pub struct CpuMeter {
    /// The target's server processes; empty if the bench did not start them.
    servers: Vec<u32>,
}

/// One reading of a [`CpuMeter`], in seconds of CPU.
#[derive(Clone, Copy, Debug)]
pub struct CpuReading {
    /// The target's processes together, if every one could be read.
    servers: Option<f64>,
    /// This process.
    load_generator: Option<f64>,
}

/// CPU per request over a period, in microseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CpuPerRequest {
    /// The target's processes together.
    pub servers_us: Option<f64>,
    /// The load generator.
    pub load_generator_us: Option<f64>,
}

impl CpuMeter {
    /// A meter of the processes `servers` (none: the servers' CPU is not
    /// reported).
    pub fn new(servers: Vec<u32>) -> Self {
        CpuMeter { servers }
    }

    /// The CPU time used so far.
    pub fn read(&self) -> CpuReading {
        let servers = if self.servers.is_empty() {
            None
        } else {
            self.servers.iter().map(|&pid| cpu_seconds(pid)).sum::<Option<f64>>()
        };
        CpuReading { servers, load_generator: cpu_seconds(std::process::id()) }
    }
}

impl CpuReading {
    /// The CPU per request between `self` and the later reading `end`,
    /// over `requests` requests (none: no figure).
    pub fn per_request(&self, end: &CpuReading, requests: u64) -> CpuPerRequest {
        let per = |start: Option<f64>, end: Option<f64>| match (start, end) {
            (Some(start), Some(end)) if requests > 0 && end >= start => Some((end - start) * 1e6 / requests as f64),
            _ => None,
        };
        CpuPerRequest {
            servers_us: per(self.servers, end.servers),
            load_generator_us: per(self.load_generator, end.load_generator),
        }
    }
}

/// The user plus system CPU time process `pid` has used, in seconds (its
/// threads included, exited ones too).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    parse_cpu_ticks(&stat).map(|used| used as f64 / ticks as f64)
}

/// `utime + stime` (fields 14 and 15, in clock ticks) of a `/proc/<pid>/stat`
/// line; none for a process that has exited (state `Z` or `X`: a child not
/// yet reaped still has a line). The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so the fields
/// are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; utime and stime are the 12th and 13th.
    let mut fields = after_name.split_whitespace();
    if matches!(fields.next()?, "Z" | "X" | "x") {
        return None;
    }
    let mut fields = fields.skip(10);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_utime_and_stime_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1234 + 567));
        assert_eq!(parse_cpu_ticks("4242 (x) S 1 2"), None, "a cut line has no figure");
        assert_eq!(parse_cpu_ticks("no name at all"), None);
        let exited = stat.replace(") S ", ") Z ");
        assert_eq!(parse_cpu_ticks(&exited), None, "a process that has exited gives no figure");
    }

    #[test]
    fn this_process_is_charged_for_the_work_it_does() {
        let meter = CpuMeter::new(vec![std::process::id()]);
        let start = meter.read();
        // Spin until the clock ticks over at least twice (a tick is 10 ms
        // at the usual 100 Hz): a reading counts whole ticks.
        let then = start.load_generator.expect("procfs is mounted on Linux");
        let mut spins = 0u64;
        while cpu_seconds(std::process::id()).expect("procfs is mounted on Linux") - then < 0.02 {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        let used = start.per_request(&meter.read(), 1);
        assert!(used.servers_us.is_some_and(|us| us >= 20_000.0), "{used:?}");
        assert!(used.load_generator_us.is_some_and(|us| us >= 20_000.0), "{used:?}");
        assert_eq!(start.per_request(&meter.read(), 0).servers_us, None, "no requests, no figure");
    }

    #[test]
    fn a_meter_without_servers_reports_only_the_load_generator() {
        let meter = CpuMeter::default();
        let figure = meter.read().per_request(&meter.read(), 10);
        assert_eq!(figure.servers_us, None);
        assert!(figure.load_generator_us.is_some());
    }

    #[test]
    fn a_process_that_is_gone_gives_no_figure() {
        // Pids wrap below 2^22 on Linux, so this one is never in use.
        let meter = CpuMeter::new(vec![std::process::id(), u32::MAX]);
        assert_eq!(meter.read().per_request(&meter.read(), 10).servers_us, None);
    }
}
