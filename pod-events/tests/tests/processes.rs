//! The lifecycle across real processes: this test binary re-executes
//! itself (`current_exe() --exact <role test>`) with a role in
//! `POD_EVENTS_TEST_ROLE`; a role's test does nothing without it.
//!
//! - a three-level tree (root in this process, child and grandchild in
//!   their own) built through the [`Pod`] facade alone ends with every
//!   registry and the scope table empty;
//! - SIGKILL of the spawner between reserve and spawn, of a child before
//!   it adopts and after: the table converges by reclaim to no allocation,
//!   and a late adoption is refused, so no second process ever holds the
//!   grant.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pod_events::{Handoff, Parent, Pod, PodContext, SocketProbe, Spawner};
use pod_protocol::{PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_scope_lock::{FileStore, PodSpec, ScopeError, ScopeTable};
use rustix::process::{kill_process, Pid, Signal};

const ROLE: &str = "POD_EVENTS_TEST_ROLE";
/// A liveness bound for waits on other processes, not a performance
/// assertion.
const DEADLINE: Duration = Duration::from_secs(30);

fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// This binary, to run the role test `test` as `role`.
fn role_command(test: &str, role: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(ROLE, role)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    command
}

fn sigkill(pid: u32) {
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
}

/// Polls `f` until it returns `Some`; fails after [`DEADLINE`].
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{what}: not reached in {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What follows `prefix` on the first line of `stdout` holding it.
async fn line_after(stdout: tokio::process::ChildStdout, prefix: &str) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let read = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // The harness starts the line with the test's name.
            if let Some((_, rest)) = line.split_once(prefix) {
                return rest.trim().to_owned();
            }
        }
        panic!("the role ended without printing {prefix:?}");
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the role printed its line")
}

/// The records of the registry file in `state_dir` (no file: none).
fn registry_records(state_dir: &Path) -> Vec<serde_json::Value> {
    match std::fs::read(state_dir.join("spawned_pods.json")) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => panic!("{e}"),
    }
}

const TREE_ROLE_TEST: &str = "tests::processes::tree_role";

/// The child and grandchild of [`a_three_level_tree_through_the_facade_ends_empty`].
#[tokio::test]
async fn tree_role() {
    let Some(role) = role() else { return };
    let pod = Pod::from_env().unwrap().start().await.unwrap();
    match role.as_str() {
        "child" => {
            let scope = pod.context().unwrap().allocation().scope_allow[0]
                .target
                .clone();
            let mut gc = pod
                .spawn(
                    &mut role_command(TREE_ROLE_TEST, "grandchild"),
                    "gc",
                    [ScopeRule::write(format!("{scope}/deeper"))],
                )
                .await
                .unwrap();
            assert!(pod.wait(&mut gc).await.unwrap().success());
            assert!(
                pod.pods().is_empty(),
                "the grandchild's departure emptied the child's registry"
            );
        }
        "grandchild" => pod.turn_ended(),
        other => panic!("unknown role {other}"),
    }
    let departure = pod.shut_down().await.unwrap();
    assert!(
        departure.first && departure.reported,
        "{role}: {departure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_three_level_tree_through_the_facade_ends_empty() {
    if role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("repo");
    let mut root = Pod::builder("root", dir.path())
        .unwrap()
        .write(&work)
        .start()
        .await
        .unwrap();
    let mut child = root
        .spawn(
            &mut role_command(TREE_ROLE_TEST, "child"),
            "child",
            [ScopeRule::write(work.join("a").display().to_string())],
        )
        .await
        .unwrap();
    // (Its grandchild may be registered already too: the child runs.)
    assert!(
        root.pods().iter().any(|r| r.pod_name.as_str() == "child"),
        "the spawner registers its child at once"
    );
    assert!(
        root.wait(&mut child).await.unwrap().success(),
        "the child's role failed"
    );

    // The root hears of the grandchild (relayed by the child), and of both
    // departures.
    let mut heard = Vec::new();
    while !(heard.contains(&"sub gc")
        && heard.contains(&"down gc")
        && heard.contains(&"down child"))
    {
        let note = tokio::time::timeout(DEADLINE, root.next_notification())
            .await
            .unwrap_or_else(|_| panic!("the root heard every event; it heard {heard:?}"))
            .unwrap();
        heard.push(match &note.event {
            PodEvent::ScopeSubDelegated { sub_pod, .. } if sub_pod == "gc" => "sub gc",
            PodEvent::ShutDown { pod_name, .. } if pod_name == "gc" => "down gc",
            PodEvent::ShutDown { pod_name, .. } if pod_name == "child" => "down child",
            _ => "other",
        });
    }
    eventually("the root's registry is empty", || {
        root.pods().is_empty().then_some(())
    })
    .await;
    let table = ScopeTable::with_proc_liveness(FileStore::new(dir.path().join("scope.lock")));
    let names = |t: &ScopeTable<FileStore>| -> Vec<String> {
        t.list()
            .unwrap()
            .into_iter()
            .map(|a| a.pod_name.to_string())
            .collect()
    };
    assert_eq!(
        names(&table),
        ["root"],
        "children released their allocations"
    );
    let departure = root.shut_down().await.unwrap();
    assert!(departure.first && departure.released.is_some());
    assert!(names(&table).is_empty(), "the scope table ends empty");
    for pod in ["root", "child", "gc"] {
        assert_eq!(
            registry_records(&dir.path().join(pod)),
            Vec::<serde_json::Value>::new(),
            "{pod}'s registry"
        );
    }
}

/// A table in a fresh private directory, with `holder` (a live pid)
/// registered as `sp` with write scope on `/srv`.
fn table_with_spawner(dir: &Path, holder: u32) -> ScopeTable<FileStore> {
    let table = ScopeTable::with_proc_liveness(FileStore::new(dir.join("scope.lock")));
    table
        .register(PodSpec {
            pod_name: pod("sp"),
            pid: holder,
            socket: dir.join("sp/sock").display().to_string(),
            scope: vec![ScopeRule::write("/srv")],
        })
        .unwrap();
    table
}

fn kid_spec(dir: &Path) -> PodSpec {
    PodSpec {
        pod_name: pod("kid"),
        pid: 0,
        socket: dir.join("kid/sock").display().to_string(),
        scope: vec![ScopeRule::write("/srv/kid")],
    }
}

/// Reclaims until `name` is gone from the table.
async fn reclaimed(table: &ScopeTable<FileStore>, name: &str) {
    eventually(&format!("`{name}` is reclaimed"), || {
        table.reclaim_stale().unwrap();
        table.find(&pod(name)).unwrap().is_none().then_some(())
    })
    .await;
}

/// After `kid`'s holder died, no live process can take the grant.
fn late_adoption_is_refused(table: &ScopeTable<FileStore>, incarnation: &str) {
    let error = table
        .adopt(&pod("kid"), incarnation, std::process::id())
        .unwrap_err();
    assert!(
        matches!(
            error,
            ScopeError::UnknownPod { .. } | ScopeError::ReservationExpired { .. }
        ),
        "{error}"
    );
}

const SPAWNER_ROLE_TEST: &str = "tests::processes::spawner_role";

/// A spawner that registers, reserves, says so, and then waits (for the
/// SIGKILL) before it would spawn.
#[test]
fn spawner_role() {
    if role().as_deref() != Some("spawner") {
        return;
    }
    let dir = PathBuf::from(std::env::var_os("POD_EVENTS_TEST_DIR").unwrap());
    let table = table_with_spawner(&dir, std::process::id());
    let reservation = table.reserve(&pod("sp"), kid_spec(&dir)).unwrap();
    println!("RESERVED {}", reservation.incarnation.unwrap());
    std::thread::sleep(DEADLINE * 2);
}

#[tokio::test]
async fn a_spawner_killed_between_reserve_and_spawn_leaks_nothing() {
    if role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut spawner = role_command(SPAWNER_ROLE_TEST, "spawner")
        .env("POD_EVENTS_TEST_DIR", dir.path())
        .spawn()
        .unwrap();
    let spawner_pid = spawner.id().unwrap();
    let incarnation = line_after(spawner.stdout.take().unwrap(), "RESERVED ").await;
    let table = ScopeTable::with_proc_liveness(FileStore::new(dir.path().join("scope.lock")));
    let held = table.find(&pod("kid")).unwrap().unwrap();
    assert_eq!(
        held.pid, spawner_pid,
        "the reservation is held under the spawner"
    );

    sigkill(spawner_pid);
    spawner.wait().await.unwrap();
    reclaimed(&table, "kid").await;
    assert!(
        table.list().unwrap().is_empty(),
        "spawner and reservation both reclaimed"
    );
    late_adoption_is_refused(&table, &incarnation);
}

/// A spawner in this process, its table's reservations short-lived.
fn spawner_here(
    dir: &Path,
) -> (
    ScopeTable<FileStore>,
    Spawner<MemoryRegistry, FileStore, pod_scope_lock::ProcLiveness>,
) {
    let table = table_with_spawner(dir, std::process::id())
        .with_reservation_deadline(Duration::from_millis(300));
    let parent = Parent::new(
        pod("sp"),
        MemoryRegistry::new(),
        table.clone(),
        SocketProbe::default(),
    );
    let socket = dir.join("sp/sock").display().to_string();
    let spawner = Spawner::new(Arc::new(parent), socket, dir.join("scope.lock"));
    (table, spawner)
}

#[tokio::test]
async fn a_child_killed_before_it_adopts_leaks_nothing() {
    if role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (table, spawner) = spawner_here(dir.path());
    // A program not built on these crates: it never adopts.
    let mut command = tokio::process::Command::new("sleep");
    command.arg("1000").kill_on_drop(true);
    let child = spawner
        .spawn(&mut command, pod("kid"), vec![ScopeRule::write("/srv/kid")])
        .await
        .unwrap();
    let held = table.find(&pod("kid")).unwrap().unwrap();
    assert_eq!(
        held.pid,
        std::process::id(),
        "held under the spawner, not the child"
    );
    assert!(held.pending_until.is_some());

    sigkill(child.pid);
    reclaimed(&table, "kid").await;
    late_adoption_is_refused(&table, &child.incarnation);
    let names: Vec<_> = table
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name)
        .collect();
    assert_eq!(names, [pod("sp")], "only the live spawner is left");
}

const ADOPTER_ROLE_TEST: &str = "tests::processes::adopter_role";

/// A child that adopts, says so, and waits for the SIGKILL.
#[tokio::test]
async fn adopter_role() {
    if role().as_deref() != Some("adopter") {
        return;
    }
    let context = PodContext::from_env().await.unwrap();
    println!("ADOPTED {}", context.allocation().pid);
    tokio::time::sleep(DEADLINE * 2).await;
}

#[tokio::test]
async fn a_child_killed_after_it_adopts_leaks_nothing() {
    if role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (table, spawner) = spawner_here(dir.path());
    let mut child = spawner
        .spawn(
            &mut role_command(ADOPTER_ROLE_TEST, "adopter"),
            pod("kid"),
            vec![ScopeRule::write("/srv/kid")],
        )
        .await
        .unwrap();
    let adopted: u32 = line_after(child.process.stdout.take().unwrap(), "ADOPTED ")
        .await
        .parse()
        .unwrap();
    assert_eq!(adopted, child.pid);
    let held = table.find(&pod("kid")).unwrap().unwrap();
    assert_eq!(
        (held.pid, held.pending_until),
        (child.pid, None),
        "the child's own process holds it"
    );
    // The spawner's claim ended with the adoption: its own allocation is
    // all it holds.
    assert_eq!(
        table
            .list()
            .unwrap()
            .iter()
            .filter(|a| a.pid == std::process::id())
            .count(),
        1
    );

    sigkill(child.pid);
    child.process.wait().await.unwrap();
    reclaimed(&table, "kid").await;
    late_adoption_is_refused(&table, &child.incarnation);
}

#[tokio::test]
async fn a_handoff_round_trips_through_a_real_environment() {
    if role().is_some() {
        return;
    }
    let handoff = Handoff::new(
        pod("kid"),
        "abc123".into(),
        pod("sp"),
        "/run/pods/sp/sock".into(),
        "/run/pods/kid/sock".into(),
        std::path::PathBuf::from("/run/pods/scope.lock"),
    );
    let mut command = tokio::process::Command::new("/usr/bin/env");
    command.stdout(Stdio::piped()).env_clear();
    handoff.apply_to(&mut command);
    let out = command.output().await.unwrap();
    let env: std::collections::HashMap<String, std::ffi::OsString> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.into()))
        .collect();
    assert_eq!(
        Handoff::from_lookup(|k| env.get(k).cloned()).unwrap(),
        handoff
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_pod_gives_its_scope_back_and_a_conflict_names_the_holder() {
    if role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let table = ScopeTable::with_proc_liveness(FileStore::new(dir.path().join("scope.lock")));
    let first = Pod::builder("first", dir.path())
        .unwrap()
        .write("/srv/shared")
        .start()
        .await
        .unwrap();
    let error = Pod::builder("second", dir.path())
        .unwrap()
        .write("/srv/shared/part")
        .start()
        .await
        .unwrap_err();
    match error {
        pod_events::PodError::Register {
            source: ScopeError::WriteConflict { competitor, .. },
            ..
        } => assert_eq!(competitor.as_str(), "first"),
        other => panic!("{other}"),
    }
    assert_eq!(
        table.list().unwrap().len(),
        1,
        "the refused pod holds nothing"
    );
    assert!(!dir.path().join("second/sock").exists(), "nor listens");
    drop(first);
    assert!(
        table.list().unwrap().is_empty(),
        "the drop released the allocation"
    );
}
