//! Model-based proptest: random sequences of register, delegate, release and
//! reclaim, with injected deaths, pid reuse and write failures, run against
//! `ScopeTable` on the in-memory store and against a simple model whose
//! rule relations are brute-force set operations over a finite path tree.
//! After every step the two tables must be equal and the invariant must
//! hold: effective write scopes pairwise disjoint, every parent present.
//! The model reclaims before register and delegate only the pods that
//! would refuse them (see `Table::register_reclaiming`); a second proptest
//! checks that this answers as a full reclaim first would.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{
    Allocation, Liveness, Permission, PodName, PodSpec, ScopeError, ScopeRule, ScopeTable, Table,
    TableStore,
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
    /// A reservation's deadline, until adopted.
    pending: Option<u64>,
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
    NotReserved,
    Expired,
    Io,
}

fn outcome(result: Result<(), ScopeError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Ok,
        Err(error) => error_outcome(&error),
    }
}

fn error_outcome(error: &ScopeError) -> Outcome {
    match error {
        ScopeError::DuplicateName { .. } => Outcome::Duplicate,
        ScopeError::UnknownPod { .. } => Outcome::Unknown,
        ScopeError::IncarnationMismatch { .. } => Outcome::Mismatch,
        ScopeError::NotSubset { rule, .. } => Outcome::NotSubset(rule.clone()),
        ScopeError::WriteConflict { competitor, rule } => {
            Outcome::Conflict(competitor.to_string(), rule.clone())
        }
        ScopeError::InvalidRule(_) => Outcome::Invalid,
        ScopeError::DeadProcess { .. } => Outcome::Dead,
        ScopeError::NotReserved { .. } => Outcome::NotReserved,
        ScopeError::ReservationExpired { .. } => Outcome::Expired,
        ScopeError::Io { .. } => Outcome::Io,
        other => panic!("unexpected error {other}"),
    }
}

fn is_write(rule: &ScopeRule) -> bool {
    rule.permission == Permission::Write
}

fn valid(rules: &[ScopeRule]) -> bool {
    !rules.is_empty() && rules.iter().all(|r| !r.target.contains(".."))
}

/// Not a pid: the key under which `procs` keeps the fake clock's time
/// (every liveness question of the model is a look-up in `procs`).
const CLOCK: u32 = u32::MAX;

/// How long a reservation waits (ms) in the model harness.
const DEADLINE_MS: u64 = 100;

fn is_live(procs: &BTreeMap<u32, u64>, pod: &ModelPod) -> bool {
    let now = procs.get(&CLOCK).copied().unwrap_or(0);
    procs.get(&pod.pid) == Some(&pod.start) && pod.pending.is_none_or(|until| now <= until)
}

impl Model {
    /// Full reclaim: every pod whose process is gone.
    fn reclaim(&mut self, procs: &BTreeMap<u32, u64>) -> Vec<String> {
        let dead: BTreeSet<String> = self
            .pods
            .iter()
            .filter(|(_, p)| !is_live(procs, p))
            .map(|(n, _)| n.clone())
            .collect();
        self.remove(&dead);
        dead.into_iter().collect()
    }

    /// Removes the pods in `dead`, reparenting the others to their nearest
    /// ancestor outside it.
    fn remove(&mut self, dead: &BTreeSet<String>) {
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
    }

    /// The first requested write rule (in order) that overlaps a write rule
    /// of a live pod outside `allowed`, with the first such pod by name.
    /// The dead pods met before it are added to `dead` (targeted reclaim).
    fn conflict(
        &self,
        sets: &mut Sets,
        procs: &BTreeMap<u32, u64>,
        rules: &[ScopeRule],
        allowed: &BTreeSet<String>,
        dead: &mut BTreeSet<String>,
    ) -> Option<Outcome> {
        for rule in rules.iter().filter(|r| is_write(r)) {
            for (n, pod) in &self.pods {
                if allowed.contains(n) || dead.contains(n) {
                    continue;
                }
                if pod
                    .rules
                    .iter()
                    .filter(|r| is_write(r))
                    .any(|held| sets.overlap(held, rule))
                {
                    if is_live(procs, pod) {
                        let owner = self.deepest(sets, procs, n, rule, dead);
                        return Some(Outcome::Conflict(owner, rule.clone()));
                    }
                    dead.insert(n.clone());
                }
            }
        }
        None
    }

    /// Whom the conflict names: from the first live pod found, step down
    /// to the first child by name (live pods whose nearest live ancestor
    /// it is) holding, for every write rule of it that overlaps `rule`, a
    /// write rule covering that rule or all of `rule`; probing (and
    /// marking dead) in the order the real table does: each candidate's
    /// pods between it and the owner, then the candidate.
    fn deepest(
        &self,
        sets: &mut Sets,
        procs: &BTreeMap<u32, u64>,
        first: &str,
        rule: &ScopeRule,
        dead: &mut BTreeSet<String>,
    ) -> String {
        let writes = |p: &ModelPod| {
            p.rules
                .iter()
                .filter(|r| is_write(r))
                .cloned()
                .collect::<Vec<_>>()
        };
        let mut owner = first.to_owned();
        'descend: loop {
            let held = writes(&self.pods[&owner]);
            for (c, pod) in &self.pods {
                let theirs = writes(pod);
                if !theirs.iter().any(|w| sets.overlap(w, rule)) {
                    continue;
                }
                let mut takes_over = true;
                for h in &held {
                    if sets.overlap(h, rule)
                        && !theirs
                            .iter()
                            .any(|w| sets.cover(w, h) || sets.cover(w, rule))
                    {
                        takes_over = false;
                    }
                }
                if !takes_over {
                    continue;
                }
                let mut between = Vec::new();
                let mut parent = pod.parent.clone();
                let descends = loop {
                    match parent {
                        None => break false,
                        Some(p) if p == owner => break true,
                        Some(p) => {
                            parent = self.pods[&p].parent.clone();
                            between.push(p);
                        }
                    }
                };
                if !descends {
                    continue;
                }
                let mut live_between = false;
                for b in &between {
                    if is_live(procs, &self.pods[b]) {
                        live_between = true;
                        break;
                    }
                    dead.insert(b.clone());
                }
                if live_between {
                    continue;
                }
                if is_live(procs, pod) {
                    owner = c.clone();
                    continue 'descend;
                }
                dead.insert(c.clone());
            }
            return owner;
        }
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
    Reserve {
        from: usize,
        name: usize,
        rules: Vec<ScopeRule>,
    },
    Adopt {
        name: usize,
        stale: bool,
        pid: u32,
    },
    Advance(u64),
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
        3 => (name.clone(), prop_oneof![
                Just(IncarnationChoice::Omitted),
                Just(IncarnationChoice::Current),
                Just(IncarnationChoice::Stale)
            ])
            .prop_map(|(name, incarnation)| Op::Release { name, incarnation }),
        3 => (name.clone(), name.clone(), arb_rules())
            .prop_map(|(from, name, rules)| Op::Reserve { from, name, rules }),
        3 => (name, proptest::bool::weighted(0.2), pid.clone())
            .prop_map(|(name, stale, pid)| Op::Adopt { name, stale, pid }),
        1 => prop_oneof![Just(30u64), Just(80)].prop_map(Op::Advance),
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
        procs.insert(CLOCK, live.now_unix_ms());
        Harness {
            table: ScopeTable::new(store.clone(), live.clone())
                .with_reservation_deadline(Duration::from_millis(DEADLINE_MS)),
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
                // Targeted reclaim: only the pods that would refuse the
                // request are probed, and the dead ones reclaimed.
                let mut dead = BTreeSet::new();
                if let Some(holder) = next.pods.get(NAMES[*name]) {
                    if is_live(&procs, holder) {
                        return Outcome::Duplicate;
                    }
                    dead.insert(NAMES[*name].to_owned());
                }
                let conflict =
                    next.conflict(&mut self.sets, &procs, rules, &BTreeSet::new(), &mut dead);
                next.remove(&dead);
                if let Some(conflict) = conflict {
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
                        pending: None,
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
                // Targeted reclaim: the spawner first, then the pods that
                // would refuse the request; the dead ones are reclaimed.
                let Some(spawner) = next.pods.get(NAMES[*from]).cloned() else {
                    return Outcome::Unknown;
                };
                if !is_live(&procs, &spawner) {
                    next.remove(&BTreeSet::from([NAMES[*from].to_owned()]));
                    return Outcome::Unknown;
                }
                let mut dead = BTreeSet::new();
                if let Some(holder) = next.pods.get(NAMES[*name]) {
                    if is_live(&procs, holder) {
                        return Outcome::Duplicate;
                    }
                    dead.insert(NAMES[*name].to_owned());
                }
                for rule in rules {
                    let covered = spawner
                        .rules
                        .iter()
                        .any(|s| s.permission >= rule.permission && self.sets.cover(s, rule));
                    if !covered {
                        next.remove(&dead);
                        return Outcome::NotSubset(rule.clone());
                    }
                }
                // Ancestors stay allowed whether alive or not.
                let lineage = next.lineage(NAMES[*from]);
                let conflict = next.conflict(&mut self.sets, &procs, rules, &lineage, &mut dead);
                next.remove(&dead);
                if let Some(conflict) = conflict {
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
                        pending: None,
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
            Op::Reserve { from, name, rules } => {
                if !valid(rules) {
                    return Outcome::Invalid;
                }
                // As delegate (no process of its own to check), held under
                // the spawner's process.
                let Some(spawner) = next.pods.get(NAMES[*from]).cloned() else {
                    return Outcome::Unknown;
                };
                if !is_live(&procs, &spawner) {
                    next.remove(&BTreeSet::from([NAMES[*from].to_owned()]));
                    return Outcome::Unknown;
                }
                let mut dead = BTreeSet::new();
                if let Some(holder) = next.pods.get(NAMES[*name]) {
                    if is_live(&procs, holder) {
                        return Outcome::Duplicate;
                    }
                    dead.insert(NAMES[*name].to_owned());
                }
                for rule in rules {
                    let covered = spawner
                        .rules
                        .iter()
                        .any(|s| s.permission >= rule.permission && self.sets.cover(s, rule));
                    if !covered {
                        next.remove(&dead);
                        return Outcome::NotSubset(rule.clone());
                    }
                }
                let lineage = next.lineage(NAMES[*from]);
                let conflict = next.conflict(&mut self.sets, &procs, rules, &lineage, &mut dead);
                next.remove(&dead);
                if let Some(conflict) = conflict {
                    return conflict;
                }
                next.pods.insert(
                    NAMES[*name].to_owned(),
                    ModelPod {
                        pid: spawner.pid,
                        start: spawner.start,
                        rules: rules.clone(),
                        parent: Some(NAMES[*from].to_owned()),
                        incarnation: String::new(),
                        pending: Some(procs[&CLOCK] + DEADLINE_MS),
                    },
                );
                Outcome::Ok
            }
            Op::Adopt { name, stale, pid } => {
                let Some(&start) = procs.get(pid) else {
                    return Outcome::Dead;
                };
                let Some(pod) = next.pods.get_mut(NAMES[*name]) else {
                    return Outcome::Unknown;
                };
                if *stale {
                    return Outcome::Mismatch;
                }
                let Some(until) = pod.pending else {
                    return Outcome::NotReserved;
                };
                if procs[&CLOCK] > until {
                    return Outcome::Expired;
                }
                pod.pid = *pid;
                pod.start = start;
                pod.pending = None;
                Outcome::Ok
            }
            Op::Reclaim => Outcome::Reclaimed(next.reclaim(&procs)),
            Op::Advance(_) | Op::Kill(_) | Op::Reuse(_) | Op::Spawn(_) | Op::FailNextWrite => {
                Outcome::Ok
            }
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
            Op::Reserve { from, name, rules } => {
                // The pid is ignored: the spawner's holds the reservation.
                alloc(
                    self.table
                        .reserve(&crate::name(NAMES[*from]), spec(*name, 1, rules)),
                )
            }
            Op::Adopt { name, stale, pid } => {
                let current = self
                    .model
                    .pods
                    .get(NAMES[*name])
                    .map(|p| p.incarnation.clone())
                    .unwrap_or_default();
                let incarnation = if *stale { "stale".to_owned() } else { current };
                alloc(
                    self.table
                        .adopt(&crate::name(NAMES[*name]), &incarnation, *pid),
                )
            }
            Op::Advance(ms) => {
                self.live.advance_ms(*ms);
                *self.procs.entry(CLOCK).or_default() += ms;
                (Outcome::Ok, None)
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
            pod.incarnation = a.incarnation.expect("ours carry an incarnation");
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
                        start: a.start_time.expect("ours carry a start time"),
                        rules: a.scope_allow.clone(),
                        parent: a.delegated_from.as_ref().map(|p| p.to_string()),
                        incarnation: a.incarnation.clone().unwrap_or_default(),
                        pending: a.pending_until,
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

/// A request for the equivalence proptest.
#[derive(Debug, Clone)]
enum Request {
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
        /// Whether to turn `rules` into rules inside the spawner's (see
        /// [`derive`]), so that more delegations succeed.
        derive: bool,
    },
}

const TABLE_NAMES: [&str; 10] = ["p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8", "p9"];
/// Pids 1..=4 hold the table's pods; pid 5 is a new process that stays
/// alive.
const TABLE_PIDS: u32 = 4;

fn arb_request() -> impl Strategy<Value = Request> {
    let name = 0..TABLE_NAMES.len();
    let pid = 1..=TABLE_PIDS + 1;
    prop_oneof![
        1 => (name.clone(), pid.clone(), arb_rules())
            .prop_map(|(name, pid, rules)| Request::Register { name, pid, rules }),
        2 => (name.clone(), name, pid, arb_rules(), prop_oneof![3 => Just(true), 1 => Just(false)])
            .prop_map(|(from, name, pid, rules, derive)| Request::Delegate {
                from,
                name,
                pid,
                rules,
                derive,
            }),
    ]
}

/// Rules inside `spawner`'s: the `i`-th rule is taken below the spawner's
/// `i`-th rule (cyclically), one component (the first of `rule`'s target)
/// deeper if that rule is recursive, with at most its permission.
fn derive(spawner: &Allocation, rules: &[ScopeRule]) -> Vec<ScopeRule> {
    rules
        .iter()
        .zip(spawner.scope_allow.iter().cycle())
        .map(|(rule, outer)| {
            let first = rule.target.split('/').find(|c| !c.is_empty());
            let (target, recursive) = match first {
                Some(c) if outer.recursive => (
                    format!("{}/{c}", outer.target.trim_end_matches('/')),
                    rule.recursive,
                ),
                _ if outer.recursive => (outer.target.clone(), rule.recursive),
                _ => (outer.target.clone(), false),
            };
            ScopeRule {
                target,
                permission: rule.permission.min(outer.permission),
                recursive,
            }
        })
        .collect()
}

/// The request's spec on `table` (rules derived if asked and the spawner
/// exists).
fn request_parts(table: &Table, request: &Request) -> (Option<PodName>, PodSpec) {
    match request {
        Request::Register { name, pid, rules } => (None, request_spec(*name, *pid, rules)),
        Request::Delegate {
            from,
            name,
            pid,
            rules,
            derive: wanted,
        } => {
            let from = crate::name(TABLE_NAMES[*from]);
            let rules = match table.get(from.as_str()) {
                Some(spawner) if *wanted && !rules.is_empty() => derive(spawner, rules),
                _ => rules.clone(),
            };
            (Some(from), request_spec(*name, *pid, &rules))
        }
    }
}

/// What becomes of each table pid: 0 alive, 1 dead, 2 reused by another
/// process.
fn arb_fates() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(0u8..3, TABLE_PIDS as usize)
}

fn request_spec(name: usize, pid: u32, rules: &[ScopeRule]) -> PodSpec {
    PodSpec {
        pod_name: crate::name(TABLE_NAMES[name]),
        pid,
        socket: format!("/run/{}.sock", TABLE_NAMES[name]),
        scope: rules.to_vec(),
    }
}

/// A valid table built by the pure rules from `build`, every pod alive
/// (pid `p` started at `10 * p`). To grow bigger tables, each step takes the
/// first free name from its own on and delegates from an existing pod.
fn build_table(build: &[Request]) -> Table {
    let mut table = Table::new();
    for (i, request) in build.iter().enumerate() {
        let free = |n: &usize| {
            (0..TABLE_NAMES.len())
                .map(|k| (n + k) % TABLE_NAMES.len())
                .find(|&k| table.get(TABLE_NAMES[k]).is_none())
                .unwrap_or(*n)
        };
        let existing = |n: &usize| {
            let names: Vec<usize> = (0..TABLE_NAMES.len())
                .filter(|&k| table.get(TABLE_NAMES[k]).is_some())
                .collect();
            names.get(n % names.len().max(1)).copied().unwrap_or(*n)
        };
        let request = match request {
            Request::Register { name, pid, rules } => Request::Register {
                name: free(name),
                pid: *pid,
                rules: rules.clone(),
            },
            Request::Delegate {
                from,
                name,
                pid,
                rules,
                derive,
            } => Request::Delegate {
                from: existing(from),
                name: free(name),
                pid: *pid,
                rules: rules.clone(),
                derive: *derive,
            },
        };
        let (from, spec) = request_parts(&table, &request);
        let start = 10 * u64::from(spec.pid);
        let incarnation = format!("i{i}");
        let _ = match from {
            None => table.register(spec, start, incarnation),
            Some(from) => table.delegate(&from, spec, start, incarnation),
        };
    }
    // Pods with an even pid are legacy allocations, as existing Pods write
    // them: no start time (liveness by pid alone), no incarnation.
    table
        .allocations()
        .cloned()
        .map(|mut a| {
            if a.pid % 2 == 0 {
                a.start_time = None;
                a.incarnation = None;
            }
            a
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]
    /// `ScopeTable::register`/`delegate` reclaim only what blocks the
    /// request; the answer equals that of a full reclaim followed by the
    /// pure rule, and so does the resulting table once restricted to live
    /// pods (i.e. after reclaiming the dead ones it left alone).
    #[test]
    fn targeted_reclaim_answers_as_a_full_reclaim_first(
        build in proptest::collection::vec(arb_request(), 0..32),
        fates in arb_fates(),
        request in arb_request(),
    ) {
        let table = build_table(&build);
        prop_assert_eq!(table.check_invariant(), Ok(()));
        let live = FakeLiveness::new();
        for (pid, fate) in (1..=TABLE_PIDS).zip(&fates) {
            let start = 10 * u64::from(pid);
            live.set(pid, match fate {
                0 => Some(start),
                1 => None,
                _ => Some(start + 1),
            });
        }
        live.set(TABLE_PIDS + 1, Some(10 * u64::from(TABLE_PIDS + 1)));
        let store = MemoryStore::with_table(table.clone());
        let targeted = ScopeTable::new(store.clone(), live.clone());
        let is_live = |a: &Allocation| targeted.is_live(a);

        // Targeted, through the public API.
        let (from, spec) = request_parts(&table, &request);
        let pid = spec.pid;
        let got = match &from {
            None => targeted.register(spec.clone()),
            Some(from) => targeted.delegate(from, spec.clone()),
        };
        let after: Table = store.load().unwrap();
        prop_assert_eq!(after.check_invariant(), Ok(()));

        // Reference: reclaim everything, then the pure rule (with the same
        // incarnation, so that the tables compare equal).
        let mut reference = table.clone();
        reference.reclaim(is_live);
        let incarnation = got
            .as_ref()
            .ok()
            .and_then(|a| a.incarnation.clone())
            .unwrap_or_default();
        let expected = match (spec.validate(), live.start_time(pid), &from) {
            (Err(invalid), _, _) => Err(invalid),
            (Ok(()), None, _) => Err(ScopeError::DeadProcess { pid }),
            (Ok(()), Some(start), None) => {
                reference.register(spec.clone(), start, incarnation.clone())
            }
            (Ok(()), Some(start), Some(from)) => {
                reference.delegate(from, spec.clone(), start, incarnation.clone())
            }
        };
        match (&got, &expected) {
            (Ok(got), Ok(expected)) => prop_assert_eq!(got, expected),
            (Err(got), Err(expected)) => {
                prop_assert_eq!(error_outcome(got), error_outcome(expected))
            }
            _ => prop_assert!(false, "{:?} instead of {:?} for {:?}", got, expected, request),
        }

        // Restricted to live pods, the tables are the same.
        let mut restricted = after.clone();
        restricted.reclaim(is_live);
        prop_assert_eq!(&restricted, &reference, "request {:?}", request);

        // The pure rule probes each pod at most once, and only the spawner,
        // the holder of the name and pods whose write rules overlap a
        // requested one; it reclaims exactly those it found dead.
        if let Some(start) = live.start_time(pid) {
            let mut probed = Vec::new();
            let mut pure = table.clone();
            let answer = {
                let probe = |a: &Allocation| {
                    probed.push(a.pod_name.to_string());
                    is_live(a)
                };
                match &from {
                    None => pure.register_reclaiming(spec.clone(), start, incarnation, probe),
                    Some(from) => {
                        pure.delegate_reclaiming(from, spec.clone(), start, incarnation, probe)
                    }
                }
            };
            prop_assert_eq!(answer.is_ok(), got.is_ok());
            prop_assert_eq!(&pure, &after);
            // Still there: the same pod, not a new one of the same name.
            let kept = |a: &Allocation| {
                after
                    .get(a.pod_name.as_str())
                    .is_some_and(|b| b.incarnation == a.incarnation)
            };
            let distinct: BTreeSet<&String> = probed.iter().collect();
            prop_assert_eq!(distinct.len(), probed.len(), "probed twice: {:?}", probed);
            for probed in &probed {
                let a = table.get(probed).unwrap();
                let blocks = from.as_ref().is_some_and(|f| f == &a.pod_name)
                    || a.pod_name == spec.pod_name
                    || spec.scope.iter().filter(|r| is_write(r)).any(|r| {
                        a.write_rules().any(|held| pod_scope_lock::coverage::overlaps(held, r))
                    });
                prop_assert!(blocks, "{} was probed for {:?}", probed, request);
                prop_assert_eq!(kept(a), is_live(a));
            }
            for a in table.allocations() {
                if !kept(a) {
                    prop_assert!(probed.contains(&a.pod_name.to_string()));
                }
            }
        }
    }
}
