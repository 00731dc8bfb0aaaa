//! Transactional storage of the whole table: the [`TableStore`] seam and the
//! flock-guarded [`FileStore`].

use std::ffi::OsString;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::ScopeError;
use crate::format::{self, DecodeError};
use crate::table::Table;

/// Transactional storage of the whole table.
///
/// Required method: [`transact`](Self::transact). Provided:
/// [`load`](Self::load) (a copy of the table) and [`read`](Self::read)
/// (a look at it without a copy, where the store can lend one).
///
/// A transaction sees the whole table and either persists all of its
/// changes or none, and no two transactions on the same table (in any
/// process sharing the store) interleave. Implementations: [`FileStore`]
/// (a flock-guarded JSON file), [`MemoryStore`](crate::testing::MemoryStore)
/// (for tests). A networked store would map `transact` onto a
/// compare-and-swap of one key.
pub trait TableStore: Send + Sync + 'static {
    /// Runs `f` on the current table while holding exclusive access (flock
    /// for the file store); if `f` returns `Ok` and changed the table,
    /// persists it atomically and durably before returning. If `f` returns
    /// `Err`, nothing is persisted and the error is returned.
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError>;

    /// The current table (a read-only transaction).
    fn load(&self) -> Result<Table, ScopeError> {
        self.transact(|table| Ok(table.clone()))
    }

    /// Runs `f` on the current table and returns its answer, without
    /// copying the table where the store can lend it: [`FileStore`] parses
    /// the file (as [`load`](Self::load), without the lock) and hands `f`
    /// that table; [`MemoryStore`](crate::testing::MemoryStore) lends its
    /// own under its mutex. The lookups of [`ScopeTable`](crate::ScopeTable)
    /// (`find`, `list`, `owner_of`, `effective_write_scope`) go through
    /// here, so in memory a lookup costs a binary search and the copy of
    /// what it returns, not a copy of the table.
    ///
    /// `f` must not use the store itself (a store that lends under a lock
    /// would deadlock). Default: `f(&self.load()?)`.
    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        Ok(f(&self.load()?))
    }

    /// Whether [`transact`](Self::transact) may block on I/O (a file lock,
    /// fsync). Async callers run a blocking store on a blocking thread and
    /// call a non-blocking one inline. Default `true`; in-memory stores
    /// return `false`.
    fn may_block(&self) -> bool {
        true
    }
}

impl<T: TableStore> TableStore for Arc<T> {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        (**self).transact(f)
    }

    fn load(&self) -> Result<Table, ScopeError> {
        (**self).load()
    }

    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        (**self).read(f)
    }

    fn may_block(&self) -> bool {
        (**self).may_block()
    }
}

/// The table as a JSON file, shared by every process on the machine.
///
/// Three files live side by side (for a data path `scope.lock`):
///
/// - `scope.lock`: the table, mode 0600, only ever replaced whole by
///   `rename`, so it always holds a complete old or new table, even after a
///   SIGKILL or power loss at any instant;
/// - `scope.lock.lck`: the lock file, mode 0600, never renamed or removed.
///   Every transaction holds an exclusive `flock` on it from before reading
///   the table until after the new table is durable. (Locking the data file
///   itself would not work: a process waiting on the old inode would wake up
///   holding a lock on a file that was already renamed away.)
/// - `scope.lock.tmp`: the next table while it is being written (only
///   touched under the lock); left behind by a writer killed mid-write and
///   overwritten by the next one.
///
/// A transaction: flock the lock file; read and check the table (a missing
/// file is an empty table; a file that does not parse or breaks the
/// invariant is an error, and is never overwritten); run the closure; if it
/// changed the table, write the temp file, fsync it, rename it over the data
/// file, fsync the directory; unlock. The directory is created with mode
/// 0700 if missing.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
    lock_path: PathBuf,
    temp_path: PathBuf,
    counters: Arc<Counters>,
}

/// What a [`FileStore`] (and every clone of it) has done so far; see
/// [`FileStore::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FileStoreStats {
    /// Full loads of the data file: read, parsed and checked against the
    /// invariant.
    pub loads: u64,
    /// Loads answered from the store's cache of the last table it parsed
    /// or wrote, because the file's bytes were unchanged (no parse, no
    /// check).
    pub cached_loads: u64,
    /// Table writes made durable.
    pub durable_writes: u64,
}

/// The counters behind [`FileStoreStats`], shared by clones.
#[derive(Debug, Default)]
struct Counters {
    loads: AtomicU64,
    cached_loads: AtomicU64,
    durable_writes: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

impl FileStore {
    /// A store for the table at `path` (nothing is touched until the first
    /// transaction).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileStore {
            lock_path: with_suffix(&path, ".lck"),
            temp_path: with_suffix(&path, ".tmp"),
            path,
            counters: Arc::default(),
        }
    }

    /// What this store and its clones have done so far: loads parsed,
    /// loads answered from the cache, durable writes. (Relaxed counters:
    /// exact once the operations counted have returned.)
    pub fn stats(&self) -> FileStoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FileStoreStats {
            loads: get(&self.counters.loads),
            cached_loads: get(&self.counters.cached_loads),
            durable_writes: get(&self.counters.durable_writes),
        }
    }

    /// The table file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The lock file beside it (`<path>.lck`).
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// Opens (creating it, and its directory, if needed) and flocks the
    /// lock file; the lock is held until the returned file is dropped.
    fn lock(&self) -> Result<File, ScopeError> {
        let dir = self.dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| ScopeError::io(dir, e))?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(|e| ScopeError::io(&self.lock_path, e))?;
        file.lock()
            .map_err(|e| ScopeError::io(&self.lock_path, e))?;
        Ok(file)
    }

    fn read_file(&self) -> Result<Table, ScopeError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Table::default()),
            Err(e) => return Err(ScopeError::io(&self.path, e)),
        };
        bump(&self.counters.loads);
        format::decode(&bytes).map_err(|e| match e {
            DecodeError::Syntax {
                line,
                column,
                message,
            } => ScopeError::Corrupt {
                path: self.path.clone(),
                line,
                column,
                message,
            },
            DecodeError::Version(version) => ScopeError::UnsupportedVersion {
                path: self.path.clone(),
                version,
            },
            DecodeError::Invalid(message) => ScopeError::InvalidTable {
                path: self.path.clone(),
                message,
            },
        })
    }

    fn write(&self, table: &Table) -> Result<(), ScopeError> {
        let bytes = format::encode(table);
        let temp_error = |e| ScopeError::io(&self.temp_path, e);
        let mut temp = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.temp_path)
            .map_err(temp_error)?;
        // A temp file left by someone else may have another mode.
        temp.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(temp_error)?;
        temp.write_all(&bytes).map_err(temp_error)?;
        temp.sync_all().map_err(temp_error)?;
        drop(temp);
        fs::rename(&self.temp_path, &self.path).map_err(|e| ScopeError::io(&self.path, e))?;
        let dir = self.dir();
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| ScopeError::io(dir, e))?;
        bump(&self.counters.durable_writes);
        Ok(())
    }
}

impl TableStore for FileStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        let lock = self.lock()?;
        let mut table = self.read_file()?;
        let before = table.stamp();
        let result = f(&mut table)?;
        if table.stamp() != before {
            self.write(&table)?;
        }
        drop(lock);
        Ok(result)
    }

    /// Reads the table without taking the lock: the data file is only ever
    /// replaced whole, so a reader sees a complete table and never waits for
    /// (or delays) a writer.
    fn load(&self) -> Result<Table, ScopeError> {
        self.read_file()
    }

    /// Parses the table as [`load`](TableStore::load) does (without the
    /// lock) and runs `f` on it: no copy besides the parse.
    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        Ok(f(&self.read_file()?))
    }
}
