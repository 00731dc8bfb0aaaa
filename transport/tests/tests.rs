//! Integration tests of pod-transport over real Unix sockets in temporary
//! directories, plus the in-memory network.

mod claim;
mod fair;
mod listen;
mod memory;
mod peer;
#[cfg(feature = "tls")]
mod pki;
mod send;
mod suite;
#[cfg(feature = "tls")]
mod tls;

use std::path::{Path, PathBuf};
use std::time::Duration;

use pod_protocol::{PodEvent, ScopeRule};
use pod_transport::{
    ListenConfig, Listener, Method, MethodSource, PeerCred, Received, SendConfig, UnixSender,
};
use tempfile::TempDir;

/// A fresh temporary directory and a socket path inside it.
pub(crate) fn socket_path() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let path = dir.path().join("sock");
    (dir, path)
}

/// A listener with the default configuration.
pub(crate) async fn listen(path: &Path) -> Listener {
    listen_with(path, ListenConfig::default()).await
}

/// A listener with `config`.
pub(crate) async fn listen_with(path: &Path, config: ListenConfig) -> Listener {
    Listener::bind(path, config)
        .await
        .expect("bind the listener")
}

/// A sender whose backlog deadline is generous: the machine running the
/// tests is shared, and a deadline is a bound, not a timing assertion.
pub(crate) fn sender() -> UnixSender {
    UnixSender::new(SendConfig {
        backlog_deadline: Duration::from_secs(60),
        ..SendConfig::default()
    })
}

/// The next item, which must be a method from this very process.
pub(crate) async fn recv_method(source: &mut impl MethodSource) -> Method {
    let received = source.recv().await.expect("the source is open");
    check_own_peer(&received);
    received.item.expect("a method, not a receive error")
}

pub(crate) fn check_own_peer(received: &Received) {
    assert_eq!(received.peer, PeerCred::current(), "peer credentials");
}

pub(crate) fn notify(message: impl Into<String>) -> Method {
    Method::notify(message)
}

/// One of every `Method` variant and every `PodEvent` kind, with and
/// without optional fields.
pub(crate) fn every_method() -> Vec<Method> {
    vec![
        Method::PodEvent(PodEvent::TurnEnded {
            pod_name: "child".into(),
            incarnation: None,
        }),
        Method::PodEvent(PodEvent::TurnEnded {
            pod_name: "child".into(),
            incarnation: Some("inc-1".into()),
        }),
        Method::PodEvent(PodEvent::Errored {
            pod_name: "child".into(),
            message: "boom\nwith a newline, a \u{7} bell and ünïcödé".into(),
            incarnation: Some("inc-2".into()),
        }),
        Method::PodEvent(PodEvent::ShutDown {
            pod_name: "child".into(),
            incarnation: None,
        }),
        Method::PodEvent(PodEvent::ScopeSubDelegated {
            parent_pod: "child".into(),
            sub_pod: "gc".into(),
            sub_socket: "/run/pods/gc/sock".into(),
            scope: vec![
                ScopeRule::write("/srv/repo/a"),
                ScopeRule {
                    target: "/srv/repo/b".into(),
                    permission: pod_protocol::Permission::Read,
                    recursive: false,
                },
            ],
            sub_incarnation: Some("inc-3".into()),
            spawner_socket: Some("/run/pods/child/sock".into()),
        }),
        Method::PodEvent(PodEvent::ScopeSubDelegated {
            parent_pod: "child".into(),
            sub_pod: "gc".into(),
            sub_socket: "/run/pods/gc/sock".into(),
            scope: Vec::new(),
            sub_incarnation: None,
            spawner_socket: None,
        }),
        notify("text"),
        Method::Shutdown,
        Method::Run(None),
        Method::Run(Some(serde_json::json!({"prompt": "go", "n": [1, 2]}))),
        Method::Resume(Some(serde_json::json!({"from": 3}))),
        Method::Cancel,
        Method::Pause,
        Method::GetHistory(None),
    ]
}
