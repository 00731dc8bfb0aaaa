//! One behavioural suite, run against every implementation of the seams:
//! the Unix-socket listener and sender, and (feature `tls`) the mutual-TLS
//! ones. Passing it is the proof that the transport layer really swaps.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use pod_transport::{Method, MethodSender, MethodSource, Peer};
use tokio::sync::Barrier;

use crate::{every_method, notify};

/// A bound source, a sender that reaches it, and what to expect.
pub(crate) struct Bound<S, T> {
    pub(crate) source: S,
    pub(crate) sender: T,
    /// The address the sender sends to.
    pub(crate) addr: PathBuf,
    /// Who the source says sent each item.
    pub(crate) peer: Peer,
    /// Starts a graceful shutdown of the source.
    pub(crate) shutdown: Box<dyn Fn() + Send>,
    /// Whatever must live as long as the source (a temporary directory).
    pub(crate) _guard: Box<dyn std::any::Any + Send>,
}

async fn next_method<S: MethodSource, T>(bound: &mut Bound<S, T>) -> Method {
    let received = bound.source.recv().await.expect("the source is open");
    assert_eq!(received.peer, bound.peer, "the sender's identity");
    received.item.expect("a method, not a receive error")
}

pub(crate) async fn every_method_makes_the_round_trip<S, T>(mut bound: Bound<S, T>)
where
    S: MethodSource,
    T: MethodSender,
{
    for method in every_method() {
        bound.sender.send(&bound.addr, &method).await.unwrap();
        assert_eq!(next_method(&mut bound).await, method);
    }
}

pub(crate) async fn sixty_four_concurrent_senders_are_all_delivered<S, T>(mut bound: Bound<S, T>)
where
    S: MethodSource,
    T: MethodSender + Clone,
{
    const COUNT: usize = 64;
    let start = Arc::new(Barrier::new(COUNT));
    let senders: Vec<_> = (0..COUNT)
        .map(|i| {
            let sender = bound.sender.clone();
            let addr = bound.addr.clone();
            let start = Arc::clone(&start);
            tokio::spawn(async move {
                start.wait().await;
                sender.send(&addr, &notify(i.to_string())).await
            })
        })
        .collect();
    let mut messages = HashSet::new();
    while messages.len() < COUNT {
        match next_method(&mut bound).await {
            Method::Notify { message, .. } => assert!(messages.insert(message)),
            other => panic!("unexpected {other:?}"),
        }
    }
    for (i, task) in senders.into_iter().enumerate() {
        if let Err(err) = task.await.unwrap() {
            panic!("sender {i} failed: {err}");
        }
    }
    assert_eq!(messages, (0..COUNT).map(|i| i.to_string()).collect());
}

pub(crate) async fn a_shutdown_delivers_what_was_sent_then_ends<S, T>(mut bound: Bound<S, T>)
where
    S: MethodSource,
    T: MethodSender,
{
    for i in 0..20 {
        bound
            .sender
            .send(&bound.addr, &notify(i.to_string()))
            .await
            .unwrap();
    }
    (bound.shutdown)();
    let mut messages = HashSet::new();
    while let Some(received) = bound.source.recv().await {
        assert_eq!(received.peer, bound.peer);
        match received.item.unwrap() {
            Method::Notify { message, .. } => assert!(messages.insert(message)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(messages, (0..20).map(|i| i.to_string()).collect());
}

/// Declares the suite's tests for one implementation: `$start` is an
/// async fn returning a [`Bound`].
macro_rules! behaviour_suite {
    ($name:ident, $start:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_method_makes_the_round_trip() {
                $crate::suite::every_method_makes_the_round_trip($start().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sixty_four_concurrent_senders_are_all_delivered() {
                $crate::suite::sixty_four_concurrent_senders_are_all_delivered($start().await)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_shutdown_delivers_what_was_sent_then_ends() {
                $crate::suite::a_shutdown_delivers_what_was_sent_then_ends($start().await).await;
            }
        }
    };
}

/// The Unix-socket implementation.
pub(crate) async fn unix() -> Bound<pod_transport::Listener, pod_transport::UnixSender> {
    let (dir, path) = crate::socket_path();
    let source = crate::listen(&path).await;
    let handle = source.shutdown_handle();
    Bound {
        source,
        sender: crate::sender(),
        addr: path,
        peer: Peer::current(),
        shutdown: Box::new(move || handle.shutdown()),
        _guard: Box::new(dir),
    }
}

behaviour_suite!(over_unix, crate::suite::unix);

/// The mutual-TLS implementation, over loopback TCP.
#[cfg(feature = "tls")]
pub(crate) async fn tls() -> Bound<pod_transport::tls::TlsListener, pod_transport::tls::TlsSender> {
    use pod_transport::tls::{TlsListenConfig, TlsListener, TlsSender};
    let ca = crate::pki::Ca::new();
    let source = TlsListener::bind(
        "127.0.0.1:0",
        crate::pki::server(&ca),
        TlsListenConfig::default(),
    )
    .await
    .unwrap();
    let handle = source.shutdown_handle();
    let leaf = ca.pod("w1");
    let sender = TlsSender::new(crate::pki::client(&ca, &leaf), crate::tls::send_config());
    Bound {
        addr: PathBuf::from(source.local_addr().to_string()),
        source,
        sender,
        peer: Peer::certified("w1".parse().unwrap()),
        shutdown: Box::new(move || handle.shutdown()),
        _guard: Box::new(()),
    }
}

#[cfg(feature = "tls")]
behaviour_suite!(over_tls, crate::suite::tls);
