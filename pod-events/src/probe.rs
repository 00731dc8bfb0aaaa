//! Reachability of a pod's socket: the fallback liveness probe for pods
//! the scope table has no allocation for.

use std::collections::HashSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Seam: is anything answering at a pod's socket? Required method:
/// [`is_reachable`](Reachability::is_reachable).
pub trait Reachability: Send + Sync + 'static {
    /// Whether a connection to `socket` succeeds within the probe's timeout.
    fn is_reachable(&self, socket: &Path) -> impl Future<Output = bool> + Send;
}

/// Probes a Unix socket by connecting to it (and closing at once).
#[derive(Debug, Clone, Copy)]
pub struct SocketProbe {
    timeout: Duration,
}

impl SocketProbe {
    /// A probe that gives up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        SocketProbe { timeout }
    }
}

impl Default for SocketProbe {
    /// A probe with a 200 ms timeout.
    fn default() -> Self {
        SocketProbe::new(Duration::from_millis(200))
    }
}

impl Reachability for SocketProbe {
    async fn is_reachable(&self, socket: &Path) -> bool {
        matches!(
            tokio::time::timeout(self.timeout, tokio::net::UnixStream::connect(socket)).await,
            Ok(Ok(_))
        )
    }
}

/// An in-memory [`Reachability`]: every socket is reachable unless marked
/// down. For tests of the layers above.
#[derive(Debug, Clone, Default)]
pub struct FakeReachability {
    down: Arc<Mutex<HashSet<PathBuf>>>,
}

impl FakeReachability {
    /// Every socket reachable.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks `socket` as not answering (`true`) or answering (`false`).
    pub fn set_down(&self, socket: impl Into<PathBuf>, down: bool) {
        let mut set = self.down.lock().unwrap_or_else(|e| e.into_inner());
        let socket = socket.into();
        if down {
            set.insert(socket);
        } else {
            set.remove(&socket);
        }
    }
}

impl Reachability for FakeReachability {
    async fn is_reachable(&self, socket: &Path) -> bool {
        !self
            .down
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(socket)
    }
}
