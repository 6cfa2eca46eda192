//! Where `raftshop up` gets its config, and the file it hands the nodes.
//!
//! `up` chooses like every other process of the cluster: `--config`, else
//! `./cluster.toml`, else the embedded default. Its children must read the
//! very same config, so they get it as a file named by an absolute path: the
//! chosen file itself, or, for the embedded default, a copy that `up` writes
//! to `<data-dir>/cluster.toml` (rewritten only when its text differs).

use std::path::{Path, PathBuf};

use anyhow::Context;
use storage_node::config::{ClusterConfig, ConfigError, DEFAULT_CLUSTER_TOML};

/// The config file `up` looks for in its working directory.
const LOCAL_CONFIG: &str = "cluster.toml";
/// Heads the embedded default's copy in the data dir.
const COPY_HEADER: &str = "# Written by `raftshop up` from its embedded default; edits are overwritten.\n\
                           # To change the cluster, copy this file to ./cluster.toml and edit that.\n\n";

/// Where `up`'s config comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A file: `--config`, or `./cluster.toml`.
    File(PathBuf),
    /// The default compiled into the binary.
    Embedded,
}

impl ConfigSource {
    /// `--config` if given, else `./cluster.toml` if it exists, else the
    /// embedded default: the rule of `ClusterConfig::load_or_default`.
    pub fn choose(flag: Option<&Path>) -> Self {
        Self::choose_given(flag, Path::new(LOCAL_CONFIG).exists())
    }

    /// [`choose`](Self::choose), told whether `./cluster.toml` exists.
    fn choose_given(flag: Option<&Path>, local_exists: bool) -> Self {
        match flag {
            Some(path) => ConfigSource::File(path.to_owned()),
            None if local_exists => ConfigSource::File(PathBuf::from(LOCAL_CONFIG)),
            None => ConfigSource::Embedded,
        }
    }

    /// Reads and validates the config.
    pub fn load(&self) -> Result<ClusterConfig, ConfigError> {
        match self {
            ConfigSource::File(path) => ClusterConfig::load(path),
            ConfigSource::Embedded => Ok(ClusterConfig::embedded()),
        }
    }

    /// An absolute path to a file the children can read this config from;
    /// for the embedded default, a copy written into `data_dir`.
    pub fn file_for_children(&self, data_dir: &Path) -> anyhow::Result<PathBuf> {
        let path = match self {
            ConfigSource::File(path) => path.clone(),
            ConfigSource::Embedded => write_embedded_copy(data_dir)?,
        };
        std::path::absolute(&path).with_context(|| format!("cannot make {} absolute", path.display()))
    }

    /// Where the config came from, for the operator.
    pub fn describe(&self, file: &Path) -> String {
        match self {
            ConfigSource::File(path) => path.display().to_string(),
            ConfigSource::Embedded => format!("(embedded default), copied to {} for the nodes", file.display()),
        }
    }
}

/// Writes the embedded default to `<data_dir>/cluster.toml`, creating the
/// directory, and returns the file's path.
fn write_embedded_copy(data_dir: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join(LOCAL_CONFIG);
    let text = format!("{COPY_HEADER}{DEFAULT_CLUSTER_TOML}");
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_config() -> ClusterConfig {
        ClusterConfig::embedded()
    }

    #[test]
    fn config_is_chosen_like_every_other_process_chooses_it() {
        let flag = Path::new("/etc/shop.toml");
        assert_eq!(ConfigSource::choose_given(Some(flag), true), ConfigSource::File(flag.to_owned()));
        assert_eq!(ConfigSource::choose_given(None, true), ConfigSource::File(PathBuf::from("cluster.toml")));
        assert_eq!(ConfigSource::choose_given(None, false), ConfigSource::Embedded);
    }

    #[test]
    fn embedded_default_is_copied_into_the_data_dir_and_reads_back_the_same() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data_dir = dir.path().join("data");
        let file = ConfigSource::Embedded.file_for_children(&data_dir).expect("written");
        assert_eq!(file, data_dir.join("cluster.toml"));
        assert_eq!(ClusterConfig::load(&file).expect("valid"), default_config());
        let again = ConfigSource::Embedded.file_for_children(&data_dir).expect("rewritten");
        assert_eq!(again, file);
    }

    #[test]
    fn a_config_file_is_passed_on_as_an_absolute_path() {
        let file =
            ConfigSource::File(PathBuf::from("cluster.toml")).file_for_children(Path::new("unused")).expect("ok");
        assert!(file.is_absolute(), "{}", file.display());
        assert!(file.ends_with("cluster.toml"));
    }
}
