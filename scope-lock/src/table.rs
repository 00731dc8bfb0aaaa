//! The allocation table and its pure rules: register, delegate, release,
//! reclaim, lookups and the invariant. No I/O happens here.

mod blame;
mod invariant;
mod reclaim;
mod reserve;
mod undo;

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use pod_protocol::{validate_path, validate_scope, Permission, PodName, ScopeRule};
use serde::{Deserialize, Serialize};

use crate::coverage::{covers_path_valid, covers_valid, overlaps_valid};
use crate::error::ScopeError;
use reclaim::Probe;
use undo::Undo;
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

/// Who holds a new allocation: the new pod's own process (`pid: None`:
/// the spec's), or for a reservation the spawner's process until a
/// deadline.
struct Holder {
    pid: Option<u32>,
    start_time: Option<u64>,
    pending_until: Option<u64>,
}

impl Holder {
    fn running(start_time: u64) -> Self {
        Holder {
            pid: None,
            start_time: Some(start_time),
            pending_until: None,
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
    /// The new pod's control socket (absolute, lexically normal).
    pub socket: String,
    /// The rules asked for (at least one; absolute, lexically normal
    /// targets).
    pub scope: Vec<ScopeRule>,
}

impl PodSpec {
    /// Checks the socket path and the scope, as every operation does before
    /// changing anything.
    pub fn validate(&self) -> Result<(), ScopeError> {
        validate_path("socket", &self.socket)?;
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

    /// Registers a top-level pod.
    ///
    /// Refused if the spec is invalid, the name is taken, or a requested
    /// write rule overlaps a write rule of any other pod (the error names
    /// that pod). Does not reclaim stale allocations: [`ScopeTable`] calls
    /// [`register_reclaiming`](Self::register_reclaiming) instead.
    ///
    /// [`ScopeTable`]: crate::ScopeTable
    pub fn register(
        &mut self,
        spec: PodSpec,
        start_time: u64,
        incarnation: String,
    ) -> Result<Allocation, ScopeError> {
        self.register_reclaiming(spec, start_time, incarnation, |_| true)
    }

    /// [`register`](Self::register), reclaiming the stale allocations that
    /// would block the request: the pod holding the requested name and the
    /// pods whose write rules overlap a requested one, probed in the order
    /// the checks consult them, up to the first live one that refuses the
    /// request.
    ///
    /// `is_live` is called at most once per allocation, and only for those
    /// pods. Every allocation it calls dead is reclaimed as by
    /// [`reclaim`](Self::reclaim) (its children reparented to their
    /// nearest remaining ancestor), even when the request is then refused.
    /// The answer is the one [`reclaim`](Self::reclaim) of every dead
    /// allocation followed by [`register`](Self::register) would give, and
    /// on success the two tables agree on every live pod (the argument is
    /// in the crate's README and on the private `Probe` type).
    pub fn register_reclaiming(
        &mut self,
        spec: PodSpec,
        start_time: u64,
        incarnation: String,
        is_live: impl FnMut(&Allocation) -> bool,
    ) -> Result<Allocation, ScopeError> {
        let holder = Holder::running(start_time);
        self.decide_reclaim_insert(spec, holder, incarnation, None, is_live, |t, s, p| {
            t.decide_register(s, p)
        })
    }

    /// Delegates scope from the pod `from` to a new pod.
    ///
    /// Refused if the spec is invalid, `from` does not exist, the name is
    /// taken, a requested rule is not covered by one rule of `from` with at
    /// least its permission, or a requested write rule overlaps a write rule
    /// of any pod outside `from`'s lineage (`from` and its ancestors, where
    /// the scope comes from): its other children and their descendants, and
    /// every unrelated pod. Does not reclaim stale allocations:
    /// [`ScopeTable`] calls [`delegate_reclaiming`](Self::delegate_reclaiming)
    /// instead.
    ///
    /// [`ScopeTable`]: crate::ScopeTable
    pub fn delegate(
        &mut self,
        from: &PodName,
        spec: PodSpec,
        start_time: u64,
        incarnation: String,
    ) -> Result<Allocation, ScopeError> {
        self.delegate_reclaiming(from, spec, start_time, incarnation, |_| true)
    }

    /// [`delegate`](Self::delegate), reclaiming the stale allocations that
    /// would block or decide the request: the spawner `from` (dead, it is
    /// reclaimed and the answer is [`ScopeError::UnknownPod`]), the pod
    /// holding the requested name, and the pods outside `from`'s lineage
    /// whose write rules overlap a requested one, probed in the order the
    /// checks consult them, up to the first live one that refuses the
    /// request.
    ///
    /// `is_live` is called at most once per allocation, and only for those
    /// pods (never for `from`'s ancestors, which cannot block it). Every
    /// allocation it calls dead is reclaimed as by [`reclaim`](Self::reclaim)
    /// (its children reparented to their nearest remaining ancestor), even
    /// when the request is then refused. The answer is the one
    /// [`reclaim`](Self::reclaim) of every dead allocation followed by
    /// [`delegate`](Self::delegate) would give, and on success the two
    /// tables agree on every live pod (the argument is in the crate's README
    /// and on the private `Probe` type).
    pub fn delegate_reclaiming(
        &mut self,
        from: &PodName,
        spec: PodSpec,
        start_time: u64,
        incarnation: String,
        is_live: impl FnMut(&Allocation) -> bool,
    ) -> Result<Allocation, ScopeError> {
        let (parent, holder) = (Some(from), Holder::running(start_time));
        self.decide_reclaim_insert(spec, holder, incarnation, parent, is_live, |t, s, p| {
            t.decide_delegate(from, s, p)
        })
    }

    /// The shared body of the `*_reclaiming` operations: validates `spec`,
    /// runs `decide` with a fresh probe, reclaims what the probe found dead
    /// (whatever the decision), then inserts the pod under
    /// `delegated_from` if the decision allows it.
    fn decide_reclaim_insert<F: FnMut(&Allocation) -> bool>(
        &mut self,
        spec: PodSpec,
        holder: Holder,
        incarnation: String,
        delegated_from: Option<&PodName>,
        is_live: F,
        decide: impl FnOnce(&Self, &PodSpec, &mut Probe<F>) -> Result<(), ScopeError>,
    ) -> Result<Allocation, ScopeError> {
        spec.validate()?;
        let mut probe = Probe::new(is_live);
        let decision = decide(self, &spec, &mut probe);
        self.remove_dead(&probe.dead);
        decision?;
        Ok(self.insert(spec, holder, incarnation, delegated_from.cloned()))
    }

    /// The checks of [`register`](Self::register), with every pod they
    /// consult passed through `probe` first: a pod it finds dead counts as
    /// already reclaimed.
    fn decide_register<F: FnMut(&Allocation) -> bool>(
        &self,
        spec: &PodSpec,
        probe: &mut Probe<F>,
    ) -> Result<(), ScopeError> {
        self.check_name_free(spec, probe)?;
        self.find_write_conflict(&spec.scope, &HashSet::new(), probe)
    }

    /// The checks of [`delegate`](Self::delegate), with every pod they
    /// consult passed through `probe` first: a pod it finds dead counts as
    /// already reclaimed. `from`'s ancestors are not consulted: they may
    /// hold overlapping scope whether they are alive or not.
    fn decide_delegate<F: FnMut(&Allocation) -> bool>(
        &self,
        from: &PodName,
        spec: &PodSpec,
        probe: &mut Probe<F>,
    ) -> Result<(), ScopeError> {
        let Some(spawner) = self.get(from.as_str()).filter(|s| probe.is_live(s)) else {
            return Err(ScopeError::UnknownPod { name: from.clone() });
        };
        self.check_name_free(spec, probe)?;
        for rule in &spec.scope {
            if !grants(&spawner.scope_allow, rule) {
                return Err(ScopeError::NotSubset {
                    spawner: from.clone(),
                    rule: rule.clone(),
                });
            }
        }
        let lineage = self.lineage(from.as_str());
        self.find_write_conflict(&spec.scope, &lineage, probe)
    }

    /// Fails with [`ScopeError::DuplicateName`] if a live pod (passed
    /// through `probe`) holds the requested name.
    fn check_name_free<F: FnMut(&Allocation) -> bool>(
        &self,
        spec: &PodSpec,
        probe: &mut Probe<F>,
    ) -> Result<(), ScopeError> {
        match self.get(spec.pod_name.as_str()) {
            Some(holder) if probe.is_live(holder) => Err(ScopeError::DuplicateName {
                name: spec.pod_name.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// Removes pod `name` if `incarnation` is `None` or equals the one held,
    /// and reparents its children to its own `delegated_from`.
    pub fn release(
        &mut self,
        name: &PodName,
        incarnation: Option<&str>,
    ) -> Result<Allocation, ScopeError> {
        let Ok(index) = self.position(name.as_str()) else {
            return Err(ScopeError::UnknownPod { name: name.clone() });
        };
        let held = &self.allocations[index];
        if let (Some(requested), Some(held)) = (incarnation, &held.incarnation) {
            if requested != held {
                return Err(ScopeError::IncarnationMismatch {
                    name: name.clone(),
                    held: held.clone(),
                    requested: requested.to_owned(),
                });
            }
        }
        let removed = self.allocations.remove(index);
        if let Some(journal) = &mut self.journal {
            journal.record(Undo::Removed(vec![(index, removed.clone())]));
        }
        for (i, child) in self.allocations.iter_mut().enumerate() {
            if child.delegated_from.as_ref() == Some(name) {
                let old =
                    std::mem::replace(&mut child.delegated_from, removed.delegated_from.clone());
                if let Some(journal) = &mut self.journal {
                    journal.record(Undo::Reparented(i, old));
                }
            }
        }
        self.touch();
        Ok(removed)
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

    /// Fails with the first (rule order, then pod name order) requested
    /// write rule that overlaps a write rule of a live pod outside
    /// `allowed`. Each pod outside `allowed` with an overlapping write rule
    /// is probed in that order until the first live one; the error names
    /// the deepest owner below it ([`Table::deepest_owner`]).
    fn find_write_conflict<F: FnMut(&Allocation) -> bool>(
        &self,
        scope: &[ScopeRule],
        allowed: &HashSet<PodName>,
        probe: &mut Probe<F>,
    ) -> Result<(), ScopeError> {
        for rule in scope.iter().filter(|r| r.permission == Permission::Write) {
            for a in &self.allocations {
                if a.write_rules().any(|held| overlaps_valid(held, rule))
                    && !allowed.contains(&a.pod_name)
                    && probe.is_live(a)
                {
                    return Err(ScopeError::WriteConflict {
                        competitor: self.deepest_owner(a, rule, probe).pod_name.clone(),
                        rule: rule.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    fn insert(
        &mut self,
        spec: PodSpec,
        holder: Holder,
        incarnation: String,
        delegated_from: Option<PodName>,
    ) -> Allocation {
        let allocation = Allocation {
            pod_name: spec.pod_name,
            pid: holder.pid.unwrap_or(spec.pid),
            start_time: holder.start_time,
            socket: spec.socket,
            scope_allow: spec.scope,
            delegated_from,
            incarnation: Some(incarnation),
            pending_until: holder.pending_until,
        };
        let undo = match self.position(allocation.pod_name.as_str()) {
            // Callers refuse a taken name first; replace, as a map would.
            Ok(i) => Undo::Replaced(
                i,
                std::mem::replace(&mut self.allocations[i], allocation.clone()),
            ),
            Err(i) => {
                self.allocations.insert(i, allocation.clone());
                Undo::Inserted(i)
            }
        };
        if let Some(journal) = &mut self.journal {
            journal.record(undo);
        }
        self.touch();
        allocation
    }
}

/// Whether one of `held` covers `rule` with at least its permission: what
/// a delegation asks of the spawner, and (b) of the invariant.
fn grants(held: &[ScopeRule], rule: &ScopeRule) -> bool {
    held.iter()
        .any(|h| h.permission >= rule.permission && covers_valid(h, rule))
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
