//! The cover/overlap matrix, and a proptest of `coverage` against covered
//! sets enumerated by brute force over a finite tree of paths.

use std::collections::BTreeSet;

use pod_scope_lock::coverage::{covers, covers_path, overlaps};
use pod_scope_lock::{Permission, ScopeRule};
use proptest::prelude::*;

use crate::rule;

/// One line of the matrix: whether `outer` covers `inner`, and whether they
/// overlap. Also checks that overlap is symmetric, that cover implies
/// overlap, and that permissions play no part.
fn check(outer: &str, inner: &str, expect_covers: bool, expect_overlaps: bool) {
    let (o, i) = (rule(outer), rule(inner));
    assert_eq!(covers(&o, &i), expect_covers, "covers({outer}, {inner})");
    assert_eq!(
        overlaps(&o, &i),
        expect_overlaps,
        "overlaps({outer}, {inner})"
    );
    assert_eq!(
        overlaps(&i, &o),
        expect_overlaps,
        "overlaps({inner}, {outer})"
    );
    let read = |r: &ScopeRule| ScopeRule {
        permission: Permission::Read,
        ..r.clone()
    };
    assert_eq!(covers(&read(&o), &i), expect_covers, "permission matters");
    assert_eq!(overlaps(&read(&o), &read(&i)), expect_overlaps);
}

fn check_path(r: &str, path: &str, expected: bool) {
    assert_eq!(
        covers_path(&rule(r), path),
        expected,
        "covers_path({r}, {path})"
    );
}

#[test]
fn equal_targets() {
    check("w:/a/**", "w:/a/**", true, true);
    check("w:/a/*", "w:/a/*", true, true);
    check("w:/a/**", "w:/a/*", true, true);
    check("w:/a/*", "w:/a/**", false, true);
}

#[test]
fn nested_targets() {
    check("w:/a/**", "w:/a/b/**", true, true);
    check("w:/a/**", "w:/a/b/*", true, true);
    check("w:/a/**", "w:/a/b/c/*", true, true);
    check("w:/a/*", "w:/a/b/**", false, true);
    check("w:/a/*", "w:/a/b/*", false, true);
    check("w:/a/*", "w:/a/b/c/**", false, false);
    check("w:/a/*", "w:/a/b/c/*", false, false);
    check("w:/a/b/**", "w:/a/**", false, true);
    check("w:/a/b/*", "w:/a/*", false, true);
    check("w:/a/b/**", "w:/a/*", false, true);
    check("w:/a/b/c/**", "w:/a/*", false, false);
    check("w:/a/b/c/*", "w:/a/**", false, true);
}

#[test]
fn siblings_and_strangers() {
    check("w:/a/**", "w:/b/**", false, false);
    check("w:/a/b/**", "w:/a/c/**", false, false);
    check("w:/a/b/*", "w:/a/c/*", false, false);
    check("w:/a/b/**", "w:/a/c/*", false, false);
    check("w:/x/a/b/**", "w:/y/a/b/**", false, false);
}

#[test]
fn components_are_never_string_prefixes() {
    check("w:/a/**", "w:/ab/**", false, false);
    check("w:/a/*", "w:/ab/*", false, false);
    check("w:/ab/**", "w:/a/**", false, false);
    check("w:/a/**", "w:/ab/c/**", false, false);
    check("w:/a/*", "w:/ab/c/**", false, false);
    check("w:/srv/repo/**", "w:/srv/repository/**", false, false);
    check_path("w:/a/**", "/ab", false);
    check_path("w:/a/*", "/ab", false);
    check_path("w:/a/**", "/ab/c", false);
}

#[test]
fn the_root() {
    check("w:/**", "w:/**", true, true);
    check("w:/*", "w:/*", true, true);
    check("w:/**", "w:/*", true, true);
    check("w:/*", "w:/**", false, true);
    check("w:/**", "w:/a/b/**", true, true);
    check("w:/*", "w:/a/**", false, true);
    check("w:/*", "w:/a/*", false, true);
    check("w:/*", "w:/a/b/**", false, false);
    check("w:/a/**", "w:/**", false, true);
    check_path("w:/*", "/", true);
    check_path("w:/*", "/etc", true);
    check_path("w:/*", "/etc/passwd", false);
    check_path("w:/**", "/etc/passwd", true);
}

#[test]
fn trailing_components() {
    check("w:/a/b/**", "w:/a/b/c/d/**", true, true);
    check("w:/a/b/*", "w:/a/b/c/d/*", false, false);
    check_path("w:/a/b/*", "/a/b", true);
    check_path("w:/a/b/*", "/a/b/c", true);
    check_path("w:/a/b/*", "/a/b/c/d", false);
    check_path("w:/a/b/**", "/a/b/c/d/e", true);
    check_path("w:/a/b/**", "/a", false);
    check_path("w:/a/b/*", "/a", false);
}

#[test]
fn paths_that_are_not_lexically_normal_fail_closed() {
    // Such a rule covers nothing, is covered by nothing, overlaps everything.
    for bad in [
        "w:/a/../b",
        "w:/a/./b",
        "w:/a/",
        "w:a/b",
        "w://a",
        "w:/a//b",
    ] {
        check("w:/**", bad, false, true);
        check(bad, "w:/x/**", false, true);
        check(bad, bad, false, true);
        check_path(bad, "/a/b", false);
    }
    for bad in ["/a/../b", "/a/./b", "/a/b/", "a/b", "/a//b", "", "/a/.."] {
        check_path("w:/**", bad, false);
        check_path("w:/a/**", bad, false);
    }
}

/// Components of the finite test tree; targets go at most 2 deep and the
/// universe 4 deep, so every rule's set reaches 2 levels below its target.
const NAMES: [&str; 3] = ["a", "b", "ab"];

fn universe() -> Vec<Vec<&'static str>> {
    let mut all = vec![vec![]];
    let mut frontier = vec![vec![]];
    for _ in 0..4 {
        let mut next = Vec::new();
        for path in &frontier {
            for name in NAMES {
                let mut p: Vec<&str> = path.clone();
                p.push(name);
                next.push(p);
            }
        }
        all.extend(next.iter().cloned());
        frontier = next;
    }
    all
}

fn to_path(components: &[&str]) -> String {
    format!("/{}", components.join("/"))
}

/// The set a rule covers within the universe, by the definition: the
/// target and everything below (recursive) or the target and its direct
/// children (non-recursive). Pure list comparison, no string prefixes.
fn covered(rule: &ScopeRule, universe: &[Vec<&str>]) -> BTreeSet<String> {
    let target: Vec<&str> = rule.target.split('/').filter(|c| !c.is_empty()).collect();
    universe
        .iter()
        .filter(|p| {
            p.len() >= target.len()
                && p[..target.len()] == target[..]
                && (rule.recursive || p.len() <= target.len() + 1)
        })
        .map(|p| to_path(p))
        .collect()
}

fn arb_rule() -> impl Strategy<Value = ScopeRule> {
    (
        proptest::collection::vec(proptest::sample::select(&NAMES[..]), 0..=2),
        any::<bool>(),
    )
        .prop_map(|(components, recursive)| ScopeRule {
            target: to_path(&components),
            permission: Permission::Write,
            recursive,
        })
}

proptest! {
    #[test]
    fn relations_agree_with_brute_force_sets(a in arb_rule(), b in arb_rule()) {
        let universe = universe();
        let (sa, sb) = (covered(&a, &universe), covered(&b, &universe));
        prop_assert_eq!(covers(&a, &b), sb.is_subset(&sa));
        prop_assert_eq!(overlaps(&a, &b), !sa.is_disjoint(&sb));
        for path in &universe {
            let path = to_path(path);
            prop_assert_eq!(covers_path(&a, &path), sa.contains(&path));
        }
    }
}
