//! Model-based tests of deaths, reparent notices and restarts (DESIGN
//! sections 4 and 12).
//!
//! A generated tree of pods shares one in-memory scope table; every pod
//! runs a `Parent` over its own in-memory registry, sending through one
//! [`MemoryNetwork`]: its relays go to wherever its [`UpwardLink`] points,
//! its reparent notices to its orphans' sockets. Every method sent is
//! captured at its destination and delivered later, at a point the
//! schedule picks (a message to a dead pod is lost with it). A reparent
//! notice is handed to the orphan's real endpoint (`spawn_endpoint`, with
//! the manager's pid as the peer), which judges it against the table and
//! redirects the orphan's upward link.
//!
//! The generated events: pods shut down (their `ShutDown` sent where they
//! report now), pods die without a word, dead pods restart under their
//! spawner ([`ScopeTable::restart`] with their registry's records) and
//! tell the children they took back, and reconcile runs at any level. All
//! of them happen in a random order, interleaved with random deliveries;
//! then the world settles (every message delivered, reconcile at every
//! live level, until nothing changes). The properties:
//!
//! - every order of the same events ends in the same registries, departed
//!   sets, table and upward links at every level (and the closed-form
//!   model's);
//! - no live pod's upward link, nor any live ancestor's record of it,
//!   points at a dead pod once reconcile ran;
//! - every notice an orphan takes moves it under the pod the table says
//!   manages it, whose grant covers it (the table's invariant holds after
//!   every step).
//!
//! `PROPTEST_CASES` raises the case count (default 32).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;

use pod_events::{
    spawn_endpoint, CollectingSink, EndpointConfig, EndpointHandle, FakeProcessTree,
    FakeReachability, Parent, UpwardLink,
};
use pod_protocol::{Method, PodEvent, PodName, Reparent, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{PodSpec, ScopeTable, Table};
use pod_transport::testing::{MemoryNetwork, MemorySender, MemorySource};
use pod_transport::{MethodSender, MethodSource, Peer, PeerCred, Received};
use proptest::prelude::*;
use tokio::sync::mpsc;

pub(crate) type ModelParent =
    Parent<MemoryRegistry, MemoryStore, FakeLiveness, MemorySender, FakeReachability>;

/// A tree of pods: the parent of each, pod 0 the root.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Tree(pub(crate) Vec<Option<usize>>);

impl Tree {
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn parent(&self, i: usize) -> Option<usize> {
        self.0[i]
    }

    /// The pod's write scope: its path in the tree under `/w`.
    pub(crate) fn target(&self, i: usize) -> String {
        match self.0[i] {
            None => "/w".to_owned(),
            Some(p) => format!("{}/{}", self.target(p), name(i)),
        }
    }

    /// Its ancestors, nearest first.
    pub(crate) fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.0[i];
        while let Some(p) = at {
            out.push(p);
            at = self.0[p];
        }
        out
    }

    pub(crate) fn depth(&self, i: usize) -> usize {
        self.ancestors(i).len()
    }

    pub(crate) fn is_descendant(&self, x: usize, of: usize) -> bool {
        self.ancestors(x).contains(&of)
    }

    /// Pods ordered root first, by depth.
    fn top_down(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&i| (self.depth(i), i));
        order
    }
}

pub(crate) fn name(i: usize) -> String {
    format!("p{i}")
}

pub(crate) fn pod_name(i: usize) -> PodName {
    PodName::new(name(i)).unwrap()
}

pub(crate) fn socket(i: usize) -> String {
    format!("/run/pods/p{i}.sock")
}

fn index_of(name: &str) -> Option<usize> {
    name.strip_prefix('p')?.parse().ok()
}

/// The process of pod `i`'s `generation`th incarnation.
fn pid(i: usize, generation: u32) -> u32 {
    1000 + 100 * generation + i as u32
}

/// How an orphan judges a reparent notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Orphans {
    /// Its real endpoint judges it (the crate's code).
    Endpoints,
    /// The model judges it by the rules of DESIGN section 12 (meant for
    /// it, agrees with the table, from a live pod above it), without an
    /// endpoint: for the exhaustive check, which forks worlds.
    Rules,
}

/// One step of a schedule.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Action {
    /// The pod sends its `ShutDown` to where it reports now (again, when
    /// it already did: a duplicate) and is gone.
    Shut(usize),
    /// The pod's process dies without a word.
    Die(usize),
    /// The dead pod is started again by its spawner (its tree parent,
    /// live) under its name and scope, takes back its children and tells
    /// them; the spawner registers it and announces it upward.
    Restart(usize),
    /// Reconcile at this pod, when it lives.
    Reconcile(usize),
    /// The pod's spawner announces it upward (again): its
    /// `ScopeSubDelegated`.
    Announce(usize),
    /// Delivers the method in flight at this index (modulo their number).
    Deliver(usize),
}

/// A pod's endpoint, fed reparent notices from a given peer.
struct Endpoint {
    handle: EndpointHandle,
    notices: mpsc::UnboundedSender<Received>,
}

/// A [`MethodSource`] fed by the test.
struct ChannelSource(mpsc::UnboundedReceiver<Received>);

impl MethodSource for ChannelSource {
    async fn recv(&mut self) -> Option<Received> {
        self.0.recv().await
    }
}

struct PodState {
    registry: MemoryRegistry,
    parent: Arc<ModelParent>,
    link: Option<UpwardLink>,
    /// Where methods sent to the pod arrive; `None` while it is dead.
    inbox: Option<MemorySource>,
    endpoint: Option<Endpoint>,
    generation: u32,
    /// The incarnation of its current (or last) process.
    incarnation: String,
    alive: bool,
}

/// A key of the departed set: pod name and incarnation.
pub(crate) type Key = (String, Option<String>);

/// Everything the schedule's order could change, with incarnations
/// replaced by labels (`p3#1`: the second incarnation of `p3`) so that
/// states of different runs compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Snapshot {
    /// Per live pod: its records (as `Debug` of the normalized record,
    /// sorted) and departed set. Dead pods' registries died with them.
    pub(crate) registries: BTreeMap<usize, (Vec<String>, BTreeSet<Key>)>,
    /// The table, normalized, sorted by name (`Debug` of each).
    pub(crate) table: Vec<String>,
    /// Per live non-root pod: where it reports and the last `seq` taken.
    pub(crate) links: BTreeMap<usize, (String, u64)>,
}

impl Snapshot {
    /// This state without the departed sets: what a pod's registry
    /// remembers of departures depends on which of them it learned of,
    /// and a pod dead before it relayed a sub-delegation leaves its
    /// ancestors never knowing that pod (nor its departure).
    pub(crate) fn records_only(mut self) -> Snapshot {
        for (_, departed) in self.registries.values_mut() {
            departed.clear();
        }
        self
    }
}

/// A world's whole state, raw, to fork it from (the exhaustive check).
#[derive(Debug, Clone)]
pub(crate) struct State {
    table: Table,
    registries: Vec<(Vec<Record>, Vec<Key>)>,
    links: Vec<Option<(String, u64)>>,
    lives: Vec<(bool, u32, String)>,
    in_flight: Vec<(usize, Method)>,
    labels: HashMap<String, String>,
}

impl State {
    /// The methods in flight: destination pod and method.
    pub(crate) fn in_flight(&self) -> &[(usize, Method)] {
        &self.in_flight
    }

    /// A key equal for equal states (the table and registries sorted).
    pub(crate) fn key(&self) -> String {
        let mut table: Vec<String> = self.table.allocations().map(|a| format!("{a:?}")).collect();
        table.sort();
        let registries: Vec<_> = self
            .registries
            .iter()
            .map(|(records, departed)| {
                let mut records: Vec<String> = records.iter().map(|r| format!("{r:?}")).collect();
                records.sort();
                let departed: BTreeSet<&Key> = departed.iter().collect();
                (records, departed)
            })
            .collect();
        let mut in_flight: Vec<String> = self
            .in_flight
            .iter()
            .map(|(to, m)| format!("{to}:{m:?}"))
            .collect();
        in_flight.sort();
        format!(
            "{table:?}|{registries:?}|{:?}|{:?}|{in_flight:?}",
            self.links, self.lives
        )
    }
}

pub(crate) struct World {
    pub(crate) tree: Tree,
    scopes: ScopeTable<MemoryStore, FakeLiveness>,
    liveness: FakeLiveness,
    probe: FakeReachability,
    net: MemoryNetwork,
    pods: Vec<PodState>,
    /// Methods sent and not delivered yet: destination pod and method.
    pub(crate) in_flight: Vec<(usize, Method)>,
    /// Minted incarnation to label.
    labels: HashMap<String, String>,
    mode: Orphans,
    /// Notices orphans took, and refused.
    pub(crate) taken: u64,
    pub(crate) refused: u64,
}

fn spec(tree: &Tree, i: usize, generation: u32) -> PodSpec {
    PodSpec {
        pod_name: pod_name(i),
        pid: pid(i, generation),
        socket: socket(i),
        scope: vec![ScopeRule::write(tree.target(i))],
    }
}

fn record(tree: &Tree, x: usize, incarnation: Option<String>) -> Record {
    Record {
        pod_name: pod_name(x),
        socket_path: socket(x),
        scope_delegated: vec![ScopeRule::write(tree.target(x))],
        callback_address: socket(tree.parent(x).unwrap_or(x)),
        incarnation,
    }
}

impl World {
    /// The tree allocated, every pod alive. Each registry holds the pod's
    /// children, or with `complete` every descendant (every announcement
    /// already delivered).
    pub(crate) async fn new(tree: &Tree, complete: bool, mode: Orphans) -> World {
        let liveness = FakeLiveness::new();
        let scopes = ScopeTable::new(MemoryStore::new(), liveness.clone());
        let mut labels = HashMap::new();
        let mut incarnations = Vec::new();
        for i in 0..tree.len() {
            liveness.set(pid(i, 0), Some(7));
            let allocation = match tree.parent(i) {
                None => scopes.register(spec(tree, i, 0)).unwrap(),
                Some(p) => scopes.delegate(&pod_name(p), spec(tree, i, 0)).unwrap(),
            };
            let inc = allocation.incarnation.unwrap();
            labels.insert(inc.clone(), format!("{}#0", name(i)));
            incarnations.push(inc);
        }
        let mut registries = Vec::new();
        for i in 0..tree.len() {
            let registry = MemoryRegistry::new();
            for x in (0..tree.len())
                .filter(|&x| tree.parent(x) == Some(i) || (complete && tree.is_descendant(x, i)))
            {
                let record = record(tree, x, Some(incarnations[x].clone()));
                registry.add(record).await.unwrap();
            }
            registries.push(registry);
        }
        let mut world = World {
            tree: tree.clone(),
            scopes,
            liveness,
            probe: FakeReachability::new(),
            net: MemoryNetwork::new(),
            pods: Vec::new(),
            in_flight: Vec::new(),
            labels,
            mode,
            taken: 0,
            refused: 0,
        };
        for (i, registry) in registries.into_iter().enumerate() {
            let link = tree.parent(i).map(|p| UpwardLink::new(socket(p)));
            let pod = world.start(i, registry, link, 0, incarnations[i].clone());
            world.pods.push(pod);
        }
        world
    }

    /// A world in `state` (orphans judged by [`Orphans::Rules`]).
    pub(crate) async fn fork(tree: &Tree, state: &State) -> World {
        let liveness = FakeLiveness::new();
        let store = MemoryStore::with_table(state.table.clone());
        let scopes = ScopeTable::new(store, liveness.clone());
        let mut world = World {
            tree: tree.clone(),
            scopes,
            liveness,
            probe: FakeReachability::new(),
            net: MemoryNetwork::new(),
            pods: Vec::new(),
            in_flight: state.in_flight.clone(),
            labels: state.labels.clone(),
            mode: Orphans::Rules,
            taken: 0,
            refused: 0,
        };
        for i in 0..tree.len() {
            let (records, departed) = &state.registries[i];
            let registry = MemoryRegistry::new();
            for (pod, inc) in departed {
                registry
                    .depart(PodName::new(pod.as_str()).unwrap(), inc.clone())
                    .await
                    .unwrap();
            }
            for r in records {
                registry.add(r.clone()).await.unwrap();
            }
            let link = state.links[i].as_ref().map(|(address, seq)| {
                let link = UpwardLink::new(address.clone());
                link.redirect(address.clone(), *seq);
                link
            });
            let (alive, generation, incarnation) = state.lives[i].clone();
            let pod = world.start(i, registry, link, generation, incarnation);
            world.pods.push(pod);
            if !alive {
                world.bury(i);
            }
        }
        world
    }

    /// This world's whole state.
    pub(crate) fn state(&self) -> State {
        State {
            table: self.scopes.store_table(),
            registries: self
                .pods
                .iter()
                .map(|p| {
                    p.registry.read(|s| {
                        let departed = s
                            .departed()
                            .map(|t| (t.pod_name.to_string(), t.incarnation.clone()))
                            .collect();
                        (s.records().cloned().collect(), departed)
                    })
                })
                .collect(),
            links: self
                .pods
                .iter()
                .map(|p| p.link.as_ref().map(|l| (l.address(), l.seq())))
                .collect(),
            lives: self
                .pods
                .iter()
                .map(|p| (p.alive, p.generation, p.incarnation.clone()))
                .collect(),
            in_flight: self.in_flight.clone(),
            labels: self.labels.clone(),
        }
    }

    /// Starts pod `i`'s process: its parent, inbox and (with
    /// [`Orphans::Endpoints`]) endpoint.
    fn start(
        &self,
        i: usize,
        registry: MemoryRegistry,
        link: Option<UpwardLink>,
        generation: u32,
        incarnation: String,
    ) -> PodState {
        self.liveness.set(pid(i, generation), Some(7));
        self.probe.set_down(socket(i), false);
        let base = Parent::new(
            pod_name(i),
            registry.clone(),
            self.scopes.clone(),
            self.probe.clone(),
        );
        let parent = Arc::new(match &link {
            Some(link) => base.with_upward_link(self.net.sender(), link.clone()),
            None => base.with_sender(self.net.sender()),
        });
        let endpoint = (self.mode == Orphans::Endpoints).then(|| {
            let (notices, rx) = mpsc::unbounded_channel();
            let config = EndpointConfig::default()
                .reconcile_every(None)
                .exit_watch(None)
                .process_tree(FakeProcessTree::new());
            let handle = spawn_endpoint(
                parent.clone(),
                ChannelSource(rx),
                CollectingSink::new(),
                config,
            );
            Endpoint { handle, notices }
        });
        PodState {
            registry,
            parent,
            link,
            inbox: Some(self.net.bind(socket(i))),
            endpoint,
            generation,
            incarnation,
            alive: true,
        }
    }

    /// Pod's process gone: dead pid, closed socket, inbox and endpoint
    /// gone with what they held.
    fn bury(&mut self, i: usize) {
        let pod = &mut self.pods[i];
        pod.alive = false;
        pod.inbox = None;
        pod.endpoint = None;
        self.liveness.kill(pid(i, pod.generation));
        self.probe.set_down(socket(i), true);
        // What was on its way to it is lost now rather than at its turn:
        // the same either way, and fewer orders for the exhaustive check.
        self.in_flight.retain(|(to, _)| *to != i);
    }

    /// Runs one step; the methods it sent are then in flight.
    pub(crate) async fn act(&mut self, action: &Action) {
        match *action {
            Action::Shut(x) => {
                let event = PodEvent::ShutDown {
                    pod_name: name(x),
                    incarnation: Some(self.pods[x].incarnation.clone()),
                };
                if let Some(link) = &self.pods[x].link {
                    // A send to a dead pod fails: the event is lost.
                    let _ = self
                        .net
                        .sender()
                        .send(Path::new(&link.address()), &Method::PodEvent(event))
                        .await;
                }
                if self.pods[x].alive {
                    self.bury(x);
                }
            }
            Action::Die(x) => {
                if self.pods[x].alive {
                    self.bury(x);
                }
            }
            Action::Restart(x) => self.restart(x).await,
            Action::Reconcile(p) => {
                if self.pods[p].alive {
                    self.pods[p].parent.reconcile().await;
                }
            }
            Action::Announce(x) => self.announce(x).await,
            Action::Deliver(k) => {
                if !self.in_flight.is_empty() {
                    let k = k % self.in_flight.len();
                    let (to, method) = self.in_flight.remove(k);
                    self.deliver(to, method).await;
                }
            }
        }
        self.collect().await;
        let table = self.scopes.store_table();
        assert!(
            table.check_invariant().is_ok(),
            "{:?} after {action:?}",
            table.check_invariant()
        );
    }

    async fn announce(&mut self, x: usize) {
        let Some(p) = self.tree.parent(x) else { return };
        // Sent while the spawner lived, it arrives now, wherever the
        // spawner reported.
        let Some(link) = self.pods[p].link.as_ref() else {
            return;
        };
        let incarnation = self.pods[x].incarnation.clone();
        let event = PodEvent::ScopeSubDelegated {
            parent_pod: name(p),
            sub_pod: name(x),
            sub_socket: socket(x),
            scope: vec![ScopeRule::write(self.tree.target(x))],
            sub_incarnation: Some(incarnation),
            spawner_socket: Some(socket(p)),
        };
        let _ = self
            .net
            .sender()
            .send(Path::new(&link.address()), &Method::PodEvent(event))
            .await;
    }

    async fn restart(&mut self, x: usize) {
        let Some(p) = self.tree.parent(x) else { return };
        if self.pods[x].alive || !self.pods[p].alive {
            return;
        }
        let generation = self.pods[x].generation + 1;
        self.liveness.set(pid(x, generation), Some(7));
        let registry = self.pods[x].registry.clone();
        let former: Vec<(PodName, Option<String>)> = registry.read(|s| {
            s.records()
                .map(|r| (r.pod_name.clone(), r.incarnation.clone()))
                .collect()
        });
        let restarted = self
            .scopes
            .restart(Some(&pod_name(p)), spec(&self.tree, x, generation), &former)
            .expect("a restart under a live spawner succeeds");
        let inc = restarted.allocation.incarnation.clone().unwrap();
        self.labels
            .insert(inc.clone(), format!("{}#{generation}", name(x)));
        let link = Some(UpwardLink::new(socket(p)));
        let pod = self.start(x, registry, link, generation, inc.clone());
        self.pods[x] = pod;
        // Its spawner registers it and announces it.
        self.pods[p]
            .registry
            .add(record(&self.tree, x, Some(inc)))
            .await
            .unwrap();
        self.announce(x).await;
        // It tells the children it took back where to report.
        let told = self.pods[x]
            .parent
            .reparent_orphans(&restarted.taken_back, Some(&socket(x)))
            .await;
        assert_eq!(told.len(), restarted.taken_back.len(), "{restarted:?}");
    }

    async fn deliver(&mut self, to: usize, method: Method) {
        if !self.pods[to].alive {
            return;
        }
        match method {
            Method::PodEvent(event) => {
                self.pods[to].parent.apply(&event).await;
            }
            Method::Reparent(notice) => self.take(to, notice).await,
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The orphan `to` judges `notice`; when it takes it, it must now
    /// report to the pod the table says manages it, whose grant covers it.
    async fn take(&mut self, to: usize, notice: Reparent) {
        let manager = index_of(&notice.parent_pod).expect("a pod of the tree sent it");
        let before = self.pods[to].link.as_ref().map(|l| (l.address(), l.seq()));
        let taken = match self.mode {
            Orphans::Endpoints => {
                let endpoint = self.pods[to].endpoint.as_ref().unwrap();
                let stats = endpoint.handle.stats();
                let seen = stats.reparent_notices + stats.rejected_notices + stats.invalid;
                let peer = Peer::from(PeerCred {
                    pid: Some(pid(manager, self.pods[manager].generation) as i32),
                    ..PeerCred::current()
                });
                endpoint
                    .notices
                    .send(Received {
                        peer,
                        item: Ok(Method::Reparent(notice.clone())),
                    })
                    .unwrap();
                let judged = |h: &EndpointHandle| {
                    let s = h.stats();
                    s.reparent_notices + s.rejected_notices + s.invalid > seen
                };
                until(|| judged(&endpoint.handle)).await;
                endpoint.handle.stats().reparent_notices > stats.reparent_notices
            }
            Orphans::Rules => {
                let ok = self.judge(to, manager, &notice);
                if let (true, Some(link)) = (ok, &self.pods[to].link) {
                    link.redirect(notice.parent_socket.clone(), notice.seq);
                }
                ok && self.pods[to].link.is_some()
            }
        };
        let link = self.pods[to].link.as_ref().map(|l| (l.address(), l.seq()));
        if !taken {
            self.refused += 1;
            assert_eq!(link, before, "a refused notice moved {}", name(to));
            return;
        }
        self.taken += 1;
        let table = self.scopes.store_table();
        let mine = table.get(&name(to)).expect("a taking orphan holds scope");
        let boss = mine
            .delegated_from
            .as_ref()
            .and_then(|m| table.get(m.as_str()))
            .expect("a taken notice names the orphan's manager");
        assert_eq!(boss.pod_name.as_str(), notice.parent_pod);
        let (address, seq) = link.unwrap();
        if seq == notice.seq {
            assert_eq!(
                address,
                boss.socket,
                "{} reports outside the table",
                name(to)
            );
        }
        assert!(
            mine.scope_allow.iter().all(|rule| {
                boss.scope_allow.iter().any(|g| {
                    rule.target == g.target || rule.target.starts_with(&format!("{}/", g.target))
                })
            }),
            "{} moved under {}, whose grant does not cover it",
            name(to),
            boss.pod_name
        );
    }

    /// DESIGN section 12's rules, as the model states them.
    fn judge(&self, to: usize, manager: usize, notice: &Reparent) -> bool {
        let table = self.scopes.store_table();
        let Some(mine) = table.get(&name(to)) else {
            return false;
        };
        let boss = mine
            .delegated_from
            .as_ref()
            .and_then(|m| table.get(m.as_str()));
        let from_above = {
            let mut at = mine.delegated_from.clone();
            let mut found = false;
            while let Some(a) = at.and_then(|m| table.get(m.as_str())) {
                if a.pod_name == pod_name(manager) && self.scopes.is_live(a) {
                    found = true;
                }
                at = a.delegated_from.clone();
            }
            found
        };
        notice.pod_name == name(to)
            && mine.incarnation.as_deref() == Some(notice.incarnation.as_str())
            && boss.is_some_and(|b| {
                b.pod_name.as_str() == notice.parent_pod && b.socket == notice.parent_socket
            })
            && from_above
    }

    /// Moves what arrived at every inbox in flight, after the relays
    /// spawned so far are sent.
    async fn collect(&mut self) {
        for pod in self.pods.iter().filter(|p| p.alive) {
            pod.parent.wait_for_relays().await;
        }
        for (i, pod) in self.pods.iter_mut().enumerate() {
            let Some(inbox) = &mut pod.inbox else {
                continue;
            };
            while let Some(received) = poll_now(inbox).await {
                self.in_flight.push((i, received.item.unwrap()));
            }
        }
    }

    /// Delivers everything in flight, oldest first, until nothing is.
    pub(crate) async fn deliver_all(&mut self) {
        while !self.in_flight.is_empty() {
            self.act(&Action::Deliver(0)).await;
        }
    }

    /// Every message delivered and reconcile run at every live pod, top
    /// down, until nothing changes (bounded: a round more than the tree is
    /// deep would be a bug, and fails the properties).
    pub(crate) async fn settle(&mut self) {
        let mut last = None;
        for _ in 0..self.tree.len() + 3 {
            self.deliver_all().await;
            for p in self.tree.top_down() {
                self.act(&Action::Reconcile(p)).await;
                self.deliver_all().await;
            }
            let now = self.snapshot();
            if last.as_ref() == Some(&now) {
                return;
            }
            last = Some(now);
        }
    }

    fn label(&self, inc: &Option<String>) -> Option<String> {
        inc.as_ref()
            .map(|i| self.labels.get(i).cloned().unwrap_or_else(|| i.clone()))
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let registries = (0..self.tree.len())
            .filter(|&i| self.pods[i].alive)
            .map(|i| {
                self.pods[i].registry.read(|s| {
                    let mut records: Vec<String> = s
                        .records()
                        .map(|r| {
                            let mut r = r.clone();
                            r.incarnation = self.label(&r.incarnation);
                            format!("{r:?}")
                        })
                        .collect();
                    records.sort();
                    let departed = s
                        .departed()
                        .map(|t| (t.pod_name.to_string(), self.label(&t.incarnation)))
                        .collect();
                    (i, (records, departed))
                })
            })
            .collect();
        let mut table: Vec<String> = self
            .scopes
            .list()
            .unwrap()
            .into_iter()
            .map(|mut a| {
                a.incarnation = self.label(&a.incarnation);
                format!("{a:?}")
            })
            .collect();
        table.sort();
        let links = (0..self.tree.len())
            .filter(|&i| self.pods[i].alive)
            .filter_map(|i| {
                let l = self.pods[i].link.as_ref()?;
                Some((i, (l.address(), l.seq())))
            })
            .collect();
        Snapshot {
            registries,
            table,
            links,
        }
    }

    /// The settled world against the closed-form model, given which pods
    /// are gone for good: the table holds exactly the live pods, each
    /// under its nearest live ancestor; every live pod's registry holds
    /// exactly its live descendants, each pointing at its manager; every
    /// live pod reports to its manager; none of these is a dead pod.
    pub(crate) fn check_settled(&self) {
        let table = self.scopes.store_table();
        let manager = |x: usize| {
            self.tree
                .ancestors(x)
                .into_iter()
                .find(|&a| self.pods[a].alive)
        };
        let held: BTreeSet<String> = table
            .allocations()
            .map(|a| a.pod_name.to_string())
            .collect();
        let live: BTreeSet<String> = (0..self.tree.len())
            .filter(|&i| self.pods[i].alive)
            .map(name)
            .collect();
        assert_eq!(held, live, "the table holds exactly the live pods");
        for x in (0..self.tree.len()).filter(|&x| self.pods[x].alive) {
            let a = table.get(&name(x)).unwrap();
            assert_eq!(
                a.delegated_from.as_ref().map(|n| n.to_string()),
                manager(x).map(name),
                "{} is under its nearest live ancestor",
                name(x)
            );
            let label = self.label(&a.incarnation).unwrap();
            assert_eq!(label, format!("{}#{}", name(x), self.pods[x].generation));
            if let Some(m) = manager(x) {
                let link = self.pods[x].link.as_ref().unwrap();
                assert_eq!(
                    link.address(),
                    socket(m),
                    "{} reports to its manager",
                    name(x)
                );
            }
            let records: BTreeMap<String, Record> = self.pods[x]
                .registry
                .list()
                .into_iter()
                .map(|r| (r.pod_name.to_string(), r))
                .collect();
            let descendants: BTreeSet<String> = (0..self.tree.len())
                .filter(|&d| self.pods[d].alive && self.tree.is_descendant(d, x))
                .map(name)
                .collect();
            assert_eq!(
                records.keys().cloned().collect::<BTreeSet<_>>(),
                descendants,
                "the registry of {} holds its live descendants",
                name(x)
            );
            let departed: Vec<Key> = self.pods[x].registry.read(|s| {
                s.departed()
                    .map(|t| (t.pod_name.to_string(), t.incarnation.clone()))
                    .collect()
            });
            for (d, inc) in departed {
                let d = index_of(&d).unwrap();
                assert!(
                    !(self.pods[d].alive
                        && inc.as_deref() == Some(self.pods[d].incarnation.as_str())),
                    "{} holds the live {} as departed",
                    name(x),
                    name(d)
                );
            }
            for (d, r) in &records {
                let d = index_of(d).unwrap();
                let m = manager(d).unwrap();
                assert_eq!(
                    r.callback_address,
                    socket(m),
                    "{}'s record of {} points at its manager",
                    name(x),
                    name(d)
                );
                assert_eq!(
                    self.label(&r.incarnation),
                    self.label(&table.get(&name(d)).unwrap().incarnation)
                );
            }
        }
    }
}

/// The store's table, read in one transaction.
trait StoreTable {
    fn store_table(&self) -> Table;
}

impl StoreTable for ScopeTable<MemoryStore, FakeLiveness> {
    fn store_table(&self) -> Table {
        self.list().unwrap().into_iter().collect()
    }
}

/// The next item already received, without waiting.
async fn poll_now(source: &mut MemorySource) -> Option<Received> {
    tokio::select! {
        biased;
        received = source.recv() => received,
        () = std::future::ready(()) => None,
    }
}

/// Lets the endpoint's tasks run until `f` holds; fails after 10 s of
/// waiting (a liveness bound, not a performance assertion).
async fn until(mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("an endpoint did not judge a notice in 10 s");
}

/// What becomes of a non-root pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Lives,
    /// Shuts down; its `ShutDown` sent twice when `true`.
    Shuts(bool),
    Dies,
    /// Dies, then its spawner starts it again.
    Restarts,
}

#[derive(Debug, Clone)]
struct Scenario {
    tree: Tree,
    fates: Vec<Fate>,
    reconciles: Vec<usize>,
}

impl Scenario {
    /// The events, in a canonical order: each pod's, by index, then the
    /// reconciles.
    fn events(&self) -> Vec<Action> {
        let mut out = Vec::new();
        for (x, fate) in self.fates.iter().enumerate() {
            match fate {
                Fate::Lives => {}
                Fate::Shuts(twice) => {
                    out.push(Action::Shut(x));
                    if *twice {
                        out.push(Action::Shut(x));
                    }
                }
                Fate::Dies => out.push(Action::Die(x)),
                Fate::Restarts => out.extend([Action::Die(x), Action::Restart(x)]),
            }
        }
        out.extend(self.reconciles.iter().map(|&p| Action::Reconcile(p)));
        out
    }
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let pod = (any::<u32>(), 0u8..8);
    (
        proptest::collection::vec(pod, 1..12),
        proptest::collection::vec(any::<u32>(), 0..6),
    )
        .prop_map(|(raw, reconciles)| {
            let mut parents = vec![None];
            let mut fates = vec![Fate::Lives];
            for (i, (choice, fate)) in raw.into_iter().enumerate() {
                let i = i + 1;
                let mut p = choice as usize % i;
                while parents.len() > p && Tree(parents.clone()).depth(p) >= 3 {
                    p = parents[p].unwrap_or(0);
                }
                parents.push(Some(p));
                let fate = match fate {
                    0..=2 => Fate::Lives,
                    3 => Fate::Shuts(false),
                    4 => Fate::Shuts(true),
                    5 => Fate::Dies,
                    // A restart needs its spawner to live throughout.
                    _ if fates[p] == Fate::Lives => Fate::Restarts,
                    _ => Fate::Dies,
                };
                fates.push(fate);
            }
            // A pod's fate is set after its children's: a parent that
            // restarts would have had to live for them.
            for x in 1..fates.len() {
                if fates[x] == Fate::Restarts && fates[parents[x].unwrap()] != Fate::Lives {
                    fates[x] = Fate::Dies;
                }
            }
            let n = parents.len();
            Scenario {
                tree: Tree(parents),
                fates,
                reconciles: reconciles.into_iter().map(|r| r as usize % n).collect(),
            }
        })
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

/// The events in an order drawn from `seed` (a restart still after its
/// death), interleaved with deliveries at random points; then settled.
async fn run(s: &Scenario, seed: Option<u64>) -> World {
    let mut world = World::new(&s.tree, true, Orphans::Endpoints).await;
    let mut events = s.events();
    let Some(seed) = seed else {
        for event in &events {
            world.act(event).await;
            world.deliver_all().await;
        }
        world.settle().await;
        return world;
    };
    let mut rng = Rng(seed);
    for i in (1..events.len()).rev() {
        events.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    for x in 0..s.tree.len() {
        let at = |a: Action| events.iter().position(|e| *e == a);
        if let (Some(d), Some(r)) = (at(Action::Die(x)), at(Action::Restart(x))) {
            if r < d {
                events.swap(r, d);
            }
        }
    }
    let mut next = events.into_iter().peekable();
    loop {
        let deliver =
            !world.in_flight.is_empty() && (next.peek().is_none() || rng.next().is_multiple_of(2));
        if deliver {
            world.act(&Action::Deliver(rng.next() as usize)).await;
        } else if let Some(event) = next.next() {
            world.act(&event).await;
        } else {
            break;
        }
    }
    world.settle().await;
    world
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
            .unwrap_or(32),
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    /// Convergence with deaths, notices and restarts; no orphan left
    /// reporting to a dead pod; no notice moving a pod outside its
    /// manager's grant (checked at every notice taken).
    #[test]
    fn deaths_notices_and_restarts_converge(s in scenario(), seeds in any::<[u64; 2]>()) {
        let rt = runtime();
        rt.block_on(async {
            let reference = run(&s, None).await;
            reference.check_settled();
            let expected = reference.snapshot();
            for seed in seeds {
                let world = run(&s, Some(seed)).await;
                world.check_settled();
                prop_assert_eq!(&world.snapshot(), &expected, "seed {}", seed);
            }
            Ok(())
        })?;
    }
}
