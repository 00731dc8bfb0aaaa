//! Liveness by etcd leases: [`LeaseHolder`] (a pod's side: a lease kept
//! alive, and a liveness key attached to it) and [`LeaseLiveness`] (the
//! table's side: alive while the key exists).
//!
//! A pid means nothing on another host, so on a distributed table an
//! allocation's `pid` is a *holder id*: a number unique in the table's
//! `P/live/` keys, chosen by the holder when it creates its key (a
//! create-if-absent transaction, so two holders never share one). The
//! key's value is the lease id, which the table records as the
//! allocation's `start_time`: a later holder that reuses the id holds
//! another lease, exactly as a later process reusing a pid has another
//! start time. The allocation itself is not attached to the lease, so a
//! lease that expires frees nothing by itself: the table's reclaim (or
//! the parent's reconcile) sees the key gone and releases the pod's scope
//! with the same rules, reparenting included, as for a dead pid.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};

use crate::error::ScopeError;
use crate::etcd::{EtcdError, EtcdStore, HolderGone};
use crate::liveness::Liveness;

/// [`Liveness`] on etcd: holder `id` is alive, with start time `L`, while
/// the key `P/live/<id>` exists and holds lease id `L`.
///
/// When etcd cannot be asked, a holder is presumed alive
/// ([`is_same_process`](Liveness::is_same_process) and
/// [`is_alive`](Liveness::is_alive) say `true`): wrongly reclaiming a live
/// pod's scope would let two pods write the same files, while a dead pod
/// kept a little longer only delays a grant.
#[derive(Debug, Clone)]
pub struct LeaseLiveness {
    store: EtcdStore,
}

impl LeaseLiveness {
    /// Liveness keys of the table `store` holds.
    pub fn new(store: &EtcdStore) -> Self {
        LeaseLiveness {
            store: store.clone(),
        }
    }

    /// The lease id held by holder `id`: `Ok(None)` if its key is gone.
    pub fn lease_of(&self, id: u32) -> Result<Option<i64>, EtcdError> {
        let key = self.store.inner().keys.liveness(id);
        let response = self.store.request_retrying(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })?;
        Ok(response
            .kvs()
            .first()
            .and_then(|kv| std::str::from_utf8(kv.value()).ok()?.parse().ok()))
    }

    /// A future that resolves once holder `id` is gone: its liveness key
    /// deleted (the lease revoked, or expired) or, with `lease` given (an
    /// allocation's `start_time`), holding another lease. At once if it
    /// already is; pending while etcd cannot be asked (presumed alive).
    ///
    /// Push liveness: one etcd watch on the table's liveness keys serves
    /// every future of this store, so a parent watching thousands of
    /// children holds one stream, and each revocation or expiry reaches it
    /// as one event. Dropping the future stops its watch. How no change
    /// is missed between reading a key and watching it is in the `watch`
    /// module's source documentation.
    pub fn watch_gone(&self, id: u32, lease: Option<u64>) -> HolderGone {
        self.store.inner().watcher().watch(id, lease)
    }
}

impl Liveness for LeaseLiveness {
    fn start_time(&self, pid: u32) -> Option<u64> {
        let lease = self.lease_of(pid).ok()??;
        u64::try_from(lease).ok()
    }

    fn is_same_process(&self, pid: u32, start_time: u64) -> bool {
        match self.lease_of(pid) {
            Ok(lease) => lease.and_then(|l| u64::try_from(l).ok()) == Some(start_time),
            Err(_) => true,
        }
    }

    fn is_alive(&self, pid: u32) -> bool {
        self.lease_of(pid).map_or(true, |lease| lease.is_some())
    }
}

/// A pod's lease and liveness key, kept alive by a task on the store's
/// runtime until dropped (which revokes the lease: the pod is seen gone at
/// once) or [`abandon`](Self::abandon)ed (the lease expires after its TTL,
/// as when the pod crashes or is partitioned away).
///
/// Use [`holder_id`](Self::holder_id) as the pod's `pid` in its
/// [`PodSpec`](crate::PodSpec) on a table with [`LeaseLiveness`].
#[derive(Debug)]
pub struct LeaseHolder {
    store: EtcdStore,
    id: u32,
    lease: i64,
    lost: Arc<AtomicBool>,
    keep_alive: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseHolder {
    /// Grants a lease of `ttl_secs` seconds, creates a liveness key under a
    /// fresh holder id attached to it, and starts keeping it alive.
    pub fn acquire(store: &EtcdStore, ttl_secs: i64) -> Result<LeaseHolder, ScopeError> {
        let lease = store
            .request(|mut c| async move { c.lease_grant(ttl_secs, None).await })?
            .id();
        let keys = &store.inner().keys;
        let id = loop {
            let mut bytes = [0u8; 4];
            getrandom::fill(&mut bytes).map_err(ScopeError::Entropy)?;
            // A positive i32, as a pid is, so the id is never 0.
            let id = (u32::from_ne_bytes(bytes) & 0x7fff_ffff).max(1);
            let key = keys.liveness(id);
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key,
                    lease.to_string(),
                    Some(PutOptions::new().with_lease(lease)),
                )]);
            if store
                .request(|mut c| async move { c.txn(txn).await })?
                .succeeded()
            {
                break id;
            }
        };
        let lost = Arc::new(AtomicBool::new(false));
        let keep_alive = store
            .inner()
            .spawn_keep_alive(lease, ttl_secs, Arc::clone(&lost));
        Ok(LeaseHolder {
            store: store.clone(),
            id,
            lease,
            lost,
            keep_alive: Some(keep_alive),
        })
    }

    /// The holder id: the pod's `pid` on the distributed table.
    pub fn holder_id(&self) -> u32 {
        self.id
    }

    /// The lease id (recorded as the allocation's `start_time`).
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// Whether the lease is, or may be, gone: etcd answered that it was
    /// revoked or expired, or a TTL passed since the last renewal etcd
    /// answered (the holder is cut off from the cluster, so the lease may
    /// have expired unseen). It never becomes `false` again. A pod that
    /// sees this must stop writing to its scope: its parent presumes it
    /// dead and reclaims it, and may grant the scope to another pod.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::Acquire)
    }

    /// `Err(LeaseLost)` once [`is_lost`](Self::is_lost): for a pod to call
    /// before each write to its scope.
    pub fn check(&self) -> Result<(), EtcdError> {
        if self.is_lost() {
            return Err(EtcdError::LeaseLost { lease: self.lease });
        }
        Ok(())
    }

    /// Stops keeping the lease alive without revoking it: it expires after
    /// its TTL, as a crashed or partitioned pod's does.
    pub fn abandon(mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
    }

    /// Revokes the lease now (its liveness key goes with it) and waits for
    /// etcd to confirm.
    pub fn revoke(mut self) -> Result<(), ScopeError> {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
        }
        let lease = self.lease;
        self.store
            .request(|mut c| async move { c.lease_revoke(lease).await })?;
        Ok(())
    }
}

impl Drop for LeaseHolder {
    fn drop(&mut self) {
        if let Some(task) = self.keep_alive.take() {
            task.abort();
            let mut client = self.store.inner().client.clone();
            let lease = self.lease;
            // Best effort, not waited for: if it is lost the lease expires.
            self.store.inner().runtime().spawn(async move {
                let _ = client.lease_revoke(lease).await;
            });
        }
    }
}
