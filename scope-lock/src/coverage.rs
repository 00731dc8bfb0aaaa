//! Pure set relations between scope rules: cover, overlap, path membership.
//!
//! A rule denotes the set of paths it covers:
//!
//! - a **recursive** rule over `T` covers `T` and every path below it
//!   (`T/**`);
//! - a **non-recursive** rule over `T` covers `T` and its direct children
//!   (`T/*`), nothing deeper.
//!
//! Every relation here is defined on those sets and computed component by
//! component, never by string prefix: `/a` covers `/a/b` but not `/ab`.
//! Permissions play no part; the table compares them separately.
//!
//! The functions fail closed on a target that is not absolute and lexically
//! normal (see [`pod_protocol::validate_path`]): such a rule covers nothing
//! and is never covered, and it overlaps everything, so `/a/../b` can never
//! pass as inside `/a`. The table rejects such rules before they get here.
//!
//! ```
//! use pod_scope_lock::{coverage, ScopeRule};
//!
//! let repo = ScopeRule::write("/srv/repo");
//! assert!(coverage::covers(&repo, &ScopeRule::write("/srv/repo/src")));
//! assert!(!coverage::overlaps(&repo, &ScopeRule::write("/srv/repository")));
//! assert!(coverage::covers_path(&repo, "/srv/repo/src/main.rs"));
//! assert!(!coverage::covers_path(&repo, "/srv/repo/../etc"));
//! ```

use pod_protocol::{validate_path, ScopeRule};

/// How two lexically normal absolute paths relate in the directory tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Relation {
    /// The same path.
    Same,
    /// The second path is this many components below the first.
    Above(usize),
    /// The second path is this many components above the first.
    Below(usize),
    /// Neither contains the other.
    Apart,
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

/// Relation of `b` to `a`; both must be lexically normal absolute paths.
pub(crate) fn relation(a: &str, b: &str) -> Relation {
    // Fast path: a path on the other's line of descent is a byte prefix of
    // it, so two paths neither of which prefixes the other are apart.
    if !a.starts_with(b) && !b.starts_with(a) {
        return Relation::Apart;
    }
    let mut a = components(a);
    let mut b = components(b);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Relation::Same,
            (None, Some(_)) => return Relation::Above(1 + b.count()),
            (Some(_), None) => return Relation::Below(1 + a.count()),
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => return Relation::Apart,
        }
    }
}

fn is_normal(path: &str) -> bool {
    validate_path("scope.target", path).is_ok()
}

/// [`covers`] for rules already known to be valid.
pub(crate) fn covers_valid(outer: &ScopeRule, inner: &ScopeRule) -> bool {
    match relation(&outer.target, &inner.target) {
        // Same target: the recursive set contains the non-recursive one.
        Relation::Same => outer.recursive || !inner.recursive,
        // A non-recursive outer set stops at the direct children, and
        // every inner set below the target reaches at least one level
        // deeper than its own target.
        Relation::Above(_) => outer.recursive,
        Relation::Below(_) | Relation::Apart => false,
    }
}

/// [`overlaps`] for rules already known to be valid.
pub(crate) fn overlaps_valid(a: &ScopeRule, b: &ScopeRule) -> bool {
    match relation(&a.target, &b.target) {
        Relation::Same => true,
        // `b` lies below `a`: inside `a`'s set if `a` is recursive or `b`
        // is a direct child of `a`'s target.
        Relation::Above(depth) => a.recursive || depth == 1,
        Relation::Below(depth) => b.recursive || depth == 1,
        Relation::Apart => false,
    }
}

/// [`covers_path`] for a rule and path already known to be valid.
pub(crate) fn covers_path_valid(rule: &ScopeRule, path: &str) -> bool {
    match relation(&rule.target, path) {
        Relation::Same => true,
        Relation::Above(depth) => rule.recursive || depth == 1,
        Relation::Below(_) | Relation::Apart => false,
    }
}

/// Whether every path covered by `inner` is covered by `outer`.
///
/// A recursive rule covers any rule at or below its target; a non-recursive
/// rule covers only a non-recursive rule with the same target (a rule over a
/// direct child reaches that child's children, one level too deep). False if
/// either target is not lexically normal.
pub fn covers(outer: &ScopeRule, inner: &ScopeRule) -> bool {
    is_normal(&outer.target) && is_normal(&inner.target) && covers_valid(outer, inner)
}

/// Whether some path is covered by both `a` and `b`.
///
/// Overlapping targets are always on one line of descent; they overlap when
/// they are equal, when the upper one is recursive, or when one is a direct
/// child of the other. True if either target is not lexically normal (fail
/// closed).
pub fn overlaps(a: &ScopeRule, b: &ScopeRule) -> bool {
    !is_normal(&a.target) || !is_normal(&b.target) || overlaps_valid(a, b)
}

/// Whether `path` is in the set covered by `rule`. False if either is not an
/// absolute, lexically normal path.
pub fn covers_path(rule: &ScopeRule, path: &str) -> bool {
    is_normal(&rule.target) && is_normal(path) && covers_path_valid(rule, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_is_component_wise() {
        assert_eq!(relation("/a", "/ab"), Relation::Apart);
        assert_eq!(relation("/", "/a/b"), Relation::Above(2));
        assert_eq!(relation("/a/b", "/a"), Relation::Below(1));
        assert_eq!(relation("/", "/"), Relation::Same);
    }
}
