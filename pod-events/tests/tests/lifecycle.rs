//! The lifecycle on in-memory layers (DESIGN section 11): a child's
//! context adopts, reports and departs exactly once; bad handoffs change
//! nothing; the spawner reserves, starts, registers, and undoes a failed
//! start.

use std::sync::Arc;

use pod_events::{
    ContextError, FakeReachability, Handoff, Parent, PodContext, SpawnError, Spawner,
};
use pod_protocol::{Method, PodEvent, PodName, ScopeRule};
use pod_registry::testing::MemoryRegistry;
use pod_registry::Registry;
use pod_scope_lock::testing::{FakeLiveness, MemoryStore};
use pod_scope_lock::{Allocation, PodSpec, ScopeError, ScopeTable};
use pod_transport::testing::{MemoryNetwork, MemorySender};
use pod_transport::MethodSource;

const PARENT_PID: u32 = 100;
const CHILD_PID: u32 = 200;
const PARENT_SOCKET: &str = "/run/pods/root/sock";

fn pod(name: &str) -> PodName {
    PodName::new(name).unwrap()
}

/// A table where `root` (pid 100) holds write scope on `/srv`, and
/// `child` is reserved from it with write scope on `/srv/a`.
struct World {
    table: ScopeTable<MemoryStore, FakeLiveness>,
    liveness: FakeLiveness,
    net: MemoryNetwork,
    reservation: Allocation,
}

impl World {
    fn new() -> World {
        let liveness = FakeLiveness::new();
        let table = ScopeTable::new(MemoryStore::new(), liveness.clone());
        liveness.spawn(PARENT_PID);
        liveness.spawn(CHILD_PID);
        table
            .register(PodSpec {
                pod_name: pod("root"),
                pid: PARENT_PID,
                socket: PARENT_SOCKET.into(),
                scope: vec![ScopeRule::write("/srv")],
            })
            .unwrap();
        let reservation = table
            .reserve(
                &pod("root"),
                PodSpec {
                    pod_name: pod("child"),
                    pid: 0,
                    socket: "/run/pods/child/sock".into(),
                    scope: vec![ScopeRule::write("/srv/a")],
                },
            )
            .unwrap();
        World {
            table,
            liveness,
            net: MemoryNetwork::new(),
            reservation,
        }
    }

    fn handoff(&self, incarnation: &str) -> Handoff {
        Handoff::new(
            pod("child"),
            incarnation.into(),
            pod("root"),
            PARENT_SOCKET.into(),
            "/run/pods/child/sock".into(),
            std::path::PathBuf::from("/run/pods/scope.lock"),
        )
    }

    fn incarnation(&self) -> String {
        self.reservation.incarnation.clone().unwrap()
    }

    async fn adopt(
        &self,
        incarnation: &str,
    ) -> Result<PodContext<MemoryStore, FakeLiveness, MemorySender>, ContextError> {
        PodContext::adopt(
            self.handoff(incarnation),
            self.table.clone(),
            self.net.sender(),
            CHILD_PID,
        )
        .await
    }

    fn child(&self) -> Option<Allocation> {
        self.table.find(&pod("child")).unwrap()
    }

    /// The pod events delivered to the parent's socket so far.
    fn reported(&self) -> Vec<PodEvent> {
        self.net
            .sent()
            .into_iter()
            .filter_map(|(_, method)| match method {
                Method::PodEvent(event) => Some(event),
                _ => None,
            })
            .collect()
    }
}

/// Adopting with `incarnation` after `prepare` fails with the error
/// `expected` accepts, and the reservation is exactly as before.
async fn check_refused(
    prepare: impl FnOnce(&World),
    incarnation: Option<&str>,
    expected: fn(&ScopeError) -> bool,
) {
    let world = World::new();
    prepare(&world);
    let before = world.child();
    let inc = incarnation.map_or_else(|| world.incarnation(), str::to_owned);
    match world.adopt(&inc).await {
        Err(ContextError::Adopt { source, name }) => {
            assert_eq!(name.as_str(), "child");
            assert!(expected(&source), "unexpected refusal: {source}");
        }
        other => panic!("adoption must be refused, got {other:?}"),
    }
    assert_eq!(world.child(), before, "a refused adoption changes nothing");
    assert!(
        world.reported().is_empty(),
        "a refused adoption reports nothing"
    );
}

#[tokio::test]
async fn a_foreign_incarnation_is_refused_and_changes_nothing() {
    check_refused(
        |_| {},
        Some("feedface"),
        |e| matches!(e, ScopeError::IncarnationMismatch { .. }),
    )
    .await;
}

#[tokio::test]
async fn an_expired_reservation_is_refused_and_changes_nothing() {
    check_refused(
        |w| {
            w.liveness.advance_ms(
                ScopeTable::<MemoryStore>::DEFAULT_RESERVATION_DEADLINE.as_millis() as u64 + 1,
            )
        },
        None,
        |e| matches!(e, ScopeError::ReservationExpired { .. }),
    )
    .await;
}

#[tokio::test]
async fn a_reservation_adopted_by_another_process_is_refused() {
    check_refused(
        |w| {
            w.liveness.spawn(300);
            w.table.adopt(&pod("child"), &w.incarnation(), 300).unwrap();
        },
        None,
        |e| matches!(e, ScopeError::NotReserved { .. }),
    )
    .await;
}

#[tokio::test]
async fn no_reservation_at_all_is_refused() {
    check_refused(
        |w| {
            w.table.release(&pod("child"), None).unwrap();
        },
        None,
        |e| matches!(e, ScopeError::UnknownPod { .. }),
    )
    .await;
}

#[tokio::test]
async fn the_child_adopts_reports_and_departs_exactly_once() {
    let world = World::new();
    let _parent = world.net.bind(PARENT_SOCKET);
    let context = world.adopt(&world.incarnation()).await.unwrap();
    let held = world.child().unwrap();
    assert_eq!(
        held.pid, CHILD_PID,
        "the child's own process holds the grant"
    );
    assert_eq!(held.pending_until, None);
    assert_eq!(context.allocation(), &held);

    context.turn_ended().unwrap().await.unwrap();
    context.errored("boom").unwrap().await.unwrap();
    let first = context.shut_down().await;
    assert!(first.first && first.reported);
    assert_eq!(first.released.map(|a| a.pod_name), Some(pod("child")));
    assert_eq!(world.child(), None);

    let again = context.shut_down().await;
    assert!(!again.first && !again.reported && again.released.is_none());
    assert!(
        context.turn_ended().is_none(),
        "nothing is reported after ShutDown"
    );
    drop(context);

    let inc = Some(world.incarnation());
    assert_eq!(
        world.reported(),
        vec![
            PodEvent::TurnEnded {
                pod_name: "child".into(),
                incarnation: inc.clone()
            },
            PodEvent::Errored {
                pod_name: "child".into(),
                message: "boom".into(),
                incarnation: inc.clone()
            },
            PodEvent::ShutDown {
                pod_name: "child".into(),
                incarnation: inc
            },
        ],
        "one ShutDown, with the incarnation, and nothing after it"
    );
}

#[tokio::test]
async fn dropping_the_context_departs_best_effort() {
    let world = World::new();
    let _parent = world.net.bind(PARENT_SOCKET);
    let context = world.adopt(&world.incarnation()).await.unwrap();
    drop(context);
    assert_eq!(world.child(), None, "the drop released the allocation");
    assert_eq!(
        world.reported(),
        vec![PodEvent::ShutDown {
            pod_name: "child".into(),
            incarnation: Some(world.incarnation())
        }]
    );
}

#[tokio::test]
async fn an_unreachable_parent_does_not_keep_the_allocation() {
    let world = World::new();
    let context = world.adopt(&world.incarnation()).await.unwrap();
    let departure = context.shut_down().await;
    assert!(departure.first && !departure.reported);
    assert!(departure.released.is_some());
    assert_eq!(world.child(), None);
}

#[tokio::test]
async fn an_adoption_made_for_this_process_is_accepted() {
    let world = World::new();
    world
        .table
        .adopt(&pod("child"), &world.incarnation(), CHILD_PID)
        .unwrap();
    let context = world.adopt(&world.incarnation()).await.unwrap();
    assert_eq!(context.allocation().pid, CHILD_PID);
}

type MemParent = Parent<MemoryRegistry, MemoryStore, FakeLiveness, MemorySender, FakeReachability>;

fn spawner(
    world: &World,
) -> Spawner<MemoryRegistry, MemoryStore, FakeLiveness, MemorySender, FakeReachability> {
    let parent: MemParent = Parent::new(
        pod("root"),
        MemoryRegistry::new(),
        world.table.clone(),
        FakeReachability::new(),
    )
    .with_upward(world.net.sender(), "/run/pods/up/sock");
    Spawner::new(Arc::new(parent), PARENT_SOCKET, "/run/pods/scope.lock")
}

fn sh(script: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("/bin/sh");
    command
        .args(["-c", script])
        .stdout(std::process::Stdio::piped());
    command
}

#[tokio::test]
async fn the_spawner_reserves_hands_off_registers_and_relays() {
    let world = World::new();
    let mut up = world.net.bind("/run/pods/up/sock");
    let spawner = spawner(&world);
    let mut command = sh("echo $POD_NAME $POD_INCARNATION $POD_PARENT $POD_PARENT_SOCKET $POD_SOCKET $POD_SCOPE_LOCK");
    let scope = vec![ScopeRule::write("/srv/b")];
    let mut child = spawner
        .spawn(&mut command, pod("kid"), scope.clone())
        .await
        .unwrap();

    let reserved = world.table.find(&pod("kid")).unwrap().unwrap();
    assert_eq!(
        reserved.pid, PARENT_PID,
        "held under the spawner until adopted"
    );
    assert!(reserved.pending_until.is_some());
    assert_eq!(
        reserved.incarnation.as_deref(),
        Some(child.incarnation.as_str())
    );
    assert_eq!(child.socket, "/run/pods/kid/sock");

    let record = spawner
        .parent()
        .registry()
        .get("kid", Some(&child.incarnation))
        .unwrap();
    assert_eq!(record.callback_address, PARENT_SOCKET);
    let relayed = up.recv().await.unwrap().item.unwrap();
    assert!(
        matches!(relayed, Method::PodEvent(PodEvent::ScopeSubDelegated { ref parent_pod, ref sub_pod, .. }) if parent_pod == "root" && sub_pod == "kid"),
        "{relayed:?}"
    );

    let mut stdout = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.process.stdout.as_mut().unwrap(), &mut stdout)
        .await
        .unwrap();
    assert_eq!(
        stdout.trim(),
        format!(
            "kid {} root {PARENT_SOCKET} /run/pods/kid/sock /run/pods/scope.lock",
            child.incarnation
        )
    );
    let (status, effects) = spawner.wait(&mut child).await.unwrap();
    assert!(status.success());
    assert_eq!(effects.removed.len(), 1, "its exit removes its record");
    assert!(
        effects.released.is_some(),
        "and releases the reservation it never adopted"
    );
    assert!(spawner.parent().registry().list().is_empty());
}

#[tokio::test]
async fn a_failed_start_releases_the_reservation() {
    let world = World::new();
    let spawner = spawner(&world);
    let mut command = tokio::process::Command::new("/nonexistent/program");
    let error = spawner
        .spawn(&mut command, pod("kid"), vec![ScopeRule::write("/srv/b")])
        .await
        .unwrap_err();
    assert!(matches!(error, SpawnError::Spawn { .. }), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/program"),
        "{error}"
    );
    assert_eq!(world.table.find(&pod("kid")).unwrap(), None);
    assert!(spawner.parent().registry().list().is_empty());
}

#[tokio::test]
async fn refusals_name_the_reason_and_start_nothing() {
    let world = World::new();
    let spawner = spawner(&world);
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("started");
    let script = format!("touch {}", marker.display());
    let error = spawner
        .spawn(&mut sh(&script), pod("kid"), vec![ScopeRule::write("/etc")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            SpawnError::Reserve {
                source: ScopeError::NotSubset { .. },
                ..
            }
        ),
        "{error}"
    );
    let error = spawner
        .spawn(
            &mut sh(&script),
            pod("kid"),
            vec![ScopeRule::write("/srv/a/x")],
        )
        .await
        .unwrap_err();
    match error {
        SpawnError::Reserve {
            source: ScopeError::WriteConflict { competitor, .. },
            ..
        } => {
            assert_eq!(competitor.as_str(), "child");
        }
        other => panic!("{other}"),
    }
    assert!(!marker.exists(), "nothing was started");
    assert_eq!(world.table.find(&pod("kid")).unwrap(), None);
}

#[tokio::test]
async fn a_process_started_without_the_variables_is_told_which_is_missing() {
    // The test runner sets none of them (the multi-process tests set
    // them only on the processes they start).
    if Handoff::present_in_env() {
        return;
    }
    let error = PodContext::from_env().await.unwrap_err();
    assert!(
        matches!(
            error,
            ContextError::Handoff(pod_events::HandoffError::Missing {
                variable: "POD_NAME"
            })
        ),
        "{error}"
    );
    assert!(error.to_string().contains("POD_NAME is not set"), "{error}");
}
