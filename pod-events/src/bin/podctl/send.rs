//! `podctl send`: one event to a parent's socket, as a child reports it.

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_events::AddressSender;
use pod_protocol::{Dialect, PodEvent};
use std::time::Duration;

use pod_transport::{SendConfig, UnixSender};

use crate::paths;
use crate::tls::TlsArgs;

#[derive(Debug, Args)]
pub(crate) struct SendArgs {
    /// The parent's socket: a Unix socket path, `unix:` + path, or
    /// tls://HOST:PORT (with --tls-cert, --tls-key and --tls-ca).
    #[arg(long, value_name = "ADDRESS")]
    socket: String,
    /// The event: the `params` object of a `pod_event`, e.g.
    /// '{"kind":"shut_down","pod_name":"w1"}'. Kinds and their fields:
    /// `turn_ended` (pod_name), `errored` (pod_name, message), `shut_down`
    /// (pod_name), `scope_sub_delegated` (parent_pod, sub_pod, sub_socket,
    /// scope: [{"target": PATH, "permission": "read"|"write"}]); each may
    /// carry `incarnation`.
    #[arg(long, value_name = "JSON")]
    event: String,
    /// The names the event is written with: `original` (`pod_event`), or
    /// `worker` for a parent of the later dialect (`worker_event`).
    #[arg(long, value_name = "DIALECT", default_value_t = pod_protocol::Dialect::Original)]
    dialect: pod_protocol::Dialect,
    #[command(flatten)]
    tls: TlsArgs,
}

/// Checks the event as a receiver would (so a bad one is refused here,
/// with the reason, instead of being dropped by the parent with a
/// warning), then sends it once.
pub(crate) fn run(args: SendArgs) -> Result<()> {
    let socket = paths::address("--socket", args.socket)?;
    paths::refuse_non_socket("--socket", &socket)?;
    let tls = socket.starts_with("tls://");
    if tls && args.dialect != Dialect::Original {
        bail!(
            "--dialect {} is for Unix sockets: a tls:// parent reads the original dialect",
            args.dialect
        );
    }
    let identity = args.tls.load(tls, "this send")?;
    let event: PodEvent = serde_json::from_str(&args.event).with_context(|| {
        // The whole envelope is a common slip: say what to pass instead.
        let envelope = serde_json::from_str::<serde_json::Value>(&args.event)
            .is_ok_and(|v| v.get("method").is_some() && v.get("params").is_some());
        if envelope {
            "--event is the whole method envelope: pass only its `params` object \
             (e.g. '{\"kind\":\"shut_down\",\"pod_name\":\"w1\"}')"
        } else {
            "--event is not a pod event (see `podctl send --help` for the kinds)"
        }
    })?;
    event.validate().context("--event is refused")?;
    let runtime = crate::current_thread_runtime()?;
    // Alive until the listener has read the event: it then records which
    // processes this one descends from, so the pod or supervisor that ran
    // this command can be told to be its sender.
    let mut sender = AddressSender::new(UnixSender::new(SendConfig {
        linger: Some(Duration::from_secs(2)),
        dialect: args.dialect,
        ..SendConfig::default()
    }));
    if let Some(identity) = identity {
        sender = sender.with_tls(identity.sender()?);
    }
    runtime.block_on(pod_events::send_pod_event(&sender, socket.as_ref(), event))?;
    Ok(())
}
