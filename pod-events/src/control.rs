//! The control socket: read-only subscribers follow an endpoint's rendered
//! lines live (`podctl watch`) without being its parent.
//!
//! [`ControlSink`] wraps the endpoint's [`NotificationSink`]: every
//! notification goes to the wrapped sink as before, and a copy goes to
//! each subscriber connected to a Unix socket beside the event socket
//! ([`control_socket_path`]: `<event socket>.control`).
//!
//! The same privacy rules as the event socket (DESIGN.md section 7): the
//! directory must be ours and not writable by others, the socket is
//! `0600`, and a peer whose uid is not ours is dropped before it is sent a
//! byte. A subscriber can only read: nothing it writes is ever read.
//!
//! Delivery never waits for a subscriber. Lines go through a bounded
//! broadcast queue ([`CONTROL_BACKLOG`] lines); a subscriber that falls
//! further behind is told how many lines it missed
//! (`{"missed":N}`) and carries on from the newest. With no subscriber,
//! a notification costs one atomic load more than the wrapped sink.
//!
//! Wire format, one JSON object per line (`\n`):
//! `{"line": "...", "origin": "reported"|"inferred", "event": {...},
//! "peer_pid": N|null}`, or `{"missed": N}`. The socket is closed when the
//! endpoint drops its sink (shutdown); the socket file is removed then.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::{Notification, NotificationSink, Origin};

/// Lines queued per subscriber before it is told it missed some.
pub const CONTROL_BACKLOG: usize = 1024;

/// Subscribers served at once; further connections are closed at once.
pub const MAX_SUBSCRIBERS: usize = 64;

/// The control socket that serves the endpoint listening on
/// `event_socket`: `<event_socket>.control`, in the same directory.
pub fn control_socket_path(event_socket: impl AsRef<Path>) -> PathBuf {
    let mut path = event_socket.as_ref().as_os_str().to_owned();
    path.push(".control");
    PathBuf::from(path)
}

/// Why a control socket could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket's directory is missing, or not a private directory of
    /// ours.
    #[error(
        "cannot serve a control socket in {}: {reason} (use a directory owned by uid {own_uid} that others cannot write)",
        dir.display()
    )]
    InsecureDir {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
        /// This process's uid.
        own_uid: u32,
    },
    /// Something that is not a socket is in the way; it is left alone.
    #[error(
        "cannot serve a control socket at {}: a file that is not a socket is there (move it away)",
        path.display()
    )]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Binding or setting up the socket failed.
    #[error("cannot serve a control socket at {}: {source}", path.display())]
    Bind {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Not called from within a tokio runtime.
    #[error("ControlSink::bind must be called from within a tokio runtime")]
    NoRuntime,
}

/// A [`NotificationSink`] that also serves every notification to
/// read-only subscribers on a control socket beside the event socket
/// ([`control_socket_path`]), as `podctl watch` reads it.
///
/// The wrapped sink gets every notification as before. The control socket
/// follows the event socket's privacy rules: its directory must be ours
/// and not writable by others, the socket is `0600`, and a peer of
/// another uid is dropped before it is sent a byte; nothing a subscriber
/// writes is read. Delivery never waits for a subscriber: a bounded queue
/// of [`CONTROL_BACKLOG`] lines each, past which a subscriber is told
/// `{"missed":N}` and goes on from the newest; at most
/// [`MAX_SUBSCRIBERS`] at once. With nobody subscribed a notification
/// costs one atomic load more than the wrapped sink.
///
/// Wire format, one JSON object per line: `{"line": "...", "origin":
/// "reported"|"inferred", "event": {...}, "peer_pid": N|null}`. The
/// socket closes (subscribers see EOF) and its file is removed when the
/// sink is dropped, i.e. when the endpoint shuts down.
#[derive(Debug)]
pub struct ControlSink<N> {
    inner: N,
    /// `None`: serving nobody ([`ControlSink::unserved`]).
    served: Option<Arc<Served>>,
}

/// The socket being served; dropping it stops serving and removes the
/// socket file.
#[derive(Debug)]
struct Served {
    lines: broadcast::Sender<Arc<str>>,
    path: PathBuf,
    accept: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.accept.abort();
        // Ours: bound by this process, kept by the event listener's lock.
        let _ = std::fs::remove_file(&self.path);
    }
}

impl<N: NotificationSink> ControlSink<N> {
    /// Serves a control socket at `path` (usually
    /// [`control_socket_path`] of the event socket) and wraps `inner`.
    ///
    /// Call it after binding the event listener: that listener's lock
    /// makes this process the one endpoint of the socket path, so a
    /// socket already at `path` is a stale one from a previous run and is
    /// replaced. Anything else at `path` is refused
    /// ([`ControlError::NotASocket`]); so is a directory others can write
    /// or that another uid owns ([`ControlError::InsecureDir`]).
    pub fn bind(path: impl Into<PathBuf>, inner: N) -> Result<Self, ControlError> {
        let path = path.into();
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ControlError::NoRuntime)?;
        let own_uid = rustix::process::getuid().as_raw();
        check_dir(&path, own_uid)?;
        let bind_err = |source| ControlError::Bind {
            path: path.clone(),
            source,
        };
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_socket() => {
                std::fs::remove_file(&path).map_err(bind_err)?
            }
            Ok(_) => return Err(ControlError::NotASocket { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(bind_err(e)),
        }
        let listener = std::os::unix::net::UnixListener::bind(&path).map_err(bind_err)?;
        // The directory admits nobody else, so the moment between bind and
        // chmod exposes nothing.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::UnixListener::from_std(listener).map_err(bind_err)?
        };
        let (lines, _) = broadcast::channel(CONTROL_BACKLOG);
        let accept = runtime.spawn(accept_loop(listener, lines.clone(), own_uid));
        Ok(ControlSink {
            inner,
            served: Some(Arc::new(Served {
                lines,
                path,
                accept,
            })),
        })
    }

    /// `inner` with no control socket: for an endpoint that has no Unix
    /// socket to put one beside (one listening on TLS only), so its sink
    /// has the same type either way.
    pub fn unserved(inner: N) -> Self {
        ControlSink {
            inner,
            served: None,
        }
    }

    /// The control socket's path (`None` when [`unserved`](Self::unserved)).
    pub fn path(&self) -> Option<&Path> {
        self.served.as_ref().map(|served| served.path.as_path())
    }

    /// Subscribers connected now.
    pub fn subscribers(&self) -> usize {
        self.served
            .as_ref()
            .map_or(0, |served| served.lines.receiver_count())
    }

    /// The wrapped sink.
    pub fn inner(&self) -> &N {
        &self.inner
    }
}

impl<N: NotificationSink> NotificationSink for ControlSink<N> {
    fn deliver(&self, notification: Notification) {
        if let Some(served) = self.served.as_ref() {
            if served.lines.receiver_count() > 0 {
                // A send fails only when every subscriber left meanwhile.
                let _ = served.lines.send(encode(&notification).into());
            }
        }
        self.inner.deliver(notification);
    }
}

impl Notification {
    /// The notification as one JSON object, the form a control socket
    /// serves and `podctl listen -o json` prints: `{"line": "...",
    /// "origin": "reported"|"inferred", "event": {...}, "peer_pid":
    /// N|null}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "line": self.line,
            "origin": match self.origin {
                Origin::Reported => "reported",
                Origin::Inferred => "inferred",
            },
            "event": self.event,
            "peer_pid": self.peer.as_ref().and_then(|peer| peer.pid),
        })
    }
}

/// The wire form of one notification, newline included.
fn encode(note: &Notification) -> String {
    let mut text = note.to_json().to_string();
    text.push('\n');
    text
}

/// The directory must exist, be ours, and not be writable by others (who
/// could replace the socket).
fn check_dir(path: &Path, own_uid: u32) -> Result<(), ControlError> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let insecure = |reason: String| ControlError::InsecureDir {
        dir: dir.to_owned(),
        reason,
        own_uid,
    };
    let meta = std::fs::metadata(dir).map_err(|e| insecure(e.to_string()))?;
    let mode = meta.permissions().mode() & 0o7777;
    if !meta.is_dir() {
        return Err(insecure("it is not a directory".into()));
    }
    if meta.uid() != own_uid {
        return Err(insecure(format!("it is owned by uid {}", meta.uid())));
    }
    if mode & 0o022 != 0 {
        return Err(insecure(format!("its mode {mode:o} lets others write it")));
    }
    Ok(())
}

async fn accept_loop(
    listener: tokio::net::UnixListener,
    lines: broadcast::Sender<Arc<str>>,
    own_uid: u32,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // EMFILE and the like: back off instead of spinning.
                tracing::warn!(%error, "control socket: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own_uid => {}
            Ok(cred) => {
                tracing::warn!(
                    uid = cred.uid(),
                    "control socket: dropped a peer of another uid"
                );
                continue;
            }
            Err(error) => {
                tracing::warn!(%error, "control socket: dropped a peer without credentials");
                continue;
            }
        }
        // The accept loop holds one sender, so this counts subscribers.
        if lines.receiver_count() >= MAX_SUBSCRIBERS {
            tracing::warn!(
                max = MAX_SUBSCRIBERS,
                "control socket: too many subscribers, dropped one"
            );
            continue;
        }
        tokio::spawn(serve(stream, lines.subscribe()));
    }
}

/// Writes every line to one subscriber until it leaves or the endpoint
/// stops (the sender is dropped).
async fn serve(mut stream: tokio::net::UnixStream, mut lines: broadcast::Receiver<Arc<str>>) {
    loop {
        let written = match lines.recv().await {
            Ok(line) => stream.write_all(line.as_bytes()).await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let line = format!("{{\"missed\":{missed}}}\n");
                stream.write_all(line.as_bytes()).await
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        if written.is_err() {
            return;
        }
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CollectingSink;
    use pod_protocol::PodEvent;
    use tokio::io::AsyncBufReadExt;

    fn note(pod: &str) -> Notification {
        let event = PodEvent::TurnEnded {
            pod_name: pod.into(),
            incarnation: None,
        };
        Notification {
            line: format!("`{pod}` finished a turn"),
            event,
            origin: Origin::Reported,
            peer: None,
        }
    }

    async fn wait_for_subscribers(sink: &ControlSink<CollectingSink>, n: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while sink.subscribers() < n {
            assert!(std::time::Instant::now() < deadline, "no subscriber");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn subscribers_see_every_line_the_sink_gets_and_eof_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = control_socket_path(dir.path().join("sock"));
        assert!(path.ends_with("sock.control"));
        let inner = CollectingSink::new();
        let sink = ControlSink::bind(&path, inner.clone()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        wait_for_subscribers(&sink, 1).await;
        sink.deliver(note("w1"));
        sink.deliver(note("w2"));
        let mut reader = tokio::io::BufReader::new(stream).lines();
        for pod in ["w1", "w2"] {
            let line = reader.next_line().await.unwrap().unwrap();
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert_eq!(value["event"]["pod_name"], pod, "{line}");
            assert_eq!(value["origin"], "reported");
            assert_eq!(value["line"], format!("`{pod}` finished a turn"));
        }
        assert_eq!(inner.lines().len(), 2, "the wrapped sink still gets all");

        drop(sink);
        assert_eq!(reader.next_line().await.unwrap(), None, "EOF at shutdown");
        assert!(!path.exists(), "the socket file is removed");
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_regular_file_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sock.control");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let sink = ControlSink::bind(&path, CollectingSink::new()).unwrap();
        assert!(tokio::net::UnixStream::connect(&path).await.is_ok());
        drop(sink);

        std::fs::write(&path, "keep me").unwrap();
        let error = ControlSink::bind(&path, CollectingSink::new()).unwrap_err();
        assert!(matches!(error, ControlError::NotASocket { .. }), "{error}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
    }

    #[tokio::test]
    async fn a_directory_others_can_write_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = ControlSink::bind(dir.path().join("c"), CollectingSink::new()).unwrap_err();
        assert!(matches!(error, ControlError::InsecureDir { .. }), "{error}");
        assert!(error.to_string().contains("lets others write"), "{error}");
    }

    #[test]
    fn an_unserved_sink_passes_everything_on() {
        let inner = CollectingSink::new();
        let sink = ControlSink::unserved(inner.clone());
        sink.deliver(note("w1"));
        assert_eq!((sink.path(), sink.subscribers()), (None, 0));
        assert_eq!(inner.lines().len(), 1);
    }

    #[test]
    fn bind_outside_a_runtime_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let error = ControlSink::bind(dir.path().join("c"), CollectingSink::new()).unwrap_err();
        assert!(matches!(error, ControlError::NoRuntime), "{error}");
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_told_what_it_missed_and_never_blocks_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c");
        let sink = ControlSink::bind(&path, CollectingSink::new()).unwrap();
        let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
        wait_for_subscribers(&sink, 1).await;
        // The subscriber reads nothing while far more than the backlog and
        // a socket buffer are delivered: delivery must still return.
        let total = CONTROL_BACKLOG * 20;
        for i in 0..total {
            sink.deliver(note(&format!("w{i}")));
        }
        drop(sink);
        let mut reader = tokio::io::BufReader::new(stream).lines();
        let (mut seen, mut missed) = (0, 0);
        while let Some(line) = reader.next_line().await.unwrap() {
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            match value["missed"].as_u64() {
                Some(n) => missed += n as usize,
                None => seen += 1,
            }
        }
        assert!(missed > 0, "told it missed lines");
        assert_eq!(seen + missed, total, "every line seen or counted missed");
    }
}
