//! Typed send errors against real sockets.

use std::os::unix::net::UnixListener as StdListener;
use std::time::Duration;

use pod_transport::{
    ListenConfig, ListenError, Listener, MethodSender, SendConfig, SendError, UnixSender,
};
use tokio::net::UnixStream;

use crate::{notify, socket_path};

#[tokio::test]
async fn a_missing_socket_is_socket_missing() {
    let (_dir, path) = socket_path();
    let err = UnixSender::default()
        .send(&path, &notify("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::SocketMissing { .. }), "{err}");
    assert_eq!(err.path(), path);
}

#[tokio::test]
async fn a_stale_socket_is_refused() {
    let (_dir, path) = socket_path();
    drop(StdListener::bind(&path).unwrap());
    let err = UnixSender::default()
        .send(&path, &notify("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::Refused { .. }), "{err}");
}

/// A listener that never accepts, with the smallest backlog, filled up:
/// returns it and the connections that fill it.
async fn full_backlog(path: &std::path::Path) -> (StdListener, Vec<UnixStream>) {
    let listener = StdListener::bind(path).unwrap();
    rustix::net::listen(&listener, 0).unwrap();
    let mut held = Vec::new();
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => held.push(stream),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(err) => panic!("unexpected connect error: {err}"),
        }
        assert!(held.len() < 64, "the backlog never filled up");
    }
    (listener, held)
}

#[tokio::test]
async fn a_backlog_full_past_the_deadline_is_backlog_full() {
    let (_dir, path) = socket_path();
    let (_listener, _held) = full_backlog(&path).await;
    let sender = UnixSender::new(SendConfig {
        backlog_deadline: Duration::from_millis(100),
        ..SendConfig::default()
    });
    let err = sender.send(&path, &notify("x")).await.unwrap_err();
    assert!(matches!(err, SendError::BacklogFull { .. }), "{err}");
}

#[tokio::test]
async fn a_socket_with_a_full_backlog_is_live_and_kept() {
    let (_dir, path) = socket_path();
    let (_listener, _held) = full_backlog(&path).await;
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::InUse { .. }), "{err}");
    assert!(path.exists());
}

#[tokio::test]
async fn a_receiver_that_does_not_read_times_out() {
    let (_dir, path) = socket_path();
    // Never accepted, so never read: the write blocks once the socket
    // buffer is full, which a multi-megabyte frame guarantees.
    let _listener = StdListener::bind(&path).unwrap();
    let sender = UnixSender::new(SendConfig {
        write_timeout: Duration::from_millis(200),
        ..SendConfig::default()
    });
    let err = sender
        .send(&path, &notify("x".repeat(8 << 20)))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::TimedOut { .. }), "{err}");
}

#[test]
fn error_messages_say_what_to_do() {
    let path = std::path::PathBuf::from("/run/pods/p/sock");
    let missing = SendError::SocketMissing { path: path.clone() }.to_string();
    assert!(
        missing.contains("/run/pods/p/sock") && missing.contains("not listening"),
        "{missing}"
    );
    let full = SendError::BacklogFull {
        path,
        after: Duration::from_secs(5),
    }
    .to_string();
    assert!(full.contains("backlog_deadline"), "{full}");
}

#[tokio::test]
async fn a_sender_writes_in_its_configured_dialect() {
    let (_dir, path) = socket_path();
    let raw = StdListener::bind(&path).unwrap();
    let sender = UnixSender::new(SendConfig {
        dialect: pod_protocol::Dialect::Worker,
        ..SendConfig::default()
    });
    let event = pod_transport::Method::PodEvent(pod_protocol::PodEvent::TurnEnded {
        pod_name: "w1".into(),
        incarnation: None,
    });
    sender.send(&path, &event).await.unwrap();
    let (mut stream, _) = raw.accept().unwrap();
    let mut line = String::new();
    std::io::Read::read_to_string(&mut stream, &mut line).unwrap();
    assert_eq!(
        line,
        "{\"method\":\"worker_event\",\"params\":{\"kind\":\"turn_ended\",\"worker_name\":\"w1\"}}\n"
    );
}

#[tokio::test]
async fn a_lingering_sender_returns_once_the_listener_has_read_and_closed() {
    let (_dir, path) = socket_path();
    let raw = StdListener::bind(&path).unwrap();
    let sender = UnixSender::new(SendConfig {
        linger: Some(Duration::from_secs(30)),
        ..SendConfig::default()
    });
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = raw.accept().unwrap();
        let mut got = Vec::new();
        // Reads to the sender's half-close, then closes: the sender's cue.
        std::io::Read::read_to_end(&mut stream, &mut got).unwrap();
        got
    });
    sender.send(&path, &notify("still here")).await.unwrap();
    // The send returned, so the reader has read everything and closed.
    let got = reader.join().unwrap();
    assert!(got.ends_with(b"\n") && got.len() > 10, "{got:?}");
    // And without an answer the linger is bounded: a listener that never
    // closes delays the send by at most the linger.
    let (_dir2, path2) = socket_path();
    let _silent = StdListener::bind(&path2).unwrap();
    let brief = UnixSender::new(SendConfig {
        linger: Some(Duration::from_millis(100)),
        ..SendConfig::default()
    });
    brief.send(&path2, &notify("nobody reads")).await.unwrap();
}
