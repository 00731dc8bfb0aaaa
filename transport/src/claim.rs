//! Claiming a socket path for one listener: a private directory, an
//! exclusive lock file held for the listener's whole life, no live listener
//! on the path, then the bind itself.
//!
//! # Why a lock file
//!
//! Probing a socket path ("does anyone answer?"), unlinking it when nobody
//! does and binding a new socket are three steps. Two listeners starting
//! together on one stale path can both find it stale, and the second unlink
//! then removes the first one's fresh socket: both "start", one of them
//! unreachable. An exclusive `flock` on `<socket>.lock`, taken before the
//! probe and held until the listener is gone, makes the three steps one
//! critical section, and makes the lock holder the only listener of the
//! path: a second one is refused with the holder's pid (written into the
//! lock file) instead of stealing the path.
//!
//! The lock file is never removed. Unlinking a lock file that others may
//! have opened lets two processes lock two different inodes under the same
//! name; a few bytes left beside the socket are the price of exclusion
//! that cannot be raced. Listeners that predate the lock file (existing
//! Pods) do not take it; the connect probe still protects their sockets.
//!
//! # Why the directory check
//!
//! Whoever can write the socket's directory can unlink our socket and bind
//! their own in its place, then read every event meant for us (and answer
//! the probe, locking us out). So the directory must belong to our uid and
//! be writable by nobody else; a missing one is created with mode `0700`.
//! Only the immediate parent is checked: an ancestor writable by others can
//! still rename the whole directory away, which is the embedder's choice of
//! location to get right (the default runtime directories are private).

use std::fs::{File, TryLockError};
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Mode, OFlags};
use tokio::net::{UnixListener, UnixStream};

use crate::listen::{ListenConfig, ListenError};

/// How long a busy lock is retried before the bind is refused. A lock can
/// be busy for an instant after its listener is gone: a child process
/// that another thread of the holder forks keeps a copy of the lock's
/// descriptor until it execs (the descriptor is close-on-exec), and the
/// flock lives as long as any copy. A lock held by a live listener stays
/// busy, so this only delays a refusal, boundedly.
const LOCK_WAIT: Duration = Duration::from_millis(250);
/// How long a listener refused by the lock keeps re-reading the lock file
/// when it is still empty: the holder writes its pid just after locking,
/// and the refusal should name it.
const HOLDER_PID_WAIT: Duration = Duration::from_secs(1);
/// The pid file holds a decimal `u32` and a newline; anything longer is not
/// ours, and is not read further.
const MAX_PID_FILE_LEN: usize = 32;

/// Identity of the socket file a listener bound, so that removal never
/// unlinks a socket another listener has since bound at the same path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileId {
    dev: u64,
    ino: u64,
}

/// A claimed socket path: the held lock and the bound socket's identity.
/// Dropping it releases the lock, so it must outlive the socket's removal.
#[derive(Debug)]
pub(crate) struct Claim {
    /// Held (flocked) for as long as this value lives.
    _lock: File,
    /// The socket file bound.
    pub(crate) file: FileId,
}

/// The lock file guarding `socket`: `<socket>.lock`.
pub(crate) fn lock_path(socket: &Path) -> PathBuf {
    let mut name = socket.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Claims `path` and binds a socket there: the private directory, the
/// lock, the probe of an existing socket, the bind, the backlog and the
/// mode. On success the returned listener is the only one on `path` for
/// as long as the [`Claim`] lives.
pub(crate) async fn bind(
    path: &Path,
    config: &ListenConfig,
) -> Result<(UnixListener, Claim), ListenError> {
    let own_uid = rustix::process::getuid().as_raw();
    let owned = path.to_owned();
    let (lock, existing) = blocking_listen(path, move || {
        ensure_private_dir(&owned, own_uid)?;
        let lock = take_lock(&owned, own_uid)?;
        Ok((lock, inspect(&owned)?))
    })
    .await?;
    match existing {
        Existing::Nothing => {}
        Existing::Other => {
            return Err(ListenError::NotASocket {
                path: path.to_owned(),
            })
        }
        Existing::Socket => replace_stale(path).await?,
    }
    let io_err = |source| ListenError::Io {
        path: path.to_owned(),
        source,
    };
    let listener = match UnixListener::bind(path) {
        Ok(listener) => listener,
        // Under the lock, only a listener that ignores it (an existing Pod)
        // can have bound the path since the probe.
        Err(err) if err.kind() == io::ErrorKind::AddrInUse => {
            return Err(ListenError::InUse {
                path: path.to_owned(),
            })
        }
        Err(err) => return Err(io_err(err)),
    };
    match configure(&listener, path, config).await {
        Ok(file) => Ok((listener, Claim { _lock: lock, file })),
        Err(err) => {
            drop(listener);
            // The socket is ours and unusable: leave no stale file.
            let cleanup = path.to_owned();
            let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(cleanup)).await;
            Err(io_err(err))
        }
    }
}

/// Runs blocking claim steps off the executor threads.
async fn blocking_listen<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> Result<T, ListenError> + Send + 'static,
) -> Result<T, ListenError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|err| {
            Err(ListenError::Io {
                path: path.to_owned(),
                source: io::Error::other(err),
            })
        })
}

/// Creates the parent directory of `path` with mode `0700` if it is
/// missing, then checks that it is a directory owned by `own_uid` and not
/// writable by group or others. Blocking.
fn ensure_private_dir(path: &Path, own_uid: u32) -> Result<(), ListenError> {
    let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) else {
        // A relative path with no directory part: the working directory.
        return ensure_private_dir(&Path::new(".").join(path), own_uid);
    };
    let create_err = |source| ListenError::CreateDir {
        path: dir.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(create_err)?;
    }
    // Follows a symbolic link on purpose: what matters is the directory the
    // socket lands in, whoever points at it.
    let meta = std::fs::metadata(dir).map_err(create_err)?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        return Err(create_err(io::Error::new(
            io::ErrorKind::NotADirectory,
            "it exists and is not a directory",
        )));
    }
    if meta.uid() != own_uid || mode & 0o022 != 0 {
        return Err(ListenError::InsecureDir {
            path: dir.to_owned(),
            mode,
            owner: meta.uid(),
            own_uid,
        });
    }
    Ok(())
}

/// Opens (creating it `0600`, never through a link) and flocks the lock
/// file of `socket`, then writes our pid into it. Blocking.
fn take_lock(socket: &Path, own_uid: u32) -> Result<File, ListenError> {
    let path = lock_path(socket);
    let lock_err = |source| ListenError::LockFile {
        path: path.clone(),
        source,
    };
    // NONBLOCK: opening a FIFO planted under the name must not hang; the
    // type check below then refuses it.
    let fd = rustix::fs::open(
        &path,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    )
    .map_err(|errno| lock_err(errno.into()))?;
    let file = File::from(fd);
    let meta = file.metadata().map_err(lock_err)?;
    if !meta.file_type().is_file() || meta.uid() != own_uid {
        return Err(lock_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "it is not a regular file owned by uid {own_uid}; remove it if no listener runs"
            ),
        )));
    }
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(ListenError::Locked {
                    path: socket.to_owned(),
                    lock: path.clone(),
                    pid: read_holder_pid(&file),
                })
            }
            Err(TryLockError::Error(source)) => return Err(lock_err(source)),
        }
    }
    let pid = format!("{}\n", std::process::id());
    file.set_len(0)
        .and_then(|()| file.write_all_at(pid.as_bytes(), 0))
        .and_then(|()| file.set_permissions(std::fs::Permissions::from_mode(0o600)))
        .map_err(lock_err)?;
    Ok(file)
}

/// The pid the lock holder wrote, waiting a little for it to be written.
fn read_holder_pid(file: &File) -> Option<u32> {
    let deadline = Instant::now() + HOLDER_PID_WAIT;
    loop {
        let mut buf = [0u8; MAX_PID_FILE_LEN];
        // One positioned read of a few bytes of a regular file sees the
        // holder's single write whole or not at all.
        let len = file.read_at(&mut buf, 0).ok()?;
        match parse_holder_pid(&buf[..len]) {
            Some(pid) => return pid,
            None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            None => return None,
        }
    }
}

/// Parses a lock file's content: `Some(pid)` once it is complete (a line),
/// `None` while it is still empty or partial. Whatever else the file holds
/// (it is only ours by convention) reads as an unknown pid, `Some(None)`.
fn parse_holder_pid(content: &[u8]) -> Option<Option<u32>> {
    let line = content.strip_suffix(b"\n")?;
    Some(
        std::str::from_utf8(line)
            .ok()
            .and_then(|pid| pid.parse().ok()),
    )
}

/// What is at the socket path before binding.
enum Existing {
    Nothing,
    Socket,
    Other,
}

/// Says what is at `path`. Blocking.
fn inspect(path: &Path) -> Result<Existing, ListenError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => Ok(Existing::Socket),
        Ok(_) => Ok(Existing::Other),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(Existing::Nothing),
        Err(source) => Err(ListenError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Removes the socket file at `path` if nothing answers on it; refuses a
/// live one.
async fn replace_stale(path: &Path) -> Result<(), ListenError> {
    let io_err = |source| ListenError::Io {
        path: path.to_owned(),
        source,
    };
    // A non-blocking connect answers at once: accepted or backlog full
    // means a live listener; refused means nobody listens.
    match UnixStream::connect(path).await {
        Ok(_) => Err(ListenError::InUse {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Err(ListenError::InUse {
            path: path.to_owned(),
        }),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(path = %path.display(), "replacing stale socket");
            let owned = path.to_owned();
            blocking_listen(path, move || match std::fs::remove_file(&owned) {
                Err(source) if source.kind() != io::ErrorKind::NotFound => Err(ListenError::Io {
                    path: owned,
                    source,
                }),
                _ => Ok(()),
            })
            .await
        }
        Err(err) => Err(io_err(err)),
    }
}

/// Sets the backlog and the socket file's mode; returns the file's identity.
async fn configure(
    listener: &UnixListener,
    path: &Path,
    config: &ListenConfig,
) -> io::Result<FileId> {
    // Linux lets `listen` be called again to resize the backlog.
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    rustix::net::listen(listener, backlog)?;
    let path = path.to_owned();
    let mode = config.socket_mode;
    tokio::task::spawn_blocking(move || {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        let meta = std::fs::symlink_metadata(&path)?;
        Ok(FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    })
    .await
    .unwrap_or_else(|err| Err(io::Error::other(err)))
}

/// Removes the socket file at `path` if it is still the one bound as
/// `file`. Best effort: a failure is logged. Blocking.
pub(crate) fn remove_socket(path: &Path, file: FileId) {
    let still_ours = std::fs::symlink_metadata(path)
        .is_ok_and(|meta| meta.dev() == file.dev && meta.ino() == file.ino);
    if !still_ours {
        return;
    }
    if let Err(err) = std::fs::remove_file(path) {
        if err.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove socket file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_file_content_parses_only_as_a_complete_pid_line() {
        assert_eq!(parse_holder_pid(b"1234\n"), Some(Some(1234)));
        assert_eq!(parse_holder_pid(b""), None, "not written yet");
        assert_eq!(parse_holder_pid(b"12"), None, "mid-write");
        for junk in [
            &b"x\n"[..],
            b"-1\n",
            b"99999999999\n",
            b"\xff\n",
            b"\n",
            b"1 2\n",
        ] {
            assert_eq!(parse_holder_pid(junk), Some(None), "{junk:?}");
        }
    }

    #[test]
    fn lock_path_appends_lock_to_the_socket_name() {
        assert_eq!(
            lock_path(Path::new("/run/pods/p/sock")),
            Path::new("/run/pods/p/sock.lock")
        );
    }
}
