//! `cargo xtask bench [--quick]`: the benchmarks of DESIGN.md section 8,
//! each figure next to a raw baseline.
//!
//! The measuring code is the `pod-bench` crate (`bench/`), so xtask stays
//! quick to compile and depends on no library crate; this only runs it
//! in release mode. It prints the table and writes `results.json` and
//! `results.md` to `bench/` under the cargo target directory it was built
//! in: `target/bench/` by default, `$CARGO_TARGET_DIR/bench/` when that
//! is set. About 4 minutes on 2 cores (`--quick`: about 35 seconds), plus
//! the build.
//!
//! Item 9 measures the scope table on etcd, so the benchmarks are built
//! with pod-bench's `etcd` feature, with `protoc` and an etcd binary
//! provisioned first as for `cargo xtask test` (item 9 starts its own
//! member).

use anyhow::Result;

use crate::{cargo, run_step};

/// Entry point. Arguments (`--quick`, and the rest of `pod-bench --help`:
/// `--only`, `--out`) are passed to `pod-bench`, which checks them.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let tools = crate::provision::tools()?;
    run_step(
        "bench",
        cargo()
            .envs(tools.env())
            .args([
                "run",
                "--release",
                "--package",
                "pod-bench",
                "--features",
                "etcd",
                "--",
            ])
            .args(args),
    )
}
