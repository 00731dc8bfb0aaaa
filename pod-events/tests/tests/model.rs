//! Model-based property tests of the semantics table (DESIGN.md section 4).
//!
//! A generated tree of pods (depth up to 4, up to 30 pods) shares one
//! in-memory scope table; every pod that has children runs a `Parent` with
//! an in-memory registry. A generated multiset of events (shutdowns,
//! sub-delegations, stale events of older incarnations, legacy events
//! without incarnations, noise, duplicates) is delivered in a random order;
//! every relayed event is delivered to the relaying pod's parent, again at
//! a random point. Final states are compared across schedules and against
//! a closed-form model.
//!
//! `PROPTEST_CASES` raises the case count (default 48).

use std::collections::BTreeSet;

use pod_events::{render, FakeReachability, Origin, Parent, MAX_LINE_LEN};
use pod_protocol::{PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{Allocation, PodSpec, ScopeTable, Table};
use proptest::prelude::*;

type TestParent =
    Parent<MemoryRegistry, MemoryStore, FakeLiveness, pod_transport::UnixSender, FakeReachability>;

/// One pod of a generated tree.
#[derive(Debug, Clone)]
struct Pod {
    parent: Option<usize>,
    /// Speaks the protocol of existing Pods: no incarnation, no
    /// `spawner_socket`.
    legacy: bool,
    /// A previous incarnation under the same name left stale events.
    reused: bool,
    /// Sends its own `ShutDown`.
    shuts_down: bool,
    /// The stale incarnation's `ShutDown` is in the multiset too.
    stale_shutdown: bool,
    /// Dies without reporting (only used by the loss property).
    crashes: bool,
}

#[derive(Debug, Clone)]
struct Scenario {
    pods: Vec<Pod>,
    /// How many copies of each origin event are delivered (1..=3).
    copies: Vec<u8>,
}

fn name(i: usize) -> String {
    format!("p{i}")
}

fn socket(i: usize) -> String {
    format!("/run/pods/p{i}.sock")
}

fn stale_inc(i: usize) -> String {
    format!("old-{i}")
}

impl Scenario {
    fn target(&self, i: usize) -> String {
        match self.pods[i].parent {
            None => "/w".to_owned(),
            Some(p) => format!("{}/{}", self.target(p), name(i)),
        }
    }

    fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.pods[i].parent;
        while let Some(p) = at {
            out.push(p);
            at = self.pods[p].parent;
        }
        out
    }

    fn is_descendant(&self, x: usize, of: usize) -> bool {
        self.ancestors(x).contains(&of)
    }

    fn has_children(&self, i: usize) -> bool {
        self.pods.iter().any(|p| p.parent == Some(i))
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let pod = (any::<u32>(), any::<[bool; 5]>(), 0u8..10);
    proptest::collection::vec(pod, 1..30).prop_map(|raw| {
        let mut pods = vec![Pod {
            parent: None,
            legacy: false,
            reused: false,
            shuts_down: false,
            stale_shutdown: false,
            crashes: false,
        }];
        let mut depths = vec![0usize];
        let mut copies = Vec::new();
        for (i, (choice, flags, dup)) in raw.into_iter().enumerate() {
            let i = i + 1;
            let mut parent = choice as usize % i;
            while depths[parent] >= 4 {
                parent = pods[parent].parent.unwrap_or(0);
            }
            depths.push(depths[parent] + 1);
            // A legacy pod's older incarnations were legacy too: their
            // events are indistinguishable from the current one's.
            let legacy = flags[0] && flags[1];
            pods.push(Pod {
                parent: Some(parent),
                legacy,
                reused: flags[2] && !legacy,
                shuts_down: flags[3],
                stale_shutdown: flags[2] && !legacy && flags[4],
                crashes: !flags[3] && flags[4] && flags[0],
            });
            copies.push(1 + dup % 3);
        }
        Scenario { pods, copies }
    })
}

/// The shared environment and one parent per pod.
struct World {
    scopes: ScopeTable<MemoryStore, FakeLiveness>,
    liveness: FakeLiveness,
    probe: FakeReachability,
    parents: Vec<TestParent>,
}

/// Allocates the tree's scope once, so every world of a case shares the
/// same incarnations.
fn allocate(s: &Scenario) -> Vec<Allocation> {
    let liveness = FakeLiveness::new();
    let table = ScopeTable::new(MemoryStore::new(), liveness.clone());
    for (i, pod) in s.pods.iter().enumerate() {
        let pid = 1000 + i as u32;
        liveness.set(pid, Some(7));
        let spec = PodSpec {
            pod_name: PodName::new(name(i)).unwrap(),
            pid,
            socket: socket(i),
            scope: vec![ScopeRule::write(s.target(i))],
        };
        match pod.parent {
            None => table.register(spec).unwrap(),
            Some(p) => table
                .delegate(&PodName::new(name(p)).unwrap(), spec)
                .unwrap(),
        };
    }
    let mut all = table.list().unwrap();
    all.sort_by_key(|a| a.pid);
    all
}

fn inc_of(s: &Scenario, allocs: &[Allocation], i: usize) -> Option<String> {
    (!s.pods[i].legacy)
        .then(|| allocs[i].incarnation.clone())
        .flatten()
}

async fn build(s: &Scenario, allocs: &[Allocation]) -> World {
    let liveness = FakeLiveness::new();
    for a in allocs {
        liveness.set(a.pid, a.start_time);
    }
    let store = MemoryStore::with_table(allocs.iter().cloned().collect::<Table>());
    let scopes = ScopeTable::new(store, liveness.clone());
    let probe = FakeReachability::new();
    let mut parents = Vec::new();
    for i in 0..s.pods.len() {
        let registry = MemoryRegistry::new();
        for c in (0..s.pods.len()).filter(|&c| s.pods[c].parent == Some(i)) {
            registry
                .add(Record {
                    pod_name: PodName::new(name(c)).unwrap(),
                    socket_path: socket(c),
                    scope_delegated: vec![ScopeRule::write(s.target(c))],
                    callback_address: socket(i),
                    incarnation: inc_of(s, allocs, c),
                })
                .await
                .unwrap();
        }
        parents.push(Parent::new(
            PodName::new(name(i)).unwrap(),
            registry,
            scopes.clone(),
            probe.clone(),
        ));
    }
    World {
        scopes,
        liveness,
        probe,
        parents,
    }
}

/// The origin events: (destination pod, event).
fn origin_events(s: &Scenario, allocs: &[Allocation]) -> Vec<(usize, PodEvent)> {
    let mut out = Vec::new();
    for (x, pod) in s.pods.iter().enumerate() {
        let Some(parent) = pod.parent else { continue };
        let sub = |inc: Option<String>| PodEvent::ScopeSubDelegated {
            parent_pod: name(parent),
            sub_pod: name(x),
            sub_socket: socket(x),
            scope: vec![ScopeRule::write(s.target(x))],
            sub_incarnation: inc,
            spawner_socket: (!pod.legacy).then(|| socket(parent)),
        };
        if let Some(gp) = s.pods[parent].parent {
            out.push((gp, sub(inc_of(s, allocs, x))));
            if pod.reused {
                out.push((gp, sub(Some(stale_inc(x)))));
            }
        }
        if pod.shuts_down {
            out.push((
                parent,
                PodEvent::ShutDown {
                    pod_name: name(x),
                    incarnation: inc_of(s, allocs, x),
                },
            ));
        }
        if pod.stale_shutdown {
            out.push((
                parent,
                PodEvent::ShutDown {
                    pod_name: name(x),
                    incarnation: Some(stale_inc(x)),
                },
            ));
        }
        out.push((
            parent,
            PodEvent::TurnEnded {
                pod_name: name(x),
                incarnation: inc_of(s, allocs, x),
            },
        ));
        out.push((
            parent,
            PodEvent::Errored {
                pod_name: name(x),
                message: "boom\nfake line".into(),
                incarnation: None,
            },
        ));
    }
    out
}

/// Makes pods gone: their process dead and their socket closed.
fn kill(world: &World, allocs: &[Allocation], pods: impl Iterator<Item = usize>) {
    for x in pods {
        world.liveness.kill(allocs[x].pid);
        world.probe.set_down(socket(x), true);
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Delivers `events` (each `copies[i]` times when `dup`) in an order drawn
/// from `seed`, routing every relay to the relaying pod's parent. Each
/// delivery is dropped with probability `drop_percent`/100.
async fn deliver(
    s: &Scenario,
    world: &World,
    events: &[(usize, PodEvent)],
    dup: bool,
    seed: u64,
    drop_percent: u64,
) {
    let mut rng = Rng(seed);
    let mut pending: Vec<(usize, PodEvent)> = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let n = if dup {
            s.copies
                .get(i % s.copies.len().max(1))
                .copied()
                .unwrap_or(1)
        } else {
            1
        };
        pending.extend(std::iter::repeat_n(e.clone(), n as usize));
    }
    while !pending.is_empty() {
        let (dest, event) = pending.swap_remove((rng.next() % pending.len() as u64) as usize);
        if rng.next() % 100 < drop_percent {
            continue;
        }
        let effects = world.parents[dest].apply(&event).await;
        if let Some(up) = s.pods[dest].parent {
            pending.extend(effects.relayed.into_iter().map(|e| (up, e)));
        }
    }
}

/// A registry key: pod name and incarnation.
type Key = (String, Option<String>);

/// Every pod's records and departed set, and the scope table.
type Snapshot = (Vec<(Vec<Record>, BTreeSet<Key>)>, Vec<Allocation>);

/// Every pod's registry and departed set, and the scope table. Callback
/// addresses of legacy pods are blanked: a legacy sub-delegation carries
/// no `spawner_socket`, so its callback is looked up in the registry at
/// the time it arrives, which order may change.
fn snapshot(s: &Scenario, world: &World) -> Snapshot {
    let pods = world
        .parents
        .iter()
        .map(|p| {
            p.registry().read(|state| {
                let records = state
                    .records()
                    .cloned()
                    .map(|mut r| {
                        let i: usize = r.pod_name.as_str()[1..].parse().unwrap();
                        if s.pods[i].legacy {
                            r.callback_address.clear();
                        }
                        r
                    })
                    .collect();
                let departed = state
                    .departed()
                    .map(|t| (t.pod_name.to_string(), t.incarnation.clone()))
                    .collect();
                (records, departed)
            })
        })
        .collect();
    (pods, world.scopes.list().unwrap())
}

/// The closed-form final state: which (name, incarnation) each registry
/// holds and which pods the scope table still holds.
fn expected(s: &Scenario, allocs: &[Allocation]) -> (Vec<BTreeSet<Key>>, BTreeSet<String>) {
    let gone = |x: usize| s.pods[x].shuts_down;
    let registries = (0..s.pods.len())
        .map(|p| {
            (0..s.pods.len())
                .filter(|&x| s.is_descendant(x, p) && !gone(x))
                .map(|x| (name(x), inc_of(s, allocs, x)))
                .collect()
        })
        .collect();
    let held = (0..s.pods.len()).filter(|&x| !gone(x)).map(name).collect();
    (registries, held)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(48),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Properties 1-4: idempotence (duplicates change nothing),
    /// convergence (every schedule ends in the same registries, departed
    /// sets and scope table at every level), no resurrection and
    /// incarnation safety (the closed-form model).
    #[test]
    fn any_schedule_with_duplicates_converges_to_the_model(s in scenario(), seeds in any::<[u64; 2]>()) {
        let rt = runtime();
        let allocs = allocate(&s);
        let events = origin_events(&s, &allocs);
        let (reference, with_dups_a, with_dups_b) = rt.block_on(async {
            let mut out = Vec::new();
            for (dup, seed) in [(false, 0), (true, seeds[0]), (true, seeds[1])] {
                let world = build(&s, &allocs).await;
                // The environment is fixed for the whole run: a pod that
                // reports its shutdown is gone (pid dead, socket closed).
                kill(&world, &allocs, (0..s.pods.len()).filter(|&x| s.pods[x].shuts_down));
                deliver(&s, &world, &events, dup, seed, 0).await;
                out.push(snapshot(&s, &world));
            }
            (out.remove(0), out.remove(0), out.remove(0))
        });
        prop_assert_eq!(&reference, &with_dups_a);
        prop_assert_eq!(&reference, &with_dups_b);

        let (registries, held) = expected(&s, &allocs);
        for (p, (records, departed)) in reference.0.iter().enumerate() {
            let got: BTreeSet<_> = records.iter().map(|r| (r.pod_name.to_string(), r.incarnation.clone())).collect();
            prop_assert_eq!(&got, &registries[p], "registry of {}", name(p));
            for x in (0..s.pods.len()).filter(|&x| s.is_descendant(x, p) && s.pods[x].shuts_down) {
                prop_assert!(departed.contains(&(name(x), inc_of(&s, &allocs, x))), "{} lacks the departure of {}", name(p), name(x));
            }
        }
        let table: BTreeSet<String> = reference.1.iter().map(|a| a.pod_name.to_string()).collect();
        prop_assert_eq!(&table, &held);
        // Released pods' children moved to their nearest held ancestor.
        for a in &reference.1 {
            let i: usize = a.pod_name.as_str()[1..].parse().unwrap();
            let nearest = s.ancestors(i).into_iter().find(|&p| !s.pods[p].shuts_down).map(name);
            prop_assert_eq!(a.delegated_from.as_ref().map(|n| n.to_string()), nearest);
        }
        prop_assert!(reference.1.iter().cloned().collect::<Table>().check_invariant().is_ok());
    }

    /// Property 5: with any subset of deliveries dropped, one reconcile at
    /// each live parent makes its registry exactly its live descendants.
    #[test]
    fn one_reconcile_repairs_any_loss(s in scenario(), seed in any::<u64>(), drop_percent in 0u64..=100) {
        let rt = runtime();
        let allocs = allocate(&s);
        let events = origin_events(&s, &allocs);
        rt.block_on(async {
            let world = build(&s, &allocs).await;
            let dead = |x: usize| s.pods[x].shuts_down || s.pods[x].crashes;
            kill(&world, &allocs, (0..s.pods.len()).filter(|&x| dead(x)));
            deliver(&s, &world, &events, true, seed, drop_percent).await;
            for p in (0..s.pods.len()).filter(|&p| !dead(p) && s.has_children(p)) {
                world.parents[p].reconcile().await;
                let got: BTreeSet<String> = world.parents[p].registry().list().iter().map(|r| r.pod_name.to_string()).collect();
                let live: BTreeSet<String> = (0..s.pods.len()).filter(|&x| s.is_descendant(x, p) && !dead(x)).map(name).collect();
                prop_assert_eq!(&got, &live, "registry of {} after reconcile", name(p));
                for r in world.parents[p].registry().list() {
                    let i: usize = r.pod_name.as_str()[1..].parse().unwrap();
                    prop_assert!(r.incarnation.is_none() || r.incarnation.as_deref() == allocs[i].incarnation.as_deref());
                }
            }
            let held: BTreeSet<String> = world.scopes.list().unwrap().iter().map(|a| a.pod_name.to_string()).collect();
            let live: BTreeSet<String> = (0..s.pods.len()).filter(|&x| !dead(x)).map(name).collect();
            prop_assert_eq!(held, live);
            Ok(())
        })?;
    }

    /// Property 1, event by event: applying any event a second time right
    /// after the first changes nothing.
    #[test]
    fn applying_an_event_twice_equals_once(s in scenario(), pick in any::<prop::sample::Index>()) {
        let rt = runtime();
        let allocs = allocate(&s);
        let events = origin_events(&s, &allocs);
        prop_assume!(!events.is_empty());
        let (dest, event) = pick.get(&events).clone();
        rt.block_on(async {
            let world = build(&s, &allocs).await;
            world.parents[dest].apply(&event).await;
            let once = snapshot(&s, &world);
            let again = world.parents[dest].apply(&event).await;
            prop_assert!(again.relayed.is_empty(), "a duplicate was relayed: {:?}", again.relayed);
            prop_assert_eq!(once, snapshot(&s, &world));
            Ok(())
        })?;
    }

    /// Property 6: whatever strings a child sends, the rendered line is one
    /// line without control characters, and bounded.
    #[test]
    fn rendering_is_one_bounded_line(a in any::<String>(), b in any::<String>(), c in any::<String>(), inferred in any::<bool>()) {
        let origin = if inferred { Origin::Inferred } else { Origin::Reported };
        let events = [
            PodEvent::TurnEnded { pod_name: a.clone(), incarnation: None },
            PodEvent::Errored { pod_name: a.clone(), message: b.repeat(20), incarnation: Some(c.clone()) },
            PodEvent::ShutDown { pod_name: b.clone(), incarnation: None },
            PodEvent::ScopeSubDelegated {
                parent_pod: a.repeat(50), sub_pod: b, sub_socket: c.clone(),
                scope: vec![ScopeRule::write(c.clone()); 20], sub_incarnation: None, spawner_socket: Some(c),
            },
        ];
        for event in &events {
            let line = render(event, origin);
            prop_assert!(line.len() <= MAX_LINE_LEN, "{} bytes", line.len());
            prop_assert!(!line.chars().any(|ch| ch.is_control() || ch == '\u{2028}' || ch == '\u{2029}'), "{line:?}");
        }
    }
}

#[test]
fn a_stale_shutdown_never_touches_the_new_incarnation() {
    let s = Scenario {
        pods: vec![
            Pod {
                parent: None,
                legacy: false,
                reused: false,
                shuts_down: false,
                stale_shutdown: false,
                crashes: false,
            },
            Pod {
                parent: Some(0),
                legacy: false,
                reused: true,
                shuts_down: false,
                stale_shutdown: true,
                crashes: false,
            },
        ],
        copies: vec![1],
    };
    runtime().block_on(async {
        let allocs = allocate(&s);
        let world = build(&s, &allocs).await;
        let effects = world.parents[0]
            .apply(&PodEvent::ShutDown {
                pod_name: name(1),
                incarnation: Some(stale_inc(1)),
            })
            .await;
        assert!(
            effects.removed.is_empty() && effects.released.is_none(),
            "{effects:?}"
        );
        assert_eq!(world.parents[0].registry().list().len(), 1);
        assert_eq!(world.scopes.list().unwrap().len(), 2);
        // The current incarnation's shutdown does remove it, once.
        let shut = PodEvent::ShutDown {
            pod_name: name(1),
            incarnation: allocs[1].incarnation.clone(),
        };
        let effects = world.parents[0].apply(&shut).await;
        assert_eq!(effects.removed.len(), 1);
        assert!(effects.released.is_some());
        assert_eq!(effects.relayed, vec![shut]);
    });
}
