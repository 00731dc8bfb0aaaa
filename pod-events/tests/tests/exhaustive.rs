//! The exhaustive check beside the random one (`orphans.rs`): every tree
//! of up to 4 pods, every multiset of up to 6 events meaningful for it,
//! every order of delivery.
//!
//! The events of a tree: for each pod but the root, its `ShutDown` (sent
//! where it reports now; a second copy is a duplicate), its death without
//! a word, and its spawner's announcement upward (`ScopeSubDelegated`,
//! for pods two levels down or deeper; a second copy is a duplicate). A
//! pod never both shuts down and dies. Trees of up to 3 pods get up to two
//! copies of each `ShutDown` and announcement; trees of 4 pods one (with
//! two, the deepest tree alone takes minutes; duplicates are the random
//! tests' business, in `model.rs` and `orphans.rs`).
//! Each registry starts with the pod's children only: the announcements
//! bring the rest. Every method these send (relays, reparent notices) is
//! in flight until delivered, at any later point of the order.
//!
//! A node of the search is a world's whole state (table, registries and
//! departed sets, upward links, who lives, what is in flight) and the
//! events not yet happened; equal nodes are explored once (memoized with
//! the final states reachable from them), which keeps the search small.
//! Every order of a multiset must reach the same final state once the
//! world settles (everything delivered, reconcile at every level), and
//! every final state must pass the closed-form model's check (no live pod
//! reporting to, or recorded as reporting to, a dead one). Every step
//! checks the table's invariant, and every notice an orphan takes the
//! rules of `orphans.rs`.

use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use super::orphans::{Action, Orphans, Snapshot, State, Tree, World};

/// Every tree of `n` pods with pod `i`'s parent before it (isomorphic
/// shapes deduplicated).
fn trees(n: usize) -> Vec<Tree> {
    let mut out: Vec<Tree> = vec![Tree(vec![None])];
    for i in 1..n {
        out = out
            .into_iter()
            .flat_map(|t| {
                (0..i).map(move |p| {
                    let mut v = t.0.clone();
                    v.push(Some(p));
                    Tree(v)
                })
            })
            .collect();
    }
    let mut seen = BTreeSet::new();
    out.retain(|t| seen.insert(shape(t, 0)));
    out
}

/// A canonical form of the subtree at `i`.
fn shape(t: &Tree, i: usize) -> String {
    let mut children: Vec<String> = (0..t.len())
        .filter(|&c| t.parent(c) == Some(i))
        .map(|c| shape(t, c))
        .collect();
    children.sort();
    format!("({})", children.concat())
}

/// The event kinds of `t`, each with how many copies a multiset may hold.
fn kinds(t: &Tree) -> Vec<(Action, usize)> {
    let copies = if t.len() <= 3 { 2 } else { 1 };
    let mut out = Vec::new();
    for x in 1..t.len() {
        out.push((Action::Shut(x), copies));
        out.push((Action::Die(x), 1));
        if t.depth(x) >= 2 {
            out.push((Action::Announce(x), copies));
        }
    }
    out
}

/// Every non-empty multiset of at most `max` events of `kinds`, as lists
/// in the order of `kinds` (copies adjacent); a pod never both shuts down
/// and dies.
fn multisets(kinds: &[(Action, usize)], max: usize) -> Vec<Vec<Action>> {
    fn go(
        kinds: &[(Action, usize)],
        at: usize,
        left: usize,
        current: &mut Vec<Action>,
        out: &mut Vec<Vec<Action>>,
    ) {
        if at == kinds.len() {
            let exclusive = current.iter().all(|a| match a {
                Action::Die(x) => !current.contains(&Action::Shut(*x)),
                _ => true,
            });
            if exclusive && !current.is_empty() {
                out.push(current.clone());
            }
            return;
        }
        let (kind, most) = &kinds[at];
        for n in 0..=(*most).min(left) {
            for _ in 0..n {
                current.push(kind.clone());
            }
            go(kinds, at + 1, left - n, current, out);
            current.truncate(current.len() - n);
        }
    }
    let mut out = Vec::new();
    go(kinds, 0, max, &mut Vec::new(), &mut out);
    out
}

struct Search<'a> {
    tree: &'a Tree,
    rt: &'a tokio::runtime::Runtime,
    /// Node key to the final states reachable from it.
    memo: HashMap<String, Rc<BTreeSet<Snapshot>>>,
    steps: u64,
}

impl Search<'_> {
    /// The final states every order of `remaining` (and of what is in
    /// flight) reaches from `state`.
    fn finals(&mut self, state: &State, remaining: &[Action]) -> Rc<BTreeSet<Snapshot>> {
        let key = format!("{remaining:?}#{}", state.key());
        if let Some(found) = self.memo.get(&key) {
            return found.clone();
        }
        let mut finals = BTreeSet::new();
        if remaining.is_empty() && state_is_quiet(state) {
            let tree = self.tree;
            let settled = self.rt.block_on(async {
                let mut world = World::fork(tree, state).await;
                world.settle().await;
                world.check_settled();
                world.snapshot().records_only()
            });
            self.steps += 1;
            finals.insert(settled);
        } else {
            let mut next: Vec<(Action, Vec<Action>)> = Vec::new();
            for (i, action) in remaining.iter().enumerate() {
                if i > 0 && remaining[i - 1] == *action {
                    continue;
                }
                let mut rest = remaining.to_vec();
                rest.remove(i);
                next.push((action.clone(), rest));
            }
            let mut seen = BTreeSet::new();
            for (k, (to, method)) in in_flight(state).iter().enumerate() {
                if seen.insert(format!("{to}:{method:?}")) {
                    next.push((Action::Deliver(k), remaining.to_vec()));
                }
            }
            for (action, rest) in next {
                let tree = self.tree;
                let after = self.rt.block_on(async {
                    let mut world = World::fork(tree, state).await;
                    world.act(&action).await;
                    world.state()
                });
                self.steps += 1;
                finals.extend(self.finals(&after, &rest).iter().cloned());
            }
        }
        let finals = Rc::new(finals);
        self.memo.insert(key, finals.clone());
        finals
    }
}

fn state_is_quiet(state: &State) -> bool {
    in_flight(state).is_empty()
}

fn in_flight(state: &State) -> &[(usize, pod_protocol::Method)] {
    state.in_flight()
}

/// Checks every multiset of `tree`; returns how many, the distinct
/// nodes and the steps taken.
fn check_tree(tree: &Tree) -> (usize, usize, u64) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let start = rt.block_on(async { World::new(tree, false, Orphans::Rules).await.state() });
    let mut search = Search {
        tree,
        rt: &rt,
        memo: HashMap::new(),
        steps: 0,
    };
    let all = multisets(&kinds(tree), 6);
    for multiset in &all {
        let finals = search.finals(&start, multiset);
        assert_eq!(
            finals.len(),
            1,
            "tree {:?}, events {multiset:?}: orders end in {} states: {finals:#?}",
            tree.0,
            finals.len()
        );
    }
    (all.len(), search.memo.len(), search.steps)
}

#[test]
fn every_order_of_every_small_multiset_converges() {
    let started = Instant::now();
    // The deepest trees first: they take longest.
    let mut trees: Vec<Tree> = (1..=4).flat_map(trees).collect();
    trees.sort_by_key(|t| std::cmp::Reverse((0..t.len()).map(|i| t.depth(i)).sum::<usize>()));
    let next = AtomicUsize::new(0);
    let totals = Mutex::new((0, 0, 0));
    // One search per tree, on two threads (the trees are independent).
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                while let Some(tree) = trees.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let (multisets, nodes, steps) = check_tree(tree);
                    eprintln!(
                        "exhaustive: tree {:?}: {multisets} multisets, {nodes} distinct nodes, {steps} steps, done at {:.1} s",
                        tree.0,
                        started.elapsed().as_secs_f64()
                    );
                    let mut totals = totals.lock().unwrap();
                    totals.0 += multisets;
                    totals.1 += nodes;
                    totals.2 += steps;
                }
            });
        }
    });
    let (multisets, nodes, steps) = *totals.lock().unwrap();
    eprintln!(
        "exhaustive: {multisets} multisets over {} trees, {nodes} distinct nodes, {steps} steps, in {:.1} s",
        trees.len(),
        started.elapsed().as_secs_f64()
    );
}
