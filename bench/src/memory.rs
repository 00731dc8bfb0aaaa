//! Item 6: peak resident memory (`VmHWM`) of an endpoint holding 10,000
//! registry records and 10,000 allocations, each measured in a child
//! process of its own (this binary, re-executed) so the peak is the
//! endpoint's, not the benchmark's.
//!
//! Ours: a `FileRegistry` loaded with 10,000 records, a `FileStore` scope
//! table of 10,000 allocations (plus the root's) with `/proc` liveness, a
//! real `Listener`, and `spawn_endpoint` with its defaults (so reconcile
//! runs at start and probes every record); then 1,000 events arrive over
//! the socket, 20 of them `ShutDown`s that rewrite both files. Baseline:
//! the same files parsed into `serde_json::Value`s and held, and a bare
//! tokio listener counting the same 1,000 lines.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use pod_events::{spawn_endpoint, EndpointConfig, Parent, SocketProbe};
use pod_protocol::{Method, PodEvent, ScopeRule};
use pod_registry::{FileRegistry, Record, Registry};
use pod_scope_lock::{
    Allocation, FileStore, Liveness, ProcLiveness, ScopeTable, Table, TableStore,
};
use pod_transport::{ListenConfig, Listener, MethodSender, UnixSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::counter::{Counter, CountingSink};
use crate::mix::{pod, socket};
use crate::report::median;
use crate::Plan;

/// Children of the endpoint: registry records and allocations.
pub(crate) const PODS: usize = 10_000;
/// Events sent to the endpoint once it is up.
const EVENTS: usize = 1_000;
/// Of which `ShutDown`s (each one rewrites the registry and the table).
const SHUTDOWNS: usize = 20;

fn incarnation(i: usize) -> String {
    format!("{i:032x}")
}

/// Writes the registry and the scope table the children load.
fn write_files(dir: &Path) -> Result<()> {
    let pid = std::process::id();
    let start_time = ProcLiveness
        .start_time(pid)
        .context("reading this process's start time")?;
    let allocation = |name: String, target: String, parent: Option<&str>, inc: String| Allocation {
        socket: socket(&name),
        pod_name: pod(&name),
        // The benchmark outlives its children, so every allocation is live.
        pid,
        start_time: Some(start_time),
        scope_allow: vec![ScopeRule::write(target)],
        delegated_from: parent.map(pod),
        incarnation: Some(inc),
        pending_until: None,
        reparented: 0,
    };
    let mut allocations = vec![allocation(
        "root".into(),
        "/srv/work".into(),
        None,
        incarnation(usize::MAX),
    )];
    let mut records = Vec::with_capacity(PODS);
    for i in 0..PODS {
        let name = format!("d{i}");
        let target = format!("/srv/work/{name}");
        allocations.push(allocation(
            name.clone(),
            target.clone(),
            Some("root"),
            incarnation(i),
        ));
        records.push(Record {
            pod_name: pod(&name),
            socket_path: socket(&name),
            scope_delegated: vec![ScopeRule::write(target)],
            callback_address: socket("root"),
            incarnation: Some(incarnation(i)),
        });
    }
    let table: Table = allocations.into_iter().collect();
    table
        .check_invariant()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    FileStore::new(dir.join("scope.lock")).transact(|t| {
        *t = table;
        Ok(())
    })?;
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    std::fs::write(
        state.join("spawned_pods.json"),
        serde_json::to_vec(&records)?,
    )?;
    Ok(())
}

/// The events sent once the endpoint is up: turns and errors of the
/// children, and the first [`SHUTDOWNS`] children shutting down.
fn events() -> Vec<Method> {
    (0..EVENTS)
        .map(|i| {
            let pod_name = format!("d{}", i % PODS);
            let incarnation = Some(incarnation(i % PODS));
            Method::PodEvent(if i < SHUTDOWNS {
                PodEvent::ShutDown {
                    pod_name,
                    incarnation,
                }
            } else if i % 10 == 0 {
                PodEvent::Errored {
                    pod_name,
                    message: "tool `shell` failed: exit status 1".into(),
                    incarnation,
                }
            } else {
                PodEvent::TurnEnded {
                    pod_name,
                    incarnation,
                }
            })
        })
        .collect()
}

/// Peak resident memory of this process, in KiB.
fn peak_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    Ok(line.trim().trim_end_matches("kB").trim().parse()?)
}

/// Peak resident MiB, (ours, baseline), medians over the runs. With
/// `one_arena`, the children run with `MALLOC_ARENA_MAX=1`: glibc then
/// serves every thread from one heap, which shows how much of the peak is
/// live data and how much is per-thread arenas holding freed memory.
pub(crate) fn measure(plan: &Plan, dir: &Path, one_arena: bool) -> Result<(f64, f64)> {
    let exe = std::env::current_exe()?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..plan.memory_runs {
        // Fresh files for each child: ours rewrites them.
        for (kind, samples) in [("ours", &mut ours), ("raw", &mut raw)] {
            let dir = dir.join(format!("memory-{kind}-{run}-{one_arena}"));
            write_files(&dir)?;
            samples.push(run_child(&exe, kind, &dir, one_arena)?);
        }
    }
    Ok((median(ours), median(raw)))
}

fn run_child(exe: &Path, kind: &str, dir: &Path, one_arena: bool) -> Result<f64> {
    let mut command = Command::new(exe);
    command.args(["--memory-child", kind]).arg(dir);
    if one_arena {
        command.env("MALLOC_ARENA_MAX", "1");
    } else {
        command.env_remove("MALLOC_ARENA_MAX");
    }
    let output = command
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !output.status.success() {
        bail!(
            "the {kind} memory child failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let stdout = String::from_utf8(output.stdout)?;
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM "))
        .with_context(|| format!("the {kind} memory child printed no VmHWM: {stdout:?}"))?
        .trim()
        .parse()?;
    Ok(kib as f64 / 1024.0)
}

/// The child's side: runs the endpoint (`ours`) or the bare baseline
/// (`raw`) over the files in `dir`, then prints `VmHWM <KiB>`.
pub(crate) fn child(kind: &str, dir: &Path) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match kind {
        "ours" => runtime.block_on(ours(dir))?,
        "raw" => runtime.block_on(raw(dir))?,
        other => bail!("unknown memory child {other:?}"),
    }
    println!("VmHWM {}", peak_kib()?);
    Ok(())
}

async fn ours(dir: &Path) -> Result<()> {
    let registry = FileRegistry::open(dir.join("state"))?;
    ensure!(registry.read(|s| s.len()) == PODS, "registry not loaded");
    let scopes = ScopeTable::with_proc_liveness(FileStore::new(dir.join("scope.lock")));
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry,
        scopes,
        SocketProbe::default(),
    ));
    let path = dir.join(format!("ours-{}.sock", std::process::id()));
    let listener = Listener::bind(&path, ListenConfig::default()).await?;
    let counter = Counter::new(EVENTS);
    let endpoint = spawn_endpoint(
        Arc::clone(&parent),
        listener,
        CountingSink(counter.clone()),
        EndpointConfig::default(),
    );
    send_all(&path, events()).await?;
    counter.wait().await?;
    // Reconcile runs at start on its own task; wait for it to finish.
    while endpoint.stats().reconciles == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let stats = endpoint.stop().await;
    ensure!(stats.failures == 0, "{stats:?}");
    let left = parent.registry().read(|s| s.len());
    ensure!(left == PODS - SHUTDOWNS, "{left} records left");
    Ok(())
}

/// 64 concurrent senders, like a busy tree.
async fn send_all(path: &Path, methods: Vec<Method>) -> Result<()> {
    let sender = Arc::new(UnixSender::default());
    let mut lanes = vec![Vec::new(); 64];
    for (i, m) in methods.into_iter().enumerate() {
        lanes[i % 64].push(m);
    }
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let (sender, path) = (Arc::clone(&sender), path.to_owned());
            tokio::spawn(async move {
                for m in lane {
                    sender.send(&path, &m).await?;
                }
                Ok::<_, pod_transport::SendError>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn raw(dir: &Path) -> Result<()> {
    let registry: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("state/spawned_pods.json"))?)?;
    let table: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("scope.lock"))?)?;
    let path = dir.join(format!("raw-{}.sock", std::process::id()));
    let listener = UnixListener::bind(&path)?;
    let counter = Counter::new(EVENTS);
    let acceptor = {
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                tokio::spawn(async move {
                    let mut bytes = Vec::new();
                    if stream.read_to_end(&mut bytes).await.is_ok() {
                        counter.add(bytes.iter().filter(|&&b| b == b'\n').count());
                    }
                });
            }
        })
    };
    let frames: Vec<Vec<u8>> = events().iter().map(pod_protocol::encode).collect();
    let mut lanes = vec![Vec::new(); 64];
    for (i, f) in frames.into_iter().enumerate() {
        lanes[i % 64].push(f);
    }
    let tasks: Vec<_> = lanes
        .into_iter()
        .map(|lane| {
            let path = path.clone();
            tokio::spawn(async move {
                for frame in lane {
                    UnixStream::connect(&path).await?.write_all(&frame).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    counter.wait().await?;
    acceptor.abort();
    std::fs::remove_file(&path)?;
    ensure!(
        registry.as_array().map(Vec::len) == Some(PODS) && table.is_object(),
        "files not loaded"
    );
    Ok(())
}
