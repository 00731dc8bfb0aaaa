//! The TLS sending side: a small pool of persistent connections per
//! address, reconnection with backoff, and a deadline on every send.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::send::jitter_up_to;
use crate::{Method, MethodSender, SendError};

type Connection = TlsStream<TcpStream>;

/// A pooled connection and when it was last used.
struct Idle {
    conn: Connection,
    since: Instant,
}

/// Deadline and pool bounds of a [`TlsSender`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSendConfig {
    /// Bound on one whole send: taking or opening a connection (with
    /// retries), the handshake and the write (default 2 s). A method not
    /// delivered by then is dropped: the send fails and a warning is
    /// logged.
    pub deadline: Duration,
    /// Idle connections kept open per address for later sends (default 4).
    /// More sends than this at once open more connections, which are
    /// closed after use.
    pub pool_size: usize,
    /// First pause after a failed connect; it doubles up to
    /// [`max_backoff`](TlsSendConfig::max_backoff), plus random jitter.
    pub initial_backoff: Duration,
    /// Longest pause between two connect attempts (default 200 ms).
    pub max_backoff: Duration,
    /// A pooled connection unused for this long is closed instead of
    /// reused (default 5 s, half the listener's default idle timeout), so
    /// a send does not race the listener closing it for idleness: a frame
    /// written just as the listener closes would be lost.
    pub max_idle: Duration,
}

impl Default for TlsSendConfig {
    fn default() -> Self {
        TlsSendConfig {
            deadline: Duration::from_secs(2),
            pool_size: 4,
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(200),
            max_idle: Duration::from_secs(5),
        }
    }
}

/// Sends each method over mutual TLS to a `host:port`, reusing pooled
/// connections; a [`MethodSender`] whose address's text is `host:port`.
///
/// A send takes an idle pooled connection that is still open (one the
/// listener closed, say when it restarted, is noticed and dropped), or
/// opens one; when connecting fails it retries with jittered exponential
/// backoff, and when writing on a pooled connection fails it retries on a
/// fresh one, all within [`TlsSendConfig::deadline`]. It never blocks the
/// caller past that deadline: fire-and-forget, an undeliverable method is
/// dropped, logged at warn level and returned as an error.
///
/// There is no acknowledgement: a frame written on a pooled connection at
/// the very moment the listener closes it (shutdown, or a listener-side
/// bound) can be lost although the send succeeded. Closing pooled
/// connections after [`TlsSendConfig::max_idle`] keeps that window away
/// from the listener's idle timeout; the periodic reconcile of the layers
/// above covers the rest, as for every lost event.
///
/// Clones share the pool.
#[derive(Clone)]
pub struct TlsSender {
    connector: TlsConnector,
    config: TlsSendConfig,
    pool: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
}

impl std::fmt::Debug for TlsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSender")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl TlsSender {
    /// A sender presenting the identity of `client` (see
    /// [`client_config`](super::client_config)).
    pub fn new(client: Arc<ClientConfig>, config: TlsSendConfig) -> Self {
        TlsSender {
            connector: TlsConnector::from(client),
            config,
            pool: Arc::default(),
        }
    }

    /// Sends `method` to `addr` (`host:port`; the host must be a name or
    /// IP address the listener's certificate is valid for).
    pub async fn send_to(&self, addr: &str, method: &Method) -> Result<(), SendError> {
        let frame = pod_protocol::encode(method);
        let deadline = self.config.deadline;
        let result = match timeout(deadline, self.deliver(addr, &frame)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::TimedOut {
                path: PathBuf::from(addr),
                after: deadline,
            }),
        };
        if let Err(err) = &result {
            tracing::warn!(addr, error = %err, method = method.name(), "dropped an undeliverable method");
        }
        result
    }

    /// Idle connections pooled for `addr` right now.
    pub fn pooled(&self, addr: &str) -> usize {
        self.lock().get(addr).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Idle>>> {
        // Every critical section is one push or pop: consistent after a panic.
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn deliver(&self, addr: &str, frame: &[u8]) -> Result<(), SendError> {
        let start = Instant::now();
        let mut pause = self.config.initial_backoff;
        loop {
            let (mut conn, pooled) = match self.take(addr) {
                Some(conn) => (conn, true),
                None => match self.connect(addr).await {
                    Ok(conn) => (conn, false),
                    Err(err) if retryable(&err) => {
                        tracing::debug!(addr, error = %err, "connect failed; retrying");
                        tokio::time::sleep(pause + jitter_up_to(pause)).await;
                        pause = (pause * 2).min(self.config.max_backoff);
                        continue;
                    }
                    Err(err) => return Err(err),
                },
            };
            match write(&mut conn, frame).await {
                Ok(()) => {
                    self.give_back(addr, conn);
                    return Ok(());
                }
                // A pooled connection may have died since its last use:
                // retry once on a fresh one (the deadline bounds it all).
                Err(err) if pooled => {
                    tracing::debug!(addr, error = %err, "pooled connection failed; reconnecting");
                }
                Err(source) => {
                    tracing::debug!(addr, error = %source, elapsed = ?start.elapsed(), "write failed");
                    return Err(SendError::Io {
                        path: PathBuf::from(addr),
                        source,
                    });
                }
            }
        }
    }

    /// An idle pooled connection to `addr` that is still open.
    fn take(&self, addr: &str) -> Option<Connection> {
        let mut pool = self.lock();
        let idle = pool.get_mut(addr)?;
        while let Some(Idle { conn, since }) = idle.pop() {
            if since.elapsed() < self.config.max_idle && is_open(&conn) {
                return Some(conn);
            }
        }
        None
    }

    fn give_back(&self, addr: &str, conn: Connection) {
        let mut pool = self.lock();
        let idle = pool.entry(addr.to_owned()).or_default();
        if idle.len() < self.config.pool_size {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, addr: &str) -> Result<Connection, SendError> {
        let path = || PathBuf::from(addr);
        let host = addr
            .rsplit_once(':')
            .map(|(host, _)| host.trim_start_matches('[').trim_end_matches(']'))
            .ok_or_else(|| SendError::Io {
                path: path(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "the address is not host:port",
                ),
            })?;
        let name = ServerName::try_from(host.to_owned()).map_err(|err| SendError::Io {
            path: path(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, err),
        })?;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|err| crate::send::classify_connect_error(Path::new(addr), err))?;
        // Events are small and latency matters more than packet count.
        let _ = tcp.set_nodelay(true);
        self.connector
            .connect(name, tcp)
            .await
            .map_err(|err| SendError::Handshake {
                path: path(),
                reason: err.to_string(),
            })
    }
}

/// Whether connecting again may succeed: the listener may be restarting.
fn retryable(err: &SendError) -> bool {
    matches!(
        err,
        SendError::Refused { .. } | SendError::SocketMissing { .. } | SendError::Io { .. }
    ) && !matches!(err, SendError::Io { source, .. } if source.kind() == std::io::ErrorKind::InvalidInput)
}

async fn write(conn: &mut Connection, frame: &[u8]) -> std::io::Result<()> {
    conn.write_all(frame).await?;
    conn.flush().await
}

/// Whether a pooled connection is still open, asking the kernel (the
/// reactor may not have seen the peer's close yet): the listener sends
/// nothing after the handshake (no session tickets), so anything readable,
/// an end of stream, an alert or a reset, means it is closed or closing.
fn is_open(conn: &Connection) -> bool {
    use rustix::net::{recv, RecvFlags};
    let mut byte = [0u8; 1];
    matches!(
        recv(
            conn.get_ref().0,
            &mut byte,
            RecvFlags::PEEK | RecvFlags::DONTWAIT
        ),
        Err(rustix::io::Errno::AGAIN)
    )
}

impl MethodSender for TlsSender {
    async fn send(&self, to: &Path, method: &Method) -> Result<(), SendError> {
        match to.to_str() {
            Some(addr) => self.send_to(addr, method).await,
            None => Err(SendError::Io {
                path: to.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a TLS address is host:port text",
                ),
            }),
        }
    }
}
