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
//! [`MethodSender`]: pod_transport::MethodSender
//! [`MethodSource`]: pod_transport::MethodSource
//! [`Registry`]: pod_registry::Registry
//! [`TableStore`]: pod_scope_lock::TableStore
//! [`Liveness`]: pod_scope_lock::Liveness

mod batch;
mod control;
mod context;
mod endpoint;
mod guard;
pub mod handoff;
mod identity;
mod merge;
mod parent;
mod pod;
mod probe;
mod render;
mod send;
mod sender;
mod spawner;

pub use context::{ContextError, PodContext};
pub use control::{
    control_socket_path, ControlError, ControlSink, CONTROL_BACKLOG, MAX_SUBSCRIBERS,
};
pub use endpoint::{
    spawn_endpoint, CollectingSink, EndpointConfig, EndpointHandle, EndpointStats, Notification,
    NotificationSink,
};
pub use identity::{FakeProcessTree, ProcTree, ProcessTree, SenderPolicy};
pub use merge::{merge, Merged};
pub use parent::{Effects, Parent, PodStatus, Reconciliation};
pub use pod::{FileParent, Pod, PodBuilder, PodError};
pub use probe::{FakeReachability, Reachability, SocketProbe};
pub use render::{render, render_event, Origin, MAX_LINE_LEN};
pub use send::{fire_and_forget, send_pod_event};
pub use sender::AddressSender;
pub use guard::Departure;
pub use handoff::{Handoff, HandoffError};
pub use spawner::{SpawnError, SpawnedChild, Spawner};

/// The README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub use pod_protocol;
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
