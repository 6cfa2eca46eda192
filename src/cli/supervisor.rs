//! The processes `up` runs, kept running: restarts, give-ups and the stop.
//!
//! A [`Cluster`] owns the [`Children`] and knows how to start each of them
//! again. `up` waits on [`Cluster::wake`] for whatever happens next — a stop
//! signal, a child's exit, a restart falling due — and hands exits and due
//! restarts back to the cluster:
//!
//! - a child that fails (a non-zero status, a signal) is restarted after a
//!   growing pause and given up on when it keeps crashing ([`restart`]);
//!   each restart and each give-up is one line of `up`'s output, with the
//!   child's name and exit status;
//! - a child that exits cleanly (status 0: someone stopped it on purpose)
//!   is left stopped, and so is every failed child under `--no-restart`;
//!   `up` prints the command that starts it by hand;
//! - once no child runs and none is about to be restarted, `up` fails.
//!
//! Stopping (SIGTERM to every child, a grace period, SIGKILL) drops any
//! pending restart, so nothing starts again while the cluster goes down.
//!
//! [`restart`]: super::restart

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use super::children::{ChildSpec, Children, Exit, Stop};
use super::prefix::{self, Label};
use super::restart::{RestartPolicy, Restarts, Verdict};

/// How long children have after SIGTERM before they are killed.
pub const STOP_GRACE: Duration = Duration::from_secs(10);

/// The signals that stop `up`: SIGINT (Ctrl-C) and SIGTERM; and SIGHUP,
/// which asks for a rolling restart.
pub struct StopSignals {
    /// SIGINT, from Ctrl-C in the terminal.
    interrupt: Signal,
    /// SIGTERM, from `kill` or a service manager.
    terminate: Signal,
    /// SIGHUP, from `raftshop restart --rolling`.
    hangup: Signal,
}

impl StopSignals {
    /// Takes over both signals; from now on they no longer end the process.
    pub fn install() -> anyhow::Result<Self> {
        let interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        let terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let hangup = signal(SignalKind::hangup()).context("cannot install the SIGHUP handler")?;
        Ok(StopSignals { interrupt, terminate, hangup })
    }

    /// Waits for the next signal: a stop, or SIGHUP's rolling restart.
    async fn next(&mut self) -> Wake {
        tokio::select! {
            _ = self.interrupt.recv() => Wake::Stop("SIGINT"),
            _ = self.terminate.recv() => Wake::Stop("SIGTERM"),
            _ = self.hangup.recv() => Wake::RollingRestart,
        }
    }

    /// Waits for the next stop signal and returns its name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// What `up` woke up for.
#[derive(Debug)]
pub enum Wake {
    /// A stop signal, by name.
    Stop(&'static str),
    /// A child exited.
    Exit(Exit),
    /// A pending restart is due.
    RestartDue,
    /// SIGHUP: restart every child, one at a time.
    RollingRestart,
}

/// How to start one child, again.
struct Launch {
    /// The child.
    spec: ChildSpec,
    /// Its executable.
    program: PathBuf,
    /// The label of its output lines.
    label: Label,
}

/// The running cluster: its children, and how and when to start them again.
pub struct Cluster {
    /// The child processes.
    children: Children,
    /// Per child name, how to start it.
    launches: BTreeMap<String, Launch>,
    /// The directory every child runs in.
    workdir: PathBuf,
    /// When to restart failed children; `None` under `--no-restart`.
    restarts: Option<Restarts>,
}

impl Cluster {
    /// No children yet; they will run in `workdir`, and be restarted by
    /// `policy` when they fail (never without one).
    pub fn new(workdir: &Path, policy: Option<RestartPolicy>) -> Self {
        Cluster {
            children: Children::new(prefix::colour_wanted()),
            launches: BTreeMap::new(),
            workdir: workdir.to_owned(),
            restarts: policy.map(Restarts::new),
        }
    }

    /// Starts every child; returns their pids, in order.
    pub fn start(&mut self, specs: &[ChildSpec], programs: &[PathBuf]) -> anyhow::Result<Vec<u32>> {
        assert_eq!(specs.len(), programs.len(), "one executable per child");
        let labels = prefix::labels(specs.iter().map(|s| s.name.as_str()), prefix::colour_wanted());
        let mut pids = Vec::new();
        for ((spec, program), label) in specs.iter().zip(programs).zip(labels) {
            let launch = Launch { spec: spec.clone(), program: program.clone(), label };
            pids.push(self.launch(&launch)?);
            self.launches.insert(spec.name.clone(), launch);
        }
        Ok(pids)
    }

    /// Starts one child and notes when; returns its pid.
    fn launch(&mut self, launch: &Launch) -> anyhow::Result<u32> {
        let pid = self.children.start(&launch.spec, &launch.program, &self.workdir, launch.label.clone())?;
        if let Some(restarts) = &mut self.restarts {
            restarts.started(&launch.spec.name, Instant::now());
        }
        Ok(pid)
    }

    /// Waits for the next thing `up` must act on.
    pub async fn wake(&mut self, signals: &mut StopSignals) -> Wake {
        let due = self.restarts.as_ref().and_then(Restarts::next_due);
        tokio::select! {
            wake = signals.next() => wake,
            Some(exit) = self.children.next_exit() => Wake::Exit(exit),
            () = sleep_until(due) => Wake::RestartDue,
        }
    }

    /// Acts on a child's exit: schedules its restart, gives up on it, or
    /// reports it stopped. Fails once nothing runs or is about to.
    pub fn exited(&mut self, exit: Exit) -> anyhow::Result<()> {
        let verdict = match &mut self.restarts {
            Some(restarts) if !exit.success => Some(restarts.crashed(&exit.name, Instant::now())),
            _ => None,
        };
        let window = self.restarts.as_ref().map(|r| r.policy().window).unwrap_or_default();
        match verdict {
            Some(Verdict::Restart { after, crashes }) => println!("{}", restart_line(&exit, after, crashes, window)),
            Some(Verdict::GiveUp { crashes }) => {
                println!("{}", give_up_line(&exit, crashes, window));
                self.print_start_command(&exit.name);
            }
            None => {
                println!("{}", stopped_unexpectedly_line(&exit, self.restarts.is_some()));
                self.print_start_command(&exit.name);
            }
        }
        let pending = self.restarts.as_ref().map_or(0, Restarts::pending);
        if self.children.running() == 0 && pending == 0 {
            bail!("every process of the cluster has exited");
        }
        Ok(())
    }

    /// Starts again every child whose restart is due. A child that cannot
    /// be started counts as crashed.
    pub fn restart_due(&mut self) -> anyhow::Result<()> {
        let due = self.restarts.as_mut().map(|r| r.take_due(Instant::now())).unwrap_or_default();
        for name in due {
            let Some(launch) = self.launches.remove(&name) else { continue };
            let started = self.launch(&launch);
            self.launches.insert(name.clone(), launch);
            match started {
                Ok(pid) => println!("{name} restarted (pid {pid})"),
                Err(error) => {
                    let status = format!("cannot be started: {error:#}");
                    self.exited(Exit { name, status, success: false, killed: false })?;
                }
            }
        }
        Ok(())
    }

    /// Restarts every child, one at a time, nodes first: SIGTERM (a leader
    /// hands its role over), wait for the exit, start it again, and wait
    /// until `ready` says it serves (a node: caught up with its leader)
    /// before the next. Other children's exits are handled as usual on the
    /// way. Stops early, leaving the rest as they are, if a child does not
    /// get ready; returns a stop signal's name if one came.
    pub async fn rolling_restart<F, Fut>(
        &mut self,
        signals: &mut StopSignals,
        ready: F,
    ) -> anyhow::Result<Option<&'static str>>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let started = Instant::now();
        let mut names: Vec<String> = self.launches.keys().cloned().collect();
        names.sort_by_key(|name| (!name.starts_with("node-"), name.clone()));
        println!("rolling restart: {} processes, one at a time", names.len());
        for name in names {
            if !self.children.send(&name, Stop::Terminate) {
                println!("rolling restart: {name} is not running; skipped");
                continue;
            }
            let grace = tokio::time::sleep(STOP_GRACE);
            tokio::pin!(grace);
            loop {
                tokio::select! {
                    stop = signals.recv() => return Ok(Some(stop)),
                    exit = self.children.next_exit() => match exit {
                        Some(exit) if exit.name == name => {
                            println!("rolling restart: {name} stopped ({}); starting it again", exit.status);
                            break;
                        }
                        Some(other) => self.exited(other)?,
                        None => bail!("every process of the cluster has exited"),
                    },
                    () = &mut grace => {
                        println!("rolling restart: {name} still running after {} s, killing it", STOP_GRACE.as_secs());
                        self.children.send(&name, Stop::Kill);
                        grace.set(tokio::time::sleep(STOP_GRACE));
                    }
                }
            }
            let Some(launch) = self.launches.remove(&name) else { continue };
            let launched = self.launch(&launch);
            self.launches.insert(name.clone(), launch);
            println!("{name} restarted (pid {})", launched?);
            if let Err(why) = ready(name.clone()).await {
                println!("rolling restart stopped: {name} is not ready ({why}); the others were left as they are");
                return Ok(None);
            }
        }
        println!("rolling restart done in {:.1} s", started.elapsed().as_secs_f64());
        Ok(None)
    }

    /// Prints the shell command that starts `name` by hand.
    fn print_start_command(&self, name: &str) {
        if let Some(launch) = self.launches.get(name) {
            println!("  to start it by hand: {}", launch.spec.restart_command(&launch.program, &self.workdir));
        }
    }

    /// Stops every child still running: SIGTERM, then SIGKILL for those
    /// still there after [`STOP_GRACE`] or a second stop signal. Pending
    /// restarts are dropped.
    pub async fn stop(&mut self, signals: &mut StopSignals) {
        self.restarts = None;
        if self.children.running() == 0 {
            return;
        }
        println!(
            "stopping {} processes (SIGTERM, then SIGKILL after {} s)",
            self.children.running(),
            STOP_GRACE.as_secs()
        );
        self.children.send_all(Stop::Terminate);
        let grace = tokio::time::sleep(STOP_GRACE);
        tokio::pin!(grace);
        let mut killing = false;
        loop {
            tokio::select! {
                exit = self.children.next_exit() => match exit {
                    Some(exit) => println!("{}", stopped_line(&exit)),
                    None => break,
                },
                () = &mut grace, if !killing => {
                    println!("still running after {} s, killing: {}", STOP_GRACE.as_secs(), self.children.running_names().join(", "));
                    self.children.send_all(Stop::Kill);
                    killing = true;
                }
                name = signals.recv(), if !killing => {
                    println!("{name} again, killing: {}", self.children.running_names().join(", "));
                    self.children.send_all(Stop::Kill);
                    killing = true;
                }
            }
        }
    }
}

/// Sleeps until `due`; forever without one.
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// A failed child that will be restarted.
fn restart_line(exit: &Exit, after: Duration, crashes: usize, window: Duration) -> String {
    format!(
        "{} exited unexpectedly ({}); restarting it in {:.1} s (crash {crashes} within {} s)",
        exit.name,
        exit.status,
        after.as_secs_f64(),
        window.as_secs()
    )
}

/// A failed child that crashed too often to be restarted again.
fn give_up_line(exit: &Exit, crashes: usize, window: Duration) -> String {
    format!(
        "{} exited unexpectedly ({}): {crashes} crashes within {} s, giving up on it; the other processes keep \
         running",
        exit.name,
        exit.status,
        window.as_secs()
    )
}

/// A child that is left stopped: it exited cleanly, or `restarting` is off.
fn stopped_unexpectedly_line(exit: &Exit, restarting: bool) -> String {
    let why = if restarting { "; it stopped cleanly, so it is not restarted" } else { "" };
    format!("{} exited unexpectedly ({}){why}; the other processes keep running", exit.name, exit.status)
}

/// How a child ended during shutdown.
fn stopped_line(exit: &Exit) -> String {
    let verb = if exit.killed { "killed" } else { "stopped" };
    format!("{} {verb} ({})", exit.name, exit.status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exit(status: &str, success: bool) -> Exit {
        Exit { name: "node-3".into(), status: status.into(), success, killed: false }
    }

    #[test]
    fn lines_name_the_child_its_status_and_what_up_does() {
        let killed = exit("signal: 9 (SIGKILL)", false);
        assert_eq!(
            restart_line(&killed, Duration::from_millis(500), 1, Duration::from_secs(60)),
            "node-3 exited unexpectedly (signal: 9 (SIGKILL)); restarting it in 0.5 s (crash 1 within 60 s)"
        );
        assert_eq!(
            give_up_line(&exit("exit status: 1", false), 5, Duration::from_secs(60)),
            "node-3 exited unexpectedly (exit status: 1): 5 crashes within 60 s, giving up on it; the other \
             processes keep running"
        );
        assert_eq!(
            stopped_unexpectedly_line(&exit("exit status: 0", true), true),
            "node-3 exited unexpectedly (exit status: 0); it stopped cleanly, so it is not restarted; the other \
             processes keep running"
        );
        assert_eq!(
            stopped_unexpectedly_line(&killed, false),
            "node-3 exited unexpectedly (signal: 9 (SIGKILL)); the other processes keep running"
        );
    }

    /// A cluster of one `sh -c script` child named `name`.
    fn sh_cluster(name: &str, script: &str, policy: Option<RestartPolicy>) -> Cluster {
        let mut cluster = Cluster::new(Path::new("/"), policy);
        let spec = ChildSpec {
            name: name.into(),
            binary: "sh",
            args: vec!["-c".into(), script.into()],
            listens: "127.0.0.1:1".parse().expect("address"),
            summary: String::new(),
        };
        cluster.start(&[spec], &[PathBuf::from("/bin/sh")]).expect("sh starts");
        cluster
    }

    #[tokio::test]
    async fn a_failing_child_is_restarted_until_up_gives_up() {
        let fast = RestartPolicy {
            first_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            ..RestartPolicy::default()
        };
        let mut cluster = sh_cluster("flaky", "exit 3", Some(fast));
        let mut exits = 0;
        let outcome = loop {
            let step = tokio::select! {
                Some(exit) = cluster.children.next_exit() => {
                    exits += 1;
                    cluster.exited(exit)
                }
                () = sleep_until(cluster.restarts.as_ref().and_then(Restarts::next_due)) => cluster.restart_due(),
            };
            if let Err(error) = step {
                break error;
            }
        };
        assert_eq!(exits, fast.max_crashes, "restarted until the last crash, then given up");
        assert_eq!(outcome.to_string(), "every process of the cluster has exited");
    }

    #[tokio::test]
    async fn without_restarts_a_failed_child_stays_down() {
        let mut cluster = sh_cluster("once", "exit 1", None);
        let exit = cluster.children.next_exit().await.expect("it exits");
        assert!(cluster.exited(exit).is_err(), "nothing left to run");
        assert!(cluster.restarts.is_none());
    }
}
