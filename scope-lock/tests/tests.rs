//! Integration tests of `pod-scope-lock`, built as one binary. The
//! multi-process tests re-execute this binary with a role in the
//! environment (see `multiprocess`).

mod coverage;
#[cfg(feature = "etcd")]
mod etcd;
mod file_safety;
mod file_store;
mod legacy_race;
mod model;
mod multiprocess;
mod store_suite;
mod table;

use pod_scope_lock::{Permission, PodName, PodSpec, ScopeRule};

/// A rule from a short notation: `w:/a/**` (write, recursive), `r:/a/*`
/// (read, non-recursive), `w:/**` (the root, recursive). Without a `/**` or
/// `/*` suffix the target is taken verbatim as a recursive rule, for invalid
/// targets.
pub(crate) fn rule(notation: &str) -> ScopeRule {
    let (permission, pattern) = match notation.split_once(':') {
        Some(("w", pattern)) => (Permission::Write, pattern),
        Some(("r", pattern)) => (Permission::Read, pattern),
        _ => panic!("bad rule notation {notation:?}"),
    };
    let (target, recursive) = if let Some(t) = pattern.strip_suffix("/**") {
        (t, true)
    } else if let Some(t) = pattern.strip_suffix("/*") {
        (t, false)
    } else {
        (pattern, true)
    };
    ScopeRule {
        target: if target.is_empty() {
            "/".into()
        } else {
            target.into()
        },
        permission,
        recursive,
    }
}

/// A validated pod name.
pub(crate) fn name(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

/// A spec for pod `pod` with process `pid` and rules in [`rule`] notation.
pub(crate) fn spec(pod: &str, pid: u32, rules: &[&str]) -> PodSpec {
    PodSpec {
        pod_name: name(pod),
        pid,
        socket: format!("/run/pods/{pod}.sock"),
        scope: rules.iter().map(|r| rule(r)).collect(),
    }
}
