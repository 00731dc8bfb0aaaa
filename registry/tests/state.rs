//! `RegistryState`: the semantics of each mutation, the bounded departed
//! set, and convergence under permuted and duplicated delivery.

use pod_registry::{Mutation, Outcome, RegistryState};
use proptest::prelude::*;

use crate::common::{departure, record, removal, tombstone};

fn add(state: &mut RegistryState, pod: &str, inc: Option<&str>) -> Outcome {
    state.apply(&Mutation::Add(record(pod, inc)))
}

fn remove(state: &mut RegistryState, pod: &str, inc: Option<&str>) -> Outcome {
    state.apply(&removal(pod, inc))
}

fn depart(state: &mut RegistryState, pod: &str, inc: Option<&str>) -> Outcome {
    state.apply(&departure(pod, inc))
}

fn removed(records: &[(&str, Option<&str>)], first_departure: bool) -> Outcome {
    Outcome::Removed {
        records: records.iter().map(|(pod, inc)| record(pod, *inc)).collect(),
        first_departure,
    }
}

fn keys(state: &RegistryState) -> Vec<(String, Option<String>)> {
    state
        .records()
        .map(|r| (r.pod_name.to_string(), r.incarnation.clone()))
        .collect()
}

fn key(pod: &str, inc: Option<&str>) -> (String, Option<String>) {
    (pod.to_owned(), inc.map(str::to_owned))
}

#[test]
fn add_is_idempotent_and_never_overwrites() {
    let mut state = RegistryState::default();
    assert_eq!(add(&mut state, "w1", Some("a")), Outcome::Added);
    let mut other = record("w1", Some("a"));
    other.socket_path = "/elsewhere.sock".into();
    assert_eq!(state.apply(&Mutation::Add(other)), Outcome::AlreadyPresent);
    assert_eq!(state.get("w1", Some("a")), Some(&record("w1", Some("a"))));
    assert_eq!(state.len(), 1);
}

#[test]
fn a_name_may_hold_several_incarnations_sorted() {
    let mut state = RegistryState::default();
    assert_eq!(add(&mut state, "w1", Some("b")), Outcome::Added);
    assert_eq!(add(&mut state, "w1", None), Outcome::Added);
    assert_eq!(add(&mut state, "w0", Some("z")), Outcome::Added);
    assert_eq!(add(&mut state, "w1", Some("a")), Outcome::Added);
    assert_eq!(
        keys(&state),
        [
            key("w0", Some("z")),
            key("w1", None),
            key("w1", Some("a")),
            key("w1", Some("b"))
        ]
    );
    assert_eq!(state.records_named("w1").count(), 3);
    assert_eq!(state.records_named("nope").count(), 0);
    // `get` returns the first matching record; `None` matches any.
    assert_eq!(state.get("w1", None), Some(&record("w1", None)));
    assert_eq!(state.get("w1", Some("b")), Some(&record("w1", None)));
    assert_eq!(state.get("w0", Some("y")), None);
    assert_eq!(state.get("w0", None), Some(&record("w0", Some("z"))));
    assert_eq!(state.len(), 4);
}

#[test]
fn remove_matches_incarnations_and_leaves_no_tombstone() {
    let mut state = RegistryState::default();
    add(&mut state, "w1", Some("a"));
    add(&mut state, "w1", Some("b"));
    assert_eq!(remove(&mut state, "w1", Some("c")), removed(&[], false));
    assert_eq!(remove(&mut state, "missing", None), removed(&[], false));
    assert_eq!(
        remove(&mut state, "w1", Some("a")),
        removed(&[("w1", Some("a"))], false)
    );
    assert_eq!(
        remove(&mut state, "w1", None),
        removed(&[("w1", Some("b"))], false)
    );
    assert!(state.is_empty());
    assert_eq!(state.departed().count(), 0);
    assert_eq!(add(&mut state, "w1", Some("a")), Outcome::Added);
}

#[test]
fn remove_with_an_incarnation_removes_a_legacy_record() {
    let mut state = RegistryState::default();
    add(&mut state, "w1", None);
    add(&mut state, "w1", Some("b"));
    assert_eq!(
        remove(&mut state, "w1", Some("a")),
        removed(&[("w1", None)], false)
    );
    assert_eq!(keys(&state), [key("w1", Some("b"))]);
}

#[test]
fn depart_removes_records_and_refuses_later_adds() {
    let mut state = RegistryState::default();
    add(&mut state, "w1", Some("a"));
    add(&mut state, "w1", Some("b"));
    assert_eq!(
        depart(&mut state, "w1", Some("a")),
        removed(&[("w1", Some("a"))], true)
    );
    assert_eq!(depart(&mut state, "w1", Some("a")), removed(&[], false));
    assert_eq!(add(&mut state, "w1", Some("a")), Outcome::Departed);
    // A legacy add matches the departed incarnation: refused too.
    assert_eq!(add(&mut state, "w1", None), Outcome::Departed);
    // Another incarnation is untouched and may still be added.
    assert_eq!(keys(&state), [key("w1", Some("b"))]);
    assert_eq!(add(&mut state, "w1", Some("c")), Outcome::Added);
    assert!(state.is_departed("w1", Some("a")));
    assert!(state.is_departed("w1", None));
    assert!(!state.is_departed("w1", Some("b")));
    assert!(!state.is_departed("w2", None));
}

#[test]
fn a_legacy_departure_matches_every_incarnation() {
    let mut state = RegistryState::default();
    add(&mut state, "w1", Some("a"));
    add(&mut state, "w1", Some("b"));
    add(&mut state, "w2", Some("a"));
    assert_eq!(
        depart(&mut state, "w1", None),
        removed(&[("w1", Some("a")), ("w1", Some("b"))], true)
    );
    assert_eq!(add(&mut state, "w1", Some("z")), Outcome::Departed);
    assert_eq!(keys(&state), [key("w2", Some("a"))]);
    // Distinct tombstones, each first once.
    assert_eq!(depart(&mut state, "w1", Some("a")), removed(&[], true));
    assert_eq!(depart(&mut state, "w1", None), removed(&[], false));
}

#[test]
fn departed_set_is_bounded_fifo() {
    let mut state = RegistryState::new(3);
    for pod in ["d1", "d2", "d3", "d4", "d5"] {
        assert_eq!(depart(&mut state, pod, Some("i")), removed(&[], true));
    }
    let departed: Vec<_> = state.departed().cloned().collect();
    assert_eq!(
        departed,
        [
            tombstone("d3", Some("i")),
            tombstone("d4", Some("i")),
            tombstone("d5", Some("i"))
        ]
    );
    assert_eq!(state.departed_len(), 3);
    assert_eq!(state.departed_capacity(), 3);
    // The evicted departures are forgotten: an add is accepted again.
    assert!(!state.is_departed("d1", Some("i")));
    assert_eq!(add(&mut state, "d1", Some("i")), Outcome::Added);
    assert_eq!(add(&mut state, "d3", Some("i")), Outcome::Departed);
}

#[test]
fn reinserting_a_tombstone_does_not_refresh_it() {
    let mut state = RegistryState::new(2);
    depart(&mut state, "a", None);
    depart(&mut state, "b", None);
    assert_eq!(depart(&mut state, "a", None), removed(&[], false));
    depart(&mut state, "c", None);
    // `a` was the oldest despite the repeat, so it went first.
    let departed: Vec<_> = state.departed().cloned().collect();
    assert_eq!(departed, [tombstone("b", None), tombstone("c", None)]);
}

#[test]
fn capacity_zero_remembers_no_departure() {
    let mut state = RegistryState::new(0);
    add(&mut state, "w1", None);
    assert_eq!(
        depart(&mut state, "w1", None),
        removed(&[("w1", None)], true)
    );
    assert_eq!(state.departed_len(), 0);
    assert_eq!(add(&mut state, "w1", None), Outcome::Added);
}

/// Adds and departures over a few names and incarnations; a record's
/// content is determined by its key, as an incarnation's is in practice.
fn event() -> impl Strategy<Value = Mutation> {
    let pod = prop::sample::select(vec!["g", "h", "k"]);
    let inc = prop::sample::select(vec![None, Some("i1"), Some("i2")]);
    (any::<bool>(), pod, inc).prop_map(|(is_add, pod, inc)| {
        if is_add {
            Mutation::Add(record(pod, inc))
        } else {
            departure(pod, inc)
        }
    })
}

/// The order-independent part of a state: records, and the departed set
/// as a set.
fn summary(state: &RegistryState) -> (Vec<pod_registry::Record>, Vec<String>) {
    let mut departed: Vec<String> = state
        .departed()
        .map(|t| format!("{}:{:?}", t.pod_name, t.incarnation))
        .collect();
    departed.sort();
    (state.records().cloned().collect(), departed)
}

fn run(events: &[Mutation]) -> RegistryState {
    let mut state = RegistryState::new(1024);
    for event in events {
        state.apply(event);
    }
    state
}

proptest! {
    /// The two-phase set: any permutation of the same multiset of adds and
    /// departures (duplicates included) ends in the same state, and no
    /// departed Pod is left.
    #[test]
    fn adds_and_departures_converge_under_any_order(
        (events, shuffled) in prop::collection::vec(event(), 0..24)
            .prop_flat_map(|events| (Just(events.clone()), Just(events).prop_shuffle()))
    ) {
        let a = run(&events);
        let b = run(&shuffled);
        prop_assert_eq!(summary(&a), summary(&b));
        for record in a.records() {
            prop_assert!(!a.is_departed(record.pod_name.as_str(), record.incarnation.as_deref()));
        }
    }

    /// Applying every event twice in a row equals applying it once.
    #[test]
    fn every_event_is_idempotent(events in prop::collection::vec(event(), 0..24)) {
        let doubled: Vec<Mutation> = events.iter().flat_map(|e| [e.clone(), e.clone()]).collect();
        prop_assert_eq!(run(&events), run(&doubled));
    }
}
