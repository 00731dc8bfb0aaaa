//! Addresses of Pod sockets: a Unix socket path, or a TLS endpoint.
//!
//! DESIGN.md section 13: every field that carries a socket accepts an
//! absolute path or `unix:` + absolute path (a Unix socket), or
//! `tls://host:port` with a DNS name, an IPv4 address or a bracketed IPv6
//! address. On the wire the field stays a string, so existing Pods see
//! what they always saw; [`PodEvent::validate`](crate::PodEvent::validate)
//! checks it as an [`Address`].

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::{validate_path, ValidationError};

/// Longest accepted DNS name, in bytes (RFC 1035).
const MAX_DNS_NAME_LEN: usize = 253;

/// Longest accepted DNS label, in bytes (RFC 1035).
const MAX_DNS_LABEL_LEN: usize = 63;

/// Where a Pod listens.
///
/// ```
/// use pod_protocol::{Address, Host};
///
/// let unix: Address = "unix:/run/pods/w/sock".parse().unwrap();
/// assert_eq!(unix, Address::Unix("/run/pods/w/sock".into()));
/// assert_eq!(unix.to_string(), "/run/pods/w/sock");
///
/// let tls: Address = "tls://[::1]:7443".parse().unwrap();
/// assert_eq!(tls, Address::Tls { host: Host::Ipv6("::1".parse().unwrap()), port: 7443 });
/// assert_eq!(tls.to_string(), "tls://[::1]:7443");
/// assert!("tls://pods.example:0".parse::<Address>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Address {
    /// A Unix socket: an absolute, lexically normal path (see
    /// [`validate_path`]). Written as the bare path; `unix:` + path parses
    /// to the same address.
    Unix(String),
    /// A TLS endpoint, `tls://host:port`.
    Tls {
        /// The host to connect to.
        host: Host,
        /// The TCP port, 1 to 65535.
        port: u16,
    },
}

/// The host of a TLS [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// A DNS name: dot-separated labels of letters, digits and `-` (not at
    /// either end of a label), at most 63 bytes each and 253 in all, the
    /// last label not all digits. Kept as written (DNS is
    /// case-insensitive; comparing names is the caller's choice).
    Dns(String),
    /// An IPv4 address in dotted-decimal form.
    Ipv4(Ipv4Addr),
    /// An IPv6 address, written in brackets in an address.
    Ipv6(Ipv6Addr),
}

/// Why a string is not an [`Address`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// Neither an absolute path, nor `unix:` + path, nor `tls://`.
    #[error(
        "unknown address form: use an absolute path, `unix:` + an absolute path, or `tls://host:port`"
    )]
    UnknownScheme,
    /// The Unix socket path is not absolute and lexically normal.
    #[error("Unix socket path {path:?} {reason}")]
    Path {
        /// The rejected path.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `tls://` with no `:port` after the host.
    #[error("missing `:port` after the host in a `tls://` address")]
    MissingPort,
    /// The port is not a decimal number from 1 to 65535.
    #[error("port {port:?} is not a number from 1 to 65535")]
    Port {
        /// The rejected port text.
        port: String,
    },
    /// The host is not a DNS name, an IPv4 address or a bracketed IPv6
    /// address.
    #[error(
        "host {host:?} is not a DNS name, an IPv4 address or a bracketed IPv6 address: {reason}"
    )]
    Host {
        /// The rejected host text.
        host: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.starts_with('/') {
            return unix(text);
        }
        if let Some(path) = text.strip_prefix("unix:") {
            return unix(path);
        }
        let Some(authority) = text.strip_prefix("tls://") else {
            return Err(AddressError::UnknownScheme);
        };
        // `[::1]` has colons of its own: the port follows the bracket.
        let (host, port) = if authority.starts_with('[') {
            let end = authority
                .find(']')
                .ok_or_else(|| host_error(authority, "a `[` without its `]`"))?;
            let (host, rest) = authority.split_at(end + 1);
            (
                host,
                rest.strip_prefix(':').ok_or(AddressError::MissingPort)?,
            )
        } else {
            let (host, port) = authority
                .rsplit_once(':')
                .ok_or(AddressError::MissingPort)?;
            if host.contains(':') {
                return Err(host_error(
                    host,
                    "an IPv6 address goes in brackets, `[::1]`",
                ));
            }
            (host, port)
        };
        Ok(Address::Tls {
            host: parse_host(host)?,
            port: parse_port(port)?,
        })
    }
}

fn unix(path: &str) -> Result<Address, AddressError> {
    match validate_path("address", path) {
        Ok(_) => Ok(Address::Unix(path.to_owned())),
        Err(ValidationError::Path { reason, .. }) => Err(AddressError::Path {
            path: path.to_owned(),
            reason,
        }),
        Err(_) => Err(AddressError::Path {
            path: path.to_owned(),
            reason: "is not a valid path",
        }),
    }
}

fn host_error(host: &str, reason: &'static str) -> AddressError {
    AddressError::Host {
        host: host.to_owned(),
        reason,
    }
}

fn parse_port(port: &str) -> Result<u16, AddressError> {
    let error = || AddressError::Port {
        port: port.to_owned(),
    };
    // `u16::from_str` alone would take `+443`.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(error());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(error()),
        Ok(port) => Ok(port),
    }
}

fn parse_host(host: &str) -> Result<Host, AddressError> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        // A zone (`%eth0`) names an interface of this machine: not an
        // address another Pod can be told to use.
        return inner
            .parse::<Ipv6Addr>()
            .map(Host::Ipv6)
            .map_err(|_| host_error(host, "not an IPv6 address inside the brackets"));
    }
    if host.is_empty() {
        return Err(host_error(host, "empty"));
    }
    if host.len() > MAX_DNS_NAME_LEN {
        return Err(host_error(host, "longer than 253 bytes"));
    }
    let last = host.rsplit('.').next().unwrap_or(host);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        // Numeric: an IPv4 address or nothing (`1.2.3` and `01.2.3.4` are
        // not names, and readers disagree on what they mean).
        return host
            .parse::<Ipv4Addr>()
            .map(Host::Ipv4)
            .map_err(|_| host_error(host, "numeric but not a dotted-decimal IPv4 address"));
    }
    for label in host.split('.') {
        let bytes = label.as_bytes();
        if bytes.is_empty() {
            return Err(host_error(host, "has an empty label"));
        }
        if bytes.len() > MAX_DNS_LABEL_LEN {
            return Err(host_error(host, "has a label longer than 63 bytes"));
        }
        if !bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        {
            return Err(host_error(host, "labels hold only letters, digits and `-`"));
        }
        if bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(host_error(host, "a label starts or ends with `-`"));
        }
    }
    Ok(Host::Dns(host.to_owned()))
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Dns(name) => f.write_str(name),
            Host::Ipv4(ip) => write!(f, "{ip}"),
            Host::Ipv6(ip) => write!(f, "[{ip}]"),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(path) => f.write_str(path),
            Address::Tls { host, port } => write!(f, "tls://{host}:{port}"),
        }
    }
}

/// Checks a field that carries a socket: a string starting with `unix:` or
/// `tls://` must be an [`Address`]; anything else is checked as a path by
/// [`validate_path`], exactly as before addresses existed. For the other
/// crates' fields that carry sockets (an allocation's `socket`, a
/// registry record's addresses).
///
/// ```
/// use pod_protocol::validate_socket;
///
/// assert!(validate_socket("socket", "/run/pods/w/sock").is_ok());
/// assert!(validate_socket("socket", "tls://pods.example:7443").is_ok());
/// assert!(validate_socket("socket", "tls://pods.example").is_err());
/// assert!(validate_socket("socket", "run/pods/w/sock").is_err());
/// ```
pub fn validate_socket(field: &'static str, text: &str) -> Result<(), ValidationError> {
    if text.starts_with("unix:") || text.starts_with("tls://") {
        text.parse::<Address>()
            .map(drop)
            .map_err(|source| ValidationError::Address {
                field,
                address: text.to_owned(),
                source,
            })
    } else {
        validate_path(field, text).map(drop)
    }
}
