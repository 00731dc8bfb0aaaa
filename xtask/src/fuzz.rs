//! `cargo xtask fuzz [TARGET] [--seconds N] [--sanitizer S]`: runs the
//! cargo-fuzz targets of `fuzz/` on the stable toolchain.
//!
//! Installs cargo-fuzz if it is missing. libFuzzer needs nightly-only
//! flags (`-Z sanitizer`, sanitizer coverage), so the fuzz command alone
//! runs with `RUSTC_BOOTSTRAP=1`; nothing else is built that way. New
//! inputs go to `fuzz/target/corpus/<target>` (ignored by git), crashes to
//! `fuzz/artifacts/<target>`; the committed seeds in `fuzz/corpus/<target>`
//! and `fuzz/regressions/<target>` are only read.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::{cargo, root, run_step};

/// Every target, in the order they run when none is named.
const TARGETS: &[&str] = &["frames", "receive_path", "files", "handoff"];

const DEFAULT_SECONDS: u64 = 60;

/// An input running longer than this is reported as a hang.
const TIMEOUT_SECONDS: u64 = 10;

/// Parsed command line.
struct Options {
    targets: Vec<&'static str>,
    seconds: u64,
    sanitizer: String,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        targets: TARGETS.to_vec(),
        seconds: DEFAULT_SECONDS,
        // Our code forbids `unsafe`, so AddressSanitizer would mostly watch
        // the standard library and cost half the executions; ask for
        // `--sanitizer address` to run it anyway.
        sanitizer: "none".to_owned(),
    };
    let mut args = args.iter();
    let mut named = None;
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next()
                .cloned()
                .with_context(|| format!("{flag} needs a value"))
        };
        match arg.as_str() {
            "--seconds" => {
                let text = value("--seconds")?;
                options.seconds = text
                    .parse()
                    .with_context(|| format!("--seconds {text}: not a number of seconds"))?;
            }
            "--sanitizer" => options.sanitizer = value("--sanitizer")?,
            target if !target.starts_with('-') && named.is_none() => {
                let Some(&known) = TARGETS.iter().find(|&&t| t == target) else {
                    bail!("unknown fuzz target {target:?}; targets: {TARGETS:?}");
                };
                named = Some(known);
            }
            other => bail!("unexpected argument {other:?}\n{}", usage()),
        }
    }
    if let Some(target) = named {
        options.targets = vec![target];
    }
    Ok(options)
}

fn usage() -> &'static str {
    "usage: cargo xtask fuzz [TARGET] [--seconds N] [--sanitizer none|address]"
}

/// Entry point.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    ensure_cargo_fuzz()?;
    for target in &options.targets {
        run_target(target, &options)?;
    }
    Ok(())
}

fn ensure_cargo_fuzz() -> Result<()> {
    let installed = cargo()
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if installed {
        return Ok(());
    }
    run_step(
        "install cargo-fuzz",
        cargo().args(["install", "--locked", "cargo-fuzz"]),
    )
}

/// A directory for the `files` target's temporary files: on tmpfs when
/// there is one (fsync is free there), removed after the run.
fn scratch_dir(target: &str) -> Result<PathBuf> {
    let shm = PathBuf::from("/dev/shm");
    let base = if shm.is_dir() {
        shm
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("pod-fuzz-{target}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn run_target(target: &str, options: &Options) -> Result<()> {
    let fuzz = root().join("fuzz");
    let work = fuzz.join("target/corpus").join(target);
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let mut corpora: Vec<OsString> = vec![work.into()];
    for seeds in ["corpus", "regressions"] {
        let dir = fuzz.join(seeds).join(target);
        if dir.is_dir() {
            corpora.push(dir.into());
        }
    }
    let scratch = scratch_dir(target)?;
    let mut cmd = cargo();
    cmd.env("RUSTC_BOOTSTRAP", "1")
        .env("POD_FUZZ_TMPDIR", &scratch)
        .args([
            "fuzz",
            "run",
            "--features",
            "libfuzzer",
            "--debug-assertions",
        ])
        .args(["--sanitizer", &options.sanitizer, target])
        .args(&corpora)
        .arg("--")
        .arg(format!("-max_total_time={}", options.seconds))
        .arg(format!("-timeout={TIMEOUT_SECONDS}"))
        .arg("-print_final_stats=1");
    let result = run_step(&format!("fuzz {target}"), &mut cmd);
    // Best effort: the directory only holds a few small files.
    let _ = std::fs::remove_dir_all(&scratch);
    result
}
