//! Target 3, files: arbitrary bytes as the on-disk state of the scope
//! table and the registry, opened through the real file implementations.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pod_registry::{
    FileRegistry, Mutation, PodName, Record, Registry, RegistryError, RegistrySnapshot,
    RegistryState, DEPARTED_FILE, LOCK_FILE, RECORDS_FILE,
};
use pod_scope_lock::{Allocation, FileStore, PodSpec, ScopeError, ScopeRule, Table, TableStore};

use crate::block_on;

/// Where the files live: a directory per thread, under `$POD_FUZZ_TMPDIR`
/// when set (`cargo xtask fuzz` points it at a tmpfs directory it removes
/// afterwards), else `/dev/shm` when present (fsync is free there), else
/// the system's temporary directory.
fn work_dir() -> PathBuf {
    thread_local! {
        static DIR: tempfile::TempDir = {
            let base = std::env::var_os("POD_FUZZ_TMPDIR")
                .map(PathBuf::from)
                .or_else(|| Some(PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
                .unwrap_or_else(std::env::temp_dir);
            tempfile::Builder::new()
                .prefix("pod-fuzz-files-")
                .tempdir_in(base)
                .expect("a temporary directory for the files target")
        };
    }
    DIR.with(|dir| dir.path().to_path_buf())
}

/// An empty directory `name` under the work directory.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = work_dir().join(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot clear {}: {e}", dir.display()),
    }
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

fn read(path: &Path) -> Vec<u8> {
    fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn entries(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Writes `data` as `scope.lock`, then as `spawned_pods.json` (with an
/// empty departed set beside it), then as `departed_pods.json` (with no
/// records beside it), and opens each through the real implementation.
///
/// Checks, for the scope table: loading under the shared and the exclusive
/// lock agree; either a typed error (corrupt, invalid, unsupported version)
/// that leaves the file byte for byte as it was and creates no file (no
/// journal),
/// or a table that satisfies its invariant, whose file a read-only
/// transaction leaves untouched, on which release, reclaim, register and
/// delegate keep the invariant, and which survives a write and a reload.
///
/// For the registry: either [`RegistryError::Corrupt`] naming the file,
/// with both files unchanged and no data file created (the owner's lock
/// file aside); or a state in which no record is matched by a tombstone
/// and the departed set is within its capacity, with both files unchanged
/// by open and close, which the read-only snapshot sees too, and which
/// survives durable writes of both files and a reopen, every invalid
/// record (an element that is not a valid record) kept byte for byte.
pub fn files(data: &[u8]) {
    scope_table_file(data);
    registry_files(data, RECORDS_FILE);
    registry_files(data, DEPARTED_FILE);
}

fn is_typed_load_error(error: &ScopeError) -> bool {
    matches!(
        error,
        ScopeError::Corrupt { .. }
            | ScopeError::InvalidTable { .. }
            | ScopeError::UnsupportedVersion { .. }
    )
}

fn scope_table_file(data: &[u8]) {
    let dir = fresh_dir("scope");
    let path = dir.join("scope.lock");
    fs::write(&path, data).expect("write scope.lock");
    let store = FileStore::new(&path);
    let loaded = store.load();
    let locked = store.transact(|table| Ok(table.clone()));
    assert_eq!(read(&path), data, "opening scope.lock changed it");
    assert_eq!(
        entries(&dir),
        BTreeSet::from(["scope.lock".to_owned()]),
        "opening scope.lock created a file (a journal, a lock file)"
    );
    let table = match (loaded, locked) {
        (Ok(loaded), Ok(locked)) => {
            assert_eq!(loaded, locked, "load and transact disagree");
            loaded
        }
        (Err(loaded), Err(locked)) => {
            assert!(
                is_typed_load_error(&loaded) && is_typed_load_error(&locked),
                "scope.lock: untyped error: {loaded:?} / {locked:?}"
            );
            assert_eq!(loaded.to_string(), locked.to_string());
            return;
        }
        (loaded, locked) => panic!("load and transact disagree: {loaded:?} / {locked:?}"),
    };
    if let Err(error) = table.check_invariant() {
        panic!("scope.lock loaded a table that breaks the invariant: {error}\n{table:#?}");
    }
    exercise_rules(&table);

    // A changing transaction writes the table back; reloading must give
    // exactly what was written.
    let first = table.allocations().next().cloned();
    if let Some(first) = first {
        let mut expected = table.clone();
        expected
            .release(&first.pod_name, None)
            .expect("release of a present pod");
        let released = store
            .transact(|t| t.release(&first.pod_name, None))
            .expect("releasing a pod of a loaded table");
        assert_eq!(released, first);
        let reloaded = store.load().expect("reloading a table just written");
        assert_eq!(reloaded, expected, "the written table reloads differently");
    }
}

/// At most this many pods of a loaded table are exercised one by one, to
/// keep an execution cheap.
const EXERCISED: usize = 12;

/// Runs the table's rules on copies of `table` and checks the invariant
/// after each.
fn exercise_rules(table: &Table) {
    let check = |t: &Table, what: &str| {
        if let Err(error) = t.check_invariant() {
            panic!("{what} broke the invariant: {error}\nbefore: {table:#?}\nafter: {t:#?}");
        }
    };
    let pods: Vec<Allocation> = table.allocations().take(EXERCISED).cloned().collect();
    for a in &pods {
        let mut t = table.clone();
        let released = t.release(&a.pod_name, a.incarnation.as_deref());
        assert_eq!(released.as_ref().ok(), Some(a), "release of {}", a.pod_name);
        check(&t, &format!("releasing `{}`", a.pod_name));

        if let (Some(until), Some(incarnation)) = (a.pending_until, &a.incarnation) {
            // A pending reservation: adopting it before its deadline
            // changes only its process, so the invariant stands.
            let mut t = table.clone();
            let adopted = t
                .adopt(&a.pod_name, incarnation, 1, 1, until)
                .unwrap_or_else(|e| panic!("adopting `{}`: {e}", a.pod_name));
            assert_eq!(adopted.pending_until, None);
            check(&t, &format!("adopting `{}`", a.pod_name));
        }

        let _ = table.effective_write_scope(a.pod_name.as_str());
        for rule in &a.scope_allow {
            let _ = table.owner_of(&rule.target);
            // A new pod asking for exactly one of this pod's rules: as a
            // child of it, and as a top-level pod.
            let spec = PodSpec {
                pod_name: PodName::new("fuzz-new").expect("a valid name"),
                pid: 1,
                socket: "/run/pods/fuzz-new.sock".to_owned(),
                scope: vec![rule.clone()],
            };
            let mut t = table.clone();
            if t.delegate(&a.pod_name, spec.clone(), 1, "fuzz".into())
                .is_ok()
            {
                check(&t, &format!("delegating {rule:?} from `{}`", a.pod_name));
            }
            let mut t = table.clone();
            if t.register(spec, 1, "fuzz".into()).is_ok() {
                check(&t, &format!("registering {rule:?}"));
            }
        }
    }
    for parity in [0, 1] {
        let mut t = table.clone();
        let removed = t.reclaim(|a| a.pid % 2 == parity);
        assert!(removed.iter().all(|a| a.pid % 2 != parity));
        check(&t, "reclaim");
    }
    let mut t = table.clone();
    let top = PodSpec {
        pod_name: PodName::new("fuzz-top").expect("a valid name"),
        pid: 1,
        socket: "/run/pods/fuzz-top.sock".to_owned(),
        scope: vec![ScopeRule::write("/")],
    };
    if t.register(top, 1, "fuzz".into()).is_ok() {
        check(&t, "registering a write rule over /");
    }
}

fn registry_files(data: &[u8], file: &str) {
    let dir = fresh_dir("registry");
    // The registry refuses a state directory others can write, whatever
    // the umask made of this one.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).expect("chmod the registry dir");
    let records_path = dir.join(RECORDS_FILE);
    let departed_path = dir.join(DEPARTED_FILE);
    for path in [&records_path, &departed_path] {
        let bytes = if path.ends_with(file) { data } else { b"[]\n" };
        fs::write(path, bytes).expect("write a registry file");
    }
    let before = (read(&records_path), read(&departed_path));
    // The owner's lock file is created by open and is not data.
    let data_entries = || {
        let mut names = entries(&dir);
        names.remove(LOCK_FILE);
        names
    };
    let names_before = data_entries();
    let unchanged = |when: &str| {
        assert!(
            (read(&records_path), read(&departed_path)) == before,
            "{file}: {when} changed the registry files"
        );
        assert_eq!(data_entries(), names_before, "{file}: {when} created files");
    };
    // The read-only path agrees with the owner, and writes nothing.
    let snapshot = RegistrySnapshot::load(&dir);
    unchanged("a snapshot");

    let registry = match FileRegistry::open(&dir) {
        Ok(registry) => registry,
        Err(RegistryError::Corrupt { path, message, .. }) => {
            assert_eq!(
                path,
                dir.join(file),
                "the error names another file: {message}"
            );
            assert!(
                matches!(snapshot, Err(RegistryError::Corrupt { .. })),
                "{file}: open refused it, the snapshot said {snapshot:?}"
            );
            unchanged("a failed open");
            return;
        }
        Err(other) => panic!("{file}: untyped error: {other:?}"),
    };
    let state = registry.read(RegistryState::clone);
    check_registry_state(&state);
    let invalid: Vec<String> = registry
        .invalid_records()
        .iter()
        .map(|r| r.raw().to_owned())
        .collect();
    let snapshot = snapshot.expect("a snapshot of a registry that opens");
    assert_eq!(
        snapshot.state(),
        &state,
        "{file}: snapshot and owner disagree"
    );
    assert_eq!(snapshot.invalid_records(), registry.invalid_records());
    drop(registry);
    unchanged("opening and closing");

    // Durable writes of both files, then a reopen: the state must come
    // back as it was, and every invalid record byte for byte.
    let registry = FileRegistry::open(&dir).expect("reopening a registry that opened");
    let probe = PodName::new("fuzz-probe").expect("a valid name");
    let mutations = [
        Mutation::Depart {
            pod_name: probe.clone(),
            incarnation: Some("fuzz".to_owned()),
        },
        Mutation::Add(Record {
            pod_name: probe,
            socket_path: "/run/pods/fuzz-probe.sock".to_owned(),
            scope_delegated: vec![],
            callback_address: String::new(),
            incarnation: Some("fuzz-2".to_owned()),
        }),
    ];
    let mut expected = state;
    for mutation in mutations {
        let outcome = expected.apply(&mutation);
        assert_eq!(
            block_on(registry.apply(mutation)).expect("a durable write"),
            outcome
        );
    }
    drop(registry);
    let reopened = FileRegistry::open(&dir).expect("reopening after a write");
    let state = reopened.read(RegistryState::clone);
    assert_eq!(
        state, expected,
        "{file}: the written registry reloads differently"
    );
    let kept: Vec<&str> = reopened.invalid_records().iter().map(|r| r.raw()).collect();
    assert_eq!(
        kept, invalid,
        "{file}: invalid records changed across a write"
    );
    let written = String::from_utf8(read(&records_path)).expect("a records file we wrote is UTF-8");
    for raw in &invalid {
        assert!(written.contains(raw.as_str()), "{file}: dropped {raw}");
    }
}

fn check_registry_state(state: &RegistryState) {
    assert_eq!(state.len(), state.records().count());
    assert!(state.departed_len() <= state.departed_capacity());
    let mut seen = BTreeSet::new();
    for tombstone in state.departed() {
        assert!(
            seen.insert((tombstone.pod_name.clone(), tombstone.incarnation.clone())),
            "duplicate tombstone {tombstone:?}"
        );
    }
    let mut keys = BTreeSet::new();
    for record in state.records() {
        assert!(
            !state.is_departed(record.pod_name.as_str(), record.incarnation.as_deref()),
            "loaded record {record:?} is matched by a tombstone"
        );
        assert!(
            keys.insert((record.pod_name.clone(), record.incarnation.clone())),
            "two records {record:?}"
        );
    }
}
