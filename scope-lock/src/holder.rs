//! What a lease holder's liveness key says about it: [`HolderRecord`].
//!
//! On a table held by leases (the `etcd` feature), holder `H`'s key
//! `P/live/H` is attached to its lease and written once, when the holder
//! takes the lease. Its value is a JSON object naming the lease and the
//! process that keeps it alive:
//!
//! ```json
//! {"lease":4823904323489,"boot":"6f1c…","pid":4242,"start":987654321}
//! ```
//!
//! `boot` is the kernel's boot id of the keeper's host
//! (`/proc/sys/kernel/random/boot_id`), and `pid` with `start` (its start
//! time, as [`ProcLiveness`](crate::ProcLiveness) reads it) name the
//! keeper on that boot. With them an endpoint on the same host can check a
//! Unix peer against a lease-held allocation as it checks a pid-held one
//! (the keeper is the pod, or its supervisor such as `podctl run`); a
//! holder on another host is no local process, and a Unix peer never
//! speaks for it. A bare decimal lease id, what earlier releases wrote,
//! parses as a record naming no process. The parser is pure: the
//! `files` fuzz target feeds it arbitrary bytes.

use serde::{Deserialize, Serialize};

use crate::liveness::{Liveness, ProcLiveness};

/// Where the kernel publishes the id of the current boot.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The value of a lease holder's liveness key.
///
/// ```
/// use pod_scope_lock::HolderRecord;
///
/// let record = HolderRecord::parse(b"{\"lease\":7,\"boot\":\"b\",\"pid\":42,\"start\":9}").unwrap();
/// assert_eq!((record.lease, record.pid), (7, Some(42)));
/// // What earlier releases wrote: the lease id alone.
/// assert_eq!(HolderRecord::parse(b"7").unwrap().pid, None);
/// assert!(HolderRecord::parse(b"{\"lease\":-1}").is_none());
/// assert_eq!(HolderRecord::parse(&record.to_bytes()), Some(record));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderRecord {
    /// The etcd lease id (positive).
    pub lease: i64,
    /// The boot id of the keeper's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<String>,
    /// The keeper's pid on that boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// The keeper's start time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<u64>,
}

/// Bounds a stored value: a record is well under 200 bytes.
const MAX_RECORD: usize = 1024;

impl HolderRecord {
    /// The record of lease `lease` kept alive by this process.
    pub fn of_this_process(lease: i64) -> HolderRecord {
        let pid = std::process::id();
        HolderRecord {
            lease,
            boot: boot_id(),
            pid: Some(pid),
            start: ProcLiveness.start_time(pid),
        }
    }

    /// Parses a key's value: a record, or a bare lease id. `None` for
    /// anything else (too long, not UTF-8, not a positive lease, unknown
    /// shape): such a key names no lease the table can check.
    pub fn parse(value: &[u8]) -> Option<HolderRecord> {
        if value.len() > MAX_RECORD {
            return None;
        }
        let text = std::str::from_utf8(value).ok()?.trim();
        let record = match text.parse::<i64>() {
            Ok(lease) => HolderRecord {
                lease,
                boot: None,
                pid: None,
                start: None,
            },
            Err(_) => serde_json::from_str(text).ok()?,
        };
        (record.lease > 0).then_some(record)
    }

    /// The value to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a record always serializes")
    }

    /// The keeper's pid, when it is a live process of this boot of this
    /// host (same pid and start time): the process a Unix peer's lineage
    /// is checked against. `None` on another host, for a keeper gone or
    /// replaced, or for a record naming no process.
    pub fn local_keeper(&self) -> Option<u32> {
        let (boot, pid, start) = (self.boot.as_deref()?, self.pid?, self.start?);
        (Some(boot) == boot_id().as_deref() && ProcLiveness.is_same_process(pid, start))
            .then_some(pid)
    }
}

/// This host's current boot id, read once.
fn boot_id() -> Option<String> {
    static BOOT: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    BOOT.get_or_init(|| {
        let id = std::fs::read_to_string(BOOT_ID).ok()?;
        let id = id.trim();
        (!id.is_empty()).then(|| id.to_owned())
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_its_own_local_keeper() {
        let record = HolderRecord::of_this_process(5);
        assert_eq!(record.local_keeper(), Some(std::process::id()));
        let parsed = HolderRecord::parse(&record.to_bytes()).unwrap();
        assert_eq!(parsed.local_keeper(), Some(std::process::id()));
    }

    #[test]
    fn another_boot_or_start_time_is_no_local_keeper() {
        let mut other_boot = HolderRecord::of_this_process(5);
        other_boot.boot = Some("another-boot".to_owned());
        assert_eq!(other_boot.local_keeper(), None);
        let mut restarted = HolderRecord::of_this_process(5);
        restarted.start = restarted.start.map(|s| s + 1);
        assert_eq!(restarted.local_keeper(), None);
        assert_eq!(HolderRecord::parse(b"5").unwrap().local_keeper(), None);
    }

    #[test]
    fn bad_values_name_no_lease() {
        for bad in [
            &b""[..],
            b"0",
            b"-3",
            b"abc",
            b"{\"pid\":1}",
            b"{\"lease\":\"7\"}",
            b"\xff",
            b"[7]",
        ] {
            assert_eq!(HolderRecord::parse(bad), None, "{bad:?}");
        }
        assert_eq!(HolderRecord::parse(&[b'1'; 2000]), None);
    }
}
