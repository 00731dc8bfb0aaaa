//! Times one `delegate` on a file table of 10, 1,000 and 10,000
//! allocations, next to a plain lock + read + parse + write + fsync +
//! rename cycle of the same table with no library logic around it.
//!
//! ```text
//! cargo run --release -p pod-scope-lock --example delegate_bench [-- ROUNDS]
//! ```
//!
//! Two delegate figures: with a liveness probe that costs nothing (the
//! table's own work: checks on load, conflict scan, insertion), and with
//! the real `/proc` probe, which reads `/proc/<pid>/stat` for the new pod
//! and for each pod that could refuse the request (here only the spawner:
//! a delegate reclaims what blocks it, not every stale allocation).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use pod_scope_lock::testing::FakeLiveness;
use pod_scope_lock::{
    Allocation, FileStore, Liveness, PodName, PodSpec, ProcLiveness, ScopeRule, ScopeTable, Table,
    TableStore,
};
use serde::{Deserialize, Serialize};

/// The plain baseline's view of the file.
#[derive(Serialize, Deserialize)]
struct TableFile {
    version: u64,
    allocations: Vec<Allocation>,
}

fn name(s: &str) -> PodName {
    PodName::new(s).expect("valid name")
}

/// `n` allocations of the benchmark process: 100 top-level pods (or fewer)
/// over `/bench/t<i>`, the rest delegated from them, one sub-directory each.
fn build_table(n: usize, pid: u32, start_time: u64) -> Table {
    let tops = n.clamp(1, 100);
    (0..n)
        .map(|i| {
            let (pod, target, parent) = if i < tops {
                (format!("top{i}"), format!("/bench/t{i}"), None)
            } else {
                let t = i % tops;
                (
                    format!("child{i}"),
                    format!("/bench/t{t}/c{i}"),
                    Some(name(&format!("top{t}"))),
                )
            };
            Allocation {
                socket: format!("/run/pods/{pod}.sock"),
                pod_name: name(&pod),
                pid,
                start_time,
                scope_allow: vec![ScopeRule::write(target), ScopeRule::read("/usr")],
                delegated_from: parent,
                incarnation: "0123456789abcdef0123456789abcdef".into(),
            }
        })
        .collect()
}

/// Lock, read, parse, serialize, write a temp file, fsync, rename, fsync
/// the directory: the same syscalls as a transaction, without the table.
fn plain_cycle(path: &Path) -> Duration {
    let lock_path = path.with_extension("lock.lck");
    let temp_path = path.with_extension("lock.tmp");
    let dir = path.parent().expect("a directory");
    let started = Instant::now();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .expect("open lock");
    lock.lock().expect("flock");
    let bytes = fs::read(path).expect("read");
    let table: TableFile = serde_json::from_slice(&bytes).expect("parse");
    let out = serde_json::to_vec(&table).expect("serialize");
    let mut temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp_path)
        .expect("temp");
    temp.write_all(&out).expect("write");
    temp.sync_all().expect("fsync");
    drop(temp);
    fs::rename(&temp_path, path).expect("rename");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("fsync dir");
    drop(lock);
    started.elapsed()
}

/// One delegate (timed), then a release (not timed) to restore the table.
fn delegate_once<L: Liveness>(
    table: &ScopeTable<FileStore, L>,
    round: usize,
    pid: u32,
) -> Duration {
    let pod = format!("bench{round}");
    let spec = PodSpec {
        pod_name: name(&pod),
        pid,
        socket: format!("/run/pods/{pod}.sock"),
        scope: vec![ScopeRule::write(format!("/bench/t0/new{round}"))],
    };
    let started = Instant::now();
    table.delegate(&name("top0"), spec).expect("delegate");
    let elapsed = started.elapsed();
    table.release(&name(&pod), None).expect("release");
    elapsed
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(15);
    let pid = std::process::id();
    let start_time = ProcLiveness.start_time(pid).expect("own start time");
    let temp = tempfile::tempdir().expect("temp dir");
    println!(
        "{:>7} {:>9} {:>12} {:>17} {:>6} {:>17} {:>6}",
        "allocs",
        "file",
        "plain cycle",
        "delegate (no probe)",
        "ratio",
        "delegate (/proc)",
        "ratio"
    );
    for n in [10, 1_000, 10_000] {
        let path = temp.path().join(format!("t{n}/scope.lock"));
        let store = FileStore::new(&path);
        let table = build_table(n, pid, start_time);
        table.check_invariant().expect("a valid table");
        store
            .transact(|t| {
                *t = table;
                Ok(())
            })
            .expect("write the table");
        let size = fs::metadata(&path).expect("stat").len();

        let fake = FakeLiveness::new();
        fake.set(pid, Some(start_time));
        let no_probe = ScopeTable::new(store.clone(), fake);
        let proc = ScopeTable::with_proc_liveness(store.clone());

        let (mut plain, mut cheap, mut real) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            plain.push(plain_cycle(&path));
            cheap.push(delegate_once(&no_probe, round, pid));
            real.push(delegate_once(&proc, round, pid));
        }
        let (plain, cheap, real) = (median(plain), median(cheap), median(real));
        println!(
            "{n:>7} {:>7}KB {:>12} {:>19} {:>5.2}x {:>17} {:>5.2}x",
            size / 1024,
            ms(plain),
            ms(cheap),
            cheap.as_secs_f64() / plain.as_secs_f64(),
            ms(real),
            real.as_secs_f64() / plain.as_secs_f64(),
        );
    }
    println!("(median of {rounds} rounds each)");
}
