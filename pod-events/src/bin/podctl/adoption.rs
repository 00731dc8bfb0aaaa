//! `podctl listen` as a child pod: started by a spawner (`podctl run ...
//! -- podctl listen`), it takes its name, sockets and scope table from the
//! handoff variables (DESIGN section 11) where its flags are omitted
//! (its TLS identity too, POD_TLS_*, as a set),
//! adopts the reservation with its own pid, and on exit reports its
//! `ShutDown` and releases the allocation it adopted. A top-level
//! `podctl listen --write P` registers its own allocation instead, and
//! releases it on exit.

use anyhow::{bail, Context, Result};
use pod_events::{AddressSender, Handoff, PodContext, TableLocation};
use pod_protocol::{PodName, ScopeRule};
use pod_scope_lock::PodSpec;

use crate::store::{self, AnyLiveness, AnyStore, Keeper, Scopes, TableArgs};
use crate::tls::TlsArgs;

/// The context of an adopted reservation, and what keeps the allocation
/// alive (this process, or on an etcd table a lease it holds).
pub(crate) struct Adopted {
    context: PodContext<AnyStore, AnyLiveness, AddressSender>,
    keeper: Keeper,
}

impl Adopted {
    /// The link the context reports through, for the endpoint to share.
    pub(crate) fn upward(&self) -> &pod_events::UpwardLink {
        self.context.upward()
    }
}

/// The flags of `podctl listen` a handoff may fill.
pub(crate) struct Fillable<'a> {
    pub(crate) name: &'a mut Option<String>,
    pub(crate) socket: &'a mut Option<String>,
    pub(crate) listen: &'a mut Option<String>,
    pub(crate) table: &'a mut TableArgs,
    pub(crate) parent_socket: &'a mut Option<String>,
    pub(crate) tls: &'a mut TlsArgs,
}

/// Reads the handoff variables when `POD_INCARNATION` is set (else
/// `None`, and nothing is filled) and fills each omitted flag from them:
/// flags override (the table and the TLS files as a set). A `tls://`
/// POD_SOCKET fills `--listen` when neither it nor `--socket` is given.
/// Without a handoff `--name` is required.
pub(crate) fn fill(flags: Fillable<'_>) -> Result<Option<Handoff>> {
    let Fillable {
        name,
        socket,
        listen,
        table,
        parent_socket,
        tls,
    } = flags;
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
    if !handoff.socket.starts_with("tls://") {
        socket.get_or_insert_with(|| handoff.socket.clone());
    } else if socket.is_none() {
        listen.get_or_insert_with(|| handoff.socket.clone());
    }
    table.fill_from(&handoff.scope);
    parent_socket.get_or_insert_with(|| handoff.parent_socket.clone());
    if let Some(files) = &handoff.tls {
        tls.fill_from(files);
    }
    Ok(Some(handoff))
}

/// Adopts the reservation of `handoff` as pod `name` (the flags may have
/// renamed it), in `table` (at `location`), with this process's pid; the
/// context reports to `parent_socket` through `sender` (the endpoint's
/// upward sender, with its TLS identity). `None` without a handoff.
///
/// On an etcd table the allocation is held by a lease: the one the
/// spawner already adopted it with (`podctl run` holds one for its
/// child), else one this process takes now and keeps until it exits.
pub(crate) fn adopt(
    handoff: Option<Handoff>,
    name: &PodName,
    socket: Option<&str>,
    parent_socket: Option<&str>,
    location: &TableLocation,
    table: &Scopes,
    sender: AddressSender,
) -> Result<Option<Adopted>> {
    let Some(handoff) = handoff else {
        return Ok(None);
    };
    let handoff = Handoff::new(
        name.clone(),
        handoff.incarnation,
        handoff.parent,
        parent_socket.map_or(handoff.parent_socket, str::to_owned),
        socket.map_or(handoff.socket, str::to_owned),
        location.clone(),
    )
    .with_tls(handoff.tls);
    let (keeper, holder) = match adopted_by_spawner(table, &handoff)? {
        Some(holder) => (Keeper::Process, holder),
        None => {
            let keeper = Keeper::new(table)?;
            let holder = keeper.holder_id(std::process::id());
            (keeper, holder)
        }
    };
    // Adoption takes the table's lock: on a runtime of its own, before the
    // endpoint's exists, so no executor thread blocks on it.
    let runtime = crate::current_thread_runtime()?;
    let adopted = runtime.block_on(PodContext::adopt(
        handoff.clone(),
        table.clone(),
        sender.clone(),
        holder,
    ));
    let (context, keeper) = match adopted {
        Ok(context) => (context, keeper),
        // The spawner adopted on this process's behalf between the look
        // above and this adoption (`podctl run` does so as soon as the
        // child runs): take its adoption; the lease taken for this
        // process goes when `keeper` is dropped at the end of this scope.
        Err(error) => match adopted_by_spawner(table, &handoff)? {
            Some(spawners) if !matches!(keeper, Keeper::Process) => {
                let context = runtime.block_on(PodContext::adopt(
                    handoff,
                    table.clone(),
                    sender,
                    spawners,
                ))?;
                (context, Keeper::Process)
            }
            _ => return Err(error.into()),
        },
    };
    tracing::info!(pod = %context.name(), incarnation = context.incarnation(), "adopted the reservation");
    Ok(Some(Adopted { context, keeper }))
}

/// On a table held by leases, the holder id a spawner already adopted
/// this incarnation's reservation with (it keeps that lease alive for
/// this process): adopting again would be refused as not reserved. `None`
/// on a file table, where the adoption is this process's own pid's.
fn adopted_by_spawner(table: &Scopes, handoff: &Handoff) -> Result<Option<u32>> {
    if matches!(table.store(), AnyStore::File(_)) {
        return Ok(None);
    }
    Ok(table.find(&handoff.name)?.and_then(|a| {
        let ours = a.incarnation.as_deref() == Some(handoff.incarnation.as_str());
        (ours && a.pending_until.is_none()).then_some(a.pid)
    }))
}

/// On a clean exit, reports `ShutDown` and releases the adopted
/// allocation, then gives up the lease this process held for it;
/// otherwise dropping the context does the same, best-effort.
pub(crate) fn depart(runtime: &tokio::runtime::Runtime, adopted: Option<Adopted>, clean: bool) {
    let Some(Adopted { context, keeper }) = adopted else {
        return;
    };
    if clean {
        let departure = runtime.block_on(context.shut_down());
        tracing::info!(
            reported = departure.reported,
            released = departure.released.is_some(),
            "departed"
        );
    }
    drop(context);
    keeper.revoke();
}

/// The allocation a top-level `podctl listen --write P` registered for
/// itself, and what keeps it alive (this process, or a lease it holds).
pub(crate) struct Registered {
    name: PodName,
    incarnation: Option<String>,
    keeper: Keeper,
}

/// Registers pod `name` at `socket` (its Unix socket, else its `tls://`
/// address) with `scope` as a top-level pod, held
/// by this process: its pid on a file table, a lease taken now on an etcd
/// table.
pub(crate) fn register(
    table: &Scopes,
    name: &PodName,
    socket: String,
    scope: Vec<ScopeRule>,
) -> Result<Registered> {
    let keeper = Keeper::new(table)?;
    let allocation = table
        .register(PodSpec {
            pod_name: name.clone(),
            pid: keeper.holder_id(std::process::id()),
            socket,
            scope,
        })
        .with_context(|| format!("cannot register pod `{name}`"))?;
    tracing::info!(pod = %name, incarnation = allocation.incarnation.as_deref().unwrap_or("-"), "registered");
    Ok(Registered {
        name: name.clone(),
        incarnation: allocation.incarnation,
        keeper,
    })
}

impl Registered {
    /// On a clean exit, releases the allocation (this incarnation only;
    /// gone already is fine); then gives up the lease that held it. After
    /// a failure the allocation stays for reclaim: the process (or its
    /// lease, at its TTL) is gone soon after.
    pub(crate) fn depart(self, table: &Scopes, clean: bool) {
        if clean && store::release_own(table, &self.name, self.incarnation.as_deref()) {
            tracing::info!(pod = %self.name, "released its registration");
        }
        self.keeper.revoke();
    }
}
