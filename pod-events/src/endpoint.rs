//! The receive loop: a parent endpoint that owns a source of methods.

mod exits;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pod_protocol::{Method, PodEvent, Reparent};
use pod_registry::Registry;
use pod_scope_lock::{Liveness, Table, TableStore};
use pod_transport::{MethodSender, MethodSource, Peer, ReceiveError, Received};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::identity::{
    quick_verdict, Context, ProcTree, ProcessTree, SenderPolicy, Snapshots, Verdict,
};
use crate::parent::{Effects, Parent, Reconciliation};
use crate::probe::Reachability;
use crate::render::{render_applied, Applied, Origin};
use crate::watch::{ExitWatch, WatchedPod};

/// Most items the receive loop takes from its source at once.
const RECV_BATCH: usize = 256;

/// One rendered line for the embedding application (its LLM context).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The rendered line: one line, bounded, control characters escaped.
    pub line: String,
    /// The event the line describes.
    pub event: PodEvent,
    /// Reported by the pod, or inferred by reconcile.
    pub origin: Origin,
    /// The sending process, for reported events.
    pub peer: Option<Peer>,
}

/// Seam: where rendered lines go. Required method:
/// [`deliver`](NotificationSink::deliver).
pub trait NotificationSink: Send + Sync + 'static {
    /// Takes one notification. Must not block: hand it off and return.
    fn deliver(&self, notification: Notification);
}

impl NotificationSink for mpsc::UnboundedSender<Notification> {
    fn deliver(&self, notification: Notification) {
        // A closed receiver means the application stopped listening; the
        // side effects are applied regardless.
        let _ = self.send(notification);
    }
}

impl<T: NotificationSink> NotificationSink for Arc<T> {
    fn deliver(&self, notification: Notification) {
        (**self).deliver(notification)
    }
}

/// A [`NotificationSink`] that keeps every notification in memory.
#[derive(Debug, Clone, Default)]
pub struct CollectingSink {
    notes: Arc<Mutex<Vec<Notification>>>,
}

impl CollectingSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every notification so far, in delivery order.
    pub fn notifications(&self) -> Vec<Notification> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Every line so far, in delivery order.
    pub fn lines(&self) -> Vec<String> {
        self.notifications().into_iter().map(|n| n.line).collect()
    }
}

impl NotificationSink for CollectingSink {
    fn deliver(&self, notification: Notification) {
        self.notes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(notification);
    }
}

/// How an endpoint runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Most events read but not yet applied (default 4096). Events about
    /// one pod apply one at a time, in arrival order; events about
    /// different pods apply concurrently, so a burst of shutdowns reaches
    /// the registry together and coalesces into few durable writes. When
    /// this many are in flight, the reader waits (back-pressure) instead of
    /// growing memory.
    pub max_in_flight: usize,
    /// Run reconcile at start and then every this often; `None` disables
    /// both. Default 30 s.
    pub reconcile_interval: Option<Duration>,
    /// What to do with claims the scope table cannot check (see
    /// [`SenderPolicy`]; default [`SenderPolicy::Legacy`]). Claims about
    /// pods that hold an allocation are checked under every policy.
    pub sender_policy: SenderPolicy,
    /// How old a snapshot of the scope table may be for a `TurnEnded` or
    /// `Errored` to be checked against it without a fresh read (default
    /// 1 s). `ShutDown` and `ScopeSubDelegated` are always checked against
    /// a table read after they arrived.
    pub snapshot_max_age: Duration,
    /// Whose child a process is, to find the pod a helper process speaks
    /// for (default [`ProcTree`], `/proc`).
    pub process_tree: Arc<dyn ProcessTree>,
    /// What tells the endpoint at once that a registered pod's process
    /// exited, so it is presumed crashed without waiting for reconcile
    /// (default: [`PidfdWatch`](crate::PidfdWatch) on Linux, none
    /// elsewhere; `None` leaves exits to reconcile). On a scope table on
    /// etcd, where a pod is held by a lease, use `LeaseWatch` (feature
    /// `etcd`) instead. See [`crate::watch`].
    pub exit_watch: Option<Arc<dyn ExitWatch>>,
    /// Most pods watched at once (default 4096). A pod registered past it
    /// is not watched (counted in [`EndpointStats::unwatched_over_bound`]):
    /// reconcile finds its exit, and the re-sync after each reconcile
    /// watches it once there is room.
    pub max_exit_watches: usize,
    /// How long after a reported exit the pod is presumed crashed
    /// (default 200 ms): a `ShutDown` it sent just before exiting is
    /// applied first, and no "presumed crashed" line is rendered for it.
    pub exit_grace: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_in_flight: 4096,
            reconcile_interval: Some(Duration::from_secs(30)),
            sender_policy: SenderPolicy::default(),
            snapshot_max_age: Duration::from_secs(1),
            process_tree: Arc::new(ProcTree),
            exit_watch: default_exit_watch(),
            max_exit_watches: 4096,
            exit_grace: Duration::from_millis(200),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn default_exit_watch() -> Option<Arc<dyn ExitWatch>> {
    Some(Arc::new(crate::PidfdWatch::new()))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn default_exit_watch() -> Option<Arc<dyn ExitWatch>> {
    None
}

impl EndpointConfig {
    /// Sets [`reconcile_interval`](Self::reconcile_interval).
    pub fn reconcile_every(mut self, interval: Option<Duration>) -> Self {
        self.reconcile_interval = interval;
        self
    }

    /// Sets [`max_in_flight`](Self::max_in_flight) (at least 1).
    pub fn max_in_flight(mut self, events: usize) -> Self {
        self.max_in_flight = events.max(1);
        self
    }

    /// Sets [`sender_policy`](Self::sender_policy).
    pub fn sender_policy(mut self, policy: SenderPolicy) -> Self {
        self.sender_policy = policy;
        self
    }

    /// Sets [`process_tree`](Self::process_tree).
    pub fn process_tree(mut self, tree: impl ProcessTree) -> Self {
        self.process_tree = Arc::new(tree);
        self
    }

    /// Sets [`exit_watch`](Self::exit_watch) (`None`: exits are found by
    /// reconcile only).
    pub fn exit_watch(mut self, watch: Option<Arc<dyn ExitWatch>>) -> Self {
        self.exit_watch = watch;
        self
    }

    /// Sets [`max_exit_watches`](Self::max_exit_watches).
    pub fn max_exit_watches(mut self, pods: usize) -> Self {
        self.max_exit_watches = pods;
        self
    }

    /// Sets [`exit_grace`](Self::exit_grace).
    pub fn exit_grace(mut self, grace: Duration) -> Self {
        self.exit_grace = grace;
        self
    }
}

/// Counters of an endpoint, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Items received from the source.
    pub received: u64,
    /// Events applied and rendered.
    pub applied: u64,
    /// Frames that did not decode (or were too long).
    pub undecodable: u64,
    /// Events that decoded but failed validation.
    pub invalid: u64,
    /// Methods other than `pod_event`, rejected.
    pub unsupported: u64,
    /// Reconcile passes completed.
    pub reconciles: u64,
    /// Lower-layer failures met while applying or reconciling.
    pub failures: u64,
    /// Events refused because their sender may not make their claim
    /// (logged with the pid and the reason; never applied or rendered).
    pub rejected_senders: u64,
    /// Events admitted by [`SenderPolicy::Legacy`] without a check the
    /// scope table could make.
    pub unverified: u64,
    /// Reparent notices taken: this pod's upward link moved (or a repeat
    /// confirmed it).
    pub reparent_notices: u64,
    /// Reparent notices refused (not for this pod, not what the table
    /// says, or not from a pod above it; logged with the reason).
    pub rejected_notices: u64,
    /// Pods the exit watch reported exited, presumed crashed (each
    /// rendered as reconcile would).
    pub exits_presumed: u64,
    /// Pods watched now (a gauge, not a counter).
    pub watching: u64,
    /// Times a pod was left unwatched because
    /// [`EndpointConfig::max_exit_watches`] pods were watched already
    /// (at its registration, and at each re-sync after a reconcile).
    pub unwatched_over_bound: u64,
    /// Times the exit watch could not watch a pod (no pidfd here, out of
    /// file descriptors); reconcile finds its exit.
    pub unwatchable: u64,
}

#[derive(Debug, Default)]
struct Counters {
    received: AtomicU64,
    applied: AtomicU64,
    undecodable: AtomicU64,
    invalid: AtomicU64,
    unsupported: AtomicU64,
    reconciles: AtomicU64,
    failures: AtomicU64,
    rejected_senders: AtomicU64,
    unverified: AtomicU64,
    reparent_notices: AtomicU64,
    rejected_notices: AtomicU64,
    exits_presumed: AtomicU64,
    watching: AtomicU64,
    unwatched_over_bound: AtomicU64,
    unwatchable: AtomicU64,
}

impl Counters {
    fn snapshot(&self) -> EndpointStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        EndpointStats {
            received: get(&self.received),
            applied: get(&self.applied),
            undecodable: get(&self.undecodable),
            invalid: get(&self.invalid),
            unsupported: get(&self.unsupported),
            reconciles: get(&self.reconciles),
            failures: get(&self.failures),
            rejected_senders: get(&self.rejected_senders),
            unverified: get(&self.unverified),
            reparent_notices: get(&self.reparent_notices),
            rejected_notices: get(&self.rejected_notices),
            exits_presumed: get(&self.exits_presumed),
            watching: get(&self.watching),
            unwatched_over_bound: get(&self.unwatched_over_bound),
            unwatchable: get(&self.unwatchable),
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// The counters of a running endpoint, apart from its handle.
#[derive(Debug, Clone)]
pub struct EndpointProgress(Arc<Counters>);

impl EndpointProgress {
    /// A snapshot of the counters.
    pub fn snapshot(&self) -> EndpointStats {
        self.0.snapshot()
    }
}

/// A running endpoint: returned by [`spawn_endpoint`].
#[derive(Debug)]
pub struct EndpointHandle {
    counters: Arc<Counters>,
    exits: Arc<exits::ExitWatches>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        self.counters.snapshot()
    }

    /// The endpoint's counters, readable after the handle is consumed (by
    /// [`join`](Self::join) under a timeout, say).
    pub fn progress(&self) -> EndpointProgress {
        EndpointProgress(self.counters.clone())
    }

    /// Watches `pod`, registered with this endpoint's parent, for its exit
    /// (see [`EndpointConfig::exit_watch`]): for a child the caller
    /// spawned itself, whose pid it knows before the child adopts its
    /// reservation. Whether it is watched now.
    pub fn watch_exit(&self, pod: WatchedPod) -> bool {
        self.exits.watch(pod, &self.counters)
    }

    /// Stops reading the source, applies every event already read, and
    /// waits for that to finish. (Shutting the source down, e.g.
    /// `Listener::shutdown_handle().shutdown()`, ends the loop the same
    /// way after the source's remaining items.)
    pub async fn stop(self) -> EndpointStats {
        let _ = self.stop.send(true);
        self.join().await
    }

    /// Waits until the source ends, every event read is applied, and every
    /// relay upward has been sent (or has failed).
    pub async fn join(self) -> EndpointStats {
        if let Err(error) = self.task.await {
            if error.is_panic() {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        self.counters.snapshot()
    }
}

/// Runs a parent endpoint on the current tokio runtime: each item from
/// `source` is decoded (by the source), validated, applied by `parent`,
/// rendered, and delivered to `sink`. Reconcile runs at start and on the
/// configured interval, its inferred outcomes delivered the same way; in
/// between, a registered pod whose exit the
/// [`exit_watch`](EndpointConfig::exit_watch) reports is presumed crashed
/// at once (see [`crate::watch`]).
///
/// One bad frame, invalid event or failing side effect is logged and
/// counted; the loop goes on. Each event is handled in a tracing span
/// `pod_event` with the pod's name and the event's kind.
pub fn spawn_endpoint<R, S, L, U, P, Src, N>(
    parent: Arc<Parent<R, S, L, U, P>>,
    source: Src,
    sink: N,
    config: EndpointConfig,
) -> EndpointHandle
where
    R: Registry,
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
    P: Reachability,
    Src: MethodSource,
    N: NotificationSink,
{
    let counters = Arc::new(Counters::default());
    let (stop, stopped) = watch::channel(false);
    let exits = Arc::new(exits::ExitWatches::new(&config));
    let shared = Arc::new(Shared {
        parent,
        sink,
        counters: counters.clone(),
        exits: exits.clone(),
        lanes: Lanes::default(),
        snapshots: Snapshots::default(),
        config,
    });
    let task = tokio::spawn(shared.run(source, stopped));
    EndpointHandle {
        counters,
        exits,
        stop,
        task,
    }
}

/// What the receive loop, the lanes and the reconciler share.
struct Shared<R, S, L, U, P, N>
where
    S: TableStore,
    L: Liveness,
{
    parent: Arc<Parent<R, S, L, U, P>>,
    sink: N,
    counters: Arc<Counters>,
    exits: Arc<exits::ExitWatches>,
    lanes: Lanes,
    snapshots: Snapshots,
    config: EndpointConfig,
}

impl<R, S, L, U, P, N> Shared<R, S, L, U, P, N>
where
    R: Registry,
    S: TableStore,
    L: Liveness,
    U: MethodSender + Clone,
    P: Reachability,
    N: NotificationSink,
{
    async fn run(
        self: Arc<Self>,
        mut source: impl MethodSource,
        mut stopped: watch::Receiver<bool>,
    ) {
        // The first events find a snapshot to check their senders against.
        self.refresh_snapshot();
        let in_flight = Arc::new(Semaphore::new(self.config.max_in_flight.max(1)));
        let lanes = TaskTracker::new();
        let reconciler = self
            .config
            .reconcile_interval
            .map(|interval| tokio::spawn(self.clone().reconcile_every(interval, stopped.clone())));
        let exit_follower = tokio::spawn(self.clone().follow_exits());
        // A burst is taken from the source in one call (one wake-up), then
        // handled item by item exactly as if received one at a time.
        let mut batch = Vec::with_capacity(RECV_BATCH);
        'recv: loop {
            let received = tokio::select! {
                received = source.recv_many(&mut batch, RECV_BATCH) => received,
                _ = stopped.wait_for(|s| *s) => 0,
            };
            if received == 0 {
                break;
            }
            for Received { peer, item } in batch.drain(..) {
                let item = match item {
                    Ok(Method::Reparent(notice)) => {
                        bump(&self.counters.received, 1);
                        self.take_notice(notice, peer);
                        continue;
                    }
                    other => other,
                };
                let Some(event) = self.admit(&peer, item) else {
                    continue;
                };
                if !has_side_effects(&event) && !self.lanes.is_running(event.subject()) {
                    if let Some(verdict) = self.quick_check(&event, &peer) {
                        // Nothing to apply, nothing of its pod's ahead of it,
                        // and its sender checked against a recent snapshot:
                        // render it here, without a task or a slot in flight
                        // (and whatever the scope table is doing).
                        if self.admit_sender(&event, &peer, verdict) {
                            self.handle(event, peer).await;
                        }
                        continue;
                    }
                }
                // The semaphore is never closed, so acquiring only waits.
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break 'recv;
                };
                let job = Job {
                    event,
                    peer,
                    _permit: permit,
                };
                if let Some((key, job)) = self.lanes.enqueue(job) {
                    lanes.spawn(self.clone().lane(key, job));
                }
            }
        }
        lanes.close();
        lanes.wait().await;
        if let Some(reconciler) = reconciler {
            reconciler.abort();
            let _ = reconciler.await;
        }
        self.stop_exits(exit_follower).await;
        self.parent.wait_for_relays().await;
    }

    /// Counts one received item; returns it when it is a valid event.
    fn admit(&self, peer: &Peer, item: Result<Method, ReceiveError>) -> Option<PodEvent> {
        let counters = &self.counters;
        bump(&counters.received, 1);
        let event = match item {
            Ok(Method::PodEvent(event)) => event,
            Ok(other) => {
                bump(&counters.unsupported, 1);
                tracing::warn!(method = other.name(), pid = ?peer.pid, "rejected a method a pod-events endpoint does not handle");
                return None;
            }
            Err(error) => {
                bump(&counters.undecodable, 1);
                tracing::warn!(%error, pid = ?peer.pid, "skipped an undecodable frame");
                return None;
            }
        };
        if let Err(error) = event.validate() {
            bump(&counters.invalid, 1);
            tracing::warn!(%error, kind = event.kind(), pid = ?peer.pid, "skipped an invalid pod event");
            return None;
        }
        Some(event)
    }

    /// A `reparent` notice (DESIGN section 12): checked against the
    /// table in the event path's next batch, then applied to this pod's
    /// upward link, on a task of its own (it waits for the table; the
    /// receive loop does not).
    fn take_notice(self: &Arc<Self>, notice: Reparent, peer: Peer) {
        if let Err(error) = notice.validate() {
            bump(&self.counters.invalid, 1);
            tracing::warn!(%error, pid = ?peer.pid, "skipped an invalid reparent notice");
            return;
        }
        let shared = self.clone();
        tokio::spawn(async move {
            let (verdict, answer) = tokio::sync::oneshot::channel();
            let (judge, notice_) = (shared.clone(), notice.clone());
            let peer_ = peer.clone();
            shared.parent.visit_table(Box::new(move |table| {
                let _ = verdict.send(judge.judge_notice(&notice_, &peer_, table));
            }));
            let verdict = answer
                .await
                .unwrap_or_else(|_| Err("the scope table could not be read".to_owned()));
            let applied = verdict.and_then(|()| match shared.parent.upward() {
                Some(link) => Ok(link.redirect(notice.parent_socket.clone(), notice.seq)),
                None => Err("this pod is top-level: it reports to nobody".to_owned()),
            });
            match applied {
                Ok(moved) => {
                    bump(&shared.counters.reparent_notices, 1);
                    if moved {
                        tracing::info!(parent = %notice.parent_pod, socket = %notice.parent_socket, seq = notice.seq, "reports to a new manager from now on");
                    }
                }
                Err(reason) => {
                    bump(&shared.counters.rejected_notices, 1);
                    tracing::warn!(pid = ?peer.pid, parent = %notice.parent_pod, %reason, "refused a reparent notice");
                }
            }
        });
    }

    fn judge_notice(
        &self,
        notice: &Reparent,
        peer: &Peer,
        table: Option<&Table>,
    ) -> Result<(), String> {
        let me = self.parent.name().as_str();
        self.with_context(|context| context.judge_reparent(notice, me, peer, table))
    }

    async fn reconcile_every(
        self: Arc<Self>,
        interval: Duration,
        mut stopped: watch::Receiver<bool>,
    ) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stopped.wait_for(|s| *s) => return,
            }
            let report = self.parent.reconcile().await;
            deliver_reconciliation(&report, &self.sink);
            self.resync_exits(&report);
            bump(&self.counters.failures, report.failures as u64);
            bump(&self.counters.reconciles, 1);
        }
    }

    /// The verdict on `event` from the latest snapshot, when that is
    /// enough to decide (a `TurnEnded` or `Errored` it admits). A snapshot
    /// that is no longer recent still serves, so such events are rendered
    /// whatever the table is doing; it is refreshed in the background.
    fn quick_check(self: &Arc<Self>, event: &PodEvent, peer: &Peer) -> Option<Verdict> {
        let snapshot = self.snapshots.current();
        if !snapshot.is_recent(self.config.snapshot_max_age) {
            self.refresh_snapshot();
            if !snapshot.is_loaded() {
                return None;
            }
        }
        quick_verdict(event, peer, &snapshot, self.config.sender_policy)
    }

    /// Starts a load of the snapshot unless one runs.
    fn refresh_snapshot(self: &Arc<Self>) {
        if self.snapshots.begin_load() {
            let shared = self.clone();
            tokio::spawn(async move {
                let snapshot = shared.parent.table_snapshot().await;
                shared.snapshots.publish(snapshot);
            });
        }
    }

    /// Checks the sender of `event`: against the latest snapshot when that
    /// admits it, else against the table as the batcher reads it after
    /// every table operation queued before (one read serves every check
    /// and lookup of a batch, and nothing copies the table).
    async fn check_sender(self: &Arc<Self>, event: &PodEvent, peer: &Peer) -> Verdict {
        if let Some(verdict) = self.quick_check(event, peer) {
            return verdict;
        }
        let (verdict, answer) = tokio::sync::oneshot::channel();
        let (shared, event_, peer_) = (self.clone(), event.clone(), peer.clone());
        self.parent.visit_table(Box::new(move |table| {
            let _ = verdict.send(shared.judge(&event_, &peer_, table));
        }));
        match answer.await {
            Ok(verdict) => verdict,
            // The store panicked in the batch: judged as unreadable.
            Err(_) => self.judge(event, peer, None),
        }
    }

    /// The full judgement of `event`'s sender on `table` (`None`:
    /// unreadable). Reads the registry and `/proc`, never the store.
    fn judge(&self, event: &PodEvent, peer: &Peer, table: Option<&Table>) -> Verdict {
        self.with_context(|context| context.judge(event, peer, table))
    }

    /// Runs `f` with what judging a sender needs besides the table.
    fn with_context<T>(&self, f: impl FnOnce(&Context<'_>) -> T) -> T {
        let parent = &self.parent;
        let is_live = |a: &pod_scope_lock::Allocation| parent.scopes().is_live(a);
        let is_registered = |name: &str| {
            parent
                .registry()
                .read(|state| state.records_named(name).next().is_some())
        };
        let is_departed = |name: &str, incarnation: &str| {
            parent
                .registry()
                .read(|state| state.is_departed(name, Some(incarnation)))
        };
        let context = Context {
            policy: self.config.sender_policy,
            tree: self.config.process_tree.as_ref(),
            is_live: &is_live,
            is_registered: &is_registered,
            is_departed: &is_departed,
        };
        f(&context)
    }

    /// Counts the verdict; logs a rejection. Whether to go on with the
    /// event.
    fn admit_sender(&self, event: &PodEvent, peer: &Peer, verdict: Verdict) -> bool {
        match verdict {
            Verdict::Verified => true,
            Verdict::Unverified => {
                bump(&self.counters.unverified, 1);
                true
            }
            Verdict::Rejected(reason) => {
                bump(&self.counters.rejected_senders, 1);
                tracing::warn!(
                    pid = ?peer.pid,
                    uid = peer.uid,
                    kind = event.kind(),
                    pod = event.subject(),
                    %reason,
                    "refused an event its sender may not send"
                );
                false
            }
        }
    }

    /// Applies one pod's events in arrival order until its queue is empty.
    async fn lane(self: Arc<Self>, key: String, mut job: Job) {
        loop {
            let verdict = self.check_sender(&job.event, &job.peer).await;
            if self.admit_sender(&job.event, &job.peer, verdict) {
                self.handle(job.event, job.peer).await;
            }
            match self.lanes.next(&key) {
                Some(next) => job = next,
                None => return,
            }
        }
    }

    /// Applies, renders and delivers one event, in a `pod_event` span.
    async fn handle(&self, event: PodEvent, peer: Peer) {
        let span = tracing::info_span!("pod_event", pod = %event.subject(), kind = event.kind());
        let effects = self.parent.apply_validated(&event).instrument(span).await;
        self.follow_effects(&effects);
        bump(&self.counters.failures, effects.failures as u64);
        let inferred = effects.presumed_dead.then(|| PodEvent::ShutDown {
            pod_name: event.subject().to_owned(),
            incarnation: event.subject_incarnation().map(str::to_owned),
        });
        let applied = applied(&effects);
        let line = render_applied(&event, Origin::Reported, &applied);
        self.sink.deliver(Notification {
            line,
            event,
            origin: Origin::Reported,
            peer: Some(peer),
        });
        if let Some(inferred) = inferred {
            deliver_inferred(&self.sink, inferred, &applied);
        }
        bump(&self.counters.applied, 1);
    }
}

/// One event waiting in, or running on, its pod's lane. Holding the permit
/// counts it against [`EndpointConfig::max_in_flight`].
struct Job {
    event: PodEvent,
    peer: Peer,
    _permit: OwnedSemaphorePermit,
}

/// The events waiting behind the one running, per pod with a running lane.
#[derive(Default)]
struct Lanes {
    waiting: Mutex<HashMap<String, VecDeque<Job>>>,
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<Job>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `job` behind its pod's running lane, or returns it (with the
    /// lane's key) when no lane runs for that pod: the caller starts one.
    fn enqueue(&self, job: Job) -> Option<(String, Job)> {
        let mut waiting = self.lock();
        match waiting.get_mut(job.event.subject()) {
            Some(queue) => {
                queue.push_back(job);
                None
            }
            None => {
                let key = job.event.subject().to_owned();
                waiting.insert(key.clone(), VecDeque::new());
                Some((key, job))
            }
        }
    }

    /// Whether a lane runs for `key`.
    fn is_running(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// The next job of lane `key`, or `None` after closing the lane.
    fn next(&self, key: &str) -> Option<Job> {
        let mut waiting = self.lock();
        let next = waiting.get_mut(key).and_then(VecDeque::pop_front);
        if next.is_none() {
            waiting.remove(key);
        }
        next
    }
}

/// Whether applying `event` touches the registry or the scope table (the
/// semantics table: only `ShutDown` and `ScopeSubDelegated` do).
fn has_side_effects(event: &PodEvent) -> bool {
    !matches!(event, PodEvent::TurnEnded { .. } | PodEvent::Errored { .. })
}

/// The words of what applying an event did.
fn applied(effects: &Effects) -> Applied {
    Applied::saved()
        .released(effects.released.is_some())
        .not_saved(effects.not_saved.clone())
}

fn deliver_inferred(sink: &impl NotificationSink, event: PodEvent, applied: &Applied) {
    sink.deliver(Notification {
        line: render_applied(&event, Origin::Inferred, applied),
        event,
        origin: Origin::Inferred,
        peer: None,
    });
}

/// Delivers one line per inferred outcome of a reconcile pass.
pub(crate) fn deliver_reconciliation(report: &Reconciliation, sink: &impl NotificationSink) {
    for (event, effects) in &report.presumed_crashed {
        deliver_inferred(sink, event.clone(), &applied(effects));
    }
    for (event, _) in &report.adopted {
        deliver_inferred(sink, event.clone(), &Applied::saved());
    }
}
