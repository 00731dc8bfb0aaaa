//! `podctl`: the command line of pod-events, for operators and scripts.
//!
//! It runs a parent endpoint (`listen`), sends events (`send`), shows a
//! registry and the scope table (`registry`, `scopes`), changes the scope
//! table (`scope register | delegate | release | reclaim`) and repairs a
//! registry (`reconcile`): the surface of DESIGN.md section 10. Results go
//! to stdout (tables for people, `--json` for scripts), logs to stderr
//! (filtered by `RUST_LOG`). Exit status: 0 done, 1 refused or failed (one
//! line on stderr saying what and why), 2 usage.
//!
//! This binary is the only place that reads the environment to find paths
//! ([`paths`]); every library layer is handed its paths.

mod listen;
mod output;
mod paths;
mod registry;
mod run;
mod scopes;
mod send;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// Lifecycle events and scope allocations of a tree of Pods.
///
/// Paths default, when their flag is omitted, to the runtime directory
/// RUNTIME_DIR: `$PODS_RUNTIME_DIR`, else `$XDG_RUNTIME_DIR/pods`, else
/// `/tmp/pods-UID` (created with mode 0700, refused unless private). There,
/// the scope table is `scope.lock`, and pod NAME keeps its state in `NAME/`
/// and listens on `NAME/sock`.
///
/// Exit status: 0 done, 1 refused or failed (one line on stderr says why),
/// 2 usage. Logs go to stderr; set RUST_LOG (e.g. `RUST_LOG=debug`) to see
/// more of them.
#[derive(Debug, Parser)]
#[command(name = "podctl", version)]
struct Cli {
    /// Print JSON for scripts instead of tables (for `listen`: one JSON
    /// object per event). Tables shorten incarnation ids; JSON has them
    /// whole.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a parent endpoint: apply each child's event, print one rendered
    /// line per event on stdout, reconcile on an interval; exit 0 on
    /// SIGINT or SIGTERM after a clean shutdown.
    Listen(listen::ListenArgs),
    /// Spawn a child pod: reserve its scope from PARENT's, start CMD with
    /// the handoff variables (POD_NAME, POD_INCARNATION, ...), adopt the
    /// reservation with CMD's pid, announce it to PARENT, and exit with
    /// CMD's status once its exit is reported.
    Run(run::RunArgs),
    /// Send one pod event (the `params` object of a `pod_event`) to a
    /// parent's socket.
    Send(send::SendArgs),
    /// Show a pod's registry of spawned pods and its recent departures.
    Registry(registry::RegistryArgs),
    /// Show the scope table as a tree of allocations.
    Scopes(scopes::ScopesArgs),
    /// Change the scope table.
    #[command(subcommand)]
    Scope(scopes::ScopeCommand),
    /// Repair a pod's registry once: dead pods are handled as shut down,
    /// stale allocations reclaimed, unrecorded descendants adopted.
    Reconcile(registry::ReconcileArgs),
}

fn main() -> ExitCode {
    // Usage errors exit here with status 2 (clap's default); `--help` and
    // `--version` with 0.
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Listen(args) => listen::run(args, cli.json),
        Command::Run(args) => run::run(args, cli.json),
        Command::Send(args) => send::run(args),
        Command::Registry(args) => registry::show(args, cli.json),
        Command::Scopes(args) => scopes::show(args, cli.json),
        Command::Scope(command) => scopes::change(command, cli.json),
        Command::Reconcile(args) => registry::reconcile(args, cli.json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("podctl: {}", one_line(&error));
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr. Without `RUST_LOG`, podctl's own notices and every
/// warning are shown: library warnings say when an event was dropped or a
/// file could not be written.
fn init_logging() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,podctl=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// The error and its causes on one line. Causes whose text the message
/// already contains (many errors here quote their source) are skipped.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}
