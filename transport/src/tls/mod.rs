//! TCP with mutual TLS (feature `tls`): [`TlsListener`] and the pooled
//! [`TlsSender`], the networked implementation of the same seams as the
//! Unix-socket one.
//!
//! Both sides present a certificate signed by a CA the other trusts. A
//! pod's client certificate names it with the URI subject alternative name
//! `pod://<name>`; the listener reads that name into
//! [`Peer::pod_name`](crate::Peer::pod_name) of every item the connection
//! yields. A client without a certificate, with one from another CA, an
//! expired one, or one that names no valid pod, is refused during the
//! handshake, before a byte of a frame is read.
//!
//! rustls with the ring provider does the TLS: no OpenSSL, and ring builds
//! with a C compiler alone (aws-lc-rs also needs cmake and builds a much
//! larger C library), which keeps this feature quick to compile.
//!
//! Addresses are `host:port` strings for now: the [`MethodSender`] seam
//! takes a [`std::path::Path`], whose text [`TlsSender`] reads as
//! `host:port`; a typed address may replace this later.
//!
//! [`MethodSender`]: crate::MethodSender

mod listen;
mod send;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use listen::{TlsListenConfig, TlsListener};
pub use send::{TlsSendConfig, TlsSender};

use crate::PodName;

/// Largest PEM file read: certificates and keys are a few KiB.
const MAX_PEM_FILE_LEN: u64 = 1 << 20;
/// The URI scheme of the subject alternative name that names a pod.
pub const POD_URI_SCHEME: &str = "pod://";

/// Why TLS material could not be loaded or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load {what} from {path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was expected in it ("certificates", "a private key").
        what: &'static str,
        /// What is wrong, and what to do about it.
        reason: String,
    },
    /// The certificates and key do not make a valid TLS configuration.
    #[error("invalid TLS configuration: {0}; check that the key matches the certificate and that the CA certificates parse")]
    Config(String),
    /// The listening address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Reads every certificate of a PEM file (a chain: leaf first).
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let path = path.as_ref();
    let what = "certificates";
    let bytes = read_pem_file(path, what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| pem_error(path, what, format!("not valid PEM ({err})")))?;
    if certs.is_empty() {
        return Err(pem_error(
            path,
            what,
            "no CERTIFICATE section found; give a PEM file holding certificates".into(),
        ));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    let path = path.as_ref();
    let what = "a private key";
    let bytes = read_pem_file(path, what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|err| {
        pem_error(
            path,
            what,
            format!("{err}; give a PEM file holding a PRIVATE KEY section"),
        )
    })
}

fn pem_error(path: &Path, what: &'static str, reason: String) -> TlsError {
    TlsError::Pem {
        path: path.to_owned(),
        what,
        reason,
    }
}

/// Reads a regular file of at most [`MAX_PEM_FILE_LEN`] bytes.
fn read_pem_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let file = std::fs::File::open(path).map_err(|err| pem_error(path, what, err.to_string()))?;
    let meta = file
        .metadata()
        .map_err(|err| pem_error(path, what, err.to_string()))?;
    if !meta.is_file() {
        return Err(pem_error(path, what, "not a regular file".into()));
    }
    if meta.size() > MAX_PEM_FILE_LEN {
        return Err(pem_error(
            path,
            what,
            format!(
                "{} bytes, more than the {MAX_PEM_FILE_LEN} a PEM file may hold",
                meta.size()
            ),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_FILE_LEN)
        .read_to_end(&mut bytes)
        .map_err(|err| pem_error(path, what, err.to_string()))?;
    Ok(bytes)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(cas: Vec<CertificateDer<'static>>) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for ca in cas {
        roots
            .add(ca)
            .map_err(|err| TlsError::Config(format!("a CA certificate is unusable: {err}")))?;
    }
    Ok(Arc::new(roots))
}

/// A listener's TLS configuration: its own certificate chain and key, and
/// the CAs whose signature a client certificate must carry (a client
/// without one is refused).
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_cas: Vec<CertificateDer<'static>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots(client_cas)?, provider.clone())
            .build()
            .map_err(|err| TlsError::Config(err.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert_chain, key)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    // Senders keep connections open and never resume sessions; tickets
    // would only be bytes a sender has to read to tell a live connection
    // from a closed one.
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A sender's TLS configuration: its client certificate chain (naming its
/// pod as `pod://<name>`) and key, and the CAs a listener's certificate
/// must be signed by.
pub fn client_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    server_cas: Vec<CertificateDer<'static>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsError::Config(err.to_string()))?
        .with_root_certificates(roots(server_cas)?)
        .with_client_auth_cert(cert_chain, key)
        .map_err(|err| TlsError::Config(err.to_string()))?;
    Ok(Arc::new(config))
}

/// The pod a verified client certificate names: its first URI subject
/// alternative name `pod://<name>` with a valid pod name.
pub fn pod_name_of(cert: &CertificateDer<'_>) -> Result<PodName, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|err| format!("the certificate does not parse: {err}"))?;
    let sans = parsed
        .subject_alternative_name()
        .map_err(|err| format!("its subject alternative names do not parse: {err}"))?
        .ok_or_else(|| format!("it has no subject alternative name {POD_URI_SCHEME}<name>"))?;
    for name in &sans.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(uri) = name {
            if let Some(pod) = uri.strip_prefix(POD_URI_SCHEME) {
                return PodName::new(pod).map_err(|err| format!("{uri} names no valid pod: {err}"));
            }
        }
    }
    Err(format!(
        "it has no subject alternative name {POD_URI_SCHEME}<name>"
    ))
}
