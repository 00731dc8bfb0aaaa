//! Items 1 and 2: events over real Unix sockets, connect-per-event.
//!
//! Item 1, delivery rate. Ours: `UnixSender` -> `Listener` (peer check,
//! framing, decode) -> `spawn_endpoint` (validate, shard, apply against
//! the in-memory layers, render) -> a counting sink. Baseline: tokio
//! `UnixStream::connect` + `write_all` of the same line + close, against
//! a bare listener that reads each connection to its end and counts
//! newlines. Senders and receiver share one multi-threaded runtime (one
//! worker per core), in both cases.
//!
//! Item 2, a burst of simultaneous senders against one listener whose
//! backlog is small enough to overflow: the fraction delivered by our
//! sender (which retries while the backlog is full, within its deadline)
//! and by raw connects (which give up on the first `EAGAIN`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use pod_events::{spawn_endpoint, EndpointConfig};
use pod_protocol::Method;
use pod_transport::{ListenConfig, Listener, MethodSender, MethodSource, UnixSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::counter::{Counter, CountingSink};
use crate::mix::{Scenario, EVENTS_PER_LIFE};
use crate::report::median;
use crate::Plan;

/// The listen backlog of the burst's listener. Large enough that a burst
/// is served mostly from the backlog, small enough that 5000 raw connects
/// made at once overflow it on this machine (the default, 4096, holds
/// almost the whole burst and hides the difference).
pub(crate) const BURST_BACKLOG: u32 = 1024;

/// Senders in the burst.
pub(crate) const BURST_SENDERS: usize = 5000;

/// The lives of one run dealt out to `senders`, whole lives each, so one
/// pod's events leave one sender in order.
fn deal(lives: Vec<Vec<pod_protocol::PodEvent>>, senders: usize) -> Vec<Vec<Method>> {
    let mut plan = vec![Vec::new(); senders];
    for (i, life) in lives.into_iter().enumerate() {
        plan[i % senders].extend(life.into_iter().map(Method::PodEvent));
    }
    plan
}

/// Item 1: events per second, (ours, baseline), medians over the runs.
pub(crate) fn measure_rate(plan: &Plan, dir: &Path, senders: usize) -> Result<(f64, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let lives = plan.delivery_events.div_ceil(EVENTS_PER_LIFE);
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..=plan.runs {
        let path = dir.join(format!("ours-{senders}-{run}.sock"));
        let o = runtime.block_on(ours_rate(&path, lives, senders))?;
        let path = dir.join(format!("raw-{senders}-{run}.sock"));
        let r = runtime.block_on(raw_rate(&path, lives, senders))?;
        if run > 0 {
            ours.push(o);
            raw.push(r);
        }
    }
    Ok((median(ours), median(raw)))
}

async fn ours_rate(path: &Path, lives: usize, senders: usize) -> Result<f64> {
    // Allocated: an endpoint admits a sub-delegation only when the
    // table holds it (delegated before the timed part).
    let mut scenario = Scenario::new(true).await;
    let plan = deal(scenario.lives(lives), senders);
    let total: usize = plan.iter().map(Vec::len).sum();
    let listener = Listener::bind(path, ListenConfig::default()).await?;
    let counter = Counter::new(total);
    let config = EndpointConfig::default().reconcile_every(None);
    let endpoint = spawn_endpoint(
        scenario.parent().clone(),
        listener,
        CountingSink(counter.clone()),
        config,
    );
    let sender = Arc::new(UnixSender::default());
    let started = Instant::now();
    let tasks: Vec<_> = plan
        .into_iter()
        .map(|methods| {
            let sender = Arc::clone(&sender);
            let path = path.to_owned();
            tokio::spawn(async move {
                for method in methods {
                    sender.send(&path, &method).await?;
                }
                Ok::<_, pod_transport::SendError>(())
            })
        })
        .collect();
    counter.wait().await?;
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    let stats = endpoint.stop().await;
    ensure!(
        stats.applied == total as u64 && stats.failures == 0,
        "endpoint: {stats:?}"
    );
    Ok(total as f64 / elapsed.as_secs_f64())
}

async fn raw_rate(path: &Path, lives: usize, senders: usize) -> Result<f64> {
    let mut scenario = Scenario::new(true).await;
    let plan: Vec<Vec<Vec<u8>>> = deal(scenario.lives(lives), senders)
        .into_iter()
        .map(|methods| methods.iter().map(pod_protocol::encode).collect())
        .collect();
    let total: usize = plan.iter().map(Vec::len).sum();
    let counter = Counter::new(total);
    let acceptor = tokio::spawn(count_lines(UnixListener::bind(path)?, counter.clone()));
    let started = Instant::now();
    let tasks: Vec<_> = plan
        .into_iter()
        .map(|frames| {
            let path = path.to_owned();
            tokio::spawn(async move {
                for frame in frames {
                    let mut stream = UnixStream::connect(&path).await?;
                    stream.write_all(&frame).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    counter.wait().await?;
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    acceptor.abort();
    std::fs::remove_file(path)?;
    Ok(total as f64 / elapsed.as_secs_f64())
}

/// The bare receiver: accept, read each connection to its end, count its
/// newlines.
async fn count_lines(listener: UnixListener, counter: Arc<Counter>) {
    while let Ok((mut stream, _)) = listener.accept().await {
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            let mut bytes = Vec::with_capacity(512);
            if stream.read_to_end(&mut bytes).await.is_ok() {
                counter.add(bytes.iter().filter(|&&b| b == b'\n').count());
            }
        });
    }
}

/// Item 2: fraction of the burst delivered, (ours, raw), medians.
pub(crate) fn measure_burst(plan: &Plan, dir: &Path) -> Result<(f64, f64)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (mut ours, mut raw) = (Vec::new(), Vec::new());
    for run in 0..=plan.runs {
        let path = dir.join(format!("burst-ours-{run}.sock"));
        let o = runtime.block_on(burst(path, true))?;
        let path = dir.join(format!("burst-raw-{run}.sock"));
        let r = runtime.block_on(burst(path, false))?;
        if run > 0 {
            ours.push(o);
            raw.push(r);
        }
    }
    Ok((median(ours), median(raw)))
}

/// One burst: every sender is spawned and waits for the same signal, then
/// sends one event. Returns the fraction the listener received.
async fn burst(path: PathBuf, retry: bool) -> Result<f64> {
    let config = ListenConfig {
        backlog: BURST_BACKLOG,
        ..ListenConfig::default()
    };
    let mut listener = Listener::bind(&path, config).await?;
    let received = Counter::new(BURST_SENDERS);
    let receiver = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(item) = listener.recv().await {
                if item.item.is_ok() {
                    received.add(1);
                }
            }
        })
    };
    let (go, ready) = watch::channel(false);
    let method = Method::PodEvent(pod_protocol::PodEvent::TurnEnded {
        pod_name: "burst".into(),
        incarnation: None,
    });
    let frame = pod_protocol::encode(&method);
    let sender = Arc::new(UnixSender::default());
    let tasks: Vec<_> = (0..BURST_SENDERS)
        .map(|_| {
            let (path, method, frame, sender, mut ready) = (
                path.clone(),
                method.clone(),
                frame.clone(),
                sender.clone(),
                ready.clone(),
            );
            tokio::spawn(async move {
                let _ = ready.wait_for(|go| *go).await;
                if retry {
                    sender.send(&path, &method).await.is_ok()
                } else {
                    raw_send(&path, &frame).await.is_ok()
                }
            })
        })
        .collect();
    // Let every sender reach the gate before opening it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    go.send(true)?;
    let mut sent = 0;
    for task in tasks {
        sent += usize::from(task.await?);
    }
    // Whatever was accepted into the backlog is read eventually; wait for
    // it (bounded: a connection accepted but never read counts as lost).
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.get() < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    receiver.abort();
    let _ = receiver.await;
    Ok(received.get() as f64 / BURST_SENDERS as f64)
}

async fn raw_send(path: &Path, frame: &[u8]) -> std::io::Result<()> {
    let mut stream = UnixStream::connect(path).await?;
    stream.write_all(frame).await
}
