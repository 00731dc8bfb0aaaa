//! Quick local measurement of connect-per-event delivery: events/s with 1
//! and 64 concurrent senders, for this crate and for a raw baseline doing
//! the same syscalls (connect, write, close; accept, read to end) with no
//! library around them.
//!
//! Run it in release mode: `cargo run --release -p pod-transport --example
//! throughput [EVENTS]` (default 20000 events per measurement).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pod_transport::{ListenConfig, Listener, Method, MethodSender, MethodSource, UnixSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let events: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 20_000,
    };
    let dir = tempfile::tempdir()?;
    println!("{events} events per run, connect-per-event");
    println!(
        "{:>8} {:>14} {:>14} {:>7}",
        "senders", "ours ev/s", "raw ev/s", "ratio"
    );
    for senders in [1, 64] {
        let path = dir.path().join(format!("ours-{senders}.sock"));
        let ours = rate(events, measure_ours(&path, events, senders).await?);
        let path = dir.path().join(format!("raw-{senders}.sock"));
        let raw = rate(events, measure_raw(&path, events, senders).await?);
        println!("{senders:>8} {ours:>14.0} {raw:>14.0} {:>7.2}", ours / raw);
    }
    Ok(())
}

fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

/// Splits `events` among `senders` tasks, each sending its share in turn.
fn shares(events: usize, senders: usize) -> impl Iterator<Item = usize> {
    (0..senders).map(move |i| events / senders + usize::from(i < events % senders))
}

async fn measure_ours(
    path: &Path,
    events: usize,
    senders: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut listener = Listener::bind(path, ListenConfig::default()).await?;
    let sender = Arc::new(UnixSender::default());
    let method = Method::notify("benchmark event");
    let start = Instant::now();
    let tasks: Vec<_> = shares(events, senders)
        .map(|share| {
            let sender = Arc::clone(&sender);
            let path = path.to_owned();
            let method = method.clone();
            tokio::spawn(async move {
                for _ in 0..share {
                    sender.send(&path, &method).await?;
                }
                Ok::<_, pod_transport::SendError>(())
            })
        })
        .collect();
    for _ in 0..events {
        let received = listener.recv().await.ok_or("listener closed early")?;
        received.item?;
    }
    let elapsed = start.elapsed();
    for task in tasks {
        task.await??;
    }
    listener.shutdown().await;
    Ok(elapsed)
}

async fn measure_raw(
    path: &Path,
    events: usize,
    senders: usize,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let listener = UnixListener::bind(path)?;
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1024);
    let acceptor = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut frame = Vec::new();
                if stream.read_to_end(&mut frame).await.is_ok() {
                    let _ = tx.send(frame).await;
                }
            });
        }
    });
    let frame = pod_protocol::encode(&Method::notify("benchmark event"));
    let start = Instant::now();
    let tasks: Vec<_> = shares(events, senders)
        .map(|share| {
            let path = path.to_owned();
            let frame = frame.clone();
            tokio::spawn(async move {
                for _ in 0..share {
                    let mut stream = UnixStream::connect(&path).await?;
                    stream.write_all(&frame).await?;
                }
                Ok::<_, std::io::Error>(())
            })
        })
        .collect();
    for _ in 0..events {
        rx.recv().await.ok_or("raw listener closed early")?;
    }
    let elapsed = start.elapsed();
    for task in tasks {
        task.await??;
    }
    acceptor.abort();
    std::fs::remove_file(path)?;
    Ok(elapsed)
}
