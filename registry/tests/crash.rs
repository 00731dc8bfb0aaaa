//! Crash test: a child process (this test binary, re-executed) applies a
//! stream of mutations and prints each one it got acknowledged; the parent
//! kills it with SIGKILL at a random moment, many times over the same
//! state directory, and checks after each kill that the registry opens,
//! its files parse, every acknowledged mutation is there, and an invalid
//! record another tool wrote is still there byte for byte.

use std::collections::BTreeSet;
use std::hash::BuildHasher;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;

use pod_registry::{FileRegistry, Mutation, Record, Registry, RegistryOptions, RegistryState};

use crate::common::{departed_on_disk, departure, elements_on_disk, record, removal};

/// The child role: set to the state directory.
const CHILD_DIR: &str = "POD_REGISTRY_CRASH_DIR";
const CHILD_SEED: &str = "POD_REGISTRY_CRASH_SEED";
const CHILD_RUN: &str = "POD_REGISTRY_CRASH_RUN";
/// Overrides the number of kills (default [`RUNS`]).
const RUNS_VAR: &str = "POD_REGISTRY_CRASH_RUNS";

const RUNS: usize = 40;
/// A record with a name this crate refuses, as another tool wrote it.
const INVALID: &str = r#"{"pod_name": "worker 1", "socket_path": "/run/pods/worker-1.sock", "scope_delegated": [], "callback_address": ""}"#;
const TASKS: usize = 4;
const OPS_PER_TASK: usize = 50;
const NAMES_PER_TASK: usize = 5;
/// Large enough that no departure is ever evicted in this test.
const CAPACITY: usize = 1 << 20;

/// splitmix64: a small deterministic generator, so parent and child derive
/// the same mutation streams from a seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The mutations task `task` of run `run` applies, one after the other.
/// Names are unique to the run and task, so tasks never interfere.
fn task_ops(seed: u64, run: usize, task: usize) -> Vec<Mutation> {
    let mut rng = Rng(seed ^ ((run as u64) << 32) ^ task as u64);
    (0..OPS_PER_TASK)
        .map(|_| {
            let pod = format!("r{run}t{task}p{}", rng.below(NAMES_PER_TASK));
            let inc = [None, Some("1"), Some("2")][rng.below(3)];
            match rng.below(10) {
                0..=4 => Mutation::Add(record(&pod, inc)),
                5..=6 => removal(&pod, inc),
                _ => departure(&pod, inc),
            }
        })
        .collect()
}

fn options() -> RegistryOptions {
    RegistryOptions::new().departed_capacity(CAPACITY)
}

/// The child role; does nothing unless [`CHILD_DIR`] is set.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR) else {
        return;
    };
    let seed: u64 = std::env::var(CHILD_SEED).unwrap().parse().unwrap();
    let run: usize = std::env::var(CHILD_RUN).unwrap().parse().unwrap();
    let registry = Arc::new(FileRegistry::open_with(dir, options()).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move {
                    for (i, mutation) in task_ops(seed, run, task).into_iter().enumerate() {
                        registry.apply(mutation).await.unwrap();
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {task} {i}").unwrap();
                        out.flush().unwrap();
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
}

/// What the registry holds about names starting with `prefix` (or, with
/// `exclude`, about all other names): records, and tombstones as a set.
type Summary = (Vec<Record>, BTreeSet<String>);

fn summary(state: &RegistryState, prefix: &str, exclude: bool) -> Summary {
    let selected = |name: &str| name.starts_with(prefix) != exclude;
    let records = state
        .records()
        .filter(|r| selected(r.pod_name.as_str()))
        .cloned()
        .collect();
    let departed = state
        .departed()
        .filter(|t| selected(t.pod_name.as_str()))
        .map(|t| format!("{}:{:?}", t.pod_name, t.incarnation))
        .collect();
    (records, departed)
}

/// Parses `ack <task> <index>` lines into per-task counts of acknowledged
/// mutations, checking each task acknowledges in order. The test harness
/// prints `test crash::crash_child ... ` before the first line.
fn count_ack(line: &str, acked: &mut [usize]) -> bool {
    let Some((_, ack)) = line.split_once("ack ") else {
        return false;
    };
    let mut words = ack.split(' ');
    let (Some(task), Some(index)) = (words.next(), words.next()) else {
        return false;
    };
    let (task, index): (usize, usize) = (task.parse().unwrap(), index.parse().unwrap());
    assert_eq!(index, acked[task], "task {task} acknowledged out of order");
    acked[task] += 1;
    true
}

/// Runs one child and kills it once it has acknowledged `kill_after`
/// mutations (or lets it finish); returns the acknowledged counts.
fn run_child(dir: &Path, seed: u64, run: usize, kill_after: usize) -> Vec<usize> {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, dir)
        .env(CHILD_SEED, seed.to_string())
        .env(CHILD_RUN, run.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut acked = vec![0; TASKS];
    let mut seen = 0;
    while seen < kill_after {
        match lines.next() {
            Some(line) => seen += usize::from(count_ack(&line.unwrap(), &mut acked)),
            None => break,
        }
    }
    // The child may have finished already; then there is nothing to kill.
    let _ = child.kill();
    let status = child.wait().unwrap();
    // Lines written before the kill are still in the pipe: acknowledged.
    for line in lines {
        count_ack(&line.unwrap(), &mut acked);
    }
    if seen < kill_after {
        assert!(status.success(), "child failed: {status}");
    }
    acked
}

#[test]
fn acknowledged_mutations_survive_sigkill() {
    if std::env::var_os(CHILD_DIR).is_some() {
        return;
    }
    let runs = std::env::var(RUNS_VAR).map_or(RUNS, |v| v.parse().unwrap());
    let seed = std::env::var(CHILD_SEED).map_or_else(
        |_| std::hash::RandomState::new().hash_one(std::time::SystemTime::now()),
        |v| v.parse().unwrap(),
    );
    eprintln!("crash test: {runs} runs, {CHILD_SEED}={seed} replays it");
    let dir = tempfile::tempdir().unwrap();
    // Another tool's record this crate refuses: every write, killed or
    // not, must keep it.
    std::fs::write(
        dir.path().join(pod_registry::RECORDS_FILE),
        format!("[\n{INVALID}\n]\n"),
    )
    .unwrap();
    let mut rng = Rng(seed);
    let mut earlier: Summary = Default::default();
    let mut killed = 0;
    for run in 0..runs {
        let kill_after = rng.below(TASKS * OPS_PER_TASK + 1);
        let acked = run_child(dir.path(), seed, run, kill_after);
        killed += usize::from(acked.iter().sum::<usize>() < TASKS * OPS_PER_TASK);

        let registry = FileRegistry::open_with(dir.path(), options()).unwrap();
        // Both files parse as plain JSON arrays: the records, then the
        // invalid element, byte for byte.
        let elements = elements_on_disk(dir.path());
        let (invalid, records) = elements.split_last().unwrap();
        assert_eq!(invalid, INVALID, "seed {seed} run {run}");
        for record in records {
            serde_json::from_str::<Record>(record).unwrap();
        }
        departed_on_disk(dir.path());
        let kept: Vec<&str> = registry.invalid_records().iter().map(|r| r.raw()).collect();
        assert_eq!(kept, [INVALID]);
        registry.read(|state| {
            for (task, &acked) in acked.iter().enumerate() {
                let ops = task_ops(seed, run, task);
                let prefix = format!("r{run}t{task}p");
                let actual = summary(state, &prefix, false);
                // Everything acknowledged is there; the one mutation in
                // flight (issued, not acknowledged) may be there too.
                let mut model = RegistryState::new(CAPACITY);
                ops[..acked].iter().for_each(|m| {
                    model.apply(m);
                });
                let mut candidates = vec![summary(&model, &prefix, false)];
                if let Some(in_flight) = ops.get(acked) {
                    model.apply(in_flight);
                    candidates.push(summary(&model, &prefix, false));
                }
                assert!(
                    candidates.contains(&actual),
                    "seed {seed} run {run} task {task}: {acked} acknowledged\n\
                     on disk: {actual:?}\nexpected one of: {candidates:?}"
                );
            }
            // Earlier runs' names are exactly as they were.
            let run_prefix = format!("r{run}t");
            assert_eq!(
                summary(state, &run_prefix, true),
                earlier,
                "seed {seed} run {run}: earlier state changed"
            );
            earlier = summary(state, "", false);
        });
    }
    eprintln!("crash test: {killed} of {runs} children killed before the end");
    assert!(
        runs < 10 || killed > runs / 2,
        "too few kills landed mid-stream"
    );
}
