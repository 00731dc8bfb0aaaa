//! `podctl`: the command line of pod-events, for operators and scripts.
//!
//! It runs a parent endpoint (`listen`), spawns a child pod with its
//! scope handed off (`run`, DESIGN.md section 11), sends events (`send`), shows a
//! registry and the scope table (`registry`, `scopes`, joined with
//! reachability by `tree`; one pod by `status`), follows a running
//! endpoint (`watch`), changes the scope table (`scope register |
//! delegate | release | reclaim`) and repairs a registry (`reconcile`):
//! the surface of DESIGN.md section 10. Results go to stdout (tables for
//! people, `-o json` for scripts), logs to stderr (`-q`, `-v`, or
//! `RUST_LOG`). Exit status: 0 done, 1 refused or failed (one line on
//! stderr saying what and why), 2 usage.
//!
//! This binary is the only place that reads the environment to find paths
//! ([`paths`]), and `listen` the handoff variables of a spawned pod
//! ([`adoption`]); every library layer is handed its paths.

mod adoption;
mod completions;
mod listen;
mod output;
mod paths;
mod registry;
mod run;
mod scopes;
mod send;
mod status;
mod store;
mod tls;
mod tree;
mod watch;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{ArgAction, CommandFactory, Parser, Subcommand};
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
/// 2 usage. Logs go to stderr: `-v` shows more of them, `-q` only errors;
/// without either, RUST_LOG (e.g. `RUST_LOG=debug`) filters them.
#[derive(Debug, Parser)]
#[command(name = "podctl", version = VERSION)]
struct Cli {
    /// How to print results: `table` for people, `wide` with ids whole
    /// and more columns, `json` for scripts (for `listen` and `watch`: one
    /// JSON object per event).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FORMAT",
        global = true,
        default_value = "table"
    )]
    output: output::Format,
    /// The same as `-o json`.
    #[arg(long, global = true)]
    json: bool,
    /// Print no results and log only errors: the exit status says how it
    /// went (and, on failure, one line on stderr). `listen` and `watch`
    /// still print their event lines, which are what they are run for.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Log more on stderr (-v: podctl's debug notices and every library's
    /// info; -vv: everything's debug; -vvv: trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,

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
    /// Show every pod as one tree: the scope table, a pod's registry
    /// (with --state-dir or --name) and whether each socket answers, with
    /// every place where the registry and the table disagree marked.
    Tree(tree::TreeArgs),
    /// Whether one pod is alive: exit 0 if it is, 1 if not (stdout says
    /// why). Alive: its allocation's process runs, or, with no
    /// allocation, its socket answers.
    Status(status::StatusArgs),
    /// Follow a running endpoint's rendered lines live, read-only (from
    /// its control socket, beside its event socket); exit 0 when it shuts
    /// down.
    Watch(watch::WatchArgs),
    /// Print a shell completion script (e.g. `podctl completions bash >
    /// ~/.local/share/bash-completion/completions/podctl`).
    Completions(completions::CompletionsArgs),
    /// Write the man pages (used by `cargo xtask dist`).
    #[command(hide = true)]
    Manpage(completions::ManpageArgs),
}

/// `podctl --version`: the crate version and the git commit it was built
/// from (`unknown` outside a checkout; see build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("PODCTL_GIT_COMMIT"),
    ")"
);

fn main() -> ExitCode {
    // Usage errors exit here with status 2 (clap's default); `--help` and
    // `--version` with 0.
    let cli = Cli::parse();
    init_logging(cli.quiet, cli.verbose);
    output::set_quiet(cli.quiet);
    let format = if cli.json {
        output::Format::Json
    } else {
        cli.output
    };
    let result = match cli.command {
        Command::Listen(args) => listen::run(args, format.is_json()),
        Command::Run(args) => run::run(args, format.is_json()),
        Command::Send(args) => send::run(args),
        Command::Registry(args) => registry::show(args, format),
        Command::Scopes(args) => scopes::show(args, format),
        Command::Scope(command) => scopes::change(command, format),
        Command::Reconcile(args) => registry::reconcile(args, format),
        Command::Tree(args) => tree::run(args, format),
        Command::Status(args) => status::run(args, format),
        Command::Watch(args) => watch::run(args, format),
        Command::Completions(args) => completions::completions(args, Cli::command()),
        Command::Manpage(args) => completions::manpages(args, Cli::command()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Not a failure: the answer "no", already printed on stdout.
        Err(error) if error.is::<status::NotAlive>() => ExitCode::from(1),
        Err(error) => {
            eprintln!("podctl: {}", one_line(&error));
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr. By default podctl's own notices and every warning are
/// shown (library warnings say when an event was dropped or a file could
/// not be written); `-q` and `-v` choose, else `RUST_LOG` filters.
/// A runtime on this thread, for a command's few async steps.
fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(quiet: bool, verbose: u8) {
    let chosen = match (quiet, verbose) {
        (true, _) => Some("error"),
        (false, 0) => None,
        (false, 1) => Some("info,podctl=debug"),
        (false, 2) => Some("debug"),
        (false, _) => Some("trace"),
    };
    let filter = match chosen {
        Some(level) => EnvFilter::new(level),
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,podctl=info"))
        }
    };
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
