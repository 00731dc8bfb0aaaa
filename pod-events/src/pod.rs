//! The facade an embedder meets first: one [`Pod`], built from a
//! directory (or from a spawner's handoff) and a scope, that holds its
//! allocation, listens, reconciles, relays upward, spawns children and
//! yields its notifications, without a type parameter in sight.
//!
//! Underneath it is exactly the trait-level API ([`Parent`],
//! [`spawn_endpoint`](crate::spawn_endpoint), [`Spawner`],
//! [`PodContext`]) over the real layers: the registry file, the scope
//! table file, Unix sockets. Whoever replaces a layer uses those.

use std::fs::DirBuilder;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use pod_protocol::{PodName, ScopeRule, ValidationError};
use pod_registry::{FileRegistry, Record, Registry, RegistryError};
use pod_scope_lock::{FileStore, Liveness, PodSpec, ProcLiveness, ScopeError, ScopeTable};
use pod_transport::{ListenConfig, ListenError, Listener, ShutdownHandle, UnixSender};
use tokio::sync::mpsc;

use crate::context::{ContextError, PodContext};
use crate::endpoint::{spawn_endpoint, EndpointConfig, EndpointHandle, Notification};
use crate::guard::{off_executor, on_table, Departure, Guard};
use crate::handoff::{Handoff, HandoffError, TableLocation};
use crate::parent::Parent;
use crate::probe::SocketProbe;
use crate::spawner::{SpawnError, SpawnedChild, Spawner};
use crate::watch::WatchedPod;

/// The parent side of a [`Pod`], with the real layers.
pub type FileParent = Parent<FileRegistry, FileStore, ProcLiveness, UnixSender, SocketProbe>;

/// Why a pod could not start, spawn or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodError {
    /// The pod's name is not a valid pod name.
    #[error("invalid pod name: {0}")]
    Name(#[source] ValidationError),
    /// The handoff variables are missing or invalid.
    #[error(transparent)]
    Handoff(#[from] HandoffError),
    /// A child could not adopt its reservation.
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A top-level pod could not register its scope (a conflict names the
    /// competitor).
    #[error("pod `{name}` could not register its scope: {source}")]
    Register {
        /// The pod's name.
        name: PodName,
        /// The table's answer.
        #[source]
        source: ScopeError,
    },
    /// A top-level pod was given no scope.
    #[error("pod `{name}` has no scope: give it at least one write or read rule")]
    NoScope {
        /// The pod's name.
        name: PodName,
    },
    /// The pod's directory could not be created.
    #[error("cannot create the pods' directory {}: {source}", .dir.display())]
    Dir {
        /// The directory.
        dir: PathBuf,
        /// The operating system's answer.
        #[source]
        source: std::io::Error,
    },
    /// The registry could not be opened or made durable.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The socket could not be listened on.
    #[error(transparent)]
    Listen(#[from] ListenError),
    /// A child could not be spawned.
    #[error(transparent)]
    Spawn(#[from] SpawnError),
}

/// How a [`Pod`] comes to hold its allocation.
#[derive(Debug)]
enum Origin {
    /// A top-level pod registers its scope.
    TopLevel { scope: Vec<ScopeRule> },
    /// A child adopts the reservation its spawner made.
    Child(Handoff),
}

/// Builds a [`Pod`]: [`Pod::builder`] (top-level) or [`Pod::from_env`]
/// (a child), then [`start`](PodBuilder::start).
#[derive(Debug)]
#[must_use = "a builder does nothing until started"]
pub struct PodBuilder {
    name: PodName,
    origin: Origin,
    socket: String,
    state_dir: PathBuf,
    scope: TableLocation,
    reconcile_every: Option<Duration>,
}

impl PodBuilder {
    /// Adds write scope on `path` and everything below it (top-level pods;
    /// a child's scope is what its spawner reserved).
    pub fn write(mut self, path: impl AsRef<Path>) -> Self {
        self.rule(ScopeRule::write(path.as_ref().display().to_string()));
        self
    }

    /// Adds read scope on `path` and everything below it.
    pub fn read(mut self, path: impl AsRef<Path>) -> Self {
        self.rule(ScopeRule::read(path.as_ref().display().to_string()));
        self
    }

    fn rule(&mut self, rule: ScopeRule) {
        if let Origin::TopLevel { scope } = &mut self.origin {
            scope.push(rule);
        }
    }

    /// Listens on `socket` instead of the default.
    pub fn socket(mut self, socket: impl Into<String>) -> Self {
        self.socket = socket.into();
        self
    }

    /// Keeps the registry in `dir` instead of the default.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = dir.into();
        self
    }

    /// Reconciles at start and then every `interval` (default 5 s;
    /// `None`: never).
    pub fn reconcile_every(mut self, interval: Option<Duration>) -> Self {
        self.reconcile_every = interval;
        self
    }

    /// Takes the pod's place in the tree: registers its scope (top-level)
    /// or adopts its reservation (a child), opens its registry, listens on
    /// its socket and starts its endpoint (receive loop, reconcile, relays
    /// upward). A failure after the allocation was taken gives it back.
    /// A pod built from a handoff to a table on etcd is refused
    /// ([`PodError::Handoff`]): a `Pod` keeps its table in a file; so is
    /// one whose addresses are `tls://`: a `Pod` listens and reports on
    /// Unix sockets.
    pub async fn start(self) -> Result<Pod, PodError> {
        let scope_lock = self.scope.file_only("Pod")?.to_path_buf();
        if let Origin::Child(handoff) = &self.origin {
            handoff.unix_parent("Pod")?;
            handoff.unix_socket("Pod")?;
        }
        let table = ScopeTable::with_proc_liveness(FileStore::new(&scope_lock));
        let pid = std::process::id();
        let lifecycle = match self.origin {
            Origin::TopLevel { scope } => {
                if scope.is_empty() {
                    return Err(PodError::NoScope { name: self.name });
                }
                if let Some(dir) = scope_lock.parent() {
                    DirBuilder::new()
                        .recursive(true)
                        .mode(0o700)
                        .create(dir)
                        .map_err(|source| PodError::Dir {
                            dir: dir.to_path_buf(),
                            source,
                        })?;
                }
                let spec = PodSpec {
                    pod_name: self.name.clone(),
                    pid,
                    socket: self.socket.clone(),
                    scope,
                };
                let allocation = on_table(&table, move |table| table.register(spec))
                    .await
                    .map_err(|source| PodError::Register {
                        name: self.name.clone(),
                        source,
                    })?;
                let incarnation = allocation.incarnation.unwrap_or_default();
                Lifecycle::TopLevel(Guard::new(
                    self.name.clone(),
                    incarnation,
                    table.clone(),
                    None,
                ))
            }
            Origin::Child(handoff) => Lifecycle::Child(Box::new(
                PodContext::adopt(handoff, table.clone(), UnixSender::default(), pid).await?,
            )),
        };
        let state_dir = self.state_dir.clone();
        let registry = off_executor(move || FileRegistry::open(state_dir)).await?;
        let parent = Parent::new(self.name.clone(), registry, table, SocketProbe::default());
        let parent = Arc::new(match &lifecycle {
            Lifecycle::Child(context) => {
                parent.with_upward_link(UnixSender::default(), context.upward().clone())
            }
            Lifecycle::TopLevel(_) => parent,
        });
        let listener = Listener::bind(&self.socket, ListenConfig::default()).await?;
        let stop = listener.shutdown_handle();
        let (sink, notifications) = mpsc::unbounded_channel();
        let endpoint = spawn_endpoint(
            parent.clone(),
            listener,
            sink,
            EndpointConfig::default().reconcile_every(self.reconcile_every),
        );
        let spawner = Spawner::new(parent.clone(), self.socket.clone(), scope_lock);
        Ok(Pod {
            parent,
            spawner,
            socket: self.socket,
            stop,
            endpoint: Some(endpoint),
            notifications,
            lifecycle,
        })
    }
}

#[derive(Debug)]
enum Lifecycle {
    TopLevel(Guard<FileStore, ProcLiveness, UnixSender>),
    // Boxed: a context is several times the size of a guard.
    Child(Box<PodContext>),
}

/// One pod: its allocation, its endpoint, its children.
///
/// A top-level pod registers its scope; a child adopts the reservation its
/// spawner made ([`Pod::from_env`]). Either way it listens on its socket,
/// applies its children's events (registry, scope table, relays to its own
/// parent), reconciles on an interval, and hands each rendered line to
/// [`next_notification`](Pod::next_notification). [`shut_down`](Pod::shut_down)
/// stops it and gives its allocation back (a child also reports its
/// `ShutDown`); dropping it does the same, best-effort.
#[derive(Debug)]
pub struct Pod {
    parent: Arc<FileParent>,
    spawner: Spawner<FileRegistry, FileStore, ProcLiveness, UnixSender, SocketProbe>,
    socket: String,
    stop: ShutdownHandle,
    endpoint: Option<EndpointHandle>,
    notifications: mpsc::UnboundedReceiver<Notification>,
    lifecycle: Lifecycle,
}

impl Pod {
    /// A top-level pod named `name` whose files live in `dir` (created
    /// with mode 0700 if missing; it must be private): the scope table
    /// `dir/scope.lock`, the socket `dir/<name>/sock`, the registry in
    /// `dir/<name>/`. Its children's files go beside its own.
    pub fn builder(name: &str, dir: impl AsRef<Path>) -> Result<PodBuilder, PodError> {
        let name = PodName::new(name).map_err(PodError::Name)?;
        let dir = dir.as_ref();
        let own = dir.join(name.as_str());
        Ok(PodBuilder {
            origin: Origin::TopLevel { scope: Vec::new() },
            socket: own.join("sock").display().to_string(),
            state_dir: own,
            scope: TableLocation::File(dir.join("scope.lock")),
            reconcile_every: Some(DEFAULT_RECONCILE),
            name,
        })
    }

    /// A child pod, from the handoff variables its spawner set (a
    /// missing or invalid one is [`PodError::Handoff`], naming it): its
    /// name, socket, parent and scope table; its registry lives beside its
    /// socket. Reads the environment: for binaries and examples.
    ///
    /// A handoff to a table on etcd (`POD_SCOPE_STORE`) is refused
    /// ([`PodError::Handoff`]): a `Pod` keeps its table in a file; so is
    /// one with a `tls://` address: a `Pod` listens and reports on Unix
    /// sockets.
    pub fn from_env() -> Result<PodBuilder, PodError> {
        let handoff = Handoff::from_env()?;
        handoff.table_file("Pod::from_env")?;
        handoff.unix_parent("Pod::from_env")?;
        handoff.unix_socket("Pod::from_env")?;
        Ok(Pod::from_handoff(handoff))
    }

    /// A child pod from `handoff`.
    pub fn from_handoff(handoff: Handoff) -> PodBuilder {
        let state_dir = Path::new(&handoff.socket)
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
        PodBuilder {
            name: handoff.name.clone(),
            socket: handoff.socket.clone(),
            scope: handoff.scope.clone(),
            state_dir,
            reconcile_every: Some(DEFAULT_RECONCILE),
            origin: Origin::Child(handoff),
        }
    }

    /// This pod's name.
    pub fn name(&self) -> &PodName {
        self.parent.name()
    }

    /// This pod's incarnation id.
    pub fn incarnation(&self) -> &str {
        match &self.lifecycle {
            Lifecycle::TopLevel(guard) => &guard.incarnation,
            Lifecycle::Child(context) => context.incarnation(),
        }
    }

    /// The socket this pod listens on.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The parent side, for the trait-level API (registry, table,
    /// reconcile).
    pub fn parent(&self) -> &Arc<FileParent> {
        &self.parent
    }

    /// The child's context, for a pod started by a spawner.
    pub fn context(&self) -> Option<&PodContext> {
        match &self.lifecycle {
            Lifecycle::Child(context) => Some(context),
            Lifecycle::TopLevel(_) => None,
        }
    }

    /// The pods this one has spawned, or learned of, that have not
    /// departed.
    pub fn pods(&self) -> Vec<Record> {
        self.parent.registry().list()
    }

    /// Spawns `command` as the child pod `name` with `scope` (inside this
    /// pod's own): see [`Spawner::spawn`]. The child finds its place with
    /// [`Pod::from_env`] (or [`PodContext::from_env`]).
    ///
    /// The child's process is watched from the start (see
    /// [`crate::watch`]): if it dies without reporting, even before it
    /// adopts its reservation, it is presumed crashed at once.
    pub async fn spawn(
        &self,
        command: &mut tokio::process::Command,
        name: &str,
        scope: impl IntoIterator<Item = ScopeRule>,
    ) -> Result<SpawnedChild, PodError> {
        let name = PodName::new(name).map_err(PodError::Name)?;
        let child = self
            .spawner
            .spawn(command, name, scope.into_iter().collect())
            .await?;
        if let (Some(endpoint), true) = (&self.endpoint, child.pid != 0) {
            // Not yet reaped (only `wait` reaps it), so the pid is the
            // child's and its start time can be read.
            let start_time = ProcLiveness.start_time(child.pid);
            endpoint.watch_exit(WatchedPod::new(
                child.name.clone(),
                Some(child.incarnation.clone()),
                child.pid,
                start_time,
            ));
        }
        Ok(child)
    }

    /// Waits for `child` to exit and records its departure (a no-op when
    /// it reported it).
    pub async fn wait(&self, child: &mut SpawnedChild) -> std::io::Result<ExitStatus> {
        Ok(self.spawner.wait(child).await?.0)
    }

    /// The next rendered line of a child's event (or of reconcile's
    /// inference); `None` once the pod is shut down.
    pub async fn next_notification(&mut self) -> Option<Notification> {
        self.notifications.recv().await
    }

    /// Reports `TurnEnded` to the parent, fire-and-forget (nothing for a
    /// top-level pod).
    pub fn turn_ended(&self) {
        if let Some(context) = self.context() {
            context.turn_ended();
        }
    }

    /// Reports `Errored` to the parent, fire-and-forget (nothing for a
    /// top-level pod).
    pub fn errored(&self, message: impl Into<String>) {
        if let Some(context) = self.context() {
            context.errored(message);
        }
    }

    /// Stops listening, applies every event already received (and relays
    /// them), makes the registry durable, then gives the allocation back:
    /// a child reports its `ShutDown` and releases, a top-level pod
    /// releases. Children still running are not stopped; their allocations
    /// move to this pod's parent (or become top-level) when it is
    /// released.
    pub async fn shut_down(mut self) -> Result<Departure, PodError> {
        self.stop.shutdown();
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.join().await;
        }
        self.parent.registry().flush().await?;
        Ok(match &self.lifecycle {
            Lifecycle::TopLevel(guard) => guard.depart().await,
            Lifecycle::Child(context) => context.shut_down().await,
        })
    }
}

/// Default reconcile interval of a [`Pod`].
const DEFAULT_RECONCILE: Duration = Duration::from_secs(5);
