//! Push liveness: being told a pod's process exited instead of finding
//! out at the next reconcile.
//!
//! The endpoint hands an [`ExitWatch`] each registered pod it knows a
//! live holder of (an [`ExitSignal`] naming the pod, its incarnation, pid
//! and start time); the watch calls [`ExitSignal::exited`] once that
//! holder is gone, and the endpoint applies what reconcile would have
//! applied for that pod alone: a synthetic `ShutDown` (departed, released,
//! relayed) rendered as "presumed crashed". [`PidfdWatch`] watches local
//! processes with `pidfd_open(2)`; `LeaseWatch` (feature `etcd`) watches
//! the etcd leases that hold pods' allocations on a table on etcd, so a
//! pod on another machine whose lease is revoked or expires is presumed
//! crashed at once too.
//!
//! A watch is a hint, never the truth: before applying anything the
//! endpoint checks that the pod is still registered and that its holder
//! is dead by the parent's own [`Liveness`](pod_scope_lock::Liveness). So
//! an exit reported twice, for a pod that already reported its
//! `ShutDown`, or for a process that is in fact alive (a pid that means
//! nothing to this watch, as in a table of fake or remote pids) changes
//! nothing. Whatever a watch misses (a kernel without pidfd, more pods
//! than the watch bound, a pod registered while its allocation was still
//! a reservation) reconcile finds, as before.

use std::fmt;
use std::sync::{Arc, Mutex};

use pod_protocol::PodName;
use pod_scope_lock::Allocation;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The holder of one pod's allocation, as an [`ExitWatch`] watches it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct WatchedPod {
    /// The pod.
    pub pod_name: PodName,
    /// Its incarnation (`None`: a legacy pod, any incarnation).
    pub incarnation: Option<String>,
    /// Its holder's process id (on an etcd table, a holder id).
    pub pid: u32,
    /// Its holder's start time (clock ticks since boot; on an etcd table,
    /// a lease id); `None`: the pid alone says whether it lives.
    pub start_time: Option<u64>,
}

impl WatchedPod {
    /// The holder of `allocation`.
    pub fn of(allocation: &Allocation) -> Self {
        WatchedPod {
            pod_name: allocation.pod_name.clone(),
            incarnation: allocation.incarnation.clone(),
            pid: allocation.pid,
            start_time: allocation.start_time,
        }
    }

    /// A pod held by process `pid` started at `start_time`.
    pub fn new(
        pod_name: PodName,
        incarnation: Option<String>,
        pid: u32,
        start_time: Option<u64>,
    ) -> Self {
        WatchedPod {
            pod_name,
            incarnation,
            pid,
            start_time,
        }
    }
}

/// An exit an [`ExitWatch`] reported: which watch, of which pod.
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) id: u64,
    pub(crate) pod: WatchedPod,
}

/// One watch of one pod, handed to [`ExitWatch::watch`]: report the exit
/// with [`exited`](Self::exited); stop watching once
/// [`stopped`](Self::stopped) resolves (the pod departed, or the endpoint
/// stopped).
#[derive(Debug)]
pub struct ExitSignal {
    id: u64,
    pod: WatchedPod,
    exits: mpsc::UnboundedSender<Exit>,
    stop: CancellationToken,
}

impl ExitSignal {
    pub(crate) fn new(
        id: u64,
        pod: WatchedPod,
        exits: mpsc::UnboundedSender<Exit>,
        stop: CancellationToken,
    ) -> Self {
        ExitSignal {
            id,
            pod,
            exits,
            stop,
        }
    }

    /// The pod to watch.
    pub fn pod(&self) -> &WatchedPod {
        &self.pod
    }

    /// Reports that the pod's holder is gone (nothing once the watch is
    /// stopped).
    pub fn exited(self) {
        if !self.stop.is_cancelled() {
            let _ = self.exits.send(Exit {
                id: self.id,
                pod: self.pod,
            });
        }
    }

    /// Resolves once nobody wants this exit any more.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Whether nobody wants this exit any more.
    pub fn is_stopped(&self) -> bool {
        self.stop.is_cancelled() || self.exits.is_closed()
    }
}

/// Why a pod is not watched; reconcile finds its exit instead.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// This kind of watch does not work here at all (no `pidfd_open` in
    /// this kernel, or a sandbox forbids it); nothing will be watched.
    #[error("exits cannot be watched here ({reason}); reconcile finds them instead")]
    Unsupported {
        /// What the system said.
        reason: String,
    },
    /// This one pod cannot be watched now (out of file descriptors, no
    /// I/O driver in the runtime).
    #[error("cannot watch pod `{pod}` (pid {pid}): {source}; reconcile finds its exit instead")]
    Io {
        /// The pod.
        pod: PodName,
        /// Its holder's pid.
        pid: u32,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// Seam: tells the endpoint when a pod's holder exits. Required method:
/// [`watch`](ExitWatch::watch).
///
/// Called on the endpoint's tokio runtime, which an implementation may
/// spawn its tasks on; it must not block.
pub trait ExitWatch: fmt::Debug + Send + Sync + 'static {
    /// Starts watching `signal`'s pod: calls [`ExitSignal::exited`] once
    /// its holder is gone (at once when it already is), and gives up the
    /// watch once [`ExitSignal::stopped`] resolves. An error means the
    /// pod is not watched.
    fn watch(&self, signal: ExitSignal) -> Result<(), WatchError>;
}

impl<T: ExitWatch> ExitWatch for Arc<T> {
    fn watch(&self, signal: ExitSignal) -> Result<(), WatchError> {
        (**self).watch(signal)
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
pub use pidfd::PidfdWatch;

#[cfg(any(target_os = "linux", target_os = "android"))]
mod pidfd {
    use std::sync::atomic::{AtomicBool, Ordering};

    use pod_scope_lock::{Liveness, ProcLiveness};
    use rustix::io::Errno;
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    use super::{ExitSignal, ExitWatch, WatchError};

    /// Watches local processes with `pidfd_open(2)` (Linux 5.3 and
    /// later): a pidfd turns readable when its process exits, and the
    /// runtime's I/O driver wakes one small task per watched pod.
    ///
    /// A pid that names no process, or a process whose start time is not
    /// the recorded one (the pid was reused), is reported exited at once:
    /// the pidfd is opened before the start time is read, so the process
    /// it follows is the recorded one. When the kernel has no pidfd
    /// (`ENOSYS`) or a sandbox refuses it (`EPERM`, `EACCES`), that is
    /// logged once and nothing is watched any more.
    #[derive(Debug, Default)]
    pub struct PidfdWatch {
        unsupported: AtomicBool,
    }

    impl PidfdWatch {
        /// A watch of this machine's processes.
        pub fn new() -> Self {
            Self::default()
        }

        fn unsupported(&self, errno: Errno) -> WatchError {
            if !self.unsupported.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    error = %errno,
                    "pidfd_open is not available; pods' exits are found by reconcile only"
                );
            }
            WatchError::Unsupported {
                reason: format!("pidfd_open: {errno}"),
            }
        }
    }

    impl ExitWatch for PidfdWatch {
        fn watch(&self, signal: ExitSignal) -> Result<(), WatchError> {
            if self.unsupported.load(Ordering::Relaxed) {
                return Err(WatchError::Unsupported {
                    reason: "pidfd_open failed before".to_owned(),
                });
            }
            let pod = signal.pod();
            // Pid 0 and pids past i32::MAX name no process.
            let Some(pid) = i32::try_from(pod.pid).ok().and_then(Pid::from_raw) else {
                signal.exited();
                return Ok(());
            };
            let fd = match pidfd_open(pid, PidfdFlags::NONBLOCK) {
                Ok(fd) => fd,
                Err(Errno::SRCH) => {
                    signal.exited();
                    return Ok(());
                }
                Err(errno @ (Errno::NOSYS | Errno::PERM | Errno::ACCESS)) => {
                    return Err(self.unsupported(errno));
                }
                Err(errno) => {
                    return Err(WatchError::Io {
                        pod: pod.pod_name.clone(),
                        pid: pod.pid,
                        source: errno.into(),
                    })
                }
            };
            let same = match pod.start_time {
                Some(start_time) => ProcLiveness.is_same_process(pod.pid, start_time),
                None => ProcLiveness.is_alive(pod.pid),
            };
            if !same {
                signal.exited();
                return Ok(());
            }
            // Deprecated since tokio 1.54 for types whose descriptor may
            // change or be closed while registered (the replacement is an
            // `unsafe fn`, and this crate forbids unsafe code). An
            // `OwnedFd` moved into the `AsyncFd` and never taken out again
            // is open and the same for the registration's whole life,
            // which is exactly the contract the replacement asks for.
            #[allow(deprecated)]
            let fd = AsyncFd::with_interest(fd, Interest::READABLE).map_err(|source| {
                WatchError::Io {
                    pod: pod.pod_name.clone(),
                    pid: pod.pid,
                    source,
                }
            })?;
            tokio::spawn(async move {
                tokio::select! {
                    // A pidfd is readable once its process has exited;
                    // an error of the driver is as good a reason to look.
                    _ = fd.readable() => signal.exited(),
                    _ = signal.stopped() => {}
                }
            });
            Ok(())
        }
    }
}

#[cfg(feature = "etcd")]
pub use lease::LeaseWatch;

#[cfg(feature = "etcd")]
mod lease {
    use pod_scope_lock::LeaseLiveness;

    use super::{ExitSignal, ExitWatch, WatchError};

    /// Watches the lease holders of a scope table on etcd: a pod's holder
    /// is gone once its liveness key is (its lease revoked, or expired
    /// after its holder stopped renewing it: a crash, a partition), or
    /// once the key holds another lease than the allocation's
    /// `start_time`. Use it as [`EndpointConfig::exit_watch`] for an
    /// endpoint whose table is an [`EtcdStore`](pod_scope_lock::EtcdStore)
    /// probed by [`LeaseLiveness`]; [`PidfdWatch`](super::PidfdWatch)
    /// would watch the holder ids as if they were local pids.
    ///
    /// Every pod is served by one etcd watch of the table's liveness keys
    /// ([`LeaseLiveness::watch_gone`]), plus one small task per pod on the
    /// endpoint's runtime. While etcd cannot be asked nothing is reported
    /// (a holder nobody can ask about is presumed alive), and reconcile
    /// stays the fallback, as for every watch.
    ///
    /// [`EndpointConfig::exit_watch`]: crate::EndpointConfig::exit_watch
    #[derive(Debug, Clone)]
    pub struct LeaseWatch {
        liveness: LeaseLiveness,
    }

    impl LeaseWatch {
        /// A watch of the lease holders `liveness` probes (the endpoint's
        /// own table's).
        pub fn new(liveness: LeaseLiveness) -> Self {
            LeaseWatch { liveness }
        }
    }

    impl ExitWatch for LeaseWatch {
        fn watch(&self, signal: ExitSignal) -> Result<(), WatchError> {
            let pod = signal.pod();
            let runtime = tokio::runtime::Handle::try_current().map_err(|_| WatchError::Io {
                pod: pod.pod_name.clone(),
                pid: pod.pid,
                source: std::io::Error::other("not called on a tokio runtime"),
            })?;
            let gone = self.liveness.watch_gone(pod.pid, pod.start_time);
            runtime.spawn(async move {
                tokio::select! {
                    () = gone => signal.exited(),
                    () = signal.stopped() => {}
                }
            });
            Ok(())
        }
    }
}

/// An [`ExitWatch`] driven by hand, for tests: it keeps each signal until
/// [`exit`](Self::exit) reports it, and can refuse watches.
#[derive(Debug, Clone, Default)]
pub struct ManualExitWatch {
    inner: Arc<Mutex<ManualState>>,
}

#[derive(Debug, Default)]
struct ManualState {
    signals: Vec<ExitSignal>,
    refuse: bool,
}

impl ManualExitWatch {
    /// A watch that accepts every pod.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ManualState> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Refuses (`true`) or accepts (`false`) the next watches.
    pub fn refuse(&self, refuse: bool) {
        self.lock().refuse = refuse;
    }

    /// The pods watched now (stopped watches left out), in the order they
    /// were watched.
    pub fn watched(&self) -> Vec<WatchedPod> {
        let mut state = self.lock();
        state.signals.retain(|s| !s.is_stopped());
        state.signals.iter().map(|s| s.pod().clone()).collect()
    }

    /// Reports the exit of every watched pod named `name`; how many.
    pub fn exit(&self, name: &str) -> usize {
        let mut state = self.lock();
        let (exited, kept) = std::mem::take(&mut state.signals)
            .into_iter()
            .partition::<Vec<_>, _>(|s| s.pod().pod_name.as_str() == name && !s.is_stopped());
        state.signals = kept;
        let count = exited.len();
        exited.into_iter().for_each(ExitSignal::exited);
        count
    }
}

impl ExitWatch for ManualExitWatch {
    fn watch(&self, signal: ExitSignal) -> Result<(), WatchError> {
        let mut state = self.lock();
        if state.refuse {
            return Err(WatchError::Unsupported {
                reason: "refused by the test".to_owned(),
            });
        }
        state.signals.push(signal);
        Ok(())
    }
}

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use pod_scope_lock::{Liveness, ProcLiveness};

    use super::*;

    /// A liveness bound, not a performance assertion.
    const DEADLINE: Duration = Duration::from_secs(10);

    fn sleeper() -> Child {
        Command::new("sleep")
            .arg("600")
            .stdin(Stdio::null())
            .spawn()
            .expect("`sleep` runs")
    }

    fn watched(pid: u32, start_time: Option<u64>) -> WatchedPod {
        WatchedPod::new(
            PodName::new("kid").unwrap(),
            Some("i1".into()),
            pid,
            start_time,
        )
    }

    /// Watches `pod` with a fresh channel; the receiver and the token
    /// that stops the watch.
    fn watch(
        watch: &impl ExitWatch,
        pod: WatchedPod,
    ) -> (mpsc::UnboundedReceiver<Exit>, CancellationToken) {
        let (exits, reported) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        watch
            .watch(ExitSignal::new(7, pod, exits, stop.clone()))
            .expect("the pod is watched");
        (reported, stop)
    }

    async fn next_exit(reported: &mut mpsc::UnboundedReceiver<Exit>) -> Exit {
        tokio::time::timeout(DEADLINE, reported.recv())
            .await
            .expect("the exit is reported")
            .expect("the channel is open")
    }

    #[tokio::test]
    async fn a_killed_process_is_reported_once_it_exits() {
        let mut child = sleeper();
        let pid = child.id();
        let start = ProcLiveness.start_time(pid);
        assert!(start.is_some());
        let (mut reported, _stop) = watch(&PidfdWatch::new(), watched(pid, start));
        // Alive: nothing yet.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            reported.try_recv().is_err(),
            "a live process is not reported"
        );
        child.kill().unwrap();
        let exit = next_exit(&mut reported).await;
        assert_eq!((exit.id, exit.pod.pid), (7, pid));
        child.wait().unwrap();
    }

    #[tokio::test]
    async fn a_gone_or_reused_pid_is_reported_at_once() {
        let watch_ = PidfdWatch::new();
        let mut child = sleeper();
        let pid = child.id();
        let start = ProcLiveness.start_time(pid).unwrap();
        // The pid names a live process, but not the one recorded.
        let (mut reported, _stop) = watch(&watch_, watched(pid, Some(start + 1)));
        assert_eq!(next_exit(&mut reported).await.pod.pid, pid);
        child.kill().unwrap();
        child.wait().unwrap();
        // Pid 0 and pids past i32::MAX name no process.
        for pid in [0, u32::MAX] {
            let (mut reported, _stop) = watch(&watch_, watched(pid, None));
            assert_eq!(next_exit(&mut reported).await.pod.pid, pid);
        }
    }

    #[tokio::test]
    async fn a_stopped_watch_reports_nothing() {
        let mut child = sleeper();
        let pid = child.id();
        let start = ProcLiveness.start_time(pid);
        let (mut reported, stop) = watch(&PidfdWatch::new(), watched(pid, start));
        stop.cancel();
        child.kill().unwrap();
        child.wait().unwrap();
        // The watch's task ends with the token; the channel then closes
        // without an exit.
        let end = tokio::time::timeout(DEADLINE, reported.recv()).await;
        assert!(matches!(end, Ok(None)), "{end:?}");
    }

    #[test]
    fn the_manual_watch_reports_what_it_is_told_and_refuses_on_demand() {
        let manual = ManualExitWatch::new();
        let (mut reported, stop) = watch(&manual, watched(42, None));
        assert_eq!(manual.watched(), [watched(42, None)]);
        assert_eq!(manual.exit("other"), 0);
        assert_eq!(manual.exit("kid"), 1);
        assert_eq!(reported.try_recv().unwrap().pod.pid, 42);
        assert!(manual.watched().is_empty());
        drop(stop);

        let (_reported, stop) = watch(&manual, watched(43, None));
        stop.cancel();
        assert!(manual.watched().is_empty(), "a stopped watch is dropped");
        manual.refuse(true);
        let (exits, _) = mpsc::unbounded_channel();
        let refused = manual.watch(ExitSignal::new(
            1,
            watched(44, None),
            exits,
            CancellationToken::new(),
        ));
        assert!(matches!(refused, Err(WatchError::Unsupported { .. })));
    }
}
