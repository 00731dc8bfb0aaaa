//! Quick local measurement of the `tls` feature: events/s from 1 and 64
//! concurrent tasks sharing one pooled `TlsSender` to a `TlsListener` over
//! loopback, certificates made at start (rcgen).
//!
//! Run it in release mode: `cargo run --release -p pod-transport
//! --features tls --example tls_throughput [EVENTS]` (default 20000).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use pod_transport::tls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use pod_transport::tls::{
    client_config, server_config, TlsListenConfig, TlsListener, TlsSendConfig, TlsSender,
};
use pod_transport::{Method, MethodSource};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let events: usize = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 20_000,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    let leaf = |san: SanType| -> Result<_, Error> {
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

    println!("{events} events per run, pooled TLS connections");
    println!("{:>8} {:>14}", "senders", "ev/s");
    for senders in [1, 64] {
        let mut listener =
            TlsListener::bind("127.0.0.1:0", server.clone(), TlsListenConfig::default()).await?;
        let addr = listener.local_addr().to_string();
        let sender = Arc::new(TlsSender::new(client.clone(), TlsSendConfig::default()));
        let method = Method::notify("benchmark event");
        let start = Instant::now();
        let tasks: Vec<_> = (0..senders)
            .map(|i| {
                let share = events / senders + usize::from(i < events % senders);
                let (sender, addr, method) = (Arc::clone(&sender), addr.clone(), method.clone());
                tokio::spawn(async move {
                    for _ in 0..share {
                        sender.send_to(&addr, &method).await?;
                    }
                    Ok::<_, pod_transport::SendError>(())
                })
            })
            .collect();
        for _ in 0..events {
            listener.recv().await.ok_or("listener closed early")?.item?;
        }
        let elapsed = start.elapsed();
        for task in tasks {
            task.await??;
        }
        listener.shutdown().await;
        println!(
            "{senders:>8} {:>14.0}",
            events as f64 / elapsed.as_secs_f64()
        );
    }
    Ok(())
}
