//! Item 4: a burst of 10,000 `ShutDown`s against a 10,000-record
//! `FileRegistry`, through `Parent::apply` (one task per event, all at
//! once) and through the receive loop (`spawn_endpoint` over an in-memory
//! source, with its default bound on events in flight and with
//! [`SMALL_IN_FLIGHT`]: events in flight are what one group commit can
//! carry). The scope table is in memory and
//! empty, so the registry's durable writes are what is timed. Baseline:
//! one durable atomic write of the full 10,000-record file with plain std
//! calls (serialize, write a temporary file, fsync, rename, fsync the
//! directory).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pod_events::{spawn_endpoint, EndpointConfig, FakeReachability, Parent};
use pod_protocol::{Method, PodEvent, ScopeRule};
use pod_registry::{FileRegistry, Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::ScopeTable;
use pod_transport::testing::MemoryNetwork;
use pod_transport::{PeerCred, UnixSender};

use crate::counter::{Counter, CountingSink};
use crate::mix::{pod, socket};
use crate::report::{median, ms};
use crate::Plan;

/// Records in the registry, and `ShutDown`s in the burst.
pub(crate) const PODS: usize = 10_000;

/// The endpoint's `max_in_flight` in the last variant.
pub(crate) const SMALL_IN_FLIGHT: usize = 256;

type FileParent = Parent<FileRegistry, MemoryStore, FakeLiveness, UnixSender, FakeReachability>;

/// One figure of the burst: medians of its time and of its durable writes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Burst {
    pub(crate) millis: f64,
    pub(crate) writes: f64,
}

/// What item 4 measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// Through `Parent::apply`, every event applied concurrently.
    pub(crate) apply: Burst,
    /// Through `spawn_endpoint` with its defaults.
    pub(crate) endpoint: Burst,
    /// Through `spawn_endpoint` with `max_in_flight(SMALL_IN_FLIGHT)`.
    pub(crate) small_in_flight: Burst,
    /// One full-file durable write, in milliseconds.
    pub(crate) full_write_millis: f64,
}

fn record(i: usize) -> Record {
    let name = format!("w{i}");
    Record {
        socket_path: socket(&name),
        scope_delegated: vec![ScopeRule::write(format!("/srv/work/{name}"))],
        callback_address: socket("root"),
        incarnation: Some(format!("{i:032x}")),
        pod_name: pod(&name),
    }
}

fn shutdown(i: usize) -> PodEvent {
    PodEvent::ShutDown {
        pod_name: format!("w{i}"),
        incarnation: Some(format!("{i:032x}")),
    }
}

/// One durable full-file write without the library.
fn raw_full_write(dir: &Path, records: &[Record]) -> Result<Duration> {
    let started = Instant::now();
    let bytes = serde_json::to_vec(records)?;
    let temp = dir.join("baseline.json.tmp");
    let mut file = File::create(&temp)?;
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temp, dir.join("baseline.json"))?;
    File::open(dir)?.sync_all()?;
    Ok(started.elapsed())
}

/// A fresh state directory whose registry file holds every record, and
/// a parent over it.
fn prepare(dir: PathBuf, records: &[Record]) -> Result<Arc<FileParent>> {
    fs::create_dir_all(&dir)?;
    fs::write(dir.join("spawned_pods.json"), serde_json::to_vec(records)?)?;
    let registry = FileRegistry::open(&dir)?;
    let loaded = registry.read(|state| state.len());
    ensure!(loaded == PODS, "loaded {loaded} records, expected {PODS}");
    let scopes = ScopeTable::new(MemoryStore::new(), FakeLiveness::new());
    Ok(Arc::new(Parent::new(
        pod("root"),
        registry,
        scopes,
        FakeReachability::new(),
    )))
}

async fn via_apply(parent: Arc<FileParent>) -> Result<(u64, Duration)> {
    let writes = parent.registry().durable_writes();
    let started = Instant::now();
    let tasks: Vec<_> = (0..PODS)
        .map(|i| {
            let parent = Arc::clone(&parent);
            tokio::spawn(async move { parent.apply(&shutdown(i)).await })
        })
        .collect();
    for task in tasks {
        let effects = task.await?;
        ensure!(
            effects.removed.len() == 1 && effects.failures == 0,
            "{effects:?}"
        );
    }
    let elapsed = started.elapsed();
    finish(&parent)?;
    Ok((parent.registry().durable_writes() - writes, elapsed))
}

async fn via_endpoint(parent: Arc<FileParent>, config: EndpointConfig) -> Result<(u64, Duration)> {
    let net = MemoryNetwork::new();
    let source = net.bind(socket("root"));
    let peer = PeerCred::current();
    for i in 0..PODS {
        source.inject(peer, Ok(Method::PodEvent(shutdown(i))));
    }
    let counter = Counter::new(PODS);
    let writes = parent.registry().durable_writes();
    let started = Instant::now();
    let endpoint = spawn_endpoint(
        Arc::clone(&parent),
        source,
        CountingSink(counter.clone()),
        config.reconcile_every(None),
    );
    counter.wait().await?;
    let elapsed = started.elapsed();
    let stats = endpoint.stop().await;
    ensure!(
        stats.applied == PODS as u64 && stats.failures == 0,
        "{stats:?}"
    );
    finish(&parent)?;
    Ok((parent.registry().durable_writes() - writes, elapsed))
}

fn finish(parent: &FileParent) -> Result<()> {
    let left = parent.registry().read(|state| state.len());
    ensure!(left == 0, "{left} records left after the burst");
    Ok(())
}

/// Measures item 4 in `dir` (use the filesystem you care about: fsync
/// costs differ).
pub(crate) fn measure(plan: &Plan, dir: &Path) -> Result<Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let records: Vec<Record> = (0..PODS).map(record).collect();
    let mut full = Vec::new();
    let (mut apply, mut endpoint, mut small) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..=plan.registry_runs {
        for _ in 0..3 {
            full.push(raw_full_write(dir, &records)?);
        }
        let parent = prepare(dir.join(format!("apply-{run}")), &records)?;
        let a = runtime.block_on(via_apply(parent))?;
        let parent = prepare(dir.join(format!("endpoint-{run}")), &records)?;
        let e = runtime.block_on(via_endpoint(parent, EndpointConfig::default()))?;
        let parent = prepare(dir.join(format!("small-{run}")), &records)?;
        let config = EndpointConfig::default().max_in_flight(SMALL_IN_FLIGHT);
        let m = runtime.block_on(via_endpoint(parent, config))?;
        if run > 0 {
            apply.push(a);
            endpoint.push(e);
            small.push(m);
        }
    }
    let burst = |samples: Vec<(u64, Duration)>| Burst {
        millis: median(samples.iter().map(|s| ms(s.1)).collect()),
        writes: median(samples.iter().map(|s| s.0 as f64).collect()),
    };
    Ok(Figures {
        apply: burst(apply),
        endpoint: burst(endpoint),
        small_in_flight: burst(small),
        full_write_millis: median(full.into_iter().map(ms).collect()),
    })
}
