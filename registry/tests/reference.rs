//! `RegistryState` against a direct, scan-everything reference
//! implementation of its semantics, over random mutation sequences.

use std::collections::VecDeque;

use pod_registry::{
    incarnations_match, Mutation, Outcome, PodName, Record, RegistryState, Tombstone,
};
use proptest::prelude::*;

use crate::common::{departure, record, removal};

/// The semantics, stated as plainly as possible: a sorted vector of
/// records and a FIFO vector of tombstones, both scanned.
struct Reference {
    records: Vec<Record>,
    departed: VecDeque<Tombstone>,
    capacity: usize,
}

impl Reference {
    fn new(capacity: usize) -> Self {
        Reference {
            records: Vec::new(),
            departed: VecDeque::new(),
            capacity,
        }
    }

    fn is_departed(&self, pod: &str, inc: Option<&str>) -> bool {
        self.departed.iter().any(|t| {
            t.pod_name.as_str() == pod && incarnations_match(t.incarnation.as_deref(), inc)
        })
    }

    fn get(&self, pod: &str, inc: Option<&str>) -> Option<&Record> {
        self.records.iter().find(|r| {
            r.pod_name.as_str() == pod && incarnations_match(r.incarnation.as_deref(), inc)
        })
    }

    fn remove(&mut self, pod: &str, inc: Option<&str>) -> Vec<Record> {
        let (removed, kept) = std::mem::take(&mut self.records)
            .into_iter()
            .partition(|r| {
                r.pod_name.as_str() == pod && incarnations_match(r.incarnation.as_deref(), inc)
            });
        self.records = kept;
        removed
    }

    fn apply(&mut self, mutation: &Mutation) -> Outcome {
        match mutation {
            Mutation::Add(r) => {
                if self.is_departed(r.pod_name.as_str(), r.incarnation.as_deref()) {
                    Outcome::Departed
                } else if self
                    .records
                    .iter()
                    .any(|x| x.pod_name == r.pod_name && x.incarnation == r.incarnation)
                {
                    Outcome::AlreadyPresent
                } else {
                    self.records.push(r.clone());
                    self.records.sort_by(|a, b| {
                        (&a.pod_name, &a.incarnation).cmp(&(&b.pod_name, &b.incarnation))
                    });
                    Outcome::Added
                }
            }
            Mutation::Remove {
                pod_name,
                incarnation,
            } => Outcome::Removed {
                records: self.remove(pod_name.as_str(), incarnation.as_deref()),
                first_departure: false,
            },
            Mutation::Depart {
                pod_name,
                incarnation,
            } => {
                let records = self.remove(pod_name.as_str(), incarnation.as_deref());
                let t = Tombstone {
                    pod_name: pod_name.clone(),
                    incarnation: incarnation.clone(),
                };
                let first_departure = !self.departed.contains(&t);
                if first_departure && self.capacity > 0 {
                    self.departed.push_back(t);
                    if self.departed.len() > self.capacity {
                        self.departed.pop_front();
                    }
                }
                Outcome::Removed {
                    records,
                    first_departure,
                }
            }
            Mutation::Redirect {
                pod_name,
                incarnation,
                callback_address,
            } => {
                let exact = self
                    .records
                    .iter_mut()
                    .find(|r| &r.pod_name == pod_name && &r.incarnation == incarnation);
                let changed = exact.is_some_and(|r| {
                    let changed = &r.callback_address != callback_address;
                    r.callback_address.clone_from(callback_address);
                    changed
                });
                Outcome::Redirected { changed }
            }
            other => unimplemented!("{other:?}"),
        }
    }
}

const PODS: [&str; 4] = ["a", "ab", "b", "c"];
const INCS: [Option<&str>; 4] = [None, Some("i1"), Some("i2"), Some("i10")];

fn mutation() -> impl Strategy<Value = Mutation> {
    let pod = prop::sample::select(PODS.to_vec());
    let inc = prop::sample::select(INCS.to_vec());
    // A record's content varies independently of its key, so that
    // "never overwritten" is observable.
    (0..4u8, pod, inc, any::<bool>()).prop_map(|(kind, pod, inc, variant)| match kind {
        0 => {
            let mut r = record(pod, inc);
            if variant {
                r.socket_path = "/elsewhere.sock".into();
            }
            Mutation::Add(r)
        }
        1 => removal(pod, inc),
        2 => Mutation::Redirect {
            pod_name: PodName::new(pod).unwrap(),
            incarnation: inc.map(str::to_owned),
            callback_address: if variant { "/new.sock" } else { "" }.into(),
        },
        _ => departure(pod, inc),
    })
}

proptest! {
    /// Every outcome and every query agrees with the reference after
    /// every mutation, for small capacities (eviction) and 0.
    #[test]
    fn state_agrees_with_the_reference(
        capacity in 0usize..5,
        mutations in prop::collection::vec(mutation(), 0..60),
    ) {
        let mut state = RegistryState::new(capacity);
        let mut reference = Reference::new(capacity);
        for mutation in &mutations {
            prop_assert_eq!(state.apply(mutation), reference.apply(mutation));
            prop_assert_eq!(state.records().cloned().collect::<Vec<_>>(), reference.records.clone());
            prop_assert_eq!(state.len(), reference.records.len());
            prop_assert_eq!(state.is_empty(), reference.records.is_empty());
            let departed: Vec<Tombstone> = state.departed().cloned().collect();
            prop_assert_eq!(departed, Vec::from(reference.departed.clone()));
            prop_assert_eq!(state.departed_len(), reference.departed.len());
            for pod in PODS.iter().copied().chain(["", "aa", "d"]) {
                let named: Vec<&Record> = state.records_named(pod).collect();
                let expected: Vec<&Record> =
                    reference.records.iter().filter(|r| r.pod_name.as_str() == pod).collect();
                prop_assert_eq!(named, expected);
                for inc in INCS.iter().copied().chain([Some("i3")]) {
                    prop_assert_eq!(state.get(pod, inc), reference.get(pod, inc));
                    prop_assert_eq!(state.is_departed(pod, inc), reference.is_departed(pod, inc));
                }
            }
            // Equality and clones see the whole state.
            prop_assert_eq!(&state.clone(), &state);
        }
    }

    /// Two states are equal exactly when their records (field by field)
    /// and departed sets are.
    #[test]
    fn equality_is_by_content(
        capacity in 1usize..4,
        a in prop::collection::vec(mutation(), 0..20),
        b in prop::collection::vec(mutation(), 0..20),
    ) {
        let mut x = RegistryState::new(capacity);
        let mut y = RegistryState::new(capacity);
        for m in &a { x.apply(m); }
        for m in &b { y.apply(m); }
        let same = x.records().eq(y.records()) && x.departed().eq(y.departed());
        prop_assert_eq!(x == y, same);
    }
}

#[test]
fn a_record_differing_only_in_content_makes_states_unequal() {
    let mut x = RegistryState::default();
    let mut y = RegistryState::default();
    x.apply(&Mutation::Add(record("w1", Some("a"))));
    let mut other = record("w1", Some("a"));
    other.socket_path = "/elsewhere.sock".into();
    y.apply(&Mutation::Add(other));
    assert_ne!(x, y);
    assert_eq!(x.departed().count(), 0);
}
