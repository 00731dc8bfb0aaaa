//! [`RegistryError`]: everything that can go wrong in this crate.

use std::io;
use std::path::PathBuf;

use pod_protocol::PodName;

/// An error from opening or writing a registry.
///
/// A refused add ([`crate::Outcome::Departed`]) and the removal of a missing
/// Pod are outcomes, not errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A registry file exists but is not JSON, or not a JSON array (of
    /// tombstones, for the departed file). The file was left untouched.
    /// (An element of the records file that is not a valid record is not
    /// this error: see [`crate::InvalidRecord`].)
    #[error(
        "{path}: cannot parse registry file at line {line}, column {column}: {message}; \
         the file was left untouched: repair or move it away, then open again"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line of the parse error (0 if the file could not be
        /// decoded at all).
        line: usize,
        /// The 1-based column of the parse error.
        column: usize,
        /// What the parser expected or found.
        message: String,
    },
    /// The state directory is not private: not owned by this process's user,
    /// or writable by its group or by others, so another user could plant
    /// or replace the registry's files.
    #[error(
        "{path}: the state directory has mode {mode:04o} and owner uid {owner}; it must be \
         owned by uid {uid} and not writable by group or others: \
         run `chmod go-w` on it (as its owner) or choose another state directory"
    )]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner's uid.
        owner: u32,
        /// This process's uid.
        uid: u32,
    },
    /// A registry file (or the lock file) is not a regular file: a symbolic
    /// link, a FIFO, a device, a socket or a directory. It was not read,
    /// written or followed.
    #[error(
        "{path}: is {kind}, not a regular file; the registry reads and writes only \
         regular files: move it away, then open again"
    )]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is, e.g. "a symbolic link" or "a FIFO".
        kind: &'static str,
    },
    /// A registry file is larger than the read cap
    /// ([`crate::RegistryLimits::max_file_bytes`]). It was not read.
    #[error(
        "{path}: is {size} bytes, over the cap of {limit} bytes; raise \
         RegistryLimits::max_file_bytes if the file is genuine, else move it away"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes (at least; it may still be growing).
        size: u64,
        /// The cap.
        limit: u64,
    },
    /// An add was refused: the registry already holds
    /// [`crate::RegistryLimits::max_records`] records. Nothing changed.
    #[error(
        "cannot add pod `{pod_name}`: the registry is full ({limit} records); \
         remove departed pods or raise RegistryLimits::max_records"
    )]
    Full {
        /// The pod whose add was refused.
        pod_name: PodName,
        /// The cap on records.
        limit: usize,
    },
    /// An add was refused: the records file would grow past
    /// [`crate::RegistryLimits::max_file_bytes`], which would make it
    /// unreadable under the same cap. Nothing changed.
    #[error(
        "cannot add pod `{pod_name}`: the records file would grow to {bytes} bytes, \
         over the cap of {limit} bytes; raise RegistryLimits::max_file_bytes"
    )]
    FileFull {
        /// The pod whose add was refused.
        pod_name: PodName,
        /// The size the file would have had.
        bytes: u64,
        /// The cap.
        limit: u64,
    },
    /// An add was refused: the record encodes to more than
    /// [`crate::RegistryLimits::max_record_bytes`]. Nothing changed.
    #[error(
        "cannot add pod `{pod_name}`: its record is {bytes} bytes, over the cap of \
         {limit} bytes; delegate fewer scope rules or raise RegistryLimits::max_record_bytes"
    )]
    RecordTooLarge {
        /// The pod whose add was refused.
        pod_name: PodName,
        /// The record's encoded size.
        bytes: u64,
        /// The cap.
        limit: u64,
    },
    /// Another registry (in this or another process) owns the state
    /// directory: it holds the lock file's exclusive lock. Only one writer
    /// may own a state directory; read it with
    /// [`crate::RegistrySnapshot`] instead.
    #[error(
        "{dir}: the registry is in use by {}; stop that process (a `podctl listen` or \
         `podctl reconcile` on the same state directory) or read the registry without \
         owning it (`podctl registry`)",
        match pid { Some(pid) => format!("process {pid}"), None => "another process".to_owned() }
    )]
    Locked {
        /// The state directory.
        dir: PathBuf,
        /// The holder's pid, from the lock file (or `/proc/locks`); `None`
        /// when neither says.
        pid: Option<u32>,
    },
    /// Reading, writing or syncing a file failed. After a failed write the
    /// mutation stays applied in memory and is written by the next write
    /// (see the crate documentation's failure policy).
    #[error("{path}: {source}; check the state directory's permissions and free space")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The registry's committer thread is gone (it could not be started or
    /// it stopped); nothing can be made durable any more. Open the registry
    /// again.
    #[error("the registry's committer thread is not running; open the registry again")]
    Closed,
    /// A write failure injected by a test (see
    /// [`crate::testing::MemoryRegistry::fail_next_writes`]).
    #[error("injected write failure (testing)")]
    Injected,
}

impl RegistryError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        RegistryError::Io {
            path: path.into(),
            source,
        }
    }
}

/// A copy of `error` for one more waiter of a failed write (`io::Error` is
/// not `Clone`): keeps the OS error code, or else the kind and message.
pub(crate) fn copy_io_error(error: &io::Error) -> io::Error {
    match error.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(error.kind(), error.to_string()),
    }
}
