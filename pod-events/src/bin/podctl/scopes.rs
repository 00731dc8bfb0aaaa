//! `podctl scopes` and `podctl scope ...`: the machine-wide scope table.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand};
use pod_protocol::ScopeRule;
use pod_scope_lock::{Allocation, FileStore, PodSpec, ScopeTable};
use serde_json::json;

use crate::output::{self, Table};
use crate::paths;

/// The table at `path`, probing processes through `/proc`.
pub(crate) fn open(path: PathBuf) -> ScopeTable<FileStore> {
    ScopeTable::with_proc_liveness(FileStore::new(path))
}

#[derive(Debug, Args)]
pub(crate) struct ScopesArgs {
    /// The scope table [default: RUNTIME_DIR/scope.lock].
    #[arg(long, value_name = "FILE")]
    scope_lock: Option<PathBuf>,
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
    /// The scope table [default: RUNTIME_DIR/scope.lock].
    #[arg(long, value_name = "FILE")]
    scope_lock: Option<PathBuf>,
    /// The pod's name.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// The pod's process; it must be running.
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
    /// The scope table [default: RUNTIME_DIR/scope.lock].
    #[arg(long, value_name = "FILE")]
    scope_lock: Option<PathBuf>,
    /// The pod to release.
    #[arg(long, value_name = "NAME")]
    name: String,
    /// Release only this incarnation (refused if the pod is another one).
    #[arg(long, value_name = "ID")]
    incarnation: Option<String>,
}

/// `podctl scopes`.
pub(crate) fn show(args: ScopesArgs, json: bool) -> Result<()> {
    let table = open(paths::scope_lock(args.scope_lock)?);
    let allocations = table.list()?;
    if json {
        let list: Vec<_> = allocations
            .iter()
            .map(|a| with_liveness(&table, a))
            .collect::<Result<_>>()?;
        return output::print_json(&json!({ "allocations": list }));
    }
    output::print_table(&tree(&table, &allocations), "the scope table is empty")
}

/// `podctl scope ...`.
pub(crate) fn change(command: ScopeCommand, json: bool) -> Result<()> {
    match command {
        ScopeCommand::Register(spec) => {
            let (table, spec) = spec.resolve()?;
            let allocation = table.register(spec)?;
            print_allocations(&table, &[allocation], json, "")
        }
        ScopeCommand::Delegate(args) => {
            let from = paths::pod_name(&args.from)?;
            let (table, spec) = args.spec.resolve()?;
            let allocation = table.delegate(&from, spec)?;
            print_allocations(&table, &[allocation], json, "")
        }
        ScopeCommand::Release(args) => {
            let name = paths::pod_name(&args.name)?;
            let table = open(paths::scope_lock(args.scope_lock)?);
            let allocation = table.release(&name, args.incarnation.as_deref())?;
            print_allocations(&table, &[allocation], json, "")
        }
        ScopeCommand::Reclaim(args) => {
            let table = open(paths::scope_lock(args.scope_lock)?);
            let reclaimed = table.reclaim_stale()?;
            if json {
                return output::print_json(&json!({ "reclaimed": reclaimed }));
            }
            print_allocations(&table, &reclaimed, false, "no stale allocation")
        }
    }
}

impl SpecArgs {
    /// Validates the name and opens the table; the library validates the
    /// socket and the rules before changing anything.
    fn resolve(self) -> Result<(ScopeTable<FileStore>, PodSpec)> {
        let pod_name = paths::pod_name(&self.name)?;
        let socket = paths::socket(self.socket, &pod_name)?;
        let scope = self
            .writes
            .into_iter()
            .map(ScopeRule::write)
            .chain(self.reads.into_iter().map(ScopeRule::read))
            .collect();
        let table = open(paths::scope_lock(self.scope_lock)?);
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
    table: &ScopeTable<FileStore>,
    allocations: &[Allocation],
    json: bool,
    empty: &str,
) -> Result<()> {
    if json {
        // One allocation (register, delegate, release) prints as an object.
        if let [one] = allocations {
            return output::print_json(&serde_json::to_value(one)?);
        }
        return output::print_json(&serde_json::to_value(allocations)?);
    }
    let mut rows = Table::new(HEADER);
    for allocation in allocations {
        rows.row(cells(table, allocation, allocation.pod_name.to_string()));
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

fn cells(table: &ScopeTable<FileStore>, allocation: &Allocation, label: String) -> Vec<String> {
    vec![
        label,
        allocation.pid.to_string(),
        if table.is_live(allocation) {
            "yes"
        } else {
            "no"
        }
        .into(),
        allocation
            .delegated_from
            .as_ref()
            .map_or("-".into(), |p| p.to_string()),
        output::short_id(allocation.incarnation.as_deref().unwrap_or_default()),
        allocation.socket.clone(),
        output::rules(&allocation.scope_allow),
    ]
}

fn with_liveness(
    table: &ScopeTable<FileStore>,
    allocation: &Allocation,
) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(allocation)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("alive".into(), table.is_live(allocation).into());
    }
    Ok(value)
}

/// The allocations as a tree: each pod under the pod it was delegated
/// from, siblings by name.
fn tree(table: &ScopeTable<FileStore>, allocations: &[Allocation]) -> Table {
    let mut children: BTreeMap<Option<&str>, Vec<&Allocation>> = BTreeMap::new();
    for allocation in allocations {
        let parent = allocation.delegated_from.as_ref().map(|p| p.as_str());
        // The table's invariant says every parent exists; show an orphan
        // at the top rather than not at all.
        let parent = parent.filter(|p| allocations.iter().any(|a| a.pod_name.as_str() == *p));
        children.entry(parent).or_default().push(allocation);
    }
    let mut rows = Table::new(HEADER);
    // (allocation, prefix of its label, prefix of its children's labels)
    let mut stack: Vec<(&Allocation, String, String)> = Vec::new();
    let push_children = |stack: &mut Vec<_>, of: Option<&str>, indent: &str| {
        let list = children.get(&of).map(Vec::as_slice).unwrap_or_default();
        for (i, child) in list.iter().enumerate().rev() {
            let (label, next) = match (of, i + 1 == list.len()) {
                (None, _) => (String::new(), String::new()),
                (Some(_), true) => (format!("{indent}└─ "), format!("{indent}   ")),
                (Some(_), false) => (format!("{indent}├─ "), format!("{indent}│  ")),
            };
            stack.push((*child, label, next));
        }
    };
    push_children(&mut stack, None, "");
    while let Some((allocation, label, indent)) = stack.pop() {
        rows.row(cells(
            table,
            allocation,
            format!("{label}{}", allocation.pod_name),
        ));
        push_children(&mut stack, Some(allocation.pod_name.as_str()), &indent);
    }
    rows
}
