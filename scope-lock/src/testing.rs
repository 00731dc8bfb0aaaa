//! In-memory implementations of the seams, for tests of this crate and of
//! the crates above it: [`MemoryStore`] (with injected write failures) and
//! [`FakeLiveness`] (with injected deaths and pid reuse); with the `etcd`
//! feature, real etcd members to test against ([`etcd::EtcdCluster`]).
//!
//! ```
//! use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
//! use pod_scope_lock::{PodName, PodSpec, ScopeRule, ScopeTable};
//!
//! let liveness = FakeLiveness::new();
//! let table = ScopeTable::new(MemoryStore::new(), liveness.clone());
//! liveness.spawn(10);
//! let spec = PodSpec {
//!     pod_name: PodName::new("w1").unwrap(),
//!     pid: 10,
//!     socket: "/run/pods/w1.sock".into(),
//!     scope: vec![ScopeRule::write("/srv/a")],
//! };
//! table.register(spec).unwrap();
//!
//! liveness.reuse(10); // pid 10 now belongs to another process
//! assert_eq!(table.reclaim_stale().unwrap().len(), 1);
//! assert!(table.list().unwrap().is_empty());
//! ```
//!
//! # How `MemoryStore` runs a transaction
//!
//! `MemoryStore` copies nothing it does not return. A transaction runs on the
//! table itself while the table records an undo journal at its mutation
//! points (an insertion, a removal, a reparenting); a closure that returns
//! `Err`, an injected write failure or a panic undoes those changes newest
//! first, so a transaction costs what its closure does. A closure that
//! replaces the table whole (`*table = other`) is rolled back too: the
//! dropped original leaves its content and journal with the store. (One that
//! moves the original out of the transaction, keeps it and then fails cannot
//! be rolled back: the store panics.) `read` lends the table under the
//! store's mutex, so `find` is a binary search and a copy of one allocation.
//! A proptest runs random transactions (with refusals, dead pods, whole-table
//! replacements, closures that change the table and then fail, injected
//! write failures) against it and against the clone-per-transaction store it
//! replaced, and compares answers, tables, write counts and change detection
//! after every step.
//!
//! # Performance
//!
//! In memory, `cargo run --release -p pod-scope-lock --example memory_ops`
//! times `ScopeTable` on a `MemoryStore` (a free probe; one `release` plus
//! one `delegate` of the same pod counts as two operations). Shared 2-core
//! machine, operations per second, before (every transaction and every
//! lookup cloned the table) and after (journal, lent reads):
//!
//! | allocations | operation | before | after |
//! | --- | --- | --- | --- |
//! | 200 | release + delegate | 22,700 | 466,000 |
//! | 200 | `find` | 12,600 | 6,000,000 |
//! | 200 | `owner_of` | 11,900 | 641,000 |
//! | 200 | failed transaction (release, then `Err`) | 23,900 | 1,250,000 |
//! | 10,000 | release + delegate | 419 | 16,700 |
//! | 10,000 | `find` | 223 | 3,900,000 |
//! | 10,000 | `owner_of` | 209 | 20,400 |
//! | 10,000 | failed transaction | 432 | 33,000 |
//!
//! What is left is linear, never quadratic: `release` shifts the
//! allocations after the removed one by one slot and looks at every
//! `delegated_from` once to reparent the children (about a third of a
//! release at 10,000 allocations; an index of children would have to be
//! kept exact through every change, load and rollback, for a pass that
//! costs about as much as the shift), `delegate` scans every write rule for
//! conflicts and shifts the table to insert, and `owner_of` scans every
//! write rule. With it, pod-bench's item 3 (pod-events' receive path in
//! memory, `--quick`) went from 56,000 to 786,000 events/s, against 843,000
//! with a table holding only the root.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ScopeError;
use crate::liveness::Liveness;
use crate::store::TableStore;
use crate::table::{Journal, Orphan, Table};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A transaction whose closure panics is rolled back while unwinding
    // (see `Transaction`), so a poisoned state is still consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct MemoryState {
    table: Table,
    fail_writes: usize,
    writes: u64,
    /// Where the journaled table leaves its content if a closure drops it
    /// (replaces the table whole); see [`Journal`].
    orphans: Arc<Mutex<Option<Orphan>>>,
}

/// A [`TableStore`] in memory. Clones share the table.
///
/// Transactions are serialized by a mutex and run on the table itself
/// while it records an undo journal of every change (an insertion, a
/// removal, a reparenting: what it takes to put it back, in
/// O(changes)). A closure that returns `Err`, a write made to fail with
/// [`fail_next_writes`](Self::fail_next_writes), or a closure that panics
/// leaves the table as it was: its changes are undone, newest first. A
/// closure that replaces the table whole (`*table = other`) is rolled back
/// too: the replaced table, dropped, leaves its content and journal behind.
/// (A closure that moves the original table out of the transaction and
/// keeps it past its end, then fails, cannot be rolled back: the store
/// panics rather than keep the closure's table.)
///
/// So a transaction costs what its closure does, not a copy of the table,
/// and [`read`](TableStore::read) lends the table under the mutex: a
/// lookup through [`ScopeTable`](crate::ScopeTable) costs a binary search
/// and the copy of what it returns.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    state: Arc<Mutex<MemoryState>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// A store holding `table`.
    pub fn with_table(table: Table) -> Self {
        let store = MemoryStore::new();
        lock(&store.state).table = table;
        store
    }

    /// Makes the next `n` transactions that change the table fail with
    /// [`ScopeError::Io`] (nothing persisted) instead of storing it.
    pub fn fail_next_writes(&self, n: usize) {
        lock(&self.state).fail_writes = n;
    }

    /// How many transactions have stored a changed table.
    pub fn writes(&self) -> u64 {
        lock(&self.state).writes
    }
}

/// One transaction in progress on the store's table: rolls it back when
/// dropped without [`commit`](Self::commit) (a closure that panicked).
struct Transaction<'a> {
    table: &'a mut Table,
    orphans: &'a Mutex<Option<Orphan>>,
    token: u64,
    /// The table's stamp before the transaction.
    before: u64,
    done: bool,
}

impl Transaction<'_> {
    /// Keeps the changes.
    fn commit(mut self) {
        self.done = true;
        drop(self.table.take_journal(self.token));
        // The table the closure replaced, if it did.
        drop(lock(self.orphans).take());
    }

    /// Undoes the changes: through the journal, or, if the closure
    /// replaced the table, from what the dropped original left behind.
    fn roll_back(&mut self) {
        self.done = true;
        if let Some(journal) = self.table.take_journal(self.token) {
            self.table.undo(journal);
            self.table.restore_stamp(self.before);
            return;
        }
        let orphan = lock(self.orphans).take();
        match orphan.filter(|o| o.token == self.token) {
            Some(orphan) => *self.table = Table::from_orphan(orphan, self.before),
            None if std::thread::panicking() => {}
            None => panic!(
                "MemoryStore: cannot roll back a transaction whose closure moved the table out and kept it"
            ),
        }
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.roll_back();
        }
    }
}

impl TableStore for MemoryStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        let mut guard = lock(&self.state);
        let state = &mut *guard;
        let journal = Journal::new(Arc::clone(&state.orphans));
        let token = journal.token();
        let before = state.table.stamp();
        state.table.begin_journal(journal);
        let mut transaction = Transaction {
            table: &mut state.table,
            orphans: &state.orphans,
            token,
            before,
            done: false,
        };
        let result = match f(transaction.table) {
            Ok(result) => result,
            Err(error) => {
                transaction.roll_back();
                return Err(error);
            }
        };
        if transaction.table.stamp() != before {
            if state.fail_writes > 0 {
                state.fail_writes -= 1;
                transaction.roll_back();
                return Err(ScopeError::io(
                    PathBuf::from("<memory>"),
                    std::io::Error::other("injected write failure"),
                ));
            }
            state.writes += 1;
        }
        transaction.commit();
        Ok(result)
    }

    /// A copy of the table.
    fn load(&self) -> Result<Table, ScopeError> {
        self.read(Table::clone)
    }

    /// Lends the table to `f` under the store's mutex: no copy.
    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        Ok(f(&lock(&self.state).table))
    }

    fn may_block(&self) -> bool {
        false
    }
}

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(test)]
mod tests;

#[derive(Debug, Default)]
struct FakeState {
    processes: HashMap<u32, u64>,
    last_start_time: u64,
    now_unix_ms: u64,
}

impl FakeState {
    fn fresh_start(&mut self) -> u64 {
        self.last_start_time += 1;
        self.last_start_time
    }
}

/// A [`Liveness`] whose processes are whatever the test says. Clones share
/// the state. Every pid is dead until [`spawn`](Self::spawn)ed or
/// [`set`](Self::set). Its clock ([`Liveness::now_unix_ms`]) stands still at
/// 1,000,000 ms until [`advance_ms`](Self::advance_ms).
#[derive(Debug, Clone)]
pub struct FakeLiveness {
    state: Arc<Mutex<FakeState>>,
}

impl FakeLiveness {
    /// No process is alive.
    pub fn new() -> Self {
        FakeLiveness {
            state: Arc::new(Mutex::new(FakeState {
                now_unix_ms: 1_000_000,
                ..FakeState::default()
            })),
        }
    }

    /// Moves the clock forward by `ms`.
    pub fn advance_ms(&self, ms: u64) {
        let mut state = lock(&self.state);
        state.now_unix_ms = state.now_unix_ms.saturating_add(ms);
    }

    /// Makes `pid` alive with a start time no process had before; returns
    /// it.
    pub fn spawn(&self, pid: u32) -> u64 {
        let mut state = lock(&self.state);
        let start = state.fresh_start();
        state.processes.insert(pid, start);
        start
    }

    /// Makes `pid` dead.
    pub fn kill(&self, pid: u32) {
        lock(&self.state).processes.remove(&pid);
    }

    /// Makes `pid` alive as a new process: a different start time from any
    /// it had before. Returns it.
    pub fn reuse(&self, pid: u32) -> u64 {
        self.spawn(pid)
    }

    /// Sets `pid`'s start time (`None`: dead).
    pub fn set(&self, pid: u32, start_time: Option<u64>) {
        let mut state = lock(&self.state);
        match start_time {
            Some(start) => {
                state.processes.insert(pid, start);
                state.last_start_time = state.last_start_time.max(start);
            }
            None => {
                state.processes.remove(&pid);
            }
        }
    }
}

impl Default for FakeLiveness {
    fn default() -> Self {
        FakeLiveness::new()
    }
}

impl Liveness for FakeLiveness {
    fn start_time(&self, pid: u32) -> Option<u64> {
        lock(&self.state).processes.get(&pid).copied()
    }

    fn now_unix_ms(&self) -> u64 {
        lock(&self.state).now_unix_ms
    }
}
