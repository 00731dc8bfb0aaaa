//! The `--tls-cert`, `--tls-key` and `--tls-ca` flags: this pod's TLS
//! identity, for `listen --listen tls://...` and for sends to `tls://`
//! addresses (DESIGN.md section 13).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_events::TlsFiles;
use pod_protocol::{validate_path, PodName};
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
    /// The three came from a spawner's handoff (POD_TLS_*), not from the
    /// command line: unused, they are no mistake of the user's.
    #[arg(skip)]
    inherited: bool,
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

    /// Takes the TLS files a spawner handed over (POD_TLS_CERT,
    /// POD_TLS_KEY, POD_TLS_CA) unless a flag is given: flags override, as
    /// a set, so a certificate is never paired with another's key.
    pub(crate) fn fill_from(&mut self, files: &TlsFiles) {
        if self.given() {
            return;
        }
        self.tls_cert = Some(files.cert.clone());
        self.tls_key = Some(files.key.clone());
        self.tls_ca = Some(files.ca.clone());
        self.inherited = true;
    }

    /// The identity, when `needed` (something uses a `tls://` address,
    /// described by `what`); refuses flags that nothing would use (files
    /// inherited from a handoff are left unused), and an incomplete set.
    pub(crate) fn load(&self, needed: bool, what: &str) -> Result<Option<Identity>> {
        if !needed {
            if self.given() && !self.inherited {
                bail!(
                    "--tls-cert, --tls-key and --tls-ca are for tls:// addresses, and {what} uses none: \
                     drop them, or give a tls:// address"
                );
            }
            return Ok(None);
        }
        self.load_all(&format!("{what} uses a tls:// address, which"))
            .map(Some)
    }

    /// The identity if any flag is given (all three then), for `why`
    /// (what needs it, as the start of a sentence).
    pub(crate) fn load_given(&self, why: &str) -> Result<Option<Identity>> {
        if !self.given() {
            return Ok(None);
        }
        self.load_all(why).map(Some)
    }

    fn load_all(&self, why: &str) -> Result<Identity> {
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
                "{why} needs --tls-cert, --tls-key and --tls-ca; missing: {}",
                missing.join(", ")
            );
        };
        let files = format!(
            "--tls-cert {}, --tls-key {}, --tls-ca {}",
            cert.display(),
            key.display(),
            ca.display()
        );
        Ok(Identity {
            chain: tls::load_certs(cert).context("--tls-cert")?,
            key: tls::load_private_key(key).context("--tls-key")?,
            cas: tls::load_certs(ca).context("--tls-ca")?,
            files,
        })
    }

    /// The three files as a handoff carries them (absolute and lexically
    /// normal, as the child checks them), if given.
    pub(crate) fn files(&self) -> Result<Option<TlsFiles>> {
        let (Some(cert), Some(key), Some(ca)) = (&self.tls_cert, &self.tls_key, &self.tls_ca)
        else {
            return Ok(None);
        };
        let handed = |flag: &'static str, path: &PathBuf| -> Result<PathBuf> {
            let absolute = std::path::absolute(path)
                .with_context(|| format!("{flag} {}: cannot make it absolute", path.display()))?;
            let text = absolute.to_str().with_context(|| {
                format!(
                    "{flag} {}: the child is handed UTF-8 paths only",
                    path.display()
                )
            })?;
            validate_path(flag, text).with_context(|| {
                format!(
                    "{flag} {} cannot be handed to the child: give a path without `.` or `..`",
                    path.display()
                )
            })?;
            Ok(absolute)
        };
        Ok(Some(TlsFiles::new(
            handed("--tls-cert", cert)?,
            handed("--tls-key", key)?,
            handed("--tls-ca", ca)?,
        )))
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

    /// The pod the certificate names (its URI `pod://NAME`).
    pub(crate) fn pod_name(&self) -> Result<PodName> {
        let leaf = self
            .chain
            .first()
            .context("--tls-cert holds no certificate")?;
        tls::pod_name_of(leaf)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("--tls-cert names no pod ({})", self.files))
    }

    /// A pooled sender presenting this identity.
    pub(crate) fn sender(&self) -> Result<TlsSender> {
        Ok(TlsSender::new(self.client()?, TlsSendConfig::default()))
    }
}
