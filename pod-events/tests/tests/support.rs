//! The black-box harness the `podctl` tests share: a private directory to
//! run the real binary in ([`Env`]) and a process left running whose
//! output lines are collected ([`Running`]).
//!
//! Every invocation sets `PODS_RUNTIME_DIR` to the test's own directory,
//! so a default path never touches the user's, clears `RUST_LOG`, so
//! stderr holds only what podctl prints by default, and removes the
//! handoff variables, so no test inherits a parent pod from its runner.
//! A test file adds the helpers only it needs in its own `impl Env`.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

/// A liveness bound for waits on other processes, not a performance
/// assertion.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

pub(crate) const PODCTL: &str = env!("CARGO_BIN_EXE_podctl");

/// A private directory to run podctl in.
pub(crate) struct Env {
    pub(crate) dir: tempfile::TempDir,
    /// The scope table, relative to `dir`.
    table: &'static str,
}

impl Env {
    /// A directory whose scope table, `scope.lock`, is not the default
    /// one: commands name it with `--scope-lock`.
    pub(crate) fn new() -> Env {
        Env::with_table("scope.lock")
    }

    /// A directory whose scope table is `table` (relative to it), e.g.
    /// the default `run/scope.lock` for commands that take no flag.
    pub(crate) fn with_table(table: &'static str) -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            table,
        }
    }

    /// `<dir>/relative`, as a string (podctl's path flags).
    pub(crate) fn path(&self, relative: &str) -> String {
        self.dir.path().join(relative).display().to_string()
    }

    pub(crate) fn lock(&self) -> String {
        self.path(self.table)
    }

    pub(crate) fn socket(&self, pod: &str) -> String {
        self.path(&format!("{pod}/sock"))
    }

    pub(crate) fn command(&self) -> Command {
        let mut cmd = Command::new(PODCTL);
        cmd.env("PODS_RUNTIME_DIR", self.path("run"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for var in pod_events::handoff::ALL_VARIABLES {
            cmd.env_remove(var);
        }
        cmd
    }

    pub(crate) fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs podctl and checks its exit status and that `needle` is in
    /// stdout (status 0), in its one line of stderr (status 1 with a
    /// message) or in stderr (status 2). Returns stdout.
    pub(crate) fn check(&self, args: &[&str], code: i32, needle: &str) -> String {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        let context = format!("podctl {args:?}\nstdout: {stdout}\nstderr: {stderr}");
        assert_eq!(out.status.code(), Some(code), "{context}");
        match code {
            0 => assert!(stdout.contains(needle), "{context}"),
            1 => {
                assert_eq!(stderr.lines().count(), 1, "one line on stderr: {context}");
                assert!(stderr.starts_with("podctl: "), "{context}");
                assert!(stderr.contains(needle), "{context}");
            }
            _ => assert!(stderr.contains(needle), "{context}"),
        }
        stdout
    }

    /// Runs podctl; stdout must parse as JSON. Returns it and the status.
    pub(crate) fn json_status(&self, args: &[&str]) -> (Value, Option<i32>) {
        let out = self.run(args);
        let (stdout, stderr) = text(&out);
        let value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("podctl {args:?}: {e}\nstdout: {stdout}\nstderr: {stderr}"));
        (value, out.status.code())
    }

    /// Runs podctl with `-o json`; it must succeed.
    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend(args);
        let (value, code) = self.json_status(&all);
        assert_eq!(code, Some(0), "podctl {all:?}: {value}");
        value
    }

    /// `scope register` (no `from`) or `scope delegate --from`, with the
    /// pod's socket in this directory; it must succeed.
    pub(crate) fn allocate(&self, from: Option<&str>, name: &str, pid: u32, write: &str) -> Value {
        let (pid, socket, lock) = (pid.to_string(), self.socket(name), self.lock());
        let mut args = vec!["scope"];
        match from {
            Some(from) => args.extend(["delegate", "--from", from]),
            None => args.push("register"),
        }
        args.extend([
            "--scope-lock",
            &lock,
            "--name",
            name,
            "--pid",
            &pid,
            "--socket",
            &socket,
            "--write",
            write,
        ]);
        self.json(&args)
    }

    /// The scope table's allocations, as `podctl scopes` shows them.
    pub(crate) fn allocations(&self) -> Vec<Value> {
        let table = self.json(&["scopes", "--scope-lock", &self.lock()]);
        table["allocations"].as_array().unwrap().clone()
    }

    /// The names of the pods holding an allocation.
    pub(crate) fn pod_names(&self) -> Vec<String> {
        self.allocations()
            .iter()
            .map(|a| a["pod_name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `podctl send --socket <to> --event <event>`; it must succeed.
    pub(crate) fn send(&self, to: &str, event: Value) {
        self.check(
            &["send", "--socket", to, "--event", &event.to_string()],
            0,
            "",
        );
    }

    /// `podctl listen` as pod `name` with its paths in this directory,
    /// plus `extra`, once it listens (its control socket, bound last, is
    /// there).
    pub(crate) fn listen(&self, name: &str, extra: &[&str]) -> Running {
        self.listen_in(self.command(), name, extra)
    }

    /// [`Env::listen`] with `cmd`, a [`Env::command`] given global flags
    /// or variables first.
    pub(crate) fn listen_in(&self, mut cmd: Command, name: &str, extra: &[&str]) -> Running {
        let (socket, state, lock) = (self.socket(name), self.path(name), self.lock());
        cmd.args([
            "listen",
            "--name",
            name,
            "--socket",
            &socket,
            "--state-dir",
            &state,
            "--scope-lock",
            &lock,
        ])
        .args(extra);
        let mut running = Running::start(&mut cmd);
        running.wait_for_path(Path::new(&format!("{socket}.control")));
        running
    }
}

/// An invocation's stdout and stderr, as text.
pub(crate) fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A process left running, the lines of its stdout and of its stderr
/// collected as they come.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    logs: mpsc::Receiver<String>,
    /// The stdout lines received so far.
    pub(crate) seen: Vec<String>,
    /// The stderr lines received so far.
    pub(crate) logged: Vec<String>,
}

impl Running {
    pub(crate) fn start(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let logs = lines_of(child.stderr.take().unwrap());
        Running {
            child,
            lines,
            logs,
            seen: Vec::new(),
            logged: Vec::new(),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `done`; fails if the process exits first.
    pub(crate) fn wait_for(&mut self, what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("exited ({status}) before {what}");
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `path` exists; fails if the process exits first.
    pub(crate) fn wait_for_path(&mut self, path: &Path) {
        let path = PathBuf::from(path);
        self.wait_for(&format!("{path:?} existed"), || path.exists());
    }

    /// Waits for a printed line containing `needle` (lines already seen
    /// count: events of different pods may be printed in any order);
    /// `meanwhile` runs between waits (e.g. to send again until a
    /// subscriber is there).
    pub(crate) fn expect_while(&mut self, needle: &str, meanwhile: impl Fn()) -> String {
        wait_line(&self.lines, &mut self.seen, needle, "line", meanwhile)
    }

    pub(crate) fn expect(&mut self, needle: &str) -> String {
        self.expect_while(needle, || {})
    }

    /// Waits for a line on stderr containing `needle`.
    pub(crate) fn expect_log(&mut self, needle: &str) -> String {
        wait_line(&self.logs, &mut self.logged, needle, "log line", || {})
    }

    /// Waits for the process to exit on its own.
    pub(crate) fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `signal` and waits for the process to exit.
    pub(crate) fn signal(&mut self, signal: Signal) -> ExitStatus {
        kill_process(Pid::from_child(&self.child), signal).unwrap();
        self.wait()
    }

    /// Waits for the process to exit on its own; returns its status and
    /// all it wrote to stderr.
    pub(crate) fn exit(&mut self) -> (ExitStatus, String) {
        let status = self.wait();
        (status, self.stderr())
    }

    /// [`Running::signal`], then all it wrote to stderr.
    pub(crate) fn stop(&mut self, signal: Signal) -> (ExitStatus, String) {
        let status = self.signal(signal);
        (status, self.stderr())
    }

    /// Every line printed, once the process has exited.
    pub(crate) fn all_lines(&mut self) -> &[String] {
        drain(&self.lines, &mut self.seen);
        &self.seen
    }

    /// Every line written to stderr, once the process has exited.
    pub(crate) fn all_logs(&mut self) -> &[String] {
        drain(&self.logs, &mut self.logged);
        &self.logged
    }

    fn stderr(&mut self) -> String {
        self.all_logs().iter().map(|l| format!("{l}\n")).collect()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of `from`, read on a thread until its end.
fn lines_of(from: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (sink, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if sink.send(line).is_err() {
                return;
            }
        }
    });
    lines
}

fn wait_line(
    rx: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    needle: &str,
    what: &str,
    meanwhile: impl Fn(),
) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(line) = seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {what} containing {needle:?}; saw {seen:?}"
        );
        meanwhile();
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => seen.push(line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                panic!("the output ended without a {what} containing {needle:?}; saw {seen:?}")
            }
        }
    }
}

/// Collects the lines left until the pipe's end (every writer gone).
fn drain(rx: &mpsc::Receiver<String>, seen: &mut Vec<String>) {
    while let Ok(line) = rx.recv_timeout(DEADLINE) {
        seen.push(line);
    }
}

/// Polls `f` until it is true; fails after [`DEADLINE`].
pub(crate) fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not reached");
        std::thread::sleep(Duration::from_millis(20));
    }
}
