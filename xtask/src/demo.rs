//! `cargo xtask demo`: the tree's story, told by real OS processes.
//!
//! Every pod is a `podctl listen` process with its own socket, registry and
//! pid; the scope table is one file they all share, as on a real machine.
//! The root is registered with `podctl scope register`; every other pod is
//! spawned by its parent's `podctl run ... -- podctl listen`, which
//! reserves its scope, hands it over and announces it. The demo prints
//! each line a pod prints as it arrives (prefixed with the pod's name) and
//! the tables at the key moments, and waits for every expected line with a
//! deadline: a step that does not happen fails the demo. The story: a
//! tree of three, the middle pod SIGKILLed, its child told to report to
//! the root, the middle pod restarted taking its child back, and all of
//! it wound down to an empty table. The temporary directory and every process are cleaned up, on
//! failure too. With `--tls` the child reports to the root over `tls://`
//! on loopback (certificates made for the run); the story is the same.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};

use crate::cargo;

mod cluster;

/// How long one step may take before the demo calls it missing: generous,
/// a bound for a loaded machine, not an expectation.
const STEP_DEADLINE: Duration = Duration::from_secs(20);

/// How often the root reconciles: short, so the story moves quickly.
const ROOT_RECONCILE_MS: &str = "250";

/// Entry point; `demo` takes `--tls` or `--cluster` alone. With `--tls`
/// the child reports to the root over `tls://` on loopback, with
/// certificates made for the demo; `--cluster` is the story of
/// [`cluster`]: two hosts, one etcd.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let (tls, cluster) = match args {
        [] => (false, false),
        [flag] if flag == "--tls" => (true, false),
        [flag] if flag == "--cluster" => (true, true),
        [extra, ..] => bail!("`cargo xtask demo` takes only --tls or --cluster (got {extra:?})"),
    };
    let tools = if cluster {
        Some(crate::provision::tools()?)
    } else {
        None
    };
    let podctl = build_podctl(tools.as_ref())?;
    let cert_tool = if tls { Some(build_cert_tool()?) } else { None };
    let started = Instant::now();
    let mut demo = Demo::new(podctl)?;
    match (&tools, &cert_tool) {
        (Some(tools), Some(tool)) => {
            demo.use_hosts()?;
            demo.use_tls(tool, &["root", "worker"])?;
            demo.use_etcd(tools.etcd())?;
            demo.cluster_story()?;
        }
        (None, Some(tool)) => {
            demo.use_tls(tool, &["root", "child"])?;
            demo.story()?;
        }
        _ => demo.story()?,
    }
    drop(demo);
    println!(
        "\ndemo: every step happened ({:.1} s); processes stopped, temporary directory removed",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds podctl and returns the path of the executable cargo reports;
/// with `tools` (protoc), with `--scope-store etcd://` too.
pub(crate) fn build_podctl(tools: Option<&crate::provision::Tools>) -> Result<PathBuf> {
    let mut cmd = cargo();
    let features = match tools {
        Some(tools) => {
            cmd.envs(tools.env());
            "cli,etcd"
        }
        None => "cli",
    };
    cmd.args([
        "build",
        "-p",
        "pod-events",
        "--features",
        features,
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
    /// From the pod's stderr (its log), not its stdout.
    log: bool,
    /// When it arrived.
    at: Instant,
}

/// Where pods run: the demo directory on one machine; with `--cluster`
/// a runtime directory and a process group per "host".
struct Host {
    /// The host's runtime directory (`PODS_RUNTIME_DIR` of its podctls).
    dir: PathBuf,
    /// Its process group, once its first process runs: `None` (and not
    /// `isolated`) on the one-machine demo, where pods stay in ours.
    group: Option<u32>,
    isolated: bool,
}

/// A running `podctl listen`, or the `podctl run` that supervises one.
struct Pod {
    name: &'static str,
    child: Child,
    /// The listen's pid (under `podctl run`, not `child`'s).
    pid: u32,
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
    /// The flags that name the scope table: `--scope-lock FILE`, or
    /// `--scope-store etcd://...`.
    table: [String; 2],
    hosts: Vec<Host>,
    /// Which host each pod runs on (index into `hosts`); 0 when unnamed.
    placement: Vec<(&'static str, usize)>,
    /// With `--cluster`: the etcd member, stopped last.
    etcd: Option<Child>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for pod in &mut self.pods {
            if matches!(pod.child.try_wait(), Ok(None)) {
                let _ = pod.child.kill();
            }
            let _ = pod.child.wait();
        }
        if let Some(etcd) = &mut self.etcd {
            let _ = etcd.kill();
            let _ = etcd.wait();
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
        // Every podctl of the demo runs with this: the pods' sockets,
        // state directories and the table are its defaults under $DEMO.
        println!("export PODS_RUNTIME_DIR=$DEMO");
        let (line_sink, lines) = mpsc::channel();
        let table = [
            "--scope-lock".to_owned(),
            dir.join("scope.lock").display().to_string(),
        ];
        let host = Host {
            dir: dir.clone(),
            group: None,
            isolated: false,
        };
        Ok(Demo {
            podctl,
            dir,
            pods: Vec::new(),
            lines,
            line_sink,
            pending: Vec::new(),
            step: 0,
            tls_port: None,
            table,
            hosts: vec![host],
            placement: Vec::new(),
            etcd: None,
        })
    }

    /// The root listens on `tls://127.0.0.1:PORT` too, and its child
    /// reports there; certificates for `pods` (and their CA) are made now,
    /// in the demo directory.
    fn use_tls(&mut self, cert_tool: &PathBuf, pods: &[&str]) -> Result<()> {
        let dir = self.path("tls");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("cannot create {dir}"))?;
        println!(
            "   $ tls_certs $DEMO/tls {}   # a CA, and a certificate per pod",
            pods.join(" ")
        );
        let status = Command::new(cert_tool)
            .arg(&dir)
            .args(pods)
            .status()
            .with_context(|| format!("could not start {}", cert_tool.display()))?;
        ensure!(status.success(), "tls_certs failed ({status})");
        // A free port now; the root binds it a moment later.
        let [port] = free_ports()?;
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
        let ast = self.path("repo/src/parser/ast");

        self.begin("the root registers its scope and listens");
        let root = self.listen("root", ROOT_RECONCILE_MS, &[])?;
        self.allocate(None, "root", root, &repo, None)?;

        self.begin("the root spawns `child` with write scope on repo/src");
        // The child reconciles only when told: its registry changes only
        // through the events of this story.
        self.run("child", "root", &src, "0", &[])?;
        self.expect("root", "that it spawned `child`", |l| {
            l.starts_with("pod `root` spawned `child`")
        })?;

        self.begin("`child` spawns `gc` with repo/src/parser; the root hears of it");
        self.run("gc", "child", &parser, "0", &[])?;
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
        println!("   child (pid {}) ended: {status}", self.pod("child")?.pid);
        // Its `podctl run` reports the death at once; the root's exit
        // watch would have seen it too, whichever comes first.
        self.expect("root", "that `child` is gone", |l| {
            l.starts_with("pod `child` shut down")
                || l.starts_with("`child` is gone without reporting: presumed crashed")
        })?;
        self.expect_log("gc", "that `gc` now reports to the root", |l| {
            l.contains("reports to a new manager from now on") && l.contains("parent=root")
        })?;
        let gc = self.allocation("gc")?;
        ensure!(
            gc["delegated_from"] == "root",
            "`gc` was not reparented to the root: {gc}"
        );
        println!("   (the table moved `gc` under the root, which told it to report there)");
        self.show_tables()?;
        self.check_registry(&["gc"])?;

        self.begin("`gc` spawns `ggc`; its report reaches the root through `gc`");
        self.run_program("ggc", "gc", &ast, &[], &["sleep", "600"])?;
        self.expect("gc", "that `gc` spawned `ggc`", |l| {
            l.starts_with("pod `gc` spawned `ggc`")
        })?;
        self.expect("root", "the relayed report that `gc` spawned `ggc`", |l| {
            l.starts_with("pod `gc` spawned `ggc`")
        })?;

        self.begin("`child` restarts under its name and takes `gc` back");
        let child = self.listen("child", "250", &[])?;
        self.allocate(
            Some("root"),
            "child",
            child,
            &src,
            Some(&self.pod_dir("child")),
        )?;
        self.expect_log("gc", "that `gc` reports to `child` again", |l| {
            l.contains("reports to a new manager from now on") && l.contains("parent=child")
        })?;
        let gc = self.allocation("gc")?;
        ensure!(
            gc["delegated_from"] == "child",
            "`child` did not take `gc` back: {gc}"
        );
        self.show_tables()?;

        self.begin("`ggc` exits; `gc` reports it to `child`, which relays it to the root");
        let status = self.terminate("ggc")?;
        println!("   ggc's podctl run ended: {status}");
        self.expect("child", "that `ggc` shut down", |l| {
            l.starts_with("pod `ggc` shut down")
        })?;
        // The root watches `ggc`'s process too: its exit watch may tell
        // it first.
        self.expect("root", "that `ggc` is gone", |l| {
            l.starts_with("pod `ggc` shut down")
                || l.starts_with("`ggc` is gone without reporting: presumed crashed")
        })?;

        self.begin("`gc` stops; then `child`, its shutdown told to the root; then the root");
        self.stop("gc")?;
        self.expect("child", "that `gc` shut down", |l| {
            l.starts_with("pod `gc` shut down")
        })?;
        let incarnation = self.incarnation("child")?;
        let bye = json!({"kind": "shut_down", "pod_name": "child", "incarnation": incarnation});
        self.send("root", &bye)?;
        self.expect("root", "that `child` shut down", |l| {
            l.starts_with("pod `child` shut down")
        })?;
        self.stop("child")?;
        let [flag, table] = &self.table;
        self.podctl_shown(&["scope", "release", flag, table, "--name", "root"])?;
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

    /// The host `pod` runs on.
    fn host_of(&self, pod: &str) -> usize {
        self.placement
            .iter()
            .find(|(name, _)| *name == pod)
            .map_or(0, |&(_, host)| host)
    }

    /// `pod`'s directory below its host's runtime directory: its state
    /// directory, holding its socket.
    fn pod_dir(&self, pod: &str) -> String {
        self.hosts[self.host_of(pod)]
            .dir
            .join(pod)
            .display()
            .to_string()
    }

    fn socket(&self, pod: &str) -> String {
        format!("{}/sock", self.pod_dir(pod))
    }

    /// `text` with the demo directory written as `$DEMO`: for the commands
    /// shown (what podctl prints is shown as it is).
    fn short(&self, text: &str) -> String {
        text.replace(&self.dir.display().to_string(), "$DEMO")
    }

    /// `podctl listen` for `name` (its socket, state directory and table
    /// the defaults under the demo directory), once its socket answers;
    /// returns its pid.
    fn listen(&mut self, name: &'static str, reconcile_ms: &str, extra: &[String]) -> Result<u32> {
        let mut args = self.listen_args(name, reconcile_ms);
        args.extend(extra.iter().cloned());
        // The socket named: with `--listen tls://...` alone a listen
        // would serve TLS only.
        let socket = self.socket(name);
        args.splice(
            1..1,
            [
                "--name".to_owned(),
                name.to_owned(),
                "--socket".to_owned(),
                socket,
            ],
        );
        println!("   $ podctl {} &", self.short(&args.join(" ")));
        let child = self.start(name, &args)?;
        let pid = child.id();
        self.pods.push(Pod { name, child, pid });
        self.wait_for_socket(name)?;
        Ok(pid)
    }

    /// `podctl run --from FROM --name NAME --write WRITE EXTRA... --
    /// podctl listen`: the spawner reserves, the listen adopts and
    /// listens.
    fn run(
        &mut self,
        name: &'static str,
        from: &str,
        write: &str,
        reconcile_ms: &str,
        extra: &[String],
    ) -> Result<()> {
        let podctl = self.podctl.display().to_string();
        let mut listen = vec![podctl];
        listen.extend(self.listen_args(name, reconcile_ms));
        let listen: Vec<&str> = listen.iter().map(String::as_str).collect();
        self.run_program(name, from, write, extra, &listen)?;
        self.wait_for_socket(name)
    }

    /// `podctl run --from FROM --name NAME --write WRITE EXTRA... -- CMD`
    /// (the table named when it is not the default); records the pid it
    /// prints (the child's).
    fn run_program(
        &mut self,
        name: &'static str,
        from: &str,
        write: &str,
        extra: &[String],
        cmd: &[&str],
    ) -> Result<()> {
        let mut args: Vec<String> = ["run", "--from", from, "--name", name, "--write", write]
            .map(str::to_owned)
            .to_vec();
        args.extend(self.table_unless_default());
        args.extend(extra.iter().cloned());
        args.push("--".to_owned());
        args.extend(cmd.iter().map(|&a| a.to_owned()));
        let shown = self
            .short(&args.join(" "))
            .replace(&self.podctl.display().to_string(), "podctl");
        println!("   $ podctl {shown} &");
        let child = self.start(name, &args)?;
        // podctl run prints `NAME pid PID incarnation ID` once started.
        let prefix = format!("{name} pid ");
        let mut started = String::new();
        self.expect(name, "that it started the child", |l| {
            let ok = l.starts_with(&prefix);
            if ok {
                started = l.to_owned();
            }
            ok
        })?;
        let pid = started
            .split(' ')
            .nth(2)
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("podctl run printed no pid: {started:?}"))?;
        self.pods.push(Pod { name, child, pid });
        Ok(())
    }

    /// The table flags, unless the table is the default one (under the
    /// runtime directory), so the commands shown stay short.
    fn table_unless_default(&self) -> Vec<String> {
        match self.etcd {
            Some(_) => self.table.to_vec(),
            None => Vec::new(),
        }
    }

    /// `listen --reconcile-interval-ms N`, and with `--tls` what `name`
    /// adds (the root's TLS listener, or `child`'s parent over TLS).
    fn listen_args(&self, name: &str, reconcile_ms: &str) -> Vec<String> {
        let mut args = vec![
            "listen".to_owned(),
            "--reconcile-interval-ms".into(),
            reconcile_ms.into(),
        ];
        let parent = match name {
            "root" => None,
            "child" => Some("root"),
            _ => Some("other"),
        };
        match (self.tls_args(name, parent), parent) {
            (Some(tls), _) => args.extend(tls),
            // Under `podctl run` the handoff says where the parent listens;
            // a restarted `child` is told.
            (None, Some("root")) => {
                args.extend(["--parent-socket".to_owned(), self.socket("root")]);
            }
            (None, _) => {}
        }
        args
    }

    /// Starts podctl with `args`, its output forwarded under `name`.
    fn start(&mut self, name: &'static str, args: &[String]) -> Result<Child> {
        let host = self.host_of(name);
        let mut cmd = Command::new(&self.podctl);
        if self.hosts[host].isolated {
            // The host's first process starts its group; the rest join.
            cmd.process_group(self.hosts[host].group.unwrap_or(0) as i32);
        }
        cmd.args(args)
            .env("PODS_RUNTIME_DIR", &self.hosts[host].dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if std::env::var_os("RUST_LOG").is_none() {
            // Warnings, and the endpoint's word when a reparent notice
            // moves a pod: podctl's start and stop notices would drown
            // the story.
            cmd.env("RUST_LOG", "warn,pod_events::endpoint=info");
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start {}", self.podctl.display()))?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        forward(name, stdout, false, self.line_sink.clone());
        forward(name, stderr, true, self.line_sink.clone());
        let host = &mut self.hosts[host];
        if host.isolated && host.group.is_none() {
            host.group = Some(child.id());
        }
        Ok(child)
    }

    /// Waits until `name`'s socket is there (its process must not exit).
    fn wait_for_socket(&mut self, name: &str) -> Result<()> {
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
        Ok(())
    }

    fn pod(&mut self, name: &str) -> Result<&mut Pod> {
        self.pods
            .iter_mut()
            .rev()
            .find(|p| p.name == name)
            .with_context(|| format!("no pod `{name}`"))
    }

    /// SIGKILL to the pod's own process (not its `podctl run`): it gets
    /// no chance to report or clean up. Returns how its supervisor ended.
    fn kill(&mut self, name: &str) -> Result<ExitStatus> {
        println!("   $ kill -KILL <pid of {name}>");
        let pod = self.pod(name)?;
        let pid = Pid::from_raw(pod.pid as i32).context("no pid")?;
        kill_process(pid, Signal::KILL).with_context(|| format!("could not kill `{name}`"))?;
        wait_with_deadline(&mut pod.child)
    }

    /// SIGTERM to the pod (through its `podctl run`, which forwards it);
    /// how it ended.
    fn terminate(&mut self, name: &str) -> Result<ExitStatus> {
        println!("   $ kill -TERM <pid of {name}>");
        let pod = self.pod(name)?;
        kill_process(Pid::from_child(&pod.child), Signal::TERM)
            .with_context(|| format!("could not signal `{name}`"))?;
        wait_with_deadline(&mut pod.child)
    }

    /// [`terminate`](Self::terminate), and the pod must exit 0 having
    /// removed its socket.
    fn stop(&mut self, name: &str) -> Result<()> {
        let socket = PathBuf::from(self.socket(name));
        let status = self.terminate(name)?;
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
    /// With `take_back` (a state directory), a restart: the pod takes
    /// back the children its registry there names.
    fn allocate(
        &self,
        from: Option<&str>,
        name: &str,
        pid: u32,
        write: &str,
        take_back: Option<&str>,
    ) -> Result<()> {
        let (pid, socket) = (pid.to_string(), self.socket(name));
        let [flag, table] = &self.table;
        let mut args = vec!["scope"];
        match from {
            Some(from) => args.extend(["delegate", flag, table, "--from", from]),
            None => args.extend(["register", flag, table]),
        }
        args.extend([
            "--name", name, "--pid", &pid, "--socket", &socket, "--write", write,
        ]);
        if let Some(dir) = take_back {
            args.extend(["--take-back", dir]);
        }
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
        let [flag, table] = &self.table;
        let table = self.podctl_json(&["scopes", flag, table])?;
        Ok(table["allocations"].as_array().cloned().unwrap_or_default())
    }

    /// `pod`'s allocation, as `podctl scopes --json` shows it.
    fn allocation(&self, pod: &str) -> Result<Value> {
        self.allocations()?
            .into_iter()
            .find(|a| a["pod_name"] == pod)
            .with_context(|| format!("`{pod}` has no allocation"))
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
        let registry = self.podctl_json(&["registry", "--state-dir", &self.pod_dir("root")])?;
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
        let [flag, table] = &self.table;
        let scopes = self.podctl(&["scopes", flag, table])?;
        let state = self.pod_dir("root");
        let registry = self.podctl(&["registry", "--state-dir", &state])?;
        // One print, so no pod's line lands inside a table.
        let mut text = String::new();
        for (command, table) in [
            (self.short(&format!("scopes {flag} {table}")), scopes),
            (
                self.short(&format!("registry --state-dir {state}")),
                registry,
            ),
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
    /// deadline. Returns when the line arrived.
    fn expect(
        &mut self,
        pod: &str,
        what: &str,
        matches: impl FnMut(&str) -> bool,
    ) -> Result<Instant> {
        self.expect_in(false, pod, what, matches)
    }

    /// [`expect`](Self::expect) for a line of `pod`'s log (stderr).
    fn expect_log(
        &mut self,
        pod: &str,
        what: &str,
        matches: impl FnMut(&str) -> bool,
    ) -> Result<Instant> {
        self.expect_in(true, pod, what, matches)
    }

    fn expect_in(
        &mut self,
        log: bool,
        pod: &str,
        what: &str,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<Instant> {
        let mut found = |line: &Line| line.log == log && line.pod == pod && matches(&line.text);
        if let Some(i) = self.pending.iter().position(&mut found) {
            return Ok(self.pending.remove(i).at);
        }
        let deadline = Instant::now() + STEP_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if found(&line) => return Ok(line.at),
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
/// the pod's name, and hands each line to the story (`log`: from stderr).
fn forward(
    pod: &'static str,
    from: impl Read + Send + 'static,
    log: bool,
    sink: mpsc::Sender<Line>,
) {
    std::thread::spawn(move || {
        for text in BufReader::new(from).lines() {
            let Ok(text) = text else { return };
            if log {
                eprintln!("   [{pod:>5} log] {text}");
            } else {
                println!("   [{pod:>5}] {text}");
            }
            let _ = sink.send(Line {
                pod: pod.to_owned(),
                text,
                log,
                at: Instant::now(),
            });
        }
    });
}

/// `N` distinct free loopback ports (all bound at once, then let go: the
/// processes that take them bind them a moment later).
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("cannot find a free loopback port")?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
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
