//! The child's side of the lifecycle (DESIGN section 11): who it is,
//! where it reports, and its allocation, adopted at start and released
//! exactly once at exit.
//!
//! A spawner reserves the child's allocation and starts it with the
//! handoff variables ([`crate::handoff`]); [`PodContext::from_env`] reads
//! them and adopts the reservation, so from then on the grant is held by
//! the child's own process (its pid and start time). Reports are
//! fire-and-forget; the last one, `ShutDown`, goes out with the release,
//! from [`PodContext::shut_down`] or, failing that, from the drop guard.
//!
//! A child whose parent listens over TLS (`POD_PARENT_SOCKET` is
//! `tls://`, feature `tls`) reports through an [`AddressSender`] that
//! presents the TLS identity its spawner handed over:
//! `PodContext::from_env_tls`, or [`PodContext::adopt`] with
//! `AddressSender::for_handoff` for any other table.
//! [`PodContext::from_env`] reports over Unix sockets only, and refuses
//! such a handoff rather than lose every report.
//!
//! On a table on etcd (feature `etcd`) a pid means nothing to the other
//! hosts: `PodContext::from_env_etcd` and `PodContext::adopt_leased`
//! hold the allocation by an etcd lease the context keeps alive, revoked
//! when the context drops, after the release.

use std::path::Path;

use pod_protocol::{PodEvent, PodName};
use pod_scope_lock::{
    Allocation, FileStore, Liveness, ProcLiveness, ScopeError, ScopeTable, TableStore,
};
use pod_transport::{MethodSender, UnixSender};

#[cfg(feature = "etcd")]
mod etcd;

use crate::guard::{on_table, Departure, Guard};
use crate::handoff::{Handoff, HandoffError};
#[cfg(feature = "tls")]
use crate::AddressSender;
use crate::UpwardLink;

/// Why a child could not take up its place in the tree. Nothing was
/// changed in the scope table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// A handoff variable is missing or invalid (the error names it).
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// The scope table refused the adoption: a foreign incarnation
    /// ([`ScopeError::IncarnationMismatch`]), an expired reservation
    /// ([`ScopeError::ReservationExpired`]), one adopted by another
    /// process ([`ScopeError::NotReserved`]), no reservation at all
    /// ([`ScopeError::UnknownPod`]), or an unreadable table.
    #[error("pod `{name}` could not adopt the reservation its spawner made: {source}")]
    Adopt {
        /// The pod's name.
        name: PodName,
        /// The table's answer.
        #[source]
        source: ScopeError,
    },
}

/// A child pod's identity and allocation, from its spawner's handoff.
///
/// Built by [`from_env`](PodContext::from_env) (the real table and Unix
/// sockets) or [`adopt`](PodContext::adopt) (any table and transport, for
/// tests). Reports with [`turn_ended`](PodContext::turn_ended) and
/// [`errored`](PodContext::errored) are fire-and-forget;
/// [`shut_down`](PodContext::shut_down) reports `ShutDown` with the
/// incarnation and releases the allocation, exactly once. Dropping the
/// context without it does the same, best-effort.
#[derive(Debug)]
pub struct PodContext<S = FileStore, L = ProcLiveness, U = UnixSender>
where
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
{
    handoff: Handoff,
    allocation: Allocation,
    sender: U,
    upward: UpwardLink,
    guard: Guard<S, L, U>,
    /// The lease the allocation is held by on an etcd table, when this
    /// context took one (`adopt_leased`):
    /// declared after the guard, so it is revoked only once the guard has
    /// released the allocation.
    #[cfg(feature = "etcd")]
    lease: Option<pod_scope_lock::LeaseHolder>,
}

impl PodContext {
    /// Reads the handoff variables of this process and adopts the
    /// reservation they name in the scope table file `POD_SCOPE_LOCK`,
    /// with this process's pid, reporting over Unix sockets. A handoff to
    /// a table on etcd (`POD_SCOPE_STORE`) is refused
    /// ([`ContextError::Handoff`]): that is `from_env_etcd`'s (feature
    /// `etcd`); so is one whose `POD_PARENT_SOCKET` is `tls://`: that is
    /// `from_env_tls`'s (feature `tls`).
    ///
    /// Refused with one typed error, changing nothing, when a variable is
    /// missing or invalid ([`ContextError::Handoff`], naming it) or the
    /// table refuses the adoption ([`ContextError::Adopt`]). Reads the
    /// environment: for binaries and examples, not libraries.
    pub async fn from_env() -> Result<PodContext, ContextError> {
        let handoff = Handoff::from_env()?;
        handoff.unix_parent("PodContext::from_env")?;
        let table = ScopeTable::with_proc_liveness(FileStore::new(
            handoff.table_file("PodContext::from_env")?,
        ));
        PodContext::adopt(handoff, table, UnixSender::default(), std::process::id()).await
    }
}

#[cfg(feature = "tls")]
impl PodContext<FileStore, ProcLiveness, AddressSender> {
    /// [`from_env`](PodContext::from_env) for a child that may report over
    /// TLS: reports go through [`AddressSender::for_handoff`] (with the
    /// default [`TlsSendConfig`](pod_transport::tls::TlsSendConfig)), so a
    /// `tls://` `POD_PARENT_SOCKET` is reached with the identity in
    /// `POD_TLS_CERT`, `POD_TLS_KEY` and `POD_TLS_CA`, and a Unix one as
    /// `from_env` reaches it. Feature `tls`.
    ///
    /// Refused as `from_env` is, and ([`ContextError::Handoff`], naming
    /// the variable) when a TLS file cannot be read or parsed or the key
    /// is not the certificate's; nothing is changed in the table then.
    /// Reads the environment: for binaries and examples, not libraries.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), pod_events::ContextError> {
    /// let context = pod_events::PodContext::from_env_tls().await?;
    /// context.turn_ended();
    /// context.shut_down().await;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_env_tls() -> Result<Self, ContextError> {
        let handoff = Handoff::from_env()?;
        let table = ScopeTable::with_proc_liveness(FileStore::new(
            handoff.table_file("PodContext::from_env_tls")?,
        ));
        let sender = AddressSender::for_handoff(&handoff, Default::default())?;
        PodContext::adopt(handoff, table, sender, std::process::id()).await
    }
}

impl<S, L, U> PodContext<S, L, U>
where
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
{
    /// Adopts the reservation of `handoff` in `table` for the process
    /// `pid`, reporting through `sender`.
    ///
    /// A reservation already adopted for this very process (pid and start
    /// time) with this incarnation is accepted as it is: a supervisor such
    /// as `podctl run` adopts on behalf of a child that may not do it
    /// itself, and a child built on this crate must not fail for that.
    pub async fn adopt(
        handoff: Handoff,
        table: ScopeTable<S, L>,
        sender: U,
        pid: u32,
    ) -> Result<Self, ContextError> {
        let (name, incarnation) = (handoff.name.clone(), handoff.incarnation.clone());
        let adopted = on_table(&table, move |table| {
            adopt_or_accept(table, &name, &incarnation, pid)
        })
        .await;
        let allocation = adopted.map_err(|source| ContextError::Adopt {
            name: handoff.name.clone(),
            source,
        })?;
        let upward = UpwardLink::new(handoff.parent_socket.clone());
        let guard = Guard::new(
            handoff.name.clone(),
            handoff.incarnation.clone(),
            table,
            Some((sender.clone(), upward.clone())),
        );
        Ok(PodContext {
            handoff,
            allocation,
            sender,
            upward,
            guard,
            #[cfg(feature = "etcd")]
            lease: None,
        })
    }

    /// This pod's name.
    pub fn name(&self) -> &PodName {
        &self.handoff.name
    }

    /// This pod's incarnation id.
    pub fn incarnation(&self) -> &str {
        &self.handoff.incarnation
    }

    /// The parent named by the handoff: the pod that spawned this one.
    /// Once a reparent notice moved this pod (its parent died), reports
    /// go to another pod: see [`upward`](Self::upward).
    pub fn parent(&self) -> &PodName {
        &self.handoff.parent
    }

    /// Where reports go now: the handoff's parent socket, until a reparent
    /// notice moves it.
    pub fn parent_socket(&self) -> String {
        self.upward.address()
    }

    /// The link reports go through, shared with this pod's endpoint (the
    /// [`Pod`](crate::Pod) facade passes it to its
    /// [`Parent`](crate::Parent)), so a reparent notice the endpoint
    /// applies moves this context's reports too.
    pub fn upward(&self) -> &UpwardLink {
        &self.upward
    }

    /// The socket this pod listens on.
    pub fn socket(&self) -> &str {
        &self.handoff.socket
    }

    /// Everything the spawner handed over.
    pub fn handoff(&self) -> &Handoff {
        &self.handoff
    }

    /// The allocation as adopted (this process as its holder).
    pub fn allocation(&self) -> &Allocation {
        &self.allocation
    }

    /// The scope table (for a pod that spawns children of its own).
    pub fn scopes(&self) -> &ScopeTable<S, L> {
        &self.guard.table
    }

    /// The transport reports go through.
    pub fn sender(&self) -> &U {
        &self.sender
    }

    /// Reports `TurnEnded`, fire-and-forget (a failed send is logged and
    /// dropped). `None` once shut down: nothing is reported after
    /// `ShutDown`. Must be called inside a tokio runtime; the handle is
    /// for tests and orderly exits, and dropping it detaches the task.
    pub fn turn_ended(&self) -> Option<tokio::task::JoinHandle<()>> {
        self.report(PodEvent::TurnEnded {
            pod_name: self.name().to_string(),
            incarnation: Some(self.incarnation().to_owned()),
        })
    }

    /// Reports `Errored` with `message`, as [`turn_ended`](Self::turn_ended)
    /// does. The parent renders the message escaped and bounded.
    pub fn errored(&self, message: impl Into<String>) -> Option<tokio::task::JoinHandle<()>> {
        self.report(PodEvent::Errored {
            pod_name: self.name().to_string(),
            message: message.into(),
            incarnation: Some(self.incarnation().to_owned()),
        })
    }

    fn report(&self, event: PodEvent) -> Option<tokio::task::JoinHandle<()>> {
        if self.guard.is_done() {
            return None;
        }
        let parent = self.upward.address();
        crate::fire_and_forget(&self.sender, Some(Path::new(&parent)), event)
    }

    /// Reports `ShutDown` with the incarnation and releases the
    /// allocation, exactly once: a second call (or the drop afterwards)
    /// does nothing and says so ([`Departure::first`] is `false`). Never
    /// fails: a report the parent did not take, or a release the table
    /// refused, is logged, and the parent's reconcile repairs it.
    pub async fn shut_down(&self) -> Departure {
        self.guard.depart().await
    }
}

/// Adopts, or accepts an adoption already made for `pid` (same process,
/// same incarnation) by a supervisor.
fn adopt_or_accept<S: TableStore, L: Liveness>(
    table: &ScopeTable<S, L>,
    name: &PodName,
    incarnation: &str,
    pid: u32,
) -> Result<Allocation, ScopeError> {
    match table.adopt(name, incarnation, pid) {
        Err(ScopeError::NotReserved { name: held }) => {
            let ours = |a: &Allocation| {
                a.pid == pid
                    && a.pending_until.is_none()
                    && a.incarnation.as_deref() == Some(incarnation)
                    && a.start_time.is_some()
                    && a.start_time == table.liveness().start_time(pid)
            };
            match table.find(name)? {
                Some(allocation) if ours(&allocation) => Ok(allocation),
                _ => Err(ScopeError::NotReserved { name: held }),
            }
        }
        other => other,
    }
}
