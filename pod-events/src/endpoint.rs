//! The receive loop: a parent endpoint that owns a source of methods.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pod_protocol::{Method, PodEvent};
use pod_registry::Registry;
use pod_scope_lock::{Liveness, TableStore};
use pod_transport::{MethodSender, MethodSource, Peer, ReceiveError, Received};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::parent::{Parent, Reconciliation};
use crate::probe::Reachability;
use crate::render::{render, Origin};

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
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            max_in_flight: 4096,
            reconcile_interval: Some(Duration::from_secs(30)),
        }
    }
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
        }
    }
}

fn bump(counter: &AtomicU64, by: u64) {
    counter.fetch_add(by, Ordering::Relaxed);
}

/// A running endpoint: returned by [`spawn_endpoint`].
#[derive(Debug)]
pub struct EndpointHandle {
    counters: Arc<Counters>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl EndpointHandle {
    /// A snapshot of the counters.
    pub fn stats(&self) -> EndpointStats {
        self.counters.snapshot()
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
/// configured interval, its inferred outcomes delivered the same way.
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
    let shared = Arc::new(Shared {
        parent,
        sink,
        counters: counters.clone(),
        lanes: Lanes::default(),
    });
    let task = tokio::spawn(shared.run(source, config, stopped));
    EndpointHandle {
        counters,
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
    lanes: Lanes,
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
        config: EndpointConfig,
        mut stopped: watch::Receiver<bool>,
    ) {
        let in_flight = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
        let lanes = TaskTracker::new();
        let reconciler = config
            .reconcile_interval
            .map(|interval| tokio::spawn(self.clone().reconcile_every(interval, stopped.clone())));
        loop {
            let received = tokio::select! {
                received = source.recv() => received,
                _ = stopped.wait_for(|s| *s) => None,
            };
            let Some(Received { peer, item }) = received else {
                break;
            };
            let Some(event) = self.admit(&peer, item) else {
                continue;
            };
            // The semaphore is never closed, so acquiring only waits.
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
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
        lanes.close();
        lanes.wait().await;
        if let Some(reconciler) = reconciler {
            reconciler.abort();
            let _ = reconciler.await;
        }
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
            bump(&self.counters.failures, report.failures as u64);
            bump(&self.counters.reconciles, 1);
        }
    }

    /// Applies one pod's events in arrival order until its queue is empty.
    async fn lane(self: Arc<Self>, key: String, mut job: Job) {
        loop {
            self.handle(job.event, job.peer).await;
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
        bump(&self.counters.failures, effects.failures as u64);
        let inferred = effects.presumed_dead.then(|| PodEvent::ShutDown {
            pod_name: event.subject().to_owned(),
            incarnation: event.subject_incarnation().map(str::to_owned),
        });
        let line = render(&event, Origin::Reported);
        self.sink.deliver(Notification {
            line,
            event,
            origin: Origin::Reported,
            peer: Some(peer),
        });
        if let Some(inferred) = inferred {
            deliver_inferred(&self.sink, inferred);
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

fn deliver_inferred(sink: &impl NotificationSink, event: PodEvent) {
    sink.deliver(Notification {
        line: render(&event, Origin::Inferred),
        event,
        origin: Origin::Inferred,
        peer: None,
    });
}

/// Delivers one line per inferred outcome of a reconcile pass.
pub(crate) fn deliver_reconciliation(report: &Reconciliation, sink: &impl NotificationSink) {
    for (event, _) in &report.presumed_crashed {
        deliver_inferred(sink, event.clone());
    }
    for (event, _) in &report.adopted {
        deliver_inferred(sink, event.clone());
    }
}
