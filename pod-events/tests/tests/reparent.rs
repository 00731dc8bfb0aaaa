//! Orphans find their new manager (DESIGN section 12), with real
//! processes: a tree built with `podctl run ... -- podctl listen`, the
//! middle pod SIGKILLed, and the grandchild's reports reaching the root.

use std::path::Path;
use std::process::{Child, Command};

use rustix::process::Signal;
use serde_json::{json, Value};

use super::support::{eventually, Env, Running};

/// `podctl run --from FROM --name NAME --write WRITE -- podctl listen`,
/// once the listen's socket is there; with the listen's pid.
fn spawn_listen(env: &Env, from: &str, name: &str, write: &str) -> (Running, u32) {
    let podctl = env!("CARGO_BIN_EXE_podctl");
    let listen = [podctl, "listen", "--reconcile-interval-ms", "0"];
    let mut run = Running::start(&mut env.podctl_run_from(from, name, write, &listen));
    let line = run.expect(&format!("{name} pid "));
    let pid = line.split(' ').nth(2).unwrap().parse().unwrap();
    run.wait_for_path(Path::new(&env.path(&format!("run/{name}/sock"))));
    (run, pid)
}

/// The record of `pod` in `holder`'s registry.
fn record(env: &Env, holder: &str, pod: &str) -> Option<Value> {
    env.registry(holder)
        .into_iter()
        .find(|r| r["pod_name"] == pod)
}

/// root > child > gc, each a `podctl listen` (the last two started by
/// `podctl run`), then `child` SIGKILLed: returns the root and gc's
/// `podctl run` once the root has told `gc` to report to it.
fn tree_with_the_child_killed(env: &Env) -> (Running, Running) {
    // The root reconciles, so the notice goes out even when the child's
    // supervisor released the child's allocation before the root applied
    // its ShutDown (then the root's release moved nothing).
    let mut root = env.root("200");
    let (mut child_run, child_pid) = spawn_listen(env, "root", "child", "srv/a");
    root.expect("pod `root` spawned `child`");
    let (gc_run, _) = spawn_listen(env, "child", "gc", "srv/a/gc");
    root.expect("pod `child` spawned `gc`");
    let (root_socket, child_socket) = (env.path("run/root/sock"), env.path("run/child/sock"));
    assert_eq!(
        record(env, "root", "gc").unwrap()["callback_address"],
        child_socket
    );

    // SIGKILL: the child reports nothing; its supervisor does.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(child_pid as i32).unwrap(),
        Signal::KILL,
    )
    .unwrap();
    assert_eq!(child_run.wait().code(), Some(128 + 9));
    root.expect("pod `child` shut down");
    assert_eq!(allocation(env, "gc")["delegated_from"], "root");
    // The root told `gc`, and its registry and the table agree.
    eventually("root's record of gc points at the root", || {
        record(env, "root", "gc").is_some_and(|r| r["callback_address"] == root_socket)
    });
    (root, gc_run)
}

fn allocation(env: &Env, pod: &str) -> Value {
    env.allocations()
        .into_iter()
        .find(|a| a["pod_name"] == pod)
        .unwrap()
}

/// `gc` is told of a child of its own, `name`, held by a `sleep`; returns
/// the sleep.
fn announce_to_gc(env: &Env, name: &str) -> Child {
    let process = Command::new("sleep").arg("600").spawn().unwrap();
    let target = env.path(&format!("srv/a/gc/{name}"));
    env.allocate(Some("gc"), name, process.id(), &target);
    env.send(
        &env.path("run/gc/sock"),
        json!({
            "kind": "scope_sub_delegated",
            "parent_pod": "gc",
            "sub_pod": name,
            "sub_socket": env.socket(name),
            "scope": [{"target": target, "permission": "write", "recursive": true}],
        }),
    );
    process
}

#[test]
fn an_orphan_reports_to_its_new_manager_once_its_parent_is_killed() {
    let env = Env::with_table("run/scope.lock");
    let (mut root, mut gc_run) = tree_with_the_child_killed(&env);

    // `gc`'s own child is announced to `gc`; its relay reaches the root.
    let mut ggc = announce_to_gc(&env, "ggc");
    root.expect("pod `gc` spawned `ggc`");

    // `gc` exits cleanly: its own ShutDown reaches the root too.
    assert!(gc_run.signal(Signal::TERM).success());
    gc_run.expect("gc exited with status 0");
    root.expect("pod `gc` shut down");
    assert!(
        !gc_run.seen.iter().any(|l| l.contains("without reporting")),
        "gc reported its own shutdown: {:?}",
        gc_run.seen
    );
    ggc.kill().unwrap();
    ggc.wait().unwrap();
    eventually("the root's registry and the table are empty", || {
        env.registry("root").is_empty() && env.pod_names() == ["root"]
    });
    assert!(root.signal(Signal::TERM).success());
}

#[test]
fn a_restarted_parent_takes_its_children_back() {
    let env = Env::with_table("run/scope.lock");
    let (mut root, mut gc_run) = tree_with_the_child_killed(&env);

    // `child` restarts under its name, its state directory intact, and
    // takes back its old scope with the child its death moved up.
    let mut child = Running::start(env.command().args([
        "listen",
        "--name",
        "child",
        "--reconcile-interval-ms",
        "200",
    ]));
    child.wait_for_path(Path::new(&env.path("run/child/sock.control")));
    let taken = env.json(&[
        "scope",
        "delegate",
        "--from",
        "root",
        "--name",
        "child",
        "--pid",
        &child.pid().to_string(),
        "--write",
        &env.path("srv/a"),
        "--take-back",
        &env.path("run/child"),
    ]);
    let names: Vec<&str> = taken
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["pod_name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["child", "gc"], "{taken}");
    let gc = allocation(&env, "gc");
    assert_eq!(
        (gc["delegated_from"].as_str(), gc["reparented"].as_u64()),
        (Some("child"), Some(2))
    );

    // The restarted child tells `gc`, whose relays reach it again.
    let mut ggc = announce_to_gc(&env, "ggc");
    child.expect("pod `gc` spawned `ggc`");
    let child_socket = env.path("run/child/sock");
    eventually("the root's record of gc points at the child again", || {
        record(&env, "root", "gc").is_some_and(|r| r["callback_address"] == child_socket)
    });

    assert!(gc_run.signal(Signal::TERM).success());
    child.expect("pod `gc` shut down");
    ggc.kill().unwrap();
    ggc.wait().unwrap();
    assert!(child.signal(Signal::TERM).success());
    assert!(root.signal(Signal::TERM).success());
}
