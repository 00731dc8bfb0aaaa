//! `podctl tree`: the scope table, a pod's registry and the pods' sockets
//! joined into one tree, with every disagreement between them marked.
//!
//! The scope table says who descends from whom; a registry says which
//! pods its owner manages and where each reports. They drift apart when
//! events are lost (reconcile repairs that), so the tree shows both and
//! says where they differ rather than silently preferring one.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pod_protocol::ScopeRule;
use pod_registry::{Record, RegistrySnapshot};
use pod_scope_lock::Allocation;
use serde_json::json;

use crate::output::{self, Format, Table};
use crate::store::{self, TableArgs};
use crate::{paths, registry, status};

#[derive(Debug, Args)]
pub(crate) struct TreeArgs {
    #[command(flatten)]
    table: TableArgs,
    /// A pod's state directory whose registry to join in (read without
    /// owning it, as `podctl registry` does) [default: RUNTIME_DIR/NAME
    /// when --name is given; else no registry].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// The pod owning that registry [default: the state directory's last
    /// component].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
}

/// One pod as the table and the registry see it.
struct Node {
    name: String,
    /// Whom it is shown under: its spawner per the table, else the
    /// registry's owner.
    parent: Option<String>,
    allocation: Option<Allocation>,
    record: Option<Record>,
    alive: bool,
    reachable: Option<bool>,
    notes: Vec<String>,
}

/// `podctl tree`.
pub(crate) fn run(args: TreeArgs, format: Format) -> Result<()> {
    let table = store::open_to_read(args.table)?;
    let allocations = table.list()?;
    let owned = match (args.state_dir, args.name) {
        (None, None) => None,
        (Some(dir), name) => {
            let owner = match name {
                Some(name) => paths::pod_name(&name)?,
                None => registry::name_of(&dir)?,
            };
            Some((owner, dir))
        }
        (None, Some(name)) => {
            let owner = paths::pod_name(&name)?;
            let dir = paths::state_dir(None, &owner)?;
            Some((owner, dir))
        }
    };
    let (owner, records) = match owned {
        Some((owner, dir)) => {
            registry::require_dir(&dir)?;
            let snapshot = RegistrySnapshot::load(&dir)?;
            let records: Vec<Record> = snapshot.state().records().cloned().collect();
            (Some(owner.to_string()), records)
        }
        None => (None, Vec::new()),
    };

    let mut nodes = join(&allocations, records, owner.as_deref());
    let sockets: Vec<&str> = nodes.iter().map(socket_of).collect();
    let answers = status::probe(&sockets)?;
    for (node, reachable) in nodes.iter_mut().zip(answers) {
        node.reachable = reachable;
        node.alive = match &node.allocation {
            Some(allocation) => table.is_live(allocation),
            None => reachable == Some(true),
        };
        if node.allocation.is_some() && !node.alive {
            node.notes
                .push("process gone: its allocation is stale (reconcile releases it)".into());
        } else if node.alive && reachable == Some(false) {
            node.notes
                .push("alive but its socket does not answer: it cannot receive events".into());
        }
    }

    if format.is_json() {
        let pods: Vec<_> = nodes
            .iter()
            .map(|n| {
                json!({
                    "pod_name": n.name,
                    "parent": n.parent,
                    "alive": n.alive,
                    "reachable": n.reachable,
                    "reports_to": reports_to(n),
                    "allocation": n.allocation,
                    "record": n.record,
                    "notes": n.notes,
                })
            })
            .collect();
        return output::print_json(&json!({ "registry_of": owner, "pods": pods }));
    }
    output::print_table(&render(&nodes, format), "no pods: the scope table is empty")?;
    if let Some(owner) = owner {
        let agree = nodes.iter().all(|n| n.notes.is_empty());
        if agree {
            output::print(&format!("`{owner}`'s registry and the scope table agree\n"))?;
        }
    }
    Ok(())
}

/// Every allocation, and every record of the registry of `owner`, one
/// node per pod name, with the notes of where the two disagree.
fn join(allocations: &[Allocation], mut records: Vec<Record>, owner: Option<&str>) -> Vec<Node> {
    // Whether `name` descends from the registry's owner per the table:
    // those are the pods its registry should record.
    let descends = |name: &str| {
        let mut at = allocations.iter().find(|a| a.pod_name.as_str() == name);
        let mut hops = 0;
        while let Some(allocation) = at {
            let Some(parent) = allocation.delegated_from.as_ref() else {
                return false;
            };
            if Some(parent.as_str()) == owner {
                return true;
            }
            hops += 1;
            if hops > allocations.len() {
                return false;
            }
            at = allocations.iter().find(|a| a.pod_name == *parent);
        }
        false
    };
    let mut nodes = Vec::new();
    for allocation in allocations {
        let name = allocation.pod_name.as_str();
        let at = records.iter().position(|r| r.pod_name.as_str() == name);
        let record = at.map(|i| records.remove(i));
        let mut notes = Vec::new();
        match (&record, owner) {
            (None, Some(owner)) if descends(name) => {
                notes.push(format!("not in `{owner}`'s registry"));
            }
            (Some(record), Some(owner)) => {
                if !descends(name) {
                    notes.push(format!(
                        "in `{owner}`'s registry, but the table does not place it under `{owner}`"
                    ));
                }
                if let (Some(ours), Some(theirs)) = (&record.incarnation, &allocation.incarnation) {
                    if ours != theirs {
                        notes.push(format!(
                            "the registry records incarnation {}, the table {}",
                            output::short_id(ours),
                            output::short_id(theirs)
                        ));
                    }
                }
                if !same_rules(&record.scope_delegated, &allocation.scope_allow) {
                    notes.push(format!(
                        "the registry records scope {}",
                        output::rules(&record.scope_delegated)
                    ));
                }
                if record.socket_path != allocation.socket {
                    notes.push(format!(
                        "the registry records socket {}",
                        record.socket_path
                    ));
                }
            }
            _ => {}
        }
        nodes.push(Node {
            name: name.to_owned(),
            parent: allocation.delegated_from.as_ref().map(|p| p.to_string()),
            allocation: Some(allocation.clone()),
            record,
            alive: false,
            reachable: None,
            notes,
        });
    }
    for record in records {
        let owner = owner.unwrap_or_default();
        nodes.push(Node {
            name: record.pod_name.to_string(),
            parent: Some(owner.to_owned()),
            notes: vec![format!("in `{owner}`'s registry, not in the scope table")],
            allocation: None,
            record: Some(record),
            alive: false,
            reachable: None,
        });
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    nodes
}

/// The same rules in any order.
fn same_rules(a: &[ScopeRule], b: &[ScopeRule]) -> bool {
    a.len() == b.len() && a.iter().all(|rule| b.contains(rule))
}

fn socket_of(node: &Node) -> &str {
    match (&node.allocation, &node.record) {
        (Some(allocation), _) => &allocation.socket,
        (None, Some(record)) => &record.socket_path,
        (None, None) => "",
    }
}

/// Where the pod reports: the registry's callback address, else (per the
/// table) the pod it was delegated from.
fn reports_to(node: &Node) -> Option<String> {
    match &node.record {
        Some(record) if !record.callback_address.is_empty() => {
            Some(record.callback_address.clone())
        }
        _ => node.parent.clone(),
    }
}

fn render(nodes: &[Node], format: Format) -> Table {
    let mut header = vec!["POD", "ALIVE", "SOCKET", "REPORTS TO", "SCOPE", "NOTE"];
    if format.is_wide() {
        header.splice(1..1, ["PID", "INCARNATION"]);
    }
    let mut rows = Table::new(&header);
    let forest: Vec<(&str, Option<&str>)> = nodes
        .iter()
        .map(|n| (n.name.as_str(), n.parent.as_deref()))
        .collect();
    for (i, label) in output::tree_order(&forest) {
        let node = &nodes[i];
        let scope = match (&node.allocation, &node.record) {
            (Some(allocation), _) => output::rules(&allocation.scope_allow),
            (None, Some(record)) => output::rules(&record.scope_delegated),
            (None, None) => "-".into(),
        };
        let answers = match node.reachable {
            Some(true) => "answers",
            Some(false) => "silent",
            None => "-",
        };
        let mut cells = vec![
            label,
            if node.alive { "yes" } else { "no" }.into(),
            answers.into(),
            reports_to(node).unwrap_or_else(|| "-".into()),
            scope,
            if node.notes.is_empty() {
                "-".into()
            } else {
                node.notes.join("; ")
            },
        ];
        if format.is_wide() {
            let pid = node
                .allocation
                .as_ref()
                .map_or("-".into(), |a| a.pid.to_string());
            let incarnation = node
                .allocation
                .as_ref()
                .and_then(|a| a.incarnation.clone())
                .or_else(|| node.record.as_ref().and_then(|r| r.incarnation.clone()))
                .unwrap_or_default();
            cells.splice(1..1, [pid, format.id(&incarnation)]);
        }
        rows.row(cells);
    }
    rows
}
