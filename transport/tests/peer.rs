//! Peer authentication: a process running as another uid is rejected even
//! when the socket's mode lets it connect.
//!
//! The test re-executes this test binary as uid 65534 (`nobody`) to play
//! the foreign peer; that needs root, so without it the test is skipped
//! with a message.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use pod_transport::{ListenConfig, MethodSender, MethodSource};

use crate::{listen_with, notify, recv_method, sender, socket_path};

/// Set in the child process: the socket to connect to.
const CHILD_SOCKET: &str = "POD_TRANSPORT_TEST_FOREIGN_PEER_SOCKET";
const TEST_NAME: &str = "peer::a_peer_with_another_uid_is_rejected";
const NOBODY: u32 = 65534;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_another_uid_is_rejected() {
    if let Some(path) = std::env::var_os(CHILD_SOCKET) {
        // Child role: connect (which the socket mode allows) and write.
        let mut stream = std::os::unix::net::UnixStream::connect(&path)
            .expect("the foreign peer can connect: the socket mode allows it");
        // The listener closes the connection unread, so writing may fail.
        let _ = stream.write_all(&pod_protocol::encode(&notify("from a stranger")));
        return;
    }
    if !rustix::process::getuid().is_root() {
        println!("skipped: spawning a process as another uid needs root");
        return;
    }
    let (dir, path) = socket_path();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = ListenConfig {
        socket_mode: 0o666,
        ..ListenConfig::default()
    };
    let mut listener = listen_with(&path, config).await;

    let exe = std::env::current_exe().unwrap();
    let child = tokio::task::spawn_blocking(move || {
        Command::new(exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_SOCKET, &path)
            .uid(NOBODY)
            .gid(NOBODY)
            .output()
            .expect("spawn the foreign peer")
    });
    let output = child.await.unwrap();
    assert!(
        output.status.success(),
        "the foreign peer failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let ran = String::from_utf8_lossy(&output.stdout);
    assert!(ran.contains("1 passed"), "the child ran no test: {ran}");

    // Connections are accepted in order: when this note arrives, the
    // stranger's connection has been dealt with.
    let path = listener.path().to_owned();
    sender().send(&path, &notify("from us")).await.unwrap();
    assert_eq!(recv_method(&mut listener).await, notify("from us"));
    let stats = listener.stats();
    assert_eq!(
        (stats.rejected_peers, stats.connections),
        (1, 1),
        "{stats:?}"
    );

    // Nothing from the stranger is pending either.
    listener.shutdown_handle().shutdown();
    if let Some(received) = listener.recv().await {
        panic!(
            "unexpected item from {:?}: {:?}",
            received.peer, received.item
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_peer_carries_uid_gid_and_pid_and_no_pod_name() {
    let (_dir, path) = socket_path();
    let mut listener = crate::listen(&path).await;
    sender().send(&path, &notify("who am i")).await.unwrap();
    let received = listener.recv().await.unwrap();
    let peer = received.peer;
    assert_eq!(peer.uid, Some(rustix::process::getuid().as_raw()));
    assert_eq!(peer.gid, Some(rustix::process::getgid().as_raw()));
    assert_eq!(peer.pid, Some(std::process::id()));
    assert_eq!(peer.pod_name, None, "no certificate over a Unix socket");
    assert_eq!(peer, pod_transport::Peer::current());
    assert_eq!(peer.cred(), Some(pod_transport::PeerCred::current()));
    let shown = peer.to_string();
    assert!(
        shown.contains(&format!("pid {}", std::process::id())),
        "{shown}"
    );
}

#[test]
fn a_certified_peer_has_a_pod_name_and_no_local_credentials() {
    let name = pod_transport::PodName::new("worker-1").unwrap();
    let peer = pod_transport::Peer::certified(name.clone());
    assert_eq!((peer.uid, peer.pid), (None, None));
    assert_eq!(peer.pod_name, Some(name));
    assert_eq!(peer.cred(), None);
    assert_ne!(peer, pod_transport::PeerCred::current());
    assert_eq!(peer.to_string(), "pod worker-1");
}
