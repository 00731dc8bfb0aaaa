//! Which scope table a command works on: the file (`--scope-lock`) or,
//! with the `etcd` feature, a table on an etcd cluster (`--scope-store`).
//!
//! Every command is written once, against [`Scopes`]: a [`ScopeTable`] on
//! [`AnyStore`] (the file store or the etcd store, by delegation) probed
//! by [`AnyLiveness`] (processes through `/proc` for a file table, leases
//! for an etcd table, where an allocation's `pid` is its lease holder id
//! and its `start_time` the lease id).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Result};
use clap::Args;
use pod_events::{EndpointConfig, ExitWatch, TableLocation};
use pod_protocol::PodName;
use pod_scope_lock::{Allocation, FileStore, Liveness, ProcLiveness, ScopeError, ScopeTable};
use pod_scope_lock::{Table, TableStore};

use crate::paths;

/// The table flags, flattened into every command that uses the table.
#[derive(Debug, Clone, Args)]
pub(crate) struct TableArgs {
    /// The scope table file [default: RUNTIME_DIR/scope.lock].
    #[arg(long, value_name = "FILE")]
    pub(crate) scope_lock: Option<PathBuf>,
    /// The scope table on etcd instead of a file (needs a podctl built
    /// with the `etcd` feature). There, a pod is held by an etcd lease: its
    /// PID is its lease holder id, and it is alive while its lease is.
    #[arg(
        long,
        value_name = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX",
        conflicts_with = "scope_lock"
    )]
    pub(crate) scope_store: Option<String>,
}

/// Where a table is, in a line: the file made absolute against the
/// working directory (so a message about a relative path says where it
/// looked), or the etcd address.
pub(crate) fn shown(location: &TableLocation) -> String {
    match location {
        TableLocation::File(path) => std::path::absolute(path)
            .unwrap_or_else(|_| path.clone())
            .display()
            .to_string(),
        other => other.value(),
    }
}

impl TableArgs {
    /// The table the flags name: `--scope-store`, `--scope-lock`, or the
    /// default file in the runtime directory.
    pub(crate) fn location(self) -> Result<TableLocation> {
        match (self.scope_store, self.scope_lock) {
            (Some(address), _) => Ok(TableLocation::Store(address)),
            (None, flag) => Ok(TableLocation::File(paths::scope_lock(flag)?)),
        }
    }

    /// Fills the table from a spawner's handoff unless a flag names one
    /// (flags override).
    pub(crate) fn fill_from(&mut self, location: &TableLocation) {
        if self.given() {
            return;
        }
        match location {
            TableLocation::File(path) => self.scope_lock = Some(path.clone()),
            other => self.scope_store = Some(other.value()),
        }
    }

    /// Whether a table was named by a flag (not the default).
    fn given(&self) -> bool {
        self.scope_lock.is_some() || self.scope_store.is_some()
    }
}

/// The file store or the etcd store.
#[derive(Debug, Clone)]
pub(crate) enum AnyStore {
    /// A table file.
    File(FileStore),
    /// A table on etcd.
    #[cfg(feature = "etcd")]
    Etcd(pod_scope_lock::EtcdStore),
}

impl TableStore for AnyStore {
    fn transact<R>(
        &self,
        f: impl FnOnce(&mut Table) -> Result<R, ScopeError>,
    ) -> Result<R, ScopeError> {
        match self {
            AnyStore::File(store) => store.transact(f),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(store) => store.transact(f),
        }
    }

    fn load(&self) -> Result<Table, ScopeError> {
        match self {
            AnyStore::File(store) => store.load(),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(store) => store.load(),
        }
    }

    fn read<R>(&self, f: impl FnOnce(&Table) -> R) -> Result<R, ScopeError> {
        match self {
            AnyStore::File(store) => store.read(f),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(store) => store.read(f),
        }
    }

    fn may_block(&self) -> bool {
        match self {
            AnyStore::File(store) => store.may_block(),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(store) => store.may_block(),
        }
    }
}

/// Processes through `/proc` (a file table) or leases (an etcd table).
#[derive(Debug, Clone)]
pub(crate) enum AnyLiveness {
    /// Local processes.
    Proc(ProcLiveness),
    /// Lease holders.
    #[cfg(feature = "etcd")]
    Lease(pod_scope_lock::LeaseLiveness),
}

impl Liveness for AnyLiveness {
    fn start_time(&self, pid: u32) -> Option<u64> {
        match self {
            AnyLiveness::Proc(live) => live.start_time(pid),
            #[cfg(feature = "etcd")]
            AnyLiveness::Lease(live) => live.start_time(pid),
        }
    }

    fn is_same_process(&self, pid: u32, start_time: u64) -> bool {
        match self {
            AnyLiveness::Proc(live) => live.is_same_process(pid, start_time),
            #[cfg(feature = "etcd")]
            AnyLiveness::Lease(live) => live.is_same_process(pid, start_time),
        }
    }

    fn is_alive(&self, pid: u32) -> bool {
        match self {
            AnyLiveness::Proc(live) => live.is_alive(pid),
            #[cfg(feature = "etcd")]
            AnyLiveness::Lease(live) => live.is_alive(pid),
        }
    }

    fn now_unix_ms(&self) -> u64 {
        match self {
            AnyLiveness::Proc(live) => live.now_unix_ms(),
            #[cfg(feature = "etcd")]
            AnyLiveness::Lease(live) => live.now_unix_ms(),
        }
    }
}

/// The scope table every command works on.
pub(crate) type Scopes = ScopeTable<AnyStore, AnyLiveness>;

/// Releases pod `name`'s allocation (only `incarnation`'s); gone already
/// is fine. A failure is logged: reclaim removes the allocation once its
/// holder is gone.
pub(crate) fn release_own(table: &Scopes, name: &PodName, incarnation: Option<&str>) -> bool {
    match table.release(name, incarnation) {
        Ok(_) => true,
        Err(ScopeError::UnknownPod { .. } | ScopeError::IncarnationMismatch { .. }) => false,
        Err(error) => {
            tracing::warn!(%error, pod = %name, "could not release the allocation; reclaim removes it once its holder is gone");
            false
        }
    }
}

/// What tells `podctl listen` at once that a registered pod is gone: its
/// process's exit on a file table (the endpoint's default watch), its
/// lease's end on an etcd table, where a holder id is no local pid.
pub(crate) fn exit_watch(table: &Scopes) -> Option<Arc<dyn ExitWatch>> {
    match table.liveness() {
        AnyLiveness::Proc(_) => EndpointConfig::default().exit_watch,
        #[cfg(feature = "etcd")]
        AnyLiveness::Lease(liveness) => {
            Some(Arc::new(pod_events::LeaseWatch::new(liveness.clone())))
        }
    }
}

/// Opens the table at `location`: a file table is opened lazily (its
/// first operation reads it); an etcd table connects now and fails if the
/// cluster does not answer.
pub(crate) fn open(location: &TableLocation) -> Result<Scopes> {
    match location {
        TableLocation::File(path) => Ok(ScopeTable::new(
            AnyStore::File(FileStore::new(path)),
            AnyLiveness::Proc(ProcLiveness),
        )),
        TableLocation::Store(address) => open_etcd(address),
        other => bail!("podctl cannot open the scope table {}", other.value()),
    }
}

#[cfg(feature = "etcd")]
fn open_etcd(address: &str) -> Result<Scopes> {
    use anyhow::Context;
    use pod_scope_lock::{EtcdAddress, EtcdOptions, EtcdStore, LeaseLiveness};

    let parsed = EtcdAddress::parse(address).context("--scope-store")?;
    let store = EtcdStore::connect(&parsed, EtcdOptions::default())
        .with_context(|| format!("cannot open the scope table at {address}"))?;
    let liveness = LeaseLiveness::new(&store);
    Ok(ScopeTable::new(
        AnyStore::Etcd(store),
        AnyLiveness::Lease(liveness),
    ))
}

#[cfg(not(feature = "etcd"))]
fn open_etcd(address: &str) -> Result<Scopes> {
    bail!(
        "--scope-store {address}: this podctl was built without etcd support; \
         build it with `--features cli,etcd` (e.g. `cargo install pod-events --features cli,etcd`), \
         or use a table file with --scope-lock"
    )
}

/// The table a read-only command shows: one its flags name, which must
/// exist (a mistyped path is an error, not an empty table; an etcd table
/// is there once the cluster answers), or the default file, which may not
/// exist yet (nothing registered).
pub(crate) fn open_to_read(args: TableArgs) -> Result<Scopes> {
    let given = args.given();
    let location = args.location()?;
    if let (true, TableLocation::File(path)) = (given, &location) {
        if !path.exists() {
            bail!(
                "no scope table at {}: the file does not exist (check --scope-lock; \
                 `podctl scope register` creates a table)",
                shown(&location)
            );
        }
    }
    open(&location)
}

/// How a table names what holds an allocation, for the words of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
// Without the `etcd` feature no table is held by leases.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub(crate) enum Holders {
    /// Local processes: `pid` is a process id.
    Processes,
    /// Etcd leases: `pid` is a lease holder id, `start_time` the lease.
    Leases,
}

/// What holds the allocations of `table`.
pub(crate) fn holders(table: &Scopes) -> Holders {
    match table.store() {
        AnyStore::File(_) => Holders::Processes,
        #[cfg(feature = "etcd")]
        AnyStore::Etcd(_) => Holders::Leases,
    }
}

impl Holders {
    /// "process 42" or "lease holder 42".
    pub(crate) fn name(self, allocation: &Allocation) -> String {
        match self {
            Holders::Processes => format!("process {}", allocation.pid),
            Holders::Leases => format!("lease holder {}", allocation.pid),
        }
    }
}

/// An allocation's lease on an etcd table, for display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Lease {
    /// The lease id, in hex (etcdctl's form).
    pub(crate) id: String,
    /// Whether the allocation's holder still holds it.
    pub(crate) alive: bool,
}

impl Lease {
    /// `alive` or `expired`.
    pub(crate) fn state(&self) -> &'static str {
        if self.alive {
            "alive"
        } else {
            "expired"
        }
    }
}

/// The lease of `allocation`, if `table` is held by leases and the
/// allocation records one (its `start_time`); `alive` is what
/// [`ScopeTable::is_live`] said of it (one probe per allocation).
pub(crate) fn lease(table: &Scopes, allocation: &Allocation, alive: bool) -> Option<Lease> {
    if holders(table) != Holders::Leases {
        return None;
    }
    let id = allocation.start_time?;
    Some(Lease {
        id: format!("{id:x}"),
        alive,
    })
}

/// What keeps an allocation podctl takes for a process alive: on a file
/// table the process itself (its pid); on an etcd table a lease this
/// podctl holds, and keeps alive, for it.
#[derive(Debug)]
pub(crate) enum Keeper {
    /// The process's own pid.
    Process,
    /// A lease held for the process.
    #[cfg(feature = "etcd")]
    Lease(pod_scope_lock::LeaseHolder),
}

/// The TTL of a lease podctl holds for a process: how long after podctl
/// itself dies (SIGKILL) the process is presumed gone.
#[cfg(feature = "etcd")]
pub(crate) const LEASE_TTL_SECS: i64 = 10;

impl Keeper {
    /// What will hold an allocation in `table`: on an etcd table, a lease
    /// granted now.
    pub(crate) fn new(table: &Scopes) -> Result<Keeper> {
        match table.store() {
            AnyStore::File(_) => Ok(Keeper::Process),
            #[cfg(feature = "etcd")]
            AnyStore::Etcd(store) => {
                use anyhow::Context;
                let holder = pod_scope_lock::LeaseHolder::acquire(store, LEASE_TTL_SECS)
                    .context("cannot take a lease for the pod")?;
                Ok(Keeper::Lease(holder))
            }
        }
    }

    /// The id the allocation of process `pid` records as its `pid`.
    pub(crate) fn holder_id(&self, pid: u32) -> u32 {
        match self {
            Keeper::Process => pid,
            #[cfg(feature = "etcd")]
            Keeper::Lease(holder) => holder.holder_id(),
        }
    }

    /// The holder id when it does not depend on the process (a lease's),
    /// so the allocation can be adopted before the process exists.
    pub(crate) fn holder_before_spawn(&self) -> Option<u32> {
        match self {
            Keeper::Process => None,
            #[cfg(feature = "etcd")]
            Keeper::Lease(holder) => Some(holder.holder_id()),
        }
    }

    /// Resolves once the lease is, or may be, gone (never for a process's
    /// own pid): checked every 100 ms, as the flag its keep-alive sets.
    pub(crate) async fn lost(&self) {
        match self {
            Keeper::Process => std::future::pending().await,
            #[cfg(feature = "etcd")]
            Keeper::Lease(holder) => {
                while !holder.is_lost() {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Gives the lease up now (waiting for etcd to confirm), once the
    /// allocation it held is released; a failure is logged (the lease then
    /// expires after its TTL).
    pub(crate) fn revoke(self) {
        match self {
            Keeper::Process => {}
            #[cfg(feature = "etcd")]
            Keeper::Lease(holder) => {
                if let Err(error) = holder.revoke() {
                    tracing::warn!(%error, "could not revoke the pod's lease; it expires by itself");
                }
            }
        }
    }
}
