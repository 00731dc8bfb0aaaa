//! In-memory implementations of the seams, for tests of upper layers.
//!
//! A [`MemoryNetwork`] maps addresses (paths) to in-memory sources; no
//! socket or file is touched. It records every successful send, and can
//! make an address unreachable to inject faults.
//!
//! ```
//! use pod_transport::testing::MemoryNetwork;
//! use pod_transport::{Method, MethodSender, MethodSource, PeerCred, SendError};
//! use std::path::Path;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let net = MemoryNetwork::new();
//! let mut parent = net.bind("/run/pods/parent/sock");
//! let sender = net.sender();
//!
//! let note = Method::notify("hi");
//! sender.send(Path::new("/run/pods/parent/sock"), &note).await.unwrap();
//! let received = parent.recv().await.unwrap();
//! assert_eq!(received.item.unwrap(), note);
//! assert_eq!(received.peer, PeerCred::current());
//!
//! let missing = sender.send(Path::new("/nowhere"), &note).await;
//! assert!(matches!(missing, Err(SendError::SocketMissing { .. })));
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::mpsc;

use crate::{Method, MethodSender, MethodSource, Peer, Received, SendError};

/// An in-memory network: addresses are paths, bound by
/// [`bind`](MemoryNetwork::bind); no sockets.
///
/// Clones share the same network.
#[derive(Clone, Default)]
pub struct MemoryNetwork {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    bound: HashMap<PathBuf, Binding>,
    unreachable: HashSet<PathBuf>,
    sent: Vec<(PathBuf, Method)>,
    next_id: u64,
}

struct Binding {
    id: u64,
    tx: mpsc::UnboundedSender<Received>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = lock(&self.inner);
        f.debug_struct("MemoryNetwork")
            .field("bound", &inner.bound.keys().collect::<Vec<_>>())
            .field("unreachable", &inner.unreachable)
            .field("sent", &inner.sent.len())
            .finish()
    }
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // The state stays consistent across a panic in another test thread:
    // every critical section is a single insert, remove or push.
    inner.lock().unwrap_or_else(PoisonError::into_inner)
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Self {
        MemoryNetwork::default()
    }

    /// Binds `path`; methods sent to it arrive at the returned source with
    /// `peer` set to this process ([`Peer::current`]).
    ///
    /// Binding a path that is already bound replaces the old binding (as a
    /// listener replaces a stale socket); the old source then returns its
    /// remaining items and `None`.
    pub fn bind(&self, path: impl Into<PathBuf>) -> MemorySource {
        let path = path.into();
        let (tx, rx) = mpsc::unbounded_channel();
        let mut inner = lock(&self.inner);
        inner.next_id += 1;
        let id = inner.next_id;
        inner.bound.insert(path.clone(), Binding { id, tx });
        MemorySource {
            path,
            id,
            rx,
            net: self.clone(),
        }
    }

    /// Unbinds `path`, as a listener's shutdown does: its source returns the
    /// remaining items, then `None`. Unbinding an unbound path does nothing.
    pub fn unbind(&self, path: &Path) {
        lock(&self.inner).bound.remove(path);
    }

    /// Whether `path` is bound.
    pub fn is_bound(&self, path: &Path) -> bool {
        lock(&self.inner).bound.contains_key(path)
    }

    /// A sender on this network.
    pub fn sender(&self) -> MemorySender {
        MemorySender { net: self.clone() }
    }

    /// Makes every send to `path` fail with [`SendError::Refused`] while
    /// `unreachable` is true (fault injection).
    pub fn set_unreachable(&self, path: &Path, unreachable: bool) {
        let mut inner = lock(&self.inner);
        if unreachable {
            inner.unreachable.insert(path.to_owned());
        } else {
            inner.unreachable.remove(path);
        }
    }

    /// Every method successfully sent so far, with its address, in order.
    pub fn sent(&self) -> Vec<(PathBuf, Method)> {
        lock(&self.inner).sent.clone()
    }

    fn deliver(&self, to: &Path, method: &Method) -> Result<(), SendError> {
        let mut inner = lock(&self.inner);
        if inner.unreachable.contains(to) {
            return Err(SendError::Refused {
                path: to.to_owned(),
            });
        }
        let missing = || SendError::SocketMissing {
            path: to.to_owned(),
        };
        let binding = inner.bound.get(to).ok_or_else(missing)?;
        let received = Received {
            peer: Peer::current(),
            item: Ok(method.clone()),
        };
        binding.tx.send(received).map_err(|_| missing())?;
        inner.sent.push((to.to_owned(), method.clone()));
        Ok(())
    }
}

/// A [`MethodSender`] on a [`MemoryNetwork`]: a send to an unbound path
/// fails with [`SendError::SocketMissing`], to an unreachable one with
/// [`SendError::Refused`].
#[derive(Clone, Debug)]
pub struct MemorySender {
    net: MemoryNetwork,
}

impl MethodSender for MemorySender {
    async fn send(&self, to: &Path, method: &Method) -> Result<(), SendError> {
        self.net.deliver(to, method)
    }
}

/// A [`MethodSource`] bound to a path of a [`MemoryNetwork`]; dropping it
/// unbinds the path.
#[derive(Debug)]
pub struct MemorySource {
    path: PathBuf,
    id: u64,
    rx: mpsc::UnboundedReceiver<Received>,
    net: MemoryNetwork,
}

impl MemorySource {
    /// The bound address.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Pushes an arbitrary item, as if received from `peer`: lets a test
    /// feed decode errors or foreign peers to the layer under test.
    pub fn inject(&self, peer: impl Into<Peer>, item: Result<Method, crate::ReceiveError>) {
        let peer = peer.into();
        let inner = lock(&self.net.inner);
        if let Some(binding) = inner.bound.get(&self.path).filter(|b| b.id == self.id) {
            // The receiver is `self.rx`, alive as long as `self`.
            let _ = binding.tx.send(Received { peer, item });
        }
    }
}

impl MethodSource for MemorySource {
    async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    async fn recv_many(&mut self, buf: &mut Vec<Received>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }
}

impl Drop for MemorySource {
    fn drop(&mut self) {
        let mut inner = lock(&self.net.inner);
        if inner.bound.get(&self.path).is_some_and(|b| b.id == self.id) {
            inner.bound.remove(&self.path);
        }
    }
}
