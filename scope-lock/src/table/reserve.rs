//! The spawn handshake's two halves (DESIGN section 11): a spawner
//! *reserves* a child's allocation before the child's process exists, held
//! under the spawner's process until a deadline, and the child *adopts* it
//! once running.

use pod_protocol::PodName;

use super::rules::Holder;
use super::undo::Undo;
use super::{Allocation, PodSpec, Table};
use crate::error::ScopeError;

impl Table {
    /// Reserves an allocation for a child of `from` that does not run yet:
    /// every rule of [`delegate`](Self::delegate) applies (and the same
    /// stale pods in its way are reclaimed), but the allocation is held
    /// under the spawner's pid and start time (`spec.pid` is ignored) with
    /// `pending_until` set, until the child
    /// [`adopt`](Self::adopt)s it.
    ///
    /// A spawner that holds a legacy allocation lends its pid alone.
    pub fn reserve_reclaiming(
        &mut self,
        from: &PodName,
        mut spec: PodSpec,
        incarnation: String,
        pending_until: u64,
        is_live: impl FnMut(&Allocation) -> bool,
    ) -> Result<Allocation, ScopeError> {
        // A missing spawner is refused by the checks (UnknownPod) before
        // these are used.
        let (pid, start_time) = self
            .get(from.as_str())
            .map_or((spec.pid, None), |s| (s.pid, s.start_time));
        spec.pid = pid;
        let holder = Holder {
            pid: Some(pid),
            start_time,
            pending_until: Some(pending_until),
        };
        let parent = Some(from);
        self.decide_reclaim_insert(spec, holder, incarnation, parent, is_live, |t, s, p| {
            t.decide_delegate(from, s, p)
        })
    }

    /// Hands the reservation `name` to the child's process: `pid` and its
    /// `start_time` replace the spawner's, and `pending_until` is cleared.
    ///
    /// Refused, changing nothing: [`ScopeError::UnknownPod`];
    /// [`ScopeError::IncarnationMismatch`] if `incarnation` is not the one
    /// minted by the reservation; [`ScopeError::NotReserved`] if it was
    /// adopted already (or never reserved); [`ScopeError::ReservationExpired`]
    /// if `now_unix_ms` is past its deadline.
    pub fn adopt(
        &mut self,
        name: &PodName,
        incarnation: &str,
        pid: u32,
        start_time: u64,
        now_unix_ms: u64,
    ) -> Result<Allocation, ScopeError> {
        let Ok(index) = self.position(name.as_str()) else {
            return Err(ScopeError::UnknownPod { name: name.clone() });
        };
        let held = &self.allocations[index];
        match held.incarnation.as_deref() {
            // A legacy allocation (no incarnation) is never a reservation.
            None => return Err(ScopeError::NotReserved { name: name.clone() }),
            Some(minted) if minted != incarnation => {
                return Err(ScopeError::IncarnationMismatch {
                    name: name.clone(),
                    held: minted.to_owned(),
                    requested: incarnation.to_owned(),
                })
            }
            Some(_) => {}
        }
        let Some(deadline) = held.pending_until else {
            return Err(ScopeError::NotReserved { name: name.clone() });
        };
        if now_unix_ms > deadline {
            return Err(ScopeError::ReservationExpired {
                name: name.clone(),
                deadline_unix_ms: deadline,
            });
        }
        let adopted = Allocation {
            pid,
            start_time: Some(start_time),
            pending_until: None,
            ..held.clone()
        };
        let old = std::mem::replace(&mut self.allocations[index], adopted.clone());
        if let Some(journal) = &mut self.journal {
            journal.record(Undo::Replaced(index, old));
        }
        self.touch();
        Ok(adopted)
    }
}
