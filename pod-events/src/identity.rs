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
//! | `ScopeSubDelegated` | the table must agree: `n`'s allocation exists with the event's rules and incarnation, and the sender is the pod it was delegated from or a pod above that | admitted when this parent already saw that incarnation depart (a reordered announcement, which registers nothing), or when the sender is the pod the event says delegated to `n`, or above it, and that pod is in the table holding the event's scope (`n` ran briefly and was released before its announcement arrived: applying it finds `n` dead and departs it); else refused, whatever the policy |
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
//! than [`snapshot_max_age`](crate::EndpointConfig::snapshot_max_age), so
//! they are rendered
//! whatever the table is doing. One about a pod whose allocation appeared
//! since the snapshot (or, under `Legacy`, while the table cannot be read)
//! is admitted as unverified; one the snapshot would refuse is judged again
//! on a fresh read. They only render a line.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pod_protocol::{PodEvent, Reparent};
use pod_scope_lock::{Allocation, Table};
use pod_transport::Peer;

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

/// The scope table as the endpoint last read it, for the quick checks of
/// `TurnEnded` and `Errored`.
#[derive(Debug)]
pub(crate) struct Snapshot {
    /// `None` when the table could not be read (or none was read yet).
    table: Option<Table>,
    /// Whether a load produced it (the first snapshot is a placeholder).
    loaded: bool,
    /// When its load started.
    started: Instant,
}

impl Snapshot {
    /// The table `table` (`None`: unreadable), read by a load started at
    /// `started`.
    pub(crate) fn new(table: Option<Table>, started: Instant) -> Self {
        Snapshot {
            table,
            loaded: true,
            started,
        }
    }

    /// Whether a load produced it.
    pub(crate) fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// Whether it is younger than `max_age`. This process's own writes
    /// do not age it: they only release allocations, and a released one
    /// still in the snapshot can only admit a line from the process that
    /// held it; what appears (another process's grants) ages it.
    pub(crate) fn is_recent(&self, max_age: Duration) -> bool {
        self.loaded && self.started.elapsed() < max_age
    }

    fn get(&self, name: &str) -> Option<&Allocation> {
        self.table.as_ref()?.get(name)
    }
}

/// The allocations above `of` in the delegation tree, nearest first.
fn ancestors<'t>(
    table: &'t Table,
    of: &'t Allocation,
) -> impl Iterator<Item = &'t Allocation> + 't {
    let parent_of = |a: &Allocation| table.get(a.delegated_from.as_ref()?.as_str());
    // The table's invariant forbids cycles; the bound is for a table read
    // while another writer broke it.
    std::iter::successors(parent_of(of), move |a| parent_of(a)).take(table.len())
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
    /// was connected, or, when it recorded none (an in-memory transport, a
    /// peer gone before its first frame was read), through the process
    /// tree.
    fn lineage(&self, peer: &Peer) -> Vec<u32> {
        let mut chain: Vec<u32> = peer
            .pid
            .into_iter()
            .chain(peer.ancestors.iter().copied())
            .collect();
        chain.retain(|&p| p > 1);
        if !peer.ancestors.is_empty() {
            // As deep as the listener records: no `/proc` reads here.
            return chain;
        }
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

    /// The sender speaks for a pod when the pod's live holder process is
    /// the sender or one of its ancestors (the sender is the pod or one of
    /// its helpers), or is a child of one of them (the sender is the pod's
    /// supervisor, or one of the supervisor's helpers). Over TLS, the
    /// certificate names the pod the sender is.
    fn speaks_for(&self, peer: &Peer, lineage: &[u32], allocation: &Allocation) -> bool {
        peer.pod_name.as_ref() == Some(&allocation.pod_name)
            || (self.is_live)(allocation)
                && (lineage.contains(&allocation.pid)
                    || self
                        .tree
                        .parent(allocation.pid)
                        .is_some_and(|parent| lineage.contains(&parent)))
    }

    /// Whether this pod (`me`) takes the reparent `notice` from `peer`:
    /// meant for it (name and incarnation), saying what the table says
    /// (its manager is `parent_pod`, listening at `parent_socket`), and
    /// sent by a pod above it in the table. `Err` says why not.
    pub(crate) fn judge_reparent(
        &self,
        notice: &Reparent,
        me: &str,
        peer: &Peer,
        table: Option<&Table>,
    ) -> Result<(), String> {
        if notice.pod_name != me {
            return Err(format!("it is meant for `{}`, not `{me}`", notice.pod_name));
        }
        let table = table.ok_or("the scope table is unreadable, so it cannot be checked")?;
        let mine = table
            .get(me)
            .ok_or_else(|| format!("`{me}` holds no allocation in the scope table"))?;
        if !mine.matches_incarnation(Some(&notice.incarnation)) {
            return Err(format!("it is meant for another incarnation of `{me}`"));
        }
        let manager = mine
            .delegated_from
            .as_ref()
            .and_then(|m| table.get(m.as_str()));
        let Some(manager) = manager.filter(|m| m.pod_name.as_str() == notice.parent_pod) else {
            return Err(format!(
                "the scope table does not say `{}` manages `{me}`",
                notice.parent_pod
            ));
        };
        if manager.socket != notice.parent_socket {
            return Err(format!(
                "`{}` listens at {:?} per the scope table, not {:?}",
                notice.parent_pod, manager.socket, notice.parent_socket
            ));
        }
        let lineage = self.lineage(peer);
        if ancestors(table, mine).any(|a| self.speaks_for(peer, &lineage, a)) {
            Ok(())
        } else {
            Err(format!(
                "{} speaks for no pod above `{me}`",
                who(peer, &lineage)
            ))
        }
    }

    fn by_policy(&self, what: impl FnOnce() -> String) -> Verdict {
        match self.policy {
            SenderPolicy::Legacy => Verdict::Unverified,
            SenderPolicy::Strict => Verdict::Rejected(what()),
        }
    }

    /// Decides whether the process `peer_pid` may send `event` (already
    /// validated), per the rules of the module documentation.
    pub(crate) fn judge(&self, event: &PodEvent, peer: &Peer, table: Option<&Table>) -> Verdict {
        let subject = event.subject();
        let get = |name: &str| table.and_then(|t| t.get(name));
        let lineage = self.lineage(peer);
        let speaks_for = |allocation: &Allocation| self.speaks_for(peer, &lineage, allocation);
        // Above `of` in the delegation tree, the sender speaks for a pod.
        let speaks_above =
            |of: &Allocation| table.is_some_and(|t| ancestors(t, of).any(&speaks_for));
        let who = || who(peer, &lineage);
        match (event, get(subject)) {
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
            // A pod that ran briefly: its release reached the table before
            // its spawner's announcement reached this parent (the relay of
            // its departure comes after). From a sender that speaks for the
            // spawner, or above it, that is reordering, not forgery:
            // applying it registers the pod, finds it dead and departs it.
            (
                PodEvent::ScopeSubDelegated {
                    parent_pod, scope, ..
                },
                None,
            ) if get(parent_pod).is_some_and(|spawner| {
                delegable(scope, &spawner.scope_allow) && (speaks_for(spawner) || speaks_above(spawner))
            }) =>
            {
                Verdict::Verified
            }
            (PodEvent::ScopeSubDelegated { .. }, None) => Verdict::Rejected(format!(
                "the scope table holds no allocation for `{subject}`, and the sender does not speak for the pod that says it delegated to it"
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
                    .and_then(|name| get(name.as_str()))
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
                    || table.is_some_and(|t| {
                        t.allocations().any(|a| {
                            lineage.contains(&a.pid)
                                && (self.is_live)(a)
                                && (self.is_registered)(a.pod_name.as_str())
                        })
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

/// The sender, for messages.
fn who(peer: &Peer, lineage: &[u32]) -> String {
    match (&peer.pod_name, lineage.first()) {
        (Some(name), _) => format!("the holder of a certificate for `{name}`"),
        (None, Some(pid)) => format!("process {pid}"),
        (None, None) => "a process of unknown pid".to_owned(),
    }
}

/// Whether `held` could have delegated every rule of `scope` (none is
/// not a delegation).
fn delegable(scope: &[pod_protocol::ScopeRule], held: &[pod_protocol::ScopeRule]) -> bool {
    !scope.is_empty()
        && scope
            .iter()
            .all(|rule| pod_scope_lock::coverage::grants(held, rule))
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

/// The endpoint's latest snapshot of the table, and whether a load of a
/// newer one runs (at most one at a time).
#[derive(Debug)]
pub(crate) struct Snapshots {
    latest: Mutex<Arc<Snapshot>>,
    loading: AtomicBool,
}

impl Default for Snapshots {
    fn default() -> Self {
        let none = Snapshot {
            table: None,
            loaded: false,
            started: Instant::now(),
        };
        Snapshots {
            latest: Mutex::new(Arc::new(none)),
            loading: AtomicBool::new(false),
        }
    }
}

impl Snapshots {
    /// The latest snapshot, however old.
    pub(crate) fn current(&self) -> Arc<Snapshot> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the caller must start a load: none runs.
    pub(crate) fn begin_load(&self) -> bool {
        !self.loading.swap(true, Ordering::AcqRel)
    }

    /// Publishes a finished load.
    pub(crate) fn publish(&self, snapshot: Snapshot) {
        *self.latest.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
        self.loading.store(false, Ordering::Release);
    }
}
