//! The one way raftshop starts, signals and stops a child process.
//!
//! Three owners start children: `raftshop up` (its nodes and portals, kept
//! running and restarted by `cli::supervisor`), the local clusters of the
//! tests, `chaos` and `bench --local` ([`crate::local_cluster`]), and
//! `bench --against etcd` (three etcd members). Each decides *when* to start,
//! stop or kill; this module decides *how*, the same way for all:
//!
//! - [`command`] builds the child: no stdin, its output to a file or a pipe,
//!   a process group of its own (a Ctrl-C in the terminal reaches only its
//!   owner, which then stops it in order), the owner's log format, and
//!   [`die_with_parent`], so a child never outlives an owner killed by a
//!   signal, when no destructor runs.
//! - [`signal`] (and [`signal_group`]) is the one place a
//!   signal is sent, to a pid not yet reaped (a child) or read from `up`'s
//!   pid file.
//! - [`stop`] is the graceful stop: SIGTERM, a grace period, then SIGKILL;
//!   [`kill`] the crash.

use std::ffi::OsStr;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Where a child's stdout and stderr go.
#[derive(Debug)]
pub enum Output {
    /// Both appended to this file (a test cluster's per-process log).
    File(std::fs::File),
    /// Both piped to the owner, which relays them (`raftshop up`).
    Piped,
    /// Both discarded.
    Discard,
}

/// A signal an owner sends its child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: shut down gracefully.
    Terminate,
    /// SIGKILL: a crash.
    Kill,
    /// SIGSTOP: freeze, sockets stay open.
    Pause,
    /// SIGCONT: go on after a pause.
    Resume,
    /// SIGHUP: read certificates again (nodes, portals), or roll the
    /// cluster (`raftshop up`).
    HangUp,
    /// SIGINT: as Ctrl-C in a terminal.
    Interrupt,
}

impl Signal {
    fn number(self) -> libc::c_int {
        match self {
            Signal::Terminate => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Pause => libc::SIGSTOP,
            Signal::Resume => libc::SIGCONT,
            Signal::HangUp => libc::SIGHUP,
            Signal::Interrupt => libc::SIGINT,
        }
    }
}

/// The command that starts `program` as a child, with its output going to
/// `output`. The caller adds arguments and environment.
pub fn command(program: impl AsRef<OsStr>, output: Output) -> io::Result<Command> {
    let mut command = Command::new(program);
    let (stdout, stderr) = match output {
        Output::File(file) => (Stdio::from(file.try_clone()?), Stdio::from(file)),
        Output::Piped => (Stdio::piped(), Stdio::piped()),
        Output::Discard => (Stdio::null(), Stdio::null()),
    };
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr).process_group(0);
    command.env(storage_node::cli::LOG_FORMAT_ENV, storage_node::cli::log_format().as_str());
    die_with_parent(&mut command);
    Ok(command)
}

/// Makes the child get SIGKILL when the thread that starts it ends, so an
/// owner killed by a signal (where no `Drop` runs) leaves no child behind.
/// Owners start children from their main thread or their async runtime's
/// workers, which live as long as the children should.
pub fn die_with_parent(command: &mut Command) {
    // SAFETY: `getpid` before the fork; `prctl` and `getppid` after it are
    // async-signal-safe and touch only the child.
    let parent = unsafe { libc::getpid() };
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the prctl took effect.
            if libc::getppid() != parent {
                return Err(io::Error::other("the parent exited while the child started"));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`. The pid must be that of a child not yet
/// reaped (so it cannot have been recycled) or one its owner vouched for.
pub fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other(format!("pid {pid} is out of range")))?;
    send(pid, signal)
}

/// Sends `signal` to every process of the process group `group` (a child
/// started by [`command`] leads its own, and its children join it).
pub fn signal_group(group: u32, signal: Signal) -> io::Result<()> {
    let group = libc::pid_t::try_from(group).map_err(|_| io::Error::other(format!("group {group} is out of range")))?;
    send(-group, signal)
}

/// kill(2): `target` is a pid, or a process group when negative.
fn send(target: libc::pid_t, signal: Signal) -> io::Result<()> {
    // SAFETY: kill(2) takes two integers and touches no memory of ours.
    if unsafe { libc::kill(target, signal.number()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// True if process `pid` runs: it exists and is not a zombie (a zombie is
/// dead; it only waits for whoever adopted it to reap it).
pub fn is_alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|s| s != "Z" && s != "X")
}

/// Kills `child` (SIGKILL, as a crash) and reaps it.
pub fn kill(child: &mut Child) -> io::Result<ExitStatus> {
    child.kill()?;
    // A paused child is resumed only now, so it cannot run on between the
    // two signals; it is not reaped before `wait`, so its pid is still its.
    let _ = signal(child.id(), Signal::Resume);
    child.wait()
}

/// Stops `child` gracefully: SIGTERM, then SIGKILL if it has not exited
/// within `grace`. Returns how it ended.
pub fn stop(child: &mut Child, grace: Duration) -> io::Result<ExitStatus> {
    signal(child.id(), Signal::Terminate)?;
    let deadline = Instant::now() + grace;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            return kill(child);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn sh(script: &str) -> Child {
        command("/bin/sh", Output::Discard).expect("command").args(["-c", script]).spawn().expect("sh starts")
    }

    #[test]
    fn stop_terminates_a_polite_child_and_kills_a_stubborn_one() {
        let mut polite = sh("exec sleep 30");
        let status = stop(&mut polite, Duration::from_secs(10)).expect("stops");
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        let mut stubborn = sh("trap '' TERM; while :; do sleep 0.05; done");
        std::thread::sleep(Duration::from_millis(200)); // let the trap be set
        let status = stop(&mut stubborn, Duration::from_millis(300)).expect("stops");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_paused_child_can_be_killed() {
        let mut child = sh("exec sleep 30");
        signal(child.id(), Signal::Pause).expect("paused");
        assert_eq!(kill(&mut child).expect("killed").signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn a_reaped_or_unreaped_dead_child_is_not_alive() {
        let mut child = sh("exec sleep 30");
        assert!(is_alive(child.id()));
        signal(child.id(), Signal::Kill).expect("killed");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!is_alive(child.id()), "a zombie is dead");
        child.wait().expect("reaped");
        assert!(!is_alive(child.id()));
    }

    #[test]
    fn a_child_has_its_own_process_group() {
        let mut child = sh("exec sleep 30");
        // SAFETY: getpgid takes an integer and touches no memory of ours.
        let group = unsafe { libc::getpgid(child.id() as libc::pid_t) };
        assert_eq!(group, child.id() as libc::pid_t);
        kill(&mut child).expect("killed");
    }
}
