//! Black-box tests of `podctl run` and of `podctl listen` started by it
//! (DESIGN section 11), as a user runs them: real processes, sockets,
//! files and exit codes, in a temporary directory.

use std::path::Path;
use std::process::Command;

use rustix::process::Signal;
use serde_json::Value;

use super::support::{eventually, Env, Running};

/// A directory whose table is the default one, `podctl run`'s.
fn env() -> Env {
    Env::with_table("run/scope.lock")
}

impl Env {
    /// Runs podctl, expecting status 1 and one line on stderr holding
    /// `needle`.
    fn refused(&self, cmd: &mut Command, needle: &str) {
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }

    /// The records of pod `name`'s registry (default state dir).
    pub(crate) fn registry(&self, name: &str) -> Vec<Value> {
        let file = self
            .dir
            .path()
            .join("run")
            .join(name)
            .join("spawned_pods.json");
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => Vec::new(),
        }
    }

    /// `podctl listen` for the top-level pod `root`, registered with
    /// write scope on `<dir>/srv` under the listener's pid, reconciling
    /// every `reconcile_ms` (0: never).
    pub(crate) fn root(&self, reconcile_ms: &str) -> Running {
        let socket = self.path("run/root/sock");
        let mut root = Running::start(self.command().args([
            "listen",
            "--name",
            "root",
            "--reconcile-interval-ms",
            reconcile_ms,
        ]));
        root.wait_for_path(Path::new(&socket));
        let out = self.run(&[
            "scope",
            "register",
            "--scope-lock",
            &self.lock(),
            "--name",
            "root",
            "--pid",
            &root.pid().to_string(),
            "--socket",
            &socket,
            "--write",
            &self.path("srv"),
        ]);
        assert!(out.status.success(), "{out:?}");
        root
    }

    fn podctl_run(&self, name: &str, write: &str, cmd: &[&str]) -> Command {
        self.podctl_run_from("root", name, write, cmd)
    }

    /// `podctl run --from FROM --name NAME --write <dir>/WRITE -- CMD`.
    pub(crate) fn podctl_run_from(
        &self,
        from: &str,
        name: &str,
        write: &str,
        cmd: &[&str],
    ) -> Command {
        let mut command = self.command();
        command
            .args(["run", "--from", from, "--name", name, "--write"])
            .arg(self.path(write))
            .arg("--")
            .args(cmd);
        command
    }
}

#[test]
fn a_child_that_exits_without_reporting_is_reported_with_its_status() {
    let env = env();
    let mut root = env.root("0");
    // The child waits until the root has registered it (the announce and
    // the exit report travel on separate connections, so the root may
    // apply them in either order; either converges, but the line checked
    // below is printed only when the announce comes first).
    let registry = env.path("run/root/spawned_pods.json");
    let script = format!("until grep -q kid {registry} 2>/dev/null; do sleep 0.01; done; exit 3");
    let mut run = Running::start(&mut env.podctl_run("kid", "srv/a", &["sh", "-c", &script]));
    assert_eq!(
        run.wait().code(),
        Some(3),
        "podctl run exits with the child's status"
    );
    let started = run.expect("kid pid ");
    assert!(started.contains(" incarnation "), "{started}");
    run.expect("kid exited with status 3 without reporting");

    root.expect("pod `root` spawned `kid`");
    root.expect("pod `kid` shut down");
    root.expect("exited with status 3 without reporting its shutdown");
    eventually("root's registry is empty", || {
        env.registry("root").is_empty()
    });
    assert_eq!(
        env.pod_names(),
        ["root"],
        "the child's allocation was released"
    );
}

#[test]
fn podctl_run_then_podctl_listen_builds_a_tree_from_the_shell() {
    let env = env();
    let mut root = env.root("0");
    let mut run = Running::start(&mut env.podctl_run(
        "kid",
        "srv/a",
        &[
            env!("CARGO_BIN_EXE_podctl"),
            "listen",
            "--reconcile-interval-ms",
            "0",
        ],
    ));
    let kid_socket = env.path("run/kid/sock");
    let line = run.expect("kid pid ");
    let pid: u32 = line.split(' ').nth(2).unwrap().parse().unwrap();
    run.wait_for_path(Path::new(&kid_socket));

    // The listen adopted its reservation: its own process holds the grant.
    let kid = env
        .allocations()
        .into_iter()
        .find(|a| a["pod_name"] == "kid")
        .unwrap();
    assert_eq!(kid["pid"], pid, "{kid}");
    assert_eq!(kid["pid"].as_u64(), Some(u64::from(pid)));
    assert!(kid.get("pending_until").is_none_or(Value::is_null), "{kid}");
    assert_eq!(kid["delegated_from"], "root");
    root.expect("pod `root` spawned `kid`");
    assert_eq!(
        env.registry("root").len(),
        1,
        "the spawn was announced to the parent"
    );

    // SIGTERM reaches the listen through podctl run; it departs cleanly.
    assert!(run.signal(Signal::TERM).success());
    run.expect("kid exited with status 0");
    assert!(
        !run.seen.iter().any(|l| l.contains("without reporting")),
        "the listen reported its own shutdown: {:?}",
        run.seen
    );
    root.expect("pod `kid` shut down");
    eventually("root's registry is empty", || {
        env.registry("root").is_empty()
    });
    assert_eq!(env.pod_names(), ["root"]);
    assert!(root.signal(Signal::TERM).success());
}

/// `podctl listen --write P` is a top-level pod that registers its own
/// scope, held by its own process, and releases it when it stops.
#[test]
fn a_top_level_listen_registers_its_own_scope_and_releases_it_at_exit() {
    let env = env();
    let socket = env.path("run/root/sock");
    let listen = |extra: &[&str]| {
        let mut cmd = env.command();
        cmd.args(["listen", "--name", "root", "--reconcile-interval-ms", "0"])
            .args(extra);
        cmd
    };
    let srv = env.path("srv");
    let mut root = Running::start(&mut listen(&["--write", &srv]));
    root.wait_for_path(Path::new(&socket));
    let held = env.allocations();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["pod_name"], "root");
    assert_eq!(held[0]["pid"].as_u64(), Some(u64::from(root.pid())));
    assert_eq!(held[0]["socket"], socket.as_str());
    assert!(held[0]["delegated_from"].is_null(), "{held:?}");

    // A child can be spawned from it at once.
    let out = env.podctl_run("kid", "srv/a", &["true"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");

    // Its name is taken while it lives; a parent and a handoff exclude
    // registering (the spawner delegates a child's scope).
    let other = env.path("other/sock");
    env.refused(
        &mut listen(&["--socket", &other, "--write", &srv]),
        "cannot register pod `root`",
    );
    let out = listen(&["--write", &srv, "--parent-socket", &other])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    env.refused(
        listen(&["--write", &srv])
            .env("POD_NAME", "root")
            .env("POD_INCARNATION", "abc")
            .env("POD_PARENT", "up")
            .env("POD_PARENT_SOCKET", &other)
            .env("POD_SOCKET", env.path("run/root/sock2"))
            .env("POD_SCOPE_LOCK", env.lock()),
        "--write and --read register a top-level pod",
    );
    assert_eq!(env.pod_names(), ["root"]);

    assert!(root.signal(Signal::TERM).success());
    assert_eq!(env.pod_names(), Vec::<String>::new(), "released at exit");
}

#[test]
fn bad_spawns_are_refused_and_change_nothing() {
    let env = env();
    let _root = env.root("0");
    let before = env.allocations();
    let mut unknown = env.command();
    unknown.args([
        "run",
        "--from",
        "nobody",
        "--name",
        "kid",
        "--write",
        &env.path("srv/a"),
        "--",
        "true",
    ]);
    env.refused(&mut unknown, "pod `nobody` holds no allocation");
    env.refused(
        &mut env.podctl_run("kid", "elsewhere", &["true"]),
        "cannot reserve scope for pod `kid`",
    );
    env.refused(
        &mut env.podctl_run("kid", "srv/a", &["/nonexistent/program"]),
        "its reservation was released",
    );
    assert_eq!(env.allocations(), before, "nothing changed");
}

#[test]
fn listen_with_a_bad_handoff_is_refused_and_changes_nothing() {
    let env = env();
    let _root = env.root("0");
    let before = env.allocations();
    let handoff = |cmd: &mut Command, incarnation: &str, name: &str| {
        cmd.args(["listen", "--reconcile-interval-ms", "0"])
            .env("POD_NAME", name)
            .env("POD_INCARNATION", incarnation)
            .env("POD_PARENT", "root")
            .env("POD_PARENT_SOCKET", env.path("run/root/sock"))
            .env("POD_SOCKET", env.path("run/kid/sock"))
            .env("POD_SCOPE_LOCK", env.lock());
    };
    let mut bad_name = env.command();
    handoff(&mut bad_name, "abc", "bad name");
    env.refused(&mut bad_name, "POD_NAME");
    let mut no_reservation = env.command();
    handoff(&mut no_reservation, "abc", "kid");
    env.refused(&mut no_reservation, "could not adopt the reservation");

    // A reservation of another incarnation.
    let out = env.run(&[
        "scope",
        "delegate",
        "--scope-lock",
        &env.lock(),
        "--from",
        "root",
        "--name",
        "kid",
        "--pid",
        &std::process::id().to_string(),
        "--socket",
        &env.path("run/kid/sock"),
        "--write",
        &env.path("srv/a"),
    ]);
    assert!(out.status.success(), "{out:?}");
    let with_kid = env.allocations();
    let mut foreign = env.command();
    handoff(&mut foreign, "feedface", "kid");
    env.refused(&mut foreign, "could not adopt the reservation");
    assert_eq!(env.allocations(), with_kid, "the refusal changed nothing");
    assert!(
        !Path::new(&env.path("run/kid/sock")).exists(),
        "nothing listened"
    );
    assert_ne!(before, with_kid);
}
