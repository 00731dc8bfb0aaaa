//! The mutual-TLS listener and pooled sender (feature `tls`): who is
//! refused and when, bounds, PEM loading, a listener restart.

use std::path::Path;
use std::time::Duration;

use pod_transport::tls::{
    load_certs, load_private_key, TlsError, TlsListenConfig, TlsListener, TlsSendConfig, TlsSender,
};
use pod_transport::{Method, MethodSource, Peer};
use tokio::io::AsyncReadExt;

use crate::notify;
use crate::pki::{client, server, Ca, Leaf};

/// Generous: a deadline, not a timing assertion (the machine is shared).
pub(crate) fn send_config() -> TlsSendConfig {
    TlsSendConfig {
        deadline: Duration::from_secs(30),
        ..TlsSendConfig::default()
    }
}

async fn bind(ca: &Ca, config: TlsListenConfig) -> TlsListener {
    TlsListener::bind("127.0.0.1:0", server(ca), config)
        .await
        .unwrap()
}

fn addr(listener: &TlsListener) -> String {
    listener.local_addr().to_string()
}

fn sender(ca: &Ca, leaf: &Leaf) -> TlsSender {
    TlsSender::new(client(ca, leaf), send_config())
}

/// The next item, which must be `expected` from pod `pod`.
async fn check_next(listener: &mut TlsListener, pod: &str, expected: &Method) {
    let received = tokio::time::timeout(Duration::from_secs(60), listener.recv())
        .await
        .expect("an item before the deadline")
        .expect("the listener is open");
    assert_eq!(received.peer, Peer::certified(pod.parse().unwrap()));
    assert_eq!(received.item.unwrap(), *expected);
}

/// Waits (bounded) until `done` holds of the listener's stats.
async fn wait_for(listener: &TlsListener, done: impl Fn(&pod_transport::ListenStats) -> bool) {
    for _ in 0..6000 {
        if done(&listener.stats()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition never held: {:?}", listener.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_client_is_served_with_its_pod_name() {
    let ca = Ca::new();
    let mut listener = bind(&ca, TlsListenConfig::default()).await;
    let sender = sender(&ca, &ca.pod("worker-7"));
    sender
        .send_to(&addr(&listener), &notify("hello"))
        .await
        .unwrap();
    check_next(&mut listener, "worker-7", &notify("hello")).await;
    // The connection was pooled and is reused for the next send.
    assert_eq!(sender.pooled(&addr(&listener)), 1);
    sender
        .send_to(&addr(&listener), &notify("again"))
        .await
        .unwrap();
    check_next(&mut listener, "worker-7", &notify("again")).await;
    assert_eq!(listener.stats().connections, 1, "{:?}", listener.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_clients_are_refused_before_any_event_and_the_listener_serves_on() {
    let ca = Ca::new();
    let other_ca = Ca::new();
    let mut listener = bind(&ca, TlsListenConfig::default()).await;
    let to = addr(&listener);
    let no_cert = pod_transport::tls::rustls::ClientConfig::builder_with_provider(
        std::sync::Arc::new(pod_transport::tls::rustls::crypto::ring::default_provider()),
    )
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates({
        let mut roots = pod_transport::tls::rustls::RootCertStore::empty();
        roots.add(ca.der()).unwrap();
        roots
    })
    .with_no_client_auth();
    let foreign = other_ca.pod("w1");
    let strangers = [
        TlsSender::new(std::sync::Arc::new(no_cert), send_config()),
        // Signed by another CA (trusting ours, so only our side refuses).
        TlsSender::new(
            pod_transport::tls::client_config(
                foreign.chain(),
                foreign.private_key(),
                vec![ca.der()],
            )
            .unwrap(),
            send_config(),
        ),
        sender(&ca, &ca.expired_pod("w1")),
        sender(&ca, &ca.nameless()),
    ];
    for (i, stranger) in strangers.iter().enumerate() {
        // Under TLS 1.3 the client may finish its side of the handshake
        // before the listener refuses it, so the send may "succeed"; what
        // matters is that nothing it sent is ever yielded.
        let _ = stranger
            .send_to(&to, &notify(format!("stranger {i}")))
            .await;
        wait_for(&listener, |stats| stats.rejected_peers == i as u64 + 1).await;
    }
    let friend = sender(&ca, &ca.pod("w2"));
    friend.send_to(&to, &notify("friend")).await.unwrap();
    check_next(&mut listener, "w2", &notify("friend")).await;
    let stats = listener.stats();
    assert_eq!((stats.connections, stats.frames), (1, 1), "{stats:?}");
    listener.shutdown_handle().shutdown();
    if let Some(received) = listener.recv().await {
        panic!("unexpected item {:?} from {}", received.item, received.peer);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_that_never_completes_is_cut_at_its_timeout() {
    let ca = Ca::new();
    let config = TlsListenConfig {
        handshake_timeout: Duration::from_millis(200),
        ..TlsListenConfig::default()
    };
    let mut listener = bind(&ca, config).await;
    let mut silent = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(60), silent.read(&mut buf))
        .await
        .expect("the listener closes a silent handshake");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The connection is dropped before the refusal is counted.
    wait_for(&listener, |stats| stats.rejected_peers == 1).await;
    let friend = sender(&ca, &ca.pod("w1"));
    friend
        .send_to(&addr(&listener), &notify("after"))
        .await
        .unwrap();
    check_next(&mut listener, "w1", &notify("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pooled_sender_survives_a_listener_restart() {
    let ca = Ca::new();
    let mut first = bind(&ca, TlsListenConfig::default()).await;
    let to = addr(&first);
    let sender = sender(&ca, &ca.pod("w1"));
    sender.send_to(&to, &notify("before")).await.unwrap();
    check_next(&mut first, "w1", &notify("before")).await;
    assert_eq!(sender.pooled(&to), 1);
    first.shutdown().await;
    let mut second = TlsListener::bind(&to, server(&ca), TlsListenConfig::default())
        .await
        .unwrap();
    // The pooled connection is dead: the sender notices and reconnects.
    sender.send_to(&to, &notify("after")).await.unwrap();
    check_next(&mut second, "w1", &notify("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_pooled_past_max_idle_is_not_reused() {
    let ca = Ca::new();
    let mut listener = bind(&ca, TlsListenConfig::default()).await;
    let to = addr(&listener);
    let sender = TlsSender::new(
        client(&ca, &ca.pod("w1")),
        TlsSendConfig {
            max_idle: Duration::ZERO,
            ..send_config()
        },
    );
    for message in ["one", "two"] {
        sender.send_to(&to, &notify(message)).await.unwrap();
        check_next(&mut listener, "w1", &notify(message)).await;
    }
    assert_eq!(listener.stats().connections, 2, "{:?}", listener.stats());
}

#[tokio::test]
async fn nothing_listening_is_dropped_within_the_deadline() {
    let ca = Ca::new();
    let listener = bind(&ca, TlsListenConfig::default()).await;
    let to = addr(&listener);
    listener.shutdown().await;
    let sender = TlsSender::new(
        client(&ca, &ca.pod("w1")),
        TlsSendConfig {
            deadline: Duration::from_millis(300),
            ..TlsSendConfig::default()
        },
    );
    let err = sender.send_to(&to, &notify("lost")).await.unwrap_err();
    assert!(
        matches!(err, pod_transport::SendError::TimedOut { .. }),
        "{err}"
    );
}

#[test]
fn pem_files_load_and_their_errors_name_the_file() {
    let ca = Ca::new();
    let leaf = ca.pod("w1");
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("w1.crt");
    let key = dir.path().join("w1.key");
    std::fs::write(&cert, leaf.cert.pem()).unwrap();
    std::fs::write(&key, leaf.key.serialize_pem()).unwrap();
    assert_eq!(load_certs(&cert).unwrap(), leaf.chain());
    assert!(load_private_key(&key).is_ok());

    let check = |err: TlsError, file: &Path, needle: &str| {
        let text = err.to_string();
        assert!(
            text.contains(&file.display().to_string()) && text.contains(needle),
            "{text}"
        );
    };
    let missing = dir.path().join("missing.crt");
    check(load_certs(&missing).unwrap_err(), &missing, "No such file");
    check(load_certs(&key).unwrap_err(), &key, "no CERTIFICATE");
    check(load_private_key(&cert).unwrap_err(), &cert, "PRIVATE KEY");
    check(
        load_certs(dir.path()).unwrap_err(),
        dir.path(),
        "not a regular file",
    );
}

mod pod_names {
    use pod_transport::tls::pod_name_of;
    use pod_transport::tls::rustls::pki_types::CertificateDer;
    use pod_transport::PodName;
    use proptest::prelude::*;
    use rcgen::{CertificateParams, KeyPair, SanType};

    /// A self-signed certificate with these URI names (the signature is
    /// not what `pod_name_of` reads: the handshake verified it already).
    fn cert_with_uris(uris: &[String]) -> CertificateDer<'static> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = uris
            .iter()
            .map(|uri| SanType::URI(uri.clone().try_into().unwrap()))
            .collect();
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// The model: the first `pod://` URI's rest, validated as a pod
        /// name; other URIs before it are skipped.
        #[test]
        fn the_pod_name_is_the_first_pod_uri_validated(
            name in "[ -~]{0,40}|[A-Za-z0-9][A-Za-z0-9._-]{0,20}",
            other in proptest::option::of("https://[a-z]{1,8}"),
        ) {
            let mut uris: Vec<String> = other.into_iter().collect();
            uris.push(format!("pod://{name}"));
            let got = pod_name_of(&cert_with_uris(&uris));
            match PodName::new(name.clone()) {
                Ok(expected) => prop_assert_eq!(got.unwrap(), expected),
                Err(_) => prop_assert!(got.is_err(), "{:?} accepted", name),
            }
        }

        #[test]
        fn arbitrary_bytes_are_an_error_never_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            prop_assert!(pod_name_of(&CertificateDer::from(bytes)).is_err());
        }
    }

    #[test]
    fn a_certificate_without_a_pod_uri_names_no_pod() {
        let err = pod_name_of(&cert_with_uris(&["https://example.invalid".into()])).unwrap_err();
        assert!(err.contains("pod://<name>"), "{err}");
    }
}
