//! Push liveness: the endpoint told of a pod's exit by its exit watch
//! (a hand-driven [`ManualExitWatch`] over in-memory layers, and the real
//! [`PidfdWatch`] over real processes) presumes it crashed at once, with
//! reconcile left as the fallback.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use pod_events::{
    send_pod_event, spawn_endpoint, CollectingSink, EndpointConfig, ExitWatch, FakeReachability,
    ManualExitWatch, Origin, Parent, PidfdWatch, SocketProbe,
};
use pod_protocol::{PodEvent, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{FileStore, PodSpec, ScopeTable};
use pod_transport::{ListenConfig, Listener, UnixSender};
use rustix::process::{kill_process, Pid, Signal};

use super::endpoint::{crashed, pod, reached, spec};

/// A liveness bound for waits, not a performance assertion; well under
/// the reconcile interval of [`RARE`].
const DEADLINE: Duration = Duration::from_secs(10);
/// A reconcile interval no test waits for.
const RARE: Duration = Duration::from_secs(60);

/// Polls `f` until it is true; fails after [`DEADLINE`].
async fn until(what: &str, f: impl FnMut() -> bool) {
    reached(what, DEADLINE, f).await;
}

/// `root` (pid 1) holding `/w`, and one registered child per name, each
/// delegated from it with its own fake pid (2, 3, ...).
async fn tree(
    names: &[&str],
) -> (
    FakeLiveness,
    ScopeTable<MemoryStore, FakeLiveness>,
    MemoryRegistry,
) {
    let liveness = FakeLiveness::new();
    let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
    liveness.spawn(1);
    let root = scopes.register(spec("root", 1, "/w")).unwrap();
    let registry = MemoryRegistry::new();
    for (pid, name) in (2..).zip(names) {
        liveness.spawn(pid);
        let allocation = scopes
            .delegate(&root.pod_name, spec(name, pid, &format!("/w/{name}")))
            .unwrap();
        registry
            .add(Record {
                pod_name: pod(name),
                socket_path: format!("/s/{name}"),
                scope_delegated: allocation.scope_allow.clone(),
                callback_address: "/s/root".into(),
                incarnation: allocation.incarnation.clone(),
            })
            .await
            .unwrap();
    }
    (liveness, scopes, registry)
}

/// The endpoint's configuration in these tests: `watch`, no grace, and
/// reconcile only at start.
fn config(watch: impl ExitWatch) -> EndpointConfig {
    EndpointConfig::default()
        .reconcile_every(Some(RARE))
        .exit_watch(Some(Arc::new(watch)))
        .exit_grace(Duration::ZERO)
}

#[tokio::test]
async fn a_reported_exit_is_presumed_crashed_once_and_a_false_alarm_changes_nothing() {
    let (liveness, scopes, registry) = tree(&["w2", "w3"]).await;
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry.clone(),
        scopes.clone(),
        FakeReachability::new(),
    ));
    let watch = ManualExitWatch::new();
    let sink = CollectingSink::new();
    let net = pod_transport::testing::MemoryNetwork::new();
    let endpoint = spawn_endpoint(
        parent,
        net.bind("/s/root"),
        sink.clone(),
        config(watch.clone()),
    );
    // The reconcile at start watches every live registered pod.
    until("both pods are watched", || endpoint.stats().watching == 2).await;

    liveness.kill(2);
    assert_eq!(watch.exit("w2"), 1);
    until("w2 is presumed crashed", || !sink.lines().is_empty()).await;
    // w3's process is alive: an exit reported for it is a false alarm.
    assert_eq!(watch.exit("w3"), 1);
    until("both exits are handled", || endpoint.stats().watching == 0).await;
    let stats = endpoint.stop().await;

    let notes = sink.notifications();
    assert_eq!(notes.len(), 1, "{:?}", sink.lines());
    assert_eq!(notes[0].line, crashed("w2"));
    assert_eq!(notes[0].origin, Origin::Inferred);
    assert_eq!((stats.exits_presumed, stats.reconciles), (1, 1));
    let names: Vec<_> = registry.list().into_iter().map(|r| r.pod_name).collect();
    assert_eq!(names, [pod("w3")]);
    assert!(
        scopes.find(&pod("w2")).unwrap().is_none(),
        "w2's scope released"
    );
    assert!(scopes.find(&pod("w3")).unwrap().is_some());
}

#[tokio::test]
async fn past_the_bound_pods_are_left_to_reconcile_and_counted() {
    let (_liveness, scopes, registry) = tree(&["w2", "w3", "w4"]).await;
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry,
        scopes,
        FakeReachability::new(),
    ));
    let watch = ManualExitWatch::new();
    let net = pod_transport::testing::MemoryNetwork::new();
    let endpoint = spawn_endpoint(
        parent,
        net.bind("/s/root"),
        CollectingSink::new(),
        config(watch.clone()).max_exit_watches(2),
    );
    until("the reconcile at start ran", || {
        endpoint.stats().reconciles == 1
    })
    .await;
    let stats = endpoint.stop().await;
    assert_eq!((stats.watching, stats.unwatched_over_bound), (2, 1));
    assert!(watch.watched().is_empty(), "stopping ends every watch");
}

#[tokio::test]
async fn a_watch_that_cannot_watch_leaves_the_pod_to_reconcile() {
    let (liveness, scopes, registry) = tree(&["w2"]).await;
    let parent = Arc::new(Parent::new(
        pod("root"),
        registry.clone(),
        scopes,
        FakeReachability::new(),
    ));
    let watch = ManualExitWatch::new();
    watch.refuse(true);
    let net = pod_transport::testing::MemoryNetwork::new();
    let sink = CollectingSink::new();
    let endpoint = spawn_endpoint(parent, net.bind("/s/root"), sink.clone(), config(watch));
    until("the reconcile at start ran", || {
        endpoint.stats().reconciles == 1
    })
    .await;
    liveness.kill(2);
    let stats = endpoint.stop().await;
    assert_eq!((stats.watching, stats.unwatchable), (0, 1));
    assert!(sink.lines().is_empty());
    assert_eq!(registry.list().len(), 1, "left for the next reconcile");
}

/// The acceptance test of push liveness: with the reconcile interval at a
/// minute, a registered child SIGKILLed is rendered "presumed crashed"
/// long before the minute is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_child_is_presumed_crashed_long_before_the_reconcile_interval() {
    let dir = tempfile::tempdir().unwrap();
    let scopes = ScopeTable::with_proc_liveness(FileStore::new(dir.path().join("scope.lock")));
    let socket = dir.path().join("root/sock");
    let me = std::process::id();
    let root = scopes
        .register(PodSpec {
            pod_name: pod("root"),
            pid: me,
            socket: socket.display().to_string(),
            scope: vec![ScopeRule::write("/srv")],
        })
        .unwrap();
    let mut kid_process = Command::new("sleep")
        .arg("600")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let kid = scopes
        .delegate(
            &root.pod_name,
            PodSpec {
                pod_name: pod("kid"),
                pid: kid_process.id(),
                socket: dir.path().join("kid/sock").display().to_string(),
                scope: vec![ScopeRule::write("/srv/kid")],
            },
        )
        .unwrap();

    let parent = Arc::new(Parent::new(
        pod("root"),
        MemoryRegistry::new(),
        scopes.clone(),
        SocketProbe::default(),
    ));
    let listener = Listener::bind(&socket, ListenConfig::default())
        .await
        .unwrap();
    let sink = CollectingSink::new();
    let config = EndpointConfig::default()
        .reconcile_every(Some(RARE))
        .exit_watch(Some(Arc::new(PidfdWatch::new())));
    let endpoint = spawn_endpoint(parent.clone(), listener, sink.clone(), config);
    // The root (this process) announces its child, as a spawner does.
    send_pod_event(
        &UnixSender::default(),
        &socket,
        PodEvent::ScopeSubDelegated {
            parent_pod: "root".into(),
            sub_pod: "kid".into(),
            sub_socket: kid.socket.clone(),
            scope: kid.scope_allow.clone(),
            sub_incarnation: kid.incarnation.clone(),
            spawner_socket: Some(socket.display().to_string()),
        },
    )
    .await
    .unwrap();
    until("kid is watched", || endpoint.stats().watching == 1).await;

    kill_process(
        Pid::from_raw(kid_process.id() as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    until("kid is presumed crashed", || {
        sink.lines().contains(&crashed("kid"))
    })
    .await;
    kid_process.wait().unwrap();
    let stats = endpoint.stop().await;
    assert_eq!(stats.exits_presumed, 1);
    assert_eq!(stats.reconciles, 1, "only the reconcile at start ran");
    assert!(parent.registry().list().is_empty());
    assert!(
        scopes.find(&pod("kid")).unwrap().is_none(),
        "kid's scope released"
    );
}

/// Through the facade: a child `Pod::spawn` started is watched from its
/// first moment, so its death is seen even before it adopts its
/// reservation (`sleep` never does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_child_killed_before_it_adopts_is_presumed_crashed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("repo");
    let mut root = pod_events::Pod::builder("root", dir.path())
        .unwrap()
        .write(&work)
        .reconcile_every(Some(RARE))
        .start()
        .await
        .unwrap();
    let mut command = tokio::process::Command::new("sleep");
    command.arg("600").stdin(Stdio::null()).kill_on_drop(true);
    let mut child = root
        .spawn(
            &mut command,
            "kid",
            [ScopeRule::write(work.join("kid").display().to_string())],
        )
        .await
        .unwrap();
    kill_process(Pid::from_raw(child.pid as i32).unwrap(), Signal::KILL).unwrap();
    // The reconcile at start may have found the reservation first (an
    // adoption line); what matters is the crash, before the interval.
    let heard = async {
        while let Some(note) = root.next_notification().await {
            if note.line == crashed("kid") {
                return;
            }
        }
    };
    tokio::time::timeout(DEADLINE, heard)
        .await
        .expect("kid's death is reported long before the reconcile interval");
    assert!(root.pods().is_empty());
    root.wait(&mut child).await.unwrap();
    root.shut_down().await.unwrap();
}
