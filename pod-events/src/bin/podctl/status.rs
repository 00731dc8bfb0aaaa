//! `podctl status NAME`: is one pod alive, in the habit of `systemctl
//! is-active` (exit 0 alive, 1 not).
//!
//! Alive means what reconcile means by it (DESIGN.md section 4): a pod
//! holding an allocation is alive while its process runs with the
//! recorded start time; a pod with no allocation (an existing Pod, or one
//! not registered yet) is alive while something answers at its socket.
//! The socket is probed either way and shown, since a live process whose
//! socket does not answer cannot receive events.

use std::path::Path;

use anyhow::Result;
use clap::Args;
use pod_events::{Reachability, SocketProbe};
use pod_scope_lock::Allocation;
use serde_json::json;

use crate::output::{self, Format};
use crate::paths;
use crate::store::{self, Holders, TableArgs};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The pod's name.
    #[arg(value_name = "NAME")]
    name: String,
    #[command(flatten)]
    table: TableArgs,
    /// The pod's socket to probe: a path, `unix:` + path, or
    /// tls://HOST:PORT [default: its allocation's socket, else
    /// RUNTIME_DIR/NAME/sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
}

/// The answer "no": the pod is not alive. `main` exits 1 without a line
/// on stderr, since stdout already says so (and `-q` asks for silence).
#[derive(Debug, thiserror::Error)]
#[error("pod `{0}` is not alive")]
pub(crate) struct NotAlive(pub(crate) String);

/// `podctl status`.
pub(crate) fn run(args: StatusArgs, format: Format) -> Result<()> {
    let name = paths::pod_name(&args.name)?;
    let table = store::open_to_read(args.table)?;
    let allocation = table.find(&name)?;
    let socket = match (args.socket, &allocation) {
        (Some(socket), _) => paths::address("--socket", socket)?,
        (None, Some(allocation)) => allocation.socket.clone(),
        (None, None) => paths::socket(None, &name)?,
    };
    let reachable = probe(&[socket.as_str()])?.pop().flatten();
    let process_alive = allocation.as_ref().map(|a| table.is_live(a));
    let alive = process_alive.unwrap_or(reachable == Some(true));

    if format.is_json() {
        output::print_json(&json!({
            "pod_name": name,
            "alive": alive,
            "socket": socket,
            "reachable": reachable,
            "allocation": allocation.as_ref().map(|a| with_alive(a, process_alive)),
        }))?;
    } else {
        output::print(&describe(
            name.as_str(),
            alive,
            &socket,
            reachable,
            allocation.as_ref(),
            store::holders(&table),
            format,
        ))?;
    }
    if alive {
        Ok(())
    } else {
        Err(NotAlive(name.to_string()).into())
    }
}

fn with_alive(allocation: &Allocation, alive: Option<bool>) -> serde_json::Value {
    let mut value = serde_json::to_value(allocation).unwrap_or_default();
    if let (Some(object), Some(alive)) = (value.as_object_mut(), alive) {
        object.insert("alive".into(), alive.into());
    }
    value
}

/// `name: alive` and then one `KEY  value` line per fact, aligned.
fn describe(
    name: &str,
    alive: bool,
    socket: &str,
    reachable: Option<bool>,
    allocation: Option<&Allocation>,
    holders: Holders,
    format: Format,
) -> String {
    let mut facts: Vec<(&str, String)> = Vec::new();
    let why = match allocation {
        Some(a) if alive => match holders {
            Holders::Processes => format!("process {} is running", a.pid),
            Holders::Leases => format!("lease holder {}'s lease is alive", a.pid),
        },
        Some(a) => format!("{} is gone (its allocation is stale)", holders.name(a)),
        None if alive => "no allocation; its socket answers".into(),
        None => "no allocation, and nothing answers at its socket".into(),
    };
    facts.push((
        "state",
        format!("{} ({why})", if alive { "alive" } else { "not alive" }),
    ));
    let answers = match reachable {
        Some(true) => "answers",
        Some(false) => "does not answer",
        None => "not probed: not a socket address",
    };
    facts.push(("socket", format!("{socket} ({answers})")));
    if let Some(a) = allocation {
        facts.push(("pid", a.pid.to_string()));
        let from = a
            .delegated_from
            .as_ref()
            .map_or("- (top-level)".into(), |p| p.to_string());
        facts.push(("from", from));
        facts.push((
            "incarnation",
            format.id(a.incarnation.as_deref().unwrap_or_default()),
        ));
        if format.is_wide() {
            let optional = |n: Option<u64>| n.map_or("-".into(), |n| n.to_string());
            facts.push(("start time", optional(a.start_time)));
            facts.push(("pending until", optional(a.pending_until)));
        }
        facts.push(("scope", output::rules(&a.scope_allow)));
    }
    let width = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut text = format!("{}\n", output::escape(name));
    for (key, value) in facts {
        text.push_str(&format!("  {key:<width$}  {}\n", output::escape(&value)));
    }
    text
}

/// Whether something answers at each address (an
/// [`Address`](pod_protocol::Address): a Unix socket path with or without
/// `unix:`, or `tls://host:port`, where a TCP connect answers): `None` for
/// anything else (a record written by another tool), which is not probed.
pub(crate) fn probe(sockets: &[&str]) -> Result<Vec<Option<bool>>> {
    let runtime = crate::current_thread_runtime()?;
    let probe = SocketProbe::default();
    Ok(runtime.block_on(async {
        let mut answers = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let answer = if socket.parse::<pod_protocol::Address>().is_ok() {
                Some(probe.is_reachable(Path::new(socket)).await)
            } else {
                None
            };
            answers.push(answer);
        }
        answers
    }))
}
