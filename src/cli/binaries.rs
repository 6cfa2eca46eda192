//! Finding the cluster's executables, and rebuilding them under `cargo run`.
//!
//! `raftshop`, `storage-node` and the portals are binaries of one package, so
//! cargo writes them into one directory (`<target>/<profile>/`). `up` looks
//! for its children next to its own executable and never on `PATH`: it always
//! starts the build it belongs to.
//!
//! `cargo run -- up` only guarantees that `raftshop` itself is fresh. So when
//! cargo launched this process for this very package (`$CARGO` is set and
//! `$CARGO_MANIFEST_DIR` is the directory this binary was built from), `up`
//! first runs `$CARGO build --bins` with the profile and target directory the
//! running executable came from. Started any other way, `up` uses what is
//! there, and a missing executable is an error that says how to build it.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

/// The storage node executable, one child per `[[node]]` of the config.
pub const STORAGE_NODE: &str = "storage-node";

/// The directory this package was built from.
const PACKAGE_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The directory holding the running executable, and so its siblings.
pub fn own_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot tell where the raftshop executable is")?;
    exe.parent().map(Path::to_owned).with_context(|| format!("{} has no parent directory", exe.display()))
}

/// The executable `name` in `dir`, or an error saying how to get it;
/// `rebuilt` says whether a `cargo build --bins` has just run.
pub fn locate(dir: &Path, name: &str, rebuilt: bool) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        return Ok(path);
    }
    let advice = if rebuilt {
        format!("the build just run did not produce it: does the package have a `{name}` binary (src/bin/{name}.rs)?")
    } else {
        "build it with `cargo build --bins` (add --release for a release build), or start the cluster with \
         `cargo run -- up`, which builds it"
            .to_owned()
    };
    bail!("cannot find the {name} executable next to raftshop ({} does not exist); {advice}", path.display())
}

/// A `cargo build` that refreshes the sibling executables before `up` starts
/// them.
#[derive(Debug, Clone, PartialEq)]
pub struct CargoBuild {
    /// The cargo that launched us (`$CARGO`), so the same toolchain builds.
    pub cargo: PathBuf,
    /// The package directory to build in.
    pub package_dir: PathBuf,
    /// The target directory the running executable lives in, so the build
    /// lands next to it whatever `--target-dir` or `CARGO_TARGET_DIR` said.
    pub target_dir: PathBuf,
    /// The output directory's name: `debug`, `release` or a custom profile.
    pub profile_dir: String,
}

impl CargoBuild {
    /// The build to run when cargo launched this process for this package.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        let exe = std::env::current_exe().context("cannot tell where the raftshop executable is")?;
        let cargo = std::env::var_os("CARGO");
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR");
        Ok(Self::detect(&exe, cargo, manifest_dir, Path::new(PACKAGE_DIR)))
    }

    /// The build to run, given the running executable, `$CARGO`,
    /// `$CARGO_MANIFEST_DIR` and this package's directory; `None` unless
    /// cargo launched an executable of this package.
    pub fn detect(
        exe: &Path,
        cargo: Option<OsString>,
        manifest_dir: Option<OsString>,
        package_dir: &Path,
    ) -> Option<Self> {
        let cargo = PathBuf::from(cargo.filter(|c| !c.is_empty())?);
        if Path::new(&manifest_dir?) != package_dir {
            return None;
        }
        let profile = exe.parent()?;
        Some(CargoBuild {
            cargo,
            package_dir: package_dir.to_owned(),
            target_dir: profile.parent()?.to_owned(),
            profile_dir: profile.file_name()?.to_str()?.to_owned(),
        })
    }

    /// The arguments to cargo: `build --bins`, the profile, the target dir.
    pub fn args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec!["build".into(), "--bins".into()];
        match self.profile_dir.as_str() {
            "debug" => {}
            "release" => args.push("--release".into()),
            custom => args.extend(["--profile".into(), custom.into()]),
        }
        args.extend(["--target-dir".into(), self.target_dir.clone().into()]);
        args
    }

    /// The command as a person would type it, for progress output.
    pub fn describe(&self) -> String {
        let args: Vec<_> = self.args().iter().map(|a| a.to_string_lossy().into_owned()).collect();
        format!("cargo {}", args.join(" "))
    }

    /// Runs the build with cargo's output shown; fails if cargo does.
    pub async fn run(&self) -> anyhow::Result<()> {
        let status = tokio::process::Command::new(&self.cargo)
            .args(self.args())
            .current_dir(&self.package_dir)
            .status()
            .await
            .with_context(|| format!("cannot run {}", self.cargo.display()))?;
        if !status.success() {
            bail!("`{}` failed ({status}); fix the build and run `up` again", self.describe());
        }
        Ok(())
    }
}

/// The cluster's executables next to `raftshop`, rebuilt first when `cargo
/// run` launched it (for the commands that start a cluster of their own).
pub async fn cluster_binaries() -> anyhow::Result<raftshop::local_cluster::Binaries> {
    let build = CargoBuild::from_env()?;
    if let Some(build) = &build {
        eprintln!("launched by cargo: building the cluster's executables first ({})", build.describe());
        build.run().await?;
    }
    let dir = own_dir()?;
    let locate = |name| locate(&dir, name, build.is_some());
    Ok(raftshop::local_cluster::Binaries {
        storage_node: locate(STORAGE_NODE)?,
        admin_portal: Some(locate("admin-portal")?),
        order_portal: Some(locate("order-portal")?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(exe: &str, cargo: Option<&str>, manifest_dir: Option<&str>) -> Option<CargoBuild> {
        CargoBuild::detect(Path::new(exe), cargo.map(Into::into), manifest_dir.map(Into::into), Path::new("/src/shop"))
    }

    fn args(build: &CargoBuild) -> Vec<String> {
        build.args().iter().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn cargo_run_of_this_package_rebuilds_in_the_same_profile() {
        let build =
            detect("/src/shop/target/release/raftshop", Some("/bin/cargo"), Some("/src/shop")).expect("cargo run");
        assert_eq!(build.cargo, PathBuf::from("/bin/cargo"));
        assert_eq!(build.package_dir, PathBuf::from("/src/shop"));
        assert_eq!(args(&build), ["build", "--bins", "--release", "--target-dir", "/src/shop/target"]);
    }

    #[test]
    fn debug_builds_need_no_profile_flag_and_custom_ones_name_it() {
        let debug = detect("/t/debug/raftshop", Some("cargo"), Some("/src/shop")).expect("cargo run");
        assert_eq!(args(&debug), ["build", "--bins", "--target-dir", "/t"]);
        let custom = detect("/t/profiling/raftshop", Some("cargo"), Some("/src/shop")).expect("cargo run");
        assert_eq!(args(&custom), ["build", "--bins", "--profile", "profiling", "--target-dir", "/t"]);
        assert_eq!(custom.describe(), "cargo build --bins --profile profiling --target-dir /t");
    }

    #[test]
    fn no_rebuild_outside_cargo_or_for_another_package() {
        assert_eq!(detect("/t/release/raftshop", None, Some("/src/shop")), None);
        assert_eq!(detect("/t/release/raftshop", Some(""), Some("/src/shop")), None);
        assert_eq!(detect("/t/release/raftshop", Some("cargo"), None), None);
        assert_eq!(detect("/t/release/raftshop", Some("cargo"), Some("/src/other")), None);
    }

    #[test]
    fn locate_finds_a_sibling_or_says_how_to_build_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let error = locate(dir.path(), STORAGE_NODE, false).expect_err("nothing built yet").to_string();
        assert!(error.contains("cannot find the storage-node executable"), "{error}");
        assert!(error.contains("cargo build --bins"), "{error}");
        let error = locate(dir.path(), STORAGE_NODE, true).expect_err("still not built").to_string();
        assert!(error.contains("src/bin/storage-node.rs"), "{error}");
        let path = dir.path().join(format!("{STORAGE_NODE}{}", std::env::consts::EXE_SUFFIX));
        std::fs::write(&path, b"").expect("write");
        assert_eq!(locate(dir.path(), STORAGE_NODE, false).expect("found"), path);
    }
}
