//! The rules that change the table (DESIGN section 5): register,
//! delegate and release, the checks they run (each pod they consult passed
//! through the probe that reclaims the dead ones in their way), and the
//! one insertion point.

use std::collections::HashSet;

use pod_protocol::{Permission, PodName, ScopeRule};

use super::reclaim::Probe;
use super::undo::Undo;
use super::{Allocation, PodSpec, Table};
use crate::coverage::{grants_valid as grants, overlaps_valid};
use crate::error::ScopeError;

/// Who holds a new allocation: the new pod's own process (`pid: None`:
/// the spec's), or for a reservation the spawner's process until a
/// deadline.
pub(super) struct Holder {
    pub(super) pid: Option<u32>,
    pub(super) start_time: Option<u64>,
    pub(super) pending_until: Option<u64>,
}

impl Holder {
    pub(super) fn running(start_time: u64) -> Self {
        Holder {
            pid: None,
            start_time: Some(start_time),
            pending_until: None,
        }
    }
}

impl Table {
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
    pub(super) fn decide_reclaim_insert<F: FnMut(&Allocation) -> bool>(
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
    pub(super) fn decide_delegate<F: FnMut(&Allocation) -> bool>(
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
    pub(super) fn check_name_free<F: FnMut(&Allocation) -> bool>(
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
        self.release_moving(name, incarnation)
            .map(|(removed, _)| removed)
    }

    /// [`release`](Self::release), also returning the children it moved
    /// (as they are now: under the released pod's parent, their
    /// [`reparented`](Allocation::reparented) count grown), in table
    /// order: the pods the new manager tells where to report.
    pub fn release_moving(
        &mut self,
        name: &PodName,
        incarnation: Option<&str>,
    ) -> Result<(Allocation, Vec<Allocation>), ScopeError> {
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
        // Moved past one pod, and past those it had been moved past.
        let moved_past = removed.reparented.saturating_add(1);
        let mut moved = Vec::new();
        for (i, child) in self.allocations.iter_mut().enumerate() {
            if child.delegated_from.as_ref() == Some(name) {
                let from =
                    std::mem::replace(&mut child.delegated_from, removed.delegated_from.clone());
                let count = child.reparented;
                child.reparented = count.saturating_add(moved_past);
                if let Some(journal) = &mut self.journal {
                    journal.record(Undo::Reparented(i, from, count));
                }
                moved.push(child.clone());
            }
        }
        self.touch();
        Ok((removed, moved))
    }

    /// Fails with the first (rule order, then pod name order) requested
    /// write rule that overlaps a write rule of a live pod outside
    /// `allowed`. Each pod outside `allowed` with an overlapping write rule
    /// is probed in that order until the first live one; the error names
    /// the deepest owner below it ([`Table::deepest_owner`]).
    pub(super) fn find_write_conflict<F: FnMut(&Allocation) -> bool>(
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

    pub(super) fn insert(
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
            reparented: 0,
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
