//! Unix-socket send and listen of `pod-protocol` frames.
//!
//! `pod-transport` moves [`pod_protocol`] frames between processes over Unix
//! sockets: a sender connects, writes one frame and closes
//! ([`UnixSender`]); a listener binds a socket path, authenticates each peer
//! by its uid (`SO_PEERCRED`), reads frames under bounds (frame length,
//! concurrent connections, idle time) and yields each decoded [`Method`]
//! with the peer's credentials ([`Listener`]).
//!
//! It knows nothing about pods, registries or scopes. The bytes of a frame
//! (the wire types and the line codec) belong to `pod-protocol`; what a
//! parent does with a received event (validation of its content, side
//! effects, rendering, relaying) belongs to `pod-events`, which uses this
//! crate only through the [`MethodSender`] and [`MethodSource`] seams.
//!
//! # Seams
//!
//! [`MethodSender`] sends one method to an address and [`MethodSource`] is
//! a stream of received methods. Each has a real implementation
//! ([`UnixSender`], [`Listener`]) and an in-memory one in [`testing`]
//! ([`testing::MemorySender`], [`testing::MemorySource`]) so upper layers
//! can be tested without sockets. An address is a [`Path`] today. The
//! `tls` feature adds a networked implementation of the same traits,
//! `tls::TlsListener` and `tls::TlsSender` (TCP with mutual TLS, the peer's
//! pod name read from its certificate), which pass the same behavioural
//! test suite.
//!
//! ```
//! use pod_transport::testing::MemoryNetwork;
//! use pod_transport::{Method, MethodSender, MethodSource};
//!
//! /// Code under test depends on the seams only.
//! async fn report<S: MethodSender>(sender: &S, parent: &std::path::Path) {
//!     let done = Method::notify("done");
//!     if let Err(err) = sender.send(parent, &done).await {
//!         eprintln!("warning: {err}"); // fire-and-forget
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let net = MemoryNetwork::new();
//! let mut parent = net.bind("/run/pods/parent.sock");
//! report(&net.sender(), "/run/pods/parent.sock".as_ref()).await;
//! let received = parent.recv().await.unwrap();
//! assert_eq!(received.item.unwrap(), Method::notify("done"));
//! # }
//! ```
//!
//! Over a real socket, [`Listener::bind`] and [`UnixSender`] play these
//! roles; the crate README shows that flow end to end.
//!
//! # Bounds and authentication
//!
//! A [`Listener`] admits only peers whose uid is its own or listed in
//! [`ListenConfig::allowed_uids`], checked with `SO_PEERCRED` before
//! anything is read. It bounds the frame length, the number of connections
//! served at once, the silence of a connection and the queue of received
//! items; see [`ListenConfig`].
//!
//! # Delivery
//!
//! Sending is fire-and-forget: a send either hands the frame to the
//! receiver's socket or fails with a typed [`SendError`]; it never retries
//! after a refusal, and it retries a full listen backlog only until
//! [`SendConfig::backlog_deadline`]. There is no acknowledgement: callers
//! that need certainty reconcile by other means.

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod claim;
mod listen;
mod process;
mod send;
mod serve;
pub mod testing;
#[cfg(feature = "tls")]
pub mod tls;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

pub use pod_protocol::{Method, PodName};

pub use listen::{ListenConfig, ListenError, ListenStats, Listener, ShutdownHandle};
pub use process::parent_pid;
pub use send::{SendConfig, SendError, UnixSender};

/// Credentials of the peer process, from `SO_PEERCRED` at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerCred {
    /// Effective user id of the peer.
    pub uid: u32,
    /// Effective group id of the peer.
    pub gid: u32,
    /// Process id of the peer, when the platform reports it.
    pub pid: Option<i32>,
}

impl PeerCred {
    /// The credentials of the calling process.
    pub fn current() -> Self {
        PeerCred {
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            pid: i32::try_from(std::process::id()).ok(),
        }
    }
}

/// Who sent a received item, as far as the transport could establish it.
///
/// Over a Unix socket, the kernel's `SO_PEERCRED` gives the peer's uid, gid
/// and pid at connect time ([`Peer::local`]); over a networked transport
/// (the `tls` feature), there is no uid or pid, and the pod name comes from
/// the peer's verified client certificate ([`Peer::certified`]). The struct
/// is `#[non_exhaustive]`: a future transport may establish more.
///
/// What is certain is what is here: a field is `Some` only when the
/// transport verified it. Deciding whether this peer may send what it sent
/// (say, an event about pod `n`) is the receiver's job (`pod-events`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Peer {
    /// Effective user id of a local peer.
    pub uid: Option<u32>,
    /// Effective group id of a local peer.
    pub gid: Option<u32>,
    /// Process id of a local peer, when the platform reports it.
    pub pid: Option<u32>,
    /// The pod name a verified TLS client certificate names (its URI SAN
    /// `pod://<name>`).
    pub pod_name: Option<PodName>,
    /// A local peer's ancestor processes, parent first (two levels,
    /// stopping before pid 1), read from `/proc` when its connection's
    /// first frame arrived; empty when unknown.
    pub ancestors: Arc<[u32]>,
}

impl Peer {
    /// A local peer with the credentials `SO_PEERCRED` reported.
    pub fn local(cred: PeerCred) -> Self {
        Peer {
            uid: Some(cred.uid),
            gid: Some(cred.gid),
            pid: cred.pid.and_then(|pid| u32::try_from(pid).ok()),
            pod_name: None,
            ancestors: Arc::from([]),
        }
    }

    /// The calling process, as a local peer, with its ancestors (as a
    /// listener records them).
    pub fn current() -> Self {
        let mut peer = Peer::local(PeerCred::current());
        peer.record_ancestors();
        peer
    }

    /// A remote peer whose verified certificate names `pod_name`.
    pub fn certified(pod_name: PodName) -> Self {
        Peer {
            uid: None,
            gid: None,
            pid: None,
            pod_name: Some(pod_name),
            ancestors: Arc::from([]),
        }
    }

    /// Records the ancestors of a local peer's process (see
    /// [`ancestors`](Self::ancestors)), if not done yet.
    pub(crate) fn record_ancestors(&mut self) {
        if let (Some(pid), true) = (self.pid, self.ancestors.is_empty()) {
            self.ancestors = process::ancestors(pid, process::RECORDED_ANCESTORS);
        }
    }

    /// The local credentials, when this is a local peer.
    pub fn cred(&self) -> Option<PeerCred> {
        Some(PeerCred {
            uid: self.uid?,
            gid: self.gid?,
            pid: self.pid.and_then(|pid| i32::try_from(pid).ok()),
        })
    }
}

impl From<PeerCred> for Peer {
    fn from(cred: PeerCred) -> Self {
        Peer::local(cred)
    }
}

/// Comparing with local credentials: equal when this is that local peer.
impl PartialEq<PeerCred> for Peer {
    fn eq(&self, cred: &PeerCred) -> bool {
        self.pod_name.is_none() && self.cred() == Some(*cred)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(name) = &self.pod_name {
            parts.push(format!("pod {name}"));
        }
        if let Some(uid) = self.uid {
            parts.push(format!("uid {uid}"));
        }
        if let Some(pid) = self.pid {
            parts.push(format!("pid {pid}"));
        }
        if parts.is_empty() {
            return f.write_str("an unidentified peer");
        }
        f.write_str(&parts.join(", "))
    }
}

/// Why a received frame did not yield a [`Method`].
///
/// This is an item of a [`MethodSource`], not the end of it: the source
/// goes on with the next frame (or, after [`FrameTooLong`], the next
/// connection).
///
/// [`FrameTooLong`]: ReceiveError::FrameTooLong
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// A complete frame that is not a method this protocol knows; the next
    /// frame on the same connection is still read.
    #[error("received a frame that is not a valid method, skipped it: {0}")]
    Decode(#[from] pod_protocol::DecodeError),
    /// A frame longer than the listener's maximum; its connection was
    /// closed. Raise `ListenConfig::max_frame_len` if the peer is legitimate.
    #[error("received an over-long frame and closed its connection: {0}")]
    FrameTooLong(#[from] pod_protocol::FrameTooLong),
}

/// One item received by a [`MethodSource`]: who sent it, and what.
#[derive(Debug)]
pub struct Received {
    /// Who sent it, as the transport established it.
    pub peer: Peer,
    /// The method, or why the frame did not yield one.
    pub item: Result<Method, ReceiveError>,
}

/// Seam: send one [`Method`] to an address.
///
/// The required method is [`send`](MethodSender::send). Implementations:
/// [`UnixSender`] (a Unix socket path) and [`testing::MemorySender`]. A
/// shared sender is an `Arc<T>`, which implements this trait too.
pub trait MethodSender: Send + Sync + 'static {
    /// Sends `method` to the receiver at `to`, once: no retry after the
    /// receiver refused or is missing.
    fn send(
        &self,
        to: &Path,
        method: &Method,
    ) -> impl Future<Output = Result<(), SendError>> + Send;
}

impl<T: MethodSender> MethodSender for Arc<T> {
    fn send(
        &self,
        to: &Path,
        method: &Method,
    ) -> impl Future<Output = Result<(), SendError>> + Send {
        (**self).send(to, method)
    }
}

/// Seam: a stream of received methods.
///
/// The required method is [`recv`](MethodSource::recv). Implementations:
/// [`Listener`] (a Unix socket) and [`testing::MemorySource`].
pub trait MethodSource: Send + 'static {
    /// The next received item; `None` once the source is closed (after a
    /// shutdown, when every remaining item has been returned).
    fn recv(&mut self) -> impl Future<Output = Option<Received>> + Send;

    /// Waits for at least one item, then appends to `buf` every item
    /// already received, at most `limit`; returns how many it appended.
    /// `0` means the source is closed (as `recv` returning `None`), or
    /// `limit` is `0`.
    ///
    /// The items and their order are exactly those that as many calls of
    /// [`recv`](MethodSource::recv) would return: a consumer takes a burst
    /// in one call (and one wake-up) instead of one call per item. The
    /// provided implementation takes one item with `recv`; [`Listener`]
    /// and [`testing::MemorySource`] drain their queues. Cancel-safe when
    /// `recv` is: an item is either appended or left in the source.
    fn recv_many(
        &mut self,
        buf: &mut Vec<Received>,
        limit: usize,
    ) -> impl Future<Output = usize> + Send {
        async move {
            if limit == 0 {
                return 0;
            }
            match self.recv().await {
                Some(received) => {
                    buf.push(received);
                    1
                }
                None => 0,
            }
        }
    }
}
