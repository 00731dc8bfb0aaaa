//! The in-memory network behaves like the real transport's contract.

use std::path::Path;
use std::sync::Arc;

use pod_transport::testing::MemoryNetwork;
use pod_transport::{MethodSender, MethodSource, PeerCred, ReceiveError, SendError};

use crate::{every_method, notify, recv_method};

const PARENT: &str = "/run/pods/parent/sock";

fn parent() -> &'static Path {
    Path::new(PARENT)
}

/// Sends a note to [`PARENT`] from a fresh sender on `net`.
async fn send_note(net: &MemoryNetwork, message: &str) -> Result<(), SendError> {
    net.sender().send(parent(), &notify(message)).await
}

#[tokio::test]
async fn round_trip_of_every_method_in_order() {
    let net = MemoryNetwork::new();
    let mut source = net.bind(PARENT);
    let sender = net.sender();
    for method in every_method() {
        sender.send(parent(), &method).await.unwrap();
    }
    for method in every_method() {
        assert_eq!(recv_method(&mut source).await, method);
    }
    let sent = net.sent();
    assert_eq!(sent.len(), every_method().len());
    assert!(sent.iter().all(|(to, _)| to == parent()));
    assert_eq!(
        sent.into_iter().map(|(_, m)| m).collect::<Vec<_>>(),
        every_method()
    );
}

#[tokio::test]
async fn unbound_path_is_socket_missing() {
    let net = MemoryNetwork::new();
    let err = net
        .sender()
        .send(Path::new("/nowhere"), &notify("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, SendError::SocketMissing { ref path } if path == Path::new("/nowhere")));
    assert!(net.sent().is_empty(), "a failed send is not recorded");
}

#[tokio::test]
async fn unreachable_path_is_refused_until_unset() {
    let net = MemoryNetwork::new();
    let mut source = net.bind(PARENT);
    net.set_unreachable(parent(), true);
    let err = send_note(&net, "lost").await.unwrap_err();
    assert!(matches!(err, SendError::Refused { .. }), "{err}");
    net.set_unreachable(parent(), false);
    send_note(&net, "kept").await.unwrap();
    assert_eq!(recv_method(&mut source).await, notify("kept"));
    assert_eq!(net.sent().len(), 1);
}

#[tokio::test]
async fn dropping_the_source_unbinds() {
    let net = MemoryNetwork::new();
    let source = net.bind(PARENT);
    assert!(net.is_bound(parent()));
    drop(source);
    assert!(!net.is_bound(parent()));
    let err = send_note(&net, "x").await;
    assert!(matches!(err, Err(SendError::SocketMissing { .. })));
}

#[tokio::test]
async fn rebinding_replaces_and_ends_the_old_source() {
    let net = MemoryNetwork::new();
    let mut old = net.bind(PARENT);
    send_note(&net, "to old").await.unwrap();
    let mut new = net.bind(PARENT);
    send_note(&net, "to new").await.unwrap();
    assert_eq!(recv_method(&mut old).await, notify("to old"));
    assert!(old.recv().await.is_none(), "the replaced source ends");
    drop(old);
    assert!(
        net.is_bound(parent()),
        "dropping the old source keeps the new binding"
    );
    assert_eq!(recv_method(&mut new).await, notify("to new"));
}

#[tokio::test]
async fn unbind_ends_the_source_after_its_items() {
    let net = MemoryNetwork::new();
    let mut source = net.bind(PARENT);
    send_note(&net, "last").await.unwrap();
    net.unbind(parent());
    assert_eq!(recv_method(&mut source).await, notify("last"));
    assert!(source.recv().await.is_none());
}

#[tokio::test]
async fn injected_items_reach_the_source() {
    let net = MemoryNetwork::new();
    let mut source = net.bind(PARENT);
    let stranger = PeerCred {
        uid: 4242,
        gid: 4242,
        pid: None,
    };
    let err = pod_protocol::decode(b"garbage").unwrap_err();
    source.inject(stranger, Err(ReceiveError::Decode(err)));
    let received = source.recv().await.unwrap();
    assert_eq!(received.peer, stranger);
    assert!(matches!(received.item, Err(ReceiveError::Decode(_))));
}

#[tokio::test]
async fn an_arc_sender_is_a_sender() {
    let net = MemoryNetwork::new();
    let mut source = net.bind(PARENT);
    let shared = Arc::new(net.sender());
    let clone = Arc::clone(&shared);
    tokio::spawn(async move { clone.send(parent(), &notify("via arc")).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recv_method(&mut source).await, notify("via arc"));
}
