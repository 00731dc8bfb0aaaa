//! `cargo xtask test`: everything CI checks, failing on the first failure.

use anyhow::Result;

use crate::{cargo, root, run_step};

/// Runs every check in order, cheapest first.
pub(crate) fn run_all() -> Result<()> {
    run_step("format", cargo().args(["fmt", "--all", "--check"]))?;
    // Before clippy: `--all-features` builds pod-scope-lock's `etcd`
    // feature, whose client needs protoc, and its tests need etcd.
    let tools = crate::provision::tools()?;
    run_step(
        "clippy",
        cargo().envs(tools.env()).args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step(
        "tests",
        cargo()
            .envs(tools.env())
            .args(["test", "--workspace", "--all-features", "--no-fail-fast"]),
    )?;
    eprintln!("\n==> demo: cargo xtask demo");
    crate::demo::run(&[])?;
    eprintln!("\n==> demo over TLS: cargo xtask demo --tls");
    crate::demo::run(&["--tls".to_owned()])?;
    eprintln!("\n==> demo across two hosts: cargo xtask demo --cluster");
    crate::demo::run(&["--cluster".to_owned()])?;
    if root().join("fuzz/Cargo.toml").exists() {
        // The fuzz crate is its own workspace: `--all` above does not see
        // it. Its libFuzzer binaries need the `libfuzzer` feature, so
        // `--all-targets` checks the library and the replay test only.
        run_step(
            "fuzz format",
            cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]),
        )?;
        run_step(
            "fuzz clippy",
            cargo().args([
                "clippy",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        )?;
        run_step(
            "fuzz corpus replay",
            cargo().args([
                "test",
                "--manifest-path",
                "fuzz/Cargo.toml",
                "--no-fail-fast",
            ]),
        )?;
    }
    run_step(
        "rustdoc",
        cargo()
            .envs(tools.env())
            .args(["doc", "--workspace", "--no-deps", "--all-features"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;
    eprintln!("\nxtask test: all checks passed");
    Ok(())
}

/// Entry point; `test` takes no arguments.
pub(crate) fn run(args: &[String]) -> Result<()> {
    if let Some(extra) = args.first() {
        anyhow::bail!("`cargo xtask test` takes no arguments (got {extra:?})");
    }
    run_all()
}
