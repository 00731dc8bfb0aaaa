//! The endpoint's side of push liveness ([`crate::watch`]): which pods
//! are watched, the bound on them, and what a reported exit does.
//!
//! The watched set follows the registry without reading the table on the
//! event path: a `ScopeSubDelegated` that registers a pod adds the
//! allocation its apply looked up anyway, a `ShutDown` removes what it
//! removed, and after each reconcile the set is re-synced with what that
//! pass found (pods no longer registered dropped, live ones added). The
//! spawner's children are added by the facade as they are spawned.
//!
//! Past [`EndpointConfig::max_exit_watches`](super::EndpointConfig)
//! pods, a pod is not watched (counted in
//! [`EndpointStats::unwatched_over_bound`](super::EndpointStats)); the
//! re-sync after the next reconcile tries again, and until then reconcile
//! is what finds its exit, as for a pod the watch cannot watch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pod_registry::Registry;
use pod_scope_lock::{Liveness, TableStore};
use pod_transport::MethodSender;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::{applied, bump, deliver_inferred, Counters, EndpointConfig, NotificationSink, Shared};
use crate::parent::{Effects, Reconciliation};
use crate::probe::Reachability;
use crate::watch::{Exit, ExitSignal, ExitWatch, WatchError, WatchedPod};

type Key = (String, Option<String>);

fn key(pod: &WatchedPod) -> Key {
    (pod.pod_name.to_string(), pod.incarnation.clone())
}

/// The pods an endpoint watches, at most `max` of them.
#[derive(Debug)]
pub(super) struct ExitWatches {
    watch: Option<Arc<dyn ExitWatch>>,
    max: usize,
    grace: Duration,
    exits: mpsc::UnboundedSender<Exit>,
    reported: Mutex<Option<mpsc::UnboundedReceiver<Exit>>>,
    state: Mutex<State>,
    /// Exits being handled, so a stopping endpoint finishes them.
    handling: TaskTracker,
    /// Ends every watch when the endpoint stops.
    stop: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    watched: HashMap<Key, Watch>,
    next_id: u64,
}

#[derive(Debug)]
struct Watch {
    id: u64,
    stop: CancellationToken,
}

impl ExitWatches {
    pub(super) fn new(config: &EndpointConfig) -> Self {
        let (exits, reported) = mpsc::unbounded_channel();
        ExitWatches {
            watch: config.exit_watch.clone(),
            max: config.max_exit_watches,
            grace: config.exit_grace,
            exits,
            reported: Mutex::new(Some(reported)),
            state: Mutex::default(),
            handling: TaskTracker::new(),
            stop: CancellationToken::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `pod` unless it is already watched, the bound is reached
    /// or the watch refuses it (each counted). Whether it is watched now.
    pub(super) fn watch(&self, pod: WatchedPod, counters: &Counters) -> bool {
        let Some(watch) = &self.watch else {
            return false;
        };
        if self.stop.is_cancelled() {
            return false;
        }
        let key = key(&pod);
        let (id, stop) = {
            let mut state = self.lock();
            if state.watched.contains_key(&key) {
                return true;
            }
            if state.watched.len() >= self.max {
                bump(&counters.unwatched_over_bound, 1);
                return false;
            }
            let id = state.next_id;
            state.next_id += 1;
            let stop = self.stop.child_token();
            let entry = Watch {
                id,
                stop: stop.clone(),
            };
            state.watched.insert(key.clone(), entry);
            set(&counters.watching, state.watched.len());
            (id, stop)
        };
        let signal = ExitSignal::new(id, pod, self.exits.clone(), stop);
        match watch.watch(signal) {
            Ok(()) => true,
            Err(error) => {
                bump(&counters.unwatchable, 1);
                match &error {
                    // The watch logs that once itself.
                    WatchError::Unsupported { .. } => tracing::debug!(%error),
                    _ => tracing::warn!(%error),
                }
                self.remove(&key, Some(id), counters);
                false
            }
        }
    }

    /// Stops watching `key` (only watch `id`, when given).
    fn remove(&self, key: &Key, id: Option<u64>, counters: &Counters) -> bool {
        let mut state = self.lock();
        let current = state
            .watched
            .get(key)
            .is_some_and(|w| id.is_none_or(|id| w.id == id));
        if current {
            if let Some(watch) = state.watched.remove(key) {
                watch.stop.cancel();
            }
            set(&counters.watching, state.watched.len());
        }
        current
    }

    /// Stops watching every pod for which `keep` says no.
    fn retain(&self, mut keep: impl FnMut(&Key) -> bool, counters: &Counters) {
        let mut state = self.lock();
        state.watched.retain(|key, watch| {
            let kept = keep(key);
            if !kept {
                watch.stop.cancel();
            }
            kept
        });
        set(&counters.watching, state.watched.len());
    }
}

fn set(gauge: &std::sync::atomic::AtomicU64, value: usize) {
    gauge.store(value as u64, std::sync::atomic::Ordering::Relaxed);
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
    /// Keeps the watched set in step with what applying one event did.
    pub(super) fn follow_effects(&self, effects: &Effects) {
        for record in &effects.removed {
            let key = (record.pod_name.to_string(), record.incarnation.clone());
            self.exits.remove(&key, None, &self.counters);
        }
        if let Some(allocation) = &effects.live_allocation {
            self.exits.watch(WatchedPod::of(allocation), &self.counters);
        }
    }

    /// Re-syncs the watched set after a reconcile pass: pods no longer
    /// registered are dropped, the live ones it found are watched.
    pub(super) fn resync_exits(&self, report: &Reconciliation) {
        let registry = self.parent.registry();
        self.exits.retain(
            |(name, incarnation)| {
                registry.read(|state| state.get(name, incarnation.as_deref()).is_some())
            },
            &self.counters,
        );
        for allocation in &report.alive {
            self.exits.watch(WatchedPod::of(allocation), &self.counters);
        }
    }

    /// Handles the exits the watch reports until the endpoint stops: each
    /// after the grace period (so a `ShutDown` the pod sent just before it
    /// exited is applied first), as reconcile would for that pod.
    pub(super) async fn follow_exits(self: Arc<Self>) {
        let taken = self
            .exits
            .reported
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut reported) = taken else {
            return;
        };
        loop {
            let exit = tokio::select! {
                exit = reported.recv() => exit,
                _ = self.exits.stop.cancelled() => None,
            };
            let Some(Exit { id, pod }) = exit else {
                return;
            };
            if !self.exits.remove(&key(&pod), Some(id), &self.counters) {
                continue;
            }
            let shared = self.clone();
            let span = tracing::info_span!("pod_exit", pod = %pod.pod_name, pid = pod.pid);
            let handled = async move {
                tokio::time::sleep(shared.exits.grace).await;
                let Some((event, effects)) = shared.parent.presume_exited(&pod).await else {
                    return;
                };
                bump(&shared.counters.failures, effects.failures as u64);
                bump(&shared.counters.exits_presumed, 1);
                deliver_inferred(&shared.sink, event, &applied(&effects));
            };
            self.exits.handling.spawn(handled.instrument(span));
        }
    }

    /// Ends every watch and waits for the exits being handled.
    pub(super) async fn stop_exits(&self, follower: tokio::task::JoinHandle<()>) {
        self.exits.stop.cancel();
        let _ = follower.await;
        self.exits.handling.close();
        self.exits.handling.wait().await;
    }
}
