//! Certificates made at test time (rcgen): a CA, a listener certificate
//! for 127.0.0.1, and pod client certificates, valid, expired, or from
//! another CA.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use pod_transport::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use pod_transport::tls::rustls::{ClientConfig, ServerConfig};
use pod_transport::tls::{client_config, server_config};
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate authority.
pub(crate) struct Ca {
    pub(crate) cert: Certificate,
    key: KeyPair,
}

/// A certificate with its key.
pub(crate) struct Leaf {
    pub(crate) cert: Certificate,
    pub(crate) key: KeyPair,
}

impl Leaf {
    pub(crate) fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.der().clone()]
    }

    pub(crate) fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

impl Ca {
    pub(crate) fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    pub(crate) fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert, key }
    }

    /// A listener certificate for 127.0.0.1.
    pub(crate) fn server(&self) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
        self.sign(params)
    }

    /// A client certificate naming `pod://<pod>`.
    pub(crate) fn pod(&self, pod: &str) -> Leaf {
        self.sign(pod_params(pod))
    }

    /// A client certificate naming `pod://<pod>` that expired in 2021.
    pub(crate) fn expired_pod(&self, pod: &str) -> Leaf {
        let mut params = pod_params(pod);
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        self.sign(params)
    }

    /// A client certificate with no `pod://` name.
    pub(crate) fn nameless(&self) -> Leaf {
        let params = CertificateParams::new(vec!["example.invalid".to_owned()]).unwrap();
        self.sign(params)
    }
}

fn pod_params(pod: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let uri = format!("pod://{pod}").try_into().unwrap();
    params.subject_alt_names = vec![SanType::URI(uri)];
    params
}

/// The listener's TLS configuration: `ca` signs it and its clients.
pub(crate) fn server(ca: &Ca) -> Arc<ServerConfig> {
    let leaf = ca.server();
    server_config(leaf.chain(), leaf.private_key(), vec![ca.der()]).unwrap()
}

/// A client presenting `leaf` and trusting listeners signed by `ca`.
pub(crate) fn client(ca: &Ca, leaf: &Leaf) -> Arc<ClientConfig> {
    client_config(leaf.chain(), leaf.private_key(), vec![ca.der()]).unwrap()
}
