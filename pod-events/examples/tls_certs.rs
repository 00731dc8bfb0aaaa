//! Writes a throwaway certificate authority and one certificate per pod,
//! for trying `podctl` over `tls://` on one machine (the demo's `--tls`
//! uses it): `DIR/ca.pem`, and for each POD `DIR/POD.pem` and
//! `DIR/POD.key` (mode 0600).
//!
//! Each pod certificate names the pod as `pod://POD` (its identity to a
//! listener) and `127.0.0.1`, `::1` and `localhost` (so a pod can listen
//! with it on loopback too). Not for production: the CA's key is not
//! kept, and nothing expires before 4096.
//!
//! `cargo run -p pod-events --example tls_certs -- DIR POD...`

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), pods) = (args.next(), args.collect::<Vec<_>>()) else {
        return Err("usage: tls_certs DIR POD...".into());
    };
    if pods.is_empty() {
        return Err("usage: tls_certs DIR POD... (name at least one pod)".into());
    }
    let dir = Path::new(&dir);
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate()?;
    let ca = ca.self_signed(&ca_key)?;
    write(&dir.join("ca.pem"), ca.pem().as_bytes(), 0o644)?;
    for pod in &pods {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![
            SanType::URI(format!("pod://{pod}").try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            SanType::DnsName("localhost".try_into()?),
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca, &ca_key)?;
        write(
            &dir.join(format!("{pod}.pem")),
            cert.pem().as_bytes(),
            0o644,
        )?;
        write(
            &dir.join(format!("{pod}.key")),
            key.serialize_pem().as_bytes(),
            0o600,
        )?;
    }
    Ok(())
}

/// Creates `path` (it must not exist: never overwrite a real key).
fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<(), Error> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|err| format!("cannot create {}: {err}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}
