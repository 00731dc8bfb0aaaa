//! [`PodContext`] on the scope table on etcd (feature `etcd`): the
//! allocation is held by a lease ([`LeaseHolder`]) the context keeps alive
//! while the pod runs, so pods on other hosts see it alive exactly as long
//! as it is (or, if it is cut off, until the lease's TTL passes).

use pod_scope_lock::{
    EtcdAddress, EtcdOptions, EtcdStore, LeaseHolder, LeaseLiveness, ScopeError, ScopeTable,
};
use pod_transport::{MethodSender, UnixSender};

use super::{ContextError, PodContext};
use crate::guard::{off_executor, on_table};
use crate::handoff::{Handoff, HandoffError, TableLocation, POD_SCOPE_LOCK, POD_SCOPE_STORE};

impl PodContext<EtcdStore, LeaseLiveness, UnixSender> {
    /// Reads the handoff variables of this process, connects to the table
    /// on etcd that `POD_SCOPE_STORE` names (with `options`), and adopts
    /// the reservation as [`adopt_leased`](PodContext::adopt_leased) does,
    /// with a lease of `lease_ttl_secs` seconds.
    ///
    /// Refused with one typed error, changing nothing: a missing or
    /// invalid variable, or a handoff to a table file
    /// ([`ContextError::Handoff`]: that one is [`PodContext::from_env`]'s),
    /// a `tls://` `POD_PARENT_SOCKET` (this reports over Unix sockets: over
    /// TLS, use [`adopt_leased`](PodContext::adopt_leased) with
    /// `AddressSender::for_handoff`, feature `tls`), an unreachable
    /// cluster or a refused adoption ([`ContextError::Adopt`]). Reads the
    /// environment: for binaries and examples, not libraries.
    pub async fn from_env_etcd(
        options: EtcdOptions,
        lease_ttl_secs: i64,
    ) -> Result<Self, ContextError> {
        let handoff = Handoff::from_env()?;
        handoff.unix_parent("PodContext::from_env_etcd")?;
        let address = match &handoff.scope {
            TableLocation::Store(address) => address.clone(),
            other => {
                return Err(HandoffError::Invalid {
                    variable: POD_SCOPE_LOCK,
                    value: other.value(),
                    reason: "PodContext::from_env_etcd opens tables on etcd \
                             (POD_SCOPE_STORE); a table file is PodContext::from_env's"
                        .into(),
                }
                .into())
            }
        };
        let parsed = EtcdAddress::parse(&address).map_err(|error| HandoffError::Invalid {
            variable: POD_SCOPE_STORE,
            value: address.clone(),
            reason: error.to_string(),
        })?;
        let store = off_executor(move || EtcdStore::connect(&parsed, options))
            .await
            .map_err(|source| ContextError::Adopt {
                name: handoff.name.clone(),
                source,
            })?;
        let table = ScopeTable::new(store.clone(), LeaseLiveness::new(&store));
        PodContext::adopt_leased(handoff, table, UnixSender::default(), lease_ttl_secs).await
    }
}

impl<U: MethodSender + Clone> PodContext<EtcdStore, LeaseLiveness, U> {
    /// Adopts the reservation of `handoff` in the etcd `table`, held by a
    /// lease of `lease_ttl_secs` seconds that the context takes now and
    /// keeps alive ([`lease`](PodContext::lease)) and revokes when it is
    /// dropped (after the release, by [`shut_down`](PodContext::shut_down)
    /// or by the drop itself). A lease the context cannot keep alive (the cluster is cut
    /// off for a TTL) is lost: [`LeaseHolder::check`] says so, and the pod
    /// must stop writing to its scope, which its parent then reclaims.
    ///
    /// A reservation its spawner already adopted for this incarnation,
    /// with a lease of its own, is accepted as it is: `podctl run` holds
    /// its child's lease for as long as the child runs. The context then
    /// holds none ([`lease`](PodContext::lease) is `None`).
    ///
    /// Refused as [`adopt`](PodContext::adopt) is, and
    /// ([`ContextError::Adopt`]) when no lease can be granted; nothing
    /// is changed then (a lease granted for a refused adoption is revoked).
    pub async fn adopt_leased(
        handoff: Handoff,
        table: ScopeTable<EtcdStore, LeaseLiveness>,
        sender: U,
        lease_ttl_secs: i64,
    ) -> Result<Self, ContextError> {
        let refused = |source: ScopeError| ContextError::Adopt {
            name: handoff.name.clone(),
            source,
        };
        let (name, incarnation) = (handoff.name.clone(), handoff.incarnation.clone());
        let by_spawner = on_table(&table, move |table| {
            Ok::<_, ScopeError>(table.find(&name)?.and_then(|a| {
                let ours = a.incarnation.as_deref() == Some(incarnation.as_str());
                (ours && a.pending_until.is_none()).then_some(a.pid)
            }))
        })
        .await
        .map_err(refused)?;
        if let Some(holder) = by_spawner {
            return PodContext::adopt(handoff, table, sender, holder).await;
        }
        let holder = on_table(&table, move |table| {
            LeaseHolder::acquire(table.store(), lease_ttl_secs)
        })
        .await
        .map_err(refused)?;
        // A refusal drops `holder`, which revokes the lease.
        let mut context = PodContext::adopt(handoff, table, sender, holder.holder_id()).await?;
        context.lease = Some(holder);
        Ok(context)
    }

    /// The lease this context holds its allocation by: `None` when its
    /// spawner holds it. Check it ([`LeaseHolder::check`]) before each
    /// write to the pod's scope, or ask [`lease_lost`](Self::lease_lost).
    pub fn lease(&self) -> Option<&LeaseHolder> {
        self.lease.as_ref()
    }

    /// Whether the lease this context holds is, or may be, gone: etcd
    /// said it was revoked or expired, or a TTL passed without an
    /// answered renewal (the pod is cut off from the cluster). It never
    /// becomes `false` again. No I/O: a flag the keep-alive task sets.
    ///
    /// What a pod must do once it is `true`: stop writing to its scope at
    /// once, and exit. Its parent has presumed it crashed (its lease
    /// watch fired, or its reconcile found the lease gone), released its
    /// allocation and may grant the same paths to another pod; the
    /// context's `ShutDown` and release at the end change nothing then.
    /// Checking before each write is what keeps two pods from writing the
    /// same files: the flag is set no later than the lease can have
    /// expired on etcd.
    ///
    /// `false` when the spawner holds the lease ([`lease`](Self::lease)
    /// is `None`): the spawner watches it then (`podctl run` stops its
    /// child with SIGTERM once the lease it holds for it is lost).
    pub fn lease_lost(&self) -> bool {
        self.lease.as_ref().is_some_and(LeaseHolder::is_lost)
    }
}
