//! The invariant of DESIGN section 5, checked on every load
//! ([`Table::check_invariant`]), and the indexes that keep the check
//! O(n log n).

use pod_protocol::{validate_scope, validate_socket, ScopeRule};

use super::{Allocation, Table};
use crate::coverage::grants_valid as grants;
use crate::coverage::{is_normal_path, overlaps_valid, relation, Relation};
use crate::error::DisplayRule;

impl Table {
    /// Checks the invariant of DESIGN section 5:
    ///
    /// - (a) no write rule of a pod overlaps a write rule of a pod that is
    ///   neither its ancestor nor its descendant;
    /// - (b) every rule of a delegated pod is covered by one rule of its
    ///   parent with at least its permission;
    /// - (c) every `delegated_from` names an existing allocation (and the
    ///   parent links form a forest: no cycles);
    ///
    /// plus well-formedness: names are unique (the table is kept sorted by
    /// name), every socket is a valid address and every target a valid
    /// path. The error says which pods break which rule. Costs O(n log n)
    /// in the number of rules; [`FileStore`](crate::FileStore) runs it on
    /// every load.
    pub fn check_invariant(&self) -> Result<(), String> {
        let pods = &self.allocations[..];
        for pair in pods.windows(2) {
            if pair[0].pod_name >= pair[1].pod_name {
                return Err(format!(
                    "allocation `{}` is stored before `{}`: not sorted by name, or a name held twice",
                    pair[0].pod_name, pair[1].pod_name
                ));
            }
        }
        for a in pods {
            // The one-pass check first; the full one only to say what is
            // wrong.
            let valid = is_normal_path(&a.socket)
                && !a.scope_allow.is_empty()
                && a.scope_allow.iter().all(|r| is_normal_path(&r.target));
            if !valid {
                validate_socket("socket", &a.socket)
                    .and_then(|_| validate_scope(&a.scope_allow))
                    .map_err(|e| format!("pod `{}`: {e}", a.pod_name))?;
            }
        }
        // Names are resolved once (`pods` is sorted by name); everything
        // below works on indices.
        let mut index = NameIndex::new(pods);
        let mut parents = Vec::with_capacity(pods.len());
        for a in pods {
            parents.push(match &a.delegated_from {
                None => None,
                Some(p) => Some(index.find(pods, p.as_str()).ok_or_else(|| {
                    format!(
                        "(c) pod `{}` is delegated from `{p}`, which has no allocation",
                        a.pod_name
                    )
                })?),
            });
        }
        check_acyclic(pods, &parents)?;
        for (a, parent) in pods.iter().zip(&parents) {
            let Some(parent) = parent.map(|p| &pods[p]) else {
                continue;
            };
            for rule in &a.scope_allow {
                if !grants(&parent.scope_allow, rule) {
                    return Err(format!(
                        "(b) rule {} of pod `{}` is not covered by a rule of its parent `{}`",
                        DisplayRule(rule),
                        a.pod_name,
                        parent.pod_name
                    ));
                }
            }
        }
        // With (b) and (c), a pod's write rules contain those of its whole
        // subtree, so (a) holds exactly when the children of each pod (and
        // the top-level pods) hold pairwise disjoint write scope.
        // Group 0 is the top-level pods, group `p + 1` the children of pod
        // `p`: a counting sort lays each group out contiguously, in name
        // order, and one buffer serves every group's rules.
        let group = |parent: &Option<usize>| parent.map_or(0, |p| p + 1);
        let mut starts = vec![0usize; pods.len() + 2];
        for parent in &parents {
            starts[group(parent) + 1] += 1;
        }
        for g in 1..starts.len() {
            starts[g] += starts[g - 1];
        }
        let mut order = vec![0usize; pods.len()];
        let mut next = starts.clone();
        for (i, parent) in parents.iter().enumerate() {
            order[next[group(parent)]] = i;
            next[group(parent)] += 1;
        }
        let mut rules = Vec::new();
        for bounds in starts.windows(2) {
            let members = &order[bounds[0]..bounds[1]];
            if members.len() > 1 {
                check_siblings_disjoint(pods, members, &mut rules)?;
            }
        }
        Ok(())
    }
}

/// Finds pods by name in a slice sorted by name, comparing first the
/// leading 8 bytes of each name as one integer (kept in a flat array, so
/// most of the binary search never leaves it), then whole names only among
/// the few that share those bytes. Parents have many children, so recent
/// answers are remembered in a small direct-mapped cache (a hit is checked
/// against the whole name).
struct NameIndex {
    prefixes: Vec<u64>,
    recent: [Option<usize>; RECENT_SLOTS],
}

const RECENT_SLOTS: usize = 256;

/// The first 8 bytes of `name`, zero-padded, as a big-endian integer: for
/// names without NUL bytes (pod names are letters, digits, `.`, `_`, `-`)
/// integer order agrees with the names' byte order. (Were it not so, a
/// lookup could miss and the table be refused: never wrongly accepted.)
fn name_prefix(name: &str) -> u64 {
    let mut buffer = [0u8; 8];
    let n = name.len().min(8);
    buffer[..n].copy_from_slice(&name.as_bytes()[..n]);
    u64::from_be_bytes(buffer)
}

impl NameIndex {
    fn new(pods: &[Allocation]) -> Self {
        NameIndex {
            prefixes: pods
                .iter()
                .map(|a| name_prefix(a.pod_name.as_str()))
                .collect(),
            recent: [None; RECENT_SLOTS],
        }
    }

    /// The index of pod `name` in `pods` (the slice this index was built
    /// from).
    fn find(&mut self, pods: &[Allocation], name: &str) -> Option<usize> {
        let slot = (name
            .bytes()
            .fold(name.len(), |h, b| h.wrapping_mul(31) ^ usize::from(b)))
            % RECENT_SLOTS;
        if let Some(i) = self.recent[slot] {
            if pods[i].pod_name.as_str() == name {
                return Some(i);
            }
        }
        let prefix = name_prefix(name);
        let start = self.prefixes.partition_point(|&p| p < prefix);
        let end = start + self.prefixes[start..].partition_point(|&p| p == prefix);
        let found = pods[start..end]
            .binary_search_by(|a| a.pod_name.as_str().cmp(name))
            .ok()
            .map(|i| start + i);
        if found.is_some() {
            self.recent[slot] = found;
        }
        found
    }
}

/// (c), second half: following parent links from any pod ends at a
/// top-level pod.
fn check_acyclic(pods: &[Allocation], parents: &[Option<usize>]) -> Result<(), String> {
    const UNSEEN: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![UNSEEN; pods.len()];
    let mut path = Vec::new();
    for start in 0..pods.len() {
        let mut current = Some(start);
        while let Some(i) = current {
            match state[i] {
                DONE => break,
                ON_PATH => {
                    return Err(format!(
                        "(c) the delegation chain through pod `{}` is a cycle",
                        pods[i].pod_name
                    ))
                }
                _ => {}
            }
            state[i] = ON_PATH;
            path.push(i);
            current = parents[i];
        }
        for i in path.drain(..) {
            state[i] = DONE;
        }
    }
    Ok(())
}

/// Orders targets as a preorder of the path tree: component-wise
/// lexicographic, which for lexically normal paths is byte order with `/`
/// below every other byte (so `/a` < `/a/z` < `/ab`).
fn preorder(a: &str, b: &str) -> std::cmp::Ordering {
    let key = |byte: u8| if byte == b'/' { 0 } else { byte };
    let (a, b) = (a.as_bytes(), b.as_bytes());
    match a.iter().zip(b).position(|(x, y)| x != y) {
        // (`then` only matters for a NUL byte, which no valid target has.)
        Some(i) => key(a[i]).cmp(&key(b[i])).then(a[i].cmp(&b[i])),
        None => a.len().cmp(&b.len()),
    }
}

/// Fails if write rules of two different pods among `members` overlap.
///
/// Overlapping targets always lie on one line of descent, so after sorting
/// the rules in preorder each rule only needs comparing with the rules
/// whose targets are its ancestors or itself, kept on a stack: O(n log n)
/// for n rules plus the stack walks, which are bounded by path depth times
/// rules per pod.
fn check_siblings_disjoint<'a>(
    pods: &'a [Allocation],
    members: &[usize],
    rules: &mut Vec<(&'a ScopeRule, usize)>,
) -> Result<(), String> {
    rules.clear();
    rules.extend(
        members
            .iter()
            .flat_map(|&i| pods[i].write_rules().map(move |r| (r, i))),
    );
    rules.sort_by(|x, y| preorder(&x.0.target, &y.0.target));
    let mut stack: Vec<(&ScopeRule, usize)> = Vec::new();
    for &(rule, owner) in rules.iter() {
        while let Some((top, _)) = stack.last() {
            match relation(&top.target, &rule.target) {
                Relation::Same | Relation::Above(_) => break,
                Relation::Below(_) | Relation::Apart => {
                    stack.pop();
                }
            }
        }
        for &(held, holder) in &stack {
            if holder != owner && overlaps_valid(held, rule) {
                return Err(format!(
                    "(a) write rule {} of pod `{}` overlaps write rule {} of pod `{}`, which is neither its ancestor nor its descendant",
                    DisplayRule(rule),
                    pods[owner].pod_name,
                    DisplayRule(held),
                    pods[holder].pod_name
                ));
            }
        }
        stack.push((rule, owner));
    }
    Ok(())
}
#[cfg(test)]
mod tests {
    use super::*;
    use pod_protocol::PodName;

    fn pod(name: &str) -> Allocation {
        Allocation {
            pod_name: PodName::new(name).unwrap(),
            pid: 1,
            start_time: Some(1),
            socket: "/run/p.sock".into(),
            scope_allow: vec![ScopeRule::read("/")],
            delegated_from: None,
            incarnation: None,
            pending_until: None,
            reparented: 0,
        }
    }

    #[test]
    fn the_name_index_finds_exactly_the_names_present() {
        // Many names sharing their first 8 bytes, short names, names that
        // prefix others, and more names than cache slots.
        let mut names: Vec<String> = (0..600).map(|i| format!("workerpod-{i}")).collect();
        names.extend(["a", "ab", "abcdefgh", "abcdefghi", "abcdefgh-", "z"].map(String::from));
        let table: Table = names.iter().map(|n| pod(n)).collect();
        let pods = &table.allocations[..];
        let mut index = NameIndex::new(pods);
        let mut probes: Vec<String> = names.clone();
        probes.extend(
            [
                "",
                "b",
                "abc",
                "abcdefg",
                "abcdefghij",
                "workerpod-",
                "workerpod-600",
                "zz",
            ]
            .map(String::from),
        );
        // Twice, so that the second round hits the cache.
        for _ in 0..2 {
            for probe in &probes {
                let expected = pods.iter().position(|a| a.pod_name.as_str() == probe);
                assert_eq!(index.find(pods, probe), expected, "{probe}");
            }
        }
    }
}
