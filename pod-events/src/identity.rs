//! Sender identity: who may say what about which pod.
//!
//! The Unix listener tells us the uid and pid of the process at the other
//! end of a connection (`SO_PEERCRED`); the uid check happens there. Here
//! the endpoint decides whether that process may make the claim an event
//! makes, against the scope table, which records the process (pid and
//! start time) that holds each pod's allocation.
//!
//! # The sender
//!
//! A process speaks for pod `p` when `p`'s live holder process (pid and
//! start time as recorded) is that process or one of its ancestors: the pod
//! itself, or one of its helper processes (`podctl send` run by a shell
//! pod). It also speaks for `p` when the holder's parent process is that
//! process or one of its ancestors: the pod's supervisor, the process that
//! started it (`podctl run`, or the shell that ran `podctl listen &`), and
//! the supervisor's helpers. A process that speaks for no pod holds no
//! allocation: an existing Pod of the code we replace, an operator's tool
//! run from elsewhere, or an intruder of the same uid.
//!
//! # The rules
//!
//! For an event about pod `n` (its [subject](pod_protocol::PodEvent::subject)):
//!
//! | event | `n` holds an allocation | `n` holds none |
//! | --- | --- | --- |
//! | `TurnEnded`, `Errored` | only from `n` | policy |
//! | `ShutDown` | from `n`, from a pod above `n` in the table (a relay), or anyone once `n`'s process is dead | from a pod holding an allocation that this parent has registered (a relaying child), else policy |
//! | `ScopeSubDelegated` | the table must agree: `n`'s allocation exists with the event's rules and incarnation, and the sender is the pod it was delegated from or a pod above that | admitted when this parent already saw that incarnation depart (a reordered announcement, which registers nothing); else refused, whatever the policy |
//!
//! The policy ([`SenderPolicy`]) only decides claims the table cannot
//! check: `Strict` refuses them, `Legacy` admits them and counts them as
//! unverified. A claim about a pod that holds an allocation is checked
//! under every policy, so the attacks that matter (releasing a live pod's
//! scope, registering scope nobody delegated) fail under both.
//!
//! # What this does not stop
//!
//! A process started by a pod's supervisor (for example from the shell that
//! started the pod) speaks for that pod, by the supervisor rule above.
//! A process of the same uid can do more than forge events (ptrace, signals,
//! the files themselves, as far as their modes and the kernel allow); these
//! checks make it unable to do harm through the endpoint's side effects. A
//! pod that is dead but whose allocation is not yet reclaimed, and whose pid
//! was reused, is told apart by its start time.
//!
//! `TurnEnded` and `Errored` are checked against the endpoint's latest
//! snapshot of the table, refreshed in the background once it is older
//! than [`snapshot_max_age`](crate::EndpointConfig::snapshot_max_age) (or
//! than this process's last write to the table), so they are rendered
//! whatever the table is doing. One about a pod whose allocation appeared
//! since the snapshot (or, under `Legacy`, while the table cannot be read)
//! is admitted as unverified; one the snapshot would refuse is judged again
//! on a fresh read. They only render a line.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pod_protocol::{PodEvent, PodName};
use pod_scope_lock::{Allocation, Table};
use pod_transport::Peer;
use tokio::sync::watch;

/// What the endpoint does with a claim the scope table cannot check: an
/// event about a pod that holds no allocation, from a sender that holds
/// none either.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SenderPolicy {
    /// Refuse it (counted in
    /// [`EndpointStats::rejected_senders`](crate::EndpointStats::rejected_senders)).
    Strict,
    /// Admit it, counted in
    /// [`EndpointStats::unverified`](crate::EndpointStats::unverified).
    /// The default: existing Pods and operators' tools that hold no
    /// allocation keep working, while every claim about a pod that holds one
    /// is still checked.
    #[default]
    Legacy,
}

/// Seam: the parent of a process. Required method:
/// [`parent`](ProcessTree::parent).
pub trait ProcessTree: Send + Sync + fmt::Debug + 'static {
    /// The parent pid of the live process `pid`, if it can be read.
    fn parent(&self, pid: u32) -> Option<u32>;
}

/// The process tree of `/proc` (field 4 of `/proc/<pid>/stat`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcTree;

impl ProcessTree for ProcTree {
    fn parent(&self, pid: u32) -> Option<u32> {
        pod_transport::parent_pid(pid)
    }
}

/// An in-memory [`ProcessTree`] for tests: no process has a parent unless
/// set.
#[derive(Debug, Clone, Default)]
pub struct FakeProcessTree {
    parents: Arc<Mutex<HashMap<u32, u32>>>,
}

impl FakeProcessTree {
    /// A tree where no process has a parent.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `parent` the parent of `child`.
    pub fn set_parent(&self, child: u32, parent: u32) {
        self.parents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(child, parent);
    }
}

impl ProcessTree for FakeProcessTree {
    fn parent(&self, pid: u32) -> Option<u32> {
        self.parents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&pid)
            .copied()
    }
}

/// How far up the process tree a sender is looked for: a pod's helper
/// processes sit a few levels below it, never this many.
const MAX_PROCESS_DEPTH: usize = 16;

/// The scope table as the endpoint last read it, indexed by holder pid.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// `None` when the table could not be read: nothing is verifiable.
    table: Option<Table>,
    by_pid: HashMap<u32, Vec<PodName>>,
    /// Its place in the order of loads (0: none loaded yet).
    seq: u64,
    /// When its load started, and the parent's table-write count then.
    started: Instant,
    writes_seen: u64,
}

impl Snapshot {
    /// The table `table` (`None`: unreadable) as load number `seq` read it,
    /// started at `started` when this process had made `writes_seen`
    /// writes to the table.
    pub(crate) fn new(table: Option<Table>, seq: u64, started: Instant, writes_seen: u64) -> Self {
        let mut by_pid: HashMap<u32, Vec<PodName>> = HashMap::new();
        for allocation in table.iter().flat_map(Table::allocations) {
            by_pid
                .entry(allocation.pid)
                .or_default()
                .push(allocation.pod_name.clone());
        }
        Snapshot {
            table,
            by_pid,
            seq,
            started,
            writes_seen,
        }
    }

    /// Its place in the order of loads (0: none loaded yet).
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// Whether a judgement may rest on this snapshot without a fresh load:
    /// this process wrote nothing to the table since it was read, and it is
    /// younger than `max_age`.
    pub(crate) fn is_recent(&self, writes_now: u64, max_age: Duration) -> bool {
        self.seq > 0 && self.writes_seen == writes_now && self.started.elapsed() < max_age
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Allocation> {
        self.table.as_ref()?.get(name)
    }

    /// The allocations above `of` in the delegation tree, nearest first.
    fn ancestors<'s>(&'s self, of: &'s Allocation) -> impl Iterator<Item = &'s Allocation> + 's {
        // The table's invariant forbids cycles; the bound is for a table
        // read while another writer broke it.
        let bound = self.table.as_ref().map_or(0, Table::len);
        std::iter::successors(self.parent_of(of), |a| self.parent_of(a)).take(bound)
    }

    fn parent_of(&self, of: &Allocation) -> Option<&Allocation> {
        self.get(of.delegated_from.as_ref()?.as_str())
    }

    /// The allocations whose holder is `pid`.
    fn held_by(&self, pid: u32) -> impl Iterator<Item = &Allocation> + '_ {
        self.by_pid
            .get(&pid)
            .into_iter()
            .flatten()
            .filter_map(|name| self.get(name.as_str()))
    }
}

/// Whether the endpoint may act on an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Checked against the table (or about a pod the table does not know,
    /// from a relaying child).
    Verified,
    /// Not checkable, admitted by [`SenderPolicy::Legacy`].
    Unverified,
    /// Refused, and why.
    Rejected(String),
}

/// What a judgement needs besides the event and the table.
pub(crate) struct Context<'a> {
    pub(crate) policy: SenderPolicy,
    pub(crate) tree: &'a dyn ProcessTree,
    /// Whether the allocation's holder process is alive (pid and start
    /// time).
    pub(crate) is_live: &'a dyn Fn(&Allocation) -> bool,
    /// Whether this parent's registry holds a record of the pod.
    pub(crate) is_registered: &'a dyn Fn(&str) -> bool,
    /// Whether this parent's departed set holds the pod's incarnation.
    pub(crate) is_departed: &'a dyn Fn(&str, &str) -> bool,
}

impl Context<'_> {
    /// The peer and its ancestor processes, nearest first (pid 1 and the
    /// kernel's excluded): as the listener recorded them while the peer
    /// was connected, continued (or, when it recorded none, found) through
    /// the process tree.
    fn lineage(&self, peer: &Peer) -> Vec<u32> {
        let mut chain: Vec<u32> = peer
            .pid
            .into_iter()
            .chain(peer.ancestors.iter().copied())
            .collect();
        chain.retain(|&p| p > 1);
        let mut next = chain
            .last()
            .and_then(|&last| self.tree.parent(last))
            .filter(|&p| p > 1);
        while let Some(pid) = next {
            if chain.len() >= MAX_PROCESS_DEPTH || chain.contains(&pid) {
                break;
            }
            chain.push(pid);
            next = self.tree.parent(pid).filter(|&p| p > 1);
        }
        chain
    }

    fn by_policy(&self, what: impl FnOnce() -> String) -> Verdict {
        match self.policy {
            SenderPolicy::Legacy => Verdict::Unverified,
            SenderPolicy::Strict => Verdict::Rejected(what()),
        }
    }

    /// Decides whether the process `peer_pid` may send `event` (already
    /// validated), per the rules of the module documentation.
    pub(crate) fn judge(&self, event: &PodEvent, peer: &Peer, snapshot: &Snapshot) -> Verdict {
        let subject = event.subject();
        let lineage = self.lineage(peer);
        // The sender speaks for a pod when the pod's live holder process
        // is the sender or one of its ancestors (the sender is the pod or
        // one of its helpers), or is a child of one of them (the sender is
        // the pod's supervisor, or one of the supervisor's helpers).
        // Over TLS, the certificate names the pod the sender is.
        let speaks_for = |allocation: &Allocation| {
            peer.pod_name.as_ref() == Some(&allocation.pod_name)
                || (self.is_live)(allocation)
                    && (lineage.contains(&allocation.pid)
                        || self
                            .tree
                            .parent(allocation.pid)
                            .is_some_and(|parent| lineage.contains(&parent)))
        };
        // Above `of` in the delegation tree, the sender speaks for a pod.
        let speaks_above = |of: &Allocation| snapshot.ancestors(of).any(&speaks_for);
        let who = || match (&peer.pod_name, lineage.first()) {
            (Some(name), _) => format!("the holder of a certificate for `{name}`"),
            (None, Some(pid)) => format!("process {pid}"),
            (None, None) => "a process of unknown pid".to_owned(),
        };
        match (event, snapshot.get(subject)) {
            // A late announcement of a pod whose departure this parent
            // already applied: harmless (applying it registers nothing) and
            // not a forgery, delivery only reordered it.
            (
                PodEvent::ScopeSubDelegated {
                    sub_incarnation: Some(incarnation),
                    ..
                },
                None,
            ) if (self.is_departed)(subject, incarnation) => Verdict::Verified,
            (PodEvent::ScopeSubDelegated { .. }, None) => Verdict::Rejected(format!(
                "the scope table holds no allocation for `{subject}`: nothing was delegated to it"
            )),
            (
                PodEvent::ScopeSubDelegated {
                    scope,
                    sub_incarnation,
                    ..
                },
                Some(allocation),
            ) => {
                if !same_rules(scope, &allocation.scope_allow) {
                    return Verdict::Rejected(format!(
                        "the event's scope for `{subject}` is not the scope the table holds for it"
                    ));
                }
                if sub_incarnation
                    .as_deref()
                    .is_some_and(|inc| !allocation.matches_incarnation(Some(inc)))
                {
                    return Verdict::Rejected(format!(
                        "the event names another incarnation of `{subject}` than the table holds"
                    ));
                }
                let Some(spawner) = allocation
                    .delegated_from
                    .as_ref()
                    .and_then(|name| snapshot.get(name.as_str()))
                else {
                    return Verdict::Rejected(format!(
                        "`{subject}` is a top-level pod in the scope table: nobody delegated to it"
                    ));
                };
                if speaks_for(spawner) || speaks_above(spawner) {
                    Verdict::Verified
                } else {
                    Verdict::Rejected(format!(
                        "{} speaks neither for `{}`, which delegated to `{subject}`, nor for a pod above it",
                        who(),
                        spawner.pod_name
                    ))
                }
            }
            (_, Some(allocation)) => {
                if speaks_for(allocation) {
                    return Verdict::Verified;
                }
                if matches!(event, PodEvent::ShutDown { .. }) {
                    if speaks_above(allocation) {
                        return Verdict::Verified;
                    }
                    if !(self.is_live)(allocation) {
                        // Its death is a fact anyone may report; reconcile
                        // would infer the same.
                        return Verdict::Verified;
                    }
                }
                Verdict::Rejected(format!(
                    "`{subject}` holds an allocation (pid {}) and {} does not speak for it",
                    allocation.pid,
                    who()
                ))
            }
            (PodEvent::ShutDown { .. }, None)
                if peer
                    .pod_name
                    .as_ref()
                    .is_some_and(|name| (self.is_registered)(name.as_str()))
                    || lineage.iter().any(|pid| {
                        snapshot
                            .held_by(*pid)
                            .any(|a| (self.is_live)(a) && (self.is_registered)(a.pod_name.as_str()))
                    }) =>
            {
                Verdict::Verified
            }
            (_, None) => self.by_policy(|| {
                format!(
                    "`{subject}` holds no allocation and {} speaks for no registered child",
                    who()
                )
            }),
        }
    }
}

/// Whether two rule lists hold the same rules (in any order).
fn same_rules(a: &[pod_protocol::ScopeRule], b: &[pod_protocol::ScopeRule]) -> bool {
    let mut a = a.to_vec();
    let mut b = b.to_vec();
    a.sort();
    b.sort();
    a.dedup();
    b.dedup();
    a == b
}

/// The verdict on a `TurnEnded` or `Errored` that needs no fresh table and
/// no walk of the process tree: from the very process that holds its pod's
/// allocation, or, under [`SenderPolicy::Legacy`], about a pod that holds
/// none. `None`: judge it in full on a fresh snapshot.
pub(crate) fn quick_verdict(
    event: &PodEvent,
    peer: &Peer,
    snapshot: &Snapshot,
    policy: SenderPolicy,
) -> Option<Verdict> {
    if !matches!(event, PodEvent::TurnEnded { .. } | PodEvent::Errored { .. }) {
        return None;
    }
    match snapshot.get(event.subject()) {
        Some(allocation)
            if Some(allocation.pid) == peer.pid
                || peer.pod_name.as_ref() == Some(&allocation.pod_name) =>
        {
            Some(Verdict::Verified)
        }
        // Under `Legacy`, also when the table could not be read: nothing
        // about this pod can be checked then.
        None if policy == SenderPolicy::Legacy => Some(Verdict::Unverified),
        _ => None,
    }
}

/// The endpoint's latest snapshot of the table, and the coordination of
/// its loads: at most one load runs at a time, and one load serves every
/// event received before it started.
#[derive(Debug)]
pub(crate) struct Snapshots {
    latest: watch::Sender<Arc<Snapshot>>,
    loads: Mutex<Loads>,
}

#[derive(Debug, Default)]
struct Loads {
    /// The number of the last load started.
    started: u64,
    /// The highest load number an event waits for.
    wanted: u64,
    loading: bool,
}

impl Default for Snapshots {
    fn default() -> Self {
        Snapshots {
            latest: watch::Sender::new(Arc::new(Snapshot::new(None, 0, Instant::now(), 0))),
            loads: Mutex::default(),
        }
    }
}

impl Snapshots {
    fn loads(&self) -> std::sync::MutexGuard<'_, Loads> {
        self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The load an event received now needs: the next one to start.
    pub(crate) fn ticket(&self) -> u64 {
        self.loads().started + 1
    }

    /// The latest snapshot, however old.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.latest.borrow().clone()
    }

    /// Watches for new snapshots.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.latest.subscribe()
    }

    /// Records that an event waits for load `ticket`; returns the number
    /// of a load the caller must start, when none runs.
    pub(crate) fn want(&self, ticket: u64) -> Option<u64> {
        let mut loads = self.loads();
        loads.wanted = loads.wanted.max(ticket);
        if loads.loading || self.latest.borrow().seq >= ticket {
            return None;
        }
        loads.loading = true;
        loads.started += 1;
        Some(loads.started)
    }

    /// Publishes a finished load; returns the number of the next load the
    /// caller must start, when events wait for a later one.
    pub(crate) fn publish(&self, snapshot: Snapshot) -> Option<u64> {
        let seq = snapshot.seq;
        self.latest.send_replace(Arc::new(snapshot));
        let mut loads = self.loads();
        if loads.wanted > seq {
            loads.started += 1;
            Some(loads.started)
        } else {
            loads.loading = false;
            None
        }
    }
}
