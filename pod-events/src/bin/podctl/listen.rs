//! `podctl listen`: a parent endpoint run as a process.
//!
//! Start-up refuses what it cannot serve (a corrupt registry or scope
//! table, a live listener on the socket) before binding. Shutdown on
//! SIGINT or SIGTERM is orderly: the listener stops accepting and removes
//! its socket, the endpoint applies every event already received, the
//! registry is made durable, and the last line is printed before exit 0.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use pod_events::{
    control_socket_path, spawn_endpoint, AddressSender, ControlSink, EndpointConfig, Notification,
    Parent, SocketProbe,
};
use pod_protocol::Dialect;
use pod_registry::FileRegistry;
use pod_transport::tls::rustls::ServerConfig;
use pod_transport::tls::{TlsListenConfig, TlsListener};
use pod_transport::{
    ListenConfig, Listener, MethodSender, MethodSource, Received, SendConfig, UnixSender,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::store::{self, AnyLiveness, AnyStore, TableArgs};
use crate::tls::TlsArgs;
use crate::{adoption, output, paths};

#[derive(Debug, Args)]
pub(crate) struct ListenArgs {
    /// This pod's name [default: $POD_NAME when started by a spawner
    /// (`podctl run ... -- podctl listen`): the handoff variables then
    /// also give --socket (or --listen, for a tls:// POD_SOCKET),
    /// --scope-lock (or --scope-store), --parent-socket and the TLS
    /// flags (POD_TLS_CERT, POD_TLS_KEY, POD_TLS_CA), and the
    /// reservation POD_INCARNATION names is adopted at start and released
    /// at a clean exit].
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// The socket to listen on [default: RUNTIME_DIR/NAME/sock, unless
    /// --listen is given].
    #[arg(long, value_name = "PATH")]
    socket: Option<String>,
    /// Listen for children over TCP with mutual TLS too (only, without
    /// --socket), at tls://ADDR:PORT; needs --tls-cert, --tls-key and
    /// --tls-ca. A child's certificate names it as pod://NAME.
    #[arg(long, value_name = "tls://ADDR:PORT")]
    listen: Option<String>,
    /// Where the registry lives (spawned_pods.json, departed_pods.json)
    /// [default: RUNTIME_DIR/NAME].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    #[command(flatten)]
    table: TableArgs,
    /// This pod's parent: events are relayed there (omit for a top-level
    /// pod). A Unix socket path, `unix:` + path, or tls://HOST:PORT (with
    /// --tls-cert, --tls-key and --tls-ca).
    #[arg(long, value_name = "ADDRESS")]
    parent_socket: Option<String>,
    /// The names this pod's relays to its parent are written with:
    /// `original` (existing Pods' `pod_event`), or `worker` for a parent of
    /// the later dialect (`worker_event`, `worker_name`, ...). Events of
    /// either dialect are always understood.
    #[arg(long, value_name = "DIALECT", default_value_t = Dialect::Original)]
    upward_dialect: Dialect,
    /// Reconcile at start and then every this many milliseconds (0: never).
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    reconcile_interval_ms: u64,
    /// Register this pod at start as a top-level pod with write scope on
    /// PATH (repeatable), held by this process: its pid on a file table,
    /// on an etcd table a lease it keeps alive (a pid means nothing to
    /// the other hosts). Released at a clean exit. Not for a pod with a
    /// parent: its spawner delegates its scope (`podctl run`).
    #[arg(long = "write", value_name = "PATH", conflicts_with = "parent_socket")]
    writes: Vec<String>,
    /// Read scope for the registration, as --write (repeatable).
    #[arg(long = "read", value_name = "PATH", conflicts_with = "parent_socket")]
    reads: Vec<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

/// `podctl listen`.
pub(crate) fn run(mut args: ListenArgs, json: bool) -> Result<()> {
    let scope = paths::scope_rules(
        std::mem::take(&mut args.writes),
        std::mem::take(&mut args.reads),
    );
    let handoff = adoption::fill(adoption::Fillable {
        name: &mut args.name,
        socket: &mut args.socket,
        listen: &mut args.listen,
        table: &mut args.table,
        parent_socket: &mut args.parent_socket,
        tls: &mut args.tls,
    })?;
    if handoff.is_some() && !scope.is_empty() {
        bail!("--write and --read register a top-level pod; this listen adopts the reservation its spawner made (POD_INCARNATION is set)");
    }
    let name = paths::pod_name(args.name.as_deref().unwrap_or_default())?;
    let tls_listen = args
        .listen
        .as_deref()
        .map(paths::listen_address)
        .transpose()?;
    let socket = match (args.socket, &tls_listen) {
        (None, Some(_)) => None,
        (socket, _) => Some(paths::socket(socket, &name)?),
    };
    let parent_socket = paths::parent_address(args.parent_socket)?;
    let tls_up = parent_socket
        .as_deref()
        .is_some_and(|up| up.starts_with("tls://"));
    if tls_up && args.upward_dialect != Dialect::Original {
        bail!(
            "--upward-dialect {} is for Unix parents: a tls:// parent reads the original dialect",
            args.upward_dialect
        );
    }
    let identity = args
        .tls
        .load(tls_listen.is_some() || tls_up, "this listen")?;
    let tls_address = tls_listen.as_ref().map(|addr| format!("tls://{addr}"));
    let tls_listen = match (tls_listen, &identity) {
        (Some(addr), Some(identity)) => Some((addr, identity.server()?)),
        _ => None,
    };
    let state_dir = paths::state_dir(args.state_dir, &name)?;
    let location = args.table.location()?;
    let interval =
        (args.reconcile_interval_ms > 0).then(|| Duration::from_millis(args.reconcile_interval_ms));

    // Reading the table and opening the registry block: do it before the
    // runtime exists. Either refusal leaves its file untouched; the table
    // goes first because opening a registry creates missing files.
    let mut upward = AddressSender::new(UnixSender::new(SendConfig {
        dialect: args.upward_dialect,
        ..SendConfig::default()
    }));
    if let Some(identity) = identity.as_ref().filter(|_| tls_up) {
        upward = upward.with_tls(identity.sender()?);
    }
    let table = store::open(&location)?;
    table.list()?;
    let config = EndpointConfig::default()
        .reconcile_every(interval)
        .exit_watch(store::exit_watch(&table));
    // The context's own reports (its ShutDown) go the relays' way.
    let adopted = adoption::adopt(
        handoff,
        &name,
        socket.as_deref(),
        parent_socket.as_deref(),
        &location,
        &table,
        upward.clone(),
    )?;
    // run() gives a socket unless --listen is given.
    let address = socket.clone().or(tls_address).unwrap_or_default();
    let registered = (!scope.is_empty())
        .then(|| adoption::register(&table, &name, address, scope))
        .transpose()?;
    let registry = FileRegistry::open(&state_dir)?;
    let parent = Parent::new(name, registry, table.clone(), SocketProbe::default());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = match parent_socket {
        Some(up) => {
            // Adopted: the context's reports (its ShutDown on exit) and the
            // relays share one link, which a reparent notice moves (the
            // context's parent socket is --parent-socket, when given).
            let link = match &adopted {
                Some(adopted) => adopted.upward().clone(),
                None => pod_events::UpwardLink::new(up),
            };
            let parent = Arc::new(parent.with_upward_link(upward, link));
            runtime.block_on(serve(parent, socket, tls_listen, config, json))
        }
        None => {
            // Its sender still serves: reparent notices to orphans.
            let parent = Arc::new(parent.with_sender(upward));
            runtime.block_on(serve(parent, socket, tls_listen, config, json))
        }
    };
    adoption::depart(&runtime, adopted, served.is_ok());
    if let Some(registered) = registered {
        registered.depart(&table, served.is_ok());
    }
    served
}

type FileParent<U> = Parent<FileRegistry, AnyStore, AnyLiveness, U>;

/// The listeners an endpoint is served by: the Unix socket, the TLS
/// listener, or both merged into one stream.
enum Sources {
    Unix(Listener),
    Tls(TlsListener),
    Both(pod_events::Merged),
}

impl MethodSource for Sources {
    async fn recv(&mut self) -> Option<Received> {
        match self {
            Sources::Unix(listener) => listener.recv().await,
            Sources::Tls(listener) => listener.recv().await,
            Sources::Both(merged) => merged.recv().await,
        }
    }
}

/// How long a stopping endpoint may take to apply what it already
/// received.
const STOP_BOUND: Duration = Duration::from_secs(15);

async fn serve<U: MethodSender + Clone>(
    parent: Arc<FileParent<U>>,
    socket: Option<String>,
    tls_listen: Option<(String, Arc<ServerConfig>)>,
    config: EndpointConfig,
    json: bool,
) -> Result<()> {
    // Handlers first: once the socket exists, SIGTERM means a clean
    // shutdown, never the default disposition's abrupt exit.
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let unix = match &socket {
        Some(socket) => Some(Listener::bind(socket, ListenConfig::default()).await?),
        None => None,
    };
    let tls = match &tls_listen {
        Some((addr, server)) => Some(
            TlsListener::bind(addr, server.clone(), TlsListenConfig::default())
                .await
                .with_context(|| format!("cannot listen on tls://{addr}"))?,
        ),
        None => None,
    };
    let stops: Vec<_> = unix
        .iter()
        .map(Listener::shutdown_handle)
        .chain(tls.iter().map(TlsListener::shutdown_handle))
        .collect();
    let tls_addr = tls
        .as_ref()
        .map(|tls| format!("tls://{}", tls.local_addr()));
    let listener = match (unix, tls) {
        (Some(unix), Some(tls)) => Sources::Both(pod_events::merge(unix, tls)),
        (Some(unix), None) => Sources::Unix(unix),
        (None, Some(tls)) => Sources::Tls(tls),
        (None, None) => unreachable!("run() gives a socket unless --listen is given"),
    };

    let (sink, lines) = mpsc::unbounded_channel();
    // `podctl watch` follows the lines from a control socket beside the
    // event socket (bound after it: its lock makes a leftover one stale).
    let sink = match &socket {
        Some(socket) => ControlSink::bind(control_socket_path(socket), sink)?,
        None => ControlSink::unserved(sink),
    };
    // Writing to stdout blocks when the reader is slow: keep it off the
    // executor. The thread ends when the endpoint drops the sink.
    let printer = std::thread::Builder::new()
        .name("podctl-stdout".into())
        .spawn(move || print_lines(lines, json))
        .context("cannot start the output thread")?;
    let endpoint = spawn_endpoint(parent.clone(), listener, sink, config);
    let (unix, tls) = (socket.as_deref(), tls_addr.as_deref());
    tracing::info!(pod = %parent.name(), socket = %unix.unwrap_or("-"), tls = %tls.unwrap_or("-"), "listening");

    let signal = tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    };
    tracing::info!(signal, "shutting down");
    for stop in &stops {
        stop.shutdown();
    }
    // Bounded: a table whose lock a stuck process holds fails each batch
    // after the store's lock timeout, but a long queue of them must not
    // keep a stopping pod alive.
    let progress = endpoint.progress();
    let stats = match tokio::time::timeout(STOP_BOUND, endpoint.join()).await {
        Ok(stats) => stats,
        Err(_) => {
            let left = progress.snapshot();
            let undone = left.received.saturating_sub(
                left.applied
                    + left.invalid
                    + left.undecodable
                    + left.unsupported
                    + left.rejected_senders,
            );
            // What was applied is durable or retried by the registry's
            // flush; the rest is left to the next start's reconcile.
            let flushed = parent.registry().flush().await;
            anyhow::bail!(
                "stopped after {STOP_BOUND:?} with {undone} received events not applied \
                 (the scope table did not answer; reconcile at the next start repairs it){}",
                match flushed {
                    Ok(()) => String::new(),
                    Err(error) => format!("; the registry could not be made durable: {error}"),
                }
            );
        }
    };
    parent
        .registry()
        .flush()
        .await
        .context("the registry could not be made durable at shutdown")?;
    if printer.join().is_err() {
        tracing::warn!("the output thread panicked; some lines may be missing");
    }
    tracing::info!(
        received = stats.received,
        applied = stats.applied,
        invalid = stats.invalid + stats.undecodable + stats.unsupported,
        "shut down"
    );
    Ok(())
}

/// Prints each notification as one line (or one JSON object). Lines are
/// written in batches: everything queued is written with one write, and
/// flushed as soon as the queue is empty, so a reader sees each line as it
/// happens and a burst costs a few writes, not one per line.
fn print_lines(mut lines: mpsc::UnboundedReceiver<Notification>, json: bool) {
    let mut out = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    let mut broken = false;
    while let Some(first) = lines.blocking_recv() {
        let mut next = Some(first);
        while let Some(note) = next.take().or_else(|| lines.try_recv().ok()) {
            // Once stdout is closed keep draining: the endpoint must never
            // block on us.
            if !broken {
                broken = write_line(&mut out, note, json);
            }
        }
        if !broken && out.flush().is_err() {
            broken = true;
        }
        if broken {
            tracing::warn!("stdout is closed; events are still applied but no longer printed");
            drain(&mut lines);
            return;
        }
    }
}

/// Receives and drops everything until the endpoint drops its sink.
fn drain(lines: &mut mpsc::UnboundedReceiver<Notification>) {
    while lines.blocking_recv().is_some() {}
}

/// Writes one notification; true when stdout is gone.
fn write_line(out: &mut impl Write, note: Notification, json: bool) -> bool {
    let text = if json {
        output::json_line(&note.to_json())
    } else {
        note.line
    };
    writeln!(out, "{text}").is_err()
}
