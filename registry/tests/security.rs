//! Hostile files in the state directory (issue 13): planted links never
//! redirect a write, only regular files are read (without blocking on a
//! FIFO), reads are capped, the directory must be private, leftover
//! temporary files are removed.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use pod_registry::{
    FileRegistry, Registry, RegistryError, RegistryLimits, RegistryOptions, RegistrySnapshot,
    DEPARTED_FILE, LOCK_FILE, RECORDS_FILE,
};

use crate::common::{block_on, departure, record};

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().permissions().mode() & 0o7777
}

/// A private state directory (not yet holding a registry) under a fresh
/// root, and the root.
fn state_dir() -> (tempfile::TempDir, PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("state");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    (root, dir)
}

/// Runs `open` on another thread and waits (generously) for its result, so
/// an open that blocks fails the test instead of hanging it.
fn without_hanging<T: Send + 'static>(open: impl FnOnce() -> T + Send + 'static) -> T {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || sender.send(open()));
    receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("open blocked")
}

/// Plants a link named `name` in a state directory pointing at a victim
/// file outside it (existing, or not when `dangling`), then opens the
/// registry and, if that works, writes both files twice. The victim must be
/// unchanged (content and mode), or still absent.
fn check_planted_link(name: &str, dangling: bool) -> Result<(), RegistryError> {
    let (root, dir) = state_dir();
    let victim = root.path().join("victim");
    if !dangling {
        fs::write(&victim, b"precious\n").unwrap();
        fs::set_permissions(&victim, fs::Permissions::from_mode(0o644)).unwrap();
    }
    symlink(&victim, dir.join(name)).unwrap();
    let result = FileRegistry::open(&dir).map(|registry| {
        block_on(async {
            registry.add(record("w1", Some("a"))).await.unwrap();
            registry.apply(departure("w1", None)).await.unwrap();
            registry.add(record("w2", None)).await.unwrap();
        });
    });
    if dangling {
        assert!(
            !victim.exists(),
            "{name}: a write created the link's target"
        );
    } else {
        assert_eq!(fs::read(&victim).unwrap(), b"precious\n", "{name}");
        assert_eq!(mode(&victim), 0o644, "{name}");
    }
    result
}

#[test]
fn a_link_planted_at_any_predictable_name_never_redirects_a_write() {
    for dangling in [false, true] {
        // The names we read or lock: refused, never followed.
        for name in [RECORDS_FILE, DEPARTED_FILE, LOCK_FILE] {
            match check_planted_link(name, dangling) {
                Err(RegistryError::NotRegularFile { path, kind }) => {
                    assert!(path.ends_with(name), "{path:?}");
                    assert_eq!(kind, "a symbolic link");
                }
                other => panic!("{name}: expected NotRegularFile, got {other:?}"),
            }
        }
        // The temporary names of earlier versions, and one of ours: a
        // leftover is removed (the link, not its target) and never used.
        for name in [
            "spawned_pods.json.tmp",
            "departed_pods.json.tmp",
            "spawned_pods.json.tmp.0123456789abcdef",
        ] {
            check_planted_link(name, dangling).unwrap();
        }
    }
}

#[test]
fn leftover_temporary_files_are_removed_at_open() {
    let (_root, dir) = state_dir();
    let leftovers = [
        "spawned_pods.json.tmp",
        "departed_pods.json.tmp.00000000deadbeef",
        "spawned_pods.json.tmp.ffffffffffffffff",
    ];
    for name in leftovers {
        fs::write(dir.join(name), b"[half").unwrap();
    }
    fs::write(dir.join("unrelated.tmp"), b"x").unwrap();
    let registry = FileRegistry::open(&dir).unwrap();
    for name in leftovers {
        assert!(!dir.join(name).exists(), "{name}");
    }
    assert!(dir.join("unrelated.tmp").exists());
    assert!(registry.list().is_empty());
}

#[test]
fn a_fifo_is_refused_without_blocking() {
    for file in [RECORDS_FILE, DEPARTED_FILE, LOCK_FILE] {
        let (_root, dir) = state_dir();
        let path = dir.join(file);
        rustix::fs::mkfifoat(rustix::fs::CWD, &path, rustix::fs::Mode::from(0o600)).unwrap();
        let open_dir = dir.clone();
        match without_hanging(move || FileRegistry::open(open_dir).map(drop)) {
            Err(RegistryError::NotRegularFile { path: at, kind }) => {
                assert_eq!(at, path);
                assert_eq!(kind, "a FIFO");
            }
            other => panic!("{file}: expected NotRegularFile, got {other:?}"),
        }
        if file != LOCK_FILE {
            let open_dir = dir.clone();
            let snapshot = without_hanging(move || RegistrySnapshot::load(open_dir).map(drop));
            assert!(
                matches!(
                    snapshot,
                    Err(RegistryError::NotRegularFile { kind: "a FIFO", .. })
                ),
                "{snapshot:?}"
            );
        }
    }
}

#[test]
fn a_device_is_refused() {
    let (_root, dir) = state_dir();
    let path = dir.join(RECORDS_FILE);
    // The null device (1, 3); creating one needs privilege, so an
    // unprivileged run has nothing to check here.
    let made = rustix::fs::mknodat(
        rustix::fs::CWD,
        &path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::from(0o600),
        rustix::fs::makedev(1, 3),
    );
    if made.is_err() {
        return;
    }
    let error = FileRegistry::open(&dir).unwrap_err();
    assert!(
        matches!(&error, RegistryError::NotRegularFile { kind: "a character device", path: at } if at == &path),
        "{error:?}"
    );
}

#[test]
fn a_directory_in_place_of_a_file_is_refused() {
    let (_root, dir) = state_dir();
    fs::create_dir(dir.join(RECORDS_FILE)).unwrap();
    let error = FileRegistry::open(&dir).unwrap_err();
    assert!(
        matches!(
            &error,
            RegistryError::NotRegularFile {
                kind: "a directory",
                ..
            }
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("not a regular file"), "{error}");
}

#[test]
fn an_oversize_file_is_refused_before_it_is_read() {
    let (_root, dir) = state_dir();
    let path = dir.join(RECORDS_FILE);
    let bytes = vec![b' '; 1001];
    fs::write(&path, &bytes).unwrap();
    let limits = RegistryLimits::new().max_file_bytes(1000);
    let options = RegistryOptions::new().limits(limits);
    match FileRegistry::open_with(&dir, options) {
        Err(RegistryError::TooLarge {
            path: at,
            size,
            limit,
        }) => {
            assert_eq!((at, size, limit), (path.clone(), 1001, 1000));
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(matches!(
        RegistrySnapshot::load_with(&dir, &limits, 16),
        Err(RegistryError::TooLarge { size: 1001, .. })
    ));
    assert_eq!(fs::read(&path).unwrap(), bytes);
    // The default cap: a sparse file far over it is refused at once (it is
    // never read, so its size costs nothing).
    let file = fs::File::create(&path).unwrap();
    file.set_len(RegistryLimits::DEFAULT_MAX_FILE_BYTES + 1)
        .unwrap();
    let error = FileRegistry::open(&dir).unwrap_err();
    assert!(matches!(error, RegistryError::TooLarge { .. }), "{error:?}");
    assert!(error.to_string().contains("max_file_bytes"), "{error}");
}

#[test]
fn a_state_directory_others_can_write_is_refused_naming_it_and_its_mode() {
    for bad in [0o770, 0o707, 0o777, 0o1777] {
        let (_root, dir) = state_dir();
        fs::set_permissions(&dir, fs::Permissions::from_mode(bad)).unwrap();
        let error = FileRegistry::open(&dir).unwrap_err();
        match &error {
            RegistryError::InsecureDir { path, mode, .. } => {
                assert_eq!(path, &dir);
                assert_eq!(*mode, bad);
            }
            other => panic!("{bad:o}: expected InsecureDir, got {other:?}"),
        }
        let shown = error.to_string();
        assert!(shown.contains(&dir.display().to_string()), "{shown}");
        assert!(shown.contains(&format!("{bad:04o}")), "{shown}");
        // Nothing was created in it.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
    }
    // Owned by another user, even private: refused, naming the owner.
    // Changing a directory's owner needs privilege; unprivileged runs
    // skip this case.
    let (_root, dir) = state_dir();
    let other = rustix::process::Uid::from_raw(rustix::process::getuid().as_raw() + 4242);
    if rustix::fs::chown(&dir, Some(other), None).is_ok() {
        let error = FileRegistry::open(&dir).unwrap_err();
        assert!(
            matches!(&error, RegistryError::InsecureDir { owner, mode: 0o700, .. } if *owner == other.as_raw()),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains(&format!("uid {}", other.as_raw())),
            "{error}"
        );
    }
    // Readable by others is fine (only writable is not); a missing
    // directory is created 0700.
    let (root, dir) = state_dir();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    FileRegistry::open(&dir).unwrap();
    let fresh = root.path().join("a/b");
    FileRegistry::open(&fresh).unwrap();
    assert_eq!(mode(&fresh), 0o700);
    assert_eq!(mode(&fresh.join(RECORDS_FILE)), 0o600);
    assert_eq!(mode(&fresh.join(LOCK_FILE)), 0o600);
}
