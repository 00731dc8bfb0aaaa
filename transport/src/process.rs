//! A local peer's process ancestry, read from `/proc`.
//!
//! The listener records it when a connection's first frame arrives, while
//! the sender is still connected (a sender that exits at once after
//! writing may be gone by then; [`SendConfig::linger`](crate::SendConfig::linger)
//! keeps it alive until the listener has read). Receivers use it to tell
//! which processes a sender descends from; the transport gives it no
//! meaning.

use std::sync::Arc;

/// How many ancestors the listener records: enough for a helper started by
/// a pod or by the pod's supervisor, directly or through one shell. Each
/// level is one read of `/proc/<pid>/stat` per connection, the largest
/// cost of a connect-per-event delivery, so no more are read.
pub(crate) const RECORDED_ANCESTORS: usize = 2;

/// The parent pid of the live process `pid` (field 4 of
/// `/proc/<pid>/stat`), if it can be read.
pub fn parent_pid(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields after it start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The ancestors of `pid`, parent first, at most `depth`, stopping before
/// pid 1 (everyone's ancestor) and at the first that cannot be read.
pub(crate) fn ancestors(pid: u32, depth: usize) -> Arc<[u32]> {
    std::iter::successors(parent_pid(pid), |&p| parent_pid(p))
        .take_while(|&p| p > 1)
        .take(depth)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_descends_from_its_parent() {
        let parent = std::os::unix::process::parent_id();
        assert_eq!(parent_pid(std::process::id()), Some(parent));
        let chain = ancestors(std::process::id(), RECORDED_ANCESTORS);
        if parent > 1 {
            assert_eq!(chain.first(), Some(&parent));
        }
        assert!(chain.len() <= RECORDED_ANCESTORS && !chain.contains(&1));
    }

    #[test]
    fn a_process_that_does_not_exist_has_no_parent() {
        assert_eq!(parent_pid(u32::MAX), None);
        assert!(ancestors(u32::MAX, 4).is_empty());
    }
}
