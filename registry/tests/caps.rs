//! Caps on records, record size and file size (issue 13): an add over a
//! cap is refused with a typed error, changes nothing and is counted, in
//! `FileRegistry` and `MemoryRegistry` alike.

use std::fs;

use pod_registry::testing::MemoryRegistry;
use pod_registry::{
    FileRegistry, Outcome, Record, Registry, RegistryError, RegistryLimits, RegistryOptions,
    ScopeRule, RECORDS_FILE,
};

use crate::common::{block_on, departure, record};

/// A record of about `rules` × 30 bytes.
fn wide_record(pod: &str, rules: usize) -> Record {
    let mut record = record(pod, Some("1"));
    record.scope_delegated = (0..rules)
        .map(|i| ScopeRule::write(format!("/srv/{pod}/{i}")))
        .collect();
    record
}

/// The two registries under test, with their refusal counters.
enum Under {
    File(tempfile::TempDir, FileRegistry),
    Memory(MemoryRegistry),
}

impl Under {
    fn both(limits: RegistryLimits) -> [Under; 2] {
        let dir = tempfile::tempdir().unwrap();
        let options = RegistryOptions::new().limits(limits);
        let file = FileRegistry::open_with(dir.path(), options).unwrap();
        [
            Under::File(dir, file),
            Under::Memory(MemoryRegistry::new().with_limits(limits)),
        ]
    }

    fn add(&self, record: Record) -> Result<Outcome, RegistryError> {
        match self {
            Under::File(_, r) => block_on(r.add(record)),
            Under::Memory(r) => block_on(r.add(record)),
        }
    }

    fn depart(&self, pod: &str) {
        let mutation = departure(pod, None);
        match self {
            Under::File(_, r) => block_on(r.apply(mutation)).unwrap(),
            Under::Memory(r) => block_on(r.apply(mutation)).unwrap(),
        };
    }

    fn list(&self) -> Vec<Record> {
        match self {
            Under::File(_, r) => r.list(),
            Under::Memory(r) => r.list(),
        }
    }

    fn refused(&self) -> u64 {
        match self {
            Under::File(_, r) => r.refused_mutations(),
            Under::Memory(r) => r.refused_mutations(),
        }
    }

    /// The records file's bytes (file registry only).
    fn on_disk(&self) -> Option<Vec<u8>> {
        match self {
            Under::File(dir, _) => Some(fs::read(dir.path().join(RECORDS_FILE)).unwrap()),
            Under::Memory(_) => None,
        }
    }
}

/// `add` must be refused by `check`, leaving memory, disk and every other
/// outcome as they were, and be counted.
fn check_refused(under: &Under, add: Record, check: impl Fn(&RegistryError) -> bool) {
    let (before, disk, refused) = (under.list(), under.on_disk(), under.refused());
    let error = under.add(add).unwrap_err();
    assert!(check(&error), "{error:?}");
    assert!(!error.to_string().is_empty());
    assert_eq!(under.list(), before);
    assert_eq!(under.on_disk(), disk);
    assert_eq!(under.refused(), refused + 1);
}

#[test]
fn an_add_beyond_max_records_is_full_and_changes_nothing() {
    for under in Under::both(RegistryLimits::new().max_records(2)) {
        under.add(record("w1", Some("1"))).unwrap();
        under.add(record("w2", Some("1"))).unwrap();
        check_refused(
            &under,
            record("w3", Some("1")),
            |e| matches!(e, RegistryError::Full { pod_name, limit: 2 } if pod_name.as_str() == "w3"),
        );
        // What would not insert is answered as usual when full.
        assert_eq!(
            under.add(record("w1", Some("1"))).unwrap(),
            Outcome::AlreadyPresent
        );
        under.depart("w9");
        assert_eq!(under.add(record("w9", None)).unwrap(), Outcome::Departed);
        // A departure frees a slot.
        under.depart("w1");
        assert_eq!(under.add(record("w3", Some("1"))).unwrap(), Outcome::Added);
        assert_eq!(under.refused(), 1);
    }
}

#[test]
fn a_record_over_max_record_bytes_is_refused() {
    let limits = RegistryLimits::new().max_record_bytes(300);
    for under in Under::both(limits) {
        under.add(wide_record("w1", 1)).unwrap();
        check_refused(
            &under,
            wide_record("w2", 20),
            |e| matches!(e, RegistryError::RecordTooLarge { bytes, limit: 300, .. } if *bytes > 300),
        );
        // Even as a duplicate of nothing: the record itself is too large.
        check_refused(&under, wide_record("w1", 20), |e| {
            matches!(e, RegistryError::RecordTooLarge { .. })
        });
    }
}

#[test]
fn an_add_that_would_grow_the_file_past_its_cap_is_refused_and_the_file_stays_readable() {
    let limits = RegistryLimits::new().max_file_bytes(2000);
    for under in Under::both(limits) {
        let mut added = 0;
        let refusal = loop {
            match under.add(wide_record(&format!("w{added}"), 2)) {
                Ok(outcome) => assert_eq!(outcome, Outcome::Added),
                Err(error) => break error,
            }
            added += 1;
        };
        assert!(
            matches!(refusal, RegistryError::FileFull { bytes, limit: 2000, .. } if bytes > 2000),
            "{refusal:?}"
        );
        assert!(added > 5, "{added}");
        assert_eq!(under.list().len(), added);
        // Removing makes room again.
        under.depart("w0");
        assert_eq!(under.add(wide_record("x0", 2)).unwrap(), Outcome::Added);
        if let Under::File(dir, registry) = under {
            let size = fs::metadata(dir.path().join(RECORDS_FILE)).unwrap().len();
            assert!(size <= 2000, "{size}");
            drop(registry);
            let options = RegistryOptions::new().limits(limits);
            let reopened = FileRegistry::open_with(dir.path(), options).unwrap();
            assert_eq!(reopened.list().len(), added);
            assert!(matches!(
                block_on(reopened.add(wide_record("late", 2))),
                Err(RegistryError::FileFull { .. })
            ));
        }
    }
}

#[test]
fn the_defaults_hold_well_over_10000_records() {
    let limits = RegistryLimits::default();
    assert!(limits.records() >= 100_000);
    assert!(limits.record_bytes() >= 64 * 1024);
    assert!(limits.file_bytes() >= 64 * 1024 * 1024);
    let registry = MemoryRegistry::new();
    block_on(async {
        for i in 0..10_000 {
            registry
                .add(record(&format!("w{i}"), Some("1")))
                .await
                .unwrap();
        }
    });
    assert_eq!(registry.refused_mutations(), 0);
    assert_eq!(registry.list().len(), 10_000);
}

#[test]
fn the_departed_set_never_outgrows_the_file_cap() {
    let limits = RegistryLimits::new().max_file_bytes(600);
    let long = "i".repeat(100);
    for under in Under::both(limits) {
        for i in 0..20 {
            let mutation = departure(&format!("d{i}"), Some(&long));
            match &under {
                Under::File(_, r) => block_on(r.apply(mutation)).unwrap(),
                Under::Memory(r) => block_on(r.apply(mutation)).unwrap(),
            };
        }
        // Departures are never refused: the oldest tombstones make room.
        let departed: Vec<String> = match &under {
            Under::File(_, r) => r.read(|s| s.departed().map(|t| t.pod_name.to_string()).collect()),
            Under::Memory(r) => r.read(|s| s.departed().map(|t| t.pod_name.to_string()).collect()),
        };
        assert!(departed.len() < 20 && departed.len() >= 3, "{departed:?}");
        assert_eq!(departed.last().map(String::as_str), Some("d19"));
        // A tombstone too large for the file alone still removes its
        // records, and is not remembered.
        under.add(record("big", None)).unwrap();
        let huge = departure("big", Some(&"x".repeat(1000)));
        let outcome = match &under {
            Under::File(_, r) => block_on(r.apply(huge)).unwrap(),
            Under::Memory(r) => block_on(r.apply(huge)).unwrap(),
        };
        assert!(
            matches!(outcome, Outcome::Removed { ref records, first_departure: true } if records.len() == 1)
        );
        if let Under::File(dir, registry) = under {
            let path = dir.path().join(pod_registry::DEPARTED_FILE);
            let size = fs::metadata(&path).unwrap().len();
            assert!(size <= 600, "{size}");
            drop(registry);
            let options = RegistryOptions::new().limits(limits);
            let reopened = FileRegistry::open_with(dir.path(), options).unwrap();
            assert_eq!(reopened.read(|s| s.departed_len()), departed.len());
        }
    }
}
