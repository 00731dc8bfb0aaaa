//! Operations per second of [`ScopeTable`] on the in-memory store, the
//! table pod-events' in-memory receive path (and its tests) run against.
//!
//! ```text
//! cargo run --release -p pod-scope-lock --example memory_ops [-- MILLIS]
//! ```
//!
//! On tables of 200 and 10,000 allocations (100 top-level pods, the rest
//! delegated from them), it times, each for `MILLIS` (default 300) ms:
//!
//! - `release+delegate`: release a child, then delegate it again from its
//!   parent (two transactions; the figure counts each as one operation), as
//!   a `ShutDown` followed by a `ScopeSubDelegated` would;
//! - `find`: the liveness lookup pod-events makes after every
//!   `ScopeSubDelegated`;
//! - `owner_of`: the deepest pod whose write scope covers a path;
//! - `failed transaction`: a transaction that releases a pod and then
//!   returns an error, so the store puts it back.

use std::time::{Duration, Instant};

use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{
    Allocation, PodName, PodSpec, ScopeError, ScopeRule, ScopeTable, Table, TableStore,
};

const PID: u32 = 4242;
const START: u64 = 1;

fn name(s: &str) -> PodName {
    PodName::new(s).expect("valid name")
}

/// `n` allocations: 100 top-level pods over `/bench/t<i>`, the rest
/// delegated from them, one sub-directory each.
fn build_table(n: usize) -> Table {
    let tops = n.clamp(1, 100);
    (0..n)
        .map(|i| {
            let (pod, target, parent) = if i < tops {
                (format!("top{i}"), format!("/bench/t{i}"), None)
            } else {
                let t = i % tops;
                (
                    format!("child{i}"),
                    format!("/bench/t{t}/c{i}"),
                    Some(name(&format!("top{t}"))),
                )
            };
            Allocation {
                socket: format!("/run/pods/{pod}.sock"),
                pod_name: name(&pod),
                pid: PID,
                start_time: Some(START),
                scope_allow: vec![ScopeRule::write(target), ScopeRule::read("/usr")],
                delegated_from: parent,
                incarnation: Some("0123456789abcdef0123456789abcdef".into()),
                pending_until: None,
                reparented: 0,
            }
        })
        .collect()
}

/// Runs `op` (which returns how many operations it did) for `budget`;
/// returns operations per second.
fn rate(budget: Duration, mut op: impl FnMut(usize) -> usize) -> f64 {
    let started = Instant::now();
    let mut ops = 0;
    let mut round = 0;
    while started.elapsed() < budget {
        for _ in 0..16 {
            ops += op(round);
            round += 1;
        }
    }
    ops as f64 / started.elapsed().as_secs_f64()
}

fn show(label: &str, n: usize, per_second: f64) {
    println!("{n:>7} allocations  {label:<20} {per_second:>12.0} ops/s");
}

fn main() {
    let millis: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let budget = Duration::from_millis(millis);
    for n in [200, 10_000] {
        let table = build_table(n);
        table.check_invariant().expect("a valid table");
        let children: Vec<(PodName, PodName, String)> = table
            .allocations()
            .filter_map(|a| {
                let parent = a.delegated_from.clone()?;
                let target = a.scope_allow[0].target.clone();
                Some((a.pod_name.clone(), parent, target))
            })
            .collect();
        let liveness = FakeLiveness::new();
        liveness.set(PID, Some(START));
        let scopes = ScopeTable::new(MemoryStore::with_table(table), liveness);

        let cycles = rate(budget, |round| {
            let (child, parent, target) = &children[round % children.len()];
            scopes.release(child, None).expect("release");
            let spec = PodSpec {
                pod_name: child.clone(),
                pid: PID,
                socket: format!("/run/pods/{child}.sock"),
                scope: vec![ScopeRule::write(target.clone())],
            };
            scopes.delegate(parent, spec).expect("delegate");
            2
        });
        show("release+delegate", n, cycles);

        let finds = rate(budget, |round| {
            let (child, _, _) = &children[round % children.len()];
            assert!(scopes.find(child).expect("find").is_some());
            1
        });
        show("find", n, finds);

        let owners = rate(budget, |round| {
            let (_, _, target) = &children[round % children.len()];
            let path = format!("{target}/file");
            assert!(scopes.owner_of(&path).expect("owner_of").is_some());
            1
        });
        show("owner_of", n, owners);

        let failed = rate(budget, |round| {
            let (child, _, _) = &children[round % children.len()];
            let result: Result<(), ScopeError> = scopes.store().transact(|t| {
                t.release(child, None)?;
                Err(ScopeError::UnknownPod {
                    name: child.clone(),
                })
            });
            assert!(result.is_err());
            1
        });
        show("failed transaction", n, failed);
        assert_eq!(scopes.list().expect("list").len(), n);
    }
}
