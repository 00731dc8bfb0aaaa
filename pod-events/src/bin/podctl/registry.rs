//! `podctl registry` and `podctl reconcile`: a pod's registry of spawned
//! pods.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_events::{render, Origin, Parent, SocketProbe};
use pod_protocol::PodName;
use pod_registry::{FileRegistry, RegistryError, RegistrySnapshot};
use pod_transport::UnixSender;
use serde_json::json;

use crate::output::{self, Format, Table};
use crate::paths;
use crate::store::{self, TableArgs};

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("whose").required(true).multiple(true))]
pub(crate) struct RegistryArgs {
    /// The pod's state directory (holding spawned_pods.json)
    /// [default: RUNTIME_DIR/NAME]. Read without owning it: works while a
    /// `podctl listen` owns it, and creates nothing.
    #[arg(long, value_name = "DIR", group = "whose")]
    state_dir: Option<PathBuf>,
    /// The pod whose registry to show (locates the default state
    /// directory).
    #[arg(long, value_name = "NAME", group = "whose")]
    name: Option<String>,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("whose").required(true).multiple(true))]
pub(crate) struct ReconcileArgs {
    /// The pod's state directory [default: RUNTIME_DIR/NAME]. Refused
    /// while a running `podctl listen` owns it (the error names its pid):
    /// that endpoint reconciles on its own.
    #[arg(long, value_name = "DIR", group = "whose")]
    state_dir: Option<PathBuf>,
    /// The pod whose registry this is: its descendants in the scope table
    /// are adopted [default: the state directory's last component].
    #[arg(long, value_name = "NAME", group = "whose")]
    name: Option<String>,
    #[command(flatten)]
    table: TableArgs,
    /// The pod's own parent, told of each pod found dead (as a relayed
    /// `shut_down`, the way the endpoint would).
    #[arg(long, value_name = "PATH")]
    parent_socket: Option<String>,
}

/// Fails unless `dir` exists: a mistyped directory is an error, not an
/// empty registry (and must not get one created).
pub(crate) fn require_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        bail!(
            "no registry in {}: the directory does not exist (check --state-dir or --name)",
            dir.display()
        );
    }
    Ok(())
}

/// Opens the registry in `dir` as its owner (the one writer; refused while
/// a `podctl listen` owns it). `dir` must exist.
fn open_existing(dir: &Path) -> Result<FileRegistry> {
    require_dir(dir)?;
    Ok(FileRegistry::open(dir)?)
}

/// `podctl registry`.
pub(crate) fn show(args: RegistryArgs, format: Format) -> Result<()> {
    let dir = match (args.state_dir, args.name) {
        (Some(dir), _) => dir,
        (None, Some(name)) => paths::state_dir(None, &paths::pod_name(&name)?)?,
        (None, None) => unreachable!("clap requires --state-dir or --name"),
    };
    // Read-only: takes no lock (works beside the `podctl listen` that
    // owns the directory) and creates nothing.
    require_dir(&dir)?;
    let snapshot = RegistrySnapshot::load(&dir)?;
    let state = snapshot.state();
    let records: Vec<_> = state.records().cloned().collect();
    let departed: Vec<_> = state.departed().cloned().collect();
    let invalid = snapshot.invalid_records();
    if format.is_json() {
        return output::print_json(&json!({
            "pods": records,
            "departed": departed,
            "invalid": invalid,
        }));
    }
    let mut table = Table::new(&["POD", "INCARNATION", "SOCKET", "REPORTS TO", "SCOPE"]);
    for record in &records {
        table.row(vec![
            record.pod_name.to_string(),
            format.id(record.incarnation.as_deref().unwrap_or_default()),
            record.socket_path.clone(),
            output::or_dash(&record.callback_address),
            output::rules(&record.scope_delegated),
        ]);
    }
    output::print_table(&table, "no spawned pods")?;
    if !invalid.is_empty() {
        // Written by another tool; kept as they are and never acted on.
        let mut table = Table::new(&["INVALID", "POD", "REASON"]);
        for record in invalid {
            table.row(vec![
                format!("#{}", record.index()),
                record.pod_name().unwrap_or_else(|| "-".into()),
                record.reason().to_owned(),
            ]);
        }
        output::print_table(&table, "")?;
    }
    if !departed.is_empty() {
        let names: Vec<String> = departed.iter().map(|t| t.pod_name.to_string()).collect();
        let noun = if departed.len() == 1 {
            "departure"
        } else {
            "departures"
        };
        output::print(&format!(
            "{} recent {noun}: {}\n",
            departed.len(),
            names.join(", ")
        ))?;
    }
    Ok(())
}

/// `podctl reconcile`: one pass of the endpoint's level-triggered repair.
pub(crate) fn reconcile(args: ReconcileArgs, format: Format) -> Result<()> {
    let name = match (&args.name, &args.state_dir) {
        (Some(name), _) => paths::pod_name(name)?,
        (None, Some(dir)) => name_of(dir)?,
        (None, None) => unreachable!("clap requires --state-dir or --name"),
    };
    let dir = paths::state_dir(args.state_dir, &name)?;
    let parent_socket = paths::parent_socket(args.parent_socket)?;
    let table = store::open(&args.table.location()?)?;
    let holders = store::holders(&table);
    // A corrupt table is refused before anything changes (the endpoint
    // would only warn and probe sockets).
    table.list()?;
    let registry =
        open_existing(&dir).map_err(|error| match error.downcast_ref::<RegistryError>() {
            Some(RegistryError::Locked { .. }) => error.context(
                "reconcile refused: a running endpoint owns this state directory and \
                 reconciles it itself (every --reconcile-interval-ms); `podctl tree` shows \
                 what it would repair",
            ),
            _ => error,
        })?;
    let parent = Parent::new(name, registry, table, SocketProbe::default());

    let runtime = crate::current_thread_runtime()?;
    let report = runtime.block_on(async {
        let report = parent.reconcile().await;
        if let Err(error) = parent.registry().flush().await {
            tracing::warn!(%error, "the registry is not durable");
            return (report, 1);
        }
        // Relayed here rather than through an upward link, whose sends
        // are detached tasks that could still be in flight at exit.
        if let Some(socket) = &parent_socket {
            let sender = UnixSender::default();
            for (_, effects) in &report.presumed_crashed {
                for event in &effects.relayed {
                    let sent = pod_events::send_pod_event(&sender, socket.as_ref(), event.clone());
                    if let Err(error) = sent.await {
                        tracing::warn!(%error, kind = event.kind(), "dropped a relayed event the parent did not accept");
                    }
                }
            }
        }
        (report, 0)
    });
    let (report, flush_failures) = report;
    let failures = report.failures + flush_failures;

    if format.is_json() {
        let crashed: Vec<_> = report.presumed_crashed.iter().map(|(e, _)| e).collect();
        let adopted: Vec<_> = report.adopted.iter().map(|(_, r)| r).collect();
        output::print_json(&json!({
            "presumed_crashed": crashed,
            "adopted": adopted,
            "reclaimed": report.reclaimed,
            "finished": report.finished,
            "failures": failures,
        }))?;
    } else {
        let mut lines = String::new();
        let inferred = report.presumed_crashed.iter().map(|(e, _)| e);
        for event in inferred.chain(report.adopted.iter().map(|(e, _)| e)) {
            lines.push_str(&render(event, Origin::Inferred));
            lines.push('\n');
        }
        for allocation in &report.reclaimed {
            lines.push_str(&format!(
                "reclaimed the scope of `{}`: {} is gone\n",
                allocation.pod_name,
                holders.name(allocation)
            ));
        }
        for allocation in &report.finished {
            lines.push_str(&format!(
                "released the scope still held by departed `{}`\n",
                allocation.pod_name
            ));
        }
        if lines.is_empty() {
            lines.push_str("nothing to repair\n");
        }
        output::print(&lines)?;
    }
    if failures > 0 {
        bail!("reconcile met {failures} failures (see the warnings above); run it again once they are fixed");
    }
    Ok(())
}

/// The pod name a state directory is named after.
pub(crate) fn name_of(dir: &Path) -> Result<PodName> {
    let last = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("cannot tell which pod owns {}: pass --name", dir.display()))?;
    PodName::new(last)
        .with_context(|| format!("cannot tell which pod owns {}: pass --name", dir.display()))
}
