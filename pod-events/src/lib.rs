//! Lifecycle events between Pods: send, render, apply, receive, reconcile.
//!
//! This crate is the orchestration layer. A child reports `TurnEnded`,
//! `Errored`, `ShutDown` and `ScopeSubDelegated` to its parent
//! ([`send_pod_event`], [`fire_and_forget`]); the parent applies each
//! event's side effects idempotently and in any order
//! ([`Parent::apply`], [`apply_event_side_effects`]), renders it as one
//! safe line for its LLM ([`render_event`]), and repairs whatever events
//! were lost with [`Parent::reconcile`]. [`spawn_endpoint`] runs all of it
//! as a receive loop over a listener.
//!
//! It owns no wire format, socket, file or lock of its own: the wire types
//! are `pod-protocol`'s, sockets `pod-transport`'s, the registry file
//! `pod-registry`'s and the scope table `pod-scope-lock`'s. It reaches each
//! through the trait that crate defines ([`MethodSender`],
//! [`MethodSource`], [`Registry`], [`TableStore`], [`Liveness`]), so every
//! layer can be swapped for its in-memory implementation in tests.
//!
//! # A parent and its child
//!
//! [`Pod`] is the facade: the parent registers its scope and spawns a
//! child with part of it; the child (here the same program, re-executed)
//! adopts its reservation from the handoff variables, reports, and leaves.
//!
//! ```
//! use pod_events::tokio::process::Command;
//! use pod_events::{Handoff, Pod, PodEvent, ScopeRule};
//!
//! #[pod_events::tokio::main(crate = "pod_events::tokio")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     if Handoff::present_in_env() {
//!         // The child: take the place its parent reserved, work, report, leave.
//!         let child = Pod::from_env()?.start().await?;
//!         child.turn_ended();
//!         child.shut_down().await?;
//!         return Ok(());
//!     }
//!
//!     // The parent: a top-level pod holding write scope on a repository.
//!     let dir = std::env::temp_dir().join(format!("pods-{}", std::process::id()));
//!     let repo = dir.join("repo");
//!     let mut root = Pod::builder("root", &dir)?.write(&repo).start().await?;
//!
//!     // This same program, spawned as a child with part of that scope.
//!     let docs = ScopeRule::write(repo.join("docs").display().to_string());
//!     let mut child = root.spawn(&mut Command::new(std::env::current_exe()?), "docs", [docs]).await?;
//!
//!     // Each event of the child arrives as one line for the parent's LLM.
//!     while let Some(note) = root.next_notification().await {
//!         println!("{}", note.line);
//!         if matches!(note.event, PodEvent::ShutDown { .. }) {
//!             break;
//!         }
//!     }
//!     root.wait(&mut child).await?;
//!     assert!(root.pods().is_empty());
//!     root.shut_down().await?;
//!     std::fs::remove_dir_all(dir)?;
//!     Ok(())
//! }
//! ```
//!
//! [`MethodSender`]: pod_transport::MethodSender
//! [`MethodSource`]: pod_transport::MethodSource
//! [`Registry`]: pod_registry::Registry
//! [`TableStore`]: pod_scope_lock::TableStore
//! [`Liveness`]: pod_scope_lock::Liveness

mod batch;
mod context;
mod control;
mod endpoint;
mod guard;
pub mod handoff;
pub mod identity;
mod merge;
mod parent;
mod pod;
mod probe;
mod render;
mod send;
mod sender;
mod spawner;
mod upward;
pub mod watch;

pub use context::{ContextError, PodContext};
pub use control::{
    control_socket_path, ControlError, ControlSink, CONTROL_BACKLOG, MAX_SUBSCRIBERS,
};
pub use endpoint::{
    spawn_endpoint, CollectingSink, EndpointConfig, EndpointHandle, EndpointProgress,
    EndpointStats, Notification, NotificationSink,
};
pub use guard::Departure;
pub use handoff::{Handoff, HandoffError, TableLocation, TlsFiles};
pub use identity::{FakeProcessTree, ProcTree, ProcessTree, SenderPolicy};
pub use merge::{merge, Merged};
pub use parent::{Effects, Parent, PodStatus, Reconciliation};
pub use pod::{FileParent, Pod, PodBuilder, PodError};
pub use probe::{FakeReachability, Reachability, SocketProbe};
pub use render::{
    render, render_applied, render_event, render_scope, Applied, Origin, MAX_LINE_LEN,
};
pub use send::{fire_and_forget, send_pod_event};
pub use sender::AddressSender;
pub use spawner::{SpawnError, SpawnedChild, Spawner};
pub use upward::UpwardLink;
#[cfg(feature = "etcd")]
pub use watch::LeaseWatch;
#[cfg(any(target_os = "linux", target_os = "android"))]
pub use watch::PidfdWatch;
pub use watch::{ExitSignal, ExitWatch, ManualExitWatch, WatchError, WatchedPod};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use pod_protocol;
pub use pod_protocol::{PodEvent, PodName, ScopeRule};
pub use pod_registry;
pub use pod_scope_lock;
pub use pod_transport;
/// The async runtime the crate runs on, re-exported so that an embedder
/// needs no other dependency (`#[tokio::main(crate = "pod_events::tokio")]`).
pub use tokio;

/// Applies the side effects of `event` at `parent`: the free-function form
/// of [`Parent::apply`].
pub async fn apply_event_side_effects<R, S, L, U, P>(
    parent: &Parent<R, S, L, U, P>,
    event: &pod_protocol::PodEvent,
) -> Effects
where
    R: pod_registry::Registry,
    S: pod_scope_lock::TableStore,
    L: pod_scope_lock::Liveness,
    U: pod_transport::MethodSender + Clone,
    P: Reachability,
{
    parent.apply(event).await
}
