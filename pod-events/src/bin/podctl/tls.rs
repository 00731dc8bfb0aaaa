//! The `--tls-cert`, `--tls-key` and `--tls-ca` flags: this pod's TLS
//! identity, for `listen --listen tls://...` and for sends to `tls://`
//! addresses (DESIGN.md section 13).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_transport::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use pod_transport::tls::rustls::{ClientConfig, ServerConfig};
use pod_transport::tls::{self, TlsSendConfig, TlsSender};

/// The three TLS flags, shared by every command that may use TLS.
#[derive(Debug, Clone, Default, Args)]
pub(crate) struct TlsArgs {
    /// This pod's certificate chain (PEM, leaf first), naming it with the
    /// URI `pod://NAME` (and, to listen, its host as a DNS or IP name):
    /// for `tls://` addresses only.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// The CA certificates (PEM) a `tls://` peer's certificate must be
    /// signed by.
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
}

/// Loaded TLS material: this pod's chain and key, and the trusted CAs.
pub(crate) struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cas: Vec<CertificateDer<'static>>,
    files: String,
}

impl TlsArgs {
    /// Whether any of the three flags is given.
    pub(crate) fn given(&self) -> bool {
        self.tls_cert.is_some() || self.tls_key.is_some() || self.tls_ca.is_some()
    }

    /// The identity, when `needed` (something uses a `tls://` address,
    /// described by `what`); refuses flags that nothing would use, and an
    /// incomplete set.
    pub(crate) fn load(&self, needed: bool, what: &str) -> Result<Option<Identity>> {
        if !needed {
            if self.given() {
                bail!(
                    "--tls-cert, --tls-key and --tls-ca are for tls:// addresses, and {what} uses none: \
                     drop them, or give a tls:// address"
                );
            }
            return Ok(None);
        }
        let missing: Vec<&str> = [
            ("--tls-cert", self.tls_cert.is_none()),
            ("--tls-key", self.tls_key.is_none()),
            ("--tls-ca", self.tls_ca.is_none()),
        ]
        .into_iter()
        .filter_map(|(flag, missing)| missing.then_some(flag))
        .collect();
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            bail!(
                "{what} uses a tls:// address, which needs --tls-cert, --tls-key and --tls-ca; missing: {}",
                missing.join(", ")
            );
        };
        let files = format!(
            "--tls-cert {}, --tls-key {}, --tls-ca {}",
            cert.display(),
            key.display(),
            ca.display()
        );
        Ok(Some(Identity {
            chain: tls::load_certs(cert).context("--tls-cert")?,
            key: tls::load_private_key(key).context("--tls-key")?,
            cas: tls::load_certs(ca).context("--tls-ca")?,
            files,
        }))
    }
}

impl Identity {
    /// A listener's configuration: clients must present a certificate
    /// signed by the CAs.
    pub(crate) fn server(&self) -> Result<Arc<ServerConfig>> {
        tls::server_config(self.chain.clone(), self.key.clone_key(), self.cas.clone())
            .with_context(|| format!("cannot listen with {}", self.files))
    }

    fn client(&self) -> Result<Arc<ClientConfig>> {
        tls::client_config(self.chain.clone(), self.key.clone_key(), self.cas.clone())
            .with_context(|| format!("cannot send with {}", self.files))
    }

    /// A pooled sender presenting this identity.
    pub(crate) fn sender(&self) -> Result<TlsSender> {
        Ok(TlsSender::new(self.client()?, TlsSendConfig::default()))
    }
}
