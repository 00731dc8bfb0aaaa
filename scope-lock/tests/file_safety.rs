//! The file store's defences (issue 13): a private directory, regular
//! files only, no write through a symbolic link, capped reads.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::sync::mpsc;
use std::time::Duration;

use pod_scope_lock::{FileStore, ScopeError, ScopeTable, TableStore};

use crate::{name, spec};

fn me() -> u32 {
    std::process::id()
}

#[test]
fn a_directory_others_can_write_is_refused_with_its_mode() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("shared");
    fs::create_dir(&dir).unwrap();
    let store = FileStore::new(dir.join("scope.lock"));
    for mode in [0o777, 0o770, 0o702, 0o1777] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let table = ScopeTable::with_proc_liveness(store.clone());
        for error in [
            table.register(spec("w", me(), &["w:/a/**"])).unwrap_err(),
            table.list().unwrap_err(),
        ] {
            match &error {
                ScopeError::UnsafeDirectory { path, mode: m, .. } => {
                    assert_eq!(path, &dir);
                    assert_eq!(*m, mode);
                    assert!(
                        error.to_string().contains(&format!("{mode:04o}")),
                        "{error}"
                    );
                }
                other => panic!("mode {mode:o}: expected UnsafeDirectory, got {other}"),
            }
        }
        assert!(
            !store.path().exists(),
            "nothing created in an unsafe directory"
        );
    }
    // Readable by others is fine: only writes by others are a threat.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
}

#[test]
fn a_directory_owned_by_another_uid_is_refused() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("theirs");
    fs::create_dir(&dir).unwrap();
    // Only root can give a directory away; elsewhere there is nothing to
    // set up (and the owner check is the same comparison).
    if rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(54321)), None).is_err() {
        return;
    }
    let store = FileStore::new(dir.join("scope.lock"));
    match store.load() {
        Err(ScopeError::UnsafeDirectory { owner: 54321, .. }) => {}
        other => panic!("expected UnsafeDirectory, got {other:?}"),
    }
}

/// Runs `f` on a thread; fails if it has not returned within a generous
/// deadline (a hang, not a slow machine).
fn without_hanging<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(f());
    });
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the operation hung")
}

#[test]
fn only_a_regular_file_is_opened_as_the_table() {
    let temp = tempfile::tempdir().unwrap();
    let victim = temp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    for (sub, kind) in [
        ("fifo", "FIFO"),
        ("dir", "directory"),
        ("link", "symbolic link"),
    ] {
        let dir = temp.path().join(sub);
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("scope.lock");
        match sub {
            "fifo" => rustix::fs::mknodat(
                rustix::fs::CWD,
                &path,
                rustix::fs::FileType::Fifo,
                rustix::fs::Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap(),
            "dir" => fs::create_dir(&path).unwrap(),
            _ => symlink(&victim, &path).unwrap(),
        }
        let store = FileStore::new(&path);
        let errors = without_hanging(move || {
            let table = ScopeTable::with_proc_liveness(store.clone());
            [
                store.load().unwrap_err(),
                table.register(spec("w", me(), &["w:/a/**"])).unwrap_err(),
            ]
        });
        for error in errors {
            match &error {
                ScopeError::NotARegularFile { path: p, kind: k } => {
                    assert_eq!(p, &path);
                    assert_eq!(*k, kind);
                }
                other => panic!("{sub}: expected NotARegularFile, got {other}"),
            }
        }
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
}

#[test]
fn symlinks_planted_at_the_journal_or_old_names_never_redirect_a_write() {
    let temp = tempfile::tempdir().unwrap();
    let victim = temp.path().join("victim");
    fs::write(&victim, "precious").unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("root", me(), &["w:/srv/**"])).unwrap();
    for planted in ["scope.lock.journal", "scope.lock.tmp", "scope.lock.lck"] {
        let _ = fs::remove_file(temp.path().join(planted));
        symlink(&victim, temp.path().join(planted)).unwrap();
    }
    for i in 0..3 {
        let pod = format!("c{i}");
        table
            .delegate(
                &name("root"),
                spec(&pod, me(), &[&format!("w:/srv/{i}/**")]),
            )
            .unwrap();
        // Planted again after each write (the journal's is removed).
        let journal = store.journal_path();
        if fs::symlink_metadata(journal).is_err() {
            symlink(&victim, journal).unwrap();
        }
    }
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
    assert_eq!(table.list().unwrap().len(), 4);
    // With a corrupt data file and only a symlink at the journal's name
    // there is nothing to recover from: it fails closed, untouched. (That
    // a symlink to a valid journal is not followed either is a unit test
    // of the store.)
    fs::write(store.path(), "{torn").unwrap();
    assert!(matches!(store.load(), Err(ScopeError::Corrupt { .. })));
    assert!(matches!(
        store.transact(|_| Ok(())),
        Err(ScopeError::Corrupt { .. })
    ));
    assert_eq!(fs::read_to_string(store.path()).unwrap(), "{torn");
}

#[test]
fn a_file_over_the_cap_is_refused_before_it_is_read() {
    let temp = tempfile::tempdir().unwrap();
    let store = FileStore::new(temp.path().join("scope.lock"));
    let table = ScopeTable::with_proc_liveness(store.clone());
    table.register(spec("w", me(), &["w:/a/**"])).unwrap();
    let size = fs::metadata(store.path()).unwrap().len();
    let capped = FileStore::new(store.path()).with_max_table_bytes(size - 1);
    for error in [
        capped.load().unwrap_err(),
        capped.transact(|_| Ok(())).unwrap_err(),
    ] {
        match error {
            ScopeError::TooLarge { size: s, limit, .. } => assert_eq!((s, limit), (size, size - 1)),
            other => panic!("expected TooLarge, got {other}"),
        }
    }
    assert_eq!(
        FileStore::new(store.path())
            .with_max_table_bytes(size)
            .load()
            .unwrap()
            .len(),
        1
    );
}
