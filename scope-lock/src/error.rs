//! The crate's one error type.

use std::fmt;
use std::path::PathBuf;

use pod_protocol::{Permission, PodName, ScopeRule, ValidationError};

/// Why a scope-table operation was refused or failed.
///
/// Refusals (`DuplicateName` .. `ReservationExpired`) leave the table exactly as it
/// was, apart from stale allocations that were reclaimed on the way. Failures
/// of the storage (`Corrupt`, `InvalidTable`, `UnsupportedVersion`,
/// `LockTimeout`, `NotARegularFile`, `TooLarge`, `UnsafeDirectory`) leave
/// the stored table untouched; so does `Io`, except when a write fails
/// after its journal was made durable: the next transaction may complete
/// that write from the journal.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// A pod of that name already holds an allocation.
    #[error(
        "pod `{name}` already holds a scope allocation: release it first, or pick another name"
    )]
    DuplicateName {
        /// The name asked for.
        name: PodName,
    },
    /// No allocation of that name exists (never registered, released, or
    /// reclaimed after its process died). Callers on the event path swallow
    /// it.
    #[error("no scope allocation for pod `{name}`: it was never registered, was released, or was reclaimed after its process exited")]
    UnknownPod {
        /// The name asked for.
        name: PodName,
    },
    /// The request is about another incarnation of a pod of that name.
    #[error("pod `{name}` is incarnation {held}, not {requested}: the request is about an earlier pod of the same name and was ignored")]
    IncarnationMismatch {
        /// The pod's name.
        name: PodName,
        /// The incarnation in the table.
        held: String,
        /// The incarnation in the request.
        requested: String,
    },
    /// A requested rule is not inside the spawner's own scope.
    #[error("cannot delegate {}: pod `{spawner}` holds no rule covering it with at least {} permission; delegate only a sub-scope of the spawner's own", DisplayRule(.rule), permission_name(.rule.permission))]
    NotSubset {
        /// The pod that tried to delegate.
        spawner: PodName,
        /// The first requested rule that is not covered.
        rule: ScopeRule,
    },
    /// A requested write rule overlaps write scope held by another pod.
    #[error("write conflict: {} overlaps the scope of pod `{competitor}`; wait until it is released or request a disjoint scope", DisplayRule(.rule))]
    WriteConflict {
        /// A pod that already holds overlapping write scope.
        competitor: PodName,
        /// The first requested rule that conflicts.
        rule: ScopeRule,
    },
    /// A name, path or scope in the request is invalid (relative or not
    /// lexically normal path, empty scope, ...).
    #[error("invalid request: {0}")]
    InvalidRule(#[from] ValidationError),
    /// The process the allocation is for is not running.
    #[error("process {pid} is not running (or its /proc entry cannot be read): start the pod's process before allocating scope to it")]
    DeadProcess {
        /// The pid asked for.
        pid: u32,
    },
    /// The allocation is not a pending reservation: it was adopted already
    /// (or made by register or delegate).
    #[error(
        "pod `{name}` holds no pending reservation: it was adopted already, or was never reserved"
    )]
    NotReserved {
        /// The pod's name.
        name: PodName,
    },
    /// The reservation's deadline passed before the child adopted it; it
    /// is stale and will be reclaimed.
    #[error("the reservation of pod `{name}` expired at {deadline_unix_ms} (Unix ms) before the child adopted it: the spawner must reserve again")]
    ReservationExpired {
        /// The pod's name.
        name: PodName,
        /// Its deadline (Unix time, ms).
        deadline_unix_ms: u64,
    },
    /// The stored table is not valid JSON of the expected shape. It was not
    /// modified.
    #[error("scope table {} is corrupt at line {line}, column {column}: {message}; it was left untouched: inspect it, then repair or remove it (every pod must then register again)", .path.display())]
    Corrupt {
        /// The table file.
        path: PathBuf,
        /// 1-based line of the error (0 when unknown).
        line: usize,
        /// 1-based column of the error (0 when unknown).
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The stored table parses but breaks a rule of the table (an invalid
    /// path, a duplicate name, a dangling parent, overlapping write scope).
    /// It was not modified.
    #[error("scope table {} is inconsistent: {message}; it was left untouched: inspect it, then repair or remove it (every pod must then register again)", .path.display())]
    InvalidTable {
        /// The table file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The stored table was written by a newer format version.
    #[error("scope table {} has format version {version}, but this build reads only version 1: use a newer pod-scope-lock", .path.display())]
    UnsupportedVersion {
        /// The table file.
        path: PathBuf,
        /// The version found.
        version: u64,
    },
    /// Reading, writing, locking or syncing the table failed.
    #[error("scope table I/O failed on {}: {source}", .path.display())]
    Io {
        /// The file or directory the operation was on.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Another process held the table's lock longer than the store waits
    /// ([`FileStore::with_lock_timeout`](crate::FileStore::with_lock_timeout)).
    /// Nothing was read or changed.
    #[error("scope table {} is locked by {}: gave up after {waited:?}; if that process is stopped or hung, resume or kill it (the lock goes with it), then retry", .path.display(), DisplayHolder(*.holder))]
    LockTimeout {
        /// The flocked file (the table file itself).
        path: PathBuf,
        /// How long the store waited.
        waited: std::time::Duration,
        /// The pid holding the lock, from `/proc/locks` (`None` if it could
        /// not be found, e.g. it was released meanwhile or `/proc` is not
        /// mounted).
        holder: Option<u32>,
    },
    /// The table path (or its journal) is not a regular file: a FIFO, a
    /// device, a directory, a socket or a symbolic link. It was not opened
    /// for reading or writing through.
    #[error("scope table {} is a {kind}, not a regular file: refusing to use it; remove it or point the table elsewhere", .path.display())]
    NotARegularFile {
        /// The path.
        path: PathBuf,
        /// What it is instead.
        kind: &'static str,
    },
    /// The table file is larger than the store reads
    /// ([`FileStore::with_max_table_bytes`](crate::FileStore::with_max_table_bytes)).
    /// It was not read.
    #[error("scope table {} is {size} bytes, over the limit of {limit}: it is not a table this store wrote; inspect it, or raise the limit", .path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The table's directory could be written by someone else: it is not
    /// owned by this process's uid, or is group- or world-writable.
    #[error("directory {} of the scope table has owner uid {owner} and mode {mode:04o}, but must be owned by uid {uid} and not writable by group or others (another user could replace the table): chmod go-w it, or point the table elsewhere", .path.display())]
    UnsafeDirectory {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
        /// Its permission bits.
        mode: u32,
        /// This process's uid.
        uid: u32,
    },
    /// The operating system could not supply random bytes for an
    /// incarnation id.
    #[error("cannot mint an incarnation id: the OS random source failed: {0}")]
    Entropy(getrandom::Error),
    /// The etcd-backed table failed (feature `etcd`): unreachable, no
    /// quorum, lock retries exhausted, ...; see [`EtcdError`](crate::EtcdError).
    #[cfg(feature = "etcd")]
    #[error(transparent)]
    Etcd(#[from] crate::etcd::EtcdError),
}

impl ScopeError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ScopeError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Formats a lock holder: `process 4242`, or `another process`.
struct DisplayHolder(Option<u32>);

impl fmt::Display for DisplayHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(pid) => write!(f, "process {pid}"),
            None => f.write_str("another process"),
        }
    }
}

/// Formats a rule as `"/srv/a (write, recursive)"`.
pub(crate) struct DisplayRule<'a>(pub(crate) &'a ScopeRule);

impl fmt::Display for DisplayRule<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.0.target,
            permission_name(self.0.permission),
            if self.0.recursive {
                "recursive"
            } else {
                "non-recursive"
            }
        )
    }
}

pub(crate) fn permission_name(permission: Permission) -> &'static str {
    match permission {
        Permission::Read => "read",
        Permission::Write => "write",
    }
}
