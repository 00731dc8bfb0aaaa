//! Fault tests on a three-member etcd cluster on loopback: racing
//! delegaters, the leader killed mid-loop, quorum lost and regained.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

use pod_scope_lock::testing::FakeLiveness;
use pod_scope_lock::{EtcdError, ScopeError, ScopeTable, TableStore};

use super::Cluster;
use crate::{name, spec};

fn live() -> FakeLiveness {
    let live = FakeLiveness::new();
    for pid in 1..=40 {
        live.spawn(pid);
    }
    live
}

/// 16 stores (each its own connection to all three members) delegate
/// overlapping scope from one root at once: exactly one is granted.
#[test]
fn sixteen_racing_delegaters_on_three_members_grant_exactly_one() {
    let cluster = Cluster::start(3);
    let live = live();
    ScopeTable::new(cluster.store("race"), live.clone())
        .register(spec("root", 1, &["w:/srv/**"]))
        .unwrap();
    let barrier = Arc::new(Barrier::new(16));
    let results: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..16u32)
            .map(|i| {
                let table = ScopeTable::new(cluster.store("race"), live.clone());
                let barrier = Arc::clone(&barrier);
                scope.spawn(move || {
                    barrier.wait();
                    table.delegate(
                        &name("root"),
                        spec(
                            &format!("d{i}"),
                            2 + i,
                            &[&format!("w:/srv/shared/{}/**", i % 2)],
                        ),
                    )
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    });
    // Two disjoint targets, eight racers each: one winner per target.
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 2, "{results:?}");
    assert!(results.iter().all(|r| match r {
        Ok(_) => true,
        Err(e) => matches!(e, ScopeError::WriteConflict { .. }),
    }));
    let table = cluster.store("race").load().unwrap();
    assert_eq!(table.len(), 3);
    table.check_invariant().unwrap();
}

/// Two writers race for the same scopes in a loop while the leader is
/// killed: every grant reported is in the table, no scope is granted
/// twice, and a refusal that says nothing was written left nothing.
#[test]
fn killing_the_leader_mid_loop_loses_and_doubles_no_grant() {
    const ROUNDS: usize = 40;
    let mut cluster = Cluster::start(3);
    let live = live();
    let progress = AtomicUsize::new(0);
    let outcomes = std::thread::scope(|scope| {
        let writers: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|side| {
                let table = ScopeTable::new(cluster.store("loop"), live.clone());
                let progress = &progress;
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    for k in 0..ROUNDS {
                        let pod = format!("{side}{k}");
                        let r = table.register(spec(&pod, 1, &[&format!("w:/race/{k}/**")]));
                        outcomes.push((k, pod, r));
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    outcomes
                })
            })
            .collect();
        while progress.load(Ordering::SeqCst) < 20 {
            std::thread::yield_now();
        }
        let leader = cluster.leader();
        cluster.kill(leader);
        let outcomes: Vec<_> = writers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        cluster.restart(leader);
        outcomes
    });
    cluster.wait_writable();
    let table = cluster.store("loop").load().unwrap();
    table.check_invariant().unwrap();
    let held: BTreeSet<String> = table
        .allocations()
        .map(|a| a.pod_name.to_string())
        .collect();
    let mut failures = 0;
    for k in 0..ROUNDS {
        let granted: Vec<_> = outcomes
            .iter()
            .filter(|(round, _, r)| *round == k && r.is_ok())
            .collect();
        assert!(granted.len() <= 1, "round {k} granted twice: {granted:?}");
        for (_, pod, r) in outcomes.iter().filter(|(round, ..)| *round == k) {
            match r {
                Ok(_) => assert!(held.contains(pod), "grant of {pod} was lost"),
                Err(ScopeError::Etcd(EtcdError::OutcomeUnknown { .. })) => failures += 1,
                Err(e) => {
                    if !matches!(e, ScopeError::WriteConflict { .. }) {
                        failures += 1;
                    }
                    assert!(!held.contains(pod), "{pod} refused ({e}) but held");
                }
            }
        }
    }
    // Every round ends with one holder, unless both of its writers failed.
    eprintln!(
        "leader kill: {failures} failed operations of {}",
        2 * ROUNDS
    );
    assert!(held.len() <= ROUNDS);
}

/// Two of three members stopped: operations fail with NoQuorum and grant
/// nothing; restarted, service resumes.
#[test]
fn without_quorum_nothing_is_granted_and_service_resumes_after() {
    let mut cluster = Cluster::start(3);
    let live = live();
    let all = ScopeTable::new(cluster.store("quorum"), live.clone());
    all.register(spec("root", 1, &["w:/srv/**"])).unwrap();
    let survivor = cluster.leader();
    let alone = ScopeTable::new(
        pod_scope_lock::EtcdStore::connect(
            &cluster.member_address(survivor, "quorum"),
            Cluster::options(),
        )
        .unwrap(),
        live.clone(),
    );
    let stopped: Vec<usize> = (0..3).filter(|&i| i != survivor).collect();
    for &i in &stopped {
        cluster.kill(i);
    }
    let err = alone
        .delegate(&name("root"), spec("kid", 2, &["w:/srv/k/**"]))
        .unwrap_err();
    assert!(
        matches!(err, ScopeError::Etcd(EtcdError::NoQuorum { .. })),
        "{err:?}"
    );
    let err = all
        .delegate(&name("root"), spec("kid2", 2, &["w:/srv/k2/**"]))
        .unwrap_err();
    assert!(
        matches!(
            err,
            ScopeError::Etcd(EtcdError::NoQuorum { .. } | EtcdError::Unreachable { .. })
        ),
        "{err:?}"
    );
    for &i in &stopped {
        cluster.restart(i);
    }
    cluster.wait_writable();
    let table = all.store().load().unwrap();
    assert_eq!(table.len(), 1, "nothing was granted without quorum");
    all.delegate(&name("root"), spec("kid", 2, &["w:/srv/k/**"]))
        .unwrap();
    alone
        .delegate(&name("root"), spec("kid2", 3, &["w:/srv/k2/**"]))
        .unwrap();
    assert_eq!(all.list().unwrap().len(), 3);
}
