//! Claiming a socket path: the directory must be private, and one listener
//! owns a path at a time, across processes.
//!
//! The race test re-executes this test binary: each child binds the same
//! stale path when told to go and reports what happened on stdout.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener as StdListener, UnixStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use pod_transport::{ListenConfig, ListenError, Listener, Method, MethodSender, MethodSource};

use crate::{listen, notify, recv_method, sender, socket_path};

const NOBODY: u32 = 65534;

/// Binds `dir/sock` after giving `dir` `mode` (and `owner`, when given);
/// returns the refusal, if any.
async fn bind_in_dir(mode: u32, owner: Option<u32>) -> (tempfile::TempDir, Option<ListenError>) {
    let (top, _) = socket_path();
    let dir = top.path().join("run");
    std::fs::create_dir(&dir).unwrap();
    if let Some(uid) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).unwrap();
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
    let result = Listener::bind(dir.join("sock"), ListenConfig::default()).await;
    if result.is_err() {
        assert!(!dir.join("sock").exists(), "a refused bind left a socket");
    }
    (top, result.err())
}

fn check_insecure(err: Option<ListenError>, mode: u32, owner: u32) {
    match err {
        Some(ListenError::InsecureDir {
            ref path,
            mode: got,
            owner: got_owner,
            ..
        }) => {
            assert!(path.ends_with("run"), "{path:?}");
            assert_eq!((got, got_owner), (mode, owner));
            let text = err.unwrap().to_string();
            assert!(
                text.contains(&format!("mode {mode:o}")) && text.contains("/run"),
                "{text}"
            );
        }
        other => panic!("expected InsecureDir, got {other:?}"),
    }
}

#[tokio::test]
async fn a_group_or_world_writable_directory_is_refused() {
    let own = rustix::process::getuid().as_raw();
    for mode in [0o777, 0o770, 0o730, 0o703, 0o1777] {
        let (_dir, err) = bind_in_dir(mode, None).await;
        check_insecure(err, mode, own);
    }
}

#[tokio::test]
async fn a_private_or_read_only_shared_directory_is_accepted() {
    for mode in [0o700, 0o755, 0o750] {
        let (_dir, err) = bind_in_dir(mode, None).await;
        assert!(err.is_none(), "mode {mode:o}: {err:?}");
    }
}

#[tokio::test]
async fn a_directory_of_another_uid_is_refused() {
    if !rustix::process::getuid().is_root() {
        println!("skipped: giving a directory to another uid needs root");
        return;
    }
    // Even private to that uid: it, not us, decides what the path holds.
    for mode in [0o700, 0o777] {
        let (_dir, err) = bind_in_dir(mode, Some(NOBODY)).await;
        check_insecure(err, mode, NOBODY);
    }
}

#[tokio::test]
async fn the_lock_file_is_private_and_names_the_holder() {
    let (_dir, path) = socket_path();
    let _listener = listen(&path).await;
    let lock = lock_of(&path);
    let meta = std::fs::symlink_metadata(&lock).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        format!("{}\n", std::process::id())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_is_refused_with_the_holders_pid() {
    let (_dir, path) = socket_path();
    let mut first = listen(&path).await;
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    match &err {
        ListenError::Locked { pid, lock, .. } => {
            assert_eq!(*pid, Some(std::process::id()));
            assert_eq!(*lock, lock_of(&path));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
    sender().send(&path, &notify("to first")).await.unwrap();
    assert_eq!(recv_method(&mut first).await, notify("to first"));
    // Once the first is shut down, the path can be claimed again.
    first.shutdown().await;
    let mut again = listen(&path).await;
    sender().send(&path, &notify("to again")).await.unwrap();
    assert_eq!(recv_method(&mut again).await, notify("to again"));
}

#[tokio::test]
async fn a_dropped_listener_releases_its_path() {
    let (_dir, path) = socket_path();
    drop(listen(&path).await);
    // The drop removes the socket, then unlocks, on the blocking pool:
    // wait (bounded, to fail rather than hang) until the path is free.
    for _ in 0..1000 {
        match Listener::bind(&path, ListenConfig::default()).await {
            Ok(_) => return,
            Err(ListenError::Locked { .. }) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await
            }
            Err(err) => panic!("unexpected {err}"),
        }
    }
    panic!("the path was never released");
}

#[tokio::test]
async fn a_lock_path_that_is_a_link_is_not_followed() {
    let (dir, path) = socket_path();
    let target = dir.path().join("precious");
    std::fs::write(&target, b"keep me").unwrap();
    std::os::unix::fs::symlink(&target, lock_of(&path)).unwrap();
    let err = Listener::bind(&path, ListenConfig::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ListenError::LockFile { .. }), "{err}");
    assert!(err.to_string().contains("sock.lock"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"keep me");
    assert!(!path.exists());
}

fn lock_of(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    name.into()
}

/// Set in a child process: the socket path to race for.
const RACE_SOCKET: &str = "POD_TRANSPORT_TEST_RACE_SOCKET";
const RACE_TEST: &str = "claim::racing_processes_on_a_stale_path_one_binds";
/// Each child's report line starts with this.
const REPORT: &str = "RACE ";
const ROUNDS: usize = 20;
const RACERS: usize = 6;

/// A child: wait for "go" on stdin, bind, report; the winner then reports
/// the first method it receives.
fn race_child(path: PathBuf) {
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        match Listener::bind(&path, ListenConfig::default()).await {
            Ok(mut listener) => {
                println!("{REPORT}BOUND");
                let received = listener.recv().await.expect("the listener is open");
                match received.item {
                    Ok(Method::Notify { message, .. }) => println!("{REPORT}GOT {message}"),
                    other => println!("{REPORT}UNEXPECTED {other:?}"),
                }
            }
            Err(ListenError::Locked { pid, .. }) => println!("{REPORT}LOCKED {pid:?}"),
            Err(err) => println!("{REPORT}ERROR {err}"),
        }
    });
}

/// The racers of one round, killed if the round fails (a winner would
/// otherwise wait for a method forever).
struct Racers(Vec<(Child, BufReader<ChildStdout>)>);

impl Drop for Racers {
    fn drop(&mut self) {
        for (child, _) in &mut self.0 {
            // Already reaped when the round passed; then this is a no-op.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The next report line of a child.
fn report(out: &mut BufReader<ChildStdout>) -> String {
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            out.read_line(&mut line).unwrap() > 0,
            "a racer ended without reporting"
        );
        // libtest prints the test's name without a newline before the
        // test's own output.
        if let Some((_, report)) = line.trim_end().split_once(REPORT) {
            return report.to_owned();
        }
    }
}

#[test]
fn racing_processes_on_a_stale_path_one_binds() {
    if let Some(path) = std::env::var_os(RACE_SOCKET) {
        return race_child(path.into());
    }
    let exe = std::env::current_exe().unwrap();
    for round in 0..ROUNDS {
        let (_dir, path) = socket_path();
        drop(StdListener::bind(&path).unwrap());
        assert!(path.exists(), "the stale socket file is left behind");
        let mut racers = Racers(
            (0..RACERS)
                .map(|_| {
                    let mut child = Command::new(&exe)
                        .args([RACE_TEST, "--exact", "--nocapture", "--test-threads=1"])
                        .env(RACE_SOCKET, &path)
                        .stdin(Stdio::piped())
                        .stdout(Stdio::piped())
                        .spawn()
                        .expect("spawn a racer");
                    let out = BufReader::new(child.stdout.take().unwrap());
                    (child, out)
                })
                .collect(),
        );
        let racers = &mut racers.0;
        // Every racer is started and waiting: release them together.
        for (child, _) in racers.iter_mut() {
            child.stdin.take().unwrap().write_all(b"go\n").unwrap();
        }
        let reports: Vec<String> = racers.iter_mut().map(|(_, out)| report(out)).collect();
        let winners: Vec<usize> = (0..RACERS).filter(|&i| reports[i] == "BOUND").collect();
        assert_eq!(winners.len(), 1, "round {round}: {reports:?}");
        let winner = winners[0];
        let winner_pid = racers[winner].0.id();
        for (i, report) in reports.iter().enumerate() {
            if i != winner {
                assert_eq!(
                    *report,
                    format!("LOCKED Some({winner_pid})"),
                    "round {round}: {reports:?}"
                );
            }
        }
        // The one that bound is the one reachable at the path.
        let mut stream = StdStream::connect(&path).unwrap();
        stream
            .write_all(&pod_protocol::encode(&notify(format!("round {round}"))))
            .unwrap();
        drop(stream);
        let (child, out) = &mut racers[winner];
        assert_eq!(report(out), format!("GOT round {round}"));
        assert!(child.wait().unwrap().success());
        for (child, _) in racers.iter_mut() {
            assert!(child.wait().unwrap().success());
        }
    }
}
