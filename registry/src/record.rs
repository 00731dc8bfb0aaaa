//! The registry's on-disk value types: [`Record`] and [`Tombstone`].

use pod_protocol::{PodName, ScopeRule};
use serde::{Deserialize, Serialize};

/// One spawned Pod, as the parent remembers it.
///
/// The serde field names are the file format of `spawned_pods.json`
/// (`{pod_name, socket_path, scope_delegated, callback_address,
/// incarnation?}`), which existing tools read; `incarnation` is omitted when
/// absent so records of legacy Pods round-trip byte for byte.
///
/// A record is identified by `(pod_name, incarnation)`, not by the name
/// alone: two records may share a name when a name was reused by a new
/// incarnation before the old one's departure was seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The Pod's name.
    pub pod_name: PodName,
    /// The Pod's control socket.
    pub socket_path: String,
    /// The scope the parent delegated to the Pod.
    pub scope_delegated: Vec<ScopeRule>,
    /// Where the Pod reports its events (its spawner's socket); empty when
    /// unknown.
    pub callback_address: String,
    /// The Pod's incarnation id; `None` for legacy Pods, which send none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

impl Record {
    /// Whether a departure of `(pod_name, incarnation)` covers this record:
    /// same name, and [`incarnations_match`].
    pub fn is_matched_by(&self, tombstone: &Tombstone) -> bool {
        self.pod_name == tombstone.pod_name
            && incarnations_match(
                self.incarnation.as_deref(),
                tombstone.incarnation.as_deref(),
            )
    }
}

/// A departure: a Pod name and the incarnation that left.
///
/// `incarnation: None` is a legacy `ShutDown`, which matches every
/// incarnation of the name. The serde field names are the file format of
/// `departed_pods.json`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tombstone {
    /// The departed Pod's name.
    pub pod_name: PodName,
    /// The departed incarnation; `None` matches every incarnation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// Whether two incarnation ids denote the same Pod: they are equal, or
/// either side is `None` (a legacy Pod that sends no incarnation matches
/// any incarnation of the same name).
///
/// ```
/// use pod_registry::incarnations_match;
/// assert!(incarnations_match(Some("a"), Some("a")));
/// assert!(incarnations_match(None, Some("a")));
/// assert!(incarnations_match(Some("a"), None));
/// assert!(!incarnations_match(Some("a"), Some("b")));
/// ```
pub fn incarnations_match(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}
