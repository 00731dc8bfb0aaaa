//! Releasing a pod's own allocation exactly once: on an orderly shutdown
//! ([`Guard::depart`]), else best-effort when the guard is dropped.
//!
//! Shared by the child's [`PodContext`](crate::PodContext) (which also
//! reports `ShutDown` upward) and the top-level [`Pod`](crate::Pod) (which
//! has no one to report to). Their table work runs through [`on_table`],
//! so that a flock or an fsync never stalls the executor.

use crate::UpwardLink;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use pod_protocol::{PodEvent, PodName};
use pod_scope_lock::{Allocation, Liveness, ScopeError, ScopeTable, TableStore};
use pod_transport::MethodSender;

/// What a pod's own departure did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Departure {
    /// This call did the departure; `false` when an earlier call (or the
    /// drop guard) already had, and this one did nothing.
    pub first: bool,
    /// The allocation this call released; `None` when it was already gone
    /// (the parent releases it on receiving the `ShutDown`, or reclaim
    /// did) or could not be released (logged at warn level; the parent's
    /// reconcile reclaims it once this process is gone).
    pub released: Option<Allocation>,
    /// The `ShutDown` was delivered to the parent's socket (always `false`
    /// for a pod without a parent).
    pub reported: bool,
}

/// The pod's allocation, and where to report its departure.
#[derive(Debug)]
pub(crate) struct Guard<S: TableStore, L: Liveness, U: MethodSender + Clone> {
    pub(crate) name: PodName,
    pub(crate) incarnation: String,
    pub(crate) table: ScopeTable<S, L>,
    /// The sender and the link to the parent; `None` for a top-level pod.
    pub(crate) report_to: Option<(U, UpwardLink)>,
    done: Arc<AtomicBool>,
}

impl<S: TableStore, L: Liveness, U: MethodSender + Clone> Guard<S, L, U> {
    pub(crate) fn new(
        name: PodName,
        incarnation: String,
        table: ScopeTable<S, L>,
        report_to: Option<(U, UpwardLink)>,
    ) -> Self {
        Guard {
            name,
            incarnation,
            table,
            report_to,
            done: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the departure happened already.
    pub(crate) fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }

    /// Reports `ShutDown` (if there is a parent), then releases the
    /// allocation; only the first call (or drop) does anything.
    ///
    /// Report first: while the allocation is still held by this process,
    /// the parent's sender check verifies the claim under every
    /// [`SenderPolicy`](crate::SenderPolicy) (once released, only the
    /// legacy policy would admit it), and the parent releases the
    /// allocation itself on receipt. The release here then finds it gone,
    /// or does it when the parent could not.
    pub(crate) async fn depart(&self) -> Departure {
        if self.done.swap(true, Ordering::AcqRel) {
            return Departure::default();
        }
        let reported = match &self.report_to {
            Some((sender, link)) => {
                report(sender, &link.address(), &self.name, &self.incarnation).await
            }
            None => false,
        };
        let (name, incarnation) = (self.name.clone(), self.incarnation.clone());
        let released = on_table(&self.table, move |table| {
            release(table, &name, &incarnation)
        })
        .await;
        Departure {
            first: true,
            released,
            reported,
        }
    }
}

impl<S: TableStore, L: Liveness, U: MethodSender + Clone> Drop for Guard<S, L, U> {
    /// Best-effort departure when [`depart`](Guard::depart) was never
    /// called (an early return, a panic unwinding): the same report and
    /// release, on a thread of its own with its own runtime, joined here.
    /// A drop cannot await, and a task spawned on the caller's runtime
    /// would not run when the drop happens as that runtime shuts down.
    /// Each step is bounded (the transport's send deadline, the table's
    /// lock wait), so the join is too. A SIGKILL skips this; the parent's
    /// reconcile covers it.
    fn drop(&mut self) {
        if self.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let report_to = self.report_to.clone();
        let (table, name, incarnation) = (
            self.table.clone(),
            self.name.clone(),
            self.incarnation.clone(),
        );
        let worker = std::thread::Builder::new()
            .name("pod-depart".into())
            .spawn(move || {
                if let Some((sender, link)) = report_to {
                    let socket = link.address();
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => {
                            runtime.block_on(report(&sender, &socket, &name, &incarnation));
                        }
                        Err(error) => {
                            tracing::warn!(%error, pod = %name, "could not report ShutDown on drop");
                        }
                    }
                }
                release(&table, &name, &incarnation);
            });
        match worker {
            Ok(worker) => {
                let _ = worker.join();
            }
            Err(error) => {
                tracing::warn!(%error, pod = %self.name, "could not release the allocation on drop; reconcile will reclaim it");
            }
        }
    }
}

/// Runs `f` on `table`: on a blocking thread when its store may block (a
/// flock, an fsync), inline otherwise.
pub(crate) async fn on_table<S: TableStore, L: Liveness, T: Send + 'static>(
    table: &ScopeTable<S, L>,
    f: impl FnOnce(&ScopeTable<S, L>) -> T + Send + 'static,
) -> T {
    if !table.store().may_block() {
        return f(table);
    }
    let table = table.clone();
    off_executor(move || f(&table)).await
}

/// Runs `f` on a blocking thread; a panic there goes on here.
pub(crate) async fn off_executor<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// Sends `ShutDown { name, incarnation }` to `socket`; whether it was
/// delivered (a failure is logged).
async fn report<U: MethodSender>(
    sender: &U,
    socket: &str,
    name: &PodName,
    incarnation: &str,
) -> bool {
    let event = PodEvent::ShutDown {
        pod_name: name.to_string(),
        incarnation: Some(incarnation.to_owned()),
    };
    match crate::send_pod_event(sender, std::path::Path::new(socket), event).await {
        Ok(()) => true,
        Err(error) => {
            tracing::warn!(%socket, %error, pod = %name, "dropped a ShutDown the parent did not accept; its reconcile will infer it");
            false
        }
    }
}

/// Releases the allocation; `None` when it is gone already or the release
/// failed (logged).
fn release<S: TableStore, L: Liveness>(
    table: &ScopeTable<S, L>,
    name: &PodName,
    incarnation: &str,
) -> Option<Allocation> {
    match table.release(name, Some(incarnation)) {
        Ok(allocation) => Some(allocation),
        Err(ScopeError::UnknownPod { .. } | ScopeError::IncarnationMismatch { .. }) => None,
        Err(error) => {
            tracing::warn!(%error, pod = %name, "could not release this pod's allocation; reconcile will reclaim it once this process is gone");
            None
        }
    }
}
