//! The owner lock: one writer per state directory.
//!
//! Two writers of one state directory would each write their own memory
//! over the other's files, losing records and tombstones. So a
//! [`crate::FileRegistry`] holds an exclusive `flock` on
//! `<state dir>/registry.lock` for its whole life, taken without waiting:
//! a second writer is refused at once, with the holder's pid. The lock file
//! is never renamed or removed (removing it would let two writers lock two
//! different inodes); the kernel drops the lock when its holder exits, even
//! by SIGKILL. The holder writes its pid into the file so the refusal can
//! name it; `/proc/locks` is the fallback while the file is being written.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

use crate::fsio::{check_regular, open_error};
use crate::RegistryError;

/// The lock file's name in the state directory.
pub const LOCK_FILE: &str = "registry.lock";

/// How long a lock held by this very process is waited for (see
/// [`OwnerLock::acquire`]).
const SELF_HELD_WAIT: Duration = Duration::from_millis(500);

/// The held lock; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: File,
}

impl OwnerLock {
    /// Takes the lock of `dir` (creating the lock file, mode 0600, never
    /// through a link) or fails at once with [`RegistryError::Locked`].
    pub(crate) fn acquire(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            // The flag values are small positive C ints.
            .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
            .open(&path)
            .map_err(|e| open_error(&path, e))?;
        check_regular(&path, &file)?;
        let deadline = Instant::now() + SELF_HELD_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    let pid = holder_pid(&mut file);
                    // A lock "held by this process" may be a closed
                    // registry's lock still referenced by a child being
                    // spawned by another thread (between fork and exec it
                    // holds a copy of every descriptor): wait that out,
                    // briefly. Any other holder is refused at once.
                    if pid == Some(std::process::id()) && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    return Err(RegistryError::Locked {
                        dir: dir.to_path_buf(),
                        pid,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(RegistryError::io(&path, e)),
            }
        }
        // Ours now: replace whatever pid a former holder left.
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| file.write_all(format!("{pid}\n").as_bytes()))
            .map_err(|e| RegistryError::io(&path, e))?;
        Ok(OwnerLock { _file: file })
    }
}

/// The pid of the process holding `file`'s lock: the `FLOCK` line of
/// `/proc/locks` for its inode (the kernel's word, right even while a new
/// holder is still writing its pid), else the lock file's content.
fn holder_pid(file: &mut File) -> Option<u32> {
    proc_locks_holder(file).or_else(|| {
        let mut text = String::new();
        // A pid is a few digits; a longer file is not one of ours.
        let read = file.rewind().is_ok() && (&*file).take(32).read_to_string(&mut text).is_ok();
        read.then(|| text.trim().parse().ok()).flatten()
    })
}

fn proc_locks_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let device = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino()
    );
    // `1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF`; a waiter's line
    // starts `1: -> FLOCK`, so its second field is not `FLOCK`.
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_ours = fields.get(1) == Some(&"FLOCK") && fields.get(5) == Some(&device.as_str());
        is_ours.then(|| fields.get(4)?.parse().ok()).flatten()
    })
}
