//! The machine-wide table of Pod filesystem scope allocations.
//!
//! This crate owns the answer to "which pod may write where": the table of
//! allocations (pod name, process, scope rules, the pod it was delegated
//! from, incarnation id), the rules that keep write scope exclusive
//! ([`Table::register`], [`Table::delegate`], [`Table::release`],
//! [`Table::reclaim`], and the spawn handshake's
//! [`Table::reserve_reclaiming`] and [`Table::adopt`]), their storage as one
//! flock-guarded file shared by every process on the machine, existing Pods
//! included ([`FileStore`]), and the probe that tells a
//! live pod from a dead one or from a later process reusing its pid
//! ([`ProcLiveness`]). [`ScopeTable`] ties them together.
//!
//! It does not deliver events (that is `pod-transport`), keep a parent's
//! list of spawned pods (`pod-registry`), or decide when an event should
//! release scope (`pod-events`); it depends on none of them, only on
//! `pod-protocol` for names and rules.
//!
//! # Rules
//!
//! A recursive rule covers its target and everything below it; a
//! non-recursive rule covers its target and its direct children (see
//! [`coverage`]). The table keeps this invariant, whatever processes race or
//! crash: write rules of two pods overlap only if one pod descends from the
//! other, every rule of a delegated pod is covered by a rule of its parent,
//! and every parent exists ([`Table::check_invariant`]). So a pod's
//! *effective* write scope, its write rules minus those its children hold,
//! never overlaps another pod's.
//!
//! A pod whose process is gone never blocks a request:
//! [`ScopeTable::register`] and [`ScopeTable::delegate`] probe the pods that
//! would refuse the request and reclaim the dead ones, which gives the
//! answer a full [`ScopeTable::reclaim_stale`] first would give (see the
//! README); the full sweep stays a separate, periodic operation.
//!
//! ```
//! use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
//! use pod_scope_lock::{PodName, PodSpec, ScopeError, ScopeRule, ScopeTable};
//!
//! let liveness = FakeLiveness::new();
//! let table = ScopeTable::new(MemoryStore::new(), liveness.clone());
//! let spec = |name: &str, pid, scope| PodSpec {
//!     pod_name: PodName::new(name).unwrap(),
//!     pid,
//!     socket: format!("/run/pods/{name}.sock"),
//!     scope,
//! };
//! liveness.spawn(100);
//! liveness.spawn(101);
//! liveness.spawn(102);
//!
//! let root = table.register(spec("root", 100, vec![ScopeRule::write("/srv/repo")])).unwrap();
//! let child = table
//!     .delegate(&root.pod_name, spec("child", 101, vec![ScopeRule::write("/srv/repo/docs")]))
//!     .unwrap();
//! assert_eq!(table.owner_of("/srv/repo/docs/a.md").unwrap().unwrap().pod_name, child.pod_name);
//! assert_eq!(table.owner_of("/srv/repo/src/a.rs").unwrap().unwrap().pod_name, root.pod_name);
//!
//! // A stranger cannot take part of the repository.
//! let err = table.register(spec("other", 102, vec![ScopeRule::write("/srv/repo/src")])).unwrap_err();
//! assert!(matches!(err, ScopeError::WriteConflict { ref competitor, .. } if competitor.as_str() == "root"));
//!
//! // When the child's process dies, its scope returns to the root.
//! liveness.kill(101);
//! table.reclaim_stale().unwrap();
//! assert_eq!(table.owner_of("/srv/repo/docs/a.md").unwrap().unwrap().pod_name, root.pod_name);
//! ```
//!
//! Production code uses [`FileStore`] and [`ProcLiveness`]:
//! `ScopeTable::with_proc_liveness(FileStore::new(path))`. All methods
//! block (flock, fsync); async callers run them on a blocking thread.

pub mod coverage;
mod error;
#[cfg(feature = "etcd")]
pub mod etcd;
mod file_store;
mod format;
mod liveness;
mod store;
mod table;
pub mod testing;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use pod_protocol::{Permission, PodName, ScopeRule};

pub use error::ScopeError;
#[cfg(feature = "etcd")]
pub use etcd::{
    EtcdAddress, EtcdError, EtcdOptions, EtcdStore, HolderGone, LeaseHolder, LeaseLiveness,
};
pub use file_store::{FileStore, FileStoreStats};
pub use liveness::{Liveness, ProcLiveness};
pub use store::TableStore;
pub use table::{Allocation, EffectiveScope, Exclusion, PodSpec, Restarted, Table};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// The scope table as its users see it: a [`TableStore`] plus a
/// [`Liveness`] probe.
///
/// Clones share the store and probe. Every method blocks; async callers use
/// `spawn_blocking` or a dedicated thread. Each changing operation is one
/// transaction of the store, so concurrent callers in any process see each
/// other's changes in full or not at all.
pub struct ScopeTable<S: TableStore, L: Liveness = ProcLiveness> {
    inner: Arc<Inner<S, L>>,
}

struct Inner<S, L> {
    store: S,
    liveness: L,
    /// How long a reservation waits for its child (ms); see
    /// [`ScopeTable::with_reservation_deadline`].
    reservation_deadline_ms: AtomicU64,
}

impl<S: TableStore, L: Liveness> Clone for ScopeTable<S, L> {
    fn clone(&self) -> Self {
        ScopeTable {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: TableStore + fmt::Debug, L: Liveness + fmt::Debug> fmt::Debug for ScopeTable<S, L> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScopeTable")
            .field("store", &self.inner.store)
            .field("liveness", &self.inner.liveness)
            .finish()
    }
}

impl<S: TableStore> ScopeTable<S> {
    /// A table on `store` that probes processes through `/proc`.
    pub fn with_proc_liveness(store: S) -> Self {
        ScopeTable::new(store, ProcLiveness)
    }
}

impl<S: TableStore, L: Liveness> ScopeTable<S, L> {
    /// A table on `store`, probing processes with `liveness`.
    pub fn new(store: S, liveness: L) -> Self {
        ScopeTable {
            inner: Arc::new(Inner {
                store,
                liveness,
                reservation_deadline_ms: AtomicU64::new(
                    Self::DEFAULT_RESERVATION_DEADLINE.as_millis() as u64,
                ),
            }),
        }
    }

    /// Default of
    /// [`with_reservation_deadline`](Self::with_reservation_deadline): 30 s.
    pub const DEFAULT_RESERVATION_DEADLINE: Duration = Duration::from_secs(30);

    /// How long a [`reserve`](Self::reserve)d allocation waits for its
    /// child to [`adopt`](Self::adopt) it before it is stale (for this
    /// table and its clones).
    pub fn with_reservation_deadline(self, deadline: Duration) -> Self {
        let ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .reservation_deadline_ms
            .store(ms, Ordering::Relaxed);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// The liveness probe.
    pub fn liveness(&self) -> &L {
        &self.inner.liveness
    }

    /// Registers a top-level pod, as in [`Table::register`]; mints and
    /// returns its incarnation inside the [`Allocation`].
    ///
    /// The pod's start time is read through the liveness probe: a pid with
    /// no live process is [`ScopeError::DeadProcess`]. Refused with
    /// [`ScopeError::DuplicateName`] or [`ScopeError::WriteConflict`] (naming
    /// a live pod whose write scope overlaps).
    ///
    /// Dead pods never block it: in the same transaction, the pods that
    /// would refuse the request (the holder of the name, the holders of
    /// overlapping write scope) are probed, and the dead ones are reclaimed
    /// ([`Table::register_reclaiming`]), kept even if the request is then
    /// refused by a live pod. The answer is the one a full
    /// [`reclaim_stale`](Self::reclaim_stale) first would give; dead pods
    /// that do not stand in the way are left for the next
    /// [`reclaim_stale`](Self::reclaim_stale).
    pub fn register(&self, spec: PodSpec) -> Result<Allocation, ScopeError> {
        spec.validate()?;
        let start_time = self.start_time(spec.pid)?;
        let incarnation = mint_incarnation()?;
        self.inner.store.transact(|table| {
            Ok(table.register_reclaiming(spec, start_time, incarnation, |a| self.is_live(a)))
        })?
    }

    /// Delegates scope from the pod `from` to a new pod, as in
    /// [`Table::delegate`]; mints and returns its incarnation inside the
    /// [`Allocation`].
    ///
    /// Dead pods never block it: in the same transaction, the pods that
    /// decide the request (the spawner, the holder of the name, the holders
    /// of overlapping write scope outside the spawner's lineage) are probed,
    /// and the dead ones are reclaimed ([`Table::delegate_reclaiming`]),
    /// kept even if the request is then refused. A dead spawner is reclaimed:
    /// [`ScopeError::UnknownPod`]. The answer is the one a full
    /// [`reclaim_stale`](Self::reclaim_stale) first would give; dead pods
    /// that do not stand in the way are left for the next
    /// [`reclaim_stale`](Self::reclaim_stale).
    pub fn delegate(&self, from: &PodName, spec: PodSpec) -> Result<Allocation, ScopeError> {
        spec.validate()?;
        let start_time = self.start_time(spec.pid)?;
        let incarnation = mint_incarnation()?;
        self.inner.store.transact(|table| {
            Ok(table.delegate_reclaiming(from, spec, start_time, incarnation, |a| self.is_live(a)))
        })?
    }

    /// Allocates a restarted pod (top-level when `from` is `None`, else
    /// delegated from `from`) and takes back its children that the table
    /// moved away while it was gone, in one transaction: see
    /// [`Table::restart_reclaiming`] for which are taken and the rule for
    /// a name taken meanwhile. `former_children` are the names and
    /// incarnations its registry holds. The pod then tells each child
    /// taken back where to report, with a reparent notice whose `seq` is
    /// the child's new [`reparented`](Allocation::reparented) count.
    pub fn restart(
        &self,
        from: Option<&PodName>,
        spec: PodSpec,
        former_children: &[(PodName, Option<String>)],
    ) -> Result<Restarted, ScopeError> {
        spec.validate()?;
        let start_time = self.start_time(spec.pid)?;
        let incarnation = mint_incarnation()?;
        self.inner.store.transact(|table| {
            Ok(table.restart_reclaiming(
                from,
                spec,
                start_time,
                incarnation,
                former_children,
                |a| self.is_live(a),
            ))
        })?
    }

    /// Reserves scope from the pod `from` for a child whose process does
    /// not exist yet (DESIGN section 11): the rules, refusals and reclaims
    /// of [`delegate`](Self::delegate), and the incarnation is minted, but
    /// the allocation is held under the spawner's pid and start time
    /// (`spec.pid` is ignored) with `pending_until` = now + the
    /// [reservation deadline](Self::with_reservation_deadline). The child
    /// then calls [`adopt`](Self::adopt) with the incarnation. Until then
    /// it counts as live while the spawner is and the deadline has not
    /// passed; after, it is stale and reclaimed like a dead pod's.
    pub fn reserve(&self, from: &PodName, spec: PodSpec) -> Result<Allocation, ScopeError> {
        spec.validate()?;
        let incarnation = mint_incarnation()?;
        let deadline = self.inner.reservation_deadline_ms.load(Ordering::Relaxed);
        let until = self.inner.liveness.now_unix_ms().saturating_add(deadline);
        self.inner.store.transact(|table| {
            Ok(table.reserve_reclaiming(from, spec, incarnation, until, |a| self.is_live(a)))
        })?
    }

    /// The child's half of the handshake: its process `pid` (running:
    /// else [`ScopeError::DeadProcess`]) takes over the reservation `name`
    /// minted as `incarnation`, in one transaction ([`Table::adopt`]:
    /// refused for a wrong incarnation, an adopted or expired
    /// reservation).
    pub fn adopt(
        &self,
        name: &PodName,
        incarnation: &str,
        pid: u32,
    ) -> Result<Allocation, ScopeError> {
        let start_time = self.start_time(pid)?;
        let now = self.inner.liveness.now_unix_ms();
        self.inner
            .store
            .transact(|table| table.adopt(name, incarnation, pid, start_time, now))
    }

    /// Releases `name` if `incarnation` matches (equal, or either `None`);
    /// its children are reparented to its own `delegated_from`. Unknown ->
    /// [`ScopeError::UnknownPod`]; mismatch ->
    /// [`ScopeError::IncarnationMismatch`].
    pub fn release(
        &self,
        name: &PodName,
        incarnation: Option<&str>,
    ) -> Result<Allocation, ScopeError> {
        self.inner
            .store
            .transact(|table| table.release(name, incarnation))
    }

    /// Releases every allocation whose process is gone (dead, or its pid
    /// reused by a process with another start time); returns them, sorted by
    /// name.
    ///
    /// The full sweep: one liveness probe per allocation. [`register`] and
    /// [`delegate`] reclaim only the dead pods in their way, so the others
    /// stay listed until this runs (pod-events' reconcile runs it
    /// periodically).
    ///
    /// [`register`]: Self::register
    /// [`delegate`]: Self::delegate
    pub fn reclaim_stale(&self) -> Result<Vec<Allocation>, ScopeError> {
        self.inner
            .store
            .transact(|table| Ok(self.reclaim_in(table)))
    }

    /// The allocation of pod `name`, if any.
    ///
    /// Read through [`TableStore::read`]: in memory, a binary search and a
    /// copy of that one allocation; on file, a parse of the table.
    pub fn find(&self, name: &PodName) -> Result<Option<Allocation>, ScopeError> {
        self.inner
            .store
            .read(|table| table.get(name.as_str()).cloned())
    }

    /// Every allocation, sorted by name.
    pub fn list(&self) -> Result<Vec<Allocation>, ScopeError> {
        self.inner
            .store
            .read(|table| table.allocations().cloned().collect())
    }

    /// Pod `name`'s write rules and the sub-scopes its children hold
    /// (excluded from its own).
    pub fn effective_write_scope(&self, name: &PodName) -> Result<EffectiveScope, ScopeError> {
        self.inner
            .store
            .read(|table| table.effective_write_scope(name.as_str()))?
            .ok_or_else(|| ScopeError::UnknownPod { name: name.clone() })
    }

    /// The deepest pod whose effective write scope covers `path`, if any.
    /// `path` must be absolute and lexically normal
    /// ([`ScopeError::InvalidRule`] otherwise).
    pub fn owner_of(&self, path: &str) -> Result<Option<Allocation>, ScopeError> {
        pod_protocol::validate_path("path", path)?;
        self.inner
            .store
            .read(|table| Ok(table.owner_of(path)?.cloned()))?
    }

    /// Whether the allocation's process is alive with the recorded start
    /// time (a legacy allocation records none: whether its pid is alive).
    /// A reservation not yet adopted is held by its spawner's process, and
    /// is stale once its deadline has passed.
    pub fn is_live(&self, allocation: &Allocation) -> bool {
        let liveness = &self.inner.liveness;
        if let Some(deadline) = allocation.pending_until {
            if liveness.now_unix_ms() > deadline {
                return false;
            }
        }
        match allocation.start_time {
            Some(start_time) => liveness.is_same_process(allocation.pid, start_time),
            None => liveness.is_alive(allocation.pid),
        }
    }

    fn start_time(&self, pid: u32) -> Result<u64, ScopeError> {
        self.inner
            .liveness
            .start_time(pid)
            .ok_or(ScopeError::DeadProcess { pid })
    }

    fn reclaim_in(&self, table: &mut Table) -> Vec<Allocation> {
        table.reclaim(|a| self.is_live(a))
    }
}

/// A fresh incarnation id: 128 random bits from the OS, as 32 hex digits.
fn mint_incarnation() -> Result<String, ScopeError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(ScopeError::Entropy)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The default table path: `$PODS_RUNTIME_DIR/scope.lock`, else
/// `$XDG_RUNTIME_DIR/pods/scope.lock`, else `/tmp/pods-<uid>/scope.lock`
/// (empty or relative variables are ignored).
///
/// Only binaries (and examples) call this: libraries take the path from
/// their caller, so no layer finds its collaborators through the
/// environment.
pub fn default_table_path() -> PathBuf {
    let dir_from = |key: &str| {
        std::env::var_os(key)
            .map(PathBuf::from)
            .filter(|dir| dir.is_absolute())
    };
    if let Some(dir) = dir_from("PODS_RUNTIME_DIR") {
        return dir.join("scope.lock");
    }
    if let Some(dir) = dir_from("XDG_RUNTIME_DIR") {
        return dir.join("pods").join("scope.lock");
    }
    let uid = rustix::process::getuid().as_raw();
    PathBuf::from(format!("/tmp/pods-{uid}")).join("scope.lock")
}
