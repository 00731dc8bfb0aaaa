//! Reads of a [`FileStore`] table, cached against uncached: the cost of a
//! `find` when the file's bytes are unchanged since the last load (read
//! them under a shared lock, compare, reuse the parsed table) against a
//! full parse and invariant check each time.
//!
//! ```text
//! cargo run --release -p pod-scope-lock --example file_reads [-- ROUNDS]
//! ```
//!
//! On tables of 1,000 and 10,000 allocations (100 top-level pods, the rest
//! delegated from them) in a temporary directory (`TMPDIR`), it times
//! `ROUNDS` (default 200) `find`s each way and prints the median, and the
//! store's counters as the proof of which path each took.

use std::time::{Duration, Instant};

use pod_scope_lock::testing::FakeLiveness;
use pod_scope_lock::{
    Allocation, FileStore, PodName, ScopeError, ScopeRule, ScopeTable, Table, TableStore,
};

fn name(s: &str) -> PodName {
    PodName::new(s).expect("valid name")
}

/// `n` allocations: 100 top-level pods over `/bench/t<i>`, the rest
/// delegated from them, one sub-directory each.
fn build_table(n: usize) -> Table {
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
                pid: 4242,
                start_time: Some(1),
                scope_allow: vec![ScopeRule::write(target), ScopeRule::read("/usr")],
                delegated_from: parent,
                incarnation: Some("0123456789abcdef0123456789abcdef".into()),
                pending_until: None,
                reparented: 0,
            }
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() -> Result<(), ScopeError> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let temp = tempfile::tempdir().map_err(|e| ScopeError::Io {
        path: std::env::temp_dir(),
        source: e,
    })?;
    for n in [1_000, 10_000] {
        let path = temp.path().join(format!("t{n}/scope.lock"));
        let table = build_table(n);
        FileStore::new(&path).transact(|t| {
            *t = table;
            Ok(())
        })?;
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let probe = name(&format!("child{}", n - 1));
        for cached in [true, false] {
            let store = FileStore::new(&path).with_cache(cached);
            let scopes = ScopeTable::new(store.clone(), FakeLiveness::new());
            let mut samples = Vec::with_capacity(rounds);
            // Round 0 warms up (and fills the cache).
            for round in 0..=rounds {
                let started = Instant::now();
                let found = scopes.find(&probe)?;
                if round > 0 {
                    samples.push(started.elapsed());
                }
                assert!(found.is_some());
            }
            let stats = store.stats();
            println!(
                "{n:>6} allocations ({size} bytes)  find {:<8}  median {:>9.3} ms  (loads {}, cached loads {})",
                if cached { "cached" } else { "uncached" },
                median(samples).as_secs_f64() * 1e3,
                stats.loads,
                stats.cached_loads
            );
        }
    }
    Ok(())
}
