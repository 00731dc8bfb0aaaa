//! Helpers shared by the test modules.

use std::future::Future;
use std::path::Path;

use pod_registry::{Mutation, PodName, Record, ScopeRule, Tombstone, DEPARTED_FILE, RECORDS_FILE};

/// A validated pod name; panics on an invalid one (test input only).
pub(crate) fn name(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

/// A record whose content is determined by its key.
pub(crate) fn record(pod_name: &str, incarnation: Option<&str>) -> Record {
    Record {
        pod_name: name(pod_name),
        socket_path: format!("/run/pods/{pod_name}.sock"),
        scope_delegated: vec![ScopeRule::write(format!("/srv/{pod_name}"))],
        callback_address: "/run/pods/parent.sock".into(),
        incarnation: incarnation.map(str::to_owned),
    }
}

/// A tombstone.
pub(crate) fn tombstone(pod_name: &str, incarnation: Option<&str>) -> Tombstone {
    Tombstone {
        pod_name: name(pod_name),
        incarnation: incarnation.map(str::to_owned),
    }
}

/// [`Mutation::Remove`] of `(pod_name, incarnation)`.
pub(crate) fn removal(pod_name: &str, incarnation: Option<&str>) -> Mutation {
    Mutation::Remove {
        pod_name: name(pod_name),
        incarnation: incarnation.map(str::to_owned),
    }
}

/// [`Mutation::Depart`] of `(pod_name, incarnation)`.
pub(crate) fn departure(pod_name: &str, incarnation: Option<&str>) -> Mutation {
    Mutation::Depart {
        pod_name: name(pod_name),
        incarnation: incarnation.map(str::to_owned),
    }
}

/// Runs `future` to completion on a fresh current-thread runtime.
pub(crate) fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// The records file of `dir`, parsed as existing tools parse it.
pub(crate) fn records_on_disk(dir: &Path) -> Vec<Record> {
    serde_json::from_slice(&std::fs::read(dir.join(RECORDS_FILE)).unwrap()).unwrap()
}

/// The departed file of `dir`, parsed.
pub(crate) fn departed_on_disk(dir: &Path) -> Vec<Tombstone> {
    serde_json::from_slice(&std::fs::read(dir.join(DEPARTED_FILE)).unwrap()).unwrap()
}

/// The exact text of every element of the records file of `dir`.
pub(crate) fn elements_on_disk(dir: &Path) -> Vec<String> {
    let bytes = std::fs::read(dir.join(RECORDS_FILE)).unwrap();
    let elements: Vec<Box<serde_json::value::RawValue>> = serde_json::from_slice(&bytes).unwrap();
    elements.iter().map(|e| e.get().to_owned()).collect()
}

/// What [`elements_on_disk`] must say for these valid records followed by
/// these invalid elements.
pub(crate) fn expected_elements<'a>(
    records: impl IntoIterator<Item = &'a Record>,
    invalid: &[impl AsRef<str>],
) -> Vec<String> {
    records
        .into_iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .chain(invalid.iter().map(|raw| raw.as_ref().to_owned()))
        .collect()
}
