//! Item 7: end to end over persistent connections, as `podctl listen`
//! runs. A burst of `turn_ended` events (1,000,000 in the full plan) is
//! written over 8 persistent Unix-socket connections, one per child, each
//! connection carrying its own child's events.
//!
//! - **Ours:** a real `Listener` (peer check, framing, decode) and
//!   `spawn_endpoint` (validate, lane, apply, render) over a parent with a
//!   `FileRegistry` and a `FileStore` table with `/proc` liveness, its
//!   defaults (reconcile at start). The sink is podctl's: a channel to a
//!   writer thread that writes to the write end of an OS pipe as
//!   `podctl listen`'s `print_lines` writes to stdout (every line queued
//!   goes into a 64 KiB `BufWriter`, flushed as soon as the queue is
//!   empty, so no line waits for a later one); a drain thread reads the
//!   pipe and counts lines. The time runs until the last line has come out
//!   of the pipe.
//! - **Baseline:** a bare tokio `UnixListener` that reads lines from the
//!   same connections and `serde_json`-decodes each into
//!   `pod_protocol::Method`, nothing else.
//!
//! The senders are the same code, writing the same pre-encoded bytes, in
//! both cases.
//!
//! Two more variants of ours, without goals, say where the time goes: a
//! printer that writes every line already waiting in one `write` of at
//! most 60 KiB, without a `BufWriter` (podctl's way by other means), and a
//! sink that only counts (the listener and the endpoint alone).

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use pod_events::{spawn_endpoint, EndpointConfig, Notification, Parent, SocketProbe};
use pod_protocol::{Method, PodEvent};
use pod_registry::FileRegistry;
use pod_scope_lock::{FileStore, ScopeTable};
use pod_transport::{ListenConfig, Listener};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::counter::{Counter, CountingSink};
use crate::mix::pod;
use crate::report::median;
use crate::Plan;

/// Decoded lines counted locally before touching the shared counter.
const COUNT_BATCH: usize = 1024;

/// The bytes each connection sends: its child's `turn_ended` events.
fn streams(events: usize, connections: usize) -> Vec<Arc<Vec<u8>>> {
    (0..connections)
        .map(|k| {
            let count = events / connections + usize::from(k < events % connections);
            let frame = pod_protocol::encode(&Method::PodEvent(PodEvent::TurnEnded {
                pod_name: format!("c{k}"),
                incarnation: Some(format!("c{k:031x}")),
            }));
            Arc::new(frame.repeat(count))
        })
        .collect()
}

/// Where the endpoint's rendered lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Output {
    /// podctl listen's printer: a `BufWriter`, flushed when the queue is
    /// empty.
    Podctl,
    /// One `write` of every line waiting when the printer gets to run.
    PipeBatched,
    /// No pipe: the sink counts (what listener and endpoint cost alone).
    Counted,
}

const OUTPUTS: [Output; 3] = [Output::Podctl, Output::PipeBatched, Output::Counted];

/// Events per second, medians over the plan's runs after a warm-up run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Figures {
    /// Ours, podctl listen's printer.
    pub(crate) per_line: f64,
    /// Ours, a printer that writes the lines waiting in one write.
    pub(crate) batched: f64,
    /// Ours, a sink that only counts.
    pub(crate) counted: f64,
    /// The bare reader and decoder.
    pub(crate) raw: f64,
}

/// Measures item 7 in `dir`.
pub(crate) fn measure(plan: &Plan, dir: &Path) -> Result<Figures> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let streams = streams(plan.e2e_events, plan.e2e_connections.max(1));
    let total: usize = streams
        .iter()
        .map(|s| s.iter().filter(|&&b| b == b'\n').count())
        .sum();
    let rate = |d: Duration| total as f64 / d.as_secs_f64();
    let mut ours: [Vec<f64>; 3] = Default::default();
    let mut raw = Vec::new();
    for run in 0..=plan.e2e_runs {
        for (samples, output) in ours.iter_mut().zip(OUTPUTS) {
            let dir = dir.join(format!("e2e-{output:?}-{run}"));
            let o = runtime.block_on(ours_run(&dir, &streams, total, output))?;
            if run > 0 {
                samples.push(rate(o));
            }
        }
        let path = dir.join(format!("e2e-raw-{run}.sock"));
        let r = runtime.block_on(raw_run(&path, &streams, total))?;
        if run > 0 {
            raw.push(rate(r));
        }
    }
    let [per_line, batched, counted] = ours.map(median);
    Ok(Figures {
        per_line,
        batched,
        counted,
        raw: median(raw),
    })
}

/// One connection per stream, all writing at once; returns when every
/// byte is written and each connection's write side is shut.
async fn send_all(path: &Path, streams: &[Arc<Vec<u8>>]) -> Result<()> {
    let tasks: Vec<_> = streams
        .iter()
        .map(|bytes| {
            let (path, bytes) = (path.to_owned(), Arc::clone(bytes));
            tokio::spawn(async move {
                let mut stream = UnixStream::connect(&path).await?;
                stream.write_all(&bytes).await?;
                stream.shutdown().await
            })
        })
        .collect();
    for task in tasks {
        task.await?.context("sending a stream")?;
    }
    Ok(())
}

async fn ours_run(
    dir: &Path,
    streams: &[Arc<Vec<u8>>],
    total: usize,
    output: Output,
) -> Result<Duration> {
    let state = dir.join("state");
    std::fs::create_dir_all(&state)?;
    let registry = FileRegistry::open(&state)?;
    let scopes = ScopeTable::with_proc_liveness(FileStore::new(dir.join("scope.lock")));
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry,
        scopes,
        SocketProbe::default(),
    ));
    let path = dir.join("root.sock");
    let listener = Listener::bind(&path, ListenConfig::default()).await?;

    let counter = Counter::new(total);
    let config = EndpointConfig::default();
    let (endpoint, threads) = if output == Output::Counted {
        let sink = CountingSink(Arc::clone(&counter));
        (spawn_endpoint(parent, listener, sink, config), None)
    } else {
        let (reader, writer) = std::io::pipe().context("creating the output pipe")?;
        let drain = {
            let counter = Arc::clone(&counter);
            std::thread::spawn(move || drain_pipe(reader, &counter))
        };
        let (sink, lines) = mpsc::unbounded_channel::<Notification>();
        let printer = std::thread::spawn(move || match output {
            Output::Podctl => print_like_podctl(lines, writer),
            _ => print_lines(lines, writer),
        });
        (
            spawn_endpoint(parent, listener, sink, config),
            Some((printer, drain)),
        )
    };

    let started = Instant::now();
    send_all(&path, streams).await?;
    counter.wait().await?;
    let elapsed = started.elapsed();
    let stats = endpoint.stop().await;
    ensure!(
        stats.applied == total as u64 && stats.failures == 0,
        "endpoint: {stats:?}"
    );
    // The endpoint dropped the sink: the printer ends, closing the pipe,
    // and the drain reads to its end.
    if let Some((printer, drain)) = threads {
        printer
            .join()
            .map_err(|_| anyhow::anyhow!("the printer thread panicked"))??;
        drain
            .join()
            .map_err(|_| anyhow::anyhow!("the drain thread panicked"))??;
    }
    std::fs::remove_dir_all(dir)?;
    Ok(elapsed)
}

/// `podctl listen`'s output thread (`print_lines` in
/// `pod-events/src/bin/podctl/listen.rs`), writing to a pipe instead of
/// stdout: every line queued goes into the buffer, which is flushed as
/// soon as the queue is empty (or when it fills).
fn print_like_podctl(
    mut lines: mpsc::UnboundedReceiver<Notification>,
    out: std::io::PipeWriter,
) -> Result<()> {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
    while let Some(first) = lines.blocking_recv() {
        let mut next = Some(first);
        while let Some(note) = next.take().or_else(|| lines.try_recv().ok()) {
            writeln!(out, "{}", note.line).context("writing to the pipe")?;
        }
        out.flush().context("writing to the pipe")?;
    }
    Ok(())
}

/// Row 7b's printer: the line that arrives and the lines already waiting
/// behind it, up to 60 KiB, in one `write` (each line still leaves as soon
/// as the printer is free).
fn print_lines(
    mut lines: mpsc::UnboundedReceiver<Notification>,
    mut out: std::io::PipeWriter,
) -> Result<()> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let push = |buf: &mut Vec<u8>, note: Notification| {
        buf.extend_from_slice(note.line.as_bytes());
        buf.push(b'\n');
    };
    while let Some(note) = lines.blocking_recv() {
        buf.clear();
        push(&mut buf, note);
        while buf.len() < 60 * 1024 {
            match lines.try_recv() {
                Ok(note) => push(&mut buf, note),
                Err(_) => break,
            }
        }
        out.write_all(&buf).context("writing to the pipe")?;
    }
    Ok(())
}

/// The pipe's reader: counts lines until the pipe is closed.
fn drain_pipe(mut pipe: std::io::PipeReader, counter: &Counter) -> Result<()> {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = pipe.read(&mut buf).context("reading the pipe")?;
        if n == 0 {
            return Ok(());
        }
        counter.add(buf[..n].iter().filter(|&&b| b == b'\n').count());
    }
}

async fn raw_run(path: &Path, streams: &[Arc<Vec<u8>>], total: usize) -> Result<Duration> {
    let listener = UnixListener::bind(path)?;
    let counter = Counter::new(total);
    let acceptor = {
        let counter = Arc::clone(&counter);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(decode_lines(stream, Arc::clone(&counter)));
            }
        })
    };
    let started = Instant::now();
    send_all(path, streams).await?;
    counter.wait().await?;
    let elapsed = started.elapsed();
    acceptor.abort();
    let _ = acceptor.await;
    std::fs::remove_file(path)?;
    Ok(elapsed)
}

/// The bare receiver of one connection: split lines, decode each.
async fn decode_lines(stream: UnixStream, counter: Arc<Counter>) {
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::with_capacity(256);
    let mut decoded = 0;
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        if serde_json::from_slice::<Method>(&line).is_ok() {
            decoded += 1;
        }
        if decoded == COUNT_BATCH {
            counter.add(decoded);
            decoded = 0;
        }
    }
    counter.add(decoded);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_carry_every_event_once_each_from_its_own_child() {
        let streams = streams(10, 3);
        let lines: Vec<Vec<&[u8]>> = streams
            .iter()
            .map(|s| s.split(|&b| b == b'\n').filter(|l| !l.is_empty()).collect())
            .collect();
        assert_eq!(lines.iter().map(Vec::len).collect::<Vec<_>>(), [4, 3, 3]);
        for (k, stream) in lines.iter().enumerate() {
            for line in stream {
                let Ok(Method::PodEvent(event)) = pod_protocol::decode(line) else {
                    panic!("not an event: {line:?}");
                };
                assert_eq!(event.subject(), format!("c{k}"));
            }
        }
    }
}
