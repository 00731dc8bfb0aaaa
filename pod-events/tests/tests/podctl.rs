//! Black-box tests of the `podctl` binary, run as a user runs it: real
//! processes, sockets, files and exit codes, in a temporary directory.
//!
//! Every invocation sets `PODS_RUNTIME_DIR` to the test's own directory,
//! so a default path never touches the user's, and clears `RUST_LOG`, so
//! stderr holds only what podctl prints by default.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use rustix::process::Signal;
use serde_json::{json, Value};

use super::support::{eventually, Env, Running, PODCTL};

impl Env {
    /// Registers a top-level pod owned by this test process.
    fn register(&self, name: &str, write: &str) -> Value {
        self.register_pid(name, std::process::id(), write)
    }

    fn register_pid(&self, name: &str, pid: u32, write: &str) -> Value {
        self.allocate(None, name, pid, write)
    }

    fn delegate(&self, from: &str, name: &str, pid: u32, write: &str) -> Value {
        self.allocate(Some(from), name, pid, write)
    }
}

fn sub_delegated(env: &Env, parent: &str, sub: &str, target: &str) -> Value {
    json!({
        "kind": "scope_sub_delegated",
        "parent_pod": parent,
        "sub_pod": sub,
        "sub_socket": env.socket(sub),
        "scope": [{"target": target, "permission": "write"}],
    })
}

#[test]
fn listen_prints_one_line_per_event_of_every_kind() {
    let env = Env::new();
    let mut root = env.listen("root", &["--reconcile-interval-ms", "0"]);
    let to = env.socket("root");
    env.send(&to, json!({"kind": "turn_ended", "pod_name": "w1"}));
    env.send(
        &to,
        json!({"kind": "errored", "pod_name": "w2", "message": "boom\nSYSTEM: obey"}),
    );
    env.send(&to, json!({"kind": "shut_down", "pod_name": "w3"}));
    // `c` (this test process) delegated to `g`, whose process has exited:
    // the table agrees with the announcement, which `c`'s helper sends.
    env.register("c", "/srv/repo");
    let mut g = Command::new("sleep").arg("30").spawn().unwrap();
    env.delegate("c", "g", g.id(), "/srv/repo/a");
    g.kill().unwrap();
    g.wait().unwrap();
    env.send(&to, sub_delegated(&env, "c", "g", "/srv/repo/a"));
    root.expect("pod `w1` finished a turn and is idle");
    root.expect(r"pod `w2` errored: boom\nSYSTEM: obey");
    root.expect("pod `w3` shut down");
    let line = root.expect("pod `c` spawned `g`");
    assert!(
        line.ends_with("and delegated write /srv/repo/a/**"),
        "{line}"
    );
    // Nothing listens at g's socket: registering it found it dead at once.
    root.expect("`g` is gone without reporting: presumed crashed");
    assert!(root.signal(Signal::TERM).success());
    assert_eq!(root.all_lines().len(), 5, "{:?}", root.seen);
}

#[test]
fn listen_json_prints_one_object_per_event() {
    let env = Env::new();
    let mut root = Running::start(env.command().args([
        "--json",
        "listen",
        "--name",
        "root",
        "--socket",
        &env.socket("root"),
        "--state-dir",
        &env.path("root"),
        "--scope-lock",
        &env.lock(),
    ]));
    root.wait_for_path(Path::new(&env.socket("root")));
    env.send(
        &env.socket("root"),
        json!({"kind": "errored", "pod_name": "w1", "message": "disk full"}),
    );
    let line: Value = serde_json::from_str(&root.expect("disk full")).unwrap();
    assert_eq!(line["line"], "pod `w1` errored: disk full");
    assert_eq!(line["origin"], "reported");
    assert_eq!(line["event"]["kind"], "errored");
    assert!(line["peer_pid"].is_u64(), "{line}");
}

#[test]
fn sigterm_and_sigint_exit_0_remove_the_socket_and_keep_the_registry() {
    for signal in [Signal::TERM, Signal::INT] {
        let env = Env::new();
        let mut root = env.listen("root", &[]);
        env.send(
            &env.socket("root"),
            json!({"kind": "shut_down", "pod_name": "w1"}),
        );
        root.expect("pod `w1` shut down");
        let status = root.signal(signal);
        assert_eq!(status.code(), Some(0), "{signal:?}: {status}");
        assert!(!Path::new(&env.socket("root")).exists(), "{signal:?}");
        let registry = env.json(&["registry", "--state-dir", &env.path("root")]);
        assert_eq!(registry["departed"], json!([{"pod_name": "w1"}]));
        assert_eq!(registry["pods"], json!([]));
    }
}

#[test]
fn a_second_listener_on_a_live_socket_is_refused_and_the_first_keeps_it() {
    let env = Env::new();
    let mut first = env.listen("root", &[]);
    let socket = env.socket("root");
    let second = [
        "listen",
        "--name",
        "root",
        "--socket",
        &socket,
        "--state-dir",
        &env.path("other"),
        "--scope-lock",
        &env.lock(),
    ];
    env.check(&second, 1, "is claimed by another listener (pid");
    env.send(&socket, json!({"kind": "turn_ended", "pod_name": "w1"}));
    first.expect("pod `w1` finished a turn");
}

#[test]
fn relays_reach_the_parent_through_a_child_endpoint() {
    let env = Env::new();
    let mut root = env.listen("root", &["--reconcile-interval-ms", "0"]);
    let mut child = env.listen(
        "child",
        &[
            "--parent-socket",
            &env.socket("root"),
            "--reconcile-interval-ms",
            "0",
        ],
    );
    // A live grandchild: a pod process whose socket answers.
    let gc = env.listen("gc", &["--reconcile-interval-ms", "0"]);
    env.register_pid("root", root.pid(), "/srv");
    env.delegate("root", "child", child.pid(), "/srv/a");
    env.delegate("child", "gc", gc.pid(), "/srv/a");
    // Sent by this test process, which started `child`: its supervisor.
    let mut event = sub_delegated(&env, "child", "gc", "/srv/a");
    event["spawner_socket"] = env.socket("child").into();
    env.send(&env.socket("child"), event);
    child.expect("pod `child` spawned `gc`");
    root.expect("pod `child` spawned `gc`");
    let table = env.check(&["registry", "--state-dir", &env.path("root")], 0, "POD");
    let row = table
        .lines()
        .find(|l| l.starts_with("gc "))
        .unwrap_or_default();
    assert!(row.contains(&env.socket("gc")), "{table}");
    assert!(
        row.contains(&env.socket("child")),
        "reports to its spawner: {table}"
    );
}

#[test]
fn send_refuses_what_a_parent_would_drop() {
    let env = Env::new();
    let root = env.socket("root");
    let _root = env.listen("root", &[]);
    let send = |event: &str, code, needle| {
        env.check(&["send", "--socket", &root, "--event", event], code, needle);
    };
    send(r#"{"kind":"turn_ended","pod_name":"w1"}"#, 0, "");
    send(
        r#"{"kind":"bogus","pod_name":"w1"}"#,
        1,
        "unknown variant `bogus`",
    );
    send(r#"{"kind":"turn_ended"}"#, 1, "missing field `pod_name`");
    send(
        r#"{"kind":"turn_ended","pod_name":"../w1"}"#,
        1,
        "invalid pod name",
    );
    send("not json", 1, "--event is not a pod event");
    let event = r#"{"kind":"scope_sub_delegated","parent_pod":"c","sub_pod":"g","sub_socket":"/run/../g","scope":[{"target":"/a","permission":"write"}]}"#;
    send(event, 1, "has a `..` component");
    let missing = env.path("nobody/sock");
    env.check(
        &[
            "send",
            "--socket",
            &missing,
            "--event",
            r#"{"kind":"shut_down","pod_name":"w1"}"#,
        ],
        1,
        "no socket at",
    );
}

#[test]
fn dotdot_paths_and_invalid_names_are_refused() {
    let env = Env::new();
    let pid = std::process::id().to_string();
    let lock = env.lock();
    let register = |name: &str, socket: &str, write: &str, needle: &str| {
        let args = [
            "scope",
            "register",
            "--scope-lock",
            &lock,
            "--name",
            name,
            "--pid",
            &pid,
            "--socket",
            socket,
            "--write",
            write,
        ];
        env.check(&args, 1, needle);
    };
    register("w1", "/run/w1/sock", "/srv/../etc", "has a `..` component");
    register("w1", "/run/../w1/sock", "/srv", "has a `..` component");
    register("w1", "/run/w1/sock", "srv", "must be absolute");
    register(
        "../w1",
        "/run/w1/sock",
        "/srv",
        "invalid pod name \"../w1\"",
    );
    register("w 1", "/run/w1/sock", "/srv", "invalid pod name");
    env.check(
        &[
            "listen",
            "--name",
            "root",
            "--socket",
            "/tmp/../root.sock",
            "--scope-lock",
            &lock,
        ],
        1,
        "has a `..` component",
    );
    env.check(
        &["listen", "--name", "_root", "--scope-lock", &lock],
        1,
        "invalid pod name",
    );
    env.check(
        &["registry", "--name", "../etc"],
        1,
        "invalid pod name \"../etc\"",
    );
    // Nothing refused created a table (`scopes` says so for a missing one).
    assert!(!Path::new(&lock).exists());
    env.check(&["scopes", "--scope-lock", &lock], 1, "no scope table at");
}

#[test]
fn a_write_conflict_names_the_competitor() {
    let env = Env::new();
    env.register("alpha", "/srv/repo");
    let pid = std::process::id().to_string();
    let args = [
        "scope",
        "register",
        "--scope-lock",
        &env.lock(),
        "--name",
        "beta",
        "--pid",
        &pid,
        "--socket",
        "/run/beta/sock",
        "--write",
        "/srv/repo/src",
    ];
    env.check(
        &args,
        1,
        "write conflict: /srv/repo/src (write, recursive) overlaps the scope of pod `alpha`",
    );
    assert_eq!(env.pod_names(), ["alpha"]);
}

#[test]
fn a_corrupt_registry_is_refused_and_left_untouched() {
    let env = Env::new();
    let dir = env.path("root");
    std::fs::create_dir(&dir).unwrap();
    let file = Path::new(&dir).join("spawned_pods.json");
    std::fs::write(&file, b"[{\"pod_name\": ").unwrap();
    let named = format!("{}: cannot parse registry file at line 1", file.display());
    env.check(&["registry", "--state-dir", &dir], 1, &named);
    env.check(
        &[
            "reconcile",
            "--state-dir",
            &dir,
            "--scope-lock",
            &env.lock(),
        ],
        1,
        &named,
    );
    let socket = env.socket("root");
    let listen = [
        "listen",
        "--name",
        "root",
        "--state-dir",
        &dir,
        "--socket",
        &socket,
        "--scope-lock",
        &env.lock(),
    ];
    env.check(&listen, 1, &named);
    assert_eq!(std::fs::read(&file).unwrap(), b"[{\"pod_name\": ");
    assert!(!Path::new(&dir).join("departed_pods.json").exists());
    assert!(!Path::new(&socket).exists());
}

#[test]
fn a_corrupt_scope_table_is_refused_and_left_untouched() {
    let env = Env::new();
    let lock = env.lock();
    let bytes = b"{\"version\":1,\"allocations\":[oops";
    std::fs::write(&lock, bytes).unwrap();
    let named = format!("scope table {lock} is corrupt at line 1");
    let pid = std::process::id().to_string();
    env.check(&["scopes", "--scope-lock", &lock], 1, &named);
    env.check(&["scope", "reclaim", "--scope-lock", &lock], 1, &named);
    env.check(
        &["scope", "release", "--scope-lock", &lock, "--name", "w1"],
        1,
        &named,
    );
    let register = [
        "scope",
        "register",
        "--scope-lock",
        &lock,
        "--name",
        "w1",
        "--pid",
        &pid,
        "--write",
        "/srv",
    ];
    env.check(&register, 1, &named);
    env.check(
        &["reconcile", "--name", "root", "--scope-lock", &lock],
        1,
        &named,
    );
    env.check(
        &["listen", "--name", "root", "--scope-lock", &lock],
        1,
        &named,
    );
    assert_eq!(std::fs::read(&lock).unwrap(), bytes);
    assert!(!Path::new(&env.path("run/root/sock")).exists());
}

#[test]
fn scope_commands_keep_the_tree() {
    let env = Env::new();
    let root = env.register("root", "/srv/repo");
    assert_eq!(root["delegated_from"], Value::Null);
    assert_eq!(root["incarnation"].as_str().unwrap().len(), 32);
    let me = std::process::id();
    env.delegate("root", "child", me, "/srv/repo/src");
    env.delegate("child", "gc", me, "/srv/repo/src/parser");
    let tree = env.check(&["scopes", "--scope-lock", &env.lock()], 0, "POD");
    let rows: Vec<&str> = tree.lines().collect();
    assert_eq!(rows.len(), 4, "{tree}");
    for (row, label) in rows.iter().zip(["POD ", "root ", "└─ child ", "   └─ gc "]) {
        assert!(row.starts_with(label), "{tree}");
    }

    // Refusals: outside the spawner's scope, an unknown spawner, a taken name.
    let pid = me.to_string();
    let delegate = |from: &str, name: &str, write: &str, needle: &str| {
        let args = [
            "scope",
            "delegate",
            "--scope-lock",
            &env.lock(),
            "--from",
            from,
            "--name",
            name,
            "--pid",
            &pid,
            "--write",
            write,
        ];
        env.check(&args, 1, needle);
    };
    delegate(
        "child",
        "x",
        "/srv/repo/docs",
        "pod `child` holds no rule covering it",
    );
    delegate(
        "nobody",
        "x",
        "/srv/repo/src/x",
        "no scope allocation for pod `nobody`",
    );
    delegate(
        "root",
        "gc",
        "/srv/repo/docs",
        "pod `gc` already holds a scope allocation",
    );

    // Releasing the child hands gc to the root.
    let released = env.json(&[
        "scope",
        "release",
        "--scope-lock",
        &env.lock(),
        "--name",
        "child",
    ]);
    assert_eq!(released["pod_name"], "child");
    let gc = env
        .allocations()
        .into_iter()
        .find(|a| a["pod_name"] == "gc")
        .unwrap();
    assert_eq!(gc["delegated_from"], "root");
    assert_eq!(gc["alive"], true);
    env.check(
        &[
            "scope",
            "release",
            "--scope-lock",
            &env.lock(),
            "--name",
            "child",
        ],
        1,
        "no scope allocation for pod `child`",
    );
    let wrong = [
        "scope",
        "release",
        "--scope-lock",
        &env.lock(),
        "--name",
        "gc",
        "--incarnation",
        "0000",
    ];
    env.check(&wrong, 1, "is incarnation");

    // A pod whose process is gone is reclaimed.
    let mut stand_in = env.listen("w1", &["--reconcile-interval-ms", "0"]);
    env.register_pid("w1", stand_in.pid(), "/srv/other");
    stand_in.signal(Signal::KILL);
    let reclaimed = env.json(&["scope", "reclaim", "--scope-lock", &env.lock()]);
    assert_eq!(reclaimed["reclaimed"][0]["pod_name"], "w1", "{reclaimed}");
    env.check(
        &["scope", "reclaim", "--scope-lock", &env.lock()],
        0,
        "no stale allocation",
    );
}

#[test]
fn reconcile_adopts_live_descendants_and_reports_dead_pods() {
    let env = Env::new();
    env.register("root", "/srv/repo");
    let mut w1 = env.listen("w1", &["--reconcile-interval-ms", "0"]);
    env.delegate("root", "w1", w1.pid(), "/srv/repo/w1");
    std::fs::create_dir(env.path("root")).unwrap();
    let reconcile = [
        "reconcile",
        "--state-dir",
        &env.path("root"),
        "--scope-lock",
        &env.lock(),
    ];

    let out = env.check(&reconcile, 0, "pod `root` spawned `w1`");
    assert!(out.contains("(found by reconcile)"), "{out}");
    env.check(
        &["registry", "--state-dir", &env.path("root")],
        0,
        &env.socket("w1"),
    );
    env.check(&reconcile, 0, "nothing to repair");

    // The pod dies without a word; reconcile tells the root's own parent.
    let mut up = env.listen("up", &["--reconcile-interval-ms", "0"]);
    w1.signal(Signal::KILL);
    let mut args = reconcile.to_vec();
    let up_socket = env.socket("up");
    args.extend(["--parent-socket", &up_socket]);
    let report = env.json(&args);
    assert_eq!(report["presumed_crashed"][0]["pod_name"], "w1", "{report}");
    assert_eq!(report["failures"], 0);
    up.expect("pod `w1` shut down");
    let registry = env.json(&["registry", "--state-dir", &env.path("root")]);
    assert_eq!(registry["pods"], json!([]));
    assert_eq!(registry["departed"][0]["pod_name"], "w1");
    assert_eq!(env.pod_names(), ["root"]);
}

#[test]
fn default_paths_live_in_the_runtime_directory() {
    let env = Env::new();
    let run = Path::new(&env.path("run")).to_path_buf();
    let pid = std::process::id().to_string();
    let allocation = env.json(&[
        "scope", "register", "--name", "root", "--pid", &pid, "--write", "/srv",
    ]);
    assert_eq!(allocation["socket"], env.path("run/root/sock"));
    assert!(run.join("scope.lock").exists());
    let mode = std::fs::metadata(&run).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    let mut root = Running::start(env.command().args(["listen", "--name", "root"]));
    root.wait_for_path(&run.join("root/sock"));
    env.send(
        &env.path("run/root/sock"),
        json!({"kind": "shut_down", "pod_name": "w1"}),
    );
    root.expect("pod `w1` shut down");
    assert!(root.signal(Signal::TERM).success());
    let registry = env.json(&["registry", "--name", "root"]);
    assert_eq!(registry["departed"][0]["pod_name"], "w1");
    env.check(&["scopes"], 0, "root");
    env.check(&["scope", "release", "--name", "root"], 0, "root");
    env.check(&["reconcile", "--name", "root"], 0, "nothing to repair");

    // A runtime directory others can enter is refused, not used.
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.check(&["scopes"], 1, "is not a private directory");
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let env = Env::new();
    env.check(&[], 2, "Usage: podctl");
    env.check(&["frobnicate"], 2, "unrecognized subcommand");
    env.check(&["scope", "register", "--name", "w1"], 2, "--pid <PID>");
    env.check(
        &["scope", "register", "--name", "w1", "--pid", "many"],
        2,
        "invalid value",
    );
    env.check(&["registry"], 2, "--state-dir <DIR>");
    env.check(
        &["listen", "--name", "r", "--reconcile-interval-ms", "-1"],
        2,
        "unexpected argument",
    );
    env.check(&["--help"], 0, "scope");
    env.check(&["scope", "--help"], 0, "reclaim");
}

#[test]
fn registry_reads_without_owning_shows_invalid_records_and_a_second_writer_is_refused() {
    let env = Env::new();
    // Showing a directory with no registry creates nothing in it.
    let empty = env.path("empty");
    std::fs::create_dir(&empty).unwrap();
    env.check(&["registry", "--state-dir", &empty], 0, "no spawned pods");
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A record existing Pods wrote that we refuse: shown as INVALID with
    // its reason, the rest listed, the file untouched.
    let legacy = env.path("legacy");
    std::fs::create_dir(&legacy).unwrap();
    let file = Path::new(&legacy).join("spawned_pods.json");
    let text = "[\n  {\"pod_name\": \"worker 1\", \"socket_path\": \"/run/w1.sock\", \"scope_delegated\": [], \"callback_address\": \"\"},\n  {\"pod_name\": \"w2\", \"socket_path\": \"/run/w2.sock\", \"scope_delegated\": [], \"callback_address\": \"\"}\n]\n";
    std::fs::write(&file, text).unwrap();
    let out = env.check(&["registry", "--state-dir", &legacy], 0, "INVALID");
    assert!(out.contains("worker 1") && out.contains("w2"), "{out}");
    let shown = env.json(&["registry", "--state-dir", &legacy]);
    assert_eq!(shown["pods"][0]["pod_name"], "w2", "{shown}");
    assert_eq!(
        shown["invalid"][0]["raw"]["pod_name"], "worker 1",
        "{shown}"
    );
    assert!(shown["invalid"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("worker 1"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
    assert_eq!(std::fs::read_dir(&legacy).unwrap().count(), 1);

    // While `listen` owns its state directory: showing works, a second
    // writer (reconcile, another listen) is refused naming the owner.
    let root = env.listen("root", &["--reconcile-interval-ms", "0"]);
    let state = env.path("root");
    env.check(&["registry", "--state-dir", &state], 0, "no spawned pods");
    let owner = format!("in use by process {}", root.pid());
    let reconcile = [
        "reconcile",
        "--state-dir",
        &state,
        "--scope-lock",
        &env.lock(),
    ];
    env.check(&reconcile, 1, &owner);
    let other_socket = env.path("other.sock");
    let listen = [
        "listen",
        "--name",
        "root",
        "--state-dir",
        &state,
        "--socket",
        &other_socket,
        "--scope-lock",
        &env.lock(),
    ];
    env.check(&listen, 1, &owner);
    assert!(!Path::new(&other_socket).exists());
    drop(root);
    env.check(&reconcile, 0, "nothing to repair");
}

#[test]
fn relays_upward_use_the_configured_dialect() {
    let env = Env::new();
    // A parent of the later dialect: here a bare socket that keeps what
    // it is sent.
    let parent_path = env.path("parent.sock");
    let parent = std::os::unix::net::UnixListener::bind(&parent_path).unwrap();
    let mut child = env.listen(
        "child",
        &[
            "--parent-socket",
            &parent_path,
            "--upward-dialect",
            "worker",
            "--reconcile-interval-ms",
            "0",
        ],
    );
    // In the later dialect too: both are understood.
    env.check(
        &[
            "send",
            "--socket",
            &env.socket("child"),
            "--dialect",
            "worker",
            "--event",
            r#"{"kind":"shut_down","pod_name":"w1"}"#,
        ],
        0,
        "",
    );
    child.expect("pod `w1` shut down");
    let (mut relayed, _) = parent.accept().unwrap();
    let mut line = String::new();
    std::io::Read::read_to_string(&mut relayed, &mut line).unwrap();
    assert_eq!(
        line,
        "{\"method\":\"worker_event\",\"params\":{\"kind\":\"shut_down\",\"worker_name\":\"w1\"}}\n"
    );
    env.check(
        &["listen", "--name", "x", "--upward-dialect", "klingon"],
        2,
        "klingon",
    );
}

/// Runs `podctl send` as an orphan: its parent exits at once, so it is no
/// descendant of this test process (nor of anything this test started),
/// as an intruder of the same uid would be. Returns once it has finished.
fn send_as_stranger(env: &Env, socket: &str, event: Value) {
    let marker = env.path("stranger.done");
    let _ = std::fs::remove_file(&marker);
    let script = format!(
        "( '{podctl}' send --socket '{socket}' --event '{event}'; touch '{marker}' ) &",
        podctl = PODCTL,
    );
    let status = Command::new("sh").args(["-c", &script]).status().unwrap();
    assert!(status.success());
    eventually("the orphan send finished", || Path::new(&marker).exists());
}

#[test]
fn a_stranger_cannot_shut_down_or_announce_a_pod_that_holds_scope() {
    let env = Env::new();
    let mut root = env.listen("root", &["--reconcile-interval-ms", "0"]);
    // w9's process is this test process.
    env.register("w9", "/srv/w9");
    let socket = env.socket("root");
    send_as_stranger(
        &env,
        &socket,
        json!({"kind": "shut_down", "pod_name": "w9"}),
    );
    let forged = json!({
        "kind": "scope_sub_delegated",
        "parent_pod": "w9",
        "sub_pod": "evil",
        "sub_socket": env.socket("evil"),
        "scope": [{"target": "/", "permission": "write"}],
    });
    send_as_stranger(&env, &socket, forged.clone());
    // The same announcement from w9's own process is refused too: the
    // table holds no allocation for `evil`.
    env.send(&socket, forged);
    // w9's own report, after the forgeries on w9's lane: they were judged.
    env.send(&socket, json!({"kind": "turn_ended", "pod_name": "w9"}));
    root.expect("pod `w9` finished a turn");
    assert!(
        root.seen
            .iter()
            .all(|l| !l.contains("shut down") && !l.contains("evil")),
        "{:?}",
        root.seen
    );
    assert_eq!(env.pod_names(), ["w9"]);
    let registry = env.json(&["registry", "--state-dir", &env.path("root")]);
    assert_eq!(registry["pods"], json!([]), "{registry}");
    assert_eq!(registry["departed"], json!([]), "{registry}");
    // w9 itself may say it shut down.
    env.send(&socket, json!({"kind": "shut_down", "pod_name": "w9"}));
    root.expect("pod `w9` shut down; its scope is released");
    assert!(env.pod_names().is_empty());
}

#[test]
fn a_stuck_table_lock_delays_nothing_that_needs_no_table_and_sigterm_still_stops() {
    let env = Env::new();
    let mut root = env.listen("root", &["--reconcile-interval-ms", "0"]);
    let socket = env.socket("root");
    // Another process takes the table's lock and stops answering (as a
    // SIGSTOPped holder would): it never lets go while this test runs.
    let script = "import fcntl, sys, time\n\
                  f = open(sys.argv[1], 'a')\n\
                  fcntl.flock(f, fcntl.LOCK_EX)\n\
                  print('held', flush=True)\n\
                  time.sleep(600)\n";
    let mut holder = Command::new("python3")
        .args(["-c", script, &env.lock()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "held");
    for i in 0..20 {
        env.send(
            &socket,
            json!({"kind": "shut_down", "pod_name": format!("w{i}")}),
        );
    }
    env.send(&socket, json!({"kind": "turn_ended", "pod_name": "t1"}));
    // Rendered whatever the table does (before any shutdown's table work
    // could finish: those wait for the lock's timeout).
    root.expect("pod `t1` finished a turn");
    // The shutdowns are rendered too, saying what was not saved and who
    // holds the lock.
    let line = root.expect("pod `w0` shut down");
    assert!(
        line.contains("not saved") && line.contains(&holder.id().to_string()),
        "{line}"
    );
    let status = root.signal(Signal::TERM);
    assert!(status.code().is_some(), "{status}");
    let _ = holder.kill();
    let _ = holder.wait();
}

/// A podctl built without the `etcd` feature refuses `--scope-store`,
/// saying how to get one that takes it, and touches no file.
#[cfg(not(feature = "etcd"))]
#[test]
fn scope_store_without_the_etcd_feature_is_refused_saying_how_to_build_it() {
    let env = Env::new();
    for args in [
        &["scopes", "--scope-store", "etcd://127.0.0.1:2379/pods"][..],
        &[
            "scope",
            "reclaim",
            "--scope-store",
            "etcd://127.0.0.1:2379/pods",
        ][..],
    ] {
        env.check(args, 1, "--features cli,etcd");
    }
    assert!(!Path::new(&env.lock()).exists());
}
