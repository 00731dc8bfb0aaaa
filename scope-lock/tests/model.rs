//! Model-based proptest: random sequences of register, delegate, release and
//! reclaim, with injected deaths, pid reuse and write failures, run against
//! `ScopeTable` on the in-memory store and against a simple model whose
//! rule relations are brute-force set operations over a finite path tree.
//! After every step the two tables must be equal and the invariant must
//! hold: effective write scopes pairwise disjoint, every parent present.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{
    Allocation, Permission, PodSpec, ScopeError, ScopeRule, ScopeTable, Table, TableStore,
};
use proptest::prelude::*;

const NAMES: [&str; 5] = ["p0", "p1", "p2", "p3", "p4"];
const PIDS: u32 = 4;
const COMPONENTS: [&str; 3] = ["a", "b", "ab"];

/// Every path up to 4 components over `COMPONENTS`: 2 levels below the
/// deepest target, so every covered set is represented faithfully.
fn universe() -> Vec<Vec<&'static str>> {
    let mut all = vec![vec![]];
    let mut frontier: Vec<Vec<&str>> = vec![vec![]];
    for _ in 0..4 {
        frontier = frontier
            .iter()
            .flat_map(|p| {
                COMPONENTS.iter().map(move |c| {
                    let mut next = p.clone();
                    next.push(*c);
                    next
                })
            })
            .collect();
        all.extend(frontier.iter().cloned());
    }
    all
}

/// The model's own notion of rules: the set of universe indices covered.
struct Sets {
    universe: Vec<Vec<&'static str>>,
    cache: HashMap<(String, bool), BTreeSet<usize>>,
}

impl Sets {
    fn new() -> Self {
        Sets {
            universe: universe(),
            cache: HashMap::new(),
        }
    }

    fn of(&mut self, rule: &ScopeRule) -> BTreeSet<usize> {
        let key = (rule.target.clone(), rule.recursive);
        if let Some(set) = self.cache.get(&key) {
            return set.clone();
        }
        let target: Vec<&str> = rule.target.split('/').filter(|c| !c.is_empty()).collect();
        let set: BTreeSet<usize> = self
            .universe
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.len() >= target.len()
                    && p[..target.len()] == target[..]
                    && (rule.recursive || p.len() <= target.len() + 1)
            })
            .map(|(i, _)| i)
            .collect();
        self.cache.insert(key, set.clone());
        set
    }

    fn overlap(&mut self, a: &ScopeRule, b: &ScopeRule) -> bool {
        !self.of(a).is_disjoint(&self.of(b))
    }

    fn cover(&mut self, outer: &ScopeRule, inner: &ScopeRule) -> bool {
        self.of(inner).is_subset(&self.of(outer))
    }

    fn path(&self, index: usize) -> String {
        format!("/{}", self.universe[index].join("/"))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ModelPod {
    pid: u32,
    start: u64,
    rules: Vec<ScopeRule>,
    parent: Option<String>,
    incarnation: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    pods: BTreeMap<String, ModelPod>,
}

/// What an operation returned, reduced to what the model can predict.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Reclaimed(Vec<String>),
    Duplicate,
    Unknown,
    Mismatch,
    NotSubset(ScopeRule),
    Conflict(String, ScopeRule),
    Invalid,
    Dead,
    Io,
}

fn outcome(result: Result<(), ScopeError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(ScopeError::DuplicateName { .. }) => Outcome::Duplicate,
        Err(ScopeError::UnknownPod { .. }) => Outcome::Unknown,
        Err(ScopeError::IncarnationMismatch { .. }) => Outcome::Mismatch,
        Err(ScopeError::NotSubset { rule, .. }) => Outcome::NotSubset(rule),
        Err(ScopeError::WriteConflict { competitor, rule }) => {
            Outcome::Conflict(competitor.to_string(), rule)
        }
        Err(ScopeError::InvalidRule(_)) => Outcome::Invalid,
        Err(ScopeError::DeadProcess { .. }) => Outcome::Dead,
        Err(ScopeError::Io { .. }) => Outcome::Io,
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn is_write(rule: &ScopeRule) -> bool {
    rule.permission == Permission::Write
}

fn valid(rules: &[ScopeRule]) -> bool {
    !rules.is_empty() && rules.iter().all(|r| !r.target.contains(".."))
}

impl Model {
    fn reclaim(&mut self, procs: &BTreeMap<u32, u64>) -> Vec<String> {
        let dead: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|(_, p)| procs.get(&p.pid) != Some(&p.start))
            .map(|(n, _)| n.clone())
            .collect();
        let survivor = |mut parent: Option<String>| {
            while let Some(p) = parent.clone().filter(|p| dead.contains(p)) {
                parent = self.pods[&p].parent.clone();
            }
            parent
        };
        let parents: Vec<(String, Option<String>)> = self
            .pods
            .iter()
            .filter(|(n, _)| !dead.contains(*n))
            .map(|(n, p)| (n.clone(), survivor(p.parent.clone())))
            .collect();
        for (n, parent) in parents {
            self.pods.get_mut(&n).unwrap().parent = parent;
        }
        self.pods.retain(|n, _| !dead.contains(n));
        dead.into_iter().collect()
    }

    /// The first requested write rule (in order) that overlaps a write rule
    /// of a pod outside `allowed`, with the first such pod by name.
    fn conflict(
        &self,
        sets: &mut Sets,
        rules: &[ScopeRule],
        allowed: &BTreeSet<String>,
    ) -> Option<Outcome> {
        for rule in rules.iter().filter(|r| is_write(r)) {
            for (n, pod) in &self.pods {
                if allowed.contains(n) {
                    continue;
                }
                if pod
                    .rules
                    .iter()
                    .filter(|r| is_write(r))
                    .any(|held| sets.overlap(held, rule))
                {
                    return Some(Outcome::Conflict(n.clone(), rule.clone()));
                }
            }
        }
        None
    }

    fn lineage(&self, name: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut current = Some(name.to_owned());
        while let Some(n) = current {
            current = self.pods[&n].parent.clone();
            out.insert(n);
        }
        out
    }

    /// Effective write set of each pod: its write sets minus its children's.
    fn effective(&self, sets: &mut Sets) -> BTreeMap<String, BTreeSet<usize>> {
        let mut out = BTreeMap::new();
        for (n, pod) in &self.pods {
            let mut own: BTreeSet<usize> = BTreeSet::new();
            for r in pod.rules.iter().filter(|r| is_write(r)) {
                own.extend(sets.of(r));
            }
            for child in self
                .pods
                .values()
                .filter(|c| c.parent.as_deref() == Some(n))
            {
                for r in child.rules.iter().filter(|r| is_write(r)) {
                    for i in sets.of(r) {
                        own.remove(&i);
                    }
                }
            }
            out.insert(n.clone(), own);
        }
        out
    }
}

#[derive(Debug, Clone)]
enum IncarnationChoice {
    Omitted,
    Current,
    Stale,
}

#[derive(Debug, Clone)]
enum Op {
    Register {
        name: usize,
        pid: u32,
        rules: Vec<ScopeRule>,
    },
    Delegate {
        from: usize,
        name: usize,
        pid: u32,
        rules: Vec<ScopeRule>,
    },
    Release {
        name: usize,
        incarnation: IncarnationChoice,
    },
    Reclaim,
    Kill(u32),
    Reuse(u32),
    Spawn(u32),
    FailNextWrite,
}

fn arb_rule() -> impl Strategy<Value = ScopeRule> {
    let target = prop_oneof![
        20 => proptest::collection::vec(proptest::sample::select(&COMPONENTS[..]), 0..=2)
            .prop_map(|c| format!("/{}", c.join("/"))),
        1 => Just("/a/../b".to_owned()),
    ];
    (
        target,
        prop_oneof![3 => Just(Permission::Write), 1 => Just(Permission::Read)],
        any::<bool>(),
    )
        .prop_map(|(target, permission, recursive)| ScopeRule {
            target,
            permission,
            recursive,
        })
}

fn arb_rules() -> impl Strategy<Value = Vec<ScopeRule>> {
    prop_oneof![
        30 => proptest::collection::vec(arb_rule(), 1..=3),
        1 => Just(Vec::new()),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    let name = 0..NAMES.len();
    let pid = 1..=PIDS;
    prop_oneof![
        4 => (name.clone(), pid.clone(), arb_rules())
            .prop_map(|(name, pid, rules)| Op::Register { name, pid, rules }),
        6 => (name.clone(), name.clone(), pid.clone(), arb_rules())
            .prop_map(|(from, name, pid, rules)| Op::Delegate { from, name, pid, rules }),
        3 => (name, prop_oneof![
                Just(IncarnationChoice::Omitted),
                Just(IncarnationChoice::Current),
                Just(IncarnationChoice::Stale)
            ])
            .prop_map(|(name, incarnation)| Op::Release { name, incarnation }),
        1 => Just(Op::Reclaim),
        1 => pid.clone().prop_map(Op::Kill),
        1 => pid.clone().prop_map(Op::Reuse),
        1 => pid.prop_map(Op::Spawn),
        1 => Just(Op::FailNextWrite),
    ]
}

struct Harness {
    table: ScopeTable<MemoryStore, FakeLiveness>,
    live: FakeLiveness,
    store: MemoryStore,
    procs: BTreeMap<u32, u64>,
    model: Model,
    sets: Sets,
    fail_pending: bool,
}

impl Harness {
    fn new() -> Self {
        let live = FakeLiveness::new();
        let store = MemoryStore::new();
        let mut procs = BTreeMap::new();
        for pid in 1..=PIDS {
            procs.insert(pid, live.spawn(pid));
        }
        Harness {
            table: ScopeTable::new(store.clone(), live.clone()),
            live,
            store,
            procs,
            model: Model::default(),
            sets: Sets::new(),
            fail_pending: false,
        }
    }

    /// The model's prediction, applied to `next`.
    fn predict(&mut self, op: &Op, next: &mut Model) -> Outcome {
        let procs = self.procs.clone();
        match op {
            Op::Register { name, pid, rules } => {
                if !valid(rules) {
                    return Outcome::Invalid;
                }
                let Some(&start) = procs.get(pid) else {
                    return Outcome::Dead;
                };
                next.reclaim(&procs);
                if next.pods.contains_key(NAMES[*name]) {
                    return Outcome::Duplicate;
                }
                if let Some(conflict) = next.conflict(&mut self.sets, rules, &BTreeSet::new()) {
                    return conflict;
                }
                next.pods.insert(
                    NAMES[*name].to_owned(),
                    ModelPod {
                        pid: *pid,
                        start,
                        rules: rules.clone(),
                        parent: None,
                        incarnation: String::new(),
                    },
                );
                Outcome::Ok
            }
            Op::Delegate {
                from,
                name,
                pid,
                rules,
            } => {
                if !valid(rules) {
                    return Outcome::Invalid;
                }
                let Some(&start) = procs.get(pid) else {
                    return Outcome::Dead;
                };
                next.reclaim(&procs);
                let Some(spawner) = next.pods.get(NAMES[*from]).cloned() else {
                    return Outcome::Unknown;
                };
                if next.pods.contains_key(NAMES[*name]) {
                    return Outcome::Duplicate;
                }
                for rule in rules {
                    let covered = spawner
                        .rules
                        .iter()
                        .any(|s| s.permission >= rule.permission && self.sets.cover(s, rule));
                    if !covered {
                        return Outcome::NotSubset(rule.clone());
                    }
                }
                let lineage = next.lineage(NAMES[*from]);
                if let Some(conflict) = next.conflict(&mut self.sets, rules, &lineage) {
                    return conflict;
                }
                next.pods.insert(
                    NAMES[*name].to_owned(),
                    ModelPod {
                        pid: *pid,
                        start,
                        rules: rules.clone(),
                        parent: Some(NAMES[*from].to_owned()),
                        incarnation: String::new(),
                    },
                );
                Outcome::Ok
            }
            Op::Release { name, incarnation } => {
                let Some(pod) = next.pods.get(NAMES[*name]).cloned() else {
                    return Outcome::Unknown;
                };
                if matches!(incarnation, IncarnationChoice::Stale) {
                    return Outcome::Mismatch;
                }
                next.pods.remove(NAMES[*name]);
                for child in next.pods.values_mut() {
                    if child.parent.as_deref() == Some(NAMES[*name]) {
                        child.parent = pod.parent.clone();
                    }
                }
                Outcome::Ok
            }
            Op::Reclaim => Outcome::Reclaimed(next.reclaim(&procs)),
            Op::Kill(_) | Op::Reuse(_) | Op::Spawn(_) | Op::FailNextWrite => Outcome::Ok,
        }
    }

    fn run(&mut self, op: &Op) -> (Outcome, Option<Allocation>) {
        let spec = |name: usize, pid: u32, rules: &[ScopeRule]| PodSpec {
            pod_name: crate::name(NAMES[name]),
            pid,
            socket: format!("/run/{}.sock", NAMES[name]),
            scope: rules.to_vec(),
        };
        let alloc = |r: Result<Allocation, ScopeError>| match r {
            Ok(a) => (Outcome::Ok, Some(a)),
            Err(e) => (outcome(Err(e)), None),
        };
        match op {
            Op::Register { name, pid, rules } => {
                alloc(self.table.register(spec(*name, *pid, rules)))
            }
            Op::Delegate {
                from,
                name,
                pid,
                rules,
            } => alloc(
                self.table
                    .delegate(&crate::name(NAMES[*from]), spec(*name, *pid, rules)),
            ),
            Op::Release { name, incarnation } => {
                let current = self
                    .model
                    .pods
                    .get(NAMES[*name])
                    .map(|p| p.incarnation.clone());
                let requested = match incarnation {
                    IncarnationChoice::Omitted => None,
                    IncarnationChoice::Current => current,
                    IncarnationChoice::Stale => Some("stale".to_owned()),
                };
                let r = self
                    .table
                    .release(&crate::name(NAMES[*name]), requested.as_deref());
                (outcome(r.map(drop)), None)
            }
            Op::Reclaim => match self.table.reclaim_stale() {
                Ok(pods) => (
                    Outcome::Reclaimed(pods.into_iter().map(|a| a.pod_name.to_string()).collect()),
                    None,
                ),
                Err(e) => (outcome(Err(e)), None),
            },
            Op::Kill(pid) => {
                self.live.kill(*pid);
                self.procs.remove(pid);
                (Outcome::Ok, None)
            }
            Op::Reuse(pid) => {
                self.procs.insert(*pid, self.live.reuse(*pid));
                (Outcome::Ok, None)
            }
            Op::Spawn(pid) => {
                if !self.procs.contains_key(pid) {
                    self.procs.insert(*pid, self.live.spawn(*pid));
                }
                (Outcome::Ok, None)
            }
            Op::FailNextWrite => {
                self.store.fail_next_writes(1);
                self.fail_pending = true;
                (Outcome::Ok, None)
            }
        }
    }

    fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let mut next = self.model.clone();
        let mut expected = self.predict(op, &mut next);
        if next != self.model && self.fail_pending {
            // The store refuses the write: nothing changes.
            expected = Outcome::Io;
            next = self.model.clone();
            self.fail_pending = false;
        }
        let (actual, allocation) = self.run(op);
        prop_assert_eq!(&actual, &expected, "op {:?}", op);
        if let Some(a) = allocation {
            let pod = next.pods.get_mut(a.pod_name.as_str()).unwrap();
            pod.incarnation = a.incarnation;
        }
        self.model = next;
        self.compare()
    }

    fn compare(&mut self) -> Result<(), TestCaseError> {
        let table: Table = self.store.load().unwrap();
        let real: BTreeMap<String, ModelPod> = table
            .allocations()
            .map(|a| {
                (
                    a.pod_name.to_string(),
                    ModelPod {
                        pid: a.pid,
                        start: a.start_time,
                        rules: a.scope_allow.clone(),
                        parent: a.delegated_from.as_ref().map(|p| p.to_string()),
                        incarnation: a.incarnation.clone(),
                    },
                )
            })
            .collect();
        prop_assert_eq!(&real, &self.model.pods);
        prop_assert_eq!(table.check_invariant(), Ok(()));
        for pod in self.model.pods.values() {
            if let Some(parent) = &pod.parent {
                prop_assert!(self.model.pods.contains_key(parent));
            }
        }
        // Effective write scopes are pairwise disjoint, and owner_of names
        // the one pod (if any) whose effective scope holds each path.
        let effective = self.model.effective(&mut self.sets);
        let scopes: Vec<_> = effective
            .keys()
            .map(|n| table.effective_write_scope(n).unwrap())
            .collect();
        for index in 0..self.sets.universe.len() {
            let holders: Vec<&String> = effective
                .iter()
                .filter(|(_, set)| set.contains(&index))
                .map(|(n, _)| n)
                .collect();
            prop_assert!(
                holders.len() <= 1,
                "{} held by {:?}",
                self.sets.path(index),
                holders
            );
            let path = self.sets.path(index);
            let owner = table
                .owner_of(&path)
                .unwrap()
                .map(|a| a.pod_name.to_string());
            prop_assert_eq!(
                owner.as_ref(),
                holders.first().copied(),
                "owner of {}",
                path
            );
            for (scope, set) in scopes.iter().zip(effective.values()) {
                prop_assert_eq!(scope.covers_path(&path), set.contains(&index));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, ..ProptestConfig::default() })]
    #[test]
    fn table_matches_the_model_and_keeps_the_invariant(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let mut harness = Harness::new();
        for op in &ops {
            harness.step(op)?;
        }
    }
}

#[test]
fn the_model_catches_a_broken_table() {
    // The comparison must be able to fail: a table whose pod holds scope
    // its model counterpart does not is reported.
    let mut harness = Harness::new();
    harness
        .step(&Op::Register {
            name: 0,
            pid: 1,
            rules: vec![ScopeRule::write("/a")],
        })
        .unwrap();
    harness.model.pods.get_mut("p0").unwrap().rules = vec![ScopeRule::write("/b")];
    assert!(harness.compare().is_err());
}
