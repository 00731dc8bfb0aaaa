//! Model-based test: random add / remove / depart / reopen sequences, with
//! injected write failures, against a simple `BTreeMap` model of memory and
//! of each file on disk; the records file starts with invalid elements
//! (issue 16), which must survive everything byte for byte; a small cap on
//! records refuses adds beyond it without changing anything (issue 13).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use pod_registry::{
    FaultInjector, FileRegistry, Mutation, Outcome, Record, Registry, RegistryError,
    RegistryLimits, RegistryOptions, Tombstone,
};
use proptest::prelude::*;

use crate::common::{
    block_on, departed_on_disk, departure, elements_on_disk, expected_elements, name, record,
    removal,
};

const CAPACITY: usize = 4;
/// The cap on records: 9 keys are possible (3 names × 3 incarnations), so
/// generated adds reach it often.
const MAX_RECORDS: usize = 5;

/// Elements another tool may have written that this crate refuses: kept
/// verbatim, odd spacing and all.
const INVALID: &[&str] = &[
    r#"{"pod_name":"worker 1","socket_path":"/run/pods/w1.sock","scope_delegated":[],"callback_address":""}"#,
    "{\n    \"pod_name\": \"a\",\n    \"socket_path\": \"relative\",\n    \"scope_delegated\": [],\n    \"callback_address\": \"\"\n  }",
    "7",
    r#"{ "pod_name" : "b" , "n": 1.50e0 }"#,
    r#"["c", null]"#,
];

/// The records file another tool left: `invalid`, one per line.
fn write_initial(dir: &Path, invalid: &[&str]) {
    if !invalid.is_empty() {
        let text = format!("[\n{}\n]\n", invalid.join(",\n"));
        std::fs::write(dir.join(pod_registry::RECORDS_FILE), text).unwrap();
    }
}

type Key = (String, Option<String>);

#[derive(Debug, Clone)]
enum Op {
    Add {
        pod: &'static str,
        inc: Option<&'static str>,
        other_socket: bool,
    },
    Remove {
        pod: &'static str,
        inc: Option<&'static str>,
    },
    Depart {
        pod: &'static str,
        inc: Option<&'static str>,
    },
    Reopen,
    /// Plan injected failures: let `pass` file writes through, fail `fail`.
    Faults {
        pass: usize,
        fail: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let pod = || prop::sample::select(vec!["a", "b", "c"]);
    let inc = || prop::sample::select(vec![None, Some("1"), Some("2")]);
    prop_oneof![
        4 => (pod(), inc(), any::<bool>()).prop_map(|(pod, inc, other_socket)| Op::Add { pod, inc, other_socket }),
        2 => (pod(), inc()).prop_map(|(pod, inc)| Op::Remove { pod, inc }),
        3 => (pod(), inc()).prop_map(|(pod, inc)| Op::Depart { pod, inc }),
        1 => Just(Op::Reopen),
        1 => (0..2usize, 1..3usize).prop_map(|(pass, fail)| Op::Faults { pass, fail }),
    ]
}

fn op_record(pod: &str, inc: Option<&str>, other_socket: bool) -> Record {
    let mut record = record(pod, inc);
    if other_socket {
        record.socket_path = format!("/run/other/{pod}.sock");
    }
    record
}

fn matches(a: &Option<String>, b: &Option<String>) -> bool {
    a.is_none() || b.is_none() || a == b
}

/// The model: memory, each file on disk, the dirty flags and the fault
/// plan, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    records: BTreeMap<Key, Record>,
    departed: VecDeque<Key>,
    disk_records: BTreeMap<Key, Record>,
    disk_departed: VecDeque<Key>,
    dirty_records: bool,
    dirty_departed: bool,
    pass: usize,
    fail: usize,
}

impl Model {
    fn is_departed(&self, key: &Key) -> bool {
        self.departed
            .iter()
            .any(|(n, i)| n == &key.0 && matches(i, &key.1))
    }

    fn remove_matching(&mut self, pod: &str, inc: &Option<String>) -> Vec<Record> {
        let keys: Vec<Key> = self
            .records
            .keys()
            .filter(|(n, i)| n == pod && matches(i, inc))
            .cloned()
            .collect();
        keys.iter().filter_map(|k| self.records.remove(k)).collect()
    }

    /// Applies `op`; the outcome and which parts changed, or `None` when
    /// the add is refused by the cap on records (nothing changes, nothing
    /// is written).
    fn apply(&mut self, op: &Op) -> Option<(Outcome, bool, bool)> {
        if let Op::Add { pod, inc, .. } = *op {
            let key = (pod.to_owned(), inc.map(str::to_owned));
            let inserts = !self.is_departed(&key) && !self.records.contains_key(&key);
            if inserts && self.records.len() >= MAX_RECORDS {
                return None;
            }
        }
        Some(self.apply_admitted(op))
    }

    fn apply_admitted(&mut self, op: &Op) -> (Outcome, bool, bool) {
        match *op {
            Op::Add {
                pod,
                inc,
                other_socket,
            } => {
                let key = (pod.to_owned(), inc.map(str::to_owned));
                if self.is_departed(&key) {
                    (Outcome::Departed, false, false)
                } else if let Entry::Vacant(slot) = self.records.entry(key) {
                    slot.insert(op_record(pod, inc, other_socket));
                    (Outcome::Added, true, false)
                } else {
                    (Outcome::AlreadyPresent, false, false)
                }
            }
            Op::Remove { pod, inc } => {
                let records = self.remove_matching(pod, &inc.map(str::to_owned));
                let changed = !records.is_empty();
                let outcome = Outcome::Removed {
                    records,
                    first_departure: false,
                };
                (outcome, changed, false)
            }
            Op::Depart { pod, inc } => {
                let key = (pod.to_owned(), inc.map(str::to_owned));
                let records = self.remove_matching(pod, &key.1);
                let changed = !records.is_empty();
                let first_departure = !self.departed.contains(&key);
                if first_departure {
                    self.departed.push_back(key);
                    if self.departed.len() > CAPACITY {
                        self.departed.pop_front();
                    }
                }
                let outcome = Outcome::Removed {
                    records,
                    first_departure,
                };
                (outcome, changed, first_departure)
            }
            Op::Reopen | Op::Faults { .. } => unreachable!("not a mutation"),
        }
    }

    /// One step of the fault plan: whether this file write fails.
    fn write_fails(&mut self) -> bool {
        if self.pass > 0 {
            self.pass -= 1;
            false
        } else if self.fail > 0 {
            self.fail -= 1;
            true
        } else {
            false
        }
    }

    /// The commit a mutation causes when anything is dirty: departed file
    /// first, records file only if that succeeded. Whether it succeeded.
    fn commit(&mut self) -> bool {
        let (records, departed) = (
            std::mem::take(&mut self.dirty_records),
            std::mem::take(&mut self.dirty_departed),
        );
        if departed {
            if self.write_fails() {
                self.dirty_departed = true;
                self.dirty_records = records;
                return false;
            }
            self.disk_departed = self.departed.clone();
        }
        if records {
            if self.write_fails() {
                self.dirty_records = true;
                return false;
            }
            self.disk_records = self.records.clone();
        }
        true
    }

    /// Memory after a reopen: the files, minus the records a tombstone
    /// matches (which then leave the records file dirty).
    fn reopen(&mut self) {
        self.departed = self.disk_departed.clone();
        self.records = self.disk_records.clone();
        let before = self.records.len();
        let departed = self.departed.clone();
        self.records
            .retain(|(n, i), _| !departed.iter().any(|(dn, di)| dn == n && matches(di, i)));
        self.dirty_records = self.records.len() != before;
        self.dirty_departed = false;
    }
}

fn tombstones(keys: &VecDeque<Key>) -> Vec<Tombstone> {
    keys.iter()
        .map(|(n, i)| Tombstone {
            pod_name: name(n),
            incarnation: i.clone(),
        })
        .collect()
}

fn mutation(op: &Op) -> Mutation {
    match *op {
        Op::Add {
            pod,
            inc,
            other_socket,
        } => Mutation::Add(op_record(pod, inc, other_socket)),
        Op::Remove { pod, inc } => removal(pod, inc),
        Op::Depart { pod, inc } => departure(pod, inc),
        Op::Reopen | Op::Faults { .. } => unreachable!("not a mutation"),
    }
}

fn options() -> RegistryOptions {
    RegistryOptions::new()
        .departed_capacity(CAPACITY)
        .limits(RegistryLimits::new().max_records(MAX_RECORDS))
}

fn open(dir: &Path, faults: &FaultInjector) -> FileRegistry {
    let options = options().fault_injector(faults.clone());
    FileRegistry::open_with(dir, options).unwrap()
}

fn check_memory(
    registry: &FileRegistry,
    model: &Model,
    invalid: &[&str],
) -> Result<(), TestCaseError> {
    let expected: Vec<Record> = model.records.values().cloned().collect();
    prop_assert_eq!(registry.list(), expected);
    let kept: Vec<&str> = registry.invalid_records().iter().map(|r| r.raw()).collect();
    prop_assert_eq!(kept, invalid);
    let departed: Vec<Tombstone> = registry.read(|s| s.departed().cloned().collect());
    prop_assert_eq!(departed, tombstones(&model.departed));
    Ok(())
}

fn check_disk(dir: &Path, model: &Model, invalid: &[&str]) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        elements_on_disk(dir),
        expected_elements(model.disk_records.values(), invalid)
    );
    prop_assert_eq!(departed_on_disk(dir), tombstones(&model.disk_departed));
    Ok(())
}

fn run(invalid: &[&str], ops: &[Op]) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    write_initial(dir.path(), invalid);
    let faults = FaultInjector::new();
    let mut registry = open(dir.path(), &faults);
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::Reopen => {
                drop(registry);
                check_disk(dir.path(), &model, invalid)?;
                registry = open(dir.path(), &faults);
                model.reopen();
            }
            Op::Faults { pass, fail } => {
                faults.fail_file_writes(*pass, *fail);
                (model.pass, model.fail) = (*pass, *fail);
            }
            _ => {
                let Some((expected, records, departed)) = model.apply(op) else {
                    let refused = block_on(registry.apply(mutation(op)));
                    prop_assert!(
                        matches!(
                            refused,
                            Err(RegistryError::Full {
                                limit: MAX_RECORDS,
                                ..
                            })
                        ),
                        "{op:?}: expected Full, got {refused:?}"
                    );
                    check_disk(dir.path(), &model, invalid)?;
                    check_memory(&registry, &model, invalid)?;
                    continue;
                };
                model.dirty_records |= records;
                model.dirty_departed |= departed;
                let writes = model.dirty_records || model.dirty_departed;
                let committed = !writes || model.commit();
                let result = block_on(registry.apply(mutation(op)));
                match result {
                    Ok(outcome) => {
                        prop_assert!(
                            committed,
                            "{op:?}: expected a failed write, got {outcome:?}"
                        );
                        prop_assert_eq!(outcome, expected);
                    }
                    Err(RegistryError::Io { .. }) => {
                        prop_assert!(!committed, "{op:?}: unexpected write failure");
                    }
                    Err(other) => prop_assert!(false, "{op:?}: {other:?}"),
                }
                check_disk(dir.path(), &model, invalid)?;
            }
        }
        check_memory(&registry, &model, invalid)?;
    }
    drop(registry);
    check_disk(dir.path(), &model, invalid)?;
    // A final clean reopen sees the model's files.
    let registry = FileRegistry::open_with(dir.path(), options()).unwrap();
    model.reopen();
    check_memory(&registry, &model, invalid)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every outcome equals the model's, memory equals the model after
    /// every step, and each file on disk equals the model's file after
    /// every write, failed or not, and after every reopen; the invalid
    /// elements the records file started with are in it, byte for byte
    /// and in order, after the valid records, at every step.
    #[test]
    fn file_registry_matches_the_model(
        invalid in prop::collection::vec(prop::sample::select(INVALID.to_vec()), 0..4),
        ops in prop::collection::vec(op(), 1..40),
    ) {
        run(&invalid, &ops)?;
    }
}
