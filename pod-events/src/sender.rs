//! Sending to any address a pod may have: a Unix socket path (bare or
//! `unix:` + path) through [`UnixSender`], `tls://host:port` through the
//! pooled [`TlsSender`](pod_transport::tls::TlsSender) (feature `tls`).
//!
//! A parent's upward link, its relays and every send to a child's
//! callback address go through one [`MethodSender`]; the address decides
//! the transport, so a tree can mix local children with children on other
//! hosts (DESIGN.md section 13) without the layers above knowing.

use std::path::Path;

use pod_protocol::Method;
use pod_transport::{MethodSender, SendError, UnixSender};

/// The scheme of a TLS address.
const TLS_SCHEME: &str = "tls://";
/// The optional scheme of a Unix socket address.
const UNIX_SCHEME: &str = "unix:";

/// A [`MethodSender`] that picks the transport by the address: a path or
/// `unix:` + path goes to its [`UnixSender`], `tls://host:port` to its
/// TLS sender (see `with_tls`, feature `tls`).
///
/// A `tls://` address without a TLS sender (none configured, or the crate
/// built without `tls`) fails that send with [`SendError::Io`] of kind
/// `Unsupported`, saying what to configure, as every failed send does:
/// fire-and-forget callers log it and go on.
///
/// The Unix side writes in its [`SendConfig::dialect`]; the TLS side
/// writes the original dialect (existing Pods listen on Unix sockets only).
///
/// [`SendConfig::dialect`]: pod_transport::SendConfig::dialect
///
/// ```
/// use pod_events::AddressSender;
/// use pod_transport::UnixSender;
///
/// // Unix paths only; `tls://` sends fail with a clear error.
/// let sender = AddressSender::new(UnixSender::default());
/// assert!(!sender.has_tls());
/// ```
#[derive(Debug, Clone, Default)]
pub struct AddressSender {
    unix: UnixSender,
    #[cfg(feature = "tls")]
    tls: Option<pod_transport::tls::TlsSender>,
}

impl AddressSender {
    /// Sends to Unix socket addresses through `unix`; no TLS yet.
    pub fn new(unix: UnixSender) -> Self {
        AddressSender {
            unix,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Sends to `tls://` addresses through `tls` (its pool is shared with
    /// the clones of this sender).
    #[cfg(feature = "tls")]
    pub fn with_tls(self, tls: pod_transport::tls::TlsSender) -> Self {
        AddressSender {
            tls: Some(tls),
            ..self
        }
    }

    /// The sender a child started by a spawner reports through: Unix
    /// sockets, and `tls://` addresses with the identity of the handoff's
    /// TLS files (`POD_TLS_CERT`, `POD_TLS_KEY`, `POD_TLS_CA`) when it has
    /// them, through a pooled TLS sender with `config`. Without TLS files
    /// it is [`AddressSender::new`] of the default Unix sender.
    ///
    /// Reads the three files; a file that cannot be read or parsed, or a
    /// key that is not the certificate's, is
    /// [`HandoffError::Invalid`](crate::HandoffError::Invalid) naming its
    /// variable.
    #[cfg(feature = "tls")]
    pub fn for_handoff(
        handoff: &crate::Handoff,
        config: pod_transport::tls::TlsSendConfig,
    ) -> Result<Self, crate::HandoffError> {
        let sender = AddressSender::new(UnixSender::default());
        match &handoff.tls {
            None => Ok(sender),
            Some(files) => Ok(sender.with_tls(tls_sender(files, config)?)),
        }
    }

    /// Whether `tls://` addresses can be sent to.
    pub fn has_tls(&self) -> bool {
        #[cfg(feature = "tls")]
        return self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        false
    }

    /// The Unix sender.
    pub fn unix(&self) -> &UnixSender {
        &self.unix
    }

    async fn send_tls(&self, to: &Path, authority: &str, method: &Method) -> Result<(), SendError> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            return tls.send_to(authority, method).await;
        }
        let _ = (authority, method);
        let what = if cfg!(feature = "tls") {
            "no TLS identity is configured for this sender: give it a certificate, key and CA \
             (AddressSender::with_tls; podctl: --tls-cert, --tls-key, --tls-ca)"
        } else {
            "tls:// addresses need pod-events built with its `tls` feature"
        };
        Err(SendError::Io {
            path: to.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::Unsupported, what),
        })
    }
}

/// A pooled TLS sender presenting the identity in `files`.
#[cfg(feature = "tls")]
fn tls_sender(
    files: &crate::TlsFiles,
    config: pod_transport::tls::TlsSendConfig,
) -> Result<pod_transport::tls::TlsSender, crate::HandoffError> {
    use crate::handoff::{POD_TLS_CA, POD_TLS_CERT, POD_TLS_KEY};
    use pod_transport::tls;

    let refused = |variable, path: &Path, error: tls::TlsError| crate::HandoffError::Invalid {
        variable,
        value: path.display().to_string(),
        reason: error.to_string(),
    };
    let chain = tls::load_certs(&files.cert).map_err(|e| refused(POD_TLS_CERT, &files.cert, e))?;
    let key = tls::load_private_key(&files.key).map_err(|e| refused(POD_TLS_KEY, &files.key, e))?;
    let cas = tls::load_certs(&files.ca).map_err(|e| refused(POD_TLS_CA, &files.ca, e))?;
    // What the configuration refuses is a key that does not match the
    // certificate (the CAs already parsed): the key's variable is blamed.
    let client =
        tls::client_config(chain, key, cas).map_err(|e| refused(POD_TLS_KEY, &files.key, e))?;
    Ok(tls::TlsSender::new(client, config))
}

impl MethodSender for AddressSender {
    async fn send(&self, to: &Path, method: &Method) -> Result<(), SendError> {
        let text = to.to_str();
        if let Some(authority) = text.and_then(|t| t.strip_prefix(TLS_SCHEME)) {
            return self.send_tls(to, authority, method).await;
        }
        let path = text
            .and_then(|t| t.strip_prefix(UNIX_SCHEME))
            .map_or(to, Path::new);
        self.unix.send(path, method).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pod_transport::{ListenConfig, Listener, MethodSource};

    #[tokio::test]
    async fn unix_paths_with_and_without_the_scheme_reach_the_listener() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sock");
        let mut listener = Listener::bind(&socket, ListenConfig::default())
            .await
            .unwrap();
        let sender = AddressSender::new(UnixSender::default());
        let bare = socket.display().to_string();
        for to in [bare.clone(), format!("unix:{bare}")] {
            sender
                .send(Path::new(&to), &Method::notify(to.clone()))
                .await
                .unwrap();
            let got = listener.recv().await.unwrap().item.unwrap();
            assert_eq!(got, Method::notify(to));
        }
        listener.shutdown().await;
    }

    #[tokio::test]
    async fn a_tls_address_without_a_tls_sender_fails_saying_what_to_configure() {
        let sender = AddressSender::new(UnixSender::default());
        let err = sender
            .send(Path::new("tls://127.0.0.1:1"), &Method::notify("x"))
            .await
            .unwrap_err();
        let SendError::Io { path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, Path::new("tls://127.0.0.1:1"));
        assert_eq!(source.kind(), std::io::ErrorKind::Unsupported);
        assert!(err.to_string().contains("tls"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn a_handoffs_tls_files_make_a_tls_sender_or_name_the_bad_file() {
        use crate::handoff::{POD_TLS_CA, POD_TLS_CERT, POD_TLS_KEY};
        use crate::{Handoff, HandoffError, TlsFiles};
        use pod_protocol::PodName;

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca = params.self_signed(&ca_key).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![rcgen::SanType::URI("pod://child".try_into().unwrap())];
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let files = TlsFiles::new(
            write("child.pem", cert.pem()),
            write("child.key", key.serialize_pem()),
            write("ca.pem", ca.pem()),
        );
        let other_key = write(
            "other.key",
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        );
        let garbage = write("garbage.pem", "not PEM\n".into());

        let name = |n: &str| PodName::new(n).unwrap();
        let handoff = Handoff::new(
            name("child"),
            "0123abcd".into(),
            name("root"),
            "tls://127.0.0.1:7443".into(),
            "/run/pods/child/sock".into(),
            std::path::PathBuf::from("/run/pods/scope.lock"),
        );
        let config = pod_transport::tls::TlsSendConfig::default;
        let unix_only = AddressSender::for_handoff(&handoff, config()).unwrap();
        assert!(!unix_only.has_tls(), "no files, no TLS identity");
        let with = handoff.clone().with_tls(files.clone());
        assert!(AddressSender::for_handoff(&with, config())
            .unwrap()
            .has_tls());

        let blamed = |files: TlsFiles| match AddressSender::for_handoff(
            &handoff.clone().with_tls(files),
            config(),
        ) {
            Err(HandoffError::Invalid { variable, .. }) => variable,
            other => panic!("{other:?}"),
        };
        let with_cert = |cert| TlsFiles {
            cert,
            ..files.clone()
        };
        let with_key = |key| TlsFiles {
            key,
            ..files.clone()
        };
        let with_ca = |ca| TlsFiles {
            ca,
            ..files.clone()
        };
        assert_eq!(
            blamed(with_cert(dir.path().join("missing.pem"))),
            POD_TLS_CERT
        );
        assert_eq!(blamed(with_cert(garbage.clone())), POD_TLS_CERT);
        assert_eq!(blamed(with_key(garbage.clone())), POD_TLS_KEY);
        assert_eq!(
            blamed(with_key(other_key)),
            POD_TLS_KEY,
            "not the certificate's key"
        );
        assert_eq!(blamed(with_ca(garbage)), POD_TLS_CA);
    }
}
