//! Opening the table's files safely: the directory must be ours and not
//! writable by others, only regular files are opened (never through a
//! symbolic link, never blocking on a FIFO), every read is capped, and
//! every lock wait is bounded and names the holder.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use rustix::fs::OFlags;

use crate::error::ScopeError;

/// `O_NOFOLLOW`: a symbolic link at the path is an error (`ELOOP`), never
/// followed. `O_NONBLOCK`: opening a FIFO returns at once instead of
/// waiting for a peer (it is then refused by its type).
fn safe_flags() -> i32 {
    // The flag bits fit in an i32 (they are the C `int` flags).
    (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
}

/// What a file type is called in errors.
fn kind_of(file_type: fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "directory"
    } else if file_type.is_symlink() {
        "symbolic link"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "special file"
    }
}

/// Checks that `dir` is owned by this process's uid and not writable by
/// group or others; creates it (mode 0700, parents too) first if `create`.
/// Returns whether it exists (only `false` without `create`).
pub(super) fn check_dir(dir: &Path, create: bool) -> Result<bool, ScopeError> {
    if create {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ScopeError::io(dir, e))?;
    }
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !create => return Ok(false),
        Err(e) => return Err(ScopeError::io(dir, e)),
    };
    if !meta.is_dir() {
        let error = io::Error::new(io::ErrorKind::NotADirectory, "not a directory");
        return Err(ScopeError::io(dir, error));
    }
    let uid = rustix::process::getuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid || mode & 0o022 != 0 {
        return Err(ScopeError::UnsafeDirectory {
            path: dir.to_owned(),
            owner: meta.uid(),
            mode,
            uid,
        });
    }
    Ok(true)
}

/// Opens the regular file at `path`: read-only, or read-write and created
/// (mode 0600) if missing when `write`. Never follows a symbolic link and
/// never blocks on a FIFO; anything but a regular file is
/// [`ScopeError::NotARegularFile`]. `Ok(None)`: missing (read-only only).
pub(super) fn open_regular(path: &Path, write: bool) -> Result<Option<File>, ScopeError> {
    let opened = OpenOptions::new()
        .read(true)
        .write(write)
        .create(write)
        .truncate(false)
        .mode(0o600)
        .custom_flags(safe_flags())
        .open(path);
    let file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound && !write => return Ok(None),
        Err(e) => return Err(refusal(path).unwrap_or_else(|| ScopeError::io(path, e))),
    };
    let meta = file.metadata().map_err(|e| ScopeError::io(path, e))?;
    if !meta.file_type().is_file() {
        return Err(ScopeError::NotARegularFile {
            path: path.to_owned(),
            kind: kind_of(meta.file_type()),
        });
    }
    Ok(Some(file))
}

/// Why opening `path` failed, if it is because of what it is (a symbolic
/// link gives `ELOOP`, a directory `EISDIR`, a FIFO without a reader
/// `ENXIO`): looked up with `lstat`, which follows nothing.
fn refusal(path: &Path) -> Option<ScopeError> {
    let file_type = fs::symlink_metadata(path).ok()?.file_type();
    (!file_type.is_file()).then(|| ScopeError::NotARegularFile {
        path: path.to_owned(),
        kind: kind_of(file_type),
    })
}

/// The whole content of `file` (read from its current offset, which is 0
/// for a file just opened), refused before reading if it is over `limit`
/// bytes, and capped while reading in case it grows meanwhile.
pub(super) fn read_capped(file: &File, path: &Path, limit: u64) -> Result<Vec<u8>, ScopeError> {
    let size = file.metadata().map_err(|e| ScopeError::io(path, e))?.len();
    let too_large = |size| ScopeError::TooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| ScopeError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(bytes)
}

/// Takes a `flock` on `file` (exclusive or shared), polling with a
/// doubling back-off for at most `timeout`; then fails with
/// [`ScopeError::LockTimeout`] naming the holder found in `/proc/locks`.
pub(super) fn lock(
    file: &File,
    path: &Path,
    exclusive: bool,
    timeout: Duration,
) -> Result<(), ScopeError> {
    let started = Instant::now();
    let mut pause = Duration::from_micros(200);
    loop {
        let attempt = if exclusive {
            file.try_lock()
        } else {
            file.try_lock_shared()
        };
        match attempt {
            Ok(()) => return Ok(()),
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(e)) => return Err(ScopeError::io(path, e)),
        }
        let waited = started.elapsed();
        if waited >= timeout {
            return Err(ScopeError::LockTimeout {
                path: path.to_owned(),
                waited,
                holder: flock_holder(file),
            });
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// The pid holding a `flock` on `file`'s inode, from `/proc/locks` (its
/// lines read `1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF`, device
/// as hex major:minor; waiters' lines carry `->` and are skipped).
fn flock_holder(file: &File) -> Option<u32> {
    let meta = file.metadata().ok()?;
    let dev = meta.dev();
    let wanted = (
        u64::from(rustix::fs::major(dev)),
        u64::from(rustix::fs::minor(dev)),
        meta.ino(),
    );
    let proc_locks = File::open("/proc/locks").ok()?;
    let mut text = String::new();
    // A few lines per lock on the machine: 1 MiB is thousands of locks.
    proc_locks.take(1 << 20).read_to_string(&mut text).ok()?;
    text.lines().find_map(|line| holder_in(line, wanted))
}

/// The pid of one `/proc/locks` line if it is a granted FLOCK on `wanted`
/// (major, minor, inode).
fn holder_in(line: &str, wanted: (u64, u64, u64)) -> Option<u32> {
    let mut fields = line.split_whitespace();
    let _id = fields.next()?;
    let kind = fields.next()?;
    if kind != "FLOCK" {
        return None;
    }
    let (_mode, _access, pid, location) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    let mut parts = location.split(':');
    let major = u64::from_str_radix(parts.next()?, 16).ok()?;
    let minor = u64::from_str_radix(parts.next()?, 16).ok()?;
    let inode = parts.next()?.parse().ok()?;
    ((major, minor, inode) == wanted)
        .then(|| pid.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_name_the_holder_of_that_inode_only() {
        let wanted = (0xfd, 0x01, 1234567);
        let check = |line: &str, expected: Option<u32>| {
            assert_eq!(holder_in(line, wanted), expected, "{line}");
        };
        check(
            "1: FLOCK  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF",
            Some(4242),
        );
        check("2: FLOCK  ADVISORY  READ 77 fd:01:1234567 0 EOF", Some(77));
        check("3: FLOCK  ADVISORY  WRITE 4242 fd:01:1234568 0 EOF", None);
        check("4: FLOCK  ADVISORY  WRITE 4242 fd:02:1234567 0 EOF", None);
        check("5: POSIX  ADVISORY  WRITE 4242 fd:01:1234567 0 EOF", None);
        check("6: -> FLOCK  ADVISORY  WRITE 99 fd:01:1234567 0 EOF", None);
        check("7: OFDLCK ADVISORY  WRITE -1 fd:01:1234567 0 EOF", None);
        check("garbage", None);
        check("", None);
    }
}
