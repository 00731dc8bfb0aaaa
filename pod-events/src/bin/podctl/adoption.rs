//! `podctl listen` as a child pod: started by a spawner (`podctl run ...
//! -- podctl listen`), it takes its name, sockets and scope table from the
//! handoff variables (DESIGN section 11) where its flags are omitted,
//! adopts the reservation with its own pid, and on exit reports its
//! `ShutDown` and releases the allocation it adopted.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pod_events::{Handoff, PodContext};
use pod_protocol::PodName;
use pod_scope_lock::{FileStore, ScopeTable};
use pod_transport::UnixSender;

/// Reads the handoff variables when `POD_INCARNATION` is set (else
/// `None`, and nothing is filled) and fills each omitted flag from them:
/// flags override. Without a handoff `--name` is required.
pub(crate) fn fill(
    name: &mut Option<String>,
    socket: &mut Option<String>,
    scope_lock: &mut Option<PathBuf>,
    parent_socket: &mut Option<String>,
) -> Result<Option<Handoff>> {
    if !Handoff::present_in_env() {
        if name.is_none() {
            bail!("--name is required (unless podctl listen is started by a spawner, with the handoff variables POD_NAME, POD_INCARNATION, ...)");
        }
        return Ok(None);
    }
    let handoff = Handoff::from_env().context(
        "POD_INCARNATION is set, so this listen adopts a reservation, but the handoff is unusable",
    )?;
    name.get_or_insert_with(|| handoff.name.to_string());
    socket.get_or_insert_with(|| handoff.socket.clone());
    let file = handoff
        .scope
        .file()
        .context("this podctl opens scope table files only, not POD_SCOPE_STORE")?;
    scope_lock.get_or_insert_with(|| file.to_path_buf());
    parent_socket.get_or_insert_with(|| handoff.parent_socket.clone());
    Ok(Some(handoff))
}

/// Adopts the reservation of `handoff` as pod `name` (the flags may have
/// renamed it), in `table`, with this process's pid; the context reports
/// to `parent_socket`. `None` without a handoff.
pub(crate) fn adopt(
    handoff: Option<Handoff>,
    name: &PodName,
    socket: Option<&str>,
    parent_socket: Option<&str>,
    table: &ScopeTable<FileStore>,
) -> Result<Option<PodContext>> {
    let Some(handoff) = handoff else {
        return Ok(None);
    };
    let handoff = Handoff::new(
        name.clone(),
        handoff.incarnation,
        handoff.parent,
        parent_socket.map_or(handoff.parent_socket, str::to_owned),
        socket.map_or(handoff.socket, str::to_owned),
        table.store().path().to_path_buf(),
    );
    // Adoption takes the table's lock: on a runtime of its own, before the
    // endpoint's exists, so no executor thread blocks on it.
    let runtime = crate::current_thread_runtime()?;
    let context = runtime.block_on(PodContext::adopt(
        handoff,
        table.clone(),
        UnixSender::default(),
        std::process::id(),
    ))?;
    tracing::info!(pod = %context.name(), incarnation = context.incarnation(), "adopted the reservation");
    Ok(Some(context))
}

/// On a clean exit, reports `ShutDown` and releases the adopted
/// allocation; otherwise dropping the context does the same,
/// best-effort.
pub(crate) fn depart(runtime: &tokio::runtime::Runtime, context: Option<PodContext>, clean: bool) {
    if let (Some(context), true) = (&context, clean) {
        let departure = runtime.block_on(context.shut_down());
        tracing::info!(
            reported = departure.reported,
            released = departure.released.is_some(),
            "departed"
        );
    }
}
