//! Transactional storage of the whole table: the [`TableStore`] seam. The
//! file implementation is [`FileStore`](crate::FileStore).

use std::sync::Arc;

use crate::error::ScopeError;
use crate::table::Table;

/// Transactional storage of the whole table.
///
/// Required method: [`transact`](Self::transact). Provided:
/// [`load`](Self::load) (a copy of the table) and [`read`](Self::read)
/// (a look at it without a copy, where the store can lend one).
///
/// A transaction sees the whole table and either persists all of its
/// changes or none, and no two transactions on the same table (in any
/// process sharing the store) interleave. Implementations: [`FileStore`](crate::FileStore)
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
    /// copying the table where the store can lend it:
    /// [`FileStore`](crate::FileStore) reads the file under a shared lock
    /// (parsing it only if its bytes changed since the table it caches)
    /// and hands `f` that table; [`MemoryStore`](crate::testing::MemoryStore) lends its
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
