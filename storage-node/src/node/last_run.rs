//! How a node's last run ended, kept in `<data dir>/last-run`, so that
//! start-up knows whether its state may have lost writes.
//!
//! sled writes some of the state in files it never syncs (values and tree
//! nodes over about 128 KiB go to `state/blobs`; see docs/operations.md,
//! "Checking replicas after a power cut"). A process that dies leaves
//! them in the page cache, which the kernel writes out anyway; a machine
//! that stops (a power cut, a kernel crash) can lose them, and sled then
//! skips the update without an error. So a node records the machine's
//! boot id when it starts (and again, with `stopped`, when it stops
//! cleanly); at start-up it checks its state whenever the machine has
//! booted since its last run, or when it cannot tell. A clean stop does
//! not spare the check: sled's threads go on writing blob files until the
//! process exits.

use std::io::{self, Write};
use std::path::Path;

/// The file's name in the data directory.
pub const LAST_RUN_FILE: &str = "last-run";
/// Where Linux gives the id of the current boot.
const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";

/// How the last run ended, as the file records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastRun {
    /// It stopped cleanly, on the boot with this id (`None`: the id could
    /// not be read).
    Stopped(Option<String>),
    /// It started on the boot with this id and did not stop cleanly.
    Running(Option<String>),
    /// `--verify-state` found the state damaged: start-up checks it again
    /// and rebuilds it.
    Damaged,
}

impl LastRun {
    /// Reads the record in `data_dir`; `None` if there is none (a new
    /// node, or one last run by a build that kept no record) or if it
    /// cannot be understood, which start-up treats alike: check.
    pub fn read(data_dir: &Path) -> io::Result<Option<LastRun>> {
        let text = match std::fs::read_to_string(data_dir.join(LAST_RUN_FILE)) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Self::parse(&text))
    }

    fn parse(text: &str) -> Option<LastRun> {
        let line = text.lines().map(str::trim).find(|line| !line.is_empty() && !line.starts_with('#'))?;
        let mut words = line.split_whitespace();
        match (words.next()?, words.next(), words.next()) {
            ("stopped", boot, None) => Some(LastRun::Stopped(boot.map(str::to_owned))),
            ("damaged", None, None) => Some(LastRun::Damaged),
            ("running", boot, None) => Some(LastRun::Running(boot.map(str::to_owned))),
            _ => None,
        }
    }

    fn line(&self) -> String {
        match self {
            LastRun::Stopped(Some(boot)) => format!("stopped {boot}"),
            LastRun::Stopped(None) => "stopped".to_owned(),
            LastRun::Damaged => "damaged".to_owned(),
            LastRun::Running(Some(boot)) => format!("running {boot}"),
            LastRun::Running(None) => "running".to_owned(),
        }
    }

    /// Records `self` in `data_dir`, durably: a new file synced, then
    /// renamed over the old one, then the directory synced.
    pub fn write(&self, data_dir: &Path) -> io::Result<()> {
        let path = data_dir.join(LAST_RUN_FILE);
        let temp = data_dir.join(format!("{LAST_RUN_FILE}.tmp"));
        let mut file = std::fs::File::create(&temp)?;
        write!(
            file,
            "# Written by storage-node: how its last run ended, so that start-up knows\n\
             # whether to check its state. Do not edit.\n{}\n",
            self.line()
        )?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    }

    /// The record of a run on the current boot.
    pub fn running_now() -> LastRun {
        LastRun::Running(current_boot_id())
    }
}

/// Why start-up must check the state, given how the last run ended and
/// the current boot's id; `None` if it ran on this very boot: its process
/// died or stopped, and the kernel keeps every write it made.
pub fn reason_to_check(last: Option<&LastRun>, boot: Option<&str>) -> Option<&'static str> {
    match last {
        Some(LastRun::Running(Some(then)) | LastRun::Stopped(Some(then))) if boot == Some(then.as_str()) => None,
        Some(LastRun::Running(Some(_)) | LastRun::Stopped(Some(_))) => {
            Some("the machine has booted since the last run")
        }
        Some(LastRun::Running(None) | LastRun::Stopped(None)) => {
            Some("the boot the last run was on, or this one, is unknown")
        }
        Some(LastRun::Damaged) => Some("--verify-state found the state damaged"),
        None => Some("no record of the last run"),
    }
}

/// The id of the machine's current boot, if the OS gives one.
pub fn current_boot_id() -> Option<String> {
    let id = std::fs::read_to_string(BOOT_ID_PATH).ok()?;
    let id = id.trim();
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_record_reads_back_as_written() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(LastRun::read(dir.path()).expect("read"), None);
        for run in [
            LastRun::Stopped(Some("b1".into())),
            LastRun::Stopped(None),
            LastRun::Damaged,
            LastRun::Running(Some("b1".into())),
            LastRun::Running(None),
        ] {
            run.write(dir.path()).expect("written");
            assert_eq!(LastRun::read(dir.path()).expect("read"), Some(run));
        }
        assert!(!dir.path().join(format!("{LAST_RUN_FILE}.tmp")).exists(), "no temp file left");
    }

    #[test]
    fn a_record_not_understood_reads_as_none() {
        for text in ["", "# only a comment\n", "started\n", "stopped a b\n", "running a b\n"] {
            assert_eq!(LastRun::parse(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_state_is_checked_unless_the_last_run_was_on_this_boot() {
        let check = |last: LastRun, boot| reason_to_check(Some(&last), boot).is_some();
        let on = |boot: &str| Some(boot.to_owned());
        assert!(!check(LastRun::Running(on("boot-a")), Some("boot-a")), "the process died, the kernel kept its writes");
        assert!(!check(LastRun::Stopped(on("boot-a")), Some("boot-a")));
        assert!(check(LastRun::Running(on("boot-a")), Some("boot-b")), "the machine booted since");
        assert!(check(LastRun::Stopped(on("boot-a")), Some("boot-b")), "a clean stop does not spare the check");
        assert!(check(LastRun::Running(on("boot-a")), None), "this boot's id is unknown");
        assert!(check(LastRun::Stopped(None), Some("boot-a")));
        assert!(check(LastRun::Damaged, Some("boot-a")));
        assert!(reason_to_check(None, Some("boot-a")).is_some(), "no record");
    }

    #[test]
    fn this_machine_gives_a_boot_id() {
        // Linux does; the rule above also holds without one.
        if cfg!(target_os = "linux") {
            assert!(current_boot_id().is_some());
        }
    }
}
