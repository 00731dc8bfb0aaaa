//! Reclaiming dead pods: the full sweep ([`Table::reclaim`]) and the
//! probe through which register and delegate reclaim only the dead pods in
//! their way, with the argument that both give the same answers.
//!
//! # The order of the probes
//!
//! `register` and `delegate` probe, in the order the checks consult them:
//!
//! - `delegate`: the spawner first (dead, it is reclaimed and the answer is
//!   `UnknownPod`);
//! - the holder of the requested name (`DuplicateName` only if it is live);
//! - the Pods whose write rules overlap a requested write rule, outside the
//!   spawner's lineage for `delegate`, in rule order then name order, up to
//!   the first live one, then its descendants the blame steps down to: the
//!   deepest live one is the `WriteConflict` competitor.
//!
//! The spawner's ancestors are never probed: they may hold overlapping scope
//! whether alive or not. Each Pod is probed at most once per request.
//!
//! # Why the targeted reclaim answers as a full reclaim would
//!
//! *Why the answer is the one a full reclaim first would give.* Reclaiming
//! removes Pods and reparents survivors to their nearest surviving ancestor, so
//! among survivors the ancestor relation is the original one, whatever subset
//! is removed: a live Pod is in the spawner's lineage exactly when it would be
//! after a full reclaim, and reparenting never moves a Pod into the lineage.
//! Removing a dead Pod only ever removes a conflict, so only Pods that could
//! refuse the request need probing. Each check sees the same thing either way:
//! the spawner and the name holder count only if live; `NotSubset` looks only
//! at the spawner's rules; the first live Pod (by rule, then name) outside the
//! lineage with an overlapping write rule is the same Pod, since the scan skips
//! the dead ones it meets, and a dead ancestor inside the lineage is allowed
//! either way. On success the new Pod gets a live parent, so reclaiming the
//! remaining dead Pods afterwards gives exactly the table a full reclaim first
//! would have produced: both agree on every live Pod, its rules and its
//! nearest live ancestor. The invariant holds on the stored table, dead Pods
//! included: a Pod outside the lineage that overlaps the new one is one the
//! scan met, and it was reclaimed. A proptest checks all this on random tables
//! with random deaths and pid reuse.
//!
//! *What differs from a full reclaim first*: dead allocations that do not stand
//! in the way of the request stay in the table (`list`, `find` and `owner_of`
//! still show them, as they did between sweeps before) until a request they
//! would block reclaims them, or the next `reclaim_stale` or reconcile does.
//! DESIGN.md section 5 says `reclaim_stale` "runs before register and
//! delegate"; this crate reclaims what blocks them, with the same answers.
//!
//! Tested by a proptest: a proptest of the targeted reclaim: on random valid tables with random
//!   deaths and pid reuse, `register`/`delegate` give the answer (success or
//!   the same error, competitor and rule) of a full reclaim followed by the
//!   pure rule; the resulting table, once its remaining dead Pods are
//!   reclaimed, equals the reference; only the spawner, the name holder and
//!   Pods with overlapping write rules are probed, each at most once, and
//!   exactly those found dead are removed. Part of each random table is
//!   legacy allocations.
//!
//! When every request swept the whole table first, 10,000 allocations cost
//! 1.45-1.5x with a free probe and 8-8.5x with `/proc` (9.5x on tmpfs). The targeted probe is what removed that cost.

use std::collections::{HashMap, HashSet};

use pod_protocol::PodName;

use super::undo::Undo;
use super::{Allocation, Table};

impl Table {
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
    pub(super) fn remove_dead(&mut self, dead: &HashSet<PodName>) -> Vec<Allocation> {
        if dead.is_empty() {
            return Vec::new();
        }
        // The nearest surviving ancestor of each dead pod, and how much a
        // child of it is moved past on the way there (see
        // `Allocation::reparented`): walk up through dead ones, then
        // remember the answer for every pod on the walk, so each dead pod
        // is walked over once (linear even for a long chain).
        let mut heir: HashMap<PodName, (Option<PodName>, u64)> = HashMap::new();
        for name in dead {
            if heir.contains_key(name) || self.get(name.as_str()).is_none() {
                continue;
            }
            let mut walked = vec![name.clone()];
            let mut parent = self
                .get(name.as_str())
                .and_then(|a| a.delegated_from.clone());
            // Moved past above the walk, when it joins one walked before.
            let mut beyond = 0u64;
            while let Some(p) = parent.clone().filter(|p| dead.contains(p)) {
                if let Some((known, past)) = heir.get(&p) {
                    parent = known.clone();
                    beyond = *past;
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
            // Top down: a child of each walked pod is moved past that pod,
            // what it had been moved past, and everything above it.
            let mut past = beyond;
            for pod in walked.into_iter().rev() {
                let own = self.get(pod.as_str()).map_or(0, |a| a.reparented);
                past = past.saturating_add(own).saturating_add(1);
                heir.insert(pod, (parent.clone(), past));
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
            if let Some((new_parent, past)) = a.delegated_from.as_ref().and_then(|p| heir.get(p)) {
                let from = std::mem::replace(&mut a.delegated_from, new_parent.clone());
                let count = a.reparented;
                a.reparented = count.saturating_add(*past);
                if let Some(journal) = &mut self.journal {
                    journal.record(Undo::Reparented(i, from, count));
                }
            }
        }
        self.touch();
        removed
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
///   pods outside the lineage are the live ones outside it in ours). The
///   blame then steps down to children (`Table::deepest_owner`): the
///   children of a live pod in `full` are the live pods whose nearest live
///   ancestor it is in ours, which is what the step down probes for. Dead
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
pub(super) struct Probe<F> {
    is_live: F,
    /// Pods found live.
    live: HashSet<PodName>,
    /// Pods found dead: reclaimed after the checks.
    pub(super) dead: HashSet<PodName>,
}

impl<F: FnMut(&Allocation) -> bool> Probe<F> {
    pub(super) fn new(is_live: F) -> Self {
        Probe {
            is_live,
            live: HashSet::new(),
            dead: HashSet::new(),
        }
    }

    pub(super) fn is_live(&mut self, allocation: &Allocation) -> bool {
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
