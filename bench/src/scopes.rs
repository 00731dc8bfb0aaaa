//! Item 5: one `ScopeTable::delegate` on a file table of 10 to 10,000
//! allocations, next to a plain cycle of the same file with no library
//! logic around it, making the syscalls of the store's protocol: flock the
//! data file, read, parse, serialize, write a journal (create, write,
//! fdatasync, fsync the directory), rewrite the data file in place (write,
//! truncate, fdatasync), remove the journal.
//!
//! Two delegate figures: with a liveness probe that costs nothing (the
//! table's own work: reclaim scan, checks, invariant check on load), and
//! with the real `/proc` probe, which reads `/proc/<pid>/stat` once per
//! allocation because every delegate first reclaims stale allocations.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
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
                pending_until: None,
                reparented: 0,
            }
        })
        .collect()
}

/// Lock the data file, read, parse, serialize, journal (create exclusively,
/// write, fdatasync, fsync the directory), rewrite the data file in place
/// (write at 0, truncate, fdatasync), remove the journal: the syscalls of
/// one transaction of the file store, without the table.
fn plain_cycle(path: &Path) -> Result<Duration> {
    let journal_path = path.with_extension("lock.plain-journal");
    let dir = path.parent().context("a directory")?;
    let started = Instant::now();
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    file.lock()?;
    let mut bytes = Vec::new();
    (&file).read_to_end(&mut bytes)?;
    let table: TableFile = serde_json::from_slice(&bytes)?;
    let out = serde_json::to_vec(&table)?;
    let mut journal = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&journal_path)?;
    journal.write_all(&out)?;
    journal.sync_data()?;
    drop(journal);
    File::open(dir)?.sync_all()?;
    file.write_all_at(&out, 0)?;
    file.set_len(out.len() as u64)?;
    file.sync_data()?;
    fs::remove_file(&journal_path)?;
    drop(file);
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
        let no_probe = ScopeTable::new(FileStore::new(&path), fake);
        let proc = ScopeTable::with_proc_liveness(FileStore::new(&path));
        let (mut plain, mut cheap, mut real) = (Vec::new(), Vec::new(), Vec::new());
        // Round 0 is the warm-up.
        for round in 0..=plan.scope_rounds {
            // A plain cycle before each delegate rewrites the file in its
            // own encoding, so neither delegate finds the bytes it last
            // wrote (which every release leaves) and skips the parse.
            let p = plain_cycle(&path)?;
            let c = delegate_once(&no_probe, round, pid)?;
            let q = plain_cycle(&path)?;
            let r = delegate_once(&proc, round, pid)?;
            if round > 0 {
                plain.extend([ms(p), ms(q)]);
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
