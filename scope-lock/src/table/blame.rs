//! Whom a write conflict names: the pod whose *effective* write scope
//! overlaps the request, not merely the first pod holding an overlapping
//! rule. Registering `/srv/p1/sub/deeper/x` while `c1` holds `/srv/p1/sub`
//! and has delegated `/srv/p1/sub/deeper` to `c5` names `c5`: `c1` does
//! not write there itself, `c5` does, and `c5` is the pod to wait for.

use pod_protocol::ScopeRule;

use super::reclaim::Probe;
use super::{Allocation, Table};
use crate::coverage::{covers_valid, overlaps_valid};

/// Whether `child` holds, for every write rule of `owner` that overlaps
/// `request`, a write rule containing that overlap (a rule covering the
/// owner's rule, or covering the whole request). Then `owner`'s effective
/// write scope (its rules minus its children's) does not meet `request`,
/// and the blame passes to `child`.
///
/// The test is sufficient, not necessary: an overlap split between several
/// children, or contained in a child's rule that covers neither whole, keeps
/// the blame on `owner`, whose rules do overlap the request.
fn takes_over(owner: &Allocation, child: &Allocation, request: &ScopeRule) -> bool {
    owner
        .write_rules()
        .filter(|held| overlaps_valid(held, request))
        .all(|held| {
            child
                .write_rules()
                .any(|w| covers_valid(w, held) || covers_valid(w, request))
        })
}

impl Table {
    /// The deepest live pod at or below `owner` (a live pod whose write
    /// rules overlap `request`) whose effective write scope overlaps it:
    /// from `owner`, step down to the first child (by name) that
    /// [`takes_over`] the overlap, while there is one.
    ///
    /// Every pod probed overlaps `request` (a descendant's rules lie inside
    /// its ancestors'), so the probe set stays the pods that could refuse
    /// the request. A dead pod is skipped as reclaimed: the children of a
    /// live pod are the live pods whose nearest live ancestor it is, as
    /// they would be after a full reclaim, so the answer is the one a full
    /// reclaim first would give. Descendants of a pod outside the spawner's
    /// lineage are outside it too.
    pub(super) fn deepest_owner<'a, F: FnMut(&Allocation) -> bool>(
        &'a self,
        owner: &'a Allocation,
        request: &ScopeRule,
        probe: &mut Probe<F>,
    ) -> &'a Allocation {
        let mut owner = owner;
        loop {
            let next = self.allocations.iter().find(|c| {
                c.write_rules().any(|w| overlaps_valid(w, request))
                    && takes_over(owner, c, request)
                    && self.is_live_child(c, owner, probe)
            });
            match next {
                Some(child) => owner = child,
                None => return owner,
            }
        }
    }

    /// Whether `pod` is a child of `owner` once dead pods are reclaimed:
    /// a live descendant of `owner` with only dead pods between them. The
    /// descent is checked first without probing, so only descendants of
    /// `owner` are probed (never, say, the spawner's ancestors).
    fn is_live_child<F: FnMut(&Allocation) -> bool>(
        &self,
        pod: &Allocation,
        owner: &Allocation,
        probe: &mut Probe<F>,
    ) -> bool {
        let mut between = Vec::new();
        let mut parent = pod.delegated_from.as_ref();
        loop {
            let Some(name) = parent else {
                return false;
            };
            if *name == owner.pod_name {
                break;
            }
            // A missing parent, or a cycle (only in an unchecked table).
            let Some(a) = self.get(name.as_str()) else {
                return false;
            };
            if between.len() >= self.allocations.len() {
                return false;
            }
            between.push(a);
            parent = a.delegated_from.as_ref();
        }
        between.iter().all(|a| !probe.is_live(a)) && probe.is_live(pod)
    }
}
