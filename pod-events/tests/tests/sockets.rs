//! Real sockets, files and the scope-table file, in a temp dir: a tree of
//! endpoints in one process, talking over Unix sockets.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pod_events::{spawn_endpoint, CollectingSink, EndpointConfig, Parent, SocketProbe};
use pod_protocol::{PodEvent, PodName, ScopeRule};
use pod_registry::{FileRegistry, Record, Registry};
use pod_scope_lock::{FileStore, PodSpec, ScopeTable};
use pod_transport::{ListenConfig, Listener, UnixSender};

fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

struct Tree {
    dir: tempfile::TempDir,
}

impl Tree {
    fn sock(&self, name: &str) -> PathBuf {
        self.dir.path().join("run").join(format!("{name}.sock"))
    }
    fn state(&self, name: &str) -> PathBuf {
        self.dir.path().join("state").join(name)
    }
    fn spec(&self, name: &str, target: &str) -> PodSpec {
        PodSpec {
            pod_name: pod(name),
            pid: std::process::id(),
            socket: self.sock(name).display().to_string(),
            scope: vec![ScopeRule::write(target)],
        }
    }
    fn record(&self, name: &str, target: &str, callback: &str, incarnation: &str) -> Record {
        Record {
            pod_name: pod(name),
            socket_path: self.sock(name).display().to_string(),
            scope_delegated: vec![ScopeRule::write(target)],
            callback_address: self.sock(callback).display().to_string(),
            incarnation: Some(incarnation.to_owned()),
        }
    }
}

async fn send(to: &Path, event: PodEvent) {
    pod_events::send_pod_event(&UnixSender::default(), to, event)
        .await
        .unwrap();
}

/// Waits until `sink` has `n` lines (a liveness bound of 20 s, not a
/// performance assertion).
async fn lines(sink: &CollectingSink, n: usize) -> Vec<String> {
    for _ in 0..2000 {
        if sink.lines().len() >= n {
            return sink.lines();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("expected {n} lines, got {:?}", sink.lines());
}

async fn open(dir: PathBuf) -> FileRegistry {
    tokio::task::spawn_blocking(move || FileRegistry::open(dir))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_of_endpoints_relays_takes_over_and_empties() {
    let tree = Tree {
        dir: tempfile::tempdir().unwrap(),
    };
    let scopes =
        ScopeTable::with_proc_liveness(FileStore::new(tree.dir.path().join("run/scope.lock")));
    let root = scopes.register(tree.spec("root", "/srv/repo")).unwrap();
    let child = scopes
        .delegate(&root.pod_name, tree.spec("child", "/srv/repo/a"))
        .unwrap();
    let gc = scopes
        .delegate(&child.pod_name, tree.spec("gc", "/srv/repo/a/x"))
        .unwrap();
    let ggc = scopes
        .delegate(&gc.pod_name, tree.spec("ggc", "/srv/repo/a/x/y"))
        .unwrap();

    // Each parent registered the children it spawned itself.
    let root_registry = Arc::new(open(tree.state("root")).await);
    root_registry
        .add(tree.record(
            "child",
            "/srv/repo/a",
            "root",
            child.incarnation.as_deref().unwrap(),
        ))
        .await
        .unwrap();
    let child_registry = Arc::new(open(tree.state("child")).await);
    child_registry
        .add(tree.record(
            "gc",
            "/srv/repo/a/x",
            "child",
            gc.incarnation.as_deref().unwrap(),
        ))
        .await
        .unwrap();

    let config = || EndpointConfig::default().reconcile_every(None);
    let root_listener = Listener::bind(tree.sock("root"), ListenConfig::default())
        .await
        .unwrap();
    let root_stop = root_listener.shutdown_handle();
    let root_sink = CollectingSink::new();
    let root_parent = Arc::new(Parent::new(
        pod("root"),
        root_registry.clone(),
        scopes.clone(),
        SocketProbe::default(),
    ));
    let root_endpoint = spawn_endpoint(root_parent, root_listener, root_sink.clone(), config());

    let child_listener = Listener::bind(tree.sock("child"), ListenConfig::default())
        .await
        .unwrap();
    let child_stop = child_listener.shutdown_handle();
    let child_sink = CollectingSink::new();
    let child_parent = Arc::new(
        Parent::new(
            pod("child"),
            child_registry.clone(),
            scopes.clone(),
            SocketProbe::default(),
        )
        .with_upward(UnixSender::default(), tree.sock("root")),
    );
    let child_endpoint = spawn_endpoint(child_parent, child_listener, child_sink.clone(), config());

    // The child announces gc to the root; gc announces ggc to the child,
    // whose relay carries it on to the root.
    let announce = |parent: &str, sub: &str, target: &str, inc: &str| PodEvent::ScopeSubDelegated {
        parent_pod: parent.into(),
        sub_pod: sub.into(),
        sub_socket: tree.sock(sub).display().to_string(),
        scope: vec![ScopeRule::write(target)],
        sub_incarnation: Some(inc.into()),
        spawner_socket: Some(tree.sock(parent).display().to_string()),
    };
    send(
        &tree.sock("root"),
        announce(
            "child",
            "gc",
            "/srv/repo/a/x",
            gc.incarnation.as_deref().unwrap(),
        ),
    )
    .await;
    send(
        &tree.sock("child"),
        announce(
            "gc",
            "ggc",
            "/srv/repo/a/x/y",
            ggc.incarnation.as_deref().unwrap(),
        ),
    )
    .await;
    let root_lines = lines(&root_sink, 2).await;
    assert!(
        root_lines
            .iter()
            .any(|l| l.starts_with("pod `child` spawned `ggc`")),
        "{root_lines:?}"
    );
    let ggc_at_root = root_registry.get("ggc", None).unwrap();
    assert_eq!(
        ggc_at_root.callback_address,
        tree.sock("gc").display().to_string()
    );

    // A line exactly as existing Pods write it, no extension fields.
    let mut raw = std::os::unix::net::UnixStream::connect(tree.sock("root")).unwrap();
    raw.write_all(
        b"{\"method\":\"pod_event\",\"params\":{\"kind\":\"turn_ended\",\"pod_name\":\"gc\"}}\n",
    )
    .unwrap();
    drop(raw);
    assert!(lines(&root_sink, 3)
        .await
        .contains(&"pod `gc` finished a turn and is idle".to_owned()));

    // The child shuts down: the root keeps managing gc, whose scope now
    // hangs directly from the root.
    send(
        &tree.sock("root"),
        PodEvent::ShutDown {
            pod_name: "child".into(),
            incarnation: child.incarnation.clone(),
        },
    )
    .await;
    lines(&root_sink, 4).await;
    let names: Vec<String> = root_registry
        .list()
        .iter()
        .map(|r| r.pod_name.to_string())
        .collect();
    assert_eq!(names, ["gc", "ggc"]);
    assert_eq!(
        scopes.find(&pod("gc")).unwrap().unwrap().delegated_from,
        Some(pod("root"))
    );

    // gc and ggc shut down, reporting to the child, whose relays reach the
    // root: every registry ends empty, the table holds only the root.
    send(
        &tree.sock("child"),
        PodEvent::ShutDown {
            pod_name: "gc".into(),
            incarnation: gc.incarnation.clone(),
        },
    )
    .await;
    send(
        &tree.sock("child"),
        PodEvent::ShutDown {
            pod_name: "ggc".into(),
            incarnation: None,
        },
    )
    .await;
    lines(&root_sink, 6).await;
    lines(&child_sink, 3).await;

    child_stop.shutdown();
    child_endpoint.join().await;
    root_stop.shutdown();
    let stats = root_endpoint.join().await;
    assert_eq!(stats.applied, 6);
    assert!(!tree.sock("root").exists() && !tree.sock("child").exists());
    let held: Vec<String> = scopes
        .list()
        .unwrap()
        .iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(held, ["root"]);
    drop((root_registry, child_registry));
    for name in ["root", "child"] {
        let reopened = open(tree.state(name)).await;
        assert!(reopened.list().is_empty(), "{name}: {:?}", reopened.list());
        assert!(reopened.is_departed("gc", gc.incarnation.as_deref()));
    }
}
