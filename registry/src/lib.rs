//! A parent Pod's durable registry of the Pods it spawned.
//!
//! This crate owns the registry: the [`Record`]s of spawned Pods, the
//! bounded departed set of [`Tombstone`]s that keeps a late event from
//! resurrecting a Pod that already shut down, and their persistence
//! ([`FileRegistry`]: `<state dir>/spawned_pods.json` and
//! `departed_pods.json`, written atomically and durably, with group
//! commit). The [`Registry`] trait is the seam the layers above are
//! generic over; [`testing::MemoryRegistry`] implements it without I/O.
//!
//! It does not decide *when* to mutate the registry (what an event means is
//! `pod-events`' job), does not allocate or release scope (`pod-scope-lock`)
//! and does not talk to Pods (`pod-transport`). Of the workspace's crates
//! it depends only on `pod-protocol`, for [`PodName`] and [`ScopeRule`].
//!
//! ```
//! use pod_registry::{FileRegistry, Outcome, PodName, Record, Registry};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let registry = FileRegistry::open(dir.path()).unwrap(); // blocking
//! let record = Record {
//!     pod_name: PodName::new("w1").unwrap(),
//!     socket_path: "/run/pods/w1.sock".into(),
//!     scope_delegated: vec![],
//!     callback_address: String::new(),
//!     incarnation: Some("i1".into()),
//! };
//! tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//!     assert_eq!(registry.add(record.clone()).await.unwrap(), Outcome::Added); // durable now
//!     registry.depart(record.pod_name.clone(), None).await.unwrap();
//!     assert_eq!(registry.add(record).await.unwrap(), Outcome::Departed);
//! });
//! ```
//!
//! # Semantics
//!
//! Records are keyed by `(pod_name, incarnation)`. Two incarnations match
//! when they are equal or either is `None` ([`incarnations_match`]; legacy
//! Pods send none). [`Mutation::Add`] never overwrites and is refused when a
//! tombstone matches; [`Mutation::Depart`] removes the matching records and
//! records the tombstone. So the final records are the adds that no
//! departure matches, whatever the delivery order: see [`RegistryState`].
//!
//! # Durability and failure policy
//!
//! A mutation is applied to memory when [`Registry::apply`] is called, and
//! the returned future resolves once a durable write containing it has
//! completed. [`FileRegistry`] coalesces all mutations pending since its
//! last write into one write (group commit) on a dedicated thread.
//!
//! When a write fails, memory stays ahead of disk: the mutations stay
//! applied, the state is marked dirty, every waiter of that write gets the
//! error, and the next write (of any later mutation, or
//! [`FileRegistry::flush`]) writes them again. An error therefore means
//! "applied, not yet known to be durable", never "not applied".
//!
//! # Files
//!
//! `spawned_pods.json` is a JSON array of [`Record`]s, sorted by name then
//! incarnation, one per line; a name may appear more than once, with
//! different incarnations. `departed_pods.json` is a JSON array of
//! [`Tombstone`]s, oldest first. Both are mode 0600 in a private directory
//! and replaced atomically (a new temporary file with a random name,
//! fsync, rename, fsync of the directory). A file that is not a JSON array
//! is reported as [`RegistryError::Corrupt`] and never overwritten; an
//! element of the records file that is not a valid record is kept verbatim
//! and reported ([`InvalidRecord`]), never acted on.
//!
//! One [`FileRegistry`] owns a state directory at a time (an exclusive lock
//! on [`LOCK_FILE`]; a second is refused with [`RegistryError::Locked`]);
//! [`RegistrySnapshot`] reads one without owning it. Reads are capped and
//! only from regular files, and adds are capped ([`RegistryLimits`]). The
//! crate README has the details.

mod error;
mod file;
mod fsio;
mod keys;
mod limits;
mod load;
mod lock;
mod options;
mod record;
mod state;
pub mod testing;

use std::future::Future;
use std::sync::Arc;

pub use error::RegistryError;
pub use file::{FileRegistry, DEPARTED_FILE, RECORDS_FILE};
pub use limits::RegistryLimits;
pub use load::{InvalidRecord, RegistrySnapshot};
pub use lock::LOCK_FILE;
pub use options::{FaultInjector, RegistryOptions};
pub use pod_protocol::{PodName, ScopeRule};
pub use record::{incarnations_match, Record, Tombstone};
pub use state::{Mutation, Outcome, RegistryState, DEFAULT_DEPARTED_CAPACITY};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// A parent's registry of spawned Pods: the seam `pod-events` is generic
/// over.
///
/// Required methods: [`Registry::apply`] and [`Registry::read`]; the others
/// are provided on top of them.
pub trait Registry: Send + Sync + 'static {
    /// Applies `mutation` to memory at once (in call order), and resolves
    /// once a durable write containing it has completed, or with the error
    /// of that write (the mutation then stays applied; see the crate
    /// documentation's failure policy). Dropping the future does not undo
    /// the mutation: it is still written.
    fn apply(
        &self,
        mutation: Mutation,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send;

    /// Runs `f` on the current in-memory state. Never performs I/O; do not
    /// call the registry from `f`.
    fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R;

    /// Applies [`Mutation::Add`].
    fn add(&self, record: Record) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        self.apply(Mutation::Add(record))
    }

    /// Applies [`Mutation::Remove`].
    fn remove(
        &self,
        pod_name: PodName,
        incarnation: Option<String>,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        self.apply(Mutation::Remove {
            pod_name,
            incarnation,
        })
    }

    /// Applies [`Mutation::Depart`].
    fn depart(
        &self,
        pod_name: PodName,
        incarnation: Option<String>,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        self.apply(Mutation::Depart {
            pod_name,
            incarnation,
        })
    }

    /// Applies [`Mutation::Redirect`].
    fn redirect(
        &self,
        pod_name: PodName,
        incarnation: Option<String>,
        callback_address: String,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        self.apply(Mutation::Redirect {
            pod_name,
            incarnation,
            callback_address,
        })
    }

    /// Every record, sorted by `(pod_name, incarnation)`.
    fn list(&self) -> Vec<Record> {
        self.read(|state| state.records().cloned().collect())
    }

    /// The first record named `name` whose incarnation matches.
    fn get(&self, name: &str, incarnation: Option<&str>) -> Option<Record> {
        self.read(|state| state.get(name, incarnation).cloned())
    }

    /// Whether a tombstone of the departed set matches `(name,
    /// incarnation)`.
    fn is_departed(&self, name: &str, incarnation: Option<&str>) -> bool {
        self.read(|state| state.is_departed(name, incarnation))
    }
}

impl<T: Registry> Registry for Arc<T> {
    fn apply(
        &self,
        mutation: Mutation,
    ) -> impl Future<Output = Result<Outcome, RegistryError>> + Send {
        (**self).apply(mutation)
    }

    fn read<R>(&self, f: impl FnOnce(&RegistryState) -> R) -> R {
        (**self).read(f)
    }
}
