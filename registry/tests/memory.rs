//! `MemoryRegistry`, and the `Registry` trait's provided methods on both
//! implementations.

use std::sync::Arc;

use pod_registry::testing::MemoryRegistry;
use pod_registry::{FileRegistry, Outcome, Registry, RegistryError};

use crate::common::{block_on, name, record};

/// The same scenario through the trait, so both implementations agree.
async fn exercise(registry: &impl Registry) {
    assert_eq!(
        registry.add(record("w1", Some("a"))).await.unwrap(),
        Outcome::Added
    );
    assert_eq!(
        registry.add(record("w1", Some("a"))).await.unwrap(),
        Outcome::AlreadyPresent
    );
    assert_eq!(
        registry.add(record("w2", None)).await.unwrap(),
        Outcome::Added
    );
    assert_eq!(
        registry.list(),
        [record("w1", Some("a")), record("w2", None)]
    );
    assert_eq!(registry.get("w1", None), Some(record("w1", Some("a"))));
    assert_eq!(registry.get("w1", Some("b")), None);
    assert_eq!(
        registry.remove(name("w2"), None).await.unwrap(),
        Outcome::Removed {
            records: vec![record("w2", None)],
            first_departure: false
        }
    );
    assert_eq!(
        registry.depart(name("w1"), Some("a".into())).await.unwrap(),
        Outcome::Removed {
            records: vec![record("w1", Some("a"))],
            first_departure: true
        }
    );
    assert!(registry.is_departed("w1", Some("a")));
    assert!(!registry.is_departed("w2", None));
    assert_eq!(
        registry.add(record("w1", Some("a"))).await.unwrap(),
        Outcome::Departed
    );
    assert!(registry.list().is_empty());
    assert_eq!(registry.read(|state| state.departed_len()), 1);
}

#[test]
fn memory_registry_implements_the_semantics() {
    block_on(exercise(&MemoryRegistry::new()));
}

#[test]
fn file_registry_implements_the_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let registry = FileRegistry::open(dir.path()).unwrap();
    block_on(exercise(&registry));
}

#[test]
fn arc_of_a_registry_is_a_registry() {
    block_on(exercise(&Arc::new(MemoryRegistry::new())));
}

#[test]
fn apply_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let memory = MemoryRegistry::new();
    assert_send(&memory.add(record("w1", None)));
    let dir = tempfile::tempdir().unwrap();
    let file = FileRegistry::open(dir.path()).unwrap();
    let future = file.depart(name("w1"), None);
    assert_send(&future);
    block_on(future).unwrap();
}

#[test]
fn memory_clones_share_state_and_count_writes() {
    let registry = MemoryRegistry::with_capacity(1);
    let clone = registry.clone();
    block_on(async {
        clone.add(record("w1", None)).await.unwrap();
        registry.add(record("w1", None)).await.unwrap();
        clone.depart(name("a"), None).await.unwrap();
        clone.depart(name("b"), None).await.unwrap();
    });
    assert_eq!(registry.list(), [record("w1", None)]);
    // Capacity 1: only the newest departure is remembered.
    assert!(!registry.is_departed("a", None));
    assert!(registry.is_departed("b", None));
    // The duplicate add changed nothing, so it wrote nothing.
    assert_eq!(registry.writes(), 3);
}

#[test]
fn memory_write_failure_keeps_memory_ahead_until_the_next_write() {
    let registry = MemoryRegistry::new();
    registry.fail_next_writes(2);
    block_on(async {
        let first = registry.add(record("w1", None)).await;
        assert!(matches!(first, Err(RegistryError::Injected)), "{first:?}");
        assert_eq!(registry.get("w1", None), Some(record("w1", None)));
        // Dirty: even a mutation that changes nothing writes, and fails.
        let second = registry.remove(name("missing"), None).await;
        assert!(matches!(second, Err(RegistryError::Injected)), "{second:?}");
        assert_eq!(registry.writes(), 0);
        // The retry succeeds; afterwards a no-op writes nothing.
        registry.remove(name("missing"), None).await.unwrap();
        assert_eq!(registry.writes(), 1);
        registry.remove(name("missing"), None).await.unwrap();
        assert_eq!(registry.writes(), 1);
    });
}
