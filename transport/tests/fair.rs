//! Fair service: peers holding every connection slot do not starve a new
//! sender, and eviction spares connections that made progress recently.

use std::time::Duration;

use pod_transport::{ListenConfig, Listener, MethodSender};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::{listen_with, notify, recv_method, sender, socket_path};

const SLOTS: usize = 8;

/// `SLOTS` connections, each admitted and past one complete frame.
async fn hold_every_slot(listener: &mut Listener, path: &std::path::Path) -> Vec<UnixStream> {
    let mut held = Vec::new();
    for i in 0..SLOTS {
        let mut stream = UnixStream::connect(path).await.unwrap();
        let frame = pod_protocol::encode(&notify(format!("hold {i}")));
        stream.write_all(&frame).await.unwrap();
        // Received in order: this one is admitted and its frame counted.
        assert_eq!(recv_method(listener).await, notify(format!("hold {i}")));
        held.push(stream);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_peers_on_every_slot_do_not_starve_a_new_sender() {
    let (_dir, path) = socket_path();
    let config = ListenConfig {
        max_connections: SLOTS,
        // Nothing times out during the test: only eviction can make room.
        idle_timeout: Duration::from_secs(3600),
        evict_after: Duration::from_millis(100),
        ..ListenConfig::default()
    };
    let mut listener = listen_with(&path, config).await;
    let held = hold_every_slot(&mut listener, &path).await;

    // Every peer keeps trickling whitespace (a frame that never ends)
    // until told to stop, then finishes its frame, if still connected.
    let stop = CancellationToken::new();
    let tricklers: Vec<_> = held
        .into_iter()
        .enumerate()
        .map(|(i, mut stream)| {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    if stream.write_all(b" ").await.is_err() {
                        return (i, stream);
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let rest = pod_protocol::encode(&notify(format!("later {i}")));
                let _ = stream.write_all(&rest).await;
                (i, stream)
            })
        })
        .collect();

    // A fresh sender is served while every trickler is still connected.
    sender().send(&path, &notify("fresh")).await.unwrap();
    // A deadline, not a timing assertion: without eviction the fresh
    // event waits for the tricklers, which never stop.
    let fresh = tokio::time::timeout(Duration::from_secs(120), recv_method(&mut listener))
        .await
        .expect("the fresh sender is served while every slot is held");
    assert_eq!(fresh, notify("fresh"));
    let stats = listener.stats();
    assert_eq!((stats.evictions, stats.idle_timeouts), (1, 0), "{stats:?}");

    // The evicted one is the one that completed a frame longest ago (the
    // first); the others are still served.
    stop.cancel();
    let mut later = Vec::new();
    for _ in 1..SLOTS {
        match recv_method(&mut listener).await {
            pod_transport::Method::Notify { message, .. } => later.push(message),
            other => panic!("unexpected {other:?}"),
        }
    }
    later.sort();
    let expected: Vec<String> = (1..SLOTS).map(|i| format!("later {i}")).collect();
    assert_eq!(later, expected);
    for trickler in tricklers {
        let (i, mut stream) = trickler.await.unwrap();
        if i == 0 {
            // The evicted peer's connection is closed by the listener.
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf))
                .await
                .expect("the evicted connection is closed");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_made_progress_recently_are_not_evicted() {
    let (_dir, path) = socket_path();
    let config = ListenConfig {
        max_connections: SLOTS,
        idle_timeout: Duration::from_secs(3600),
        // Never evictable during the test.
        evict_after: Duration::from_secs(3600),
        ..ListenConfig::default()
    };
    let mut listener = listen_with(&path, config).await;
    let held = hold_every_slot(&mut listener, &path).await;
    // The send lands in the backlog: it waits for a slot to free.
    sender().send(&path, &notify("waits")).await.unwrap();
    drop(held);
    assert_eq!(recv_method(&mut listener).await, notify("waits"));
    assert_eq!(listener.stats().evictions, 0, "{:?}", listener.stats());
}
