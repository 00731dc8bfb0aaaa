//! The receive loop over in-memory transport, registry and scope table.

use std::sync::Arc;
use std::time::Duration;

use pod_events::{
    spawn_endpoint, CollectingSink, EndpointConfig, FakeReachability, Origin, Parent,
};
use pod_protocol::{DecodeError, Method, PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{PodSpec, ScopeTable};
use pod_transport::testing::MemoryNetwork;
use pod_transport::{MethodSender, PeerCred, ReceiveError};

fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

fn spec(name: &str, pid: u32, target: &str) -> PodSpec {
    PodSpec {
        pod_name: pod(name),
        pid,
        socket: format!("/s/{name}"),
        scope: vec![ScopeRule::write(target)],
    }
}

fn record(name: &str, incarnation: Option<String>) -> Record {
    Record {
        pod_name: pod(name),
        socket_path: format!("/s/{name}"),
        scope_delegated: vec![ScopeRule::write(format!("/w/{name}"))],
        callback_address: "/s/root".into(),
        incarnation,
    }
}

fn no_reconcile() -> EndpointConfig {
    EndpointConfig::default().reconcile_every(None)
}

/// Polls `f` until it is true; fails after 10 s (a liveness bound, not a
/// performance assertion).
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in 10 s");
}

#[tokio::test]
async fn bad_items_are_counted_and_the_loop_goes_on() {
    let net = MemoryNetwork::new();
    let source = net.bind("/s/root");
    let peer = PeerCred::current();
    source.inject(
        peer,
        Err(ReceiveError::Decode(DecodeError::UnknownMethod {
            method: "x".into(),
        })),
    );
    source.inject(peer, Ok(Method::Shutdown));
    source.inject(
        peer,
        Ok(Method::PodEvent(PodEvent::TurnEnded {
            pod_name: "../evil".into(),
            incarnation: None,
        })),
    );
    source.inject(
        peer,
        Ok(Method::PodEvent(PodEvent::TurnEnded {
            pod_name: "w1".into(),
            incarnation: None,
        })),
    );
    let scopes = ScopeTable::new(MemoryStore::new(), FakeLiveness::new());
    let parent = Arc::new(Parent::new(
        pod("root"),
        MemoryRegistry::new(),
        scopes,
        FakeReachability::new(),
    ));
    let sink = CollectingSink::new();
    let endpoint = spawn_endpoint(parent, source, sink.clone(), no_reconcile());
    until(|| sink.lines().len() == 1).await;
    let stats = endpoint.stop().await;
    assert_eq!(sink.lines(), vec!["pod `w1` finished a turn and is idle"]);
    assert_eq!(
        (
            stats.received,
            stats.undecodable,
            stats.unsupported,
            stats.invalid,
            stats.applied
        ),
        (4, 1, 1, 1, 1)
    );
}

#[tokio::test]
async fn a_sub_delegation_is_relayed_upward_and_a_shutdown_releases_scope() {
    let net = MemoryNetwork::new();
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    for pid in [1, 2, 3] {
        liveness.spawn(pid);
    }
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, spec("child", 2, "/w/child"))
        .unwrap();
    let gc = scopes
        .delegate(&child.pod_name, spec("gc", 3, "/w/child/gc"))
        .unwrap();

    // The child's endpoint relays to the root's address.
    let mut root_inbox = net.bind("/s/root");
    let child_registry = MemoryRegistry::new();
    let parent = Arc::new(
        Parent::new(
            pod("child"),
            child_registry.clone(),
            scopes.clone(),
            FakeReachability::new(),
        )
        .with_upward(net.sender(), "/s/root"),
    );
    let sink = CollectingSink::new();
    let endpoint = spawn_endpoint(parent, net.bind("/s/child"), sink.clone(), no_reconcile());
    let sub = PodEvent::ScopeSubDelegated {
        parent_pod: "gc".into(),
        sub_pod: "ggc".into(),
        sub_socket: "/s/ggc".into(),
        scope: vec![ScopeRule::write("/w/child/gc/x")],
        sub_incarnation: Some("i-ggc".into()),
        spawner_socket: Some("/s/gc".into()),
    };
    let sender = net.sender();
    sender
        .send("/s/child".as_ref(), &Method::PodEvent(sub))
        .await
        .unwrap();
    let shut = PodEvent::ShutDown {
        pod_name: "gc".into(),
        incarnation: gc.incarnation.clone(),
    };
    sender
        .send("/s/child".as_ref(), &Method::PodEvent(shut.clone()))
        .await
        .unwrap();

    use pod_transport::MethodSource;
    let first = root_inbox.recv().await.unwrap().item.unwrap();
    let second = root_inbox.recv().await.unwrap().item.unwrap();
    let mut relayed = [first, second];
    relayed.sort_by_key(|m| format!("{m:?}"));
    assert!(relayed.contains(&Method::PodEvent(shut)));
    assert!(relayed.iter().any(|m| matches!(m, Method::PodEvent(PodEvent::ScopeSubDelegated { parent_pod, spawner_socket, .. })
        if parent_pod == "child" && spawner_socket.as_deref() == Some("/s/gc"))));
    until(|| sink.lines().len() == 2).await;
    endpoint.stop().await;
    assert!(scopes.find(&pod("gc")).unwrap().is_none());
    // ggc was never allocated in the table; the probe says it is alive.
    assert_eq!(child_registry.list().len(), 1);
}

#[tokio::test]
async fn reconcile_at_start_reports_a_crashed_pod_and_releases_its_scope() {
    let net = MemoryNetwork::new();
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    liveness.spawn(1);
    liveness.spawn(2);
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let w3 = scopes
        .delegate(&root.pod_name, spec("w3", 2, "/w/w3"))
        .unwrap();
    let registry = MemoryRegistry::new();
    registry
        .add(record("w3", w3.incarnation.clone()))
        .await
        .unwrap();
    liveness.kill(2);

    let parent = Arc::new(Parent::new(
        pod("root"),
        registry.clone(),
        scopes.clone(),
        FakeReachability::new(),
    ));
    let sink = CollectingSink::new();
    let config = EndpointConfig::default().reconcile_every(Some(Duration::from_secs(3600)));
    let endpoint = spawn_endpoint(parent, net.bind("/s/root"), sink.clone(), config);
    until(|| !sink.lines().is_empty()).await;
    endpoint.stop().await;
    let notes = sink.notifications();
    assert_eq!(
        notes[0].line,
        "`w3` is gone without reporting: presumed crashed; scope released"
    );
    assert_eq!(notes[0].origin, Origin::Inferred);
    assert!(registry.list().is_empty());
    assert!(registry.is_departed("w3", w3.incarnation.as_deref()));
    assert_eq!(scopes.list().unwrap().len(), 1);
}

#[tokio::test]
async fn registering_a_dead_pod_yields_a_synthetic_shutdown_at_once() {
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    liveness.spawn(1);
    liveness.spawn(2);
    liveness.spawn(3);
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, spec("child", 2, "/w/c"))
        .unwrap();
    let gc = scopes
        .delegate(&child.pod_name, spec("gc", 3, "/w/c/gc"))
        .unwrap();
    liveness.kill(3);
    let registry = MemoryRegistry::new();
    let parent = Parent::new(
        pod("root"),
        registry.clone(),
        scopes.clone(),
        FakeReachability::new(),
    );
    let effects = parent
        .apply(&PodEvent::ScopeSubDelegated {
            parent_pod: "child".into(),
            sub_pod: "gc".into(),
            sub_socket: "/s/gc".into(),
            scope: vec![ScopeRule::write("/w/c/gc")],
            sub_incarnation: gc.incarnation.clone(),
            spawner_socket: None,
        })
        .await;
    assert!(effects.registered && effects.presumed_dead);
    assert!(registry.list().is_empty());
    assert!(effects.released.is_some());
    assert_eq!(effects.relayed.len(), 2);
}

#[tokio::test]
async fn a_failing_registry_write_is_logged_not_propagated() {
    let scopes = ScopeTable::new(MemoryStore::new(), FakeLiveness::new());
    let registry = MemoryRegistry::new();
    registry.add(record("w1", None)).await.unwrap();
    registry.fail_next_writes(1);
    let parent = Parent::new(
        pod("root"),
        registry.clone(),
        scopes,
        FakeReachability::new(),
    );
    let effects = parent
        .apply(&PodEvent::ShutDown {
            pod_name: "w1".into(),
            incarnation: None,
        })
        .await;
    assert_eq!(effects.failures, 1);
    // Relayed anyway: a duplicate upward is harmless, a lost one is not.
    assert_eq!(effects.relayed.len(), 1);
}

/// A sender that delivers each method only after a delay, so relays are
/// still in flight when the endpoint is told to stop.
#[derive(Clone)]
struct SlowSender(pod_transport::testing::MemorySender);

impl MethodSender for SlowSender {
    async fn send(
        &self,
        to: &std::path::Path,
        method: &Method,
    ) -> Result<(), pod_transport::SendError> {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.0.send(to, method).await
    }
}

#[tokio::test]
async fn stopping_an_endpoint_waits_for_relays_in_flight() {
    let net = MemoryNetwork::new();
    let _root_inbox = net.bind("/s/root");
    let scopes = ScopeTable::new(MemoryStore::new(), FakeLiveness::new());
    let parent = Arc::new(
        Parent::new(
            pod("child"),
            MemoryRegistry::new(),
            scopes,
            FakeReachability::new(),
        )
        .with_upward(SlowSender(net.sender()), "/s/root"),
    );
    let source = net.bind("/s/child");
    for i in 0..50 {
        let event = PodEvent::ShutDown {
            pod_name: format!("w{i}"),
            incarnation: None,
        };
        source.inject(PeerCred::current(), Ok(Method::PodEvent(event)));
    }
    let sink = CollectingSink::new();
    let endpoint = spawn_endpoint(parent, source, sink.clone(), no_reconcile());
    until(|| sink.lines().len() == 50).await;
    // Every relay is still sleeping in SlowSender here; stop must wait.
    endpoint.stop().await;
    let relayed = net
        .sent()
        .into_iter()
        .filter(|(to, _)| to.as_path() == std::path::Path::new("/s/root"))
        .count();
    assert_eq!(relayed, 50);
}
