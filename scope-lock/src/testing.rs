//! In-memory implementations of the seams, for tests of this crate and of
//! the crates above it: [`MemoryStore`] (with injected write failures) and
//! [`FakeLiveness`] (with injected deaths and pid reuse).
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

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::ScopeError;
use crate::liveness::Liveness;
use crate::store::TableStore;
use crate::table::Table;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // State is only replaced after a closure returns, so a panic inside one
    // leaves it consistent.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[derive(Debug, Default)]
struct MemoryState {
    table: Table,
    fail_writes: usize,
    writes: u64,
}

/// A [`TableStore`] in memory. Clones share the table.
///
/// Transactions are serialized by a mutex and run on a copy of the table, so
/// a closure that fails (or a write made to fail with
/// [`fail_next_writes`](Self::fail_next_writes)) leaves the table as it was.
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

impl TableStore for MemoryStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        let mut state = lock(&self.state);
        let mut table = state.table.clone();
        let result = f(&mut table)?;
        if table.stamp() != state.table.stamp() {
            if state.fail_writes > 0 {
                state.fail_writes -= 1;
                return Err(ScopeError::io(
                    PathBuf::from("<memory>"),
                    std::io::Error::other("injected write failure"),
                ));
            }
            state.table = table;
            state.writes += 1;
        }
        Ok(result)
    }

    fn may_block(&self) -> bool {
        false
    }
}

#[derive(Debug, Default)]
struct FakeState {
    processes: HashMap<u32, u64>,
    last_start_time: u64,
}

impl FakeState {
    fn fresh_start(&mut self) -> u64 {
        self.last_start_time += 1;
        self.last_start_time
    }
}

/// A [`Liveness`] whose processes are whatever the test says. Clones share
/// the state. Every pid is dead until [`spawn`](Self::spawn)ed or
/// [`set`](Self::set).
#[derive(Debug, Clone, Default)]
pub struct FakeLiveness {
    state: Arc<Mutex<FakeState>>,
}

impl FakeLiveness {
    /// No process is alive.
    pub fn new() -> Self {
        FakeLiveness::default()
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

impl Liveness for FakeLiveness {
    fn start_time(&self, pid: u32) -> Option<u64> {
        lock(&self.state).processes.get(&pid).copied()
    }
}
