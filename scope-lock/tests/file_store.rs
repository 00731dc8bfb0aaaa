//! The file store: permissions, format, corrupt and inconsistent files,
//! exclusion between handles, and `/proc` liveness with real processes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use pod_scope_lock::{
    default_table_path, FileStore, FileStoreStats, Liveness, ProcLiveness, ScopeError, ScopeTable,
    TableStore,
};

use pod_scope_lock::testing::FakeLiveness;

use crate::{name, spec};

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn me() -> u32 {
    std::process::id()
}

#[test]
fn a_missing_file_is_an_empty_table_and_writes_create_private_files() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("run/pods");
    let store = FileStore::new(dir.join("scope.lock"));
    assert!(store.load().unwrap().is_empty());
    assert!(!dir.exists(), "a read creates nothing");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    assert!(store.load().unwrap().is_empty());
    assert_eq!(
        fs::read_dir(&dir).unwrap().count(),
        0,
        "nor in its directory"
    );
    fs::remove_dir(&dir).unwrap();
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w1", me(), &["w:/srv/a/**"])).unwrap();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(store.path()), 0o600);
    // The data file is its own lock (as existing Pods lock it): no lock
    // file, and the journal is gone once the write is durable.
    assert_eq!(store.lock_path(), store.path());
    assert_eq!(store.journal_path(), dir.join("scope.lock.journal"));
    let names: Vec<String> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["scope.lock"]);
    assert_eq!(table.list().unwrap().len(), 1);
}

#[test]
fn the_format_is_versioned_json_with_one_allocation_per_line() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    let root = table.register(spec("root", me(), &["w:/srv/**"])).unwrap();
    table
        .delegate(
            &name("root"),
            spec("child", me(), &["w:/srv/a/*", "r:/srv/b/**"]),
        )
        .unwrap();
    let text = fs::read_to_string(store.path()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert_eq!(lines[0], r#"{"version":1,"allocations":["#);
    assert_eq!(lines[3], "]}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    let root_json = &json["allocations"][1];
    assert_eq!(root_json["pod_name"], "root");
    assert_eq!(root_json["delegated_from"], serde_json::Value::Null);
    assert_eq!(root_json["incarnation"], root.incarnation.unwrap().as_str());
    assert_eq!(root_json["start_time"], root.start_time.unwrap());
    assert_eq!(
        root_json["scope_allow"],
        serde_json::json!([{"target": "/srv", "permission": "write", "recursive": true}])
    );
    assert_eq!(json["allocations"][0]["delegated_from"], "root");
    assert_eq!(json["allocations"][0]["scope_allow"][0]["recursive"], false);
}

/// Writes `content` as the table, runs every operation, and checks each
/// fails as `check` expects without touching the file.
fn refused_untouched(content: &str, check: impl Fn(&ScopeError)) {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    fs::write(store.path(), content).unwrap();
    let inode = fs::metadata(store.path()).unwrap().ino();
    let table = ScopeTable::with_proc_liveness(store.clone());
    let errors = [
        table.register(spec("w", me(), &["w:/x/**"])).unwrap_err(),
        table
            .delegate(&name("w"), spec("v", me(), &["w:/x/**"]))
            .unwrap_err(),
        table.release(&name("w"), None).unwrap_err(),
        table.reclaim_stale().unwrap_err(),
        table.list().unwrap_err(),
        table.owner_of("/x").unwrap_err(),
    ];
    for error in &errors {
        check(error);
    }
    assert_eq!(fs::read_to_string(store.path()).unwrap(), content);
    assert_eq!(fs::metadata(store.path()).unwrap().ino(), inode);
    assert!(!store.journal_path().exists());
}

#[test]
fn a_corrupt_file_is_reported_with_its_position_and_never_overwritten() {
    let cases = [
        ("{\"version\":1,\"allocations\":[\n{\"pod_name\":\"a\",\"pid\":", 2),
        ("garbage", 1),
        (" ", 1),
        ("{\"version\":1,\"allocations\":[\n{}\n]}", 2),
        // A misspelt or missing key is an error, never a top-level pod.
        ("{\"version\":1,\"allocations\":[\n{\"pod_name\":\"a\",\"pid\":1,\"start_time\":1,\"socket\":\"/s\",\"scope_allow\":[],\"delegated_frm\":\"b\",\"incarnation\":\"x\"}\n]}", 2),
        ("{\"version\":1,\"allocations\":[\n{\"pod_name\":\"a\",\"pid\":1,\"start_time\":1,\"socket\":\"/s\",\"scope_allow\":[],\"incarnation\":\"x\"}\n]}", 2),
        ("{\"version\":1,\"allocations\":[],\"extra\":1}", 1),
        ("{\"version\":1,\"allocations\":[\n{\"pod_name\":\"../etc\",\"pid\":1,\"start_time\":1,\"socket\":\"/s\",\"scope_allow\":[],\"delegated_from\":null,\"incarnation\":\"x\"}\n]}", 2),
    ];
    for (content, expected_line) in cases {
        refused_untouched(content, |error| match error {
            ScopeError::Corrupt {
                path,
                line,
                message,
                ..
            } => {
                assert!(path.ends_with("scope.lock"));
                assert_eq!(*line, expected_line, "{content:?}: {message}");
                assert!(error.to_string().contains("left untouched"));
            }
            other => panic!("{content:?}: expected Corrupt, got {other}"),
        });
    }
}

fn allocation_json(pod: &str, parent: Option<&str>, rules: &str) -> String {
    let parent = parent.map_or("null".to_owned(), |p| format!("\"{p}\""));
    format!(
        "{{\"pod_name\":\"{pod}\",\"pid\":1,\"start_time\":1,\"socket\":\"/run/{pod}.sock\",\"scope_allow\":{rules},\"delegated_from\":{parent},\"incarnation\":\"00\"}}"
    )
}

fn table_json(allocations: &[String]) -> String {
    format!(
        "{{\"version\":1,\"allocations\":[{}]}}",
        allocations.join(",\n")
    )
}

#[test]
fn an_inconsistent_file_is_reported_and_never_overwritten() {
    let write_a = r#"[{"target":"/a","permission":"write"}]"#;
    let cases = [
        table_json(&[
            allocation_json("x", None, write_a),
            allocation_json("y", None, write_a),
        ]),
        table_json(&[
            allocation_json("x", None, write_a),
            allocation_json("x", None, r#"[{"target":"/b","permission":"write"}]"#),
        ]),
        table_json(&[allocation_json("x", Some("gone"), write_a)]),
        table_json(&[allocation_json(
            "x",
            None,
            r#"[{"target":"/a/../b","permission":"write"}]"#,
        )]),
        table_json(&[allocation_json("x", None, "[]")]),
    ];
    for content in cases {
        refused_untouched(&content, |error| {
            assert!(
                matches!(error, ScopeError::InvalidTable { .. }),
                "{content}: expected InvalidTable, got {error}"
            );
        });
    }
}

#[test]
fn a_newer_format_version_is_refused() {
    refused_untouched(
        r#"{"version":2,"allocations":[{"future":true}]}"#,
        |error| {
            assert!(
                matches!(error, ScopeError::UnsupportedVersion { version: 2, .. }),
                "got {error}"
            );
        },
    );
}

#[test]
fn refusals_and_reads_do_not_rewrite_the_file_and_writes_keep_its_inode() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
    let inode = fs::metadata(store.path()).unwrap().ino();
    let content = fs::read(store.path()).unwrap();
    let writes = store.stats().durable_writes;
    assert!(table.register(spec("v", me(), &["w:/a/b/**"])).is_err());
    assert!(table.release(&name("v"), None).is_err());
    assert!(table.reclaim_stale().unwrap().is_empty());
    table.list().unwrap();
    assert_eq!(fs::read(store.path()).unwrap(), content);
    assert_eq!(store.stats().durable_writes, writes);
    table.release(&name("w"), None).unwrap();
    assert_ne!(fs::read(store.path()).unwrap(), content);
    // Rewritten in place, never renamed over: a process waiting for the
    // lock holds it on the same inode.
    assert_eq!(fs::metadata(store.path()).unwrap().ino(), inode);
}

#[test]
fn an_empty_file_is_an_empty_table() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    fs::write(store.path(), "").unwrap();
    assert!(store.load().unwrap().is_empty());
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
    assert_eq!(table.list().unwrap().len(), 1);
}

#[test]
fn proc_liveness_reclaims_dead_pids_and_reused_pids() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let start = ProcLiveness.start_time(me()).unwrap();
    let mut exited = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = exited.id();
    exited.wait().unwrap();
    assert_eq!(ProcLiveness.start_time(dead_pid), None);
    store
        .transact(|t| {
            t.register(spec("live", me(), &["w:/a/**"]), start, "1".into())?;
            t.register(spec("reused", me(), &["w:/b/**"]), start + 1, "2".into())?;
            t.register(spec("dead", dead_pid, &["w:/c/**"]), start, "3".into())?;
            Ok(())
        })
        .unwrap();
    let table = ScopeTable::with_proc_liveness(store);
    let reclaimed: Vec<String> = table
        .reclaim_stale()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(reclaimed, ["dead", "reused"]);
    let live = table.list().unwrap();
    assert_eq!(live.len(), 1);
    assert!(table.is_live(&live[0]));
    assert!(matches!(
        table.register(spec("x", dead_pid, &["w:/x/**"])),
        Err(ScopeError::DeadProcess { .. })
    ));
}

#[test]
fn separate_handles_in_one_process_exclude_each_other() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let root = ScopeTable::with_proc_liveness(FileStore::new(&path));
    root.register(spec("root", me(), &["w:/shared/**"]))
        .unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Each thread opens its own lock file descriptor.
                let table = ScopeTable::with_proc_liveness(FileStore::new(path));
                for i in 0..8 {
                    table
                        .register(spec(
                            &format!("t{t}-{i}"),
                            me(),
                            &[&format!("w:/t{t}/{i}/**")],
                        ))
                        .unwrap();
                    table
                        .delegate(
                            &name("root"),
                            spec(
                                &format!("d{t}-{i}"),
                                me(),
                                &[&format!("w:/shared/{t}/{i}/**")],
                            ),
                        )
                        .unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let table = root.store().load().unwrap();
    assert_eq!(table.len(), 1 + 4 * 8 * 2);
    table.check_invariant().unwrap();
}

#[test]
fn the_default_path_is_absolute() {
    let path = default_table_path();
    assert!(path.is_absolute());
    assert!(path.ends_with("scope.lock"));
}

#[test]
fn stats_count_loads_and_durable_writes_across_clones() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    assert_eq!(store.stats(), FileStoreStats::default());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
    // The file did not exist: nothing to load, one write.
    assert_eq!(store.stats().durable_writes, 1);
    assert_eq!(store.stats().loads, 0);
    table.list().unwrap();
    assert!(table.register(spec("v", me(), &["w:/a/**"])).is_err());
    let stats = store.clone().stats();
    assert_eq!(stats.loads + stats.cached_loads, 2);
    assert_eq!(stats.durable_writes, 1, "a refusal writes nothing");
}

/// The table of existing Pods, as their code writes it: pretty-printed, no
/// `version`, allocations without `start_time` and `incarnation`.
const LEGACY_FIXTURE: &str = include_str!("fixtures/legacy-scope.lock");

#[test]
fn a_table_written_by_existing_pods_is_read_and_stays_legacy_when_written_back() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    fs::write(store.path(), LEGACY_FIXTURE).unwrap();
    let liveness = FakeLiveness::new();
    liveness.spawn(4241);
    liveness.spawn(4242);
    liveness.spawn(7);
    let table = ScopeTable::new(store.clone(), liveness.clone());

    let listed = table.list().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|a| a.is_legacy()));
    assert!(listed[0].matches_incarnation(Some("any")) && listed[0].matches_incarnation(None));
    // Not a reservation: there is nothing to adopt.
    assert!(matches!(
        table.adopt(&name("docs"), "any", 7),
        Err(ScopeError::NotReserved { .. })
    ));
    assert_eq!(
        table
            .owner_of("/srv/repo/docs/a.md")
            .unwrap()
            .unwrap()
            .pod_name,
        name("docs")
    );
    // Their pods' scope is respected, and ours can be delegated from theirs.
    assert!(matches!(
        table.register(spec("ours", 7, &["w:/srv/repo/docs/x/**"])),
        Err(ScopeError::WriteConflict { ref competitor, .. }) if competitor.as_str() == "docs"
    ));
    let ours = table
        .delegate(&name("root"), spec("ours", 7, &["w:/srv/repo/src/**"]))
        .unwrap();
    assert!(!ours.is_legacy());

    // Written back: theirs stay legacy (the fields stay absent), ours keep
    // theirs.
    let text = fs::read_to_string(store.path()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["version"], 1);
    for a in json["allocations"].as_array().unwrap() {
        let ours = a["pod_name"] == "ours";
        assert_eq!(a.get("start_time").is_some(), ours, "{a}");
        assert_eq!(a.get("incarnation").is_some(), ours, "{a}");
    }
    assert_eq!(table.find(&name("docs")).unwrap(), listed.first().cloned());

    // Liveness by pid alone: a reused pid keeps a legacy allocation (there
    // is no start time to tell), a dead one frees it.
    liveness.reuse(4242);
    assert!(table.reclaim_stale().unwrap().is_empty());
    liveness.kill(4242);
    let reclaimed = table.reclaim_stale().unwrap();
    assert_eq!(reclaimed.len(), 1);
    assert_eq!(reclaimed[0].pod_name, name("docs"));

    // A legacy allocation matches any incarnation, as on the wire.
    table.release(&name("root"), Some("0123abcd")).unwrap();
    let left = table.list().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].delegated_from, None, "reparented to root's parent");
}

#[test]
fn loads_reuse_the_cached_table_only_while_the_bytes_are_unchanged() {
    let temp = tempfile::tempdir().unwrap();
    let path = temp.path().join("scope.lock");
    let store = FileStore::new(&path);
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
    // After our own write the cache holds what we wrote: no parse.
    let before = store.stats();
    assert_eq!(table.find(&name("w")).unwrap().unwrap().pid, me());
    table.list().unwrap();
    let after = store.stats();
    assert_eq!(after.loads, before.loads);
    assert_eq!(after.cached_loads, before.cached_loads + 2);

    // Another store (another process, as far as this one knows) writes:
    // the bytes differ, so the next load parses and sees its change.
    let other = ScopeTable::with_proc_liveness(FileStore::new(&path));
    other.register(spec("v", me(), &["w:/b/**"])).unwrap();
    assert!(table.find(&name("v")).unwrap().is_some());
    assert_eq!(store.stats().loads, after.loads + 1);

    // A change that keeps the length and the mtime's granularity out of
    // the picture: one digit of a pid, written by hand.
    let text = fs::read_to_string(&path).unwrap();
    let pid = format!("\"pid\":{}", me());
    let changed_pid = if me() % 10 == 9 { me() - 1 } else { me() + 1 };
    let edited = text.replacen(&pid, &format!("\"pid\":{changed_pid}"), 1);
    assert_eq!(edited.len(), text.len());
    fs::write(&path, &edited).unwrap();
    let pids: Vec<u32> = table.list().unwrap().iter().map(|a| a.pid).collect();
    assert!(pids.contains(&changed_pid), "{pids:?}");

    // Without the cache every load parses.
    let uncached = FileStore::new(&path).with_cache(false);
    uncached.load().unwrap();
    uncached.load().unwrap();
    assert_eq!(uncached.stats().loads, 2);
    assert_eq!(uncached.stats().cached_loads, 0);
}

#[test]
fn a_reservation_is_stored_with_its_deadline_and_adopted_without() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("root", me(), &["w:/srv/**"])).unwrap();
    let kid = table
        .reserve(&name("root"), spec("kid", 0, &["w:/srv/a/**"]))
        .unwrap();
    let json = |pod: &str| -> serde_json::Value {
        let text = fs::read_to_string(store.path()).unwrap();
        let table: serde_json::Value = serde_json::from_str(&text).unwrap();
        table["allocations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["pod_name"] == pod)
            .cloned()
            .unwrap()
    };
    assert_eq!(json("kid")["pending_until"], kid.pending_until.unwrap());
    assert_eq!(json("kid")["pid"], me(), "held under the spawner's pid");
    assert!(
        json("root").get("pending_until").is_none(),
        "absent when absent"
    );
    table
        .adopt(&name("kid"), kid.incarnation.as_deref().unwrap(), me())
        .unwrap();
    assert!(json("kid").get("pending_until").is_none());
}
