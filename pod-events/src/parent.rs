//! The parent side: applying events' side effects, and reconcile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pod_protocol::{Method, PodEvent, PodName, Reparent};
use pod_registry::{incarnations_match, Outcome, Record, Registry};
use pod_scope_lock::{Allocation, Liveness, ScopeError, ScopeTable, TableStore};
use pod_transport::{MethodSender, UnixSender};
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::batch::{BatchError, Released, TableBatcher};
use crate::identity::Snapshot;
use crate::probe::Reachability;
use crate::send::send_or_log;
use crate::watch::WatchedPod;
use crate::UpwardLink;

/// What applying one event changed. Lower-layer failures are logged and
/// counted in [`failures`](Effects::failures), never returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Effects {
    /// A `ScopeSubDelegated` registered its pod (the first time this
    /// parent sees that pod).
    pub registered: bool,
    /// Registry records removed by a `ShutDown` (real or inferred).
    pub removed: Vec<Record>,
    /// The scope allocation a `ShutDown` released.
    pub released: Option<Allocation>,
    /// The pods that release moved to a new manager (the released pod's
    /// children, now under its own parent), as the table holds them
    /// after it. The new manager tells each where to report
    /// ([`Parent::reparent_orphans`]).
    pub reparented: Vec<Allocation>,
    /// The pod registered by this event was already dead: a synthetic
    /// `ShutDown` was applied at once (Erlang's `noproc`).
    pub presumed_dead: bool,
    /// Events to relay upward, in order; sent through the upward link
    /// when the parent has one.
    pub relayed: Vec<PodEvent>,
    /// Lower-layer errors met (each logged at warn level).
    pub failures: usize,
    /// Why a change of this event is not durable, when one is not: the
    /// registry or the scope table could not be written (a full disk, a
    /// stuck lock). The registry keeps the change and retries it with its
    /// next write; reconcile finishes a release that did not happen.
    pub not_saved: Option<String>,
    /// The allocation of the pod this event registered, found live: what
    /// the endpoint's exit watch follows.
    pub(crate) live_allocation: Option<Allocation>,
}

impl Effects {
    /// Counts a lower-layer failure and keeps the first reason a change is
    /// not saved.
    fn failed(&mut self, reason: impl std::fmt::Display) {
        self.failures += 1;
        if self.not_saved.is_none() {
            self.not_saved = Some(reason.to_string());
        }
    }
}

/// A registered pod and whether it is alive now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatus {
    /// The registry record.
    pub record: Record,
    /// Alive per the scope table (pid and start time), or per a socket
    /// probe when the table has no allocation for it.
    pub alive: bool,
}

/// What one [`Parent::reconcile`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reconciliation {
    /// Registered pods found dead, each handled as a `ShutDown`: the
    /// synthetic event and its effects.
    pub presumed_crashed: Vec<(PodEvent, Effects)>,
    /// Allocations released because their process is gone.
    pub reclaimed: Vec<Allocation>,
    /// Allocations of departed pods that were still held (a `ShutDown`
    /// whose release had not happened), now released.
    pub finished: Vec<Allocation>,
    /// Live descendants found in the scope table but missing from the
    /// registry (their `ScopeSubDelegated` was lost), now registered: the
    /// synthetic `ScopeSubDelegated` (from the pod it was delegated from)
    /// and the new record.
    pub adopted: Vec<(PodEvent, Record)>,
    /// Orphans this pod manages now (a death or a restart moved them
    /// here) that were told where to report with a `reparent` notice, this
    /// time because this process had not told them yet.
    pub reparented: Vec<PodName>,
    /// Lower-layer errors met (each logged at warn level).
    pub failures: usize,
    /// The live allocations of the registered pods after this pass (the
    /// adopted included, reservations not): what the endpoint's exit
    /// watch follows.
    pub(crate) alive: Vec<Allocation>,
}

/// A parent pod's view of its descendants: its registry, the machine-wide
/// scope table, the link to its own parent, and a socket probe.
///
/// Every collaborator is passed in; nothing is found through environment
/// variables. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Parent<R, S, L, U = UnixSender, P = crate::SocketProbe>
where
    S: TableStore,
    L: Liveness,
{
    name: PodName,
    registry: R,
    scopes: ScopeTable<S, L>,
    /// Sends relays upward and reparent notices to orphans.
    sender: U,
    upward: Option<UpwardLink>,
    probe: P,
    /// Relays in flight, so a shutting-down endpoint can wait for them.
    relays: TaskTracker,
    /// One blocking scope-table operation at a time: the file store's
    /// flock serializes them anyway, and queueing here instead keeps many
    /// concurrent lanes from each holding a blocking thread (and a copy of
    /// the table in its own allocator arena).
    blocking: Arc<Semaphore>,
    /// The event path's table operations, group-committed: the releases
    /// and lookups of events in flight together share one transaction.
    batcher: TableBatcher<S, L>,
    /// The reparent notices delivered: orphan (name, incarnation) to the
    /// `seq` told. In memory: a restarted pod tells its orphans again.
    told: Arc<Mutex<HashMap<(PodName, String), u64>>>,
}

impl<R, S, L, P> Parent<R, S, L, UnixSender, P>
where
    R: Registry,
    S: TableStore,
    L: Liveness,
    P: Reachability,
{
    /// A top-level parent named `name` (no upward link; see
    /// [`with_upward`](Parent::with_upward)).
    pub fn new(name: PodName, registry: R, scopes: ScopeTable<S, L>, probe: P) -> Self {
        let blocking = Arc::new(Semaphore::new(1));
        Parent {
            name,
            registry,
            batcher: TableBatcher::new(scopes.clone(), blocking.clone()),
            scopes,
            sender: UnixSender::default(),
            upward: None,
            probe,
            relays: TaskTracker::new(),
            blocking,
            told: Arc::default(),
        }
    }
}

impl<R, S, L, U, P> Parent<R, S, L, U, P>
where
    R: Registry,
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
    P: Reachability,
{
    /// Relays events upward through `sender` to the parent listening at
    /// `parent_socket`.
    pub fn with_upward<U2: MethodSender + Clone>(
        self,
        sender: U2,
        parent_socket: impl Into<PathBuf>,
    ) -> Parent<R, S, L, U2, P> {
        let address = parent_socket.into().to_string_lossy().into_owned();
        self.with_upward_link(sender, UpwardLink::new(address))
    }

    /// Relays events upward through `sender` over `link`, which this
    /// parent's endpoint redirects when a reparent notice moves the pod
    /// (share it with the pod's [`PodContext`](crate::PodContext), whose
    /// reports then move too).
    pub fn with_upward_link<U2: MethodSender + Clone>(
        self,
        sender: U2,
        link: UpwardLink,
    ) -> Parent<R, S, L, U2, P> {
        let mut parent = self.with_sender(sender);
        parent.upward = Some(link);
        parent
    }

    /// Sends through `sender` (reparent notices to orphans, and relays
    /// once there is an upward link): for a top-level parent whose
    /// children listen on `tls://` addresses, an
    /// [`AddressSender`](crate::AddressSender) with TLS.
    pub fn with_sender<U2: MethodSender + Clone>(self, sender: U2) -> Parent<R, S, L, U2, P> {
        Parent {
            name: self.name,
            registry: self.registry,
            scopes: self.scopes,
            sender,
            upward: self.upward,
            probe: self.probe,
            relays: self.relays,
            blocking: self.blocking,
            batcher: self.batcher,
            told: self.told,
        }
    }

    /// This pod's name.
    pub fn name(&self) -> &PodName {
        &self.name
    }

    /// The link relays go through; `None` for a top-level pod.
    pub fn upward(&self) -> Option<&UpwardLink> {
        self.upward.as_ref()
    }

    /// The registry of spawned pods.
    pub fn registry(&self) -> &R {
        &self.registry
    }

    /// The machine-wide scope table.
    pub fn scopes(&self) -> &ScopeTable<S, L> {
        &self.scopes
    }

    /// Applies the side effects of `event`, as reported by a child:
    /// exactly the semantics table of the design (section 4).
    ///
    /// - `TurnEnded`, `Errored`: nothing.
    /// - `ShutDown(n, inc)`: remove the records of `n` whose incarnation
    ///   matches, add `(n, inc)` to the departed set, release `n`'s
    ///   allocation if its incarnation matches (its children go to its
    ///   parent), and relay the event upward the first time this parent
    ///   sees that departure.
    /// - `ScopeSubDelegated(c, g, ..)`: unless `g` is departed or already
    ///   registered, register `g` with `callback_address` = the event's
    ///   `spawner_socket` (for senders that omit it: `c`'s socket from the
    ///   registry, else empty) and relay it upward with `parent_pod` = this
    ///   pod; if `g` is already dead, apply a synthetic `ShutDown` at once.
    ///
    /// Idempotent and order-insensitive (proven by the crate's property
    /// tests). Invalid events change nothing. Errors from the registry or
    /// the scope table are logged and counted, never returned: the sender
    /// is fire-and-forget, and reconcile repairs what was missed.
    pub async fn apply(&self, event: &PodEvent) -> Effects {
        if let Err(error) = event.validate() {
            tracing::warn!(%error, "ignored an invalid pod event");
            return Effects {
                failures: 1,
                ..Effects::default()
            };
        }
        self.apply_validated(event).await
    }

    /// [`apply`](Self::apply) for an event that already passed
    /// [`PodEvent::validate`] (the endpoint validates on admission, to count
    /// invalid events apart from failures).
    pub(crate) async fn apply_validated(&self, event: &PodEvent) -> Effects {
        let mut effects = Effects::default();
        match event {
            PodEvent::TurnEnded { .. } | PodEvent::Errored { .. } => {}
            PodEvent::ShutDown {
                pod_name,
                incarnation,
            } => {
                self.shut_down(pod_name, incarnation.as_deref(), &mut effects)
                    .await;
            }
            PodEvent::ScopeSubDelegated {
                parent_pod,
                sub_pod,
                sub_socket,
                scope,
                sub_incarnation,
                spawner_socket,
            } => {
                let callback = spawner_socket.clone().unwrap_or_else(|| {
                    self.registry.read(|state| {
                        state
                            .records_named(parent_pod)
                            .next()
                            .map(|r| r.socket_path.clone())
                            .unwrap_or_default()
                    })
                });
                let Ok(name) = PodName::new(sub_pod.as_str()) else {
                    return effects; // unreachable after validate()
                };
                let record = Record {
                    pod_name: name,
                    socket_path: sub_socket.clone(),
                    scope_delegated: scope.clone(),
                    callback_address: callback.clone(),
                    incarnation: sub_incarnation.clone(),
                };
                match self.registry.add(record.clone()).await {
                    Ok(Outcome::Added) => {
                        effects.registered = true;
                        effects.relayed.push(PodEvent::ScopeSubDelegated {
                            parent_pod: self.name.to_string(),
                            sub_pod: sub_pod.clone(),
                            sub_socket: sub_socket.clone(),
                            scope: scope.clone(),
                            sub_incarnation: sub_incarnation.clone(),
                            // Filled in when the original sender omitted it,
                            // so ancestors learn the right callback instead
                            // of falling back to this pod's socket.
                            spawner_socket: (!callback.is_empty()).then_some(callback),
                        });
                        let (alive, allocation) = self.liveness(&record, None).await;
                        effects.live_allocation = allocation;
                        if !alive {
                            effects.presumed_dead = true;
                            self.shut_down(sub_pod, sub_incarnation.as_deref(), &mut effects)
                                .await;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, pod = %sub_pod, "could not register a sub-delegated pod");
                        effects.failed(error);
                    }
                }
            }
        }
        self.relay(&effects.relayed);
        if !effects.reparented.is_empty() {
            self.reparent_orphans(&effects.reparented, None).await;
        }
        effects
    }

    /// Tells each pod of `orphans` that this pod manages now (the table
    /// moved it here: its `delegated_from` is this pod and it was
    /// reparented) where to report from now on, with a `reparent` notice
    /// (DESIGN section 12) to its socket, and points its registry record
    /// here once the notice was delivered. Other pods of `orphans` are
    /// left alone, and so is an orphan already told this `seq` by this
    /// process. `own_socket` is this pod's address when the caller knows
    /// it; else it is read from this pod's allocation. Returns the pods
    /// told.
    ///
    /// Fire-and-forget per orphan: a notice not delivered is logged and
    /// the next [`reconcile`](Self::reconcile) sends it again. What was
    /// told is remembered in memory only, so a restarted pod tells its
    /// orphans again (a repeat changes nothing for them), which is how
    /// the children a restart took back
    /// ([`ScopeTable::restart`](pod_scope_lock::ScopeTable::restart)) learn
    /// to report to it.
    pub async fn reparent_orphans(
        &self,
        orphans: &[Allocation],
        own_socket: Option<&str>,
    ) -> Vec<PodName> {
        let ours: Vec<&Allocation> = orphans
            .iter()
            .filter(|o| o.delegated_from.as_ref() == Some(&self.name) && o.reparented > 0)
            .collect();
        if ours.is_empty() {
            return Vec::new();
        }
        let socket = match own_socket {
            Some(socket) => socket.to_owned(),
            None => match self.batcher.find(self.name.clone()).await {
                Ok(Some(own)) => own.socket,
                Ok(None) => {
                    tracing::warn!("holds no allocation: cannot tell its orphans where it listens");
                    return Vec::new();
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read its own allocation to tell its orphans where it listens");
                    return Vec::new();
                }
            },
        };
        let mut told = Vec::new();
        for orphan in ours {
            // A legacy pod has no incarnation to address, and would reject
            // the method anyway: its reports keep failing until reconcile
            // infers its death.
            let Some(incarnation) = orphan.incarnation.clone() else {
                continue;
            };
            let key = (orphan.pod_name.clone(), incarnation.clone());
            let last = self
                .told
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .copied();
            if last.is_some_and(|seq| seq >= orphan.reparented) {
                continue;
            }
            let notice = Method::Reparent(Reparent {
                pod_name: orphan.pod_name.to_string(),
                incarnation: incarnation.clone(),
                parent_pod: self.name.to_string(),
                parent_socket: socket.clone(),
                seq: orphan.reparented,
            });
            if let Err(error) = self.sender.send(Path::new(&orphan.socket), &notice).await {
                tracing::warn!(pod = %orphan.pod_name, socket = %orphan.socket, %error, "could not tell an orphan where to report; reconcile tries again");
                continue;
            }
            let redirected = self
                .registry
                .redirect(orphan.pod_name.clone(), Some(incarnation), socket.clone())
                .await;
            if let Err(error) = redirected {
                tracing::warn!(pod = %orphan.pod_name, %error, "could not record where an orphan reports now");
            }
            self.told
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, orphan.reparented);
            told.push(orphan.pod_name.clone());
        }
        told
    }

    /// Sends each event upward on a tracked task (fire-and-forget: a
    /// failure is logged by the task and dropped).
    fn relay(&self, events: &[PodEvent]) {
        if let Some(link) = &self.upward {
            let socket = PathBuf::from(link.address());
            for event in events {
                let (sender, socket, event) = (self.sender.clone(), socket.clone(), event.clone());
                self.relays
                    .spawn(async move { send_or_log(&sender, &socket, event).await });
            }
        }
    }

    /// Waits until every relay sent so far has been delivered or has
    /// failed (each send is bounded by the transport's timeouts). An
    /// endpoint calls this when it stops, so relays in flight are not lost
    /// when the process exits.
    pub async fn wait_for_relays(&self) {
        self.relays.close();
        self.relays.wait().await;
        self.relays.reopen();
    }

    /// The `ShutDown` row of the semantics table, shared by real and
    /// inferred shutdowns. Does not relay; the caller does.
    async fn shut_down(&self, pod_name: &str, incarnation: Option<&str>, effects: &mut Effects) {
        let Ok(name) = PodName::new(pod_name) else {
            return;
        };
        let inc = incarnation.map(str::to_owned);
        let first = match self.registry.depart(name.clone(), inc.clone()).await {
            Ok(Outcome::Removed {
                records,
                first_departure,
            }) => {
                effects.removed.extend(records);
                first_departure
            }
            Ok(_) => false,
            Err(error) => {
                // The registry keeps the change in memory and retries the
                // write; relaying a possible duplicate upward is harmless.
                tracing::warn!(%error, pod = %name, "could not record a departure durably");
                effects.failed(error);
                true
            }
        };
        match self.batcher.release(name.clone(), inc.clone()).await {
            Ok(Ok(Released { allocation, moved })) => {
                effects.released = Some(allocation);
                effects.reparented = moved;
            }
            Ok(Err(ScopeError::UnknownPod { .. } | ScopeError::IncarnationMismatch { .. })) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, pod = %name, "could not release a departed pod's scope");
                effects.failed(error);
            }
            Err(error) => {
                // Reconcile finishes the release later (the tombstone is
                // recorded above).
                tracing::warn!(%error, pod = %name, "could not release a departed pod's scope");
                effects.failed(error);
            }
        }
        if first {
            effects.relayed.push(PodEvent::ShutDown {
                pod_name: name.into_string(),
                incarnation: inc,
            });
        }
    }

    /// Runs a scope-table operation on a blocking thread when the store
    /// may block (the file store takes a flock and fsyncs, which must not
    /// stall the executor), inline otherwise.
    async fn with_scopes<T: Send + 'static>(
        &self,
        f: impl FnOnce(&ScopeTable<S, L>) -> T + Send + 'static,
    ) -> T {
        if !self.scopes.store().may_block() {
            return f(&self.scopes);
        }
        // Never closed, so acquiring only waits.
        let _turn = self.blocking.acquire().await;
        let scopes = self.scopes.clone();
        match tokio::task::spawn_blocking(move || f(&scopes)).await {
            Ok(value) => value,
            Err(error) => std::panic::resume_unwind(error.into_panic()),
        }
    }

    /// Reads the whole table for the endpoint's snapshot; an unreadable
    /// table is a snapshot without a table.
    pub(crate) async fn table_snapshot(&self) -> Snapshot {
        let started = std::time::Instant::now();
        match self.with_scopes(|scopes| scopes.store().load()).await {
            Ok(table) => Snapshot::new(Some(table), started),
            Err(error) => {
                tracing::warn!(%error, "scope table unreadable; senders cannot be verified");
                Snapshot::new(None, started)
            }
        }
    }

    /// Runs `visitor` on the table in the event path's next batch, after
    /// every table operation queued before it.
    pub(crate) fn visit_table(&self, visitor: crate::batch::Visitor) {
        self.batcher.visit(visitor);
    }

    /// Whether the pod of `record` is alive: per its allocation (pid and
    /// start time) when the table holds one under its name, else per a
    /// socket probe. An allocation of another incarnation means this one
    /// is gone. `table` is a snapshot to use instead of a fresh lookup.
    async fn is_alive(&self, record: &Record, table: Option<&HashMap<String, Allocation>>) -> bool {
        self.liveness(record, table).await.0
    }

    /// [`is_alive`](Self::is_alive), with the allocation that says so when
    /// it is one a process holds (not a reservation, held by its spawner).
    async fn liveness(
        &self,
        record: &Record,
        table: Option<&HashMap<String, Allocation>>,
    ) -> (bool, Option<Allocation>) {
        let allocation: Result<_, BatchError> = match table {
            Some(table) => Ok(table.get(record.pod_name.as_str()).cloned()),
            None => self.batcher.find(record.pod_name.clone()).await,
        };
        match allocation {
            Ok(Some(allocation)) => {
                let alive = incarnations_match(
                    record.incarnation.as_deref(),
                    allocation.incarnation.as_deref(),
                ) && self.scopes.is_live(&allocation);
                let held = alive && allocation.pending_until.is_none();
                (alive, held.then_some(allocation))
            }
            Ok(None) => (
                self.probe.is_reachable(record.socket_path.as_ref()).await,
                None,
            ),
            Err(error) => {
                tracing::warn!(%error, "scope table unreadable; probing the pod's socket instead");
                (
                    self.probe.is_reachable(record.socket_path.as_ref()).await,
                    None,
                )
            }
        }
    }

    /// A registered pod found dead, handled exactly as its `ShutDown`
    /// (departed, released, relayed): the synthetic event and its effects.
    async fn presume_crashed(
        &self,
        pod_name: &PodName,
        incarnation: Option<&str>,
    ) -> (PodEvent, Effects) {
        let event = PodEvent::ShutDown {
            pod_name: pod_name.to_string(),
            incarnation: incarnation.map(str::to_owned),
        };
        let mut effects = Effects::default();
        self.shut_down(pod_name.as_str(), incarnation, &mut effects)
            .await;
        self.relay(&effects.relayed);
        (event, effects)
    }

    /// What reconcile does for one pod, when an exit watch says its holder
    /// exited: unless the pod is no longer registered (its `ShutDown`, real
    /// or inferred, came first) or its holder is alive after all by this
    /// parent's liveness probe, it is presumed crashed.
    pub(crate) async fn presume_exited(&self, pod: &WatchedPod) -> Option<(PodEvent, Effects)> {
        let name = pod.pod_name.as_str();
        let incarnation = pod.incarnation.as_deref();
        let registered = self
            .registry
            .read(|state| state.get(name, incarnation).is_some());
        let liveness = self.scopes.liveness();
        let alive = match pod.start_time {
            Some(start_time) => liveness.is_same_process(pod.pid, start_time),
            None => liveness.is_alive(pod.pid),
        };
        if !registered || alive {
            return None;
        }
        let (event, effects) = self.presume_crashed(&pod.pod_name, incarnation).await;
        // Its orphans learn their new manager now, not at the next
        // reconcile.
        self.reparent_orphans(&effects.reparented, None).await;
        Some((event, effects))
    }

    /// Every registered pod with its liveness (the seed's `ListPods`).
    pub async fn list_pods(&self) -> Vec<PodStatus> {
        let (table, _) = self.snapshot_or_empty().await;
        let mut out = Vec::new();
        for record in self.registry.list() {
            let alive = self.is_alive(&record, Some(&table)).await;
            out.push(PodStatus { record, alive });
        }
        out
    }

    /// One read of the table, by name, for judging many records. When the
    /// table is unreadable the snapshot is empty, so every record is judged
    /// by its socket; the flag says so.
    async fn snapshot_or_empty(&self) -> (HashMap<String, Allocation>, bool) {
        match self.with_scopes(|scopes| scopes.list()).await {
            Ok(list) => (
                list.into_iter()
                    .map(|a| (a.pod_name.to_string(), a))
                    .collect(),
                false,
            ),
            Err(error) => {
                tracing::warn!(%error, "scope table unreadable; probing pods' sockets instead");
                (HashMap::new(), true)
            }
        }
    }

    /// The level-triggered fallback that repairs whatever events were lost
    /// (compare a Kubernetes controller's resync):
    ///
    /// 1. every registered pod found dead is handled exactly as a
    ///    `ShutDown` (departed, released, relayed), reported as inferred;
    /// 2. stale allocations (pid dead or reused) are reclaimed;
    /// 3. half-applied shutdowns are finished: an allocation still held by
    ///    a departed incarnation is released;
    /// 4. live descendants of this pod in the scope table that the registry
    ///    lacks (their `ScopeSubDelegated` was lost) are registered.
    ///
    /// After it, the registry holds exactly the live descendants.
    pub async fn reconcile(&self) -> Reconciliation {
        let mut report = Reconciliation::default();
        let (table, unreadable) = self.snapshot_or_empty().await;
        report.failures += usize::from(unreadable);
        for record in self.registry.list() {
            match self.liveness(&record, Some(&table)).await {
                (true, allocation) => report.alive.extend(allocation),
                (false, _) => {
                    let (event, effects) = self
                        .presume_crashed(&record.pod_name, record.incarnation.as_deref())
                        .await;
                    report.failures += effects.failures;
                    report.presumed_crashed.push((event, effects));
                }
            }
        }

        let departed: Vec<(PodName, String)> = self.registry.read(|state| {
            state
                .departed()
                .filter_map(|t| Some((t.pod_name.clone(), t.incarnation.clone()?)))
                .collect()
        });
        let self_name = self.name.clone();
        let outcome = self
            .with_scopes(move |scopes| {
                // One transaction for the whole clean-up: with the file
                // store that is one lock, one read and at most one write.
                scopes.store().transact(|table| {
                    let reclaimed = table.reclaim(|a| scopes.is_live(a));
                    // Only tombstones with an incarnation: a legacy
                    // tombstone matches every incarnation and must not
                    // release a newer pod that reuses the name.
                    let finished: Vec<Allocation> = departed
                        .iter()
                        .filter_map(|(name, inc)| table.release(name, Some(inc)).ok())
                        .collect();
                    let all = table.allocations().cloned().collect();
                    Ok((reclaimed, finished, descendants(&self_name, all)))
                })
            })
            .await;
        let descendants = match outcome {
            Ok((reclaimed, finished, descendants)) => {
                report.reclaimed = reclaimed;
                report.finished = finished;
                descendants
            }
            Err(error) => {
                tracing::warn!(%error, "reconcile: could not clean the scope table");
                report.failures += 1;
                Vec::new()
            }
        };

        let mut orphans = Vec::new();
        for (allocation, spawner, callback) in descendants {
            // One liveness probe (a /proc read) per descendant.
            let live = self.scopes.is_live(&allocation);
            if allocation.reparented > 0 && live {
                if spawner == self.name.as_str() {
                    orphans.push(allocation.clone());
                } else {
                    // Another pod manages it now and tells it so; this
                    // registry only notes where it reports.
                    self.note_redirect(&allocation, &callback, &mut report)
                        .await;
                }
            }
            let known = self.registry.read(|state| {
                state
                    .get(
                        allocation.pod_name.as_str(),
                        allocation.incarnation.as_deref(),
                    )
                    .is_some()
                    || state.is_departed(
                        allocation.pod_name.as_str(),
                        allocation.incarnation.as_deref(),
                    )
            });
            if known || !live {
                continue;
            }
            let held = allocation
                .pending_until
                .is_none()
                .then(|| allocation.clone());
            let record = Record {
                pod_name: allocation.pod_name.clone(),
                socket_path: allocation.socket.clone(),
                scope_delegated: allocation.scope_allow.clone(),
                callback_address: callback,
                incarnation: allocation.incarnation.clone(),
            };
            match self.registry.add(record.clone()).await {
                Ok(Outcome::Added) => {
                    let event = PodEvent::ScopeSubDelegated {
                        parent_pod: spawner,
                        sub_pod: record.pod_name.to_string(),
                        sub_socket: record.socket_path.clone(),
                        scope: record.scope_delegated.clone(),
                        sub_incarnation: record.incarnation.clone(),
                        spawner_socket: Some(record.callback_address.clone()),
                    };
                    report.adopted.push((event, record));
                    report.alive.extend(held);
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(%error, pod = %record.pod_name, "reconcile: could not register a descendant");
                    report.failures += 1;
                }
            }
        }
        if !orphans.is_empty() {
            report.reparented = self.reparent_orphans(&orphans, None).await;
        }
        report
    }

    /// Points the registry record of `allocation` at `callback`, the
    /// socket of the pod that manages it now, if it says otherwise.
    async fn note_redirect(
        &self,
        allocation: &Allocation,
        callback: &str,
        report: &mut Reconciliation,
    ) {
        let stale = self.registry.read(|state| {
            state
                .get(
                    allocation.pod_name.as_str(),
                    allocation.incarnation.as_deref(),
                )
                .is_some_and(|r| r.callback_address != callback)
        });
        if !stale || callback.is_empty() {
            return;
        }
        let redirected = self
            .registry
            .redirect(
                allocation.pod_name.clone(),
                allocation.incarnation.clone(),
                callback.to_owned(),
            )
            .await;
        if let Err(error) = redirected {
            tracing::warn!(pod = %allocation.pod_name, %error, "reconcile: could not record where a moved pod reports now");
            report.failures += 1;
        }
    }
}

/// Every allocation below `root` in the delegation tree, each with the
/// name and socket of the pod it was delegated from. One pass to index
/// children, one walk.
fn descendants(root: &PodName, all: Vec<Allocation>) -> Vec<(Allocation, String, String)> {
    let mut children: HashMap<&str, Vec<&Allocation>> = HashMap::new();
    for allocation in &all {
        if let Some(parent) = &allocation.delegated_from {
            children
                .entry(parent.as_str())
                .or_default()
                .push(allocation);
        }
    }
    let by_name: HashMap<&str, &Allocation> =
        all.iter().map(|a| (a.pod_name.as_str(), a)).collect();
    let mut out = Vec::new();
    let mut stack = vec![root.as_str()];
    while let Some(name) = stack.pop() {
        let socket = by_name.get(name).map_or("", |a| a.socket.as_str());
        for child in children.get(name).into_iter().flatten() {
            out.push(((*child).clone(), name.to_owned(), socket.to_owned()));
            stack.push(child.pod_name.as_str());
        }
    }
    out
}
