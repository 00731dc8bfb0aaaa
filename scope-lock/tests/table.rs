//! The rules of the table, through `ScopeTable` on the in-memory store with
//! fake liveness.

use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{Allocation, PodName, PodSpec, ScopeError, ScopeTable, Table};

use crate::{name, rule, spec};

struct Env {
    table: ScopeTable<MemoryStore, FakeLiveness>,
    live: FakeLiveness,
    store: MemoryStore,
}

/// A table with processes 1..=20 alive.
fn env() -> Env {
    let live = FakeLiveness::new();
    for pid in 1..=20 {
        live.spawn(pid);
    }
    let store = MemoryStore::new();
    Env {
        table: ScopeTable::new(store.clone(), live.clone()),
        live,
        store,
    }
}

impl Env {
    fn register(&self, pod: &str, pid: u32, rules: &[&str]) -> Result<Allocation, ScopeError> {
        self.table.register(spec(pod, pid, rules))
    }

    fn delegate(
        &self,
        from: &str,
        pod: &str,
        pid: u32,
        rules: &[&str],
    ) -> Result<Allocation, ScopeError> {
        self.table.delegate(&name(from), spec(pod, pid, rules))
    }

    /// `(name, parent)` of every allocation, sorted by name; and checks the
    /// invariant.
    fn tree(&self) -> Vec<(String, Option<String>)> {
        let table = self.store_table();
        table.check_invariant().unwrap();
        table
            .allocations()
            .map(|a| {
                (
                    a.pod_name.to_string(),
                    a.delegated_from.as_ref().map(|p| p.to_string()),
                )
            })
            .collect()
    }

    fn store_table(&self) -> Table {
        use pod_scope_lock::TableStore;
        self.store.load().unwrap()
    }

    fn owner(&self, path: &str) -> Option<String> {
        self.table
            .owner_of(path)
            .unwrap()
            .map(|a| a.pod_name.to_string())
    }
}

fn node(pod: &str, parent: Option<&str>) -> (String, Option<String>) {
    (pod.to_owned(), parent.map(str::to_owned))
}

fn competitor(result: Result<Allocation, ScopeError>) -> String {
    match result {
        Err(ScopeError::WriteConflict { competitor, .. }) => competitor.to_string(),
        other => panic!("expected a write conflict, got {other:?}"),
    }
}

#[test]
fn register_refuses_overlapping_write_scope_and_names_the_competitor() {
    let env = env();
    env.register("w2", 1, &["w:/srv/a/**"]).unwrap();
    let err = env.register("w3", 2, &["w:/srv/a/**"]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "write conflict: /srv/a (write, recursive) overlaps the scope of pod `w2`; wait until it is released or request a disjoint scope"
    );
    assert_eq!(competitor(env.register("w3", 2, &["w:/srv/a/b/*"])), "w2");
    assert_eq!(competitor(env.register("w3", 2, &["w:/srv/*"])), "w2");
    assert_eq!(competitor(env.register("w3", 2, &["w:/**"])), "w2");
    env.register("w3", 2, &["w:/srv/ab/**", "w:/srv/b/*"])
        .unwrap();
    assert_eq!(
        competitor(env.register("w4", 3, &["r:/x/**", "w:/srv/b/c/**"])),
        "w3"
    );
    assert_eq!(env.tree(), vec![node("w2", None), node("w3", None)]);
}

#[test]
fn read_rules_never_conflict() {
    let env = env();
    env.register("a", 1, &["w:/srv/**"]).unwrap();
    env.register("b", 2, &["r:/srv/**", "r:/**"]).unwrap();
    env.register("c", 3, &["r:/srv/x/*"]).unwrap();
    assert_eq!(env.tree().len(), 3);
}

#[test]
fn register_refuses_a_duplicate_name_even_without_overlap() {
    let env = env();
    env.register("w1", 1, &["w:/a/**"]).unwrap();
    assert!(matches!(
        env.register("w1", 2, &["w:/b/**"]),
        Err(ScopeError::DuplicateName { name }) if name.as_str() == "w1"
    ));
}

#[test]
fn register_refuses_a_dead_process_and_changes_nothing() {
    let env = env();
    assert!(matches!(
        env.register("w1", 99, &["w:/a/**"]),
        Err(ScopeError::DeadProcess { pid: 99 })
    ));
    assert!(env.tree().is_empty());
    assert_eq!(env.store.writes(), 0);
}

#[test]
fn an_allocation_socket_may_be_any_address_form() {
    let env = env();
    for (i, socket) in [
        "/run/pods/a/sock",
        "unix:/run/pods/b/sock",
        "tls://pods.example:7443",
        "tls://127.0.0.1:7443",
        "tls://[::1]:7443",
    ]
    .into_iter()
    .enumerate()
    {
        let pod = format!("w{i}");
        let target = format!("w:/srv/{i}/**");
        let allocation = env
            .table
            .register(PodSpec {
                socket: socket.into(),
                ..spec(&pod, 2, &[&target])
            })
            .unwrap();
        assert_eq!(allocation.socket, socket);
    }
    // The stored table passes the invariant check every load runs.
    assert_eq!(env.tree().len(), 5);
}

#[test]
fn invalid_requests_are_refused_before_any_change() {
    let env = env();
    env.register("root", 1, &["w:/srv/**"]).unwrap();
    let writes = env.store.writes();
    for bad in [
        spec("w1", 2, &["w:/srv/../etc"]),
        spec("w1", 2, &["w:/srv/./x"]),
        spec("w1", 2, &["w:srv/x"]),
        spec("w1", 2, &["w:/srv/x/"]),
        spec("w1", 2, &[]),
        PodSpec {
            socket: "relative.sock".into(),
            ..spec("w1", 2, &["w:/x/**"])
        },
    ]
    .into_iter()
    .chain(
        // Address forms (DESIGN.md section 13) that are not valid.
        [
            "unix:relative.sock",
            "unix:/run/../x",
            "tls://pods.example",
            "tls://pods.example:0",
            "tls://pods.example:70000",
            "tls://:7443",
            "tls://-bad-.example:7443",
            "tls://[::1:7443",
            "https://pods.example:7443",
        ]
        .map(|socket| PodSpec {
            socket: socket.into(),
            ..spec("w1", 2, &["w:/x/**"])
        }),
    ) {
        assert!(
            matches!(
                env.table.register(bad.clone()),
                Err(ScopeError::InvalidRule(_))
            ),
            "{bad:?}"
        );
        assert!(
            matches!(
                env.table.delegate(&name("root"), bad.clone()),
                Err(ScopeError::InvalidRule(_))
            ),
            "{bad:?}"
        );
    }
    // `/srv/a/../../etc` must not pass as inside `/srv`.
    let escape = spec("w1", 2, &["w:/srv/a/../../etc"]);
    assert!(matches!(
        env.table.delegate(&name("root"), escape),
        Err(ScopeError::InvalidRule(_))
    ));
    assert_eq!(env.store.writes(), writes);
    assert!(matches!(
        env.table.owner_of("/srv/../etc"),
        Err(ScopeError::InvalidRule(_))
    ));
}

#[test]
fn delegation_must_stay_inside_one_spawner_rule_of_at_least_that_permission() {
    let env = env();
    env.register("root", 1, &["w:/srv/**", "r:/usr/**", "w:/tmp/t/*"])
        .unwrap();
    env.delegate(
        "root",
        "c1",
        2,
        &["w:/srv/a/**", "r:/srv/b/*", "r:/usr/lib/**"],
    )
    .unwrap();
    env.delegate("root", "c2", 3, &["w:/tmp/t/*"]).unwrap();
    env.register("two", 5, &["w:/m/a/**", "w:/m/*"]).unwrap();
    // (spawner, the one requested rule): refused as not covered.
    for (spawner, requested) in [
        ("root", "w:/usr/lib/**"),
        ("root", "w:/etc/**"),
        ("root", "w:/**"),
        // A non-recursive rule covers only itself, not a recursive rule or
        // one below its target.
        ("c2", "w:/tmp/t/**"),
        ("c2", "w:/tmp/t/u/*"),
        ("c1", "r:/srv/b/c/*"),
        // Not a string prefix.
        ("c1", "w:/srv/ab/**"),
        // Spanning two spawner rules is not covered by one.
        ("two", "w:/m/**"),
    ] {
        match env.delegate(spawner, "x", 6, &[requested]) {
            Err(ScopeError::NotSubset {
                spawner: s,
                rule: r,
            }) => {
                assert_eq!((s.as_str(), r), (spawner, rule(requested)));
            }
            other => panic!("{spawner} {requested}: expected NotSubset, got {other:?}"),
        }
    }
    assert!(matches!(
        env.delegate("ghost", "x", 4, &["w:/srv/**"]),
        Err(ScopeError::UnknownPod { name }) if name.as_str() == "ghost"
    ));
    assert!(matches!(
        env.delegate("root", "c1", 4, &["w:/srv/z/**"]),
        Err(ScopeError::DuplicateName { .. })
    ));
    assert!(matches!(
        env.delegate("root", "root", 4, &["w:/srv/z/**"]),
        Err(ScopeError::DuplicateName { .. })
    ));
    env.delegate("c2", "g", 4, &["w:/tmp/t/*"]).unwrap();
}

#[test]
fn delegation_may_overlap_the_lineage_but_not_other_children_or_their_subtrees() {
    let env = env();
    env.register("root", 1, &["w:/a/**"]).unwrap();
    // The whole of the spawner's scope may be handed down, twice over.
    env.delegate("root", "c1", 2, &["w:/a/b/**"]).unwrap();
    env.delegate("c1", "g1", 3, &["w:/a/b/**"]).unwrap();
    env.delegate("g1", "gg1", 4, &["w:/a/b/c/*"]).unwrap();
    // Siblings and their subtrees are off limits; the conflict names the
    // pod that writes there itself: c1 handed all of /a/b to g1.
    assert_eq!(
        competitor(env.delegate("root", "c2", 5, &["w:/a/b/c/**"])),
        "g1"
    );
    assert_eq!(competitor(env.delegate("root", "c2", 5, &["w:/a/*"])), "g1");
    assert_eq!(
        competitor(env.delegate("c1", "g2", 5, &["w:/a/b/c/d/**"])),
        "g1"
    );
    assert_eq!(
        competitor(env.delegate("g1", "gg2", 5, &["w:/a/b/c/d/*"])),
        "gg1"
    );
    // Disjoint pieces are fine, including the non-recursive gap.
    env.delegate("g1", "gg2", 5, &["w:/a/b/c/d/e/**"]).unwrap();
    env.delegate("root", "c2", 6, &["w:/a/x/**", "r:/a/b/**"])
        .unwrap();
    assert_eq!(
        env.tree(),
        vec![
            node("c1", Some("root")),
            node("c2", Some("root")),
            node("g1", Some("c1")),
            node("gg1", Some("g1")),
            node("gg2", Some("g1")),
            node("root", None),
        ]
    );
    assert_eq!(env.owner("/a/b/c/d/e/f").as_deref(), Some("gg2"));
    assert_eq!(env.owner("/a/b/c/d/x").as_deref(), Some("g1"));
    assert_eq!(env.owner("/a/b/c/d").as_deref(), Some("gg1"));
    assert_eq!(env.owner("/a/b").as_deref(), Some("g1"));
    assert_eq!(env.owner("/a/x/y").as_deref(), Some("c2"));
    assert_eq!(env.owner("/a/y").as_deref(), Some("root"));
    assert_eq!(env.owner("/b"), None);
    assert_eq!(env.owner("/"), None);
}

#[test]
fn effective_write_scope_excludes_what_the_children_hold() {
    let env = env();
    env.register("root", 1, &["w:/a/**", "r:/usr/**"]).unwrap();
    env.delegate("root", "c1", 2, &["w:/a/b/*", "r:/a/c/**"])
        .unwrap();
    env.delegate("c1", "g1", 3, &["w:/a/b/*"]).unwrap();
    let scope = env.table.effective_write_scope(&name("root")).unwrap();
    assert_eq!(scope.write, vec![rule("w:/a/**")]);
    assert_eq!(scope.excluded.len(), 1);
    assert_eq!(scope.excluded[0].pod_name.as_str(), "c1");
    assert!(scope.covers_path("/a"));
    assert!(
        scope.covers_path("/a/c/x"),
        "read rules of children exclude nothing"
    );
    assert!(!scope.covers_path("/a/b"));
    assert!(!scope.covers_path("/a/b/x"));
    assert!(
        scope.covers_path("/a/b/x/y"),
        "below the child's non-recursive rule"
    );
    assert!(!scope.covers_path("/usr/lib"));
    assert!(!scope.covers_path("/a/../usr"));
    let c1 = env.table.effective_write_scope(&name("c1")).unwrap();
    assert!(!c1.covers_path("/a/b/x"), "held by g1");
    assert!(env
        .table
        .effective_write_scope(&name("g1"))
        .unwrap()
        .covers_path("/a/b/x"));
    assert!(matches!(
        env.table.effective_write_scope(&name("nobody")),
        Err(ScopeError::UnknownPod { .. })
    ));
}

#[test]
fn release_reparents_children_to_the_released_pods_parent() {
    let env = env();
    env.register("root", 1, &["w:/a/**"]).unwrap();
    env.delegate("root", "c", 2, &["w:/a/b/**"]).unwrap();
    env.delegate("c", "g1", 3, &["w:/a/b/c/**"]).unwrap();
    env.delegate("c", "g2", 4, &["w:/a/b/d/**"]).unwrap();
    env.table.release(&name("c"), None).unwrap();
    assert_eq!(
        env.tree(),
        vec![
            node("g1", Some("root")),
            node("g2", Some("root")),
            node("root", None)
        ]
    );
    assert_eq!(env.owner("/a/b/x").as_deref(), Some("root"));
    env.table.release(&name("root"), None).unwrap();
    assert_eq!(env.tree(), vec![node("g1", None), node("g2", None)]);
    // The freed scope can be taken, but not what the orphans still hold.
    env.register("new", 5, &["w:/a/x/**"]).unwrap();
    assert_eq!(competitor(env.register("new2", 6, &["w:/a/b/*"])), "g1");
}

#[test]
fn release_checks_the_incarnation() {
    let env = env();
    let first = env.register("w", 1, &["w:/a/**"]).unwrap();
    env.table
        .release(&name("w"), first.incarnation.as_deref())
        .unwrap();
    let second = env.register("w", 2, &["w:/a/**"]).unwrap();
    assert_ne!(first.incarnation, second.incarnation);
    let writes = env.store.writes();
    match env.table.release(&name("w"), first.incarnation.as_deref()) {
        Err(ScopeError::IncarnationMismatch {
            name,
            held,
            requested,
        }) => {
            assert_eq!(name.as_str(), "w");
            assert_eq!(Some(held), second.incarnation.clone());
            assert_eq!(Some(requested), first.incarnation);
        }
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(env.store.writes(), writes);
    assert_eq!(env.table.find(&name("w")).unwrap(), Some(second.clone()));
    assert_eq!(env.table.release(&name("w"), None).unwrap(), second);
    assert!(matches!(
        env.table.release(&name("w"), None),
        Err(ScopeError::UnknownPod { name }) if name.as_str() == "w"
    ));
}

#[test]
fn incarnations_are_128_bit_hex_and_distinct() {
    let env = env();
    let mut seen = std::collections::HashSet::new();
    for i in 0..50 {
        let a = env
            .register(&format!("p{i}"), 1, &[&format!("w:/x/{i}/**")])
            .unwrap();
        let incarnation = a.incarnation.unwrap();
        assert_eq!(incarnation.len(), 32);
        assert!(incarnation.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(seen.insert(incarnation));
    }
}

#[test]
fn reclaim_releases_dead_and_reused_pids_and_reparents_to_the_nearest_survivor() {
    let env = env();
    env.register("root", 1, &["w:/a/**"]).unwrap();
    env.delegate("root", "c", 2, &["w:/a/b/**"]).unwrap();
    env.delegate("c", "g", 3, &["w:/a/b/c/**"]).unwrap();
    env.delegate("g", "gg", 4, &["w:/a/b/c/d/**"]).unwrap();
    env.register("other", 5, &["w:/z/**"]).unwrap();
    assert!(env.table.reclaim_stale().unwrap().is_empty());
    env.live.kill(2);
    env.live.reuse(3);
    let reclaimed: Vec<String> = env
        .table
        .reclaim_stale()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(reclaimed, ["c", "g"]);
    assert_eq!(
        env.tree(),
        vec![
            node("gg", Some("root")),
            node("other", None),
            node("root", None)
        ]
    );
    env.live.kill(1);
    env.table.reclaim_stale().unwrap();
    assert_eq!(env.tree(), vec![node("gg", None), node("other", None)]);
}

#[test]
fn register_and_delegate_reclaim_what_blocks_them_and_keep_it_when_refused() {
    let env = env();
    env.register("old", 1, &["w:/a/**"]).unwrap();
    env.register("live", 2, &["w:/b/**"]).unwrap();
    env.live.kill(1);
    // The dead holder of /a no longer blocks it: it is reclaimed.
    env.register("new", 3, &["w:/a/**"]).unwrap();
    assert_eq!(env.tree(), vec![node("live", None), node("new", None)]);
    env.register("old2", 4, &["w:/c/**"]).unwrap();
    env.live.kill(4);
    // Refused because of a live competitor; the dead pod, which does not
    // stand in the way, stays until a full reclaim.
    assert_eq!(competitor(env.register("x", 5, &["w:/b/**"])), "live");
    assert_eq!(
        env.tree(),
        vec![node("live", None), node("new", None), node("old2", None)]
    );
    // A dead holder of the name is reclaimed, and the name reused.
    env.register("old2", 6, &["w:/d/**"]).unwrap();
    assert_eq!(env.store_table().get("old2").unwrap().pid, 6);
    // Dead competitors met before the live one (in name order) are reclaimed
    // even though the request is refused; one met after it is not probed.
    env.register("aa", 7, &["w:/e/x/**"]).unwrap();
    env.register("bb", 8, &["w:/e/y/**"]).unwrap();
    env.register("cc", 9, &["w:/e/z/**"]).unwrap();
    env.live.kill(7);
    env.live.kill(9);
    assert_eq!(competitor(env.register("x", 10, &["w:/e/**"])), "bb");
    assert!(env.store_table().get("aa").is_none());
    assert!(env.store_table().get("cc").is_some());
    // A dead spawner is reclaimed before it could delegate; its child is
    // reparented as by a full reclaim.
    env.delegate("new", "child", 11, &["w:/a/x/**"]).unwrap();
    env.live.kill(3);
    assert!(matches!(
        env.delegate("new", "other", 12, &["w:/a/y/**"]),
        Err(ScopeError::UnknownPod { .. })
    ));
    assert_eq!(
        env.tree(),
        vec![
            node("bb", None),
            node("cc", None),
            node("child", None),
            node("live", None),
            node("old2", None)
        ]
    );
    let reclaimed: Vec<String> = env
        .table
        .reclaim_stale()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(reclaimed, ["cc"]);
}

#[test]
fn a_dead_ancestor_of_the_spawner_is_not_probed_and_does_not_block() {
    let env = env();
    env.register("root", 1, &["w:/a/**"]).unwrap();
    env.delegate("root", "mid", 2, &["w:/a/b/**"]).unwrap();
    env.delegate("mid", "leaf", 3, &["w:/a/b/c/**"]).unwrap();
    env.live.kill(1);
    env.live.kill(2);
    // The request overlaps the dead ancestors' scope, which it comes from.
    env.delegate("leaf", "x", 4, &["w:/a/b/c/d/**"]).unwrap();
    assert_eq!(
        env.tree(),
        vec![
            node("leaf", Some("mid")),
            node("mid", Some("root")),
            node("root", None),
            node("x", Some("leaf"))
        ]
    );
    env.table.reclaim_stale().unwrap();
    assert_eq!(
        env.tree(),
        vec![node("leaf", None), node("x", Some("leaf"))]
    );
}

#[test]
fn a_failed_write_changes_nothing() {
    let env = env();
    env.register("a", 1, &["w:/a/**"]).unwrap();
    env.store.fail_next_writes(1);
    assert!(matches!(
        env.register("b", 2, &["w:/b/**"]),
        Err(ScopeError::Io { .. })
    ));
    assert_eq!(env.tree(), vec![node("a", None)]);
    // Refusals write nothing, so they do not use up an injected failure.
    env.store.fail_next_writes(1);
    assert!(matches!(
        env.register("a", 2, &["w:/b/**"]),
        Err(ScopeError::DuplicateName { .. })
    ));
    assert!(matches!(
        env.table.release(&name("a"), None),
        Err(ScopeError::Io { .. })
    ));
    assert_eq!(env.tree(), vec![node("a", None)]);
    env.register("b", 2, &["w:/b/**"]).unwrap();
    assert_eq!(env.tree(), vec![node("a", None), node("b", None)]);
}

#[test]
fn lookups() {
    let env = env();
    env.register("zeta", 1, &["w:/z/**"]).unwrap();
    let alpha = env.register("alpha", 2, &["w:/a/**"]).unwrap();
    let names: Vec<String> = env
        .table
        .list()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(names, ["alpha", "zeta"]);
    assert_eq!(env.table.find(&name("alpha")).unwrap(), Some(alpha.clone()));
    assert_eq!(env.table.find(&name("beta")).unwrap(), None);
    assert!(env.table.is_live(&alpha));
    env.live.reuse(2);
    assert!(!env.table.is_live(&alpha));
    assert_eq!(alpha.socket, "/run/pods/alpha.sock");
    assert_eq!(alpha.pid, 2);
    assert_eq!(alpha.delegated_from, None);
}

fn allocation(pod: &str, parent: Option<&str>, rules: &[&str]) -> Allocation {
    Allocation {
        pod_name: name(pod),
        pid: 1,
        start_time: Some(1),
        socket: format!("/run/{pod}.sock"),
        scope_allow: rules.iter().map(|r| rule(r)).collect(),
        delegated_from: parent.map(name),
        incarnation: Some("00".into()),
        pending_until: None,
        reparented: 0,
    }
}

/// Builds a table unchecked and returns what `check_invariant` says.
fn invariant(allocations: Vec<Allocation>) -> Result<(), String> {
    allocations.into_iter().collect::<Table>().check_invariant()
}

#[test]
fn check_invariant_finds_each_kind_of_breakage() {
    let ok = invariant(vec![
        allocation("r", None, &["w:/a/**"]),
        allocation("c", Some("r"), &["w:/a/b/*"]),
        allocation("d", Some("r"), &["w:/a/b/c/d/**"]),
        allocation("s", None, &["w:/ab/**", "r:/a/**"]),
    ]);
    assert_eq!(ok, Ok(()));
    let strangers = invariant(vec![
        allocation("r", None, &["w:/a/**"]),
        allocation("s", None, &["w:/x/**", "w:/a/b/*"]),
    ]);
    assert!(strangers.unwrap_err().starts_with("(a)"));
    let siblings = invariant(vec![
        allocation("r", None, &["w:/a/**"]),
        allocation("c1", Some("r"), &["w:/a/b/*"]),
        allocation("c2", Some("r"), &["w:/a/b/c/**"]),
    ]);
    assert!(siblings.unwrap_err().starts_with("(a)"));
    let cousins = invariant(vec![
        allocation("r", None, &["w:/a/**"]),
        allocation("c1", Some("r"), &["w:/a/b/**"]),
        allocation("c2", Some("r"), &["w:/a/c/**"]),
        allocation("g1", Some("c1"), &["w:/a/b/x/**"]),
        allocation("g2", Some("c2"), &["w:/a/b/x/**"]),
    ]);
    assert!(cousins.unwrap_err().starts_with("(b)"));
    let uncovered = invariant(vec![
        allocation("r", None, &["w:/a/*"]),
        allocation("c", Some("r"), &["w:/a/b/**"]),
    ]);
    assert!(uncovered.unwrap_err().starts_with("(b)"));
    let upgraded = invariant(vec![
        allocation("r", None, &["r:/a/**"]),
        allocation("c", Some("r"), &["w:/a/b/**"]),
    ]);
    assert!(upgraded.unwrap_err().starts_with("(b)"));
    let dangling = invariant(vec![allocation("c", Some("gone"), &["w:/a/**"])]);
    assert!(dangling.unwrap_err().starts_with("(c)"));
    let cycle = invariant(vec![
        allocation("x", Some("y"), &["w:/a/**"]),
        allocation("y", Some("x"), &["w:/a/**"]),
    ]);
    assert!(cycle.unwrap_err().starts_with("(c)"));
    let bad_path = invariant(vec![allocation("r", None, &["w:/a/../b"])]);
    assert!(bad_path.unwrap_err().contains("`..`"));
    let no_rules = invariant(vec![allocation("r", None, &[])]);
    assert!(no_rules.unwrap_err().contains("empty scope"));
}

#[test]
fn reclaim_on_an_unchecked_cycle_terminates() {
    let mut table: Table = vec![
        allocation("x", Some("y"), &["w:/a/**"]),
        allocation("y", Some("x"), &["w:/a/**"]),
        allocation("z", Some("x"), &["w:/a/**"]),
    ]
    .into_iter()
    .collect();
    let removed = table.reclaim(|a| a.pod_name.as_str() == "z");
    assert_eq!(removed.len(), 2);
    assert_eq!(table.get("z").unwrap().delegated_from, None);
}

#[test]
fn errors_say_what_to_do() {
    let env = env();
    env.register("r", 1, &["r:/a/**"]).unwrap();
    let not_subset = env
        .delegate("r", "c", 2, &["w:/a/b/**"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        not_subset,
        "cannot delegate /a/b (write, recursive): pod `r` holds no rule covering it with at least write permission; delegate only a sub-scope of the spawner's own"
    );
    let unknown = env
        .table
        .release(&name("zz"), None)
        .unwrap_err()
        .to_string();
    assert!(
        unknown.contains("no scope allocation for pod `zz`"),
        "{unknown}"
    );
    let dead = env.register("d", 77, &["w:/d/**"]).unwrap_err().to_string();
    assert!(dead.contains("process 77 is not running"), "{dead}");
}

/// One blame case: the tree (name, parent, rules; pids 1.. in order), the
/// request (`from` is `None` for a register), the pods dead at request
/// time, and the competitor the conflict must name.
struct Blame {
    tree: &'static [(&'static str, Option<&'static str>, &'static [&'static str])],
    from: Option<&'static str>,
    request: &'static str,
    dead: &'static [&'static str],
    blamed: &'static str,
}

#[test]
fn a_write_conflict_names_the_pod_whose_effective_scope_overlaps() {
    const NESTED: &[(&str, Option<&str>, &[&str])] = &[
        ("root", None, &["w:/srv/**"]),
        ("c1", Some("root"), &["w:/srv/p1/sub/**"]),
        ("c5", Some("c1"), &["w:/srv/p1/sub/deeper/**"]),
        ("g", Some("c5"), &["w:/srv/p1/sub/deeper/x/y/**"]),
    ];
    const WHOLE: &[(&str, Option<&str>, &[&str])] =
        &[("a", None, &["w:/x/**"]), ("b", Some("a"), &["w:/x/**"])];
    let cases = [
        // The issue's example: c1 delegated /srv/p1/sub/deeper to c5.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/deeper/x/**",
            dead: &[],
            blamed: "c5",
        },
        // Deeper still, inside g's rule.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/deeper/x/y/z/**",
            dead: &[],
            blamed: "g",
        },
        // Inside c1 but outside what it delegated: c1 writes there itself.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/other/**",
            dead: &[],
            blamed: "c1",
        },
        // Straddling c1's own scope and c5's: c1's effective scope overlaps.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/**",
            dead: &[],
            blamed: "c1",
        },
        // Above everything: root and c1 both write there themselves (c5 and
        // g too); the scan meets c1 first (by name), and c5 does not take
        // all of c1's part.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/**",
            dead: &[],
            blamed: "c1",
        },
        // Delegating from root: c1 is outside root's lineage, c5 below it.
        Blame {
            tree: NESTED,
            from: Some("root"),
            request: "w:/srv/p1/sub/deeper/q/**",
            dead: &[],
            blamed: "c5",
        },
        // A dead c5 is reclaimed: its scope returns to c1, whom it names;
        // g, c5's child, is reparented to c1 and still owns its part.
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/deeper/q/**",
            dead: &["c5"],
            blamed: "c1",
        },
        Blame {
            tree: NESTED,
            from: None,
            request: "w:/srv/p1/sub/deeper/x/y/**",
            dead: &["c5"],
            blamed: "g",
        },
        // Everything a holds is delegated whole to b: a writes nowhere.
        Blame {
            tree: WHOLE,
            from: None,
            request: "w:/x/y/**",
            dead: &[],
            blamed: "b",
        },
        Blame {
            tree: WHOLE,
            from: None,
            request: "w:/**",
            dead: &[],
            blamed: "b",
        },
        // A non-recursive request inside b's rule.
        Blame {
            tree: WHOLE,
            from: None,
            request: "w:/x/*",
            dead: &[],
            blamed: "b",
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let env = env();
        for (pid, (pod, parent, rules)) in (1..).zip(case.tree) {
            match parent {
                None => env.register(pod, pid, rules).unwrap(),
                Some(parent) => env.delegate(parent, pod, pid, rules).unwrap(),
            };
        }
        for dead in case.dead {
            let pid = 1 + case.tree.iter().position(|(p, _, _)| p == dead).unwrap() as u32;
            env.live.kill(pid);
        }
        let result = match case.from {
            None => env.register("new", 20, &[case.request]),
            Some(from) => env.delegate(from, "new", 20, &[case.request]),
        };
        assert_eq!(
            competitor(result),
            case.blamed,
            "case {i}: {}",
            case.request
        );
        let held: Vec<String> = env.tree().into_iter().map(|(n, _)| n).collect();
        for dead in case.dead {
            assert!(
                !held.contains(&dead.to_string()),
                "case {i}: {dead} was reclaimed"
            );
        }
    }
}

#[test]
fn a_reservation_is_held_by_the_spawner_until_adopted_and_stale_after_its_deadline() {
    let env = env();
    let table = env
        .table
        .clone()
        .with_reservation_deadline(std::time::Duration::from_millis(500));
    let root = env.register("root", 1, &["w:/srv/**"]).unwrap();
    let now = {
        use pod_scope_lock::Liveness;
        env.live.now_unix_ms()
    };
    // The rules of delegate apply.
    assert!(matches!(
        table.reserve(&name("root"), spec("kid", 9, &["w:/etc/**"])),
        Err(ScopeError::NotSubset { .. })
    ));
    assert!(matches!(
        table.reserve(&name("nobody"), spec("kid", 9, &["w:/srv/a/**"])),
        Err(ScopeError::UnknownPod { .. })
    ));
    // Held under the spawner's process (the spec's pid, 19, plays no
    // part: the child is not running yet), with a deadline.
    let kid = table
        .reserve(&name("root"), spec("kid", 19, &["w:/srv/a/**"]))
        .unwrap();
    assert_eq!((kid.pid, kid.start_time), (root.pid, root.start_time));
    assert_eq!(kid.pending_until, Some(now + 500));
    assert_eq!(kid.incarnation.as_ref().map(String::len), Some(32));
    assert_eq!(env.owner("/srv/a/x").as_deref(), Some("kid"));
    let incarnation = kid.incarnation.clone().unwrap();

    // Adopting: the incarnation must be the minted one, the process live.
    assert!(matches!(
        table.adopt(&name("kid"), "0000", 3),
        Err(ScopeError::IncarnationMismatch { .. })
    ));
    assert!(matches!(
        table.adopt(&name("kid"), &incarnation, 99),
        Err(ScopeError::DeadProcess { pid: 99 })
    ));
    assert!(matches!(
        table.adopt(&name("nobody"), &incarnation, 3),
        Err(ScopeError::UnknownPod { .. })
    ));
    let adopted = table.adopt(&name("kid"), &incarnation, 3).unwrap();
    assert_eq!(adopted.pid, 3);
    assert_eq!(
        adopted.start_time,
        pod_scope_lock::Liveness::start_time(&env.live, 3)
    );
    assert_eq!(adopted.pending_until, None);
    assert_eq!(adopted.incarnation.as_deref(), Some(incarnation.as_str()));
    assert_eq!(table.find(&name("kid")).unwrap(), Some(adopted));
    assert!(matches!(
        table.adopt(&name("kid"), &incarnation, 3),
        Err(ScopeError::NotReserved { .. })
    ));
    // Adopted, it lives by its own process, not by the deadline.
    env.live.advance_ms(10_000);
    assert!(table.reclaim_stale().unwrap().is_empty());

    // An expired reservation cannot be adopted and is reclaimed.
    let late = table
        .reserve(&name("root"), spec("late", 19, &["w:/srv/b/**"]))
        .unwrap();
    env.live.advance_ms(501);
    match table.adopt(&name("late"), late.incarnation.as_deref().unwrap(), 4) {
        Err(ScopeError::ReservationExpired {
            deadline_unix_ms, ..
        }) => assert_eq!(Some(deadline_unix_ms), late.pending_until),
        other => panic!("expected ReservationExpired, got {other:?}"),
    }
    let reclaimed: Vec<String> = table
        .reclaim_stale()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(reclaimed, ["late"]);

    // A reservation whose spawner dies is stale at once.
    let orphan = table
        .reserve(&name("kid"), spec("orphan", 19, &["w:/srv/a/o/**"]))
        .unwrap();
    assert_eq!(
        orphan.pid, 3,
        "held under its spawner's (the kid's) process"
    );
    env.live.kill(3);
    let reclaimed: Vec<String> = table
        .reclaim_stale()
        .unwrap()
        .into_iter()
        .map(|a| a.pod_name.to_string())
        .collect();
    assert_eq!(reclaimed, ["kid", "orphan"]);
}

/// `reparented` counts the pods a survivor was moved past, the same for
/// every order of releases and for one reclaim of them all (so tables
/// converge whatever order deaths are handled in): root > a > b > c, and
/// d under a.
#[test]
fn reparent_counts_are_the_same_for_every_order_of_removals() {
    let tree = || -> Table {
        vec![
            allocation("root", None, &["w:/r/**"]),
            allocation("a", Some("root"), &["w:/r/a/**"]),
            allocation("b", Some("a"), &["w:/r/a/b/**"]),
            allocation("c", Some("b"), &["w:/r/a/b/c/**"]),
            allocation("d", Some("a"), &["w:/r/a/d/**"]),
        ]
        .into_iter()
        .collect()
    };
    let counts = |table: &Table| -> Vec<(String, Option<String>, u64)> {
        table
            .allocations()
            .map(|a| {
                let from = a.delegated_from.as_ref().map(|p| p.to_string());
                (a.pod_name.to_string(), from, a.reparented)
            })
            .collect()
    };
    let released = |order: &[&str]| {
        let mut table = tree();
        for pod in order {
            table.release(&name(pod), None).unwrap();
        }
        counts(&table)
    };
    let expected = vec![
        ("c".to_owned(), Some("root".to_owned()), 2),
        ("d".to_owned(), Some("root".to_owned()), 1),
        ("root".to_owned(), None, 0),
    ];
    assert_eq!(released(&["a", "b"]), expected);
    assert_eq!(released(&["b", "a"]), expected);
    let mut reclaimed = tree();
    let gone = reclaimed.reclaim(|a| !matches!(a.pod_name.as_str(), "a" | "b"));
    assert_eq!(gone.len(), 2);
    assert_eq!(counts(&reclaimed), expected);
    // Written only once moved, read back as written.
    let moved = reclaimed.get("c").unwrap();
    let json = serde_json::to_string(moved).unwrap();
    assert!(json.contains(r#""reparented":2"#), "{json}");
    assert_eq!(&serde_json::from_str::<Allocation>(&json).unwrap(), moved);
    let root = serde_json::to_string(reclaimed.get("root").unwrap()).unwrap();
    assert!(!root.contains("reparented"), "{root}");
}

/// root > x > c, and root > y beside x; then `x` dies and `c` is moved
/// up to the root. Returns the table and `c`'s incarnation.
fn x_gone() -> (Table, String) {
    let mut table = Table::new();
    let inc = |i: u8| format!("{i:032x}");
    table
        .register(spec("root", 1, &["w:/r/**"]), 1, inc(1))
        .unwrap();
    table
        .delegate(&name("root"), spec("x", 2, &["w:/r/x/**"]), 1, inc(2))
        .unwrap();
    table
        .delegate(&name("x"), spec("c", 3, &["w:/r/x/c/**"]), 1, inc(3))
        .unwrap();
    table
        .delegate(&name("root"), spec("y", 4, &["w:/r/y/**"]), 1, inc(4))
        .unwrap();
    table.release(&name("x"), None).unwrap();
    (table, inc(3))
}

#[test]
fn a_restarted_pod_takes_back_the_children_its_death_moved_up() {
    let (mut table, c_inc) = x_gone();
    assert_eq!(table.get("c").unwrap().delegated_from, Some(name("root")));
    let restart = |table: &mut Table, former: &[(PodName, Option<String>)]| {
        let x = spec("x", 5, &["w:/r/x/**"]);
        table.restart_reclaiming(Some(&name("root")), x, 1, "9".repeat(32), former, |_| true)
    };
    // Without its registry's word the old scope conflicts with `c`.
    let conflict = restart(&mut table.clone(), &[]).unwrap_err();
    assert!(
        matches!(&conflict, ScopeError::WriteConflict { competitor, .. } if competitor.as_str() == "c"),
        "{conflict}"
    );
    // Another incarnation of `c` is not the child it had.
    let other = [(name("c"), Some("f".repeat(32)))];
    assert!(restart(&mut table.clone(), &other).is_err());
    // A pod it never had (`y`) is never taken, even when listed.
    let former = [(name("c"), Some(c_inc.clone())), (name("y"), None)];
    let restarted = restart(&mut table, &former).unwrap();
    assert_eq!(restarted.allocation.delegated_from, Some(name("root")));
    assert_eq!(restarted.taken_back.len(), 1);
    let c = table.get("c").unwrap();
    assert_eq!(c.delegated_from, Some(name("x")));
    assert_eq!(c.reparented, 2, "moved up once, taken back once");
    assert_eq!(&restarted.taken_back[0], c);
    assert_eq!(table.get("y").unwrap().delegated_from, Some(name("root")));
    table.check_invariant().unwrap();
    // A live pod holding the name refuses a restart under it.
    let again = restart(&mut table, &former).unwrap_err();
    assert!(matches!(again, ScopeError::DuplicateName { .. }), "{again}");
}

#[test]
fn a_restart_with_a_narrower_scope_leaves_the_children_it_cannot_hold() {
    let (mut table, c_inc) = x_gone();
    let narrower = spec("x", 5, &["w:/r/x/other/**"]);
    let former = [(name("c"), Some(c_inc))];
    let restarted = table
        .restart_reclaiming(
            Some(&name("root")),
            narrower,
            1,
            "9".repeat(32),
            &former,
            |_| true,
        )
        .unwrap();
    assert!(restarted.taken_back.is_empty());
    assert_eq!(table.get("c").unwrap().delegated_from, Some(name("root")));
    table.check_invariant().unwrap();
}
