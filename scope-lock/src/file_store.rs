//! The table as one JSON file shared by every process on the machine:
//! [`FileStore`], locked the way existing Pods lock it (a `flock` on the
//! data file itself), rewritten in place behind a journal, and read
//! through a cache of the last table parsed.
//!
//! # Crash safety of the lock protocol
//!
//! The protocol itself (for third parties) is in the README; why it is safe:
//!
//! So a SIGKILL or power loss at any instant leaves either a table that
//! parses, or a complete journal of the next one beside a tear of its own
//! rewrite. Existing Pods, which truncate, write and `fdatasync` without a
//! journal, are excluded by the same lock; a crash in the middle of *their*
//! rewrite can still leave a torn file, which this crate then refuses rather
//! than guess, even beside a leftover journal of ours (the checksums of the
//! old bytes tell the journal's own tear from theirs, so an update of theirs
//! is not rolled back to a stale journal). A crash of theirs right after their
//! truncation leaves an empty file: a complete journal beside it is the best
//! table left and is recovered; without one, the table is empty, as it is
//! for them.
//!
//! # How it is tested
//!
//! - 8 processes race to register and delegate overlapping scopes on one file:
//!   no update is lost, and every snapshot satisfies the invariant.
//! - A process saving in a loop is killed with SIGKILL 200 times (set
//!   `POD_SCOPE_LOCK_CRASH_KILLS` for more): the table always parses and
//!   satisfies the invariant, through the journal when the data file was
//!   torn (besides the rare kill inside the rewrite itself, each complete
//!   journal a kill leaves is paired with the data file torn as such a kill
//!   would leave it, and the load must give exactly the journal's table).
//!   Unit tests tear the data file every way an in-place rewrite can
//!   (a prefix of the new bytes over the old, untruncated, empty) beside a
//!   complete journal, and check recovery, the journal's checksum and that a
//!   parseable data file wins over a leftover journal.
//! - Processes following existing Pods' protocol (blocking flock of the data
//!   file, read, truncate, write in place, fdatasync; legacy allocations; no
//!   `version`) race ours on one table: no grant lost, none doubled (every
//!   snapshot satisfies the invariant), the final file parses for both. A
//!   committed fixture of their table is opened, used and written back
//!   (legacy allocations stay legacy).
//! - A SIGSTOPped process holding the lock makes writers and readers fail
//!   with `LockTimeout` naming its pid; a FIFO, a directory or a symbolic link
//!   as the table is refused without hanging; symbolic links planted at the
//!   journal's (and the old temp and lock files') names never redirect a
//!   write; an unsafe directory, an over-size file are typed errors.
//!
//! # Performance
//!
//! `cargo xtask bench -- --only 5` (item 5 of the workspace's
//! [BENCHMARKS.md](../BENCHMARKS.md)) times one `delegate` beside a plain
//! cycle of the same table making the store's syscalls with no library
//! around them (flock the data file, read, parse, serialize, write and
//! fdatasync a journal, fsync the directory, rewrite the data file in place
//! and fdatasync it, remove the journal), with a free liveness probe and with
//! `/proc`. A delegate costs one such cycle plus:
//!
//! - the checks on load: sortedness, one pass over each path (the full
//!   `validate_path` runs only to word an error), parents resolved through an
//!   integer-prefix index with a small cache, and the sibling-disjointness
//!   sort: O(n log n) in all, about 15% of the parse at 10,000 allocations;
//! - one linear scan for write conflicts (byte comparisons, no allocation)
//!   and an O(n) insertion into the sorted table;
//! - a few liveness probes (the new Pod, the spawner, and any Pod that would
//!   refuse the request), not one per allocation.
//!
//! Measured on a shared 2-core machine, busy with other builds (median of 60
//! rounds, ratios to the plain cycle; "tmpfs" is the same run with
//! `TMPDIR=/dev/shm`, which takes fsync out and leaves the CPU alone), with
//! the store's protocol of issue 16 (the data file flocked and rewritten in
//! place behind a journal) and a plain cycle making the same syscalls:
//!
//! | allocations | free probe | `/proc` | free probe, tmpfs | `/proc`, tmpfs |
//! | --- | --- | --- | --- | --- |
//! | 10 | 1.0-1.1x | 1.1x | 1.4x | 2.0x (two `/proc` reads) |
//! | 1,000 | 1.07-1.16x | 1.14-1.16x | 1.20x | 1.18x |
//! | 10,000 | 0.98-1.11x (29-39 ms) | 0.96-1.18x | 1.24x | 1.27x |
//!
//! The code before it (a separate lock file, a temp file renamed over the
//! table, against a plain cycle of those syscalls) measured, on the same
//! machine in the same hour, 1.13-1.26x free and 1.04-1.16x with `/proc` at
//! 10,000 allocations, and 1.33x / 1.21x on tmpfs: the journal adds a write
//! and an fdatasync to both sides, and the ratio stays where it was. The
//! spread between runs is the machine's load.
//!
//! Reads are cheap when nothing changed: `cargo run --release -p
//! pod-scope-lock --example file_reads` times `find` on a file table whose
//! bytes are unchanged since the store's last load (read, compare, reuse the
//! parsed table) against a store made `with_cache(false)`:
//!
//! | allocations (file size) | cached `find` | uncached `find` |
//! | --- | --- | --- |
//! | 1,000 (0.3 MB) | 0.030 ms | 1.25 ms |
//! | 10,000 (3 MB) | 0.195 ms | 14.2 ms |

mod journal;
mod open;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::ScopeError;
use crate::format::{self, DecodeError};
use crate::store::TableStore;
use crate::table::Table;

/// The table as a JSON file, shared by every process on the machine,
/// including existing Pods, which lock and write it their own way.
///
/// Two files live side by side (for a data path `scope.lock`):
///
/// - `scope.lock`: the table, mode 0600 when this store creates it. It is
///   also the lock: a transaction holds an exclusive `flock` on it from
///   before reading the table until the new table is durable, a read holds
///   a shared one while it reads. Existing Pods take the same exclusive
///   lock, so their writers and ours exclude each other. The file is
///   rewritten in place (write from offset 0, truncate to length, fdatasync),
///   never renamed over: a process waiting for the lock of a renamed-away
///   inode would wake up holding a lock nobody else takes.
/// - `scope.lock.journal`: the next table while the data file is rewritten.
///   Created exclusively (never through a symbolic link) under the lock,
///   made durable (fdatasync, then fsync of the directory) before the data
///   file is touched, and removed once it is durable. It holds the new
///   table and the bytes it replaces. A transaction that finds the data
///   file unparseable and a complete journal (lengths and checksum match,
///   and it is a valid table) rewrites the data file from the journal if
///   the file is empty or is what this rewrite leaves when interrupted (a
///   prefix of the new table over the old bytes), and refuses a file torn
///   by anyone else since as corrupt; one that finds a
///   parseable data file removes a leftover journal (its writer died
///   before touching the data, or an existing Pod, which knows nothing of
///   journals, wrote the file since). Readers recover the same way without
///   writing.
///
/// A missing file is an empty table, and so is a 0-byte one; a read of a
/// missing table creates nothing. A file that does not parse (and has no
/// complete journal) or breaks the invariant is an error, and is never
/// overwritten. The directory is created with mode 0700 if missing, and
/// must be owned by this uid and not writable by group or others
/// ([`ScopeError::UnsafeDirectory`]); only a regular file is opened
/// ([`ScopeError::NotARegularFile`], without blocking on a FIFO); a file
/// over [`with_max_table_bytes`](Self::with_max_table_bytes) is refused
/// before it is read; a lock wait gives up after
/// [`with_lock_timeout`](Self::with_lock_timeout)
/// ([`ScopeError::LockTimeout`], naming the holder's pid).
///
/// The store keeps the last table it parsed or wrote with the exact bytes
/// it came from: a load whose bytes are identical reuses it instead of
/// parsing and checking again, whatever other processes did meanwhile
/// (bytes are compared, not times). Clones share that cache and the
/// [`stats`](Self::stats) counters.
#[derive(Clone)]
pub struct FileStore {
    path: PathBuf,
    journal_path: PathBuf,
    lock_timeout: Duration,
    max_table_bytes: u64,
    cache_enabled: bool,
    shared: Arc<Shared>,
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

/// State shared by clones.
#[derive(Default)]
struct Shared {
    loads: AtomicU64,
    cached_loads: AtomicU64,
    durable_writes: AtomicU64,
    cache: Mutex<Option<Arc<Cached>>>,
}

/// A valid table and the exact bytes it was decoded from (or encoded to).
struct Cached {
    bytes: Vec<u8>,
    table: Table,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// How often a transaction reopens a data file that was removed or
/// replaced while it waited for the lock, before giving up.
const REOPENS: usize = 8;

impl FileStore {
    /// Default of [`with_lock_timeout`](Self::with_lock_timeout): 5 s.
    pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

    /// Default of [`with_max_table_bytes`](Self::with_max_table_bytes):
    /// 64 MiB, about 250,000 allocations (10,000 take about 2.5 MB).
    pub const DEFAULT_MAX_TABLE_BYTES: u64 = 64 << 20;

    /// A store for the table at `path` (nothing is touched until the first
    /// operation).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        FileStore {
            journal_path: with_suffix(&path, ".journal"),
            path,
            lock_timeout: Self::DEFAULT_LOCK_TIMEOUT,
            max_table_bytes: Self::DEFAULT_MAX_TABLE_BYTES,
            cache_enabled: true,
            shared: Arc::default(),
        }
    }

    /// How long an operation waits for the lock before failing with
    /// [`ScopeError::LockTimeout`].
    pub fn with_lock_timeout(mut self, timeout: Duration) -> Self {
        self.lock_timeout = timeout;
        self
    }

    /// The largest table file (and journal) read; a larger one is
    /// [`ScopeError::TooLarge`], refused before reading.
    pub fn with_max_table_bytes(mut self, limit: u64) -> Self {
        self.max_table_bytes = limit;
        self
    }

    /// Whether loads reuse the last table when the file's bytes are
    /// unchanged (default `true`; `false` parses every load, for
    /// measurements).
    pub fn with_cache(mut self, enabled: bool) -> Self {
        self.cache_enabled = enabled;
        if !enabled {
            *self.cache() = None;
        }
        self
    }

    /// The table file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file every operation flocks: the table file itself (existing
    /// Pods lock it too). Earlier versions used a separate `<path>.lck`.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }

    /// The journal beside the table file (`<path>.journal`).
    pub fn journal_path(&self) -> &Path {
        &self.journal_path
    }

    /// What this store and its clones have done so far: loads parsed,
    /// loads answered from the cache, durable writes. (Relaxed counters:
    /// exact once the operations counted have returned.)
    pub fn stats(&self) -> FileStoreStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        FileStoreStats {
            loads: get(&self.shared.loads),
            cached_loads: get(&self.shared.cached_loads),
            durable_writes: get(&self.shared.durable_writes),
        }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    fn cache(&self) -> MutexGuard<'_, Option<Arc<Cached>>> {
        // The slot is replaced whole, so a panic elsewhere cannot leave it
        // half-written.
        self.shared
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn remember(&self, cached: &Arc<Cached>) {
        if self.cache_enabled {
            *self.cache() = Some(Arc::clone(cached));
        }
    }

    /// Opens the data file (read-write and created when `exclusive`) and
    /// flocks it. Reopens if the path no longer names the locked inode (the
    /// file was removed or replaced while this waited). `None`: missing
    /// (shared only).
    fn open_locked(&self, exclusive: bool) -> Result<Option<File>, ScopeError> {
        for _ in 0..REOPENS {
            let Some(file) = open::open_regular(&self.path, exclusive)? else {
                return Ok(None);
            };
            open::lock(&file, &self.path, exclusive, self.lock_timeout)?;
            let locked = file.metadata().map_err(|e| ScopeError::io(&self.path, e))?;
            match std::fs::symlink_metadata(&self.path) {
                Ok(now) if now.ino() == locked.ino() && now.dev() == locked.dev() => {
                    return Ok(Some(file))
                }
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(ScopeError::io(&self.path, e))
                }
                _ => continue,
            }
        }
        Err(ScopeError::io(
            &self.path,
            io::Error::other("the file kept being replaced while waiting for its lock"),
        ))
    }

    /// The table in `bytes` (the data file's, read under the lock), from
    /// the cache when the bytes are the cached ones. If they do not parse
    /// (or are empty) and a complete journal exists, the journal's table,
    /// with its body to rewrite the data file from (`Some`). Under the
    /// exclusive lock, a leftover journal beside a parseable file is
    /// removed.
    fn table_of(&self, bytes: Vec<u8>, exclusive: bool) -> Result<(Arc<Cached>, bool), ScopeError> {
        if self.cache_enabled && !bytes.is_empty() {
            let hit = self.cache().as_ref().filter(|c| c.bytes == bytes).cloned();
            if let Some(cached) = hit {
                bump(&self.shared.cached_loads);
                if exclusive {
                    journal::remove(&self.journal_path)?;
                }
                return Ok((cached, false));
            }
        }
        let decoded = if bytes.is_empty() {
            None
        } else {
            bump(&self.shared.loads);
            Some(format::decode(&bytes))
        };
        let error = match decoded {
            Some(Ok(table)) => {
                if exclusive {
                    journal::remove(&self.journal_path)?;
                }
                let cached = Arc::new(Cached { bytes, table });
                self.remember(&cached);
                return Ok((cached, false));
            }
            Some(Err(error)) => Some(error),
            None => None,
        };
        // Recovered only if the data file is what this journal's rewrite
        // leaves when interrupted (or empty: nothing better is left); a
        // file torn by someone else since is refused, not rolled back.
        if let Some(journal) = journal::read(&self.journal_path, self.max_table_bytes) {
            if bytes.is_empty() || journal::is_tear(&bytes, &journal.new, &journal.old) {
                bump(&self.shared.loads);
                let (bytes, table) = (journal.new, journal.table);
                return Ok((Arc::new(Cached { bytes, table }), true));
            }
        }
        match error {
            Some(error) => Err(self.decode_error(error)),
            None => {
                // Empty, and no complete journal: an empty table; a
                // journal cut short while being written is garbage.
                if exclusive {
                    journal::remove(&self.journal_path)?;
                }
                Ok((
                    Arc::new(Cached {
                        bytes,
                        table: Table::new(),
                    }),
                    false,
                ))
            }
        }
    }

    fn decode_error(&self, error: DecodeError) -> ScopeError {
        match error {
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
        }
    }

    /// The current table under a shared lock (released before returning:
    /// the table is a complete snapshot). Creates nothing.
    fn read_shared(&self) -> Result<Arc<Cached>, ScopeError> {
        if !open::check_dir(self.dir(), false)? {
            return Ok(Arc::new(Cached {
                bytes: Vec::new(),
                table: Table::new(),
            }));
        }
        let Some(file) = self.open_locked(false)? else {
            return Ok(Arc::new(Cached {
                bytes: Vec::new(),
                table: Table::new(),
            }));
        };
        let bytes = open::read_capped(&file, &self.path, self.max_table_bytes)?;
        // The journal, if needed, is read under the lock too.
        let (cached, _recovered) = self.table_of(bytes, false)?;
        drop(file);
        Ok(cached)
    }

    /// Rewrites the locked data file in place with `bytes`: from offset 0,
    /// then truncated to their length, then fdatasync'ed (which covers the
    /// length).
    fn rewrite_in_place(&self, file: &File, bytes: &[u8]) -> Result<(), ScopeError> {
        file.write_all_at(bytes, 0)
            .and_then(|()| file.set_len(bytes.len() as u64))
            .and_then(|()| file.sync_data())
            .map_err(|e| ScopeError::io(&self.path, e))
    }

    /// Makes `bytes` the table in place of `old`, crash-safely: the journal
    /// first (durable), then the data file in place, then the journal
    /// removed.
    fn write(&self, file: &File, bytes: &[u8], old: &[u8]) -> Result<(), ScopeError> {
        journal::write(&self.journal_path, self.dir(), bytes, old)?;
        self.rewrite_in_place(file, bytes)?;
        journal::remove(&self.journal_path)?;
        bump(&self.shared.durable_writes);
        Ok(())
    }

    /// The table of `loaded` to change, without a copy when nobody else
    /// holds it: taken out of the cache (put back by the caller).
    fn take(&self, loaded: Arc<Cached>) -> (Vec<u8>, Table) {
        {
            let mut cache = self.cache();
            if cache.as_ref().is_some_and(|c| Arc::ptr_eq(c, &loaded)) {
                *cache = None;
            }
        }
        match Arc::try_unwrap(loaded) {
            Ok(Cached { bytes, table }) => (bytes, table),
            Err(shared) => (shared.bytes.clone(), shared.table.clone()),
        }
    }
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileStore")
            .field("path", &self.path)
            .field("journal_path", &self.journal_path)
            .field("lock_timeout", &self.lock_timeout)
            .field("max_table_bytes", &self.max_table_bytes)
            .field("cache_enabled", &self.cache_enabled)
            .field("stats", &self.stats())
            .finish()
    }
}

impl TableStore for FileStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        open::check_dir(self.dir(), true)?;
        let Some(file) = self.open_locked(true)? else {
            // Opened with create: never missing.
            return Err(ScopeError::io(
                &self.path,
                io::Error::from(io::ErrorKind::NotFound),
            ));
        };
        let bytes = open::read_capped(&file, &self.path, self.max_table_bytes)?;
        let (loaded, recovered) = self.table_of(bytes, true)?;
        if recovered {
            // Finish the interrupted write before anything else.
            self.rewrite_in_place(&file, &loaded.bytes)?;
            journal::remove(&self.journal_path)?;
            self.remember(&loaded);
        }
        let (bytes, mut table) = self.take(loaded);
        let before = table.stamp();
        let result = f(&mut table);
        if table.stamp() == before {
            self.remember(&Arc::new(Cached { bytes, table }));
            return result;
        }
        let result = result?;
        let old = bytes;
        let bytes = format::encode(&table);
        self.write(&file, &bytes, &old)?;
        self.remember(&Arc::new(Cached { bytes, table }));
        drop(file);
        Ok(result)
    }

    /// Reads the table under a shared lock (parsing it only if its bytes
    /// differ from the cached table's) and returns a copy.
    fn load(&self) -> Result<Table, ScopeError> {
        Ok(self.read_shared()?.table.clone())
    }

    /// Reads the table as [`load`](TableStore::load) does and runs `f` on
    /// it, after the lock is released: no copy.
    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        Ok(f(&self.read_shared()?.table))
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use pod_protocol::{PodName, ScopeRule};

    use super::*;
    use crate::table::PodSpec;

    fn spec(name: &str, target: &str) -> PodSpec {
        PodSpec {
            pod_name: PodName::new(name).unwrap(),
            pid: 1,
            socket: format!("/run/{name}.sock"),
            scope: vec![ScopeRule::write(target)],
        }
    }

    /// A store holding `old` on disk and a complete journal of `new`, as
    /// a writer killed after its journal was durable leaves them.
    fn interrupted() -> (tempfile::TempDir, FileStore, Vec<u8>, Vec<u8>) {
        let temp = tempfile::tempdir().unwrap();
        let store = FileStore::new(temp.path().join("scope.lock"));
        let mut table = Table::new();
        for i in 0..40 {
            let name = format!("pod{i:02}");
            table
                .register(spec(&name, &format!("/srv/{i}")), 1, name.clone())
                .unwrap();
        }
        let old = format::encode(&table);
        table
            .release(&PodName::new("pod00").unwrap(), None)
            .unwrap();
        let new = format::encode(&table);
        fs::write(store.path(), &old).unwrap();
        journal::write(store.journal_path(), temp.path(), &new, &old).unwrap();
        (temp, store, old, new)
    }

    #[test]
    fn a_torn_or_empty_data_file_is_recovered_from_a_complete_journal() {
        let (_temp, store, old, new) = interrupted();
        // Torn the way an in-place rewrite tears: a prefix of the new bytes
        // over the old, or all of them before the truncation; or empty.
        let tears = [
            [&new[..new.len() / 2], &old[new.len() / 2..]].concat(),
            [
                &new[..4096.min(new.len() - 1)],
                &old[4096.min(new.len() - 1)..],
            ]
            .concat(),
            [&new[..], &old[new.len()..]].concat(),
            Vec::new(),
        ];
        let expected = format::decode(&new).unwrap();
        for torn in tears {
            fs::write(store.path(), &torn).unwrap();
            journal::write(store.journal_path(), store.dir(), &new, &old).unwrap();
            // A reader answers from the journal and writes nothing.
            assert_eq!(store.load().unwrap(), expected);
            assert_eq!(fs::read(store.path()).unwrap(), torn);
            assert!(store.journal_path().exists());
            // A transaction finishes the write and removes the journal.
            assert_eq!(store.transact(|t| Ok(t.clone())).unwrap(), expected);
            assert_eq!(fs::read(store.path()).unwrap(), new);
            assert!(!store.journal_path().exists());
        }
    }

    #[test]
    fn a_parseable_data_file_wins_over_a_leftover_journal() {
        // The writer died before touching the data file, or an existing
        // Pod (which knows no journal) rewrote it since: the data stands.
        let (_temp, store, old, _new) = interrupted();
        let expected = format::decode(&old).unwrap();
        assert_eq!(store.load().unwrap(), expected);
        assert!(store.journal_path().exists(), "readers remove nothing");
        assert_eq!(store.transact(|t| Ok(t.clone())).unwrap(), expected);
        assert!(!store.journal_path().exists());
        assert_eq!(fs::read(store.path()).unwrap(), old);
    }

    #[test]
    fn a_file_torn_by_someone_else_since_is_not_rolled_back_to_the_journal() {
        // This journal's writer died before touching the data file; an
        // existing Pod then rewrote it (it knows no journal) and died in
        // the middle: its torn bytes are no tear of this journal's write.
        let (_temp, store, _old, _new) = interrupted();
        let theirs = b"{\n  \"allocations\": [\n    {\n      \"pod_name\": \"x";
        fs::write(store.path(), theirs).unwrap();
        assert!(matches!(store.load(), Err(ScopeError::Corrupt { .. })));
        assert!(matches!(
            store.transact(|_| Ok(())),
            Err(ScopeError::Corrupt { .. })
        ));
        assert_eq!(fs::read(store.path()).unwrap(), theirs);
    }

    #[test]
    fn an_incomplete_journal_recovers_nothing() {
        let (_temp, store, _old, _new) = interrupted();
        let journal = fs::read(store.journal_path()).unwrap();
        fs::write(store.journal_path(), &journal[..journal.len() - 1]).unwrap();
        fs::write(store.path(), b"{\"version\":1,\"alloc").unwrap();
        assert!(matches!(store.load(), Err(ScopeError::Corrupt { .. })));
        assert!(matches!(
            store.transact(|_| Ok(())),
            Err(ScopeError::Corrupt { .. })
        ));
        // Empty data and a journal cut short: the writer died writing the
        // journal of the first table; the table is empty.
        fs::write(store.path(), b"").unwrap();
        assert!(store.transact(|t| Ok(t.clone())).unwrap().is_empty());
        assert!(!store.journal_path().exists());
    }

    #[test]
    fn a_symlink_at_the_journal_name_is_not_followed_even_to_a_valid_journal() {
        let (temp, store, _old, _new) = interrupted();
        let elsewhere = temp.path().join("elsewhere");
        fs::rename(store.journal_path(), &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, store.journal_path()).unwrap();
        fs::write(store.path(), b"").unwrap();
        // Not read as a journal: the empty file stands.
        assert!(store.load().unwrap().is_empty());
        assert!(store.transact(|t| Ok(t.clone())).unwrap().is_empty());
        assert!(elsewhere.exists(), "the link was removed, not its target");
    }
}
