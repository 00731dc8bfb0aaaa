//! The listening side: bind a socket path, authenticate peers, read frames
//! under bounds, yield methods.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::claim::{self, remove_socket, Claim};
use crate::serve::{serve, Bounds, Counters, Gate, Shared, Slots};
use crate::{MethodSource, Peer, PeerCred, Received};

/// Longest socket path Linux accepts (`sun_path` is 108 bytes, NUL included).
const MAX_SOCKET_PATH_LEN: usize = 107;
/// Pause after an `accept` failure such as `EMFILE`, so that a listener out
/// of file descriptors does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Bounds and access control of a [`Listener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    /// Longest accepted frame, newline excluded (default 64 KiB). A longer
    /// frame is yielded as [`ReceiveError::FrameTooLong`](crate::ReceiveError::FrameTooLong) and closes its
    /// connection.
    pub max_frame_len: usize,
    /// Most connections served at once (default 1024). When that many are
    /// open, a new connection evicts the longest-idle one (see
    /// [`evict_after`](ListenConfig::evict_after)) or, when none has been
    /// idle long enough, waits in the kernel's listen backlog; once that is
    /// full too, senders retry until their backlog deadline (see
    /// [`UnixSender`](crate::UnixSender)). Nothing is refused outright.
    /// Evicted connections winding down count apart, up to as many again.
    pub max_connections: usize,
    /// How long a connection may go without completing a frame before it
    /// is closed (default 10 s), so neither a silent peer nor one trickling
    /// bytes pins a connection. Also bounds the drain at shutdown.
    pub idle_timeout: Duration,
    /// When every connection slot is taken, a new connection evicts the
    /// one that has gone longest without completing a frame, if that is at
    /// least this long (default 1 s); otherwise it waits in the backlog
    /// until one is. So peers that hold every slot and send slowly delay a
    /// fresh sender by about this much, not until they stop, while a
    /// connection whose frame is being read right now is never evicted.
    pub evict_after: Duration,
    /// Mode of the socket file (default `0o600`: owner only).
    pub socket_mode: u32,
    /// Uids allowed to send besides the listener's own uid (default none).
    pub allowed_uids: Vec<u32>,
    /// Received items buffered before connections stop being read
    /// (default 1024): back-pressure when [`Listener::recv`] is not called.
    ///
    /// [`Listener::recv`]: MethodSource::recv
    pub queue: usize,
    /// Length of the kernel's queue of connections not yet accepted
    /// (default 4096; Linux caps it at `net.core.somaxconn`). When it is
    /// full, connecting fails with `EAGAIN` and senders retry.
    pub backlog: u32,
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            max_frame_len: pod_protocol::DEFAULT_MAX_FRAME_LEN,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(10),
            evict_after: Duration::from_secs(1),
            socket_mode: 0o600,
            allowed_uids: Vec::new(),
            queue: 1024,
            backlog: 4096,
        }
    }
}

impl ListenConfig {
    /// The bounds every served connection obeys.
    pub(crate) fn bounds(&self) -> Bounds {
        Bounds {
            max_frame_len: self.max_frame_len,
            max_connections: self.max_connections,
            idle_timeout: self.idle_timeout,
            evict_after: self.evict_after,
        }
    }
}

/// Why [`Listener::bind`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// A live listener already answers on the path; it was left alone.
    #[error(
        "another listener is live on {path}: stop it first or choose another \
         socket path (its socket file was not touched)"
    )]
    InUse {
        /// The socket path.
        path: PathBuf,
    },
    /// Something other than a socket exists at the path.
    #[error(
        "{path} exists and is not a socket: remove it yourself or choose \
         another socket path (it was not touched)"
    )]
    NotASocket {
        /// The socket path.
        path: PathBuf,
    },
    /// The path does not fit in a Unix socket address.
    #[error(
        "socket path {path} is {len} bytes, longer than the {max} a Unix \
         socket address holds: choose a shorter path"
    )]
    PathTooLong {
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// A [`ListenConfig`] bound is zero.
    #[error("invalid listen configuration: {field} must be at least 1")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
    },
    /// The socket's directory is not private: another uid owns it, or its
    /// group or others may write it, so they could replace the socket.
    #[error(
        "socket directory {path} is not private (owner uid {owner}, mode {mode:o}): \
         it must be owned by uid {own_uid} and writable by nobody else, or another \
         user could replace the socket; chown it and chmod it 0700, or choose \
         another directory"
    )]
    InsecureDir {
        /// The directory.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// Its owner's uid.
        owner: u32,
        /// The uid it must belong to: the listener's own.
        own_uid: u32,
    },
    /// Another listener holds the lock of this socket path.
    #[error(
        "{path} is claimed by another listener (pid {}), which holds the lock \
         file {lock}: stop it first or choose another socket path (nothing was \
         touched)",
        .pid.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
    )]
    Locked {
        /// The socket path.
        path: PathBuf,
        /// The lock file, `<socket path>.lock`.
        lock: PathBuf,
        /// The holder's pid, as it wrote it into the lock file (`None` if
        /// it could not be read).
        pid: Option<u32>,
    },
    /// The lock file could not be opened, checked, locked or written.
    #[error(
        "cannot use lock file {path}: {source}; it must be a regular file owned \
         by the listener's uid (it is never followed as a link)"
    )]
    LockFile {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The socket's parent directory could not be created, or is not a
    /// directory.
    #[error("cannot create socket directory {path}: {source}; check its parent's permissions")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Binding, probing, replacing or setting the mode of the socket failed.
    #[error("cannot listen on {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

/// A snapshot of a listener's counters since it was bound.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenStats {
    /// Connections accepted from an allowed peer.
    pub connections: u64,
    /// Connections closed unread because the peer's uid is not allowed (or
    /// its credentials could not be read).
    pub rejected_peers: u64,
    /// Frames decoded into a method.
    pub frames: u64,
    /// Frames that did not decode (yielded as
    /// [`ReceiveError::Decode`](crate::ReceiveError::Decode)).
    pub decode_errors: u64,
    /// Over-long frames (yielded as
    /// [`ReceiveError::FrameTooLong`](crate::ReceiveError::FrameTooLong)), each
    /// closing its connection.
    pub too_long: u64,
    /// Connections closed for completing no frame within the idle timeout.
    pub idle_timeouts: u64,
    /// Connections ended by a read error.
    pub read_errors: u64,
    /// Connections closed to make room for a new one while every slot was
    /// taken: each had gone at least [`ListenConfig::evict_after`] without
    /// completing a frame, the longest of all.
    pub evictions: u64,
}

/// What every connection task shares.
struct Context {
    path: PathBuf,
    /// The lock and the socket file's identity; dropped (unlocking) only
    /// after the socket file is removed.
    claim: Claim,
    own_uid: u32,
    allowed_uids: Vec<u32>,
    shared: Arc<Shared>,
}

/// Stops a [`Listener`] from another task; clones stop the same listener.
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    token: CancellationToken,
}

impl ShutdownHandle {
    pub(crate) fn new(token: CancellationToken) -> Self {
        ShutdownHandle { token }
    }

    /// Starts a graceful shutdown and returns at once: the listener stops
    /// accepting, removes its socket file, serves the connections already
    /// queued or open until each has nothing left unread (a partial frame
    /// gets up to the idle timeout), then closes. Meanwhile
    /// [`recv`](MethodSource::recv) keeps returning items, then `None`.
    pub fn shutdown(&self) {
        self.token.cancel();
    }

    /// Whether a shutdown has been requested.
    pub fn is_shutdown(&self) -> bool {
        self.token.is_cancelled()
    }
}

/// A bound Unix socket yielding each received [`Method`](crate::Method)
/// with its sender's credentials; a [`MethodSource`].
///
/// An accept task admits peers whose uid is the listener's own or in
/// [`ListenConfig::allowed_uids`] (checked with `SO_PEERCRED` before
/// anything is read; others are counted, logged at warn level and closed),
/// and spawns one task per connection that reads frames with
/// [`MethodCodec`](pod_protocol::MethodCodec) into a bounded queue that [`recv`](MethodSource::recv)
/// drains.
///
/// Dropping a listener stops it at once (open connections are closed
/// unread) and removes its socket file in the background, best effort;
/// [`shutdown`] is the graceful way, and the one to await before binding
/// the same path again.
///
/// [`shutdown`]: Listener::shutdown
pub struct Listener {
    context: Arc<Context>,
    rx: mpsc::Receiver<Received>,
    accept_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("path", &self.context.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Binds `path` and starts accepting.
    ///
    /// Creates the parent directory with mode `0700` if it is missing; an
    /// existing one must belong to this process's uid and be writable by
    /// nobody else ([`ListenError::InsecureDir`]), since whoever can write
    /// it can replace the socket.
    ///
    /// Then takes an exclusive lock on `<path>.lock` (created `0600`, never
    /// through a link, this process's pid written into it) and holds it
    /// until the listener is gone: a second listener on the same path,
    /// from any process, is refused with the holder's pid
    /// ([`ListenError::Locked`], after retrying a busy lock for up to
    /// 250 ms, so that a lock released an instant ago is not mistaken for
    /// a live one), so racing listeners cannot both start.
    /// The lock file is left in place afterwards (removing it would let a
    /// later pair of listeners lock different files under one name).
    ///
    /// Under the lock, an existing socket file is replaced only when
    /// nothing answers on it (a stale socket left by a crashed listener); a
    /// live listener's socket is never unlinked ([`ListenError::InUse`]:
    /// one that does not take the lock, such as an existing Pod's), nor is
    /// a file that is not a socket ([`ListenError::NotASocket`]). The new
    /// socket gets [`ListenConfig::socket_mode`].
    pub async fn bind(
        path: impl Into<PathBuf>,
        config: ListenConfig,
    ) -> Result<Listener, ListenError> {
        let path = path.into();
        check_config(&path, &config)?;
        let (listener, claim) = claim::bind(&path, &config).await?;
        let context = Arc::new(Context {
            path,
            claim,
            own_uid: rustix::process::getuid().as_raw(),
            shared: Arc::new(Shared::new(config.bounds())),
            allowed_uids: config.allowed_uids,
        });
        let (tx, rx) = mpsc::channel(config.queue);
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&context), tx));
        tracing::debug!(path = %context.path.display(), "listening");
        Ok(Listener {
            context,
            rx,
            accept_task: Some(accept_task),
        })
    }

    /// The bound socket path.
    pub fn path(&self) -> &Path {
        &self.context.path
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ListenStats {
        self.context.shared.counters.snapshot()
    }

    /// A handle that starts a graceful shutdown from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.context.shared.shutdown.clone())
    }

    /// Shuts down gracefully and waits until done: stops accepting, removes
    /// the socket file, lets queued and open connections finish (bounded by
    /// the idle timeout). Items still arriving are discarded, since the
    /// listener is consumed; to receive them, call
    /// [`ShutdownHandle::shutdown`] and keep calling
    /// [`recv`](MethodSource::recv) until it returns `None`.
    pub async fn shutdown(mut self) {
        self.context.shared.shutdown.cancel();
        self.rx.close();
        if let Some(task) = self.accept_task.take() {
            // The accept task does not panic; a cancelled runtime is the only
            // other way it ends early, and then there is nothing to wait for.
            let _ = task.await;
        }
    }
}

impl MethodSource for Listener {
    async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }

    async fn recv_many(&mut self, buf: &mut Vec<Received>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(task) = self.accept_task.take() else {
            return;
        };
        if task.is_finished() {
            return;
        }
        task.abort();
        // The context holds the lock: moving a reference into the removal
        // keeps the path claimed until its socket file is gone.
        let context = Arc::clone(&self.context);
        let remove = move || remove_socket(&context.path, context.claim.file);
        // Removal is file I/O: keep it off the executor thread when there
        // is a runtime to hand it to.
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}

fn check_config(path: &Path, config: &ListenConfig) -> Result<(), ListenError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH_LEN {
        return Err(ListenError::PathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH_LEN,
        });
    }
    for (field, value) in [
        ("max_frame_len", config.max_frame_len),
        ("max_connections", config.max_connections),
        ("queue", config.queue),
    ] {
        if value == 0 {
            return Err(ListenError::InvalidConfig { field });
        }
    }
    Ok(())
}

async fn accept_loop(listener: UnixListener, context: Arc<Context>, tx: mpsc::Sender<Received>) {
    let shared = &context.shared;
    let mut slots = Slots::default();
    loop {
        let (open, until) = match slots.gate(shared) {
            Gate::Open => (true, None),
            Gate::Until(instant) => (false, Some(instant)),
            Gate::Closed => (false, None),
        };
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            () = slots.reap() => {}
            accepted = listener.accept(), if open => match accepted {
                Ok((stream, _)) => admit(stream, &context, &tx, &mut slots),
                Err(err) => {
                    tracing::warn!(path = %context.path.display(), error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            // Every slot is taken by a connection that completed a frame
            // recently: look again once the longest-idle may be evicted.
            () = sleep_until(until) => {}
        }
    }
    tracing::debug!(path = %context.path.display(), "shutting down");
    let path = context.path.clone();
    let file = context.claim.file;
    // Unlink first so that no new connection can arrive, then serve the
    // ones the kernel already queued: their senders consider them sent.
    let _ = tokio::task::spawn_blocking(move || remove_socket(&path, file)).await;
    drain_backlog(listener, &context, &tx, &mut slots);
    drop(tx);
    let aborted = slots.finish(shared.bounds.idle_timeout).await;
    if aborted > 0 {
        tracing::warn!(
            path = %context.path.display(),
            open = aborted,
            "connections still open after the drain deadline; closed them"
        );
    }
    tracing::debug!(path = %context.path.display(), "shut down");
}

/// Sleeps until `instant`, or forever without one.
async fn sleep_until(instant: Option<tokio::time::Instant>) {
    match instant {
        Some(instant) => tokio::time::sleep_until(instant).await,
        None => std::future::pending().await,
    }
}

/// Accepts, without waiting, every connection already in the listen backlog.
fn drain_backlog(
    listener: UnixListener,
    context: &Arc<Context>,
    tx: &mpsc::Sender<Received>,
    slots: &mut Slots,
) {
    // The std listener stays non-blocking, and its `accept` asks the kernel
    // directly instead of waiting for a readiness event.
    let listener = match listener.into_std() {
        Ok(listener) => listener,
        Err(err) => {
            tracing::warn!(path = %context.path.display(), error = %err, "cannot drain backlog");
            return;
        }
    };
    loop {
        slots.reap_finished();
        if slots.len() >= context.shared.bounds.max_connections {
            tracing::warn!(path = %context.path.display(), "connection limit reached while draining; dropping the rest of the backlog");
            break;
        }
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(err) => {
                tracing::warn!(path = %context.path.display(), error = %err, "accept failed while draining");
                break;
            }
        };
        let stream = stream
            .set_nonblocking(true)
            .and_then(|()| UnixStream::from_std(stream));
        match stream {
            Ok(stream) => admit(stream, context, tx, slots),
            Err(err) => {
                tracing::warn!(path = %context.path.display(), error = %err, "cannot register drained connection");
            }
        }
    }
}

/// Checks the peer's uid before reading anything, then spawns its reader.
fn admit(
    stream: UnixStream,
    context: &Arc<Context>,
    tx: &mpsc::Sender<Received>,
    slots: &mut Slots,
) {
    let counters = &context.shared.counters;
    let peer = match stream.peer_cred() {
        Ok(cred) => PeerCred {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
        },
        Err(err) => {
            Counters::bump(&counters.rejected_peers);
            tracing::warn!(path = %context.path.display(), error = %err, "rejected a peer whose credentials cannot be read");
            return;
        }
    };
    if peer.uid != context.own_uid && !context.allowed_uids.contains(&peer.uid) {
        Counters::bump(&counters.rejected_peers);
        tracing::warn!(
            path = %context.path.display(),
            uid = peer.uid,
            pid = ?peer.pid,
            "rejected a peer whose uid is not allowed"
        );
        return;
    }
    Counters::bump(&counters.connections);
    let shared = Arc::clone(&context.shared);
    let tx = tx.clone();
    let peer = Peer::local(peer);
    slots.admit(&context.shared, move |slot| {
        serve(stream, peer, shared, slot, tx)
    });
}
