//! A realistic stream of events and the in-memory parent that receives
//! it, shared by the delivery and receive-path figures.
//!
//! The parent `root` has 100 children (`c0`..`c99`, in its registry and
//! in the scope table). Each event stream is made of grandchildren's
//! lives: `c<k>` spawns `g<i>` (`ScopeSubDelegated`, which registers
//! `g<i>`), `g<i>` ends four turns and reports one error (`TurnEnded`,
//! `Errored`: rendered, no side effect), then shuts down (`ShutDown`,
//! which removes its record, tombstones it and releases its allocation).
//! So every `ScopeSubDelegated` and every `ShutDown` changes the
//! parent's state, as in a real burst of work.

use std::sync::Arc;

use pod_events::{FakeReachability, Parent};
use pod_protocol::{Method, PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::{Record, Registry};
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{PodSpec, ScopeTable};
use pod_transport::UnixSender;

/// A parent over the in-memory registry and scope table.
pub(crate) type MemoryParent =
    Parent<MemoryRegistry, MemoryStore, FakeLiveness, UnixSender, FakeReachability>;

/// Children of the root; they spawn the grandchildren the stream is about.
pub(crate) const SPAWNERS: usize = 100;

/// Events in one grandchild's life.
pub(crate) const EVENTS_PER_LIFE: usize = 7;

const ROOT_PID: u32 = 1;

/// The process holding the children's and grandchildren's allocations:
/// this one, which sends their events in the socket items, so an
/// endpoint's sender check finds it speaking for them.
fn pod_pid() -> u32 {
    std::process::id()
}

pub(crate) fn pod(name: &str) -> PodName {
    PodName::new(name).expect("a valid pod name")
}

pub(crate) fn socket(name: &str) -> String {
    format!("/run/pods/{name}.sock")
}

fn spec(name: &str, pid: u32, target: &str) -> PodSpec {
    PodSpec {
        pod_name: pod(name),
        pid,
        socket: socket(name),
        scope: vec![ScopeRule::write(target)],
    }
}

/// The parent and a generator of grandchildren's lives.
pub(crate) struct Scenario {
    parent: Arc<MemoryParent>,
    scopes: ScopeTable<MemoryStore, FakeLiveness>,
    allocate: bool,
    next: usize,
}

impl Scenario {
    /// The root with its 100 children. With `allocate`, each
    /// grandchild's allocation is delegated in the scope table before its
    /// events are generated (its spawner does that before it reports), so
    /// its `ScopeSubDelegated` finds it and its `ShutDown` releases it;
    /// without, the table holds only the root and its children.
    pub(crate) async fn new(allocate: bool) -> Self {
        let liveness = FakeLiveness::new();
        for pid in [ROOT_PID, pod_pid()] {
            liveness.spawn(pid);
        }
        let scopes = ScopeTable::new(MemoryStore::new(), liveness);
        scopes
            .register(spec("root", ROOT_PID, "/srv/work"))
            .expect("register the root");
        let registry = MemoryRegistry::new();
        for k in 0..SPAWNERS {
            let name = format!("c{k}");
            let target = format!("/srv/work/{name}");
            let incarnation = if allocate {
                scopes
                    .delegate(&pod("root"), spec(&name, pod_pid(), &target))
                    .expect("delegate to a child")
                    .incarnation
                    .unwrap_or_default()
            } else {
                format!("c{k:031x}")
            };
            registry
                .add(Record {
                    pod_name: pod(&name),
                    socket_path: socket(&name),
                    scope_delegated: vec![ScopeRule::write(target)],
                    callback_address: socket("root"),
                    incarnation: Some(incarnation),
                })
                .await
                .expect("register a child");
        }
        let parent = Parent::new(
            pod("root"),
            registry,
            scopes.clone(),
            FakeReachability::new(),
        );
        Scenario {
            parent: Arc::new(parent),
            scopes,
            allocate,
            next: 0,
        }
    }

    /// The parent receiving the stream.
    pub(crate) fn parent(&self) -> &Arc<MemoryParent> {
        &self.parent
    }

    /// The events of `count` more lives, one `Vec` per life, in order.
    pub(crate) fn lives(&mut self, count: usize) -> Vec<Vec<PodEvent>> {
        (0..count).map(|_| self.life()).collect()
    }

    fn life(&mut self) -> Vec<PodEvent> {
        let i = self.next;
        self.next += 1;
        let spawner = format!("c{}", i % SPAWNERS);
        let name = format!("g{i}");
        let target = format!("/srv/work/{spawner}/{name}");
        let incarnation = if self.allocate {
            self.scopes
                .delegate(&pod(&spawner), spec(&name, pod_pid(), &target))
                .expect("delegate to a grandchild")
                .incarnation
                .unwrap_or_default()
        } else {
            format!("{i:032x}")
        };
        let inc = Some(incarnation);
        let turn = || PodEvent::TurnEnded {
            pod_name: name.clone(),
            incarnation: inc.clone(),
        };
        vec![
            PodEvent::ScopeSubDelegated {
                parent_pod: spawner.clone(),
                sub_pod: name.clone(),
                sub_socket: socket(&name),
                scope: vec![ScopeRule::write(target)],
                sub_incarnation: inc.clone(),
                spawner_socket: Some(socket(&spawner)),
            },
            turn(),
            turn(),
            PodEvent::Errored {
                pod_name: name.clone(),
                message: "tool `shell` failed: exit status 1\nstderr: cat: \
                          /srv/work/missing: No such file or directory"
                    .into(),
                incarnation: inc.clone(),
            },
            turn(),
            turn(),
            PodEvent::ShutDown {
                pod_name: name.clone(),
                incarnation: inc,
            },
        ]
    }
}

/// The wire frame of `event`, without its newline.
pub(crate) fn line(event: &PodEvent) -> Vec<u8> {
    let mut frame = pod_protocol::encode(&Method::PodEvent(event.clone()));
    frame.pop();
    frame
}
