//! [`MemoryRegistry`]: a [`Registry`] without I/O, for tests of the layers
//! above, with injectable write failures.

use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::limits::{file_bytes_after, EMPTY_FILE_BYTES};
use crate::{Mutation, Outcome, Registry, RegistryError, RegistryLimits, RegistryState};

/// An in-memory [`Registry`]: every mutation is "durable" at once.
///
/// It follows [`crate::FileRegistry`]'s failure policy, with a simulated
/// write in place of the files: a mutation that changes the state, or any
/// mutation while the state is dirty, performs one write; a failed write
/// (see [`MemoryRegistry::fail_next_writes`]) leaves the mutation applied,
/// marks the state dirty and returns [`RegistryError::Injected`]; the next
/// write (of any later mutation) clears it. A mutation that changes nothing
/// while the state is clean performs no write.
///
/// Clones share the same registry.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// use pod_registry::testing::MemoryRegistry;
/// use pod_registry::{Outcome, PodName, Registry, RegistryError};
///
/// let registry = MemoryRegistry::new();
/// registry.fail_next_writes(1);
/// let name = PodName::new("w1").unwrap();
/// let failed = registry.depart(name.clone(), None).await;
/// assert!(matches!(failed, Err(RegistryError::Injected)));
/// // Memory is ahead of the (simulated) disk: the departure is applied.
/// assert!(registry.is_departed("w1", None));
/// assert_eq!(registry.writes(), 0);
/// // The next mutation writes it, even one that changes nothing.
/// let again = registry.depart(name, None).await.unwrap();
/// assert_eq!(again, Outcome::Removed { records: vec![], first_departure: false });
/// assert_eq!(registry.writes(), 1);
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    state: RegistryState,
    dirty: bool,
    fail_next: usize,
    writes: u64,
    limits: RegistryLimits,
    /// The size the records file would have, for the file cap.
    file_bytes: u64,
    refused: u64,
}

impl Default for Inner {
    fn default() -> Self {
        Inner {
            state: RegistryState::default(),
            dirty: false,
            fail_next: 0,
            writes: 0,
            limits: RegistryLimits::default(),
            file_bytes: EMPTY_FILE_BYTES,
            refused: 0,
        }
    }
}

impl MemoryRegistry {
    /// An empty registry remembering
    /// [`crate::DEFAULT_DEPARTED_CAPACITY`] departures.
    pub fn new() -> Self {
        MemoryRegistry::default()
    }

    /// An empty registry remembering at most `departed_capacity`
    /// departures.
    pub fn with_capacity(departed_capacity: usize) -> Self {
        MemoryRegistry {
            inner: Arc::new(Mutex::new(Inner {
                state: RegistryState::new(departed_capacity),
                ..Inner::default()
            })),
        }
    }

    /// Applies `limits` from now on, as [`crate::FileRegistry`] applies
    /// [`crate::RegistryOptions::limits`]: an add over a cap is refused
    /// with its typed error, changes nothing and writes nothing, and is
    /// counted in [`MemoryRegistry::refused_mutations`]. The file cap is
    /// checked against the size the records file would have.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// use pod_registry::testing::MemoryRegistry;
    /// use pod_registry::{PodName, Record, Registry, RegistryError, RegistryLimits};
    ///
    /// let registry = MemoryRegistry::new().with_limits(RegistryLimits::new().max_records(1));
    /// let record = |name: &str| Record {
    ///     pod_name: PodName::new(name).unwrap(),
    ///     socket_path: format!("/run/pods/{name}.sock"),
    ///     scope_delegated: vec![],
    ///     callback_address: String::new(),
    ///     incarnation: None,
    /// };
    /// registry.add(record("w1")).await.unwrap();
    /// let full = registry.add(record("w2")).await;
    /// assert!(matches!(full, Err(RegistryError::Full { limit: 1, .. })));
    /// assert_eq!(registry.list().len(), 1);
    /// assert_eq!(registry.refused_mutations(), 1);
    /// # });
    /// ```
    pub fn with_limits(self, limits: RegistryLimits) -> Self {
        let mut inner = self.lock();
        inner.limits = limits;
        // Tombstones that no longer fit are dropped as a reopen would.
        inner.state.cap_departed_bytes(limits.file_bytes());
        drop(inner);
        self
    }

    /// How many mutations were refused for exceeding a cap.
    pub fn refused_mutations(&self) -> u64 {
        self.lock().refused
    }

    /// Makes the next `n` simulated writes fail with
    /// [`RegistryError::Injected`] (replacing any count still pending).
    pub fn fail_next_writes(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// The number of successful simulated writes so far.
    pub fn writes(&self) -> u64 {
        self.lock().writes
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state is never left half-updated by a panic (applying a
        // mutation does not panic), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply_now(&self, mutation: &Mutation) -> Result<Outcome, RegistryError> {
        let mut inner = self.lock();
        let added = match inner.limits.admit(&inner.state, mutation, inner.file_bytes) {
            Ok(added) => added,
            Err(refused) => {
                inner.refused += 1;
                return Err(refused);
            }
        };
        let (outcome, changed) = inner.state.apply_tracked(mutation);
        inner.file_bytes = file_bytes_after(inner.file_bytes, added, &outcome);
        if !changed.any() && !inner.dirty {
            return Ok(outcome);
        }
        if inner.fail_next > 0 {
            inner.fail_next -= 1;
            inner.dirty = true;
            return Err(RegistryError::Injected);
        }
        inner.dirty = false;
        inner.writes += 1;
        Ok(outcome)
    }
}

impl Registry for MemoryRegistry {
    fn apply(
        &self,
        mutation: Mutation,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        ready(self.apply_now(&mutation))
    }

    fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R {
        f(&self.lock().state)
    }
}
