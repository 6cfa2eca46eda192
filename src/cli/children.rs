//! The child processes of `up`: starting them, relaying their output,
//! learning when they exit, and signalling them.
//!
//! One watcher task per child owns its process. It waits for the exit, takes
//! [`Stop`] requests to deliver meanwhile, and when the child has exited, lets
//! its last output lines through before it reports the [`Exit`] on a channel
//! shared by all watchers. So [`Children::next_exit`] yields every exit in
//! the order they happen, expected or not, and a signal is only ever sent to
//! a child that has not been reaped yet, never to a recycled pid.
//!
//! Each child is started as every raftshop child is ([`raftshop::process`]),
//! in a process group of its own: a Ctrl-C in the terminal reaches only
//! `up`, which then stops the children in order (SIGTERM, a grace period,
//! SIGKILL) rather than each child getting the terminal's SIGINT and `up`'s
//! SIGTERM on top. Should `up` itself fail or panic, the runtime drops the
//! watchers and `kill_on_drop` kills their children; should it be killed by
//! a signal, the kernel does. No node outlives its `up` by accident.
//!
//! A child's stdout and stderr are piped into `up` and printed line by line
//! behind its [`Label`]. When `up`'s output is not coloured, children get
//! `NO_COLOR=1` so their logs arrive without escape codes too.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::Context;
use raftshop::process::{Output, Signal};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Child;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::prefix::Label;

/// How long a watcher waits, after its child exited, for the child's last
/// output lines before reporting the exit anyway.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// One process of the cluster, as `up` starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChildSpec {
    /// Its name in output and messages, unique: `node-3`, `admin-portal`.
    pub name: String,
    /// The executable's file name, looked up next to `raftshop`.
    pub binary: &'static str,
    /// Its command-line arguments.
    pub args: Vec<OsString>,
    /// Where it serves, for the operator.
    pub listens: SocketAddr,
    /// What else the operator should know about it, e.g. its shard.
    pub summary: String,
}

impl ChildSpec {
    /// A shell command that starts this child again by hand, as `up` did.
    pub fn restart_command(&self, program: &Path, dir: &Path) -> String {
        let words = std::iter::once(program.as_os_str()).chain(self.args.iter().map(OsString::as_os_str));
        let command: Vec<String> = words.map(|w| shell_word(&w.to_string_lossy())).collect();
        format!("cd {} && {}", shell_word(&dir.to_string_lossy()), command.join(" "))
    }
}

/// `word` quoted for a POSIX shell, unless it needs no quoting.
fn shell_word(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// What `up` asks of a running child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// SIGTERM: shut down gracefully.
    Terminate,
    /// SIGKILL: stop now.
    Kill,
}

/// How a child ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// The child's name.
    pub name: String,
    /// Its exit status as the OS describes it (`exit status: 1`,
    /// `signal: 9 (SIGKILL)`), or why it could not be waited for.
    pub status: String,
    /// True if it exited with status 0.
    pub success: bool,
    /// True if `up` had sent it SIGKILL.
    pub killed: bool,
}

impl Exit {
    /// The exit of `name` as its watcher saw it.
    fn new(name: String, status: io::Result<ExitStatus>) -> Self {
        match status {
            Ok(status) => Exit { name, status: status.to_string(), success: status.success(), killed: false },
            Err(error) => {
                Exit { name, status: format!("cannot be waited for: {error}"), success: false, killed: false }
            }
        }
    }
}

/// The running children of `up`.
#[derive(Debug)]
pub struct Children {
    /// Each child not yet known to have exited, by name, with the channel
    /// its watcher takes [`Stop`] requests on.
    running: BTreeMap<String, mpsc::UnboundedSender<Stop>>,
    /// Children `up` has sent SIGKILL, to mark their exits.
    killed: BTreeSet<String>,
    /// Exits, as the watchers report them.
    exits: mpsc::UnboundedReceiver<Exit>,
    /// Cloned into each watcher; held here so `exits` never closes.
    exit_sender: mpsc::UnboundedSender<Exit>,
    /// Whether children may colour their output (else they get `NO_COLOR`).
    colour: bool,
}

impl Children {
    /// No children yet; `colour` says whether they may colour their output.
    pub fn new(colour: bool) -> Self {
        let (exit_sender, exits) = mpsc::unbounded_channel();
        Children { running: BTreeMap::new(), killed: BTreeSet::new(), exits, exit_sender, colour }
    }

    /// Starts `program` as the child `spec` in `dir`, its output lines behind
    /// `label`; returns its pid.
    pub fn start(&mut self, spec: &ChildSpec, program: &Path, dir: &Path, label: Label) -> anyhow::Result<u32> {
        assert!(!self.running.contains_key(&spec.name), "child names are unique, {} is not", spec.name);
        let cannot_start = || format!("cannot start {} ({})", spec.name, program.display());
        let mut command = raftshop::process::command(program, Output::Piped).with_context(cannot_start)?;
        command.args(&spec.args).current_dir(dir);
        if !self.colour {
            command.env("NO_COLOR", "1");
        }
        let mut command = tokio::process::Command::from(command);
        command.kill_on_drop(true);
        let mut child = command.spawn().with_context(cannot_start)?;
        let pid = child.id().expect("a child that was just spawned has a pid");
        let output = [relay(child.stdout.take(), label.clone()), relay(child.stderr.take(), label)];
        let (stop_sender, stops) = mpsc::unbounded_channel();
        tokio::spawn(watch(child, spec.name.clone(), output, stops, self.exit_sender.clone()));
        self.running.insert(spec.name.clone(), stop_sender);
        debug!(name = %spec.name, pid, "started");
        Ok(pid)
    }

    /// Asks every running child to stop in the manner of `stop`.
    pub fn send_all(&mut self, stop: Stop) {
        for (name, stops) in &self.running {
            if stop == Stop::Kill {
                self.killed.insert(name.clone());
            }
            // A closed channel means the child has just exited; its exit is
            // on its way, so there is nothing left to stop.
            let _ = stops.send(stop);
        }
    }

    /// Sends `stop` to child `name`; false if it is not running.
    pub fn send(&mut self, name: &str, stop: Stop) -> bool {
        let Some(stops) = self.running.get(name) else { return false };
        if stop == Stop::Kill {
            self.killed.insert(name.to_owned());
        }
        stops.send(stop).is_ok()
    }

    /// The next child to exit, or `None` once none is running.
    pub async fn next_exit(&mut self) -> Option<Exit> {
        if self.running.is_empty() {
            return None;
        }
        let mut exit = self.exits.recv().await.expect("the exit channel stays open while `self` holds a sender");
        self.running.remove(&exit.name);
        exit.killed = self.killed.remove(&exit.name);
        Some(exit)
    }

    /// How many children have not exited yet.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Names of the children that have not exited yet.
    pub fn running_names(&self) -> Vec<&str> {
        self.running.keys().map(String::as_str).collect()
    }
}

/// Owns `child` until it exits: delivers `stops`, then reports the exit on
/// `exits` once the child's `output` is drained.
async fn watch(
    mut child: Child,
    name: String,
    output: [JoinHandle<()>; 2],
    mut stops: mpsc::UnboundedReceiver<Stop>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            Some(stop) = stops.recv() => deliver(&mut child, &name, stop),
        }
    };
    if tokio::time::timeout(OUTPUT_DRAIN_TIMEOUT, futures::future::join_all(output)).await.is_err() {
        debug!(%name, "output still open after exit (a grandchild holds it?)");
    }
    let _ = exits.send(Exit::new(name, status));
}

/// Sends `stop` to `child`, which has not been reaped yet.
fn deliver(child: &mut Child, name: &str, stop: Stop) {
    let delivered = match stop {
        Stop::Terminate => child.id().map_or(Ok(()), |pid| raftshop::process::signal(pid, Signal::Terminate)),
        Stop::Kill => child.start_kill(),
    };
    if let Err(error) = delivered {
        warn!(%name, ?stop, %error, "cannot signal child");
    }
}

/// Prints every line of `stream` behind `label` until it closes.
fn relay(stream: Option<impl AsyncRead + Unpin + Send + 'static>, label: Label) -> JoinHandle<()> {
    tokio::spawn(async move {
        let Some(stream) = stream else { return };
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) => break,
                Ok(_) => print_line(&label.line(&line)),
                Err(error) => {
                    warn!(%error, "cannot read a child's output");
                    break;
                }
            }
        }
    })
}

/// Writes one whole line to stdout; a closed stdout (`up | head`) is not an
/// error worth stopping the cluster for.
fn print_line(line: &str) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(args: &[&str]) -> ChildSpec {
        ChildSpec {
            name: "node-3".into(),
            binary: "storage-node",
            args: args.iter().map(OsString::from).collect(),
            listens: "127.0.0.1:50103".parse().expect("address"),
            summary: String::new(),
        }
    }

    #[test]
    fn restart_command_is_what_up_ran() {
        let spec = spec(&["--id", "3", "--config", "/srv/shop/data/cluster.toml"]);
        let command = spec.restart_command(&PathBuf::from("/opt/bin/storage-node"), Path::new("/srv/shop"));
        assert_eq!(command, "cd /srv/shop && /opt/bin/storage-node --id 3 --config /srv/shop/data/cluster.toml");
    }

    #[test]
    fn odd_words_are_quoted_for_the_shell() {
        assert_eq!(shell_word("plain-word_1.toml"), "plain-word_1.toml");
        assert_eq!(shell_word("my shop"), "'my shop'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
        assert_eq!(shell_word(""), "''");
    }

    /// Starts `sh -c script` as the child `name`.
    fn start_sh(children: &mut Children, name: &str, script: &str) {
        let spec = ChildSpec { name: name.into(), args: vec!["-c".into(), script.into()], ..spec(&[]) };
        let label = Label::new(name, name.len(), 0, false);
        children.start(&spec, Path::new("/bin/sh"), Path::new("/"), label).expect("sh starts");
    }

    #[tokio::test]
    async fn an_exit_is_reported_with_its_status() {
        let mut children = Children::new(false);
        start_sh(&mut children, "short", "exit 3");
        let exit = children.next_exit().await.expect("one exit");
        assert_eq!(exit, Exit { name: "short".into(), status: "exit status: 3".into(), success: false, killed: false });
        assert_eq!(children.running(), 0);
        assert_eq!(children.next_exit().await, None);
    }

    #[tokio::test]
    async fn terminate_sends_sigterm_and_kill_sigkill() {
        let mut children = Children::new(false);
        start_sh(&mut children, "polite", "exec sleep 30");
        children.send_all(Stop::Terminate);
        let exit = children.next_exit().await.expect("exit");
        assert_eq!((exit.status.as_str(), exit.killed), ("signal: 15 (SIGTERM)", false));
        start_sh(&mut children, "stubborn", "trap '' TERM; exec sleep 30");
        assert_eq!(children.running_names(), ["stubborn"]);
        children.send_all(Stop::Kill);
        let exit = children.next_exit().await.expect("exit");
        assert_eq!((exit.status.as_str(), exit.killed), ("signal: 9 (SIGKILL)", true));
    }

    #[test]
    fn exits_describe_the_status() {
        let failed = Exit::new("node-1".into(), Err(io::Error::other("gone")));
        assert_eq!(failed.status, "cannot be waited for: gone");
        assert!(!failed.success && !failed.killed);
    }
}
