//! Free loopback ports for local clusters, chosen where nothing else will
//! take them while a process is down.
//!
//! A port from `bind(":0")` lies in the kernel's ephemeral range, the same
//! range every outgoing connection takes its local port from. Once a node is
//! killed, any connection on the machine may take its port, and the node
//! cannot come back. Worse, a link proxy that binds `:0` after the cluster's
//! ports were chosen may get one of them: a CI run once gave a proxy node
//! 6's port, so node 6 never started and node 5's messages to "node 6"
//! came back to node 5, which voted for itself twice.
//!
//! So every port here comes from below the ephemeral range, from one cursor
//! per process (no two callers in a process get the same port), starting
//! at a place drawn from the process id and the clock (two processes rarely
//! start in the same place), and each is probed by binding it.

use std::net::{SocketAddr, TcpListener};
use std::sync::Mutex;

/// The lowest port handed out: above the well-known and most registered
/// services' ports.
const LOWEST: u16 = 10_000;
/// Used when the ephemeral range cannot be read.
const DEFAULT_EPHEMERAL_LOW: u16 = 32_768;
/// Below this many usable ports, fall back to the kernel's choice.
const MIN_SPAN: u16 = 1_000;

/// The next port to probe, once started.
static CURSOR: Mutex<Option<u16>> = Mutex::new(None);

/// A loopback address with a port that was free a moment ago.
pub fn free_port() -> std::io::Result<SocketAddr> {
    Ok(free_ports(1)?[0])
}

/// `count` distinct loopback ports that were free a moment ago and that no
/// other caller in this process has been given (until the cursor wraps,
/// after some 20,000 ports).
pub fn free_ports(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let Some(span) = usable_span() else {
        return kernel_ports(count);
    };
    let mut cursor = CURSOR.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut next = cursor.unwrap_or_else(|| start_in(&span));
    let taken = take(&mut next, &span, count);
    *cursor = Some(next);
    taken
}

/// `count` ports of `span` that bind, probing from `next` on (wrapping)
/// and leaving `next` after the last one probed.
fn take(next: &mut u16, span: &std::ops::Range<u16>, count: usize) -> std::io::Result<Vec<SocketAddr>> {
    // Held until all are found, so a port cannot be probed twice.
    let mut held = Vec::with_capacity(count);
    let mut probed = 0u32;
    while held.len() < count {
        if probed > u32::from(span.end - span.start) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("no {count} free loopback ports between {} and {}", span.start, span.end),
            ));
        }
        probed += 1;
        let port = *next;
        *next = if port + 1 >= span.end { span.start } else { port + 1 };
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(listener);
        }
    }
    held.iter().map(TcpListener::local_addr).collect()
}

/// Ports from [`LOWEST`] up to the start of the ephemeral range, if that
/// leaves enough of them.
fn usable_span() -> Option<std::ops::Range<u16>> {
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(DEFAULT_EPHEMERAL_LOW);
    (ephemeral_low > LOWEST + MIN_SPAN).then_some(LOWEST..ephemeral_low)
}

/// A starting point in `span` drawn from the process id and the clock.
fn start_in(span: &std::ops::Range<u16>) -> u16 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(nanos);
    span.start + (seed % u64::from(span.end - span.start)) as u16
}

/// The kernel's choice, for machines whose ephemeral range leaves no room.
fn kernel_ports(count: usize) -> std::io::Result<Vec<SocketAddr>> {
    let held: Vec<TcpListener> =
        (0..count).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<std::io::Result<_>>()?;
    held.iter().map(TcpListener::local_addr).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_below_the_ephemeral_range_and_bindable() {
        let first = free_ports(16).unwrap();
        let second = free_ports(16).unwrap();
        let all: std::collections::BTreeSet<u16> = first.iter().chain(&second).map(SocketAddr::port).collect();
        assert_eq!(all.len(), 32, "no port handed out twice: {first:?} {second:?}");
        if let Some(span) = usable_span() {
            assert!(all.iter().all(|port| span.contains(port)), "{all:?} outside {span:?}");
        }
        for addr in first {
            TcpListener::bind(addr).expect("a handed-out port is free");
        }
    }

    #[test]
    fn a_taken_port_is_skipped() {
        let taken = free_port().unwrap();
        let _held = TcpListener::bind(taken).unwrap();
        let span = taken.port()..taken.port().saturating_add(100);
        let mut next = taken.port();
        let given = take(&mut next, &span, 1).unwrap();
        assert_eq!(given.len(), 1);
        assert_ne!(given[0], taken, "the taken port was passed by");
        assert_eq!(next, given[0].port() + 1, "the cursor is left after the port given");
    }
}
