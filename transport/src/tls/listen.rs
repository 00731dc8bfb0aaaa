//! The TLS listening side: accept TCP, complete a mutual-TLS handshake
//! within a deadline, read the pod name from the client certificate, then
//! serve frames with the same bounds as the Unix listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use super::{pod_name_of, TlsError};
use crate::listen::{ListenConfig, ListenStats, ShutdownHandle};
use crate::serve::{has_unread, serve, Connection, Counters, Gate, Shared, Slots};
use crate::{MethodSource, Peer, Received};

/// Bounds of a [`TlsListener`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsListenConfig {
    /// The bounds shared with the Unix listener: `max_frame_len`,
    /// `max_connections`, `idle_timeout`, `evict_after` and `queue` apply
    /// as documented there; `socket_mode`, `allowed_uids` and `backlog`
    /// concern Unix sockets only and are ignored (a TLS peer is
    /// authenticated by its certificate instead).
    pub listen: ListenConfig,
    /// How long a client may take to complete the handshake (default 5 s);
    /// a connection that has not by then is closed unread.
    pub handshake_timeout: Duration,
}

impl Default for TlsListenConfig {
    fn default() -> Self {
        TlsListenConfig {
            listen: ListenConfig::default(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

impl Connection for TlsStream<TcpStream> {
    fn has_unread(&self) -> bool {
        has_unread(self.get_ref().0)
    }
}

/// A TCP listener requiring mutual TLS, yielding each received
/// [`Method`](crate::Method) with the pod name its sender's certificate
/// names; a [`MethodSource`].
///
/// A client must present a certificate signed by one of the CAs given to
/// [`server_config`](super::server_config), valid now, naming a pod as
/// `pod://<name>`; otherwise the handshake fails and the connection is
/// closed before any frame is read (counted in
/// [`ListenStats::rejected_peers`]). A handshake not complete within
/// [`TlsListenConfig::handshake_timeout`] is cut. Frames, connections,
/// idle time, eviction and the queue are bounded as for the Unix
/// [`Listener`](crate::Listener); shutdown stops accepting, lets open
/// connections finish what they have sent (bounded by the idle timeout)
/// and ends the stream. Unlike a Unix socket's backlog, TCP connections
/// not yet accepted at shutdown are refused, not served: their handshake
/// never completed, so their senders have sent nothing yet.
pub struct TlsListener {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    rx: mpsc::Receiver<Received>,
    accept_task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("local_addr", &self.local_addr)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Binds `addr` (`host:port`; port 0 picks a free one, see
    /// [`local_addr`](TlsListener::local_addr)) and starts accepting.
    pub async fn bind(
        addr: &str,
        server: Arc<ServerConfig>,
        config: TlsListenConfig,
    ) -> Result<TlsListener, TlsError> {
        let bind_err = |source| TlsError::Bind {
            addr: addr.to_owned(),
            source,
        };
        for (field, value) in [
            ("max_frame_len", config.listen.max_frame_len),
            ("max_connections", config.listen.max_connections),
            ("queue", config.listen.queue),
        ] {
            if value == 0 {
                return Err(TlsError::Config(format!("{field} must be at least 1")));
            }
        }
        let listener = TcpListener::bind(addr).await.map_err(bind_err)?;
        let local_addr = listener.local_addr().map_err(bind_err)?;
        let shared = Arc::new(Shared::new(config.listen.bounds()));
        let (tx, rx) = mpsc::channel(config.listen.queue);
        let acceptor = Acceptor {
            tls: TlsAcceptor::from(server),
            handshake_timeout: config.handshake_timeout,
        };
        let accept_task = tokio::spawn(accept_loop(listener, acceptor, Arc::clone(&shared), tx));
        tracing::debug!(%local_addr, "listening (TLS)");
        Ok(TlsListener {
            shared,
            local_addr,
            rx,
            accept_task: Some(accept_task),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ListenStats {
        self.shared.counters.snapshot()
    }

    /// A handle that starts a graceful shutdown from anywhere.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.shared.shutdown.clone())
    }

    /// Shuts down gracefully and waits until done; items still arriving
    /// are discarded (see [`Listener::shutdown`](crate::Listener::shutdown)).
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        self.rx.close();
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
    }
}

impl MethodSource for TlsListener {
    async fn recv(&mut self) -> Option<Received> {
        self.rx.recv().await
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        if let Some(task) = self.accept_task.take() {
            task.abort();
        }
    }
}

#[derive(Clone)]
struct Acceptor {
    tls: TlsAcceptor,
    handshake_timeout: Duration,
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: Acceptor,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Received>,
) {
    let mut slots = Slots::default();
    loop {
        let (open, until) = match slots.gate(&shared) {
            Gate::Open => (true, None),
            Gate::Until(instant) => (false, Some(instant)),
            Gate::Closed => (false, None),
        };
        tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            () = slots.reap() => {}
            accepted = listener.accept(), if open => match accepted {
                Ok((stream, from)) => {
                    let acceptor = acceptor.clone();
                    let task_shared = Arc::clone(&shared);
                    let tx = tx.clone();
                    slots.admit(&shared, move |slot| async move {
                        let Some((stream, peer)) = handshake(stream, from, &acceptor, &task_shared).await else {
                            return;
                        };
                        serve(stream, peer, task_shared, slot, tx).await;
                    });
                }
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            () = sleep_until(until) => {}
        }
    }
    // Stop accepting: new connections are refused from here on.
    drop(listener);
    drop(tx);
    let aborted = slots.finish(shared.bounds.idle_timeout).await;
    if aborted > 0 {
        tracing::warn!(
            open = aborted,
            "connections still open after the drain deadline; closed them"
        );
    }
}

async fn sleep_until(instant: Option<tokio::time::Instant>) {
    match instant {
        Some(instant) => tokio::time::sleep_until(instant).await,
        None => std::future::pending().await,
    }
}

/// Completes the handshake within its deadline and reads the pod name of
/// the client certificate; `None` (counted, logged) if either fails.
async fn handshake(
    stream: TcpStream,
    from: SocketAddr,
    acceptor: &Acceptor,
    shared: &Shared,
) -> Option<(TlsStream<TcpStream>, Peer)> {
    let reject = |reason: &dyn std::fmt::Display| {
        Counters::bump(&shared.counters.rejected_peers);
        tracing::warn!(%from, %reason, "rejected a TLS peer");
    };
    let stream = match timeout(acceptor.handshake_timeout, acceptor.tls.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            reject(&format_args!("handshake failed: {err}"));
            return None;
        }
        Err(_) => {
            reject(&format_args!(
                "handshake not complete within {:?}",
                acceptor.handshake_timeout
            ));
            return None;
        }
    };
    // The verifier required a certificate chain, so the leaf is there.
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first());
    let Some(leaf) = leaf else {
        reject(&"no client certificate");
        return None;
    };
    match pod_name_of(leaf) {
        Ok(name) => {
            Counters::bump(&shared.counters.connections);
            Some((stream, Peer::certified(name)))
        }
        Err(reason) => {
            reject(&format_args!("client certificate: {reason}"));
            None
        }
    }
}
