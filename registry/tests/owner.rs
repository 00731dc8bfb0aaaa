//! One owner per state directory (issue 13, issue 19 item 3): a second
//! writer is refused at once, naming the holder's pid, in this process or
//! another; the lock dies with its holder, even by SIGKILL; the read-only
//! snapshot takes no lock and creates nothing.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use pod_registry::{FileRegistry, Registry, RegistryError, RegistrySnapshot, LOCK_FILE};

use crate::common::{block_on, record};

/// The holder role: set to the state directory to own.
const HOLDER_DIR: &str = "POD_REGISTRY_HOLDER_DIR";

/// The holder role; does nothing unless [`HOLDER_DIR`] is set. Opens the
/// registry, adds a record, says `ready`, and holds the registry until
/// stdin closes (or it is killed).
#[test]
fn owner_holder() {
    let Some(dir) = std::env::var_os(HOLDER_DIR) else {
        return;
    };
    let registry = FileRegistry::open(dir).unwrap();
    block_on(registry.add(record("held", Some("1")))).unwrap();
    println!("ready");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

/// A running holder, and its stdout (kept open: the harness still prints
/// its summary when the holder exits).
struct Holder {
    child: Child,
    _stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

/// Starts a holder of `dir` and waits for it to own the directory.
fn start_holder(dir: &Path) -> Holder {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "owner::owner_holder",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HOLDER_DIR, dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    // The harness prints `test owner::owner_holder ... ` before it.
    let ready = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|line| line.ends_with("ready"));
    assert!(ready, "the holder exited before owning {}", dir.display());
    Holder {
        child,
        _stdout: lines,
    }
}

/// Opening `dir` must be refused, naming `pid`.
fn check_locked(dir: &Path, pid: u32) {
    let error = FileRegistry::open(dir).unwrap_err();
    match &error {
        RegistryError::Locked {
            dir: at,
            pid: holder,
        } => {
            assert_eq!(at, dir);
            assert_eq!(*holder, Some(pid));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let shown = error.to_string();
    assert!(shown.contains(&format!("process {pid}")), "{shown}");
    assert!(shown.contains(&dir.display().to_string()), "{shown}");
}

#[test]
fn a_second_writer_in_another_process_is_refused_and_the_lock_dies_with_its_holder() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    let Holder {
        child: mut holder,
        _stdout: out,
    } = start_holder(&dir);
    check_locked(&dir, holder.id());
    assert_eq!(
        fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
        format!("{}\n", holder.id())
    );
    // Reading does not need the lock, and sees what the holder made
    // durable.
    let snapshot = RegistrySnapshot::load(&dir).unwrap();
    assert_eq!(snapshot.state().records().count(), 1);

    // SIGKILL: no destructor runs, the kernel drops the lock.
    holder.kill().unwrap();
    holder.wait().unwrap();
    drop(out);
    let registry = FileRegistry::open(&dir).unwrap();
    assert_eq!(registry.list(), [record("held", Some("1"))]);
    assert_eq!(
        fs::read_to_string(dir.join(LOCK_FILE)).unwrap(),
        format!("{}\n", std::process::id())
    );
    drop(registry);

    // A holder that exits normally releases it too.
    let mut holder = start_holder(&dir);
    check_locked(&dir, holder.child.id());
    drop(holder.child.stdin.take());
    assert!(holder.child.wait().unwrap().success());
    FileRegistry::open(&dir).unwrap();
}

#[test]
fn a_second_writer_in_this_process_is_refused_until_the_first_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let first = FileRegistry::open(dir.path()).unwrap();
    check_locked(dir.path(), std::process::id());
    drop(first);
    FileRegistry::open(dir.path()).unwrap();
}

#[test]
fn a_snapshot_takes_no_lock_and_creates_nothing() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let snapshot = RegistrySnapshot::load(&missing).unwrap();
    assert!(snapshot.state().is_empty() && snapshot.invalid_records().is_empty());
    assert_eq!(snapshot.state_dir(), missing);
    assert!(!missing.exists());

    // An existing but empty directory: nothing created in it.
    let empty = root.path().join("empty");
    fs::create_dir(&empty).unwrap();
    RegistrySnapshot::load(&empty).unwrap();
    assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);

    // Beside an owner: no conflict either way.
    let registry = FileRegistry::open(&empty).unwrap();
    block_on(registry.add(record("w1", None))).unwrap();
    let snapshot = RegistrySnapshot::load(&empty).unwrap();
    assert_eq!(
        snapshot.state().records().cloned().collect::<Vec<_>>(),
        [record("w1", None)]
    );
    block_on(registry.add(record("w2", None))).unwrap();

    // A corrupt file is the typed error, untouched.
    fs::write(empty.join("departed_pods.json"), b"[oops").unwrap();
    assert!(matches!(
        RegistrySnapshot::load(&empty),
        Err(RegistryError::Corrupt { .. })
    ));
    assert_eq!(
        fs::read(empty.join("departed_pods.json")).unwrap(),
        b"[oops"
    );
}
