//! Item 5: one `ScopeTable::delegate` on a file table of 10 to 10,000
//! allocations, next to a plain lock + read + parse + write + fsync +
//! rename cycle of the same file with no library logic around it.
//!
//! Two delegate figures: with a liveness probe that costs nothing (the
//! table's own work: reclaim scan, checks, invariant check on load), and
//! with the real `/proc` probe, which reads `/proc/<pid>/stat` once per
//! allocation because every delegate first reclaims stale allocations.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use pod_scope_lock::testing::FakeLiveness;
use pod_scope_lock::{
    Allocation, FileStore, Liveness, PodName, PodSpec, ProcLiveness, ScopeRule, ScopeTable, Table,
    TableStore,
};
use serde::{Deserialize, Serialize};

use crate::report::{median, ms};
use crate::Plan;

/// Table sizes measured.
pub(crate) const SIZES: [usize; 4] = [10, 100, 1_000, 10_000];

/// The plain baselines' view of the table file.
#[derive(Serialize, Deserialize)]
pub(crate) struct TableFile {
    pub(crate) version: u64,
    pub(crate) allocations: Vec<Allocation>,
}

/// Medians, in milliseconds, at one table size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) allocations: usize,
    pub(crate) plain: f64,
    pub(crate) no_probe: f64,
    pub(crate) proc: f64,
}

fn name(s: &str) -> PodName {
    PodName::new(s).expect("a valid pod name")
}

/// `n` allocations of this process: up to 100 top-level pods over
/// `/bench/t<i>`, the rest delegated from them, one sub-directory each.
pub(crate) fn build_table(n: usize, pid: u32, start_time: u64) -> Table {
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
                start_time: Some(start_time),
                scope_allow: vec![ScopeRule::write(target), ScopeRule::read("/usr")],
                delegated_from: parent,
                incarnation: Some("0123456789abcdef0123456789abcdef".into()),
            }
        })
        .collect()
}

/// Lock, read, parse, serialize, write a temp file, fsync, rename, fsync
/// the directory: the syscalls of one transaction, without the table.
fn plain_cycle(path: &Path) -> Result<Duration> {
    let lock_path = path.with_extension("lock.plain-lck");
    let temp_path = path.with_extension("lock.plain-tmp");
    let dir = path.parent().context("a directory")?;
    let started = Instant::now();
    let lock = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)?;
    lock.lock()?;
    let bytes = fs::read(path)?;
    let table: TableFile = serde_json::from_slice(&bytes)?;
    let out = serde_json::to_vec(&table)?;
    let mut temp = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp_path)?;
    temp.write_all(&out)?;
    temp.sync_all()?;
    drop(temp);
    fs::rename(&temp_path, path)?;
    File::open(dir)?.sync_all()?;
    drop(lock);
    Ok(started.elapsed())
}

/// One delegate (timed), then a release (not timed) to restore the table.
fn delegate_once<L: Liveness>(
    table: &ScopeTable<FileStore, L>,
    round: usize,
    pid: u32,
) -> Result<Duration> {
    let pod = format!("bench{round}");
    let spec = PodSpec {
        pod_name: name(&pod),
        pid,
        socket: format!("/run/pods/{pod}.sock"),
        scope: vec![ScopeRule::write(format!("/bench/t0/new{round}"))],
    };
    let started = Instant::now();
    table.delegate(&name("top0"), spec)?;
    let elapsed = started.elapsed();
    table.release(&name(&pod), None)?;
    Ok(elapsed)
}

/// Measures every size in `dir`.
pub(crate) fn measure(plan: &Plan, dir: &Path) -> Result<Vec<Figures>> {
    let pid = std::process::id();
    let start_time = ProcLiveness
        .start_time(pid)
        .context("reading this process's start time from /proc")?;
    let mut out = Vec::new();
    for n in SIZES {
        let path = dir.join(format!("t{n}/scope.lock"));
        let store = FileStore::new(&path);
        let table = build_table(n, pid, start_time);
        table
            .check_invariant()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        store.transact(|t| {
            *t = table;
            Ok(())
        })?;
        let fake = FakeLiveness::new();
        fake.set(pid, Some(start_time));
        let no_probe = ScopeTable::new(store.clone(), fake);
        let proc = ScopeTable::with_proc_liveness(store.clone());
        let (mut plain, mut cheap, mut real) = (Vec::new(), Vec::new(), Vec::new());
        // Round 0 is the warm-up.
        for round in 0..=plan.scope_rounds {
            let p = plain_cycle(&path)?;
            let c = delegate_once(&no_probe, round, pid)?;
            let r = delegate_once(&proc, round, pid)?;
            if round > 0 {
                plain.push(ms(p));
                cheap.push(ms(c));
                real.push(ms(r));
            }
        }
        out.push(Figures {
            allocations: n,
            plain: median(plain),
            no_probe: median(cheap),
            proc: median(real),
        });
    }
    Ok(out)
}
