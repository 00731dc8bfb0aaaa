//! File access in the state directory that a hostile local user cannot
//! redirect: the directory must be private, data is read only from regular
//! files and under a size cap, and temporary files are created exclusively
//! under unpredictable names and never through a link.
//!
//! Why each rule: a symbolic link planted at a name we write would make us
//! overwrite its target with our mode and content; a FIFO planted at a name
//! we read would block open forever; a huge file would exhaust memory; a
//! group- or world-writable directory would let others swap any of our
//! files between our checks and our use.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::OFlags;

use crate::{RegistryError, DEPARTED_FILE, RECORDS_FILE};

/// Flags for every open of a data or lock file: never through a symbolic
/// link; never block (a FIFO opens at once, and is then refused by type).
fn no_follow() -> i32 {
    // The flag values are small positive C ints; the cast cannot truncate.
    (OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32
}

/// Checks that `dir` is a directory owned by this process's uid and not
/// writable by its group or others.
pub(crate) fn check_private_dir(dir: &Path) -> Result<(), RegistryError> {
    let meta = fs::metadata(dir).map_err(|e| RegistryError::io(dir, e))?;
    if !meta.is_dir() {
        return Err(RegistryError::NotRegularFile {
            path: dir.to_path_buf(),
            kind: describe(&meta.file_type()),
        });
    }
    let uid = rustix::process::getuid().as_raw();
    let mode = meta.mode() & 0o7777;
    if meta.uid() != uid || mode & 0o022 != 0 {
        return Err(RegistryError::InsecureDir {
            path: dir.to_path_buf(),
            mode,
            owner: meta.uid(),
            uid,
        });
    }
    Ok(())
}

/// What a non-regular file is, for error messages.
pub(crate) fn describe(file_type: &fs::FileType) -> &'static str {
    if file_type.is_symlink() {
        "a symbolic link"
    } else if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// The typed error for an open that failed because of what `path` is (a
/// symbolic link refused by `O_NOFOLLOW`, a socket), else an I/O error.
pub(crate) fn open_error(path: &Path, error: io::Error) -> RegistryError {
    let refused_by_type = [rustix::io::Errno::LOOP, rustix::io::Errno::NXIO]
        .iter()
        .any(|errno| error.raw_os_error() == Some(errno.raw_os_error()));
    if refused_by_type {
        if let Ok(meta) = fs::symlink_metadata(path) {
            return RegistryError::NotRegularFile {
                path: path.to_path_buf(),
                kind: describe(&meta.file_type()),
            };
        }
    }
    RegistryError::io(path, error)
}

/// Fails unless `file` (opened from `path`) is a regular file.
pub(crate) fn check_regular(path: &Path, file: &File) -> Result<fs::Metadata, RegistryError> {
    let meta = file.metadata().map_err(|e| RegistryError::io(path, e))?;
    if !meta.is_file() {
        return Err(RegistryError::NotRegularFile {
            path: path.to_path_buf(),
            kind: describe(&meta.file_type()),
        });
    }
    Ok(meta)
}

/// Reads `path` whole if it is a regular file of at most `limit` bytes;
/// `None` if it (or its directory) does not exist. Never blocks on a FIFO,
/// never follows a symbolic link, never reads more than `limit + 1` bytes.
pub(crate) fn read_capped(path: &Path, limit: u64) -> Result<Option<Vec<u8>>, RegistryError> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(no_follow())
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(open_error(path, e)),
    };
    let meta = check_regular(path, &file)?;
    let too_large = |size| RegistryError::TooLarge {
        path: path.to_path_buf(),
        size,
        limit,
    };
    if meta.len() > limit {
        return Err(too_large(meta.len()));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // One byte past the cap tells a file that grew since fstat.
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| RegistryError::io(path, e))?;
    if bytes.len() as u64 > limit {
        return Err(too_large(bytes.len() as u64));
    }
    Ok(Some(bytes))
}

/// The prefix of every temporary file a write of `path` goes through:
/// `<file name>.tmp.`; a random suffix follows.
fn temp_prefix(file_name: &str) -> String {
    format!("{file_name}.tmp.")
}

/// Creates a new temporary file for a write of `path`, in the same
/// directory (so the rename is atomic): `<path>.tmp.<16 random hex
/// digits>`, created exclusively (`O_CREAT|O_EXCL`, which also refuses any
/// existing name, a link included), mode 0600, with `O_NOFOLLOW`.
pub(crate) fn create_temp(path: &Path) -> io::Result<(PathBuf, File)> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("a registry file name is valid UTF-8"))?;
    // A name someone planted (or a collision, 1 in 2^64) is not ours to
    // open: pick another.
    let mut last = None;
    for _ in 0..8 {
        let mut random = [0u8; 8];
        getrandom::fill(&mut random).map_err(|e| {
            io::Error::other(format!("no randomness for a temporary file name: {e}"))
        })?;
        let suffix: String = random.iter().map(|b| format!("{b:02x}")).collect();
        let temp = path.with_file_name(format!("{}{suffix}", temp_prefix(name)));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(no_follow())
            .open(&temp)
        {
            Ok(file) => return Ok((temp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no temporary file name was free")))
}

/// Writes `bytes` to the new temporary `file` and fsyncs it; `fail`
/// injects a failure after the write and before the sync.
pub(crate) fn write_synced(mut file: &File, bytes: &[u8], fail: bool) -> io::Result<()> {
    // The umask may have narrowed the mode further; widen it to exactly
    // 0600 on the file we created, never on a path.
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(bytes)?;
    if fail {
        return Err(io::Error::other("injected write failure (FaultInjector)"));
    }
    file.sync_all()
}

/// Removes the temporary files a crashed writer of `dir` left behind: any
/// entry named after a registry file's temporary prefix (or the fixed
/// `.tmp` name of earlier versions). Unlinking a name never follows it, so
/// a planted link is removed, not its target. Called only by the owner of
/// the directory (under its lock), so no write of ours is in flight.
pub(crate) fn remove_leftover_temps(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    let prefixes = [RECORDS_FILE, DEPARTED_FILE].map(temp_prefix);
    let old = [RECORDS_FILE, DEPARTED_FILE].map(|f| format!("{f}.tmp"));
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if prefixes.iter().any(|p| name.starts_with(p.as_str())) || old.iter().any(|o| o == name) {
            let path = entry.path();
            match fs::remove_file(&path) {
                Ok(()) => {
                    tracing::debug!(path = %path.display(), "removed a leftover temporary file")
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "cannot remove a leftover temporary file; it is never read")
                }
            }
        }
    }
}
