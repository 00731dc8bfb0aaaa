//! Item 8: events over TCP with mutual TLS on loopback (issue 17).
//!
//! Ours: the pooled `pod_transport::tls::TlsSender` (default pool) sending
//! `turn_ended` events one after another to a `TlsListener` (handshake,
//! certificate name, framing, decode), drained and counted. Baseline: a
//! raw tokio-rustls client writing the same lines (one `write_all` and
//! flush per line, so one TLS record per event, as ours) over one
//! connection to a raw tokio-rustls server that splits lines and
//! serde-decodes each into a `Method`. Same certificates, same rustls
//! configurations (mutual TLS both ways), one multi-threaded runtime.
//!
//! Also: 64 concurrent senders sharing one `TlsSender` (the default pool
//! of 4 connections per address, and a pool of 64), and the cost of a
//! cold handshake: a sender with no pool (every send connects and
//! handshakes) against raw connect + handshake + write + close.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use pod_protocol::Method;
use pod_transport::tls::rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName,
};
use pod_transport::tls::rustls::{ClientConfig, ServerConfig};
use pod_transport::tls::{
    client_config, server_config, TlsListenConfig, TlsListener, TlsSendConfig, TlsSender,
};
use pod_transport::MethodSource;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::counter::Counter;
use crate::report::median;
use crate::Plan;

/// The event every send carries.
const LINE: &str = r#"{"method":"pod_event","params":{"kind":"turn_ended","pod_name":"w1"}}"#;

/// Item 8's figures, medians over the runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    /// Events/s, ours, one sender, pooled.
    pub(crate) pooled: f64,
    /// Events/s, raw rustls writer on one connection.
    pub(crate) raw: f64,
    /// Events/s, ours, 64 senders, default pool (4).
    pub(crate) concurrent: f64,
    /// Events/s, ours, 64 senders, a pool of 64.
    pub(crate) concurrent_pool: f64,
    /// Milliseconds per send with no pool (a handshake each).
    pub(crate) cold_ms: f64,
    /// Milliseconds per raw connect + handshake + write + close.
    pub(crate) raw_cold_ms: f64,
}

/// Concurrent senders of the second figure.
pub(crate) const SENDERS: usize = 64;

/// Runs item 8.
pub(crate) fn measure(plan: &Plan) -> Result<Measured> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure_all(plan))
}

async fn measure_all(plan: &Plan) -> Result<Measured> {
    let (server, client) = configs()?;
    let method: Method = serde_json::from_str(LINE)?;
    let mut samples: [Vec<f64>; 6] = Default::default();
    for run in 0..=plan.runs {
        let n = plan.tls_events;
        let pooled = TlsSendConfig::default();
        let wide = TlsSendConfig {
            pool_size: SENDERS,
            ..TlsSendConfig::default()
        };
        let cold = TlsSendConfig {
            pool_size: 0,
            ..TlsSendConfig::default()
        };
        let figures = [
            ours(&server, &client, &method, n, 1, pooled.clone()).await?,
            raw(&server, &client, n).await?,
            ours(&server, &client, &method, n, SENDERS, pooled).await?,
            ours(&server, &client, &method, n, SENDERS, wide).await?,
            1e3 / ours(&server, &client, &method, plan.tls_handshakes, 1, cold).await?,
            1e3 / raw_cold(&server, &client, plan.tls_handshakes).await?,
        ];
        if run > 0 {
            for (sample, figure) in samples.iter_mut().zip(figures) {
                sample.push(figure);
            }
        }
    }
    let [pooled, raw, concurrent, concurrent_pool, cold_ms, raw_cold_ms] = samples.map(median);
    Ok(Measured {
        pooled,
        raw,
        concurrent,
        concurrent_pool,
        cold_ms,
        raw_cold_ms,
    })
}

/// A CA, a listener certificate for 127.0.0.1 and a pod certificate.
fn configs() -> Result<(Arc<ServerConfig>, Arc<ClientConfig>)> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    let leaf = |san: SanType| -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![san];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key))
    };
    let (server_chain, server_key) = leaf(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)))?;
    let (client_chain, client_key) = leaf(SanType::URI("pod://bench".try_into()?))?;
    let server = server_config(server_chain, server_key, vec![ca.der().clone()])?;
    let client = client_config(client_chain, client_key, vec![ca.der().clone()])?;
    Ok((server, client))
}

/// Ours: `n` sends from `senders` tasks sharing one sender; events/s
/// until the listener has yielded every one.
async fn ours(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    method: &Method,
    n: usize,
    senders: usize,
    config: TlsSendConfig,
) -> Result<f64> {
    let mut listener =
        TlsListener::bind("127.0.0.1:0", server.clone(), TlsListenConfig::default()).await?;
    let addr = listener.local_addr().to_string();
    let sender = Arc::new(TlsSender::new(client.clone(), config));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|i| {
            let share = n / senders + usize::from(i < n % senders);
            let (sender, addr, method) = (Arc::clone(&sender), addr.clone(), method.clone());
            tokio::spawn(async move {
                for _ in 0..share {
                    sender.send_to(&addr, &method).await?;
                }
                Ok::<_, pod_transport::SendError>(())
            })
        })
        .collect();
    for _ in 0..n {
        let received = listener.recv().await.context("the listener closed early")?;
        std::hint::black_box(received.item?);
    }
    let elapsed = started.elapsed();
    for task in tasks {
        task.await??;
    }
    let stats = listener.stats();
    ensure!(stats.rejected_peers == 0, "listener: {stats:?}");
    listener.shutdown().await;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// A raw rustls server: every connection's lines decoded and counted.
async fn raw_server(server: &Arc<ServerConfig>, counter: Arc<Counter>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(server.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, counter) = (acceptor.clone(), Arc::clone(&counter));
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut lines = BufReader::new(tls);
                let mut line = Vec::new();
                while matches!(lines.read_until(b'\n', &mut line).await, Ok(n) if n > 0) {
                    if serde_json::from_slice::<Method>(&line).is_ok() {
                        counter.add(1);
                    }
                    line.clear();
                }
            });
        }
    });
    Ok(addr)
}

async fn connect(
    client: &Arc<ClientConfig>,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(Ipv4Addr::LOCALHOST.into());
    Ok(TlsConnector::from(client.clone())
        .connect(name, tcp)
        .await?)
}

/// Baseline: `n` lines over one raw connection; events/s until the server
/// has decoded every one.
async fn raw(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, n: usize) -> Result<f64> {
    let counter = Counter::new(n);
    let addr = raw_server(server, Arc::clone(&counter)).await?;
    let frame = format!("{LINE}\n");
    let started = Instant::now();
    let mut tls = connect(client, addr).await?;
    for _ in 0..n {
        tls.write_all(frame.as_bytes()).await?;
        tls.flush().await?;
    }
    counter.wait().await?;
    let elapsed = started.elapsed();
    tls.shutdown().await?;
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Baseline of a cold handshake: `n` times connect, handshake, write one
/// line, close; connections/s until the server has decoded every line.
async fn raw_cold(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>, n: usize) -> Result<f64> {
    let counter = Counter::new(n);
    let addr = raw_server(server, Arc::clone(&counter)).await?;
    let frame = format!("{LINE}\n");
    let started = Instant::now();
    for _ in 0..n {
        let mut tls = connect(client, addr).await?;
        tls.write_all(frame.as_bytes()).await?;
        tls.shutdown().await?;
    }
    counter.wait().await?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
