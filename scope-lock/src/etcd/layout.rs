//! The key layout of a table in etcd, and `etcd://` addresses.
//!
//! Under a prefix `P` (no trailing slash):
//!
//! | key | value |
//! | --- | --- |
//! | `P/meta` | `1:<generation>:<token>`: format version 1, a counter every commit raises, and the committing transaction's token (how a store whose commit outcome was lost finds out whether it landed) |
//! | `P/lock` | the token of the store whose transaction runs, attached to that store's lease |
//! | `P/a/<pod name>` | one allocation, as JSON (the file format's allocation object) |
//! | `P/live/<holder id>` | a lease holder's liveness key (see [`LeaseLiveness`](crate::LeaseLiveness)) |
//!
//! One key per allocation, not chunks of the table: a delegate writes one
//! key (a few hundred bytes) whatever the table's size, so 10,000
//! allocations never approach etcd's request limit (1.5 MiB by default),
//! and a release writes the released key plus one per reparented child.
//! Chunks would make every write carry a whole chunk and a growing table
//! re-split them. The cost is on the read side: a full load is a range
//! over `P/a/`, read in pages at one revision (consistent: one snapshot),
//! which the store avoids while `P/meta` is unchanged since its cached
//! table.

use crate::etcd::error::EtcdError;

/// The format version in `P/meta`.
pub(crate) const META_VERSION: u64 = 1;

/// The keys of one table.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    pub(crate) prefix: String,
    pub(crate) meta: String,
    pub(crate) lock: String,
    pub(crate) alloc: String,
    pub(crate) live: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Keys {
        let prefix = prefix.trim_end_matches('/').to_owned();
        Keys {
            meta: format!("{prefix}/meta"),
            lock: format!("{prefix}/lock"),
            alloc: format!("{prefix}/a/"),
            live: format!("{prefix}/live/"),
            prefix,
        }
    }

    pub(crate) fn allocation(&self, name: &str) -> String {
        format!("{}{name}", self.alloc)
    }

    pub(crate) fn liveness(&self, holder: u32) -> String {
        format!("{}{holder}", self.live)
    }
}

/// The end of the range of keys starting with `prefix` (etcd's
/// convention: the prefix with its last byte incremented).
pub(crate) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// `P/meta`'s value, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) version: u64,
    pub(crate) generation: u64,
    pub(crate) token: String,
}

/// Parses `P/meta`'s value; `None` if it is not `V:G:T` with numbers V
/// and G.
pub(crate) fn parse_meta(value: &[u8]) -> Option<Meta> {
    let text = std::str::from_utf8(value).ok()?;
    let mut parts = text.splitn(3, ':');
    Some(Meta {
        version: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
        token: parts.next()?.to_owned(),
    })
}

/// The value of `P/meta` at `generation`, committed by `token`.
pub(crate) fn meta_value(generation: u64, token: &str) -> String {
    format!("{META_VERSION}:{generation}:{token}")
}

/// Where a table lives: parsed from
/// `etcd://HOST:PORT[,HOST:PORT...]/PREFIX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdAddress {
    /// The client endpoints, as `http://HOST:PORT`.
    pub endpoints: Vec<String>,
    /// The key prefix of the table (no leading or trailing slash).
    pub prefix: String,
}

impl EtcdAddress {
    /// Parses an `etcd://` address. Hosts are DNS names, IPv4 addresses
    /// or bracketed IPv6 addresses, each with a port; the prefix is one or
    /// more path segments and must not be empty.
    pub fn parse(address: &str) -> Result<EtcdAddress, EtcdError> {
        let invalid = |reason| EtcdError::InvalidAddress {
            address: address.to_owned(),
            reason,
        };
        let rest = address
            .strip_prefix("etcd://")
            .ok_or_else(|| invalid("it does not start with etcd://"))?;
        let (hosts, prefix) = rest
            .split_once('/')
            .ok_or_else(|| invalid("it has no /PREFIX after the hosts"))?;
        let prefix = prefix.trim_end_matches('/');
        if prefix.is_empty() {
            return Err(invalid("the prefix is empty"));
        }
        if prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
            || prefix.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(invalid(
                "the prefix has an empty, `.` or `..` segment, or a space or control character",
            ));
        }
        let mut endpoints = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| invalid("a host has no :PORT"))?;
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid("a port is not a number from 1 to 65535"));
            }
            let plain = name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
            let ipv6 = name.starts_with('[')
                && name.ends_with(']')
                && name[1..name.len() - 1]
                    .parse::<std::net::Ipv6Addr>()
                    .is_ok();
            if name.is_empty() || !(plain || ipv6) {
                return Err(invalid("a host is not a DNS name, IPv4 or [IPv6] address"));
            }
            endpoints.push(format!("http://{name}:{port}"));
        }
        Ok(EtcdAddress {
            endpoints,
            prefix: prefix.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_say_why() {
        let a = EtcdAddress::parse("etcd://127.0.0.1:2379,[::1]:2380,etcd-0.local:1/pods/scope/")
            .unwrap();
        assert_eq!(
            a.endpoints,
            [
                "http://127.0.0.1:2379",
                "http://[::1]:2380",
                "http://etcd-0.local:1"
            ]
        );
        assert_eq!(a.prefix, "pods/scope");
        for bad in [
            "http://h:1/p",
            "etcd://h:1",
            "etcd://h:1/",
            "etcd://h/p",
            "etcd://h:0/p",
            "etcd://h:99999/p",
            "etcd://:1/p",
            "etcd://h h:1/p",
            "etcd://[zz]:1/p",
            "etcd://h:1/a//b",
            "etcd://h:1/a/../b",
        ] {
            assert!(
                matches!(
                    EtcdAddress::parse(bad),
                    Err(EtcdError::InvalidAddress { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn range_ends_and_meta_values() {
        assert_eq!(range_end("p/a/"), b"p/a0".to_vec());
        let meta = parse_meta(meta_value(41, "ab12").as_bytes()).unwrap();
        assert_eq!(
            (meta.version, meta.generation, meta.token.as_str()),
            (1, 41, "ab12")
        );
        assert_eq!(parse_meta(b"1:2"), None);
        assert_eq!(parse_meta(b"x:1"), None);
        let keys = Keys::new("p/");
        assert_eq!(keys.allocation("w1"), "p/a/w1");
        assert_eq!(keys.meta, "p/meta");
    }
}
