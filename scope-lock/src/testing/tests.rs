//! The journaled [`MemoryStore`] against the store it replaced, which ran
//! every transaction on a clone of the table: random transactions (register,
//! delegate, release and reclaim, with dead pods, refused requests,
//! closures that replace the whole table, closures that change the table
//! and then fail, injected write failures) must give the same answers, the
//! same tables, the same write counts and the same change detection.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Mutex;

use pod_protocol::{Permission, PodName, ScopeRule};
use proptest::prelude::*;

use super::{lock, MemoryStore};
use crate::error::ScopeError;
use crate::store::TableStore;
use crate::table::{PodSpec, Table};

/// The clone-based store, as `MemoryStore` was: the reference.
#[derive(Default)]
struct CloneStore {
    state: Mutex<(Table, usize, u64)>,
}

impl CloneStore {
    fn fail_next_writes(&self, n: usize) {
        lock(&self.state).1 = n;
    }

    fn writes(&self) -> u64 {
        lock(&self.state).2
    }
}

impl TableStore for CloneStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        let mut state = lock(&self.state);
        let mut table = state.0.clone();
        let result = f(&mut table)?;
        if table.stamp() != state.0.stamp() {
            if state.1 > 0 {
                state.1 -= 1;
                return Err(ScopeError::io(
                    PathBuf::from("<memory>"),
                    std::io::Error::other("injected write failure"),
                ));
            }
            state.0 = table;
            state.2 += 1;
        }
        Ok(result)
    }
}

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const TARGETS: [&str; 5] = ["/x", "/x/y", "/x/y/z", "/x/q", "/w"];

/// Which incarnation a release names.
#[derive(Debug, Clone)]
enum Incarnation {
    None,
    Held,
    Wrong,
}

/// How a closure replaces the whole table.
#[derive(Debug, Clone)]
enum Replacement {
    /// `*table = table.clone()`: same content, same stamp.
    Clone,
    /// `*table = Table::new()`.
    Empty,
    /// `std::mem::take(table)`, dropped: the original leaves through
    /// `mem::take` rather than assignment.
    Take,
    /// `*table` = a table of one pod, built from scratch.
    Fresh,
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        name: usize,
        pid: u32,
        rules: Vec<ScopeRule>,
        dead: u8,
    },
    Delegate {
        from: usize,
        name: usize,
        pid: u32,
        rules: Vec<ScopeRule>,
        dead: u8,
    },
    Release {
        name: usize,
        incarnation: Incarnation,
    },
    Reclaim {
        dead: u8,
    },
    Replace(Replacement),
}

/// How the closure ends.
#[derive(Debug, Clone)]
enum End {
    /// Runs every op, ignoring their errors, and returns `Ok`.
    Ok,
    /// Runs every op, then returns `Err` (after changing the table).
    Fail,
    /// Stops at the first op that fails and returns its error.
    Propagate,
}

#[derive(Debug, Clone)]
enum Step {
    Transact(Vec<Op>, End),
    FailNextWrites(usize),
}

fn rule() -> impl Strategy<Value = ScopeRule> + Clone {
    (0..TARGETS.len(), any::<bool>(), any::<bool>()).prop_map(|(t, write, recursive)| ScopeRule {
        target: TARGETS[t].into(),
        permission: if write {
            Permission::Write
        } else {
            Permission::Read
        },
        recursive,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let rules = prop::collection::vec(rule(), 1..3);
    prop_oneof![
        3 => (name.clone(), 1..4u32, rules.clone(), any::<u8>())
            .prop_map(|(name, pid, rules, dead)| Op::Register { name, pid, rules, dead }),
        4 => (name.clone(), name.clone(), 1..4u32, rules, any::<u8>()).prop_map(
            |(from, name, pid, rules, dead)| Op::Delegate { from, name, pid, rules, dead }
        ),
        3 => (name, prop_oneof![Just(Incarnation::None), Just(Incarnation::Held), Just(Incarnation::Wrong)])
            .prop_map(|(name, incarnation)| Op::Release { name, incarnation }),
        1 => any::<u8>().prop_map(|dead| Op::Reclaim { dead }),
        1 => prop_oneof![
            Just(Replacement::Clone),
            Just(Replacement::Empty),
            Just(Replacement::Take),
            Just(Replacement::Fresh),
        ]
        .prop_map(Op::Replace),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    let end = prop_oneof![Just(End::Ok), Just(End::Fail), Just(End::Propagate)];
    prop_oneof![
        6 => (prop::collection::vec(op(), 0..6), end).prop_map(|(ops, end)| Step::Transact(ops, end)),
        1 => (0..3usize).prop_map(Step::FailNextWrites),
    ]
}

fn name(i: usize) -> PodName {
    PodName::new(NAMES[i]).unwrap()
}

fn spec(i: usize, pid: u32, rules: &[ScopeRule]) -> PodSpec {
    PodSpec {
        pod_name: name(i),
        pid,
        socket: format!("/run/{}.sock", NAMES[i]),
        scope: rules.to_vec(),
    }
}

/// `dead` is a bit mask of pids (bit `pid`).
fn live(dead: u8) -> impl Fn(&crate::Allocation) -> bool {
    move |a| dead & (1 << (a.pid % 8)) == 0
}

/// Runs one op on `table`; `incarnation` names what it creates.
fn apply(table: &mut Table, op: &Op, incarnation: String) -> Result<String, ScopeError> {
    Ok(match op {
        Op::Register {
            name,
            pid,
            rules,
            dead,
        } => format!(
            "{:?}",
            table.register_reclaiming(spec(*name, *pid, rules), 1, incarnation, live(*dead))?
        ),
        Op::Delegate {
            from,
            name,
            pid,
            rules,
            dead,
        } => format!(
            "{:?}",
            table.delegate_reclaiming(
                &self::name(*from),
                spec(*name, *pid, rules),
                1,
                incarnation,
                live(*dead)
            )?
        ),
        Op::Release { name, incarnation } => {
            let held = table.get(NAMES[*name]).and_then(|a| a.incarnation.clone());
            let requested = match incarnation {
                Incarnation::None => None,
                Incarnation::Held => held,
                Incarnation::Wrong => Some("wrong".to_owned()),
            };
            format!(
                "{:?}",
                table.release(&self::name(*name), requested.as_deref())?
            )
        }
        Op::Reclaim { dead } => format!("{:?}", table.reclaim(live(*dead))),
        Op::Replace(replacement) => {
            match replacement {
                Replacement::Clone => *table = table.clone(),
                Replacement::Empty => *table = Table::new(),
                Replacement::Take => drop(std::mem::take(table)),
                Replacement::Fresh => {
                    let mut fresh = Table::new();
                    fresh.register(spec(0, 1, &[ScopeRule::write("/x")]), 1, incarnation)?;
                    *table = fresh;
                }
            }
            "replaced".to_owned()
        }
    })
}

fn run(table: &mut Table, ops: &[Op], end: &End, step: usize) -> Result<Vec<String>, ScopeError> {
    let mut answers = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let answer = apply(table, op, format!("{step}.{i}"));
        match end {
            End::Propagate => answers.push(answer?),
            End::Ok | End::Fail => answers.push(format!("{answer:?}")),
        }
    }
    match end {
        End::Fail => Err(ScopeError::UnknownPod { name: name(3) }),
        End::Ok | End::Propagate => Ok(answers),
    }
}

fn stamp_of(store: &impl TableStore) -> u64 {
    store.read(Table::stamp).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_journaled_store_behaves_as_the_clone_based_one(
        steps in prop::collection::vec(step(), 1..40)
    ) {
        // A chain to release, reparent and reclaim from the start:
        // a (/x) -> b (/x/y) -> c (/x/y/z), and d (/w) beside it.
        let seed = seed_table();
        let memory = MemoryStore::with_table(seed.clone());
        let reference = CloneStore::default();
        lock(&reference.state).0 = seed;
        for (index, step) in steps.iter().enumerate() {
            match step {
                Step::FailNextWrites(n) => {
                    memory.fail_next_writes(*n);
                    reference.fail_next_writes(*n);
                }
                Step::Transact(ops, end) => {
                    let (memory_before, reference_before) = (stamp_of(&memory), stamp_of(&reference));
                    let ours = memory.transact(|t| run(t, ops, end, index));
                    let theirs = reference.transact(|t| run(t, ops, end, index));
                    prop_assert_eq!(format!("{ours:?}"), format!("{theirs:?}"), "answer of step {}", index);
                    prop_assert_eq!(
                        stamp_of(&memory) != memory_before,
                        stamp_of(&reference) != reference_before,
                        "change detection at step {}", index
                    );
                }
            }
            let (ours, theirs) = (memory.load().unwrap(), reference.load().unwrap());
            prop_assert_eq!(&ours, &theirs, "table after step {}", index);
            prop_assert!(memory.read(|t| !t.is_journaling()).unwrap(), "journal left on");
            prop_assert_eq!(ours.check_invariant(), Ok(()));
            prop_assert_eq!(memory.writes(), reference.writes());
        }
    }
}

fn seed_table() -> Table {
    let mut table = Table::new();
    let write = |t: &str| vec![ScopeRule::write(t)];
    table
        .register(spec(0, 1, &write("/x")), 1, "s0".into())
        .unwrap();
    table
        .delegate(&name(0), spec(1, 2, &write("/x/y")), 1, "s1".into())
        .unwrap();
    table
        .delegate(&name(1), spec(2, 3, &write("/x/y/z")), 1, "s2".into())
        .unwrap();
    table
        .register(spec(3, 1, &write("/w")), 1, "s3".into())
        .unwrap();
    table
}

/// A store with pods `a` (over `/x`) and `b` (delegated `/x/y`).
fn two_pods() -> MemoryStore {
    let store = MemoryStore::new();
    store
        .transact(|t| {
            t.register(spec(0, 1, &[ScopeRule::write("/x")]), 1, "1".into())?;
            t.delegate(
                &name(0),
                spec(1, 2, &[ScopeRule::write("/x/y")]),
                1,
                "2".into(),
            )
        })
        .unwrap();
    store
}

#[test]
fn a_closure_that_panics_leaves_the_table_as_it_was() {
    let store = two_pods();
    let before = store.load().unwrap();
    let stamp = stamp_of(&store);
    for replace in [false, true] {
        let writes = store.writes();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let _: Result<(), ScopeError> = store.transact(|t| {
                t.release(&name(0), None)?;
                if replace {
                    *t = Table::new();
                }
                panic!("closure panics");
            });
        }));
        assert!(outcome.is_err());
        assert_eq!(store.load().unwrap(), before);
        assert_eq!(stamp_of(&store), stamp);
        assert!(store.read(|t| !t.is_journaling()).unwrap());
        assert_eq!(store.writes(), writes);
        // The store still works.
        store.transact(|t| t.release(&name(1), None)).unwrap();
        store
            .transact(|t| {
                t.delegate(
                    &name(0),
                    spec(1, 2, &[ScopeRule::write("/x/y")]),
                    1,
                    "2".into(),
                )
            })
            .unwrap();
        assert_eq!(store.load().unwrap(), before);
        store
            .transact(|t| {
                *t = before.clone();
                Ok(())
            })
            .unwrap();
    }
}

#[test]
#[should_panic(expected = "cannot roll back")]
fn a_closure_that_keeps_the_table_and_fails_is_refused_loudly() {
    let store = two_pods();
    let mut kept = None;
    let _ = store.transact(|t| {
        kept = Some(std::mem::take(t));
        Err::<(), _>(ScopeError::UnknownPod { name: name(0) })
    });
}

#[test]
fn lookups_lend_the_table() {
    let store = two_pods();
    let count = store.read(|t| t.len()).unwrap();
    assert_eq!(count, 2);
    assert_eq!(store.load().unwrap().len(), 2);
}
