//! Where a pod reports: its upward link, which a reparent notice switches.
//!
//! A pod's events, its relays and its final `ShutDown` all go to one
//! address, the parent's. When the parent dies, the scope table hands the
//! pod to the pod above, which tells it so with a `reparent` notice
//! (DESIGN section 12); every holder of the link (the endpoint's
//! [`Parent`](crate::Parent), the [`PodContext`](crate::PodContext) and its
//! drop guard) sees the new address at once, because they share one
//! [`UpwardLink`].

use std::sync::{Arc, RwLock};

/// The address a pod reports to, shared by everything that reports for it
/// (cloning shares it), and the `seq` of the last reparent notice that
/// moved it.
///
/// ```
/// use pod_events::UpwardLink;
///
/// let link = UpwardLink::new("/run/pods/child/sock");
/// let relay = link.clone();
/// assert!(link.redirect("/run/pods/root/sock", 2));
/// assert_eq!(relay.address(), "/run/pods/root/sock");
/// // An older notice never overrides a newer one.
/// assert!(!link.redirect("/run/pods/child/sock", 1));
/// assert_eq!((relay.address().as_str(), relay.seq()), ("/run/pods/root/sock", 2));
/// ```
#[derive(Debug, Clone)]
pub struct UpwardLink(Arc<RwLock<Target>>);

#[derive(Debug)]
struct Target {
    address: String,
    seq: u64,
}

impl UpwardLink {
    /// A link to `address`, never redirected (`seq` 0).
    pub fn new(address: impl Into<String>) -> Self {
        UpwardLink(Arc::new(RwLock::new(Target {
            address: address.into(),
            seq: 0,
        })))
    }

    /// The address to report to now.
    pub fn address(&self) -> String {
        self.read(|target| target.address.clone())
    }

    /// The `seq` of the last notice applied (0: none).
    pub fn seq(&self) -> u64 {
        self.read(|target| target.seq)
    }

    /// Reports to `address` from now on, unless a notice with a higher
    /// `seq` was applied already; whether the address changed. A notice
    /// with the same `seq` as the last is applied again (a repeat of it is
    /// harmless and says the same).
    pub fn redirect(&self, address: impl Into<String>, seq: u64) -> bool {
        let address = address.into();
        let mut target = self.0.write().unwrap_or_else(|e| e.into_inner());
        if seq < target.seq {
            return false;
        }
        target.seq = seq;
        if target.address == address {
            return false;
        }
        target.address = address;
        true
    }

    fn read<T>(&self, f: impl FnOnce(&Target) -> T) -> T {
        f(&self.0.read().unwrap_or_else(|e| e.into_inner()))
    }
}
