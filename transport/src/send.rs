//! The sending side: connect, write one frame, close.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};

use crate::{Method, MethodSender};

/// First pause after a connect found the listen backlog full.
const BACKOFF_START: Duration = Duration::from_millis(1);
/// Longest pause between two connect attempts (before jitter).
const BACKOFF_MAX: Duration = Duration::from_millis(50);

/// Why a send failed. Sending is fire-and-forget: callers usually log the
/// error at warn level and drop the method.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Nothing exists at the address.
    #[error(
        "no socket at {path}: the receiver is not listening (it may have exited); \
         check the path, or treat the receiver as gone"
    )]
    SocketMissing {
        /// The address sent to.
        path: PathBuf,
    },
    /// A socket file exists but nothing listens on it.
    #[error(
        "connection refused at {path}: a stale socket file with no listener \
         (the receiver probably crashed); treat the receiver as gone"
    )]
    Refused {
        /// The address sent to.
        path: PathBuf,
    },
    /// The sender may not connect to the socket (file or directory
    /// permissions).
    #[error(
        "permission denied connecting to {path}: run the sender as the \
         receiver's user, or fix the socket's and its directory's modes"
    )]
    PermissionDenied {
        /// The address sent to.
        path: PathBuf,
    },
    /// Connecting or writing did not finish in time.
    #[error(
        "timed out after {after:?} sending to {path}: the receiver is not \
         reading; check that it is alive, or raise the send timeouts"
    )]
    TimedOut {
        /// The address sent to.
        path: PathBuf,
        /// The timeout that expired.
        after: Duration,
    },
    /// The receiver's listen backlog was still full at the deadline.
    #[error(
        "listen backlog of {path} still full after {after:?}: the receiver is \
         overloaded; send later, or raise SendConfig::backlog_deadline"
    )]
    BacklogFull {
        /// The address sent to.
        path: PathBuf,
        /// Time spent retrying.
        after: Duration,
    },
    /// The TLS handshake failed (feature `tls`): the receiver refused our
    /// certificate, or its certificate is not trusted.
    #[error(
        "TLS handshake with {path} failed: {reason}; check that both \
         certificates are signed by the CAs the other side trusts and valid now"
    )]
    Handshake {
        /// The address sent to.
        path: PathBuf,
        /// What the TLS layer reported.
        reason: String,
    },
    /// Any other I/O failure.
    #[error("I/O error sending to {path}: {source}")]
    Io {
        /// The address sent to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl SendError {
    /// The address the failed send was for.
    pub fn path(&self) -> &Path {
        match self {
            SendError::SocketMissing { path }
            | SendError::Refused { path }
            | SendError::PermissionDenied { path }
            | SendError::TimedOut { path, .. }
            | SendError::BacklogFull { path, .. }
            | SendError::Handshake { path, .. }
            | SendError::Io { path, .. } => path,
        }
    }
}

/// Timeouts and retry bounds of a [`UnixSender`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendConfig {
    /// Bound on one connect attempt (default 2 s). A Unix-socket connect
    /// completes or fails at once on Linux; this guards other platforms
    /// and future transports.
    pub connect_timeout: Duration,
    /// Bound on writing the frame once connected (default 2 s).
    pub write_timeout: Duration,
    /// How long to keep retrying while the receiver's listen backlog is
    /// full, before failing with [`SendError::BacklogFull`] (default 5 s).
    pub backlog_deadline: Duration,
    /// After writing, wait up to this long for the listener to close the
    /// connection before returning (default `None`: close at once).
    ///
    /// A short-lived sender (a command-line tool that sends and exits) sets
    /// it so it is still alive when the listener reads its frame: the
    /// listener records the sender's ancestor processes then, and a
    /// receiver that checks who may speak for which process needs them.
    /// Waiting never fails the send: the frame was written.
    pub linger: Option<Duration>,
    /// The names methods are written with (default
    /// [`Dialect::Original`](pod_protocol::Dialect::Original)): a pod
    /// reporting to a parent of the later dialect uses
    /// [`Dialect::Worker`](pod_protocol::Dialect::Worker).
    pub dialect: pod_protocol::Dialect,
}

impl Default for SendConfig {
    fn default() -> Self {
        SendConfig {
            connect_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(2),
            backlog_deadline: Duration::from_secs(5),
            linger: None,
            dialect: pod_protocol::Dialect::Original,
        }
    }
}

/// Sends each method over a fresh Unix-socket connection: connect, write
/// one frame, close (what existing Pods do).
///
/// When the receiver's listen backlog is full, a non-blocking connect fails
/// with `EAGAIN`; the sender then retries with exponential backoff (1 ms
/// doubling to 50 ms, plus up to as much random jitter) until
/// [`SendConfig::backlog_deadline`]. Every other failure is returned at
/// once.
///
/// ```no_run
/// use pod_transport::{Method, MethodSender, UnixSender};
/// # async fn demo() -> Result<(), pod_transport::SendError> {
/// let sender = UnixSender::default();
/// let note = Method::notify("hello");
/// sender.send("/run/pods/parent/sock".as_ref(), &note).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct UnixSender {
    config: SendConfig,
}

impl UnixSender {
    /// A sender with the given timeouts.
    pub fn new(config: SendConfig) -> Self {
        UnixSender { config }
    }

    /// The configuration in use.
    pub fn config(&self) -> &SendConfig {
        &self.config
    }

    async fn send_frame(&self, to: &Path, frame: &[u8]) -> Result<(), SendError> {
        let mut stream = self.connect(to).await?;
        let after = self.config.write_timeout;
        match timeout(after, stream.write_all(frame)).await {
            Ok(Ok(())) => {
                if let Some(linger) = self.config.linger {
                    // Half-close, then wait for the listener's end of file:
                    // it closes after reading everything we wrote.
                    let _ = stream.shutdown().await;
                    let mut sink = [0u8; 64];
                    let _ = timeout(linger, async {
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                    })
                    .await;
                }
                Ok(())
            }
            Ok(Err(source)) => Err(SendError::Io {
                path: to.to_owned(),
                source,
            }),
            Err(_) => Err(SendError::TimedOut {
                path: to.to_owned(),
                after,
            }),
        }
    }

    async fn connect(&self, to: &Path) -> Result<UnixStream, SendError> {
        let start = Instant::now();
        let mut pause = BACKOFF_START;
        loop {
            let result = timeout(self.config.connect_timeout, UnixStream::connect(to)).await;
            let err = match result {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(err)) => err,
                Err(_) => {
                    return Err(SendError::TimedOut {
                        path: to.to_owned(),
                        after: self.config.connect_timeout,
                    })
                }
            };
            if err.kind() != io::ErrorKind::WouldBlock {
                return Err(classify_connect_error(to, err));
            }
            let elapsed = start.elapsed();
            let left = self.config.backlog_deadline.saturating_sub(elapsed);
            if left.is_zero() {
                return Err(SendError::BacklogFull {
                    path: to.to_owned(),
                    after: elapsed,
                });
            }
            tokio::time::sleep((pause + jitter_up_to(pause)).min(left)).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }
}

/// A pseudo-random duration in `[0, max]`, so that senders that hit a full
/// backlog together do not retry in lockstep.
pub(crate) fn jitter_up_to(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    // Every `RandomState` is keyed differently (randomly seeded per thread,
    // then stepped), so hashing a constant with a fresh one is a cheap
    // random draw without a random-number dependency.
    let draw = RandomState::new().hash_one(());
    Duration::from_nanos(draw % nanos.saturating_add(1))
}

impl MethodSender for UnixSender {
    async fn send(&self, to: &Path, method: &Method) -> Result<(), SendError> {
        let frame = self.config.dialect.encode(method);
        self.send_frame(to, &frame).await
    }
}

pub(crate) fn classify_connect_error(to: &Path, err: io::Error) -> SendError {
    let path = to.to_owned();
    match err.kind() {
        io::ErrorKind::NotFound => SendError::SocketMissing { path },
        io::ErrorKind::ConnectionRefused => SendError::Refused { path },
        io::ErrorKind::PermissionDenied => SendError::PermissionDenied { path },
        _ => SendError::Io { path, source: err },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_bound() {
        for step in 0..1000 {
            let max = Duration::from_micros(step % 50 + 1);
            assert!(jitter_up_to(max) <= max);
        }
        assert_eq!(jitter_up_to(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn jitter_varies() {
        let draws: std::collections::HashSet<_> = (0..100)
            .map(|_| jitter_up_to(Duration::from_millis(50)))
            .collect();
        assert!(draws.len() > 50, "only {} distinct draws", draws.len());
    }

    #[test]
    fn connect_errors_are_classified() {
        let to = Path::new("/x");
        let kind = |kind: io::ErrorKind| classify_connect_error(to, kind.into());
        assert!(matches!(
            kind(io::ErrorKind::NotFound),
            SendError::SocketMissing { .. }
        ));
        assert!(matches!(
            kind(io::ErrorKind::ConnectionRefused),
            SendError::Refused { .. }
        ));
        assert!(matches!(
            kind(io::ErrorKind::PermissionDenied),
            SendError::PermissionDenied { .. }
        ));
        assert!(matches!(kind(io::ErrorKind::Other), SendError::Io { .. }));
        assert_eq!(kind(io::ErrorKind::Other).path(), to);
    }
}
