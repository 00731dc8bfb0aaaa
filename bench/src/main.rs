//! `cargo xtask bench`: every figure of DESIGN.md section 8, each next to
//! a raw baseline doing the same work without the library, printed as a
//! table and written to `<target dir>/bench/results.json` (and
//! `results.md`).
//!
//! ```text
//! cargo run --release -p pod-bench -- [--quick] [--only 1,3,...] [--out DIR]
//! ```
//!
//! Every figure is the median of several runs after a warm-up run. The
//! items (numbered as in the issue that asked for them, and in
//! BENCHMARKS.md): 1 delivery rate over sockets, 2 a burst of 5000
//! senders, 3 the receive path in memory, 4 bursts of shutdowns and
//! registrations on the file-backed registry and scope table, 4-mem the
//! durable registry alone under a burst (scope table in memory), 5
//! scope-table delegate, 6 peak memory of a loaded endpoint, 7 end to end
//! over persistent connections into a pipe, 8 events over mutual TLS
//! (pooled connections, and a cold handshake), 9 the scope table on etcd
//! (feature `etcd`: a delegate next to a raw etcd range + txn, and 16
//! concurrent delegaters). Timing assertions never go in tests; they live
//! here.

mod counter;
mod delivery;
mod endtoend;
#[cfg(feature = "etcd")]
mod etcd;
mod memory;
mod mix;
mod receive;
mod registry;
mod report;
mod scopes;
mod system;
mod tls;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use report::{Bound, Goal, Row};

/// How much work each item does.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// Measured runs per figure (after one warm-up run).
    pub(crate) runs: usize,
    /// Events per run of the delivery rate (item 1).
    pub(crate) delivery_events: usize,
    /// Lives (7 events each) per run of the receive path (item 3).
    pub(crate) receive_lives: usize,
    /// Measured runs of the durable registry burst (item 4).
    pub(crate) registry_runs: usize,
    /// Measured delegates per table size (item 5).
    pub(crate) scope_rounds: usize,
    /// Child processes per peak-memory figure (item 6).
    pub(crate) memory_runs: usize,
    /// Measured runs of the file-backed bursts (item 4).
    pub(crate) system_runs: usize,
    /// Children of the root in item 4's tree.
    pub(crate) system_spawners: usize,
    /// Grandchildren in item 4's tree: allocations in the table, and the
    /// events of each burst.
    pub(crate) system_pods: usize,
    /// Measured runs of the end-to-end figure (item 7).
    pub(crate) e2e_runs: usize,
    /// Events per run of item 7.
    pub(crate) e2e_events: usize,
    /// Persistent connections (one child each) of item 7.
    pub(crate) e2e_connections: usize,
    /// Events per run of item 8's pooled figures.
    pub(crate) tls_events: usize,
    /// Cold handshakes per run of item 8.
    pub(crate) tls_handshakes: usize,
    /// Measured delegates of each kind in item 9.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) etcd_rounds: usize,
    /// Measured runs of item 9's concurrent figures.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) etcd_runs: usize,
    /// Delegates per delegater per run of item 9's concurrent figures.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub(crate) etcd_delegates: usize,
}

impl Plan {
    /// About four minutes on two cores.
    fn full() -> Self {
        Plan {
            runs: 9,
            delivery_events: 80_000,
            receive_lives: 150_000,
            registry_runs: 15,
            scope_rounds: 60,
            memory_runs: 5,
            system_runs: 9,
            system_spawners: 100,
            system_pods: 10_000,
            e2e_runs: 5,
            e2e_events: 1_000_000,
            e2e_connections: 8,
            tls_events: 50_000,
            tls_handshakes: 300,
            etcd_rounds: 100,
            etcd_runs: 5,
            etcd_delegates: 25,
        }
    }

    /// About 35 seconds: fewer runs of smaller batches, and a small tree
    /// for item 4.
    fn quick() -> Self {
        Plan {
            runs: 3,
            delivery_events: 30_000,
            receive_lives: 30_000,
            registry_runs: 3,
            scope_rounds: 10,
            memory_runs: 1,
            system_runs: 3,
            system_spawners: 10,
            system_pods: 500,
            e2e_runs: 3,
            e2e_events: 100_000,
            e2e_connections: 8,
            tls_events: 10_000,
            tls_handshakes: 60,
            etcd_rounds: 20,
            etcd_runs: 1,
            etcd_delegates: 10,
        }
    }
}

const USAGE: &str = "usage: pod-bench [--quick] [--only ITEM[,ITEM...]] [--out DIR]

  --quick   fewer, smaller runs (about 35 s instead of about 4 min)
  --only    items to run: 1 delivery, 2 burst, 3 receive path,
            4 file-backed registry and scope table (shutdowns, registrations),
            4-mem durable registry alone, 5 scope table, 6 peak memory,
            7 end to end into a pipe, 8 mutual TLS,
            9 scope table on etcd (needs the `etcd` feature, which
            `cargo xtask bench` turns on) (default: all)
  --out     where to write results.json and results.md
            (default: <cargo target dir>/bench)";

/// The items, in the order they run.
const ITEMS: [&str; 10] = ["1", "2", "3", "4", "4-mem", "5", "6", "7", "8", "9"];

/// Items this build can run: item 9 only with the `etcd` feature.
fn built(item: &str) -> bool {
    item != "9" || cfg!(feature = "etcd")
}

struct Args {
    plan: Plan,
    quick: bool,
    only: BTreeSet<&'static str>,
    out: PathBuf,
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Args> {
    let mut quick = false;
    let mut only = BTreeSet::new();
    let mut out = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let list = args.next().context("--only needs a list of items")?;
                for item in list.split(',') {
                    let item = item.trim();
                    let Some(known) = ITEMS.iter().find(|known| **known == item) else {
                        bail!("no item {item:?}: items are {}", ITEMS.join(", "));
                    };
                    if !built(known) {
                        bail!(
                            "item {known} needs pod-bench built with `--features etcd` \
                             (`cargo xtask bench` does that, and provisions protoc and etcd)"
                        );
                    }
                    only.insert(*known);
                }
            }
            "--out" => out = Some(PathBuf::from(args.next().context("--out needs a path")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if only.is_empty() {
        only = ITEMS.into_iter().filter(|item| built(item)).collect();
    }
    let out = match out {
        Some(out) => out,
        None => default_out()?,
    };
    let plan = if quick { Plan::quick() } else { Plan::full() };
    Ok(Args {
        plan,
        quick,
        only,
        out,
    })
}

/// `<target dir>/bench`: this binary is `<target dir>/<profile>/pod-bench`,
/// so the results land in whichever target directory cargo built it in
/// (`target/`, or `$CARGO_TARGET_DIR` when set).
fn default_out() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("the benchmark binary is not inside a cargo target directory")?;
    Ok(target.join("bench"))
}

fn main() -> Result<()> {
    let mut raw_args = std::env::args().skip(1);
    if let Some(flag) = std::env::args().nth(1) {
        if flag == "--memory-child" {
            let kind = raw_args.nth(1).context("--memory-child KIND DIR")?;
            let dir = raw_args.next().context("--memory-child KIND DIR")?;
            return memory::child(&kind, Path::new(&dir));
        }
    }
    let args = parse_args(raw_args)?;
    println!("{}", machine());
    println!(
        "plan: {} ({:?}); each figure the median of {} runs after a warm-up\n",
        if args.quick { "--quick" } else { "full" },
        args.plan,
        args.plan.runs
    );
    let started = Instant::now();
    let rows = run(&args)?;
    println!(
        "\n{}\n(total {:.0} s)",
        report::table(&rows),
        started.elapsed().as_secs_f64()
    );
    report::write(&args.out, &rows)?;
    println!(
        "wrote {} and results.md",
        args.out.join("results.json").display()
    );
    Ok(())
}

/// Runs the selected items, printing each as it finishes.
fn run(args: &Args) -> Result<Vec<Row>> {
    let plan = &args.plan;
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let mut rows = Vec::new();
    let mut item = |n: &str, what: &str, f: &mut dyn FnMut() -> Result<Vec<Row>>| -> Result<()> {
        if !args.only.contains(n) {
            return Ok(());
        }
        eprintln!("item {n}: {what}...");
        let started = Instant::now();
        let new = f().with_context(|| format!("item {n}: {what}"))?;
        eprint!("{}", report::table(&new));
        eprintln!("({:.1} s)\n", started.elapsed().as_secs_f64());
        rows.extend(new);
        Ok(())
    };

    item("1", "event delivery over sockets", &mut || {
        let mut rows = Vec::new();
        for senders in [1, 64] {
            let (ours, raw) = delivery::measure_rate(plan, dir, senders)?;
            rows.push(Row::new(
                format!(
                    "1. delivery, connect-per-event, {senders} sender{}",
                    if senders == 1 { "" } else { "s" }
                ),
                "events/s",
                ours,
                raw,
                Goal::ratio(Bound::AtLeast(0.7)),
            ));
        }
        Ok(rows)
    })?;

    item("2", "a burst of simultaneous senders", &mut || {
        let (ours, raw) = delivery::measure_burst(plan, dir)?;
        Ok(vec![Row::new(
            format!(
                "2. burst of {} senders, backlog {}: delivered",
                delivery::BURST_SENDERS,
                delivery::BURST_BACKLOG
            ),
            "fraction",
            ours,
            raw,
            Goal::ours(Bound::AtLeast(1.0)),
        )])
    })?;

    item("3", "receive path in memory", &mut || {
        let goal = Goal::ratio(Bound::AtLeast(0.5)).and_ours(Bound::AtLeast(1e6));
        let (ours, raw) = receive::measure(plan, true)?;
        let mut rows = vec![Row::new(
            "3. receive path in memory, 1 thread (decode+validate+apply+render)",
            "events/s",
            ours,
            raw,
            goal,
        )];
        let (ours, raw) = receive::measure(plan, false)?;
        rows.push(Row::new(
            "3b. same, scope table holding only the root (no release)",
            "events/s",
            ours,
            raw,
            goal,
        ));
        Ok(rows)
    })?;

    item(
        "4",
        "file-backed registry and scope table under bursts",
        &mut || Ok(system_rows(&system::measure(plan, dir)?)),
    )?;

    item("4-mem", "durable registry under a burst", &mut || {
        let f = registry::measure(plan, dir)?;
        let n = registry::PODS;
        let full = f.full_write_millis;
        let goal = Goal::ratio(Bound::AtMost(50.0));
        Ok(vec![
            Row::new(
                format!("4-mem. registry: {n} ShutDowns via Parent::apply, all at once: time"),
                "ms",
                f.apply.millis,
                full,
                goal,
            ),
            Row::new(
                "4-mem. registry: the same: durable writes",
                "writes",
                f.apply.writes,
                1.0,
                Goal::none(),
            ),
            Row::new(
                format!("4-mem b. registry: {n} ShutDowns via spawn_endpoint (defaults): time"),
                "ms",
                f.endpoint.millis,
                full,
                goal,
            ),
            Row::new(
                "4-mem b. registry: the same: durable writes",
                "writes",
                f.endpoint.writes,
                1.0,
                Goal::none(),
            ),
            Row::new(
                format!(
                    "4-mem c. registry: {n} ShutDowns via spawn_endpoint, max_in_flight {}: time",
                    registry::SMALL_IN_FLIGHT
                ),
                "ms",
                f.small_in_flight.millis,
                full,
                Goal::none(),
            ),
            Row::new(
                "4-mem c. registry: the same: durable writes",
                "writes",
                f.small_in_flight.writes,
                1.0,
                Goal::none(),
            ),
        ])
    })?;

    item("5", "scope-table delegate", &mut || {
        let mut rows = Vec::new();
        for f in scopes::measure(plan, dir)? {
            let goal = if f.allocations == 10_000 {
                Goal::ratio(Bound::AtMost(1.2))
            } else {
                Goal::none()
            };
            let n = f.allocations;
            rows.push(Row::new(
                format!("5. delegate at {n} allocations, free liveness probe"),
                "ms",
                f.no_probe,
                f.plain,
                goal,
            ));
            rows.push(Row::new(
                format!("5. delegate at {n} allocations, /proc liveness"),
                "ms",
                f.proc,
                f.plain,
                goal,
            ));
        }
        Ok(rows)
    })?;

    item("6", "peak memory of a loaded endpoint", &mut || {
        let (ours, raw) = memory::measure(plan, dir, false)?;
        let mut rows = vec![Row::new(
            format!(
                "6. peak RSS, endpoint with {0} records + {0} allocations",
                memory::PODS
            ),
            "MiB",
            ours,
            raw,
            Goal::none(),
        )];
        let (ours, raw) = memory::measure(plan, dir, true)?;
        rows.push(Row::new(
            "6b. same, one malloc arena (MALLOC_ARENA_MAX=1)",
            "MiB",
            ours,
            raw,
            Goal::none(),
        ));
        Ok(rows)
    })?;

    item("7", "end to end into a pipe", &mut || {
        let f = endtoend::measure(plan, dir)?;
        Ok(vec![
            Row::new(
                format!(
                    "7. end to end: {} turn_ended over {} connections, Listener + endpoint + pipe",
                    plan.e2e_events, plan.e2e_connections
                ),
                "events/s",
                f.per_line,
                f.raw,
                Goal::ratio(Bound::AtLeast(0.5)),
            ),
            Row::new(
                "7b. same, the printer writes the lines waiting in one write",
                "events/s",
                f.batched,
                f.raw,
                Goal::none(),
            ),
            Row::new(
                "7c. same, no pipe: the sink only counts",
                "events/s",
                f.counted,
                f.raw,
                Goal::none(),
            ),
        ])
    })?;

    item("8", "events over mutual TLS", &mut || {
        Ok(tls_rows(&tls::measure(plan)?))
    })?;

    #[cfg(feature = "etcd")]
    item("9", "the scope table on etcd", &mut || {
        Ok(etcd_rows(&etcd::measure(plan)?))
    })?;
    Ok(rows)
}

/// Item 9's rows: a delegate through `EtcdStore` against a raw range +
/// txn, the same through `ScopeTable` with lease liveness, and the
/// throughput of concurrent delegaters each way.
#[cfg(feature = "etcd")]
fn etcd_rows(f: &etcd::Measured) -> Vec<Row> {
    let (n, d) = (etcd::TABLE, etcd::DELEGATERS);
    vec![
        Row::new(
            format!("9. etcd: delegate via EtcdStore::transact, table of {n} (raw: range + txn)"),
            "ms",
            f.store_ms,
            f.raw_ms,
            Goal::ratio(Bound::AtMost(1.5)),
        ),
        Row::new(
            "9b. same via ScopeTable::delegate, LeaseLiveness (+ lease read, spawner probe)",
            "ms",
            f.table_ms,
            f.raw_ms,
            Goal::none(),
        ),
        Row::new(
            format!("9c. etcd: {d} concurrent delegaters, one store each (raw: one client each)"),
            "delegates/s",
            f.store_rate,
            f.raw_rate,
            Goal::none(),
        ),
    ]
}

/// Item 8's rows: pooled delivery against a raw rustls writer on one
/// connection, and the cost of a cold handshake.
fn tls_rows(f: &tls::Measured) -> Vec<Row> {
    let senders = tls::SENDERS;
    vec![
        Row::new(
            "8. TLS delivery, pooled TlsSender, 1 sender (raw: rustls, one connection)",
            "events/s",
            f.pooled,
            f.raw,
            Goal::ratio(Bound::AtLeast(0.7)),
        ),
        Row::new(
            format!("8b. same, {senders} concurrent senders, default pool (4)"),
            "events/s",
            f.concurrent,
            f.raw,
            Goal::none(),
        ),
        Row::new(
            format!("8c. same, {senders} concurrent senders, pool of {senders}"),
            "events/s",
            f.concurrent_pool,
            f.raw,
            Goal::none(),
        ),
        Row::new(
            "8d. cold handshake: one event per new connection (raw: rustls connect+write+close)",
            "ms",
            f.cold_ms,
            f.raw_cold_ms,
            Goal::none(),
        ),
    ]
}

/// Item 4's rows: per burst and way in, the time against its plain
/// baseline, and the counts the goals bound (baseline 1: one write, one
/// load, so the ratio is the count).
fn system_rows(f: &system::Measured) -> Vec<Row> {
    let (n, m) = (f.shape.pods, f.shape.allocations());
    let count_goal = Goal::ratio(Bound::AtMost(50.0));
    let mut rows = Vec::new();
    for (label, how, figures) in [
        ("4.", "Parent::apply, all at once", &f.shutdowns_apply),
        ("4b.", "spawn_endpoint (defaults)", &f.shutdowns_endpoint),
    ] {
        rows.push(Row::new(
            format!("{label} system: {n} ShutDowns via {how}, file table of {m}: time"),
            "ms",
            figures.millis,
            f.raw_write_millis,
            Goal::ratio(Bound::AtMost(100.0)),
        ));
        rows.push(Row::new(
            format!("{label} the same: registry durable writes"),
            "writes",
            figures.registry_writes,
            1.0,
            count_goal,
        ));
        rows.push(Row::new(
            format!("{label} the same: table durable writes"),
            "writes",
            figures.table_writes,
            1.0,
            count_goal,
        ));
    }
    for (label, how, figures) in [
        ("4c.", "Parent::apply, all at once", &f.registrations_apply),
        (
            "4d.",
            "spawn_endpoint (defaults)",
            &f.registrations_endpoint,
        ),
    ] {
        rows.push(Row::new(
            format!("{label} system: {n} ScopeSubDelegated via {how}, file table of {m}: time"),
            "ms",
            figures.millis,
            f.raw_load_millis,
            Goal::none(),
        ));
        rows.push(Row::new(
            format!("{label} the same: full loads of the table"),
            "loads",
            figures.table_loads,
            1.0,
            count_goal,
        ));
        rows.push(Row::new(
            format!("{label} the same: loads answered from the store's cache"),
            "loads",
            figures.table_cached_loads,
            1.0,
            Goal::none(),
        ));
        rows.push(Row::new(
            format!("{label} the same: registry durable writes"),
            "writes",
            figures.registry_writes,
            1.0,
            Goal::none(),
        ));
    }
    rows
}

/// The machine, for the record: cores, CPU model, kernel, load.
fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!(
        "machine: {cores} cores, {model}, Linux {}, load average {}",
        kernel.trim(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args> {
        parse_args(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn only_selects_items_by_name_and_refuses_unknown_ones() {
        let args = parse(&["--only", "4-mem, 7", "--out", "/tmp/x"]).unwrap();
        assert_eq!(args.only.into_iter().collect::<Vec<_>>(), ["4-mem", "7"]);
        let all = parse(&["--quick", "--out", "/tmp/x"]).unwrap();
        assert_eq!(all.only.len(), ITEMS.len());
        assert_eq!(all.plan.system_pods, Plan::quick().system_pods);
        let error = parse(&["--only", "10"]).err().unwrap().to_string();
        assert!(error.contains("4-mem"), "{error}");
    }

    /// A plan small enough for a test: the items' own checks (every event
    /// applied, the final registry and table as expected) still run.
    fn tiny() -> Plan {
        Plan {
            system_runs: 1,
            system_spawners: 3,
            system_pods: 30,
            e2e_runs: 1,
            e2e_events: 500,
            e2e_connections: 3,
            ..Plan::quick()
        }
    }

    #[test]
    fn item_4_counts_each_files_writes_and_the_tables_loads() {
        let dir = tempfile::tempdir().unwrap();
        let measured = system::measure(&tiny(), dir.path()).unwrap();
        assert_eq!(measured.shape.allocations(), 34);
        let rows = system_rows(&measured);
        assert_eq!(rows.len(), 14);
        for f in [measured.shutdowns_apply, measured.shutdowns_endpoint] {
            // 30 departures: at least one write of each file, never more
            // than one per event.
            assert!((1.0..=30.0).contains(&f.registry_writes), "{f:?}");
            assert!((1.0..=30.0).contains(&f.table_writes), "{f:?}");
        }
        for f in [
            measured.registrations_apply,
            measured.registrations_endpoint,
        ] {
            assert!(f.table_loads + f.table_cached_loads >= 1.0, "{f:?}");
            assert_eq!(f.table_writes, 0.0, "{f:?}");
        }
    }

    #[test]
    fn item_8_delivers_every_event_each_way() {
        let plan = Plan {
            runs: 1,
            tls_events: 300,
            tls_handshakes: 3,
            ..tiny()
        };
        // Every figure waits until each event arrived (decoded by the
        // baseline's server), so a lost event fails here.
        let rows = tls_rows(&tls::measure(&plan).unwrap());
        assert_eq!(rows.len(), 4);
        for row in &rows {
            let json = serde_json::to_value(row).unwrap();
            for key in ["ours", "baseline"] {
                let figure = json[key].as_f64().unwrap();
                assert!(figure.is_finite() && figure > 0.0, "{json}");
            }
        }
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn item_9_commits_every_delegate_each_way() {
        let plan = Plan {
            etcd_rounds: 2,
            etcd_runs: 1,
            etcd_delegates: 2,
            ..tiny()
        };
        // `measure` fails unless every concurrent delegate landed, on
        // either side, and every single one succeeded.
        let rows = etcd_rows(&etcd::measure(&plan).unwrap());
        assert_eq!(rows.len(), 3);
        for row in &rows {
            let json = serde_json::to_value(row).unwrap();
            for key in ["ours", "baseline"] {
                let figure = json[key].as_f64().unwrap();
                assert!(figure.is_finite() && figure > 0.0, "{json}");
            }
        }
    }

    #[test]
    fn item_7_delivers_every_line_each_way() {
        let dir = tempfile::tempdir().unwrap();
        // `measure` fails unless every line came out of the pipe (and was
        // decoded by the baseline) within the counter's deadline.
        let f = endtoend::measure(&tiny(), dir.path()).unwrap();
        for rate in [f.per_line, f.batched, f.counted, f.raw] {
            assert!(rate.is_finite() && rate > 0.0, "{f:?}");
        }
    }
}
