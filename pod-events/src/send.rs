//! Sending events to a parent: the child side of the protocol.

use std::path::Path;

use pod_protocol::{Method, PodEvent};
use pod_transport::{MethodSender, SendError};

/// Sends `event` to the parent listening at `socket`, once.
///
/// One send through the transport: a connect-per-event Unix socket with
/// [`pod_transport::UnixSender`], a channel with
/// [`pod_transport::testing::MemorySender`].
pub async fn send_pod_event<S: MethodSender>(
    sender: &S,
    socket: &Path,
    event: PodEvent,
) -> Result<(), SendError> {
    sender.send(socket, &Method::PodEvent(event)).await
}

/// Sends `event` to `socket` on a spawned task, fire-and-forget.
///
/// `None` is a no-op: a top-level pod has no parent to report to. A failed
/// send is logged at warn level with the socket and the error, and
/// dropped; the caller is never blocked or failed. Must be called inside a
/// tokio runtime. Returns the task's handle (for tests and orderly
/// shutdown); dropping it detaches the task.
pub fn fire_and_forget<S: MethodSender + Clone>(
    sender: &S,
    socket: Option<&Path>,
    event: PodEvent,
) -> Option<tokio::task::JoinHandle<()>> {
    let socket = socket?.to_path_buf();
    let sender = sender.clone();
    Some(tokio::spawn(async move {
        send_or_log(&sender, &socket, event).await;
    }))
}

/// Sends `event`; a failure is logged at warn level and dropped.
pub(crate) async fn send_or_log<S: MethodSender>(sender: &S, socket: &Path, event: PodEvent) {
    let kind = event.kind();
    if let Err(error) = send_pod_event(sender, socket, event).await {
        tracing::warn!(socket = %socket.display(), %error, kind, "dropped a pod event the parent did not accept");
    }
}
