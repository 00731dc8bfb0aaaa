//! `FileRegistry`: file format, open, corrupt files, crash-window repair,
//! injected write failures and group commit.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use pod_registry::{
    FaultInjector, FileRegistry, Outcome, Registry, RegistryError, RegistryOptions, DEPARTED_FILE,
    LOCK_FILE, RECORDS_FILE,
};

use crate::common::{block_on, departed_on_disk, name, record, records_on_disk, tombstone};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn inode(path: &Path) -> u64 {
    fs::metadata(path).unwrap().ino()
}

/// The names in `dir`, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Whether `path`'s file name is a temporary name of `file`'s writes.
fn is_temp_of(path: &Path, file: &str) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name.strip_prefix(&format!("{file}.tmp."))
        .is_some_and(|suffix| suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// No temporary file is left in `dir`.
fn no_temp_left(dir: &Path) {
    let names = entries(dir);
    assert!(names.iter().all(|n| !n.contains(".tmp")), "{names:?}");
}

/// Opens `dir` with a fault injector; returns both.
fn open_faulty(dir: &Path) -> (FileRegistry, FaultInjector) {
    let faults = FaultInjector::new();
    let options = RegistryOptions::new().fault_injector(faults.clone());
    (FileRegistry::open_with(dir, options).unwrap(), faults)
}

#[test]
fn open_creates_the_directory_and_empty_files_with_private_modes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state/parent");
    let registry = FileRegistry::open(&dir).unwrap();
    assert_eq!(registry.path(), dir.join(RECORDS_FILE));
    assert_eq!(registry.departed_path(), dir.join(DEPARTED_FILE));
    assert_eq!(registry.state_dir(), dir);
    assert_eq!(mode(&dir), 0o700);
    for file in [RECORDS_FILE, DEPARTED_FILE] {
        assert_eq!(fs::read_to_string(dir.join(file)).unwrap(), "[]\n");
        assert_eq!(mode(&dir.join(file)), 0o600);
    }
    assert!(registry.list().is_empty());
    assert_eq!(registry.durable_writes(), 0);
}

#[test]
fn records_file_is_a_json_array_one_record_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    block_on(async {
        registry.add(record("w2", Some("b"))).await.unwrap();
        registry.add(record("w1", None)).await.unwrap();
        registry.add(record("w2", Some("a"))).await.unwrap();
    });
    let text = fs::read_to_string(registry.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(
        lines[1],
        r#"{"pod_name":"w1","socket_path":"/run/pods/w1.sock","scope_delegated":[{"target":"/srv/w1","permission":"write","recursive":true}],"callback_address":"/run/pods/parent.sock"},"#
    );
    // Sorted by name then incarnation; the same name twice.
    assert_eq!(
        records_on_disk(dir.path()),
        [
            record("w1", None),
            record("w2", Some("a")),
            record("w2", Some("b"))
        ]
    );
    assert_eq!(mode(registry.path()), 0o600);
    no_temp_left(dir.path());
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    block_on(async {
        registry.add(record("w1", Some("a"))).await.unwrap();
        registry.add(record("w2", Some("a"))).await.unwrap();
        registry.depart(name("w2"), Some("a".into())).await.unwrap();
        registry.depart(name("gone"), None).await.unwrap();
    });
    drop(registry);
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.list(), [record("w1", Some("a"))]);
    assert!(registry.is_departed("w2", Some("a")));
    assert!(registry.is_departed("gone", Some("any")));
    assert_eq!(
        departed_on_disk(dir.path()),
        [tombstone("w2", Some("a")), tombstone("gone", None)]
    );
    assert_eq!(
        block_on(registry.add(record("w2", Some("a")))).unwrap(),
        Outcome::Departed
    );
}

#[test]
fn reads_a_legacy_pretty_printed_file() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join(RECORDS_FILE),
        r#"[
  {
    "pod_name": "old",
    "socket_path": "/run/pods/old.sock",
    "scope_delegated": [{"target": "/srv/old", "permission": "read"}],
    "callback_address": ""
  }
]"#,
    )
    .unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    let old = registry.get("old", Some("whatever")).unwrap();
    assert_eq!(old.incarnation, None);
    assert!(old.scope_delegated[0].recursive);
    // The departed file was missing and is created; the records file is
    // not rewritten by open.
    assert_eq!(departed_on_disk(dir.path()), []);
    assert!(fs::read_to_string(registry.path()).unwrap().contains("  {"));
}

/// Opens a directory whose `file` holds `bytes`; expects `Corrupt` at
/// `(line, column)`, and the directory unchanged.
fn check_corrupt(file: &str, bytes: &[u8], line: usize, column: usize) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(file);
    fs::write(&path, bytes).unwrap();
    fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
    let error = FileRegistry::open(dir.path()).unwrap_err();
    match &error {
        RegistryError::Corrupt {
            path: at,
            line: l,
            column: c,
            message,
        } => {
            assert_eq!(at, &path);
            assert_eq!((*l, *c), (line, column), "{message}");
            assert!(
                !message.is_empty() && !message.contains(" at line "),
                "{message}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let shown = error.to_string();
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert!(
        shown.contains(&format!("line {line}, column {column}")),
        "{shown}"
    );
    assert_eq!(fs::read(&path).unwrap(), bytes);
    assert_eq!(mode(&path), 0o644);
    // Nothing was created beside it but the (empty) owner lock file.
    let mut expected = vec![file.to_owned(), LOCK_FILE.to_owned()];
    expected.sort();
    assert_eq!(entries(dir.path()), expected);
}

#[test]
fn a_corrupt_file_is_an_error_naming_file_and_position_and_is_left_untouched() {
    check_corrupt(RECORDS_FILE, b"[\n{\"pod_name\": \"w1\",\n  oops", 3, 3);
    check_corrupt(RECORDS_FILE, b"", 1, 0);
    check_corrupt(RECORDS_FILE, b"{}", 1, 0);
    check_corrupt(RECORDS_FILE, b"[]\n[]", 2, 1);
    check_corrupt(RECORDS_FILE, b"[\"\xff\"]", 1, 3);
    // The departed file is this crate's alone: every element must be a
    // tombstone.
    check_corrupt(DEPARTED_FILE, b"[{\"pod_name\": 7}]", 1, 15);
}

#[test]
fn open_drops_records_a_tombstone_matches_and_the_next_write_fixes_the_file() {
    // What a crash between writing the departed file and the records file
    // leaves behind.
    let dir = tempfile::tempdir().unwrap();
    let records = [
        record("w1", Some("a")),
        record("w1", Some("b")),
        record("w2", None),
    ];
    fs::write(
        dir.path().join(RECORDS_FILE),
        serde_json::to_vec(&records).unwrap(),
    )
    .unwrap();
    fs::write(
        dir.path().join(DEPARTED_FILE),
        serde_json::to_vec(&[tombstone("w1", Some("a")), tombstone("w2", Some("z"))]).unwrap(),
    )
    .unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.list(), [record("w1", Some("b"))]);
    // Opening does not write; the next write (even a flush) does.
    assert_eq!(records_on_disk(dir.path()).len(), 3);
    block_on(registry.flush()).unwrap();
    assert_eq!(records_on_disk(dir.path()), [record("w1", Some("b"))]);
    assert_eq!(registry.durable_writes(), 1);
}

#[test]
fn duplicate_records_in_a_file_keep_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut second = record("w1", Some("a"));
    second.socket_path = "/second.sock".into();
    fs::write(
        dir.path().join(RECORDS_FILE),
        serde_json::to_vec(&[record("w1", Some("a")), second]).unwrap(),
    )
    .unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.list(), [record("w1", Some("a"))]);
}

#[test]
fn departed_set_is_bounded_and_persists_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let options = || RegistryOptions::new().departed_capacity(3);
    let registry = FileRegistry::open_with(dir.path(), options()).unwrap();
    block_on(async {
        for pod in ["d1", "d2", "d3", "d4", "d5"] {
            registry.depart(name(pod), Some("i".into())).await.unwrap();
        }
    });
    let newest = [
        tombstone("d3", Some("i")),
        tombstone("d4", Some("i")),
        tombstone("d5", Some("i")),
    ];
    assert_eq!(departed_on_disk(dir.path()), newest);
    drop(registry);

    let registry = FileRegistry::open_with(dir.path(), options()).unwrap();
    assert_eq!(
        registry.read(|s| s.departed().cloned().collect::<Vec<_>>()),
        newest
    );
    assert!(!registry.is_departed("d2", Some("i")));
    block_on(registry.depart(name("d6"), None)).unwrap();
    assert_eq!(
        departed_on_disk(dir.path()),
        [newest[1].clone(), newest[2].clone(), tombstone("d6", None)]
    );
    drop(registry);

    // A smaller capacity keeps the newest at open.
    let registry =
        FileRegistry::open_with(dir.path(), RegistryOptions::new().departed_capacity(1)).unwrap();
    assert_eq!(
        registry.read(|s| s.departed().cloned().collect::<Vec<_>>()),
        [tombstone("d6", None)]
    );
}

#[test]
fn a_file_that_did_not_change_is_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    let (records, departed) = (
        registry.path().to_owned(),
        registry.departed_path().to_owned(),
    );
    block_on(async {
        let departed_inode = inode(&departed);
        registry.add(record("w1", None)).await.unwrap();
        assert_eq!(inode(&departed), departed_inode);

        let records_inode = inode(&records);
        registry.depart(name("other"), None).await.unwrap();
        assert_eq!(inode(&records), records_inode);
        assert_ne!(inode(&departed), departed_inode);

        // Changes nothing while clean: no write at all.
        let writes = registry.durable_writes();
        registry.add(record("w1", None)).await.unwrap();
        registry.remove(name("missing"), None).await.unwrap();
        registry.depart(name("other"), None).await.unwrap();
        registry.flush().await.unwrap();
        assert_eq!(registry.durable_writes(), writes);
        assert_eq!(writes, 2);
    });
}

#[test]
fn a_failed_write_keeps_memory_ahead_and_the_next_write_persists_it() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, faults) = open_faulty(dir.path());
    faults.fail_next_file_writes(1);
    block_on(async {
        let error = registry.add(record("w1", None)).await.unwrap_err();
        match &error {
            RegistryError::Io { path, source } => {
                assert!(is_temp_of(path, RECORDS_FILE), "{path:?}");
                assert_eq!(path.parent(), Some(dir.path()));
                assert!(source.to_string().contains("injected"), "{source}");
            }
            other => panic!("expected Io, got {other:?}"),
        }
        assert!(error.to_string().contains("spawned_pods.json"), "{error}");
        // Applied in memory, not on disk, no temporary file left.
        assert_eq!(registry.list(), [record("w1", None)]);
        assert_eq!(records_on_disk(dir.path()), []);
        no_temp_left(dir.path());
        assert_eq!(registry.durable_writes(), 0);
        assert_eq!(faults.remaining(), 0);

        // The next mutation, though it changes nothing, writes it.
        registry.remove(name("missing"), None).await.unwrap();
        assert_eq!(records_on_disk(dir.path()), [record("w1", None)]);
        assert_eq!(registry.durable_writes(), 1);
    });
}

#[test]
fn flush_retries_a_failed_write_of_both_files() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, faults) = open_faulty(dir.path());
    block_on(async {
        registry.add(record("w1", None)).await.unwrap();
        faults.fail_next_file_writes(2);
        // Both files changed; the departed file fails first and the
        // records file is not attempted.
        let error = registry.depart(name("w1"), None).await.unwrap_err();
        assert!(
            matches!(&error, RegistryError::Io { path, .. } if is_temp_of(path, DEPARTED_FILE)),
            "{error:?}"
        );
        assert_eq!(faults.remaining(), 1);
        assert!(registry.list().is_empty());
        assert!(registry.flush().await.is_err());
        assert_eq!(records_on_disk(dir.path()), [record("w1", None)]);
        assert_eq!(departed_on_disk(dir.path()), []);
        registry.flush().await.unwrap();
        assert_eq!(records_on_disk(dir.path()), []);
        assert_eq!(departed_on_disk(dir.path()), [tombstone("w1", None)]);
        // Clean again: flushing writes nothing more.
        let writes = registry.durable_writes();
        registry.flush().await.unwrap();
        assert_eq!(registry.durable_writes(), writes);
    });
}

#[test]
fn a_failure_between_the_two_files_is_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, faults) = open_faulty(dir.path());
    block_on(async {
        registry.add(record("w1", Some("a"))).await.unwrap();
        registry.add(record("w2", None)).await.unwrap();
        faults.fail_file_writes(1, 1);
        let error = registry.depart(name("w1"), None).await.unwrap_err();
        assert!(
            matches!(&error, RegistryError::Io { path, .. } if is_temp_of(path, RECORDS_FILE)),
            "{error:?}"
        );
    });
    // The departed file was written, the records file was not: what a
    // crash between the two writes leaves.
    assert_eq!(departed_on_disk(dir.path()), [tombstone("w1", None)]);
    assert_eq!(records_on_disk(dir.path()).len(), 2);
    drop(registry);
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert_eq!(registry.list(), [record("w2", None)]);
    assert!(registry.is_departed("w1", Some("a")));
}

#[test]
fn every_waiter_of_a_failed_write_gets_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, faults) = open_faulty(dir.path());
    faults.fail_next_file_writes(usize::MAX);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let registry = Arc::new(registry);
    let results = runtime.block_on(async {
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move { registry.add(record(&format!("w{i}"), None)).await })
            })
            .collect();
        let mut results = Vec::new();
        for task in tasks {
            results.push(task.await.unwrap());
        }
        results
    });
    assert!(
        results
            .iter()
            .all(|r| matches!(r, Err(RegistryError::Io { .. }))),
        "{results:?}"
    );
    assert_eq!(records_on_disk(dir.path()), []);
    faults.fail_next_file_writes(0);
    runtime.block_on(registry.flush()).unwrap();
    assert_eq!(records_on_disk(dir.path()).len(), 50);
}

#[test]
fn a_burst_of_10000_departures_costs_few_writes() {
    const PODS: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let registry = Arc::new(FileRegistry::open(dir.path()).unwrap());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    runtime.block_on(async {
        let adds: Vec<_> = (0..PODS)
            .map(|i| {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move { registry.add(record(&format!("w{i}"), Some("1"))).await })
            })
            .collect();
        for add in adds {
            assert_eq!(add.await.unwrap().unwrap(), Outcome::Added);
        }
        let before = registry.durable_writes();
        assert_eq!(registry.read(|s| s.len()), PODS);

        let departures: Vec<_> = (0..PODS)
            .map(|i| {
                let registry = Arc::clone(&registry);
                tokio::spawn(async move { registry.depart(name(&format!("w{i}")), Some("1".into())).await })
            })
            .collect();
        for departure in departures {
            let outcome = departure.await.unwrap().unwrap();
            assert!(matches!(outcome, Outcome::Removed { ref records, first_departure: true } if records.len() == 1));
        }
        let writes = registry.durable_writes() - before;
        eprintln!("10,000 departures: {writes} durable writes");
        assert!(writes < 1000, "{writes} writes for {PODS} departures");
    });
    drop(runtime);
    let registry = Arc::try_unwrap(registry).unwrap();
    drop(registry);
    let registry = FileRegistry::open(dir.path()).unwrap();
    assert!(registry.list().is_empty());
    assert_eq!(records_on_disk(dir.path()), []);
    assert_eq!(
        registry.read(|s| s.departed_len()),
        pod_registry::DEFAULT_DEPARTED_CAPACITY
    );
    assert!(registry.is_departed(&format!("w{}", PODS - 1), Some("1")));
}
