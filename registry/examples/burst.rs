//! Measures group commit: a burst of 10,000 concurrent removals (then
//! 10,000 departures, what `ShutDown`s do) on a 10,000-record
//! `FileRegistry`, against the time of one full-file durable write of the
//! same records done with plain std calls.
//!
//! ```text
//! cargo run --release -p pod-registry --example burst [STATE_DIR] [PODS]
//! ```
//!
//! `STATE_DIR` defaults to a fresh temporary directory (use one on the
//! filesystem you care about: fsync costs differ); `PODS` to 10,000.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pod_registry::{FileRegistry, Outcome, PodName, Record, Registry, ScopeRule};

fn record(i: usize, round: &str) -> Record {
    Record {
        pod_name: PodName::new(format!("worker-{round}-{i}")).expect("valid name"),
        socket_path: format!("/run/pods/worker-{round}-{i}.sock"),
        scope_delegated: vec![ScopeRule::write(format!("/srv/repo/worker-{i}"))],
        callback_address: "/run/pods/parent.sock".into(),
        incarnation: Some(format!("{i:016x}")),
    }
}

/// One durable full-file write without the library: serialize, write a
/// temporary file, fsync, rename, fsync the directory.
fn raw_full_write(dir: &Path, records: &[Record]) -> Duration {
    let start = Instant::now();
    let bytes = serde_json::to_vec(records).expect("records serialize");
    let temp = dir.join("baseline.json.tmp");
    let mut file = File::create(&temp).expect("create baseline file");
    file.write_all(&bytes).expect("write baseline file");
    file.sync_all().expect("sync baseline file");
    fs::rename(&temp, dir.join("baseline.json")).expect("rename baseline file");
    File::open(dir)
        .and_then(|d| d.sync_all())
        .expect("sync directory");
    start.elapsed()
}

async fn fill(registry: &Arc<FileRegistry>, pods: usize, round: &'static str) {
    let adds: Vec<_> = (0..pods)
        .map(|i| {
            let registry = Arc::clone(registry);
            tokio::spawn(async move { registry.add(record(i, round)).await })
        })
        .collect();
    for add in adds {
        assert_eq!(add.await.expect("task").expect("add"), Outcome::Added);
    }
}

/// Spawns one task per record, all at once, each removing (or departing)
/// its record; returns the writes and the time until the last one is
/// acknowledged.
async fn burst(
    registry: &Arc<FileRegistry>,
    pods: usize,
    round: &'static str,
    depart: bool,
) -> (u64, Duration) {
    let writes = registry.durable_writes();
    let start = Instant::now();
    let tasks: Vec<_> = (0..pods)
        .map(|i| {
            let registry = Arc::clone(registry);
            tokio::spawn(async move {
                let r = record(i, round);
                if depart {
                    registry.depart(r.pod_name, r.incarnation).await
                } else {
                    registry.remove(r.pod_name, r.incarnation).await
                }
            })
        })
        .collect();
    for task in tasks {
        let outcome = task.await.expect("task").expect("removal");
        assert!(matches!(outcome, Outcome::Removed { records, .. } if records.len() == 1));
    }
    (registry.durable_writes() - writes, start.elapsed())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let temp = tempfile::tempdir().expect("temporary directory");
    let dir = args
        .next()
        .map_or_else(|| temp.path().to_owned(), Into::into);
    let pods: usize = args
        .next()
        .map_or(10_000, |n| n.parse().expect("PODS is a number"));
    fs::create_dir_all(&dir).expect("state directory");

    let baseline: Vec<Record> = (0..pods).map(|i| record(i, "a")).collect();
    let mut samples: Vec<Duration> = (0..20).map(|_| raw_full_write(&dir, &baseline)).collect();
    samples.sort();
    let full_write = samples[samples.len() / 2];
    fs::remove_file(dir.join("baseline.json")).expect("remove baseline file");

    let registry = Arc::new(FileRegistry::open(&dir).expect("open registry"));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        println!("state dir: {}", dir.display());
        println!(
            "one full-file durable write of {pods} records (raw std, median of 20): {full_write:?}"
        );
        for (round, depart) in [("a", false), ("b", true)] {
            fill(&registry, pods, round).await;
            let (writes, elapsed) = burst(&registry, pods, round, depart).await;
            let what = if depart { "departures" } else { "removals" };
            println!(
                "burst of {pods} {what} on a {pods}-record registry: {writes} durable writes, \
                 {elapsed:?} ({:.1} full-file writes)",
                elapsed.as_secs_f64() / full_write.as_secs_f64()
            );
        }
    });
}
