//! A restarted pod takes back its children (DESIGN section 12).
//!
//! When a pod dies, its children are moved up to its parent. If the pod
//! restarts under its old name, registering its old scope again would
//! conflict with those very children; [`Table::restart_reclaiming`]
//! allocates it and moves them back under it, in one step.

use std::collections::HashSet;

use pod_protocol::PodName;

use super::reclaim::Probe;
use super::rules::Holder;
use super::undo::Undo;
use super::{Allocation, PodSpec, Table};
use crate::coverage::grants_valid as grants;
use crate::error::ScopeError;

/// What a restart did: the restarted pod's new allocation, and the
/// children it took back, as they are now (under it, their
/// [`reparented`](Allocation::reparented) count one higher: the `seq` of
/// the reparent notice it sends them).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Restarted {
    /// The restarted pod's allocation (a new incarnation).
    pub allocation: Allocation,
    /// The children taken back.
    pub taken_back: Vec<Allocation>,
}

impl Table {
    /// Allocates `spec` as [`register_reclaiming`](Self::register_reclaiming)
    /// (`from` `None`) or [`delegate_reclaiming`](Self::delegate_reclaiming)
    /// would, and takes back the pods of `former_children` that the table
    /// moved away while the pod was gone.
    ///
    /// Every stale allocation is reclaimed first (so the pod's own old
    /// allocation, if it is still there, is gone and its children moved
    /// up). A pod of `former_children` (name and incarnation, as the
    /// restarted pod's registry holds them) is taken back when it is still
    /// that incarnation, live, now directly under `from` (where its
    /// parent's death moved it), and every one of its rules lies within
    /// the requested scope; its subtree comes with it, so none of them
    /// counts as a conflict. Any other pod is left where it is, and one of
    /// them whose write scope overlaps the request refuses it as
    /// [`delegate`](Self::delegate) would.
    ///
    /// The rule for a name taken in the meantime: a live pod holding the
    /// name refuses the restart ([`ScopeError::DuplicateName`]); a pod of
    /// `former_children` whose name now belongs to another incarnation is
    /// not that child and is not taken.
    pub fn restart_reclaiming(
        &mut self,
        from: Option<&PodName>,
        spec: PodSpec,
        start_time: u64,
        incarnation: String,
        former_children: &[(PodName, Option<String>)],
        mut is_live: impl FnMut(&Allocation) -> bool,
    ) -> Result<Restarted, ScopeError> {
        spec.validate()?;
        self.reclaim(&mut is_live);
        let taken: Vec<PodName> = former_children
            .iter()
            .filter(|(name, incarnation)| {
                self.get(name.as_str()).is_some_and(|a| {
                    a.incarnation == *incarnation
                        && a.delegated_from.as_ref() == from
                        && a.scope_allow.iter().all(|rule| grants(&spec.scope, rule))
                })
            })
            .map(|(name, _)| name.clone())
            .collect();
        // Everything left is live: the reclaim took the rest.
        let mut probe = Probe::new(|_: &Allocation| true);
        let mut allowed = self.subtrees(&taken);
        if let Some(from) = from {
            let Some(spawner) = self.get(from.as_str()) else {
                return Err(ScopeError::UnknownPod { name: from.clone() });
            };
            if let Some(rule) = spec
                .scope
                .iter()
                .find(|rule| !grants(&spawner.scope_allow, rule))
            {
                return Err(ScopeError::NotSubset {
                    spawner: from.clone(),
                    rule: rule.clone(),
                });
            }
            allowed.extend(self.lineage(from.as_str()));
        }
        self.check_name_free(&spec, &mut probe)?;
        self.find_write_conflict(&spec.scope, &allowed, &mut probe)?;
        let name = spec.pod_name.clone();
        let allocation = self.insert(
            spec,
            Holder::running(start_time),
            incarnation,
            from.cloned(),
        );
        let mut taken_back = Vec::with_capacity(taken.len());
        for (i, child) in self.allocations.iter_mut().enumerate() {
            if taken.contains(&child.pod_name) {
                let from = child.delegated_from.replace(name.clone());
                let count = child.reparented;
                child.reparented = count.saturating_add(1);
                if let Some(journal) = &mut self.journal {
                    journal.record(Undo::Reparented(i, from, count));
                }
                taken_back.push(child.clone());
            }
        }
        self.touch();
        Ok(Restarted {
            allocation,
            taken_back,
        })
    }

    /// The pods of `roots` and every pod below them.
    fn subtrees(&self, roots: &[PodName]) -> HashSet<PodName> {
        let mut found: HashSet<PodName> = roots.iter().cloned().collect();
        let mut stack: Vec<PodName> = roots.to_vec();
        while let Some(name) = stack.pop() {
            for child in self.children(name.as_str()) {
                if found.insert(child.pod_name.clone()) {
                    stack.push(child.pod_name.clone());
                }
            }
        }
        found
    }
}
