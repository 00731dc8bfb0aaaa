//! The allocation table and its pure rules: register, delegate, release,
//! reclaim, lookups and the invariant. No I/O happens here.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use pod_protocol::{validate_path, validate_scope, Permission, PodName, ScopeRule};
use serde::{Deserialize, Serialize};

use crate::coverage::{
    covers_path_valid, covers_valid, is_normal_path, overlaps_valid, relation, Relation,
};
use crate::error::{DisplayRule, ScopeError};

/// One pod's allocation. The serde names are the on-disk format; every
/// field is required and no other is accepted, so a misspelt key in a
/// hand-edited table is an error, never a silently top-level pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    /// The pod's unique name.
    pub pod_name: PodName,
    /// The pod's process.
    pub pid: u32,
    /// Start time of `pid` (clock ticks since boot, field 22 of
    /// `/proc/<pid>/stat`): tells the pod's process from a later process
    /// that reuses the pid.
    pub start_time: u64,
    /// The pod's control socket.
    pub socket: String,
    /// The rules the pod holds.
    pub scope_allow: Vec<ScopeRule>,
    /// The pod it was delegated from; `None` (`null`) for a top-level pod.
    #[serde(deserialize_with = "Option::deserialize")]
    pub delegated_from: Option<PodName>,
    /// Random id minted when the allocation was made; tells this pod from an
    /// earlier or later pod of the same name.
    pub incarnation: String,
}

impl Allocation {
    /// The write rules the pod holds.
    pub fn write_rules(&self) -> impl Iterator<Item = &ScopeRule> {
        self.scope_allow
            .iter()
            .filter(|r| r.permission == Permission::Write)
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
        self.decide_reclaim_insert(spec, start_time, incarnation, None, is_live, |t, s, p| {
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
        let parent = Some(from);
        self.decide_reclaim_insert(spec, start_time, incarnation, parent, is_live, |t, s, p| {
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
        start_time: u64,
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
        Ok(self.insert(spec, start_time, incarnation, delegated_from.cloned()))
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
        if let Some(requested) = incarnation {
            if requested != held.incarnation {
                return Err(ScopeError::IncarnationMismatch {
                    name: name.clone(),
                    held: held.incarnation.clone(),
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

    /// Removes every allocation for which `is_live` returns false and
    /// returns them, sorted by name. Each surviving pod whose parent was
    /// removed is reparented to its nearest surviving ancestor (or becomes
    /// top-level). `is_live` is called once per allocation.
    pub fn reclaim(&mut self, mut is_live: impl FnMut(&Allocation) -> bool) -> Vec<Allocation> {
        let dead: HashSet<PodName> = self
            .allocations
            .iter()
            .filter(|a| !is_live(a))
            .map(|a| a.pod_name.clone())
            .collect();
        self.remove_dead(&dead)
    }

    /// Removes the allocations named in `dead` and returns them, sorted by
    /// name; each remaining pod whose parent was removed is reparented to
    /// its nearest remaining ancestor (or becomes top-level). Does nothing
    /// (and leaves the stamp alone) if `dead` is empty. One pass over the
    /// table.
    fn remove_dead(&mut self, dead: &HashSet<PodName>) -> Vec<Allocation> {
        if dead.is_empty() {
            return Vec::new();
        }
        // The nearest surviving ancestor of each dead pod: walk up through
        // dead ones, then remember the answer for every pod on the walk, so
        // each dead pod is walked over once (linear even for a long chain).
        let mut heir: HashMap<PodName, Option<PodName>> = HashMap::new();
        for name in dead {
            if heir.contains_key(name) || self.get(name.as_str()).is_none() {
                continue;
            }
            let mut walked = vec![name.clone()];
            let mut parent = self
                .get(name.as_str())
                .and_then(|a| a.delegated_from.clone());
            while let Some(p) = parent.clone().filter(|p| dead.contains(p)) {
                if let Some(known) = heir.get(&p) {
                    parent = known.clone();
                    break;
                }
                if walked.len() > dead.len() {
                    // A cycle of dead pods (only in a table built unchecked):
                    // nothing above it survives.
                    parent = None;
                    break;
                }
                parent = self.get(p.as_str()).and_then(|a| a.delegated_from.clone());
                walked.push(p);
            }
            for pod in walked {
                heir.insert(pod, parent.clone());
            }
        }
        let all = std::mem::take(&mut self.allocations);
        let mut removed = Vec::new();
        let mut kept = Vec::with_capacity(all.len());
        let mut undo_removed = Vec::new();
        for (i, a) in all.into_iter().enumerate() {
            if dead.contains(&a.pod_name) {
                if self.journal.is_some() {
                    undo_removed.push((i, a.clone()));
                }
                removed.push(a);
            } else {
                kept.push(a);
            }
        }
        self.allocations = kept;
        if let Some(journal) = &mut self.journal {
            journal.record(Undo::Removed(undo_removed));
        }
        for (i, a) in self.allocations.iter_mut().enumerate() {
            if let Some(new_parent) = a.delegated_from.as_ref().and_then(|p| heir.get(p)) {
                let old = std::mem::replace(&mut a.delegated_from, new_parent.clone());
                if let Some(journal) = &mut self.journal {
                    journal.record(Undo::Reparented(i, old));
                }
            }
        }
        self.touch();
        removed
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

    /// Checks the invariant of DESIGN section 5:
    ///
    /// - (a) no write rule of a pod overlaps a write rule of a pod that is
    ///   neither its ancestor nor its descendant;
    /// - (b) every rule of a delegated pod is covered by one rule of its
    ///   parent with at least its permission;
    /// - (c) every `delegated_from` names an existing allocation (and the
    ///   parent links form a forest: no cycles);
    ///
    /// plus well-formedness: names are unique (the table is kept sorted by
    /// name), and every socket and target is a valid path. The error says
    /// which pods break which rule. Costs O(n log n) in the number of rules;
    /// [`FileStore`](crate::FileStore) runs it on every load.
    pub fn check_invariant(&self) -> Result<(), String> {
        let pods = &self.allocations[..];
        for pair in pods.windows(2) {
            if pair[0].pod_name >= pair[1].pod_name {
                return Err(format!(
                    "allocation `{}` is stored before `{}`: not sorted by name, or a name held twice",
                    pair[0].pod_name, pair[1].pod_name
                ));
            }
        }
        for a in pods {
            // The one-pass check first; the full one only to say what is
            // wrong.
            let valid = is_normal_path(&a.socket)
                && !a.scope_allow.is_empty()
                && a.scope_allow.iter().all(|r| is_normal_path(&r.target));
            if !valid {
                validate_path("socket", &a.socket)
                    .and_then(|_| validate_scope(&a.scope_allow))
                    .map_err(|e| format!("pod `{}`: {e}", a.pod_name))?;
            }
        }
        // Names are resolved once (`pods` is sorted by name); everything
        // below works on indices.
        let mut index = NameIndex::new(pods);
        let mut parents = Vec::with_capacity(pods.len());
        for a in pods {
            parents.push(match &a.delegated_from {
                None => None,
                Some(p) => Some(index.find(pods, p.as_str()).ok_or_else(|| {
                    format!(
                        "(c) pod `{}` is delegated from `{p}`, which has no allocation",
                        a.pod_name
                    )
                })?),
            });
        }
        check_acyclic(pods, &parents)?;
        for (a, parent) in pods.iter().zip(&parents) {
            let Some(parent) = parent.map(|p| &pods[p]) else {
                continue;
            };
            for rule in &a.scope_allow {
                if !grants(&parent.scope_allow, rule) {
                    return Err(format!(
                        "(b) rule {} of pod `{}` is not covered by a rule of its parent `{}`",
                        DisplayRule(rule),
                        a.pod_name,
                        parent.pod_name
                    ));
                }
            }
        }
        // With (b) and (c), a pod's write rules contain those of its whole
        // subtree, so (a) holds exactly when the children of each pod (and
        // the top-level pods) hold pairwise disjoint write scope.
        // Group 0 is the top-level pods, group `p + 1` the children of pod
        // `p`: a counting sort lays each group out contiguously, in name
        // order, and one buffer serves every group's rules.
        let group = |parent: &Option<usize>| parent.map_or(0, |p| p + 1);
        let mut starts = vec![0usize; pods.len() + 2];
        for parent in &parents {
            starts[group(parent) + 1] += 1;
        }
        for g in 1..starts.len() {
            starts[g] += starts[g - 1];
        }
        let mut order = vec![0usize; pods.len()];
        let mut next = starts.clone();
        for (i, parent) in parents.iter().enumerate() {
            order[next[group(parent)]] = i;
            next[group(parent)] += 1;
        }
        let mut rules = Vec::new();
        for bounds in starts.windows(2) {
            let members = &order[bounds[0]..bounds[1]];
            if members.len() > 1 {
                check_siblings_disjoint(pods, members, &mut rules)?;
            }
        }
        Ok(())
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
    /// is probed in that order until the first live one.
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
                        competitor: a.pod_name.clone(),
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
        start_time: u64,
        incarnation: String,
        delegated_from: Option<PodName>,
    ) -> Allocation {
        let allocation = Allocation {
            pod_name: spec.pod_name,
            pid: spec.pid,
            start_time,
            socket: spec.socket,
            scope_allow: spec.scope,
            delegated_from,
            incarnation,
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

    /// Starts recording every change into `journal`, replacing any journal
    /// in progress. For [`MemoryStore`](crate::testing::MemoryStore)'s
    /// transactions.
    pub(crate) fn begin_journal(&mut self, journal: Journal) {
        self.journal = Some(journal);
    }

    /// Stops recording and returns the journal, if the one in progress is
    /// the one with `token` (a table the closure put in place of the
    /// journaled one has none, or another).
    pub(crate) fn take_journal(&mut self, token: u64) -> Option<Journal> {
        if self.journal.as_ref()?.token != token {
            return None;
        }
        self.journal.take()
    }

    /// Undoes every change recorded in `journal` (taken from this table by
    /// [`take_journal`](Self::take_journal)), newest first.
    pub(crate) fn undo(&mut self, journal: Journal) {
        undo_into(&mut self.allocations, journal.undo);
    }

    /// The table a journaled table was when its journal began, rebuilt
    /// from what it left behind when it was dropped; its stamp is `stamp`.
    pub(crate) fn from_orphan(orphan: Orphan, stamp: u64) -> Table {
        let mut allocations = orphan.allocations;
        undo_into(&mut allocations, orphan.undo);
        Table {
            allocations,
            stamp,
            journal: None,
        }
    }

    /// Whether a journal is recording (only inside a transaction of the
    /// in-memory store).
    #[cfg(test)]
    pub(crate) fn is_journaling(&self) -> bool {
        self.journal.is_some()
    }

    /// Sets the stamp back to `stamp`, the one the table had when it held
    /// the same content (after a rollback).
    pub(crate) fn restore_stamp(&mut self, stamp: u64) {
        self.stamp = stamp;
    }
}

/// An undo journal: what a transaction of the in-memory store changed, in
/// order, so that a transaction that fails (the closure returns `Err`, a
/// write failure is injected, or the closure panics) can be undone in
/// O(changes) instead of running on a clone of the whole table.
///
/// Every change to a [`Table`] goes through one of its mutation points
/// (`insert`, `release`, `remove_dead`, which record here), except
/// replacing the whole table (`*table = other`): then the journaled table
/// is dropped, and its [`Drop`] leaves its allocations and this journal in
/// the `orphan` slot, from which the store rebuilds the table it had
/// ([`Table::from_orphan`]).
pub(crate) struct Journal {
    /// Unique to one transaction.
    token: u64,
    /// The changes so far, oldest first.
    undo: Vec<Undo>,
    /// Where a dropped journaled table leaves its content.
    orphan: Arc<Mutex<Option<Orphan>>>,
}

/// What a journaled table left behind when it was dropped.
#[derive(Debug)]
pub(crate) struct Orphan {
    /// The transaction's token.
    pub(crate) token: u64,
    allocations: Vec<Allocation>,
    undo: Vec<Undo>,
}

impl Journal {
    /// An empty journal with a fresh token; a journaled table dropped
    /// while recording leaves its content in `orphan`.
    pub(crate) fn new(orphan: Arc<Mutex<Option<Orphan>>>) -> Self {
        Journal {
            token: fresh_stamp(),
            undo: Vec::new(),
            orphan,
        }
    }

    /// This journal's token.
    pub(crate) fn token(&self) -> u64 {
        self.token
    }

    fn record(&mut self, undo: Undo) {
        self.undo.push(undo);
    }

    /// Leaves `allocations` (the dropped table's) and the changes that led
    /// to them in the orphan slot, unless a newer transaction's table is
    /// already there (an older journaled table that had escaped its
    /// transaction and is dropped later must not hide it).
    fn orphan(self, allocations: Vec<Allocation>) {
        let mut slot = self
            .orphan
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.as_ref().is_none_or(|o| o.token < self.token) {
            *slot = Some(Orphan {
                token: self.token,
                allocations,
                undo: self.undo,
            });
        }
    }
}

/// One change to the allocation vector, as what undoes it. Indices are
/// positions at the time of the change, so replaying newest first restores
/// every position exactly.
#[derive(Debug)]
enum Undo {
    /// An allocation was inserted at this index.
    Inserted(usize),
    /// The allocation at this index replaced this one.
    Replaced(usize, Allocation),
    /// These allocations were removed, with their indices before the
    /// removal, ascending.
    Removed(Vec<(usize, Allocation)>),
    /// The allocation at this index had this `delegated_from`.
    Reparented(usize, Option<PodName>),
}

/// Undoes `undo` (oldest first) on `allocations`, newest first.
fn undo_into(allocations: &mut Vec<Allocation>, undo: Vec<Undo>) {
    for step in undo.into_iter().rev() {
        match step {
            Undo::Inserted(i) => {
                allocations.remove(i);
            }
            Undo::Replaced(i, old) => allocations[i] = old,
            Undo::Reparented(i, old) => allocations[i].delegated_from = old,
            Undo::Removed(mut removed) => {
                if removed.len() == 1 {
                    if let Some((i, a)) = removed.pop() {
                        allocations.insert(i, a);
                    }
                    continue;
                }
                // Merge: each removed allocation goes back to its old
                // index, the others fill the gaps in order.
                let kept = std::mem::take(allocations);
                let total = kept.len() + removed.len();
                let mut kept = kept.into_iter();
                let mut removed = removed.into_iter().peekable();
                for position in 0..total {
                    let next = match removed.next_if(|(i, _)| *i == position) {
                        Some((_, a)) => Some(a),
                        None => kept.next(),
                    };
                    allocations.extend(next);
                }
            }
        }
    }
}

/// The liveness of the pods a register or delegate consults, asked once per
/// pod; the dead ones are remembered, to be reclaimed.
///
/// # Why reclaiming only what blocks the request gives the same answer
///
/// [`ScopeTable`](crate::ScopeTable) used to reclaim every stale
/// allocation before acting, which probes every allocation (a read of
/// `/proc/<pid>/stat` each). Instead the checks pass each pod they consult
/// through the probe just before relying on it, treat a dead one as absent,
/// and the dead ones are then reclaimed. Write `D` for the dead
/// allocations, `R` (a subset of `D`) for those the probe found, `full` for
/// the table after reclaiming `D` and `ours` for the table after
/// reclaiming `R`. The answer on `ours` equals the answer on `full`:
///
/// - Reclaiming removes pods and reparents each survivor to its nearest
///   surviving ancestor, so among survivors the ancestor relation is the
///   original one restricted to them, whatever subset is removed: a live
///   pod is in the spawner's lineage in `ours` exactly when it is in
///   `full`. Reparenting never moves a pod into the lineage.
/// - `UnknownPod`: the spawner is probed first; absent or dead, it is absent
///   from both tables.
/// - `DuplicateName`: the holder of the name is probed; it refuses only if
///   live, i.e. present in `full`.
/// - `NotSubset` depends only on the spawner's rules, the same in both.
/// - `WriteConflict` names the first requested write rule, then the first
///   pod by name outside the lineage, with an overlapping write rule. The
///   scan probes each such pod in that order and skips the dead ones, so
///   the first live one it stops at is the first one in `full` (whose
///   pods outside the lineage are the live ones outside it in ours). Dead
///   pods inside the lineage (unprobed ancestors of the spawner) are
///   allowed to overlap in both cases, being absent from `full`.
/// - On success the new pod is inserted under a live parent (or none), so
///   reclaiming the rest of `D` afterwards gives `full` plus the new pod:
///   the two tables agree on every live pod, its rules and its nearest live
///   ancestor. The invariant holds on `ours` too: every pod the new one
///   may not overlap was checked, dead or alive.
///
/// Removing dead allocations only ever removes conflicts, so no probe is
/// needed for a pod that could only allow the request. What differs from a
/// full reclaim: dead allocations that do not block the request stay in
/// the table (listed, and possibly named by `owner_of`) until the next
/// [`Table::reclaim`] (`ScopeTable::reclaim_stale`, which pod-events'
/// reconcile runs periodically) or until they would block a request.
struct Probe<F> {
    is_live: F,
    /// Pods found live.
    live: HashSet<PodName>,
    /// Pods found dead: reclaimed after the checks.
    dead: HashSet<PodName>,
}

impl<F: FnMut(&Allocation) -> bool> Probe<F> {
    fn new(is_live: F) -> Self {
        Probe {
            is_live,
            live: HashSet::new(),
            dead: HashSet::new(),
        }
    }

    fn is_live(&mut self, allocation: &Allocation) -> bool {
        let name = &allocation.pod_name;
        if self.live.contains(name) {
            return true;
        }
        if self.dead.contains(name) {
            return false;
        }
        let live = (self.is_live)(allocation);
        if live {
            self.live.insert(name.clone());
        } else {
            self.dead.insert(name.clone());
        }
        live
    }
}

/// Finds pods by name in a slice sorted by name, comparing first the
/// leading 8 bytes of each name as one integer (kept in a flat array, so
/// most of the binary search never leaves it), then whole names only among
/// the few that share those bytes. Parents have many children, so recent
/// answers are remembered in a small direct-mapped cache (a hit is checked
/// against the whole name).
struct NameIndex {
    prefixes: Vec<u64>,
    recent: [Option<usize>; RECENT_SLOTS],
}

const RECENT_SLOTS: usize = 256;

/// The first 8 bytes of `name`, zero-padded, as a big-endian integer: for
/// names without NUL bytes (pod names are letters, digits, `.`, `_`, `-`)
/// integer order agrees with the names' byte order. (Were it not so, a
/// lookup could miss and the table be refused: never wrongly accepted.)
fn name_prefix(name: &str) -> u64 {
    let mut buffer = [0u8; 8];
    let n = name.len().min(8);
    buffer[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(buffer)
}

impl NameIndex {
    fn new(pods: &[Allocation]) -> Self {
        NameIndex {
            prefixes: pods
                .iter()
                .map(|a| name_prefix(a.pod_name.as_str()))
                .collect(),
            recent: [None; RECENT_SLOTS],
        }
    }

    /// The index of pod `name` in `pods` (the slice this index was built
    /// from).
    fn find(&mut self, pods: &[Allocation], name: &str) -> Option<usize> {
        let slot = (name
            .bytes()
            .fold(name.len(), |h, b| h.wrapping_mul(31) ^ usize::from(b)))
            % RECENT_SLOTS;
        if let Some(i) = self.recent[slot] {
            if pods[i].pod_name.as_str() == name {
                return Some(i);
            }
        }
        let prefix = name_prefix(name);
        let start = self.prefixes.partition_point(|&p| p < prefix);
        let end = start + self.prefixes[start..].partition_point(|&p| p == prefix);
        let found = pods[start..end]
            .binary_search_by(|a| a.pod_name.as_str().cmp(name))
            .ok()
            .map(|i| start + i);
        if found.is_some() {
            self.recent[slot] = found;
        }
        found
    }
}

/// Whether one of `held` covers `rule` with at least its permission: what
/// a delegation asks of the spawner, and (b) of the invariant.
fn grants(held: &[ScopeRule], rule: &ScopeRule) -> bool {
    held.iter()
        .any(|h| h.permission >= rule.permission && covers_valid(h, rule))
}

/// (c), second half: following parent links from any pod ends at a
/// top-level pod.
fn check_acyclic(pods: &[Allocation], parents: &[Option<usize>]) -> Result<(), String> {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![UNSEEN; pods.len()];
    let mut path = Vec::new();
    for start in 0..pods.len() {
        let mut current = Some(start);
        while let Some(i) = current {
            match state[i] {
                DONE => break,
                ON_PATH => {
                    return Err(format!(
                        "(c) the delegation chain through pod `{}` is a cycle",
                        pods[i].pod_name
                    ))
                }
                _ => {}
            }
            state[i] = ON_PATH;
            path.push(i);
            current = parents[i];
        }
        for i in path.drain(..) {
            state[i] = DONE;
        }
    }
    Ok(())
}

/// Orders targets as a preorder of the path tree: component-wise
/// lexicographic, which for lexically normal paths is byte order with `/`
/// below every other byte (so `/a` < `/a/z` < `/ab`).
fn preorder(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |byte: u8| if byte == b'/' { 0 } else { byte };
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match a.iter().zip(b).position(|(x, y)| x != y) {
        // (`then` only matters for a NUL byte, which no valid target has.)
        Some(i) => key(a[i]).cmp(&key(b[i])).then(a[i].cmp(&b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Fails if write rules of two different pods among `members` overlap.
///
/// Overlapping targets always lie on one line of descent, so after sorting
/// the rules in preorder each rule only needs comparing with the rules
/// whose targets are its ancestors or itself, kept on a stack: O(n log n)
/// for n rules plus the stack walks, which are bounded by path depth times
/// rules per pod.
fn check_siblings_disjoint<'a>(
    pods: &'a [Allocation],
    members: &[usize],
    rules: &mut Vec<(&'a ScopeRule, usize)>,
) -> Result<(), String> {
    rules.clear();
    rules.extend(
        members
            .iter()
            .flat_map(|&i| pods[i].write_rules().map(move |r| (r, i))),
    );
    rules.sort_by(|x, y| preorder(&x.0.target, &y.0.target));
    let mut stack: Vec<(&ScopeRule, usize)> = Vec::new();
    for &(rule, owner) in rules.iter() {
        while let Some((top, _)) = stack.last() {
            match relation(&top.target, &rule.target) {
                Relation::Same | Relation::Above(_) => break,
                Relation::Below(_) | Relation::Apart => {
                    stack.pop();
                }
            }
        }
        for &(held, holder) in &stack {
            if holder != owner && overlaps_valid(held, rule) {
                return Err(format!(
                    "(a) write rule {} of pod `{}` overlaps write rule {} of pod `{}`, which is neither its ancestor nor its descendant",
                    DisplayRule(rule),
                    pods[owner].pod_name,
                    DisplayRule(held),
                    pods[holder].pod_name
                ));
            }
        }
        stack.push((rule, owner));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Allocation {
        Allocation {
            pod_name: PodName::new(name).unwrap(),
            pid: 1,
            start_time: 1,
            socket: "/run/p.sock".into(),
            scope_allow: vec![ScopeRule::read("/")],
            delegated_from: None,
            incarnation: String::new(),
        }
    }

    #[test]
    fn the_name_index_finds_exactly_the_names_present() {
        // Many names sharing their first 8 bytes, short names, names that
        // prefix others, and more names than cache slots.
        let mut names: Vec<String> = (0..600).map(|i| format!("workerpod-{i}")).collect();
        names.extend(["a", "ab", "abcdefgh", "abcdefghi", "abcdefgh-", "z"].map(String::from));
        let table: Table = names.iter().map(|n| pod(n)).collect();
        let pods = &table.allocations[..];
        let mut index = NameIndex::new(pods);
        let mut probes: Vec<String> = names.clone();
        probes.extend(
            [
                "",
                "b",
                "abc",
                "abcdefg",
                "abcdefghij",
                "workerpod-",
                "workerpod-600",
                "zz",
            ]
            .map(String::from),
        );
        // Twice, so that the second round hits the cache.
        for _ in 0..2 {
            for probe in &probes {
                let expected = pods.iter().position(|a| a.pod_name.as_str() == probe);
                assert_eq!(index.find(pods, probe), expected, "{probe}");
            }
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
