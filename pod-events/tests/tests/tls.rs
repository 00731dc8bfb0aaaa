//! Black-box tests of `podctl` over TCP with mutual TLS (issue 17), with
//! certificates made at test time (rcgen): a child reporting to its root
//! over `tls://` on loopback, a client certified by another CA refused,
//! a child spawned by `podctl run` with its TLS identity in the handoff
//! variables, and every bad value of the TLS flags and address forms.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair, SanType};
use rustix::process::Signal;
use serde_json::{json, Value};

use super::support::{Env, Running, PODCTL};

/// A certificate authority that writes PEM files for pods.
struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Writes `<dir>/<stem>.pem` and `<stem>.key`: a certificate naming
    /// `pod://<pod>` and 127.0.0.1 (so it serves as a listener's too).
    fn issue(&self, dir: &Path, stem: &str, pod: &str) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![
            SanType::URI(format!("pod://{pod}").try_into().unwrap()),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }

    fn write(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).unwrap();
    }
}

/// A private directory with a CA (`ca.pem`) and certificates for `root`
/// and `child`, and one for `intruder` from another CA that trusts ours.
struct TlsEnv {
    env: Env,
    port: u16,
}

impl std::ops::Deref for TlsEnv {
    type Target = Env;

    fn deref(&self) -> &Env {
        &self.env
    }
}

impl TlsEnv {
    fn new() -> TlsEnv {
        let env = Env::new();
        let dir = env.dir.path();
        let ca = Ca::new();
        ca.write(&dir.join("ca.pem"));
        ca.issue(dir, "root", "root");
        ca.issue(dir, "child", "child");
        Ca::new().issue(dir, "intruder", "child");
        TlsEnv {
            env,
            port: free_port(),
        }
    }

    fn tls_address(&self) -> String {
        format!("tls://127.0.0.1:{}", self.port)
    }

    /// `--tls-cert <stem>.pem --tls-key <stem>.key --tls-ca ca.pem`.
    fn tls_flags(&self, stem: &str) -> Vec<String> {
        vec![
            "--tls-cert".into(),
            self.path(&format!("{stem}.pem")),
            "--tls-key".into(),
            self.path(&format!("{stem}.key")),
            "--tls-ca".into(),
            self.path("ca.pem"),
        ]
    }

    /// Runs podctl; it must exit 1 with one line on stderr containing
    /// every needle.
    fn refused(&self, args: &[String], needles: &[&str]) {
        let out = self.run(args);
        let stderr = String::from_utf8(out.stderr).unwrap();
        let context = format!("podctl {args:?}\nstderr: {stderr}");
        assert_eq!(out.status.code(), Some(1), "{context}");
        assert_eq!(stderr.lines().count(), 1, "one line on stderr: {context}");
        for needle in needles {
            assert!(stderr.contains(needle), "{needle:?} missing: {context}");
        }
    }

    fn incarnation(&self, pod: &str) -> String {
        self.allocations()
            .iter()
            .find(|a| a["pod_name"] == pod)
            .and_then(|a| a["incarnation"].as_str())
            .unwrap()
            .to_owned()
    }

    /// `podctl send --socket <to> --event <event>` plus `extra` flags.
    fn send_with(&self, to: &str, event: &Value, extra: &[String]) -> Output {
        let mut args = args(&["send", "--socket", to, "--event", &event.to_string()]);
        args.extend(extra.iter().cloned());
        self.run(&args)
    }
}

/// `items` borrowed, for the helpers that take `&[&str]`.
fn strs(items: &[String]) -> Vec<&str> {
    items.iter().map(String::as_str).collect()
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A port nothing listens on right now (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A process standing for a pod that runs but does not listen.
struct Sleeper(Child);

impl Sleeper {
    fn new() -> Sleeper {
        Sleeper(Command::new("sleep").arg("60").spawn().unwrap())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_child_over_tls_reaches_the_root_and_another_cas_client_is_refused() {
    let env = TlsEnv::new();
    let tls = env.tls_address();
    // The test process holds the root's allocation and supervises every
    // pod process it starts (so its `podctl send`s speak for them).
    env.allocate(None, "root", std::process::id(), &env.path("repo"));
    let mut child_flags = args(&["--parent-socket", &tls, "--reconcile-interval-ms", "0"]);
    child_flags.extend(env.tls_flags("child"));
    let mut child = env.listen("child", &strs(&child_flags));
    env.allocate(Some("root"), "child", child.pid(), &env.path("repo/src"));

    // The root adopts `child` from the table at its start-up reconcile,
    // and not again during the test: what it learns next comes by TLS.
    let mut root_flags = args(&["--listen", &tls, "--reconcile-interval-ms", "600000"]);
    root_flags.extend(env.tls_flags("root"));
    let mut root = env.listen("root", &strs(&root_flags));
    root.expect_log(&format!("tls={tls}"));
    root.expect("spawned `child`");

    // `child` spawns `gc` and reports it on its Unix socket; it relays
    // the report to the root over TLS, certified as `child`.
    let gc = Sleeper::new();
    let parser = env.path("repo/src/parser");
    env.allocate(Some("child"), "gc", gc.0.id(), &parser);
    let gc_incarnation = env.incarnation("gc");
    let announce = json!({
        "kind": "scope_sub_delegated",
        "parent_pod": "child",
        "sub_pod": "gc",
        "sub_socket": env.path("gc/sock"),
        "scope": [{"target": parser, "permission": "write"}],
        "sub_incarnation": gc_incarnation,
        "spawner_socket": env.path("child/sock"),
    });
    env.send(&env.path("child/sock"), announce);
    child.expect("pod `child` spawned `gc`");
    let relayed = root.expect("pod `child` spawned `gc`");
    assert!(!relayed.contains("found by reconcile"), "{relayed}");

    // `child` reports its own turn to the root directly over TLS.
    let turn = json!({"kind": "turn_ended", "pod_name": "child"});
    let out = env.send_with(&tls, &turn, &env.tls_flags("child"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.expect("pod `child` finished a turn and is idle");

    // A client whose certificate another CA signed is refused at the
    // handshake, whatever it claims: the root renders nothing of it.
    let forged = json!({"kind": "errored", "pod_name": "child", "message": "forged"});
    env.send_with(&tls, &forged, &env.tls_flags("intruder"));
    root.expect_log("rejected a TLS peer");

    // `gc` shuts down; `child` relays the departure over TLS.
    let bye = json!({"kind": "shut_down", "pod_name": "gc", "incarnation": gc_incarnation});
    env.send(&env.path("child/sock"), bye);
    child.expect("pod `gc` shut down");
    root.expect("pod `gc` shut down");

    assert!(root.signal(Signal::TERM).success());
    let (lines, logs) = (root.all_lines().to_vec(), root.all_logs().to_vec());
    assert!(
        !lines.iter().any(|l| l.contains("forged")),
        "the refused client's event was rendered: {lines:?}"
    );
    let refusals = logs.iter().filter(|l| l.contains("rejected a TLS peer"));
    assert_eq!(refusals.count(), 1, "{logs:?}");
    // The relayed departure emptied the root's registry of `gc`.
    let registry = env.json(&["registry", "--state-dir", &env.path("root")]);
    let names: Vec<&Value> = registry["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["pod_name"])
        .collect();
    assert_eq!(names, [&json!("child")], "{registry}");
    assert!(child.signal(Signal::TERM).success());
}

#[test]
fn podctl_run_hands_its_tls_identity_to_a_listen_that_reports_over_tls() {
    let env = TlsEnv::new();
    let tls = env.tls_address();
    let src = env.path("repo/src");
    env.allocate(None, "root", std::process::id(), &env.path("repo"));
    // No reconcile: what the root learns of `child` comes by TLS.
    let mut root_flags = args(&["--listen", &tls, "--reconcile-interval-ms", "0"]);
    root_flags.extend(env.tls_flags("root"));
    let mut root = env.listen("root", &strs(&root_flags));
    root.expect_log(&format!("tls={tls}"));

    let child_socket = env.socket("child");
    let run_child = |tls_flags: Vec<String>| {
        let mut cmd = env.command();
        cmd.args(["run", "--from", "root", "--name", "child", "--write", &src])
            .args(["--scope-lock", &env.lock(), "--parent-socket", &tls])
            .args(["--socket", &child_socket])
            .args(tls_flags)
            .args(["--", PODCTL, "listen", "--reconcile-interval-ms", "0"]);
        cmd
    };
    // Refused before anything is reserved: no identity, or another pod's.
    let before = env.allocations();
    for (flags, needle) in [
        (Vec::new(), "missing: --tls-cert, --tls-key, --tls-ca"),
        (env.tls_flags("root"), "names pod `root`, not `child`"),
    ] {
        let out = run_child(flags).output().unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(needle), "{needle:?}: {stderr}");
    }
    assert_eq!(env.allocations(), before, "a refused run changed the table");

    // The listen gets no TLS flag: its identity comes from POD_TLS_*.
    let mut run = Running::start(&mut run_child(env.tls_flags("child")));
    let started = run.expect("child pid ");
    let pid: u64 = started.split(' ').nth(2).unwrap().parse().unwrap();
    run.wait_for_path(Path::new(&format!("{child_socket}.control")));
    let child = env
        .allocations()
        .into_iter()
        .find(|a| a["pod_name"] == "child")
        .unwrap();
    assert_eq!(
        child["pid"].as_u64(),
        Some(pid),
        "the listen adopted: {child}"
    );

    // `child` relays the spawn of `gc` to the root over TLS, certified
    // as `child` by the certificate it was handed.
    let gc = Sleeper::new();
    let parser = env.path("repo/src/parser");
    env.allocate(Some("child"), "gc", gc.0.id(), &parser);
    let announce = json!({
        "kind": "scope_sub_delegated",
        "parent_pod": "child",
        "sub_pod": "gc",
        "sub_socket": env.socket("gc"),
        "scope": [{"target": parser, "permission": "write"}],
        "sub_incarnation": env.incarnation("gc"),
        "spawner_socket": child_socket,
    });
    env.send(&child_socket, announce);
    run.expect("pod `child` spawned `gc`");
    root.expect("pod `child` spawned `gc`");

    // SIGTERM reaches the listen through podctl run; its clean exit's
    // ShutDown reaches the root over TLS, and its scope is released.
    assert!(run.signal(Signal::TERM).success());
    run.expect("child exited with status 0");
    assert!(
        !run.seen.iter().any(|l| l.contains("without reporting")),
        "the listen reported its own shutdown: {:?}",
        run.seen
    );
    root.expect("pod `child` shut down");
    let mut names = env.pod_names();
    names.sort();
    assert_eq!(names, ["gc", "root"], "child's allocation was released");
    assert!(root.signal(Signal::TERM).success());
    let logs = root.all_logs();
    assert!(
        !logs.iter().any(|l| l.contains("rejected")),
        "the root refused something: {logs:?}"
    );
}

#[test]
fn bad_tls_flags_and_addresses_are_refused_naming_what_is_wrong() {
    let env = TlsEnv::new();
    let tls = env.tls_address();
    let turn = json!({"kind": "turn_ended", "pod_name": "child"}).to_string();
    let send = |to: &str, extra: &[String]| {
        let mut args = args(&["send", "--socket", to, "--event", &turn]);
        args.extend(extra.iter().cloned());
        args
    };
    let listen = |extra: &[String]| {
        let mut args = args(&["listen", "--name", "root", "--state-dir"]);
        args.extend([
            env.path("root"),
            "--scope-lock".into(),
            env.path("scope.lock"),
        ]);
        args.extend(extra.iter().cloned());
        args
    };
    let with_flags = |base: &[&str], stem: &str| {
        let mut args = args(base);
        args.extend(env.tls_flags(stem));
        args
    };

    // Address forms.
    for bad in [
        "tls://127.0.0.1",
        "tls://127.0.0.1:0",
        "tls://[::1:7443",
        "relative/sock",
        "https://h:1",
    ] {
        env.refused(&send(bad, &[]), &["--socket", bad]);
        env.refused(
            &listen(&args(&["--parent-socket", bad])),
            &["--parent-socket"],
        );
    }
    for bad in [
        "tls://127.0.0.1",
        "tls://no_such host:1",
        &env.path("root/sock"),
    ] {
        env.refused(
            &listen(&with_flags(&["--listen", bad], "root")),
            &["--listen"],
        );
    }

    // The flags: all three, only with a tls:// address.
    env.refused(
        &send(&tls, &[]),
        &["--tls-cert", "--tls-key", "--tls-ca", "missing"],
    );
    env.refused(
        &listen(&args(&["--listen", &tls])),
        &["missing: --tls-cert, --tls-key, --tls-ca"],
    );
    let only_cert = args(&["--tls-cert", &env.path("child.pem")]);
    env.refused(&send(&tls, &only_cert), &["missing: --tls-key, --tls-ca"]);
    env.refused(
        &send(&env.path("root/sock"), &env.tls_flags("child")),
        &["for tls:// addresses", "drop them"],
    );
    env.refused(
        &listen(&env.tls_flags("root")),
        &["for tls:// addresses", "drop them"],
    );
    let mut worker = env.tls_flags("child");
    worker.extend(args(&["--dialect", "worker"]));
    env.refused(&send(&tls, &worker), &["original dialect"]);

    // The PEM files: each error names the flag and the file.
    std::fs::write(env.path("garbage.pem"), "not PEM at all\n").unwrap();
    let swap = |flag: &str, file: &str| {
        let mut flags = env.tls_flags("child");
        let at = flags.iter().position(|f| f == flag).unwrap();
        flags[at + 1] = env.path(file);
        flags
    };
    for (flag, file, why) in [
        ("--tls-cert", "missing.pem", "No such file"),
        ("--tls-cert", "garbage.pem", "no CERTIFICATE section"),
        ("--tls-cert", "child.key", "no CERTIFICATE section"),
        ("--tls-key", "child.pem", "PRIVATE KEY"),
        ("--tls-key", "garbage.pem", "PRIVATE KEY"),
        ("--tls-ca", "garbage.pem", "no CERTIFICATE section"),
        ("--tls-ca", "", "not a regular file"),
    ] {
        let path = env.path(file);
        env.refused(&send(&tls, &swap(flag, file)), &[flag, &path, why]);
        let mut flags = swap(flag, file);
        flags.extend(args(&["--listen", &tls]));
        env.refused(&listen(&flags), &[flag, &path, why]);
    }
    // A key that is not the certificate's.
    let mismatched = swap("--tls-key", "root.key");
    env.refused(
        &send(&tls, &mismatched),
        &["invalid TLS configuration", &env.path("root.key")],
    );
    // Nothing listens: the send fails at its deadline, saying where (the
    // TLS sender also logs the drop, as it does for every caller).
    let out = env.run(&send(&tls, &env.tls_flags("child")));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("podctl: timed out") && last.contains(&tls[6..]),
        "{stderr}"
    );
    assert!(
        !PathBuf::from(env.path("root")).exists(),
        "a refused listen created its state dir"
    );
}
