//! `podctl scopes` and `podctl scope ...`: the scope table (a file, or
//! on etcd: see [`crate::store`]).

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use pod_protocol::PodName;
use pod_scope_lock::{Allocation, PodSpec};
use serde_json::json;

use crate::output::{self, Format, Table};
use crate::paths;
use crate::store::{self, Holders, Scopes, TableArgs};

#[derive(Debug, Args)]
pub(crate) struct ScopesArgs {
    #[command(flatten)]
    table: TableArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScopeCommand {
    /// Allocate scope to a top-level pod. Refused if the name is taken or
    /// a write rule overlaps another pod's write scope (the error names
    /// that pod).
    Register(SpecArgs),
    /// Delegate part of pod FROM's scope to a new pod. Refused unless
    /// every rule is inside FROM's own and no write rule overlaps FROM's
    /// other children or pods outside FROM's lineage.
    Delegate(DelegateArgs),
    /// Release a pod's allocation; its children go to its own parent.
    Release(ReleaseArgs),
    /// Release every allocation whose process is gone.
    Reclaim(ScopesArgs),
}

#[derive(Debug, Args)]
pub(crate) struct SpecArgs {
    #[command(flatten)]
    table: TableArgs,
    /// The pod's name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The pod's process; it must be running. On an etcd table
    /// (--scope-store): the pod's lease holder id, whose lease must be
    /// alive.
    #[arg(long)]
    pid: u32,
    /// The pod's socket [default: RUNTIME_DIR/NAME/sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
    /// A directory the pod may write (recursively); repeatable.
    #[arg(long = "write", value_name = "PATH")]
    writes: Vec<String>,
    /// A directory the pod may read (recursively); repeatable.
    #[arg(long = "read", value_name = "PATH")]
    reads: Vec<String>,
    /// The pod restarts: take back the children its registry in DIR (its
    /// state directory, kept from before) holds, where its death moved
    /// them up, if their scope lies within the new one. Its listen then
    /// tells them to report to it again.
    #[arg(long, value_name = "DIR")]
    take_back: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct DelegateArgs {
    /// The pod that delegates part of its scope.
    #[arg(long, value_name = "NAME")]
    from: String,
    #[command(flatten)]
    spec: SpecArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReleaseArgs {
    #[command(flatten)]
    table: TableArgs,
    /// The pod to release.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Release only this incarnation (refused if the pod is another one).
    #[arg(long, value_name = "ID")]
    incarnation: Option<String>,
}

/// `podctl scopes`.
pub(crate) fn show(args: ScopesArgs, format: Format) -> Result<()> {
    let table = store::open_to_read(args.table)?;
    let allocations = table.list()?;
    if format.is_json() {
        let list: Vec<_> = allocations
            .iter()
            .map(|a| with_liveness(&table, a))
            .collect::<Result<_>>()?;
        return output::print_json(&json!({ "allocations": list }));
    }
    output::print_table(
        &tree(&table, &allocations, format),
        "the scope table is empty",
    )
}

/// `podctl scope ...`.
pub(crate) fn change(command: ScopeCommand, format: Format) -> Result<()> {
    match command {
        ScopeCommand::Register(spec) => allocate(None, spec, format),
        ScopeCommand::Delegate(args) => {
            let from = paths::pod_name(&args.from)?;
            allocate(Some(&from), args.spec, format)
        }
        ScopeCommand::Release(args) => {
            let name = paths::pod_name(&args.name)?;
            let table = store::open(&args.table.location()?)?;
            let allocation = table.release(&name, args.incarnation.as_deref())?;
            if format.is_json() {
                return output::print_json(&serde_json::to_value(&allocation)?);
            }
            // The allocation is gone: say so, rather than show it as a
            // row of the table with its (still running) process `ALIVE`.
            let heirs = match &allocation.delegated_from {
                Some(parent) => format!("; its children now descend from `{parent}`"),
                None => "; its children are now top-level pods".into(),
            };
            output::print(&format!(
                "released the allocation of `{}` ({}, {}){heirs}\n",
                allocation.pod_name,
                store::holders(&table).name(&allocation),
                output::rules(&allocation.scope_allow),
            ))
        }
        ScopeCommand::Reclaim(args) => {
            let table = store::open(&args.table.location()?)?;
            let reclaimed = table.reclaim_stale()?;
            if format.is_json() {
                return output::print_json(&json!({ "reclaimed": reclaimed }));
            }
            print_allocations(&table, &reclaimed, format, "no stale allocation")
        }
    }
}

/// `scope register` (`from` `None`) and `scope delegate`, with
/// `--take-back` a restart.
fn allocate(from: Option<&PodName>, args: SpecArgs, format: Format) -> Result<()> {
    let take_back = args.take_back.clone();
    let (table, spec) = args.resolve()?;
    let Some(dir) = take_back else {
        let allocation = match from {
            Some(from) => table.delegate(from, spec)?,
            None => table.register(spec)?,
        };
        return print_allocations(&table, &[allocation], format, "");
    };
    // Read-only, as `podctl registry` reads it: the pod's listen may own
    // the directory already.
    crate::registry::require_dir(&dir)?;
    let snapshot = pod_registry::RegistrySnapshot::load(&dir)?;
    let former: Vec<(PodName, Option<String>)> = snapshot
        .state()
        .records()
        .map(|r| (r.pod_name.clone(), r.incarnation.clone()))
        .collect();
    let restarted = table.restart(from, spec, &former)?;
    let mut shown = vec![restarted.allocation];
    shown.extend(restarted.taken_back);
    print_allocations(&table, &shown, format, "")
}

impl SpecArgs {
    /// Validates the name and opens the table; the library validates the
    /// socket and the rules before changing anything.
    fn resolve(self) -> Result<(Scopes, PodSpec)> {
        let pod_name = paths::pod_name(&self.name)?;
        let socket = paths::socket(self.socket, &pod_name)?;
        let scope = paths::scope_rules(self.writes, self.reads);
        let table = store::open(&self.table.location()?)?;
        let spec = PodSpec {
            pod_name,
            pid: self.pid,
            socket,
            scope,
        };
        Ok((table, spec))
    }
}

fn print_allocations(
    table: &Scopes,
    allocations: &[Allocation],
    format: Format,
    empty: &str,
) -> Result<()> {
    if format.is_json() {
        // One allocation (register, delegate, release) prints as an object.
        if let [one] = allocations {
            return output::print_json(&serde_json::to_value(one)?);
        }
        return output::print_json(&serde_json::to_value(allocations)?);
    }
    let mut rows = Table::new(header(table, format));
    for allocation in allocations {
        rows.row(cells(
            table,
            allocation,
            allocation.pod_name.to_string(),
            format,
        ));
    }
    output::print_table(&rows, empty)
}

const HEADER: &[&str] = &[
    "POD",
    "PID",
    "ALIVE",
    "FROM",
    "INCARNATION",
    "SOCKET",
    "SCOPE",
];

/// `-o wide` adds what tells a pod's process apart from a reused pid,
/// and whether it was spawned but not yet adopted.
const WIDE_HEADER: &[&str] = &[
    "POD",
    "PID",
    "ALIVE",
    "FROM",
    "INCARNATION",
    "START TIME",
    "PENDING UNTIL",
    "SOCKET",
    "SCOPE",
];

/// On an etcd table a pod is held by a lease: the holder id stands where
/// the pid does, and the lease is shown beside whether it is alive.
const LEASE_HEADER: &[&str] = &[
    "POD",
    "HOLDER",
    "ALIVE",
    "LEASE",
    "FROM",
    "INCARNATION",
    "SOCKET",
    "SCOPE",
];

const LEASE_WIDE_HEADER: &[&str] = &[
    "POD",
    "HOLDER",
    "ALIVE",
    "LEASE",
    "FROM",
    "INCARNATION",
    "PENDING UNTIL",
    "SOCKET",
    "SCOPE",
];

fn header(table: &Scopes, format: Format) -> &'static [&'static str] {
    match (store::holders(table), format.is_wide()) {
        (Holders::Processes, false) => HEADER,
        (Holders::Processes, true) => WIDE_HEADER,
        (Holders::Leases, false) => LEASE_HEADER,
        (Holders::Leases, true) => LEASE_WIDE_HEADER,
    }
}

fn cells(table: &Scopes, allocation: &Allocation, label: String, format: Format) -> Vec<String> {
    let optional = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
    let alive = table.is_live(allocation);
    let mut cells = vec![
        label,
        allocation.pid.to_string(),
        if alive { "yes" } else { "no" }.into(),
        allocation
            .delegated_from
            .as_ref()
            .map_or("-".into(), |p| p.to_string()),
        format.id(allocation.incarnation.as_deref().unwrap_or_default()),
        allocation.socket.clone(),
        output::rules(&allocation.scope_allow),
    ];
    match store::holders(table) {
        Holders::Processes => {
            if format.is_wide() {
                let extra = [
                    optional(allocation.start_time),
                    optional(allocation.pending_until),
                ];
                cells.splice(5..5, extra);
            }
        }
        Holders::Leases => {
            let lease = store::lease(table, allocation, alive).map_or("-".into(), |lease| {
                format!("{} ({})", lease.id, lease.state())
            });
            cells.insert(3, lease);
            if format.is_wide() {
                cells.insert(6, optional(allocation.pending_until));
            }
        }
    }
    cells
}

/// The allocation as JSON, with `alive`, and on an etcd table its
/// `lease` (`{"id": HEX, "state": "alive" | "expired"}`).
fn with_liveness(table: &Scopes, allocation: &Allocation) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(allocation)?;
    if let Some(object) = value.as_object_mut() {
        let alive = table.is_live(allocation);
        object.insert("alive".into(), alive.into());
        if let Some(lease) = store::lease(table, allocation, alive) {
            object.insert(
                "lease".into(),
                json!({ "id": lease.id, "state": lease.state() }),
            );
        }
    }
    Ok(value)
}

/// The allocations as a tree: each pod under the pod it was delegated
/// from, siblings by name.
fn tree(table: &Scopes, allocations: &[Allocation], format: Format) -> Table {
    let mut sorted: Vec<&Allocation> = allocations.iter().collect();
    sorted.sort_by(|a, b| a.pod_name.cmp(&b.pod_name));
    let nodes: Vec<(&str, Option<&str>)> = sorted
        .iter()
        .map(|a| {
            (
                a.pod_name.as_str(),
                a.delegated_from.as_ref().map(|p| p.as_str()),
            )
        })
        .collect();
    let mut rows = Table::new(header(table, format));
    for (i, label) in output::tree_order(&nodes) {
        rows.row(cells(table, sorted[i], label, format));
    }
    rows
}
