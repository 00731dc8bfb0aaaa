//! Black-box tests of `podctl` over TCP with mutual TLS (issue 17), with
//! certificates made at test time (rcgen): a child reporting to its root
//! over `tls://` on loopback, a client certified by another CA refused,
//! and every bad value of the TLS flags and address forms.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair, SanType};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

/// A liveness bound for waits on other processes, not a performance
/// assertion.
const DEADLINE: Duration = Duration::from_secs(20);

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
struct Env {
    dir: tempfile::TempDir,
    port: u16,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        ca.write(&dir.path().join("ca.pem"));
        ca.issue(dir.path(), "root", "root");
        ca.issue(dir.path(), "child", "child");
        Ca::new().issue(dir.path(), "intruder", "child");
        Env {
            dir,
            port: free_port(),
        }
    }

    fn path(&self, relative: &str) -> String {
        self.dir.path().join(relative).display().to_string()
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

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_podctl"));
        cmd.env("PODS_RUNTIME_DIR", self.path("run"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[String]) -> Output {
        self.command().args(args).output().unwrap()
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

    fn ok(&self, args: &[String]) -> String {
        let out = self.run(args);
        let (stdout, stderr) = (
            String::from_utf8(out.stdout).unwrap(),
            String::from_utf8(out.stderr).unwrap(),
        );
        assert!(
            out.status.success(),
            "podctl {args:?}\nstdout: {stdout}\nstderr: {stderr}"
        );
        stdout
    }

    /// `scope register` or `scope delegate --from`, for `pid`.
    fn allocate(&self, from: Option<&str>, name: &str, pid: u32, write: &str) {
        let mut argv = args(&["scope"]);
        match from {
            Some(from) => argv.extend(args(&["delegate", "--from", from])),
            None => argv.push("register".into()),
        }
        argv.extend(args(&[
            "--scope-lock",
            &self.path("scope.lock"),
            "--name",
            name,
        ]));
        argv.extend(args(&["--pid", &pid.to_string(), "--socket"]));
        argv.extend([
            self.path(&format!("{name}/sock")),
            "--write".into(),
            write.into(),
        ]);
        self.ok(&argv);
    }

    fn incarnation(&self, pod: &str) -> String {
        let out = self.ok(&args(&[
            "scopes",
            "--scope-lock",
            &self.path("scope.lock"),
            "--json",
        ]));
        let table: Value = serde_json::from_str(&out).unwrap();
        table["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["pod_name"] == pod)
            .and_then(|a| a["incarnation"].as_str())
            .unwrap()
            .to_owned()
    }

    /// `podctl send --socket <to> --event <event>` plus `extra` flags.
    fn send(&self, to: &str, event: &Value, extra: &[String]) -> Output {
        let mut args = args(&["send", "--socket", to, "--event", &event.to_string()]);
        args.extend(extra.iter().cloned());
        self.run(&args)
    }

    /// `podctl listen` as `name`, on its Unix socket, plus `extra`.
    fn listen(&self, name: &str, extra: &[String]) -> Listening {
        let mut args = args(&["listen", "--name", name, "--socket"]);
        args.extend([self.path(&format!("{name}/sock")), "--state-dir".into()]);
        args.extend([
            self.path(name),
            "--scope-lock".into(),
            self.path("scope.lock"),
        ]);
        args.extend(extra.iter().cloned());
        Listening::start(self.command().args(&args))
    }
}

fn args(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// A port nothing listens on right now (bound, then released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A running `podctl listen`: its stdout lines, and its stderr lines
/// (podctl's notices included, to know when it listens).
struct Listening {
    child: Child,
    lines: mpsc::Receiver<String>,
    logs: mpsc::Receiver<String>,
    seen: Vec<String>,
    logged: Vec<String>,
}

fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sink, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { return };
            if sink.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

impl Listening {
    fn start(cmd: &mut Command) -> Listening {
        let mut child = cmd
            .env("RUST_LOG", "warn,podctl=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let logs = lines_of(child.stderr.take().unwrap());
        let mut listening = Listening {
            child,
            lines,
            logs,
            seen: Vec::new(),
            logged: Vec::new(),
        };
        listening.expect_log("listening");
        listening
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_for(
        rx: &mpsc::Receiver<String>,
        seen: &mut Vec<String>,
        needle: &str,
        what: &str,
    ) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(line) = seen.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("no {what} containing {needle:?}; saw {seen:?}"),
            }
        }
    }

    /// Waits for a printed line containing `needle`.
    fn expect(&mut self, needle: &str) -> String {
        Self::wait_for(&self.lines, &mut self.seen, needle, "line")
    }

    /// Waits for a log line on stderr containing `needle`.
    fn expect_log(&mut self, needle: &str) -> String {
        Self::wait_for(&self.logs, &mut self.logged, needle, "log line")
    }

    /// SIGTERM; it must exit 0. Returns every line printed and logged.
    fn stop(mut self) -> (Vec<String>, Vec<String>) {
        kill_process(Pid::from_child(&self.child), Signal::TERM).unwrap();
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "listen did not exit");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert!(status.success(), "listen exited with {status}");
        while let Ok(line) = self.lines.recv_timeout(DEADLINE) {
            self.seen.push(line);
        }
        while let Ok(line) = self.logs.recv_timeout(DEADLINE) {
            self.logged.push(line);
        }
        (
            std::mem::take(&mut self.seen),
            std::mem::take(&mut self.logged),
        )
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let env = Env::new();
    let tls = env.tls_address();
    // The test process holds the root's allocation and supervises every
    // pod process it starts (so its `podctl send`s speak for them).
    env.allocate(None, "root", std::process::id(), &env.path("repo"));
    let mut child_flags = args(&["--parent-socket", &tls, "--reconcile-interval-ms", "0"]);
    child_flags.extend(env.tls_flags("child"));
    let mut child = env.listen("child", &child_flags);
    env.allocate(Some("root"), "child", child.pid(), &env.path("repo/src"));

    // The root adopts `child` from the table at its start-up reconcile,
    // and not again during the test: what it learns next comes by TLS.
    let mut root_flags = args(&["--listen", &tls, "--reconcile-interval-ms", "600000"]);
    root_flags.extend(env.tls_flags("root"));
    let mut root = env.listen("root", &root_flags);
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
    assert!(env
        .send(&env.path("child/sock"), &announce, &[])
        .status
        .success());
    child.expect("pod `child` spawned `gc`");
    let relayed = root.expect("pod `child` spawned `gc`");
    assert!(!relayed.contains("found by reconcile"), "{relayed}");

    // `child` reports its own turn to the root directly over TLS.
    let turn = json!({"kind": "turn_ended", "pod_name": "child"});
    let out = env.send(&tls, &turn, &env.tls_flags("child"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    root.expect("pod `child` finished a turn and is idle");

    // A client whose certificate another CA signed is refused at the
    // handshake, whatever it claims: the root renders nothing of it.
    let forged = json!({"kind": "errored", "pod_name": "child", "message": "forged"});
    env.send(&tls, &forged, &env.tls_flags("intruder"));
    root.expect_log("rejected a TLS peer");

    // `gc` shuts down; `child` relays the departure over TLS.
    let bye = json!({"kind": "shut_down", "pod_name": "gc", "incarnation": gc_incarnation});
    assert!(env
        .send(&env.path("child/sock"), &bye, &[])
        .status
        .success());
    child.expect("pod `gc` shut down");
    root.expect("pod `gc` shut down");

    let (lines, logs) = root.stop();
    assert!(
        !lines.iter().any(|l| l.contains("forged")),
        "the refused client's event was rendered: {lines:?}"
    );
    let refusals = logs.iter().filter(|l| l.contains("rejected a TLS peer"));
    assert_eq!(refusals.count(), 1, "{logs:?}");
    // The relayed departure emptied the root's registry of `gc`.
    let registry = env.ok(&args(&[
        "registry",
        "--state-dir",
        &env.path("root"),
        "--json",
    ]));
    let registry: Value = serde_json::from_str(&registry).unwrap();
    let names: Vec<&Value> = registry["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| &r["pod_name"])
        .collect();
    assert_eq!(names, [&json!("child")], "{registry}");
    child.stop();
}

#[test]
fn bad_tls_flags_and_addresses_are_refused_naming_what_is_wrong() {
    let env = Env::new();
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
