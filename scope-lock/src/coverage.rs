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

use pod_protocol::{validate_path, ScopeRule, MAX_PATH_LEN};

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

/// Relation of `b` to `a`; both must be lexically normal absolute paths.
///
/// For such paths the components are exactly the pieces between single
/// `/`s, so `b` is below `a` exactly when `b` extends `a` by `/` and more
/// (any `b` other than `/` is below the root), and the depth is the number
/// of `/` in that extension. Byte comparisons only, no allocation.
pub(crate) fn relation(a: &str, b: &str) -> Relation {
    let (x, y) = (a.as_bytes(), b.as_bytes());
    let common = x.len().min(y.len());
    if x[..common] != y[..common] {
        return Relation::Apart;
    }
    match (x.len().cmp(&y.len()), depth_below(x, y), depth_below(y, x)) {
        (std::cmp::Ordering::Equal, _, _) => Relation::Same,
        (std::cmp::Ordering::Less, Some(depth), _) => Relation::Above(depth),
        (std::cmp::Ordering::Greater, _, Some(depth)) => Relation::Below(depth),
        _ => Relation::Apart,
    }
}

/// How many components `path` lies below `ancestor`, given that `ancestor`
/// is a proper prefix of `path` (as bytes), if it does; both lexically
/// normal absolute paths.
fn depth_below(ancestor: &[u8], path: &[u8]) -> Option<usize> {
    if ancestor.len() >= path.len() {
        return None;
    }
    let rest = if ancestor == b"/" {
        path
    } else {
        &path[ancestor.len()..]
    };
    if rest.len() < 2 || rest[0] != b'/' {
        return None;
    }
    Some(rest.iter().filter(|&&b| b == b'/').count())
}

/// Whether `path` is absolute and lexically normal, exactly as
/// [`pod_protocol::validate_path`] decides it, in one pass over the bytes
/// and without building an error: at most [`MAX_PATH_LEN`] bytes, starts
/// with `/`, and (unless it is `/`) every piece between `/`s is non-empty,
/// not `.` or `..`, and has no NUL byte. Callers that need the reason call
/// `validate_path` when this says no.
pub(crate) fn is_normal_path(path: &str) -> bool {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || bytes.len() > MAX_PATH_LEN {
        return false;
    }
    // One pass: at each `/` (and at the end), the component just passed
    // must be non-empty and not `.` or `..`.
    let mut start = 1;
    for (i, &byte) in bytes.iter().enumerate().skip(1) {
        match byte {
            0 => return false,
            b'/' => {
                if matches!(&bytes[start..i], b"" | b"." | b"..") {
                    return false;
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    bytes.len() == 1 || !matches!(&bytes[start..], b"" | b"." | b"..")
}

fn is_normal(path: &str) -> bool {
    is_normal_path(path) || validate_path("scope.target", path).is_ok()
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

/// Whether one of `held` covers `rule` with at least its permission: what
/// delegating `rule` asks of the pod holding `held` (and the table's
/// invariant of every child). False if a target is not lexically normal.
///
/// ```
/// use pod_scope_lock::{coverage, ScopeRule};
///
/// let held = [ScopeRule::write("/srv/repo"), ScopeRule::read("/srv/docs")];
/// assert!(coverage::grants(&held, &ScopeRule::read("/srv/repo/src")));
/// assert!(!coverage::grants(&held, &ScopeRule::write("/srv/docs/a")));
/// assert!(!coverage::grants(&held, &ScopeRule::write("/")));
/// ```
pub fn grants(held: &[ScopeRule], rule: &ScopeRule) -> bool {
    held.iter()
        .any(|h| h.permission >= rule.permission && covers(h, rule))
}

/// [`grants`] for rules already known to be valid.
pub(crate) fn grants_valid(held: &[ScopeRule], rule: &ScopeRule) -> bool {
    held.iter()
        .any(|h| h.permission >= rule.permission && covers_valid(h, rule))
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
        assert_eq!(relation("/a/b", "/a/b/c/d"), Relation::Above(2));
        assert_eq!(relation("/a/bc", "/a/b/c"), Relation::Apart);
        assert_eq!(relation("/ab/c", "/a"), Relation::Apart);
    }

    /// The definition: compare component lists.
    fn relation_by_components(a: &str, b: &str) -> Relation {
        let a: Vec<&str> = a.split('/').filter(|c| !c.is_empty()).collect();
        let b: Vec<&str> = b.split('/').filter(|c| !c.is_empty()).collect();
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        match (common == a.len(), common == b.len()) {
            (true, true) => Relation::Same,
            (true, false) => Relation::Above(b.len() - a.len()),
            (false, true) => Relation::Below(a.len() - b.len()),
            (false, false) => Relation::Apart,
        }
    }

    /// Every normal path up to 3 components over an alphabet chosen so
    /// that string prefixes and component prefixes disagree.
    fn normal_paths() -> Vec<String> {
        let names = ["a", "b", "ab", "a.", "..a"];
        let mut all = vec![String::from("/")];
        let mut frontier = vec![String::new()];
        for _ in 0..3 {
            frontier = frontier
                .iter()
                .flat_map(|p| names.iter().map(move |n| format!("{p}/{n}")))
                .collect();
            all.extend(frontier.iter().cloned());
        }
        all
    }

    #[test]
    fn relation_agrees_with_the_component_definition() {
        let paths = normal_paths();
        for a in &paths {
            assert!(is_normal_path(a), "{a}");
            for b in &paths {
                assert_eq!(relation(a, b), relation_by_components(a, b), "{a} {b}");
            }
        }
    }

    #[test]
    fn is_normal_path_agrees_with_validate_path() {
        // Every string up to 5 bytes over an alphabet that makes every
        // kind of defect.
        let alphabet = ["/", ".", "a", "\0"];
        let mut strings = vec![String::new()];
        let mut frontier = vec![String::new()];
        for _ in 0..5 {
            frontier = frontier
                .iter()
                .flat_map(|s| alphabet.iter().map(move |c| format!("{s}{c}")))
                .collect();
            strings.extend(frontier.iter().cloned());
        }
        let long = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
        strings.push(long.clone());
        strings.push(format!("{long}a"));
        for s in &strings {
            assert_eq!(is_normal_path(s), validate_path("p", s).is_ok(), "{s:?}");
        }
    }
}
