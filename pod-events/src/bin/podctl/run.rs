//! `podctl run`: spawn a child pod from the shell (DESIGN section 11),
//! acting as the spawner for the pod named by `--from`.
//!
//! The order keeps the grant with the process that runs: the reservation
//! is made before the child exists (held under the spawner pod's process),
//! adopted on the child's behalf with the child's own pid as soon as it is
//! started (on an etcd table with the lease held for it, before it is
//! started; a program not built on these crates never adopts by itself,
//! one that is accepts an adoption already made for it), announced to
//! the parent, and released when the child exits without having done so.
//!
//! Over TLS (`--parent-socket tls://...`) the child is handed the TLS
//! files of `--tls-cert`, `--tls-key` and `--tls-ca` (POD_TLS_*), its
//! own identity: the certificate must name it. `podctl run` reports on
//! the child's behalf with it, but does not announce the spawn there: a
//! certificate naming the child does not speak for its spawner (DESIGN
//! section 7), so the parent would refuse the announcement; it registers
//! the child at its next reconcile instead, from the scope table.
//!
//! On an etcd table (`--scope-store`) a pid means nothing to the other
//! hosts: the child's allocation is held by a lease this `podctl run`
//! keeps alive while the child runs (and revokes after it exits), so the
//! child is presumed gone 10 s (the lease's TTL, `store::LEASE_TTL_SECS`)
//! after `podctl run` itself dies. If the lease is lost while the child
//! runs (revoked, or no renewal answered for a TTL: `podctl run` is cut
//! off from etcd), the child's parent presumes it crashed, so `podctl run`
//! stops the child with SIGTERM: it may no longer write to its scope.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_events::{send_pod_event, AddressSender, Handoff};
use pod_protocol::{PodEvent, ScopeRule};
use pod_scope_lock::{Allocation, PodSpec, ScopeError};
use pod_transport::UnixSender;
use serde_json::json;
use tokio::signal::unix::{signal, SignalKind};

use crate::store::{self, Keeper, Scopes, TableArgs};
use crate::tls::TlsArgs;
use crate::{output, paths};

#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The spawning pod: the child's scope is delegated from its
    /// allocation, which must exist in the scope table.
    #[arg(long, value_name = "PARENT")]
    from: String,
    /// The child's pod name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Write scope for the child (repeatable); inside PARENT's.
    #[arg(long = "write", value_name = "PATH")]
    writes: Vec<String>,
    /// Read scope for the child (repeatable); inside PARENT's.
    #[arg(long = "read", value_name = "PATH")]
    reads: Vec<String>,
    #[command(flatten)]
    table: TableArgs,
    /// Where PARENT listens: the spawn is announced there and the child
    /// reports there [default: PARENT's socket in the scope table]. A
    /// Unix socket path, `unix:` + path, or tls://HOST:PORT (with
    /// --tls-cert, --tls-key and --tls-ca).
    #[arg(long, value_name = "ADDRESS")]
    parent_socket: Option<String>,
    /// The socket the child is told to listen on [default:
    /// RUNTIME_DIR/NAME/sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
    /// The child's TLS identity (its certificate names it as pod://NAME),
    /// handed over as POD_TLS_CERT, POD_TLS_KEY and POD_TLS_CA; needed
    /// when PARENT's address is tls://.
    #[command(flatten)]
    tls: TlsArgs,
    /// The child's program and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// `podctl run`: exits with the child's status (128 + the signal for a
/// child killed by one).
pub(crate) fn run(args: RunArgs, json: bool) -> Result<()> {
    let from = paths::pod_name(&args.from)?;
    let name = paths::pod_name(&args.name)?;
    let socket = paths::socket(args.socket, &name)?;
    let scope = paths::scope_rules(args.writes, args.reads);
    if scope.is_empty() {
        bail!("give the child some scope: at least one --write PATH or --read PATH");
    }
    let location = args.table.location()?;
    let table = store::open(&location)?;
    let Some(spawner) = table.find(&from)? else {
        bail!(
            "pod `{from}` holds no allocation in {}: register it first (`podctl scope register`), or check --from and --scope-lock or --scope-store",
            store::shown(&location)
        );
    };
    let parent_socket = match args.parent_socket {
        Some(flag) => paths::address("--parent-socket", flag)?,
        None => spawner.socket.clone(),
    };
    let tls_up = parent_socket.starts_with("tls://");
    let identity = if tls_up {
        args.tls.load(true, "this run")?
    } else {
        args.tls.load_given("the child's TLS identity")?
    };
    let tls_files = args.tls.files()?;
    let mut sender = AddressSender::new(UnixSender::default());
    if let Some(identity) = &identity {
        let certified = identity.pod_name()?;
        if certified != name {
            bail!(
                "--tls-cert names pod `{certified}`, not `{name}`: give the child its own certificate (pod://{name})"
            );
        }
        if tls_up {
            sender = sender.with_tls(identity.sender()?);
        }
    }
    let reservation = table
        .reserve(
            &from,
            PodSpec {
                pod_name: name.clone(),
                // Ignored: a reservation is held under the spawner's pid.
                pid: std::process::id(),
                socket: socket.clone(),
                scope: scope.clone(),
            },
        )
        .with_context(|| format!("cannot reserve scope for pod `{name}`"))?;
    let incarnation = reservation
        .incarnation
        .clone()
        .context("the table minted no incarnation for the reservation")?;
    let handoff = Handoff::new(
        name.clone(),
        incarnation,
        from,
        parent_socket,
        socket,
        location,
    )
    .with_tls(tls_files);
    // What will hold the child's allocation: its own pid (known once it
    // runs) on a file table, a lease taken now on an etcd table.
    let keeper = match Keeper::new(&table) {
        Ok(keeper) => keeper,
        Err(error) => {
            release(&table, &handoff);
            return Err(error);
        }
    };

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            release(&table, &handoff);
            return Err(error).context("cannot start the async runtime");
        }
    };
    let status = runtime.block_on(supervise(
        table,
        handoff,
        keeper,
        sender,
        scope,
        args.command,
        json,
    ))?;
    drop(runtime);
    std::process::exit(exit_code(status));
}

/// Starts the child, adopts and announces it, waits for it, and reports
/// its exit if it did not.
async fn supervise(
    table: Scopes,
    handoff: Handoff,
    keeper: Keeper,
    sender: AddressSender,
    scope: Vec<ScopeRule>,
    command: Vec<OsString>,
    json: bool,
) -> Result<ExitStatus> {
    // Handlers before the child exists, so a signal meant for the pair is
    // forwarded, never the default abrupt exit that would orphan it.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let (program, program_args) = command.split_first().context("no command given")?;
    let mut child_command = tokio::process::Command::new(program);
    child_command
        .args(program_args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    handoff.apply_to(&mut child_command);
    // A lease's holder id is known before the child exists: adopt with it
    // first, so the child never sees its reservation pending (and a child
    // built on these crates finds the adoption made, never racing it).
    let early = keeper.holder_before_spawn();
    if let Some(holder) = early {
        adopt_on_behalf(&table, &handoff, holder).await;
    }
    let mut child = match child_command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let (t, h) = (table.clone(), handoff.clone());
            blocking(move || release(&t, &h)).await;
            return Err(error).with_context(|| {
                format!(
                    "cannot start {:?} for pod `{}`; its reservation was released",
                    Path::new(program).display(),
                    handoff.name
                )
            });
        }
    };
    let pid = child
        .id()
        .context("the child exited before its pid was known")?;

    // On a file table the child's own pid holds it, known only now.
    if early.is_none() {
        adopt_on_behalf(&table, &handoff, keeper.holder_id(pid)).await;
    }
    let up = Path::new(&handoff.parent_socket);
    let announce = PodEvent::ScopeSubDelegated {
        parent_pod: handoff.parent.to_string(),
        sub_pod: handoff.name.to_string(),
        sub_socket: handoff.socket.clone(),
        scope,
        sub_incarnation: Some(handoff.incarnation.clone()),
        spawner_socket: Some(handoff.parent_socket.clone()),
    };
    if handoff.reports_over_tls() {
        // Certified as the child, the announcement would be refused: only
        // the spawner (or a pod above it) may announce a delegation.
        tracing::info!(parent = %handoff.parent, "the parent listens over TLS: it registers the child at its next reconcile, from the scope table");
    } else if let Err(error) = send_pod_event(&sender, up, announce).await {
        tracing::warn!(%error, parent = %handoff.parent, "could not announce the child; the parent's reconcile finds it in the scope table");
    }
    if json {
        output::print_json(&json!({
            "name": handoff.name.as_str(),
            "pid": pid,
            "incarnation": handoff.incarnation,
            "socket": handoff.socket,
        }))?;
    } else {
        output::print(&format!(
            "{} pid {pid} incarnation {}\n",
            handoff.name, handoff.incarnation
        ))?;
    }

    let mut lost_told = false;
    let status = loop {
        let forward = tokio::select! {
            status = child.wait() => break status.context("cannot wait for the child")?,
            _ = terminate.recv() => rustix::process::Signal::TERM,
            _ = interrupt.recv() => rustix::process::Signal::INT,
            // The child may no longer write to its scope: its parent
            // presumes it crashed and may grant the scope to another pod.
            () = keeper.lost(), if !lost_told => {
                lost_told = true;
                tracing::warn!(pod = %handoff.name, "the lease holding the child's allocation is lost (revoked, or etcd unreachable for its TTL); stopping the child with SIGTERM");
                rustix::process::Signal::TERM
            }
        };
        if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
            let _ = rustix::process::kill_process(pid, forward);
        }
    };

    let (t, n) = (table.clone(), handoff.name.clone());
    let held = blocking(move || t.find(&n)).await;
    let ours = |a: &Allocation| a.incarnation.as_deref() == Some(handoff.incarnation.as_str());
    let described = describe(status);
    match held {
        Ok(Some(allocation)) if ours(&allocation) => {
            // It exited still holding its grant: it did not report. Report
            // for it: ShutDown first, while the table shows its process
            // dead (a death any sender may report, under every sender
            // policy); then release; then say how it ended. The Errored
            // goes last because a claim about a pod whose allocation is
            // still held must come from that pod: once released, the
            // parent admits it under its default (legacy) policy.
            let report = |event| async {
                if let Err(error) = send_pod_event(&sender, up, event).await {
                    tracing::warn!(%error, parent = %handoff.parent, "could not report the child's exit; the parent's reconcile infers it");
                }
            };
            report(PodEvent::ShutDown {
                pod_name: handoff.name.to_string(),
                incarnation: Some(handoff.incarnation.clone()),
            })
            .await;
            let (t, h) = (table.clone(), handoff.clone());
            blocking(move || release(&t, &h)).await;
            report(PodEvent::Errored {
                pod_name: handoff.name.to_string(),
                message: format!("{described} without reporting its shutdown"),
                incarnation: Some(handoff.incarnation.clone()),
            })
            .await;
            output::print(&format!(
                "{} {described} without reporting; reported it as shut down and released its scope\n",
                handoff.name
            ))?;
        }
        Ok(_) => output::print(&format!("{} {described}\n", handoff.name))?,
        Err(error) => {
            tracing::warn!(%error, "cannot read the scope table after the child's exit");
            output::print(&format!("{} {described}\n", handoff.name))?;
        }
    }
    blocking(move || keeper.revoke()).await;
    Ok(status)
}

/// Adopts the reservation for the child's process `pid`, unless the
/// child has adopted it itself already.
fn adopt_for(table: &Scopes, handoff: &Handoff, pid: u32) -> Result<(), ScopeError> {
    match table.adopt(&handoff.name, &handoff.incarnation, pid) {
        Err(ScopeError::NotReserved { .. })
            if table
                .find(&handoff.name)?
                .is_some_and(|a| a.pid == pid && a.pending_until.is_none()) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

/// [`adopt_for`] off the executor, a failure logged: the reservation
/// then stays under the spawner until it expires or is released when the
/// child exits.
async fn adopt_on_behalf(table: &Scopes, handoff: &Handoff, holder: u32) {
    let (t, h) = (table.clone(), handoff.clone());
    if let Err(error) = blocking(move || adopt_for(&t, &h, holder)).await {
        tracing::warn!(%error, pod = %handoff.name, "could not adopt the reservation on the child's behalf");
    }
}

/// Releases the child's allocation (this incarnation only); gone already
/// is fine.
fn release(table: &Scopes, handoff: &Handoff) {
    store::release_own(table, &handoff.name, Some(&handoff.incarnation));
}

/// Runs a table operation (flock, fsync) off the executor.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()))
}

/// "exited with status 3", "was killed by signal 9".
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// The shell's convention: the code, or 128 + the signal.
fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_and_coded_as_a_shell_would() {
        let exited = ExitStatus::from_raw(3 << 8);
        assert_eq!(describe(exited), "exited with status 3");
        assert_eq!(exit_code(exited), 3);
        let killed = ExitStatus::from_raw(9);
        assert_eq!(describe(killed), "was killed by signal 9");
        assert_eq!(exit_code(killed), 137);
    }
}
