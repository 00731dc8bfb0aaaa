//! The allocation table: its types, lookups and change detection. The
//! pure rules live beside it, one idea a module: `rules` (register,
//! delegate, release), `reserve` (reserve, adopt), `blame` (whom a
//! conflict names), `reclaim` (dead pods), `invariant` (the check on every
//! load) and `undo` (the in-memory store's rollback). No I/O happens here.

mod blame;
mod invariant;
mod reclaim;
mod reserve;
mod restart;
mod rules;
mod undo;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use pod_protocol::{
    validate_path, validate_scope, validate_socket, Permission, PodName, ScopeRule,
};
use serde::{Deserialize, Serialize};

use crate::coverage::covers_path_valid;
use crate::error::ScopeError;
pub use restart::Restarted;
pub(crate) use undo::{Journal, Orphan};

/// One pod's allocation. The serde names are the on-disk format; every
/// field but `start_time` and `incarnation` is required and no other is
/// accepted, so a misspelt key in a hand-edited table is an error, never a
/// silently top-level pod.
///
/// An allocation without `start_time` and `incarnation` is a *legacy*
/// allocation, as existing Pods write them: its liveness is its pid alone
/// (no pid-reuse guard), and it matches a request with any incarnation, as
/// events without one do on the wire. Written back, absent fields stay
/// absent, so existing Pods keep reading what they wrote. Every allocation
/// this crate makes has both.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// The pod's unique name.
    pub pod_name: PodName,
    /// The pod's process.
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot, field 22 of
    /// `/proc/<pid>/stat`): tells the pod's process from a later process
    /// that reuses the pid. `None` (absent) in a legacy allocation: the pid
    /// alone says whether it lives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<u64>,
    /// The pod's control socket.
    pub socket: String,
    /// The rules the pod holds.
    pub scope_allow: Vec<ScopeRule>,
    /// The pod it was delegated from; `None` (`null`) for a top-level pod.
    #[serde(deserialize_with = "Option::deserialize")]
    pub delegated_from: Option<PodName>,
    /// Random id minted when the allocation was made; tells this pod from an
    /// earlier or later pod of the same name. `None` (absent) in a legacy
    /// allocation, which matches any incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
    /// For a reservation not yet adopted ([`ScopeTable::reserve`]): until
    /// when (Unix time, ms) the child may adopt it. It is held under the
    /// spawner's pid and start time meanwhile, and is stale once this has
    /// passed. Absent otherwise (and for readers that ignore it, the
    /// allocation is held by a live spawner, which is safe).
    ///
    /// [`ScopeTable::reserve`]: crate::ScopeTable::reserve
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<u64>,
    /// How many pods above this one were removed while they were between
    /// it and the pod it reports to: each time a release or a reclaim
    /// reparents it, this grows by the number of pods it was moved past
    /// (and their own counts), so it is the same whatever order the
    /// removals happened in. The `seq` of the reparent notice its new
    /// manager sends (DESIGN section 12). Absent (`0`) until first moved.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reparented: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Allocation {
    /// The write rules the pod holds.
    pub fn write_rules(&self) -> impl Iterator<Item = &ScopeRule> {
        self.scope_allow
            .iter()
            .filter(|r| r.permission == Permission::Write)
    }

    /// Whether this is a legacy allocation (written by an existing Pod):
    /// no start time and no incarnation.
    pub fn is_legacy(&self) -> bool {
        self.start_time.is_none() && self.incarnation.is_none()
    }

    /// Whether a request about `incarnation` is about this pod: equal, or
    /// either side has none (events of existing Pods carry none, legacy
    /// allocations hold none).
    pub fn matches_incarnation(&self, incarnation: Option<&str>) -> bool {
        match (self.incarnation.as_deref(), incarnation) {
            (Some(held), Some(requested)) => held == requested,
            _ => true,
        }
    }
}

/// A request to allocate scope to a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// The new pod's name; unique in the table.
    pub pod_name: PodName,
    /// The new pod's process (must be running).
    pub pid: u32,
    /// The new pod's control socket: an absolute, lexically normal path,
    /// `unix:` + such a path, or `tls://host:port` (see
    /// [`pod_protocol::validate_socket`]).
    pub socket: String,
    /// The rules asked for (at least one; absolute, lexically normal
    /// targets).
    pub scope: Vec<ScopeRule>,
}

impl PodSpec {
    /// Checks the socket path and the scope, as every operation does before
    /// changing anything.
    pub fn validate(&self) -> Result<(), ScopeError> {
        validate_socket("socket", &self.socket)?;
        validate_scope(&self.scope)?;
        Ok(())
    }
}

/// Write scope held by a child, carved out of its parent's effective scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusion {
    /// The child holding the rule.
    pub pod_name: PodName,
    /// The child's write rule.
    pub rule: ScopeRule,
}

/// Where a pod may write itself: its write rules minus what its children
/// hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveScope {
    /// The pod.
    pub pod_name: PodName,
    /// The pod's write rules.
    pub write: Vec<ScopeRule>,
    /// Write rules of its direct children (which contain those of all its
    /// descendants), excluded from its own scope.
    pub excluded: Vec<Exclusion>,
}

impl EffectiveScope {
    /// Whether `path` is covered by one of the pod's write rules and by no
    /// child's. False for a path that is not absolute and lexically normal.
    pub fn covers_path(&self, path: &str) -> bool {
        validate_path("path", path).is_ok()
            && self.write.iter().any(|r| covers_path_valid(r, path))
            && !self
                .excluded
                .iter()
                .any(|e| covers_path_valid(&e.rule, path))
    }
}

/// Stamps are unique per table creation or change, so "same stamp" implies
/// "same content" (a clone shares its source's stamp until either changes).
static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

fn fresh_stamp() -> u64 {
    NEXT_STAMP.fetch_add(1, Ordering::Relaxed)
}

/// The whole allocation table, keyed by pod name.
///
/// Holds the rules of DESIGN section 5 as pure functions on `&mut Table`:
/// [`register`](Self::register), [`delegate`](Self::delegate),
/// [`release`](Self::release) and [`reclaim`](Self::reclaim), and
/// [`register_reclaiming`](Self::register_reclaiming) and
/// [`delegate_reclaiming`](Self::delegate_reclaiming), which first reclaim
/// the dead pods that would refuse the request. Each checks everything
/// before changing anything, and each keeps
/// [`check_invariant`](Self::check_invariant) true. Storage and locking are
/// the [`TableStore`](crate::TableStore)'s job; liveness probes and
/// incarnation ids come from [`ScopeTable`](crate::ScopeTable).
///
/// On disk (the file store): `{"version":1,"allocations":[...]}`.
///
/// Costs, for n allocations: [`get`](Self::get) is a binary search;
/// [`release`](Self::release) and an insertion by
/// [`register`](Self::register) or [`delegate`](Self::delegate) move the
/// allocations after it along (a `memmove` of pointers-sized fields, no
/// clone) and [`release`](Self::release) looks at each allocation's
/// `delegated_from` once to reparent its children: O(n) each, never
/// quadratic. [`reclaim`](Self::reclaim) is one pass whatever it removes.
#[derive(Default)]
pub struct Table {
    /// Sorted by pod name, names unique: lookups are binary searches, and
    /// the table is read and written in this order without re-sorting.
    allocations: Vec<Allocation>,
    /// Change detection for stores; see [`NEXT_STAMP`]. Not part of equality.
    stamp: u64,
    /// The undo journal of the in-memory store's current transaction, if
    /// any; see [`Journal`]. Not part of equality, not cloned.
    journal: Option<Journal>,
}

impl Clone for Table {
    /// A copy of the allocations, with the same stamp (and no journal).
    fn clone(&self) -> Self {
        Table {
            allocations: self.allocations.clone(),
            stamp: self.stamp,
            journal: None,
        }
    }
}

impl fmt::Debug for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Table")
            .field("allocations", &self.allocations)
            .field("stamp", &self.stamp)
            .finish()
    }
}

impl Drop for Table {
    /// A journaled table dropped in the middle of a transaction (the
    /// closure replaced it whole: `*table = other`) leaves its content and
    /// journal with the store, which may still have to roll back to it.
    fn drop(&mut self) {
        if let Some(journal) = self.journal.take() {
            journal.orphan(std::mem::take(&mut self.allocations));
        }
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.allocations == other.allocations
    }
}

impl Eq for Table {}

/// Builds a table as given, without checking it: use
/// [`Table::check_invariant`] on the result. A later allocation replaces an
/// earlier one of the same name.
impl FromIterator<Allocation> for Table {
    fn from_iter<I: IntoIterator<Item = Allocation>>(iter: I) -> Self {
        let mut allocations: Vec<Allocation> = iter.into_iter().collect();
        // What the file store writes is already sorted: one pass to see it.
        if !allocations
            .windows(2)
            .all(|pair| pair[0].pod_name < pair[1].pod_name)
        {
            // Stable, so among equal names the later one comes last; keep
            // its content in the first slot of the run.
            allocations.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
            allocations.dedup_by(|later, kept| {
                let same = later.pod_name == kept.pod_name;
                if same {
                    std::mem::swap(later, kept);
                }
                same
            });
        }
        Table {
            allocations,
            stamp: fresh_stamp(),
            journal: None,
        }
    }
}

impl Table {
    /// An empty table.
    pub fn new() -> Self {
        Table::default()
    }

    /// Every allocation, sorted by pod name.
    pub fn allocations(&self) -> impl Iterator<Item = &Allocation> {
        self.allocations.iter()
    }

    /// The allocation of pod `name`.
    pub fn get(&self, name: &str) -> Option<&Allocation> {
        self.position(name).ok().map(|i| &self.allocations[i])
    }

    /// Where `name` is (`Ok`) or would be inserted (`Err`).
    fn position(&self, name: &str) -> Result<usize, usize> {
        self.allocations
            .binary_search_by(|a| a.pod_name.as_str().cmp(name))
    }

    /// The number of allocations.
    pub fn len(&self) -> usize {
        self.allocations.len()
    }

    /// Whether the table holds no allocation.
    pub fn is_empty(&self) -> bool {
        self.allocations.is_empty()
    }

    /// The pods delegated from `name`, sorted by name.
    pub fn children<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Allocation> + 'a {
        self.allocations
            .iter()
            .filter(move |a| a.delegated_from.as_ref().map(PodName::as_str) == Some(name))
    }

    /// A value that changes whenever the table's content may have changed;
    /// stores compare it before and after a transaction to skip writes.
    pub(crate) fn stamp(&self) -> u64 {
        self.stamp
    }

    fn touch(&mut self) {
        self.stamp = fresh_stamp();
    }

    /// Pod `name`'s effective write scope, or `None` if it does not exist.
    pub fn effective_write_scope(&self, name: &str) -> Option<EffectiveScope> {
        let allocation = self.get(name)?;
        let excluded = self
            .children(name)
            .flat_map(|child| {
                child.write_rules().map(|rule| Exclusion {
                    pod_name: child.pod_name.clone(),
                    rule: rule.clone(),
                })
            })
            .collect();
        Some(EffectiveScope {
            pod_name: allocation.pod_name.clone(),
            write: allocation.write_rules().cloned().collect(),
            excluded,
        })
    }

    /// The pod whose effective write scope covers `path`: the deepest pod
    /// holding a write rule that covers it. Fails if `path` is not absolute
    /// and lexically normal.
    pub fn owner_of(&self, path: &str) -> Result<Option<&Allocation>, ScopeError> {
        validate_path("path", path)?;
        let mut best: Option<(usize, &Allocation)> = None;
        for a in &self.allocations {
            if a.write_rules().any(|r| covers_path_valid(r, path)) {
                let depth = self.lineage(a.pod_name.as_str()).len();
                if best.is_none_or(|(d, _)| depth > d) {
                    best = Some((depth, a));
                }
            }
        }
        Ok(best.map(|(_, a)| a))
    }

    /// `name` and its ancestors. Stops at a missing parent or a cycle.
    fn lineage(&self, name: &str) -> HashSet<PodName> {
        let mut lineage = HashSet::new();
        let mut current = self.get(name);
        while let Some(a) = current {
            if !lineage.insert(a.pod_name.clone()) {
                break;
            }
            current = a.delegated_from.as_ref().and_then(|p| self.get(p.as_str()));
        }
        lineage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Allocation {
        Allocation {
            pod_name: PodName::new(name).unwrap(),
            pid: 1,
            start_time: Some(1),
            socket: "/run/p.sock".into(),
            scope_allow: vec![ScopeRule::read("/")],
            delegated_from: None,
            incarnation: None,
            pending_until: None,
            reparented: 0,
        }
    }

    #[test]
    fn from_iter_sorts_and_keeps_the_last_of_a_name() {
        let mut later = pod("b");
        later.pid = 2;
        let table: Table = vec![pod("c"), pod("b"), pod("a"), later.clone()]
            .into_iter()
            .collect();
        let names: Vec<&str> = table.allocations().map(|a| a.pod_name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(table.get("b"), Some(&later));
        assert_eq!(table.check_invariant(), Ok(()));
    }
}
