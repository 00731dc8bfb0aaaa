//! The receive loop over in-memory transport, registry and scope table.

use std::sync::Arc;
use std::time::Duration;

use pod_events::{
    spawn_endpoint, CollectingSink, EndpointConfig, FakeProcessTree, FakeReachability, Origin,
    Parent, SenderPolicy,
};
use pod_protocol::{DecodeError, Method, PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{PodSpec, ScopeTable};
use pod_transport::testing::MemoryNetwork;
use pod_transport::{MethodSender, PeerCred, ReceiveError};

pub(crate) fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

pub(crate) fn spec(name: &str, pid: u32, target: &str) -> PodSpec {
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

/// The line of a pod presumed crashed, as reconcile and the exit watches
/// render it.
pub(crate) fn crashed(name: &str) -> String {
    format!("`{name}` is gone without reporting: presumed crashed; scope released")
}

/// Polls `f` every 10 ms until it is true; fails after `deadline` (a
/// liveness bound, not a performance assertion) naming `what`.
pub(crate) async fn reached(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !f() {
        assert!(
            start.elapsed() < deadline,
            "{what}: not reached in {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `f` until it is true; fails after 10 s (a liveness bound, not a
/// performance assertion).
async fn until(f: impl FnMut() -> bool) {
    reached("condition", Duration::from_secs(10), f).await;
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
    // gc's process is this test process, which sends the events.
    let me = std::process::id();
    for pid in [1, 2, 4, me] {
        liveness.spawn(pid);
    }
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, spec("child", 2, "/w/child"))
        .unwrap();
    let gc = scopes
        .delegate(&child.pod_name, spec("gc", me, "/w/child/gc"))
        .unwrap();
    let ggc = scopes
        .delegate(&gc.pod_name, spec("ggc", 4, "/w/child/gc/x"))
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
    let sub = announced("gc", "ggc", "/w/child/gc/x", ggc.incarnation.clone());
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
    assert!(effects.not_saved.is_some());
    // Relayed anyway: a duplicate upward is harmless, a lost one is not.
    assert_eq!(effects.relayed.len(), 1);
}

#[tokio::test]
async fn a_line_says_what_was_not_saved_and_what_was_not_released() {
    let net = MemoryNetwork::new();
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    // w2's process is this test process, which sends its events.
    let me = std::process::id();
    liveness.spawn(me);
    scopes.register(spec("w2", me, "/w/w2")).unwrap();
    let registry = MemoryRegistry::new();
    registry.add(record("w1", None)).await.unwrap();
    registry.add(record("w2", None)).await.unwrap();
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry.clone(),
        scopes.clone(),
        FakeReachability::new(),
    ));
    let source = net.bind("/s/root");
    // w1 held no scope; w2's departure cannot be written (a full disk).
    source.inject(
        PeerCred::current(),
        Ok(Method::PodEvent(PodEvent::ShutDown {
            pod_name: "w1".into(),
            incarnation: None,
        })),
    );
    let sink = CollectingSink::new();
    let endpoint = spawn_endpoint(parent, source, sink.clone(), no_reconcile());
    until(|| sink.lines().len() == 1).await;
    assert_eq!(sink.lines()[0], "pod `w1` shut down");
    registry.fail_next_writes(1);
    net.sender()
        .send(
            "/s/root".as_ref(),
            &Method::PodEvent(PodEvent::ShutDown {
                pod_name: "w2".into(),
                incarnation: None,
            }),
        )
        .await
        .unwrap();
    until(|| sink.lines().len() == 2).await;
    let line = &sink.lines()[1];
    assert!(
        line.starts_with("pod `w2` shut down; its scope is released; not saved: "),
        "{line}"
    );
    endpoint.stop().await;
    // The registry kept the change and retries it with its next write.
    assert!(registry.is_departed("w2", None));
    assert!(scopes.find(&pod("w2")).unwrap().is_none());
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

/// A table of root (pid 1) -> child (pid 2) -> gc (pid 3), every process
/// alive, and an endpoint of `child` fed `events` from the given pids.
struct Forged {
    sink: CollectingSink,
    registry: MemoryRegistry,
    scopes: ScopeTable<MemoryStore, FakeLiveness>,
    stats: pod_events::EndpointStats,
    relayed: Vec<Method>,
}

async fn child_endpoint_fed(
    policy: SenderPolicy,
    events: impl FnOnce(&ScopeTable<MemoryStore, FakeLiveness>) -> Vec<(u32, PodEvent)>,
) -> Forged {
    let net = MemoryNetwork::new();
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    for pid in [1, 2, 3, 66] {
        liveness.spawn(pid);
    }
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, spec("child", 2, "/w/c"))
        .unwrap();
    scopes
        .delegate(&child.pod_name, spec("gc", 3, "/w/c/gc"))
        .unwrap();
    // Process 30 is a helper of gc's process; 66 speaks for nobody.
    let tree = FakeProcessTree::new();
    tree.set_parent(30, 3);
    let mut root_inbox = net.bind("/s/root");
    let registry = MemoryRegistry::new();
    let parent = Arc::new(
        Parent::new(
            pod("child"),
            registry.clone(),
            scopes.clone(),
            FakeReachability::new(),
        )
        .with_upward(net.sender(), "/s/root"),
    );
    let source = net.bind("/s/child");
    let events = events(&scopes);
    let n = events.len() as u64;
    for (pid, event) in events {
        let peer = PeerCred {
            pid: Some(pid as i32),
            ..PeerCred::current()
        };
        source.inject(peer, Ok(Method::PodEvent(event)));
    }
    let sink = CollectingSink::new();
    let config = no_reconcile().sender_policy(policy).process_tree(tree);
    let endpoint = spawn_endpoint(parent, source, sink.clone(), config);
    until(|| {
        let stats = endpoint.stats();
        stats.applied + stats.rejected_senders == n
    })
    .await;
    let stats = endpoint.stop().await;
    let mut relayed = Vec::new();
    use pod_transport::MethodSource;
    while let Ok(Some(received)) =
        tokio::time::timeout(Duration::from_millis(50), root_inbox.recv()).await
    {
        relayed.push(received.item.unwrap());
    }
    Forged {
        sink,
        registry,
        scopes,
        stats,
        relayed,
    }
}

/// `parent` announces that it spawned `sub` with write scope on
/// `target`; every socket is `/s/NAME`.
fn announced(parent: &str, sub: &str, target: &str, incarnation: Option<String>) -> PodEvent {
    PodEvent::ScopeSubDelegated {
        parent_pod: parent.into(),
        sub_pod: sub.into(),
        sub_socket: format!("/s/{sub}"),
        scope: vec![ScopeRule::write(target)],
        sub_incarnation: incarnation,
        spawner_socket: Some(format!("/s/{parent}")),
    }
}

fn shut_down(name: &str) -> PodEvent {
    PodEvent::ShutDown {
        pod_name: name.into(),
        incarnation: None,
    }
}

#[tokio::test]
async fn a_shutdown_for_a_live_pod_from_another_process_is_refused() {
    let forged = child_endpoint_fed(SenderPolicy::Legacy, |_| vec![(66, shut_down("gc"))]).await;
    assert_eq!(forged.stats.rejected_senders, 1);
    assert!(forged.sink.lines().is_empty());
    assert!(forged.relayed.is_empty());
    assert!(forged.scopes.find(&pod("gc")).unwrap().is_some());
    assert!(!forged.registry.is_departed("gc", None));
}

#[tokio::test]
async fn a_pod_its_helpers_and_the_pods_above_it_may_report_its_shutdown() {
    for pid in [3, 30, 2] {
        let forged =
            child_endpoint_fed(SenderPolicy::Strict, |_| vec![(pid, shut_down("gc"))]).await;
        assert_eq!(forged.stats.rejected_senders, 0, "from {pid}");
        assert!(
            forged.scopes.find(&pod("gc")).unwrap().is_none(),
            "from {pid}"
        );
        assert_eq!(
            forged.relayed,
            [Method::PodEvent(shut_down("gc"))],
            "from {pid}"
        );
    }
}

#[tokio::test]
async fn a_sub_delegation_the_table_does_not_hold_is_refused_whatever_the_policy() {
    for policy in [SenderPolicy::Legacy, SenderPolicy::Strict] {
        let forged = child_endpoint_fed(policy, |scopes| {
            let gc = scopes.find(&pod("gc")).unwrap().unwrap();
            let announce = |sub: &str, target: &str, incarnation: Option<String>| {
                PodEvent::ScopeSubDelegated {
                    parent_pod: "gc".into(),
                    sub_pod: sub.into(),
                    sub_socket: format!("/s/{sub}"),
                    scope: vec![ScopeRule::write(target)],
                    sub_incarnation: incarnation,
                    spawner_socket: None,
                }
            };
            vec![
                // Nothing was delegated to `evil`.
                (30, announce("evil", "/", None)),
                // gc holds other rules than the ones claimed.
                (2, announce("gc", "/", gc.incarnation.clone())),
                // Another incarnation of gc.
                (2, announce("gc", "/w/c/gc", Some("f".repeat(32)))),
                // The right rules, from a process that speaks for nobody
                // above gc (66) and from gc itself (gc cannot announce
                // itself: `child` delegated to it).
                (66, announce("gc", "/w/c/gc", gc.incarnation.clone())),
                (3, announce("gc", "/w/c/gc", gc.incarnation.clone())),
            ]
        })
        .await;
        assert_eq!(forged.stats.rejected_senders, 5, "{policy:?}");
        assert!(forged.registry.list().is_empty(), "{policy:?}");
        assert!(forged.sink.lines().is_empty(), "{policy:?}");
        assert!(forged.relayed.is_empty(), "{policy:?}");
    }
}

#[tokio::test]
async fn the_spawner_and_its_supervisors_may_announce_a_delegation() {
    let forged = child_endpoint_fed(SenderPolicy::Strict, |scopes| {
        let gc = scopes.find(&pod("gc")).unwrap().unwrap();
        vec![(
            2,
            announced("child", "gc", "/w/c/gc", gc.incarnation.clone()),
        )]
    })
    .await;
    assert_eq!(forged.stats.rejected_senders, 0);
    assert_eq!(forged.registry.list().len(), 1);
    assert_eq!(forged.relayed.len(), 1);
}

/// A pod that ran briefly: its release reached the table before its
/// spawner's relayed announcement reached this parent, whose departure
/// relay comes after. From the spawner's process the announcement is
/// admitted, and both converge to a departed pod; from a process that
/// speaks for nobody it is still refused.
#[tokio::test]
async fn a_relayed_announcement_of_a_pod_already_released_is_admitted_from_its_spawner() {
    let gone = announced("gc", "ggc", "/w/c/gc/g", Some("feed".into()));
    let down = PodEvent::ShutDown {
        pod_name: "ggc".into(),
        incarnation: Some("feed".into()),
    };
    let relayed = child_endpoint_fed(SenderPolicy::Strict, |scopes| {
        let gc = scopes.find(&pod("gc")).unwrap().unwrap();
        let spawned = announced("child", "gc", "/w/c/gc", gc.incarnation.clone());
        vec![(2, spawned), (3, gone.clone()), (3, down)]
    })
    .await;
    assert_eq!(relayed.stats.rejected_senders, 0);
    let lines = relayed.sink.lines();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("pod `gc` spawned `ggc`")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("`ggc`") && l.contains("shut down")
                || l.starts_with("`ggc` is gone")),
        "{lines:?}"
    );
    let names: Vec<String> = relayed
        .registry
        .list()
        .iter()
        .map(|r| r.pod_name.to_string())
        .collect();
    assert_eq!(names, ["gc"], "`ggc` ends departed");
    let forged = child_endpoint_fed(SenderPolicy::Strict, |_| vec![(66, gone)]).await;
    assert_eq!(forged.stats.rejected_senders, 1);
    assert!(forged.registry.list().is_empty());
}

#[tokio::test]
async fn claims_the_table_cannot_check_follow_the_policy() {
    let unknown = || {
        vec![
            (
                66,
                PodEvent::TurnEnded {
                    pod_name: "w1".into(),
                    incarnation: None,
                },
            ),
            (66, shut_down("w2")),
        ]
    };
    let strict = child_endpoint_fed(SenderPolicy::Strict, |_| unknown()).await;
    assert_eq!(
        (strict.stats.rejected_senders, strict.stats.unverified),
        (2, 0)
    );
    assert!(strict.sink.lines().is_empty());
    let legacy = child_endpoint_fed(SenderPolicy::Legacy, |_| unknown()).await;
    assert_eq!(
        (legacy.stats.rejected_senders, legacy.stats.unverified),
        (0, 2)
    );
    assert_eq!(legacy.sink.lines().len(), 2);
    // A turn of a pod that holds an allocation is checked under both.
    let turn = PodEvent::TurnEnded {
        pod_name: "gc".into(),
        incarnation: None,
    };
    let forged = child_endpoint_fed(SenderPolicy::Legacy, |_| {
        vec![(66, turn.clone()), (30, turn.clone())]
    })
    .await;
    assert_eq!(
        (forged.stats.rejected_senders, forged.stats.applied),
        (1, 1)
    );
}

/// root (pid 11) > child (12) > gc (13) in one in-memory table, `child`
/// released (so `gc` is the root's now), and the root's allocation.
fn orphaned_tree() -> (ScopeTable<MemoryStore, FakeLiveness>, String) {
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    for pid in [11, 12, 13, 66] {
        liveness.spawn(pid);
    }
    let root = scopes.register(spec("root", 11, "/w")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, spec("child", 12, "/w/c"))
        .unwrap();
    let gc = scopes
        .delegate(&child.pod_name, spec("gc", 13, "/w/c/gc"))
        .unwrap();
    scopes.release(&child.pod_name, None).unwrap();
    (scopes, gc.incarnation.unwrap())
}

#[tokio::test]
async fn a_manager_tells_the_orphans_of_a_dead_child_where_to_report() {
    let (scopes, gc_incarnation) = orphaned_tree();
    let net = MemoryNetwork::new();
    let mut gc_inbox = net.bind("/s/gc");
    let registry = MemoryRegistry::new();
    let mut gc_record = record("gc", Some(gc_incarnation.clone()));
    gc_record.callback_address = "/s/child".into();
    registry.add(gc_record).await.unwrap();
    let root = Parent::new(
        pod("root"),
        registry.clone(),
        scopes,
        FakeReachability::new(),
    )
    .with_sender(net.sender());
    // The release already happened (by the child's supervisor, say): the
    // event path moved nothing, reconcile finds the orphan.
    let report = root.reconcile().await;
    assert_eq!(report.reparented, [pod("gc")]);
    use pod_transport::MethodSource;
    let notice = gc_inbox.recv().await.unwrap().item.unwrap();
    assert_eq!(
        notice,
        Method::Reparent(pod_protocol::Reparent {
            pod_name: "gc".into(),
            incarnation: gc_incarnation.clone(),
            parent_pod: "root".into(),
            parent_socket: "/s/root".into(),
            seq: 1,
        })
    );
    let now = registry.get("gc", Some(&gc_incarnation)).unwrap();
    assert_eq!(now.callback_address, "/s/root");
    // Told once: the record points here now.
    assert!(root.reconcile().await.reparented.is_empty());
}

#[tokio::test]
async fn an_orphan_takes_a_notice_only_from_above_and_as_the_table_says() {
    let (scopes, inc) = orphaned_tree();
    let net = MemoryNetwork::new();
    let gc = Arc::new(
        Parent::new(
            pod("gc"),
            MemoryRegistry::new(),
            scopes,
            FakeReachability::new(),
        )
        .with_upward(net.sender(), "/s/child"),
    );
    let notice = |f: fn(&mut pod_protocol::Reparent)| {
        let mut notice = pod_protocol::Reparent {
            pod_name: "gc".into(),
            incarnation: inc.clone(),
            parent_pod: "root".into(),
            parent_socket: "/s/root".into(),
            seq: 1,
        };
        f(&mut notice);
        Method::Reparent(notice)
    };
    let source = net.bind("/s/gc");
    let from = |pid: i32| PeerCred {
        pid: Some(pid),
        ..PeerCred::current()
    };
    let refused = [
        (66, notice(|_| {})),
        (11, notice(|n| n.pod_name = "other".into())),
        (11, notice(|n| n.incarnation = "f".repeat(32))),
        (11, notice(|n| n.parent_pod = "child".into())),
        (11, notice(|n| n.parent_socket = "/s/elsewhere".into())),
    ];
    for (pid, method) in refused {
        source.inject(from(pid), Ok(method));
    }
    let endpoint = spawn_endpoint(gc.clone(), source, CollectingSink::new(), no_reconcile());
    until(|| endpoint.stats().rejected_notices == 5).await;
    assert_eq!(
        gc.upward().unwrap().address(),
        "/s/child",
        "nothing moved it"
    );
    let endpoint = {
        let source = net.bind("/s/gc2");
        source.inject(from(11), Ok(notice(|_| {})));
        spawn_endpoint(gc.clone(), source, CollectingSink::new(), no_reconcile())
    };
    until(|| endpoint.stats().reparent_notices == 1).await;
    assert_eq!(gc.upward().unwrap().address(), "/s/root");
    assert_eq!(gc.upward().unwrap().seq(), 1);
}
