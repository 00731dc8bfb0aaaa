//! Item 4: the durable state as users run it. The parent `root` has a
//! file-backed scope table (`FileStore`, `/proc` liveness) and a
//! `FileRegistry`. The table holds the root, its spawners (`c<k>`, 100 in
//! the full plan) and their children (`g<i>`, 10,000): 10,101 allocations.
//! Every allocation records this process's pid and start time, so every
//! liveness probe reads a live process's `/proc` entry and answers "alive",
//! which is the scenario: the pods are running until they report.
//!
//! Two bursts, each through `Parent::apply` (one task per event, all at
//! once, as the endpoint's lanes would run them) and through
//! `spawn_endpoint` (over an in-memory source holding the whole burst):
//!
//! - shutdowns: the registry holds the spawners' and the grandchildren's
//!   records, and every grandchild reports `ShutDown`: each removes a
//!   record and releases an allocation. Figures: the time, next to one
//!   durable write of the whole table with plain std calls; the durable
//!   writes of the registry and of the table.
//! - registrations: the grandchildren's allocations exist (their spawners
//!   delegated them) but their records do not, and every spawner reports
//!   `ScopeSubDelegated` for each: each registers a record after checking
//!   the grandchild is alive per the table. Figures: the time, next to one
//!   plain read and parse of the table file; the full loads of the table.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pod_events::{spawn_endpoint, EndpointConfig, Parent, SocketProbe};
use pod_protocol::{Method, PodEvent, ScopeRule};
use pod_registry::{FileRegistry, Record, Registry};
use pod_scope_lock::{
    Allocation, FileStore, Liveness, ProcLiveness, ScopeTable, Table, TableStore,
};
use pod_transport::testing::MemoryNetwork;
use pod_transport::{PeerCred, UnixSender};

use crate::counter::{Counter, CountingSink};
use crate::mix::{pod, socket};
use crate::report::{median, ms};
use crate::scopes::TableFile;
use crate::Plan;

type SystemParent = Parent<FileRegistry, FileStore, ProcLiveness, UnixSender, SocketProbe>;

/// What the table's store did, from `FileStore::stats`.
#[derive(Debug, Clone, Copy, Default)]
struct TableCounts {
    /// Full loads: read, parse, invariant check.
    loads: u64,
    /// Loads answered from the store's cache (the file was unchanged).
    cached_loads: u64,
    durable_writes: u64,
}

impl TableCounts {
    fn of(store: &FileStore) -> Self {
        let stats = store.stats();
        TableCounts {
            loads: stats.loads,
            cached_loads: stats.cached_loads,
            durable_writes: stats.durable_writes,
        }
    }

    fn since(self, earlier: Self) -> Self {
        TableCounts {
            loads: self.loads - earlier.loads,
            cached_loads: self.cached_loads - earlier.cached_loads,
            durable_writes: self.durable_writes - earlier.durable_writes,
        }
    }
}

/// The size of the tree.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    /// Children of the root, each spawning an equal share of the pods.
    pub(crate) spawners: usize,
    /// Grandchildren: the pods that shut down or get registered.
    pub(crate) pods: usize,
}

impl Shape {
    /// Allocations in the table: the root, the spawners, the pods.
    pub(crate) fn allocations(self) -> usize {
        1 + self.spawners + self.pods
    }

    fn spawner_of(self, i: usize) -> String {
        format!("c{}", i % self.spawners)
    }
}

fn child_incarnation(k: usize) -> String {
    format!("c{k:031x}")
}

fn pod_incarnation(i: usize) -> String {
    format!("{i:032x}")
}

fn pod_target(shape: Shape, i: usize) -> String {
    format!("/srv/work/{}/g{i}", shape.spawner_of(i))
}

/// The whole tree, every allocation held by `pid`.
fn table(shape: Shape, pid: u32, start_time: u64) -> Result<Table> {
    let allocation = |name: &str, target: String, from: Option<&str>, incarnation| Allocation {
        pod_name: pod(name),
        pid,
        start_time: Some(start_time),
        socket: socket(name),
        scope_allow: vec![ScopeRule::write(target)],
        delegated_from: from.map(pod),
        incarnation: Some(incarnation),
        pending_until: None,
        reparented: 0,
    };
    let mut all = vec![allocation("root", "/srv/work".into(), None, "f".repeat(32))];
    for k in 0..shape.spawners {
        let name = format!("c{k}");
        let target = format!("/srv/work/{name}");
        all.push(allocation(
            &name,
            target,
            Some("root"),
            child_incarnation(k),
        ));
    }
    for i in 0..shape.pods {
        let from = shape.spawner_of(i);
        all.push(allocation(
            &format!("g{i}"),
            pod_target(shape, i),
            Some(&from),
            pod_incarnation(i),
        ));
    }
    let table: Table = all.into_iter().collect();
    table
        .check_invariant()
        .map_err(|e| anyhow::anyhow!("the benchmark's table is wrong: {e}"))?;
    Ok(table)
}

/// The spawners' records, and with `pods` the grandchildren's too.
fn records(shape: Shape, pods: bool) -> Vec<Record> {
    let record = |name: String, target: String, incarnation: String| Record {
        socket_path: socket(&name),
        scope_delegated: vec![ScopeRule::write(target)],
        callback_address: socket("root"),
        incarnation: Some(incarnation),
        pod_name: pod(&name),
    };
    let mut out: Vec<Record> = (0..shape.spawners)
        .map(|k| {
            let name = format!("c{k}");
            let target = format!("/srv/work/{name}");
            record(name, target, child_incarnation(k))
        })
        .collect();
    if pods {
        out.extend((0..shape.pods).map(|i| {
            let mut r = record(format!("g{i}"), pod_target(shape, i), pod_incarnation(i));
            r.callback_address = socket(&shape.spawner_of(i));
            r
        }));
    }
    out
}

fn shutdown(i: usize) -> PodEvent {
    PodEvent::ShutDown {
        pod_name: format!("g{i}"),
        incarnation: Some(pod_incarnation(i)),
    }
}

fn sub_delegated(shape: Shape, i: usize) -> PodEvent {
    let spawner = shape.spawner_of(i);
    let name = format!("g{i}");
    PodEvent::ScopeSubDelegated {
        parent_pod: spawner.clone(),
        sub_socket: socket(&name),
        sub_pod: name,
        scope: vec![ScopeRule::write(pod_target(shape, i))],
        sub_incarnation: Some(pod_incarnation(i)),
        spawner_socket: Some(socket(&spawner)),
    }
}

/// The two bursts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Burst {
    ShutDowns,
    Registrations,
}

/// The files of one sample, and the parent over them.
struct Stage {
    dir: PathBuf,
    parent: Arc<SystemParent>,
}

impl Stage {
    fn new(dir: PathBuf, shape: Shape, table: &Table, burst: Burst) -> Result<Self> {
        let state = dir.join("state");
        fs::create_dir_all(&state)?;
        let records = records(shape, burst == Burst::ShutDowns);
        fs::write(
            state.join("spawned_pods.json"),
            serde_json::to_vec(&records)?,
        )?;
        let registry = FileRegistry::open(&state)?;
        let loaded = registry.read(|s| s.len());
        ensure!(loaded == records.len(), "loaded {loaded} records");
        let path = dir.join("scope.lock");
        FileStore::new(&path).transact(|t| {
            *t = table.clone();
            Ok(())
        })?;
        let scopes = ScopeTable::with_proc_liveness(FileStore::new(path));
        let parent = Parent::new(pod("root"), registry, scopes, SocketProbe::default());
        Ok(Stage {
            dir,
            parent: Arc::new(parent),
        })
    }

    fn counts(&self) -> (u64, TableCounts) {
        (
            self.parent.registry().durable_writes(),
            TableCounts::of(self.parent.scopes().store()),
        )
    }

    /// The state every burst must leave: the spawners' records, plus the
    /// grandchildren's after registrations; the root and the spawners'
    /// allocations, plus the grandchildren's after registrations.
    fn check(&self, shape: Shape, burst: Burst) -> Result<()> {
        let left = self.parent.registry().read(|s| s.len());
        // A store of its own, so the parent's counts stay the burst's.
        let held = FileStore::new(self.dir.join("scope.lock")).read(Table::len)?;
        let (records, allocations) = match burst {
            Burst::ShutDowns => (shape.spawners, 1 + shape.spawners),
            Burst::Registrations => (shape.spawners + shape.pods, shape.allocations()),
        };
        ensure!(
            left == records && held == allocations,
            "{burst:?}: {left} records and {held} allocations left, expected {records} and {allocations}"
        );
        Ok(())
    }
}

/// What one burst cost.
#[derive(Debug, Clone, Copy)]
struct Sample {
    elapsed: Duration,
    registry_writes: u64,
    table: TableCounts,
}

/// Every event at once through `Parent::apply`, one task each.
async fn via_apply(stage: &Stage, events: Vec<PodEvent>, burst: Burst) -> Result<Sample> {
    let before = stage.counts();
    let started = Instant::now();
    let tasks: Vec<_> = events
        .into_iter()
        .map(|event| {
            let parent = Arc::clone(&stage.parent);
            tokio::spawn(async move { parent.apply(&event).await })
        })
        .collect();
    for task in tasks {
        let effects = task.await?;
        let done = match burst {
            Burst::ShutDowns => effects.removed.len() == 1 && effects.released.is_some(),
            Burst::Registrations => effects.registered && !effects.presumed_dead,
        };
        ensure!(done && effects.failures == 0, "{burst:?}: {effects:?}");
    }
    Ok(sample(stage, before, started.elapsed()))
}

/// The whole burst queued on an in-memory source, then the receive loop
/// with its defaults (reconcile off: it is not what is measured).
async fn via_endpoint(stage: &Stage, events: Vec<PodEvent>) -> Result<Sample> {
    let net = MemoryNetwork::new();
    let source = net.bind(socket("root"));
    let peer = PeerCred::current();
    let total = events.len();
    for event in events {
        source.inject(peer, Ok(Method::PodEvent(event)));
    }
    let counter = Counter::new(total);
    let before = stage.counts();
    let started = Instant::now();
    let endpoint = spawn_endpoint(
        Arc::clone(&stage.parent),
        source,
        CountingSink(counter.clone()),
        EndpointConfig::default().reconcile_every(None),
    );
    counter.wait().await?;
    let elapsed = started.elapsed();
    let stats = endpoint.stop().await;
    ensure!(
        stats.applied == total as u64 && stats.failures == 0,
        "{stats:?}"
    );
    Ok(sample(stage, before, elapsed))
}

fn sample(stage: &Stage, before: (u64, TableCounts), elapsed: Duration) -> Sample {
    let after = stage.counts();
    Sample {
        elapsed,
        registry_writes: after.0 - before.0,
        table: after.1.since(before.1),
    }
}

/// One durable write of the table without the library: serialize, write
/// a temporary file, fsync, rename, fsync the directory.
fn raw_write(dir: &Path, table: &TableFile) -> Result<Duration> {
    let started = Instant::now();
    let bytes = serde_json::to_vec(table)?;
    let temp = dir.join("raw-table.tmp");
    let mut file = File::create(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join("raw-table.json"))?;
    File::open(dir)?.sync_all()?;
    Ok(started.elapsed())
}

/// One load of the table without the library: read the file, parse it.
fn raw_load(dir: &Path) -> Result<Duration> {
    let started = Instant::now();
    let bytes = fs::read(dir.join("raw-table.json"))?;
    let table: TableFile = serde_json::from_slice(&bytes)?;
    std::hint::black_box(table);
    Ok(started.elapsed())
}

/// Medians of one way of running one burst.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) millis: f64,
    pub(crate) registry_writes: f64,
    pub(crate) table_loads: f64,
    pub(crate) table_cached_loads: f64,
    pub(crate) table_writes: f64,
}

impl Figures {
    fn of(samples: &[Sample]) -> Self {
        let m = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        Figures {
            millis: m(&|s| ms(s.elapsed)),
            registry_writes: m(&|s| s.registry_writes as f64),
            table_loads: m(&|s| s.table.loads as f64),
            table_cached_loads: m(&|s| s.table.cached_loads as f64),
            table_writes: m(&|s| s.table.durable_writes as f64),
        }
    }
}

/// What item 4 measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) shape: Shape,
    pub(crate) shutdowns_apply: Figures,
    pub(crate) shutdowns_endpoint: Figures,
    pub(crate) registrations_apply: Figures,
    pub(crate) registrations_endpoint: Figures,
    /// One plain durable write of the table, ms.
    pub(crate) raw_write_millis: f64,
    /// One plain read and parse of the table file, ms.
    pub(crate) raw_load_millis: f64,
}

/// The four samples of one run at `shape`, in `dir`.
fn one_run(
    runtime: &tokio::runtime::Runtime,
    dir: &Path,
    shape: Shape,
    table: &Table,
) -> Result<[Sample; 4]> {
    let mut out = Vec::with_capacity(4);
    for (name, burst, endpoint) in [
        ("down-apply", Burst::ShutDowns, false),
        ("down-endpoint", Burst::ShutDowns, true),
        ("reg-apply", Burst::Registrations, false),
        ("reg-endpoint", Burst::Registrations, true),
    ] {
        let stage = Stage::new(dir.join(name), shape, table, burst)?;
        let events: Vec<PodEvent> = (0..shape.pods)
            .map(|i| match burst {
                Burst::ShutDowns => shutdown(i),
                Burst::Registrations => sub_delegated(shape, i),
            })
            .collect();
        let sample = runtime.block_on(async {
            if endpoint {
                via_endpoint(&stage, events).await
            } else {
                via_apply(&stage, events, burst).await
            }
        })?;
        stage.check(shape, burst)?;
        fs::remove_dir_all(&stage.dir)?;
        out.push(sample);
    }
    Ok(out.try_into().expect("four samples"))
}

/// Measures item 4 in `dir` (use the filesystem you care about: fsync
/// costs differ).
pub(crate) fn measure(plan: &Plan, dir: &Path) -> Result<Measured> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let pid = std::process::id();
    let start_time = ProcLiveness
        .start_time(pid)
        .context("reading this process's start time from /proc")?;
    let shape = Shape {
        spawners: plan.system_spawners.max(1),
        pods: plan.system_pods,
    };
    let table = table(shape, pid, start_time)?;
    let file = TableFile {
        version: 1,
        allocations: table.allocations().cloned().collect(),
    };
    let raw_dir = dir.join("raw-table");
    fs::create_dir_all(&raw_dir)?;
    let (mut writes, mut loads) = (Vec::new(), Vec::new());
    let mut samples: [Vec<Sample>; 4] = Default::default();
    // Run 0 is the warm-up.
    for run in 0..=plan.system_runs {
        let (mut w, mut l) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            w.push(ms(raw_write(&raw_dir, &file)?));
            l.push(ms(raw_load(&raw_dir)?));
        }
        let sample = one_run(&runtime, &dir.join(format!("run-{run}")), shape, &table)?;
        if run > 0 {
            writes.extend(w);
            loads.extend(l);
            for (all, one) in samples.iter_mut().zip(sample) {
                all.push(one);
            }
        }
    }
    Ok(Measured {
        shape,
        shutdowns_apply: Figures::of(&samples[0]),
        shutdowns_endpoint: Figures::of(&samples[1]),
        registrations_apply: Figures::of(&samples[2]),
        registrations_endpoint: Figures::of(&samples[3]),
        raw_write_millis: median(writes),
        raw_load_millis: median(loads),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tree_satisfies_the_table_invariant_and_names_every_pod() {
        let shape = Shape {
            spawners: 3,
            pods: 10,
        };
        let t = table(shape, 1, 1).unwrap();
        assert_eq!(t.len(), shape.allocations());
        assert_eq!(
            t.get("g4")
                .unwrap()
                .delegated_from
                .as_ref()
                .unwrap()
                .as_str(),
            "c1"
        );
        assert_eq!(records(shape, false).len(), 3);
        assert_eq!(records(shape, true).len(), 13);
        sub_delegated(shape, 4).validate().unwrap();
    }
}
