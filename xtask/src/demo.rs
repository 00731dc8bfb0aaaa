//! `cargo xtask demo`: the tree's story, told by real OS processes.
//!
//! Every pod is a `podctl listen` process with its own socket, registry and
//! pid; the scope table is one file they all share, as on a real machine.
//! The demo plays the pods' controllers with `podctl scope ...` and
//! `podctl send`, prints each line a pod prints as it arrives (prefixed
//! with the pod's name) and the tables at the key moments, and waits for
//! every expected line with a deadline: a step that does not happen fails
//! the demo. The temporary directory and every process are cleaned up, on
//! failure too. With `--tls` the child reports to the root over `tls://`
//! on loopback (certificates made for the run); the story is the same.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

use crate::cargo;

/// How long one step may take before the demo calls it missing: generous,
/// a bound for a loaded machine, not an expectation.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

/// How often the root reconciles: short, so the story moves quickly.
const ROOT_RECONCILE_MS: &str = "250";

/// Entry point; `demo` takes `--tls` alone: the child then reports to the
/// root over `tls://` on loopback, with certificates made for the demo.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let tls = match args {
        [] => false,
        [flag] if flag == "--tls" => true,
        [extra, ..] => bail!("`cargo xtask demo` takes only --tls (got {extra:?})"),
    };
    let podctl = build_podctl()?;
    let cert_tool = if tls { Some(build_cert_tool()?) } else { None };
    let started = Instant::now();
    let mut demo = Demo::new(podctl)?;
    if let Some(tool) = cert_tool {
        demo.use_tls(&tool)?;
    }
    demo.story()?;
    drop(demo);
    println!(
        "\ndemo: every step happened ({:.1} s); processes stopped, temporary directory removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds podctl and returns the path of the executable cargo reports.
pub(crate) fn build_podctl() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "pod-events",
        "--features",
        "cli",
        "--bin",
        "podctl",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("==> build podctl: {cmd:?}");
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    ensure!(
        output.status.success(),
        "building podctl failed ({})",
        output.status
    );
    executable(&output.stdout, "podctl")
}

/// Builds pod-events' `tls_certs` example, which writes the demo's CA and
/// pod certificates (rcgen lives there, not in xtask, which stays quick
/// to build).
fn build_cert_tool() -> Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args([
        "build",
        "-p",
        "pod-events",
        "--example",
        "tls_certs",
        "--message-format=json-render-diagnostics",
    ]);
    eprintln!("==> build the certificate tool: {cmd:?}");
    let output = cmd
        .stderr(Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    ensure!(
        output.status.success(),
        "building tls_certs failed ({})",
        output.status
    );
    executable(&output.stdout, "tls_certs")
}

/// The executable of target `name` in cargo's JSON messages.
fn executable(stdout: &[u8], name: &str) -> Result<PathBuf> {
    let stdout = String::from_utf8_lossy(stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact" && message["target"]["name"] == name {
            if let Some(exe) = message["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built {name} but did not report where the executable is")
}

/// One line a pod printed on stdout.
struct Line {
    pod: String,
    text: String,
}

/// A running `podctl listen`.
struct Pod {
    name: &'static str,
    child: Child,
}

impl Pod {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// The demo's world: a private directory, the pods' processes, and the
/// lines they printed.
struct Demo {
    podctl: PathBuf,
    dir: PathBuf,
    pods: Vec<Pod>,
    lines: mpsc::Receiver<Line>,
    line_sink: mpsc::Sender<Line>,
    /// Lines received and not yet matched by [`Demo::expect`].
    pending: Vec<Line>,
    step: usize,
    /// With `--tls`: the loopback port the root also listens on with TLS.
    tls_port: Option<u16>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            if matches!(pod.child.try_wait(), Ok(None)) {
                let _ = pod.child.kill();
            }
            let _ = pod.child.wait();
        }
        if let Err(error) = std::fs::remove_dir_all(&self.dir) {
            eprintln!("demo: could not remove {}: {error}", self.dir.display());
        }
    }
}

impl Demo {
    fn new(podctl: PathBuf) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Short, so socket paths stay far below the 107-byte limit.
        let dir = std::env::temp_dir().join(format!("pod-demo-{}-{nanos:x}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        // Scope paths must be lexically normal: resolve symlinks once.
        let dir = dir.canonicalize().unwrap_or(dir);
        println!("DEMO={}", dir.display());
        let (line_sink, lines) = mpsc::channel();
        Ok(Demo {
            podctl,
            dir,
            pods: Vec::new(),
            lines,
            line_sink,
            pending: Vec::new(),
            step: 0,
            tls_port: None,
        })
    }

    /// The root listens on `tls://127.0.0.1:PORT` too, and `child` reports
    /// there; certificates for both (and their CA) are made now, in the
    /// demo directory.
    fn use_tls(&mut self, cert_tool: &PathBuf) -> Result<()> {
        let dir = self.path("tls");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {dir}"))?;
        println!("   $ tls_certs $DEMO/tls root child   # a CA, and a certificate per pod");
        let status = Command::new(cert_tool)
            .args([&dir, "root", "child"])
            .status()
            .with_context(|| format!("could not start {}", cert_tool.display()))?;
        ensure!(status.success(), "tls_certs failed ({status})");
        // A free port now; the root binds it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot find a free loopback port")?
            .port();
        self.tls_port = Some(port);
        Ok(())
    }

    /// With `--tls`, what `name`'s listen adds: the root's TLS listener,
    /// or the child's parent over TLS; the TLS flags either way.
    fn tls_args(&self, name: &str, parent: Option<&str>) -> Option<Vec<String>> {
        let port = self.tls_port?;
        let address = format!("tls://127.0.0.1:{port}");
        let mut args = match (name, parent) {
            ("root", None) => vec!["--listen".to_owned(), address],
            (_, Some("root")) => vec!["--parent-socket".to_owned(), address],
            _ => return None,
        };
        for (flag, file) in [
            ("--tls-cert", format!("{name}.pem")),
            ("--tls-key", format!("{name}.key")),
            ("--tls-ca", "ca.pem".to_owned()),
        ] {
            args.extend([flag.to_owned(), self.path(&format!("tls/{file}"))]);
        }
        Some(args)
    }

    fn story(&mut self) -> Result<()> {
        let repo = self.path("repo");
        let src = self.path("repo/src");
        let parser = self.path("repo/src/parser");

        self.begin("the root registers its scope and listens");
        let root = self.spawn("root", None, ROOT_RECONCILE_MS)?;
        self.allocate(None, "root", root, &repo)?;

        self.begin("the root spawns `child` and delegates write scope on repo/src to it");
        // The child reconciles only when told: its registry changes only
        // through the events of this story.
        let child = self.spawn("child", Some("root"), "0")?;
        self.allocate(Some("root"), "child", child, &src)?;
        println!("   (the root learns of its child from the scope table at its next reconcile)");
        self.expect("root", "that it spawned `child`", |l| {
            l.contains("spawned `child`")
        })?;

        self.begin("`child` spawns `gc`, sub-delegates repo/src/parser, and reports it");
        let gc = self.spawn("gc", Some("child"), "0")?;
        self.allocate(Some("child"), "gc", gc, &parser)?;
        let gc_incarnation = self.incarnation("gc")?;
        let event = json!({
            "kind": "scope_sub_delegated",
            "parent_pod": "child",
            "sub_pod": "gc",
            "sub_socket": self.socket("gc"),
            "scope": [{"target": parser, "permission": "write", "recursive": true}],
            "sub_incarnation": gc_incarnation,
            "spawner_socket": self.socket("child"),
        });
        self.send("child", &event)?;
        self.expect("child", "that `child` spawned `gc`", |l| {
            l.starts_with("pod `child` spawned `gc`")
        })?;
        let how = match self.tls_port {
            Some(_) => " over tls://, certified as `child`",
            None => "",
        };
        println!("   (`child` relays it upward{how}: the root now knows its grandchild)");
        self.expect(
            "root",
            "the relayed report that `child` spawned `gc`",
            |l| l.starts_with("pod `child` spawned `gc`") && !l.contains("found by reconcile"),
        )?;
        self.show_tables()?;
        self.check_registry(&["child", "gc"])?;

        self.begin("`child` is killed with SIGKILL");
        let status = self.kill("child")?;
        println!("   child (pid {child}) ended: {status}");
        self.expect("root", "that `child` is presumed crashed", |l| {
            l == "`child` is gone without reporting: presumed crashed; scope released"
        })?;
        let table = self.allocations()?;
        ensure!(
            !table.iter().any(|a| a["pod_name"] == "child"),
            "the scope table still holds `child`"
        );
        let gc_parent = table
            .iter()
            .find(|a| a["pod_name"] == "gc")
            .map(|a| a["delegated_from"].clone());
        ensure!(
            gc_parent == Some(json!("root")),
            "`gc` was not reparented to the root (delegated_from: {gc_parent:?})"
        );
        println!("   (the scope table reparented `gc` to the root, which manages it directly)");
        self.show_tables()?;
        self.check_registry(&["gc"])?;

        self.begin("`gc` finishes a turn and shuts down, reporting to the root");
        let turn = json!({"kind": "turn_ended", "pod_name": "gc", "incarnation": gc_incarnation});
        self.send("root", &turn)?;
        self.expect("root", "that `gc` finished a turn", |l| {
            l == "pod `gc` finished a turn and is idle"
        })?;
        let bye = json!({"kind": "shut_down", "pod_name": "gc", "incarnation": gc_incarnation});
        self.send("root", &bye)?;
        self.expect("root", "that `gc` shut down", |l| {
            l == "pod `gc` shut down; its scope is released"
        })?;
        self.stop("gc")?;

        self.begin("the root releases its own scope and stops");
        self.podctl_shown(&[
            "scope",
            "release",
            "--scope-lock",
            &self.lock(),
            "--name",
            "root",
        ])?;
        self.stop("root")?;
        self.show_tables()?;
        self.check_registry(&[])?;
        let left = self.allocations()?;
        ensure!(left.is_empty(), "the scope table is not empty: {left:?}");
        Ok(())
    }

    fn begin(&mut self, what: &str) {
        self.step += 1;
        println!("\n==> {}. {what}", self.step);
    }

    fn path(&self, relative: &str) -> String {
        self.dir.join(relative).display().to_string()
    }

    fn lock(&self) -> String {
        self.path("scope.lock")
    }

    fn socket(&self, pod: &str) -> String {
        self.path(&format!("{pod}/sock"))
    }

    /// `text` with the demo directory written as `$DEMO`: for the commands
    /// shown (what podctl prints is shown as it is).
    fn short(&self, text: &str) -> String {
        text.replace(&self.dir.display().to_string(), "$DEMO")
    }

    /// Starts `podctl listen` for `name` and waits until its socket
    /// answers; returns its pid.
    fn spawn(
        &mut self,
        name: &'static str,
        parent: Option<&str>,
        reconcile_ms: &str,
    ) -> Result<u32> {
        let mut args = vec![
            "listen".to_owned(),
            "--name".into(),
            name.into(),
            "--socket".into(),
            self.socket(name),
            "--state-dir".into(),
            self.path(name),
            "--scope-lock".into(),
            self.lock(),
            "--reconcile-interval-ms".into(),
            reconcile_ms.into(),
        ];
        match self.tls_args(name, parent) {
            Some(tls) => args.extend(tls),
            None => {
                if let Some(parent) = parent {
                    args.extend(["--parent-socket".into(), self.socket(parent)]);
                }
            }
        }
        println!("   $ podctl {} &", self.short(&args.join(" ")));
        let mut cmd = Command::new(&self.podctl);
        cmd.args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            // Warnings only: podctl's start and stop notices would drown
            // the story.
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", self.podctl.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        forward(name, stdout, Some(self.line_sink.clone()));
        forward(name, stderr, None);
        self.pods.push(Pod { name, child });

        let socket = PathBuf::from(self.socket(name));
        let deadline = Instant::now() + STEP_DEADLINE;
        while !socket.exists() {
            if let Some(status) = self.pod(name)?.child.try_wait()? {
                bail!("`{name}` exited before listening ({status})");
            }
            ensure!(
                Instant::now() < deadline,
                "`{name}` did not listen within {STEP_DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(self.pod(name)?.pid())
    }

    fn pod(&mut self, name: &str) -> Result<&mut Pod> {
        self.pods
            .iter_mut()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod `{name}`"))
    }

    /// SIGKILL: the pod gets no chance to report or clean up.
    fn kill(&mut self, name: &str) -> Result<ExitStatus> {
        println!("   $ kill -KILL <pid of {name}>");
        let pod = self.pod(name)?;
        pod.child.kill()?;
        Ok(pod.child.wait()?)
    }

    /// SIGTERM, then the pod must exit 0 having removed its socket.
    fn stop(&mut self, name: &str) -> Result<()> {
        println!("   $ kill -TERM <pid of {name}>");
        let socket = PathBuf::from(self.socket(name));
        let pod = self.pod(name)?;
        kill_process(Pid::from_child(&pod.child), Signal::TERM)
            .with_context(|| format!("could not signal `{name}`"))?;
        let status = wait_with_deadline(&mut pod.child)?;
        ensure!(
            status.success(),
            "`{name}` did not shut down cleanly ({status})"
        );
        ensure!(!socket.exists(), "`{name}` left its socket behind");
        println!("   {name} exited 0 and removed its socket");
        Ok(())
    }

    /// Runs podctl, showing the command and its output.
    fn podctl_shown(&self, args: &[&str]) -> Result<()> {
        println!("   $ podctl {}", self.short(&args.join(" ")));
        let out = self.podctl(args)?;
        for line in out.lines() {
            println!("     {line}");
        }
        Ok(())
    }

    /// `podctl scope register` (no `from`) or `scope delegate --from`:
    /// write scope on `write` for pod `name`, process `pid`, at its socket
    /// in the demo directory; shown.
    fn allocate(&self, from: Option<&str>, name: &str, pid: u32, write: &str) -> Result<()> {
        let (lock, pid, socket) = (self.lock(), pid.to_string(), self.socket(name));
        let mut args = vec!["scope"];
        match from {
            Some(from) => args.extend(["delegate", "--scope-lock", &lock, "--from", from]),
            None => args.extend(["register", "--scope-lock", &lock]),
        }
        args.extend([
            "--name", name, "--pid", &pid, "--socket", &socket, "--write", write,
        ]);
        self.podctl_shown(&args)
    }

    /// Runs podctl to completion; its stdout, or why it failed.
    fn podctl(&self, args: &[&str]) -> Result<String> {
        let output = Command::new(&self.podctl)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("could not start {}", self.podctl.display()))?;
        if !output.status.success() {
            bail!(
                "`podctl {}` failed ({}): {}",
                self.short(&args.join(" ")),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    fn podctl_json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.push("--json");
        let out = self.podctl(&args)?;
        serde_json::from_str(&out).with_context(|| format!("podctl printed invalid JSON: {out}"))
    }

    /// Sends `event` to `to`'s socket, as a pod's controller would.
    fn send(&self, to: &str, event: &Value) -> Result<()> {
        let socket = self.socket(to);
        let event = event.to_string();
        // `$DEMO` inside the single-quoted JSON is closed out of the
        // quotes ('"$DEMO"'), so the shown command can be pasted.
        println!(
            "   $ podctl send --socket {} --event '{}'",
            self.short(&socket),
            self.short(&event).replace("$DEMO", "'\"$DEMO\"'")
        );
        self.podctl(&["send", "--socket", &socket, "--event", &event])?;
        Ok(())
    }

    fn allocations(&self) -> Result<Vec<Value>> {
        let table = self.podctl_json(&["scopes", "--scope-lock", &self.lock()])?;
        Ok(table["allocations"].as_array().cloned().unwrap_or_default())
    }

    fn incarnation(&self, pod: &str) -> Result<String> {
        let table = self.allocations()?;
        table
            .iter()
            .find(|a| a["pod_name"] == pod)
            .and_then(|a| a["incarnation"].as_str())
            .map(str::to_owned)
            .with_context(|| format!("`{pod}` has no allocation"))
    }

    /// Fails unless the root's registry holds exactly `names`.
    fn check_registry(&self, names: &[&str]) -> Result<()> {
        let registry = self.podctl_json(&["registry", "--state-dir", &self.path("root")])?;
        let mut held: Vec<&str> = registry["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["pod_name"].as_str())
            .collect();
        held.sort_unstable();
        ensure!(
            held == names,
            "the root's registry holds {held:?}, expected {names:?}"
        );
        Ok(())
    }

    /// Prints the scope table and the root's registry, as an operator
    /// would see them.
    fn show_tables(&self) -> Result<()> {
        let scopes = self.podctl(&["scopes", "--scope-lock", &self.lock()])?;
        let registry = self.podctl(&["registry", "--state-dir", &self.path("root")])?;
        // One print, so no pod's line lands inside a table.
        let mut text = String::new();
        for (command, table) in [
            ("scopes --scope-lock $DEMO/scope.lock", scopes),
            ("registry --state-dir $DEMO/root", registry),
        ] {
            text.push_str(&format!("   $ podctl {command}\n"));
            for line in table.lines() {
                text.push_str(&format!("     {line}\n"));
            }
        }
        print!("{text}");
        Ok(())
    }

    /// Waits for a line from `pod` that `matches` (`what` describes it),
    /// taking lines already received first; fails the step at the
    /// deadline.
    fn expect(&mut self, pod: &str, what: &str, matches: impl Fn(&str) -> bool) -> Result<()> {
        let found = |line: &Line| line.pod == pod && matches(&line.text);
        if let Some(i) = self.pending.iter().position(found) {
            self.pending.remove(i);
            return Ok(());
        }
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if found(&line) => return Ok(()),
                Ok(line) => self.pending.push(line),
                Err(_) => bail!(
                    "step {} did not happen: `{pod}` printed no line saying {what} within {STEP_DEADLINE:?}",
                    self.step
                ),
            }
        }
    }
}

/// Copies a pod's output to ours line by line as it arrives, prefixed with
/// the pod's name; stdout lines are also handed to the story.
fn forward(pod: &'static str, from: impl Read + Send + 'static, sink: Option<mpsc::Sender<Line>>) {
    std::thread::spawn(move || {
        for text in BufReader::new(from).lines() {
            let Ok(text) = text else { return };
            match &sink {
                Some(sink) => {
                    println!("   [{pod:>5}] {text}");
                    let _ = sink.send(Line {
                        pod: pod.to_owned(),
                        text,
                    });
                }
                None => eprintln!("   [{pod:>5} log] {text}"),
            }
        }
    });
}

fn wait_with_deadline(child: &mut Child) -> Result<ExitStatus> {
    let deadline = Instant::now() + STEP_DEADLINE;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        ensure!(
            Instant::now() < deadline,
            "the process did not exit within {STEP_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
