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

/// Probes a socket by connecting to it (and closing at once): a Unix
/// socket path (bare or `unix:` + path), or the TCP port of a
/// `tls://host:port` address (no handshake: whether anything accepts
/// there, as a Unix connect tells).
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
        let text = socket.to_str();
        if let Some(authority) = text.and_then(|t| t.strip_prefix("tls://")) {
            return matches!(
                tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect(authority)).await,
                Ok(Ok(_))
            );
        }
        let path = text
            .and_then(|t| t.strip_prefix("unix:"))
            .map_or(socket, Path::new);
        matches!(
            tokio::time::timeout(self.timeout, tokio::net::UnixStream::connect(path)).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_unix_paths_with_or_without_the_scheme_and_tls_ports() {
        let probe = SocketProbe::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock");
        let unix = tokio::net::UnixListener::bind(&path).unwrap();
        let bare = path.display().to_string();
        assert!(probe.is_reachable(Path::new(&bare)).await);
        assert!(probe.is_reachable(Path::new(&format!("unix:{bare}"))).await);
        drop(unix);
        std::fs::remove_file(&path).unwrap();
        assert!(!probe.is_reachable(Path::new(&bare)).await);

        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tls = format!("tls://{}", tcp.local_addr().unwrap());
        assert!(probe.is_reachable(Path::new(&tls)).await);
        drop(tcp);
        assert!(!probe.is_reachable(Path::new(&tls)).await);
    }
}
