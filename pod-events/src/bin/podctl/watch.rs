//! `podctl watch`: follow a running endpoint's rendered lines without
//! being its parent, through its control socket (`<socket>.control`, see
//! `pod_events::ControlSink`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::output::{self, Format};
use crate::paths;

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("whose").required(true))]
pub(crate) struct WatchArgs {
    /// The endpoint's event socket (as given to `podctl listen
    /// --socket`); its control socket is beside it.
    #[arg(long, value_name = "PATH", group = "whose")]
    socket: Option<String>,
    /// The pod whose endpoint to follow (its default socket,
    /// RUNTIME_DIR/NAME/sock).
    #[arg(long, value_name = "NAME", group = "whose")]
    name: Option<String>,
}

/// `podctl watch`: prints each line as the endpoint renders it (with
/// `-o json`, the endpoint's JSON object), until the endpoint shuts down
/// (exit 0).
pub(crate) fn run(args: WatchArgs, format: Format) -> Result<()> {
    let socket = match (args.socket, args.name) {
        (Some(socket), _) => paths::checked("--socket", socket)?,
        (None, Some(name)) => paths::socket(None, &paths::pod_name(&name)?)?,
        (None, None) => unreachable!("clap requires --socket or --name"),
    };
    let control = pod_events::control_socket_path(&socket);
    let stream = UnixStream::connect(&control).with_context(|| {
        format!(
            "cannot follow the endpoint of {socket}: nothing serves its control socket {} \
             (is `podctl listen --socket {socket}` running?)",
            control.display()
        )
    })?;
    let mut reader = BufReader::new(stream);
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // Bounded by the endpoint, which sends one bounded line per event;
        // a read error (the endpoint vanished) ends the watch like EOF.
        let n = reader
            .read_until(b'\n', &mut raw)
            .with_context(|| format!("lost the control socket {}", control.display()))?;
        if n == 0 {
            tracing::info!("the endpoint shut down");
            return Ok(());
        }
        let value: serde_json::Value = match serde_json::from_slice(&raw) {
            Ok(value) => value,
            Err(error) => bail!(
                "the control socket {} sent a line that is not JSON ({error}): is it a podctl endpoint?",
                control.display()
            ),
        };
        if let Some(missed) = value.get("missed").and_then(|m| m.as_u64()) {
            tracing::warn!(missed, "this watcher fell behind and missed lines");
            continue;
        }
        let text = if format.is_json() {
            output::json_line(&value)
        } else {
            match value.get("line").and_then(|l| l.as_str()) {
                // Rendered by the endpoint: one line, already escaped.
                Some(line) => output::escape(line),
                None => continue,
            }
        };
        // Not `output::print`: the lines are what `watch` is run for, so
        // `-q` quiets its logs only, as for `listen`.
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
    }
}
