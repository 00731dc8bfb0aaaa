//! The listener over real sockets: delivery, bounds, stale and live
//! sockets, shutdown.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener as StdListener;
use std::sync::Arc;
use std::time::Duration;

use pod_transport::{
    ListenConfig, ListenError, Listener, Method, MethodSender, MethodSource, ReceiveError,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::Barrier;

use crate::{
    check_own_peer, every_method, listen, listen_with, notify, recv_method, sender, socket_path,
};

/// Sends `count` distinct notes from `count` concurrent tasks and checks
/// that every one is delivered exactly once.
async fn concurrent_senders(count: usize, config: ListenConfig) {
    let (_dir, path) = socket_path();
    let mut listener = listen_with(&path, config).await;
    let consumer = tokio::spawn(async move {
        let mut messages = Vec::with_capacity(count);
        while messages.len() < count {
            match recv_method(&mut listener).await {
                Method::Notify { message, .. } => messages.push(message),
                other => panic!("unexpected {other:?}"),
            }
        }
        (listener, messages)
    });
    let sender = sender();
    // All senders start together, as a burst of processes would: without
    // the barrier, the first ones are done before the last ones are spawned.
    let start = Arc::new(Barrier::new(count + 1));
    let senders: Vec<_> = (0..count)
        .map(|i| {
            let sender = sender.clone();
            let path = path.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                sender.send(&path, &notify(i.to_string())).await
            })
        })
        .collect();
    start.wait().await;
    for (i, task) in senders.into_iter().enumerate() {
        if let Err(err) = task.await.unwrap() {
            panic!("sender {i} failed: {err}");
        }
    }
    // Every send succeeded, so every note is on its way to the consumer.
    let (listener, messages) = consumer.await.unwrap();
    let distinct: HashSet<String> = messages.into_iter().collect();
    let expected: HashSet<String> = (0..count).map(|i| i.to_string()).collect();
    assert_eq!(distinct, expected);
    let stats = listener.stats();
    assert_eq!(stats.frames, count as u64);
    assert_eq!(stats.connections, count as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_makes_the_round_trip() {
    let (_dir, path) = socket_path();
    let mut listener = listen(&path).await;
    let sender = sender();
    for method in every_method() {
        sender.send(&path, &method).await.unwrap();
        assert_eq!(recv_method(&mut listener).await, method);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_senders_are_all_delivered() {
    concurrent_senders(64, ListenConfig::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_five_thousand_senders_is_all_delivered() {
    // The default backlog (4096) absorbs most of a burst of 5000 here; a
    // small one makes sure the burst overflows it and senders must retry.
    let config = ListenConfig {
        backlog: 128,
        ..ListenConfig::default()
    };
    concurrent_senders(5000, config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_frame_closes_only_its_connection() {
    let (_dir, path) = socket_path();
    let config = ListenConfig {
        max_frame_len: 1024,
        ..ListenConfig::default()
    };
    let mut listener = listen_with(&path, config).await;
    let mut bystander = UnixStream::connect(&path).await.unwrap();
    let mut offender = UnixStream::connect(&path).await.unwrap();
    // The listener may close the connection before all of it is written.
    let _ = offender.write_all(&[b'x'; 4096]).await;

    let received = listener.recv().await.unwrap();
    check_own_peer(&received);
    assert!(
        matches!(received.item, Err(ReceiveError::FrameTooLong(ref err)) if err.max == 1024),
        "{:?}",
        received.item
    );
    // The offender's connection is closed: reading ends (or is reset).
    let mut buf = [0u8; 16];
    assert!(matches!(offender.read(&mut buf).await, Ok(0) | Err(_)));

    bystander
        .write_all(&pod_protocol::encode(&notify("still here")))
        .await
        .unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("still here"));
    sender().send(&path, &notify("new sender")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("new sender"));
    assert_eq!(listener.stats().too_long, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_line_does_not_hide_the_next_one() {
    let (_dir, path) = socket_path();
    let mut listener = listen(&path).await;
    let mut stream = UnixStream::connect(&path).await.unwrap();
    let mut bytes = b"garbage\n{\"method\":\"launch\"}\n".to_vec();
    bytes.extend(pod_protocol::encode(&Method::Shutdown));
    stream.write_all(&bytes).await.unwrap();
    drop(stream);

    for expected in ["not JSON", "unknown method"] {
        let received = listener.recv().await.unwrap();
        check_own_peer(&received);
        match received.item {
            Err(ReceiveError::Decode(err)) => {
                assert!(err.to_string().contains(expected), "{err}")
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }
    assert_eq!(recv_method(&mut listener).await, Method::Shutdown);
    let stats = listener.stats();
    assert_eq!((stats.decode_errors, stats.frames), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_idle_connections_do_not_stop_a_new_sender() {
    let (_dir, path) = socket_path();
    let mut listener = listen(&path).await;
    let mut idle = Vec::new();
    for _ in 0..200 {
        idle.push(UnixStream::connect(&path).await.unwrap());
    }
    sender().send(&path, &notify("served")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("served"));
    // Connections are accepted in order: the idle ones were all admitted
    // before the sender's, and none was closed meanwhile.
    let stats = listener.stats();
    assert_eq!(
        (stats.connections, stats.idle_timeouts),
        (201, 0),
        "{stats:?}"
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_free_their_slots() {
    let (_dir, path) = socket_path();
    let config = ListenConfig {
        max_connections: 4,
        idle_timeout: Duration::from_millis(200),
        // Only idle timeouts make room here, not eviction.
        evict_after: Duration::from_secs(3600),
        ..ListenConfig::default()
    };
    let mut listener = listen_with(&path, config).await;
    let mut idle = Vec::new();
    for _ in 0..8 {
        idle.push(UnixStream::connect(&path).await.unwrap());
    }
    sender().send(&path, &notify("ninth")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("ninth"));
    // Connections are accepted in order, four at a time: the ninth is
    // served only after at least five silent ones were closed.
    assert!(
        listener.stats().idle_timeouts >= 5,
        "{:?}",
        listener.stats()
    );
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let (_dir, path) = socket_path();
    drop(StdListener::bind(&path).unwrap());
    assert!(path.exists(), "std leaves the socket file behind");
    let mut listener = listen(&path).await;
    sender().send(&path, &notify("after stale")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("after stale"));
}

#[tokio::test]
async fn a_live_socket_is_never_unlinked() {
    let (_dir, path) = socket_path();
    let live = StdListener::bind(&path).unwrap();
    let inode = std::fs::metadata(&path).unwrap().ino();
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::InUse { .. }), "{err}");
    assert!(
        err.to_string().contains("another listener is live"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().ino(),
        inode,
        "same socket file"
    );
    // The live listener still gets new connections.
    let client = std::os::unix::net::UnixStream::connect(&path).unwrap();
    drop(client);
    live.accept().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_leaves_the_first_serving() {
    let (_dir, path) = socket_path();
    let mut first = listen(&path).await;
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::Locked { .. }), "{err}");
    sender().send(&path, &notify("to first")).await.unwrap();
    assert_eq!(recv_method(&mut first).await, notify("to first"));
}

#[tokio::test]
async fn a_file_that_is_not_a_socket_is_left_alone() {
    let (_dir, path) = socket_path();
    std::fs::write(&path, b"precious").unwrap();
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"precious");
}

#[tokio::test]
async fn bad_paths_and_configs_are_typed_errors() {
    let (dir, _) = socket_path();
    let long = dir.path().join("s".repeat(120));
    let err = Listener::bind(&long, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::PathTooLong { .. }), "{err}");
    let config = ListenConfig {
        queue: 0,
        ..ListenConfig::default()
    };
    let err = Listener::bind(dir.path().join("sock"), config)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ListenError::InvalidConfig { field: "queue" }),
        "{err}"
    );
}

#[tokio::test]
async fn the_directory_is_created_private_and_the_socket_owner_only() {
    let (dir, _) = socket_path();
    let path = dir.path().join("a/b/sock");
    let listener = listen(&path).await;
    assert_eq!(listener.path(), path);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("a")), 0o700);
    assert_eq!(mode(&dir.path().join("a/b")), 0o700);
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn shutdown_removes_the_socket_file() {
    let (_dir, path) = socket_path();
    let listener = listen(&path).await;
    assert!(path.exists());
    listener.shutdown().await;
    assert!(!path.exists());
    let err = sender().send(&path, &notify("late")).await.unwrap_err();
    assert!(
        matches!(err, pod_transport::SendError::SocketMissing { .. }),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_shutdown_delivers_what_was_sent_then_ends() {
    let (_dir, path) = socket_path();
    let mut listener = listen(&path).await;
    let sender = sender();
    for i in 0..50 {
        sender.send(&path, &notify(i.to_string())).await.unwrap();
    }
    let handle = listener.shutdown_handle();
    handle.shutdown();
    assert!(handle.is_shutdown());
    let mut messages = HashSet::new();
    while let Some(received) = listener.recv().await {
        match received.item.unwrap() {
            Method::Notify { message, .. } => assert!(messages.insert(message)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages, (0..50).map(|i| i.to_string()).collect());
    assert!(!path.exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_shutdown_closes_idle_connections() {
    let (_dir, path) = socket_path();
    let mut listener = listen(&path).await;
    let mut idle = UnixStream::connect(&path).await.unwrap();
    sender().send(&path, &notify("before")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("before"));
    listener.shutdown_handle().shutdown();
    // The silent connection is closed without waiting for its idle timeout
    // (ten seconds by default), and the source ends.
    assert!(listener.recv().await.is_none());
    let mut buf = [0u8; 1];
    assert!(matches!(idle.read(&mut buf).await, Ok(0) | Err(_)));
    assert_eq!(listener.stats().idle_timeouts, 0);
}

#[tokio::test]
async fn dropping_the_listener_removes_the_socket_file() {
    let (_dir, path) = socket_path();
    drop(listen(&path).await);
    // Removal runs on the blocking pool; wait for it (bounded, to fail
    // rather than hang).
    for _ in 0..1000 {
        if !path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{} still exists", path.display());
}

#[tokio::test]
async fn removal_spares_a_socket_bound_again_at_the_same_path() {
    let (_dir, path) = socket_path();
    let first = listen(&path).await;
    // Someone replaces the socket file behind the listener's back.
    std::fs::remove_file(&path).unwrap();
    let _second = StdListener::bind(&path).unwrap();
    first.shutdown().await;
    assert!(path.exists(), "the other socket file is kept");
}
