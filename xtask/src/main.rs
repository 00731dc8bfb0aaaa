//! Project automation, run as `cargo xtask <command>` (see `.cargo/config.toml`).
//!
//! `test` is what CI runs; each other command is documented in `usage()`.
//! Cargo is always called through `$CARGO` so the toolchain that runs
//! xtask is the one that builds the workspace.

mod bench;
mod demo;
mod fuzz;
mod provision;
mod test;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

fn usage() -> &'static str {
    "usage: cargo xtask <command>

commands:
  bench    [--quick]: the benchmarks of DESIGN.md section 8 next to raw
           baselines; writes <target dir>/bench/results.json (about 3 min,
           --quick about 30 s)
  demo     a live tree of pod processes: root, child, grandchild; the child
           is killed with SIGKILL and the root takes over the grandchild
  provision  find or install protoc and etcd (what `test` does first);
           prints `export PROTOC=.. POD_ETCD_BIN=..` for a shell to eval,
           so `cargo test -p pod-scope-lock --features etcd` works alone
  test     fmt check, clippy (-D warnings), every test (unit, integration,
           doc, proptest, fuzz corpus replay), rustdoc (-D warnings)
  fuzz     [TARGET] [--seconds N] [--sanitizer none|address]: run the
           cargo-fuzz targets (frames, receive_path, files; default all,
           60 s each), installing cargo-fuzz if missing"
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("bench") => bench::run(&args[1..]),
        Some("demo") => demo::run(&args[1..]),
        Some("test") => test::run(&args[1..]),
        Some("provision") => provision::run(&args[1..]),
        Some("fuzz") => fuzz::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{}", usage());
            Ok(())
        }
        _ => {
            eprintln!("{}", usage());
            std::process::exit(2);
        }
    };
    if let Err(err) = result {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

/// The workspace root (the parent of this crate's manifest directory).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

/// A `cargo` command run from the workspace root.
pub(crate) fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// Runs `cmd`, echoing it first; fails if it exits non-zero.
pub(crate) fn run_step(step: &str, cmd: &mut Command) -> Result<()> {
    eprintln!("\n==> {step}: {cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("{step}: could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}
